//! The plain body nearly every client sends, read without serde: one flat object of known
//! fields, strings without escapes, a whole-number `cost`, and `descriptors` as an object of
//! such strings, e.g. `{"tenant":"t1","user":"u1","ip":"10.0.0.1","path":"/v1/items"}`.
//!
//! serde_json spent about 1,100 instructions on a body of one field, most of them in its
//! general machinery and in moving the request between its layers (`docs/BENCHMARKS.md`,
//! "Fewer instructions per `/v1/check` (issue 16, session 20)"). [`read`] answers only for a
//! body it is sure of, and with exactly what serde_json reads from it; anything else (an
//! escape, `null`, a number serde_json would refuse, a field named twice or unknown, any
//! error at all) is `None`, and the caller reads the body with serde_json as before, so every
//! answer and every error stays serde_json's.

use super::CheckRequest;
use std::collections::BTreeMap;

/// `body` as serde_json reads it into a [`CheckRequest`], when it is plain (see the module
/// docs); `None` for any other body, valid or not.
pub(super) fn read(body: &[u8]) -> Option<CheckRequest> {
    let mut text = Cursor { body, at: 0 };
    let mut request = CheckRequest::default();
    // Bit per field seen: serde_json refuses a field named twice, so such a body is not ours.
    let mut seen = 0u16;
    text.space();
    text.eat(b'{')?;
    text.space();
    if !text.eat_if(b'}') {
        loop {
            let key = text.string()?;
            text.space();
            text.eat(b':')?;
            text.space();
            let bit = match key {
                "tenant" => text.owned(&mut request.tenant, 0),
                "user" => text.owned(&mut request.user, 1),
                "method" => text.owned(&mut request.method, 2),
                "path" => text.owned(&mut request.path, 3),
                "tier" => text.owned(&mut request.tier, 4),
                "token" => text.owned(&mut request.token, 5),
                "api_key" => text.owned(&mut request.api_key, 6),
                "host" => text.owned(&mut request.host, 7),
                "ip" => {
                    // What `check::ip_address` accepts; its error is serde_json's to word.
                    request.ip = Some(text.string()?.trim().parse().ok()?);
                    Some(8)
                }
                "cost" => {
                    request.cost = Some(text.number()?);
                    Some(9)
                }
                "descriptors" => {
                    request.descriptors = Some(text.descriptors()?);
                    Some(10)
                }
                "method_override" => text.owned(&mut request.method_override, 11),
                _ => None,
            }?;
            if seen & (1 << bit) != 0 {
                return None;
            }
            seen |= 1 << bit;
            text.space();
            if text.eat_if(b'}') {
                break;
            }
            text.eat(b',')?;
            text.space();
        }
    }
    text.space();
    text.at_end().then_some(request)
}

/// A position in a body being read.
struct Cursor<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.body.get(self.at).copied()
    }

    fn at_end(&self) -> bool {
        self.at == self.body.len()
    }

    /// Skips JSON's whitespace (not every ASCII space: a form feed is an error to serde_json).
    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.eat_if(byte).then_some(())
    }

    fn eat_if(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.at += usize::from(found);
        found
    }

    /// A string without escapes or control characters, as UTF-8.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let rest = self.body.get(self.at..)?;
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        let text = std::str::from_utf8(&rest[..len]).ok()?;
        self.at += len + 1;
        Some(text)
    }

    /// A string field's value into `field`; `bit` is the field's mark in `seen`.
    fn owned(&mut self, field: &mut Option<String>, bit: u16) -> Option<u16> {
        *field = Some(self.string()?.to_owned());
        Some(bit)
    }

    /// A whole number in JSON's form (no sign, fraction, exponent or leading zero) that fits
    /// in a `u64`.
    fn number(&mut self) -> Option<u64> {
        let start = self.at;
        let mut value = 0u64;
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            value = value
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        let leading_zero = digits > 1 && self.body[start] == b'0';
        (digits > 0 && !leading_zero).then_some(value)
    }

    /// `descriptors`: an object of plain strings. A name given twice keeps its last value, as
    /// serde_json's map does.
    fn descriptors(&mut self) -> Option<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        self.eat(b'{')?;
        self.space();
        if self.eat_if(b'}') {
            return Some(map);
        }
        loop {
            let name = self.string()?;
            self.space();
            self.eat(b':')?;
            self.space();
            let value = self.string()?;
            map.insert(name.to_owned(), value.to_owned());
            self.space();
            if self.eat_if(b'}') {
                return Some(map);
            }
            self.eat(b',')?;
            self.space();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{checked_path, parse_body, parse_with_serde};
    use super::*;
    use proptest::prelude::*;

    /// `parse_body`'s answer for `body` (an object, perhaps a broken one) is serde_json's:
    /// the same request, or a problem with the same status, words and field.
    fn same_as_serde(body: &[u8]) {
        let shown = String::from_utf8_lossy(body);
        // Either way a path no route could match is refused after the reading.
        let serde =
            parse_with_serde(body).and_then(|r| checked_path(r.path.as_deref()).map(|()| r));
        match (parse_body(body), serde) {
            (Ok(ours), Ok(serde)) => assert_eq!(ours, serde, "{shown}"),
            (Err(ours), Err(serde)) => assert_eq!(
                (ours.status(), ours.detail(), ours.field()),
                (serde.status(), serde.detail(), serde.field()),
                "{shown}"
            ),
            (ours, serde) => panic!("{shown}: {ours:?} but serde_json alone {serde:?}"),
        }
    }

    /// The bodies the benchmarks and most clients send are plain, and read as serde_json
    /// reads them.
    #[test]
    fn common_bodies_are_plain_and_read_alike() {
        for body in [
            &br#"{"user":"u42"}"#[..],
            br#"{"tenant":"t1","user":"u1","ip":"10.0.0.1","method":"GET","path":"/v1/items"}"#,
            br#" { "tenant" : "acme", "user": "u1", "ip": " 2001:DB8::1 ", "method": "POST",
                 "path": "/v1/generate", "tier": "pro", "cost": 5, "token": "t.k.n",
                 "api_key": "k", "host": "acme.example.com",
                 "descriptors": {"region": "eu", "plan": "b"} }
            "#,
            br#"{"cost":0,"descriptors":{}}"#,
            "{\"user\":\"caf\u{e9} \u{1f980}\",\"path\":\"/\u{fc}ber\"}".as_bytes(),
        ] {
            let shown = String::from_utf8_lossy(body);
            let plain = read(body).unwrap_or_else(|| panic!("not plain: {shown}"));
            let serde: CheckRequest = serde_json::from_slice(body).expect("valid");
            assert_eq!(plain, serde, "{shown}");
            same_as_serde(body);
        }
    }

    /// Escapes are left to serde_json, which decodes them (in values and in field names)
    /// as before.
    #[test]
    fn escapes_are_read_by_serde_json() {
        for body in [
            &br#"{"user":"u\"1"}"#[..],
            br#"{"user":"caf\u00e9"}"#,
            br#"{"us\u0065r":"x"}"#,
            br#"{"path":"\/a\/b"}"#,
            br#"{"descriptors":{"r\u0065gion":"e\u0075"}}"#,
            br#"{"user":"\ud83e\udd80"}"#,
        ] {
            assert_eq!(read(body), None, "{}", String::from_utf8_lossy(body));
            same_as_serde(body);
        }
        let request = parse_body(br#"{"us\u0065r":"u\"1"}"#).expect("valid");
        assert_eq!(request.user.as_deref(), Some("u\"1"));
    }

    /// A field named twice is serde_json's error; a descriptor named twice keeps its last
    /// value either way.
    #[test]
    fn duplicates_answer_as_before() {
        let body = br#"{"user":"a","user":"b"}"#;
        assert_eq!(read(body), None);
        let problem = parse_body(body).expect_err("duplicate");
        assert!(
            problem.detail().contains("duplicate field `user`"),
            "{problem:?}"
        );
        same_as_serde(body);
        let body = br#"{"descriptors":{"r":"a","r":"b"}}"#;
        let request = read(body).expect("plain");
        assert_eq!(request.descriptors.expect("map")["r"], "b");
        same_as_serde(body);
    }

    /// Numbers serde_json refuses for `cost` (sign, fraction, exponent, leading zero, past
    /// `u64`) get its error; the largest `u64` is read.
    #[test]
    fn costs_answer_as_before() {
        for cost in [
            "0",
            "7",
            "18446744073709551615",
            "18446744073709551616",
            "007",
            "-1",
            "1.5",
            "1e3",
            "null",
            "\"3\"",
        ] {
            same_as_serde(format!(r#"{{"cost":{cost},"user":"u"}}"#).as_bytes());
        }
        let max = read(br#"{"cost":18446744073709551615}"#).expect("plain");
        assert_eq!(max.cost, Some(u64::MAX));
        assert_eq!(read(br#"{"cost":007}"#), None);
    }

    /// Broken or unusual bodies are refused (or read) with serde_json's words.
    #[test]
    fn other_bodies_answer_as_before() {
        for body in [
            &br#"{"user":null,"ip":null,"descriptors":null}"#[..],
            br#"{"ip":"not-an-ip"}"#,
            br#"{"ip":7}"#,
            br#"{"tennant":"t"}"#,
            br#"{"user":"u",}"#,
            br#"{"user" "u"}"#,
            br#"{"user":"u"} x"#,
            br#"{"user":"u"}}"#,
            br#"{"user":"u""#,
            b"{\"user\":\"a\tb\"}",
            b"\x0c{\"user\":\"u\"}",
            b"{\"user\":\"\xff\"}",
            br#"{"descriptors":{"region":7}}"#,
            br#"{"descriptors":["eu"]}"#,
        ] {
            same_as_serde(body);
        }
    }

    /// A body at the size limit, in one long value or in many descriptors, reads alike.
    #[test]
    fn huge_bodies_answer_as_before() {
        let long = "u".repeat(super::super::MAX_BODY_BYTES - 20);
        let body = format!(r#"{{"user":"{long}"}}"#);
        assert!(read(body.as_bytes()).is_some());
        same_as_serde(body.as_bytes());
        let many = (0..1000)
            .map(|i| format!(r#""d{i}":"v{i}""#))
            .collect::<Vec<_>>()
            .join(",");
        let body = format!(r#"{{"descriptors":{{{many}}}}}"#);
        assert_eq!(
            read(body.as_bytes())
                .expect("plain")
                .descriptors
                .map(|d| d.len()),
            Some(1000)
        );
        same_as_serde(body.as_bytes());
    }

    /// A field name, plain or not, known or not.
    fn key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "tenant",
            "user",
            "ip",
            "method",
            "method_override",
            "path",
            "tier",
            "cost",
            "descriptors",
            "token",
            "api_key",
            "host",
            "usr",
            "us\\u0065r",
            "ten\\u0061nt",
            "\\u0064escriptors",
            "",
        ])
    }

    /// A value in many forms, fitting its field or not.
    fn value() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "\"u1\"",
            "\"\"",
            "\"10.0.0.1\"",
            "\" ::1 \"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "\"caf\u{e9}\"",
            "\"a\u{1}b\"",
            "0",
            "42",
            "01",
            "-1",
            "2.5",
            "1e2",
            "18446744073709551616",
            "null",
            "true",
            "{}",
            "{\"r\":\"eu\"}",
            "{\"r\":\"eu\",\"r\":\"us\"}",
            "{\"r\":1}",
            "{\"r\":\"eu\",}",
            "[]",
            "{",
        ])
    }

    fn space() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", " ", "\n\t", "\r\n ", "\u{c}"])
    }

    /// An empty body, or one of JSON's whitespace only, is `{}`; any other byte makes it a
    /// body to read (a lone form feed is not JSON).
    #[test]
    fn only_json_whitespace_is_an_empty_body() {
        for body in [&b""[..], b" ", b"\r\n\t "] {
            assert_eq!(parse_body(body).expect("empty"), CheckRequest::default());
        }
        for body in [&b"\x0c"[..], b" \x0c ", b"\x0b", b"\xa0"] {
            let problem = parse_body(body).expect_err("not JSON");
            assert!(problem.detail().contains("not valid JSON"), "{problem:?}");
        }
    }

    /// Plain bodies for [`a_mutated_plain_body_is_never_read_otherwise`] to change.
    const PLAIN: [&str; 4] = [
        r#"{"user":"u42"}"#,
        r#"{"tenant":"t1","user":"u1","ip":"10.0.0.1","method":"GET","path":"/v1/items"}"#,
        r#"{ "tier" : "pro", "cost": 5, "descriptors": {"region": "eu", "plan": "b"} }"#,
        r#"{"cost":18446744073709551615,"ip":" ::1 ","descriptors":{},"host":"a.example"}"#,
    ];

    /// A byte worth putting into a body: JSON's own, bytes that are not JSON, or any byte.
    fn byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            prop::sample::select(
                b"\"\\,:{}[] \t\n0159-+.eEnu\x00\x0c\x7f\xc3\xa9\xed\xff".to_vec()
            ),
            any::<u8>(),
        ]
    }

    proptest! {
        /// Bytes changed, put in or taken out anywhere in a plain body: whatever the plain
        /// reader still takes, serde_json takes too and reads alike (it may leave more to
        /// serde_json, never read a body otherwise).
        #[test]
        fn a_mutated_plain_body_is_never_read_otherwise(
            base in prop::sample::select(PLAIN.to_vec()),
            edits in prop::collection::vec((any::<prop::sample::Index>(), byte(), 0..3u8), 1..5),
        ) {
            let mut body = base.as_bytes().to_vec();
            for (at, byte, how) in edits {
                let i = at.index(body.len() + 1);
                match how {
                    1 if i < body.len() => body[i] = byte,
                    2 if i < body.len() => {
                        body.remove(i);
                    }
                    _ => body.insert(i, byte),
                }
            }
            if let Some(plain) = read(&body) {
                let serde = serde_json::from_slice::<CheckRequest>(&body);
                prop_assert_eq!(
                    Some(plain),
                    serde.ok(),
                    "{}",
                    String::from_utf8_lossy(&body)
                );
            }
        }

        /// Any object built from these pieces, well-formed or not, is answered as serde_json
        /// alone answers it.
        #[test]
        fn any_object_answers_as_serde_json_does(
            entries in prop::collection::vec((space(), key(), space(), value(), space()), 0..6),
            separator in prop::sample::select(vec![",", ",", ",", ", ", ",,", ""]),
            end in prop::sample::select(vec!["}", "}", "} ", "}\n", "}x", "},", ""]),
        ) {
            let body = entries
                .iter()
                .map(|(a, k, b, v, c)| format!("{a}\"{k}\"{b}:{v}{c}"))
                .collect::<Vec<_>>()
                .join(separator);
            same_as_serde(format!("{{{body}{end}").as_bytes());
        }
    }
}
