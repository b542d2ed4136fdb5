//! The `hsmpool-bench` binary run briefly, as a user runs it: against our module alone, and
//! with SoftHSMv2 beside it (`--vs`). Each run must exit 0 and leave a results.csv that parses,
//! a results.json whose steps match it, and an SVG and a PNG plot.
//!
//! Needs the built module next to the binary (`cargo build --workspace`, as scripts/test-all.sh
//! does first) and, for the second test, SoftHSMv2 (`softhsm2`, which .ci/run installs): a
//! missing SoftHSMv2 fails the test, it does not skip it.

use std::path::{Path, PathBuf};
use std::process::Command;

use hsmpool_bench::report::{self, Record, RAW};

/// SoftHSMv2 as Debian installs it.
const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hsmpool-bench"))
}

/// The module the binary loads by default: next to it.
fn our_module() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_hsmpool-bench"));
    let m = exe.with_file_name("libhsmpool_pkcs11.so");
    assert!(
        m.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        m.display()
    );
    m
}

/// Run the harness with `args`, writing into `out`; returns stdout, after checking it succeeded.
fn run(out: &Path, args: &[&str]) -> String {
    our_module();
    let o = bench()
        .args(args)
        .arg("--out")
        .arg(out)
        .env_remove("HSMPOOL_MODULE")
        .output()
        .expect("hsmpool-bench runs");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "hsmpool-bench {args:?} failed\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.stderr.iter().all(|&b| b != b'\r'),
        "no progress line when stderr is not a terminal"
    );
    stdout
}

/// The CSV and JSON in `out`, parsed and checked against each other; and the plots.
fn results(out: &Path) -> (Vec<Record>, serde_json::Value) {
    let csv = std::fs::read_to_string(out.join("results.csv")).expect("results.csv");
    let rows = report::parse_csv(&csv).expect("results.csv parses");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("results.json")).expect("results.json"),
    )
    .expect("results.json parses");
    let steps: Vec<Record> =
        serde_json::from_value(json["steps"].clone()).expect("the JSON steps are records");
    assert_eq!(steps.len(), rows.len(), "JSON and CSV have the same steps");
    for (a, b) in steps.iter().zip(&rows) {
        assert_eq!(
            (&a.module, &a.op, a.threads, &a.status, a.ops),
            (&b.module, &b.op, b.threads, &b.status, b.ops)
        );
    }
    let svg = std::fs::read_to_string(out.join("throughput.svg")).expect("throughput.svg");
    assert!(svg.contains("<svg") && svg.contains("Throughput by threads"));
    assert!(svg.contains("ops per second") && svg.contains("threads"));
    let png = std::fs::read(out.join("throughput.png")).expect("throughput.png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
    assert!(png.len() > 10_000, "a PNG with something drawn");
    (rows, json)
}

fn find<'a>(rows: &'a [Record], module: &str, op: &str, threads: usize) -> &'a Record {
    rows.iter()
        .find(|r| r.module == module && r.op == op && r.threads == threads)
        .unwrap_or_else(|| panic!("no row {module} {op} {threads}"))
}

#[test]
fn a_short_sweep_of_our_module_writes_checked_results_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stdout = run(
        &out,
        &[
            "--seconds-per-step",
            "0.05",
            "--threads",
            "1,2",
            "--ops",
            "rsa-sign,ecdsa-verify,aes-gcm,aes-cbc-pad,hmac,sha256,find,token-keygen,random,session-info",
        ],
    );
    assert!(stdout.contains("plot     "), "{stdout}");
    assert!(stdout.contains(&out.join("throughput.png").display().to_string()));
    let (rows, json) = results(&out);
    // 10 ops x 2 thread counts for the module, plus the raw limit for the 7 ops that have one.
    assert_eq!(rows.len(), 10 * 2 + 7 * 2, "{rows:#?}");
    for r in &rows {
        assert_eq!(r.status, "ok", "{r:?}");
        assert!(r.ops > 0 && r.checked > 0, "{r:?}");
        assert!(r.p50_us.is_some() && r.p99_us >= r.p50_us && r.p999_us >= r.p99_us);
        assert!(r.jain.is_some_and(|j| j > 0.0 && j <= 1.0 + 1e-9), "{r:?}");
        assert!(r.peak_rss_kib.is_some() && r.cpu_s.is_some(), "{r:?}");
    }
    let gcm = find(&rows, "hsmpool", "aes-gcm", 2);
    assert_eq!(gcm.mechanism, "CKM_AES_GCM");
    assert!(gcm.ratio_to_raw.is_some_and(|v| v > 0.0));
    assert_eq!(find(&rows, RAW, "hmac", 1).module, RAW);
    assert_eq!(json["modules"][0]["name"], "hsmpool");
    assert_eq!(json["modules"][0]["token"], "initialised");
    assert!(json["rss_before_initialize_kib"].as_u64().is_some());
    assert_eq!(json["failures"], 0);
}

#[test]
fn a_second_run_with_the_same_data_finds_the_token_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let args = [
        "--data",
        data,
        "--seconds-per-step",
        "0.02",
        "--threads",
        "1",
        "--ops",
        "rsa-sign,hmac,find",
    ];
    let first = run(&dir.path().join("one"), &args);
    assert!(first.contains("initialised by this run"), "{first}");
    assert!(first.contains("generated RSA-2048 key pair"), "{first}");
    let second = run(&dir.path().join("two"), &args);
    assert!(second.contains("token found"), "{second}");
    assert!(second.contains("found RSA-2048 key pair"), "{second}");
    assert!(second.contains("found HMAC key"), "{second}");
    assert!(!second.contains("generated"), "{second}");
    let (rows, _) = results(&dir.path().join("two"));
    // find-by-label still sees exactly one AES key: nothing was imported twice.
    assert_eq!(find(&rows, "hsmpool", "find", 1).status, "ok");
}

#[test]
fn softhsm_runs_beside_our_module_with_ratios() {
    assert!(
        Path::new(SOFTHSM).is_file(),
        "{SOFTHSM} is missing: install Debian's softhsm2 (.ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stdout = run(
        &out,
        &[
            "--vs",
            SOFTHSM,
            "--seconds-per-step",
            "0.05",
            "--threads",
            "1,2",
            "--ops",
            "rsa-sign,ecdsa-sign,aes-gcm,hmac,find,session-keygen,session-info",
            "--token-objects",
            "20",
        ],
    );
    assert!(stdout.contains("softhsm2"), "{stdout}");
    let (rows, json) = results(&out);
    assert_eq!(json["modules"][1]["name"], "softhsm2");
    assert_eq!(json["modules"][1]["token"], "initialised");
    for op in ["rsa-sign", "ecdsa-sign", "hmac", "find", "session-info"] {
        for t in [1, 2] {
            let soft = find(&rows, "softhsm2", op, t);
            assert_eq!(soft.status, "ok", "{soft:?}");
            assert!(soft.checked > 0);
            let ours = find(&rows, "hsmpool", op, t);
            let v = ours
                .ratio_to_vs
                .expect("our rows carry the ratio to SoftHSM");
            // (the CSV keeps four decimals of the ratio and one of the rates)
            assert!(
                (v - ours.ops_per_s / soft.ops_per_s).abs() <= 1e-3 * v,
                "{v}"
            );
        }
    }
    // Whatever SoftHSM lacks is n/a, not an error; what it has is checked like ours.
    let gcm = find(&rows, "softhsm2", "aes-gcm", 1);
    assert!(gcm.status == "ok" || gcm.status == "n/a", "{gcm:?}");
    let svg = std::fs::read_to_string(out.join("throughput.svg")).unwrap();
    assert!(svg.contains("softhsm2") && svg.contains(RAW));
}
