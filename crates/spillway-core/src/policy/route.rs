//! Route patterns: `METHOD /path/with/*/and/**`, parsed once at load. A request's path is
//! read once ([`RequestPath`]; a plain path of up to eight segments without allocating) and
//! compared with each pattern segment by segment, without regular expressions.
//!
//! A pattern is a method (or `*` for any) and a path made of `/`-separated segments. A
//! segment is literal text, `*` (exactly one segment, whatever it holds) or, as the last
//! segment only, `**` (whatever remains, including nothing). Literal segments compare without
//! regard to ASCII case unless the policy sets `route_matching: {case_sensitive: true}`; the
//! method always compares without regard to ASCII case, and a `GET` pattern matches `HEAD`
//! requests too (servers answer `HEAD` with their `GET` handler, so a costly `GET` route must
//! not be free as `HEAD`). A request path's `?query` and `#fragment` are ignored (a fragment
//! never reaches a server from a browser, but a client may write one into the request line,
//! and servers behind the proxy drop it before routing).
//!
//! A request path is read the way the most lenient server behind the proxy might read it, so
//! that spelling a path differently cannot slip past a route's cost and limits:
//! - a target in absolute form (`http://host/v1/generate`) is read by its path;
//! - `/`, `\` and their escapes `%2F` and `%5C` all separate segments;
//! - a segment's path parameters, from its first `;` (or `%3B`) to the next `/` or `\`, are
//!   dropped, as Tomcat, Jetty and Spring drop them (`/v1;a/generate;x=1` is `/v1/generate`).
//!   The escaped `%3B` counts too: a proxy in front may decode it into a `;` that the server
//!   then drops, and reading it as a parameter can only make a path match a route it names
//!   more plainly, never miss one. Within parameters, `%2F` and `%5C` do not separate;
//! - empty segments (`//`, a trailing `/`, a segment that was only parameters) and `.` are
//!   skipped; `..` removes the segment before it (`..;x` is `..`);
//! - other percent-escapes are decoded before comparing (`/v1/%67enerate` is `/v1/generate`);
//! - letters compare without regard to ASCII case (`/V1/Generate` is `/v1/generate`), as
//!   ASP.NET and IIS route, unless the policy declares its API case-sensitive.
//!
//! Lenience alone can make a path *shorter* than a stricter server reads it: Express routes
//! `/v1/generate/x%2F..` (or, behind an nginx that passes the request line as it came,
//! `/v1/generate/..`) to `/v1/generate/:id`, which the lenient reading takes for
//! `/v1/generate` or `/v1`, and an API naming items by escaped paths
//! (`/projects/group%2Fname/issues`) is read with one segment too many. Servers also mix the
//! choices: nginx resolves dots but keeps `;`, Django decodes `%2F` but keeps dots. So a path
//! holding `\`, `%`, `;` or a `.` segment is read each way the three choices allow
//! ([`Reading`]: escaped separators split or not, parameters dropped or not, dots resolved or
//! not; up to eight distinct readings), empty segments always skipped. The resolver matches
//! the routes under every reading and applies all the routes matched
//! (`Policy::route_indices`). Plain paths have one reading.
//!
//! A policy for Rails or Spring backends may set `route_matching: {format_suffixes: true}`:
//! they serve `/v1/generate.json` as `/v1/generate` (a `.format` suffix), so each reading is
//! then also taken with its last segment cut at its first `.`.
//!
//! Patterns are read the same way when the policy loads (`GET /a/` is `GET /a`), except that
//! `..` and `;` are refused in them.

use smallvec::SmallVec;
use std::fmt;

/// The bytes `raw` stands for, its percent-escapes decoded. A `%` not followed by two hex
/// digits stands for itself.
fn decoded(raw: &str) -> impl Iterator<Item = u8> + '_ {
    decoding(raw, false)
}

/// As [`decoded`], a `+` standing for a space (as in a query's names and values).
fn decoded_plus(raw: &str) -> impl Iterator<Item = u8> + '_ {
    decoding(raw, true)
}

fn decoding(raw: &str, plus_is_space: bool) -> impl Iterator<Item = u8> + '_ {
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
                Some(if plus_is_space && byte == b'+' {
                    b' '
                } else {
                    byte
                })
            }
        }
    })
}

/// Whether `raw`, with its percent-escapes decoded, is `want`, comparing ASCII letters
/// without regard to case unless `case_sensitive`.
fn decoded_eq(want: &str, raw: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        decoded(raw).eq(want.bytes())
    } else {
        decoded(raw)
            .map(|b| b.to_ascii_lowercase())
            .eq(want.bytes().map(|b| b.to_ascii_lowercase()))
    }
}

/// Whether `bytes` starts with the escape `%` `hi` `lo`, either case of hex letter.
fn escape_at(bytes: &[u8], hi: u8, lo: u8) -> bool {
    matches!(bytes, [b'%', h, l, ..] if *h == hi && l.to_ascii_lowercase() == lo)
}

/// How a server may read a path: each choice is one some server makes and another does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    /// `\`, `%2F` and `%5C` separate segments as `/` does (outside parameters, when those are
    /// dropped).
    escapes: bool,
    /// A segment's `;` (or `%3B`) parameters are dropped.
    params: bool,
    /// `.` segments are skipped and `..` removes the segment before.
    dots: bool,
}

impl Reading {
    /// The most lenient reading, the one patterns are read with.
    const LENIENT: Self = Self {
        escapes: true,
        params: true,
        dots: true,
    };

    /// Every reading, the lenient one first.
    fn all() -> impl Iterator<Item = Self> {
        (0..8u8).map(|bits| Self {
            escapes: bits & 1 == 0,
            params: bits & 2 == 0,
            dots: bits & 4 == 0,
        })
    }
}

/// The segments of a path (after its leading `/`) as `how` reads them, empty ones included:
/// separated by `/` (and `\`, `%2F`, `%5C` if `how.escapes`), each without its parameters
/// (from `;` or `%3B` to the next separator) if `how.params`. See the module docs.
fn split_segments(body: &str, how: Reading) -> impl Iterator<Item = &str> {
    let bytes = body.as_bytes();
    let mut start = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        if start > bytes.len() {
            return None;
        }
        // Where the current segment's parameters begin, once seen.
        let mut params: Option<usize> = None;
        while i < bytes.len() {
            let rest = &bytes[i..];
            let width = match rest[0] {
                b'/' => 1,
                b'\\' if how.escapes => 1,
                b'%' if how.escapes
                    && params.is_none()
                    && (escape_at(rest, b'2', b'f') || escape_at(rest, b'5', b'c')) =>
                {
                    3
                }
                b';' if how.params => {
                    params.get_or_insert(i);
                    0
                }
                b'%' if how.params && escape_at(rest, b'3', b'b') => {
                    params.get_or_insert(i);
                    0
                }
                _ => 0,
            };
            if width > 0 {
                let segment = &body[start..params.unwrap_or(i)];
                i += width;
                start = i;
                return Some(segment);
            }
            i += 1;
        }
        let segment = &body[start..params.unwrap_or(bytes.len())];
        start = bytes.len() + 1;
        Some(segment)
    })
}

/// A path's segments after its leading `/`, read as `how` says, empty segments skipped.
/// Also says whether a `..` was seen, which a pattern may not contain.
fn normalized(body: &str, how: Reading) -> (SmallVec<[&str; 8]>, bool) {
    let mut segments: SmallVec<[&str; 8]> = SmallVec::new();
    let mut stepped_back = false;
    for part in split_segments(body, how) {
        if part.is_empty() {
            continue;
        }
        if how.dots && decoded_eq(".", part, true) {
            continue;
        }
        if how.dots && decoded_eq("..", part, true) {
            stepped_back = true;
            segments.pop();
        } else {
            segments.push(part);
        }
    }
    (segments, stepped_back)
}

/// The most `_method` parameters read from one query (each one more method to match under).
const MAX_METHOD_PARAMS: usize = 4;

/// A request's path, read once per request and then compared with each route's pattern:
/// each way a server behind the proxy may read it (see the module docs).
#[derive(Debug)]
pub(crate) struct RequestPath<'a> {
    /// The distinct readings, the lenient one first.
    readings: SmallVec<[SmallVec<[&'a str; 8]>; 1]>,
    /// The query's `_method` parameters, which frameworks take as the method of a `POST`.
    method_params: SmallVec<[String; 1]>,
    /// Whether the query held more distinct `_method` values than are kept (PHP may stop
    /// reading before the last one: then any of them could be the method).
    method_params_overflow: bool,
}

impl<'a> RequestPath<'a> {
    /// Reads `path` (its `?query` and `#fragment` ignored but for `_method` parameters). A
    /// request target in absolute form (`http://host/v1/generate`, which servers must accept)
    /// is read by its path. `None` when there is no path starting with `/`, which no pattern
    /// matches.
    pub(crate) fn read(path: &'a str, format_suffixes: bool) -> Option<Self> {
        let (path, query) = match path.find(['?', '#']) {
            Some(end) => (&path[..end], path[end..].strip_prefix('?')),
            None => (path, None),
        };
        let body = without_origin(path).strip_prefix('/')?;
        let mut readings: SmallVec<[SmallVec<[&str; 8]>; 1]> = SmallVec::new();
        readings.push(normalized(body, Reading::LENIENT).0);
        if may_differ(body) {
            // Room for all eight at once: one allocation.
            readings.reserve_exact(7);
            for how in Reading::all().skip(1) {
                let reading = normalized(body, how).0;
                if !readings.contains(&reading) {
                    readings.push(reading);
                }
            }
        }
        if format_suffixes {
            // Each reading again with its last segment cut at its first `.`, where it has one
            // past its start.
            for n in 0..readings.len() {
                let mut cut = readings[n].clone();
                let Some(last) = cut.last_mut() else {
                    continue;
                };
                match last.find('.') {
                    Some(dot) if dot > 0 => *last = &last[..dot],
                    _ => continue,
                }
                if !readings.contains(&cut) {
                    readings.push(cut);
                }
            }
        }
        let (method_params, method_params_overflow) = query.map(method_params).unwrap_or_default();
        Some(Self {
            readings,
            method_params,
            method_params_overflow,
        })
    }

    /// The readings of the path, the lenient one first.
    pub(crate) fn readings(&self) -> impl Iterator<Item = &[&'a str]> + Clone {
        self.readings.iter().map(|reading| &reading[..])
    }

    /// The methods the query's `_method` parameters name.
    pub(crate) fn method_params(&self) -> impl Iterator<Item = &str> + Clone {
        self.method_params.iter().map(String::as_str)
    }

    /// Whether the query named more methods than [`Self::method_params`] holds: then a `POST`
    /// may be served as any method.
    pub(crate) fn method_params_overflowed(&self) -> bool {
        self.method_params_overflow
    }
}

/// Whether readings of `body` could differ from the lenient one: only a `\`, an escape, a
/// `;` or a `.` segment can make them differ.
fn may_differ(body: &str) -> bool {
    body.bytes().any(|b| matches!(b, b'\\' | b'%' | b';'))
        || body.split('/').any(|part| part == "." || part == "..")
}

/// The distinct values of the `_method` parameters in `query` (before any `#fragment`),
/// decoded: at most [`MAX_METHOD_PARAMS`], the last always among them (PHP keeps the last of
/// several), and whether there were more. A name is compared as PHP reads it
/// ([`php_name_is`]).
fn method_params(query: &str) -> (SmallVec<[String; 1]>, bool) {
    let query = query.split('#').next().unwrap_or_default();
    let mut found: SmallVec<[String; 1]> = SmallVec::new();
    let values = (query.split('&'))
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| php_name_is(name, "_method"))
        .map(|(_, value)| lossy(decoded_plus(value)))
        .filter(|method| !method.is_empty());
    let mut overflow = false;
    for value in values {
        if found.contains(&value) {
            continue;
        }
        if found.len() == MAX_METHOD_PARAMS {
            found.pop();
            overflow = true;
        }
        found.push(value);
    }
    (found, overflow)
}

/// Whether a query parameter named `raw` is `want` to PHP (so to Symfony and Laravel): its
/// escapes decoded (`+` a space), leading spaces dropped, cut at a NUL, and `.` and spaces
/// standing for `_` (`%5Fmethod`, `.method`, `+_method` and `_method%00x` are `_method`).
fn php_name_is(raw: &str, want: &str) -> bool {
    // A `+` is a space; an escaped one (`%2B`) is a plus. (`+` is no hex digit, so reading
    // it as a space after decoding changes no escape.)
    (decoded_plus(raw))
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0)
        .map(|b| match b {
            b'.' | b' ' => b'_',
            b => b,
        })
        .eq(want.bytes())
}

/// `target` without a leading `scheme://authority` (the absolute form of a request target),
/// the root if nothing follows the authority; any other text as it is.
fn without_origin(target: &str) -> &str {
    // A scheme starts with a letter: the usual target (`/v1/...`) is returned without
    // searching it for `://` (a substring search, about 270 instructions per check:
    // `docs/BENCHMARKS.md`, "Fewer instructions per `/v1/check` (issue 16, session 18)").
    if !target.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return target;
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return target;
    };
    // It starts with the target's first character, a letter (above).
    let is_scheme = scheme
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !is_scheme {
        return target;
    }
    rest.find('/').map_or("/", |at| &rest[at..])
}

/// `raw` with its percent-escapes decoded, for patterns (once, at load). Bytes that do not
/// form UTF-8 are replaced.
fn decode(raw: &str) -> String {
    lossy(decoded(raw))
}

/// `bytes` as text, those that do not form UTF-8 replaced.
fn lossy(bytes: impl Iterator<Item = u8>) -> String {
    String::from_utf8_lossy(&bytes.collect::<Vec<u8>>()).into_owned()
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
    /// Whether literal segments compare case-sensitively.
    case_sensitive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Any,
}

impl RoutePattern {
    /// Parses `text`, explaining what is wrong when it is not a valid pattern. Its literal
    /// segments will compare case-sensitively only if `case_sensitive`.
    pub(crate) fn parse(text: &str, case_sensitive: bool) -> Result<Self, String> {
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
        if path.contains(';') || path.to_ascii_lowercase().contains("%3b") {
            return Err(format!(
                "path `{path}` must not contain `;` (or `%3B`): path parameters are dropped \
                 from requests before matching, so a pattern cannot name them"
            ));
        }
        let (parts, stepped_back) = normalized(body, Reading::LENIENT);
        if stepped_back {
            return Err(format!(
                "in `{path}`, `..` is not allowed: write the path it leads to"
            ));
        }
        let mut segments = Vec::with_capacity(parts.len());
        let mut rest = false;
        for (i, part) in parts.iter().enumerate() {
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
            case_sensitive,
        })
    }

    /// What two patterns share exactly when they match the same requests: the canonical
    /// form, with letters folded to lower case when matching ignores case. Used to refuse a
    /// route that an earlier one would always shadow.
    pub(crate) fn identity(&self) -> String {
        let canonical = self.to_string();
        if self.case_sensitive {
            canonical
        } else {
            canonical.to_ascii_lowercase()
        }
    }

    /// The [`identity`](Self::identity) of the `HEAD` pattern this `GET` pattern also
    /// matches, so that a later `HEAD` route on the same path is known to be shadowed.
    pub(crate) fn head_identity(&self) -> Option<String> {
        (self.method.as_deref() == Some("GET")).then(|| {
            Self {
                method: Some("HEAD".into()),
                ..self.clone()
            }
            .identity()
        })
    }

    /// Whether a request with `method` and `path` falls under this pattern. A request with
    /// no method matches only a `*` pattern; a `HEAD` request matches a `GET` pattern too.
    pub(crate) fn matches(&self, method: Option<&str>, parts: &[&str]) -> bool {
        if let Some(want) = &self.method {
            match method {
                Some(m)
                    if m.eq_ignore_ascii_case(want)
                        || (&**want == "GET" && m.eq_ignore_ascii_case("HEAD")) => {}
                _ => return false,
            }
        }
        self.matches_path(parts)
    }

    /// Whether a request path (its segments) falls under this pattern, whatever the method.
    pub(crate) fn matches_path(&self, parts: &[&str]) -> bool {
        if parts.len() < self.segments.len() || (!self.rest && parts.len() > self.segments.len()) {
            return false;
        }
        self.segments
            .iter()
            .zip(parts)
            .all(|(segment, got)| match segment {
                Segment::Any => true,
                Segment::Literal(want) => decoded_eq(want, got, self.case_sensitive),
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
mod tests;
