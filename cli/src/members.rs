//! `hsmpool cluster member add|remove`: change the cluster's membership in the configuration
//! file (HSMPOOL_CONF, edited in place with its comments kept, replaced atomically), bring the
//! members level through the engine as the module would, and take a backup right after, as
//! the CloudHSM guide asks whenever HSMs are added or removed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cryptoki_sys::CKU_SO;
use hsmpool_engine::cluster::Health;
use hsmpool_engine::config::Config;

use crate::common::{failed, open_cluster, parsed, secret};

/// The `cluster member` part of `hsmpool --help`.
pub const USAGE: &str = "  cluster member add|remove ...
                              add or remove a member in HSMPOOL_CONF, bring it level, then
                              take a backup (hsmpool cluster member --help)
";

const EXAMPLES: &str = "Examples:
  # a fourth in-process HSM: it takes every user and key before it serves, then a backup
  HSMPOOL_SO_PIN=... hsmpool cluster member add --data-dir /var/lib/hsmpool/hsm3
  # an hsmpool-hsmd daemon (its directory provisioned with `hsmpool cluster clone-key`)
  HSMPOOL_SO_PIN=... hsmpool cluster member add --daemon 10.0.0.8:2225 --ca ca.pem --cert app.crt.pem --key app.key.pem
  # member 1 leaves the cluster
  HSMPOOL_SO_PIN=... hsmpool cluster member remove 1";

#[derive(Parser, Debug)]
#[command(
    name = "hsmpool cluster member",
    about = "Add or remove a cluster member, then take a backup",
    after_help = EXAMPLES
)]
struct MemberCli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Add a member: an in-process HSM (--data-dir, a new or empty directory) or a daemon.
    Add {
        /// A new in-process HSM's data directory.
        #[arg(long, conflicts_with = "daemon", required_unless_present = "daemon")]
        data_dir: Option<PathBuf>,
        /// A daemon's address (HOST:PORT).
        #[arg(long, requires_all = ["ca", "cert", "key"])]
        daemon: Option<String>,
        /// The customer CA (daemon).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// This client's certificate chain (daemon).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// This client's key (daemon).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Remove member INDEX (as `hsmpool status` numbers them).
    Remove {
        /// The member's index.
        index: usize,
    },
}

/// Replace `path` with `text` atomically (a temporary file beside it, then a rename), with
/// the old file's permissions.
fn replace_file(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn abs(p: &Path) -> Result<String, String> {
    std::path::absolute(p)
        .map_err(|e| format!("{}: {e}", p.display()))?
        .to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{}: the path is not UTF-8", p.display()))
}

/// `hsmpool cluster member ...` (the words after `member`).
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let cli: MemberCli = match parsed("hsmpool cluster member", args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let conf = std::env::var_os("HSMPOOL_CONF")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .ok_or("HSMPOOL_CONF names no configuration file: membership lives there")?;
    let text = std::fs::read_to_string(&conf).map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let Some(members) = doc
        .get_mut("member")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
    else {
        return Ok(failed(&format!(
            "{} lists no [[member]]: the embedded default is not changed by membership \
             commands; list it as a member first",
            conf.display()
        )));
    };
    let what = match cli.cmd {
        Cmd::Add {
            data_dir: data,
            daemon,
            ca,
            cert,
            key,
        } => {
            let mut t = toml_edit::Table::new();
            let what = if let Some(dir) = data {
                if dir.exists()
                    && std::fs::read_dir(&dir)
                        .map_err(|e| format!("{}: {e}", dir.display()))?
                        .next()
                        .is_some()
                {
                    return Ok(failed(&format!(
                        "{}: not empty: a new member is a new HSM (it takes the cluster's \
                         users and keys when it joins)",
                        dir.display()
                    )));
                }
                let dir = abs(&dir)?;
                if members
                    .iter()
                    .any(|m| m.get("data_dir").and_then(|d| d.as_str()) == Some(dir.as_str()))
                {
                    return Ok(failed(&format!("{dir} is a member already")));
                }
                t["kind"] = toml_edit::value("embedded");
                t["data_dir"] = toml_edit::value(dir.clone());
                // Like its peers: the same PIN hashing and lockout.
                if let Some(peer) = members
                    .iter()
                    .find(|m| m.get("kind").and_then(|k| k.as_str()) == Some("embedded"))
                {
                    for k in ["pin_iterations", "max_login_failures", "timing"] {
                        if let Some(v) = peer.get(k) {
                            t[k] = v.clone();
                        }
                    }
                }
                format!("in-process HSM {dir}")
            } else {
                let (Some(addr), Some(ca), Some(cert), Some(key)) = (daemon, ca, cert, key) else {
                    return Ok(failed("--daemon needs --ca, --cert and --key"));
                };
                t["kind"] = toml_edit::value("daemon");
                t["address"] = toml_edit::value(addr.clone());
                t["ca"] = toml_edit::value(abs(&ca)?);
                t["cert"] = toml_edit::value(abs(&cert)?);
                t["key"] = toml_edit::value(abs(&key)?);
                format!("daemon {addr}")
            };
            members.push(t);
            format!("member {} added ({what})", members.len() - 1)
        }
        Cmd::Remove { index } => {
            if index >= members.len() {
                return Ok(failed(&format!(
                    "no member {index}: the cluster has {}",
                    members.len()
                )));
            }
            if members.len() == 1 {
                return Ok(failed("the last member cannot be removed"));
            }
            members.remove(index);
            format!("member {index} removed")
        }
    };
    let new_text = doc.to_string();
    Config::parse(&new_text, &conf.display().to_string()).map_err(|e| e.to_string())?;
    let pin = secret("HSMPOOL_SO_PIN")?;
    replace_file(&conf, &new_text)?;
    println!("{what} in {}", conf.display());
    // Log in as the module would: every up member, the new one too, is brought level.
    let engine = match open_cluster(None, &pin, CKU_SO, true) {
        Ok((e, _)) => e,
        Err(e) => return Ok(failed(&format!("membership changed, but {e}"))),
    };
    let away: Vec<String> = engine
        .member_status()
        .iter()
        .filter(|m| m.health != Health::Up)
        .map(|m| format!("member {} ({})", m.index, m.health.name()))
        .collect();
    if !away.is_empty() {
        println!(
            "not up now: {} (each is brought level when it returns)",
            away.join(", ")
        );
    }
    match crate::backup::after_membership_change(&engine, &what) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Ok(failed(&format!(
            "membership changed, but no backup was taken ({e}): take one now with `hsmpool \
             backup create`"
        ))),
    }
}
