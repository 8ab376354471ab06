//! The extraction path under hostile input: arbitrary bytes in every credential header and
//! arbitrary JSON-ish tokens must give a principal or a reason, never a panic; and how a
//! principal is laid over what a request says about itself.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proptest::prelude::*;
use serde_json::{json, Value};
use spillway_core::policy::Policy;

fn policy() -> Policy {
    policy_with("  request_may_name: [user]\n")
}

/// The test policy with `may_name` (a `request_may_name` line, or nothing) in its principals.
fn policy_with(may_name: &str) -> Policy {
    let jwks = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/principal/jwks.json"
    );
    let text = format!(
        "default_tier: free
limits:
  per-ip: {{algorithm: fixed_window, limit: 5, window: 1m, key: [ip]}}
tiers:
  free: {{}}
  anonymous: {{limits: [per-ip]}}
principals:
{may_name}  jwt:
    cookie: session
    jwks_file: {jwks}
    algorithms: [HS256, RS256, ES256, EdDSA]
    issuer: https://issuer
    claims: {{tenant: org.id, user: sub, tier: plan}}
  api_key: {{}}
  subdomain: {{base: example.com}}
"
    );
    Policy::from_yaml_str(&text, "test").expect("valid policy")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// A token built from arbitrary header and claims JSON and an arbitrary signature.
fn tokenish() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
    ];
    let json = scalar.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("alg".to_owned()),
                    Just("kid".to_owned()),
                    Just("exp".to_owned()),
                    Just("org".to_owned()),
                    "[a-z]{1,4}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let alg = prop_oneof![
        Just("none"),
        Just("HS256"),
        Just("RS256"),
        Just("ES256"),
        Just("EdDSA"),
        Just("HS512")
    ];
    let kid = prop_oneof![Just("rsa-1"), Just("hs-1"), Just("ed-1"), Just("zzz")];
    (
        alg,
        kid,
        json.clone(),
        json,
        prop::collection::vec(any::<u8>(), 0..96),
    )
        .prop_map(|(alg, kid, extra, claims, sig)| {
            let header = json!({"alg": alg, "kid": kid, "x": extra});
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string()),
                URL_SAFE_NO_PAD.encode(sig)
            )
        })
}

/// Any byte a header value may hold (tab, visible ASCII and space, and every byte from 0x80),
/// so the values are really inserted and reach the parsers.
fn header_byte() -> impl Strategy<Value = u8> {
    prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_header_bytes_never_panic(
        cookie in prop::collection::vec(header_byte(), 0..200),
        key in prop::collection::vec(header_byte(), 0..200),
        host in prop::collection::vec(header_byte(), 0..100),
    ) {
        let policy = policy();
        let config = policy.principals().expect("configured");
        let mut headers = http::HeaderMap::new();
        for (name, bytes) in [("cookie", cookie), ("x-api-key", key), ("host", host)] {
            if let Ok(value) = http::HeaderValue::from_bytes(&bytes) {
                headers.insert(name, value);
            }
        }
        let state = PrincipalState::new();
        let rt = runtime();
        let presented = presented(&headers, config);
        let outcome = rt.block_on(state.identify(&policy, &presented, 0));
        prop_assert!(outcome.is_some());
    }

    #[test]
    fn arbitrary_tokens_never_panic_and_never_verify(
        token in prop_oneof![tokenish(), ".{0,300}"],
    ) {
        let policy = policy();
        let state = PrincipalState::new();
        let presented = Presented { token: Some(&token), ..Presented::default() };
        let outcome = runtime().block_on(state.identify(&policy, &presented, 0));
        // Nothing unsigned or forged gets through.
        prop_assert!(matches!(outcome, Some(Err(_))), "{outcome:?}");
    }
}

#[test]
fn a_principal_overrides_the_request_except_where_it_may_name() {
    let policy = policy();
    let config = policy.principals().expect("configured");
    let mut attrs = RequestAttrs {
        tenant: Some("b".into()),
        user: Some("u-own".into()),
        tier: Some("enterprise".into()),
        ..RequestAttrs::default()
    };
    let principal = Principal {
        tenant: Some("a".into()),
        user: None,
        tier: None,
    };
    apply(
        &Identity::Verified(principal, Source::Jwt),
        config,
        &mut attrs,
    );
    assert_eq!(attrs.tenant.as_deref(), Some("a"));
    // `request_may_name: [user]`: the principal names no user, so the request's stands.
    assert_eq!(attrs.user.as_deref(), Some("u-own"));
    assert_eq!(attrs.tier, None, "a request may not pick its tier");
    apply(&Identity::Anonymous("anonymous".into()), config, &mut attrs);
    assert_eq!(
        (attrs.tenant, attrs.user, attrs.tier.as_deref()),
        (None, None, Some("anonymous"))
    );
}

/// A token naming no user, where the user comes from a claim: refused as `missing_claim`
/// (every per-user limit would pass it by), unless the request may name its user.
#[test]
fn a_token_without_its_user_claim_is_refused_unless_the_request_may_name_one() {
    let no_user = Principal {
        tenant: Some("a".into()),
        user: None,
        tier: None,
    };
    let may_name = policy();
    let config = may_name.principals().expect("configured");
    assert_eq!(
        lacks_user(config, &no_user),
        Ok(()),
        "request_may_name: [user]"
    );
    let strict = policy_with("");
    let config = strict.principals().expect("configured");
    assert_eq!(lacks_user(config, &no_user), Err(Reason::MissingClaim));
    let named = Principal {
        user: Some("u".into()),
        ..no_user
    };
    assert_eq!(lacks_user(config, &named), Ok(()));
}

#[test]
fn credentials_are_read_from_bearer_headers_and_cookies() {
    assert_eq!(bearer("Bearer abc"), "abc");
    assert_eq!(bearer("bearer  abc "), "abc");
    assert_eq!(bearer("Bearer"), "");
    assert_eq!(bearer("abc"), "abc");
    assert_eq!(cookie(b" session=\"tok\" ", "session"), Some(&b"tok"[..]));
    assert_eq!(cookie(b"session =tok", "session"), Some(&b"tok"[..]));
    // PHP reads `.` and a space in a name as `_`; ASP.NET Core ignores case.
    assert_eq!(cookie(b"access.token=x", "access_token"), Some(&b"x"[..]));
    assert_eq!(cookie(b"Access_Token=x", "access_token"), Some(&b"x"[..]));
    assert_eq!(cookie(b"a=1", "session"), None);
    assert_eq!(cookie(b"sessionx=1", "session"), None);
    // Django and Starlette strip Unicode white space from the name: `\xa0` as Latin-1, U+00A0
    // and U+3000 in UTF-8, a byte order mark; older PHP and Rack decode `%XX` in it.
    for name in [
        &b"\xa0session"[..],
        b"session\x85",
        b"\x1f session",
        b"\xc2\xa0session\xe3\x80\x80",
        b"\xef\xbb\xbfsession",
        b"sess%69on",
        b"%73ession",
        // UTF-8 white space at the end (its last byte is \xa0 or \x85 alone in Latin-1).
        b"session\xc2\xa0",
        b"session\xe2\x80\x85",
        // Older PHP: `+` a space, leading spaces after decoding, a NUL ending the name.
        b"+session",
        b"%20session",
        b"session%00x",
    ] {
        let pair = [name, b"=tok"].concat();
        assert_eq!(cookie(&pair, "session"), Some(&b"tok"[..]), "{pair:?}");
    }
    // PHP reads `[` as `_` too.
    assert_eq!(cookie(b"access[token=x", "access_token"), Some(&b"x"[..]));
    assert_eq!(cookie(b"access+token=x", "access_token"), Some(&b"x"[..]));
    for name in [
        &b"se\xa0ssion"[..],
        b"session%",
        b"session%6",
        b"\xc2session",
        b"%00session",
        b" s ession",
    ] {
        let pair = [name, b"=tok"].concat();
        assert_eq!(cookie(&pair, "session"), None, "{pair:?}");
    }
    let policy = policy();
    let config = policy.principals().expect("configured");
    let token_of = |lines: &[&'static str]| {
        let mut headers = http::HeaderMap::new();
        for line in lines {
            headers.append("cookie", http::HeaderValue::from_static(line));
        }
        let presented = presented(&headers, config);
        let owned = |t: Option<&str>| t.map(str::to_owned);
        (
            owned(presented.token),
            owned(presented.second_token),
            presented.malformed.token,
        )
    };
    let found = |token: &str| (Some(token.to_owned()), None, false);
    assert_eq!(token_of(&["a=1; session=tok; b=2"]), found("tok"));
    assert_eq!(token_of(&["a=1", "session=tok"]), found("tok"));
    // The same value twice is one token; an empty one is none (and hides none after it).
    assert_eq!(token_of(&["session=tok; session=tok"]), found("tok"));
    assert_eq!(token_of(&["session=; session=tok"]), found("tok"));
    // Two different ones: the second is kept aside, to be taken only if both could be the
    // caller (`one_of_two`); a third is malformed.
    let two = (Some("mine".to_owned()), Some("theirs".to_owned()), false);
    assert_eq!(token_of(&["session=mine; session=theirs"]), two);
    assert_eq!(token_of(&["session=mine", "a=1; session=theirs"]), two);
    // Django strips the name: `session =theirs` is the same cookie; ASP.NET Core splits at
    // commas too and ignores case.
    assert_eq!(token_of(&["session=mine; session =theirs"]), two);
    assert_eq!(token_of(&["session=mine; x=1, session=theirs"]), two);
    assert_eq!(token_of(&["session=mine; SESSION=theirs"]), two);
    let three = token_of(&["session=mine; session=theirs; session=more"]);
    assert_eq!(three, (None, None, true));
    // A line with bytes that are not text still shows its token cookie.
    let mut headers = http::HeaderMap::new();
    headers.append("cookie", http::HeaderValue::from_static("session=mine"));
    let other = http::HeaderValue::from_bytes(b"x=\xff; session=theirs").expect("a value");
    headers.append("cookie", other);
    assert_eq!(presented(&headers, config).second_token, Some("theirs"));
    // A token cookie whose name a backend reads as the token's is the token, not no token (the
    // caller would be counted as anonymous while served as the token's tenant).
    let mut headers = http::HeaderMap::new();
    let hidden = http::HeaderValue::from_bytes(b"\xa0session=tok").expect("a value");
    headers.append("cookie", hidden);
    assert_eq!(presented(&headers, config).token, Some("tok"));
}

#[test]
fn of_two_token_cookies_only_one_caller_is_taken() {
    let caller = |tenant: &str| Principal {
        tenant: Some(tenant.into()),
        user: None,
        tier: None,
    };
    let (a, b) = (Ok(caller("a")), Ok(caller("b")));
    let (expired, forged) = (Err(Reason::Expired), Err(Reason::BadSignature));
    assert_eq!(one_of_two(&a, &a), Ok(First));
    assert_eq!(one_of_two(&a, &expired), Ok(First));
    assert_eq!(one_of_two(&expired, &a), Ok(Second));
    assert_eq!(one_of_two(&a, &b), Err(Reason::Malformed));
    assert_eq!(one_of_two(&a, &forged), Err(Reason::Malformed));
    assert_eq!(one_of_two(&expired, &expired), Err(Reason::Expired));
    assert_eq!(one_of_two(&forged, &a), Err(Reason::Malformed));
    // A token not checked at all (its address out of budget) cannot be told apart.
    let held = Err(Reason::TooManyFailures);
    assert_eq!(one_of_two(&a, &held), Err(Reason::TooManyFailures));
    assert_eq!(one_of_two(&held, &expired), Err(Reason::TooManyFailures));
}
