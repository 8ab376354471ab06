//! Counting the spans that never reach the collector.
//!
//! The SDK's batch processor drops a span when its queue is full and an exporter loses a
//! whole batch when an export fails, but it only says so in its own internal log. Two thin
//! wrappers make both losses a metric, `spillway_trace_spans_dropped_total{reason}`:
//!
//! ```text
//! span ends ─► Bounded (processor) ── in flight ≥ --otlp-queue? ─► dropped, reason="queue_full"
//!                  │ else counted in flight
//!                  ▼
//!              BatchSpanProcessor (its queue never overflows: it has the same capacity)
//!                  ▼
//!              Counted (exporter) ── batch leaves the queue: in flight -= batch
//!                  ▼ export fails (unreachable, TLS refused, timeout) ─► reason="export_failed"
//!              OTLP/gRPC exporter
//! ```
//!
//! A span is "in flight" from the moment it is handed to the batch processor until its batch
//! is handed to the exporter, which is an upper bound of what sits in the processor's queue; so
//! the wrapper refuses a span exactly when the processor might have had to, and the processor
//! itself never drops silently. A failing collector is logged once when exports start failing
//! and once when they work again, not once per batch.

use metrics::{counter, Counter};
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Spans lost before reaching the collector, by `reason`: `queue_full` or `export_failed`.
pub const DROPPED: &str = "spillway_trace_spans_dropped_total";
/// Export calls that failed (each losing one batch).
pub const EXPORT_ERRORS: &str = "spillway_trace_export_errors_total";

/// What the two wrappers share: the spans in flight, and the queue's capacity.
#[derive(Debug)]
pub struct InFlight {
    spans: AtomicUsize,
    capacity: usize,
}

impl InFlight {
    /// A queue of `capacity` spans (at least one).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            spans: AtomicUsize::new(0),
            capacity: capacity.max(1),
        })
    }

    /// Takes a place for one span; `false` when the queue is full.
    fn take(&self) -> bool {
        self.spans
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back `n` places.
    fn give_back(&self, n: usize) {
        let _ = self
            .spans
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |spans| {
                Some(spans.saturating_sub(n))
            });
    }
}

/// The processor wrapper: refuses and counts a span the queue has no room for.
#[derive(Debug)]
pub struct Bounded<P> {
    inner: P,
    in_flight: Arc<InFlight>,
    dropped: Counter,
}

impl<P: SpanProcessor> Bounded<P> {
    /// Wraps `inner`, whose queue holds `in_flight`'s capacity.
    pub fn new(inner: P, in_flight: Arc<InFlight>) -> Self {
        describe();
        Self {
            inner,
            in_flight,
            dropped: counter!(DROPPED, "reason" => "queue_full"),
        }
    }
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.in_flight.take() {
            self.inner.on_end(span);
        } else {
            self.dropped.increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter wrapper: frees the batch's places, and counts a failed export's spans.
#[derive(Debug)]
pub struct Counted<E> {
    inner: E,
    in_flight: Arc<InFlight>,
    endpoint: String,
    failing: AtomicBool,
    dropped: Counter,
    errors: Counter,
}

impl<E: SpanExporter> Counted<E> {
    /// Wraps `inner`, which exports to `endpoint` (named in the log, its password masked).
    pub fn new(inner: E, in_flight: Arc<InFlight>, endpoint: &str) -> Self {
        describe();
        Self {
            inner,
            in_flight,
            endpoint: spillway_core::redact::mask_service_url(endpoint),
            failing: AtomicBool::new(false),
            dropped: counter!(DROPPED, "reason" => "export_failed"),
            errors: counter!(EXPORT_ERRORS),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        // The batch has left the processor's queue: room for as many new spans.
        self.in_flight.give_back(spans);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "trace export works again");
                }
            }
            Err(err) => {
                self.errors.increment(1);
                self.dropped.increment(spans as u64);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        spans,
                        "trace export failed, spans are dropped until it works again \
                         (counted in {DROPPED}): {err}"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

fn describe() {
    metrics::describe_counter!(
        DROPPED,
        "Trace spans that never reached the collector, by reason (queue_full, export_failed)."
    );
    metrics::describe_counter!(
        EXPORT_ERRORS,
        "Failed exports to the OTLP collector (each loses one batch of spans)."
    );
    for reason in ["queue_full", "export_failed"] {
        counter!(DROPPED, "reason" => reason).increment(0);
    }
    counter!(EXPORT_ERRORS).increment(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_up_to_the_capacity_and_given_back() {
        let in_flight = InFlight::new(3);
        assert!((0..3).all(|_| in_flight.take()));
        assert!(!in_flight.take(), "full");
        in_flight.give_back(2);
        assert!(in_flight.take());
        assert!(in_flight.take());
        assert!(!in_flight.take());
        in_flight.give_back(10);
        assert_eq!(
            in_flight.spans.load(Ordering::Relaxed),
            0,
            "never below zero"
        );
    }
}
