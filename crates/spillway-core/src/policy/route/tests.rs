//! Route patterns and the reading of request paths, case by case.

use super::{RequestPath, RoutePattern};

/// Whether `pattern` takes a request with `method` and `path` under one of the readings the
/// resolver makes of it.
fn at(pattern: &RoutePattern, method: Option<&str>, path: &str) -> bool {
    RequestPath::read(path, false).is_some_and(|path| {
        path.readings()
            .any(|reading| pattern.matches(method, reading))
    })
}

/// A pattern as the policy compiles it by default, ignoring case.
fn pattern(text: &str) -> RoutePattern {
    match RoutePattern::parse(text, false) {
        Ok(p) => p,
        Err(e) => panic!("{text}: {e}"),
    }
}

/// A pattern of a policy that declares `route_matching: {case_sensitive: true}`.
fn sensitive(text: &str) -> RoutePattern {
    match RoutePattern::parse(text, true) {
        Ok(p) => p,
        Err(e) => panic!("{text}: {e}"),
    }
}

#[test]
fn paths_are_read_as_a_server_would() {
    let p = pattern("POST /v1/generate");
    for path in [
        "/v1/generate/",
        "/v1//generate",
        "//v1/generate",
        "/v1/./generate",
        "/v1/x/../generate",
        "/v1/%67enerate",
        "/v1/%2e/generate",
        "/v1/x/%2E%2E/generate?q=1",
        // A fragment written into the request line: servers drop it before routing.
        "/v1/generate#x",
        "/v1/generate#",
        "/v1/generate#/more?q",
        "/v1/generate?q=1#x",
    ] {
        assert!(at(&p, Some("POST"), path), "{path}");
    }
    // An escaped `#` is part of the path, as it is to a server.
    assert!(!at(&p, Some("POST"), "/v1/generate%23x"));
    // An escaped or backward slash separates segments too (some servers decode them).
    for path in [
        "/v1%2Fgenerate",
        "/v1%2fgenerate",
        "/v1\\generate",
        "/v1%5Cgenerate",
    ] {
        assert!(at(&p, Some("POST"), path), "{path}");
    }
    for path in [
        "/v1/generate/more",
        "/v1/generat",
        "/v1/generate%2Fx",
        "/v1/../generate",
        "/../../v1",
    ] {
        assert!(!at(&p, Some("POST"), path), "{path}");
    }
    // `..` above the root stays at the root.
    assert!(at(&p, Some("POST"), "/../../v1/generate"));
    // A stray `%` is a character like any other.
    assert!(at(&pattern("GET /100%"), Some("GET"), "/100%"));
}

#[test]
fn path_parameters_are_dropped_from_each_segment() {
    let p = pattern("POST /v1/generate");
    for path in [
        "/v1/generate;x=1",
        "/v1;a/generate",
        "/v1;a=1;b=2/generate;jsessionid=abc?q=1",
        "/v1/generate%3Bx=1",
        "/v1%3ba/generate",
        // A segment that is only parameters is an empty one.
        "/;x/v1/generate",
        "/v1/;/generate",
        // `..;` and `.;` are dot segments once their parameters are gone.
        "/v1/x/..;y/generate",
        "/v1/.;y/generate",
        // An escaped slash inside parameters belongs to them, as Tomcat reads it.
        "/v1;a%2Fb/generate",
        // A trailing slash and doubled slashes, with or without parameters.
        "/v1/generate/",
        "//v1//generate",
        "//v1;p//generate;q/",
    ] {
        assert!(at(&p, Some("POST"), path), "{path}");
    }
    for path in ["/v1/gen;erate", "/v1;/x/generate", "/v1/generate/x;y"] {
        assert!(!at(&p, Some("POST"), path), "{path}");
    }
}

#[test]
fn absolute_targets_are_read_by_their_path() {
    let p = pattern("POST /v1/generate");
    for path in [
        "http://api.example.com/v1/generate",
        "HTTPS://api.example.com:8443/V1/generate;x?q=1",
    ] {
        assert!(at(&p, Some("POST"), path), "{path}");
    }
    assert!(at(&pattern("GET /"), Some("GET"), "http://api.example.com"));
    // Only a scheme and authority are taken off; a path is never mistaken for one.
    for path in [
        "/x/http://h/v1/generate",
        "1http://h/v1/generate",
        "://h/v1/generate",
        "+http://h/v1/generate",
    ] {
        assert!(!at(&p, Some("POST"), path), "{path}");
    }
    // `*` still takes exactly one segment, parameters dropped.
    let p = pattern("* /v1/users/*/keys");
    assert!(at(&p, Some("GET"), "/v1/users/42;v=2/keys"));
    // Leniently a segment of parameters only is empty; literally (Express) it is the id.
    assert!(at(&p, Some("GET"), "/v1/users/;v=2/keys"));
}

/// The segments of each reading the resolver makes of `path`.
fn readings(path: &str) -> Vec<Vec<String>> {
    let path = RequestPath::read(path, false).expect("a path");
    path.readings()
        .map(|reading| reading.iter().map(|s| s.to_string()).collect())
        .collect()
}

#[test]
fn a_path_servers_could_read_apart_is_read_each_way() {
    // Plain paths have one reading, whatever a server makes of them.
    for path in [
        "/v1/generate/7?x=1",
        "//v1//generate/",
        "/users/john.smith",
        "/files/a.b/",
        "/v1/x.../y",
    ] {
        assert_eq!(readings(path).len(), 1, "{path}");
    }
    assert_eq!(readings("//v1//generate/"), [["v1", "generate"]]);
    // An escape that reads the same every way gives one reading too.
    assert_eq!(readings("/v1/%67enerate"), [["v1", "%67enerate"]]);
    assert_eq!(readings("/a%20b/"), [["a%20b"]]);
    // Lenience shortens these; a strict server (Express) keeps every segment.
    let shortened = readings("/v1/generate/x%2F..");
    assert_eq!(shortened[0], ["v1", "generate"]);
    assert!(
        shortened.contains(&vec!["v1".into(), "generate".into(), "x%2F..".into()]),
        "{shortened:?}"
    );
    assert_eq!(
        readings("/v1/generate/.."),
        [vec!["v1"], vec!["v1", "generate", ".."]]
    );
    assert_eq!(
        readings("/projects/group%2Fname/issues"),
        [
            vec!["projects", "group", "name", "issues"],
            vec!["projects", "group%2Fname", "issues"]
        ]
    );
    // nginx resolves dots and keeps `;`: `/v1/generate/;/..` is `/v1/generate` there.
    let mixed = readings("/v1/generate/;/..");
    assert_eq!(mixed[0], ["v1"]);
    assert!(
        mixed.contains(&vec!["v1".into(), "generate".into()]),
        "{mixed:?}"
    );
    // Django decodes `%2F` and keeps dots: `/v1/generate%2F..` is `generate/..` there.
    let mixed = readings("/v1/generate%2F..");
    assert_eq!(mixed[0], ["v1"]);
    assert!(
        mixed.contains(&vec!["v1".into(), "generate".into(), "..".into()]),
        "{mixed:?}"
    );
    // An escaped path is matched where a strict server routes it.
    let p = pattern("GET /projects/*/issues");
    assert!(at(&p, Some("GET"), "/projects/group%2Fname/issues"));
    assert!(at(
        &pattern("POST /v1/generate/*"),
        Some("POST"),
        "/v1/generate/x%2F.."
    ));
    assert!(at(
        &pattern("POST /v1/generate/*"),
        Some("POST"),
        "/v1/generate%2F.."
    ));
    assert!(at(
        &pattern("POST /v1/generate"),
        Some("POST"),
        "/v1/generate/;/.."
    ));
}

#[test]
fn format_suffixes_are_cut_only_when_asked() {
    let read = |path, suffixes| {
        let path = RequestPath::read(path, suffixes).expect("a path");
        (path.readings())
            .map(|r| r.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    assert_eq!(read("/v1/generate.json", false), [["v1", "generate.json"]]);
    assert_eq!(
        read("/v1/generate.json", true),
        [vec!["v1", "generate.json"], vec!["v1", "generate"]]
    );
    // At the first dot of the last segment only, and not a leading one.
    assert_eq!(
        read("/v1.2/items/7.json.gz?x=1", true),
        [
            vec!["v1.2", "items", "7.json.gz"],
            vec!["v1.2", "items", "7"]
        ]
    );
    assert_eq!(read("/v1/.well-known", true), [["v1", ".well-known"]]);
    assert_eq!(read("/v1/generate", true), [["v1", "generate"]]);
}

#[test]
fn method_parameters_are_read_from_the_query_as_php_reads_them() {
    let methods = |path| {
        let path = RequestPath::read(path, false).expect("a path");
        path.method_params().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(methods("/v1/items/7?_method=DELETE"), ["DELETE"]);
    assert_eq!(methods("/v1/items/7?a=1&_method=%44ELETE#f"), ["DELETE"]);
    // PHP keeps the last of several; every one is read.
    assert_eq!(methods("/i?_method=GET&_method=DELETE"), ["GET", "DELETE"]);
    assert_eq!(methods("/i?_method=GET&_method=GET"), ["GET"]);
    // PHP decodes a name, drops its leading spaces, cuts it at a NUL and reads `.` and a
    // space in it as `_`.
    for path in [
        "/i?%5Fmethod=PUT",
        "/i?.method=PUT",
        "/i?+_method=PUT",
        "/i?%20_method=PUT",
        "/i?_method%00x=PUT",
        "/i?%20method=x&_method=PUT",
    ] {
        assert_eq!(methods(path), ["PUT"], "{path}");
    }
    for path in [
        "/v1/items/7",
        "/v1/items/7?_method=",
        "/v1/items/7?x_method=DELETE",
        "/v1/items/7?_method",
        "/v1/items/7#?_method=DELETE",
        // These are `method` to PHP; an escaped plus is a plus.
        "/i?+method=PUT",
        "/i?%20method=PUT",
        "/i?%2B_method=PUT",
    ] {
        assert!(methods(path).is_empty(), "{path}");
    }
    // A bounded number, however many the query holds, and always the last (PHP's).
    let mut many: String = (0..100).map(|i| format!("_method=M{i}&")).collect();
    many.insert_str(0, "/i?");
    many.push_str("_method=DELETE");
    let read = methods(&many);
    assert_eq!(read.len(), super::MAX_METHOD_PARAMS);
    assert_eq!(read.last().map(String::as_str), Some("DELETE"));
    // ... and it says there were more, so any method counts.
    assert!(RequestPath::read(&many, false)
        .expect("a path")
        .method_params_overflowed());
    let few = RequestPath::read("/i?_method=A&_method=B&_method=A", false).expect("a path");
    assert!(!few.method_params_overflowed());
}

#[test]
fn letters_compare_without_case_unless_the_policy_says_otherwise() {
    let p = pattern("POST /v1/generate");
    for path in [
        "/V1/Generate",
        "/v1/GENERATE",
        "/V1/%47enerate",
        "/v1/%67ENERATE;X",
    ] {
        assert!(at(&p, Some("post"), path), "{path}");
    }
    assert!(at(&pattern("GET /Users/*"), Some("GET"), "/users/ME"));
    let p = sensitive("POST /v1/generate");
    assert!(at(&p, Some("POST"), "/v1/generate;x=1"));
    assert!(at(&p, Some("post"), "/v1/%67enerate"));
    for path in ["/V1/Generate", "/v1/GENERATE", "/v1/%47enerate"] {
        assert!(!at(&p, Some("POST"), path), "{path}");
    }
    // Only ASCII letters fold; other bytes compare as they are.
    assert!(at(&pattern("GET /caf%C3%A9"), Some("GET"), "/CAF%C3%A9"));
    assert!(!at(&pattern("GET /caf%C3%A9"), Some("GET"), "/CAF%C3%89"));
}

#[test]
fn identities_follow_case_sensitivity() {
    assert_eq!(
        pattern("post /V1/Generate").identity(),
        pattern("POST /v1/generate").identity()
    );
    assert_ne!(
        sensitive("POST /V1/Generate").identity(),
        sensitive("POST /v1/generate").identity()
    );
    // The name keeps the spelling the policy uses.
    assert_eq!(
        pattern("post /V1/Generate").to_string(),
        "POST /V1/Generate"
    );
}

#[test]
fn patterns_are_read_like_paths() {
    // The root, a trailing slash, doubled slashes and `.` segments in a pattern.
    assert!(at(&pattern("GET /"), Some("GET"), "/"));
    assert!(at(&pattern("* /"), Some("PUT"), "//"));
    assert!(at(
        &pattern("POST /v1/generate/"),
        Some("POST"),
        "/v1/generate"
    ));
    assert!(at(
        &pattern("POST /v1//./generate"),
        Some("POST"),
        "/v1/generate/"
    ));
    assert_eq!(
        pattern("POST /v1/generate/").to_string(),
        "POST /v1/generate"
    );
    // Escapes in a pattern are decoded once, like the request's.
    assert!(at(&pattern("GET /a%20b"), Some("GET"), "/a%20b"));
    assert!(at(&pattern("GET /a%20b"), Some("GET"), "/a b"));
    assert!(RoutePattern::parse("GET /a/../b", false)
        .unwrap_err()
        .contains("`..` is not allowed"));
    assert!(at(&pattern("GET /a/*"), Some("GET"), "/a/b/"));
    assert!(!at(&pattern("GET /a/*"), Some("GET"), "/a//"));
    assert!(at(&pattern("GET /a/**"), Some("GET"), "/a//"));
}

#[test]
fn literal_paths_match_exactly() {
    let p = pattern("POST /v1/generate");
    assert!(at(&p, Some("POST"), "/v1/generate"));
    assert!(at(&p, Some("post"), "/v1/generate?stream=true"));
    assert!(!at(&p, Some("GET"), "/v1/generate"));
    assert!(!at(&p, None, "/v1/generate"));
    assert!(!at(&p, Some("POST"), "/v1/generate/x"));
    assert!(!at(&p, Some("POST"), "/v1"));
    assert!(!at(&p, Some("POST"), "v1/generate"));
}

#[test]
fn one_star_is_one_segment() {
    let p = pattern("* /v1/users/*/keys");
    assert!(at(&p, Some("DELETE"), "/v1/users/42/keys"));
    assert!(at(&p, None, "/v1/users/42/keys"));
    assert!(!at(&p, Some("GET"), "/v1/users/42/7/keys"));
    assert!(!at(&p, Some("GET"), "/v1/users/keys"));
}

#[test]
fn double_star_takes_the_rest() {
    let p = pattern("GET /v1/meta/**");
    assert!(at(&p, Some("GET"), "/v1/meta/models/abc"));
    assert!(at(&p, Some("GET"), "/v1/meta/"));
    assert!(at(&p, Some("GET"), "/v1/meta"));
    assert!(!at(&p, Some("GET"), "/v1/metadata"));
    assert!(at(&pattern("* /**"), Some("GET"), "/anything/at/all"));
}

#[test]
fn rejects_malformed_patterns() {
    for (text, why) in [
        ("/v1/generate", "method and a path"),
        ("POST v1/generate", "start with `/`"),
        ("PO-ST /v1", "not an HTTP method"),
        ("GET /v1/**/x", "last segment"),
        ("GET /v1/gen*", "whole segment"),
        ("GET /v1?x=1", "must not contain"),
        ("GET /a /b", "method and a path"),
        ("GET /a;v=1", "must not contain `;`"),
        ("GET /a%3bv=1/b", "must not contain `;`"),
    ] {
        let err = RoutePattern::parse(text, false).unwrap_err();
        assert!(err.contains(why), "{text}: {err}");
    }
}

#[test]
fn canonical_form_spots_duplicates() {
    assert_eq!(pattern("post  /v1/x").to_string(), "POST /v1/x");
    assert_eq!(pattern("* /").to_string(), "* /");
    assert_eq!(pattern("GET /a/*/**").to_string(), "GET /a/*/**");
}

/// A `GET` pattern matches `HEAD` too (servers run the `GET` handler for it), in any case;
/// other patterns take only their own method.
#[test]
fn a_get_route_takes_head_requests_too() {
    let get = pattern("GET /v1/export");
    for method in ["GET", "HEAD", "head", "Head"] {
        assert!(at(&get, Some(method), "/v1/export"), "{method}");
    }
    assert!(!at(&get, Some("POST"), "/v1/export"));
    assert!(!at(&get, None, "/v1/export"));
    let head = pattern("HEAD /v1/export");
    assert!(at(&head, Some("HEAD"), "/v1/export"));
    assert!(!at(&head, Some("GET"), "/v1/export"));
    assert!(!at(&pattern("POST /v1/export"), Some("HEAD"), "/v1/export"));
    assert_eq!(
        get.head_identity().as_deref(),
        Some(head.identity().as_str())
    );
    assert_eq!(
        sensitive("GET /V1/x").head_identity(),
        Some(sensitive("HEAD /V1/x").identity())
    );
    assert_eq!(head.head_identity(), None);
}
