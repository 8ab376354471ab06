//! Text a caller wrote, made safe to show: in a log line, on a terminal, or as an id.
//!
//! Control characters (line breaks, terminal escape sequences, C1 codes) and the invisible
//! format characters (bidirectional overrides and isolates, zero-width spaces and joiners,
//! the byte-order mark, line and paragraph separators, tag characters) can forge a log line,
//! drive the terminal of whoever reads it (move the cursor, set the title or clipboard), or
//! make two different strings look alike. [`printable`] writes each as its escape;
//! [`is_invisible_format`] is the catalog's test for ids that could pass for another.

use std::borrow::Cow;

/// Whether `c` changes how text shows without showing itself: the soft hyphen, the Arabic
/// letter mark, the Mongolian vowel separator, zero-width spaces, joiners and direction marks,
/// line and paragraph separators, bidirectional embeddings, overrides and isolates, the
/// invisible operators, the byte-order mark, interlinear annotation marks and tag characters.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

/// `text` with every control character and every invisible format character written as its
/// escape (`\n`, `\u{1b}`, `\u{202e}`); other text, non-ASCII included, as it is. Borrowed
/// when nothing needed escaping.
pub fn printable(text: &str) -> Cow<'_, str> {
    let hidden = |c: char| c.is_control() || is_invisible_format(c);
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_what_could_forge_a_line_or_drive_a_terminal() {
        assert!(matches!(printable("/v1/check"), Cow::Borrowed("/v1/check")));
        assert_eq!(
            printable("é日本 \"q\""),
            "é日本 \"q\"",
            "other text as it is"
        );
        for (raw, shown) in [
            ("a\nb", r"a\nb"),
            ("a\rb", r"a\rb"),
            ("\u{1b}]52;c;eA==\u{7}", r"\u{1b}]52;c;eA==\u{7}"),
            ("a\u{85}b", r"a\u{85}b"),
            ("a\u{9b}2J", r"a\u{9b}2J"),
            ("a\u{2028}b", r"a\u{2028}b"),
            ("\u{202e}gnp.exe", r"\u{202e}gnp.exe"),
            ("\u{2066}x\u{2069}", r"\u{2066}x\u{2069}"),
            ("a\u{61c}b\u{200b}c\u{feff}", r"a\u{61c}b\u{200b}c\u{feff}"),
            ("t\u{e0041}\u{fff9}", r"t\u{e0041}\u{fff9}"),
        ] {
            assert_eq!(printable(raw), shown, "{raw:?}");
        }
    }

    #[test]
    fn visible_text_is_not_invisible_format() {
        for c in [
            'a',
            'é',
            '日',
            ' ',
            '-',
            '\u{2010}',
            '\u{2070}',
            '\u{E0080}',
        ] {
            assert!(!is_invisible_format(c), "{c:?}");
        }
    }
}
