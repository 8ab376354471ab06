//! The few functions of the module API that the `redis-module` crate does not wrap for a key
//! opened for writing (its type, a string value written in place, a delete, an absolute
//! expiry, the "modified" signal, a key's remaining time to live), and the replication and
//! keyspace notification of a write called directly: the crate's wrappers copy every argument
//! into a new Redis string first, which cost more than the write itself. This is the crate's
//! only `unsafe` code: each block calls one module API function.
//!
//! The writes here need Redis 7.0 or later: before 7.0 a command called with replication
//! (the sliding log's) propagates at once while `RedisModule_Replicate` holds its command to
//! the end of the module's command, so a replica could receive a key's `DEL` before an
//! earlier `SET` of it. [`enable`] decides once, at load (it is not called when the module is
//! loaded with `called-writes`, for tests), and [`available`] answers from that; callers write
//! through a called command when it is false. The read, [`pttl`], has no such
//! condition: it needs only its function, and says when that is missing. A function missing
//! all the same is an error, never a crash.

use redis_module::raw::{self, KeyMode, RedisModuleKey};
use redis_module::{Context, ModuleOptions, NotifyEvent, RedisError, RedisString};
use std::ffi::{c_char, c_int, c_longlong, CStr};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the key API path is on; set once by [`enable`] at load.
static KEY_API: AtomicBool = AtomicBool::new(false);

/// The first server version (`0x00MMmmpp`) that keeps called commands and replicated ones in
/// one list, in the order they ran.
const FIRST_VERSION: c_int = 0x00_07_00_00;

/// At load: turns the key API path on when the server is Redis 7.0 or later and has every
/// function a [`WriteKey`] uses, and then turns off Redis's implicit "modified" signal for keys
/// opened for writing (`write` signals a key only when a write changed it, as a command does).
/// Whether the path is on.
pub fn enable(ctx: &Context) -> bool {
    // SAFETY: the function pointers are set once, when Redis loads the module, before this
    // runs, and only read after (here and at each call site below), copied out of their
    // statics.
    let (version, options, set_at, signal, kind, delete, get, replicate, notify, clock) = unsafe {
        (
            raw::RedisModule_GetServerVersion,
            raw::RedisModule_SetModuleOptions,
            raw::RedisModule_SetAbsExpire,
            raw::RedisModule_SignalModifiedKey,
            raw::RedisModule_KeyType,
            raw::RedisModule_DeleteKey,
            raw::RedisModule_GetExpire,
            raw::RedisModule_Replicate,
            raw::RedisModule_NotifyKeyspaceEvent,
            raw::RedisModule_Milliseconds,
        )
    };
    // A server without `GetServerVersion` is older than 6.0.9, so older than 7.0 too.
    // SAFETY: the function takes no argument and only reads the server's version.
    let recent = version.is_some_and(|f| unsafe { f() } >= FIRST_VERSION);
    let (Some(options), true) = (
        options,
        recent
            && set_at.is_some()
            && signal.is_some()
            && kind.is_some()
            && delete.is_some()
            && get.is_some()
            && replicate.is_some()
            && notify.is_some()
            && clock.is_some(),
    ) else {
        return false;
    };
    // SAFETY: the load's context, valid for the call.
    unsafe {
        options(
            ctx.get_raw(),
            ModuleOptions::NO_IMPLICIT_SIGNAL_MODIFIED.bits(),
        )
    };
    KEY_API.store(true, Ordering::Relaxed);
    true
}

/// Whether writes go through the key API (see [`enable`]).
pub fn available() -> bool {
    KEY_API.load(Ordering::Relaxed)
}

/// What a key holds, as far as a write cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    Nothing,
    String,
    /// Any other type (a sliding log's sorted set, or one this build does not know).
    Other,
}

/// A module API function the server may lack.
fn api<F>(f: Option<F>) -> Result<F, RedisError> {
    f.ok_or(RedisError::Str(
        "ERR spillway.check: this Redis lacks a module API function it needs",
    ))
}

/// The time Redis counts expiries from (`mstime()`: the wall clock, whole milliseconds), read
/// from the server (not limit time).
pub fn now_ms() -> Result<i64, RedisError> {
    // SAFETY: see `enable`.
    let f = api(unsafe { raw::RedisModule_Milliseconds })?;
    // SAFETY: the function takes no argument and only reads the clock.
    Ok(unsafe { f() })
}

/// A key opened for writing, closed when dropped. Opening it signals nothing: the module
/// turns Redis's implicit "modified" signal off (see [`enable`]), and [`WriteKey::modified`]
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

    /// What the key holds. The raw type is compared, not converted: the crate's conversion
    /// panics on a type it does not know, and a panic here would abort Redis.
    pub fn kind(&self) -> Result<Held, RedisError> {
        // SAFETY: see `enable`.
        let f = api(unsafe { raw::RedisModule_KeyType })?;
        // SAFETY: `inner` is an open key handle (checked non-null in `open`).
        let t = unsafe { f(self.inner) };
        Ok(if t == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
            Held::Nothing
        } else if t == raw::REDISMODULE_KEYTYPE_STRING as c_int {
            Held::String
        } else {
            Held::Other
        })
    }

    /// Deletes the key, whatever it holds; nothing when it holds nothing.
    pub fn delete(&self) -> Result<(), RedisError> {
        // SAFETY: see `enable`.
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
        // SAFETY: see `enable`.
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
        // SAFETY: see `enable`.
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
/// for a key without an expiry; None on a server without `RedisModule_GetExpire` (the caller
/// calls `PTTL` instead). A read: on any server that has the function, whatever [`enable`]
/// decided for the writes.
pub fn pttl(ctx: &Context, name: &RedisString) -> Option<i64> {
    // SAFETY: see `enable`.
    let f = unsafe { raw::RedisModule_GetExpire }?;
    let inner = raw::open_key(ctx.get_raw(), name.inner, KeyMode::READ);
    if inner.is_null() {
        return Some(-2);
    }
    // SAFETY: `inner` is an open key handle, closed right after.
    let ttl = unsafe { f(inner) };
    raw::close_key(inner);
    Some(if ttl == raw::REDISMODULE_NO_EXPIRE as i64 {
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
    // SAFETY: see `enable`.
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
    // SAFETY: see `enable`.
    let f = api(unsafe { raw::RedisModule_NotifyKeyspaceEvent })?;
    // SAFETY: the context, the event's name and the key outlive the call.
    unsafe { f(ctx.get_raw(), class.bits(), event.as_ptr(), key.inner) };
    Ok(())
}
