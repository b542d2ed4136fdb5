//! The sweep as the `hsmpool-bench` command runs it: modules opened, every operation × thread
//! count measured for each module and for the raw limit (interleaved, so a machine that slows
//! down part-way through affects every column alike), a table on stdout, a progress line on
//! stderr when it is a terminal, and CSV, JSON and the plot in the output directory.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::report::{self, Record, RAW};
use crate::setup::{self, DataDir, TokenOrigin};
use crate::stats;
use crate::sweep::{self, Op, RawKeys};
use crate::target::Target;
use crate::{Context, Error, Result};

/// What a sweep run does (the command line, parsed).
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// The module measured (`None`: `HSMPOOL_MODULE`, else ours next to the executable).
    pub module: Option<PathBuf>,
    /// A second module measured beside it.
    pub vs: Option<PathBuf>,
    /// Where the tokens live (`None`: a temporary directory).
    pub data: Option<PathBuf>,
    /// Thread counts.
    pub threads: Vec<usize>,
    /// Window per step; zero runs the set-up and first checks only.
    pub step: Duration,
    /// Operations, in order.
    pub ops: Vec<Op>,
    /// Token data objects to have on each token before the sweep.
    pub token_objects: usize,
    /// Output directory (`None`: `bench-results/<UTC date-time>`).
    pub out: Option<PathBuf>,
    /// Our module's members: this many SoftHSMv2 tokens (0: the embedded simulator).
    pub softhsm_members: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            module: None,
            vs: None,
            data: None,
            threads: vec![1, 2, 4, 16, 64, 128],
            step: Duration::from_millis(500),
            ops: Op::ALL.to_vec(),
            token_objects: 0,
            out: None,
            softhsm_members: 0,
        }
    }
}

/// One module as the JSON describes it.
#[derive(Debug, Serialize)]
struct ModuleInfo {
    name: String,
    path: String,
    library: String,
    token: &'static str,
    mechanisms: Vec<(String, String)>,
}

/// The whole run, as `results.json` holds it.
#[derive(Debug, Serialize)]
struct RunReport<'a> {
    tool: &'static str,
    started_utc: String,
    cpus: usize,
    seconds_per_step: f64,
    threads: &'a [usize],
    ops: Vec<&'static str>,
    token_objects: usize,
    modules: Vec<ModuleInfo>,
    /// VmRSS before any module was loaded.
    rss_before_initialize_kib: Option<u64>,
    /// Whether per-step peaks are per step (VmHWM reset through /proc/self/clear_refs) or the
    /// process's lifetime peak.
    peak_rss_per_step: bool,
    fairness: &'static str,
    cpu: &'static str,
    steps: &'a [Record],
    targets: Vec<Goal>,
    failures: u64,
}

/// A target of the issue read off this run.
#[derive(Debug, Serialize)]
struct Goal {
    what: String,
    measured: f64,
    bound: f64,
    higher_is_better: bool,
    pass: bool,
}

/// A one-line progress display on stderr, only when stderr is a terminal.
struct Progress {
    enabled: bool,
    total: usize,
    done: usize,
    started: Instant,
    per_step: Duration,
}

impl Progress {
    fn new(total: usize, per_step: Duration) -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            total,
            done: 0,
            started: Instant::now(),
            per_step,
        }
    }

    /// Show that step `done + 1` (`what`) is starting.
    fn start(&mut self, what: &str) {
        if !self.enabled {
            return;
        }
        let left = self.per_step * (self.total - self.done) as u32;
        let mut e = std::io::stderr().lock();
        // \r and "erase line": the line is rewritten in place.
        let _ = write!(
            e,
            "\r\x1b[2K[{:>3}/{}] {:>4.0} s, ~{:.0} s left  {what}",
            self.done + 1,
            self.total,
            self.started.elapsed().as_secs_f64(),
            left.as_secs_f64()
        );
        let _ = e.flush();
    }

    fn finish_step(&mut self) {
        self.done += 1;
    }

    /// Erase the line before something else is printed.
    fn clear(&self) {
        if self.enabled {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K");
            let _ = e.flush();
        }
    }
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn timestamp() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The output directory: as asked, else a new `bench-results/<timestamp>` (suffixed when a run
/// in the same second already made one).
fn out_dir(asked: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = asked {
        std::fs::create_dir_all(d).context(&format!("creating {}", d.display()))?;
        return Ok(d.to_path_buf());
    }
    let base = Path::new("bench-results").join(timestamp());
    let mut dir = base.clone();
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = PathBuf::from(format!("{}-{n}", base.display()));
    }
    std::fs::create_dir_all(&dir).context(&format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// 1234567.8 as "1,234,568".
fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "1 thread", "64 threads".
fn plural(threads: usize) -> String {
    if threads == 1 {
        "1 thread".into()
    } else {
        format!("{threads} threads")
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// A latency in µs, short.
fn us(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 10_000.0 => thousands(v),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

const HEADER: &str = "operation             thr  module              ops/s   per thread    p50 µs    p99 µs  p99.9 µs   jain  cpus  ΔRSS MiB  /raw  first/vs  checks";

/// A table row.
fn row(r: &Record, first_of_group: bool, rss0_kib: Option<u64>) -> String {
    let op = if first_of_group {
        r.operation.as_str()
    } else {
        ""
    };
    if r.status == "n/a" {
        return format!(
            "{op:<20} {:>4}  {:<14} n/a: {}",
            r.threads, r.module, r.note
        );
    }
    let rss = match (r.peak_rss_kib, rss0_kib) {
        (Some(p), Some(b)) => format!("{:.1}", (p as f64 - b as f64) / 1024.0),
        _ => "-".into(),
    };
    let checks = if r.failed() {
        format!("FAILED ({} err, {} bad)", r.errors, r.failed_checks)
    } else {
        format!("{} ok", r.checked)
    };
    format!(
        "{op:<20} {:>4}  {:<14} {:>10} {:>12} {:>9} {:>9} {:>9} {:>6} {:>5} {:>9} {:>5} {:>9}  {checks}",
        r.threads,
        r.module,
        thousands(r.ops_per_s),
        thousands(r.ops_per_s_per_thread),
        us(r.p50_us),
        us(r.p99_us),
        us(r.p999_us),
        opt(r.jain, 3),
        opt(r.cpu_cores, 2),
        rss,
        opt(r.ratio_to_raw, 2),
        r.ratio_to_vs.map_or_else(
            || "-".into(),
            |v| if v >= 100.0 {
                format!("{}x", thousands(v))
            } else {
                format!("{v:.2}x")
            }
        ),
    )
}

/// Run the sweep; returns the number of failed steps.
pub fn run(o: &Options) -> Result<u64> {
    // Before any module is loaded: the baseline the RSS target is read against.
    let rss0 = stats::rss_kib();
    let module = setup::module_path(o.module.as_deref())?;
    let vs = match &o.vs {
        None => None,
        Some(p) => {
            if !p.is_file() {
                return Err(Error(format!(
                    "--vs: the PKCS #11 module {} does not exist",
                    p.display()
                )));
            }
            let same = std::fs::canonicalize(p).ok() == std::fs::canonicalize(&module).ok();
            if same {
                return Err(Error(format!(
                    "--vs names the module being measured ({}); a module cannot be loaded twice",
                    p.display()
                )));
            }
            Some(p.clone())
        }
    };
    // Before any module is loaded and before any thread exists: see `DataDir::prepare`.
    let data = DataDir::prepare(o.data.as_deref(), "")?;
    if o.softhsm_members > 0 {
        data.softhsm_members(o.softhsm_members)?;
        println!(
            "members  {} SoftHSMv2 token(s) through {}",
            o.softhsm_members,
            setup::SOFTHSM_MODULE
        );
    }
    let out = out_dir(o.out.as_deref())?;
    let started_utc = timestamp();
    let kept = if o.data.is_some() {
        "kept"
    } else {
        "temporary, removed at exit"
    };
    println!("data     {} ({kept})", data.path.display());
    println!(
        "RSS before C_Initialize: {}",
        rss0.map_or("unknown".into(), |k| format!(
            "{:.1} MiB",
            k as f64 / 1024.0
        ))
    );
    println!();

    let mut targets = Vec::new();
    for path in std::iter::once(&module).chain(vs.as_ref()) {
        let t = Target::open(path)?;
        if o.token_objects > 0 {
            t.fill(o.token_objects)?;
        }
        t.self_test()?;
        println!();
        targets.push(t);
    }
    for t in &targets {
        let notes: Vec<String> = o
            .ops
            .iter()
            .map(|op| match t.keys.mechanism(*op) {
                Ok(m) => format!("{}: {m}", op.slug()),
                Err(why) => format!("{}: n/a ({why})", op.slug()),
            })
            .collect();
        println!("{} ({}):", t.name, t.library);
        println!("  {}", notes.join("; "));
    }

    let mut records: Vec<Record> = Vec::new();
    if !o.step.is_zero() {
        records = sweep(o, &targets, rss0)?;
    }

    let failures = records.iter().filter(|r| r.failed()).count() as u64;
    let summary = targets_summary(&records, &targets, rss0, o.token_objects);
    if !summary.is_empty() {
        println!();
        println!("issue 5 targets read off this run:");
        for t in &summary {
            println!(
                "  {:<72} {:>9} ({} {}) {}",
                t.what,
                if t.measured.abs() < 0.1 {
                    format!("{:.4}", t.measured)
                } else {
                    format!("{:.2}", t.measured)
                },
                if t.higher_is_better { ">=" } else { "<=" },
                t.bound,
                if t.pass { "pass" } else { "MISS" }
            );
        }
    }

    let report = RunReport {
        tool: "hsmpool-bench",
        started_utc,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        seconds_per_step: o.step.as_secs_f64(),
        threads: &o.threads,
        ops: o.ops.iter().map(|op| op.slug()).collect(),
        token_objects: o.token_objects,
        modules: targets
            .iter()
            .map(|t| ModuleInfo {
                name: t.name.clone(),
                path: t.path.display().to_string(),
                library: t.library.clone(),
                token: match t.origin {
                    TokenOrigin::Found => "found",
                    TokenOrigin::Initialised => "initialised",
                },
                mechanisms: o
                    .ops
                    .iter()
                    .map(|op| {
                        (
                            op.slug().to_string(),
                            t.keys
                                .mechanism(*op)
                                .map_or_else(|why| format!("n/a: {why}"), str::to_string),
                        )
                    })
                    .collect(),
            })
            .collect(),
        rss_before_initialize_kib: rss0,
        peak_rss_per_step: stats::reset_peak_rss(),
        fairness: "Jain's index over the threads' operation counts: (sum x)^2 / (n * sum x^2); 1 = equal shares",
        cpu: "process user+system CPU time during the window (/proc/self/stat), over the window's wall-clock time",
        steps: &records,
        targets: summary,
        failures,
    };
    report::write_csv(&out.join("results.csv"), &records)?;
    report::write_json(&out.join("results.json"), &report)?;
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    let chart = report::throughput_chart(
        &format!(
            "Throughput by threads: {} and the raw limit, {} s per step",
            names.join(" vs "),
            o.step.as_secs_f64()
        ),
        &o.ops,
        &records,
    );
    let (svg, png) = report::plot_lines(&chart, &out.join("throughput"))?;
    println!();
    println!("results  {}", out.display());
    println!("         {}", out.join("results.csv").display());
    println!("         {}", out.join("results.json").display());
    println!("plot     {}", svg.display());
    println!("         {}", png.display());

    for t in targets {
        t.close()?;
    }
    drop(data);
    Ok(failures)
}

/// Measure every op × thread count for each module and the raw limit, printing the table.
fn sweep(o: &Options, targets: &[Target], rss0: Option<u64>) -> Result<Vec<Record>> {
    let raw = RawKeys::generate()?;
    let raw_steps = o.ops.iter().filter(|op| op.has_raw()).count() * o.threads.len();
    let total = o.ops.len() * o.threads.len() * targets.len() + raw_steps;
    let mut progress = Progress::new(total, o.step);
    println!();
    println!(
        "throughput: {} s per step for each module, then as long for the raw limit (aws-lc-rs in \
         this process), interleaved; one session per thread; samples checked after each window",
        o.step.as_secs_f64()
    );
    println!(
        "ΔRSS = the step's peak RSS minus the RSS before C_Initialize; first/vs = {} over {}",
        targets[0].name,
        targets
            .get(1)
            .map_or("the --vs module", |t| t.name.as_str())
    );
    println!();
    println!("{HEADER}");
    let mut records = Vec::new();
    for &op in &o.ops {
        for &threads in &o.threads {
            let mut group: Vec<Record> = Vec::new();
            for t in targets {
                progress.start(&format!("{} · {} · {}", op.name(), plural(threads), t.name));
                let r = match t.keys.mechanism(op) {
                    Err(why) => Record::not_available(&t.name, op, threads, &why),
                    Ok(mech) => {
                        let step =
                            sweep::run_module(&t.pkcs11, t.slot, &t.keys, op, threads, o.step);
                        Record::measured(&t.name, op, mech, threads, &step)
                    }
                };
                progress.finish_step();
                group.push(r);
            }
            let raw_row = if op.has_raw() {
                progress.start(&format!("{} · {} · {RAW}", op.name(), plural(threads)));
                let step = sweep::run_raw(&raw, op, threads, o.step);
                progress.finish_step();
                step.map(|s| Record::measured(RAW, op, "aws-lc-rs", threads, &s))
            } else {
                None
            };
            if let Some(raw_row) = &raw_row {
                for r in &mut group {
                    r.ratio_to_raw = report::ratio(r, raw_row);
                }
            }
            if group.len() > 1 {
                group[0].ratio_to_vs = report::ratio(&group[0], &group[1]);
            }
            group.extend(raw_row);
            progress.clear();
            for (k, r) in group.iter().enumerate() {
                println!("{}", row(r, k == 0, rss0));
                if r.failed() {
                    println!("      first error: {}", r.note);
                }
            }
            records.extend(group);
        }
    }
    progress.clear();
    Ok(records)
}

/// The targets that this run has the figures for, each with pass or miss.
fn targets_summary(
    records: &[Record],
    targets: &[Target],
    rss0: Option<u64>,
    token_objects: usize,
) -> Vec<Goal> {
    let mut out = Vec::new();
    // The targets are our module's; another module measured first has none.
    let Some(first) = targets.first().filter(|t| t.name == "hsmpool") else {
        return out;
    };
    let ours = first.name.as_str();
    let get = |module: &str, op: Op, threads: usize| {
        records
            .iter()
            .find(|r| r.module == module && r.op == op.slug() && r.threads == threads)
            .filter(|r| r.status == "ok")
    };
    let mut push = |what: String, measured: f64, bound: f64, higher: bool| {
        out.push(Goal {
            pass: if higher {
                measured >= bound
            } else {
                measured <= bound
            },
            what,
            measured,
            bound,
            higher_is_better: higher,
        })
    };
    for (op, bound) in [
        (Op::RsaSign, 0.90),
        (Op::EcdsaSign, 0.85),
        (Op::AesGcmEncrypt, 0.60),
        (Op::HmacSign, 0.50),
    ] {
        for t in [1, 2] {
            if let Some(v) = get(ours, op, t).and_then(|r| r.ratio_to_raw) {
                push(
                    format!("{ours} {} / raw at {t} thread(s)", op.name()),
                    v,
                    bound,
                    true,
                );
            }
        }
        if let (Some(two), Some(many)) = (get(ours, op, 2), get(ours, op, 64)) {
            if two.ops_per_s > 0.0 {
                push(
                    format!("{ours} {} at 64 threads / at 2 threads", op.name()),
                    many.ops_per_s / two.ops_per_s,
                    0.9,
                    true,
                );
            }
        }
    }
    if let Some(vs) = targets.get(1).map(|t| t.name.as_str()) {
        let threads: Vec<usize> = {
            let mut t: Vec<usize> = records.iter().map(|r| r.threads).collect();
            t.sort_unstable();
            t.dedup();
            t
        };
        for (op, bound) in [
            (Op::RsaSign, 2.0),
            (Op::EcdsaSign, 2.0),
            (Op::AesGcmEncrypt, 8.0),
            (Op::HmacSign, 8.0),
        ] {
            let worst = threads
                .iter()
                .filter_map(|&t| get(ours, op, t).and_then(|r| r.ratio_to_vs))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
            if let Some(v) = worst {
                push(
                    format!("{ours} / {vs} {} (lowest over thread counts)", op.name()),
                    v,
                    bound,
                    true,
                );
            }
        }
        for (t, bound) in [(1, 1.0), (64, 1.5)] {
            if let Some(v) = get(ours, Op::SessionInfo, t).and_then(|r| r.ratio_to_vs) {
                push(
                    format!("{ours} / {vs} C_GetSessionInfo at {t} thread(s)"),
                    v,
                    bound,
                    true,
                );
            }
        }
        let worst_find = threads
            .iter()
            .filter_map(|&t| get(ours, Op::FindByLabel, t).and_then(|r| r.ratio_to_vs))
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
        if let Some(v) = worst_find {
            push(
                format!("{ours} / {vs} find by label, {token_objects} token objects (lowest)"),
                v,
                100.0,
                true,
            );
        }
        for op in Op::ALL {
            if let (Some(a), Some(b)) = (get(ours, op, 64), get(vs, op, 64)) {
                if let (Some(pa), Some(pb)) = (a.p99_us, b.p99_us) {
                    push(
                        format!("{ours} p99 / {vs} p99 at 64 threads, {}", op.name()),
                        pa / pb,
                        1.0,
                        false,
                    );
                }
            }
        }
    }
    if let Some(base) = rss0 {
        let both = if targets.len() > 1 {
            ", both modules loaded"
        } else {
            ""
        };
        // Token key generation apart: it is the one step that grows the store.
        for (keygen, what) in [(false, "every op but token keygen"), (true, "token keygen")] {
            let peak = records
                .iter()
                .filter(|r| r.threads == 128 && r.module == ours)
                .filter(|r| (r.op == Op::TokenKeyGen.slug()) == keygen)
                .filter_map(|r| r.peak_rss_kib)
                .max();
            if let Some(peak) = peak {
                push(
                    format!(
                        "peak RSS above RSS before C_Initialize, MiB, 128 threads, {what}{both}"
                    ),
                    (peak as f64 - base as f64) / 1024.0,
                    64.0,
                    false,
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_printed_short_and_grouped() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(0.2), "0");
        assert_eq!(us(Some(12.34)), "12.3");
        assert_eq!(us(Some(250.4)), "250");
        assert_eq!(us(Some(25_000.0)), "25,000");
        assert_eq!(us(None), "-");
    }

    #[test]
    fn rows_show_na_with_the_reason_and_failures_loudly() {
        let na = Record::not_available("softhsm2", Op::EcdsaSign, 4, "no CKM_ECDSA");
        let line = row(&na, true, None);
        assert!(line.starts_with("ECDSA P-256 sign"), "{line}");
        assert!(line.contains("n/a: no CKM_ECDSA"), "{line}");
        let bad = Record {
            status: "failed".into(),
            errors: 2,
            threads: 1,
            module: "m".into(),
            ..Record::default()
        };
        assert!(row(&bad, false, Some(1)).contains("FAILED (2 err, 0 bad)"));
    }

    #[test]
    fn the_default_output_directory_is_new_each_time() {
        let t = timestamp();
        assert_eq!(t.len(), 15, "{t}");
        assert_eq!(&t[8..9], "-");
        let dir = tempfile::tempdir().unwrap();
        let asked = dir.path().join("a/b");
        assert_eq!(out_dir(Some(&asked)).unwrap(), asked);
        assert!(asked.is_dir());
    }
}
