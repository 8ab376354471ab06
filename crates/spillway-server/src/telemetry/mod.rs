//! What the limiter tells operators about its decisions, beyond the counters in
//! [`crate::metrics`]: the decision log (why was this tenant limited at 10:32?), and, as they
//! arrive, the hot-key and top-blocked sketches and trace spans.
//!
//! Everything here hangs off [`crate::decision`]'s one observation point and must cost the
//! request path next to nothing: a single branch when it is off, and no I/O, formatting or
//! waiting on it when it is on.

pub mod decision_log;
