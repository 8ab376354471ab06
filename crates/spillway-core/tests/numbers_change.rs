//! A counter survives a change of its limit's numbers: the engine over the in-memory store,
//! with a policy replaced as a reload replaces it, on a manual clock.

use spillway_core::engine::Engine;
use spillway_core::policy::Policy;
use spillway_core::request::{CheckMode, RequestAttrs};
use spillway_core::store::MemoryStore;
use spillway_core::time::{ManualClock, DAY, SECOND};
use std::sync::Arc;

/// A policy with one daily limit per user, of `algorithm` with `numbers` (its YAML fields).
fn policy(algorithm: &str, numbers: &str) -> Arc<Policy> {
    let text = format!(
        "default_tier: free\nlimits:\n  free-user-daily:\n    algorithm: {algorithm}\n    \
         {numbers}\n    key: [user]\ntiers:\n  free:\n    limits: [free-user-daily]\n"
    );
    Arc::new(Policy::from_yaml_str(&text, "policy.yaml").expect("valid policy"))
}

fn user(name: &str) -> RequestAttrs {
    RequestAttrs {
        user: Some(name.into()),
        ..RequestAttrs::default()
    }
}

/// Spends `used` of `before`'s quota for one user, replaces the policy with `after`, and
/// returns whether the next request passes and what the verdict says remains.
async fn used_then_reloaded(before: Arc<Policy>, after: Arc<Policy>, used: u64) -> (bool, u64) {
    // Mid-day, so a daily window has most of its length to run.
    let clock = Arc::new(ManualClock::new(1_700_000_000 * SECOND + DAY / 3));
    let store = Arc::new(MemoryStore::new(10_000, clock.clone()));
    let engine = Engine::new(before, store, clock.clone());
    let abuser = user("abuser");
    for i in 0..used {
        let v = engine
            .check(&abuser, CheckMode::Consume)
            .await
            .expect("memory");
        assert!(v.allowed, "request {i} is within the old limit");
    }
    engine.replace_policy(after);
    clock.advance(SECOND);
    let v = engine
        .check(&abuser, CheckMode::Consume)
        .await
        .expect("memory");
    let remaining = v.governing().map_or(u64::MAX, |o| o.decision.remaining);
    (v.allowed, remaining)
}

#[tokio::test]
async fn tightening_a_limit_below_what_was_used_denies_instead_of_starting_fresh() {
    for (algorithm, old, new) in [
        (
            "fixed_window",
            "limit: 1000\n    window: 1d",
            "limit: 900\n    window: 1d",
        ),
        (
            "sliding_window",
            "limit: 1000\n    window: 1d",
            "limit: 900\n    window: 1d",
        ),
        (
            "sliding_log",
            "limit: 1000\n    window: 1d",
            "limit: 900\n    window: 1d",
        ),
        (
            "token_bucket",
            "rate: 1000/d\n    burst: 1000",
            "rate: 900/d\n    burst: 900",
        ),
        (
            "gcra",
            "rate: 1000/d\n    burst: 1000",
            "rate: 900/d\n    burst: 900",
        ),
        (
            "leaky_bucket",
            "rate: 1000/d\n    capacity: 1000",
            "rate: 900/d\n    capacity: 900",
        ),
    ] {
        let got = used_then_reloaded(policy(algorithm, old), policy(algorithm, new), 950).await;
        assert_eq!(got, (false, 0), "{algorithm}: 950 used of 1000, now 900");
    }
}

#[tokio::test]
async fn loosening_a_limit_keeps_what_was_used() {
    for (algorithm, old, new) in [
        (
            "fixed_window",
            "limit: 1000\n    window: 1d",
            "limit: 2000\n    window: 1d",
        ),
        (
            "token_bucket",
            "rate: 1000/d\n    burst: 1000",
            "rate: 2000/d\n    burst: 2000",
        ),
        (
            "gcra",
            "rate: 1000/d\n    burst: 1000",
            "rate: 2000/d\n    burst: 2000",
        ),
        (
            "leaky_bucket",
            "rate: 1000/d\n    capacity: 1000",
            "rate: 2000/d\n    capacity: 2000",
        ),
    ] {
        let got = used_then_reloaded(policy(algorithm, old), policy(algorithm, new), 1000).await;
        assert_eq!(got, (true, 999), "{algorithm}: 1000 used of 1000, now 2000");
    }
}

#[tokio::test]
async fn changing_the_algorithm_starts_fresh() {
    let old = policy("fixed_window", "limit: 1000\n    window: 1d");
    let new = policy("sliding_window", "limit: 900\n    window: 1d");
    assert_eq!(used_then_reloaded(old, new, 950).await, (true, 899));
}

#[test]
fn emergency_quotas_built_per_request_share_one_id() {
    // The server derives each limit's emergency parameters on every degraded request; the
    // same numbers must name the same register entry, so the emergency store's slots stay
    // on the in-place path and the register does not grow per request.
    let p = policy("gcra", "rate: 1000/d\n    burst: 1000");
    let def = p.limits().next().expect("one limit");
    let (a, b) = (
        spillway_core::policy::emergency_params(&def.params, 10),
        spillway_core::policy::emergency_params(&def.params, 10),
    );
    assert_eq!(a.quota(), 10);
    assert_eq!(a.id(), b.id());
    assert_ne!(a.id(), def.params.id());
}

#[tokio::test]
async fn a_request_with_several_limits_reads_each_under_its_new_numbers() {
    // Two limits on one request take the store's multi-limit path.
    let text = |daily: u64| {
        format!(
            "default_tier: free\nlimits:\n  daily:\n    algorithm: gcra\n    rate: {daily}/d\n    \
             burst: {daily}\n    key: [user]\n  hourly:\n    algorithm: fixed_window\n    \
             limit: 5000\n    window: 1h\n    key: [user]\ntiers:\n  free:\n    \
             limits: [daily, hourly]\n"
        )
    };
    let load = |daily| Arc::new(Policy::from_yaml_str(&text(daily), "policy.yaml").expect("valid"));
    let clock = Arc::new(ManualClock::new(1_700_000_000 * SECOND));
    let store = Arc::new(MemoryStore::new(10_000, clock.clone()));
    let engine = Engine::new(load(1000), store, clock.clone());
    let mut abuser = user("abuser");
    abuser.cost = Some(950);
    assert!(
        engine
            .check(&abuser, CheckMode::Consume)
            .await
            .expect("memory")
            .allowed
    );
    engine.replace_policy(load(900));
    abuser.cost = Some(1);
    let v = engine
        .check(&abuser, CheckMode::Consume)
        .await
        .expect("memory");
    assert!(!v.allowed, "950 used of the daily 1000, now 900");
    let hourly = v
        .outcomes
        .iter()
        .find(|o| &*o.name == "hourly")
        .expect("hourly");
    assert_eq!(
        hourly.decision.remaining,
        5000 - 950,
        "the denied request took nothing"
    );
}

/// A zero-cost check under tightened numbers must not write back the converted state (in
/// units of the new numbers), so nothing used is erased once the numbers grow again.
#[tokio::test]
async fn a_zero_cost_check_under_other_numbers_erases_nothing() {
    for (algorithm, big, small) in [
        (
            "token_bucket",
            "rate: 1000/d\n    burst: 1000",
            "rate: 10/d\n    burst: 10",
        ),
        (
            "gcra",
            "rate: 1000/d\n    burst: 1000",
            "rate: 10/d\n    burst: 10",
        ),
        (
            "leaky_bucket",
            "rate: 1000/d\n    capacity: 1000",
            "rate: 10/d\n    capacity: 10",
        ),
    ] {
        let clock = Arc::new(ManualClock::new(1_700_000_000 * SECOND + DAY / 3));
        let store = Arc::new(MemoryStore::new(10_000, clock.clone()));
        let engine = Engine::new(policy(algorithm, big), store, clock.clone());
        let abuser = user("abuser");
        for _ in 0..1000 {
            let v = engine.check(&abuser, CheckMode::Consume).await;
            assert!(v.expect("memory").allowed);
        }
        engine.replace_policy(policy(algorithm, small));
        let free = RequestAttrs {
            cost: Some(0),
            ..user("abuser")
        };
        let v = engine.check(&free, CheckMode::Consume).await;
        // 1,000 used is more than the new 10 hold: the excess is owed, not forgiven.
        assert!(
            !v.expect("memory").allowed,
            "{algorithm}: what exceeds the new numbers stays owed"
        );
        engine.replace_policy(policy(algorithm, big));
        let v = engine.check(&abuser, CheckMode::Consume).await;
        assert!(
            !v.expect("memory").allowed,
            "{algorithm}: the zero-cost check erased what was used"
        );
    }
}
