//! `hsmpool quorum ...`: M of N approval of crypto-officer changes (CloudHSM's quorum
//! authentication). Each officer registers an approval public key (ECDSA P-256), kept where
//! it likes: a PKCS #8 file (`quorum keygen` makes one) or a PKCS #11 token (any module, the
//! private key never leaving it). For a protected change, one officer asks the cluster for a
//! token (`token-gen`), M officers sign it (`sign`), and the change is made with the token and
//! the signatures (`--token`, `--approval` on `hsmpool user ...`, `quorum set` and `cluster
//! trust`). A token is for one change, lives ten minutes, and is spent once the change is made.
//!
//! A key's own quorum works the same way among crypto users: each registers an approval key
//! (`register-key --user`), a user of the key asks for a token (`token-gen key use|manage KEY`,
//! logged in with HSMPOOL_PIN), the key's users sign it, and `hsmpool key approve` presents it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use clap::{Args, Parser, Subcommand};
use cryptoki_sys::{CKU_SO, CKU_USER};
use hsmpool_member::{Approval, KeyService, QuorumToken, Role, UserChange};
use zeroize::Zeroizing;

use crate::common::{explain, failed, hex, open_cluster, parsed, secret, unhex};

/// The `quorum` part of `hsmpool --help`.
pub const USAGE: &str = "  quorum keygen|register-key|set|token-gen|sign ...
                              M of N approval: officers' of user, quorum and cluster
                              certificate changes; a key's users' of its use (hsmpool quorum
                              --help)
";

const EXAMPLES: &str = "Examples:
  # each officer, once: a key (or one on a PKCS #11 token), registered as its own
  hsmpool quorum keygen --out bob-approval.pem
  HSMPOOL_SO_PIN=bob:... hsmpool quorum register-key --key bob-approval.pem
  # two approvals from now on for creating and deleting users, roles, others' passwords
  # and the quorum itself
  HSMPOOL_SO_PIN=... hsmpool quorum set 2
  # a protected change: a token, two signatures, then the change with them
  HSMPOOL_SO_PIN=... hsmpool quorum token-gen --out t.hex user delete alice
  hsmpool quorum sign --token t.hex --officer bob --key bob-approval.pem > bob.sig
  HSMPOOL_APPROVAL_PIN=... hsmpool quorum sign --token t.hex --officer carol \\
      --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --pkcs11-key carol-approval > carol.sig
  HSMPOOL_SO_PIN=... hsmpool user delete alice --token t.hex --approval bob.sig --approval carol.sig

A token names one change on one version of its user, and lives ten minutes; a signature file
holds `OFFICER:HEX`. `quorum set` refuses an M above the number of officers minus two, and
`user delete` refuses to leave fewer than M + 2 officers, since either can lock the cluster
out of its own administration; --force overrides and names the risk. Exit status: 0 done, 1
refused or failed, 2 a usage error.";

#[derive(Parser, Debug)]
#[command(
    name = "hsmpool quorum",
    about = "M of N officers' approval of user and quorum changes",
    after_help = EXAMPLES
)]
struct QuorumCli {
    #[command(subcommand)]
    cmd: QuorumCmd,
}

/// Where an officer's approval key is.
#[derive(Args, Debug, Clone)]
pub(crate) struct KeySource {
    /// A PKCS #8 PEM file holding the ECDSA P-256 private key (`quorum keygen`).
    #[arg(long, conflicts_with = "pkcs11_module")]
    key: Option<PathBuf>,
    /// A PKCS #11 module holding it instead (its user PIN from HSMPOOL_APPROVAL_PIN).
    #[arg(long, requires = "pkcs11_key")]
    pkcs11_module: Option<PathBuf>,
    /// The label of the key pair on that module's token.
    #[arg(long)]
    pkcs11_key: Option<String>,
    /// The token's label (default: the first token holding the key).
    #[arg(long)]
    pkcs11_token: Option<String>,
}

/// The approvals a protected change carries (on the user commands and `quorum set`).
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct Approvals {
    /// The quorum token (`quorum token-gen`), in hex.
    #[arg(long, requires = "approval")]
    token: Option<PathBuf>,
    /// A signature of the token (`quorum sign`): once per officer, or for a key's token, per
    /// user of the key.
    #[arg(long)]
    approval: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum QuorumCmd {
    /// Make a new approval key (ECDSA P-256) in a PKCS #8 PEM file, mode 0600.
    Keygen {
        /// Where to write it (never replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Register the logged-in officer's approval public key (HSMPOOL_SO_PIN names the
    /// officer, `NAME:PASSWORD`, or is the `admin` officer's PIN); with --user, the crypto
    /// user's that HSMPOOL_PIN names (it approves the use of keys it shares).
    RegisterKey {
        #[command(flatten)]
        source: KeySource,
        /// Register a crypto user's key (HSMPOOL_PIN) instead of an officer's.
        #[arg(long)]
        user: bool,
    },
    /// Set M: the approvals a protected change needs (1: none).
    Set {
        /// M.
        m: u32,
        /// Set an M above the number of officers minus two: an officer lost or locked then
        /// leaves the cluster unable to make protected changes.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        approvals: Approvals,
    },
    /// Make a token for one change: the words after it are the change, as `hsmpool` takes it
    /// (`user delete alice`, `user add bob --officer`, `quorum set 3`), or, as a crypto user
    /// (HSMPOOL_PIN), `key use KEY` or `key manage KEY` for a key with its own quorum.
    TokenGen {
        /// Write the token here (hex) instead of to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The change.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        change: Vec<String>,
    },
    /// Sign a token with an officer's approval key: prints `OFFICER:SIGNATURE`.
    Sign {
        /// The token (hex).
        #[arg(long)]
        token: PathBuf,
        /// The officer (or, for a key's token, the crypto user) signing.
        #[arg(long, visible_alias = "user")]
        officer: String,
        #[command(flatten)]
        source: KeySource,
    },
}

fn read_hex(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    unhex(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Approvals {
    /// The approval to send (empty without `--token`).
    pub(crate) fn read(&self) -> Result<Approval, String> {
        let Some(token) = &self.token else {
            return Ok(Approval::default());
        };
        let token = read_hex(token)?;
        let mut signatures = Vec::new();
        for f in &self.approval {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let (officer, sig) = text.trim().split_once(':').ok_or_else(|| {
                format!(
                    "{}: not OFFICER:SIGNATURE (from `hsmpool quorum sign`)",
                    f.display()
                )
            })?;
            signatures.push((
                officer.to_string(),
                unhex(sig).map_err(|e| format!("{}: {e}", f.display()))?,
            ));
        }
        Ok(Approval { token, signatures })
    }
}

/// The PKCS #8 document of a PEM file.
fn pkcs8(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let text = Zeroizing::new(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?);
    let p = pem::parse(&*text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Zeroizing::new(p.into_contents()))
}

/// The ECDSA P-256 key pair of a PKCS #8 PEM file.
fn file_key(f: &Path) -> Result<EcdsaKeyPair, String> {
    let doc = pkcs8(f)?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &doc)
        .map_err(|e| format!("{}: not an ECDSA P-256 PKCS #8 key ({e})", f.display()))
}

impl KeySource {
    /// The public key (an uncompressed P-256 point).
    fn public_key(&self) -> Result<Vec<u8>, String> {
        match (&self.key, &self.pkcs11_module) {
            (Some(f), None) => {
                let kp = file_key(f)?;
                Ok(kp.public_key().as_ref().to_vec())
            }
            (None, Some(m)) => p11::public_key(m, self),
            _ => Err("give --key FILE or --pkcs11-module MODULE --pkcs11-key LABEL".into()),
        }
    }

    /// `r || s` of ECDSA P-256 with SHA-256 over `msg`.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        match (&self.key, &self.pkcs11_module) {
            (Some(f), None) => {
                let kp = file_key(f)?;
                let sig = kp
                    .sign(&SystemRandom::new(), msg)
                    .map_err(|_| "signing failed".to_string())?;
                Ok(sig.as_ref().to_vec())
            }
            (None, Some(m)) => p11::sign(m, self, msg),
            _ => Err("give --key FILE or --pkcs11-module MODULE --pkcs11-key LABEL".into()),
        }
    }
}

/// An approval key on a PKCS #11 token, through the `cryptoki` crate.
mod p11 {
    use std::path::Path;

    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
    use cryptoki::session::{Session, UserType};
    use cryptoki::types::AuthPin;

    use super::KeySource;

    fn open(module: &Path, src: &KeySource) -> Result<(Pkcs11, Session), String> {
        let m = |e: cryptoki::error::Error| format!("{}: {e}", module.display());
        let ctx = Pkcs11::new(module).map_err(m)?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(m)?;
        let label = src.pkcs11_key.clone().unwrap_or_default();
        for slot in ctx.get_slots_with_token().map_err(m)? {
            if let Some(t) = &src.pkcs11_token {
                if ctx.get_token_info(slot).map_err(m)?.label() != t.as_str() {
                    continue;
                }
            }
            let session = ctx.open_ro_session(slot).map_err(m)?;
            let found = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])
                .map_err(m)?;
            if !found.is_empty() {
                return Ok((ctx, session));
            }
        }
        Err(format!(
            "{}: no token holds a key labelled {label:?}",
            module.display()
        ))
    }

    fn one(session: &Session, class: ObjectClass, label: &str) -> Result<ObjectHandle, String> {
        let found = session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| e.to_string())?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!(
                "no {class} labelled {label:?} (log in with HSMPOOL_APPROVAL_PIN?)"
            )),
            _ => Err(format!(
                "{} objects of class {class} labelled {label:?}",
                found.len()
            )),
        }
    }

    pub(super) fn public_key(module: &Path, src: &KeySource) -> Result<Vec<u8>, String> {
        let (_ctx, session) = open(module, src)?;
        let label = src.pkcs11_key.clone().unwrap_or_default();
        let k = one(&session, ObjectClass::PUBLIC_KEY, &label)?;
        let attrs = session
            .get_attributes(k, &[AttributeType::EcPoint])
            .map_err(|e| e.to_string())?;
        match attrs.as_slice() {
            // CKA_EC_POINT is the DER OCTET STRING of the point (04 41 04 ...).
            [Attribute::EcPoint(p)] if p.len() == 67 && p[0] == 4 && p[1] == 65 => {
                Ok(p[2..].to_vec())
            }
            [Attribute::EcPoint(p)] if p.len() == 65 && p[0] == 4 => Ok(p.clone()),
            _ => Err(format!("{label:?} is not an EC P-256 key")),
        }
    }

    pub(super) fn sign(module: &Path, src: &KeySource, msg: &[u8]) -> Result<Vec<u8>, String> {
        let pin = super::secret("HSMPOOL_APPROVAL_PIN")?;
        let (_ctx, session) = open(module, src)?;
        let pin = AuthPin::new(String::from_utf8_lossy(&pin).into_owned().into());
        session
            .login(UserType::User, Some(&pin))
            .map_err(|e| format!("{}: login: {e}", module.display()))?;
        let label = src.pkcs11_key.clone().unwrap_or_default();
        let k = one(&session, ObjectClass::PRIVATE_KEY, &label)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg);
        session
            .sign(&Mechanism::Ecdsa, k, digest.as_ref())
            .map_err(|e| format!("{}: signing: {e}", module.display()))
    }
}

/// The change the words after `token-gen` name.
fn change_of(words: &[String]) -> Result<UserChange, String> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let name = |n: &str| n.to_string();
    Ok(match w.as_slice() {
        ["user", "add", n] => UserChange::Create {
            name: name(n),
            role: Role::User,
            password: Zeroizing::new(Vec::new()),
        },
        ["user", "add", n, "--officer"] => UserChange::Create {
            name: name(n),
            role: Role::Officer,
            password: Zeroizing::new(Vec::new()),
        },
        ["user", "delete", n] => UserChange::Delete {
            name: name(n),
            force: false,
        },
        ["user", "delete", n, "--force"] => UserChange::Delete {
            name: name(n),
            force: true,
        },
        ["user", "passwd", n] => UserChange::Password {
            name: name(n),
            password: Zeroizing::new(Vec::new()),
        },
        ["user", "role", n, "officer"] => UserChange::SetRole {
            name: name(n),
            role: Role::Officer,
        },
        ["user", "role", n, "user"] => UserChange::SetRole {
            name: name(n),
            role: Role::User,
        },
        ["cluster", "trust", "set", certs @ ..] if !certs.is_empty() => {
            let files: Vec<PathBuf> = certs.iter().map(PathBuf::from).collect();
            crate::trust::change(&files)?
        }
        ["cluster", "trust", "clear"] => UserChange::SetTrustAnchors { anchors: vec![] },
        ["quorum", "set", m] => UserChange::SetQuorum {
            m: m.parse().map_err(|_| format!("{m:?} is not a number"))?,
        },
        _ => {
            return Err(format!(
                "{:?} is not a change a quorum protects (user add|delete|passwd|role ..., \
                 quorum set M, cluster trust set CERT...|clear, key use|manage KEY)",
                words.join(" ")
            ))
        }
    })
}

/// Write a new private file, mode 0600 (never replacing one).
fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The officer HSMPOOL_SO_PIN logs in as: the name before `:`, else `admin`.
/// The user a PIN names (`NAME:PASSWORD`), or `default` for a bare PIN.
fn officer_of(pin: &[u8], default: &str) -> String {
    match pin.iter().position(|b| *b == b':') {
        Some(i) => String::from_utf8_lossy(&pin[..i]).into_owned(),
        None => default.into(),
    }
}

/// `quorum token-gen key use|manage KEY`: a token for a key's own quorum, made for the crypto
/// user HSMPOOL_PIN names.
fn key_token(
    data: Option<PathBuf>,
    service: KeyService,
    key: &str,
    out: Option<PathBuf>,
) -> Result<ExitCode, String> {
    let pin = secret("HSMPOOL_PIN")?;
    let (engine, s) = match open_cluster(data, &pin, CKU_USER, true) {
        Ok(x) => x,
        Err(e) => return Ok(failed(&e)),
    };
    let t = match crate::common::one_key(&engine, s, key).and_then(|o| {
        engine
            .key_quorum_token(s, o, service)
            .map_err(|e| explain(&e, ""))
    }) {
        Ok(t) => t,
        Err(e) => {
            return Ok(failed(&format!(
                "token-gen key {} {key}: {e}",
                service.word()
            )))
        }
    };
    write_token(&t, out, &format!("{} the key {key}", service.word()))
}

/// A token to `out` (or standard output), in hex.
fn write_token(t: &[u8], out: Option<PathBuf>, what: &str) -> Result<ExitCode, String> {
    match out {
        Some(f) => {
            std::fs::write(&f, hex(t)).map_err(|e| format!("{}: {e}", f.display()))?;
            eprintln!("token for: {what} (ten minutes) written to {}", f.display());
        }
        None => println!("{}", hex(t)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `hsmpool quorum ...` (the words after `quorum`); `data` is the global `--data DIR`.
pub fn run(args: &[String], data: Option<PathBuf>) -> Result<ExitCode, String> {
    let cli: QuorumCli = match parsed("hsmpool quorum", args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match cli.cmd {
        QuorumCmd::Keygen { out } => {
            let doc = EcdsaKeyPair::generate_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .map_err(|_| "key generation failed".to_string())?;
            let text = Zeroizing::new(pem::encode(&pem::Pem::new(
                "PRIVATE KEY",
                doc.as_ref().to_vec(),
            )));
            write_private(&out, text.as_bytes())?;
            let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
                .map_err(|e| e.to_string())?;
            println!("wrote {} (mode 0600)", out.display());
            println!("public key: {}", hex(kp.public_key().as_ref()));
            Ok(ExitCode::SUCCESS)
        }
        QuorumCmd::Sign {
            token,
            officer,
            source,
        } => {
            let t = read_hex(&token)?;
            let parsed = QuorumToken::decode(&t)
                .ok_or_else(|| format!("{}: not a quorum token", token.display()))?;
            let what = match parsed.change.checked_sub(9).and_then(KeyService::from_code) {
                Some(service) => format!(
                    "{} the key uid:{} by {}",
                    service.word(),
                    hex(&parsed.params),
                    parsed.name
                ),
                None => format!(
                    "change {} of {:?} (version {})",
                    parsed.change, parsed.name, parsed.target_version
                ),
            };
            eprintln!(
                "signing for {officer}: {what}, expires at {} ms",
                parsed.expires_ms
            );
            match source.sign(&t) {
                Ok(sig) => {
                    println!("{officer}:{}", hex(&sig));
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(failed(&e)),
            }
        }
        QuorumCmd::RegisterKey { source, user } => {
            let public_key = match source.public_key() {
                Ok(k) => k,
                Err(e) => return Ok(failed(&e)),
            };
            let (var, user_type, default) = if user {
                ("HSMPOOL_PIN", CKU_USER, "user")
            } else {
                ("HSMPOOL_SO_PIN", CKU_SO, "admin")
            };
            let pin = secret(var)?;
            let me = officer_of(&pin, default);
            let (engine, _) = match open_cluster(data, &pin, user_type, true) {
                Ok(x) => x,
                Err(e) => return Ok(failed(&e)),
            };
            let change = UserChange::SetApprovalKey {
                name: me.clone(),
                public_key,
            };
            match engine.change_user(&change) {
                Ok(_) => {
                    println!("{me}: approval key registered on every member");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(failed(&format!(
                    "registering {me}'s key: {}",
                    explain(&e, &me)
                ))),
            }
        }
        QuorumCmd::Set {
            m,
            force,
            approvals,
        } => {
            let pin = secret("HSMPOOL_SO_PIN")?;
            let (engine, _) = match open_cluster(data, &pin, CKU_SO, true) {
                Ok(x) => x,
                Err(e) => return Ok(failed(&e)),
            };
            let officers = match engine.users() {
                Ok(set) => set
                    .users
                    .iter()
                    .filter(|u| u.role == Role::Officer && !u.deleted)
                    .count() as u32,
                Err(e) => return Ok(failed(&format!("reading the officers: {e}"))),
            };
            if m > 1 && m + 2 > officers && !force {
                return Ok(failed(&format!(
                    "refused: M = {m} with {officers} officers leaves fewer than two to spare: \
                     one officer lost, locked or away and the cluster cannot make protected \
                     changes, this one included. Add officers first, or pass --force to accept \
                     that risk"
                )));
            }
            if m > 1 && m + 2 > officers {
                eprintln!(
                    "hsmpool: WARNING: M = {m} with {officers} officers: losing {} officer(s) \
                     locks the cluster out of its own administration",
                    officers.saturating_sub(m) + 1
                );
            }
            let approval = approvals.read()?;
            match engine.change_user_approved(&UserChange::SetQuorum { m }, &approval) {
                Ok(_) => {
                    println!("quorum: {m} approval(s) from now on, on every member");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(failed(&format!("quorum set {m}: {}", explain(&e, "")))),
            }
        }
        QuorumCmd::TokenGen { out, change } => {
            match change
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["key", "use", key] => return key_token(data, KeyService::Use, key, out),
                ["key", "manage", key] => return key_token(data, KeyService::Manage, key, out),
                _ => {}
            }
            let change = change_of(&change)?;
            let pin = secret("HSMPOOL_SO_PIN")?;
            let (engine, _) = match open_cluster(data, &pin, CKU_SO, true) {
                Ok(x) => x,
                Err(e) => return Ok(failed(&e)),
            };
            match engine.quorum_token(&change) {
                Ok(t) => write_token(&t, out, &format!("{} {}", change.verb(), change.name())),
                Err(e) => Ok(failed(&format!(
                    "token-gen: {}",
                    explain(&e, change.name())
                ))),
            }
        }
    }
}
