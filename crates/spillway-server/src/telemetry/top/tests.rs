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
/// (With every tenant of a 1,000,000-long tail denied, the 256-row tenant tables miss the bar
/// even counting every decision: a limit of their size, not of sampling.)
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
