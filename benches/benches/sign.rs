//! One signature through the whole path (the C ABI, the engine, the cluster's routing, the
//! in-process simulated HSM, aws-lc) next to the same signature made with aws-lc-rs directly,
//! in one group so the report shows their ratio: ECDSA P-256 (`CKM_ECDSA_SHA256`) and RSA-2048
//! (`CKM_SHA256_RSA_PKCS`) over a 64-byte message, on the embedded default.
//!
//! `cryptoki`'s `sign` is `C_SignInit` and two `C_Sign` calls (the length query, which computes
//! and keeps the signature, then the copy): one signature per iteration, as an application makes
//! it. Build the module first (`cargo build --release -p hsmpool-pkcs11`), or name it with
//! `HSMPOOL_MODULE`.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use criterion::{criterion_group, criterion_main, Criterion};
use cryptoki::mechanism::Mechanism;
use hsmpool_bench::keys::{self, EcPublic, RsaPublic};
use hsmpool_bench::setup::{self, DataDir};

/// The message signed.
const MESSAGE: [u8; 64] = [0x5a; 64];

fn sign(c: &mut Criterion) {
    let module = setup::module_path(None).unwrap_or_else(|e| panic!("{e}"));
    let data =
        DataDir::prepare(None, "pin_iterations = 1000\n").expect("a temporary data directory");
    let pkcs11 = setup::load(&module).expect("the module loads and initialises");
    let slot = setup::slot(&pkcs11).expect("the module has a slot");
    let session = setup::init_token(&pkcs11, slot, "sign-bench").expect("the token initialises");
    let rng = SystemRandom::new();

    // Keys on both sides, and a check outside the timing that each side's signatures verify.
    let ec = keys::generate_ec(&session, "sign-bench-ec", false).expect("a P-256 key pair");
    let ec_public = EcPublic::read(&session, ec.public).expect("CKA_EC_POINT");
    let sig = session
        .sign(&Mechanism::EcdsaSha256, ec.private, &MESSAGE)
        .expect("C_Sign (ECDSA)");
    assert!(
        ec_public.verify_sha256(&MESSAGE, &sig),
        "aws-lc-rs verifies the module's ECDSA signature"
    );
    let raw_ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
        .expect("an aws-lc-rs P-256 key");
    let sig = raw_ec.sign(&rng, &MESSAGE).expect("aws-lc-rs ECDSA sign");
    assert!(
        EcPublic {
            point: raw_ec.public_key().as_ref().to_vec()
        }
        .verify_sha256(&MESSAGE, sig.as_ref()),
        "aws-lc-rs's own ECDSA signature verifies"
    );

    let rsa = keys::generate_rsa(&session, "sign-bench-rsa", false).expect("an RSA key pair");
    let rsa_public = RsaPublic::read(&session, rsa.public).expect("CKA_MODULUS");
    let sig = session
        .sign(&Mechanism::Sha256RsaPkcs, rsa.private, &MESSAGE)
        .expect("C_Sign (RSA)");
    assert!(
        rsa_public.verify_sha256_pkcs1(&MESSAGE, &sig),
        "aws-lc-rs verifies the module's RSA signature"
    );
    let raw_rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("an aws-lc-rs RSA-2048 key");
    let mut raw_rsa_sig = vec![0; raw_rsa.public_modulus_len()];

    let mut group = c.benchmark_group("sign");
    group.bench_function("ecdsa_p256/module", |b| {
        b.iter(|| {
            session
                .sign(&Mechanism::EcdsaSha256, ec.private, black_box(&MESSAGE))
                .expect("C_Sign succeeds")
        })
    });
    group.bench_function("ecdsa_p256/aws_lc", |b| {
        b.iter(|| {
            raw_ec
                .sign(&rng, black_box(&MESSAGE))
                .expect("aws-lc-rs signs")
        })
    });
    group.bench_function("rsa2048/module", |b| {
        b.iter(|| {
            session
                .sign(&Mechanism::Sha256RsaPkcs, rsa.private, black_box(&MESSAGE))
                .expect("C_Sign succeeds")
        })
    });
    group.bench_function("rsa2048/aws_lc", |b| {
        b.iter(|| {
            raw_rsa
                .sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    black_box(&MESSAGE),
                    &mut raw_rsa_sig,
                )
                .expect("aws-lc-rs signs");
            black_box(&raw_rsa_sig);
        })
    });
    group.finish();

    drop(session);
    pkcs11.finalize().expect("C_Finalize");
    drop(data);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = sign
}
criterion_main!(benches);
