//! Administration as CloudHSM teaches it, without its traps (issue 14): users kept the same on
//! every member, a user change made while a member was away reaching it before it serves,
//! lockout counted once for the whole cluster, and what an officer may not do to the last
//! officer. Each rule runs against three in-process members and against three `hsmpool-hsmd`
//! daemons; each checks the exact `CK_RV`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use hsmpool_engine::cluster::Health;
use hsmpool_engine::config::Config;
use hsmpool_engine::types::{SessionHandle, SlotId};
use hsmpool_engine::Engine;
use hsmpool_member::users::{
    CKR_HSMPOOL_LAST_OFFICER, CKR_HSMPOOL_USER_EXISTS, CKR_HSMPOOL_USER_NOT_FOUND,
};
use hsmpool_member::{Role, UserChange};
use hsmpool_sim::member::SimMember;
use hsmpool_tests::daemons::DaemonCluster;
use hsmpool_tests::engine::{backends, ec_pair, init_and_login_user, sign, sim_members};
use zeroize::Zeroizing;

const SO: &[u8] = b"so-pin-1234";
const PIN: &[u8] = b"user-pin-1234";
const SLOT: SlotId = SlotId(0);
const CLUSTER: &str = "probe_interval_ms = 50\nslow_start_ms = 100\nmin_replicas = 2";

/// Three members, in process or as daemons, and engines over any of them in any order (each
/// engine is another application process's view of the same cluster).
enum Setup {
    InProcess {
        _dir: tempfile::TempDir,
        members: Vec<Arc<SimMember>>,
    },
    Daemons(DaemonCluster),
}

impl Setup {
    fn in_process() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let members = sim_members(dir.path(), hsmpool_tests::fault_seed(), |_| {});
        Setup::InProcess { _dir: dir, members }
    }

    fn daemons() -> Setup {
        Setup::Daemons(DaemonCluster::start(
            3,
            hsmpool_tests::fault_seed(),
            CLUSTER,
        ))
    }

    /// An engine over members `which`, in that order.
    fn engine(&self, which: &[usize]) -> Engine {
        match self {
            Setup::InProcess { members, .. } => {
                let cfg = Config::parse(&format!("[cluster]\n{CLUSTER}\n"), "test").unwrap();
                let chosen: Vec<Arc<SimMember>> =
                    which.iter().map(|i| Arc::clone(&members[*i])).collect();
                Engine::with_backends(cfg, backends(&chosen)).unwrap()
            }
            Setup::Daemons(dc) => {
                Engine::new(Config::parse(&dc.config_text(which, CLUSTER), "test").unwrap())
                    .unwrap()
            }
        }
    }

    /// Member `i` stops answering (in process: a crash fault; a daemon: SIGKILL).
    fn down(&mut self, i: usize) {
        match self {
            Setup::InProcess { members, .. } => members[i].hsm().faults().unwrap().crash(),
            Setup::Daemons(dc) => dc.daemons[i].kill9(),
        }
    }

    /// Member `i` answers again (a daemon restarts over its store, on the same port).
    fn up(&mut self, i: usize) {
        match self {
            Setup::InProcess { members, .. } => members[i].hsm().faults().unwrap().restart(),
            Setup::Daemons(dc) => dc.daemons[i].restart(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Setup::InProcess { .. } => "in-process",
            Setup::Daemons(_) => "daemons",
        }
    }
}

/// The whole cluster, initialised (SO PIN, default user PIN), and an engine over all three
/// members with a session logged in as the crypto officer.
fn officer(setup: &Setup) -> (Engine, SessionHandle) {
    let e = setup.engine(&[0, 1, 2]);
    let s = init_and_login_user(&e, b"admin", SO, PIN);
    e.logout(s).unwrap();
    e.login(s, CKU_SO, SO, None).unwrap();
    (e, s)
}

fn rv<T>(r: hsmpool_engine::Result<T>) -> CK_RV {
    match r {
        Ok(_) => CKR_OK,
        Err(e) => e.ck_rv(),
    }
}

fn pw(p: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(p.as_bytes().to_vec())
}

fn create(name: &str, role: Role, password: &str) -> UserChange {
    UserChange::Create {
        name: name.into(),
        role,
        password: pw(password),
    }
}

/// Log in as a crypto user with `pin` on a new session of `e`: the `CK_RV`, and the session
/// left logged in when it worked.
fn user_login(e: &Engine, pin: &str) -> (CK_RV, SessionHandle) {
    let s = e
        .open_session(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    (rv(e.login(s, CKU_USER, pin.as_bytes(), None)), s)
}

/// `pin` logs in on `e` and signs with a new session key.
fn logs_in_and_signs(e: &Engine, pin: &str) {
    let (r, s) = user_login(e, pin);
    assert_eq!(r, CKR_OK, "{pin:?} logs in");
    let (_, k) = ec_pair(e, s, b"admin-test", false);
    assert_eq!(sign(e, s, CKM_ECDSA_SHA256, k, b"hello").len(), 64);
    e.logout(s).unwrap();
    e.close_session(s).unwrap();
}

/// Wait until every member of `e` is up (a returning member is brought level first).
fn all_up(e: &Engine, what: &str) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let st = e.member_status();
        if st.iter().all(|m| m.health == Health::Up) {
            return;
        }
        assert!(Instant::now() < until, "{what}: members not back: {st:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn a_user_change_reaches_every_member(setup: &Setup) {
    let (e, _so) = officer(setup);
    let report = e
        .change_user(&create("alice", Role::User, "alice-pw-1"))
        .unwrap();
    assert_eq!(report.applied, vec![0, 1, 2], "{}", setup.name());
    assert!(report.pending.is_empty());
    // Each member alone knows her: an application configured with that member only logs in
    // and signs.
    for i in 0..3 {
        logs_in_and_signs(&setup.engine(&[i]), "alice:alice-pw-1");
    }
    // What an officer's change may not do, each with its exact code; nothing changes.
    let refused = [
        (
            create("alice", Role::User, "other-pw"),
            CKR_HSMPOOL_USER_EXISTS,
        ),
        (
            UserChange::Password {
                name: "nobody".into(),
                password: pw("whatever-1"),
            },
            CKR_HSMPOOL_USER_NOT_FOUND,
        ),
        (
            UserChange::Delete {
                name: "admin".into(),
                force: true,
            },
            CKR_HSMPOOL_LAST_OFFICER,
        ),
        (
            UserChange::Lock {
                name: "admin".into(),
            },
            CKR_HSMPOOL_LAST_OFFICER,
        ),
        (
            UserChange::SetRole {
                name: "admin".into(),
                role: Role::User,
            },
            CKR_HSMPOOL_LAST_OFFICER,
        ),
        (
            create("bad:name", Role::User, "pw-12345"),
            CKR_ARGUMENTS_BAD,
        ),
        (create("bob", Role::User, "pw"), CKR_PIN_LEN_RANGE),
    ];
    for (change, want) in refused {
        assert_eq!(
            rv(e.change_user(&change)),
            want,
            "{change:?} ({})",
            setup.name()
        );
    }
    // A crypto user cannot change users.
    let (r, us) = user_login(&setup.engine(&[0, 1, 2]), "alice:alice-pw-1");
    assert_eq!(r, CKR_OK);
    let _ = us;
    let as_user = setup.engine(&[1, 2, 0]);
    let (r, _) = user_login(&as_user, "alice:alice-pw-1");
    assert_eq!(r, CKR_OK);
    assert_eq!(
        rv(as_user.change_user(&create("mallory", Role::Officer, "mallory-pw"))),
        CKR_USER_NOT_LOGGED_IN
    );
    // The list shows her once, as every member holds her.
    let users = e.users().unwrap();
    assert!(users
        .users
        .iter()
        .any(|u| u.name == "alice" && u.role == Role::User));
    let sets = e.member_users().unwrap();
    assert_eq!(sets.len(), 3);
    let first = sets[0].1.as_ref().unwrap();
    for (i, set) in &sets {
        assert_eq!(
            set.as_ref().unwrap(),
            first,
            "member {i} holds the same users"
        );
    }
}

fn a_member_away_during_user_changes_takes_them_before_it_serves(setup: &mut Setup) {
    let (e, so) = officer(setup);
    setup.down(2);
    let report = e
        .change_user(&create("bob", Role::User, "bob-pw-1"))
        .unwrap();
    assert_eq!(report.applied, vec![0, 1], "{}", setup.name());
    assert_eq!(report.pending, vec![2]);
    e.change_user(&UserChange::Password {
        name: "bob".into(),
        password: pw("bob-pw-2"),
    })
    .unwrap();
    e.change_user(&create("carol", Role::User, "carol-pw-1"))
        .unwrap();
    e.change_user(&UserChange::Delete {
        name: "carol".into(),
        force: false,
    })
    .unwrap();
    // C_InitPIN while it is away too: the default user's new PIN.
    e.init_pin(so, b"user-pin-5678").unwrap();
    setup.up(2);
    all_up(&e, setup.name());
    // Configured with member 2 alone, an application logs in with the new passwords and
    // signs; the old ones and the deleted user are refused.
    let alone = setup.engine(&[2]);
    logs_in_and_signs(&alone, "bob:bob-pw-2");
    logs_in_and_signs(&alone, "user-pin-5678");
    assert_eq!(user_login(&alone, "bob:bob-pw-1").0, CKR_PIN_INCORRECT);
    assert_eq!(user_login(&alone, "carol:carol-pw-1").0, CKR_PIN_INCORRECT);
    assert_eq!(
        user_login(&alone, std::str::from_utf8(PIN).unwrap()).0,
        CKR_PIN_INCORRECT
    );
}

fn five_wrong_pins_over_members_and_processes_lock_everywhere(setup: &Setup) {
    let (admin, so) = officer(setup);
    admin
        .change_user(&create("dave", Role::User, "dave-pw-1"))
        .unwrap();
    admin.logout(so).unwrap();
    // Two applications that see the members in different orders, so their logins are
    // checked first by different members, and a third in another process.
    let p1 = setup.engine(&[0, 1, 2]);
    let p2 = setup.engine(&[2, 1, 0]);
    let default_pin = std::str::from_utf8(PIN).unwrap();
    let flags = |i: usize| setup.engine(&[i]).token_info(SLOT).unwrap().flags;
    for n in 1..=5 {
        if n == 3 {
            // A third application, in a process of its own: the tool, logging in as a user.
            for pin in ["wrong-pin-1", "dave:wrong-pw"] {
                let share = ["key", "share", "k", "--with", "x"];
                let (code, _, err) = tool_env(setup, &share, &[("HSMPOOL_PIN", pin)]);
                assert_eq!(code, 1);
                assert!(err.contains("HSMPOOL_PIN is wrong"), "{err}");
            }
        } else {
            let p = if n % 2 == 1 { &p1 } else { &p2 };
            assert_eq!(user_login(p, "wrong-pin-1").0, CKR_PIN_INCORRECT, "try {n}");
            assert_eq!(
                user_login(p, "dave:wrong-pw").0,
                CKR_PIN_INCORRECT,
                "try {n}"
            );
        }
        // Every member tells the same truth about the default user's PIN.
        for i in 0..3 {
            let f = flags(i);
            let want = match n {
                1..=3 => CKF_USER_PIN_COUNT_LOW,
                4 => CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY,
                _ => CKF_USER_PIN_LOCKED,
            };
            let mask = CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED;
            assert_eq!(
                f & mask,
                want,
                "member {i} after {n} wrong PINs ({})",
                setup.name()
            );
        }
    }
    // Locked everywhere, through every application and every member alone.
    for p in [&p1, &p2] {
        assert_eq!(user_login(p, default_pin).0, CKR_PIN_LOCKED);
        assert_eq!(user_login(p, "dave:dave-pw-1").0, CKR_PIN_LOCKED);
    }
    for i in 0..3 {
        let alone = setup.engine(&[i]);
        assert_eq!(
            user_login(&alone, default_pin).0,
            CKR_PIN_LOCKED,
            "member {i}"
        );
        assert_eq!(user_login(&alone, "dave:dave-pw-1").0, CKR_PIN_LOCKED);
    }
    // The officer unlocks; the users log in, through either application.
    admin.login(so, CKU_SO, SO, None).unwrap();
    for name in ["user", "dave"] {
        admin
            .change_user(&UserChange::Unlock { name: name.into() })
            .unwrap();
    }
    logs_in_and_signs(&p2, default_pin);
    logs_in_and_signs(&p1, "dave:dave-pw-1");
    for i in 0..3 {
        let f = flags(i);
        assert_eq!(
            f & (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_LOCKED),
            0,
            "member {i}"
        );
    }
    // An officer's lock holds the same way, and its unlock.
    admin
        .change_user(&UserChange::Lock {
            name: "dave".into(),
        })
        .unwrap();
    assert_eq!(
        user_login(&setup.engine(&[1]), "dave:dave-pw-1").0,
        CKR_PIN_LOCKED
    );
    admin
        .change_user(&UserChange::Unlock {
            name: "dave".into(),
        })
        .unwrap();
    logs_in_and_signs(&setup.engine(&[2]), "dave:dave-pw-1");
}

#[test]
fn in_process_a_user_change_reaches_every_member() {
    a_user_change_reaches_every_member(&Setup::in_process());
}

#[test]
fn daemons_a_user_change_reaches_every_member() {
    a_user_change_reaches_every_member(&Setup::daemons());
}

#[test]
fn in_process_a_member_away_during_user_changes_takes_them_before_it_serves() {
    a_member_away_during_user_changes_takes_them_before_it_serves(&mut Setup::in_process());
}

#[test]
fn daemons_a_member_away_during_user_changes_takes_them_before_it_serves() {
    a_member_away_during_user_changes_takes_them_before_it_serves(&mut Setup::daemons());
}

#[test]
fn in_process_five_wrong_pins_over_members_and_processes_lock_everywhere() {
    five_wrong_pins_over_members_and_processes_lock_everywhere(&Setup::in_process());
}

#[test]
fn daemons_five_wrong_pins_over_members_and_processes_lock_everywhere() {
    five_wrong_pins_over_members_and_processes_lock_everywhere(&Setup::daemons());
}

impl Setup {
    /// A module configuration file naming the three members, for another process (the
    /// `hsmpool` tool): the daemons' own, or the three embedded stores (which that process
    /// opens beside this one, as a second application would).
    fn conf_file(&self) -> std::path::PathBuf {
        match self {
            Setup::InProcess { _dir, .. } => {
                let mut text = format!("[cluster]\n{CLUSTER}\n");
                for i in 0..3 {
                    text.push_str(&format!(
                        "[[member]]\nkind = \"embedded\"\ndata_dir = {:?}\npin_iterations = 1000\n",
                        _dir.path().join(format!("hsm{i}")).to_str().unwrap()
                    ));
                }
                let path = _dir.path().join("hsmpool.toml");
                std::fs::write(&path, text).unwrap();
                path
            }
            Setup::Daemons(dc) => dc.conf.clone(),
        }
    }
}

/// `hsmpool ARGS` against the setup's cluster with these secrets: (exit status, stdout,
/// stderr).
fn tool(
    setup: &Setup,
    args: &[&str],
    so_pin: &str,
    new_pin: Option<&str>,
) -> (i32, String, String) {
    let mut env = vec![("HSMPOOL_SO_PIN", so_pin)];
    env.extend(new_pin.map(|p| ("HSMPOOL_NEW_PIN", p)));
    tool_env(setup, args, &env)
}

/// `hsmpool ARGS` with exactly these secrets in its environment.
fn tool_env(setup: &Setup, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(hsmpool_tests::workspace_bin("hsmpool"));
    cmd.args(args)
        .env("HSMPOOL_CONF", setup.conf_file())
        .env_remove("HSMPOOL_SO_PIN")
        .env_remove("HSMPOOL_PIN")
        .env_remove("HSMPOOL_NEW_PIN")
        .envs(env.iter().copied());
    let out = cmd.output().expect("hsmpool runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn the_tool_manages_users_on_every_member(setup: &Setup) {
    let (e, so) = officer(setup);
    e.logout(so).unwrap();
    let so_pin = std::str::from_utf8(SO).unwrap();
    let name = setup.name();
    let (code, out, err) = tool(setup, &["user", "add", "erin"], so_pin, Some("erin-pw-1"));
    assert_eq!(code, 0, "{name}: {out}{err}");
    assert!(out.contains("done on member(s) 0, 1, 2"), "{out}");
    // Refusals: exit 1, with what was wrong and what to do.
    let (code, _, err) = tool(setup, &["user", "add", "erin"], so_pin, Some("x-pw-1234"));
    assert_eq!(code, 1);
    assert!(
        err.contains("exists already") && err.contains("user passwd"),
        "{err}"
    );
    let (code, _, err) = tool(setup, &["user", "delete", "admin"], so_pin, None);
    assert_eq!(code, 1);
    assert!(err.contains("CKR_HSMPOOL_LAST_OFFICER"), "{err}");
    let (code, _, err) = tool(setup, &["user", "lock", "nobody"], so_pin, None);
    assert_eq!(code, 1);
    assert!(err.contains("CKR_HSMPOOL_USER_NOT_FOUND"), "{err}");
    let (code, _, err) = tool(setup, &["user", "list"], "wrong-so-pin", None);
    assert_eq!(code, 1);
    assert!(err.contains("HSMPOOL_SO_PIN is wrong"), "{err}");
    let (code, _, err) = tool(setup, &["user", "add", "frank"], so_pin, None);
    assert_eq!(code, 2, "a missing secret is a usage error: {err}");
    assert!(err.contains("HSMPOOL_NEW_PIN is not set"), "{err}");
    // Usage: exit 2 naming the problem; --help: exit 0 with examples.
    let (code, _, err) = tool(setup, &["user", "frobnicate"], so_pin, None);
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = tool(setup, &["user", "--help"], so_pin, None);
    assert_eq!(code, 0);
    assert!(
        out.contains("Examples:") && out.contains("--allow-partial"),
        "{out}"
    );
    // The listing, as JSON.
    let (code, out, err) = tool(setup, &["user", "list", "--json"], so_pin, None);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "erin", "user"], "{out}");
    // What the tool made, this process's applications use (in process: the stores were
    // changed by another process, and are caught up with: members look at most every 200 ms).
    std::thread::sleep(Duration::from_millis(250));
    logs_in_and_signs(&setup.engine(&[2]), "erin:erin-pw-1");
    let (code, _, err) = tool(
        setup,
        &["user", "passwd", "erin"],
        so_pin,
        Some("erin-pw-2"),
    );
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_millis(250));
    logs_in_and_signs(&setup.engine(&[0, 1, 2]), "erin:erin-pw-2");

    // Keys: erin makes one; the tool lists it by owner, erin shares and unshares it, and
    // deleting erin is refused, naming it, unless forced (which says it becomes unusable).
    let app = setup.engine(&[0, 1, 2]);
    let (r, s) = user_login(&app, "erin:erin-pw-2");
    assert_eq!(r, CKR_OK);
    aes_key(&app, s, b"erin-key", false);
    app.logout(s).unwrap();
    let (code, _, err) = tool(setup, &["user", "add", "fred"], so_pin, Some("fred-pw-1"));
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_millis(250));
    let erin = [("HSMPOOL_PIN", "erin:erin-pw-2")];
    let (code, out, err) = tool_env(
        setup,
        &["key", "share", "erin-key", "--with", "fred"],
        &erin,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = tool(
        setup,
        &["key", "list", "--owner", "erin", "--json"],
        so_pin,
        None,
    );
    assert_eq!(code, 0, "{err}");
    let keys: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(keys.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(keys[0]["label"], "erin-key");
    assert_eq!(keys[0]["shared_with"], serde_json::json!(["fred"]));
    let uid = keys[0]["uid"].as_str().unwrap().to_string();
    let fred = [("HSMPOOL_PIN", "fred:fred-pw-1")];
    let (code, _, err) = tool_env(
        setup,
        &["key", "share", "erin-key", "--with", "erin"],
        &fred,
    );
    assert_eq!(code, 1, "fred cannot share erin's key: {err}");
    let unshare = ["key", "unshare", &format!("uid:{uid}"), "--with", "fred"];
    let (code, _, err) = tool_env(setup, &unshare, &erin);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tool_env(
        setup,
        &["key", "share", "no-such-key", "--with", "fred"],
        &erin,
    );
    assert_eq!(code, 1);
    assert!(err.contains("no token key of yours"), "{err}");
    let (code, _, err) = tool(setup, &["user", "delete", "erin"], so_pin, None);
    assert_eq!(code, 1);
    assert!(
        err.contains("CKR_HSMPOOL_USER_OWNS_KEYS")
            && err.contains(&uid)
            && err.contains("erin-key"),
        "{err}"
    );
    let (code, out, err) = tool(setup, &["user", "delete", "erin", "--force"], so_pin, None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("can never be used again") && err.contains(&uid),
        "{err}"
    );
}

#[test]
fn in_process_the_tool_manages_users_on_every_member() {
    the_tool_manages_users_on_every_member(&Setup::in_process());
}

#[test]
fn daemons_the_tool_manages_users_on_every_member() {
    the_tool_manages_users_on_every_member(&Setup::daemons());
}

/// With a daemon down, a mutating command refuses unless `--allow-partial`; then the daemon
/// takes the change when it returns (brought level by the next application that logs in).
#[test]
fn daemons_the_tool_refuses_a_partial_change_unless_allowed() {
    let mut setup = Setup::daemons();
    let (e, so) = officer(&setup);
    e.logout(so).unwrap();
    drop(e);
    let so_pin = std::str::from_utf8(SO).unwrap();
    setup.down(1);
    let (code, out, err) = tool(&setup, &["user", "add", "gina"], so_pin, Some("gina-pw-1"));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("member 1") && err.contains("--allow-partial"),
        "{err}"
    );
    let (code, out, err) = tool(
        &setup,
        &["user", "add", "gina", "--allow-partial"],
        so_pin,
        Some("gina-pw-1"),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("done on member(s) 0, 2"), "{out}");
    assert!(out.contains("member(s) 1 did not take it now"), "{out}");
    setup.up(1);
    // The next application over the whole cluster brings member 1 level at its login.
    let app = setup.engine(&[0, 1, 2]);
    logs_in_and_signs(&app, "gina:gina-pw-1");
    logs_in_and_signs(&setup.engine(&[1]), "gina:gina-pw-1");
}

/// A token AES key of the logged-in user, labelled `label`, that encrypts and decrypts and may
/// be wrapped (by its owner), or (`wrap`) one that wraps.
fn aes_key(
    e: &Engine,
    s: SessionHandle,
    label: &[u8],
    wrap: bool,
) -> hsmpool_engine::types::ObjectHandle {
    use hsmpool_engine::{Attr, Mechanism};
    e.generate_key(
        s,
        Mechanism::plain(CKM_AES_KEY_GEN),
        vec![
            Attr::bool(CKA_TOKEN, true),
            Attr::ulong(CKA_VALUE_LEN, 32),
            // A wrapping key wraps only (the key policy refuses one that also encrypts).
            Attr::bool(CKA_ENCRYPT, !wrap),
            Attr::bool(CKA_DECRYPT, !wrap),
            Attr::bool(CKA_EXTRACTABLE, true),
            Attr::bool(CKA_WRAP, wrap),
            Attr::bytes(CKA_LABEL, label),
        ],
    )
    .expect("an AES key is made")
}

fn encrypt(e: &Engine, s: SessionHandle, k: hsmpool_engine::types::ObjectHandle) -> CK_RV {
    use hsmpool_engine::types::OpKind;
    use hsmpool_engine::Mechanism;
    let iv = [7u8; 16];
    let r = e
        .op_init(
            s,
            OpKind::Encrypt,
            Mechanism {
                mech: CKM_AES_CBC_PAD,
                param: hsmpool_member::types::MechParam::Iv(iv.to_vec()),
            },
            k,
        )
        .and_then(|()| {
            let mut out = vec![0u8; 64];
            e.op_single(s, OpKind::Encrypt, b"shared secret", Some(&mut out))
        });
    rv(r)
}

fn labelled(e: &Engine, s: SessionHandle, label: &[u8]) -> usize {
    hsmpool_tests::engine::find(e, s, vec![hsmpool_engine::Attr::bytes(CKA_LABEL, label)]).len()
}

fn owners_share_keys_and_others_only_use_them(setup: &Setup) {
    use hsmpool_engine::Attr;
    use hsmpool_member::types::CKA_HSMPOOL_SHARED_WITH;
    use hsmpool_member::users::CKR_HSMPOOL_USER_OWNS_KEYS;
    let name = setup.name();
    let (admin, so) = officer(setup);
    for u in ["alice", "bob", "carol"] {
        admin
            .change_user(&create(u, Role::User, &format!("{u}-pw-1")))
            .unwrap();
    }
    admin.logout(so).unwrap();
    let e = setup.engine(&[0, 1, 2]);
    let (r, a) = user_login(&e, "alice:alice-pw-1");
    assert_eq!(r, CKR_OK);
    let k = aes_key(&e, a, b"alice-aes", false);
    let (pubk, _) = ec_pair(&e, a, b"alice-ec", true);
    let session_key = ec_pair(&e, a, b"alice-session", false).1;
    assert_eq!(encrypt(&e, a, k), CKR_OK);
    // What sharing refuses: no such user, herself, a session object; the attribute is not
    // the application's to set.
    assert_eq!(
        rv(e.share_object(a, k, "nobody", true)),
        CKR_HSMPOOL_USER_NOT_FOUND
    );
    assert_eq!(
        rv(e.share_object(a, k, "alice", true)),
        CKR_ACTION_PROHIBITED
    );
    assert_eq!(
        rv(e.share_object(a, session_key, "bob", true)),
        CKR_ACTION_PROHIBITED
    );
    assert_eq!(
        rv(e.set_attribute_value(a, k, vec![Attr::bytes(CKA_HSMPOOL_SHARED_WITH, b"bob")])),
        CKR_ATTRIBUTE_READ_ONLY
    );
    e.logout(a).unwrap();

    // Bob: alice's unshared key does not exist for him; her public key does.
    let (r, b) = user_login(&e, "bob:bob-pw-1");
    assert_eq!(r, CKR_OK);
    assert_eq!(labelled(&e, b, b"alice-aes"), 0, "{name}");
    assert_eq!(encrypt(&e, b, k), CKR_KEY_HANDLE_INVALID);
    assert_eq!(
        rv(e.get_attribute_value(b, k, &[CKA_LABEL])),
        CKR_OBJECT_HANDLE_INVALID
    );
    assert_eq!(
        labelled(&e, b, b"alice-ec"),
        1,
        "her public key is every user's to see"
    );
    let bob_wrapper = aes_key(&e, b, b"bob-wrap", true);
    e.logout(b).unwrap();

    // Alice shares it with bob.
    let (_, a) = user_login(&e, "alice:alice-pw-1");
    e.share_object(a, k, "bob", true).unwrap();
    assert_eq!(
        hsmpool_tests::engine::value(&e, a, k, CKA_HSMPOOL_SHARED_WITH),
        b"bob".to_vec()
    );
    e.logout(a).unwrap();
    // On every member: bob, with that member alone, finds it and encrypts with it.
    for i in 0..3 {
        let alone = setup.engine(&[i]);
        let (r, b) = user_login(&alone, "bob:bob-pw-1");
        assert_eq!(r, CKR_OK);
        let found =
            hsmpool_tests::engine::find(&alone, b, vec![Attr::bytes(CKA_LABEL, b"alice-aes")]);
        assert_eq!(found.len(), 1, "member {i} ({name})");
        assert_eq!(encrypt(&alone, b, found[0]), CKR_OK, "member {i}");
    }
    // Bob uses it, and may do nothing else with it.
    let (_, b) = user_login(&e, "bob:bob-pw-1");
    let k_b = hsmpool_tests::engine::find(&e, b, vec![Attr::bytes(CKA_LABEL, b"alice-aes")])[0];
    assert_eq!(encrypt(&e, b, k_b), CKR_OK);
    assert_eq!(rv(e.destroy_object(b, k_b)), CKR_ACTION_PROHIBITED);
    assert_eq!(
        rv(e.set_attribute_value(b, k_b, vec![Attr::bytes(CKA_LABEL, b"mine")])),
        CKR_ACTION_PROHIBITED
    );
    assert_eq!(
        rv(e.copy_object(b, k_b, vec![Attr::bytes(CKA_LABEL, b"my copy")])),
        CKR_ACTION_PROHIBITED
    );
    assert_eq!(
        rv(e.wrap_key(
            b,
            hsmpool_engine::Mechanism::plain(CKM_AES_KEY_WRAP_KWP),
            bob_wrapper,
            k_b
        )),
        CKR_ACTION_PROHIBITED
    );
    assert_eq!(
        rv(e.share_object(b, k_b, "carol", true)),
        CKR_ACTION_PROHIBITED
    );
    e.logout(b).unwrap();
    // Carol still sees nothing of it.
    let (_, c) = user_login(&e, "carol:carol-pw-1");
    assert_eq!(labelled(&e, c, b"alice-aes"), 0);
    e.logout(c).unwrap();

    // An officer lists owners and sharing, and uses no user's key (her public one included).
    admin.login(so, CKU_SO, SO, None).unwrap();
    let owned = admin.owned_objects(Some("alice")).unwrap();
    assert_eq!(owned.len(), 3, "her token objects: {owned:?}");
    let aes = owned
        .iter()
        .find(|o| o.label == b"alice-aes")
        .expect("listed");
    assert_eq!(aes.shared_with, vec!["bob".to_string()]);
    let pub_so = hsmpool_tests::engine::find(&admin, so, vec![Attr::bytes(CKA_LABEL, b"alice-ec")]);
    assert_eq!(pub_so.len(), 1);
    let verified = admin.op_init(
        so,
        hsmpool_engine::types::OpKind::Verify,
        hsmpool_engine::Mechanism::plain(CKM_ECDSA_SHA256),
        pub_so[0],
    );
    assert_eq!(rv(verified), CKR_USER_NOT_LOGGED_IN, "{name}");
    let _ = pubk;
    // Deleting alice is refused while she owns keys, and names them; forced, her keys belong
    // to no one: a new alice does not get them.
    assert_eq!(
        rv(admin.change_user(&UserChange::Delete {
            name: "alice".into(),
            force: false
        })),
        CKR_HSMPOOL_USER_OWNS_KEYS
    );
    admin
        .change_user(&UserChange::Delete {
            name: "alice".into(),
            force: true,
        })
        .unwrap();
    assert!(admin.owned_objects(Some("alice")).unwrap().is_empty());
    admin
        .change_user(&create("alice", Role::User, "alice-pw-2"))
        .unwrap();
    let alone = setup.engine(&[2]);
    let (r, a) = user_login(&alone, "alice:alice-pw-2");
    assert_eq!(r, CKR_OK);
    assert_eq!(labelled(&alone, a, b"alice-aes"), 0, "{name}");
    // Bob, with whom the old alice shared it, still uses it: sharing outlives its owner.
    let (_, b) = user_login(&setup.engine(&[1]), "bob:bob-pw-1");
    let _ = b;
}

#[test]
fn in_process_owners_share_keys_and_others_only_use_them() {
    owners_share_keys_and_others_only_use_them(&Setup::in_process());
}

#[test]
fn daemons_owners_share_keys_and_others_only_use_them() {
    owners_share_keys_and_others_only_use_them(&Setup::daemons());
}

impl Setup {
    /// Member `i`'s SQLite store, opened beside whoever has it open (the tests' tamperer).
    fn store(&self, i: usize) -> rusqlite::Connection {
        let dir = match self {
            Setup::InProcess { _dir, .. } => _dir.path().join(format!("hsm{i}")),
            Setup::Daemons(dc) => dc.data_dir(i).to_path_buf(),
        };
        let c = rusqlite::Connection::open(dir.join("hsm.sqlite3")).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }
}

fn every_member_keeps_a_tamper_evident_audit_log(setup: &Setup) {
    let name = setup.name();
    let so_pin = std::str::from_utf8(SO).unwrap();
    let (admin, so) = officer(setup);
    admin
        .change_user(&create("alice", Role::User, "alice-pw-1"))
        .unwrap();
    admin.logout(so).unwrap();
    // Management events on every member: logins (one refused), a key made, shared, destroyed.
    let e = setup.engine(&[0, 1, 2]);
    assert_eq!(user_login(&e, "alice:not-her-pw").0, CKR_PIN_INCORRECT);
    let (_, a) = user_login(&e, "alice:alice-pw-1");
    let k = aes_key(&e, a, b"audited", false);
    e.destroy_object(a, k).unwrap();
    for i in 0..3 {
        let (_, s) = user_login(&setup.engine(&[i]), "alice:alice-pw-1");
        let _ = s;
    }
    // An untouched log verifies, on every member.
    let (code, out, err) = tool(setup, &["audit", "verify"], so_pin, None);
    assert_eq!(code, 0, "{name}: {out}{err}");
    assert_eq!(out.matches("records verified").count(), 3, "{out}");
    // What it holds: who logged in and how it ended, the user and key events; never a
    // password or PIN.
    let (code, out, err) = tool(setup, &["audit", "export"], so_pin, None);
    assert_eq!(code, 0, "{err}");
    let logs: serde_json::Value = serde_json::from_str(&out).unwrap();
    for log in logs.as_array().unwrap() {
        let records = log["records"].as_array().unwrap();
        let has = |kind: &str, actor: &str, detail: &str| {
            records.iter().any(|r| {
                r["kind"] == kind
                    && r["actor"] == actor
                    && r["detail"].as_str().unwrap().contains(detail)
            })
        };
        assert!(has("login", "alice", "ok"), "{name}: {log}");
        // The member that made a change logs it; the others log taking it.
        let alice = |r: &serde_json::Value| r["subject"] == "alice";
        assert!(
            records
                .iter()
                .any(|r| alice(r) && (r["kind"] == "user_create" || r["kind"] == "user_imported")),
            "{log}"
        );
        assert!(
            has("key_create", "alice", "audited") || has("key_replicated", "alice", ""),
            "{log}"
        );
        assert!(
            has("key_destroy", "alice", "ok") || has("key_dropped", "alice", ""),
            "{log}"
        );
        assert!(
            records.len() >= 2 * hsmpool_member::audit::CHECKPOINT_EVERY as usize,
            "at least two checkpoints' worth: {}",
            records.len()
        );
    }
    assert!(
        logs.as_array().unwrap()[0]["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "login"
                && r["detail"].as_str().unwrap().contains("wrong password")),
        "the refused login is there (its checker was member 0 or the others were asked too)"
    );
    for secret in ["not-her-pw", "alice-pw-1", "user-pin-1234", "so-pin-1234"] {
        assert!(!out.contains(secret), "the log holds {secret:?}");
    }
    // An export verifies offline.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.json");
    std::fs::write(&file, &out).unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = tool_env(setup, &["audit", "verify", "--file", f], &[]);
    assert_eq!(code, 0, "{out}{err}");

    // Tampering: one byte of one record on member 0, a record removed on member 1, the last
    // checkpoint removed on member 2. Each is named.
    let s0 = setup.store(0);
    s0.execute(
        "UPDATE audit SET detail = substr(detail, 1, length(detail) - 1) || 'X' WHERE seq = 5",
        [],
    )
    .unwrap();
    setup
        .store(1)
        .execute("DELETE FROM audit WHERE seq = 7", [])
        .unwrap();
    let s2 = setup.store(2);
    let last_cp: i64 = s2
        .query_row("SELECT MAX(seq) FROM audit_checkpoints", [], |r| r.get(0))
        .unwrap();
    s2.execute("DELETE FROM audit_checkpoints WHERE seq = ?1", [last_cp])
        .unwrap();
    let (code, out, err) = tool(setup, &["audit", "verify"], so_pin, None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("member 0: BROKEN: record 5 was changed"),
        "{name}: {out}"
    );
    assert!(
        out.contains("member 1: BROKEN: record 7 is missing (record 8 follows record 6)"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "member 2: BROKEN: the checkpoint at record {last_cp} is missing"
        )),
        "{out}"
    );
    // The export taken before still verifies; one taken now does not.
    let (code, _, _) = tool_env(setup, &["audit", "verify", "--file", f], &[]);
    assert_eq!(code, 0);
    let (_, now, _) = tool(setup, &["audit", "export", "--member", "1"], so_pin, None);
    std::fs::write(&file, &now).unwrap();
    let (code, out, _) = tool_env(setup, &["audit", "verify", "--file", f], &[]);
    assert_eq!(code, 1);
    assert!(out.contains("record 7 is missing"), "{out}");
    // A changed checkpoint signature is caught too.
    let first_cp = hsmpool_member::audit::CHECKPOINT_EVERY as i64;
    s0.execute("UPDATE audit SET detail = detail WHERE seq = 0", [])
        .unwrap();
    s2.execute(
        "UPDATE audit_checkpoints SET signature = zeroblob(64) WHERE seq = ?1",
        [first_cp],
    )
    .unwrap();
    let (code, out, _) = tool(setup, &["audit", "verify", "--member", "2"], so_pin, None);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!(
            "the checkpoint at record {first_cp} has a bad signature"
        )),
        "{out}"
    );
    // Show filters.
    let (code, out, _) = tool(
        setup,
        &[
            "audit", "show", "--member", "2", "--kind", "login", "--actor", "alice", "--json",
        ],
        so_pin,
        None,
    );
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(shown
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["kind"] == "login" && r["actor"] == "alice" && r["member"] == 2));
    assert!(!shown.as_array().unwrap().is_empty());
}

#[test]
fn in_process_every_member_keeps_a_tamper_evident_audit_log() {
    every_member_keeps_a_tamper_evident_audit_log(&Setup::in_process());
}

#[test]
fn daemons_every_member_keeps_a_tamper_evident_audit_log() {
    every_member_keeps_a_tamper_evident_audit_log(&Setup::daemons());
}

/// An officer's approval key (ECDSA P-256): (key pair, public point).
fn approval_key() -> aws_lc_rs::signature::EcdsaKeyPair {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap()
}

fn signed(
    officer: &str,
    key: &aws_lc_rs::signature::EcdsaKeyPair,
    token: &[u8],
) -> (String, Vec<u8>) {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    (
        officer.to_string(),
        key.sign(&rng, token).unwrap().as_ref().to_vec(),
    )
}

/// `name` (password `NAME-pw-1`), logged in as `user_type` on an engine over every member,
/// registers `key` as its own approval key: that engine and session, still logged in.
fn register_approval_key(
    setup: &Setup,
    user_type: CK_USER_TYPE,
    name: &str,
    key: &aws_lc_rs::signature::EcdsaKeyPair,
) -> (Engine, SessionHandle) {
    use aws_lc_rs::signature::KeyPair;
    let e = setup.engine(&[0, 1, 2]);
    let s = e
        .open_session(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, user_type, format!("{name}:{name}-pw-1").as_bytes(), None)
        .unwrap();
    e.change_user(&UserChange::SetApprovalKey {
        name: name.to_string(),
        public_key: key.public_key().as_ref().to_vec(),
    })
    .unwrap();
    (e, s)
}

fn a_quorum_protects_user_deletion(setup: &Setup) {
    use aws_lc_rs::signature::KeyPair;
    use hsmpool_member::users::{
        CKR_HSMPOOL_QUORUM_REQUIRED, CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED,
        CKR_HSMPOOL_QUORUM_TOKEN_INVALID,
    };
    use hsmpool_member::{Approval, QuorumToken};
    let name = setup.name();
    let (admin, _) = officer(setup);
    for o in ["bob", "carol", "dave"] {
        admin
            .change_user(&create(o, Role::Officer, &format!("{o}-pw-1")))
            .unwrap();
    }
    admin
        .change_user(&create("alice", Role::User, "alice-pw-1"))
        .unwrap();
    // Each officer registers its own approval key, logged in as itself.
    let keys: Vec<(&str, aws_lc_rs::signature::EcdsaKeyPair)> = ["bob", "carol", "dave"]
        .iter()
        .map(|o| (*o, approval_key()))
        .collect();
    for (o, k) in &keys {
        let (e, _) = register_approval_key(setup, CKU_SO, o, k);
        // Not another officer's.
        assert_eq!(
            rv(e.change_user(&UserChange::SetApprovalKey {
                name: "admin".into(),
                public_key: k.public_key().as_ref().to_vec(),
            })),
            CKR_ACTION_PROHIBITED
        );
    }
    // M = 2 (a quorum no set of officers could meet is refused).
    assert_eq!(
        rv(admin.change_user(&UserChange::SetQuorum { m: 4 })),
        CKR_HSMPOOL_LAST_OFFICER
    );
    admin.change_user(&UserChange::SetQuorum { m: 2 }).unwrap();
    assert_eq!(admin.users().unwrap().quorum, 2);
    let key = |o: &str| &keys.iter().find(|(n, _)| *n == o).unwrap().1;
    let delete = UserChange::Delete {
        name: "alice".into(),
        force: false,
    };
    // Without approvals; with M - 1; with two signatures by one officer.
    assert_eq!(
        rv(admin.change_user(&delete)),
        CKR_HSMPOOL_QUORUM_REQUIRED,
        "{name}"
    );
    let token = admin.quorum_token(&delete).unwrap();
    let with = |sigs: Vec<(String, Vec<u8>)>, token: &[u8]| Approval {
        token: token.to_vec(),
        signatures: sigs,
    };
    let one = with(vec![signed("bob", key("bob"), &token)], &token);
    assert_eq!(
        rv(admin.change_user_approved(&delete, &one)),
        CKR_HSMPOOL_QUORUM_REQUIRED
    );
    let twice = with(
        vec![
            signed("bob", key("bob"), &token),
            signed("bob", key("bob"), &token),
        ],
        &token,
    );
    assert_eq!(
        rv(admin.change_user_approved(&delete, &twice)),
        CKR_HSMPOOL_QUORUM_REQUIRED
    );
    // A signature by a key not the officer's counts for nothing.
    let forged = with(
        vec![
            signed("bob", key("bob"), &token),
            signed("carol", key("dave"), &token),
        ],
        &token,
    );
    assert_eq!(
        rv(admin.change_user_approved(&delete, &forged)),
        CKR_HSMPOOL_QUORUM_REQUIRED
    );
    // One signature under two names counts once, and an officer cannot register another's key.
    let e = setup.engine(&[0, 1, 2]);
    let s = e
        .open_session(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, CKU_SO, b"dave:dave-pw-1", None).unwrap();
    assert_eq!(
        rv(e.change_user(&UserChange::SetApprovalKey {
            name: "dave".into(),
            public_key: key("bob").public_key().as_ref().to_vec(),
        })),
        CKR_ACTION_PROHIBITED
    );
    let bob_sig = signed("bob", key("bob"), &token).1;
    let same = with(
        vec![("bob".into(), bob_sig.clone()), ("dave".into(), bob_sig)],
        &token,
    );
    assert_eq!(
        rv(admin.change_user_approved(&delete, &same)),
        CKR_HSMPOOL_QUORUM_REQUIRED
    );
    // An expired token (made twenty minutes ago, lived ten), signed by two officers.
    let mut old = QuorumToken::decode(&token).unwrap();
    old.issued_ms -= 20 * 60 * 1000;
    old.expires_ms -= 20 * 60 * 1000;
    let old = old.encode();
    let expired = with(
        vec![
            signed("bob", key("bob"), &old),
            signed("carol", key("carol"), &old),
        ],
        &old,
    );
    assert_eq!(
        rv(admin.change_user_approved(&delete, &expired)),
        CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED
    );
    // A token for another change.
    let other = admin
        .quorum_token(&UserChange::Delete {
            name: "bob".into(),
            force: false,
        })
        .unwrap();
    let elsewhere = with(
        vec![
            signed("bob", key("bob"), &other),
            signed("carol", key("carol"), &other),
        ],
        &other,
    );
    assert_eq!(
        rv(admin.change_user_approved(&delete, &elsewhere)),
        CKR_HSMPOOL_QUORUM_TOKEN_INVALID
    );
    // M valid approvals of distinct officers: done, on every member.
    let good = with(
        vec![
            signed("carol", key("carol"), &token),
            signed("dave", key("dave"), &token),
        ],
        &token,
    );
    admin.change_user_approved(&delete, &good).unwrap();
    for i in 0..3 {
        assert_eq!(
            user_login(&setup.engine(&[i]), "alice:alice-pw-1").0,
            CKR_PIN_INCORRECT,
            "member {i}: alice is gone ({name})"
        );
    }
    // The token is spent: used again (for a user of that name made since), refused.
    let recreate = create("alice", Role::User, "alice-pw-2");
    let t2 = admin.quorum_token(&recreate).unwrap();
    let ok2 = with(
        vec![
            signed("bob", key("bob"), &t2),
            signed("dave", key("dave"), &t2),
        ],
        &t2,
    );
    admin.change_user_approved(&recreate, &ok2).unwrap();
    assert_eq!(
        rv(admin.change_user_approved(&delete, &good)),
        CKR_HSMPOOL_QUORUM_TOKEN_INVALID
    );
    // What no quorum protects: locking and unlocking.
    admin
        .change_user(&UserChange::Lock {
            name: "alice".into(),
        })
        .unwrap();
    // The member never lets the officers holding approval keys fall below M (the CLI asks
    // for M + 2, below): with M = 2, deleting bob leaves two, then carol would leave one.
    let del = |o: &str| UserChange::Delete {
        name: o.into(),
        force: false,
    };
    let t3 = admin.quorum_token(&del("bob")).unwrap();
    let ok3 = with(
        vec![
            signed("carol", key("carol"), &t3),
            signed("dave", key("dave"), &t3),
        ],
        &t3,
    );
    admin.change_user_approved(&del("bob"), &ok3).unwrap();
    let t4 = admin.quorum_token(&del("carol")).unwrap();
    let ok4 = with(
        vec![
            signed("carol", key("carol"), &t4),
            signed("dave", key("dave"), &t4),
        ],
        &t4,
    );
    assert_eq!(
        rv(admin.change_user_approved(&del("carol"), &ok4)),
        CKR_HSMPOOL_LAST_OFFICER
    );
    // The audit log names the approvers.
    let log = admin.audit_log(0, 1, 1000).unwrap();
    assert!(
        log.records
            .iter()
            .any(|r| r.kind == "user_delete" && r.detail.contains("approved by carol, dave")),
        "{name}"
    );
    assert!(log
        .records
        .iter()
        .any(|r| r.kind == "user_delete" && r.detail.contains("CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED")));
}

#[test]
fn in_process_a_quorum_protects_user_deletion() {
    a_quorum_protects_user_deletion(&Setup::in_process());
}

#[test]
fn daemons_a_quorum_protects_user_deletion() {
    a_quorum_protects_user_deletion(&Setup::daemons());
}

/// The tool's quorum commands, with one officer's approval key in a file and another's on a
/// PKCS #11 token (SoftHSMv2), the private key never leaving it.
fn the_tool_runs_a_quorum_with_keys_in_files_and_on_a_token(setup: &Setup) {
    use hsmpool_tests::softhsm::{SoftHsmTokens, SOFTHSM};
    let name = setup.name();
    let so_pin = std::str::from_utf8(SO).unwrap();
    let (e, so) = officer(setup);
    e.logout(so).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    for (u, officer) in [("bob", true), ("carol", true), ("eve", false)] {
        let mut args = vec!["user", "add", u];
        if officer {
            args.push("--officer");
        }
        let (code, out, err) = tool(setup, &args, so_pin, Some(&format!("{u}-pw-1")));
        assert_eq!(code, 0, "{name}: {out}{err}");
    }
    // admin and bob keep their keys in files; carol on a SoftHSMv2 token.
    for o in ["admin", "bob"] {
        let (code, out, err) = tool_env(
            setup,
            &["quorum", "keygen", "--out", &f(&format!("{o}.pem"))],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
        let pin = if o == "admin" {
            so_pin.to_string()
        } else {
            format!("{o}:{o}-pw-1")
        };
        let (code, out, err) = tool_env(
            setup,
            &["quorum", "register-key", "--key", &f(&format!("{o}.pem"))],
            &[("HSMPOOL_SO_PIN", &pin)],
        );
        assert_eq!(code, 0, "{out}{err}");
    }
    let tokens = SoftHsmTokens::create(dir.path(), 1, "approver", "so-pin-9", "pin-9999");
    let conf = tokens.conf.to_str().unwrap().to_string();
    let gen = std::process::Command::new(hsmpool_tests::require_tool("pkcs11-tool"))
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--module",
            SOFTHSM,
            "--login",
            "--pin",
            "pin-9999",
            "--keypairgen",
        ])
        .args(["--key-type", "EC:prime256v1", "--label", "carol-approval"])
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let p11 = ["--pkcs11-module", SOFTHSM, "--pkcs11-key", "carol-approval"];
    let mut args = vec!["quorum", "register-key"];
    args.extend(p11);
    let (code, out, err) = tool_env(
        setup,
        &args,
        &[
            ("HSMPOOL_SO_PIN", "carol:carol-pw-1"),
            ("SOFTHSM2_CONF", &conf),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    // M = 2 with three officers leaves fewer than two to spare: refused unless --force.
    let (code, _, err) = tool(setup, &["quorum", "set", "2"], so_pin, None);
    assert_eq!(code, 1);
    assert!(err.contains("--force"), "{err}");
    let (code, out, err) = tool(setup, &["quorum", "set", "2", "--force"], so_pin, None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("WARNING"), "{err}");
    // A protected deletion: refused without approvals; a token; signatures from a file and
    // from the token; refused with one, done with two, refused when used again.
    let (code, _, err) = tool(setup, &["user", "delete", "eve"], so_pin, None);
    assert_eq!(code, 1);
    assert!(err.contains("CKR_HSMPOOL_QUORUM_REQUIRED"), "{err}");
    let t = f("t.hex");
    let (code, out, err) = tool(
        setup,
        &["quorum", "token-gen", "--out", &t, "user", "delete", "eve"],
        so_pin,
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, bob_sig, err) = tool_env(
        setup,
        &[
            "quorum",
            "sign",
            "--token",
            &t,
            "--officer",
            "bob",
            "--key",
            &f("bob.pem"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    std::fs::write(f("bob.sig"), &bob_sig).unwrap();
    let mut args = vec!["quorum", "sign", "--token", &t, "--officer", "carol"];
    args.extend(p11);
    let (code, carol_sig, err) = tool_env(
        setup,
        &args,
        &[
            ("HSMPOOL_APPROVAL_PIN", "pin-9999"),
            ("SOFTHSM2_CONF", &conf),
        ],
    );
    assert_eq!(code, 0, "{err}");
    std::fs::write(f("carol.sig"), &carol_sig).unwrap();
    let (bob, carol) = (f("bob.sig"), f("carol.sig"));
    let (code, _, err) = tool(
        setup,
        &["user", "delete", "eve", "--token", &t, "--approval", &bob],
        so_pin,
        None,
    );
    assert_eq!(code, 1, "M - 1 approvals");
    assert!(err.contains("CKR_HSMPOOL_QUORUM_REQUIRED"), "{err}");
    let both = [
        "user",
        "delete",
        "eve",
        "--token",
        &t,
        "--approval",
        &bob,
        "--approval",
        &carol,
    ];
    let (code, out, err) = tool(setup, &both, so_pin, None);
    assert_eq!(code, 0, "{name}: {out}{err}");
    let (code, _, err) = tool(setup, &both, so_pin, None);
    assert_eq!(code, 1);
    assert!(err.contains("CKR_HSMPOOL_QUORUM_TOKEN_INVALID"), "{err}");
    // Deleting an officer would leave fewer than M + 2: refused, naming the risk.
    let (code, _, err) = tool(setup, &["user", "delete", "bob"], so_pin, None);
    assert_eq!(code, 1);
    assert!(err.contains("fewer than M + 2"), "{err}");
}

#[test]
fn in_process_the_tool_runs_a_quorum_with_keys_in_files_and_on_a_token() {
    the_tool_runs_a_quorum_with_keys_in_files_and_on_a_token(&Setup::in_process());
}

#[test]
fn daemons_the_tool_runs_a_quorum_with_keys_in_files_and_on_a_token() {
    the_tool_runs_a_quorum_with_keys_in_files_and_on_a_token(&Setup::daemons());
}

/// `hsmpool cluster check`: a member that missed a user and a key while down, with no
/// application running when it came back, is reported by --dry-run (which changes nothing),
/// then brought level.
fn cluster_check_finds_drift_and_repairs_it(setup: &mut Setup) {
    let name = setup.name();
    let so_pin = std::str::from_utf8(SO).unwrap();
    {
        let (e, so) = officer(setup);
        setup.down(2);
        e.change_user(&create("gail", Role::User, "gail-pw-1"))
            .unwrap();
        e.logout(so).unwrap();
        let (_, s) = user_login(&e, "gail:gail-pw-1");
        aes_key(&e, s, b"gail-key", false);
        e.logout(s).unwrap();
    }
    // Back, with no application to bring it level.
    setup.up(2);
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = tool(setup, &["cluster", "check", "--dry-run"], so_pin, None);
    assert_eq!(code, 1, "{name}: {out}{err}");
    assert!(out.contains("users: member 2: lacks user gail"), "{out}");
    assert!(
        out.contains("objects: member 2: lacks 1 token object(s)"),
        "{out}"
    );
    assert!(out.contains("--dry-run: nothing changed"), "{out}");
    let (code, out, _) = tool(
        setup,
        &["cluster", "check", "--dry-run", "--json"],
        so_pin,
        None,
    );
    assert_eq!(code, 1, "still there: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["clean"], false);
    assert!(v["drift"].as_array().unwrap().len() >= 2, "{out}");
    let (code, out, err) = tool(setup, &["cluster", "check"], so_pin, None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("repaired:") && out.contains("clean: the members agree"),
        "{out}"
    );
    let (code, out, _) = tool(setup, &["cluster", "check", "--dry-run"], so_pin, None);
    assert_eq!(code, 0, "{out}");
    // Member 2 alone now knows gail and her key.
    let alone = setup.engine(&[2]);
    let (r, s) = user_login(&alone, "gail:gail-pw-1");
    assert_eq!(r, CKR_OK);
    assert_eq!(labelled(&alone, s, b"gail-key"), 1);
}

#[test]
fn in_process_cluster_check_finds_drift_and_repairs_it() {
    cluster_check_finds_drift_and_repairs_it(&mut Setup::in_process());
}

#[test]
fn daemons_cluster_check_finds_drift_and_repairs_it() {
    cluster_check_finds_drift_and_repairs_it(&mut Setup::daemons());
}

/// A crypto user's session on `e`, logged in with `pin`.
fn as_user(e: &Engine, pin: &str) -> SessionHandle {
    let (r, s) = user_login(e, pin);
    assert_eq!(r, CKR_OK, "{pin:?} logs in");
    s
}

fn a_key_quorum_guards_its_use_and_management(setup: &Setup) {
    use aws_lc_rs::signature::KeyPair;
    use hsmpool_engine::Attr;
    use hsmpool_member::types::{CKA_HSMPOOL_QUORUM_MANAGE, CKA_HSMPOOL_QUORUM_USE};
    use hsmpool_member::users::{
        key_token_params, CKR_HSMPOOL_QUORUM_REQUIRED, CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED,
        CKR_HSMPOOL_QUORUM_TOKEN_INVALID, CKR_HSMPOOL_QUORUM_TOO_HIGH,
    };
    use hsmpool_member::{Approval, KeyService, QuorumToken};
    let name = setup.name();
    let so_pin = std::str::from_utf8(SO).unwrap();
    let (admin, so) = officer(setup);
    for u in ["alice", "bob", "carol", "dave"] {
        admin
            .change_user(&create(u, Role::User, &format!("{u}-pw-1")))
            .unwrap();
    }
    admin.logout(so).unwrap();
    let e = setup.engine(&[0, 1, 2]);
    // Each crypto user registers its own approval key, logged in as itself; not another's.
    let keys: Vec<(&str, aws_lc_rs::signature::EcdsaKeyPair)> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|u| (*u, approval_key()))
        .collect();
    let key = |u: &str| &keys.iter().find(|(n, _)| *n == u).unwrap().1;
    for (u, k) in &keys {
        let (mine, _) = register_approval_key(setup, CKU_USER, u, k);
        let other = if *u == "alice" { "bob" } else { "alice" };
        assert_eq!(
            rv(mine.change_user(&UserChange::SetApprovalKey {
                name: other.into(),
                public_key: k.public_key().as_ref().to_vec(),
            })),
            CKR_ACTION_PROHIBITED,
            "{u} registers no key for {other}"
        );
    }

    let a = as_user(&e, "alice:alice-pw-1");
    let k = aes_key(&e, a, b"alice-aes", false);
    let (pubk, _) = ec_pair(&e, a, b"alice-ec", true);
    // Not the application's to set; not on a public key; never above the users who can approve.
    assert_eq!(
        rv(e.set_attribute_value(a, k, vec![Attr::ulong(CKA_HSMPOOL_QUORUM_USE, 2)])),
        CKR_ATTRIBUTE_READ_ONLY
    );
    assert_eq!(
        rv(e.set_key_quorum(a, pubk, KeyService::Use, 2)),
        CKR_ACTION_PROHIBITED
    );
    assert_eq!(
        rv(e.set_key_quorum(a, k, KeyService::Use, 2)),
        CKR_HSMPOOL_QUORUM_TOO_HIGH,
        "{name}: alice alone cannot be two approvers"
    );
    e.share_object(a, k, "bob", true).unwrap();
    e.share_object(a, k, "carol", true).unwrap();
    assert_eq!(
        rv(e.set_key_quorum(a, k, KeyService::Use, 4)),
        CKR_HSMPOOL_QUORUM_TOO_HIGH
    );
    e.set_key_quorum(a, k, KeyService::Use, 2).unwrap();
    e.set_key_quorum(a, k, KeyService::Manage, 2).unwrap();
    assert_eq!(
        hsmpool_tests::engine::value(&e, a, k, CKA_HSMPOOL_QUORUM_USE),
        (2 as CK_ULONG).to_ne_bytes().to_vec()
    );
    assert_eq!(
        hsmpool_tests::engine::value(&e, a, k, CKA_HSMPOOL_QUORUM_MANAGE),
        (2 as CK_ULONG).to_ne_bytes().to_vec()
    );
    // Without an approval, its owner neither uses nor manages it.
    assert_eq!(encrypt(&e, a, k), CKR_HSMPOOL_QUORUM_REQUIRED, "{name}");
    assert_eq!(rv(e.destroy_object(a, k)), CKR_HSMPOOL_QUORUM_REQUIRED);
    assert_eq!(
        rv(e.set_attribute_value(a, k, vec![Attr::bytes(CKA_LABEL, b"renamed")])),
        CKR_HSMPOOL_QUORUM_REQUIRED
    );
    assert_eq!(
        rv(e.share_object(a, k, "dave", true)),
        CKR_HSMPOOL_QUORUM_REQUIRED
    );
    assert_eq!(
        rv(e.set_key_quorum(a, k, KeyService::Use, 1)),
        CKR_HSMPOOL_QUORUM_REQUIRED
    );
    e.logout(a).unwrap();

    // Bob, whom it is shared with, asks to use it (not to manage it: that is its owner's).
    let b = as_user(&e, "bob:bob-pw-1");
    assert_eq!(encrypt(&e, b, k), CKR_HSMPOOL_QUORUM_REQUIRED);
    assert_eq!(
        rv(e.key_quorum_token(b, k, KeyService::Manage)),
        CKR_ACTION_PROHIBITED
    );
    let token = e.key_quorum_token(b, k, KeyService::Use).unwrap();
    let with = |sigs: Vec<(String, Vec<u8>)>, token: &[u8]| Approval {
        token: token.to_vec(),
        signatures: sigs,
    };
    let by = |u: &str, t: &[u8]| signed(u, key(u), t);
    // M - 1 signatures; one user twice; a signer the key is not shared with.
    let refused = [
        with(vec![by("alice", &token)], &token),
        with(vec![by("alice", &token), by("alice", &token)], &token),
        with(vec![by("alice", &token), by("dave", &token)], &token),
    ];
    for (i, approval) in refused.iter().enumerate() {
        assert_eq!(
            rv(e.approve_key(b, k, approval)),
            CKR_HSMPOOL_QUORUM_REQUIRED,
            "{name}: refused approval {i}"
        );
    }
    // An expired token, and one for another key, however well signed.
    let mut old = QuorumToken::decode(&token).unwrap();
    old.issued_ms -= 11 * 60 * 1000;
    old.expires_ms -= 11 * 60 * 1000;
    let old = old.encode();
    assert_eq!(
        rv(e.approve_key(
            b,
            k,
            &with(vec![by("alice", &old), by("carol", &old)], &old)
        )),
        CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED
    );
    let mut other = QuorumToken::decode(&token).unwrap();
    other.params = key_token_params(12345);
    let other = other.encode();
    assert_eq!(
        rv(e.approve_key(
            b,
            k,
            &with(vec![by("alice", &other), by("carol", &other)], &other)
        )),
        CKR_HSMPOOL_QUORUM_TOKEN_INVALID
    );
    // M signatures of distinct users of the key: bob may use it now, on every member.
    let good = with(vec![by("alice", &token), by("carol", &token)], &token);
    let report = e.approve_key(b, k, &good).unwrap();
    assert_eq!(report.applied, vec![0, 1, 2], "{name}");
    assert_eq!(
        rv(e.approve_key(b, k, &good)),
        CKR_HSMPOOL_QUORUM_TOKEN_INVALID,
        "a token is accepted once"
    );
    assert_eq!(encrypt(&e, b, k), CKR_OK, "{name}");
    e.logout(b).unwrap();
    for i in 0..3 {
        let alone = setup.engine(&[i]);
        let b = as_user(&alone, "bob:bob-pw-1");
        let found =
            hsmpool_tests::engine::find(&alone, b, vec![Attr::bytes(CKA_LABEL, b"alice-aes")]);
        assert_eq!(encrypt(&alone, b, found[0]), CKR_OK, "member {i} ({name})");
    }
    // The approval is bob's: alice still needs one of her own.
    let a = as_user(&e, "alice:alice-pw-1");
    assert_eq!(encrypt(&e, a, k), CKR_HSMPOOL_QUORUM_REQUIRED);
    // Alice manages it with bob's approval: an unshare may not leave fewer users than M.
    let t = e.key_quorum_token(a, k, KeyService::Manage).unwrap();
    e.approve_key(a, k, &with(vec![by("alice", &t), by("bob", &t)], &t))
        .unwrap();
    e.share_object(a, k, "carol", false).unwrap();
    assert_eq!(
        rv(e.share_object(a, k, "bob", false)),
        CKR_HSMPOOL_QUORUM_TOO_HIGH,
        "{name}"
    );
    e.share_object(a, k, "carol", true).unwrap();
    e.set_key_quorum(a, k, KeyService::Use, 1).unwrap();
    assert_eq!(encrypt(&e, a, k), CKR_OK, "use needs no approval any more");
    e.set_key_quorum(a, k, KeyService::Manage, 1).unwrap();
    e.logout(a).unwrap();

    // Each member's audit log names who approved.
    admin.login(so, CKU_SO, SO, None).unwrap();
    for i in 0..3 {
        let log = admin.audit_log(i, 1, 10_000).unwrap();
        assert!(
            log.records.iter().any(|r| r.kind == "key_approve"
                && r.actor == "bob"
                && r.detail.contains("use approved by alice, carol")),
            "member {i} ({name})"
        );
    }
    admin.logout(so).unwrap();

    // The same through the tool: keys in files, a token, signatures, the approval.
    let dir = tempfile::tempdir().unwrap();
    let f = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    for u in ["alice", "carol"] {
        let pem = f(&format!("{u}.pem"));
        let (code, out, err) = tool_env(setup, &["quorum", "keygen", "--out", &pem], &[]);
        assert_eq!(code, 0, "{out}{err}");
        let pin = format!("{u}:{u}-pw-1");
        let (code, out, err) = tool_env(
            setup,
            &["quorum", "register-key", "--user", "--key", &pem],
            &[("HSMPOOL_PIN", &pin)],
        );
        assert_eq!(code, 0, "{name}: {out}{err}");
    }
    let alice = [("HSMPOOL_PIN", "alice:alice-pw-1")];
    let (code, out, err) = tool_env(
        setup,
        &["key", "set-quorum", "alice-aes", "--use", "9"],
        &alice,
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("CKR_HSMPOOL_QUORUM_TOO_HIGH"), "{err}");
    let (code, out, err) = tool_env(
        setup,
        &["key", "set-quorum", "alice-aes", "--use", "2"],
        &alice,
    );
    assert_eq!(code, 0, "{name}: {out}{err}");
    // Carol asks (bob holds an approval of his own already, from above).
    let carol = [("HSMPOOL_PIN", "carol:carol-pw-1")];
    let t = f("t.hex");
    let (code, out, err) = tool_env(
        setup,
        &[
            "quorum",
            "token-gen",
            "--out",
            &t,
            "key",
            "use",
            "alice-aes",
        ],
        &carol,
    );
    assert_eq!(code, 0, "{out}{err}");
    let mut sigs = Vec::new();
    for u in ["alice", "carol"] {
        let (code, out, err) = tool_env(
            setup,
            &[
                "quorum",
                "sign",
                "--token",
                &t,
                "--user",
                u,
                "--key",
                &f(&format!("{u}.pem")),
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
        let sig = f(&format!("{u}.sig"));
        std::fs::write(&sig, out).unwrap();
        sigs.push(sig);
    }
    let approve = |sigs: &[String]| {
        let mut args = vec!["key", "approve", "alice-aes", "--token", t.as_str()];
        for s in sigs {
            args.extend(["--approval", s.as_str()]);
        }
        tool_env(setup, &args, &carol)
    };
    let (code, out, err) = approve(&sigs[..1]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("CKR_HSMPOOL_QUORUM_REQUIRED"), "{err}");
    let c = as_user(&e, "carol:carol-pw-1");
    assert_eq!(encrypt(&e, c, k), CKR_HSMPOOL_QUORUM_REQUIRED, "{name}");
    let (code, out, err) = approve(&sigs);
    assert_eq!(code, 0, "{name}: {out}{err}");
    assert_eq!(encrypt(&e, c, k), CKR_OK, "{name}: approved by the tool");
    let (code, out, err) = approve(&sigs);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("CKR_HSMPOOL_QUORUM_TOKEN_INVALID"), "{err}");
    e.logout(c).unwrap();
    let b = as_user(&e, "bob:bob-pw-1");
    assert_eq!(
        encrypt(&e, b, k),
        CKR_OK,
        "bob's approval is still in force"
    );
    e.logout(b).unwrap();

    // A deleted user's sharing and approvals go with it: a new bob neither sees the key nor,
    // once it is shared with him again, uses it on his predecessor's approval.
    admin.login(so, CKU_SO, SO, None).unwrap();
    admin
        .change_user(&UserChange::Delete {
            name: "bob".into(),
            force: false,
        })
        .unwrap();
    admin
        .change_user(&create("bob", Role::User, "bob-pw-2"))
        .unwrap();
    admin.logout(so).unwrap();
    let new_bob = |i: usize| {
        let alone = setup.engine(&[i]);
        let b = as_user(&alone, "bob:bob-pw-2");
        let found =
            hsmpool_tests::engine::find(&alone, b, vec![Attr::bytes(CKA_LABEL, b"alice-aes")]);
        found.first().map(|k| encrypt(&alone, b, *k))
    };
    for i in 0..3 {
        assert_eq!(
            new_bob(i),
            None,
            "member {i} ({name}): not shared with the new bob"
        );
    }
    let a = as_user(&e, "alice:alice-pw-1");
    e.share_object(a, k, "bob", true).unwrap();
    for i in 0..3 {
        assert_eq!(
            new_bob(i),
            Some(CKR_HSMPOOL_QUORUM_REQUIRED),
            "member {i} ({name})"
        );
    }
    // Deleting a user a key's quorum needs is refused (the key would be lost), unless forced.
    e.share_object(a, k, "bob", false).unwrap();
    e.logout(a).unwrap();
    let (code, out, err) = tool(setup, &["user", "delete", "carol"], so_pin, None);
    assert_eq!(code, 1, "{name}: {out}{err}");
    assert!(err.contains("CKR_HSMPOOL_QUORUM_TOO_HIGH"), "{err}");
    let (code, out, err) = tool(setup, &["user", "delete", "carol", "--force"], so_pin, None);
    assert_eq!(code, 0, "{name}: {out}{err}");
}

#[test]
fn in_process_a_key_quorum_guards_its_use_and_management() {
    a_key_quorum_guards_its_use_and_management(&Setup::in_process());
}

#[test]
fn daemons_a_key_quorum_guards_its_use_and_management() {
    a_key_quorum_guards_its_use_and_management(&Setup::daemons());
}

/// SHA-256 of the first certificate of a PEM file.
fn cert_digest(path: &std::path::Path) -> [u8; 32] {
    let text = std::fs::read(path).unwrap();
    let der = pem::parse_many(&text)
        .unwrap()
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .unwrap();
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.contents())
        .as_ref()
        .try_into()
        .unwrap()
}

fn the_officers_register_the_cluster_certificates_under_quorum(setup: &Setup) {
    use hsmpool_member::users::CKR_HSMPOOL_QUORUM_REQUIRED;
    use hsmpool_member::Approval;
    let name = setup.name();
    let so_pin = std::str::from_utf8(SO).unwrap();
    let (admin, so) = officer(setup);
    let keys: Vec<(&str, aws_lc_rs::signature::EcdsaKeyPair)> = ["bob", "carol"]
        .iter()
        .map(|o| (*o, approval_key()))
        .collect();
    for (o, k) in &keys {
        admin
            .change_user(&create(o, Role::Officer, &format!("{o}-pw-1")))
            .unwrap();
        register_approval_key(setup, CKU_SO, o, k);
    }
    admin.change_user(&UserChange::SetQuorum { m: 2 }).unwrap();
    let (code, out, err) = tool(setup, &["cluster", "trust", "list"], so_pin, None);
    assert_eq!(code, 0, "{name}: {out}{err}");
    assert!(out.contains("none registered"), "{out}");

    // The cluster certificate the clients' leaves are issued under, and another cluster's.
    let dir = tempfile::tempdir().unwrap();
    let new_cluster = |n: &str| {
        let d = dir.path().join(n);
        let (code, out, err) = tool_env(
            setup,
            &[
                "cluster",
                "init",
                "--test-only-sign-with-new-ca",
                "--dir",
                d.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
        d.join("cluster.crt.pem")
    };
    let ours = match setup {
        Setup::Daemons(dc) => dc.pki.join("cluster.crt.pem"),
        Setup::InProcess { .. } => new_cluster("ours"),
    };
    let other = new_cluster("other");
    let ours_s = ours.to_str().unwrap();
    let other_s = other.to_str().unwrap();

    // Without the officers' approvals: refused.
    let (code, out, err) = tool(setup, &["cluster", "trust", "set", ours_s], so_pin, None);
    assert_eq!(code, 1, "{name}: {out}{err}");
    assert!(err.contains("CKR_HSMPOOL_QUORUM_REQUIRED"), "{err}");
    let set = |digests: Vec<[u8; 32]>| {
        let change = UserChange::SetTrustAnchors { anchors: digests };
        assert_eq!(
            rv(admin.change_user(&change)),
            CKR_HSMPOOL_QUORUM_REQUIRED,
            "{name}"
        );
        let token = admin.quorum_token(&change).unwrap();
        let approval = Approval {
            signatures: keys.iter().map(|(o, k)| signed(o, k, &token)).collect(),
            token,
        };
        admin.change_user_approved(&change, &approval).unwrap();
    };
    if let Setup::Daemons(_) = setup {
        // This tool's own chain is under our cluster certificate: a list without it would
        // lock the tool out, and is refused before any member is asked.
        let (code, out, err) = tool(setup, &["cluster", "trust", "set", other_s], so_pin, None);
        assert_eq!(code, 1, "{out}{err}");
        assert!(err.contains("own client chain"), "{err}");
    }
    // With M approvals: on every member.
    set(vec![cert_digest(&ours)]);
    for (i, users) in admin.member_users().unwrap() {
        assert_eq!(
            users.unwrap().trust_anchors(),
            vec![cert_digest(&ours)],
            "member {i} ({name})"
        );
    }
    let (code, out, err) = tool(setup, &["cluster", "trust", "list"], so_pin, None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            &cert_digest(&ours)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        "{name}: {out}"
    );
    // Clients under our cluster certificate still connect, on each member alone.
    for i in 0..3 {
        logs_in_and_signs(&setup.engine(&[i]), std::str::from_utf8(PIN).unwrap());
    }
    if let Setup::Daemons(dc) = setup {
        // Only the other cluster's certificate, on every member: each daemon refuses every new
        // connection of ours, though each chains to the customer CA; a connection opened before
        // stays until it closes. (Engines that give up retrying after 1.5 s, not the default
        // 20.)
        let quick = || {
            let text = dc.config_text(&[0], "probe_interval_ms = 50\ncall_deadline_ms = 1500");
            Engine::new(Config::parse(&text, "test").unwrap()).unwrap()
        };
        let connected = quick();
        let (r, s) = user_login(&connected, std::str::from_utf8(PIN).unwrap());
        assert_eq!(r, CKR_OK);
        let (_, k) = ec_pair(&connected, s, b"before", false);
        set(vec![cert_digest(&other)]);
        for (i, users) in admin.member_users().unwrap() {
            assert_eq!(
                users.unwrap().trust_anchors(),
                vec![cert_digest(&other)],
                "member {i}"
            );
        }
        let signed = connected
            .op_init(
                s,
                hsmpool_engine::types::OpKind::Sign,
                hsmpool_engine::Mechanism::plain(CKM_ECDSA_SHA256),
                k,
            )
            .and_then(|()| {
                let mut out = vec![0u8; 64];
                connected.op_single(
                    s,
                    hsmpool_engine::types::OpKind::Sign,
                    b"after",
                    Some(&mut out),
                )
            });
        assert_eq!(rv(signed), CKR_OK, "a connection made before stays");
        let (r, _) = user_login(&quick(), std::str::from_utf8(PIN).unwrap());
        assert_ne!(
            r, CKR_OK,
            "a client under an unregistered cluster certificate"
        );
    }
    admin.logout(so).ok();
}

#[test]
fn in_process_the_officers_register_the_cluster_certificates_under_quorum() {
    the_officers_register_the_cluster_certificates_under_quorum(&Setup::in_process());
}

#[test]
fn daemons_the_officers_register_the_cluster_certificates_under_quorum() {
    the_officers_register_the_cluster_certificates_under_quorum(&Setup::daemons());
}
