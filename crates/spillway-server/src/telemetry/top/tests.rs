//! The node's sketches on a manual clock: what is counted, how windows expire, and that a
//! flood of client-made names cannot grow them.

use super::*;
use spillway_core::policy::Policy;
use spillway_core::request::RequestAttrs;
use spillway_core::time::Clock;
use spillway_core::time::{ManualClock, SECOND};
use spillway_testkit::zipf::{assert_top_ten, heaviest, zipf_stream};

const POLICY: &str = r#"
default_tier: free
limits:
  per-user:
    algorithm: token_bucket
    rate: 10/min
    burst: 10
    key: [tenant, user]
tiers:
  free:
    limits: [per-user]
"#;

fn who<'a>(tenant: &'a str, user: &'a str) -> Who<'a> {
    Who {
        tenant: Some(tenant),
        user: Some(user),
    }
}

#[test]
fn counters_and_denials_are_ranked_and_expire_with_their_window() {
    let clock = ManualClock::new(1_800_000_000 * SECOND);
    let top = Top::new("n1");
    let policy = Policy::from_yaml_str(POLICY, "test").expect("valid");
    let attrs = RequestAttrs {
        tenant: Some("acme".into()),
        user: Some("alice".into()),
        ..RequestAttrs::default()
    };
    let planned = policy.resolve(&attrs).limits;
    for i in 0..5 {
        top.record(clock.now(), &planned, &who("acme", "alice"), i >= 3);
    }
    top.record(clock.now(), &[], &who("globex", "bob"), true);

    let s = top.summary(clock.now(), Window::Minute, 10);
    assert_eq!(
        s.hot_keys,
        vec![HotKeyRow {
            limit: "per-user".into(),
            key: vec!["acme".into(), "alice".into()],
            count: 5
        }]
    );
    let tenants: Vec<_> = s
        .blocked_tenants
        .iter()
        .map(|r| (&*r.tenant, r.denied))
        .collect();
    assert_eq!(tenants, vec![("acme", 2), ("globex", 1)]);
    assert_eq!(&*s.blocked_users[0].user, "alice");

    // Past a minute: gone from the minute, still in the ten minutes.
    clock.advance(61 * SECOND);
    assert!(top
        .summary(clock.now(), Window::Minute, 10)
        .blocked_tenants
        .is_empty());
    assert_eq!(
        top.summary(clock.now(), Window::TenMinutes, 10)
            .blocked_tenants
            .len(),
        2
    );
    // Past ten minutes: gone everywhere.
    clock.advance(10 * 60 * SECOND);
    assert_eq!(
        top.summary(clock.now(), Window::TenMinutes, 10),
        Summary::default()
    );
}

#[test]
fn random_tenants_cannot_grow_memory_and_long_names_are_cut() {
    let small = Shape {
        capacity: 64,
        ..Shape::DEFAULT
    };
    let top = Top::with_shapes("n1", small, small);
    let bound = top.max_rows();
    let clock = ManualClock::new(1_800_000_000 * SECOND);
    let long = "x".repeat(10_000);
    for i in 0..100_000u64 {
        let tenant = format!("{long}{i}");
        top.record(clock.now(), &[], &who(&tenant, &tenant), true);
        if i % 1_000 == 0 {
            clock.advance(SECOND);
        }
    }
    assert!(top.rows() <= bound, "{} rows > {bound}", top.rows());
    let s = top.summary(clock.now(), Window::TenMinutes, 100);
    assert!(s
        .blocked_tenants
        .iter()
        .all(|r| r.tenant.len() <= MAX_LABEL));
    assert!(s.blocked_users.iter().all(|r| r.user.len() <= MAX_LABEL));
}

#[test]
fn summaries_of_nodes_add_up() {
    let row = |t: &str, denied| TenantRow {
        tenant: t.into(),
        denied,
    };
    let a = Summary {
        blocked_tenants: vec![row("acme", 5), row("globex", 4)],
        ..Summary::default()
    };
    let b = Summary {
        blocked_tenants: vec![row("globex", 3), row("initech", 1)],
        ..Summary::default()
    };
    let merged = Summary::merge([&a, &b], 2);
    assert_eq!(
        merged.blocked_tenants,
        vec![row("globex", 7), row("acme", 5)]
    );
}

#[test]
fn the_prometheus_lines_show_at_most_ten_and_drop_those_who_leave() {
    let clock = ManualClock::new(1_800_000_000 * SECOND);
    let top = Top::new("n1");
    for i in 0..15u64 {
        for _ in 0..=i {
            top.record(clock.now(), &[], &who(&format!("t{i}"), "u"), true);
        }
    }
    let text = top.blocked_exposition(clock.now());
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("spillway_top_blocked{"))
            .count()
    };
    assert_eq!(series(&text), 10);
    assert!(text.contains("spillway_top_blocked{tenant=\"t14\"} 15"));
    assert!(!text.contains("tenant=\"t4\""), "t4 is 11th: {text}");
    clock.advance(61 * SECOND);
    assert_eq!(series(&top.blocked_exposition(clock.now())), 0);
}

/// Issue 15's accuracy bar at the server's default sample (one decision in
/// [`DEFAULT_SAMPLE`], weighted): 2,000,000 decisions whose users follow Zipf(1.0) over
/// 1,000,000 users, each user its own tenant, through `Top::record` with exact counts kept
/// beside. The 1,000 heaviest users are over their limits and denied (about half the
/// decisions), the rest allowed. The true top ten counters and the true ten most denied
/// tenants are recovered with precision >= 0.9, each reported count within 5%.
///
/// The sample is random, so the thread's draws are seeded and the test is deterministic.
/// The margin is statistical, not absolute: the tenth count is about 14,000, whose estimate
/// at one in 8 has a standard deviation of about 2.2%, so 5% is 2.2 of them. Run with 20
/// other seeds, every one passed, the worst row of each off by 2.4% to 4.3%.
///
/// With every tenant of a 1,000,000-long tail denied, the denial tables need as many rows as
/// the counters': see `at_the_default_sample_a_long_tail_of_denials_keeps_the_most_denied`.
#[test]
fn at_the_default_sample_the_zipf_top_ten_and_most_denied_are_recovered() {
    use crate::telemetry::decision_log::sampling::seed_this_thread;
    const USERS: u64 = 1_000_000;
    const DECISIONS: u64 = 2_000_000;
    /// The heaviest users, over their limits: every decision of theirs is denied.
    const OVER: u64 = 1_000;
    let policy = Policy::from_yaml_str(POLICY, "test").expect("valid");
    let top = Top::new("n1").sampled(DEFAULT_SAMPLE);
    assert_eq!(top.sample(), 8);
    let now = 1_800_000_000 * SECOND;

    let mut keys: HashMap<(u64, u64), u64> = HashMap::new();
    let mut tenants: HashMap<u64, u64> = HashMap::new();
    seed_this_thread(20261203);
    for user in zipf_stream(USERS as usize, 1.0, DECISIONS as usize, 20261203) {
        let tenant = user;
        *keys.entry((tenant, user)).or_default() += 1;
        let denied = user < OVER;
        if denied {
            *tenants.entry(tenant).or_default() += 1;
        }
        let (t, u) = (format!("t{tenant}"), format!("u{user}"));
        let attrs = RequestAttrs {
            tenant: Some(t.clone()),
            user: Some(u.clone()),
            ..RequestAttrs::default()
        };
        top.record(now, &policy.resolve(&attrs).limits, &who(&t, &u), denied);
    }

    fn check(what: &str, got: &[(String, u64)], truth: &HashMap<String, u64>) {
        let real = heaviest(truth.iter().map(|(k, &c)| (k.clone(), c)), 10);
        assert_top_ten(what, got, &real, |item| truth[item]);
    }
    let s = top.summary(now, Window::Minute, 10);
    let got: Vec<(String, u64)> = s
        .hot_keys
        .iter()
        .map(|r| (r.key.join("/"), r.count))
        .collect();
    let truth = keys
        .into_iter()
        .map(|((t, u), c)| (format!("t{t}/u{u}"), c))
        .collect();
    check("counter", &got, &truth);
    let got: Vec<(String, u64)> = s
        .blocked_tenants
        .iter()
        .map(|r| (r.tenant.to_string(), r.denied))
        .collect();
    let truth = tenants
        .into_iter()
        .map(|(t, c)| (format!("t{t}"), c))
        .collect();
    check("tenant", &got, &truth);
}

/// A list as `/v1/top` ranks it: names and counts, heaviest first.
type Ranked = Vec<(String, u64)>;

/// Every decision of a Zipf(1.0) stream over `USERS` users (each its own tenant) denied,
/// through `top`'s `record` on this thread, its sample's draws seeded with `seed`; returns the
/// ten most denied tenants, then users, each with the exact counts beside them.
fn every_decision_denied(top: &Top, seed: u64) -> [(Ranked, HashMap<String, u64>); 2] {
    use crate::telemetry::decision_log::sampling::seed_this_thread;
    const USERS: usize = 1_000_000;
    const DECISIONS: usize = 2_000_000;
    let now = 1_800_000_000 * SECOND;
    let mut exact: HashMap<u64, u64> = HashMap::new();
    seed_this_thread(seed);
    for user in zipf_stream(USERS, 1.0, DECISIONS, seed) {
        *exact.entry(user).or_default() += 1;
        let (t, u) = (format!("t{user}"), format!("u{user}"));
        // The counters play no part in the denial tables: none are passed.
        top.record(now, &[], &who(&t, &u), true);
    }
    let s = top.summary(now, Window::Minute, 10);
    let tenants = s
        .blocked_tenants
        .iter()
        .map(|r| (r.tenant.to_string(), r.denied))
        .collect();
    let users = s
        .blocked_users
        .iter()
        .map(|r| (format!("{}/{}", r.tenant, r.user), r.denied))
        .collect();
    let by = |name: fn(u64) -> String| exact.iter().map(|(&k, &c)| (name(k), c)).collect();
    [
        (tenants, by(|k| format!("t{k}"))),
        (users, by(|k| format!("t{k}/u{k}"))),
    ]
}

/// [`every_decision_denied`] through `top` (seed 20261203): its ten most denied tenants and
/// users are the true ten with precision >= 0.9, each count within 5%.
fn assert_long_tail_kept(top: &Top) {
    for ((got, exact), what) in every_decision_denied(top, 20261203)
        .into_iter()
        .zip(["tenant", "user"])
    {
        let real = heaviest(exact.iter().map(|(k, &c)| (k.clone(), c)), 10);
        assert_top_ten(what, &got, &real, |item| exact[item]);
    }
}

/// Issue 15's accuracy bar for the denial tables on a long tail: 2,000,000 decisions, EVERY
/// one denied, whose users follow Zipf(1.0) over 1,000,000 users (each its own tenant), at the
/// default sample (one in [`DEFAULT_SAMPLE`], weighted). The true ten most denied tenants and
/// users are recovered with precision >= 0.9, each reported count within 5%.
///
/// One thread feeds one shard: 128 rows per interval with the 1,024 rows of `Top::new`. With
/// the 256 rows the tables had before (32 a shard) this fails even counting every decision.
/// The margin is statistical (the tenth count is about 14,000; see the test above), so the
/// thread's draws are seeded; run by hand with other seeds, see the README (`/v1/top`).
#[test]
fn at_the_default_sample_a_long_tail_of_denials_keeps_the_most_denied() {
    let top = Top::new("n1").sampled(DEFAULT_SAMPLE);
    assert_long_tail_kept(&top);
}

/// The same long tail counting every decision (`--top-k-sample 1`): no sampling noise, so
/// this pins the tables' size alone (with 256 rows, precision was 8/10 here).
#[test]
fn counting_every_decision_a_long_tail_of_denials_keeps_the_most_denied() {
    let top = Top::new("n1");
    assert_eq!(top.sample(), 1);
    assert_long_tail_kept(&top);
}

#[test]
fn hot_keys_are_picked_by_limit_before_they_are_ranked() {
    const TWO: &str = r#"
default_tier: free
limits:
  per-user:
    algorithm: token_bucket
    rate: 10/min
    burst: 10
    key: [tenant, user]
  per-tenant:
    algorithm: token_bucket
    rate: 100/min
    burst: 100
    key: [tenant]
tiers:
  free:
    limits: [per-user, per-tenant]
"#;
    let policy = Policy::from_yaml_str(TWO, "test").expect("valid");
    let top = Top::new("n1");
    let now = 1_800_000_000 * SECOND;
    // Tenant i has i + 1 users, one decision each: per-tenant's key for i counts i + 1,
    // every per-user key counts 1, so per-user's keys rank below all of per-tenant's.
    for t in 0..5 {
        for u in 0..=t {
            let (tenant, user) = (format!("t{t}"), format!("u{u}"));
            let attrs = RequestAttrs {
                tenant: Some(tenant.clone()),
                user: Some(user.clone()),
                ..RequestAttrs::default()
            };
            top.record(
                now,
                &policy.resolve(&attrs).limits,
                &who(&tenant, &user),
                false,
            );
        }
    }
    let limits =
        |s: &Summary| -> Vec<String> { s.hot_keys.iter().map(|r| r.limit.to_string()).collect() };
    let all = top.summary(now, Window::Minute, 3);
    assert_eq!(limits(&all), ["per-tenant"; 3]);
    let user_keys = top.summary_with(now, Window::Minute, 3, HotKeys::Of("per-user"));
    assert_eq!(limits(&user_keys), ["per-user"; 3]);
    assert!(user_keys.hot_keys.iter().all(|r| r.count == 1));
    let none = top.summary_with(now, Window::Minute, 3, HotKeys::Of("no-such-limit"));
    assert!(none.hot_keys.is_empty());
    // The denial lists do not depend on the filter.
    assert_eq!(none.blocked_tenants, all.blocked_tenants);
    // What a node publishes: each limit's heaviest, heaviest first overall.
    let each = top.summary_with(now, Window::Minute, 3, HotKeys::EachLimit { total: 100 });
    assert_eq!(each.hot_keys.len(), 6);
    assert_eq!(limits(&each)[..3], ["per-tenant"; 3]);
    // With fewer rows allowed in all than the limits' heaviest, each limit keeps its share
    // (two each of four), so the colder limit is not pushed out by the hotter one.
    let capped = top.summary_with(now, Window::Minute, 3, HotKeys::EachLimit { total: 4 });
    assert_eq!(
        limits(&capped),
        ["per-tenant", "per-tenant", "per-user", "per-user"]
    );
    // Room a limit's share leaves goes to the heaviest of the rest: of five, two each, then
    // per-tenant's third.
    let five = top.summary_with(now, Window::Minute, 3, HotKeys::EachLimit { total: 5 });
    assert_eq!(
        limits(&five),
        [
            "per-tenant",
            "per-tenant",
            "per-tenant",
            "per-user",
            "per-user"
        ]
    );
    let mut merged = Summary::merge([&each], 100);
    merged.keep_limit("per-user");
    assert_eq!(merged.hot_keys.len(), 3);
}

/// The test above with other seeds, run by hand, printing each seed's precision and worst
/// count for tenants and users (what the README quotes):
/// `cargo test -p spillway-server --lib telemetry::top::tests::long_tail_seeds -- --ignored --nocapture`
#[test]
#[ignore = "a sweep over seeds, run by hand"]
fn long_tail_seeds() {
    let mut passed = 0;
    const SEEDS: u64 = 20;
    for seed in 1..=SEEDS {
        let top = Top::new("n1").sampled(DEFAULT_SAMPLE);
        let mut ok = true;
        let mut line = format!("seed {seed}:");
        for ((got, exact), what) in every_decision_denied(&top, seed)
            .into_iter()
            .zip(["tenants", "users"])
        {
            let real = heaviest(exact.iter().map(|(k, &c)| (k.clone(), c)), 10);
            let hits = got
                .iter()
                .filter(|(k, _)| real.iter().any(|(t, _)| t == k))
                .count();
            let worst = got
                .iter()
                .map(|(k, c)| c.abs_diff(exact[k]) as f64 / exact[k] as f64)
                .fold(0.0, f64::max);
            ok &= hits >= 9 && worst <= 0.05;
            line += &format!(" {what} {hits}/10 worst {:.1}%;", worst * 100.0);
        }
        passed += usize::from(ok);
        println!("{line} {}", if ok { "pass" } else { "FAIL" });
    }
    println!("{passed} of {SEEDS} seeds passed");
}
