//! Verifying one JSON Web Token and reading the principal out of its claims.
//!
//! The header is read first, by hand: its `alg` must be one of the four this server knows
//! (`none` and everything else is `disallowed_algorithm`) and equal to the algorithm of the key
//! its `kid` picks. Only then does `jsonwebtoken` check the signature, with that one algorithm
//! and key. Claims are checked here against the server's clock (which tests move), not the
//! library's wall clock: `nbf` with the policy's leeway, then `iss` and `aud`. `exp` (required)
//! only sets [`Verified::until`]: whether the token has run out is its caller's to judge with
//! [`Verified::expired`], which knows how long past its expiry the request may take it.

use super::failures::FailureBudget;
use super::jwks::Keys;
use super::{Principal, Reason};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;
use spillway_core::policy::principal::{ClaimPath, JwtAlgorithm, JwtSettings};
use spillway_core::time::Micros;
use std::net::IpAddr;
use std::sync::Arc;

/// The longest token read; real ones are a few hundred bytes to a few kilobytes.
pub const MAX_TOKEN: usize = 16 * 1024;

/// A verified token: who it names and until when it may be believed.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The principal its claims map to.
    pub principal: Principal,
    /// Its `exp` plus the leeway, in server-clock microseconds (tokens without `exp` are
    /// refused; `None` is for principals that never expire, such as tests').
    pub until: Option<Micros>,
    /// When the cached verdict must be verified again (keys from a URL: one refresh
    /// interval on), so a token whose key was withdrawn stops being honoured from the cache.
    pub recheck: Option<Micros>,
}

impl Verified {
    /// Whether the token has run out at `now` for a caller that takes it up to `grace` past
    /// its expiry (a report's; zero for a check).
    pub fn expired(&self, now: Micros, grace: Micros) -> bool {
        self.until
            .is_some_and(|until| now >= until.saturating_add(grace))
    }

    /// Its principal, unless the token has [`Self::expired`] for that caller.
    pub fn principal_at(self, now: Micros, grace: Micros) -> Result<Principal, Reason> {
        if self.expired(now, grace) {
            return Err(Reason::Expired);
        }
        Ok(self.principal)
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Extensions the issuer says must be understood; this server understands none, so a
    /// token that lists any is refused.
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Reads the header segment: the algorithm (one this server knows) and the key id.
pub fn header(token: &str) -> Result<(JwtAlgorithm, Option<String>), Reason> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reason::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| Reason::Malformed)?;
    let header: Header = serde_json::from_slice(&bytes).map_err(|_| Reason::Malformed)?;
    if header.crit.is_some() {
        return Err(Reason::Malformed);
    }
    let alg = JwtAlgorithm::from_name(&header.alg).ok_or(Reason::DisallowedAlgorithm)?;
    Ok((alg, header.kid))
}

/// Whether `token` says, unverified, that it ran out (its `exp` plus `leeway`) more than
/// `grace` before `now`. Such a token is stale whoever signed it: no server takes it.
pub fn says_dead(token: &str, leeway: Micros, now: Micros, grace: Micros) -> bool {
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload) else {
        return false;
    };
    #[derive(Deserialize)]
    struct Exp {
        exp: f64,
    }
    let Ok(Exp { exp }) = serde_json::from_slice::<Exp>(&bytes) else {
        return false;
    };
    let until = (exp.max(0.0) * 1e6).min(u64::MAX as f64) as Micros;
    exp.is_finite() && until.saturating_add(leeway).saturating_add(grace) <= now
}

fn library(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// Verifies `token` with `keys` under `settings` at `now`, all but its expiry (see
/// [`Verified::expired`]). A key id the set does not know triggers one refetch of a JWKS URL
/// (at most once per refresh interval). With `budget`, the signature check (the costly part,
/// reached only by a token naming an allowed algorithm and a known key) is made only while the
/// address may still fail, and a token failing it, or the claims after it, is counted
/// against the address ([`FailureBudget`]).
pub async fn verify(
    token: &str,
    settings: &JwtSettings,
    keys: &Keys,
    now: Micros,
    budget: Option<(&FailureBudget, IpAddr)>,
) -> Result<Verified, Reason> {
    if token.len() > MAX_TOKEN {
        return Err(Reason::Malformed);
    }
    let (alg, kid) = header(token)?;
    if !settings.algorithms.contains(&alg) {
        return Err(Reason::DisallowedAlgorithm);
    }
    let mut set = keys.current();
    if let Some(kid) = kid.as_deref() {
        if !set.has_kid(kid) {
            // Another request's fetch may have brought the key in meanwhile; read the set
            // again whether or not this one fetched.
            keys.refetch(now).await;
            set = keys.current();
        }
    }
    let key = set.find(kid.as_deref(), alg).ok_or(Reason::UnknownKey)?;
    if key.alg != alg {
        // The token asks for another algorithm than its key is pinned to: an RSA public key
        // offered as an HMAC secret, for instance.
        return Err(Reason::DisallowedAlgorithm);
    }
    if budget.is_some_and(|(budget, address)| !budget.admits(address, now)) {
        return Err(Reason::TooManyFailures);
    }
    super::metrics::record_verification();
    let checked = signed_claims(token, settings, key, alg, now);
    if let (Err(_), Some((budget, address))) = (&checked, budget) {
        budget.charge(address, now);
    }
    checked
}

/// The signature check and the claims after it.
fn signed_claims(
    token: &str,
    settings: &JwtSettings,
    key: &super::jwks::Key,
    alg: JwtAlgorithm,
    now: Micros,
) -> Result<Verified, Reason> {
    let mut validation = Validation::new(library(alg));
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidSignature => Reason::BadSignature,
            ErrorKind::InvalidAlgorithm => Reason::DisallowedAlgorithm,
            _ => Reason::Malformed,
        }
    })?;
    check_claims(&data.claims, settings, now)
}

/// Checks `nbf`, issuer and audience, then maps the claims to a principal, to be believed
/// until `exp` and the leeway (the caller judges that: [`Verified::expired`]).
pub fn check_claims(
    claims: &Value,
    settings: &JwtSettings,
    now: Micros,
) -> Result<Verified, Reason> {
    let Value::Object(map) = claims else {
        return Err(Reason::Malformed);
    };
    let seconds = |name: &str| -> Result<Option<Micros>, Reason> {
        match map.get(name) {
            None => Ok(None),
            Some(v) => {
                let s = v
                    .as_f64()
                    .filter(|s| s.is_finite())
                    .ok_or(Reason::Malformed)?;
                // Whole microseconds; far futures and pasts saturate.
                Ok(Some((s.max(0.0) * 1e6).min(u64::MAX as f64) as Micros))
            }
        }
    };
    let leeway = settings.leeway;
    // A token without `exp` would be good forever (and cached until evicted): refused.
    let until = seconds("exp")?
        .ok_or(Reason::MissingClaim)?
        .saturating_add(leeway);
    if seconds("nbf")?.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
        return Err(Reason::NotYetValid);
    }
    if let Some(issuer) = &settings.issuer {
        if map.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(Reason::WrongIssuer);
        }
    }
    if !settings.audience.is_empty() {
        let accepted = |a: &Value| {
            a.as_str()
                .is_some_and(|a| settings.audience.iter().any(|w| w == a))
        };
        let ok = match map.get("aud") {
            Some(Value::Array(list)) => list.iter().any(accepted),
            Some(one) => accepted(one),
            None => false,
        };
        if !ok {
            return Err(Reason::WrongAudience);
        }
    }
    let text = |path: &Option<ClaimPath>| path.as_ref().and_then(|p| claim(claims, p));
    let tier = text(&settings.tier_claim)
        .and_then(|value| settings.tiers.get(&*value).cloned().or(Some(value)));
    let principal = Principal {
        tenant: text(&settings.tenant_claim),
        user: text(&settings.user_claim),
        tier,
    };
    if principal.tenant.is_none() && settings.tenant_claim.is_some() {
        // A token that names no tenant would be counted with no tenant at all.
        return Err(Reason::MissingClaim);
    }
    Ok(Verified {
        principal,
        until: Some(until),
        recheck: None,
    })
}

/// The claim at a dotted path as text: strings as they are, numbers and booleans written out;
/// objects, arrays, null and empty strings count as absent.
fn claim(claims: &Value, path: &ClaimPath) -> Option<Arc<str>> {
    let mut at = claims;
    for step in path {
        at = at.as_object()?.get(step)?;
    }
    let text = match at {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    Some(text.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use spillway_core::policy::principal::{KeySource, TokenPlace};
    use std::collections::HashMap;

    fn settings() -> JwtSettings {
        JwtSettings {
            place: TokenPlace::Header("authorization".into()),
            keys: KeySource::File(String::new()),
            algorithms: vec![JwtAlgorithm::RS256],
            leeway: 5_000_000,
            issuer: Some("https://issuer".into()),
            audience: vec!["api".into()],
            tenant_claim: Some(vec!["org".into(), "id".into()]),
            user_claim: Some(vec!["sub".into()]),
            tier_claim: Some(vec!["plan".into()]),
            tiers: HashMap::from([("pro".into(), "paid".into())]),
            cache_size: 10,
        }
    }

    const NOW: Micros = 1_000_000_000_000;

    fn claims(extra: Value) -> Value {
        let mut base = json!({"iss": "https://issuer", "aud": ["x", "api"], "sub": 42,
                              "org": {"id": "acme"}, "plan": "pro", "exp": 1_000_100});
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            b.extend(e);
        }
        base
    }

    #[test]
    fn claims_map_to_a_principal_through_dotted_paths_and_the_tier_table() {
        let v = check_claims(&claims(json!({})), &settings(), NOW).expect("valid");
        assert_eq!(v.principal.tenant.as_deref(), Some("acme"));
        assert_eq!(v.principal.user.as_deref(), Some("42"));
        assert_eq!(v.principal.tier.as_deref(), Some("paid"));
        assert_eq!(v.until, Some(1_000_105_000_000));
        let v = check_claims(&claims(json!({"plan": "free"})), &settings(), NOW).expect("valid");
        assert_eq!(v.principal.tier.as_deref(), Some("free"));
    }

    #[test]
    fn time_issuer_and_audience_are_checked_with_leeway() {
        let s = settings();
        let reason = |extra| check_claims(&claims(extra), &s, NOW).err();
        // Expiry is the caller's to judge, with its grace: a check's is zero, a report's more.
        let expired = |exp: u64, grace| {
            check_claims(&claims(json!({ "exp": exp })), &s, NOW)
                .expect("valid")
                .expired(NOW, grace)
        };
        assert!(expired(999_990, 0));
        assert!(!expired(999_996, 0), "within the leeway");
        assert!(!expired(999_990, 10_000_000), "within a report's grace");
        assert!(expired(999_990, 5_000_000), "past it");
        assert_eq!(reason(json!({"nbf": 1_000_010})), Some(Reason::NotYetValid));
        assert_eq!(reason(json!({"nbf": 1_000_004})), None, "within the leeway");
        assert_eq!(
            reason(json!({"iss": "https://other"})),
            Some(Reason::WrongIssuer)
        );
        assert_eq!(reason(json!({"aud": "web"})), Some(Reason::WrongAudience));
        assert_eq!(reason(json!({"aud": "api"})), None);
        assert_eq!(reason(json!({"exp": "soon"})), Some(Reason::Malformed));
        // GHSA-h395-gr6q-cpjc: a time claim of the wrong type must not be skipped.
        assert_eq!(reason(json!({"nbf": "1000000"})), Some(Reason::Malformed));
        assert_eq!(reason(json!({"nbf": "later"})), Some(Reason::Malformed));
        assert_eq!(
            reason(json!({"org": {"id": ""}})),
            Some(Reason::MissingClaim)
        );
        assert_eq!(reason(json!({"org": "acme"})), Some(Reason::MissingClaim));
        assert_eq!(reason(json!({"exp": null})), Some(Reason::Malformed));
        let mut no_exp = claims(json!({}));
        no_exp.as_object_mut().map(|c| c.remove("exp"));
        assert_eq!(
            check_claims(&no_exp, &s, NOW).err(),
            Some(Reason::MissingClaim)
        );
    }

    #[test]
    fn headers_name_known_algorithms_only() {
        let enc = |h: &str| format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(h));
        assert_eq!(
            header(&enc(r#"{"alg":"none"}"#)),
            Err(Reason::DisallowedAlgorithm)
        );
        assert_eq!(
            header(&enc(r#"{"alg":"HS512"}"#)),
            Err(Reason::DisallowedAlgorithm)
        );
        assert_eq!(
            header(&enc(r#"{"alg":"ES256","kid":"k"}"#)),
            Ok((JwtAlgorithm::ES256, Some("k".into())))
        );
        assert_eq!(
            header(&enc(r#"{"alg":"ES256","kid":"k","crit":["b64"]}"#)),
            Err(Reason::Malformed),
            "no critical extension is understood"
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.x", "e30.e30.x"] {
            assert_eq!(header(bad), Err(Reason::Malformed), "{bad}");
        }
    }
}
