//! `hsmpool audit ...`: each member's own tamper-evident audit log (see
//! `hsmpool_member::audit`), read as a crypto officer (`HSMPOOL_SO_PIN`) through the engine:
//! show it, verify it (the chain of hashes, the numbering, the signed checkpoints), export it
//! as JSON, and verify an export offline.

use std::path::PathBuf;
use std::process::ExitCode;

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use clap::{Parser, Subcommand};
use cryptoki_sys::CKU_SO;
use hsmpool_engine::Engine;
use hsmpool_member::audit::checkpoint_message;
use hsmpool_member::{AuditCheckpoint, AuditLog, AuditRecord};
use serde_json::{json, Value};

use crate::common::{failed, hex, open_cluster, parsed, secret, unhex};

/// The `audit` part of `hsmpool --help`.
pub const USAGE: &str = "  audit show|verify|export ...
                              each member's tamper-evident audit log (hsmpool audit --help)
";

const EXAMPLES: &str = "Examples:
  # the last logins on member 0, for a script
  HSMPOOL_SO_PIN=... hsmpool audit show --member 0 --kind login --json
  # every member's log: chained, numbered without a gap, checkpoints signed
  HSMPOOL_SO_PIN=... hsmpool audit verify
  # keep a copy, and check it later without the cluster
  HSMPOOL_SO_PIN=... hsmpool audit export --member 1 > member1-audit.json
  hsmpool audit verify --file member1-audit.json

verify names the first broken record of each member: one whose contents no longer match its
hash, a missing one (a gap in the numbers, or a record whose predecessor is not the one it
was chained to), a missing checkpoint, or a checkpoint whose signature does not verify under
the member's audit key (its fingerprint is printed: compare it with the one you keep). Exit
status: 0 every log verified, 1 a log is broken or a member could not be read, 2 a usage
error.";

#[derive(Parser, Debug)]
#[command(
    name = "hsmpool audit",
    about = "Each member's own tamper-evident audit log",
    after_help = EXAMPLES
)]
struct AuditCli {
    #[command(subcommand)]
    cmd: AuditCmd,
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Records of every member's log (or one member's), oldest first, filtered.
    Show {
        /// Only this member (its position in the configuration).
        #[arg(long)]
        member: Option<usize>,
        /// Only records of this kind (login, user_create, key_destroy, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Only records made by this user.
        #[arg(long)]
        actor: Option<String>,
        /// Only records from this number on.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Check every member's log (or one member's, or an export): exit 1 naming the first
    /// broken record, gap or checkpoint.
    Verify {
        /// Only this member.
        #[arg(long)]
        member: Option<usize>,
        /// Verify a file `audit export` wrote, without the cluster.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every member's log (or one member's) as JSON, with its checkpoints and public key.
    Export {
        /// Only this member.
        #[arg(long)]
        member: Option<usize>,
    },
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, b).as_ref());
    out
}

/// The key's fingerprint: the first 16 bytes of its SHA-256, in hex.
fn fingerprint(key: &[u8]) -> String {
    hex(&sha256(key)[..16])
}

/// A whole log (every page) of one member.
pub(crate) fn whole_log(engine: &Engine, member: usize, from: u64) -> Result<AuditLog, String> {
    let mut all = AuditLog::default();
    let mut next = from.max(1);
    loop {
        let page = engine
            .audit_log(member, next, 1000)
            .map_err(|e| format!("member {member}: reading its audit log: {e}"))?;
        all.public_key = page.public_key;
        all.checkpoint_every = page.checkpoint_every;
        all.last_seq = page.last_seq;
        let Some(last) = page.records.last().map(|r| r.seq) else {
            break;
        };
        all.records.extend(page.records);
        all.checkpoints.extend(page.checkpoints);
        if last >= all.last_seq {
            break;
        }
        next = last + 1;
    }
    Ok(all)
}

/// What is wrong with a log, the first thing found: `None` when it verifies.
pub(crate) fn verify(log: &AuditLog) -> Option<String> {
    let mut prev = [0u8; 32];
    for (expect_seq, r) in (1u64..).zip(&log.records) {
        if r.seq != expect_seq {
            return Some(if r.seq > expect_seq {
                format!(
                    "record {expect_seq} is missing (record {} follows record {})",
                    r.seq,
                    expect_seq - 1
                )
            } else {
                format!("record {} is out of order", r.seq)
            });
        }
        if sha256(&r.hashed_bytes()) != r.hash {
            return Some(format!(
                "record {} was changed: its contents no longer match its hash",
                r.seq
            ));
        }
        if r.prev != prev {
            return Some(format!(
                "record {} is not chained to record {}: a record was removed or replaced \
                 before it",
                r.seq,
                r.seq - 1
            ));
        }
        prev = r.hash;
    }
    let last = log.records.last().map_or(0, |r| r.seq);
    if last < log.last_seq {
        return Some(format!(
            "records {} to {} are missing from the end",
            last + 1,
            log.last_seq
        ));
    }
    let every = log.checkpoint_every.max(1);
    let key = UnparsedPublicKey::new(&ED25519, &log.public_key);
    for seq in (every..=last).step_by(every as usize) {
        let Some(c) = log.checkpoints.iter().find(|c| c.seq == seq) else {
            return Some(format!("the checkpoint at record {seq} is missing"));
        };
        let rec = &log.records[(seq - 1) as usize];
        if c.hash != rec.hash {
            return Some(format!(
                "the checkpoint at record {seq} does not vouch for that record"
            ));
        }
        if key
            .verify(&checkpoint_message(seq, &c.hash), &c.signature)
            .is_err()
        {
            return Some(format!(
                "the checkpoint at record {seq} has a bad signature (key {})",
                fingerprint(&log.public_key)
            ));
        }
    }
    None
}

fn record_json(r: &AuditRecord) -> Value {
    json!({
        "seq": r.seq, "at_ms": r.at_ms, "kind": r.kind, "actor": r.actor,
        "subject": r.subject, "detail": r.detail, "prev": hex(&r.prev), "hash": hex(&r.hash),
    })
}

fn log_json(member: usize, describe: &str, log: &AuditLog) -> Value {
    json!({
        "member": member,
        "describe": describe,
        "public_key": hex(&log.public_key),
        "checkpoint_every": log.checkpoint_every,
        "last_seq": log.last_seq,
        "records": log.records.iter().map(record_json).collect::<Vec<_>>(),
        "checkpoints": log.checkpoints.iter().map(|c| json!({
            "seq": c.seq, "hash": hex(&c.hash), "signature": hex(&c.signature),
        })).collect::<Vec<_>>(),
    })
}

/// An exported log read back (`None` when it is not one).
fn log_from_json(v: &Value) -> Option<AuditLog> {
    let h32 = |v: &Value| -> Option<[u8; 32]> { unhex(v.as_str()?).ok()?.try_into().ok() };
    let records = v["records"]
        .as_array()?
        .iter()
        .map(|r| {
            Some(AuditRecord {
                seq: r["seq"].as_u64()?,
                at_ms: r["at_ms"].as_u64()?,
                kind: r["kind"].as_str()?.into(),
                actor: r["actor"].as_str()?.into(),
                subject: r["subject"].as_str()?.into(),
                detail: r["detail"].as_str()?.into(),
                prev: h32(&r["prev"])?,
                hash: h32(&r["hash"])?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let checkpoints = v["checkpoints"]
        .as_array()?
        .iter()
        .map(|c| {
            Some(AuditCheckpoint {
                seq: c["seq"].as_u64()?,
                hash: h32(&c["hash"])?,
                signature: unhex(c["signature"].as_str()?).ok()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(AuditLog {
        public_key: unhex(v["public_key"].as_str()?).ok()?,
        checkpoint_every: v["checkpoint_every"].as_u64()?,
        last_seq: v["last_seq"].as_u64()?,
        records,
        checkpoints,
    })
}

/// `hsmpool audit ...` (the words after `audit`); `data` is the global `--data DIR`.
pub fn run(args: &[String], data: Option<PathBuf>) -> Result<ExitCode, String> {
    let cli: AuditCli = match parsed("hsmpool audit", args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let AuditCmd::Verify {
        file: Some(file),
        json,
        ..
    } = &cli.cmd
    {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let logs: Vec<Value> = match v {
            Value::Array(a) => a,
            one => vec![one],
        };
        let mut results = Vec::new();
        for l in &logs {
            let member = l["member"].as_u64().unwrap_or(0) as usize;
            let log = log_from_json(l)
                .ok_or_else(|| format!("{}: not an `hsmpool audit export`", file.display()))?;
            results.push((member, String::new(), Ok(log)));
        }
        return Ok(report_verify(results, *json));
    }
    let pin = secret("HSMPOOL_SO_PIN")?;
    let (engine, _) = match open_cluster(data, &pin, CKU_SO, true) {
        Ok(x) => x,
        Err(e) => return Ok(failed(&e)),
    };
    let members: Vec<(usize, String)> = engine
        .member_status()
        .into_iter()
        .map(|m| (m.index, m.describe))
        .collect();
    let chosen = |only: Option<usize>| -> Result<Vec<(usize, String)>, String> {
        match only {
            None => Ok(members.clone()),
            Some(i) => members
                .iter()
                .find(|(m, _)| *m == i)
                .cloned()
                .map(|m| vec![m])
                .ok_or_else(|| format!("--member {i}: there are {} members", members.len())),
        }
    };
    match cli.cmd {
        AuditCmd::Show {
            member,
            kind,
            actor,
            from,
            json,
        } => {
            let mut out = Vec::new();
            let mut code = ExitCode::SUCCESS;
            for (i, describe) in chosen(member)? {
                match whole_log(&engine, i, from) {
                    Ok(log) => {
                        for r in log.records.iter().filter(|r| {
                            kind.as_ref().is_none_or(|k| &r.kind == k)
                                && actor.as_ref().is_none_or(|a| &r.actor == a)
                        }) {
                            if json {
                                let mut v = record_json(r);
                                v["member"] = json!(i);
                                out.push(v);
                            } else {
                                println!(
                                    "member {i} #{:<6} {} {:<15} {:<12} {:<20} {}",
                                    r.seq, r.at_ms, r.kind, r.actor, r.subject, r.detail
                                );
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("hsmpool: {e} ({describe})");
                        code = ExitCode::from(1);
                    }
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
                );
            }
            Ok(code)
        }
        AuditCmd::Export { member } => {
            let mut out = Vec::new();
            for (i, describe) in chosen(member)? {
                let log = whole_log(&engine, i, 1)?;
                out.push(log_json(i, &describe, &log));
            }
            let v = if out.len() == 1 {
                out.remove(0)
            } else {
                Value::Array(out)
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify { member, json, .. } => {
            let results = chosen(member)?
                .into_iter()
                .map(|(i, d)| {
                    let log = whole_log(&engine, i, 1);
                    (i, d, log)
                })
                .collect();
            Ok(report_verify(results, json))
        }
    }
}

/// Print what verifying each log found; exit 1 when any is broken or unread.
fn report_verify(results: Vec<(usize, String, Result<AuditLog, String>)>, json: bool) -> ExitCode {
    let mut ok = true;
    let mut out = Vec::new();
    for (i, describe, log) in results {
        let (verdict, records, key) = match &log {
            Ok(log) => (verify(log), log.records.len(), fingerprint(&log.public_key)),
            Err(e) => (Some(e.clone()), 0, String::new()),
        };
        ok &= verdict.is_none();
        if json {
            out.push(json!({
                "member": i, "describe": describe, "verified": verdict.is_none(),
                "records": records, "key": key, "problem": verdict,
            }));
        } else {
            match verdict {
                None => println!("member {i}: {records} records verified (audit key {key})"),
                Some(p) => println!("member {i}: BROKEN: {p}"),
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
