//! The attributes of one request, as a caller (HTTP API, proxy endpoint, Envoy) reports them.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// What the engine knows about a request. Every field is optional: a limit whose key needs a
/// dimension the request does not carry simply does not apply to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAttrs {
    /// The tenant (organisation, account) the request belongs to.
    pub tenant: Option<String>,
    /// The end user within the tenant.
    pub user: Option<String>,
    /// The client IP address, as the caller determined it. An address, never free text: the
    /// `ip` dimension counts it by network (see [`crate::policy::IpPrefix`]), and a value a
    /// client could vary at will would give it a fresh counter for every request. Transports
    /// refuse a value that is not an address.
    pub ip: Option<IpAddr>,
    /// The HTTP method, e.g. `POST`.
    pub method: Option<String>,
    /// A second method the client asked the server behind the proxy to use instead
    /// (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`). On a `POST`, which
    /// is where frameworks honour it, routes are matched under both methods, and every route
    /// matched applies.
    pub method_override: Option<String>,
    /// The request path, e.g. `/v1/generate` (a query string is ignored but for `_method`
    /// parameters, which count as method overrides).
    pub path: Option<String>,
    /// An explicit tier; when absent the tenant's tier, then the policy's default tier, apply.
    pub tier: Option<String>,
    /// An explicit cost; when absent the matched route's cost (or 1) applies.
    pub cost: Option<u64>,
    /// Named custom dimensions declared in the policy (`api_key`, `region`, ...).
    pub descriptors: BTreeMap<String, String>,
}

/// Whether a check consumes from the limits or only reports what would happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckMode {
    /// Consume the request's cost when every limit allows it.
    #[default]
    Consume,
    /// Evaluate without changing any state.
    Peek,
}
