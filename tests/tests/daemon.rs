//! `hsmpool-hsmd` and the engine's `Remote` backend, end to end: real processes, real mutual
//! TLS with certificates made by openssl, real kill -9.
//!
//! These live in the tests crate because they need three things at once: the daemon binary,
//! the engine's `Remote` (which the simulator crate cannot depend on) and the `hsmpool` CLI;
//! and because the PKI and daemon helpers (`hsmpool_tests::pki`, `hsmpool_tests::hsmd`) are
//! meant for the cluster tests too. Build the workspace first (`cargo build --workspace`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use cryptoki_sys::*;
use hsmpool_engine::backend::remote::{admin_request, Remote, RemoteConfig};
use hsmpool_engine::backend::{Backend, MemberError, MemberId, MemberObject, MemberSession};
use hsmpool_engine::Error;
use hsmpool_sim::hsm::{AttrAnswer, Role};
use hsmpool_sim::types::{Attr, MechParam, Mechanism, SignInput};
use hsmpool_tests::hsmd::Hsmd;
use hsmpool_tests::pki::{Identity, Pki};
use hsmpool_wire::link;
use hsmpool_wire::{decode_response, encode_request, Request, Response};

const SO_PIN: &[u8] = b"so-pin-1234";
const USER_PIN: &[u8] = b"user-pin-1234";
const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// How long a log line may take to show up (the daemon writes it as it happens).
const LOG_WAIT: Duration = Duration::from_secs(10);

/// A PKI, an HSM certificate for 127.0.0.1, a good client, and a data directory.
struct World {
    pki: Pki,
    server: Identity,
    client: Identity,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let pki = Pki::new();
        let server = pki.loopback_hsm("hsm0");
        let client = pki.client("engine");
        World {
            pki,
            server,
            client,
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn daemon(&self, extra: &[&str]) -> Hsmd {
        Hsmd::start(
            &self.pki,
            &self.server,
            &self.dir.path().join("hsm0"),
            extra,
        )
    }

    fn config(&self, d: &Hsmd) -> RemoteConfig {
        RemoteConfig::new(
            d.addr.clone(),
            &self.pki.customer_ca,
            &self.client.cert,
            &self.client.key,
        )
    }

    fn remote(&self, d: &Hsmd) -> Remote {
        Remote::connect(MemberId(0), &self.config(d)).expect("a valid configuration")
    }

    /// `hsmpool sim ARGS...` against `d`: (success, stdout, stderr).
    fn cli(&self, d: &Hsmd, args: &[&str]) -> (bool, String, String) {
        let p = |p: &Path| p.to_str().expect("UTF-8 temp path").to_owned();
        let (cmd, rest) = args.split_first().expect("a sim command");
        let out = Command::new(hsmpool_tests::workspace_bin("hsmpool"))
            .args(["sim", cmd, "--daemon", &d.addr])
            .args(["--ca", &p(&self.pki.customer_ca)])
            .args(["--cert", &p(&self.client.cert)])
            .args(["--key", &p(&self.client.key)])
            .args(rest)
            .output()
            .expect("run hsmpool");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Initialise the token, set the user PIN and return a logged-in user session.
fn init_and_login(r: &Remote) -> MemberSession {
    r.init_token(SO_PIN, b"daemon test                     ")
        .expect("init token");
    let so = r.open_session().expect("open session");
    r.login(so, Role::Officer, SO_PIN, None).expect("SO login");
    r.init_pin(so, USER_PIN).expect("init PIN");
    r.close_session(so);
    user_session(r)
}

fn user_session(r: &Remote) -> MemberSession {
    let s = r.open_session().expect("open session");
    r.login(s, Role::User, USER_PIN, None).expect("user login");
    s
}

fn ec_pair(
    r: &Remote,
    s: MemberSession,
    label: &[u8],
    token: bool,
) -> (MemberObject, MemberObject) {
    r.generate_key_pair(
        s,
        &Mechanism::plain(CKM_EC_KEY_PAIR_GEN),
        &[
            Attr::bytes(CKA_EC_PARAMS, &P256),
            Attr::bool(CKA_TOKEN, token),
            Attr::bytes(CKA_LABEL, label),
        ],
        &[
            Attr::bool(CKA_TOKEN, token),
            Attr::bool(CKA_SIGN, true),
            Attr::bytes(CKA_LABEL, label),
        ],
    )
    .expect("EC P-256 key pair")
}

fn attr(r: &Remote, s: MemberSession, o: MemberObject, ty: CK_ATTRIBUTE_TYPE) -> Vec<u8> {
    match r.get_attributes(s, o, &[ty]).expect("get attribute").pop() {
        Some(AttrAnswer::Value(v)) => v,
        other => panic!("attribute {ty:#x}: {other:?}"),
    }
}

/// The uncompressed point of a P-256 public key (CKA_EC_POINT is a DER OCTET STRING).
fn ec_point(r: &Remote, s: MemberSession, public: MemberObject) -> Vec<u8> {
    let der = attr(r, s, public, CKA_EC_POINT);
    assert_eq!(&der[..2], &[0x04, 0x41], "DER-wrapped 65-byte point");
    der[2..].to_vec()
}

fn ecdsa_sign(
    r: &Remote,
    s: MemberSession,
    key: MemberObject,
    msg: &[u8],
) -> Result<Vec<u8>, Error> {
    r.sign(
        s,
        &Mechanism::plain(CKM_ECDSA_SHA256),
        key,
        SignInput::Message(msg),
    )
    .map_err(Error::from)
}

fn ecdsa_verifies(point: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(msg, sig)
        .is_ok()
}

fn unreachable_reason<E: Clone + Into<Error>>(e: &E) -> String {
    match e.clone().into() {
        Error::MemberUnreachable { reason, .. } => reason,
        other => panic!("expected MemberUnreachable, got {other:?}"),
    }
}

fn stats(w: &World, d: &Hsmd) -> hsmpool_wire::DaemonStats {
    match admin_request(&w.config(d), &Request::Stats).expect("stats") {
        Response::Stats(st) => st,
        other => panic!("stats: {other:?}"),
    }
}

/// (a) Everything an application does, through `Remote` and a real daemon process.
#[test]
fn a_remote_member_does_the_whole_round_trip() {
    let w = World::new();
    let d = w.daemon(&[]);
    assert!(
        d.stdout()
            .contains(&format!("hsmpool-hsmd listening on {}", d.addr)),
        "{}",
        d.stdout()
    );
    let r = w.remote(&d);
    assert!(r.describe().contains(&d.addr));
    assert!(!r.token_status().unwrap().initialized);
    let s = init_and_login(&r);
    let st = r.token_status().unwrap();
    assert!(st.initialized && st.user_pin_initialized);
    r.ping().expect("ping");

    // RSA-2048, signed remotely, verified remotely and with aws-lc from the public key.
    let (rsa_pub, rsa_priv) = r
        .generate_key_pair(
            s,
            &Mechanism::plain(CKM_RSA_PKCS_KEY_PAIR_GEN),
            &[
                Attr::ulong(CKA_MODULUS_BITS, 2048),
                Attr::bytes(CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
                Attr::bool(CKA_TOKEN, true),
                Attr::bytes(CKA_LABEL, b"rsa"),
            ],
            &[
                Attr::bool(CKA_TOKEN, true),
                Attr::bool(CKA_SIGN, true),
                Attr::bytes(CKA_LABEL, b"rsa"),
            ],
        )
        .expect("RSA-2048 key pair");
    let msg = b"pay 10 EUR to Bob";
    let sha256_rsa = Mechanism::plain(CKM_SHA256_RSA_PKCS);
    let sig = r
        .sign(s, &sha256_rsa, rsa_priv, SignInput::Message(msg))
        .unwrap();
    assert_eq!(sig.len(), 256);
    r.verify(s, &sha256_rsa, rsa_pub, SignInput::Message(msg), &sig)
        .expect("remote RSA verify");
    let rsa_key = signature::RsaPublicKeyComponents {
        n: attr(&r, s, rsa_pub, CKA_MODULUS),
        e: attr(&r, s, rsa_pub, CKA_PUBLIC_EXPONENT),
    };
    rsa_key
        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, &sig)
        .expect("aws-lc verifies the remote RSA signature");
    let mut bad = sig.clone();
    bad[0] ^= 1;
    assert_eq!(
        Error::from(
            r.verify(s, &sha256_rsa, rsa_pub, SignInput::Message(msg), &bad)
                .unwrap_err()
        )
        .ck_rv(),
        CKR_SIGNATURE_INVALID
    );

    // EC P-256.
    let (ec_pub, ec_priv) = ec_pair(&r, s, b"ec", false);
    let sig = ecdsa_sign(&r, s, ec_priv, msg).unwrap();
    assert!(ecdsa_verifies(&ec_point(&r, s, ec_pub), msg, &sig));
    r.verify(
        s,
        &Mechanism::plain(CKM_ECDSA_SHA256),
        ec_pub,
        SignInput::Message(msg),
        &sig,
    )
    .expect("remote EC verify");

    // AES-256-GCM there and back; a changed tag is refused.
    let aes = r
        .generate_key(
            s,
            &Mechanism::plain(CKM_AES_KEY_GEN),
            &[
                Attr::ulong(CKA_VALUE_LEN, 32),
                Attr::bool(CKA_ENCRYPT, true),
                Attr::bool(CKA_DECRYPT, true),
                Attr::bytes(CKA_LABEL, b"aes"),
            ],
        )
        .expect("AES key");
    let gcm = Mechanism {
        mech: CKM_AES_GCM,
        param: MechParam::Gcm {
            iv: vec![7; 12],
            aad: b"header".to_vec(),
            tag_bits: 128,
        },
    };
    let plain = b"the secret plaintext".to_vec();
    let ct = r.encrypt(s, &gcm, aes, &plain).unwrap();
    assert_eq!(ct.len(), plain.len() + 16);
    assert_ne!(&ct[..plain.len()], &plain[..]);
    assert_eq!(&r.decrypt(s, &gcm, aes, &ct).unwrap()[..], &plain[..]);
    let mut tampered = ct.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(
        Error::from(r.decrypt(s, &gcm, aes, &tampered).unwrap_err()).ck_rv(),
        CKR_ENCRYPTED_DATA_INVALID
    );

    // Find by label and class; a sensitive value stays inside.
    let found = r
        .find(
            s,
            &[
                Attr::bytes(CKA_LABEL, b"rsa"),
                Attr::ulong(CKA_CLASS, CKO_PRIVATE_KEY),
            ],
        )
        .unwrap();
    assert_eq!(found, vec![rsa_priv]);
    assert_eq!(
        r.find(s, &[Attr::bytes(CKA_LABEL, b"aes")]).unwrap(),
        vec![aes]
    );
    assert_eq!(
        r.get_attributes(s, aes, &[CKA_VALUE]).unwrap(),
        vec![AttrAnswer::Sensitive]
    );
    let mut rnd = [0u8; 64];
    r.random(&mut rnd).unwrap();
    assert_ne!(rnd, [0u8; 64]);

    // An HSM error comes back as the member's CK_RV.
    assert_eq!(
        r.destroy_object(s, MemberObject(0x1234_5678)).unwrap_err(),
        MemberError::Rv {
            member: MemberId(0),
            rv: CKR_OBJECT_HANDLE_INVALID
        }
    );
    let st = stats(&w, &d);
    assert!(st.requests_served > 20 && st.requests_failed >= 3, "{st:?}");
    assert_eq!(st.frames_refused, 0);
    // Without --fault-seed there is no fault controller to drive.
    assert_eq!(
        admin_request(
            &w.config(&d),
            &Request::Fault {
                verb: "crash".into()
            }
        )
        .unwrap(),
        Response::Err(CKR_FUNCTION_NOT_SUPPORTED)
    );
    // Nothing secret in the daemon's log.
    let log = d.log();
    for secret in ["so-pin-1234", "user-pin-1234", "the secret plaintext"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

/// (b) 64 threads share the member's 4 connections for 2 s: no error, every signature good.
#[test]
fn sixty_four_threads_share_four_connections() {
    let w = World::new();
    let d = w.daemon(&[]);
    let mut cfg = w.config(&d);
    cfg.connections = 4;
    let r = Arc::new(Remote::connect(MemberId(0), &cfg).unwrap());
    let s = init_and_login(&r);
    let (public, private) = ec_pair(&r, s, b"load", false);
    let point = ec_point(&r, s, public);
    let stop = Instant::now() + Duration::from_secs(2);
    let threads: Vec<_> = (0..64u32)
        .map(|t| {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                let mut done = Vec::new();
                let mut errors = Vec::new();
                let mut i = 0u64;
                while Instant::now() < stop {
                    let msg = format!("thread {t} message {i}").into_bytes();
                    match ecdsa_sign(&r, s, private, &msg) {
                        Ok(sig) => done.push((msg, sig)),
                        Err(e) => errors.push(e),
                    }
                    i += 1;
                }
                (done, errors)
            })
        })
        .collect();
    let mut signed = 0usize;
    for t in threads {
        let (done, errors) = t.join().expect("a signing thread");
        assert!(errors.is_empty(), "errors: {errors:?}");
        for (msg, sig) in &done {
            assert!(ecdsa_verifies(&point, msg, sig), "a bad signature");
        }
        signed += done.len();
    }
    assert!(signed >= 64, "only {signed} signatures");
    let st = stats(&w, &d);
    // The member's 4 connections and the one asking for the stats: no more were made.
    assert_eq!(st.connections_accepted, 5, "{st:?}");
    assert!(st.requests_served as usize >= signed, "{st:?}");
    assert_eq!(st.requests_failed, 0, "{st:?}");
}

/// (c) Clients under another CA, or with no certificate, are refused and the daemon says which;
/// a client that pins another CA refuses the daemon.
#[test]
fn wrong_ca_and_missing_certificates_are_refused_and_named() {
    let w = World::new();
    let d = w.daemon(&[]);

    let rogue = w.pki.rogue_client("mallory");
    let mut cfg = w.config(&d);
    cfg.cert = rogue.cert.clone();
    cfg.key = rogue.key.clone();
    let r = Remote::connect(MemberId(0), &cfg).unwrap();
    let e = r.open_session().unwrap_err();
    assert_eq!(Error::from(e.clone()).ck_rv(), CKR_DEVICE_REMOVED);
    assert!(
        unreachable_reason(&e).contains("server refused our client certificate"),
        "{e}"
    );
    // A refused connection is remembered: the next call fails with the same reason.
    let again = r.open_session().unwrap_err();
    assert!(unreachable_reason(&again).contains("refused our client certificate"));
    assert!(
        d.wait_for_log(
            "refused: client certificate not issued by the configured CA (UnknownIssuer)",
            LOG_WAIT
        ),
        "{}",
        d.log()
    );

    // No certificate at all.
    let none = link::client_config(&w.pki.customer_ca, None).unwrap();
    let name = link::server_name(&d.addr, None).unwrap();
    // TLS 1.3: the client's side of the handshake is over before the daemon judges it; the
    // refusal arrives as an alert on the first read.
    let (_link, mut reader) =
        link::connect(&d.addr, name, none, Duration::from_secs(10)).expect("TCP and TLS start");
    let err = reader.next_frame().expect_err("the daemon refuses");
    assert!(
        link::refusal(&err, link::Side::Client).contains("requires a client certificate"),
        "{err}"
    );
    assert!(
        d.wait_for_log("refused: client presented no certificate", LOG_WAIT),
        "{}",
        d.log()
    );
    let line = d
        .log()
        .lines()
        .find(|l| l.contains("client presented no certificate"))
        .expect("the line")
        .to_owned();
    assert!(
        line.contains("WARN") && line.contains("TLS handshake from 127.0.0.1:"),
        "{line}"
    );

    // The client pins the rogue CA: the daemon's chain does not lead there.
    let mut cfg = w.config(&d);
    cfg.ca = w.pki.rogue_ca.clone();
    let e = Remote::connect(MemberId(0), &cfg)
        .unwrap()
        .open_session()
        .unwrap_err();
    assert!(
        unreachable_reason(&e)
            .contains("server certificate not issued by the configured CA (UnknownIssuer)"),
        "{e}"
    );
    assert!(
        d.wait_for_log("refused: client refused the server certificate", LOG_WAIT),
        "{}",
        d.log()
    );

    // The right CA but the wrong name.
    let mut cfg = w.config(&d);
    cfg.server_name = Some("hsm9.example".into());
    let e = Remote::connect(MemberId(0), &cfg)
        .unwrap()
        .ping()
        .unwrap_err();
    assert!(
        unreachable_reason(&e).contains("not valid for the expected server name"),
        "{e}"
    );

    // The good client still gets in.
    w.remote(&d).ping().expect("a good client");
    assert!(stats(&w, &d).handshakes_refused >= 4);
}

/// Send `bytes` on a fresh mutual-TLS connection; the daemon must close it.
fn send_and_expect_close(w: &World, d: &Hsmd, bytes: &[u8]) {
    let cfg =
        link::client_config(&w.pki.customer_ca, Some((&w.client.cert, &w.client.key))).unwrap();
    let name = link::server_name(&d.addr, None).unwrap();
    let (l, mut reader) = link::connect(&d.addr, name, cfg, Duration::from_secs(10)).unwrap();
    l.send(bytes).unwrap();
    // The connection ends (cleanly or not) instead of answering.
    match reader.next_frame() {
        Ok(None) | Err(_) => {}
        Ok(Some((id, p))) => panic!("an answer {id}: {:?}", decode_response(&p)),
    }
}

/// (d) Malformed frames close their connection, never the daemon.
#[test]
fn malformed_frames_close_their_connection_only() {
    let w = World::new();
    let d = w.daemon(&[]);
    let r = w.remote(&d);
    let s = init_and_login(&r);
    let objects_before = r.token_status().unwrap().object_count;

    let mut wrong_version = encode_request(1, &Request::Ping).unwrap();
    wrong_version[3] = 2;
    let mut oversize = b"HPW\x01".to_vec();
    oversize.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut unknown_kind = encode_request(1, &Request::Ping).unwrap();
    unknown_kind[16] = 0xee;
    let cases: [(&[u8], &str); 4] = [
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "malformed frame: bad frame magic",
        ),
        (
            &oversize,
            "malformed frame: payload of 4294967295 bytes exceeds",
        ),
        (
            &wrong_version,
            "malformed frame: unsupported protocol version 2",
        ),
        (
            &unknown_kind,
            "undecodable request 1: unknown message kind 0xee",
        ),
    ];
    for (bytes, line) in cases {
        send_and_expect_close(&w, &d, bytes);
        assert!(d.wait_for_log(line, LOG_WAIT), "{line}:\n{}", d.log());
        // A fresh connection is served.
        w.remote(&d).ping().expect("the daemon still serves");
    }

    // Garbage before TLS, over plain TCP.
    let mut tcp = TcpStream::connect(&d.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"\x00\x01garbage that is not a TLS record\r\n\r\n")
        .unwrap();
    let mut sink = Vec::new();
    let _ = tcp.read_to_end(&mut sink); // ends: the daemon closed it
    assert!(
        d.wait_for_log("refused: client does not speak TLS 1.3", LOG_WAIT),
        "{}",
        d.log()
    );

    // The member's own connections were never touched, nor the store.
    assert_eq!(r.token_status().unwrap().object_count, objects_before);
    assert!(ecdsa_sign(&r, s, ec_pair(&r, s, b"after", false).1, b"m").is_ok());
    let st = stats(&w, &d);
    assert_eq!(st.frames_refused, 4, "{st:?}");
    assert!(st.handshakes_refused >= 1, "{st:?}");
}

/// (e) kill -9 under load: waiting calls fail at once with the transient error; after a
/// restart on the same port the member reconnects, old sessions are invalid, token keys stay.
#[test]
fn kill_nine_under_load_then_restart() {
    let w = World::new();
    let mut d = w.daemon(&[]);
    let mut cfg = w.config(&d);
    // Long enough that a call that hung would fail with "no answer", not "lost".
    cfg.timeout_ms = 30_000;
    let r = Arc::new(Remote::connect(MemberId(0), &cfg).unwrap());
    let s = init_and_login(&r);
    let (public, private) = ec_pair(&r, s, b"survivor", true);
    let point = ec_point(&r, s, public);

    let started = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let r = Arc::clone(&r);
            let started = Arc::clone(&started);
            std::thread::spawn(move || loop {
                match ecdsa_sign(&r, s, private, b"under load") {
                    Ok(_) => started.store(true, Ordering::SeqCst),
                    Err(e) => return e,
                }
            })
        })
        .collect();
    while !started.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    d.kill();
    let errors: Vec<Error> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut lost = 0;
    for e in &errors {
        assert_eq!(e.ck_rv(), CKR_DEVICE_REMOVED, "{e}");
        assert!(e.is_retryable(), "{e}");
        let reason = unreachable_reason(e);
        assert!(!reason.contains("no answer"), "a call hung: {reason}");
        lost += usize::from(reason.contains("lost"));
    }
    assert!(
        lost > 0,
        "no call was waiting when the daemon died: {errors:?}"
    );
    // Down: calls fail (fast, with the same error), they do not hang.
    let e = r.ping().unwrap_err();
    assert_eq!(Error::from(e).ck_rv(), CKR_DEVICE_REMOVED);

    d.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = r.ping() {
        unreachable_reason(&e);
        assert!(Instant::now() < deadline, "never reconnected: {e}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The old session belongs to the dead process.
    assert_eq!(
        ecdsa_sign(&r, s, private, b"old session").unwrap_err(),
        Error::Hsm {
            member: 0,
            rv: CKR_SESSION_HANDLE_INVALID
        }
    );
    let s2 = user_session(&r);
    let found = r
        .find(
            s2,
            &[
                Attr::bytes(CKA_LABEL, b"survivor"),
                Attr::ulong(CKA_CLASS, CKO_PRIVATE_KEY),
            ],
        )
        .unwrap();
    assert_eq!(found.len(), 1, "the token key survived kill -9");
    let sig = ecdsa_sign(&r, s2, found[0], b"after restart").unwrap();
    assert!(ecdsa_verifies(&point, b"after restart", &sig));
}

fn stat_line(out: &str, name: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

/// Call `f` until it stops failing for want of a connection (bounded).
fn through<T, E: Into<Error>>(mut f: impl FnMut() -> Result<T, E>) -> Result<T, Error> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f().map_err(Into::into) {
            Err(Error::MemberUnreachable { reason, .. }) if Instant::now() < deadline => {
                let _ = reason;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// (f) `hsmpool sim fault`: drop_connections really closes connections (the client
/// reconnects), crash and restart give CKR_DEVICE_REMOVED and then recover.
#[test]
fn cli_faults_drop_connections_crash_and_restart() {
    let w = World::new();
    let d = w.daemon(&["--fault-seed", "7", "--member", "0"]);
    let r = w.remote(&d);
    let s = init_and_login(&r);
    let (public, private) = ec_pair(&r, s, b"cli", true);
    let point = ec_point(&r, s, public);
    for _ in 0..8 {
        // Every one of the 4 connections in use.
        ecdsa_sign(&r, s, private, b"warm").unwrap();
    }

    let (ok, out, err) = w.cli(&d, &["fault", "drop_connections"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("drop_connections: done"), "{out}");
    assert!(
        d.wait_for_log("dropped 5 client connections", LOG_WAIT),
        "{}",
        d.log()
    );
    // The member reconnects by itself; its sessions went with the connections.
    assert_eq!(
        through(|| ecdsa_sign(&r, s, private, b"m")).unwrap_err(),
        Error::Hsm {
            member: 0,
            rv: CKR_SESSION_HANDLE_INVALID
        }
    );
    let s = user_session(&r);
    let sig = ecdsa_sign(&r, s, private, b"reconnected").unwrap();
    assert!(ecdsa_verifies(&point, b"reconnected", &sig));
    let (ok, out, _) = w.cli(&d, &["stats"]);
    assert!(ok);
    assert_eq!(stat_line(&out, "connections_dropped"), 5, "{out}");
    assert!(stat_line(&out, "connections_accepted") > 6, "{out}");

    // Crash: the member answers CKR_DEVICE_REMOVED until restarted.
    let (ok, out, err) = w.cli(&d, &["fault", "crash"]);
    assert!(ok, "{out}{err}");
    let e = through(|| r.ping()).unwrap_err();
    assert_eq!(
        e,
        Error::Hsm {
            member: 0,
            rv: CKR_DEVICE_REMOVED
        }
    );
    assert_eq!(
        through(|| r
            .open_session()
            .and_then(|s| r.login(s, Role::User, USER_PIN, None)))
        .unwrap_err()
        .ck_rv(),
        CKR_DEVICE_REMOVED
    );
    let (ok, out, err) = w.cli(&d, &["fault", "restart"]);
    assert!(ok, "{out}{err}");
    through(|| r.ping()).expect("up again");
    let s = user_session(&r);
    let found = r
        .find(
            s,
            &[
                Attr::bytes(CKA_LABEL, b"cli"),
                Attr::ulong(CKA_CLASS, CKO_PRIVATE_KEY),
            ],
        )
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(ecdsa_verifies(
        &point,
        b"x",
        &ecdsa_sign(&r, s, found[0], b"x").unwrap()
    ));
    let (ok, out, _) = w.cli(&d, &["stats"]);
    assert!(ok);
    assert!(stat_line(&out, "faults_injected") >= 2, "{out}");

    // A verb that is not one.
    let (ok, _, err) = w.cli(&d, &["fault", "explode"]);
    assert!(!ok);
    assert!(err.contains("CKR_ARGUMENTS_BAD"), "{err}");
    assert!(
        d.wait_for_log("unknown verb `explode`", LOG_WAIT),
        "{}",
        d.log()
    );
}

/// A held member: calls give up after the timeout (they never hang), administration still gets
/// through to release it, and the late answers are dropped harmlessly.
#[test]
fn a_held_member_times_out_and_release_still_gets_through() {
    let w = World::new();
    let d = w.daemon(&["--fault-seed", "11"]);
    let mut cfg = w.config(&d);
    cfg.timeout_ms = 300;
    let r = Remote::connect(MemberId(0), &cfg).unwrap();
    r.ping().expect("up");

    let (ok, out, err) = w.cli(&d, &["fault", "hold"]);
    assert!(ok, "{out}{err}");
    let e = r.ping().unwrap_err();
    assert!(
        unreachable_reason(&e).contains("no answer to Ping")
            && Error::from(e.clone()).is_retryable(),
        "{e}"
    );
    // The held operations occupy workers, not the connection threads: this gets through.
    let (ok, out, err) = w.cli(&d, &["fault", "release"]);
    assert!(ok, "{out}{err}");
    r.ping().expect("released");
    // Its connections survived the timeouts.
    assert_eq!(stats(&w, &d).connections_dropped, 0);
}
