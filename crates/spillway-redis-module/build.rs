//! Bakes the digest of the Lua library's code into the module (`SPILLWAY.VERSION`), so a
//! store only sends checks to a module built from the same rules as the Lua it refunds with.
//! The files and their order are those of `spillway-redis/src/script.rs` (`library()`); a
//! test in `spillway-redis/tests/module.rs` asserts the two digests agree.

use std::fs;
use std::path::Path;

const FILES: [&str; 9] = [
    "common.lua",
    "token_bucket.lua",
    "gcra.lua",
    "fixed_window.lua",
    "sliding_window.lua",
    "sliding_log.lua",
    "leaky_bucket.lua",
    "check.lua",
    "refund.lua",
];

fn main() {
    let lua = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spillway-redis/lua");
    let mut digest = sha1_smol::Sha1::new();
    for name in FILES {
        let path = lua.join(name);
        println!("cargo:rerun-if-changed={}", path.display());
        let code = fs::read(&path)
            .unwrap_or_else(|e| panic!("reading the Lua code at {}: {e}", path.display()));
        digest.update(&code);
    }
    println!("cargo:rustc-env=SPILLWAY_LUA_DIGEST={}", digest.digest());
}
