//! Our own connection against a real redis-server (and, for what a real server never does, a
//! listener of the test's own that answers with chosen bytes).

use super::*;
use crate::login;
use spillway_testkit::redis::{command, command_as, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

#[tokio::test]
async fn a_killed_connection_is_made_again_on_the_next_call() {
    let server = RedisServer::start();
    let conn = connect(&server.url()).await.expect("connects");
    let before = client_id(&conn).await;
    let killed = command(server.port(), &format!("CLIENT KILL ID {before}"));
    assert_eq!(killed.as_deref().map(str::trim), Some(":1"));
    // Idle when it was killed: the next call sees it closed before writing, and goes out on
    // a new connection instead of failing.
    let mut after = None;
    for _ in 0..50 {
        match run(&conn, &["CLIENT", "ID"]).await {
            Ok(Value::Int(id)) => {
                after = Some(id);
                break;
            }
            // The close may not have been seen yet when the command went out.
            Err(err) if err.is_io_error() || err.is_connection_dropped() => {}
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = after.expect("made again");
    assert_ne!(after, before);
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
    // The first connection answers nothing after the login; the next answers.
    let url = fake_server(|conn| match conn {
        0 => (b"", false),
        _ => (b":7\r\n", false),
    })
    .await;
    let conn = connect(&url).await.expect("connects");
    for _ in 0..MAX_WAITING {
        let call = run(&conn, &["GET", "k"]);
        assert!(tokio::time::timeout(Duration::from_millis(1), call)
            .await
            .is_err());
    }
    assert_eq!(conn.shared.lock().waiting.len() as u64, MAX_WAITING);
    // One more: the connection is closed (every place with it) and made again.
    assert_eq!(
        run(&conn, &["GET", "k"]).await.expect("answered"),
        Value::Int(7)
    );
    assert_eq!(conn.shared.lock().waiting.len(), 0);
}
