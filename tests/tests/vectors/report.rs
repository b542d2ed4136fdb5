//! The exclusion list (`tests/vectors/excluded.txt`) and the per-file tally.
//!
//! Each line of the list is `<selector> -- <reason>`; `#` starts a comment. A selector is
//!
//! * `dir/file` — the whole file;
//! * `dir/file#ID` — one case: the Wycheproof `tcId`, or `L<line>` for a NIST file (the line its
//!   record starts on; some NIST records make two cases, `L<line>/sign` and `L<line>/verify`);
//! * `dir/file[cond,cond...]` — every case whose parameters meet all conditions. A condition is
//!   `key=value` or `key<number` / `key>number`; the keys are the Wycheproof test group's scalar
//!   fields (`keySize`, `ivSize`, `tagSize`, `sha`, `mgfSha`, `sLen`, `curve`) and `result`, or the
//!   NIST file's section header fields (`mod`, `curve`, `sha`, `ivlen`, `taglen`, ...), `op`, and
//!   `bits` / `example` for the RSA Labs `*-vect.txt` files.
//!
//! Excluded cases still run when there is a runner for them (so the report can say when an
//! exclusion has become unnecessary); their outcome is not counted as a pass or failure.

use std::cell::Cell;

/// What happened to one case.
pub enum Outcome {
    Pass,
    Fail(String),
    /// The module lacks what the case needs (a mechanism, a curve, a key size, a parameter it
    /// refuses by policy): a failure unless the exclusion list names the case.
    Unsupported(String),
}

enum Cond {
    Eq(String, String),
    Lt(String, f64),
    Gt(String, f64),
}

pub struct Rule {
    pub line: usize,
    pub file: String,
    id: Option<String>,
    conds: Vec<Cond>,
    pub reason: String,
    pub hits: Cell<usize>,
}

impl Rule {
    pub fn selector(&self) -> String {
        let mut s = self.file.clone();
        if let Some(id) = &self.id {
            s.push('#');
            s.push_str(id);
        }
        if !self.conds.is_empty() {
            let c: Vec<String> = self
                .conds
                .iter()
                .map(|c| match c {
                    Cond::Eq(k, v) => format!("{k}={v}"),
                    Cond::Lt(k, v) => format!("{k}<{v}"),
                    Cond::Gt(k, v) => format!("{k}>{v}"),
                })
                .collect();
            s.push_str(&format!("[{}]", c.join(",")));
        }
        s
    }

    fn whole_file(&self) -> bool {
        self.id.is_none() && self.conds.is_empty()
    }

    fn matches(&self, id: &str, params: &[(String, String)]) -> bool {
        if let Some(want) = &self.id {
            if want != id {
                return false;
            }
        }
        self.conds.iter().all(|c| {
            let get = |k: &str| params.iter().find(|(pk, _)| pk == k).map(|(_, v)| v);
            match c {
                Cond::Eq(k, v) => get(k).is_some_and(|x| x == v),
                Cond::Lt(k, v) => get(k)
                    .and_then(|x| x.parse::<f64>().ok())
                    .is_some_and(|x| x < *v),
                Cond::Gt(k, v) => get(k)
                    .and_then(|x| x.parse::<f64>().ok())
                    .is_some_and(|x| x > *v),
            }
        })
    }
}

pub struct Exclusions {
    pub rules: Vec<Rule>,
}

impl Exclusions {
    /// Parses the list; every malformed line is an error.
    pub fn parse(text: &str) -> Result<Exclusions, Vec<String>> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let Some((sel, reason)) = l.split_once(" -- ") else {
                errors.push(format!(
                    "excluded.txt:{line}: expected `<selector> -- <reason>`: {l}"
                ));
                continue;
            };
            let (sel, reason) = (sel.trim(), reason.trim());
            if reason.is_empty() {
                errors.push(format!("excluded.txt:{line}: empty reason"));
                continue;
            }
            let (rest, conds) = match sel.split_once('[') {
                Some((f, c)) => {
                    let Some(c) = c.strip_suffix(']') else {
                        errors.push(format!("excluded.txt:{line}: unclosed `[`"));
                        continue;
                    };
                    let mut conds = Vec::new();
                    for part in c.split(',') {
                        let part = part.trim();
                        let parsed = if let Some((k, v)) = part.split_once('=') {
                            Some(Cond::Eq(k.trim().into(), v.trim().into()))
                        } else if let Some((k, v)) = part.split_once('<') {
                            v.trim().parse().ok().map(|v| Cond::Lt(k.trim().into(), v))
                        } else if let Some((k, v)) = part.split_once('>') {
                            v.trim().parse().ok().map(|v| Cond::Gt(k.trim().into(), v))
                        } else {
                            None
                        };
                        match parsed {
                            Some(c) => conds.push(c),
                            None => {
                                errors.push(format!("excluded.txt:{line}: bad condition `{part}`"))
                            }
                        }
                    }
                    (f, conds)
                }
                None => (sel, Vec::new()),
            };
            let (file, id) = match rest.split_once('#') {
                Some((f, id)) => (f, Some(id.to_string())),
                None => (rest, None),
            };
            rules.push(Rule {
                line,
                file: file.to_string(),
                id,
                conds,
                reason: reason.to_string(),
                hits: Cell::new(0),
            });
        }
        if errors.is_empty() {
            Ok(Exclusions { rules })
        } else {
            Err(errors)
        }
    }

    /// The rule excluding the whole file, if any (marks it used).
    pub fn whole_file(&self, file: &str) -> Option<&Rule> {
        let r = self
            .rules
            .iter()
            .find(|r| r.file == file && r.whole_file())?;
        r.hits.set(r.hits.get() + 1);
        Some(r)
    }

    /// The first rule excluding this case, if any (marks it used).
    pub fn case(&self, file: &str, id: &str, params: &[(String, String)]) -> Option<&Rule> {
        let r = self
            .rules
            .iter()
            .find(|r| r.file == file && !r.whole_file() && r.matches(id, params))?;
        r.hits.set(r.hits.get() + 1);
        Some(r)
    }
}

/// The tally of one file.
pub struct FileRun<'a> {
    pub name: String,
    excl: &'a Exclusions,
    file_rule: Option<&'a Rule>,
    pub passed: usize,
    pub failed: usize,
    pub excluded: usize,
    /// Excluded cases that passed anyway.
    pub excluded_passing: usize,
    details: Vec<String>,
    pub notes: Vec<String>,
}

/// Failures printed in full per file.
const SHOWN: usize = 6;

impl<'a> FileRun<'a> {
    pub fn new(name: &str, excl: &'a Exclusions) -> FileRun<'a> {
        FileRun {
            name: name.to_string(),
            excl,
            file_rule: excl.whole_file(name),
            passed: 0,
            failed: 0,
            excluded: 0,
            excluded_passing: 0,
            details: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Whether the whole file is excluded.
    pub fn file_excluded(&self) -> Option<&'a Rule> {
        self.file_rule
    }

    /// Records one case. `params` are matched by the list's `[...]` rules; `describe` says which
    /// case it was for a failure message.
    pub fn record(
        &mut self,
        id: &str,
        params: &[(String, String)],
        describe: impl FnOnce() -> String,
        outcome: Outcome,
    ) {
        let excluded = self.file_rule.is_some() || self.excl.case(&self.name, id, params).is_some();
        if excluded {
            self.excluded += 1;
            if matches!(outcome, Outcome::Pass) {
                self.excluded_passing += 1;
            }
            return;
        }
        let msg = match outcome {
            Outcome::Pass => {
                self.passed += 1;
                return;
            }
            Outcome::Fail(m) => m,
            Outcome::Unsupported(m) => format!(
                "unsupported: {m} (if that is intended, list the case in tests/vectors/excluded.txt with the reason)"
            ),
        };
        self.failed += 1;
        if self.details.len() < SHOWN {
            self.details.push(format!("  FAIL {}: {msg}", describe()));
        }
    }

    /// A failure not tied to one case (the file cannot be run at all).
    pub fn file_failure(&mut self, msg: String) {
        self.failed += 1;
        self.details.push(format!("  FAIL {msg}"));
    }

    /// Prints the file's line, its first failures and notes.
    pub fn print(&self) {
        let mut line = format!(
            "{}: {} passed, {} failed",
            self.name, self.passed, self.failed
        );
        if self.excluded > 0 {
            line.push_str(&format!(", {} excluded", self.excluded));
            if self.excluded_passing > 0 {
                line.push_str(&format!(" ({} of them pass now)", self.excluded_passing));
            }
        }
        if let Some(r) = self.file_rule {
            line.push_str(&format!(" [whole file excluded: {}]", r.reason));
        }
        println!("{line}");
        for d in &self.details {
            println!("{d}");
        }
        if self.failed > self.details.len() {
            println!(
                "  ... and {} more failures",
                self.failed - self.details.len()
            );
        }
        for n in &self.notes {
            println!("  NOTE {n}");
        }
    }
}
