//! How much of the server one client can hold, and for how long: the connection cap, the
//! HTTP/2 stream cap and the read timeouts, set by `spillway serve` flags.
//!
//! Without them a client that opens connections and sends nothing, or sends a request one
//! byte at a time, holds a connection (and a file descriptor) for as long as it likes, and
//! enough such clients starve everyone else. Each limit bounds one way of holding on:
//!
//! - `max_connections`: open connections per port. When they are all taken the accept task
//!   stops accepting (new clients wait in the kernel's backlog) until one closes; it never
//!   accepts a connection only to drop it.
//! - `header_timeout`: HTTP/1's time to send a request's headers (slowloris). It runs from the
//!   moment the connection waits for a request head, so between keep-alive requests it runs
//!   too: an HTTP/1 connection idles at most this long. Past it the connection is dropped,
//!   between one and one and a quarter timeouts after the wait began ([`super::heads`]).
//! - `idle_timeout`: how long a connection (HTTP/1 or HTTP/2) may stay with no request in
//!   flight before it is closed gracefully; an HTTP/2 client that opened a connection and never
//!   sends a request is closed by it too. Checked four times per shortest period, so a
//!   connection goes after between one and one and a quarter periods of idleness.
//! - `max_streams`: concurrent HTTP/2 streams per connection, on both ports. Envoy multiplexes
//!   many calls on a few connections, so this is generous by default.
//! - `body_timeout`: how long a request body may take to arrive in full, counted from the first
//!   time the server waits for it. A body that is complete when read (the usual case) never
//!   starts a timer. Past it the request is cut off: HTTP 408, gRPC `DEADLINE_EXCEEDED`.
//! - `max_body_memory`: the memory the whole process may hold for requests waiting for the
//!   rest of their bodies, every port and connection together. The other limits multiply
//!   (connections × streams × a 4 MiB gRPC message held for the body timeout); this one caps
//!   the product. A request that would pass it is refused at once: HTTP 503, gRPC
//!   `RESOURCE_EXHAUSTED` ([`super::body_memory`]).

use std::time::Duration;

/// Per-port limits on connections and on how long a client may take; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once on one port; past it, accepting waits.
    pub max_connections: usize,
    /// HTTP/1: longest time to read a request's headers, keep-alive waits included.
    pub header_timeout: Duration,
    /// Longest time a connection stays open with no request in flight.
    pub idle_timeout: Duration,
    /// Most concurrent HTTP/2 streams on one connection.
    pub max_streams: u32,
    /// Longest time a request body may take to arrive, once the server waits for it.
    pub body_timeout: Duration,
    /// Most memory the process holds for requests waiting for the rest of their bodies.
    pub max_body_memory: usize,
}

impl ConnectionLimits {
    /// The defaults the command line documents: 4,096 connections per port, 1,024 streams per
    /// HTTP/2 connection, 10 s for headers and for bodies, 60 s idle, 64 MiB of bodies still
    /// arriving.
    pub const DEFAULT: Self = Self {
        max_connections: 4096,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_streams: 1024,
        body_timeout: Duration::from_secs(10),
        max_body_memory: 64 << 20,
    };

    /// The least `max_body_memory` taken: one waiting request's head
    /// ([`WAITING`](super::body_memory::WAITING)) and the HTTP API's largest body.
    pub const MIN_BODY_MEMORY: usize = super::body_memory::WAITING + (16 << 10);

    /// Checks the values: every limit must leave room for a request. The error names the flag.
    pub fn checked(self) -> Result<Self, String> {
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.max_streams == 0 {
            return Err("--max-streams must be at least 1".into());
        }
        if self.max_body_memory < Self::MIN_BODY_MEMORY {
            return Err(format!(
                "--max-body-memory must be at least 32KiB, not {} bytes",
                self.max_body_memory
            ));
        }
        for (flag, value) in [
            ("--header-timeout", self.header_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--body-timeout", self.body_timeout),
        ] {
            if value < Duration::from_millis(1) {
                return Err(format!("{flag} must be at least 1ms"));
            }
        }
        Ok(self)
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_leave_no_room_are_refused_naming_the_flag() {
        assert_eq!(
            ConnectionLimits::DEFAULT.checked(),
            Ok(ConnectionLimits::DEFAULT)
        );
        let cases = [
            (
                ConnectionLimits {
                    max_connections: 0,
                    ..ConnectionLimits::DEFAULT
                },
                "--max-connections",
            ),
            (
                ConnectionLimits {
                    max_streams: 0,
                    ..ConnectionLimits::DEFAULT
                },
                "--max-streams",
            ),
            (
                ConnectionLimits {
                    idle_timeout: Duration::ZERO,
                    ..ConnectionLimits::DEFAULT
                },
                "--idle-timeout",
            ),
            (
                ConnectionLimits {
                    body_timeout: Duration::from_micros(10),
                    ..ConnectionLimits::DEFAULT
                },
                "--body-timeout",
            ),
            (
                ConnectionLimits {
                    max_body_memory: ConnectionLimits::MIN_BODY_MEMORY - 1,
                    ..ConnectionLimits::DEFAULT
                },
                "--max-body-memory",
            ),
        ];
        for (limits, flag) in cases {
            let err = limits.checked().expect_err("refused");
            assert!(err.starts_with(flag), "{err} should name {flag}");
        }
    }
}
