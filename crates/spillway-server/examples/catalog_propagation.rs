//! How fast a catalog change reaches other nodes: one real PostgreSQL, four `spillway serve`
//! processes on it, writes through the admin API of the first, and the time until each of the
//! other three reports (on `GET /v1/admin/version`, polled every millisecond) that it has
//! applied the write's version, measured from the moment the write was sent.
//!
//! `cargo run --release -p spillway-server --example catalog_propagation -- [WRITES] [BINARY]`
//! (defaults: 200 writes, `target/release/spillway`).

use spillway_testkit::postgres::PostgresServer;
use spillway_testkit::redis::free_port;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "propagation-bench-token-0123456789";

/// Tenants come from the catalog, so the policy has no `tenants:` section.
const POLICY: &str = "default_tier: free
limits:
  tenant-minute: {algorithm: fixed_window, limit: 600, window: 1m, key: [tenant]}
tiers:
  free: {limits: [tenant-minute]}
  paid: {limits: [tenant-minute]}
";

struct Node {
    child: Child,
    base: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &str, catalog: &str, policy: &std::path::Path) -> Node {
    let port = free_port();
    let child = Command::new(binary)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(policy)
        .args([
            "--catalog",
            catalog,
            "--catalog-migrate",
            "--log-filter",
            "warn",
        ])
        .env("SPILLWAY_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start spillway");
    Node {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn applied(http: &reqwest::Client, base: &str) -> Option<u64> {
    let response = http
        .get(format!("{base}/v1/admin/version"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = response.json().await.ok()?;
    body["version"].as_u64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let writes: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(200);
    let binary = args
        .next()
        .unwrap_or_else(|| "target/release/spillway".to_owned());
    let pg = PostgresServer::start();
    let policy =
        std::env::temp_dir().join(format!("spillway-propagation-{}.yaml", std::process::id()));
    std::fs::write(&policy, POLICY).expect("write the policy");
    let nodes: Vec<Node> = (0..4).map(|_| start(&binary, &pg.url(), &policy)).collect();
    let http = reqwest::Client::new();
    for node in &nodes {
        for _ in 0..200 {
            if applied(&http, &node.base).await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut samples = Vec::with_capacity(writes * 3);
    for i in 0..writes {
        let tier = if i % 2 == 0 { "paid" } else { "free" };
        let body = serde_json::json!({ "tier": tier });
        #[allow(clippy::disallowed_methods)] // a benchmark's stopwatch, not a limiter's clock
        let sent = std::time::Instant::now();
        let response = http
            .put(format!("{}/v1/admin/tenants/t{}", nodes[0].base, i % 50))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("the admin API answers");
        let written: serde_json::Value = response.json().await.expect("json");
        let version = written["version"].as_u64().expect("a version");
        let waits: Vec<_> = nodes[1..]
            .iter()
            .map(|node| {
                let (http, base) = (http.clone(), node.base.clone());
                tokio::spawn(async move {
                    loop {
                        if applied(&http, &base).await >= Some(version) {
                            return sent.elapsed().as_secs_f64() * 1e3;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            })
            .collect();
        for wait in waits {
            samples.push(wait.await.expect("a waiting task"));
        }
        // Writes arrive about every 20 ms, not back to back.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_file(&policy);
    samples.sort_by(f64::total_cmp);
    println!(
        "{writes} writes on node 1, applied by 3 other nodes ({} samples): p50 {:.1} ms, p90 \
         {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
        samples[samples.len() - 1]
    );
}
