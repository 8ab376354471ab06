//! How `/v1/authorize` reads requests and answers them: the header names and statuses the
//! `serve` flags set. Plain data, kept apart from the handler so the process state
//! (`crate::state`) can hold it without depending on any handler.

use crate::http::client_ip::{ForwardingHeaders, TrustedProxies};
use axum::http::{HeaderName, StatusCode};

/// Which headers carry which attribute. Each list is tried in order; the first header present
/// with a non-empty value wins, and any other (or a repeat) with a different value is refused.
#[derive(Debug, Clone)]
pub struct HeaderMapping {
    /// The original request's method.
    pub method: Vec<HeaderName>,
    /// The original request's path (a query string in it is ignored by the engine).
    pub path: Vec<HeaderName>,
    /// The tenant.
    pub tenant: Vec<HeaderName>,
    /// The user.
    pub user: Vec<HeaderName>,
    /// An explicit tier.
    pub tier: Vec<HeaderName>,
    /// An explicit cost.
    pub cost: Vec<HeaderName>,
    /// Lowercase prefix of descriptor headers: `<prefix><name>: <value>` sets the declared
    /// descriptor that `<name>` matches ignoring case, `-` and `_` (header names are
    /// case-insensitive, and `_` is awkward in them): `X-Descriptor-Api-Key` reaches a
    /// descriptor declared as `api_key`, `api-key` or `apiKey`. A name no descriptor is
    /// declared under is kept as sent (lower-case); no limit can use it. Two headers that set
    /// one descriptor to different values are refused with a 400.
    pub descriptor_prefix: String,
}

/// How `/v1/authorize` reads requests and answers them.
#[derive(Debug, Clone)]
pub struct AuthorizeSettings {
    /// Status on allow (200 or 204).
    pub allow_status: StatusCode,
    /// Status on deny (a 4xx).
    pub deny_status: StatusCode,
    /// Status for a request whose headers cannot be read (400 unless set).
    pub invalid_status: StatusCode,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: TrustedProxies,
    /// Names of the forwarding headers.
    pub forwarding: ForwardingHeaders,
    /// Names of the attribute headers.
    pub headers: HeaderMapping,
}
