//! Cryptographic operations: init, single-part, multi-part and the spec's output-length rule.
//!
//! Multi-part input is handled so that the member sees one call wherever possible (which is
//! also what lets a later failover replay it): hash-and-sign mechanisms hash as data streams in
//! and sign the digest once; AES-ECB and AES-CBC send every whole block to the member at the
//! update that completes it and return its output from that update (CBC chaining the IV);
//! everything else (HMAC, GCM, CTR, raw RSA/ECDSA) is buffered up to [`MAX_BUFFERED`] and done
//! once at the end.
//!
//! Output-length rule (PKCS #11 §5.2): asked with no buffer, or with a buffer that is too
//! small, an operation computes its result once, keeps it, reports the length and stays
//! active; the next call with a large enough buffer returns the kept result. An update reports
//! its length before doing anything, so its query or short buffer takes no input in.
//!
//! Which calls may follow which, and what a refused one ends: see [`Form`].

use cryptoki_sys::*;
use hsmpool_member::types::cloudhsm::CKM_CLOUDHSM_AES_GCM;
use hsmpool_member::types::{MechParam, Mechanism, SignInput};
use zeroize::Zeroizing;

use crate::backend::MemberObject;
use crate::cluster::Route;
use crate::digest::DigestCtx;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::state::{KeyMemo, OpTable, Ops, Session};
use crate::types::{ObjectHandle, OpKind, SessionHandle};
use hsmpool_member::mechanism::MechRow;
use parking_lot::Mutex;
use std::sync::Arc;

/// Largest multi-part input buffered for a single member call.
pub const MAX_BUFFERED: usize = 64 << 20;

/// Largest multi-part hash-and-sign message kept whole for a member that wants whole messages
/// (`Backend::wants_whole_messages`); a longer one is hashed here.
pub const WHOLE_MAX: usize = 1 << 20;

const AES_BLOCK: usize = 16;

/// One active operation.
pub(crate) struct Op {
    mech: Mechanism,
    row: MechRow,
    key: Option<MemberObject>,
    /// Where the key is: any member (token keys), or its one member (session keys).
    pub(crate) route: Route,
    /// Balancing weight of one call of this operation.
    pub(crate) cost: u64,
    hash: Option<DigestCtx>,
    buf: PartBuf,
    /// The form the caller has chosen (single-part or multi-part), once it has.
    form: Form,
    /// A computed result waiting for a large enough buffer.
    pending: Option<Output>,
    /// AES-ECB / AES-CBC streaming state.
    blocks: Option<BlockMode>,
    /// The key has `CKA_ALWAYS_AUTHENTICATE`: the result is only produced after a
    /// `C_Login(CKU_CONTEXT_SPECIFIC)` made since the `*Init`.
    always_authenticate: bool,
}

/// Which form of an operation the caller has chosen: single-part (`C_Encrypt`, `C_Decrypt`,
/// `C_Digest`, `C_Sign`, `C_Verify`) or multi-part (the `*Update` calls and `C_DigestKey`, then
/// a `*Final`).
///
/// PKCS #11 3.0 §5.8.2 (and §5.10.2, §5.12.2, §5.13.2, §5.15.2 for the other families): the
/// single-part call "cannot be used to terminate a multi-part operation, and MUST be called
/// after C_EncryptInit without intervening C_EncryptUpdate calls". The form is fixed by the
/// first call after `*Init` that the token answers, a length query and `CKR_BUFFER_TOO_SMALL`
/// included: the caller has then been told a length for one form's result. A later call of the
/// other form is `CKR_OPERATION_ACTIVE` (an operation it cannot join is in progress).
///
/// What such a refusal ends is decided by the function refused, the same in every family:
/// - a call that finishes operations (the single-part calls, the `*Final` calls) ends the
///   operation: §5.8.2, §5.8.4 and their siblings say it "always terminates the active
///   operation unless it returns CKR_BUFFER_TOO_SMALL or is a successful call ... to determine
///   the length of the buffer needed", and a refusal is neither. So `C_DigestInit`,
///   `C_DigestUpdate`, a `C_DigestFinal` length query, `C_Digest` (`CKR_OPERATION_ACTIVE`),
///   then `C_DigestFinal` is `CKR_OPERATION_NOT_INITIALIZED`; likewise a `C_DigestFinal` after
///   a `C_Digest` length query;
/// - an update refused so ends nothing: it never joined the operation (as a refused
///   `C_EncryptInit` leaves the active operation alone), and the caller can still finish the
///   operation the way it began (`C_Encrypt` after a refused `C_EncryptUpdate`).
///
/// SoftHSMv2 (2.6.1, `src/lib/SoftHSM.cpp`) ends and keeps in the same places, with other
/// answers: after a single-part or final call of the other form its operation is over too (it
/// refuses `C_Sign`/`C_Verify` after an update with `CKR_OPERATION_NOT_INITIALIZED` and ends
/// the operation, and accepts and finishes every other mix), and an update of the other form
/// never ends it (it is accepted). Accepting joins the forms (`C_Encrypt` after
/// `C_EncryptUpdate` goes on with the same cipher context; `C_SignFinal` after a `C_Sign`
/// length query signs the empty message), which the strict suites of issue 11 refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// Fresh from `*Init`: either form may follow.
    Open,
    /// A single-part call has answered a length.
    Single,
    /// An update or `C_DigestKey` has been answered (a length query included).
    Multi,
    /// A `*Final` call has answered a length: the result is computed and kept, so an update can
    /// no longer join it; only the final call may follow.
    Finishing,
}

impl Form {
    /// Whether a single-part call may go on with an operation in this form.
    fn admits_single(self) -> bool {
        matches!(self, Form::Open | Form::Single)
    }
    /// Whether an update or `C_DigestKey` may.
    fn admits_update(self) -> bool {
        matches!(self, Form::Open | Form::Multi)
    }
    /// Whether a `*Final` call may.
    fn admits_final(self) -> bool {
        self != Form::Single
    }
}

/// How multi-part AES input in a block mode streams: each update sends every whole block it
/// completes to the member and returns their output at once (as SoftHSMv2 and OpenSSL's EVP
/// interface do: a caller streaming a large input gets it back as it goes, and the engine holds
/// at most a block); a partial block waits for more input.
#[derive(Clone, Copy)]
enum BlockMode {
    /// AES-ECB: blocks are independent, nothing is carried from one update to the next.
    Ecb,
    /// AES-CBC and AES-CBC-PAD: the IV of the blocks still to come (the last ciphertext block
    /// so far).
    Cbc([u8; AES_BLOCK]),
}

/// The buffered input of a multi-part operation, wiped when dropped as `Zeroizing` would, except
/// that a buffer that never held anything (that of every single-part call) is dropped without
/// a call into the wiping code.
#[derive(Default)]
struct PartBuf(Vec<u8>);

impl std::ops::Deref for PartBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for PartBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for PartBuf {
    fn drop(&mut self) {
        if self.0.capacity() > 0 {
            zeroize::Zeroize::zeroize(&mut self.0);
        }
    }
}

/// The operation slots of a session: at most one per kind.
#[derive(Default)]
pub(crate) struct OpSlots {
    slots: [Option<Box<Op>>; 5],
}

fn index(kind: OpKind) -> usize {
    match kind {
        OpKind::Encrypt => 0,
        OpKind::Decrypt => 1,
        OpKind::Digest => 2,
        OpKind::Sign => 3,
        OpKind::Verify => 4,
    }
}

impl OpSlots {
    /// The operation stays boxed while it runs: only a pointer moves in and out of its slot
    /// on every call (the struct, with its digest state, is hundreds of bytes).
    pub(crate) fn take(&mut self, kind: OpKind) -> Option<Box<Op>> {
        self.slots[index(kind)].take()
    }
    pub(crate) fn put(&mut self, kind: OpKind, op: Box<Op>) {
        self.slots[index(kind)] = Some(op);
    }
    fn active(&self, kind: OpKind) -> bool {
        self.slots[index(kind)].is_some()
    }
    fn clear(&mut self, kind: OpKind) {
        self.slots[index(kind)] = None;
    }
}

/// A session keeps its operations in [`OpSlots`] (see `crate::state::OpTable`).
impl OpTable for Ops {
    type Slots = OpSlots;
}

impl Engine {
    /// Take an operation out of its slot (it is put back by the caller if it stays active).
    pub(crate) fn take_op(
        &self,
        s: SessionHandle,
        kind: OpKind,
    ) -> Result<(Arc<Mutex<Session>>, Box<Op>)> {
        let sess = self.session(s)?;
        let op = sess
            .lock()
            .ops
            .take(kind)
            .ok_or(Error::OperationNotInitialized)?;
        Ok((sess, op))
    }

    pub(crate) fn put_op(&self, sess: &Mutex<Session>, kind: OpKind, op: Box<Op>) {
        sess.lock().ops.put(kind, op);
    }
}

/// A streaming digest of `mech` (SHA-1, SHA-2, SHA-3).
fn digest_ctx(mech: CK_MECHANISM_TYPE) -> Result<DigestCtx> {
    DigestCtx::new(mech)
}

fn function_flag(kind: OpKind) -> CK_FLAGS {
    match kind {
        OpKind::Encrypt => CKF_ENCRYPT,
        OpKind::Decrypt => CKF_DECRYPT,
        OpKind::Digest => CKF_DIGEST,
        OpKind::Sign => CKF_SIGN,
        OpKind::Verify => CKF_VERIFY,
    }
}

fn usage_attr(kind: OpKind) -> CK_ATTRIBUTE_TYPE {
    match kind {
        OpKind::Encrypt => CKA_ENCRYPT,
        OpKind::Decrypt => CKA_DECRYPT,
        OpKind::Sign | OpKind::Digest => CKA_SIGN,
        OpKind::Verify => CKA_VERIFY,
    }
}

/// Balancing weight of one call: roughly relative HSM service time (an RSA-2048 signature is
/// 40 times an AES or HMAC call, RSA-4096 about 8 times RSA-2048).
fn op_cost(kind: OpKind, meta: &hsmpool_member::KeyMeta) -> u64 {
    let private_side = matches!(kind, OpKind::Sign | OpKind::Decrypt);
    match meta.key_type {
        Some(CKK_RSA) if private_side => {
            let k = (meta.key_bits as u64 / 1024).max(1);
            5 * k * k * k
        }
        Some(CKK_RSA) => 2,
        Some(CKK_EC) => {
            if private_side {
                8
            } else {
                12
            }
        }
        Some(CKK_EC_EDWARDS) => 4,
        _ => 1,
    }
}

fn is_pss(mech: CK_MECHANISM_TYPE) -> bool {
    hsmpool_member::mechanism::ParamKind::of(mech) == hsmpool_member::mechanism::ParamKind::Pss
}

/// Check a mechanism's parameter shape before anything reaches a member.
/// GCM tags of 96 to 128 bits in whole bytes (SP 800-38D: shorter tags only under usage limits
/// this token cannot enforce, so they are refused), for `CKM_AES_GCM` and CloudHSM's GCM alike.
fn gcm_tag_bits_ok(tag_bits: CK_ULONG) -> bool {
    (96..=128).contains(&tag_bits) && tag_bits % 8 == 0
}

fn check_param(mech: &Mechanism) -> Result<()> {
    let ok = match (mech.mech, &mech.param) {
        (CKM_AES_CBC | CKM_AES_CBC_PAD, MechParam::Iv(iv)) => iv.len() == AES_BLOCK,
        (CKM_AES_CBC | CKM_AES_CBC_PAD, MechParam::Raw(iv)) => iv.len() == AES_BLOCK,
        (CKM_AES_CBC | CKM_AES_CBC_PAD, _) => false,
        // IVs of 1 to 1024 bytes.
        (CKM_AES_GCM, MechParam::Gcm { iv, tag_bits, .. }) => {
            (1..=1024).contains(&iv.len()) && gcm_tag_bits_ok(*tag_bits)
        }
        (CKM_AES_GCM, _) => false,
        // CloudHSM's GCM: no IV from the caller (pIv NULL), the HSM makes it.
        (CKM_CLOUDHSM_AES_GCM, MechParam::Gcm { iv, tag_bits, .. }) => {
            iv.is_empty() && gcm_tag_bits_ok(*tag_bits)
        }
        (CKM_CLOUDHSM_AES_GCM, _) => false,
        (m, p) if is_pss(m) => matches!(p, MechParam::Pss { .. }),
        (CKM_RSA_PKCS_OAEP, p) => matches!(p, MechParam::Oaep { .. }),
        // The `_GENERAL` MACs take their MAC length (CK_MAC_GENERAL_PARAMS), 1 to the full
        // length; without it there is no MAC to make, and the caller learns so here, at *Init
        // (where the mechanism and its parameter are given), not at the first C_Sign.
        (CKM_SHA_1_HMAC_GENERAL, p) => general_mac_len_ok(p, 20),
        (CKM_SHA224_HMAC_GENERAL, p) => general_mac_len_ok(p, 28),
        (CKM_SHA256_HMAC_GENERAL, p) => general_mac_len_ok(p, 32),
        (CKM_SHA384_HMAC_GENERAL, p) => general_mac_len_ok(p, 48),
        (CKM_SHA512_HMAC_GENERAL, p) => general_mac_len_ok(p, 64),
        (CKM_AES_CMAC_GENERAL, p) => general_mac_len_ok(p, 16),
        // CK_AES_CTR_PARAMS: ulCounterBits and the 16-byte counter block (the member checks
        // the counter's width).
        (CKM_AES_CTR, MechParam::Raw(r)) => r.len() == std::mem::size_of::<CK_AES_CTR_PARAMS>(),
        (CKM_AES_CTR, _) => false,
        (_, _) => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::MechanismParamInvalid)
    }
}

/// A `_GENERAL` MAC's parameter: a length from 1 to the full MAC's `full` bytes.
fn general_mac_len_ok(p: &MechParam, full: CK_ULONG) -> bool {
    matches!(p, MechParam::Ulong(n) if (1..=full).contains(n))
}

fn cbc_iv(mech: &Mechanism) -> Result<[u8; AES_BLOCK]> {
    match &mech.param {
        MechParam::Iv(iv) | MechParam::Raw(iv) => iv
            .as_slice()
            .try_into()
            .map_err(|_| Error::MechanismParamInvalid),
        _ => Err(Error::MechanismParamInvalid),
    }
}

fn with_iv(mech: CK_MECHANISM_TYPE, iv: [u8; AES_BLOCK]) -> Mechanism {
    Mechanism {
        mech,
        param: MechParam::Iv(iv.to_vec()),
    }
}

/// An operation's result. Signatures and ciphertexts are public and are not wiped; plaintexts
/// and digests (a digest may cover a key, through `C_DigestKey`) are wiped when dropped.
pub(crate) struct Output {
    bytes: Vec<u8>,
    secret: bool,
}

impl Output {
    fn public(bytes: Vec<u8>) -> Self {
        Output {
            bytes,
            secret: false,
        }
    }
    fn secret(mut z: Zeroizing<Vec<u8>>) -> Self {
        // Move the bytes out without a copy; the emptied Zeroizing has nothing left to wipe.
        Output {
            bytes: std::mem::take(&mut *z),
            secret: true,
        }
    }
}

impl std::ops::Deref for Output {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.secret {
            zeroize::Zeroize::zeroize(&mut self.bytes);
        }
    }
}

/// The output length of a single-part operation where the mechanism fixes it whatever the data
/// (a length query then needs no member call): AES-GCM (CloudHSM's too) and AES-CBC-PAD
/// encryption, by the member contract's one rule (`mechanism::encrypt_output_len`).
fn known_output_len(kind: OpKind, mech: &Mechanism, data_len: usize) -> Option<usize> {
    match (kind, mech.mech) {
        (OpKind::Encrypt, CKM_AES_GCM | CKM_CLOUDHSM_AES_GCM | CKM_AES_CBC_PAD) => {
            hsmpool_member::mechanism::encrypt_output_len(mech, data_len)
        }
        _ => None,
    }
}

/// Deliver a result under the output-length rule. Returns the op to put back (if it stays
/// active) and the outcome.
fn deliver(
    mut op: Box<Op>,
    result: Output,
    out: Option<&mut [u8]>,
) -> (Option<Box<Op>>, Result<usize>) {
    let len = result.len();
    match out {
        None => {
            op.pending = Some(result);
            (Some(op), Ok(len))
        }
        Some(buf) if buf.len() < len => {
            op.pending = Some(result);
            (Some(op), Err(Error::BufferTooSmall { needed: len }))
        }
        Some(buf) => {
            buf[..len].copy_from_slice(&result);
            (None, Ok(len))
        }
    }
}

impl Engine {
    /// `C_EncryptInit`, `C_DecryptInit`, `C_SignInit`, `C_VerifyInit`.
    pub fn op_init(
        &self,
        s: SessionHandle,
        kind: OpKind,
        mech: Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        let sess = self.session(s)?;
        let usage = usage_attr(kind);
        // The generation is read before anything it guards, so a change after this point
        // makes the memo written below stale rather than wrong.
        let gen = self.cache_generation();
        let memo = {
            let g = sess.lock();
            if g.ops.active(kind) {
                return Err(Error::OperationActive);
            }
            g.last_key.filter(|m| {
                m.handle == key && m.usage == usage && m.mech == mech.mech && m.gen == gen
            })
        };
        if kind == OpKind::Digest {
            return Err(Error::MechanismInvalid);
        }
        let row = self.mech_row(&mech, function_flag(kind))?;
        check_param(&mech)?;
        let (entry, meta) = match memo {
            Some(m) => {
                self.cluster.key_cache_hits.add(1);
                (m.entry, m.meta)
            }
            None => {
                let entry = self.key_entry(key)?;
                let meta = self.checked_key(&entry, usage, &mech)?;
                sess.lock().last_key = Some(KeyMemo {
                    handle: key,
                    usage,
                    mech: mech.mech,
                    gen,
                    entry,
                    meta,
                });
                (entry, meta)
            }
        };
        match meta.key_type {
            Some(kt) if row.key_types.contains(&kt) => {}
            _ => return Err(Error::KeyTypeInconsistent),
        }
        // A size of 0 is one the member cannot tell (SoftHSMv2 keeps no CKA_VALUE_LEN for a
        // secret key it unwrapped): its own module checks it.
        if meta.key_bits != 0 && !row.size_ok(meta.key_bits) {
            return Err(Error::KeySizeRange);
        }
        // PSS parameters are checked against the key here, as the member will check them:
        // §5.13.1 / §5.15.1 list CKR_MECHANISM_PARAM_INVALID for C_SignInit / C_VerifyInit,
        // and §5.13.2 / §5.15.2 do not list it for C_Sign / C_Verify. (libp11 0.4.12 passes
        // OpenSSL 3's "maximum salt", -3, as sLen = 2^64 - 3, and falls back on this error.)
        if is_pss(mech.mech) {
            hsmpool_member::mechanism::check_rsa_pss_param(&mech, meta.key_bits)
                .map_err(|_| Error::MechanismParamInvalid)?;
        }
        // OAEP likewise (§5.8.1 / §5.10.1 for C_EncryptInit / C_DecryptInit).
        if mech.mech == CKM_RSA_PKCS_OAEP {
            hsmpool_member::mechanism::check_rsa_oaep_param(&mech)
                .map_err(|_| Error::MechanismParamInvalid)?;
        }
        // Hash-and-sign parts are hashed here as they come, and the member signs the digest;
        // where a member wants whole messages (a vendor module, whose key may allow only the
        // hash-and-sign mechanism, not the raw one), they are kept until WHOLE_MAX and hashed
        // here only past it.
        let whole = self.cluster.whole_messages && matches!(kind, OpKind::Sign | OpKind::Verify);
        let hash = match row.hash {
            Some(h) if !whole => Some(digest_ctx(h)?),
            _ => None,
        };
        let blocks = match mech.mech {
            CKM_AES_ECB => Some(BlockMode::Ecb),
            CKM_AES_CBC | CKM_AES_CBC_PAD => Some(BlockMode::Cbc(cbc_iv(&mech)?)),
            _ => None,
        };
        let cost = op_cost(kind, &meta);
        // Boxed once here; calls then move only the pointer (see `OpSlots::take`).
        let op = Box::new(Op {
            mech,
            row,
            key: Some(entry.member_obj),
            route: entry.route(&self.cluster),
            cost,
            hash,
            buf: PartBuf::default(),
            form: Form::Open,
            pending: None,
            blocks,
            always_authenticate: meta.always_authenticate,
        });
        let mut g = sess.lock();
        if g.ops.active(kind) {
            return Err(Error::OperationActive);
        }
        g.ops.put(kind, op);
        g.context_authenticated = false;
        Ok(())
    }

    /// `C_DigestInit`.
    pub fn digest_init(&self, s: SessionHandle, mech: Mechanism) -> Result<()> {
        let sess = self.session(s)?;
        let row = self.mech_row(&mech, CKF_DIGEST)?;
        if !matches!(mech.param, MechParam::None) {
            return Err(Error::MechanismParamInvalid);
        }
        let ctx = digest_ctx(mech.mech)?;
        let mut g = sess.lock();
        if g.ops.active(OpKind::Digest) {
            return Err(Error::OperationActive);
        }
        g.ops.put(
            OpKind::Digest,
            Box::new(Op {
                mech,
                row,
                key: None,
                route: Route::Any,
                cost: 0,
                hash: Some(ctx),
                buf: PartBuf::default(),
                form: Form::Open,
                pending: None,
                blocks: None,
                always_authenticate: false,
            }),
        );
        Ok(())
    }

    fn key_of(op: &Op) -> Result<MemberObject> {
        op.key
            .ok_or(Error::General("keyed operation without a key".into()))
    }

    /// Single-part `C_Encrypt`, `C_Decrypt`, `C_Sign`, `C_Digest`. `out` None asks for the
    /// length only; a too-small `out` gives `BufferTooSmall` and leaves the operation active.
    /// Returns the number of bytes written (or needed, for a query).
    pub fn op_single(
        &self,
        s: SessionHandle,
        kind: OpKind,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        if kind == OpKind::Verify {
            return Err(Error::General("verify has its own entry".into()));
        }
        let (sess, op) = self.take_op(s, kind)?;
        if !op.form.admits_single() {
            // A multi-part operation is under way: refused, and, as a call that finishes
            // operations, this one ends it (see `Form`).
            return Err(Error::OperationActive);
        }
        if op.pending.is_none() {
            if let Some(n) = known_output_len(kind, &op.mech, data.len()) {
                return self.produce_into(&sess, kind, op, data, n, out);
            }
        }
        self.produce(&sess, kind, op, out, Form::Single, |e, op| {
            e.compute_single(kind, op, data)
        })
    }

    /// A single-part encryption whose output length the mechanism fixes: the length query is
    /// answered without computing (the operation stays active, §5.2), and the computation then
    /// writes into the caller's buffer, saving a buffer and a copy per call.
    fn produce_into(
        &self,
        sess: &Mutex<Session>,
        kind: OpKind,
        op: Box<Op>,
        data: &[u8],
        n: usize,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let mut op = self.context_login_gate(sess, kind, op)?;
        let buf = match out {
            None => {
                op.form = Form::Single;
                self.put_op(sess, kind, op);
                return Ok(n);
            }
            Some(b) if b.len() < n => {
                op.form = Form::Single;
                self.put_op(sess, kind, op);
                return Err(Error::BufferTooSmall { needed: n });
            }
            Some(b) => &mut b[..n],
        };
        // Success or failure, the operation ends here (it was taken out of the session).
        let key = Self::key_of(&op)?;
        self.cluster.call(op.route, op.cost, |b, msess| {
            b.encrypt_into(msess, &op.mech, key, data, &mut *buf)
        })
    }

    /// The `CKA_ALWAYS_AUTHENTICATE` gate (§4.9): a result not yet produced needs a
    /// `C_Login(CKU_CONTEXT_SPECIFIC)` since the `*Init`; without it the operation stays active
    /// for the login to come and the call is `CKR_USER_NOT_LOGGED_IN`.
    fn context_login_gate(
        &self,
        sess: &Mutex<Session>,
        kind: OpKind,
        op: Box<Op>,
    ) -> Result<Box<Op>> {
        if op.always_authenticate && op.pending.is_none() && !sess.lock().context_authenticated {
            self.put_op(sess, kind, op);
            return Err(Error::UserNotLoggedIn);
        }
        Ok(op)
    }

    /// The shared end of single-part and final calls: the `CKA_ALWAYS_AUTHENTICATE` gate (§4.9:
    /// the operation stays active for the login to come), the kept result or a new one, and the
    /// output-length rule; an operation kept for a larger buffer is then in form `kept`.
    fn produce(
        &self,
        sess: &Mutex<Session>,
        kind: OpKind,
        op: Box<Op>,
        out: Option<&mut [u8]>,
        kept: Form,
        compute: impl FnOnce(&Self, &mut Op) -> Result<Output>,
    ) -> Result<usize> {
        let mut op = self.context_login_gate(sess, kind, op)?;
        let result = match op.pending.take() {
            Some(r) => r,
            None => compute(self, &mut op)?,
        };
        let (back, outcome) = deliver(op, result, out);
        if let Some(mut op) = back {
            op.form = kept;
            self.put_op(sess, kind, op);
        }
        outcome
    }

    fn compute_single(&self, kind: OpKind, op: &Op, data: &[u8]) -> Result<Output> {
        match kind {
            OpKind::Sign => {
                let key = Self::key_of(op)?;
                Ok(Output::public(self.cluster.call(
                    op.route,
                    op.cost,
                    |b, msess| b.sign(msess, &op.mech, key, SignInput::Message(data)),
                )?))
            }
            OpKind::Encrypt => {
                let key = Self::key_of(op)?;
                Ok(Output::public(self.cluster.call(
                    op.route,
                    op.cost,
                    |b, msess| b.encrypt(msess, &op.mech, key, data),
                )?))
            }
            OpKind::Decrypt => {
                let key = Self::key_of(op)?;
                Ok(Output::secret(self.cluster.call(
                    op.route,
                    op.cost,
                    |b, msess| b.decrypt(msess, &op.mech, key, data),
                )?))
            }
            OpKind::Digest => Ok(Output::secret(Zeroizing::new(crate::digest::digest(
                op.mech.mech,
                data,
            )?))),
            OpKind::Verify => Err(Error::General("verify has its own entry".into())),
        }
    }

    fn buffer(op: &mut Op, data: &[u8]) -> Result<()> {
        if op.buf.len().saturating_add(data.len()) > MAX_BUFFERED {
            return Err(Error::DataLenRange);
        }
        op.buf.extend_from_slice(data);
        Ok(())
    }

    /// `C_EncryptUpdate`, `C_DecryptUpdate` (with output), `C_SignUpdate`, `C_VerifyUpdate`,
    /// `C_DigestUpdate` (whose `out` is ignored and which return 0).
    pub fn op_update(
        &self,
        s: SessionHandle,
        kind: OpKind,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let (sess, mut op) = self.take_op(s, kind)?;
        if !op.form.admits_update() {
            // A single-part call has answered, or the final result is made: refused, and
            // nothing ends (see `Form`).
            self.put_op(&sess, kind, op);
            return Err(Error::OperationActive);
        }
        if !op.row.multipart && matches!(kind, OpKind::Encrypt | OpKind::Decrypt) {
            // Single-part only mechanisms (RSA encryption) end here, as the spec allows.
            return Err(Error::MechanismInvalid);
        }
        let r = self.update_inner(kind, &mut op, data, out);
        match r {
            // A length answered fixes the form as a part taken in does (see `Form`).
            Ok(_) | Err(Error::BufferTooSmall { .. }) => {
                op.form = Form::Multi;
                self.put_op(&sess, kind, op);
                r
            }
            Err(e) => Err(e),
        }
    }

    fn update_inner(
        &self,
        kind: OpKind,
        op: &mut Op,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        match kind {
            OpKind::Digest | OpKind::Sign | OpKind::Verify => {
                match (op.hash.as_mut(), op.row.hash) {
                    (Some(h), _) => h.update(data),
                    // A whole message grown past WHOLE_MAX: hashed from here on.
                    (None, Some(alg)) if op.buf.len().saturating_add(data.len()) > WHOLE_MAX => {
                        let mut h = digest_ctx(alg)?;
                        h.update(&op.buf);
                        h.update(data);
                        zeroize::Zeroize::zeroize(&mut *op.buf);
                        op.hash = Some(h);
                    }
                    (None, _) => Self::buffer(op, data)?,
                }
                Ok(0)
            }
            OpKind::Encrypt | OpKind::Decrypt => match op.blocks {
                Some(mode) => self.update_blocks(kind, op, mode, data, out),
                None => {
                    // Done at the final call (GCM must check its tag before any plaintext
                    // leaves): this update returns nothing, so a length query (no buffer) is
                    // answered 0 and must not take the part in, or the real call that follows
                    // would take it twice.
                    if out.is_some() {
                        Self::buffer(op, data)?;
                    }
                    Ok(0)
                }
            },
        }
    }

    /// A block-mode update: every whole block goes to the member now and its output to the
    /// caller from this call; a partial block waits, and CBC-PAD decryption also holds its last
    /// whole block back, which may be the one whose padding `C_DecryptFinal` removes. The
    /// output length is known before any work: a length query or a short buffer is answered
    /// exactly and takes nothing in.
    fn update_blocks(
        &self,
        kind: OpKind,
        op: &mut Op,
        mode: BlockMode,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let total = op.buf.len().saturating_add(data.len());
        let mut n = total / AES_BLOCK * AES_BLOCK;
        let hold_back = kind == OpKind::Decrypt && op.mech.mech == CKM_AES_CBC_PAD;
        if hold_back && n == total && n > 0 {
            n -= AES_BLOCK;
        }
        let out = match out {
            None => return Ok(n),
            Some(b) if b.len() < n => return Err(Error::BufferTooSmall { needed: n }),
            Some(b) => b,
        };
        if n == 0 {
            // Less than a block in all (or the one held back): nothing to send yet.
            Self::buffer(op, data)?;
            return Ok(0);
        }
        let mut all = Zeroizing::new(Vec::with_capacity(total));
        all.extend_from_slice(&op.buf);
        all.extend_from_slice(data);
        let chunk = &all[..n];
        let key = Self::key_of(op)?;
        let cbc;
        let mech = match mode {
            BlockMode::Ecb => &op.mech,
            BlockMode::Cbc(iv) => {
                cbc = with_iv(CKM_AES_CBC, iv);
                &cbc
            }
        };
        let result: Zeroizing<Vec<u8>> = if kind == OpKind::Encrypt {
            Zeroizing::new(self.cluster.call(op.route, op.cost, |b, msess| {
                b.encrypt(msess, mech, key, chunk)
            })?)
        } else {
            self.cluster.call(op.route, op.cost, |b, msess| {
                b.decrypt(msess, mech, key, chunk)
            })?
        };
        if result.len() != n {
            return Err(Error::General(format!(
                "a member returned {} bytes for {n} bytes of whole blocks",
                result.len()
            )));
        }
        if let BlockMode::Cbc(_) = mode {
            // The next IV is the last ciphertext block: the output when encrypting, the input
            // when decrypting.
            let last = if kind == OpKind::Encrypt {
                &result[n - AES_BLOCK..]
            } else {
                &chunk[n - AES_BLOCK..]
            };
            let mut next = [0u8; AES_BLOCK];
            next.copy_from_slice(last);
            op.blocks = Some(BlockMode::Cbc(next));
        }
        op.buf = PartBuf(all[n..].to_vec());
        out[..n].copy_from_slice(&result);
        Ok(n)
    }

    /// `C_DigestKey`.
    pub fn digest_key(&self, s: SessionHandle, key: ObjectHandle) -> Result<()> {
        let (sess, mut op) = self.take_op(s, OpKind::Digest)?;
        if !op.form.admits_update() {
            // As a refused `C_DigestUpdate`: nothing ends (see `Form`).
            self.put_op(&sess, OpKind::Digest, op);
            return Err(Error::OperationActive);
        }
        let entry = match self.key_entry(key) {
            Ok(e) => e,
            Err(e) => {
                self.put_op(&sess, OpKind::Digest, op);
                return Err(e);
            }
        };
        let value = self
            .cluster
            .call(entry.route(&self.cluster), 1, |b, msess| {
                b.secret_value_for_digest(msess, entry.member_obj)
            })?;
        op.form = Form::Multi;
        if let Some(h) = op.hash.as_mut() {
            h.update(&value);
        }
        self.put_op(&sess, OpKind::Digest, op);
        Ok(())
    }

    /// `C_EncryptFinal`, `C_DecryptFinal`, `C_SignFinal`, `C_DigestFinal`.
    pub fn op_final(
        &self,
        s: SessionHandle,
        kind: OpKind,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        if kind == OpKind::Verify {
            return Err(Error::General("verify has its own entry".into()));
        }
        let (sess, op) = self.take_op(s, kind)?;
        if !op.form.admits_final() {
            // A single-part call has answered a length: refused, and, as a call that finishes
            // operations, this one ends it (see `Form`).
            return Err(Error::OperationActive);
        }
        self.produce(&sess, kind, op, out, Form::Finishing, |e, op| {
            e.compute_final(kind, op)
        })
    }

    fn compute_final(&self, kind: OpKind, op: &mut Op) -> Result<Output> {
        match kind {
            OpKind::Digest => {
                let h = op
                    .hash
                    .take()
                    .ok_or(Error::General("digest without context".into()))?;
                Ok(Output::secret(Zeroizing::new(h.finish())))
            }
            OpKind::Sign => {
                let key = Self::key_of(op)?;
                let sig = match op.hash.take() {
                    Some(h) => {
                        let d = h.finish();
                        self.cluster.call(op.route, op.cost, |b, msess| {
                            b.sign(msess, &op.mech, key, SignInput::Prehashed(d.as_ref()))
                        })?
                    }
                    None => self.cluster.call(op.route, op.cost, |b, msess| {
                        b.sign(msess, &op.mech, key, SignInput::Message(&op.buf))
                    })?,
                };
                Ok(Output::public(sig))
            }
            OpKind::Encrypt | OpKind::Decrypt => {
                let key = Self::key_of(op)?;
                if let Some(mode) = op.blocks {
                    let rest = &op.buf[..];
                    return match (kind, op.mech.mech, mode) {
                        (OpKind::Encrypt, CKM_AES_CBC_PAD, BlockMode::Cbc(iv)) => Ok(
                            Output::public(self.cluster.call(op.route, op.cost, |b, msess| {
                                b.encrypt(msess, &with_iv(CKM_AES_CBC_PAD, iv), key, rest)
                            })?),
                        ),
                        (_, CKM_AES_CBC_PAD, BlockMode::Cbc(iv)) => {
                            // The block held back (see `update_blocks`), and nothing else.
                            if rest.len() != AES_BLOCK {
                                return Err(Error::EncryptedDataLenRange);
                            }
                            Ok(Output::secret(self.cluster.call(
                                op.route,
                                op.cost,
                                |b, msess| {
                                    b.decrypt(msess, &with_iv(CKM_AES_CBC_PAD, iv), key, rest)
                                },
                            )?))
                        }
                        // ECB and CBC without padding: every whole block has gone out.
                        _ if !rest.is_empty() => Err(if kind == OpKind::Encrypt {
                            Error::DataLenRange
                        } else {
                            Error::EncryptedDataLenRange
                        }),
                        _ => Ok(Output::public(Vec::new())),
                    };
                }
                if kind == OpKind::Encrypt {
                    Ok(Output::public(self.cluster.call(
                        op.route,
                        op.cost,
                        |b, msess| b.encrypt(msess, &op.mech, key, &op.buf),
                    )?))
                } else {
                    Ok(Output::secret(self.cluster.call(
                        op.route,
                        op.cost,
                        |b, msess| b.decrypt(msess, &op.mech, key, &op.buf),
                    )?))
                }
            }
            OpKind::Verify => Err(Error::General("verify has its own entry".into())),
        }
    }

    /// `C_Verify`: single-part verification. The operation ends whatever the outcome.
    pub fn verify(&self, s: SessionHandle, data: &[u8], signature: &[u8]) -> Result<()> {
        let (_sess, op) = self.take_op(s, OpKind::Verify)?;
        if !op.form.admits_single() {
            // As `op_single`: refused, and the operation ends (see `Form`).
            return Err(Error::OperationActive);
        }
        let key = Self::key_of(&op)?;
        self.cluster.call(op.route, op.cost, |b, msess| {
            b.verify(msess, &op.mech, key, SignInput::Message(data), signature)
        })
    }

    /// `C_VerifyFinal`.
    pub fn verify_final(&self, s: SessionHandle, signature: &[u8]) -> Result<()> {
        // No form refuses it: `C_Verify` has no length query, so a verification never stays
        // active in the single-part form (see `Form`).
        let (_sess, mut op) = self.take_op(s, OpKind::Verify)?;
        let key = Self::key_of(&op)?;
        match op.hash.take() {
            Some(h) => {
                let d = h.finish();
                self.cluster.call(op.route, op.cost, |b, msess| {
                    b.verify(
                        msess,
                        &op.mech,
                        key,
                        SignInput::Prehashed(d.as_ref()),
                        signature,
                    )
                })
            }
            None => self.cluster.call(op.route, op.cost, |b, msess| {
                b.verify(msess, &op.mech, key, SignInput::Message(&op.buf), signature)
            }),
        }
    }

    /// A NULL mechanism given to an `*Init` function (3.0): ends the active operation of this
    /// kind. Returns whether one was active.
    pub fn end_op(&self, s: SessionHandle, kind: OpKind) -> Result<bool> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let active = g.ops.active(kind);
        g.ops.clear(kind);
        Ok(active)
    }

    /// `C_SessionCancel` (3.0): ends the operations named by `CKF_*` flags.
    pub fn session_cancel(&self, s: SessionHandle, flags: CK_FLAGS) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        for (flag, kind) in [
            (CKF_ENCRYPT, OpKind::Encrypt),
            (CKF_DECRYPT, OpKind::Decrypt),
            (CKF_DIGEST, OpKind::Digest),
            (CKF_SIGN, OpKind::Sign),
            (CKF_VERIFY, OpKind::Verify),
        ] {
            if flags & flag != 0 {
                g.ops.clear(kind);
            }
        }
        if flags & CKF_FIND_OBJECTS != 0 {
            g.find = None;
        }
        Ok(())
    }
}
