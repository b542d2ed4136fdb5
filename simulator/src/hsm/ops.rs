//! The cryptographic operations with a key: sign, verify, encrypt, decrypt; a secret key's
//! value for `C_DigestKey`; random bytes.

use cryptoki_sys::*;
use zeroize::Zeroizing;

use crate::crypto::{self, KeyMaterial};
use crate::error::{SimError, SimResult};
use crate::timing::OpClass;
use crate::types::{Mechanism, SignInput};

use super::common::rv;
use super::Hsm;

impl Hsm {
    /// Sign.
    pub fn sign(
        &self,
        sess: u64,
        mech: &Mechanism,
        key: u64,
        input: SignInput,
    ) -> SimResult<Vec<u8>> {
        self.fault_check()?; // fault hook
        let obj = self.usable(sess, key, CKA_SIGN, mech.mech)?;
        let k = Self::key_of(&obj)?;
        // timing hook
        let _timing = self.timed(|| (OpClass::from_sign(mech.mech, k.key_bits()), false));
        rv(crypto::sign(mech, k, input))
    }

    /// The length a signature will have.
    pub fn signature_len(&self, sess: u64, mech: &Mechanism, key: u64) -> SimResult<usize> {
        self.fault_check()?; // fault hook
        let obj = self.usable(sess, key, CKA_SIGN, mech.mech)?;
        rv(crypto::signature_len(mech, Self::key_of(&obj)?))
    }

    /// Verify.
    pub fn verify(
        &self,
        sess: u64,
        mech: &Mechanism,
        key: u64,
        input: SignInput,
        sig: &[u8],
    ) -> SimResult<()> {
        self.fault_check()?; // fault hook
        let obj = self.usable(sess, key, CKA_VERIFY, mech.mech)?;
        let k = Self::key_of(&obj)?;
        // timing hook
        let _timing = self.timed(|| (OpClass::from_verify(mech.mech, k.key_bits()), false));
        rv(crypto::verify(mech, k, input, sig))
    }

    /// Encrypt.
    pub fn encrypt(
        &self,
        sess: u64,
        mech: &Mechanism,
        key: u64,
        data: &[u8],
    ) -> SimResult<Vec<u8>> {
        self.fault_check()?; // fault hook
        let obj = self.usable(sess, key, CKA_ENCRYPT, mech.mech)?;
        let k = Self::key_of(&obj)?;
        // timing hook
        let _timing = self.timed(|| (OpClass::from_encrypt(mech.mech, k.key_bits()), false));
        rv(crypto::encrypt(mech, k, data))
    }

    /// Encrypt into `out` (see [`crypto::encrypt_into`]); returns the length written.
    pub fn encrypt_into(
        &self,
        sess: u64,
        mech: &Mechanism,
        key: u64,
        data: &[u8],
        out: &mut [u8],
    ) -> SimResult<usize> {
        self.fault_check()?; // fault hook
        let obj = self.usable(sess, key, CKA_ENCRYPT, mech.mech)?;
        let k = Self::key_of(&obj)?;
        // timing hook
        let _timing = self.timed(|| (OpClass::from_encrypt(mech.mech, k.key_bits()), false));
        rv(crypto::encrypt_into(mech, k, data, out))
    }

    /// Decrypt.
    pub fn decrypt(
        &self,
        sess: u64,
        mech: &Mechanism,
        key: u64,
        data: &[u8],
    ) -> SimResult<Zeroizing<Vec<u8>>> {
        self.fault_check()?; // fault hook
        let obj = self.usable(sess, key, CKA_DECRYPT, mech.mech)?;
        let k = Self::key_of(&obj)?;
        // timing hook
        let _timing = self.timed(|| (OpClass::from_decrypt(mech.mech, k.key_bits()), false));
        rv(crypto::decrypt(mech, k, data))
    }

    /// The value of a secret key, for `C_DigestKey` (which never returns it to the caller).
    pub fn secret_value_for_digest(&self, sess: u64, key: u64) -> SimResult<Zeroizing<Vec<u8>>> {
        self.fault_check()?; // fault hook
        let obj = self
            .get_visible(sess, key)
            .map_err(|_| SimError::Rv(CKR_KEY_HANDLE_INVALID))?;
        self.require_approval(sess, &obj, hsmpool_member::KeyService::Use)?;
        match obj.key.as_ref().map(|k| k.material()) {
            Some(KeyMaterial::Secret { value, .. }) => Ok(value.clone()),
            _ => Err(SimError::Rv(CKR_KEY_INDIGESTIBLE)),
        }
    }

    /// Random bytes.
    pub fn random(&self, out: &mut [u8]) -> SimResult<()> {
        self.fault_check()?; // fault hook
        let _timing = self.timed(|| (OpClass::Random, false)); // timing hook
        rv(crypto::random(out))
    }
}
