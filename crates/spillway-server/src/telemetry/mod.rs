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

/// `text` with every control character (escape sequences, line breaks, C1 codes), every
/// bidirectional-text control and the Unicode line and paragraph separators written as its
/// escape (`\u{1b}`, `\n`), so that what a caller sent shows as text, in a log line or on a
/// terminal, instead of starting a forged line, moving the cursor, setting the terminal's
/// title or clipboard, or reordering what is shown.
///
/// tracing's text format writes a `%` field as it is and escapes only terminal escapes in a
/// message, so caller text in either goes through this first.
pub fn printable(text: &str) -> String {
    // Left-to-right and right-to-left marks, embeddings, overrides and isolates, and the
    // line and paragraph separators.
    const ESCAPED: [std::ops::RangeInclusive<char>; 4] = [
        '\u{200e}'..='\u{200f}',
        '\u{2028}'..='\u{2029}',
        '\u{202a}'..='\u{202e}',
        '\u{2066}'..='\u{2069}',
    ];
    if !text
        .chars()
        .any(|c| c.is_control() || ESCAPED.iter().any(|r| r.contains(&c)))
    {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() || ESCAPED.iter().any(|r| r.contains(&c)) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

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

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn printable_escapes_what_could_forge_a_line_or_drive_a_terminal() {
        assert_eq!(printable("/v1/check"), "/v1/check");
        assert_eq!(printable("é日本"), "é日本", "other text stays as it is");
        for (raw, shown) in [
            ("a\nb", "a\\nb"),
            ("a\rb", "a\\rb"),
            ("\u{1b}]52;c;eA==\u{7}", "\\u{1b}]52;c;eA==\\u{7}"),
            ("a\u{85}b", "a\\u{85}b"),
            ("a\u{9b}2J", "a\\u{9b}2J"),
            ("a\u{2028}b", "a\\u{2028}b"),
            ("\u{202e}gnp.exe", "\\u{202e}gnp.exe"),
            ("\u{2066}x\u{2069}", "\\u{2066}x\\u{2069}"),
        ] {
            assert_eq!(printable(raw), shown, "{raw:?}");
        }
    }
}
