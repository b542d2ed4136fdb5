//! What a run writes: one [`Record`] per measured (or unavailable) step, as CSV and JSON, and
//! the throughput plot. Also used by other subcommands (the lab) for their own JSON and plots.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plot::{self, Chart, Panel, Series};
use crate::sweep::{Op, Step};
use crate::{Context, Error, Result};

/// The module name the raw aws-lc-rs limit is recorded under.
pub const RAW: &str = "raw aws-lc-rs";

/// One row of the results: a module (or the raw limit), an operation, a thread count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Module short name (`hsmpool`, `softhsm2`) or [`RAW`].
    pub module: String,
    /// Operation slug (`rsa-sign`, ...).
    pub op: String,
    /// Operation as the table names it.
    pub operation: String,
    /// Mechanism or function used, or why the row is not available.
    pub mechanism: String,
    /// Threads, one session each.
    pub threads: usize,
    /// `ok`, `failed` (errors or failed checks) or `n/a` (the module lacks the mechanism).
    pub status: String,
    /// The first error, or why the row is `n/a`.
    pub note: String,
    /// Length of the window, seconds.
    pub seconds: f64,
    /// Successful operations in the window.
    pub ops: u64,
    /// Operations per second, all threads.
    pub ops_per_s: f64,
    /// Operations per second per thread (mean).
    pub ops_per_s_per_thread: f64,
    /// Median latency, µs.
    pub p50_us: Option<f64>,
    /// 99th percentile latency, µs.
    pub p99_us: Option<f64>,
    /// 99.9th percentile latency, µs.
    pub p999_us: Option<f64>,
    /// Jain's fairness index of operations per thread (1 = equal shares, 1/threads = one thread
    /// did everything).
    pub jain: Option<f64>,
    /// Fewest operations any thread completed.
    pub min_thread_ops: Option<u64>,
    /// Most operations any thread completed.
    pub max_thread_ops: Option<u64>,
    /// Process CPU time (user + system, all threads) during the window, seconds.
    pub cpu_s: Option<f64>,
    /// `cpu_s` per second of wall-clock time (cores kept busy).
    pub cpu_cores: Option<f64>,
    /// Peak RSS of the process during the step, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Samples that passed their check.
    pub checked: u64,
    /// Samples that failed their check.
    pub failed_checks: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// ops/s of this module over the raw limit's at the same thread count.
    pub ratio_to_raw: Option<f64>,
    /// ops/s of this module over the `--vs` module's (on the first module's rows only).
    pub ratio_to_vs: Option<f64>,
}

impl Record {
    /// The record of a measured step.
    pub fn measured(module: &str, op: Op, mechanism: &str, threads: usize, step: &Step) -> Record {
        Record {
            module: module.into(),
            op: op.slug().into(),
            operation: op.name().into(),
            mechanism: mechanism.into(),
            threads,
            status: if step.failures() == 0 { "ok" } else { "failed" }.into(),
            note: step.first_error.clone().unwrap_or_default(),
            seconds: step.elapsed.as_secs_f64(),
            ops: step.ops,
            ops_per_s: step.ops_per_s(),
            ops_per_s_per_thread: step.ops_per_s_per_thread(),
            p50_us: step.percentile_us(50.0),
            p99_us: step.percentile_us(99.0),
            p999_us: step.percentile_us(99.9),
            jain: step.jain(),
            min_thread_ops: step.per_thread_ops.iter().copied().min(),
            max_thread_ops: step.per_thread_ops.iter().copied().max(),
            cpu_s: step.cpu.map(|c| c.as_secs_f64()),
            cpu_cores: step.cpu_cores(),
            peak_rss_kib: step.peak_rss_kib,
            checked: step.checked,
            failed_checks: step.failed_checks,
            errors: step.errors,
            ratio_to_raw: None,
            ratio_to_vs: None,
        }
    }

    /// The record of a step the module cannot run.
    pub fn not_available(module: &str, op: Op, threads: usize, why: &str) -> Record {
        Record {
            module: module.into(),
            op: op.slug().into(),
            operation: op.name().into(),
            mechanism: "n/a".into(),
            threads,
            status: "n/a".into(),
            note: why.into(),
            ..Record::default()
        }
    }

    /// Whether this row makes the run fail.
    pub fn failed(&self) -> bool {
        self.status == "failed"
    }
}

/// `a / b` when both steps passed (a failed step does not score) and `b` is not zero.
pub fn ratio(a: &Record, b: &Record) -> Option<f64> {
    (a.status == "ok" && b.status == "ok" && b.ops_per_s > 0.0).then(|| a.ops_per_s / b.ops_per_s)
}

/// The CSV header: [`Record`]'s fields in order.
pub const CSV_HEADER: &str = "module,op,operation,mechanism,threads,status,note,seconds,ops,\
ops_per_s,ops_per_s_per_thread,p50_us,p99_us,p999_us,jain,min_thread_ops,max_thread_ops,cpu_s,\
cpu_cores,peak_rss_kib,checked,failed_checks,errors,ratio_to_raw,ratio_to_vs";

/// A CSV field: quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The records as CSV text, header first.
pub fn csv(records: &[Record]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in records {
        let fields = [
            csv_field(&r.module),
            csv_field(&r.op),
            csv_field(&r.operation),
            csv_field(&r.mechanism),
            r.threads.to_string(),
            csv_field(&r.status),
            csv_field(&r.note),
            format!("{:.4}", r.seconds),
            r.ops.to_string(),
            format!("{:.1}", r.ops_per_s),
            format!("{:.1}", r.ops_per_s_per_thread),
            opt(r.p50_us),
            opt(r.p99_us),
            opt(r.p999_us),
            opt(r.jain.map(|j| format!("{j:.4}"))),
            opt(r.min_thread_ops),
            opt(r.max_thread_ops),
            opt(r.cpu_s.map(|c| format!("{c:.3}"))),
            opt(r.cpu_cores.map(|c| format!("{c:.3}"))),
            opt(r.peak_rss_kib),
            r.checked.to_string(),
            r.failed_checks.to_string(),
            r.errors.to_string(),
            opt(r.ratio_to_raw.map(|v| format!("{v:.4}"))),
            opt(r.ratio_to_vs.map(|v| format!("{v:.4}"))),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// Write the records as CSV to `path`.
pub fn write_csv(path: &Path, records: &[Record]) -> Result<()> {
    std::fs::write(path, csv(records)).context(&format!("writing {}", path.display()))
}

/// Write any serialisable value as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    std::fs::write(path, text + "\n").context(&format!("writing {}", path.display()))
}

/// Write `chart` as `<base>.svg` and `<base>.png`; returns both paths.
pub fn plot_lines(chart: &Chart, base: &Path) -> Result<(PathBuf, PathBuf)> {
    let (svg, png) = (base.with_extension("svg"), base.with_extension("png"));
    plot::plot_lines(chart, &svg, &png)?;
    Ok((svg, png))
}

/// The throughput chart of a sweep: a panel per operation (in the order given), a line per
/// module over thread counts, the raw limit dashed. `n/a` and failed rows are left out.
pub fn throughput_chart(title: &str, ops: &[Op], records: &[Record]) -> Chart {
    let mut modules: Vec<&str> = Vec::new();
    for r in records {
        if !modules.contains(&r.module.as_str()) {
            modules.push(&r.module);
        }
    }
    // The raw limit last, so it is last in every legend.
    modules.sort_by_key(|m| *m == RAW);
    let panels = ops
        .iter()
        .map(|op| Panel {
            title: op.name().to_string(),
            series: modules
                .iter()
                .filter_map(|m| {
                    let points: Vec<(f64, f64)> = records
                        .iter()
                        .filter(|r| r.module == *m && r.op == op.slug() && r.status == "ok")
                        .map(|r| (r.threads as f64, r.ops_per_s))
                        .collect();
                    (!points.is_empty()).then(|| Series {
                        name: m.to_string(),
                        points,
                        dashed: *m == RAW,
                    })
                })
                .collect(),
        })
        .collect();
    Chart {
        title: title.into(),
        x_label: "threads (one session each)".into(),
        y_label: "ops per second".into(),
        log2_x: true,
        log_y: true,
        panels,
    }
}

/// Parse the CSV [`csv`] writes back into records (for tests and tools reading old runs).
pub fn parse_csv(text: &str) -> Result<Vec<Record>> {
    let mut lines = split_csv(text).into_iter();
    match lines.next() {
        Some(h) if h.join(",") == CSV_HEADER => {}
        other => return Err(Error(format!("not a results.csv header: {other:?}"))),
    }
    let num = |s: &str, what: &str| -> Result<f64> {
        s.parse::<f64>()
            .map_err(|_| Error(format!("{what}: {s:?} is not a number")))
    };
    let opt_f = |s: &str, what: &str| -> Result<Option<f64>> {
        if s.is_empty() {
            Ok(None)
        } else {
            num(s, what).map(Some)
        }
    };
    let int = |s: &str, what: &str| -> Result<u64> {
        s.parse::<u64>()
            .map_err(|_| Error(format!("{what}: {s:?} is not a count")))
    };
    let opt_i = |s: &str, what: &str| -> Result<Option<u64>> {
        if s.is_empty() {
            Ok(None)
        } else {
            int(s, what).map(Some)
        }
    };
    lines
        .map(|f| {
            if f.len() != 25 {
                return Err(Error(format!("a row has {} fields, not 25", f.len())));
            }
            Ok(Record {
                module: f[0].clone(),
                op: f[1].clone(),
                operation: f[2].clone(),
                mechanism: f[3].clone(),
                threads: int(&f[4], "threads")? as usize,
                status: f[5].clone(),
                note: f[6].clone(),
                seconds: num(&f[7], "seconds")?,
                ops: int(&f[8], "ops")?,
                ops_per_s: num(&f[9], "ops_per_s")?,
                ops_per_s_per_thread: num(&f[10], "ops_per_s_per_thread")?,
                p50_us: opt_f(&f[11], "p50_us")?,
                p99_us: opt_f(&f[12], "p99_us")?,
                p999_us: opt_f(&f[13], "p999_us")?,
                jain: opt_f(&f[14], "jain")?,
                min_thread_ops: opt_i(&f[15], "min_thread_ops")?,
                max_thread_ops: opt_i(&f[16], "max_thread_ops")?,
                cpu_s: opt_f(&f[17], "cpu_s")?,
                cpu_cores: opt_f(&f[18], "cpu_cores")?,
                peak_rss_kib: opt_i(&f[19], "peak_rss_kib")?,
                checked: int(&f[20], "checked")?,
                failed_checks: int(&f[21], "failed_checks")?,
                errors: int(&f[22], "errors")?,
                ratio_to_raw: opt_f(&f[23], "ratio_to_raw")?,
                ratio_to_vs: opt_f(&f[24], "ratio_to_vs")?,
            })
        })
        .collect()
}

/// RFC 4180 records: fields split on commas outside quotes, `""` inside quotes is a quote.
fn split_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn step() -> Step {
        let mut s = Step {
            ops: 1000,
            elapsed: Duration::from_millis(500),
            per_thread_ops: vec![400, 600],
            cpu: Some(Duration::from_millis(900)),
            peak_rss_kib: Some(20_000),
            checked: 4,
            ..Step::default()
        };
        for v in 1..=1000u64 {
            s.latency.record(v * 100);
        }
        s
    }

    #[test]
    fn a_measured_record_carries_the_step_figures() {
        let r = Record::measured("hsmpool", Op::HmacSign, "CKM_SHA256_HMAC", 2, &step());
        assert_eq!(r.status, "ok");
        assert_eq!(r.ops_per_s, 2000.0);
        assert_eq!(r.ops_per_s_per_thread, 1000.0);
        assert_eq!((r.min_thread_ops, r.max_thread_ops), (Some(400), Some(600)));
        assert_eq!(r.cpu_cores, Some(1.8));
        let p50 = r.p50_us.unwrap();
        assert!((50.0..=50.8).contains(&p50), "{p50}");
        assert!(r.p999_us.unwrap() >= 99.9 && r.p999_us.unwrap() <= 101.6);
        let mut bad = step();
        bad.failed_checks = 1;
        bad.first_error = Some("garbage".into());
        let r = Record::measured("m", Op::HmacSign, "x", 2, &bad);
        assert!(r.failed());
        assert_eq!(r.note, "garbage");
        let na = Record::not_available("softhsm2", Op::EcdsaSign, 4, "no CKM_ECDSA");
        assert_eq!(na.status, "n/a");
        assert!(!na.failed());
        assert_eq!(ratio(&r, &na), None);
        let good = Record::measured("m", Op::HmacSign, "x", 2, &step());
        assert_eq!(ratio(&good, &good), Some(1.0));
        assert_eq!(ratio(&r, &good), None, "a failed step does not score");
    }

    #[test]
    fn csv_round_trips_with_quotes_and_empty_options() {
        let mut a = Record::measured("hsmpool", Op::RsaSign, "CKM_SHA256_RSA_PKCS", 2, &step());
        a.ratio_to_raw = Some(0.95);
        a.note = "a \"quoted\", comma".into();
        let b = Record::not_available("softhsm2", Op::AesGcmEncrypt, 64, "no CKM_AES_GCM");
        let text = csv(&[a.clone(), b.clone()]);
        assert_eq!(text.lines().next(), Some(CSV_HEADER));
        assert_eq!(text.lines().count(), 3, "header and two rows");
        let back = parse_csv(&text).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].note, a.note);
        assert_eq!(back[0].ratio_to_raw, Some(0.95));
        assert_eq!(back[0].p50_us, a.p50_us);
        assert_eq!(back[1], b);
        assert!(parse_csv("x,y\n1,2\n").is_err());
        assert_eq!(CSV_HEADER.split(',').count(), 25);
    }

    #[test]
    fn json_is_written_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        let r = Record::measured("hsmpool", Op::Random, "C_GenerateRandom", 1, &step());
        write_json(&p, &vec![r.clone()]).unwrap();
        let back: Vec<Record> =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back, vec![r]);
    }

    #[test]
    fn the_chart_has_a_panel_per_op_and_the_raw_limit_dashed_and_last() {
        let mut rows = Vec::new();
        for t in [1, 2] {
            rows.push(Record::measured(RAW, Op::RsaSign, "aws-lc-rs", t, &step()));
            rows.push(Record::measured("hsmpool", Op::RsaSign, "m", t, &step()));
            rows.push(Record::not_available("softhsm2", Op::RsaSign, t, "no"));
            rows.push(Record::measured(
                "hsmpool",
                Op::SessionInfo,
                "m",
                t,
                &step(),
            ));
        }
        let c = throughput_chart("t", &[Op::RsaSign, Op::SessionInfo], &rows);
        assert_eq!(c.panels.len(), 2);
        let names: Vec<_> = c.panels[0].series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["hsmpool", RAW], "n/a rows draw nothing; raw last");
        assert!(c.panels[0].series[1].dashed);
        assert_eq!(c.panels[0].series[0].points, [(1.0, 2000.0), (2.0, 2000.0)]);
        assert_eq!(c.panels[1].series.len(), 1);
    }
}
