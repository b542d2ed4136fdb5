//! The daemon client: a member that is an `hsmpool-hsmd` process, reached over mutual TLS 1.3
//! with this protocol. Its `Backend`, `Replication`, `Users` and `Audit` methods are generated from the request
//! table (`request.rs`); the few written by hand are at the end of this file.
//!
//! # Connections
//! A [`Remote`] keeps a small fixed number of TLS connections to its daemon (`connections`,
//! default 4) and any number of threads share them: each call is one request frame with a
//! fresh id on a connection picked round-robin, and the connection's reader thread hands each
//! answer to the call waiting for that id (a one-slot channel per call). Sending goes through
//! the [`Link`], which keeps whole frames from different threads apart and never does socket
//! I/O under its lock (see [`crate::link`]).
//!
//! # Trust
//! The daemon's chain must lead to the customer CA in `ca` and carry the expected name
//! (`server_name`, else the host of `address`; an IP address is matched to the certificate's
//! IP SANs); the client presents `cert` / `key`. A refused handshake is logged with the reason,
//! e.g. `server certificate not issued by the configured CA (UnknownIssuer)`.
//!
//! # Failures
//! Every failure to reach the daemon is [`MemberError::Unreachable`] (`CKR_DEVICE_REMOVED`,
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
use hsmpool_member::{
    Approval, AttrAnswer, AuditLog, KeyMeta, KeyService, MemberError, MemberId, MemberObject,
    MemberResult, MemberSession, OwnedObject, Role, TokenStatus, UserChange, UserSet,
};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use zeroize::Zeroizing;

use crate::codec::{InputKind, Secret};
use crate::error::WireError;
use crate::link::{self, Link, LinkReader, Side};
use crate::{decode_response, encode_request, Request, Response, PROTOCOL};

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
    pending: DashMap<u64, Sender<MemberResult<Response>>>,
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

    fn unreachable(&self) -> MemberError {
        MemberError::Unreachable {
            member: self.member,
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
    /// `MemberError::Config` naming it) but connects lazily: a daemon that is down does not fail this.
    pub fn connect(id: MemberId, cfg: &RemoteConfig) -> MemberResult<Remote> {
        let config = |what: &str, m: String| {
            MemberError::Config(format!("member {} ({}): {what}: {m}", id.0, cfg.address))
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

    fn unreachable(&self, reason: String) -> MemberError {
        MemberError::Unreachable {
            member: self.id,
            reason,
        }
    }

    /// A live connection, round-robin, made now if its slot has none.
    fn connection(&self) -> MemberResult<Arc<Conn>> {
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
                let daemon = self.handshake(&conn)?;
                *slot = Some(Arc::clone(&conn));
                tracing::debug!(
                    member = self.id.0,
                    slot = i,
                    "connected to {daemon} at {}",
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

    /// The first exchange on a new connection: the daemon must speak our [`PROTOCOL`], or the
    /// connection is closed and the member is unreachable with a reason that says so.
    fn handshake(&self, conn: &Conn) -> MemberResult<String> {
        let refuse = |why: String| {
            conn.fail(why.clone(), false);
            Err(self.unreachable(why))
        };
        match self.request_on(conn, &Request::Version { protocol: PROTOCOL })? {
            Response::Version(v) if v.protocol == PROTOCOL => Ok(v.daemon),
            Response::Version(v) => refuse(format!(
                "{} at {} speaks protocol {}, this module {PROTOCOL}",
                v.daemon, self.address, v.protocol
            )),
            Response::Err(rv) => refuse(format!(
                "{} refused the handshake for protocol {PROTOCOL} ({rv:#x}): another version of hsmpool-hsmd",
                self.address
            )),
            other => refuse(format!("{} answered the handshake with {}", self.address, other.name())),
        }
    }

    /// Send one request and wait for its answer (an `Err(CK_RV)` answer is returned as such;
    /// see [`admin_request`] for the administration requests).
    pub fn request(&self, req: &Request) -> MemberResult<Response> {
        let conn = self.connection()?;
        self.request_on(&conn, req)
    }

    /// [`Remote::request`] on one connection.
    fn request_on(&self, conn: &Conn, req: &Request) -> MemberResult<Response> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // May hold a PIN or plaintext: wiped once sent.
        let frame = Zeroizing::new(encode_request(id, req).map_err(|e| match e {
            WireError::TooLarge { .. } => MemberError::DataLenRange,
            other => MemberError::Internal(format!("encoding {}: {other}", req.name())),
        })?);
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
    pub(crate) fn call(&self, req: &Request) -> MemberResult<Response> {
        match self.request(req)? {
            Response::Err(rv) => Err(MemberError::Rv {
                member: self.id,
                rv,
            }),
            r => Ok(r),
        }
    }

    pub(crate) fn unexpected(&self, req: &Request, resp: &Response) -> MemberError {
        MemberError::Device(format!(
            "member {}: answer {} to {} makes no sense",
            self.id.0,
            resp.name(),
            req.name()
        ))
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
pub fn admin_request(cfg: &RemoteConfig, req: &Request) -> MemberResult<Response> {
    let one = RemoteConfig {
        connections: 1,
        ..cfg.clone()
    };
    Remote::connect(MemberId(0), &one)?.request(req)
}

/// Sorts the generated client methods into the two trait impls, with the `Backend` methods
/// that are not one request each written here: who the member is, closing a session (it cannot
/// fail), random bytes (asked in pieces of at most [`crate::MAX_RANDOM`]).
macro_rules! client_impls {
    (@go [$($bk:tt)*] [$($rp:tt)*] [$($us:tt)*] [$($au:tt)*] [$($bu:tt)*]) => {
        impl hsmpool_member::Backend for Remote {
            $($bk)*
            fn id(&self) -> MemberId {
                self.id
            }
            fn describe(&self) -> String {
                self.describe.clone()
            }
            fn close_session(&self, s: hsmpool_member::MemberSession) {
                if let Err(e) = self.call(&Request::CloseSession { session: s.0 }) {
                    // A daemon that is down has lost the session anyway.
                    tracing::debug!(member = self.id.0, "close_session: {e}");
                }
            }
            fn random(&self, out: &mut [u8]) -> MemberResult<()> {
                // One frame carries at most MAX_RANDOM bytes: ask in pieces.
                for chunk in out.chunks_mut(crate::MAX_RANDOM as usize) {
                    let len = u32::try_from(chunk.len()).map_err(|_| MemberError::DataLenRange)?;
                    let req = Request::Random { len };
                    match self.call(&req)? {
                        Response::Secret(bytes) if bytes.len() == chunk.len() => {
                            chunk.copy_from_slice(&bytes)
                        }
                        other => return Err(self.unexpected(&req, &other)),
                    }
                }
                Ok(())
            }
            fn replication(&self) -> Option<&dyn hsmpool_member::Replication> {
                Some(self)
            }
            fn users(&self) -> Option<&dyn hsmpool_member::Users> {
                Some(self)
            }
            fn audit(&self) -> Option<&dyn hsmpool_member::Audit> {
                Some(self)
            }
            fn backup(&self) -> Option<&dyn hsmpool_member::Backup> {
                Some(self)
            }
        }
        impl hsmpool_member::Replication for Remote {
            $($rp)*
        }
        impl hsmpool_member::Users for Remote {
            $($us)*
        }
        impl hsmpool_member::Audit for Remote {
            $($au)*
        }
        impl hsmpool_member::Backup for Remote {
            $($bu)*
        }
    };
    (@go [$($bk:tt)*] [$($rp:tt)*] [$($us:tt)*] [$($au:tt)*] [$($bu:tt)*] Backend { $($item:tt)* } $($rest:tt)*) => {
        client_impls!(@go [$($bk)* $($item)*] [$($rp)*] [$($us)*] [$($au)*] [$($bu)*] $($rest)*);
    };
    (@go [$($bk:tt)*] [$($rp:tt)*] [$($us:tt)*] [$($au:tt)*] [$($bu:tt)*] Replication { $($item:tt)* } $($rest:tt)*) => {
        client_impls!(@go [$($bk)*] [$($rp)* $($item)*] [$($us)*] [$($au)*] [$($bu)*] $($rest)*);
    };
    (@go [$($bk:tt)*] [$($rp:tt)*] [$($us:tt)*] [$($au:tt)*] [$($bu:tt)*] Users { $($item:tt)* } $($rest:tt)*) => {
        client_impls!(@go [$($bk)*] [$($rp)*] [$($us)* $($item)*] [$($au)*] [$($bu)*] $($rest)*);
    };
    (@go [$($bk:tt)*] [$($rp:tt)*] [$($us:tt)*] [$($au:tt)*] [$($bu:tt)*] Audit { $($item:tt)* } $($rest:tt)*) => {
        client_impls!(@go [$($bk)*] [$($rp)*] [$($us)*] [$($au)* $($item)*] [$($bu)*] $($rest)*);
    };
    (@go [$($bk:tt)*] [$($rp:tt)*] [$($us:tt)*] [$($au:tt)*] [$($bu:tt)*] Backup { $($item:tt)* } $($rest:tt)*) => {
        client_impls!(@go [$($bk)*] [$($rp)*] [$($us)*] [$($au)*] [$($bu)* $($item)*] $($rest)*);
    };
}

/// The client's generator for `request_table!` (in `request.rs`): for each entry with a
/// `client` clause, the method that builds the request, sends it, and reads the answer.
macro_rules! client_methods {
    ($(
        $(#[doc = $doc:literal])*
        $KIND:ident = $code:literal, $name:ident $({ $($f:ident : $t:ty),* $(,)? })?
        $(check $check:block)?
        => $(admin $why:literal)? $(serve |$b:ident| $serve:expr)?
        $(, client $tr:ident fn $m:ident($($a:ident : $at:ty),* $(,)?) -> $ret:ty
            $make:block $rpat:pat => $rval:expr)?
        ;
    )*) => {
        client_impls!(@go [] [] [] [] []
            $($(
                $tr {
                    fn $m(&self, $($a: $at),*) -> MemberResult<$ret> {
                        let req: Request = $make;
                        match self.call(&req)? {
                            $rpat => Ok($rval),
                            other => Err(self.unexpected(&req, &other)),
                        }
                    }
                }
            )?)*
        );
    };
}

request_table!(client_methods);

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
            matches!(e, MemberError::Config(_)) && msg.contains("/nonexistent/ca.pem"),
            "{msg}"
        );
        assert!(msg.contains("member 3"), "{msg}");
    }
}
