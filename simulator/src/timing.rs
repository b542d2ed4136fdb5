//! The timing model: makes one simulated HSM take the time a real network HSM takes, so a
//! benchmark on one small machine shows how a real cluster behaves. **Off by default**: an
//! [`crate::hsm::Hsm`] only builds a [`TimingModel`] when its `HsmConfig::timing` is `Some`, and
//! with it off every operation pays one branch on an `Option`.
//!
//! # What it models, per HSM
//! - **Network round trip** (`rtt_us`), once per request: **half before** the request reaches
//!   the HSM (the request leg) and **half after** the work is done (the reply leg). Queueing
//!   happens at the HSM, between the two.
//! - **Crypto cores** (`cores`): a counting semaphore, at most `cores` operations in service at
//!   once; the others wait their turn, first come first served (in the order requests reach the
//!   HSM).
//! - **Service time by operation class** ([`OpClass`], [`TimingConfig::service_us`]): how long
//!   an operation holds a core.
//! - **Persistent (token) object creation is serialised**: one token creation at a time per HSM
//!   (a mutex around token-object creation). A token creation waits for the previous one to be
//!   entirely done, then does its own work on a core (key generation, import, ...), then a
//!   commit of `token_commit_us` (persisting and synchronising the new object, cf. CloudHSM
//!   client-side key synchronisation) that holds the token mutex but no core.
//!
//! # How it is computed
//! Not with real locks: each request *reserves* its place on an analytic FIFO multi-server queue
//! (per core, the time it is next free; per HSM, the time the token mutex is next free) under a
//! short mutex, then sleeps on the [`Clock`] until its service starts, runs the real operation,
//! and on [`OpTimer`] drop sleeps until its reply is due. With [`RealClock`] that is real
//! sleeping; with [`VirtualClock`] nothing sleeps and tests check the arithmetic.
//!
//! The real work the simulator does (aws-lc cryptography, the store) runs inside the reserved
//! service window. When it takes longer than the modelled service time (RSA key generation in a
//! debug build, PBKDF2 at login) the host is the bottleneck and the reply is simply late; the
//! model never shortens anything.
//!
//! # Defaults
//! [`TimingConfig::default`] is [`TimingConfig::cloudhsm_hsm2m_medium`]. The only published
//! per-HSM figures found are AWS CloudHSM's throughput for RSA-2048 sign and EC P-256 sign
//! (AWS CloudHSM User Guide, "AWS CloudHSM performance information",
//! <https://docs.aws.amazon.com/cloudhsm/latest/userguide/performance.html>: a two-HSM cluster
//! with a multi-threaded Java client does about 2,000 RSA-2048 signs/s and, on hsm2m.medium,
//! 3,000 EC P-256 signs/s (500/s on hsm1.medium); per HSM that is half). A service time is
//! `cores / throughput`, so with the model saturated an HSM delivers the published throughput.
//! **Every other number is an estimate**, marked `ESTIMATE` next to it, chosen to be plausible
//! for a network HSM and meant to be overridden when measurements exist.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cryptoki_sys::*;
use parking_lot::Mutex;

use crate::crypto::Curve;
use crate::object::{find, find_ulong};
use crate::types::Attr;

// ----- configuration ---------------------------------------------------------------------------

/// The timing of one HSM. Times are in microseconds. Build one with
/// [`TimingConfig::default`] (AWS CloudHSM hsm2m.medium), [`TimingConfig::cloudhsm_hsm1_medium`]
/// or [`TimingConfig::zero`] and struct-update the fields to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimingConfig {
    /// Network round trip between client and HSM, µs; applied once per request, half before
    /// (request leg), half after (reply leg; the odd microsecond goes after).
    pub rtt_us: u64,
    /// Crypto cores: operations in service at once (0 is taken as 1).
    pub cores: u32,
    /// RSA private-key operation (sign, decrypt, unwrap), modulus up to 2048 bits, µs.
    pub rsa_2048_private_us: u64,
    /// RSA private-key operation, modulus 2049..=3072 bits, µs.
    pub rsa_3072_private_us: u64,
    /// RSA private-key operation, modulus above 3072 bits, µs.
    pub rsa_4096_private_us: u64,
    /// RSA public-key operation (verify, encrypt, wrap), any size, µs.
    pub rsa_public_us: u64,
    /// ECDSA sign (and ECDH derive, EdDSA sign) on a curve of up to 256 bits, µs.
    pub ecdsa_p256_sign_us: u64,
    /// ECDSA sign (and ECDH derive) on a larger curve (P-384; P-521 is counted here too), µs.
    pub ecdsa_p384_sign_us: u64,
    /// ECDSA (and EdDSA) verify on a curve of up to 256 bits, µs.
    pub ecdsa_p256_verify_us: u64,
    /// ECDSA verify on a larger curve, µs.
    pub ecdsa_p384_verify_us: u64,
    /// One symmetric call: AES encrypt/decrypt/wrap, HMAC, CMAC, HKDF, µs.
    pub symmetric_us: u64,
    /// One digest call, µs (the `Hsm` has no digest operation today; for callers that model one).
    pub digest_us: u64,
    /// One random-bytes call, µs.
    pub random_us: u64,
    /// Find, get/set attribute, create (import), copy, destroy and other management calls, µs.
    pub management_us: u64,
    /// Session secret key generation (AES, generic secret), µs.
    pub keygen_symmetric_us: u64,
    /// Session EC (and Ed25519) key pair generation, µs.
    pub keygen_ec_us: u64,
    /// Session RSA key pair generation, up to 2048 bits, µs.
    pub keygen_rsa_2048_us: u64,
    /// Session RSA key pair generation, 2049..=3072 bits, µs.
    pub keygen_rsa_3072_us: u64,
    /// Session RSA key pair generation, above 3072 bits, µs.
    pub keygen_rsa_4096_us: u64,
    /// Extra time of a persistent (token) object creation (key generation, import, unwrap,
    /// derive, copy with `CKA_TOKEN` true), serialised per HSM: it holds the token mutex, not a
    /// core, µs.
    pub token_commit_us: u64,
}

/// Published AWS CloudHSM throughput, ops/s per HSM (half the two-HSM cluster figure).
/// Source: AWS CloudHSM User Guide, "AWS CloudHSM performance information"
/// (<https://docs.aws.amazon.com/cloudhsm/latest/userguide/performance.html>), tables
/// "Performance data for hsm1.medium" / "for hsm2m.medium", two-HSM cluster column.
const PUBLISHED_RSA_2048_SIGN_PER_HSM: u64 = 2_000 / 2; // both hsm1.medium and hsm2m.medium
const PUBLISHED_HSM2M_P256_SIGN_PER_HSM: u64 = 3_000 / 2;
const PUBLISHED_HSM1_P256_SIGN_PER_HSM: u64 = 500 / 2;

/// ESTIMATE: operations one HSM works on at once ("cores": crypto engines and request slots).
/// Not published for CloudHSM; it only sets the split between latency and concurrency (service
/// time = cores / throughput), the saturated throughput stays the published one. Vendors say a
/// network HSM reaches its throughput only with ~30-40 jobs in flight: Thales Luna, "around 30
/// simultaneous threads per HSM" (Luna 7 HA performance guide); Entrust nShield, "around 40
/// outstanding jobs per HSM ... 60 or more" through PKCS #11 (nShield application performance
/// tuning). 32 sits in that range; it makes a single thread see ~32 ms per RSA-2048 signature
/// and 64 threads see the published 1,000/s.
const DEFAULT_CORES: u32 = 32;

/// Service time, µs, giving `per_sec` operations per second over `cores` cores.
const fn service_for(cores: u32, per_sec: u64) -> u64 {
    (cores as u64 * 1_000_000).div_ceil(per_sec)
}

impl Default for TimingConfig {
    /// AWS CloudHSM hsm2m.medium: [`TimingConfig::cloudhsm_hsm2m_medium`].
    fn default() -> Self {
        TimingConfig::cloudhsm_hsm2m_medium()
    }
}

impl TimingConfig {
    /// One AWS CloudHSM hsm2m.medium HSM (the current generation). Sources next to each value;
    /// `ESTIMATE` marks the values that are not published figures.
    pub fn cloudhsm_hsm2m_medium() -> Self {
        let cores = DEFAULT_CORES;
        // PUBLISHED (throughput): 1,000 RSA-2048 signs/s per HSM -> 32 cores * 1 ms = 32,000 µs.
        let rsa2048 = service_for(cores, PUBLISHED_RSA_2048_SIGN_PER_HSM);
        // PUBLISHED (throughput): 1,500 EC P-256 signs/s per HSM -> 21,334 µs.
        let p256 = service_for(cores, PUBLISHED_HSM2M_P256_SIGN_PER_HSM);
        TimingConfig {
            // ESTIMATE: client and HSM in one region, often in different availability zones
            // (the guide recommends spreading HSMs over AZs); intra-AZ RTT is ~0.1-0.3 ms,
            // cross-AZ ~0.5-1 ms, plus the client's end-to-end encryption.
            rtt_us: 500,
            cores,
            rsa_2048_private_us: rsa2048,
            // ESTIMATE: 4x RSA-2048 (private-op cost grows ~cubically: 3.4x; Azure Key Vault
            // weights HSM-key operations 2048:3072:4096 as 1:4:8 in its published service
            // limits, which we borrow as the ratio).
            rsa_3072_private_us: 4 * rsa2048,
            // ESTIMATE: 8x RSA-2048 (same Azure Key Vault weighting; cubic law gives 8x).
            rsa_4096_private_us: 8 * rsa2048,
            // ESTIMATE: a public-key op (e = 65537) is >10x cheaper than a private one in
            // software; on an HSM request handling dominates, so ~1/10 of RSA-2048 private.
            rsa_public_us: rsa2048 / 10,
            ecdsa_p256_sign_us: p256,
            // ESTIMATE: P-384 scalar multiplication costs ~2x P-256.
            ecdsa_p384_sign_us: 2 * p256,
            // ESTIMATE: verify is a double scalar multiplication, ~1.5x sign.
            ecdsa_p256_verify_us: p256 * 3 / 2,
            // ESTIMATE: as above, for P-384.
            ecdsa_p384_verify_us: 2 * p256 * 3 / 2,
            // ESTIMATE: small-message AES/HMAC: request handling dominates the cipher.
            symmetric_us: 150,
            // ESTIMATE: as symmetric, minus key handling.
            digest_us: 50,
            // ESTIMATE: a DRBG read.
            random_us: 50,
            // ESTIMATE: object-table lookups and attribute handling.
            management_us: 100,
            // ESTIMATE: a DRBG read plus a key-table entry.
            keygen_symmetric_us: 1_000,
            // ESTIMATE: one scalar multiplication plus a key-table entry, ~2x a P-256 sign.
            keygen_ec_us: 2 * p256,
            // ESTIMATE: RSA key generation is a prime search: on HSMs typically 0.1 s to over
            // 1 s for 2048 bits, with a long tail; a fixed mean here.
            keygen_rsa_2048_us: 150_000,
            // ESTIMATE: prime search grows ~quartically with size.
            keygen_rsa_3072_us: 500_000,
            // ESTIMATE: as above.
            keygen_rsa_4096_us: 1_500_000,
            // ESTIMATE: CloudHSM synchronises token keys to the other HSMs of the cluster when
            // they are created (User Guide, "Key synchronization and durability settings":
            // client-side key synchronisation); a store write plus a cluster round trip.
            token_commit_us: 20_000,
        }
    }

    /// One AWS CloudHSM hsm1.medium HSM (the previous generation): as
    /// [`TimingConfig::cloudhsm_hsm2m_medium`] but with its published EC P-256 sign rate
    /// (250/s per HSM, source as above), the other EC figures scaled with it (ESTIMATE).
    pub fn cloudhsm_hsm1_medium() -> Self {
        let base = TimingConfig::cloudhsm_hsm2m_medium();
        // PUBLISHED (throughput): 250 EC P-256 signs/s per HSM -> 128,000 µs over 32 cores.
        let p256 = service_for(base.cores, PUBLISHED_HSM1_P256_SIGN_PER_HSM);
        TimingConfig {
            ecdsa_p256_sign_us: p256,
            ecdsa_p384_sign_us: 2 * p256,
            ecdsa_p256_verify_us: p256 * 3 / 2,
            ecdsa_p384_verify_us: 2 * p256 * 3 / 2,
            keygen_ec_us: 2 * p256,
            ..base
        }
    }

    /// Every time zero and one core: a base for tests and for setting only some fields.
    pub fn zero() -> Self {
        TimingConfig {
            rtt_us: 0,
            cores: 1,
            rsa_2048_private_us: 0,
            rsa_3072_private_us: 0,
            rsa_4096_private_us: 0,
            rsa_public_us: 0,
            ecdsa_p256_sign_us: 0,
            ecdsa_p384_sign_us: 0,
            ecdsa_p256_verify_us: 0,
            ecdsa_p384_verify_us: 0,
            symmetric_us: 0,
            digest_us: 0,
            random_us: 0,
            management_us: 0,
            keygen_symmetric_us: 0,
            keygen_ec_us: 0,
            keygen_rsa_2048_us: 0,
            keygen_rsa_3072_us: 0,
            keygen_rsa_4096_us: 0,
            token_commit_us: 0,
        }
    }

    /// The service time of a class, µs (the time it holds a core).
    pub fn service_us(&self, class: OpClass) -> u64 {
        match class {
            OpClass::RsaPrivate2048 => self.rsa_2048_private_us,
            OpClass::RsaPrivate3072 => self.rsa_3072_private_us,
            OpClass::RsaPrivate4096 => self.rsa_4096_private_us,
            OpClass::RsaPublic => self.rsa_public_us,
            OpClass::EcdsaP256Sign => self.ecdsa_p256_sign_us,
            OpClass::EcdsaP384Sign => self.ecdsa_p384_sign_us,
            OpClass::EcdsaP256Verify => self.ecdsa_p256_verify_us,
            OpClass::EcdsaP384Verify => self.ecdsa_p384_verify_us,
            OpClass::Symmetric => self.symmetric_us,
            OpClass::Digest => self.digest_us,
            OpClass::Random => self.random_us,
            OpClass::Management => self.management_us,
            OpClass::KeyGenSymmetric => self.keygen_symmetric_us,
            OpClass::KeyGenEc => self.keygen_ec_us,
            OpClass::KeyGenRsa2048 => self.keygen_rsa_2048_us,
            OpClass::KeyGenRsa3072 => self.keygen_rsa_3072_us,
            OpClass::KeyGenRsa4096 => self.keygen_rsa_4096_us,
        }
    }
}

// ----- operation classes -----------------------------------------------------------------------

/// What kind of work an operation is, for its service time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// RSA private-key operation, ≤ 2048-bit modulus.
    RsaPrivate2048,
    /// RSA private-key operation, 2049..=3072 bits.
    RsaPrivate3072,
    /// RSA private-key operation, > 3072 bits.
    RsaPrivate4096,
    /// RSA public-key operation.
    RsaPublic,
    /// ECDSA / EdDSA sign or ECDH, curve ≤ 256 bits.
    EcdsaP256Sign,
    /// ECDSA sign or ECDH, curve > 256 bits.
    EcdsaP384Sign,
    /// ECDSA / EdDSA verify, curve ≤ 256 bits.
    EcdsaP256Verify,
    /// ECDSA verify, curve > 256 bits.
    EcdsaP384Verify,
    /// AES, HMAC, CMAC, HKDF: one call.
    Symmetric,
    /// A digest call.
    Digest,
    /// A random-bytes call.
    Random,
    /// Find, attributes, object management.
    Management,
    /// Secret key generation.
    KeyGenSymmetric,
    /// EC / Ed25519 key pair generation.
    KeyGenEc,
    /// RSA key pair generation, ≤ 2048 bits.
    KeyGenRsa2048,
    /// RSA key pair generation, 2049..=3072 bits.
    KeyGenRsa3072,
    /// RSA key pair generation, > 3072 bits.
    KeyGenRsa4096,
}

/// The mechanism families that decide a class.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MechKind {
    Rsa,
    Ecdsa,
    Eddsa,
    Other,
}

/// A mechanism's kind, read from the member contract's mechanism table (a mechanism the
/// table does not have costs what a symmetric one does).
fn mech_kind(mech: CK_MECHANISM_TYPE) -> MechKind {
    match Family::of(mech) {
        Some(Family::Rsa) => MechKind::Rsa,
        Some(Family::Ec) => MechKind::Ecdsa,
        Some(Family::Ed) => MechKind::Eddsa,
        _ => MechKind::Other,
    }
}

impl OpClass {
    fn rsa_private(bits: usize) -> Self {
        match bits {
            0..=2048 => OpClass::RsaPrivate2048,
            2049..=3072 => OpClass::RsaPrivate3072,
            _ => OpClass::RsaPrivate4096,
        }
    }

    /// A sign (or MAC) with `mech` under a key of `key_bits`.
    pub fn from_sign(mech: CK_MECHANISM_TYPE, key_bits: usize) -> Self {
        match mech_kind(mech) {
            MechKind::Rsa => OpClass::rsa_private(key_bits),
            MechKind::Ecdsa if key_bits > 256 => OpClass::EcdsaP384Sign,
            MechKind::Ecdsa | MechKind::Eddsa => OpClass::EcdsaP256Sign,
            MechKind::Other => OpClass::Symmetric,
        }
    }

    /// A verify (or MAC check) with `mech` under a key of `key_bits`.
    pub fn from_verify(mech: CK_MECHANISM_TYPE, key_bits: usize) -> Self {
        match mech_kind(mech) {
            MechKind::Rsa => OpClass::RsaPublic,
            MechKind::Ecdsa if key_bits > 256 => OpClass::EcdsaP384Verify,
            MechKind::Ecdsa | MechKind::Eddsa => OpClass::EcdsaP256Verify,
            MechKind::Other => OpClass::Symmetric,
        }
    }

    /// An encrypt (or wrap) with `mech`: RSA is a public-key operation whatever the size.
    pub fn from_encrypt(mech: CK_MECHANISM_TYPE, _key_bits: usize) -> Self {
        match mech_kind(mech) {
            MechKind::Rsa => OpClass::RsaPublic,
            _ => OpClass::Symmetric,
        }
    }

    /// A decrypt (or unwrap) with `mech` under a key of `key_bits`.
    pub fn from_decrypt(mech: CK_MECHANISM_TYPE, key_bits: usize) -> Self {
        match mech_kind(mech) {
            MechKind::Rsa => OpClass::rsa_private(key_bits),
            _ => OpClass::Symmetric,
        }
    }

    /// A key derivation with `mech` from a base key of `key_bits`: ECDH is one scalar
    /// multiplication (the sign class of the curve), anything else symmetric.
    pub fn from_derive(mech: CK_MECHANISM_TYPE, key_bits: usize) -> Self {
        match mech_kind(mech) {
            MechKind::Ecdsa | MechKind::Eddsa => OpClass::from_sign(CKM_ECDSA, key_bits),
            _ => OpClass::Symmetric,
        }
    }

    /// A key (pair) generation with `mech` of a key of `key_bits`.
    pub fn from_key_gen(mech: CK_MECHANISM_TYPE, key_bits: usize) -> Self {
        match mech_kind(mech) {
            MechKind::Rsa => match key_bits {
                0..=2048 => OpClass::KeyGenRsa2048,
                2049..=3072 => OpClass::KeyGenRsa3072,
                _ => OpClass::KeyGenRsa4096,
            },
            MechKind::Ecdsa | MechKind::Eddsa => OpClass::KeyGenEc,
            MechKind::Other => OpClass::KeyGenSymmetric,
        }
    }

    /// A key pair generation, its size read from the public template (`CKA_MODULUS_BITS`, or
    /// the curve of `CKA_EC_PARAMS`); what cannot be read counts as the smallest size (the
    /// call fails anyway).
    pub fn from_key_pair_template(mech: CK_MECHANISM_TYPE, public: &[Attr]) -> Self {
        let bits = match mech_kind(mech) {
            MechKind::Rsa => find_ulong(public, CKA_MODULUS_BITS)
                .ok()
                .flatten()
                .and_then(|b| usize::try_from(b).ok())
                .unwrap_or(0),
            MechKind::Ecdsa => find(public, CKA_EC_PARAMS)
                .and_then(|a| Curve::from_ec_params(&a.value).ok())
                .map_or(0, |c| c.order_bits()),
            _ => 0,
        };
        OpClass::from_key_gen(mech, bits)
    }
}

/// `CKA_TOKEN` of a template, when it says.
pub fn token_in(template: &[Attr]) -> Option<bool> {
    find(template, CKA_TOKEN).and_then(Attr::as_bool)
}

// ----- clocks ----------------------------------------------------------------------------------

pub use hsmpool_member::clock::{Clock, RealClock, VirtualClock};
use hsmpool_member::mechanism::Family;

// ----- the model -------------------------------------------------------------------------------

/// Where one request falls on the HSM's timeline (clock times).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The request reaches the HSM (sent + half the RTT).
    pub arrive: Duration,
    /// A core (and for a token creation the token mutex) is ours: service starts.
    pub start: Duration,
    /// Service ends; the core is free again.
    pub end: Duration,
    /// All work done (`end`, plus the token commit for a token creation; the token mutex is
    /// free again).
    pub done: Duration,
    /// The reply reaches the caller (`done` + the other half of the RTT).
    pub reply: Duration,
}

struct Schedule {
    /// Per core: when it is next free.
    cores: Vec<Duration>,
    /// When the token mutex is next free.
    token_free: Duration,
}

/// Counters of a model since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimingStats {
    /// Requests scheduled.
    pub ops: u64,
    /// Of which token-object creations.
    pub token_ops: u64,
    /// Total time requests waited at the HSM for a core or the token mutex, µs.
    pub queued_us: u64,
    /// Longest such wait, µs.
    pub max_queued_us: u64,
}

/// The timing model of one HSM: its config, its clock and its queue.
pub struct TimingModel {
    cfg: TimingConfig,
    clock: Arc<dyn Clock>,
    sched: Mutex<Schedule>,
    ops: AtomicU64,
    token_ops: AtomicU64,
    queued_us: AtomicU64,
    max_queued_us: AtomicU64,
}

impl fmt::Debug for TimingModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimingModel")
            .field("cfg", &self.cfg)
            .field("clock", &self.clock)
            .field("stats", &self.stats())
            .finish()
    }
}

impl TimingModel {
    /// A model on the real clock.
    pub fn new(cfg: TimingConfig) -> Self {
        TimingModel::with_clock(cfg, Arc::new(RealClock::new()))
    }

    /// A model on the given clock.
    pub fn with_clock(cfg: TimingConfig, clock: Arc<dyn Clock>) -> Self {
        let cores = cfg.cores.max(1) as usize;
        let now = clock.now();
        TimingModel {
            cfg,
            clock,
            sched: Mutex::new(Schedule {
                cores: vec![now; cores],
                token_free: now,
            }),
            ops: AtomicU64::new(0),
            token_ops: AtomicU64::new(0),
            queued_us: AtomicU64::new(0),
            max_queued_us: AtomicU64::new(0),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &TimingConfig {
        &self.cfg
    }

    /// Its counters.
    pub fn stats(&self) -> TimingStats {
        TimingStats {
            ops: self.ops.load(Ordering::Relaxed),
            token_ops: self.token_ops.load(Ordering::Relaxed),
            queued_us: self.queued_us.load(Ordering::Relaxed),
            max_queued_us: self.max_queued_us.load(Ordering::Relaxed),
        }
    }

    /// Schedule a request sent now, without sleeping: the arithmetic of the model. `token`
    /// says it creates a persistent object (serialised per HSM).
    pub fn reserve(&self, class: OpClass, token: bool) -> Slot {
        let cfg = &self.cfg;
        let before = Duration::from_micros(cfg.rtt_us / 2);
        let after = Duration::from_micros(cfg.rtt_us - cfg.rtt_us / 2);
        let service = Duration::from_micros(cfg.service_us(class));
        let commit = if token {
            Duration::from_micros(cfg.token_commit_us)
        } else {
            Duration::ZERO
        };
        let arrive = self.clock.now() + before;
        let slot = {
            let mut s = self.sched.lock();
            // A token creation may start only once the previous one is entirely done.
            let ready = if token {
                arrive.max(s.token_free)
            } else {
                arrive
            };
            // The core that can start it earliest; among those, the one free latest (leaves
            // the larger idle gaps to others).
            let mut best = 0;
            for (i, free) in s.cores.iter().enumerate() {
                let (b, f) = (ready.max(s.cores[best]), ready.max(*free));
                if f < b || (f == b && *free > s.cores[best]) {
                    best = i;
                }
            }
            let start = ready.max(s.cores[best]);
            let end = start + service;
            s.cores[best] = end;
            let done = end + commit;
            if token {
                s.token_free = done;
            }
            Slot {
                arrive,
                start,
                end,
                done,
                reply: done + after,
            }
        };
        let waited = u64::try_from((slot.start - slot.arrive).as_micros()).unwrap_or(u64::MAX);
        self.ops.fetch_add(1, Ordering::Relaxed);
        if token {
            self.token_ops.fetch_add(1, Ordering::Relaxed);
        }
        self.queued_us.fetch_add(waited, Ordering::Relaxed);
        self.max_queued_us.fetch_max(waited, Ordering::Relaxed);
        slot
    }

    /// Start a request: schedule it, sleep until its service starts, and return the timer
    /// whose drop sleeps until the reply is due. Run the real operation while holding it.
    pub fn begin(&self, class: OpClass) -> OpTimer<'_> {
        self.begin_op(class, false)
    }

    /// As [`TimingModel::begin`], for a persistent (token) object creation.
    pub fn begin_token(&self, class: OpClass) -> OpTimer<'_> {
        self.begin_op(class, true)
    }

    /// As [`TimingModel::begin`], `token` saying whether it creates a token object.
    pub fn begin_op(&self, class: OpClass, token: bool) -> OpTimer<'_> {
        let slot = self.reserve(class, token);
        self.clock.sleep_until(slot.start);
        OpTimer {
            clock: &*self.clock,
            slot,
        }
    }
}

/// A request in service; dropping it waits for the end of its service, the token commit if
/// any, and the reply leg of the round trip.
#[must_use = "the reply delay happens when the timer is dropped"]
pub struct OpTimer<'a> {
    clock: &'a dyn Clock,
    slot: Slot,
}

impl OpTimer<'_> {
    /// The request's place on the timeline.
    pub fn slot(&self) -> Slot {
        self.slot
    }
}

impl fmt::Debug for OpTimer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpTimer").field("slot", &self.slot).finish()
    }
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        self.clock.sleep_until(self.slot.reply);
    }
}

// ----- tests -----------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn virtual_model(cfg: TimingConfig) -> (Arc<VirtualClock>, TimingModel) {
        let clock = Arc::new(VirtualClock::new());
        let model = TimingModel::with_clock(cfg, clock.clone());
        (clock, model)
    }

    fn sym(ms_each: u64, cores: u32, rtt_ms: u64) -> TimingConfig {
        TimingConfig {
            rtt_us: rtt_ms * 1000,
            cores,
            symmetric_us: ms_each * 1000,
            ..TimingConfig::zero()
        }
    }

    #[test]
    fn one_request_pays_rtt_once_split_in_halves() {
        let (_, m) = virtual_model(sym(10, 1, 4));
        let s = m.reserve(OpClass::Symmetric, false);
        assert_eq!(s.arrive, ms(2));
        assert_eq!(s.start, ms(2));
        assert_eq!(s.end, ms(12));
        assert_eq!(s.done, ms(12));
        assert_eq!(s.reply, ms(14), "10 ms service + 4 ms RTT, once");
    }

    #[test]
    fn odd_rtt_microsecond_goes_to_the_reply_leg() {
        let cfg = TimingConfig {
            rtt_us: 3,
            ..TimingConfig::zero()
        };
        let (_, m) = virtual_model(cfg);
        let s = m.reserve(OpClass::Random, false);
        assert_eq!(s.arrive, Duration::from_micros(1));
        assert_eq!(s.reply, Duration::from_micros(3));
    }

    #[test]
    fn two_cores_three_concurrent_ops_third_waits() {
        let (_, m) = virtual_model(sym(10, 2, 0));
        let a = m.reserve(OpClass::Symmetric, false);
        let b = m.reserve(OpClass::Symmetric, false);
        let c = m.reserve(OpClass::Symmetric, false);
        assert_eq!((a.start, a.reply), (ms(0), ms(10)));
        assert_eq!((b.start, b.reply), (ms(0), ms(10)));
        assert_eq!(
            (c.start, c.reply),
            (ms(10), ms(20)),
            "the third waits for a core"
        );
        let st = m.stats();
        assert_eq!(st.ops, 3);
        assert_eq!(st.queued_us, 10_000);
        assert_eq!(st.max_queued_us, 10_000);
    }

    #[test]
    fn queue_is_fifo_and_rtt_is_outside_the_queue() {
        // 1 core, 10 ms each, 2 ms RTT: arrivals at 1 ms, services back to back.
        let (_, m) = virtual_model(sym(10, 1, 2));
        let replies: Vec<_> = (0..4)
            .map(|_| m.reserve(OpClass::Symmetric, false).reply)
            .collect();
        assert_eq!(replies, vec![ms(12), ms(22), ms(32), ms(42)]);
    }

    #[test]
    fn a_core_freed_earlier_is_reused() {
        let (clock, m) = virtual_model(TimingConfig {
            cores: 2,
            symmetric_us: 10_000,
            random_us: 1_000,
            ..TimingConfig::zero()
        });
        let long = m.reserve(OpClass::Symmetric, false); // core A until 10 ms
        let short = m.reserve(OpClass::Random, false); // core B until 1 ms
        assert_eq!((long.end, short.end), (ms(10), ms(1)));
        clock.set(ms(5));
        let next = m.reserve(OpClass::Random, false);
        assert_eq!(next.start, ms(5), "core B is idle at 5 ms");
        let after = m.reserve(OpClass::Symmetric, false);
        assert_eq!(after.start, ms(6), "then B again, before A frees at 10 ms");
    }

    #[test]
    fn idle_time_does_not_bank_credit() {
        let (clock, m) = virtual_model(sym(10, 1, 0));
        m.reserve(OpClass::Symmetric, false);
        clock.set(ms(100));
        let s = m.reserve(OpClass::Symmetric, false);
        assert_eq!((s.start, s.reply), (ms(100), ms(110)));
    }

    #[test]
    fn token_creation_is_serialised_even_with_free_cores() {
        let cfg = TimingConfig {
            cores: 4,
            keygen_symmetric_us: 5_000,
            token_commit_us: 20_000,
            ..TimingConfig::zero()
        };
        let (_, m) = virtual_model(cfg);
        let a = m.reserve(OpClass::KeyGenSymmetric, true);
        let b = m.reserve(OpClass::KeyGenSymmetric, true);
        let c = m.reserve(OpClass::KeyGenSymmetric, true);
        assert_eq!((a.start, a.end, a.done), (ms(0), ms(5), ms(25)));
        assert_eq!((b.start, b.done), (ms(25), ms(50)), "waits for a's commit");
        assert_eq!((c.start, c.done), (ms(50), ms(75)));
        // Session key generation and other work are not held up by the token mutex.
        let s = m.reserve(OpClass::KeyGenSymmetric, false);
        assert_eq!((s.start, s.reply), (ms(0), ms(5)));
        assert_eq!(m.stats().token_ops, 3);
    }

    #[test]
    fn token_commit_holds_no_core() {
        let cfg = TimingConfig {
            cores: 1,
            keygen_ec_us: 2_000,
            symmetric_us: 1_000,
            token_commit_us: 50_000,
            ..TimingConfig::zero()
        };
        let (_, m) = virtual_model(cfg);
        let t = m.reserve(OpClass::KeyGenEc, true);
        let s = m.reserve(OpClass::Symmetric, false);
        assert_eq!((t.end, t.done), (ms(2), ms(52)));
        assert_eq!(
            (s.start, s.end),
            (ms(2), ms(3)),
            "the core is free during the commit"
        );
    }

    #[test]
    fn begin_sleeps_to_start_and_drop_to_reply() {
        let (clock, m) = virtual_model(sym(10, 1, 4));
        {
            let _a = m.begin(OpClass::Symmetric);
            let _b = m.begin(OpClass::Symmetric);
        }
        // a: start 2, b: start 12; drops in reverse order: b reply 24, a reply 14.
        assert_eq!(clock.sleeps(), vec![ms(2), ms(12), ms(24), ms(14)]);
    }

    #[test]
    fn auto_advancing_clock_runs_one_timeline() {
        let clock = Arc::new(VirtualClock::auto_advancing());
        let m = TimingModel::with_clock(sym(10, 2, 2), clock.clone());
        for _ in 0..3 {
            drop(m.begin(OpClass::Symmetric));
        }
        // Sequential requests never queue: each is 1 + 10 + 1 ms.
        assert_eq!(clock.now(), ms(36));
        assert_eq!(m.stats().queued_us, 0);
    }

    #[test]
    fn concurrent_threads_share_the_cores() {
        let (clock, m) = virtual_model(sym(10, 2, 0));
        let m = Arc::new(m);
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || m.begin(OpClass::Symmetric).slot().reply)
            })
            .collect();
        let mut replies: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        replies.sort();
        assert_eq!(
            replies,
            vec![ms(10), ms(10), ms(20), ms(20), ms(30), ms(30)],
            "6 ops on 2 cores take 3 rounds"
        );
        assert_eq!(clock.sleeps().len(), 12);
    }

    #[test]
    fn zero_cores_means_one() {
        let (_, m) = virtual_model(sym(10, 0, 0));
        m.reserve(OpClass::Symmetric, false);
        assert_eq!(m.reserve(OpClass::Symmetric, false).start, ms(10));
    }

    #[test]
    fn classify_sign_verify_encrypt_decrypt() {
        assert_eq!(
            OpClass::from_sign(CKM_SHA256_RSA_PKCS, 2048),
            OpClass::RsaPrivate2048
        );
        assert_eq!(
            OpClass::from_sign(CKM_RSA_PKCS_PSS, 3072),
            OpClass::RsaPrivate3072
        );
        assert_eq!(
            OpClass::from_sign(CKM_SHA512_RSA_PKCS_PSS, 4096),
            OpClass::RsaPrivate4096
        );
        assert_eq!(OpClass::from_sign(CKM_ECDSA, 256), OpClass::EcdsaP256Sign);
        assert_eq!(
            OpClass::from_sign(CKM_ECDSA_SHA384, 384),
            OpClass::EcdsaP384Sign
        );
        assert_eq!(OpClass::from_sign(CKM_EDDSA, 255), OpClass::EcdsaP256Sign);
        assert_eq!(OpClass::from_sign(CKM_SHA256_HMAC, 256), OpClass::Symmetric);
        assert_eq!(OpClass::from_sign(CKM_AES_CMAC, 128), OpClass::Symmetric);
        assert_eq!(
            OpClass::from_verify(CKM_SHA256_RSA_PKCS, 4096),
            OpClass::RsaPublic
        );
        assert_eq!(
            OpClass::from_verify(CKM_ECDSA_SHA256, 256),
            OpClass::EcdsaP256Verify
        );
        assert_eq!(
            OpClass::from_verify(CKM_ECDSA, 521),
            OpClass::EcdsaP384Verify
        );
        assert_eq!(
            OpClass::from_encrypt(CKM_RSA_PKCS_OAEP, 2048),
            OpClass::RsaPublic
        );
        assert_eq!(OpClass::from_encrypt(CKM_AES_GCM, 256), OpClass::Symmetric);
        assert_eq!(
            OpClass::from_decrypt(CKM_RSA_PKCS_OAEP, 3072),
            OpClass::RsaPrivate3072
        );
        assert_eq!(
            OpClass::from_decrypt(CKM_AES_CBC_PAD, 128),
            OpClass::Symmetric
        );
        assert_eq!(
            OpClass::from_derive(CKM_ECDH1_DERIVE, 384),
            OpClass::EcdsaP384Sign
        );
        assert_eq!(
            OpClass::from_derive(CKM_HKDF_DERIVE, 256),
            OpClass::Symmetric
        );
    }

    #[test]
    fn classify_key_generation() {
        assert_eq!(
            OpClass::from_key_gen(CKM_AES_KEY_GEN, 256),
            OpClass::KeyGenSymmetric
        );
        assert_eq!(
            OpClass::from_key_gen(CKM_EC_KEY_PAIR_GEN, 384),
            OpClass::KeyGenEc
        );
        assert_eq!(
            OpClass::from_key_gen(CKM_EC_EDWARDS_KEY_PAIR_GEN, 255),
            OpClass::KeyGenEc
        );
        let rsa = |bits| vec![Attr::ulong(CKA_MODULUS_BITS, bits)];
        assert_eq!(
            OpClass::from_key_pair_template(CKM_RSA_PKCS_KEY_PAIR_GEN, &rsa(2048)),
            OpClass::KeyGenRsa2048
        );
        assert_eq!(
            OpClass::from_key_pair_template(CKM_RSA_PKCS_KEY_PAIR_GEN, &rsa(3072)),
            OpClass::KeyGenRsa3072
        );
        assert_eq!(
            OpClass::from_key_pair_template(CKM_RSA_PKCS_KEY_PAIR_GEN, &rsa(4096)),
            OpClass::KeyGenRsa4096
        );
        assert_eq!(
            OpClass::from_key_pair_template(CKM_RSA_PKCS_KEY_PAIR_GEN, &[]),
            OpClass::KeyGenRsa2048
        );
        let ec = vec![Attr::bytes(CKA_EC_PARAMS, Curve::P384.ec_params_der())];
        assert_eq!(
            OpClass::from_key_pair_template(CKM_EC_KEY_PAIR_GEN, &ec),
            OpClass::KeyGenEc
        );
        assert_eq!(token_in(&[Attr::bool(CKA_TOKEN, true)]), Some(true));
        assert_eq!(token_in(&[Attr::bool(CKA_TOKEN, false)]), Some(false));
        assert_eq!(token_in(&[]), None);
    }

    #[test]
    fn defaults_follow_the_published_throughput() {
        let d = TimingConfig::default();
        assert_eq!(d, TimingConfig::cloudhsm_hsm2m_medium());
        let per_sec = |us: u64| u64::from(d.cores) * 1_000_000 / us;
        // ~1,000 RSA-2048 signs/s and ~1,500 P-256 signs/s per saturated hsm2m.medium HSM.
        assert_eq!(per_sec(d.rsa_2048_private_us), 1_000);
        assert!((1_499..=1_500).contains(&per_sec(d.ecdsa_p256_sign_us)));
        let h1 = TimingConfig::cloudhsm_hsm1_medium();
        assert_eq!(u64::from(h1.cores) * 1_000_000 / h1.ecdsa_p256_sign_us, 250);
        assert_eq!(h1.rsa_2048_private_us, d.rsa_2048_private_us);
        // Ordering sanity of the estimates.
        assert!(d.rsa_public_us < d.rsa_2048_private_us);
        assert!(d.rsa_2048_private_us < d.rsa_3072_private_us);
        assert!(d.rsa_3072_private_us < d.rsa_4096_private_us);
        assert!(d.keygen_rsa_2048_us < d.keygen_rsa_4096_us);
        assert!(d.rtt_us > 0 && d.token_commit_us > 0);
    }

    #[test]
    fn model_off_by_default_in_hsm_config() {
        let cfg = crate::hsm::HsmConfig::new(std::path::PathBuf::from("/nonexistent"));
        assert!(cfg.timing.is_none());
    }

    // ----- real clock: lower bounds only, never upper bounds ----------------------------------

    #[test]
    fn real_clock_delays_happen() {
        // 1 core, 20 ms service, 10 ms RTT; two concurrent requests: the second ends no
        // earlier than 5 + 20 + 20 + 5 = 50 ms after the start.
        let m = Arc::new(TimingModel::new(sym(20, 1, 10)));
        let t0 = Instant::now();
        let h = {
            let m = m.clone();
            std::thread::spawn(move || drop(m.begin(OpClass::Symmetric)))
        };
        drop(m.begin(OpClass::Symmetric));
        let one = t0.elapsed();
        h.join().unwrap();
        let both = t0.elapsed();
        assert!(one >= 30 * MS, "one request: {one:?}");
        assert!(both >= 50 * MS, "two requests on one core: {both:?}");
    }

    #[test]
    fn real_clock_hsm_hooks_apply() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::hsm::HsmConfig::new(dir.path().to_path_buf());
        cfg.timing = Some(TimingConfig {
            rtt_us: 20_000,
            ..TimingConfig::zero()
        });
        let hsm = crate::hsm::Hsm::open(cfg).unwrap();
        let t0 = Instant::now();
        let mut buf = [0u8; 16];
        hsm.random(&mut buf).unwrap();
        assert!(
            t0.elapsed() >= 20 * MS,
            "random paid the RTT: {:?}",
            t0.elapsed()
        );
        assert_eq!(hsm.timing().map(|t| t.stats().ops), Some(1));
    }
}
