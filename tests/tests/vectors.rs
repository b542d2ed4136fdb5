//! Every file of the shared test-vector folders (Wycheproof JSON and NIST CAVP / RSA Labs / RFC
//! text) through the module's C ABI: keys imported with `C_CreateObject` as session objects,
//! each case run with the mechanism the file is about, and the module's return value checked.
//!
//! The folders are `$HSMPOOL_VECTORS/{wycheproof,nist-cavp}` or `../shared/testvectors/...`
//! beside the repository; a missing folder fails the test. Every file must be run or listed in
//! `tests/vectors/excluded.txt` with a reason (see `vectors/report.rs` for the format); a stale
//! entry fails the test as well. The output has one line per file and ends with
//! `vectors: N passed, M failed`.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::path::{Path, PathBuf};

use hsmpool_tests::raw::Fixture;

#[path = "vectors/nist.rs"]
mod nist;
#[path = "vectors/p11.rs"]
mod p11;
#[path = "vectors/report.rs"]
mod report;
#[path = "vectors/wycheproof.rs"]
mod wycheproof;

use p11::{mech_name, P11};
use report::{Exclusions, FileRun};

/// Hex to bytes (whitespace ignored; an odd or non-hex string panics: the files are data we
/// trust to be well-formed).
pub fn unhex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(s.len() % 2 == 0, "odd-length hex string");
    s.chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).expect("ASCII"), 16).expect("hex digit"))
        .collect()
}

pub fn tohex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn vectors_root() -> PathBuf {
    std::env::var_os("HSMPOOL_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testvectors"))
}

const DIRS: [&str; 2] = ["wycheproof", "nist-cavp"];

#[test]
fn every_vector_file_through_the_c_abi() {
    let started = std::time::Instant::now();
    let root = vectors_root();
    let excl_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/excluded.txt");
    let excl_text = std::fs::read_to_string(&excl_path)
        .unwrap_or_else(|e| panic!("{}: {e}", excl_path.display()));
    let excl = match Exclusions::parse(&excl_text) {
        Ok(x) => x,
        Err(errors) => panic!("{}:\n{}", excl_path.display(), errors.join("\n")),
    };

    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for dir in DIRS {
        let d = root.join(dir);
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| {
            panic!(
                "test vectors missing: {}: {e} (set HSMPOOL_VECTORS to the folder holding wycheproof/ and nist-cavp/)",
                d.display()
            )
        });
        let mut names: Vec<String> = entries
            .map(|e| e.expect("readable directory entry"))
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(!names.is_empty(), "{} holds no files", d.display());
        for n in names {
            files.push((format!("{dir}/{n}"), d.join(&n)));
        }
    }

    let mut problems: Vec<String> = Vec::new();
    for r in &excl.rules {
        if !files.iter().any(|(n, _)| *n == r.file) {
            problems.push(format!(
                "excluded.txt:{}: stale entry `{}`: no such file",
                r.line,
                r.selector()
            ));
        }
    }

    let fx = Fixture::new();
    let m = fx.m;
    // Keeps the user logged in (login state belongs to the application) for the whole run.
    let _login = m.fresh_user_session();

    // `HSMPOOL_VECTORS_ONLY=<substring>` runs only the matching files (for diagnosis; the
    // stale-entry check is then skipped).
    let only = std::env::var("HSMPOOL_VECTORS_ONLY").ok();
    let (mut passed, mut failed, mut excluded) = (0usize, 0usize, 0usize);
    for (name, path) in &files {
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let file_start = std::time::Instant::now();
        let p = P11::open(m);
        let mut fr = FileRun::new(name, &excl);
        let base = path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ran = if base.ends_with(".json") {
            let json: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            wycheproof::run(&p, &mut fr, &json).map_err(|()| wycheproof::needs(&json))
        } else {
            let text = String::from_utf8_lossy(&bytes);
            nist::run(&p, &mut fr, &base, &text).map_err(|()| nist::needs(&base))
        };
        if let Err(need) = ran {
            // No runner: the file must be listed, and the list should say why.
            match (fr.file_excluded(), need) {
                (Some(_), Some((Some(mech), what))) if p.mechs.contains(&mech) => {
                    fr.notes.push(format!(
                        "{} ({what}) is in C_GetMechanismList now: write a runner for this file and drop its exclusion",
                        mech_name(mech)
                    ))
                }
                (Some(_), _) => {}
                (None, Some((Some(mech), what))) => fr.file_failure(format!(
                    "{name}: no runner for {what}; {} is {}in C_GetMechanismList: list the file in tests/vectors/excluded.txt with the reason",
                    mech_name(mech),
                    if p.mechs.contains(&mech) { "" } else { "not " }
                )),
                (None, Some((None, what))) => fr.file_failure(format!(
                    "{name}: no runner for {what}: list the file in tests/vectors/excluded.txt with the reason"
                )),
                (None, None) => fr.file_failure(format!(
                    "{name}: not a vector file this test knows; run it or list it in tests/vectors/excluded.txt"
                )),
            }
        }
        drop(p);
        fr.print();
        let secs = file_start.elapsed().as_secs_f64();
        if secs > 5.0 {
            println!("  NOTE took {secs:.1} s");
        }
        passed += fr.passed;
        failed += fr.failed;
        excluded += fr.excluded;
    }

    for r in &excl.rules {
        if only.is_none() && r.hits.get() == 0 && files.iter().any(|(n, _)| *n == r.file) {
            problems.push(format!(
                "excluded.txt:{}: stale entry `{}`: it matches no case",
                r.line,
                r.selector()
            ));
        }
    }
    for pr in &problems {
        println!("FAIL {pr}");
    }
    failed += problems.len();
    println!(
        "vectors: {excluded} cases excluded (tests/vectors/excluded.txt), {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("vectors: {passed} passed, {failed} failed");
    assert_eq!(
        failed, 0,
        "{failed} vector cases failed (see the output above)"
    );
}
