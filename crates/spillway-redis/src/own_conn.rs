//! A thread connection's own Redis connection (see [`crate::thread_conn`]): one socket, written
//! and read by whichever of its callers is polled, with no task, channel or timer of its own.
//!
//! The `redis` crate's multiplexed connection hands each command to a task of its own through
//! a channel, reads the replies there with a general parser, sends each back through a
//! oneshot, and bounds each with a timer of its own beside the store's. On a serving thread,
//! whose calls all come from one dispatcher on one single-threaded runtime, that is most of
//! the work of a call. Here a call writes its command into the connection's one buffer and
//! waits for its reply in order: whichever waiting call is polled flushes the buffer and reads
//! what has arrived, parsing replies ([`crate::resp`]) and handing each to its caller. The
//! caller's own deadline (the runner's timeout) is the only one.
//!
//! # Failures
//! A reply that cannot be read (malformed, of a type RESP2 never sends, or past
//! [`crate::resp::MAX_REPLY`]), a closed socket or an I/O error closes the connection: every
//! call waiting on it fails with an I/O error, which the store counts as Redis unavailable
//! (and which sends the thread connections aside, as a lost connection did before). The next
//! call, or the thread connection's ping, connects again (logging in again); so does a call
//! that finds, before it writes, that the server closed an idle connection (its `timeout`
//! setting, `CLIENT KILL`), so that a connection closed while idle costs no request a failure.
//! A call whose caller gave up keeps its place in the order; its reply is read and dropped.
//!
//! # What it connects to
//! A TCP address or a Unix socket, speaking RESP2, with the login the URL (or the Sentinel
//! settings) gives: `AUTH [username] password`, then `SELECT db`, then a `PING` that tells a
//! server wanting a password we lack, as the client does. A URL asking for RESP3
//! (`?protocol=resp3`) keeps the client's connection ([`Target::of`] gives `None`); this build
//! has no TLS at all (`rediss://` is refused where the URL is read).

use crate::resp;
use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult, Value};
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A socket the connection can use: TCP or a Unix socket.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The read buffer's first size (and what it shrinks back to after a large reply).
const READ_CHUNK: usize = 16 * 1024;

/// The most calls left waiting for a reply on one connection. A thread's dispatcher keeps a
/// few calls out at a time ([`crate::batch::IN_FLIGHT`]); more are waiting only when a server
/// stopped answering while its callers gave up, each keeping its place (and its command's
/// bytes, if the server stopped reading too). Past this the connection is closed and made
/// again, so a silent server cannot make a serving thread hold more and more.
const MAX_WAITING: u64 = 1024;

/// Where a connection goes and how it logs in.
#[derive(Clone)]
pub(crate) struct Target {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    /// Bound on connecting and logging in.
    limit: Duration,
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
        })
    }

    /// The target of a `redis://` (or `redis+unix://`) URL; `None` as in [`Self::of`], or if
    /// the URL does not parse (the store's own connection has parsed it already).
    pub(crate) fn of_url(url: &str, limit: Duration) -> Option<Self> {
        use redis::IntoConnectionInfo;
        Self::of(&url.into_connection_info().ok()?, limit)
    }
}

/// One call waiting for its reply, in the order the commands were written.
#[derive(Default)]
struct Waiting {
    reply: Option<RedisResult<Value>>,
    waker: Option<Waker>,
    /// Its caller took the reply or gave up: it only keeps its place.
    gone: bool,
}

/// The socket and the calls on it.
struct State {
    /// `None` once the connection failed, until it is made again.
    io: Option<Box<dyn Io>>,
    /// Commands not written yet (from `written` on).
    out: Vec<u8>,
    written: usize,
    /// Bytes read and not parsed yet: `input[start..filled]`.
    input: Vec<u8>,
    start: usize,
    filled: usize,
    /// Calls from id `first` on, in order; those below `answered` have their reply (or
    /// error), those from it on wait for the next replies, up to `next`.
    waiting: VecDeque<Waiting>,
    first: u64,
    answered: u64,
    next: u64,
}

struct Shared {
    state: Mutex<State>,
    target: Target,
    /// Held while the connection is made again, so that one caller makes it.
    remaking: tokio::sync::Mutex<()>,
}

/// A thread connection's own connection to Redis; see the module docs. Cloning shares it.
#[derive(Clone)]
pub(crate) struct OwnConn {
    shared: Arc<Shared>,
}

impl OwnConn {
    /// A connection to `target`, logged in.
    pub(crate) async fn connect(target: Target) -> RedisResult<Self> {
        let io = log_in(&target).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    io: Some(io),
                    out: Vec::new(),
                    written: 0,
                    input: vec![0; READ_CHUNK],
                    start: 0,
                    filled: 0,
                    waiting: VecDeque::new(),
                    first: 0,
                    answered: 0,
                    next: 0,
                }),
                target,
                remaking: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Sends the command `encode` writes (see [`crate::resp`]) and reads its reply; an error
    /// reply is a [`Value::ServerError`], as the client gives it.
    pub(crate) async fn call(&self, encode: impl Fn(&mut Vec<u8>)) -> RedisResult<Value> {
        let first = self.send(1, &encode).await?;
        Answer::new(&self.shared, first).await
    }

    /// Writes `n` commands with `encode`, making the connection again first if it failed or
    /// the server closed it while idle; the first command's id.
    async fn send(&self, n: usize, encode: &impl Fn(&mut Vec<u8>)) -> RedisResult<u64> {
        if let Some(first) = self.shared.lock().begin(n, encode) {
            return Ok(first);
        }
        self.remake().await?;
        self.shared
            .lock()
            .begin(n, encode)
            .ok_or_else(|| lost("it closed again as soon as it was made"))
    }

    /// Makes the connection again, unless another caller just did.
    async fn remake(&self) -> RedisResult<()> {
        let _one = self.shared.remaking.lock().await;
        if self.shared.lock().io.is_some() {
            return Ok(());
        }
        let io = log_in(&self.shared.target).await?;
        self.shared.lock().io = Some(io);
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing that holds the lock leaves the state half changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An I/O error saying the connection was lost and why: Redis unavailable, to the store.
fn lost(why: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        format!("a serving thread's Redis connection was lost: {why}"),
    ))
}

impl State {
    /// Writes `n` commands with `encode` into the buffer and gives them places in the order;
    /// `None` if the connection is down or the server closed it while it was idle.
    fn begin(&mut self, n: usize, encode: impl FnOnce(&mut Vec<u8>)) -> Option<u64> {
        self.io.as_ref()?;
        if self.next - self.answered >= MAX_WAITING {
            self.close(
                &format!("{MAX_WAITING} calls wait for a reply: the server is not answering"),
                None,
            );
            return None;
        }
        if self.answered == self.next {
            if let Err(why) = self.still_open() {
                self.close(&why, None);
                return None;
            }
        }
        encode(&mut self.out);
        let first = self.next;
        self.waiting.extend((0..n).map(|_| Waiting::default()));
        self.next += n as u64;
        Some(first)
    }

    /// With no call waiting, whether the server has closed the connection (or sent what
    /// nobody asked for). Costs a read attempt only while the runtime holds the socket as
    /// readable (after a close, or still from the last reply's read); otherwise nothing.
    fn still_open(&mut self) -> Result<(), String> {
        if self.start != self.filled {
            return Err("the server sent a reply nobody asked for".into());
        }
        let Some(io) = self.io.as_mut() else {
            return Err("it is down".into());
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut buf = ReadBuf::new(&mut self.input[self.filled..]);
        match Pin::new(io).poll_read(&mut cx, &mut buf) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                Err("the server closed it while it was idle".into())
            }
            Poll::Ready(Ok(())) => Err("the server sent a reply nobody asked for".into()),
            Poll::Ready(Err(err)) => Err(err.to_string()),
        }
    }

    fn slot(&mut self, id: u64) -> &mut Waiting {
        let at = usize::try_from(id - self.first).unwrap_or(usize::MAX);
        &mut self.waiting[at]
    }

    /// Writes what is buffered and reads what has arrived, handing replies out, while call
    /// `me` waits; closes the connection on a failure.
    fn drive(&mut self, cx: &mut Context<'_>, me: u64) {
        if let Err(why) = self.flush(cx) {
            self.close(&why, Some(me));
            return;
        }
        if let Err(why) = self.read(cx, me) {
            self.close(&why, Some(me));
        }
    }

    fn flush(&mut self, cx: &mut Context<'_>) -> Result<(), String> {
        let Some(io) = self.io.as_mut() else {
            return Ok(());
        };
        while self.written < self.out.len() {
            match Pin::new(&mut *io).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) => return Err("the socket takes no more bytes".into()),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(err)) => return Err(err.to_string()),
                Poll::Pending => return Ok(()),
            }
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }

    fn read(&mut self, cx: &mut Context<'_>, me: u64) -> Result<(), String> {
        while self.answered < self.next {
            match resp::parse(&self.input[self.start..self.filled]) {
                Ok(Some((value, used))) => {
                    self.start += used;
                    self.deliver(Ok(value), me);
                    continue;
                }
                Ok(None) => {}
                Err(err) => return Err(err.to_string()),
            }
            self.make_room();
            let Some(io) = self.io.as_mut() else {
                return Ok(());
            };
            let mut buf = ReadBuf::new(&mut self.input[self.filled..]);
            match Pin::new(io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    return Err("the server closed it".into())
                }
                Poll::Ready(Ok(())) => self.filled += buf.filled().len(),
                Poll::Ready(Err(err)) => return Err(err.to_string()),
                Poll::Pending => return Ok(()),
            }
        }
        // Every reply is in: start the buffer over (smaller again after a large reply).
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
            if self.input.len() > READ_CHUNK {
                self.input = vec![0; READ_CHUNK];
            }
        }
        Ok(())
    }

    /// Room after `filled` for the next read: moves a partial reply to the front, or grows
    /// the buffer (a reply's size is bounded by the parser).
    fn make_room(&mut self) {
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
        }
        if self.filled < self.input.len() {
            return;
        }
        if self.start > 0 {
            self.input.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        } else {
            let size = self.input.len() * 2;
            self.input.resize(size, 0);
        }
    }

    /// Hands the next reply to the call waiting for it (dropped if it gave up).
    fn deliver(&mut self, reply: RedisResult<Value>, me: u64) {
        let id = self.answered;
        self.answered += 1;
        let slot = self.slot(id);
        if slot.gone {
            return;
        }
        slot.reply = Some(reply);
        if id != me {
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }

    /// Closes the connection for `why`: every call still waiting fails.
    fn close(&mut self, why: &str, me: Option<u64>) {
        self.io = None;
        self.out.clear();
        self.written = 0;
        self.start = 0;
        self.filled = 0;
        while self.answered < self.next {
            self.deliver(Err(lost(why)), me.unwrap_or(u64::MAX));
        }
        self.settle();
    }

    /// Drops the places at the front whose callers are gone and whose replies were read.
    fn settle(&mut self) {
        while self.first < self.answered && self.waiting.front().is_some_and(|w| w.gone) {
            self.waiting.pop_front();
            self.first += 1;
        }
    }

    /// Wakes the first call still waiting for a reply, so that someone reads the socket again:
    /// the socket remembers only the last caller that polled it, which may be the one that just
    /// left.
    fn hand_off(&mut self) {
        let from = usize::try_from(self.answered - self.first).unwrap_or(usize::MAX);
        if let Some(waker) = self
            .waiting
            .iter_mut()
            .skip(from)
            .find(|w| !w.gone)
            .and_then(|w| w.waker.take())
        {
            waker.wake();
        }
    }
}

/// One call's reply, in order; see [`OwnConn::call`]. Dropped before its reply, the call
/// keeps its place and its reply is dropped when it comes.
struct Answer<'a> {
    shared: &'a Shared,
    id: u64,
    done: bool,
}

impl<'a> Answer<'a> {
    fn new(shared: &'a Shared, id: u64) -> Self {
        Self {
            shared,
            id,
            done: false,
        }
    }
}

impl Future for Answer<'_> {
    type Output = RedisResult<Value>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut state = this.shared.lock();
        if state.slot(this.id).reply.is_none() {
            state.drive(cx, this.id);
        }
        let slot = state.slot(this.id);
        if let Some(reply) = slot.reply.take() {
            slot.gone = true;
            this.done = true;
            state.settle();
            state.hand_off();
            return Poll::Ready(reply);
        }
        match &slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.shared.lock();
        let slot = state.slot(self.id);
        slot.gone = true;
        slot.reply = None;
        slot.waker = None;
        state.settle();
        state.hand_off();
    }
}

impl redis::aio::ConnectionLike for OwnConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(self.call(move |out| cmd.write_packed_command(out)))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let packed = pipeline.get_packed_pipeline();
            let n = pipeline.len();
            let first = self
                .send(n, &|out: &mut Vec<u8>| out.extend_from_slice(&packed))
                .await?;
            // Every place is held by an answer at once, so that an early error drops the rest.
            let answers: Vec<Answer<'_>> = (first..first + n as u64)
                .map(|id| Answer::new(&self.shared, id))
                .collect();
            let mut replies = Vec::with_capacity(n);
            for answer in answers {
                replies.push(answer.await?);
            }
            Ok(replies.into_iter().skip(offset).take(count).collect())
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.target.db
    }
}

/// Connects to `target` and logs in (see the module docs), within its limit.
async fn log_in(target: &Target) -> RedisResult<Box<dyn Io>> {
    match tokio::time::timeout(target.limit, log_in_unbounded(target)).await {
        Ok(io) => io,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no Redis connection made within {:?}", target.limit),
        ))),
    }
}

async fn log_in_unbounded(target: &Target) -> RedisResult<Box<dyn Io>> {
    let mut io: Box<dyn Io> = match &target.addr {
        Addr::Tcp(host, port) => {
            let socket = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            // A command goes out whole, at once: Nagle's wait for the last segment's
            // acknowledgement would only hold up the next call written while one is out.
            socket.set_nodelay(true)?;
            Box::new(socket)
        }
        Addr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
    };
    if let Some(password) = &target.password {
        let auth = |user: Option<&str>| {
            let mut cmd = redis::cmd("AUTH");
            cmd.arg(user).arg(password);
            cmd
        };
        let answer = ask(&mut io, &auth(target.username.as_deref())).await?;
        let answer = match &answer {
            // A server before Redis 6 knows no usernames: the client tries again without.
            Value::ServerError(err)
                if target.username.is_some()
                    && err
                        .details()
                        .is_some_and(|d| d.contains("wrong number of arguments for 'auth'")) =>
            {
                ask(&mut io, &auth(None)).await?
            }
            _ => answer,
        };
        if !matches!(answer, Value::Okay) {
            // As the client words it (see `crate::login::refused`).
            return Err(RedisError::from((
                ErrorKind::AuthenticationFailed,
                "Password authentication failed",
            )));
        }
    }
    if target.db != 0 {
        let answer = ask(&mut io, redis::cmd("SELECT").arg(target.db)).await?;
        if let Value::ServerError(err) = answer {
            return Err(RedisError::from((
                redis::ServerErrorKind::ResponseError.into(),
                "Redis server refused to switch database",
                err.details().unwrap_or_default().to_owned(),
            )));
        }
    }
    // A server that wants a password we were not given refuses this (`NOAUTH`).
    if let Value::ServerError(err) = ask(&mut io, &redis::cmd("PING")).await? {
        return Err(err.into());
    }
    Ok(io)
}

/// Sends `cmd` on a connection being set up and reads its one reply.
async fn ask(io: &mut Box<dyn Io>, cmd: &redis::Cmd) -> RedisResult<Value> {
    let packed = cmd.get_packed_command();
    let mut written = 0;
    while written < packed.len() {
        let n = std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, &packed[written..]))
            .await?;
        if n == 0 {
            return Err(lost("the socket takes no more bytes"));
        }
        written += n;
    }
    let mut input = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match resp::parse(&input) {
            Ok(Some((value, _))) => return Ok(value),
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
}

#[cfg(test)]
mod tests;
