//! Interop with OpenSC's `pkcs11-tool` (Debian's opensc 0.23): every test runs the real tool as
//! a subprocess against the built module, over a fresh token in its own temp dir (`HSMPOOL_CONF`
//! names its config), and asserts on both the exit status and the output. Results the tool
//! produces (signatures, ciphertexts, MACs, digests) are also checked independently with
//! aws-lc-rs, so a module and a tool that agree on a wrong answer still fail.
//!
//! The tests fail (they do not skip) when `pkcs11-tool` is not installed.
//!
//! Notes on this opensc version, which the assertions take into account:
//! - `--verify` reports a bad signature by printing "Invalid signature" with exit status 0;
//! - `--encrypt` handles secret keys only (RSA encryption is done here with aws-lc-rs);
//! - `--test-threads` reports thread failures on stderr ("some errors") with exit status 0;
//! - `--test-ec` opens a read-only session unless `--session-rw` is given.

#[path = "../interop/run.rs"]
mod run;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aws_lc_rs::{digest, hmac, rsa, signature};
use hsmpool_tests::{module_path, require_tool, write_test_config};
use run::Run;

const SO_PIN: &str = "so-pin-4321";
const USER_PIN: &str = "user-pin-4321";
const TOKEN_LABEL: &str = "interop-token";
/// DER of the P-256 OID, as pkcs11-tool prints CKA_EC_PARAMS.
const P256_PARAMS_HEX: &str = "06082a8648ce3d030107";
/// pkcs11-tool runs quickly; a minute means the module hung.
const TIMEOUT: Duration = Duration::from_secs(120);

/// A fresh token in its own temp dir, and the means to run pkcs11-tool against it.
struct Token {
    dir: tempfile::TempDir,
    conf: PathBuf,
    tool: PathBuf,
    module: PathBuf,
}

impl Token {
    /// A fresh, uninitialised token.
    fn fresh() -> Token {
        let tool = require_tool("pkcs11-tool");
        let module = module_path();
        let dir = tempfile::tempdir().expect("a temp dir can be made");
        let conf = write_test_config(dir.path());
        Token {
            dir,
            conf,
            tool,
            module,
        }
    }

    /// A token with its SO PIN, label and user PIN set through pkcs11-tool.
    fn initialised() -> Token {
        let t = Token::fresh();
        t.run(&["--init-token", "--label", TOKEN_LABEL, "--so-pin", SO_PIN])
            .ok()
            .stdout_has("Token successfully initialized");
        t.run(&[
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
        t
    }

    /// `pkcs11-tool --module <module> args...`, with `HSMPOOL_CONF` set and module logging off
    /// (so stderr holds only what the tool prints).
    fn run(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(&self.tool);
        cmd.arg("--module").arg(&self.module).args(args);
        cmd.env("HSMPOOL_CONF", &self.conf)
            .env_remove("HSMPOOL_LOG");
        run::run(cmd, self.dir.path(), TIMEOUT)
    }

    /// As [`Token::run`], logged in as the user.
    fn run_user(&self, args: &[&str]) -> Run {
        let mut all = vec!["--login", "--pin", USER_PIN];
        all.extend_from_slice(args);
        self.run(&all)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a file in the temp dir; returns its path as a string for the command line.
    fn write(&self, name: &str, data: &[u8]) -> String {
        let p = self.path(name);
        std::fs::write(&p, data).expect("the temp dir is writable");
        p.to_str().expect("temp paths are UTF-8").to_owned()
    }

    fn file(&self, name: &str) -> String {
        self.path(name)
            .to_str()
            .expect("temp paths are UTF-8")
            .to_owned()
    }

    #[track_caller]
    fn read(&self, name: &str, run: &Run) -> Vec<u8> {
        std::fs::read(self.path(name))
            .unwrap_or_else(|e| panic!("{name} was not written: {e}{run}"))
    }

    /// Generate an RSA-2048 key pair with a label and id.
    fn gen_rsa(&self, label: &str, id: &str) -> Run {
        let r = self.run_user(&[
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--label",
            label,
            "--id",
            id,
        ]);
        r.ok()
            .stdout_has("Key pair generated:")
            .stdout_has("Private Key Object; RSA")
            .stdout_has("Public Key Object; RSA 2048 bits")
            .stdout_has(&format!("label:      {label}"))
            .stdout_has(&format!("ID:         {id}"));
        r
    }

    /// Generate an EC key pair on `curve` (a pkcs11-tool curve name for P-256).
    fn gen_ec(&self, curve: &str, label: &str, id: &str) -> Run {
        let key_type = format!("EC:{curve}");
        let r = self.run_user(&[
            "--keypairgen",
            "--key-type",
            &key_type,
            "--label",
            label,
            "--id",
            id,
        ]);
        r.ok()
            .stdout_has("Key pair generated:")
            .stdout_has("Private Key Object; EC")
            .stdout_has("Public Key Object; EC  EC_POINT 256 bits")
            .stdout_has(&format!("EC_PARAMS:  {P256_PARAMS_HEX}"))
            .stdout_has(&format!("label:      {label}"))
            .stdout_has(&format!("ID:         {id}"));
        r
    }

    /// The public key of `id` as DER SubjectPublicKeyInfo, through `--read-object`.
    fn read_public_key(&self, id: &str, name: &str) -> Vec<u8> {
        let out = self.file(name);
        let r = self.run(&["--read-object", "--type", "pubkey", "--id", id, "-o", &out]);
        r.ok();
        let der = self.read(name, &r);
        assert!(
            der.first() == Some(&0x30) && der.len() > 64,
            "not a DER SubjectPublicKeyInfo: {der:02x?}{r}"
        );
        der
    }
}

/// One DER TLV: (tag, contents, rest). Enough for SubjectPublicKeyInfo.
fn der_tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
    assert!(b.len() >= 2, "truncated DER");
    let (len, hdr) = match b[1] {
        n if n < 0x80 => (n as usize, 2),
        0x81 => (b[2] as usize, 3),
        0x82 => (((b[2] as usize) << 8) | b[3] as usize, 4),
        n => panic!("unsupported DER length byte {n:#x}"),
    };
    assert!(b.len() >= hdr + len, "truncated DER");
    (b[0], &b[hdr..hdr + len], &b[hdr + len..])
}

/// The subjectPublicKey BIT STRING's contents (an RSAPublicKey, or an EC point).
fn spki_public_key(spki: &[u8]) -> Vec<u8> {
    let (tag, seq, _) = der_tlv(spki);
    assert_eq!(tag, 0x30, "SubjectPublicKeyInfo is a SEQUENCE");
    let (tag, _alg, rest) = der_tlv(seq);
    assert_eq!(tag, 0x30, "AlgorithmIdentifier is a SEQUENCE");
    let (tag, bits, _) = der_tlv(rest);
    assert_eq!(tag, 0x03, "subjectPublicKey is a BIT STRING");
    assert_eq!(bits[0], 0, "no unused bits");
    bits[1..].to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const DATA: &[u8] = b"hsmpool pkcs11-tool interop: data to sign, 0123456789\n";

#[test]
fn show_info_and_slots() {
    let t = Token::fresh();
    t.run(&["--show-info"])
        .ok()
        .stdout_has("Cryptoki version 3.0")
        .stdout_has("Manufacturer     hsmpool");
    t.run(&["--list-slots"])
        .ok()
        .stdout_has("Slot 0 (0x0)")
        .stdout_has("token state:   uninitialized");
    t.run(&["--list-interfaces"]).ok().stdout_has("PKCS 11");
}

#[test]
fn init_token_and_init_pin() {
    let t = Token::fresh();
    t.run(&["--init-token", "--label", TOKEN_LABEL, "--so-pin", SO_PIN])
        .ok()
        .stdout_has("Token successfully initialized");
    t.run(&["--list-token-slots"])
        .ok()
        .stdout_has(&format!("token label        : {TOKEN_LABEL}"))
        .stdout_has("token initialized")
        .lacks("PIN initialized");
    t.run(&[
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
    t.run(&["--list-token-slots"])
        .ok()
        .stdout_has("PIN initialized")
        .stdout_has("login required");
    // The user PIN works, a wrong one is refused, the SO PIN is not the user PIN.
    t.run_user(&["--list-objects"]).ok();
    t.run(&["--login", "--pin", "not-the-pin", "--list-objects"])
        .failed()
        .stderr_has("CKR_PIN_INCORRECT");
    t.run(&["--login", "--pin", SO_PIN, "--list-objects"])
        .failed()
        .stderr_has("CKR_PIN_INCORRECT");
    // Change the user PIN and log in with the new one.
    t.run(&[
        "--change-pin",
        "--login",
        "--pin",
        USER_PIN,
        "--new-pin",
        "new-user-pin-1",
    ])
    .ok()
    .stdout_has("PIN successfully changed");
    t.run(&["--login", "--pin", "new-user-pin-1", "--list-objects"])
        .ok();
    t.run_user(&["--list-objects"])
        .failed()
        .stderr_has("CKR_PIN_INCORRECT");
}

#[test]
fn list_mechanisms() {
    let t = Token::initialised();
    let r = t.run(&["--list-mechanisms"]);
    r.ok().stdout_has("Supported mechanisms:");
    for m in [
        "RSA-PKCS-KEY-PAIR-GEN",
        "ECDSA-KEY-PAIR-GEN",
        "AES-KEY-GEN",
        "GENERIC-SECRET-KEY-GEN",
        "RSA-PKCS,",
        "SHA256-RSA-PKCS,",
        "SHA256-RSA-PKCS-PSS,",
        "RSA-PKCS-OAEP,",
        "ECDSA,",
        "ECDSA-SHA256,",
        "AES-CBC,",
        "AES-CBC-PAD,",
        "AES-GCM,",
        "SHA256-HMAC,",
        "SHA256, digest",
    ] {
        r.stdout_has(m);
    }
}

#[test]
fn keygen_rsa_ec_aes_and_list_objects() {
    let t = Token::initialised();
    t.gen_rsa("rsa-key", "01");
    t.gen_ec("prime256v1", "ec-key", "02");
    t.gen_ec("secp256r1", "ec-key-2", "04");
    t.run_user(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "aes-key",
        "--id",
        "03",
    ])
    .ok()
    .stdout_has("Key generated:")
    .stdout_has("Secret Key Object; AES length 32")
    .stdout_has("label:      aes-key")
    .stdout_has("ID:         03");

    let r = t.run_user(&["--list-objects"]);
    r.ok();
    for s in [
        "Private Key Object; RSA",
        "Public Key Object; RSA 2048 bits",
        "Private Key Object; EC",
        "Public Key Object; EC  EC_POINT 256 bits",
        "Secret Key Object; AES length 32",
        "label:      rsa-key",
        "label:      ec-key",
        "label:      ec-key-2",
        "label:      aes-key",
        "ID:         01",
        "ID:         02",
        "ID:         03",
        "ID:         04",
        "sensitive, always sensitive, never extractable, local",
    ] {
        r.stdout_has(s);
    }
    assert_eq!(
        r.stdout.matches("Private Key Object").count(),
        3,
        "three private keys{r}"
    );
    assert_eq!(
        r.stdout.matches("Public Key Object").count(),
        3,
        "three public keys{r}"
    );
    assert_eq!(
        r.stdout.matches("Secret Key Object").count(),
        1,
        "one secret key{r}"
    );

    // Without a login the private keys (CKA_PRIVATE) are hidden, the public ones are not.
    let r = t.run(&["--list-objects"]);
    r.ok().lacks("Private Key Object");
    assert_eq!(
        r.stdout.matches("Public Key Object").count(),
        3,
        "three public keys{r}"
    );

    // --type filters; deleting an object removes it.
    let r = t.run_user(&["--list-objects", "--type", "privkey"]);
    r.ok().lacks("Public Key Object").lacks("Secret Key Object");
    assert_eq!(
        r.stdout.matches("Private Key Object").count(),
        3,
        "three private keys{r}"
    );
    t.run_user(&["--delete-object", "--type", "pubkey", "--id", "04"])
        .ok();
    let r = t.run_user(&["--list-objects", "--type", "pubkey"]);
    r.ok().lacks("ID:         04");
    assert_eq!(
        r.stdout.matches("Public Key Object").count(),
        2,
        "two public keys left{r}"
    );
}

#[test]
fn rsa_sha256_pkcs_sign_verify() {
    let t = Token::initialised();
    t.gen_rsa("rsa-key", "01");
    let data = t.write("data.txt", DATA);
    let sig = t.file("rsa.sig");
    let r = t.run_user(&[
        "--sign",
        "--mechanism",
        "SHA256-RSA-PKCS",
        "--id",
        "01",
        "-i",
        &data,
        "-o",
        &sig,
    ]);
    r.ok()
        .stderr_has("Using signature algorithm SHA256-RSA-PKCS");
    let sig_bytes = t.read("rsa.sig", &r);
    assert_eq!(
        sig_bytes.len(),
        256,
        "an RSA-2048 signature is 256 bytes{r}"
    );

    t.run_user(&[
        "--verify",
        "--mechanism",
        "SHA256-RSA-PKCS",
        "--id",
        "01",
        "-i",
        &data,
        "--signature-file",
        &sig,
    ])
    .ok()
    .stdout_has("Signature is valid")
    .lacks("Invalid signature");

    // A corrupted signature: this opensc prints "Invalid signature" (exit status 0).
    let mut bad = sig_bytes.clone();
    bad[100] ^= 0x01;
    let bad = t.write("bad.sig", &bad);
    t.run_user(&[
        "--verify",
        "--mechanism",
        "SHA256-RSA-PKCS",
        "--id",
        "01",
        "-i",
        &data,
        "--signature-file",
        &bad,
    ])
    .stdout_has("Invalid signature")
    .lacks("Signature is valid");

    // Independently: the exported public key verifies the signature with aws-lc-rs.
    let spki = t.read_public_key("01", "rsa_pub.der");
    let rsa_pub = spki_public_key(&spki);
    signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &rsa_pub)
        .verify(DATA, &sig_bytes)
        .unwrap_or_else(|_| panic!("aws-lc-rs rejects the module's SHA256-RSA-PKCS signature{r}"));
}

#[test]
fn rsa_pss_sign_verify() {
    let t = Token::initialised();
    t.gen_rsa("rsa-key", "01");
    let data = t.write("data.txt", DATA);
    let sig = t.file("pss.sig");
    let r = t.run_user(&[
        "--sign",
        "--mechanism",
        "SHA256-RSA-PKCS-PSS",
        "--id",
        "01",
        "-i",
        &data,
        "-o",
        &sig,
    ]);
    r.ok()
        .stderr_has("PSS parameters: hashAlg=SHA256, mgf=MGF1-SHA256, salt_len=32 B");
    let sig_bytes = t.read("pss.sig", &r);
    assert_eq!(sig_bytes.len(), 256, "{r}");
    t.run_user(&[
        "--verify",
        "--mechanism",
        "SHA256-RSA-PKCS-PSS",
        "--id",
        "01",
        "-i",
        &data,
        "--signature-file",
        &sig,
    ])
    .ok()
    .stdout_has("Signature is valid");
    let rsa_pub = spki_public_key(&t.read_public_key("01", "rsa_pub.der"));
    signature::UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, &rsa_pub)
        .verify(DATA, &sig_bytes)
        .unwrap_or_else(|_| {
            panic!("aws-lc-rs rejects the module's SHA256-RSA-PKCS-PSS signature{r}")
        });
}

#[test]
fn rsa_decrypt_pkcs1_and_oaep() {
    let t = Token::initialised();
    t.gen_rsa("rsa-key", "01");
    let spki = t.read_public_key("01", "rsa_pub.der");
    let key =
        || rsa::PublicEncryptingKey::from_der(&spki).expect("the exported RSA public key parses");
    let plain = b"secret message for the module to decrypt";

    // PKCS #1 v1.5 (this opensc's --encrypt takes secret keys only, so encrypt with aws-lc-rs).
    let pkcs1 = rsa::Pkcs1PublicEncryptingKey::new(key()).expect("a PKCS #1 key");
    let mut ct = vec![0u8; pkcs1.ciphertext_size()];
    let ct = pkcs1
        .encrypt(plain, &mut ct)
        .expect("aws-lc-rs encrypts")
        .to_vec();
    let ct = t.write("pkcs1.bin", &ct);
    let out = t.file("pkcs1.out");
    let r = t.run_user(&[
        "--decrypt",
        "--mechanism",
        "RSA-PKCS",
        "--id",
        "01",
        "-i",
        &ct,
        "-o",
        &out,
    ]);
    r.ok();
    assert_eq!(t.read("pkcs1.out", &r), plain, "RSA-PKCS decryption{r}");

    // OAEP with SHA-256 and MGF1-SHA256.
    let oaep = rsa::OaepPublicEncryptingKey::new(key()).expect("an OAEP key");
    let mut ct = vec![0u8; oaep.ciphertext_size()];
    let ct = oaep
        .encrypt(&rsa::OAEP_SHA256_MGF1SHA256, plain, &mut ct, None)
        .expect("aws-lc-rs encrypts")
        .to_vec();
    let ct = t.write("oaep.bin", &ct);
    let out = t.file("oaep.out");
    let r = t.run_user(&[
        "--decrypt",
        "--mechanism",
        "RSA-PKCS-OAEP",
        "--hash-algorithm",
        "SHA256",
        "--mgf",
        "MGF1-SHA256",
        "--id",
        "01",
        "-i",
        &ct,
        "-o",
        &out,
    ]);
    r.ok();
    assert_eq!(t.read("oaep.out", &r), plain, "RSA-PKCS-OAEP decryption{r}");
}

#[test]
fn ecdsa_sha256_sign_verify() {
    let t = Token::initialised();
    t.gen_ec("prime256v1", "ec-key", "02");
    let data = t.write("data.txt", DATA);
    let spki = t.read_public_key("02", "ec_pub.der");

    // Default ("rs") format: r || s, 64 bytes.
    let sig = t.file("ec.sig");
    let r = t.run_user(&[
        "--sign",
        "--mechanism",
        "ECDSA-SHA256",
        "--id",
        "02",
        "-i",
        &data,
        "-o",
        &sig,
    ]);
    r.ok().stderr_has("Using signature algorithm ECDSA-SHA256");
    let raw = t.read("ec.sig", &r);
    assert_eq!(raw.len(), 64, "a P-256 signature is 64 bytes (r || s){r}");
    t.run_user(&[
        "--verify",
        "--mechanism",
        "ECDSA-SHA256",
        "--id",
        "02",
        "-i",
        &data,
        "--signature-file",
        &sig,
    ])
    .ok()
    .stdout_has("Signature is valid");
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &spki)
        .verify(DATA, &raw)
        .unwrap_or_else(|_| panic!("aws-lc-rs rejects the module's ECDSA-SHA256 signature{r}"));

    let mut bad = raw.clone();
    bad[40] ^= 0x10;
    let bad = t.write("bad.sig", &bad);
    t.run_user(&[
        "--verify",
        "--mechanism",
        "ECDSA-SHA256",
        "--id",
        "02",
        "-i",
        &data,
        "--signature-file",
        &bad,
    ])
    .stdout_has("Invalid signature")
    .lacks("Signature is valid");

    // DER ("openssl") format.
    let der = t.file("ec.der");
    let r = t.run_user(&[
        "--sign",
        "--mechanism",
        "ECDSA-SHA256",
        "--id",
        "02",
        "-i",
        &data,
        "-o",
        &der,
        "--signature-format",
        "openssl",
    ]);
    r.ok();
    let der_bytes = t.read("ec.der", &r);
    assert_eq!(der_bytes[0], 0x30, "a DER ECDSA-Sig-Value{r}");
    t.run_user(&[
        "--verify",
        "--mechanism",
        "ECDSA-SHA256",
        "--id",
        "02",
        "-i",
        &data,
        "--signature-file",
        &der,
        "--signature-format",
        "openssl",
    ])
    .ok()
    .stdout_has("Signature is valid");
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &spki)
        .verify(DATA, &der_bytes)
        .unwrap_or_else(|_| panic!("aws-lc-rs rejects the module's DER ECDSA-SHA256 signature{r}"));

    // Raw ECDSA over a SHA-256 digest made outside the module verifies the same way.
    let d = digest::digest(&digest::SHA256, DATA);
    let dfile = t.write("digest.bin", d.as_ref());
    let sig = t.file("ecraw.sig");
    let r = t.run_user(&[
        "--sign",
        "--mechanism",
        "ECDSA",
        "--id",
        "02",
        "-i",
        &dfile,
        "-o",
        &sig,
    ]);
    r.ok();
    let raw = t.read("ecraw.sig", &r);
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &spki)
        .verify(DATA, &raw)
        .unwrap_or_else(|_| {
            panic!("aws-lc-rs rejects the module's raw ECDSA signature over the digest{r}")
        });
}

#[test]
fn aes_cbc_pad_and_cbc_encrypt_decrypt() {
    use aws_lc_rs::cipher::{
        DecryptingKey, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey, AES_256,
    };
    use aws_lc_rs::iv::FixedLength;

    let t = Token::initialised();
    // Extractable, so the result can be checked independently.
    t.run_user(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "aes-key",
        "--id",
        "03",
        "--extractable",
    ])
    .ok()
    .stdout_has("Secret Key Object; AES length 32");
    let keyfile = t.file("aes.key");
    let r = t.run_user(&[
        "--read-object",
        "--type",
        "secrkey",
        "--id",
        "03",
        "-o",
        &keyfile,
    ]);
    r.ok();
    let key = t.read("aes.key", &r);
    assert_eq!(key.len(), 32, "{r}");
    let iv: [u8; 16] = *b"0123456789abcdef";
    let iv_hex = hex(&iv);

    // AES-CBC-PAD: any length.
    let data = t.write("data.txt", DATA);
    let ct = t.file("cbcpad.bin");
    let r = t.run_user(&[
        "--encrypt",
        "--mechanism",
        "AES-CBC-PAD",
        "--id",
        "03",
        "--iv",
        &iv_hex,
        "-i",
        &data,
        "-o",
        &ct,
    ]);
    r.ok().stderr_has("Using encrypt algorithm AES-CBC-PAD");
    let ct_bytes = t.read("cbcpad.bin", &r);
    assert_eq!(
        ct_bytes.len(),
        (DATA.len() / 16 + 1) * 16,
        "PKCS #7 padding{r}"
    );
    let mut buf = ct_bytes.clone();
    let dec = PaddedBlockDecryptingKey::cbc_pkcs7(
        UnboundCipherKey::new(&AES_256, &key).expect("an AES-256 key"),
    )
    .expect("a CBC key");
    let plain = dec
        .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
        .unwrap_or_else(|_| panic!("aws-lc-rs cannot decrypt the module's AES-CBC-PAD output{r}"));
    assert_eq!(
        plain, DATA,
        "AES-CBC-PAD ciphertext decrypts to the data with aws-lc-rs{r}"
    );
    let out = t.file("cbcpad.out");
    let r = t.run_user(&[
        "--decrypt",
        "--mechanism",
        "AES-CBC-PAD",
        "--id",
        "03",
        "--iv",
        &iv_hex,
        "-i",
        &ct,
        "-o",
        &out,
    ]);
    r.ok();
    assert_eq!(t.read("cbcpad.out", &r), DATA, "AES-CBC-PAD round trip{r}");

    // AES-CBC: whole blocks only.
    let blocks: Vec<u8> = (0u8..64).collect();
    let data = t.write("blocks.bin", &blocks);
    let ct = t.file("cbc.bin");
    let r = t.run_user(&[
        "--encrypt",
        "--mechanism",
        "AES-CBC",
        "--id",
        "03",
        "--iv",
        &iv_hex,
        "-i",
        &data,
        "-o",
        &ct,
    ]);
    r.ok();
    let ct_bytes = t.read("cbc.bin", &r);
    assert_eq!(ct_bytes.len(), 64, "no padding{r}");
    let mut buf = ct_bytes.clone();
    let dec = DecryptingKey::cbc(UnboundCipherKey::new(&AES_256, &key).expect("an AES-256 key"))
        .expect("a CBC key");
    let plain = dec
        .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
        .unwrap_or_else(|_| panic!("aws-lc-rs cannot decrypt the module's AES-CBC output{r}"));
    assert_eq!(
        plain,
        &blocks[..],
        "AES-CBC ciphertext decrypts with aws-lc-rs{r}"
    );
    let out = t.file("cbc.out");
    let r = t.run_user(&[
        "--decrypt",
        "--mechanism",
        "AES-CBC",
        "--id",
        "03",
        "--iv",
        &iv_hex,
        "-i",
        &ct,
        "-o",
        &out,
    ]);
    r.ok();
    assert_eq!(t.read("cbc.out", &r), blocks, "AES-CBC round trip{r}");
}

#[test]
fn hmac_sha256_matches_aws_lc() {
    let t = Token::initialised();
    t.run_user(&[
        "--keygen",
        "--key-type",
        "GENERIC:32",
        "--label",
        "mac-key",
        "--id",
        "05",
        "--extractable",
    ])
    .ok()
    .stdout_has("Secret Key Object; Generic secret length 32");
    let keyfile = t.file("mac.key");
    let r = t.run_user(&[
        "--read-object",
        "--type",
        "secrkey",
        "--id",
        "05",
        "-o",
        &keyfile,
    ]);
    r.ok();
    let key = t.read("mac.key", &r);
    assert_eq!(key.len(), 32, "{r}");
    let data = t.write("data.txt", DATA);
    let mac = t.file("mac.bin");
    let r = t.run_user(&[
        "--sign",
        "--mechanism",
        "SHA256-HMAC",
        "--id",
        "05",
        "-i",
        &data,
        "-o",
        &mac,
    ]);
    r.ok();
    let want = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), DATA);
    assert_eq!(
        hex(&t.read("mac.bin", &r)),
        hex(want.as_ref()),
        "HMAC-SHA256 agrees with aws-lc-rs{r}"
    );
}

#[test]
fn hash_and_generate_random() {
    let t = Token::initialised();
    let data = t.write("data.txt", DATA);
    for (mech, alg) in [
        ("SHA256", &digest::SHA256),
        ("SHA384", &digest::SHA384),
        ("SHA-1", &digest::SHA1_FOR_LEGACY_USE_ONLY),
    ] {
        let out = t.file("digest.bin");
        let r = t.run(&["--hash", "--mechanism", mech, "-i", &data, "-o", &out]);
        r.ok();
        let want = digest::digest(alg, DATA);
        assert_eq!(
            hex(&t.read("digest.bin", &r)),
            hex(want.as_ref()),
            "{mech} digest{r}"
        );
    }
    let out = t.file("random.bin");
    let r = t.run(&["--generate-random", "64", "-o", &out]);
    r.ok();
    let rnd = t.read("random.bin", &r);
    assert_eq!(rnd.len(), 64, "{r}");
    assert!(
        rnd.iter().any(|&b| b != rnd[0]),
        "64 random bytes are not all equal{r}"
    );
}

/// Keys for the built-in tests to find.
fn token_with_keys() -> Token {
    let t = Token::initialised();
    t.gen_rsa("rsa-key", "01");
    t.gen_ec("prime256v1", "ec-key", "02");
    t
}

#[track_caller]
fn assert_builtin_test_clean(r: &Run) {
    r.ok()
        .stdout_has("No errors")
        .stdout_has("C_SeedRandom() and C_GenerateRandom():")
        .stdout_has("Digests:")
        .stdout_has("Verify (currently only for RSA)")
        .stdout_has("Decryption (currently only for RSA)")
        .stdout_has("(rsa-key)")
        .stdout_has("RSA-PKCS: OK")
        .stdout_has("RSA-PKCS-OAEP")
        .lacks("ERR")
        .lacks("error:")
        .lacks("failed")
        .lacks("Aborting");
    // pkcs11-tool prints "  <mech>: OK" per mechanism it tried; none may be anything else.
    let errors = r
        .all()
        .lines()
        .filter(|l| l.contains(" errors") && !l.contains("No errors"))
        .count();
    assert_eq!(errors, 0, "no error summaries{r}");
}

/// Every mechanism says CKF_HW (the HSM performs it), so pkcs11-tool runs its signature tests
/// without `--allow-sw`.
#[test]
fn builtin_test_suite() {
    let t = token_with_keys();
    let r = t.run(&["--test", "--login", "--pin", USER_PIN]);
    assert_builtin_test_clean(&r);
    r.stdout_has("all 4 signature functions seem to work")
        .lacks("Signatures: not implemented");
}

/// And with `--allow-sw` too.
#[test]
fn builtin_test_suite_with_signatures() {
    let t = token_with_keys();
    let r = t.run(&["--test", "--login", "--pin", USER_PIN, "--allow-sw"]);
    assert_builtin_test_clean(&r);
    r.stdout_has("Signatures (currently only for RSA)")
        .stdout_has("all 4 signature functions seem to work")
        .stdout_has("SHA256-RSA-PKCS: OK")
        .lacks("Signatures: not implemented");
}

#[test]
fn builtin_test_ec() {
    let t = Token::initialised();
    let r = t.run(&[
        "--test-ec",
        "--session-rw",
        "--login",
        "--pin",
        USER_PIN,
        "--id",
        "09",
        "--key-type",
        "EC:prime256v1",
    ]);
    r.ok()
        .stdout_has("*** Generating EC key pair ***")
        .stdout_has("*** Doing a signature ***")
        .stdout_has("*** Deleting the private and the public key again ***")
        .stdout_has("==> OK")
        .lacks("error:");
    // The keys were deleted again.
    t.run_user(&["--list-objects"]).ok().lacks("ID:         09");
}

#[test]
fn test_fork() {
    let t = token_with_keys();
    t.run(&["--test-fork"])
        .ok()
        .stdout_has("*** Calling C_Initialize in forked child process ***")
        .lacks("Child process exited")
        .lacks("C_Initialize in child");
    // Fork first, then the whole built-in test in the parent.
    let r = t.run(&["--test-fork", "--test", "--login", "--pin", USER_PIN]);
    r.stdout_has("*** Calling C_Initialize in forked child process ***")
        .lacks("Child process exited");
    assert_builtin_test_clean(&r);
}

/// `--test-threads` (opensc 0.23): each argument starts a thread running 2-character commands:
/// IN = C_Initialize(NULL), IL = C_Initialize with CKF_OS_LOCKING_OK, Pn = pause n seconds,
/// GI = C_GetInfo, SL = C_GetSlotList, Tn = C_GetTokenInfo of slot index n (of the list the
/// thread's own SL fetched: a Tn before an SL fails in the tool itself). The main thread
/// calls C_Initialize as well and then does its own work (here the built-in test) while the
/// threads run. Thread failures only show on stderr. (No Pn: when a thread is still running at
/// the end, this pkcs11-tool sleeps a fixed 30 seconds.)
#[test]
fn test_threads() {
    let t = token_with_keys();
    let threads = [
        "IN:GI:SL:T0",
        "IL:GI:SL:T0:GI:SL:T0",
        "IL:SL:T0:GI",
        "IN:SL:GI:T0",
        "IL:SL:T0:T0:T0:GI",
    ];
    for round in 0..5 {
        let mut args: Vec<&str> = Vec::new();
        for th in &threads {
            args.extend_from_slice(&["--test-threads", th]);
        }
        args.extend_from_slice(&["--test", "--login", "--pin", USER_PIN]);
        // The main thread's C_Initialize: NULL args, or CKF_OS_LOCKING_OK.
        if round % 2 == 1 {
            args.push("--use-locking");
        }
        let r = t.run(&args);
        assert_builtin_test_clean(&r);
        r.stderr_has("test_threads all threads have ended with CKR_OK")
            .lacks("some errors")
            .lacks("Unknown test");
        for i in 0..threads.len() {
            r.stderr_has(&format!("Test thread {i} returning rv = 0"));
        }
        assert_eq!(
            r.stderr
                .matches("C_GetTokenInfo from slot_index 0 using show_token")
                .count(),
            8,
            "every T0 ran (round {round}){r}"
        );
        // Exactly one of the concurrent C_Initialize calls (5 threads and main) wins; the others
        // get CKR_CRYPTOKI_ALREADY_INITIALIZED.
        let results: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| {
                l.contains("C_Initialize") && (l.contains("returned") || l.contains(" rv:"))
            })
            .collect();
        assert_eq!(
            results.len(),
            threads.len() + 1,
            "every C_Initialize reported (round {round}){r}"
        );
        let ok = results.iter().filter(|l| l.ends_with("CKR_OK")).count();
        let already = results
            .iter()
            .filter(|l| l.ends_with("CKR_CRYPTOKI_ALREADY_INITIALIZED"))
            .count();
        assert_eq!(
            (ok, already),
            (1, threads.len()),
            "one C_Initialize succeeds, the rest are told it is done (round {round}){r}"
        );
    }
}
