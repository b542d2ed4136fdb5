//! Digests the engine computes itself, on `aws-lc-rs` directly: `C_Digest*`, and the hash of a
//! hash-and-sign mechanism (`CKM_SHA256_RSA_PKCS`, ...) as multi-part data streams in, so a
//! member is handed only the digest ([`hsmpool_member::types::SignInput::Prehashed`]).
//! SHA3-224, which `aws-lc-rs` does not expose, is [`crate::sha3`]'s sponge.

use aws_lc_rs::digest;
use cryptoki_sys::*;
use hsmpool_member::mechanism::Hash;

use crate::error::{Error, Result};
use crate::sha3;

/// The `aws-lc-rs` algorithm of a SHA-1/SHA-2 hash.
fn alg(h: Hash) -> &'static digest::Algorithm {
    match h {
        Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        Hash::Sha224 => &digest::SHA224,
        Hash::Sha256 => &digest::SHA256,
        Hash::Sha384 => &digest::SHA384,
        Hash::Sha512 => &digest::SHA512,
    }
}

/// The digest of `data` with `CKM_SHA_1`, `CKM_SHA224`, `CKM_SHA256`, `CKM_SHA384`,
/// `CKM_SHA512`, `CKM_SHA3_224`, `CKM_SHA3_256`, `CKM_SHA3_384` or `CKM_SHA3_512` (else
/// `CKR_MECHANISM_INVALID`).
pub fn digest(mech: CK_MECHANISM_TYPE, data: &[u8]) -> Result<Vec<u8>> {
    let mut ctx = DigestCtx::new(mech)?;
    ctx.update(data);
    Ok(ctx.finish())
}

/// The `aws-lc-rs` SHA-3 digest of a `CKM_SHA3_*` mechanism (SHA3-224 is [`crate::sha3`]'s).
fn sha3_alg(mech: CK_MECHANISM_TYPE) -> Option<&'static digest::Algorithm> {
    match mech {
        CKM_SHA3_256 => Some(&digest::SHA3_256),
        CKM_SHA3_384 => Some(&digest::SHA3_384),
        CKM_SHA3_512 => Some(&digest::SHA3_512),
        _ => None,
    }
}

/// A streaming digest (`C_DigestInit` / `C_DigestUpdate` / `C_DigestFinal`); cloning it forks
/// the running state.
#[derive(Clone)]
pub struct DigestCtx(DigestState);

/// The running state of a [`DigestCtx`].
#[derive(Clone)]
enum DigestState {
    /// SHA-1, SHA-2, SHA3-256/384/512 on aws-lc-rs.
    Lc(digest::Context),
    /// SHA3-224.
    Sha3(sha3::Sha3),
}

impl std::fmt::Debug for DigestCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            DigestState::Lc(c) => write!(f, "DigestCtx({:?})", c.algorithm()),
            DigestState::Sha3(_) => write!(f, "DigestCtx(SHA3-224)"),
        }
    }
}

impl DigestCtx {
    /// Starts a digest with a `CKM_SHA*` or `CKM_SHA3_*` mechanism (else
    /// `CKR_MECHANISM_INVALID`).
    pub fn new(mech: CK_MECHANISM_TYPE) -> Result<Self> {
        if mech == CKM_SHA3_224 {
            return Ok(DigestCtx(DigestState::Sha3(sha3::Sha3::sha3_224())));
        }
        let alg = match Hash::from_ckm(mech) {
            Some(h) => alg(h),
            None => sha3_alg(mech).ok_or(Error::MechanismInvalid)?,
        };
        Ok(DigestCtx(DigestState::Lc(digest::Context::new(alg))))
    }

    /// Feeds more data.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            DigestState::Lc(c) => c.update(data),
            DigestState::Sha3(c) => c.update(data),
        }
    }

    /// Finishes and returns the digest.
    pub fn finish(self) -> Vec<u8> {
        match self.0 {
            DigestState::Lc(c) => c.finish().as_ref().to_vec(),
            DigestState::Sha3(c) => c.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn digest_ctx_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<DigestCtx>();
    }

    #[test]
    fn digests_match_known_answers() {
        assert_eq!(
            digest(CKM_SHA256, b"abc").unwrap(),
            hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            digest(CKM_SHA_1, b"abc").unwrap(),
            hex("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        for h in Hash::ALL {
            let mut ctx = DigestCtx::new(h.ckm()).unwrap();
            ctx.update(b"a");
            let fork = ctx.clone();
            ctx.update(b"bc");
            assert_eq!(ctx.clone().finish().len(), h.len());
            assert_eq!(ctx.finish(), digest(h.ckm(), b"abc").unwrap());
            assert_eq!(fork.finish(), digest(h.ckm(), b"a").unwrap());
        }
        assert_eq!(digest(CKM_MD5, b"abc"), Err(Error::MechanismInvalid));
        assert!(DigestCtx::new(CKM_SHA256_HMAC).is_err());
    }

    #[test]
    fn sha3_known_answers() {
        // FIPS 202 "abc" answers (checked with Python's hashlib).
        for (mech, abc) in [
            (CKM_SHA3_224, "e642824c3f8cf24ad09234ee7d3c766fc9a3a5168d0c94ad73b46fdf"),
            (
                CKM_SHA3_256,
                "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532",
            ),
            (
                CKM_SHA3_384,
                "ec01498288516fc926459f58e2c6ad8df9b473cb0fc08c2596da7cf0e49be4b298d88cea927ac7f539f1edf228376d25",
            ),
            (
                CKM_SHA3_512,
                "b751850b1a57168a5693cd924b6b096e08f621827444f70d884f5d0240d2712e10e116e9192af3c91a7ec57647e3934057340b4cf408d5a56592f8274eec53f0",
            ),
        ] {
            assert_eq!(digest(mech, b"abc"), Ok(hex(abc)));
            let mut ctx = DigestCtx::new(mech).unwrap();
            assert_eq!(ctx.clone().finish().len(), abc.len() / 2);
            ctx.update(b"a");
            let fork = ctx.clone();
            ctx.update(b"bc");
            assert_eq!(ctx.finish(), hex(abc));
            let mut fork = fork;
            fork.update(b"bc");
            assert_eq!(fork.finish(), hex(abc));
        }
        // SHA3-224 around its 144-byte rate (bytes i % 251; answers from hashlib).
        for (n, want) in [
            (
                0usize,
                "6b4e03423667dbb73b6e15454f0eb1abd4597f9a1b078e3f5b5a6bc7",
            ),
            (
                1,
                "bdd5167212d2dc69665f5a8875ab87f23d5ce7849132f56371a19096",
            ),
            (
                143,
                "64d0e8a1be3cf30ef6727b30a6e428f7f068d44634c943d277ad8e7f",
            ),
            (
                144,
                "5be75e6a08f19913a1d8036c056cc4556b98dc90aeca3f2a0664dedc",
            ),
            (
                145,
                "90b861ac1b1598459ad8337afa9933ce2f1a6f972c57daf8fc2737e4",
            ),
            (
                288,
                "c31edb82e0debcac85099028f8dda66900e716217b7f30e003d611bc",
            ),
            (
                300,
                "4a233ea250626438f2a59fd5e08e3f957d43626104d572284c6ec112",
            ),
        ] {
            let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            assert_eq!(digest(CKM_SHA3_224, &data), Ok(hex(want)), "{n}");
            // Streaming in uneven pieces.
            let mut ctx = DigestCtx::new(CKM_SHA3_224).unwrap();
            for chunk in data.chunks(7) {
                ctx.update(chunk);
            }
            assert_eq!(ctx.finish(), hex(want));
        }
    }

    #[test]
    fn sha3_sponge_matches_aws_lc_at_other_rates() {
        use aws_lc_rs::digest as d;
        for (len, alg) in [(32, &d::SHA3_256), (48, &d::SHA3_384), (64, &d::SHA3_512)] {
            for n in [0usize, 1, 71, 72, 73, 103, 104, 105, 135, 136, 137, 500] {
                let data: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
                let mut s = crate::sha3::Sha3::new(len);
                s.update(&data);
                assert_eq!(s.finish(), d::digest(alg, &data).as_ref(), "{len} {n}");
            }
        }
        assert_eq!(
            digest(CKM_SHA3_224 + 100, b""),
            Err(Error::MechanismInvalid)
        );
        assert!(DigestCtx::new(CKM_MD5).is_err());
    }
}
