//! The board's tests: what a node publishes, and the board against a real redis-server, Redis
//! Cluster and Sentinel (connecting, reusing a fetch, a refused login, a hung or slow Redis).

use super::*;
use spillway_core::time::SECOND;
use spillway_testkit::redis::RedisServer;

/// What a board's refused login asks to check in these tests.
const HINT: &str = crate::store::login_hints::STORE_POLICY;

/// The store settings naming `redis`, a single server.
fn server_store(redis: &RedisServer) -> StoreConfig {
    StoreConfig::Redis(RedisSettings {
        urls: vec![redis.url()],
        ..RedisSettings::default()
    })
}

/// The board of `store`, publishing every `period`, connected as the server connects it
/// (without Sentinel logins).
async fn board(store: &StoreConfig, period: Duration) -> Board {
    let auth = spillway_redis::SentinelAuth::default();
    Board::connect(store, HINT, &auth, period)
        .await
        .expect("connects")
        .expect("a Redis store has a board")
}

#[test]
fn a_published_summary_says_its_sample_and_old_ones_read_as_every_decision() {
    let old =
        r#"{"node":"a","windows":{"1m":{"hot_keys":[],"blocked_tenants":[],"blocked_users":[]}}}"#;
    let p: Published = serde_json::from_str(old).expect("an old summary reads");
    assert_eq!((&*p.node, p.sample), ("a", 1));
    let new = Published {
        node: "b".into(),
        sample: 8,
        windows: HashMap::new(),
    };
    let text = serde_json::to_string(&new).expect("json");
    let back: Published = serde_json::from_str(&text).expect("reads back");
    assert_eq!(back.sample, 8);
}

/// A cluster-scope answer reuses the other nodes' summaries it fetched within a period (at
/// most a second), so many readers cost one fetch: a node that publishes after the first
/// answer shows in a fresh board's answer, not yet in the reused one. Real redis-server.
#[tokio::test]
async fn cluster_answers_reuse_the_summaries_fetched_within_a_period() {
    let redis = RedisServer::start();
    let store = server_store(&redis);
    let connect = || board(&store, Duration::from_secs(5));
    let board = connect().await;
    let now = 1_800_000_000 * SECOND;
    let names =
        |merged: &[Merged]| -> Vec<String> { merged.iter().map(|m| m.node.to_string()).collect() };
    let (a, b, c) = (Top::new("a"), Top::new("b"), Top::new("c"));
    board.publish(&b, now).await.expect("b publishes");
    let (first, _) = board
        .merged(&a, now, Window::Minute, 10, None)
        .await
        .expect("merged");
    assert_eq!(names(&first), ["a", "b"]);
    board.publish(&c, now).await.expect("c publishes");
    let (again, _) = board
        .merged(&a, now, Window::Minute, 10, None)
        .await
        .expect("merged");
    assert_eq!(
        names(&again),
        ["a", "b"],
        "the fetch of a moment ago is reused"
    );
    let (fresh, _) = connect()
        .await
        .merged(&a, now, Window::Minute, 10, None)
        .await
        .expect("merged");
    assert_eq!(names(&fresh), ["a", "b", "c"], "a new board fetches");
}

/// The board uses the store's URL and connects after it, so the store meets a refused login
/// first; the board still tells one of its own (a password changed in between) as a setting
/// error naming the board's server and never the password. Without a password the client
/// sends no `AUTH`, so the board's first command is what hears the refusal. Real redis-server.
#[tokio::test]
async fn a_board_refused_the_login_is_a_setting_error_naming_its_server() {
    const WRONG: &str = "wrong-pw-Hb5";
    let redis = RedisServer::start_with(&["--requirepass", "right-pw-Nc4"]);
    let port = redis.port();
    let auth = spillway_redis::SentinelAuth::default();
    for url in [
        format!("redis://:{WRONG}@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let store = StoreConfig::Redis(RedisSettings {
            urls: vec![url.clone()],
            ..RedisSettings::default()
        });
        let err = match Board::connect(&store, HINT, &auth, Duration::from_secs(5)).await {
            Ok(_) => panic!("{url}: connected"),
            Err(err) => err,
        };
        let told = format!("{err:#}");
        assert!(
            err.chain().any(|c| c.is::<SettingsError>())
                && told.contains(&format!(
                    "the top-k board's Redis server at 127.0.0.1:{port} refused the login"
                ))
                && !told.contains(WRONG),
            "{url}: {told}"
        );
    }
}

/// A Redis that stops answering (here every node of a cluster paused by `CLIENT PAUSE`)
/// fails a publication instead of holding the board's task until Redis answers again: the
/// board cuts every call after a period, or a second when the period is shorter (the
/// client's own 2.5 s wait for an answer may be tried again on a cluster). Real cluster.
#[tokio::test]
async fn a_hung_redis_fails_a_publication_within_a_period() {
    let cluster = spillway_testkit::redis::RedisCluster::start();
    let store = StoreConfig::RedisCluster(RedisSettings {
        urls: cluster.urls(),
        ..RedisSettings::default()
    });
    let board = board(&store, Duration::from_millis(300)).await;
    let top = Top::new("a");
    let now = 1_800_000_000 * SECOND;
    board.publish(&top, now).await.expect("publishes");
    for port in cluster.ports() {
        let paused = spillway_testkit::redis::command_as(port, None, "CLIENT PAUSE 5000 ALL");
        assert!(paused.is_some_and(|r| r.starts_with("+OK")), "{port}");
    }
    // Real time: what is bounded is how long the task waits on Redis.
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let published = board.publish(&top, now).await;
    let took = started.elapsed();
    for port in cluster.ports() {
        spillway_testkit::redis::command_as(port, None, "CLIENT UNPAUSE");
    }
    let err = published.expect_err("a paused Redis cannot take the publication");
    assert!(
        took < Duration::from_secs(2),
        "failed after {took:?}: {err:#}"
    );
    assert!(format!("{err:#}").contains("no answer"), "{err:#}");
}

/// A Redis slower than a short period (tests publish every 100 ms) is waited for: the board
/// cuts a call after a period only when that is at least a second, so a `scope=cluster`
/// fetch or a publication held up 400 ms still succeeds. Real redis-server, paused by
/// `CLIENT PAUSE` for 400 ms.
#[tokio::test]
async fn a_redis_slower_than_a_short_period_is_waited_for() {
    let redis = RedisServer::start();
    let board = board(&server_store(&redis), Duration::from_millis(100)).await;
    let top = Top::new("a");
    let now = 1_800_000_000 * SECOND;
    let pause = |port| {
        let paused = spillway_testkit::redis::command_as(port, None, "CLIENT PAUSE 400 ALL");
        assert!(paused.is_some_and(|r| r.starts_with("+OK")), "{port}");
    };
    pause(redis.port());
    board.publish(&top, now).await.expect("publishes, late");
    // Another node's fetch (its first, so nothing is cached; `a`'s value, kept three
    // periods, has expired by then, which is not the point).
    pause(redis.port());
    let fetched = board
        .merged(&Top::new("b"), now, Window::Minute, 10, None)
        .await;
    if let Err(err) = fetched {
        panic!("a late answer failed the fetch: {err:#}");
    }
}

/// The board's Sentinel refusal: the board connects after the store, which meets a refused
/// login first, but a password changed in between reaches the board's own connection. A
/// wrong sentinel password or a wrong master password is a setting error naming the board
/// and which side refused, never a password. Real sentinels.
#[tokio::test]
async fn a_board_refused_by_sentinel_or_its_master_names_the_side() {
    use spillway_redis::{Credentials, SentinelAuth};
    use spillway_testkit::sentinel::{Passwords, SentinelGroup, MASTER_NAME};
    const DATA: &str = "data-pw-Tq7";
    const SENTINELS: &str = "sentinel-pw-Fm2";
    const WRONG: &str = "wrong-pw-Zy9";
    let group = SentinelGroup::start_with(Passwords {
        data: Some(DATA.into()),
        sentinels: Some(SENTINELS.into()),
    });
    let store = StoreConfig::RedisSentinel(RedisSettings {
        urls: group.sentinel_urls(),
        master: Some(MASTER_NAME.into()),
        ..RedisSettings::default()
    });
    let login = |password: &str| Credentials {
        username: None,
        password: Some(password.into()),
    };
    let right = SentinelAuth {
        master: login(DATA),
        sentinels: login(SENTINELS),
    };
    let period = Duration::from_secs(5);
    assert!(matches!(
        Board::connect(&store, HINT, &right, period).await,
        Ok(Some(_))
    ));
    let cases = [
        (
            SentinelAuth {
                sentinels: login(WRONG),
                ..right.clone()
            },
            "the top-k board's sentinel at 127.0.0.1:",
        ),
        (
            SentinelAuth {
                master: login(WRONG),
                ..right.clone()
            },
            "the top-k board's master at 127.0.0.1:",
        ),
    ];
    for (auth, named) in cases {
        let err = match Board::connect(&store, HINT, &auth, period).await {
            Ok(_) => panic!("{named}: connected"),
            Err(err) => err,
        };
        let told = format!("{err:#}");
        assert!(
            err.chain().any(|c| c.is::<SettingsError>())
                && told.contains(named)
                && told.contains("refused the login")
                && ![DATA, SENTINELS, WRONG].iter().any(|s| told.contains(s)),
            "{told}"
        );
    }
}
