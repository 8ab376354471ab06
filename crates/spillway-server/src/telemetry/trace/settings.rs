//! The flags that turn traces on, and their checked form.
//!
//! Like the decision log, traces are a fact about the process (where its collector is), so
//! they are configured on the command line and `SPILLWAY_*` variables, not in the shared,
//! reloaded policy file. Off unless an endpoint is given.

use clap::Args;
use std::sync::Arc;

/// Flags of `spillway serve` that set up OpenTelemetry traces.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Export a span per decision (and a child per store call) to this OpenTelemetry
    /// collector, over OTLP/gRPC, e.g. `http://collector:4317`. Off when unset.
    #[arg(
        long = "otlp-endpoint",
        env = "SPILLWAY_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub endpoint: Option<String>,

    /// Share of decisions traced when the caller sent no `traceparent`, 0 to 1. A caller's
    /// own sampling decision (the `traceparent` flags) is always followed.
    #[arg(long = "trace-sample", env = "SPILLWAY_TRACE_SAMPLE", value_name = "RATIO",
          default_value = "1", value_parser = parse_ratio)]
    pub sample: f64,
}

/// The checked trace settings; present only when traces are on.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The collector's OTLP/gRPC endpoint (`http://host:port`).
    pub endpoint: String,
    /// Share of root decisions (no caller's `traceparent`) sampled.
    pub sample: f64,
    /// This node's name, the resource's `service.instance.id`.
    pub node: Arc<str>,
}

impl TraceSettings {
    /// Checks the flags; `None` when traces are off. `node` is `--node-name` (else the host
    /// name).
    pub fn from_args(args: TraceArgs, node: &str) -> Result<Option<Self>, String> {
        let Some(endpoint) = args.endpoint.map(|e| e.trim().to_owned()) else {
            return Ok(None);
        };
        if endpoint.is_empty() {
            return Ok(None);
        }
        let Some(authority) = endpoint.strip_prefix("http://") else {
            return Err(format!(
                "--otlp-endpoint `{endpoint}`: expected http://HOST:PORT (OTLP over gRPC, \
                 without TLS; run a local collector or sidecar for TLS)"
            ));
        };
        if authority.trim_end_matches('/').is_empty() {
            return Err(format!("--otlp-endpoint `{endpoint}`: the host is missing"));
        }
        Ok(Some(Self {
            endpoint,
            sample: args.sample,
            node: node.into(),
        }))
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("`{text}` is not a ratio from 0 to 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(endpoint: Option<&str>) -> TraceArgs {
        TraceArgs {
            endpoint: endpoint.map(str::to_owned),
            sample: 0.5,
        }
    }

    #[test]
    fn traces_are_off_without_an_endpoint() {
        assert_eq!(TraceSettings::from_args(args(None), "n"), Ok(None));
        assert_eq!(TraceSettings::from_args(args(Some(" ")), "n"), Ok(None));
    }

    #[test]
    fn an_endpoint_must_be_plain_http() {
        let on = TraceSettings::from_args(args(Some("http://collector:4317")), "node-a")
            .expect("valid")
            .expect("on");
        assert_eq!(on.endpoint, "http://collector:4317");
        assert_eq!(&*on.node, "node-a");
        for bad in ["https://collector:4317", "collector:4317", "http://"] {
            assert!(
                TraceSettings::from_args(args(Some(bad)), "n").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn ratios_lie_between_zero_and_one() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("x").is_err());
    }
}
