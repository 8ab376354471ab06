//! A `RateLimitRequest` whose strings are not all UTF-8, read anyway.
//!
//! Envoy copies a request header's bytes into a descriptor value as they came (its
//! `request_headers` action). HTTP lets a header value hold bytes above 0x7F, and Envoy sends
//! them whether or not they make UTF-8. prost refuses such a message (a proto3 string must be
//! UTF-8), and a refused call is an error, which Envoy answers by admitting the request with no
//! limit at all unless it is set to `failure_mode_deny: true`: one such byte in a header that
//! feeds a descriptor would pass every limit.
//!
//! So a message the decoder refuses is read again here, its strings taken as bytes, and any
//! that is not UTF-8 is read with each invalid sequence replaced by U+FFFD
//! ([`String::from_utf8_lossy`]). Such values may share a counter with one another, and with
//! a valid value holding U+FFFD itself (more denial, never less); every other valid value
//! keeps its own, the one it has on every other way in. The decoder is prost's as for any
//! message, with strings read as bytes: it takes exactly what prost takes, and more only where
//! a string is not UTF-8.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::UInt64Value;
use prost::Message;

/// `RateLimitRequest` with its strings as bytes (same field numbers, same wire format).
#[derive(Clone, PartialEq, Message)]
struct Request {
    #[prost(bytes = "vec", tag = "1")]
    domain: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    descriptors: Vec<Descriptor>,
    #[prost(uint32, tag = "3")]
    hits_addend: u32,
}

/// `RateLimitDescriptor` with its entries' strings as bytes.
#[derive(Clone, PartialEq, Message)]
struct Descriptor {
    #[prost(message, repeated, tag = "1")]
    entries: Vec<RawEntry>,
    #[prost(message, optional, tag = "2")]
    limit: Option<RateLimitOverride>,
    #[prost(message, optional, tag = "3")]
    hits_addend: Option<UInt64Value>,
    #[prost(bool, tag = "4")]
    is_negative_hits: bool,
}

/// A descriptor entry's key and value as bytes.
#[derive(Clone, PartialEq, Message)]
struct RawEntry {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `message` read with its strings as bytes, taken as UTF-8 where they are and with invalid
/// sequences replaced where not; the decoder's error if it does not decode even so.
pub fn decode(message: &[u8]) -> Result<RateLimitRequest, prost::DecodeError> {
    let raw = Request::decode(message)?;
    Ok(RateLimitRequest {
        domain: text(raw.domain),
        descriptors: raw
            .descriptors
            .into_iter()
            .map(|d| RateLimitDescriptor {
                entries: d
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        key: text(e.key),
                        value: text(e.value),
                    })
                    .collect(),
                limit: d.limit,
                hits_addend: d.hits_addend,
                is_negative_hits: d.is_negative_hits,
            })
            .collect(),
        hits_addend: raw.hits_addend,
    })
}

/// `bytes` as text: as they are when UTF-8, else with each invalid sequence replaced.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &[u8], value: &[u8]) -> RawEntry {
        RawEntry {
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn request(domain: &[u8], entries: Vec<RawEntry>) -> Vec<u8> {
        Request {
            domain: domain.to_vec(),
            descriptors: vec![Descriptor {
                entries,
                limit: Some(RateLimitOverride {
                    requests_per_unit: 7,
                    unit: 2,
                }),
                hits_addend: Some(UInt64Value { value: 3 }),
                is_negative_hits: true,
            }],
            hits_addend: 5,
        }
        .encode_to_vec()
    }

    /// A message prost takes reads the same here.
    #[test]
    fn a_valid_message_reads_as_the_decoder_reads_it() {
        let message = request(b"shop", vec![entry(b"user", "zoë".as_bytes())]);
        let strict = RateLimitRequest::decode(&message[..]).expect("valid");
        assert_eq!(decode(&message).ok(), Some(strict));
    }

    /// Bytes that are not UTF-8 are read with U+FFFD in their place, and nothing else of the
    /// message changes.
    #[test]
    fn strings_that_are_not_utf8_are_read_with_replacements() {
        let message = request(
            b"sh\xffop",
            vec![entry(b"user", b"u\xff\xfe"), entry(b"k\x80", b"ok")],
        );
        assert!(RateLimitRequest::decode(&message[..]).is_err());
        let read = decode(&message).expect("read leniently");
        assert_eq!(read.domain, "sh\u{fffd}op");
        assert_eq!(read.hits_addend, 5);
        let d = &read.descriptors[0];
        let entries: Vec<(&str, &str)> = d
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            entries,
            [("user", "u\u{fffd}\u{fffd}"), ("k\u{fffd}", "ok")]
        );
        assert_eq!(d.limit.as_ref().map(|l| l.requests_per_unit), Some(7));
        assert_eq!(d.hits_addend.as_ref().map(|h| h.value), Some(3));
        assert!(d.is_negative_hits);
    }

    /// What does not decode as bytes either is still refused.
    #[test]
    fn a_message_that_does_not_decode_is_still_refused() {
        assert!(decode(&[0x12, 0x7f]).is_err());
    }
}
