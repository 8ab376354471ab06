//! The `store.regions` section, limit scopes, and tenants' home regions: what loads, and one
//! test per refusal (each with its `file:line:col`).

use super::{expect, load};
use crate::policy::{Policy, Scope};

/// The scope compiled onto limit `name` (and onto every tenant override of it).
fn scope(policy: &Policy, name: &str) -> Scope {
    let mut defs = policy.limits().filter(|d| &*d.name == name);
    let first = defs.next().expect("the limit").scope;
    assert!(defs.all(|d| d.scope == first), "overrides keep the scope");
    first
}

const REGIONS: &str = r#"default_tier: t
store:
  type: redis
  timeout: 300ms
  regions:
    us: {url: "redis://127.0.0.1:7001"}
    eu: {url: "redis://127.0.0.1:7002"}
    ap: {url: "redis://127.0.0.1:7003"}
  exchange: {interval: 100ms, partition_after: 600ms, partition_share: 0.25, home_timeout: 400ms}
limits:
  exact: {algorithm: token_bucket, rate: 10/s, burst: 10, key: [tenant], scope: home}
  soft: {algorithm: fixed_window, limit: 100, window: 1m, key: [ip], scope: aggregate}
  smooth: {algorithm: sliding_window, limit: 100, window: 1m, key: [tenant, ip], scope: aggregate}
  local: {algorithm: gcra, rate: 5/s, burst: 5, key: [ip]}
tiers:
  t: {limits: [exact, soft, smooth, local]}
tenants:
  acme: {home_region: eu}
"#;

#[test]
fn regions_and_scopes_load() {
    let policy = load(REGIONS);
    let regions = policy.regions().expect("regions");
    let names: Vec<&str> = regions.names().iter().map(|n| &**n).collect();
    assert_eq!(names, ["us", "eu", "ap"]);
    assert_eq!(
        (
            regions.interval,
            regions.partition_after,
            regions.home_timeout
        ),
        (100_000, 600_000, 400_000)
    );
    assert_eq!(regions.partition_share, 0.25);
    // Each region's store shares the section's settings with its own URL.
    let crate::policy::StoreConfig::Redis(eu) = regions.store(1) else {
        panic!("{:?}", regions.store(1))
    };
    assert_eq!(eu.urls, ["redis://127.0.0.1:7002"]);
    assert_eq!(eu.timeout, Some(300_000));
    assert_eq!(scope(&policy, "exact"), Scope::Home);
    assert_eq!(scope(&policy, "soft"), Scope::Aggregate);
    assert_eq!(scope(&policy, "smooth"), Scope::Aggregate);
    assert_eq!(scope(&policy, "local"), Scope::Regional);
    assert!(policy.has_global_limits());
    assert_eq!(policy.catalog().home_region("acme"), Some("eu"));
    assert_eq!(policy.catalog().home_region("other"), None);
}

#[test]
fn a_tenant_override_keeps_its_limits_scope() {
    let text = REGIONS.replace(
        "  acme: {home_region: eu}\n",
        "  acme:\n    home_region: eu\n    overrides:\n      soft: {limit: 40}\n      exact: {rate: 20/s, burst: 20}\n",
    );
    let policy = load(&text);
    // `scope` asserts every compilation of a name (the base and acme's) has one scope.
    assert_eq!(policy.limits().filter(|d| &*d.name == "soft").count(), 2);
    assert_eq!(scope(&policy, "soft"), Scope::Aggregate);
    assert_eq!(scope(&policy, "exact"), Scope::Home);
}

#[test]
fn defaults_split_the_limit_evenly() {
    let text = REGIONS.replace(
        "  exchange: {interval: 100ms, partition_after: 600ms, partition_share: 0.25, home_timeout: 400ms}\n",
        "",
    );
    let policy = load(&text);
    let regions = policy.regions().expect("regions");
    assert_eq!(regions.interval, 250_000);
    assert_eq!(regions.partition_after, 1_000_000);
    assert!((regions.partition_share - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(regions.lease_above, None, "leases are off unless asked for");
}

#[test]
fn leases_take_a_fraction_below_one() {
    let with = |value: &str| {
        REGIONS.replace(
            "home_timeout: 400ms}",
            &format!("home_timeout: 400ms, lease_above: {value}}}"),
        )
    };
    let policy = load(&with("0.5"));
    assert_eq!(policy.regions().expect("regions").lease_above, Some(0.5));
    assert_eq!(
        load(&with("0")).regions().expect("regions").lease_above,
        Some(0.0)
    );
    for bad in ["1", "1.5", "-0.1", "half"] {
        expect(
            &with(bad),
            9,
            "store.exchange.lease_above",
            "from 0 up to but not including 1",
        );
    }
}

#[test]
fn without_regions_every_policy_is_what_it_was() {
    let policy = load(
        "default_tier: t\nlimits:\n  a: {algorithm: fixed_window, limit: 5, window: 1m, key: [ip]}\ntiers:\n  t: {limits: [a]}\n",
    );
    assert!(policy.regions().is_none());
    assert!(!policy.has_global_limits());
    assert_eq!(scope(&policy, "a"), Scope::Regional);
}

#[test]
fn aggregate_takes_window_counters_only() {
    expect(
        &REGIONS.replace(
            "local: {algorithm: gcra, rate: 5/s, burst: 5, key: [ip]}",
            "local: {algorithm: gcra, rate: 5/s, burst: 5, key: [ip], scope: aggregate}",
        ),
        14,
        "limits.local.scope",
        "takes fixed_window or sliding_window, not gcra",
    );
}

#[test]
fn home_needs_the_tenant_in_the_key() {
    expect(
        &REGIONS.replace("key: [tenant], scope: home", "key: [ip], scope: home"),
        11,
        "limits.exact.scope",
        "must hold `tenant`",
    );
}

#[test]
fn metered_limits_stay_regional() {
    for scope in ["home", "aggregate"] {
        let limit = if scope == "home" { "exact" } else { "soft" };
        let text = REGIONS
            .replace(
                "key: [tenant], scope: home",
                "key: [tenant], scope: home, charge: after",
            )
            .replace(
                "key: [ip], scope: aggregate",
                "key: [ip], scope: aggregate, charge: after",
            );
        let line = if scope == "home" { 11 } else { 12 };
        expect(
            &text,
            line,
            &format!("limits.{limit}.charge"),
            &format!("cannot be combined with scope `{scope}`"),
        );
    }
}

#[test]
fn unknown_scopes_are_refused() {
    expect(
        &REGIONS.replace("scope: home", "scope: global"),
        11,
        "limits.exact.scope",
        "unknown scope `global` (use regional, home or aggregate)",
    );
}

#[test]
fn a_home_region_must_be_a_region() {
    expect(
        &REGIONS.replace("home_region: eu", "home_region: mars"),
        18,
        "tenants.acme.home_region",
        "no region named `mars` (store.regions names us, eu, ap)",
    );
}

#[test]
fn regions_need_a_shared_store() {
    expect(
        r#"default_tier: t
store:
  type: memory
  regions:
    us: {url: "redis://a:1"}
tiers:
  t: {}
"#,
        5,
        "store.regions",
        "regions need a shared store",
    );
}

#[test]
fn each_region_names_its_own_url() {
    let err = expect(
        r#"default_tier: t
store:
  type: redis
  url: "redis://a:1"
  regions:
    us: {url: "redis://a:1"}
    eu: {}
    ap: {url: "http://x"}
tiers:
  t: {}
"#,
        4,
        "store.url",
        "each region names its own `url`",
    );
    let report = err.to_string();
    assert!(
        report.contains("test.yaml:7:5: store.regions.eu.url: region `eu` needs its `url`"),
        "{report}"
    );
    assert!(
        report.contains("store.regions.ap: `http://x` is not a redis:// URL"),
        "{report}"
    );
}

/// Seeds of one cluster that disagree on the login are told at the differing seed, with its
/// field path and never a password, for the store's own nodes and a region's alike; a node
/// whose `--store-url` replaces `store.nodes` is not refused for them, but always for a
/// region's. A policy refused for something else tells them in the same pass.
#[test]
fn seeds_that_disagree_on_the_login_are_told_at_the_seed() {
    let own = r#"default_tier: t
store:
  type: redis_cluster
  nodes:
    - "redis://:s3cret@127.0.0.1:1"
    - "redis://127.0.0.1:2"
tiers:
  t: {}
"#;
    let policy = load(own);
    let err = policy
        .check_seed_logins("test.yaml", false)
        .expect_err("seeds disagree");
    let report = err.to_string();
    assert!(
        report.starts_with(
            "test.yaml:6:7: store.nodes[1]: the cluster's seed nodes disagree on the login: \
             127.0.0.1:1 and 127.0.0.1:2 give different passwords"
        ) && !report.contains("s3cret"),
        "{report}"
    );
    assert!(policy.check_seed_logins("test.yaml", true).is_ok());
    let far = r#"default_tier: t
store:
  type: redis_cluster
  regions:
    us: {nodes: ["redis://:pw@127.0.0.1:1", "redis://:pw@127.0.0.1:2"]}
    eu: {nodes: ["redis://:s3cret@127.0.0.1:3", "redis://:typo@127.0.0.1:4"]}
tiers:
  t: {}
"#;
    let policy = load(far);
    for replaced in [false, true] {
        let report = policy
            .check_seed_logins("test.yaml", replaced)
            .expect_err("a region's seeds disagree")
            .to_string();
        assert!(
            report.starts_with("test.yaml:6:49: store.regions.eu.nodes[1]: ")
                && report.contains("127.0.0.1:3 and 127.0.0.1:4 give different passwords")
                && !report.contains("s3cret")
                && !report.contains("typo"),
            "{report}"
        );
    }
    let refused = expect(
        &own.replace("tiers:\n  t: {}", "tiers:\n  t: {limits: [nothing]}"),
        6,
        "store.nodes[1]",
        "give different passwords",
    );
    assert!(refused.errors().len() > 1, "{refused}");
}

#[test]
fn exchange_numbers_are_checked() {
    expect(
        &REGIONS.replace("partition_share: 0.25", "partition_share: 1.5"),
        9,
        "store.exchange.partition_share",
        "above 0 and at most 1",
    );
    // Three regions cut off from each other at 0.5 each would admit 1.5 limits.
    expect(
        &REGIONS.replace("partition_share: 0.25", "partition_share: 0.5"),
        9,
        "store.exchange.partition_share",
        "must be at most 1 / regions (0.3333 with 3 regions)",
    );
    expect(
        &REGIONS.replace("partition_after: 600ms", "partition_after: 50ms"),
        9,
        "store.exchange.partition_after",
        "must be longer than `interval`",
    );
    expect(
        r#"default_tier: t
store:
  type: redis
  url: "redis://a:1"
  exchange: {interval: 1s}
tiers:
  t: {}
"#,
        5,
        "store.exchange",
        "applies only to a store with `regions`",
    );
}

#[test]
fn the_catalog_keeps_home_regions_and_checks_them() {
    use crate::catalog::{Catalog, Entry, EntryKey, TenantRecord};
    let policy = load(REGIONS);
    let key = |t: &str| EntryKey::Tenant { tenant: t.into() };
    let record = |home: &str| {
        Entry::Tenant(TenantRecord {
            home_region: Some(home.into()),
            ..Default::default()
        })
    };
    let catalog = policy.catalog();
    assert!(catalog
        .check(&policy, &key("globex"), &record("ap"))
        .is_ok());
    let issues = catalog
        .check(&policy, &key("globex"), &record("mars"))
        .unwrap_err();
    assert_eq!(issues[0].field, "home_region");
    assert!(
        issues[0].message.contains("no region named `mars`"),
        "{issues:?}"
    );
    // A row written before a region was removed is kept and exported as written, but its home
    // falls back to the hash until fixed.
    let (built, skipped) = Catalog::build(
        &policy,
        3,
        [
            (key("globex"), record("ap")),
            (key("initech"), record("mars")),
        ],
    );
    assert_eq!(built.home_region("globex"), Some("ap"));
    assert_eq!(built.home_region("initech"), None);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].field, "home_region");
    assert_eq!(built.get(&key("initech")), Some(record("mars")));
    let exported: Vec<_> = built.entries().collect();
    assert!(exported.contains(&(key("globex"), record("ap"))));
}
