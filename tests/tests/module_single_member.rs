//! `[cluster] single_member_keys = true` over three SoftHSMv2 tokens: a token key that cannot
//! be copied to the other members (asked not extractable; an Ed25519 key, which SoftHSMv2
//! cannot wrap) is kept on the member that made it instead of refused. Every call on it goes to
//! that member (even drained: no other has it), it is found and signs in a later engine (a
//! restart, which learns where it lives when the members are brought level at login), and
//! SoftHSMv2's own module lists it on one token only. Keys that can travel still reach all
//! three, and destroying a kept key removes it from its member.

use std::process::Command;

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use cryptoki_sys::*;
use hsmpool_engine::cluster::ceremony::wrap_key_ceremony as ceremony;
use hsmpool_engine::cluster::DEFAULT_WRAP_KEY_LABEL;
use hsmpool_engine::config::Config;
use hsmpool_engine::types::SlotId;
use hsmpool_engine::{Attr, Engine, Mechanism};
use hsmpool_tests::engine::{ec_pair, find, sign, value, P256};
use hsmpool_tests::require_tool;
use hsmpool_tests::softhsm::{SoftHsmTokens, SOFTHSM};

const SO_PIN: &str = "12345678";
const PIN: &str = "87654321";

/// How many objects labelled `label` each token holds, as SoftHSMv2's own module lists them.
fn on_each_token(tokens: &SoftHsmTokens, label: &str) -> Vec<usize> {
    let tool = require_tool("pkcs11-tool");
    tokens
        .labels
        .iter()
        .map(|token| {
            let out = Command::new(&tool)
                .args(["--module", SOFTHSM, "--token-label", token, "--login"])
                .args(["--pin", PIN, "--list-objects"])
                .env("SOFTHSM2_CONF", &tokens.conf)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}");
            text.matches(&format!("label:      {label}\n")).count()
        })
        .collect()
}

/// The members whose operation count grew while `f` ran.
fn served_by(e: &Engine, f: impl FnOnce()) -> Vec<usize> {
    let before: Vec<u64> = e.member_status().iter().map(|m| m.ops).collect();
    f();
    let after: Vec<u64> = e.member_status().iter().map(|m| m.ops).collect();
    (0..before.len())
        .filter(|i| after[*i] > before[*i])
        .collect()
}

#[test]
fn a_key_that_cannot_travel_is_kept_on_its_member_and_used_there() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = SoftHsmTokens::create(dir.path(), 3, "single", SO_PIN, PIN);
    // Read by SoftHSMv2 at C_Initialize; this test binary has no other test.
    std::env::set_var("SOFTHSM2_CONF", &tokens.conf);
    let text = String::from("[cluster]\nsingle_member_keys = true\n") + &tokens.members_toml();
    let cfg = Config::parse(&text, "three SoftHSMv2 tokens").unwrap();
    let members = hsmpool_engine::backend::open_members(&cfg).unwrap();
    ceremony(&members, DEFAULT_WRAP_KEY_LABEL, SO_PIN.as_bytes()).unwrap();
    drop(members);

    let e = Engine::new(cfg.clone()).unwrap();
    let s = e
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, CKU_USER, PIN.as_bytes(), None).unwrap();

    // Asked not to be extractable: it cannot be wrapped to the others, so it stays where made.
    let (public, private) = e
        .generate_key_pair(
            s,
            Mechanism::plain(CKM_EC_KEY_PAIR_GEN),
            vec![
                Attr::bool(CKA_TOKEN, true),
                Attr::bytes(CKA_EC_PARAMS, &P256),
                Attr::bool(CKA_VERIFY, true),
                Attr::bytes(CKA_LABEL, b"kept"),
            ],
            vec![
                Attr::bool(CKA_TOKEN, true),
                Attr::bool(CKA_SIGN, true),
                Attr::bool(CKA_EXTRACTABLE, false),
                Attr::bytes(CKA_LABEL, b"kept"),
            ],
        )
        .expect("kept on its member, not refused");
    assert_eq!(value(&e, s, private, CKA_EXTRACTABLE), [0]);
    // What the token set when it made the key, from its one member.
    assert_eq!(value(&e, s, private, CKA_LOCAL), [1]);
    assert_eq!(value(&e, s, private, CKA_NEVER_EXTRACTABLE), [1]);
    let held = on_each_token(&tokens, "kept");
    assert_eq!(held.iter().filter(|n| **n == 2).count(), 1, "{held:?}");
    assert_eq!(held.iter().sum::<usize>(), 2, "{held:?}");
    let home = held.iter().position(|n| *n == 2).unwrap();

    // Every signature is made there, and verifies; also with that member drained (the
    // balancer's choice), since no other member has the key.
    let point = value(&e, s, public, CKA_EC_POINT);
    let verifier = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point[2..]);
    let sign_some = |e: &Engine, s, k, n: u32| {
        for i in 0..n {
            let msg = format!("kept key, message {i}");
            let sig = sign(e, s, CKM_ECDSA_SHA256, k, msg.as_bytes());
            verifier.verify(msg.as_bytes(), &sig).unwrap();
        }
    };
    assert_eq!(served_by(&e, || sign_some(&e, s, private, 30)), [home]);
    e.drain_member(home, true).unwrap();
    assert_eq!(served_by(&e, || sign_some(&e, s, private, 5)), [home]);
    e.drain_member(home, false).unwrap();

    // SoftHSMv2 cannot wrap an EdDSA private key: kept too, where it was made.
    let (_, ed) = e
        .generate_key_pair(
            s,
            Mechanism::plain(CKM_EC_EDWARDS_KEY_PAIR_GEN),
            vec![
                Attr::bool(CKA_TOKEN, true),
                Attr::bytes(CKA_EC_PARAMS, &[0x06, 0x03, 0x2b, 0x65, 0x70]),
                Attr::bytes(CKA_LABEL, b"kept ed25519"),
            ],
            vec![
                Attr::bool(CKA_TOKEN, true),
                Attr::bool(CKA_SIGN, true),
                Attr::bytes(CKA_LABEL, b"kept ed25519"),
            ],
        )
        .expect("an Ed25519 key kept on its member");
    let ed_home = on_each_token(&tokens, "kept ed25519");
    assert_eq!(ed_home.iter().sum::<usize>(), 2, "{ed_home:?}");
    let ed_sig = sign(&e, s, CKM_EDDSA, ed, b"ed25519");
    assert_eq!(ed_sig.len(), 64);

    // A key that can travel still reaches every member.
    ec_pair(&e, s, b"everywhere", true);
    assert_eq!(on_each_token(&tokens, "everywhere"), [2, 2, 2]);
    e.logout(s).unwrap();
    drop(e);

    // A later engine learns at login where the kept key lives, finds it and signs with it
    // there; the other members are not given it.
    let e = Engine::new(cfg).unwrap();
    let s = e
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, CKU_USER, PIN.as_bytes(), None).unwrap();
    let found = find(&e, s, vec![Attr::bytes(CKA_LABEL, b"kept")]);
    let private = *found
        .iter()
        .find(|o| value(&e, s, **o, CKA_CLASS) == CKO_PRIVATE_KEY.to_ne_bytes())
        .expect("the kept private key is found");
    assert_eq!(served_by(&e, || sign_some(&e, s, private, 10)), [home]);
    // (Its public half may be copied to the others when they are brought level: it can
    // travel. The private half never does: no other token holds both.)
    let held = on_each_token(&tokens, "kept");
    assert_eq!(held[home], 2, "{held:?}");
    assert!(
        held.iter().enumerate().all(|(i, n)| i == home || *n <= 1),
        "{held:?}"
    );

    // Destroyed: gone from its member.
    e.destroy_object(s, private).unwrap();
    assert!(find(&e, s, vec![Attr::bytes(CKA_LABEL, b"kept")])
        .iter()
        .all(|o| value(&e, s, *o, CKA_CLASS) != CKO_PRIVATE_KEY.to_ne_bytes()));
    e.logout(s).unwrap();
    drop(e);
    let held = on_each_token(&tokens, "kept");
    assert_eq!(
        held[home], 1,
        "only its public half is left there: {held:?}"
    );
}
