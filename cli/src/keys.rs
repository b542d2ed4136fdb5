//! `hsmpool key ...`: who owns which token key, and sharing a key with another crypto user,
//! on every member of the configured cluster (through the engine, as the module reaches them).
//!
//! `key list` logs in as a crypto officer (`HSMPOOL_SO_PIN`), who sees every key's owner and
//! sharing but can use none; `key share` / `unshare` log in as the key's owner
//! (`HSMPOOL_PIN`, `NAME:PASSWORD`), the only one who may share it or set its quorum;
//! `key approve` presents, as a user of the key, a key quorum token its users signed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cryptoki_sys::*;
use hsmpool_engine::types::AttrAnswer;
use hsmpool_member::{KeyService, OwnedObject, QuorumToken};

use crate::common::{
    class_name, explain, explain_key, failed, hex, one_key, open_cluster, parsed, secret,
    user_and_key,
};
use crate::quorum::Approvals;

/// The `key` part of `hsmpool --help`.
pub const USAGE: &str = "  key list|share|unshare|set-quorum|approve ...
                              token keys by owner, sharing a key with another crypto user,
                              and a key's own quorum (hsmpool key --help)
";

const EXAMPLES: &str = "Examples:
  # what alice owns (as an officer: owners and sharing, never a key's value)
  HSMPOOL_SO_PIN=... hsmpool key list --owner alice
  # alice shares her key labelled signing-key with bob, then stops
  HSMPOOL_PIN=alice:... hsmpool key share signing-key --with bob
  HSMPOOL_PIN=alice:... hsmpool key unshare uid:1f2e3d4c5b6a7988 --with bob
  # signing with alice's key needs two of alice, bob and carol from now on
  HSMPOOL_PIN=alice:... hsmpool key set-quorum signing-key --use 2
  HSMPOOL_PIN=bob:... hsmpool quorum token-gen --out t.hex key use signing-key
  hsmpool quorum sign --token t.hex --user alice --key alice-approval.pem > a.sig
  hsmpool quorum sign --token t.hex --user carol --key carol-approval.pem > c.sig
  HSMPOOL_PIN=bob:... hsmpool key approve signing-key --token t.hex --approval a.sig \\
      --approval c.sig     # bob may sign with it for the token's remaining ten minutes

KEY is a label, id:HEX (CKA_ID) or uid:HEX (CKA_UNIQUE_ID, the key's cluster-wide id, as
`key list` shows it); it must name exactly one of the owner's token keys. Exit status: 0 done,
1 refused or failed, 2 a usage error.";

#[derive(Parser, Debug)]
#[command(
    name = "hsmpool key",
    about = "Token keys: who owns them, and sharing them with other crypto users",
    after_help = EXAMPLES
)]
struct KeyCli {
    #[command(subcommand)]
    cmd: KeyCmd,
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Every token key (or a user's) with its owner and the users it is shared with.
    List {
        /// Only the keys this crypto user owns.
        #[arg(long)]
        owner: Option<String>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Share one of your keys with another crypto user: they may use it, not destroy, change,
    /// copy, wrap or share it.
    Share {
        /// The key: a label, id:HEX or uid:HEX.
        key: String,
        /// The crypto user to share it with.
        #[arg(long = "with")]
        with: String,
    },
    /// Stop sharing one of your keys with a crypto user.
    Unshare {
        /// The key: a label, id:HEX or uid:HEX.
        key: String,
        /// The crypto user to stop sharing it with.
        #[arg(long = "with")]
        with: String,
    },
    /// Set how many approvals of the key's users (its owner and those it is shared with)
    /// using it, or managing it, needs (1: none). Only the owner; at most the key's users that
    /// registered an approval key (`hsmpool quorum register-key --user`).
    SetQuorum {
        /// The key: a label, id:HEX or uid:HEX.
        key: String,
        /// Approvals needed to use it (sign, decrypt, unwrap, derive, wrap with it).
        #[arg(long = "use", value_name = "M")]
        use_m: Option<u32>,
        /// Approvals needed to manage it (destroy, copy, change, wrap it out, share, unshare,
        /// change its quorum).
        #[arg(long, value_name = "M")]
        manage: Option<u32>,
    },
    /// Destroy one of your token keys on every member (a key needing approvals to manage
    /// needs them first: `hsmpool key approve`). Names the backups that still hold it.
    Destroy {
        /// The key: a label, id:HEX or uid:HEX.
        key: String,
    },
    /// Copy a token key for an offline HSM: wrapped (CKM_RSA_AES_KEY_WRAP's form: RSA-OAEP
    /// SHA-256 of a fresh AES key, then AES-KWP) under the offline HSM's RSA public key, into
    /// an escrow file. Only a key whose policy allows it (extractable; not wrap-with-trusted).
    Escrow {
        /// The key: a label, id:HEX or uid:HEX.
        #[arg(long)]
        key: String,
        /// The offline HSM's RSA public key (PEM PUBLIC KEY; RSA-3072 or larger for keys of
        /// 128-bit strength).
        #[arg(long, value_name = "PEM")]
        to_public_key: PathBuf,
        /// Where to write the escrow file (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Bring an escrowed key into this token (the offline HSM, or a new cluster): unwrapped
    /// with the RSA private key the escrow was made for, with its public key.
    ImportEscrow {
        /// The escrow file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// The RSA private key to unwrap with: a label, id:HEX or uid:HEX.
        #[arg(long, value_name = "KEY")]
        unwrap_key: String,
        /// Leave the imported key extractable (default: it never leaves this token again).
        #[arg(long)]
        extractable: bool,
    },
    /// Present a key quorum token signed by the key's users (`hsmpool quorum token-gen key
    /// use|manage KEY`, then `quorum sign`): you may then use or manage the key, as the token
    /// says, until the token expires (ten minutes). The token is accepted once.
    Approve {
        /// The key: a label, id:HEX or uid:HEX.
        key: String,
        #[command(flatten)]
        approvals: Approvals,
    },
}

/// `hsmpool key ...` (the words after `key`); `data` is the global `--data DIR`.
pub fn run(args: &[String], data: Option<PathBuf>) -> Result<ExitCode, String> {
    let cli: KeyCli = match parsed("hsmpool key", args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match cli.cmd {
        KeyCmd::List { owner, json } => {
            let pin = secret("HSMPOOL_SO_PIN")?;
            let (engine, _) = match open_cluster(data, &pin, CKU_SO, true) {
                Ok(x) => x,
                Err(e) => return Ok(failed(&e)),
            };
            let keys = match engine.owned_objects(owner.as_deref()) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("hsmpool: listing keys: {}", explain(&e, ""));
                    return Ok(ExitCode::from(1));
                }
            };
            print_keys(&keys, json)
        }
        KeyCmd::Share { key, with } => share(data, &key, &with, true),
        KeyCmd::Unshare { key, with } => share(data, &key, &with, false),
        KeyCmd::SetQuorum { key, use_m, manage } => set_quorum(data, &key, use_m, manage),
        KeyCmd::Approve { key, approvals } => approve(data, &key, &approvals),
        KeyCmd::Destroy { key } => destroy(data, &key),
        KeyCmd::Escrow {
            key,
            to_public_key,
            out,
        } => crate::escrow::escrow(data, &key, &to_public_key, out.as_deref()),
        KeyCmd::ImportEscrow {
            file,
            unwrap_key,
            extractable,
        } => crate::escrow::import(data, &file, &unwrap_key, extractable),
    }
}

/// `hsmpool key destroy KEY`: the owner destroys it everywhere; older backups still hold it.
fn destroy(data: Option<PathBuf>, key: &str) -> Result<ExitCode, String> {
    let (engine, s, o) = match user_and_key(data, key)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let uid = match engine
        .get_attribute_value(s, o, &[CKA_UNIQUE_ID])
        .as_deref()
    {
        Ok([AttrAnswer::Value(v)]) => std::str::from_utf8(v)
            .ok()
            .and_then(|h| u64::from_str_radix(h, 16).ok()),
        _ => None,
    };
    if let Err(e) = engine.destroy_object(s, o) {
        eprintln!("hsmpool: key destroy {key}: {}", explain_key(&e, key));
        return Ok(ExitCode::from(1));
    }
    println!("{key}: destroyed on every member");
    if let Some(uid) = uid {
        crate::backup::name_stale_backups(&engine, crate::backup::Stale::Key(uid));
    }
    Ok(ExitCode::SUCCESS)
}

fn set_quorum(
    data: Option<PathBuf>,
    key: &str,
    use_m: Option<u32>,
    manage: Option<u32>,
) -> Result<ExitCode, String> {
    if use_m.is_none() && manage.is_none() {
        return Ok(failed("give --use M, --manage M or both"));
    }
    if use_m == Some(0) || manage == Some(0) {
        return Ok(failed("M is at least 1 (1: no approvals needed)"));
    }
    let (engine, s, o) = match user_and_key(data, key)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    // Management last: raising it first would make the use change need an approval too.
    for (service, m) in [(KeyService::Use, use_m), (KeyService::Manage, manage)] {
        let Some(m) = m else { continue };
        if let Err(e) = engine.set_key_quorum(s, o, service, m) {
            eprintln!(
                "hsmpool: key set-quorum {key} --{} {m}: {}",
                service.word(),
                explain_key(&e, key)
            );
            return Ok(ExitCode::from(1));
        }
        println!(
            "{key}: {} needs {m} approval(s) from now on, on every member",
            service.word()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn approve(data: Option<PathBuf>, key: &str, approvals: &Approvals) -> Result<ExitCode, String> {
    let approval = approvals.read()?;
    if approval.token.is_empty() {
        return Ok(failed(
            "give --token FILE (`hsmpool quorum token-gen key ...`) and one --approval per signer",
        ));
    }
    let pin = secret("HSMPOOL_PIN")?;
    let (engine, s) = match open_cluster(data, &pin, CKU_USER, true) {
        Ok(x) => x,
        Err(e) => return Ok(failed(&e)),
    };
    let done = one_key(&engine, s, key).and_then(|o| {
        engine
            .approve_key(s, o, &approval)
            .map_err(|e| explain_key(&e, key))
    });
    match done {
        Ok(report) => {
            let until = QuorumToken::decode(&approval.token).map_or(0, |t| t.expires_ms);
            println!(
                "{key}: approved on member(s) {:?} until {until} ms since the epoch",
                report.applied
            );
            if !report.pending.is_empty() {
                eprintln!(
                    "hsmpool: member(s) {:?} did not take the approval (down or failing): the \
                     key stays closed to you there",
                    report.pending
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("hsmpool: key approve {key}: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn share(data: Option<PathBuf>, key: &str, with: &str, on: bool) -> Result<ExitCode, String> {
    let pin = secret("HSMPOOL_PIN")?;
    let (engine, s) = match open_cluster(data, &pin, CKU_USER, true) {
        Ok(x) => x,
        Err(e) => return Ok(failed(&e)),
    };
    let verb = if on { "share" } else { "unshare" };
    let done = one_key(&engine, s, key).and_then(|o| {
        engine
            .share_object(s, o, with, on)
            .map_err(|e| match e.ck_rv() {
                CKR_ACTION_PROHIBITED => "only the key's owner may share it, and not with \
                                          itself (CKR_ACTION_PROHIBITED)"
                    .to_string(),
                _ => explain(&e, with),
            })
    });
    match done {
        Ok(()) => {
            println!(
                "{verb} {key} {} {with}: done",
                if on { "with" } else { "from" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("hsmpool: {verb} {key}: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn print_keys(keys: &[OwnedObject], json: bool) -> Result<ExitCode, String> {
    if json {
        let v: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "uid": format!("{:016x}", k.id),
                    "class": class_name(k.class),
                    "label": String::from_utf8_lossy(&k.label),
                    "id": hex(&k.ck_id),
                    "owner": k.owner,
                    "shared_with": k.shared_with,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<21} {:<12} {:<24} {:<16} shared with",
        "uid", "class", "label", "owner"
    );
    for k in keys {
        println!(
            "uid:{:016x} {:<12} {:<24} {:<16} {}",
            k.id,
            class_name(k.class),
            String::from_utf8_lossy(&k.label),
            k.owner.as_deref().unwrap_or("-"),
            k.shared_with.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
