//! Global limits across regions, with real processes: three `redis-server`s as three regions
//! (`us`, `eu`, `ap`), one `spillway serve` per region, and between regions the test kit's
//! delaying proxy (40, 60 or 80 ms a reply, by pair). Each node reaches its own region's Redis
//! directly and the others' through its own proxies, so cutting those proxies partitions a
//! region.
//!
//! - `home`: a tenant's limit admits exactly its limit worldwide under concurrent load from
//!   every region, and every answer names the home region.
//! - `aggregate`: the total admitted stays within the documented bound (docs/GLOBAL.md) under
//!   uniform and skewed load, at two exchange intervals, without and with leases
//!   (`lease_above`); the test prints what it saw.
//! - partition: a cut-off region keeps serving within its share, the others assume it uses
//!   its share, a `home` call into it takes the route's failure mode, and after the cut heals
//!   every region converges on the same counts; the metrics say so throughout.
//!
//! - remote calls only when needed: a request a regional limit denied, or an exhausted
//!   `aggregate` limit, never calls the home region; a request whose limits are all
//!   `regional` answers at once while every link out of its region hangs.
//! - a node that stops gracefully publishes its last counts, which the other regions read.
//!
//! Redis keeps the limits' time (`TIME`), so the nodes run on the real clock here. No test waits
//! for a window to roll over: each picks a window length (about an hour, see
//! [`roomy_window`](common::roomy_window)) whose current window has at least ten minutes left, and
//! buckets refill once an hour or slower. Run with `--nocapture` to see the measurements
//! docs/GLOBAL.md quotes.

// Latency and pacing are wall-clock time by nature.
#![allow(clippy::disallowed_methods)]

mod common;

use common::grpc;
use common::{header, metric, roomy_window, wait_until_async, Server, PATIENCE};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use spillway_testkit::policy::{regions_store, unreachable, unreachable_regions};
use spillway_testkit::proxy::DelayProxy;
use spillway_testkit::redis::{command, RedisServer};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["us", "eu", "ap"];

/// One scenario at a time: they share two cores, and the aggregate ones measure rates.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The reply delay between regions `a` and `b`, in milliseconds.
fn delay_ms(a: usize, b: usize) -> u64 {
    match (a.min(b), a.max(b)) {
        (0, 1) => 40,
        (1, 2) => 60,
        _ => 80,
    }
}

struct World {
    redis: Vec<RedisServer>,
    /// `proxies[i][j]`: node `i`'s link to region `j`'s Redis (`None` for `i == j`).
    proxies: Vec<Vec<Option<DelayProxy>>>,
    nodes: Vec<Arc<Server>>,
}

impl World {
    /// Three regions whose nodes run `body` (limits, tiers, routes, tenants) under a store
    /// section with `exchange`.
    fn start(exchange: &str, body: &str) -> Self {
        Self::start_each([exchange; 3], body)
    }

    /// Three regions whose node `i` runs `body` with the exchange settings `exchanges[i]`.
    fn start_each(exchanges: [&str; 3], body: &str) -> Self {
        let redis: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
        let proxies: Vec<Vec<Option<DelayProxy>>> = (0..3)
            .map(|i| {
                (0..3)
                    .map(|j| {
                        (i != j).then(|| {
                            let proxy = DelayProxy::start(redis[j].port());
                            proxy.set_delay(Duration::from_millis(delay_ms(i, j)));
                            proxy
                        })
                    })
                    .collect()
            })
            .collect();
        let nodes = (0..3)
            .map(|i| {
                let url = |j: usize| match &proxies[i][j] {
                    Some(proxy) => proxy.url(),
                    None => redis[j].url(),
                };
                let urls = [url(0), url(1), url(2)];
                let regions: Vec<(&str, &str)> = NAMES
                    .iter()
                    .copied()
                    .zip(urls.iter().map(String::as_str))
                    .collect();
                let exchange = format!("exchange: {}", exchanges[i]);
                let store = regions_store(
                    &regions,
                    &["timeout: 200ms", "breaker_cooldown: 300ms", &exchange],
                );
                let policy = format!("default_tier: t\nfailure_mode: closed\n{store}{body}");
                Arc::new(
                    Server::with_policy(&policy)
                        .system_clock()
                        .args(&["--region", NAMES[i], "--node-name", NAMES[i]])
                        .start(),
                )
            })
            .collect();
        Self {
            redis,
            proxies,
            nodes,
        }
    }

    /// Cuts every link between region `r` and the others.
    fn cut(&self, r: usize) {
        for i in 0..3 {
            for j in 0..3 {
                if (i == r) != (j == r) {
                    if let Some(p) = &self.proxies[i][j] {
                        p.cut();
                    }
                }
            }
        }
    }

    /// Ends every cut.
    fn heal(&self) {
        for row in &self.proxies {
            for p in row.iter().flatten() {
                p.heal();
            }
        }
    }
}

/// One check of `path` for `tenant` on `node`: its status, home-region header and latency.
async fn ask(node: &Server, path: &str, tenant: &str) -> (u16, Option<String>, Duration) {
    let body = format!(r#"{{"tenant":"{tenant}","method":"POST","path":"{path}"}}"#);
    let started = Instant::now();
    let response = node.post("/v1/check", &body).await;
    let took = started.elapsed();
    (
        response.status().as_u16(),
        header(&response, "spillway-home-region"),
        took,
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The region that would be `tenant`'s home by the hash alone (no catalog entry), as every node
/// computes it.
fn hashed_home(tenant: &str) -> &'static str {
    let text = format!(
        "default_tier: t
{}limits:
  plain: {{algorithm: token_bucket, rate: 10/s, burst: 10, key: [tenant]}}
tiers:
  t: {{limits: [plain]}}
",
        unreachable_regions(&NAMES, &[])
    );
    let policy = spillway_core::policy::Policy::from_yaml_str(&text, "regions.yaml")
        .expect("a valid policy");
    NAMES[policy.regions().expect("regions").hashed_home(tenant)]
}

/// A tenant name starting with `prefix` whose hashed home is neither `home` nor `us` (where
/// the remote-home requests are sent): a test giving it `home` in the catalog then passes only
/// if the catalog's home is used, and its requests from `us` must call another region.
fn tenant_off_hash(prefix: &str, home: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|t| ![home, "us"].contains(&hashed_home(t)))
        .expect("some name hashes elsewhere")
}

/// The `home` scenario's policy body; `acme` and `lat` live in eu by the catalog.
fn home_body(acme: &str, lat: &str) -> String {
    let (window, _) = roomy_window();
    format!(
        r#"limits:
  exact: {{algorithm: token_bucket, rate: 30/h, burst: 30, key: [tenant], scope: home}}
  plain: {{algorithm: token_bucket, rate: 1000/s, burst: 1000, key: [tenant]}}
  soft: {{algorithm: fixed_window, limit: 100000, window: {window}, key: [tenant], scope: aggregate}}
tiers:
  t: {{}}
routes:
  - {{match: "POST /home", limits: [exact]}}
  - {{match: "POST /plain", limits: [plain]}}
  - {{match: "POST /agg", limits: [soft]}}
tenants:
  {acme}: {{home_region: eu}}
  {lat}: {{home_region: eu}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn home_admits_exactly_the_limit_across_regions() {
    let _serial = SERIAL.lock().await;
    // A generous home budget: on a loaded 2-core machine a 250 ms budget over a 40-80 ms
    // link times out now and then, and the route's failure mode (503) is not what this tests.
    // Tenants whose hash would put them in ap: the answers name eu, and us calls eu, only
    // because the catalog says so.
    let (acme, lat) = (tenant_off_hash("acme", "eu"), tenant_off_hash("lat", "eu"));
    assert_eq!((hashed_home(&acme), hashed_home(&lat)), ("ap", "ap"));
    let world = World::start(
        "{interval: 250ms, home_timeout: 2s}",
        &home_body(&acme, &lat),
    );
    // 3 regions x 6 tasks x 8 requests = 144 requests for a limit of 30.
    let mut tasks = Vec::new();
    for node in &world.nodes {
        for _ in 0..6 {
            let node = node.clone();
            let acme = acme.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..8 {
                    out.push(ask(&node, "/home", &acme).await);
                }
                out
            }));
        }
    }
    let mut admitted = 0;
    for task in tasks {
        for (status, home, _) in task.await.expect("task") {
            assert!(status == 200 || status == 429, "status {status}");
            admitted += usize::from(status == 200);
            assert_eq!(home.as_deref(), Some("eu"), "the catalog's home region");
        }
    }
    assert_eq!(admitted, 30, "exactly the limit, worldwide");

    // A tenant the catalog gives no home: every region names the same one (the hash).
    let mut homes = Vec::new();
    for node in &world.nodes {
        homes.push(ask(node, "/home", "globex").await.1.expect("home header"));
    }
    assert!(homes.iter().all(|h| h == &homes[0]) && NAMES.contains(&&*homes[0]));

    // Added latency: a remote-home decision costs one round trip to the home region (us to
    // eu: 40 ms of delay), a regional one none.
    let us = &world.nodes[0];
    let mut remote = Vec::new();
    let mut local = Vec::new();
    let mut aggregate = Vec::new();
    for i in 0..30 {
        aggregate.push(ask(us, "/agg", &format!("t{i}")).await.2);
        // A fresh tenant: a denial could come from the store's local over-limit cache.
        let (status, _, took) = ask(us, "/home", &lat).await;
        assert_eq!(status, 200);
        remote.push(took);
        local.push(ask(us, "/plain", &format!("t{i}")).await.2);
    }
    let (remote, local, aggregate) = (median(remote), median(local), median(aggregate));
    println!(
        "home: remote-home decision median {remote:?}, regional {local:?}, added {:?} (reply delay us->eu 40 ms); aggregate {aggregate:?}",
        remote.saturating_sub(local)
    );
    // Debug builds on a shared machine: the medians are recorded above; only the lower
    // bound (the home call does cross the 40 ms link) and generous sanity bounds are asserted.
    assert!(remote >= Duration::from_millis(40), "{remote:?}");
    assert!(aggregate < Duration::from_secs(1), "{aggregate:?}");
    assert!(remote < Duration::from_secs(2), "{remote:?}");
    let text = us.metrics().await;
    let calls = metric(
        &text,
        "spillway_region_home_calls_total",
        &[("region", "eu"), ("outcome", "ok")],
    );
    // us asked eu for the 30 timed requests of `lat` and its share of the 144 of `acme`.
    assert!(calls.is_some_and(|n| n >= 40.0), "{calls:?}");
    let to_ap = metric(
        &text,
        "spillway_region_home_calls_total",
        &[("region", "ap"), ("outcome", "ok")],
    );
    assert_eq!(to_ap.unwrap_or(0.0), 0.0, "no call went to the hashed home");
}

/// The aggregate scenario: each region sends `rates[r]` requests a second for `seconds`
/// against a limit of `limit`; returns what was admitted in total and by region, and the
/// largest exchange lag a node reported.
async fn aggregate_load(
    world: &World,
    tenant: &str,
    rates: [u64; 3],
    seconds: f64,
) -> (u64, [u64; 3]) {
    let mut tasks = Vec::new();
    for (r, node) in world.nodes.iter().enumerate() {
        let node = node.clone();
        let tenant = tenant.to_owned();
        let rate = rates[r];
        tasks.push(tokio::spawn(async move {
            let n = (rate as f64 * seconds) as u64;
            let every = Duration::from_secs_f64(1.0 / rate as f64);
            let mut ticks = tokio::time::interval(every);
            // Delay, not Burst: a late tick must not send a burst above the rate the bound
            // is computed with.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut inflight = Vec::new();
            for _ in 0..n {
                ticks.tick().await;
                let node = node.clone();
                let tenant = tenant.clone();
                inflight.push(tokio::spawn(
                    async move { ask(&node, "/agg", &tenant).await.0 },
                ));
            }
            let mut admitted = 0;
            for f in inflight {
                admitted += u64::from(f.await.expect("request") == 200);
            }
            admitted
        }));
    }
    let mut by_region = [0; 3];
    for (r, t) in tasks.into_iter().enumerate() {
        by_region[r] = t.await.expect("task");
    }
    (by_region.iter().sum(), by_region)
}

const AGG_LIMIT: u64 = 200;

/// Late ticks and requests on a loaded two-core machine, added to the staleness the
/// assertion allows.
const SCHEDULING_SLACK: Duration = Duration::from_millis(60);

fn agg_body() -> String {
    let (window, _) = roomy_window();
    format!(
        r#"limits:
  soft: {{algorithm: fixed_window, limit: {AGG_LIMIT}, window: {window}, key: [tenant], scope: aggregate}}
tiers:
  t: {{}}
routes:
  - {{match: "POST /agg", limits: [soft]}}
"#
    )
}

/// The documented bound: what the other regions can admit while a region's view of them is
/// stale, `sum of the others' admission rates x (2 x period + the slowest round trip)`, where
/// the period is the interval or, when longer, the slowest round trip (a tick waits for its
/// reads), for the region that sees the most.
fn bound(rates: [u64; 3], interval: Duration, slack: Duration) -> u64 {
    let rtt = 0.080;
    let period = interval.as_secs_f64().max(rtt);
    let staleness = 2.0 * period + rtt + slack.as_secs_f64();
    let total: u64 = rates.iter().sum();
    let worst_others = (0..3).map(|r| total - rates[r]).max().unwrap_or(0);
    (worst_others as f64 * staleness).ceil() as u64
}

/// The `aggregate` scenarios at exchange interval `interval_ms`, with leases past
/// `lease_above` of the limit or without (`None`).
async fn aggregate_at(interval_ms: u64, lease_above: Option<f64>) {
    let interval = Duration::from_millis(interval_ms);
    let (exchange, leases) = match lease_above {
        Some(above) => (
            format!("{{interval: {interval_ms}ms, lease_above: {above}}}"),
            format!(", leases past {above}"),
        ),
        None => (format!("{{interval: {interval_ms}ms}}"), String::new()),
    };
    let world = World::start(&exchange, &agg_body());
    for (case, rates) in [("uniform", [100, 100, 100]), ("skewed", [240, 30, 30])] {
        let tenant = format!("{case}-{interval_ms}");
        // Long enough to pass the limit and let every region hear the final counts (leases
        // hand out the last part of the limit in steps, one per exchange); the same with and
        // without leases, so the two compare.
        let started = Instant::now();
        let (admitted, by_region) = aggregate_load(&world, &tenant, rates, 3.0).await;
        let took = started.elapsed();
        let documented = bound(rates, interval, Duration::ZERO);
        // The machine is shared and noisy: a tick or a request can run late by some tens of
        // milliseconds, which the assertion allows for (the printed bound does not).
        let allowed = bound(rates, interval, SCHEDULING_SLACK);
        println!(
            "aggregate: interval {interval_ms} ms{leases}, {case} load {rates:?}/s for {took:.1?}, limit {AGG_LIMIT}: admitted {admitted} {by_region:?}, over {} (bound {documented})",
            admitted.saturating_sub(AGG_LIMIT)
        );
        assert!(
            admitted >= AGG_LIMIT,
            "{admitted} < {AGG_LIMIT}: a region saw phantom counts"
        );
        assert!(
            admitted <= AGG_LIMIT + allowed,
            "{admitted} over {AGG_LIMIT} + {allowed}"
        );
    }
    let text = world.nodes[0].metrics().await;
    let lag = metric(
        &text,
        "spillway_region_exchange_lag_seconds",
        &[("region", "eu")],
    );
    println!("aggregate: interval {interval_ms} ms{leases}, exchange lag us<-eu {lag:?} s");
    assert!(
        lag.is_some_and(|l| l < 2.0 * interval.as_secs_f64() + 0.5),
        "{lag:?}"
    );
    let counts = metric(&text, "spillway_region_counts", &[("region", "eu")]);
    assert!(counts.is_some_and(|c| c > 0.0), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aggregate_stays_within_its_bound_at_two_intervals() {
    let _serial = SERIAL.lock().await;
    aggregate_at(250, None).await;
    aggregate_at(50, None).await;
}

/// The same scenarios with leases past half the limit: what they save, measured beside the
/// runs without (docs/GLOBAL.md). Here both are only held to the plain bound: on a shared,
/// loaded machine the gain varies from run to run. That leases really cut the over-admission
/// (to their rounding, strictly below the plain rule's) is asserted deterministically, on a
/// manual clock, in `src/region/simulation.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_stay_within_the_bound_at_two_intervals() {
    let _serial = SERIAL.lock().await;
    aggregate_at(250, Some(0.5)).await;
    aggregate_at(50, Some(0.5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_region_keeps_its_share_and_rejoins() {
    let _serial = SERIAL.lock().await;
    let (window, _) = roomy_window();
    let body = format!(
        r#"limits:
  soft: {{algorithm: fixed_window, limit: 90, window: {window}, key: [tenant], scope: aggregate}}
  exact: {{algorithm: token_bucket, rate: 5/h, burst: 5, key: [tenant], scope: home}}
tiers:
  t: {{}}
routes:
  - {{match: "POST /agg", limits: [soft]}}
  - {{match: "POST /home", limits: [exact]}}
tenants:
  initech: {{home_region: ap}}
"#
    );
    let world = World::start("{interval: 100ms, partition_after: 500ms}", &body);
    let (us, ap) = (&world.nodes[0], &world.nodes[2]);
    // Every region hears every other before the cut.
    let heard = wait_until_async(Duration::from_secs(10), || async {
        let t = us.metrics().await;
        (metric(
            &t,
            "spillway_region_exchanges_total",
            &[("region", "ap"), ("outcome", "ok")],
        )? > 0.0)
            .then_some(())
    })
    .await;
    assert!(heard.is_some());

    world.cut(2);
    let gauge =
        |node: &Server, name: &'static str, labels: &'static [(&'static str, &'static str)]| {
            let node = node.url("/metrics");
            async move {
                let text = reqwest::get(node).await.ok()?.text().await.ok()?;
                metric(&text, name, labels)
            }
        };
    let isolated = wait_until_async(Duration::from_secs(10), || async {
        (gauge(ap, "spillway_region_isolated", &[]).await? == 1.0).then_some(())
    })
    .await;
    assert!(isolated.is_some(), "ap knows it is cut off");
    // Both other regions must have noticed before their shares are checked: each learns it
    // from its own failed exchanges with ap, on its own tick.
    let eu = &world.nodes[1];
    for (node, name) in [(us, "us"), (eu, "eu")] {
        let seen = wait_until_async(Duration::from_secs(10), || async {
            (gauge(node, "spillway_region_partitioned", &[("region", "ap")]).await? == 1.0)
                .then_some(())
        })
        .await;
        assert!(seen.is_some(), "{name} knows ap is cut off");
    }

    // ap decides alone, on its share: 90 / 3 = 30.
    let mut ap_admitted = 0;
    for _ in 0..45 {
        ap_admitted += u32::from(ask(ap, "/agg", "hooli").await.0 == 200);
    }
    assert_eq!(ap_admitted, 30, "a cut-off region keeps to its share");
    // While any peer is cut off, every region keeps to its share too (us and eu cannot
    // know what ap sees of them): 30 each, 90 in all.
    for (node, name) in [(us, "us"), (eu, "eu")] {
        let mut admitted = 0;
        for _ in 0..45 {
            admitted += u32::from(ask(node, "/agg", "hooli").await.0 == 200);
        }
        assert_eq!(
            admitted, 30,
            "{name} keeps to its share while ap is cut off"
        );
    }
    // A home limit whose home is cut off: the route's failure mode (closed: 503), quickly.
    let (status, _, took) = ask(us, "/home", "initech").await;
    assert_eq!(status, 503);
    assert!(took < Duration::from_secs(1), "{took:?}");

    world.heal();
    let rejoined = wait_until_async(Duration::from_secs(10), || async {
        let cut_seen = gauge(us, "spillway_region_partitioned", &[("region", "ap")]).await?;
        let alone = gauge(ap, "spillway_region_isolated", &[]).await?;
        (cut_seen == 0.0 && alone == 0.0).then_some(())
    })
    .await;
    assert!(rejoined.is_some(), "the partition heals without a restart");
    // Converged: ap hears us's 30 and us hears ap's 30; the limit is spent everywhere.
    let converged = wait_until_async(Duration::from_secs(10), || async {
        let at_ap = gauge(ap, "spillway_region_counts", &[("region", "us")]).await?;
        let at_us = gauge(us, "spillway_region_counts", &[("region", "ap")]).await?;
        (at_ap == 30.0 && at_us == 30.0).then_some(())
    })
    .await;
    assert!(converged.is_some(), "the regions converge after the heal");
    for node in &world.nodes {
        assert_eq!(ask(node, "/agg", "hooli").await.0, 429);
    }
    // And the home region answers again once the breaker lets a call through.
    let back = wait_until_async(Duration::from_secs(10), || async {
        (ask(us, "/home", "initech").await.0 == 200).then_some(())
    })
    .await;
    assert!(back.is_some(), "home calls resume after the heal");
    let failed = metric(
        &us.metrics().await,
        "spillway_region_exchanges_total",
        &[("region", "ap"), ("outcome", "failed")],
    );
    assert!(failed.is_some_and(|n| n > 0.0), "{failed:?}");
}

/// Node `node`'s reading of metric `name` with `labels`, if it has one.
async fn read_metric(node: &Server, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric(&node.metrics().await, name, labels)
}

/// Waits until every node has read every other region (none takes another as cut off).
async fn everyone_heard(world: &World) {
    for (i, node) in world.nodes.iter().enumerate() {
        for (j, other) in NAMES.iter().enumerate().filter(|&(j, _)| j != i) {
            let heard = wait_until_async(Duration::from_secs(10), || async {
                let labels = [("region", *other)];
                let cut = read_metric(node, "spillway_region_partitioned", &labels).await;
                (cut? == 0.0).then_some(())
            })
            .await;
            assert!(heard.is_some(), "{} never read {other} ({j})", NAMES[i]);
        }
    }
}

/// The calls node `node` made to region `region`'s store for `home` limits, by outcome.
async fn home_calls(node: &Server, region: &str) -> (f64, f64) {
    let text = node.metrics().await;
    let calls = |outcome| {
        let labels = [("region", region), ("outcome", outcome)];
        metric(&text, "spillway_region_home_calls_total", &labels).unwrap_or(0.0)
    };
    (calls("ok"), calls("failed"))
}

/// Another region is called only when a request needs it. Here every link out of `us` hangs
/// (3 s, past the 250 ms home budget; the routes fail closed, so a call that was made shows as
/// a 503): a request a regional limit already denied, and one whose `aggregate` limit has no
/// room left, are denied (429) without calling the tenant's home region; a request whose
/// limits are all `regional` is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_regions_are_called_only_when_needed() {
    let _serial = SERIAL.lock().await;
    let (window, _) = roomy_window();
    let body = format!(
        r#"limits:
  once: {{algorithm: fixed_window, limit: 1, window: {window}, key: [tenant]}}
  soft: {{algorithm: fixed_window, limit: 3, window: {window}, key: [tenant], scope: aggregate}}
  exact: {{algorithm: token_bucket, rate: 100/h, burst: 100, key: [tenant], scope: home}}
  plain: {{algorithm: token_bucket, rate: 1000/s, burst: 1000, key: [tenant]}}
tiers:
  t: {{}}
routes:
  - {{match: "POST /both", limits: [once, exact]}}
  - {{match: "POST /agg", limits: [soft]}}
  - {{match: "POST /agg-home", limits: [soft, exact]}}
  - {{match: "POST /home", limits: [exact]}}
  - {{match: "POST /plain", limits: [plain]}}
tenants:
  acme: {{home_region: eu}}
  umbrella: {{home_region: eu}}
"#
    );
    let world = World::start("{interval: 100ms, partition_after: 1s}", &body);
    let (us, eu) = (&world.nodes[0], &world.nodes[1]);
    everyone_heard(&world).await;
    // umbrella spends its `aggregate` limit in eu, and us hears of it. (On a loaded machine
    // eu may take a peer as cut off for a moment and keep to its share: it is asked again.)
    let mut admitted = 0;
    for _ in 0..200 {
        admitted += u32::from(ask(eu, "/agg", "umbrella").await.0 == 200);
        if admitted == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admitted, 3, "eu spends umbrella's limit");
    let spent = wait_until_async(Duration::from_secs(10), || async {
        let seen = read_metric(us, "spillway_region_counts", &[("region", "eu")]).await?;
        (seen >= 3.0).then_some(())
    })
    .await;
    assert!(spent.is_some(), "us reads eu's counts");
    // us's first call to eu's store also makes its connection (through the 40 ms link: a few
    // round trips), which on a loaded machine can take more than the 250 ms home budget: one
    // request of acme's that needs only eu is answered first.
    let warm = wait_until_async(Duration::from_secs(10), || async {
        (ask(us, "/home", "acme").await.0 == 200).then_some(())
    })
    .await;
    assert!(warm.is_some(), "us reaches eu's store");
    // acme's first request on /both passes `once` here and `exact` in eu.
    assert_eq!(ask(us, "/both", "acme").await.0, 200);

    for j in [1, 2] {
        let proxy = world.proxies[0][j].as_ref().expect("a link");
        proxy.set_delay(Duration::from_secs(3));
    }
    let before = home_calls(us, "eu").await;
    let (status, _, took) = ask(us, "/both", "acme").await;
    assert_eq!(
        status, 429,
        "`once` denies here; eu is not asked ({took:?})"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    let (status, _, took) = ask(us, "/agg-home", "umbrella").await;
    assert_eq!(
        status, 429,
        "`soft` has no room; eu is not asked ({took:?})"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    let mut plain = Vec::new();
    for _ in 0..20 {
        let (status, _, took) = ask(us, "/plain", "acme").await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_secs(2), "{took:?}");
        plain.push(took);
    }
    println!(
        "plain path while every link out of us hangs: median {:?}",
        median(plain)
    );
    assert_eq!(home_calls(us, "eu").await, before, "no call to eu was made");
    // Whereas a request that does need eu fails closed.
    assert_eq!(ask(us, "/home", "acme").await.0, 503);
    let after = home_calls(us, "eu").await;
    assert_eq!((after.0, after.1), (before.0, before.1 + 1.0));
}

/// A node that stops gracefully publishes what it admitted since its last exchange. Here us
/// exchanges once a minute, so only its start-up tick has run (nothing to publish yet); what it
/// admits afterwards reaches its region's Redis, and eu, when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_node_publishes_its_last_counts() {
    let _serial = SERIAL.lock().await;
    let (window, len) = roomy_window();
    let body = format!(
        r#"limits:
  soft: {{algorithm: fixed_window, limit: 900, window: {window}, key: [tenant], scope: aggregate}}
tiers:
  t: {{}}
routes:
  - {{match: "POST /agg", limits: [soft]}}
"#
    );
    let mut world = World::start_each(
        ["{interval: 60s}", "{interval: 100ms}", "{interval: 100ms}"],
        &body,
    );
    let eu = world.nodes[1].clone();
    let read = wait_until_async(Duration::from_secs(10), || async {
        let labels = [("region", "us"), ("outcome", "ok")];
        let n = read_metric(&eu, "spillway_region_exchanges_total", &labels).await?;
        (n > 0.0).then_some(())
    })
    .await;
    assert!(read.is_some(), "eu reads us");
    for _ in 0..5 {
        assert_eq!(ask(&world.nodes[0], "/agg", "acme").await.0, 200);
    }
    #[allow(clippy::disallowed_methods)] // the windows follow the wall clock
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_micros(),
    )
    .expect("micros fit");
    let hash = format!("{{rl:agg:us}}:{len}:{}", now - now % len);
    let port = world.redis[0].port();
    assert_eq!(
        command(port, &format!("HLEN {hash}")).as_deref(),
        Some(":0\r\n"),
        "nothing published before the stop"
    );
    let seen = read_metric(&eu, "spillway_region_counts", &[("region", "us")]).await;
    assert_eq!(seen.unwrap_or(0.0), 0.0);

    let us = Arc::get_mut(&mut world.nodes[0]).expect("only the world holds us");
    us.signal("TERM");
    let status = us.wait_exit(PATIENCE).expect("us exits");
    assert!(status.success(), "{status:?}");
    let values = command(port, &format!("HVALS {hash}")).unwrap_or_default();
    let published: u64 = (values.lines())
        .filter(|l| !l.starts_with(['*', '$']))
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum();
    assert_eq!(
        published, 5,
        "the last publication carries what us admitted: {values:?}"
    );
    let heard = wait_until_async(Duration::from_secs(10), || async {
        let seen = read_metric(&eu, "spillway_region_counts", &[("region", "us")]).await?;
        (seen == 5.0).then_some(())
    })
    .await;
    assert!(heard.is_some(), "eu reads the stopped node's last counts");
}

/// Limit `(name, allowed, limit, remaining, shadow)` of a `/v1/check` answer's JSON body.
type Told = (String, bool, u64, u64, bool);

/// One check of `path` for `tenant` on `node`: its status, degraded mark and each limit told.
async fn verdict_of(node: &Server, tenant: &str, path: &str) -> (u16, Option<String>, Vec<Told>) {
    let body = format!(r#"{{"tenant":"{tenant}","method":"POST","path":"{path}"}}"#);
    let response = node.post("/v1/check", &body).await;
    let status = response.status().as_u16();
    let degraded = header(&response, "spillway-degraded");
    let json: serde_json::Value = response.json().await.expect("a JSON verdict");
    let limits = json["limits"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let told = limits
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap_or_default().to_owned(),
                l["allowed"].as_bool().unwrap_or_default(),
                l["limit"].as_u64().unwrap_or_default(),
                l["remaining"].as_u64().unwrap_or_default(),
                l["shadow"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    (status, degraded, told)
}

/// A tenant's home region that cannot be reached hands only the request's `home` limits to
/// the route's failure mode; its other limits are counted in the own region's store as usual.
/// Under `open` the home limit goes uncounted but the regional one still denies once full;
/// under `degrade` the home limit gets its emergency quota (6 / 3 nodes = 2) while the
/// regional one is counted in Redis (its own numbers, not an emergency quota's), and a
/// request the emergency quota denies charges nothing in Redis. Each such request is counted
/// as a store failure of its mode. Before, the whole request
/// went to the failure mode: under `open` nothing was counted anywhere. One node of `us` on a
/// real Redis; `eu` on a port nothing listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_home_leaves_the_other_limits_counted() {
    let _serial = SERIAL.lock().await;
    let us = RedisServer::start();
    // A roomy budget for the own store: a first call that connected late would be a store
    // failure of the whole request, which is not what this test is about.
    let regions = [("us", us.url()), ("eu", unreachable(1))];
    let regions = regions.each_ref().map(|(name, url)| (*name, url.as_str()));
    let store = regions_store(&regions, &["timeout: 2s"]);
    let (window, _) = roomy_window();
    let policy = format!(
        r#"default_tier: t
{store}limits:
  exact: {{algorithm: token_bucket, rate: 6/h, burst: 6, key: [tenant], scope: home}}
  near_open: {{algorithm: fixed_window, limit: 4, window: {window}, key: [tenant]}}
  near_degrade: {{algorithm: fixed_window, limit: 4, window: {window}, key: [tenant]}}
tiers:
  t: {{}}
routes:
  - {{match: "POST /open", failure_mode: open, limits: [exact, near_open]}}
  - {{match: "POST /degrade", failure_mode: degrade, limits: [exact, near_degrade]}}
  - {{match: "POST /near", limits: [near_degrade]}}
tenants:
  acme: {{home_region: eu}}
  beta: {{home_region: eu}}
"#
    );
    let collector = spillway_testkit::otlp::Collector::start();
    let builder = Server::with_policy(&policy)
        .system_clock()
        .args(&["--region", "us", "--otlp-endpoint", &collector.endpoint()])
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    let mut rls = common::grpc::start(builder, &[]).await;
    let node = &rls.server;
    let check = |path: &'static str| verdict_of(node, "acme", path);
    let marked = Some("store-unavailable".to_owned());

    for left in (0..4).rev() {
        let (status, degraded, limits) = check("/open").await;
        assert_eq!((status, &degraded), (200, &marked), "{limits:?}");
        let near = ("near_open".to_owned(), true, 4, left, false);
        assert!(limits.contains(&near), "{limits:?}");
        assert!(
            limits.contains(&("exact".to_owned(), true, 6, 6, true)),
            "{limits:?}"
        );
    }
    // Full in Redis: denied on the own store's look, so eu is not even tried.
    let (status, degraded, limits) = check("/open").await;
    assert_eq!((status, degraded), (429, None), "{limits:?}");
    assert!(
        limits.contains(&("near_open".to_owned(), false, 4, 0, false)),
        "{limits:?}"
    );

    for (exact_left, near_left) in [(1, 3), (0, 2)] {
        let (status, degraded, limits) = check("/degrade").await;
        assert_eq!((status, &degraded), (200, &marked), "{limits:?}");
        let exact = ("exact".to_owned(), true, 2, exact_left, false);
        let near = ("near_degrade".to_owned(), true, 4, near_left, false);
        assert!(
            limits.contains(&exact) && limits.contains(&near),
            "{limits:?}"
        );
    }
    let (status, degraded, limits) = check("/degrade").await;
    assert_eq!((status, degraded), (429, marked), "{limits:?}");
    assert!(limits.iter().any(|l| l.0 == "exact" && !l.1), "{limits:?}");
    // Redis was only asked to look: the regional limit alone (no far call) finds the two
    // admitted and the one it now admits.
    let (status, degraded, limits) = check("/near").await;
    assert_eq!((status, degraded), (200, None), "{limits:?}");
    assert_eq!(limits, [("near_degrade".to_owned(), true, 4, 1, false)]);
    let text = node.metrics().await;
    let failures = |mode| {
        metric(
            &text,
            "spillway_store_failures_total",
            &[("failure_mode", mode)],
        )
    };
    assert_eq!(
        (failures("open"), failures("degrade")),
        (Some(4.0), Some(3.0))
    );
    // Each counted once as a degraded decision too, by its route.
    let decisions = |route, mode| {
        let labels = [("route", route), ("mode", mode)];
        metric(&text, "spillway_degraded_decisions_total", &labels)
    };
    let by_route = (
        decisions("POST /open", "open"),
        decisions("POST /degrade", "degrade"),
    );
    assert_eq!(by_route, (Some(4.0), Some(3.0)));
    // And traced as failovers, by what the failure mode answered for the home limits.
    let failovers = |outcome: &'static str| {
        let wanted = spillway_testkit::otlp::any_value::Value::StringValue(outcome.into());
        let found = collector.wait_for(PATIENCE, |s| {
            s.span.name == "spillway.failover" && s.attribute("spillway.outcome") == Some(&wanted)
        });
        assert!(
            found.is_some(),
            "no `{outcome}` failover: {:?}",
            collector.spans()
        );
    };
    for outcome in ["open", "allowed", "denied"] {
        failovers(outcome);
    }

    // Envoy's calls alike: tenant beta (at home in eu too) under `open` is told the regional
    // limit's own numbers, not a plain uncounted `OK`, and its fifth call is over the limit.
    let entries = [("tenant", "beta"), ("method", "POST"), ("path", "/open")];
    for left in (0..4).rev() {
        let answer = rls.one("spillway", &entries).await;
        assert_eq!(grpc::overall(&answer), Code::Ok, "{answer:?}");
        assert_eq!(
            grpc::header(&answer, "spillway-degraded"),
            Some("store-unavailable")
        );
        let status = &answer.statuses[0];
        assert_eq!(
            grpc::limit(status),
            Some(("near_open".into(), 4, left)),
            "{answer:?}"
        );
    }
    let answer = rls.one("spillway", &entries).await;
    assert_eq!(grpc::overall(&answer), Code::OverLimit, "{answer:?}");
}

/// A tenant's home region set through the admin API, stored in the catalog database (SQLite),
/// checked against the policy's regions, and named by the answers once the node has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_sets_a_tenants_home_region() {
    const TOKEN: &str = "test-admin-token-0123456789";
    let us = RedisServer::start();
    let dir = common::TempDir::new();
    let catalog = format!("sqlite://{}", dir.path().join("catalog.db").display());
    // The other region is never called here: its store connects on first use.
    let store = regions_store(&[("us", &us.url()), ("eu", &unreachable(1))], &[]);
    let policy = format!(
        r#"default_tier: t
{store}limits:
  plain: {{algorithm: token_bucket, rate: 10/s, burst: 10, key: [tenant]}}
tiers:
  t: {{limits: [plain]}}
"#
    );
    let node = Server::with_policy(&policy)
        .system_clock()
        .args(&[
            "--region",
            "us",
            "--catalog",
            &catalog,
            "--catalog-migrate",
            "--catalog-poll",
            "200ms",
        ])
        .env("SPILLWAY_ADMIN_TOKEN", TOKEN)
        .start();
    let put = |body: &'static str| {
        let url = node.url("/v1/admin/tenants/acme");
        async move {
            let response = reqwest::Client::new()
                .put(url)
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("admin API answers");
            (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            )
        }
    };
    let (status, body) = put(r#"{"home_region":"mars"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("home_region") && body.contains("no region named `mars`"),
        "{body}"
    );
    let (status, body) = put(r#"{"home_region":"eu"}"#).await;
    assert_eq!(status, 200, "{body}");
    let named = wait_until_async(Duration::from_secs(10), || async {
        (ask(&node, "/x", "acme").await.1.as_deref() == Some("eu")).then_some(())
    })
    .await;
    assert!(named.is_some(), "answers name the catalog's home region");
    let got = reqwest::Client::new()
        .get(node.url("/v1/admin/tenants/acme"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin API answers")
        .text()
        .await
        .unwrap_or_default();
    assert!(got.contains(r#""home_region":"eu""#), "{got}");
}
