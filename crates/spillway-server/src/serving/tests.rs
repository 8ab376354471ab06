//! Tests of the serving threads and their servers, on real sockets.

use super::threads::Accepted;
use super::*;
use crate::shutdown::Shutdown;
use hyper_util::service::TowerToHyperService;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// A connection whose request has already arrived, queued just as the queue ends (the
/// accept task stopping at shutdown), is still answered before the server drains.
#[test]
fn a_connection_queued_as_the_queue_ends_is_answered() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = send_get(addr);
    let (accepted, peer) = listener.accept().expect("accept");
    let (incoming, runtime) = the_last_connection_queued(accepted, peer);
    runtime.block_on(serve_http(incoming, Writes::Flattened, |_| {
        TowerToHyperService::new(ok_router())
    }));
    assert_eq!(status_line(client), "HTTP/1.1 200 OK");
}

/// The HTTP/2 server's version: a connection whose request has already arrived, queued
/// just as the queue ends, is answered before its server drains.
#[test]
fn an_http2_connection_queued_as_the_queue_ends_is_answered() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // The client, on a thread of its own: one GET, then it keeps its connection going
    // (answering the server's pings) until the server closes it.
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
            tokio::spawn(connection);
            let request = ::http::Request::get(format!("http://{addr}/"))
                .body(())
                .expect("request");
            let (response, _) = client
                .ready()
                .await
                .expect("ready")
                .send_request(request, true)
                .expect("sent");
            response.await.map(|r| r.status().as_u16())
        })
    });
    let (accepted, peer) = listener.accept().expect("accept");
    // Queue the connection only once its request is in the socket: a HEADERS frame
    // after the 24-byte preface.
    let mut seen = vec![0; 4096];
    loop {
        let n = accepted.peek(&mut seen).expect("peek");
        if has_headers_frame(&seen[..n]) {
            break;
        }
        std::thread::yield_now();
    }
    let (incoming, runtime) = the_last_connection_queued(accepted, peer);
    let ok = hyper::service::service_fn(
        |_: ::http::Request<GuardedBody<hyper::body::Incoming>>| async {
            Ok::<_, std::convert::Infallible>(::http::Response::new(http_body_util::Empty::<
                bytes::Bytes,
            >::new()))
        },
    );
    runtime.block_on(serve_http2(incoming, ok));
    // Whatever the server left unserved closes here, so a miss fails instead of hanging.
    drop(runtime);
    let status = client.join().expect("client thread");
    assert_eq!(status.expect("an answer, not a refusal"), 200);
}

/// Whether `bytes` (a client's first bytes) hold an HTTP/2 HEADERS frame.
fn has_headers_frame(bytes: &[u8]) -> bool {
    let mut at = 24; // the connection preface
    while bytes.len() >= at + 9 {
        let length = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        if bytes[at + 3] == 0x1 {
            return true;
        }
        at += 9 + length;
    }
    false
}

/// A thread's queue holding `accepted` and then ending, as at shutdown, and a runtime of
/// the kind a serving thread runs to serve it on.
fn the_last_connection_queued(
    accepted: std::net::TcpStream,
    peer: SocketAddr,
) -> (Incoming, tokio::runtime::Runtime) {
    accepted.set_nonblocking(true).expect("nonblocking");
    let (queue, connections) = mpsc::unbounded_channel();
    let slot = Arc::new(Semaphore::new(1))
        .try_acquire_owned()
        .expect("a slot");
    queue
        .send(Accepted {
            stream: accepted,
            peer,
            slot,
        })
        .expect("queued");
    let incoming = Incoming {
        queue: connections,
        limits: ConnectionLimits::DEFAULT,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (incoming, runtime)
}

/// A router answering `GET /` with `ok`, as the HTTP server would be given.
fn ok_router() -> axum::Router {
    axum::Router::new().route("/", axum::routing::get(|| async { "ok" }))
}

/// A fresh connection to `addr` with one whole GET sent on it.
fn send_get(addr: SocketAddr) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    stream
}

/// The status line of the response read to the end of `stream` (empty if none came).
fn status_line(mut stream: std::net::TcpStream) -> String {
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.lines().next().unwrap_or_default().to_owned()
}

/// One GET over a fresh connection; the status line.
fn get(addr: SocketAddr) -> String {
    status_line(send_get(addr))
}

/// When every thread has stopped, the set ends on its own, with no connection arriving
/// and no signal, so the process can exit instead of holding a port nobody serves.
#[tokio::test]
async fn the_threads_end_once_every_one_has_stopped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut threads = start(
        "test",
        2,
        listener,
        ConnectionLimits::DEFAULT,
        Shutdown::new(),
        |incoming: Incoming| {
            drop(incoming);
            async { Err("this thread stops at once") }
        },
    )
    .expect("threads start");
    tokio::time::timeout(Duration::from_secs(10), threads.finished())
        .await
        .expect("the set ends without a signal");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the port is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_skip_a_thread_that_stopped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = Shutdown::new();
    let started = Arc::new(AtomicUsize::new(0));
    let (stopped, has_stopped) = std::sync::mpsc::channel::<()>();
    let mut threads = start(
        "test",
        2,
        listener,
        ConnectionLimits::DEFAULT,
        shutdown.clone(),
        move |incoming: Incoming| {
            let first = started.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    drop(incoming);
                    let _ = stopped.send(());
                    return Err("this thread stops at once");
                }
                serve_http(incoming, Writes::Flattened, |_| {
                    TowerToHyperService::new(ok_router())
                })
                .await;
                Ok(())
            }
        },
    )
    .expect("threads start");
    // Once one thread has stopped, every connection must still be answered.
    tokio::task::spawn_blocking(move || {
        has_stopped.recv().expect("a thread stopped");
        for _ in 0..6 {
            assert_eq!(get(addr), "HTTP/1.1 200 OK");
        }
    })
    .await
    .expect("client");
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), threads.finished())
        .await
        .expect("the threads drain and end");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the port is closed"
    );
}
