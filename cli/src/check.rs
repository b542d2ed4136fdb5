//! `hsmpool cluster check`: drift between the members of the configured cluster (users and
//! their lockout counters, token objects, each member's audit chain), reported, then repaired
//! the way the module repairs it (users by newest record, objects by copying what a member
//! lacks), unless `--dry-run`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cryptoki_sys::CKU_SO;
use hsmpool_engine::cluster::Health;
use hsmpool_engine::{Engine, ObjectDigests};
use hsmpool_member::UserSet;
use serde_json::{json, Value};

use crate::common::{failed, open_cluster, parsed, secret};

/// The `cluster check` part of `hsmpool --help`.
pub const USAGE: &str =
    "  cluster check [--dry-run]   drift between the members (users, token objects, audit chains),
                              repaired unless --dry-run (hsmpool cluster check --help)
";

const EXAMPLES: &str = "Examples:
  # what differs between the members, changing nothing (exit 1 if anything does)
  HSMPOOL_SO_PIN=... hsmpool cluster check --dry-run
  # bring them level, then check again
  HSMPOOL_SO_PIN=... hsmpool cluster check
  HSMPOOL_SO_PIN=... hsmpool cluster check --dry-run --json

It reads the module's configuration and reaches every member as the module does. A member
that is unreachable is reported; repairing with one unreachable needs --allow-partial (it is
brought level when it returns). Audit logs are each member's own: a broken chain is reported,
never repaired. Exit status: 0 the members agree (after repair), 1 drift remains, a member is
unreachable or a log is broken, 2 a usage error.";

#[derive(Parser, Debug)]
#[command(
    name = "hsmpool cluster check",
    about = "Drift between the members: users, token objects, audit chains; repaired unless \
             --dry-run",
    after_help = EXAMPLES
)]
struct CheckCli {
    /// Report only; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Repair although a configured member is unreachable now.
    #[arg(long)]
    allow_partial: bool,
    /// The report as JSON.
    #[arg(long)]
    json: bool,
}

/// One difference: which member, about what, and how.
struct Drift {
    member: usize,
    area: &'static str,
    what: String,
}

fn users_drift(sets: &[(usize, UserSet)], out: &mut Vec<Drift>) {
    let epoch = sets.iter().map(|(_, s)| s.epoch).max().unwrap_or(0);
    let names: BTreeSet<&str> = sets
        .iter()
        .flat_map(|(_, s)| s.users.iter().map(|u| u.name.as_str()))
        .collect();
    for (i, set) in sets {
        if set.epoch < epoch {
            out.push(Drift {
                member: *i,
                area: "users",
                what: format!(
                    "missed a C_InitToken (epoch {}, the others {epoch}): it is wiped when \
                     brought level",
                    set.epoch
                ),
            });
            continue;
        }
        for name in &names {
            let best = sets
                .iter()
                .filter(|(_, s)| s.epoch == epoch)
                .filter_map(|(_, s)| s.users.iter().find(|u| u.name == *name))
                .max_by_key(|u| (u.record_rank(), u.counter_rank()));
            let Some(best) = best else { continue };
            let what = match set.users.iter().find(|u| u.name == *name) {
                None => format!(
                    "lacks {} {name} (version {})",
                    if best.deleted {
                        "the deletion of"
                    } else {
                        "user"
                    },
                    best.version
                ),
                Some(u) if u.record_rank() < best.record_rank() => format!(
                    "holds {name} at version {}, the newest is {}{}",
                    u.version,
                    best.version,
                    if best.deleted { " (deleted)" } else { "" }
                ),
                Some(u) if u.counter_rank() < best.counter_rank() => format!(
                    "counts {} failed logins of {name}, another member {}",
                    u.failures, best.failures
                ),
                Some(_) => continue,
            };
            out.push(Drift {
                member: *i,
                area: "users",
                what,
            });
        }
    }
}

fn objects_drift(sets: &[(usize, ObjectDigests)], out: &mut Vec<Drift>) {
    let mut holders: BTreeMap<u64, Vec<(usize, [u8; 32])>> = BTreeMap::new();
    for (i, objs) in sets {
        for (id, d) in objs {
            holders.entry(*id).or_default().push((*i, *d));
        }
    }
    for (i, objs) in sets {
        let mine: BTreeMap<u64, [u8; 32]> = objs.iter().copied().collect();
        let mut lacks = Vec::new();
        let mut differs = Vec::new();
        for (id, hs) in &holders {
            match mine.get(id) {
                None => lacks.push(*id),
                Some(d) if hs.iter().any(|(j, o)| j != i && o != d) => differs.push(*id),
                Some(_) => {}
            }
        }
        let list = |v: &[u64]| {
            let mut s: Vec<String> = v
                .iter()
                .take(5)
                .map(|id| format!("uid:{id:016x}"))
                .collect();
            if v.len() > 5 {
                s.push(format!("and {} more", v.len() - 5));
            }
            s.join(", ")
        };
        if !lacks.is_empty() {
            out.push(Drift {
                member: *i,
                area: "objects",
                what: format!(
                    "lacks {} token object(s) others hold: {}",
                    lacks.len(),
                    list(&lacks)
                ),
            });
        }
        if !differs.is_empty() {
            out.push(Drift {
                member: *i,
                area: "objects",
                what: format!(
                    "holds {} token object(s) differently from another member: {}",
                    differs.len(),
                    list(&differs)
                ),
            });
        }
    }
}

/// Every difference between the up members, and the members that could not be read.
fn survey(engine: &Engine) -> Result<(Vec<Drift>, Vec<String>), String> {
    let mut drift = Vec::new();
    let mut unread = Vec::new();
    let mut sets = Vec::new();
    for (i, s) in engine.member_users().map_err(|e| e.to_string())? {
        match s {
            Ok(s) => sets.push((i, s)),
            Err(e) => unread.push(format!("member {i}: users not read: {e}")),
        }
    }
    users_drift(&sets, &mut drift);
    let mut objs = Vec::new();
    for (i, o) in engine.member_objects().map_err(|e| e.to_string())? {
        match o {
            Ok(o) => objs.push((i, o)),
            Err(e) => unread.push(format!("member {i}: objects not read: {e}")),
        }
    }
    objects_drift(&objs, &mut drift);
    for (i, _) in &sets {
        match crate::audit::whole_log(engine, *i, 1) {
            Ok(log) => {
                if let Some(p) = crate::audit::verify(&log) {
                    drift.push(Drift {
                        member: *i,
                        area: "audit",
                        what: format!("its audit log is broken: {p} (never repaired)"),
                    });
                }
            }
            Err(e) => unread.push(e),
        }
    }
    Ok((drift, unread))
}

/// `hsmpool cluster check ...` (the words after `check`); `data` is the global `--data DIR`.
pub fn run(args: &[String], data: Option<PathBuf>) -> Result<ExitCode, String> {
    let cli: CheckCli = match parsed("hsmpool cluster check", args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let pin = secret("HSMPOOL_SO_PIN")?;
    // Log in without bringing anything level: the check must see the drift.
    let (engine, _) = match open_cluster(data, &pin, CKU_SO, false) {
        Ok(x) => x,
        Err(e) => return Ok(failed(&e)),
    };
    let away: Vec<String> = engine
        .member_status()
        .iter()
        .filter(|m| m.health != Health::Up)
        .map(|m| format!("member {} ({}) is unreachable", m.index, m.describe))
        .collect();
    let (before, mut unread) = survey(&engine)?;
    unread.extend(away.iter().cloned());
    let mut repaired = None;
    let mut after = None;
    let repairable = before.iter().any(|d| d.area != "audit");
    if !cli.dry_run && repairable {
        if !away.is_empty() && !cli.allow_partial {
            unread.push(
                "not repaired: a member is unreachable; run again when it is back, or add \
                 --allow-partial (it is brought level when it returns)"
                    .into(),
            );
        } else {
            repaired = Some(engine.level_now().map_err(|e| format!("repairing: {e}"))?);
            after = Some(survey(&engine)?.0);
        }
    }
    let remaining = after.as_ref().unwrap_or(&before);
    let clean = remaining.is_empty() && unread.is_empty();
    if cli.json {
        let list = |v: &[Drift]| {
            v.iter()
                .map(|d| json!({"member": d.member, "area": d.area, "drift": d.what}))
                .collect::<Vec<Value>>()
        };
        let v = json!({
            "drift": list(&before),
            "problems": unread,
            "repaired": repaired,
            "remaining": list(remaining),
            "clean": clean,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
    } else {
        for d in &before {
            println!("{}: member {}: {}", d.area, d.member, d.what);
        }
        for p in &unread {
            println!("problem: {p}");
        }
        if let Some(n) = repaired {
            println!("repaired: {n} record(s) and object(s) moved");
            for d in remaining {
                println!("still: {}: member {}: {}", d.area, d.member, d.what);
            }
        }
        if clean {
            println!("clean: the members agree");
        } else if cli.dry_run && !before.is_empty() {
            println!("drift found (--dry-run: nothing changed)");
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
