//! Loading, validating and matching envoyproxy/ratelimit-style files.

use super::*;
use crate::algorithm::LimitParams;
use crate::time::SECOND;

/// Written in the style of upstream's examples: nested descriptors, key-only wildcards,
/// a value-specific override, `unlimited`, `shadow_mode` and `replaces`.
const EDGE: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit:
      unit: MINUTE
      requests_per_unit: 60
  - key: tenant
    descriptors:
      - key: user
        rate_limit: {unit: second, requests_per_unit: 5}
  - key: tenant
    value: internal
    rate_limit: {unlimited: true}
  - key: path
    value: "/api/*"
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 1000, name: api}
  - key: plan
    value: free
    shadow_mode: true
    detailed_metric: true
    rate_limits:
      - {requests_per_unit: 10, window: 30s}
      - {requests_per_unit: 2, unit: second, algorithm: token_bucket, burst: 4}
  - key: vip
    rate_limit:
      unit: second
      requests_per_unit: 100
      replaces: [{name: edge.remote_address}]
"#;

fn load(files: &[(&str, &str)]) -> Result<EnvoyConfig, EnvoyConfigError> {
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|(o, t)| (o.to_string(), t.to_string()))
        .collect();
    EnvoyConfig::from_sources(&sources)
}

fn edge() -> Arc<Domain> {
    let config = load(&[("edge.yaml", EDGE)]).expect("valid");
    config.domain("edge").expect("edge").clone()
}

fn limits(found: &Found<'_>) -> Vec<Arc<LimitDef>> {
    match found.rule {
        Rule::Limits(l) => l.iter().map(|l| l.def.clone()).collect(),
        Rule::Unlimited => Vec::new(),
    }
}

#[test]
fn key_only_nodes_match_any_value_and_count_each_value_apart() {
    let d = edge();
    let found = d
        .find([("remote_address", "10.0.0.1")].into_iter())
        .expect("match");
    let defs = limits(&found);
    assert_eq!(&*defs[0].name, "edge.remote_address");
    assert_eq!(defs[0].params.quota(), 60);
    assert_eq!(defs[0].params.window(), 60 * SECOND);
    assert_eq!(found.values, ["10.0.0.1"]);
}

#[test]
fn an_exact_value_beats_the_key_only_node() {
    let d = edge();
    let found = d.find([("tenant", "internal")].into_iter()).expect("match");
    assert!(matches!(found.rule, Rule::Unlimited));
}

#[test]
fn a_limit_applies_only_at_the_descriptors_last_entry() {
    let d = edge();
    // `tenant` alone lands on a node without a limit; three entries go deeper than the tree.
    assert!(d.find([("tenant", "acme")].into_iter()).is_none());
    assert!(d
        .find([("tenant", "acme"), ("user", "u"), ("x", "y")].into_iter())
        .is_none());
    let found = d
        .find([("tenant", "acme"), ("user", "u1")].into_iter())
        .expect("nested");
    assert_eq!(&*limits(&found)[0].name, "edge.tenant.user");
    assert_eq!(found.values, ["acme", "u1"]);
    assert!(d.find([("unknown", "x")].into_iter()).is_none());
}

#[test]
fn prefix_wildcards_match_and_may_share_one_counter() {
    let d = edge();
    let found = d
        .find([("path", "/api/users")].into_iter())
        .expect("prefix");
    assert_eq!(&*limits(&found)[0].name, "api");
    assert_eq!(found.values, ["/api/*"]);
    assert!(d.find([("path", "/web")].into_iter()).is_none());
}

#[test]
fn a_list_of_limits_keeps_each_with_its_own_algorithm_and_window() {
    let d = edge();
    let found = d.find([("plan", "free")].into_iter()).expect("plan");
    let Rule::Limits(list) = found.rule else {
        panic!("limits")
    };
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|l| l.def.shadow));
    assert!(matches!(list[0].def.params, LimitParams::FixedWindow(_)));
    assert_eq!(list[0].def.params.window(), 30 * SECOND);
    assert_eq!(list[0].unit, None, "a custom window has no upstream unit");
    assert!(matches!(list[1].def.params, LimitParams::TokenBucket(_)));
    assert_eq!(list[1].def.params.quota(), 4);
    assert_eq!(list[1].unit, Some(Unit::Second));
    assert_ne!(list[0].def.fingerprint, list[1].def.fingerprint);
}

#[test]
fn replaces_names_are_kept() {
    let d = edge();
    let found = d.find([("vip", "yes")].into_iter()).expect("vip");
    let Rule::Limits(list) = found.rule else {
        panic!("limits")
    };
    assert_eq!(&*list[0].replaces[0], "edge.remote_address");
}

#[test]
fn problems_are_reported_with_file_line_column_and_path() {
    let bad = "domain: shop\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 0\n  - key: ''\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: b\n";
    let err = load(&[("shop.yaml", bad)])
        .expect_err("invalid")
        .to_string();
    assert!(
        err.contains("shop.yaml:5:13: descriptors[0].rate_limit.unit: unknown unit `fortnight`"),
        "{err}"
    );
    assert!(err.contains("shop.yaml:6:26: descriptors[0].rate_limit.requests_per_unit: `requests_per_unit` must be at least 1"), "{err}");
    assert!(
        err.contains("descriptors[1].key: `key` must not be empty"),
        "{err}"
    );
    assert!(err.contains("descriptors[2]: a descriptor needs"), "{err}");
}

#[test]
fn unknown_fields_and_duplicates_are_refused() {
    let typo = "domain: d\ndescriptors:\n  - key: a\n    rate_limt: {unit: second, requests_per_unit: 1}\n";
    let err = load(&[("t.yaml", typo)]).expect_err("typo").to_string();
    assert!(
        err.starts_with("t.yaml:4:5: descriptors[0].rate_limt"),
        "{err}"
    );
    let dup = "domain: d\ndescriptors:\n  - {key: a, value: x, rate_limit: {unit: second, requests_per_unit: 1}}\n  - {key: a, value: x, rate_limit: {unit: second, requests_per_unit: 2}}\n";
    let err = load(&[("d.yaml", dup)]).expect_err("dup").to_string();
    assert!(
        err.contains("another descriptor at this level has key `a` and value `x`"),
        "{err}"
    );
    // Two paths as deep that spell one name (key `a` with value `b`, and key `a_b`; or one
    // level down) would count in one counter for the same values: refused.
    for spelled_alike in [
        "domain: d\ndescriptors:\n  - {key: a, value: b, rate_limit: {unit: second, requests_per_unit: 1}}\n  - {key: a_b, rate_limit: {unit: second, requests_per_unit: 2}}\n",
        "domain: d\ndescriptors:\n  - key: x\n    value: y_z\n    descriptors:\n      - {key: c, rate_limit: {unit: second, requests_per_unit: 1}}\n  - key: x_y\n    value: z\n    descriptors:\n      - {key: c, rate_limit: {unit: second, requests_per_unit: 2}}\n",
    ] {
        let err = load(&[("n.yaml", spelled_alike)])
            .expect_err("one counter for two limits")
            .to_string();
        assert!(
            err.contains("limit `d.")
                && err.contains("would count in the same counters as the one on line"),
            "{err}"
        );
    }
    // Spelled alike but never sharing a counter: paths of different depths (so keys of
    // different lengths), another algorithm, an explicit name, or no counters at all.
    for apart in [
        "domain: d\ndescriptors:\n  - {key: a, value: b.c, rate_limit: {unit: second, requests_per_unit: 1}}\n  - key: a_b\n    descriptors:\n      - {key: c, rate_limit: {unit: second, requests_per_unit: 2}}\n",
        "domain: d\ndescriptors:\n  - {key: a, value: b, rate_limit: {unit: second, requests_per_unit: 1}}\n  - {key: a_b, rate_limit: {unit: second, requests_per_unit: 2, algorithm: sliding_window}}\n",
        "domain: d\ndescriptors:\n  - {key: a, value: b, rate_limit: {unit: second, requests_per_unit: 1}}\n  - {key: a_b, rate_limit: {name: other, unit: second, requests_per_unit: 2}}\n",
        "domain: d\ndescriptors:\n  - {key: a, value: b, rate_limit: {unit: second, requests_per_unit: 1}}\n  - {key: a_b, rate_limit: {unlimited: true}}\n",
    ] {
        assert!(load(&[("a.yaml", apart)]).is_ok(), "{apart}");
    }
    // Named apart, spelled alike: the in-memory store tells counters apart by fingerprint and
    // values, so the fingerprints differ (the given name is part of them).
    let named = "domain: d\ndescriptors:\n  - {key: a, value: b, rate_limit: {unit: second, requests_per_unit: 1}}\n  - {key: a_b, rate_limit: {name: other, unit: second, requests_per_unit: 2}}\n";
    let config = load(&[("a.yaml", named)]).expect("valid");
    let d = config.domain("d").expect("d");
    let print = |entries: &[(&str, &str)]| {
        let found = d.find(entries.iter().copied()).expect("a match");
        let defs = limits(&found);
        assert_eq!(defs.len(), 1);
        (defs[0].fingerprint, found.values)
    };
    let (ab, ab_values) = print(&[("a", "b")]);
    let (other, other_values) = print(&[("a_b", "b")]);
    assert_eq!(
        ab_values, other_values,
        "one value each: the same in a counter key"
    );
    assert_ne!(ab, other, "named apart, counted apart");
    let one = "domain: d\ndescriptors: []\n";
    let err = load(&[("1.yaml", one), ("2.yaml", one)])
        .expect_err("twice")
        .to_string();
    assert!(
        err.contains("2.yaml:1:9: domain: domain `d` is already defined in 1.yaml"),
        "{err}"
    );
}

/// Limits given one name share its compiled name, so an answer's headers, which list a name
/// once, find them as one (by pointer).
#[test]
fn limits_given_one_name_share_it() {
    let text = "domain: d\ndescriptors:\n  - {key: a, rate_limit: {name: shared, unit: second, requests_per_unit: 1}}\n  - {key: b, rate_limit: {name: shared, unit: minute, requests_per_unit: 5}}\n  - {key: c, rate_limit: {unit: second, requests_per_unit: 1}}\n";
    let config = load(&[("d.yaml", text)]).expect("valid");
    let d = config.domain("d").expect("d");
    let def = |key: &str| limits(&d.find([(key, "v")].into_iter()).expect("a match"))[0].clone();
    assert!(def("a").name.same_compilation(&def("b").name));
    assert!(!def("a").name.same_compilation(&def("c").name));
    assert_ne!(
        def("a").fingerprint,
        def("b").fingerprint,
        "still two counters"
    );
}

#[test]
fn months_and_years_are_read_as_upstream_counts_them() {
    let text = "domain: d\ndescriptors:\n  - {key: m, rate_limit: {unit: MONTH, requests_per_unit: 3}}\n  - {key: y, rate_limit: {unit: year, requests_per_unit: 4}}\n";
    let config = load(&[("d.yaml", text)]).expect("valid");
    let d = config.domain("d").expect("d");
    for (key, days, count) in [("m", 30, 3), ("y", 365, 4)] {
        let list = limits(&d.find([(key, "v")].into_iter()).expect("a match"));
        assert_eq!(list[0].params.window(), days * crate::time::DAY, "{key}");
        assert_eq!(list[0].params.quota(), count, "{key}");
    }
    let err = load(&[("d.yaml", &text.replace("MONTH", "fortnight"))])
        .expect_err("unknown")
        .to_string();
    assert!(err.contains("week, month or year"), "{err}");
}

#[test]
fn overrides_are_fixed_windows_of_one_unit() {
    let d = edge();
    let limit = d.override_limit(7, Unit::Minute).expect("valid");
    assert_eq!(limit.def.params.quota(), 7);
    assert_eq!(limit.def.params.window(), 60 * SECOND);
    // A limit of 0, which upstream's service reads as denying every request: a window of one
    // that says 0, which the plan charges above its quota.
    let none = d.override_limit(0, Unit::Second).expect("valid");
    assert!(none.denies_all());
    assert_eq!((none.requests_per_unit, none.def.params.quota()), (0, 1));
    assert!(!limit.denies_all());
    // The name is the domain's, made once: every override shares its quoted forms.
    let other = d.override_limit(9, Unit::Hour).expect("valid");
    assert_eq!(limit.def.name, format!("{}.override", d.name).as_str());
    assert!(std::ptr::eq(limit.def.name.sf(), other.def.name.sf()));
    // Fingerprints are made once per unit too: each unit counts apart, each call on one unit
    // counts together.
    for (i, unit) in Unit::ALL.into_iter().enumerate() {
        assert_eq!(unit as usize, i, "{unit:?}");
    }
    let print = |unit| d.override_limit(5, unit).expect("valid").def.fingerprint;
    let prints: std::collections::HashSet<u64> = Unit::ALL.into_iter().map(print).collect();
    assert_eq!(prints.len(), Unit::ALL.len());
    assert_eq!(print(Unit::Hour), other.def.fingerprint);
    // The counters' identity is older than the table: each unit's fingerprint is still the
    // hash each call used to compute, so an upgrade keeps every override's counters.
    for unit in Unit::ALL {
        let place = format!("{}.override/{}", d.name, unit.micros());
        let mut hasher = siphasher::sip::SipHasher13::new_with_keys(0, 0);
        for part in ["envoy", &*d.name, place.as_str(), "fixed_window"] {
            std::hash::Hasher::write(&mut hasher, &(part.len() as u64).to_le_bytes());
            std::hash::Hasher::write(&mut hasher, part.as_bytes());
        }
        assert_eq!(print(unit), std::hash::Hasher::finish(&hasher), "{unit:?}");
    }
}
