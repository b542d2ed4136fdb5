//! `hsmpool-bench lab`: the six AWS CloudHSM best practices, each reproduced as a measured ratio
//! on the simulated cluster with the simulator's timing model on (AWS CloudHSM hsm2m.medium
//! figures: 0.5 ms round trip, 32 operations in flight per HSM, 1,000 RSA-2048 signatures/s per
//! HSM, a 20 ms serialised commit per token object; see simulator/src/timing.rs).
//!
//! Three cluster configurations run, each in a child process of its own ([`crate::cluster`]'s
//! pattern: a fresh module, `HSMPOOL_CONF` set before any thread exists): one embedded member;
//! three members with the engine's find cache off (`find_cache_ttl_ms = 0`, the *plain module*:
//! every find goes to an HSM and pays its round trip, as in a module that keeps no index); and
//! three members as configured by default. Each child prints one `LAB` line per measurement;
//! the parent pairs them into one line per practice, each with its ratio and whether the ratio
//! points the way the practice predicts, and writes `lab.json`, `lab.svg` and `lab.png`.
//!
//! Nothing here is random: the timing model is an analytic queue with fixed service times and
//! no fault is injected, so every line prints "no randomness" where a seeded run would print its
//! seed. What varies between runs is thread scheduling and the host's speed.
//!
//! Measurements are taken with the sweep's [`sweep::measure`] (workers made before the window,
//! samples checked after it), so every line's outputs are verified: signatures with aws-lc-rs,
//! HMACs against a key imported with a known value, generated keys by reading them back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use aws_lc_rs::hmac;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::cluster::{self, Started};
use crate::sweep::{self, ModuleKeys, Op, Step, Worker};
use crate::{keys, setup, Context, Error, Result};

const USAGE: &str = "\
hsmpool-bench lab [--module PATH] [--seconds-per-step N] [--out DIR]

The six AWS CloudHSM best practices, each measured as a ratio on the simulated cluster with the
timing model on (hsm2m.medium): many threads, no key lookup before every operation (plain module,
then our engine), one login, token keys over three HSMs, three HSMs rather than one, and token
key generation being serialised. Prints one line per practice and writes lab.json, lab.svg and
lab.png into the output directory.

OPTIONS:
    --module PATH          the PKCS #11 module [default: as for hsmpool-bench]
    --seconds-per-step N   wall-clock seconds per measurement [default: 5]
    --out DIR              where the JSON and the plots go [default: bench-results/lab-<UTC time>]
    -h, --help             print this help
";

/// The timing model every member runs.
pub const TIMING: &str = "hsm2m.medium";
/// Threads of the lookup lines (practice 2): one, so each operation's round trips are its own.
pub const LOOKUP_THREADS: usize = 1;
/// Bytes signed per HMAC operation.
pub const HMAC_MSG_LEN: usize = 1024;
/// Label of the imported HMAC key the lookup lines find.
const HMAC_LABEL: &str = "lab-hmac";
/// The HMAC key's value: imported, so that outputs can be checked with aws-lc-rs.
const HMAC_KEY: [u8; 32] = *b"hsmpool-bench lab hmac key 32 B!";
/// Label of the keys practice 6 generates.
const GEN_LABEL: &str = "lab-gen";

/// A cluster configuration; each runs in its own child process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    /// One embedded member.
    One,
    /// Three members, the engine's find cache off: a module that asks an HSM on every find.
    Plain,
    /// Three members, everything as configured by default.
    Three,
}

impl Cluster {
    /// Every configuration, in the order the children run.
    pub const ALL: [Cluster; 3] = [Cluster::One, Cluster::Plain, Cluster::Three];

    /// The name on the command line and in measurement ids.
    pub fn name(self) -> &'static str {
        match self {
            Cluster::One => "one",
            Cluster::Plain => "plain",
            Cluster::Three => "three",
        }
    }

    /// The configuration named `s`.
    pub fn parse(s: &str) -> Option<Cluster> {
        Cluster::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Embedded members.
    pub fn members(self) -> usize {
        match self {
            Cluster::One => 1,
            Cluster::Plain | Cluster::Three => 3,
        }
    }

    /// Lines added to `[cluster]`.
    fn cluster_extra(self) -> &'static str {
        match self {
            Cluster::Plain => "find_cache_ttl_ms = 0\n",
            Cluster::One | Cluster::Three => "",
        }
    }

    /// The module configuration of this cluster, members under `dir`.
    pub fn config_text(self, dir: &Path) -> Result<String> {
        cluster::config_text_with(dir, self.members(), self.cluster_extra())
    }

    /// How the configuration reads in a line.
    fn describe(self) -> String {
        let it = cluster::PIN_ITERATIONS;
        match self {
            Cluster::One => format!("one member, timing {TIMING}, pin_iterations {it}"),
            Cluster::Plain => format!(
                "three members, timing {TIMING}, pin_iterations {it}, find_cache_ttl_ms = 0 (plain module)"
            ),
            Cluster::Three => format!(
                "three members, timing {TIMING}, pin_iterations {it}, find_cache_ttl_ms default (100)"
            ),
        }
    }
}

// ----- measurements: the child's lines ----------------------------------------------------------

/// One measurement, as a child reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// `<cluster>.<what>`, e.g. `one.rsa_sign.t64`.
    pub id: String,
    /// Threads.
    pub threads: usize,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Median latency, µs (0 when nothing succeeded).
    pub p50_us: f64,
    /// Errors and failed checks.
    pub failures: u64,
    /// Outputs checked after the window.
    pub checked: u64,
}

impl Measurement {
    fn from_step(id: String, threads: usize, step: &Step) -> Measurement {
        Measurement {
            id,
            threads,
            ops_per_s: step.ops_per_s(),
            p50_us: step.percentile_us(50.0).unwrap_or(0.0),
            failures: step.failures(),
            checked: step.checked,
        }
    }

    /// The line a child prints.
    pub fn line(&self) -> String {
        format!(
            "LAB id={} threads={} ops_per_s={:.2} p50_us={:.0} failures={} checked={}",
            self.id, self.threads, self.ops_per_s, self.p50_us, self.failures, self.checked
        )
    }

    /// Parse a `LAB` line; anything else is `None`.
    pub fn parse(line: &str) -> Option<Measurement> {
        let rest = line.strip_prefix("LAB ")?;
        let (mut id, mut threads, mut ops, mut p50, mut failures, mut checked) =
            (None, None, None, None, None, None);
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "id" if !v.is_empty() => id = Some(v.to_string()),
                "threads" => threads = v.parse().ok(),
                "ops_per_s" => ops = v.parse().ok().filter(|x: &f64| x.is_finite()),
                "p50_us" => p50 = v.parse().ok().filter(|x: &f64| x.is_finite()),
                "failures" => failures = v.parse().ok(),
                "checked" => checked = v.parse().ok(),
                _ => return None,
            }
        }
        Some(Measurement {
            id: id?,
            threads: threads?,
            ops_per_s: ops?,
            p50_us: p50?,
            failures: failures?,
            checked: checked?,
        })
    }
}

// ----- the practices ----------------------------------------------------------------------------

/// What a practice predicts of its ratio.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expect {
    /// The ratio is at least this.
    AtLeast(f64),
    /// The ratio is at most this.
    AtMost(f64),
}

impl Expect {
    /// Whether `ratio` is as predicted.
    pub fn holds(self, ratio: f64) -> bool {
        match self {
            Expect::AtLeast(x) => ratio >= x,
            Expect::AtMost(x) => ratio <= x,
        }
    }

    fn text(self) -> String {
        match self {
            Expect::AtLeast(x) => format!(">= {x}x"),
            Expect::AtMost(x) => format!("<= {x}x"),
        }
    }
}

/// A label and the id of the measurement it names.
type Named = (&'static str, &'static str);

/// A practice's line before it is measured: which two measurements make its ratio.
#[derive(Clone, Debug)]
struct Def {
    key: &'static str,
    short: &'static str,
    name: &'static str,
    cluster: &'static str,
    workload: &'static str,
    /// The numerator.
    a: Named,
    /// The denominator.
    b: Named,
    expect: Expect,
    why: &'static str,
    /// A second pair shown beside the line.
    contrast: Option<(Named, Named)>,
}

/// The lines, in the order they print.
fn defs() -> Vec<Def> {
    vec![
        Def {
            key: "1",
            short: "threads",
            name: "threads: 64 vs 1 on one HSM",
            cluster: "one",
            workload: "RSA-2048 sign (CKM_SHA256_RSA_PKCS), one session per thread",
            a: ("64 threads", "one.rsa_sign.t64"),
            b: ("1 thread", "one.rsa_sign.t1"),
            expect: Expect::AtLeast(1.0),
            why: "an HSM serves many requests at once (32 in flight): ~32x predicted",
            contrast: None,
        },
        Def {
            key: "2a",
            short: "lookup, plain module",
            name: "lookup before every op vs cached handle, plain module",
            cluster: "plain",
            workload: "HMAC-SHA256 sign of 1 KiB, 1 thread; lookup = C_FindObjectsInit/FindObjects/Final by label, then sign",
            a: ("lookup+sign", "plain.hmac.lookup"),
            b: ("cached handle", "plain.hmac.handle"),
            expect: Expect::AtMost(1.0),
            why: "each lookup is one more HSM round trip",
            contrast: None,
        },
        Def {
            key: "2b",
            short: "lookup, our engine",
            name: "lookup before every op vs cached handle, our engine",
            cluster: "three",
            workload: "as 2a, the find cache on: the lookup is answered from the engine's index",
            a: ("lookup+sign", "three.hmac.lookup"),
            b: ("cached handle", "three.hmac.handle"),
            expect: Expect::AtLeast(0.8),
            why: "issue 5 target: the naive lookup through our engine at >= 0.8 of the cached handle",
            contrast: None,
        },
        Def {
            key: "3",
            short: "login",
            name: "login once vs login per operation",
            cluster: "three",
            workload: "HMAC-SHA256 sign of 1 KiB, 1 thread (logins are per application, so login/sign/logout cannot overlap); per op = C_Login+C_Sign+C_Logout",
            a: ("login once", "three.login.once"),
            b: ("login per op", "three.login.per_op"),
            expect: Expect::AtLeast(1.0),
            why: "a login checks the PIN (PBKDF2) and logs in every member session",
            contrast: None,
        },
        Def {
            key: "4",
            short: "token vs session key",
            name: "token key over three HSMs vs session key on one",
            cluster: "three",
            workload: "RSA-2048 sign, 64 threads; the session key lives on the member that generated it",
            a: ("token key", "three.rsa_token.t64"),
            b: ("session key", "three.rsa_session.t64"),
            expect: Expect::AtLeast(1.0),
            why: "a token key can be served by any member, a session key by one",
            contrast: None,
        },
        Def {
            key: "5",
            short: "HSMs",
            name: "three HSMs vs one",
            cluster: "one, three",
            workload: "RSA-2048 sign, 128 threads, token key",
            a: ("three members", "three.rsa_sign.t128"),
            b: ("one member", "one.rsa_sign.t128"),
            expect: Expect::AtLeast(1.0),
            why: "128 threads fill all 96 slots of three HSMs: ~3x predicted",
            contrast: None,
        },
        Def {
            key: "6",
            short: "token keygen",
            name: "token key generation: 64 threads vs 1",
            cluster: "three",
            workload: "AES-256 C_GenerateKey with CKA_TOKEN true, each cloned to the other members",
            a: ("64 threads", "three.keygen_token.t64"),
            b: ("1 thread", "three.keygen_token.t1"),
            expect: Expect::AtMost(4.0),
            why: "token creation is serialised per HSM (token_commit_us 20 ms): little gain, far from 64x",
            contrast: Some((
                ("session keys, 64 threads", "three.keygen_session.t64"),
                ("1 thread", "three.keygen_session.t1"),
            )),
        },
    ]
}

/// One side of a ratio.
#[derive(Clone, Debug, PartialEq)]
pub struct Side {
    /// What it measured.
    pub label: String,
    /// The measurement.
    pub m: Measurement,
}

/// A measured line.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// `1`..`6`, with `a`/`b` for the two parts of practice 2.
    pub key: String,
    /// A few words naming the practice.
    pub short: String,
    /// What the practice compares.
    pub name: String,
    /// The seed, or `None`: nothing random in this line.
    pub seed: Option<u64>,
    /// The cluster configuration(s).
    pub config: String,
    /// The operation and threads.
    pub workload: String,
    /// Numerator.
    pub a: Side,
    /// Denominator.
    pub b: Side,
    /// `a / b` in operations per second.
    pub ratio: f64,
    /// What the practice predicts.
    pub expect: Expect,
    /// Why.
    pub why: String,
    /// Whether the ratio is as predicted.
    pub pass: bool,
    /// A second pair shown for contrast (no prediction of its own).
    pub contrast: Option<(Side, Side, f64)>,
}

/// `a / b`, 0 when `b` measured nothing.
fn ratio(a: &Measurement, b: &Measurement) -> f64 {
    if b.ops_per_s > 0.0 {
        a.ops_per_s / b.ops_per_s
    } else {
        0.0
    }
}

/// Pair the measurements into the lines; a missing measurement is an error.
pub fn lines(ms: &BTreeMap<String, Measurement>) -> Result<Vec<Line>> {
    let side = |(label, id): Named| -> Result<Side> {
        let m = ms
            .get(id)
            .cloned()
            .ok_or_else(|| Error(format!("the lab has no measurement {id}")))?;
        Ok(Side {
            label: label.to_string(),
            m,
        })
    };
    defs()
        .into_iter()
        .map(|d| {
            let (a, b) = (side(d.a)?, side(d.b)?);
            let r = ratio(&a.m, &b.m);
            let config = d
                .cluster
                .split(", ")
                .filter_map(Cluster::parse)
                .map(Cluster::describe)
                .collect::<Vec<_>>()
                .join(" / ");
            let contrast = match d.contrast {
                Some((ca, cb)) => {
                    let (ca, cb) = (side(ca)?, side(cb)?);
                    let r = ratio(&ca.m, &cb.m);
                    Some((ca, cb, r))
                }
                None => None,
            };
            Ok(Line {
                key: d.key.into(),
                short: d.short.into(),
                name: d.name.into(),
                seed: None,
                config,
                workload: d.workload.into(),
                pass: d.expect.holds(r) && r > 0.0,
                a,
                b,
                ratio: r,
                expect: d.expect,
                why: d.why.into(),
                contrast,
            })
        })
        .collect()
}

impl Line {
    /// The line as printed: seed, configuration, both measurements, the ratio, pass or miss.
    pub fn text(&self) -> String {
        let seed = self
            .seed
            .map_or_else(|| "no randomness".into(), |s| s.to_string());
        let mut t = format!(
            "[{}] {} | seed: {seed} | {}; {} | {} {:.1}/s (p50 {:.1} ms) vs {} {:.1}/s (p50 {:.1} ms) | ratio {:.2}x, expected {} ({}) | {}",
            self.key,
            self.name,
            self.config,
            self.workload,
            self.a.label,
            self.a.m.ops_per_s,
            self.a.m.p50_us / 1e3,
            self.b.label,
            self.b.m.ops_per_s,
            self.b.m.p50_us / 1e3,
            self.ratio,
            self.expect.text(),
            self.why,
            if self.pass { "pass" } else { "MISS" }
        );
        if let Some((ca, cb, r)) = &self.contrast {
            t.push_str(&format!(
                " | contrast: {} {:.1}/s vs {} {:.1}/s = {r:.2}x",
                ca.label, ca.m.ops_per_s, cb.label, cb.m.ops_per_s
            ));
        }
        t
    }

    /// Errors and failed checks of the measurements behind the line.
    pub fn failures(&self) -> u64 {
        let c = self
            .contrast
            .as_ref()
            .map_or(0, |(a, b, _)| a.m.failures + b.m.failures);
        self.a.m.failures + self.b.m.failures + c
    }
}

// ----- JSON -------------------------------------------------------------------------------------

fn side_json(s: &Side) -> serde_json::Value {
    serde_json::json!({
        "label": s.label,
        "id": s.m.id,
        "threads": s.m.threads,
        "ops_per_s": s.m.ops_per_s,
        "p50_us": s.m.p50_us,
        "failures": s.m.failures,
        "checked": s.m.checked,
    })
}

/// The lab's results as JSON.
pub fn to_json(lines: &[Line], window: Duration, unix_s: u64) -> serde_json::Value {
    let lines: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| {
            let (kind, bound) = match l.expect {
                Expect::AtLeast(x) => ("at_least", x),
                Expect::AtMost(x) => ("at_most", x),
            };
            serde_json::json!({
                "key": l.key,
                "name": l.name,
                "seed": l.seed,
                "randomness": if l.seed.is_some() { "seeded" } else { "none" },
                "config": l.config,
                "workload": l.workload,
                "measurements": [side_json(&l.a), side_json(&l.b)],
                "ratio": l.ratio,
                "ratio_of": format!("{} / {}", l.a.label, l.b.label),
                "expected": { kind: bound, "why": l.why },
                "pass": l.pass,
                "contrast": l.contrast.as_ref().map(|(a, b, r)| serde_json::json!({
                    "measurements": [side_json(a), side_json(b)],
                    "ratio": r,
                })),
            })
        })
        .collect();
    serde_json::json!({
        "lab": "hsmpool-bench lab",
        "unix_time_s": unix_s,
        "seconds_per_step": window.as_secs_f64(),
        "timing": TIMING,
        "pin_iterations": cluster::PIN_ITERATIONS,
        "lines": lines,
    })
}

/// Write `lab.json` into `dir`.
pub fn write_json(dir: &Path, lines: &[Line], window: Duration, unix_s: u64) -> Result<PathBuf> {
    let path = dir.join("lab.json");
    let text = serde_json::to_string_pretty(&to_json(lines, window, unix_s))
        .context("encoding lab.json")?;
    std::fs::write(&path, text + "\n").context(&format!("writing {}", path.display()))?;
    Ok(path)
}

// ----- the plot ---------------------------------------------------------------------------------

/// The x range of the plot: every ratio and 1x, with room for the labels.
fn x_range(lines: &[Line]) -> (f64, f64) {
    let (mut lo, mut hi) = (0.5f64, 2.0f64);
    for l in lines.iter().filter(|l| l.ratio > 0.0) {
        lo = lo.min(l.ratio);
        hi = hi.max(l.ratio);
    }
    (lo / 3.0, hi * 8.0)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, lines: &[Line]) -> Result<()> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| Error(format!("drawing the plot: {e}"));
    root.fill(&WHITE).map_err(e)?;
    let n = lines.len();
    let (lo, hi) = x_range(lines);
    let names: Vec<String> = lines
        .iter()
        .map(|l| format!("{} {}: {} / {}", l.key, l.short, l.a.label, l.b.label))
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("hsmpool-bench lab: AWS CloudHSM best practices, simulated cluster ({TIMING} timing)"),
            ("sans-serif", 26),
        )
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(470)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n.saturating_sub(1)).into_segmented())
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < n => names[n - 1 - i].clone(),
            _ => String::new(),
        })
        .x_desc("ratio of throughputs (log scale; bars start at 1x; green: as the practice predicts, red: not)")
        .x_label_formatter(&|x| format!("{x}x"))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(e)?;
    let green = RGBColor(46, 139, 87);
    let red = RGBColor(200, 40, 40);
    for (k, l) in lines.iter().enumerate() {
        let row = n - 1 - k;
        let colour = if l.pass { green } else { red };
        let end = if l.ratio > 0.0 { l.ratio } else { lo };
        let mut bar = Rectangle::new(
            [
                (1.0, SegmentValue::Exact(row)),
                (end, SegmentValue::Exact(row + 1)),
            ],
            colour.filled(),
        );
        bar.set_margin(8, 8, 0, 0);
        chart.draw_series(std::iter::once(bar)).map_err(e)?;
        let label = format!(
            "{:.2}x (expected {}){}",
            l.ratio,
            l.expect.text(),
            if l.pass { "" } else { " MISS" }
        );
        // Right of the bar's far end, or right of 1x for a bar that goes left.
        let at = end.max(1.0) * 1.15;
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (at, SegmentValue::CenterOf(row)),
                ("sans-serif", 15).into_font().color(&BLACK),
            )))
            .map_err(e)?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
            BLACK.stroke_width(2),
        )))
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Draw `lab.svg` and `lab.png` into `dir`.
pub fn write_plots(dir: &Path, lines: &[Line]) -> Result<(PathBuf, PathBuf)> {
    crate::plot::register_font()?;
    let size = (1400u32, 640u32);
    let svg = dir.join("lab.svg");
    draw(SVGBackend::new(&svg, size).into_drawing_area(), lines)?;
    let png = dir.join("lab.png");
    draw(BitMapBackend::new(&png, size).into_drawing_area(), lines)?;
    Ok((svg, png))
}

// ----- workers ----------------------------------------------------------------------------------

/// The message thread `t` signs as its operation `i`.
fn hmac_message(t: usize, i: u64) -> Vec<u8> {
    let mut m = vec![0xa5; HMAC_MSG_LEN];
    m[..8].copy_from_slice(&(t as u64).to_be_bytes());
    m[8..16].copy_from_slice(&i.to_be_bytes());
    m
}

/// How an HMAC worker gets to its signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HmacMode {
    /// Sign with the handle found once.
    Handle,
    /// Find the key by label, then sign.
    Lookup,
    /// `C_Login`, sign with the handle, `C_Logout`.
    LoginPerOp,
}

/// One thread signing with the HMAC key.
struct HmacWorker {
    session: Session,
    mode: HmacMode,
    key: ObjectHandle,
    thread: usize,
    first: Option<(u64, Vec<u8>)>,
    last: Option<(u64, Vec<u8>)>,
}

impl HmacWorker {
    fn sign(&self, key: ObjectHandle, i: u64) -> Result<Vec<u8>> {
        self.session
            .sign(&Mechanism::Sha256Hmac, key, &hmac_message(self.thread, i))
            .context("C_Sign (CKM_SHA256_HMAC)")
    }
}

/// The key labelled [`HMAC_LABEL`], found through `C_FindObjects*`: there must be one.
fn find_hmac(session: &Session) -> Result<ObjectHandle> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(HMAC_LABEL.into()),
        ])
        .context("C_FindObjects (by label)")?;
    match found[..] {
        [k] => Ok(k),
        _ => Err(Error(format!(
            "C_FindObjects found {} keys labelled {HMAC_LABEL}, not one",
            found.len()
        ))),
    }
}

impl Worker for HmacWorker {
    fn op(&mut self, i: u64) -> Result<()> {
        let mac = match self.mode {
            HmacMode::Handle => self.sign(self.key, i)?,
            HmacMode::Lookup => {
                let key = find_hmac(&self.session)?;
                self.sign(key, i)?
            }
            HmacMode::LoginPerOp => {
                let pin = AuthPin::new(setup::USER_PIN.into());
                self.session
                    .login(UserType::User, Some(&pin))
                    .context("C_Login")?;
                // Log out whatever the signature did, so the next operation starts logged out.
                let mac = self.sign(self.key, i);
                self.session.logout().context("C_Logout")?;
                mac?
            }
        };
        if self.first.is_none() {
            self.first = Some((i, mac));
        } else {
            self.last = Some((i, mac));
        }
        Ok(())
    }

    fn check(&mut self) -> Result<u64> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &HMAC_KEY);
        let mut n = 0;
        for (i, mac) in self.first.iter().chain(self.last.iter()) {
            hmac::verify(&key, &hmac_message(self.thread, *i), mac).map_err(|_| {
                Error(format!(
                    "HMAC-SHA256: thread {} output {i} does not verify",
                    self.thread
                ))
            })?;
            n += 1;
        }
        Ok(n)
    }
}

/// One thread generating AES-256 keys.
struct KeygenWorker<'a> {
    /// `None` once handed to `closing`.
    session: Option<Session>,
    token: bool,
    first: Option<ObjectHandle>,
    last: Option<ObjectHandle>,
    /// Where the session goes after the check, to be closed with the others at once.
    closing: &'a Mutex<Vec<Session>>,
}

impl KeygenWorker<'_> {
    fn session(&self) -> Result<&Session> {
        self.session
            .as_ref()
            .ok_or_else(|| Error("the key generation session is closed".into()))
    }
}

impl Worker for KeygenWorker<'_> {
    fn op(&mut self, _i: u64) -> Result<()> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(self.token),
            Attribute::Label(GEN_LABEL.into()),
            Attribute::ValueLen(32.into()),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Encrypt(true),
        ];
        let k = self
            .session()?
            .generate_key(&Mechanism::AesKeyGen, &template)
            .context("C_GenerateKey (AES-256)")?;
        if self.first.is_none() {
            self.first = Some(k);
        } else {
            self.last = Some(k);
        }
        Ok(())
    }

    fn check(&mut self) -> Result<u64> {
        let mut n = 0;
        for k in self.first.iter().chain(self.last.iter()) {
            let attrs = self
                .session()?
                .get_attributes(*k, &[AttributeType::ValueLen, AttributeType::Token])
                .context("C_GetAttributeValue (CKA_VALUE_LEN, CKA_TOKEN)")?;
            let ok = attrs.contains(&Attribute::ValueLen(32.into()))
                && attrs.contains(&Attribute::Token(self.token));
            if !ok {
                return Err(Error(format!("a generated key reads back as {attrs:?}")));
            }
            n += 1;
        }
        if let Some(s) = self.session.take() {
            self.closing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(s);
        }
        Ok(n)
    }
}

fn hmac_step(c: &Started, key: ObjectHandle, mode: HmacMode, threads: usize, w: Duration) -> Step {
    let (pkcs11, slot) = (&c.pkcs11, c.slot);
    sweep::measure(threads, w, |thread| {
        Ok(HmacWorker {
            session: pkcs11.open_ro_session(slot).context("C_OpenSession")?,
            mode,
            key,
            thread,
            first: None,
            last: None,
        })
    })
}

/// Generate keys for a window. Sessions are closed after the window, all at once: closing one
/// destroys its session objects one HSM round trip at a time, and 64 sessions holding a few
/// thousand keys each would take minutes closed one after another.
fn keygen_step(pkcs11: &Pkcs11, slot: Slot, token: bool, threads: usize, w: Duration) -> Step {
    let closing = Mutex::new(Vec::new());
    let step = sweep::measure(threads, w, |_| {
        Ok(KeygenWorker {
            session: Some(pkcs11.open_rw_session(slot).context("C_OpenSession")?),
            token,
            first: None,
            last: None,
            closing: &closing,
        })
    });
    let sessions = closing.into_inner().unwrap_or_else(|p| p.into_inner());
    std::thread::scope(|s| {
        for session in sessions {
            s.spawn(move || drop(session));
        }
    });
    step
}

// ----- the child --------------------------------------------------------------------------------

/// Import the HMAC key as a token object.
fn import_hmac(session: &Session) -> Result<ObjectHandle> {
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Label(HMAC_LABEL.into()),
            Attribute::Value(HMAC_KEY.to_vec()),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Verify(true),
        ])
        .context("C_CreateObject (HMAC key)")
}

/// The child: set `cluster` up, take its measurements, print a `LAB` line for each.
pub fn run_child(module: &Path, cluster: Cluster, w: Duration) -> Result<()> {
    let c = cluster::start(module, |dir| cluster.config_text(dir))?;
    let report = |what: &str, threads: usize, step: &Step| {
        let id = format!("{}.{what}", cluster.name());
        println!("{}", Measurement::from_step(id, threads, step).line());
    };
    match cluster {
        Cluster::One => {
            let keys = cluster::module_keys(&c)?;
            for t in [1, 64, 128] {
                let step = sweep::run_module(&c.pkcs11, c.slot, &keys, Op::RsaSign, t, w);
                report(&format!("rsa_sign.t{t}"), t, &step);
            }
        }
        Cluster::Plain => {
            let key = import_hmac(&c.session)?;
            let step = hmac_step(&c, key, HmacMode::Lookup, LOOKUP_THREADS, w);
            report("hmac.lookup", LOOKUP_THREADS, &step);
            let step = hmac_step(&c, key, HmacMode::Handle, LOOKUP_THREADS, w);
            report("hmac.handle", LOOKUP_THREADS, &step);
        }
        Cluster::Three => three(&c, w, &report)?,
    }
    c.finish()
}

/// The three-member child's measurements, in an order that keeps each one clean: the
/// application's login is dropped only for the login-per-operation step, and the keys of
/// practice 6 are generated last.
fn three(c: &Started, w: Duration, report: &dyn Fn(&str, usize, &Step)) -> Result<()> {
    let hmac_key = import_hmac(&c.session)?;
    let token_keys = cluster::module_keys(c)?;
    // A session key pair, made in the main session (which stays open): it lives on one member.
    let rsa = keys::generate_rsa(&c.session, "lab-session-rsa", false)?;
    let session_keys = ModuleKeys {
        rsa_public: Some(keys::RsaPublic::read(&c.session, rsa.public)?),
        rsa: Some(rsa),
        ..token_keys.clone()
    };

    let step = hmac_step(c, hmac_key, HmacMode::Lookup, LOOKUP_THREADS, w);
    report("hmac.lookup", LOOKUP_THREADS, &step);
    let step = hmac_step(c, hmac_key, HmacMode::Handle, LOOKUP_THREADS, w);
    report("hmac.handle", LOOKUP_THREADS, &step);

    let step = sweep::run_module(&c.pkcs11, c.slot, &token_keys, Op::RsaSign, 64, w);
    report("rsa_token.t64", 64, &step);
    let step = sweep::run_module(&c.pkcs11, c.slot, &session_keys, Op::RsaSign, 64, w);
    report("rsa_session.t64", 64, &step);
    let step = sweep::run_module(&c.pkcs11, c.slot, &token_keys, Op::RsaSign, 128, w);
    report("rsa_sign.t128", 128, &step);

    // Login per operation: one thread, as the login is the application's, not the session's;
    // the main session's login is dropped for the step and taken again after it.
    let step = hmac_step(c, hmac_key, HmacMode::Handle, 1, w);
    report("login.once", 1, &step);
    c.session.logout().context("C_Logout (main session)")?;
    let step = hmac_step(c, hmac_key, HmacMode::LoginPerOp, 1, w);
    let pin = AuthPin::new(setup::USER_PIN.into());
    c.session
        .login(UserType::User, Some(&pin))
        .context("C_Login (main session, again)")?;
    report("login.per_op", 1, &step);

    for token in [true, false] {
        let kind = if token { "token" } else { "session" };
        for t in [1, 64] {
            let step = keygen_step(&c.pkcs11, c.slot, token, t, w);
            report(&format!("keygen_{kind}.t{t}"), t, &step);
        }
    }
    Ok(())
}

// ----- the parent -------------------------------------------------------------------------------

/// `YYYYMMDD-HHMMSS` (UTC) of a Unix time.
pub fn utc_stamp(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Civil date from days since 1970-01-01, in 400-year eras starting on 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The parent: one child per configuration, then the lines, the JSON and the plots. Returns
/// the errors and failed checks counted (a ratio not as predicted is reported, not counted).
pub fn run(module: &Path, w: Duration, out: Option<&Path>) -> Result<u64> {
    let unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let out = out.map_or_else(
        || PathBuf::from("bench-results").join(format!("lab-{}", utc_stamp(unix_s))),
        Path::to_path_buf,
    );
    std::fs::create_dir_all(&out).context(&format!("creating {}", out.display()))?;
    println!(
        "lab: AWS CloudHSM best practices on the simulated cluster, timing {TIMING}, pin_iterations {}, {} s per measurement",
        cluster::PIN_ITERATIONS,
        w.as_secs_f64()
    );
    let mut ms = BTreeMap::new();
    for cl in Cluster::ALL {
        println!("  running the {} child ({})", cl.name(), cl.describe());
        let args = [
            "lab-child",
            "--module",
            &module.display().to_string(),
            "--cluster",
            cl.name(),
            "--seconds-per-step",
            &w.as_secs_f64().to_string(),
        ]
        .map(String::from);
        let text = cluster::run_child_process(&args, cl.name())?;
        for m in text.lines().filter_map(Measurement::parse) {
            ms.insert(m.id.clone(), m);
        }
    }
    let lines = lines(&ms)?;
    println!();
    for l in &lines {
        println!("{}", l.text());
    }
    let json = write_json(&out, &lines, w, unix_s)?;
    let (svg, png) = write_plots(&out, &lines)?;
    println!();
    println!(
        "{} of {} lines as the practices predict",
        lines.iter().filter(|l| l.pass).count(),
        lines.len()
    );
    println!("results: {}", out.display());
    println!(
        "  {}\n  {}\n  {}",
        json.display(),
        svg.display(),
        png.display()
    );
    Ok(lines.iter().map(Line::failures).sum())
}

/// The parsed command line of `lab` and `lab-child`.
#[derive(Debug, PartialEq)]
struct Args {
    module: Option<PathBuf>,
    window: Duration,
    out: Option<PathBuf>,
    cluster: Option<Cluster>,
    help: bool,
}

fn parse_args(child: bool, argv: Vec<String>) -> Result<Args> {
    let mut a = Args {
        module: None,
        window: Duration::from_secs(5),
        out: None,
        cluster: None,
        help: false,
    };
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| Error(format!("{arg} needs a value (see --help)")))
        };
        match arg.as_str() {
            "-h" | "--help" => a.help = true,
            "--module" => a.module = Some(PathBuf::from(value()?)),
            "--out" if !child => a.out = Some(PathBuf::from(value()?)),
            "--cluster" if child => {
                let v = value()?;
                a.cluster =
                    Some(Cluster::parse(&v).ok_or_else(|| Error(format!("--cluster: {v:?}")))?);
            }
            "--seconds-per-step" => {
                let v = value()?;
                a.window = v
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        Error(format!(
                            "--seconds-per-step: {v:?} is not a number of seconds above 0"
                        ))
                    })?;
            }
            _ => return Err(Error(format!("unknown argument {arg:?} (see --help)"))),
        }
    }
    if child && a.cluster.is_none() {
        return Err(Error("lab-child needs --cluster".into()));
    }
    Ok(a)
}

/// `hsmpool-bench lab ...` (or, with `child`, the `lab-child ...` the parent runs).
pub fn main(child: bool, argv: Vec<String>) -> ExitCode {
    let a = match parse_args(child, argv) {
        Ok(a) if a.help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(a) => a,
        Err(e) => {
            eprintln!("hsmpool-bench lab: {e}");
            return ExitCode::from(2);
        }
    };
    let r = setup::module_path(a.module.as_deref()).and_then(|module| match a.cluster {
        Some(cl) if child => run_child(&module, cl, a.window).map(|()| 0),
        _ => run(&module, a.window, a.out.as_deref()),
    });
    match r {
        Ok(0) => ExitCode::SUCCESS,
        Ok(n) => {
            eprintln!("hsmpool-bench lab: FAILED: {n} errors or failed verifications");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("hsmpool-bench lab: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, ops: f64) -> Measurement {
        Measurement {
            id: id.into(),
            threads: 1,
            ops_per_s: ops,
            p50_us: 1000.0,
            failures: 0,
            checked: 2,
        }
    }

    /// Every measurement the lines need, each at `ops`, with some overridden.
    fn all(over: &[(&str, f64)]) -> BTreeMap<String, Measurement> {
        let mut ms = BTreeMap::new();
        for d in defs() {
            let mut ids = vec![d.a.1, d.b.1];
            if let Some((a, b)) = d.contrast {
                ids.extend([a.1, b.1]);
            }
            for id in ids {
                ms.insert(id.to_string(), m(id, 100.0));
            }
        }
        for (id, ops) in over {
            ms.insert(id.to_string(), m(id, *ops));
        }
        ms
    }

    #[test]
    fn lab_lines_round_trip_and_others_are_refused() {
        let x = Measurement {
            id: "three.hmac.lookup".into(),
            threads: 64,
            ops_per_s: 1234.5,
            p50_us: 812.0,
            failures: 1,
            checked: 128,
        };
        assert_eq!(Measurement::parse(&x.line()), Some(x));
        for bad in [
            "RESULT members=1 op=x threads=1 ops_per_s=1 p50_us=1 failures=0",
            "LAB id=x threads=1",
            "LAB id=x threads=one ops_per_s=1 p50_us=1 failures=0 checked=0",
            "LAB id=x threads=1 ops_per_s=NaN p50_us=1 failures=0 checked=0",
            "LAB id=x threads=1 ops_per_s=1 p50_us=1 failures=0 checked=0 extra=1",
            "  first error in this step: C_Sign",
        ] {
            assert_eq!(Measurement::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn each_config_has_its_members_timing_and_cache() {
        let dir = Path::new("/tmp/lab");
        let plain = Cluster::Plain.config_text(dir).unwrap();
        let three = Cluster::Three.config_text(dir).unwrap();
        let one = Cluster::One.config_text(dir).unwrap();
        assert_eq!(plain.matches("[[member]]").count(), 3);
        assert_eq!(one.matches("[[member]]").count(), 1);
        assert_eq!(three.matches(&format!("timing = \"{TIMING}\"")).count(), 3);
        assert!(plain.contains("find_cache_ttl_ms = 0\n"));
        assert!(!three.contains("find_cache_ttl_ms"));
        // The key lands in [cluster], before the first member table.
        assert!(plain.find("find_cache_ttl_ms") < plain.find("[[member]]"));
        for c in Cluster::ALL {
            assert_eq!(Cluster::parse(c.name()), Some(c));
        }
        assert_eq!(Cluster::parse("two"), None);
    }

    #[test]
    fn ratios_and_verdicts_follow_the_definitions() {
        let ms = all(&[
            ("one.rsa_sign.t64", 990.0),
            ("one.rsa_sign.t1", 30.0),
            ("plain.hmac.lookup", 700.0),
            ("plain.hmac.handle", 1400.0),
            ("three.hmac.lookup", 1000.0),
            ("three.hmac.handle", 1400.0),
            ("three.keygen_token.t64", 500.0),
        ]);
        let ls = lines(&ms).unwrap();
        let by = |k: &str| ls.iter().find(|l| l.key == k).unwrap();
        assert_eq!(by("1").ratio, 33.0);
        assert!(by("1").pass);
        assert_eq!(by("2a").ratio, 0.5);
        assert!(by("2a").pass, "a lookup costing half is as predicted");
        assert!((by("2b").ratio - 1000.0 / 1400.0).abs() < 1e-9);
        assert!(!by("2b").pass, "0.71 is under the 0.8 target");
        assert!(!by("6").pass, "token keys scaling 5x is not serialised");
        assert_eq!(by("6").contrast.as_ref().map(|c| c.2), Some(1.0));
        assert!(by("3").text().contains("seed: no randomness"));
        assert!(by("2b").text().ends_with("MISS"));
        let mut gone = ms.clone();
        gone.remove("three.login.per_op");
        assert!(lines(&gone).is_err(), "a missing measurement is an error");
        let mut zero = ms;
        zero.insert("one.rsa_sign.t1".into(), m("one.rsa_sign.t1", 0.0));
        let l = lines(&zero).unwrap();
        assert!(!l[0].pass, "nothing measured is no evidence");
    }

    #[test]
    fn json_holds_every_line_with_its_verdict() {
        let ls = lines(&all(&[("one.rsa_sign.t64", 3000.0)])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = write_json(dir.path(), &ls, Duration::from_millis(1500), 42).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(v["seconds_per_step"], 1.5);
        assert_eq!(v["pin_iterations"], cluster::PIN_ITERATIONS);
        let lines = v["lines"].as_array().unwrap();
        assert_eq!(lines.len(), defs().len());
        assert_eq!(lines[0]["key"], "1");
        assert_eq!(lines[0]["ratio"], 30.0);
        assert_eq!(lines[0]["pass"], true);
        assert_eq!(lines[0]["seed"], serde_json::Value::Null);
        assert_eq!(lines[0]["randomness"], "none");
        assert_eq!(lines[0]["expected"]["at_least"], 1.0);
        assert_eq!(lines[0]["measurements"][0]["ops_per_s"], 3000.0);
        assert_eq!(lines[0]["measurements"][1]["id"], "one.rsa_sign.t1");
        assert_eq!(lines[2]["expected"]["at_least"], 0.8);
        let six = &lines[lines.len() - 1];
        assert_eq!(six["expected"]["at_most"], 4.0);
        assert!(six["contrast"]["measurements"].is_array());
        assert_eq!(lines[1]["contrast"], serde_json::Value::Null);
    }

    #[test]
    fn utc_stamps_are_civil_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_700_000_000), "20231114-221320");
        assert_eq!(utc_stamp(4_102_444_799), "20991231-235959");
    }

    #[test]
    fn options_parse_and_bad_ones_are_refused() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = parse_args(false, s(&["--seconds-per-step", "0.25", "--out", "/o"])).unwrap();
        assert_eq!(a.window, Duration::from_millis(250));
        assert_eq!(a.out.as_deref(), Some(Path::new("/o")));
        assert_eq!(
            parse_args(true, s(&["--cluster", "plain"]))
                .unwrap()
                .cluster,
            Some(Cluster::Plain)
        );
        assert_eq!(
            parse_args(false, s(&[])).unwrap().window,
            Duration::from_secs(5)
        );
        for (child, bad) in [
            (false, &["--seconds-per-step", "0"][..]),
            (false, &["--seconds-per-step", "x"]),
            (false, &["--cluster", "one"]),
            (true, &["--out", "/o"]),
            (true, &[]),
            (true, &["--cluster", "two"]),
            (false, &["--module"]),
        ] {
            assert!(parse_args(child, s(bad)).is_err(), "{bad:?}");
        }
    }
}
