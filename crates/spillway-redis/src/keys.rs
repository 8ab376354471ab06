//! How a [`StateKey`] becomes a Redis key, and which cluster slot it lands in.
//!
//! # Layout
//! `<prefix>:{<tag>}:<limit>:<fingerprint>:<value 1>:<value 2>...`
//!
//! - `prefix` is configurable (default `rl`) and may not contain `{`, `}` or `:`.
//! - `tag` is the limit's **first key dimension's value** (encoded as below), or the limit's
//!   name for a limit with no dimensions. Redis Cluster hashes only the text between the first
//!   `{` and the next `}`, so every limit whose key starts with the same dimension value lands
//!   in the same slot: list the dimension that groups a request's limits (usually `tenant`)
//!   first in each limit's `key`, and a request's limits share one slot and one atomic script.
//! - `limit` is the limit's name, `fingerprint` its identity's fingerprint in hex (name,
//!   algorithm and key dimensions, not its numbers: a limit whose numbers change keeps its
//!   keys, and the scripts read the state under the new numbers).
//! - Each value is encoded: bytes outside `[A-Za-z0-9_.-]` become `%XX`, the empty string
//!   becomes `~`, and a value whose encoded form would be longer than [`MAX_PLAIN`] bytes
//!   becomes `#` plus the hex SHA-1 of its bytes (judged on the encoded length, so a client's
//!   value of 128 bytes that all need escaping costs a 41-byte segment, not 384, twice over
//!   for a first value). The encoded alphabet has no `:`, `{` or `}`, so no value can end a
//!   segment early or open or close the hash tag, and the encoding is injective per segment
//!   (up to a SHA-1 collision between two digested values). The number of segments is fixed by
//!   the fingerprint, which covers the limit's key dimensions.

use spillway_core::key::StateKey;

/// Values whose encoded form would be longer than this many bytes are replaced by their
/// digest.
pub const MAX_PLAIN: usize = 128;

/// Whether `value` is written as its digest: its encoded form (three bytes for each byte that
/// needs escaping) would pass [`MAX_PLAIN`]. A value of at most a third of it cannot, so the
/// usual short value is not counted.
fn digested(value: &[u8]) -> bool {
    value.len() > MAX_PLAIN
        || (value.len() > MAX_PLAIN / 3
            && value.len() + 2 * value.iter().filter(|&&b| !plain(b)).count() > MAX_PLAIN)
}

/// The number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Builds Redis keys for state keys under one prefix.
#[derive(Debug, Clone)]
pub struct KeyLayout {
    prefix: String,
}

/// Why a key prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key prefix `{0}` must be 1 to 64 characters of [A-Za-z0-9_.-]")]
pub struct BadPrefix(pub String);

impl KeyLayout {
    /// A layout under `prefix`, which must be plain (`[A-Za-z0-9_.-]`, 1 to 64 bytes) so that
    /// it can never hold a hash tag of its own.
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(plain) {
            return Err(BadPrefix(prefix.to_owned()));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The Redis key holding `key`'s state.
    ///
    /// Built as bytes and checked as UTF-8 once at the end (every byte written is ASCII: the
    /// prefix is plain and the encoding writes only plain bytes, `%`, `~`, `#` and hex), so
    /// the pieces need no check of their own; the first value, which is both the hash tag and
    /// the first value segment, is encoded once and copied.
    pub fn key(&self, key: &StateKey) -> String {
        let mut out = Vec::with_capacity(self.prefix.len() + 48 + key.values.len() * 16);
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(b":{");
        let tag_start = out.len();
        match key.values.first() {
            Some(first) => encode_into(first.as_bytes(), &mut out),
            None => encode_into(key.limit.as_bytes(), &mut out),
        }
        let tag = tag_start..out.len();
        out.extend_from_slice(b"}:");
        encode_into(key.limit.as_bytes(), &mut out);
        out.push(b':');
        push_hex(key.fingerprint, &mut out);
        if let Some((_, rest)) = key.values.split_first() {
            out.push(b':');
            out.extend_from_within(tag);
            for value in rest {
                out.push(b':');
                encode_into(value.as_bytes(), &mut out);
            }
        }
        String::from_utf8(out).expect("a key layout writes ASCII only")
    }
}

/// The key marking a report as recorded, in the same slot as `key` (a key this layout built):
/// `<prefix>:{<tag>}:~report:<id in hex>`. No state key can take this form (`~` stands only
/// for an empty value, and a limit's name is never empty).
pub fn report_marker(key: &str, id: &spillway_core::store::ReportId) -> String {
    let head = key.find('}').map_or(key, |close| &key[..=close]);
    format!("{head}:~report:{}", id.hex())
}

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Appends the encoded form of one value (see the module docs).
pub fn encode_into(value: &[u8], out: &mut Vec<u8>) {
    encode_with(value, |piece| out.extend_from_slice(piece));
}

/// Appends `x` as 16 lowercase hex digits.
fn push_hex(x: u64, out: &mut Vec<u8>) {
    for b in x.to_be_bytes() {
        out.extend_from_slice(&hex_pair(b, LOWER));
    }
}

const LOWER: &[u8; 16] = b"0123456789abcdef";
const UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// `b` as two hex digits from `digits`.
fn hex_pair(b: u8, digits: &[u8; 16]) -> [u8; 2] {
    [digits[usize::from(b >> 4)], digits[usize::from(b & 15)]]
}

/// Hands the encoded form of one value (see the module docs) to `emit`, piece by piece,
/// without allocating: a run of plain bytes is one piece, a slice of `value` itself (a key is
/// built for every limit of every request, so the usual all-plain value costs one call).
/// Every piece is ASCII. It works on bytes, so a value is never checked as UTF-8 on the way.
pub fn encode_with(value: &[u8], mut emit: impl FnMut(&[u8])) {
    if value.is_empty() {
        emit(b"~");
    } else if digested(value) {
        emit(b"#");
        for b in sha1_smol::Sha1::from(value).digest().bytes() {
            emit(&hex_pair(b, LOWER));
        }
    } else {
        let mut run = 0;
        for (i, &b) in value.iter().enumerate() {
            if plain(b) {
                continue;
            }
            if run < i {
                emit(&value[run..i]);
            }
            emit(b"%");
            emit(&hex_pair(b, UPPER));
            run = i + 1;
        }
        if run < value.len() {
            emit(&value[run..]);
        }
    }
}

/// The cluster slot of a Redis key: CRC16 (XMODEM) of its hash tag, or of the whole key when
/// it has none, modulo [`SLOTS`].
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16(hashed) % SLOTS
}

/// The cluster slot of the Redis key [`KeyLayout::key`] builds for `key`, under any prefix,
/// without building it: the CRC16 of the hash tag, fed the encoded tag's bytes as they come.
/// It is the one slot function for state keys: the store groups a request's keys by it
/// (`multi_slot::slots`) and the server's guard finds the request's masters by it
/// (see [`crate::topology`]), so both always agree; it runs for every request and does not
/// allocate.
pub fn state_slot(key: &StateKey) -> u16 {
    let tag = match key.values.first() {
        Some(first) => first.as_bytes(),
        None => key.limit.as_bytes(),
    };
    let mut crc = 0;
    encode_with(tag, |piece| crc = crc16_more(crc, piece));
    crc % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    crc16_more(0, bytes)
}

/// The CRC16 so far `crc`, continued over `bytes`.
fn crc16_more(mut crc: u16, bytes: &[u8]) -> u16 {
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(limit: &str, values: &[&str]) -> StateKey {
        StateKey {
            limit: limit.into(),
            fingerprint: 0xabc,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn crc16_matches_the_cluster_specification() {
        // The reference value from the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
    }

    #[test]
    fn layout_is_readable_and_tagged_by_the_first_value() {
        let l = KeyLayout::new("rl").unwrap();
        assert_eq!(
            l.key(&key("per-user", &["acme", "u 1"])),
            "rl:{acme}:per-user:0000000000000abc:acme:u%201"
        );
        assert_eq!(
            l.key(&key("global", &[])),
            "rl:{global}:global:0000000000000abc"
        );
        assert_eq!(l.key(&key("x", &[""])), "rl:{~}:x:0000000000000abc:~");
        // The first value is encoded once, for the tag and its own segment alike.
        assert_eq!(
            l.key(&key("per-user", &["a b", "u:1", "é"])),
            "rl:{a%20b}:per-user:0000000000000abc:a%20b:u%3A1:%C3%A9"
        );
    }

    #[test]
    fn hostile_values_never_collide_or_leave_the_tag() {
        let l = KeyLayout::new("rl").unwrap();
        let long = "z".repeat(10_000);
        let hostile = [
            "a:b", "a", "b", "{a}", "}", "{", "a b", "a\nb", "%3A", "~", "", "#", &long,
        ];
        let mut seen = std::collections::HashSet::new();
        for v in hostile {
            let k = l.key(&key("l", &[v, "x"]));
            assert!(seen.insert(k.clone()), "collision on {v:?}");
            assert_eq!(k.matches('{').count(), 1, "{k}");
            assert_eq!(k.matches('}').count(), 1, "{k}");
            assert!(k.len() < 400);
        }
        // Values that differ only in where a separator would fall stay apart.
        assert_ne!(
            l.key(&key("l", &["a:b", "c"])),
            l.key(&key("l", &["a", "b:c"]))
        );
    }

    #[test]
    fn the_state_slot_is_the_built_keys_slot() {
        let l = KeyLayout::new("rl").unwrap();
        let long = "z".repeat(300);
        for v in ["acme", "u 1", "", "{a}", "%3A", "é", "~", "#", &long] {
            let k = key("l", &[v, "x"]);
            assert_eq!(state_slot(&k), slot(&l.key(&k)), "{v:?}");
        }
        let global = key("global limit", &[]);
        assert_eq!(state_slot(&global), slot(&l.key(&global)));
    }

    /// The encoding byte by byte, as the module docs state it: the pieces `encode_with`
    /// hands over must spell the same bytes.
    fn reference(value: &str) -> String {
        if value.is_empty() {
            return "~".into();
        }
        let encoded: String = value
            .bytes()
            .map(|b| {
                if plain(b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if encoded.len() > MAX_PLAIN {
            return format!("#{}", sha1_smol::Sha1::from(value).digest());
        }
        encoded
    }

    #[test]
    fn encode_into_writes_what_the_module_docs_say() {
        let long = "z".repeat(MAX_PLAIN + 1);
        let edge = "y".repeat(MAX_PLAIN);
        // 42 escaped bytes encode to 126 bytes, 43 to 129; 126 plain and one escaped, 129.
        let escaped_fits = " ".repeat(42);
        let escaped_over = " ".repeat(43);
        let mixed_over = format!("{} ", "x".repeat(126));
        let words = "é".repeat(22);
        for v in [
            &escaped_fits,
            &escaped_over,
            &mixed_over,
            &words,
            "",
            "acme",
            "a b",
            "%3A",
            "é",
            "aé",
            "éa",
            "a:b:c",
            "{x}",
            "~",
            "#",
            "\n",
            "10.0.0.1",
            "日本語",
            "a\u{0}b",
            &long,
            &edge,
        ] {
            let mut fast = Vec::new();
            encode_into(v.as_bytes(), &mut fast);
            assert_eq!(fast, reference(v).as_bytes(), "{v:?}");
        }
        let mut hex = Vec::new();
        push_hex(0x0123_4567_89ab_cdef, &mut hex);
        assert_eq!(
            hex,
            format!("{:016x}", 0x0123_4567_89ab_cdef_u64).as_bytes()
        );
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for p in ["", "a{b", "a}b", "a:b", "a b"] {
            assert!(KeyLayout::new(p).is_err(), "{p:?}");
        }
        assert!(KeyLayout::new("spillway.prod-1").is_ok());
    }
}
