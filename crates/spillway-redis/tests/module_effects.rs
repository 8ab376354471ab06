//! What a module call does besides its reply and the values it stores, held to the Lua
//! library's call (the module writes string states through the key API and replicates each
//! write itself, while the sliding log still calls commands): the commands a replica and the
//! AOF receive, in the order they ran, and the keyspace notifications; a transaction watching
//! a key the module writes is aborted, and one watching a key it leaves alone is not; an AOF
//! replayed holds exactly what the module wrote.

mod common;

use common::module::{
    call, connect, load_library, pack, random_call, replicated, usual_limits, with_module_args,
    CALLED_WRITES, TTL_SLACK,
};
use common::T0;
use redis::aio::MultiplexedConnection;
use redis::Value;
use spillway_testkit::redis::{calls, command, module_path, RedisServer};
use spillway_testkit::vectors::Rng;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A raw RESP connection, read item by item.
struct Resp(BufReader<TcpStream>);

impl Resp {
    fn connect(port: u16, cmd: &[&str]) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = format!("*{}\r\n", cmd.len());
        for a in cmd {
            out += &format!("${}\r\n{a}\r\n", a.len());
        }
        (&s).write_all(out.as_bytes()).unwrap();
        Resp(BufReader::new(s))
    }

    /// One line, without its line end.
    fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.0.read_until(b'\n', &mut line).unwrap();
        assert!(line.ends_with(b"\n"), "the connection ended");
        line.truncate(line.len() - 1);
        if line.ends_with(b"\r") {
            line.pop();
        }
        line
    }

    fn bulk(&mut self, len: &[u8]) -> Vec<u8> {
        let len: usize = std::str::from_utf8(len).unwrap().parse().unwrap();
        let mut data = vec![0; len];
        self.0.read_exact(&mut data).unwrap();
        data
    }

    /// One array (a command of a replication stream, a pub/sub message), its elements as bytes.
    fn array(&mut self) -> Vec<Vec<u8>> {
        let head = self.line();
        assert_eq!(
            head.first(),
            Some(&b'*'),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let n: usize = std::str::from_utf8(&head[1..]).unwrap().parse().unwrap();
        (0..n)
            .map(|_| {
                let item = self.line();
                match item.first() {
                    Some(b'$') => {
                        let data = self.bulk(&item[1..]);
                        self.line();
                        data
                    }
                    _ => item[1..].to_vec(),
                }
            })
            .collect()
    }

    /// The items up to the next that names the key `sync` (the test's marker between calls).
    fn until_sync(&mut self, skip: &[&[u8]]) -> Vec<Vec<Vec<u8>>> {
        let mut items = Vec::new();
        loop {
            let item = self.array();
            if item.iter().any(|a| a == b"sync") {
                return items;
            }
            if !skip.contains(&item[0].as_slice()) {
                items.push(item);
            }
        }
    }
}

/// What a replica of `port` receives after its initial copy (`SYNC`, as a replica too old for
/// `PSYNC` asks: the snapshot, then every write propagated).
fn replica(port: u16) -> Resp {
    let mut r = Resp::connect(port, &["SYNC"]);
    loop {
        // Empty lines keep the link alive while the snapshot is made; then its size and bytes.
        let line = r.line();
        if let Some(len) = line.strip_prefix(b"$") {
            r.bulk(len);
            return r;
        }
    }
}

/// The keyspace events of `port` (`__keyevent@0__:<event>`, the key as the message).
fn keyspace_events(port: u16) -> Resp {
    let mut r = Resp::connect(port, &["PSUBSCRIBE", "__keyevent@0__:*"]);
    assert_eq!(r.array()[0], b"psubscribe");
    r
}

/// The commands of one side, with the other side's key names, and each absolute expiry
/// (`SET ... PXAT`, `PEXPIREAT`) apart, as the two sides run at slightly different moments.
fn normalized(commands: &[Vec<Vec<u8>>], rename: &dyn Fn(&[u8]) -> Vec<u8>) -> Vec<Vec<Vec<u8>>> {
    commands
        .iter()
        .map(|c| c.iter().map(|a| rename(a)).collect())
        .collect()
}

fn expiry_at(c: &[Vec<u8>]) -> Option<(usize, i64)> {
    let at = match c[0].as_slice() {
        b"SET" => c.iter().position(|a| a.eq_ignore_ascii_case(b"PXAT"))? + 1,
        b"PEXPIREAT" => 2,
        _ => return None,
    };
    let ms = std::str::from_utf8(c.get(at)?).ok()?.parse().ok()?;
    Some((at, ms))
}

/// Whether two commands are the same but for their absolute expiries, which may differ by the
/// time between the two calls.
fn same_command(a: &[Vec<u8>], b: &[Vec<u8>]) -> bool {
    match (expiry_at(a), expiry_at(b)) {
        (Some((i, x)), Some((j, y))) => {
            i == j
                && (x - y).abs() <= TTL_SLACK
                && a.len() == b.len()
                && (0..a.len()).all(|k| k == i || a[k] == b[k])
        }
        (None, None) => a == b,
        _ => false,
    }
}

fn show(items: &[Vec<Vec<u8>>]) -> String {
    items
        .iter()
        .map(|c| {
            c.iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Random calls, each on two copies of the same keys, first through the Lua library, then
/// through the module: a replica receives the same commands for both, in the same order
/// (wrapped alike in MULTI/EXEC), and the same keyspace events fire. The module's string
/// writes are replicated explicitly, the sliding log's by its called commands; a call writing
/// through both shows the two kept in the order they ran.
#[tokio::test]
async fn a_module_call_propagates_and_notifies_what_the_lua_call_does() {
    propagates_and_notifies_as_lua(&[]).await;
}

/// The same, with the module's string writes through called commands (as before Redis 7.0).
#[tokio::test]
async fn a_module_call_with_called_writes_propagates_and_notifies_what_lua_does() {
    propagates_and_notifies_as_lua(&[CALLED_WRITES]).await;
}

async fn propagates_and_notifies_as_lua(module_args: &[&str]) {
    let server = with_module_args(module_args, &["--notify-keyspace-events", "KEA"]);
    let mut conn = connect(&server).await;
    let lua = load_library(&mut conn).await;
    let mut stream = replica(server.port());
    let mut events = keyspace_events(server.port());
    let mut rng = Rng::new(20_261_219);
    let usual = usual_limits(&mut rng, 6);
    let mut now = T0;
    // What the module's calls propagated, by kind, so the test is known to cover each.
    let (mut pxat, mut keepttl, mut del, mut both_paths, mut one_key) = (0, 0, 0, 0, 0);
    for step in 0..400 {
        now += rng.below(2_000_000);
        let (blob, names) = random_call(&mut rng, &usual);
        let mut sides = Vec::new();
        for (side, lua) in [("a", Some(lua.as_str())), ("b", None)] {
            let keys: Vec<String> = names.iter().map(|n| format!("{side}:{n}")).collect();
            let reply = call(&mut conn, lua, &keys, &now.to_string(), &blob).await;
            let _: () = redis::cmd("SET")
                .arg("sync")
                .arg(step)
                .query_async(&mut conn)
                .await
                .unwrap();
            let propagated = stream.until_sync(&[b"PING", b"SELECT"]);
            let fired = events.until_sync(&[]);
            sides.push((reply.is_ok(), propagated, fired));
        }
        let (lua_ok, lua_cmds, lua_events) = &sides[0];
        let (mod_ok, mod_cmds, mod_events) = &sides[1];
        assert_eq!(lua_ok, mod_ok, "step {step}: one side failed");
        let to_b = |a: &[u8]| match a.strip_prefix(b"a:") {
            Some(name) if names.iter().any(|n| n.as_bytes() == name) => [b"b:", name].concat(),
            _ => a.to_vec(),
        };
        let lua_cmds = normalized(lua_cmds, &to_b);
        assert!(
            lua_cmds.len() == mod_cmds.len()
                && lua_cmds
                    .iter()
                    .zip(mod_cmds)
                    .all(|(a, b)| same_command(a, b)),
            "step {step}: the replica received\nfrom Lua:\n  {}\nfrom the module:\n  {}",
            show(&lua_cmds),
            show(mod_cmds)
        );
        let lua_events = normalized(lua_events, &to_b);
        assert_eq!(
            &lua_events,
            mod_events,
            "step {step}: keyspace events\nLua:\n  {}\nmodule:\n  {}",
            show(&lua_events),
            show(mod_events)
        );
        for c in mod_cmds {
            match c[0].as_slice() {
                b"SET" if c.len() == 5 && c[3] == b"PXAT" => pxat += 1,
                b"SET" if c.ends_with(&[b"XX".to_vec(), b"KEEPTTL".to_vec()]) => keepttl += 1,
                b"DEL" => del += 1,
                _ => {}
            }
        }
        // Calls where both paths wrote (a string `SET` and a log's `Z*` in one MULTI), and
        // calls where one key was written both ways (`SET` and `Z*`/`PEXPIRE*`; `DEL` counts
        // for neither, as either path sends it). This seed's mix gives the first often and
        // the second never (measured: 0 of 400; only one limit in eight takes another
        // algorithm, and why none of those wrote one key both ways is not traced). So the
        // second is reported, not required; were it to occur, the order check above holds it.
        let is_log = |c: &Vec<Vec<u8>>| c[0].starts_with(b"Z") || c[0].starts_with(b"PEXPIRE");
        let sets = || mod_cmds.iter().filter(|c| c[0] == b"SET");
        both_paths += usize::from(sets().next().is_some() && mod_cmds.iter().any(is_log));
        one_key += usize::from(sets().any(|s| {
            mod_cmds
                .iter()
                .any(|c| is_log(c) && c.get(1).is_some() && c.get(1) == s.get(1))
        }));
    }
    assert!(
        pxat > 100 && keepttl > 20 && del > 0 && both_paths > 5,
        "coverage: {pxat} SET PXAT, {keepttl} SET KEEPTTL, {del} DEL, {both_paths} calls writing \
         through both paths ({one_key} writing one key both ways)"
    );
}

/// Watches `key` on `watcher`'s connection.
async fn watch(watcher: &mut MultiplexedConnection, key: &str) {
    let _: () = redis::cmd("WATCH")
        .arg(key)
        .query_async(watcher)
        .await
        .unwrap();
}

/// Runs a transaction on `watcher`'s connection: whether it was aborted (a watched key
/// changed since `WATCH`).
async fn aborted(watcher: &mut MultiplexedConnection) -> bool {
    let _: () = redis::cmd("MULTI").query_async(watcher).await.unwrap();
    let _: Value = redis::cmd("PING").query_async(watcher).await.unwrap();
    let exec: Value = redis::cmd("EXEC").query_async(watcher).await.unwrap();
    exec == Value::Nil
}

/// What `stream` (a replica's) received since the last look: one call's writes, marked off by
/// a `SET sync <n>`.
async fn propagated(
    conn: &mut MultiplexedConnection,
    stream: &mut Resp,
    n: usize,
) -> Vec<Vec<Vec<u8>>> {
    let _: () = redis::cmd("SET")
        .arg("sync")
        .arg(n)
        .query_async(conn)
        .await
        .unwrap();
    stream.until_sync(&[b"PING", b"SELECT", b"MULTI", b"EXEC"])
}

async fn pexpiretime(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

/// The module signals a key it writes as modified, as `SET` does: a new state (expiry set), a
/// state written in place (expiry kept) and a new report marker abort a transaction watching
/// the key; a look, and a report retried (its marker already there), write nothing and abort
/// nothing.
#[tokio::test]
async fn a_transaction_watching_a_key_the_module_writes_is_aborted() {
    watching_a_written_key_aborts(&[]).await;
}

/// The same, with the module's string writes through called commands (as before Redis 7.0).
#[tokio::test]
async fn a_transaction_watching_a_key_written_by_called_writes_is_aborted() {
    watching_a_written_key_aborts(&[CALLED_WRITES]).await;
}

async fn watching_a_written_key_aborts(module_args: &[&str]) {
    let server = with_module_args(module_args, &[]);
    let mut conn = connect(&server).await;
    let mut watcher = connect(&server).await;
    let mut stream = replica(server.port());
    let at = T0.to_string();
    let key = vec!["k".to_string()];
    // A token bucket of a million, one unit per call: every call is admitted.
    let bucket = |flags: f64| pack(&[flags, 1.0, 1.0, 1.0, 1000.0, 1_000_000.0, 1.0, 1.0]);
    let consume = bucket(1.0);

    watch(&mut watcher, "k").await;
    call(&mut conn, None, &key, &at, &consume).await.unwrap();
    assert!(aborted(&mut watcher).await, "a new key");
    let set_at = pexpiretime(&mut conn, "k").await;
    let first = propagated(&mut conn, &mut stream, 1).await;
    assert!(
        first.len() == 1
            && first[0][..2] == [b"SET".to_vec(), b"k".to_vec()]
            && first[0].get(3).is_some_and(|a| a == b"PXAT"),
        "a new key is set with its expiry: {}",
        show(&first)
    );

    watch(&mut watcher, "k").await;
    call(&mut conn, None, &key, &at, &consume).await.unwrap();
    assert_eq!(
        pexpiretime(&mut conn, "k").await,
        set_at,
        "the second write kept the expiry"
    );
    // Not `SET ... PXAT` with the same expiry: the replica receives the write in place.
    let second = propagated(&mut conn, &mut stream, 2).await;
    assert!(
        second.len() == 1
            && second[0][..2] == [b"SET".to_vec(), b"k".to_vec()]
            && second[0].get(3..) == Some(&[b"XX".to_vec(), b"KEEPTTL".to_vec()][..]),
        "a state written in place keeps its expiry on replicas too: {}",
        show(&second)
    );
    assert!(aborted(&mut watcher).await, "a state written in place");

    watch(&mut watcher, "k").await;
    call(&mut conn, None, &key, &at, &bucket(0.0))
        .await
        .unwrap();
    assert!(!aborted(&mut watcher).await, "a look writes nothing");

    // A charge with a report marker (flags 4 + 8): keys are the marker, then the limit's.
    let report = vec!["m".to_string(), "k".to_string()];
    let charge = bucket(12.0);
    watch(&mut watcher, "m").await;
    call(&mut conn, None, &report, &at, &charge).await.unwrap();
    assert!(aborted(&mut watcher).await, "a new report marker");
    watch(&mut watcher, "m").await;
    watch(&mut watcher, "k").await;
    call(&mut conn, None, &report, &at, &charge).await.unwrap();
    assert!(
        !aborted(&mut watcher).await,
        "a retried report changes neither its marker nor its limit"
    );
}

/// Random calls on a server keeping an AOF: `DEBUG LOADAOF` empties it and replays the file,
/// and every key comes back with the same value, members and absolute expiry, so the AOF holds
/// every write the module made (its explicit replication goes to the AOF as to replicas).
#[tokio::test]
async fn an_aof_replayed_holds_exactly_what_the_module_wrote() {
    aof_replayed_holds_what_was_written(&[]).await;
}

/// The same, with the module's string writes through called commands (as before Redis 7.0).
#[tokio::test]
async fn an_aof_replayed_holds_exactly_what_called_writes_wrote() {
    aof_replayed_holds_what_was_written(&[CALLED_WRITES]).await;
}

async fn aof_replayed_holds_what_was_written(module_args: &[&str]) {
    let server = with_module_args(
        module_args,
        &[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--enable-debug-command",
            "yes",
        ],
    );
    let mut conn = connect(&server).await;
    let mut rng = Rng::new(20_261_220);
    let usual = usual_limits(&mut rng, 6);
    let mut names = std::collections::BTreeSet::new();
    let mut now = T0;
    for _ in 0..300 {
        now += rng.below(2_000_000);
        let (blob, keys) = random_call(&mut rng, &usual);
        // A call failing midway (a log meeting a string state) keeps what it wrote, in the AOF
        // too.
        let _ = call(&mut conn, None, &keys, &now.to_string(), &blob).await;
        names.extend(keys);
    }
    let mut before = Vec::new();
    for name in &names {
        before.push(replicated(&mut conn, name).await);
    }
    let loaded: String = redis::cmd("DEBUG")
        .arg("LOADAOF")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(loaded, "OK");
    for (name, was) in names.iter().zip(&before) {
        assert_eq!(&replicated(&mut conn, name).await, was, "{name}");
    }
    let present = before.iter().filter(|k| k.0 != "none").count();
    assert!(present >= 5, "only {present} keys were written");
}

/// Which way the string writes go: through the key API by default, no `SET` called; through
/// called commands when the module is loaded with `called-writes` (the tests above run both).
/// Either way an undo record's PTTL is read through the key API, no `PTTL` called. Any other
/// load argument refuses the load.
#[tokio::test]
async fn the_load_argument_chooses_the_write_path() {
    // A token bucket of a million, one unit with undo records (flags 3): a new key (`SET ...
    // PX`), then a state written in place (`SET ... XX KEEPTTL`).
    let consume = pack(&[3.0, 1.0, 1.0, 1.0, 1000.0, 1_000_000.0, 1.0, 1.0]);
    for (module_args, called) in [(&[][..], 0), (&[CALLED_WRITES][..], 2)] {
        let server = with_module_args(module_args, &[]);
        let mut conn = connect(&server).await;
        for _ in 0..2 {
            let reply = call(&mut conn, None, &["k".into()], &T0.to_string(), &consume).await;
            assert!(matches!(reply, Ok(Value::Array(_))), "{reply:?}");
        }
        let port = server.port();
        // Counted first: `calls` answers 0 for a server that does not answer.
        assert_eq!(calls(port, "spillway.check"), 2, "{module_args:?}: checks");
        assert_eq!(calls(port, "set"), called, "{module_args:?}: SET calls");
        assert_eq!(calls(port, "pttl"), 0, "{module_args:?}: PTTL calls");
    }
    let server = RedisServer::start_with(&["--enable-module-command", "yes"]);
    let path = module_path();
    let refused = command(server.port(), &format!("MODULE LOAD {path} called_writes"));
    assert!(
        refused.as_deref().is_some_and(|r| r.starts_with("-ERR")),
        "{refused:?}"
    );
    let loaded = command(server.port(), &format!("MODULE LOAD {path} CALLED-WRITES"));
    assert_eq!(loaded.as_deref(), Some("+OK\r\n"));
}
