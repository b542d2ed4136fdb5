//! Configuration: a TOML file named by `HSMPOOL_CONF` or by the `pReserved` string of
//! `C_Initialize`; with neither, the embedded default (one in-process simulated HSM whose data
//! lives under `HSMPOOL_DATA`, else `$XDG_DATA_HOME/hsmpool`, else `~/.local/share/hsmpool`).
//!
//! ```toml
//! log = "info"                 # tracing filter; HSMPOOL_LOG overrides; off when neither
//! [token]
//! label_hint = "hsmpool"       # shown in the slot description
//! [[member]]
//! kind = "embedded"            # the in-process simulator
//! data_dir = "/var/lib/hsmpool/hsm0"
//! pin_iterations = 100000      # PBKDF2 iterations for new PIN hashes
//! max_login_failures = 5       # consecutive failed logins that lock a user (cluster-wide)
//! timing = "off"               # or "hsm2m.medium" / "hsm1.medium": the simulator's timing model
//! [[member]]
//! kind = "daemon"              # an hsmpool-hsmd over mutual TLS
//! address = "10.0.0.5:2225"    # host:port
//! ca = "/etc/hsmpool/customer-ca.pem"   # the customer CA the daemon's chain must lead to
//! cert = "/etc/hsmpool/client.pem"      # this client's certificate (chain), PEM
//! key = "/etc/hsmpool/client.key"       # its private key, PKCS #8 PEM
//! server_name = "hsm1.example" # optional: the name the daemon's certificate must carry
//!                              # (default: the host of `address`; an IP is matched to IP SANs)
//! connections = 4              # optional: TLS connections to the daemon (1 to 64)
//! timeout_ms = 10000           # optional: longest wait for one answer
//! [[member]]
//! kind = "module"              # a vendor's PKCS #11 library (first step of issue 13: one
//!                              # such member, or with members of its own kind; see README)
//! path = "/usr/lib/softhsm/libsofthsm2.so"
//! token_label = "hsm-a"        # optional: the token to use, by label (default: the first)
//! token_serial = "5c1e..."      # optional: the token to use, by serial number (wins over the
//!                              # label, and survives a C_InitToken that relabels the token)
//! init_reserved = "..."        # optional: pReserved of its C_Initialize (NSS softokn's string)
//! pin_from = "file:/etc/hsmpool/nss.pin"  # optional: this token's own user PIN ("file:PATH",
//!                              # one trailing newline dropped, or "env:NAME"), used instead of
//!                              # the application's (which the other members check)
//! so_pin_from = "file:/dev/null"  # optional: its own SO PIN, likewise (NSS softokn: empty)
//! [compat]
//! self_signed_certificates = false  # true: present a self-signed X.509 certificate for every
//!                              # token private key that has none (see below)
//! ```
//!
//! # `[compat]`: what some clients need
//!
//! `self_signed_certificates` (default `false`). Some applications only see a private key when
//! the token holds a certificate for it: Java's SunPKCS11 `KeyStore` lists a private key only
//! when a certificate object has the same `CKA_ID`. With this option on, every token private key
//! that the logged-in user can see, that has a non-empty `CKA_ID`, can sign (`CKA_SIGN`, no
//! `CKA_ALWAYS_AUTHENTICATE`) and has no token certificate with the same `CKA_ID` is accompanied
//! by an X.509 certificate object (`CKO_CERTIFICATE`, `CKC_X_509`) with the key's `CKA_ID`, its
//! `CKA_LABEL` (the id in hex when the key has no label) as alias and subject common name, and
//! `CKA_SUBJECT`, `CKA_ISSUER`, `CKA_SERIAL_NUMBER` and `CKA_VALUE` filled in. The certificate is
//! signed by the key itself, through the HSMs (SHA-256 with RSA, ECDSA on P-256/P-384/P-521 with
//! SHA-256/384/512, or Ed25519). It is made by this process when first needed and is never stored
//! on the HSMs: a read-only object (`CKA_MODIFIABLE`, `CKA_COPYABLE` and `CKA_DESTROYABLE` false)
//! that disappears when the key is destroyed or a real certificate with its `CKA_ID` is stored.
//! An EC key's public point is read from the token public key with the same `CKA_ID` (a private
//! key does not carry it); an EC key without one gets no certificate, nor does a key whose
//! `CKA_ALLOWED_MECHANISMS` exclude the mechanism above. Session keys get none.
//!
//! The option is built in with the Cargo feature `compat-selfsigned` (on by default); a module
//! built without it refuses `self_signed_certificates = true` (a configuration error).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Tracing filter (`HSMPOOL_LOG` overrides).
    pub log: Option<String>,
    /// Token presentation.
    #[serde(default)]
    pub token: TokenConfig,
    /// Cluster members; empty means the embedded default.
    #[serde(default)]
    pub member: Vec<MemberConfig>,
    /// Cluster behaviour (pools, replication, retries, health).
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// What some clients need of the token beyond the standard (see the module documentation).
    #[serde(default)]
    pub compat: CompatConfig,
    /// Where the cluster's backups go (read by the `hsmpool` tool; the module ignores it).
    #[serde(default)]
    pub backup: BackupConfig,
}

/// `[backup]`: the backup store of `hsmpool backup`; every key optional.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The store's URL: `file:///dir`, `s3://bucket/prefix`, `gs://...`, `az://...` (default:
    /// `backups` under the default data directory).
    pub store: Option<String>,
    /// The region this store is in (default `local`).
    pub region: Option<String>,
    /// Hours between scheduled backups (default 24).
    pub interval_hours: Option<u64>,
    /// Backups listed per page when the store is read (default 1000).
    pub page_size: Option<usize>,
    /// Other regions' stores, by region name, for copies (`hsmpool backup copy`).
    #[serde(default)]
    pub regions: std::collections::BTreeMap<String, String>,
}

/// `[compat]`: behaviour some clients need; everything off by default.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CompatConfig {
    /// Present a self-signed certificate for every token private key that has none (for Java's
    /// SunPKCS11 `KeyStore`, which lists only private keys with a certificate).
    #[serde(default)]
    pub self_signed_certificates: bool,
}

impl CompatConfig {
    /// Refuse an option whose Cargo feature this build leaves out: the message of the
    /// configuration error (without the origin).
    pub(crate) fn check_built_in(&self) -> std::result::Result<(), String> {
        #[cfg(not(feature = "compat-selfsigned"))]
        if self.self_signed_certificates {
            return Err(
                "compat.self_signed_certificates: not built into this module \
                 (Cargo feature \"compat-selfsigned\")"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `[cluster]`: every key optional; see [`crate::cluster::Settings`] for the defaults.
/// `Config::cluster_settings`, which fills them in, is in `engine/lifecycle.rs` (where the
/// cluster is built): this file names no other file of the crate but `error.rs`, since
/// `cluster.rs` and `backend/` use it.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Member sessions per member (default 4).
    pub sessions_per_member: Option<usize>,
    /// Members a token object must reach (default 2, or all when fewer).
    pub min_replicas: Option<usize>,
    /// Longest a call may go on retrying, from its first failure, in ms (default 20000; each
    /// attempt is also bounded by the member's own timeout).
    pub call_deadline_ms: Option<u64>,
    /// Health probe period in ms (default 200).
    pub probe_interval_ms: Option<u64>,
    /// Weight ramp of a returning member in ms (default 3000).
    pub slow_start_ms: Option<u64>,
    /// No completion for this long with work outstanding marks a member stalled (default 750).
    pub stall_ms: Option<u64>,
    /// Consecutive device failures that open a member's circuit (default 3).
    pub breaker_failures: Option<u32>,
    /// How long a find result is served from the engine's cache, in ms (default 100; changes
    /// made through this engine invalidate it at once, this bounds how long a change made by
    /// another process can go unseen).
    pub find_cache_ttl_ms: Option<u64>,
    /// How long a token create waits for `min_replicas` members before it is rolled back, in
    /// ms (default 3000).
    pub replicate_wait_ms: Option<u64>,
    /// The label of the cluster wrapping key (`hsmpool cluster wrap-key`), by which members
    /// without a clone path (vendor modules, mixed clusters) copy token keys to each other
    /// (default `"hsmpool cluster wrap key"`).
    pub wrap_key_label: Option<String>,
    /// Whether a token key that cannot be copied to the other members (not extractable, or
    /// the vendor refuses) is kept on the member that made it rather than refused (default
    /// false). Calls on such a key go to that member; while it is down they fail.
    pub single_member_keys: Option<bool>,
}

/// How the token presents itself.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Slot description.
    pub slot_description: Option<String>,
}

/// One cluster member.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// `embedded` (in-process simulator) or `daemon` (`hsmpool-hsmd` over mutual TLS).
    pub kind: String,
    /// Where an embedded member keeps its store.
    pub data_dir: Option<PathBuf>,
    /// PBKDF2 iterations for new PIN hashes.
    pub pin_iterations: Option<u32>,
    /// Consecutive failed logins that lock a user.
    pub max_login_failures: Option<u32>,
    /// Timing model of an embedded member: `"off"` (default), `"hsm2m.medium"` or
    /// `"hsm1.medium"` (AWS CloudHSM per-HSM figures; see simulator/src/timing.rs).
    pub timing: Option<String>,
    /// A daemon member's `host:port`.
    pub address: Option<String>,
    /// A daemon member: the customer CA certificate (PEM) the daemon's chain must lead to.
    pub ca: Option<PathBuf>,
    /// A daemon member: this client's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// A daemon member: this client's private key (PKCS #8 PEM).
    pub key: Option<PathBuf>,
    /// A daemon member: the name its certificate must carry (default: the host of `address`).
    pub server_name: Option<String>,
    /// A daemon member: TLS connections to it (default 4).
    pub connections: Option<usize>,
    /// A daemon member: longest wait for one answer, ms (default 10000).
    pub timeout_ms: Option<u64>,
    /// A module member: the vendor's PKCS #11 library.
    pub path: Option<PathBuf>,
    /// A module member: the label of its token (default: the first token).
    pub token_label: Option<String>,
    /// A module member: the serial number of its token (wins over `token_label`).
    pub token_serial: Option<String>,
    /// A module member: a string passed as `pReserved` of its `C_Initialize`.
    pub init_reserved: Option<String>,
    /// A module member: where its token's own user PIN is (`file:PATH` or `env:NAME`).
    pub pin_from: Option<String>,
    /// A module member: where its token's own SO PIN is (`file:PATH` or `env:NAME`).
    pub so_pin_from: Option<String>,
}

/// The kinds of member, one per backend feature (`embedded`, `daemon`, `module`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberKind {
    /// The in-process simulator (feature `embedded`).
    #[cfg(feature = "embedded")]
    Embedded,
    /// An `hsmpool-hsmd` over mutual TLS (feature `daemon`).
    #[cfg(feature = "daemon")]
    Daemon,
    /// A vendor's PKCS #11 library (feature `module`).
    #[cfg(feature = "module")]
    Module,
}

impl MemberKind {
    /// Every kind a configuration may name, built into this module or not.
    pub const NAMES: [&'static str; 3] = ["embedded", "daemon", "module"];

    /// The name a configuration gives it.
    fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "embedded")]
            MemberKind::Embedded => "embedded",
            #[cfg(feature = "daemon")]
            MemberKind::Daemon => "daemon",
            #[cfg(feature = "module")]
            MemberKind::Module => "module",
        }
    }

    /// Whether `key` belongs to another kind (whether or not this build has it): a member of
    /// this kind that sets one is refused.
    fn is_foreign_key(self, key: &str) -> bool {
        KIND_KEYS
            .iter()
            .any(|(kind, keys)| *kind != self.name() && keys.contains(&key))
    }

    /// The kind a configuration names: `Ok(None)` for a known kind this build leaves out.
    fn from_name(name: &str) -> std::result::Result<Option<MemberKind>, ()> {
        match name {
            #[cfg(feature = "embedded")]
            "embedded" => Ok(Some(MemberKind::Embedded)),
            #[cfg(feature = "daemon")]
            "daemon" => Ok(Some(MemberKind::Daemon)),
            #[cfg(feature = "module")]
            "module" => Ok(Some(MemberKind::Module)),
            n if Self::NAMES.contains(&n) => Ok(None),
            _ => Err(()),
        }
    }
}

/// The keys only one kind of member takes, by kind.
const KIND_KEYS: [(&str, &[&str]); 3] = [
    ("embedded", &EMBEDDED_KEYS),
    ("daemon", &DAEMON_KEYS),
    ("module", &MODULE_KEYS),
];

/// Keys only a module member takes.
const MODULE_KEYS: [&str; 6] = [
    "path",
    "token_label",
    "token_serial",
    "init_reserved",
    "pin_from",
    "so_pin_from",
];

/// Keys only an embedded member takes.
const EMBEDDED_KEYS: [&str; 4] = ["data_dir", "pin_iterations", "max_login_failures", "timing"];
/// Keys only a daemon member takes.
const DAEMON_KEYS: [&str; 7] = [
    "address",
    "ca",
    "cert",
    "key",
    "server_name",
    "connections",
    "timeout_ms",
];

impl MemberConfig {
    /// This member's kind (checked when the configuration was parsed).
    pub fn kind(&self) -> Result<MemberKind> {
        match MemberKind::from_name(&self.kind) {
            Ok(Some(k)) => Ok(k),
            Ok(None) => Err(Error::Config(format!(
                "member kind {:?} is not built into this module (Cargo feature {:?})",
                self.kind, self.kind
            ))),
            Err(()) => Err(Error::Config(format!(
                "unknown member kind {:?} (\"embedded\", \"daemon\" or \"module\")",
                self.kind
            ))),
        }
    }

    /// Which of `keys` this member sets.
    fn set_keys(&self) -> Vec<&'static str> {
        let set = [
            ("data_dir", self.data_dir.is_some()),
            ("pin_iterations", self.pin_iterations.is_some()),
            ("max_login_failures", self.max_login_failures.is_some()),
            ("timing", self.timing.is_some()),
            ("address", self.address.is_some()),
            ("ca", self.ca.is_some()),
            ("cert", self.cert.is_some()),
            ("key", self.key.is_some()),
            ("server_name", self.server_name.is_some()),
            ("connections", self.connections.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
            ("path", self.path.is_some()),
            ("token_label", self.token_label.is_some()),
            ("token_serial", self.token_serial.is_some()),
            ("init_reserved", self.init_reserved.is_some()),
            ("pin_from", self.pin_from.is_some()),
            ("so_pin_from", self.so_pin_from.is_some()),
        ];
        set.into_iter()
            .filter(|(_, s)| *s)
            .map(|(k, _)| k)
            .collect()
    }

    /// Check a `daemon` member: `what` prefixes every message (`file: member[i]`).
    #[cfg(feature = "daemon")]
    fn validate_daemon(&self, what: &str) -> Result<()> {
        let err = |key: &str, msg: String| Error::Config(format!("{what}.{key}: {msg}"));
        let address = self
            .address
            .as_deref()
            .ok_or_else(|| err("address", "required for kind \"daemon\" (host:port)".into()))?;
        hsmpool_wire::link::host_of(address).map_err(|m| err("address", m))?;
        for (key, v) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if v.is_none() {
                return Err(err(key, "required for kind \"daemon\" (a PEM file)".into()));
            }
        }
        hsmpool_wire::link::server_name(address, self.server_name.as_deref())
            .map_err(|m| err("server_name", m))?;
        if let Some(n) = self.connections {
            if !(1..=64).contains(&n) {
                return Err(err("connections", format!("{n} is not between 1 and 64")));
            }
        }
        if self.timeout_ms == Some(0) {
            return Err(err("timeout_ms", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// Where the embedded default keeps its data.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HSMPOOL_DATA").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("hsmpool");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/hsmpool"),
        None => PathBuf::from("/tmp/hsmpool"),
    }
}

/// Where a member's own PIN is: a file or an environment variable.
enum PinSource<'a> {
    File(&'a Path),
    Env(&'a str),
}

fn pin_source(spec: &str) -> std::result::Result<PinSource<'_>, String> {
    if let Some(p) = spec.strip_prefix("file:").filter(|p| !p.is_empty()) {
        Ok(PinSource::File(Path::new(p)))
    } else if let Some(n) = spec.strip_prefix("env:").filter(|n| !n.is_empty()) {
        Ok(PinSource::Env(n))
    } else {
        Err(format!(
            "{spec:?}: expected \"file:PATH\" or \"env:NAME\" (a PIN is never written in the \
             configuration)"
        ))
    }
}

/// Read a member's own PIN from `spec` (`file:PATH`, one trailing newline dropped, or
/// `env:NAME`). The error names the source, never the PIN.
pub fn read_pin(spec: &str) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
    match pin_source(spec)? {
        PinSource::File(p) => {
            let mut v =
                Zeroizing::new(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?);
            if v.last() == Some(&b'\n') {
                v.pop();
                if v.last() == Some(&b'\r') {
                    v.pop();
                }
            }
            Ok(v)
        }
        PinSource::Env(n) => std::env::var_os(n)
            .map(|v| Zeroizing::new(v.into_encoded_bytes()))
            .ok_or_else(|| format!("the environment variable {n} is not set")),
    }
}

impl Config {
    /// Parse TOML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text)
            .map_err(|e| Error::Config(format!("{origin}: {}", e.to_string().trim())))?;
        for (i, m) in cfg.member.iter().enumerate() {
            let kind = match MemberKind::from_name(&m.kind) {
                Ok(Some(k)) => k,
                Ok(None) => {
                    return Err(Error::Config(format!(
                        "{origin}: member[{i}].kind: {:?} is not built into this module (Cargo feature {:?})",
                        m.kind, m.kind
                    )))
                }
                Err(()) => {
                    return Err(Error::Config(format!(
                        "{origin}: member[{i}].kind: unknown kind {:?} (\"embedded\", \"daemon\" or \"module\")",
                        m.kind
                    )))
                }
            };
            if let Some(k) = m.set_keys().into_iter().find(|k| kind.is_foreign_key(k)) {
                return Err(Error::Config(format!(
                    "{origin}: member[{i}].{k}: not a key of kind {:?}",
                    m.kind
                )));
            }
            #[cfg(feature = "daemon")]
            if kind == MemberKind::Daemon {
                m.validate_daemon(&format!("{origin}: member[{i}]"))?;
            }
            #[cfg(feature = "module")]
            if kind == MemberKind::Module && m.path.is_none() {
                return Err(Error::Config(format!(
                    "{origin}: member[{i}].path: required for kind \"module\" (the vendor's PKCS #11 library)"
                )));
            }
            for (key, spec) in [("pin_from", &m.pin_from), ("so_pin_from", &m.so_pin_from)] {
                if let Some(spec) = spec {
                    pin_source(spec).map_err(|why| {
                        Error::Config(format!("{origin}: member[{i}].{key}: {why}"))
                    })?;
                }
            }
            if let Some(t) = &m.timing {
                if !matches!(t.as_str(), "off" | "hsm2m.medium" | "hsm1.medium") {
                    return Err(Error::Config(format!(
                        "{origin}: member[{i}].timing: unknown model {t:?} (\"off\", \"hsm2m.medium\" or \"hsm1.medium\")"
                    )));
                }
            }
            if m.pin_iterations == Some(0) {
                return Err(Error::Config(format!(
                    "{origin}: member[{i}].pin_iterations: must be at least 1"
                )));
            }
        }
        // A member with a PIN of its own does not check the application's: some other member
        // must, or any PIN would log in.
        for (key, own) in [
            ("pin_from", cfg.member.iter().all(|m| m.pin_from.is_some())),
            (
                "so_pin_from",
                cfg.member.iter().all(|m| m.so_pin_from.is_some()),
            ),
        ] {
            if own && !cfg.member.is_empty() {
                return Err(Error::Config(format!(
                    "{origin}: every member sets {key}: at least one must check the PIN the \
                     application gives (a member with a PIN of its own does not)"
                )));
            }
        }
        cfg.compat
            .check_built_in()
            .map_err(|m| Error::Config(format!("{origin}: {m}")))?;
        Ok(cfg)
    }

    /// Load from a file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Resolve the configuration from the `pReserved` string (`conf=<path>` or `toml=<text>`),
    /// else `HSMPOOL_CONF`, else the embedded default.
    pub fn resolve(init_string: Option<&str>) -> Result<Config> {
        if let Some(s) = init_string {
            if let Some(path) = s.strip_prefix("conf=") {
                return Config::load(Path::new(path));
            }
            if let Some(text) = s.strip_prefix("toml=") {
                return Config::parse(text, "C_Initialize pReserved");
            }
            if s.is_empty() {
                return Ok(Config::default());
            }
            return Err(Error::Config(format!(
                "C_Initialize pReserved: expected \"hsmpool:conf=<path>\" or \"hsmpool:toml=<text>\", got {:?}",
                s.chars().take(40).collect::<String>()
            )));
        }
        match std::env::var_os("HSMPOOL_CONF").filter(|v| !v.is_empty()) {
            Some(p) => Config::load(Path::new(&p)),
            None => Ok(Config::default()),
        }
    }

    /// Where the first embedded member keeps its store.
    pub fn embedded_data_dir(&self) -> PathBuf {
        self.member_data_dir(0)
    }

    /// Where embedded member `i` keeps its store: its `data_dir`, else `hsm<i>` under the
    /// default data directory.
    pub fn member_data_dir(&self, i: usize) -> PathBuf {
        self.members()
            .get(i)
            .and_then(|m| m.data_dir.clone())
            .unwrap_or_else(|| default_data_dir().join(format!("hsm{i}")))
    }

    /// The members, with the embedded default filled in when none is configured.
    pub fn members(&self) -> Vec<MemberConfig> {
        if self.member.is_empty() {
            vec![MemberConfig {
                kind: "embedded".into(),
                ..MemberConfig::default()
            }]
        } else {
            self.member.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(feature = "module", feature = "embedded"))]
    fn a_member_pin_of_its_own_is_named_never_written_and_never_everyone_s() {
        let module =
            |extra: &str| format!("[[member]]\nkind = \"module\"\npath = \"/lib/x.so\"\n{extra}");
        let embedded = "[[member]]\nkind = \"embedded\"\n";
        let parse = |text: String| Config::parse(&text, "h.toml");
        assert!(parse(module("so_pin_from = \"file:/dev/null\"\n") + embedded).is_ok());
        assert!(parse(module("pin_from = \"env:NSS_PIN\"\n") + embedded).is_ok());
        // A PIN in the file itself, or an empty source, is refused.
        for bad in ["\"1234\"", "\"file:\"", "\"env:\""] {
            let msg = parse(module(&format!("pin_from = {bad}\n")) + embedded)
                .unwrap_err()
                .to_string();
            assert!(msg.contains("member[0].pin_from"), "{msg}");
        }
        // Some member must check the PIN the application gives.
        let msg = parse(module("pin_from = \"env:A\"\n") + &module("pin_from = \"env:B\"\n"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("every member sets pin_from"), "{msg}");
        // An embedded member cannot take one.
        let msg = parse(format!("{embedded}so_pin_from = \"file:/dev/null\"\n"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a key of kind"), "{msg}");
    }

    #[test]
    fn a_pin_file_loses_one_trailing_newline_and_an_unset_variable_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pin");
        for (written, read) in [
            (&b"1234\n"[..], &b"1234"[..]),
            (b"1234\r\n", b"1234"),
            (b"12 34\n\n", b"12 34\n"),
            (b"", b""),
        ] {
            std::fs::write(&f, written).unwrap();
            let pin = read_pin(&format!("file:{}", f.display())).unwrap();
            assert_eq!(pin.as_slice(), read);
        }
        let msg = read_pin("env:HSMPOOL_TEST_SURELY_UNSET_PIN").unwrap_err();
        assert!(msg.contains("HSMPOOL_TEST_SURELY_UNSET_PIN"), "{msg}");
        assert!(read_pin("file:/nonexistent/pin").is_err());
    }

    #[test]
    #[cfg(feature = "embedded")]
    fn single_member_keys_is_read() {
        let cfg = |v: &str| {
            Config::parse(
                &format!("[cluster]\nsingle_member_keys = {v}\n[[member]]\nkind = \"embedded\"\n"),
                "/etc/h.toml",
            )
        };
        assert_eq!(cfg("true").unwrap().cluster.single_member_keys, Some(true));
        assert_eq!(
            cfg("false").unwrap().cluster.single_member_keys,
            Some(false)
        );
        assert!(cfg("\"yes\"").is_err());
    }

    #[test]
    fn unknown_keys_name_the_file_and_the_key() {
        let e = Config::parse(
            "[[member]]\nkind = \"embedded\"\ndata_dri = \"/x\"\n",
            "/etc/h.toml",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/etc/h.toml") && msg.contains("data_dri"),
            "{msg}"
        );
    }

    #[test]
    #[cfg(feature = "embedded")]
    fn timing_models_are_named() {
        assert!(Config::parse(
            "[[member]]\nkind = \"embedded\"\ntiming = \"hsm2m.medium\"\n",
            "f"
        )
        .is_ok());
        let e =
            Config::parse("[[member]]\nkind = \"embedded\"\ntiming = \"fast\"\n", "f").unwrap_err();
        assert!(e.to_string().contains("member[0].timing"), "{e}");
    }

    #[test]
    fn unknown_member_kind_is_refused() {
        let e = Config::parse("[[member]]\nkind = \"quantum\"\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("member[0].kind"), "{e}");
    }

    #[cfg(feature = "daemon")]
    const DAEMON: &str = "[[member]]\nkind = \"daemon\"\naddress = \"127.0.0.1:2225\"\nca = \"/etc/ca.pem\"\ncert = \"/etc/c.pem\"\nkey = \"/etc/c.key\"\n";

    #[test]
    #[cfg(feature = "daemon")]
    fn a_daemon_member_parses() {
        let c = Config::parse(
            &format!("{DAEMON}server_name = \"hsm1.example\"\nconnections = 2\ntimeout_ms = 500\n"),
            "f",
        )
        .expect("a complete daemon member");
        let m = &c.members()[0];
        assert_eq!(m.kind, "daemon");
        assert_eq!(m.address.as_deref(), Some("127.0.0.1:2225"));
        assert_eq!(m.connections, Some(2));
        assert_eq!(m.timeout_ms, Some(500));
    }

    #[test]
    #[cfg(all(feature = "embedded", feature = "daemon"))]
    fn daemon_members_are_validated_key_by_key() {
        let cases = [
            ("[[member]]\nkind = \"daemon\"\n", "member[0].address"),
            (
                "[[member]]\nkind = \"daemon\"\naddress = \"127.0.0.1\"\n",
                "member[0].address",
            ),
            (
                "[[member]]\nkind = \"daemon\"\naddress = \"h:1\"\nca = \"a\"\ncert = \"c\"\n",
                "member[0].key",
            ),
            (
                &format!("{DAEMON}connections = 0\n"),
                "member[0].connections",
            ),
            (
                &format!("{DAEMON}connections = 65\n"),
                "member[0].connections",
            ),
            (&format!("{DAEMON}timeout_ms = 0\n"), "member[0].timeout_ms"),
            (
                &format!("{DAEMON}server_name = \"no spaces\"\n"),
                "member[0].server_name",
            ),
            (
                &format!("{DAEMON}data_dir = \"/x\"\n"),
                "member[0].data_dir",
            ),
            (
                "[[member]]\nkind = \"embedded\"\naddress = \"h:1\"\n",
                "member[0].address",
            ),
        ];
        for (text, key) in cases {
            let e = Config::parse(text, "f.toml").unwrap_err().to_string();
            assert!(e.contains("f.toml") && e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    #[cfg(not(all(feature = "embedded", feature = "daemon")))]
    fn a_kind_left_out_of_the_build_is_refused_naming_its_feature() {
        for kind in MemberKind::NAMES {
            let text = format!("[[member]]\nkind = \"{kind}\"\n");
            match MemberKind::from_name(kind) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let e = Config::parse(&text, "f.toml").unwrap_err().to_string();
                    assert!(
                        e.contains("member[0].kind") && e.contains("Cargo feature"),
                        "{e}"
                    );
                }
                Err(()) => panic!("{kind} is a kind"),
            }
        }
    }

    #[test]
    fn empty_config_is_the_embedded_default() {
        let c = Config::parse("", "f").expect("empty config parses");
        assert_eq!(c.members().len(), 1);
        assert_eq!(c.members()[0].kind, "embedded");
        assert!(!c.compat.self_signed_certificates, "off by default");
    }

    #[test]
    fn compat_self_signed_certificates_parses_and_typos_are_refused() {
        let parsed = Config::parse("[compat]\nself_signed_certificates = true\n", "f");
        #[cfg(feature = "compat-selfsigned")]
        assert!(
            parsed
                .expect("the option parses")
                .compat
                .self_signed_certificates
        );
        #[cfg(not(feature = "compat-selfsigned"))]
        {
            // Built without the feature: refused, saying which feature it needs.
            let e = parsed.unwrap_err().to_string();
            assert!(
                e.contains("f: compat.self_signed_certificates: not built into this module")
                    && e.contains("compat-selfsigned"),
                "{e}"
            );
        }
        let e = Config::parse("[compat]\nself_signed_certificate = true\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("self_signed_certificate"), "{e}");
        let e =
            Config::parse("[compat]\nself_signed_certificates = \"yes\"\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("f.toml"), "{e}");
    }
}
