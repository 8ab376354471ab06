//! The catalog against real policies: precedence, changes and deletions, write-time checks,
//! parts a reloaded policy refuses, export, and counters carried across a tier change.

use super::*;
use crate::engine::Engine;
use crate::request::{CheckMode, RequestAttrs};
use crate::store::MemoryStore;
use crate::time::{ManualClock, SECOND};

const POLICY: &str = "default_tier: free
limits:
  user-minute: {algorithm: fixed_window, limit: 10, window: 1m, key: [tenant, user]}
  tenant-minute: {algorithm: fixed_window, limit: 100, window: 1m, key: [tenant]}
  ip-minute: {algorithm: token_bucket, rate: 30/min, key: [ip]}
  paid-extra: {algorithm: fixed_window, limit: 7, window: 1m, key: [tenant]}
tiers:
  free: {limits: [user-minute, tenant-minute]}
  paid: {limits: [user-minute, tenant-minute, paid-extra]}
";

fn policy(text: &str) -> Arc<Policy> {
    match Policy::from_yaml_str(text, "policy.yaml") {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("{e}"),
    }
}

fn tenant_key(id: &str) -> EntryKey {
    EntryKey::Tenant { tenant: id.into() }
}

fn user_key(tenant: &str, user: &str) -> EntryKey {
    EntryKey::User {
        tenant: tenant.into(),
        user: user.into(),
    }
}

fn tenant(tier: Option<&str>, overrides: &[(&str, OverrideRecord)]) -> Entry {
    Entry::Tenant(TenantRecord {
        tier: tier.map(str::to_owned),
        overrides: overrides
            .iter()
            .map(|(n, o)| ((*n).to_owned(), o.clone()))
            .collect(),
        home_region: None,
    })
}

fn user(tier: Option<&str>, overrides: &[(&str, OverrideRecord)]) -> Entry {
    Entry::User(UserRecord {
        tier: tier.map(str::to_owned),
        overrides: overrides
            .iter()
            .map(|(n, o)| ((*n).to_owned(), o.clone()))
            .collect(),
    })
}

fn limit(n: u64) -> OverrideRecord {
    OverrideRecord {
        limit: Some(n),
        ..OverrideRecord::default()
    }
}

fn ask(tenant: &str, user: &str) -> RequestAttrs {
    RequestAttrs {
        tenant: Some(tenant.into()),
        user: Some(user.into()),
        ..RequestAttrs::default()
    }
}

/// The quota each limit has for `req`, by name, and the tier it resolved to.
fn quotas(policy: &Policy, req: &RequestAttrs) -> (String, Vec<(String, u64)>) {
    let resolved = policy.resolve(req);
    let quotas = resolved
        .limits
        .iter()
        .map(|p| (p.def.name.to_string(), p.def.params.quota()))
        .collect();
    (resolved.tier.to_string(), quotas)
}

fn with(policy: &Arc<Policy>, entries: Vec<(EntryKey, Entry)>) -> Policy {
    let (catalog, skipped) = Catalog::build(policy, 1, entries);
    assert_eq!(skipped, []);
    policy.with_catalog(Arc::new(catalog))
}

#[test]
fn user_override_beats_tenant_override_beats_tier_beats_default() {
    let base = policy(POLICY);
    let bob = user(None, &[("user-minute", limit(50))]);
    let p = with(
        &base,
        vec![
            (
                tenant_key("acme"),
                tenant(Some("paid"), &[("user-minute", limit(20))]),
            ),
            (user_key("acme", "bob"), bob),
        ],
    );
    // Bob: his own override of user-minute; the tenant's tier (paid) and its limits.
    let (tier, bob) = quotas(&p, &ask("acme", "bob"));
    assert_eq!(tier, "paid");
    assert_eq!(
        bob,
        [
            ("user-minute".into(), 50),
            ("tenant-minute".into(), 100),
            ("paid-extra".into(), 7)
        ]
    );
    // Another user of acme: the tenant's override.
    let (_, alice) = quotas(&p, &ask("acme", "alice"));
    assert_eq!(alice[0], ("user-minute".into(), 20));
    // A user named bob of another tenant is not acme's bob.
    let (tier, other) = quotas(&p, &ask("globex", "bob"));
    assert_eq!(tier, "free");
    assert_eq!(other[0], ("user-minute".into(), 10));
    // A user's own tier wins over the tenant's.
    let upgraded = user(Some("free"), &[]);
    let p = with(
        &base,
        vec![
            (tenant_key("acme"), tenant(Some("paid"), &[])),
            (user_key("acme", "carol"), upgraded),
        ],
    );
    assert_eq!(quotas(&p, &ask("acme", "carol")).0, "free");
    assert_eq!(quotas(&p, &ask("acme", "dave")).0, "paid");
}

#[test]
fn changes_apply_in_order_and_deletions_propagate() {
    let base = policy(POLICY);
    let (v1, _) = Catalog::build(
        &base,
        1,
        vec![(tenant_key("acme"), tenant(Some("paid"), &[]))],
    );
    let change = |version, key, entry| Change {
        version,
        key,
        entry,
    };
    let (v3, skipped) = v1.apply(
        &base,
        &[
            change(2, tenant_key("globex"), Some(tenant(Some("paid"), &[]))),
            change(3, tenant_key("acme"), None),
        ],
    );
    assert_eq!(skipped, []);
    assert_eq!(v3.version(), 3);
    assert_eq!(v3.counts(), (1, 0, 0));
    assert_eq!(v3.get(&tenant_key("acme")), None);
    // The old snapshot is untouched: requests in flight keep what they loaded.
    assert!(v1.get(&tenant_key("acme")).is_some());
    // A change heard twice (notification, then poll) is applied once.
    let (again, _) = v3.apply(
        &base,
        &[change(2, tenant_key("acme"), Some(tenant(None, &[])))],
    );
    assert_eq!(again.get(&tenant_key("acme")), None);
    assert_eq!(again.version(), 3);
    let p = base.with_catalog(Arc::new(v3));
    assert_eq!(quotas(&p, &ask("acme", "u")).0, "free");
    assert_eq!(quotas(&p, &ask("globex", "u")).0, "paid");
}

#[test]
fn writes_are_checked_field_by_field() {
    let base = policy(POLICY);
    let catalog = Catalog::empty(&base);
    let fields = |key: EntryKey, entry: Entry| -> Vec<String> {
        match catalog.check(&base, &key, &entry) {
            Ok(()) => Vec::new(),
            Err(issues) => issues.into_iter().map(|i| i.field).collect(),
        }
    };
    assert_eq!(
        fields(
            tenant_key("acme"),
            tenant(Some("paid"), &[("paid-extra", limit(9))])
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        fields(tenant_key("acme"), tenant(Some("gold"), &[])),
        ["tier"]
    );
    for id in ["", " acme", "acme ", "acme\u{a0}", "ac\u{202e}me", "a\nb"] {
        assert_eq!(
            fields(tenant_key(id), tenant(None, &[])),
            ["tenant"],
            "{id:?}"
        );
    }
    assert_eq!(
        fields(tenant_key("acme"), tenant(None, &[("nope", limit(1))])),
        ["overrides.nope"]
    );
    assert_eq!(
        fields(
            tenant_key("acme"),
            tenant(None, &[("user-minute", limit(0))])
        ),
        ["overrides.user-minute.limit"]
    );
    let bad_rate = OverrideRecord {
        rate: Some("0/min".into()),
        ..OverrideRecord::default()
    };
    assert_eq!(
        fields(tenant_key("acme"), tenant(None, &[("ip-minute", bad_rate)])),
        ["overrides.ip-minute.rate"]
    );
    // A field the algorithm does not take.
    let wrong = OverrideRecord {
        rate: Some("5/s".into()),
        ..OverrideRecord::default()
    };
    assert_eq!(
        fields(tenant_key("acme"), tenant(None, &[("user-minute", wrong)])),
        ["overrides.user-minute.rate"]
    );
    // `paid-extra` never applies on the default tier.
    assert_eq!(
        fields(
            tenant_key("acme"),
            tenant(None, &[("paid-extra", limit(9))])
        ),
        ["overrides.paid-extra"]
    );
    assert_eq!(fields(tenant_key(""), tenant(None, &[])), ["tenant"]);
    assert_eq!(
        fields(tenant_key(&"x".repeat(300)), tenant(None, &[])),
        ["tenant"]
    );
    assert_eq!(fields(tenant_key("a\nb"), tenant(None, &[])), ["tenant"]);
    assert_eq!(
        fields(tenant_key("ac\u{202E}me"), tenant(None, &[])),
        ["tenant"]
    );
    assert_eq!(
        fields(tenant_key("ac\u{200B}me"), tenant(None, &[])),
        ["tenant"]
    );
    assert!(fields(tenant_key("café-Zürich"), tenant(None, &[])).is_empty());
    assert_eq!(fields(user_key("acme", "bob"), tenant(None, &[])), ["kind"]);
    let key = Entry::ApiKey(ApiKeyRecord {
        tenant: "acme".into(),
        user: None,
        tier: Some("paid".into()),
    });
    assert_eq!(
        fields(
            EntryKey::ApiKey {
                digest: "ABC".into()
            },
            key.clone()
        ),
        ["digest"]
    );
    assert_eq!(
        fields(
            EntryKey::ApiKey {
                digest: "a".repeat(64)
            },
            key
        ),
        Vec::<String>::new()
    );
    // Messages say what is known, so the caller can fix the request.
    let issues = catalog
        .check(&base, &tenant_key("acme"), &tenant(Some("gold"), &[]))
        .unwrap_err();
    assert!(
        issues[0].message.contains("free, paid"),
        "{}",
        issues[0].message
    );
}

#[test]
fn parts_a_reloaded_policy_refuses_are_skipped_and_come_back() {
    let base = policy(POLICY);
    let (catalog, _) = Catalog::build(
        &base,
        5,
        vec![(
            tenant_key("acme"),
            tenant(
                Some("paid"),
                &[("paid-extra", limit(9)), ("user-minute", limit(20))],
            ),
        )],
    );
    // The reload removes the `paid` tier and the `paid-extra` limit.
    let smaller = policy(
        "default_tier: free
limits:
  user-minute: {algorithm: fixed_window, limit: 10, window: 1m, key: [tenant, user]}
tiers:
  free: {limits: [user-minute]}
",
    );
    let (reloaded, skipped) = catalog.recompile(&smaller);
    let fields: Vec<&str> = skipped.iter().map(|s| s.field.as_str()).collect();
    assert_eq!(fields, ["tier", "overrides.paid-extra"]);
    assert_eq!(reloaded.invalid(), 1);
    assert_eq!(reloaded.version(), 5);
    // Held in part now, whole before (a reload tells the two apart this way).
    assert!(reloaded.refused_in_part(&tenant_key("acme")));
    assert!(!catalog.refused_in_part(&tenant_key("acme")));
    assert!(!reloaded.refused_in_part(&tenant_key("nobody")));
    let p = smaller.with_catalog(Arc::new(reloaded.clone()));
    // The rest of the entry still applies: the default tier, with the valid override.
    assert_eq!(
        quotas(&p, &ask("acme", "u")),
        ("free".into(), vec![("user-minute".into(), 20)])
    );
    // Nothing stored is lost: the entry exports whole, and the old policy takes it back.
    assert_eq!(
        reloaded.get(&tenant_key("acme")),
        catalog.get(&tenant_key("acme"))
    );
    let (back, skipped) = reloaded.recompile(&base);
    assert_eq!(skipped, []);
    let p = base.with_catalog(Arc::new(back));
    assert_eq!(quotas(&p, &ask("acme", "u")).0, "paid");
}

#[test]
fn entries_export_what_was_built() {
    let base = policy(POLICY);
    let entries = vec![
        (
            tenant_key("acme"),
            tenant(Some("paid"), &[("user-minute", limit(20))]),
        ),
        (tenant_key("globex"), tenant(None, &[])),
        (user_key("acme", "bob"), user(Some("free"), &[])),
        (
            EntryKey::ApiKey {
                digest: "f".repeat(64),
            },
            Entry::ApiKey(ApiKeyRecord {
                tenant: "acme".into(),
                user: Some("bob".into()),
                tier: None,
            }),
        ),
    ];
    let (catalog, _) = Catalog::build(&base, 9, entries.clone());
    let mut out: Vec<_> = catalog.entries().collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = entries;
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out, expected);
    let key = catalog.api_key(&"f".repeat(64));
    assert_eq!(
        key,
        Some(ApiKey {
            tenant: "acme",
            user: Some("bob"),
            tier: None
        })
    );
    assert_eq!(catalog.api_key(&"e".repeat(64)), None);
}

#[test]
fn the_tenants_section_is_the_static_catalog() {
    let text = format!(
        "{POLICY}tenants:\n  acme: {{tier: paid, overrides: {{user-minute: {{limit: 3}}}}}}\n"
    );
    let p = policy(&text);
    assert!(p.has_static_tenants());
    assert_eq!(p.catalog().counts(), (1, 0, 0));
    assert_eq!(
        quotas(&p, &ask("acme", "u")).1[0],
        ("user-minute".into(), 3)
    );
    assert!(!policy(POLICY).has_static_tenants());
}

#[test]
#[should_panic(expected = "compiled against the policy")]
fn a_catalog_only_resolves_with_its_own_policy() {
    let (one, two) = (policy(POLICY), policy(POLICY));
    let catalog = Catalog::empty(&one);
    let _ = two.with_catalog(Arc::new(catalog));
}

/// A tenant moved from free to paid keeps its counters where the limit is the same limit
/// with other numbers: 8 of free's 10 used leaves 12 of paid's 20, not a fresh 20.
#[tokio::test]
async fn an_upgraded_tenant_keeps_its_counters() {
    let base = policy(
        "default_tier: free
limits:
  tenant-minute: {algorithm: fixed_window, limit: 10, window: 1m, key: [tenant]}
tiers:
  free: {limits: [tenant-minute]}
  paid: {limits: [tenant-minute]}
",
    );
    let clock = Arc::new(ManualClock::new(1_700_000_000 * SECOND));
    let store = Arc::new(MemoryStore::new(1000, clock.clone()));
    let engine = Engine::new(Arc::clone(&base), store, clock);
    let req = ask("acme", "u");
    for _ in 0..8 {
        assert!(
            engine
                .check(&req, CheckMode::Consume)
                .await
                .expect("memory")
                .allowed
        );
    }
    let upgrade = tenant(Some("paid"), &[("tenant-minute", limit(20))]);
    let (catalog, _) = Catalog::empty(&base).apply(
        &base,
        &[Change {
            version: 1,
            key: tenant_key("acme"),
            entry: Some(upgrade),
        }],
    );
    engine.replace_policy(Arc::new(base.with_catalog(Arc::new(catalog))));
    let v = engine
        .check(&req, CheckMode::Consume)
        .await
        .expect("memory");
    assert_eq!(v.tier.as_ref(), "paid");
    assert_eq!(v.outcomes[0].decision.remaining, 11);
}

#[test]
fn invalid_entries_are_counted_by_difference() {
    let base = policy(POLICY);
    let change = |version, tier: &str| Change {
        version,
        key: tenant_key("acme"),
        entry: Some(tenant(Some(tier), &[])),
    };
    let (bad, skipped) = Catalog::empty(&base).apply(&base, &[change(1, "gold")]);
    assert_eq!((bad.invalid(), skipped.len()), (1, 1));
    // The same key written twice in one batch counts once.
    let (twice, _) = bad.apply(&base, &[change(2, "gold"), change(3, "silver")]);
    assert_eq!(twice.invalid(), 1);
    let (fixed, _) = twice.apply(&base, &[change(4, "paid")]);
    assert_eq!(fixed.invalid(), 0);
    let gone = Change {
        version: 5,
        key: tenant_key("acme"),
        entry: None,
    };
    let (bad_again, _) = fixed.apply(&base, &[change(5, "gold")]);
    let (deleted, _) = bad_again.apply(&base, &[Change { version: 6, ..gone }]);
    assert_eq!((bad_again.invalid(), deleted.invalid()), (1, 0));
}

#[test]
fn a_user_may_only_override_limits_that_count_each_user_apart() {
    let base = policy(POLICY);
    let catalog = Catalog::empty(&base);
    let user = |name: &str| user(None, &[(name, limit(3))]);
    // `tenant-minute` is the tenant's shared cap: a user's own counter would escape it.
    let issues = catalog
        .check(&base, &user_key("acme", "bob"), &user("tenant-minute"))
        .unwrap_err();
    assert_eq!(issues[0].field, "overrides.tenant-minute");
    assert!(
        issues[0].message.contains("override it on the tenant"),
        "{}",
        issues[0].message
    );
    assert!(catalog
        .check(&base, &user_key("acme", "bob"), &user("user-minute"))
        .is_ok());
}

/// The rule above holds when a node compiles what is stored, not only when it is written: a
/// reload that stops `user-minute` counting users apart leaves bob's override of it out (and
/// reports it), so bob counts on the tenant's counter with everyone else, not on one of his
/// own outside the cap.
#[test]
fn a_stored_users_override_of_a_limit_no_longer_keyed_by_user_is_left_out() {
    let base = policy(POLICY);
    let bob = user(None, &[("user-minute", limit(3))]);
    let entries = vec![(user_key("acme", "bob"), bob)];
    let (_, skipped) = Catalog::build(&base, 1, entries.clone());
    assert_eq!(skipped, []);
    let reloaded = policy(&POLICY.replace(
        "user-minute: {algorithm: fixed_window, limit: 10, window: 1m, key: [tenant, user]}",
        "user-minute: {algorithm: fixed_window, limit: 10, window: 1m, key: [tenant]}",
    ));
    let (catalog, skipped) = Catalog::build(&reloaded, 1, entries);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].field, "overrides.user-minute");
    assert_eq!(catalog.invalid(), 1);
    let applied = reloaded.with_catalog(Arc::new(catalog));
    let bob_quota = quotas(&applied, &ask("acme", "bob")).1;
    assert!(
        bob_quota.contains(&("user-minute".to_owned(), 10)),
        "bob is on the shared cap: {bob_quota:?}"
    );
    let alice = applied.resolve(&ask("acme", "alice"));
    let bob = applied.resolve(&ask("acme", "bob"));
    let fingerprint = |r: &crate::policy::Resolved, name: &str| {
        (r.limits.iter())
            .find(|p| &*p.def.name == name)
            .map(|p| p.def.fingerprint)
    };
    assert_eq!(
        fingerprint(&bob, "user-minute"),
        fingerprint(&alice, "user-minute"),
        "one counter for the tenant"
    );
}
