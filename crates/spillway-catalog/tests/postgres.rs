//! What only PostgreSQL does: notifications (and their recovery after the listener's
//! connection is killed), and riding out a server that stops and comes back.

mod common;

use common::*;
use spillway_catalog::{Error, Notifications};
use std::time::Duration;
use tokio::time::timeout;

/// The next announced version, failing the test after 10 s.
async fn next(rx: &mut Notifications) -> u64 {
    timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification within 10 s")
        .expect("the notification channel is open")
}

/// Writes until a write's own version is announced (a listener that reconnects may miss the
/// writes made while it was away; it must hear the ones after).
async fn write_until_heard(f: &Fixture, rx: &mut Notifications, tag: &str) -> u64 {
    for i in 0..100 {
        let v =
            f.db.put(tenant(&format!("{tag}{i}")), on_tier("free"), None)
                .await
                .unwrap();
        while let Ok(Some(heard)) = timeout(Duration::from_millis(200), rx.recv()).await {
            if heard == v {
                return v;
            }
        }
    }
    panic!("no write was announced after the listener's connection was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_announced_and_survive_a_killed_listener() {
    let Some(f) = Fixture::postgres("postgres::writes_are_announced").await else {
        return;
    };
    let mut rx = f.db.notifications().expect("postgres has notifications");
    // On connecting, the listener announces where the catalog stands.
    assert_eq!(next(&mut rx).await, 0);
    let v1 = f.db.put(tenant("a"), on_tier("free"), None).await.unwrap();
    assert_eq!(next(&mut rx).await, v1);
    let v2 = f.db.delete(&tenant("a"), None).await.unwrap().unwrap();
    assert_eq!(next(&mut rx).await, v2);
    // Another client's writes are heard too.
    let other = f.second_client().await;
    let v3 = other.put(user("a", "u"), a_user("x"), None).await.unwrap();
    assert_eq!(next(&mut rx).await, v3);
    let v4 = other
        .put_many(vec![
            (tenant("b"), on_tier("x")),
            (tenant("c"), on_tier("x")),
        ])
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, v4);
    // A refused write announces nothing.
    assert!(f.db.put(tenant("b"), on_tier("y"), Some(1)).await.is_err());

    let Backing::Postgres(server) = &f.backing else {
        unreachable!()
    };
    assert_eq!(
        server.terminate_listeners(),
        1,
        "one LISTEN connection to kill"
    );
    write_until_heard(&f, &mut rx, "after-kill-").await;
    // And again, to show the recovery is not a one-off.
    assert_eq!(server.terminate_listeners(), 1);
    write_until_heard(&f, &mut rx, "after-second-kill-").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unavailable_then_comes_back() {
    let Some(mut f) = Fixture::postgres("postgres::a_stopped_server_is_unavailable").await else {
        return;
    };
    let mut rx = f.db.notifications().expect("postgres has notifications");
    assert_eq!(next(&mut rx).await, 0);
    let v1 = f.db.put(tenant("a"), on_tier("free"), None).await.unwrap();
    assert_eq!(next(&mut rx).await, v1);

    f.server().unwrap().stop();
    match f.db.version().await {
        Err(e @ Error::Unavailable(_)) => assert!(e.is_unavailable()),
        other => panic!("expected Unavailable while the server is down, got {other:?}"),
    }
    assert!(f
        .db
        .put(tenant("b"), on_tier("free"), None)
        .await
        .unwrap_err()
        .is_unavailable());

    f.server().unwrap().restart();
    // The pool drops its dead connections and reconnects on its own.
    let mut version = None;
    for _ in 0..50 {
        if let Ok(v) = f.db.version().await {
            version = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(version, Some(v1), "the data survived the restart");
    assert_eq!(
        f.db.get(&tenant("a")).await.unwrap(),
        Some((on_tier("free"), v1))
    );
    // The listener found its way back too.
    write_until_heard(&f, &mut rx, "after-restart-").await;
}

#[tokio::test]
async fn a_server_that_is_not_there_is_unavailable_not_a_crash() {
    let port = spillway_testkit::redis::free_port();
    let db = spillway_catalog::open(&format!("postgres://postgres:secret@127.0.0.1:{port}/x"))
        .await
        .expect("opening is lazy");
    let err = db.version().await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test]
async fn sqlite_has_no_notifications() {
    let f = Fixture::sqlite().await;
    assert!(f.db.notifications().is_none());
    assert_eq!(f.db.backend(), "sqlite");
}
