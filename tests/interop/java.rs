//! Java 17 through SunPKCS11 (issue 6): `tests/interop/java/HsmpoolInterop.java`, compiled with
//! javac into the scratch directory and run with java against a SunPKCS11 configuration
//! (`name = hsmpool`, `library = <the built module>`, `slot = 0`), against both set-ups.
//!
//! Before Java runs, this process makes two token key pairs through the C ABI (RSA-2048 and
//! P-256, each with a label and a `CKA_ID`, and no certificate), the kind of key SunPKCS11's
//! KeyStore does not list. The program then runs twice:
//!
//! - `off`: the module's configuration as the set-up wrote it. The two key pairs must be missing
//!   from the KeyStore aliases; RSA and EC key pairs and AES keys are generated in the token;
//!   SHA256withRSA, RSASSA-PSS and SHA256withECDSA signatures are verified by SunRsaSign and
//!   SunEC; AES/GCM/NoPadding and AES/CBC/PKCS5Padding round-trip through the token and, with
//!   an imported key of known value, equal SunJCE both ways; then 32 threads do all of it at
//!   once and every operation is counted.
//! - `on`: the same configuration plus `[compat] self_signed_certificates = true`. The two key
//!   pairs are listed, each entry's self-signed certificate verifies with the JDK, and the
//!   entry's private key signs what the certificate's public key verifies; everything else runs
//!   again to show the option changes nothing else.
//!
//! Every line the program prints (`PASS name` / `FAIL name: why`) becomes one check of the
//! tally; `DONE n` must end each run. Afterwards the token is searched through the C ABI: the
//! certificates exist only while the option is on (nothing was stored on the HSMs).

mod common;

use std::path::{Path, PathBuf};

use common::{ensure, with_module, Kind, Run, Setup, Tally, USER_PIN};
use cryptoki_sys::*;
use hsmpool_tests::raw::{attr, attr_bytes, attr_value, find, generate_pair, mech, Module};
use hsmpool_tests::{call, require_tool};

/// The token key pairs made outside Java: (label, `CKA_ID`, key type).
const OUTSIDE: [(&str, &[u8], CK_KEY_TYPE); 2] = [
    ("outside-rsa", &[0x0a, 0x01], CKK_RSA),
    ("outside-ec", &[0x0e, 0x01], CKK_EC),
];

/// The Java source, next to this file.
fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/java/HsmpoolInterop.java")
}

/// A read-write session with the user logged in.
fn user_session(m: &Module) -> Result<CK_SESSION_HANDLE, String> {
    let h = m.open(true);
    let rv = m.login(h, CKU_USER, USER_PIN);
    ensure(rv == CKR_OK, format!("C_Login: {rv:#x}"))?;
    Ok(h)
}

/// Make the [`OUTSIDE`] key pairs as token objects, with no certificate.
fn make_outside_pairs(conf: &Path) -> Result<(), String> {
    with_module(conf, make_outside_pairs_in)
}

fn make_outside_pairs_in(m: &Module) -> Result<(), String> {
    let h = user_session(m)?;
    let t = CK_TRUE;
    let bits: CK_ULONG = 2048;
    let e = [1u8, 0, 1];
    let p256 = hsmpool_tests::raw::P256_PARAMS;
    for (label, id, kt) in OUTSIDE {
        let mut pub_t = vec![
            attr(CKA_TOKEN, &t),
            attr(CKA_VERIFY, &t),
            attr_bytes(CKA_LABEL, label.as_bytes()),
            attr_bytes(CKA_ID, id),
        ];
        let mut priv_t = vec![
            attr(CKA_TOKEN, &t),
            attr(CKA_PRIVATE, &t),
            attr(CKA_SENSITIVE, &t),
            attr(CKA_SIGN, &t),
            attr_bytes(CKA_LABEL, label.as_bytes()),
            attr_bytes(CKA_ID, id),
        ];
        let mut mm = if kt == CKK_RSA {
            pub_t.push(attr(CKA_MODULUS_BITS, &bits));
            pub_t.push(attr_bytes(CKA_PUBLIC_EXPONENT, &e));
            mech(CKM_RSA_PKCS_KEY_PAIR_GEN)
        } else {
            pub_t.push(attr_bytes(CKA_EC_PARAMS, &p256));
            mech(CKM_EC_KEY_PAIR_GEN)
        };
        generate_pair(m, h, &mut mm, &mut pub_t, &mut priv_t)
            .map_err(|rv| format!("C_GenerateKeyPair {label}: {rv:#x}"))?;
    }
    Ok(())
}

/// The `CKA_ID`s of the token's certificates, as the module configured by `conf` presents them.
fn certificate_ids(conf: &Path) -> Result<Vec<Vec<u8>>, String> {
    with_module(conf, |m| {
        let h = user_session(m)?;
        let class = CKO_CERTIFICATE;
        let mut t = [attr(CKA_CLASS, &class)];
        let mut ids = Vec::new();
        for o in find(m, h, &mut t) {
            ids.push(attr_value(m, h, o, CKA_ID).map_err(|rv| format!("CKA_ID: {rv:#x}"))?);
        }
        ids.sort();
        let _ = call!(m, C_CloseSession, h);
        Ok(ids)
    })
}

/// One run's lines as checks: `PASS`/`FAIL` lines, then whether it ran to `DONE` and exited 0.
fn tally_run(t: &mut Tally, mode: &str, run: &Run) {
    let mut seen = 0usize;
    let mut done = None;
    for line in run.stdout.lines() {
        if let Some(name) = line.strip_prefix("PASS ") {
            seen += 1;
            t.check(&format!("[{mode}] {name}"), || Ok(()));
        } else if let Some(rest) = line.strip_prefix("FAIL ") {
            seen += 1;
            let (name, why) = rest.split_once(": ").unwrap_or((rest, "failed"));
            t.check(&format!("[{mode}] {name}"), || Err(why.to_owned()));
        } else if let Some(n) = line.strip_prefix("DONE ") {
            done = n.trim().parse::<usize>().ok();
        }
    }
    t.check(
        &format!("[{mode}] the program ran all its checks and exited 0"),
        || {
            ensure(
                run.status.success() && done == Some(seen) && seen > 0,
                format!("{seen} checks reported, DONE {done:?}{run}"),
            )
        },
    );
}

fn suite(kind: Kind) {
    let javac = require_tool("javac");
    let java = require_tool("java");
    let setup = Setup::new(kind);
    let mut t = Tally::new("Java 17 SunPKCS11", &setup);
    let classes = setup.dir().join("classes");

    let compiled = t.check("javac compiles HsmpoolInterop.java", || {
        let mut c = setup.command(&javac);
        c.arg("-d").arg(&classes).arg(source());
        setup.run(c).ok();
        Ok(())
    });
    let made = t.check(
        "the token is initialised and two key pairs without a certificate are made through the C ABI",
        || {
            setup.init_token();
            make_outside_pairs(&setup.conf)
        },
    );

    // The SunPKCS11 configuration a user writes, and the module configuration with the option.
    let sunpkcs11 = setup.dir().join("sunpkcs11.cfg");
    std::fs::write(
        &sunpkcs11,
        format!(
            "name = hsmpool\nlibrary = {}\nslot = 0\n",
            setup.module.display()
        ),
    )
    .expect("the scratch dir is writable");
    let conf_on = setup.dir().join("hsmpool-certs.toml");
    let base = std::fs::read_to_string(&setup.conf).expect("the set-up wrote its configuration");
    std::fs::write(
        &conf_on,
        format!("{base}\n[compat]\nself_signed_certificates = true\n"),
    )
    .expect("the scratch dir is writable");

    if compiled && made {
        for (mode, conf) in [("off", &setup.conf), ("on", &conf_on)] {
            let mut c = setup.command(&java);
            c.env("HSMPOOL_CONF", conf)
                // A short-lived client: C1 only and the serial collector start fastest.
                .arg("-XX:TieredStopAtLevel=1")
                .arg("-XX:+UseSerialGC")
                .arg("-cp")
                .arg(&classes)
                .arg("HsmpoolInterop")
                .arg(&sunpkcs11)
                .arg(USER_PIN)
                .arg(mode);
            for (label, _, _) in OUTSIDE {
                c.arg(label);
            }
            let run = setup.run(c);
            tally_run(&mut t, mode, &run);
        }
        t.check(
            "the certificates are synthesised, not stored: the C ABI finds them only with the option on",
            || {
                let on = certificate_ids(&conf_on)?;
                let off = certificate_ids(&setup.conf)?;
                let mut want: Vec<Vec<u8>> = OUTSIDE.iter().map(|(_, id, _)| id.to_vec()).collect();
                want.sort();
                ensure(on == want, format!("with the option: certificate ids {on:02x?}"))?;
                ensure(off.is_empty(), format!("without it: certificate ids {off:02x?}"))
            },
        );
    }
    t.finish();
}

#[test]
fn interop_java_embedded() {
    suite(Kind::Embedded);
}

#[test]
fn interop_java_cluster() {
    suite(Kind::Cluster);
}

#[test]
fn interop_java_softhsm() {
    suite(Kind::SoftHsm);
}

#[test]
fn interop_java_mixed() {
    suite(Kind::Mixed);
}
