//! Which form of the Lua code a store calls: the Functions library (`FCALL`), or, on a server
//! without Functions, the plain scripts (`EVALSHA`).
//!
//! A store starts by loading the library (`FUNCTION LOAD REPLACE`). A server that does not
//! know the command (Redis before 7.0, or a proxy or ACL that refuses it) switches the store to
//! scripts for good. A server that lost the library since (a restart without persistence, a
//! failover to a node that never had it, `FUNCTION FLUSH`) answers a call with "Function not
//! found": the call loads the library again and retries once, counted as
//! `spillway_script_errors_total{kind="noscript"}` like a lost script.

use crate::resp::{self, Head};
use redis::{RedisError, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;

/// Whether the store still calls the library; shared by every clone of a runner.
#[derive(Debug, Default)]
pub(crate) struct Functions {
    unsupported: AtomicBool,
}

impl Functions {
    /// Whether calls go through `FCALL`.
    pub(crate) fn enabled(&self) -> bool {
        !self.unsupported.load(Ordering::Relaxed)
    }

    /// Switches the store to plain scripts for good, saying why once.
    pub(crate) fn disable(&self, why: &RedisError) {
        if !self.unsupported.swap(true, Ordering::Relaxed) {
            tracing::info!(
                error = %why,
                "Redis refuses Functions; using plain scripts (EVALSHA), which cost more Redis CPU per call"
            );
        }
    }
}

/// Whether `err` says the server lacks the library's function (lost or never loaded).
pub(crate) fn is_missing(err: &RedisError) -> bool {
    err.to_string().contains("Function not found")
}

/// Whether `err` says the server will not run Functions at all.
pub(crate) fn is_unsupported(err: &RedisError) -> bool {
    refuses_command(err, &["fcall", "function"])
}

/// Whether `err` says the server will not run a command named in `names` (lowercase): it
/// does not know it, or an ACL forbids it.
pub(crate) fn refuses_command(err: &RedisError, names: &[&str]) -> bool {
    let text = err.to_string();
    // An ACL refusal's code is NOPERM; the client shows it as `NoPerm: ...`, so the code is
    // what is compared, not the text.
    (text.contains("unknown command") || err.code() == Some("NOPERM")) && {
        let text = text.to_ascii_lowercase();
        names.iter().any(|name| text.contains(name))
    }
}

/// The command loading the library, replacing an older copy of the same version.
pub(crate) fn load_cmd() -> redis::Cmd {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD")
        .arg("REPLACE")
        .arg(&crate::script::library().source);
    cmd
}

/// Which of the library's two functions a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Check,
    Refund,
}

impl Func {
    /// Its name in the loaded library (named by the library's digest, see
    /// [`crate::script::library`]).
    pub(crate) fn name(self) -> &'static str {
        let lib = crate::script::library();
        match self {
            Func::Check => &lib.check,
            Func::Refund => &lib.refund,
        }
    }
}

/// `FCALL func` over `keys` and `args`.
pub(crate) fn fcall_cmd(func: Func, keys: &[&str], args: &[&[u8]]) -> redis::Cmd {
    let name = func.name();
    // Sized up front: the command is built for every call, and growing it piece by piece
    // cost more than writing it.
    let data = "FCALL".len()
        + name.len()
        + 20
        + keys.iter().map(|k| k.len()).sum::<usize>()
        + args.iter().map(|a| a.len()).sum::<usize>();
    let mut cmd = redis::Cmd::with_capacity(3 + keys.len() + args.len(), data);
    cmd.arg("FCALL").arg(name).arg(keys.len()).arg(keys);
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

/// `FCALL func` over `keys` and `args` appended to `out` as a thread's own connection sends
/// it (see [`crate::own_conn`]): the bytes [`fcall_cmd`] packs, with the command's and the
/// function's names encoded once.
pub(crate) fn write_fcall(out: &mut Vec<u8>, func: Func, keys: &[&str], args: &[&[u8]]) {
    static HEADS: LazyLock<[Head; 2]> = LazyLock::new(|| {
        [Func::Check, Func::Refund].map(|func| Head::new(&[b"FCALL", func.name().as_bytes()]))
    });
    let head = match func {
        Func::Check => &HEADS[0],
        Func::Refund => &HEADS[1],
    };
    head.start(out, 1 + keys.len() + args.len());
    resp::put_number_arg(out, keys.len());
    for key in keys {
        resp::put_arg(out, key.as_bytes());
    }
    for arg in args {
        resp::put_arg(out, arg);
    }
}

/// A server error carried as a value, as an error.
pub(crate) fn lift(reply: redis::RedisResult<Value>) -> redis::RedisResult<Value> {
    match reply {
        Ok(Value::ServerError(err)) => Err(err.into()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread's own connection sends the bytes the client would for the same `FCALL`.
    #[test]
    fn an_fcall_written_directly_is_the_clients_fcall() {
        let packed = [1u8, 0, 255, b'\r', b'\n'];
        for func in [Func::Check, Func::Refund] {
            for keys in [&[][..], &["{t}:a"], &["{t}:a", "{t}:b", ""]] {
                let args: [&[u8]; 3] = [b"", b"1700000000000000", &packed];
                let mut out = b"left alone".to_vec();
                write_fcall(&mut out, func, keys, &args);
                let mut expected = b"left alone".to_vec();
                expected.extend(fcall_cmd(func, keys, &args).get_packed_command());
                assert_eq!(out, expected, "{func:?} {keys:?}");
            }
        }
        let lib = crate::script::library();
        assert_eq!(
            (Func::Check.name(), Func::Refund.name()),
            (&*lib.check, &*lib.refund)
        );
    }
}
