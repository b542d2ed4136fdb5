//! `hsmpool-hsmd`: one simulated HSM served over mutual TLS, speaking the `hsmpool_wire`
//! protocol. The engine's `Remote` backend is its client; `hsmpool sim fault|stats` its
//! administration tool.
//!
//! # Trust
//! TLS 1.3 only. The daemon presents its certificate chain (the HSM's certificate, then the
//! cluster certificate) and accepts only clients whose certificate chains to the customer CA
//! given with `--ca`. A refused handshake is logged at `warn` with the reason, e.g.
//! `TLS handshake from 127.0.0.1:5555 refused: client presented no certificate`.
//!
//! # Threads
//! - **The acceptor** accepts TCP connections and starts a connection thread for each (at most
//!   `--max-connections` at once; more are closed at once, with a warning).
//! - **A connection thread** runs the TLS handshake (bounded by a timeout, so a silent peer
//!   cannot hold it), then reads frames. Administration requests (the request table's `admin`
//!   entries: `Fault`, `Stats`, the `Version` handshake) are answered right there, so they
//!   never queue behind HSM work: a `release` must reach an HSM whose operations are all held.
//!   Every other request (`Ping` too: it is the HSM's health probe, and fails or waits as an
//!   operation would) becomes a job on the worker pool's
//!   bounded queue; when the queue is full the connection thread waits, which stops reading
//!   that connection (back-pressure on the client, not unbounded memory here).
//! - **Workers** (a fixed pool, `--workers`, default 64: with the timing model on, operations
//!   mostly sleep, and the HSM's own model of its crypto cores decides the throughput) run one
//!   request each on the [`Hsm`] and send the answer with the request's id. So answers go back
//!   in completion order: a slow RSA key generation does not hold up the signatures behind it.
//! - **Per connection, a writer thread** owned by the [`Link`]: answers are encrypted under the
//!   link's mutex and written to the socket by that thread, never under the mutex (see
//!   `hsmpool_wire::link` for why this cannot deadlock).
//!
//! # Failures
//! A malformed frame (bad magic or version, oversized, or a body that does not decode) closes
//! that connection with a warning naming the peer and the `hsmpool_wire::WireError`; the HSM
//! never sees it. A request that decodes but fails is answered `Err(CK_RV)`; a store failure is
//! logged and answered `CKR_DEVICE_ERROR`; a panic in a worker is caught, logged and answered
//! `CKR_GENERAL_ERROR`.
//!
//! # Sessions
//! HSM sessions belong to the daemon process, not to a connection: a closed connection closes
//! no session (the engine spreads one session's calls over a few connections). The HSM numbers
//! sessions from 1 in every process, so on the wire a session handle is the HSM's number XOR a
//! random per-process mask (high 32 bits): a handle from before a restart is
//! `CKR_SESSION_HANDLE_INVALID` afterwards, never silently some new session.
//!
//! # Faults
//! With `--fault-seed` the HSM has a fault controller and `Fault` requests drive it (one
//! [`FaultVerb`] each). A verb that drops connections (`drop_connections`, `crash`) also closes
//! every client connection of the daemon; the one that carried the request is closed right
//! after its answer is written.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use crossbeam::channel::{self, Sender};
use cryptoki_sys::*;
use parking_lot::Mutex;
use rustls::ServerConfig;
use zeroize::Zeroizing;

use crate::fault::{FaultConfig, FaultSeed, FaultVerb};
use crate::hsm::{Hsm, HsmConfig};
use crate::timing::TimingConfig;
use hsmpool_wire::link::{self, Link, Side};
use hsmpool_wire::{
    decode_request, encode_response, DaemonStats, Request, Response, Served, VersionInfo, PROTOCOL,
};

use crate::member::SimMember;

/// The command line.
pub const USAGE: &str = "usage: hsmpool-hsmd --data DIR --cert PEM --key PEM --ca PEM [options]

Serves one simulated HSM over mutual TLS 1.3.

  --data DIR             the HSM's data directory (created if missing)
  --cert PEM             the server certificate chain: the HSM's certificate, then the
                         cluster certificate
  --key PEM              the HSM certificate's private key (PKCS #8 PEM)
  --ca PEM               the customer CA: client certificates must chain to it
  --listen ADDR          address to listen on (default 127.0.0.1:0: a free loopback port)
  --port-file PATH       after binding, write the actual host:port to PATH (atomically)
  --timing MODEL         off (default), hsm2m.medium or hsm1.medium
  --fault-seed N         turn fault injection on, seeded with N (Fault requests drive it)
  --member N             this HSM's member id in the fault run (default 0)
  --pin-iterations N     PBKDF2 iterations for new PIN hashes (default 100000)
  --max-login-failures N consecutive failed logins that lock a user (default 5; the module
                         counts every failure on every member, so the cluster locks as one)
  --workers N            requests run at once (default 64)
  --max-connections N    client connections at once (default 256)
  --log FILTER           tracing filter (default info; HSMPOOL_LOG overrides)

Prints `hsmpool-hsmd listening on HOST:PORT` when ready.
";

/// How long a TLS handshake may take, and the socket write timeout after it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Jobs waiting for a worker, per worker.
const QUEUE_PER_WORKER: usize = 4;

/// Everything the command line sets.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The simulated HSM.
    pub hsm: HsmConfig,
    /// `host:port` to listen on.
    pub listen: String,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The customer CA (PEM) client certificates must chain to.
    pub ca: PathBuf,
    /// Where to write the bound address.
    pub port_file: Option<PathBuf>,
    /// Tracing filter (`HSMPOOL_LOG` overrides); `info` when neither.
    pub log: Option<String>,
    /// Worker threads.
    pub workers: usize,
    /// Client connections at once.
    pub max_connections: usize,
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
}

/// Parse the arguments (without the program name).
pub fn parse_args(args: &[String]) -> Result<DaemonConfig, String> {
    let mut data = None;
    let mut cert = None;
    let mut key = None;
    let mut ca = None;
    let mut listen = "127.0.0.1:0".to_owned();
    let mut port_file = None;
    let mut timing = None;
    let mut seed = None;
    let mut member = 0u64;
    let mut pin_iterations = None;
    let mut max_login_failures = None;
    let mut workers = 64usize;
    let mut max_connections = 256usize;
    let mut log = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--data" => data = Some(PathBuf::from(value()?)),
            "--cert" => cert = Some(PathBuf::from(value()?)),
            "--key" => key = Some(PathBuf::from(value()?)),
            "--ca" => ca = Some(PathBuf::from(value()?)),
            "--listen" => listen = value()?,
            "--port-file" => port_file = Some(PathBuf::from(value()?)),
            "--timing" => {
                timing = match value()?.as_str() {
                    "off" => None,
                    "hsm2m.medium" => Some(TimingConfig::default()),
                    "hsm1.medium" => Some(TimingConfig::cloudhsm_hsm1_medium()),
                    other => {
                        return Err(format!(
                            "--timing: unknown model {other:?} (off, hsm2m.medium or hsm1.medium)"
                        ))
                    }
                }
            }
            "--fault-seed" => seed = Some(number::<u64>(flag, &value()?)?),
            "--member" => member = number(flag, &value()?)?,
            "--pin-iterations" => {
                let n: u32 = number(flag, &value()?)?;
                if n == 0 {
                    return Err("--pin-iterations: must be at least 1".into());
                }
                pin_iterations = Some(n);
            }
            "--max-login-failures" => {
                let n: u32 = number(flag, &value()?)?;
                if n == 0 {
                    return Err("--max-login-failures: must be at least 1".into());
                }
                max_login_failures = Some(n);
            }
            "--workers" => workers = number(flag, &value()?)?,
            "--max-connections" => max_connections = number(flag, &value()?)?,
            "--log" => log = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let need = |v: Option<PathBuf>, flag: &str| v.ok_or_else(|| format!("{flag} is required"));
    let mut hsm = HsmConfig::new(need(data, "--data")?);
    if let Some(n) = pin_iterations {
        hsm.pin_iterations = n;
    }
    if let Some(n) = max_login_failures {
        hsm.max_login_failures = n;
    }
    hsm.timing = timing;
    hsm.faults = seed.map(|s| FaultConfig::new(FaultSeed(s), member));
    if workers == 0 || max_connections == 0 {
        return Err("--workers and --max-connections must be at least 1".into());
    }
    Ok(DaemonConfig {
        hsm,
        listen,
        cert: need(cert, "--cert")?,
        key: need(key, "--key")?,
        ca: need(ca, "--ca")?,
        port_file,
        log,
        workers,
        max_connections,
    })
}

/// Send tracing output to stderr: `HSMPOOL_LOG`, else `filter`, else `info`.
pub fn init_logging(filter: Option<&str>) -> Result<(), String> {
    let env = std::env::var("HSMPOOL_LOG").ok().filter(|v| !v.is_empty());
    let f = env.as_deref().or(filter).unwrap_or("info");
    let filter =
        tracing_subscriber::EnvFilter::try_new(f).map_err(|e| format!("log filter {f:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init()
        .map_err(|e| e.to_string())
}

/// Write `addr` to `path` atomically (a temporary file beside it, then a rename), so a reader
/// never sees a partial address.
pub fn write_port_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// The whole program: parse, set up, serve (never returns once serving).
pub fn main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let cfg = match parse_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hsmpool-hsmd: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(cfg.log.as_deref()) {
        eprintln!("hsmpool-hsmd: {e}");
        return ExitCode::from(2);
    }
    let daemon = match Daemon::bind(&cfg) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let addr = daemon.local_addr();
    // The line first, then the port file: whoever waits for the file also finds the line.
    let mut out = std::io::stdout().lock();
    if writeln!(out, "hsmpool-hsmd listening on {addr}")
        .and_then(|()| out.flush())
        .is_err()
    {
        // Nobody reads stdout: not a reason to stop serving.
        tracing::debug!("stdout is closed");
    }
    drop(out);
    if let Some(p) = &cfg.port_file {
        if let Err(e) = write_port_file(p, addr) {
            tracing::error!("cannot write the port file {}: {e}", p.display());
            return ExitCode::from(1);
        }
    }
    daemon.run();
    ExitCode::SUCCESS
}

/// One request waiting for a worker.
struct Job {
    link: Arc<Link>,
    id: u64,
    req: Request,
}

#[derive(Default)]
struct Counters {
    connections_accepted: AtomicU64,
    handshakes_refused: AtomicU64,
    connections_dropped: AtomicU64,
    requests_served: AtomicU64,
    requests_failed: AtomicU64,
    frames_refused: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What every thread of the daemon shares.
struct Shared {
    /// The HSM as a member, handing out session handles under a per-process mask (see the
    /// module doc).
    member: SimMember,
    /// Open client connections, by connection number.
    links: Mutex<HashMap<u64, Arc<Link>>>,
    next_link: AtomicU64,
    /// Connection threads alive (handshaking or serving).
    connection_threads: AtomicUsize,
    counters: Counters,
}

/// A bound daemon, ready to [`Daemon::run`].
pub struct Daemon {
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    shared: Arc<Shared>,
    jobs: Sender<Job>,
    max_connections: usize,
}

impl Daemon {
    /// Load the TLS set-up, open the HSM, start the workers and bind the listener.
    pub fn bind(cfg: &DaemonConfig) -> Result<Daemon, String> {
        let tls = link::server_config(&cfg.cert, &cfg.key, &cfg.ca)?;
        let hsm = Hsm::open(cfg.hsm.clone())
            .map_err(|e| format!("{}: {e}", cfg.hsm.data_dir.display()))?;
        let mut r = [0u8; 8];
        SystemRandom::new()
            .fill(&mut r)
            .map_err(|_| "no random bytes for the session mask".to_owned())?;
        // High 32 bits only, never zero: HSM session numbers stay below 2^32 in practice, so
        // masked handles are never 0 and never a previous process's.
        let session_mask = (u64::from_be_bytes(r) | 1 << 62) & 0xffff_ffff_0000_0000;
        let listener =
            TcpListener::bind(&cfg.listen).map_err(|e| format!("listen on {}: {e}", cfg.listen))?;
        let shared = Arc::new(Shared {
            member: SimMember::serving(hsm, session_mask),
            links: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            connection_threads: AtomicUsize::new(0),
            counters: Counters::default(),
        });
        let (jobs, queue) = channel::bounded::<Job>(cfg.workers * QUEUE_PER_WORKER);
        for i in 0..cfg.workers {
            let queue = queue.clone();
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("hsmd-worker-{i}"))
                .spawn(move || {
                    for job in queue.iter() {
                        let resp = shared.run_caught(job.req);
                        shared.reply(&job.link, job.id, &resp);
                    }
                })
                .map_err(|e| format!("starting a worker thread: {e}"))?;
        }
        tracing::info!(
            data = %cfg.hsm.data_dir.display(),
            timing = cfg.hsm.timing.is_some(),
            faults = cfg.hsm.faults.is_some(),
            "HSM open"
        );
        Ok(Daemon {
            listener,
            tls,
            shared,
            jobs,
            max_connections: cfg.max_connections,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// Accept connections forever.
    pub fn run(self) {
        tracing::info!("listening on {}", self.local_addr());
        for sock in self.listener.incoming() {
            let sock = match sock {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let peer = match sock.peer_addr() {
                Ok(p) => p,
                Err(_) => continue, // gone already
            };
            let threads = &self.shared.connection_threads;
            if threads.load(Ordering::SeqCst) >= self.max_connections {
                tracing::warn!(
                    "connection from {peer} refused: {} connections already open",
                    self.max_connections
                );
                continue;
            }
            threads.fetch_add(1, Ordering::SeqCst);
            let shared = Arc::clone(&self.shared);
            let tls = Arc::clone(&self.tls);
            let jobs = self.jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("hsmd-conn-{peer}"))
                .spawn(move || {
                    shared.serve(sock, peer, tls, &jobs);
                    shared.connection_threads.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                threads.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("connection from {peer} refused: no thread for it: {e}");
            }
        }
    }
}

impl Shared {
    /// One connection, from handshake to close.
    fn serve(&self, sock: TcpStream, peer: SocketAddr, tls: Arc<ServerConfig>, jobs: &Sender<Job>) {
        let (link, mut reader) = match link::accept(sock, tls, HANDSHAKE_TIMEOUT) {
            Ok(x) => x,
            Err(e) => {
                bump(&self.counters.handshakes_refused);
                tracing::warn!(
                    "TLS handshake from {peer} refused: {}",
                    link::refusal(&e, Side::Server)
                );
                return;
            }
        };
        // The cluster certificates the officers registered (`hsmpool cluster trust`): a client
        // whose chain holds none of them is refused, though it chains to the customer CA (a
        // certificate issued under a cluster key that was retired, or stolen with its file).
        // Checked here, at connection, as TLS checks a client: connections already open stay
        // until they close. Cutting them when the list changes would cut the change's own way
        // to the other members (the first member to take it would drop the connections the
        // engine copies it over, and the cluster would be left half changed).
        let anchors = self.member.hsm().trust_anchors();
        if !Self::registered(&link, &anchors) {
            bump(&self.counters.handshakes_refused);
            tracing::warn!(
                "connection from {peer} refused: its certificate chain holds none of the {} \
                 cluster certificate(s) the officers registered (hsmpool cluster trust list)",
                anchors.len()
            );
            link.close();
            return;
        }
        bump(&self.counters.connections_accepted);
        let n = self.next_link.fetch_add(1, Ordering::Relaxed);
        self.links.lock().insert(n, Arc::clone(&link));
        tracing::info!("connection {n} from {peer} open");
        loop {
            match reader.next_frame() {
                Ok(Some((id, payload))) => {
                    let req = match decode_request(&payload) {
                        Ok(r) => r,
                        Err(e) => {
                            bump(&self.counters.frames_refused);
                            tracing::warn!(
                                "connection {n} from {peer} closed: undecodable request {id}: {e}"
                            );
                            break;
                        }
                    };
                    drop(payload);
                    tracing::debug!(connection = n, id, request = req.name());
                    if req.is_admin() {
                        self.admin(req, id, &link);
                    } else if jobs
                        .send(Job {
                            link: Arc::clone(&link),
                            id,
                            req,
                        })
                        .is_err()
                    {
                        break; // the pool is gone: the process is ending
                    }
                }
                Ok(None) => {
                    tracing::info!("connection {n} from {peer} closed by the client");
                    break;
                }
                Err(_) if link.is_closed() => {
                    tracing::info!("connection {n} from {peer} closed by the daemon");
                    break;
                }
                Err(e) => {
                    let wire = e
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<hsmpool_wire::WireError>());
                    match wire {
                        Some(w) => {
                            bump(&self.counters.frames_refused);
                            tracing::warn!(
                                "connection {n} from {peer} closed: malformed frame: {w}"
                            );
                        }
                        None => tracing::info!(
                            "connection {n} from {peer} lost: {}",
                            link::refusal(&e, Side::Server)
                        ),
                    }
                    break;
                }
            }
        }
        self.links.lock().remove(&n);
        drop(reader); // closes the link
    }

    /// Answer an administration request on the connection thread.
    fn admin(&self, req: Request, id: u64, link: &Arc<Link>) {
        match req {
            Request::Stats => self.reply(link, id, &Response::Stats(self.stats())),
            Request::Fault { verb } => {
                let Some(faults) = self.member.hsm().faults() else {
                    tracing::warn!(
                        "fault request from {} refused: the daemon runs without --fault-seed",
                        link.peer()
                    );
                    return self.reply(link, id, &Response::Err(CKR_FUNCTION_NOT_SUPPORTED));
                };
                let verb: FaultVerb = match verb.parse() {
                    Ok(v) => v,
                    Err(msg) => {
                        tracing::warn!("fault request from {} refused: {msg}", link.peer());
                        return self.reply(link, id, &Response::Err(CKR_ARGUMENTS_BAD));
                    }
                };
                tracing::warn!("fault from {}: {verb}", link.peer());
                let dropped = faults.connections_dropped();
                faults.apply(&verb);
                self.reply(link, id, &Response::Ok);
                if faults.connections_dropped() != dropped {
                    self.drop_connections(link);
                }
            }
            other => {
                // `Request::is_admin` (the request table's `admin` entries): `Version`.
                let resp = self.run_caught(other);
                self.reply(link, id, &resp);
            }
        }
    }

    /// Whether `link`'s client presented a chain holding one of `anchors` (always, when none
    /// is registered).
    fn registered(link: &Link, anchors: &[[u8; 32]]) -> bool {
        anchors.is_empty()
            || link.peer_certificates().iter().any(|der| {
                let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
                anchors.iter().any(|a| a.as_slice() == d.as_ref())
            })
    }

    /// Close every client connection; `requester`'s once its answer is out.
    fn drop_connections(&self, requester: &Arc<Link>) {
        let links: Vec<Arc<Link>> = self.links.lock().values().cloned().collect();
        for l in &links {
            if Arc::ptr_eq(l, requester) {
                l.close_after_flush();
            } else {
                l.close();
            }
        }
        self.counters
            .connections_dropped
            .fetch_add(links.len() as u64, Ordering::Relaxed);
        tracing::warn!("dropped {} client connections", links.len());
    }

    fn stats(&self) -> DaemonStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DaemonStats {
            connections_open: self.links.lock().len() as u64,
            connections_accepted: get(&c.connections_accepted),
            handshakes_refused: get(&c.handshakes_refused),
            connections_dropped: get(&c.connections_dropped),
            requests_served: get(&c.requests_served),
            requests_failed: get(&c.requests_failed),
            frames_refused: get(&c.frames_refused),
            faults_injected: self.member.hsm().faults().map_or(0, |f| f.injected()),
        }
    }

    /// The handshake: who this daemon is, or a refusal for a client of another protocol.
    fn version(&self, protocol: u32) -> Response {
        let daemon = concat!("hsmpool-hsmd ", env!("CARGO_PKG_VERSION")).to_owned();
        if protocol != PROTOCOL {
            tracing::warn!(
                "{daemon} speaks protocol {PROTOCOL}; refused a client of protocol {protocol}"
            );
            return Response::Err(CKR_DEVICE_ERROR);
        }
        let faults = self.member.hsm().faults().is_some();
        Response::Version(VersionInfo {
            daemon,
            protocol,
            capabilities: VersionInfo::REPLICATION
                | VersionInfo::USERS
                | VersionInfo::AUDIT
                | if faults { VersionInfo::FAULTS } else { 0 },
        })
    }

    /// Send `resp` to request `id` on `link` (dropped if the link has closed meanwhile).
    fn reply(&self, link: &Link, id: u64, resp: &Response) {
        bump(&self.counters.requests_served);
        if matches!(resp, Response::Err(_)) {
            bump(&self.counters.requests_failed);
        }
        let frame = match encode_response(id, resp) {
            Ok(f) => Zeroizing::new(f),
            Err(e) => {
                tracing::warn!("answer to request {id} from {} too big: {e}", link.peer());
                Zeroizing::new(
                    encode_response(id, &Response::Err(CKR_DEVICE_ERROR))
                        .expect("an error answer is a few bytes, far under the frame cap"),
                )
            }
        };
        if let Err(e) = link.send(&frame) {
            tracing::debug!("answer to request {id} from {} dropped: {e}", link.peer());
        }
    }

    /// [`Shared::run`], with a panic turned into `CKR_GENERAL_ERROR`.
    fn run_caught(&self, req: Request) -> Response {
        let name = req.name();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(req))) {
            Ok(r) => r,
            Err(_) => {
                tracing::error!("request {name} panicked (a bug); answered CKR_GENERAL_ERROR");
                Response::Err(CKR_GENERAL_ERROR)
            }
        }
    }

    /// Run one request on the member (the dispatch is the wire crate's, generated from its
    /// request table); the administration requests that reach here are `Stats` (answered) and
    /// `Fault`, which only the connection thread applies.
    fn run(&self, req: Request) -> Response {
        match hsmpool_wire::serve(&self.member, req) {
            Served::Answer(Ok(resp)) => resp,
            Served::Answer(Err(e)) => Response::Err(e.rv()),
            Served::Admin(Request::Stats) => Response::Stats(self.stats()),
            Served::Admin(Request::Version { protocol }) => self.version(protocol),
            Served::Admin(_) => Response::Err(CKR_FUNCTION_NOT_SUPPORTED),
        }
    }
}

#[cfg(test)]
mod tests;
