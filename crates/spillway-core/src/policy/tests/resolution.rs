//! How requests resolve: tier fallback, route matching, cost, keys, overrides, de-duplication.

use super::{load, EXAMPLE};
use crate::algorithm::LimitParams;
use crate::key::StateKey;
use crate::policy::{Dimension, FailureMode, LimitDef, Policy, Resolved};
use crate::request::RequestAttrs;
use crate::time::MINUTE;
use std::net::IpAddr;
use std::sync::Arc;

fn request(tenant: &str, user: &str, method: &str, path: &str) -> RequestAttrs {
    RequestAttrs {
        tenant: Some(tenant.into()),
        user: Some(user.into()),
        ip: Some(addr("203.0.113.7")),
        method: Some(method.into()),
        path: Some(path.into()),
        ..RequestAttrs::default()
    }
}

fn addr(text: &str) -> IpAddr {
    match text.parse() {
        Ok(ip) => ip,
        Err(e) => panic!("{text}: {e}"),
    }
}

fn names(resolved: &Resolved) -> Vec<&str> {
    resolved.limits.iter().map(|p| &*p.def.name).collect()
}

#[test]
fn the_example_policy_loads() {
    let policy = load(EXAMPLE);
    assert_eq!(policy.default_tier(), "free");
    assert_eq!(policy.failure_mode(), FailureMode::Degrade);
    assert_eq!(
        policy.tiers().collect::<Vec<_>>(),
        ["free", "paid", "enterprise"]
    );
    // 11 limits as written, plus three distinct tenant overrides.
    assert_eq!(policy.limits().count(), 14);
    let shadowed: Vec<_> = policy
        .limits()
        .filter(|d| d.shadow)
        .map(|d| &*d.name)
        .collect();
    assert_eq!(shadowed, ["ip-daily-candidate"]);
    let api_key = policy.limits().find(|d| &*d.name == "api-key-minute");
    let key = api_key.map(|d| d.key.clone()).unwrap_or_default();
    assert_eq!(
        key,
        [Dimension::Tenant, Dimension::Descriptor("api_key".into())]
    );
}

#[test]
fn tier_comes_from_request_then_tenant_then_default() {
    let policy = load(EXAMPLE);
    let mut req = request("acme", "ann", "GET", "/v1/items");
    assert_eq!(&*policy.resolve(&req).tier, "paid", "acme's own tier");
    req.tier = Some("enterprise".into());
    assert_eq!(
        &*policy.resolve(&req).tier,
        "enterprise",
        "the request's tier wins"
    );
    req.tier = Some("platinum".into());
    assert_eq!(
        &*policy.resolve(&req).tier,
        "paid",
        "an unknown tier falls back"
    );
    req.tenant = Some("nobody-we-know".into());
    assert_eq!(&*policy.resolve(&req).tier, "free");
    assert_eq!(&*policy.resolve(&RequestAttrs::default()).tier, "free");
}

#[test]
fn limits_come_global_then_tier_then_route() {
    let policy = load(EXAMPLE);
    let resolved = policy.resolve(&request("someone", "ann", "POST", "/v1/generate"));
    assert_eq!(
        names(&resolved),
        [
            "ip-burst",
            "ip-daily-candidate",
            "free-user-minute",
            "free-user-daily",
            "generate-user"
        ]
    );
    assert_eq!(
        resolved.route.as_ref().map(|r| &*r.name),
        Some("POST /v1/generate")
    );
    assert_eq!(resolved.cost, 5);
    assert_eq!(resolved.failure_mode, FailureMode::Closed);
}

#[test]
fn routes_match_in_file_order_with_wildcards() {
    let policy = load(
        r#"
default_tier: t
failure_mode: open
limits:
  l: {algorithm: gcra, rate: 1/s, key: [ip]}
tiers:
  t: {limits: [l]}
routes:
  - {match: "GET /v1/items/special", cost: 7}
  - {match: "GET /v1/items/*", cost: 3}
  - {match: "* /v1/**", cost: 2, failure_mode: degrade}
"#,
    );
    let route_of = |method: &str, path: &str| {
        let r = policy.resolve(&request("t", "u", method, path));
        (r.route.map(|r| r.name.to_string()), r.cost, r.failure_mode)
    };
    let open = FailureMode::Open;
    let degrade = FailureMode::Degrade;
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        route_of("GET", "/v1/items/special"),
        (some("GET /v1/items/special"), 7, open)
    );
    assert_eq!(
        route_of("GET", "/v1/items/42?x=1"),
        (some("GET /v1/items/*"), 3, open)
    );
    assert_eq!(
        route_of("GET", "/v1/items/42/parts"),
        (some("* /v1/**"), 2, degrade)
    );
    assert_eq!(
        route_of("DELETE", "/v1/items/42"),
        (some("* /v1/**"), 2, degrade)
    );
    assert_eq!(route_of("GET", "/v2/items"), (None, 1, open));
}

#[test]
fn spellings_a_lenient_server_reads_as_the_route_pay_its_cost_and_limits() {
    let policy = load(EXAMPLE);
    for path in [
        "/V1/Generate",
        "/v1/generate;x=1",
        "/v1;a/generate",
        "/v1/generate%3Bx=1",
        "/v1/generate/",
        "//v1//generate",
    ] {
        let resolved = policy.resolve(&request("someone", "ann", "post", path));
        let route = resolved.route.as_ref().map(|r| &*r.name);
        assert_eq!(route, Some("POST /v1/generate"), "{path}");
        assert_eq!(resolved.cost, 5, "{path}");
        assert!(names(&resolved).contains(&"generate-user"), "{path}");
    }
}

/// A policy whose costly routes one reading of a path alone would let a client dodge.
const SHORTENED: &str = r#"
default_tier: t
failure_mode: open
limits:
  l: {algorithm: gcra, rate: 1/s, key: [ip]}
  generate-once: {algorithm: fixed_window, limit: 1, window: 1m, key: [user]}
  delete-once: {algorithm: fixed_window, limit: 1, window: 1m, key: [user]}
  read-many: {algorithm: fixed_window, limit: 100, window: 1m, key: [user]}
tiers:
  t: {limits: [l]}
routes:
  - {match: "GET /v1/cheap/*", cost: 1}
  - {match: "POST /v1/generate/*", cost: 10, limits: [generate-once], failure_mode: closed}
  - {match: "GET /v1/generate", cost: 5, limits: [read-many]}
  - {match: "POST /v1/generate", cost: 5, limits: [generate-once]}
  - {match: "DELETE /v1/items/*", cost: 1, limits: [delete-once]}
  - {match: "GET /projects/*/issues", cost: 4}
  - {match: "* /v1/**", cost: 2, failure_mode: degrade}
  - {match: "* /**", cost: 1}
"#;

/// The route a request of `method` on `path` is named under, its cost, failure mode and
/// limits.
fn under(policy: &Policy, req: &RequestAttrs) -> (String, u64, FailureMode, Vec<String>) {
    let r = policy.resolve(req);
    let mut limits: Vec<String> = names(&r).into_iter().map(str::to_owned).collect();
    limits.sort();
    let route = r.route.map(|r| r.name.to_string()).unwrap_or_default();
    (route, r.cost, r.failure_mode, limits)
}

#[test]
fn a_path_read_several_ways_pays_for_every_route_it_falls_under() {
    let policy = load(SHORTENED);
    let of = |method: &str, path: &str| under(&policy, &request("t", "u", method, path));
    let closed = FailureMode::Closed;
    // Express routes these to `/v1/generate/:id`; leniently they are `/v1/generate` or less.
    for path in [
        "/v1/generate/x%2F..",
        "/v1/generate/..",
        "/v1/generate/x%5C..",
        "/v1/generate/.",
        // Django decodes `%2F` but keeps `..`.
        "/v1/generate%2F..",
    ] {
        let (route, cost, mode, limits) = of("POST", path);
        assert_eq!(
            (route.as_str(), cost, mode),
            ("POST /v1/generate/*", 10, closed),
            "{path}"
        );
        assert!(
            limits.contains(&"generate-once".to_owned()),
            "{path}: {limits:?}"
        );
    }
    // nginx resolves the dots and keeps `;`: it serves `/v1/generate`.
    let (_, _, _, limits) = of("POST", "/v1/generate/;/..");
    assert!(limits.contains(&"generate-once".to_owned()), "{limits:?}");
    // A strict server keeps `.`: `* /v1/**` is dearer, but the items route's own limit stays.
    let (route, cost, mode, limits) = of("DELETE", "/v1/items/7/.");
    assert_eq!((route.as_str(), cost), ("* /v1/**", 2));
    assert_eq!(mode, FailureMode::Degrade);
    assert_eq!(limits, ["delete-once", "l"]);
    // An escaped id is the route a strict server routes it to.
    let (route, cost, _, _) = of("GET", "/projects/group%2Fname/issues");
    assert_eq!((route.as_str(), cost), ("GET /projects/*/issues", 4));
    // A plain path is read once, the first match as always.
    assert_eq!(of("GET", "/v1/cheap/7").0, "GET /v1/cheap/*");
    let (route, cost, mode, limits) = of("POST", "/v1/generate");
    assert_eq!(
        (route.as_str(), cost, mode),
        ("POST /v1/generate", 5, FailureMode::Open)
    );
    assert_eq!(limits, ["generate-once", "l"]);
}

#[test]
fn a_post_naming_another_method_pays_for_both() {
    let policy = load(SHORTENED);
    let mut req = request("t", "u", "POST", "/v1/items/7");
    assert_eq!(under(&policy, &req).3, ["l"]);
    req.method_override = Some("delete".into());
    let (route, cost, _, limits) = under(&policy, &req);
    // The catch-all is dearer and names the request; the delete route's limit applies too.
    assert_eq!((route.as_str(), cost), ("* /v1/**", 2));
    assert_eq!(limits, ["delete-once", "l"]);
    // The same as a query parameter, which Laravel and Symfony read.
    let req = request("t", "u", "POST", "/v1/items/7?_method=DELETE");
    assert_eq!(under(&policy, &req).3, ["delete-once", "l"]);
    // A tie in cost keeps the GET route's limits beside the POST route's, and the request's
    // own route names it.
    let mut req = request("t", "u", "POST", "/v1/generate");
    req.method_override = Some("GET".into());
    let (route, cost, _, limits) = under(&policy, &req);
    assert_eq!((route.as_str(), cost), ("POST /v1/generate", 5));
    assert_eq!(limits, ["generate-once", "l", "read-many"]);
    // A policy whose backends honour no override reads none.
    let plain = load(&SHORTENED.replace(
        "routes:",
        "route_matching: {method_overrides: false}\nroutes:",
    ));
    assert_eq!(under(&plain, &req).3, ["generate-once", "l"]);
    // More distinct `_method` values than are kept (PHP may stop reading before the last):
    // any could be served, so every route of the path applies.
    let path = "/v1/items/7?_method=A&_method=B&_method=C&_method=DELETE&_method=GET";
    assert_eq!(
        under(&policy, &request("t", "u", "POST", path)).3,
        ["delete-once", "l"]
    );
    // Past eight other methods named, any of them could be served: every route of the path.
    let mut req = request("t", "u", "POST", "/v1/items/7");
    req.method_override = Some("A, B, C, D, E, F, G, H, I".into());
    assert_eq!(under(&policy, &req).3, ["delete-once", "l"]);
    // Repeats count once: the DELETE after them is read.
    req.method_override = Some("POST, POST, POST, POST, POST, POST, POST, POST, DELETE".into());
    assert_eq!(under(&policy, &req).3, ["delete-once", "l"]);
    // Express takes the text before a comma; every part is matched.
    let mut req = request("t", "u", "POST", "/v1/items/7");
    req.method_override = Some("DELETE, x".into());
    assert_eq!(under(&policy, &req).3, ["delete-once", "l"]);
    // Frameworks honour an override on a POST only.
    let mut req = request("t", "u", "GET", "/v1/items/7?_method=DELETE");
    req.method_override = Some("DELETE".into());
    assert_eq!(under(&policy, &req).3, ["l"]);
}

#[test]
fn a_route_keyed_limit_counts_under_every_route_matched() {
    let policy = load(
        r#"
default_tier: t
limits:
  per-route: {algorithm: fixed_window, limit: 5, window: 1m, key: [user, route]}
  per-user: {algorithm: fixed_window, limit: 50, window: 1m, key: [user]}
global: [per-route, per-user]
tiers:
  t: {}
routes:
  - {match: "DELETE /v1/items/*", cost: 1}
  - {match: "* /v1/**", cost: 2}
"#,
    );
    // A strict server keeps the `.`: `* /v1/**` is dearer; a lenient one serves the item.
    let resolved = policy.resolve(&request("t", "u", "DELETE", "/v1/items/7/."));
    let counters: Vec<(String, Vec<String>)> = (resolved.limits.iter())
        .map(|p| {
            let values = p.key.values.iter().map(|v| v.to_string()).collect();
            (p.def.name.to_string(), values)
        })
        .collect();
    let counter = |name: &str, values: &[&str]| {
        (
            name.to_owned(),
            values.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        counters,
        [
            counter("per-route", &["u", "* /v1/**"]),
            counter("per-user", &["u"]),
            counter("per-route", &["u", "DELETE /v1/items/*"]),
        ]
    );
}

#[test]
fn a_format_suffix_pays_for_its_route_when_the_policy_says_so() {
    let text = "default_tier: t\nlimits:\n  l: {algorithm: gcra, rate: 1/s, key: [ip]}\n\
                tiers:\n  t: {limits: [l]}\nroutes:\n  - {match: \"POST /v1/generate\", cost: 5}\n";
    let route_of = |policy: &Policy| {
        let resolved = policy.resolve(&request("t", "u", "POST", "/v1/generate.json"));
        (resolved.route.map(|r| r.name.to_string()), resolved.cost)
    };
    // Off by default: `generate.json` is a segment of its own.
    assert_eq!(route_of(&load(text)), (None, 1));
    // Rails and Spring serve it as `/v1/generate`.
    let rails = text.replace("tiers:", "route_matching: {format_suffixes: true}\ntiers:");
    assert_eq!(
        route_of(&load(&rails)),
        (Some("POST /v1/generate".into()), 5)
    );
}

#[test]
fn a_case_sensitive_policy_keeps_case_apart() {
    let text = EXAMPLE.replace(
        "\nroutes:\n",
        "\nroute_matching:\n  case_sensitive: true\nroutes:\n",
    );
    let policy = load(&text);
    let upper = policy.resolve(&request("someone", "ann", "POST", "/V1/Generate"));
    assert!(upper.route.is_none());
    let params = policy.resolve(&request("someone", "ann", "POST", "/v1/generate;x=1"));
    assert_eq!(params.cost, 5);
}

/// The `ip-burst` counter a request from `ip` is kept under.
fn ip_counter(policy: &Policy, ip: &str) -> Option<Vec<String>> {
    let req = RequestAttrs {
        ip: Some(addr(ip)),
        ..RequestAttrs::default()
    };
    applied(policy, &req, "ip-burst")
        .map(|(_, key)| key.values.iter().map(|v| v.to_string()).collect())
}

#[test]
fn clients_are_counted_by_network() {
    let policy = load(EXAMPLE);
    let one = Some(vec!["2001:db8:a:b::/64".to_owned()]);
    for ip in [
        "2001:db8:a:b::1",
        "2001:DB8:A:B:1:2:3:4",
        "2001:0db8:000a:000b::ffff",
    ] {
        assert_eq!(ip_counter(&policy, ip), one, "{ip}");
    }
    assert_ne!(ip_counter(&policy, "2001:db8:a:c::1"), one);
    assert_eq!(
        ip_counter(&policy, "::ffff:198.51.100.1"),
        Some(vec!["198.51.100.1".to_owned()])
    );

    let wider = load(&format!("ip_prefix: {{v4: 24, v6: 48}}\n{EXAMPLE}"));
    assert_eq!(wider.ip_prefix().v4, 24);
    assert_eq!(
        ip_counter(&wider, "198.51.100.1"),
        Some(vec!["198.51.100.0/24".to_owned()])
    );
    assert_eq!(
        ip_counter(&wider, "2001:db8:a:b::1"),
        Some(vec!["2001:db8:a::/48".to_owned()])
    );
}

#[test]
fn cost_comes_from_request_then_route_then_one() {
    let policy = load(EXAMPLE);
    let mut req = request("t", "u", "POST", "/v1/generate");
    assert_eq!(policy.resolve(&req).cost, 5);
    req.cost = Some(0);
    assert_eq!(
        policy.resolve(&req).cost,
        0,
        "an explicit zero is a pure look"
    );
    req.cost = Some(12);
    assert_eq!(policy.resolve(&req).cost, 12);
    assert_eq!(
        policy.resolve(&request("t", "u", "GET", "/elsewhere")).cost,
        1
    );
}

#[test]
fn limits_needing_a_missing_dimension_are_skipped() {
    let policy = load(EXAMPLE);
    let anonymous = RequestAttrs {
        ip: Some(addr("198.51.100.1")),
        ..RequestAttrs::default()
    };
    assert_eq!(
        names(&policy.resolve(&anonymous)),
        ["ip-burst", "ip-daily-candidate"]
    );

    let mut no_ip = request("t", "u", "GET", "/x");
    no_ip.ip = None;
    assert_eq!(
        names(&policy.resolve(&no_ip)),
        ["free-user-minute", "free-user-daily"]
    );

    // An empty value identifies no one, so it counts as absent.
    let mut blank_user = request("t", "", "GET", "/x");
    blank_user.ip = None;
    assert!(policy.resolve(&blank_user).limits.is_empty());

    let mut paid = request("acme", "ann", "GET", "/x");
    assert!(!names(&policy.resolve(&paid)).contains(&"api-key-minute"));
    paid.descriptors.insert("api_key".into(), "k-123".into());
    let key = applied(&policy, &paid, "api-key-minute").map(|(_, k)| k.values);
    assert_eq!(key, Some(["acme", "k-123"].into_iter().collect()));
}

/// The definition and key of limit `name` as it applies to `req`, if it does.
fn applied(policy: &Policy, req: &RequestAttrs, name: &str) -> Option<(Arc<LimitDef>, StateKey)> {
    policy
        .resolve(req)
        .limits
        .into_iter()
        .find(|p| &*p.def.name == name)
        .map(|p| (p.def, p.key))
}

#[test]
fn tenant_overrides_replace_numbers_but_keep_the_name() {
    let policy = load(EXAMPLE);
    let acme = request("acme", "ann", "GET", "/x");
    let mut initech = request("initech", "ann", "GET", "/x");
    initech.tier = Some("paid".into());
    let (Some((ours, our_key)), Some((theirs, their_key))) = (
        applied(&policy, &acme, "paid-user-minute"),
        applied(&policy, &initech, "paid-user-minute"),
    ) else {
        panic!("paid-user-minute should apply to both tenants");
    };
    assert_eq!((ours.params.quota(), theirs.params.quota()), (200, 100));
    assert!(matches!(ours.params, LimitParams::TokenBucket(_)));
    // One counter identity: a tenant whose override is added or removed keeps its counters,
    // read under the numbers that now apply to it.
    assert_eq!(ours.fingerprint, theirs.fingerprint);
    assert_eq!(
        (&*our_key.limit, our_key.fingerprint),
        ("paid-user-minute", ours.fingerprint)
    );
    assert_eq!(their_key.fingerprint, theirs.fingerprint);

    // An override of only `limit` keeps the window it did not mention.
    let tenant_minute = applied(&policy, &acme, "paid-tenant-minute").map(|(d, _)| d);
    let numbers = tenant_minute.map(|d| (d.params.quota(), d.params.window()));
    assert_eq!(numbers, Some((20_000, MINUTE)));
}

#[test]
fn a_limit_listed_in_several_places_applies_once_in_its_first_place() {
    let policy = load(
        r#"
default_tier: t
limits:
  shared: {algorithm: gcra, rate: 10/s, key: [user]}
  own: {algorithm: gcra, rate: 5/s, key: [user]}
global: [shared]
tiers:
  t: {limits: [own, shared, own]}
routes:
  - {match: "* /**", limits: [shared, own]}
"#,
    );
    let resolved = policy.resolve(&request("t", "u", "GET", "/a"));
    assert_eq!(names(&resolved), ["shared", "own"]);
}

#[test]
fn key_values_follow_the_declared_order_and_route_names() {
    let policy = load(
        r#"
default_tier: t
descriptors: [region]
limits:
  reversed: {algorithm: fixed_window, limit: 10, window: 1m, key: [user, tenant]}
  per-route: {algorithm: fixed_window, limit: 10, window: 1m, key: [tenant, route, region]}
tiers:
  t: {limits: [reversed, per-route]}
routes:
  - match: "get /v1/things/*"
"#,
    );
    let mut req = request("acme", "ann", "GET", "/v1/things/9");
    req.descriptors.insert("region".into(), "eu".into());
    let resolved = policy.resolve(&req);
    let values: Vec<Vec<String>> = resolved
        .limits
        .iter()
        .map(|p| p.key.values.iter().map(|v| v.to_string()).collect())
        .collect();
    let expected: [&[&str]; 2] = [&["ann", "acme"], &["acme", "GET /v1/things/*", "eu"]];
    assert_eq!(values, expected);
    // Without a matching route the route-keyed limit cannot apply.
    req.path = Some("/v2".into());
    assert_eq!(names(&policy.resolve(&req)), ["reversed"]);
}

#[test]
fn fingerprints_are_stable_and_depend_on_name_algorithm_and_key_only() {
    let text =
        "default_tier: t\nlimits:\n  a: {algorithm: gcra, rate: 10/s, burst: 20, key: [ip]}\n\
                tiers:\n  t: {limits: [a]}\n";
    let fingerprint = |policy: &Policy| policy.limits().map(|d| d.fingerprint).next();
    let original = fingerprint(&load(text));
    assert_eq!(
        original,
        fingerprint(&load(text)),
        "same text, same fingerprint"
    );
    // Pinned: a change here would reset every counter in every deployment on upgrade. (It
    // changed once, on purpose, when the numbers left the identity; ARCHITECTURE's upgrade
    // notes say so.)
    assert_eq!(original, Some(PINNED_FINGERPRINT));
    let renamed = text.replace("  a:", "  b:").replace("[a]", "[b]");
    assert_ne!(
        original,
        fingerprint(&load(&renamed)),
        "the name is part of it: two limits never share an identity"
    );
    let shadowed = text.replace("key: [ip]", "key: [ip], shadow: true");
    assert_eq!(
        original,
        fingerprint(&load(&shadowed)),
        "nor is shadow mode"
    );
    for renumbered in [
        text.replace("10/s", "600/min"),
        text.replace("burst: 20", "burst: 21"),
        text.replace("10/s", "11/s"),
    ] {
        assert_eq!(
            original,
            fingerprint(&load(&renumbered)),
            "numbers are not part of it, so counters survive a change of them: {renumbered}"
        );
    }
    for changed in [
        text.replace("[ip]", "[user]"),
        text.replace("gcra", "token_bucket"),
    ] {
        assert_ne!(original, fingerprint(&load(&changed)), "{changed}");
    }
}

const PINNED_FINGERPRINT: u64 = 12415398238121035798;

#[test]
fn requests_without_method_or_path_match_no_specific_route() {
    let policy = load(EXAMPLE);
    let mut req = request("t", "u", "POST", "/v1/generate");
    req.method = None;
    assert!(policy.resolve(&req).route.is_none());
    req.method = Some("POST".into());
    req.path = None;
    assert!(policy.resolve(&req).route.is_none());
}

#[test]
fn failure_modes_read_and_print_in_lowercase() {
    for mode in [FailureMode::Open, FailureMode::Closed, FailureMode::Degrade] {
        assert_eq!(mode.to_string().parse::<FailureMode>(), Ok(mode));
    }
    assert_eq!(
        FailureMode::default(),
        FailureMode::Degrade,
        "a limiter under stress keeps limiting by default"
    );
    assert!("OPEN".parse::<FailureMode>().is_err());
}

#[test]
fn policies_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Policy>();
    shareable::<Resolved>();
}

#[test]
fn an_override_shares_counters_only_where_the_key_holds_the_tenant() {
    let policy = load(
        r#"
default_tier: t
limits:
  per-ip: {algorithm: fixed_window, limit: 1000, window: 1d, key: [ip]}
  per-tenant-user: {algorithm: fixed_window, limit: 100, window: 1d, key: [tenant, user]}
tiers:
  t: {limits: [per-ip, per-tenant-user]}
tenants:
  small:
    overrides:
      per-ip: {limit: 10}
      per-tenant-user: {limit: 5}
"#,
    );
    let keys = |tenant: &str| {
        policy
            .resolve(&request(tenant, "u", "GET", "/"))
            .limits
            .iter()
            .map(|p| p.key.fingerprint)
            .collect::<Vec<_>>()
    };
    let (base, small) = (keys("other"), keys("small"));
    // One IP used under two tenants must not have one counter read under 1000/day and
    // 10/day at once: a client acting as both could shrink or reset the larger one's count.
    assert_ne!(base[0], small[0], "an IP-keyed override counts apart");
    // Keyed by tenant, counters are apart anyway; the override keeps the tenant's counter,
    // so adding or changing it carries usage over.
    assert_eq!(
        base[1], small[1],
        "a tenant-keyed override shares the identity"
    );
}

#[test]
fn a_tier_lists_the_global_limits_then_its_own_and_each_names_its_algorithm() {
    let policy = load(
        r#"default_tier: free
limits:
  everyone: {algorithm: gcra, rate: 100/s, key: [ip]}
  small: {algorithm: fixed_window, limit: 10, window: 1m, key: [tenant]}
  big: {algorithm: leaky_bucket, rate: 10/s, capacity: 50, key: [tenant]}
global: [everyone]
tiers:
  free: {limits: [small]}
  paid: {limits: [big]}
"#,
    );
    let names = |tier: &str| -> Vec<(String, &'static str)> {
        policy
            .tier_limits(tier)
            .expect("tier")
            .iter()
            .map(|d| (d.name.to_string(), d.params.algorithm()))
            .collect()
    };
    assert_eq!(
        names("free"),
        [
            ("everyone".to_owned(), "gcra"),
            ("small".to_owned(), "fixed_window")
        ]
    );
    assert_eq!(names("paid")[1], ("big".to_owned(), "leaky_bucket"));
    assert!(policy.tier_limits("gold").is_none());
}
