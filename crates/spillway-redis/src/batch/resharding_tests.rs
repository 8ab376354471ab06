//! [`send`] against a real three-master cluster with a slot migrating: what a request of a
//! refused call answers, and how it is counted, when no time is left to send it again.

use super::*;
use crate::error::SCRIPT_ERRORS;
use crate::keys::{self, KeyLayout};
use spillway_core::algorithm::{FixedWindow, LimitParams};
use spillway_core::key::StateKey;
use spillway_core::store::Check;
use spillway_testkit::metrics::{sample, LocalMetrics};
use spillway_testkit::redis::RedisCluster;

// One thread, so the test's metrics recorder (thread-local) hears every count.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_request_out_of_time_answers_and_counts_the_refusal() {
    let counts = LocalMetrics::hear();
    let cluster = RedisCluster::start();
    let client = redis::cluster::ClusterClientBuilder::new(cluster.urls())
        .retries(1)
        .min_retry_wait(1)
        .max_retry_wait(2)
        .build()
        .expect("a client");
    let conn = client.get_async_connection().await.expect("connects");
    let clock = std::sync::Arc::new(spillway_core::time::SystemClock);
    let runner = Runner::new(Conn::Cluster(conn), Duration::from_millis(500), clock, None);
    runner.prepare().await;

    // Two users of one tenant: one slot. `moved` exists on the source; `fresh` nowhere.
    let layout = KeyLayout::new("rl").unwrap();
    let state = |user: &str| StateKey {
        limit: "user".into(),
        fingerprint: 7,
        values: vec!["tenant7", user].into(),
    };
    let (moved, fresh) = (state("a"), state("b"));
    let params = LimitParams::FixedWindow(FixedWindow::new(10, 60_000_000).unwrap());
    let check = |key| Check {
        key,
        params: &params,
        cost: 1,
        enforced: true,
        metered: false,
    };
    let slot = keys::state_slot(&moved);
    assert_eq!(slot, keys::state_slot(&fresh));
    let moved_key = layout.key(&moved);
    runner
        .run_script(
            runner.timeout,
            [(moved_key.as_str(), Encoded::new(&check(&moved)))],
            CheckMode::Consume,
            false,
        )
        .await
        .expect("written on the source");
    cluster.start_migrating(slot);
    let before = counts.render();

    // One request needing both keys: the source refuses it (`TRYAGAIN`), and its caller's
    // time is already up, so it is not sent again.
    let (answer, reply) = oneshot::channel();
    let mut batch = vec![Job {
        lane: slot,
        keys: vec![moved_key, layout.key(&fresh)],
        checks: vec![Encoded::new(&check(&moved)), Encoded::new(&check(&fresh))],
        kind: Kind::Check(CheckMode::Consume),
        deadline: Instant::now(),
        answer,
    }];
    let answered = send(&runner, &mut batch, &tokio::sync::Mutex::new(())).await;
    assert!(answered, "Redis answered the call, refusing it");
    let reply = reply.await.expect("an answer");
    assert!(
        matches!(&reply, Err(BatchError::Store(StoreError::Unavailable(why))) if why.to_uppercase().contains("TRYAGAIN")),
        "the refusal, not a timeout: {reply:?}"
    );
    // Counted once, as the refusal: no timeout, and no retry sent.
    let after = counts.render();
    let counted =
        |metric: &str, label: &str| sample(&after, metric, label) - sample(&before, metric, label);
    let errors = "spillway_store_errors_total";
    assert_eq!(counted(errors, "kind=\"unavailable\""), 1, "{after}");
    assert_eq!(counted(errors, "kind=\"timeout\""), 0, "{after}");
    assert_eq!(counted(SCRIPT_ERRORS, "kind=\"connection\""), 1, "{after}");
    assert_eq!(counted(BATCH_RETRIED, ""), 0, "{after}");
}
