//! A Redis module doing Spillway's check in compiled code.
//!
//! It registers `SPILLWAY.CHECK key... now requests`, a drop-in for the Lua library's `check`
//! function (`crates/spillway-redis/lua/check.lua`): the same keys, the same two arguments
//! (the time or "", and the packed requests), the same packed reply, and the same stored
//! states and expiry rules, so a key written by one reads correctly in the other (a fleet
//! mixing the two, or a store falling back to Lua mid-flight, stays exact). The keys come
//! first so that a cluster client routes the command by its first key; the command is flagged
//! `write deny-oom` with keys from the first argument to the third from last.
//!
//! It also registers `SPILLWAY.VERSION`, answering the SHA-1 of the Lua library's code it was
//! built beside (baked in by `build.rs`). A store sends checks to the module only when that
//! equals its own library's digest: Redis keeps a loaded module until it restarts, so an old
//! module can outlive an upgrade of Spillway, and its rules must not mix with newer Lua.
//!
//! Load it at start: `redis-server --loadmodule .../libspillway_redis_module.so`. The refund
//! stays in Lua (the state format is shared). The one load argument, [`CALLED_WRITES`], is for
//! tests.
//!
//! Layout: [`num`] the Lua's double arithmetic, [`algorithms`] the five string-state
//! algorithms, [`sliding_log`] the sorted-set one, [`check`] the command, `write` its string
//! writes through the key API (on `key`, the few module API functions it calls without the
//! `redis-module` crate's wrappers), `redis` the commands it still calls (the sliding log's).

pub mod algorithms;
pub mod check;
mod key;
pub mod num;
mod redis;
pub mod sliding_log;
mod write;

use redis_module::{redis_module, Context, RedisResult, RedisString, RedisValue, Status};

/// The SHA-1 (40 hex digits) of the Lua library's code this module mirrors; the same digest
/// `spillway_redis::script::library()` computes.
pub const LUA_DIGEST: &str = env!("SPILLWAY_LUA_DIGEST");

/// `SPILLWAY.VERSION`: [`LUA_DIGEST`], whatever the arguments.
fn version(_: &Context, _: Vec<RedisString>) -> RedisResult {
    Ok(RedisValue::BulkString(LUA_DIGEST.to_owned()))
}

/// The one load argument (`--loadmodule <path> called-writes`, or `MODULE LOAD <path>
/// called-writes`): the string writes go through called commands on any Redis, as before 7.0.
/// For tests, which run a newer Redis and must still cover that path; nothing gains from it in
/// production.
pub const CALLED_WRITES: &str = "called-writes";

/// The load arguments read: whether they hold [`CALLED_WRITES`] (in any case), or why the
/// load is refused (any other argument).
pub fn load_args(args: &[&[u8]]) -> Result<bool, String> {
    let mut called = false;
    for arg in args {
        if arg.eq_ignore_ascii_case(CALLED_WRITES.as_bytes()) {
            called = true;
        } else {
            return Err(format!(
                "unknown load argument '{}': the only one is {CALLED_WRITES}, for Spillway's \
                 tests",
                String::from_utf8_lossy(arg)
            ));
        }
    }
    Ok(called)
}

/// At load: the string writes go through the key API on Redis 7.0 and later (`key::enable`,
/// which also sets the module option that path needs), through called commands before or when
/// loaded with [`CALLED_WRITES`] (a warning: no production server should be). The log says
/// which, as it decides how writes reach replicas. Any other argument refuses the load.
fn init(ctx: &Context, args: &[RedisString]) -> Status {
    let args: Vec<&[u8]> = args.iter().map(RedisString::as_slice).collect();
    match load_args(&args) {
        Err(refused) => {
            ctx.log_warning(&refused);
            return Status::Err;
        }
        Ok(true) => ctx.log_warning(&format!(
            "string writes go through called commands (load argument {CALLED_WRITES}, for \
             tests)"
        )),
        Ok(false) if key::enable(ctx) => {
            ctx.log_notice("string writes go through the key API, replicated explicitly");
        }
        Ok(false) => ctx.log_notice(
            "string writes go through called commands (Redis before 7.0, or a key API \
             function missing)",
        ),
    }
    Status::Ok
}

redis_module! {
    name: "spillway",
    version: 1,
    // The system allocator: the module only allocates per call, and tests link this crate
    // outside Redis, where Redis's allocator does not exist.
    allocator: (std::alloc::System, std::alloc::System),
    data_types: [],
    init: init,
    commands: [
        ["spillway.check", check::command, "write deny-oom", 1, -3, 1, ""],
        ["spillway.version", version, "readonly fast", 0, 0, 0, ""],
    ],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_load_argument_keeps_the_default_write_path() {
        assert_eq!(load_args(&[]), Ok(false));
    }

    #[test]
    fn called_writes_is_read_in_any_case() {
        for arg in [&b"called-writes"[..], b"CALLED-WRITES", b"Called-Writes"] {
            assert_eq!(load_args(&[arg]), Ok(true), "{arg:?}");
        }
        assert_eq!(load_args(&[b"called-writes", b"called-writes"]), Ok(true));
    }

    #[test]
    fn any_other_argument_is_refused_naming_it_and_the_one_there_is() {
        let refused = "unknown load argument 'called_writes': the only one is called-writes, \
                       for Spillway's tests";
        assert_eq!(load_args(&[b"called_writes"]), Err(refused.to_owned()));
        // One unknown argument refuses the load, also after the known one.
        let after = load_args(&[b"called-writes", b"fast"]).unwrap_err();
        assert!(
            after.starts_with("unknown load argument 'fast':"),
            "{after}"
        );
        let bytes = load_args(&[b"\xff"]).unwrap_err();
        assert!(
            bytes.starts_with("unknown load argument '\u{fffd}':"),
            "{bytes}"
        );
    }
}
