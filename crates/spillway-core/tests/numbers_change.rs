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
async fn a_token_bucket_keeps_what_was_left_at_most_the_new_burst() {
    let old = policy("token_bucket", "rate: 1000/d\n    burst: 1000");
    let new = policy("token_bucket", "rate: 900/d\n    burst: 900");
    // 50 left before, 50 after (rounded down, one spent now); a fresh bucket would have 900.
    assert_eq!(
        used_then_reloaded(old.clone(), new.clone(), 950).await,
        (true, 49)
    );
    // Spent out: still spent out under the new numbers.
    assert_eq!(used_then_reloaded(old, new, 1000).await, (false, 0));
    // Loosened: what was left stays left, and the bigger burst refills from there.
    let bigger = policy("token_bucket", "rate: 2000/d\n    burst: 2000");
    let small = policy("token_bucket", "rate: 1000/d\n    burst: 1000");
    assert_eq!(used_then_reloaded(small, bigger, 990).await.1, 9);
}

#[tokio::test]
async fn loosening_a_limit_keeps_what_was_used() {
    let old = policy("fixed_window", "limit: 1000\n    window: 1d");
    let new = policy("fixed_window", "limit: 2000\n    window: 1d");
    assert_eq!(used_then_reloaded(old, new, 1000).await, (true, 999));
    let old = policy("gcra", "rate: 1000/d\n    burst: 1000");
    let new = policy("gcra", "rate: 2000/d\n    burst: 2000");
    assert_eq!(used_then_reloaded(old, new, 1000).await, (true, 999));
}

#[tokio::test]
async fn changing_the_algorithm_starts_fresh() {
    let old = policy("fixed_window", "limit: 1000\n    window: 1d");
    let new = policy("sliding_window", "limit: 900\n    window: 1d");
    assert_eq!(used_then_reloaded(old, new, 950).await, (true, 899));
}
