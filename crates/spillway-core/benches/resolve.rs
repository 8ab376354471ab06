//! What reading a request several ways costs the resolver: a plain path (one reading, the
//! common case), an oddly spelled one (each way servers differ on `%2F`, `;` and dots), and a
//! `POST` naming another method, all against the shipped example policy.
//!
//! Run: `cargo bench -p spillway-core --bench resolve`

use criterion::{black_box, Criterion, Throughput};
use spillway_core::policy::Policy;
use spillway_core::request::RequestAttrs;

fn bench(c: &mut Criterion) {
    let text = include_str!("../../../examples/spillway.yaml");
    let policy = Policy::from_yaml_str(text, "examples/spillway.yaml").expect("the example");
    let request = |method: &str, path: &str, method_override: Option<&str>| RequestAttrs {
        tenant: Some("acme".into()),
        user: Some("ada".into()),
        ip: Some("203.0.113.9".parse().expect("an address")),
        method: Some(method.into()),
        method_override: method_override.map(str::to_owned),
        path: Some(path.into()),
        ..RequestAttrs::default()
    };
    let cases = [
        ("plain", request("POST", "/v1/generate", None)),
        ("odd_path", request("POST", "/v1/x%2F..;a/generate/.", None)),
        ("override", request("POST", "/v1/items/7", Some("DELETE"))),
    ];
    let mut group = c.benchmark_group("resolve");
    group.throughput(Throughput::Elements(1));
    for (name, req) in &cases {
        group.bench_function(*name, |b| b.iter(|| policy.resolve(black_box(req))));
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
