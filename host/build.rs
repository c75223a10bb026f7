//! Builds the bundled plugins (embedded in the binary) and the test fixture
//! plugins for `wasm32-wasip2`, so a fresh clone's `cargo build` / `cargo test`
//! needs no manual step.
//!
//! The inner cargo uses its own target dir (`target/wasm-plugins`): sharing
//! the outer one would deadlock on cargo's build-directory lock. It inherits
//! the outer jobserver through `CARGO_MAKEFLAGS`, so the two cargos together
//! never run more jobs than asked for.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Plugins embedded in the `wasmhook` binary (`builtin:<name>`).
const BUNDLED: &[&str] = &[
    "helloclient-lead",
    "helloclient-chatlog",
    "event-filter",
    "platform-sources",
    "onehash-message",
    "onwebchat",
    "convosphere",
    "ohallo",
];
/// Components only the tests use (hostile behaviour, raw WIT, wrong world).
const FIXTURES: &[&str] = &["fixture-hostile", "fixture-raw-wit", "fixture-wrong-world"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace root");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("wasm-plugins"))
        .unwrap_or_else(|| out_dir.join("wasm-plugins"));

    for watched in [
        "wit",
        "guest-sdk",
        "plugins",
        "tests/fixtures",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    ensure_wasm_target();

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--profile", "plugin", "--target", "wasm32-wasip2"])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"));
    for package in BUNDLED.iter().chain(FIXTURES) {
        cmd.args(["-p", package]);
    }
    // Flags meant for the host build (coverage, sanitizers, clippy's wrapper)
    // must not leak into the wasm build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CLIPPY_ARGS",
        "CLIPPY_CONF_DIR",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd
        .output()
        .expect("failed to run cargo for the wasm plugins");
    if !output.status.success() {
        panic!(
            "building the wasm32-wasip2 plugins failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let built = target_dir.join("wasm32-wasip2").join("plugin");
    let fixtures_dir = out_dir.join("fixtures");
    std::fs::create_dir_all(&fixtures_dir).expect("create the fixtures dir");
    for package in BUNDLED {
        copy(&built, package, &out_dir);
    }
    for package in FIXTURES {
        copy(&built, package, &fixtures_dir);
    }
    println!(
        "cargo:rustc-env=WASMHOOK_FIXTURES_DIR={}",
        fixtures_dir.display()
    );
}

/// rustup installs a toolchain file's `targets` only when it installs the
/// toolchain itself; a machine that already had the pinned toolchain lacks
/// `wasm32-wasip2`. Add it here (when rustup is there) so a fresh clone's
/// `cargo run` / `cargo test` still work, and say so.
fn ensure_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = sysroot
        .as_ref()
        .is_some_and(|root| root.join("lib/rustlib/wasm32-wasip2").is_dir());
    if installed {
        return;
    }
    // The toolchain rustup resolved for this build (rust-toolchain.toml).
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok();
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", "wasm32-wasip2"]);
    if let Some(t) = &toolchain {
        cmd.args(["--toolchain", t]);
    }
    match cmd.output() {
        Ok(o) if o.status.success() => println!(
            "cargo:warning=installed the wasm32-wasip2 target with rustup (the bundled plugins are built for it)"
        ),
        Ok(o) => println!(
            "cargo:warning=`rustup target add wasm32-wasip2` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => println!(
            "cargo:warning=the wasm32-wasip2 target is missing and rustup could not be run ({e}); install the target by hand"
        ),
    }
}

/// Copies `<package>.wasm` (named with underscores by cargo) into `dest` under
/// its package name, so the code refers to `helloclient-lead.wasm`.
fn copy(built: &Path, package: &str, dest: &Path) {
    let from = built.join(format!("{}.wasm", package.replace('-', "_")));
    let to = dest.join(format!("{package}.wasm"));
    std::fs::copy(&from, &to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}
