//! `hsmpool user ...`: crypto officers and crypto users on every member of the configured
//! cluster, reached as the module reaches them (the same configuration, the same engine): a
//! change is made as one on every member, and a member that was away takes it before it
//! serves again.
//!
//! Secrets come from the environment, never the command line (so they stay out of `ps` and
//! shell history): `HSMPOOL_SO_PIN`, the crypto officer's PIN the tool logs in with, and
//! `HSMPOOL_NEW_PIN`, a new user's password.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use cryptoki_sys::*;
use hsmpool_engine::cluster::Health;
use hsmpool_engine::Engine;
use hsmpool_member::users::CKR_HSMPOOL_USER_OWNS_KEYS;
use hsmpool_member::{Role, UserChange};

use crate::common::{describe, explain, failed, open_cluster, parsed, secret};

/// The `user` part of `hsmpool --help`.
pub const USAGE: &str = "  user list|add|delete|passwd|lock|unlock|role ...
                              crypto officers and users on every member of the configured
                              cluster (hsmpool user --help)
";

const EXAMPLES: &str = "Examples:
  # a crypto user on every member; she then logs in with the PIN alice:PASSWORD
  HSMPOOL_SO_PIN=... HSMPOOL_NEW_PIN=... hsmpool user add alice
  # a second crypto officer
  HSMPOOL_SO_PIN=... HSMPOOL_NEW_PIN=... hsmpool user add bob --officer
  # who is there, for a script
  HSMPOOL_SO_PIN=... hsmpool user list --json
  # with member 2 down for maintenance: it takes the change when it returns
  HSMPOOL_SO_PIN=... hsmpool user lock alice --allow-partial

The cluster is the one the module uses: HSMPOOL_CONF, else the embedded default (or --data DIR,
given before `user`, for one embedded store). Exit status: 0 done, 1 refused or failed (the
message says what was wrong and what to do), 2 a usage error.";

#[derive(Parser, Debug)]
#[command(
    name = "hsmpool user",
    about = "Crypto officers and crypto users, kept the same on every member",
    after_help = EXAMPLES
)]
struct UserCli {
    #[command(subcommand)]
    cmd: UserCmd,
}

/// What a mutating command shares.
#[derive(clap::Args, Debug)]
struct Change {
    /// The user's login name (1 to 64 bytes, no `:`).
    name: String,
    /// Make the change although a configured member is unreachable now; that member takes it
    /// when it returns, before it serves again.
    #[arg(long)]
    allow_partial: bool,
    /// With a quorum set: the officers' approvals (`hsmpool quorum`).
    #[command(flatten)]
    approvals: crate::quorum::Approvals,
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Every user: name, role, state (locked, failed logins) and record version.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a crypto user (or, with --officer, a crypto officer); its password comes from
    /// HSMPOOL_NEW_PIN.
    Add {
        #[command(flatten)]
        change: Change,
        /// A crypto officer rather than a crypto user.
        #[arg(long)]
        officer: bool,
    },
    /// Delete a user (an officer cannot delete itself or the last officer). A user who owns
    /// token keys is not deleted (the keys are named) unless --force.
    Delete {
        #[command(flatten)]
        change: Change,
        /// Delete a user who owns token keys: those keys then belong to no one who can log
        /// in, and no one can use them again.
        #[arg(long)]
        force: bool,
    },
    /// Set a user's password (from HSMPOOL_NEW_PIN); this also unlocks it.
    Passwd {
        #[command(flatten)]
        change: Change,
    },
    /// Lock a user out until an officer unlocks it.
    Lock {
        #[command(flatten)]
        change: Change,
    },
    /// Unlock a user (an officer's lock, and failed logins).
    Unlock {
        #[command(flatten)]
        change: Change,
    },
    /// Give a user another role.
    Role {
        #[command(flatten)]
        change: Change,
        /// The new role.
        #[arg(value_enum)]
        role: RoleArg,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum RoleArg {
    /// A crypto officer: manages users.
    Officer,
    /// A crypto user: makes and uses keys.
    User,
}

fn role_of(r: RoleArg) -> Role {
    match r {
        RoleArg::Officer => Role::Officer,
        RoleArg::User => Role::User,
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Officer => "crypto officer",
        Role::User => "crypto user",
    }
}

/// `hsmpool user ...` (the words after `user`); `data` is the global `--data DIR`.
pub fn run(args: &[String], data: Option<PathBuf>) -> Result<ExitCode, String> {
    let cli: UserCli = match parsed("hsmpool user", args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let so_pin = secret("HSMPOOL_SO_PIN")?;
    let (engine, _s) = match open_cluster(data, &so_pin, CKU_SO, true) {
        Ok(x) => x,
        Err(e) => return Ok(failed(&e)),
    };
    type Make = Box<dyn FnOnce(String) -> UserChange>;
    let (target, make): (Change, Make) = match cli.cmd {
        UserCmd::List { json } => return list(&engine, json),
        UserCmd::Add { change, officer } => {
            let role = if officer { Role::Officer } else { Role::User };
            let password = secret("HSMPOOL_NEW_PIN")?;
            let make = move |name| UserChange::Create {
                name,
                role,
                password,
            };
            (change, Box::new(make))
        }
        UserCmd::Passwd { change } => {
            let password = secret("HSMPOOL_NEW_PIN")?;
            let make = move |name| UserChange::Password { name, password };
            (change, Box::new(make))
        }
        UserCmd::Delete { change, force } => {
            if force {
                warn_orphans(&engine, &change.name);
            }
            (
                change,
                Box::new(move |name| UserChange::Delete { name, force }),
            )
        }
        UserCmd::Lock { change } => (change, Box::new(|name| UserChange::Lock { name })),
        UserCmd::Unlock { change } => (change, Box::new(|name| UserChange::Unlock { name })),
        UserCmd::Role { change, role } => {
            let role = role_of(role);
            (
                change,
                Box::new(move |name| UserChange::SetRole { name, role }),
            )
        }
    };
    let partial = target.allow_partial;
    let approval = target.approvals.read()?;
    let change = make(target.name);
    if let UserChange::Delete { name, force } = &change {
        if let Some(refusal) = officer_floor(&engine, name, *force) {
            return Ok(failed(&refusal));
        }
    }
    let away: Vec<String> = engine
        .member_status()
        .iter()
        .filter(|m| m.health != Health::Up)
        .map(|m| format!("member {} ({}, {})", m.index, m.describe, m.health.name()))
        .collect();
    if !away.is_empty() && !partial {
        eprintln!(
            "hsmpool: not changed: {} unreachable now, so the change would reach the others \
             only. Run again when it is back, or add --allow-partial: it then takes the change \
             when it returns, before it serves again.",
            away.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    let name = change.name().to_string();
    match engine.change_user_approved(&change, &approval) {
        Ok(report) => {
            let list = |v: &[usize]| {
                v.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "{} {name}: done on member(s) {}",
                change.verb(),
                list(&report.applied)
            );
            if !report.pending.is_empty() {
                println!(
                    "member(s) {} did not take it now: each takes it when it returns, before \
                     it serves again",
                    list(&report.pending)
                );
            }
            // Older backups still hold the old password (or the deleted user): say which.
            if matches!(
                change,
                UserChange::Password { .. } | UserChange::Delete { .. }
            ) {
                crate::backup::name_stale_backups(&engine, crate::backup::Stale::User(&name));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("hsmpool: {} {name}: {}", change.verb(), explain(&e, &name));
            if e.ck_rv() == CKR_HSMPOOL_USER_OWNS_KEYS {
                if let Ok(keys) = engine.owned_objects(Some(&name)) {
                    for k in &keys {
                        eprintln!("  {}", describe(k));
                    }
                }
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// Deleting officer `name` must leave M + 2 officers (M the quorum), or the loss of one more
/// locks the cluster out of its own administration: the refusal, unless `force` (then a
/// warning).
fn officer_floor(engine: &Engine, name: &str, force: bool) -> Option<String> {
    let set = engine.users().ok()?;
    let target = set.users.iter().find(|u| u.name == name)?;
    if target.role != Role::Officer || set.quorum <= 1 {
        return None;
    }
    let left = set
        .users
        .iter()
        .filter(|u| u.role == Role::Officer && u.name != name)
        .count() as u32;
    if left >= set.quorum + 2 {
        return None;
    }
    let risk = format!(
        "deleting officer {name} leaves {left} officer(s) with a quorum of {}: fewer than \
         M + 2, so one more officer lost or locked and the cluster cannot make protected \
         changes",
        set.quorum
    );
    if force {
        eprintln!("hsmpool: WARNING: {risk}");
        None
    } else {
        Some(format!("refused: {risk}. Pass --force to accept that risk"))
    }
}

/// Before a forced deletion: say which keys become unusable.
fn warn_orphans(engine: &Engine, name: &str) {
    if let Ok(keys) = engine.owned_objects(Some(name)) {
        if !keys.is_empty() {
            eprintln!(
                "hsmpool: WARNING: {name} owns {} token key(s); deleted with --force, they \
                 belong to no one who can log in and can never be used again:",
                keys.len()
            );
            for k in &keys {
                eprintln!("  {}", describe(k));
            }
        }
    }
}

fn list(engine: &Engine, json: bool) -> Result<ExitCode, String> {
    let set = match engine.users() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("hsmpool: listing users: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let users = &set.users;
    let locked = |u: &hsmpool_member::UserState| u.locked || u.failures >= set.max_failures;
    if json {
        let v: Vec<serde_json::Value> = users
            .iter()
            .map(|u| {
                serde_json::json!({
                    "name": u.name,
                    "role": match u.role { Role::Officer => "officer", Role::User => "user" },
                    "locked": locked(u),
                    "locked_by_officer": u.locked,
                    "failed_logins": u.failures,
                    "version": u.version,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<24} {:<15} {:<22} version", "name", "role", "state");
    for u in users {
        let state = if u.locked {
            "locked by an officer".to_string()
        } else if locked(u) {
            format!("locked ({} failed logins)", u.failures)
        } else if u.failures > 0 {
            format!("{} failed logins", u.failures)
        } else {
            "ok".to_string()
        };
        println!(
            "{:<24} {:<15} {:<22} {}",
            u.name,
            role_name(u.role),
            state,
            u.version
        );
    }
    Ok(ExitCode::SUCCESS)
}
