//! NSS (Debian's libnss3-tools 3.87: `modutil`, `certutil`) against the module: registered in
//! a fresh NSS database, its token listed, key pairs generated in it, self-signed and issued
//! certificates made with keys generated in it, keys and certificates listed and deleted.
//!
//! Everything NSS claims is checked beside it: the token is read back through the module's C
//! ABI ([`independent::Inspector`]), and every certificate NSS signed with a token key is taken
//! apart here and its signature verified with aws-lc-rs against the public key the token holds
//! (with a flipped-bit copy that must fail), and the issued chain with `openssl verify`.
//!
//! NSS keeps trust settings (`-t`) in its own database: the module refuses NSS's vendor trust
//! objects (`CKO_NSS_TRUST`) in `C_CreateObject` with `CKR_ATTRIBUTE_VALUE_INVALID` and NSS
//! falls back to its internal token, as it does for any token without them.

mod common;
mod independent;

use std::path::PathBuf;
use std::sync::Mutex;

use aws_lc_rs::digest;
use common::{ensure, Kind, Run, Setup, Tally, TOKEN_LABEL, USER_PIN};
use cryptoki_sys::*;
use hsmpool_tests::require_tool;
use independent::{hex, unhex, Certificate, Inspector, View, P256};

/// The two set-ups of this binary share the test process's module (for [`Inspector`]); they
/// run one after the other even when the harness runs tests on several threads.
static SERIAL: Mutex<()> = Mutex::new(());

/// The module's name in the NSS database.
const MODULE_NAME: &str = "hsmpool";

/// An NSS database in the scratch directory, with the PIN and noise files certutil reads.
struct Nss<'a> {
    setup: &'a Setup,
    certutil: PathBuf,
    modutil: PathBuf,
    db: String,
    pin_file: String,
    noise_file: String,
}

impl<'a> Nss<'a> {
    /// A fresh, empty database (no password on NSS's own key store).
    fn new(setup: &'a Setup) -> Nss<'a> {
        let dir = setup.dir().join("nssdb");
        std::fs::create_dir(&dir).expect("the scratch dir is writable");
        let pin_file = setup.dir().join("pin.txt");
        std::fs::write(&pin_file, format!("{USER_PIN}\n")).expect("the scratch dir is writable");
        let noise_file = setup.dir().join("noise.bin");
        let mut noise = [0u8; 256];
        aws_lc_rs::rand::fill(&mut noise).expect("random bytes");
        std::fs::write(&noise_file, noise).expect("the scratch dir is writable");
        let nss = Nss {
            setup,
            certutil: require_tool("certutil"),
            modutil: require_tool("modutil"),
            db: format!("sql:{}", dir.display()),
            pin_file: pin_file.display().to_string(),
            noise_file: noise_file.display().to_string(),
        };
        nss.certutil(&["-N", "--empty-password"]).ok();
        nss
    }

    /// `certutil -d sql:DB args...`
    fn certutil(&self, args: &[&str]) -> Run {
        let mut c = self.setup.command(&self.certutil);
        c.arg("-d").arg(&self.db).args(args);
        self.setup.run(c)
    }

    /// `certutil -d sql:DB -h TOKEN -f PINFILE args...`: on our token, logged in.
    fn on_token(&self, args: &[&str]) -> Run {
        let mut all = vec!["-h", TOKEN_LABEL, "-f", &self.pin_file];
        all.extend_from_slice(args);
        self.certutil(&all)
    }

    /// `modutil -dbdir sql:DB args...`
    fn modutil(&self, args: &[&str]) -> Run {
        let mut c = self.setup.command(&self.modutil);
        c.arg("-dbdir").arg(&self.db).args(args);
        self.setup.run(c)
    }

    /// `certutil -G`: a key pair generated in the token. `key` is `["-k", "rsa", "-g", "2048"]`
    /// or `["-k", "ec", "-q", "nistp256"]`.
    fn generate(&self, key: &[&str]) -> Run {
        let mut args = vec!["-G", "-z", &self.noise_file];
        args.extend_from_slice(key);
        self.on_token(&args)
    }

    /// The token certificate `nickname` as NSS exports it (`certutil -L -a`): (PEM, DER).
    fn export(&self, nickname: &str) -> Result<(String, Vec<u8>), String> {
        let full = format!("{TOKEN_LABEL}:{nickname}");
        let r = self.on_token(&["-L", "-n", &full, "-a"]);
        r.ok();
        let der = independent::pem(&r.stdout, "CERTIFICATE")?;
        Ok((r.stdout.clone(), der))
    }
}

/// The keys `certutil -K` lists: (key type, CKA_ID, nickname).
fn listed_keys(run: &Run) -> Vec<(String, Vec<u8>, String)> {
    run.stdout
        .lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix('<')?;
            let (_, rest) = rest.split_once('>')?;
            let mut f = rest.split_whitespace();
            let ty = f.next()?.to_owned();
            let id = unhex(f.next()?).ok()?;
            let name = f.collect::<Vec<_>>().join(" ");
            Some((ty, id, name))
        })
        .collect()
}

/// The token's private keys: (NSS's name for the key type, CKA_ID).
fn token_private_keys(v: &View) -> Vec<(String, Vec<u8>)> {
    let mut keys: Vec<(String, Vec<u8>)> = v
        .objects(CKO_PRIVATE_KEY, None)
        .into_iter()
        .map(|o| {
            let ty = match v.ulong(o.handle, CKA_KEY_TYPE) {
                Ok(CKK_RSA) => "rsa".to_owned(),
                Ok(CKK_EC) => "ec".to_owned(),
                other => format!("{other:?}"),
            };
            (ty, o.id)
        })
        .collect();
    keys.sort();
    keys
}

/// `Err` unless the token holds a key pair with CKA_ID `id` whose private half was generated
/// there and never leaves it, and whose public half is `want` (when given). Returns the
/// public key.
fn check_pair(
    v: &View,
    id: &[u8],
    want: Option<&independent::PublicKey>,
) -> Result<independent::PublicKey, String> {
    let private = v.by_id(CKO_PRIVATE_KEY, id)?;
    v.check_private_key_stays_in(private.handle)?;
    let public = v.by_id(CKO_PUBLIC_KEY, id)?;
    let key = v.public_key(public.handle)?;
    if let Some(w) = want {
        ensure(
            &key == w,
            format!(
                "the token's public key with CKA_ID {} is not the certificate's: {key:?} vs {w:?}",
                hex(id)
            ),
        )?;
    }
    Ok(key)
}

/// NSS names a key by the SHA-1 of its public value (the RSA modulus, the EC point): `Err`
/// unless the token's CKA_ID (which NSS sets with `C_SetAttributeValue`) is exactly that.
fn check_nss_id(v: &View, id: &[u8]) -> Result<(), String> {
    let public = v.by_id(CKO_PUBLIC_KEY, id)?;
    let value = match v.public_key(public.handle)? {
        independent::PublicKey::Rsa { n, .. } => n,
        independent::PublicKey::Ec { point, .. } => point,
    };
    let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &value);
    ensure(
        sha1.as_ref() == id,
        format!(
            "CKA_ID {} is not the SHA-1 of the public value ({})",
            hex(id),
            hex(sha1.as_ref())
        ),
    )
}

/// A self-signed certificate NSS made with a new key in the token: `Err` unless the token holds
/// it under `nickname`, its signature verifies under its own key, and that key is a pair in the
/// token (sharing the certificate's CKA_ID) whose private half never leaves it.
fn check_self_signed_in_token(token: &Inspector, nickname: &str) -> Result<Certificate, String> {
    token.with(|v| {
        let cert_obj = v.one(CKO_CERTIFICATE, nickname)?;
        let der = v
            .bytes(cert_obj.handle, CKA_VALUE)
            .map_err(|rv| format!("CKA_VALUE of the certificate: CK_RV {rv:#x}"))?;
        let cert = Certificate::parse(&der)?;
        cert.check_self_signed()?;
        ensure(
            !cert_obj.id.is_empty(),
            "the certificate object has no CKA_ID",
        )?;
        check_pair(v, &cert_obj.id, Some(&cert.key))?;
        Ok(cert)
    })
}

fn suite(kind: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let openssl = require_tool("openssl");
    let setup = Setup::new(kind);
    setup.init_token();
    let nss = Nss::new(&setup);
    let token = Inspector::new(&setup);
    let module = setup.module.display().to_string();
    let mut t = Tally::new("NSS (modutil, certutil)", &setup);

    t.check(
        "modutil -add registers the module in a fresh database",
        || {
            nss.modutil(&["-add", MODULE_NAME, "-libfile", &module, "-force"])
                .ok()
                .stdout_has(&format!("Module \"{MODULE_NAME}\" added to database."));
            nss.modutil(&["-list", MODULE_NAME])
                .ok()
                .stdout_has(&format!("Library file: {module}"))
                .stdout_has("PKCS #11 Version 3.0")
                .stdout_has(&format!("Token Name: {TOKEN_LABEL}"))
                .stdout_has("Login Type: Login required")
                .stdout_has("User Pin: Initialized");
            Ok(())
        },
    );

    t.check("certutil -U lists the token", || {
        nss.certutil(&["-U"])
            .ok()
            .stdout_has(&format!("token: {TOKEN_LABEL}"))
            .stdout_has(&format!(
                "uri: pkcs11:token={TOKEN_LABEL};manufacturer=hsmpool;"
            ));
        Ok(())
    });

    t.check("a wrong PIN is refused (SEC_ERROR_BAD_PASSWORD)", || {
        let bad = setup.dir().join("bad-pin.txt");
        std::fs::write(&bad, "not-the-pin\n").map_err(|e| e.to_string())?;
        let bad = bad.display().to_string();
        nss.certutil(&["-K", "-h", TOKEN_LABEL, "-f", &bad])
            .failed()
            .has("SEC_ERROR_BAD_PASSWORD");
        Ok(())
    });

    t.check(
        "certutil -G generates RSA-2048 and P-256 key pairs in the token",
        || {
            ensure(
                token.with(token_private_keys).is_empty(),
                "the fresh token already holds private keys",
            )?;
            nss.generate(&["-k", "rsa", "-g", "2048"]).ok();
            nss.generate(&["-k", "ec", "-q", "nistp256"]).ok();
            token.with(|v| {
                let keys = token_private_keys(v);
                let types: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
                ensure(
                    types == ["ec", "rsa"],
                    format!("the token's private keys after certutil -G: {keys:?}"),
                )?;
                for (ty, id) in &keys {
                    let key = check_pair(v, id, None)?;
                    let want = if ty == "rsa" { "RSA-2048" } else { "EC P-256" };
                    ensure(
                        key.describe() == want,
                        format!("{ty} key is {}", key.describe()),
                    )?;
                    check_nss_id(v, id)?;
                }
                Ok(())
            })
        },
    );

    t.check(
        "certutil -K lists the token's keys by the CKA_ID the token holds",
        || {
            let r = nss.on_token(&["-K"]);
            r.ok()
                .stdout_has(&format!("Checking token \"{TOKEN_LABEL}\""))
                .has("(orphan)");
            let mut listed: Vec<(String, Vec<u8>)> = listed_keys(&r)
                .into_iter()
                .map(|(ty, id, _)| (ty, id))
                .collect();
            listed.sort();
            let held = token.with(token_private_keys);
            ensure(
                listed == held && held.len() == 2,
                format!("certutil -K listed {listed:?}; the token holds {held:?}{r}"),
            )
        },
    );

    let ca_ext = setup.dir().join("basic-constraints-ca.der");
    // BasicConstraints ::= SEQUENCE { cA BOOLEAN TRUE }, for certutil's --extGeneric.
    std::fs::write(&ca_ext, [0x30, 0x03, 0x01, 0x01, 0xff]).expect("the scratch dir is writable");
    let ca_ext = format!("2.5.29.19:critical:{}", ca_ext.display());

    for (nickname, key, subject, serial) in [
        (
            "nss-rsa-ca",
            ["-k", "rsa", "-g", "2048"],
            "CN=hsmpool NSS RSA CA",
            "101",
        ),
        (
            "nss-ec-ca",
            ["-k", "ec", "-q", "nistp256"],
            "CN=hsmpool NSS EC CA",
            "102",
        ),
    ] {
        t.check(
            &format!(
                "certutil -S -x makes the self-signed {nickname} with a key generated in the token"
            ),
            || {
                let mut args = vec![
                    "-S",
                    "-x",
                    "-n",
                    nickname,
                    "-s",
                    subject,
                    "-m",
                    serial,
                    "-v",
                    "12",
                    "-Z",
                    "SHA256",
                    "-t",
                    "CT,C,C",
                    "--keyUsage",
                    "certSigning,crlSigning",
                    "--extGeneric",
                    &ca_ext,
                    "-z",
                    &nss.noise_file,
                ];
                args.extend_from_slice(&key);
                nss.on_token(&args).ok();
                let cert = check_self_signed_in_token(&token, nickname)?;
                let want = if key[1] == "rsa" {
                    "RSA-2048"
                } else {
                    "EC P-256"
                };
                ensure(
                    cert.key.describe() == want,
                    format!("the certificate's key is {}", cert.key.describe()),
                )?;
                if let independent::PublicKey::Ec { curve, .. } = &cert.key {
                    ensure(curve == P256, "the EC certificate is not on P-256")?;
                }
                Ok(())
            },
        );
    }

    t.check(
        "certutil -L -h lists the token's certificates and exports them as the token holds them",
        || {
            let r = nss.on_token(&["-L"]);
            r.ok()
                .stdout_has(&format!("{TOKEN_LABEL}:nss-rsa-ca"))
                .stdout_has(&format!("{TOKEN_LABEL}:nss-ec-ca"));
            for nickname in ["nss-rsa-ca", "nss-ec-ca"] {
                let (_, exported) = nss.export(nickname)?;
                let held = token.with(|v| {
                    let o = v.one(CKO_CERTIFICATE, nickname)?;
                    v.bytes(o.handle, CKA_VALUE)
                        .map_err(|rv| format!("CK_RV {rv:#x}"))
                })?;
                ensure(
                    exported == held,
                    format!("certutil -L -r of {nickname} differs from the token's CKA_VALUE"),
                )?;
            }
            Ok(())
        },
    );

    t.check(
        "certutil -S -c issues a leaf signed by a token CA key; aws-lc-rs and openssl verify it",
        || {
            for (ca, leaf, serial) in [
                ("nss-rsa-ca", "nss-leaf-rsa", "201"),
                ("nss-ec-ca", "nss-leaf-ec", "202"),
            ] {
                let issuer = format!("{TOKEN_LABEL}:{ca}");
                let subject = format!("CN=hsmpool NSS leaf of {ca}");
                nss.on_token(&[
                    "-S",
                    "-c",
                    &issuer,
                    "-n",
                    leaf,
                    "-s",
                    &subject,
                    "-m",
                    serial,
                    "-v",
                    "12",
                    "-Z",
                    "SHA256",
                    "-t",
                    ",,",
                    "--keyUsage",
                    "digitalSignature",
                    "-k",
                    "ec",
                    "-q",
                    "nistp256",
                    "-z",
                    &nss.noise_file,
                ])
                .ok();
                let (ca_pem, ca_der) = nss.export(ca)?;
                let (leaf_pem, leaf_der) = nss.export(leaf)?;
                let ca_cert = Certificate::parse(&ca_der)?;
                let leaf_cert = Certificate::parse(&leaf_der)?;
                ensure(
                    leaf_cert.issuer == ca_cert.subject,
                    format!("{leaf} is not issued by {ca}"),
                )?;
                leaf_cert.verify_with(&ca_cert.key)?;
                // The leaf's own key is a pair generated in the token too.
                token.with(|v| {
                    let o = v.one(CKO_CERTIFICATE, leaf)?;
                    check_pair(v, &o.id, Some(&leaf_cert.key)).map(|_| ())
                })?;
                // And openssl agrees on the chain (checking the root's self-signature too).
                let ca_file = setup.dir().join(format!("{ca}.pem"));
                let leaf_file = setup.dir().join(format!("{leaf}.pem"));
                std::fs::write(&ca_file, ca_pem).map_err(|e| e.to_string())?;
                std::fs::write(&leaf_file, leaf_pem).map_err(|e| e.to_string())?;
                let mut c = setup.command(&openssl);
                c.args(["verify", "-check_ss_sig", "-CAfile"])
                    .arg(&ca_file)
                    .arg(&leaf_file);
                setup.run(c).ok().stdout_has(": OK");
            }
            Ok(())
        },
    );

    t.check("certutil -F deletes a key from the token", || {
        let (ty, id) = token
            .with(|v| {
                let orphans: Vec<(String, Vec<u8>)> = token_private_keys(v)
                    .into_iter()
                    .filter(|(_, id)| v.by_id(CKO_CERTIFICATE, id).is_err())
                    .collect();
                orphans.into_iter().find(|(ty, _)| ty == "rsa")
            })
            .ok_or("no orphan RSA key left from certutil -G")?;
        let before = token.with(token_private_keys).len();
        nss.on_token(&["-F", "-k", &hex(&id)]).ok();
        token.with(|v| {
            ensure(
                v.by_id(CKO_PRIVATE_KEY, &id).is_err(),
                format!("the {ty} private key {} is still in the token", hex(&id)),
            )?;
            let after = token_private_keys(v).len();
            ensure(
                after == before - 1,
                format!("{before} private keys before certutil -F, {after} after"),
            )
        })
    });

    t.check("certutil -D deletes a certificate from the token", || {
        let full = format!("{TOKEN_LABEL}:nss-leaf-ec");
        nss.on_token(&["-D", "-n", &full]).ok();
        token.with(|v| {
            ensure(
                v.objects(CKO_CERTIFICATE, Some("nss-leaf-ec")).is_empty(),
                "nss-leaf-ec is still in the token",
            )?;
            ensure(
                v.objects(CKO_CERTIFICATE, Some("nss-rsa-ca")).len() == 1,
                "certutil -D took another certificate too",
            )
        })?;
        nss.on_token(&["-L"])
            .ok()
            .lacks(&full)
            .stdout_has(&format!("{TOKEN_LABEL}:nss-leaf-rsa"));
        Ok(())
    });

    t.finish();
}

#[test]
fn interop_nss_embedded() {
    suite(Kind::Embedded);
}

#[test]
fn interop_nss_cluster() {
    suite(Kind::Cluster);
}

#[test]
fn interop_nss_softhsm() {
    suite(Kind::SoftHsm);
}

#[test]
fn interop_nss_mixed() {
    suite(Kind::Mixed);
}
