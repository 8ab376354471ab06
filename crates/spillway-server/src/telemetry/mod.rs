//! What the limiter tells operators about its decisions, beyond the counters in
//! [`crate::metrics`]: the decision log (why was this tenant limited at 10:32?), and which
//! keys are hammered and who is being denied ([`top`]), and OpenTelemetry spans of each
//! decision joined to the caller's trace ([`trace`]).
//!
//! Everything here hangs off [`crate::decision`]'s one observation point and must cost the
//! request path next to nothing: a single branch when it is off, and no I/O, formatting or
//! waiting on it when it is on.

pub mod decision_log;
pub mod top;
pub mod trace;
