//! A module under test: loaded by path, its token found or initialised, logged in once, its keys
//! found by label or made once, and a first round of checked operations before any timing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aws_lc_rs::digest;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use crate::keys::{self, KeyPair};
use crate::setup::{self, TokenOrigin};
use crate::sweep::{ModuleKeys, AES_MSG_LEN};
use crate::{Context, Error, Result};

/// The label of the token the harness uses (and initialises when it finds none).
pub const TOKEN_LABEL: &str = "hsmpool-bench";

/// A loaded, logged-in module with its keys.
pub struct Target {
    /// Short name (`hsmpool`, `softhsm2`).
    pub name: String,
    /// The module file.
    pub path: PathBuf,
    /// `C_GetInfo`: manufacturer, description and library version.
    pub library: String,
    /// The cryptoki context.
    pub pkcs11: Pkcs11,
    /// The token's slot.
    pub slot: Slot,
    /// The R/W session the user logged in on; kept open for the whole run.
    pub session: Session,
    /// Whether the token was found or initialised by this run.
    pub origin: TokenOrigin,
    /// The sweep's keys and the module's mechanisms.
    pub keys: ModuleKeys,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({} at {})", self.name, self.path.display())
    }
}

/// Print `what` and how long `f` took, as the set-up lines do.
pub fn timed<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t0 = Instant::now();
    let r = f();
    let status = if r.is_ok() { "" } else { "  FAILED" };
    println!(
        "  {what:<60} {:>10.2} ms{status}",
        t0.elapsed().as_secs_f64() * 1e3
    );
    r
}

impl Target {
    /// Load `path`, find or initialise its token, log in, and find or make the keys. The
    /// environment (`HSMPOOL_CONF`, `SOFTHSM2_CONF`) must have been prepared before, while the
    /// process was single-threaded.
    pub fn open(path: &Path) -> Result<Target> {
        let name = setup::module_name(path);
        println!("{name}: {}", path.display());
        let pkcs11 = timed("load module, C_Initialize (OS locking)", || {
            setup::load(path)
        })?;
        let info = pkcs11.get_library_info().context("C_GetInfo")?;
        let library = format!(
            "{} {} {}",
            info.manufacturer_id().trim(),
            info.library_description().trim(),
            info.library_version()
        );
        let (slot, session, origin) = timed(
            &format!("find or initialise token {TOKEN_LABEL:?}, C_Login (user)"),
            || setup::open_token(&pkcs11, TOKEN_LABEL),
        )?;
        println!(
            "  token {}",
            match origin {
                TokenOrigin::Found => "found (made by an earlier run): not initialised again",
                TokenOrigin::Initialised => "initialised by this run (C_InitToken, C_InitPIN)",
            }
        );
        let keys = timed("find or make the keys by label", || {
            ModuleKeys::prepare(&pkcs11, slot, &session, &mut |line| println!("    {line}"))
        })?;
        Ok(Target {
            name,
            path: path.to_path_buf(),
            library,
            pkcs11,
            slot,
            session,
            origin,
            keys,
        })
    }

    /// Make sure `n` token data objects made by the harness are on the token (creating the
    /// missing ones), so find-by-label is measured with a full store. Returns how many were
    /// there before.
    pub fn fill(&self, n: usize) -> Result<usize> {
        let template = [
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(keys::FILL_APPLICATION.into()),
        ];
        let present = self
            .session
            .find_objects(&template)
            .context("C_FindObjects (the harness's fill objects)")?
            .len();
        if present < n {
            let t0 = Instant::now();
            for i in present..n {
                self.session
                    .create_object(&keys::fill_object_template(i))
                    .context("C_CreateObject (token data object)")?;
            }
            println!(
                "  created {} token data objects ({n} present) in {:.1} s",
                n - present,
                t0.elapsed().as_secs_f64()
            );
        } else {
            println!("  {present} token data objects of the harness present (asked {n})");
        }
        Ok(present)
    }

    /// Before any timing: sign and verify with each key pair, encrypt and decrypt with the
    /// known AES key, each output checked with aws-lc-rs, where the module has the mechanism.
    pub fn self_test(&self) -> Result<()> {
        let k = &self.keys;
        let s = &self.session;
        if let (Some(kp), Some(public), true) = (
            k.rsa,
            &k.rsa_public,
            k.mechanism(crate::sweep::Op::RsaSign).is_ok(),
        ) {
            timed(
                "sign+verify CKM_SHA256_RSA_PKCS, check with aws-lc-rs",
                || {
                    sign_verify(
                        s,
                        &kp,
                        &|m| (Mechanism::Sha256RsaPkcs, m.to_vec()),
                        &|m, sig| public.verify_sha256_pkcs1(m, sig),
                    )
                },
            )?;
        }
        if let (Some(kp), Some(public)) = (k.ec, &k.ec_public) {
            let hashed = !k.mechanisms.contains(&MechanismType::ECDSA_SHA256);
            if k.mechanism(crate::sweep::Op::EcdsaSign).is_ok() {
                let what = if hashed {
                    "sign+verify CKM_ECDSA over SHA-256, check with aws-lc-rs"
                } else {
                    "sign+verify CKM_ECDSA_SHA256, check with aws-lc-rs"
                };
                timed(what, || {
                    sign_verify(
                        s,
                        &kp,
                        &|m| {
                            if hashed {
                                (
                                    Mechanism::Ecdsa,
                                    digest::digest(&digest::SHA256, m).as_ref().to_vec(),
                                )
                            } else {
                                (Mechanism::EcdsaSha256, m.to_vec())
                            }
                        },
                        &|m, sig| public.verify_sha256(m, sig),
                    )
                })?;
            }
        }
        if let (Some(aes), true) = (k.aes, k.mechanism(crate::sweep::Op::AesGcmEncrypt).is_ok()) {
            timed(
                "AES-256-GCM 4 KiB encrypt+decrypt, check with aws-lc-rs",
                || gcm_round_trip(s, aes),
            )?;
        }
        Ok(())
    }

    /// Log out, close the session, `C_Finalize`.
    pub fn close(self) -> Result<()> {
        self.session.logout().context("C_Logout")?;
        self.session.close().context("C_CloseSession")?;
        self.pkcs11.finalize().context("C_Finalize")
    }
}

/// The mechanism and input to sign a message with.
type Prepare<'a> = &'a dyn Fn(&[u8]) -> (Mechanism<'static>, Vec<u8>);

/// Sign a message through the module, verify it through the module and with `independent`, and
/// make sure both reject a signature over a different message.
fn sign_verify(
    s: &Session,
    kp: &KeyPair,
    prepare: Prepare<'_>,
    independent: &dyn Fn(&[u8], &[u8]) -> bool,
) -> Result<()> {
    let msg = b"hsmpool-bench: a message to sign";
    let (mech, input) = prepare(msg);
    let sig = s.sign(&mech, kp.private, &input).context("C_Sign")?;
    s.verify(&mech, kp.public, &input, &sig)
        .context("C_Verify")?;
    if !independent(msg, &sig) {
        return Err(Error("aws-lc-rs rejects the module's signature".into()));
    }
    let other = b"hsmpool-bench: a different message";
    if independent(other, &sig) {
        return Err(Error(
            "aws-lc-rs accepts the signature for another message".into(),
        ));
    }
    let (mech, input) = prepare(other);
    if s.verify(&mech, kp.public, &input, &sig).is_ok() {
        return Err(Error(
            "C_Verify accepts the signature for another message".into(),
        ));
    }
    Ok(())
}

/// Encrypt 4 KiB with AES-256-GCM under the known key, compare with aws-lc-rs, decrypt it back,
/// and make sure a tampered ciphertext is refused.
fn gcm_round_trip(s: &Session, aes: cryptoki::object::ObjectHandle) -> Result<()> {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let pt: Vec<u8> = (0..AES_MSG_LEN).map(|i| (i * 7) as u8).collect();
    let mut iv = [0x42; keys::GCM_IV_LEN];
    let ct = s
        .encrypt(&keys::gcm(&mut iv)?, aes, &pt)
        .context("C_Encrypt")?;
    let reference = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &keys::known_aes_key()).context("aws-lc-rs AES key")?,
    );
    let mut want = pt.clone();
    reference
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0x42; keys::GCM_IV_LEN]),
            Aad::empty(),
            &mut want,
        )
        .context("aws-lc-rs seal")?;
    if ct != want {
        return Err(Error(format!(
            "C_Encrypt gave {} bytes that differ from aws-lc-rs AES-256-GCM under the known key \
             (is the key labelled {:?} the harness's?)",
            ct.len(),
            keys::LABEL_AES
        )));
    }
    let back = s
        .decrypt(&keys::gcm(&mut iv)?, aes, &ct)
        .context("C_Decrypt")?;
    if back != pt {
        return Err(Error("C_Decrypt does not give back the plaintext".into()));
    }
    let mut tampered = ct.clone();
    tampered[0] ^= 1;
    if s.decrypt(&keys::gcm(&mut iv)?, aes, &tampered).is_ok() {
        return Err(Error("C_Decrypt accepts a tampered ciphertext".into()));
    }
    Ok(())
}
