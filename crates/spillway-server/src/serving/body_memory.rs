//! [`BodyMemory`]: the request-body bytes the process holds while it waits for the rest of
//! those bodies, capped by `--max-body-memory` across every port and thread.
//!
//! Each of the other limits bounds one thing: a port's connections, a connection's HTTP/2
//! streams, a body's length (16 KiB on the HTTP API, a 4 MiB message on the gRPC port) and the
//! time it may take. Their product is not bounded by any of them: one gRPC connection with
//! 1,024 streams, each sent all but the last byte of a 4 MiB message, holds 4 GiB until the
//! body timeout, and a client may open thousands of such connections. With this cap a body
//! that would take the held bytes past it is refused at once (HTTP 503, gRPC
//! `RESOURCE_EXHAUSTED`) and gives back what it held.
//!
//! Only requests that wait for their body are counted. The first time a body finds the rest
//! has not arrived, its [`super::GuardedBody`] charges [`WAITING`] (what a waiting request
//! holds besides its body: its head, and buffers) and the bytes handed out so far; each later
//! wait charges the bytes handed out since. A body that came whole with its headers, or in
//! frames all received by the time it is read (the rate-limit calls Envoy sends, nginx's
//! bodiless subrequests), is never charged: the hot path touches no shared counter, and such
//! calls are answered while the cap is reached. Bodies that do wait are refused while it is
//! reached, whoever filled it: an HTTP/1 chunked body (its end comes after its last chunk),
//! one larger than the first read, a gRPC message in more frames than had arrived. A body
//! that must wait for more than the cap can never be read.
//!
//! The charge is given back when the body ends with an error (refused, late) or is dropped,
//! read or not. What is charged is the bytes received: the reader's buffer may hold up to
//! about twice that while it grows. Not charged: what HTTP/2 buffers for a connection before
//! the handler reads it (at most its 1 MiB receive window, dropped with a refused stream), and
//! a message once read whole (the decision that follows is bounded by the store's budget).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Request-body bytes held while their bodies wait for more; one per process ([`PROCESS`]).
#[derive(Debug, Default)]
pub struct BodyMemory {
    held: AtomicUsize,
}

/// The process's count, shared by every port: the server's connections charge it.
pub static PROCESS: BodyMemory = BodyMemory::new();

/// What a waiting request is charged besides its body's bytes, once: HTTP/2's largest header
/// list (hyper's 16 KiB), which the request keeps while it waits, standing in for its head
/// and the buffers of its first read.
pub const WAITING: usize = 16 << 10;

impl BodyMemory {
    /// Nothing held.
    pub const fn new() -> Self {
        Self {
            held: AtomicUsize::new(0),
        }
    }

    /// The bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `bytes` more if the total stays within `cap`.
    fn take(&self, bytes: usize, cap: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&total| total <= cap)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// What one body holds of a [`BodyMemory`] under a cap; given back when released or dropped.
#[derive(Debug)]
pub struct Charge {
    memory: &'static BodyMemory,
    cap: usize,
    held: usize,
}

impl Charge {
    /// Nothing held yet of `memory`, whose total may not pass `cap`.
    pub fn new(memory: &'static BodyMemory, cap: usize) -> Self {
        Self {
            memory,
            cap,
            held: 0,
        }
    }

    /// Holds `bytes` more, or says the cap would be passed (and holds nothing more).
    pub fn add(&mut self, bytes: usize) -> Result<(), BodyMemoryFull> {
        if !self.memory.take(bytes, self.cap) {
            metrics::counter!(REFUSED).increment(1);
            return Err(BodyMemoryFull { cap: self.cap });
        }
        self.held += bytes;
        Ok(())
    }

    /// Whether anything is held: the body has waited.
    pub fn holds(&self) -> bool {
        self.held > 0
    }

    /// Gives back all that is held.
    pub fn release(&mut self) {
        if self.held > 0 {
            self.memory.give_back(std::mem::take(&mut self.held));
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release();
    }
}

/// Request bodies refused because the bytes held for bodies still arriving would pass
/// `--max-body-memory`.
pub const REFUSED: &str = "spillway_body_memory_refusals_total";
/// Bytes held now for request bodies still arriving; set when `/metrics` is scraped.
pub const HELD: &str = "spillway_body_memory_held_bytes";

/// Registers the two metrics' descriptions, and shows the refusals at zero before any.
pub fn describe() {
    metrics::describe_counter!(
        REFUSED,
        "Request bodies refused because bodies still arriving held --max-body-memory bytes."
    );
    metrics::describe_gauge!(
        HELD,
        metrics::Unit::Bytes,
        "Bytes held for request bodies still arriving (capped by --max-body-memory)."
    );
    metrics::counter!(REFUSED).increment(0);
}

/// Sets [`HELD`] to the process's count, for a scrape.
pub fn record() {
    metrics::gauge!(HELD).set(PROCESS.held() as f64);
}

/// The error a body ends with when holding its next bytes would pass the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the server already holds its --max-body-memory of {cap} bytes for request bodies still \
     arriving; send the body whole, or retry"
)]
pub struct BodyMemoryFull {
    /// The cap, in bytes.
    pub cap: usize,
}

impl BodyMemoryFull {
    /// The refusal behind `err`, if it or one of its sources is one.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        super::guarded::cause::<Self>(err).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_under_the_cap_and_are_given_back_when_dropped() {
        static MEMORY: BodyMemory = BodyMemory::new();
        let mut first = Charge::new(&MEMORY, 100);
        first.add(60).expect("fits");
        let mut second = Charge::new(&MEMORY, 100);
        second.add(40).expect("fits exactly");
        assert_eq!(
            second.add(1),
            Err(BodyMemoryFull { cap: 100 }),
            "one byte past the cap"
        );
        assert_eq!(MEMORY.held(), 100, "a refused add holds nothing");
        drop(first);
        assert_eq!(MEMORY.held(), 40);
        second.add(60).expect("fits once the first is given back");
        drop(second);
        assert_eq!(MEMORY.held(), 0);
    }

    #[test]
    fn a_released_charge_holds_nothing_more() {
        static MEMORY: BodyMemory = BodyMemory::new();
        let mut charge = Charge::new(&MEMORY, 100);
        assert!(!charge.holds());
        charge.add(30).expect("fits");
        assert!(charge.holds());
        charge.release();
        assert_eq!(MEMORY.held(), 0);
        assert!(!charge.holds());
        drop(charge);
        assert_eq!(MEMORY.held(), 0, "nothing given back twice");
    }

    #[test]
    fn a_charge_too_large_to_count_is_refused() {
        static MEMORY: BodyMemory = BodyMemory::new();
        let mut charge = Charge::new(&MEMORY, usize::MAX);
        charge.add(usize::MAX).expect("fits");
        let mut other = Charge::new(&MEMORY, usize::MAX);
        assert!(other.add(1).is_err(), "the sum would overflow");
        drop(charge);
        assert_eq!(MEMORY.held(), 0);
    }

    #[test]
    fn the_refusal_is_found_among_an_errors_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapped(#[source] BodyMemoryFull);
        let full = BodyMemoryFull { cap: 7 };
        assert_eq!(BodyMemoryFull::find(&Wrapped(full)), Some(full));
        assert_eq!(BodyMemoryFull::find(&std::io::Error::other("reset")), None);
        assert!(full.to_string().contains("--max-body-memory of 7 bytes"));
    }
}
