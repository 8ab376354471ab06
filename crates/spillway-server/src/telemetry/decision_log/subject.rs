//! Who a decision was about, as the transports know it: borrowed, and copied into a record
//! only when one is kept.
//!
//! The HTTP API knows the request's attributes ([`RequestAttrs`]); the Envoy service knows the
//! call's descriptors. Either may carry an `x-request-id` and a W3C `traceparent` header
//! (HTTP headers, gRPC metadata), reached through [`Ids`]: the HTTP handlers copy them into
//! [`RequestIds`] only while the log or tracing is on; the gRPC service lends the call's
//! metadata itself, so a header is looked up only when a record is kept or a span is made.

use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use spillway_core::request::RequestAttrs;
use std::convert::Infallible;
use std::sync::Arc;

/// The header a request's id is read from.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The W3C trace-context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C trace-context header carrying vendors' state along the trace.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// What the decision was about; the default knows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// The HTTP API's request attributes.
    pub attrs: Option<&'a RequestAttrs>,
    /// The Envoy service's descriptors (empty over HTTP).
    pub descriptors: &'a [RateLimitDescriptor],
    /// The request's id and trace headers.
    pub ids: Ids<'a>,
}

impl<'a> Subject<'a> {
    /// A request of the HTTP API.
    pub fn http(attrs: &'a RequestAttrs, ids: &'a RequestIds) -> Self {
        Self {
            attrs: Some(attrs),
            descriptors: &[],
            ids: Ids::Read(ids),
        }
    }

    /// A `ShouldRateLimit` call.
    pub fn envoy(descriptors: &'a [RateLimitDescriptor], ids: Ids<'a>) -> Self {
        Self {
            attrs: None,
            descriptors,
            ids,
        }
    }
}

/// The longest `traceparent` a record keeps (version `00`'s is 55 bytes; a later version may
/// add fields after it). A longer one is left out.
pub const MAX_TRACEPARENT: usize = 128;

/// Where a request's id and trace headers are: nowhere, copied out ([`RequestIds`], by the
/// HTTP handlers), or still in the request's headers (the gRPC call's metadata, borrowed for
/// the call). Reading costs nothing until a header is asked for.
#[derive(Debug, Clone, Copy, Default)]
pub enum Ids<'a> {
    /// None known.
    #[default]
    None,
    /// Copied out of the headers.
    Read(&'a RequestIds),
    /// The headers themselves, looked up on demand.
    Headers(&'a HeaderMap),
}

impl<'a> Ids<'a> {
    /// `x-request-id`, when present.
    pub fn request_id(self) -> Option<&'a HeaderValue> {
        match self {
            Self::None => None,
            Self::Read(ids) => ids.request_id.as_ref(),
            Self::Headers(headers) => headers.get(REQUEST_ID),
        }
    }

    /// `traceparent`, when present.
    pub fn traceparent(self) -> Option<&'a HeaderValue> {
        match self {
            Self::None => None,
            Self::Read(ids) => ids.traceparent.as_ref(),
            Self::Headers(headers) => headers.get(TRACEPARENT),
        }
    }

    /// `tracestate`, when present (copied out only while tracing is on).
    pub fn tracestate(self) -> Option<&'a HeaderValue> {
        match self {
            Self::None => None,
            Self::Read(ids) => ids.tracestate.as_ref(),
            Self::Headers(headers) => headers.get(TRACESTATE),
        }
    }

    /// What the decision log keeps of them: the request id's first
    /// [`FIELD_BYTES`](super::record::FIELD_BYTES) and a `traceparent` of a plausible length
    /// ([`MAX_TRACEPARENT`]), each copied out: a clone would share the buffer the whole
    /// request head was read into, and hold it while the record waits in the queue.
    pub fn for_record(self) -> RequestIds {
        let own = |v: &HeaderValue, max: usize| {
            let bytes = v.as_bytes();
            HeaderValue::from_bytes(&bytes[..bytes.len().min(max)]).ok()
        };
        RequestIds {
            request_id: (self.request_id()).and_then(|v| own(v, super::record::FIELD_BYTES)),
            traceparent: (self.traceparent())
                .filter(|v| v.len() <= MAX_TRACEPARENT)
                .and_then(|v| own(v, MAX_TRACEPARENT)),
            tracestate: None,
        }
    }
}

/// The `x-request-id`, `traceparent` and `tracestate` header values, as sent (cheap to clone;
/// parsed only by the log's writer, or by the trace span when tracing is on).
#[derive(Debug, Clone, Default)]
pub struct RequestIds {
    /// `x-request-id`, when present.
    pub request_id: Option<HeaderValue>,
    /// `traceparent`, when present.
    pub traceparent: Option<HeaderValue>,
    /// `tracestate`, when present and tracing is on (the log does not use it).
    pub tracestate: Option<HeaderValue>,
}

impl RequestIds {
    /// Reads the headers, if the log or tracing is on (otherwise nothing, at the cost of one
    /// branch); `tracestate` only when tracing is on.
    pub fn read(app: &AppState, headers: &HeaderMap) -> Self {
        if app.decision_log.is_none() && app.tracing.is_none() {
            return Self::default();
        }
        Self {
            request_id: headers.get(REQUEST_ID).cloned(),
            traceparent: headers.get(TRACEPARENT).cloned(),
            tracestate: match app.tracing {
                Some(_) => headers.get(TRACESTATE).cloned(),
                None => None,
            },
        }
    }

    /// Reads all three headers.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self {
            request_id: headers.get(REQUEST_ID).cloned(),
            traceparent: headers.get(TRACEPARENT).cloned(),
            tracestate: headers.get(TRACESTATE).cloned(),
        }
    }
}

/// As an extractor, for handlers that do not otherwise take the headers (`/v1/check`).
impl FromRequestParts<Arc<AppState>> for RequestIds {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::read(state, &parts.headers))
    }
}

/// The fields of a W3C `traceparent` (`<version>-<32 hex trace id>-<16 hex parent id>-<flags>`),
/// borrowed from the header. The decision log takes the trace id; [`crate::telemetry::trace`]
/// takes all three to parent the decision's span on the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent<'a> {
    /// The trace id: 32 lower-case hex digits, not all zeros.
    pub trace_id: &'a str,
    /// The caller's span id: 16 lower-case hex digits, not all zeros.
    pub parent_id: &'a str,
    /// The trace flags: 2 hex digits (bit 0: sampled).
    pub flags: &'a str,
}

/// Reads a `traceparent` header, when it is well formed and neither id is all zeros (the
/// specification's invalid values).
pub fn traceparent(header: &HeaderValue) -> Option<TraceParent<'_>> {
    let text = header.to_str().ok()?.trim();
    let mut parts = text.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && nonzero(trace)
        && nonzero(parent)
        && (version != "00" || parts.next().is_none());
    valid.then_some(TraceParent {
        trace_id: trace,
        parent_id: parent,
        flags,
    })
}

/// The trace id of a well-formed `traceparent` ([`traceparent`]).
pub fn trace_id(header: &HeaderValue) -> Option<&str> {
    traceparent(header).map(|parent| parent.trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_well_formed_traceparents_only() {
        let header = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            trace_id(&header(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            )),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "nonsense",
        ] {
            assert_eq!(trace_id(&header(bad)), None, "{bad}");
        }
    }

    #[test]
    fn a_traceparent_names_the_callers_span_and_flags() {
        let header =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            traceparent(&header),
            Some(TraceParent {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                parent_id: "00f067aa0ba902b7",
                flags: "01",
            })
        );
    }
}
