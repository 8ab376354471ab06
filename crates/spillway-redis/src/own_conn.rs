//! A thread connection's own Redis connection (see [`crate::thread_conn`]): one socket, written
//! and read by whichever of its callers is polled, with no channel or timer of its own (and no task
//! but one while it logs in again).
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
//! setting, `CLIENT KILL`), so that such a close fails no request once the runtime has seen
//! it (a command written before the close reached the socket fails as a lost connection).
//! A connection to a master the sentinels named ([`Target::made_once`]) is never made again:
//! once lost (for any of the reasons above, an idle close included), every call fails, the
//! flag it was given is set (the store's own connection to that master counts as lost with
//! it), and the thread connection is made anew where the sentinels point (see
//! [`crate::sentinel`]). A call it fails that way without writing it (the one that found an
//! idle close, and every later one) fails with an error [`was_not_sent`] tells apart: nothing
//! of it reached the server, so the store sends the request on its shared connection instead
//! (see [`crate::thread_conn`]), within the request's budget. A command written before the
//! runtime saw the close (or waiting for its reply at the close) may have run, and fails as a
//! lost connection.
//! A cluster master's connection ([`Target::for_master`]) is made again wherever the slot map
//! last reported the master; one that cannot be made again fails the call as not sent too,
//! and one whose calls or pings meet two timeouts in a row, no reply read between, while the
//! master is reported elsewhere is closed ([`OwnConn::no_answer`]).
//! The login runs in a task of its own ([`OwnConn::remake`]), so that a caller whose budget
//! ends mid-login does not undo it. A call whose caller gave up keeps its place in the
//! order; its reply is read and dropped.
//!
//! # What it connects to
//! A TCP address or a Unix socket, speaking RESP2, with the login the URL (or the Sentinel
//! settings) gives: `AUTH [username] password`, `SELECT db` and a `PING` that tells a server
//! wanting a password we lack, in one write (see `own_conn/login.rs`). A URL asking for RESP3
//! (`?protocol=resp3`) keeps the client's connection ([`Target::of`] gives `None`); this build
//! has no TLS at all (`rediss://` is refused where the URL is read).

mod login;

use crate::resp;
pub(crate) use login::{Master, Target};
use redis::{ErrorKind, RedisError, RedisResult, Value};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

/// A socket the connection can use: TCP or a Unix socket.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The read buffer's first size (and what it shrinks back to after a large reply).
const READ_CHUNK: usize = 16 * 1024;

/// How many bytes already sent the write buffer keeps while the server reads slowly, and the
/// most room it keeps once all is sent.
const KEEP_SENT: usize = 64 * 1024;

/// The most calls left waiting for a reply on one connection, unless its target says otherwise
/// ([`Target::waiting_up_to`]). A thread's dispatcher to a single server keeps a few calls out
/// at a time ([`crate::batch::IN_FLIGHT`]); more are waiting only when a server stopped
/// answering while its callers gave up, each keeping its place (and its command's bytes, if
/// the server stopped reading too). Past this the connection is closed and made again, so a
/// silent server cannot make a serving thread hold more and more.
const MAX_WAITING: u64 = 1024;

/// A command being written from `mark` on: cut back to `mark` if it is dropped before it is
/// whole (a panic while encoding); `mark` is `usize::MAX` once it is.
struct Partial<'a> {
    out: &'a mut Vec<u8>,
    mark: usize,
}

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        self.out.truncate(self.mark);
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
    /// For a cluster master's connection: the address it went to.
    at: Option<(String, u16)>,
    /// For a cluster master's connection reported elsewhere: [`State::answered`] when a call
    /// on it last got no answer in time (see [`OwnConn::no_answer`]).
    stalled: Option<u64>,
    /// Set when the connection closes, for one made once ([`Target::made_once`]).
    lost_sets: Option<Arc<AtomicBool>>,
    /// Commands not written yet (from `written` on).
    out: Vec<u8>,
    written: usize,
    /// Bytes read and not parsed yet: `input[start..filled]`.
    input: Vec<u8>,
    start: usize,
    filled: usize,
    /// How many bytes from `start` the next reply needs at least: 1 while nothing more is
    /// known (an empty buffer holds no reply), one more than has arrived once a parse found
    /// the reply cut short, or what a bulk string's length says; so that a reply is parsed
    /// only when bytes it may need have arrived, not on every poll.
    need: usize,
    /// Calls from id `first` on, in order; those below `answered` have their reply (or
    /// error), those from it on wait for the next replies, up to `next`.
    waiting: VecDeque<Waiting>,
    first: u64,
    answered: u64,
    next: u64,
    /// Past this many calls waiting, the connection is closed (see [`MAX_WAITING`]).
    max_waiting: u64,
}

struct Shared {
    state: Mutex<State>,
    target: Target,
    /// The task making the connection again, if one is; held while a caller waits for it,
    /// so that one login runs at a time.
    login: tokio::sync::Mutex<Option<JoinHandle<RedisResult<()>>>>,
}

/// A thread connection's own connection to Redis; see the module docs. Cloning shares it.
#[derive(Clone)]
pub(crate) struct OwnConn {
    shared: Arc<Shared>,
}

impl OwnConn {
    /// A connection to `target`, logged in.
    pub(crate) async fn connect(target: Target) -> RedisResult<Self> {
        let (io, at) = login::log_in(&target).await?;
        let mut state = State::new(io, target.once.clone(), target.max_waiting);
        state.at = at;
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                target,
                login: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// Sends the command `encode` writes (see [`crate::resp`]) and reads its reply; an error
    /// reply is a [`Value::ServerError`], as the client gives it.
    pub(crate) async fn call(&self, encode: impl Fn(&mut Vec<u8>)) -> RedisResult<Value> {
        let first = self.send(&encode).await?;
        Answer::new(&self.shared, first).await
    }

    /// Writes the command `encode` writes, making the connection again first if it failed or
    /// the server closed it while idle; the command's id. A cluster master's connection that
    /// cannot be made again (nothing listening, another node there) fails the call as not
    /// sent, so that it goes through the store's cluster connection instead; a refused login
    /// stays a refusal.
    async fn send(&self, encode: &impl Fn(&mut Vec<u8>)) -> RedisResult<u64> {
        if let Some(id) = self.shared.lock().begin(encode) {
            return Ok(id);
        }
        if let Err(err) = self.remake().await {
            if self.shared.target.master.is_none() || crate::login::refused(&err) {
                return Err(err);
            }
            return Err(not_sent(&format!("it could not be made again: {err}")));
        }
        self.shared
            .lock()
            .begin(encode)
            .ok_or_else(|| not_sent("it closed again as soon as it was made"))
    }

    /// Makes the connection again, unless another caller just did. The login runs in a task
    /// of its own, on the caller's runtime (the serving thread's), which the caller waits for:
    /// a caller whose budget ends mid-login leaves it running, and the next caller waits for
    /// the same login instead of starting over.
    async fn remake(&self) -> RedisResult<()> {
        let mut login = self.shared.login.lock().await;
        if self.shared.lock().io.is_some() {
            return Ok(());
        }
        // A login that failed while nobody waited for it is not this caller's answer.
        if login.as_ref().is_some_and(JoinHandle::is_finished) {
            *login = None;
        }
        if self.shared.target.once.is_some() {
            return Err(not_sent(
                "it went to a master the sentinels named, and is not made again by itself",
            ));
        }
        let task = login.get_or_insert_with(|| {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                let (io, at) = login::log_in(&shared.target).await?;
                let mut state = shared.lock();
                state.io = Some(io);
                state.at = at;
                state.stalled = None;
                Ok(())
            })
        });
        let done = task.await;
        *login = None;
        done.unwrap_or_else(|err| Err(lost(&format!("its login stopped: {err}"))))
    }
}

impl OwnConn {
    /// A call or ping on this connection got no answer in time. A cluster master's connection
    /// is closed if the slot map reports the master at another address than the one it went
    /// to, both now and at the previous time a call got no answer, with no reply read in
    /// between: a master that moved while its old address went silent (a host gone without a
    /// reset) would otherwise keep the connection until the kernel gives up on it. The next
    /// call or ping makes it again where the master is reported (checking who answers), and
    /// the calls still waiting on it fail as a lost connection. A single timeout (perhaps of
    /// an earlier connection) closes nothing, nor does a reply read between two; but a master
    /// that stalls past two calls' timeouts while a node reports it at another address (or
    /// spells its address otherwise) has its connection made again there, where its node ID
    /// is checked. No other connection is ever closed this way: a slow server is no reason
    /// to drop the replies on their way.
    pub(crate) fn no_answer(&self) {
        let Some(master) = &self.shared.target.master else {
            return;
        };
        let Some((host, port)) = (master.locate)() else {
            return;
        };
        let mut state = self.shared.lock();
        let moved = state
            .at
            .as_ref()
            .is_some_and(|(h, p)| (h.as_str(), *p) != (host.as_str(), port));
        if !moved || state.io.is_none() {
            state.stalled = None;
            return;
        }
        if state.stalled != Some(state.answered) {
            state.stalled = Some(state.answered);
            return;
        }
        let (old_host, old_port) = state.at.clone().unwrap_or_default();
        tracing::warn!(
            master = %master.id,
            at = %crate::login::authority(&old_host, old_port),
            reported = %crate::login::authority(&host, port),
            "a serving thread's connection to a Redis Cluster master got no answer where it \
             went, and the master is reported elsewhere: closing it, to make it there"
        );
        let why = format!(
            "cluster master {} gave no answer in time here and is now reported at {}",
            master.id,
            crate::login::authority(&host, port)
        );
        state.close(&why, None);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing that holds the lock leaves the state half changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What every error of a lost connection begins with.
const LOST: &str = "a serving thread's Redis connection was lost";

/// An I/O error saying the connection was lost and why: Redis unavailable, to the store.
fn lost(why: &str) -> RedisError {
    lost_with(format!("{LOST}: {why}"))
}

/// [`lost`], for a call none of which was written: the connection is lost and was not made
/// again. The reason is carried as a [`NotSent`], so that [`was_not_sent`] tells it by its
/// type, never by its words.
fn not_sent(why: &str) -> RedisError {
    lost_with(NotSent(why.to_owned()))
}

/// The I/O error (Redis unavailable, to the store) a lost connection fails its calls with.
fn lost_with(why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        why,
    ))
}

/// Why a call failed before any of it was written (see [`not_sent`]).
#[derive(Debug)]
struct NotSent(String);

impl std::fmt::Display for NotSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{LOST}: {}; the call was not sent", self.0)
    }
}

impl std::error::Error for NotSent {}

/// Whether `err` is a call this connection failed without writing any of it ([`not_sent`]):
/// nothing of it reached the server, so it may go through another connection.
pub(crate) fn was_not_sent(err: &RedisError) -> bool {
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    // The client keeps an I/O error behind an `Arc`, which is what its `source` gives.
    let Some(source) = std::error::Error::source(err) else {
        return false;
    };
    let io = match source.downcast_ref::<Shared>() {
        Some(shared) => shared.downcast_ref::<std::io::Error>(),
        None => source.downcast_ref::<std::io::Error>(),
    };
    io.and_then(std::io::Error::get_ref)
        .is_some_and(|inner| inner.is::<NotSent>())
}

/// A client error: what this connection does not send.
fn unsupported(what: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "not sent on a serving thread's own Redis connection",
        what.to_owned(),
    ))
}

impl State {
    /// A connection over `io` with nothing sent or read yet, setting `lost_sets` (if any) when
    /// it closes.
    fn new(io: Box<dyn Io>, lost_sets: Option<Arc<AtomicBool>>, max_waiting: u64) -> Self {
        Self {
            io: Some(io),
            at: None,
            stalled: None,
            lost_sets,
            max_waiting,
            out: Vec::new(),
            written: 0,
            input: vec![0; READ_CHUNK],
            start: 0,
            filled: 0,
            need: 1,
            waiting: VecDeque::new(),
            first: 0,
            answered: 0,
            next: 0,
        }
    }

    /// Writes the command `encode` writes into the buffer and gives it a place in the order;
    /// `None` if the connection is down or the server closed it while it was idle.
    fn begin(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Option<u64> {
        self.io.as_ref()?;
        if self.next - self.answered >= self.max_waiting {
            self.close(
                &format!(
                    "{} calls wait for a reply: the server is not answering",
                    self.max_waiting
                ),
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
        // A panic while encoding takes back what was written of the command, so that no half
        // command goes out ahead of the next one.
        let mut partial = Partial {
            mark: self.out.len(),
            out: &mut self.out,
        };
        encode(&mut *partial.out);
        partial.mark = usize::MAX;
        let id = self.next;
        self.waiting.push_back(Waiting::default());
        self.next += 1;
        Some(id)
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
                Poll::Pending => {
                    // The server reads slowly: what was sent need not stay.
                    if self.written >= KEEP_SENT {
                        self.out.drain(..self.written);
                        self.written = 0;
                    }
                    return Ok(());
                }
            }
        }
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > KEEP_SENT {
            self.out = Vec::new();
        }
        Ok(())
    }

    fn read(&mut self, cx: &mut Context<'_>, me: u64) -> Result<(), String> {
        while self.answered < self.next {
            let pending = &self.input[self.start..self.filled];
            if pending.len() >= self.need {
                match resp::parse_next(pending) {
                    Ok(resp::Parsed::Done(value, used)) => {
                        self.start += used;
                        self.need = 1;
                        self.deliver(Ok(value), me);
                        continue;
                    }
                    Ok(resp::Parsed::Need(need)) => self.need = need,
                    Err(err) => return Err(err.to_string()),
                }
            }
            self.make_room();
            if self.filled == self.input.len() {
                // Not reached: a reply filling the largest buffer is refused by the parser.
                return Err("a reply past the read buffer".into());
            }
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
    /// the buffer, to what the reply is known to need if that is more, and never past
    /// [`resp::MAX_REPLY`] (the parser refuses a reply that fills that).
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
            let size = (self.input.len() * 2).max(self.need).min(resp::MAX_REPLY);
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
        if let Some(lost) = &self.lost_sets {
            lost.store(true, std::sync::atomic::Ordering::Release);
        }
        self.out.clear();
        self.written = 0;
        self.start = 0;
        self.filled = 0;
        self.need = 1;
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
    /// One command, one reply. A command sent without waiting for a reply
    /// (`set_no_response`) is refused: its reply, if the server sends one, would be taken for
    /// the next call's.
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        if cmd.is_no_response() {
            return Box::pin(async { Err(unsupported("a command sent without its reply")) });
        }
        Box::pin(self.call(move |out| cmd.write_packed_command(out)))
    }

    /// Refused: nothing sends a pipeline on a thread connection, and how many replies one
    /// gets (a transaction's `MULTI` and `EXEC`, commands ignored) is not its length.
    fn req_packed_commands<'a>(
        &'a mut self,
        _pipeline: &'a redis::Pipeline,
        _offset: usize,
        _count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(async { Err(unsupported("a pipeline")) })
    }

    fn get_db(&self) -> i64 {
        self.shared.target.db
    }
}

#[cfg(test)]
mod tests;
