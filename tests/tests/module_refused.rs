//! A member whose token refuses the application's PIN (here: a SoftHSMv2 token whose user PIN
//! was changed behind our back) is taken out with the reason in its status, and is never asked
//! again with the same credentials: the login calls that reach its module are counted by the
//! fault shim, and a vendor token counts each wrong one toward its lockout. The other members
//! serve; the application's next login tries it once more.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::process::Command;
use std::time::Duration;

use cryptoki_sys::*;
use hsmpool_engine::cluster::Health;
use hsmpool_engine::config::Config;
use hsmpool_engine::types::{OpKind, SlotId};
use hsmpool_engine::{Engine, Mechanism};
use hsmpool_tests::engine::ec_pair;
use hsmpool_tests::require_tool;
use hsmpool_tests::softhsm::{build_fault_shim, SoftHsmTokens, SOFTHSM};

const SO_PIN: &str = "12345678";
const PIN: &str = "87654321";

#[test]
fn a_member_that_refuses_the_pin_is_out_with_its_reason_and_never_asked_again() {
    let tool = require_tool("pkcs11-tool");
    let dir = tempfile::tempdir().unwrap();
    let shim = build_fault_shim(dir.path());
    let tokens = SoftHsmTokens::create(dir.path(), 3, "refusing", SO_PIN, PIN);
    // Read by SoftHSMv2 and the shim in this process; this test binary has no other test.
    std::env::set_var("SOFTHSM2_CONF", &tokens.conf);
    std::env::set_var("HSMPOOL_SHIM_TARGET", SOFTHSM);
    // Member 2's user PIN changes behind our back.
    let changed = Command::new(&tool)
        .args(["--module", SOFTHSM, "--token-label", &tokens.labels[2]])
        .args([
            "--login",
            "--pin",
            PIN,
            "--change-pin",
            "--new-pin",
            "other-pin-1",
        ])
        .env("SOFTHSM2_CONF", &tokens.conf)
        .output()
        .unwrap();
    assert!(
        changed.status.success(),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    let cfg = Config::parse(
        &format!(
            "[cluster]\nmin_replicas = 1\n{}",
            tokens.members_toml_via(&shim)
        ),
        "three SoftHSMv2 tokens, one with another PIN",
    )
    .unwrap();
    let e = Engine::new(cfg).unwrap();
    let lib = unsafe { libloading::Library::new(&shim) }.unwrap();
    let logins = *unsafe {
        lib.get::<unsafe extern "C" fn(u64) -> std::ffi::c_long>(b"hsmpool_shim_logins\0")
    }
    .unwrap();
    let logins_on_2 = || unsafe { logins(tokens.slots[2]) };

    let s = e
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, CKU_USER, PIN.as_bytes(), None)
        .expect("the application's PIN is right on the first members");
    let status = e.member_status();
    assert_eq!(status[2].health, Health::Refused, "{status:?}");
    let why = status[2].refused.clone().unwrap_or_default();
    assert!(
        why.contains("refused the application's login") && why.contains("0xa0"),
        "{why}"
    );
    assert!(status[..2].iter().all(|m| m.health == Health::Up));

    // Ten probe periods later it has not been asked again.
    let asked = logins_on_2();
    assert!(
        (1..=3).contains(&asked),
        "{asked} logins at the application's login"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(logins_on_2(), asked, "the refusing member was asked again");
    assert_eq!(e.member_status()[2].health, Health::Refused);

    // The others serve.
    let (_, private) = ec_pair(&e, s, b"served", false);
    e.op_init(s, OpKind::Sign, Mechanism::plain(CKM_ECDSA_SHA256), private)
        .unwrap();
    let mut sig = [0u8; 64];
    assert_eq!(
        e.op_single(s, OpKind::Sign, b"by the others", Some(&mut sig))
            .unwrap(),
        64
    );

    // The next login tries it once more, and it is out again.
    e.logout(s).unwrap();
    e.login(s, CKU_USER, PIN.as_bytes(), None).unwrap();
    let again = logins_on_2();
    assert!(again > asked && again <= asked + 3, "{asked} then {again}");
    assert_eq!(e.member_status()[2].health, Health::Refused);
}
