//! Three SoftHSMv2 tokens as the members of one token: the wrapping-key ceremony
//! (`hsmpool cluster wrap-key`) puts one trusted key on each; token keys made through us are
//! copied to every member by wrapping under it and carry `CKA_WRAP_WITH_TRUSTED`; signatures
//! made on any member verify; a key that could not be copied is refused; a second engine (a
//! restart) finds the same objects, one copy each, without copying anything again; and each
//! token is checked with SoftHSMv2's own module through pkcs11-tool, not through us.

use std::path::Path;
use std::process::Command;

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use cryptoki_sys::*;
use hsmpool_engine::cluster::ceremony::{wrap_key_ceremony as ceremony, Done};
use hsmpool_engine::cluster::DEFAULT_WRAP_KEY_LABEL;
use hsmpool_engine::config::Config;
use hsmpool_engine::types::{OpKind, SlotId};
use hsmpool_engine::{Attr, Engine, Mechanism};
use hsmpool_tests::engine::{aes_token_key, ec_pair, find, sign, value};
use hsmpool_tests::require_tool;
use hsmpool_tests::softhsm::{SoftHsmTokens, SOFTHSM};

const SO_PIN: &str = "12345678";
const PIN: &str = "87654321";

fn label(i: usize) -> String {
    format!("hsmpool-member-{i}")
}

fn config() -> Config {
    let mut text = String::from("[cluster]\nmin_replicas = 3\n");
    for i in 0..3 {
        text += &format!(
            "[[member]]\nkind = \"module\"\npath = \"{SOFTHSM}\"\ntoken_label = \"{}\"\n",
            label(i)
        );
    }
    Config::parse(&text, "three SoftHSMv2 tokens").unwrap()
}

/// What SoftHSMv2's own module lists on token `i` (pkcs11-tool, logged in).
fn listed(tool: &Path, conf: &Path, i: usize) -> String {
    let out = Command::new(tool)
        .args([
            "--module",
            SOFTHSM,
            "--token-label",
            &label(i),
            "--login",
            "--pin",
            PIN,
            "--list-objects",
        ])
        .env("SOFTHSM2_CONF", conf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Token `i`'s listing (`out`) holds `n` objects labelled `what` for each pair, and the
/// cluster wrapping key once.
#[track_caller]
fn holds(out: &str, i: usize, want: &[(&str, usize)]) {
    for (what, n) in want {
        assert_eq!(
            out.matches(&format!("label:      {what}\n")).count(),
            *n,
            "token {i}, {what}:\n{out}"
        );
    }
    assert_eq!(
        out.matches(&format!("label:      {DEFAULT_WRAP_KEY_LABEL}\n"))
            .count(),
        1,
        "token {i}:\n{out}"
    );
}

#[test]
fn three_softhsm2_tokens_hold_every_token_key_made_through_us() {
    let tool = require_tool("pkcs11-tool");
    let dir = tempfile::tempdir().unwrap();
    let tokens = SoftHsmTokens::create(dir.path(), 3, "hsmpool-member", SO_PIN, PIN);
    assert_eq!(tokens.labels, (0..3).map(label).collect::<Vec<_>>());
    let conf = tokens.conf.clone();
    // Read by SoftHSMv2 at C_Initialize; this test binary has no other test.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let cfg = config();

    // The ceremony: made on the first, carried to the others; run again, it only checks.
    let members = hsmpool_engine::backend::open_members(&cfg).unwrap();
    let done = ceremony(&members, DEFAULT_WRAP_KEY_LABEL, SO_PIN.as_bytes()).unwrap();
    assert_eq!(done, [Done::Made, Done::Copied, Done::Copied]);
    let again = ceremony(&members, DEFAULT_WRAP_KEY_LABEL, SO_PIN.as_bytes()).unwrap();
    assert_eq!(again, [Done::Kept, Done::Kept, Done::Kept]);
    drop(members);

    let e = Engine::new(cfg).unwrap();
    let s = e
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, CKU_USER, PIN.as_bytes(), None).unwrap();

    // A token key pair and a secret key, made on one member, copied to the others.
    let (ec_pub, ec_priv) = ec_pair(&e, s, b"cluster ec", true);
    assert_eq!(value(&e, s, ec_priv, CKA_WRAP_WITH_TRUSTED), [1]);
    // What the token set when it made the key reads the same whichever member answers (the
    // copies, made by unwrapping, are not local themselves).
    // Each member in turn answers alone (the others drained: out of the balancing).
    for only in 0..3 {
        for m in 0..3 {
            e.drain_member(m, m != only).unwrap();
        }
        assert_eq!(value(&e, s, ec_priv, CKA_LOCAL), [1], "member {only}");
        assert_eq!(
            value(&e, s, ec_priv, CKA_KEY_GEN_MECHANISM),
            (CKM_EC_KEY_PAIR_GEN as CK_ULONG).to_ne_bytes(),
            "member {only}"
        );
    }
    for m in 0..3 {
        e.drain_member(m, false).unwrap();
    }
    assert_eq!(value(&e, s, ec_priv, CKA_EXTRACTABLE), [1]);
    let aes = aes_token_key(&e, s, b"cluster aes");
    assert!(e.member_status().iter().all(|m| m.health.name() == "up"));
    let copied: u64 = e.member_status().iter().map(|m| m.replicated).sum();
    assert_eq!(copied, 3 * 2, "three objects, each to two members");

    let ed = e.generate_key_pair(
        s,
        Mechanism::plain(CKM_EC_EDWARDS_KEY_PAIR_GEN),
        vec![
            Attr::bool(CKA_TOKEN, true),
            Attr::bytes(CKA_EC_PARAMS, &[0x06, 0x03, 0x2b, 0x65, 0x70]),
        ],
        vec![Attr::bool(CKA_TOKEN, true), Attr::bool(CKA_SIGN, true)],
    );
    // SoftHSMv2 cannot wrap an EdDSA private key (CKR_KEY_NOT_WRAPPABLE), so it cannot reach
    // the other members: refused at once, and nothing left behind.
    assert_eq!(ed.unwrap_err().ck_rv(), CKR_TEMPLATE_INCONSISTENT);
    // Signatures verify whichever member made them (calls are balanced over the three).
    let point = value(&e, s, ec_pub, CKA_EC_POINT);
    let verifier = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point[2..]);
    for i in 0..30u32 {
        let msg = format!("message {i}");
        verifier
            .verify(
                msg.as_bytes(),
                &sign(&e, s, CKM_ECDSA_SHA256, ec_priv, msg.as_bytes()),
            )
            .unwrap();
    }
    let ops: Vec<u64> = e.member_status().iter().map(|m| m.ops).collect();
    assert!(ops.iter().all(|n| *n > 0), "every member served: {ops:?}");
    // AES-CBC under the copied secret key: sealed on one member, opened on another (each
    // call goes to the least busy member; the ops counters show they all served).
    let cbc = Mechanism {
        mech: CKM_AES_CBC_PAD,
        param: hsmpool_engine::MechParam::Iv(vec![7u8; 16]),
    };
    for i in 0..12usize {
        let plain = vec![i as u8; 10 + i];
        e.op_init(s, OpKind::Encrypt, cbc.clone(), aes).unwrap();
        let mut sealed = vec![0u8; 64];
        let n = e
            .op_single(s, OpKind::Encrypt, &plain, Some(&mut sealed))
            .unwrap();
        sealed.truncate(n);
        e.op_init(s, OpKind::Decrypt, cbc.clone(), aes).unwrap();
        let mut opened = vec![0u8; 64];
        let n = e
            .op_single(s, OpKind::Decrypt, &sealed, Some(&mut opened))
            .unwrap();
        assert_eq!(&opened[..n], &plain[..]);
    }

    // An HMAC key imported with its value: its copies (unwrapped on the other members) sign
    // as the original does.
    let hmac_value = [0x5au8; 32];
    let hmac = e
        .create_object(
            s,
            vec![
                Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
                Attr::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
                Attr::bool(CKA_TOKEN, true),
                Attr::bool(CKA_SIGN, true),
                Attr::bytes(CKA_VALUE, &hmac_value),
                Attr::bytes(CKA_LABEL, b"cluster hmac"),
            ],
        )
        .unwrap();
    let expect = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &hmac_value),
        b"mac me",
    );
    for _ in 0..12 {
        e.op_init(s, OpKind::Sign, Mechanism::plain(CKM_SHA256_HMAC), hmac)
            .unwrap();
        let mut mac = [0u8; 32];
        e.op_single(s, OpKind::Sign, b"mac me", Some(&mut mac))
            .unwrap();
        assert_eq!(&mac[..], expect.as_ref());
    }

    // A key restricted to one mechanism keeps its restriction on every copy.
    let only = (CKM_ECDSA_SHA256 as CK_ULONG).to_ne_bytes().to_vec();
    e.generate_key_pair(
        s,
        Mechanism::plain(CKM_EC_KEY_PAIR_GEN),
        vec![
            Attr::bool(CKA_TOKEN, true),
            Attr::bytes(CKA_EC_PARAMS, &hsmpool_tests::engine::P256),
            Attr::bytes(CKA_LABEL, b"cluster restricted"),
        ],
        vec![
            Attr::bool(CKA_TOKEN, true),
            Attr::bool(CKA_SIGN, true),
            Attr::bytes(CKA_LABEL, b"cluster restricted"),
            Attr::bytes(CKA_ALLOWED_MECHANISMS, &only),
        ],
    )
    .unwrap();

    // And on each member, asked directly: the copies sign as the original does, and keep the
    // restriction.
    {
        let members = hsmpool_engine::backend::open_members(&config()).unwrap();
        for b in &members {
            let ms = b.open_session().unwrap();
            let _ = b.login(ms, hsmpool_member::Role::User, PIN.as_bytes(), None);
            let found = b
                .find(ms, &[Attr::bytes(CKA_LABEL, b"cluster hmac")])
                .unwrap();
            assert_eq!(found.len(), 1, "{}", b.describe());
            let mac = b
                .sign(
                    ms,
                    &Mechanism::plain(CKM_SHA256_HMAC),
                    found[0],
                    hsmpool_engine::SignInput::Message(b"mac me"),
                )
                .unwrap_or_else(|e| panic!("{}: {e}", b.describe()));
            assert_eq!(&mac[..], expect.as_ref(), "{}", b.describe());
            let restricted = b
                .find(
                    ms,
                    &[
                        Attr::ulong(CKA_CLASS, CKO_PRIVATE_KEY),
                        Attr::bytes(CKA_LABEL, b"cluster restricted"),
                    ],
                )
                .unwrap();
            assert_eq!(restricted.len(), 1, "{}", b.describe());
            assert_eq!(
                b.get_attributes(ms, restricted[0], &[CKA_ALLOWED_MECHANISMS])
                    .unwrap(),
                [hsmpool_engine::types::AttrAnswer::Value(only.clone())],
                "{}",
                b.describe()
            );
            b.close_session(ms);
        }
    }

    // A token key asked to be not extractable could not be copied: refused, nothing made.
    let refused = e.generate_key(
        s,
        Mechanism::plain(CKM_AES_KEY_GEN),
        vec![
            Attr::bool(CKA_TOKEN, true),
            Attr::ulong(CKA_VALUE_LEN, 32),
            Attr::bool(CKA_EXTRACTABLE, false),
            Attr::bytes(CKA_LABEL, b"stuck"),
        ],
    );
    assert_eq!(refused.unwrap_err().ck_rv(), CKR_TEMPLATE_INCONSISTENT);
    assert!(find(&e, s, vec![Attr::bytes(CKA_LABEL, b"stuck")]).is_empty());
    e.logout(s).unwrap();
    drop(e);

    // A restart: a new engine knows the objects by what they are, finds one of each, copies
    // nothing, and signs with the key it found.
    let e = Engine::new(config()).unwrap();
    let s = e
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, CKU_USER, PIN.as_bytes(), None).unwrap();
    let copied: u64 = e.member_status().iter().map(|m| m.replicated).sum();
    assert_eq!(copied, 0, "nothing copied at the second login");
    let privs = find(
        &e,
        s,
        vec![
            Attr::ulong(CKA_CLASS, CKO_PRIVATE_KEY),
            Attr::bytes(CKA_LABEL, b"cluster ec"),
        ],
    );
    assert_eq!(privs.len(), 1);
    for i in 0..12u32 {
        let msg = format!("after restart {i}");
        verifier
            .verify(
                msg.as_bytes(),
                &sign(&e, s, CKM_ECDSA_SHA256, privs[0], msg.as_bytes()),
            )
            .unwrap();
    }
    e.logout(s).unwrap();
    drop(e);

    // Each token, seen by SoftHSMv2's own module: one copy of each object, and the wrapping key.
    for i in 0..3 {
        holds(
            &listed(&tool, &conf, i),
            i,
            &[("cluster ec", 2), ("cluster aes", 1), ("stuck", 0)],
        );
    }

    // C_InitToken through us initialises every member (each keeps its own label, by which the
    // configuration finds it) and makes a new cluster wrapping key: after C_InitPIN, a token
    // key made through us is again on all three.
    let e = Engine::new(config()).unwrap();
    let mut label32 = [b' '; 32];
    label32[..9].copy_from_slice(b"new label");
    e.init_token(SlotId(0), SO_PIN.as_bytes(), &label32)
        .unwrap();
    let s = e
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, CKU_SO, SO_PIN.as_bytes(), None).unwrap();
    e.init_pin(s, PIN.as_bytes()).unwrap();
    e.logout(s).unwrap();
    e.login(s, CKU_USER, PIN.as_bytes(), None).unwrap();
    assert!(find(&e, s, vec![Attr::bytes(CKA_LABEL, b"cluster ec")]).is_empty());
    ec_pair(&e, s, b"after init", true);
    e.logout(s).unwrap();
    drop(e);
    for i in 0..3 {
        holds(
            &listed(&tool, &conf, i),
            i,
            &[("cluster ec", 0), ("after init", 2)],
        );
    }
}
