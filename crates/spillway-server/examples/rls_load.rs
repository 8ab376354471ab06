//! Load generator for the Envoy rate-limit service that spreads its calls over many
//! descriptor values, which h2load cannot do (it repeats one request body per process).
//!
//! It pre-encodes one `ShouldRateLimit` call per value, opens `--connections` HTTP/2
//! connections (spread over `--threads` threads) with `--streams` calls in flight on each,
//! cycles through the values, and prints
//! throughput and latency percentiles. `bench/grpc.sh` runs it beside h2load.
//!
//!   cargo run --release -p spillway-server --example rls_load -- --addr 127.0.0.1:8081

// A load generator measures wall-clock latency; it has no policy clock to follow.
#![allow(clippy::disallowed_methods)]

use bytes::Bytes;
use clap::Parser;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Sends ShouldRateLimit calls over many descriptor values")]
struct Args {
    /// The gRPC listener to load.
    #[arg(long)]
    addr: SocketAddr,
    /// The rate-limit domain of every call.
    #[arg(long, default_value = "bench")]
    domain: String,
    /// The descriptor entry's key; its values are `<key>-0` to `<key>-<values - 1>`.
    #[arg(long, default_value = "user")]
    key: String,
    /// How many distinct descriptor values to cycle through.
    #[arg(long, default_value_t = 100_000)]
    values: usize,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight on each connection.
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// Seconds of measured load, after one second of warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Threads, each with its own single-threaded runtime and its share of the connections.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The server's process id: its CPU time over the measured seconds is reported per call.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// A process's user and system CPU time so far, in clock ticks (Linux `/proc`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.values == 0 || args.connections == 0 || args.streams == 0 || args.threads == 0 {
        return Err("--values, --connections, --streams and --threads must be at least 1".into());
    }
    run(args)
}

/// One gRPC message frame: a zero flag byte, the 4-byte big-endian length, then the
/// `RateLimitRequest` (domain = 1, descriptors = 2 { entries = 1 { key = 1, value = 2 } },
/// hits_addend = 3).
fn frame(domain: &str, key: &str, value: &str) -> Bytes {
    fn varint(out: &mut Vec<u8>, mut n: u64) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn field(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
        varint(out, number << 3 | 2);
        varint(out, payload.len() as u64);
        out.extend_from_slice(payload);
    }
    let mut entry = Vec::new();
    field(&mut entry, 1, key.as_bytes());
    field(&mut entry, 2, value.as_bytes());
    let mut descriptor = Vec::new();
    field(&mut descriptor, 1, &entry);
    let mut message = Vec::new();
    field(&mut message, 1, domain.as_bytes());
    field(&mut message, 2, &descriptor);
    varint(&mut message, 3 << 3);
    varint(&mut message, 1);
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(&message);
    Bytes::from(out)
}

/// What the streams share: the calls to send, whether to record, and when to stop.
struct Shared {
    frames: Vec<Bytes>,
    uri: http::Uri,
    recording: AtomicBool,
    stop: AtomicBool,
    failed: AtomicU64,
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let frames = (0..args.values)
        .map(|i| frame(&args.domain, &args.key, &format!("{}-{i}", args.key)))
        .collect();
    let uri: http::Uri = format!(
        "http://{}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        args.addr
    )
    .parse()?;
    let shared = Arc::new(Shared {
        frames,
        uri,
        recording: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        failed: AtomicU64::new(0),
    });

    // Each thread runs its own single-threaded runtime with its share of the connections, so a
    // connection's streams never contend across threads (as in the server).
    let per_stream = args.values.div_ceil(args.connections * args.streams);
    let mut threads = Vec::new();
    for t in 0..args.threads {
        let mine: Vec<usize> = (t..args.connections).step_by(args.threads).collect();
        let (shared, addr, streams) = (shared.clone(), args.addr, args.streams);
        threads.push(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?;
            runtime.block_on(load(addr, mine, streams, per_stream, shared))
        }));
    }

    std::thread::sleep(Duration::from_secs(1));
    let ticks_before = args.server_pid.and_then(cpu_ticks);
    shared.recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(args.seconds));
    shared.stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let ticks_after = args.server_pid.and_then(cpu_ticks);

    let mut latencies: Vec<u32> = Vec::new();
    for thread in threads {
        latencies.extend(thread.join().map_err(|_| "a load thread panicked")??);
    }
    if latencies.is_empty() {
        return Err("no call completed; is the gRPC listener up?".into());
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        f64::from(latencies[i]) / 1000.0
    };
    println!(
        "calls: {} in {elapsed:.2}s over {} descriptor values ({} failed)",
        latencies.len(),
        args.values,
        shared.failed.load(Ordering::Relaxed)
    );
    println!(
        "throughput: {:.0} decisions/s",
        latencies.len() as f64 / elapsed
    );
    println!(
        "latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.50),
        at(0.99),
        f64::from(latencies[latencies.len() - 1]) / 1000.0
    );
    if let (Some(before), Some(after)) = (ticks_before, ticks_after) {
        // Linux reports /proc CPU times in USER_HZ, 100 per second on every common platform.
        let cpu = (after - before) as f64 / 100.0;
        println!(
            "server CPU: {:.2} cores ({:.1} us per call)",
            cpu / elapsed,
            cpu / latencies.len() as f64 * 1e6
        );
    }
    Ok(())
}

/// Opens `connections` (their indexes) with `streams` call loops each; returns the recorded
/// latencies once told to stop.
async fn load(
    addr: SocketAddr,
    connections: Vec<usize>,
    streams: usize,
    per_stream: usize,
    shared: Arc<Shared>,
) -> Result<Vec<u32>, String> {
    let mut loops = Vec::new();
    for c in connections {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|err| format!("cannot connect to {addr}: {err}"))?;
        tcp.set_nodelay(true).map_err(|err| err.to_string())?;
        let (client, connection) = h2::client::handshake(tcp)
            .await
            .map_err(|err| format!("HTTP/2 handshake: {err}"))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                eprintln!("rls_load: connection ended: {err}");
            }
        });
        for s in 0..streams {
            let first = (c * streams + s) * per_stream;
            loops.push(tokio::spawn(call_loop(
                client.clone(),
                shared.clone(),
                first,
            )));
        }
    }
    let mut latencies = Vec::new();
    for each in loops {
        latencies.extend(each.await.map_err(|err| err.to_string())?);
    }
    Ok(latencies)
}

/// Sends calls one after another until told to stop, starting at value `next`; returns the
/// latencies (microseconds) of the calls made while recording.
async fn call_loop(
    client: h2::client::SendRequest<Bytes>,
    shared: Arc<Shared>,
    mut next: usize,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    let Ok(mut client) = client.ready().await else {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        return latencies;
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let body = shared.frames[next % shared.frames.len()].clone();
        next += 1;
        let started = Instant::now();
        let ok = match call(&mut client, &shared.uri, body).await {
            Ok(ok) => ok,
            Err(err) => {
                eprintln!("rls_load: call failed: {err}");
                shared.failed.fetch_add(1, Ordering::Relaxed);
                return latencies;
            }
        };
        if !ok {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        } else if shared.recording.load(Ordering::Relaxed) {
            latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => return latencies,
        };
    }
    latencies
}

/// One unary call; whether it ended with `grpc-status: 0`.
async fn call(
    client: &mut h2::client::SendRequest<Bytes>,
    uri: &http::Uri,
    body: Bytes,
) -> Result<bool, h2::Error> {
    let request = http::Request::post(uri.clone())
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request");
    let (response, mut send) = client.send_request(request, false)?;
    send.send_data(body, true)?;
    let response = response.await?;
    if response.status() != http::StatusCode::OK {
        return Ok(false);
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?;
    Ok(trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .is_some_and(|s| s == "0"))
}
