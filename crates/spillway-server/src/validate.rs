//! `spillway validate [FILE] [--envoy-config PATH]...`: check a policy and/or an
//! envoyproxy/ratelimit config without starting anything.
//!
//! Meant for CI and pre-commit hooks: exit status 0 and a one-line summary per checked part on
//! stdout when everything is valid; exit status 1 and every problem on stderr, one per line in
//! the form `file:line:col: field.path: message`, when anything is not. Both parts are always
//! checked, so one run reports every problem.

use crate::cli::ValidateArgs;
use crate::config::PolicySource;
use crate::grpc::source::EnvoySource;
use std::process::ExitCode;

/// Runs the subcommand.
pub fn main(args: &ValidateArgs) -> ExitCode {
    let mut valid = true;
    if let Some(file) = &args.file {
        // Read, parsed and checked as `serve` does (seeds of one cluster that disagree on
        // the login refused too, for the whole file: which store a node uses is said when it
        // starts).
        let checked = PolicySource::File(file.clone())
            .load_checked_blocking(false)
            .map_err(|err| err.to_string());
        match checked {
            Ok(policy) => println!(
                "ok: {} is valid ({} limits, {} tiers, {} routes)",
                file.display(),
                policy.limits().count(),
                policy.tiers().count(),
                policy.routes().count(),
            ),
            Err(err) => {
                report(&err);
                valid = false;
            }
        }
    }
    if !args.envoy_config.is_empty() {
        let source = EnvoySource {
            paths: args.envoy_config.clone(),
        };
        match source.load() {
            // Checking nothing is surely a mistake (a wrong directory, or files not named
            // `*.yaml` / `*.yml`), even though a server may start on an empty directory.
            Ok((_, files)) if files.is_empty() => {
                report(&format!(
                    "{}: no Envoy config files found (a directory's files must be named *.yaml or *.yml)",
                    args.envoy_config
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                valid = false;
            }
            Ok((config, files)) => {
                let paths: Vec<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
                let domains: Vec<String> = config
                    .domain_names()
                    .iter()
                    .map(|d| format!("`{d}`"))
                    .collect();
                println!(
                    "ok: the Envoy config is valid ({}: {}; {} {}, {})",
                    count(paths.len(), "file"),
                    paths.join(", "),
                    count(domains.len(), "domain"),
                    domains.join(", "),
                    count(config.limit_count(), "limit"),
                );
            }
            Err(err) => {
                report(&err.to_string());
                valid = false;
            }
        }
    }
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `n` things, singular or plural.
fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

fn report(problems: &str) {
    for line in problems.lines() {
        eprintln!("{line}");
    }
}
