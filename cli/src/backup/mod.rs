//! `hsmpool backup ...`: the cluster's backups: taken by a member (everything it holds, sealed
//! under keys only HSMs of the fleet have: `hsmpool_member::backup`), kept in a backup store
//! per region (`store.rs`: a directory, or an S3-compatible, GCS or Azure bucket), each listed
//! by its manifest (`manifest.rs`), restored into a new cluster, verified, copied to another
//! region, expired by retention, deleted by date (`when.rs` reads the dates), and taken on a
//! schedule that two schedulers share through the store's create-only writes.
//!
//! Test-only fault injection, from `HSMPOOL_BACKUP_FAULT`: `crash:STEP` aborts the process at
//! STEP of `backup create` (`after-export`, `mid-image`, `after-image`, `after-manifest`);
//! `fail-delete:ID` makes the deletion of backup ID fail.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use aws_lc_rs::digest;
use clap::{Args, Parser, Subcommand};
use cryptoki_sys::CKU_SO;
use hsmpool_engine::config::{default_data_dir, Config, MemberKind};
use hsmpool_engine::Engine;
use hsmpool_member::backup::{
    backup_rv_name, cluster_hex, Header, CKR_HSMPOOL_BACKUP_CHANGED, CKR_HSMPOOL_BACKUP_REORDERED,
    CKR_HSMPOOL_BACKUP_TRUNCATED, CKR_HSMPOOL_BACKUP_UNREADABLE, CKR_HSMPOOL_BACKUP_WRONG_CLUSTER,
};
use hsmpool_sim::backup::Expected;
use hsmpool_sim::error::SimError;
use hsmpool_sim::hsm::{Hsm, HsmConfig};

use crate::common::{failed, hex, open_cluster, parsed, secret, unhex};

pub mod manifest;
pub mod store;
pub mod when;

use manifest::{InventoryJson, Manifest, Source};
use store::{Created, Store};

/// The `backup` part of `hsmpool --help`.
pub const USAGE: &str = "  backup create|list|restore|verify|delete|copy|retention|schedule ...
                              the cluster's encrypted backups in a backup store per region
                              (hsmpool backup --help)
";

const EXAMPLES: &str = "Examples:
  # take one now, and list this cluster's
  HSMPOOL_SO_PIN=... hsmpool backup create
  hsmpool backup list
  # restore one into a new cluster of three HSMs, and check a backup without touching anything
  hsmpool backup restore --backup 20261207T161500123Z-0a1b2c3d --into /srv/new/hsm0 /srv/new/hsm1 /srv/new/hsm2
  hsmpool backup verify --backup 20261207T161500123Z-0a1b2c3d
  # what would go: everything of cluster C in us-east-1 taken before 1 Dec 2026, Paris time
  hsmpool backup delete --cluster C --region us-east-1 --before 12/01/2026 --timezone Europe/Paris --dry-run
  # every day (a systemd timer runs this hourly: dist/hsmpool-backup.timer)
  HSMPOOL_SO_PIN=... hsmpool backup schedule --once

The store is [backup] store in HSMPOOL_CONF (a directory or s3://, gs://, az:// URL; default:
backups under the data directory), in [backup] region (default local); [backup.regions] names
other regions' stores. Exit status: 0 done, 1 refused or failed (the message says what and why),
2 a usage error.";

#[derive(Parser, Debug)]
#[command(
    name = "hsmpool backup",
    about = "The cluster's encrypted backups: take, list, restore, verify, copy, expire, delete",
    after_help = EXAMPLES
)]
struct BackupCli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Which backup, where.
#[derive(Args, Debug)]
struct Which {
    /// The backup's id (`hsmpool backup list`).
    #[arg(long)]
    backup: String,
    /// Its cluster (default: found by the id in the region's store).
    #[arg(long)]
    cluster: Option<String>,
    /// The region whose store holds it (default: [backup] region).
    #[arg(long)]
    region: Option<String>,
    /// An HSM data directory of the fleet, whose backup key the new HSMs get (default: the
    /// configured cluster's first embedded member).
    #[arg(long, value_name = "DIR")]
    fleet_from: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Take a backup of the configured cluster now (needs HSMPOOL_SO_PIN).
    Create {
        /// Why, as the manifest records it.
        #[arg(long, default_value = "manual")]
        trigger: String,
    },
    /// The backups in a region's store, oldest first.
    List {
        /// Only this cluster's.
        #[arg(long)]
        cluster: Option<String>,
        /// The region (default: [backup] region).
        #[arg(long)]
        region: Option<String>,
        /// One JSON array of manifests instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a new cluster: one new HSM per directory, every key with its
    /// owner, shares and quorum values, every user, the quorum policy. The new cluster has a
    /// new id and is unclaimed until its cluster certificate is registered again.
    Restore {
        #[command(flatten)]
        which: Which,
        /// The new HSMs' data directories (each new or empty).
        #[arg(long, num_args = 1.., required = true, value_name = "DIR")]
        into: Vec<PathBuf>,
    },
    /// Restore a backup into a scratch HSM, compare it with its manifest, and sign with a
    /// sample of its keys; nothing else is touched.
    Verify {
        #[command(flatten)]
        which: Which,
        /// How many signing keys to sign with.
        #[arg(long, default_value_t = 8)]
        sample: usize,
    },
    /// Delete a cluster's backups in one region: those taken before a time, or all.
    Delete {
        /// The cluster (hexadecimal id, as `hsmpool backup list` shows it).
        #[arg(long)]
        cluster: String,
        /// The region.
        #[arg(long)]
        region: String,
        /// Delete those taken before this time (see --help for the forms).
        #[arg(long, value_name = "TIMESTAMP")]
        before: Option<String>,
        /// Delete them all.
        #[arg(long)]
        all: bool,
        /// The time zone of a --before without an offset: -0200, +05:00, or an IANA name
        /// (default UTC).
        #[arg(long, value_name = "ZONE", allow_hyphen_values = true)]
        timezone: Option<String>,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Copy a backup to another region's store (the copy is outside retention).
    Copy {
        #[command(flatten)]
        which: Which,
        /// The region to copy it to ([backup.regions]).
        #[arg(long)]
        to_region: String,
    },
    /// Retention of the configured cluster's backups in the home region.
    Retention {
        #[command(subcommand)]
        cmd: RetentionCmd,
    },
    /// Take the cluster's backup once per interval (default [backup] interval_hours, 24): the
    /// first scheduler to claim an interval takes it, any other leaves it; then apply
    /// retention. Runs until stopped, or once with --once.
    Schedule {
        /// One round, then exit (for a systemd timer).
        #[arg(long)]
        once: bool,
        /// Act as if it were this time (tests, and catching up by hand).
        #[arg(long, value_name = "TIMESTAMP")]
        now: Option<String>,
        /// Hours per interval.
        #[arg(long)]
        every_hours: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum RetentionCmd {
    /// Keep backups this many days (the newest is always kept; copies are not affected).
    Set {
        /// Days.
        #[arg(long)]
        days: u32,
        /// The cluster (default: the configured one; needs HSMPOOL_SO_PIN).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Show the retention setting.
    Show {
        /// The cluster (default: the configured one; needs HSMPOOL_SO_PIN).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Expire backups older than the retention now.
    Apply {
        /// The cluster (default: the configured one; needs HSMPOOL_SO_PIN).
        #[arg(long)]
        cluster: Option<String>,
        /// Act as if it were this time.
        #[arg(long, value_name = "TIMESTAMP")]
        now: Option<String>,
    },
}

/// The configuration and the stores it names.
struct Ctx {
    cfg: Config,
    data: Option<PathBuf>,
    rt: Arc<tokio::runtime::Runtime>,
}

/// The test-only fault `HSMPOOL_BACKUP_FAULT` names, if any.
fn fault() -> Option<String> {
    std::env::var("HSMPOOL_BACKUP_FAULT")
        .ok()
        .filter(|f| !f.is_empty())
}

/// Abort here when told to crash at `step` (see the module documentation).
fn crash_point(step: &str) {
    if fault().is_some_and(|f| f == format!("crash:{step}")) {
        eprintln!("hsmpool: HSMPOOL_BACKUP_FAULT: crashing at {step}");
        std::process::abort();
    }
}

fn manifest_path(cluster: &str, id: &str) -> String {
    format!("manifests/{cluster}/{id}.json")
}

fn image_path(cluster: &str, id: &str) -> String {
    format!("images/{cluster}/{id}.img")
}

fn sha256_hex(b: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, b).as_ref())
}

/// A new backup id: its time (so names sort by age) and 32 random bits.
fn new_id(created_ms: u64) -> Result<String, String> {
    let mut r = [0u8; 4];
    aws_lc_rs::rand::fill(&mut r).map_err(|_| "random generator failed".to_string())?;
    let t = jiff::Timestamp::from_millisecond(created_ms as i64).map_err(|e| e.to_string())?;
    Ok(format!("{}-{}", t.strftime("%Y%m%dT%H%M%S%3fZ"), hex(&r)))
}

impl Ctx {
    /// The module's configuration (HSMPOOL_CONF, else the embedded default): what the commands
    /// that take a backup as a side effect (membership, stale-state notices) work on.
    fn configured() -> Result<Ctx, String> {
        Ok(Ctx {
            cfg: Config::resolve(None).map_err(|e| e.to_string())?,
            data: None,
            rt: runtime()?,
        })
    }

    fn home_region(&self) -> String {
        self.cfg
            .backup
            .region
            .clone()
            .unwrap_or_else(|| "local".into())
    }

    fn page(&self) -> usize {
        std::env::var("HSMPOOL_BACKUP_PAGE_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .or(self.cfg.backup.page_size)
            .unwrap_or(1000)
            .max(1)
    }

    /// The store of `region` (default: home).
    fn store(&self, region: Option<&str>) -> Result<Store, String> {
        let home = self.home_region();
        let region = region.unwrap_or(&home);
        let url = if region == home {
            self.cfg.backup.store.clone().unwrap_or_else(|| {
                default_data_dir()
                    .join("backups")
                    .to_string_lossy()
                    .into_owned()
            })
        } else {
            self.cfg
                .backup
                .regions
                .get(region)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "no store for region {region:?}: this configuration knows {home:?} \
                         ([backup] store) and {:?} ([backup.regions])",
                        self.cfg.backup.regions.keys().collect::<Vec<_>>()
                    )
                })?
        };
        Store::open(&url, region, Arc::clone(&self.rt))
    }

    /// The engine over the configured cluster, logged in as an officer.
    fn engine(&self) -> Result<Engine, String> {
        let pin = secret("HSMPOOL_SO_PIN")?;
        open_cluster(self.data.clone(), &pin, CKU_SO, true).map(|(e, _)| e)
    }

    /// `cluster`, or the configured cluster's id.
    fn cluster_or_own(&self, cluster: Option<String>) -> Result<String, String> {
        match cluster {
            Some(c) => checked_cluster(&c),
            None => {
                let e = self.engine()?;
                e.cluster_id()
                    .map(|id| cluster_hex(&id))
                    .map_err(|e| format!("the cluster's id: {e}"))
            }
        }
    }
}

fn checked_cluster(c: &str) -> Result<String, String> {
    let b = unhex(c)?;
    if b.len() != 16 {
        return Err(format!("{c:?} is not a cluster id (32 hexadecimal digits)"));
    }
    Ok(hex(&b))
}

/// Every manifest of `cluster` (all clusters when `None`) in `store`, oldest first (one that
/// cannot be read is named on standard error and left out).
fn manifests(store: &Store, cluster: Option<&str>, page: usize) -> Result<Vec<Manifest>, String> {
    let prefix = match cluster {
        Some(c) => format!("manifests/{c}"),
        None => "manifests".into(),
    };
    let mut out = Vec::new();
    for name in store.list_all(&prefix, page)? {
        if !name.ends_with(".json") {
            continue;
        }
        let path = format!("{prefix}/{name}");
        let Some(bytes) = store.get(&path)? else {
            continue; // deleted since it was listed
        };
        // One unreadable manifest must not hide the others (nor stop a deletion): it is named
        // and left out.
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(m) if m.format == manifest::FORMAT => out.push(m),
            Ok(m) => eprintln!(
                "hsmpool: {}: {path}: manifest format {} (this build reads {}): left out",
                store.url(),
                m.format,
                manifest::FORMAT
            ),
            Err(e) => eprintln!(
                "hsmpool: {}: {path}: not a manifest ({e}): left out",
                store.url()
            ),
        }
    }
    out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    Ok(out)
}

/// The manifest of backup `which`.
fn find(ctx: &Ctx, store: &Store, which: &Which) -> Result<Manifest, String> {
    let cluster = which.cluster.as_deref().map(checked_cluster).transpose()?;
    if !hsmpool_member::backup::valid_id(&which.backup) {
        return Err(format!("{:?} is not a backup id", which.backup));
    }
    // Without a cluster, the listing's names say which clusters hold the id: only those
    // manifests are read, not every one in the region.
    let paths: Vec<String> = match &cluster {
        Some(c) => vec![manifest_path(c, &which.backup)],
        None => {
            let file = format!("{}.json", which.backup);
            store
                .list_all("manifests", ctx.page())?
                .into_iter()
                .filter(|n| n.rsplit('/').next() == Some(file.as_str()))
                .map(|n| format!("manifests/{n}"))
                .collect()
        }
    };
    let mut found: Vec<Manifest> = Vec::new();
    for path in &paths {
        if let Some(b) = store.get(path)? {
            found.push(serde_json::from_slice(&b).map_err(|e| format!("{path}: {e}"))?);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no backup {} in region {} ({})",
            which.backup,
            store.region,
            store.url()
        )),
        _ => Err(format!(
            "backup {} is listed for several clusters: name one with --cluster",
            which.backup
        )),
    }
}

/// Take a backup of the engine's cluster, dated `created_ms`, and store it: the image in
/// parts, then the manifest.
pub(crate) fn take(
    engine: &Engine,
    store: &Store,
    trigger: &str,
    created_ms: u64,
) -> Result<Manifest, String> {
    let id = new_id(created_ms)?;
    let (member, image) = engine
        .export_backup(&id, created_ms)
        .map_err(|e| format!("taking backup {id}: {e}"))?;
    crash_point("after-export");
    let (header, _) = Header::parse(&image)
        .map_err(|f| format!("member {member} answered an unreadable image ({f:?})"))?;
    if header.backup_id != id {
        return Err(format!(
            "member {member} answered an image of another backup"
        ));
    }
    let cluster = cluster_hex(&header.cluster_id);
    let m = Manifest {
        format: manifest::FORMAT,
        id: id.clone(),
        cluster: cluster.clone(),
        region: store.region.clone(),
        created: when::rfc3339(created_ms),
        created_ms,
        source: None,
        size: image.len() as u64,
        sha256: sha256_hex(&image),
        state: "ready".into(),
        audit_seq: header.audit_seq,
        trigger: trigger.to_string(),
        inventory: InventoryJson::from(&header.inventory),
    };
    store.put_parts(&image_path(&cluster, &id), &image, &|_| {
        crash_point("mid-image")
    })?;
    crash_point("after-image");
    let body = serde_json::to_vec_pretty(&m).map_err(|e| e.to_string())?;
    if store.create(&manifest_path(&cluster, &id), body)? == Created::Exists {
        return Err(format!("backup {id} is listed already: not replaced"));
    }
    crash_point("after-manifest");
    Ok(m)
}

fn print_taken(m: &Manifest, store: &Store) {
    println!(
        "backup {} of cluster {}: {} users, {} objects, {} bytes, in region {} ({})",
        m.id,
        m.cluster,
        m.inventory.users.len(),
        m.inventory.objects.len(),
        m.size,
        store.region,
        store.url()
    );
}

/// Why a member refused an image, in words.
fn refusal(e: &SimError, m: &Manifest) -> String {
    match e {
        SimError::Rv(rv) => {
            let why = match *rv {
                CKR_HSMPOOL_BACKUP_CHANGED => {
                    "the image was changed since it was taken (a byte differs from what the HSM sealed)"
                        .to_string()
                }
                CKR_HSMPOOL_BACKUP_TRUNCATED => "the image is cut short".into(),
                CKR_HSMPOOL_BACKUP_REORDERED => "the image's parts are out of order".into(),
                CKR_HSMPOOL_BACKUP_WRONG_CLUSTER => format!(
                    "the image is whole and authentic, but it is not backup {} of cluster {}: \
                     a backup of another cluster (or another backup) presented as this one",
                    m.image_id(),
                    m.cluster
                ),
                CKR_HSMPOOL_BACKUP_UNREADABLE => {
                    "not a backup image this HSM reads, or sealed under another fleet's backup key"
                        .into()
                }
                _ => format!("CK_RV {rv:#x}"),
            };
            match backup_rv_name(*rv) {
                Some(name) => format!("{why} ({name})"),
                None => why,
            }
        }
        SimError::Store(s) => s.clone(),
    }
}

/// The image of `m`, as its store holds it.
fn image_of(store: &Store, m: &Manifest) -> Result<Vec<u8>, String> {
    store
        .get(&image_path(&m.cluster, &m.id))?
        .ok_or_else(|| format!("backup {}: its image is missing from the store", m.id))
}

/// The HSM directory whose backup key new HSMs get.
fn fleet_source(ctx: &Ctx, given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(d) = given {
        return Ok(d.to_path_buf());
    }
    let members = ctx.cfg.members();
    (0..members.len())
        .filter(|&i| matches!(members[i].kind(), Ok(MemberKind::Embedded)))
        .map(|i| ctx.cfg.member_data_dir(i))
        .find(|d| d.join(hsmpool_sim::backup::BACKUP_KEY_FILE).exists())
        .ok_or_else(|| {
            "no HSM directory of the fleet is configured here: name one with --fleet-from DIR \
             (any HSM data directory holding the fleet's backup.key)"
                .to_string()
        })
}

/// Make new HSMs in `dirs` (each new or empty): the fleet's backup key from `fleet`, one new
/// clone key for them all (a new cluster).
fn new_hsms(dirs: &[PathBuf], fleet: &Path) -> Result<(), String> {
    for d in dirs {
        if d.exists()
            && std::fs::read_dir(d)
                .map_err(|e| format!("{}: {e}", d.display()))?
                .next()
                .is_some()
        {
            return Err(format!(
                "{}: not empty: a restore makes new HSMs, never adds to one",
                d.display()
            ));
        }
    }
    hsmpool_sim::backup::provision(dirs, Some(fleet)).map_err(|e| e.to_string())?;
    hsmpool_sim::cluster::provision(dirs).map_err(|e| e.to_string())
}

/// Restore `m`'s `image` into the new HSM at `dir`; what it holds, in JSON.
fn restore_one(dir: &Path, image: &[u8], m: &Manifest) -> Result<InventoryJson, String> {
    let cluster = unhex(&m.cluster)?;
    let expect = Expected {
        cluster_id: cluster
            .try_into()
            .map_err(|_| "bad cluster id".to_string())?,
        backup_id: Some(m.image_id().to_string()),
    };
    let inv = Hsm::restore_into(HsmConfig::new(dir.to_path_buf()), image, &expect)
        .map_err(|e| format!("restoring backup {}: {}", m.id, refusal(&e, m)))?;
    Ok(InventoryJson::from(&inv))
}

fn restore(ctx: &Ctx, which: &Which, into: &[PathBuf]) -> Result<ExitCode, String> {
    let store = ctx.store(which.region.as_deref())?;
    let m = find(ctx, &store, which)?;
    let image = image_of(&store, &m)?;
    let fleet = fleet_source(ctx, which.fleet_from.as_deref())?;
    let fresh: Vec<bool> = into.iter().map(|d| !d.exists()).collect();
    new_hsms(into, &fleet)?;
    let cleanup = || {
        for (d, fresh) in into.iter().zip(&fresh) {
            if *fresh {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    };
    for d in into {
        let restored = match restore_one(d, &image, &m) {
            Ok(r) => r,
            Err(e) => {
                cleanup();
                return Ok(failed(&e));
            }
        };
        let diff = m.inventory.differences(&restored);
        if !diff.is_empty() {
            cleanup();
            return Ok(failed(&format!(
                "backup {} restored into {} differs from its manifest:\n  {}",
                m.id,
                d.display(),
                diff.join("\n  ")
            )));
        }
    }
    // Accepted by the HSM, so authentic: it must also be the image the manifest describes.
    if sha256_hex(&image) != m.sha256 {
        cleanup();
        return Ok(failed(&format!(
            "backup {}: the image is authentic but its manifest describes another",
            m.id
        )));
    }
    let new_id = hsmpool_sim::cluster::CloneKey::load(&into[0])
        .map_err(|e| e.to_string())?
        .map(|k| cluster_hex(&k.cluster_id()))
        .unwrap_or_default();
    println!(
        "backup {} of cluster {} restored into a new cluster {new_id}: {} users, {} objects, \
         officers' quorum {}",
        m.id,
        m.cluster,
        m.inventory.users.len(),
        m.inventory.objects.len(),
        m.inventory.quorum
    );
    for d in into {
        println!("  HSM {}", d.display());
    }
    println!(
        "The new cluster is unclaimed: make its cluster certificate (hsmpool cluster init, \
         have your CA sign it, cluster install, issue-hsm for each HSM), start hsmpool-hsmd on \
         these directories (or name them as embedded members), then register the new cluster \
         certificate (hsmpool cluster trust set, under the officers' quorum)."
    );
    if !m.inventory.trust_anchors.is_empty() {
        println!(
            "The old cluster's {} registered cluster certificate(s) were left out.",
            m.inventory.trust_anchors.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(ctx: &Ctx, which: &Which, sample: usize) -> Result<ExitCode, String> {
    let store = ctx.store(which.region.as_deref())?;
    let m = find(ctx, &store, which)?;
    let image = image_of(&store, &m)?;
    let fleet = fleet_source(ctx, which.fleet_from.as_deref())?;
    let scratch = tempfile::Builder::new()
        .prefix("hsmpool-verify-")
        .tempdir()
        .map_err(|e| format!("a scratch directory: {e}"))?;
    let dir = scratch.path().join("hsm");
    new_hsms(std::slice::from_ref(&dir), &fleet)?;
    let mut problems = Vec::new();
    if image.len() as u64 != m.size || sha256_hex(&image) != m.sha256 {
        problems.push(format!(
            "the image ({} bytes) is not the one the manifest describes ({} bytes, SHA-256 {})",
            image.len(),
            m.size,
            m.sha256
        ));
    }
    let restored = match restore_one(&dir, &image, &m) {
        Ok(r) => r,
        Err(e) => return Ok(failed(&e)),
    };
    problems.extend(m.inventory.differences(&restored));
    let hsm = Hsm::open(HsmConfig::new(dir)).map_err(|e| e.to_string())?;
    let tests = hsm.self_test_sign(sample);
    for t in &tests {
        match &t.result {
            Ok(()) => println!("  key {:016x} {:?}: signs and verifies", t.id, t.label),
            Err(e) => problems.push(format!("key {:016x} {:?}: {e}", t.id, t.label)),
        }
    }
    if problems.is_empty() {
        println!(
            "backup {} of cluster {} verified: {} users, {} objects, quorum {} as the manifest \
             says; {} key(s) signed",
            m.id,
            m.cluster,
            restored.users.len(),
            restored.objects.len(),
            restored.quorum,
            tests.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(failed(&format!(
            "backup {} failed verification:\n  {}",
            m.id,
            problems.join("\n  ")
        )))
    }
}

/// Delete backup `m` from `store`: its manifest (unlisting it), then its image.
fn delete_one(store: &Store, m: &Manifest) -> Result<(), String> {
    if fault().is_some_and(|f| f == format!("fail-delete:{}", m.id)) {
        return Err("injected failure (HSMPOOL_BACKUP_FAULT)".into());
    }
    store.delete(&manifest_path(&m.cluster, &m.id))?;
    store
        .delete(&image_path(&m.cluster, &m.id))
        .map_err(|e| format!("unlisted, but its image is left: {e}"))
}

#[allow(clippy::too_many_arguments)]
fn delete(
    ctx: &Ctx,
    cluster: &str,
    region: &str,
    before: Option<&str>,
    all: bool,
    timezone: Option<&str>,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode, String> {
    let cutoff = match (before, all) {
        (Some(_), true) | (None, false) => {
            eprintln!("hsmpool: backup delete needs exactly one of --before TIMESTAMP and --all");
            return Ok(ExitCode::from(2));
        }
        (Some(t), false) => Some(when::ms(when::instant(t, timezone)?)),
        (None, true) => {
            if timezone.is_some() {
                eprintln!("hsmpool: --timezone goes with --before, not --all");
                return Ok(ExitCode::from(2));
            }
            None
        }
    };
    let cluster = checked_cluster(cluster)?;
    let store = ctx.store(Some(region))?;
    let doomed: Vec<Manifest> = manifests(&store, Some(&cluster), ctx.page())?
        .into_iter()
        .filter(|m| cutoff.is_none_or(|c| m.created_ms < c))
        .collect();
    let mut deleted = Vec::new();
    let mut failures = Vec::new();
    if !dry_run {
        for m in &doomed {
            match delete_one(&store, m) {
                Ok(()) => deleted.push(m.id.clone()),
                Err(e) => failures.push((m.id.clone(), e)),
            }
        }
    }
    if json {
        let out = serde_json::json!({
            "cluster": cluster,
            "region": region,
            "before": cutoff.map(when::rfc3339),
            "dry_run": dry_run,
            "selected": doomed.iter().map(|m| serde_json::json!({"id": m.id, "created": m.created})).collect::<Vec<_>>(),
            "deleted": deleted,
            "failed": failures.iter().map(|(id, e)| serde_json::json!({"id": id, "error": e})).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
    } else {
        let verb = if dry_run { "would delete" } else { "deleted" };
        for m in &doomed {
            if dry_run || deleted.contains(&m.id) {
                println!("{verb} {} (taken {})", m.id, m.created);
            }
        }
        for (id, e) in &failures {
            eprintln!("hsmpool: FAILED to delete {id}: {e}");
        }
        println!(
            "{} backup(s) of cluster {cluster} in region {region} {}{}",
            if dry_run { doomed.len() } else { deleted.len() },
            verb,
            if failures.is_empty() {
                String::new()
            } else {
                format!("; {} failed", failures.len())
            }
        );
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn list(
    ctx: &Ctx,
    cluster: Option<String>,
    region: Option<&str>,
    json: bool,
) -> Result<ExitCode, String> {
    let cluster = cluster.as_deref().map(checked_cluster).transpose()?;
    let store = ctx.store(region)?;
    let all = manifests(&store, cluster.as_deref(), ctx.page())?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).map_err(|e| e.to_string())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "region {} ({}): {} backup(s)",
        store.region,
        store.url(),
        all.len()
    );
    for m in &all {
        let copy = m
            .source
            .as_ref()
            .map(|s| format!(" copy of {} in {}", s.backup, s.region))
            .unwrap_or_default();
        println!(
            "{}  {}  cluster {}  {} users  {} objects  {} bytes  {}{copy}",
            m.id,
            m.created,
            m.cluster,
            m.inventory.users.len(),
            m.inventory.objects.len(),
            m.size,
            m.trigger
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn copy(ctx: &Ctx, which: &Which, to_region: &str) -> Result<ExitCode, String> {
    let from = ctx.store(which.region.as_deref())?;
    let to = ctx.store(Some(to_region))?;
    if from.region == to.region {
        return Ok(failed("a copy goes to another region"));
    }
    let m = find(ctx, &from, which)?;
    let image = image_of(&from, &m)?;
    if sha256_hex(&image) != m.sha256 {
        return Ok(failed(&format!(
            "backup {}: its image does not match its manifest: not copied",
            m.id
        )));
    }
    let now = when::now_ms();
    let copy = Manifest {
        id: new_id(now)?,
        region: to.region.clone(),
        source: Some(Source {
            backup: m.image_id().to_string(),
            region: m
                .source
                .as_ref()
                .map_or(from.region.clone(), |s| s.region.clone()),
        }),
        trigger: format!("copy of {} from {}", m.id, from.region),
        ..m.clone()
    };
    to.put_parts(&image_path(&copy.cluster, &copy.id), &image, &|_| {})?;
    let body = serde_json::to_vec_pretty(&copy).map_err(|e| e.to_string())?;
    to.create(&manifest_path(&copy.cluster, &copy.id), body)?;
    println!(
        "backup {} copied to region {} as {} ({}); copies are outside retention",
        m.id,
        to.region,
        copy.id,
        to.url()
    );
    Ok(ExitCode::SUCCESS)
}

/// What a batch of deletions did: the ids deleted, and (id, why) of those that failed.
type Outcome = (Vec<String>, Vec<(String, String)>);

fn retention_path(cluster: &str) -> String {
    format!("retention/{cluster}.json")
}

/// The cluster's retention in days, if set.
fn retention_days(store: &Store, cluster: &str) -> Result<Option<u32>, String> {
    let Some(b) = store.get(&retention_path(cluster))? else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
    Ok(v.get("days").and_then(|d| d.as_u64()).map(|d| d as u32))
}

/// Expire `cluster`'s backups in `store` older than its retention at `now_ms`, never the
/// newest, never a copy. What was deleted, and what failed.
fn apply_retention(
    ctx: &Ctx,
    store: &Store,
    cluster: &str,
    now_ms: u64,
) -> Result<Outcome, String> {
    let Some(days) = retention_days(store, cluster)? else {
        return Ok((vec![], vec![]));
    };
    let own: Vec<Manifest> = manifests(store, Some(cluster), ctx.page())?
        .into_iter()
        .filter(|m| m.source.is_none())
        .collect();
    let cutoff = now_ms.saturating_sub(u64::from(days) * 86_400_000);
    let newest = own.last().map(|m| m.id.clone());
    let mut deleted = Vec::new();
    let mut failures = Vec::new();
    for m in own
        .iter()
        .filter(|m| m.created_ms < cutoff && Some(&m.id) != newest.as_ref())
    {
        match delete_one(store, m) {
            Ok(()) => deleted.push(m.id.clone()),
            Err(e) => failures.push((m.id.clone(), e)),
        }
    }
    Ok((deleted, failures))
}

fn report_retention(deleted: &[String], failures: &[(String, String)]) -> bool {
    for id in deleted {
        println!("expired {id} (retention)");
    }
    for (id, e) in failures {
        eprintln!("hsmpool: FAILED to expire {id}: {e}");
    }
    failures.is_empty()
}

/// One round of the schedule at `now_ms`: claim the interval, take the backup, apply
/// retention. Whether all went well.
fn schedule_round(
    ctx: &Ctx,
    engine: &Engine,
    store: &Store,
    cluster: &str,
    every_ms: u64,
    now_ms: u64,
) -> Result<bool, String> {
    let slot = now_ms - now_ms % every_ms;
    let claim = format!(
        "schedule/{cluster}/{}",
        when::rfc3339(slot).replace(':', "")
    );
    let who = serde_json::json!({
        "by": format!("{}:{}", hostname(), std::process::id()),
        "at": when::rfc3339(when::now_ms()),
    });
    match store.create(&claim, who.to_string().into_bytes())? {
        Created::Exists => {
            println!(
                "interval from {} already taken by another round: nothing to do",
                when::rfc3339(slot)
            );
        }
        Created::Done => match take(engine, store, "schedule", now_ms) {
            Ok(m) => print_taken(&m, store),
            Err(e) => {
                // Give the interval back, so another scheduler (or the next round) takes it.
                let _ = store.delete(&claim);
                return Err(e);
            }
        },
    }
    let (deleted, failures) = apply_retention(ctx, store, cluster, now_ms)?;
    Ok(report_retention(&deleted, &failures))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

fn schedule(
    ctx: &Ctx,
    once: bool,
    now: Option<&str>,
    every_hours: Option<u64>,
) -> Result<ExitCode, String> {
    let hours = every_hours.or(ctx.cfg.backup.interval_hours).unwrap_or(24);
    if hours == 0 {
        return Err("the interval is at least one hour".into());
    }
    let every_ms = hours * 3_600_000;
    let fixed_now = now
        .map(|t| when::instant(t, None).map(when::ms))
        .transpose()?;
    let engine = match ctx.engine() {
        Ok(e) => e,
        Err(e) => return Ok(failed(&e)),
    };
    let store = ctx.store(None)?;
    let cluster = cluster_hex(
        &engine
            .cluster_id()
            .map_err(|e| format!("the cluster's id: {e}"))?,
    );
    loop {
        let now_ms = fixed_now.unwrap_or_else(when::now_ms);
        let ok = match schedule_round(ctx, &engine, &store, &cluster, every_ms, now_ms) {
            Ok(ok) => ok,
            Err(e) => {
                eprintln!("hsmpool: scheduled backup: {e}");
                false
            }
        };
        if once {
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        // Sleep to the next interval (a minute past it, so clocks a little apart agree).
        let next = now_ms - now_ms % every_ms + every_ms + 60_000;
        let wait = next.saturating_sub(when::now_ms()).max(1_000);
        std::thread::sleep(std::time::Duration::from_millis(wait));
    }
}

/// Take a backup right after a change of cluster membership (the command that made the
/// change calls this): the store is the configured one.
pub fn after_membership_change(engine: &Engine, what: &str) -> Result<(), String> {
    let ctx = Ctx::configured()?;
    let store = ctx.store(None)?;
    let m = take(
        engine,
        &store,
        &format!("membership: {what}"),
        when::now_ms(),
    )?;
    print_taken(&m, &store);
    Ok(())
}

/// What a change leaves in older backups (`hsmpool user passwd|delete`, `hsmpool key destroy`).
pub enum Stale<'a> {
    /// A user's old password (or the user itself, deleted).
    User(&'a str),
    /// A destroyed key, by cluster-wide id.
    Key(u64),
}

/// After a change whose old state older backups still hold: name those backups (in every
/// configured region) and how to delete them. Quiet when the store cannot be read.
pub fn name_stale_backups(engine: &Engine, what: Stale<'_>) {
    let run = || -> Result<(), String> {
        let ctx = Ctx::configured()?;
        let cluster = cluster_hex(&engine.cluster_id().map_err(|e| e.to_string())?);
        let now = when::now_ms();
        let mut regions = vec![ctx.home_region()];
        regions.extend(ctx.cfg.backup.regions.keys().cloned());
        for region in regions {
            let store = ctx.store(Some(&region))?;
            let holding: Vec<Manifest> = manifests(&store, Some(&cluster), ctx.page())?
                .into_iter()
                .filter(|m| m.created_ms <= now)
                .filter(|m| match &what {
                    Stale::User(name) => m.inventory.users.iter().any(|u| u.name == *name),
                    Stale::Key(id) => {
                        let id = format!("{id:016x}");
                        m.inventory.objects.iter().any(|o| o.id == id)
                    }
                })
                .collect();
            if holding.is_empty() {
                continue;
            }
            let thing = match &what {
                Stale::User(name) => format!("the old password of user {name}"),
                Stale::Key(id) => format!("key uid:{id:016x}"),
            };
            println!(
                "{} backup(s) in region {region} still hold {thing}: {}",
                holding.len(),
                holding
                    .iter()
                    .map(|m| m.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!(
                "  restoring one would bring it back. Once a new backup is taken (hsmpool \
                 backup create), delete them: hsmpool backup delete --cluster {cluster} \
                 --region {region} --before {}",
                when::rfc3339(now)
            );
        }
        Ok(())
    };
    if let Err(e) = run() {
        tracing::debug!("older backups not checked: {e}");
    }
}

fn runtime() -> Result<Arc<tokio::runtime::Runtime>, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map(Arc::new)
        .map_err(|e| format!("starting the store's runtime: {e}"))
}

/// `hsmpool backup ...` (the words after `backup`); `data` is the global `--data DIR`.
pub fn run(args: &[String], data: Option<PathBuf>) -> Result<ExitCode, String> {
    let cli: BackupCli = match parsed("hsmpool backup", args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let cfg = crate::common::config_for(data.as_deref())?;
    let ctx = Ctx {
        cfg,
        data,
        rt: runtime()?,
    };
    // Past the arguments, what goes wrong is a refusal or a failure (1), not a usage error.
    dispatch(&ctx, cli.cmd).or_else(|e| Ok(failed(&e)))
}

fn dispatch(ctx: &Ctx, cmd: Cmd) -> Result<ExitCode, String> {
    match cmd {
        Cmd::Create { trigger } => {
            let engine = match ctx.engine() {
                Ok(e) => e,
                Err(e) => return Ok(failed(&e)),
            };
            let store = ctx.store(None)?;
            match take(&engine, &store, &trigger, when::now_ms()) {
                Ok(m) => {
                    print_taken(&m, &store);
                    let (deleted, failures) =
                        apply_retention(ctx, &store, &m.cluster, when::now_ms())?;
                    Ok(if report_retention(&deleted, &failures) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
                Err(e) => Ok(failed(&e)),
            }
        }
        Cmd::List {
            cluster,
            region,
            json,
        } => list(ctx, cluster, region.as_deref(), json),
        Cmd::Restore { which, into } => restore(ctx, &which, &into),
        Cmd::Verify { which, sample } => verify(ctx, &which, sample),
        Cmd::Delete {
            cluster,
            region,
            before,
            all,
            timezone,
            dry_run,
            json,
        } => delete(
            ctx,
            &cluster,
            &region,
            before.as_deref(),
            all,
            timezone.as_deref(),
            dry_run,
            json,
        ),
        Cmd::Copy { which, to_region } => copy(ctx, &which, &to_region),
        Cmd::Retention { cmd } => match cmd {
            RetentionCmd::Set { days, cluster } => {
                let cluster = ctx.cluster_or_own(cluster)?;
                let store = ctx.store(None)?;
                let body = serde_json::json!({ "days": days }).to_string();
                store.put(&retention_path(&cluster), body.into_bytes())?;
                println!(
                    "cluster {cluster}: backups in region {} are kept {days} day(s); the newest \
                     is always kept, copies in other regions are not affected",
                    store.region
                );
                Ok(ExitCode::SUCCESS)
            }
            RetentionCmd::Show { cluster } => {
                let cluster = ctx.cluster_or_own(cluster)?;
                let store = ctx.store(None)?;
                match retention_days(&store, &cluster)? {
                    Some(d) => println!("cluster {cluster}: {d} day(s) in region {}", store.region),
                    None => println!("cluster {cluster}: no retention set (backups are kept)"),
                }
                Ok(ExitCode::SUCCESS)
            }
            RetentionCmd::Apply { cluster, now } => {
                let cluster = ctx.cluster_or_own(cluster)?;
                let store = ctx.store(None)?;
                let now_ms = match now {
                    Some(t) => when::ms(when::instant(&t, None)?),
                    None => when::now_ms(),
                };
                let (deleted, failures) = apply_retention(ctx, &store, &cluster, now_ms)?;
                println!("{} backup(s) expired", deleted.len());
                Ok(if report_retention(&deleted, &failures) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
        },
        Cmd::Schedule {
            once,
            now,
            every_hours,
        } => schedule(ctx, once, now.as_deref(), every_hours),
    }
}
