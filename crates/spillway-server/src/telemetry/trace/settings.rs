//! The flags that turn traces on, and their checked form.
//!
//! Like the decision log, traces are a fact about the process (where its collector is), so
//! they are configured on the command line and `SPILLWAY_*` variables, not in the shared,
//! reloaded policy file. Off unless an endpoint is given.
//!
//! `https://` endpoints are verified against the webpki roots (Mozilla's list, built in) plus
//! the certificates of `--otlp-ca-file`, read and checked here at startup so a wrong path or a
//! file without a certificate stops the server with a message instead of failing every export.

use clap::Args;
use spillway_core::redact::mask_service_url;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The SDK's default queue of finished spans waiting for export.
pub const DEFAULT_QUEUE: usize = 2_048;

/// Flags of `spillway serve` that set up OpenTelemetry traces.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Export a span per decision (and a child per store call) to this OpenTelemetry
    /// collector, over OTLP/gRPC, e.g. `http://collector:4317`, or over TLS with
    /// `https://collector:4317`. Off when unset.
    #[arg(
        long = "otlp-endpoint",
        env = "SPILLWAY_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub endpoint: Option<String>,

    /// Share of decisions traced when the caller sent no `traceparent`, 0 to 1 (with
    /// `--trace-parent-sampling ignore`, of every decision).
    #[arg(long = "trace-sample", env = "SPILLWAY_TRACE_SAMPLE", value_name = "RATIO",
          default_value = "1", value_parser = parse_ratio)]
    pub sample: f64,

    /// Whether a caller's `traceparent` sampled flag decides if its decision is traced
    /// (`follow`, the default, as a service inside one trusted system does), or
    /// `--trace-sample` decides for every decision (`ignore`: for callers that are not
    /// trusted, who could otherwise keep their own decisions out of the traces with a `-00`
    /// flag, or crowd the export queue with `-01`). The decision span joins the caller's
    /// trace either way.
    #[arg(
        long = "trace-parent-sampling",
        env = "SPILLWAY_TRACE_PARENT_SAMPLING",
        value_name = "follow|ignore",
        default_value = "follow",
        value_enum
    )]
    pub parent_sampling: ParentSampling,

    /// PEM file of CA certificates trusted for an `https://` endpoint, besides the built-in
    /// webpki roots (for a collector whose certificate comes from a private CA).
    #[arg(
        id = "otlp_ca_file",
        long = "otlp-ca-file",
        env = "SPILLWAY_OTLP_CA_FILE",
        value_name = "PATH"
    )]
    pub ca_file: Option<PathBuf>,

    /// Most finished spans waiting for export; when it is full, further spans are dropped
    /// and counted in `spillway_trace_spans_dropped_total{reason="queue_full"}`.
    #[arg(id = "otlp_queue", long = "otlp-queue", env = "SPILLWAY_OTLP_QUEUE", value_name = "SPANS",
          default_value_t = DEFAULT_QUEUE, value_parser = parse_queue)]
    pub queue: usize,
}

/// What a caller's `traceparent` sampled flag decides (`--trace-parent-sampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ParentSampling {
    /// The caller's flag decides; `--trace-sample` decides for roots only.
    #[default]
    Follow,
    /// `--trace-sample` decides for every decision.
    Ignore,
}

/// The checked trace settings; present only when traces are on.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The collector's OTLP/gRPC endpoint (`http://host:port` or `https://host:port`).
    pub endpoint: String,
    /// For an `https://` endpoint: how its certificate is verified. `None` for `http://`.
    pub tls: Option<TlsSettings>,
    /// Most finished spans waiting for export.
    pub queue: usize,
    /// Share of root decisions (no caller's `traceparent`) sampled; of every decision when
    /// the caller's flag is ignored.
    pub sample: f64,
    /// What the caller's sampled flag decides.
    pub parent_sampling: ParentSampling,
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
        let (authority, secure) = if let Some(rest) = endpoint.strip_prefix("https://") {
            (rest, true)
        } else if let Some(rest) = endpoint.strip_prefix("http://") {
            (rest, false)
        } else {
            return Err(format!(
                "--otlp-endpoint `{}`: expected http://HOST:PORT or https://HOST:PORT \
                 (OTLP over gRPC, plain or over TLS)",
                mask_service_url(&endpoint)
            ));
        };
        if authority.trim_end_matches('/').is_empty() {
            return Err(format!(
                "--otlp-endpoint `{}`: the host is missing",
                mask_service_url(&endpoint)
            ));
        }
        let tls = match (secure, args.ca_file) {
            (true, ca_file) => Some(TlsSettings::new(ca_file.as_deref())?),
            (false, None) => None,
            (false, Some(path)) => {
                return Err(format!(
                    "--otlp-ca-file {}: only used with an https:// --otlp-endpoint, and \
                     `{}` is plain http",
                    path.display(),
                    mask_service_url(&endpoint)
                ))
            }
        };
        Ok(Some(Self {
            endpoint,
            tls,
            queue: args.queue,
            sample: args.sample,
            parent_sampling: args.parent_sampling,
            node: node.into(),
        }))
    }
}

/// How an `https://` collector's certificate is verified: the webpki roots, plus a private CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The PEM text of `--otlp-ca-file`, when given (checked to hold a certificate).
    pub ca_pem: Option<String>,
    /// Where it came from, for messages.
    pub ca_file: Option<PathBuf>,
}

impl TlsSettings {
    /// Reads and checks `ca_file`: it must be readable and hold at least one well-formed
    /// PEM certificate, and nothing else that claims to be one.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, String> {
        let Some(path) = ca_file else {
            return Ok(Self {
                ca_pem: None,
                ca_file: None,
            });
        };
        let named = |why: String| format!("--otlp-ca-file {}: {why}", path.display());
        let text = std::fs::read_to_string(path).map_err(|err| named(err.to_string()))?;
        let certificates = pem_certificates(&text).map_err(named)?;
        if certificates == 0 {
            return Err(named(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        Ok(Self {
            ca_pem: Some(text),
            ca_file: Some(path.to_owned()),
        })
    }
}

/// Counts the well-formed certificates of a PEM text; an error for a certificate block that
/// does not decode (so a damaged file is refused, not half-used).
fn pem_certificates(text: &str) -> Result<usize, String> {
    use rustls_pki_types::pem::{PemObject as _, SectionKind};
    let mut count = 0;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()) {
        match section {
            Ok((SectionKind::Certificate, der)) => {
                // A certificate is a DER SEQUENCE; anything else is not one.
                if der.first() != Some(&0x30) {
                    return Err(format!("certificate {} is not DER", count + 1));
                }
                count += 1;
            }
            Ok(_) => {}
            Err(err) => return Err(format!("unreadable PEM: {err}")),
        }
    }
    Ok(count)
}

fn parse_queue(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{text}` is not a number of spans from 1 to 1000000"
        )),
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
            parent_sampling: ParentSampling::Follow,
            ca_file: None,
            queue: DEFAULT_QUEUE,
        }
    }

    #[test]
    fn traces_are_off_without_an_endpoint() {
        assert_eq!(TraceSettings::from_args(args(None), "n"), Ok(None));
        assert_eq!(TraceSettings::from_args(args(Some(" ")), "n"), Ok(None));
    }

    #[test]
    fn an_endpoint_is_http_or_https() {
        let on = TraceSettings::from_args(args(Some("http://collector:4317")), "node-a")
            .expect("valid")
            .expect("on");
        assert_eq!(on.endpoint, "http://collector:4317");
        assert_eq!(on.tls, None);
        assert_eq!(on.queue, DEFAULT_QUEUE);
        assert_eq!(&*on.node, "node-a");
        let secure = TraceSettings::from_args(args(Some("https://collector:4317")), "n")
            .expect("valid")
            .expect("on");
        assert_eq!(
            secure.tls,
            Some(TlsSettings {
                ca_pem: None,
                ca_file: None
            })
        );
        for bad in [
            "grpc://collector:4317",
            "collector:4317",
            "http://",
            "https://",
        ] {
            assert!(
                TraceSettings::from_args(args(Some(bad)), "n").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate_and_go_with_https() {
        let dir = std::env::temp_dir().join(format!("spillway-otlp-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/otlp-tls/ca.pem"
        );
        let with = |endpoint: &str, path: &Path| {
            let mut args = args(Some(endpoint));
            args.ca_file = Some(path.to_owned());
            TraceSettings::from_args(args, "n")
        };
        let on = with("https://127.0.0.1:4317", Path::new(fixture))
            .expect("valid")
            .expect("on");
        let tls = on.tls.expect("tls");
        assert!(tls.ca_pem.expect("pem").contains("BEGIN CERTIFICATE"));

        let err = with("http://127.0.0.1:4317", Path::new(fixture)).expect_err("plain http");
        assert!(
            err.contains("--otlp-ca-file") && err.contains("https"),
            "{err}"
        );
        let missing = dir.join("missing.pem");
        let err = with("https://c:4317", &missing).expect_err("missing");
        assert!(err.contains("missing.pem"), "{err}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "just text\n").expect("write");
        let err = with("https://c:4317", &empty).expect_err("no certificate");
        assert!(err.contains("no PEM certificate"), "{err}");
        let broken = dir.join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = with("https://c:4317", &broken).expect_err("broken");
        assert!(err.contains("broken.pem"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ratios_lie_between_zero_and_one() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("x").is_err());
    }
}
