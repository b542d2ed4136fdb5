//! A vendor's PKCS #11 module as a member (`kind = "module"`), with SoftHSMv2 standing in for
//! the vendor: the engine over one SoftHSMv2 token makes token keys, signs single-part (the
//! module's own hash-and-sign mechanism) and multi-part (the engine hashes; the module gets
//! `CKM_ECDSA` over the digest, `CKM_RSA_PKCS` over a DigestInfo), and the signatures verify
//! with aws-lc-rs; the keys are then seen on the token by SoftHSMv2's own tools, not through us.

use std::process::Command;

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use cryptoki_sys::*;
use hsmpool_engine::cloudhsm::CKM_CLOUDHSM_AES_GCM;
use hsmpool_engine::config::Config;
use hsmpool_engine::types::{ObjectHandle, OpKind, SessionHandle, SlotId};
use hsmpool_engine::{Attr, Engine, Mechanism};
use hsmpool_tests::engine::{ec_pair, value};
use hsmpool_tests::require_tool;
use hsmpool_tests::softhsm::{SoftHsmTokens, SOFTHSM};

const SO_PIN: &str = "12345678";
const PIN: &str = "87654321";
const LABEL: &str = "hsmpool-module-0";

fn sign(
    e: &Engine,
    s: SessionHandle,
    k: ObjectHandle,
    mech: CK_MECHANISM_TYPE,
    parts: &[&[u8]],
) -> Vec<u8> {
    e.op_init(s, OpKind::Sign, Mechanism::plain(mech), k)
        .unwrap();
    let mut out = vec![0u8; 512];
    let n = if let [one] = parts {
        e.op_single(s, OpKind::Sign, one, Some(&mut out)).unwrap()
    } else {
        for p in parts {
            e.op_update(s, OpKind::Sign, p, None).unwrap();
        }
        e.op_final(s, OpKind::Sign, Some(&mut out)).unwrap()
    };
    out.truncate(n);
    out
}

#[test]
fn a_softhsm2_token_is_a_member_keys_made_through_us_live_on_it() {
    let tool = require_tool("pkcs11-tool");
    let dir = tempfile::tempdir().unwrap();
    let tokens = SoftHsmTokens::create(dir.path(), 1, "hsmpool-module", SO_PIN, PIN);
    assert_eq!(tokens.labels, [LABEL]);
    let conf = tokens.conf.clone();
    // Read by SoftHSMv2 at C_Initialize; this test binary has no other test.
    std::env::set_var("SOFTHSM2_CONF", &conf);

    let cfg = Config::parse(
        &format!(
            "[[member]]\nkind = \"module\"\npath = \"{SOFTHSM}\"\ntoken_label = \"{LABEL}\"\n"
        ),
        "module test",
    )
    .unwrap();
    let e = Engine::new(cfg).unwrap();
    assert!(e.member_status()[0].describe.contains(LABEL));
    let s = e
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, CKU_USER, PIN.as_bytes(), None).unwrap();

    // The token offers what the member can do: SoftHSMv2's own mechanisms, and the
    // hash-and-sign ones whose raw mechanism it has (we hash); not AWS CloudHSM's vendor ones.
    let list = e.mechanism_list(SlotId(0)).unwrap();
    for m in [
        CKM_ECDSA_SHA256,
        CKM_SHA256_RSA_PKCS,
        CKM_RSA_PKCS_PSS,
        CKM_AES_GCM,
        CKM_SHA256,
    ] {
        assert!(list.contains(&m), "{m:#x} offered");
    }
    assert!(!list.contains(&CKM_CLOUDHSM_AES_GCM));
    let rsa_sizes = e
        .mechanism_info(SlotId(0), CKM_RSA_PKCS_KEY_PAIR_GEN)
        .unwrap();
    assert_eq!(
        (rsa_sizes.min_key_size, rsa_sizes.max_key_size),
        (2048, 8192)
    );

    // ECDSA P-256: single-part (CKM_ECDSA_SHA256 on the module) and multi-part (CKM_ECDSA over
    // the digest the engine made), both checked with aws-lc-rs.
    let (ec_pub, ec_priv) = ec_pair(&e, s, b"module ec", true);
    let point = value(&e, s, ec_pub, CKA_EC_POINT);
    let point = &point[2..]; // DER OCTET STRING of the 65-byte point
    let verifier = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point);
    let whole = sign(&e, s, ec_priv, CKM_ECDSA_SHA256, &[b"hello module"]);
    verifier.verify(b"hello module", &whole).unwrap();
    let parts = sign(&e, s, ec_priv, CKM_ECDSA_SHA256, &[b"hello ", b"module"]);
    verifier.verify(b"hello module", &parts).unwrap();

    // RSA-2048 PKCS #1 v1.5 with SHA-256, multi-part: CKM_RSA_PKCS over a DigestInfo.
    let (rsa_pub, rsa_priv) = e
        .generate_key_pair(
            s,
            Mechanism::plain(CKM_RSA_PKCS_KEY_PAIR_GEN),
            vec![
                Attr::bool(CKA_TOKEN, true),
                Attr::ulong(CKA_MODULUS_BITS, 2048),
                Attr::bool(CKA_VERIFY, true),
                Attr::bytes(CKA_LABEL, b"module rsa"),
            ],
            vec![
                Attr::bool(CKA_TOKEN, true),
                Attr::bool(CKA_SIGN, true),
                Attr::bytes(CKA_LABEL, b"module rsa"),
            ],
        )
        .unwrap();
    let n = value(&e, s, rsa_pub, CKA_MODULUS);
    let exp = value(&e, s, rsa_pub, CKA_PUBLIC_EXPONENT);
    let sig = sign(
        &e,
        s,
        rsa_priv,
        CKM_SHA256_RSA_PKCS,
        &[b"rsa ", b"through us"],
    );
    signature::RsaPublicKeyComponents { n: &n, e: &exp }
        .verify(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            b"rsa through us",
            &sig,
        )
        .unwrap();

    // A mechanism the member cannot do is refused before it is asked.
    let aes = e
        .generate_key(
            s,
            Mechanism::plain(CKM_AES_KEY_GEN),
            vec![
                Attr::ulong(CKA_VALUE_LEN, 32),
                Attr::bool(CKA_ENCRYPT, true),
            ],
        )
        .unwrap();
    assert_eq!(
        e.op_init(
            s,
            OpKind::Encrypt,
            Mechanism::plain(CKM_CLOUDHSM_AES_GCM),
            aes
        )
        .unwrap_err()
        .ck_rv(),
        CKR_MECHANISM_INVALID
    );

    // A find by label answers from the module's objects.
    e.find_objects_init(s, vec![Attr::bytes(CKA_LABEL, b"module rsa")])
        .unwrap();
    let found = e.find_objects(s, 10).unwrap();
    e.find_objects_final(s).unwrap();
    assert_eq!(found.len(), 2, "public and private RSA keys");

    e.logout(s).unwrap();
    drop(e);
    // The token holds the keys, seen by SoftHSMv2's own module through pkcs11-tool.
    let list = Command::new(&tool)
        .args([
            "--module",
            SOFTHSM,
            "--token-label",
            LABEL,
            "--login",
            "--pin",
            PIN,
            "--list-objects",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&list.stderr)
    );
    for label in ["module ec", "module rsa"] {
        assert_eq!(
            out.matches(&format!("label:      {label}")).count(),
            2,
            "{label}: a public and a private key on the token:\n{out}"
        );
    }
}
