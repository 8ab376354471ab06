//! Message compression on the direct `ShouldRateLimit` path: which `grpc-encoding` a call
//! names, and inflating a gzip-compressed request message without ever holding more than the
//! size an uncompressed one may have.
//!
//! Envoy's rate-limit filter can be set to compress its calls; a server that refuses them gets
//! treated as failed and Envoy fails open, so gzip must be taken. The decompressed message is
//! capped at [`super::unary::MAX_MESSAGE`] like an uncompressed one, and it is
//! inflated incrementally into a buffer that stops growing one byte past the cap, so a few
//! kilobytes that would inflate to gigabytes (a zip bomb) cost at most the cap in memory and
//! are refused with `RESOURCE_EXHAUSTED`. Answers are sent uncompressed, which every gRPC
//! client accepts. Any other encoding is `UNIMPLEMENTED` with a `grpc-accept-encoding` header
//! naming the ones taken, as the gRPC compression spec prescribes.

use super::unary::MAX_MESSAGE;
use bytes::Bytes;
use http::HeaderMap;
use std::io::Read;
use tonic::Status;

/// The request header naming a call's message encoding.
pub const ENCODING_HEADER: &str = "grpc-encoding";
/// The header listing the encodings a peer takes.
pub const ACCEPT_ENCODING_HEADER: &str = "grpc-accept-encoding";
/// What the direct path takes, as advertised to a caller whose encoding it refused.
pub const ACCEPTED: &str = "gzip,identity";

/// How a call's messages may be compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// No `grpc-encoding`, or `identity`: messages must not be flagged compressed.
    Identity,
    /// `grpc-encoding: gzip`: a message flagged compressed is a gzip stream.
    Gzip,
}

impl Encoding {
    /// The encoding `headers` name, or `None` for one this path does not take.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        // A `HeaderName` constant: looking up by `&str` would parse the name on every call.
        const ENCODING: http::HeaderName = http::HeaderName::from_static(ENCODING_HEADER);
        match headers.get(&ENCODING) {
            None => Some(Self::Identity),
            Some(name) if name == "identity" => Some(Self::Identity),
            Some(name) if name == "gzip" => Some(Self::Gzip),
            Some(_) => None,
        }
    }

    /// The message a call carried, given its prefix's compression flag: `message` itself when
    /// it is not flagged compressed, else inflated under this encoding.
    pub fn decode(self, compressed: bool, message: Bytes) -> Result<Bytes, Status> {
        match (compressed, self) {
            (false, _) => Ok(message),
            (true, Self::Gzip) => gunzip(&message).map(Bytes::from),
            (true, Self::Identity) => Err(Status::invalid_argument(
                "the message is flagged compressed, but the call names no compression",
            )),
        }
    }
}

/// The status for a call whose `grpc-encoding` is not taken here, naming what is.
pub fn unsupported(headers: &HeaderMap) -> Status {
    let named = headers
        .get(ENCODING_HEADER)
        .map(|name| String::from_utf8_lossy(name.as_bytes()).into_owned())
        .unwrap_or_default();
    let mut status = Status::unimplemented(format!(
        "the message encoding `{named}` is not supported; use one of {ACCEPTED}"
    ));
    status.metadata_mut().insert(
        ACCEPT_ENCODING_HEADER,
        tonic::metadata::MetadataValue::from_static(ACCEPTED),
    );
    status
}

/// Inflates one gzip stream, refusing it as soon as it would pass [`MAX_MESSAGE`] bytes.
fn gunzip(compressed: &[u8]) -> Result<Vec<u8>, Status> {
    let cap = MAX_MESSAGE as u64;
    // One byte past the cap tells "exactly the cap" from "more"; reading stops there.
    let mut inflating = flate2::read::GzDecoder::new(compressed).take(cap + 1);
    let mut message = Vec::with_capacity(compressed.len().saturating_mul(4).min(MAX_MESSAGE));
    inflating.read_to_end(&mut message).map_err(|err| {
        Status::invalid_argument(format!(
            "the gzip-compressed message does not inflate: {err}"
        ))
    })?;
    if message.len() as u64 > cap {
        return Err(Status::resource_exhausted(format!(
            "the request message inflates to more than {MAX_MESSAGE} bytes"
        )));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("compress");
        encoder.finish().expect("compressed")
    }

    fn headers(encoding: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(name) = encoding {
            headers.insert(ENCODING_HEADER, HeaderValue::from_static(name));
        }
        headers
    }

    #[test]
    fn the_named_encoding_is_read() {
        assert_eq!(Encoding::of(&headers(None)), Some(Encoding::Identity));
        assert_eq!(
            Encoding::of(&headers(Some("identity"))),
            Some(Encoding::Identity)
        );
        assert_eq!(Encoding::of(&headers(Some("gzip"))), Some(Encoding::Gzip));
        assert_eq!(Encoding::of(&headers(Some("snappy"))), None);
        let status = unsupported(&headers(Some("snappy")));
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("`snappy`"), "{status:?}");
        assert_eq!(
            status
                .metadata()
                .get(ACCEPT_ENCODING_HEADER)
                .map(|v| v.to_str().ok()),
            Some(Some(ACCEPTED))
        );
    }

    #[test]
    fn a_gzip_message_inflates_and_an_unflagged_one_is_taken_as_is() {
        let message = b"a RateLimitRequest, say".repeat(10);
        let inflated = Encoding::Gzip
            .decode(true, gzip(&message).into())
            .expect("inflates");
        assert_eq!(inflated, message);
        let plain = Encoding::Gzip
            .decode(false, Bytes::from_static(b"plain"))
            .expect("taken");
        assert_eq!(plain, &b"plain"[..]);
        let status = Encoding::Identity
            .decode(true, Bytes::from_static(b"x"))
            .expect_err("no compression named");
        assert!(
            status.message().contains("flagged compressed"),
            "{status:?}"
        );
    }

    #[test]
    fn a_message_inflating_past_the_cap_is_refused() {
        // Exactly the cap is taken; one byte more is not.
        let at_cap = vec![0; MAX_MESSAGE];
        assert_eq!(
            gunzip(&gzip(&at_cap)).expect("at the cap").len(),
            MAX_MESSAGE
        );
        let bomb = gzip(&vec![0; 4 * MAX_MESSAGE]);
        assert!(bomb.len() < 128 * 1024, "a bomb is small: {}", bomb.len());
        let status = gunzip(&bomb).expect_err("past the cap");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("4194304 bytes"), "{status:?}");
    }

    #[test]
    fn a_stream_that_is_not_gzip_says_so() {
        let status = gunzip(b"not gzip at all").expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("does not inflate"), "{status:?}");
    }
}
