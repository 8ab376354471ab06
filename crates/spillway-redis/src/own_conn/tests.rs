//! Our own connection against a real redis-server (and, for what a real server never does, a
//! listener of the test's own that answers with chosen bytes: a close mid-reply, malformed
//! replies).

use super::*;
use crate::login;
use spillway_testkit::redis::{command, command_as, RedisServer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const LIMIT: Duration = Duration::from_secs(2);

async fn connect(url: &str) -> RedisResult<OwnConn> {
    OwnConn::connect(Target::of_url(url, LIMIT).expect("a RESP2 URL")).await
}

async fn run(conn: &OwnConn, args: &[&str]) -> RedisResult<Value> {
    let mut cmd = redis::Cmd::new();
    for arg in args {
        cmd.arg(*arg);
    }
    let mut conn = conn.clone();
    redis::aio::ConnectionLike::req_packed_command(&mut conn, &cmd).await
}

/// This connection's id, as the server knows it.
async fn client_id(conn: &OwnConn) -> i64 {
    match run(conn, &["CLIENT", "ID"]).await {
        Ok(Value::Int(id)) => id,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn concurrent_calls_get_their_own_replies_in_order() {
    let server = RedisServer::start();
    let conn = connect(&server.url()).await.expect("connects");
    let calls = (0..200).map(|i| {
        let conn = conn.clone();
        async move { run(&conn, &["ECHO", &i.to_string()]).await }
    });
    let replies = futures_util::future::join_all(calls).await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(
            reply.expect("answered"),
            Value::BulkString(i.to_string().into_bytes())
        );
    }
    // An error reply is the client's own, code and all.
    let Ok(Value::ServerError(err)) = run(&conn, &["FCALL", "nothing", "0"]).await else {
        panic!("an error reply")
    };
    assert!(crate::functions::is_missing(&RedisError::from(err)));
}

#[tokio::test]
async fn a_call_given_up_keeps_its_place_and_its_reply_goes_nowhere() {
    let server = RedisServer::start();
    let conn = connect(&server.url()).await.expect("connects");
    // Blocks 300 ms on the server, then answers nil; its caller leaves after 50 ms.
    let slow = run(&conn, &["BLPOP", "nothing-here", "0.3"]);
    assert!(tokio::time::timeout(Duration::from_millis(50), slow)
        .await
        .is_err());
    // The next call's reply is its own, not the abandoned one's.
    assert_eq!(
        run(&conn, &["ECHO", "mine"]).await.expect("answered"),
        Value::BulkString(b"mine".to_vec())
    );
    assert_eq!(conn.shared.lock().waiting.len(), 0, "nothing left waiting");
}

/// Waits until the server on `port` no longer lists client `id`, and the runtime has turned
/// so that the close reached the socket.
async fn let_go(port: u16, id: i64) {
    let gone = format!("id={id} ");
    for _ in 0..100 {
        let list = command(port, "CLIENT LIST").expect("client list");
        tokio::time::sleep(Duration::from_millis(10)).await;
        if !list.contains(&gone) {
            return;
        }
    }
    panic!("the server never let client {id} go");
}

#[tokio::test]
async fn a_killed_connection_is_made_again_on_the_next_call() {
    let server = RedisServer::start();
    let conn = connect(&server.url()).await.expect("connects");
    let before = client_id(&conn).await;
    let killed = command(server.port(), &format!("CLIENT KILL ID {before}"));
    assert_eq!(killed.as_deref().map(str::trim), Some(":1"));
    // Once the server has let it go (and the runtime has turned, so that the close reached
    // the socket), the next call sees it closed before writing and goes out on a new
    // connection instead of failing.
    let_go(server.port(), before).await;
    let after = client_id(&conn).await;
    assert_ne!(after, before);
}

/// A connection made once (to a master the sentinels named) is not made again: a call that
/// finds it closed while idle fails without writing anything, as does every later call, and
/// both errors say so ([`was_not_sent`]), so the store may send them elsewhere; the flag it
/// was given is set. A call already written when the connection is lost is not told so: the
/// server may have run it.
#[tokio::test]
async fn a_conn_made_once_fails_unsent_calls_as_not_sent_and_no_other() {
    let server = RedisServer::start();
    let lost = Arc::new(AtomicBool::new(false));
    let target = Target::of_url(&server.url(), LIMIT)
        .expect("a RESP2 URL")
        .made_once(lost.clone());
    let conn = OwnConn::connect(target).await.expect("connects");
    let id = client_id(&conn).await;
    command(server.port(), &format!("CLIENT KILL ID {id}")).expect("killed");
    let_go(server.port(), id).await;
    assert!(!lost.load(Ordering::Acquire), "nobody has looked yet");
    for call in ["the call that finds the close", "a later call"] {
        let err = run(&conn, &["INCR", "k"]).await.expect_err(call);
        assert!(was_not_sent(&err), "{call}: {err}");
        assert!(crate::error::unavailable(&err), "{call}: {err}");
    }
    assert!(lost.load(Ordering::Acquire), "the flag it was given is set");
    let untouched = command(server.port(), "EXISTS k").expect("exists");
    assert_eq!(untouched.trim(), ":0", "nothing was written");

    // A call written, then the connection lost while it waits: not "not sent".
    let lost = Arc::new(AtomicBool::new(false));
    let target = Target::of_url(&server.url(), LIMIT)
        .expect("a RESP2 URL")
        .made_once(lost);
    let conn = OwnConn::connect(target).await.expect("connects");
    let id = client_id(&conn).await;
    let waiting = tokio::spawn({
        let conn = conn.clone();
        async move { run(&conn, &["BLPOP", "nothing", "5"]).await }
    });
    let blocked = format!("id={id} ");
    let mut seen = false;
    for _ in 0..100 {
        let list = command(server.port(), "CLIENT LIST").expect("client list");
        if list
            .lines()
            .any(|l| l.contains(&blocked) && l.contains("cmd=blpop"))
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "the BLPOP reached the server");
    command(server.port(), &format!("CLIENT KILL ID {id}")).expect("killed");
    let err = waiting.await.expect("joins").expect_err("lost mid-call");
    assert!(!was_not_sent(&err), "a call written may have run: {err}");
}

#[tokio::test]
async fn pipelines_and_commands_without_a_reply_are_refused() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await.expect("connects");
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("SET").arg("k").arg(1).cmd("GET").arg("k");
    let err = redis::aio::ConnectionLike::req_packed_commands(&mut conn, &pipe, 3, 2)
        .await
        .expect_err("a pipeline is refused");
    assert_eq!(err.kind(), ErrorKind::Client, "{err}");
    let mut quiet = redis::cmd("SET");
    quiet.arg("k").arg(2).set_no_response(true);
    let err = redis::aio::ConnectionLike::req_packed_command(&mut conn, &quiet)
        .await
        .expect_err("a command without its reply is refused");
    assert_eq!(err.kind(), ErrorKind::Client, "{err}");
    // Nothing went out: the next call's reply is its own, and nothing was set.
    assert_eq!(
        run(&conn, &["GET", "k"]).await.expect("answered"),
        Value::Nil
    );
}

/// A proxy to the server at `port` that holds each new connection's first bytes (its login)
/// while the returned gate is shut (`false`), and passes everything else straight through;
/// it counts the connections it accepted.
async fn gated_proxy(port: u16) -> (String, watch::Sender<bool>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("redis://{}", listener.local_addr().expect("address"));
    let (gate, open) = watch::channel(true);
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut open = open.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    return;
                };
                let mut first = vec![0u8; 4096];
                let n = match client.read(&mut first).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let opened = open.wait_for(|open| *open).await.is_ok();
                if !opened || server.write_all(&first[..n]).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (url, gate, accepted)
}

#[tokio::test]
async fn a_login_slower_than_the_calls_budget_still_completes() {
    let server = RedisServer::start();
    let (url, gate, accepted) = gated_proxy(server.port()).await;
    let conn = connect(&url).await.expect("connects");
    // The connection is lost while idle: the next call logs in again, held at the proxy,
    // and each caller gives up after 50 ms.
    gate.send_replace(false);
    conn.shared.lock().close("the test closed it", None);
    let budget = Duration::from_millis(50);
    for _ in 0..2 {
        assert!(tokio::time::timeout(budget, run(&conn, &["PING"]))
            .await
            .is_err());
    }
    // Let the login through: it completes with no caller waiting for it, and it is the one
    // both callers waited on (one connection after the first; a login started over by the
    // second caller would have made another).
    gate.send_replace(true);
    let login = conn.shared.login.lock().await.take();
    let login = login.expect("a login left running");
    login.await.expect("no panic").expect("logged in");
    assert!(conn.shared.lock().io.is_some(), "connected again");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let reply = tokio::time::timeout(Duration::from_secs(5), run(&conn, &["ECHO", "later"]))
        .await
        .expect("served on the new connection");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "no third connection");
    assert_eq!(
        reply.expect("answered"),
        Value::BulkString(b"later".to_vec())
    );
}

#[tokio::test]
async fn a_server_at_maxclients_is_an_outage_not_a_refused_login() {
    for (extra, url) in [
        (vec![], "redis://127.0.0.1:{port}"),
        (
            vec!["--requirepass", "pw-Mx2"],
            "redis://:pw-Mx2@127.0.0.1:{port}/2",
        ),
    ] {
        let server = RedisServer::start_with(&extra);
        let port = server.port();
        let url = url.replace("{port}", &port.to_string());
        let password = extra.get(1).copied();
        let set = command_as(port, password, "CONFIG SET maxclients 1");
        assert_eq!(set.as_deref().map(str::trim), Some("+OK"));
        let held = connect(&url).await.expect("the one client allowed");
        let Err(err) = connect(&url).await else {
            panic!("{url}: a client past maxclients connected")
        };
        assert!(!login::refused(&err), "{url}: read as a refusal: {err}");
        assert!(err.is_io_error(), "{url}: {err}");
        drop(held);
    }
}

#[tokio::test]
async fn a_caller_leaving_hands_the_socket_to_the_next_waiting_call() {
    let server = RedisServer::start();
    let conn = connect(&server.url()).await.expect("connects");
    let started = tokio::time::Instant::now();
    let slow = tokio::spawn({
        let conn = conn.clone();
        async move { run(&conn, &["BLPOP", "nothing-here", "0.2"]).await }
    });
    // Let it write and wait for its reply, then a second call polls the socket last and
    // gives up before either reply comes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let quick = tokio::spawn({
        let conn = conn.clone();
        async move { tokio::time::timeout(Duration::from_millis(50), run(&conn, &["ECHO", "x"])).await }
    });
    assert!(quick.await.expect("no panic").is_err(), "gave up");
    // Only the call that gave up was registered with the socket: the first must have been
    // woken to read its own reply.
    let reply = tokio::time::timeout(Duration::from_secs(2), slow)
        .await
        .expect("the first call was woken")
        .expect("no panic");
    assert_eq!(reply.expect("answered"), Value::Nil);
    // Woken by its own reply (BLPOP's 0.2 s), not by something later: well under a second
    // even on a busy machine (a 300 ms bound failed once at 301 ms in a CI run).
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn calls_giving_up_at_random_never_get_anothers_reply() {
    let server = RedisServer::start();
    let conn = connect(&server.url()).await.expect("connects");
    let mut seed = 0x2545_f491_u64;
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let wait = Duration::from_micros((seed >> 33) % 3000);
            let conn = conn.clone();
            tokio::spawn(async move {
                let mine = format!("echo-{i}");
                let reply = tokio::time::timeout(wait, run(&conn, &["ECHO", &mine])).await;
                (mine, reply)
            })
        })
        .collect();
    let mut answered = 0;
    for task in tasks {
        let (mine, reply) = task.await.expect("no panic");
        if let Ok(reply) = reply {
            assert_eq!(
                reply.expect("answered"),
                Value::BulkString(mine.into_bytes())
            );
            answered += 1;
        }
    }
    assert!(answered > 0, "some calls were answered in time");
    assert_eq!(
        run(&conn, &["ECHO", "last"]).await.expect("answered"),
        Value::BulkString(b"last".to_vec())
    );
}

#[tokio::test]
async fn concurrent_large_commands_are_written_whole() {
    let server = RedisServer::start();
    let conn = connect(&server.url()).await.expect("connects");
    let tasks: Vec<_> = (0..4u8)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                // 4 MB: more than a socket takes at once, so each goes out in pieces.
                let big = vec![b'a' + i; 4 << 20];
                let big = String::from_utf8(big).expect("ascii");
                let reply = run(&conn, &["ECHO", &big]).await;
                (big, reply)
            })
        })
        .collect();
    for task in tasks {
        let (big, reply) = task.await.expect("no panic");
        assert_eq!(
            reply.expect("answered"),
            Value::BulkString(big.into_bytes())
        );
    }
    // Once all is sent the write buffer lets go of its room.
    assert!(conn.shared.lock().out.capacity() <= KEEP_SENT);
}

/// A new connection's state over `io`, with one call written (`out`) and waiting for its reply.
fn one_waiting(io: impl Io + 'static, out: &[u8]) -> State {
    let mut state = State::new(Box::new(io), None, MAX_WAITING);
    state.out = out.to_vec();
    state.waiting.push_back(Waiting::default());
    state.next = 1;
    state
}

#[test]
fn a_panic_while_encoding_leaves_no_half_command() {
    let (ours, _theirs) = tokio::io::duplex(64);
    let mut state = one_waiting(ours, b"*1\r\n$4\r\nPING\r\n");
    let before = state.out.clone();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        state.begin(|out| {
            out.extend_from_slice(b"*2\r\n$4\r\nECHO\r\n");
            panic!("an encoder bug");
        })
    }));
    assert!(panicked.is_err());
    assert_eq!(state.out, before);
    assert_eq!(state.next, 1, "no place taken");
}

/// A reply is parsed only once bytes it may need have arrived: not on a poll that finds
/// nothing new (every call's first poll, made as soon as its command is written, on a new
/// connection or after a reply), nor while a bulk string is still short of its declared
/// length.
#[tokio::test]
async fn a_reply_is_parsed_only_when_bytes_it_needs_have_arrived() {
    let (ours, mut theirs) = tokio::io::duplex(1024);
    let mut state = one_waiting(ours, b"");
    let mut cx = Context::from_waker(Waker::noop());
    let parses = || resp::PARSES.get();
    let before = parses();
    state.read(&mut cx, 0).expect("nothing to read yet");
    assert_eq!(parses() - before, 0, "nothing had arrived");
    theirs.write_all(b"$10\r\nabc").await.expect("written");
    state.read(&mut cx, 0).expect("part of a reply");
    assert_eq!(parses() - before, 1, "the header came");
    state.read(&mut cx, 0).expect("nothing new");
    theirs.write_all(b"defg").await.expect("written");
    state.read(&mut cx, 0).expect("still short");
    assert_eq!(
        parses() - before,
        1,
        "nothing new, then short of the length"
    );
    theirs.write_all(b"hij\r\n").await.expect("written");
    state.read(&mut cx, 0).expect("the whole reply");
    assert_eq!(parses() - before, 2);
    assert_eq!(
        state.slot(0).reply.take().map(|r| r.expect("a value")),
        Some(Value::BulkString(b"abcdefghij".to_vec()))
    );
    // The next call's first poll, before its reply came.
    state.waiting.push_back(Waiting::default());
    state.next = 2;
    state.read(&mut cx, 1).expect("nothing to read yet");
    assert_eq!(
        parses() - before,
        2,
        "nothing had arrived for the next reply"
    );
}

#[tokio::test]
async fn logs_in_with_a_password_or_an_acl_user_and_selects_the_db() {
    let server = RedisServer::start_with(&["--requirepass", "pw-Kq7"]);
    let port = server.port();
    let conn = connect(&format!("redis://:pw-Kq7@127.0.0.1:{port}/3"))
        .await
        .expect("the right password");
    let Ok(Value::BulkString(info)) = run(&conn, &["CLIENT", "INFO"]).await else {
        panic!("client info")
    };
    assert!(
        String::from_utf8_lossy(&info).contains(" db=3 "),
        "{info:?}"
    );

    let user = command_as(
        port,
        Some("pw-Kq7"),
        "ACL SETUSER limiter on >user-pw-3 ~* +@all",
    );
    assert_eq!(user.as_deref().map(str::trim), Some("+OK"));
    let conn = connect(&format!("redis://limiter:user-pw-3@127.0.0.1:{port}"))
        .await
        .expect("the ACL user");
    let Ok(Value::BulkString(name)) = run(&conn, &["ACL", "WHOAMI"]).await else {
        panic!("whoami")
    };
    assert_eq!(name, b"limiter");

    for url in [
        format!("redis://:wrong@127.0.0.1:{port}"),
        format!("redis://limiter:wrong@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let Err(err) = connect(&url).await else {
            panic!("{url}: logged in")
        };
        assert!(login::refused(&err), "{url}: {err}");
    }
}

/// A listener that answers the login's `PING` and then each command with what `script`
/// gives for the connection's number: the bytes, and whether to close the connection after
/// them.
async fn fake_server(script: fn(usize) -> (&'static [u8], bool)) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("redis://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        let mut conns = 0;
        while let Ok((mut socket, _)) = listener.accept().await {
            let n = conns;
            conns += 1;
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut input = Vec::new();
                let mut logged_in = false;
                loop {
                    // One command at a time (the test's calls go one after another).
                    let used = loop {
                        if let Ok(Some((_, used))) = resp::parse(&input) {
                            break used;
                        }
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => input.extend_from_slice(&buf[..k]),
                        }
                    };
                    input.drain(..used);
                    let (answer, close) = if logged_in {
                        script(n)
                    } else {
                        logged_in = true;
                        (&b"+PONG\r\n"[..], false)
                    };
                    if socket.write_all(answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// A call on a connection whose server sends `first` (and closes if told) fails as a lost
/// connection (an I/O error: Redis unavailable to the store), within the test's bound and
/// without a panic; the next call makes a new connection and is answered.
async fn fails_then_connects_again(url: &str) {
    let conn = connect(url).await.expect("connects");
    let call = tokio::time::timeout(LIMIT, run(&conn, &["GET", "k"]));
    let err = call
        .await
        .expect("no hang")
        .expect_err("an unreadable reply");
    assert!(err.is_io_error(), "{err}");
    assert_eq!(
        classify_kind(err),
        "unavailable",
        "the store reads it as Redis unavailable"
    );
    assert_eq!(
        run(&conn, &["GET", "k"]).await.expect("connected again"),
        Value::Int(7)
    );
}

fn classify_kind(err: RedisError) -> &'static str {
    crate::error::kind(&crate::error::classify(err, LIMIT))
}

#[tokio::test]
async fn a_server_closing_mid_reply_fails_the_call_and_the_next_connects_again() {
    let url = fake_server(|conn| match conn {
        0 => (b"$10\r\nabc", true),
        _ => (b":7\r\n", false),
    })
    .await;
    fails_then_connects_again(&url).await;
}

#[tokio::test]
async fn malformed_or_unexpected_replies_close_the_connection() {
    // A RESP3 map on a RESP2 connection.
    let url = fake_server(|conn| match conn {
        0 => (b"%1\r\n+a\r\n+b\r\n", false),
        _ => (b":7\r\n", false),
    })
    .await;
    fails_then_connects_again(&url).await;
    // An integer that is not one.
    let url = fake_server(|conn| match conn {
        0 => (b":12x\r\n", false),
        _ => (b":7\r\n", false),
    })
    .await;
    fails_then_connects_again(&url).await;
}

#[tokio::test]
async fn a_reply_declared_past_the_bound_is_refused_without_waiting_for_it() {
    let url = fake_server(|conn| match conn {
        0 => (b"$999999999\r\nabc", false),
        _ => (b":7\r\n", false),
    })
    .await;
    // Refused on its header: no wait for the rest (which never comes).
    fails_then_connects_again(&url).await;
}

#[tokio::test]
async fn a_server_that_stops_answering_does_not_pile_up_calls_without_bound() {
    let server = RedisServer::start();
    let conn = connect(&server.url()).await.expect("connects");
    assert_eq!(
        run(&conn, &["SET", "k", "7"]).await.expect("set"),
        Value::Okay
    );
    // A command that blocks for good: the server reads nothing more from this connection
    // until it is answered, so every later call waits too.
    let blocked = run(&conn, &["BLPOP", "nothing-here", "0"]);
    assert!(tokio::time::timeout(Duration::from_millis(1), blocked)
        .await
        .is_err());
    for _ in 1..MAX_WAITING {
        let call = run(&conn, &["GET", "k"]);
        assert!(tokio::time::timeout(Duration::from_millis(1), call)
            .await
            .is_err());
    }
    assert_eq!(conn.shared.lock().waiting.len() as u64, MAX_WAITING);
    // One more: the connection is closed (every place with it) and made again.
    assert_eq!(
        run(&conn, &["GET", "k"]).await.expect("answered"),
        Value::BulkString(b"7".to_vec())
    );
    assert_eq!(conn.shared.lock().waiting.len(), 0);
}

/// A connection to a cluster master goes, each time it is made, where `locate` says (never to
/// the target's own address here: nothing listens there), and logs in only where that
/// master's node ID answers: restarted at another port, the master is reached there by the
/// next call; another server at the located address fails the login, and nothing is run on it.
#[tokio::test]
async fn a_masters_conn_goes_where_it_is_located_and_only_to_that_master() {
    let mut node = RedisServer::start_with(&["--cluster-enabled", "yes"]);
    let myid = |port: u16| {
        let reply = command(port, "CLUSTER MYID").expect("answers");
        reply.lines().nth(1).expect("a bulk string").to_owned()
    };
    let id = myid(node.port());
    let at = Arc::new(parking_lot::Mutex::new(node.port()));
    let nowhere = spillway_testkit::redis::free_port();
    let target = |id: &str| {
        let at = Arc::clone(&at);
        let master = Master {
            id: id.to_owned(),
            locate: Arc::new(move || Some(("127.0.0.1".to_owned(), *at.lock()))),
        };
        Target::of_url(&format!("redis://127.0.0.1:{nowhere}"), LIMIT)
            .expect("a RESP2 URL")
            .for_master(master)
    };
    let conn = OwnConn::connect(target(&id))
        .await
        .expect("made where located");
    let answers =
        |reply: RedisResult<Value>| matches!(reply, Ok(Value::BulkString(b)) if b == id.as_bytes());
    assert!(answers(run(&conn, &["CLUSTER", "MYID"]).await));

    // Another node ID expected there: the login fails, as an outage.
    let Err(err) = OwnConn::connect(target(&"0".repeat(40))).await else {
        panic!("logged in where another node answers")
    };
    assert!(crate::error::unavailable(&err), "{err}");
    assert!(err.to_string().contains("CLUSTER MYID"), "{err}");

    // Restarted on other ports (its node ID kept): the next call that finds the connection
    // closed makes it there (the first may fail, written before the close was seen).
    let port = node.restart_elsewhere();
    *at.lock() = port;
    let first = run(&conn, &["CLUSTER", "MYID"]).await;
    let second = run(&conn, &["CLUSTER", "MYID"]).await;
    assert!(answers(second), "reached at {port} (first call: {first:?})");

    // Another server at the located address: no call is run on it, and each call after the
    // one that found the close fails as not sent (so that the store sends it through its
    // cluster connection), naming the address and why.
    let other = RedisServer::start();
    *at.lock() = other.port();
    node.kill();
    let first = run(&conn, &["SET", "k", "v"]).await;
    assert!(first.is_err(), "run on another server: {first:?}");
    for _ in 0..2 {
        let Err(err) = run(&conn, &["SET", "k", "v"]).await else {
            panic!("run on another server")
        };
        assert!(was_not_sent(&err), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("127.0.0.1:{}", other.port())),
            "{text}"
        );
        assert!(text.contains("cannot tell which node"), "{text}");
    }
    assert_eq!(command(other.port(), "EXISTS k").as_deref(), Some(":0\r\n"));

    // Another cluster node there (another node ID): the same.
    let stranger = RedisServer::start_with(&["--cluster-enabled", "yes"]);
    *at.lock() = stranger.port();
    let Err(err) = run(&conn, &["SET", "k", "v"]).await else {
        panic!("run on another cluster node")
    };
    assert!(was_not_sent(&err), "{err}");
    assert!(err.to_string().contains("is another one"), "{err}");
    assert_eq!(
        command(stranger.port(), "DBSIZE").as_deref(),
        Some(":0\r\n")
    );
}

/// Calls on a cluster master's connection that get no answer in time (the caller's timer:
/// here the master is stopped) close it once the master is located elsewhere, and only then,
/// at the second in a row with no reply read in between: the next call is made there. A
/// connection to any other target is left as it is.
#[tokio::test]
async fn a_masters_conn_unanswered_where_it_went_is_closed_once_located_elsewhere() {
    let node = RedisServer::start_with(&["--cluster-enabled", "yes"]);
    let reply = command(node.port(), "CLUSTER MYID").expect("answers");
    let id = reply.lines().nth(1).expect("a bulk string").to_owned();
    let at = Arc::new(parking_lot::Mutex::new(node.port()));
    let located = Arc::clone(&at);
    let master = Master {
        id: id.clone(),
        locate: Arc::new(move || Some(("127.0.0.1".to_owned(), *located.lock()))),
    };
    let target = Target::of_url(&node.url(), LIMIT).expect("a RESP2 URL");
    let conn = OwnConn::connect(target.clone().for_master(master))
        .await
        .expect("made");
    let plain = OwnConn::connect(target).await.expect("made");
    node.freeze();
    let unanswered = |conn: &OwnConn| {
        let conn = conn.clone();
        async move {
            let call = run(&conn, &["PING"]);
            assert!(
                tokio::time::timeout(Duration::from_millis(100), call)
                    .await
                    .is_err(),
                "a stopped server answered"
            );
            conn.no_answer();
            conn.shared.lock().io.is_some()
        }
    };
    for _ in 0..2 {
        assert!(unanswered(&conn).await, "still located there: kept");
        assert!(unanswered(&plain).await, "not a master's: kept");
    }
    // The master's new home, under its ID (the stopped one stands in for the old address).
    let moved = RedisServer::start_with(&["--cluster-enabled", "yes"]);
    let new_id = command(moved.port(), "CLUSTER MYID").expect("answers");
    *at.lock() = moved.port();
    assert!(
        unanswered(&conn).await,
        "located elsewhere, unanswered once: kept"
    );
    // The server answers late (a slow master): a reply read since starts the count over.
    node.resume();
    let late = run(&conn, &["PING"]).await;
    assert!(matches!(late, Ok(Value::SimpleString(_))), "{late:?}");
    node.freeze();
    assert!(unanswered(&conn).await, "a reply read since: kept");
    assert!(
        !unanswered(&conn).await,
        "located elsewhere, unanswered twice with no reply between: closed"
    );
    for _ in 0..2 {
        assert!(unanswered(&plain).await, "not a master's: kept");
    }
    node.resume();
    // The next call goes to the located address, where another ID answers here (a stand-in
    // server): not sent, and nothing run there.
    let Err(err) = run(&conn, &["SET", "k", "v"]).await else {
        panic!("logged in where {new_id:?} answers")
    };
    assert!(was_not_sent(&err), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{}", moved.port())),
        "{err}"
    );
}
