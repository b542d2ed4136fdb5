//! `openssl s_server` and `openssl s_client` for the interop suites' TLS checks (OpenSSL with
//! libp11's engine, OpenSSL with the pkcs11-provider): a server on a free loopback port that is
//! killed when dropped, a client whose wait is bounded, and one checked handshake.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Run;

/// A TLS server must be listening, and a TLS client done, within this.
pub const TLS_TIMEOUT: Duration = Duration::from_secs(60);

/// An `openssl s_server` on 127.0.0.1, killed (and reaped) when dropped.
pub struct Server {
    child: Child,
    /// The port it accepts on.
    pub port: u16,
    stderr: PathBuf,
}

impl Server {
    /// Start the `openssl s_server` command `make` returns (every argument but `-accept`) on a
    /// free port, its output in `dir/NAME-ATTEMPT.stdout` and `.stderr`: a port the kernel
    /// hands out for port 0 is released and given to `s_server`; if another process took it
    /// meanwhile, try again. Waits (bounded) for `ACCEPT`; panics if the server exits first.
    pub fn start(dir: &Path, name: &str, make: impl Fn() -> Command) -> Server {
        let mut last = String::new();
        for attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a loopback port can be bound")
                .port();
            let mut c = make();
            c.arg("-accept").arg(format!("127.0.0.1:{port}"));
            let stdout = dir.join(format!("{name}-{attempt}.stdout"));
            let stderr = dir.join(format!("{name}-{attempt}.stderr"));
            c.stdin(Stdio::null())
                .stdout(File::create(&stdout).expect("the scratch dir is writable"))
                .stderr(File::create(&stderr).expect("the scratch dir is writable"));
            let child = c
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start openssl s_server: {e}"));
            let mut server = Server {
                child,
                port,
                stderr,
            };
            let start = Instant::now();
            loop {
                let out = read_lossy(&stdout);
                if out.contains("ACCEPT") {
                    return server;
                }
                if let Ok(Some(status)) = server.child.try_wait() {
                    last = format!(
                        "s_server exited ({status}) before listening: {c:?}\n--- stdout ---\n{out}\n--- stderr ---\n{}",
                        server.err()
                    );
                    break;
                }
                assert!(
                    start.elapsed() < TLS_TIMEOUT,
                    "s_server did not listen within {TLS_TIMEOUT:?}: {c:?}\n{out}\n{}",
                    server.err()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            if !server.err().contains("in use") {
                break;
            }
        }
        panic!("{last}");
    }

    /// What the server has written on stderr so far.
    pub fn err(&self) -> String {
        read_lossy(&self.stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file's contents, lossily decoded; empty if it cannot be read.
pub fn read_lossy(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// Run the `openssl s_client` command `c` (its options but `-connect`) against `server`, with
/// an HTTP GET on its stdin (`-ign_eof`: it reads the answer until the server closes), its
/// files in `dir/NAME.*`; killed after [`TLS_TIMEOUT`] (a panic naming what ran).
pub fn s_client(mut c: Command, server: &Server, dir: &Path, name: &str) -> Run {
    let request = dir.join(format!("{name}.request"));
    std::fs::write(&request, b"GET / HTTP/1.0\r\n\r\n").expect("the scratch dir is writable");
    c.arg("-connect")
        .arg(format!("127.0.0.1:{}", server.port))
        .arg("-ign_eof");
    let cmd = format!("{c:?} < {}", request.display());
    let stdout = dir.join(format!("{name}.stdout"));
    let stderr = dir.join(format!("{name}.stderr"));
    c.stdin(File::open(&request).expect("the request was written"))
        .stdout(File::create(&stdout).expect("the scratch dir is writable"))
        .stderr(File::create(&stderr).expect("the scratch dir is writable"));
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start openssl s_client: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for s_client") {
            break status;
        }
        if start.elapsed() > TLS_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "s_client timed out after {TLS_TIMEOUT:?} (killed): {cmd}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- server stderr ---\n{}",
                read_lossy(&stdout),
                read_lossy(&stderr),
                server.err()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        cmd,
        status,
        stdout: read_lossy(&stdout),
        stderr: read_lossy(&stderr),
    }
}

/// One TLS handshake by `openssl` (a plain `openssl` command, no arguments yet) against
/// `server`: `proto` with `cipher` negotiated, the server's signature of type `sig_type`
/// accepted, its certificate verified against `ca` (for the name 127.0.0.1), and the GET
/// answered with the server's own view of the same protocol and cipher (`s_server -www`).
pub fn handshake(
    mut openssl: Command,
    server: &Server,
    dir: &Path,
    ca: &str,
    (proto, cipher, sig_type): (&str, &str, &str),
    name: &str,
) -> Result<(), String> {
    openssl.arg("s_client");
    match proto {
        "TLSv1.3" => openssl.args(["-tls1_3", "-ciphersuites", cipher]),
        // In TLS 1.2 OpenSSL prefers RSA-PSS for RSA keys too; offer only PKCS #1 v1.5 (and
        // ECDSA) so both RSA paddings cross a handshake.
        _ => openssl.args([
            "-tls1_2",
            "-cipher",
            cipher,
            "-sigalgs",
            "RSA+SHA256:ECDSA+SHA256",
        ]),
    };
    openssl.args([
        "-CAfile",
        ca,
        "-verify_return_error",
        "-verify_ip",
        "127.0.0.1",
    ]);
    let r = s_client(openssl, server, dir, name);
    r.ok()
        .stdout_has(&format!("New, {proto}, Cipher is {cipher}"))
        .stdout_has(&format!("Peer signature type: {sig_type}\n"))
        .stdout_has("Verify return code: 0 (ok)")
        .stdout_has("HTTP/1.0 200 ok");
    // After the status line comes the page s_server wrote into the connection: its view of
    // the session, which must be the same.
    let page = r.stdout.split("HTTP/1.0 200 ok").nth(1).unwrap_or_default();
    crate::common::ensure(
        page.contains(&format!("Protocol  : {proto}"))
            && page.contains(&format!("Cipher    : {cipher}")),
        format!("the server's page does not show {proto} / {cipher}{r}"),
    )
}
