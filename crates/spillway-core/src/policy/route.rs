//! Route patterns: `METHOD /path/with/*/and/**`, parsed once at load and matched per request
//! without allocating or using regular expressions.
//!
//! A pattern is a method (or `*` for any) and a path made of `/`-separated segments. A
//! segment is literal text, `*` (exactly one segment, whatever it holds) or, as the last
//! segment only, `**` (whatever remains, including nothing). Literal segments compare
//! exactly; the method compares without regard to ASCII case. A request path's `?query` is
//! ignored.
//!
//! A request path is read the way the most lenient server behind the proxy might read it, so
//! that spelling a path differently cannot slip past a route's cost and limits: `/`, `\` and
//! their escapes `%2F` and `%5C` all separate segments; empty segments (`//`, a trailing `/`)
//! and `.` are skipped; `..` removes the segment before it; other percent-escapes are decoded
//! before comparing (`/v1/%67enerate` is `/v1/generate`). Patterns are read the same way when
//! the policy loads (`GET /a/` is `GET /a`), except that `..` is refused in them.

use smallvec::SmallVec;
use std::fmt;

/// The bytes `raw` stands for, its percent-escapes decoded. A `%` not followed by two hex
/// digits stands for itself.
fn decoded(raw: &str) -> impl Iterator<Item = u8> + '_ {
    let bytes = raw.as_bytes();
    let mut j = 0;
    std::iter::from_fn(move || {
        let byte = *bytes.get(j)?;
        match bytes.get(j + 1..j + 3) {
            Some(&[hi, lo]) if byte == b'%' && hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                j += 3;
                Some((hex(hi) << 4) | hex(lo))
            }
            _ => {
                j += 1;
                Some(byte)
            }
        }
    })
}

/// Whether `raw`, with its percent-escapes decoded, is `want`.
fn decoded_eq(want: &str, raw: &str) -> bool {
    decoded(raw).eq(want.bytes())
}

/// The segments of a path (after its leading `/`): separated by `/`, `\`, `%2F` or `%5C`.
fn split_segments(body: &str) -> impl Iterator<Item = &str> {
    let bytes = body.as_bytes();
    let mut start = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        if start > bytes.len() {
            return None;
        }
        while i < bytes.len() {
            let width = match bytes[i] {
                b'/' | b'\\' => 1,
                b'%' if matches!(
                    bytes.get(i + 1..i + 3),
                    Some([b'2', b'f' | b'F'] | [b'5', b'c' | b'C'])
                ) =>
                {
                    3
                }
                _ => 0,
            };
            if width > 0 {
                let segment = &body[start..i];
                i += width;
                start = i;
                return Some(segment);
            }
            i += 1;
        }
        let segment = &body[start..];
        start = bytes.len() + 1;
        Some(segment)
    })
}

/// `raw` with its percent-escapes decoded, for patterns (once, at load). Bytes that do not
/// form UTF-8 are replaced.
fn decode(raw: &str) -> String {
    String::from_utf8_lossy(&decoded(raw).collect::<Vec<u8>>()).into_owned()
}

fn hex(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// A compiled `METHOD PATH` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoutePattern {
    /// `None` matches any method.
    method: Option<Box<str>>,
    /// The segments after the leading `/`.
    segments: Vec<Segment>,
    /// Whether the pattern ends in `**`.
    rest: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Any,
}

impl RoutePattern {
    /// Parses `text`, explaining what is wrong when it is not a valid pattern.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut words = text.split_whitespace();
        let (Some(method), Some(path), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "`{text}` must be a method and a path separated by a space, \
                 e.g. `POST /v1/generate` or `* /health`"
            ));
        };
        let method = match method {
            "*" => None,
            m if m.bytes().all(|b| b.is_ascii_alphabetic()) => Some(m.to_ascii_uppercase().into()),
            m => {
                return Err(format!(
                    "`{m}` is not an HTTP method (use letters only, or `*`)"
                ))
            }
        };
        let Some(body) = path.strip_prefix('/') else {
            return Err(format!("path `{path}` must start with `/`"));
        };
        if path.contains(['?', '#']) {
            return Err(format!(
                "path `{path}` must not contain `?` or `#`: queries are ignored when matching"
            ));
        }
        let parts: Vec<&str> = split_segments(body)
            .filter(|p| !p.is_empty() && !decoded_eq(".", p))
            .collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut rest = false;
        for (i, part) in parts.iter().enumerate() {
            if decoded_eq("..", part) {
                return Err(format!(
                    "in `{path}`, `..` is not allowed: write the path it leads to"
                ));
            }
            match *part {
                "**" if i + 1 == parts.len() => rest = true,
                "**" => return Err(format!("in `{path}`, `**` may only be the last segment")),
                "*" => segments.push(Segment::Any),
                p if p.contains('*') => {
                    return Err(format!(
                        "in `{path}`, segment `{p}` mixes `*` with text; \
                         a wildcard must be a whole segment"
                    ))
                }
                p => segments.push(Segment::Literal(decode(p).into())),
            }
        }
        Ok(Self {
            method,
            segments,
            rest,
        })
    }

    /// Whether a request with `method` and `path` falls under this pattern. A request with
    /// no method matches only a `*` pattern; one with no path matches nothing.
    pub(crate) fn matches(&self, method: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.method {
            match method {
                Some(m) if m.eq_ignore_ascii_case(want) => {}
                _ => return false,
            }
        }
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let Some(body) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts: SmallVec<[&str; 8]> = SmallVec::new();
        for part in split_segments(body) {
            if part.is_empty() || decoded_eq(".", part) {
                continue;
            }
            if decoded_eq("..", part) {
                parts.pop();
            } else {
                parts.push(part);
            }
        }
        if parts.len() < self.segments.len() || (!self.rest && parts.len() > self.segments.len()) {
            return false;
        }
        self.segments
            .iter()
            .zip(&parts)
            .all(|(segment, got)| match segment {
                Segment::Any => true,
                Segment::Literal(want) => decoded_eq(want, got),
            })
    }
}

/// The canonical spelling (upper-case method, single spaces), used to spot duplicates.
impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.method.as_deref().unwrap_or("*"))?;
        f.write_str(" ")?;
        for segment in &self.segments {
            f.write_str("/")?;
            match segment {
                Segment::Literal(text) => f.write_str(text)?,
                Segment::Any => f.write_str("*")?,
            }
        }
        match (self.rest, self.segments.is_empty()) {
            (true, _) => f.write_str("/**"),
            (false, true) => f.write_str("/"),
            (false, false) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RoutePattern;

    fn pattern(text: &str) -> RoutePattern {
        match RoutePattern::parse(text) {
            Ok(p) => p,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn paths_are_read_as_a_server_would() {
        let p = pattern("POST /v1/generate");
        for path in [
            "/v1/generate/",
            "/v1//generate",
            "//v1/generate",
            "/v1/./generate",
            "/v1/x/../generate",
            "/v1/%67enerate",
            "/v1/%2e/generate",
            "/v1/x/%2E%2E/generate?q=1",
        ] {
            assert!(p.matches(Some("POST"), path), "{path}");
        }
        // An escaped or backward slash separates segments too (some servers decode them).
        for path in [
            "/v1%2Fgenerate",
            "/v1%2fgenerate",
            "/v1\\generate",
            "/v1%5Cgenerate",
        ] {
            assert!(p.matches(Some("POST"), path), "{path}");
        }
        for path in [
            "/v1/generate/more",
            "/v1/generat",
            "/v1/generate%2Fx",
            "/v1/../generate",
            "/../../v1",
        ] {
            assert!(!p.matches(Some("POST"), path), "{path}");
        }
        // `..` above the root stays at the root.
        assert!(p.matches(Some("POST"), "/../../v1/generate"));
        // A stray `%` is a character like any other.
        assert!(pattern("GET /100%").matches(Some("GET"), "/100%"));
    }

    #[test]
    fn patterns_are_read_like_paths() {
        // The root, a trailing slash, doubled slashes and `.` segments in a pattern.
        assert!(pattern("GET /").matches(Some("GET"), "/"));
        assert!(pattern("* /").matches(Some("PUT"), "//"));
        assert!(pattern("POST /v1/generate/").matches(Some("POST"), "/v1/generate"));
        assert!(pattern("POST /v1//./generate").matches(Some("POST"), "/v1/generate/"));
        assert_eq!(
            pattern("POST /v1/generate/").to_string(),
            "POST /v1/generate"
        );
        // Escapes in a pattern are decoded once, like the request's.
        assert!(pattern("GET /a%20b").matches(Some("GET"), "/a%20b"));
        assert!(pattern("GET /a%20b").matches(Some("GET"), "/a b"));
        assert!(RoutePattern::parse("GET /a/../b")
            .unwrap_err()
            .contains("`..` is not allowed"));
        assert!(pattern("GET /a/*").matches(Some("GET"), "/a/b/"));
        assert!(!pattern("GET /a/*").matches(Some("GET"), "/a//"));
        assert!(pattern("GET /a/**").matches(Some("GET"), "/a//"));
    }

    #[test]
    fn literal_paths_match_exactly() {
        let p = pattern("POST /v1/generate");
        assert!(p.matches(Some("POST"), "/v1/generate"));
        assert!(p.matches(Some("post"), "/v1/generate?stream=true"));
        assert!(!p.matches(Some("GET"), "/v1/generate"));
        assert!(!p.matches(None, "/v1/generate"));
        assert!(!p.matches(Some("POST"), "/v1/generate/x"));
        assert!(!p.matches(Some("POST"), "/v1"));
        assert!(!p.matches(Some("POST"), "v1/generate"));
    }

    #[test]
    fn one_star_is_one_segment() {
        let p = pattern("* /v1/users/*/keys");
        assert!(p.matches(Some("DELETE"), "/v1/users/42/keys"));
        assert!(p.matches(None, "/v1/users/42/keys"));
        assert!(!p.matches(Some("GET"), "/v1/users/42/7/keys"));
        assert!(!p.matches(Some("GET"), "/v1/users/keys"));
    }

    #[test]
    fn double_star_takes_the_rest() {
        let p = pattern("GET /v1/meta/**");
        assert!(p.matches(Some("GET"), "/v1/meta/models/abc"));
        assert!(p.matches(Some("GET"), "/v1/meta/"));
        assert!(p.matches(Some("GET"), "/v1/meta"));
        assert!(!p.matches(Some("GET"), "/v1/metadata"));
        assert!(pattern("* /**").matches(Some("GET"), "/anything/at/all"));
    }

    #[test]
    fn rejects_malformed_patterns() {
        for (text, why) in [
            ("/v1/generate", "method and a path"),
            ("POST v1/generate", "start with `/`"),
            ("PO-ST /v1", "not an HTTP method"),
            ("GET /v1/**/x", "last segment"),
            ("GET /v1/gen*", "whole segment"),
            ("GET /v1?x=1", "must not contain"),
            ("GET /a /b", "method and a path"),
        ] {
            let err = RoutePattern::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn canonical_form_spots_duplicates() {
        assert_eq!(pattern("post  /v1/x").to_string(), "POST /v1/x");
        assert_eq!(pattern("* /").to_string(), "* /");
        assert_eq!(pattern("GET /a/*/**").to_string(), "GET /a/*/**");
    }
}
