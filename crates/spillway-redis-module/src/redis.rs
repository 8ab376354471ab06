//! Commands called inside the module's command, through the module API's call (the same
//! commands the Lua code sends with `redis.call`), and their replies as owned values: the
//! sliding log's, and the string writes on a server without the key functions `write.rs`
//! uses.
//!
//! Writes are called with the `!` flag, so Redis replicates them (and appends them to the AOF)
//! as it does a Lua function's writes: replicas and the AOF receive the effects, never the
//! module command itself, whose time comes from the master's clock.

use redis_module::{CallOptions, CallOptionsBuilder, CallReply, CallResult, Context, RedisError};

/// A command's reply, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Bytes(Vec<u8>),
    Int(i64),
    Null,
    Array(Vec<Reply>),
    /// Any other type (no command called here answers one).
    Other,
}

/// The context a command runs in, with the call options made once per command.
pub struct Redis<'a> {
    ctx: &'a Context,
    read: CallOptions,
    write: CallOptions,
}

impl<'a> Redis<'a> {
    pub fn new(ctx: &'a Context) -> Self {
        Self {
            ctx,
            read: CallOptionsBuilder::new().build(),
            write: CallOptionsBuilder::new().replicate().build(),
        }
    }

    /// The module context (for opening keys directly).
    pub fn ctx(&self) -> &Context {
        self.ctx
    }

    /// Calls a command that only reads.
    pub fn read(&self, cmd: &str, args: &[&[u8]]) -> Result<Reply, RedisError> {
        owned(self.ctx.call_ext::<_, CallResult>(cmd, &self.read, args))
    }

    /// Calls a command that writes, replicated.
    pub fn write(&self, cmd: &str, args: &[&[u8]]) -> Result<Reply, RedisError> {
        owned(self.ctx.call_ext::<_, CallResult>(cmd, &self.write, args))
    }
}

fn owned(result: CallResult) -> Result<Reply, RedisError> {
    match result {
        // No reply at all: the call failed before the command ran (an unknown command, wrong
        // arity, a refused write). Taken as a reply it would skip a write or read a report
        // marker as fresh, so it fails the whole check.
        Ok(CallReply::Unknown) => Err(RedisError::Str(
            "ERR spillway.check: a command inside it could not run",
        )),
        Ok(reply) => Ok(own(&reply)),
        Err(err) => Err(RedisError::String(
            err.to_utf8_string()
                .unwrap_or_else(|| "ERR a command inside spillway.check failed".into()),
        )),
    }
}

fn own(reply: &CallReply) -> Reply {
    match reply {
        CallReply::String(s) => Reply::Bytes(s.as_bytes().to_vec()),
        CallReply::I64(i) => Reply::Int(i.to_i64()),
        CallReply::Null(_) => Reply::Null,
        CallReply::Array(a) => Reply::Array(
            a.iter()
                .map(|item| item.map_or(Reply::Other, |r| own(&r)))
                .collect(),
        ),
        _ => Reply::Other,
    }
}

impl Reply {
    /// The integer of an integer reply.
    pub fn int(&self) -> Result<i64, RedisError> {
        match self {
            Reply::Int(i) => Ok(*i),
            other => Err(unexpected(other)),
        }
    }

    /// The elements of an array reply.
    pub fn array(self) -> Result<Vec<Reply>, RedisError> {
        match self {
            Reply::Array(items) => Ok(items),
            other => Err(unexpected(&other)),
        }
    }

    /// The bytes of a string reply.
    pub fn bytes(&self) -> Result<&[u8], RedisError> {
        match self {
            Reply::Bytes(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: &Reply) -> RedisError {
    RedisError::String(format!("ERR spillway.check: unexpected reply {reply:?}"))
}
