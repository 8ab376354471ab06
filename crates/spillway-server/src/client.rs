//! `spillway check`: ask a running server for a verdict from the command line.
//!
//! Handy for trying a policy out and for shell scripts. It sends the given attributes to
//! `POST /v1/check` (with `?peek=true` under `--peek`), then prints the outcome, the
//! rate-limit headers and the JSON body. Exit status: 0 allowed, 1 denied, 2 when there is no
//! verdict (server unreachable, unexpected status). Plain `http://` URLs only.

use crate::cli::CheckArgs;
use anyhow::{bail, Context};
use serde_json::{Map, Value};
use std::process::ExitCode;
use std::time::Duration;

/// How long to wait for the server before giving up.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Exit status when the server could not give a verdict.
pub const NO_VERDICT: u8 = 2;

/// Runs the subcommand.
pub fn main(args: &CheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("spillway check: cannot start the async runtime: {err}");
            return ExitCode::from(NO_VERDICT);
        }
    };
    match runtime.block_on(ask(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("spillway check: {err:#}");
            ExitCode::from(NO_VERDICT)
        }
    }
}

/// The JSON body for the given attributes; absent ones are left out.
pub fn request_body(args: &CheckArgs) -> Value {
    let mut body = Map::new();
    let strings = [
        ("tenant", &args.tenant),
        ("user", &args.user),
        ("method", &args.method),
        ("path", &args.path),
        ("tier", &args.tier),
    ];
    for (name, value) in strings {
        if let Some(value) = value {
            body.insert(name.into(), value.clone().into());
        }
    }
    if let Some(ip) = args.ip {
        body.insert("ip".into(), ip.to_string().into());
    }
    if let Some(cost) = args.cost {
        body.insert("cost".into(), cost.into());
    }
    if !args.descriptors.is_empty() {
        let descriptors: Map<String, Value> = args
            .descriptors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        body.insert("descriptors".into(), descriptors.into());
    }
    Value::Object(body)
}

/// Sends the check and prints the answer; `Ok(allowed)` when there was a verdict.
async fn ask(args: &CheckArgs) -> anyhow::Result<bool> {
    let query = if args.peek { "?peek=true" } else { "" };
    let url = format!("{}/v1/check{query}", args.server.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    let response = client
        .post(&url)
        .json(&request_body(args))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response
        .text()
        .await
        .with_context(|| format!("reading the answer from {url}"))?;
    let allowed = match status.as_u16() {
        200 => true,
        429 => false,
        _ => bail!("{url} answered {status}: {text}"),
    };
    println!("{status}: {}", if allowed { "allowed" } else { "denied" });
    for (name, value) in &headers {
        let lower = name.as_str();
        if lower.starts_with("x-ratelimit")
            || lower.starts_with("ratelimit")
            || lower == "retry-after"
        {
            println!("{name}: {}", String::from_utf8_lossy(value.as_bytes()));
        }
    }
    let pretty = serde_json::from_str::<Value>(&text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(text);
    println!("{pretty}");
    Ok(allowed)
}
