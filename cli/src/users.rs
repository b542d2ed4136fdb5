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
use hsmpool_engine::config::Config;
use hsmpool_engine::types::SlotId;
use hsmpool_engine::{Engine, Error};
use hsmpool_member::users::{
    vendor_rv_name, CKR_HSMPOOL_LAST_OFFICER, CKR_HSMPOOL_QUORUM_REQUIRED,
    CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED, CKR_HSMPOOL_QUORUM_TOKEN_INVALID,
    CKR_HSMPOOL_QUORUM_TOO_HIGH, CKR_HSMPOOL_USER_EXISTS, CKR_HSMPOOL_USER_NOT_FOUND,
    CKR_HSMPOOL_USER_OWNS_KEYS,
};
use hsmpool_member::{Role, UserChange};
use zeroize::Zeroizing;

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

pub(crate) fn secret(name: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    std::env::var(name)
        .map(|v| Zeroizing::new(v.into_bytes()))
        .map_err(|_| format!("{name} is not set (secrets are read from the environment only)"))
}

/// What went wrong, and what to do, for an error of the engine.
pub(crate) fn explain(e: &Error, name: &str) -> String {
    let rv = e.ck_rv();
    match rv {
        CKR_HSMPOOL_USER_EXISTS => format!(
            "user {name} exists already (CKR_HSMPOOL_USER_EXISTS); `hsmpool user passwd {name}` \
             sets a new password"
        ),
        CKR_HSMPOOL_USER_NOT_FOUND => format!(
            "there is no user {name} (CKR_HSMPOOL_USER_NOT_FOUND); `hsmpool user list` shows \
             who there is"
        ),
        CKR_HSMPOOL_LAST_OFFICER => "refused (CKR_HSMPOOL_LAST_OFFICER): an officer cannot \
                                     delete, lock or demote itself, nor the last officer that \
                                     can log in; make another officer first"
            .to_string(),
        CKR_PIN_LEN_RANGE => "the password must be 4 to 255 bytes (CKR_PIN_LEN_RANGE)".into(),
        CKR_HSMPOOL_USER_OWNS_KEYS => format!(
            "{name} still owns token keys (CKR_HSMPOOL_USER_OWNS_KEYS), listed below; destroy \
             them or have them re-made by another user first, or pass --force (they then \
             become unusable)"
        ),
        CKR_ARGUMENTS_BAD => {
            format!("{name:?} cannot be a user name (1 to 64 bytes, no `:`, no control characters)")
        }
        CKR_FUNCTION_NOT_SUPPORTED => format!("{e}"),
        CKR_HSMPOOL_QUORUM_REQUIRED => "this change needs the approval of M distinct officers \
            (CKR_HSMPOOL_QUORUM_REQUIRED): `hsmpool quorum token-gen`, then `quorum sign` by \
            each, then this command with --token and one --approval per officer"
            .to_string(),
        CKR_HSMPOOL_QUORUM_TOO_HIGH => format!(
            "refused (CKR_HSMPOOL_QUORUM_TOO_HIGH): a key shared with {name} has its own quorum, \
             and without {name} it would have fewer users than approvals it needs, so no one \
             could use or manage it again; have its owner lower the quorum or share it with \
             another user first, or pass --force (the key is then lost)"
        ),
        CKR_HSMPOOL_QUORUM_TOKEN_INVALID => "the quorum token is for another change, or was \
            used already (CKR_HSMPOOL_QUORUM_TOKEN_INVALID): make a new one"
            .to_string(),
        CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED => "the quorum token has expired: tokens live ten \
            minutes (CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED): make a new one"
            .to_string(),
        _ => format!(
            "{e} ({})",
            vendor_rv_name(rv).map_or_else(|| format!("CK_RV {rv:#x}"), str::to_string)
        ),
    }
}

/// The configuration the tool works on: one embedded store with the global `--data DIR`, else
/// the module's (HSMPOOL_CONF, else the embedded default).
pub(crate) fn config_for(data: Option<&std::path::Path>) -> Result<Config, String> {
    match data {
        Some(dir) => Config::parse(
            &format!(
                "[[member]]\nkind = \"embedded\"\ndata_dir = {:?}\n",
                dir.to_str().ok_or("--data: the path is not UTF-8")?
            ),
            "--data",
        ),
        None => Config::resolve(None),
    }
    .map_err(|e| e.to_string())
}

/// The engine over the configured cluster, logged in as a crypto officer with
/// `HSMPOOL_SO_PIN`.
pub(crate) fn open_cluster(
    data: Option<PathBuf>,
    pin: &[u8],
    user_type: CK_USER_TYPE,
    level: bool,
) -> Result<(Engine, hsmpool_engine::types::SessionHandle), String> {
    let cfg = config_for(data.as_deref())?;
    let engine = Engine::new(cfg).map_err(|e| format!("opening the cluster: {e}"))?;
    engine.set_level_at_login(level);
    let s = engine
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .map_err(|e| format!("opening a session: {e}"))?;
    let (who, var) = if user_type == CKU_SO {
        ("crypto officer", "HSMPOOL_SO_PIN")
    } else {
        ("crypto user", "HSMPOOL_PIN")
    };
    engine
        .login(s, user_type, pin, None)
        .map_err(|e| match e.ck_rv() {
            CKR_PIN_INCORRECT => {
                format!("{who} login: the PIN in {var} is wrong (CKR_PIN_INCORRECT)")
            }
            CKR_PIN_LOCKED => format!(
                "{who} login: locked (CKR_PIN_LOCKED); an officer unlocks it with `hsmpool \
                 user unlock`"
            ),
            _ => format!("{who} login: {e}"),
        })?;
    Ok((engine, s))
}

/// The arguments of command `prog` (`hsmpool user`), or the exit status after clap printed
/// the help (0) or the usage error (2).
pub(crate) fn parsed<T: Parser>(prog: &str, args: &[String]) -> Result<T, ExitCode> {
    T::try_parse_from(std::iter::once(prog.to_string()).chain(args.iter().cloned())).map_err(|e| {
        let code = e.exit_code();
        let _ = e.print();
        ExitCode::from(u8::try_from(code).unwrap_or(2))
    })
}

/// Lower-case hexadecimal of `b` (keys, tokens, signatures, digests on the command line).
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bytes of hexadecimal `s` (surrounding white space ignored).
pub(crate) fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not hexadecimal"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// Exit status 1, after the message.
pub(crate) fn failed(msg: &str) -> ExitCode {
    eprintln!("hsmpool: {msg}");
    ExitCode::from(1)
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
                        eprintln!("  {}", crate::keys::describe(k));
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
                eprintln!("  {}", crate::keys::describe(k));
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
