//! The once-a-second housekeeping task.
//!
//! Each tick drops the store's expired keys (so an idle key costs memory only until its limit
//! would have forgotten it anyway), publishes the store's size and eviction count, and runs
//! the metrics recorder's upkeep. Expiry is judged by the store's clock (the server's clock
//! for the in-memory store), so under a manual clock keys expire when a test moves time, not
//! when the wall clock does.

use crate::metrics;
use crate::shutdown::Shutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use spillway_core::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// How often the sweeper runs.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One round of housekeeping; the task calls this every [`INTERVAL`].
pub fn sweep_once(store: &dyn Store, recorder: &PrometheusHandle) {
    let dropped = store.sweep();
    if dropped > 0 {
        tracing::debug!(dropped, "swept expired keys");
    }
    metrics::record_store(store.key_count(), store.evictions());
    recorder.run_upkeep();
}

/// Starts the task; it ends when `shutdown` fires.
pub fn spawn(
    store: Arc<dyn Store>,
    recorder: PrometheusHandle,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(INTERVAL);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => sweep_once(store.as_ref(), &recorder),
                _ = shutdown.triggered() => break,
            }
        }
    })
}
