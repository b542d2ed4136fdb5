//! Test certificates, made with the real `openssl` command (a test that needs it fails, never
//! skips, when it is missing), laid out as a CloudHSM-style cluster expects:
//!
//! ```text
//! customer CA (self-signed)            rogue CA (self-signed, unrelated)
//!  ├── cluster certificate (CA:true)     └── rogue client
//!  │    └── HSM server certificates (IP SAN 127.0.0.1, serverAuth)
//!  └── client certificates (clientAuth)
//! ```
//!
//! The daemon is given an HSM certificate chain (HSM, then cluster) and trusts the customer CA
//! for clients; a client pins the customer CA. Keys are EC P-256, PKCS #8 PEM. Everything lives
//! in a temporary directory that goes away with the [`Pki`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// A certificate (chain) and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The certificate, followed by its issuing chain where there is one.
    pub cert: PathBuf,
    /// The private key (PKCS #8 PEM).
    pub key: PathBuf,
}

/// A customer CA, a cluster certificate under it, an unrelated rogue CA, and helpers to issue
/// HSM and client certificates.
pub struct Pki {
    dir: tempfile::TempDir,
    openssl: PathBuf,
    serial: AtomicU64,
    /// The customer CA certificate: the trust anchor of both sides.
    pub customer_ca: PathBuf,
    customer_ca_key: PathBuf,
    /// The cluster certificate (a CA under the customer CA that issues HSM certificates).
    pub cluster: Identity,
    /// An unrelated CA.
    pub rogue_ca: PathBuf,
    rogue_ca_key: PathBuf,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

const CA_EXT: &str = "basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
";
const CLUSTER_EXT: &str = "basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

impl Pki {
    /// Make the customer CA, the cluster certificate and the rogue CA.
    pub fn new() -> Pki {
        let openssl = crate::require_tool("openssl");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let p = |n: &str| dir.path().join(n);
        let pki = Pki {
            openssl,
            serial: AtomicU64::new(0x1000),
            customer_ca: p("customer-ca.pem"),
            customer_ca_key: p("customer-ca.key"),
            cluster: Identity {
                cert: p("cluster.pem"),
                key: p("cluster.key"),
            },
            rogue_ca: p("rogue-ca.pem"),
            rogue_ca_key: p("rogue-ca.key"),
            dir,
        };
        pki.self_signed("hsmpool test customer CA", true);
        pki.self_signed("hsmpool test rogue CA", false);
        pki.issue(
            "hsmpool test cluster",
            &pki.cluster,
            (&pki.customer_ca, &pki.customer_ca_key),
            CLUSTER_EXT,
        );
        pki
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new(&self.openssl)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn key(&self, path: &Path) {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path.to_str().expect("UTF-8 temp path"),
        ]);
    }

    fn next_serial(&self) -> String {
        format!("{}", self.serial.fetch_add(1, Ordering::Relaxed))
    }

    fn self_signed(&self, cn: &str, customer: bool) {
        let (cert, key) = if customer {
            (&self.customer_ca, &self.customer_ca_key)
        } else {
            (&self.rogue_ca, &self.rogue_ca_key)
        };
        self.key(key);
        let cnf = self.dir.path().join(format!("{}.cnf", self.next_serial()));
        std::fs::write(
            &cnf,
            format!("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n[v3]\n{CA_EXT}"),
        )
        .expect("write openssl config");
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            key.to_str().expect("UTF-8 temp path"),
            "-config",
            cnf.to_str().expect("UTF-8 temp path"),
            "-extensions",
            "v3",
            "-days",
            "3650",
            "-set_serial",
            &self.next_serial(),
            "-out",
            cert.to_str().expect("UTF-8 temp path"),
        ]);
    }

    /// A new key and a certificate for it signed by `issuer` (certificate, key), with the
    /// extensions `ext`; the certificate file holds just the certificate.
    fn issue(&self, cn: &str, id: &Identity, issuer: (&Path, &Path), ext: &str) {
        self.key(&id.key);
        let n = self.next_serial();
        let csr = self.dir.path().join(format!("{n}.csr"));
        let extfile = self.dir.path().join(format!("{n}.ext"));
        std::fs::write(&extfile, format!("[v3]\n{ext}")).expect("write extensions");
        self.openssl(&[
            "req",
            "-new",
            "-key",
            id.key.to_str().expect("UTF-8 temp path"),
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            csr.to_str().expect("UTF-8 temp path"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().expect("UTF-8 temp path"),
            "-CA",
            issuer.0.to_str().expect("UTF-8 temp path"),
            "-CAkey",
            issuer.1.to_str().expect("UTF-8 temp path"),
            "-set_serial",
            &n,
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            extfile.to_str().expect("UTF-8 temp path"),
            "-extensions",
            "v3",
            "-out",
            id.cert.to_str().expect("UTF-8 temp path"),
        ]);
    }

    fn paths(&self, stem: &str) -> Identity {
        Identity {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
        }
    }

    /// An HSM server certificate signed by the cluster certificate, for the IP addresses
    /// `ips` and DNS names `dns`; its `cert` file is the chain the daemon presents: the HSM's
    /// certificate, then the cluster certificate.
    pub fn hsm(&self, name: &str, ips: &[&str], dns: &[&str]) -> Identity {
        let id = self.paths(&format!("hsm-{name}"));
        let san: Vec<String> = ips
            .iter()
            .map(|ip| format!("IP:{ip}"))
            .chain(dns.iter().map(|d| format!("DNS:{d}")))
            .collect();
        let ext = format!(
            "basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = {}
authorityKeyIdentifier = keyid
",
            san.join(", ")
        );
        let leaf = self.paths(&format!("hsm-{name}-leaf"));
        let leaf = Identity {
            cert: leaf.cert,
            key: id.key.clone(),
        };
        self.issue(
            &format!("hsmpool test HSM {name}"),
            &leaf,
            (&self.cluster.cert, &self.cluster.key),
            &ext,
        );
        let mut chain = std::fs::read(&leaf.cert).expect("the leaf certificate");
        chain.extend(std::fs::read(&self.cluster.cert).expect("the cluster certificate"));
        std::fs::write(&id.cert, chain).expect("write the chain");
        id
    }

    /// The usual HSM certificate: for 127.0.0.1 (and `localhost`).
    pub fn loopback_hsm(&self, name: &str) -> Identity {
        self.hsm(name, &["127.0.0.1"], &["localhost"])
    }

    /// A client certificate signed by the customer CA.
    pub fn client(&self, name: &str) -> Identity {
        self.client_under(name, true)
    }

    /// A client certificate signed by the rogue CA.
    pub fn rogue_client(&self, name: &str) -> Identity {
        self.client_under(name, false)
    }

    fn client_under(&self, name: &str, customer: bool) -> Identity {
        let id = self.paths(&format!("client-{name}"));
        let issuer = if customer {
            (&self.customer_ca, &self.customer_ca_key)
        } else {
            (&self.rogue_ca, &self.rogue_ca_key)
        };
        self.issue(
            &format!("hsmpool test client {name}"),
            &id,
            (issuer.0.as_path(), issuer.1.as_path()),
            "basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
",
        );
        id
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
