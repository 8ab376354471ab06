//! Helpers of the thread connection tests: which connection did what (Redis's `CLIENT
//! LIST`), and a "serving thread" run as the server runs one (a plain thread on a single-threaded
//! runtime).

use spillway_redis::RedisStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The store's clients of the server on `port`, as their `id` and the last command each ran:
/// neither the one asking, nor a sentinel's, nor a replica's.
pub fn clients(port: u16) -> Vec<(u64, String)> {
    let list = spillway_testkit::redis::command(port, "CLIENT LIST").unwrap_or_default();
    list.lines()
        .filter(|line| line.contains("id="))
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name))
                    .map(str::to_owned)
            };
            if field("name=").is_some_and(|n| n.starts_with("sentinel-"))
                || field("flags=").is_some_and(|f| f.contains('S'))
            {
                return None;
            }
            let id = field("id=")?.parse().ok()?;
            let cmd = field("cmd=")?;
            Some((id, cmd))
        })
        .filter(|(_, cmd)| cmd != "client|list")
        .collect()
}

/// On an attached serving thread, pings on the shared connection and then runs `check` three
/// times; asserts that the server on `port` then sees two of the store's connections: the
/// `shared` one, whose last command was the ping, and the thread's own, whose last was a
/// check's `fcall`.
pub async fn checks_go_out_on_own_conn<F, Fut>(
    store: Arc<RedisStore>,
    port: u16,
    shared: u64,
    check: F,
) where
    F: Fn(Arc<RedisStore>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    use spillway_core::store::Store;
    let (stop, stopped) = oneshot::channel();
    let (seen, saw) = oneshot::channel();
    let thread = serving_thread(store, stopped, move |store| async move {
        // Something else last on the shared connection, so the check's `fcall` shows where
        // it went.
        store.ping().await.expect("ping");
        for _ in 0..3 {
            check(store.clone()).await;
        }
        let _ = seen.send(clients(port));
    });
    let after = saw.await.expect("the thread reports");
    assert_eq!(
        after.len(),
        2,
        "the shared connection and the thread connection's: {after:?}"
    );
    for (id, cmd) in &after {
        if *id == shared {
            assert_eq!(cmd, "ping", "the check did not take the shared connection");
        } else {
            assert_eq!(cmd, "fcall", "the check took the thread's own connection");
        }
    }
    let _ = stop.send(());
    thread.join().expect("thread");
}

/// Attaches three serving threads to `store`, each running `check` once; asserts that the
/// server on `port` then sees the shared connection and three thread connections, and that
/// every one of them closes once the store is dropped while the threads run on.
pub async fn dropping_the_store_closes_its_conns<F, Fut>(
    store: Arc<RedisStore>,
    port: u16,
    check: F,
) where
    F: Fn(Arc<RedisStore>) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let mut threads = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..3 {
        let (stop, stopped) = oneshot::channel();
        let (ready, up) = oneshot::channel();
        let check = check.clone();
        threads.push(serving_thread(store.clone(), stopped, |store| async move {
            check(store).await;
            let _ = ready.send(());
        }));
        up.await.expect("thread connection up");
        stops.push(stop);
    }
    assert_eq!(
        clients(port).len(),
        4,
        "the shared connection and three thread connections"
    );
    // The threads keep running; only the store goes.
    drop(store);
    assert!(
        eventually(|| clients(port).is_empty()).await,
        "every connection closed with the store: {:?}",
        clients(port)
    );
    for (stop, thread) in stops.into_iter().zip(threads) {
        let _ = stop.send(());
        thread.join().expect("thread");
    }
}

/// Kills the one connection of the server on `port` that is not `shared` (a serving thread's
/// own, idle), waits until the server has let it go and the close has reached this thread's
/// runtime; its id.
pub async fn kill_the_thread_conn(port: u16, shared: u64) -> u64 {
    let own: Vec<u64> = clients(port)
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| *id != shared)
        .collect();
    assert_eq!(own.len(), 1, "one thread connection");
    let killed = spillway_testkit::redis::command(port, &format!("CLIENT KILL ID {}", own[0]));
    assert_eq!(killed.as_deref().map(str::trim), Some(":1"));
    assert!(
        eventually(|| clients(port).iter().all(|(id, _)| *id != own[0])).await,
        "the server closed it"
    );
    // The close reaches this thread's runtime while it waits.
    tokio::time::sleep(Duration::from_millis(20)).await;
    own[0]
}

/// Whether every socket of this host connected to `port` has been closed by its peer (none is
/// left `ESTABLISHED` in `/proc/net/tcp` or `tcp6`): the kernel has taken in the server's close,
/// so a runtime that next waits for events sees its connections closed. A server killed a moment
/// ago may not have reached that yet (a loopback close is delivered asynchronously). Panics if
/// `/proc/net/tcp` cannot be read, rather than answer yes without looking.
pub fn closed_by_peer(port: u16) -> bool {
    const ESTABLISHED: &str = "01";
    let v4 = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp is readable");
    let v6 = std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    [v4, v6].iter().all(|table| {
        table.lines().skip(1).all(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let to_port = fields
                .get(2)
                .and_then(|remote| remote.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            to_port != Some(port) || fields.get(3) != Some(&ESTABLISHED)
        })
    })
}

/// Polls `what` every 10 ms until it holds, for at most 5 s (waiting on another process:
/// a connection being made or closed).
pub async fn eventually(mut what: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !what() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Runs `work` on a new thread's single-threaded runtime after the thread attached to `store` and
/// its thread connection came up; the thread's runtime keeps running (its thread connection with
/// it) until `stop` fires, then the thread ends.
pub fn serving_thread<F, Fut>(
    store: Arc<RedisStore>,
    stop: oneshot::Receiver<()>,
    work: F,
) -> std::thread::JoinHandle<()>
where
    F: FnOnce(Arc<RedisStore>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    use spillway_core::store::Store;
    serving_thread_when(store, stop, |store| store.served_on_this_thread(&[]), work)
}

/// [`serving_thread`], starting `work` once `ready` holds on the thread (on a cluster: once
/// the thread has its connections to the masters the test's keys are on).
pub fn serving_thread_when<R, F, Fut>(
    store: Arc<RedisStore>,
    stop: oneshot::Receiver<()>,
    ready: R,
    work: F,
) -> std::thread::JoinHandle<()>
where
    R: Fn(&RedisStore) -> bool + Send + 'static,
    F: FnOnce(Arc<RedisStore>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    use spillway_core::store::Store;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            store.attach_thread();
            assert!(
                eventually(|| ready(&store)).await,
                "the thread's own connection comes up"
            );
            work(store).await;
            let _ = stop.await;
        });
    })
}
