//! The failure-handling fields: a limit's `emergency` quota and the `store:` section's
//! breaker, retry and node-count settings, valid and invalid.
//!
//! The YAML starts right after `r#"`, so the first line of each text is line 1.

use super::{expect, load};
use crate::policy::{Emergency, StoreConfig};
use crate::time::SECOND;

const MILLISECOND: u64 = SECOND / 1_000;

const HEAD: &str = "default_tier: t\ntiers:\n  t: {limits: [a]}\n";

#[test]
fn emergency_quotas_and_store_settings_load() {
    let policy = load(&format!(
        r#"{HEAD}limits:
  a:
    algorithm: fixed_window
    limit: 100
    window: 1m
    key: [ip]
    emergency: {{limit: 10}}
  b:
    algorithm: token_bucket
    rate: 10/s
    key: [ip]
    emergency: {{fraction: 0.25}}
store: {{type: redis, url: "redis://127.0.0.1:6379", timeout: 5ms, expected_nodes: 4,
         breaker_failures: 3, breaker_cooldown: 500ms, retry_after: 2s}}
"#
    ));
    assert_eq!(policy.emergency("a"), Some(Emergency::Limit(10)));
    assert_eq!(policy.emergency("b"), Some(Emergency::Fraction(250_000)));
    let StoreConfig::Redis(s) = policy.store() else {
        panic!("{:?}", policy.store())
    };
    assert_eq!(s.timeout, Some(5 * MILLISECOND));
    assert_eq!((s.expected_nodes, s.breaker_failures), (Some(4), Some(3)));
    assert_eq!(s.breaker_cooldown, Some(500 * MILLISECOND));
    assert_eq!(s.retry_after, Some(2 * SECOND));
}

#[test]
fn an_emergency_quota_needs_exactly_one_form() {
    expect(
        r#"default_tier: t
limits:
  a:
    algorithm: fixed_window
    limit: 100
    window: 1m
    key: [ip]
    emergency: {limit: 10, fraction: 0.5}
tiers:
  t: {limits: [a]}
"#,
        8,
        "limits.a.emergency",
        "set exactly one of `limit`",
    );
}

#[test]
fn an_emergency_limit_above_the_quota_is_refused() {
    expect(
        r#"default_tier: t
limits:
  a:
    algorithm: fixed_window
    limit: 100
    window: 1m
    key: [ip]
    emergency: {limit: 500}
tiers:
  t: {limits: [a]}
"#,
        8,
        "limits.a.emergency.limit",
        "above the limit's own quota of 100",
    );
}

#[test]
fn an_emergency_fraction_must_be_a_share() {
    expect(
        r#"default_tier: t
limits:
  a:
    algorithm: fixed_window
    limit: 100
    window: 1m
    key: [ip]
    emergency: {fraction: 1.5}
tiers:
  t: {limits: [a]}
"#,
        8,
        "limits.a.emergency.fraction",
        "above 0 and at most 1",
    );
}

#[test]
fn failure_settings_do_not_apply_to_the_memory_store() {
    expect(
        r#"default_tier: t
limits:
  a: {algorithm: fixed_window, limit: 1, window: 1m, key: [ip]}
tiers:
  t: {limits: [a]}
store: {type: memory, expected_nodes: 3}
"#,
        6,
        "store.expected_nodes",
        "does not apply to a store of type `memory`",
    );
}

#[test]
fn bad_breaker_numbers_name_their_field() {
    expect(
        r#"default_tier: t
limits:
  a: {algorithm: fixed_window, limit: 1, window: 1m, key: [ip]}
tiers:
  t: {limits: [a]}
store:
  type: redis
  url: "redis://127.0.0.1:6379"
  breaker_failures: 0
  breaker_cooldown: soon
"#,
        9,
        "store.breaker_failures",
        "at least 1",
    );
}

#[test]
fn a_sentinel_store_names_its_sentinels_and_master() {
    let policy = load(&format!(
        r#"{HEAD}limits:
  a: {{algorithm: fixed_window, limit: 1, window: 1m, key: [ip]}}
store:
  type: redis_sentinel
  sentinels: ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]
  master: mymaster
  timeout: 20ms
"#
    ));
    let StoreConfig::RedisSentinel(s) = policy.store() else {
        panic!("{:?}", policy.store())
    };
    assert_eq!(s.urls.len(), 2);
    assert_eq!(s.master.as_deref(), Some("mymaster"));
    assert_eq!(s.timeout, Some(20 * MILLISECOND));
    assert_eq!(policy.store().kind(), "redis_sentinel");
}

#[test]
fn a_sentinel_store_needs_a_master_name() {
    expect(
        r#"default_tier: t
limits:
  a: {algorithm: fixed_window, limit: 1, window: 1m, key: [ip]}
tiers:
  t: {limits: [a]}
store: {type: redis_sentinel, sentinels: ["redis://127.0.0.1:26379"]}
"#,
        6,
        "store.master",
        "needs `master`",
    );
}

#[test]
fn sentinel_urls_are_checked_and_fields_of_other_kinds_refused() {
    expect(
        r#"default_tier: t
limits:
  a: {algorithm: fixed_window, limit: 1, window: 1m, key: [ip]}
tiers:
  t: {limits: [a]}
store: {type: redis_sentinel, sentinels: ["10.0.0.1:26379"], master: m}
"#,
        6,
        "store.sentinels[0]",
        "not a redis:// URL",
    );
    expect(
        r#"default_tier: t
limits:
  a: {algorithm: fixed_window, limit: 1, window: 1m, key: [ip]}
tiers:
  t: {limits: [a]}
store: {type: redis, url: "redis://127.0.0.1:6379", master: m}
"#,
        6,
        "store.master",
        "does not apply to a store of type `redis`",
    );
}
