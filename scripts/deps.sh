#!/usr/bin/env bash
# Installs the system packages the tests and benchmarks use, only when they are missing.
# Sourced by scripts/test.sh and the bench/ scripts; Debian packages through apt-get.

apt_updated=0

# need BINARY PACKAGE: installs PACKAGE with apt-get unless BINARY is already on PATH.
need() {
  local bin=$1 pkg=$2
  if command -v "$bin" >/dev/null 2>&1; then
    return 0
  fi
  install_pkg "$bin" "$pkg"
}

# install_pkg WHAT PACKAGE: installs PACKAGE (which provides WHAT) with apt-get.
install_pkg() {
  local bin=$1 pkg=$2
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: '$bin' is missing and apt-get is not available; install package '$pkg'" >&2
    return 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  if [ "$apt_updated" -eq 0 ]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  echo "installing $pkg (for $bin)" >&2
  # The tests start their own servers on free ports; keep the packages' own services (nginx
  # on :80, redis on :6379, postgresql's cluster on :5432) from starting, which also avoids
  # install failures on machines without an init system. policy-rc.d is Debian's switch for that.
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$guard" >/dev/null
    $sudo chmod +x "$guard"
  fi
  local status=0
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null || status=$?
  if [ -n "$guard" ]; then $sudo rm -f "$guard"; fi
  return "$status"
}

# need_postgres: installs Debian's `postgresql` unless its server binaries are there. Debian
# keeps initdb/pg_ctl/postgres in /usr/lib/postgresql/<major>/bin, off PATH; the tests find
# them there (crates/spillway-testkit/src/postgres.rs) and run their own clusters, so the
# cluster the package creates is never started (policy-rc.d, as for redis and nginx).
need_postgres() {
  if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    return 0
  fi
  install_pkg initdb postgresql
}

# need_browser_test: what the dashboard's browser test (crates/spillway-server/tests/ui.rs)
# needs: Debian's Chromium, and playwright-core from npm (e2e/package-lock.json) to drive it.
# Playwright is never allowed to download a browser of its own.
need_browser_test() {
  if [ ! -x /usr/bin/chromium ]; then
    install_pkg chromium chromium
  fi
  need node nodejs
  need npm npm
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "${major:-0}" -lt 20 ]; then
    echo "error: the browser test needs Node.js 20 or newer (playwright-core); found $(node --version 2>/dev/null || echo none)" >&2
    return 1
  fi
  if [ ! -d e2e/node_modules/playwright-core ] || e2e_modules_stale; then
    echo "installing the browser test's npm packages (e2e/)" >&2
    (cd e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# e2e_modules_stale: true when e2e/node_modules was installed from another lock file than
# e2e/package-lock.json (npm records what it installed in node_modules/.package-lock.json).
e2e_modules_stale() {
  [ -f e2e/node_modules/.package-lock.json ] || return 0
  ! node -e '
    const fs = require("fs");
    const pick = (file) => {
      const packages = JSON.parse(fs.readFileSync(file, "utf8")).packages || {};
      const out = {};
      for (const [path, p] of Object.entries(packages)) {
        if (path !== "") out[path] = [p.version, p.integrity || p.resolved || ""];
      }
      return JSON.stringify(Object.keys(out).sort().map((k) => [k, out[k]]));
    };
    process.exit(pick("e2e/package-lock.json") === pick("e2e/node_modules/.package-lock.json") ? 0 : 1);
  '
}

# What building the workspace needs besides the Rust toolchain: libclang, with which the
# Redis module's bindings (crates/spillway-redis-module, through the redis-module crate's
# bindgen) are generated at build time.
ensure_build_deps() {
  command -v cargo >/dev/null 2>&1 || { echo "error: cargo (Rust toolchain) is required" >&2; return 1; }
  # libclang.so* or libclang-<version>.so*, not libclang-cpp (which bindgen cannot use), and
  # clang's own headers (stddef.h), which the runtime-only libclang1-<version> lacks.
  if ! { compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
      || compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null \
      || compgen -G '/usr/lib/*/libclang.so*' >/dev/null \
      || compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null; } \
    || ! compgen -G '/usr/lib/llvm-*/lib/clang/*/include/stddef.h' >/dev/null; then
    install_pkg libclang libclang-dev
  fi
}

# What `scripts/test.sh` needs besides the Rust toolchain.
ensure_test_deps() {
  ensure_build_deps
  # tests/nginx.rs runs real nginx (Debian's package has the auth_request module).
  PATH="$PATH:/usr/sbin" need nginx nginx
  # The Redis store's tests start their own redis-server processes and clusters.
  need redis-server redis-server
  need redis-cli redis-tools
  # The Sentinel store's tests start a master, a replica and three redis-sentinel processes.
  need redis-sentinel redis-sentinel
  # The catalog's conformance suite starts its own PostgreSQL servers.
  need_postgres
  # The dashboard's test runs in a real headless Chromium.
  need_browser_test
}
