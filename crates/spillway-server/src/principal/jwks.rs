//! Verification keys: a JWKS document read from a file or fetched from a URL, each key pinned
//! to one algorithm.
//!
//! A key's algorithm is its JWK `alg` when given, else the one its type implies (`RSA` →
//! RS256, `EC` P-256 → ES256, `OKP` Ed25519 → EdDSA, `oct` → HS256); a key whose algorithm
//! the policy does not list, whose `alg` contradicts its type, or whose `use` is not `sig` is
//! left out. A token must then be signed with exactly its key's algorithm, so an RSA public key
//! can never be used as an HMAC secret (algorithm confusion).
//!
//! A URL is fetched when the verifier is built and again when a token names a key id the set
//! does not hold, at most once per `refresh`: a flood of tokens with made-up key ids costs one
//! fetch per interval, not one per request. A set older than `refresh` is also fetched again
//! in the background when a token has to be verified, so withdrawn keys do not linger.

use super::metrics;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use spillway_core::policy::principal::{JwtAlgorithm, KeySource};
use spillway_core::text::printable;
use spillway_core::time::Micros;
use std::sync::Arc;
use std::time::Duration;

/// How long one fetch of a JWKS URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read.
const MAX_DOCUMENT: usize = 1 << 20;

/// One usable key.
pub struct Key {
    /// Its `kid`, if it has one.
    pub kid: Option<String>,
    /// The one algorithm it verifies.
    pub alg: JwtAlgorithm,
    /// The key in the form the verifier takes.
    pub decoding: DecodingKey,
}

/// The keys of one JWKS document.
#[derive(Default)]
pub struct KeySet {
    /// The usable keys, in document order.
    pub keys: Vec<Key>,
}

impl KeySet {
    /// The key a token with this header should be checked with: the one with its `kid`, or,
    /// for a token without one, the only key of its algorithm.
    pub fn find(&self, kid: Option<&str>, alg: JwtAlgorithm) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut same = self.keys.iter().filter(|k| k.alg == alg);
                let first = same.next()?;
                same.next().is_none().then_some(first)
            }
        }
    }

    /// Whether a key with this id is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<RawJwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

/// Reads a JWKS document; keys that cannot be used are left out with a warning naming them
/// (never their material). Fails only when the document itself is not a JWKS.
pub fn parse(text: &[u8], allowed: &[JwtAlgorithm]) -> Result<KeySet, String> {
    let doc: Document =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut set = KeySet::default();
    for (i, jwk) in doc.keys.into_iter().enumerate() {
        let name = jwk.kid.clone().unwrap_or_else(|| format!("keys[{i}]"));
        match key(jwk, allowed) {
            Ok(key) => set.keys.push(key),
            // The document is the identity provider's text, not ours.
            Err(why) => tracing::warn!(
                "JWKS key `{}` is not used: {}",
                printable(&name),
                printable(&why)
            ),
        }
    }
    Ok(set)
}

fn key(jwk: RawJwk, allowed: &[JwtAlgorithm]) -> Result<Key, String> {
    if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
        return Err("its `use` is not `sig`".into());
    }
    let implied = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => JwtAlgorithm::RS256,
        ("EC", Some("P-256")) => JwtAlgorithm::ES256,
        ("OKP", Some("Ed25519")) => JwtAlgorithm::EdDSA,
        ("oct", _) => JwtAlgorithm::HS256,
        (kty, crv) => return Err(format!("unsupported key type `{kty}` (curve {crv:?})")),
    };
    if let Some(alg) = jwk.alg.as_deref() {
        if JwtAlgorithm::from_name(alg) != Some(implied) {
            return Err(format!("`alg` {alg} does not fit a `{}` key", jwk.kty));
        }
    }
    if !allowed.contains(&implied) {
        return Err(format!(
            "{} is not among the policy's algorithms",
            implied.as_str()
        ));
    }
    let need = |v: Option<String>, field: &str| v.ok_or_else(|| format!("`{field}` is missing"));
    let bad = |e: jsonwebtoken::errors::Error| format!("malformed key: {e}");
    let decoding = match implied {
        JwtAlgorithm::RS256 => {
            DecodingKey::from_rsa_components(&need(jwk.n, "n")?, &need(jwk.e, "e")?).map_err(bad)?
        }
        JwtAlgorithm::ES256 => {
            DecodingKey::from_ec_components(&need(jwk.x, "x")?, &need(jwk.y, "y")?).map_err(bad)?
        }
        JwtAlgorithm::EdDSA => DecodingKey::from_ed_components(&need(jwk.x, "x")?).map_err(bad)?,
        JwtAlgorithm::HS256 => {
            let secret = URL_SAFE_NO_PAD
                .decode(need(jwk.k, "k")?.trim_end_matches('='))
                .map_err(|e| format!("`k` is not base64url: {e}"))?;
            if secret.len() < 32 {
                return Err("an HS256 secret needs at least 32 bytes".into());
            }
            DecodingKey::from_secret(&secret)
        }
    };
    Ok(Key {
        kid: jwk.kid,
        alg: implied,
        decoding,
    })
}

/// Where a verifier's keys come from, and the last set read.
pub struct Keys {
    source: KeySource,
    allowed: Vec<JwtAlgorithm>,
    current: arc_swap::ArcSwap<KeySet>,
    /// When the URL was last fetched (server clock); `None` before the first fetch.
    fetched: tokio::sync::Mutex<Option<Micros>>,
    /// The HTTP client (no redirects, a timeout); an error when it could not be built.
    client: Result<reqwest::Client, String>,
}

/// How soon a failed fetch is tried again (not a whole refresh interval later).
pub const RETRY_AFTER: Micros = 5_000_000;

impl Keys {
    /// Reads the keys once (a file, or a first fetch of the URL). A source that cannot be
    /// read leaves the set empty, with an error logged: every token is then `unknown_key`,
    /// and a URL is tried again on the next token (once per refresh interval).
    pub async fn load(source: &KeySource, allowed: &[JwtAlgorithm], now: Micros) -> Self {
        let keys = Self {
            source: source.clone(),
            allowed: allowed.to_vec(),
            current: arc_swap::ArcSwap::from_pointee(KeySet::default()),
            fetched: tokio::sync::Mutex::new(None),
            client: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}")),
        };
        match source {
            KeySource::File(path) => match std::fs::read(path) {
                Ok(text) => match parse(&text, allowed) {
                    Ok(set) => keys.current.store(Arc::new(set)),
                    Err(why) => tracing::error!("JWKS file {path}: {why}"),
                },
                Err(e) => tracing::error!("cannot read the JWKS file {path}: {e}"),
            },
            KeySource::Url { .. } => {
                keys.refetch(now).await;
            }
        }
        keys
    }

    /// The keys now.
    pub fn current(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    /// Whether a URL's keys are older than the refresh interval (and no fetch is under way):
    /// time to fetch them again in the background, so a key the issuer withdrew stops
    /// verifying within about one interval.
    pub fn stale(&self, now: Micros) -> bool {
        let KeySource::Url { refresh, .. } = &self.source else {
            return false;
        };
        match self.fetched.try_lock() {
            Ok(last) => last.is_none_or(|at| now.saturating_sub(at) >= *refresh),
            Err(_) => false,
        }
    }

    /// Fetches the URL again if the last fetch is at least one refresh interval old (or
    /// failed to happen); returns whether the set was replaced. Callers waiting on one fetch
    /// share it: the second finds the interval not yet passed.
    pub async fn refetch(&self, now: Micros) -> bool {
        let KeySource::Url { url, refresh } = &self.source else {
            return false;
        };
        let mut last = self.fetched.lock().await;
        if last.is_some_and(|at| now.saturating_sub(at) < *refresh) {
            return false;
        }
        *last = Some(now);
        metrics::record_jwks_fetch();
        match self.fetch(url).await {
            Ok(set) => {
                self.current.store(Arc::new(set));
                true
            }
            Err(why) => {
                let url = spillway_core::redact::mask_service_url(url);
                tracing::warn!("JWKS URL {url}: {why}");
                // Try again soon rather than a whole interval later.
                *last = Some(now.saturating_sub(refresh.saturating_sub(RETRY_AFTER)));
                false
            }
        }
    }

    async fn fetch(&self, url: &str) -> Result<KeySet, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        // The caller names the URL, with its password masked: the error must not repeat it.
        let error = |e: reqwest::Error| e.without_url().to_string();
        let mut response = client.get(url).send().await.map_err(error)?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        // Read in chunks and stop at the cap, so a huge answer is never held whole.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(error)? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(format!("the document is larger than {MAX_DOCUMENT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse(&body, &self.allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[JwtAlgorithm] = &[
        JwtAlgorithm::HS256,
        JwtAlgorithm::RS256,
        JwtAlgorithm::ES256,
        JwtAlgorithm::EdDSA,
    ];

    #[test]
    fn keys_are_pinned_to_the_algorithm_their_type_implies() {
        let doc = br#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"OKP","crv":"Ed25519","kid":"lies","alg":"RS256","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"oct","kid":"short","k":"c2hvcnQ"},
            {"kty":"oct","kid":"enc","use":"enc","k":"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE"},
            {"kty":"oct","kid":"hs","k":"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE"}
        ]}"#;
        let set = parse(doc, ALL).expect("a JWKS");
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, vec![Some("ed"), Some("hs")]);
        assert_eq!(set.keys[0].alg, JwtAlgorithm::EdDSA);
        assert!(set.find(Some("ed"), JwtAlgorithm::EdDSA).is_some());
        assert!(set.find(None, JwtAlgorithm::HS256).is_some());
        // Not allowed by the policy: left out.
        let set = parse(doc, &[JwtAlgorithm::RS256]).expect("a JWKS");
        assert!(set.keys.is_empty());
    }

    #[test]
    fn garbage_is_not_a_key_set() {
        assert!(parse(b"{}", ALL).is_err());
        assert!(parse(b"\xff", ALL).is_err());
        let set = parse(br#"{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}"#, ALL).expect("doc");
        assert!(set.keys.is_empty());
    }
}
