//! SoftHSMv2 tokens standing in for a vendor's HSMs: a token directory of their own (named to
//! SoftHSMv2 by `SOFTHSM2_CONF`), tokens initialised with `softhsm2-util`, and the module
//! configuration that makes them the members of one hsmpool token (`kind = "module"`, each
//! chosen by serial number so an application's `C_InitToken` may relabel them).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::require_tool;

/// Debian's SoftHSMv2 module.
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Tokens in a token directory.
pub struct SoftHsmTokens {
    /// SoftHSMv2's configuration file (`SOFTHSM2_CONF`).
    pub conf: PathBuf,
    /// Each token's label.
    pub labels: Vec<String>,
    /// Each token's serial number.
    pub serials: Vec<String>,
    /// Each token's slot id.
    pub slots: Vec<u64>,
}

impl SoftHsmTokens {
    /// `n` tokens under `dir`, labelled `{prefix}-{i}`, with these PINs. Fails (never skips)
    /// when SoftHSMv2 is not installed.
    pub fn create(dir: &Path, n: usize, prefix: &str, so_pin: &str, pin: &str) -> SoftHsmTokens {
        let util = require_tool("softhsm2-util");
        assert!(
            Path::new(SOFTHSM).exists(),
            "{SOFTHSM} is missing (apt-get install softhsm2)"
        );
        let tokens = dir.join("softhsm-tokens");
        std::fs::create_dir_all(&tokens).expect("the token directory can be made");
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("softhsm2.conf written");
        let mut labels = Vec::new();
        let mut serials = Vec::new();
        for i in 0..n {
            let label = format!("{prefix}-{i}");
            let out = Command::new(&util)
                .env("SOFTHSM2_CONF", &conf)
                .args(["--init-token", "--free", "--label", &label])
                .args(["--so-pin", so_pin, "--pin", pin])
                .output()
                .expect("softhsm2-util runs");
            assert!(
                out.status.success(),
                "softhsm2-util --init-token: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            labels.push(label);
        }
        let shown = Command::new(&util)
            .env("SOFTHSM2_CONF", &conf)
            .arg("--show-slots")
            .output()
            .expect("softhsm2-util runs");
        let text = String::from_utf8_lossy(&shown.stdout);
        // Each slot prints "Slot N", then its token's "Serial number: ..." and "Label: ...".
        let (mut slot, mut serial) = (None, None);
        let mut by_label = std::collections::HashMap::new();
        for line in text.lines().map(str::trim) {
            if let Some(n) = line
                .strip_prefix("Slot ")
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                slot = Some(n);
            } else if let Some(v) = line.strip_prefix("Serial number:") {
                serial = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("Label:") {
                if let (Some(s), Some(n)) = (serial.take(), slot) {
                    by_label.insert(v.trim().to_owned(), (s, n));
                }
            }
        }
        let mut slots = Vec::new();
        for l in &labels {
            let (s, n) = by_label
                .get(l)
                .unwrap_or_else(|| panic!("no serial number for {l} in:\n{text}"));
            serials.push(s.clone());
            slots.push(*n);
        }
        SoftHsmTokens {
            conf,
            labels,
            serials,
            slots,
        }
    }

    /// The `[[member]]` tables naming these tokens by serial number.
    pub fn members_toml(&self) -> String {
        self.members_toml_via(Path::new(SOFTHSM))
    }

    /// The same, reaching SoftHSMv2 through `module` (the fault shim, which forwards to it).
    pub fn members_toml_via(&self, module: &Path) -> String {
        self.serials
            .iter()
            .map(|s| {
                format!(
                    "[[member]]\nkind = \"module\"\npath = \"{}\"\ntoken_serial = \"{s}\"\n",
                    module.display()
                )
            })
            .collect()
    }
}

/// Compile the fault-injecting shim module (tests/c/fault_shim.c) into `dir`: a PKCS #11
/// module that forwards to `HSMPOOL_SHIM_TARGET` and injects the faults its
/// `hsmpool_shim_control` asks for. Fails (never skips) without gcc.
pub fn build_fault_shim(dir: &Path) -> PathBuf {
    let gcc = require_tool("gcc");
    let out = dir.join("libfault_shim.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/fault_shim.c");
    let r = Command::new(gcc)
        .args([
            "-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-shared", "-fPIC",
        ])
        .arg("-I/usr/include/p11-kit-1")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .args(["-ldl", "-lpthread"])
        .output()
        .expect("gcc runs");
    assert!(
        r.status.success() && r.stderr.is_empty(),
        "gcc: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    out
}
