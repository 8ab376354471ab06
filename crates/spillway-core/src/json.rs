//! JSON strings, written with exactly serde_json's escapes: the one escaper for every string
//! an answer writes by hand (limit names when a policy is compiled, tiers, routes and problem
//! texts on each answer), so the hand-written bodies stay byte for byte what serde_json
//! writes for the same values.

/// Appends `s` to `out` as a JSON string, quotes included.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    write_str(s, |piece| out.extend_from_slice(piece.as_bytes()));
}

/// `s` as a JSON string, quotes included.
pub fn to_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(s, |piece| out.push_str(piece));
    out
}

/// Hands `put` the pieces of `s` as a JSON string, in order: the short escapes where JSON has
/// them, `\u00XX` in lower-case hex for the other control characters, everything else as it
/// is. A string with nothing to escape (no `"`, `\` or control character) is handed over
/// whole.
fn write_str(s: &str, mut put: impl FnMut(&str)) {
    put("\"");
    // Every byte is looked at (no early exit), so the test runs over many bytes at once.
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if plain {
        put(s);
    } else {
        const HEX: &str = "0123456789abcdef";
        // Only ASCII bytes are escaped, so every run between them ends on a char boundary.
        let mut run = 0;
        for (i, b) in s.bytes().enumerate() {
            let short = match b {
                b'"' => Some("\\\""),
                b'\\' => Some("\\\\"),
                0x08 => Some("\\b"),
                0x0c => Some("\\f"),
                b'\n' => Some("\\n"),
                b'\r' => Some("\\r"),
                b'\t' => Some("\\t"),
                0..=0x1f => None,
                _ => continue,
            };
            put(&s[run..i]);
            match short {
                Some(escape) => put(escape),
                None => {
                    let (hi, lo) = (usize::from(b >> 4), usize::from(b & 0xf));
                    put("\\u00");
                    put(&HEX[hi..=hi]);
                    put(&HEX[lo..=lo]);
                }
            }
            run = i + 1;
        }
        put(&s[run..]);
    }
    put("\"");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_serde_json_s() {
        for s in [
            "per-user",
            "",
            "a\"b\\c",
            "tab\there\nnew\rret",
            "\u{8}\u{c}\u{0}\u{1f}\u{7f}",
            "ünïcödé €\u{1}🚀",
            "\u{2028}\u{2029}",
        ] {
            let want = serde_json::to_string(s).expect("a string serializes");
            assert_eq!(to_string(s), want, "{s:?}");
            let mut bytes = b"x".to_vec();
            push_str(&mut bytes, s);
            assert_eq!(bytes, [b"x", want.as_bytes()].concat(), "{s:?}");
        }
    }

    proptest::proptest! {
        /// Any string, with plain runs long and short between characters to escape.
        #[test]
        fn any_string_is_written_as_serde_json_writes_it(
            s in "\\PC{0,20}|[\"\\\\\u{0}-\u{1f}\u{7f}a\u{e9}\u{2028}]{0,12}|[ -~]{0,40}[\"\\\\\u{0}-\u{1f}]?[ -~]{0,40}",
        ) {
            let want = serde_json::to_string(&s).expect("a string serializes");
            proptest::prop_assert_eq!(to_string(&s), want);
        }
    }
}
