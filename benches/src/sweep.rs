//! Throughput over threads: each thread runs one operation back to back for a fixed wall-clock
//! window, timing every call; outputs kept as samples are checked after the window closes, so
//! checking never counts against throughput.
//!
//! The same primitive is also run straight on aws-lc-rs at the same thread count (the "raw
//! limit"), so the cost a module adds can be read off as a ratio.
//!
//! What is checked after each window (a module that returns garbage cannot score):
//! signatures (the first and last of every thread) with the module's `C_Verify` and with
//! aws-lc-rs from the public key read back; verifications by making sure the module rejects a
//! tampered signature; AES-GCM and AES-CBC-PAD ciphertexts and HMACs byte for byte against
//! aws-lc-rs under the known imported keys; digests against aws-lc-rs; finds against the one
//! handle expected; generated keys by reading their value back and checking an encryption with
//! it; random output by its length and that it is not one repeated byte.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::cipher::{
    DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey,
    UnboundCipherKey, AES_256,
};
use aws_lc_rs::digest;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, KeyPair as _, ParsedPublicKey, RsaKeyPair, UnparsedPublicKey,
};
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};
use cryptoki::slot::Slot;

use crate::keys::{self, EcPublic, KeyPair, RsaPublic, GCM_IV_LEN};
use crate::stats::{self, Histogram};
use crate::{Context, Error, Result};

/// Bytes signed per signature.
pub const SIGN_MSG_LEN: usize = 64;
/// Bytes encrypted per AES-GCM or AES-CBC-PAD operation, and digested per SHA-256.
pub const AES_MSG_LEN: usize = 4096;
/// Bytes MACed per HMAC.
pub const HMAC_MSG_LEN: usize = 1024;
/// Bytes asked of `C_GenerateRandom`.
pub const RANDOM_LEN: usize = 32;
/// Label of the AES keys the key-generation rows make (and destroy).
pub const GENERATED_LABEL: &str = "hsmpool-bench-generated";

/// An operation the sweep measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `CKM_SHA256_RSA_PKCS` over [`SIGN_MSG_LEN`] bytes, RSA-2048.
    RsaSign,
    /// `CKM_RSA_PKCS` over the SHA-256 DigestInfo of [`SIGN_MSG_LEN`] bytes (hashed in the op).
    RsaPkcsSign,
    /// `CKM_SHA256_RSA_PKCS` verification, RSA-2048.
    RsaVerify,
    /// `CKM_ECDSA_SHA256` (or `CKM_ECDSA` over a SHA-256 digest) over [`SIGN_MSG_LEN`] bytes, P-256.
    EcdsaSign,
    /// ECDSA P-256 verification, the same mechanism as [`Op::EcdsaSign`].
    EcdsaVerify,
    /// `CKM_AES_GCM` encryption of [`AES_MSG_LEN`] bytes, AES-256.
    AesGcmEncrypt,
    /// `CKM_AES_CBC_PAD` encryption of [`AES_MSG_LEN`] bytes, AES-256.
    AesCbcPadEncrypt,
    /// `CKM_SHA256_HMAC` over [`HMAC_MSG_LEN`] bytes.
    HmacSign,
    /// `C_Digest` with `CKM_SHA256` over [`AES_MSG_LEN`] bytes.
    Sha256Digest,
    /// `C_FindObjectsInit` / `C_FindObjects` / `C_FindObjectsFinal` for one label.
    FindByLabel,
    /// `C_GenerateKey` of a session AES-256 key, then `C_DestroyObject` of it, in the op.
    SessionKeyGen,
    /// `C_GenerateKey` of a token AES-256 key; destroyed after the window.
    TokenKeyGen,
    /// `C_GenerateRandom` of [`RANDOM_LEN`] bytes.
    Random,
    /// `C_GetSessionInfo`: the cost of a call that does no cryptography.
    SessionInfo,
}

impl Op {
    /// Every operation, in the order the sweep runs them. Token key generation comes last: it
    /// grows the store (and the process's memory, which the allocator keeps after the keys are
    /// destroyed), so the peak RSS of every other step is read before that.
    pub const ALL: [Op; 14] = [
        Op::RsaSign,
        Op::RsaPkcsSign,
        Op::RsaVerify,
        Op::EcdsaSign,
        Op::EcdsaVerify,
        Op::AesGcmEncrypt,
        Op::AesCbcPadEncrypt,
        Op::HmacSign,
        Op::Sha256Digest,
        Op::FindByLabel,
        Op::SessionKeyGen,
        Op::Random,
        Op::SessionInfo,
        Op::TokenKeyGen,
    ];

    /// The name printed in the table.
    pub fn name(self) -> &'static str {
        match self {
            Op::RsaSign => "RSA-2048 sign",
            Op::RsaPkcsSign => "RSA-2048 DigestInfo",
            Op::RsaVerify => "RSA-2048 verify",
            Op::EcdsaSign => "ECDSA P-256 sign",
            Op::EcdsaVerify => "ECDSA P-256 verify",
            Op::AesGcmEncrypt => "AES-256-GCM 4K enc",
            Op::AesCbcPadEncrypt => "AES-256-CBC-PAD 4K",
            Op::HmacSign => "HMAC-SHA256 1K",
            Op::Sha256Digest => "SHA-256 4K",
            Op::FindByLabel => "find by label",
            Op::SessionKeyGen => "AES keygen session",
            Op::TokenKeyGen => "AES keygen token",
            Op::Random => "random 32 B",
            Op::SessionInfo => "C_GetSessionInfo",
        }
    }

    /// The short name for `--ops`, the CSV and the JSON.
    pub fn slug(self) -> &'static str {
        match self {
            Op::RsaSign => "rsa-sign",
            Op::RsaPkcsSign => "rsa-pkcs-sign",
            Op::RsaVerify => "rsa-verify",
            Op::EcdsaSign => "ecdsa-sign",
            Op::EcdsaVerify => "ecdsa-verify",
            Op::AesGcmEncrypt => "aes-gcm",
            Op::AesCbcPadEncrypt => "aes-cbc-pad",
            Op::HmacSign => "hmac",
            Op::Sha256Digest => "sha256",
            Op::FindByLabel => "find",
            Op::SessionKeyGen => "session-keygen",
            Op::TokenKeyGen => "token-keygen",
            Op::Random => "random",
            Op::SessionInfo => "session-info",
        }
    }

    /// The operation named `slug`.
    pub fn from_slug(slug: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.slug() == slug)
    }

    /// Whether the sweep also runs this operation straight on aws-lc-rs.
    pub fn has_raw(self) -> bool {
        !matches!(
            self,
            Op::FindByLabel | Op::SessionKeyGen | Op::TokenKeyGen | Op::SessionInfo
        )
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
    /// Successful operations of each thread, in thread order.
    pub per_thread_ops: Vec<u64>,
    /// Latency of every successful call, nanoseconds.
    pub latency: Histogram,
    /// CPU time of the whole process (user + system, every thread) during the window.
    pub cpu: Option<Duration>,
    /// Peak resident set size during the step (sessions opened, window, checks), KiB; the
    /// process's lifetime peak when the kernel does not let it be reset.
    pub peak_rss_kib: Option<u64>,
    /// The first error or failed check of the step, if any.
    pub first_error: Option<String>,
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

    /// Successful operations per second per thread (the mean over threads).
    pub fn ops_per_s_per_thread(&self) -> f64 {
        self.ops_per_s() / self.per_thread_ops.len().max(1) as f64
    }

    /// The `p`-th percentile latency (0 < p <= 100) in microseconds, nearest-rank (to the
    /// histogram's 1.6% resolution, rounded up).
    pub fn percentile_us(&self, p: f64) -> Option<f64> {
        self.latency.percentile(p).map(|ns| ns as f64 / 1000.0)
    }

    /// Jain's fairness index of the per-thread operation counts (1 = every thread did as much).
    pub fn jain(&self) -> Option<f64> {
        stats::jain_index(&self.per_thread_ops)
    }

    /// CPU seconds used per second of wall-clock time (2.0 = two cores busy).
    pub fn cpu_cores(&self) -> Option<f64> {
        let s = self.elapsed.as_secs_f64();
        self.cpu.filter(|_| s > 0.0).map(|c| c.as_secs_f64() / s)
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

/// What one worker thread hands back when the window closes.
struct Finished<W> {
    worker: Option<W>,
    latency: Histogram,
    ops: u64,
    errors: u64,
    /// When its last call returned.
    ended: Option<Instant>,
}

/// Run `threads` workers made by `make(thread_index)` for `window` of wall-clock time.
///
/// Workers are made (sessions opened) before the clock starts; the window opens when every
/// thread is ready and closes when the last call in flight at its end returns: each worker
/// stops on its own clock at the deadline, so a main thread that is slow to be scheduled on a
/// loaded machine neither stretches the step nor skews its rate. The process's
/// CPU time is read at both ends of the window; its peak RSS is reset (where the kernel allows)
/// before the workers are made and read after the checks.
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
    let deadline: OnceLock<Instant> = OnceLock::new();
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let note = |e: &Error| {
        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| e.0.clone());
    };
    stats::reset_peak_rss();
    let mut step = Step::default();
    let mut finished: Vec<Finished<W>> = Vec::with_capacity(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (ready, go, make, note, deadline) = (&ready, &go, &make, &note, &deadline);
                s.spawn(move || {
                    let worker = make(t);
                    ready.wait();
                    go.wait();
                    // Set by the main thread before it passed `go`.
                    let deadline = deadline.get().copied().unwrap_or_else(Instant::now);
                    let mut worker = match worker {
                        Ok(w) => w,
                        Err(e) => {
                            note(&e);
                            return Finished {
                                worker: None,
                                latency: Histogram::default(),
                                ops: 0,
                                errors: 1,
                                ended: None,
                            };
                        }
                    };
                    let mut latency = Histogram::default();
                    let (mut ops, mut errors) = (0u64, 0u64);
                    let mut i = 0u64;
                    let mut ended;
                    // Every worker makes at least one call, even one first scheduled after the
                    // window closed (the window then stretches to cover it), so each thread's
                    // session is exercised and checked.
                    loop {
                        let t0 = Instant::now();
                        let r = worker.op(i);
                        ended = Instant::now();
                        let ns = u64::try_from((ended - t0).as_nanos()).unwrap_or(u64::MAX);
                        match r {
                            Ok(()) => {
                                ops += 1;
                                latency.record(ns);
                            }
                            Err(e) => {
                                errors += 1;
                                note(&e);
                            }
                        }
                        i += 1;
                        // Only the deadline ends the loop: a stop flag seen just after a call
                        // that ended before the deadline made a window shorter than asked.
                        if ended >= deadline {
                            break;
                        }
                    }
                    Finished {
                        worker: Some(worker),
                        latency,
                        ops,
                        errors,
                        ended: Some(ended),
                    }
                })
            })
            .collect();
        ready.wait();
        let cpu0 = stats::process_cpu();
        let started = Instant::now();
        let _ = deadline.set(started + window);
        go.wait();
        for h in handles {
            match h.join() {
                Ok(r) => finished.push(r),
                Err(_) => {
                    note(&Error("a worker thread panicked".into()));
                    step.errors += 1;
                    step.per_thread_ops.push(0);
                }
            }
        }
        // To the last call's return, as the workers saw it (not when this thread got to run).
        step.elapsed = finished.iter().filter_map(|f| f.ended).max().map_or_else(
            || started.elapsed(),
            |end| end.saturating_duration_since(started),
        );
        step.cpu = match (cpu0, stats::process_cpu()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
    });
    // Outside the window: check the samples, merge the latencies.
    for f in &mut finished {
        step.ops += f.ops;
        step.errors += f.errors;
        step.per_thread_ops.push(f.ops);
        step.latency.merge(&f.latency);
        if let Some(w) = f.worker.as_mut() {
            match w.check() {
                Ok(n) => step.checked += n,
                Err(e) => {
                    note(&e);
                    step.failed_checks += 1;
                }
            }
        }
    }
    step.peak_rss_kib = stats::peak_rss_kib();
    // Workers (and their sessions) go only now, so the peak above covers them.
    drop(finished);
    step.first_error = first_error.into_inner().unwrap_or_else(|p| p.into_inner());
    step
}

/// A distinct 32-bit prefix for the IVs of each worker, so no (key, IV) pair repeats across
/// threads or steps of one run.
fn next_iv_prefix() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A 96-bit GCM IV: the worker's prefix, then its operation number.
fn iv(prefix: u32, i: u64) -> [u8; GCM_IV_LEN] {
    let mut iv = [0u8; GCM_IV_LEN];
    iv[..4].copy_from_slice(&prefix.to_be_bytes());
    iv[4..].copy_from_slice(&i.to_be_bytes());
    iv
}

/// A 128-bit CBC IV: the worker's prefix, its operation number, then a constant.
fn cbc_iv(prefix: u32, i: u64) -> [u8; 16] {
    let mut out = [0xcb; 16];
    out[..GCM_IV_LEN].copy_from_slice(&iv(prefix, i));
    out
}

/// Thread `t` and operation `i`, written over the first 16 bytes of `buf`: every message
/// signed, MACed or digested is distinct, so no module can answer from a cache.
fn stamp(buf: &mut [u8], t: usize, i: u64) {
    buf[..8].copy_from_slice(&(t as u64).to_be_bytes());
    buf[8..16].copy_from_slice(&i.to_be_bytes());
}

/// The message thread `t` signs as its operation `i`: distinct per call.
fn sign_message(t: usize, i: u64) -> [u8; SIGN_MSG_LEN] {
    let mut m = [0x5a; SIGN_MSG_LEN];
    stamp(&mut m, t, i);
    m
}

/// `len` bytes of a fixed pattern, stamped with (`t`, `i`).
fn message(len: usize, t: usize, i: u64) -> Vec<u8> {
    let mut m: Vec<u8> = (0..len).map(|j| (j % 251) as u8).collect();
    stamp(&mut m, t, i);
    m
}

/// The plaintext every AES operation encrypts.
fn aes_plaintext() -> Vec<u8> {
    (0..AES_MSG_LEN).map(|i| (i % 251) as u8).collect()
}

/// The operation number of the signature a verify worker checks (never one a sign op uses).
const VERIFY_I: u64 = u64::MAX;

/// The module's keys the sweep uses, with their public halves read back, and what the module
/// offers.
#[derive(Clone, Debug, Default)]
pub struct ModuleKeys {
    /// RSA-2048 key pair.
    pub rsa: Option<KeyPair>,
    /// Its public key.
    pub rsa_public: Option<RsaPublic>,
    /// P-256 key pair.
    pub ec: Option<KeyPair>,
    /// Its public key.
    pub ec_public: Option<EcPublic>,
    /// AES-256 key whose value is [`keys::known_aes_key`].
    pub aes: Option<ObjectHandle>,
    /// Generic secret key whose value is [`keys::known_hmac_key`].
    pub hmac: Option<ObjectHandle>,
    /// The module's `C_GetMechanismList` for the slot.
    pub mechanisms: Vec<MechanismType>,
    /// Whether the token has a random number generator (`CKF_RNG`).
    pub rng: bool,
}

/// How a module signs with ECDSA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EcdsaMech {
    /// `CKM_ECDSA_SHA256`: the module hashes.
    Sha256,
    /// `CKM_ECDSA` over a SHA-256 digest the harness computes in the op.
    OverDigest,
}

impl ModuleKeys {
    /// Find the sweep's keys on the token by label, making each one that is missing (when the
    /// module offers the mechanism to make it), and read back the public halves. `log` is told
    /// what was found or made.
    pub fn prepare(
        pkcs11: &Pkcs11,
        slot: Slot,
        session: &Session,
        log: &mut dyn FnMut(&str),
    ) -> Result<ModuleKeys> {
        let mechanisms = pkcs11
            .get_mechanism_list(slot)
            .context("C_GetMechanismList")?;
        let rng = pkcs11.get_token_info(slot).context("C_GetTokenInfo")?.rng();
        let has = |m: MechanismType| mechanisms.contains(&m);
        let mut k = ModuleKeys {
            mechanisms: mechanisms.clone(),
            rng,
            ..ModuleKeys::default()
        };
        let mut pair = |label: &str,
                        gen_mech: MechanismType,
                        what: &str,
                        generate: &dyn Fn(&Session) -> Result<KeyPair>|
         -> Result<Option<KeyPair>> {
            if let Some(p) = keys::find_pair(session, label)? {
                log(&format!("found {what} key pair {label:?}"));
                return Ok(Some(p));
            }
            if !has(gen_mech) {
                log(&format!("no {gen_mech}: no {what} key, its rows are n/a"));
                return Ok(None);
            }
            let t0 = Instant::now();
            let p = generate(session)?;
            log(&format!(
                "generated {what} key pair {label:?} (token) in {:.0} ms",
                t0.elapsed().as_secs_f64() * 1e3
            ));
            Ok(Some(p))
        };
        k.rsa = pair(
            keys::LABEL_RSA,
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            "RSA-2048",
            &|s| keys::generate_rsa(s, keys::LABEL_RSA, true),
        )?;
        k.ec = pair(
            keys::LABEL_EC,
            MechanismType::ECC_KEY_PAIR_GEN,
            "EC P-256",
            &|s| keys::generate_ec(s, keys::LABEL_EC, true),
        )?;
        if let Some(rsa) = &k.rsa {
            let public = RsaPublic::read(session, rsa.public)?;
            if public.bits() != 2048 {
                return Err(Error(format!(
                    "the RSA key labelled {:?} has {} bits, not 2048",
                    keys::LABEL_RSA,
                    public.bits()
                )));
            }
            k.rsa_public = Some(public);
        }
        if let Some(ec) = &k.ec {
            k.ec_public = Some(EcPublic::read(session, ec.public)?);
        }
        let mut secret = |label: &str,
                          what: &str,
                          import: &dyn Fn(&Session) -> Result<ObjectHandle>|
         -> Result<ObjectHandle> {
            if let Some(h) = keys::find_one(session, ObjectClass::SECRET_KEY, label)? {
                log(&format!("found {what} key {label:?}"));
                return Ok(h);
            }
            let h = import(session)?;
            log(&format!(
                "imported {what} key {label:?} (token, known value)"
            ));
            Ok(h)
        };
        k.aes = Some(secret(keys::LABEL_AES, "AES-256", &|s| {
            keys::import_aes(s, keys::LABEL_AES, &keys::known_aes_key())
        })?);
        k.hmac = Some(secret(keys::LABEL_HMAC, "HMAC", &|s| {
            keys::import_hmac(s, keys::LABEL_HMAC, &keys::known_hmac_key())
        })?);
        Ok(k)
    }

    fn has(&self, m: MechanismType) -> bool {
        self.mechanisms.contains(&m)
    }

    fn ecdsa(&self) -> Option<EcdsaMech> {
        if self.has(MechanismType::ECDSA_SHA256) {
            Some(EcdsaMech::Sha256)
        } else if self.has(MechanismType::ECDSA) {
            Some(EcdsaMech::OverDigest)
        } else {
            None
        }
    }

    /// The mechanism `op` uses on this module, or why the module cannot run it (the row is then
    /// `n/a`, not an error).
    pub fn mechanism(&self, op: Op) -> std::result::Result<&'static str, String> {
        let need = |m: MechanismType, name: &'static str| {
            if self.has(m) {
                Ok(name)
            } else {
                Err(format!("no {m}"))
            }
        };
        let key = |present: bool, what: &str| {
            if present {
                Ok(())
            } else {
                Err(format!("no {what} key"))
            }
        };
        match op {
            Op::RsaSign | Op::RsaVerify => {
                key(self.rsa.is_some(), "RSA")?;
                need(MechanismType::SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS")
            }
            Op::RsaPkcsSign => {
                key(self.rsa.is_some(), "RSA")?;
                need(MechanismType::RSA_PKCS, "CKM_RSA_PKCS over DigestInfo")
            }
            Op::EcdsaSign | Op::EcdsaVerify => {
                key(self.ec.is_some(), "EC")?;
                match self.ecdsa() {
                    Some(EcdsaMech::Sha256) => Ok("CKM_ECDSA_SHA256"),
                    Some(EcdsaMech::OverDigest) => Ok("CKM_ECDSA over SHA-256"),
                    None => Err("no CKM_ECDSA_SHA256 or CKM_ECDSA".into()),
                }
            }
            Op::AesGcmEncrypt => {
                key(self.aes.is_some(), "AES")?;
                need(MechanismType::AES_GCM, "CKM_AES_GCM")
            }
            Op::AesCbcPadEncrypt => {
                key(self.aes.is_some(), "AES")?;
                need(MechanismType::AES_CBC_PAD, "CKM_AES_CBC_PAD")
            }
            Op::HmacSign => {
                key(self.hmac.is_some(), "HMAC")?;
                need(MechanismType::SHA256_HMAC, "CKM_SHA256_HMAC")
            }
            Op::Sha256Digest => need(MechanismType::SHA256, "CKM_SHA256"),
            Op::FindByLabel => {
                key(self.aes.is_some(), "AES")?;
                Ok("C_FindObjects*")
            }
            Op::SessionKeyGen | Op::TokenKeyGen => {
                need(MechanismType::AES_KEY_GEN, "CKM_AES_KEY_GEN")
            }
            Op::Random => {
                if self.rng {
                    Ok("C_GenerateRandom")
                } else {
                    Err("the token has no RNG (CKF_RNG)".into())
                }
            }
            Op::SessionInfo => Ok("C_GetSessionInfo"),
        }
    }
}

/// A sample kept from one thread: the first and the last output, with their operation numbers.
#[derive(Debug)]
struct Samples<T> {
    first: Option<(u64, T)>,
    last: Option<(u64, T)>,
}

impl<T> Default for Samples<T> {
    fn default() -> Self {
        Samples {
            first: None,
            last: None,
        }
    }
}

impl<T> Samples<T> {
    fn keep(&mut self, i: u64, out: T) {
        if self.first.is_none() {
            self.first = Some((i, out));
        } else {
            self.last = Some((i, out));
        }
    }

    fn all(&self) -> impl Iterator<Item = &(u64, T)> {
        self.first.iter().chain(self.last.iter())
    }
}

/// What the first and last samples of a random-output op must show: the asked length, not one
/// repeated byte, and two calls that differ.
fn check_random(samples: &Samples<Vec<u8>>) -> Result<u64> {
    let mut n = 0;
    for (i, out) in samples.all() {
        if out.len() != RANDOM_LEN || out.iter().all(|&b| b == out[0]) {
            return Err(Error(format!(
                "random output {i} is {} bytes of {:02x?}",
                out.len(),
                &out[..out.len().min(4)]
            )));
        }
        n += 1;
    }
    if let (Some((_, a)), Some((_, b))) = (&samples.first, &samples.last) {
        if a == b {
            return Err(Error("two calls gave the same random bytes".into()));
        }
    }
    Ok(n)
}

/// AES-256-GCM of `pt` under `key` with `iv`, by aws-lc-rs.
fn gcm_seal(key: &[u8], iv: [u8; GCM_IV_LEN], pt: &[u8]) -> Result<Vec<u8>> {
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).context("aws-lc-rs AES key")?);
    let mut buf = pt.to_vec();
    k.seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut buf)
        .context("aws-lc-rs AES-GCM seal")?;
    Ok(buf)
}

/// AES-256-CBC with PKCS #7 padding of `pt` under `key` with `iv`, by aws-lc-rs.
fn cbc_encrypt(key: &PaddedBlockEncryptingKey, iv: [u8; 16], pt: &[u8]) -> Result<Vec<u8>> {
    let mut buf = pt.to_vec();
    key.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(iv)))
        .context("aws-lc-rs AES-CBC-PAD encrypt")?;
    Ok(buf)
}

/// An AES-256-CBC-PAD encryption key for aws-lc-rs.
fn cbc_key(key: &[u8]) -> Result<PaddedBlockEncryptingKey> {
    PaddedBlockEncryptingKey::cbc_pkcs7(
        UnboundCipherKey::new(&AES_256, key).context("aws-lc-rs AES key")?,
    )
    .context("aws-lc-rs CBC key")
}

/// One thread calling the module through its own session.
struct ModuleWorker<'a> {
    op: Op,
    thread: usize,
    session: Session,
    keys: &'a ModuleKeys,
    ecdsa: EcdsaMech,
    iv_prefix: u32,
    /// The plaintext or message buffer the op reuses (stamped per call where it varies).
    buf: Vec<u8>,
    /// Verify ops: the signature made before the window over `sign_message(thread, VERIFY_I)`.
    signature: Vec<u8>,
    samples: Samples<Vec<u8>>,
    found: Samples<Vec<ObjectHandle>>,
    /// Key generation: sample keys kept for the check (session), or every key made (token).
    created: Vec<ObjectHandle>,
    state: Option<SessionState>,
    expected_state: SessionState,
    cbc_reference: Option<PaddedBlockEncryptingKey>,
}

/// A key the op needs, or the error that says it is missing.
fn need<T: Copy>(k: Option<T>, what: &str) -> Result<T> {
    k.ok_or_else(|| Error(format!("the module has no {what} key for this operation")))
}

impl ModuleWorker<'_> {
    /// The ECDSA mechanism and input for `msg`.
    fn ecdsa_input(&self, msg: &[u8]) -> (Mechanism<'static>, Vec<u8>) {
        match self.ecdsa {
            EcdsaMech::Sha256 => (Mechanism::EcdsaSha256, msg.to_vec()),
            EcdsaMech::OverDigest => (
                Mechanism::Ecdsa,
                digest::digest(&digest::SHA256, msg).as_ref().to_vec(),
            ),
        }
    }

    /// Sign `msg` with the module as the sign ops do.
    fn sign(&self, op: Op, msg: &[u8]) -> Result<Vec<u8>> {
        match op {
            Op::RsaSign | Op::RsaVerify => self
                .session
                .sign(
                    &Mechanism::Sha256RsaPkcs,
                    need(self.keys.rsa, "RSA")?.private,
                    msg,
                )
                .context("C_Sign (CKM_SHA256_RSA_PKCS)"),
            Op::RsaPkcsSign => self
                .session
                .sign(
                    &Mechanism::RsaPkcs,
                    need(self.keys.rsa, "RSA")?.private,
                    &keys::sha256_digest_info(msg),
                )
                .context("C_Sign (CKM_RSA_PKCS)"),
            _ => {
                let (mech, input) = self.ecdsa_input(msg);
                self.session
                    .sign(&mech, need(self.keys.ec, "EC")?.private, &input)
                    .context("C_Sign (ECDSA)")
            }
        }
    }

    /// Verify with the module as the verify ops do.
    fn module_verify(&self, op: Op, msg: &[u8], sig: &[u8]) -> Result<()> {
        match op {
            Op::RsaSign | Op::RsaVerify => self
                .session
                .verify(
                    &Mechanism::Sha256RsaPkcs,
                    need(self.keys.rsa, "RSA")?.public,
                    msg,
                    sig,
                )
                .context("C_Verify (CKM_SHA256_RSA_PKCS)"),
            Op::RsaPkcsSign => self
                .session
                .verify(
                    &Mechanism::RsaPkcs,
                    need(self.keys.rsa, "RSA")?.public,
                    &keys::sha256_digest_info(msg),
                    sig,
                )
                .context("C_Verify (CKM_RSA_PKCS)"),
            _ => {
                let (mech, input) = self.ecdsa_input(msg);
                self.session
                    .verify(&mech, need(self.keys.ec, "EC")?.public, &input, sig)
                    .context("C_Verify (ECDSA)")
            }
        }
    }

    /// Whether aws-lc-rs accepts `sig` over `msg` under the public key read back.
    fn independent_verify(&self, op: Op, msg: &[u8], sig: &[u8]) -> bool {
        match op {
            Op::RsaSign | Op::RsaPkcsSign | Op::RsaVerify => self
                .keys
                .rsa_public
                .as_ref()
                .is_some_and(|k| k.verify_sha256_pkcs1(msg, sig)),
            _ => self
                .keys
                .ec_public
                .as_ref()
                .is_some_and(|k| k.verify_sha256(msg, sig)),
        }
    }

    /// A generated key's value read back: 32 bytes, not all zero, and (where the module has
    /// AES-GCM) what the module encrypts with it is what aws-lc-rs encrypts with that value.
    fn check_generated(&self, key: ObjectHandle) -> Result<Vec<u8>> {
        let value = keys::read_value(&self.session, key)?;
        if value.len() != 32 || value.iter().all(|&b| b == 0) {
            return Err(Error(format!(
                "a generated AES-256 key has a {}-byte value {:02x?}",
                value.len(),
                &value[..value.len().min(4)]
            )));
        }
        if self.keys.has(MechanismType::AES_GCM) {
            let mut iv = [0x17; GCM_IV_LEN];
            let pt = [0x42u8; 64];
            let ct = self
                .session
                .encrypt(&keys::gcm(&mut iv)?, key, &pt)
                .context("C_Encrypt (CKM_AES_GCM) with a generated key")?;
            if ct != gcm_seal(&value, [0x17; GCM_IV_LEN], &pt)? {
                return Err(Error(
                    "a generated key encrypts differently in the module than its value does in aws-lc-rs"
                        .into(),
                ));
            }
        }
        Ok(value)
    }
}

impl Worker for ModuleWorker<'_> {
    fn op(&mut self, i: u64) -> Result<()> {
        match self.op {
            Op::RsaSign | Op::RsaPkcsSign | Op::EcdsaSign => {
                let sig = self.sign(self.op, &sign_message(self.thread, i))?;
                self.samples.keep(i, sig);
            }
            Op::RsaVerify | Op::EcdsaVerify => {
                let msg = sign_message(self.thread, VERIFY_I);
                self.module_verify(self.op, &msg, &self.signature)?;
            }
            Op::AesGcmEncrypt => {
                let mut iv = iv(self.iv_prefix, i);
                let ct = self
                    .session
                    .encrypt(&keys::gcm(&mut iv)?, need(self.keys.aes, "AES")?, &self.buf)
                    .context("C_Encrypt (CKM_AES_GCM)")?;
                self.samples.keep(i, ct);
            }
            Op::AesCbcPadEncrypt => {
                let ct = self
                    .session
                    .encrypt(
                        &Mechanism::AesCbcPad(cbc_iv(self.iv_prefix, i)),
                        need(self.keys.aes, "AES")?,
                        &self.buf,
                    )
                    .context("C_Encrypt (CKM_AES_CBC_PAD)")?;
                self.samples.keep(i, ct);
            }
            Op::HmacSign => {
                stamp(&mut self.buf, self.thread, i);
                let mac = self
                    .session
                    .sign(
                        &Mechanism::Sha256Hmac,
                        need(self.keys.hmac, "HMAC")?,
                        &self.buf,
                    )
                    .context("C_Sign (CKM_SHA256_HMAC)")?;
                self.samples.keep(i, mac);
            }
            Op::Sha256Digest => {
                stamp(&mut self.buf, self.thread, i);
                let d = self
                    .session
                    .digest(&Mechanism::Sha256, &self.buf)
                    .context("C_Digest (CKM_SHA256)")?;
                self.samples.keep(i, d);
            }
            Op::FindByLabel => {
                let found = self
                    .session
                    .find_objects(&[Attribute::Label(keys::LABEL_AES.into())])
                    .context("C_FindObjects (one label)")?;
                self.found.keep(i, found);
            }
            Op::SessionKeyGen | Op::TokenKeyGen => {
                let token = self.op == Op::TokenKeyGen;
                let key = self
                    .session
                    .generate_key(
                        &Mechanism::AesKeyGen,
                        &keys::generated_aes_template(GENERATED_LABEL, token),
                    )
                    .context("C_GenerateKey (AES-256)")?;
                if token || i == 0 {
                    // Token keys are all destroyed after the window; the first session key is
                    // kept as the sample to check.
                    self.created.push(key);
                } else {
                    self.session
                        .destroy_object(key)
                        .context("C_DestroyObject (session AES key)")?;
                }
            }
            Op::Random => {
                let r = self
                    .session
                    .generate_random_vec(RANDOM_LEN as u32)
                    .context("C_GenerateRandom")?;
                self.samples.keep(i, r);
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
        let what = |i: &u64| format!("{}: thread {} output {i}", self.op.name(), self.thread);
        let mut n = 0;
        match self.op {
            Op::RsaSign | Op::RsaPkcsSign | Op::EcdsaSign => {
                for (i, sig) in self.samples.all() {
                    let msg = sign_message(self.thread, *i);
                    if !self.independent_verify(self.op, &msg, sig) {
                        return Err(Error(format!("{}: aws-lc-rs rejects it", what(i))));
                    }
                    self.module_verify(self.op, &msg, sig)
                        .map_err(|e| Error(format!("{}: {e}", what(i))))?;
                    n += 1;
                }
            }
            Op::RsaVerify | Op::EcdsaVerify => {
                let msg = sign_message(self.thread, VERIFY_I);
                if !self.independent_verify(self.op, &msg, &self.signature) {
                    return Err(Error(format!(
                        "{}: aws-lc-rs rejects the signature the module accepted",
                        self.op.name()
                    )));
                }
                let mut bad = self.signature.clone();
                if let Some(b) = bad.last_mut() {
                    *b ^= 1;
                }
                if self.module_verify(self.op, &msg, &bad).is_ok() {
                    return Err(Error(format!(
                        "{}: the module accepts a tampered signature",
                        self.op.name()
                    )));
                }
                n += 1;
            }
            Op::AesGcmEncrypt => {
                for (i, ct) in self.samples.all() {
                    let want = gcm_seal(&keys::known_aes_key(), iv(self.iv_prefix, *i), &self.buf)?;
                    if *ct != want {
                        return Err(Error(format!(
                            "{}: differs from aws-lc-rs AES-256-GCM under the known key",
                            what(i)
                        )));
                    }
                    n += 1;
                }
            }
            Op::AesCbcPadEncrypt => {
                let reference = match &self.cbc_reference {
                    Some(k) => k,
                    None => return Err(Error("no reference CBC key".into())),
                };
                for (i, ct) in self.samples.all() {
                    let want = cbc_encrypt(reference, cbc_iv(self.iv_prefix, *i), &self.buf)?;
                    if *ct != want {
                        return Err(Error(format!(
                            "{}: differs from aws-lc-rs AES-256-CBC-PAD under the known key",
                            what(i)
                        )));
                    }
                    n += 1;
                }
            }
            Op::HmacSign => {
                let key = hmac::Key::new(hmac::HMAC_SHA256, &keys::known_hmac_key());
                for (i, mac) in self.samples.all() {
                    let msg = message(HMAC_MSG_LEN, self.thread, *i);
                    if mac[..] != *hmac::sign(&key, &msg).as_ref() {
                        return Err(Error(format!(
                            "{}: differs from aws-lc-rs HMAC-SHA256 under the known key",
                            what(i)
                        )));
                    }
                    n += 1;
                }
            }
            Op::Sha256Digest => {
                for (i, d) in self.samples.all() {
                    let msg = message(AES_MSG_LEN, self.thread, *i);
                    if d[..] != *digest::digest(&digest::SHA256, &msg).as_ref() {
                        return Err(Error(format!(
                            "{}: differs from aws-lc-rs SHA-256",
                            what(i)
                        )));
                    }
                    n += 1;
                }
            }
            Op::FindByLabel => {
                let want = need(self.keys.aes, "AES")?;
                for (i, found) in self.found.all() {
                    if found[..] != [want] {
                        return Err(Error(format!(
                            "{}: found {found:?}, expected only the AES key {want}",
                            what(i)
                        )));
                    }
                    n += 1;
                }
            }
            Op::SessionKeyGen | Op::TokenKeyGen => {
                let created = std::mem::take(&mut self.created);
                // Check the first and last key made, then destroy every key kept, also when a
                // check failed, so the store does not grow.
                let mut result = Ok(());
                let mut values = Vec::new();
                let picks = [
                    created.first(),
                    created.last().filter(|_| created.len() > 1),
                ];
                for key in picks.into_iter().flatten() {
                    match self.check_generated(*key) {
                        Ok(v) => {
                            values.push(v);
                            n += 1;
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                if values.len() == 2 && values[0] == values[1] {
                    result = Err(Error("two generated keys have the same value".into()));
                }
                for key in created {
                    if let Err(e) = self.session.destroy_object(key) {
                        result = result.and(Err(Error(format!(
                            "C_DestroyObject of a generated key after the window: {e}"
                        ))));
                    }
                }
                result?;
            }
            Op::Random => n += check_random(&self.samples)?,
            Op::SessionInfo => {
                // Sessions opened after the one login must see it: PKCS #11 logins are per
                // application.
                if self.state != Some(self.expected_state) {
                    return Err(Error(format!(
                        "C_GetSessionInfo: state {:?}, expected {:?}",
                        self.state, self.expected_state
                    )));
                }
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Measure `op` through the module: `threads` threads, each with its own session opened after
/// the user logged in (read-only, but read/write for token key generation). Check
/// [`ModuleKeys::mechanism`] first: an operation the module cannot run fails every worker.
pub fn run_module(
    pkcs11: &Pkcs11,
    slot: Slot,
    keys: &ModuleKeys,
    op: Op,
    threads: usize,
    window: Duration,
) -> Step {
    measure(threads, window, |thread| {
        keys.mechanism(op)
            .map_err(|why| Error(format!("{} cannot run on this module: {why}", op.name())))?;
        let rw = op == Op::TokenKeyGen;
        let session = if rw {
            pkcs11.open_rw_session(slot)
        } else {
            pkcs11.open_ro_session(slot)
        }
        .context("C_OpenSession")?;
        let mut w = ModuleWorker {
            op,
            thread,
            session,
            keys,
            ecdsa: keys.ecdsa().unwrap_or(EcdsaMech::Sha256),
            iv_prefix: next_iv_prefix(),
            buf: match op {
                Op::AesGcmEncrypt | Op::AesCbcPadEncrypt => aes_plaintext(),
                Op::HmacSign => message(HMAC_MSG_LEN, thread, 0),
                Op::Sha256Digest => message(AES_MSG_LEN, thread, 0),
                _ => Vec::new(),
            },
            signature: Vec::new(),
            samples: Samples::default(),
            found: Samples::default(),
            created: Vec::new(),
            state: None,
            expected_state: if rw {
                SessionState::RwUser
            } else {
                SessionState::RoUser
            },
            cbc_reference: None,
        };
        if matches!(op, Op::RsaVerify | Op::EcdsaVerify) {
            w.signature = w.sign(op, &sign_message(thread, VERIFY_I))?;
        }
        if op == Op::AesCbcPadEncrypt {
            w.cbc_reference = Some(cbc_key(&keys::known_aes_key())?);
        }
        Ok(w)
    })
}

/// The same primitives in-process with aws-lc-rs: the ceiling the module is measured against.
/// The AES and HMAC keys are the harness's known values, as in the module.
pub struct RawKeys {
    rsa: RsaKeyPair,
    rsa_public: ParsedPublicKey,
    ec: EcdsaKeyPair,
    ec_public: ParsedPublicKey,
    gcm: LessSafeKey,
    cbc: PaddedBlockEncryptingKey,
    hmac: hmac::Key,
    rng: SystemRandom,
}

impl std::fmt::Debug for RawKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawKeys { .. }")
    }
}

impl RawKeys {
    /// Fresh RSA-2048 and P-256 keys; the known AES-256 and HMAC keys.
    pub fn generate() -> Result<RawKeys> {
        let rsa =
            RsaKeyPair::generate(KeySize::Rsa2048).context("aws-lc-rs RSA-2048 generation")?;
        let ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
            .context("aws-lc-rs P-256 generation")?;
        Ok(RawKeys {
            rsa_public: ParsedPublicKey::new(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                rsa.public_key().as_ref(),
            )
            .context("aws-lc-rs RSA public key")?,
            ec_public: ParsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                ec.public_key().as_ref(),
            )
            .context("aws-lc-rs P-256 public key")?,
            rsa,
            ec,
            gcm: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &keys::known_aes_key())
                    .context("aws-lc-rs AES-256 key")?,
            ),
            cbc: cbc_key(&keys::known_aes_key())?,
            hmac: hmac::Key::new(hmac::HMAC_SHA256, &keys::known_hmac_key()),
            rng: SystemRandom::new(),
        })
    }

    fn rsa_sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let mut sig = vec![0; self.rsa.public_modulus_len()];
        self.rsa
            .sign(&signature::RSA_PKCS1_SHA256, &self.rng, msg, &mut sig)
            .context("aws-lc-rs RSA sign")?;
        Ok(sig)
    }

    fn ecdsa_sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        Ok(self
            .ec
            .sign(&self.rng, msg)
            .context("aws-lc-rs ECDSA sign")?
            .as_ref()
            .to_vec())
    }
}

/// One thread calling aws-lc-rs directly.
struct RawWorker<'a> {
    op: Op,
    thread: usize,
    keys: &'a RawKeys,
    iv_prefix: u32,
    buf: Vec<u8>,
    signature: Vec<u8>,
    samples: Samples<Vec<u8>>,
}

impl Worker for RawWorker<'_> {
    fn op(&mut self, i: u64) -> Result<()> {
        let out = match self.op {
            Op::RsaSign | Op::RsaPkcsSign => self.keys.rsa_sign(&sign_message(self.thread, i))?,
            Op::EcdsaSign => self.keys.ecdsa_sign(&sign_message(self.thread, i))?,
            Op::RsaVerify => {
                self.keys
                    .rsa_public
                    .verify_sig(&sign_message(self.thread, VERIFY_I), &self.signature)
                    .context("aws-lc-rs RSA verify")?;
                return Ok(());
            }
            Op::EcdsaVerify => {
                self.keys
                    .ec_public
                    .verify_sig(&sign_message(self.thread, VERIFY_I), &self.signature)
                    .context("aws-lc-rs ECDSA verify")?;
                return Ok(());
            }
            Op::AesGcmEncrypt => {
                let nonce = Nonce::assume_unique_for_key(iv(self.iv_prefix, i));
                let mut buf = self.buf.clone();
                self.keys
                    .gcm
                    .seal_in_place_append_tag(nonce, Aad::empty(), &mut buf)
                    .context("aws-lc-rs AES-GCM seal")?;
                buf
            }
            Op::AesCbcPadEncrypt => {
                cbc_encrypt(&self.keys.cbc, cbc_iv(self.iv_prefix, i), &self.buf)?
            }
            Op::HmacSign => {
                stamp(&mut self.buf, self.thread, i);
                hmac::sign(&self.keys.hmac, &self.buf).as_ref().to_vec()
            }
            Op::Sha256Digest => {
                stamp(&mut self.buf, self.thread, i);
                digest::digest(&digest::SHA256, &self.buf).as_ref().to_vec()
            }
            Op::Random => {
                let mut r = vec![0u8; RANDOM_LEN];
                aws_lc_rs::rand::fill(&mut r).context("aws-lc-rs random")?;
                r
            }
            Op::FindByLabel | Op::SessionKeyGen | Op::TokenKeyGen | Op::SessionInfo => {
                return Err(Error(format!("{} has no raw counterpart", self.op.name())))
            }
        };
        self.samples.keep(i, out);
        Ok(())
    }

    fn check(&mut self) -> Result<u64> {
        let fail = |i: &u64| {
            Error(format!(
                "raw {}: thread {} output {i} does not verify",
                self.op.name(),
                self.thread
            ))
        };
        match self.op {
            Op::RsaVerify | Op::EcdsaVerify => {
                let public = if self.op == Op::RsaVerify {
                    &self.keys.rsa_public
                } else {
                    &self.keys.ec_public
                };
                let mut bad = self.signature.clone();
                if let Some(b) = bad.last_mut() {
                    *b ^= 1;
                }
                if public
                    .verify_sig(&sign_message(self.thread, VERIFY_I), &bad)
                    .is_ok()
                {
                    return Err(fail(&VERIFY_I));
                }
                return Ok(1);
            }
            Op::Random => return check_random(&self.samples),
            _ => {}
        }
        let mut n = 0;
        for (i, out) in self.samples.all() {
            let ok = match self.op {
                Op::RsaSign | Op::RsaPkcsSign => UnparsedPublicKey::new(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    self.keys.rsa.public_key().as_ref(),
                )
                .verify(&sign_message(self.thread, *i), out)
                .is_ok(),
                Op::EcdsaSign => UnparsedPublicKey::new(
                    &signature::ECDSA_P256_SHA256_FIXED,
                    self.keys.ec.public_key().as_ref(),
                )
                .verify(&sign_message(self.thread, *i), out)
                .is_ok(),
                Op::AesGcmEncrypt => {
                    let mut buf = out.clone();
                    let nonce = Nonce::assume_unique_for_key(iv(self.iv_prefix, *i));
                    matches!(self.keys.gcm.open_in_place(nonce, Aad::empty(), &mut buf), Ok(pt) if pt == &self.buf[..])
                }
                Op::AesCbcPadEncrypt => {
                    let key = PaddedBlockDecryptingKey::cbc_pkcs7(
                        UnboundCipherKey::new(&AES_256, &keys::known_aes_key())
                            .context("aws-lc-rs AES key")?,
                    )
                    .context("aws-lc-rs CBC key")?;
                    let mut buf = out.clone();
                    let ctx =
                        DecryptionContext::Iv128(FixedLength::from(cbc_iv(self.iv_prefix, *i)));
                    matches!(key.decrypt(&mut buf, ctx), Ok(pt) if pt == &self.buf[..])
                }
                Op::HmacSign => hmac::verify(
                    &self.keys.hmac,
                    &message(HMAC_MSG_LEN, self.thread, *i),
                    out,
                )
                .is_ok(),
                Op::Sha256Digest => {
                    // A second code path: the streaming context, fed in two parts.
                    let msg = message(AES_MSG_LEN, self.thread, *i);
                    let mut ctx = digest::Context::new(&digest::SHA256);
                    ctx.update(&msg[..100]);
                    ctx.update(&msg[100..]);
                    ctx.finish().as_ref() == &out[..]
                }
                _ => false,
            };
            if !ok {
                return Err(fail(i));
            }
            n += 1;
        }
        Ok(n)
    }
}

/// Measure `op` straight on aws-lc-rs; `None` for an operation with no raw counterpart.
pub fn run_raw(keys: &RawKeys, op: Op, threads: usize, window: Duration) -> Option<Step> {
    if !op.has_raw() {
        return None;
    }
    Some(measure(threads, window, |thread| {
        let signature = match op {
            Op::RsaVerify => keys.rsa_sign(&sign_message(thread, VERIFY_I))?,
            Op::EcdsaVerify => keys.ecdsa_sign(&sign_message(thread, VERIFY_I))?,
            _ => Vec::new(),
        };
        Ok(RawWorker {
            op,
            thread,
            keys,
            iv_prefix: next_iv_prefix(),
            buf: match op {
                Op::AesGcmEncrypt | Op::AesCbcPadEncrypt => aes_plaintext(),
                Op::HmacSign => message(HMAC_MSG_LEN, thread, 0),
                Op::Sha256Digest => message(AES_MSG_LEN, thread, 0),
                _ => Vec::new(),
            },
            signature,
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
        assert_eq!(step.latency.count(), step.ops);
        assert_eq!(step.per_thread_ops.len(), 3);
        assert_eq!(step.per_thread_ops.iter().sum::<u64>(), step.ops);
        assert!(step.elapsed >= Duration::from_millis(50));
        assert_eq!(step.first_error.as_deref(), Some("odd"));
        assert!(step.jain().is_some_and(|j| j > 0.0 && j <= 1.0));
        assert!(step.peak_rss_kib.is_some());
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
        // The other worker's odd calls fail too; whichever failure came first is kept.
        assert!(matches!(
            step.first_error.as_deref(),
            Some("no session" | "odd")
        ));
    }

    #[test]
    fn step_figures_follow_from_the_counts() {
        let mut step = Step {
            ops: 300,
            elapsed: Duration::from_secs(2),
            per_thread_ops: vec![100, 200],
            cpu: Some(Duration::from_secs(3)),
            ..Step::default()
        };
        assert_eq!(step.ops_per_s(), 150.0);
        assert_eq!(step.ops_per_s_per_thread(), 75.0);
        assert_eq!(step.cpu_cores(), Some(1.5));
        assert!((step.jain().unwrap() - 0.9).abs() < 1e-9);
        for v in 1..=100 {
            step.latency.record(v * 1000);
        }
        // 50 µs to the histogram's resolution (rounded up by less than 1/64).
        let p50 = step.percentile_us(50.0).unwrap();
        assert!((50.0..=50.0 * (1.0 + 1.0 / 64.0)).contains(&p50), "{p50}");
        assert_eq!(Step::default().percentile_us(50.0), None);
        assert_eq!(Step::default().cpu_cores(), None);
    }

    #[test]
    fn every_op_has_a_unique_slug_that_parses_back() {
        for op in Op::ALL {
            assert_eq!(Op::from_slug(op.slug()), Some(op));
        }
        let mut slugs: Vec<_> = Op::ALL.iter().map(|o| o.slug()).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), Op::ALL.len());
        assert_eq!(Op::from_slug("nope"), None);
    }

    #[test]
    fn raw_samples_verify_and_ivs_do_not_repeat() {
        let keys = RawKeys::generate().unwrap();
        for op in Op::ALL.into_iter().filter(|o| o.has_raw()) {
            let step = run_raw(&keys, op, 2, Duration::from_millis(20)).unwrap();
            assert_eq!(step.failures(), 0, "{op:?}: {:?}", step.first_error);
            assert!(step.checked >= 2, "{op:?}: {} checked", step.checked);
        }
        assert!(run_raw(&keys, Op::SessionInfo, 1, Duration::from_millis(1)).is_none());
        assert_ne!(iv(next_iv_prefix(), 0), iv(next_iv_prefix(), 0));
    }

    #[test]
    fn the_raw_cbc_reference_matches_the_raw_worker_and_random_checks_catch_garbage() {
        let key = cbc_key(&keys::known_aes_key()).unwrap();
        let ct = cbc_encrypt(&key, [1; 16], &[7; 4096]).unwrap();
        assert_eq!(ct.len(), 4096 + 16, "a full block of padding");
        assert_ne!(cbc_encrypt(&key, [2; 16], &[7; 4096]).unwrap(), ct);
        let mut s = Samples::default();
        s.keep(0, vec![9u8; RANDOM_LEN]);
        assert!(check_random(&s).is_err(), "one repeated byte");
        let mut s = Samples::default();
        s.keep(0, vec![1u8, 2]);
        assert!(check_random(&s).is_err(), "short");
        let mut s = Samples::default();
        let r: Vec<u8> = (0..RANDOM_LEN as u8).collect();
        s.keep(0, r.clone());
        s.keep(1, r);
        assert!(check_random(&s).is_err(), "the same twice");
    }
}
