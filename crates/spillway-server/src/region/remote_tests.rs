//! [`Remote`], a far region's store, against listeners the tests control (refusing,
//! holding connections unanswered, then joining them to a real redis-server), real
//! redis-servers and clusters refusing the login, and an attempt that panics.

use super::remote::{Remote, CONNECT_WITHIN};
use super::RegionNode;
use crate::clock::ServerClock;
use crate::config::PolicySource;
use crate::failure::{FailureSettings, DEFAULT_BREAKER_COOLDOWN};
use spillway_core::policy::{Planned, Policy, RedisSettings, StoreConfig};
use spillway_core::request::{CheckMode, RequestAttrs};
use spillway_core::store::{MemoryStore, Store, StoreError};
use spillway_core::time::Micros;
use spillway_testkit::policy::{regions_store, unreachable};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a failed attempt answers in these tests: the default breaker cooldown.
const BACKOFF: Duration = DEFAULT_BREAKER_COOLDOWN;
/// The budget of a call to `eu` in the node tests: the default `home_timeout`.
const HOME_TIMEOUT: Duration = Duration::from_millis(250);

/// The far region `eu` on `config`, called with a one-second budget, on a manual clock the
/// test moves.
fn far_region_eu(config: StoreConfig) -> (Remote, ServerClock) {
    let clock = ServerClock::manual(1_000);
    let budget = Duration::from_secs(1);
    let remote = Remote::new("eu".into(), config, budget, BACKOFF, clock.shared());
    (remote, clock)
}

/// A `redis` store at `url`.
fn redis_at(url: String) -> StoreConfig {
    StoreConfig::Redis(RedisSettings {
        urls: vec![url],
        ..Default::default()
    })
}

/// Moves `clock` past a failed attempt's backoff.
fn past_backoff(clock: &ServerClock) {
    let micros = Micros::try_from(BACKOFF.as_micros()).expect("small");
    clock
        .manual_control()
        .expect("a manual clock")
        .advance(micros);
}

/// What a [`Listener`] does with each connection it takes.
#[derive(Clone, Copy)]
enum Taken {
    /// Closes it at once.
    Refused,
    /// Holds it without answering until [`Listener::open`], then joins it to the server
    /// on this port.
    Held(u16),
}

/// A loopback listener the test controls, counting the connections it takes.
struct Listener {
    port: u16,
    taken: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
}

impl Listener {
    async fn start(what: Taken) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        let taken = Arc::new(AtomicUsize::new(0));
        let (gate, opened) = watch::channel(false);
        let count = taken.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let Taken::Held(upstream) = what else {
                    continue;
                };
                let mut opened = opened.clone();
                tokio::spawn(async move {
                    if opened.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream));
                    if let Ok(mut server) = server.await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, taken, gate }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Connections taken so far.
    fn taken(&self) -> usize {
        self.taken.load(Ordering::SeqCst)
    }

    /// Joins the held connections, and those to come, to their server.
    fn open(&self) {
        self.gate.send_replace(true);
    }
}

/// Regions `us` and `eu` (at `eu_url`) with one `home` limit, 5 an hour per tenant, and
/// tenant `acme` at home in `eu`: the policy, the node of `us` and acme's planned limit.
fn acme_from_us(eu_url: &str) -> (Policy, Arc<RegionNode>, Vec<Planned>) {
    let store = regions_store(&[("us", &unreachable(1)), ("eu", eu_url)], &[]);
    let policy = PolicySource::Builtin
        .parse(&format!(
            "default_tier: t
{store}limits:
  exact: {{algorithm: token_bucket, rate: 5/h, burst: 5, key: [tenant], scope: home}}
tiers:
  t: {{limits: [exact]}}
tenants:
  acme: {{home_region: eu}}
"
        ))
        .expect("valid policy");
    let (node, planned) = acme_at(&policy, &ServerClock::manual(1_000));
    (policy, node, planned)
}

/// The node of `us` for `policy` on `clock`, and tenant `acme`'s planned limits.
fn acme_at(policy: &Policy, clock: &ServerClock) -> (Arc<RegionNode>, Vec<Planned>) {
    let failure = FailureSettings::default();
    let node = RegionNode::new(policy, Some("us"), &failure, clock.shared())
        .expect("a node")
        .expect("two regions");
    let attrs = RequestAttrs {
        tenant: Some("acme".into()),
        ..RequestAttrs::default()
    };
    (node, policy.resolve(&attrs).limits)
}

/// A far region whose link holds the first connection unanswered past the first call's
/// budget: that call is cut at its budget, the attempt it started goes on, and once the
/// link answers a later call is served on the connection that attempt made (the listener
/// took one in all). Real redis-server behind the listener; real time, since a paused
/// clock would jump past the budgets while the test waits for Redis.
#[tokio::test]
async fn a_call_cut_at_its_budget_leaves_its_connection_to_a_later_call() {
    let eu = spillway_testkit::redis::RedisServer::start();
    let link = Listener::start(Taken::Held(eu.port())).await;
    let (policy, node, planned) = acme_from_us(&link.url());
    let own = MemoryStore::new(100, ServerClock::manual(1_000).shared());
    let mode = CheckMode::Consume;

    let started = tokio::time::Instant::now();
    let first = node
        .check_failing_closed(&policy, &own, &planned, mode)
        .await;
    let took = started.elapsed();
    assert!(
        matches!(first, Err(StoreError::Timeout(budget)) if budget == HOME_TIMEOUT),
        "{first:?}"
    );
    assert!(took >= HOME_TIMEOUT, "{took:?}");
    assert_eq!(link.taken(), 1);

    link.open();
    // A call that is not cut at the budget (as readiness asks) waits for the attempt.
    let far = node.stores[1].as_ref().expect("eu is far");
    far.ping().await.expect("the first call's attempt connects");
    let (allowed, outcomes) = node
        .check_failing_closed(&policy, &own, &planned, mode)
        .await
        .expect("eu answers");
    assert!(allowed && outcomes[0].decision.allowed, "{outcomes:?}");
    assert_eq!(link.taken(), 1, "one connection, the first call's");
}

/// Calls to a far region that refuses connections share one attempt: a burst of calls
/// while it is in flight makes no other, nor does a call within the backoff after it
/// failed (answered at once with its error); after the backoff, the next burst makes one
/// more. Counted in connections the listener took, against what one call alone takes
/// (the client tries a few times within an attempt).
#[tokio::test(start_paused = true)]
async fn concurrent_calls_to_a_refusing_region_make_one_attempt() {
    let link = Listener::start(Taken::Refused).await;
    let (alone, _) = far_region_eu(redis_at(link.url()));
    alone.ping().await.expect_err("refused");
    let per_attempt = link.taken();
    assert!(per_attempt >= 1);

    let (remote, clock) = far_region_eu(redis_at(link.url()));
    let burst = || futures_util::future::join_all((0..16).map(|_| remote.ping()));
    let failed = burst().await;
    assert!(failed.iter().all(Result::is_err), "{failed:?}");
    assert_eq!(link.taken(), 2 * per_attempt, "16 calls, one attempt");

    let at = tokio::time::Instant::now();
    let again = remote.ping().await.expect_err("still refused");
    assert_eq!(at.elapsed(), Duration::ZERO, "answered at once");
    assert!(again.to_string().contains("region eu's"), "{again}");
    assert_eq!(
        link.taken(),
        2 * per_attempt,
        "no attempt within the backoff"
    );

    past_backoff(&clock);
    let failed = burst().await;
    assert!(failed.iter().all(Result::is_err), "{failed:?}");
    assert_eq!(
        link.taken(),
        3 * per_attempt,
        "one more attempt after the backoff"
    );
}

/// A failed attempt's backoff runs from the attempt's start: an attempt on a link that
/// swallows packets outlasts the cooldown, so the first call after it fails starts the next
/// attempt (as the breaker's probe would) instead of being answered with the old failure. A
/// listener that takes connections and never answers; paused clock, the process clock moved
/// by the attempt's length while it runs.
#[tokio::test(start_paused = true)]
async fn the_backoff_runs_from_the_attempts_start() {
    let never = Listener::start(Taken::Held(0)).await;
    let (remote, clock) = far_region_eu(redis_at(never.url()));
    let control = clock.manual_control().expect("a manual clock");
    let lasts = Micros::try_from(CONNECT_WITHIN.as_micros()).expect("small");
    // The call starts the attempt when first polled; the clock moves after that.
    let (first, ()) = tokio::join!(remote.ping(), async {
        tokio::task::yield_now().await;
        control.advance(lasts);
    });
    first.expect_err("never answered");
    let taken = never.taken();
    assert!(taken >= 1);

    let at = tokio::time::Instant::now();
    remote.ping().await.expect_err("never answered");
    assert!(
        at.elapsed() > Duration::ZERO,
        "a new attempt, not the old failure"
    );
    assert!(never.taken() > taken, "a new attempt connects");
}

/// An attempt whose connecting panics fails like any other: the calls waiting for it hear
/// that it panicked (not that the runtime stopped), the calls within the backoff after it
/// are answered with that at once and make no attempt, and the panic is logged once as an
/// error however often it happens. Past the backoff the next call makes a real attempt (a
/// listener that refuses, counting connections); paused clock.
#[tokio::test(start_paused = true)]
async fn an_attempt_that_panics_fails_and_backs_off() {
    let link = Listener::start(Taken::Refused).await;
    let (remote, clock) = far_region_eu(redis_at(link.url()));
    let logs = crate::test_support::Logs::capture();

    remote.start_panicking_attempt();
    let waiting = futures_util::future::join_all((0..4).map(|_| remote.ping())).await;
    for answer in waiting {
        let e = answer.expect_err("it panicked").to_string();
        assert!(
            e.contains("connecting to region eu's store panicked"),
            "{e}"
        );
    }
    let at = tokio::time::Instant::now();
    let again = remote.ping().await.expect_err("within the backoff");
    assert_eq!(at.elapsed(), Duration::ZERO, "answered at once");
    assert!(again.to_string().contains("panicked"), "{again}");
    assert_eq!(link.taken(), 0, "no attempt within the backoff");

    past_backoff(&clock);
    remote.start_panicking_attempt();
    let e = remote.ping().await.expect_err("it panicked again");
    assert!(e.to_string().contains("panicked"), "{e}");
    past_backoff(&clock);
    let e = remote.ping().await.expect_err("refused").to_string();
    assert!(!e.contains("panicked") && link.taken() >= 1, "{e}");

    let text = logs.text();
    let told: Vec<&str> = text.lines().filter(|l| l.contains("panicked")).collect();
    assert_eq!(told.len(), 1, "{text}");
    assert!(
        told[0].contains("ERROR") && told[0].contains("region eu"),
        "{text}"
    );
}

/// An attempt that fails after every call waiting for it was cut at its budget is logged
/// with its reason, once, naming the region: the calls themselves only heard that they
/// timed out. A listener that takes connections and never answers; paused clock.
#[tokio::test(start_paused = true)]
async fn a_failure_no_call_heard_is_logged_with_its_reason() {
    let never = Listener::start(Taken::Held(0)).await;
    let (policy, node, planned) = acme_from_us(&never.url());
    let own = MemoryStore::new(100, ServerClock::manual(1_000).shared());
    let logs = crate::test_support::Logs::capture();

    let started = tokio::time::Instant::now();
    let first = node
        .check_failing_closed(&policy, &own, &planned, CheckMode::Consume)
        .await;
    assert!(matches!(first, Err(StoreError::Timeout(_))), "{first:?}");
    assert_eq!(started.elapsed(), HOME_TIMEOUT);
    assert!(!logs.text().contains("WARN"), "{}", logs.text());

    // Past the attempt's bound: it has failed by then, with nobody waiting.
    tokio::time::sleep(CONNECT_WITHIN).await;
    let text = logs.text();
    let told: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("region eu"))
        .collect();
    assert_eq!(told.len(), 1, "{text}");
    assert!(told[0].contains("then one tries again"), "{text}");
}

/// A home call to a far region whose Redis is down fails naming the region's store, not
/// only its URL. A port with nothing listening (a real refused connection).
#[tokio::test]
async fn home_calls_to_a_far_region_that_is_down_name_the_region() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = closed.local_addr().expect("its address").port();
    drop(closed);
    let config = StoreConfig::Redis(RedisSettings {
        urls: vec![format!("redis://:s3cret@127.0.0.1:{port}")],
        ..Default::default()
    });
    let (remote, _) = far_region_eu(config);
    let err = remote
        .ping()
        .await
        .expect_err("nothing listens")
        .to_string();
    assert!(
        err.contains("cannot connect to region eu's Redis store") && !err.contains("s3cret"),
        "{err}"
    );
}

/// Attempts at a far region whose store refuses the login (one per backoff) fail each
/// time; the refusal is logged once, naming the region and the server. Real redis-server.
#[tokio::test]
async fn home_calls_to_a_far_region_refusing_the_login_log_it_once() {
    let eu = spillway_testkit::redis::RedisServer::start_with(&["--requirepass", "right-pw-Tz1"]);
    let config = StoreConfig::Redis(RedisSettings {
        urls: vec![format!("redis://:wrong-pw-Ub6@127.0.0.1:{}", eu.port())],
        ..Default::default()
    });
    let (remote, clock) = far_region_eu(config);
    let logs = crate::test_support::Logs::capture();
    for _ in 0..3 {
        assert!(remote.ping().await.is_err());
        past_backoff(&clock);
    }
    let text = logs.text();
    let named = format!(
        "the region eu's Redis server at 127.0.0.1:{} refused the login",
        eu.port()
    );
    let told: Vec<&str> = text.lines().filter(|l| l.contains(&named)).collect();
    assert_eq!(told.len(), 1, "{text}");
    assert!(
        told[0].contains("ERROR")
            && told[0].contains(&crate::store::login_hints::region("eu"))
            && !text.contains("cannot connect to the Redis store")
            && !text.contains("wrong-pw"),
        "{text}"
    );
}

/// Connections the servers of `ports` have taken in so far (asked with `password`).
fn connections(ports: &[u16], password: &str) -> u64 {
    let received = |port: u16| {
        let info =
            spillway_testkit::redis::command_as(port, Some(password), "INFO stats").expect("INFO");
        let line = info
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .expect("total_connections_received");
        line.trim().parse::<u64>().expect("a count")
    };
    ports.iter().map(|&p| received(p)).sum()
}

/// A far region's cluster refusing the login: the first failed attempt asks the seeds
/// which one refused and logs it, naming the region's cluster node; once told, the
/// following attempts (one per backoff) ask no seed again (the store's own start asks
/// every seed on every failure, which attempts repeated all along must not). Real cluster.
#[tokio::test]
async fn home_calls_to_a_far_cluster_refusing_the_login_ask_the_seeds_once() {
    const RIGHT: &str = "right-pw-Kd4";
    let eu = spillway_testkit::redis::RedisCluster::with_password(RIGHT);
    let seeds = eu.urls_with_login(":wrong-pw-Ra2@");
    let config = StoreConfig::RedisCluster(RedisSettings {
        urls: seeds.clone(),
        ..Default::default()
    });
    let (remote, clock) = far_region_eu(config);
    let logs = crate::test_support::Logs::capture();
    let ports = eu.ports();
    let mut taken = Vec::new();
    for _ in 0..3 {
        let before = connections(&ports, RIGHT);
        assert!(remote.ping().await.is_err());
        taken.push(connections(&ports, RIGHT) - before);
        past_backoff(&clock);
    }
    // Asking opens one connection per seed; the attempts after the first open only the
    // client's own.
    assert!(
        taken[1..]
            .iter()
            .all(|&n| taken[0] >= n + seeds.len() as u64),
        "connections per call: {taken:?}"
    );
    let text = logs.text();
    let told: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("the region eu's cluster node at 127.0.0.1:"))
        .collect();
    assert_eq!(told.len(), 1, "{text}");
    assert!(
        told[0].contains("refused the login")
            && !text.contains("cannot connect to the Redis store")
            && !text.contains("wrong-pw"),
        "{text}"
    );
}

/// A request with a `home` limit in a far region and an `aggregate` one counted here: the
/// aggregate's room is worked out again once the far store has answered. While the home call
/// was held, the other region's counts arrived, filling the limit: the request is denied, not
/// admitted on the room seen before the call (4 of 10 used then). Real redis-server behind a
/// listener that holds the call until the counts are in.
#[tokio::test]
async fn an_aggregate_limit_is_judged_on_what_is_known_after_the_home_call() {
    let eu = spillway_testkit::redis::RedisServer::start();
    let link = Listener::start(Taken::Held(eu.port())).await;
    let store = regions_store(
        &[("us", &unreachable(1)), ("eu", &link.url())],
        &["exchange: {home_timeout: 5s}"],
    );
    let policy = PolicySource::Builtin
        .parse(&format!(
            "default_tier: t
{store}limits:
  exact: {{algorithm: token_bucket, rate: 5/h, burst: 5, key: [tenant], scope: home}}
  soft: {{algorithm: fixed_window, limit: 10, window: 1h, key: [tenant], scope: aggregate}}
tiers:
  t: {{limits: [exact, soft]}}
tenants:
  acme: {{home_region: eu}}
"
        ))
        .expect("valid policy");
    let clock = ServerClock::manual(crate::test_support::TEST_START_MS);
    let (node, planned) = acme_at(&policy, &clock);
    let soft = (planned.iter().find(|p| &*p.def.name.to_arc() == "soft")).expect("soft");
    let heard = |eu_count: u64| {
        let known = super::tally::Known::one(soft, clock.now(), &[0, eu_count]);
        node.tally.publish_known(known, &[1], clock.now());
    };
    heard(4);

    let own = Arc::new(MemoryStore::new(100, clock.shared()));
    let checking = tokio::spawn({
        let (node, policy, planned, own) =
            (node.clone(), policy.clone(), planned.clone(), own.clone());
        async move { (node.check_failing_closed(&policy, &*own, &planned, CheckMode::Consume)).await }
    });
    // The home call is in flight (its connection held): the request was routed on 4 of 10.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while link.taken() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(link.taken(), 1);
    heard(10);
    link.open();
    let (allowed, outcomes) = checking.await.expect("the task").expect("eu answers");
    assert!(!allowed, "{outcomes:?}");
    let told = |name: &str| {
        let found = outcomes.iter().find(|o| &*o.name.to_arc() == name);
        found.expect("each limit told").decision
    };
    assert!(told("exact").allowed, "eu charged the home limit");
    let soft_told = told("soft");
    assert!(!soft_told.allowed, "{soft_told:?}");
    assert!(
        soft_told.retry_after.is_some_and(|r| r > 3_000_000_000),
        "{soft_told:?}"
    );
    // Nothing was charged here, nor published as admitted.
    assert!(node.tally.take_pending().is_empty());
    assert_eq!(own.key_count(), 0, "the own store only looked");
}
