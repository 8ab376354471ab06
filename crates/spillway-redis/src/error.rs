//! Turning client errors into the engine's typed [`StoreError`], and counting them.
//!
//! Every error the store returns goes through [`record`], which increments
//! `spillway_store_errors_total{kind}` with `kind` one of `timeout`, `unavailable` or
//! `protocol` (a bounded label set, never a key).

use spillway_core::store::StoreError;
use std::time::Duration;

/// Maps a `redis` error to the engine's error kinds.
pub fn classify(err: redis::RedisError, timeout: Duration) -> StoreError {
    if err.is_timeout() {
        StoreError::Timeout(timeout)
    } else if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_cluster_error()
        || err.is_unrecoverable_error()
    {
        StoreError::Unavailable(err.to_string())
    } else {
        match err.kind() {
            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension => {
                // LOADING, MASTERDOWN, TRYAGAIN, CLUSTERDOWN: the store is there but cannot
                // serve yet; a script error is a bug or a foreign value under our prefix.
                let text = err.to_string();
                if ["LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY"]
                    .iter()
                    .any(|code| text.contains(code))
                {
                    StoreError::Unavailable(text)
                } else {
                    StoreError::Protocol(text)
                }
            }
            redis::ErrorKind::ClusterConnectionNotFound | redis::ErrorKind::Io => {
                StoreError::Unavailable(err.to_string())
            }
            _ => StoreError::Protocol(err.to_string()),
        }
    }
}

/// The metric label for an error kind.
pub fn kind(err: &StoreError) -> &'static str {
    match err {
        StoreError::Timeout(_) => "timeout",
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Protocol(_) => "protocol",
    }
}

/// Counts `err` and hands it back.
pub fn record(err: StoreError) -> StoreError {
    metrics::counter!("spillway_store_errors_total", "kind" => kind(&err)).increment(1);
    err
}
