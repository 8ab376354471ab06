use super::*;
use proptest::prelude::*;

/// A command as our encoder writes it: a head of `head` and then `rest`.
fn ours(head: &[&[u8]], rest: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    Head::new(head).start(&mut out, rest.len());
    for arg in rest {
        put_arg(&mut out, arg);
    }
    out
}

fn theirs(args: &[&[u8]]) -> Vec<u8> {
    let mut cmd = redis::Cmd::new();
    for arg in args {
        cmd.arg(*arg);
    }
    cmd.get_packed_command()
}

/// (A whole `FCALL` is checked against the client's in `functions.rs`.)
#[test]
fn numbers_are_encoded_as_the_client_encodes_them() {
    for n in [0, 9, 10, 99, 100, 12_345, usize::MAX] {
        let mut out = Vec::new();
        put_number_arg(&mut out, n);
        let mut cmd = redis::Cmd::new();
        cmd.arg(n);
        let packed = cmd.get_packed_command();
        assert!(packed.ends_with(&out), "{n}");
    }
}

/// Replies of the shapes we read, as bytes.
fn reply() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        "[a-zA-Z0-9 _:.-]{0,20}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
        Just(b"+OK\r\n".to_vec()),
        "(ERR|NOSCRIPT|BUSY|LOADING|READONLY|WRONGTYPE|NOAUTH) [a-zA-Z0-9 _.-]{0,30}"
            .prop_map(|s| format!("-{s}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| {
            let mut out = format!("${}\r\n", b.len()).into_bytes();
            out.extend_from_slice(&b);
            out.extend_from_slice(b"\r\n");
            out
        }),
        Just(b"$-1\r\n".to_vec()),
        Just(b"*-1\r\n".to_vec()),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        proptest::collection::vec(inner, 0..6).prop_map(|items| {
            let mut out = format!("*{}\r\n", items.len()).into_bytes();
            for item in items {
                out.extend_from_slice(&item);
            }
            out
        })
    })
}

proptest! {
    #[test]
    fn commands_are_encoded_as_the_client_encodes_them(
        head in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 1..3),
        rest in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
    ) {
        let head: Vec<&[u8]> = head.iter().map(Vec::as_slice).collect();
        let mut all = head.clone();
        all.extend(rest.iter().map(Vec::as_slice));
        prop_assert_eq!(ours(&head, &rest), theirs(&all));
    }

    /// Whatever the reply, read whole it is what the client reads, and cut anywhere before
    /// its end it is not read yet.
    #[test]
    fn replies_read_as_the_client_reads_them_whole_or_split_anywhere(bytes in reply()) {
        let expected = redis::parse_redis_value(&bytes).expect("the client reads it");
        prop_assert_eq!(parse(&bytes), Ok(Some((expected, bytes.len()))));
        for cut in 0..bytes.len() {
            prop_assert_eq!(parse(&bytes[..cut]), Ok(None), "cut at {}", cut);
        }
        // What follows a reply is left for the next one.
        let mut two = bytes.clone();
        two.extend_from_slice(b":7\r\n");
        let (_, used) = parse(&two).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
    }

    /// Any bytes: an answer or an error, never a panic, never more than was there.
    #[test]
    fn any_bytes_give_a_reply_an_error_or_a_wait(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(Some((_, used))) = parse(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    /// Any bytes after a valid reply's type and length: likewise.
    #[test]
    fn any_bytes_after_a_header_do_not_panic(
        head in prop_oneof![Just("$3\r\n"), Just("*2\r\n"), Just("*1\r\n$2\r\n"), Just(":")],
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut bytes = head.as_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        let _ = parse(&bytes);
    }
}

#[test]
fn malformed_or_unexpected_replies_are_errors() {
    let cases: &[&[u8]] = &[
        b"?what\r\n",
        b"_\r\n",              // RESP3 null
        b"#t\r\n",             // RESP3 boolean
        b",1.5\r\n",           // RESP3 double
        b"%1\r\n+a\r\n+b\r\n", // RESP3 map
        b">2\r\n+a\r\n+b\r\n", // RESP3 push
        b":12a\r\n",
        b":\r\n",
        b":99999999999999999999\r\n",
        b"$abc\r\n",
        b"$-2\r\n",
        b"$3\r\nabcd\r\n",
        b"*-5\r\n",
        b"+no carriage return\n",
        b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
    ];
    for case in cases {
        assert!(
            parse(case).is_err(),
            "{:?} gave {:?}",
            String::from_utf8_lossy(case),
            parse(case)
        );
    }
}

#[test]
fn a_reply_past_the_bound_is_refused_before_it_is_read() {
    // Declared too long: refused on the header alone.
    for header in [
        format!("${}\r\n", MAX_REPLY + 1),
        format!("*{}\r\n", MAX_REPLY),
        "$9223372036854775807\r\n".to_owned(),
    ] {
        assert!(parse(header.as_bytes()).is_err(), "{header}");
    }
    // Declared within the bound but never ending: refused once past the bound.
    let mut endless = b"*3\r\n+".to_vec();
    endless.resize(MAX_REPLY + 1, b'a');
    assert!(parse(&endless).is_err());
    // Within the bound and not complete yet: waits.
    assert_eq!(parse(&endless[..1000]), Ok(None));
}

#[test]
fn server_errors_keep_their_code() {
    let (value, _) = parse(b"-NOSCRIPT No matching script.\r\n")
        .unwrap()
        .unwrap();
    let Value::ServerError(err) = value else {
        panic!("{value:?}")
    };
    let err = redis::RedisError::from(err);
    assert_eq!(err.code(), Some("NOSCRIPT"));
    let (value, _) = parse(b"-READONLY You can't write against a read only replica.\r\n")
        .unwrap()
        .unwrap();
    let Value::ServerError(err) = value else {
        panic!("{value:?}")
    };
    assert_eq!(redis::RedisError::from(err).code(), Some("READONLY"));
}

#[test]
fn a_reply_not_whole_at_the_bound_is_refused() {
    // Exactly MAX_REPLY bytes in and the reply not whole: it is longer than the bound.
    let mut at_bound = b"*3\r\n+".to_vec();
    at_bound.resize(MAX_REPLY, b'a');
    assert!(parse(&at_bound).is_err());
    // A bulk string within the bound on its own, past it with what comes before it.
    let past = format!("*2\r\n:1\r\n${}\r\nab", MAX_REPLY - 4);
    assert!(parse(past.as_bytes()).is_err());
    // A reply of exactly MAX_REPLY bytes is read.
    let header = format!("${}\r\n", MAX_REPLY - 13);
    let mut whole = header.into_bytes();
    whole.resize(MAX_REPLY - 2, b'x');
    whole.extend_from_slice(b"\r\n");
    assert_eq!(whole.len(), MAX_REPLY);
    assert!(matches!(parse(&whole), Ok(Some((Value::BulkString(_), n))) if n == MAX_REPLY));
}

#[test]
fn a_reply_of_too_many_values_is_refused() {
    let array = |n: usize| {
        let mut bytes = format!("*{n}\r\n").into_bytes();
        for _ in 0..n {
            bytes.extend_from_slice(b":1\r\n");
        }
        bytes
    };
    // The array counts as one value.
    assert!(matches!(parse(&array(MAX_VALUES - 1)), Ok(Some(_))));
    assert!(parse(&array(MAX_VALUES)).is_err());
    // Refused on its header, before any item is built.
    assert!(parse(format!("*{}\r\n", MAX_VALUES + 1).as_bytes()).is_err());
    // Nested arrays count every item.
    let mut nested = b"*2\r\n".to_vec();
    for _ in 0..2 {
        let mut inner = array(MAX_VALUES / 2);
        nested.append(&mut inner);
    }
    assert!(parse(&nested).is_err());
    // Not whole yet and already past the budget: refused, not waited for.
    assert!(parse(&nested[..nested.len() - 100]).is_err());
}

#[test]
fn a_reply_in_pieces_says_how_many_bytes_it_needs() {
    assert_eq!(parse_next(b"$100\r\nabc"), Ok(Parsed::Need(108)));
    // Nested: counted from the front of the buffer.
    assert_eq!(parse_next(b"*2\r\n:1\r\n$10\r\nab"), Ok(Parsed::Need(25)));
    // A line not ended yet: at least one more byte.
    assert_eq!(parse_next(b"*2\r\n:1"), Ok(Parsed::Need(7)));
    assert_eq!(parse_next(b""), Ok(Parsed::Need(1)));
}
