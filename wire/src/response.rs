//! Every response, declared once: the [`Response`] enum, its kind bytes, names, encoder and
//! decoder all come from the table below ([`responses!`]). Many requests share a response
//! shape (`Ok`, `Handle`, `Bytes`, ...); any request may be answered with `Err(CK_RV)`.

use cryptoki_sys::CK_RV;
use hsmpool_member::{AttrAnswer, AuditLog, KeyMeta, OwnedObject, TokenStatus, UserSet};

use crate::codec::{Field, Reader, Secret, Writer};
use crate::error::{Result, WireError};

/// Generates the response side from the table. An entry:
/// ```text
/// /// What it carries.
/// R_KIND = 0xNN, Name(binding: Type, ...);   // tuple fields in wire order (none: no parens)
/// ```
macro_rules! responses {
    ($(
        $(#[doc = $doc:literal])*
        $KIND:ident = $code:literal, $name:ident $(( $($f:ident : $t:ty),* ))?;
    )*) => {
        /// The answer to one [`Request`](crate::Request).
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Response {
            $(
                $(#[doc = $doc])*
                $name $(( $($t),* ))?,
            )*
        }

        /// Response kind bytes (from 0x80).
        pub mod response_kind {
            $(
                #[doc = concat!("`", stringify!($name), "`.")]
                pub const $KIND: u8 = $code;
            )*
            /// Every response kind, in table order.
            pub const RESPONSES: &[u8] = &[$($code),*];
        }

        impl Response {
            /// The variant's name, for logs (never the contents).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Response::$name { .. } => stringify!($name),)*
                }
            }

            /// The kind byte.
            pub fn kind(&self) -> u8 {
                match self {
                    $(Response::$name { .. } => $code,)*
                }
            }
        }

        /// One whole frame (header included) carrying response `r` to request `id`.
        pub fn encode_response(id: u64, r: &Response) -> Result<Vec<u8>> {
            let mut w = Writer::frame(id, r.kind());
            match r {
                $(
                    Response::$name $(( $($f),* ))? => {
                        $($( Field::put($f, &mut w)?; )*)?
                    }
                )*
            }
            Ok(w.finish())
        }

        /// Decode a response from a payload returned by
        /// [`FrameReader::next_frame`](crate::FrameReader::next_frame).
        pub fn decode_response(payload: &[u8]) -> Result<Response> {
            let mut r = Reader::new(payload);
            let resp = match r.u8()? {
                $(
                    $code => {
                        $($( let $f = <$t as Field>::take(&mut r)?; )*)?
                        Response::$name $(( $($f),* ))?
                    }
                )*
                k => return Err(WireError::UnknownKind(k)),
            };
            r.end()?;
            Ok(resp)
        }
    };
}

#[rustfmt::skip]
responses! {
    /// Success without a value.
    R_OK = 0x80, Ok;
    /// A session or object handle.
    R_HANDLE = 0x81, Handle(h: u64);
    /// An object size.
    R_SIZE = 0x82, Size(n: u64);
    /// Object handles (`find`).
    R_HANDLES = 0x83, Handles(v: Vec<u64>);
    /// (public, private) handles.
    R_KEY_PAIR = 0x84, KeyPair(public: u64, private: u64);
    /// Non-secret bytes: a wrapped key, a signature, a ciphertext.
    R_BYTES = 0x85, Bytes(b: Vec<u8>);
    /// Secret bytes: a plaintext, a key value, random bytes.
    R_SECRET = 0x86, Secret(s: Secret);
    /// Token state.
    R_TOKEN_STATUS = 0x87, TokenStatus(t: TokenStatus);
    /// One answer per attribute type asked.
    R_ATTRIBUTES = 0x88, Attributes(a: Vec<AttrAnswer>);
    /// Key metadata.
    R_KEY_META = 0x89, KeyMeta(m: KeyMeta);
    /// The call failed with this `CK_RV`.
    R_ERR = 0x8a, Err(rv: CK_RV);
    /// A daemon's counters.
    R_STATS = 0x8b, Stats(s: DaemonStats);
    /// (object, SHA-256 digest) pairs.
    R_DIGESTS = 0x8c, Digests(v: Vec<(u64, [u8; 32])>);
    /// Who the daemon is (the answer to the handshake).
    R_VERSION = 0x8d, Version(v: VersionInfo);
    /// A member's users and its epoch.
    R_USERS = 0x8e, Users(u: UserSet);
    /// Token objects with their owners and sharing.
    R_OWNED = 0x8f, Owned(v: Vec<OwnedObject>);
    /// A page of a member's audit log.
    R_AUDIT = 0x90, Audit(a: AuditLog);
    /// A piece of a larger answer, and the whole's length (a backup image).
    R_CHUNK = 0x91, Chunk(total: u64, b: Vec<u8>);
    /// A cluster's id.
    R_CLUSTER_ID = 0x92, ClusterId(id: [u8; 16]);
}

/// The protocol this build speaks: the set of messages and their bodies (the frame header's
/// version byte is the framing's). Raised whenever a message changes.
pub const PROTOCOL: u32 = 5;

/// What a daemon says of itself in the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// The daemon and its version (`hsmpool-hsmd 0.1.0`).
    pub daemon: String,
    /// The protocol it speaks ([`PROTOCOL`]).
    pub protocol: u32,
    /// What its member can do beyond the contract ([`VersionInfo::REPLICATION`], ...).
    pub capabilities: u64,
}

impl VersionInfo {
    /// The member has the clone path (`Replication`).
    pub const REPLICATION: u64 = 1;
    /// The daemon takes `Fault` requests (it runs with `--fault-seed`).
    pub const FAULTS: u64 = 1 << 1;
    /// The member keeps users in step with the cluster (`Users`).
    pub const USERS: u64 = 1 << 2;
    /// The member keeps an audit log (`Audit`).
    pub const AUDIT: u64 = 1 << 3;
}

impl Field for VersionInfo {
    fn put(&self, w: &mut Writer) -> Result<()> {
        self.daemon.put(w)?;
        w.u32(self.protocol)?;
        w.u64(self.capabilities)
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        Ok(VersionInfo {
            daemon: String::take(r)?,
            protocol: r.u32()?,
            capabilities: r.u64()?,
        })
    }
}

/// The last response kind (for the tests' unknown-kind checks).
pub const LAST_RESPONSE: u8 = {
    let mut i = 0;
    let mut max = 0;
    while i < response_kind::RESPONSES.len() {
        if response_kind::RESPONSES[i] > max {
            max = response_kind::RESPONSES[i];
        }
        i += 1;
    }
    max
};

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

impl Field for DaemonStats {
    fn put(&self, w: &mut Writer) -> Result<()> {
        for (_, v) in self.fields() {
            w.u64(v)?;
        }
        Ok(())
    }
    fn take(r: &mut Reader<'_>) -> Result<Self> {
        Ok(DaemonStats {
            connections_open: r.u64()?,
            connections_accepted: r.u64()?,
            handshakes_refused: r.u64()?,
            connections_dropped: r.u64()?,
            requests_served: r.u64()?,
            requests_failed: r.u64()?,
            frames_refused: r.u64()?,
            faults_injected: r.u64()?,
        })
    }
}
