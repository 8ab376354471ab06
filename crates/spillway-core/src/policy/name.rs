//! [`LimitName`]: a limit's name with the forms every answer writes it in, rendered once.
//!
//! Each HTTP answer names every limit that applied, twice in the rate-limit headers (a
//! structured-field String) and once in the JSON body (a JSON string). Scanning a name for
//! characters to escape and quoting it on every answer cost more than copying it, so both
//! quoted forms are made when the policy is compiled and travel with it: a reloaded policy
//! brings names of its own, and an answer can only ever quote the name it carries.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// A limit's name as written in the policy, with its quoted forms. Cloning shares them.
/// It reads as the plain name everywhere (`Deref<Target = str>`, `Display`, comparisons and
/// hashing by the name alone).
#[derive(Clone)]
pub struct LimitName(Arc<Forms>);

struct Forms {
    plain: Arc<str>,
    /// A structured-field String (RFC 8941), quotes included: `"` and `\` escaped, and any
    /// character such a String cannot hold (outside printable ASCII) replaced by `?`, so no
    /// name can break a header.
    sf: Box<str>,
    /// A JSON string, quotes included, escaped exactly as serde_json escapes it
    /// ([`crate::json`]).
    json: Box<str>,
}

impl LimitName {
    /// The name `plain` with its quoted forms.
    pub fn new(plain: Arc<str>) -> Self {
        let sf = sf_string(&plain).into_boxed_str();
        let json = crate::json::to_string(&plain).into_boxed_str();
        Self(Arc::new(Forms { plain, sf, json }))
    }

    /// The name as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.0.plain
    }

    /// The name as a shared string, for holders that keep only the name.
    pub fn to_arc(&self) -> Arc<str> {
        self.0.plain.clone()
    }

    /// The shared string itself, for code that reads it where an `Arc<str>` is asked for
    /// (and clones it only if it keeps it).
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0.plain
    }

    /// The name as a structured-field String, quotes included.
    pub fn sf(&self) -> &str {
        &self.0.sf
    }

    /// The name as a JSON string, quotes included.
    pub fn json(&self) -> &str {
        &self.0.json
    }

    /// Whether `self` and `other` are the same compiled name (one policy's, shared by
    /// cloning), not merely equal text: a cheap test that the forms are those of one
    /// compilation, for caches of what was rendered from them.
    pub fn same_compilation(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for LimitName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for LimitName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for LimitName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<Arc<str>> for LimitName {
    fn from(plain: Arc<str>) -> Self {
        Self::new(plain)
    }
}

impl From<&str> for LimitName {
    fn from(plain: &str) -> Self {
        Self::new(plain.into())
    }
}

impl From<String> for LimitName {
    fn from(plain: String) -> Self {
        Self::new(plain.into())
    }
}

impl PartialEq for LimitName {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.as_str() == other.as_str()
    }
}

impl Eq for LimitName {}

impl PartialEq<str> for LimitName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for LimitName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Hash for LimitName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl serde::Serialize for LimitName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Debug for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `s` as a structured-field String (see [`Forms::sf`]).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names with every kind of character an escape treats differently.
    const NAMES: [&str; 8] = [
        "per-user",
        "",
        "a\"b\\c",
        "tab\there\nnew\rret",
        "\u{8}\u{c}\u{0}\u{1f}\u{7f}",
        "ünïcödé €",
        "emoji 🚀",
        "sp ace/slash'quote",
    ];

    #[test]
    fn the_json_form_is_what_serde_json_writes() {
        for name in NAMES {
            let want = serde_json::to_string(name).expect("a string serializes");
            assert_eq!(LimitName::from(name).json(), want, "{name:?}");
        }
    }

    #[test]
    fn the_structured_field_form_quotes_escapes_and_replaces() {
        assert_eq!(LimitName::from("per-user").sf(), "\"per-user\"");
        assert_eq!(LimitName::from("a\"b\\c").sf(), r#""a\"b\\c""#);
        assert_eq!(LimitName::from("tab\tü").sf(), "\"tab??\"");
        assert_eq!(LimitName::from("\u{7f}~ ").sf(), "\"?~ \"");
    }

    #[test]
    fn it_reads_compares_and_hashes_as_the_plain_name() {
        let name = LimitName::from("a\"b");
        assert_eq!(&*name, "a\"b");
        assert_eq!(name.to_string(), "a\"b");
        assert_eq!(format!("{name:?}"), format!("{:?}", "a\"b"));
        assert_eq!(name, LimitName::from(String::from("a\"b")));
        let set: std::collections::HashSet<LimitName> = [name.clone()].into();
        assert!(set.contains("a\"b"));
    }

    #[test]
    fn same_compilation_is_identity_not_equal_text() {
        let name = LimitName::from("a");
        assert!(name.same_compilation(&name.clone()));
        let again = LimitName::from("a");
        assert_eq!(name, again);
        assert!(!name.same_compilation(&again));
    }

    /// Reads a structured-field String (RFC 8941, section 4.2.5) back to its characters:
    /// quotes around, `\"` and `\\` the only escapes, printable ASCII only inside.
    fn unquote_sf(text: &str) -> Option<String> {
        let inner = text.strip_prefix('"')?.strip_suffix('"')?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    e @ ('"' | '\\') => out.push(e),
                    _ => return None,
                },
                '"' => return None,
                ' '..='~' => out.push(c),
                _ => return None,
            }
        }
        Some(out)
    }

    proptest::proptest! {
        /// Any name's structured-field form is a header value `http` accepts as it is, and
        /// reads back as the name with each character a String cannot hold turned to `?`.
        #[test]
        fn every_structured_field_form_is_a_header_value_that_reads_back(name in r#"(\PC|[\x00-\x1f\x7f"\\])*"#) {
            let limit = LimitName::from(name.as_str());
            let value = http::HeaderValue::from_str(limit.sf());
            proptest::prop_assert!(value.is_ok(), "{:?}", limit.sf());
            let expected: String = name
                .chars()
                .map(|c| if matches!(c, ' '..='~') { c } else { '?' })
                .collect();
            proptest::prop_assert_eq!(unquote_sf(limit.sf()), Some(expected));
        }
    }
}
