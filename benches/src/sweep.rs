//! Throughput over threads: each thread runs one operation back to back for a fixed wall-clock
//! window, timing every call; outputs kept as samples are checked after the window closes, so
//! checking never counts against throughput.
//!
//! The same primitive is also run straight on aws-lc-rs at the same thread count (the "raw
//! limit"), so the cost the module adds can be read off as a ratio.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair, UnparsedPublicKey};
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState};
use cryptoki::slot::Slot;

use crate::keys::{self, EcPublic, KeyPair, RsaPublic, GCM_IV_LEN};
use crate::{Context, Error, Result};

/// Bytes signed per signature.
pub const SIGN_MSG_LEN: usize = 64;
/// Bytes encrypted per AES-GCM operation.
pub const AES_MSG_LEN: usize = 4096;

/// An operation the sweep measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `CKM_SHA256_RSA_PKCS` over [`SIGN_MSG_LEN`] bytes, RSA-2048.
    RsaSign,
    /// `CKM_ECDSA_SHA256` over [`SIGN_MSG_LEN`] bytes, P-256.
    EcdsaSign,
    /// `CKM_AES_GCM` encryption of [`AES_MSG_LEN`] bytes, AES-256.
    AesGcmEncrypt,
    /// `C_GetSessionInfo`: the cost of a call that does no cryptography.
    SessionInfo,
}

impl Op {
    /// Every operation, in the order the sweep runs them.
    pub const ALL: [Op; 4] = [
        Op::RsaSign,
        Op::EcdsaSign,
        Op::AesGcmEncrypt,
        Op::SessionInfo,
    ];

    /// The name printed in the table.
    pub fn name(self) -> &'static str {
        match self {
            Op::RsaSign => "RSA-2048 sign",
            Op::EcdsaSign => "ECDSA P-256 sign",
            Op::AesGcmEncrypt => "AES-256-GCM 4K enc",
            Op::SessionInfo => "C_GetSessionInfo",
        }
    }
}

/// The outcome of one timed window.
#[derive(Debug, Default)]
pub struct Step {
    /// Operations that succeeded inside the window.
    pub ops: u64,
    /// Operations (or per-thread set-up) that returned an error.
    pub errors: u64,
    /// Kept sample outputs that failed their check after the window.
    pub failed_checks: u64,
    /// Kept sample outputs that passed their check.
    pub checked: u64,
    /// From releasing the threads to the last one finishing its last call.
    pub elapsed: Duration,
    /// Latency of every successful call, sorted, in nanoseconds.
    latencies_ns: Vec<u64>,
}

impl Step {
    /// Successful operations per second of wall-clock time.
    pub fn ops_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ops as f64 / s
        } else {
            0.0
        }
    }

    /// The `p`-th percentile latency (0 < p <= 100) in microseconds, nearest-rank.
    pub fn percentile_us(&self, p: f64) -> Option<f64> {
        let n = self.latencies_ns.len();
        if n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        Some(self.latencies_ns[rank.clamp(1, n) - 1] as f64 / 1000.0)
    }

    /// Errors and failed checks together: anything that makes the run fail.
    pub fn failures(&self) -> u64 {
        self.errors + self.failed_checks
    }
}

/// One thread's share of a step: an operation to repeat, and a check of what it kept.
pub trait Worker: Send {
    /// Run operation number `i` of this thread once.
    fn op(&mut self, i: u64) -> Result<()>;
    /// After the window: check the outputs kept as samples; returns how many were checked.
    fn check(&mut self) -> Result<u64>;
}

/// Run `threads` workers made by `make(thread_index)` for `window` of wall-clock time.
///
/// Workers are made (sessions opened) before the clock starts; the window opens when every
/// thread is ready and closes when the last call in flight at its end returns.
pub fn measure<W, F>(threads: usize, window: Duration, make: F) -> Step
where
    W: Worker,
    F: Fn(usize) -> Result<W> + Sync,
{
    // Two barriers: every worker is made (`ready`) before the clock is read, and the clock is
    // read before any worker may start (`go`). With one barrier, 64 runnable workers on a small
    // machine could run for a long time before the main thread got back to reading the clock,
    // counting work done outside the window.
    let ready = Barrier::new(threads + 1);
    let go = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let note = |e: &Error| {
        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| e.0.clone());
    };
    let mut step = Step::default();
    let mut finished = Vec::with_capacity(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (ready, go, stop, make, note) = (&ready, &go, &stop, &make, &note);
                s.spawn(move || {
                    let worker = make(t);
                    ready.wait();
                    go.wait();
                    let mut worker = match worker {
                        Ok(w) => w,
                        Err(e) => {
                            note(&e);
                            return (None, Vec::new(), 0, 1);
                        }
                    };
                    let mut latencies_ns = Vec::with_capacity(1 << 14);
                    let (mut ops, mut errors) = (0u64, 0u64);
                    let mut i = 0u64;
                    // Every worker makes at least one call, even one first scheduled after the
                    // window closed (the window then stretches to cover it), so each thread's
                    // session is exercised and checked.
                    loop {
                        let t0 = Instant::now();
                        let r = worker.op(i);
                        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        match r {
                            Ok(()) => {
                                ops += 1;
                                latencies_ns.push(ns);
                            }
                            Err(e) => {
                                errors += 1;
                                note(&e);
                            }
                        }
                        i += 1;
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    (Some(worker), latencies_ns, ops, errors)
                })
            })
            .collect();
        ready.wait();
        let started = Instant::now();
        go.wait();
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            match h.join() {
                Ok(r) => finished.push(r),
                Err(_) => {
                    note(&Error("a worker thread panicked".into()));
                    step.errors += 1;
                }
            }
        }
        step.elapsed = started.elapsed();
    });
    // Outside the window: check the samples, merge the latencies.
    for (worker, latencies_ns, ops, errors) in finished {
        step.ops += ops;
        step.errors += errors;
        step.latencies_ns.extend_from_slice(&latencies_ns);
        if let Some(mut w) = worker {
            match w.check() {
                Ok(n) => step.checked += n,
                Err(e) => {
                    note(&e);
                    step.failed_checks += 1;
                }
            }
        }
    }
    step.latencies_ns.sort_unstable();
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        eprintln!("  first error in this step: {e}");
    }
    step
}

/// A distinct 32-bit prefix for the AES-GCM IVs of each worker, so no (key, IV) pair repeats
/// across threads or steps of one run.
fn next_iv_prefix() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A 96-bit IV: the worker's prefix, then its operation number.
fn iv(prefix: u32, i: u64) -> [u8; GCM_IV_LEN] {
    let mut iv = [0u8; GCM_IV_LEN];
    iv[..4].copy_from_slice(&prefix.to_be_bytes());
    iv[4..].copy_from_slice(&i.to_be_bytes());
    iv
}

/// The message thread `t` signs as its operation `i`: distinct per call.
fn sign_message(t: usize, i: u64) -> [u8; SIGN_MSG_LEN] {
    let mut m = [0x5a; SIGN_MSG_LEN];
    m[..8].copy_from_slice(&(t as u64).to_be_bytes());
    m[8..16].copy_from_slice(&i.to_be_bytes());
    m
}

/// The plaintext every AES-GCM operation encrypts.
fn aes_plaintext() -> Vec<u8> {
    (0..AES_MSG_LEN).map(|i| (i % 251) as u8).collect()
}

/// The module's keys the sweep uses, with their public halves read back.
#[derive(Clone, Debug)]
pub struct ModuleKeys {
    /// RSA-2048 key pair.
    pub rsa: KeyPair,
    /// Its public key.
    pub rsa_public: RsaPublic,
    /// P-256 key pair.
    pub ec: KeyPair,
    /// Its public key.
    pub ec_public: EcPublic,
    /// AES-256 key.
    pub aes: ObjectHandle,
}

/// A sample kept from one thread: the first and the last output, with their operation numbers.
#[derive(Debug, Default)]
struct Samples {
    first: Option<(u64, Vec<u8>)>,
    last: Option<(u64, Vec<u8>)>,
}

impl Samples {
    fn keep(&mut self, i: u64, out: Vec<u8>) {
        if self.first.is_none() {
            self.first = Some((i, out));
        } else {
            self.last = Some((i, out));
        }
    }

    fn all(&self) -> impl Iterator<Item = &(u64, Vec<u8>)> {
        self.first.iter().chain(self.last.iter())
    }
}

/// One thread calling the module through its own session.
struct ModuleWorker<'a> {
    op: Op,
    thread: usize,
    session: Session,
    keys: &'a ModuleKeys,
    iv_prefix: u32,
    plaintext: Vec<u8>,
    samples: Samples,
    state: Option<SessionState>,
}

impl Worker for ModuleWorker<'_> {
    fn op(&mut self, i: u64) -> Result<()> {
        match self.op {
            Op::RsaSign => {
                let sig = self
                    .session
                    .sign(
                        &Mechanism::Sha256RsaPkcs,
                        self.keys.rsa.private,
                        &sign_message(self.thread, i),
                    )
                    .context("C_Sign (CKM_SHA256_RSA_PKCS)")?;
                self.samples.keep(i, sig);
            }
            Op::EcdsaSign => {
                let sig = self
                    .session
                    .sign(
                        &Mechanism::EcdsaSha256,
                        self.keys.ec.private,
                        &sign_message(self.thread, i),
                    )
                    .context("C_Sign (CKM_ECDSA_SHA256)")?;
                self.samples.keep(i, sig);
            }
            Op::AesGcmEncrypt => {
                let mut iv = iv(self.iv_prefix, i);
                let ct = self
                    .session
                    .encrypt(&keys::gcm(&mut iv)?, self.keys.aes, &self.plaintext)
                    .context("C_Encrypt (CKM_AES_GCM)")?;
                self.samples.keep(i, ct);
            }
            Op::SessionInfo => {
                let info = self
                    .session
                    .get_session_info()
                    .context("C_GetSessionInfo")?;
                self.state = Some(info.session_state());
            }
        }
        Ok(())
    }

    fn check(&mut self) -> Result<u64> {
        if self.op == Op::SessionInfo {
            // Sessions opened after the one login must see it: PKCS #11 logins are per application.
            return match self.state {
                Some(SessionState::RoUser) => Ok(1),
                other => Err(Error(format!(
                    "C_GetSessionInfo: state {other:?}, expected RoUser"
                ))),
            };
        }
        let mut n = 0;
        for (i, out) in self.samples.all() {
            let ok = match self.op {
                Op::RsaSign => self
                    .keys
                    .rsa_public
                    .verify_sha256_pkcs1(&sign_message(self.thread, *i), out),
                Op::EcdsaSign => self
                    .keys
                    .ec_public
                    .verify_sha256(&sign_message(self.thread, *i), out),
                Op::AesGcmEncrypt => {
                    let mut iv = iv(self.iv_prefix, *i);
                    let pt = self
                        .session
                        .decrypt(&keys::gcm(&mut iv)?, self.keys.aes, out)
                        .context("C_Decrypt (CKM_AES_GCM)")?;
                    out.len() == AES_MSG_LEN + 16 && pt == self.plaintext
                }
                Op::SessionInfo => true,
            };
            if !ok {
                return Err(Error(format!(
                    "{}: thread {} output {i} does not verify",
                    self.op.name(),
                    self.thread
                )));
            }
            n += 1;
        }
        Ok(n)
    }
}

/// Measure `op` through the module: `threads` threads, each with its own R/O session opened
/// after the user logged in.
pub fn run_module(
    pkcs11: &Pkcs11,
    slot: Slot,
    keys: &ModuleKeys,
    op: Op,
    threads: usize,
    window: Duration,
) -> Step {
    measure(threads, window, |thread| {
        Ok(ModuleWorker {
            op,
            thread,
            session: pkcs11.open_ro_session(slot).context("C_OpenSession")?,
            keys,
            iv_prefix: next_iv_prefix(),
            plaintext: if op == Op::AesGcmEncrypt {
                aes_plaintext()
            } else {
                Vec::new()
            },
            samples: Samples::default(),
            state: None,
        })
    })
}

/// The same primitives in-process with aws-lc-rs: the ceiling the module is measured against.
pub struct RawKeys {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    aes: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for RawKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawKeys { .. }")
    }
}

impl RawKeys {
    /// Fresh RSA-2048, P-256 and AES-256 keys.
    pub fn generate() -> Result<RawKeys> {
        let rng = SystemRandom::new();
        let mut aes_key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut aes_key).context("aws-lc-rs random")?;
        Ok(RawKeys {
            rsa: RsaKeyPair::generate(KeySize::Rsa2048).context("aws-lc-rs RSA-2048 generation")?,
            ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                .context("aws-lc-rs P-256 generation")?,
            aes: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &aes_key).context("aws-lc-rs AES-256 key")?,
            ),
            rng,
        })
    }
}

/// One thread calling aws-lc-rs directly.
struct RawWorker<'a> {
    op: Op,
    thread: usize,
    keys: &'a RawKeys,
    iv_prefix: u32,
    plaintext: Vec<u8>,
    samples: Samples,
}

impl Worker for RawWorker<'_> {
    fn op(&mut self, i: u64) -> Result<()> {
        let out = match self.op {
            Op::RsaSign => {
                let mut sig = vec![0; self.keys.rsa.public_modulus_len()];
                self.keys
                    .rsa
                    .sign(
                        &signature::RSA_PKCS1_SHA256,
                        &self.keys.rng,
                        &sign_message(self.thread, i),
                        &mut sig,
                    )
                    .context("aws-lc-rs RSA sign")?;
                sig
            }
            Op::EcdsaSign => {
                let sig = self
                    .keys
                    .ec
                    .sign(&self.keys.rng, &sign_message(self.thread, i))
                    .context("aws-lc-rs ECDSA sign")?;
                sig.as_ref().to_vec()
            }
            Op::AesGcmEncrypt => {
                let nonce = Nonce::assume_unique_for_key(iv(self.iv_prefix, i));
                let mut buf = self.plaintext.clone();
                self.keys
                    .aes
                    .seal_in_place_append_tag(nonce, Aad::empty(), &mut buf)
                    .context("aws-lc-rs AES-GCM seal")?;
                buf
            }
            Op::SessionInfo => return Err(Error("C_GetSessionInfo has no raw counterpart".into())),
        };
        self.samples.keep(i, out);
        Ok(())
    }

    fn check(&mut self) -> Result<u64> {
        let mut n = 0;
        for (i, out) in self.samples.all() {
            let msg = sign_message(self.thread, *i);
            let ok = match self.op {
                Op::RsaSign => UnparsedPublicKey::new(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    self.keys.rsa.public_key().as_ref(),
                )
                .verify(&msg, out)
                .is_ok(),
                Op::EcdsaSign => UnparsedPublicKey::new(
                    &signature::ECDSA_P256_SHA256_FIXED,
                    self.keys.ec.public_key().as_ref(),
                )
                .verify(&msg, out)
                .is_ok(),
                Op::AesGcmEncrypt => {
                    let mut buf = out.clone();
                    let nonce = Nonce::assume_unique_for_key(iv(self.iv_prefix, *i));
                    matches!(self.keys.aes.open_in_place(nonce, Aad::empty(), &mut buf), Ok(pt) if pt == &self.plaintext[..])
                }
                Op::SessionInfo => true,
            };
            if !ok {
                return Err(Error(format!(
                    "raw {}: thread {} output {i} does not verify",
                    self.op.name(),
                    self.thread
                )));
            }
            n += 1;
        }
        Ok(n)
    }
}

/// Measure `op` straight on aws-lc-rs; `None` for an operation with no cryptography to compare.
pub fn run_raw(keys: &RawKeys, op: Op, threads: usize, window: Duration) -> Option<Step> {
    if op == Op::SessionInfo {
        return None;
    }
    Some(measure(threads, window, |thread| {
        Ok(RawWorker {
            op,
            thread,
            keys,
            iv_prefix: next_iv_prefix(),
            plaintext: if op == Op::AesGcmEncrypt {
                aes_plaintext()
            } else {
                Vec::new()
            },
            samples: Samples::default(),
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        checked: bool,
    }

    impl Worker for Counter {
        fn op(&mut self, i: u64) -> Result<()> {
            if i % 2 == 1 {
                Err(Error("odd".into()))
            } else {
                Ok(())
            }
        }
        fn check(&mut self) -> Result<u64> {
            self.checked = true;
            Ok(1)
        }
    }

    #[test]
    fn a_step_counts_successes_and_errors_apart_and_checks_every_worker() {
        let step = measure(3, Duration::from_millis(50), |_| {
            Ok(Counter { checked: false })
        });
        assert!(step.ops > 0 && step.errors > 0);
        assert!(
            step.ops.abs_diff(step.errors) <= 3,
            "every other call fails: {} ok, {} errors",
            step.ops,
            step.errors
        );
        assert_eq!(step.checked, 3);
        assert_eq!(step.latencies_ns.len() as u64, step.ops);
        assert!(step.elapsed >= Duration::from_millis(50));
    }

    #[test]
    fn a_failed_setup_is_an_error_not_a_hang() {
        let step = measure(2, Duration::from_millis(10), |t| {
            if t == 0 {
                Err(Error("no session".into()))
            } else {
                Ok(Counter { checked: false })
            }
        });
        assert!(step.errors >= 1);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let step = Step {
            latencies_ns: (1..=100).map(|v| v * 1000).collect(),
            ..Step::default()
        };
        assert_eq!(step.percentile_us(50.0), Some(50.0));
        assert_eq!(step.percentile_us(99.0), Some(99.0));
        assert_eq!(Step::default().percentile_us(50.0), None);
    }

    #[test]
    fn raw_samples_verify_and_ivs_do_not_repeat() {
        let keys = RawKeys::generate().unwrap();
        for op in [Op::RsaSign, Op::EcdsaSign, Op::AesGcmEncrypt] {
            let step = run_raw(&keys, op, 2, Duration::from_millis(20)).unwrap();
            assert_eq!(step.failures(), 0, "{op:?}");
            assert!(step.checked >= 2, "{op:?}: {} checked", step.checked);
        }
        assert_ne!(iv(next_iv_prefix(), 0), iv(next_iv_prefix(), 0));
    }
}
