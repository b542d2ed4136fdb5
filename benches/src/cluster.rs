//! `hsmpool-bench cluster`: what a cluster of simulated network HSMs does for throughput, with
//! the simulator's timing model on (AWS CloudHSM hsm2m.medium figures: network round trip,
//! service time, 32 operations in flight per HSM; see simulator/src/timing.rs).
//!
//! Each configuration (one member, three members) runs in a child process of its own, so each
//! gets a fresh module and a fresh `HSMPOOL_CONF` (the environment is only changed before any
//! thread exists). The child initialises the token through PKCS #11, logs in once, makes its
//! keys once, and measures RSA-2048 and ECDSA P-256 signing for each thread count with the
//! sweep's workers (one session per thread, samples verified with aws-lc-rs after each window).
//! It prints one `RESULT` line per step; the parent prints the table and the ratios the cluster
//! issue asks for: 64 threads against 1 on one member (the published throughput is only reached
//! with many requests in flight), and three members against one.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::setup;
use crate::sweep::{self, ModuleKeys, Op, Step};
use crate::{Context, Error, Result};
use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::Slot;

/// What one child measures.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Members in the cluster (embedded, timing on).
    pub members: usize,
    /// Thread counts.
    pub threads: Vec<usize>,
    /// Window per step.
    pub window: Duration,
}

/// One measured step, as the child reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Members.
    pub members: usize,
    /// Operation name.
    pub op: String,
    /// Threads.
    pub threads: usize,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// Failures (errors and failed verifications).
    pub failures: u64,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "RESULT members={} op={} threads={} ops_per_s={:.1} p50_us={:.0} failures={}",
            self.members, self.op, self.threads, self.ops_per_s, self.p50_us, self.failures
        )
    }

    /// Parse a `RESULT` line.
    pub fn parse(line: &str) -> Option<Row> {
        let rest = line.strip_prefix("RESULT ")?;
        let mut members = None;
        let mut op = None;
        let mut threads = None;
        let mut ops = None;
        let mut p50 = None;
        let mut failures = None;
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "members" => members = v.parse().ok(),
                "op" => op = Some(v.to_string()),
                "threads" => threads = v.parse().ok(),
                "ops_per_s" => ops = v.parse().ok(),
                "p50_us" => p50 = v.parse().ok(),
                "failures" => failures = v.parse().ok(),
                _ => return None,
            }
        }
        Some(Row {
            members: members?,
            op: op?,
            threads: threads?,
            ops_per_s: ops?,
            p50_us: p50?,
            failures: failures?,
        })
    }
}

/// The configuration of a cluster of `members` embedded members under `dir`, timing on.
pub fn config_text(dir: &Path, members: usize) -> Result<String> {
    config_text_with(dir, members, "")
}

/// [`config_text`] with `cluster_extra` (TOML `key = value` lines) added to `[cluster]`.
pub fn config_text_with(dir: &Path, members: usize, cluster_extra: &str) -> Result<String> {
    let mut text =
        format!("# written by hsmpool-bench\n[cluster]\nsessions_per_member = 4\n{cluster_extra}");
    for i in 0..members {
        let d = dir.join(format!("hsm{i}"));
        let d = d
            .to_str()
            .ok_or_else(|| Error(format!("{} is not UTF-8", d.display())))?
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        text.push_str(&format!(
            "[[member]]\nkind = \"embedded\"\ndata_dir = \"{d}\"\npin_iterations = {PIN_ITERATIONS}\ntiming = \"hsm2m.medium\"\n"
        ));
    }
    Ok(text)
}

/// PBKDF2 iterations of the members' PIN hashes: low, so that setting the token up is quick.
pub const PIN_ITERATIONS: u32 = 1000;

/// A child's cluster, up and logged in.
///
/// # Invariants
/// `HSMPOOL_CONF` names the configuration in `_tmp`, which outlives the module: the directory is
/// removed on drop, after the fields above it (the module) are.
pub struct Started {
    /// The module, initialised.
    pub pkcs11: Pkcs11,
    /// Its slot.
    pub slot: Slot,
    /// A R/W session logged in as the user (the application's one login).
    pub session: Session,
    /// The members' data; removed on drop.
    _tmp: tempfile::TempDir,
}

impl Started {
    /// Log out, close the session, finalize the module.
    pub fn finish(self) -> Result<()> {
        self.session.logout().context("C_Logout")?;
        self.session.close().context("C_CloseSession")?;
        self.pkcs11.finalize().context("C_Finalize")?;
        Ok(())
    }
}

/// In a child, before any thread exists: write the configuration `config(dir)` into a fresh
/// temporary directory, point `HSMPOOL_CONF` at it, load the module, initialise the token and
/// log in once.
pub fn start(module: &Path, config: impl FnOnce(&Path) -> Result<String>) -> Result<Started> {
    let tmp = tempfile::Builder::new()
        .prefix("hsmpool-bench-cluster-")
        .tempdir()
        .context("creating a temporary directory")?;
    let conf = tmp.path().join("hsmpool.toml");
    std::fs::write(&conf, config(tmp.path())?).context(&format!("writing {}", conf.display()))?;
    // Single-threaded here: nothing else reads the environment yet.
    std::env::set_var("HSMPOOL_CONF", &conf);
    let pkcs11 = setup::load(module)?;
    let slot = setup::slot(&pkcs11)?;
    let session = setup::init_token(&pkcs11, slot, "hsmpool-bench")?;
    Ok(Started {
        pkcs11,
        slot,
        session,
        _tmp: tmp,
    })
}

/// The sweep's keys on a started cluster's token (found by label, made when missing).
pub fn module_keys(c: &Started) -> Result<ModuleKeys> {
    ModuleKeys::prepare(&c.pkcs11, c.slot, &c.session, &mut |_| {})
}

/// The child: set up the cluster, measure, print `RESULT` lines.
pub fn run_child(module: &Path, plan: &Plan) -> Result<()> {
    let c = start(module, |dir| config_text(dir, plan.members))?;
    let keys = module_keys(&c)?;
    for op in [Op::RsaSign, Op::EcdsaSign] {
        for &t in &plan.threads {
            let step: Step = sweep::run_module(&c.pkcs11, c.slot, &keys, op, t, plan.window);
            let row = Row {
                members: plan.members,
                op: op.name().replace(' ', "_"),
                threads: t,
                ops_per_s: step.ops_per_s(),
                p50_us: step.percentile_us(50.0).unwrap_or(0.0),
                failures: step.failures(),
            };
            println!("{}", row.line());
        }
    }
    c.finish()
}

/// Run this executable again with `args` (a child subcommand) and return what it printed; a
/// child that fails is an error carrying its output.
pub fn run_child_process(args: &[String], what: &str) -> Result<String> {
    let exe = std::env::current_exe().context("finding the running executable")?;
    let out = Command::new(&exe)
        .args(args)
        .output()
        .context(&format!("running the {what} child"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(Error(format!(
            "the {what} child failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(text)
}

/// The parent: one child per configuration, then the table and the ratios. Returns the
/// failures counted (errors, failed verifications, missed targets are reported, not counted).
pub fn run(module: &Path, threads: &[usize], window: Duration) -> Result<u64> {
    let list = threads
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "cluster benchmark: timing model hsm2m.medium (RTT 0.5 ms, 32 in flight per HSM, RSA-2048 sign 1,000/s and EC P-256 sign 1,500/s per HSM), {} s per step",
        window.as_secs_f64()
    );
    let mut rows: Vec<Row> = Vec::new();
    for members in [1usize, 3] {
        let args = [
            "cluster-child",
            "--module",
            &module.display().to_string(),
            "--members",
            &members.to_string(),
            "--threads",
            &list,
            "--seconds-per-step",
            &window.as_secs_f64().to_string(),
        ]
        .map(String::from);
        let text = run_child_process(&args, &format!("{members}-member"))?;
        rows.extend(text.lines().filter_map(Row::parse));
    }
    println!();
    println!(
        "{:<16} {:>8} {:>8} {:>12} {:>10} {:>9}",
        "operation", "members", "threads", "ops/s", "p50 µs", "failures"
    );
    for r in &rows {
        println!(
            "{:<16} {:>8} {:>8} {:>12.0} {:>10.0} {:>9}",
            r.op.replace('_', " "),
            r.members,
            r.threads,
            r.ops_per_s,
            r.p50_us,
            r.failures
        );
    }
    let get = |op: &str, members: usize, threads: usize| {
        rows.iter()
            .find(|r| r.op == op && r.members == members && r.threads == threads)
            .map(|r| r.ops_per_s)
    };
    println!();
    let most = threads.iter().copied().max().unwrap_or(1);
    let slugs = [Op::RsaSign, Op::EcdsaSign].map(|o| o.name().replace(' ', "_"));
    for op in slugs.iter().map(String::as_str) {
        if let (Some(one), Some(many)) = (get(op, 1, 1), get(op, 1, 64)) {
            let ratio = many / one;
            println!(
                "{}: one member, 64 threads / 1 thread = {ratio:.1}x (target >= 30x: {})",
                op.replace('_', " "),
                if ratio >= 30.0 { "pass" } else { "MISS" }
            );
        }
        if let (Some(one), Some(three)) = (get(op, 1, most), get(op, 3, most)) {
            let ratio = three / one;
            println!(
                "{}: {most} threads, three members / one member = {ratio:.2}x (target >= 2.7x: {})",
                op.replace('_', " "),
                if ratio >= 2.7 { "pass" } else { "MISS" }
            );
        }
    }
    Ok(rows.iter().map(|r| r.failures).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_round_trip_and_garbage_is_ignored() {
        let r = Row {
            members: 3,
            op: "RSA-2048_sign".into(),
            threads: 64,
            ops_per_s: 2950.5,
            p50_us: 21000.0,
            failures: 0,
        };
        assert_eq!(Row::parse(&r.line()), Some(r));
        assert_eq!(Row::parse("RESULT members=x"), None);
        assert_eq!(Row::parse("hello"), None);
    }

    #[test]
    fn the_config_names_every_member_with_the_timing_model() {
        let t = config_text(Path::new("/tmp/x"), 3).unwrap();
        assert_eq!(t.matches("[[member]]").count(), 3);
        assert_eq!(t.matches("timing = \"hsm2m.medium\"").count(), 3);
        assert!(t.contains("/tmp/x/hsm2"));
    }
}
