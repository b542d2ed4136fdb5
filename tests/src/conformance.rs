//! The conformance suite (tests/tests/conformance.rs) run again over vendor members
//! (`HSMPOOL_TEST_MEMBERS`, see [`crate::raw::Fixture`]) and judged against a list of
//! differences: every test passes except those listed, each with what the members do otherwise,
//! and each of those must fail (a listed test that passes fails the run: the list stays exact).

use std::path::PathBuf;
use std::process::Command;

/// The conformance test binary cargo built beside the running test (the newest, if several).
pub fn conformance_binary() -> PathBuf {
    let me = std::env::current_exe().expect("the test knows its path");
    let deps = me.parent().expect("the test binary is in a directory");
    std::fs::read_dir(deps)
        .expect("the deps directory is readable")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with("conformance-")
                && !name.contains('.')
                && p.metadata().map(|m| m.is_file()).unwrap_or(false)
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("the conformance test binary is built (cargo build --workspace --all-targets)")
}

/// Run the conformance binary with `HSMPOOL_TEST_MEMBERS=members` and judge it against
/// `differences` (test name, why); `what` names the members in the printed tally.
pub fn judge(members: &str, what: &str, differences: &[(&str, &str)]) {
    let bin = conformance_binary();
    let out = Command::new(&bin)
        .args(["--test-threads", "1"])
        .env("HSMPOOL_TEST_MEMBERS", members)
        .output()
        .expect("the conformance binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some(name) = rest.strip_suffix(" ... ok") {
                passed.push(name.to_owned());
            } else if let Some(name) = rest.strip_suffix(" ... FAILED") {
                failed.push(name.to_owned());
            }
        }
    }
    let listed = |n: &str| differences.iter().any(|(d, _)| *d == n);
    let unexpected: Vec<&String> = failed.iter().filter(|n| !listed(n)).collect();
    let now_passing: Vec<&&str> = differences
        .iter()
        .map(|(d, _)| d)
        .filter(|d| passed.iter().any(|p| p == *d))
        .collect();
    let missing: Vec<&&str> = differences
        .iter()
        .map(|(d, _)| d)
        .filter(|d| !failed.iter().any(|f| f == *d) && !passed.iter().any(|p| p == *d))
        .collect();
    println!(
        "conformance over {what}: {} passed, {} failed, of which {} listed",
        passed.len(),
        failed.len(),
        failed.len() - unexpected.len()
    );
    for (d, why) in differences {
        println!("  differs: {d}: {why}");
    }
    assert!(
        passed.len() + failed.len() > 40,
        "the conformance binary ran too few tests:\n{text}"
    );
    assert!(
        unexpected.is_empty() && now_passing.is_empty() && missing.is_empty(),
        "failed and not listed: {unexpected:?}; listed but passing now: {now_passing:?}; \
         listed but not run: {missing:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
