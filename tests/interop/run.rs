//! Running external programs from the interop tests: with a timeout (a deadlocked module must
//! fail the test, not hang it), output captured to files, and a report of exactly what ran for
//! failure messages.
//!
//! Used by every interop suite through `common.rs`, and by `tests/tests/c_program.rs` through
//! `#[path = "../interop/run.rs"] mod run;`.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The outcome of one run.
pub struct Run {
    /// The command line, shell-quoted, with the environment the test set.
    pub cmd: String,
    /// How it ended.
    pub status: ExitStatus,
    /// What it printed.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Run `cmd` in `dir` (stdout and stderr go to files there), killing it after `timeout`.
/// Panics (with the command line) if it cannot be started or times out.
pub fn run(mut cmd: Command, dir: &Path, timeout: Duration) -> Run {
    let mut line = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            line.push_str(&format!("{}={} ", k.to_string_lossy(), quote(v)));
        }
    }
    line.push_str(&quote(cmd.get_program()));
    for a in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(a));
    }
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_path = dir.join(format!("run{n}.stdout"));
    let err_path = dir.join(format!("run{n}.stderr"));
    let out = File::create(&out_path).expect("the temp dir is writable");
    let err = File::create(&err_path).expect("the temp dir is writable");
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
                let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
                panic!(
                    "timed out after {timeout:?} (killed): {line}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for `{line}`: {e}"),
        }
    };
    let stdout =
        String::from_utf8_lossy(&std::fs::read(&out_path).unwrap_or_default()).into_owned();
    let stderr =
        String::from_utf8_lossy(&std::fs::read(&err_path).unwrap_or_default()).into_owned();
    Run {
        cmd: line,
        status,
        stdout,
        stderr,
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\n--- command ---\n{}\n--- status ---\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
            self.cmd, self.status, self.stdout, self.stderr
        )
    }
}

impl Run {
    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Assert exit status 0.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert!(self.status.success(), "expected success{self}");
        self
    }

    /// Assert a non-zero exit status (not a crash by a signal).
    #[track_caller]
    pub fn failed(&self) -> &Self {
        assert!(
            self.status.code().is_some_and(|c| c != 0),
            "expected a non-zero exit status{self}"
        );
        self
    }

    /// Assert stdout contains `s`.
    #[track_caller]
    pub fn stdout_has(&self, s: &str) -> &Self {
        assert!(self.stdout.contains(s), "stdout should contain {s:?}{self}");
        self
    }

    /// Assert stderr contains `s`.
    #[track_caller]
    pub fn stderr_has(&self, s: &str) -> &Self {
        assert!(self.stderr.contains(s), "stderr should contain {s:?}{self}");
        self
    }

    /// Assert stdout or stderr contains `s`.
    #[track_caller]
    pub fn has(&self, s: &str) -> &Self {
        assert!(
            self.all().contains(s),
            "the output should contain {s:?}{self}"
        );
        self
    }

    /// Assert neither stdout nor stderr contains `s`.
    #[track_caller]
    pub fn lacks(&self, s: &str) -> &Self {
        assert!(
            !self.all().contains(s),
            "the output should not contain {s:?}{self}"
        );
        self
    }
}
