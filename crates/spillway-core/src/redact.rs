//! Passwords in connection URLs, hidden before any text reaches a log or an error message.
//!
//! The places that show a URL a user gave mask it with [`mask_url`] or, for text that may be
//! mistyped or hold several URLs, [`mask_text`]: the policy's store and region errors and the
//! `Debug` form of its Redis settings, the Redis store's settings, the decision log's sink and
//! `spillway decisions`. The address of a service Spillway calls (a JWKS document, a trace
//! collector) is shown by [`mask_service_url`], which hides all user information and the
//! query.

use percent_encoding::percent_decode_str;
use url::{Host, Url};

/// `url` with its password replaced by `****` (`redis://user:****@host:6379`, and a unix
/// socket URL's `?pass=****`); a URL without one is returned as it is. Only the password
/// changes: the rest stays as written.
///
/// The URL is read as the Redis client reads it (the `url` crate). Text that crate refuses,
/// or that holds an `@` past the host, may be a URL whose password holds a raw `/`, `?` or
/// `#` (which ends the host for the parser): then everything before the last `@` after the
/// user name is taken for the password, so no piece of it is shown.
pub fn mask_url(url: &str) -> String {
    let Ok(parsed) = Url::parse(url) else {
        return mask_by_hand(&mask_pass_to_end(url));
    };
    if at_past_host(&parsed) {
        return mask_by_hand(&mask_pass_to_end(url));
    }
    // With no `@` past the host, the last `@` ends the user information, as the parser read
    // it: the hand rule cuts the password out exactly.
    let masked = if parsed.password().is_some() {
        mask_by_hand(url)
    } else {
        url.to_owned()
    };
    if parsed
        .query_pairs()
        .any(|(name, _)| is_password_param(&name))
    {
        mask_query(&masked)
    } else {
        masked
    }
}

/// `url`, the HTTP(S) address of a service Spillway calls (a JWKS document, a trace
/// collector), with all that may carry a secret hidden: the whole user information
/// (`https://****@host/`, since a token may stand as the user name) and the whole query
/// (`?****`, where signatures and access tokens go); a fragment is left out. Text that does not
/// parse as a URL with a host, or whose user information the parser may have cut short (an `@`
/// past the host), has everything between its scheme and its last `@` hidden (without a
/// scheme, it is masked as [`mask_text`] masks it), and its query too.
pub fn mask_service_url(url: &str) -> String {
    match Url::parse(url) {
        // An `@` past the host may end user information the parser cut short (a raw `#` or
        // `/` in it): masked by hand below, as `mask_url` does.
        Ok(mut parsed) if parsed.has_host() && !at_past_host(&parsed) => {
            let user = !parsed.username().is_empty() || parsed.password().is_some();
            if user {
                let _ = parsed.set_password(None);
                let _ = parsed.set_username("****");
            }
            if parsed.query().is_some() {
                parsed.set_query(Some("****"));
            }
            parsed.set_fragment(None);
            parsed.to_string()
        }
        _ => match (url.find("://"), url.rfind('@')) {
            // Everything between the scheme and the last `@` may be user information.
            (Some(scheme), Some(at)) if at > scheme + 3 => {
                format!("{}****{}", &url[..scheme + 3], without_query(&url[at..]))
            }
            _ => without_query(&mask_text(url)),
        },
    }
}

/// `text` with anything after a `?` hidden (`?****`) and a `#fragment` left out.
fn without_query(text: &str) -> String {
    match text.find(['?', '#']) {
        Some(at) if text[at..].starts_with('?') => format!("{}?****", &text[..at]),
        Some(at) => text[..at].to_owned(),
        None => text.to_owned(),
    }
}

/// Whether `url` holds an `@` past its host (in its path, query or fragment): likely a
/// password with a raw `/`, `?` or `#`, which ended the host early for the parser.
fn at_past_host(url: &Url) -> bool {
    [Some(url.path()), url.query(), url.fragment()]
        .into_iter()
        .flatten()
        .any(|part| part.contains('@'))
}

/// Whether a query parameter carries a password: the Redis client reads a unix socket URL's
/// login from `?user=...&pass=...`.
fn is_password_param(name: &str) -> bool {
    matches!(name, "pass" | "password")
}

/// `url` with the value of every password parameter of its query as `****`.
fn mask_query(url: &str) -> String {
    let Some((head, rest)) = url.split_once('?') else {
        return url.to_owned();
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (rest, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            let spaced = name.replace('+', " ");
            if is_password_param(&percent_decode_str(&spaced).decode_utf8_lossy()) {
                format!("{name}=****")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    let mut masked = format!("{head}?{}", pairs.join("&"));
    if let Some(fragment) = fragment {
        masked.push('#');
        masked.push_str(fragment);
    }
    masked
}

/// `url` with everything after its first `pass=` or `password=` parameter as `****`: for text
/// the parser does not read as [`mask_url`] expects, where a password parameter's value may
/// hold a raw `@`, `&` or `#` and so cannot be told from what follows it.
fn mask_pass_to_end(url: &str) -> String {
    let found = ["?pass=", "&pass=", "?password=", "&password="]
        .iter()
        .filter_map(|name| url.find(name).map(|at| at + name.len()))
        .min();
    match found {
        Some(value) => format!("{}****", &url[..value]),
        None => url.to_owned(),
    }
}

/// [`mask_url`] for text the URL parser does not read: the user information ends at the
/// last `@`, even one past the first `/`, `?` or `#`.
fn mask_by_hand(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:****@{host}"),
        None => url.to_owned(),
    }
}

/// Text a user gave for one or more Redis URLs (comma-separated, possibly mistyped), as an
/// error may show it: every password as `****`. A well-formed URL keeps its user name (see
/// [`mask_url`]); in a mistyped one (`redis:/`, `redis//`, no scheme) the password cannot be
/// told from the user name, so everything between the scheme-like start and the last `@`
/// becomes `****`. A comma starts a new URL only where one could start (a scheme-like word,
/// then `:/` or `//`): a password may hold commas, and `pa,ss@host` must not show `pa`.
pub fn mask_text(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut start = 0;
    for (i, _) in text.match_indices(',') {
        let next = &text[i + 1..];
        let word = scheme_len(next);
        if word > 0 && (next[word..].starts_with(":/") || next[word..].starts_with("//")) {
            masked.push_str(&mask_part(&text[start..i]));
            masked.push(',');
            start = i + 1;
        }
    }
    masked.push_str(&mask_part(&text[start..]));
    masked
}

/// The length of `text`'s scheme-like start: letters, digits and `+.-`.
fn scheme_len(text: &str) -> usize {
    text.find(|c: char| !(c.is_ascii_alphanumeric() || "+.-".contains(c)))
        .unwrap_or(text.len())
}

fn mask_part(part: &str) -> String {
    if part.contains("://") {
        let shown = mask_url(part);
        if shown != part {
            return shown;
        }
    }
    let Some(at) = part.rfind('@') else {
        return part.to_owned();
    };
    // After the scheme-like word, any `:` and `/` belong to the start that stays shown.
    let word = scheme_len(part);
    let start = part[word..]
        .find(|c: char| c != ':' && c != '/')
        .map_or(part.len(), |i| word + i);
    let start = if start >= at || start == word {
        0
    } else {
        start
    };
    format!("{}****{}", &part[..start], &part[at..])
}

/// Why `url` cannot name a Redis server, its password masked; `None` for a `redis://` URL.
/// `rediss://` (TLS) is refused by name: this build's Redis client has no TLS, so such a URL
/// would only fail later, at connection, as if the server were down.
pub fn not_redis_url(url: &str) -> Option<String> {
    if url.starts_with("redis://") {
        None
    } else if url.starts_with("rediss://") {
        Some(format!(
            "`{}`: rediss:// (TLS) is not supported by this build; use redis://",
            mask_url(url)
        ))
    } else {
        // Not read as a URL: a mistyped scheme (`redis:/`, none at all) still hides its
        // password, as any text given for a URL does.
        Some(format!("`{}` is not a redis:// URL", mask_text(url)))
    }
}

/// Seed nodes of one cluster whose logins differ, as [`seeds_disagree`] finds them: the
/// first seed and the first other one whose login differs from it, by `host:port`, never a
/// password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedsDisagree {
    /// The first seed's `host:port`.
    pub first: String,
    /// The `host:port` of the first seed whose login differs from the first's.
    pub other: String,
    /// That seed's place in the list.
    pub index: usize,
    /// `username` or `password`.
    pub what: &'static str,
}

impl std::fmt::Display for SeedsDisagree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the cluster's seed nodes disagree on the login: {} and {} give different {}s; one \
             cluster has one login, give every seed node the same",
            self.first, self.other, self.what
        )
    }
}

/// Whether the seed node URLs of one cluster give different logins. The cluster client logs
/// in on every node with one username and password and refuses seeds that differ, with an
/// error that reads like a failed connection; the difference is a setting to fix, said before
/// any connection. The login is read as the client reads it: the user information percent-
/// decoded, a login only with a password, and then as `default` when the URL names no user
/// (`redis://:pw@a` and `redis://default:pw@b` give one login). URLs that are not `redis://`
/// are left out (they are refused by name elsewhere).
pub fn seeds_disagree<S: AsRef<str>>(urls: &[S]) -> Option<SeedsDisagree> {
    let logins: Vec<(usize, SeedLogin)> = urls
        .iter()
        .enumerate()
        .filter_map(|(i, url)| seed_login(url.as_ref()).map(|l| (i, l)))
        .collect();
    let (_, first) = logins.first()?;
    logins[1..].iter().find_map(|(index, seed)| {
        let what = if seed.password != first.password {
            "password"
        } else if seed.user != first.user {
            "username"
        } else {
            return None;
        };
        Some(SeedsDisagree {
            first: first.addr.clone(),
            other: seed.addr.clone(),
            index: *index,
            what,
        })
    })
}

/// The login a `redis://` URL gives and the server it names.
struct SeedLogin {
    /// `host:port`, the port 6379 when none is written.
    addr: String,
    user: Option<String>,
    password: Option<String>,
}

fn seed_login(text: &str) -> Option<SeedLogin> {
    let url = Url::parse(text).ok().filter(|u| u.scheme() == "redis")?;
    // An `@` past the host is a password holding a raw `/`, `?` or `#`, which ends the host
    // for the parser: no login the client reads (it is left to the client's own error), and
    // reading it here would take the start of the password for the server's address and
    // print it.
    if at_past_host(&url) {
        return None;
    }
    let host = match url.host()? {
        Host::Domain(name) => name.to_owned(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => format!("[{ip}]"),
    };
    let decoded = |part: &str| percent_decode_str(part).decode_utf8_lossy().into_owned();
    let password = url.password().map(decoded).filter(|p| !p.is_empty());
    let user = password.as_ref().map(|_| {
        Some(decoded(url.username()))
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "default".to_owned())
    });
    Some(SeedLogin {
        addr: format!("{host}:{}", url.port().unwrap_or(6379)),
        user,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_url_shows_neither_its_user_information_nor_its_query() {
        for (url, shown) in [
            ("https://auth.example.com/k", "https://auth.example.com/k"),
            (
                "https://issuer:s3cret@auth.example.com/k",
                "https://****@auth.example.com/k",
            ),
            (
                "https://TOKEN@auth.example.com/k",
                "https://****@auth.example.com/k",
            ),
            (
                "https://auth.example.com/k?sig=abc&x=1",
                "https://auth.example.com/k?****",
            ),
            ("http://collector:4317", "http://collector:4317/"),
            // Mistyped: no scheme, so the user name looks like one.
            (
                "issuer:s3cret@auth.example.com/k",
                "issuer:****@auth.example.com/k",
            ),
            ("not a url?token=abc", "not a url?****"),
            // A raw `#` or `/` in the user information cut it short for the parser.
            ("https://tok#en@host/k", "https://****@host/k"),
            ("https://u/x:s3cret@host/k", "https://****@host/k"),
            ("https://host/k#frag", "https://host/k"),
        ] {
            assert_eq!(mask_service_url(url), shown, "{url}");
            assert!(!mask_service_url(url).contains("s3cret"));
        }
    }

    #[test]
    fn mistyped_urls_are_shown_without_their_passwords() {
        for (text, shown) in [
            ("redis:/:s3cret@h:1", "redis:/:****@h:1"),
            ("redis//user:s3cret@h:1", "redis//****@h:1"),
            ("redis:s3cret@h", "redis:****@h"),
            ("http://u:s3cret@h", "http://u:****@h"),
            ("s3cret@h", "****@h"),
            (
                "redis://u:s3cret@a,redis:/u:s3cret@b",
                "redis://u:****@a,redis:/****@b",
            ),
            (
                "sentinel:m@redis://u:s3cret@a",
                "sentinel:m@redis://u:****@a",
            ),
            ("stdout", "stdout"),
        ] {
            assert_eq!(mask_text(text), shown, "{text}");
        }
        // A password holding commas (legal in a URL's user part) is hidden whole.
        for text in [
            "redis://u:s3c,ret@h:1",
            "redis:/u:s3c,ret@h:1",
            "cluster+redis://u:s3c,ret@a,redis://u:s3c,x:ret@b",
        ] {
            let shown = mask_text(text);
            assert!(
                !shown.contains("s3c") && !shown.contains("ret@") && shown.contains("****@"),
                "{text} shown as {shown}"
            );
        }
    }

    #[test]
    fn seeds_disagree_on_the_login_as_the_client_reads_it() {
        // One login, written several ways.
        let one = [
            "redis://:pw@a:1",
            "redis://default:pw@b:2",
            "redis://default:p%77@c:3/0",
        ];
        assert_eq!(seeds_disagree(&one), None);
        // No password: no login, whatever the user.
        assert_eq!(seeds_disagree(&["redis://a:1", "redis://app@b:2"]), None);
        let differ = |urls: &[&str]| seeds_disagree(urls).expect("disagree");
        let told = differ(&["redis://:s3cret@a:1", "redis://b", "redis://:s3cret@c:3"]);
        assert_eq!(
            (
                told.first.as_str(),
                told.other.as_str(),
                told.index,
                told.what
            ),
            ("a:1", "b:6379", 1, "password")
        );
        let told = differ(&["redis://app:pw@a:1", "redis://:pw@b:2"]);
        assert_eq!((told.index, told.what), (1, "username"));
        let text = differ(&["redis://:s3cret@a:1", "redis://:typo@b:2"]).to_string();
        assert!(
            text.contains("a:1 and b:2 give different passwords")
                && !text.contains("s3cret")
                && !text.contains("typo"),
            "{text}"
        );
    }

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(
            mask_url("redis://:s3cr3t@10.0.0.1:6379/0"),
            "redis://:****@10.0.0.1:6379/0"
        );
        assert_eq!(
            mask_url("rediss://app:p@ss@h:1"),
            "rediss://app:****@h:1",
            "a raw `@` in the password"
        );
        assert_eq!(mask_url("redis://app@h:1"), "redis://app@h:1");
        assert_eq!(mask_url("redis://h:1"), "redis://h:1");
        assert_eq!(mask_url("not a url"), "not a url");
    }

    #[test]
    fn every_form_of_redis_url_is_shown_without_its_password() {
        for (url, shown) in [
            // A password holding raw `/`, `?`, `#` (the parser ends the host there) or `@`.
            ("redis://u:pa/ss@h:1", "redis://u:****@h:1"),
            ("redis://u:pa?ss@h:1/0", "redis://u:****@h:1/0"),
            ("redis://u:pa#ss@h:1", "redis://u:****@h:1"),
            ("redis://:12/ss@h:1", "redis://:****@h:1"),
            ("redis://u:12#ss@h:1", "redis://u:****@h:1"),
            ("redis://u:p@s@s@h:1", "redis://u:****@h:1"),
            // Percent-escapes, in the password and the user name.
            ("redis://u%40x:p%2Fss%3F@h:1", "redis://u%40x:****@h:1"),
            // IPv6 hosts, with and without a port.
            (
                "redis://u:s3cret@[::1]:6379/0",
                "redis://u:****@[::1]:6379/0",
            ),
            ("redis://:s3cret@[fe80::1]", "redis://:****@[fe80::1]"),
            ("rediss://u:s3cret@h:6380", "rediss://u:****@h:6380"),
            // A unix socket's login is in its query.
            (
                "unix:///run/redis.sock?db=1&user=u&pass=s3cret",
                "unix:///run/redis.sock?db=1&user=u&pass=****",
            ),
            (
                "redis+unix:///run/redis.sock?pass=s3cret",
                "redis+unix:///run/redis.sock?pass=****",
            ),
            (
                "unix:///s?db=0&pa%73s=s3c%26ret&password=x#f",
                "unix:///s?db=0&pa%73s=****&password=****#f",
            ),
            // Nothing to hide: left as written.
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
            ("redis://u@h:1", "redis://u@h:1"),
            ("redis://[::1]:1", "redis://[::1]:1"),
            ("redis://H:1/0", "redis://H:1/0"),
        ] {
            assert_eq!(mask_url(url), shown, "{url}");
            if shown.contains("****") {
                assert_eq!(mask_text(url), shown, "{url}");
            }
        }
    }

    #[test]
    fn seeds_are_read_as_the_client_reads_them() {
        // Percent-escapes are decoded before logins are compared, in users and passwords.
        assert_eq!(
            seeds_disagree(&["redis://u%40x:p%2Fw@a:1", "redis://u@x:p/w@b:2"]),
            None,
            "a raw `/` is no URL the client reads: left out"
        );
        assert_eq!(
            seeds_disagree(&["redis://u%40x:p%2Fw@a:1", "redis://u%40x:p%2fw@b:2"]),
            None
        );
        let told = seeds_disagree(&["redis://u%40x:pw@a:1", "redis://u%40y:pw@b:2"]);
        assert_eq!(told.map(|t| t.what), Some("username"));
        // IPv6 seeds are named with their brackets and port.
        let told = seeds_disagree(&["redis://:s3cret@[::1]:7000", "redis://:other@[::2]"])
            .expect("disagree");
        assert_eq!(
            (told.first.as_str(), told.other.as_str()),
            ("[::1]:7000", "[::2]:6379")
        );
        // Not redis:// (refused by name elsewhere): left out.
        for other in [
            "rediss://:x@b:2",
            "unix:///run/redis.sock?pass=x",
            "b:2",
            "redis:/:x@b:2",
        ] {
            assert_eq!(
                seeds_disagree(&["redis://:s3cret@a:1", other]),
                None,
                "{other}"
            );
        }
        // A password with a raw `/`, `?` or `#` is no URL the client reads: left out, never
        // printed (not even when its start reads as a port, as the server's address).
        for pair in [
            ["redis://:pa/ss@a:1", "redis://:x@b:2"],
            ["redis://:x@b:2", "redis://:pa?ss@a:1"],
            ["redis://:12/ss@a:1", "redis://:x@b:2"],
            ["redis://:x@b:2", "redis://:34#ss@a:1"],
        ] {
            assert_eq!(seeds_disagree(&pair), None, "{pair:?}");
        }
    }

    #[test]
    fn no_refusal_shows_a_password() {
        const SECRETS: [&str; 3] = ["s3cret", "Pw", "123"];
        for url in [
            "rediss://u:s3cret@h:1",
            "rediss://u:Pw/ss@h:1",
            "http://u:Pw?ss@h",
            "unix:///run/redis.sock?pass=s3cret",
            "redis+unix:///s?user=u&pass=s3cret",
            "unix://u:Pw#ss@/s",
            "valkey://:123/ss@h:1",
            "redis:/app:s3cret@h:6379",
            "app:s3cret@h:6379",
            ":s3cret@h",
            "unix:///s?pass=Pw@ss123",
            "unix:///s?pass=Pw@ss&password=s3cret",
        ] {
            let told = not_redis_url(url).expect("refused");
            assert!(
                !SECRETS.iter().any(|s| told.contains(s)) && told.contains("****"),
                "{url} told as {told}"
            );
        }
        let told = seeds_disagree(&["redis://:s3cret@a:1", "redis://:9876@[::1]:2"])
            .expect("disagree")
            .to_string();
        assert!(
            told.contains("a:1 and [::1]:2") && !told.contains("s3cret") && !told.contains("9876"),
            "{told}"
        );
    }

    #[test]
    fn only_plain_redis_urls_are_taken_and_refusals_hide_passwords() {
        assert_eq!(not_redis_url("redis://u:s3cret@h:1"), None);
        let tls = not_redis_url("rediss://u:s3cret@h:1").unwrap();
        assert!(tls.contains("TLS") && tls.contains("u:****@h:1"), "{tls}");
        let other = not_redis_url("http://u:s3cret@h").unwrap();
        assert!(
            other.contains("not a redis:// URL") && !other.contains("s3cret"),
            "{other}"
        );
    }

    #[test]
    fn the_policys_redis_settings_debug_without_passwords() {
        let settings = crate::policy::RedisSettings {
            urls: vec!["redis://app:s3cret@h:1".into()],
            ..Default::default()
        };
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("redis://app:****@h:1"),
            "{shown}"
        );
    }
}
