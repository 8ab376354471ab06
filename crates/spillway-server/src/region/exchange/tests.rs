use super::*;
use spillway_core::algorithm::{FixedWindow, LimitParams};
use spillway_testkit::policy::regions_store;
use spillway_testkit::redis::RedisServer;

/// A window length no policy limit has (a tenant override set at run time) is published,
/// announced and read by the other region; a region whose stamp stops moving is cut off.
#[tokio::test]
async fn override_windows_travel_and_a_frozen_publisher_is_cut_off() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let store = regions_store(
        &[("us", &a.url()), ("eu", &b.url())],
        &["exchange: {interval: 100ms, partition_after: 1s}"],
    );
    let policy = crate::test_support::aggregate_policy(&store);
    let regions = policy.regions().expect("regions");
    // Hashes expire at an absolute time: the clock must read a date to come (2030).
    let clock = crate::clock::ServerClock::manual(1_900_000_000_000);
    let manual = clock.manual_control().expect("manual");
    let ta = Arc::new(Tally::new(0, 2, regions.partition_after, 0.5));
    let tb = Arc::new(Tally::new(1, 2, regions.partition_after, 0.5));
    let mut xa = Exchange::new(regions, ta.clone(), clock.shared());
    let mut xb = Exchange::new(regions, tb.clone(), clock.shared());
    let len: Micros = 7 * 60_000_000;
    let now = clock.now();
    let start = now - now % len;
    ta.add((len, start, "k".into()), 3);
    let none = BTreeSet::new();
    xa.tick(&none).await;
    xb.tick(&none).await; // learns the length
    xb.tick(&none).await; // reads it
    let params = LimitParams::FixedWindow(FixedWindow::new(10, len).unwrap());
    let now = clock.now();
    assert!(!tb.cut_off(0, now), "us was read and its stamp is fresh");
    assert_eq!(tb.others(&params, "k", now), 3);
    // us stops publishing (frozen), its store still answers: after partition_after, cut off.
    manual.advance(2_000_000);
    xb.tick(&none).await;
    assert!(tb.cut_off(0, clock.now()));
}

/// A far region's Redis refusing the login (the exchange connects on first use, so the
/// start goes on): the refusal is logged once as an error naming the region and the
/// server, never the password, however many ticks it lasts; once a call succeeds, a new
/// refusal is logged again. Real redis-server, its password changed under the exchange.
#[tokio::test]
async fn a_far_region_refusing_the_login_is_told_once_while_it_lasts() {
    const GIVEN: &str = "given-pw-Q7x";
    const OTHER: &str = "other-pw-K3m";
    let us = RedisServer::start();
    let eu = RedisServer::start_with(&["--requirepass", OTHER]);
    let eu_url = format!("redis://:{GIVEN}@127.0.0.1:{}", eu.port());
    let store = regions_store(
        &[("us", &us.url()), ("eu", &eu_url)],
        &["exchange: {interval: 100ms, partition_after: 2s}"],
    );
    let policy = crate::test_support::aggregate_policy(&store);
    let regions = policy.regions().expect("regions");
    let clock = crate::clock::ServerClock::manual(1_900_000_000_000);
    let tally = Arc::new(Tally::new(0, 2, regions.partition_after, 0.5));
    let mut exchange = Exchange::new(regions, tally, clock.shared());
    let lengths = window_lengths(&policy);
    let logs = crate::test_support::Logs::capture();
    let told = |logs: &crate::test_support::Logs| {
        let text = logs.text();
        assert!(
            !text.contains(GIVEN) && !text.contains(OTHER),
            "the logs show a password: {text}"
        );
        let named = format!(
            "region eu's Redis server at 127.0.0.1:{} refused the login",
            eu.port()
        );
        text.lines()
            .filter(|l| l.contains("ERROR") && l.contains(&named))
            .count()
    };
    for _ in 0..3 {
        exchange.tick(&lengths).await;
    }
    assert_eq!(told(&logs), 1, "{}", logs.text());
    // The server takes the given password: the read succeeds, and the next refusal (its
    // password changed again, its clients dropped) is told anew.
    let set = |now: &str, to: &str| {
        spillway_testkit::redis::command_as(
            eu.port(),
            Some(now),
            &format!("CONFIG SET requirepass {to}"),
        )
    };
    assert!(set(OTHER, GIVEN).is_some_and(|r| r.starts_with("+OK")));
    exchange.tick(&lengths).await;
    assert!(!exchange.links[1].refusal.told(), "{}", logs.text());
    assert!(set(GIVEN, OTHER).is_some_and(|r| r.starts_with("+OK")));
    spillway_testkit::redis::command_as(eu.port(), Some(OTHER), "CLIENT KILL TYPE normal");
    for _ in 0..3 {
        exchange.tick(&lengths).await;
    }
    assert_eq!(told(&logs), 2, "{}", logs.text());
}

#[test]
fn past_the_bound_the_largest_counts_are_kept_and_the_region_is_marked() {
    let p = |f: &str| (60_000_000u64, 0u64, Box::<str>::from(f));
    let mut r1 = HashMap::new();
    r1.insert(p("small"), 1);
    r1.insert(p("big"), 50);
    r1.insert(p(CATCH_ALL), 2);
    let mut r2 = HashMap::new();
    r2.insert(p("mid"), 10);
    let known = gather(&[HashMap::new(), r1, r2], 3, 3);
    assert_eq!(
        known.counts.len(),
        3,
        "the catch-all first, then the largest"
    );
    assert_eq!(known.counts[&p("big")][1], 50);
    assert_eq!(known.counts[&p("mid")][2], 10);
    assert!(!known.counts.contains_key(&p("small")));
    assert_eq!(&*known.truncated, &[false, true, false]);
    let all = gather(&[HashMap::new(), HashMap::new(), HashMap::new()], 3, 2);
    assert!(all.truncated.iter().all(|&t| !t));
}

/// A node's tally and its exchange.
type Node = (Arc<Tally>, Exchange);

/// One node of `us` (Redis `a`) and one of `eu` (Redis `b`), each with its tally and
/// exchange, on a manual clock reading a date to come (hashes expire at an absolute time);
/// `partition_after` an hour, so no region is cut off while a test moves the clock.
fn us_and_eu(a: &RedisServer, b: &RedisServer) -> (crate::clock::ServerClock, Node, Node) {
    let store = regions_store(
        &[("us", &a.url()), ("eu", &b.url())],
        &["exchange: {interval: 100ms, partition_after: 1h}"],
    );
    let policy = crate::test_support::aggregate_policy(&store);
    let regions = policy.regions().expect("regions");
    let clock = crate::clock::ServerClock::manual(1_900_000_000_000);
    let node = |r: usize| {
        let tally = Arc::new(Tally::new(r, 2, regions.partition_after, 0.5));
        let exchange = Exchange::new(regions, tally.clone(), clock.shared());
        (tally, exchange)
    };
    let (us, eu) = (node(0), node(1));
    (clock, us, eu)
}

/// The announced window lengths leave the set once no node has used them for two of their
/// windows, so lengths a tenant override used once do not fill the exchange's cap for good;
/// and past the cap ([`MAX_LENGTHS`]), a length not read reads each region at its share
/// rather than at 0 (fail closed). Real redis-servers, manual clock.
#[tokio::test]
async fn unused_lengths_leave_the_announcement_and_unread_ones_fail_closed() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let (clock, (ta, mut xa), (tb, mut xb)) = us_and_eu(&a, &b);
    let manual = clock.manual_control().expect("manual");
    let none = BTreeSet::new();
    let key = "{rl:agg:us}:lengths_until";
    let announced = || {
        let text = spillway_testkit::redis::command(a.port(), &format!("ZCARD {key}"));
        text.and_then(|t| t.trim().trim_start_matches(':').parse::<usize>().ok())
    };
    let add = |len: Micros, n: u64| {
        let now = clock.now();
        ta.add((len, now - now % len, "k".into()), n);
    };

    // A 2-second window used once: announced, then gone once 4 s have passed and us
    // publishes again (with another length in use).
    add(2_000_000, 1);
    xa.tick(&none).await;
    assert_eq!(announced(), Some(1));
    manual.advance(5_000_000);
    add(60_000_000, 1);
    xa.tick(&none).await;
    assert_eq!(announced(), Some(1), "only the minute is still in use");

    // 70 lengths in use at once, 1 to 70 minutes: eu reads the 64 whose hashes last longest.
    let minute: Micros = 60_000_000;
    for m in 1..=70 {
        add(m * minute, 3);
    }
    xa.tick(&none).await;
    assert_eq!(announced(), Some(70));
    xb.tick(&none).await; // learns them
    xb.tick(&none).await; // reads them
    let now = clock.now();
    let window = |m: u64| LimitParams::FixedWindow(FixedWindow::new(100, m * minute).unwrap());
    assert_eq!(tb.others(&window(70), "k", now), 3, "read");
    assert_eq!(tb.others(&window(7), "k", now), 3, "read");
    assert_eq!(
        tb.others(&window(6), "k", now),
        50,
        "not read: us at its share"
    );
    assert_eq!(
        tb.others(&window(6), "fresh", now),
        50,
        "nor any counter of it"
    );
}

/// A region whose read fails keeps its last counts, read for the lengths of then: a length
/// read since (here the policy's, after a reload) reads that region at its share, not at 0,
/// while the lengths its counts were read for keep their counts. Real redis-servers, `us`
/// killed.
#[tokio::test]
async fn a_length_added_while_a_region_cannot_be_read_reads_it_at_its_share() {
    let (mut a, b) = (RedisServer::start(), RedisServer::start());
    let (clock, (ta, mut xa), (tb, mut xb)) = us_and_eu(&a, &b);
    let minute: Micros = 60_000_000;
    let hour = 60 * minute;
    let now = clock.now();
    ta.add((minute, now - now % minute, "k".into()), 3);
    let none = BTreeSet::new();
    xa.tick(&none).await;
    xb.tick(&none).await; // learns the minute
    xb.tick(&none).await; // reads it
    let window = |len: Micros| LimitParams::FixedWindow(FixedWindow::new(100, len).unwrap());
    assert_eq!(tb.others(&window(minute), "k", clock.now()), 3);

    a.kill();
    xb.tick(&BTreeSet::from([hour])).await;
    let now = clock.now();
    assert!(!tb.cut_off(0, now), "within partition_after");
    assert_eq!(tb.others(&window(hour), "k", now), 50, "never read from us");
    assert_eq!(
        tb.others(&window(minute), "k", now),
        3,
        "kept from the last read"
    );
}

/// A region's hash too large to read whole is read in part (`HSCAN`), and a counter left out
/// of that part read at the region's share, however far past it the region really is. So the
/// counters this node admits itself (those it published) and every catch-all are read
/// exactly from such a region. Here eu has published 20 counters, and us's hash holds 3,000
/// others beside them (each of the 20 at 90 of 100, far past us's share of 50, and 7 under
/// the catch-all); eu reads at most 100 fields a hash, yet knows all 20 exactly. Before, each
/// of the 20 was left out with a chance of about 2 in 3 and read as 50. Real redis-servers.
#[tokio::test]
async fn counters_this_node_admits_are_read_exactly_from_a_region_read_in_part() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let (clock, _us, (tb, mut xb)) = us_and_eu(&a, &b);
    xb.read_cap = Some(100);
    let minute: Micros = 60_000_000;
    let now = clock.now();
    let start = now - now % minute;
    let hash = format!("{{rl:agg:us}}:{minute}:{start}");
    let mine: Vec<String> = (0..20).map(|i| format!("mine-{i:02}")).collect();
    for chunk in (0..3_000).collect::<Vec<u32>>().chunks(500) {
        let fields: String = chunk.iter().map(|i| format!(" filler-{i:05} 1")).collect();
        let set = spillway_testkit::redis::command(a.port(), &format!("HSET {hash}{fields}"));
        assert!(set.is_some_and(|r| r.starts_with(':')), "filled");
    }
    let watched: String = mine.iter().map(|f| format!(" {f} 90")).collect();
    let set = spillway_testkit::redis::command(a.port(), &format!("HSET {hash}{watched} * 7"));
    assert!(set.is_some_and(|r| r.starts_with(':')));
    // us publishes (its stamp), eu admits its 20 counters and publishes them, then reads us.
    spillway_testkit::redis::command(a.port(), &format!("SET {{rl:agg:us}}:stamp {now}"));
    for field in &mine {
        tb.add((minute, start, field.as_str().into()), 1);
    }
    xb.tick(&BTreeSet::from([minute])).await;
    let params = LimitParams::FixedWindow(FixedWindow::new(100, minute).unwrap());
    let now = clock.now();
    assert!(!tb.cut_off(0, now), "us is live");
    for field in &mine {
        assert_eq!(
            tb.others(&params, field, now),
            97,
            "{field}: 90 and the catch-all's 7"
        );
    }
    // A counter eu never admitted, left out or not, reads us at no less than its share.
    assert!(tb.others(&params, "never-seen", now) >= 50);
}
