#!/usr/bin/env bash
# Runs Spillway's whole test suite on a fresh machine: installs what the tests need when it is
# missing, then runs every test in the workspace. This is the command the README gives and the
# one CI runs (after fmt and clippy).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
ensure_test_deps

# PostgreSQL was just installed if missing: tests that need it must not skip here.
export SPILLWAY_REQUIRE_POSTGRES=1
# Likewise Chromium and the e2e packages: the dashboard's browser test must run, not skip.
export SPILLWAY_REQUIRE_BROWSER=1
# And nginx (tests/nginx.rs runs the shipped configs for real).
export SPILLWAY_REQUIRE_NGINX=1

# A whole-suite run builds every test binary once: incremental state would only add disk
# (about 2.5 GB of a fresh run's 6 GB), so it is off unless the caller asks for it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test --workspace --all-targets "$@"
