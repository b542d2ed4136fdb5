//! `hsmpool cluster trust ...`: the cluster certificates the daemon members accept clients
//! under (CloudHSM's mTLS trust anchors). The daemons verify every client against the customer
//! CA; with certificates registered here, they also refuse a client whose chain holds none of
//! them: a leaf issued under a retired cluster key (or one stolen with its file) can no longer
//! connect once the officers take that cluster certificate off the list (connections already
//! open stay until they close, as TLS checks a client at connection). The list is a record
//! every member keeps, changed as one user change is, and under the officers' quorum.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cryptoki_sys::CKU_SO;
use hsmpool_engine::config::{Config, MemberKind};
use hsmpool_member::users::MAX_TRUST_ANCHORS;
use hsmpool_member::UserChange;

use crate::common::{explain, failed, hex, open_cluster, parsed, secret};
use crate::quorum::Approvals;

/// The `cluster trust` part of `hsmpool --help`.
pub const USAGE: &str = "  cluster trust list|set|clear ...
                              the cluster certificates daemons accept clients under
                              (hsmpool cluster trust --help)
";

const EXAMPLES: &str = "Examples:
  export HSMPOOL_SO_PIN=...
  hsmpool cluster trust list
  # while rotating the cluster certificate: the old one and the new one
  hsmpool cluster trust set /etc/hsmpool/ca/cluster.crt.pem new/cluster.crt.pem
  # then the new one alone: leaves of the old one are refused from then on
  hsmpool cluster trust set new/cluster.crt.pem
  # under a quorum (hsmpool quorum set M):
  hsmpool quorum token-gen --out t.hex cluster trust set new/cluster.crt.pem
  hsmpool cluster trust set new/cluster.crt.pem --token t.hex --approval bob.sig ...

A daemon checks each new connection: its client's presented chain (leaf, then the cluster
certificate) must hold a registered certificate (connections already open stay until they
close). `set` refuses a list that holds none of the
certificates in this tool's own client chain (the `cert` file of its configuration): the
daemons would then refuse it, and every client like it; --force accepts that. At most 4
certificates. Exit status: 0 done, 1 refused or failed, 2 a usage error.";

#[derive(Parser, Debug)]
#[command(
    name = "hsmpool cluster trust",
    about = "The cluster certificates the daemon members accept clients under",
    after_help = EXAMPLES
)]
struct TrustCli {
    #[command(subcommand)]
    cmd: TrustCmd,
}

#[derive(Subcommand, Debug)]
enum TrustCmd {
    /// The registered certificates (SHA-256 of each), as the first up member holds them.
    List {
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Register these cluster certificates (PEM files), replacing the list.
    Set {
        /// Cluster certificate files (PEM; the first certificate of each).
        #[arg(required = true, num_args = 1..=MAX_TRUST_ANCHORS)]
        certs: Vec<PathBuf>,
        /// Register a list that holds none of this tool's own client chain.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        approvals: Approvals,
    },
    /// Register none: the daemons accept any client chaining to the customer CA.
    Clear {
        #[command(flatten)]
        approvals: Approvals,
    },
}

/// The SHA-256 of each certificate in a PEM file (`first`: of the first one only).
fn digests(path: &Path, first: bool) -> Result<Vec<[u8; 32]>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let blocks = pem::parse_many(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<[u8; 32]> = blocks
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .take(if first { 1 } else { usize::MAX })
        .map(|p| {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, p.contents());
            d.as_ref().try_into().unwrap_or([0; 32])
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// The change `cluster trust set FILES` (or `clear`, with none) makes.
pub(crate) fn change(certs: &[PathBuf]) -> Result<UserChange, String> {
    let mut anchors = Vec::new();
    for c in certs {
        anchors.extend(digests(c, true)?);
    }
    anchors.dedup();
    if anchors.len() > MAX_TRUST_ANCHORS {
        return Err(format!("at most {MAX_TRUST_ANCHORS} cluster certificates"));
    }
    Ok(UserChange::SetTrustAnchors { anchors })
}

/// A client certificate file and the SHA-256 of each certificate in it.
type Chain = (PathBuf, Vec<[u8; 32]>);

/// This tool's own client chains (the `cert` file of each daemon member it is configured
/// with), when it reaches any daemon.
fn own_chains(data: &Option<PathBuf>) -> Result<Vec<Chain>, String> {
    if data.is_some() {
        return Ok(Vec::new());
    }
    let cfg = Config::resolve(None).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for m in cfg.members() {
        if matches!(m.kind(), Ok(MemberKind::Daemon)) {
            if let Some(c) = &m.cert {
                if !out.iter().any(|(p, _)| p == c) {
                    out.push((c.clone(), digests(c, false)?));
                }
            }
        }
    }
    Ok(out)
}

/// `hsmpool cluster trust ...` (the words after `trust`).
pub fn run(args: &[String], data: Option<PathBuf>) -> Result<ExitCode, String> {
    let cli: TrustCli = match parsed("hsmpool cluster trust", args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let (change, approvals) = match cli.cmd {
        TrustCmd::List { json } => return list(data, json),
        TrustCmd::Set {
            certs,
            force,
            approvals,
        } => {
            let change = match change(&certs) {
                Ok(c) => c,
                Err(e) => return Ok(failed(&e)),
            };
            let UserChange::SetTrustAnchors { anchors } = &change else {
                unreachable!("change makes SetTrustAnchors")
            };
            for (file, chain) in own_chains(&data)? {
                if !chain.iter().any(|d| anchors.contains(d)) {
                    if !force {
                        return Ok(failed(&format!(
                            "refused: this tool's own client chain ({}) holds none of these \
                             certificates, so the daemons would refuse it, and every client \
                             like it, from the next connection on: the cluster could no longer \
                             be administered over the network. Register its cluster \
                             certificate too, or pass --force to accept that risk",
                            file.display()
                        )));
                    }
                    eprintln!(
                        "hsmpool: WARNING: the daemons will refuse this tool's own client \
                         chain ({}) from the next connection on",
                        file.display()
                    );
                }
            }
            (change, approvals)
        }
        TrustCmd::Clear { approvals } => {
            (UserChange::SetTrustAnchors { anchors: vec![] }, approvals)
        }
    };
    let pin = secret("HSMPOOL_SO_PIN")?;
    let (engine, _) = match open_cluster(data, &pin, CKU_SO, true) {
        Ok(x) => x,
        Err(e) => return Ok(failed(&e)),
    };
    let approval = approvals.read()?;
    match engine.change_user_approved(&change, &approval) {
        Ok(report) => {
            let UserChange::SetTrustAnchors { anchors } = &change else {
                unreachable!()
            };
            if anchors.is_empty() {
                println!("cluster trust: none registered; any client chaining to the customer CA");
            }
            for a in anchors {
                println!("registered {}", hex(a));
            }
            println!("on members {:?}", report.applied);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(failed(&format!("cluster trust: {}", explain(&e, "")))),
    }
}

fn list(data: Option<PathBuf>, json: bool) -> Result<ExitCode, String> {
    let pin = secret("HSMPOOL_SO_PIN")?;
    let (engine, _) = match open_cluster(data, &pin, CKU_SO, true) {
        Ok(x) => x,
        Err(e) => return Ok(failed(&e)),
    };
    let set = match engine.member_users() {
        Ok(v) => match v.into_iter().find_map(|(_, s)| s.ok()) {
            Some(s) => s,
            None => return Ok(failed("no member that keeps users answered")),
        },
        Err(e) => return Ok(failed(&e.to_string())),
    };
    let anchors: Vec<String> = set.trust_anchors().iter().map(|a| hex(a)).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&anchors).map_err(|e| e.to_string())?
        );
    } else if anchors.is_empty() {
        println!("none registered: the daemons accept any client chaining to the customer CA");
    } else {
        for a in anchors {
            println!("sha256:{a}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
