use super::*;
use crate::hsm::Role;
use crate::types::{Attr, Mechanism};
use hsmpool_wire::{InputKind, Secret, VersionInfo, PROTOCOL};

const SO_PIN: &[u8] = b"so-pin-1234";
const USER_PIN: &[u8] = b"user-pin-1234";

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn arguments_parse_with_defaults() {
    let c = parse_args(&args("--data /d --cert c.pem --key k.pem --ca ca.pem")).unwrap();
    assert_eq!(c.hsm.data_dir, PathBuf::from("/d"));
    assert_eq!(c.listen, "127.0.0.1:0");
    assert!(c.hsm.timing.is_none() && c.hsm.faults.is_none());
    assert_eq!(c.hsm.pin_iterations, 100_000);
    assert_eq!((c.workers, c.max_connections), (64, 256));

    let c = parse_args(&args(
        "--data /d --cert c --key k --ca a --listen 127.0.0.1:7000 --timing hsm1.medium \
         --fault-seed 42 --member 3 --pin-iterations 1000 --port-file /p --log debug --workers 8",
    ))
    .unwrap();
    assert_eq!(c.listen, "127.0.0.1:7000");
    assert_eq!(c.hsm.timing, Some(TimingConfig::cloudhsm_hsm1_medium()));
    assert_eq!(c.hsm.faults, Some(FaultConfig::new(FaultSeed(42), 3)));
    assert_eq!(c.hsm.pin_iterations, 1000);
    assert_eq!(c.port_file, Some(PathBuf::from("/p")));
    assert_eq!(c.log.as_deref(), Some("debug"));
    assert_eq!(c.workers, 8);
}

#[test]
fn bad_arguments_say_which() {
    for (line, expect) in [
        ("--cert c --key k --ca a", "--data is required"),
        ("--data d --key k --ca a", "--cert is required"),
        ("--data d --cert c --key k --ca a --timing fast", "--timing"),
        (
            "--data d --cert c --key k --ca a --fault-seed x",
            "--fault-seed",
        ),
        (
            "--data d --cert c --key k --ca a --pin-iterations 0",
            "--pin-iterations",
        ),
        ("--data d --cert c --key k --ca a --workers 0", "--workers"),
        ("--data d --cert c --key k --ca", "--ca needs a value"),
        ("--data d --frobnicate", "--frobnicate"),
    ] {
        let e = parse_args(&args(line)).unwrap_err();
        assert!(e.contains(expect), "{line}: {e}");
    }
}

#[test]
fn port_file_is_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("port");
    let addr: SocketAddr = "127.0.0.1:4567".parse().unwrap();
    write_port_file(&p, addr).unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "127.0.0.1:4567\n");
    // Only the file itself is left: the temporary was renamed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// The daemon's shared state over a fresh HSM, without sockets.
fn shared(faults: bool) -> (tempfile::TempDir, Shared) {
    let dir = tempfile::tempdir().unwrap();
    let d = shared_in(dir.path(), faults);
    (dir, d)
}

fn shared_in(dir: &Path, faults: bool) -> Shared {
    shared_masked(dir, faults, 0x5a5a_0000_0000_0000)
}

fn shared_masked(dir: &Path, faults: bool, mask: u64) -> Shared {
    let mut cfg = HsmConfig::new(dir.to_path_buf());
    cfg.pin_iterations = 1;
    if faults {
        cfg.faults = Some(FaultConfig::new(FaultSeed(7), 0));
    }
    Shared {
        member: SimMember::serving(Hsm::open(cfg).unwrap(), mask),
        links: Mutex::new(HashMap::new()),
        next_link: AtomicU64::new(1),
        connection_threads: AtomicUsize::new(0),
        counters: Counters::default(),
    }
}

fn handle(r: Response) -> u64 {
    match r {
        Response::Handle(h) => h,
        other => panic!("not a handle: {other:?}"),
    }
}

fn user_session(d: &Shared) -> u64 {
    assert_eq!(
        d.run(Request::InitToken {
            so_pin: Secret::from_slice(SO_PIN),
            label: [b' '; 32],
        }),
        Response::Ok
    );
    let so = handle(d.run(Request::OpenSession));
    let login = |session, role, pin: &[u8]| Request::Login {
        session,
        role,
        pin: Secret::from_slice(pin),
        username: None,
    };
    assert_eq!(d.run(login(so, Role::Officer, SO_PIN)), Response::Ok);
    assert_eq!(
        d.run(Request::InitPin {
            session: so,
            pin: Secret::from_slice(USER_PIN),
        }),
        Response::Ok
    );
    let us = handle(d.run(Request::OpenSession));
    assert_eq!(d.run(login(us, Role::User, USER_PIN)), Response::Ok);
    us
}

#[test]
fn requests_reach_the_hsm_and_errors_come_back_as_ck_rv() {
    let (_dir, d) = shared(false);
    let ms = user_session(&d);
    let key = handle(d.run(Request::GenerateKey {
        session: ms,
        mech: Mechanism::plain(CKM_GENERIC_SECRET_KEY_GEN),
        template: vec![Attr::ulong(CKA_VALUE_LEN, 32), Attr::bool(CKA_SIGN, true)],
    }));
    let sign = |session| Request::Sign {
        session,
        mech: Mechanism::plain(CKM_SHA256_HMAC),
        key,
        input: InputKind::Message,
        data: b"hello".to_vec(),
    };
    let Response::Bytes(mac) = d.run(sign(ms)) else {
        panic!("no signature");
    };
    assert_eq!(mac.len(), 32);
    assert_eq!(
        d.run(Request::Verify {
            session: ms,
            mech: Mechanism::plain(CKM_SHA256_HMAC),
            key,
            input: InputKind::Message,
            data: b"hello".to_vec(),
            signature: mac,
        }),
        Response::Ok
    );
    match d.run(Request::Random { len: 17 }) {
        Response::Secret(r) => assert_eq!(r.len(), 17),
        other => panic!("random: {other:?}"),
    }
    assert_eq!(
        d.run(Request::DestroyObject {
            session: ms,
            object: 12345,
        }),
        Response::Err(CKR_OBJECT_HANDLE_INVALID)
    );
}

#[test]
fn session_handles_are_masked_so_a_restart_invalidates_them() {
    let (_dir, d) = shared(false);
    let ms = user_session(&d);
    // On the wire the handle carries the mask; the HSM's own number does not work.
    assert_eq!(ms & 0xffff_ffff_0000_0000, d.member.session_mask());
    let unmasked = ms ^ d.member.session_mask();
    assert_eq!(
        d.run(Request::Find {
            session: unmasked,
            template: vec![],
        }),
        Response::Err(CKR_SESSION_HANDLE_INVALID)
    );
    // A daemon process with another mask does not know this handle, even though the HSM
    // numbers its sessions the same way.
    let dir2 = tempfile::tempdir().unwrap();
    let other = shared_masked(dir2.path(), false, 0x1234_0000_0000_0000);
    user_session(&other);
    assert_eq!(
        other.run(Request::Find {
            session: ms,
            template: vec![],
        }),
        Response::Err(CKR_SESSION_HANDLE_INVALID)
    );
    assert!(matches!(
        d.run(Request::Find {
            session: ms,
            template: vec![],
        }),
        Response::Handles(_)
    ));
}

#[test]
fn stats_count_what_was_served() {
    let (_dir, d) = shared(true);
    let st = d.stats();
    assert_eq!(st, DaemonStats::default());
    d.member.hsm().faults().unwrap().crash();
    assert_eq!(
        d.run(Request::Random { len: 4 }),
        Response::Err(CKR_DEVICE_REMOVED)
    );
    assert_eq!(d.stats().faults_injected, 1);
}

#[test]
fn the_clone_path_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = [dir.path().join("a"), dir.path().join("b")];
    crate::cluster::provision(&dirs).unwrap();
    let a = shared_in(&dirs[0], false);
    let b = shared_in(&dirs[1], false);
    let (sa, sb) = (user_session(&a), user_session(&b));
    let key = handle(a.run(Request::GenerateKey {
        session: sa,
        mech: Mechanism::plain(CKM_GENERIC_SECRET_KEY_GEN),
        template: vec![
            Attr::ulong(CKA_VALUE_LEN, 32),
            Attr::bool(CKA_SIGN, true),
            Attr::bool(CKA_TOKEN, true),
        ],
    }));
    let Response::Bytes(blob) = a.run(Request::ExportClone {
        session: sa,
        object: key,
    }) else {
        panic!("no clone blob");
    };
    assert_eq!(
        b.run(Request::ImportClone {
            session: sb,
            blob: blob.clone(),
        }),
        Response::Handle(key)
    );
    let digests = |d: &Shared, session| match d.run(Request::ObjectDigests { session }) {
        Response::Digests(v) => v,
        other => panic!("digests: {other:?}"),
    };
    let da = digests(&a, sa);
    assert!(da.iter().any(|(id, _)| *id == key));
    assert_eq!(da, digests(&b, sb));
    assert_eq!(
        b.run(Request::DropReplica {
            session: sb,
            object: key,
        }),
        Response::Ok
    );
    assert!(digests(&b, sb).iter().all(|(id, _)| *id != key));
    // A blob changed in transit is refused.
    let mut bad = blob;
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        b.run(Request::ImportClone {
            session: sb,
            blob: bad,
        }),
        Response::Err(_)
    ));
}

#[test]
fn the_handshake_names_the_daemon_and_refuses_another_protocol() {
    let (_dir, d) = shared(true);
    match d.run(Request::Version { protocol: PROTOCOL }) {
        Response::Version(v) => {
            assert!(v.daemon.starts_with("hsmpool-hsmd "), "{v:?}");
            assert_eq!(v.protocol, PROTOCOL);
            assert_eq!(
                v.capabilities,
                VersionInfo::REPLICATION
                    | VersionInfo::USERS
                    | VersionInfo::AUDIT
                    | VersionInfo::FAULTS
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        d.run(Request::Version {
            protocol: PROTOCOL + 1
        }),
        Response::Err(CKR_DEVICE_ERROR)
    );
    let (_dir, quiet) = shared(false);
    match quiet.run(Request::Version { protocol: PROTOCOL }) {
        Response::Version(v) => {
            assert_eq!(
                v.capabilities,
                VersionInfo::REPLICATION | VersionInfo::USERS | VersionInfo::AUDIT
            )
        }
        other => panic!("{other:?}"),
    }
}
