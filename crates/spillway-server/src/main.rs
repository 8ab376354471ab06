//! The `spillway` binary. Parsing and dispatch only; each subcommand lives in the library so
//! it can be read (and tested) on its own.

use clap::Parser;
use spillway_server::cli::{Cli, Command};
use std::process::ExitCode;

// Every decision allocates a few short-lived buffers (keys, headers, the body) on whichever
// worker thread runs it; mimalloc's thread-local free lists serve those far faster than the
// system allocator, which spent about a tenth of the server's time under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => spillway_server::serve::main(*args),
        Command::Validate(args) => spillway_server::validate::main(&args),
        Command::Check(args) => spillway_server::client::main(&args),
        Command::Catalog(args) => spillway_server::catalog::cli::main(args),
        Command::Decisions(args) => spillway_server::telemetry::decision_log::query::main(&args),
    }
}
