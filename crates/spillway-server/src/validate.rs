//! `spillway validate FILE`: check a policy without starting anything.
//!
//! Meant for CI and pre-commit hooks: exit status 0 and a one-line summary on stdout when the
//! policy is valid; exit status 1 and every problem on stderr, one per line in the form
//! `file:line:col: field.path: message`, when it is not.

use crate::cli::ValidateArgs;
use spillway_core::policy::Policy;
use std::process::ExitCode;

/// Runs the subcommand.
pub fn main(args: &ValidateArgs) -> ExitCode {
    match Policy::from_file(&args.file) {
        Ok(policy) => {
            println!(
                "ok: {} is valid ({} limits, {} tiers, {} routes)",
                args.file.display(),
                policy.limits().count(),
                policy.tiers().count(),
                policy.routes().count(),
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            for line in err.to_string().lines() {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}
