//! What resolving a request allocates. Every request resolves its limits' keys, so this is on
//! the hot path of every decision: under the example policy a usual request (a tenant, a user
//! and an IPv4 address on no route) plans four limits over two keys' values, and allocates the
//! list of planned limits and the client's network only. With a `Vec<String>` per key it made
//! twelve (a list per key and a copy per value, with the plan and the network); short values are now kept in place.
//!
//! Counted on this thread only (see `spillway_testkit::alloc`), so nothing the test harness
//! does meanwhile on other threads is counted.

use spillway_core::policy::Policy;
use spillway_core::request::RequestAttrs;
use spillway_testkit::alloc::{thread_allocations, Counting};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const EXAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/spillway.yaml"
));

fn request(user: &str) -> RequestAttrs {
    RequestAttrs {
        tenant: Some("t42".into()),
        user: Some(user.into()),
        ip: "10.0.4.210".parse().ok(),
        method: Some("GET".into()),
        path: Some("/v1/items".into()),
        ..RequestAttrs::default()
    }
}

#[test]
fn a_usual_request_allocates_its_plan_and_its_network_only() {
    let policy = Policy::from_yaml_str(EXAMPLE, "spillway.yaml").expect("the example loads");
    let usual = request("u1234");
    let before = thread_allocations();
    let resolved = policy.resolve(&usual);
    let made = thread_allocations() - before;
    let keys: Vec<Vec<String>> = (resolved.limits.iter())
        .map(|p| p.key.values.iter().map(|v| v.to_string()).collect())
        .collect();
    assert_eq!(
        keys,
        [
            vec!["10.0.4.210"],
            vec!["10.0.4.210"],
            vec!["t42", "u1234"],
            vec!["t42", "u1234"],
        ]
    );
    assert_eq!(
        made, 2,
        "the planned limits and the network, and nothing per key"
    );
}

#[test]
fn a_request_on_a_route_allocates_no_more_and_an_odd_spelling_only_its_readings() {
    let policy = Policy::from_yaml_str(EXAMPLE, "spillway.yaml").expect("the example loads");
    let count = |path: &str| {
        let mut req = request("u1234");
        (req.method, req.path) = (Some("POST".into()), Some(path.into()));
        let before = thread_allocations();
        let resolved = policy.resolve(&req);
        let made = thread_allocations() - before;
        assert_eq!(
            resolved.route.map(|r| r.name.to_string()).as_deref(),
            Some("POST /v1/generate")
        );
        made
    };
    // The plan and the network, as on no route: one reading, one scan.
    assert_eq!(count("/v1/generate"), 2);
    // Several readings move to the heap: one list more.
    assert_eq!(count("/v1/generate;x/."), 3);
}

#[test]
fn a_value_too_long_to_keep_in_place_is_kept_whole() {
    let policy = Policy::from_yaml_str(EXAMPLE, "spillway.yaml").expect("the example loads");
    let long = "a-user-id-much-longer-than-the-room-kept-in-place";
    let resolved = policy.resolve(&request(long));
    let users: Vec<&str> = (resolved.limits.iter())
        .filter(|p| p.key.values.len() == 2)
        .map(|p| p.key.values[1].as_str())
        .collect();
    assert_eq!(users, [long, long]);
}
