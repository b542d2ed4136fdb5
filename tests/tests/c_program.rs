//! A C consumer of the module: `tests/c/sign_verify.c` is compiled with gcc (C11, `-Wall -Wextra
//! -Werror`) and run against the built module over a fresh token, plainly, under
//! AddressSanitizer, and under valgrind. See the C file for what it checks (both entry points,
//! token and PIN set-up, RSA and EC sign/verify with the two-call length pattern, bad
//! signatures, short buffers, and re-initialisation in a forked child).
//!
//! The tests fail (they do not skip) when gcc or valgrind is not installed.

#[path = "../interop/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hsmpool_tests::{module_path, require_tool, write_test_config};
use run::Run;

fn source(program: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("c")
        .join(format!("{program}.c"))
}

/// Compile `sign_verify.c` into `dir` with extra flags; panics with gcc's output if it fails
/// (a warning is an error).
fn compile(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    compile_program(dir, "sign_verify", name, extra)
}

/// Compile `tests/c/<program>.c` into `dir/<name>`.
fn compile_program(dir: &Path, program: &str, name: &str, extra: &[&str]) -> PathBuf {
    let gcc = require_tool("gcc");
    let exe = dir.join(name);
    let mut cmd = Command::new(gcc);
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .args(extra)
        .arg("-I/usr/include/p11-kit-1")
        .arg("-o")
        .arg(&exe)
        .arg(source(program))
        .arg("-ldl");
    let r = run::run(cmd, dir, Duration::from_secs(120));
    r.ok();
    assert!(r.stderr.trim().is_empty(), "gcc printed diagnostics{r}");
    exe
}

/// Parse "sign_verify: N passed, M failed".
#[track_caller]
fn summary(r: &Run) -> (u32, u32) {
    let line = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("sign_verify: "))
        .unwrap_or_else(|| panic!("no summary line{r}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("digits"))
        .collect();
    assert_eq!(
        nums.len(),
        2,
        "summary is `N passed, M failed`: {line:?}{r}"
    );
    (nums[0], nums[1])
}

/// Run `prefix... exe <module> <mode>` over a fresh token in `dir` and check the result.
fn run_program(
    dir: &Path,
    prefix: &[&str],
    exe: &Path,
    mode: &str,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Run {
    let conf = write_test_config(dir);
    let mut cmd = match prefix.split_first() {
        Some((tool, rest)) => {
            let mut c = Command::new(tool);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.arg(module_path()).arg(mode);
    cmd.env("HSMPOOL_CONF", &conf).env_remove("HSMPOOL_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let r = run::run(cmd, dir, timeout);
    r.ok()
        .stdout_has("0 failed")
        .stdout_has("PASS: C_GetInterface(NULL, NULL)")
        .stdout_has("PASS: C_GetFunctionList")
        .stdout_has("PASS: C_InitToken")
        .stdout_has("PASS: C_InitPIN")
        .stdout_has("PASS: C_GenerateKeyPair(EC P-256)")
        .stdout_has("PASS: CKM_ECDSA_SHA256: C_Verify of a signature with a flipped bit -> 0xc0")
        .stdout_has("[child] PASS: C_GetSessionInfo in the child before C_Initialize -> 0x190")
        .stdout_has("[child] PASS: C_Initialize in the child -> 0x0")
        .stdout_has("PASS: the child exited with status 0")
        .stdout_has("PASS: parent after fork: C_Verify(CKM_ECDSA_SHA256)")
        .lacks("FAIL:");
    if mode == "full" {
        r.stdout_has("PASS: C_GenerateKeyPair(RSA-2048)")
            .stdout_has(
                "PASS: CKM_SHA256_RSA_PKCS: C_Verify of a signature with a flipped bit -> 0xc0",
            )
            .stdout_has(
                "PASS: CKM_SHA256_RSA_PKCS: C_Sign with an 8-byte buffer -> 0x150, length 256",
            )
            .stdout_has("PASS: parent after fork: C_Verify(CKM_SHA256_RSA_PKCS)");
    }
    let (passed, failed) = summary(&r);
    assert_eq!(failed, 0, "{r}");
    // The program runs a fixed list of checks; far fewer passes means it stopped early.
    let at_least = if mode == "full" { 120 } else { 75 };
    assert!(
        passed >= at_least,
        "only {passed} checks passed (expected at least {at_least}){r}"
    );
    let child = r
        .stdout
        .lines()
        .find(|l| l.starts_with("[child] ") && l.ends_with(" failed") && !l.contains(':'))
        .unwrap_or_else(|| panic!("no child summary{r}"));
    assert!(child.ends_with(" 0 failed"), "the child failed: {child}{r}");
    r
}

#[test]
fn c_program_sign_verify() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let exe = compile(dir.path(), "sign_verify", &[]);
    run_program(dir.path(), &[], &exe, "full", &[], Duration::from_secs(300));
}

/// The C program refuses to run (and so to re-initialise a token) without HSMPOOL_CONF.
#[test]
fn c_program_needs_a_config() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let exe = compile(dir.path(), "sign_verify", &[]);
    let mut cmd = Command::new(&exe);
    cmd.arg(module_path()).env_remove("HSMPOOL_CONF");
    let r = run::run(cmd, dir.path(), Duration::from_secs(60));
    r.failed().stderr_has("HSMPOOL_CONF").lacks("PASS:");
}

#[test]
fn c_program_sign_verify_asan() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let exe = compile(
        dir.path(),
        "sign_verify_asan",
        &["-fsanitize=address", "-fno-omit-frame-pointer"],
    );
    // Leak detection stays on: it is quiet for this module (LeakSanitizer reports only memory
    // that is unreachable at exit, not the module's live globals).
    let asan = "detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=23";
    let r = run_program(
        dir.path(),
        &[],
        &exe,
        "full",
        &[("ASAN_OPTIONS", asan)],
        Duration::from_secs(300),
    );
    r.lacks("AddressSanitizer").lacks("LeakSanitizer");
}

#[test]
fn c_program_sign_verify_valgrind() {
    let valgrind = require_tool("valgrind");
    let dir = tempfile::tempdir().expect("a temp dir");
    let exe = compile(dir.path(), "sign_verify", &[]);
    let vg = valgrind.to_str().expect("a UTF-8 path");
    let r = run_program(
        dir.path(),
        &[vg, "--error-exitcode=99", "--leak-check=no"],
        &exe,
        "full",
        &[],
        Duration::from_secs(600),
    );
    // One summary for the parent and one for the forked child, both clean.
    let summaries: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("ERROR SUMMARY:"))
        .collect();
    assert_eq!(
        summaries.len(),
        2,
        "valgrind reports on the parent and the child{r}"
    );
    for s in summaries {
        assert!(
            s.contains("ERROR SUMMARY: 0 errors"),
            "valgrind found errors: {s}{r}"
        );
    }
}

/// `tests/c/init_reserved.c`: C_Initialize with every kind of unreadable `pReserved` (low
/// addresses, `(void*)-1`, an unmapped and a PROT_NONE page, strings running into a PROT_NONE page
/// without a NUL) returns CKR_ARGUMENTS_BAD instead of crashing; our configuration string still
/// works across and up to a page boundary. Run plainly and under valgrind with 0 errors.
fn run_init_reserved(prefix: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("a temp dir");
    let exe = compile_program(dir.path(), "init_reserved", "init_reserved", &[]);
    let conf = write_test_config(dir.path());
    let mut cmd = match prefix.split_first() {
        Some((tool, rest)) => {
            let mut c = Command::new(tool);
            c.args(rest).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.arg(module_path())
        .env("HSMPOOL_CONF", &conf)
        .env_remove("HSMPOOL_LOG");
    let r = run::run(cmd, dir.path(), Duration::from_secs(300));
    r.ok()
        .stdout_has("PASS: pReserved = (void*)1 -> 0x7")
        .stdout_has("PASS: pReserved = (void*)-1 -> 0x7")
        .stdout_has("PASS: pReserved = a PROT_NONE page -> 0x7")
        .stdout_has("PASS: \"hsmpool:conf=...\" ending at a PROT_NONE page, no NUL -> 0x7")
        .stdout_has("PASS: our configuration string ending at a PROT_NONE page -> 0x0")
        .stdout_has("init_reserved: ")
        .stdout_has(" 0 failed")
        .lacks("FAIL:");
    r
}

#[test]
fn c_program_init_reserved() {
    run_init_reserved(&[]);
}

#[test]
fn c_program_init_reserved_valgrind() {
    let valgrind = require_tool("valgrind");
    let vg = valgrind.to_str().expect("a UTF-8 path");
    let r = run_init_reserved(&[vg, "--error-exitcode=99", "--leak-check=no"]);
    assert!(
        r.stderr.contains("ERROR SUMMARY: 0 errors"),
        "valgrind found errors{r}"
    );
}
