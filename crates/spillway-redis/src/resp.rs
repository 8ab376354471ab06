//! RESP2, as far as a thread connection speaks it (see [`crate::own_conn`]): commands written
//! straight into a buffer, and replies read back as the few shapes our commands get.
//!
//! A command is an array of bulk strings. What never changes from one call to the next (the
//! command's name and, for `FCALL`, the function's) is encoded once into a [`Head`]; a call
//! writes the array's length, copies the head and appends its own arguments.
//!
//! [`parse`] reads one reply from the front of a buffer: a simple string, an error, an
//! integer, a bulk string, an array of those (nested a few levels, for `ROLE`), or a null. It
//! gives the values the `redis` crate's parser gives for the same bytes (`+OK` is
//! [`Value::Okay`]; an error reply is the client's own [`Value::ServerError`], so that a
//! caller tells `NOSCRIPT`, `BUSY` or `READONLY` apart exactly as it does on the shared
//! connection). Anything else (a RESP3 type, which a RESP2 connection never gets, a malformed
//! length, a missing `\r\n`) is an error, never a guess; so is a reply past [`MAX_REPLY`]
//! bytes, refused as soon as its declared or buffered size passes the bound instead of
//! being read into memory.

use redis::Value;

/// The largest reply read, in bytes. A check call answers 48 bytes per limit (six doubles)
/// and a few per request: at most a few hundred KB even for the largest batches, so 16 MiB
/// is far past any reply we expect and still bounds what a broken or hostile server can
/// make a serving thread hold.
pub(crate) const MAX_REPLY: usize = 16 << 20;

/// How deep arrays may nest (`ROLE` nests three levels; the check's reply two).
const MAX_DEPTH: usize = 4;

/// Why a reply could not be read: the connection it came on is out of step and must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable reply from Redis: {0}")]
pub(crate) struct ReplyError(pub(crate) String);

fn bad(why: impl Into<String>) -> ReplyError {
    ReplyError(why.into())
}

/// The fixed front of a command: its first arguments, encoded once.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    parts: usize,
    bytes: Box<[u8]>,
}

impl Head {
    /// The head made of `parts`, such as `["FCALL", "spillway_check_..."]`.
    pub(crate) fn new(parts: &[&[u8]]) -> Self {
        let mut bytes = Vec::new();
        for part in parts {
            put_arg(&mut bytes, part);
        }
        Self {
            parts: parts.len(),
            bytes: bytes.into_boxed_slice(),
        }
    }

    /// Starts a command of this head followed by `rest` more arguments in `out`.
    pub(crate) fn start(&self, out: &mut Vec<u8>, rest: usize) {
        out.push(b'*');
        put_decimal(out, self.parts + rest);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.bytes);
    }
}

/// Appends one argument (a bulk string) to `out`.
pub(crate) fn put_arg(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b'$');
    put_decimal(out, arg.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` as an argument, in decimal.
pub(crate) fn put_number_arg(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let at = decimal(&mut digits, n);
    put_arg(out, &digits[at..]);
}

fn put_decimal(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let at = decimal(&mut digits, n);
    out.extend_from_slice(&digits[at..]);
}

/// Writes `n` in decimal at the end of `digits`; where it starts.
fn decimal(digits: &mut [u8; 20], mut n: usize) -> usize {
    let mut at = digits.len();
    loop {
        at -= 1;
        // A remainder of 10 is one digit.
        #[allow(clippy::cast_possible_truncation)]
        let digit = (n % 10) as u8;
        digits[at] = b'0' + digit;
        n /= 10;
        if n == 0 {
            return at;
        }
    }
}

/// Reads one reply from the front of `buf`: the value and how many bytes it took, or `None`
/// while the reply is not complete yet.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, ReplyError> {
    let mut at = 0;
    match value(buf, &mut at, 0)? {
        Some(value) => Ok(Some((value, at))),
        None if buf.len() > MAX_REPLY => Err(bad(format!(
            "a reply longer than {MAX_REPLY} bytes is refused"
        ))),
        None => Ok(None),
    }
}

/// The line starting at `*at` without its `\r\n`, moving `*at` past it; `None` if it has not
/// all arrived.
fn line<'a>(buf: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, ReplyError> {
    let rest = &buf[*at..];
    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    if end == 0 || rest[end - 1] != b'\r' {
        return Err(bad("a line that does not end in \\r\\n"));
    }
    *at += end + 1;
    Ok(Some(&rest[..end - 1]))
}

/// A length or an integer: an optional `-` and 1 to 19 digits.
fn integer(text: &[u8]) -> Result<i64, ReplyError> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', digits)) => (true, digits),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad(format!(
            "{:?} where a number belongs",
            String::from_utf8_lossy(text)
        )));
    }
    // At most 19 digits: within an i128 whatever they are.
    let n = digits
        .iter()
        .fold(0i128, |n, d| n * 10 + i128::from(d - b'0'));
    i64::try_from(if negative { -n } else { n }).map_err(|_| bad("a number past 64 bits"))
}

/// The length of a bulk string or an array: -1 (null) up to what [`MAX_REPLY`] could hold.
fn length(text: &[u8], per_item: usize) -> Result<Option<usize>, ReplyError> {
    match integer(text)? {
        -1 => Ok(None),
        n if n < 0 => Err(bad(format!("a length of {n}"))),
        n => {
            let n = usize::try_from(n).map_err(|_| bad("a length past memory"))?;
            if n > MAX_REPLY / per_item {
                return Err(bad(format!(
                    "a declared length of {n} is past the {MAX_REPLY} bytes a reply may take"
                )));
            }
            Ok(Some(n))
        }
    }
}

fn value(buf: &[u8], at: &mut usize, depth: usize) -> Result<Option<Value>, ReplyError> {
    let start = *at;
    let Some(&kind) = buf.get(start) else {
        return Ok(None);
    };
    *at += 1;
    let Some(text) = line(buf, at)? else {
        return Ok(None);
    };
    Ok(Some(match kind {
        b'+' if text == b"OK" => Value::Okay,
        b'+' => Value::SimpleString(
            String::from_utf8(text.to_vec()).map_err(|_| bad("a simple string not in UTF-8"))?,
        ),
        b'-' => {
            // The client's own reading of an error, so that its code is what the shared
            // connection's callers see.
            match redis::parse_redis_value(&buf[start..*at]) {
                Ok(err @ Value::ServerError(_)) => err,
                Ok(other) => return Err(bad(format!("an error read as {other:?}"))),
                Err(err) => return Err(bad(format!("an unreadable error line ({err})"))),
            }
        }
        b':' => Value::Int(integer(text)?),
        b'$' => match length(text, 1)? {
            None => Value::Nil,
            Some(n) => {
                let Some(body) = buf.get(*at..*at + n + 2) else {
                    return Ok(None);
                };
                if &body[n..] != b"\r\n" {
                    return Err(bad("a bulk string longer than its length"));
                }
                *at += n + 2;
                Value::BulkString(body[..n].to_vec())
            }
        },
        b'*' => match length(text, 3)? {
            None => Value::Nil,
            Some(n) => {
                if depth == MAX_DEPTH {
                    return Err(bad(format!("arrays nested past {MAX_DEPTH} levels")));
                }
                // Each item takes at least 3 bytes: room for what has arrived, not for what
                // the length claims.
                let mut items = Vec::with_capacity(n.min((buf.len() - *at) / 3 + 1));
                for _ in 0..n {
                    match value(buf, at, depth + 1)? {
                        Some(item) => items.push(item),
                        None => return Ok(None),
                    }
                }
                Value::Array(items)
            }
        },
        other => {
            return Err(bad(format!(
                "a reply of type {:?}, which a RESP2 connection does not get",
                char::from(other)
            )))
        }
    }))
}

#[cfg(test)]
mod tests;
