//! hsmpool-wire: the protocol between the engine and `hsmpool-hsmd` (a member served behind
//! mutual TLS): one [`Request`] per call of the member contract, one [`Response`] per request.
//! It depends on the member contract (`hsmpool-member`) and nothing of any kind of HSM.
//!
//! # Rooms
//! - `request.rs` / `response.rs`: every message declared once, in a table;
//! - `codec.rs`: how each kind of value is written and read;
//! - `frame.rs`: the frame header, the caps, the [`FrameReader`];
//! - [`link`]: the mutual-TLS transport; [`client`]: the daemon client (a `Backend`);
//!   [`serve`]: the daemon's dispatch onto any `Backend`.
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

#![forbid(unsafe_code)]

mod codec;
mod error;
mod frame;
pub mod link;
// Before `client`: its table macro is what the client's methods are generated from.
#[macro_use]
mod request;
pub mod client;
mod response;

pub use codec::{InputKind, Secret};
pub use error::WireError;
pub use frame::{FrameReader, HEADER_LEN, MAGIC, MAX_PAYLOAD, MAX_RANDOM, VERSION};
pub use request::{
    decode_request, encode_request, request_kind, serve, Request, Served, LAST_REQUEST,
};
pub use response::{
    decode_response, encode_response, response_kind, DaemonStats, Response, VersionInfo,
    LAST_RESPONSE, PROTOCOL,
};

/// Every kind byte, requests and responses.
pub mod kind {
    pub use crate::request::request_kind::*;
    pub use crate::request::LAST_REQUEST;
    pub use crate::response::response_kind::*;
    pub use crate::response::LAST_RESPONSE;
}

#[cfg(test)]
mod tests;
