//! [`Runner`]'s probes for the module, on our own connection to a listener of the test's that
//! logs in and then never answers, on tokio's paused clock.

use super::*;
use crate::module::{REPROBE, RETRY};
use crate::own_conn::Target;
use spillway_core::time::{ManualClock, SECOND};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A listener that answers the login's `PING`, then reads every command and answers none.
async fn silent_after_login() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("redis://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = Vec::new();
                while !read.windows(4).any(|w| w == b"PING") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read.extend_from_slice(&buf[..n]),
                    }
                }
                if socket.write_all(b"+PONG\r\n").await.is_err() {
                    return;
                }
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    url
}

/// A runner (timeout 100 ms) on our own connection to [`silent_after_login`], its store's
/// clock at the returned manual one; tokio's clock is paused from here on.
async fn on_a_silent_server() -> (Runner, Arc<ManualClock>) {
    let url = silent_after_login().await;
    let target = Target::of_url(&url, Duration::from_secs(1)).expect("a RESP2 URL");
    let conn = OwnConn::connect(target).await.expect("logs in");
    tokio::time::pause();
    let clock = Arc::new(ManualClock::new(1_700_000_000 * SECOND));
    let timeout = Duration::from_millis(100);
    let runner = Runner::new(Conn::Own(conn), timeout, clock.clone(), None);
    (runner, clock)
}

/// A check that fails, or whose caller gives it up, takes no turn to probe for the module
/// and sends no probe: the probe is still due once both are over.
#[tokio::test]
async fn a_check_that_fails_or_is_given_up_takes_no_probe() {
    let (runner, clock) = on_a_silent_server().await;
    let args = CallArgs::default();
    let failed = runner.run_call(Duration::from_millis(50), &args).await;
    assert!(matches!(failed, Err(StoreError::Timeout(_))), "{failed:?}");
    let call = runner.run_call(Duration::from_secs(5), &args);
    let given_up = tokio::time::timeout(Duration::from_millis(50), call).await;
    assert!(given_up.is_err(), "still waiting");
    // Past any probe's bound (1 s), so one sent would have ended.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(runner.module.probe_due(clock.now()).is_some(), "still due");
}

/// A probe whose server never answers holds the right to probe until its bound (the
/// store's timeout, but at least 1 s) and then gives it up, its wait ([`RETRY`]: no answer
/// says nothing of the module) running from then, so a later check can make the next probe
/// due.
#[tokio::test]
async fn a_probe_never_answered_gives_up_its_turn_at_its_bound() {
    let (runner, clock) = on_a_silent_server().await;
    let module = Arc::clone(&runner.module);
    let t = clock.now();
    runner.probe_aside(module.probe_due(t).expect("due: no probe answered yet"));
    tokio::time::sleep(Duration::from_millis(999)).await;
    assert!(
        module.probe_due(t + 10 * REPROBE).is_none(),
        "in flight until 1 s, past the store's 100 ms"
    );
    // The probe gives up 5 s later on the store's clock.
    clock.advance(5 * SECOND);
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert!(!module.enabled());
    assert!(
        module.probe_due(t + 5 * SECOND + RETRY - 1).is_none(),
        "the wait runs from the probe giving up"
    );
    assert!(
        module.probe_due(t + 5 * SECOND + RETRY).is_some(),
        "the next probe is due"
    );
}
