//! The `principals:` section: who is calling, as the limiter itself verifies it, instead of the
//! tenant, user and tier a request states about itself.
//!
//! ```yaml
//! principals:
//!   sources: [jwt, api_key, subdomain]   # which credential wins when several are present
//!   request_may_name: []                 # fields a request may still fill in itself
//!   missing: reject                      # or `anonymous` (tier `anonymous_tier`, per IP)
//!   invalid_status: 401                  # /v1/authorize's status for a refused credential
//!   jwt:
//!     header: authorization              # `Bearer <token>`; or `cookie: session`
//!     jwks_file: /etc/spillway/jwks.json # or `jwks_url:` with `refresh: 5m`
//!     algorithms: [RS256, ES256, EdDSA]  # HS256 only when listed; `none` never
//!     leeway: 30s
//!     issuer: https://auth.example.com
//!     audience: [api]
//!     claims: {tenant: org.id, user: sub, tier: plan}
//!     tiers: {pro: paid}
//!   api_key: {header: x-api-key}         # SHA-256 looked up in the tenant catalog
//!   subdomain: {base: example.com}       # acme.example.com is tenant `acme`; with jwt or
//!                                        # api_key, `must_match: true` refuses a credential
//!                                        # used on another catalog tenant's host
//! ```
//!
//! Only the settings live here (spillway-core does no I/O and no cryptography); the server
//! reads the keys and verifies credentials (`spillway-server/src/principal/`).

use super::error::Issues;
use super::raw::{Named, Number, Text};
use super::validate::tier_ref;
use super::{Dimension, LimitDef};
use crate::rate::parse_duration;
use crate::time::Micros;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::collections::HashMap;
use std::sync::Arc;

/// The section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrincipals {
    #[serde(default)]
    sources: Option<Spanned<Vec<Text>>>,
    #[serde(default)]
    request_may_name: Option<Vec<Text>>,
    #[serde(default)]
    missing: Option<Text>,
    #[serde(default)]
    anonymous_tier: Option<Text>,
    #[serde(default)]
    invalid_status: Option<Spanned<Number>>,
    #[serde(default)]
    jwt: Option<Spanned<RawJwt>>,
    #[serde(default)]
    api_key: Option<Spanned<RawApiKey>>,
    #[serde(default)]
    subdomain: Option<Spanned<RawSubdomain>>,
}

/// `principals.jwt` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    #[serde(default)]
    header: Option<Text>,
    #[serde(default)]
    cookie: Option<Text>,
    #[serde(default)]
    jwks_file: Option<Text>,
    #[serde(default)]
    jwks_url: Option<Text>,
    #[serde(default)]
    refresh: Option<Text>,
    #[serde(default)]
    algorithms: Option<Vec<Text>>,
    #[serde(default)]
    leeway: Option<Text>,
    #[serde(default)]
    issuer: Option<Text>,
    #[serde(default)]
    audience: Option<OneOrMany>,
    #[serde(default)]
    claims: Option<RawClaims>,
    #[serde(default)]
    tiers: Option<Named<Text>>,
    #[serde(default)]
    cache_size: Option<Spanned<Number>>,
}

/// One string or a list of them (`audience: api` or `audience: [api, admin]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Text),
    Many(Vec<Text>),
}

/// `principals.jwt.claims` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaims {
    #[serde(default)]
    tenant: Option<Text>,
    #[serde(default)]
    user: Option<Text>,
    #[serde(default)]
    tier: Option<Text>,
}

/// `principals.api_key` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    #[serde(default)]
    header: Option<Text>,
}

/// `principals.subdomain` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubdomain {
    base: Text,
    #[serde(default)]
    header: Option<Text>,
    #[serde(default)]
    must_match: Option<Spanned<bool>>,
}

/// Who is calling, and how the server finds out: the compiled `principals:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principals {
    /// The credentials in precedence order: the first one a request carries decides, and a
    /// credential that fails verification refuses the request (it never falls through to a
    /// weaker one).
    pub sources: Vec<Source>,
    /// The attributes a request may still state itself when its principal leaves them open.
    /// A principal's own values always win; by default a request states nothing.
    pub request_may_name: Fields,
    /// What a request without any credential gets.
    pub missing: Missing,
    /// `/v1/authorize`'s status for a missing or refused credential (nginx passes 401 and 403
    /// on to the client; anything else becomes a 500).
    pub invalid_status: u16,
    /// Bearer tokens, when configured.
    pub jwt: Option<Arc<JwtSettings>>,
    /// API keys, when configured.
    pub api_key: Option<ApiKeySettings>,
    /// Tenants by host name, when configured.
    pub subdomain: Option<SubdomainSettings>,
}

/// One way of telling who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A signed JSON Web Token.
    Jwt,
    /// An API key from the tenant catalog.
    ApiKey,
    /// The first label of the host name under a base domain.
    Subdomain,
}

impl Source {
    /// The name written in `sources:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::ApiKey => "api_key",
            Self::Subdomain => "subdomain",
        }
    }
}

/// A set of request attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fields {
    /// The tenant.
    pub tenant: bool,
    /// The user.
    pub user: bool,
    /// The tier.
    pub tier: bool,
}

/// What happens to a request that carries no credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// Refused: 401 `missing`.
    Reject,
    /// Counted in this tier with no tenant and no user, so only its per-IP limits (and routes'
    /// limits keyed by IP) apply. Validation makes sure the tier has one.
    Anonymous(Arc<str>),
}

/// Where a bearer token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPlace {
    /// A header (lower-case name); a `Bearer ` scheme in front of the token is taken off.
    Header(String),
    /// A cookie of this name in the `Cookie` header.
    Cookie(String),
}

/// Where the verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document on disk, read when the policy is loaded.
    File(String),
    /// A JWKS document fetched over HTTP(S): at load, and again when a token names a key id
    /// not in it, at most once per `refresh`.
    Url {
        /// The address.
        url: String,
        /// The shortest time between two fetches.
        refresh: Micros,
    },
}

/// A signature algorithm a key may be used with. `none` does not exist here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 over a shared secret (`oct` keys).
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    /// Reads the name as JOSE writes it (`RS256`); anything else, `none` included, is `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "HS256" => Some(Self::HS256),
            "RS256" => Some(Self::RS256),
            "ES256" => Some(Self::ES256),
            "EdDSA" => Some(Self::EdDSA),
            _ => None,
        }
    }

    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }
}

/// A dotted path into a token's claims (`org.id` reads `{"org": {"id": ...}}`).
pub type ClaimPath = Vec<String>;

/// How bearer tokens are read, verified and mapped to a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// Where the token is.
    pub place: TokenPlace,
    /// Where the keys are.
    pub keys: KeySource,
    /// The algorithms keys may be pinned to; a key whose algorithm is not listed is not used.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Slack allowed on `exp` and `nbf`, for clocks that disagree a little.
    pub leeway: Micros,
    /// The `iss` a token must carry, when set.
    pub issuer: Option<String>,
    /// One of these must be in the token's `aud`, when any is set.
    pub audience: Vec<String>,
    /// The claim giving the tenant.
    pub tenant_claim: Option<ClaimPath>,
    /// The claim giving the user.
    pub user_claim: Option<ClaimPath>,
    /// The claim giving the tier (through [`Self::tiers`]).
    pub tier_claim: Option<ClaimPath>,
    /// Claim values to tier names (`pro: paid`); a value not listed that names a tier of the
    /// policy is that tier; any other value gives no tier.
    pub tiers: HashMap<String, Arc<str>>,
    /// How many verified tokens are remembered (until they expire).
    pub cache_size: u64,
}

/// How API keys are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeySettings {
    /// The header carrying the key (lower-case).
    pub header: String,
}

/// How a tenant is read from the host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubdomainSettings {
    /// The domain under which each first label is a tenant, lower-case, without a leading dot.
    pub base: String,
    /// The header carrying the host name (lower-case; `host` unless set, e.g.
    /// `x-original-host` behind nginx, whose subrequest rewrites `Host`).
    pub header: String,
    /// With a JWT or API key configured: refuse a request whose host names a catalog tenant
    /// other than the one its verified credential belongs to (`tenant_mismatch`), so a
    /// credential of one tenant cannot be used on another tenant's host name. Validation
    /// refuses it without `jwt` or `api_key` (the host alone would have nothing to match).
    pub must_match: bool,
}

/// The default bound of the verified-token cache.
pub const DEFAULT_CACHE_SIZE: u64 = 100_000;
/// The default time between two fetches of a JWKS URL.
pub const DEFAULT_REFRESH: Micros = 300_000_000;
/// The default slack on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Micros = 30_000_000;
/// The most leeway a policy may give `exp` and `nbf` (five minutes).
pub const MAX_LEEWAY: Micros = 300_000_000;
/// The shortest JWKS `refresh`: a key server is not asked more often than this.
pub const MIN_REFRESH: Micros = 10_000_000;

/// What validation needs from the rest of the policy.
pub(crate) struct Context<'a> {
    pub tiers: &'a HashMap<Box<str>, usize>,
    /// Per tier, every limit a request of that tier meets outside routes.
    pub tier_limits: &'a [Vec<Arc<LimitDef>>],
    pub global: &'a [Arc<LimitDef>],
}

/// Checks the section; `None` when absent or when it has problems (reported in `issues`).
pub(crate) fn compile(
    raw: Option<&Spanned<RawPrincipals>>,
    cx: &Context<'_>,
    issues: &mut Issues,
) -> Option<Principals> {
    let raw = raw?;
    let (at, p) = (raw.referenced, &raw.value);
    let before = issues.len();
    let jwt = p
        .jwt
        .as_ref()
        .and_then(|j| jwt(j, cx, issues))
        .map(Arc::new);
    let api_key = p.api_key.as_ref().map(|k| ApiKeySettings {
        header: header_name(
            k.value.header.as_ref(),
            "x-api-key",
            "principals.api_key.header",
            issues,
        ),
    });
    let subdomain = p.subdomain.as_ref().map(|s| subdomain(&s.value, issues));
    if let Some(flag) = p
        .subdomain
        .as_ref()
        .and_then(|s| s.value.must_match.as_ref())
    {
        if flag.value && p.jwt.is_none() && p.api_key.is_none() {
            let message = "`must_match` compares the host with a verified credential's tenant; \
                           configure `principals.jwt` or `principals.api_key` too";
            issues.push(flag.referenced, "principals.subdomain.must_match", message);
        }
    }

    let configured = |source: Source| match source {
        Source::Jwt => p.jwt.is_some(),
        Source::ApiKey => p.api_key.is_some(),
        Source::Subdomain => p.subdomain.is_some(),
    };
    let sources = match &p.sources {
        None => [Source::Jwt, Source::ApiKey, Source::Subdomain]
            .into_iter()
            .filter(|s| configured(*s))
            .collect(),
        Some(list) => {
            let mut out = Vec::new();
            for (i, name) in list.value.iter().enumerate() {
                let path = format!("principals.sources[{i}]");
                let source = match name.value.as_str() {
                    "jwt" => Source::Jwt,
                    "api_key" => Source::ApiKey,
                    "subdomain" => Source::Subdomain,
                    other => {
                        let message =
                            format!("unknown source `{other}` (use jwt, api_key or subdomain)");
                        issues.push(name.referenced, path, message);
                        continue;
                    }
                };
                if !configured(source) {
                    let message = format!(
                        "`{}` is listed but `principals.{}` is not configured",
                        source.as_str(),
                        source.as_str()
                    );
                    issues.push(name.referenced, path, message);
                } else if out.contains(&source) {
                    let message = format!("`{}` is listed twice", source.as_str());
                    issues.push(name.referenced, path, message);
                } else {
                    out.push(source);
                }
            }
            out
        }
    };
    if sources.is_empty() && issues.len() == before {
        let message = "configure at least one of `jwt`, `api_key` or `subdomain`";
        issues.push(at, "principals", message);
    }

    let mut request_may_name = Fields::default();
    for (i, name) in p.request_may_name.iter().flatten().enumerate() {
        let field = match name.value.as_str() {
            "tenant" => &mut request_may_name.tenant,
            "user" => &mut request_may_name.user,
            "tier" => &mut request_may_name.tier,
            other => {
                let message = format!("unknown field `{other}` (use tenant, user or tier)");
                issues.push(
                    name.referenced,
                    format!("principals.request_may_name[{i}]"),
                    message,
                );
                continue;
            }
        };
        *field = true;
    }

    let missing = match p.missing.as_ref().map(|m| (m, m.value.as_str())) {
        None | Some((_, "reject")) => {
            if let Some(tier) = &p.anonymous_tier {
                let message = "`anonymous_tier` applies only with `missing: anonymous`";
                issues.push(tier.referenced, "principals.anonymous_tier", message);
            }
            Missing::Reject
        }
        Some((_, "anonymous")) => anonymous(p.anonymous_tier.as_ref(), at, cx, issues),
        Some((m, other)) => {
            let message = format!("unknown value `{other}` (use reject or anonymous)");
            issues.push(m.referenced, "principals.missing", message);
            Missing::Reject
        }
    };

    let invalid_status = match &p.invalid_status {
        None => 401,
        Some(n) => match n.value.positive() {
            Ok(code @ (401 | 403)) => code as u16,
            Ok(code) => {
                // nginx's auth_request turns any other status into a 500.
                let message = format!("must be 401 or 403 (got {code})");
                issues.push(n.referenced, "principals.invalid_status", message);
                401
            }
            Err(message) => {
                issues.push(n.referenced, "principals.invalid_status", message);
                401
            }
        },
    };

    (issues.len() == before).then_some(Principals {
        sources,
        request_may_name,
        missing,
        invalid_status,
        jwt,
        api_key,
        subdomain,
    })
}

/// The anonymous tier: it must exist, and a limit that every anonymous request meets must
/// count it by IP, or anonymous callers would be unlimited.
fn anonymous(
    name: Option<&Text>,
    section: Location,
    cx: &Context<'_>,
    issues: &mut Issues,
) -> Missing {
    let fallback = Text::new("anonymous".into(), section, section);
    let name = name.unwrap_or(&fallback);
    let path = "principals.anonymous_tier";
    let Some(index) = tier_ref(name, path.into(), cx.tiers, issues) else {
        return Missing::Reject;
    };
    let own = cx.tier_limits.get(index).map_or(&[][..], Vec::as_slice);
    // Keyed by `ip` alone: a limit keyed by `ip` and `route` is skipped on a path no route
    // matches, one keyed by `ip` and `tenant` (global) on every anonymous request. Enforced
    // at the check: a shadow limit denies nothing, a metered one only what reports charge.
    let per_ip = cx.global.iter().chain(own).any(|d| {
        !d.shadow && !d.metered && !d.key.is_empty() && d.key.iter().all(|k| *k == Dimension::Ip)
    });
    if !per_ip {
        let message = format!(
            "tier `{}` has no limit keyed by `ip` alone (global or its own; enforced, not \
             `shadow`, charged at the check, not `charge: after`), so anonymous callers would \
             be unlimited: a limit keyed by `ip` and `route` is skipped where no route matches",
            name.value
        );
        issues.push(name.referenced, path, message);
    }
    // An anonymous request has no tenant, user or verified descriptor: a limit of the tier
    // keyed by any of them would count (or skip) on what the caller chooses to send.
    for def in own {
        let other = def
            .key
            .iter()
            .find(|d| !matches!(d, Dimension::Ip | Dimension::Route));
        if let Some(dimension) = other {
            let message = format!(
                "tier `{}` has limit `{}` keyed by `{}`; an anonymous tier's limits may be \
                 keyed only by `ip` and `route`",
                name.value,
                def.name,
                dimension.as_str()
            );
            issues.push(name.referenced, path, message);
        }
    }
    Missing::Anonymous(name.value.as_str().into())
}

fn jwt(raw: &Spanned<RawJwt>, cx: &Context<'_>, issues: &mut Issues) -> Option<JwtSettings> {
    let (at, j) = (raw.referenced, &raw.value);
    let before = issues.len();
    let place = match (&j.header, &j.cookie) {
        (Some(_), Some(c)) => {
            let message = "give either `header` or `cookie`, not both";
            issues.push(c.referenced, "principals.jwt.cookie", message);
            TokenPlace::Header(String::new())
        }
        (_, Some(c)) if c.value.trim().is_empty() => {
            issues.push(c.referenced, "principals.jwt.cookie", "must not be empty");
            TokenPlace::Cookie(String::new())
        }
        (_, Some(c)) => TokenPlace::Cookie(c.value.trim().to_owned()),
        (h, None) => TokenPlace::Header(header_name(
            h.as_ref(),
            "authorization",
            "principals.jwt.header",
            issues,
        )),
    };
    // A duration within `min..=max` (`0` allowed when `min` is 0).
    let duration = |text: &Option<Text>,
                    field: &str,
                    default: Micros,
                    (min, max): (Micros, Micros),
                    issues: &mut Issues| {
        text.as_ref().map_or(default, |t| {
            let value = t.value.trim();
            let parsed = match value {
                "0" | "0s" if min == 0 => Ok(0),
                _ => parse_duration(value),
            };
            let checked = parsed.and_then(|d| match (min..=max).contains(&d) {
                true => Ok(d),
                false if d < min => Err(format!(
                    "must be at least {}s (got `{value}`)",
                    min / 1_000_000
                )),
                false => Err(format!(
                    "must be at most {}s (got `{value}`)",
                    max / 1_000_000
                )),
            });
            checked.unwrap_or_else(|message| {
                issues.push(t.referenced, format!("principals.jwt.{field}"), message);
                default
            })
        })
    };
    let keys = match (&j.jwks_file, &j.jwks_url) {
        (Some(_), Some(u)) => {
            let message = "give either `jwks_file` or `jwks_url`, not both";
            issues.push(u.referenced, "principals.jwt.jwks_url", message);
            None
        }
        (None, None) => {
            let message = "`jwks_file` or `jwks_url` is required";
            issues.push(at, "principals.jwt", message);
            None
        }
        (Some(f), None) => {
            if let Some(r) = &j.refresh {
                let message = "`refresh` applies only to `jwks_url`";
                issues.push(r.referenced, "principals.jwt.refresh", message);
            }
            Some(KeySource::File(f.value.clone()))
        }
        (None, Some(u)) => {
            let url = u.value.trim();
            if !(url.starts_with("https://") || loopback_http(url)) {
                let message = format!(
                    "`{}` is not an https:// URL (http:// only for localhost and loopback \
                     addresses)",
                    crate::redact::mask_service_url(url)
                );
                issues.push(u.referenced, "principals.jwt.jwks_url", message);
            }
            let refresh = duration(
                &j.refresh,
                "refresh",
                DEFAULT_REFRESH,
                (MIN_REFRESH, Micros::MAX),
                issues,
            );
            Some(KeySource::Url {
                url: url.to_owned(),
                refresh,
            })
        }
    };
    let mut algorithms = Vec::new();
    match &j.algorithms {
        None => algorithms.extend([
            JwtAlgorithm::RS256,
            JwtAlgorithm::ES256,
            JwtAlgorithm::EdDSA,
        ]),
        Some(list) => {
            for (i, name) in list.iter().enumerate() {
                let path = format!("principals.jwt.algorithms[{i}]");
                match JwtAlgorithm::from_name(name.value.trim()) {
                    Some(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                    Some(_) => issues.push(name.referenced, path, "listed twice"),
                    None if name.value.trim().eq_ignore_ascii_case("none") => issues.push(
                        name.referenced,
                        path,
                        "unsigned tokens (`none`) are never accepted",
                    ),
                    None => issues.push(
                        name.referenced,
                        path,
                        format!(
                            "unknown algorithm `{}` (use HS256, RS256, ES256 or EdDSA)",
                            name.value
                        ),
                    ),
                }
            }
            if list.is_empty() {
                issues.push(
                    at,
                    "principals.jwt.algorithms",
                    "list at least one algorithm",
                );
            }
        }
    }
    let leeway = duration(&j.leeway, "leeway", DEFAULT_LEEWAY, (0, MAX_LEEWAY), issues);
    let audience = match &j.audience {
        None => Vec::new(),
        Some(OneOrMany::One(a)) => vec![a.value.clone()],
        Some(OneOrMany::Many(list)) => list.iter().map(|a| a.value.clone()).collect(),
    };
    let claim = |text: &Option<Text>, field: &str, issues: &mut Issues| {
        let text = text.as_ref()?;
        let path: ClaimPath = text.value.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            let message = format!(
                "`{}` is not a dotted claim path such as `org.id`",
                text.value
            );
            issues.push(
                text.referenced,
                format!("principals.jwt.claims.{field}"),
                message,
            );
        }
        Some(path)
    };
    let claims = j.claims.as_ref();
    let none = None;
    let tenant_claim = claim(claims.map_or(&none, |c| &c.tenant), "tenant", issues);
    let user_claim = claim(claims.map_or(&none, |c| &c.user), "user", issues);
    let tier_claim = claim(claims.map_or(&none, |c| &c.tier), "tier", issues);
    if tenant_claim.is_none() && user_claim.is_none() && tier_claim.is_none() {
        let message = "map at least one claim (`claims: {tenant: ..., user: ..., tier: ...}`)";
        issues.push(at, "principals.jwt.claims", message);
    }
    let mut tiers = HashMap::new();
    for (value, tier) in j.tiers.iter().flat_map(|t| &t.0) {
        let path = format!("principals.jwt.tiers.{}", value.value);
        if tier_ref(tier, path, cx.tiers, issues).is_some() {
            tiers.insert(value.value.clone(), tier.value.as_str().into());
        }
    }
    if j.tiers.is_some() && tier_claim.is_none() {
        let message = "`tiers` maps the tier claim, but `claims.tier` is not set";
        issues.push(at, "principals.jwt.tiers", message);
    }
    let cache_size = match &j.cache_size {
        None => DEFAULT_CACHE_SIZE,
        Some(n) => n.value.positive().unwrap_or_else(|message| {
            issues.push(n.referenced, "principals.jwt.cache_size", message);
            DEFAULT_CACHE_SIZE
        }),
    };
    (issues.len() == before).then_some(JwtSettings {
        place,
        keys: keys?,
        algorithms,
        leeway,
        issuer: j.issuer.as_ref().map(|i| i.value.clone()),
        audience,
        tenant_claim,
        user_claim,
        tier_claim,
        tiers,
        cache_size,
    })
}

fn subdomain(raw: &RawSubdomain, issues: &mut Issues) -> SubdomainSettings {
    let base = raw
        .base
        .value
        .trim()
        .trim_start_matches('.')
        .to_ascii_lowercase();
    let valid = !base.is_empty()
        && base.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        let message = format!(
            "`{}` is not a domain name such as `example.com`",
            raw.base.value
        );
        issues.push(raw.base.referenced, "principals.subdomain.base", message);
    }
    SubdomainSettings {
        base,
        header: header_name(
            raw.header.as_ref(),
            "host",
            "principals.subdomain.header",
            issues,
        ),
        must_match: raw.must_match.as_ref().is_some_and(|m| m.value),
    }
}

/// A header name, lower-cased, or `default`; one that cannot be a header is reported.
fn header_name(text: Option<&Text>, default: &str, path: &str, issues: &mut Issues) -> String {
    let Some(text) = text else {
        return default.to_owned();
    };
    let name = text.value.trim().to_ascii_lowercase();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        let message = format!("`{}` is not a header name", text.value);
        issues.push(text.referenced, path, message);
    }
    name
}

/// Whether `url` is `http://` to a loopback host (`localhost`, `127.x.x.x`, `[::1]`), where
/// plain HTTP cannot be intercepted on the way.
fn loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Not `user@host`: a reader could take either side for the host.
    !authority.contains('@') && crate::host::Host::names_loopback(authority)
}
