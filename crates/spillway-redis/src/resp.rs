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
//! bytes, refused as soon as its declared size or what of it has arrived reaches past the
//! bound, instead of being read into memory; and so is a reply of more than [`MAX_VALUES`]
//! values, which bounds what one reply (or one attempt at parsing one that has not all
//! arrived) builds. [`parse_next`] says how many bytes a reply still being read needs at
//! least, so that a large bulk string arriving in pieces is parsed once, when it is all in.

use redis::Value;

/// The largest reply read, in bytes. A check call answers 48 bytes per limit (six doubles)
/// and a few per request: at most a few hundred KB even for the largest batches, so 16 MiB
/// is far past any reply we expect. It bounds the read buffer (which never grows past it) and
/// the bytes of a reply's strings; [`MAX_VALUES`] bounds how many values a reply builds.
pub(crate) const MAX_REPLY: usize = 16 << 20;

/// The most values one reply may hold, counting every array and item. The largest reply we
/// expect is a check's: a packed string and up to two undo strings per check
/// (`MAX_CHECKS` is 256 a call), under a thousand; this bounds what a hostile server can make
/// a parse build (an array of millions of 3-byte items, else) and how long it takes.
pub(crate) const MAX_VALUES: usize = 64 * 1024;

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

/// What [`parse_next`] found at the front of a buffer.
#[derive(Debug, PartialEq)]
pub(crate) enum Parsed {
    /// A whole reply and how many bytes it took.
    Done(Value, usize),
    /// Not all of the reply has arrived: it needs at least this many bytes (more than the
    /// buffer holds).
    Need(usize),
}

/// Reads one reply from the front of `buf`: the value and how many bytes it took, or `None`
/// while the reply is not complete yet.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, ReplyError> {
    Ok(match parse_next(buf)? {
        Parsed::Done(value, used) => Some((value, used)),
        Parsed::Need(_) => None,
    })
}

/// Reads one reply from the front of `buf`, or says how many bytes it needs at least.
pub(crate) fn parse_next(buf: &[u8]) -> Result<Parsed, ReplyError> {
    #[cfg(test)]
    PARSES.set(PARSES.get() + 1);
    let mut reader = Reader {
        buf,
        at: 0,
        values: MAX_VALUES,
        need: buf.len() + 1,
    };
    match reader.value(0)? {
        Some(value) => Ok(Parsed::Done(value, reader.at)),
        // Not whole with `MAX_REPLY` bytes in, or known to need more: past the bound.
        None if buf.len() >= MAX_REPLY || reader.need > MAX_REPLY => Err(bad(format!(
            "a reply longer than {MAX_REPLY} bytes is refused"
        ))),
        None => Ok(Parsed::Need(reader.need)),
    }
}

#[cfg(test)]
thread_local! {
    /// How many times this thread called [`parse_next`]: tests of its callers count them.
    pub(crate) static PARSES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// One reply being read from the front of `buf`.
struct Reader<'a> {
    buf: &'a [u8],
    /// Where the next value starts.
    at: usize,
    /// How many more values the reply may hold.
    values: usize,
    /// The fewest bytes the reply needs, once it is found not to be whole.
    need: usize,
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

impl Reader<'_> {
    fn value(&mut self, depth: usize) -> Result<Option<Value>, ReplyError> {
        let buf = self.buf;
        let start = self.at;
        let Some(&kind) = buf.get(start) else {
            return Ok(None);
        };
        if self.values == 0 {
            return Err(bad(format!("a reply of more than {MAX_VALUES} values")));
        }
        self.values -= 1;
        self.at += 1;
        let Some(text) = line(buf, &mut self.at)? else {
            return Ok(None);
        };
        Ok(Some(match kind {
            b'+' if text == b"OK" => Value::Okay,
            b'+' => Value::SimpleString(
                String::from_utf8(text.to_vec())
                    .map_err(|_| bad("a simple string not in UTF-8"))?,
            ),
            b'-' => {
                // The client's own reading of an error, so that its code is what the shared
                // connection's callers see.
                match redis::parse_redis_value(&buf[start..self.at]) {
                    Ok(err @ Value::ServerError(_)) => err,
                    Ok(other) => return Err(bad(format!("an error read as {other:?}"))),
                    Err(err) => return Err(bad(format!("an unreadable error line ({err})"))),
                }
            }
            b':' => Value::Int(integer(text)?),
            b'$' => match length(text, 1)? {
                None => Value::Nil,
                Some(n) => {
                    let end = self.at + n + 2;
                    let Some(body) = buf.get(self.at..end) else {
                        self.need = end;
                        return Ok(None);
                    };
                    if &body[n..] != b"\r\n" {
                        return Err(bad("a bulk string longer than its length"));
                    }
                    self.at = end;
                    Value::BulkString(body[..n].to_vec())
                }
            },
            b'*' => match length(text, 3)? {
                None => Value::Nil,
                Some(n) => {
                    if depth == MAX_DEPTH {
                        return Err(bad(format!("arrays nested past {MAX_DEPTH} levels")));
                    }
                    if n > self.values {
                        return Err(bad(format!("a reply of more than {MAX_VALUES} values")));
                    }
                    // Each item takes at least 3 bytes: room for what has arrived, not for
                    // what the length claims.
                    let mut items = Vec::with_capacity(n.min((buf.len() - self.at) / 3 + 1));
                    for _ in 0..n {
                        match self.value(depth + 1)? {
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
}

#[cfg(test)]
mod tests;
