//! Who is calling: the credential a request presents (a JWT, an API key, a host name under the
//! base domain), verified, turned into the tenant, user and tier that govern its counters.
//!
//! With a `principals:` section in the policy, a transport reads what the request presents
//! ([`Presented`], from headers, the `/v1/check` body or Envoy descriptor entries), asks
//! [`PrincipalState::identify`] for an [`Identity`] (or a [`Reason`] to refuse it), and lays
//! that over the request's own attributes with [`apply`] before the policy resolves it. The
//! secure default: a verified principal's tenant, user and tier replace whatever the request
//! says, and the request may fill in only what `request_may_name` lists and the principal
//! leaves open. Without the section, nothing here runs.
//!
//! Layout: [`jwt`] (header, signature, claims), [`jwks`] (keys from a file or URL),
//! [`cache`] (verified tokens by digest, bounded), [`failures`] (failed verifications per
//! address, bounded), [`api_key`] (catalog lookup by SHA-256),
//! [`subdomain`] (tenant from the host), [`metrics`].

pub mod api_key;
pub mod cache;
pub mod failures;
pub mod jwks;
pub mod jwt;
pub mod metrics;
pub mod subdomain;

use arc_swap::ArcSwapOption;
use cache::TokenCache;
use jwks::Keys;
use spillway_core::policy::principal::{KeySource, Missing, Principals, Source, TokenPlace};
use spillway_core::policy::Policy;
use spillway_core::request::RequestAttrs;
use spillway_core::time::{Micros, SECOND};
use std::sync::Arc;

/// How long past its expiry a token still pays for the request it was checked with: the
/// report of a metered request's cost comes after the response, which may outlast the token.
/// Long enough for a long stream to end, short enough that a token copied after it ran out is
/// of little use (a report can only charge, and only its own tenant).
pub const REPORT_GRACE: Micros = 15 * 60 * SECOND;

/// Who a verified credential says is calling. Each field is `None` when the credential does
/// not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant.
    pub tenant: Option<Arc<str>>,
    /// The user.
    pub user: Option<Arc<str>>,
    /// The tier (a name the policy may or may not define; an unknown one falls back as a
    /// request's own unknown tier does).
    pub tier: Option<Arc<str>>,
}

/// The outcome of identifying a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A credential was verified, by this source.
    Verified(Principal, Source),
    /// No credential; counted in this tier, by IP.
    Anonymous(Arc<str>),
}

/// Why a request's credential was refused; the word is the problem's `reason` and the
/// metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No credential at all, and anonymous requests are refused.
    Missing,
    /// Not a token (or key, or header value) at all.
    Malformed,
    /// Past its `exp` (beyond the leeway).
    Expired,
    /// Before its `nbf` (beyond the leeway).
    NotYetValid,
    /// The signature does not verify.
    BadSignature,
    /// No key with its `kid` (or, without one, no single key for its algorithm).
    UnknownKey,
    /// `none`, an algorithm not allowed, or one its key is not pinned to.
    DisallowedAlgorithm,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` names none of the configured audiences.
    WrongAudience,
    /// No `exp`, or the claim that gives the tenant (or the user, unless the request may name
    /// one) is absent or not a plain value.
    MissingClaim,
    /// An API key the catalog does not hold.
    UnknownApiKey,
    /// The host names a catalog tenant other than the verified credential's
    /// (`principals.subdomain.must_match`).
    TenantMismatch,
    /// Too many credentials from the request's address failed verification lately: a token
    /// the cache does not hold is not checked until the address's budget refills
    /// ([`failures`]).
    TooManyFailures,
}

/// Written as its word (a problem document's `reason`).
impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Reason {
    /// The reason's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::DisallowedAlgorithm => "disallowed_algorithm",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim => "missing_claim",
            Self::UnknownApiKey => "unknown_api_key",
            Self::TenantMismatch => "tenant_mismatch",
            Self::TooManyFailures => "too_many_failures",
        }
    }

    /// A sentence for the problem's `detail` (never quoting the credential).
    pub fn describe(self) -> &'static str {
        match self {
            Self::Missing => "no credential was presented",
            Self::Malformed => "the credential is malformed",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::BadSignature => "the token's signature does not verify",
            Self::UnknownKey => "the token names a key this server does not know",
            Self::DisallowedAlgorithm => "the token's algorithm is not allowed for its key",
            Self::WrongIssuer => "the token was issued by an issuer this server does not accept",
            Self::WrongAudience => "the token is not meant for this audience",
            Self::MissingClaim => "the token lacks `exp` or the claim naming its tenant or user",
            Self::UnknownApiKey => "the API key is not known",
            Self::TenantMismatch => {
                "the host names another tenant than the one the credential belongs to, or \
                 cannot be read as one host"
            }
            Self::TooManyFailures => {
                "too many credentials from this address failed verification lately; a new \
                 token is checked again once its budget refills"
            }
        }
    }
}

/// The credentials a request presents, as text (each `None` when absent).
#[derive(Debug, Default, Clone, Copy)]
pub struct Presented<'a> {
    /// A bearer token (its `Bearer ` scheme already taken off).
    pub token: Option<&'a str>,
    /// A second, different token where the token cookie came twice (a browser sends a stale
    /// cookie beside a fresh one when they were set for two paths or domains). Taken only if
    /// it names the same caller or has expired; see `PrincipalState::identify_with`.
    pub second_token: Option<&'a str>,
    /// An API key.
    pub api_key: Option<&'a str>,
    /// The host name.
    pub host: Option<&'a str>,
    /// Which credentials were there but unreadable (not UTF-8, or sent more than once). Such
    /// a credential is refused as `malformed` only when its source's turn comes, so junk in a
    /// lower-precedence place never refuses a valid higher-precedence credential.
    pub malformed: Malformed,
    /// Whether the request carries the client's address, by which an anonymous caller is
    /// counted: without one, a request that would be anonymous is refused as `missing` (it
    /// would escape every per-IP limit of the anonymous tier). Set by the transport (HTTP:
    /// the request's `ip`; Envoy: an `ip` or `remote_address` entry in every descriptor).
    pub ip: bool,
    /// The client's address, when the transport knows it: failed verifications are counted
    /// against it ([`failures`]). (Whether an anonymous caller may be counted by address is
    /// [`Self::ip`], judged over every descriptor on Envoy's service.)
    pub address: Option<std::net::IpAddr>,
    /// How long past its expiry (and the leeway) a token is still taken: zero for a check.
    /// A report gets [`REPORT_GRACE`]: it comes after the response, with the token its request
    /// was checked with, which may have run out since; refusing it would let a token near its
    /// end make a metered request's cost free.
    pub grace: Micros,
}

/// Which presented credentials were unreadable.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    /// The token.
    pub token: bool,
    /// The API key.
    pub api_key: bool,
    /// The host header (sent twice, or not text). It names no tenant; under `must_match` the
    /// credential beside it is refused, since the host it was sent to cannot be told.
    pub host: bool,
}

/// Where a transport finds named values (headers, gRPC metadata, descriptor entries).
pub trait Lookup {
    /// The `n`th value under `name` (lower-case), as bytes.
    fn nth(&self, name: &str, n: usize) -> Option<&[u8]>;
}

impl Lookup for http::HeaderMap {
    fn nth(&self, name: &str, n: usize) -> Option<&[u8]> {
        self.get_all(name)
            .iter()
            .nth(n)
            .map(http::HeaderValue::as_bytes)
    }
}

/// Reads the credentials `config` looks for from `from`. A value that is not UTF-8, or a
/// credential header sent more than once (which of two tokens would be meant?), is marked
/// malformed; an empty one counts as absent. Several `Cookie` headers are read as one.
pub fn presented<'a>(from: &'a impl Lookup, config: &Principals) -> Presented<'a> {
    let utf8 = |bytes: &'a [u8]| -> Result<Option<&'a str>, ()> {
        let text = std::str::from_utf8(bytes).map_err(|_| ())?.trim();
        Ok((!text.is_empty()).then_some(text))
    };
    let text = |name: &str| -> Result<Option<&'a str>, ()> {
        match (from.nth(name, 0), from.nth(name, 1)) {
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(()),
            (Some(bytes), None) => utf8(bytes),
        }
    };
    let mut out = Presented::default();
    if let Some(jwt) = &config.jwt {
        let found = match &jwt.place {
            TokenPlace::Header(name) => text(name).map(|t| t.map(bearer)),
            TokenPlace::Cookie(name) => {
                // Cookies may come in several headers. Servers differ on which of two cookies
                // of one name they take (the first, or the last as Django does), so a second
                // value is refused as malformed: else a client could be counted under one
                // token while the server serves it as the other.
                // Each line is split as bytes, so a line with bytes that are not text
                // elsewhere still shows its token cookie; a token cookie that is not text is
                // malformed. A second value is kept aside (see `Presented::second_token`); a
                // third is malformed.
                let mut found = Ok(None);
                let mut second: Option<&str> = None;
                for n in 0.. {
                    let Some(line) = from.nth("cookie", n) else {
                        break;
                    };
                    // ASP.NET Core splits at `,` too (a token holds none).
                    for pair in line.split(|&b| b == b';' || b == b',') {
                        // An empty one is no token (and must not hide one after it).
                        let Some(value) = cookie(pair, name).filter(|v| !v.is_empty()) else {
                            continue;
                        };
                        found = match (found, std::str::from_utf8(value)) {
                            (Ok(None), Ok(value)) => Ok(Some(value)),
                            (Ok(Some(earlier)), Ok(value)) if earlier == value => Ok(Some(earlier)),
                            (Ok(Some(earlier)), Ok(value)) => match second {
                                None => {
                                    second = Some(value);
                                    Ok(Some(earlier))
                                }
                                Some(kept) if kept == value => Ok(Some(earlier)),
                                Some(_) => Err(()),
                            },
                            _ => Err(()),
                        };
                    }
                }
                out.second_token = second.filter(|_| found.is_ok());
                found
            }
        };
        match found {
            Ok(token) => out.token = token.filter(|t| !t.is_empty()),
            Err(()) => out.malformed.token = true,
        }
    }
    if let Some(key) = &config.api_key {
        match text(&key.header) {
            Ok(found) => out.api_key = found,
            Err(()) => out.malformed.api_key = true,
        }
    }
    if let Some(sub) = &config.subdomain {
        // A host that cannot be read names no tenant, like any host outside the base; it is
        // noted, since under `must_match` the credential beside it is refused.
        match text(&sub.header) {
            Ok(host) => out.host = host,
            Err(()) => out.malformed.host = true,
        }
    }
    out
}

/// The token in a header value: after a `Bearer` scheme (any case), or the whole value.
fn bearer(value: &str) -> &str {
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    match scheme.eq_ignore_ascii_case("bearer") {
        true => rest.trim(),
        false => value,
    }
}

/// The value of one `name=value` pair of a `Cookie` header, if some server could read it as
/// cookie `name`: white space around the name and the value aside (Django and Starlette strip
/// Unicode white space from the name: [`trim_white`]), the name as older PHP and Rack decode
/// it ([`url_decoded`]), letters of either case (ASP.NET Core), `.`, a space and `[` standing
/// for `_` (PHP); and the value's quotes. A name some server reads as the token cookie but
/// this one did not would let a client holding a valid token be counted as anonymous.
fn cookie<'a>(pair: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let at = pair.iter().position(|&b| b == b'=')?;
    let (n, v) = (trim_white(&pair[..at]), pair[at + 1..].trim_ascii());
    let folded = |b: &u8| match b.to_ascii_lowercase() {
        b'.' | b' ' | b'[' => b'_',
        b => b,
    };
    let is_name = |n: &[u8]| n.iter().map(folded).eq(name.as_bytes().iter().map(folded));
    // Decoded only when there is something to decode (no allocation for the usual pair).
    let encoded = n.iter().any(|b| matches!(b, b'%' | b'+'));
    let same = is_name(n) || (encoded && is_name(trim_white(&url_decoded(n))));
    same.then(|| {
        let unquoted = v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\""));
        unquoted.unwrap_or(v)
    })
}

/// `bytes` without the white space at either end that some server strips from a cookie's name:
/// Unicode's in UTF-8 (Django over WSGI) and a byte order mark, and single bytes as Python
/// strips them from Latin-1 text (Starlette reads headers so): ASCII white space,
/// `\x1c`-`\x1f`, `\x85` and `\xa0`. UTF-8 sequences are tried first: `\x85` and `\xa0` end
/// some of them.
fn trim_white(mut bytes: &[u8]) -> &[u8] {
    let single = |b: &u8| b.is_ascii_whitespace() || matches!(b, 0x0b | 0x1c..=0x1f | 0x85 | 0xa0);
    // One character of several bytes, white.
    let white = |c: &[u8]| {
        let mut chars = std::str::from_utf8(c).map_or("".chars(), str::chars);
        let (one, none) = (chars.next(), chars.next());
        none.is_none() && one.is_some_and(|c| c.is_whitespace() || c == '\u{feff}')
    };
    'trim: loop {
        for len in [3, 2] {
            if bytes.len() >= len && white(&bytes[..len]) {
                bytes = &bytes[len..];
                continue 'trim;
            }
            if bytes.len() >= len && white(&bytes[bytes.len() - len..]) {
                bytes = &bytes[..bytes.len() - len];
                continue 'trim;
            }
        }
        match bytes {
            [first, rest @ ..] if single(first) => bytes = rest,
            [rest @ .., last] if single(last) => bytes = rest,
            _ => return bytes,
        }
    }
}

/// A cookie name as older PHP (before 7.4.31, 8.0.24 and 8.1.11) and Rack decoded it: each
/// `%XX` the byte it stands for, `+` a space, and the name cut at a NUL byte (PHP reads it as
/// a C string).
fn url_decoded(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: Option<&u8>| b.and_then(|&b| char::from(b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let byte = match (b, hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(high), Some(low)) => {
                i += 2;
                (high * 16 + low) as u8
            }
            (b'+', ..) => b' ',
            (b, ..) => b,
        };
        if byte == 0 {
            break;
        }
        out.push(byte);
        i += 1;
    }
    out
}

/// What one `principals:` configuration needs at run time: its JWKS and its token cache.
struct Verifier {
    config: Arc<Principals>,
    keys: Option<Arc<Keys>>,
    cache: Option<Arc<TokenCache>>,
}

/// The server's side of principals: the verifier for the policy in force, rebuilt when a
/// reload changes the `principals:` section.
#[derive(Default)]
pub struct PrincipalState {
    current: ArcSwapOption<Verifier>,
    building: tokio::sync::Mutex<()>,
    failures: failures::FailureBudget,
}

impl PrincipalState {
    /// An empty state; the verifier is built for the first policy that needs one.
    pub fn new() -> Self {
        Self::default()
    }

    /// The verifier for `config`, built (keys read or fetched) if the one in place was built
    /// for another configuration. A reload that leaves a URL-keyed `jwt` section as it was
    /// keeps its keys and cache; a file is read again.
    async fn verifier(&self, config: &Arc<Principals>, now: Micros) -> Arc<Verifier> {
        if let Some(v) = self
            .current
            .load_full()
            .filter(|v| Arc::ptr_eq(&v.config, config))
        {
            return v;
        }
        let _one_at_a_time = self.building.lock().await;
        let old = self.current.load_full();
        if let Some(v) = old.as_ref().filter(|v| Arc::ptr_eq(&v.config, config)) {
            return Arc::clone(v);
        }
        let reusable = old.as_ref().filter(|v| {
            *v.config == **config
                && matches!(
                    config.jwt.as_deref().map(|j| &j.keys),
                    Some(KeySource::Url { .. })
                )
        });
        let verifier = match reusable {
            Some(v) => Verifier {
                config: Arc::clone(config),
                keys: v.keys.clone(),
                cache: v.cache.clone(),
            },
            None => {
                let (keys, cache) = match &config.jwt {
                    Some(jwt) => (
                        Some(Arc::new(Keys::load(&jwt.keys, &jwt.algorithms, now).await)),
                        Some(Arc::new(TokenCache::new(jwt.cache_size))),
                    ),
                    None => (None, None),
                };
                Verifier {
                    config: Arc::clone(config),
                    keys,
                    cache,
                }
            }
        };
        let verifier = Arc::new(verifier);
        self.current.store(Some(Arc::clone(&verifier)));
        verifier
    }

    /// Prepares the verifier for `policy` ahead of the first request (reads or fetches its
    /// keys), so a JWKS problem is logged at start or reload.
    pub async fn prepare(&self, policy: &Policy, now: Micros) {
        if let Some(config) = policy.principals() {
            self.verifier(config, now).await;
        }
    }

    /// Who `presented` says is calling under `policy`'s `principals:` section; `None` when
    /// the policy has none (the request's own attributes stand). A refusal is counted. An
    /// anonymous caller needs an address ([`Presented::ip`]).
    pub async fn identify(
        &self,
        policy: &Policy,
        presented: &Presented<'_>,
        now: Micros,
    ) -> Option<Result<Identity, Reason>> {
        let config = policy.principals()?;
        let result = self.identify_with(config, policy, presented, now).await;
        if let Err(reason) = result {
            metrics::record_rejected(reason);
        }
        Some(result)
    }

    async fn identify_with(
        &self,
        config: &Arc<Principals>,
        policy: &Policy,
        presented: &Presented<'_>,
        now: Micros,
    ) -> Result<Identity, Reason> {
        for &source in &config.sources {
            let principal = match source {
                Source::Jwt => match presented.token {
                    None if presented.malformed.token => return Err(Reason::Malformed),
                    None => continue,
                    Some(token) => {
                        // Each token is verified (or found in the cache) once. Of two token
                        // cookies, which one is stale is judged as a check judges it (no
                        // grace), so a report decides as its check did; the one chosen is then
                        // read with the report's grace.
                        // A report is never held back by its address's failures: it pays for a
                        // request already admitted (the same token may not be cached here).
                        let address = presented.address.filter(|_| presented.grace == 0);
                        let first = self.token(config, token, address, now).await;
                        let verified = match presented.second_token {
                            None => first,
                            Some(other) => {
                                let second = self.token(config, other, address, now).await;
                                let judged = |grace| {
                                    one_of_two(
                                        &judge(&first, now, grace),
                                        &judge(&second, now, grace),
                                    )
                                };
                                let which = match judged(0) {
                                    // Both past their time: the report's grace decides alone.
                                    Err(Reason::Expired) if presented.grace > 0 => {
                                        judged(presented.grace)?
                                    }
                                    which => which?,
                                };
                                match which {
                                    First => first,
                                    Second => second,
                                }
                            }
                        };
                        let principal = verified?.principal_at(now, presented.grace)?;
                        lacks_user(config, &principal)?;
                        principal
                    }
                },
                Source::ApiKey => match presented.api_key {
                    None if presented.malformed.api_key => return Err(Reason::Malformed),
                    None => continue,
                    Some(key) => api_key::identify(key, policy.catalog())?,
                },
                // A host name is no secret: it stands alone only when no real credential is
                // configured, and then only for a tenant the catalog holds. With a JWT or API
                // key configured it is ignored, so `Host: victim...` can never be a tenant.
                Source::Subdomain if config.jwt.is_some() || config.api_key.is_some() => continue,
                Source::Subdomain => match (presented.host, &config.subdomain) {
                    (Some(host), Some(settings)) => {
                        match subdomain::identify(host, settings, policy.catalog()) {
                            Some(principal) => principal,
                            None => continue,
                        }
                    }
                    _ => continue,
                },
            };
            if source != Source::Subdomain {
                must_match(config, policy, presented, &principal)?;
            }
            return Ok(Identity::Verified(principal, source));
        }
        match &config.missing {
            Missing::Reject => Err(Reason::Missing),
            // The one place this rule lives, for checks and reports on every transport.
            Missing::Anonymous(_) if !presented.ip => Err(Reason::Missing),
            Missing::Anonymous(tier) => Ok(Identity::Anonymous(Arc::clone(tier))),
        }
    }

    /// The token verified, or found verified in the cache, whatever its age: whether it has
    /// run out is the caller's to judge ([`jwt::Verified::expired`]). One not in the cache has
    /// its signature checked only while `address` may still fail ([`failures`]), and a
    /// failure counts; without an address, always.
    async fn token(
        &self,
        config: &Arc<Principals>,
        token: &str,
        address: Option<std::net::IpAddr>,
        now: Micros,
    ) -> Result<jwt::Verified, Reason> {
        let verifier = self.verifier(config, now).await;
        let (Some(settings), Some(keys), Some(cache)) =
            (&config.jwt, &verifier.keys, &verifier.cache)
        else {
            return Err(Reason::UnknownKey);
        };
        if token.len() > jwt::MAX_TOKEN {
            return Err(Reason::Malformed);
        }
        let digest = cache::digest(token);
        if let Some(v) = cache.get(&digest, now) {
            return Ok(v);
        }
        // A token that says it ran out past any reader's grace is refused whoever signed it
        // (no server takes it): not worth a signature check, nor the key it names, which may
        // be long gone (a stale cookie a browser keeps sending beside its fresh one).
        if jwt::says_dead(token, settings.leeway, now, REPORT_GRACE) {
            return Err(Reason::Expired);
        }
        if keys.stale(now) {
            let keys = Arc::clone(keys);
            tokio::spawn(async move { keys.refetch(now).await });
        }
        let budget = address.map(|address| (&self.failures, address));
        let mut verified = jwt::verify(token, settings, keys, now, budget).await?;
        if let KeySource::Url { refresh, .. } = &settings.keys {
            // Keys from a URL may be withdrawn: verify again after one refresh interval.
            verified.recheck = Some(now.saturating_add(*refresh));
        }
        // Expired tokens are kept too (a report's grace; a browser may send a stale cookie
        // beside its fresh one with every request): each takes one entry of the bounded cache,
        // as a live one does, and only the issuer makes tokens that verify.
        cache.insert(digest, verified.clone());
        metrics::record_cache_entries(cache.len());
        Ok(verified)
    }
}

/// A verified token's principal as a caller taking it up to `grace` past its expiry sees it.
fn judge(
    verified: &Result<jwt::Verified, Reason>,
    now: Micros,
    grace: Micros,
) -> Result<Principal, Reason> {
    verified.clone()?.principal_at(now, grace)
}

/// Which of two token cookies of one name stands for the caller, whichever of them a server
/// takes: both naming the same caller (the first, then), or one of them expired (a stale
/// cookie beside a fresh one). Two valid tokens of different callers, or a second one refused
/// for anything but its age, are `malformed`: a client could be counted under one while
/// served as the other.
fn one_of_two(
    first: &Result<Principal, Reason>,
    second: &Result<Principal, Reason>,
) -> Result<Which, Reason> {
    match (first, second) {
        // One not checked at all: whether it names the same caller cannot be told.
        (Err(Reason::TooManyFailures), _) | (_, Err(Reason::TooManyFailures)) => {
            Err(Reason::TooManyFailures)
        }
        (Ok(a), Ok(b)) if a == b => Ok(First),
        (Ok(_), Ok(_)) => Err(Reason::Malformed),
        (Ok(_), Err(Reason::Expired)) => Ok(First),
        (Err(Reason::Expired), Ok(_)) => Ok(Second),
        (Err(Reason::Expired), Err(Reason::Expired)) => Err(Reason::Expired),
        _ => Err(Reason::Malformed),
    }
}

/// Which of two token cookies [`one_of_two`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    First,
    Second,
}
use Which::{First, Second};

/// Refuses a token that names no user where the policy takes users from a claim and the
/// request may not name one itself (`request_may_name: [user]`): counted with no user, it
/// would pass every limit keyed by user.
fn lacks_user(config: &Principals, principal: &Principal) -> Result<(), Reason> {
    let from_claim = config.jwt.as_ref().is_some_and(|j| j.user_claim.is_some());
    if from_claim && principal.user.is_none() && !config.request_may_name.user {
        return Err(Reason::MissingClaim);
    }
    Ok(())
}

/// With `principals.subdomain.must_match`, refuses a credential's `principal` when the
/// presented host is under a catalog tenant's name other than its own (at any depth:
/// [`subdomain::claimed`]), or is no host that can be read
/// (sent twice, two joined by a comma as proxies chain them, or junk a proxy may read as
/// another tenant's: see [`spillway_core::host::NotAHost`]). A host naming no catalog tenant, or none
/// at all, is not checked.
fn must_match(
    config: &Principals,
    policy: &Policy,
    presented: &Presented<'_>,
    principal: &Principal,
) -> Result<(), Reason> {
    let Some(settings) = config.subdomain.as_ref().filter(|s| s.must_match) else {
        return Ok(());
    };
    if presented.malformed.host {
        return Err(Reason::TenantMismatch);
    }
    let Some(host) = presented.host else {
        return Ok(());
    };
    match subdomain::claimed(host, settings, policy.catalog()) {
        Err(spillway_core::host::NotAHost) => Err(Reason::TenantMismatch),
        Ok(Some(named)) if Some(named.as_str()) != principal.tenant.as_deref() => {
            Err(Reason::TenantMismatch)
        }
        Ok(_) => Ok(()),
    }
}

/// Lays `identity` over the request's own attributes: a verified principal's values win;
/// where it says nothing, the request keeps its own value only for a field
/// `request_may_name` lists. An anonymous request keeps no tenant or user and gets the
/// anonymous tier.
pub fn apply(identity: &Identity, config: &Principals, attrs: &mut RequestAttrs) {
    match identity {
        Identity::Verified(p, _) => {
            let may = config.request_may_name;
            let pick = |own: &mut Option<String>, verified: &Option<Arc<str>>, may: bool| {
                *own = match verified {
                    Some(v) => Some(v.to_string()),
                    None if may => own.take(),
                    None => None,
                };
            };
            pick(&mut attrs.tenant, &p.tenant, may.tenant);
            pick(&mut attrs.user, &p.user, may.user);
            pick(&mut attrs.tier, &p.tier, may.tier);
        }
        Identity::Anonymous(tier) => {
            attrs.tenant = None;
            attrs.user = None;
            attrs.tier = Some(tier.to_string());
        }
    }
}

#[cfg(test)]
mod tests;
