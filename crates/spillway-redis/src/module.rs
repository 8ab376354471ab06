//! Whether a store sends its checks to the native module (`SPILLWAY.CHECK`, crate
//! `spillway-redis-module`) instead of the Lua library.
//!
//! The module is a drop-in for the library's `check`: the same keys and arguments, the same
//! packed reply, the same stored states. A store probes for it when it prepares
//! (`SPILLWAY.VERSION`, answering the digest of the Lua code the module was built beside) and
//! sends every check to it only if that digest is its own library's: Redis keeps a module
//! until it restarts, so an old `.so` can outlive an upgrade of Spillway, and its rules must not
//! decide while refunds run newer Lua (a module too old to have `SPILLWAY.VERSION` is refused
//! the same way). A server that answers "unknown command" since (restarted without the
//! module, a failover to a node without it), or refuses the command by ACL, switches the store
//! to the Lua library, in the same call, so no request fails for it; the switch is logged
//! (the first switch each way at `info` or `warn`, repeats at `debug`: see [`switch_level`]).
//! While checks go to Lua, for whichever of these reasons, the store probes again at most once
//! every [`REPROBE`] on its clock (from [`RETRY`] after a probe the server did not answer), so a module loaded since (`MODULE LOAD`, a failover back to
//! a node that has it, the right version after a restart) is taken without restarting
//! Spillway. The check that finds a probe due goes to Lua as usual and the probe is sent once
//! it has its answer (a check that fails or is given up sends none), in a task of its own on
//! the same connection ([`Probing`] lets one run at a time): no request waits for a probe or
//! fails with one. Checks switch when the probe answers. Not on a cluster: the probe names no key, so it reaches any one node, and a
//! cluster where only some nodes have the module would switch back and forth. Refunds
//! always go to the Lua library (the module has no refund; the state format is shared).

use crate::resp::{self, Head};
use redis::{RedisError, RedisResult, Value};
use spillway_core::time::{Micros, SECOND};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use tracing::Level;

/// The module's check command.
pub(crate) const CHECK: &str = "SPILLWAY.CHECK";

/// The module's version command: its reply is the digest of the Lua code it mirrors.
pub(crate) const VERSION: &str = "SPILLWAY.VERSION";

/// The least time between two probes of a store whose checks go to Lua: one command more
/// per store every 30 s costs Redis nothing worth counting, and a module loaded at run time is
/// taken within that.
pub(crate) const REPROBE: Micros = 30 * SECOND;

/// The least time between two probes when the last one was not answered (see
/// [`Module::answered`]), doubled after each further probe in a row not answered, up to
/// [`REPROBE`]: a store that started beside a Redis still loading its data takes the module
/// at its first answered check from this long after that probe, not [`REPROBE`], while
/// something that drops every probe's connection (a proxy that will not pass the command,
/// say) is not met every second. Probes are only sent after an answered check, so a server
/// that is down is not probed at all.
pub(crate) const RETRY: Micros = SECOND;

/// Whether checks go to the module; shared by every clone of a runner. Off until a probe
/// finds the module of this version.
#[derive(Debug, Default)]
pub(crate) struct Module {
    loaded: AtomicBool,
    /// A module of another version was found (and said so once).
    refused: AtomicBool,
    /// When (on the store's clock) the module may be probed for again while checks go to Lua:
    /// [`REPROBE`] after the last probe's answer (the first at start), its start, or the
    /// fallback to Lua, whichever came last; sooner after a probe not answered (see
    /// [`RETRY`]).
    next_probe: AtomicU64,
    /// Probes in a row the server did not answer (each doubles the next [`RETRY`]).
    unanswered: AtomicU32,
    /// A probe is in flight (its [`Probing`] is alive).
    probing: AtomicBool,
    /// The store has switched to the module before (at start or after a fallback).
    entered: AtomicBool,
    /// The store has switched from the module to Lua before.
    left: AtomicBool,
}

/// The right to probe for the module, held by the one probe in flight; dropping it (the probe
/// answered, timed out or its task was dropped) lets the next one start when it is due.
#[derive(Debug)]
pub(crate) struct Probing(Arc<Module>);

impl Drop for Probing {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
    }
}

impl Module {
    /// Takes the module whose `SPILLWAY.VERSION` answered `digest` if it mirrors this
    /// version's Lua library; else says once why checks stay in Lua.
    pub(crate) fn offer(&self, digest: &[u8]) {
        match same_version(digest, &crate::script::library().digest) {
            Ok(()) => {
                self.enable();
            }
            Err(why) => {
                if !self.refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!("{why}; checks go to the Lua library");
                }
            }
        }
    }

    /// Reads the reply to [`probe_cmd`], answered at `now` (the store's clock): takes the
    /// module if it answered this version's digest ([`Module::offer`]); anything else (an
    /// unknown command, an ACL's refusal, a lost connection, no answer in time) leaves checks
    /// where they go. If they stay in Lua, the next probe waits [`REPROBE`] from `now`, or
    /// only [`RETRY`] (doubled for each probe in a row so) when the server did not answer it
    /// (unreachable, too slow, or there but not ready: `LOADING` its data after a restart,
    /// say), which says nothing of the module.
    pub(crate) fn answered(&self, reply: RedisResult<Value>, now: Micros) {
        let wait = match reply {
            Err(err) if err.is_timeout() || crate::error::unavailable(&err) => {
                let row = self.unanswered.fetch_add(1, Ordering::Relaxed);
                let wait = RETRY.saturating_mul(1 << row.min(16)).min(REPROBE);
                tracing::debug!(error = %err, wait_s = wait / SECOND, "the module probe was not answered; probing again sooner");
                wait
            }
            reply => {
                self.unanswered.store(0, Ordering::Relaxed);
                match reply {
                    Ok(Value::BulkString(digest)) => self.offer(&digest),
                    other => {
                        tracing::debug!(reply = ?other, "no spillway module; checks go to Lua")
                    }
                }
                REPROBE
            }
        };
        if !self.enabled() {
            self.next_probe
                .store(now.saturating_add(wait), Ordering::Relaxed);
        }
    }

    /// Whether a check at `now` (the store's clock), while checks go to Lua, should have the
    /// module probed for: the right to probe, for one caller, once `now` has reached the end of
    /// the wait (see [`Module::answered`] and [`Module::disable`]) and no probe is in flight.
    /// The wait starts over here too, so a probe whose task is dropped before it answers
    /// still keeps the pace.
    pub(crate) fn probe_due(self: &Arc<Self>, now: Micros) -> Option<Probing> {
        if now < self.next_probe.load(Ordering::Relaxed)
            || self.probing.swap(true, Ordering::Acquire)
        {
            return None;
        }
        let probing = Probing(Arc::clone(self));
        // A probe that ended between the two loads has moved the time on.
        if now < self.next_probe.load(Ordering::Relaxed) {
            return None;
        }
        self.next_probe
            .store(now.saturating_add(REPROBE), Ordering::Relaxed);
        Some(probing)
    }

    /// Whether checks go to the module.
    pub(crate) fn enabled(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Sends checks to the module from now on, saying so at each switch from Lua (at start,
    /// and after a fallback when a probe finds the module again; see [`switch_level`]). The
    /// level it was said at, if checks were in Lua.
    pub(crate) fn enable(&self) -> Option<Level> {
        if self.loaded.swap(true, Ordering::Relaxed) {
            return None;
        }
        let level = switch_level(Level::INFO, self.entered.swap(true, Ordering::Relaxed));
        let said = "Redis has the spillway module; checks run in it (SPILLWAY.CHECK)";
        if level == Level::INFO {
            tracing::info!("{said}");
        } else {
            tracing::debug!("{said}");
        }
        Some(level)
    }

    /// Switches the store back to the Lua library at `now` (the store's clock), saying why
    /// (see [`switch_level`]); the next probe waits [`REPROBE`] from `now`. The level it was
    /// said at, if checks were in the module.
    pub(crate) fn disable(&self, why: &RedisError, now: Micros) -> Option<Level> {
        if !self.loaded.swap(false, Ordering::Relaxed) {
            return None;
        }
        self.next_probe
            .store(now.saturating_add(REPROBE), Ordering::Relaxed);
        let level = switch_level(Level::WARN, self.left.swap(true, Ordering::Relaxed));
        let said = "Redis no longer has the spillway module; checks go to the Lua library";
        if level == Level::WARN {
            tracing::warn!(error = %why, "{said}");
        } else {
            tracing::debug!(error = %why, "{said}");
        }
        Some(level)
    }
}

/// The level a switch between the module and Lua is logged at: `first` the first time the
/// store switches that way, `debug` when it has before (`again`). A server whose ACL allows
/// the probe but not the check switches both ways every [`REPROBE`]; the first pair says what
/// happened, the rest would only fill the log.
pub(crate) fn switch_level(first: Level, again: bool) -> Level {
    if again {
        Level::DEBUG
    } else {
        first
    }
}

/// Whether the module's reply to `SPILLWAY.VERSION` is `ours`, the digest of this version's
/// Lua code; else what differs, for the log.
pub(crate) fn same_version(reply: &[u8], ours: &str) -> Result<(), String> {
    if reply == ours.as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "Redis has a spillway module built for other Lua code (its digest {}, ours {ours}); \
             restart Redis with the module of this version",
            String::from_utf8_lossy(reply)
        ))
    }
}

/// Whether `err` says the server will not run the module's check: it does not know the
/// command, or an ACL (changed since the probe) forbids it.
pub(crate) fn is_missing(err: &RedisError) -> bool {
    crate::functions::refuses_command(err, &["spillway.check"])
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

/// `SPILLWAY.CHECK keys... args...` appended to `out` as a thread's own connection sends it
/// (see [`crate::own_conn`]): the bytes [`check_cmd`] packs, the command's name encoded once.
pub(crate) fn write_check(out: &mut Vec<u8>, keys: &[&str], args: &[&[u8]]) {
    static HEAD: LazyLock<Head> = LazyLock::new(|| Head::new(&[CHECK.as_bytes()]));
    HEAD.start(out, keys.len() + args.len());
    for key in keys {
        resp::put_arg(out, key.as_bytes());
    }
    for arg in args {
        resp::put_arg(out, arg);
    }
}

/// The probe: the module's version.
pub(crate) fn probe_cmd() -> redis::Cmd {
    redis::cmd(VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread's own connection sends the bytes the client would for the same check.
    #[test]
    fn a_check_written_directly_is_the_clients_command() {
        let packed = [1u8, 0, 255, b'\r', b'\n'];
        for keys in [&[][..], &["{t}:a"], &["{t}:a", "{t}:b", ""]] {
            let args: [&[u8]; 2] = [b"", &packed];
            let mut out = b"left alone".to_vec();
            write_check(&mut out, keys, &args);
            let mut expected = b"left alone".to_vec();
            expected.extend(check_cmd(keys, &args).get_packed_command());
            assert_eq!(out, expected, "{keys:?}");
        }
    }

    #[test]
    fn only_a_module_of_this_version_is_taken() {
        let ours = &crate::script::library().digest;
        assert_eq!(ours.len(), 40);
        assert_eq!(same_version(ours.as_bytes(), ours), Ok(()));
        let mut other = ours.clone().into_bytes();
        other[0] = if other[0] == b'0' { b'1' } else { b'0' };
        let why = same_version(&other, ours).unwrap_err();
        assert!(why.contains(ours) && why.contains(std::str::from_utf8(&other).unwrap()));
        assert!(same_version(b"", ours).is_err());
        assert!(same_version(&ours.as_bytes()[..12], ours).is_err());

        let module = Module::default();
        module.offer(&other);
        assert!(!module.enabled());
        module.offer(ours.as_bytes());
        assert!(module.enabled());
    }

    /// While checks go to Lua, one check has the module probed for once [`REPROBE`] has
    /// passed since the start's probe answered, and the wait starts over at each probe, at
    /// each answer that leaves checks in Lua, and when the module is lost again.
    #[test]
    fn a_store_in_lua_probes_again_at_most_once_every_reprobe() {
        let module = Arc::new(Module::default());
        let due = |now| module.probe_due(now).is_some();
        let none = || Err(RedisError::from((redis::ErrorKind::Client, "no module")));
        let t = 1_700_000_000 * SECOND;
        module.answered(none(), t);
        assert!(!due(t), "the start's probe starts the wait");
        assert!(!due(t + REPROBE - 1));
        assert!(due(t + REPROBE));
        assert!(!due(t + REPROBE), "one caller probes");
        assert!(!due(t + 2 * REPROBE - 1));
        let probing = module.probe_due(t + 2 * REPROBE).expect("due");
        // That probe answers 5 s late: the wait runs from its answer.
        module.answered(none(), t + 2 * REPROBE + 5 * SECOND);
        drop(probing);
        assert!(!due(t + 3 * REPROBE + 5 * SECOND - 1));
        assert!(due(t + 3 * REPROBE + 5 * SECOND));

        module.answered(Ok(Value::BulkString(library_digest())), t + 4 * REPROBE);
        assert!(module.enabled());
        let lost = t + 4 * REPROBE + 7;
        let why = RedisError::from((redis::ErrorKind::Client, "the test's"));
        module.disable(&why, lost);
        assert!(!module.enabled());
        assert!(!due(lost), "the wait starts over");
        assert!(!due(lost + REPROBE - 1));
        assert!(due(lost + REPROBE));
    }

    /// A probe the server did not answer (still loading its data, unreachable, too slow)
    /// says nothing of the module: the next one waits only [`RETRY`], doubled for each in a
    /// row. An answer that says the module is not there waits [`REPROBE`].
    #[test]
    fn a_probe_the_server_could_not_answer_is_tried_again_soon() {
        let t = 1_700_000_000 * SECOND;
        let unanswered: [fn() -> RedisError; 4] = [
            || server_error("LOADING", "Redis is loading the dataset in memory"),
            || server_error("BUSY", "Redis is busy running a script"),
            || std::io::Error::from(std::io::ErrorKind::TimedOut).into(),
            || std::io::Error::from(std::io::ErrorKind::ConnectionReset).into(),
        ];
        for err in unanswered {
            let module = Arc::new(Module::default());
            let why = err().to_string();
            module.answered(Err(err()), t);
            assert!(module.probe_due(t + RETRY - 1).is_none(), "{why}");
            assert!(module.probe_due(t + RETRY).is_some(), "{why}");
        }
        // Each probe in a row not answered doubles the wait, up to REPROBE; an answer, even
        // "unknown command", starts it over.
        let module = Arc::new(Module::default());
        let mut at = t;
        for wait in [1, 2, 4, 8, 16, 30, 30].map(|s| s * SECOND) {
            module.answered(Err(unanswered[3]()), at);
            assert!(module.probe_due(at + wait - 1).is_none(), "{wait}");
            assert!(module.probe_due(at + wait).is_some(), "{wait}");
            at += wait;
        }
        module.answered(Err(told_missing()), at);
        module.answered(Err(unanswered[0]()), at + REPROBE);
        assert!(
            module.probe_due(at + REPROBE + RETRY).is_some(),
            "started over"
        );
        let told: [fn() -> RedisError; 2] = [told_missing, || {
            server_error(
                "NOPERM",
                "User app has no permissions to run the 'spillway.version' command",
            )
        }];
        for err in told {
            let module = Arc::new(Module::default());
            let why = err().to_string();
            module.answered(Err(err()), t);
            assert!(module.probe_due(t + REPROBE - 1).is_none(), "{why}");
            assert!(module.probe_due(t + REPROBE).is_some(), "{why}");
        }
    }

    /// The reply of a server without the module to its probe.
    fn told_missing() -> RedisError {
        server_error(
            "ERR",
            "unknown command 'SPILLWAY.VERSION', with args beginning with: ",
        )
    }

    /// An error reply `-CODE text`, as the client reads it off the wire.
    fn server_error(code: &str, text: &str) -> RedisError {
        let line = format!("-{code} {text}\r\n");
        match redis::parse_redis_value(line.as_bytes()) {
            Ok(Value::ServerError(err)) => RedisError::from(err),
            other => panic!("an error reply, not {other:?}"),
        }
    }

    /// This version's digest, as `SPILLWAY.VERSION` answers it.
    fn library_digest() -> Vec<u8> {
        crate::script::library().digest.clone().into_bytes()
    }

    /// One probe at a time: while one is in flight no other starts, however late it answers.
    #[test]
    fn a_probe_in_flight_holds_off_the_next() {
        let module = Arc::new(Module::default());
        let t = 1_700_000_000 * SECOND;
        let probing = module.probe_due(t).expect("due: no probe ever answered");
        assert!(module.probe_due(t + 5 * REPROBE).is_none(), "one in flight");
        drop(probing);
        assert!(
            module.probe_due(t + 5 * REPROBE).is_some(),
            "due once it ended"
        );
    }

    /// A store that flaps (an ACL allowing the probe but not the check) says the first switch
    /// each way at `info` and `warn`, and every repeat at `debug`; a call that switches
    /// nothing says nothing.
    #[test]
    fn a_repeated_switch_is_logged_at_debug() {
        let module = Module::default();
        let why = RedisError::from((redis::ErrorKind::Client, "the test's"));
        let t = 1_700_000_000 * SECOND;
        assert_eq!(module.disable(&why, t), None, "checks were in Lua already");
        assert_eq!(module.enable(), Some(Level::INFO), "found at start");
        assert_eq!(module.enable(), None);
        assert_eq!(
            module.disable(&why, t),
            Some(Level::WARN),
            "the first fallback"
        );
        assert_eq!(module.disable(&why, t), None);
        for _ in 0..3 {
            assert_eq!(module.enable(), Some(Level::DEBUG), "found again");
            assert_eq!(module.disable(&why, t), Some(Level::DEBUG), "lost again");
        }
        assert_eq!(switch_level(Level::WARN, false), Level::WARN);
        assert_eq!(switch_level(Level::INFO, true), Level::DEBUG);
    }

    #[test]
    fn an_acl_refusal_of_the_check_counts_as_missing() {
        // As the server sends them.
        let err = server_error;
        assert!(is_missing(&err(
            "NOPERM",
            "User app has no permissions to run the 'spillway.check' command"
        )));
        assert!(!is_missing(&err(
            "NOPERM",
            "User app has no permissions to run the 'get' command"
        )));
        assert!(!is_missing(&err(
            "ERR",
            "spillway.check: limit 0 is not whole"
        )));
    }
}
