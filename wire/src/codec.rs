//! The body codec: how each kind of value is written and read ([`Field`]), on a [`Writer`]
//! that wipes what it outgrows and a [`Reader`] that checks every length against what remains.

use std::fmt;
use std::ops::Deref;

use cryptoki_sys::{CK_MECHANISM_TYPE, CK_ULONG};
use hsmpool_member::types::{Attr, KdfSegment, MechParam, Mechanism, SignInput};
use hsmpool_member::{
    Approval, AttrAnswer, AuditCheckpoint, AuditLog, AuditRecord, KeyMeta, KeyService, OwnedObject,
    Role, TokenStatus, UserChange, UserSet, UserState,
};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Result, WireError};
use crate::frame::{HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION};

/// A secret byte string: zeroized on drop, redacted in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub Zeroizing<Vec<u8>>);

impl Secret {
    /// A secret from bytes (copied).
    pub fn from_slice(b: &[u8]) -> Self {
        Secret(Zeroizing::new(b.to_vec()))
    }
    /// The zeroizing buffer.
    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl Deref for Secret {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Secret {
    fn from(v: Vec<u8>) -> Self {
        Secret(Zeroizing::new(v))
    }
}

impl From<Zeroizing<Vec<u8>>> for Secret {
    fn from(v: Zeroizing<Vec<u8>>) -> Self {
        Secret(v)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What the data of a [`Request::Sign`] or [`Request::Verify`] is: an owned [`SignInput`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// [`SignInput::Message`].
    Message,
    /// [`SignInput::Prehashed`].
    Prehashed,
}

impl InputKind {
    /// Split a [`SignInput`] into its kind and data.
    pub fn split(input: SignInput<'_>) -> (InputKind, &[u8]) {
        match input {
            SignInput::Message(d) => (InputKind::Message, d),
            SignInput::Prehashed(d) => (InputKind::Prehashed, d),
        }
    }
    /// The [`SignInput`] of this kind over `data`.
    pub fn with(self, data: &[u8]) -> SignInput<'_> {
        match self {
            InputKind::Message => SignInput::Message(data),
            InputKind::Prehashed => SignInput::Prehashed(data),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// An output frame under construction. It grows by hand so that an outgrown buffer (which may
/// hold a PIN) is wiped rather than freed as is, and it refuses to pass the payload cap.
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

// `CK_ULONG` is 64 bits here but 32 on some platforms: the conversions are not useless there.
#[allow(clippy::useless_conversion)]
fn ulong_to_wire(v: CK_ULONG) -> u64 {
    u64::from(v)
}

#[allow(clippy::useless_conversion)]
fn ulong_from_wire(v: u64) -> Result<CK_ULONG> {
    CK_ULONG::try_from(v).map_err(|_| WireError::Malformed("CK_ULONG out of range"))
}

impl Writer {
    pub(crate) fn frame(id: u64, kind: u8) -> Writer {
        let mut w = Writer {
            buf: Vec::with_capacity(256),
        };
        w.buf.extend_from_slice(&MAGIC);
        w.buf.push(VERSION);
        w.buf.extend_from_slice(&[0; 4]);
        w.buf.extend_from_slice(&id.to_be_bytes());
        w.buf.push(kind);
        w
    }

    fn reserve(&mut self, n: usize) -> Result<()> {
        let limit = HEADER_LEN + MAX_PAYLOAD as usize;
        let need = self.buf.len().saturating_add(n);
        if need > limit {
            return Err(WireError::TooLarge {
                len: (need - HEADER_LEN) as u64,
            });
        }
        if self.buf.capacity() < need {
            let cap = need.max(self.buf.capacity().saturating_mul(2)).min(limit);
            let mut grown = Vec::with_capacity(cap);
            grown.extend_from_slice(&self.buf);
            self.buf.zeroize();
            self.buf = grown;
        }
        Ok(())
    }

    pub(crate) fn put(&mut self, b: &[u8]) -> Result<()> {
        self.reserve(b.len())?;
        self.buf.extend_from_slice(b);
        Ok(())
    }
    pub(crate) fn u8(&mut self, v: u8) -> Result<()> {
        self.put(&[v])
    }
    fn bool(&mut self, v: bool) -> Result<()> {
        self.u8(u8::from(v))
    }
    pub(crate) fn u32(&mut self, v: u32) -> Result<()> {
        self.put(&v.to_be_bytes())
    }
    pub(crate) fn u64(&mut self, v: u64) -> Result<()> {
        self.put(&v.to_be_bytes())
    }
    fn ulong(&mut self, v: CK_ULONG) -> Result<()> {
        self.u64(ulong_to_wire(v))
    }
    fn len(&mut self, n: usize) -> Result<()> {
        let n = u32::try_from(n).map_err(|_| WireError::TooLarge { len: n as u64 })?;
        self.u32(n)
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.reserve(4usize.saturating_add(b.len()))?;
        self.len(b.len())?;
        self.put(b)
    }
    fn attrs(&mut self, attrs: &[Attr]) -> Result<()> {
        self.len(attrs.len())?;
        for a in attrs {
            self.ulong(a.ty)?;
            self.bytes(&a.value)?;
        }
        Ok(())
    }
    fn u64s(&mut self, v: &[u64]) -> Result<()> {
        self.len(v.len())?;
        v.iter().try_for_each(|&x| self.u64(x))
    }
    fn input(&mut self, k: InputKind) -> Result<()> {
        self.u8(match k {
            InputKind::Message => 0,
            InputKind::Prehashed => 1,
        })
    }
    fn mech(&mut self, m: &Mechanism) -> Result<()> {
        self.ulong(m.mech)?;
        match &m.param {
            MechParam::None => self.u8(0),
            MechParam::Iv(iv) => {
                self.u8(1)?;
                self.bytes(iv)
            }
            MechParam::Gcm { iv, aad, tag_bits } => {
                self.u8(2)?;
                self.bytes(iv)?;
                self.bytes(aad)?;
                self.ulong(*tag_bits)
            }
            MechParam::Pss {
                hash,
                mgf,
                salt_len,
            } => {
                self.u8(3)?;
                self.ulong(*hash)?;
                self.ulong(*mgf)?;
                self.ulong(*salt_len)
            }
            MechParam::Oaep { hash, mgf, label } => {
                self.u8(4)?;
                self.ulong(*hash)?;
                self.ulong(*mgf)?;
                self.bytes(label)
            }
            MechParam::Ulong(v) => {
                self.u8(5)?;
                self.ulong(*v)
            }
            MechParam::Ecdh {
                kdf,
                shared_data,
                public_data,
            } => {
                self.u8(6)?;
                self.ulong(*kdf)?;
                self.bytes(shared_data)?;
                self.bytes(public_data)
            }
            MechParam::Hkdf {
                extract,
                expand,
                prf,
                salt_type,
                salt,
                info,
            } => {
                self.u8(7)?;
                self.bool(*extract)?;
                self.bool(*expand)?;
                self.ulong(*prf)?;
                self.ulong(*salt_type)?;
                self.bytes(salt)?;
                self.bytes(info)
            }
            MechParam::Raw(r) => {
                self.u8(8)?;
                self.bytes(r)
            }
            MechParam::Sp800108 { prf, segments } => {
                self.u8(9)?;
                self.ulong(*prf)?;
                let n = u32::try_from(segments.len())
                    .map_err(|_| WireError::Malformed("too many KDF segments"))?;
                self.u32(n)?;
                for s in segments {
                    match s {
                        KdfSegment::Counter { width_bits } => {
                            self.u8(0)?;
                            self.ulong(*width_bits)?;
                        }
                        KdfSegment::DkmLength { method, width_bits } => {
                            self.u8(1)?;
                            self.ulong(*method)?;
                            self.ulong(*width_bits)?;
                        }
                        KdfSegment::Bytes(b) => {
                            self.u8(2)?;
                            self.bytes(b)?;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Patch the payload length in and hand the frame over.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let len = (self.buf.len() - HEADER_LEN) as u32; // `reserve` kept it under the cap
        self.buf[4..8].copy_from_slice(&len.to_be_bytes());
        std::mem::take(&mut self.buf)
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Reads a message body; every read checks what remains first.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over a payload (from its kind byte on).
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.b.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.take(N)?.try_into().map_err(|_| WireError::Truncated)
    }
    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed("bool not 0 or 1")),
        }
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn ulong(&mut self) -> Result<CK_ULONG> {
        ulong_from_wire(self.u64()?)
    }
    fn usize(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| WireError::Malformed("size out of range"))
    }
    pub(crate) fn slice(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn vec(&mut self) -> Result<Vec<u8>> {
        Ok(self.slice()?.to_vec())
    }
    fn secret(&mut self) -> Result<Secret> {
        Ok(Secret::from_slice(self.slice()?))
    }
    /// A list count, refused if the remaining bytes cannot hold that many `min_size` elements.
    pub(crate) fn count(&mut self, min_size: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n > self.b.len() / min_size {
            return Err(WireError::Truncated);
        }
        Ok(n)
    }
    fn attrs(&mut self) -> Result<Vec<Attr>> {
        let n = self.count(12)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let ty = self.ulong()?;
            let value = self.vec()?;
            out.push(Attr { ty, value });
        }
        Ok(out)
    }
    fn u64s(&mut self) -> Result<Vec<u64>> {
        let n = self.count(8)?;
        (0..n).map(|_| self.u64()).collect()
    }
    fn input(&mut self) -> Result<InputKind> {
        match self.u8()? {
            0 => Ok(InputKind::Message),
            1 => Ok(InputKind::Prehashed),
            _ => Err(WireError::Malformed("unknown sign input kind")),
        }
    }
    fn mech(&mut self) -> Result<Mechanism> {
        let mech: CK_MECHANISM_TYPE = self.ulong()?;
        let param = match self.u8()? {
            0 => MechParam::None,
            1 => MechParam::Iv(self.vec()?),
            2 => MechParam::Gcm {
                iv: self.vec()?,
                aad: self.vec()?,
                tag_bits: self.ulong()?,
            },
            3 => MechParam::Pss {
                hash: self.ulong()?,
                mgf: self.ulong()?,
                salt_len: self.ulong()?,
            },
            4 => MechParam::Oaep {
                hash: self.ulong()?,
                mgf: self.ulong()?,
                label: self.vec()?,
            },
            5 => MechParam::Ulong(self.ulong()?),
            6 => MechParam::Ecdh {
                kdf: self.ulong()?,
                shared_data: self.vec()?,
                public_data: self.vec()?,
            },
            7 => MechParam::Hkdf {
                extract: self.bool()?,
                expand: self.bool()?,
                prf: self.ulong()?,
                salt_type: self.ulong()?,
                salt: self.vec()?,
                info: self.vec()?,
            },
            8 => MechParam::Raw(self.vec()?),
            9 => {
                let prf = self.ulong()?;
                // The smallest segment is a tag and a 4-byte length.
                let n = self.count(5)?;
                let mut segments = Vec::with_capacity(n);
                for _ in 0..n {
                    segments.push(match self.u8()? {
                        0 => KdfSegment::Counter {
                            width_bits: self.ulong()?,
                        },
                        1 => KdfSegment::DkmLength {
                            method: self.ulong()?,
                            width_bits: self.ulong()?,
                        },
                        2 => KdfSegment::Bytes(self.vec()?),
                        _ => return Err(WireError::Malformed("unknown KDF segment")),
                    });
                }
                MechParam::Sp800108 { prf, segments }
            }
            _ => return Err(WireError::Malformed("unknown mechanism parameter")),
        };
        Ok(Mechanism { mech, param })
    }
    pub(crate) fn end(&self) -> Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed("trailing bytes"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fields

/// A value that travels in a message body, written and read the one way the protocol says.
/// Every request and response field has one; the tables in `request.rs` and `response.rs`
/// name only the types.
pub(crate) trait Field: Sized {
    /// Append the value.
    fn put(&self, w: &mut Writer) -> Result<()>;
    /// Read a value (checked against the bytes that remain).
    fn take(r: &mut Reader<'_>) -> Result<Self>;
}

impl Field for u64 {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.u64(*self)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        r.u64()
    }
}

impl Field for u32 {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.u32(*self)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        r.u32()
    }
}

impl Field for bool {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.bool(*self)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        r.bool()
    }
}

impl Field for Vec<u8> {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.bytes(self)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        r.vec()
    }
}

impl Field for Secret {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.bytes(self)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        r.secret()
    }
}

/// A fixed-size array travels bare (its size is the protocol's).
impl<const N: usize> Field for [u8; N] {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.put(self)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        r.array()
    }
}

/// A UTF-8 string (a fault verb, a version).
impl Field for String {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.bytes(self.as_bytes())
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        Ok(std::str::from_utf8(r.slice()?)
            .map_err(|_| WireError::Malformed("string not UTF-8"))?
            .to_owned())
    }
}

/// A 0/1 tag, then the value.
impl<T: Field> Field for Option<T> {
    fn put(&self, w: &mut Writer) -> Result<()> {
        match self {
            None => w.u8(0),
            Some(v) => {
                w.u8(1)?;
                v.put(w)
            }
        }
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        match r.u8()? {
            0 => Ok(None),
            1 => Ok(Some(T::take(r)?)),
            _ => Err(WireError::Malformed("bad option tag")),
        }
    }
}

impl Field for Role {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.code())
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        Role::from_code(r.u8()?).ok_or(WireError::Malformed("unknown role"))
    }
}

impl Field for KeyService {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.code())
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        KeyService::from_code(r.u8()?).ok_or(WireError::Malformed("unknown key service"))
    }
}

impl Field for InputKind {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.input(*self)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        r.input()
    }
}

impl Field for Mechanism {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.mech(self)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        r.mech()
    }
}

impl Field for Vec<Attr> {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.attrs(self)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        r.attrs()
    }
}

/// Attribute types, object handles: a count, then 8 bytes each.
impl Field for Vec<u64> {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.u64s(self)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        r.u64s()
    }
}

impl Field for TokenStatus {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.bool(self.initialized)?;
        w.bool(self.user_pin_initialized)?;
        w.put(&self.label)?;
        w.u32(self.user_failures)?;
        w.u32(self.so_failures)?;
        w.u32(self.max_failures)?;
        w.u64(self.object_count as u64)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        Ok(TokenStatus {
            initialized: r.bool()?,
            user_pin_initialized: r.bool()?,
            label: r.array()?,
            user_failures: r.u32()?,
            so_failures: r.u32()?,
            max_failures: r.u32()?,
            object_count: r.usize()?,
        })
    }
}

impl Field for Vec<AttrAnswer> {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.len(self.len())?;
        for a in self {
            match a {
                AttrAnswer::Value(v) => {
                    w.u8(0)?;
                    w.bytes(v)?;
                }
                AttrAnswer::Sensitive => w.u8(1)?,
                AttrAnswer::Invalid => w.u8(2)?,
            }
        }
        Ok(())
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        let n = r.count(1)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match r.u8()? {
                0 => AttrAnswer::Value(r.vec()?),
                1 => AttrAnswer::Sensitive,
                2 => AttrAnswer::Invalid,
                _ => return Err(WireError::Malformed("unknown attribute answer")),
            });
        }
        Ok(out)
    }
}

impl Field for KeyMeta {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.ulong(self.class)?;
        self.key_type.put(w)?;
        w.u64(self.key_bits as u64)?;
        w.bool(self.token)?;
        w.bool(self.private)?;
        w.bool(self.always_authenticate)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        Ok(KeyMeta {
            class: r.ulong()?,
            key_type: <Option<CK_ULONG> as Field>::take(r)?,
            key_bits: r.usize()?,
            token: r.bool()?,
            private: r.bool()?,
            always_authenticate: r.bool()?,
        })
    }
}

/// (object, SHA-256 digest) pairs.
impl Field for Vec<(u64, [u8; 32])> {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.len(self.len())?;
        for (id, digest) in self {
            w.u64(*id)?;
            w.put(digest)?;
        }
        Ok(())
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        let n = r.count(40)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((r.u64()?, r.array()?));
        }
        Ok(out)
    }
}

/// Every user record of a member, and its epoch.
impl Field for UserSet {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.u64(self.epoch)?;
        w.u32(self.max_failures)?;
        w.u32(self.quorum)?;
        w.len(self.users.len())?;
        for u in &self.users {
            u.name.put(w)?;
            u.role.put(w)?;
            w.u64(u.version)?;
            w.bool(u.deleted)?;
            w.bool(u.locked)?;
            w.u64(u.resets)?;
            w.u32(u.failures)?;
            w.bytes(&u.approval_key)?;
            w.put(&u.digest)?;
        }
        Ok(())
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        let epoch = r.u64()?;
        let max_failures = r.u32()?;
        let quorum = r.u32()?;
        // A user is at least two lengths (8), a role (1) and 54 bytes of numbers and digest.
        let n = r.count(63)?;
        let mut users = Vec::with_capacity(n);
        for _ in 0..n {
            users.push(UserState {
                name: String::take(r)?,
                role: Role::take(r)?,
                version: r.u64()?,
                deleted: r.bool()?,
                locked: r.bool()?,
                resets: r.u64()?,
                failures: r.u32()?,
                approval_key: r.vec()?,
                digest: r.array()?,
            });
        }
        Ok(UserSet {
            epoch,
            max_failures,
            quorum,
            users,
        })
    }
}

/// A crypto officer's change to one user: a kind byte, the name, then what the kind needs
/// (a password travels as a [`Secret`]).
impl Field for UserChange {
    fn put(&self, w: &mut Writer) -> Result<()> {
        match self {
            UserChange::Create {
                name,
                role,
                password,
            } => {
                w.u8(1)?;
                name.put(w)?;
                role.put(w)?;
                Secret::from_slice(password).put(w)
            }
            UserChange::Password { name, password } => {
                w.u8(2)?;
                name.put(w)?;
                Secret::from_slice(password).put(w)
            }
            UserChange::Delete { name, force } => {
                w.u8(3)?;
                name.put(w)?;
                w.bool(*force)
            }
            UserChange::Lock { name } => {
                w.u8(4)?;
                name.put(w)
            }
            UserChange::Unlock { name } => {
                w.u8(5)?;
                name.put(w)
            }
            UserChange::SetRole { name, role } => {
                w.u8(6)?;
                name.put(w)?;
                role.put(w)
            }
            UserChange::SetApprovalKey { name, public_key } => {
                w.u8(7)?;
                name.put(w)?;
                w.bytes(public_key)
            }
            UserChange::SetQuorum { m } => {
                w.u8(8)?;
                String::new().put(w)?;
                w.u32(*m)
            }
            UserChange::SetTrustAnchors { anchors } => {
                w.u8(11)?;
                String::new().put(w)?;
                w.bytes(&anchors.concat())
            }
        }
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        let kind = r.u8()?;
        let name = String::take(r)?;
        Ok(match kind {
            1 => UserChange::Create {
                name,
                role: Role::take(r)?,
                password: Secret::take(r)?.into_inner(),
            },
            2 => UserChange::Password {
                name,
                password: Secret::take(r)?.into_inner(),
            },
            3 => UserChange::Delete {
                name,
                force: r.bool()?,
            },
            4 => UserChange::Lock { name },
            5 => UserChange::Unlock { name },
            6 => UserChange::SetRole {
                name,
                role: Role::take(r)?,
            },
            7 => UserChange::SetApprovalKey {
                name,
                public_key: r.vec()?,
            },
            8 => UserChange::SetQuorum { m: r.u32()? },
            11 => {
                let all = r.vec()?;
                if all.len() % 32 != 0 {
                    return Err(WireError::Malformed("trust anchors are 32 bytes each"));
                }
                UserChange::SetTrustAnchors {
                    anchors: all
                        .chunks_exact(32)
                        .map(|c| c.try_into().unwrap_or([0; 32]))
                        .collect(),
                }
            }
            _ => return Err(WireError::Malformed("unknown user change")),
        })
    }
}

/// Token objects with their owners and sharing (`owned_objects`).
impl Field for Vec<OwnedObject> {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.len(self.len())?;
        for o in self {
            w.u64(o.id)?;
            o.owner.put(w)?;
            w.ulong(o.class)?;
            o.key_type.put(w)?;
            w.bytes(&o.label)?;
            w.bytes(&o.ck_id)?;
            w.len(o.shared_with.len())?;
            for n in &o.shared_with {
                n.put(w)?;
            }
        }
        Ok(())
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        // At least an id (8), an owner tag (1), a class (8), a key type tag (1), two lengths
        // (8) and a count (4).
        let n = r.count(30)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.u64()?;
            let owner = <Option<String> as Field>::take(r)?;
            let class = r.ulong()?;
            let key_type = <Option<CK_ULONG> as Field>::take(r)?;
            let label = r.vec()?;
            let ck_id = r.vec()?;
            let k = r.count(4)?;
            let mut shared_with = Vec::with_capacity(k);
            for _ in 0..k {
                shared_with.push(String::take(r)?);
            }
            out.push(OwnedObject {
                id,
                owner,
                class,
                key_type,
                label,
                ck_id,
                shared_with,
            });
        }
        Ok(out)
    }
}

/// A page of a member's audit log.
impl Field for AuditLog {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.bytes(&self.public_key)?;
        w.u64(self.checkpoint_every)?;
        w.u64(self.last_seq)?;
        w.len(self.records.len())?;
        for r in &self.records {
            w.u64(r.seq)?;
            w.u64(r.at_ms)?;
            r.kind.put(w)?;
            r.actor.put(w)?;
            r.subject.put(w)?;
            r.detail.put(w)?;
            w.put(&r.prev)?;
            w.put(&r.hash)?;
        }
        w.len(self.checkpoints.len())?;
        for c in &self.checkpoints {
            w.u64(c.seq)?;
            w.put(&c.hash)?;
            w.bytes(&c.signature)?;
        }
        Ok(())
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        let public_key = r.vec()?;
        let checkpoint_every = r.u64()?;
        let last_seq = r.u64()?;
        // Two numbers, four string lengths and two hashes at least.
        let n = r.count(96)?;
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            records.push(AuditRecord {
                seq: r.u64()?,
                at_ms: r.u64()?,
                kind: String::take(r)?,
                actor: String::take(r)?,
                subject: String::take(r)?,
                detail: String::take(r)?,
                prev: r.array()?,
                hash: r.array()?,
            });
        }
        let n = r.count(44)?;
        let mut checkpoints = Vec::with_capacity(n);
        for _ in 0..n {
            checkpoints.push(AuditCheckpoint {
                seq: r.u64()?,
                hash: r.array()?,
                signature: r.vec()?,
            });
        }
        Ok(AuditLog {
            public_key,
            checkpoint_every,
            last_seq,
            records,
            checkpoints,
        })
    }
}

/// A quorum approval: the token and each officer's signature.
impl Field for Approval {
    fn put(&self, w: &mut Writer) -> Result<()> {
        w.bytes(&self.token)?;
        w.len(self.signatures.len())?;
        for (officer, sig) in &self.signatures {
            officer.put(w)?;
            w.bytes(sig)?;
        }
        Ok(())
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        let token = r.vec()?;
        let n = r.count(8)?;
        let mut signatures = Vec::with_capacity(n);
        for _ in 0..n {
            signatures.push((String::take(r)?, r.vec()?));
        }
        Ok(Approval { token, signatures })
    }
}
