//! The transport under the wire protocol, shared by `hsmpool-hsmd` and the engine's daemon
//! client: mutual TLS 1.3 set up from PEM files, the handshake and why it was refused, and a
//! [`Link`]: one TLS connection that many threads send frames on while one thread reads it.
//!
//! # Trust
//! Both ends use rustls with aws-lc-rs, TLS 1.3 only, and no session resumption (every
//! connection authenticates in full). The daemon accepts only clients whose certificate chains
//! to the customer CA it was given; the client accepts only a server whose chain (HSM
//! certificate, then cluster certificate) leads to the customer CA it pins, for the server name
//! it expects (an IP address is checked against the certificate's IP SANs).
//!
//! # Threading
//! A rustls connection is a state machine without I/O of its own. Each [`Link`] keeps it under
//! one mutex, and **no socket I/O is done while that mutex is held**:
//! - any thread sends ([`Link::send`]): lock, hand the plaintext frame to rustls (it encrypts
//!   into its outgoing buffer), unlock, kick the link's writer thread;
//! - the writer thread, on a kick: lock, take all the ciphertext out, unlock, write it to the
//!   socket. Records leave in the order they were encrypted, and a frame is encrypted whole
//!   under the lock, so frames from different threads never interleave;
//! - the reader (whoever owns the [`LinkReader`]): a blocking read on its own handle of the
//!   socket with no lock held, then lock, feed rustls, take out the plaintext, unlock.
//!
//! So a peer that stops reading blocks only the writer thread; the reader keeps decrypting and
//! senders keep queueing, and the socket's write timeout then closes the link. Two ends that
//! both send a lot at once cannot deadlock each other through the mutex, which only ever covers
//! in-memory work. Closing the link shuts the socket down, which wakes the blocked reader.
//!
//! # Errors
//! Everything here fails with [`std::io::Error`]; a TLS failure carries the [`rustls::Error`]
//! and a framing failure the [`WireError`] inside it (`ErrorKind::InvalidData`).
//! [`refusal`] turns one into the sentence that goes to the log.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use parking_lot::Mutex;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, Connection, RootCertStore,
    ServerConfig, ServerConnection,
};
use zeroize::{Zeroize, Zeroizing};

use super::{FrameReader, WireError};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 32 * 1024;
/// A writer buffer grown past this is freed once written.
const SHRINK_ABOVE: usize = 1 << 20;

/// Which end of a connection we are (for the wording of [`refusal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The daemon.
    Server,
    /// The engine (or the admin tool).
    Client,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate of a PEM file, in file order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS #8, or SEC1 / PKCS #1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
    }
    Ok(Arc::new(roots))
}

/// The daemon's TLS set-up: `cert_chain` (its own certificate, then the cluster certificate)
/// and its `key`; client certificates must chain to the CA certificate(s) in `client_ca`.
pub fn server_config(
    cert_chain: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, String> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(client_ca)?, provider())
        .build()
        .map_err(|e| format!("{}: {e}", client_ca.display()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert_chain)?, load_key(key)?)
        .map_err(|e| format!("{} with {}: {e}", cert_chain.display(), key.display()))?;
    // No resumption: every connection presents and checks certificates in full.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A client's TLS set-up: the server must chain to `ca`; `identity` is the client's
/// certificate chain and key (`None`: present no certificate, which a daemon refuses).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca)?);
    let mut cfg = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?,
        None => builder.with_no_client_auth(),
    };
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The host part of `host:port` (`[v6]:port` too).
pub fn host_of(address: &str) -> Result<&str, String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{address:?}: bad port {port:?}"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    Ok(host)
}

/// The name the server's certificate must carry: `explicit`, else the host of `address`. An IP
/// address is matched against IP SANs.
pub fn server_name(address: &str, explicit: Option<&str>) -> Result<ServerName<'static>, String> {
    let host = match explicit {
        Some(n) => n,
        None => host_of(address)?,
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned()).map_err(|e| format!("server name {host:?}: {e}"))
}

/// Connect to `address` and run the client handshake; `timeout` bounds the TCP connect and the
/// handshake, and is the socket's write timeout afterwards.
pub fn connect(
    address: &str,
    name: ServerName<'static>,
    cfg: Arc<ClientConfig>,
    timeout: Duration,
) -> io::Result<(Arc<Link>, LinkReader)> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{address} resolves to no address"),
    );
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(sock) => {
                let conn = ClientConnection::new(cfg, name)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                return establish(conn.into(), sock, addr, timeout);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Run the server handshake on an accepted socket; `timeout` bounds the handshake and is the
/// socket's write timeout afterwards.
pub fn accept(
    sock: TcpStream,
    cfg: Arc<ServerConfig>,
    timeout: Duration,
) -> io::Result<(Arc<Link>, LinkReader)> {
    let peer = sock.peer_addr()?;
    let conn =
        ServerConnection::new(cfg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    establish(conn.into(), sock, peer, timeout)
}

fn establish(
    mut conn: Connection,
    sock: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> io::Result<(Arc<Link>, LinkReader)> {
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    let deadline = Instant::now() + timeout;
    let mut io = &sock;
    while conn.is_handshaking() {
        match conn.complete_io(&mut io) {
            Ok(_) => {}
            // The read timeout: go round until the deadline.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake timed out",
                ))
            }
            Err(e) => return Err(e),
        }
        if conn.is_handshaking() && Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "handshake timed out",
            ));
        }
    }
    while conn.wants_write() {
        conn.write_tls(&mut io)?;
    }
    // From here the reader blocks for as long as the peer is quiet; writes keep the timeout.
    sock.set_read_timeout(None)?;
    // Senders queue in rustls; the writer thread drains it (see the module doc).
    conn.set_buffer_limit(None);
    let (kick, kicks) = channel::bounded(1);
    let link = Arc::new(Link {
        tls: Mutex::new(conn),
        kick,
        sock: sock.try_clone()?,
        peer,
        closed: AtomicBool::new(false),
        closing: AtomicBool::new(false),
    });
    let writer_sock = sock.try_clone()?;
    let writer_link = Arc::clone(&link);
    std::thread::Builder::new()
        .name("hsmpool-link-writer".into())
        .spawn(move || write_loop(&writer_link, &kicks, writer_sock))?;
    let mut reader = LinkReader {
        link: Arc::clone(&link),
        sock,
        buf: vec![0; READ_CHUNK],
        plain: Zeroizing::new(vec![0; READ_CHUNK]),
        frames: FrameReader::new(),
        eof: false,
    };
    // The peer's first frames may have come in with the end of its handshake (a client sends
    // its first request right behind its Finished): rustls has already decrypted them, and no
    // socket read would ever bring them out.
    reader.drain(&mut link.tls.lock())?;
    Ok((link, reader))
}

/// One established TLS connection: any thread may [`Link::send`]; one [`LinkReader`] reads.
///
/// # Invariants
/// `tls` is never held across socket I/O. `closed` goes false → true once, and the socket is
/// shut down when it does.
pub struct Link {
    tls: Mutex<Connection>,
    /// Wakes the writer thread (capacity 1: one pending kick covers everything queued).
    kick: Sender<()>,
    /// A handle on the socket, to shut it down.
    sock: TcpStream,
    peer: SocketAddr,
    closed: AtomicBool,
    /// Close once what is queued is written ([`Link::close_after_flush`]).
    closing: AtomicBool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Link {
    /// The other end's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The certificates the other end presented (its leaf first, then its chain), DER.
    pub fn peer_certificates(&self) -> Vec<Vec<u8>> {
        self.tls
            .lock()
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect())
            .unwrap_or_default()
    }

    /// Whether the link is closed (by either end, or after an error).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Queue one whole frame; the writer thread sends it. Fails only if the link is closed.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        if self.is_closed() || self.closing.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection closed",
            ));
        }
        self.tls.lock().writer().write_all(frame)?;
        let _ = self.kick.try_send(());
        Ok(())
    }

    /// Close now: the socket is shut down, which ends the reader and the writer thread.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ = self.sock.shutdown(Shutdown::Both);
        }
        let _ = self.kick.try_send(());
    }

    /// Close once everything sent so far is written (with a TLS `close_notify`).
    pub fn close_after_flush(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.kick.try_send(());
    }
}

fn write_loop(link: &Link, kicks: &Receiver<()>, mut sock: TcpStream) {
    let mut out = Vec::new();
    while kicks.recv().is_ok() && !link.is_closed() {
        let closing = link.closing.load(Ordering::SeqCst);
        {
            let mut tls = link.tls.lock();
            if closing {
                tls.send_close_notify();
            }
            while tls.wants_write() {
                // Writing into a Vec does not fail.
                if tls.write_tls(&mut out).is_err() {
                    break;
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = sock.write_all(&out) {
                tracing::debug!(peer = %link.peer, "write failed: {e}");
                link.close();
                return;
            }
            out.clear();
            if out.capacity() > SHRINK_ABOVE {
                out = Vec::new();
            }
        }
        if closing {
            link.close();
            return;
        }
    }
}

/// The reading end of a [`Link`]: frames as they arrive. Dropping it closes the link.
pub struct LinkReader {
    link: Arc<Link>,
    sock: TcpStream,
    /// Ciphertext from the socket.
    buf: Vec<u8>,
    /// Plaintext out of rustls on its way into `frames` (may hold PINs: wiped after use).
    plain: Zeroizing<Vec<u8>>,
    frames: FrameReader,
    /// The peer closed (TCP end of stream, or TLS `close_notify`).
    eof: bool,
}

impl Drop for LinkReader {
    fn drop(&mut self) {
        self.link.close();
    }
}

impl LinkReader {
    /// The link this reads.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// The next frame, as (request id, payload from the kind byte on), blocking until one is
    /// complete; `None` when the peer closed cleanly between frames. An error ends the link:
    /// a framing error carries its [`WireError`], a TLS error its [`rustls::Error`].
    pub fn next_frame(&mut self) -> io::Result<Option<(u64, Zeroizing<Vec<u8>>)>> {
        loop {
            match self.frames.next_frame() {
                Ok(Some((id, payload))) => return Ok(Some((id, Zeroizing::new(payload)))),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if self.eof {
                return match self.frames.finish() {
                    Ok(()) => Ok(None),
                    Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                };
            }
            let n = match self.sock.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.eof = true;
                continue;
            }
            self.feed(n)?;
        }
    }

    /// Move the plaintext rustls holds into the frame reader.
    fn drain(&mut self, tls: &mut Connection) -> io::Result<()> {
        if drain_plaintext(tls, &mut self.plain, &mut self.frames)? {
            self.eof = true;
        }
        Ok(())
    }

    /// Hand `buf[..n]` to rustls and move the plaintext into the frame reader.
    fn feed(&mut self, n: usize) -> io::Result<()> {
        let mut tls = self.link.tls.lock();
        let mut rest = &self.buf[..n];
        let mut result = Ok(());
        while !rest.is_empty() && !self.eof {
            if let Err(e) = tls.read_tls(&mut rest) {
                result = Err(e);
                break;
            }
            if let Err(e) = tls.process_new_packets() {
                result = Err(io::Error::new(io::ErrorKind::InvalidData, e));
                break;
            }
            match drain_plaintext(&mut tls, &mut self.plain, &mut self.frames) {
                Ok(eof) => self.eof = eof,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Alerts and key updates rustls queued in answer.
        let answer = tls.wants_write();
        drop(tls);
        if answer {
            let _ = self.link.kick.try_send(());
        }
        result
    }
}

/// Move the plaintext `tls` holds into `frames` through `plain` (wiped after each piece);
/// whether the peer has closed (`close_notify`).
fn drain_plaintext(
    tls: &mut Connection,
    plain: &mut [u8],
    frames: &mut FrameReader,
) -> io::Result<bool> {
    loop {
        match tls.reader().read(plain) {
            Ok(0) => return Ok(true),
            Ok(k) => {
                frames.push(&plain[..k]);
                plain[..k].zeroize();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

fn alert_is_about_certificates(a: AlertDescription) -> bool {
    matches!(
        a,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
    )
}

/// Why a handshake (or a link) failed, as one sentence for the log, seen from `we_are`'s side:
/// e.g. `client certificate not issued by the configured CA (UnknownIssuer)`,
/// `client presented no certificate`, `server certificate not issued by the configured CA`.
pub fn refusal(e: &io::Error, we_are: Side) -> String {
    let peer = match we_are {
        Side::Server => "client",
        Side::Client => "server",
    };
    let inner = e.get_ref();
    if let Some(tls) = inner.and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                format!("{peer} certificate not issued by the configured CA (UnknownIssuer)")
            }
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!("{peer} certificate not valid for the expected server name"),
            rustls::Error::InvalidCertificate(c) => format!("{peer} certificate refused ({c:?})"),
            rustls::Error::NoCertificatesPresented => format!("{peer} presented no certificate"),
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
                format!("{peer} requires a client certificate")
            }
            rustls::Error::AlertReceived(a) if alert_is_about_certificates(*a) => match we_are {
                Side::Server => format!("client refused the server certificate (alert {a:?})"),
                Side::Client => format!("server refused our client certificate (alert {a:?})"),
            },
            rustls::Error::AlertReceived(a) => format!("{peer} sent alert {a:?}"),
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => {
                format!("{peer} does not speak TLS 1.3 ({tls})")
            }
            rustls::Error::PeerIncompatible(p) => format!("{peer} is incompatible ({p:?})"),
            other => other.to_string(),
        };
    }
    if let Some(w) = inner.and_then(|i| i.downcast_ref::<WireError>()) {
        return format!("malformed frame: {w}");
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => format!("{peer} closed the connection"),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_server_name() {
        assert_eq!(host_of("127.0.0.1:5000"), Ok("127.0.0.1"));
        assert_eq!(host_of("[::1]:5000"), Ok("::1"));
        assert_eq!(host_of("hsm1.example:1"), Ok("hsm1.example"));
        assert!(host_of("127.0.0.1").is_err());
        assert!(host_of(":5000").is_err());
        assert!(host_of("h:99999").is_err());
        assert!(matches!(
            server_name("127.0.0.1:5000", None),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]:5000", None),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1:5000", Some("hsm1.example")),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("127.0.0.1:5000", Some("not a name")).is_err());
    }

    #[test]
    fn refusals_say_which() {
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            refusal(
                &tls(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                )),
                Side::Server
            ),
            "client certificate not issued by the configured CA (UnknownIssuer)"
        );
        assert_eq!(
            refusal(
                &tls(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                )),
                Side::Client
            ),
            "server certificate not issued by the configured CA (UnknownIssuer)"
        );
        assert_eq!(
            refusal(&tls(rustls::Error::NoCertificatesPresented), Side::Server),
            "client presented no certificate"
        );
        assert_eq!(
            refusal(
                &tls(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
                Side::Client
            ),
            "server refused our client certificate (alert UnknownCA)"
        );
        let wire = io::Error::new(io::ErrorKind::InvalidData, WireError::BadVersion(9));
        assert_eq!(
            refusal(&wire, Side::Server),
            "malformed frame: unsupported protocol version 9"
        );
    }

    #[test]
    fn missing_and_empty_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        assert!(load_certs(&missing).unwrap_err().contains("nope.pem"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        assert!(load_certs(&empty)
            .unwrap_err()
            .contains("no certificate in the file"));
        assert!(load_key(&empty).unwrap_err().contains("empty.pem"));
    }
}
