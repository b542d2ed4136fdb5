//! Every request, declared once.
//!
//! Each entry of the table below says, in one place: the kind byte, the request and its body
//! fields in wire order, what the daemon does with it (`serve`: a call of the member contract,
//! or `admin`: answered by the daemon itself), and for a member call, the client method that
//! sends it and how it reads the answer. From it [`requests!`] generates the [`Request`] enum,
//! its kind bytes and names, the encoder and decoder, [`serve`] (the daemon's dispatch onto any
//! [`Backend`]); `client.rs` hands the same table to its own generator for the client's
//! `Backend` / `Replication` methods, so this file names nothing of the client.
//!
//! So a new member request is one entry here, its method on the trait (`hsmpool-member`), and
//! its implementation in each member kind that has it.

use cryptoki_sys::CK_ATTRIBUTE_TYPE;
use hsmpool_member::backend::{audit, backup, replication, users};
use hsmpool_member::types::{Attr, Mechanism};
use hsmpool_member::{
    Approval, Backend, KeyService, MemberObject, MemberResult, MemberSession, Role, UserChange,
};
use zeroize::Zeroizing;

use crate::codec::{Field, InputKind, Reader, Secret, Writer};
use crate::error::{Result, WireError};
use crate::frame::MAX_RANDOM;
use crate::response::Response;

/// Generates the request side of the protocol from the table (see the module documentation).
/// An entry:
/// ```text
/// /// What it is.
/// KIND = 0xNN, Name { field: Type, ... }   // body fields in wire order (none: no braces)
///     check { ... }                          // optional: refuse a decoded body (fields bound)
///     => serve |b| <MemberResult<Response>>  // the daemon calls the member contract on `b`
///     , client Trait fn method(arg: Type, ...) -> T { <the Request> } <Response pattern> => <T>;
/// KIND = 0xNN, Name { ... } => admin "why";  // the daemon answers it itself
/// ```
macro_rules! requests {
    ($(
        $(#[doc = $doc:literal])*
        $KIND:ident = $code:literal, $name:ident $({ $($f:ident : $t:ty),* $(,)? })?
        $(check $check:block)?
        => $(admin $why:literal)? $(serve |$b:ident| $serve:expr)?
        $(, client $tr:ident fn $m:ident($($a:ident : $at:ty),* $(,)?) -> $ret:ty
            $make:block $rpat:pat => $rval:expr)?
        ;
    )*) => {
        /// One call of the member contract, or one daemon administration request (sessions
        /// and objects are the member's own handles).
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Request {
            $(
                $(#[doc = $doc])*
                $name $({ $(#[allow(missing_docs)] $f: $t),* })?,
            )*
        }

        /// Request kind bytes (below 0x80).
        pub mod request_kind {
            $(
                #[doc = concat!("`", stringify!($name), "`.")]
                pub const $KIND: u8 = $code;
            )*
            /// Every request kind, in table order.
            pub const REQUESTS: &[u8] = &[$($code),*];
        }

        impl Request {
            /// The variant's name, for logs (never the contents).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Request::$name { .. } => stringify!($name),)*
                }
            }

            /// The kind byte.
            pub fn kind(&self) -> u8 {
                match self {
                    $(Request::$name { .. } => $code,)*
                }
            }

            /// Whether the daemon answers it itself (administration), not a member.
            pub fn is_admin(&self) -> bool {
                match self {
                    $(Request::$name { .. } => false $(|| { let _ = $why; true })?,)*
                }
            }
        }

        /// One whole frame (header included) carrying request `r` under `id`.
        pub fn encode_request(id: u64, r: &Request) -> Result<Vec<u8>> {
            let mut w = Writer::frame(id, r.kind());
            match r {
                $(
                    #[allow(unused_variables)]
                    Request::$name $({ $($f),* })? => {
                        $($( Field::put($f, &mut w)?; )*)?
                    }
                )*
            }
            Ok(w.finish())
        }

        /// Decode a request from a payload returned by
        /// [`FrameReader::next_frame`](crate::FrameReader::next_frame).
        pub fn decode_request(payload: &[u8]) -> Result<Request> {
            let mut r = Reader::new(payload);
            let req = match r.u8()? {
                $(
                    $code => {
                        $($( let $f = <$t as Field>::take(&mut r)?; )*)?
                        $( $check )?
                        Request::$name $({ $($f),* })?
                    }
                )*
                k => return Err(WireError::UnknownKind(k)),
            };
            r.end()?;
            Ok(req)
        }

        /// The daemon's dispatch: a member request run on `b` (its answer or the member's
        /// error); an administration request is handed back for the daemon to answer.
        pub fn serve(b: &dyn Backend, req: Request) -> Served {
            match req {
                $(
                    Request::$name $({ $($f),* })? => serve_arm!(
                        b, Request::$name $({ $($f),* })?,
                        $(serve $b $serve)? $(admin $why)?
                    ),
                )*
            }
        }

    };
}

/// One arm of [`serve`]: a member call, or the request handed back.
macro_rules! serve_arm {
    ($backend:ident, $rebuild:expr, serve $b:ident $serve:expr) => {{
        let $b = $backend;
        Served::Answer(answer(move || $serve))
    }};
    ($backend:ident, $rebuild:expr, admin $why:literal) => {
        Served::Admin($rebuild)
    };
}

/// What [`serve`] made of a request.
#[derive(Debug)]
pub enum Served {
    /// A member request, run: its answer, or the member's error.
    Answer(MemberResult<Response>),
    /// An administration request, for the daemon to answer itself.
    Admin(Request),
}

/// Runs one arm's call (a function, so that `?` in a table entry returns from the arm).
fn answer(f: impl FnOnce() -> MemberResult<Response>) -> MemberResult<Response> {
    f()
}

/// A member session on the wire.
fn sess(session: u64) -> MemberSession {
    MemberSession(session)
}

/// A member object on the wire.
fn mo(object: u64) -> MemberObject {
    MemberObject(object)
}

/// The table: every request, once. `request_table!(gen)` hands it to the generator `gen`:
/// [`requests!`] here (the enum, kind bytes, names, codec and dispatch) and `client_methods!`
/// in `client.rs` (the client's `Backend` and `Replication` methods).
#[rustfmt::skip]
macro_rules! request_table {
    ($gen:ident) => {
        $gen! {
            /// Liveness check; answered with [`Response::Ok`].
            PING = 0x01, Ping
                => serve |b| b.ping().map(|()| Response::Ok),
                client Backend fn ping() -> () { Request::Ping } Response::Ok => ();
            /// `open_session` → [`Response::Handle`].
            OPEN_SESSION = 0x02, OpenSession
                => serve |b| b.open_session().map(|s| Response::Handle(s.0)),
                client Backend fn open_session() -> MemberSession { Request::OpenSession }
                    Response::Handle(h) => MemberSession(h);
            /// `close_session` → [`Response::Ok`] (the client's is in `client.rs`: it cannot fail).
            CLOSE_SESSION = 0x03, CloseSession { session: u64 }
                => serve |b| { b.close_session(sess(session)); Ok(Response::Ok) };
            /// `login` → [`Response::Ok`]; `username` is given by `C_LoginUser`.
            LOGIN = 0x04, Login { session: u64, role: Role, pin: Secret, username: Option<String> }
                => serve |b| b.login(sess(session), role, &pin, username.as_deref()).map(|()| Response::Ok),
                client Backend fn login(s: MemberSession, role: Role, pin: &[u8], username: Option<&str>) -> () {
                    Request::Login { session: s.0, role, pin: Secret::from_slice(pin), username: username.map(str::to_owned) }
                } Response::Ok => ();
            /// `logout` → [`Response::Ok`].
            LOGOUT = 0x05, Logout { session: u64 }
                => serve |b| b.logout(sess(session)).map(|()| Response::Ok),
                client Backend fn logout(s: MemberSession) -> () { Request::Logout { session: s.0 } }
                    Response::Ok => ();
            /// `init_token` → [`Response::Ok`].
            INIT_TOKEN = 0x06, InitToken { so_pin: Secret, label: [u8; 32] }
                => serve |b| b.init_token(&so_pin, &label).map(|()| Response::Ok),
                client Backend fn init_token(so_pin: &[u8], label: &[u8; 32]) -> () {
                    Request::InitToken { so_pin: Secret::from_slice(so_pin), label: *label }
                } Response::Ok => ();
            /// `init_pin` → [`Response::Ok`].
            INIT_PIN = 0x07, InitPin { session: u64, pin: Secret }
                => serve |b| b.init_pin(sess(session), &pin).map(|()| Response::Ok),
                client Backend fn init_pin(s: MemberSession, pin: &[u8]) -> () {
                    Request::InitPin { session: s.0, pin: Secret::from_slice(pin) }
                } Response::Ok => ();
            /// `set_pin` → [`Response::Ok`].
            SET_PIN = 0x08, SetPin { session: u64, old: Secret, new: Secret }
                => serve |b| b.set_pin(sess(session), &old, &new).map(|()| Response::Ok),
                client Backend fn set_pin(s: MemberSession, old: &[u8], new: &[u8]) -> () {
                    Request::SetPin { session: s.0, old: Secret::from_slice(old), new: Secret::from_slice(new) }
                } Response::Ok => ();
            /// `token_status` → [`Response::TokenStatus`].
            TOKEN_STATUS = 0x09, TokenStatus
                => serve |b| b.token_status().map(Response::TokenStatus),
                client Backend fn token_status() -> TokenStatus { Request::TokenStatus }
                    Response::TokenStatus(t) => t;
            /// `create_object` → [`Response::Handle`].
            CREATE_OBJECT = 0x0a, CreateObject { session: u64, template: Vec<Attr> }
                => serve |b| b.create_object(sess(session), &template).map(|o| Response::Handle(o.0)),
                client Backend fn create_object(s: MemberSession, template: &[Attr]) -> MemberObject {
                    Request::CreateObject { session: s.0, template: template.to_vec() }
                } Response::Handle(h) => MemberObject(h);
            /// `copy_object` → [`Response::Handle`].
            COPY_OBJECT = 0x0b, CopyObject { session: u64, object: u64, template: Vec<Attr> }
                => serve |b| b.copy_object(sess(session), mo(object), &template).map(|o| Response::Handle(o.0)),
                client Backend fn copy_object(s: MemberSession, o: MemberObject, template: &[Attr]) -> MemberObject {
                    Request::CopyObject { session: s.0, object: o.0, template: template.to_vec() }
                } Response::Handle(h) => MemberObject(h);
            /// `destroy_object` → [`Response::Ok`].
            DESTROY_OBJECT = 0x0c, DestroyObject { session: u64, object: u64 }
                => serve |b| b.destroy_object(sess(session), mo(object)).map(|()| Response::Ok),
                client Backend fn destroy_object(s: MemberSession, o: MemberObject) -> () {
                    Request::DestroyObject { session: s.0, object: o.0 }
                } Response::Ok => ();
            /// `get_attributes` → [`Response::Attributes`].
            GET_ATTRIBUTES = 0x0d, GetAttributes { session: u64, object: u64, types: Vec<CK_ATTRIBUTE_TYPE> }
                => serve |b| b.get_attributes(sess(session), mo(object), &types).map(Response::Attributes),
                client Backend fn get_attributes(s: MemberSession, o: MemberObject, types: &[CK_ATTRIBUTE_TYPE]) -> Vec<AttrAnswer> {
                    Request::GetAttributes { session: s.0, object: o.0, types: types.to_vec() }
                } Response::Attributes(a) => a;
            /// `set_attributes` → [`Response::Ok`].
            SET_ATTRIBUTES = 0x0e, SetAttributes { session: u64, object: u64, template: Vec<Attr> }
                => serve |b| b.set_attributes(sess(session), mo(object), &template).map(|()| Response::Ok),
                client Backend fn set_attributes(s: MemberSession, o: MemberObject, template: &[Attr]) -> () {
                    Request::SetAttributes { session: s.0, object: o.0, template: template.to_vec() }
                } Response::Ok => ();
            /// `object_size` → [`Response::Size`].
            OBJECT_SIZE = 0x0f, ObjectSize { session: u64, object: u64 }
                => serve |b| b.object_size(sess(session), mo(object)).map(Response::Size),
                client Backend fn object_size(s: MemberSession, o: MemberObject) -> u64 {
                    Request::ObjectSize { session: s.0, object: o.0 }
                } Response::Size(n) => n;
            /// `find` → [`Response::Handles`].
            FIND = 0x10, Find { session: u64, template: Vec<Attr> }
                => serve |b| b.find(sess(session), &template).map(|v| Response::Handles(v.into_iter().map(|o| o.0).collect())),
                client Backend fn find(s: MemberSession, template: &[Attr]) -> Vec<MemberObject> {
                    Request::Find { session: s.0, template: template.to_vec() }
                } Response::Handles(v) => v.into_iter().map(MemberObject).collect();
            /// `key_meta` → [`Response::KeyMeta`].
            KEY_META = 0x11, KeyMeta { session: u64, object: u64 }
                => serve |b| b.key_meta(sess(session), mo(object)).map(Response::KeyMeta),
                client Backend fn key_meta(s: MemberSession, o: MemberObject) -> KeyMeta {
                    Request::KeyMeta { session: s.0, object: o.0 }
                } Response::KeyMeta(m) => m;
            /// `check_key` → [`Response::KeyMeta`].
            CHECK_KEY = 0x12, CheckKey { session: u64, usage: CK_ATTRIBUTE_TYPE, mech: Mechanism, object: u64 }
                => serve |b| b.check_key(sess(session), usage, &mech, mo(object)).map(Response::KeyMeta),
                client Backend fn check_key(s: MemberSession, usage: CK_ATTRIBUTE_TYPE, mech: &Mechanism, o: MemberObject) -> KeyMeta {
                    Request::CheckKey { session: s.0, usage, mech: mech.clone(), object: o.0 }
                } Response::KeyMeta(m) => m;
            /// `generate_key` → [`Response::Handle`].
            GENERATE_KEY = 0x13, GenerateKey { session: u64, mech: Mechanism, template: Vec<Attr> }
                => serve |b| b.generate_key(sess(session), &mech, &template).map(|o| Response::Handle(o.0)),
                client Backend fn generate_key(s: MemberSession, mech: &Mechanism, template: &[Attr]) -> MemberObject {
                    Request::GenerateKey { session: s.0, mech: mech.clone(), template: template.to_vec() }
                } Response::Handle(h) => MemberObject(h);
            /// `generate_key_pair` → [`Response::KeyPair`].
            GENERATE_KEY_PAIR = 0x14, GenerateKeyPair { session: u64, mech: Mechanism, public: Vec<Attr>, private: Vec<Attr> }
                => serve |b| b.generate_key_pair(sess(session), &mech, &public, &private)
                    .map(|(p, k)| Response::KeyPair(p.0, k.0)),
                client Backend fn generate_key_pair(s: MemberSession, mech: &Mechanism, public: &[Attr], private: &[Attr]) -> (MemberObject, MemberObject) {
                    Request::GenerateKeyPair { session: s.0, mech: mech.clone(), public: public.to_vec(), private: private.to_vec() }
                } Response::KeyPair(p, k) => (MemberObject(p), MemberObject(k));
            /// `wrap_key` → [`Response::Bytes`].
            WRAP_KEY = 0x15, WrapKey { session: u64, mech: Mechanism, wrapping: u64, key: u64 }
                => serve |b| b.wrap_key(sess(session), &mech, mo(wrapping), mo(key)).map(Response::Bytes),
                client Backend fn wrap_key(s: MemberSession, mech: &Mechanism, wrapping: MemberObject, key: MemberObject) -> Vec<u8> {
                    Request::WrapKey { session: s.0, mech: mech.clone(), wrapping: wrapping.0, key: key.0 }
                } Response::Bytes(b) => b;
            /// `unwrap_key` → [`Response::Handle`].
            UNWRAP_KEY = 0x16, UnwrapKey { session: u64, mech: Mechanism, unwrapping: u64, wrapped: Vec<u8>, template: Vec<Attr> }
                => serve |b| b.unwrap_key(sess(session), &mech, mo(unwrapping), &wrapped, &template)
                    .map(|o| Response::Handle(o.0)),
                client Backend fn unwrap_key(s: MemberSession, mech: &Mechanism, unwrapping: MemberObject, wrapped: &[u8], template: &[Attr]) -> MemberObject {
                    Request::UnwrapKey { session: s.0, mech: mech.clone(), unwrapping: unwrapping.0, wrapped: wrapped.to_vec(), template: template.to_vec() }
                } Response::Handle(h) => MemberObject(h);
            /// `derive_key` → [`Response::Handle`].
            DERIVE_KEY = 0x17, DeriveKey { session: u64, mech: Mechanism, base: u64, template: Vec<Attr> }
                => serve |b| b.derive_key(sess(session), &mech, mo(base), &template).map(|o| Response::Handle(o.0)),
                client Backend fn derive_key(s: MemberSession, mech: &Mechanism, base: MemberObject, template: &[Attr]) -> MemberObject {
                    Request::DeriveKey { session: s.0, mech: mech.clone(), base: base.0, template: template.to_vec() }
                } Response::Handle(h) => MemberObject(h);
            /// `sign` → [`Response::Bytes`]; `input` says whether `data` is the message or its digest.
            SIGN = 0x18, Sign { session: u64, mech: Mechanism, key: u64, input: InputKind, data: Vec<u8> }
                => serve |b| b.sign(sess(session), &mech, mo(key), input.with(&data)).map(Response::Bytes),
                client Backend fn sign(s: MemberSession, mech: &Mechanism, key: MemberObject, input: SignInput<'_>) -> Vec<u8> {
                    let (input, data) = InputKind::split(input);
                    Request::Sign { session: s.0, mech: mech.clone(), key: key.0, input, data: data.to_vec() }
                } Response::Bytes(b) => b;
            /// `verify` → [`Response::Ok`].
            VERIFY = 0x19, Verify { session: u64, mech: Mechanism, key: u64, input: InputKind, data: Vec<u8>, signature: Vec<u8> }
                => serve |b| b.verify(sess(session), &mech, mo(key), input.with(&data), &signature).map(|()| Response::Ok),
                client Backend fn verify(s: MemberSession, mech: &Mechanism, key: MemberObject, input: SignInput<'_>, signature: &[u8]) -> () {
                    let (input, data) = InputKind::split(input);
                    Request::Verify { session: s.0, mech: mech.clone(), key: key.0, input, data: data.to_vec(), signature: signature.to_vec() }
                } Response::Ok => ();
            /// `encrypt` → [`Response::Bytes`] (the plaintext travels as a [`Secret`]).
            ENCRYPT = 0x1a, Encrypt { session: u64, mech: Mechanism, key: u64, data: Secret }
                => serve |b| b.encrypt(sess(session), &mech, mo(key), &data).map(Response::Bytes),
                client Backend fn encrypt(s: MemberSession, mech: &Mechanism, key: MemberObject, data: &[u8]) -> Vec<u8> {
                    Request::Encrypt { session: s.0, mech: mech.clone(), key: key.0, data: Secret::from_slice(data) }
                } Response::Bytes(b) => b;
            /// `decrypt` → [`Response::Secret`].
            DECRYPT = 0x1b, Decrypt { session: u64, mech: Mechanism, key: u64, data: Vec<u8> }
                => serve |b| b.decrypt(sess(session), &mech, mo(key), &data).map(|p| Response::Secret(Secret(p))),
                client Backend fn decrypt(s: MemberSession, mech: &Mechanism, key: MemberObject, data: &[u8]) -> Zeroizing<Vec<u8>> {
                    Request::Decrypt { session: s.0, mech: mech.clone(), key: key.0, data: data.to_vec() }
                } Response::Secret(p) => p.into_inner();
            /// `secret_value_for_digest` → [`Response::Secret`].
            SECRET_VALUE_FOR_DIGEST = 0x1c, SecretValueForDigest { session: u64, key: u64 }
                => serve |b| b.secret_value_for_digest(sess(session), mo(key)).map(|v| Response::Secret(Secret(v))),
                client Backend fn secret_value_for_digest(s: MemberSession, key: MemberObject) -> Zeroizing<Vec<u8>> {
                    Request::SecretValueForDigest { session: s.0, key: key.0 }
                } Response::Secret(v) => v.into_inner();
            /// `random` → [`Response::Secret`] of `len` bytes, at most [`MAX_RANDOM`] (the client,
            /// in `client.rs`, asks in pieces).
            RANDOM = 0x1d, Random { len: u32 }
                check {
                    if len > MAX_RANDOM {
                        return Err(WireError::Malformed("random length over MAX_RANDOM"));
                    }
                }
                => serve |b| {
                    let mut out = Zeroizing::new(vec![0u8; len as usize]);
                    b.random(&mut out).map(|()| Response::Secret(Secret(out)))
                };
            /// Daemon administration: apply one fault verb (`crash`, `delay 5ms`, ...: the syntax of
            /// the simulator's `FaultVerb`) → [`Response::Ok`].
            FAULT = 0x1e, Fault { verb: String } => admin "a fault is applied by the daemon, not a member";
            /// Daemon administration: its counters → [`Response::Stats`].
            STATS = 0x1f, Stats => admin "the daemon's own counters";
            /// `export_clone` → [`Response::Bytes`].
            EXPORT_CLONE = 0x20, ExportClone { session: u64, object: u64 }
                => serve |b| replication(b)?.export_clone(sess(session), mo(object)).map(Response::Bytes),
                client Replication fn export_clone(s: MemberSession, o: MemberObject) -> Vec<u8> {
                    Request::ExportClone { session: s.0, object: o.0 }
                } Response::Bytes(b) => b;
            /// `import_clone` → [`Response::Handle`].
            IMPORT_CLONE = 0x21, ImportClone { session: u64, blob: Vec<u8> }
                => serve |b| replication(b)?.import_clone(sess(session), &blob).map(|o| Response::Handle(o.0)),
                client Replication fn import_clone(s: MemberSession, blob: &[u8]) -> MemberObject {
                    Request::ImportClone { session: s.0, blob: blob.to_vec() }
                } Response::Handle(h) => MemberObject(h);
            /// `object_digests`: (object, digest) of every token object → [`Response::Digests`].
            OBJECT_DIGESTS = 0x22, ObjectDigests { session: u64 }
                => serve |b| replication(b)?.object_digests(sess(session))
                    .map(|v| Response::Digests(v.into_iter().map(|(o, d)| (o.0, d)).collect())),
                client Replication fn object_digests(s: MemberSession) -> Vec<(MemberObject, [u8; 32])> {
                    Request::ObjectDigests { session: s.0 }
                } Response::Digests(v) => v.into_iter().map(|(o, d)| (MemberObject(o), d)).collect();
            /// The handshake, first on every connection: the client's protocol → [`Response::Version`]
            /// (the daemon's name and version, protocol and capabilities); refused with
            /// `Err(CKR_DEVICE_ERROR)` by a daemon that speaks another protocol.
            VERSION = 0x24, Version { protocol: u32 } => admin "who the daemon is, not a member call";
            /// `drop_replica` → [`Response::Ok`].
            DROP_REPLICA = 0x23, DropReplica { session: u64, object: u64 }
                => serve |b| replication(b)?.drop_replica(sess(session), mo(object)).map(|()| Response::Ok),
                client Replication fn drop_replica(s: MemberSession, o: MemberObject) -> () {
                    Request::DropReplica { session: s.0, object: o.0 }
                } Response::Ok => ();
            /// `user_states`: every user record and the epoch → [`Response::Users`].
            USER_STATES = 0x25, UserStates { session: u64 }
                => serve |b| users(b)?.user_states(sess(session)).map(Response::Users),
                client Users fn user_states(s: MemberSession) -> UserSet {
                    Request::UserStates { session: s.0 }
                } Response::Users(u) => u;
            /// `export_user` → [`Response::Bytes`] (a blob sealed under the clone key).
            EXPORT_USER = 0x26, ExportUser { session: u64, name: String }
                => serve |b| users(b)?.export_user(sess(session), &name).map(Response::Bytes),
                client Users fn export_user(s: MemberSession, name: &str) -> Vec<u8> {
                    Request::ExportUser { session: s.0, name: name.to_owned() }
                } Response::Bytes(b) => b;
            /// `import_user` → [`Response::Ok`].
            IMPORT_USER = 0x27, ImportUser { session: u64, blob: Vec<u8> }
                => serve |b| users(b)?.import_user(sess(session), &blob).map(|()| Response::Ok),
                client Users fn import_user(s: MemberSession, blob: &[u8]) -> () {
                    Request::ImportUser { session: s.0, blob: blob.to_vec() }
                } Response::Ok => ();
            /// `change_user` → [`Response::Ok`] (a password travels as a [`Secret`]).
            CHANGE_USER = 0x28, ChangeUser { session: u64, change: UserChange, approval: Approval }
                => serve |b| users(b)?.change_user(sess(session), &change, &approval).map(|()| Response::Ok),
                client Users fn change_user(s: MemberSession, change: &UserChange, approval: &Approval) -> () {
                    Request::ChangeUser { session: s.0, change: change.clone(), approval: approval.clone() }
                } Response::Ok => ();
            /// `quorum_token` → [`Response::Bytes`].
            QUORUM_TOKEN = 0x2c, QuorumToken { session: u64, change: UserChange }
                => serve |b| users(b)?.quorum_token(sess(session), &change).map(Response::Bytes),
                client Users fn quorum_token(s: MemberSession, change: &UserChange) -> Vec<u8> {
                    Request::QuorumToken { session: s.0, change: change.clone() }
                } Response::Bytes(b) => b;
            /// `share_object` → [`Response::Ok`].
            SHARE_OBJECT = 0x29, ShareObject { session: u64, object: u64, user: String, share: bool }
                => serve |b| users(b)?.share_object(sess(session), mo(object), &user, share).map(|()| Response::Ok),
                client Users fn share_object(s: MemberSession, o: MemberObject, user: &str, share: bool) -> () {
                    Request::ShareObject { session: s.0, object: o.0, user: user.to_owned(), share }
                } Response::Ok => ();
            /// `audit_log`: a page of the member's audit log → [`Response::Audit`].
            AUDIT_LOG = 0x2b, AuditLog { session: u64, from: u64, limit: u32 }
                => serve |b| audit(b)?.audit_log(sess(session), from, limit).map(Response::Audit),
                client Audit fn audit_log(s: MemberSession, from: u64, limit: u32) -> AuditLog {
                    Request::AuditLog { session: s.0, from, limit }
                } Response::Audit(a) => a;
            /// `owned_objects` → [`Response::Owned`].
            OWNED_OBJECTS = 0x2a, OwnedObjects { session: u64, owner: Option<String> }
                => serve |b| users(b)?.owned_objects(sess(session), owner.as_deref()).map(Response::Owned),
                client Users fn owned_objects(s: MemberSession, owner: Option<&str>) -> Vec<OwnedObject> {
                    Request::OwnedObjects { session: s.0, owner: owner.map(str::to_owned) }
                } Response::Owned(v) => v;
            /// `set_key_quorum` → [`Response::Ok`].
            SET_KEY_QUORUM = 0x2d, SetKeyQuorum { session: u64, object: u64, service: KeyService, m: u32 }
                => serve |b| users(b)?.set_key_quorum(sess(session), mo(object), service, m).map(|()| Response::Ok),
                client Users fn set_key_quorum(s: MemberSession, o: MemberObject, service: KeyService, m: u32) -> () {
                    Request::SetKeyQuorum { session: s.0, object: o.0, service, m }
                } Response::Ok => ();
            /// `key_quorum_token` → [`Response::Bytes`].
            KEY_QUORUM_TOKEN = 0x2e, KeyQuorumToken { session: u64, object: u64, service: KeyService }
                => serve |b| users(b)?.key_quorum_token(sess(session), mo(object), service).map(Response::Bytes),
                client Users fn key_quorum_token(s: MemberSession, o: MemberObject, service: KeyService) -> Vec<u8> {
                    Request::KeyQuorumToken { session: s.0, object: o.0, service }
                } Response::Bytes(b) => b;
            /// `approve_key` → [`Response::Ok`].
            APPROVE_KEY = 0x2f, ApproveKey { session: u64, object: u64, approval: Approval }
                => serve |b| users(b)?.approve_key(sess(session), mo(object), &approval).map(|()| Response::Ok),
                client Users fn approve_key(s: MemberSession, o: MemberObject, approval: &Approval) -> () {
                    Request::ApproveKey { session: s.0, object: o.0, approval: approval.clone() }
                } Response::Ok => ();
            /// `export_backup`: a piece of a backup image → [`Response::Chunk`].
            EXPORT_BACKUP = 0x30, ExportBackup { session: u64, id: String, created_ms: u64, offset: u64 }
                => serve |b| backup(b)?.export_backup(sess(session), &id, created_ms, offset)
                    .map(|(total, bytes)| Response::Chunk(total, bytes)),
                client Backup fn export_backup(s: MemberSession, id: &str, created_ms: u64, offset: u64) -> (u64, Vec<u8>) {
                    Request::ExportBackup { session: s.0, id: id.to_owned(), created_ms, offset }
                } Response::Chunk(total, bytes) => (total, bytes);
            /// `cluster_id` → [`Response::ClusterId`].
            CLUSTER_ID = 0x31, ClusterId { session: u64 }
                => serve |b| backup(b)?.cluster_id(sess(session)).map(Response::ClusterId),
                client Backup fn cluster_id(s: MemberSession) -> [u8; 16] {
                    Request::ClusterId { session: s.0 }
                } Response::ClusterId(id) => id;
        }
    };
}

request_table!(requests);

/// The kind of every request, and the last one (for the tests' unknown-kind checks).
pub const LAST_REQUEST: u8 = {
    let mut i = 0;
    let mut max = 0;
    while i < request_kind::REQUESTS.len() {
        if request_kind::REQUESTS[i] > max {
            max = request_kind::REQUESTS[i];
        }
        i += 1;
    }
    max
};
