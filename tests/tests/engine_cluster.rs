//! The engine over three in-process members with fault injection: failover with no
//! application-visible error, replicated creates with no orphan or duplicate, a login that
//! survives a member restart, session objects that die with their member, and resync.
//!
//! The daemon form of the same (three `hsmpool-hsmd` processes, killed and restarted for real)
//! is in tests/tests/cluster.rs; these run in-process so they are quick and replay exactly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use hsmpool_engine::cluster::Health;
use hsmpool_engine::config::Config;
use hsmpool_engine::types::{AttrAnswer, ObjectHandle, OpKind, SessionHandle, SlotId};
use hsmpool_engine::{Attr, Engine, Mechanism};
use hsmpool_member::Role;
use hsmpool_sim::member::SimMember;
use hsmpool_tests::engine::{backends, ec_pair, init_and_login_user, sim_members};

const SO: &[u8] = b"so-pin-1234";
const PIN: &[u8] = b"user-pin-1234";
const SLOT: SlotId = SlotId(0);

struct Lab {
    _dir: tempfile::TempDir,
    members: Vec<Arc<SimMember>>,
    engine: Engine,
    seed: u64,
}

fn seed() -> u64 {
    hsmpool_tests::fault_seed()
}

fn lab(toml: &str) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let seed = seed();
    println!("fault seed {seed} (HSMPOOL_FAULT_SEED={seed} replays the fault decisions)");
    let members = sim_members(dir.path(), seed, |c| {
        if let Some(f) = c.faults.as_mut() {
            f.max_hold = Duration::from_secs(5);
        }
    });
    let cfg = Config::parse(
        &format!("[cluster]\nprobe_interval_ms = 50\nslow_start_ms = 300\n{toml}\n"),
        "test",
    )
    .unwrap();
    let engine = Engine::with_backends(cfg, backends(&members)).unwrap();
    init_and_login_user(&engine, b"labs", SO, PIN);
    Lab {
        _dir: dir,
        members,
        engine,
        seed,
    }
}

fn sign(
    e: &Engine,
    s: SessionHandle,
    k: ObjectHandle,
    msg: &[u8],
) -> hsmpool_engine::Result<Vec<u8>> {
    e.op_init(s, OpKind::Sign, Mechanism::plain(CKM_ECDSA_SHA256), k)?;
    let mut out = vec![0u8; 64];
    let n = e.op_single(s, OpKind::Sign, msg, Some(&mut out))?;
    out.truncate(n);
    Ok(out)
}

fn verify(
    e: &Engine,
    s: SessionHandle,
    p: ObjectHandle,
    msg: &[u8],
    sig: &[u8],
) -> hsmpool_engine::Result<()> {
    e.op_init(s, OpKind::Verify, Mechanism::plain(CKM_ECDSA_SHA256), p)?;
    e.verify(s, msg, sig)
}

/// The EC point of a public key, read back, for an independent check with aws-lc.
fn ec_point(e: &Engine, s: SessionHandle, p: ObjectHandle) -> Vec<u8> {
    match &e.get_attribute_value(s, p, &[CKA_EC_POINT]).unwrap()[0] {
        AttrAnswer::Value(v) => v[2..].to_vec(), // DER OCTET STRING of 65 bytes
        other => panic!("no EC point: {other:?}"),
    }
}

/// A logged-in session on a member directly (to compare what members hold).
fn member_digests(m: &SimMember) -> Vec<(u64, [u8; 32])> {
    let ms = m.hsm().open_session();
    m.hsm().login(ms, Role::User, PIN).unwrap();
    let d = m.hsm().object_digests(ms).unwrap();
    m.hsm().close_session(ms);
    d
}

fn wait_all_up(e: &Engine) {
    let t0 = Instant::now();
    while e.member_status().iter().any(|m| m.health != Health::Up) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "members not back: {:?}",
            e.member_status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fault script, run on its own thread until `stop`: every round crashes and restarts
/// member 0 (its sessions are lost), partitions and repairs member 1, holds and releases
/// member 2, drops member 0's "connections", and makes member 1 fail 5% of operations.
fn chaos(lab: &Lab, stop: &AtomicBool) {
    let f = |i: usize| lab.members[i].hsm().faults().unwrap();
    let nap = |ms| std::thread::sleep(Duration::from_millis(ms));
    while !stop.load(Ordering::Relaxed) {
        f(0).crash();
        nap(250);
        f(0).restart();
        nap(150);
        f(1).partition();
        nap(250);
        f(1).repair();
        nap(150);
        f(2).hold();
        nap(250);
        f(2).release();
        nap(150);
        f(0).drop_connections();
        f(1).fail_with(CKR_DEVICE_ERROR, 0.05);
        nap(300);
        f(1).fail_with(CKR_DEVICE_ERROR, 0.0);
        nap(150);
    }
    for i in 0..3 {
        f(i).clear();
    }
}

#[test]
fn signing_from_16_threads_survives_crashes_partitions_holds_and_drops_with_no_error() {
    let lab = lab("");
    let e = &lab.engine;
    let s = e
        .open_session(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    let (p, k) = ec_pair(e, s, b"chaos", true);
    let point = ec_point(e, s, p);
    let stop = AtomicBool::new(false);
    let (ops, errors) = (AtomicU64::new(0), AtomicU64::new(0));
    let checked = AtomicU64::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| chaos(&lab, &stop));
        for t in 0..16u32 {
            let (ops, errors, checked, point) = (&ops, &errors, &checked, &point);
            sc.spawn(move || {
                let s = e.open_session(SLOT, CKF_SERIAL_SESSION).unwrap();
                let mut i = 0u64;
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(4) {
                    let msg = format!("thread {t} message {i}");
                    let r = sign(e, s, k, msg.as_bytes())
                        .and_then(|sig| verify(e, s, p, msg.as_bytes(), &sig).map(|_| sig));
                    match r {
                        Ok(sig) => {
                            if i % 16 == 0 {
                                let pk = aws_lc_rs::signature::UnparsedPublicKey::new(
                                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                                    point,
                                );
                                pk.verify(msg.as_bytes(), &sig)
                                    .expect("aws-lc verifies the signature");
                                checked.fetch_add(1, Ordering::Relaxed);
                            }
                            ops.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => {
                            eprintln!(
                                "thread {t}: application-visible error: {err} ({:#x})",
                                err.ck_rv()
                            );
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
                e.close_session(s).unwrap();
            });
        }
        std::thread::sleep(Duration::from_secs(4));
        stop.store(true, Ordering::Relaxed);
    });
    let status = e.member_status();
    for m in &status {
        println!(
            "member {}: {} ops {} errors {} retries {} failovers {} reauths {}",
            m.index, m.health, m.ops, m.errors, m.retries, m.failovers, m.reauths
        );
    }
    println!(
        "seed {}: {} sign+verify, {} checked with aws-lc, {} application-visible errors",
        lab.seed,
        ops.load(Ordering::Relaxed),
        checked.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0, "seed {}", lab.seed);
    assert!(ops.load(Ordering::Relaxed) > 100);
    // The faults really happened and were handled by retries and re-authentication.
    assert!(status.iter().map(|m| m.errors).sum::<u64>() > 0);
    assert!(
        status[0].reauths >= 2,
        "member 0 was re-authenticated after its crash"
    );
}

#[test]
fn key_generation_under_faults_leaves_no_orphan_no_duplicate_and_every_told_key_exists() {
    let lab = lab("");
    let e = &lab.engine;
    let stop = AtomicBool::new(false);
    let made: parking_lot::Mutex<Vec<(Vec<u8>, ObjectHandle)>> =
        parking_lot::Mutex::new(Vec::new());
    let errors = AtomicU64::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| chaos(&lab, &stop));
        for t in 0..8u32 {
            let (made, errors) = (&made, &errors);
            sc.spawn(move || {
                let s = e
                    .open_session(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
                    .unwrap();
                for i in 0..25 {
                    let label = format!("gen-{t}-{i}").into_bytes();
                    let r = e.generate_key(
                        s,
                        Mechanism::plain(CKM_AES_KEY_GEN),
                        vec![
                            Attr::bool(CKA_TOKEN, true),
                            Attr::ulong(CKA_VALUE_LEN, 32),
                            Attr::bool(CKA_ENCRYPT, true),
                            Attr::bytes(CKA_LABEL, &label),
                        ],
                    );
                    match r {
                        Ok(h) => made.lock().push((label, h)),
                        Err(err) => {
                            eprintln!("generate {t}/{i}: {err}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        // Faults run while the workers do; they stop once every worker is done.
        sc.spawn(|| {
            while made.lock().len() + (errors.load(Ordering::Relaxed) as usize) < 200 {
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, Ordering::Relaxed);
        });
    });
    println!(
        "seed {}: {} keys, {} errors",
        lab.seed,
        made.lock().len(),
        errors.load(Ordering::Relaxed)
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0, "seed {}", lab.seed);
    wait_all_up(e);
    // Every member holds the same objects, byte for byte.
    let d0 = member_digests(&lab.members[0]);
    assert_eq!(
        d0.len(),
        200,
        "200 keys, no orphan, no duplicate (seed {})",
        lab.seed
    );
    assert_eq!(d0, member_digests(&lab.members[1]), "seed {}", lab.seed);
    assert_eq!(d0, member_digests(&lab.members[2]), "seed {}", lab.seed);
    // Every key the application was told exists is found by its label exactly once, and works.
    let s = e.open_session(SLOT, CKF_SERIAL_SESSION).unwrap();
    for (label, h) in made.lock().iter() {
        e.find_objects_init(s, vec![Attr::bytes(CKA_LABEL, label)])
            .unwrap();
        let found = e.find_objects(s, 10).unwrap();
        e.find_objects_final(s).unwrap();
        assert_eq!(found, vec![*h], "{}", String::from_utf8_lossy(label));
    }
}

#[test]
fn a_login_made_before_a_member_restarted_still_works_after_it() {
    let lab = lab("");
    let e = &lab.engine;
    let s = e
        .open_session(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    let (p, k) = ec_pair(e, s, b"restart", true);
    // Only member 0 takes traffic, then it crashes and restarts: its sessions are gone.
    e.drain_member(1, true).unwrap();
    e.drain_member(2, true).unwrap();
    let before = e.member_status()[0].epoch;
    let f = lab.members[0].hsm().faults().unwrap();
    f.crash();
    f.restart();
    let sig = sign(e, s, k, b"after the restart").expect("signs with no application action");
    verify(e, s, p, b"after the restart", &sig).unwrap();
    assert!(
        e.member_status()[0].epoch > before,
        "the pool was re-established"
    );
    // A token key made before the restart, and one after, both work; the find still sees them.
    let (_, k2) = ec_pair(e, s, b"restart-2", true);
    sign(e, s, k2, b"x").unwrap();
}

#[test]
fn a_session_key_lives_on_one_member_and_dies_with_it() {
    let lab = lab("");
    let e = &lab.engine;
    let s = e
        .open_session(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    let (_, k) = ec_pair(e, s, b"session", false);
    sign(e, s, k, b"x").unwrap();
    // Which member holds it: the one whose digest list... session objects have none; find the
    // member by crashing each in turn until signing fails.
    let home = (0..3)
        .find(|i| {
            let f = lab.members[*i].hsm().faults().unwrap();
            f.partition();
            let r = sign(e, s, k, b"y");
            f.repair();
            r.is_err()
        })
        .expect("one member holds the session key");
    // While its member is merely unreachable the key is unavailable, not lost; after the member
    // restarts (its sessions gone) the key is gone for good: CKR_KEY_HANDLE_INVALID.
    wait_all_up(e);
    sign(e, s, k, b"z").unwrap();
    let f = lab.members[home].hsm().faults().unwrap();
    f.crash();
    f.restart();
    // Let the probe notice (or the first call): the key is reported lost either way.
    let err = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            sign(e, s, k, b"w").err()
        })
        .expect("the session key is gone");
    assert_eq!(err.ck_rv(), CKR_KEY_HANDLE_INVALID, "{err}");
    // Token keys are unaffected.
    let (_, tk) = ec_pair(e, s, b"token", true);
    sign(e, s, tk, b"v").unwrap();
}

#[test]
fn a_member_that_missed_creates_and_destroys_is_brought_level_before_taking_traffic() {
    let lab = lab("");
    let e = &lab.engine;
    let s = e
        .open_session(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    let (_, doomed) = ec_pair(e, s, b"doomed", true);
    let f = lab.members[2].hsm().faults().unwrap();
    f.partition();
    // Let the probe open its circuit.
    let t0 = Instant::now();
    while e.member_status()[2].health == Health::Up {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, k) = ec_pair(e, s, b"while-away", true);
    e.destroy_object(s, doomed).unwrap();
    e.set_attribute_value(s, k, vec![Attr::bytes(CKA_LABEL, b"renamed")])
        .unwrap();
    f.repair();
    wait_all_up(e);
    assert_eq!(
        member_digests(&lab.members[0]),
        member_digests(&lab.members[2])
    );
    let st = &e.member_status()[2];
    assert!(st.replicated >= 2 && st.dropped >= 1, "{st:?}");
}

#[test]
fn a_token_create_that_reaches_too_few_members_is_rolled_back_everywhere() {
    let lab = lab("replicate_wait_ms = 200"); // default min_replicas = 2
    let e = &lab.engine;
    let s = e
        .open_session(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    for i in [1, 2] {
        lab.members[i].hsm().faults().unwrap().partition();
    }
    let t0 = Instant::now();
    while e
        .member_status()
        .iter()
        .filter(|m| m.health == Health::Up)
        .count()
        > 1
    {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = member_digests(&lab.members[0]);
    let r = e.generate_key(
        s,
        Mechanism::plain(CKM_AES_KEY_GEN),
        vec![Attr::bool(CKA_TOKEN, true), Attr::ulong(CKA_VALUE_LEN, 32)],
    );
    assert_eq!(r.unwrap_err().ck_rv(), CKR_DEVICE_ERROR);
    assert_eq!(member_digests(&lab.members[0]), before, "rolled back");
    // A session key needs one member only.
    e.generate_key(
        s,
        Mechanism::plain(CKM_AES_KEY_GEN),
        vec![Attr::ulong(CKA_VALUE_LEN, 32)],
    )
    .unwrap();
}

#[test]
fn finds_and_key_checks_are_served_from_the_cache_and_invalidated_by_changes() {
    let lab = lab("find_cache_ttl_ms = 60000");
    let e = &lab.engine;
    let s = e
        .open_session(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    let find = |label: &[u8]| {
        e.find_objects_init(s, vec![Attr::bytes(CKA_LABEL, label)])
            .unwrap();
        let v = e.find_objects(s, 10).unwrap();
        e.find_objects_final(s).unwrap();
        v
    };
    assert!(find(b"cached").is_empty());
    let (_, k) = ec_pair(e, s, b"cached", true);
    assert_eq!(find(b"cached").len(), 2, "a create through us invalidates");
    let (hits0, keys0) = e.cache_hits();
    for _ in 0..10 {
        assert_eq!(find(b"cached").len(), 2);
        sign(e, s, k, b"m").unwrap();
    }
    let (hits1, keys1) = e.cache_hits();
    assert_eq!(hits1 - hits0, 10);
    assert!(keys1 - keys0 >= 9);
    e.set_attribute_value(s, k, vec![Attr::bytes(CKA_LABEL, b"other")])
        .unwrap();
    assert_eq!(
        find(b"cached").len(),
        1,
        "an attribute change through us invalidates"
    );
    e.set_attribute_value(s, k, vec![Attr::bool(CKA_SIGN, false)])
        .unwrap();
    assert_eq!(
        sign(e, s, k, b"m").unwrap_err().ck_rv(),
        CKR_KEY_FUNCTION_NOT_PERMITTED,
        "a key check is not served from a stale cache"
    );
    // The engine's own attribute is not the application's to set.
    assert_eq!(
        e.generate_key(
            s,
            Mechanism::plain(CKM_AES_KEY_GEN),
            vec![
                Attr::ulong(CKA_VALUE_LEN, 32),
                Attr::ulong(hsmpool_member::types::CKA_HSMPOOL_OBJECT_ID, 5)
            ],
        )
        .unwrap_err()
        .ck_rv(),
        CKR_ATTRIBUTE_TYPE_INVALID
    );
}

#[test]
fn token_set_attributes_travel_with_every_replica_and_no_application_template_sets_them() {
    let lab = lab("");
    let e = &lab.engine;
    wait_all_up(e);
    let s = e
        .open_session(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.generate_key(
        s,
        Mechanism::plain(CKM_AES_KEY_GEN),
        vec![
            Attr::bool(CKA_TOKEN, true),
            Attr::ulong(CKA_VALUE_LEN, 32),
            Attr::bytes(CKA_LABEL, b"replicated"),
        ],
    )
    .unwrap();
    // Replication copies every attribute: each member's copy says what the token set on the
    // original (the refusal below is on the application's templates, not on this path).
    let types = [
        CKA_LOCAL,
        CKA_KEY_GEN_MECHANISM,
        CKA_ALWAYS_SENSITIVE,
        CKA_NEVER_EXTRACTABLE,
        CKA_UNIQUE_ID,
    ];
    let copies: Vec<Vec<AttrAnswer>> = lab
        .members
        .iter()
        .map(|m| {
            let ms = m.hsm().open_session();
            m.hsm().login(ms, Role::User, PIN).unwrap();
            let ids = m
                .hsm()
                .find(ms, &[Attr::bytes(CKA_LABEL, b"replicated")])
                .unwrap();
            assert_eq!(ids.len(), 1, "one copy on each member");
            let answers = m.hsm().get_attributes(ms, ids[0], &types).unwrap();
            m.hsm().close_session(ms);
            answers
        })
        .collect();
    assert_eq!(copies[0][0], AttrAnswer::Value(vec![1]), "CKA_LOCAL");
    assert_eq!(
        copies[0][1],
        AttrAnswer::Value(CKM_AES_KEY_GEN.to_ne_bytes().to_vec()),
        "CKA_KEY_GEN_MECHANISM"
    );
    assert!(
        copies.iter().all(|c| *c == copies[0]),
        "every replica carries the same token-set attributes: {copies:?}"
    );
    // An application template naming one is refused, whatever the value.
    for value in [true, false] {
        let r = e.generate_key(
            s,
            Mechanism::plain(CKM_AES_KEY_GEN),
            vec![
                Attr::bool(CKA_TOKEN, true),
                Attr::ulong(CKA_VALUE_LEN, 32),
                Attr::bool(CKA_LOCAL, value),
            ],
        );
        assert_eq!(
            r.unwrap_err().ck_rv(),
            CKR_ATTRIBUTE_READ_ONLY,
            "CKA_LOCAL {value}"
        );
    }
}
