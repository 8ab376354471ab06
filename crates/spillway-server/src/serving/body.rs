//! Reading a request body whole, up to a limit: `/v1/check`'s JSON and a gRPC call's one
//! message are both read here, each endpoint turning the error into its own answer.

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use std::pin::pin;

/// What stopped a body being read: `http_body_util::LengthLimitError` when it is longer than
/// the limit, else the body's own error (a [`super::BodyTimeout`] among its causes when it was
/// late).
pub type BodyError = axum::BoxError;

/// Reads a whole body of at most `limit` bytes; trailers are ignored.
///
/// A small body nearly always arrives in one frame, whose bytes are then the body as they
/// are; only a body in several non-empty frames is gathered into a buffer of its own.
/// (Collecting through `http_body_util`'s `Collected` kept every frame in a queue first, an
/// allocation and about 360 instructions per check: `docs/BENCHMARKS.md`, "Fewer
/// instructions per `/v1/check` (issue 16, session 18)".)
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BodyError>,
{
    let mut body = pin!(Limited::new(body, limit));
    let mut first = Bytes::new();
    let mut gathered: Option<BytesMut> = None;
    while let Some(frame) = body.as_mut().frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        // An empty frame adds nothing, and must not turn a one-frame body into a copy.
        if data.is_empty() {
            continue;
        }
        match &mut gathered {
            Some(buffer) => buffer.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut buffer = BytesMut::with_capacity(first.len() + data.len());
                buffer.extend_from_slice(&first);
                buffer.extend_from_slice(&data);
                gathered = Some(buffer);
            }
        }
    }
    Ok(gathered.map_or(first, BytesMut::freeze))
}
