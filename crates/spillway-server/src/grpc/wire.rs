//! A `RateLimitRequest`'s descriptors and entries counted in its encoded bytes, before the
//! message is decoded.
//!
//! Decoding builds every descriptor the bytes hold, so the limits ([`MAX_DESCRIPTORS`],
//! [`MAX_ENTRIES`]) are kept here, before it, and nowhere else. An empty
//! descriptor takes four bytes on the wire and a few hundred once decoded, so a message under
//! the 4 MiB cap (or about 4 KiB of gzip inflating to one) could make the server build a
//! million of them, a quarter of a gigabyte, on the serving thread. Counting first refuses
//! such a message before anything of it is built.
//!
//! Only the two repeated fields are counted; everything else is skipped by its wire type,
//! with prost's own `decode_key`, `decode_varint` and `skip_field`: the functions its derived
//! decoders call, so they read the bytes exactly as the decoder will (they change only with a
//! prost release, which `Cargo.lock` pins, and such a change fails to build here).
//! Bytes that are not a valid encoding end the count early: the decoders (prost's, and
//! [`super::lenient`]'s for strings that are not UTF-8) refuse them anyway, and meet them no
//! sooner than the count did, so no more than the counted descriptors are ever built.

use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};

/// Most descriptors one request may carry; Envoy sends a handful.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries one descriptor may carry.
pub const MAX_ENTRIES: usize = 32;

/// `RateLimitRequest.descriptors`' field number.
const DESCRIPTORS: u32 = 2;
/// `RateLimitDescriptor.entries`' field number.
const ENTRIES: u32 = 1;

/// Refuses `message`, an encoded `RateLimitRequest`, if it holds more descriptors than a
/// request may, or a descriptor more entries than one may, saying which.
pub fn counts_fit(message: &[u8]) -> Result<(), String> {
    let mut descriptors = 0;
    each_nested(message, DESCRIPTORS, |descriptor| {
        if descriptors == MAX_DESCRIPTORS {
            return Err(format!("at most {MAX_DESCRIPTORS} descriptors per request"));
        }
        let mut entries = 0;
        each_nested(descriptor, ENTRIES, |_| {
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(format!(
                    "descriptors[{descriptors}] has more than {MAX_ENTRIES} entries"
                ));
            }
            Ok(())
        })?;
        descriptors += 1;
        Ok(())
    })
}

/// Calls `each` with the bytes of every length-delimited field numbered `field` in `message`,
/// in order, until it fails or the bytes stop being a valid encoding.
fn each_nested(
    mut message: &[u8],
    field: u32,
    mut each: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    while !message.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut message) else {
            return Ok(());
        };
        if wire_type != WireType::LengthDelimited {
            if skip_field(wire_type, tag, &mut message, DecodeContext::default()).is_err() {
                return Ok(());
            }
            continue;
        }
        let Some(bytes) = decode_varint(&mut message)
            .ok()
            .and_then(|length| usize::try_from(length).ok())
            .and_then(|length| message.get(..length))
        else {
            return Ok(());
        };
        if tag == field {
            each(bytes)?;
        }
        message = &message[bytes.len()..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    use envoy_types::pb::google::protobuf::UInt64Value;
    use proptest::prelude::*;
    use prost::Message;

    fn request(entries_per_descriptor: &[usize]) -> RateLimitRequest {
        RateLimitRequest {
            domain: "d".into(),
            descriptors: entries_per_descriptor
                .iter()
                .map(|&n| RateLimitDescriptor {
                    entries: (0..n)
                        .map(|i| Entry {
                            key: format!("k{i}"),
                            value: "v".into(),
                        })
                        .collect(),
                    hits_addend: Some(UInt64Value { value: 3 }),
                    ..RateLimitDescriptor::default()
                })
                .collect(),
            hits_addend: 2,
        }
    }

    #[test]
    fn the_most_a_request_may_hold_fits_and_one_more_does_not() {
        let most = request(&[MAX_ENTRIES; MAX_DESCRIPTORS]).encode_to_vec();
        assert_eq!(counts_fit(&most), Ok(()));
        let descriptors = request(&[1; MAX_DESCRIPTORS + 1]).encode_to_vec();
        assert_eq!(
            counts_fit(&descriptors),
            Err("at most 64 descriptors per request".into())
        );
        let entries = request(&[1, 1, MAX_ENTRIES + 1]).encode_to_vec();
        assert_eq!(
            counts_fit(&entries),
            Err("descriptors[2] has more than 32 entries".into())
        );
    }

    /// A million empty descriptors, four bytes each: refused at the 65th, from the bytes.
    #[test]
    fn a_million_empty_descriptors_are_refused_from_the_bytes() {
        let message = [0x12, 0x02, 0x0a, 0x00].repeat(1 << 20);
        assert_eq!(
            counts_fit(&message),
            Err("at most 64 descriptors per request".into())
        );
    }

    /// Bytes that do not decode end the count, and the decoder refuses them; what came
    /// before them was counted.
    #[test]
    fn bytes_that_do_not_decode_are_left_to_the_decoder() {
        let mut message = request(&[1; 3]).encode_to_vec();
        message.extend([0x12, 0x7f]); // a descriptor longer than what is left
        assert_eq!(counts_fit(&message), Ok(()));
        assert!(RateLimitRequest::decode(&message[..]).is_err());
        let mut many = request(&[1; MAX_DESCRIPTORS + 1]).encode_to_vec();
        many.push(0xff);
        assert!(counts_fit(&many).is_err());
    }

    /// Whether a decoded request is within the limits.
    fn fits(decoded: &RateLimitRequest) -> bool {
        decoded.descriptors.len() <= MAX_DESCRIPTORS
            && decoded
                .descriptors
                .iter()
                .all(|d| d.entries.len() <= MAX_ENTRIES)
    }

    proptest! {
        /// The count from the bytes agrees with the decoded request's.
        #[test]
        fn the_bytes_count_what_decoding_finds(
            shape in prop::collection::vec(0usize..40, 0..80),
        ) {
            let message = request(&shape).encode_to_vec();
            let decoded = RateLimitRequest::decode(&message[..]).expect("decodes");
            prop_assert_eq!(counts_fit(&message).is_ok(), fits(&decoded));
        }

        /// And for any bytes the decoder takes: a request's bytes with some changed, cut
        /// short, or followed by others (unknown fields, groups, more descriptors...).
        #[test]
        fn any_bytes_that_decode_are_counted_as_decoded(
            shape in prop::collection::vec(0usize..40, 0..70),
            changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
            tail in prop::collection::vec(any::<u8>(), 0..24),
            short in any::<bool>(),
        ) {
            let mut message = request(&shape).encode_to_vec();
            for (at, byte) in changes {
                if !message.is_empty() {
                    let at = at.index(message.len());
                    message[at] = byte;
                }
            }
            if short && !message.is_empty() {
                message.truncate(cut.index(message.len()));
            }
            message.extend(tail);
            if let Ok(decoded) = RateLimitRequest::decode(&message[..]) {
                prop_assert_eq!(counts_fit(&message).is_ok(), fits(&decoded));
            }
            // The changed bytes may leave strings that are not UTF-8: only the lenient
            // decoder reads those.
            if let Ok(decoded) = super::super::lenient::decode(&message) {
                prop_assert_eq!(counts_fit(&message).is_ok(), fits(&decoded));
            }
        }
    }
}
