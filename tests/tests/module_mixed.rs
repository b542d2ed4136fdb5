//! A mixed cluster: one `hsmpool-hsmd` daemon (our simulator), one SoftHSMv2 token and one
//! NSS softokn database, three vendors behind one token. The application initialises the token
//! through us (`C_InitToken`, SO login, `C_InitPIN`) as any client does: the cluster wrapping
//! key is made on a member that may give it (not our simulator: RSA-3072 transport is worth less
//! than AES-256), carried to the others, to NSS at `C_InitPIN` (before it, its token has no
//! user and its SO cannot hold keys), and sealed then. A wrong SO or user PIN is refused
//! although the NSS member logs in as SO with a PIN of its own. Token keys made through us are
//! on all three, checked on SoftHSMv2 and NSS with their own tools (pkcs11-tool over SoftHSMv2's
//! module, NSS's certutil); each member alone signs, seals and opens with them; keys made on
//! SoftHSMv2 reach the others (its zero-padded RFC 5649, our defaults for what a template
//! leaves out); a readable token secret key, which NSS cannot hold, is refused; a pair made and
//! destroyed leaves nothing; a second engine finds each object once and copies nothing; and
//! inside an application that initialised softokn itself with its own database, the NSS member
//! is a private copy of softokn with ours, and the two databases stay apart. A named-user
//! change is refused (a vendor's token has no named users).

use std::process::Command;

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use cryptoki_sys::*;
use hsmpool_engine::config::Config;
use hsmpool_engine::types::{OpKind, SlotId};
use hsmpool_engine::{Attr, Engine, Mechanism};
use hsmpool_tests::engine::{aes_token_key, ec_pair, find, sign, value};
use hsmpool_tests::mixed::MixedMembers;
use hsmpool_tests::require_tool;
use hsmpool_tests::softhsm::SOFTHSM;

const PIN: &str = "user-pin-1";

#[test]
fn a_daemon_a_softhsm2_token_and_an_nss_database_are_one_token() {
    let tool = require_tool("pkcs11-tool");
    let dir = tempfile::tempdir().unwrap();
    // SoftHSMv2's token starts with other PINs: C_InitToken through us sets ours.
    // (SOFTHSM2_CONF is set for this process; this test binary has no other test.)
    let MixedMembers {
        tokens,
        nss,
        daemons,
        toml: text,
    } = MixedMembers::create(
        dir.path(),
        "mixed",
        "old-so-pin",
        "old-pin",
        7,
        "min_replicas = 3",
    );
    let cfg = Config::parse(&text, "mixed cluster").unwrap();
    assert_eq!(cfg.member.len(), 3);

    let e = Engine::new(cfg.clone()).unwrap();
    let mut label = [b' '; 32];
    label[..5].copy_from_slice(b"mixed");
    // SoftHSMv2's token was initialised with another SO PIN: it checks this one and refuses.
    // (The daemon's token is new, NSS takes any: the refusal must come from SoftHSMv2.)
    e.init_token(SlotId(0), b"old-so-pin", &label).unwrap();
    let s = e
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    // A wrong SO PIN is refused however the calls are balanced: the NSS member, which takes
    // its own (empty) SO PIN, never decides. (Four tries: the daemon locks at five.)
    for _ in 0..4 {
        let err = e.login(s, CKU_SO, b"wrong", None).unwrap_err();
        assert_eq!(err.ck_rv(), CKR_PIN_INCORRECT);
    }
    e.login(s, CKU_SO, b"old-so-pin", None).unwrap();
    e.init_pin(s, PIN.as_bytes()).unwrap();
    // A named user cannot exist on a vendor's token: refused before any member is asked,
    // naming the member; the PINs PKCS #11 can set (above) reach every member.
    let refused = e
        .change_user(&hsmpool_member::UserChange::Create {
            name: "alice".into(),
            role: hsmpool_member::Role::User,
            password: zeroize::Zeroizing::new(b"alice-pw-1".to_vec()),
        })
        .unwrap_err();
    assert_eq!(refused.ck_rv(), CKR_FUNCTION_NOT_SUPPORTED);
    assert!(refused.to_string().contains("keeps no users"), "{refused}");
    e.logout(s).unwrap();
    for _ in 0..4 {
        let err = e.login(s, CKU_USER, b"wrong", None).unwrap_err();
        assert_eq!(err.ck_rv(), CKR_PIN_INCORRECT);
    }
    e.login(s, CKU_USER, PIN.as_bytes(), None).unwrap();
    assert!(
        e.member_status().iter().all(|m| m.health.name() == "up"),
        "{:?}",
        e.member_status()
    );

    let (ec_pub, ec_priv) = ec_pair(&e, s, b"mixed ec", true);
    assert_eq!(value(&e, s, ec_priv, CKA_WRAP_WITH_TRUSTED), [1]);
    let point = value(&e, s, ec_pub, CKA_EC_POINT);
    let verifier = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point[2..]);
    // Each member in turn answers alone (the others drained): all three sign with the key.
    for only in 0..3 {
        for m in 0..3 {
            e.drain_member(m, m != only).unwrap();
        }
        for i in 0..4u32 {
            let msg = format!("member {only} message {i}");
            let sig = sign(&e, s, CKM_ECDSA_SHA256, ec_priv, msg.as_bytes());
            verifier.verify(msg.as_bytes(), &sig).unwrap();
        }
    }
    for m in 0..3 {
        e.drain_member(m, false).unwrap();
    }
    // An RSA pair and an AES key: made on one member, on all three after.
    let (rsa_pub, rsa_priv) = e
        .generate_key_pair(
            s,
            Mechanism::plain(CKM_RSA_PKCS_KEY_PAIR_GEN),
            vec![
                Attr::bool(CKA_TOKEN, true),
                Attr::ulong(CKA_MODULUS_BITS, 2048),
                Attr::bool(CKA_VERIFY, true),
                Attr::bytes(CKA_LABEL, b"mixed rsa"),
                Attr::bytes(CKA_ID, b"rsa-1"),
            ],
            vec![
                Attr::bool(CKA_TOKEN, true),
                Attr::bool(CKA_SIGN, true),
                Attr::bytes(CKA_LABEL, b"mixed rsa"),
                Attr::bytes(CKA_ID, b"rsa-1"),
            ],
        )
        .unwrap();
    let aes = aes_token_key(&e, s, b"mixed aes");
    let gcm = |iv: u8| Mechanism {
        mech: CKM_AES_GCM,
        param: hsmpool_engine::MechParam::Gcm {
            iv: vec![iv; 12],
            aad: b"mixed".to_vec(),
            tag_bits: 128,
        },
    };
    let modulus = value(&e, s, rsa_pub, CKA_MODULUS);
    let rsa_key = signature::RsaPublicKeyComponents {
        n: &modulus,
        e: &vec![1u8, 0, 1],
    };
    for only in 0..3 {
        for m in 0..3 {
            e.drain_member(m, m != only).unwrap();
        }
        let msg = format!("rsa on member {only}");
        let sig = sign(&e, s, CKM_SHA256_RSA_PKCS, rsa_priv, msg.as_bytes());
        rsa_key
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg.as_bytes(), &sig)
            .unwrap();
        // Sealed here, opened by the next member.
        e.op_init(s, OpKind::Encrypt, gcm(only as u8), aes).unwrap();
        let mut sealed = vec![0u8; 64];
        let n = e
            .op_single(s, OpKind::Encrypt, msg.as_bytes(), Some(&mut sealed))
            .unwrap();
        sealed.truncate(n);
        for m in 0..3 {
            e.drain_member(m, m != (only + 1) % 3).unwrap();
        }
        e.op_init(s, OpKind::Decrypt, gcm(only as u8), aes).unwrap();
        let mut opened = vec![0u8; 64];
        let n = e
            .op_single(s, OpKind::Decrypt, &sealed, Some(&mut opened))
            .unwrap();
        assert_eq!(&opened[..n], msg.as_bytes());
    }
    for m in 0..3 {
        e.drain_member(m, false).unwrap();
    }
    let ops: Vec<u64> = e.member_status().iter().map(|m| m.ops).collect();
    assert!(ops.iter().all(|n| *n > 0), "every member served: {ops:?}");
    let copied: u64 = e.member_status().iter().map(|m| m.replicated).sum();
    assert_eq!(copied, 5 * 2, "five objects, each to two members");
    // Keys made on the SoftHSMv2 member alone (the others drained) reach the others too: its
    // RFC 5649 wrapping zero-pads the key first (the simulator reads the PKCS #8 structure's
    // own length, as NSS does), and a template's silences mean our defaults, not SoftHSMv2's
    // (an AES key it makes is otherwise not sensitive, which NSS could not hold).
    for m in 0..3 {
        e.drain_member(m, m != 1).unwrap();
    }
    let before: u64 = e.member_status().iter().map(|m| m.replicated).sum();
    ec_pair(&e, s, b"softhsm ec", true);
    e.generate_key_pair(
        s,
        Mechanism::plain(CKM_RSA_PKCS_KEY_PAIR_GEN),
        vec![
            Attr::bool(CKA_TOKEN, true),
            Attr::ulong(CKA_MODULUS_BITS, 2048),
            Attr::bytes(CKA_LABEL, b"softhsm rsa"),
        ],
        vec![
            Attr::bool(CKA_TOKEN, true),
            Attr::bytes(CKA_LABEL, b"softhsm rsa"),
        ],
    )
    .unwrap();
    let aes_made_on_softhsm = aes_token_key(&e, s, b"softhsm aes");
    assert_eq!(value(&e, s, aes_made_on_softhsm, CKA_SENSITIVE), [1]);
    let after: u64 = e.member_status().iter().map(|m| m.replicated).sum();
    assert_eq!(after - before, 5 * 2, "five objects, each to two members");
    for m in 0..3 {
        e.drain_member(m, false).unwrap();
    }
    // Many threads making session keys at once on the NSS member alone (the others drained):
    // the engine's pool session is shared, and softokn refuses a second key generation on a
    // session while one runs (CKR_OPERATION_ACTIVE) unless the calls take turns.
    for m in 0..3 {
        e.drain_member(m, m != 2).unwrap();
    }
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                let ts = e
                    .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
                    .unwrap();
                for _ in 0..2 {
                    ec_pair(&e, ts, b"threads", false);
                    e.generate_key_pair(
                        ts,
                        Mechanism::plain(CKM_RSA_PKCS_KEY_PAIR_GEN),
                        vec![Attr::ulong(CKA_MODULUS_BITS, 2048)],
                        vec![Attr::bool(CKA_SIGN, true)],
                    )
                    .unwrap();
                }
                e.close_session(ts).unwrap();
            });
        }
    });
    for m in 0..3 {
        e.drain_member(m, false).unwrap();
    }

    // NSS softokn keeps every token secret key sensitive: a key the application may read
    // cannot be held there as asked, so it is refused, wherever it was made, and nothing stays.
    for _ in 0..3 {
        let refused = e
            .generate_key(
                s,
                Mechanism::plain(CKM_AES_KEY_GEN),
                vec![
                    Attr::bool(CKA_TOKEN, true),
                    Attr::ulong(CKA_VALUE_LEN, 32),
                    Attr::bool(CKA_SENSITIVE, false),
                    Attr::bytes(CKA_LABEL, b"readable"),
                ],
            )
            .unwrap_err();
        assert_eq!(refused.ck_rv(), CKR_TEMPLATE_INCONSISTENT);
    }
    // A pair made and destroyed leaves nothing on any member.
    for round in 0..3u8 {
        let (p, k) = e
            .generate_key_pair(
                s,
                Mechanism::plain(CKM_EC_KEY_PAIR_GEN),
                vec![
                    Attr::bool(CKA_TOKEN, true),
                    Attr::bytes(CKA_EC_PARAMS, &hsmpool_tests::engine::P256),
                    Attr::bool(CKA_VERIFY, true),
                    Attr::bytes(CKA_ID, &[0x0c, round]),
                ],
                vec![
                    Attr::bool(CKA_TOKEN, true),
                    Attr::bool(CKA_SIGN, true),
                    Attr::bytes(CKA_ID, &[0x0c, round]),
                ],
            )
            .unwrap();
        e.destroy_object(s, k).unwrap();
        e.destroy_object(s, p).unwrap();
        let found = find(&e, s, vec![Attr::bytes(CKA_ID, &[0x0c, round])]);
        assert!(found.is_empty(), "round {round}");
    }
    e.logout(s).unwrap();
    drop(e);

    // SoftHSMv2's own module lists the pair and the wrapping key on its token.
    let out = Command::new(&tool)
        .args(["--module", SOFTHSM, "--token-label", "mixed", "--login"])
        .args(["--pin", PIN, "--list-objects"])
        .env("SOFTHSM2_CONF", &tokens.conf)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listed}");
    assert_eq!(
        listed.matches("label:      mixed ec\n").count(),
        2,
        "{listed}"
    );
    assert_eq!(
        listed
            .matches(&format!(
                "label:      {}\n",
                hsmpool_engine::cluster::DEFAULT_WRAP_KEY_LABEL
            ))
            .count(),
        1,
        "{listed}"
    );
    // NSS's certutil lists the private key in its database, under the password we set.
    let keys = nss.private_keys(PIN);
    for label in ["mixed ec", "mixed rsa"] {
        assert_eq!(keys.matches(label).count(), 1, "{keys}");
    }

    // A second engine (a restart) finds one copy of each, and copies nothing.
    let e = Engine::new(cfg.clone()).unwrap();
    let s = e
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, CKU_USER, PIN.as_bytes(), None).unwrap();
    for (label, n) in [
        (&b"mixed ec"[..], 2),
        (b"mixed rsa", 2),
        (b"mixed aes", 1),
        (b"readable", 0),
    ] {
        let found = find(&e, s, vec![Attr::bytes(CKA_LABEL, label)]);
        assert_eq!(found.len(), n, "{}", String::from_utf8_lossy(label));
    }
    let copied: u64 = e.member_status().iter().map(|m| m.replicated).sum();
    assert_eq!(copied, 0);
    e.logout(s).unwrap();
    drop(e);

    // Inside an application that initialised softokn itself (an NSS tool, with its own
    // database), the member is a private copy of softokn with its own database: the engine
    // finds the keys made above and signs with them on the NSS member alone, many threads at
    // once, while the application's softokn shows its own database, without them.
    let other = dir.path().join("application-db");
    std::fs::create_dir_all(&other).unwrap();
    // SAFETY: loading NSS's softokn runs no initialiser with preconditions.
    let lib = unsafe { libloading::Library::new(hsmpool_tests::nss::SOFTOKN) }.unwrap();
    let params = std::ffi::CString::new(format!(
        "configdir='sql:{}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=",
        other.display()
    ))
    .unwrap();
    // SAFETY: C_GetFunctionList has the PKCS #11 signature; the list it gives is static.
    let f = unsafe {
        let get: libloading::Symbol<unsafe extern "C" fn(*mut CK_FUNCTION_LIST_PTR) -> CK_RV> =
            lib.get(b"C_GetFunctionList\0").unwrap();
        let mut f: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        assert_eq!(get(&mut f), CKR_OK);
        &*f
    };
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: params.as_ptr() as *mut std::ffi::c_void,
    };
    // SAFETY: the arguments and the string they point at outlive the call.
    let rv = unsafe { f.C_Initialize.unwrap()(std::ptr::from_mut(&mut args).cast()) };
    assert_eq!(rv, CKR_OK);
    // The application's own objects labelled `label` in its key database (slot 2), as it sees
    // them (public objects: no login).
    let application_sees = |label: &[u8]| -> usize {
        let mut h: CK_SESSION_HANDLE = 0;
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_ptr() as *mut std::ffi::c_void,
            ulValueLen: label.len() as CK_ULONG,
        }];
        let mut found: [CK_OBJECT_HANDLE; 8] = [0; 8];
        let mut n: CK_ULONG = 0;
        // SAFETY: the session handle, template and output array outlive the calls, with the
        // lengths given.
        unsafe {
            assert_eq!(
                f.C_OpenSession.unwrap()(2, CKF_SERIAL_SESSION, std::ptr::null_mut(), None, &mut h),
                CKR_OK
            );
            assert_eq!(f.C_FindObjectsInit.unwrap()(h, t.as_mut_ptr(), 1), CKR_OK);
            assert_eq!(
                f.C_FindObjects.unwrap()(h, found.as_mut_ptr(), 8, &mut n),
                CKR_OK
            );
            assert_eq!(f.C_FindObjectsFinal.unwrap()(h), CKR_OK);
            assert_eq!(f.C_CloseSession.unwrap()(h), CKR_OK);
        }
        n as usize
    };
    assert_eq!(application_sees(b"mixed ec"), 0);
    let e = Engine::new(cfg).expect("the NSS member is a private copy of softokn");
    let s = e
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, CKU_USER, PIN.as_bytes(), None).unwrap();
    assert!(
        e.member_status().iter().all(|m| m.health.name() == "up"),
        "{:?}",
        e.member_status()
    );
    let found = find(&e, s, vec![Attr::bytes(CKA_LABEL, b"mixed ec")]);
    assert_eq!(found.len(), 2);
    let ec_priv = found
        .into_iter()
        .find(|o| value(&e, s, *o, CKA_CLASS) == CKO_PRIVATE_KEY.to_ne_bytes())
        .expect("the private key");
    for m in 0..3 {
        e.drain_member(m, m != 2).unwrap();
    }
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (e, verifier) = (&e, &verifier);
            scope.spawn(move || {
                let ts = e
                    .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
                    .unwrap();
                for i in 0..8 {
                    let msg = format!("private copy, thread {t}, message {i}");
                    let sig = sign(e, ts, CKM_ECDSA_SHA256, ec_priv, msg.as_bytes());
                    verifier.verify(msg.as_bytes(), &sig).unwrap();
                }
                e.close_session(ts).unwrap();
            });
        }
    });
    let ops: Vec<u64> = e.member_status().iter().map(|m| m.ops).collect();
    assert!(ops[2] >= 64, "the NSS member signed: {ops:?}");
    // A key made now reaches the private copy's database, not the application's.
    ec_pair(&e, s, b"after the application", true);
    e.logout(s).unwrap();
    drop(e);
    assert_eq!(application_sees(b"after the application"), 0);
    let keys = nss.private_keys(PIN);
    assert_eq!(keys.matches("after the application").count(), 1, "{keys}");
    // SAFETY: the library was initialised above and nothing else uses it now.
    let rv = unsafe { f.C_Finalize.unwrap()(std::ptr::null_mut()) };
    assert_eq!(rv, CKR_OK);
    drop(daemons);
}
