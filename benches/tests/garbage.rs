//! A module whose outputs are wrong cannot score: here the token's HMAC key (found by the
//! harness's label) is not the value the harness imports, so every MAC the module returns is
//! "garbage" to the harness's independent aws-lc-rs check. The step must be reported FAILED and
//! the run must exit non-zero.
//!
//! This file holds one test on purpose: it sets `HSMPOOL_CONF` (through `DataDir::prepare`),
//! which is only sound while no other test thread runs in this process.

use std::process::Command;

use cryptoki::object::{Attribute, KeyType, ObjectClass};
use hsmpool_bench::keys;
use hsmpool_bench::report;
use hsmpool_bench::setup::{self, DataDir};
use hsmpool_bench::target::TOKEN_LABEL;

#[test]
fn a_wrong_mac_fails_the_step_and_the_run() {
    let exe = env!("CARGO_BIN_EXE_hsmpool-bench");
    let module = std::path::Path::new(exe).with_file_name(setup::MODULE_FILE);
    assert!(
        module.is_file(),
        "{} is missing: build the workspace first",
        module.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    {
        // The token as the harness would make it, but with an HMAC key of another value.
        let data = DataDir::prepare(Some(&data_dir), "").unwrap();
        let pkcs11 = setup::load(&module).unwrap();
        let (_, session, _) = setup::open_token(&pkcs11, TOKEN_LABEL).unwrap();
        let mut wrong = keys::known_hmac_key();
        wrong[0] ^= 0x80;
        session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Token(true),
                Attribute::Label(keys::LABEL_HMAC.into()),
                Attribute::Value(wrong.to_vec()),
                Attribute::Sign(true),
                Attribute::Verify(true),
            ])
            .unwrap();
        session.logout().unwrap();
        drop(session);
        pkcs11.finalize().unwrap();
        drop(data);
    }
    let out = dir.path().join("out");
    let o = Command::new(exe)
        .args(["--data", data_dir.to_str().unwrap()])
        .args(["--ops", "hmac,sha256", "--threads", "1,2"])
        .args(["--seconds-per-step", "0.02", "--out", out.to_str().unwrap()])
        .env_remove("HSMPOOL_MODULE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the run must fail\n{stdout}\n{stderr}");
    assert!(stdout.contains("found HMAC key"), "{stdout}");
    assert!(
        stdout.contains("differs from aws-lc-rs HMAC-SHA256 under the known key"),
        "{stdout}"
    );
    assert!(stderr.contains("FAILED"), "{stderr}");
    let rows =
        report::parse_csv(&std::fs::read_to_string(out.join("results.csv")).unwrap()).unwrap();
    for r in &rows {
        let want = if r.module == "hsmpool" && r.op == "hmac" {
            "failed"
        } else {
            "ok"
        };
        assert_eq!(r.status, want, "{r:?}");
    }
    assert!(rows
        .iter()
        .any(|r| r.op == "sha256" && r.module == "hsmpool"));
}
