//! `hsmpool-bench`: load the built module, initialise a token through PKCS #11, make keys, check
//! every kind of output independently, then measure throughput per thread count against the
//! same primitives run straight on aws-lc-rs.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::session::Session;
use hsmpool_bench::keys::{self, EcPublic, RsaPublic};
use hsmpool_bench::setup::{self, DataDir};
use hsmpool_bench::sweep::{self, ModuleKeys, Op, RawKeys, Step};
use hsmpool_bench::{Context, Error, Result};

const USAGE: &str = "\
hsmpool-bench: demonstrate and measure the hsmpool PKCS #11 module

USAGE:
    hsmpool-bench [OPTIONS]
    hsmpool-bench cluster [--module PATH] [--threads LIST] [--seconds-per-step N]
    hsmpool-bench lab [--module PATH] [--seconds-per-step N] [--out DIR]   (see lab --help)

Loads the module, initialises its token through PKCS #11 (C_InitToken, C_InitPIN), logs in,
generates RSA-2048, EC P-256 and AES-256 token keys, signs, verifies and encrypts through the
module and checks every output independently with aws-lc-rs, then measures throughput for
each thread count: RSA-2048 sign, ECDSA P-256 sign, AES-256-GCM 4 KiB encrypt and
C_GetSessionInfo (a call with no cryptography), each beside the same primitive run directly on
aws-lc-rs (the raw limit). Exits non-zero on any error or failed verification.

`cluster` runs the cluster benchmark instead: one and then three embedded members with the
simulator's timing model on (AWS CloudHSM hsm2m.medium figures), RSA-2048 and ECDSA P-256
signing at each thread count [default threads: 1,64,128; default 3 s per step], and prints the
64-thread/1-thread and three-member/one-member throughput ratios.

OPTIONS:
    --module PATH            the PKCS #11 module to load [default: $HSMPOOL_MODULE, else
                             libhsmpool_pkcs11.so next to this executable]
    --data DIR               keep the token's data in DIR (created if missing; a token already
                             there is re-initialised, which wipes it, and its SO PIN must be the
                             harness's) [default: a fresh temporary directory, removed at exit]
    --threads LIST           comma-separated thread counts for the sweep [default: 1,2,4,16,64]
    --seconds-per-step N     wall-clock seconds per operation and thread count, for the module
                             and again for the raw limit; 0 skips the sweep [default: 1]
    -h, --help               print this help

ENVIRONMENT:
    HSMPOOL_MODULE           the module, when --module is not given
    HSMPOOL_CONF             overwritten: the harness points it at the config it writes into the
                             data directory, so the module never opens a user's own token
";

/// The parsed command line.
#[derive(Debug)]
struct Args {
    module: Option<PathBuf>,
    data: Option<PathBuf>,
    threads: Vec<usize>,
    step: Duration,
}

/// What the command line asked for.
enum Parsed {
    Run(Args),
    Help,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Parsed> {
    let mut args = Args {
        module: None,
        data: None,
        threads: vec![1, 2, 4, 16, 64],
        step: Duration::from_secs(1),
    };
    while let Some(arg) = argv.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| Error(format!("{name} needs a value (see --help)")))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--module" => args.module = Some(PathBuf::from(value()?)),
            "--data" => args.data = Some(PathBuf::from(value()?)),
            "--threads" => {
                let v = value()?;
                args.threads = v
                    .split(',')
                    .map(|t| match t.trim().parse::<usize>() {
                        Ok(n) if (1..=4096).contains(&n) => Ok(n),
                        _ => Err(Error(format!(
                            "--threads: {t:?} is not a thread count from 1 to 4096"
                        ))),
                    })
                    .collect::<Result<_>>()?;
            }
            "--seconds-per-step" => {
                let v = value()?;
                args.step = v
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| {
                        Error(format!(
                            "--seconds-per-step: {v:?} is not a number of seconds"
                        ))
                    })?;
            }
            _ => return Err(Error(format!("unknown argument {arg:?} (see --help)"))),
        }
    }
    Ok(Parsed::Run(args))
}

/// `hsmpool-bench cluster [--module PATH] [--threads LIST] [--seconds-per-step N]` and its
/// child `cluster-child ... --members N`.
fn cluster_main(child: bool, argv: Vec<String>) -> Result<u64> {
    let mut module = None;
    let mut members = 1usize;
    let mut threads = vec![1usize, 64, 128];
    let mut window = Duration::from_secs(3);
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| Error(format!("{a} needs a value (see --help)")))
        };
        match a.as_str() {
            "--module" => module = Some(PathBuf::from(value()?)),
            "--members" if child => {
                members = value()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .ok_or_else(|| Error("--members: 1 to 16".into()))?
            }
            "--threads" => {
                threads = value()?
                    .split(',')
                    .map(|t| {
                        t.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|n| (1..=4096).contains(n))
                            .ok_or_else(|| Error(format!("--threads: bad count {t:?}")))
                    })
                    .collect::<Result<_>>()?
            }
            "--seconds-per-step" => {
                let v = value()?;
                window = v
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| Error(format!("--seconds-per-step: {v:?}")))?
            }
            _ => return Err(Error(format!("unknown argument {a:?} (see --help)"))),
        }
    }
    let module = setup::module_path(module.as_deref())?;
    if child {
        hsmpool_bench::cluster::run_child(
            &module,
            &hsmpool_bench::cluster::Plan {
                members,
                threads,
                window,
            },
        )?;
        Ok(0)
    } else {
        hsmpool_bench::cluster::run(&module, &threads, window)
    }
}

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if let Some(sub @ ("cluster" | "cluster-child")) = argv.first().map(String::as_str) {
        let child = sub == "cluster-child";
        argv.remove(0);
        return match cluster_main(child, argv) {
            Ok(0) => ExitCode::SUCCESS,
            Ok(n) => {
                eprintln!("hsmpool-bench: FAILED: {n} errors or failed verifications");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("hsmpool-bench: FAILED: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(sub @ ("lab" | "lab-child")) = argv.first().map(String::as_str) {
        let child = sub == "lab-child";
        return hsmpool_bench::lab::main(child, argv.split_off(1));
    }
    let args = match parse_args(argv.into_iter()) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("hsmpool-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failures) => {
            eprintln!("hsmpool-bench: FAILED: {failures} errors or failed verifications");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("hsmpool-bench: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Run `f`, printing `what` and how long it took.
fn timed<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t0 = Instant::now();
    let r = f();
    let took = t0.elapsed();
    let status = if r.is_ok() { "" } else { "  FAILED" };
    println!("  {what:<56} {:>10.2} ms{status}", took.as_secs_f64() * 1e3);
    r
}

/// The demo and the sweep; returns the number of failures counted along the way.
fn run(args: &Args) -> Result<u64> {
    let module = setup::module_path(args.module.as_deref())?;
    // Before the module is loaded and before any thread exists: see `DataDir::prepare`.
    let data = DataDir::prepare(args.data.as_deref(), "")?;
    println!("module   {}", module.display());
    let kept = if args.data.is_some() {
        "kept"
    } else {
        "temporary, removed at exit"
    };
    println!("data     {} ({kept})", data.path.display());
    println!();

    let pkcs11 = timed("load module, C_Initialize (OS locking)", || {
        setup::load(&module)
    })?;
    let slot = setup::slot(&pkcs11)?;
    let session = timed("C_InitToken, C_InitPIN, C_Login (user)", || {
        setup::init_token(&pkcs11, slot, "hsmpool-bench")
    })?;
    let rsa = timed("generate RSA-2048 key pair (token)", || {
        keys::generate_rsa(&session, "bench-rsa", true)
    })?;
    let ec = timed("generate EC P-256 key pair (token)", || {
        keys::generate_ec(&session, "bench-ec", true)
    })?;
    let aes = timed("generate AES-256 key (token)", || {
        keys::generate_aes(&session, "bench-aes", true)
    })?;
    let rsa_public = timed(
        "read RSA public key (CKA_MODULUS, CKA_PUBLIC_EXPONENT)",
        || {
            let k = RsaPublic::read(&session, rsa.public)?;
            match k.bits() {
                2048 => Ok(k),
                b => Err(Error(format!("the RSA modulus has {b} bits, not 2048"))),
            }
        },
    )?;
    let ec_public = timed("read EC public key (CKA_EC_POINT)", || {
        EcPublic::read(&session, ec.public)
    })?;
    let keys = ModuleKeys {
        rsa,
        rsa_public,
        ec,
        ec_public,
        aes,
    };

    timed(
        "sign+verify CKM_SHA256_RSA_PKCS, check with aws-lc-rs",
        || {
            sign_verify(&session, &Mechanism::Sha256RsaPkcs, &keys.rsa, |m, s| {
                keys.rsa_public.verify_sha256_pkcs1(m, s)
            })
        },
    )?;
    timed("sign+verify CKM_ECDSA_SHA256, check with aws-lc-rs", || {
        sign_verify(&session, &Mechanism::EcdsaSha256, &keys.ec, |m, s| {
            keys.ec_public.verify_sha256(m, s)
        })
    })?;
    timed("AES-256-GCM 4 KiB encrypt+decrypt round trip", || {
        gcm_round_trip(&session, &keys)
    })?;

    let mut failures = 0;
    if !args.step.is_zero() {
        let raw = RawKeys::generate()?;
        failures += sweep_table(&pkcs11, slot, &keys, &raw, args)?;
    }

    session.logout().context("C_Logout")?;
    session.close().context("C_CloseSession")?;
    pkcs11.finalize().context("C_Finalize")?;
    drop(data);
    Ok(failures)
}

/// Sign a message through the module, verify it through the module and with `independent`, and
/// make sure both reject a signature over a different message.
fn sign_verify(
    s: &Session,
    mech: &Mechanism,
    kp: &keys::KeyPair,
    independent: impl Fn(&[u8], &[u8]) -> bool,
) -> Result<()> {
    let msg = b"hsmpool-bench: a message to sign";
    let sig = s.sign(mech, kp.private, msg).context("C_Sign")?;
    s.verify(mech, kp.public, msg, &sig).context("C_Verify")?;
    if !independent(msg, &sig) {
        return Err(Error("aws-lc-rs rejects the module's signature".into()));
    }
    let other = b"hsmpool-bench: a different message";
    if independent(other, &sig) {
        return Err(Error(
            "aws-lc-rs accepts the signature for another message".into(),
        ));
    }
    if s.verify(mech, kp.public, other, &sig).is_ok() {
        return Err(Error(
            "C_Verify accepts the signature for another message".into(),
        ));
    }
    Ok(())
}

/// Encrypt 4 KiB with AES-256-GCM through the module and decrypt it back.
fn gcm_round_trip(s: &Session, k: &ModuleKeys) -> Result<()> {
    let pt: Vec<u8> = (0..sweep::AES_MSG_LEN).map(|i| (i * 7) as u8).collect();
    let mut iv = [0x42; keys::GCM_IV_LEN];
    let ct = s
        .encrypt(&keys::gcm(&mut iv)?, k.aes, &pt)
        .context("C_Encrypt")?;
    if ct.len() != pt.len() + 16 || ct[..pt.len()] == pt[..] {
        return Err(Error(format!(
            "C_Encrypt gave {} bytes, expected the ciphertext and a 16-byte tag",
            ct.len()
        )));
    }
    let back = s
        .decrypt(&keys::gcm(&mut iv)?, k.aes, &ct)
        .context("C_Decrypt")?;
    if back != pt {
        return Err(Error("C_Decrypt does not give back the plaintext".into()));
    }
    let mut tampered = ct.clone();
    tampered[0] ^= 1;
    if s.decrypt(&keys::gcm(&mut iv)?, k.aes, &tampered).is_ok() {
        return Err(Error("C_Decrypt accepts a tampered ciphertext".into()));
    }
    Ok(())
}

/// Microseconds for the table, or a dash.
fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// Run the sweep, printing one row per operation and thread count; returns the failures.
fn sweep_table(
    pkcs11: &cryptoki::context::Pkcs11,
    slot: cryptoki::slot::Slot,
    keys: &ModuleKeys,
    raw: &RawKeys,
    args: &Args,
) -> Result<u64> {
    println!();
    println!(
        "throughput: {} s of wall-clock time per row for the module, then as long for the raw limit \
         (aws-lc-rs in this process); one session per thread; samples verified after each window",
        args.step.as_secs_f64()
    );
    println!();
    println!(
        "{:<20} {:>7} {:>12} {:>10} {:>10}   {:>12} {:>10} {:>10}   {:>10} {:>7}",
        "operation",
        "threads",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "raw ops/s",
        "raw p50",
        "raw p99",
        "module/raw",
        "errors"
    );
    let mut failures = 0;
    for op in Op::ALL {
        for &threads in &args.threads {
            let m = sweep::run_module(pkcs11, slot, keys, op, threads, args.step);
            let r = sweep::run_raw(raw, op, threads, args.step);
            let ratio = r
                .as_ref()
                .map(Step::ops_per_s)
                .filter(|&v| v > 0.0)
                .map(|v| m.ops_per_s() / v);
            let errs = m.failures() + r.as_ref().map_or(0, Step::failures);
            failures += errs;
            println!(
                "{:<20} {:>7} {:>12.0} {:>10} {:>10}   {:>12} {:>10} {:>10}   {:>10} {:>7}",
                op.name(),
                threads,
                m.ops_per_s(),
                us(m.percentile_us(50.0)),
                us(m.percentile_us(99.0)),
                r.as_ref()
                    .map_or_else(|| "-".into(), |r| format!("{:.0}", r.ops_per_s())),
                us(r.as_ref().and_then(|r| r.percentile_us(50.0))),
                us(r.as_ref().and_then(|r| r.percentile_us(99.0))),
                ratio.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
                errs,
            );
        }
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Parsed> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn options_parse_in_both_spellings_and_defaults_hold() {
        let Ok(Parsed::Run(a)) = parse(&[]) else {
            panic!("no arguments run the defaults")
        };
        assert_eq!(a.threads, [1, 2, 4, 16, 64]);
        assert_eq!(a.step, Duration::from_secs(1));
        let Ok(Parsed::Run(a)) = parse(&[
            "--threads",
            "1,2,4",
            "--seconds-per-step=0.5",
            "--module=/m.so",
            "--data",
            "/d",
        ]) else {
            panic!("valid options parse")
        };
        assert_eq!(a.threads, [1, 2, 4]);
        assert_eq!(a.step, Duration::from_millis(500));
        assert_eq!(a.module.as_deref(), Some(std::path::Path::new("/m.so")));
        assert_eq!(a.data.as_deref(), Some(std::path::Path::new("/d")));
        assert!(matches!(parse(&["--help"]), Ok(Parsed::Help)));
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            &["--threads", "0"][..],
            &["--threads", "a"],
            &["--seconds-per-step", "-1"],
            &["--frobnicate"],
            &["--module"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
