//! Interop with OpenSC's `pkcs11-tool` (Debian's opensc 0.23), against both set-ups (the
//! embedded default and a cluster of three `hsmpool-hsmd`): the real tool as a subprocess, one
//! token per set-up taken from uninitialised to keys, signatures, ciphertexts, wrapped keys and
//! the tool's own built-in, fork and thread tests. Every check asserts the exit status and the
//! output; every result the tool produces that can be checked independently (public keys,
//! signatures, MACs, ciphertexts, wrapped keys, digests) is checked with aws-lc-rs, so a module
//! and a tool that agree on a wrong answer still fail. Where aws-lc-rs has no verifier for a
//! combination (PKCS #1 v1.5 and PSS with SHA-1 or SHA-224, raw RSA), the RSA public operation is
//! done with `num-bigint` and the encoding (RFC 8017) checked byte for byte, with the digests
//! from aws-lc-rs; those hand-made checks are cross-checked against aws-lc-rs on the
//! combinations both can verify.
//!
//! What this opensc version does, which the checks take into account (each limit of the tool is
//! a check of its own that records the tool's refusal, so a newer tool that can do more fails
//! it and gets noticed):
//! - `--verify` reports a bad signature by printing "Invalid signature" with exit status 0;
//! - `--encrypt` finds secret keys only (RSA encryption is done with aws-lc-rs, decryption with
//!   the tool), and passes no parameters for AES-CTR or AES-GCM (it refuses them itself);
//! - `--sign` looks for a private key unless the mechanism is an HMAC, so AES-CMAC cannot be used,
//!   and passes no CK_MAC_GENERAL_PARAMS for SHA-1-HMAC-GENERAL (refused at C_SignInit);
//! - `--keypairgen --key-type EC:ed25519` is refused by the tool although its `--help` names it;
//!   `EC:edwards25519` works;
//! - `--wrap` / `--unwrap` pass no `CK_RSA_PKCS_OAEP_PARAMS` for RSA-PKCS-OAEP (the module
//!   rightly answers CKR_MECHANISM_PARAM_INVALID: the mechanism takes a parameter);
//! - `--derive` asks for a readable key (not sensitive, extractable) that may encrypt, decrypt,
//!   wrap and unwrap at once: the key policy allows the pairs it refuses on sensitive keys
//!   only on readable ones (README "Key policy"), so it works;
//! - `--test-threads` reports thread failures on stderr ("some errors") with exit status 0, and
//!   sleeps a fixed 30 seconds when a thread is still running at the end (so no `Pn` pauses);
//! - `--test-ec` opens a read-only session unless `--session-rw` is given;
//! - `--read-object --type pubkey` of an EC key hands OpenSSL a point buffer the tool has
//!   already freed (seen with P-384 keys: "cannot create EVP_PKEY", the buffer zeroed by the
//!   time `EVP_PKEY_fromdata` reads it; P-256 and P-521 keys happen to survive), so EC public
//!   keys are taken from CKA_EC_POINT as the tool prints it, and this is no check (it depends
//!   on the allocator);
//! - signing with a secret key prints a warning that CKA_ALWAYS_AUTHENTICATE is
//!   CKR_ATTRIBUTE_TYPE_INVALID: right, the attribute belongs to private keys only.

mod common;
mod independent;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use aws_lc_rs::cipher::{
    DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, PaddedBlockDecryptingKey,
    PaddedBlockEncryptingKey, UnboundCipherKey, AES_256,
};
use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::key_wrap::{self, AesKek, KeyWrap, KeyWrapPadded};
use aws_lc_rs::{agreement, hmac, rand, rsa, signature};
use common::{ensure, Kind, Run, Setup, Tally, SO_PIN, TOKEN_LABEL, USER_PIN};
use hsmpool_tests::require_tool;
use independent::{hex, pem, tlv, unhex};
use num_bigint::BigUint;

/// The data every signature and MAC is over.
const DATA: &[u8] = b"hsmpool pkcs11-tool interop: data to sign, 0123456789\n";
/// The IV of the CBC checks.
const IV: [u8; 16] = *b"0123456789abcdef";
/// DER of the P-256 and P-384 OIDs and of id-Ed25519, as pkcs11-tool prints CKA_EC_PARAMS.
const P256_PARAMS_HEX: &str = "06082a8648ce3d030107";
const P384_PARAMS_HEX: &str = "06052b81040022";
const ED25519_PARAMS_HEX: &str = "06032b6570";

/// The key ids (CKA_ID, hex) of the suite's token.
const RSA2048: &str = "01";
const RSA3072: &str = "02";
const EC256: &str = "03";
const EC384: &str = "04";
const ED25519: &str = "05";
const AES: &str = "06";
const HMAC: &str = "07";
const KEK: &str = "08";
const AES128: &str = "09";

/// A hash as the tool names it in mechanism names and in `--hash-algorithm`, with its
/// aws-lc-rs algorithm and its PKCS #1 DigestInfo prefix (RFC 8017 section 9.2, note 1).
struct Hash {
    /// In `SHA256-RSA-PKCS`, `ECDSA-SHA256`.
    mech: &'static str,
    /// In `--hash-algorithm` and in the tool's "PSS parameters: hashAlg=" line.
    alg: &'static str,
    /// The HMAC mechanism.
    hmac_mech: &'static str,
    digest: &'static digest::Algorithm,
    hmac: hmac::Algorithm,
    digest_info: &'static [u8],
}

static HASHES: &[Hash] = &[
    Hash {
        mech: "SHA1",
        alg: "SHA-1",
        hmac_mech: "SHA-1-HMAC",
        digest: &digest::SHA1_FOR_LEGACY_USE_ONLY,
        hmac: hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        digest_info: &[
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
            0x14,
        ],
    },
    Hash {
        mech: "SHA224",
        alg: "SHA224",
        hmac_mech: "SHA224-HMAC",
        digest: &digest::SHA224,
        hmac: hmac::HMAC_SHA224,
        digest_info: &[
            0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x04, 0x05, 0x00, 0x04, 0x1c,
        ],
    },
    Hash {
        mech: "SHA256",
        alg: "SHA256",
        hmac_mech: "SHA256-HMAC",
        digest: &digest::SHA256,
        hmac: hmac::HMAC_SHA256,
        digest_info: &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
    },
    Hash {
        mech: "SHA384",
        alg: "SHA384",
        hmac_mech: "SHA384-HMAC",
        digest: &digest::SHA384,
        hmac: hmac::HMAC_SHA384,
        digest_info: &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
    },
    Hash {
        mech: "SHA512",
        alg: "SHA512",
        hmac_mech: "SHA512-HMAC",
        digest: &digest::SHA512,
        hmac: hmac::HMAC_SHA512,
        digest_info: &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
    },
];

fn hash(name: &str) -> &'static Hash {
    HASHES
        .iter()
        .find(|h| h.mech == name)
        .expect("a hash of the table")
}

/// aws-lc-rs's PKCS #1 v1.5 verifier for a hash and key size, where it has one.
fn aws_pkcs1(h: &Hash, bits: usize) -> Option<&'static signature::RsaParameters> {
    match (h.mech, bits) {
        ("SHA1", _) => Some(&signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY),
        ("SHA256", _) => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
        ("SHA384", 3072..) => Some(&signature::RSA_PKCS1_3072_8192_SHA384),
        ("SHA384", _) => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
        ("SHA512", _) => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
        _ => None,
    }
}

/// aws-lc-rs's PSS verifier (salt as long as the digest), where it has one.
fn aws_pss(h: &Hash) -> Option<&'static signature::RsaParameters> {
    match h.mech {
        "SHA256" => Some(&signature::RSA_PSS_2048_8192_SHA256),
        "SHA384" => Some(&signature::RSA_PSS_2048_8192_SHA384),
        "SHA512" => Some(&signature::RSA_PSS_2048_8192_SHA512),
        _ => None,
    }
}

// ----- the tool ------------------------------------------------------------------------------

/// pkcs11-tool against one set-up.
struct Tool<'a> {
    setup: &'a Setup,
    bin: PathBuf,
}

impl Tool<'_> {
    /// `pkcs11-tool --module <module> args...`.
    fn run(&self, args: &[&str]) -> Run {
        let mut c = self.setup.command(&self.bin);
        c.arg("--module").arg(&self.setup.module).args(args);
        self.setup.run(c)
    }

    /// As [`Tool::run`], logged in as the user.
    fn user(&self, args: &[&str]) -> Run {
        let mut all = vec!["--login", "--pin", USER_PIN];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// A file name in the scratch directory, as a command-line argument.
    fn file(&self, name: &str) -> String {
        self.setup
            .dir()
            .join(name)
            .to_str()
            .expect("temp paths are UTF-8")
            .to_owned()
    }

    /// Write a file in the scratch directory; its path.
    fn write(&self, name: &str, data: &[u8]) -> String {
        let p = self.file(name);
        std::fs::write(&p, data).expect("the temp dir is writable");
        p
    }

    /// Read a file the tool wrote.
    fn read(&self, name: &str, run: &Run) -> Result<Vec<u8>, String> {
        std::fs::read(self.setup.dir().join(name))
            .map_err(|e| format!("{name} was not written: {e}{run}"))
    }

    /// `--keypairgen`, asserting the tool's report of the pair.
    fn keypair(&self, key_type: &str, id: &str, label: &str, extra: &[&str]) -> Run {
        let mut args = vec![
            "--keypairgen",
            "--key-type",
            key_type,
            "--id",
            id,
            "--label",
            label,
        ];
        args.extend_from_slice(extra);
        let r = self.user(&args);
        r.ok()
            .stdout_has("Key pair generated:")
            .stdout_has(&format!("label:      {label}"))
            .stdout_has(&format!("ID:         {id}"));
        r
    }

    /// `--keygen` of a secret key, asserting the tool's report of it.
    fn keygen(&self, key_type: &str, id: &str, label: &str, extra: &[&str]) -> Run {
        let mut args = vec![
            "--keygen",
            "--key-type",
            key_type,
            "--id",
            id,
            "--label",
            label,
        ];
        args.extend_from_slice(extra);
        let r = self.user(&args);
        r.ok()
            .stdout_has("Key generated:")
            .stdout_has(&format!("label:      {label}"))
            .stdout_has(&format!("ID:         {id}"));
        r
    }

    /// The public key `id` through `--read-object --type pubkey`: DER SubjectPublicKeyInfo
    /// (this version writes Ed25519 keys as PEM; that is decoded).
    fn public_key(&self, id: &str) -> Result<Vec<u8>, String> {
        let name = format!("pub-{id}.der");
        let out = self.file(&name);
        let r = self.run(&["--read-object", "--type", "pubkey", "--id", id, "-o", &out]);
        r.ok();
        let mut der = self.read(&name, &r)?;
        if der.starts_with(b"-----BEGIN PUBLIC KEY-----") {
            let text = String::from_utf8_lossy(&der).into_owned();
            der = pem(&text, "PUBLIC KEY").map_err(|e| format!("not a PEM public key ({e}){r}"))?;
        }
        ensure(
            der.first() == Some(&0x30),
            format!("not a DER SubjectPublicKeyInfo: {}{r}", hex(&der)),
        )?;
        Ok(der)
    }

    /// `--wrap --mechanism MECH` of the key `id` under the key `kek`: the wrapped bytes, and the
    /// file they were written to (for `--unwrap -i`).
    fn wrap(
        &self,
        mech: &str,
        kek: &str,
        id: &str,
        name: &str,
    ) -> Result<(Vec<u8>, String), String> {
        let out = self.file(name);
        let r = self.user(&[
            "--wrap",
            "--mechanism",
            mech,
            "--id",
            kek,
            "--application-id",
            id,
            "-o",
            &out,
        ]);
        r.ok().stdout_has("Key wrapped");
        Ok((self.read(name, &r)?, out))
    }

    /// The value of the secret key `id` (it must be extractable and not sensitive).
    fn secret_value(&self, id: &str) -> Result<Vec<u8>, String> {
        let name = format!("secret-{id}.bin");
        let out = self.file(&name);
        let r = self.user(&["--read-object", "--type", "secrkey", "--id", id, "-o", &out]);
        r.ok();
        self.read(&name, &r)
    }

    /// `--sign` then `--verify` with the tool; the signature. The input goes through a file.
    fn sign_verify(
        &self,
        mech: &str,
        id: &str,
        input: &[u8],
        extra: &[&str],
    ) -> Result<Vec<u8>, String> {
        self.sign_verify_expecting(mech, id, input, extra, &[])
    }

    /// As [`Tool::sign_verify`], the `--sign` run's stderr holding each of `stderr`.
    fn sign_verify_expecting(
        &self,
        mech: &str,
        id: &str,
        input: &[u8],
        extra: &[&str],
        stderr: &[&str],
    ) -> Result<Vec<u8>, String> {
        let tag = format!("{mech}-{id}");
        let data = self.write(&format!("in-{tag}.bin"), input);
        let sig_name = format!("sig-{tag}.bin");
        let sig = self.file(&sig_name);
        let mut args = vec![
            "--sign",
            "--mechanism",
            mech,
            "--id",
            id,
            "-i",
            &data,
            "-o",
            &sig,
        ];
        args.extend_from_slice(extra);
        let r = self.user(&args);
        r.ok()
            .stderr_has(&format!("Using signature algorithm {mech}"));
        for s in stderr {
            r.stderr_has(s);
        }
        let bytes = self.read(&sig_name, &r)?;
        let mut args = vec![
            "--verify",
            "--mechanism",
            mech,
            "--id",
            id,
            "-i",
            &data,
            "--signature-file",
            &sig,
        ];
        args.extend_from_slice(extra);
        self.user(&args)
            .ok()
            .stdout_has("Signature is valid")
            .lacks("Invalid signature");
        Ok(bytes)
    }

    /// The tool's `--verify` says a (tampered) signature is invalid.
    fn verify_rejects(&self, mech: &str, id: &str, input: &[u8], sig: &[u8], extra: &[&str]) {
        let tag = format!("{mech}-{id}");
        let data = self.write(&format!("in-bad-{tag}.bin"), input);
        let sig = self.write(&format!("sig-bad-{tag}.bin"), sig);
        let mut args = vec![
            "--verify",
            "--mechanism",
            mech,
            "--id",
            id,
            "-i",
            &data,
            "--signature-file",
            &sig,
        ];
        args.extend_from_slice(extra);
        let r = self.user(&args);
        assert!(
            r.status.code().is_some(),
            "the tool was killed by a signal{r}"
        );
        r.stdout_has("Invalid signature")
            .lacks("Signature is valid");
    }

    /// `--encrypt` with the tool; the ciphertext.
    fn encrypt(
        &self,
        mech: &str,
        id: &str,
        plain: &[u8],
        extra: &[&str],
    ) -> Result<Vec<u8>, String> {
        let tag = format!("{mech}-{id}");
        let input = self.write(&format!("plain-{tag}.bin"), plain);
        let name = format!("ct-{tag}.bin");
        let out = self.file(&name);
        let mut args = vec![
            "--encrypt",
            "--mechanism",
            mech,
            "--id",
            id,
            "-i",
            &input,
            "-o",
            &out,
        ];
        args.extend_from_slice(extra);
        let r = self.user(&args);
        r.ok()
            .stderr_has(&format!("Using encrypt algorithm {mech}"));
        self.read(&name, &r)
    }

    /// `--decrypt` with the tool; the plaintext.
    fn decrypt(&self, mech: &str, id: &str, ct: &[u8], extra: &[&str]) -> Result<Vec<u8>, String> {
        let tag = format!("{mech}-{id}-{}", extra.join(""));
        let input = self.write(&format!("ct-in-{tag}.bin"), ct);
        let name = format!("plain-out-{tag}.bin");
        let out = self.file(&name);
        let mut args = vec![
            "--decrypt",
            "--mechanism",
            mech,
            "--id",
            id,
            "-i",
            &input,
            "-o",
            &out,
        ];
        args.extend_from_slice(extra);
        let r = self.user(&args);
        r.ok()
            .stderr_has(&format!("Using decrypt algorithm {mech}"));
        self.read(&name, &r)
    }
}

// ----- DER -------------------------------------------------------------------------------

/// The subjectPublicKey BIT STRING's contents (an RSAPublicKey, an EC point, an Ed25519 key).
fn spki_public_key(spki: &[u8]) -> Result<Vec<u8>, String> {
    let (tag, seq, _) = tlv(spki)?;
    ensure(tag == 0x30, "SubjectPublicKeyInfo is a SEQUENCE")?;
    let (tag, _alg, rest) = tlv(seq)?;
    ensure(tag == 0x30, "AlgorithmIdentifier is a SEQUENCE")?;
    let (tag, bits, _) = tlv(rest)?;
    ensure(
        tag == 0x03 && bits.first() == Some(&0),
        "subjectPublicKey is a BIT STRING",
    )?;
    Ok(bits[1..].to_vec())
}

/// (n, e) of an RSA SubjectPublicKeyInfo.
fn rsa_n_e(spki: &[u8]) -> Result<(BigUint, BigUint), String> {
    let key = spki_public_key(spki)?;
    let (tag, seq, _) = tlv(&key)?;
    ensure(tag == 0x30, "RSAPublicKey is a SEQUENCE")?;
    let (tag, n, rest) = tlv(seq)?;
    ensure(tag == 0x02, "the modulus is an INTEGER")?;
    let (tag, e, _) = tlv(rest)?;
    ensure(tag == 0x02, "the exponent is an INTEGER")?;
    Ok((BigUint::from_bytes_be(n), BigUint::from_bytes_be(e)))
}

/// The SubjectPublicKeyInfo of an uncompressed P-256 or P-384 point (id-ecPublicKey and the
/// curve's OID).
fn ec_spki(bits: usize, point: &[u8]) -> Vec<u8> {
    let mut der = if bits == 256 {
        vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ]
    } else {
        vec![
            0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
        ]
    };
    der.extend_from_slice(point);
    der
}

/// The public key in the first `EC_POINT:` line of the tool's report (CKA_EC_POINT, a DER
/// OCTET STRING), unwrapped.
fn ec_point(r: &Run) -> Result<Vec<u8>, String> {
    let point_hex = r
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("EC_POINT:"))
        .map(str::trim)
        .ok_or_else(|| format!("no EC_POINT{r}"))?;
    let der = unhex(point_hex).map_err(|e| format!("EC_POINT is not hex ({e}){r}"))?;
    let (tag, point, rest) = tlv(&der)?;
    ensure(
        tag == 0x04 && rest.is_empty(),
        format!("EC_POINT {point_hex} is not an OCTET STRING"),
    )?;
    Ok(point.to_vec())
}

/// The lines of the tool's report of one object kind ("Private Key Object", ...): the `Usage:`
/// line of the first such object.
fn usage_of(out: &str, object: &str) -> Option<String> {
    let start = out.find(object)?;
    out[start..]
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage:").map(|u| u.trim().to_owned()))
}

// ----- independent signature checks --------------------------------------------------------

/// The RSA public operation: sig^e mod n, as many bytes as the modulus.
fn rsa_public(spki: &[u8], sig: &[u8]) -> Result<Vec<u8>, String> {
    let (n, e) = rsa_n_e(spki)?;
    let k = n.to_bytes_be().len();
    ensure(
        sig.len() == k,
        format!("a signature of {} bytes for a {k}-byte modulus", sig.len()),
    )?;
    let s = BigUint::from_bytes_be(sig);
    ensure(s < n, "the signature is not below the modulus")?;
    let m = s.modpow(&e, &n).to_bytes_be();
    let mut em = vec![0u8; k - m.len()];
    em.extend_from_slice(&m);
    Ok(em)
}

/// EMSA-PKCS1-v1_5 (RFC 8017 section 9.2) of `msg` for a `k`-byte modulus.
fn emsa_pkcs1(h: &Hash, msg: &[u8], k: usize) -> Vec<u8> {
    let d = digest::digest(h.digest, msg);
    let t_len = h.digest_info.len() + d.as_ref().len();
    let mut em = vec![0x00, 0x01];
    em.resize(k - t_len - 1, 0xff);
    em.push(0x00);
    em.extend_from_slice(h.digest_info);
    em.extend_from_slice(d.as_ref());
    em
}

/// RSASSA-PKCS1-v1_5 verification by hand: the encoding must equal the expected one exactly.
fn verify_pkcs1_by_hand(spki: &[u8], h: &Hash, msg: &[u8], sig: &[u8]) -> Result<(), String> {
    let em = rsa_public(spki, sig)?;
    ensure(
        em == emsa_pkcs1(h, msg, em.len()),
        format!(
            "{}-RSA-PKCS: the signature does not open to the PKCS #1 encoding",
            h.mech
        ),
    )
}

/// MGF1 (RFC 8017 appendix B.2.1).
fn mgf1(h: &Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut counter = 0u32;
    while out.len() < len {
        let mut ctx = digest::Context::new(h.digest);
        ctx.update(seed);
        ctx.update(&counter.to_be_bytes());
        out.extend_from_slice(ctx.finish().as_ref());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// RSASSA-PSS verification by hand (RFC 8017 sections 8.1.2 and 9.1.2), MGF1 with the same
/// hash, a salt of `salt_len` bytes.
fn verify_pss_by_hand(
    spki: &[u8],
    h: &Hash,
    msg: &[u8],
    sig: &[u8],
    salt_len: usize,
) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{}-RSA-PKCS-PSS: {why}", h.mech));
    let (n, _) = rsa_n_e(spki)?;
    let mod_bits = n.bits() as usize;
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    let em_full = rsa_public(spki, sig)?;
    // The encoded message is the last em_len bytes; the rest must be zero.
    let (lead, em) = em_full.split_at(em_full.len() - em_len);
    if lead.iter().any(|b| *b != 0) {
        return fail("the encoded message is too long");
    }
    let h_len = h.digest.output_len();
    if em_len < h_len + salt_len + 2 || em[em_len - 1] != 0xbc {
        return fail("no 0xbc trailer");
    }
    let (masked_db, rest) = em.split_at(em_len - h_len - 1);
    let hh = &rest[..h_len];
    let top_bits = 8 * em_len - em_bits;
    let top_mask = 0xffu8 >> top_bits;
    if masked_db[0] & !top_mask != 0 {
        return fail("the leftmost bits are not zero");
    }
    let mut db: Vec<u8> = masked_db
        .iter()
        .zip(mgf1(h, hh, masked_db.len()))
        .map(|(a, b)| a ^ b)
        .collect();
    db[0] &= top_mask;
    let ps_len = em_len - h_len - salt_len - 2;
    if db[..ps_len].iter().any(|b| *b != 0) || db[ps_len] != 0x01 {
        return fail("the padding string is wrong");
    }
    let salt = &db[ps_len + 1..];
    let m_hash = digest::digest(h.digest, msg);
    let mut ctx = digest::Context::new(h.digest);
    ctx.update(&[0u8; 8]);
    ctx.update(m_hash.as_ref());
    ctx.update(salt);
    if ctx.finish().as_ref() != hh {
        return fail("the hash does not match");
    }
    Ok(())
}

/// ECDSA verification of a signature over `hash` (the bytes the signer hashed to) with
/// aws-lc-rs: the hash is brought to the curve's length as ECDSA does (SEC 1 section 4.1.4:
/// the leftmost bits of a longer hash; a shorter one is the same integer with zero bytes in
/// front) and verified as a digest of the curve's own hash. `sig` is r || s.
fn verify_ecdsa_prehashed(
    spki: &[u8],
    curve_bits: usize,
    hash: &[u8],
    sig: &[u8],
) -> Result<(), String> {
    let (alg, dig): (
        &'static signature::EcdsaVerificationAlgorithm,
        &'static digest::Algorithm,
    ) = match curve_bits {
        256 => (&signature::ECDSA_P256_SHA256_FIXED, &digest::SHA256),
        384 => (&signature::ECDSA_P384_SHA384_FIXED, &digest::SHA384),
        _ => return Err(format!("no verifier for a {curve_bits}-bit curve")),
    };
    let n = curve_bits / 8;
    let e: Vec<u8> = if hash.len() >= n {
        hash[..n].to_vec()
    } else {
        let mut v = vec![0u8; n - hash.len()];
        v.extend_from_slice(hash);
        v
    };
    let d = Digest::import_less_safe(&e, dig).map_err(|_| "a digest of the curve's length")?;
    signature::UnparsedPublicKey::new(alg, spki)
        .verify_digest(&d, sig)
        .map_err(|_| format!("aws-lc-rs rejects the ECDSA signature over {}", hex(hash)))
}

/// Flip one bit of a copy.
fn tampered(sig: &[u8]) -> Vec<u8> {
    let mut bad = sig.to_vec();
    let i = bad.len() / 2;
    bad[i] ^= 0x10;
    bad
}

// ----- the suite -----------------------------------------------------------------------------

/// What NSS softokn (3.87) does not hold as asked: every token secret key it holds is
/// sensitive, so a key the application may read (pkcs11-tool makes secret keys readable unless
/// told `--sensitive`) is refused on a cluster with an NSS member, and the checks that use
/// those keys have none.
const NSS_READABLE_SECRET: &str = "NSS softokn keeps every token secret key sensitive, so a \
     readable one cannot be held on every member: refused (CKR_TEMPLATE_INCONSISTENT)";
/// See [`NSS_READABLE_SECRET`].
const NSS_NO_SECRET: &str = "the readable secret key it uses was refused (see --keygen AES:32)";

/// What differs on the mixed cluster (an hsmpool-hsmd daemon, a SoftHSMv2 token, an NSS
/// softokn database), by check, with why: what a member does not offer (the token offers what
/// all three do) or will not hold as asked. A call one member refuses for what it asks
/// (SoftHSMv2 and RSA-OAEP with SHA-256) is done by another, so those checks pass here.
const MIXED_DIFFERENCES: &[(&str, &str)] = &[
    ("--keygen AES:32", NSS_READABLE_SECRET),
    ("--keygen AES:16", NSS_READABLE_SECRET),
    ("--keygen GENERIC:32", NSS_READABLE_SECRET),
    (
        "--keygen AES:32 --usage-wrap makes a KEK that wraps and does not decrypt",
        NSS_READABLE_SECRET,
    ),
    ("sign/verify SHA-1-HMAC (a MAC as aws-lc-rs computes it)", NSS_NO_SECRET),
    ("sign/verify SHA224-HMAC (a MAC as aws-lc-rs computes it)", NSS_NO_SECRET),
    ("sign/verify SHA256-HMAC (a MAC as aws-lc-rs computes it)", NSS_NO_SECRET),
    (
        "sign/verify SHA384-HMAC (a MAC as aws-lc-rs computes it)",
        "SoftHSMv2 takes HMAC keys no shorter than the hash (and the key was refused, see \
         --keygen AES:32)",
    ),
    (
        "sign/verify SHA512-HMAC (a MAC as aws-lc-rs computes it)",
        "SoftHSMv2 takes HMAC keys no shorter than the hash (and the key was refused)",
    ),
    (
        "encrypt/decrypt AES-CBC-PAD (both directions against aws-lc-rs)",
        NSS_NO_SECRET,
    ),
    (
        "encrypt/decrypt AES-CBC (both directions against aws-lc-rs)",
        NSS_NO_SECRET,
    ),
    (
        "encrypt/decrypt AES-ECB (both directions against aws-lc-rs)",
        NSS_NO_SECRET,
    ),
    (
        "AES-CTR and AES-GCM: this tool has no parameters for them and refuses itself",
        NSS_NO_SECRET,
    ),
    (
        "SHA-1-HMAC-GENERAL: this tool passes no MAC length; refused at C_SignInit",
        "SoftHSMv2 has no CKM_SHA_1_HMAC_GENERAL: the token does not offer it",
    ),
    (
        "--list-mechanisms: every mechanism, and every signature one has a check here",
        "SoftHSMv2 has no CKM_SHA_1_HMAC_GENERAL, so the token does not list it",
    ),
    (
        "--keypairgen EC:edwards25519 (Ed25519)",
        "neither SoftHSMv2 (cannot wrap an EdDSA key) nor NSS softokn 3.87 (no EdDSA) can \
         hold an Ed25519 key",
    ),
    (
        "--list-objects shows the keys; private keys only after a login; --type filters",
        "it looks for the Ed25519 key (see above)",
    ),
    ("sign/verify EDDSA (Ed25519)", "no Ed25519 key (see above)"),
    (
        "--wrap AES-KEY-WRAP gives aws-lc-rs's RFC 3394 wrapping; --unwrap gives the key back",
        "by design: token keys on vendor members carry CKA_WRAP_WITH_TRUSTED (see the SoftHSMv2 \
         list)",
    ),
    (
        "--wrap 0x210B (AES-KEY-WRAP-PAD) gives aws-lc-rs's RFC 5649 wrapping",
        "by design: CKA_WRAP_WITH_TRUSTED",
    ),
    (
        "--unwrap 0x210B of a 20-byte secret wrapped by aws-lc-rs",
        "SoftHSMv2 has no CKM_AES_KEY_WRAP_KWP (0x210B), so the token does not offer it",
    ),
    (
        "RSA-PKCS-OAEP --wrap/--unwrap: this tool passes no OAEP parameters (CKR_MECHANISM_PARAM_INVALID)",
        "it wraps the key of --keygen AES:16, which was refused (see --keygen AES:32)",
    ),
];

/// What differs when the members are SoftHSMv2 2.6 tokens (Debian 12), by check, with why:
/// what SoftHSMv2 does not offer or does otherwise, and what copying keys by wrapping asks.
const SOFTHSM_DIFFERENCES: &[(&str, &str)] = &[
    (
        "--show-info, --list-slots, --list-interfaces before initialisation",
        "a SoftHSMv2 token exists only once initialised (softhsm2-util --init-token), so the \
         cluster's token is never uninitialised",
    ),
    (
        "sign/verify SHA384-HMAC (a MAC as aws-lc-rs computes it)",
        "SoftHSMv2 takes HMAC keys no shorter than the hash (48 bytes for SHA-384; its \
         mechanism info says so): CKR_KEY_SIZE_RANGE for the suite's key",
    ),
    (
        "sign/verify SHA512-HMAC (a MAC as aws-lc-rs computes it)",
        "SoftHSMv2 takes HMAC keys no shorter than the hash (64 bytes for SHA-512)",
    ),
    (
        "SHA-1-HMAC-GENERAL: this tool passes no MAC length; refused at C_SignInit",
        "SoftHSMv2 has no CKM_SHA_1_HMAC_GENERAL: the token does not offer it \
         (CKR_MECHANISM_INVALID before a member is asked)",
    ),
    (
        "--list-mechanisms: every mechanism, and every signature one has a check here",
        "SoftHSMv2 has no CKM_SHA_1_HMAC_GENERAL, so the token does not list it",
    ),
    (
        "--keypairgen EC:edwards25519 (Ed25519)",
        "SoftHSMv2 cannot wrap an EdDSA private key (CKR_KEY_NOT_WRAPPABLE), so one made on a \
         member could not reach the others: refused (CKR_TEMPLATE_INCONSISTENT), the reason in \
         the log",
    ),
    (
        "--list-objects shows the keys; private keys only after a login; --type filters",
        "it looks for the Ed25519 key, which SoftHSMv2 members cannot hold (see above)",
    ),
    (
        "sign/verify EDDSA (Ed25519)",
        "no Ed25519 key on SoftHSMv2 members (see above)",
    ),
    (
        "decrypt RSA-PKCS-OAEP (SHA256, MGF1-SHA256) of an aws-lc-rs ciphertext",
        "SoftHSMv2 2.6 decrypts RSA-OAEP with SHA-1 only",
    ),
    (
        "decrypt RSA-PKCS-OAEP (SHA384, MGF1-SHA384) of an aws-lc-rs ciphertext",
        "SoftHSMv2 2.6 decrypts RSA-OAEP with SHA-1 only",
    ),
    (
        "decrypt RSA-PKCS-OAEP (SHA512, MGF1-SHA512) of an aws-lc-rs ciphertext",
        "SoftHSMv2 2.6 decrypts RSA-OAEP with SHA-1 only",
    ),
    (
        "--wrap AES-KEY-WRAP gives aws-lc-rs's RFC 3394 wrapping; --unwrap gives the key back",
        "by design: token keys on vendor members carry CKA_WRAP_WITH_TRUSTED (only the trusted \
         cluster wrapping key may take them out), and the application's KEK is not trusted \
         (CKR_KEY_NOT_WRAPPABLE); a template that says CKA_WRAP_WITH_TRUSTED false keeps the \
         old behaviour",
    ),
    (
        "--wrap 0x210B (AES-KEY-WRAP-PAD) gives aws-lc-rs's RFC 5649 wrapping",
        "by design: CKA_WRAP_WITH_TRUSTED (see above)",
    ),
    (
        "--unwrap 0x210B of a 20-byte secret wrapped by aws-lc-rs",
        "SoftHSMv2 numbers RFC 5649 CKM_AES_KEY_WRAP_PAD (0x210A) and has no \
         CKM_AES_KEY_WRAP_KWP (0x210B), so the token does not offer it",
    ),
    (
        "RSA-PKCS-OAEP --wrap/--unwrap: this tool passes no OAEP parameters (CKR_MECHANISM_PARAM_INVALID)",
        "SoftHSMv2 answers a missing OAEP parameter with CKR_ARGUMENTS_BAD, which passes \
         through unchanged",
    ),
    (
        "--test --login (every mechanism is CKF_HW: no --allow-sw needed)",
        "the built-in test decrypts RSA-OAEP with SHA-256 and a label, which SoftHSMv2 2.6 \
         refuses (CKR_ARGUMENTS_BAD: it takes SHA-1 and no label only)",
    ),
    (
        "--test --login --allow-sw",
        "the built-in test's RSA-OAEP with SHA-256 and a label (see above)",
    ),
    (
        "--test-fork: C_Initialize in a forked child, then the built-in test",
        "the built-in test's RSA-OAEP with SHA-256 and a label (see above)",
    ),
    (
        "--test-threads (round 1 of 4): five threads and the built-in test",
        "the built-in test's RSA-OAEP with SHA-256 and a label (see above)",
    ),
    (
        "--test-threads (round 2 of 4): five threads and the built-in test, --use-locking",
        "the built-in test's RSA-OAEP with SHA-256 and a label (see above)",
    ),
    (
        "--test-threads (round 3 of 4): five threads and the built-in test",
        "the built-in test's RSA-OAEP with SHA-256 and a label (see above)",
    ),
    (
        "--test-threads (round 4 of 4): five threads and the built-in test, --use-locking",
        "the built-in test's RSA-OAEP with SHA-256 and a label (see above)",
    ),
];

/// What the keygen checks learn for the checks after them.
#[derive(Default)]
struct Keys {
    /// DER SubjectPublicKeyInfo by key id.
    spki: BTreeMap<&'static str, Vec<u8>>,
    /// The raw Ed25519 public key.
    ed25519: Vec<u8>,
    /// Secret key values by key id.
    secret: BTreeMap<&'static str, Vec<u8>>,
}

impl Keys {
    fn spki(&self, id: &str) -> Result<&[u8], String> {
        self.spki
            .get(id)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("no public key {id}: its keygen check failed"))
    }
    fn secret(&self, id: &str) -> Result<&[u8], String> {
        self.secret
            .get(id)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("no value of secret key {id}: its keygen check failed"))
    }
}

/// The built-in test's report has no error in it.
#[track_caller]
fn assert_builtin_test_clean(r: &Run) {
    r.ok()
        .stdout_has("No errors")
        .stdout_has("C_SeedRandom() and C_GenerateRandom():")
        .stdout_has("Digests:")
        .stdout_has("Signatures (currently only for RSA)")
        .stdout_has("Verify (currently only for RSA)")
        .stdout_has("Decryption (currently only for RSA)")
        .stdout_has("(rsa2048)")
        .stdout_has("RSA-PKCS: OK")
        .stdout_has("RSA-PKCS-OAEP")
        .lacks("ERR")
        .lacks("error:")
        .lacks("failed")
        .lacks("Aborting");
    let errors = r
        .all()
        .lines()
        .filter(|l| l.contains(" errors") && !l.contains("No errors"))
        .count();
    assert_eq!(errors, 0, "no error summaries{r}");
}

fn suite(kind: Kind) {
    let bin = require_tool("pkcs11-tool");
    let setup = Setup::new(kind);
    let tool = Tool { setup: &setup, bin };
    let tool = &tool;
    let mut keys = Keys::default();
    let mut t = Tally::new("pkcs11-tool", &setup);
    match kind {
        Kind::SoftHsm => t.differences(SOFTHSM_DIFFERENCES),
        Kind::Mixed => t.differences(MIXED_DIFFERENCES),
        Kind::Embedded | Kind::Cluster => {}
    }
    let started = std::time::Instant::now();

    // ----- token and PINs --------------------------------------------------------------------

    t.check(
        "--show-info, --list-slots, --list-interfaces before initialisation",
        || {
            tool.run(&["--show-info"])
                .ok()
                .stdout_has("Cryptoki version 3.0")
                .stdout_has("Manufacturer     hsmpool");
            tool.run(&["--list-slots"])
                .ok()
                .stdout_has("Slot 0 (0x0)")
                .stdout_has("token state:   uninitialized");
            tool.run(&["--list-interfaces"]).ok().stdout_has("PKCS 11");
            Ok(())
        },
    );
    t.check("--init-token sets the label and SO PIN", || {
        tool.run(&["--init-token", "--label", TOKEN_LABEL, "--so-pin", SO_PIN])
            .ok()
            .stdout_has("Token successfully initialized");
        tool.run(&["--list-token-slots"])
            .ok()
            .stdout_has(&format!("token label        : {TOKEN_LABEL}"))
            .stdout_has("token initialized")
            .lacks("PIN initialized");
        Ok(())
    });
    t.check("--init-pin as the SO sets the user PIN", || {
        tool.run(&[
            "--init-pin",
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ])
        .ok()
        .stdout_has("User PIN successfully initialized");
        tool.run(&["--list-token-slots"])
            .ok()
            .stdout_has("PIN initialized")
            .stdout_has("login required");
        Ok(())
    });
    t.check(
        "--login takes the user PIN and refuses a wrong one and the SO PIN",
        || {
            tool.user(&["--list-objects"]).ok();
            tool.run(&["--login", "--pin", "not-the-pin", "--list-objects"])
                .failed()
                .stderr_has("CKR_PIN_INCORRECT");
            tool.run(&["--login", "--pin", SO_PIN, "--list-objects"])
                .failed()
                .stderr_has("CKR_PIN_INCORRECT");
            Ok(())
        },
    );
    t.check("--change-pin changes the user PIN (and back)", || {
        let new = "new-user-pin-1";
        tool.user(&["--change-pin", "--new-pin", new])
            .ok()
            .stdout_has("PIN successfully changed");
        tool.run(&["--login", "--pin", new, "--list-objects"]).ok();
        tool.user(&["--list-objects"])
            .failed()
            .stderr_has("CKR_PIN_INCORRECT");
        tool.run(&[
            "--login",
            "--pin",
            new,
            "--change-pin",
            "--new-pin",
            USER_PIN,
        ])
        .ok()
        .stdout_has("PIN successfully changed");
        tool.user(&["--list-objects"]).ok();
        Ok(())
    });

    // ----- mechanisms ------------------------------------------------------------------------

    // Every signature mechanism the tool can name that the module lists has a check below
    // (AES-CMAC's records the tool's refusal).
    let mut sign_mechs: BTreeSet<String> = [
        "RSA-PKCS",
        "RSA-X-509",
        "RSA-PKCS-PSS",
        "ECDSA",
        "EDDSA",
        "AES-CMAC",
        "SHA-1-HMAC-GENERAL",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for h in HASHES {
        sign_mechs.insert(format!("{}-RSA-PKCS", h.mech));
        sign_mechs.insert(format!("{}-RSA-PKCS-PSS", h.mech));
        sign_mechs.insert(format!("ECDSA-{}", h.mech));
        sign_mechs.insert(h.hmac_mech.to_owned());
    }
    t.check(
        "--list-mechanisms: every mechanism, and every signature one has a check here",
        || {
            let r = tool.run(&["--list-mechanisms"]);
            r.ok().stdout_has("Supported mechanisms:");
            for m in [
                "RSA-PKCS-KEY-PAIR-GEN",
                "ECDSA-KEY-PAIR-GEN",
                "EC-EDWARDS-KEY-PAIR-GEN",
                "AES-KEY-GEN",
                "GENERIC-SECRET-KEY-GEN",
                "RSA-PKCS-OAEP,",
                "AES-ECB,",
                "AES-CBC,",
                "AES-CBC-PAD,",
                "AES-GCM,",
                "AES-KEY-WRAP,",
                "ECDH1-DERIVE,",
                "SHA256, digest",
                "SHA3-256, digest",
            ] {
                r.stdout_has(m);
            }
            let mut listed = BTreeSet::new();
            for line in r.stdout.lines().map(str::trim) {
                let mut parts = line.split(", ");
                let Some(name) = parts.next() else { continue };
                let flags: Vec<&str> = parts.collect();
                // Keyed mechanisms run in the HSM (CKF_HW); digests run in the library.
                ensure(
                    flags.is_empty() || flags.contains(&"hw") != flags.contains(&"digest"),
                    format!("{name}: CKF_HW on every keyed mechanism and no digest{r}"),
                )?;
                if flags.contains(&"sign") && !name.starts_with("mechtype-") {
                    listed.insert(name.to_owned());
                }
            }
            ensure(
                listed == sign_mechs,
                format!(
                    "the signature mechanisms the tool names and the module lists are {listed:?}; \
                 this suite checks {sign_mechs:?}{r}"
                ),
            )
        },
    );

    // ----- key generation --------------------------------------------------------------------

    t.check("--keypairgen RSA-2048", || {
        tool.keypair("rsa:2048", RSA2048, "rsa2048", &[])
            .stdout_has("Private Key Object; RSA")
            .stdout_has("Public Key Object; RSA 2048 bits")
            .stdout_has(if setup.kind.wraps() {
                // Keys travel between vendor members wrapped under the trusted cluster key.
                "sensitive, always sensitive, extractable, local"
            } else {
                "sensitive, always sensitive, never extractable, local"
            });
        let spki = tool.public_key(RSA2048)?;
        let k = rsa::PublicEncryptingKey::from_der(&spki)
            .map_err(|e| format!("aws-lc-rs rejects the RSA public key: {e:?}"))?;
        ensure(k.key_size_bits() == 2048, "a 2048-bit modulus")?;
        keys.spki.insert(RSA2048, spki);
        Ok(())
    });
    t.check(
        "--keypairgen RSA-3072 --usage-sign --usage-wrap (a signing and wrapping pair)",
        || {
            let r = tool.keypair(
                "rsa:3072",
                RSA3072,
                "rsa3072",
                &["--usage-sign", "--usage-wrap"],
            );
            r.stdout_has("Public Key Object; RSA 3072 bits");
            let spki = tool.public_key(RSA3072)?;
            let k = rsa::PublicEncryptingKey::from_der(&spki)
                .map_err(|e| format!("aws-lc-rs rejects the RSA public key: {e:?}"))?;
            ensure(k.key_size_bits() == 3072, "a 3072-bit modulus")?;
            keys.spki.insert(RSA3072, spki);
            let public = usage_of(&r.stdout, "Public Key Object").unwrap_or_default();
            ensure(
                public.contains("wrap") && public.contains("verify"),
                format!("public key usage {public:?}{r}"),
            )?;
            // The private key unwraps and so does not decrypt (the key policy); nothing asked it to.
            let private = usage_of(&r.stdout, "Private Key Object").unwrap_or_default();
            ensure(
                private == "sign, unwrap",
                format!("private key usage {private:?}{r}"),
            )?;
            Ok(())
        },
    );
    for (curve, id, label, bits, params, alg) in [
        (
            "prime256v1",
            EC256,
            "ec256",
            256,
            P256_PARAMS_HEX,
            &signature::ECDSA_P256_SHA256_FIXED,
        ),
        (
            "secp384r1",
            EC384,
            "ec384",
            384,
            P384_PARAMS_HEX,
            &signature::ECDSA_P384_SHA384_FIXED,
        ),
    ] {
        t.check(&format!("--keypairgen EC:{curve}"), || {
            let r = tool.keypair(&format!("EC:{curve}"), id, label, &[]);
            r.stdout_has("Private Key Object; EC")
                .stdout_has(&format!("Public Key Object; EC  EC_POINT {bits} bits"))
                .stdout_has(&format!("EC_PARAMS:  {params}"));
            // The public key from CKA_EC_POINT as the tool prints it (a DER OCTET STRING), not
            // through --read-object: this version's EC export hands OpenSSL a point buffer it
            // has already freed (found with P-384 keys: "cannot create EVP_PKEY", the buffer
            // zeroed by the time EVP_PKEY_fromdata reads it), so it works by allocator luck.
            let point = ec_point(&r)?;
            ensure(
                point.len() == 1 + 2 * bits / 8 && point[0] == 0x04,
                format!("an uncompressed {bits}-bit point: {}", hex(&point)),
            )?;
            signature::ParsedPublicKey::new(alg, &point)
                .map_err(|e| format!("aws-lc-rs rejects the point: {e:?}"))?;
            keys.spki.insert(id, ec_spki(bits, &point));
            Ok(())
        });
    }
    t.check("--keypairgen EC:edwards25519 (Ed25519)", || {
        let r = tool.keypair("EC:edwards25519", ED25519, "ed25519", &[]);
        r.stdout_has("Private Key Object; EC_EDWARDS")
            .stdout_has("Public Key Object; EC_EDWARDS  EC_POINT 255 bits")
            .stdout_has(&format!("EC_PARAMS:  {ED25519_PARAMS_HEX}"));
        let raw = ec_point(&r)?;
        ensure(
            raw.len() == 32,
            format!("a 32-byte Ed25519 key: {}", hex(&raw)),
        )?;
        signature::ParsedPublicKey::new(&signature::ED25519, &raw)
            .map_err(|e| format!("aws-lc-rs rejects the Ed25519 key: {e:?}"))?;
        let spki = tool.public_key(ED25519)?;
        ensure(
            spki_public_key(&spki)? == raw,
            "--read-object gives the same Ed25519 key as CKA_EC_POINT",
        )?;
        keys.ed25519 = raw;
        Ok(())
    });
    t.check(
        "EC:ed25519, named in this version's --help, is refused by the tool itself",
        || {
            tool.user(&["--keypairgen", "--key-type", "EC:ed25519", "--id", "0f"])
                .failed()
                .stderr_has("Unknown EC key params 'ed25519'");
            Ok(())
        },
    );
    for (key_type, id, label, shown, extra) in [
        (
            "AES:32",
            AES,
            "aes256",
            "Secret Key Object; AES length 32",
            &["--extractable"][..],
        ),
        (
            "AES:16",
            AES128,
            "aes128",
            "Secret Key Object; AES length 16",
            &["--extractable"][..],
        ),
        (
            "GENERIC:32",
            HMAC,
            "hmac",
            "Secret Key Object; Generic secret length 32",
            &["--extractable"][..],
        ),
    ] {
        t.check(&format!("--keygen {key_type}"), || {
            let r = tool.keygen(key_type, id, label, extra);
            r.stdout_has(shown);
            let usage = usage_of(&r.stdout, "Secret Key Object").unwrap_or_default();
            ensure(
                usage.contains("encrypt, decrypt"),
                format!("a data key encrypts and decrypts: {usage:?}{r}"),
            )?;
            let value = tool.secret_value(id)?;
            let want = if key_type == "AES:16" { 16 } else { 32 };
            ensure(
                value.len() == want,
                format!("a {want}-byte key: {}", hex(&value)),
            )?;
            ensure(
                r.stdout.contains(&format!("VALUE:      {}", hex(&value))),
                format!("the tool shows the value it reads back{r}"),
            )?;
            keys.secret.insert(id, value);
            Ok(())
        });
    }
    t.check(
        "--keygen AES:32 --usage-wrap makes a KEK that wraps and does not decrypt",
        || {
            let r = tool.keygen("AES:32", KEK, "kek", &["--usage-wrap", "--extractable"]);
            r.stdout_has("Secret Key Object; AES length 32");
            let value = tool.secret_value(KEK)?;
            ensure(value.len() == 32, "a 32-byte KEK")?;
            keys.secret.insert(KEK, value);
            let usage = usage_of(&r.stdout, "Secret Key Object").unwrap_or_default();
            ensure(
                usage.contains("wrap, unwrap")
                    && !usage.contains("encrypt")
                    && !usage.contains("decrypt"),
                format!("the KEK's usage is {usage:?}{r}"),
            )?;
            Ok(())
        },
    );
    t.check(
        "the key policy refuses --usage-wrap --usage-decrypt on a --sensitive key (CKR_TEMPLATE_INCONSISTENT)",
        || {
            tool.user(&[
                "--keygen",
                "--key-type",
                "AES:32",
                "--id",
                "0e",
                "--sensitive",
                "--usage-wrap",
                "--usage-decrypt",
            ])
            .failed()
            .stderr_has("C_GenerateKey failed: rv = CKR_TEMPLATE_INCONSISTENT");
            Ok(())
        },
    );
    t.check(
        "--list-objects shows the keys; private keys only after a login; --type filters",
        || {
            let r = tool.user(&["--list-objects"]);
            r.ok();
            for label in [
                "rsa2048", "rsa3072", "ec256", "ec384", "ed25519", "aes256", "aes128", "hmac",
                "kek",
            ] {
                r.stdout_has(&format!("label:      {label}"));
            }
            let count = |r: &Run, what: &str| r.stdout.matches(what).count();
            ensure(
                (
                    count(&r, "Private Key Object"),
                    count(&r, "Public Key Object"),
                    count(&r, "Secret Key Object"),
                ) == (5, 5, 4),
                format!("5 private, 5 public and 4 secret keys{r}"),
            )?;
            // pkcs11-tool makes keys with CKA_PRIVATE false unless --private: only the private keys
            // (CKA_PRIVATE true by the module's default) are hidden without a login.
            let r = tool.run(&["--list-objects"]);
            r.ok().lacks("Private Key Object");
            ensure(
                (
                    count(&r, "Public Key Object"),
                    count(&r, "Secret Key Object"),
                ) == (5, 4),
                format!("the public and secret keys without a login{r}"),
            )?;
            let r = tool.user(&["--list-objects", "--type", "privkey"]);
            r.ok().lacks("Public Key Object").lacks("Secret Key Object");
            ensure(
                count(&r, "Private Key Object") == 5,
                format!("5 private keys{r}"),
            )
        },
    );
    t.check("--delete-object removes a key", || {
        // (secp256r1: the curve's other name.)
        tool.keypair("EC:secp256r1", "0d", "scratch", &[])
            .stdout_has(&format!("EC_PARAMS:  {P256_PARAMS_HEX}"));
        tool.user(&["--delete-object", "--type", "pubkey", "--id", "0d"])
            .ok();
        tool.user(&["--delete-object", "--type", "privkey", "--id", "0d"])
            .ok();
        tool.user(&["--list-objects"])
            .ok()
            .lacks("ID:         0d")
            .lacks("scratch");
        Ok(())
    });

    // ----- signatures ------------------------------------------------------------------------

    let keys = &keys;
    t.check(
        "sign/verify RSA-PKCS (raw, over a SHA-256 DigestInfo), RSA-2048",
        || {
            let spki = keys.spki(RSA2048)?;
            let h = hash("SHA256");
            let mut input = h.digest_info.to_vec();
            input.extend_from_slice(digest::digest(h.digest, DATA).as_ref());
            let sig = tool.sign_verify("RSA-PKCS", RSA2048, &input, &[])?;
            // The same bytes a SHA256-RSA-PKCS signature of DATA is.
            signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, spki)
                .verify(DATA, &sig)
                .map_err(|_| "aws-lc-rs rejects the raw RSA-PKCS signature".to_owned())?;
            verify_pkcs1_by_hand(spki, h, DATA, &sig)
        },
    );
    t.check("sign/verify RSA-X-509 (raw RSA), RSA-2048", || {
        let spki = keys.spki(RSA2048)?;
        let mut input = vec![0u8; 256];
        rand::fill(&mut input[1..]).map_err(|_| "random bytes")?;
        let sig = tool.sign_verify("RSA-X-509", RSA2048, &input, &[])?;
        ensure(rsa_public(spki, &sig)? == input, "sig^e mod n is the input")
    });
    for (id, bits) in [(RSA2048, 2048), (RSA3072, 3072)] {
        for h in HASHES {
            if bits == 3072 && !["SHA256", "SHA384"].contains(&h.mech) {
                continue;
            }
            let mech = format!("{}-RSA-PKCS", h.mech);
            t.check(&format!("sign/verify {mech}, RSA-{bits}"), || {
                let spki = keys.spki(id)?;
                let sig = tool.sign_verify(&mech, id, DATA, &[])?;
                ensure(sig.len() == bits / 8, format!("a {bits}-bit signature"))?;
                verify_pkcs1_by_hand(spki, h, DATA, &sig)?;
                ensure(
                    verify_pkcs1_by_hand(spki, h, DATA, &tampered(&sig)).is_err(),
                    "the hand check rejects a tampered signature",
                )?;
                if let Some(alg) = aws_pkcs1(h, bits) {
                    signature::UnparsedPublicKey::new(alg, spki)
                        .verify(DATA, &sig)
                        .map_err(|_| format!("aws-lc-rs rejects the {mech} signature"))?;
                }
                if h.mech == "SHA256" {
                    tool.verify_rejects(&mech, id, DATA, &tampered(&sig), &[]);
                }
                Ok(())
            });
        }
    }
    t.check(
        "sign/verify RSA-PKCS-PSS (raw, --hash-algorithm SHA256), RSA-2048",
        || {
            let spki = keys.spki(RSA2048)?;
            let h = hash("SHA256");
            let d = digest::digest(h.digest, DATA);
            let extra = ["--hash-algorithm", "SHA256"];
            let sig = tool.sign_verify_expecting(
                "RSA-PKCS-PSS",
                RSA2048,
                d.as_ref(),
                &extra,
                &["PSS parameters: hashAlg=SHA256, mgf=MGF1-SHA256, salt_len=32 B"],
            )?;
            signature::UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, spki)
                .verify(DATA, &sig)
                .map_err(|_| "aws-lc-rs rejects the raw RSA-PKCS-PSS signature".to_owned())?;
            verify_pss_by_hand(spki, h, DATA, &sig, 32)
        },
    );
    for (id, bits) in [(RSA2048, 2048), (RSA3072, 3072)] {
        for h in HASHES {
            if bits == 3072 && h.mech != "SHA512" {
                continue;
            }
            let mech = format!("{}-RSA-PKCS-PSS", h.mech);
            t.check(&format!("sign/verify {mech}, RSA-{bits}"), || {
                let spki = keys.spki(id)?;
                let h_len = h.digest.output_len();
                let params = format!(
                    "PSS parameters: hashAlg={}, mgf=MGF1-{}, salt_len={h_len} B",
                    h.alg, h.mech
                );
                let sig = tool.sign_verify_expecting(&mech, id, DATA, &[], &[&params])?;
                ensure(sig.len() == bits / 8, format!("a {bits}-bit signature"))?;
                verify_pss_by_hand(spki, h, DATA, &sig, h_len)?;
                ensure(
                    verify_pss_by_hand(spki, h, DATA, &tampered(&sig), h_len).is_err(),
                    "the hand check rejects a tampered signature",
                )?;
                if let Some(alg) = aws_pss(h) {
                    signature::UnparsedPublicKey::new(alg, spki)
                        .verify(DATA, &sig)
                        .map_err(|_| format!("aws-lc-rs rejects the {mech} signature"))?;
                }
                if h.mech == "SHA256" {
                    tool.verify_rejects(&mech, id, DATA, &tampered(&sig), &[]);
                }
                Ok(())
            });
        }
    }
    for (id, bits, own) in [(EC256, 256, "SHA256"), (EC384, 384, "SHA384")] {
        t.check(
            &format!("sign/verify ECDSA (raw, over a {own} digest), P-{bits}"),
            || {
                let spki = keys.spki(id)?;
                let d = digest::digest(hash(own).digest, DATA);
                let sig = tool.sign_verify("ECDSA", id, d.as_ref(), &[])?;
                ensure(
                    sig.len() == bits / 4,
                    format!("r || s is {} bytes", bits / 4),
                )?;
                let alg = if bits == 256 {
                    &signature::ECDSA_P256_SHA256_FIXED
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED
                };
                signature::UnparsedPublicKey::new(alg, spki)
                    .verify(DATA, &sig)
                    .map_err(|_| "aws-lc-rs rejects the raw ECDSA signature".to_owned())
            },
        );
        for h in HASHES {
            let mech = format!("ECDSA-{}", h.mech);
            t.check(&format!("sign/verify {mech}, P-{bits}"), || {
                let spki = keys.spki(id)?;
                let sig = tool.sign_verify(&mech, id, DATA, &[])?;
                ensure(
                    sig.len() == bits / 4,
                    format!("r || s is {} bytes", bits / 4),
                )?;
                let d = digest::digest(h.digest, DATA);
                verify_ecdsa_prehashed(spki, bits, d.as_ref(), &sig)?;
                ensure(
                    verify_ecdsa_prehashed(spki, bits, d.as_ref(), &tampered(&sig)).is_err(),
                    "aws-lc-rs rejects a tampered signature",
                )?;
                if h.mech == own {
                    tool.verify_rejects(&mech, id, DATA, &tampered(&sig), &[]);
                }
                Ok(())
            });
        }
    }
    t.check(
        "sign/verify ECDSA-SHA256 in DER (--signature-format openssl), P-256",
        || {
            let spki = keys.spki(EC256)?;
            let extra = ["--signature-format", "openssl"];
            let sig = tool.sign_verify("ECDSA-SHA256", EC256, DATA, &extra)?;
            ensure(sig.first() == Some(&0x30), "a DER ECDSA-Sig-Value")?;
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, spki)
                .verify(DATA, &sig)
                .map_err(|_| "aws-lc-rs rejects the DER ECDSA-SHA256 signature".to_owned())
        },
    );
    t.check("sign/verify EDDSA (Ed25519)", || {
        ensure(
            !keys.ed25519.is_empty(),
            "no Ed25519 key: its keygen check failed",
        )?;
        let sig = tool.sign_verify("EDDSA", ED25519, DATA, &[])?;
        ensure(sig.len() == 64, "an Ed25519 signature is 64 bytes")?;
        let key = signature::UnparsedPublicKey::new(&signature::ED25519, &keys.ed25519);
        key.verify(DATA, &sig)
            .map_err(|_| "aws-lc-rs rejects the Ed25519 signature".to_owned())?;
        ensure(
            key.verify(DATA, &tampered(&sig)).is_err(),
            "aws-lc-rs rejects a tampered one",
        )?;
        tool.verify_rejects("EDDSA", ED25519, DATA, &tampered(&sig), &[]);
        Ok(())
    });
    for h in HASHES {
        t.check(
            &format!(
                "sign/verify {} (a MAC as aws-lc-rs computes it)",
                h.hmac_mech
            ),
            || {
                let key = keys.secret(HMAC)?;
                let mac = tool.sign_verify(h.hmac_mech, HMAC, DATA, &[])?;
                let want = hmac::sign(&hmac::Key::new(h.hmac, key), DATA);
                ensure(
                    mac == want.as_ref(),
                    format!(
                        "{}: the module's {} is not aws-lc-rs's {}",
                        h.hmac_mech,
                        hex(&mac),
                        hex(want.as_ref())
                    ),
                )?;
                if h.mech == "SHA256" {
                    tool.verify_rejects(h.hmac_mech, HMAC, DATA, &tampered(&mac), &[]);
                }
                Ok(())
            },
        );
    }
    t.check(
        "SHA-1-HMAC-GENERAL: this tool passes no MAC length; refused at C_SignInit",
        || {
            let data = tool.write("hmac-general-in.bin", DATA);
            let out = tool.file("hmac-general.bin");
            tool.user(&[
                "--sign",
                "--mechanism",
                "SHA-1-HMAC-GENERAL",
                "--id",
                HMAC,
                "-i",
                &data,
                "-o",
                &out,
            ])
            .failed()
            .stderr_has("C_SignInit failed: rv = CKR_MECHANISM_PARAM_INVALID");
            Ok(())
        },
    );
    t.check(
        "AES-CMAC: this tool signs with private keys only ('Private key not found')",
        || {
            let data = tool.write("cmac-in.bin", DATA);
            let out = tool.file("cmac.bin");
            tool.user(&[
                "--sign",
                "--mechanism",
                "AES-CMAC",
                "--id",
                AES,
                "-i",
                &data,
                "-o",
                &out,
            ])
            .failed()
            .stderr_has("Private key not found");
            Ok(())
        },
    );

    // ----- encryption ------------------------------------------------------------------------

    t.check(
        "encrypt/decrypt AES-CBC-PAD (both directions against aws-lc-rs)",
        || {
            let key = keys.secret(AES)?;
            let iv = hex(&IV);
            let ct = tool.encrypt("AES-CBC-PAD", AES, DATA, &["--iv", &iv])?;
            ensure(ct.len() == (DATA.len() / 16 + 1) * 16, "PKCS #7 padding")?;
            let dec = PaddedBlockDecryptingKey::cbc_pkcs7(
                UnboundCipherKey::new(&AES_256, key).map_err(|_| "key")?,
            )
            .map_err(|_| "a CBC key")?;
            let mut buf = ct.clone();
            let plain = dec
                .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(IV)))
                .map_err(|_| "aws-lc-rs cannot decrypt the module's AES-CBC-PAD output")?;
            ensure(
                plain == DATA,
                "the module's AES-CBC-PAD decrypts to the data with aws-lc-rs",
            )?;
            let enc = PaddedBlockEncryptingKey::cbc_pkcs7(
                UnboundCipherKey::new(&AES_256, key).map_err(|_| "key")?,
            )
            .map_err(|_| "a CBC key")?;
            let mut buf = b"aws-lc-rs made this ciphertext".to_vec();
            enc.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(IV)))
                .map_err(|_| "aws-lc-rs encrypts")?;
            let plain = tool.decrypt("AES-CBC-PAD", AES, &buf, &["--iv", &iv])?;
            ensure(
                plain == b"aws-lc-rs made this ciphertext",
                format!(
                    "the module decrypts aws-lc-rs's AES-CBC-PAD: {}",
                    hex(&plain)
                ),
            )
        },
    );
    for mode in ["AES-CBC", "AES-ECB"] {
        t.check(
            &format!("encrypt/decrypt {mode} (both directions against aws-lc-rs)"),
            || {
                let key = keys.secret(AES)?;
                let iv = hex(&IV);
                let cbc_args = ["--iv", iv.as_str()];
                let extra: &[&str] = if mode == "AES-CBC" { &cbc_args } else { &[] };
                let blocks: Vec<u8> = (0u8..64).collect();
                let ct = tool.encrypt(mode, AES, &blocks, extra)?;
                ensure(ct.len() == 64, "no padding")?;
                let unbound = || UnboundCipherKey::new(&AES_256, key).map_err(|_| "key".to_owned());
                let (dec, ctx) = if mode == "AES-CBC" {
                    (
                        DecryptingKey::cbc(unbound()?),
                        DecryptionContext::Iv128(FixedLength::from(IV)),
                    )
                } else {
                    (DecryptingKey::ecb(unbound()?), DecryptionContext::None)
                };
                let mut buf = ct.clone();
                let plain = dec
                    .map_err(|_| "a key")?
                    .decrypt(&mut buf, ctx)
                    .map_err(|_| format!("aws-lc-rs cannot decrypt the module's {mode} output"))?;
                ensure(
                    plain == blocks,
                    format!("the module's {mode} decrypts with aws-lc-rs"),
                )?;
                let (enc, ctx) = if mode == "AES-CBC" {
                    (
                        EncryptingKey::cbc(unbound()?),
                        EncryptionContext::Iv128(FixedLength::from(IV)),
                    )
                } else {
                    (EncryptingKey::ecb(unbound()?), EncryptionContext::None)
                };
                let mut buf: Vec<u8> = (100u8..132).collect();
                enc.map_err(|_| "a key")?
                    .less_safe_encrypt(&mut buf, ctx)
                    .map_err(|_| "aws-lc-rs encrypts")?;
                let plain = tool.decrypt(mode, AES, &buf, extra)?;
                ensure(
                    plain == (100u8..132).collect::<Vec<u8>>(),
                    format!("the module decrypts aws-lc-rs's {mode}"),
                )
            },
        );
    }
    t.check(
        "AES-CTR and AES-GCM: this tool has no parameters for them and refuses itself",
        || {
            let data = tool.write("ctr-in.bin", &[0u8; 32]);
            let out = tool.file("ctr-out.bin");
            for mech in ["AES-CTR", "AES-GCM"] {
                tool.user(&[
                    "--encrypt",
                    "--mechanism",
                    mech,
                    "--id",
                    AES,
                    "--iv",
                    &hex(&IV),
                    "-i",
                    &data,
                    "-o",
                    &out,
                ])
                .failed()
                .stderr_has(&format!("Mechanism {mech} illegal or not supported"));
            }
            Ok(())
        },
    );
    t.check(
        "RSA: this tool's --encrypt takes secret keys only ('Secret key not found')",
        || {
            let data = tool.write("rsa-in.bin", b"x");
            let out = tool.file("rsa-out.bin");
            tool.user(&[
                "--encrypt",
                "--mechanism",
                "RSA-PKCS-OAEP",
                "--id",
                RSA2048,
                "-i",
                &data,
                "-o",
                &out,
            ])
            .failed()
            .stderr_has("Secret key not found");
            Ok(())
        },
    );
    t.check(
        "decrypt RSA-PKCS of an aws-lc-rs ciphertext, RSA-2048",
        || {
            let spki = keys.spki(RSA2048)?;
            let key = rsa::Pkcs1PublicEncryptingKey::new(
                rsa::PublicEncryptingKey::from_der(spki).map_err(|_| "the RSA public key")?,
            )
            .map_err(|_| "a PKCS #1 key")?;
            let plain = b"secret message for the module to decrypt";
            let mut ct = vec![0u8; key.ciphertext_size()];
            let ct = key
                .encrypt(plain, &mut ct)
                .map_err(|_| "aws-lc-rs encrypts")?
                .to_vec();
            let got = tool.decrypt("RSA-PKCS", RSA2048, &ct, &[])?;
            ensure(
                got == plain,
                format!("RSA-PKCS decryption gave {}", hex(&got)),
            )
        },
    );
    t.check(
        "decrypt RSA-X-509 (raw RSA) of a ciphertext made with the public key, RSA-2048",
        || {
            let spki = keys.spki(RSA2048)?;
            let (n, e) = rsa_n_e(spki)?;
            let mut m = vec![0u8; 256];
            rand::fill(&mut m[1..]).map_err(|_| "random bytes")?;
            let c = BigUint::from_bytes_be(&m).modpow(&e, &n).to_bytes_be();
            let mut ct = vec![0u8; 256 - c.len()];
            ct.extend_from_slice(&c);
            let got = tool.decrypt("RSA-X-509", RSA2048, &ct, &[])?;
            ensure(got == m, "raw RSA decryption gives m back")
        },
    );
    for (h, oaep) in [
        ("SHA1", &rsa::OAEP_SHA1_MGF1SHA1),
        ("SHA256", &rsa::OAEP_SHA256_MGF1SHA256),
        ("SHA384", &rsa::OAEP_SHA384_MGF1SHA384),
        ("SHA512", &rsa::OAEP_SHA512_MGF1SHA512),
    ] {
        let h = hash(h);
        t.check(
            &format!(
                "decrypt RSA-PKCS-OAEP ({}, MGF1-{}) of an aws-lc-rs ciphertext",
                h.alg, h.mech
            ),
            || {
                let spki = keys.spki(RSA2048)?;
                let key = rsa::OaepPublicEncryptingKey::new(
                    rsa::PublicEncryptingKey::from_der(spki).map_err(|_| "the RSA public key")?,
                )
                .map_err(|_| "an OAEP key")?;
                let plain = b"secret message for the module to decrypt";
                let mut ct = vec![0u8; key.ciphertext_size()];
                let ct = key
                    .encrypt(oaep, plain, &mut ct, None)
                    .map_err(|_| "aws-lc-rs encrypts")?
                    .to_vec();
                let mgf = format!("MGF1-{}", h.mech);
                let got = tool.decrypt(
                    "RSA-PKCS-OAEP",
                    RSA2048,
                    &ct,
                    &["--hash-algorithm", h.alg, "--mgf", &mgf],
                )?;
                ensure(got == plain, format!("OAEP decryption gave {}", hex(&got)))
            },
        );
    }

    // ----- wrap and unwrap -------------------------------------------------------------------

    t.check(
        "--wrap AES-KEY-WRAP gives aws-lc-rs's RFC 3394 wrapping; --unwrap gives the key back",
        || {
            let kek = keys.secret(KEK)?;
            let key = keys.secret(AES)?;
            let (wrapped, out) = tool.wrap("AES-KEY-WRAP", KEK, AES, "kw.bin")?;
            let mut want = [0u8; 40];
            let want = AesKek::new(&key_wrap::AES_256, kek)
                .map_err(|_| "a KEK")?
                .wrap(key, &mut want)
                .map_err(|_| "aws-lc-rs wraps")?;
            ensure(
                wrapped == want,
                format!(
                    "the module's {} is not aws-lc-rs's {}",
                    hex(&wrapped),
                    hex(want)
                ),
            )?;
            tool.user(&[
                "--unwrap",
                "--mechanism",
                "AES-KEY-WRAP",
                "--id",
                KEK,
                "-i",
                &out,
                "--key-type",
                "AES:32",
                "--application-id",
                "10",
                "--application-label",
                "unwrapped-kw",
                "--extractable",
            ])
            .ok()
            .stdout_has("Key unwrapped")
            .stdout_has("Secret Key Object; AES length 32")
            .stdout_has("label:      unwrapped-kw");
            ensure(
                tool.secret_value("10")? == key,
                "the unwrapped key is the wrapped one",
            )
        },
    );
    t.check(
        "--wrap 0x210B (AES-KEY-WRAP-PAD) gives aws-lc-rs's RFC 5649 wrapping",
        || {
            let kek = keys.secret(KEK)?;
            let key = keys.secret(AES)?;
            let (wrapped, _) = tool.wrap("0x210B", KEK, AES, "kwp.bin")?;
            let mut want = [0u8; 40];
            let want = AesKek::new(&key_wrap::AES_256, kek)
                .map_err(|_| "a KEK")?
                .wrap_with_padding(key, &mut want)
                .map_err(|_| "aws-lc-rs wraps")?;
            ensure(
                wrapped == want,
                format!(
                    "the module's {} is not aws-lc-rs's {}",
                    hex(&wrapped),
                    hex(want)
                ),
            )
        },
    );
    t.check(
        "--unwrap 0x210B of a 20-byte secret wrapped by aws-lc-rs",
        || {
            let kek = keys.secret(KEK)?;
            let secret: Vec<u8> = (1u8..=20).collect();
            let mut buf = [0u8; 40];
            let wrapped = AesKek::new(&key_wrap::AES_256, kek)
                .map_err(|_| "a KEK")?
                .wrap_with_padding(&secret, &mut buf)
                .map_err(|_| "aws-lc-rs wraps")?;
            let input = tool.write("kwp-in.bin", wrapped);
            tool.user(&[
                "--unwrap",
                "--mechanism",
                "0x210B",
                "--id",
                KEK,
                "-i",
                &input,
                "--key-type",
                "GENERIC:20",
                "--application-id",
                "11",
                "--application-label",
                "unwrapped-kwp",
                "--extractable",
            ])
            .ok()
            .stdout_has("Key unwrapped")
            .stdout_has("Secret Key Object; Generic secret length 20");
            let got = tool.secret_value("11")?;
            ensure(
                got == secret,
                format!("the unwrapped secret is {}", hex(&got)),
            )
        },
    );
    t.check("RSA-PKCS-OAEP --wrap/--unwrap: this tool passes no OAEP parameters (CKR_MECHANISM_PARAM_INVALID)", || {
        let spki = keys.spki(RSA3072)?;
        let out = tool.file("oaep-wrapped.bin");
        tool.user(&["--wrap", "--mechanism", "RSA-PKCS-OAEP", "--id", RSA3072, "--application-id", AES128, "-o", &out])
            .failed()
            .stderr_has("C_WrapKey failed: rv = CKR_MECHANISM_PARAM_INVALID");
        let key = rsa::OaepPublicEncryptingKey::new(
            rsa::PublicEncryptingKey::from_der(spki).map_err(|_| "the RSA public key")?,
        )
        .map_err(|_| "an OAEP key")?;
        let mut ct = vec![0u8; key.ciphertext_size()];
        let ct = key
            .encrypt(&rsa::OAEP_SHA1_MGF1SHA1, &[0x42u8; 16], &mut ct, None)
            .map_err(|_| "aws-lc-rs encrypts")?
            .to_vec();
        let input = tool.write("oaep-in.bin", &ct);
        tool.user(&[
            "--unwrap",
            "--mechanism",
            "RSA-PKCS-OAEP",
            "--id",
            RSA3072,
            "-i",
            &input,
            "--key-type",
            "AES:16",
            "--application-id",
            "12",
        ])
        .failed()
        .stderr_has("C_UnwrapKey failed: rv = CKR_MECHANISM_PARAM_INVALID");
        Ok(())
    });

    // ----- derive ----------------------------------------------------------------------------

    t.check(
        "--derive ECDH1-DERIVE gives the shared secret aws-lc-rs computes from the other side",
        || {
            let peer =
                agreement::PrivateKey::generate(&agreement::ECDH_P256).map_err(|_| "a peer key")?;
            let point = peer.compute_public_key().map_err(|_| "the peer's point")?;
            let input = tool.write("peer.der", &ec_spki(256, point.as_ref()));
            let out = tool.file("ecdh.bin");
            let r = tool.user(&[
                "--derive",
                "--mechanism",
                "ECDH1-DERIVE",
                "--id",
                EC256,
                "-i",
                &input,
                "-o",
                &out,
            ]);
            r.ok()
                .stdout_has("Using derive algorithm 0x00001050 ECDH1-DERIVE");
            let derived = tool.read("ecdh.bin", &r)?;
            // This version lists every public key whatever --id says: take the block with ours.
            let listed = tool.user(&["--list-objects", "--type", "pubkey"]);
            listed.ok();
            let block = listed
                .stdout
                .split("Public Key Object")
                .find(|b| {
                    b.lines()
                        .any(|l| l.trim() == format!("ID:         {EC256}"))
                })
                .ok_or_else(|| format!("no public key with ID {EC256}{listed}"))?;
            let block_run = Run {
                cmd: listed.cmd.clone(),
                status: listed.status,
                stdout: block.to_owned(),
                stderr: String::new(),
            };
            let token_point =
                ec_point(&block_run).map_err(|e| format!("the token's P-256 point: {e}"))?;
            ensure(
                token_point.len() == 65,
                format!("the token's P-256 point: {}{listed}", hex(&token_point)),
            )?;
            let want = agreement::agree(
                &peer,
                agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &token_point),
                "ECDH",
                |z| Ok::<_, &str>(z.to_vec()),
            )
            .map_err(|e| format!("aws-lc-rs ECDH: {e}"))?;
            ensure(
                derived == want,
                format!(
                    "derived {} but aws-lc-rs computes {}",
                    hex(&derived),
                    hex(&want)
                ),
            )
        },
    );

    // ----- digests and random ----------------------------------------------------------------

    t.check(
        "--hash with SHA-1, SHA-2 and SHA-3 agrees with aws-lc-rs",
        || {
            let data = tool.write("hash-in.bin", DATA);
            for (mech, alg) in [
                ("SHA-1", &digest::SHA1_FOR_LEGACY_USE_ONLY),
                ("SHA224", &digest::SHA224),
                ("SHA256", &digest::SHA256),
                ("SHA384", &digest::SHA384),
                ("SHA512", &digest::SHA512),
                ("SHA3-256", &digest::SHA3_256),
                ("SHA3-384", &digest::SHA3_384),
                ("SHA3-512", &digest::SHA3_512),
            ] {
                let name = format!("digest-{mech}.bin");
                let out = tool.file(&name);
                let r = tool.run(&["--hash", "--mechanism", mech, "-i", &data, "-o", &out]);
                r.ok();
                let got = tool.read(&name, &r)?;
                let want = digest::digest(alg, DATA);
                ensure(
                    got == want.as_ref(),
                    format!("{mech}: {} is not {}{r}", hex(&got), hex(want.as_ref())),
                )?;
            }
            Ok(())
        },
    );
    t.check("--generate-random", || {
        let out = tool.file("random.bin");
        let r = tool.run(&["--generate-random", "64", "-o", &out]);
        r.ok();
        let rnd = tool.read("random.bin", &r)?;
        ensure(rnd.len() == 64, "64 bytes")?;
        ensure(
            rnd.iter().any(|&b| b != rnd[0]),
            "64 random bytes are not all equal",
        )
    });

    // ----- the tool's own tests --------------------------------------------------------------

    t.check(
        "--test --login (every mechanism is CKF_HW: no --allow-sw needed)",
        || {
            let r = tool.run(&["--test", "--login", "--pin", USER_PIN]);
            assert_builtin_test_clean(&r);
            r.stdout_has("all 4 signature functions seem to work")
                .lacks("Signatures: not implemented");
            Ok(())
        },
    );
    t.check("--test --login --allow-sw", || {
        let r = tool.run(&["--test", "--login", "--pin", USER_PIN, "--allow-sw"]);
        assert_builtin_test_clean(&r);
        r.stdout_has("SHA256-RSA-PKCS: OK");
        Ok(())
    });
    t.check(
        "--test-ec --session-rw generates, signs with and deletes an EC key",
        || {
            tool.run(&[
                "--test-ec",
                "--session-rw",
                "--login",
                "--pin",
                USER_PIN,
                "--id",
                "0c",
                "--key-type",
                "EC:prime256v1",
            ])
            .ok()
            .stdout_has("*** Generating EC key pair ***")
            .stdout_has("*** Doing a signature ***")
            .stdout_has("*** Deleting the private and the public key again ***")
            .stdout_has("==> OK")
            .lacks("error:");
            tool.user(&["--list-objects"]).ok().lacks("ID:         0c");
            Ok(())
        },
    );
    t.check(
        "--test-fork: C_Initialize in a forked child, then the built-in test",
        || {
            tool.run(&["--test-fork"])
                .ok()
                .stdout_has("*** Calling C_Initialize in forked child process ***")
                .lacks("Child process exited")
                .lacks("C_Initialize in child");
            let r = tool.run(&["--test-fork", "--test", "--login", "--pin", USER_PIN]);
            r.stdout_has("*** Calling C_Initialize in forked child process ***")
                .lacks("Child process exited");
            assert_builtin_test_clean(&r);
            Ok(())
        },
    );
    // `--test-threads` (opensc 0.23): each argument starts a thread running 2-character
    // commands: IN = C_Initialize(NULL), IL = C_Initialize with CKF_OS_LOCKING_OK, GI =
    // C_GetInfo, SL = C_GetSlotList, Tn = C_GetTokenInfo of slot index n of the list the
    // thread's own SL fetched. The main thread calls C_Initialize too and then runs the
    // built-in test while the threads run.
    let threads = [
        "IN:GI:SL:T0",
        "IL:GI:SL:T0:GI:SL:T0",
        "IL:SL:T0:GI",
        "IN:SL:GI:T0",
        "IL:SL:T0:T0:T0:GI",
    ];
    for round in 0..4 {
        let locking = round % 2 == 1;
        t.check(
            &format!(
                "--test-threads (round {} of 4): five threads and the built-in test{}",
                round + 1,
                if locking { ", --use-locking" } else { "" }
            ),
            || {
                let mut args: Vec<&str> = Vec::new();
                for th in &threads {
                    args.extend_from_slice(&["--test-threads", th]);
                }
                args.extend_from_slice(&["--test", "--login", "--pin", USER_PIN]);
                if locking {
                    args.push("--use-locking");
                }
                let r = tool.run(&args);
                assert_builtin_test_clean(&r);
                r.stderr_has("test_threads all threads have ended with CKR_OK")
                    .lacks("some errors")
                    .lacks("Unknown test");
                for i in 0..threads.len() {
                    r.stderr_has(&format!("Test thread {i} returning rv = 0"));
                }
                ensure(
                    r.stderr
                        .matches("C_GetTokenInfo from slot_index 0 using show_token")
                        .count()
                        == 8,
                    format!("every T0 ran{r}"),
                )?;
                // Exactly one of the concurrent C_Initialize calls (five threads and main) wins.
                let results: Vec<&str> = r
                    .stderr
                    .lines()
                    .filter(|l| {
                        l.contains("C_Initialize") && (l.contains("returned") || l.contains(" rv:"))
                    })
                    .collect();
                ensure(
                    results.len() == threads.len() + 1,
                    format!("every C_Initialize reported{r}"),
                )?;
                let ok = results.iter().filter(|l| l.ends_with("CKR_OK")).count();
                let already = results
                    .iter()
                    .filter(|l| l.ends_with("CKR_CRYPTOKI_ALREADY_INITIALIZED"))
                    .count();
                ensure(
                    (ok, already) == (1, threads.len()),
                    format!("one C_Initialize succeeds, the rest are told it is done{r}"),
                )
            },
        );
    }

    eprintln!("  ({:.1} s)", started.elapsed().as_secs_f64());
    t.finish();
}

#[test]
fn interop_pkcs11_tool_embedded() {
    suite(Kind::Embedded);
}

#[test]
fn interop_pkcs11_tool_cluster() {
    suite(Kind::Cluster);
}

#[test]
fn interop_pkcs11_tool_softhsm() {
    suite(Kind::SoftHsm);
}

#[test]
fn interop_pkcs11_tool_mixed() {
    suite(Kind::Mixed);
}
