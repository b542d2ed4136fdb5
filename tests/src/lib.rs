//! Helpers for the integration tests: where the built module is, fresh data directories, a
//! raw loader for calling the C ABI exactly as a C program would, test certificates made with
//! openssl ([`pki`]) and `hsmpool-hsmd` as a child process ([`hsmd`]).
//!
//! The tests call the C ABI through raw function pointers, so this crate (test code only) has
//! `unsafe` blocks; each states why the call is sound.

use std::path::{Path, PathBuf};

pub mod conformance;
pub mod daemons;
pub mod engine;
pub mod hsmd;
pub mod mixed;
pub mod nss;
pub mod pki;
pub mod raw;
pub mod softhsm;
pub mod vendor;

/// The directory cargo put this test binary's artifacts in (`target/<profile>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let mut dir = exe
        .parent()
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The built PKCS #11 module: `HSMPOOL_MODULE` if set, else `target/<profile>/libhsmpool_pkcs11.so`.
/// Panics with a clear message if it has not been built (`cargo build --workspace` builds it).
pub fn module_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HSMPOOL_MODULE") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("libhsmpool_pkcs11.so");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// A binary of this workspace (e.g. `hsmpool`), from `target/<profile>`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// Fail (not skip) when a tool a test needs is not installed.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("required tool `{name}` is not installed (.ci/run installs it)");
}

/// A configuration file for an embedded member in `dir`, with fast PIN hashing for tests.
pub fn write_test_config(dir: &Path) -> PathBuf {
    let conf = dir.join("hsmpool.toml");
    let text = format!(
        "[[member]]\nkind = \"embedded\"\ndata_dir = \"{}\"\npin_iterations = 1000\n",
        dir.join("hsm0").display()
    );
    std::fs::write(&conf, text).expect("the temp dir is writable");
    conf
}

/// The seed of a fault test: `HSMPOOL_FAULT_SEED` when set (to replay a run), else one drawn
/// from the clock. The test prints it.
pub fn fault_seed() -> u64 {
    std::env::var("HSMPOOL_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        })
}
