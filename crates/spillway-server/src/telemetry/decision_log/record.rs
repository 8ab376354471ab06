//! A decision record: the few values the request path copies ([`Pending`]), and the JSON line
//! the writer makes of them ([`Line`], also what `spillway decisions` reads back).
//!
//! ```json
//! {"time":"2027-01-15T08:00:00.123Z","node":"node-a","request_id":"req-42",
//!  "trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","outcome":"denied","allowed":false,
//!  "tenant":"acme","user":"alice","ip":"203.0.113.7","route":"POST /v1/generate",
//!  "tier":"free","cost":1,"limit":{"name":"free-user-minute","limit":10,"quota":10,
//!  "window_ms":10000,"remaining":0},"retry_after_ms":854,"degraded":null,
//!  "policy_version":"/etc/spillway.yaml@2027-01-15T07:59:00.000Z","catalog_version":null,
//!  "sample_rate":1.0}
//! ```
//!
//! `limit` is the governing limit (the one that denied, or when allowed the one closest to
//! denying); for `shadow_denied` it is the shadow limit that would have denied. Over gRPC,
//! `tier` is null, `domain` names the Envoy domain and `descriptors` lists each descriptor's
//! entries (an `ip`, `remote_address` or `masked_remote_address` entry written as `ip` is; the
//! first 8 descriptors
//! that count hits, 8 entries each, texts cut to [`FIELD_BYTES`], and to
//! [`DESCRIPTOR_BYTES`] in all). `degraded` names the
//! failure mode that answered when the store could not (`open`, `degrade`, or `closed` for a
//! refusal). `catalog_version` is the catalog database's version the decision used (null when tenants come from the policy file).
//!
//! Reports of costs known after the response are records too: `outcome` is `reported` (the
//! cost was recorded) or `report_failed` (the store could not record it); a retry that
//! recorded nothing is not logged. `cost` is the reported cost, `request_id` the report's
//! own id, `limits` lists every metered limit's standing after the charge (`limit` is the one
//! furthest from having a unit free, with `retry_after_ms` until one is), and `allowed` says
//! whether every one has room for one unit afterwards, as the next check sees it (`true` for
//! `report_failed`, whose standing is unknown).

use super::privacy::IpPrivacy;
pub use super::rfc3339::{parse_rfc3339_ms, rfc3339_ms};
use super::subject::{trace_id, RequestIds, Subject};
use crate::decision::{Ask, Decided, Outcome, Report, Who};
use crate::state::PolicyInfo;
use serde::{Deserialize, Serialize};
use spillway_core::engine::{LimitOutcome, Verdict};
use spillway_core::policy::{FailureMode, IpPrefix};
use spillway_core::request::CheckMode;
use spillway_core::time::Micros;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The longest text a record keeps of a value the client chose (tenant, user, a descriptor's
/// key or value, an address's text, a report's id); longer ones are cut at a character
/// boundary when the request path copies them, so a record queued for the writer holds at
/// most a few kilobytes whatever the request carried (a gRPC descriptor value may be
/// megabytes; see also [`DESCRIPTOR_BYTES`]).
pub const FIELD_BYTES: usize = 256;
/// Descriptors a record keeps (the first ones).
pub const DESCRIPTORS: usize = 8;
/// Entries a record keeps of each descriptor (the first ones).
pub const DESCRIPTOR_PAIRS: usize = 8;
/// Bytes of descriptor keys and values a record keeps in all: past them, texts are cut
/// further (to nothing at the end). Without it, 64 entries of two 256-byte texts made a
/// 32 KiB record, and the writer's queue of 8,192 of them a quarter of a gigabyte while a
/// sink is stalled.
pub const DESCRIPTOR_BYTES: usize = 4096;

/// `text` cut to at most [`FIELD_BYTES`], owned.
pub(crate) fn kept(text: &str) -> String {
    crate::telemetry::cut_to(text, FIELD_BYTES).to_owned()
}

/// How a decision ended, as a record says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Allowed by the store (sampled).
    Allowed,
    /// Denied by the store.
    Denied,
    /// Allowed, but a shadow-mode limit would have denied it.
    ShadowDenied,
    /// Decided by a failure mode (`open` or `degrade`) because the store failed.
    Degraded,
    /// Refused (`closed` failure mode) because the store failed.
    Refused,
    /// A cost known after the response, recorded (`POST /v1/report`, Envoy's stream-done
    /// call). Not a decision: nothing was let through or held back.
    Reported,
    /// A cost known after the response that the store could not record (lost unless the
    /// caller retries it).
    ReportFailed,
}

impl Kind {
    /// The kind of `outcome`.
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Refused(_) => Self::Refused,
            Outcome::Decided(d) if d.degraded.is_some() => Self::Degraded,
            Outcome::Decided(d) if !d.verdict.allowed => Self::Denied,
            Outcome::Decided(d) if d.verdict.outcomes.iter().any(shadow_denial) => {
                Self::ShadowDenied
            }
            Outcome::Decided(_) => Self::Allowed,
        }
    }

    /// Whether the record is of a report (a cost known after the response), not a decision.
    pub fn is_report(self) -> bool {
        matches!(self, Self::Reported | Self::ReportFailed)
    }

    /// The word records use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::ShadowDenied => "shadow_denied",
            Self::Degraded => "degraded",
            Self::Refused => "refused",
            Self::Reported => "reported",
            Self::ReportFailed => "report_failed",
        }
    }
}

fn shadow_denial(o: &LimitOutcome) -> bool {
    o.shadow && !o.decision.allowed
}

/// A client address: parsed (HTTP) or as a descriptor carried it (gRPC).
#[derive(Debug, Clone)]
pub enum Ip {
    /// An address.
    Addr(IpAddr),
    /// A descriptor's `ip`/`remote_address` text.
    Text(String),
}

/// The governing limit, as copied on the request path.
#[derive(Debug, Clone)]
pub struct Governing {
    name: Arc<str>,
    limit: u64,
    quota: u64,
    window: Micros,
    remaining: u64,
}

impl From<&LimitOutcome> for Governing {
    fn from(o: &LimitOutcome) -> Self {
        Self {
            name: o.name.to_arc(),
            limit: o.decision.limit,
            quota: o.quota,
            window: o.window,
            remaining: o.decision.remaining,
        }
    }
}

impl Governing {
    fn line(&self) -> LimitLine {
        LimitLine {
            name: self.name.to_string(),
            limit: self.limit,
            quota: self.quota,
            window_ms: self.window / 1_000,
            remaining: self.remaining,
        }
    }
}

/// What the request path copies for a record it keeps: owned, small, unformatted.
#[derive(Debug)]
pub struct Pending {
    at: Micros,
    kind: Kind,
    allowed: bool,
    sample_rate: f64,
    tenant: Option<String>,
    user: Option<String>,
    ip: Option<Ip>,
    ip_prefix: IpPrefix,
    route: Option<Arc<str>>,
    tier: Arc<str>,
    envoy: bool,
    cost: u64,
    limit: Option<Governing>,
    retry_after: Option<Micros>,
    degraded: Option<FailureMode>,
    ids: RequestIds,
    descriptors: Vec<Vec<(String, String)>>,
    policy: Arc<PolicyInfo>,
    catalog_version: Option<u64>,
    /// A report's own request id (its body's `request_id`, Envoy's `spillway_request_id`),
    /// written in place of the `x-request-id` header.
    report_id: Option<String>,
    /// A report's every metered limit, standing after the charge.
    limits: Vec<Governing>,
}

impl Pending {
    /// The record with the version of the catalog database's content the decision used
    /// (none for a catalog from the policy file).
    pub fn with_catalog(mut self, version: Option<u64>) -> Self {
        self.catalog_version = version;
        self
    }

    /// Copies what a record needs out of a finished decision.
    #[allow(clippy::too_many_arguments)] // the request path's values, gathered in one place
    pub fn new(
        at: Micros,
        kind: Kind,
        sample_rate: f64,
        ask: &Ask<'_>,
        outcome: &Outcome,
        ip_prefix: IpPrefix,
        policy: Arc<PolicyInfo>,
    ) -> Self {
        let subject: Subject<'_> = ask.subject;
        let envoy = subject.attrs.is_none() && !subject.descriptors.is_empty();
        // A descriptor giving hits back counts nothing: it names no one.
        let counted = || subject.descriptors.iter().filter(|d| !d.is_negative_hits);
        // Within a descriptor the last entry of a key counts (as planning reads it, and
        // `grpc::service::who`), so the record names the counter charged; across descriptors
        // the first that names one.
        let entry = |names: &[&str]| {
            counted()
                .find_map(|d| (d.entries.iter().rev()).find(|e| names.contains(&e.key.as_str())))
                .map(|e| e.value.as_str())
        };
        let (tenant, user, ip) = match subject.attrs {
            Some(attrs) => (
                attrs.tenant.as_deref().map(kept),
                attrs.user.as_deref().map(kept),
                attrs.ip.map(Ip::Addr),
            ),
            None => (
                entry(&["tenant"]).map(kept),
                entry(&["user"]).map(kept),
                // Trimmed as planning reads it, before it is cut.
                entry(&["ip", "remote_address", "masked_remote_address"])
                    .map(|ip| Ip::Text(kept(ip.trim()))),
            ),
        };
        let (allowed, limit, retry_after, degraded) = match outcome {
            Outcome::Decided(d) => {
                let shown = match kind {
                    Kind::ShadowDenied => d.verdict.outcomes.iter().find(|o| shadow_denial(o)),
                    _ => d.verdict.governing(),
                };
                (
                    d.verdict.allowed,
                    shown.map(Governing::from),
                    shown.and_then(|o| o.decision.retry_after),
                    d.degraded,
                )
            }
            Outcome::Refused(r) => (
                false,
                None,
                Some(u64::try_from(r.retry_after.as_micros()).unwrap_or(u64::MAX)),
                Some(FailureMode::Closed),
            ),
        };
        // Each text to what is left of the budget; a key cut short leaves nothing for its
        // value (an address entry's key cut would let its value by the privacy setting), and
        // entries past the budget are left out.
        let mut left = DESCRIPTOR_BYTES;
        let mut take = |text: &str| {
            let room = FIELD_BYTES.min(left);
            let cut = crate::telemetry::cut_to(text, room);
            // The budget, not the field's own bound, cut it.
            left = match room < FIELD_BYTES.min(text.len()) {
                true => 0,
                false => left - cut.len(),
            };
            cut.to_owned()
        };
        let descriptors = counted()
            .take(DESCRIPTORS)
            .map(|d| {
                (d.entries.iter())
                    .take(DESCRIPTOR_PAIRS)
                    .map(|e| (take(&e.key), take(&e.value)))
                    .filter(|(key, _)| !key.is_empty())
                    .collect()
            })
            .collect();
        Self {
            at,
            kind,
            allowed,
            sample_rate,
            tenant,
            user,
            ip,
            ip_prefix,
            route: ask.route.clone(),
            tier: ask.tier.clone(),
            envoy,
            cost: ask.cost,
            limit,
            retry_after,
            degraded,
            ids: subject.ids.for_record(),
            descriptors,
            policy,
            catalog_version: None,
            report_id: None,
            limits: Vec::new(),
        }
    }

    /// Copies what a record needs out of a report: `standing` is the metered limits' standing
    /// after a recorded charge (`None` when it failed).
    pub fn report(
        at: Micros,
        kind: Kind,
        report: &Report<'_>,
        standing: Option<&Verdict>,
        ip_prefix: IpPrefix,
        policy: Arc<PolicyInfo>,
    ) -> Self {
        let verdict = standing.map_or_else(
            || Verdict {
                allowed: true,
                tier: report.tier.clone(),
                route: report.route.clone(),
                failure_mode: FailureMode::Open,
                cost: report.cost,
                outcomes: Vec::new(),
            },
            Verdict::clone,
        );
        let ask = Ask {
            planned: report.planned,
            tier: report.tier.clone(),
            route: report.route.clone(),
            label: None,
            failure_mode: FailureMode::Open,
            cost: report.cost,
            mode: CheckMode::Consume,
            subject: report.subject,
            who: Who::default(),
        };
        let limits = verdict.outcomes.iter().map(Governing::from).collect();
        let outcome = Outcome::Decided(Decided {
            verdict,
            degraded: None,
            home_region: None,
        });
        Self {
            report_id: report.request_id.map(kept),
            limits,
            ..Self::new(at, kind, 1.0, &ask, &outcome, ip_prefix, policy)
        }
    }

    /// The record as a JSON line, written by `node` with addresses shown as `privacy` says.
    pub fn line(&self, node: &str, privacy: &IpPrivacy) -> Line {
        let text = |v: &Option<axum::http::HeaderValue>| {
            v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let show_ip = |ip: &Ip| match ip {
            Ip::Addr(addr) => privacy.show(*addr, self.ip_prefix),
            Ip::Text(text) => privacy.show_text(text, self.ip_prefix),
        };
        let descriptors = self
            .descriptors
            .iter()
            .map(|entries| {
                entries
                    .iter()
                    .map(|(k, v)| {
                        let v = match k.as_str() {
                            "ip" | "remote_address" | "masked_remote_address" => {
                                privacy.show_text(v, self.ip_prefix)
                            }
                            _ => v.clone(),
                        };
                        (k.clone(), v)
                    })
                    .collect()
            })
            .collect();
        Line {
            time: rfc3339_ms(self.at),
            node: node.to_owned(),
            request_id: self
                .report_id
                .clone()
                .or_else(|| text(&self.ids.request_id)),
            trace_id: self
                .ids
                .traceparent
                .as_ref()
                .and_then(trace_id)
                .map(str::to_owned),
            outcome: self.kind,
            allowed: self.allowed,
            tenant: self.tenant.clone(),
            user: self.user.clone(),
            ip: self.ip.as_ref().map(show_ip),
            route: self.route.as_deref().map(str::to_owned),
            tier: (!self.envoy).then(|| self.tier.to_string()),
            domain: self.envoy.then(|| self.tier.to_string()),
            cost: self.cost,
            limit: self.limit.as_ref().map(Governing::line),
            limits: self.limits.iter().map(Governing::line).collect(),
            retry_after_ms: self.retry_after.map(|us| us.div_ceil(1_000)),
            degraded: self.degraded.map(|m| m.as_str().to_owned()),
            policy_version: format!(
                "{}@{}",
                self.policy.source,
                rfc3339_ms(self.policy.loaded_at)
            ),
            catalog_version: self.catalog_version,
            sample_rate: self.sample_rate,
            descriptors,
        }
    }
}

/// One record as written and read back; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// When the decision finished, by the server's clock (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// The node that decided (`--node-name`).
    pub node: String,
    /// The request's `x-request-id`.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The trace id of the request's `traceparent`.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// How the decision ended.
    pub outcome: Kind,
    /// Whether the request was let through.
    pub allowed: bool,
    /// The tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The user.
    #[serde(default)]
    pub user: Option<String>,
    /// The client address, as `--decision-log-ip` shows it.
    #[serde(default)]
    pub ip: Option<String>,
    /// The matched route's pattern.
    #[serde(default)]
    pub route: Option<String>,
    /// The tier (HTTP).
    #[serde(default)]
    pub tier: Option<String>,
    /// The Envoy domain (gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The request's cost.
    #[serde(default)]
    pub cost: u64,
    /// The governing limit.
    #[serde(default)]
    pub limit: Option<LimitLine>,
    /// A report's every metered limit, standing after the charge (only on `reported`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitLine>,
    /// How long the client was told to wait, in milliseconds.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// The failure mode that answered without the store.
    #[serde(default)]
    pub degraded: Option<String>,
    /// The policy in force: its source and load time.
    #[serde(default)]
    pub policy_version: String,
    /// The catalog database's version the decision used (none when tenants come from the policy file).
    #[serde(default)]
    pub catalog_version: Option<u64>,
    /// The share of such decisions logged: 1 for all but allowed ones.
    pub sample_rate: f64,
    /// The gRPC call's descriptors, each entry's key and value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<BTreeMap<String, String>>,
}

/// The governing limit in a [`Line`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitLine {
    /// The limit's name.
    pub name: String,
    /// The most it admits at once.
    pub limit: u64,
    /// Its quota per window (`RateLimit-Policy`'s `q`).
    pub quota: u64,
    /// Its window, in milliseconds.
    pub window_ms: u64,
    /// What remains.
    pub remaining: u64,
}
