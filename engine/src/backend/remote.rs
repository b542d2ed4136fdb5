//! The daemon backend: a member that is an `hsmpool-hsmd` process, reached over mutual TLS 1.3
//! with the [`hsmpool_sim::wire`] protocol.
//!
//! # Connections
//! A [`Remote`] keeps a small fixed number of TLS connections to its daemon (`connections`,
//! default 4) and any number of threads share them: each call is one request frame with a
//! fresh id on a connection picked round-robin, and the connection's reader thread hands each
//! answer to the call waiting for that id (a one-slot channel per call). Sending goes through
//! the [`Link`], which keeps whole frames from different threads apart and never does socket
//! I/O under its lock (see [`hsmpool_sim::wire::link`]).
//!
//! # Trust
//! The daemon's chain must lead to the customer CA in `ca` and carry the expected name
//! (`server_name`, else the host of `address`; an IP address is matched to the certificate's
//! IP SANs); the client presents `cert` / `key`. A refused handshake is logged with the reason,
//! e.g. `server certificate not issued by the configured CA (UnknownIssuer)`.
//!
//! # Failures
//! Every failure to reach the daemon is [`Error::MemberUnreachable`] (`CKR_DEVICE_REMOVED`,
//! retryable), with the reason:
//! - **No answer in time**: a call waits at most `timeout_ms` (default 10 000); a late answer
//!   is dropped. The connection stays up (a held or slow member is not a dead one).
//! - **Connection lost** (end of stream, reset, TLS error, an answer that does not decode):
//!   every call waiting on that connection fails at once, and the connection is discarded; the
//!   next call that picks its slot connects again.
//! - **Connect failed** (refused, unreachable, handshake refused, or a connection the daemon
//!   closed before it ever answered): remembered, and for [`RECONNECT_BACKOFF`] calls that need
//!   a new connection fail at once with the same reason instead of trying again, so a dead
//!   daemon is not hammered.
//!
//! [`Remote::connect`] never fails because the daemon is down (connecting is lazy: the engine
//! sees a member that is down); only a bad configuration (address, PEM files) fails it.
//! Everything the daemon answers is carried through unchanged: a restarted daemon's
//! `CKR_SESSION_HANDLE_INVALID` for a session of its previous life is what makes the engine
//! log in again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, RecvTimeoutError, Sender};
use cryptoki_sys::CK_ATTRIBUTE_TYPE;
use dashmap::DashMap;
use hsmpool_member::types::{Attr, Mechanism, SignInput};
use hsmpool_member::{AttrAnswer, KeyMeta, Role, TokenStatus};
use hsmpool_sim::wire::link::{self, Link, LinkReader, Side};
use hsmpool_sim::wire::{
    decode_response, encode_request, InputKind, Request, Response, Secret, WireError, MAX_RANDOM,
};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use zeroize::Zeroizing;

use super::{member_error, Backend, MemberId, MemberObject, MemberSession};
use crate::config::MemberConfig;
use crate::error::{Error, Result};

/// Connections per member unless configured.
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Longest wait for one answer unless configured, ms.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// After a failed connect, how long calls needing a new connection fail without trying.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);

/// How to reach one daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `host:port`.
    pub address: String,
    /// The customer CA certificate (PEM) the daemon's chain must lead to.
    pub ca: PathBuf,
    /// This client's certificate chain (PEM).
    pub cert: PathBuf,
    /// This client's private key (PKCS #8 PEM).
    pub key: PathBuf,
    /// The name the daemon's certificate must carry; `None`: the host of `address`.
    pub server_name: Option<String>,
    /// TLS connections to keep.
    pub connections: usize,
    /// Longest wait for one answer, ms.
    pub timeout_ms: u64,
}

impl RemoteConfig {
    /// A configuration with the default connection count and timeout.
    pub fn new(
        address: impl Into<String>,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        RemoteConfig {
            address: address.into(),
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            server_name: None,
            connections: DEFAULT_CONNECTIONS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    /// From a `kind = "daemon"` member of the configuration file (already validated by
    /// [`crate::config::Config::parse`]; a missing key is still an error here, not a panic).
    pub fn from_member(m: &MemberConfig) -> Result<Self> {
        let need = |v: &Option<PathBuf>, key: &str| {
            v.clone()
                .ok_or_else(|| Error::Config(format!("daemon member: {key} is required")))
        };
        let address = m
            .address
            .clone()
            .ok_or_else(|| Error::Config("daemon member: address is required".into()))?;
        Ok(RemoteConfig {
            address,
            ca: need(&m.ca, "ca")?,
            cert: need(&m.cert, "cert")?,
            key: need(&m.key, "key")?,
            server_name: m.server_name.clone(),
            connections: m.connections.unwrap_or(DEFAULT_CONNECTIONS),
            timeout_ms: m.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
        })
    }
}

/// The last failed connect: when, and why.
type LastFailure = Mutex<Option<(Instant, String)>>;

/// One TLS connection and the calls waiting on it.
///
/// # Invariants
/// `dead` goes false → true once; after it does, nothing is added to `pending` for good (a
/// call that raced it removes its own entry), and `fail` has emptied it.
struct Conn {
    member: MemberId,
    address: String,
    link: Arc<Link>,
    /// Calls waiting for an answer, by request id.
    pending: DashMap<u64, Sender<Result<Response>>>,
    dead: AtomicBool,
    /// Why it died.
    reason: Mutex<String>,
    /// Whether any answer came back on it (a connection refused right after the handshake,
    /// e.g. for our certificate, counts as a failed connect).
    answered: AtomicBool,
    /// The member's last failed connect (shared with the [`Remote`]).
    last_failure: Arc<LastFailure>,
}

impl Conn {
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    fn unreachable(&self) -> Error {
        Error::MemberUnreachable {
            member: self.member.0,
            reason: format!(
                "connection to {} lost: {}",
                self.address,
                self.reason.lock()
            ),
        }
    }

    /// The connection is gone: fail every waiting call at once. `quiet` for a deliberate close.
    fn fail(&self, reason: String, quiet: bool) {
        *self.reason.lock() = reason.clone();
        if !self.dead.swap(true, Ordering::SeqCst) && !quiet {
            tracing::warn!(
                "member {}: connection to {} lost: {reason}",
                self.member.0,
                self.address
            );
            if !self.answered.load(Ordering::SeqCst) {
                *self.last_failure.lock() = Some((Instant::now(), reason));
            }
        }
        self.link.close();
        // Keys first: removing while iterating a DashMap would deadlock on its shard.
        let ids: Vec<u64> = self.pending.iter().map(|e| *e.key()).collect();
        for id in ids {
            if let Some((_, tx)) = self.pending.remove(&id) {
                let _ = tx.send(Err(self.unreachable()));
            }
        }
    }
}

/// Hand each answer to its call until the connection ends.
fn read_loop(conn: &Conn, mut reader: LinkReader) {
    let reason = loop {
        match reader.next_frame() {
            Ok(Some((id, payload))) => match decode_response(&payload) {
                Ok(resp) => {
                    conn.answered.store(true, Ordering::SeqCst);
                    match conn.pending.remove(&id) {
                        Some((_, tx)) => {
                            let _ = tx.send(Ok(resp));
                        }
                        None => tracing::debug!(
                            member = conn.member.0,
                            id,
                            "answer came after its call gave up"
                        ),
                    }
                }
                Err(e) => break format!("undecodable answer {id}: {e}"),
            },
            Ok(None) => break "closed by the daemon".to_owned(),
            Err(e) => break link::refusal(&e, Side::Client),
        }
    };
    // A close we asked for (`Remote` dropped) is already dead: no warning then.
    conn.fail(reason, conn.is_dead());
}

/// A member that is an `hsmpool-hsmd`: see the [module documentation](self).
pub struct Remote {
    id: MemberId,
    address: String,
    name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    timeout: Duration,
    /// One slot per connection; `None` or a dead connection is (re)made by the next call.
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
    last_failure: Arc<LastFailure>,
    describe: String,
}

impl Remote {
    /// A member behind the daemon `cfg` names. Reads the PEM files now (a bad one is
    /// `Error::Config` naming it) but connects lazily: a daemon that is down does not fail this.
    pub fn connect(id: MemberId, cfg: &RemoteConfig) -> Result<Remote> {
        let config = |what: &str, m: String| {
            Error::Config(format!("member {} ({}): {what}: {m}", id.0, cfg.address))
        };
        let name = link::server_name(&cfg.address, cfg.server_name.as_deref())
            .map_err(|m| config("server_name", m))?;
        let tls = link::client_config(&cfg.ca, Some((&cfg.cert, &cfg.key)))
            .map_err(|m| config("TLS set-up", m))?;
        if cfg.connections == 0 || cfg.timeout_ms == 0 {
            return Err(config(
                "connections, timeout_ms",
                "must be at least 1".into(),
            ));
        }
        Ok(Remote {
            id,
            address: cfg.address.clone(),
            name,
            tls,
            timeout: Duration::from_millis(cfg.timeout_ms),
            slots: (0..cfg.connections).map(|_| Mutex::new(None)).collect(),
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            last_failure: Arc::new(Mutex::new(None)),
            describe: format!(
                "hsmpool-hsmd at {} (mutual TLS, {} connections)",
                cfg.address, cfg.connections
            ),
        })
    }

    fn unreachable(&self, reason: String) -> Error {
        Error::MemberUnreachable {
            member: self.id.0,
            reason,
        }
    }

    /// A live connection, round-robin, made now if its slot has none.
    fn connection(&self) -> Result<Arc<Conn>> {
        let i = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        // Held while connecting: the other callers of this slot wait for this connect (at
        // most the timeout) instead of all connecting at once.
        let mut slot = self.slots[i].lock();
        if let Some(c) = slot.as_ref().filter(|c| !c.is_dead()) {
            return Ok(Arc::clone(c));
        }
        *slot = None;
        if let Some((at, reason)) = &*self.last_failure.lock() {
            if at.elapsed() < RECONNECT_BACKOFF {
                return Err(self.unreachable(reason.clone()));
            }
        }
        match link::connect(
            &self.address,
            self.name.clone(),
            Arc::clone(&self.tls),
            self.timeout,
        ) {
            Ok((l, reader)) => {
                let conn = Arc::new(Conn {
                    member: self.id,
                    address: self.address.clone(),
                    link: l,
                    pending: DashMap::new(),
                    dead: AtomicBool::new(false),
                    reason: Mutex::new(String::new()),
                    answered: AtomicBool::new(false),
                    last_failure: Arc::clone(&self.last_failure),
                });
                let c = Arc::clone(&conn);
                std::thread::Builder::new()
                    .name(format!("hsmpool-m{}-c{i}", self.id.0))
                    .spawn(move || read_loop(&c, reader))
                    .map_err(|e| self.unreachable(format!("no reader thread: {e}")))?;
                *slot = Some(Arc::clone(&conn));
                tracing::debug!(
                    member = self.id.0,
                    slot = i,
                    "connected to {}",
                    self.address
                );
                Ok(conn)
            }
            Err(e) => {
                let reason = format!(
                    "cannot connect to {}: {}",
                    self.address,
                    link::refusal(&e, Side::Client)
                );
                let mut last = self.last_failure.lock();
                if last.is_none() {
                    tracing::warn!("member {}: {reason}", self.id.0);
                } else {
                    tracing::debug!("member {}: {reason}", self.id.0);
                }
                *last = Some((Instant::now(), reason.clone()));
                Err(self.unreachable(reason))
            }
        }
    }

    /// Send one request and wait for its answer (an `Err(CK_RV)` answer is returned as such;
    /// see [`admin_request`] for the administration requests).
    pub fn request(&self, req: &Request) -> Result<Response> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // May hold a PIN or plaintext: wiped once sent.
        let frame = Zeroizing::new(encode_request(id, req).map_err(|e| match e {
            WireError::TooLarge { .. } => Error::DataLenRange,
            other => Error::General(format!("encoding {}: {other}", req.name())),
        })?);
        let conn = self.connection()?;
        let (tx, rx) = channel::bounded(1);
        conn.pending.insert(id, tx);
        if conn.is_dead() {
            conn.pending.remove(&id);
            return Err(conn.unreachable());
        }
        if let Err(e) = conn.link.send(&frame) {
            conn.fail(format!("send failed: {e}"), false);
        }
        drop(frame);
        match rx.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                conn.pending.remove(&id);
                Err(self.unreachable(format!(
                    "no answer to {} from {} within {} ms",
                    req.name(),
                    self.address,
                    self.timeout.as_millis()
                )))
            }
            Err(RecvTimeoutError::Disconnected) => Err(conn.unreachable()),
        }
    }

    /// [`Remote::request`] with an `Err(CK_RV)` answer turned into the engine's error.
    fn call(&self, req: &Request) -> Result<Response> {
        match self.request(req)? {
            Response::Err(rv) => Err(member_error(self.id, rv)),
            r => Ok(r),
        }
    }

    fn unexpected(&self, req: &Request, resp: &Response) -> Error {
        Error::DeviceError(format!(
            "member {}: answer {} to {} makes no sense",
            self.id.0,
            resp.name(),
            req.name()
        ))
    }

    fn ok(&self, req: Request) -> Result<()> {
        match self.call(&req)? {
            Response::Ok => Ok(()),
            other => Err(self.unexpected(&req, &other)),
        }
    }

    fn handle(&self, req: Request) -> Result<MemberObject> {
        match self.call(&req)? {
            Response::Handle(h) => Ok(MemberObject(h)),
            other => Err(self.unexpected(&req, &other)),
        }
    }

    fn bytes(&self, req: Request) -> Result<Vec<u8>> {
        match self.call(&req)? {
            Response::Bytes(b) => Ok(b),
            other => Err(self.unexpected(&req, &other)),
        }
    }

    fn secret(&self, req: Request) -> Result<Zeroizing<Vec<u8>>> {
        match self.call(&req)? {
            Response::Secret(s) => Ok(s.into_inner()),
            other => Err(self.unexpected(&req, &other)),
        }
    }

    fn key_meta_of(&self, req: Request) -> Result<KeyMeta> {
        match self.call(&req)? {
            Response::KeyMeta(m) => Ok(m),
            other => Err(self.unexpected(&req, &other)),
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        for slot in &self.slots {
            if let Some(c) = slot.lock().take() {
                // Dead first, so the reader ends without a warning.
                c.dead.store(true, Ordering::SeqCst);
                c.fail("the member was shut down".into(), true);
            }
        }
    }
}

/// One administration request (`Fault`, `Stats`, or any other) to the daemon `cfg` names, on
/// a connection of its own that is closed afterwards: what `hsmpool sim` uses.
pub fn admin_request(cfg: &RemoteConfig, req: &Request) -> Result<Response> {
    let one = RemoteConfig {
        connections: 1,
        ..cfg.clone()
    };
    Remote::connect(MemberId(0), &one)?.request(req)
}

impl Backend for Remote {
    fn id(&self) -> MemberId {
        self.id
    }
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn open_session(&self) -> Result<MemberSession> {
        let req = Request::OpenSession;
        match self.call(&req)? {
            Response::Handle(h) => Ok(MemberSession(h)),
            other => Err(self.unexpected(&req, &other)),
        }
    }
    fn close_session(&self, s: MemberSession) {
        if let Err(e) = self.call(&Request::CloseSession { session: s.0 }) {
            // A daemon that is down has lost the session anyway.
            tracing::debug!(member = self.id.0, "close_session: {e}");
        }
    }
    fn login(
        &self,
        s: MemberSession,
        role: Role,
        pin: &[u8],
        username: Option<&str>,
    ) -> Result<()> {
        self.ok(Request::Login {
            session: s.0,
            role,
            pin: Secret::from_slice(pin),
            username: username.map(str::to_owned),
        })
    }
    fn logout(&self, s: MemberSession) -> Result<()> {
        self.ok(Request::Logout { session: s.0 })
    }
    fn init_token(&self, so_pin: &[u8], label: &[u8; 32]) -> Result<()> {
        self.ok(Request::InitToken {
            so_pin: Secret::from_slice(so_pin),
            label: *label,
        })
    }
    fn init_pin(&self, s: MemberSession, pin: &[u8]) -> Result<()> {
        self.ok(Request::InitPin {
            session: s.0,
            pin: Secret::from_slice(pin),
        })
    }
    fn set_pin(&self, s: MemberSession, old: &[u8], new: &[u8]) -> Result<()> {
        self.ok(Request::SetPin {
            session: s.0,
            old: Secret::from_slice(old),
            new: Secret::from_slice(new),
        })
    }
    fn token_status(&self) -> Result<TokenStatus> {
        let req = Request::TokenStatus;
        match self.call(&req)? {
            Response::TokenStatus(t) => Ok(t),
            other => Err(self.unexpected(&req, &other)),
        }
    }
    fn create_object(&self, s: MemberSession, template: &[Attr]) -> Result<MemberObject> {
        self.handle(Request::CreateObject {
            session: s.0,
            template: template.to_vec(),
        })
    }
    fn copy_object(
        &self,
        s: MemberSession,
        o: MemberObject,
        template: &[Attr],
    ) -> Result<MemberObject> {
        self.handle(Request::CopyObject {
            session: s.0,
            object: o.0,
            template: template.to_vec(),
        })
    }
    fn destroy_object(&self, s: MemberSession, o: MemberObject) -> Result<()> {
        self.ok(Request::DestroyObject {
            session: s.0,
            object: o.0,
        })
    }
    fn get_attributes(
        &self,
        s: MemberSession,
        o: MemberObject,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttrAnswer>> {
        let req = Request::GetAttributes {
            session: s.0,
            object: o.0,
            types: types.to_vec(),
        };
        match self.call(&req)? {
            Response::Attributes(a) if a.len() == types.len() => Ok(a),
            other => Err(self.unexpected(&req, &other)),
        }
    }
    fn set_attributes(&self, s: MemberSession, o: MemberObject, template: &[Attr]) -> Result<()> {
        self.ok(Request::SetAttributes {
            session: s.0,
            object: o.0,
            template: template.to_vec(),
        })
    }
    fn object_size(&self, s: MemberSession, o: MemberObject) -> Result<u64> {
        let req = Request::ObjectSize {
            session: s.0,
            object: o.0,
        };
        match self.call(&req)? {
            Response::Size(n) => Ok(n),
            other => Err(self.unexpected(&req, &other)),
        }
    }
    fn find(&self, s: MemberSession, template: &[Attr]) -> Result<Vec<MemberObject>> {
        let req = Request::Find {
            session: s.0,
            template: template.to_vec(),
        };
        match self.call(&req)? {
            Response::Handles(v) => Ok(v.into_iter().map(MemberObject).collect()),
            other => Err(self.unexpected(&req, &other)),
        }
    }
    fn key_meta(&self, s: MemberSession, o: MemberObject) -> Result<KeyMeta> {
        self.key_meta_of(Request::KeyMeta {
            session: s.0,
            object: o.0,
        })
    }
    fn check_key(
        &self,
        s: MemberSession,
        usage: CK_ATTRIBUTE_TYPE,
        mech: &Mechanism,
        o: MemberObject,
    ) -> Result<KeyMeta> {
        self.key_meta_of(Request::CheckKey {
            session: s.0,
            usage,
            mech: mech.clone(),
            object: o.0,
        })
    }
    fn generate_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        template: &[Attr],
    ) -> Result<MemberObject> {
        self.handle(Request::GenerateKey {
            session: s.0,
            mech: mech.clone(),
            template: template.to_vec(),
        })
    }
    fn generate_key_pair(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        public: &[Attr],
        private: &[Attr],
    ) -> Result<(MemberObject, MemberObject)> {
        let req = Request::GenerateKeyPair {
            session: s.0,
            mech: mech.clone(),
            public: public.to_vec(),
            private: private.to_vec(),
        };
        match self.call(&req)? {
            Response::KeyPair(p, k) => Ok((MemberObject(p), MemberObject(k))),
            other => Err(self.unexpected(&req, &other)),
        }
    }
    fn wrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        wrapping: MemberObject,
        key: MemberObject,
    ) -> Result<Vec<u8>> {
        self.bytes(Request::WrapKey {
            session: s.0,
            mech: mech.clone(),
            wrapping: wrapping.0,
            key: key.0,
        })
    }
    fn unwrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        unwrapping: MemberObject,
        wrapped: &[u8],
        template: &[Attr],
    ) -> Result<MemberObject> {
        self.handle(Request::UnwrapKey {
            session: s.0,
            mech: mech.clone(),
            unwrapping: unwrapping.0,
            wrapped: wrapped.to_vec(),
            template: template.to_vec(),
        })
    }
    fn derive_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        base: MemberObject,
        template: &[Attr],
    ) -> Result<MemberObject> {
        self.handle(Request::DeriveKey {
            session: s.0,
            mech: mech.clone(),
            base: base.0,
            template: template.to_vec(),
        })
    }
    fn sign(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
    ) -> Result<Vec<u8>> {
        let (kind, data) = InputKind::split(input);
        self.bytes(Request::Sign {
            session: s.0,
            mech: mech.clone(),
            key: key.0,
            input: kind,
            data: data.to_vec(),
        })
    }
    fn verify(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
        signature: &[u8],
    ) -> Result<()> {
        let (kind, data) = InputKind::split(input);
        self.ok(Request::Verify {
            session: s.0,
            mech: mech.clone(),
            key: key.0,
            input: kind,
            data: data.to_vec(),
            signature: signature.to_vec(),
        })
    }
    fn encrypt(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> Result<Vec<u8>> {
        self.bytes(Request::Encrypt {
            session: s.0,
            mech: mech.clone(),
            key: key.0,
            data: Secret::from_slice(data),
        })
    }
    fn decrypt(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.secret(Request::Decrypt {
            session: s.0,
            mech: mech.clone(),
            key: key.0,
            data: data.to_vec(),
        })
    }
    fn secret_for_digest(&self, s: MemberSession, key: MemberObject) -> Result<Zeroizing<Vec<u8>>> {
        self.secret(Request::SecretForDigest {
            session: s.0,
            key: key.0,
        })
    }
    fn random(&self, out: &mut [u8]) -> Result<()> {
        // One frame carries at most MAX_RANDOM bytes: ask in pieces.
        for chunk in out.chunks_mut(MAX_RANDOM as usize) {
            let len = u32::try_from(chunk.len()).map_err(|_| Error::DataLenRange)?;
            let req = Request::Random { len };
            let bytes = self.secret(req.clone())?;
            if bytes.len() != chunk.len() {
                return Err(self.unexpected(&req, &Response::Secret(Secret::default())));
            }
            chunk.copy_from_slice(&bytes);
        }
        Ok(())
    }
    fn ping(&self) -> Result<()> {
        self.ok(Request::Ping)
    }
    fn export_clone(&self, s: MemberSession, o: MemberObject) -> Result<Vec<u8>> {
        self.bytes(Request::ExportClone {
            session: s.0,
            object: o.0,
        })
    }
    fn import_clone(&self, s: MemberSession, blob: &[u8]) -> Result<MemberObject> {
        self.handle(Request::ImportClone {
            session: s.0,
            blob: blob.to_vec(),
        })
    }
    fn object_digests(&self, s: MemberSession) -> Result<Vec<(MemberObject, [u8; 32])>> {
        let req = Request::ObjectDigests { session: s.0 };
        match self.call(&req)? {
            Response::Digests(v) => {
                Ok(v.into_iter().map(|(id, d)| (MemberObject(id), d)).collect())
            }
            other => Err(self.unexpected(&req, &other)),
        }
    }
    fn drop_replica(&self, s: MemberSession, o: MemberObject) -> Result<()> {
        self.ok(Request::DropReplica {
            session: s.0,
            object: o.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RemoteConfig {
        RemoteConfig::new("127.0.0.1:1", "/nonexistent/ca.pem", "c.pem", "k.pem")
    }

    #[test]
    fn a_bad_pem_file_is_a_config_error_naming_it() {
        let e = Remote::connect(MemberId(3), &cfg())
            .err()
            .expect("no CA file");
        let msg = e.to_string();
        assert!(
            matches!(e, Error::Config(_)) && msg.contains("/nonexistent/ca.pem"),
            "{msg}"
        );
        assert!(msg.contains("member 3"), "{msg}");
    }

    #[test]
    fn from_member_fills_the_defaults() {
        let m = MemberConfig {
            kind: "daemon".into(),
            address: Some("127.0.0.1:2225".into()),
            ca: Some("ca.pem".into()),
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            ..MemberConfig::default()
        };
        let r = RemoteConfig::from_member(&m).unwrap();
        assert_eq!(
            r,
            RemoteConfig::new("127.0.0.1:2225", "ca.pem", "c.pem", "k.pem")
        );
        assert_eq!((r.connections, r.timeout_ms), (4, 10_000));
        let e = RemoteConfig::from_member(&MemberConfig { key: None, ..m }).unwrap_err();
        assert!(e.to_string().contains("key"), "{e}");
    }
}
