//! GnuTLS (Debian's gnutls-bin 3.7.9: `p11tool`, `certtool`) against the module, loaded with
//! `--provider`: the token listed, RSA and ECDSA key pairs generated in it with labels, objects
//! listed with and without login, `--test-sign` on every key, certificates signed by token keys
//! with `certtool` and written back into the token, a wrong PIN, and deletion.
//!
//! Everything GnuTLS claims is checked beside it: the token is read back through the module's C
//! ABI ([`independent::Inspector`]) (labels, ids, key attributes, the public key p11tool
//! printed), and the certificates certtool signed with token keys are verified with aws-lc-rs
//! against the public key the token holds (a flipped-bit copy must fail). `--test-sign` itself
//! verifies in GnuTLS's own software, against both the private key's public parameters and the
//! public-key object.
//!
//! Not checked: `--generate-privkey ed25519`. GnuTLS 3.7.9 asks for it with `CKM_EDDSA` (the
//! signature mechanism) instead of `CKM_EC_EDWARDS_KEY_PAIR_GEN`, which the module refuses with
//! `CKR_MECHANISM_INVALID`, as PKCS #11 3.0 §5.18.2 (`C_GenerateKeyPair`) says it must.

mod common;
mod independent;

use std::path::PathBuf;
use std::sync::Mutex;

use common::{ensure, Kind, Run, Setup, Tally, TOKEN_LABEL, USER_PIN};
use cryptoki_sys::*;
use hsmpool_tests::require_tool;
use independent::{hex, Certificate, Inspector, PublicKey, View, P256, P384};

/// The two set-ups of this binary share the test process's module (for [`Inspector`]); they
/// run one after the other even when the harness runs tests on several threads.
static SERIAL: Mutex<()> = Mutex::new(());

/// The token's PKCS #11 URI.
fn token_uri() -> String {
    format!("pkcs11:token={TOKEN_LABEL}")
}

/// The URI of the object labelled `label` of `kind` ("private", "public", "cert").
fn object_uri(label: &str, kind: &str) -> String {
    format!("pkcs11:token={TOKEN_LABEL};object={label};type={kind}")
}

/// GnuTLS's tools pointed at the module.
struct Gnutls<'a> {
    setup: &'a Setup,
    p11tool: PathBuf,
    certtool: PathBuf,
}

impl Gnutls<'_> {
    /// `p11tool --provider MODULE args...`, with `GNUTLS_PIN` set to `pin` when given.
    fn p11tool_pin(&self, pin: Option<&str>, args: &[&str]) -> Run {
        let mut c = self.setup.command(&self.p11tool);
        c.arg("--provider").arg(&self.setup.module).args(args);
        c.env_remove("GNUTLS_PIN");
        if let Some(p) = pin {
            c.env("GNUTLS_PIN", p);
        }
        self.setup.run(c)
    }

    /// `p11tool --provider MODULE args...` without a PIN.
    fn p11tool(&self, args: &[&str]) -> Run {
        self.p11tool_pin(None, args)
    }

    /// `p11tool --provider MODULE --login args...` with the user PIN in `GNUTLS_PIN`.
    fn p11tool_login(&self, args: &[&str]) -> Run {
        let mut all = vec!["--login"];
        all.extend_from_slice(args);
        self.p11tool_pin(Some(USER_PIN), &all)
    }

    /// `certtool --provider MODULE args...` with the user PIN in `GNUTLS_PIN`.
    fn certtool(&self, args: &[&str]) -> Run {
        let mut c = self.setup.command(&self.certtool);
        c.arg("--provider")
            .arg(&self.setup.module)
            .args(args)
            .env("GNUTLS_PIN", USER_PIN);
        self.setup.run(c)
    }

    /// A file in the scratch dir, as a string for the command line.
    fn file(&self, name: &str) -> String {
        self.setup.dir().join(name).display().to_string()
    }
}

/// `Err` unless the token holds a key pair labelled `label`: the private half generated there
/// and never leaving it, the public half equal to `want`, both sharing one non-empty CKA_ID.
fn check_pair(v: &View, label: &str, want: &PublicKey) -> Result<Vec<u8>, String> {
    let private = v.one(CKO_PRIVATE_KEY, label)?;
    v.check_private_key_stays_in(private.handle)?;
    let public = v.one(CKO_PUBLIC_KEY, label)?;
    ensure(
        !private.id.is_empty() && private.id == public.id,
        format!(
            "the halves of {label} have CKA_IDs {} and {}",
            hex(&private.id),
            hex(&public.id)
        ),
    )?;
    let held = v.public_key(public.handle)?;
    ensure(
        &held == want,
        format!(
            "the token's public key {label} is not the one p11tool printed: {held:?} vs {want:?}"
        ),
    )?;
    Ok(private.id)
}

fn suite(kind: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new(kind);
    setup.init_token();
    let g = Gnutls {
        setup: &setup,
        p11tool: require_tool("p11tool"),
        certtool: require_tool("certtool"),
    };
    let token = Inspector::new(&setup);
    let mut t = Tally::new("GnuTLS (p11tool, certtool)", &setup);

    t.check("p11tool --list-tokens shows the token", || {
        let info = token.with(|v| v.token_info());
        let serial = String::from_utf8_lossy(&info.serialNumber)
            .trim_end()
            .to_owned();
        g.p11tool(&["--list-tokens"])
            .ok()
            .stdout_has(&format!("Label: {TOKEN_LABEL}"))
            .stdout_has("Manufacturer: hsmpool")
            .stdout_has(&format!("Serial: {serial}"))
            .stdout_has(&format!(
                "manufacturer=hsmpool;serial={serial};token={TOKEN_LABEL}"
            ))
            .stdout_has("Requires login")
            .lacks("Uninitialized");
        Ok(())
    });

    let keys: [(&str, &[&str], &str); 3] = [
        ("gnutls-rsa", &["rsa", "--bits", "2048"], "RSA-2048"),
        (
            "gnutls-p256",
            &["ecdsa", "--curve", "secp256r1"],
            "EC P-256",
        ),
        (
            "gnutls-p384",
            &["ecdsa", "--curve", "secp384r1"],
            "EC P-384",
        ),
    ];
    for (label, algo, want) in keys {
        t.check(
            &format!(
                "p11tool --generate-privkey {} makes {label} in the token",
                algo.join(" ")
            ),
            || {
                let out = g.file(&format!("{label}.pub.pem"));
                let uri = token_uri();
                let mut args = vec!["--generate-privkey"];
                args.extend_from_slice(algo);
                args.extend_from_slice(&["--label", label, "--outfile", &out, &uri]);
                g.p11tool_login(&args).ok();
                let text = std::fs::read_to_string(&out).map_err(|e| format!("{out}: {e}"))?;
                let printed = PublicKey::from_spki(&independent::pem(&text, "PUBLIC KEY")?)?;
                ensure(
                    printed.describe() == want,
                    format!("p11tool printed a {} key", printed.describe()),
                )?;
                token.with(|v| check_pair(v, label, &printed)).map(|_| ())
            },
        );
    }

    t.check(
        "p11tool --list-all shows private keys only after --login",
        || {
            let anon = g.p11tool(&["--list-all", &token_uri()]);
            anon.ok().lacks("type=private");
            let logged = g.p11tool_login(&["--list-all", &token_uri()]);
            logged.ok();
            for (label, _, _) in keys {
                anon.stdout_has(&format!("object={label};type=public"));
                logged
                    .stdout_has(&format!("object={label};type=public"))
                    .stdout_has(&format!("object={label};type=private"));
            }
            logged
                .stdout_has("Type: Private key (RSA-2048)")
                .stdout_has("Type: Private key (EC/ECDSA-SECP256R1)")
                .stdout_has("Type: Private key (EC/ECDSA-SECP384R1)")
                .stdout_has("CKA_SENSITIVE");
            Ok(())
        },
    );

    for (label, params, scheme) in [
        ("gnutls-rsa", None, "RSA-SHA256"),
        ("gnutls-rsa", Some("RSA-PSS"), "RSA-PSS-SHA256"),
        ("gnutls-p256", None, "ECDSA-SHA256"),
        ("gnutls-p384", None, "ECDSA-SHA256"),
    ] {
        t.check(
            &format!("p11tool --test-sign with {label} ({scheme})"),
            || {
                let uri = object_uri(label, "private");
                let mut args = vec!["--test-sign"];
                if let Some(p) = params {
                    args.extend_from_slice(&["--sign-params", p]);
                }
                args.push(&uri);
                g.p11tool_login(&args)
                    .ok()
                    .has(&format!("Signing using {scheme}"))
                    .has("Verifying against private key parameters... ok")
                    .has("Verifying against public key in the token... ok")
                    .lacks("failed");
                Ok(())
            },
        );
    }

    let template = setup.dir().join("cert.tmpl");
    std::fs::write(
        &template,
        "cn = \"hsmpool GnuTLS\"\nserial = 7\nexpiration_days = 30\nca\ncert_signing_key\nsigning_key\n",
    )
    .expect("the scratch dir is writable");
    let template = template.display().to_string();

    t.check(
        "certtool signs self-signed certificates with the token keys; aws-lc-rs verifies them",
        || {
            for (label, _, _) in keys {
                let out = g.file(&format!("{label}.crt.pem"));
                g.certtool(&[
                    "--generate-self-signed",
                    "--load-privkey",
                    &object_uri(label, "private"),
                    "--template",
                    &template,
                    "--outfile",
                    &out,
                ])
                .ok();
                let text = std::fs::read_to_string(&out).map_err(|e| format!("{out}: {e}"))?;
                let cert = Certificate::parse(&independent::pem(&text, "CERTIFICATE")?)?;
                cert.check_self_signed()
                    .map_err(|e| format!("{label}: {e}"))?;
                let held = token.with(|v| {
                    let o = v.one(CKO_PUBLIC_KEY, label)?;
                    v.public_key(o.handle)
                })?;
                ensure(
                    cert.key == held,
                    format!("the certificate certtool made with {label} carries another key"),
                )?;
                if label == "gnutls-p384" {
                    ensure(
                        matches!(&cert.key, PublicKey::Ec { curve, .. } if curve == P384),
                        "the P-384 certificate's key is not on P-384",
                    )?;
                } else if label == "gnutls-p256" {
                    ensure(
                        matches!(&cert.key, PublicKey::Ec { curve, .. } if curve == P256),
                        "the P-256 certificate's key is not on P-256",
                    )?;
                }
            }
            Ok(())
        },
    );

    t.check(
        "p11tool --write stores a certificate in the token beside its key",
        || {
            let id = token.with(|v| v.one(CKO_PRIVATE_KEY, "gnutls-rsa").map(|o| o.id))?;
            let cert_file = g.file("gnutls-rsa.crt.pem");
            g.p11tool_login(&[
                "--write",
                "--load-certificate",
                &cert_file,
                "--label",
                "gnutls-rsa-cert",
                "--id",
                &hex(&id),
                &token_uri(),
            ])
            .ok();
            let text = std::fs::read_to_string(&cert_file).map_err(|e| e.to_string())?;
            let der = independent::pem(&text, "CERTIFICATE")?;
            token.with(|v| {
                let o = v.one(CKO_CERTIFICATE, "gnutls-rsa-cert")?;
                ensure(
                    o.id == id,
                    format!(
                        "the certificate's CKA_ID is {}, the key's {}",
                        hex(&o.id),
                        hex(&id)
                    ),
                )?;
                ensure(
                    v.bytes(o.handle, CKA_VALUE).ok() == Some(der.clone()),
                    "the token's CKA_VALUE is not the certificate written",
                )
            })?;
            g.p11tool(&["--list-all-certs", &token_uri()])
                .ok()
                .stdout_has("object=gnutls-rsa-cert;type=cert")
                .stdout_has("Label: gnutls-rsa-cert");
            Ok(())
        },
    );

    t.check(
        "a wrong PIN is refused and flags 'uPIN low count' until the next good login",
        || {
            let uri = object_uri("gnutls-p256", "private");
            g.p11tool_pin(Some("not-the-pin"), &["--login", "--test-sign", &uri])
                .failed()
                .has("wrong password")
                .lacks("Signing using");
            // CK_TOKEN_INFO's CKF_USER_PIN_COUNT_LOW (PKCS #11 3.0 §3.2): "an incorrect user
            // login PIN has been entered at least once since the last successful
            // authentication".
            g.p11tool(&["--list-tokens"])
                .ok()
                .stdout_has("uPIN low count");
            g.p11tool_login(&["--test-sign", &uri])
                .ok()
                .has("Verifying against public key in the token... ok");
            g.p11tool(&["--list-tokens"]).ok().lacks("uPIN low count");
            g.p11tool_login(&["--test-sign", &uri])
                .ok()
                .lacks("Only few tries left");
            Ok(())
        },
    );

    t.check("p11tool --delete removes a key pair from the token", || {
        g.p11tool_login(&[
            "--batch",
            "--delete",
            &format!("pkcs11:token={TOKEN_LABEL};object=gnutls-p384"),
        ])
        .ok();
        token.with(|v| {
            ensure(
                v.objects(CKO_PRIVATE_KEY, Some("gnutls-p384")).is_empty()
                    && v.objects(CKO_PUBLIC_KEY, Some("gnutls-p384")).is_empty(),
                "gnutls-p384 is still in the token",
            )?;
            ensure(
                v.objects(CKO_PRIVATE_KEY, None).len() == 2,
                "p11tool --delete removed other keys too",
            )
        })?;
        g.p11tool_login(&["--list-privkeys", &token_uri()])
            .ok()
            .lacks("gnutls-p384")
            .stdout_has("object=gnutls-rsa;type=private");
        Ok(())
    });

    t.finish();
}

#[test]
fn interop_gnutls_embedded() {
    suite(Kind::Embedded);
}

#[test]
fn interop_gnutls_cluster() {
    suite(Kind::Cluster);
}

#[test]
fn interop_gnutls_softhsm() {
    suite(Kind::SoftHsm);
}

#[test]
fn interop_gnutls_mixed() {
    suite(Kind::Mixed);
}
