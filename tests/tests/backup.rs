//! Backups (issue 15), through the `hsmpool` tool as an operator runs it, over a cluster of
//! three in-process members (and one of three `hsmpool-hsmd` daemons): restore into a new
//! cluster with everything in it, the named refusal of a damaged or foreign backup, deletion
//! by date in every form, retention, crashes while writing, the schedule and membership
//! changes.

use std::path::PathBuf;
use std::process::{Command, Output};

use cryptoki_sys::*;
use hsmpool_engine::config::Config;
use hsmpool_engine::types::{SessionHandle, SlotId};
use hsmpool_engine::{Attr, Engine};
use hsmpool_member::{Role, UserChange};
use hsmpool_tests::engine::{ec_pair, init_and_login_user, sign, value};
use hsmpool_tests::workspace_bin;
use zeroize::Zeroizing;

const SO: &str = "so-pin-1234";
const SLOT: SlotId = SlotId(0);

/// A cluster of embedded members described by a configuration file, with backup stores for
/// two regions, driven through the `hsmpool` tool.
struct Lab {
    root: tempfile::TempDir,
    conf: PathBuf,
}

impl Lab {
    fn new(members: usize) -> Lab {
        let root = tempfile::tempdir().unwrap();
        let conf = root.path().join("hsmpool.toml");
        let lab = Lab { root, conf };
        let dirs: Vec<PathBuf> = (0..members).map(|i| lab.path(&format!("hsm{i}"))).collect();
        lab.write_conf(&dirs);
        lab
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn write_conf(&self, dirs: &[PathBuf]) {
        std::fs::write(&self.conf, self.conf_text(dirs)).unwrap();
    }

    fn conf_text(&self, dirs: &[PathBuf]) -> String {
        let mut t = format!(
            "[cluster]\nprobe_interval_ms = 50\nslow_start_ms = 100\nmin_replicas = 2\n\
             [backup]\nstore = {:?}\nregion = \"us-east-1\"\n[backup.regions]\n\
             eu-west-1 = {:?}\nscratch = {:?}\n",
            self.path("store-us").display().to_string(),
            self.path("store-eu").display().to_string(),
            self.path("store-scratch").display().to_string()
        );
        for d in dirs {
            t.push_str(&format!(
                "[[member]]\nkind = \"embedded\"\ndata_dir = {:?}\npin_iterations = 1000\n",
                d.display().to_string()
            ));
        }
        t
    }

    /// An engine over the configured cluster (drop it before the tool runs).
    fn engine(&self) -> Engine {
        let text = std::fs::read_to_string(&self.conf).unwrap();
        Engine::new(Config::parse(&text, "test").unwrap()).unwrap()
    }

    /// An engine over these member directories.
    fn engine_over(&self, dirs: &[PathBuf]) -> Engine {
        Engine::new(Config::parse(&self.conf_text(dirs), "test").unwrap()).unwrap()
    }

    /// `hsmpool ARGS` with this configuration and the officer's PIN, plus `env`.
    fn tool(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(workspace_bin("hsmpool"));
        c.args(args)
            .env("HSMPOOL_CONF", &self.conf)
            .env("HSMPOOL_SO_PIN", format!("admin:{SO}"))
            .env_remove("HSMPOOL_BACKUP_FAULT")
            .env_remove("HSMPOOL_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// `hsmpool ARGS`, which must succeed: its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.tool(args, &[]);
        assert!(
            out.status.success(),
            "hsmpool {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The manifests `hsmpool backup list --json` shows for `region`.
    fn list(&self, region: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&["backup", "list", "--region", region, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Take a backup now: its id.
    fn create(&self) -> String {
        let out = self.ok(&["backup", "create"]);
        backup_id(&out)
    }
}

/// The id in `backup ID of cluster ...`.
fn backup_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("backup "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no backup id in {out:?}"))
        .to_string()
}

fn field<'a>(m: &'a serde_json::Value, k: &str) -> &'a str {
    m[k].as_str().unwrap_or_else(|| panic!("{k} in {m}"))
}

fn pw(p: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(p.as_bytes().to_vec())
}

/// A session of `e` logged in with `pin` as `user_type`.
fn login(e: &Engine, user_type: CK_USER_TYPE, pin: &str) -> SessionHandle {
    let s = e
        .open_session(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    e.login(s, user_type, pin.as_bytes(), None)
        .unwrap_or_else(|err| panic!("{pin:?} logs in: {err}"));
    s
}

/// The one object labelled `label` that `s` sees, of `class`.
fn one(e: &Engine, s: SessionHandle, label: &str, class: CK_OBJECT_CLASS) -> u64 {
    let found = hsmpool_tests::engine::find(
        e,
        s,
        vec![
            Attr::bytes(CKA_LABEL, label.as_bytes()),
            Attr::ulong(CKA_CLASS, class),
        ],
    );
    assert_eq!(found.len(), 1, "{label:?} class {class:#x}");
    found[0].0
}

fn approval_key() -> aws_lc_rs::signature::EcdsaKeyPair {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap()
}

/// The officers' approval keys (carol's, dave's).
struct Officers(Vec<(&'static str, aws_lc_rs::signature::EcdsaKeyPair)>);

impl Officers {
    /// `change`, made by admin on `e` with carol's and dave's approvals.
    fn approve(&self, e: &Engine, change: &UserChange) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let token = e.quorum_token(change).unwrap();
        let signatures = self
            .0
            .iter()
            .map(|(n, k)| {
                (
                    n.to_string(),
                    k.sign(&rng, &token).unwrap().as_ref().to_vec(),
                )
            })
            .collect();
        e.change_user_approved(change, &hsmpool_member::Approval { token, signatures })
            .unwrap();
    }
}

/// Initialise the lab's cluster: the officer `admin`, crypto users alice and bob and officers
/// carol and dave, each with an approval key, and the officers' quorum at 2; alice's EC root
/// key shared with bob and needing two approvals to manage, and her AES key. Returns the root
/// key's public point and the officers' approval keys.
fn populate(lab: &Lab) -> (Vec<u8>, Officers) {
    use aws_lc_rs::signature::KeyPair;
    let e = lab.engine();
    let s = init_and_login_user(&e, b"backup-lab", SO.as_bytes(), b"default-user-pin");
    e.logout(s).unwrap();
    e.login(s, CKU_SO, SO.as_bytes(), None).unwrap();
    for (name, role) in [
        ("alice", Role::User),
        ("bob", Role::User),
        ("carol", Role::Officer),
        ("dave", Role::Officer),
    ] {
        e.change_user(&UserChange::Create {
            name: name.into(),
            role,
            password: pw(&format!("{name}-pw-1")),
        })
        .unwrap();
    }
    e.logout(s).unwrap();
    let mut officers = Vec::new();
    for (name, ty) in [
        ("alice", CKU_USER),
        ("bob", CKU_USER),
        ("carol", CKU_SO),
        ("dave", CKU_SO),
    ] {
        let kp = approval_key();
        let u = login(&e, ty, &format!("{name}:{name}-pw-1"));
        e.change_user(&UserChange::SetApprovalKey {
            name: name.into(),
            public_key: kp.public_key().as_ref().to_vec(),
        })
        .unwrap();
        e.logout(u).unwrap();
        if ty == CKU_SO {
            officers.push((name, kp));
        }
    }
    let s = login(&e, CKU_SO, &format!("admin:{SO}"));
    e.change_user(&UserChange::SetQuorum { m: 2 }).unwrap();
    e.logout(s).unwrap();
    let a = login(&e, CKU_USER, "alice:alice-pw-1");
    let (public, private) = ec_pair(&e, a, b"root-ca", true);
    hsmpool_tests::engine::aes_token_key(&e, a, b"alice-aes");
    e.share_object(a, private, "bob", true).unwrap();
    e.set_key_quorum(a, private, hsmpool_member::KeyService::Manage, 2)
        .unwrap();
    let point = value(&e, a, public, CKA_EC_POINT);
    e.logout(a).unwrap();
    (point, Officers(officers))
}

fn hex7() -> String {
    "07".repeat(32)
}

fn verify_p256(point: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
    // CKA_EC_POINT is a DER OCTET STRING around the uncompressed point.
    let raw = &point[2..];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, raw)
        .verify(msg, sig)
        .is_ok()
}

#[test]
fn a_backup_restores_into_a_new_cluster_with_every_key_user_share_and_quorum() {
    let lab = Lab::new(3);
    let (root_point, officers) = populate(&lab);
    // A registered cluster certificate (its digest), under the officers' quorum.
    {
        let e = lab.engine();
        let s = login(&e, CKU_SO, &format!("admin:{SO}"));
        officers.approve(
            &e,
            &UserChange::SetTrustAnchors {
                anchors: vec![[7; 32]],
            },
        );
        e.logout(s).unwrap();
    }
    let id = lab.create();
    let listed = lab.list("us-east-1");
    assert_eq!(listed.len(), 1);
    let m = &listed[0];
    assert_eq!(field(m, "id"), id);
    let old_cluster = field(m, "cluster").to_string();
    assert_eq!(m["inventory"]["objects"].as_array().unwrap().len(), 3);
    assert_eq!(m["inventory"]["trust_anchors"], serde_json::json!([hex7()]));
    assert_eq!(m["inventory"]["quorum"], 2);

    // After the backup: alice's AES key destroyed, `user` deleted, alice's password changed
    // (the last two under the officers' quorum).
    {
        let e = lab.engine();
        let a = login(&e, CKU_USER, "alice:alice-pw-1");
        let aes = one(&e, a, "alice-aes", CKO_SECRET_KEY);
        e.destroy_object(a, hsmpool_engine::types::ObjectHandle(aes))
            .unwrap();
        e.logout(a).unwrap();
        let s = login(&e, CKU_SO, &format!("admin:{SO}"));
        officers.approve(
            &e,
            &UserChange::Delete {
                name: "user".into(),
                force: false,
            },
        );
        officers.approve(
            &e,
            &UserChange::Password {
                name: "alice".into(),
                password: pw("alice-pw-2"),
            },
        );
        e.logout(s).unwrap();
    }
    // The tool names the backups that still hold the old state.
    // (An officer's own password needs no approvals.)
    let out = lab.tool(
        &["user", "passwd", "admin"],
        &[("HSMPOOL_NEW_PIN", "so-pin-5678")],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("still hold the old password of user admin: {id}"))
            && said.contains(&format!(
                "backup delete --cluster {old_cluster} --region us-east-1 --before"
            )),
        "{said}"
    );

    // Restore into a new cluster of three.
    let new: Vec<PathBuf> = (0..3).map(|i| lab.path(&format!("new{i}"))).collect();
    let mut args = vec!["backup", "restore", "--backup", &id, "--into"];
    let names: Vec<String> = new.iter().map(|d| d.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let out = lab.ok(&args);
    assert!(out.contains("restored into a new cluster"), "{out}");
    assert!(
        out.contains("1 registered cluster certificate(s) were left out"),
        "{out}"
    );
    assert!(
        !out.contains(&format!("new cluster {old_cluster}")),
        "{out}"
    );

    let e = lab.engine_over(&new);
    // Every user logs in (with the password of the backup's time), `user` too.
    let u = login(&e, CKU_USER, "user:default-user-pin");
    e.logout(u).unwrap();
    let s = login(&e, CKU_SO, "carol:carol-pw-1");
    let set = e.users().unwrap();
    let mut names: Vec<String> = set.users.into_iter().map(|u| u.name).collect();
    names.sort();
    // `user` is the crypto user C_InitPIN made.
    assert_eq!(names, ["admin", "alice", "bob", "carol", "dave", "user"]);
    assert_eq!(set.quorum, 2, "the officers' quorum holds");
    // Unclaimed: no cluster certificate is registered until its officers register one.
    for (_, set) in e.member_users().unwrap() {
        assert!(set.unwrap().trust_anchors().is_empty());
    }
    let owned = e.owned_objects(None).unwrap();
    e.logout(s).unwrap();
    let root = owned
        .iter()
        .find(|o| o.label == b"root-ca" && o.class == CKO_PRIVATE_KEY)
        .unwrap();
    assert_eq!(root.owner.as_deref(), Some("alice"));
    assert_eq!(root.shared_with, vec!["bob".to_string()]);
    assert!(
        owned.iter().any(|o| o.label == b"alice-aes"),
        "the destroyed key is back"
    );
    let a = login(&e, CKU_USER, "alice:alice-pw-1");
    let key = one(&e, a, "root-ca", CKO_PRIVATE_KEY);
    let key = hsmpool_engine::types::ObjectHandle(key);
    let sig = sign(&e, a, CKM_ECDSA_SHA256, key, b"restored");
    assert!(
        verify_p256(&root_point, b"restored", &sig),
        "the same key signs"
    );
    assert_eq!(
        value(&e, a, key, hsmpool_member::types::CKA_HSMPOOL_QUORUM_MANAGE),
        (2 as CK_ULONG).to_ne_bytes().to_vec(),
        "the key's quorum holds"
    );
    e.logout(a).unwrap();
    let b = login(&e, CKU_USER, "bob:bob-pw-1");
    let key = hsmpool_engine::types::ObjectHandle(one(&e, b, "root-ca", CKO_PRIVATE_KEY));
    let sig = sign(&e, b, CKM_ECDSA_SHA256, key, b"shared");
    assert!(
        verify_p256(&root_point, b"shared", &sig),
        "bob signs with the shared key"
    );
    e.logout(b).unwrap();
    drop(e);

    // verify: restores into a scratch HSM, compares, signs.
    let out = lab.ok(&["backup", "verify", "--backup", &id]);
    assert!(
        out.contains(&format!("backup {id} of cluster {old_cluster} verified")),
        "{out}"
    );
    assert!(out.contains("signs and verifies"), "{out}");
}

/// A cluster with a little in it (one user, one key) and enough data objects that a backup
/// has several segments.
fn small_cluster(lab: &Lab, data_objects: usize) {
    let e = lab.engine();
    let s = init_and_login_user(&e, b"backup-lab", SO.as_bytes(), b"default-user-pin");
    // Two pairs with the same (empty) CKA_ID: verify must still pair each key with its own.
    ec_pair(&e, s, b"k1", true);
    ec_pair(&e, s, b"k2", true);
    for i in 0..data_objects {
        e.create_object(
            s,
            vec![
                Attr::ulong(CKA_CLASS, CKO_DATA),
                Attr::bool(CKA_TOKEN, true),
                Attr::bytes(CKA_LABEL, format!("data-{i}").as_bytes()),
                Attr::bytes(CKA_VALUE, &[i as u8; 1000]),
            ],
        )
        .unwrap();
    }
    e.logout(s).unwrap();
}

/// `hsmpool backup restore` of `id` into a new directory: its failure message.
fn restore_fails(lab: &Lab, id: &str, cluster: Option<&str>, into: &str) -> String {
    let dir = lab.path(into);
    let dir = dir.display().to_string();
    let mut args = vec!["backup", "restore", "--backup", id, "--into", &dir];
    if let Some(c) = cluster {
        args.extend(["--cluster", c]);
    }
    let out = lab.tool(&args, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        !lab.path(into).exists(),
        "a refused restore leaves no HSM behind"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_changed_cut_reordered_or_foreign_backup_is_refused_by_name() {
    let lab = Lab::new(3);
    small_cluster(&lab, 150);
    let id = lab.create();
    let m = lab.list("us-east-1")[0].clone();
    let cluster = field(&m, "cluster").to_string();
    let image = lab.path(&format!("store-us/images/{cluster}/{id}.img"));
    let whole = std::fs::read(&image).unwrap();
    let (_, header_len) = hsmpool_member::backup::Header::parse(&whole).unwrap();
    assert!(whole.len() > header_len + 2 * 65536, "several segments");

    // One byte changed, in the middle.
    let mut changed = whole.clone();
    changed[whole.len() / 2] ^= 1;
    std::fs::write(&image, &changed).unwrap();
    let why = restore_fails(&lab, &id, None, "r1");
    assert!(why.contains("CKR_HSMPOOL_BACKUP_CHANGED"), "{why}");
    // And in the header (the inventory: who owns what).
    let mut changed = whole.clone();
    changed[header_len - 40] ^= 1;
    std::fs::write(&image, &changed).unwrap();
    let why = restore_fails(&lab, &id, None, "r1");
    assert!(why.contains("CKR_HSMPOOL_BACKUP_CHANGED"), "{why}");
    // Cut short.
    std::fs::write(&image, &whole[..whole.len() - 1000]).unwrap();
    let why = restore_fails(&lab, &id, None, "r1");
    assert!(why.contains("CKR_HSMPOOL_BACKUP_TRUNCATED"), "{why}");
    // The first two segments swapped.
    let seg = 9 + 12 + 65536 + 16;
    let mut swapped = whole[..header_len].to_vec();
    swapped.extend_from_slice(&whole[header_len + seg..header_len + 2 * seg]);
    swapped.extend_from_slice(&whole[header_len..header_len + seg]);
    swapped.extend_from_slice(&whole[header_len + 2 * seg..]);
    std::fs::write(&image, &swapped).unwrap();
    let why = restore_fails(&lab, &id, None, "r1");
    assert!(why.contains("CKR_HSMPOOL_BACKUP_REORDERED"), "{why}");
    std::fs::write(&image, &whole).unwrap();

    // Another cluster of the same fleet, backed up into the same store.
    let other = lab.path("other0");
    hsmpool_sim::backup::provision(std::slice::from_ref(&other), Some(&lab.path("hsm0"))).unwrap();
    let other_lab = Lab {
        root: tempfile::tempdir().unwrap(),
        conf: lab.path("other.toml"),
    };
    let text = lab
        .conf_text(std::slice::from_ref(&other))
        .replace(&other_lab.root.path().display().to_string(), "unused");
    std::fs::write(&other_lab.conf, text).unwrap();
    small_cluster(&other_lab, 0);
    let foreign = other_lab.create();
    let listed = lab.list("us-east-1");
    let fm = listed.iter().find(|m| field(m, "id") == foreign).unwrap();
    let other_cluster = field(fm, "cluster").to_string();
    assert_ne!(other_cluster, cluster);
    // Presented as this cluster's: its image and a manifest that says so, under a new id.
    let fake = "20261207T000000000Z-00000000";
    std::fs::copy(
        lab.path(&format!("store-us/images/{other_cluster}/{foreign}.img")),
        lab.path(&format!("store-us/images/{cluster}/{fake}.img")),
    )
    .unwrap();
    let mut fm = fm.clone();
    fm["cluster"] = serde_json::json!(cluster);
    fm["id"] = serde_json::json!(fake);
    std::fs::write(
        lab.path(&format!("store-us/manifests/{cluster}/{fake}.json")),
        serde_json::to_vec(&fm).unwrap(),
    )
    .unwrap();
    let why = restore_fails(&lab, fake, Some(&cluster), "r2");
    assert!(why.contains("CKR_HSMPOOL_BACKUP_WRONG_CLUSTER"), "{why}");
    let out = lab.tool(
        &["backup", "verify", "--backup", fake, "--cluster", &cluster],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    // The genuine one still restores and verifies.
    lab.ok(&["backup", "verify", "--backup", &id]);
}

/// Copy directory `from` (recursively) to a new `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Take a backup dated `at` (the schedule's own clock, one-hour intervals): its id.
fn backup_at(lab: &Lab, at: &str) -> String {
    let out = lab.ok(&[
        "backup",
        "schedule",
        "--once",
        "--now",
        at,
        "--every-hours",
        "1",
    ]);
    backup_id(&out)
}

/// The ids `delete --dry-run --json` selects (and checks that nothing went).
fn selected(lab: &Lab, cluster: &str, args: &[&str]) -> Vec<String> {
    let before = lab.list("us-east-1").len();
    let mut all = vec![
        "backup",
        "delete",
        "--cluster",
        cluster,
        "--region",
        "us-east-1",
        "--dry-run",
        "--json",
    ];
    all.extend_from_slice(args);
    let out = lab.tool(&all, &[("HSMPOOL_BACKUP_PAGE_SIZE", "2")]);
    assert!(out.status.success(), "{args:?}: {out:?}");
    assert_eq!(
        lab.list("us-east-1").len(),
        before,
        "a dry run deletes nothing"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["selected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn delete_before_reads_every_form_in_every_zone_pages_and_reports_failures() {
    let lab = Lab::new(2);
    small_cluster(&lab, 0);
    let times = [
        "2026-11-30T10:00:00Z",
        "2026-12-01T00:30:00Z",
        "2026-12-01T23:00:00Z",
        "2026-12-02T05:00:00Z",
        "2026-12-05T12:00:00Z",
        "2026-12-07T16:00:00Z",
    ];
    let ids: Vec<String> = times.iter().map(|t| backup_at(&lab, t)).collect();
    let cluster = field(&lab.list("us-east-1")[0], "cluster").to_string();
    // (timestamp, time zone, how many of the oldest are before it)
    for (ts, tz, n) in [
        ("2026-12-01T12:00:00Z", None, 2),
        ("2026-12-01T12:00:00+02:00", None, 2),
        ("2026-12-01T00:30:00Z", None, 1),
        ("2026-12-01T00:30:00.001Z", None, 2),
        ("2026-12-01T12:00", None, 2),
        ("2026-12-01T12:00", Some("-1200"), 3),
        ("2026-12-01", None, 1),
        ("2026-12-01", Some("+05:00"), 1),
        ("2026-12-01", Some("America/New_York"), 2),
        ("12/01/26", None, 1),
        ("12/01/26", Some("-0200"), 2),
        ("12/01/2026", None, 1),
        ("12/01/2026", Some("-03:00"), 2),
        ("12/02/2026 05:00", None, 3),
        ("12/02/2026 05:01", None, 4),
        ("12/02/2026 05:00", Some("+06:00"), 2),
        ("12/02/2026 05:01", Some("+06:00"), 3),
        ("12/02/2026 06:01", Some("Europe/Paris"), 4),
        ("12/31/2026", Some("Asia/Tokyo"), 6),
    ] {
        let mut args = vec!["--before", ts];
        if let Some(z) = tz {
            args.extend(["--timezone", z]);
        }
        assert_eq!(
            selected(&lab, &cluster, &args),
            ids[..n].to_vec(),
            "{ts} in {tz:?}"
        );
        // For real, on a copy of the store (region `scratch`): exactly those go.
        let scratch = lab.path("store-scratch");
        let _ = std::fs::remove_dir_all(&scratch);
        copy_dir(&lab.path("store-us"), &scratch);
        let mut all = vec![
            "backup",
            "delete",
            "--cluster",
            &cluster,
            "--region",
            "scratch",
            "--json",
        ];
        all.extend_from_slice(&args);
        let out = lab.tool(&all, &[("HSMPOOL_BACKUP_PAGE_SIZE", "2")]);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["deleted"], serde_json::json!(ids[..n]), "{ts} in {tz:?}");
        let left: Vec<String> = lab
            .list("scratch")
            .iter()
            .map(|m| field(m, "id").to_string())
            .collect();
        assert_eq!(left, ids[n..].to_vec(), "{ts} in {tz:?}");
    }
    assert_eq!(selected(&lab, &cluster, &["--all"]), ids);
    // A damaged manifest is named and left out; the others are still listed and selected.
    let junk = lab.path(&format!(
        "store-us/manifests/{cluster}/20261201T000000000Z-junk.json"
    ));
    std::fs::write(&junk, b"{not json").unwrap();
    let out = lab.tool(&["backup", "list", "--region", "us-east-1"], &[]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a manifest"),
        "{out:?}"
    );
    assert_eq!(selected(&lab, &cluster, &["--all"]), ids);
    std::fs::remove_file(&junk).unwrap();
    // Refused before anything is listed: both, neither, an unknown form, a zone beside an
    // offset, an unknown zone.
    for args in [
        vec!["--before", "2026-12-01", "--all"],
        vec![],
        vec!["--before", "yesterday"],
        vec!["--before", "1/2/2026"],
        vec!["--before", "2026-12-01T00:00:00Z", "--timezone", "+01:00"],
        vec!["--before", "2026-12-01", "--timezone", "Mars/Olympus"],
        vec!["--all", "--timezone", "UTC"],
    ] {
        let mut all = vec![
            "backup",
            "delete",
            "--cluster",
            &cluster,
            "--region",
            "us-east-1",
        ];
        all.extend_from_slice(&args);
        let out = lab.tool(&all, &[]);
        assert!(!out.status.success(), "{args:?} was taken");
        assert_eq!(lab.list("us-east-1").len(), 6, "{args:?} deleted something");
    }

    // For real, with the deletion of one failing: reported by id, exit 1, the others go.
    let fail = format!("fail-delete:{}", ids[1]);
    let out = lab.tool(
        &[
            "backup",
            "delete",
            "--cluster",
            &cluster,
            "--region",
            "us-east-1",
            "--before",
            "12/02/2026 05:01",
        ],
        &[
            ("HSMPOOL_BACKUP_FAULT", &fail),
            ("HSMPOOL_BACKUP_PAGE_SIZE", "2"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("FAILED to delete {}", ids[1])),
        "{err}"
    );
    let left: Vec<String> = lab
        .list("us-east-1")
        .iter()
        .map(|m| field(m, "id").to_string())
        .collect();
    assert_eq!(left, vec![ids[1].clone(), ids[4].clone(), ids[5].clone()]);
    // --all, as JSON.
    let out = lab.ok(&[
        "backup",
        "delete",
        "--cluster",
        &cluster,
        "--region",
        "us-east-1",
        "--all",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["deleted"].as_array().unwrap().len(), 3);
    assert!(lab.list("us-east-1").is_empty());
}

#[test]
fn retention_keeps_the_newest_and_leaves_copies_alone() {
    let lab = Lab::new(2);
    small_cluster(&lab, 0);
    let ids: Vec<String> = [
        "2026-11-01T00:00:00Z",
        "2026-11-20T00:00:00Z",
        "2026-11-25T00:00:00Z",
    ]
    .iter()
    .map(|t| backup_at(&lab, t))
    .collect();
    let cluster = field(&lab.list("us-east-1")[0], "cluster").to_string();
    // A copy in another region.
    let out = lab.ok(&[
        "backup",
        "copy",
        "--backup",
        &ids[0],
        "--to-region",
        "eu-west-1",
    ]);
    assert!(out.contains("copied to region eu-west-1"), "{out}");
    let copies = lab.list("eu-west-1");
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["source"]["backup"], ids[0].as_str());
    lab.ok(&[
        "backup",
        "retention",
        "set",
        "--days",
        "7",
        "--cluster",
        &cluster,
    ]);
    // On 2026-11-26 only the first is older than seven days.
    lab.ok(&[
        "backup",
        "retention",
        "apply",
        "--cluster",
        &cluster,
        "--now",
        "2026-11-26T00:00:00Z",
    ]);
    let left = |r: &str| -> Vec<String> {
        lab.list(r)
            .iter()
            .map(|m| field(m, "id").to_string())
            .collect()
    };
    assert_eq!(left("us-east-1"), ids[1..].to_vec());
    // A year later all are: the newest stays.
    lab.ok(&[
        "backup",
        "retention",
        "apply",
        "--cluster",
        &cluster,
        "--now",
        "2027-12-01T00:00:00Z",
    ]);
    assert_eq!(left("us-east-1"), vec![ids[2].clone()]);
    // The copy in the other region is outside retention, and restores.
    assert_eq!(left("eu-west-1").len(), 1);
    let copy_id = field(&copies[0], "id").to_string();
    lab.ok(&[
        "backup",
        "verify",
        "--backup",
        &copy_id,
        "--region",
        "eu-west-1",
    ]);
}

#[test]
fn a_crash_at_any_step_of_writing_leaves_nothing_half_listed() {
    let lab = Lab::new(2);
    small_cluster(&lab, 100);
    for (step, listed) in [
        ("after-export", false),
        ("mid-image", false),
        ("after-image", false),
        ("after-manifest", true),
    ] {
        let before = lab.list("us-east-1").len();
        let out = lab.tool(
            &["backup", "create"],
            &[("HSMPOOL_BACKUP_FAULT", &format!("crash:{step}"))],
        );
        assert!(!out.status.success(), "{step}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("crashing at {step}")),
            "{step}: {out:?}"
        );
        let after = lab.list("us-east-1");
        assert_eq!(after.len(), before + usize::from(listed), "{step}");
        // Whatever is listed is whole: it verifies.
        for m in &after {
            lab.ok(&[
                "backup",
                "verify",
                "--backup",
                field(m, "id"),
                "--sample",
                "1",
            ]);
        }
    }
    // And the next backup is taken as if nothing had happened.
    let id = lab.create();
    lab.ok(&["backup", "verify", "--backup", &id]);
}

#[test]
fn the_schedule_takes_one_backup_per_interval_however_many_schedulers_run() {
    let lab = Lab::new(2);
    small_cluster(&lab, 0);
    let at = |t: &str| {
        let mut c = Command::new(workspace_bin("hsmpool"));
        c.args(["backup", "schedule", "--once", "--now", t])
            .env("HSMPOOL_CONF", &lab.conf)
            .env("HSMPOOL_SO_PIN", format!("admin:{SO}"))
            .stdout(std::process::Stdio::null());
        c
    };
    // Two schedulers at once, four times over: one backup.
    let mut runs: Vec<std::process::Child> = (0..4)
        .map(|_| at("2026-12-07T09:00:00Z").spawn().unwrap())
        .collect();
    for r in &mut runs {
        assert!(r.wait().unwrap().success());
    }
    assert_eq!(lab.list("us-east-1").len(), 1);
    // An hour later: the same day's interval, nothing new.
    assert!(at("2026-12-07T10:00:00Z").status().unwrap().success());
    assert_eq!(lab.list("us-east-1").len(), 1);
    // The clock advanced 24 hours: one more.
    assert!(at("2026-12-08T10:00:00Z").status().unwrap().success());
    let listed = lab.list("us-east-1");
    assert_eq!(listed.len(), 2);
    assert_eq!(field(&listed[1], "trigger"), "schedule");
    assert_eq!(field(&listed[1], "created"), "2026-12-08T10:00:00.000Z");
}

#[test]
fn a_membership_change_takes_a_backup_and_the_new_member_holds_everything() {
    let lab = Lab::new(2);
    small_cluster(&lab, 3);
    let new = lab.path("hsm2");
    let out = lab.ok(&[
        "cluster",
        "member",
        "add",
        "--data-dir",
        &new.display().to_string(),
    ]);
    assert!(out.contains("member 2 added"), "{out}");
    let listed = lab.list("us-east-1");
    assert_eq!(listed.len(), 1, "{out}");
    assert!(field(&listed[0], "trigger").starts_with("membership: member 2 added"));
    assert_eq!(
        listed[0]["inventory"]["objects"].as_array().unwrap().len(),
        7
    );
    // The configuration names it, and it alone serves the key.
    let conf = std::fs::read_to_string(&lab.conf).unwrap();
    assert!(conf.contains(&new.display().to_string()), "{conf}");
    let e = lab.engine_over(std::slice::from_ref(&new));
    let s = login(&e, CKU_USER, "default-user-pin");
    let k = hsmpool_engine::types::ObjectHandle(one(&e, s, "k1", CKO_PRIVATE_KEY));
    assert_eq!(sign(&e, s, CKM_ECDSA_SHA256, k, b"joined").len(), 64);
    drop(e);
    // Removing one takes another.
    let out = lab.ok(&["cluster", "member", "remove", "0"]);
    assert!(out.contains("member 0 removed"), "{out}");
    let listed = lab.list("us-east-1");
    assert_eq!(listed.len(), 2);
    assert_eq!(field(&listed[1], "trigger"), "membership: member 0 removed");
    assert!(!std::fs::read_to_string(&lab.conf)
        .unwrap()
        .contains(&lab.path("hsm0").display().to_string()));
}

/// An RSA key pair of `bits` on `e` labelled `label` with CKA_ID `id`: (public, private).
fn rsa_pair(
    e: &Engine,
    s: SessionHandle,
    bits: CK_ULONG,
    label: &str,
    private: Vec<Attr>,
) -> (
    hsmpool_engine::types::ObjectHandle,
    hsmpool_engine::types::ObjectHandle,
) {
    let mut priv_t = vec![
        Attr::bool(CKA_TOKEN, true),
        Attr::bytes(CKA_LABEL, label.as_bytes()),
        Attr::bytes(CKA_ID, label.as_bytes()),
    ];
    priv_t.extend(private);
    e.generate_key_pair(
        s,
        hsmpool_engine::Mechanism::plain(CKM_RSA_PKCS_KEY_PAIR_GEN),
        vec![
            Attr::bool(CKA_TOKEN, true),
            Attr::ulong(CKA_MODULUS_BITS, bits),
            Attr::bytes(CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
            Attr::bool(CKA_VERIFY, true),
            Attr::bool(CKA_WRAP, true),
            Attr::bytes(CKA_LABEL, label.as_bytes()),
            Attr::bytes(CKA_ID, label.as_bytes()),
        ],
        priv_t,
    )
    .unwrap()
}

fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let n = body.len();
    let mut out = vec![tag];
    if n < 128 {
        out.push(n as u8);
    } else {
        let b: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|x| *x == 0)
            .collect();
        out.push(0x80 | b.len() as u8);
        out.extend(b);
    }
    out.extend_from_slice(body);
    out
}

/// An RSA public key (modulus, exponent) as a PEM SubjectPublicKeyInfo.
fn spki_pem(n: &[u8], e: &[u8]) -> String {
    let int = |v: &[u8]| {
        let v = if v[0] & 0x80 != 0 {
            [&[0u8][..], v].concat()
        } else {
            v.to_vec()
        };
        tlv(0x02, &v)
    };
    let rsa_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let alg = tlv(0x30, &[tlv(0x06, &rsa_oid), vec![0x05, 0x00]].concat());
    let key = tlv(0x30, &[int(n), int(e)].concat());
    let bits = tlv(0x03, &[&[0u8][..], &key].concat());
    pem::encode(&pem::Pem::new(
        "PUBLIC KEY",
        tlv(0x30, &[alg, bits].concat()),
    ))
}

#[test]
fn an_escrowed_key_imported_into_a_fresh_token_makes_the_same_signatures() {
    // The cluster, with an RSA root key that may be escrowed and one that may not.
    let lab = Lab::new(3);
    small_cluster(&lab, 0);
    let e = lab.engine();
    let s = login(&e, CKU_USER, "default-user-pin");
    let (_, root) = rsa_pair(
        &e,
        s,
        2048,
        "root-rsa",
        vec![
            Attr::bool(CKA_SIGN, true),
            Attr::bool(CKA_SENSITIVE, true),
            Attr::bool(CKA_EXTRACTABLE, true),
        ],
    );
    rsa_pair(
        &e,
        s,
        2048,
        "kept-in",
        vec![
            Attr::bool(CKA_SIGN, true),
            Attr::bool(CKA_EXTRACTABLE, false),
        ],
    );
    let signed = sign(&e, s, CKM_SHA256_RSA_PKCS, root, b"issue an intermediate");
    let root_uid = String::from_utf8(value(&e, s, root, CKA_UNIQUE_ID)).unwrap();
    e.logout(s).unwrap();
    drop(e);

    // The offline HSM: its own token, and its RSA-3072 escrow key pair.
    let offline = Lab::new(1);
    let oe = offline.engine();
    let os = init_and_login_user(&oe, b"offline-root", SO.as_bytes(), b"offline-pin");
    let (opub, _) = rsa_pair(
        &oe,
        os,
        3072,
        "offline-escrow",
        vec![
            Attr::bool(CKA_UNWRAP, true),
            Attr::bool(CKA_DECRYPT, false),
            Attr::bool(CKA_SENSITIVE, true),
        ],
    );
    let pem_text = spki_pem(
        &value(&oe, os, opub, CKA_MODULUS),
        &value(&oe, os, opub, CKA_PUBLIC_EXPONENT),
    );
    oe.logout(os).unwrap();
    drop(oe);
    let pem_path = lab.path("offline.pem");
    std::fs::write(&pem_path, pem_text).unwrap();
    let escrow = lab.path("root.escrow");
    let pem_arg = pem_path.display().to_string();
    let escrow_arg = escrow.display().to_string();

    // A key its policy keeps in the cluster is refused, and nothing is written.
    let out = lab.tool(
        &[
            "key",
            "escrow",
            "--key",
            "kept-in",
            "--to-public-key",
            &pem_arg,
            "--out",
            &escrow_arg,
        ],
        &[("HSMPOOL_PIN", "default-user-pin")],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CKR_KEY_UNEXTRACTABLE"),
        "{out:?}"
    );
    assert!(!escrow.exists());
    let out = lab.tool(
        &[
            "key",
            "escrow",
            "--key",
            "root-rsa",
            "--to-public-key",
            &pem_arg,
            "--out",
            &escrow_arg,
        ],
        &[("HSMPOOL_PIN", "default-user-pin")],
    );
    assert!(out.status.success(), "{out:?}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&escrow).unwrap()).unwrap();
    assert_eq!(file["aes_bits"], 128);
    assert!(file["public"].is_array(), "the public key travels with it");
    // The members' audit logs say so.
    {
        let e = lab.engine();
        let s = login(&e, CKU_SO, &format!("admin:{SO}"));
        for m in 0..3 {
            let log = e.audit_log(m, 1, 10_000).unwrap();
            let wraps = log
                .records
                .iter()
                .filter(|r| r.kind == "key_wrap" && r.subject == root_uid)
                .count();
            if wraps > 0 {
                e.logout(s).unwrap();
                break;
            }
            assert!(m < 2, "no member recorded the wrap of {root_uid}");
        }
    }

    // Brought into the offline token: the same signature, byte for byte (PKCS #1 v1.5).
    let out = offline.tool(
        &[
            "key",
            "import-escrow",
            "--file",
            &escrow_arg,
            "--unwrap-key",
            "offline-escrow",
        ],
        &[("HSMPOOL_PIN", "offline-pin")],
    );
    assert!(out.status.success(), "{out:?}");
    let oe = offline.engine();
    let os = login(&oe, CKU_USER, "offline-pin");
    let copy = hsmpool_engine::types::ObjectHandle(one(&oe, os, "root-rsa", CKO_PRIVATE_KEY));
    assert_eq!(
        sign(&oe, os, CKM_SHA256_RSA_PKCS, copy, b"issue an intermediate"),
        signed
    );
    assert_eq!(
        value(&oe, os, copy, CKA_EXTRACTABLE),
        vec![0],
        "it stays offline"
    );
    one(&oe, os, "root-rsa", CKO_PUBLIC_KEY);
}

#[test]
fn daemons_take_backups_over_the_wire_that_restore_in_process() {
    let dc = hsmpool_tests::daemons::DaemonCluster::start(
        3,
        hsmpool_tests::fault_seed(),
        "probe_interval_ms = 50\nslow_start_ms = 100\nmin_replicas = 2",
    );
    let root = tempfile::tempdir().unwrap();
    let lab = Lab {
        conf: root.path().join("daemons.toml"),
        root,
    };
    let text = format!(
        "{}[backup]\nstore = {:?}\nregion = \"us-east-1\"\n",
        dc.config_text(&[0, 1, 2], "probe_interval_ms = 50\nmin_replicas = 2"),
        lab.path("store-us").display().to_string()
    );
    std::fs::write(&lab.conf, text).unwrap();
    let point = {
        let e = lab.engine();
        let s = init_and_login_user(&e, b"daemons", SO.as_bytes(), b"default-user-pin");
        let (public, _) = ec_pair(&e, s, b"k1", true);
        value(&e, s, public, CKA_EC_POINT)
    };
    let id = lab.create();
    // No HSM of the fleet is configured here: the restore is told where one is.
    let new = lab.path("new0").display().to_string();
    let out = lab.tool(&["backup", "restore", "--backup", &id, "--into", &new], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--fleet-from"),
        "{out:?}"
    );
    let fleet = dc.data_dir(0).display().to_string();
    lab.ok(&[
        "backup",
        "restore",
        "--backup",
        &id,
        "--into",
        &new,
        "--fleet-from",
        &fleet,
    ]);
    let e = lab.engine_over(&[lab.path("new0")]);
    let s = login(&e, CKU_USER, "default-user-pin");
    let k = hsmpool_engine::types::ObjectHandle(one(&e, s, "k1", CKO_PRIVATE_KEY));
    let sig = sign(&e, s, CKM_ECDSA_SHA256, k, b"over the wire");
    assert!(verify_p256(&point, b"over the wire", &sig));
}

#[test]
fn the_systemd_unit_runs_a_command_the_tool_takes() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/systemd/hsmpool-backup.service"
    ))
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/hsmpool"));
    let mut args: Vec<&str> = words.collect();
    assert_eq!(args, ["backup", "schedule", "--once"]);
    args.push("--help");
    let out = Command::new(workspace_bin("hsmpool"))
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let timer = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/systemd/hsmpool-backup.timer"
    ))
    .unwrap();
    assert!(timer.contains("OnCalendar=hourly") && timer.contains("Persistent=true"));
}

/// What a backup of a cluster of some size costs, for the notes (not a timed check: run it by
/// hand with `--ignored --nocapture`; `HSMPOOL_MEASURE_KEYS` sets the number of key pairs).
#[test]
#[ignore]
fn measure_a_backup_of_many_keys() {
    let pairs: usize = std::env::var("HSMPOOL_MEASURE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let lab = Lab::new(2);
    small_cluster(&lab, 0);
    {
        let e = lab.engine();
        let s = login(&e, CKU_USER, "default-user-pin");
        for i in 0..pairs {
            ec_pair(&e, s, format!("key-{i}").as_bytes(), true);
        }
    }
    let time = |args: &[&str]| {
        let t = std::time::Instant::now();
        let out = lab.ok(args);
        (t.elapsed(), out)
    };
    let (create, out) = time(&["backup", "create"]);
    let id = backup_id(&out);
    let m = lab.list("us-east-1")[0].clone();
    assert_eq!(
        m["inventory"]["objects"].as_array().unwrap().len(),
        2 * pairs + 4
    );
    let (verify, _) = time(&["backup", "verify", "--backup", &id, "--sample", "16"]);
    let into = lab.path("restored").display().to_string();
    let (restore, _) = time(&["backup", "restore", "--backup", &id, "--into", &into]);
    println!(
        "{} objects: image {} bytes; create {:.2?}, verify (16 keys signed) {:.2?}, restore \
         into one HSM {:.2?}",
        2 * pairs + 4,
        m["size"],
        create,
        verify,
        restore
    );
}
