//! The wire protocol between the engine and `hsmpool-hsmd`, the simulator run as a daemon behind
//! mutual TLS: one [`Request`] per `Backend` call, one [`Response`] per request.
//!
//! # Frame
//! ```text
//! "HPW"  version(1)  len: u32 BE  | id: u64 BE  kind: u8  body...
//! `------------- header (8) -----' `---------- payload (len bytes) ---'
//! ```
//! * The magic and version come first in every frame so a peer speaking something else (or an
//!   older/newer hsmpool) is refused at once instead of being misparsed.
//! * `len` is capped at [`MAX_PAYLOAD`] (16 MiB) and checked as soon as the header is in, before
//!   any payload is buffered: a peer cannot make us allocate by announcing a huge frame.
//! * The request id makes the connection multiplexed: many requests may be in flight on one TLS
//!   connection and the daemon answers each with the same id, in any order (a slow RSA keygen
//!   does not hold up the signatures behind it).
//! * Request kinds are `0x01..=0x23`, response kinds `0x80..=0x8c`: a frame sent the wrong way
//!   is an [`WireError::UnknownKind`], not a misread.
//!
//! # Kinds
//! | kinds | requests | answered with |
//! |---|---|---|
//! | `0x01` | `Ping`: the HSM's health probe | `Ok` |
//! | `0x02..=0x09` | sessions, login, token and PIN management | `Handle`, `Ok`, `TokenStatus` |
//! | `0x0a..=0x12` | objects: create, copy, destroy, attributes, size, find, key metadata | `Handle`, `Ok`, `Attributes`, `Size`, `Handles`, `KeyMeta` |
//! | `0x13..=0x17` | key generation, wrapping, unwrapping, derivation | `Handle`, `KeyPair`, `Bytes` |
//! | `0x18..=0x1d` | sign, verify, encrypt, decrypt, digest-key value, random | `Bytes`, `Ok`, `Secret` |
//! | `0x1e`, `0x1f` | daemon administration: `Fault` (one fault verb), `Stats` | `Ok`, `Stats` |
//! | `0x20..=0x23` | the cluster clone path: `ExportClone`, `ImportClone`, `ObjectDigests`, `DropReplica` | `Bytes`, `Handle`, `Digests`, `Ok` |
//!
//! Any request may be answered with `Err(CK_RV)`.
//!
//! # Body
//! Hand-written and small, so we control every byte: integers are big-endian (`CK_ULONG` values
//! travel as u64), a `bool` is one byte 0 or 1 (anything else is malformed), byte strings and
//! lists have a u32 length or count prefix, an `Option` is a 0/1 tag byte then the value, enums
//! have a one-byte tag. Attribute values travel as opaque bytes in the native layout of
//! [`crate::types`] (both ends are the same platform). A body must be consumed exactly:
//! trailing bytes are malformed.
//!
//! # Errors and safety
//! Decoding never panics and never allocates more than the bytes actually present: every length
//! or count is checked against what remains before a buffer is made. Errors from
//! [`FrameReader::next_frame`] are fatal for the connection (framing is lost; the reader stays
//! failed). An error from [`decode_request`] leaves the framing intact (the id is known), but
//! `hsmpool-hsmd` still closes that connection with a logged reason: a peer that sends a body
//! it cannot have encoded is broken or hostile, and nothing it sends next is worth serving.
//!
//! # Secrets
//! PINs, plaintext to encrypt, decrypted data, key values for digest and random bytes decode into
//! [`Secret`] (a [`Zeroizing`] buffer whose `Debug` is redacted); attribute values are [`Attr`]s,
//! which zeroize on drop and never print their value. The encoder and the [`FrameReader`] wipe
//! the buffers they outgrow or consume.

use std::fmt;
use std::ops::Deref;

use cryptoki_sys::{CK_ATTRIBUTE_TYPE, CK_MECHANISM_TYPE, CK_RV, CK_ULONG};
use zeroize::{Zeroize, Zeroizing};

use crate::hsm::{AttrAnswer, KeyMeta, Role, TokenStatus};
use crate::types::{Attr, KdfSegment, MechParam, Mechanism, SignInput};

pub mod link;

/// The first three bytes of every frame.
pub const MAGIC: [u8; 3] = *b"HPW";
/// The protocol version this module speaks.
pub const VERSION: u8 = 1;
/// Magic, version and payload length.
pub const HEADER_LEN: usize = 8;
/// The largest payload accepted or produced.
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// The largest [`Request::Random`] length accepted, so that the answer fits in a frame.
pub const MAX_RANDOM: u32 = MAX_PAYLOAD - 64;
/// A drained [`FrameReader`] buffer with more capacity than this is freed.
const SHRINK_ABOVE: usize = 1 << 20;
/// Request id and kind: the shortest valid payload.
const MIN_PAYLOAD: usize = 9;

/// Everything that can go wrong reading or writing the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame does not start with `HPW`.
    #[error("bad frame magic")]
    BadMagic,
    /// A protocol version other than [`VERSION`].
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// A payload larger than [`MAX_PAYLOAD`] (announced by a peer, or about to be encoded; when
    /// encoding, `len` is the size reached when the cap was hit).
    #[error("payload of {len} bytes exceeds the cap of {MAX_PAYLOAD}")]
    TooLarge {
        /// The length.
        len: u64,
    },
    /// The bytes end before the frame or message does.
    #[error("truncated frame or message")]
    Truncated,
    /// A kind byte this side does not know.
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// Bytes that do not form a valid message.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

type Result<T> = std::result::Result<T, WireError>;

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

/// One call of the `Backend` trait (sessions and objects are the member's own handles).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Liveness check; answered with [`Response::Ok`].
    Ping,
    /// `open_session` → [`Response::Handle`].
    OpenSession,
    /// `close_session` → [`Response::Ok`].
    CloseSession {
        /// Session.
        session: u64,
    },
    /// `login` → [`Response::Ok`].
    Login {
        /// Session.
        session: u64,
        /// Role.
        role: Role,
        /// PIN (or `name:password`).
        pin: Secret,
        /// User name given by `C_LoginUser`.
        username: Option<String>,
    },
    /// `logout` → [`Response::Ok`].
    Logout {
        /// Session.
        session: u64,
    },
    /// `init_token` → [`Response::Ok`].
    InitToken {
        /// SO PIN.
        so_pin: Secret,
        /// Label, blank padded.
        label: [u8; 32],
    },
    /// `init_pin` → [`Response::Ok`].
    InitPin {
        /// Session.
        session: u64,
        /// New user PIN.
        pin: Secret,
    },
    /// `set_pin` → [`Response::Ok`].
    SetPin {
        /// Session.
        session: u64,
        /// Old PIN.
        old: Secret,
        /// New PIN.
        new: Secret,
    },
    /// `token_status` → [`Response::TokenStatus`].
    TokenStatus,
    /// `create_object` → [`Response::Handle`].
    CreateObject {
        /// Session.
        session: u64,
        /// Template.
        template: Vec<Attr>,
    },
    /// `copy_object` → [`Response::Handle`].
    CopyObject {
        /// Session.
        session: u64,
        /// Object copied.
        object: u64,
        /// Template.
        template: Vec<Attr>,
    },
    /// `destroy_object` → [`Response::Ok`].
    DestroyObject {
        /// Session.
        session: u64,
        /// Object.
        object: u64,
    },
    /// `get_attributes` → [`Response::Attributes`].
    GetAttributes {
        /// Session.
        session: u64,
        /// Object.
        object: u64,
        /// Attribute types asked.
        types: Vec<CK_ATTRIBUTE_TYPE>,
    },
    /// `set_attributes` → [`Response::Ok`].
    SetAttributes {
        /// Session.
        session: u64,
        /// Object.
        object: u64,
        /// Template.
        template: Vec<Attr>,
    },
    /// `object_size` → [`Response::Size`].
    ObjectSize {
        /// Session.
        session: u64,
        /// Object.
        object: u64,
    },
    /// `find` → [`Response::Handles`].
    Find {
        /// Session.
        session: u64,
        /// Template.
        template: Vec<Attr>,
    },
    /// `key_meta` → [`Response::KeyMeta`].
    KeyMeta {
        /// Session.
        session: u64,
        /// Object.
        object: u64,
    },
    /// `check_key` → [`Response::KeyMeta`].
    CheckKey {
        /// Session.
        session: u64,
        /// `CKA_SIGN`, `CKA_ENCRYPT`, ...
        usage: CK_ATTRIBUTE_TYPE,
        /// Mechanism.
        mech: Mechanism,
        /// Key.
        object: u64,
    },
    /// `generate_key` → [`Response::Handle`].
    GenerateKey {
        /// Session.
        session: u64,
        /// Mechanism.
        mech: Mechanism,
        /// Template.
        template: Vec<Attr>,
    },
    /// `generate_key_pair` → [`Response::KeyPair`].
    GenerateKeyPair {
        /// Session.
        session: u64,
        /// Mechanism.
        mech: Mechanism,
        /// Public key template.
        public: Vec<Attr>,
        /// Private key template.
        private: Vec<Attr>,
    },
    /// `wrap_key` → [`Response::Bytes`].
    WrapKey {
        /// Session.
        session: u64,
        /// Mechanism.
        mech: Mechanism,
        /// Wrapping key.
        wrapping: u64,
        /// Key wrapped.
        key: u64,
    },
    /// `unwrap_key` → [`Response::Handle`].
    UnwrapKey {
        /// Session.
        session: u64,
        /// Mechanism.
        mech: Mechanism,
        /// Unwrapping key.
        unwrapping: u64,
        /// Wrapped key bytes.
        wrapped: Vec<u8>,
        /// Template of the new key.
        template: Vec<Attr>,
    },
    /// `derive_key` → [`Response::Handle`].
    DeriveKey {
        /// Session.
        session: u64,
        /// Mechanism.
        mech: Mechanism,
        /// Base key.
        base: u64,
        /// Template of the new key.
        template: Vec<Attr>,
    },
    /// `sign` → [`Response::Bytes`].
    Sign {
        /// Session.
        session: u64,
        /// Mechanism.
        mech: Mechanism,
        /// Key.
        key: u64,
        /// Whether `data` is the message or its digest.
        input: InputKind,
        /// Data.
        data: Vec<u8>,
    },
    /// `verify` → [`Response::Ok`].
    Verify {
        /// Session.
        session: u64,
        /// Mechanism.
        mech: Mechanism,
        /// Key.
        key: u64,
        /// Whether `data` is the message or its digest.
        input: InputKind,
        /// Data.
        data: Vec<u8>,
        /// Signature.
        signature: Vec<u8>,
    },
    /// `encrypt` → [`Response::Bytes`].
    Encrypt {
        /// Session.
        session: u64,
        /// Mechanism.
        mech: Mechanism,
        /// Key.
        key: u64,
        /// Plaintext.
        data: Secret,
    },
    /// `decrypt` → [`Response::Secret`].
    Decrypt {
        /// Session.
        session: u64,
        /// Mechanism.
        mech: Mechanism,
        /// Key.
        key: u64,
        /// Ciphertext.
        data: Vec<u8>,
    },
    /// `secret_for_digest` → [`Response::Secret`].
    SecretForDigest {
        /// Session.
        session: u64,
        /// Key.
        key: u64,
    },
    /// `random` → [`Response::Secret`] of `len` bytes (at most [`MAX_RANDOM`]).
    Random {
        /// Bytes wanted.
        len: u32,
    },
    /// Daemon administration: apply one fault verb (`crash`, `delay 5ms`, ...: the syntax of
    /// [`crate::fault::FaultVerb`]) → [`Response::Ok`].
    Fault {
        /// The verb and its arguments, as a fault script line without `at`.
        verb: String,
    },
    /// Daemon administration: counters → [`Response::Stats`].
    Stats,
    /// `export_clone`: an object sealed for another member of the cluster → [`Response::Bytes`].
    ExportClone {
        /// Session.
        session: u64,
        /// Object.
        object: u64,
    },
    /// `import_clone`: an object exported by another member → [`Response::Handle`].
    ImportClone {
        /// Session.
        session: u64,
        /// The sealed object.
        blob: Vec<u8>,
    },
    /// `object_digests`: (object, digest) of every object the session sees →
    /// [`Response::Digests`].
    ObjectDigests {
        /// Session.
        session: u64,
    },
    /// `drop_replica` → [`Response::Ok`].
    DropReplica {
        /// Session.
        session: u64,
        /// Object.
        object: u64,
    },
}

/// A daemon's counters, since it started ([`Request::Stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonStats {
    /// Client connections open now (after their handshake).
    pub connections_open: u64,
    /// Client connections that completed their handshake.
    pub connections_accepted: u64,
    /// TLS handshakes refused (wrong CA, no certificate, not TLS, ...).
    pub handshakes_refused: u64,
    /// Connections closed by the daemon on a fault verb (`drop_connections`, `crash`).
    pub connections_dropped: u64,
    /// Requests answered (with a value or an error).
    pub requests_served: u64,
    /// Requests answered with [`Response::Err`].
    pub requests_failed: u64,
    /// Frames refused as malformed (the connection that sent one is closed).
    pub frames_refused: u64,
    /// Operations failed by fault injection (`Faults::injected`).
    pub faults_injected: u64,
}

impl DaemonStats {
    /// Every counter with its name, in wire order.
    pub fn fields(&self) -> [(&'static str, u64); 8] {
        [
            ("connections_open", self.connections_open),
            ("connections_accepted", self.connections_accepted),
            ("handshakes_refused", self.handshakes_refused),
            ("connections_dropped", self.connections_dropped),
            ("requests_served", self.requests_served),
            ("requests_failed", self.requests_failed),
            ("frames_refused", self.frames_refused),
            ("faults_injected", self.faults_injected),
        ]
    }
}

/// The answer to one [`Request`].
#[derive(Clone, Debug)]
pub enum Response {
    /// Success without a value.
    Ok,
    /// A session or object handle.
    Handle(u64),
    /// An object size.
    Size(u64),
    /// Object handles (`find`).
    Handles(Vec<u64>),
    /// (public, private) handles.
    KeyPair(u64, u64),
    /// Non-secret bytes: a wrapped key, a signature, a ciphertext.
    Bytes(Vec<u8>),
    /// Secret bytes: a plaintext, a key value, random bytes.
    Secret(Secret),
    /// Token state.
    TokenStatus(TokenStatus),
    /// One answer per attribute type asked.
    Attributes(Vec<AttrAnswer>),
    /// Key metadata.
    KeyMeta(KeyMeta),
    /// The call failed with this `CK_RV`.
    Err(CK_RV),
    /// A daemon's counters.
    Stats(DaemonStats),
    /// (object, SHA-256 digest) pairs.
    Digests(Vec<(u64, [u8; 32])>),
}

fn token_status_eq(a: &TokenStatus, b: &TokenStatus) -> bool {
    a.initialized == b.initialized
        && a.user_pin_initialized == b.user_pin_initialized
        && a.label == b.label
        && a.user_failures == b.user_failures
        && a.so_failures == b.so_failures
        && a.max_failures == b.max_failures
        && a.object_count == b.object_count
}

fn key_meta_eq(a: &KeyMeta, b: &KeyMeta) -> bool {
    a.class == b.class
        && a.key_type == b.key_type
        && a.key_bits == b.key_bits
        && a.token == b.token
        && a.private == b.private
        && a.always_authenticate == b.always_authenticate
}

// By hand: `TokenStatus` and `KeyMeta` do not implement `PartialEq`.
impl PartialEq for Response {
    fn eq(&self, other: &Self) -> bool {
        use Response as R;
        match (self, other) {
            (R::Ok, R::Ok) => true,
            (R::Handle(a), R::Handle(b)) | (R::Size(a), R::Size(b)) => a == b,
            (R::Handles(a), R::Handles(b)) => a == b,
            (R::KeyPair(a, b), R::KeyPair(c, d)) => a == c && b == d,
            (R::Bytes(a), R::Bytes(b)) => a == b,
            (R::Secret(a), R::Secret(b)) => a == b,
            (R::TokenStatus(a), R::TokenStatus(b)) => token_status_eq(a, b),
            (R::Attributes(a), R::Attributes(b)) => a == b,
            (R::KeyMeta(a), R::KeyMeta(b)) => key_meta_eq(a, b),
            (R::Err(a), R::Err(b)) => a == b,
            (R::Stats(a), R::Stats(b)) => a == b,
            (R::Digests(a), R::Digests(b)) => a == b,
            _ => false,
        }
    }
}

/// Kind bytes. Requests below 0x80, responses from 0x80.
mod kind {
    pub const PING: u8 = 0x01;
    pub const OPEN_SESSION: u8 = 0x02;
    pub const CLOSE_SESSION: u8 = 0x03;
    pub const LOGIN: u8 = 0x04;
    pub const LOGOUT: u8 = 0x05;
    pub const INIT_TOKEN: u8 = 0x06;
    pub const INIT_PIN: u8 = 0x07;
    pub const SET_PIN: u8 = 0x08;
    pub const TOKEN_STATUS: u8 = 0x09;
    pub const CREATE_OBJECT: u8 = 0x0a;
    pub const COPY_OBJECT: u8 = 0x0b;
    pub const DESTROY_OBJECT: u8 = 0x0c;
    pub const GET_ATTRIBUTES: u8 = 0x0d;
    pub const SET_ATTRIBUTES: u8 = 0x0e;
    pub const OBJECT_SIZE: u8 = 0x0f;
    pub const FIND: u8 = 0x10;
    pub const KEY_META: u8 = 0x11;
    pub const CHECK_KEY: u8 = 0x12;
    pub const GENERATE_KEY: u8 = 0x13;
    pub const GENERATE_KEY_PAIR: u8 = 0x14;
    pub const WRAP_KEY: u8 = 0x15;
    pub const UNWRAP_KEY: u8 = 0x16;
    pub const DERIVE_KEY: u8 = 0x17;
    pub const SIGN: u8 = 0x18;
    pub const VERIFY: u8 = 0x19;
    pub const ENCRYPT: u8 = 0x1a;
    pub const DECRYPT: u8 = 0x1b;
    pub const SECRET_FOR_DIGEST: u8 = 0x1c;
    pub const RANDOM: u8 = 0x1d;
    pub const FAULT: u8 = 0x1e;
    pub const STATS: u8 = 0x1f;
    pub const EXPORT_CLONE: u8 = 0x20;
    pub const IMPORT_CLONE: u8 = 0x21;
    pub const OBJECT_DIGESTS: u8 = 0x22;
    pub const DROP_REPLICA: u8 = 0x23;
    /// The last request kind.
    #[cfg(test)]
    pub const LAST_REQUEST: u8 = DROP_REPLICA;

    pub const R_OK: u8 = 0x80;
    pub const R_HANDLE: u8 = 0x81;
    pub const R_SIZE: u8 = 0x82;
    pub const R_HANDLES: u8 = 0x83;
    pub const R_KEY_PAIR: u8 = 0x84;
    pub const R_BYTES: u8 = 0x85;
    pub const R_SECRET: u8 = 0x86;
    pub const R_TOKEN_STATUS: u8 = 0x87;
    pub const R_ATTRIBUTES: u8 = 0x88;
    pub const R_KEY_META: u8 = 0x89;
    pub const R_ERR: u8 = 0x8a;
    pub const R_STATS: u8 = 0x8b;
    pub const R_DIGESTS: u8 = 0x8c;
    /// The last response kind.
    #[cfg(test)]
    pub const LAST_RESPONSE: u8 = R_DIGESTS;
}

impl Request {
    /// The variant's name, for logs (never the contents).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "Ping",
            Request::OpenSession => "OpenSession",
            Request::CloseSession { .. } => "CloseSession",
            Request::Login { .. } => "Login",
            Request::Logout { .. } => "Logout",
            Request::InitToken { .. } => "InitToken",
            Request::InitPin { .. } => "InitPin",
            Request::SetPin { .. } => "SetPin",
            Request::TokenStatus => "TokenStatus",
            Request::CreateObject { .. } => "CreateObject",
            Request::CopyObject { .. } => "CopyObject",
            Request::DestroyObject { .. } => "DestroyObject",
            Request::GetAttributes { .. } => "GetAttributes",
            Request::SetAttributes { .. } => "SetAttributes",
            Request::ObjectSize { .. } => "ObjectSize",
            Request::Find { .. } => "Find",
            Request::KeyMeta { .. } => "KeyMeta",
            Request::CheckKey { .. } => "CheckKey",
            Request::GenerateKey { .. } => "GenerateKey",
            Request::GenerateKeyPair { .. } => "GenerateKeyPair",
            Request::WrapKey { .. } => "WrapKey",
            Request::UnwrapKey { .. } => "UnwrapKey",
            Request::DeriveKey { .. } => "DeriveKey",
            Request::Sign { .. } => "Sign",
            Request::Verify { .. } => "Verify",
            Request::Encrypt { .. } => "Encrypt",
            Request::Decrypt { .. } => "Decrypt",
            Request::SecretForDigest { .. } => "SecretForDigest",
            Request::Random { .. } => "Random",
            Request::Fault { .. } => "Fault",
            Request::Stats => "Stats",
            Request::ExportClone { .. } => "ExportClone",
            Request::ImportClone { .. } => "ImportClone",
            Request::ObjectDigests { .. } => "ObjectDigests",
            Request::DropReplica { .. } => "DropReplica",
        }
    }
}

impl Response {
    /// The variant's name, for logs (never the contents).
    pub fn name(&self) -> &'static str {
        match self {
            Response::Ok => "Ok",
            Response::Handle(_) => "Handle",
            Response::Size(_) => "Size",
            Response::Handles(_) => "Handles",
            Response::KeyPair(..) => "KeyPair",
            Response::Bytes(_) => "Bytes",
            Response::Secret(_) => "Secret",
            Response::TokenStatus(_) => "TokenStatus",
            Response::Attributes(_) => "Attributes",
            Response::KeyMeta(_) => "KeyMeta",
            Response::Err(_) => "Err",
            Response::Stats(_) => "Stats",
            Response::Digests(_) => "Digests",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// An output frame under construction. It grows by hand so that an outgrown buffer (which may
/// hold a PIN) is wiped rather than freed as is, and it refuses to pass the payload cap.
struct Writer {
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
    fn frame(id: u64, kind: u8) -> Writer {
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

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.reserve(b.len())?;
        self.buf.extend_from_slice(b);
        Ok(())
    }
    fn u8(&mut self, v: u8) -> Result<()> {
        self.put(&[v])
    }
    fn bool(&mut self, v: bool) -> Result<()> {
        self.u8(u8::from(v))
    }
    fn u32(&mut self, v: u32) -> Result<()> {
        self.put(&v.to_be_bytes())
    }
    fn u64(&mut self, v: u64) -> Result<()> {
        self.put(&v.to_be_bytes())
    }
    fn ulong(&mut self, v: CK_ULONG) -> Result<()> {
        self.u64(ulong_to_wire(v))
    }
    fn len(&mut self, n: usize) -> Result<()> {
        let n = u32::try_from(n).map_err(|_| WireError::TooLarge { len: n as u64 })?;
        self.u32(n)
    }
    fn bytes(&mut self, b: &[u8]) -> Result<()> {
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
    fn ulongs(&mut self, v: &[CK_ULONG]) -> Result<()> {
        self.len(v.len())?;
        v.iter().try_for_each(|&x| self.ulong(x))
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
    fn finish(mut self) -> Vec<u8> {
        let len = (self.buf.len() - HEADER_LEN) as u32; // `reserve` kept it under the cap
        self.buf[4..8].copy_from_slice(&len.to_be_bytes());
        std::mem::take(&mut self.buf)
    }
}

fn request_kind(r: &Request) -> u8 {
    use kind::*;
    match r {
        Request::Ping => PING,
        Request::OpenSession => OPEN_SESSION,
        Request::CloseSession { .. } => CLOSE_SESSION,
        Request::Login { .. } => LOGIN,
        Request::Logout { .. } => LOGOUT,
        Request::InitToken { .. } => INIT_TOKEN,
        Request::InitPin { .. } => INIT_PIN,
        Request::SetPin { .. } => SET_PIN,
        Request::TokenStatus => TOKEN_STATUS,
        Request::CreateObject { .. } => CREATE_OBJECT,
        Request::CopyObject { .. } => COPY_OBJECT,
        Request::DestroyObject { .. } => DESTROY_OBJECT,
        Request::GetAttributes { .. } => GET_ATTRIBUTES,
        Request::SetAttributes { .. } => SET_ATTRIBUTES,
        Request::ObjectSize { .. } => OBJECT_SIZE,
        Request::Find { .. } => FIND,
        Request::KeyMeta { .. } => KEY_META,
        Request::CheckKey { .. } => CHECK_KEY,
        Request::GenerateKey { .. } => GENERATE_KEY,
        Request::GenerateKeyPair { .. } => GENERATE_KEY_PAIR,
        Request::WrapKey { .. } => WRAP_KEY,
        Request::UnwrapKey { .. } => UNWRAP_KEY,
        Request::DeriveKey { .. } => DERIVE_KEY,
        Request::Sign { .. } => SIGN,
        Request::Verify { .. } => VERIFY,
        Request::Encrypt { .. } => ENCRYPT,
        Request::Decrypt { .. } => DECRYPT,
        Request::SecretForDigest { .. } => SECRET_FOR_DIGEST,
        Request::Random { .. } => RANDOM,
        Request::Fault { .. } => FAULT,
        Request::Stats => STATS,
        Request::ExportClone { .. } => EXPORT_CLONE,
        Request::ImportClone { .. } => IMPORT_CLONE,
        Request::ObjectDigests { .. } => OBJECT_DIGESTS,
        Request::DropReplica { .. } => DROP_REPLICA,
    }
}

fn response_kind(r: &Response) -> u8 {
    use kind::*;
    match r {
        Response::Ok => R_OK,
        Response::Handle(_) => R_HANDLE,
        Response::Size(_) => R_SIZE,
        Response::Handles(_) => R_HANDLES,
        Response::KeyPair(..) => R_KEY_PAIR,
        Response::Bytes(_) => R_BYTES,
        Response::Secret(_) => R_SECRET,
        Response::TokenStatus(_) => R_TOKEN_STATUS,
        Response::Attributes(_) => R_ATTRIBUTES,
        Response::KeyMeta(_) => R_KEY_META,
        Response::Err(_) => R_ERR,
        Response::Stats(_) => R_STATS,
        Response::Digests(_) => R_DIGESTS,
    }
}

/// One whole frame (header included) carrying request `r` under `id`.
pub fn encode_request(id: u64, r: &Request) -> Result<Vec<u8>> {
    let mut w = Writer::frame(id, request_kind(r));
    match r {
        Request::Ping | Request::OpenSession | Request::TokenStatus | Request::Stats => {}
        Request::CloseSession { session }
        | Request::Logout { session }
        | Request::ObjectDigests { session } => w.u64(*session)?,
        Request::Login {
            session,
            role,
            pin,
            username,
        } => {
            w.u64(*session)?;
            w.u8(match role {
                Role::Officer => 0,
                Role::User => 1,
            })?;
            w.bytes(pin)?;
            match username {
                None => w.u8(0)?,
                Some(u) => {
                    w.u8(1)?;
                    w.bytes(u.as_bytes())?;
                }
            }
        }
        Request::InitToken { so_pin, label } => {
            w.bytes(so_pin)?;
            w.put(label)?;
        }
        Request::InitPin { session, pin } => {
            w.u64(*session)?;
            w.bytes(pin)?;
        }
        Request::SetPin { session, old, new } => {
            w.u64(*session)?;
            w.bytes(old)?;
            w.bytes(new)?;
        }
        Request::CreateObject { session, template } | Request::Find { session, template } => {
            w.u64(*session)?;
            w.attrs(template)?;
        }
        Request::CopyObject {
            session,
            object,
            template,
        }
        | Request::SetAttributes {
            session,
            object,
            template,
        } => {
            w.u64(*session)?;
            w.u64(*object)?;
            w.attrs(template)?;
        }
        Request::DestroyObject { session, object }
        | Request::ExportClone { session, object }
        | Request::DropReplica { session, object }
        | Request::ObjectSize { session, object }
        | Request::KeyMeta { session, object }
        | Request::SecretForDigest {
            session,
            key: object,
        } => {
            w.u64(*session)?;
            w.u64(*object)?;
        }
        Request::GetAttributes {
            session,
            object,
            types,
        } => {
            w.u64(*session)?;
            w.u64(*object)?;
            w.ulongs(types)?;
        }
        Request::CheckKey {
            session,
            usage,
            mech,
            object,
        } => {
            w.u64(*session)?;
            w.ulong(*usage)?;
            w.mech(mech)?;
            w.u64(*object)?;
        }
        Request::GenerateKey {
            session,
            mech,
            template,
        } => {
            w.u64(*session)?;
            w.mech(mech)?;
            w.attrs(template)?;
        }
        Request::GenerateKeyPair {
            session,
            mech,
            public,
            private,
        } => {
            w.u64(*session)?;
            w.mech(mech)?;
            w.attrs(public)?;
            w.attrs(private)?;
        }
        Request::WrapKey {
            session,
            mech,
            wrapping,
            key,
        } => {
            w.u64(*session)?;
            w.mech(mech)?;
            w.u64(*wrapping)?;
            w.u64(*key)?;
        }
        Request::UnwrapKey {
            session,
            mech,
            unwrapping,
            wrapped,
            template,
        } => {
            w.u64(*session)?;
            w.mech(mech)?;
            w.u64(*unwrapping)?;
            w.bytes(wrapped)?;
            w.attrs(template)?;
        }
        Request::DeriveKey {
            session,
            mech,
            base,
            template,
        } => {
            w.u64(*session)?;
            w.mech(mech)?;
            w.u64(*base)?;
            w.attrs(template)?;
        }
        Request::Sign {
            session,
            mech,
            key,
            input,
            data,
        } => {
            w.u64(*session)?;
            w.mech(mech)?;
            w.u64(*key)?;
            w.input(*input)?;
            w.bytes(data)?;
        }
        Request::Verify {
            session,
            mech,
            key,
            input,
            data,
            signature,
        } => {
            w.u64(*session)?;
            w.mech(mech)?;
            w.u64(*key)?;
            w.input(*input)?;
            w.bytes(data)?;
            w.bytes(signature)?;
        }
        Request::Encrypt {
            session,
            mech,
            key,
            data,
        } => {
            w.u64(*session)?;
            w.mech(mech)?;
            w.u64(*key)?;
            w.bytes(data)?;
        }
        Request::Decrypt {
            session,
            mech,
            key,
            data,
        } => {
            w.u64(*session)?;
            w.mech(mech)?;
            w.u64(*key)?;
            w.bytes(data)?;
        }
        Request::Random { len } => w.u32(*len)?,
        Request::Fault { verb } => w.bytes(verb.as_bytes())?,
        Request::ImportClone { session, blob } => {
            w.u64(*session)?;
            w.bytes(blob)?;
        }
    }
    Ok(w.finish())
}

/// One whole frame (header included) carrying response `r` to request `id`.
pub fn encode_response(id: u64, r: &Response) -> Result<Vec<u8>> {
    let mut w = Writer::frame(id, response_kind(r));
    match r {
        Response::Ok => {}
        Response::Handle(v) | Response::Size(v) => w.u64(*v)?,
        Response::Handles(v) => w.u64s(v)?,
        Response::KeyPair(a, b) => {
            w.u64(*a)?;
            w.u64(*b)?;
        }
        Response::Bytes(b) => w.bytes(b)?,
        Response::Secret(s) => w.bytes(s)?,
        Response::TokenStatus(t) => {
            w.bool(t.initialized)?;
            w.bool(t.user_pin_initialized)?;
            w.put(&t.label)?;
            w.u32(t.user_failures)?;
            w.u32(t.so_failures)?;
            w.u32(t.max_failures)?;
            w.u64(t.object_count as u64)?;
        }
        Response::Attributes(answers) => {
            w.len(answers.len())?;
            for a in answers {
                match a {
                    AttrAnswer::Value(v) => {
                        w.u8(0)?;
                        w.bytes(v)?;
                    }
                    AttrAnswer::Sensitive => w.u8(1)?,
                    AttrAnswer::Invalid => w.u8(2)?,
                }
            }
        }
        Response::KeyMeta(m) => {
            w.ulong(m.class)?;
            match m.key_type {
                None => w.u8(0)?,
                Some(t) => {
                    w.u8(1)?;
                    w.ulong(t)?;
                }
            }
            w.u64(m.key_bits as u64)?;
            w.bool(m.token)?;
            w.bool(m.private)?;
            w.bool(m.always_authenticate)?;
        }
        Response::Err(rv) => w.ulong(*rv)?,
        Response::Stats(st) => {
            for (_, v) in st.fields() {
                w.u64(v)?;
            }
        }
        Response::Digests(v) => {
            w.len(v.len())?;
            for (id, digest) in v {
                w.u64(*id)?;
                w.put(digest)?;
            }
        }
    }
    Ok(w.finish())
}

// ---------------------------------------------------------------------------------------------
// Framing

/// Splits a byte stream into frames. Feed it whatever the socket gave ([`FrameReader::push`]),
/// then call [`FrameReader::next_frame`] until it answers `None`. A header is judged as soon as
/// its bytes are in (a bad magic at the first wrong byte), so an oversized frame is refused
/// before its payload is read. After an error the reader stays failed: drop the connection.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    pos: usize,
    failed: Option<WireError>,
}

impl fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameReader")
            .field("buffered", &self.buffered())
            .field("failed", &self.failed)
            .finish()
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Append bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.pos > 0 {
            // Drop what was handed out, wiping it (it may hold PINs).
            let live = self.buf.len() - self.pos;
            self.buf.copy_within(self.pos.., 0);
            self.buf[live..].zeroize();
            self.buf.truncate(live);
            self.pos = 0;
            if live == 0 && self.buf.capacity() > SHRINK_ABOVE {
                // Do not keep a 16 MiB buffer for the small frames after a big one.
                self.buf.zeroize();
                self.buf = Vec::new();
            }
        }
        let need = self.buf.len().saturating_add(data.len());
        if self.buf.capacity() < need {
            let mut grown = Vec::with_capacity(need.max(self.buf.capacity().saturating_mul(2)));
            grown.extend_from_slice(&self.buf);
            self.buf.zeroize();
            self.buf = grown;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, as (request id, payload from the kind byte on) for
    /// [`decode_request`] / [`decode_response`]; `None` until one is complete.
    pub fn next_frame(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match parse_frame(&self.buf[self.pos..]) {
            Ok(Some((id, payload, used))) => {
                let payload = payload.to_vec();
                self.pos += used;
                Ok(Some((id, payload)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// At end of stream: `Err(Truncated)` if a partial frame was left over (or the earlier
    /// error, if the reader failed).
    pub fn finish(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.buffered() > 0 => Err(WireError::Truncated),
            None => Ok(()),
        }
    }
}

/// The frame at the start of `b`: (id, kind and body, bytes used), `None` if incomplete.
fn parse_frame(b: &[u8]) -> Result<Option<(u64, &[u8], usize)>> {
    let m = b.len().min(MAGIC.len());
    if b[..m] != MAGIC[..m] {
        return Err(WireError::BadMagic);
    }
    match b.get(3) {
        None => return Ok(None),
        Some(&VERSION) => {}
        Some(&v) => return Err(WireError::BadVersion(v)),
    }
    let Some(len) = b.get(4..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLarge { len: len.into() });
    }
    let len = len as usize;
    if len < MIN_PAYLOAD {
        return Err(WireError::Malformed("payload shorter than id and kind"));
    }
    let Some(payload) = b.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let (id, rest) = payload.split_at(8);
    let id = u64::from_be_bytes(id.try_into().map_err(|_| WireError::Truncated)?);
    Ok(Some((id, rest, HEADER_LEN + len)))
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Reads a message body; every read checks what remains first.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.b.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.take(N)?.try_into().map_err(|_| WireError::Truncated)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed("bool not 0 or 1")),
        }
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn ulong(&mut self) -> Result<CK_ULONG> {
        ulong_from_wire(self.u64()?)
    }
    fn usize(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| WireError::Malformed("size out of range"))
    }
    fn slice(&mut self) -> Result<&'a [u8]> {
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
    fn count(&mut self, min_size: usize) -> Result<usize> {
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
    fn ulongs(&mut self) -> Result<Vec<CK_ULONG>> {
        let n = self.count(8)?;
        (0..n).map(|_| self.ulong()).collect()
    }
    fn u64s(&mut self) -> Result<Vec<u64>> {
        let n = self.count(8)?;
        (0..n).map(|_| self.u64()).collect()
    }
    fn role(&mut self) -> Result<Role> {
        match self.u8()? {
            0 => Ok(Role::Officer),
            1 => Ok(Role::User),
            _ => Err(WireError::Malformed("unknown role")),
        }
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
    fn end(&self) -> Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed("trailing bytes"))
        }
    }
}

/// Decode a request from a payload returned by [`FrameReader::next_frame`].
pub fn decode_request(payload: &[u8]) -> Result<Request> {
    use kind::*;
    let mut r = Reader { b: payload };
    let req = match r.u8()? {
        PING => Request::Ping,
        OPEN_SESSION => Request::OpenSession,
        CLOSE_SESSION => Request::CloseSession { session: r.u64()? },
        LOGIN => Request::Login {
            session: r.u64()?,
            role: r.role()?,
            pin: r.secret()?,
            username: match r.u8()? {
                0 => None,
                1 => Some(
                    std::str::from_utf8(r.slice()?)
                        .map_err(|_| WireError::Malformed("user name not UTF-8"))?
                        .to_owned(),
                ),
                _ => return Err(WireError::Malformed("bad option tag")),
            },
        },
        LOGOUT => Request::Logout { session: r.u64()? },
        INIT_TOKEN => Request::InitToken {
            so_pin: r.secret()?,
            label: r.array()?,
        },
        INIT_PIN => Request::InitPin {
            session: r.u64()?,
            pin: r.secret()?,
        },
        SET_PIN => Request::SetPin {
            session: r.u64()?,
            old: r.secret()?,
            new: r.secret()?,
        },
        TOKEN_STATUS => Request::TokenStatus,
        CREATE_OBJECT => Request::CreateObject {
            session: r.u64()?,
            template: r.attrs()?,
        },
        COPY_OBJECT => Request::CopyObject {
            session: r.u64()?,
            object: r.u64()?,
            template: r.attrs()?,
        },
        DESTROY_OBJECT => Request::DestroyObject {
            session: r.u64()?,
            object: r.u64()?,
        },
        GET_ATTRIBUTES => Request::GetAttributes {
            session: r.u64()?,
            object: r.u64()?,
            types: r.ulongs()?,
        },
        SET_ATTRIBUTES => Request::SetAttributes {
            session: r.u64()?,
            object: r.u64()?,
            template: r.attrs()?,
        },
        OBJECT_SIZE => Request::ObjectSize {
            session: r.u64()?,
            object: r.u64()?,
        },
        FIND => Request::Find {
            session: r.u64()?,
            template: r.attrs()?,
        },
        KEY_META => Request::KeyMeta {
            session: r.u64()?,
            object: r.u64()?,
        },
        CHECK_KEY => Request::CheckKey {
            session: r.u64()?,
            usage: r.ulong()?,
            mech: r.mech()?,
            object: r.u64()?,
        },
        GENERATE_KEY => Request::GenerateKey {
            session: r.u64()?,
            mech: r.mech()?,
            template: r.attrs()?,
        },
        GENERATE_KEY_PAIR => Request::GenerateKeyPair {
            session: r.u64()?,
            mech: r.mech()?,
            public: r.attrs()?,
            private: r.attrs()?,
        },
        WRAP_KEY => Request::WrapKey {
            session: r.u64()?,
            mech: r.mech()?,
            wrapping: r.u64()?,
            key: r.u64()?,
        },
        UNWRAP_KEY => Request::UnwrapKey {
            session: r.u64()?,
            mech: r.mech()?,
            unwrapping: r.u64()?,
            wrapped: r.vec()?,
            template: r.attrs()?,
        },
        DERIVE_KEY => Request::DeriveKey {
            session: r.u64()?,
            mech: r.mech()?,
            base: r.u64()?,
            template: r.attrs()?,
        },
        SIGN => Request::Sign {
            session: r.u64()?,
            mech: r.mech()?,
            key: r.u64()?,
            input: r.input()?,
            data: r.vec()?,
        },
        VERIFY => Request::Verify {
            session: r.u64()?,
            mech: r.mech()?,
            key: r.u64()?,
            input: r.input()?,
            data: r.vec()?,
            signature: r.vec()?,
        },
        ENCRYPT => Request::Encrypt {
            session: r.u64()?,
            mech: r.mech()?,
            key: r.u64()?,
            data: r.secret()?,
        },
        DECRYPT => Request::Decrypt {
            session: r.u64()?,
            mech: r.mech()?,
            key: r.u64()?,
            data: r.vec()?,
        },
        SECRET_FOR_DIGEST => Request::SecretForDigest {
            session: r.u64()?,
            key: r.u64()?,
        },
        RANDOM => {
            let len = r.u32()?;
            if len > MAX_RANDOM {
                return Err(WireError::Malformed("random length over MAX_RANDOM"));
            }
            Request::Random { len }
        }
        FAULT => Request::Fault {
            verb: std::str::from_utf8(r.slice()?)
                .map_err(|_| WireError::Malformed("fault verb not UTF-8"))?
                .to_owned(),
        },
        STATS => Request::Stats,
        EXPORT_CLONE => Request::ExportClone {
            session: r.u64()?,
            object: r.u64()?,
        },
        IMPORT_CLONE => Request::ImportClone {
            session: r.u64()?,
            blob: r.vec()?,
        },
        OBJECT_DIGESTS => Request::ObjectDigests { session: r.u64()? },
        DROP_REPLICA => Request::DropReplica {
            session: r.u64()?,
            object: r.u64()?,
        },
        k => return Err(WireError::UnknownKind(k)),
    };
    r.end()?;
    Ok(req)
}

/// Decode a response from a payload returned by [`FrameReader::next_frame`].
pub fn decode_response(payload: &[u8]) -> Result<Response> {
    use kind::*;
    let mut r = Reader { b: payload };
    let resp = match r.u8()? {
        R_OK => Response::Ok,
        R_HANDLE => Response::Handle(r.u64()?),
        R_SIZE => Response::Size(r.u64()?),
        R_HANDLES => Response::Handles(r.u64s()?),
        R_KEY_PAIR => Response::KeyPair(r.u64()?, r.u64()?),
        R_BYTES => Response::Bytes(r.vec()?),
        R_SECRET => Response::Secret(r.secret()?),
        R_TOKEN_STATUS => Response::TokenStatus(TokenStatus {
            initialized: r.bool()?,
            user_pin_initialized: r.bool()?,
            label: r.array()?,
            user_failures: r.u32()?,
            so_failures: r.u32()?,
            max_failures: r.u32()?,
            object_count: r.usize()?,
        }),
        R_ATTRIBUTES => {
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
            Response::Attributes(out)
        }
        R_KEY_META => Response::KeyMeta(KeyMeta {
            class: r.ulong()?,
            key_type: match r.u8()? {
                0 => None,
                1 => Some(r.ulong()?),
                _ => return Err(WireError::Malformed("bad option tag")),
            },
            key_bits: r.usize()?,
            token: r.bool()?,
            private: r.bool()?,
            always_authenticate: r.bool()?,
        }),
        R_ERR => Response::Err(r.ulong()?),
        R_STATS => Response::Stats(DaemonStats {
            connections_open: r.u64()?,
            connections_accepted: r.u64()?,
            handshakes_refused: r.u64()?,
            connections_dropped: r.u64()?,
            requests_served: r.u64()?,
            requests_failed: r.u64()?,
            frames_refused: r.u64()?,
            faults_injected: r.u64()?,
        }),
        R_DIGESTS => {
            let n = r.count(40)?;
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                out.push((r.u64()?, r.array()?));
            }
            Response::Digests(out)
        }
        k => return Err(WireError::UnknownKind(k)),
    };
    r.end()?;
    Ok(resp)
}

#[cfg(test)]
mod tests;
