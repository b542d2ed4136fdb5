//! Find-by-label cost must not grow with the number of objects: C_FindObjectsInit(label) +
//! C_FindObjects + C_FindObjectsFinal for a label matching exactly one object, with 10 and with
//! 100,000 session data objects present. (A signature through the module, next to aws-lc's own,
//! is benches/sign.rs.)
//!
//! Everything goes through the built module's C ABI (`cryptoki`), as an application would call
//! it. Build the module first (`cargo build --release --workspace`), or name it with
//! `HSMPOOL_MODULE`.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::Session;
use hsmpool_bench::setup::{self, DataDir};

/// The object counts compared.
const SIZES: [usize; 2] = [10, 100_000];

fn label(i: usize) -> Vec<u8> {
    format!("find-bench-{i}").into_bytes()
}

/// Create session data objects `from..to` (CKA_TOKEN false: nothing is written to disk).
fn create_objects(s: &Session, from: usize, to: usize) {
    for i in from..to {
        let template = [
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(false),
            Attribute::Label(label(i)),
            Attribute::Value(i.to_be_bytes().to_vec()),
        ];
        s.create_object(&template)
            .expect("C_CreateObject of a session data object succeeds");
    }
}

fn find(c: &mut Criterion) {
    let module = setup::module_path(None).unwrap_or_else(|e| panic!("{e}"));
    // Fast PIN hashing: the bench measures finds, not logins.
    let data =
        DataDir::prepare(None, "pin_iterations = 1000\n").expect("a temporary data directory");
    let pkcs11 = setup::load(&module).expect("the module loads and initialises");
    let slot = setup::slot(&pkcs11).expect("the module has a slot");
    let session = setup::init_token(&pkcs11, slot, "find-bench").expect("the token initialises");

    let mut group = c.benchmark_group("find_by_label");
    let mut present = 0;
    for n in SIZES {
        let t0 = Instant::now();
        create_objects(&session, present, n);
        eprintln!(
            "created {} session objects ({n} present) in {:.2?}",
            n - present,
            t0.elapsed()
        );
        present = n;
        let target = [Attribute::Label(label(n / 2))];
        // Outside the timing: the label matches exactly one object.
        let found = session
            .find_objects(&target)
            .expect("C_FindObjects succeeds");
        assert_eq!(
            found.len(),
            1,
            "the label {:?} matches exactly one object",
            String::from_utf8_lossy(&label(n / 2))
        );
        group.bench_with_input(BenchmarkId::new("objects", n), &target, |b, target| {
            // `find_objects` is C_FindObjectsInit, one C_FindObjects (one hit fits its buffer of
            // 10, so the short batch ends the search) and C_FindObjectsFinal.
            b.iter(|| {
                black_box(
                    session
                        .find_objects(black_box(target))
                        .expect("C_FindObjects succeeds"),
                )
            })
        });
    }
    group.finish();

    drop(session);
    pkcs11.finalize().expect("C_Finalize");
    drop(data);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = find
}
criterion_main!(benches);
