//! Operation state (issue 11), for every operation family: which call may follow which, what a
//! refused call ends, and what the block modes return from each update.
//!
//! The rule the engine implements (engine/src/ops.rs, `Form`): the first call after `*Init`
//! that the token answers (a length query and `CKR_BUFFER_TOO_SMALL` included) fixes the form,
//! single-part or multi-part. A call of the other form is `CKR_OPERATION_ACTIVE`; when it is a
//! call that finishes an operation (`C_Encrypt`, `C_EncryptFinal`, `C_Digest`, `C_Sign`,
//! `C_Verify`, ...) it ends the operation, as PKCS #11 3.0 §5.8.2 and its siblings say such a
//! call "always terminates the active operation" unless it is `CKR_BUFFER_TOO_SMALL` or a
//! successful length query; an update (`C_EncryptUpdate`, `C_DigestKey`, ...) refused so ends
//! nothing, and the operation can still be completed the way it began.

use std::ffi::c_void;
use std::ptr;

use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{create_secret, mech, mech_param, Fixture, Module};

/// Room for any output of these tests.
const BIG: usize = 4096;
const AES_KEY: [u8; 32] = [0x42; 32];
const HMAC_KEY: [u8; 24] = [0x17; 24];
const IV: [u8; 16] = [0x0c; 16];
const GCM_IV: [u8; 12] = [0x09; 12];
const AAD: [u8; 6] = *b"header";
const CTR_BLOCK: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0xff, 0xff, 0xff, 0xf0];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Encrypt,
    Decrypt,
    Digest,
    Sign,
    Verify,
}

/// How a call's output buffer is given: NULL (a length query) or a buffer of this many bytes.
#[derive(Clone, Copy, Debug)]
enum Out {
    Query,
    Cap(usize),
}

/// A call's answer: its CK_RV, what it wrote to the length argument, and the bytes it wrote
/// (only for `CKR_OK` with a buffer).
#[derive(Debug)]
struct Answer {
    rv: CK_RV,
    len: usize,
    bytes: Vec<u8>,
}

/// A call under the variable-length output rule (§5.2).
fn out_call(out: Out, f: impl FnOnce(*mut u8, *mut CK_ULONG) -> CK_RV) -> Answer {
    let (mut buf, p) = match out {
        Out::Query => (Vec::new(), ptr::null_mut()),
        Out::Cap(n) => {
            let mut b = vec![0u8; n];
            let p = b.as_mut_ptr();
            (b, p)
        }
    };
    let mut len: CK_ULONG = match out {
        Out::Query => 0,
        Out::Cap(n) => n as CK_ULONG,
    };
    let rv = f(p, &mut len);
    let len = len as usize;
    if rv == CKR_OK && matches!(out, Out::Cap(_)) {
        buf.truncate(len);
    } else {
        buf.clear();
    }
    Answer {
        rv,
        len,
        bytes: buf,
    }
}

/// A call with no output (`C_DigestUpdate`, `C_Verify`, ...).
fn plain(rv: CK_RV) -> Answer {
    Answer {
        rv,
        len: 0,
        bytes: Vec::new(),
    }
}

/// `*Init` of `kind` with `mt` (its parameter made here: the module copies it at `*Init`).
fn init(
    m: &Module,
    h: CK_SESSION_HANDLE,
    kind: Kind,
    mt: CK_MECHANISM_TYPE,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    let mut iv = IV;
    let mut giv = GCM_IV;
    let mut aad = AAD;
    let mut gcm = CK_GCM_PARAMS {
        pIv: giv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvBits: 96,
        pAAD: aad.as_mut_ptr(),
        ulAADLen: AAD.len() as CK_ULONG,
        ulTagBits: 128,
    };
    let mut ctr = CK_AES_CTR_PARAMS {
        ulCounterBits: 32,
        cb: CTR_BLOCK,
    };
    let mut mm = match mt {
        CKM_AES_CBC | CKM_AES_CBC_PAD => CK_MECHANISM {
            mechanism: mt,
            pParameter: iv.as_mut_ptr() as *mut c_void,
            ulParameterLen: 16,
        },
        CKM_AES_GCM => mech_param(mt, &mut gcm),
        CKM_AES_CTR => mech_param(mt, &mut ctr),
        _ => mech(mt),
    };
    match kind {
        Kind::Encrypt => call!(m, C_EncryptInit, h, &mut mm, key),
        Kind::Decrypt => call!(m, C_DecryptInit, h, &mut mm, key),
        Kind::Digest => call!(m, C_DigestInit, h, &mut mm),
        Kind::Sign => call!(m, C_SignInit, h, &mut mm, key),
        Kind::Verify => call!(m, C_VerifyInit, h, &mut mm, key),
    }
}

/// The single-part call of `kind` (`sig` is `C_Verify`'s signature).
fn single(
    m: &Module,
    h: CK_SESSION_HANDLE,
    kind: Kind,
    data: &[u8],
    sig: &[u8],
    out: Out,
) -> Answer {
    let (d, n) = (data.as_ptr() as *mut u8, data.len() as CK_ULONG);
    match kind {
        Kind::Encrypt => out_call(out, |p, l| call!(m, C_Encrypt, h, d, n, p, l)),
        Kind::Decrypt => out_call(out, |p, l| call!(m, C_Decrypt, h, d, n, p, l)),
        Kind::Digest => out_call(out, |p, l| call!(m, C_Digest, h, d, n, p, l)),
        Kind::Sign => out_call(out, |p, l| call!(m, C_Sign, h, d, n, p, l)),
        Kind::Verify => plain(call!(
            m,
            C_Verify,
            h,
            d,
            n,
            sig.as_ptr() as *mut u8,
            sig.len() as CK_ULONG
        )),
    }
}

/// The update of `kind` (`out` matters to `C_EncryptUpdate` / `C_DecryptUpdate` only).
fn update(m: &Module, h: CK_SESSION_HANDLE, kind: Kind, part: &[u8], out: Out) -> Answer {
    let (d, n) = (part.as_ptr() as *mut u8, part.len() as CK_ULONG);
    match kind {
        Kind::Encrypt => out_call(out, |p, l| call!(m, C_EncryptUpdate, h, d, n, p, l)),
        Kind::Decrypt => out_call(out, |p, l| call!(m, C_DecryptUpdate, h, d, n, p, l)),
        Kind::Digest => plain(call!(m, C_DigestUpdate, h, d, n)),
        Kind::Sign => plain(call!(m, C_SignUpdate, h, d, n)),
        Kind::Verify => plain(call!(m, C_VerifyUpdate, h, d, n)),
    }
}

/// The final call of `kind` (`sig` is `C_VerifyFinal`'s signature).
fn finish(m: &Module, h: CK_SESSION_HANDLE, kind: Kind, sig: &[u8], out: Out) -> Answer {
    match kind {
        Kind::Encrypt => out_call(out, |p, l| call!(m, C_EncryptFinal, h, p, l)),
        Kind::Decrypt => out_call(out, |p, l| call!(m, C_DecryptFinal, h, p, l)),
        Kind::Digest => out_call(out, |p, l| call!(m, C_DigestFinal, h, p, l)),
        Kind::Sign => out_call(out, |p, l| call!(m, C_SignFinal, h, p, l)),
        Kind::Verify => plain(call!(
            m,
            C_VerifyFinal,
            h,
            sig.as_ptr() as *mut u8,
            sig.len() as CK_ULONG
        )),
    }
}

/// One operation family, ready to run: its mechanism, key, input, and the single-part result
/// of that input (for verification: the signature).
struct Family {
    name: &'static str,
    kind: Kind,
    mt: CK_MECHANISM_TYPE,
    key: CK_OBJECT_HANDLE,
    data: Vec<u8>,
    result: Vec<u8>,
}

impl Family {
    fn init(&self, m: &Module, h: CK_SESSION_HANDLE) {
        assert_eq!(
            init(m, h, self.kind, self.mt, self.key),
            CKR_OK,
            "{}: *Init",
            self.name
        );
    }
    fn single(&self, m: &Module, h: CK_SESSION_HANDLE, out: Out) -> Answer {
        single(m, h, self.kind, &self.data, &self.result, out)
    }
    fn update(&self, m: &Module, h: CK_SESSION_HANDLE, part: &[u8], out: Out) -> Answer {
        update(m, h, self.kind, part, out)
    }
    fn finish(&self, m: &Module, h: CK_SESSION_HANDLE, out: Out) -> Answer {
        finish(m, h, self.kind, &self.result, out)
    }
    /// Whether the single-part call has a length query (every one but `C_Verify`).
    fn has_output(&self) -> bool {
        self.kind != Kind::Verify
    }
}

/// The AES key (encrypt and decrypt) and the HMAC key (sign and verify).
fn keys(m: &Module, h: CK_SESSION_HANDLE) -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
    let aes = create_secret(m, h, CKK_AES, &AES_KEY, &[]).expect("AES key");
    let hmac = create_secret(m, h, CKK_GENERIC_SECRET, &HMAC_KEY, &[]).expect("HMAC key");
    (aes, hmac)
}

/// A whole single-part run through the module (to have a result to compare with).
fn one_shot(
    m: &Module,
    h: CK_SESSION_HANDLE,
    kind: Kind,
    mt: CK_MECHANISM_TYPE,
    key: CK_OBJECT_HANDLE,
    data: &[u8],
) -> Vec<u8> {
    assert_eq!(init(m, h, kind, mt, key), CKR_OK, "{kind:?} {mt:#x}: *Init");
    let a = single(m, h, kind, data, &[], Out::Cap(BIG));
    assert_eq!(a.rv, CKR_OK, "{kind:?} {mt:#x}: single-part");
    a.bytes
}

/// Every family: encryption with a mechanism whose length the module knows without computing
/// (CBC-PAD) and one whose result it computes and keeps (ECB), decryption, digest, MAC, MAC
/// verification. The expected results are aws-lc's where it has one.
fn families(m: &Module, h: CK_SESSION_HANDLE) -> Vec<Family> {
    let (aes, hmac) = keys(m, h);
    let data: Vec<u8> = (0..48u8).collect();
    let cbc_pad = one_shot(m, h, Kind::Encrypt, CKM_AES_CBC_PAD, aes, &data);
    assert_eq!(cbc_pad.len(), 64);
    let ecb = one_shot(m, h, Kind::Encrypt, CKM_AES_ECB, aes, &data);
    assert_eq!(ecb, aws_lc_ecb(&data), "ECB as aws-lc computes it");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data)
        .as_ref()
        .to_vec();
    let mac = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &HMAC_KEY),
        &data,
    )
    .as_ref()
    .to_vec();
    let f = |name, kind, mt, key, data: &[u8], result: &[u8]| Family {
        name,
        kind,
        mt,
        key,
        data: data.to_vec(),
        result: result.to_vec(),
    };
    vec![
        f(
            "encrypt CBC-PAD",
            Kind::Encrypt,
            CKM_AES_CBC_PAD,
            aes,
            &data,
            &cbc_pad,
        ),
        f("encrypt ECB", Kind::Encrypt, CKM_AES_ECB, aes, &data, &ecb),
        f(
            "decrypt CBC-PAD",
            Kind::Decrypt,
            CKM_AES_CBC_PAD,
            aes,
            &cbc_pad,
            &data,
        ),
        f(
            "digest SHA-256",
            Kind::Digest,
            CKM_SHA256,
            0,
            &data,
            &digest,
        ),
        f("sign HMAC", Kind::Sign, CKM_SHA256_HMAC, hmac, &data, &mac),
        f(
            "verify HMAC",
            Kind::Verify,
            CKM_SHA256_HMAC,
            hmac,
            &data,
            &mac,
        ),
    ]
}

fn aws_lc_ecb(data: &[u8]) -> Vec<u8> {
    use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_256};
    let k = EncryptingKey::ecb(UnboundCipherKey::new(&AES_256, &AES_KEY).expect("AES key"))
        .expect("ECB key");
    let mut buf = data.to_vec();
    k.less_safe_encrypt(&mut buf, EncryptionContext::None)
        .expect("aws-lc encrypts whole blocks");
    buf
}

/// Rule A.1: after a single-part length query an update is `CKR_OPERATION_ACTIVE` and ends
/// nothing: the single-part call then completes with the right result.
#[test]
fn an_update_after_a_single_part_length_query_is_refused_and_the_operation_goes_on() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let (_, hmac) = keys(m, h);
    for fam in families(m, h).iter().filter(|f| f.has_output()) {
        let name = fam.name;
        fam.init(m, h);
        let q = fam.single(m, h, Out::Query);
        assert_eq!(q.rv, CKR_OK, "{name}: single-part length query");
        assert!(q.len >= fam.result.len(), "{name}: the length covers it");
        let u = fam.update(m, h, &fam.data[..16], Out::Cap(BIG));
        assert_eq!(u.rv, CKR_OPERATION_ACTIVE, "{name}: update after the query");
        if matches!(fam.kind, Kind::Encrypt | Kind::Decrypt) {
            let u = fam.update(m, h, &fam.data[..16], Out::Query);
            assert_eq!(u.rv, CKR_OPERATION_ACTIVE, "{name}: update length query");
        }
        if fam.kind == Kind::Digest {
            assert_eq!(
                call!(m, C_DigestKey, h, hmac),
                CKR_OPERATION_ACTIVE,
                "{name}: C_DigestKey after the query"
            );
        }
        let a = fam.single(m, h, Out::Cap(q.len));
        assert_eq!(a.rv, CKR_OK, "{name}: the single-part call completes");
        assert_eq!(a.bytes, fam.result, "{name}: with the right result");
        let again = fam.single(m, h, Out::Cap(BIG));
        assert_eq!(again.rv, CKR_OPERATION_NOT_INITIALIZED, "{name}: and ends");
    }
}

/// Rule A.1 the other way, and A.2: after an update the single-part call is
/// `CKR_OPERATION_ACTIVE`, and it ends the operation (§5.8.2 and siblings: "always terminates").
#[test]
fn a_single_part_call_after_an_update_is_refused_and_ends_the_operation() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    for fam in families(m, h) {
        let name = fam.name;
        fam.init(m, h);
        let u = fam.update(m, h, &fam.data[..16], Out::Cap(BIG));
        assert_eq!(u.rv, CKR_OK, "{name}: update");
        let s = fam.single(m, h, Out::Cap(BIG));
        assert_eq!(
            s.rv, CKR_OPERATION_ACTIVE,
            "{name}: single-part after an update"
        );
        let f = fam.finish(m, h, Out::Cap(BIG));
        assert_eq!(
            f.rv, CKR_OPERATION_NOT_INITIALIZED,
            "{name}: the refused single-part call ended the operation"
        );
    }
}

/// A.2 as the issue gives it: `C_DigestInit`, `C_DigestUpdate`, a `C_DigestFinal` length
/// query, then `C_Digest` is `CKR_OPERATION_ACTIVE` and a following `C_DigestFinal` is
/// `CKR_OPERATION_NOT_INITIALIZED`; the same for every family with a final length query.
#[test]
fn a_single_part_call_after_a_final_length_query_is_refused_and_ends_the_operation() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    for fam in families(m, h).iter().filter(|f| f.has_output()) {
        let name = fam.name;
        fam.init(m, h);
        let u = fam.update(m, h, &fam.data, Out::Cap(BIG));
        assert_eq!(u.rv, CKR_OK, "{name}: update");
        let q = fam.finish(m, h, Out::Query);
        assert_eq!(q.rv, CKR_OK, "{name}: final length query");
        let s = fam.single(m, h, Out::Cap(BIG));
        assert_eq!(s.rv, CKR_OPERATION_ACTIVE, "{name}: single-part after it");
        let f = fam.finish(m, h, Out::Cap(BIG));
        assert_eq!(
            f.rv, CKR_OPERATION_NOT_INITIALIZED,
            "{name}: the refused single-part call ended the operation"
        );
    }
}

/// A.2 the other way: a single-part call answered with a length (a query, or
/// `CKR_BUFFER_TOO_SMALL`), then the final call is `CKR_OPERATION_ACTIVE` and ends the
/// operation: the single-part call that follows is `CKR_OPERATION_NOT_INITIALIZED`.
#[test]
fn a_final_call_after_a_single_part_length_answer_is_refused_and_ends_the_operation() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    for fam in families(m, h).iter().filter(|f| f.has_output()) {
        for (how, out, rv) in [
            ("length query", Out::Query, CKR_OK),
            ("short buffer", Out::Cap(1), CKR_BUFFER_TOO_SMALL),
        ] {
            let name = fam.name;
            fam.init(m, h);
            let q = fam.single(m, h, out);
            assert_eq!(q.rv, rv, "{name}: single-part {how}");
            let f = fam.finish(m, h, Out::Cap(BIG));
            assert_eq!(
                f.rv, CKR_OPERATION_ACTIVE,
                "{name}: final after a single-part {how}"
            );
            let s = fam.single(m, h, Out::Cap(BIG));
            assert_eq!(
                s.rv, CKR_OPERATION_NOT_INITIALIZED,
                "{name}: the refused final call ended the operation ({how})"
            );
        }
    }
}

/// After a final length query the result is computed and kept: an update is
/// `CKR_OPERATION_ACTIVE` (it cannot join a result already made) and ends nothing; the final
/// call then returns the result of the data given before the query, no more.
#[test]
fn an_update_after_a_final_length_query_is_refused_and_the_kept_result_is_intact() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    for fam in families(m, h).iter().filter(|f| f.has_output()) {
        let name = fam.name;
        fam.init(m, h);
        let u = fam.update(m, h, &fam.data, Out::Cap(BIG));
        assert_eq!(u.rv, CKR_OK, "{name}: update");
        let mut got = u.bytes;
        let q = fam.finish(m, h, Out::Query);
        assert_eq!(q.rv, CKR_OK, "{name}: final length query");
        let again = fam.update(m, h, &fam.data, Out::Cap(BIG));
        assert_eq!(
            again.rv, CKR_OPERATION_ACTIVE,
            "{name}: update after the final length query"
        );
        let f = fam.finish(m, h, Out::Cap(q.len));
        assert_eq!(f.rv, CKR_OK, "{name}: the final call completes");
        got.extend_from_slice(&f.bytes);
        assert_eq!(got, fam.result, "{name}: over the data before the query");
    }
}

/// Verification has no length query, so it never reaches the single-part form without ending:
/// `C_Verify` ends the operation whatever its outcome, and `C_VerifyFinal` may follow
/// `C_VerifyInit` directly (a multi-part verification of no data).
#[test]
fn verify_has_no_length_query_and_ends_with_its_single_part_call() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let fams = families(m, h);
    let fam = fams
        .iter()
        .find(|f| f.kind == Kind::Verify)
        .expect("a verify family");
    // An update after C_Verify has no operation to join (§5.15.2).
    fam.init(m, h);
    assert_eq!(fam.single(m, h, Out::Query).rv, CKR_OK);
    assert_eq!(
        fam.update(m, h, &fam.data, Out::Query).rv,
        CKR_OPERATION_NOT_INITIALIZED
    );
    // C_VerifyFinal straight after C_VerifyInit is a multi-part verification of nothing.
    fam.init(m, h);
    assert_eq!(fam.finish(m, h, Out::Query).rv, CKR_SIGNATURE_INVALID);
    assert_eq!(
        fam.single(m, h, Out::Query).rv,
        CKR_OPERATION_NOT_INITIALIZED
    );
}

/// The AES modes whose updates these tests drive, with how many bytes make one input.
fn aes_input(mt: CK_MECHANISM_TYPE) -> Vec<u8> {
    let n = match mt {
        // Whole blocks for the modes without padding.
        CKM_AES_ECB | CKM_AES_CBC => 80,
        _ => 75,
    };
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// Run one multi-part operation over `parts`, each update's output taken with the two-call
/// length protocol (a query, a buffer one byte short that must not consume the part, then
/// the exact buffer), and the final call likewise. Returns each update's output length and
/// everything output.
fn multi_part(
    m: &Module,
    h: CK_SESSION_HANDLE,
    kind: Kind,
    mt: CK_MECHANISM_TYPE,
    key: CK_OBJECT_HANDLE,
    parts: &[&[u8]],
) -> (Vec<usize>, Vec<u8>) {
    let what = format!("{kind:?} {mt:#x}");
    assert_eq!(init(m, h, kind, mt, key), CKR_OK, "{what}: *Init");
    let mut lens = Vec::new();
    let mut all = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let q = update(m, h, kind, part, Out::Query);
        assert_eq!(q.rv, CKR_OK, "{what}: update {i} length query");
        if q.len > 0 {
            let short = update(m, h, kind, part, Out::Cap(q.len - 1));
            assert_eq!(
                short.rv, CKR_BUFFER_TOO_SMALL,
                "{what}: update {i}, one byte short"
            );
            assert_eq!(short.len, q.len, "{what}: update {i}: the needed length");
        }
        let a = update(m, h, kind, part, Out::Cap(q.len));
        assert_eq!(a.rv, CKR_OK, "{what}: update {i}");
        assert_eq!(
            a.bytes.len(),
            q.len,
            "{what}: update {i}: the query was exact"
        );
        lens.push(a.bytes.len());
        all.extend_from_slice(&a.bytes);
    }
    let q = finish(m, h, kind, &[], Out::Query);
    assert_eq!(q.rv, CKR_OK, "{what}: final length query");
    if q.len > 0 {
        let short = finish(m, h, kind, &[], Out::Cap(q.len - 1));
        assert_eq!(
            short.rv, CKR_BUFFER_TOO_SMALL,
            "{what}: final, one byte short"
        );
    }
    let f = finish(m, h, kind, &[], Out::Cap(q.len));
    assert_eq!(f.rv, CKR_OK, "{what}: final");
    assert_eq!(f.bytes.len(), q.len, "{what}: the final query was exact");
    all.extend_from_slice(&f.bytes);
    (lens, all)
}

/// Rule A.3: AES-ECB and AES-CBC updates return every whole block at once (holding back only
/// a partial block), encrypting and decrypting, and the pieces put together are the
/// single-part result.
#[test]
fn ecb_and_cbc_updates_return_every_whole_block_at_once() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let (aes, _) = keys(m, h);
    for mt in [CKM_AES_ECB, CKM_AES_CBC] {
        let plain = aes_input(mt);
        let cipher = one_shot(m, h, Kind::Encrypt, mt, aes, &plain);
        if mt == CKM_AES_ECB {
            assert_eq!(cipher, aws_lc_ecb(&plain), "ECB as aws-lc computes it");
        }
        for (kind, input, expect) in [
            (Kind::Encrypt, &plain, &cipher),
            (Kind::Decrypt, &cipher, &plain),
        ] {
            // 20 bytes: one block out, 4 held; 12 more: the second block; 48: three at once.
            let parts = [&input[..20], &input[20..32], &input[32..]];
            let (lens, all) = multi_part(m, h, kind, mt, aes, &parts);
            assert_eq!(
                lens,
                vec![16, 16, 48],
                "{kind:?} {mt:#x}: whole blocks at each update"
            );
            assert_eq!(
                &all, expect,
                "{kind:?} {mt:#x}: equals the single-part result"
            );
        }
    }
}

/// Rule A.3 with padding: CBC-PAD encryption returns every whole block from its updates (the
/// padding block comes from the final call); decryption holds the last whole block back, for
/// the final call to unpad.
#[test]
fn cbc_pad_decrypt_holds_the_last_block_back_and_encrypt_does_not() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let (aes, _) = keys(m, h);
    for plain_len in [48usize, 40] {
        let plain: Vec<u8> = (0..plain_len).map(|i| i as u8).collect();
        let cipher = one_shot(m, h, Kind::Encrypt, CKM_AES_CBC_PAD, aes, &plain);
        assert_eq!(cipher.len(), plain_len / 16 * 16 + 16);
        let (lens, all) = multi_part(m, h, Kind::Encrypt, CKM_AES_CBC_PAD, aes, &[&plain]);
        assert_eq!(
            lens,
            vec![plain_len / 16 * 16],
            "encrypt: every whole block at the update"
        );
        assert_eq!(all, cipher);
        // The whole ciphertext in one update: all but the last block come out.
        let (lens, all) = multi_part(m, h, Kind::Decrypt, CKM_AES_CBC_PAD, aes, &[&cipher]);
        assert_eq!(
            lens,
            vec![cipher.len() - 16],
            "decrypt: the last block is held back"
        );
        assert_eq!(all, plain);
        // One block, then the rest: the first block alone might be the last, so it waits, and
        // comes out with the rest but for the new last block.
        let (lens, all) = multi_part(
            m,
            h,
            Kind::Decrypt,
            CKM_AES_CBC_PAD,
            aes,
            &[&cipher[..16], &cipher[16..]],
        );
        assert_eq!(lens, vec![0, cipher.len() - 16]);
        assert_eq!(all, plain);
    }
}

/// The two-call length protocol on updates, in every AES mode (the streaming block modes and
/// the buffered GCM and CTR): a query gives the exact length and consumes nothing, a buffer
/// one byte short is `CKR_BUFFER_TOO_SMALL` and consumes nothing, and the pieces put together
/// are the single-part result.
#[test]
fn an_update_length_query_is_exact_and_consumes_nothing() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let (aes, _) = keys(m, h);
    for mt in [
        CKM_AES_ECB,
        CKM_AES_CBC,
        CKM_AES_CBC_PAD,
        CKM_AES_GCM,
        CKM_AES_CTR,
    ] {
        let plain = aes_input(mt);
        let cipher = one_shot(m, h, Kind::Encrypt, mt, aes, &plain);
        for (kind, input, expect) in [
            (Kind::Encrypt, &plain, &cipher),
            (Kind::Decrypt, &cipher, &plain),
        ] {
            let cuts = [0, 5, 5, 32, 47, input.len()];
            let parts: Vec<&[u8]> = cuts.windows(2).map(|w| &input[w[0]..w[1]]).collect();
            let (_, all) = multi_part(m, h, kind, mt, aes, &parts);
            assert_eq!(
                &all, expect,
                "{kind:?} {mt:#x}: the pieces equal the single-part result"
            );
        }
    }
}
