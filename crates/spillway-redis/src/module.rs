//! Whether a store sends its checks to the native module (`SPILLWAY.CHECK`, crate
//! `spillway-redis-module`) instead of the Lua library.
//!
//! The module is a drop-in for the library's `check`: the same keys and arguments, the same
//! packed reply, the same stored states. A store probes for it once when it prepares (a call
//! with no requests; any string reply means it is there) and then sends every check to it.
//! A server that answers "unknown command" since (restarted without the module, a failover to
//! a node without it) switches the store to the Lua library for good, in the same call, so no
//! request fails for it; the switch is logged once. Refunds always go to the Lua library
//! (the module has no refund; the state format is shared).

use redis::RedisError;
use std::sync::atomic::{AtomicBool, Ordering};

/// The module's check command.
pub(crate) const CHECK: &str = "SPILLWAY.CHECK";

/// Whether checks go to the module; shared by every clone of a runner. Off until a probe
/// finds the module.
#[derive(Debug, Default)]
pub(crate) struct Module {
    loaded: AtomicBool,
}

impl Module {
    /// Whether checks go to the module.
    pub(crate) fn enabled(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Sends checks to the module from now on, saying so once.
    pub(crate) fn enable(&self) {
        if !self.loaded.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis has the spillway module; checks run in it (SPILLWAY.CHECK)");
        }
    }

    /// Switches the store back to the Lua library for good, saying why once.
    pub(crate) fn disable(&self, why: &RedisError) {
        if self.loaded.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error = %why,
                "Redis no longer has the spillway module; checks go to the Lua library"
            );
        }
    }
}

/// Whether `err` says the server does not know the module's command.
pub(crate) fn is_missing(err: &RedisError) -> bool {
    let text = err.to_string();
    text.contains("unknown command") && text.to_ascii_lowercase().contains("spillway.check")
}

/// `SPILLWAY.CHECK keys... args...`: the keys first, so a cluster client routes it by its
/// first key, as Redis Cluster checks it (the module's key range ends two from the last).
pub(crate) fn check_cmd(keys: &[&str], args: &[&[u8]]) -> redis::Cmd {
    let data = CHECK.len()
        + keys.iter().map(|k| k.len()).sum::<usize>()
        + args.iter().map(|a| a.len()).sum::<usize>();
    let mut cmd = redis::Cmd::with_capacity(1 + keys.len() + args.len(), data);
    cmd.arg(CHECK).arg(keys);
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

/// The probe: a check of no requests at the server's time.
pub(crate) fn probe_cmd() -> redis::Cmd {
    check_cmd(&[], &[b"", b""])
}
