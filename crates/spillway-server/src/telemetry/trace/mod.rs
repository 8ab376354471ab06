//! OpenTelemetry traces: a span per decision, joined to the caller's trace, and a child span
//! per store call, exported over OTLP/gRPC.
//!
//! ```text
//! transport: subject::Ids ── traceparent, tracestate (HTTP: copied only when the log or tracing
//!                  │          is on; gRPC: the call's metadata, looked up here)
//!                  ▼
//! decision::decide ── app.tracing: None ─► the decision, with `Untraced` (empty hooks)
//!                  │              Some ─► Tracing::decision: span `spillway.decision`
//!                  │                       (parent: the caller's span, from `traceparent`)
//!                  ├─ child `spillway.store.check` around the store call
//!                  ├─ child `spillway.failover` when the store failed
//!                  ▼
//!            DecisionTrace::finish: outcome, limits, remaining, degraded ─► span ends
//!                  ▼
//!            export::Bounded ─ queue full (--otlp-queue) ─► dropped, counted
//!                  ▼
//!            the SDK's batch processor (own thread, bounded queue)
//!                  ▼
//!            export::Counted ─ export failed ─► dropped, counted ─► OTLP/gRPC collector
//!                                                                (http:// or https://)
//! ```
//!
//! Over `https://` the collector's certificate is checked by rustls (on `ring`, the crypto
//! backend the tree already builds) against the webpki roots and `--otlp-ca-file`.
//!
//! Spans are made with the `opentelemetry` API directly, not through `tracing` and
//! `tracing-opentelemetry`: the decision path has no `tracing` spans to bridge, a bridge would
//! create a `tracing` span and its extensions for every decision (and consult the subscriber's
//! filters) before reaching the same SDK span, and the parent comes from our own reading of
//! `traceparent` ([`subject::traceparent`], shared with the decision log) rather than from a
//! propagator and an ambient context.
//!
//! **Off costs one branch.** [`crate::decision::decide`] matches on `AppState::tracing` once and
//! runs the decision generic over [`DecisionTrace`]; the untraced instance's hooks are empty and
//! inline to nothing, so no span object, attribute or parent context is made, and the traced
//! future is boxed so its span does not enlarge the untraced one. Nor is a header read for it:
//! HTTP copies the ids only while the log or tracing is on, gRPC lends the call's metadata.

pub mod export;
pub mod settings;

pub use settings::{ParentSampling, TlsSettings, TraceArgs, TraceSettings};

use crate::decision::{Ask, Outcome};
use crate::failure::Fallback;
use crate::telemetry::decision_log::subject::{self, Ids};
use opentelemetry::trace::SpanId;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_otlp::WithTonicConfig as _;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingDecision, SamplingResult, SdkTracer,
    SdkTracerProvider, ShouldSample, Span,
};
use opentelemetry_sdk::Resource;
use spillway_core::engine::LimitOutcome;
use spillway_core::policy::FailureMode;
use spillway_core::request::CheckMode;
use spillway_core::store::StoreError;
use std::str::FromStr;
use std::time::Duration;

// The longest tenant a span names, as a decision record keeps it: a longer one, which only a
// request naming its own tenant can send, is cut at a character boundary.
use crate::telemetry::decision_log::record::FIELD_BYTES;

/// The name the process reports as `service.name`.
pub const SERVICE_NAME: &str = "spillway";
/// How long one export to the collector may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The request path's end of tracing, held in `AppState::tracing` (`None` when off).
pub struct Tracing {
    tracer: SdkTracer,
    store: &'static str,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The exporting end: finished spans wait in the SDK's bounded queue and are sent in batches by
/// its own thread. [`Exporter::finish`] sends what is left at shutdown.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Starts exporting to `settings.endpoint`. `store` names the store kind for the store-call
    /// spans (`memory`, `redis`, `redis_cluster`). Must run inside the main tokio runtime: the
    /// gRPC channel's task lives there (the batch thread only waits on it). The channel
    /// connects lazily, so a collector that is down (or whose certificate is not trusted)
    /// does not stop the server; its batches are dropped and counted ([`export`]).
    pub fn start(
        settings: &TraceSettings,
        store: &'static str,
    ) -> Result<(Self, Exporter), String> {
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.as_str())
            .with_timeout(EXPORT_TIMEOUT);
        if let Some(tls) = &settings.tls {
            builder = builder.with_tls_config(client_tls(tls));
        }
        let exporter = builder.build().map_err(|err| {
            let endpoint = spillway_core::redact::mask_service_url(&settings.endpoint);
            format!("--otlp-endpoint {endpoint}: {err}")
        })?;
        let in_flight = export::InFlight::new(settings.queue);
        let exporter = export::Counted::new(exporter, in_flight.clone(), &settings.endpoint);
        // The OTEL_BSP_* variables still tune the batches; the queue is --otlp-queue.
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(settings.queue)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(config)
            .build();
        let resource = Resource::builder()
            .with_service_name(SERVICE_NAME)
            .with_attribute(KeyValue::new("service.instance.id", settings.node.clone()))
            .build();
        // The caller's sampling decision wins and roots are sampled at --trace-sample; or,
        // for callers not trusted with it, a draw of this process's decides a decision whose
        // parent is the caller's (not its trace id, which the caller chose). A span whose
        // parent is this process's own (a store call's) follows it either way.
        let ratio = Sampler::TraceIdRatioBased(settings.sample);
        let sampler = match settings.parent_sampling {
            ParentSampling::Follow => Sampler::parent_based(ratio),
            ParentSampling::Ignore => {
                let own = OwnDraw(crate::telemetry::decision_log::sampling::Sampler::new(
                    settings.sample,
                ));
                Sampler::parent_based(ratio)
                    .with_remote_parent_sampled(own)
                    .with_remote_parent_not_sampled(own)
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(export::Bounded::new(processor, in_flight))
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(SERVICE_NAME);
        Ok((Self { tracer, store }, Exporter { provider }))
    }

    /// Opens the span of one decision, a child of the caller's span when the request carried
    /// a valid `traceparent`, else a root.
    pub fn decision(&self, ask: &Ask<'_>) -> DecisionSpan<'_> {
        let parent = parent_context(ask.subject.ids);
        let span = self
            .tracer
            .span_builder("spillway.decision")
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        DecisionSpan {
            tracing: self,
            span,
            child: None,
        }
    }
}

impl Exporter {
    /// Exports the spans still queued and stops the batch thread, waiting at most `timeout`.
    pub async fn finish(self, timeout: Duration) {
        let provider = self.provider;
        // Shutting down blocks on the batch thread, which in turn waits on the runtime.
        let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout));
        match done.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "could not export the last spans"),
            Err(err) => tracing::warn!(error = %err, "the span exporter's shutdown failed"),
        }
    }
}

/// TLS for an `https://` collector: the webpki roots, and the private CA if one was given.
fn client_tls(tls: &TlsSettings) -> tonic::transport::ClientTlsConfig {
    let config = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
    match &tls.ca_pem {
        Some(pem) => config.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        None => config,
    }
}

/// The caller's span, from `traceparent` (and `tracestate`), as the remote parent of the
/// decision's span; an empty context when there is none or it is malformed.
fn parent_context(ids: Ids<'_>) -> Context {
    let Some(parent) = ids.traceparent().and_then(subject::traceparent) else {
        return Context::new();
    };
    // `traceparent` has already checked the digits; these cannot fail on its output.
    let (Ok(trace_id), Ok(span_id), Ok(flags)) = (
        TraceId::from_hex(parent.trace_id),
        SpanId::from_hex(parent.parent_id),
        u8::from_str_radix(parent.flags, 16),
    ) else {
        return Context::new();
    };
    let state = ids
        .tracestate()
        .and_then(|value| value.to_str().ok())
        .and_then(|text| TraceState::from_str(text).ok())
        .unwrap_or_default();
    let flags = TraceFlags::new(flags) & TraceFlags::SAMPLED;
    Context::new().with_remote_span_context(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// Samples by a draw of this process's own at a fixed share (`--trace-parent-sampling
/// ignore`, for a span whose parent is a caller's), whatever the trace id and the caller's
/// flag say.
#[derive(Debug, Clone, Copy)]
struct OwnDraw(crate::telemetry::decision_log::sampling::Sampler);

impl ShouldSample for OwnDraw {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        _trace_id: TraceId,
        _name: &str,
        _kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        SamplingResult {
            decision: match self.0.keep() {
                true => SamplingDecision::RecordAndSample,
                false => SamplingDecision::Drop,
            },
            attributes: Vec::new(),
            trace_state: parent.map_or_else(TraceState::default, |p| {
                p.span().span_context().trace_state().clone()
            }),
        }
    }
}

/// What a decision reports to its trace, at the points [`crate::decision::decide`] passes.
/// Two implementations: [`Untraced`] (tracing off: every hook is empty) and [`DecisionSpan`].
pub trait DecisionTrace {
    /// The store is about to be asked about `checks` limits.
    fn store_call(&mut self, checks: usize);
    /// The store answered (or failed).
    fn store_answered(&mut self, result: &Result<(bool, Vec<LimitOutcome>), StoreError>);
    /// The store failed; the failure mode `mode` is about to decide.
    fn failover(&mut self, mode: FailureMode);
    /// The failure mode decided.
    fn failover_answered(&mut self, fallback: &Fallback);
    /// The decision is over: its outcome goes on the span, which ends.
    fn finish(self, ask: &Ask<'_>, outcome: &Outcome);
}

/// Tracing is off: nothing is recorded.
#[derive(Debug, Clone, Copy)]
pub struct Untraced;

impl DecisionTrace for Untraced {
    #[inline(always)]
    fn store_call(&mut self, _: usize) {}
    #[inline(always)]
    fn store_answered(&mut self, _: &Result<(bool, Vec<LimitOutcome>), StoreError>) {}
    #[inline(always)]
    fn failover(&mut self, _: FailureMode) {}
    #[inline(always)]
    fn failover_answered(&mut self, _: &Fallback) {}
    #[inline(always)]
    fn finish(self, _: &Ask<'_>, _: &Outcome) {}
}

/// The span of one decision, and the child span in progress (store call or failover).
pub struct DecisionSpan<'a> {
    tracing: &'a Tracing,
    span: Span,
    child: Option<Span>,
}

impl DecisionSpan<'_> {
    /// Opens a child span, unless the decision's span is not sampled (then neither is the
    /// child, and nothing is made).
    fn open_child(&mut self, name: &'static str, kind: SpanKind, attributes: Vec<KeyValue>) {
        if !self.span.is_recording() {
            return;
        }
        // The decision's own span context as the parent: local, not remote, since it is ours.
        let parent = Context::new().with_remote_span_context(self.span.span_context().clone());
        let tracer = &self.tracing.tracer;
        let child = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        self.child = Some(child);
    }
}

impl DecisionTrace for DecisionSpan<'_> {
    fn store_call(&mut self, checks: usize) {
        let attributes = vec![
            KeyValue::new("spillway.store", self.tracing.store),
            KeyValue::new("spillway.store.checks", count(checks)),
        ];
        self.open_child("spillway.store.check", SpanKind::Client, attributes);
    }

    fn store_answered(&mut self, result: &Result<(bool, Vec<LimitOutcome>), StoreError>) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        match result {
            Ok((allowed, _)) => child.set_attribute(KeyValue::new("spillway.allowed", *allowed)),
            Err(error) => {
                let kind = match error {
                    StoreError::Timeout(_) => "timeout",
                    StoreError::Unavailable(_) => "unavailable",
                    StoreError::Protocol(_) => "protocol",
                    StoreError::Overloaded(_) => "overloaded",
                };
                child.set_attribute(KeyValue::new("error.type", kind));
                child.set_status(Status::error(error.to_string()));
            }
        }
        child.end();
    }

    fn failover(&mut self, mode: FailureMode) {
        let attributes = vec![KeyValue::new("spillway.failure_mode", mode_name(mode))];
        self.open_child("spillway.failover", SpanKind::Internal, attributes);
    }

    fn failover_answered(&mut self, fallback: &Fallback) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let answer = match fallback {
            Fallback::Open => "open",
            Fallback::Closed { .. } => "refused",
            Fallback::Degraded { allowed: true, .. } => "allowed",
            Fallback::Degraded { allowed: false, .. } => "denied",
        };
        child.set_attribute(KeyValue::new("spillway.outcome", answer));
        child.end();
    }

    fn finish(mut self, ask: &Ask<'_>, outcome: &Outcome) {
        if self.span.is_recording() {
            self.span.set_attributes(attributes(ask, outcome));
            if let Outcome::Refused(refused) = outcome {
                self.span
                    .set_status(Status::error(refused.error.to_string()));
            }
        }
        self.span.end();
    }
}

/// The decision span's attributes: what was asked, and how it ended.
fn attributes(ask: &Ask<'_>, outcome: &Outcome) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(12);
    let names: Vec<StringValue> = ask
        .planned
        .iter()
        .map(|planned| StringValue::from(planned.def.name.to_arc()))
        .collect();
    attributes.push(KeyValue::new(
        "spillway.limits",
        Value::Array(Array::String(names)),
    ));
    attributes.push(KeyValue::new("spillway.tier", ask.tier.clone()));
    if let Some(route) = &ask.route {
        attributes.push(KeyValue::new("spillway.route", route.clone()));
    }
    if let Some(tenant) = ask.who.tenant {
        // The client's own text: cut, so a queued span holds no megabytes.
        let tenant = crate::telemetry::cut_to(tenant, FIELD_BYTES);
        attributes.push(KeyValue::new("spillway.tenant", tenant.to_owned()));
    }
    attributes.push(KeyValue::new("spillway.cost", count(ask.cost)));
    let mode = match ask.mode {
        CheckMode::Consume => "consume",
        CheckMode::Peek => "peek",
    };
    attributes.push(KeyValue::new("spillway.mode", mode));
    match outcome {
        Outcome::Refused(_) => {
            attributes.push(KeyValue::new("spillway.outcome", "refused"));
            attributes.push(KeyValue::new("spillway.degraded", false));
            attributes.push(KeyValue::new("spillway.failure_mode", "closed"));
        }
        Outcome::Decided(decided) => {
            let verdict = &decided.verdict;
            let word = if !verdict.allowed {
                "denied"
            } else if verdict
                .outcomes
                .iter()
                .any(|o| o.shadow && !o.decision.allowed)
            {
                "shadow_denied"
            } else {
                "allowed"
            };
            attributes.push(KeyValue::new("spillway.outcome", word));
            attributes.push(KeyValue::new(
                "spillway.degraded",
                decided.degraded.is_some(),
            ));
            if let Some(mode) = decided.degraded {
                attributes.push(KeyValue::new("spillway.failure_mode", mode_name(mode)));
            }
            if let Some(governing) = verdict.governing() {
                attributes.push(KeyValue::new("spillway.limit", governing.name.to_arc()));
                let decision = &governing.decision;
                attributes.push(KeyValue::new(
                    "spillway.remaining",
                    count(decision.remaining),
                ));
                if let Some(retry) = decision.retry_after {
                    attributes.push(KeyValue::new(
                        "spillway.retry_after_ms",
                        count(retry.div_ceil(1000)),
                    ));
                }
            }
        }
    }
    attributes
}

/// A count as an OpenTelemetry integer (which is signed).
fn count(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn mode_name(mode: FailureMode) -> &'static str {
    match mode {
        FailureMode::Open => "open",
        FailureMode::Closed => "closed",
        FailureMode::Degrade => "degrade",
    }
}

#[cfg(test)]
mod tests;
