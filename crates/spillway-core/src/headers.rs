//! Rendering a [`Verdict`] as HTTP response fields.
//!
//! - `X-RateLimit-Limit`, `X-RateLimit-Remaining`: the governing limit's numbers.
//! - `X-RateLimit-Reset`: **delta seconds** until the governing limit is fully reset, rounded
//!   up. Implementations are split between delta seconds and a Unix timestamp; we send delta
//!   seconds because it needs no agreement between client and server clocks, and it is what the
//!   IETF fields below (and `Retry-After`) use, so every number we send means the same thing.
//! - `Retry-After` on a denial: delay-seconds, rounded up, at least 1. Absent when the cost
//!   can never fit, since no wait would help.
//! - `RateLimit-Policy` and `RateLimit` as in draft-ietf-httpapi-ratelimit-headers (-09/-10):
//!   structured-field lists with one item per enforced limit (one per name: see `listed`),
//!   named by a String item, e.g.
//!   `"free-user";q=100;w=60` and `"free-user";r=42;t=18`. Shadow-mode limits are left out:
//!   they do not constrain the client. A name's String form (quoted, escaped) is made when
//!   the policy is compiled (`crate::policy::LimitName`), not on every answer.

use crate::algorithm::Decision;
use crate::engine::{LimitOutcome, Verdict};
use crate::time::ceil_secs;

/// `X-RateLimit-Limit`.
pub const X_LIMIT: &str = "x-ratelimit-limit";
/// `X-RateLimit-Remaining`.
pub const X_REMAINING: &str = "x-ratelimit-remaining";
/// `X-RateLimit-Reset` (delta seconds).
pub const X_RESET: &str = "x-ratelimit-reset";
/// `Retry-After` (delay-seconds).
pub const RETRY_AFTER: &str = "retry-after";
/// The IETF `RateLimit-Policy` field.
pub const POLICY: &str = "ratelimit-policy";
/// The IETF `RateLimit` field.
pub const RATELIMIT: &str = "ratelimit";

/// Every field a verdict can render to, in the order they are sent. [`Fields`] has room for
/// each entry and a field is opened only through its slot here (`Fields::open::<SLOT>`,
/// checked when compiled), so a new field must be listed, which makes room for it: rendering
/// can never run out of room at run time.
pub const ORDER: [&str; 6] = [
    X_LIMIT,
    X_REMAINING,
    X_RESET,
    RETRY_AFTER,
    POLICY,
    RATELIMIT,
];

/// The most fields one verdict renders to.
pub const MAX_FIELDS: usize = ORDER.len();

/// Slots in [`ORDER`], for `Fields::open` (a transport names each field by its slot through
/// [`Fields::into_parts`], indexing its own table of names in this order).
const SLOT_LIMIT: usize = 0;
const SLOT_REMAINING: usize = 1;
const SLOT_RESET: usize = 2;
const SLOT_RETRY_AFTER: usize = 3;
/// `RateLimit-Policy`'s slot: a transport that keeps that value prepared
/// ([`fields_but_policy`]) puts it back here.
pub const SLOT_POLICY: usize = 4;
const SLOT_RATELIMIT: usize = 5;

/// A verdict's response fields, every value written into one string: what an HTTP answer
/// needs without an allocation per value. [`Fields::into_parts`] hands the string over with
/// each value's range, so a transport can share it between headers without copies.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    text: String,
    /// Each slot of [`ORDER`]'s value range in `text`, for the slots whose bit is set in
    /// `present`: a field has its own place, so no order of opening can put it anywhere else.
    /// (A bit set rather than an `Option` per slot: counting and skipping the absent ones is
    /// then one word's work, on every answer.)
    spans: [(usize, usize); MAX_FIELDS],
    /// Bit `i` is set when the field in slot `i` is rendered.
    present: u8,
    /// The slot whose value is being written.
    writing: Option<usize>,
}

const _: () = assert!(
    MAX_FIELDS <= u8::BITS as usize,
    "Fields::present has a bit per slot"
);

impl Fields {
    /// Whether the field in `slot` is rendered.
    fn has(present: u8, slot: usize) -> bool {
        present & (1 << slot) != 0
    }

    /// Each field's name and value, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        (ORDER.iter().zip(&self.spans).enumerate())
            .filter(|&(slot, _)| Self::has(self.present, slot))
            .map(|(_, (&name, &(start, end)))| (name, &self.text[start..end]))
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.present.count_ones() as usize
    }

    /// Whether there are none (no enforced limit applied).
    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// Which fields are rendered: bit `i` is set when the field in slot `i` of [`ORDER`] is.
    pub fn present(&self) -> u8 {
        self.present
    }

    /// The string holding every value, and each field's slot in [`ORDER`] (`SLOT_*`) with the
    /// byte range of its value, in order.
    pub fn into_parts(
        self,
    ) -> (
        String,
        impl Iterator<Item = (usize, std::ops::Range<usize>)>,
    ) {
        let present = self.present;
        let spans = (self.spans.into_iter().enumerate())
            .filter(move |&(slot, _)| Self::has(present, slot))
            .map(|(slot, (start, end))| (slot, start..end));
        (self.text, spans)
    }

    /// Starts the field in slot `SLOT` of [`ORDER`], whose value is what is written to `text`
    /// until the next call or [`Fields::done`]. A slot past the list does not compile, and the
    /// field goes to its own slot whatever was opened before. A slot opened twice keeps only
    /// its second value (each slot is opened once, in [`fields`]).
    fn open<const SLOT: usize>(&mut self) {
        const { assert!(SLOT < MAX_FIELDS, "a field must have its slot in ORDER") };
        self.close();
        let at = self.text.len();
        self.spans[SLOT] = (at, at);
        self.present |= 1 << SLOT;
        self.writing = Some(SLOT);
    }

    fn close(&mut self) {
        if let Some(slot) = self.writing.take() {
            self.spans[slot].1 = self.text.len();
        }
    }

    fn done(mut self) -> Self {
        self.close();
        self
    }
}

/// The response fields for `verdict` (see [`Fields`]); none when no enforced limit applied
/// to the request.
///
/// This runs once per decision, so it writes digits and the names' prepared forms straight
/// into one buffer with no intermediate strings.
pub fn fields(verdict: &Verdict) -> Fields {
    render_fields(verdict, true)
}

/// [`fields`] without `RateLimit-Policy` (its slot, [`SLOT_POLICY`], left out), for a
/// transport that keeps that value prepared: it is the same on every answer that applies the
/// same limits with the same numbers ([`policy_value`] renders it). The field belongs in the
/// answer exactly when any field does (`!is_empty()`).
pub fn fields_but_policy(verdict: &Verdict) -> Fields {
    render_fields(verdict, false)
}

/// `RateLimit-Policy`'s value for `verdict`, as [`fields`] renders it: a function of its
/// enforced limits' names, quotas and windows alone, in order.
pub fn policy_value(verdict: &Verdict) -> String {
    let mut out = String::new();
    push_policy(&mut out, verdict, names_repeat(verdict));
    out
}

fn render_fields(verdict: &Verdict, with_policy: bool) -> Fields {
    let mut out = Fields::default();
    let Some(gov) = verdict.governing() else {
        return out;
    };
    let d = &gov.decision;
    let room: usize = (verdict.outcomes.iter())
        .filter(|o| !o.shadow)
        .map(|o| 2 * o.name.len() + 64)
        .sum();
    out.text.reserve(64 + room);
    out.open::<SLOT_LIMIT>();
    push_number(&mut out.text, d.limit);
    out.open::<SLOT_REMAINING>();
    push_number(&mut out.text, d.remaining);
    out.open::<SLOT_RESET>();
    push_number(&mut out.text, ceil_secs(d.reset_after));
    if !verdict.allowed {
        if let Some(retry) = d.retry_after {
            out.open::<SLOT_RETRY_AFTER>();
            push_number(&mut out.text, ceil_secs(retry).max(1));
        }
    }
    let repeats = names_repeat(verdict);
    if with_policy {
        out.open::<SLOT_POLICY>();
        push_policy(&mut out.text, verdict, repeats);
    }
    out.open::<SLOT_RATELIMIT>();
    for (i, (o, d)) in listed(verdict, repeats).enumerate() {
        if i > 0 {
            out.text.push_str(", ");
        }
        out.text.push_str(o.name.sf());
        push_param(&mut out.text, ";r=", d.remaining);
        push_param(&mut out.text, ";t=", ceil_secs(d.reset_after));
    }
    out.done()
}

/// Appends `RateLimit-Policy`'s value: each enforced limit's name, quota and window.
fn push_policy(out: &mut String, verdict: &Verdict, repeats: bool) {
    for (i, (o, _)) in listed(verdict, repeats).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(o.name.sf());
        push_param(out, ";q=", o.quota);
        push_param(out, ";w=", ceil_secs(o.window).max(1));
    }
}

/// Whether two enforced outcomes share a name: a request read several ways can charge one
/// limit under two counters (a `route`-keyed limit under each route it matched), and an
/// Envoy call one limit under two descriptors. Both copies come from one compiled limit, so
/// they share its compiled name: each pair is compared by pointer only, since this runs on
/// every answer.
fn names_repeat(verdict: &Verdict) -> bool {
    let enforced = || verdict.outcomes.iter().filter(|o| !o.shadow);
    (enforced().enumerate()).any(|(i, o)| {
        enforced()
            .skip(i + 1)
            .any(|other| other.name.same_compilation(&o.name))
    })
}

/// The outcomes the IETF fields list, each with the decision its `RateLimit` item tells:
/// enforced ones, one per name (a client pairs `RateLimit` with `RateLimit-Policy` by name),
/// at the name's first place and with its copy's least remaining (the first on a tie). So
/// both fields depend on the enforced names' order alone, as the prepared `RateLimit-Policy`
/// values assume (`policy_value`). `repeats` is [`names_repeat`]: without repeats each
/// outcome stands for itself.
fn listed(
    verdict: &Verdict,
    repeats: bool,
) -> impl Iterator<Item = (&LimitOutcome, &Decision)> + Clone {
    let outcomes = &verdict.outcomes;
    (outcomes.iter().enumerate())
        .filter(|(_, o)| !o.shadow)
        .filter_map(move |(i, o)| {
            if !repeats {
                return Some((o, &o.decision));
            }
            if outcomes[..i].iter().any(|c| !c.shadow && c.name == o.name) {
                return None;
            }
            let tightest = (outcomes.iter())
                .filter(|c| !c.shadow && c.name == o.name)
                .min_by_key(|c| c.decision.remaining)
                .unwrap_or(o);
            Some((o, &tightest.decision))
        })
}

/// Appends a decimal integer.
fn push_number(out: &mut String, value: u64) {
    out.push_str(itoa::Buffer::new().format(value));
}

/// Appends `;k=` and a decimal integer.
fn push_param(out: &mut String, key: &str, value: u64) {
    out.push_str(key);
    push_number(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{Decision, Denial};
    use crate::engine::LimitOutcome;
    use crate::policy::FailureMode;
    use crate::time::SECOND;

    fn outcome(
        name: &str,
        allowed: bool,
        remaining: u64,
        reset: u64,
        retry: Option<u64>,
    ) -> LimitOutcome {
        LimitOutcome {
            name: name.into(),
            decision: Decision {
                allowed,
                limit: 100,
                remaining,
                reset_after: reset,
                retry_after: retry,
                denial: (!allowed).then_some(Denial::OverLimit),
            },
            shadow: false,
            quota: 100,
            window: 60 * SECOND,
        }
    }

    fn verdict(allowed: bool, outcomes: Vec<LimitOutcome>) -> Verdict {
        Verdict {
            allowed,
            tier: "free".into(),
            route: None,
            failure_mode: FailureMode::Open,
            cost: 1,
            outcomes,
        }
    }

    /// The fields as owned pairs, for the assertions below.
    fn render(v: &Verdict) -> Vec<(&'static str, String)> {
        fields(v).iter().map(|(n, v)| (n, v.to_owned())).collect()
    }

    fn get<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn allowed_request_reports_the_least_remaining() {
        let v = verdict(
            true,
            vec![
                outcome("a", true, 42, 18 * SECOND, None),
                outcome("b\"x", true, 7, 1, None),
            ],
        );
        let h = render(&v);
        assert_eq!(get(&h, X_REMAINING), Some("7"));
        assert_eq!(get(&h, X_RESET), Some("1"));
        assert_eq!(get(&h, RETRY_AFTER), None);
        assert_eq!(
            get(&h, POLICY),
            Some(r#""a";q=100;w=60, "b\"x";q=100;w=60"#)
        );
        assert_eq!(get(&h, RATELIMIT), Some(r#""a";r=42;t=18, "b\"x";r=7;t=1"#));
    }

    #[test]
    fn denial_reports_the_longest_wait_rounded_up_and_at_least_one() {
        let v = verdict(
            false,
            vec![
                outcome("short", false, 0, 5, Some(1)),
                outcome("long", false, 0, 30 * SECOND, Some(2 * SECOND + 1)),
            ],
        );
        assert_eq!(get(&render(&v), RETRY_AFTER), Some("3"));
        let v = verdict(false, vec![outcome("tiny", false, 0, 5, Some(5))]);
        assert_eq!(get(&render(&v), RETRY_AFTER), Some("1"));
    }

    #[test]
    fn a_cost_that_can_never_fit_gets_no_retry_after() {
        let mut hopeless = outcome("small", false, 0, 5, None);
        hopeless.decision.denial = Some(Denial::CostExceedsLimit);
        let v = verdict(
            false,
            vec![
                outcome("waiting", false, 0, 30 * SECOND, Some(30 * SECOND)),
                hopeless,
            ],
        );
        assert_eq!(v.governing().map(|o| &*o.name), Some("small"));
        assert_eq!(get(&render(&v), RETRY_AFTER), None);
    }

    #[test]
    fn shadow_limits_stay_out_of_the_headers() {
        let mut s = outcome("shadow", false, 0, 5, Some(5));
        s.shadow = true;
        let v = verdict(true, vec![s, outcome("real", true, 3, SECOND, None)]);
        let h = render(&v);
        assert_eq!(get(&h, POLICY), Some(r#""real";q=100;w=60"#));
        assert_eq!(get(&h, X_REMAINING), Some("3"));
    }

    #[test]
    fn a_limit_charged_under_two_counters_is_listed_once_by_its_tighter() {
        // Two counters of one compiled limit share its name.
        let copy = |remaining, reset, of: &LimitOutcome| {
            let mut o = outcome("per-route", true, remaining, reset, None);
            o.name = of.name.clone();
            o
        };
        let first = outcome("per-route", true, 9, SECOND, None);
        let second = copy(4, 2 * SECOND, &first);
        let v = verdict(
            true,
            vec![first, outcome("other", true, 5, SECOND, None), second],
        );
        let h = render(&v);
        assert_eq!(
            get(&h, POLICY),
            Some(r#""per-route";q=100;w=60, "other";q=100;w=60"#)
        );
        assert_eq!(
            get(&h, RATELIMIT),
            Some(r#""per-route";r=4;t=2, "other";r=5;t=1"#)
        );
        // The same names in the same order render `RateLimit-Policy` alike, whichever copy is
        // tighter (a transport keeps that value prepared by names alone).
        let first = outcome("per-route", true, 3, SECOND, None);
        let second = copy(8, 2 * SECOND, &first);
        let swapped = verdict(
            true,
            vec![first, outcome("other", true, 5, SECOND, None), second],
        );
        assert_eq!(policy_value(&swapped), policy_value(&v));
        assert_eq!(
            get(&render(&swapped), RATELIMIT),
            Some(r#""per-route";r=3;t=1, "other";r=5;t=1"#)
        );
    }

    #[test]
    fn fields_share_one_string_in_render_order() {
        let mut odd = outcome("caf\u{e9} \\", false, 0, 2 * SECOND, Some(SECOND));
        odd.decision.limit = 7;
        let v = verdict(false, vec![outcome("a", true, 42, 18 * SECOND, None), odd]);
        let fields = fields(&v);
        assert_eq!(fields.len(), 6);
        let pairs: Vec<(&str, &str)> = fields.iter().collect();
        assert_eq!(
            pairs,
            [
                (X_LIMIT, "7"),
                (X_REMAINING, "0"),
                (X_RESET, "2"),
                (RETRY_AFTER, "1"),
                (POLICY, r#""a";q=100;w=60, "caf? \\";q=100;w=60"#),
                (RATELIMIT, r#""a";r=42;t=18, "caf? \\";r=0;t=2"#),
            ]
        );
        let (text, spans) = fields.clone().into_parts();
        let joined: Vec<(&str, &str)> = spans.map(|(n, r)| (ORDER[n], &text[r])).collect();
        assert_eq!(joined, pairs);
        assert!(super::fields(&verdict(true, Vec::new())).is_empty());
    }

    #[test]
    fn the_policy_value_apart_is_the_field_left_out() {
        let mut shadow = outcome("s", false, 0, 5, Some(5));
        shadow.shadow = true;
        let odd = outcome("caf\u{e9} \"", false, 0, 2 * SECOND, Some(SECOND));
        let v = verdict(
            false,
            vec![outcome("a", true, 42, 18 * SECOND, None), shadow, odd],
        );
        let whole = render(&v);
        let apart = fields_but_policy(&v);
        assert_eq!(apart.present(), fields(&v).present() & !(1 << SLOT_POLICY));
        let mut rebuilt: Vec<(&str, String)> =
            apart.iter().map(|(n, v)| (n, v.to_owned())).collect();
        rebuilt.insert(
            rebuilt
                .iter()
                .position(|(n, _)| *n == RATELIMIT)
                .expect("ratelimit"),
            (POLICY, policy_value(&v)),
        );
        assert_eq!(rebuilt, whole);
        assert_eq!(ORDER[SLOT_POLICY], POLICY);
        assert!(fields_but_policy(&verdict(true, Vec::new())).is_empty());
    }

    #[test]
    fn a_field_opened_out_of_order_keeps_its_own_place() {
        let mut f = Fields::default();
        f.open::<SLOT_RATELIMIT>();
        f.text.push('r');
        f.open::<SLOT_LIMIT>();
        f.text.push('7');
        let f = f.done();
        let pairs: Vec<(&str, &str)> = f.iter().collect();
        assert_eq!(pairs, [(X_LIMIT, "7"), (RATELIMIT, "r")]);
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn slots_name_their_fields() {
        let slots = [
            (SLOT_LIMIT, X_LIMIT),
            (SLOT_REMAINING, X_REMAINING),
            (SLOT_RESET, X_RESET),
            (SLOT_RETRY_AFTER, RETRY_AFTER),
            (SLOT_POLICY, POLICY),
            (SLOT_RATELIMIT, RATELIMIT),
        ];
        for (slot, name) in slots {
            assert_eq!(ORDER[slot], name);
        }
        assert_eq!(slots.len(), MAX_FIELDS);
        // Every field a verdict can send, in ORDER's order.
        let mut odd = outcome("x", false, 0, 2 * SECOND, Some(SECOND));
        odd.decision.limit = 7;
        let names: Vec<&str> = fields(&verdict(false, vec![odd]))
            .iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ORDER);
    }
}
