//! `hsmpool key ...`: who owns which token key, and sharing a key with another crypto user,
//! on every member of the configured cluster (through the engine, as the module reaches them).
//!
//! `key list` logs in as a crypto officer (`HSMPOOL_SO_PIN`), who sees every key's owner and
//! sharing but can use none; `key share` / `unshare` log in as the key's owner
//! (`HSMPOOL_PIN`, `NAME:PASSWORD`), the only one who may share it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cryptoki_sys::*;
use hsmpool_engine::types::{AttrAnswer, ObjectHandle};
use hsmpool_engine::{Attr, Engine};
use hsmpool_member::OwnedObject;

use crate::users::{explain, failed, hex, open_cluster, parsed, secret, unhex};

/// The `key` part of `hsmpool --help`.
pub const USAGE: &str =
    "  key list|share|unshare ...  token keys by owner, and sharing a key with another crypto
                              user (hsmpool key --help)
";

const EXAMPLES: &str = "Examples:
  # what alice owns (as an officer: owners and sharing, never a key's value)
  HSMPOOL_SO_PIN=... hsmpool key list --owner alice
  # alice shares her key labelled signing-key with bob, then stops
  HSMPOOL_PIN=alice:... hsmpool key share signing-key --with bob
  HSMPOOL_PIN=alice:... hsmpool key unshare uid:1f2e3d4c5b6a7988 --with bob

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
}

fn class_name(class: CK_OBJECT_CLASS) -> &'static str {
    match class {
        CKO_SECRET_KEY => "secret key",
        CKO_PRIVATE_KEY => "private key",
        CKO_PUBLIC_KEY => "public key",
        CKO_CERTIFICATE => "certificate",
        CKO_DATA => "data",
        _ => "object",
    }
}

/// One line for a key: its cluster-wide id, class, label and CKA_ID.
pub(crate) fn describe(k: &OwnedObject) -> String {
    let mut s = format!("uid:{:016x} {}", k.id, class_name(k.class));
    if !k.label.is_empty() {
        s.push_str(&format!(" label {:?}", String::from_utf8_lossy(&k.label)));
    }
    if !k.ck_id.is_empty() {
        s.push_str(&format!(" id:{}", hex(&k.ck_id)));
    }
    s
}

/// The one token key `spec` names among those the logged-in user sees.
fn one_key(
    engine: &Engine,
    s: hsmpool_engine::types::SessionHandle,
    spec: &str,
) -> Result<ObjectHandle, String> {
    let mut template = vec![Attr::bool(CKA_TOKEN, true)];
    if let Some(h) = spec.strip_prefix("uid:") {
        template.push(Attr::bytes(
            CKA_UNIQUE_ID,
            h.to_ascii_lowercase().as_bytes(),
        ));
    } else if let Some(h) = spec.strip_prefix("id:") {
        template.push(Attr::bytes(CKA_ID, &unhex(h)?));
    } else {
        template.push(Attr::bytes(CKA_LABEL, spec.as_bytes()));
    }
    engine
        .find_objects_init(s, template)
        .map_err(|e| e.to_string())?;
    let found = engine.find_objects(s, 16).map_err(|e| e.to_string());
    let _ = engine.find_objects_final(s);
    // A public key and its private key may share a label: the one of a class that can be
    // shared and is the user's own (a private or secret key) is meant.
    let found: Vec<ObjectHandle> = found?
        .into_iter()
        .filter(|o| {
            matches!(
                engine.get_attribute_value(s, *o, &[CKA_CLASS]).as_deref(),
                Ok([AttrAnswer::Value(v)]) if v.as_slice() != CKO_PUBLIC_KEY.to_ne_bytes()
            )
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no token key of yours matches {spec:?} (a label, id:HEX or uid:HEX)"
        )),
        _ => Err(format!(
            "{} keys match {spec:?}; name one by uid:HEX (`hsmpool key list` shows them)",
            found.len()
        )),
    }
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
