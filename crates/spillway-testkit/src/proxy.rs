//! A TCP proxy for fault injection: sits between a client and a server on loopback and
//! delays what the server sends back by an adjustable amount.
//!
//! Used to make Redis answer later than a store's time budget without touching Redis itself.
//! Each connection gets two threads (one per direction); replies are held for the current
//! delay before being forwarded, so setting the delay to zero ends the fault for connections
//! that are already open.
//!
//! [`DelayProxy::cut`] stands for a network partition: every open connection is closed and
//! new ones are closed as soon as they are accepted, until [`DelayProxy::heal`].

// The delay is real time on purpose: it is the fault being injected.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running proxy to one upstream port; it stops accepting when dropped.
pub struct DelayProxy {
    port: u16,
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    /// A handle on each connection's client side, for closing it on a cut.
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl DelayProxy {
    /// Starts a proxy on a free loopback port forwarding to `127.0.0.1:<upstream>`, with no
    /// delay.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("non-blocking accept");
        let delay_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (delay, stopping, cutting, opened) =
            (delay_ms.clone(), stop.clone(), cut.clone(), open.clone());
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) if cutting.load(Ordering::Relaxed) => {
                        let _ = client.shutdown(Shutdown::Both);
                    }
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let (Ok(handle), Ok(mut list)) = (client.try_clone(), opened.lock()) {
                            list.retain(|s: &TcpStream| s.peer_addr().is_ok());
                            list.push(handle);
                        }
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) {
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            pipe(client, server, delay.clone());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            port,
            delay_ms,
            stop,
            cut,
            open,
        }
    }

    /// Cuts the link: closes every open connection and refuses new ones until [`Self::heal`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        if let Ok(mut list) = self.open.lock() {
            for stream in list.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Ends a [`Self::cut`]: new connections are forwarded again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }

    /// The port clients should connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, for pointing a Redis client at the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Holds every reply for `delay` before forwarding it (zero removes the fault).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies both ways between `client` and `server`, delaying the server's replies.
fn pipe(client: TcpStream, server: TcpStream, delay: Arc<AtomicU64>) {
    let (Ok(client_back), Ok(server_back)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || copy(client, server, None));
    std::thread::spawn(move || copy(server_back, client_back, Some(delay)));
}

fn copy(mut from: TcpStream, mut to: TcpStream, delay: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(ms) = delay.as_ref().map(|d| d.load(Ordering::Relaxed)) {
            if ms > 0 {
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
