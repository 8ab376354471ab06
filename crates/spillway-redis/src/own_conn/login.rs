//! Where our own connection goes and how it logs in: `AUTH [username] password` (when the URL
//! or the Sentinel settings give a password), `SELECT db` (when not 0) and a `PING` that tells
//! a server wanting a password we lack, all sent in one write and answered in order. Only a
//! server before Redis 6, which knows no usernames, costs a second round trip: `AUTH` again
//! without the username, as the client does.
//!
//! A connection to a Redis Cluster master ([`Target::for_master`]) goes, each time it is made,
//! to the address the store's slot map last reported for that master, and adds `CLUSTER
//! MYID` to the same write: another node answering there (one that took the address after
//! the master moved, or a server outside the cluster) fails the login as an outage, so no call
//! is ever run on it.
//!
//! A refused login is an `AuthenticationFailed` error (or the server's `NOAUTH`), which
//! [`crate::login::refused`] tells; it is judged on the server's own words (`WRONGPASS`,
//! `NOAUTH`, `invalid password`, `AUTH ... without any password`). Any other answer, and a
//! server that closes before answering all of the login (one at `maxclients` writes its error
//! and closes), is an I/O error: an outage, not a setting to fix.

use super::{lost, Io};
use crate::resp;
use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult, Value};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a connection goes and how it logs in.
#[derive(Clone)]
pub(crate) struct Target {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
    pub(super) db: i64,
    /// Bound on connecting and logging in.
    limit: Duration,
    /// For a connection made once ([`Target::made_once`]): set when it is lost. `None`: a lost
    /// connection is made again by itself (see "Failures" in [`super`]).
    pub(super) once: Option<Arc<AtomicBool>>,
    /// The most calls waiting for a reply before the connection is closed as not answering.
    pub(super) max_waiting: u64,
    /// For a connection to a cluster master: where it is now, and who must answer there.
    pub(super) master: Option<Master>,
}

/// A Redis Cluster master a connection must reach, wherever it is: `locate` gives the address
/// to try (the one the slot map last reported; `None`: the target's own), and `id` is the
/// node ID that must answer there. A connection to it whose calls or pings meet two timeouts
/// in a row, no reply read between, is closed if `locate` gives another address than the one
/// it went to both times (see [`super::OwnConn::no_answer`]).
#[derive(Clone)]
pub(crate) struct Master {
    pub(crate) id: String,
    pub(crate) locate: Arc<dyn Fn() -> Option<(String, u16)> + Send + Sync>,
}

#[derive(Clone)]
enum Addr {
    Tcp(String, u16),
    Unix(PathBuf),
}

impl Target {
    /// The target `info` names, connected within `limit`; `None` for what this connection
    /// does not speak (RESP3, TLS), which keeps the client's own connection.
    pub(crate) fn of(info: &ConnectionInfo, limit: Duration) -> Option<Self> {
        let settings = info.redis_settings();
        if settings.protocol() != redis::ProtocolVersion::RESP2 {
            return None;
        }
        let addr = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            _ => return None,
        };
        Some(Self {
            addr,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
            limit,
            once: None,
            max_waiting: super::MAX_WAITING,
            master: None,
        })
    }

    /// This target, whose connection is not made again once lost: every later call fails as
    /// a lost connection, and `lost` is set when it is lost. For a master the sentinels named,
    /// where only they say where to connect next (a server restarted at the address may be
    /// empty, or another one).
    pub(crate) fn made_once(self, lost: Arc<AtomicBool>) -> Self {
        Self {
            once: Some(lost),
            ..self
        }
    }

    /// This target's login and settings at another TCP address (a cluster master named by
    /// the slot map, reached as its seed is).
    pub(crate) fn at(&self, host: &str, port: u16) -> Self {
        Self {
            addr: Addr::Tcp(host.to_owned(), port),
            ..self.clone()
        }
    }

    /// This target for a cluster master: every time the connection is made, it goes where
    /// `master` locates it and checks who answers (see the module docs).
    pub(crate) fn for_master(self, master: Master) -> Self {
        Self {
            master: Some(master),
            ..self
        }
    }

    /// This target, whose connection is closed as not answering only past `max` calls waiting
    /// for a reply instead of [`super::MAX_WAITING`]: for a connection that carries many
    /// calls at once while its server answers (one to a cluster master, a lane per slot).
    pub(crate) fn waiting_up_to(self, max: u64) -> Self {
        Self {
            max_waiting: max,
            ..self
        }
    }

    /// The target of a `redis://` (or `redis+unix://`) URL; `None` as in [`Self::of`], or if
    /// the URL does not parse (the store's own connection has parsed it already).
    pub(crate) fn of_url(url: &str, limit: Duration) -> Option<Self> {
        use redis::IntoConnectionInfo;
        Self::of(&url.into_connection_info().ok()?, limit)
    }
}

/// A connection made and logged in, and for a cluster master's, the TCP address it went to.
pub(super) type LoggedIn = (Box<dyn Io>, Option<(String, u16)>);

/// Connects to `target` and logs in (see the module docs), within its limit.
pub(super) async fn log_in(target: &Target) -> RedisResult<LoggedIn> {
    match tokio::time::timeout(target.limit, log_in_unbounded(target)).await {
        Ok(io) => io,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no Redis connection made within {:?}", target.limit),
        ))),
    }
}

async fn log_in_unbounded(target: &Target) -> RedisResult<LoggedIn> {
    let located = target.master.as_ref().and_then(|m| (m.locate)());
    let mut at = None;
    let mut io: Box<dyn Io> = match (&located, &target.addr) {
        (Some((host, port)), _) | (None, Addr::Tcp(host, port)) => {
            // Kept for a master's connection: where it went (see `OwnConn::no_answer`).
            at = target.master.is_some().then(|| (host.clone(), *port));
            let socket = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|err| {
                    // Of the same kind (a refusal stays one), naming where.
                    let place = crate::login::authority(host, *port);
                    std::io::Error::new(err.kind(), format!("cannot connect to {place}: {err}"))
                })?;
            // A command goes out whole, at once: Nagle's wait for the last segment's
            // acknowledgement would only hold up the next call written while one is out.
            socket.set_nodelay(true)?;
            Box::new(socket)
        }
        (None, Addr::Unix(path)) => Box::new(tokio::net::UnixStream::connect(path).await?),
    };
    let auth = |user: Option<&str>, password: &str| {
        let mut cmd = redis::cmd("AUTH");
        cmd.arg(user).arg(password);
        cmd
    };
    let mut cmds = Vec::with_capacity(3);
    if let Some(password) = &target.password {
        cmds.push(auth(target.username.as_deref(), password));
    }
    if target.db != 0 {
        let mut select = redis::cmd("SELECT");
        select.arg(target.db);
        cmds.push(select);
    }
    // A server that wants a password we were not given refuses this (`NOAUTH`).
    cmds.push(redis::cmd("PING"));
    if target.master.is_some() {
        let mut myid = redis::cmd("CLUSTER");
        myid.arg("MYID");
        cmds.push(myid);
    }
    let mut replies = exchange(&mut io, &cmds).await?;
    if let (Some(password), Some(Value::ServerError(err))) = (&target.password, replies.first()) {
        // A server before Redis 6 knows no usernames: the client tries again without.
        if target.username.is_some()
            && err
                .details()
                .is_some_and(|d| d.contains("wrong number of arguments for 'auth'"))
        {
            cmds[0] = auth(None, password);
            replies = exchange(&mut io, &cmds).await?;
        }
    }
    let mut replies = replies.into_iter();
    if target.password.is_some() {
        match replies.next() {
            Some(Value::Okay) => {}
            Some(Value::ServerError(err)) if is_refusal(&err) => {
                // As the client words it (see `crate::login::refused`).
                return Err(RedisError::from((
                    ErrorKind::AuthenticationFailed,
                    "Password authentication failed",
                )));
            }
            other => return Err(unexpected("AUTH", other)),
        }
    }
    if target.db != 0 {
        match replies.next() {
            Some(Value::Okay) => {}
            Some(Value::ServerError(err)) if is_refusal(&err) => return Err(err.into()),
            Some(Value::ServerError(err)) => {
                return Err(RedisError::from((
                    redis::ServerErrorKind::ResponseError.into(),
                    "Redis server refused to switch database",
                    err.details().unwrap_or_default().to_owned(),
                )))
            }
            other => return Err(unexpected("SELECT", other)),
        }
    }
    match replies.next() {
        Some(Value::ServerError(err)) if is_refusal(&err) => return Err(err.into()),
        other @ (Some(Value::ServerError(_)) | None) => return Err(unexpected("PING", other)),
        Some(_) => {}
    }
    if let Some(master) = &target.master {
        let place = at
            .as_ref()
            .map_or_else(|| "?".to_owned(), |(h, p)| crate::login::authority(h, *p));
        match replies.next() {
            Some(Value::BulkString(id)) if id == master.id.as_bytes() => {}
            Some(Value::BulkString(id)) => {
                return Err(lost(&format!(
                    "the node answering at {place}, where cluster master {} was \
                     reported, is another one (CLUSTER MYID: {})",
                    master.id,
                    String::from_utf8_lossy(&id)
                )))
            }
            // A server outside any cluster, or a user not allowed `CLUSTER MYID`: which node
            // this is cannot be told, and a call run on the wrong one would be answered.
            other => {
                return Err(lost(&format!(
                    "cannot tell which node answers at {place}, where cluster master \
                     {} was reported: it answered CLUSTER MYID with {other:?} (the login's \
                     user needs the right to run it)",
                    master.id
                )))
            }
        }
    }
    Ok((io, at))
}

/// Whether a server's error answer to the login is a refused or missing login, in the words
/// servers use for one (what [`crate::login::refused`] reads as a refusal).
fn is_refusal(err: &redis::ServerError) -> bool {
    let details = err.details().unwrap_or_default();
    matches!(err.code(), "WRONGPASS" | "NOAUTH")
        || details.contains("invalid password")
        || (details.contains("AUTH") && details.contains("without any password"))
}

/// An answer to the login that is no refusal and not what it asks for: an outage.
fn unexpected(what: &str, answer: Option<Value>) -> RedisError {
    lost(&format!(
        "the server answered {what} with {answer:?} while it was being set up"
    ))
}

/// Sends `cmds` in one write on a connection being set up and reads their replies; a server
/// that closes before answering them all is a lost connection.
async fn exchange(io: &mut Box<dyn Io>, cmds: &[redis::Cmd]) -> RedisResult<Vec<Value>> {
    let mut packed = Vec::new();
    for cmd in cmds {
        cmd.write_packed_command(&mut packed);
    }
    let mut written = 0;
    while written < packed.len() {
        let n = std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, &packed[written..]))
            .await?;
        if n == 0 {
            return Err(lost("the socket takes no more bytes"));
        }
        written += n;
    }
    let mut replies = Vec::with_capacity(cmds.len());
    let mut input = Vec::new();
    let mut chunk = [0u8; 1024];
    while replies.len() < cmds.len() {
        match resp::parse(&input) {
            Ok(Some((value, used))) => {
                input.drain(..used);
                replies.push(value);
                continue;
            }
            Ok(None) => {}
            Err(err) => return Err(lost(&err.to_string())),
        }
        let mut buf = ReadBuf::new(&mut chunk);
        std::future::poll_fn(|cx| Pin::new(&mut *io).poll_read(cx, &mut buf)).await?;
        let n = buf.filled().len();
        if n == 0 {
            return Err(lost("the server closed it while it was being set up"));
        }
        input.extend_from_slice(&chunk[..n]);
    }
    Ok(replies)
}
