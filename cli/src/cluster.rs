//! The cluster's certificate authority flow: `hsmpool cluster init | install | issue-hsm |
//! issue-client`.
//!
//! The trust model is the customer's: the cluster makes its own key pair and a CSR asking to be
//! a CA (`pathlen:0`); the customer signs that CSR with their own CA and installs the result.
//! The cluster certificate then issues every HSM's TLS server certificate and every
//! application's client certificate. Clients pin the customer's CA certificate; daemons verify
//! client certificates against it, so each leaf file holds the leaf followed by the cluster
//! certificate (the chain its owner presents).
//!
//! Everything in one cluster directory:
//!
//! | file | what | written by |
//! |---|---|---|
//! | `cluster.key.pem` | the cluster's private key (PKCS #8, mode 0600) | `init` |
//! | `cluster.csr.pem` | the CSR the customer signs | `init` |
//! | `cluster.crt.pem` | the cluster certificate the customer signed | `install` |
//! | `customer-ca.pem` | the customer's CA certificate, the trust anchor | `install` |
//! | `NAME.key.pem`, `NAME.crt.pem` | an HSM's or a client's key (0600) and chain | `issue` |
//!
//! Private keys are only ever written to files created with mode 0600; they are never printed,
//! logged or put into an error message.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;
use zeroize::Zeroizing;

/// The cluster's private key.
pub const CLUSTER_KEY: &str = "cluster.key.pem";
/// The cluster's certificate signing request, for the customer to sign.
pub const CLUSTER_CSR: &str = "cluster.csr.pem";
/// The cluster certificate, as signed by the customer's CA.
pub const CLUSTER_CERT: &str = "cluster.crt.pem";
/// The customer's CA certificate: what clients pin and daemons verify clients against.
pub const CUSTOMER_CA: &str = "customer-ca.pem";
/// The throwaway customer CA's key, written only by the test shortcut.
pub const CUSTOMER_CA_KEY: &str = "customer-ca.key.pem";

/// The cluster name used when `--name` is not given.
pub const DEFAULT_CLUSTER_NAME: &str = "default";

/// How long an issued HSM or client certificate is valid (never past the cluster certificate).
const LEAF_VALIDITY: Duration = Duration::days(365);
/// How long the test shortcut's throwaway CA and the cluster certificate it signs are valid.
const TEST_CA_VALIDITY: Duration = Duration::days(10 * 365);
const TEST_CLUSTER_VALIDITY: Duration = Duration::days(5 * 365);
/// Back-dating of `notBefore`, so a peer whose clock is a little behind accepts a fresh certificate.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// What can go wrong in the cluster CA flow.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// A file that would be replaced already exists.
    #[error("{} already exists; refusing to overwrite it (--force replaces it)", .0.display())]
    Exists(PathBuf),
    /// `issue-*` before `install`.
    #[error(
        "the cluster in {} is not installed yet ({} is missing): run `hsmpool cluster init` and \
         `hsmpool cluster install` first",
        dir.display(),
        missing
    )]
    NotInstalled { dir: PathBuf, missing: &'static str },
    /// A certificate, CSR or key given to us fails a check; `what` names the file.
    #[error("{what}: {why}")]
    Refused { what: String, why: String },
    /// A bad name, address or option value.
    #[error("{0}")]
    Invalid(String),
    /// Certificate or key generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What [`init`] wrote.
#[derive(Debug)]
pub struct Init {
    /// The cluster's private key file.
    pub key: PathBuf,
    /// The CSR file.
    pub csr: PathBuf,
    /// The CSR's subject common name.
    pub common_name: String,
    /// Files of the previous cluster that `force` removed because they no longer match the key.
    pub removed: Vec<PathBuf>,
}

/// What [`install`] checked and wrote.
#[derive(Debug)]
pub struct Installed {
    /// `DIR/cluster.crt.pem`.
    pub cert: PathBuf,
    /// `DIR/customer-ca.pem`.
    pub ca: PathBuf,
    /// The cluster certificate's subject.
    pub subject: String,
    /// The customer CA's subject.
    pub issuer: String,
    /// The cluster certificate's `notAfter`.
    pub not_after: String,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone)]
pub enum Leaf {
    /// An HSM daemon's TLS server certificate (EKU serverAuth) for these addresses and names.
    Hsm { ips: Vec<IpAddr>, dns: Vec<String> },
    /// An application's TLS client certificate (EKU clientAuth).
    Client,
}

/// What [`issue`] wrote.
#[derive(Debug)]
pub struct Issued {
    /// `DIR/NAME.key.pem`.
    pub key: PathBuf,
    /// `DIR/NAME.crt.pem`: the leaf followed by the cluster certificate.
    pub chain: PathBuf,
    /// The leaf's `notAfter`.
    pub not_after: String,
}

/// The CSR parameters of a cluster: CN=`hsmpool cluster NAME`, CA:TRUE pathlen:0,
/// keyCertSign + cRLSign.
pub fn cluster_csr_params(name: &str) -> Result<CertificateParams, Error> {
    let cn = format!("hsmpool cluster {name}");
    if name.is_empty() || name.chars().any(char::is_control) || cn.len() > 64 {
        return Err(Error::Invalid(format!(
            "cluster name {name:?}: must be 1 to {} printable characters",
            64 - "hsmpool cluster ".len()
        )));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// `hsmpool cluster init`: make the cluster key pair and the CSR in `dir` (created 0700 if
/// missing). An existing key is kept unless `force`; with `force`, an installed cluster
/// certificate (which certifies the old key) is removed too.
pub fn init(dir: &Path, name: &str, force: bool) -> Result<Init, Error> {
    let params = cluster_csr_params(name)?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let key_path = dir.join(CLUSTER_KEY);
    if !force && key_path.exists() {
        return Err(Error::Exists(key_path));
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = params.serialize_request(&key)?.pem()?;
    write_private(&key_path, &Zeroizing::new(key.serialize_pem()), force)?;
    let csr_path = dir.join(CLUSTER_CSR);
    write_public(&csr_path, csr.as_bytes())?;
    let mut removed = Vec::new();
    let stale = dir.join(CLUSTER_CERT);
    match fs::remove_file(&stale) {
        Ok(()) => removed.push(stale),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&stale)(e)),
    }
    Ok(Init {
        key: key_path,
        csr: csr_path,
        common_name: format!("hsmpool cluster {name}"),
        removed,
    })
}

/// `hsmpool cluster install`: check the customer-signed cluster certificate `cert_file` against
/// the cluster key and the customer CA certificate `ca_file` (see [`check_cluster_cert`]), then
/// copy both into `dir`.
pub fn install(dir: &Path, cert_file: &Path, ca_file: &Path) -> Result<Installed, Error> {
    let cert_pem = fs::read(cert_file).map_err(io_err(cert_file))?;
    let ca_pem = fs::read(ca_file).map_err(io_err(ca_file))?;
    let cert_der = first_certificate(&cert_pem, &cert_file.display().to_string())?;
    let ca_der = first_certificate(&ca_pem, &ca_file.display().to_string())?;
    install_der(dir, &cert_der, &ca_der, &cert_file.display().to_string())
}

fn install_der(
    dir: &Path,
    cert_der: &[u8],
    ca_der: &[u8],
    cert_name: &str,
) -> Result<Installed, Error> {
    let key = load_private_key(&dir.join(CLUSTER_KEY))?;
    let facts = check_cluster_cert(&key.subject_public_key_info(), cert_der, ca_der, now())
        .map_err(|why| Error::Refused {
            what: cert_name.to_string(),
            why,
        })?;
    // The leaves' issuer name is re-encoded from this certificate's subject: make sure that
    // works now rather than at the first `issue`.
    Issuer::from_ca_cert_der(&cert_der.into(), &key).map_err(|e| Error::Refused {
        what: cert_name.to_string(),
        why: format!("its subject name cannot be used to issue certificates ({e})"),
    })?;
    let cert = dir.join(CLUSTER_CERT);
    let ca = dir.join(CUSTOMER_CA);
    write_public(&ca, pem_certificates(&[ca_der]).as_bytes())?;
    write_public(&cert, pem_certificates(&[cert_der]).as_bytes())?;
    Ok(Installed {
        cert,
        ca,
        subject: facts.subject,
        issuer: facts.issuer,
        not_after: facts.not_after,
    })
}

/// What [`check_cluster_cert`] found in an acceptable cluster certificate.
#[derive(Debug)]
pub struct CertFacts {
    /// The cluster certificate's subject.
    pub subject: String,
    /// The customer CA's subject.
    pub issuer: String,
    /// The cluster certificate's `notAfter`.
    pub not_after: String,
}

/// Whether `cert_der` may serve as the cluster certificate: it certifies the cluster key (whose
/// SubjectPublicKeyInfo is `cluster_spki`), it is a CA certificate that may sign certificates,
/// it was issued and signed by the CA certificate `ca_der`, which is itself a CA, and both are
/// valid at `now`. The error says which check failed, in words an operator can act on.
pub fn check_cluster_cert(
    cluster_spki: &[u8],
    cert_der: &[u8],
    ca_der: &[u8],
    now: ASN1Time,
) -> Result<CertFacts, String> {
    let cert = parse_certificate(cert_der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let ca = parse_certificate(ca_der)
        .map_err(|e| format!("the customer CA file is not an X.509 certificate: {e}"))?;
    if !is_ca(&ca)? {
        return Err(format!(
            "the customer CA certificate ({}) is not a CA certificate (no basicConstraints CA:TRUE)",
            ca.subject()
        ));
    }
    if cert.public_key().raw != cluster_spki {
        return Err(format!(
            "its public key is not the cluster's key ({CLUSTER_KEY}): it certifies another key, \
             not the one in {CLUSTER_CSR}"
        ));
    }
    if !is_ca(&cert)? {
        return Err(
            "it is not a CA certificate (no basicConstraints CA:TRUE), so it cannot issue the \
             HSM and client certificates; sign the CSR with `-copy_extensions copyall` so the \
             CA extensions it requests are kept"
                .into(),
        );
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            return Err(
                "its keyUsage does not include keyCertSign, so it cannot issue certificates".into(),
            )
        }
        Ok(_) => {}
        Err(e) => return Err(format!("its keyUsage extension is malformed: {e}")),
    }
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(format!(
            "it was issued by \"{}\", not by the customer CA given (\"{}\")",
            cert.issuer(),
            ca.subject()
        ));
    }
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Err(format!(
            "its signature does not verify under the key of the customer CA given (\"{}\"): it \
             was signed by a different CA key",
            ca.subject()
        ));
    }
    for (who, c) in [("it", &cert), ("the customer CA certificate", &ca)] {
        let v = c.validity();
        if !v.is_valid_at(now) {
            return Err(format!(
                "{who} is not valid now ({now}): valid from {} to {}",
                v.not_before, v.not_after
            ));
        }
    }
    if cert.subject().iter().any(|rdn| rdn.iter().count() != 1) {
        return Err("its subject has an empty or multi-valued RDN, which is not supported".into());
    }
    Ok(CertFacts {
        subject: cert.subject().to_string(),
        issuer: ca.subject().to_string(),
        not_after: cert.validity().not_after.to_string(),
    })
}

fn is_ca(cert: &X509Certificate<'_>) -> Result<bool, String> {
    match cert.basic_constraints() {
        Ok(bc) => Ok(bc.is_some_and(|bc| bc.value.ca)),
        Err(e) => Err(format!(
            "malformed basicConstraints in \"{}\": {e}",
            cert.subject()
        )),
    }
}

/// `hsmpool cluster issue-hsm` / `issue-client`: a fresh ECDSA P-256 key and a certificate for
/// `leaf`, signed by the installed cluster certificate, as `DIR/NAME.key.pem` (0600) and
/// `DIR/NAME.crt.pem` (leaf, then cluster certificate). An existing key is kept unless `force`.
pub fn issue(dir: &Path, name: &str, leaf: &Leaf, force: bool) -> Result<Issued, Error> {
    check_leaf_name(name)?;
    for (file, missing) in [
        (CLUSTER_KEY, CLUSTER_KEY),
        (CLUSTER_CERT, CLUSTER_CERT),
        (CUSTOMER_CA, CUSTOMER_CA),
    ] {
        if !dir.join(file).exists() {
            return Err(Error::NotInstalled {
                dir: dir.to_path_buf(),
                missing,
            });
        }
    }
    let key_path = dir.join(format!("{name}.key.pem"));
    let chain_path = dir.join(format!("{name}.crt.pem"));
    if !force && key_path.exists() {
        return Err(Error::Exists(key_path));
    }
    let cluster_key = load_private_key(&dir.join(CLUSTER_KEY))?;
    let cluster_der = read_certificate(&dir.join(CLUSTER_CERT))?;
    let ca_der = read_certificate(&dir.join(CUSTOMER_CA))?;
    // The files may have changed (or expired) since install: the same checks again.
    let now_t = now();
    check_cluster_cert(
        &cluster_key.subject_public_key_info(),
        &cluster_der,
        &ca_der,
        now_t,
    )
    .map_err(|why| Error::Refused {
        what: dir.join(CLUSTER_CERT).display().to_string(),
        why,
    })?;
    let cluster_not_after = parse_certificate(&cluster_der)
        .map_err(|e| Error::Invalid(e.to_string()))?
        .validity()
        .not_after
        .to_datetime();

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    let start = now_t.to_datetime();
    params.not_before = start - CLOCK_SKEW;
    params.not_after = (start + LEAF_VALIDITY).min(cluster_not_after);
    match leaf {
        Leaf::Hsm { ips, dns } => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            for ip in ips {
                params.subject_alt_names.push(SanType::IpAddress(*ip));
            }
            for host in dns {
                check_dns_name(host)?;
                let ia5 = host
                    .clone()
                    .try_into()
                    .map_err(|_| Error::Invalid(format!("--dns {host:?}: not an ASCII name")))?;
                params.subject_alt_names.push(SanType::DnsName(ia5));
            }
            if params.subject_alt_names.is_empty() {
                return Err(Error::Invalid(
                    "an HSM certificate needs at least one --ip or --dns".into(),
                ));
            }
        }
        Leaf::Client => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    let issuer = Issuer::from_ca_cert_der(&cluster_der.as_slice().into(), &cluster_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, &issuer)?;
    write_private(&key_path, &Zeroizing::new(key.serialize_pem()), force)?;
    write_public(
        &chain_path,
        pem_certificates(&[cert.der().as_ref(), &cluster_der]).as_bytes(),
    )?;
    Ok(Issued {
        key: key_path,
        chain: chain_path,
        not_after: ASN1Time::new(params.not_after).to_string(),
    })
}

/// `hsmpool cluster init --test-only-sign-with-new-ca`: [`init`], then make a throwaway
/// customer CA (`customer-ca.pem`, `customer-ca.key.pem`), sign the CSR with it and
/// [`install`] the result. For tests only: a real customer CA's key never sits beside the
/// cluster's.
pub fn init_with_test_ca(dir: &Path, name: &str, force: bool) -> Result<(Init, Installed), Error> {
    let ca_key_path = dir.join(CUSTOMER_CA_KEY);
    if !force && ca_key_path.exists() {
        return Err(Error::Exists(ca_key_path));
    }
    let init = init(dir, name, force)?;
    let start = now().to_datetime();

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hsmpool TEST-ONLY customer CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.serial_number = Some(random_serial()?);
    ca_params.not_before = start - CLOCK_SKEW;
    ca_params.not_after = start + TEST_CA_VALIDITY;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write_private(&ca_key_path, &Zeroizing::new(ca_key.serialize_pem()), force)?;

    // Sign the CSR from its file, as the customer would, keeping the extensions it requests.
    let csr_pem = fs::read_to_string(&init.csr).map_err(io_err(&init.csr))?;
    let mut csr = CertificateSigningRequestParams::from_pem(&csr_pem)?;
    csr.params.serial_number = Some(random_serial()?);
    csr.params.not_before = start - CLOCK_SKEW;
    csr.params.not_after = start + TEST_CLUSTER_VALIDITY;
    csr.params.use_authority_key_identifier_extension = true;
    let cluster_cert = csr.signed_by(&Issuer::new(ca_params, &ca_key))?;
    let installed = install_der(
        dir,
        cluster_cert.der(),
        ca_cert.der(),
        "the test CA's cluster certificate",
    )?;
    Ok((init, installed))
}

fn now() -> ASN1Time {
    ASN1Time::new(OffsetDateTime::now_utc())
}

fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Invalid("the random generator failed".into()))?;
    // Positive and 16 bytes long once DER-encoded (RFC 5280 allows up to 20).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A leaf name is a file name stem: it must not leave the directory or replace a cluster file.
fn check_leaf_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with(['.', '-'])
        && !["cluster", "customer-ca"].contains(&name);
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "name {name:?}: use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with . or -), and not \
             \"cluster\" or \"customer-ca\""
        )))
    }
}

fn check_dns_name(host: &str) -> Result<(), Error> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("--dns {host:?}: not a DNS name")))
    }
}

fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The DER of the first `CERTIFICATE` block in a PEM file (other blocks, and text between
/// blocks such as `openssl x509 -text` output, are ignored).
fn first_certificate(pem_bytes: &[u8], what: &str) -> Result<Vec<u8>, Error> {
    let refused = |why: String| Error::Refused {
        what: what.to_string(),
        why,
    };
    let blocks = pem::parse_many(pem_bytes)
        .map_err(|e| refused(format!("not a PEM certificate file: {e}")))?;
    let cert = blocks
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .ok_or_else(|| {
            refused("not a certificate: it holds no PEM \"CERTIFICATE\" block".to_string())
        })?;
    Ok(cert.into_contents())
}

fn read_certificate(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    first_certificate(&bytes, &path.display().to_string())
}

fn pem_certificates(ders: &[&[u8]]) -> String {
    let blocks: Vec<pem::Pem> = ders
        .iter()
        .map(|d| pem::Pem::new("CERTIFICATE", d.to_vec()))
        .collect();
    pem::encode_many(&blocks)
}

/// Load a PKCS #8 PEM private key, refusing a file that group or others can read.
fn load_private_key(path: &Path) -> Result<KeyPair, Error> {
    let mut f = OpenOptions::new().read(true).open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::Invalid(format!(
                "{}: no cluster key here; run `hsmpool cluster init` first",
                path.display()
            ))
        } else {
            io_err(path)(e)
        }
    })?;
    let mode = f.metadata().map_err(io_err(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::Refused {
            what: path.display().to_string(),
            why: format!(
                "private key file is readable by group or others (mode {:o}); chmod 600 it",
                mode & 0o777
            ),
        });
    }
    let mut text = Zeroizing::new(String::new());
    f.read_to_string(&mut text).map_err(io_err(path))?;
    // rcgen's error would not contain key bytes, but say only what is needed.
    KeyPair::from_pem(&text).map_err(|_| Error::Refused {
        what: path.display().to_string(),
        why: "not a PKCS #8 PEM private key".into(),
    })
}

/// Write a private key file with mode 0600. Without `replace`, an existing file is an error;
/// with it, the new file is written beside the old one and renamed over it, so the old file's
/// mode is not inherited and no reader sees half a key.
fn write_private(path: &Path, data: &str, replace: bool) -> Result<(), Error> {
    let target = if replace {
        let name = path
            .file_name()
            .map_or_else(|| "key".into(), |n| n.to_string_lossy().into_owned());
        path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
    } else {
        path.to_path_buf()
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists && !replace {
                Error::Exists(path.to_path_buf())
            } else {
                io_err(&target)(e)
            }
        })?;
    let written = f
        .write_all(data.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| {
            if replace {
                fs::rename(&target, path)
            } else {
                Ok(())
            }
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&target);
        return Err(io_err(path)(e));
    }
    Ok(())
}

fn write_public(path: &Path, data: &[u8]) -> Result<(), Error> {
    fs::write(path, data).map_err(io_err(path))
}

/// The `cluster` part of the usage text.
pub const USAGE: &str = "  cluster init --dir DIR [--name NAME] [--force]
                              make the cluster key (DIR/cluster.key.pem, 0600) and a CSR
                              (DIR/cluster.csr.pem) for your CA to sign; prints the commands
                              to run next. --force replaces an existing cluster key.
  cluster init --dir DIR --test-only-sign-with-new-ca [--name NAME] [--force]
                              the same, then sign it with a new throwaway CA and install it:
                              for tests only
  cluster install --dir DIR --cert SIGNED.pem --ca CUSTOMER_CA.pem
                              check and install the cluster certificate your CA signed
  cluster issue-hsm --dir DIR --name NAME [--ip ADDR]... [--dns HOST]... [--force]
                              an HSM's TLS server key and certificate chain, DIR/NAME.key.pem
                              and DIR/NAME.crt.pem (--ip defaults to 127.0.0.1)
  cluster issue-client --dir DIR --name NAME [--force]
                              an application's TLS client key and certificate chain
  cluster clone-key DATA_DIR...
                              give these HSM data directories one clone key (clone.key, 0600:
                              the one some of them already share, else a new one), so token
                              objects can be cloned between them, and the fleet's backup key
                              (backup.key, 0600), so their backups restore; run it on each
                              HSM's directory before the daemons start
  cluster wrap-key [--label LABEL]
                              put one trusted AES-256 wrapping key on every configured member
                              (HSMPOOL_CONF), by which token keys are copied between members
                              that have no clone path (vendor modules, mixed clusters); the
                              crypto officer's PIN comes from HSMPOOL_SO_PIN (a member's
                              so_pin_from wins); a member whose token has no officer once it
                              has a user (NSS softokn) takes part as its user, whose PIN comes
                              from HSMPOOL_PIN. LABEL defaults to [cluster] wrap_key_label.
";

#[derive(Default)]
struct Opts {
    dir: Option<PathBuf>,
    name: Option<String>,
    cert: Option<PathBuf>,
    ca: Option<PathBuf>,
    ips: Vec<IpAddr>,
    dns: Vec<String>,
    force: bool,
    test_ca: bool,
}

/// Parse `args` allowing only the options in `allowed`.
fn parse_opts(args: &[String], allowed: &[&str]) -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if !allowed.contains(&flag.as_str()) {
            return Err(format!("unexpected argument {flag:?}"));
        }
        if flag == "--force" {
            o.force = true;
            continue;
        }
        if flag == "--test-only-sign-with-new-ca" {
            o.test_ca = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .clone();
        let once = |slot: &mut Option<_>, v| {
            if slot.is_some() {
                return Err(format!("{flag} given twice"));
            }
            *slot = Some(v);
            Ok(())
        };
        match flag.as_str() {
            "--dir" => once(&mut o.dir, PathBuf::from(value))?,
            "--cert" => once(&mut o.cert, PathBuf::from(value))?,
            "--ca" => once(&mut o.ca, PathBuf::from(value))?,
            "--name" => {
                if o.name.is_some() {
                    return Err("--name given twice".into());
                }
                o.name = Some(value);
            }
            "--ip" => o.ips.push(
                value
                    .parse()
                    .map_err(|_| format!("--ip {value:?}: not an IP address"))?,
            ),
            "--dns" => o.dns.push(value),
            _ => return Err(format!("unexpected argument {flag:?}")),
        }
    }
    Ok(o)
}

fn required<T>(v: Option<T>, flag: &str) -> Result<T, String> {
    v.ok_or_else(|| format!("{flag} is required"))
}

/// Quote a path for a POSIX shell if it needs it.
fn shell(path: &Path) -> String {
    let s = path.display().to_string();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Run `hsmpool cluster ARGS...`, printing what was done and what to do next.
pub fn command(args: &[String]) -> Result<(), String> {
    let Some((verb, rest)) = args.split_first() else {
        return Err(format!("cluster needs a command\n{USAGE}"));
    };
    let msg = |e: Error| e.to_string();
    match verb.as_str() {
        "clone-key" => {
            if rest.is_empty() || rest.iter().any(|a| a.starts_with('-')) {
                return Err(format!("cluster clone-key needs data directories\n{USAGE}"));
            }
            let dirs: Vec<PathBuf> = rest.iter().map(PathBuf::from).collect();
            hsmpool_sim::cluster::provision(&dirs).map_err(|e| e.to_string())?;
            for d in &dirs {
                println!("{}: clone key and backup key in place", d.display());
            }
            Ok(())
        }
        "wrap-key" => wrap_key(rest),
        "init" => {
            let o = parse_opts(
                rest,
                &["--dir", "--name", "--force", "--test-only-sign-with-new-ca"],
            )?;
            let dir = required(o.dir, "--dir")?;
            let name = o.name.unwrap_or_else(|| DEFAULT_CLUSTER_NAME.to_string());
            if o.test_ca {
                eprintln!(
                    "hsmpool: WARNING: --test-only-sign-with-new-ca makes a throwaway customer CA \
                     whose key sits beside the cluster's; use it for tests only, never for a \
                     cluster that guards real keys"
                );
                let (init, installed) = init_with_test_ca(&dir, &name, o.force).map_err(msg)?;
                print_init(&init);
                println!(
                    "wrote {} (the TEST-ONLY customer CA key, mode 0600)",
                    dir.join(CUSTOMER_CA_KEY).display()
                );
                print_installed(&installed);
                return Ok(());
            }
            let init = init(&dir, &name, o.force).map_err(msg)?;
            print_init(&init);
            let signed = dir.join("cluster-signed.pem");
            println!(
                "\nNext, sign the CSR with your CA (OpenSSL 3; -copy_extensions copyall keeps the \
                 CA extensions the CSR asks for):\n\n  \
                 openssl x509 -req -in {csr} -CA customer-ca.pem -CAkey customer-ca.key.pem \
                 -copy_extensions copyall -days 1825 -sha256 -out {signed}\n\n\
                 then install it with your CA certificate:\n\n  \
                 hsmpool cluster install --dir {dir} --cert {signed} --ca customer-ca.pem",
                csr = shell(&init.csr),
                signed = shell(&signed),
                dir = shell(&dir),
            );
            Ok(())
        }
        "install" => {
            let o = parse_opts(rest, &["--dir", "--cert", "--ca"])?;
            let dir = required(o.dir, "--dir")?;
            let cert = required(o.cert, "--cert")?;
            let ca = required(o.ca, "--ca")?;
            let installed = install(&dir, &cert, &ca).map_err(msg)?;
            print_installed(&installed);
            println!(
                "\nNext: hsmpool cluster issue-hsm --dir {d} --name hsm0, and \
                 hsmpool cluster issue-client --dir {d} --name app",
                d = shell(&dir)
            );
            Ok(())
        }
        "issue-hsm" | "issue-client" => {
            let hsm = verb == "issue-hsm";
            let allowed: &[&str] = if hsm {
                &["--dir", "--name", "--ip", "--dns", "--force"]
            } else {
                &["--dir", "--name", "--force"]
            };
            let o = parse_opts(rest, allowed)?;
            let dir = required(o.dir, "--dir")?;
            let name = required(o.name, "--name")?;
            let leaf = if hsm {
                let ips = if o.ips.is_empty() {
                    vec![IpAddr::from([127, 0, 0, 1])]
                } else {
                    o.ips
                };
                Leaf::Hsm { ips, dns: o.dns }
            } else {
                Leaf::Client
            };
            let issued = issue(&dir, &name, &leaf, o.force).map_err(msg)?;
            println!("wrote {} (private key, mode 0600)", issued.key.display());
            println!(
                "wrote {} ({} certificate then the cluster certificate; valid until {})",
                issued.chain.display(),
                if hsm { "server" } else { "client" },
                issued.not_after
            );
            Ok(())
        }
        _ => Err(format!("unknown cluster command {verb:?}\n{USAGE}")),
    }
}

/// `cluster wrap-key`: the ceremony over every configured member.
fn wrap_key(rest: &[String]) -> Result<(), String> {
    let label = match rest {
        [] => None,
        [flag, label] if flag == "--label" => Some(label.clone()),
        _ => {
            return Err(format!(
                "cluster wrap-key takes only --label LABEL\n{USAGE}"
            ))
        }
    };
    let cfg = hsmpool_engine::config::Config::resolve(None).map_err(|e| e.to_string())?;
    let label = label
        .or_else(|| cfg.cluster.wrap_key_label.clone())
        .unwrap_or_else(|| hsmpool_engine::cluster::DEFAULT_WRAP_KEY_LABEL.to_owned());
    let so_pin = zeroize::Zeroizing::new(
        std::env::var("HSMPOOL_SO_PIN")
            .map_err(|_| "HSMPOOL_SO_PIN is not set".to_string())?
            .into_bytes(),
    );
    // Members whose token has no security officer once it has a user (NSS softokn) take part
    // as their user: HSMPOOL_PIN, when set.
    let user_pin = std::env::var("HSMPOOL_PIN")
        .ok()
        .map(|p| zeroize::Zeroizing::new(p.into_bytes()));
    let members = hsmpool_engine::backend::open_members(&cfg).map_err(|e| e.to_string())?;
    let auth = hsmpool_engine::cluster::ceremony::Auth::Pins {
        so: &so_pin,
        user: user_pin.as_deref().map(|p| p.as_slice()),
    };
    let done = hsmpool_engine::cluster::ceremony::run(&members, &label, &auth, false)?.done;
    for (b, d) in members.iter().zip(done) {
        let what = match d {
            hsmpool_engine::cluster::ceremony::Done::Kept => "held it already",
            hsmpool_engine::cluster::ceremony::Done::Made => "made it",
            hsmpool_engine::cluster::ceremony::Done::Copied => "received it",
        };
        println!("{}: {what}", b.describe());
    }
    println!("wrapping key {label:?}: the same on every member, trusted, not extractable");
    Ok(())
}

fn print_init(init: &Init) {
    for f in &init.removed {
        println!(
            "removed {} (it certified the previous cluster key)",
            f.display()
        );
    }
    println!(
        "wrote {} (the cluster's private key, mode 0600: it stays here)",
        init.key.display()
    );
    println!(
        "wrote {} (CSR: CN={}, basicConstraints CA:TRUE pathlen:0, keyUsage keyCertSign cRLSign)",
        init.csr.display(),
        init.common_name
    );
}

fn print_installed(i: &Installed) {
    println!(
        "installed {} (\"{}\", issued by \"{}\", valid until {})",
        i.cert.display(),
        i.subject,
        i.issuer,
        i.not_after
    );
    println!("installed {} (the trust anchor)", i.ca.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        der: Vec<u8>,
    }

    fn ca(is_ca: bool) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "unit CA");
        params.is_ca = if is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        let der = params
            .self_signed(&key)
            .expect("self-signed")
            .der()
            .to_vec();
        Ca { params, key, der }
    }

    /// A cluster certificate for `key` from the cluster CSR parameters, adjusted by `edit`.
    fn cluster_cert(ca: &Ca, key: &KeyPair, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let mut params = cluster_csr_params("unit").expect("params");
        edit(&mut params);
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        params
            .signed_by(key, &issuer)
            .expect("signed")
            .der()
            .to_vec()
    }

    fn check(ca: &Ca, key: &KeyPair, cert: &[u8]) -> Result<CertFacts, String> {
        check_cluster_cert(&key.subject_public_key_info(), cert, &ca.der, now())
    }

    fn key() -> KeyPair {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key")
    }

    #[test]
    fn a_good_cluster_cert_passes() {
        let (ca, key) = (ca(true), key());
        let facts = check(&ca, &key, &cluster_cert(&ca, &key, |_| {})).expect("accepted");
        assert_eq!(facts.subject, "CN=hsmpool cluster unit");
        assert_eq!(facts.issuer, "CN=unit CA");
    }

    #[test]
    fn an_expired_or_not_yet_valid_cluster_cert_is_refused() {
        let (ca, key) = (ca(true), key());
        let start = OffsetDateTime::now_utc();
        let expired = cluster_cert(&ca, &key, |p| {
            p.not_before = start - Duration::days(30);
            p.not_after = start - Duration::days(1);
        });
        let why = check(&ca, &key, &expired).expect_err("expired");
        assert!(why.contains("not valid now"), "{why}");
        let future = cluster_cert(&ca, &key, |p| {
            p.not_before = start + Duration::days(1);
            p.not_after = start + Duration::days(30);
        });
        let why = check(&ca, &key, &future).expect_err("not yet valid");
        assert!(why.contains("not valid now"), "{why}");
    }

    #[test]
    fn a_cluster_cert_that_cannot_sign_certificates_is_refused() {
        let (ca, key) = (ca(true), key());
        let no_ku = cluster_cert(&ca, &key, |p| p.key_usages = vec![KeyUsagePurpose::CrlSign]);
        let why = check(&ca, &key, &no_ku).expect_err("no keyCertSign");
        assert!(why.contains("keyCertSign"), "{why}");
        let not_ca = cluster_cert(&ca, &key, |p| p.is_ca = IsCa::ExplicitNoCa);
        let why = check(&ca, &key, &not_ca).expect_err("not a CA");
        assert!(why.contains("not a CA certificate"), "{why}");
    }

    #[test]
    fn a_customer_ca_that_is_not_a_ca_is_refused() {
        let (ca, key) = (ca(false), key());
        let why = check(&ca, &key, &cluster_cert(&ca, &key, |_| {})).expect_err("refused");
        assert!(why.contains("customer CA certificate"), "{why}");
    }

    #[test]
    fn private_files_are_0600_and_not_overwritten_without_replace() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("k.pem");
        write_private(&path, "one", false).expect("first write");
        assert!(matches!(
            write_private(&path, "two", false),
            Err(Error::Exists(_))
        ));
        assert_eq!(fs::read_to_string(&path).expect("read"), "one");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            load_private_key(&path),
            Err(Error::Refused { .. })
        ));
        write_private(&path, "three", true).expect("replace");
        assert_eq!(fs::read_to_string(&path).expect("read"), "three");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::read_dir(tmp.path()).expect("ls").count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn leaf_names_cannot_escape_or_clobber() {
        for bad in [
            "",
            "../x",
            "a/b",
            ".k",
            "-k",
            "cluster",
            "customer-ca",
            "a b",
        ] {
            assert!(check_leaf_name(bad).is_err(), "{bad:?}");
        }
        for good in ["hsm0", "app.prod", "client_1", "HSM-2"] {
            assert!(check_leaf_name(good).is_ok(), "{good:?}");
        }
    }
}
