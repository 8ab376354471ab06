//! A decision's rate-limit fields as an answer's header map, with its `Content-Type` and
//! `Content-Length` in their places.
//!
//! Nearly every answer has one of a few shapes (allowed: five fields and the JSON type; denied:
//! the problem type and six fields), so each serving thread keeps, for each shape it has
//! answered with, a map holding that shape's names in order and placeholder values. An answer
//! clones its shape's map and overwrites the values in order: no name is hashed or compared.
//! With the `RateLimit-Policy` value below, that took the headers from about 4,300
//! instructions per check to 3,050 (`docs/BENCHMARKS.md`, "Fewer instructions per `/v1/check`
//! (issue 16, session 16)").
//!
//! `RateLimit-Policy`'s value depends only on the enforced limits' names, quotas and windows,
//! so it is the same for every request on one plan: each serving thread keeps the last few
//! values it rendered, each with the limits it was rendered from, and an answer whose limits
//! are those (the same compiled names, by identity, with the same numbers) reuses the value,
//! already checked as a header value. A reloaded policy compiles new names, and the emergency
//! quotas change the numbers, so neither can ever be answered with a value rendered for
//! something else: the test compares every input, never a plan's identity.
//!
//! The home region's header, sent on every answer with a tenant when the policy spans regions,
//! has its place in the shape too, as has the degraded mark (sent only while the store is
//! failing). Only an answer whose value would not be a valid header value (none we render) is
//! built name by name.

use crate::decision::Decided;
use crate::failure;
use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use spillway_core::engine::Verdict;
use spillway_core::headers::{self, SLOT_POLICY};
use spillway_core::policy::LimitName;
use spillway_core::time::Micros;
use std::cell::RefCell;

/// An answer's body as its headers describe it: its `Content-Type`, in its place among the
/// headers (the order the serde answers had them in, which the wire tests pin), and its
/// `Content-Length`, last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerBody {
    /// Neither header: the caller's answer has no body (`/v1/authorize`'s allowed one), or
    /// sets its own body headers (`/v1/report`).
    Absent,
    /// `application/problem+json`, before the rate-limit headers, of this many bytes.
    Problem(usize),
    /// `application/json`, after them, of this many bytes.
    Json(usize),
}

impl AnswerBody {
    /// Where the content type goes, and the length.
    fn parts(self) -> (ContentType, Option<usize>) {
        match self {
            Self::Absent => (ContentType::Absent, None),
            Self::Problem(length) => (ContentType::ProblemFirst, Some(length)),
            Self::Json(length) => (ContentType::JsonLast, Some(length)),
        }
    }
}

/// Where an answer's `Content-Type` goes among its headers: part of a prepared map's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentType {
    Absent,
    ProblemFirst,
    JsonLast,
}

/// `application/json`, built at compile time. (A `HeaderValue` holds `Bytes`, whose shared form
/// has interior mutability; a static one has none, and each use is a fresh copy anyway.)
#[allow(clippy::declare_interior_mutable_const)]
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// `application/problem+json`, built at compile time (see [`APPLICATION_JSON`]).
#[allow(clippy::declare_interior_mutable_const)]
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static(crate::http::problem::PROBLEM_JSON);

/// The header names of `spillway_core::headers::ORDER`, slot by slot, built at compile time
/// rather than checked again on every answer; an answer picks each by its slot rather than by
/// comparing names.
static HEADER_NAMES: [HeaderName; headers::MAX_FIELDS] = [
    HeaderName::from_static(headers::ORDER[0]),
    HeaderName::from_static(headers::ORDER[1]),
    HeaderName::from_static(headers::ORDER[2]),
    HeaderName::from_static(headers::ORDER[3]),
    HeaderName::from_static(headers::ORDER[4]),
    HeaderName::from_static(headers::ORDER[5]),
];

/// How many `RateLimit-Policy` values a serving thread keeps (one per plan it answers on; the
/// oldest goes first). Each holds its limits' names, so at most this many plans' names outlive
/// a reload on a thread, until newer answers push them out.
///
/// No size metric, unlike our other in-memory maps (STYLE point 8): these values and the
/// prepared maps have fixed bounds per serving thread (eight values; a map per shape met, at
/// most 768), so there is nothing to watch grow.
const POLICY_VALUES: usize = 8;

/// Answers shorter than this many bytes (nearly all of them: a decision on a few limits is a
/// few hundred) take their `Content-Length` value from the serving thread's table, made once
/// per length; longer ones have theirs made each time. A fixed bound, like the two above.
const KEPT_LENGTHS: usize = 1024;

/// The headers of a decision: its rate-limit fields (core's words in core's order), the
/// degraded mark when the store did not take part, the home region when the policy spans
/// regions, `body`'s content type where it goes, and last its length (where the router and
/// hyper would put it). Every value the verdict renders per answer shares one
/// buffer: one allocation for all of them.
///
/// Writing the `Content-Length` into that buffer too, instead of the allocation
/// `HeaderValue::from(u64)` makes, was measured and cost about 150 instructions more per check
/// (`docs/BENCHMARKS.md`, "Fewer instructions per `/v1/check` (issue 16, session 15)").
pub fn answer_headers(decided: &Decided, body: AnswerBody) -> HeaderMap {
    if let Some(map) = PREPARED.with_borrow_mut(|p| p.answer(decided, body)) {
        return map;
    }
    build(decided, body)
}

/// [`answer_headers`] name by name, for every answer: each header hashed into a new map.
fn build(decided: &Decided, body: AnswerBody) -> HeaderMap {
    let (content_type, length) = body.parts();
    let fields = headers::fields(&decided.verdict);
    let mut map = HeaderMap::with_capacity(fields.len() + 4);
    let (text, spans) = fields.into_parts();
    let text = Bytes::from(text);
    if content_type == ContentType::ProblemFirst {
        map.insert(header::CONTENT_TYPE, PROBLEM_JSON);
    }
    for (slot, span) in spans {
        match HeaderValue::from_maybe_shared(text.slice(span)) {
            Ok(value) => {
                map.append(HEADER_NAMES[slot].clone(), value);
            }
            Err(_) => tracing::warn!(
                header = headers::ORDER[slot],
                "skipping a header value that is not valid HTTP"
            ),
        }
    }
    if decided.degraded.is_some() {
        map.insert(
            HeaderName::from_static(failure::DEGRADED_HEADER),
            HeaderValue::from_static(failure::DEGRADED_REASON),
        );
    }
    if let Some(home) = &decided.home_region {
        // A region name is letters, digits, `-`, `_` and `.` (policy validation).
        if let Ok(value) = HeaderValue::from_str(home) {
            map.insert(HeaderName::from_static(crate::region::HOME_HEADER), value);
        }
    }
    if content_type == ContentType::JsonLast {
        map.insert(header::CONTENT_TYPE, APPLICATION_JSON);
    }
    if let Some(length) = length {
        map.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    map
}

thread_local! {
    /// This serving thread's prepared maps and `RateLimit-Policy` values.
    static PREPARED: RefCell<Prepared> = RefCell::new(Prepared::default());
}

/// Which headers an answer has, in order: what its prepared map is kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    /// Bit `i` set when the field in slot `i` of `headers::ORDER` is sent.
    fields: u8,
    content_type: ContentType,
    /// Whether the degraded mark follows the fields (while the store is failing).
    degraded: bool,
    /// Whether the home region's header follows the fields (on every answer with a tenant
    /// when the policy spans regions).
    home: bool,
}

impl Shape {
    /// A map with this shape's names in order, every value empty. (At most 64 × 3 × 2 × 2
    /// shapes exist, and a thread keeps only those it has answered with.) A body's length
    /// follows its content type, so the content type says whether there is one.
    fn template(self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(headers::MAX_FIELDS + 2);
        let empty = HeaderValue::from_static("");
        if self.content_type == ContentType::ProblemFirst {
            map.append(header::CONTENT_TYPE, empty.clone());
        }
        for (slot, name) in HEADER_NAMES.iter().enumerate() {
            if self.fields & (1 << slot) != 0 {
                map.append(name.clone(), empty.clone());
            }
        }
        if self.degraded {
            let name = HeaderName::from_static(failure::DEGRADED_HEADER);
            map.append(name, empty.clone());
        }
        if self.home {
            let name = HeaderName::from_static(crate::region::HOME_HEADER);
            map.append(name, empty.clone());
        }
        if self.content_type == ContentType::JsonLast {
            map.append(header::CONTENT_TYPE, empty.clone());
        }
        if self.content_type != ContentType::Absent {
            map.append(header::CONTENT_LENGTH, empty);
        }
        map
    }
}

/// A `RateLimit-Policy` value with what it was rendered from.
struct PolicyValue {
    /// Each enforced limit's name, quota and window, in order.
    limits: Vec<(LimitName, u64, Micros)>,
    value: HeaderValue,
}

impl PolicyValue {
    /// Whether `verdict`'s enforced limits are exactly these: the same compiled names (so the
    /// same quoted forms) with the same numbers, in the same order.
    fn matches(&self, verdict: &Verdict) -> bool {
        let mut mine = self.limits.iter();
        for o in verdict.outcomes.iter().filter(|o| !o.shadow) {
            match mine.next() {
                Some((name, quota, window))
                    if name.same_compilation(&o.name)
                        && *quota == o.quota
                        && *window == o.window => {}
                _ => return false,
            }
        }
        mine.next().is_none()
    }
}

#[derive(Default)]
struct Prepared {
    maps: Vec<(Shape, HeaderMap)>,
    /// The `Content-Length` values made so far, by length (under [`KEPT_LENGTHS`]).
    lengths: Vec<Option<HeaderValue>>,
    policies: Vec<PolicyValue>,
    /// Where the next new `RateLimit-Policy` value goes once `policies` is full.
    next: usize,
}

impl Prepared {
    /// The answer's headers from its shape's map, or `None` when a value is not a valid header
    /// value (the caller then builds it name by name, skipping that one).
    fn answer(&mut self, decided: &Decided, body: AnswerBody) -> Option<HeaderMap> {
        let (content_type, length) = body.parts();
        let verdict = &decided.verdict;
        let fields = headers::fields_but_policy(verdict);
        let mut policy = if fields.is_empty() {
            None
        } else {
            Some(self.policy_value(verdict)?)
        };
        let shape = Shape {
            fields: fields.present() | policy.as_ref().map_or(0, |_| 1 << SLOT_POLICY),
            content_type,
            degraded: decided.degraded.is_some(),
            home: decided.home_region.is_some(),
        };
        let mut map = self.map(shape);
        let (text, spans) = fields.into_parts();
        let text = Bytes::from(text);
        // The map's values are in the order `Shape::template` placed their names, and there
        // are exactly as many as are put here (a value left over would be sent empty).
        let mut values = map.values_mut();
        let mut put = |value: HeaderValue| values.next().map(|slot| *slot = value);
        if content_type == ContentType::ProblemFirst {
            put(PROBLEM_JSON)?;
        }
        for (slot, span) in spans {
            if slot > SLOT_POLICY {
                if let Some(value) = policy.take() {
                    put(value)?;
                }
            }
            put(HeaderValue::from_maybe_shared(text.slice(span)).ok()?)?;
        }
        if let Some(value) = policy.take() {
            put(value)?;
        }
        if decided.degraded.is_some() {
            put(HeaderValue::from_static(failure::DEGRADED_REASON))?;
        }
        if let Some(home) = &decided.home_region {
            put(HeaderValue::from_str(home).ok()?)?;
        }
        if content_type == ContentType::JsonLast {
            put(APPLICATION_JSON)?;
        }
        if let Some(length) = length {
            put(self.length(length))?;
        }
        let left_over = values.next().is_some();
        (!left_over).then_some(map)
    }

    /// The `Content-Length` value for `length`: a copy of the one kept for it (a reference
    /// count) where `HeaderValue::from` would format it into a new allocation each time.
    fn length(&mut self, length: usize) -> HeaderValue {
        if length >= KEPT_LENGTHS {
            return HeaderValue::from(length);
        }
        if self.lengths.len() <= length {
            self.lengths.resize(length + 1, None);
        }
        self.lengths[length]
            .get_or_insert_with(|| HeaderValue::from(length))
            .clone()
    }

    /// A fresh copy of `shape`'s map.
    fn map(&mut self, shape: Shape) -> HeaderMap {
        if let Some((_, map)) = self.maps.iter().find(|(s, _)| *s == shape) {
            return map.clone();
        }
        let map = shape.template();
        self.maps.push((shape, map.clone()));
        map
    }

    /// `RateLimit-Policy`'s value for `verdict`: a kept one that matches it, else rendered,
    /// checked and kept. `None` if it is not a valid header value.
    fn policy_value(&mut self, verdict: &Verdict) -> Option<HeaderValue> {
        if let Some(kept) = self.policies.iter().find(|p| p.matches(verdict)) {
            return Some(kept.value.clone());
        }
        let value = HeaderValue::try_from(headers::policy_value(verdict)).ok()?;
        let limits = (verdict.outcomes.iter().filter(|o| !o.shadow))
            .map(|o| (o.name.clone(), o.quota, o.window))
            .collect();
        let kept = PolicyValue {
            limits,
            value: value.clone(),
        };
        if self.policies.len() < POLICY_VALUES {
            self.policies.push(kept);
        } else {
            self.policies[self.next] = kept;
            self.next = (self.next + 1) % POLICY_VALUES;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_core::algorithm::{Decision, Denial};
    use spillway_core::engine::LimitOutcome;
    use spillway_core::policy::FailureMode;
    use spillway_core::time::SECOND;

    fn outcome(
        name: &LimitName,
        quota: u64,
        remaining: u64,
        denial: u8,
        shadow: bool,
    ) -> LimitOutcome {
        LimitOutcome {
            name: name.clone(),
            decision: Decision {
                allowed: denial == 0,
                limit: quota,
                remaining,
                reset_after: 1_500_000,
                retry_after: (denial == 1).then_some(2 * SECOND + 1),
                denial: [
                    None,
                    Some(Denial::OverLimit),
                    Some(Denial::CostExceedsLimit),
                ][usize::from(denial)],
            },
            shadow,
            quota,
            window: 60 * SECOND,
        }
    }

    fn decided(allowed: bool, outcomes: Vec<LimitOutcome>) -> Decided {
        Decided {
            verdict: Verdict {
                allowed,
                tier: "free".into(),
                route: None,
                failure_mode: FailureMode::Open,
                cost: 1,
                outcomes,
            },
            degraded: None,
            home_region: None,
        }
    }

    /// A map's headers as text, in order.
    fn listed(map: &HeaderMap) -> Vec<(String, String)> {
        map.iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    }

    const BODIES: [AnswerBody; 3] = [
        AnswerBody::Absent,
        AnswerBody::Problem(800),
        AnswerBody::Json(544),
    ];

    /// Prepared or built name by name, every answer's headers are the same, the first time a
    /// shape and a plan are seen and every time after, with a home region or without, degraded
    /// or not.
    fn assert_as_built(case: &Decided) {
        for home in [None, Some("eu-west.2_b")] {
            for degraded in [None, Some(FailureMode::Degrade)] {
                let mut case = case.clone();
                case.home_region = home.map(Into::into);
                case.degraded = degraded;
                for body in BODIES {
                    let want = listed(&build(&case, body));
                    for _ in 0..2 {
                        let got = listed(&answer_headers(&case, body));
                        assert_eq!(got, want, "{home:?}, {degraded:?}, {body:?}");
                    }
                }
            }
        }
    }

    /// Every length, kept or past the table, made the first time or taken from it, is the
    /// body's own.
    #[test]
    fn content_lengths_are_each_answers_own() {
        let a = LimitName::from("a");
        let case = decided(true, vec![outcome(&a, 10, 9, 0, false)]);
        for length in [
            0,
            1,
            9,
            10,
            544,
            544,
            9,
            KEPT_LENGTHS - 1,
            KEPT_LENGTHS,
            70_000,
        ] {
            for body in [AnswerBody::Json(length), AnswerBody::Problem(length)] {
                let map = answer_headers(&case, body);
                assert_eq!(map["content-length"], length.to_string().as_str());
                assert_eq!(listed(&map), listed(&build(&case, body)));
            }
        }
    }

    #[test]
    fn the_usual_answers_read_as_built() {
        let [a, b, s] = ["ip-burst", "user-minute", "shadow"].map(LimitName::from);
        let allowed = decided(
            true,
            vec![
                outcome(&a, 100, 99, 0, false),
                outcome(&s, 1, 0, 1, true),
                outcome(&b, 2, 1, 0, false),
            ],
        );
        assert_as_built(&allowed);
        let map = answer_headers(&allowed, AnswerBody::Json(544));
        let names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "ratelimit-policy",
                "ratelimit",
                "content-type",
                "content-length"
            ]
        );
        assert_eq!(
            map["ratelimit-policy"],
            r#""ip-burst";q=100;w=60, "user-minute";q=2;w=60"#
        );
        assert_eq!(map["content-length"], "544");
        let denied = decided(
            false,
            vec![outcome(&a, 100, 99, 0, false), outcome(&b, 2, 0, 1, false)],
        );
        assert_as_built(&denied);
        let never = decided(
            false,
            vec![outcome(&a, 100, 99, 0, false), outcome(&b, 2, 2, 2, false)],
        );
        assert_as_built(&never);
        assert_as_built(&decided(true, Vec::new()));
        assert_as_built(&decided(true, vec![outcome(&s, 1, 0, 0, true)]));
    }

    /// A kept `RateLimit-Policy` value answers only the limits it was rendered from: not the
    /// same names with other numbers (the emergency quotas), not a reloaded policy's names
    /// with the same text, not the same limits in another order or with one more or less.
    #[test]
    fn a_kept_policy_value_never_answers_other_limits() {
        let [a, b] = ["a", "b"].map(LimitName::from);
        let policy = |case: &Decided| {
            let map = answer_headers(case, AnswerBody::Json(0));
            map["ratelimit-policy"].to_str().expect("text").to_owned()
        };
        let plan = decided(
            true,
            vec![outcome(&a, 10, 5, 0, false), outcome(&b, 20, 5, 0, false)],
        );
        assert_eq!(policy(&plan), r#""a";q=10;w=60, "b";q=20;w=60"#);
        // The emergency quotas: the same names, scaled numbers.
        let scaled = decided(
            true,
            vec![outcome(&a, 2, 1, 0, false), outcome(&b, 4, 1, 0, false)],
        );
        assert_eq!(policy(&scaled), r#""a";q=2;w=60, "b";q=4;w=60"#);
        let mut longer = scaled.clone();
        longer.verdict.outcomes[1].window = 3_600 * SECOND;
        assert_eq!(policy(&longer), r#""a";q=2;w=60, "b";q=4;w=3600"#);
        // A reload renaming `b`: new compiled names, one of them with the old text.
        let [a2, c] = ["a", "c"].map(LimitName::from);
        let reloaded = decided(
            true,
            vec![outcome(&a2, 10, 5, 0, false), outcome(&c, 20, 5, 0, false)],
        );
        assert_eq!(policy(&reloaded), r#""a";q=10;w=60, "c";q=20;w=60"#);
        let swapped = decided(
            true,
            vec![outcome(&b, 20, 5, 0, false), outcome(&a, 10, 5, 0, false)],
        );
        assert_eq!(policy(&swapped), r#""b";q=20;w=60, "a";q=10;w=60"#);
        let fewer = decided(true, vec![outcome(&a, 10, 5, 0, false)]);
        assert_eq!(policy(&fewer), r#""a";q=10;w=60"#);
        assert_eq!(policy(&plan), r#""a";q=10;w=60, "b";q=20;w=60"#);
        // More plans than a thread keeps: each still answers with its own.
        let names: Vec<LimitName> = (0..2 * POLICY_VALUES)
            .map(|i| LimitName::from(format!("n{i}")))
            .collect();
        for round in 0..2 {
            for (i, name) in names.iter().enumerate() {
                let case = decided(true, vec![outcome(name, i as u64 + 1, 0, 0, false)]);
                assert_eq!(
                    policy(&case),
                    format!("\"n{i}\";q={};w=60", i + 1),
                    "round {round}"
                );
            }
        }
    }

    /// An answer naming its home region and a degraded one read as pinned: the home region
    /// after the fields, the degraded mark before it.
    #[test]
    fn home_region_and_degraded_answers_read_as_pinned() {
        let a = LimitName::from("a");
        let mut case = decided(true, vec![outcome(&a, 10, 5, 0, false)]);
        case.home_region = Some("eu-west".into());
        let fields = [
            ("x-ratelimit-limit", "10"),
            ("x-ratelimit-remaining", "5"),
            ("x-ratelimit-reset", "2"),
            ("ratelimit-policy", r#""a";q=10;w=60"#),
            ("ratelimit", r#""a";r=5;t=2"#),
        ];
        let pinned = |middle: &[(&str, &str)]| -> Vec<(String, String)> {
            (fields.iter().chain(middle).chain(&[
                ("content-type", "application/json"),
                ("content-length", "7"),
            ]))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
        };
        let home = (crate::region::HOME_HEADER, "eu-west");
        for _ in 0..2 {
            let map = answer_headers(&case, AnswerBody::Json(7));
            assert_eq!(listed(&map), pinned(&[home]));
        }
        case.degraded = Some(FailureMode::Degrade);
        let degraded = (failure::DEGRADED_HEADER, failure::DEGRADED_REASON);
        let map = answer_headers(&case, AnswerBody::Json(7));
        assert_eq!(listed(&map), pinned(&[degraded, home]));
    }

    /// Answers on one plan share one rendered `RateLimit-Policy` value (the same bytes, not an
    /// equal copy), so the kept values are in fact reused.
    #[test]
    fn answers_on_one_plan_share_their_policy_value() {
        let [a, b] = ["a", "b"].map(LimitName::from);
        let first = decided(
            true,
            vec![outcome(&a, 10, 5, 0, false), outcome(&b, 20, 5, 0, false)],
        );
        let second = decided(
            false,
            vec![outcome(&a, 10, 4, 0, false), outcome(&b, 20, 0, 1, false)],
        );
        // Both maps alive at once, so the second value cannot be a new one at a freed address.
        let one = answer_headers(&first, AnswerBody::Json(1));
        let two = answer_headers(&second, AnswerBody::Problem(2));
        let bytes = |map: &HeaderMap| map["ratelimit-policy"].as_bytes().as_ptr();
        assert_eq!(bytes(&one), bytes(&two));
        assert_eq!(one["ratelimit-policy"], r#""a";q=10;w=60, "b";q=20;w=60"#);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Any names (which quoting makes printable ASCII), numbers, shadows and denials, on
        /// plans seen once or again, some sharing compiled names: the prepared answer is the
        /// one built name by name.
        #[test]
        fn prepared_answers_read_as_built(
            names in proptest::collection::vec("\\PC{0,10}|[\"\\\\\u{0}-\u{1f}\u{7f}a]{0,6}", 1..4),
            limits in proptest::collection::vec(
                (0..4usize, 0..3u64, proptest::num::u64::ANY, 0..3u8, proptest::bool::ANY),
                0..5,
            ),
            allowed in proptest::bool::ANY,
        ) {
            let names: Vec<LimitName> = names.iter().map(|n| LimitName::from(n.as_str())).collect();
            let outcomes = limits
                .into_iter()
                .map(|(i, quota, remaining, denial, shadow)| {
                    outcome(&names[i % names.len()], quota, remaining, denial, shadow)
                })
                .collect();
            assert_as_built(&decided(allowed, outcomes));
        }
    }
}
