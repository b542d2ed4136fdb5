//! `hsmpool cluster ...` end to end, against the real OpenSSL command-line tool: the customer's
//! CA is made and used with `openssl`, and the results are checked with `openssl verify`,
//! `openssl x509` and a mutual-TLS 1.3 handshake between `openssl s_server` and `s_client`.
//!
//! These tests need `openssl` (OpenSSL 3) on the PATH and fail, not skip, without it. Every
//! child process runs under a deadline and is killed past it, so no test can hang; the
//! deadlines only bound a run, nothing asserts on how long anything took.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use x509_parser::prelude::{FromDer, X509Certificate};

const DEADLINE: Duration = Duration::from_secs(60);

/// Run `cmd` to completion, feeding it `stdin`, killing it past [`DEADLINE`].
fn run(mut cmd: Command, stdin: &[u8]) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {what}: {e} (these tests need the openssl command-line tool)")
        });
    let mut input = child.stdin.take().expect("stdin was piped");
    let data = stdin.to_vec();
    // A writer thread so a child that does not read its input cannot block us.
    let writer = thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = drain(child.stdout.take().expect("stdout was piped"));
    let err = drain(child.stderr.take().expect("stderr was piped"));
    let status = wait_or_kill(&mut child, &what);
    let _ = writer.join();
    Output {
        status,
        stdout: out.join().expect("reader thread"),
        stderr: err.join().expect("reader thread"),
    }
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn wait_or_kill(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {DEADLINE:?}; killed");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `hsmpool ARGS`; whatever it prints must never contain a private key.
fn hsmpool(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hsmpool"));
    cmd.args(args);
    let o = run(cmd, b"");
    assert!(
        !text(&o).contains("PRIVATE KEY"),
        "hsmpool printed a private key:\n{}",
        text(&o)
    );
    o
}

fn hsmpool_ok(args: &[&str]) -> String {
    let o = hsmpool(args);
    assert!(o.status.success(), "hsmpool {args:?} failed:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `hsmpool ARGS` must fail, saying each of `needles`; returns its stderr.
fn hsmpool_refused(args: &[&str], needles: &[&str]) -> String {
    let o = hsmpool(args);
    assert!(
        !o.status.success(),
        "hsmpool {args:?} should have failed:\n{}",
        text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in the refusal:\n{err}");
    }
    err
}

fn openssl(args: &[&str]) -> Output {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    run(cmd, b"")
}

fn openssl_ok(args: &[&str]) -> String {
    let o = openssl(args);
    assert!(o.status.success(), "openssl {args:?} failed:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// A customer CA made the way a customer would: `openssl req -x509` with an EC P-256 key.
fn customer_ca(dir: &Path, stem: &str, subject: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key.pem"));
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&key),
        "-out",
        s(&cert),
        "-subj",
        subject,
        "-days",
        "30",
    ]);
    (cert, key)
}

/// The customer signs `csr` with their CA, as `hsmpool cluster init` tells them to.
fn customer_signs(csr: &Path, ca: &(PathBuf, PathBuf), out: &Path, copy_extensions: bool) {
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        s(csr),
        "-CA",
        s(&ca.0),
        "-CAkey",
        s(&ca.1),
        "-days",
        "30",
        "-sha256",
        "-out",
        s(out),
    ];
    if copy_extensions {
        args.extend(["-copy_extensions", "copyall"]);
    }
    openssl_ok(&args);
}

/// A tempdir holding a customer CA (`ca.pem`) and an initialised but not installed cluster
/// (`cluster/`).
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
    ca: (PathBuf, PathBuf),
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        let ca = customer_ca(&root, "ca", "/O=Acme Corp/CN=Acme Root CA");
        let dir = root.join("cluster");
        let out = hsmpool_ok(&["cluster", "init", "--dir", s(&dir), "--name", "prod"]);
        assert!(out.contains("-copy_extensions copyall"), "{out}");
        assert!(out.contains("hsmpool cluster install"), "{out}");
        Fixture {
            _tmp: tmp,
            root,
            dir,
            ca,
        }
    }

    fn csr(&self) -> PathBuf {
        self.dir.join("cluster.csr.pem")
    }

    fn install_args<'a>(&'a self, cert: &'a Path, ca: &'a Path) -> Vec<&'a str> {
        vec![
            "cluster",
            "install",
            "--dir",
            s(&self.dir),
            "--cert",
            s(cert),
            "--ca",
            s(ca),
        ]
    }

    /// The whole customer flow: sign, install, issue `hsm0` and `app`.
    fn installed() -> Self {
        let f = Fixture::new();
        let signed = f.root.join("signed.pem");
        customer_signs(&f.csr(), &f.ca, &signed, true);
        let out = hsmpool_ok(&f.install_args(&signed, &f.ca.0));
        assert!(out.contains("CN=hsmpool cluster prod"), "{out}");
        hsmpool_ok(&[
            "cluster",
            "issue-hsm",
            "--dir",
            s(&f.dir),
            "--name",
            "hsm0",
            "--dns",
            "hsm0.cluster.internal",
        ]);
        hsmpool_ok(&[
            "cluster",
            "issue-client",
            "--dir",
            s(&f.dir),
            "--name",
            "app",
        ]);
        f
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn pem_certs(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).expect("read chain");
    pem::parse_many(bytes)
        .expect("PEM")
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect()
}

/// `openssl verify` of a leaf against the customer CA, the cluster cert as intermediate.
fn assert_verifies(ca: &Path, cluster_cert: &Path, leaf: &Path, purpose: &str) {
    let out = openssl_ok(&[
        "verify",
        "-CAfile",
        s(ca),
        "-untrusted",
        s(cluster_cert),
        "-purpose",
        purpose,
        s(leaf),
    ]);
    assert!(out.contains(": OK"), "{out}");
}

/// Check a cluster directory after install and issue: modes, chains, extensions, names.
fn assert_cluster_output(dir: &Path, ca: &Path) {
    for key in ["cluster.key.pem", "hsm0.key.pem", "app.key.pem"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    let cluster_cert = dir.join("cluster.crt.pem");
    assert_verifies(ca, &cluster_cert, &dir.join("hsm0.crt.pem"), "sslserver");
    assert_verifies(ca, &cluster_cert, &dir.join("app.crt.pem"), "sslclient");
    // The installed anchor is the CA given, byte for byte.
    assert_eq!(pem_certs(&dir.join("customer-ca.pem")), pem_certs(ca));

    let cluster_ext = openssl_ok(&[
        "x509",
        "-in",
        s(&cluster_cert),
        "-noout",
        "-ext",
        "basicConstraints,keyUsage",
    ]);
    assert!(cluster_ext.contains("CA:TRUE, pathlen:0"), "{cluster_ext}");
    assert!(cluster_ext.contains("Certificate Sign"), "{cluster_ext}");

    let hsm = openssl_ok(&[
        "x509",
        "-in",
        s(&dir.join("hsm0.crt.pem")),
        "-noout",
        "-ext",
        "subjectAltName,extendedKeyUsage,basicConstraints",
    ]);
    assert!(hsm.contains("IP Address:127.0.0.1"), "{hsm}");
    assert!(hsm.contains("DNS:hsm0.cluster.internal"), "{hsm}");
    assert!(hsm.contains("TLS Web Server Authentication"), "{hsm}");
    assert!(!hsm.contains("Client Authentication"), "{hsm}");
    assert!(hsm.contains("CA:FALSE"), "{hsm}");
    let app = openssl_ok(&[
        "x509",
        "-in",
        s(&dir.join("app.crt.pem")),
        "-noout",
        "-ext",
        "extendedKeyUsage,basicConstraints",
    ]);
    assert!(app.contains("TLS Web Client Authentication"), "{app}");
    assert!(!app.contains("Server Authentication"), "{app}");

    // Each chain file is the leaf then the cluster certificate; the leaf's issuer name is the
    // cluster subject byte for byte (rustls/webpki compares names as bytes, not canonically).
    let cluster = pem_certs(&cluster_cert);
    assert_eq!(cluster.len(), 1);
    for leaf in ["hsm0.crt.pem", "app.crt.pem"] {
        let chain = pem_certs(&dir.join(leaf));
        assert_eq!(chain.len(), 2, "{leaf}: leaf + cluster certificate");
        assert_eq!(
            chain[1], cluster[0],
            "{leaf}: second is the cluster certificate"
        );
        let (_, l) = X509Certificate::from_der(&chain[0]).expect("leaf parses");
        let (_, c) = X509Certificate::from_der(&cluster[0]).expect("cluster parses");
        assert_eq!(l.issuer().as_raw(), c.subject().as_raw(), "{leaf}");
        assert!(
            l.validity().not_after <= c.validity().not_after,
            "{leaf} outlives the cluster certificate"
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A TLS 1.3 handshake between `openssl s_server` (the HSM: demands a client certificate and
/// verifies it against the customer CA) and `openssl s_client` (the application: pins the
/// customer CA and checks the server's IP SAN). Each side presents its chain file.
/// Returns s_client's output; `Ok` only if the server answered over the verified connection.
fn handshake(ca: &Path, server: &Path, client: &Path) -> Result<String, String> {
    let cert = |stem: &Path, ext: &str| {
        let mut p = stem.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    for _attempt in 0..3 {
        let port = free_port().to_string();
        let accept = format!("127.0.0.1:{port}");
        let mut server_proc = Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                &accept,
                "-naccept",
                "1",
                "-tls1_3",
                "-Verify",
                "1",
                "-verify_return_error",
                "-CAfile",
                s(ca),
                "-cert",
                s(&cert(server, ".crt.pem")),
                "-cert_chain",
                s(&cert(server, ".crt.pem")),
                "-key",
                s(&cert(server, ".key.pem")),
                "-www",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run openssl s_server (these tests need the openssl command-line tool)");
        let (tx, rx) = mpsc::channel();
        let stdout = server_proc.stdout.take().expect("piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let server_err = drain(server_proc.stderr.take().expect("piped"));
        let ready = loop {
            match rx.recv_timeout(DEADLINE) {
                Ok(line) if line.trim() == "ACCEPT" => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        if !ready {
            // Most likely the port was taken between free_port() and the bind: try another.
            let _ = server_proc.kill();
            let _ = server_proc.wait();
            let _ = server_err.join();
            continue;
        }
        let mut client_cmd = Command::new("openssl");
        client_cmd.args([
            "s_client",
            "-connect",
            &accept,
            "-tls1_3",
            "-CAfile",
            s(ca),
            "-verify_return_error",
            "-verify_ip",
            "127.0.0.1",
            "-cert",
            s(&cert(client, ".crt.pem")),
            "-cert_chain",
            s(&cert(client, ".crt.pem")),
            "-key",
            s(&cert(client, ".key.pem")),
            "-ign_eof",
        ]);
        let out = run(client_cmd, b"GET / HTTP/1.0\r\n\r\n");
        let _ = server_proc.kill();
        let _ = server_proc.wait();
        let server_log = String::from_utf8_lossy(&server_err.join().expect("reader")).into_owned();
        let client_out = String::from_utf8_lossy(&out.stdout).into_owned();
        // s_server -www answers only once the handshake, client certificate included, passed.
        let answered = client_out.contains("HTTP/1.0 200 ok");
        return if out.status.success() && answered {
            Ok(client_out)
        } else {
            Err(format!("{}\nserver stderr:\n{server_log}", text(&out)))
        };
    }
    panic!("openssl s_server never started listening (3 ports tried)");
}

#[test]
fn customer_flow_with_openssl_verifies() {
    let f = Fixture::installed();
    assert_cluster_output(&f.dir, &f.ca.0);
}

#[test]
fn mutual_tls_handshake_with_openssl_succeeds() {
    let f = Fixture::installed();
    let out = handshake(&f.ca.0, &f.dir.join("hsm0"), &f.dir.join("app"))
        .unwrap_or_else(|e| panic!("handshake failed:\n{e}"));
    assert!(out.contains("Protocol  : TLSv1.3"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    // The server's page shows the client certificate it verified.
    assert!(out.contains("Client certificate"), "{out}");
    assert!(out.contains("Subject: CN=app"), "{out}");
}

#[test]
fn handshake_refuses_a_client_of_another_cluster() {
    let f = Fixture::installed();
    // A second cluster under another customer CA: its client must not get into the first.
    let other = f.root.join("other");
    hsmpool_ok(&[
        "cluster",
        "init",
        "--dir",
        s(&other),
        "--test-only-sign-with-new-ca",
    ]);
    hsmpool_ok(&[
        "cluster",
        "issue-client",
        "--dir",
        s(&other),
        "--name",
        "intruder",
    ]);
    let refused = handshake(&f.ca.0, &f.dir.join("hsm0"), &other.join("intruder"));
    assert!(
        refused.is_err(),
        "the server accepted a foreign client:\n{refused:?}"
    );
    // And the application side refuses a server of another cluster.
    hsmpool_ok(&[
        "cluster",
        "issue-hsm",
        "--dir",
        s(&other),
        "--name",
        "rogue",
    ]);
    let refused = handshake(&f.ca.0, &other.join("rogue"), &f.dir.join("app"));
    assert!(
        refused.is_err(),
        "the client accepted a foreign server:\n{refused:?}"
    );
}

#[test]
fn private_keys_are_mode_0600_and_never_printed() {
    let f = Fixture::installed();
    let key = std::fs::read_to_string(f.dir.join("cluster.key.pem")).expect("key");
    assert!(key.contains("BEGIN PRIVATE KEY"), "PKCS #8 PEM");
    for name in ["cluster", "hsm0", "app"] {
        assert_eq!(
            mode(&f.dir.join(format!("{name}.key.pem"))),
            0o600,
            "{name}"
        );
    }
    // The key body (not just its PEM marker) appears in no output of a fresh run.
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let o = hsmpool(&[
        "cluster",
        "issue-client",
        "--dir",
        s(&f.dir),
        "--name",
        "app2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let printed = text(&o).replace('\n', "");
    assert!(!printed.contains(&body[..40]));
}

#[test]
fn install_refuses_a_cert_signed_by_another_ca_with_the_same_name() {
    let f = Fixture::new();
    // Same subject as the real customer CA, different key: only the signature check tells.
    let other_dir = f.root.join("evil");
    std::fs::create_dir(&other_dir).expect("mkdir");
    let evil = customer_ca(&other_dir, "ca", "/O=Acme Corp/CN=Acme Root CA");
    let signed = f.root.join("signed-by-evil.pem");
    customer_signs(&f.csr(), &evil, &signed, true);
    hsmpool_refused(
        &f.install_args(&signed, &f.ca.0),
        &["signature does not verify", "Acme Root CA"],
    );
    assert!(!f.dir.join("cluster.crt.pem").exists());
    assert!(!f.dir.join("customer-ca.pem").exists());
}

#[test]
fn install_refuses_a_cert_issued_by_another_ca() {
    let f = Fixture::new();
    let other = customer_ca(&f.root, "other-ca", "/CN=Someone Else CA");
    let signed = f.root.join("signed-by-other.pem");
    customer_signs(&f.csr(), &other, &signed, true);
    hsmpool_refused(
        &f.install_args(&signed, &f.ca.0),
        &["issued by", "Someone Else CA", "Acme Root CA"],
    );
    assert!(!f.dir.join("cluster.crt.pem").exists());
}

#[test]
fn install_refuses_a_cert_for_another_key() {
    let f = Fixture::new();
    // A CSR with the same CA extensions but a key that is not the cluster's.
    let csr = f.root.join("foreign.csr.pem");
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&f.root.join("foreign.key.pem")),
        "-out",
        s(&csr),
        "-subj",
        "/CN=hsmpool cluster prod",
        "-addext",
        "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    let signed = f.root.join("foreign.pem");
    customer_signs(&csr, &f.ca, &signed, true);
    hsmpool_refused(
        &f.install_args(&signed, &f.ca.0),
        &["public key is not the cluster's key"],
    );
    assert!(!f.dir.join("cluster.crt.pem").exists());
}

#[test]
fn install_refuses_a_cert_signed_without_the_ca_extensions() {
    let f = Fixture::new();
    let signed = f.root.join("plain.pem");
    customer_signs(&f.csr(), &f.ca, &signed, false);
    hsmpool_refused(
        &f.install_args(&signed, &f.ca.0),
        &["not a CA certificate", "-copy_extensions copyall"],
    );
}

#[test]
fn install_refuses_a_file_that_is_not_a_certificate() {
    let f = Fixture::new();
    let junk = f.root.join("junk.pem");
    std::fs::write(&junk, "this is not a certificate\n").expect("write");
    hsmpool_refused(
        &f.install_args(&junk, &f.ca.0),
        &["junk.pem", "not a certificate"],
    );
    // The CSR is PEM, but not a certificate.
    let csr = f.csr();
    hsmpool_refused(&f.install_args(&csr, &f.ca.0), &["not a certificate"]);
    // A CERTIFICATE block whose contents are not one.
    let fake = f.root.join("fake.pem");
    std::fs::write(
        &fake,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    hsmpool_refused(
        &f.install_args(&fake, &f.ca.0),
        &["not an X.509 certificate"],
    );
    // And as the CA.
    let signed = f.root.join("signed.pem");
    customer_signs(&f.csr(), &f.ca, &signed, true);
    hsmpool_refused(
        &f.install_args(&signed, &junk),
        &["junk.pem", "not a certificate"],
    );
}

#[test]
fn issue_refuses_before_install() {
    let f = Fixture::new();
    hsmpool_refused(
        &["cluster", "issue-hsm", "--dir", s(&f.dir), "--name", "hsm0"],
        &["not installed yet", "cluster.crt.pem"],
    );
    hsmpool_refused(
        &[
            "cluster",
            "issue-client",
            "--dir",
            s(&f.dir),
            "--name",
            "app",
        ],
        &["not installed yet"],
    );
    assert!(!f.dir.join("hsm0.key.pem").exists());
}

#[test]
fn init_keeps_an_existing_key_unless_forced() {
    let f = Fixture::new();
    let key = f.dir.join("cluster.key.pem");
    let before = std::fs::read(&key).expect("key");
    hsmpool_refused(
        &["cluster", "init", "--dir", s(&f.dir)],
        &["already exists", "--force"],
    );
    assert_eq!(std::fs::read(&key).expect("key"), before, "key unchanged");
    // A key someone made readable is replaced by a 0600 file under --force.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    hsmpool_ok(&["cluster", "init", "--dir", s(&f.dir), "--force"]);
    assert_ne!(std::fs::read(&key).expect("key"), before, "new key");
    assert_eq!(mode(&key), 0o600);
    let subject = openssl_ok(&["req", "-in", s(&f.csr()), "-noout", "-subject"]);
    assert!(
        subject.contains("CN = hsmpool cluster default"),
        "{subject}"
    );
}

#[test]
fn issue_keeps_an_existing_leaf_key_unless_forced() {
    let f = Fixture::installed();
    let args = [
        "cluster",
        "issue-client",
        "--dir",
        s(&f.dir),
        "--name",
        "app",
    ];
    hsmpool_refused(&args, &["app.key.pem", "already exists"]);
    let mut forced = args.to_vec();
    forced.push("--force");
    hsmpool_ok(&forced);
    assert_verifies(
        &f.ca.0,
        &f.dir.join("cluster.crt.pem"),
        &f.dir.join("app.crt.pem"),
        "sslclient",
    );
}

#[test]
fn bad_names_and_addresses_are_refused() {
    let f = Fixture::installed();
    let d = s(&f.dir);
    for name in ["../escape", "cluster", "customer-ca", ".hidden", ""] {
        hsmpool_refused(
            &["cluster", "issue-client", "--dir", d, "--name", name],
            &["name"],
        );
    }
    hsmpool_refused(
        &[
            "cluster",
            "issue-hsm",
            "--dir",
            d,
            "--name",
            "h",
            "--ip",
            "300.1.1.1",
        ],
        &["not an IP address"],
    );
    hsmpool_refused(
        &[
            "cluster",
            "issue-hsm",
            "--dir",
            d,
            "--name",
            "h",
            "--dns",
            "bad name",
        ],
        &["not a DNS name"],
    );
    assert!(!f.dir.join("h.key.pem").exists());
}

#[test]
fn test_shortcut_output_verifies_and_handshakes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    let o = hsmpool(&[
        "cluster",
        "init",
        "--dir",
        s(&dir),
        "--test-only-sign-with-new-ca",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("WARNING") && err.contains("tests only"),
        "{err}"
    );
    assert_eq!(mode(&dir.join("customer-ca.key.pem")), 0o600);
    hsmpool_ok(&[
        "cluster",
        "issue-hsm",
        "--dir",
        s(&dir),
        "--name",
        "hsm0",
        "--dns",
        "hsm0.cluster.internal",
    ]);
    hsmpool_ok(&["cluster", "issue-client", "--dir", s(&dir), "--name", "app"]);
    let ca = dir.join("customer-ca.pem");
    assert_cluster_output(&dir, &ca);
    handshake(&ca, &dir.join("hsm0"), &dir.join("app"))
        .unwrap_or_else(|e| panic!("handshake failed:\n{e}"));
    // The shortcut refuses to replace its CA key, like the cluster key, without --force.
    hsmpool_refused(
        &[
            "cluster",
            "init",
            "--dir",
            s(&dir),
            "--test-only-sign-with-new-ca",
        ],
        &["already exists"],
    );
}
