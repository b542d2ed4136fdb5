//! Three SoftHSMv2 tokens as vendor-module members, each reached through our fault shim
//! (tests/c/fault_shim.c), under 64 threads signing for `HSMPOOL_FAULT_SECS` seconds (default
//! 60): one member at a time fails calls (CKR_DEVICE_ERROR, a throttling CKR_FUNCTION_FAILED,
//! CKR_TOKEN_NOT_PRESENT), hangs, is slowed down, or has every session reset under it, in a
//! seeded order. The application sees no error and every sampled signature verifies; a token
//! key made in the middle of it exists on every token afterwards, as SoftHSMv2's own module
//! (pkcs11-tool) and softhsm2-util see them, not through us.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_int, CString};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use cryptoki_sys::*;
use hsmpool_engine::cluster::ceremony::wrap_key_ceremony;
use hsmpool_engine::cluster::DEFAULT_WRAP_KEY_LABEL;
use hsmpool_engine::config::Config;
use hsmpool_engine::types::{AttrAnswer, OpKind, SlotId};
use hsmpool_engine::{Engine, Mechanism};
use hsmpool_tests::engine::ec_pair;
use hsmpool_tests::softhsm::{build_fault_shim, SoftHsmTokens, SOFTHSM};
use hsmpool_tests::{fault_seed, require_tool};
use parking_lot::Mutex;

const SO_PIN: &str = "12345678";
const PIN: &str = "87654321";
const THREADS: usize = 64;

/// The shim's control function (the engine loaded the same library: one copy of its state).
struct Shim {
    _lib: libloading::Library,
    control: unsafe extern "C" fn(*const c_char) -> c_int,
}

impl Shim {
    fn open(path: &Path) -> Shim {
        let lib = unsafe { libloading::Library::new(path) }.expect("the shim loads");
        let control = *unsafe {
            lib.get::<unsafe extern "C" fn(*const c_char) -> c_int>(b"hsmpool_shim_control\0")
        }
        .expect("the shim exports hsmpool_shim_control");
        Shim { _lib: lib, control }
    }

    fn set(&self, cmd: &str) {
        let c = CString::new(cmd).unwrap();
        assert_eq!(
            unsafe { (self.control)(c.as_ptr()) },
            0,
            "shim command {cmd:?}"
        );
    }
}

/// What the 64 threads saw.
#[derive(Default)]
struct Seen {
    signed: AtomicU64,
    verified: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// One seeded plan of faults: (member, command, seconds), one member at a time, an ok pause
/// between.
fn plan(seed: u64, secs: u64, members: usize) -> Vec<(usize, String, u64)> {
    let kinds = [
        "fail 30 300",  // CKR_DEVICE_ERROR on 30% of calls
        "fail 6 500",   // CKR_FUNCTION_FAILED (a throttling vendor) on half the calls
        "fail e0 1000", // CKR_TOKEN_NOT_PRESENT: the token is gone
        "hang",         // calls block until the fault ends
        "delay 40",     // every call 40 ms slower
        "reset",        // every session closed under us once
    ];
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    let mut t = 3; // a clean start
    let mut i = 0;
    while t + 6 < secs {
        let member = (i + next() as usize) % members;
        let kind = kinds[(next() % kinds.len() as u64) as usize];
        let len = if kind == "reset" { 1 } else { 3 + next() % 4 };
        out.push((member, kind.to_string(), len));
        t += len + 2;
        i += 1;
    }
    out
}

#[test]
fn sixty_four_threads_sign_through_failing_hanging_and_reset_members_without_an_error() {
    let tool = require_tool("pkcs11-tool");
    let util = require_tool("softhsm2-util");
    let seed = fault_seed();
    let secs: u64 = std::env::var("HSMPOOL_FAULT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    println!("fault seed {seed} (HSMPOOL_FAULT_SEED replays it), {secs} s");
    let dir = tempfile::tempdir().unwrap();
    let shim_path = build_fault_shim(dir.path());
    let tokens = SoftHsmTokens::create(dir.path(), 3, "faulty", SO_PIN, PIN);
    // Read by SoftHSMv2 and the shim in this process; this test binary has no other test.
    std::env::set_var("SOFTHSM2_CONF", &tokens.conf);
    std::env::set_var("HSMPOOL_SHIM_TARGET", SOFTHSM);
    std::env::set_var("HSMPOOL_SHIM_SEED", seed.to_string());
    let conf = format!(
        "[cluster]\nmin_replicas = 2\n{}",
        tokens.members_toml_via(&shim_path)
    );
    let cfg = Config::parse(&conf, "three SoftHSMv2 tokens through the fault shim").unwrap();

    // A key an operator made on token 1 directly (not extractable: it cannot be copied). It
    // must still be there after member 1 has been out and brought level again.
    let direct = Command::new(&tool)
        .args(["--module", SOFTHSM, "--token-label", &tokens.labels[1]])
        .args(["--login", "--pin", PIN, "--keygen", "--key-type", "AES:32"])
        .args(["--label", "made directly"])
        .env("SOFTHSM2_CONF", &tokens.conf)
        .output()
        .unwrap();
    assert!(
        direct.status.success(),
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );

    let members = hsmpool_engine::backend::open_members(&cfg).unwrap();
    wrap_key_ceremony(&members, DEFAULT_WRAP_KEY_LABEL, SO_PIN.as_bytes()).unwrap();
    drop(members);

    let e = Arc::new(Engine::new(cfg).unwrap());
    let s = e
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, CKU_USER, PIN.as_bytes(), None).unwrap();
    let shim = Shim::open(&shim_path);
    // A create whose answer is lost: member 0 makes the pair and answers CKR_DEVICE_ERROR;
    // the pair is made again elsewhere, and member 0 keeps no second one (it gets the copy).
    for slot in &tokens.slots {
        shim.set(&format!("{slot} lose 30 1000"));
    }
    shim.set(&format!("{} ok", tokens.slots[1]));
    shim.set(&format!("{} ok", tokens.slots[2]));
    ec_pair(&e, s, b"answer lost", true);
    shim.set(&format!("{} ok", tokens.slots[0]));
    assert!(
        e.member_status()[0].errors > 0,
        "member 0 was asked (and lost its answer): {:?}",
        e.member_status()
    );
    let (public, private) = ec_pair(&e, s, b"under fire", true);
    let point = match &e.get_attribute_value(s, public, &[CKA_EC_POINT]).unwrap()[0] {
        AttrAnswer::Value(v) => v[2..].to_vec(),
        other => panic!("EC point: {other:?}"),
    };

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (e, stop, seen, point) = (e.clone(), stop.clone(), seen.clone(), point.clone());
            std::thread::spawn(move || {
                let s = e
                    .open_session(SlotId(0), CKF_SERIAL_SESSION)
                    .expect("a session opens");
                let verifier = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let msg = format!("thread {t} message {n}");
                    let mut sig = [0u8; 64];
                    let r = e
                        .op_init(s, OpKind::Sign, Mechanism::plain(CKM_ECDSA_SHA256), private)
                        .and_then(|()| {
                            e.op_single(s, OpKind::Sign, msg.as_bytes(), Some(&mut sig))
                        });
                    match r {
                        Ok(len) => {
                            seen.signed.fetch_add(1, Ordering::Relaxed);
                            if n % 50 == 0 {
                                verifier
                                    .verify(msg.as_bytes(), &sig[..len])
                                    .expect("a sampled signature verifies");
                                seen.verified.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(err) => seen
                            .errors
                            .lock()
                            .push(format!("{err} ({:#x})", err.ck_rv())),
                    }
                    n += 1;
                }
                let _ = e.close_session(s);
            })
        })
        .collect();

    // The faults, one member at a time; a token key is made in the middle of them.
    let started = Instant::now();
    let mut made_mid_run = false;
    for (member, cmd, len) in plan(seed, secs, 3) {
        let slot = tokens.slots[member];
        println!(
            "{:>5.1}s member {member}: {cmd} for {len} s",
            started.elapsed().as_secs_f64()
        );
        shim.set(&format!("{slot} {cmd}"));
        std::thread::sleep(Duration::from_secs(len));
        shim.set(&format!("{slot} ok"));
        if !made_mid_run && started.elapsed() > Duration::from_secs(secs / 2) {
            // With one member just out of its fault (and perhaps not yet back): the key must
            // reach it anyway, when it is brought level.
            ec_pair(&e, s, b"made mid-run", true);
            made_mid_run = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    // Last, member 1 is out for a while and is brought level when it returns.
    shim.set(&format!("{} fail e0 1000", tokens.slots[1]));
    std::thread::sleep(Duration::from_secs(2));
    shim.set(&format!("{} ok", tokens.slots[1]));
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a signing thread");
    }
    assert!(
        made_mid_run,
        "the run was too short to make a key in its middle"
    );
    let errors = seen.errors.lock().clone();
    let (signed, verified) = (
        seen.signed.load(Ordering::Relaxed),
        seen.verified.load(Ordering::Relaxed),
    );
    let status = e.member_status();
    for m in &status {
        println!(
            "member {}: {} ops, {} errors, {} retries, {} failovers, {} re-authentications, \
             {} replicated",
            m.index, m.ops, m.errors, m.retries, m.failovers, m.reauths, m.replicated
        );
    }
    println!(
        "{signed} signatures, {verified} verified, {} errors",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} application-visible errors, the first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        signed > 1000 && verified > 0,
        "{signed} signed, {verified} verified"
    );
    assert!(
        status.iter().map(|m| m.errors).sum::<u64>() > 0,
        "the faults reached the members"
    );

    // Every member back and level; then each token, seen by SoftHSMv2 itself.
    let until = Instant::now() + Duration::from_secs(30);
    while e.member_status().iter().any(|m| m.health.name() != "up") {
        assert!(
            Instant::now() < until,
            "members still out: {:?}",
            e.member_status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    e.logout(s).unwrap();
    drop(e);
    let shown = Command::new(&util)
        .env("SOFTHSM2_CONF", &tokens.conf)
        .arg("--show-slots")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    for label in &tokens.labels {
        assert!(
            shown.contains(label.as_str()),
            "softhsm2-util shows {label}:\n{shown}"
        );
    }
    for label in &tokens.labels {
        let out = Command::new(&tool)
            .args(["--module", SOFTHSM, "--token-label", label])
            .args(["--login", "--pin", PIN, "--list-objects"])
            .env("SOFTHSM2_CONF", &tokens.conf)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let direct = text.matches("label:      made directly\n").count();
        assert_eq!(
            direct,
            usize::from(label == &tokens.labels[1]),
            "token {label}: the key made on token 1 directly:\n{text}"
        );
        for key in ["under fire", "made mid-run", "answer lost"] {
            assert_eq!(
                text.matches(&format!("label:      {key}\n")).count(),
                2,
                "token {label}: the {key:?} key pair:\n{text}"
            );
        }
    }
}
