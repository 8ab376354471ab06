//! What the limiter tells operators about its decisions, beyond the counters in
//! [`crate::metrics`]: the decision log (why was this tenant limited at 10:32?), and which
//! keys are hammered and who is being denied ([`top`]), OpenTelemetry spans of each
//! decision joined to the caller's trace ([`trace`]), and the dashboard's live figures
//! ([`live`]: decisions per second, shadow limits' would-be denials, recent reloads).
//!
//! Everything here hangs off [`crate::decision`]'s one observation point and must cost the
//! request path next to nothing: a single branch when it is off, and no I/O, formatting or
//! waiting on it when it is on.

pub mod decision_log;
pub mod live;
pub mod top;
pub mod trace;

/// `text` cut to at most `max` bytes, on a character boundary: how a caller's value is kept
/// short in a label, a log line or a kept record.
pub fn cut_to(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
