//! The few functions of the module API that the `redis-module` crate does not wrap for a key
//! opened for writing (its type, a string value written in place, a delete, an absolute
//! expiry, the "modified" signal, a key's remaining time to live), and the replication and
//! keyspace notification of a write called directly: the crate's wrappers copy every argument
//! into a new Redis string first, which cost more than the write itself. This is the crate's
//! only `unsafe` code: each block calls one module API function.
//!
//! Everything here needs Redis 6.2.2 or later (`RedisModule_SetAbsExpire`); [`available`]
//! says whether the server has it, and callers write through a called command when it does
//! not. A function missing all the same is an error, never a crash.

use redis_module::raw::{self, KeyMode, KeyType, RedisModuleKey};
use redis_module::{Context, NotifyEvent, RedisError, RedisString};
use std::ffi::{c_char, c_longlong, CStr};

/// Whether the server has every function a [`WriteKey`] uses.
pub fn available() -> bool {
    // SAFETY: the function pointers are set once, when Redis loads the module, and only read
    // after (here and in `api`), copied out of their statics.
    let (set_at, signal, kind, delete, get, replicate, notify) = unsafe {
        (
            raw::RedisModule_SetAbsExpire,
            raw::RedisModule_SignalModifiedKey,
            raw::RedisModule_KeyType,
            raw::RedisModule_DeleteKey,
            raw::RedisModule_GetExpire,
            raw::RedisModule_Replicate,
            raw::RedisModule_NotifyKeyspaceEvent,
        )
    };
    set_at.is_some()
        && signal.is_some()
        && kind.is_some()
        && delete.is_some()
        && get.is_some()
        && replicate.is_some()
        && notify.is_some()
}

/// A module API function the server may lack.
fn api<F>(f: Option<F>) -> Result<F, RedisError> {
    f.ok_or(RedisError::Str(
        "ERR spillway.check: this Redis lacks a module API function it needs",
    ))
}

/// The time Redis counts expiries from (`mstime()`: the wall clock, whole milliseconds).
pub fn now_ms() -> i64 {
    // The server's own clock, the one it sets and checks expiries by (not limit time).
    #[allow(clippy::disallowed_methods)]
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as i64)
}

/// A key opened for writing, closed when dropped. Opening it signals nothing: the module
/// turns Redis's implicit "modified" signal off (see `lib.rs`), and [`WriteKey::modified`]
/// gives it when a value did change.
pub struct WriteKey<'a> {
    ctx: &'a Context,
    name: &'a RedisString,
    inner: *mut RedisModuleKey,
}

impl<'a> WriteKey<'a> {
    /// Opens `name` for writing (an absent key too: writing creates it).
    pub fn open(ctx: &'a Context, name: &'a RedisString) -> Result<Self, RedisError> {
        let inner = raw::open_key(ctx.get_raw(), name.inner, KeyMode::READ | KeyMode::WRITE);
        if inner.is_null() {
            return Err(RedisError::Str(
                "ERR spillway.check: a key could not be opened",
            ));
        }
        Ok(Self { ctx, name, inner })
    }

    /// The type of the value at the key ([`KeyType::Empty`] for none).
    pub fn kind(&self) -> Result<KeyType, RedisError> {
        // SAFETY: see `available`.
        let f = api(unsafe { raw::RedisModule_KeyType })?;
        // SAFETY: `inner` is an open key handle (checked non-null in `open`).
        Ok(unsafe { f(self.inner) }.into())
    }

    /// Deletes the key, whatever it holds; nothing when it holds nothing.
    pub fn delete(&self) -> Result<(), RedisError> {
        // SAFETY: see `available`.
        let f = api(unsafe { raw::RedisModule_DeleteKey })?;
        // SAFETY: as in `kind`.
        unsafe { f(self.inner) };
        Ok(())
    }

    /// Makes the key's value the string `value`, keeping its expiry, when it holds a string or
    /// nothing (a new key has no expiry). The bytes are copied into the string Redis holds
    /// (resized first when their length differs), so a key written again and again is neither
    /// reallocated nor looked up again.
    pub fn set(&self, value: &[u8]) -> Result<(), RedisError> {
        let failed = || RedisError::Str("ERR spillway.check: a string could not be written");
        if raw::string_truncate(self.inner, value.len()) != raw::Status::Ok {
            return Err(failed());
        }
        let mut len = 0;
        let at = raw::string_dma(self.inner, &mut len, KeyMode::WRITE);
        if at.is_null() || len != value.len() {
            return Err(failed());
        }
        // SAFETY: Redis gave `at` as the start of the key's string of exactly `len` writable
        // bytes, which no other pointer reaches until the next key call.
        unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), at.cast::<u8>(), len) };
        Ok(())
    }

    /// Sets the key's expiry to the absolute time `at_ms` (milliseconds, Redis's clock).
    pub fn expire_at(&self, at_ms: i64) -> Result<(), RedisError> {
        // SAFETY: see `available`.
        let f = api(unsafe { raw::RedisModule_SetAbsExpire })?;
        // SAFETY: as in `kind`.
        if unsafe { f(self.inner, at_ms) } != raw::REDISMODULE_OK as i32 {
            return Err(RedisError::Str(
                "ERR spillway.check: an expiry could not be set",
            ));
        }
        Ok(())
    }

    /// Signals the key as modified (WATCH, client-side caching), as a command writing it does.
    pub fn modified(&self) -> Result<(), RedisError> {
        // SAFETY: see `available`.
        let f = api(unsafe { raw::RedisModule_SignalModifiedKey })?;
        // SAFETY: the command's context and the key's name outlive the call.
        unsafe { f(self.ctx.get_raw(), self.name.inner) };
        Ok(())
    }
}

impl Drop for WriteKey<'_> {
    fn drop(&mut self) {
        raw::close_key(self.inner);
    }
}

/// The key's remaining time to live in milliseconds as `PTTL` answers it: -2 for no key, -1
/// for a key without an expiry.
pub fn pttl(ctx: &Context, name: &RedisString) -> Result<i64, RedisError> {
    // SAFETY: see `available`.
    let f = api(unsafe { raw::RedisModule_GetExpire })?;
    let inner = raw::open_key(ctx.get_raw(), name.inner, KeyMode::READ);
    if inner.is_null() {
        return Ok(-2);
    }
    // SAFETY: `inner` is an open key handle, closed right after.
    let ttl = unsafe { f(inner) };
    raw::close_key(inner);
    Ok(if ttl == raw::REDISMODULE_NO_EXPIRE as i64 {
        -1
    } else {
        ttl
    })
}

/// A command to replicate: `SET key value PXAT at`, `SET key value XX KEEPTTL` or `DEL key`.
pub enum Propagate<'v> {
    SetAt(&'v [u8], i64),
    SetKeepTtl(&'v [u8]),
    Del,
}

/// Replicates `what` on `key` to replicas and the AOF, after the command's other writes
/// (`RedisModule_Replicate`, which also counts a change for the save points).
pub fn replicate(ctx: &Context, key: &RedisString, what: Propagate) -> Result<(), RedisError> {
    // SAFETY: see `available`.
    let f = api(unsafe { raw::RedisModule_Replicate })?;
    let (c, k) = (ctx.get_raw(), key.inner);
    // SAFETY: each format names exactly the arguments after it ('s' a Redis string, 'b' a
    // pointer and its length, 'c' a C string, 'l' a long long), all alive for the call, which
    // copies what it keeps.
    let status = unsafe {
        match what {
            Propagate::SetAt(v, at) => f(
                c,
                c"SET".as_ptr(),
                c"sbcl".as_ptr(),
                k,
                v.as_ptr().cast::<c_char>(),
                v.len(),
                c"PXAT".as_ptr(),
                at as c_longlong,
            ),
            Propagate::SetKeepTtl(v) => f(
                c,
                c"SET".as_ptr(),
                c"sbcc".as_ptr(),
                k,
                v.as_ptr().cast::<c_char>(),
                v.len(),
                c"XX".as_ptr(),
                c"KEEPTTL".as_ptr(),
            ),
            Propagate::Del => f(c, c"DEL".as_ptr(), c"s".as_ptr(), k),
        }
    };
    if status != raw::REDISMODULE_OK as i32 {
        return Err(RedisError::Str(
            "ERR spillway.check: a write could not be replicated",
        ));
    }
    Ok(())
}

/// Fires the keyspace event `event` of class `class` on `key`.
pub fn notify(
    ctx: &Context,
    class: NotifyEvent,
    event: &CStr,
    key: &RedisString,
) -> Result<(), RedisError> {
    // SAFETY: see `available`.
    let f = api(unsafe { raw::RedisModule_NotifyKeyspaceEvent })?;
    // SAFETY: the context, the event's name and the key outlive the call.
    unsafe { f(ctx.get_raw(), class.bits(), event.as_ptr(), key.inner) };
    Ok(())
}
