//! The check's writes of string states and report markers: what the Lua's `SET` and `DEL`
//! calls do, done through the key API ([`crate::key`]) instead of running the command, which
//! cost Redis more than the check's own work. Each write does all that the command would:
//! the value and expiry, the "modified" signal (WATCH, client-side caching), the keyspace
//! notifications (`set`, `expire`, `del`), and the command Redis would propagate for it to
//! replicas and the AOF (`RedisModule_Replicate`, which also counts the change for the save
//! points; `key.rs` calls it directly): `SET key value PXAT <ms>` for a `SET ... PX`, with
//! the absolute expiry the key got here, so a replica or an AOF applying it later gives the
//! key the same expiry (Redis 7.0 propagates the Lua's `SET ... PX` the same way); `SET key
//! value XX KEEPTTL` and `DEL key` as they are. A write that would change nothing (a `DEL` of no key, an `NX` on an existing
//! key) propagates and signals nothing, as the command does.
//!
//! Redis 7.0 and later put these and the commands the sliding log still calls into one list,
//! in the order they ran, sent wrapped in `MULTI`/`EXEC`; `spillway-redis`'s
//! `tests/module_effects.rs` holds the stream a replica receives to the one the Lua's call
//! gives. Before Redis 7.0 (which propagated called commands at once and replicated ones at
//! the end, out of order; see `key.rs`), on a server without the key functions needed, and
//! for a `KEEPTTL` write over a key of another type (which a check never reaches; see
//! `in_place`), the command is called as before.

use crate::key::{self, notify, replicate, Held, Propagate, WriteKey};
use crate::redis::{Redis, Reply};
use redis_module::{NotifyEvent, RedisError, RedisString};

/// `DEL key`.
pub fn delete(r: &Redis, key: &RedisString) -> Result<(), RedisError> {
    if !key::available() {
        r.write("DEL", &[key.as_slice()])?;
        return Ok(());
    }
    let k = WriteKey::open(r.ctx(), key)?;
    if k.kind()? == Held::Nothing {
        return Ok(());
    }
    k.delete()?;
    k.modified()?;
    notify(r.ctx(), NotifyEvent::GENERIC, c"del", key)?;
    replicate(r.ctx(), key, Propagate::Del)
}

/// `SET key value XX KEEPTTL`, as the Lua calls it (`pcall`: a refused write is a write not
/// done, and the caller goes on to `SET ... PX`): whether the key was written, which it is
/// only when it exists. Once the value is written, a failure to signal, notify or replicate
/// it fails the check instead: writing again with a new expiry would not undo the first.
pub fn set_keeping_ttl(r: &Redis, key: &RedisString, value: &[u8]) -> Result<bool, RedisError> {
    if key::available() {
        if let Some(written) = in_place(r, key, value)? {
            return Ok(written);
        }
    }
    let args = [key.as_slice(), value, b"XX", b"KEEPTTL"];
    Ok(matches!(r.write("SET", &args), Ok(Reply::Bytes(_))))
}

/// [`set_keeping_ttl`] through the key API: whether the key was written, or None for a key of
/// another type (a sliding log's set), which the called command replaces keeping its expiry.
/// The check never meets that one (a kept expiry was read from a string state, which the
/// request can only rewrite as a string or delete before this write; see
/// `tests/module_shared_keys.rs`); it is handled so that it could not fail a check.
fn in_place(r: &Redis, key: &RedisString, value: &[u8]) -> Result<Option<bool>, RedisError> {
    // The handle is closed on return, before any command runs: that command frees the value
    // it points at.
    let k = WriteKey::open(r.ctx(), key)?;
    match k.kind()? {
        Held::Nothing => Ok(Some(false)),
        Held::String => {
            // Written in place: the key keeps its expiry. A write refused here (nothing
            // signalled or replicated yet) is made whole by the caller's `SET ... PX`.
            if k.set(value).is_err() {
                return Ok(Some(false));
            }
            k.modified()?;
            notify(r.ctx(), NotifyEvent::STRING, c"set", key)?;
            replicate(r.ctx(), key, Propagate::SetKeepTtl(value))?;
            Ok(Some(true))
        }
        Held::Other => Ok(None),
    }
}

/// `SET key value PX px`.
pub fn set_with_px(r: &Redis, key: &RedisString, value: &[u8], px: i64) -> Result<(), RedisError> {
    let Some(at) = expiry(px) else {
        r.write(
            "SET",
            &[key.as_slice(), value, b"PX", px.to_string().as_bytes()],
        )?;
        return Ok(());
    };
    let k = WriteKey::open(r.ctx(), key)?;
    if k.kind()? == Held::Other {
        k.delete()?;
    }
    write_expiring(r, &k, key, value, at)
}

/// `SET key value NX PX px`: whether the key was new (and so written).
pub fn set_new(r: &Redis, key: &RedisString, value: &[u8], px: i64) -> Result<bool, RedisError> {
    let Some(at) = expiry(px) else {
        let px = px.to_string();
        let set = r.write("SET", &[key.as_slice(), value, b"NX", b"PX", px.as_bytes()])?;
        return Ok(set != Reply::Null);
    };
    let k = WriteKey::open(r.ctx(), key)?;
    if k.kind()? != Held::Nothing {
        return Ok(false);
    }
    write_expiring(r, &k, key, value, at)?;
    Ok(true)
}

/// The absolute expiry (Redis's milliseconds) `SET ... PX px` gives a key now, when the key
/// API can set it; None for the called command (which refuses a `px` out of range, as the
/// Lua's call is refused).
fn expiry(px: i64) -> Option<i64> {
    if px <= 0 || !key::available() {
        return None;
    }
    key::now_ms().ok()?.checked_add(px)
}

/// The string `value` at a key holding a string or nothing, expiring at `at`; signalled,
/// notified and replicated as `SET ... PX` is.
fn write_expiring(
    r: &Redis,
    k: &WriteKey,
    key: &RedisString,
    value: &[u8],
    at: i64,
) -> Result<(), RedisError> {
    // An empty string would create no key, so the expiry would fail where `SET` succeeds;
    // every state and marker the check writes has at least one byte.
    debug_assert!(!value.is_empty());
    k.set(value)?;
    k.expire_at(at)?;
    k.modified()?;
    notify(r.ctx(), NotifyEvent::STRING, c"set", key)?;
    notify(r.ctx(), NotifyEvent::GENERIC, c"expire", key)?;
    replicate(r.ctx(), key, Propagate::SetAt(value, at))
}
