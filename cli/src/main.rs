//! `hsmpool`: administration of an hsmpool cluster: its users, its certificates, its members.
//!
//! It works on the embedded default (or the member named by the configuration) directly, so it
//! must not run while a process that has the same data directory open is writing to it.
//! Secrets (PINs) are read from the environment, never from the command line, so they do not
//! show up in `ps` or shell history: `HSMPOOL_SO_PIN` (the crypto officer's PIN) and
//! `HSMPOOL_NEW_PIN` (the PIN for a user being added).

use std::path::PathBuf;
use std::process::ExitCode;

use hsmpool_engine::config::{Config, MemberKind};
use hsmpool_sim::hsm::{Hsm, HsmConfig, Role};

mod audit;
mod backup;
mod check;
mod common;
mod escrow;
mod keys;
mod members;
mod quorum;
mod sim;
mod trust;
mod users;

const USAGE: &str = "usage: hsmpool [--data DIR] <command>

commands:
  status                      token state, users and object count of the HSM's store; with a
                              cluster configured (HSMPOOL_CONF), of every member, and each
                              daemon's own counters (exits 1 if a member is unreachable)
{user}  store verify                check every stored object and user against its seal; exits 1
                              and lists them if any was tampered with
{cluster}{sim}
options:
  --data DIR   the HSM's data directory (default: the configured embedded member, from
               HSMPOOL_CONF, else HSMPOOL_DATA/hsm0, else the XDG data directory)
";

/// The usage text, with the `cluster` and `sim` commands (documented beside their code)
/// filled in.
fn usage() -> String {
    USAGE
        .replace("{cluster}", hsmpool_cli::cluster::USAGE)
        .replace("{sim}", sim::USAGE)
        .replace(
            "{user}",
            &format!(
                "{}{}{}{}{}{}{}{}",
                users::USAGE,
                keys::USAGE,
                audit::USAGE,
                quorum::USAGE,
                check::USAGE,
                trust::USAGE,
                members::USAGE,
                backup::USAGE
            ),
        )
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hsmpool: {e}");
            ExitCode::from(2)
        }
    }
}

/// Token state and users of an embedded member's store.
fn print_embedded(hsm: &Hsm, indent: &str) {
    let st = hsm.token_status();
    println!("{indent}initialised:    {}", st.initialized);
    println!(
        "{indent}label:          {}",
        String::from_utf8_lossy(&st.label).trim_end()
    );
    println!("{indent}objects:        {}", st.object_count);
    for (name, role, failures) in hsm.users() {
        let role = match role {
            Role::Officer => "crypto officer",
            Role::User => "crypto user",
        };
        println!("{indent}user:           {name} ({role}, {failures} failed logins)");
    }
}

/// `hsmpool status` over a configured cluster: every member, reached the way the module
/// reaches it (an embedded store opened here, a daemon over mutual TLS), with the daemon's own
/// counters. Exits 1 when a member cannot be reached. (An application's per-member counters,
/// retries and failovers live in its process: `HSMPOOL_GetMemberStats`, include/hsmpool.h.)
fn cluster_status(cfg: &Config) -> Result<ExitCode, String> {
    use hsmpool_engine::backend::remote::{admin_request, remote_config};
    use hsmpool_wire::{Request, Response};
    let mut unreachable = 0;
    // The members as the module opens them (once, when a vendor-module member is shown).
    let mut opened = None;
    for (i, m) in cfg.members().iter().enumerate() {
        if matches!(m.kind(), Ok(MemberKind::Daemon)) {
            let rc = remote_config(m).map_err(|e| e.to_string())?;
            println!("member {i}: daemon {}", rc.address);
            let token = admin_request(&rc, &Request::TokenStatus);
            match token {
                Ok(Response::TokenStatus(st)) => {
                    println!("  reachable:      yes");
                    println!("  initialised:    {}", st.initialized);
                    println!(
                        "  label:          {}",
                        String::from_utf8_lossy(&st.label).trim_end()
                    );
                    println!("  objects:        {}", st.object_count);
                }
                Ok(other) => println!("  reachable:      yes, but it answered {}", other.name()),
                Err(e) => {
                    println!("  reachable:      NO ({e})");
                    unreachable += 1;
                    continue;
                }
            }
            if let Ok(Response::Stats(st)) = admin_request(&rc, &Request::Stats) {
                for (name, v) in st.fields() {
                    println!("  {name:<15} {v}");
                }
            }
        } else if matches!(m.kind(), Ok(MemberKind::Module)) {
            // A vendor's token, reached through its own module as the application reaches it:
            // its state and PIN flags (a locked PIN is why a member is out as "refused").
            match opened.get_or_insert_with(|| {
                hsmpool_engine::backend::open_members(cfg).map_err(|e| e.to_string())
            }) {
                Ok(members) => {
                    let b = &members[i];
                    println!("member {i}: {}", b.describe());
                    match b.token_status() {
                        Ok(st) => {
                            println!("  reachable:      yes");
                            println!("  initialised:    {}", st.initialized);
                            println!(
                                "  label:          {}",
                                String::from_utf8_lossy(&st.label).trim_end()
                            );
                            let pin = match st.user_failures {
                                0 => "ok",
                                1 => "count low (failed logins)",
                                2 => "final try before it locks",
                                _ => "LOCKED (the member is out until its SO resets the PIN)",
                            };
                            println!("  user PIN:       {pin}");
                        }
                        Err(e) => {
                            println!("  reachable:      NO ({e})");
                            unreachable += 1;
                        }
                    }
                }
                Err(e) => {
                    println!("member {i}: module: NO ({e})");
                    unreachable += 1;
                }
            }
        } else {
            let dir = cfg.member_data_dir(i);
            println!("member {i}: embedded {}", dir.display());
            match Hsm::open(HsmConfig::new(dir.clone())) {
                Ok(hsm) => print_embedded(&hsm, "  "),
                Err(e) => {
                    println!("  reachable:      NO ({e})");
                    unreachable += 1;
                }
            }
        }
    }
    Ok(if unreachable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run(mut args: Vec<String>) -> Result<ExitCode, String> {
    let mut data: Option<PathBuf> = None;
    if let Some(i) = args.iter().position(|a| a == "--data") {
        if i + 1 >= args.len() {
            return Err("--data needs a directory".into());
        }
        data = Some(PathBuf::from(args.remove(i + 1)));
        args.remove(i);
    }
    // The user, key, audit, quorum and cluster check commands parse their own arguments (and
    // their own --help).
    if args.len() >= 2 && args[0] == "cluster" && args[1] == "check" {
        return check::run(&args[2..], data);
    }
    if args.len() >= 2 && args[0] == "cluster" && args[1] == "member" {
        return members::run(&args[2..]);
    }
    if args.len() >= 2 && args[0] == "cluster" && args[1] == "trust" {
        return trust::run(&args[2..], data);
    }
    if args.first().is_some_and(|a| a == "user") {
        return users::run(&args[1..], data);
    }
    if args.first().is_some_and(|a| a == "key") {
        return keys::run(&args[1..], data);
    }
    if args.first().is_some_and(|a| a == "audit") {
        return audit::run(&args[1..], data);
    }
    if args.first().is_some_and(|a| a == "quorum") {
        return quorum::run(&args[1..], data);
    }
    if args.first().is_some_and(|a| a == "backup") {
        return backup::run(&args[1..], data);
    }
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage());
        return Ok(ExitCode::SUCCESS);
    }
    if args[0] == "cluster" {
        hsmpool_cli::cluster::command(&args[1..])?;
        return Ok(ExitCode::SUCCESS);
    }
    if args[0] == "sim" {
        return sim::run(&args[1..]);
    }
    if data.is_none() && args.len() == 1 && args[0] == "status" {
        let cfg = Config::resolve(None).map_err(|e| e.to_string())?;
        if cfg.members().len() > 1
            || cfg
                .members()
                .iter()
                .any(|m| matches!(m.kind(), Ok(MemberKind::Daemon | MemberKind::Module)))
        {
            return cluster_status(&cfg);
        }
    }
    let dir = match data {
        Some(d) => d,
        None => Config::resolve(None)
            .map_err(|e| e.to_string())?
            .embedded_data_dir(),
    };
    let open =
        || Hsm::open(HsmConfig::new(dir.clone())).map_err(|e| format!("{}: {e}", dir.display()));
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["status"] => {
            let hsm = open()?;
            println!("data directory: {}", dir.display());
            print_embedded(&hsm, "");
            Ok(ExitCode::SUCCESS)
        }
        ["store", "verify"] => {
            let hsm = open()?;
            let refused = hsm.refused();
            if refused.objects.is_empty() && refused.users.is_empty() {
                println!("store {}: every object and user verified", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            for id in &refused.objects {
                println!("tampered object {id:016x}: refused");
            }
            for u in &refused.users {
                println!("tampered user {u}: refused");
            }
            Ok(ExitCode::from(1))
        }
        _ => Err(format!("unknown command {:?}\n{}", args.join(" "), usage())),
    }
}
