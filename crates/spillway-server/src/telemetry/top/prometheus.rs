//! `spillway_top_blocked{tenant}`: the ten most denied tenants of the last minute, in
//! Prometheus text.
//!
//! These lines are rendered here and appended to `/metrics`, not registered as gauges with
//! the metrics recorder: `metrics-exporter-prometheus` cannot delete one series, only let
//! every series of a kind idle out (`idle_timeout`), which would also drop the server's
//! other gauges, and the server keeps metric handles that assume nothing is ever dropped.
//! Rendering the list as it stands at each refresh means a tenant that leaves the top ten
//! leaves the exposition at once: never more than [`TOP`] series, whatever the clients send.

use std::fmt::Write;
use std::sync::Arc;

/// The metric's name.
pub const NAME: &str = "spillway_top_blocked";
/// How many tenants it shows at most.
pub const TOP: usize = 10;
/// The longest tenant label, in bytes (cut at a character boundary).
pub const MAX_TENANT: usize = 64;

/// How many of the most denied tenants [`render`] is given, so that [`TOP`] series remain
/// when some share a label.
pub const ASKED: usize = 4 * TOP;

/// The metric's lines for `tenants` (heaviest first), with `HELP` and `TYPE`. Tenants whose
/// labels are cut to the same text (sharing their first [`MAX_TENANT`] bytes) are one series,
/// their denials added: a scrape never holds the same series twice. The [`TOP`] heaviest
/// series are written, heaviest first.
pub fn render(tenants: &[(Arc<str>, u64)]) -> String {
    let mut out = format!(
        "# HELP {NAME} Requests denied in the last minute, for the {TOP} most denied tenants on this node.\n\
         # TYPE {NAME} gauge\n"
    );
    let mut series: Vec<(String, u64)> = Vec::with_capacity(TOP);
    for (tenant, denied) in tenants {
        let label = escape(tenant);
        match series.iter_mut().find(|(seen, _)| *seen == label) {
            Some((_, sum)) => *sum = sum.saturating_add(*denied),
            None => series.push((label, *denied)),
        }
    }
    series.sort_by_key(|s| std::cmp::Reverse(s.1));
    for (label, denied) in series.into_iter().take(TOP) {
        let _ = writeln!(out, "{NAME}{{tenant=\"{label}\"}} {denied}");
    }
    out
}

/// A label value as the text format wants it: cut to [`MAX_TENANT`] bytes, with `\`, `"` and
/// line feeds escaped.
pub fn escape(value: &str) -> String {
    escape_whole(crate::telemetry::cut_to(value, MAX_TENANT))
}

/// `value` escaped as a Prometheus label value, not cut: for names the process chose (a
/// store's master address), never a client's.
pub fn escape_whole(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_cut() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        let long = "é".repeat(100);
        assert_eq!(escape(&long).len(), 64);
    }

    #[test]
    fn at_most_ten_series() {
        let tenants: Vec<(Arc<str>, u64)> = (0..15)
            .map(|i| (Arc::from(format!("t{i}")), 100 - i))
            .collect();
        let text = render(&tenants);
        assert_eq!(text.lines().filter(|l| l.starts_with(NAME)).count(), TOP);
        assert!(text.contains("spillway_top_blocked{tenant=\"t0\"} 100\n"));
        assert!(!text.contains("t10"));
    }

    #[test]
    fn tenants_cut_to_one_label_are_one_series() {
        let head = "a".repeat(MAX_TENANT);
        let tenants: Vec<(Arc<str>, u64)> = vec![
            (Arc::from(format!("{head}-one")), 7),
            (Arc::from("b"), 5),
            (Arc::from(format!("{head}-two")), 3),
        ];
        let text = render(&tenants);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(NAME)).collect();
        assert_eq!(
            lines,
            [
                format!("{NAME}{{tenant=\"{head}\"}} 10"),
                format!("{NAME}{{tenant=\"b\"}} 5"),
            ]
        );
        // Ten series remain when two of the ten heaviest share a label.
        let mut many = tenants.clone();
        many.extend((0..12).map(|i| (Arc::from(format!("t{i}")), 2)));
        let text = render(&many);
        assert_eq!(text.lines().filter(|l| l.starts_with(NAME)).count(), TOP);
    }
}
