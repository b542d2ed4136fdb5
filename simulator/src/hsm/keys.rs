//! Making keys from keys or from nothing: generate a secret key or a key pair, wrap and
//! unwrap, derive (ECDH, HKDF, SP 800-108 counter KDF).

use std::collections::BTreeMap;
use std::sync::Arc;

use cryptoki_sys::*;
use zeroize::Zeroizing;

use crate::crypto::{self, Curve, KeyMaterial, LoadedKey};
use crate::error::{SimError, SimResult};
use crate::object::{self, find, find_ulong, Object, Origin};
use crate::timing::{self, OpClass};
use crate::types::cloudhsm::CKM_CLOUDHSM_SP800_108_COUNTER_KDF;
use crate::types::{Attr, MechParam, Mechanism};

use super::common::{bit_len, rv, strip_zeros};
use super::{Hsm, Role};

impl Hsm {
    fn generated_flags(attrs: &mut BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>) {
        let sensitive = attrs.get(&CKA_SENSITIVE).is_some_and(|v| v == &[1]);
        let extractable = attrs.get(&CKA_EXTRACTABLE).is_some_and(|v| v == &[1]);
        attrs.insert(CKA_ALWAYS_SENSITIVE, object::bool_bytes(sensitive));
        attrs.insert(CKA_NEVER_EXTRACTABLE, object::bool_bytes(!extractable));
    }

    fn check_class(
        template: &[Attr],
        class: CK_OBJECT_CLASS,
        key_type: CK_KEY_TYPE,
    ) -> SimResult<()> {
        if rv(find_ulong(template, CKA_CLASS))?.is_some_and(|c| c != class) {
            return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT));
        }
        if rv(find_ulong(template, CKA_KEY_TYPE))?.is_some_and(|k| k != key_type) {
            return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT));
        }
        Ok(())
    }

    /// `C_GenerateKey`: AES and generic secret keys.
    pub fn generate_key(&self, sess: u64, mech: &Mechanism, template: &[Attr]) -> SimResult<u64> {
        self.fault_check()?; // fault hook
                             // timing hook
        let _timing = self.timed(|| {
            (
                OpClass::KeyGenSymmetric,
                timing::token_in(template) == Some(true),
            )
        });
        let login = self.login_of(sess)?;
        if let Some(id) = self.already_made(template)? {
            return Ok(id);
        }
        let key_type = match mech.mech {
            CKM_AES_KEY_GEN => CKK_AES,
            CKM_GENERIC_SECRET_KEY_GEN => CKK_GENERIC_SECRET,
            _ => return Err(SimError::Rv(CKR_MECHANISM_INVALID)),
        };
        Self::check_class(template, CKO_SECRET_KEY, key_type)?;
        let len = rv(find_ulong(template, CKA_VALUE_LEN))?
            .ok_or(SimError::Rv(CKR_TEMPLATE_INCOMPLETE))?;
        let len = usize::try_from(len).map_err(|_| SimError::Rv(CKR_KEY_SIZE_RANGE))?;
        let ok = match key_type {
            CKK_AES => [16, 24, 32].contains(&len),
            _ => (1..=512).contains(&len),
        };
        if !ok {
            return Err(SimError::Rv(CKR_KEY_SIZE_RANGE));
        }
        let value = rv(crypto::generate_secret(len))?;
        let token_set = vec![
            (CKA_LOCAL, object::bool_bytes(true)),
            (CKA_KEY_GEN_MECHANISM, object::ulong_bytes(mech.mech)),
            (CKA_VALUE_LEN, object::ulong_bytes(len as CK_ULONG)),
        ];
        let mut t: Vec<Attr> = template
            .iter()
            .filter(|a| a.ty != CKA_VALUE_LEN)
            .cloned()
            .collect();
        t.retain(|a| a.ty != CKA_CLASS && a.ty != CKA_KEY_TYPE);
        let mut attrs = rv(object::apply_template(
            CKO_SECRET_KEY,
            Some(key_type),
            &t,
            Origin::Generate,
            Self::is_so(&login),
            token_set,
        ))?;
        Self::generated_flags(&mut attrs);
        let key = Arc::new(rv(LoadedKey::load(KeyMaterial::Secret {
            key_type,
            value,
        }))?);
        Ok(self
            .finish_new(
                sess,
                &login,
                CKO_SECRET_KEY,
                Some(key_type),
                attrs,
                Some(key),
            )?
            .id)
    }

    /// `C_GenerateKeyPair`: RSA and EC. Returns (public, private).
    pub fn generate_key_pair(
        &self,
        sess: u64,
        mech: &Mechanism,
        public: &[Attr],
        private: &[Attr],
    ) -> SimResult<(u64, u64)> {
        self.fault_check()?; // fault hook
                             // timing hook
        let _timing = self.timed(|| {
            let token = [public, private]
                .iter()
                .any(|t| timing::token_in(t) == Some(true));
            (OpClass::from_key_pair_template(mech.mech, public), token)
        });
        let login = self.login_of(sess)?;
        match (self.already_made(public)?, self.already_made(private)?) {
            (Some(p), Some(k)) => return Ok((p, k)),
            // Half of a pair from an attempt cut short: make the pair again, whole.
            (Some(half), None) | (None, Some(half)) => {
                let partial = self.objects.get(&half).map(|o| o.value().clone());
                if let Some(o) = partial {
                    self.remove(&o)?;
                }
            }
            (None, None) => {}
        }
        let is_so = Self::is_so(&login);
        let (key_type, pub_key, priv_key) = match mech.mech {
            CKM_RSA_PKCS_KEY_PAIR_GEN | CKM_RSA_X9_31_KEY_PAIR_GEN => {
                Self::check_class(public, CKO_PUBLIC_KEY, CKK_RSA)?;
                Self::check_class(private, CKO_PRIVATE_KEY, CKK_RSA)?;
                let bits = rv(find_ulong(public, CKA_MODULUS_BITS))?
                    .ok_or(SimError::Rv(CKR_TEMPLATE_INCOMPLETE))?;
                let bits = usize::try_from(bits).map_err(|_| SimError::Rv(CKR_KEY_SIZE_RANGE))?;
                let exp = find(public, CKA_PUBLIC_EXPONENT).map(|a| a.value.as_slice());
                let g = if mech.mech == CKM_RSA_X9_31_KEY_PAIR_GEN {
                    rv(crypto::generate_rsa_x931(bits, exp))?
                } else {
                    rv(crypto::generate_rsa(bits, exp))?
                };
                let pub_key = KeyMaterial::RsaPublic {
                    modulus: g.modulus,
                    public_exponent: g.public_exponent,
                };
                (CKK_RSA, pub_key, KeyMaterial::RsaPrivate { pkcs8: g.pkcs8 })
            }
            CKM_EC_KEY_PAIR_GEN => {
                Self::check_class(public, CKO_PUBLIC_KEY, CKK_EC)?;
                Self::check_class(private, CKO_PRIVATE_KEY, CKK_EC)?;
                let params =
                    find(public, CKA_EC_PARAMS).ok_or(SimError::Rv(CKR_TEMPLATE_INCOMPLETE))?;
                if find(private, CKA_EC_PARAMS).is_some_and(|a| a.value != params.value) {
                    return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT));
                }
                let curve = rv(Curve::from_ec_params(&params.value))?;
                let (pkcs8, point) = rv(crypto::generate_ec(curve))?;
                (
                    CKK_EC,
                    KeyMaterial::EcPublic { curve, point },
                    KeyMaterial::EcPrivate { curve, pkcs8 },
                )
            }
            CKM_EC_EDWARDS_KEY_PAIR_GEN => {
                Self::check_class(public, CKO_PUBLIC_KEY, CKK_EC_EDWARDS)?;
                Self::check_class(private, CKO_PRIVATE_KEY, CKK_EC_EDWARDS)?;
                let params =
                    find(public, CKA_EC_PARAMS).ok_or(SimError::Rv(CKR_TEMPLATE_INCOMPLETE))?;
                rv(crypto::ed25519_params(&params.value))?;
                let (seed, point) = rv(crypto::generate_ed25519())?;
                (
                    CKK_EC_EDWARDS,
                    KeyMaterial::EdPublic { point },
                    KeyMaterial::EdPrivate { seed },
                )
            }
            _ => return Err(SimError::Rv(CKR_MECHANISM_INVALID)),
        };
        let strip = |t: &[Attr]| -> Vec<Attr> {
            t.iter()
                .filter(|a| a.ty != CKA_CLASS && a.ty != CKA_KEY_TYPE)
                .cloned()
                .collect()
        };
        let pub_attrs = rv(object::apply_template(
            CKO_PUBLIC_KEY,
            Some(key_type),
            &strip(public),
            Origin::Generate,
            is_so,
            local_set(&pub_key_attrs(&pub_key), mech.mech),
        ))?;
        let mut priv_attrs = rv(object::apply_template(
            CKO_PRIVATE_KEY,
            Some(key_type),
            &strip(private),
            Origin::Generate,
            is_so,
            local_set(&priv_key_attrs(&pub_key), mech.mech),
        ))?;
        Self::generated_flags(&mut priv_attrs);
        let pub_loaded = Arc::new(rv(LoadedKey::load(pub_key))?);
        let priv_loaded = Arc::new(rv(LoadedKey::load(priv_key))?);
        // Both objects must be storable before either is stored.
        for attrs in [&pub_attrs, &priv_attrs] {
            Self::owner_for(&login, attrs.get(&CKA_PRIVATE).is_some_and(|v| v == &[1]))?;
        }
        let p = self.finish_new(
            sess,
            &login,
            CKO_PUBLIC_KEY,
            Some(key_type),
            pub_attrs,
            Some(pub_loaded),
        )?;
        match self.finish_new(
            sess,
            &login,
            CKO_PRIVATE_KEY,
            Some(key_type),
            priv_attrs,
            Some(priv_loaded),
        ) {
            Ok(k) => Ok((p.id, k.id)),
            Err(e) => {
                let _ = self.remove(&p);
                Err(e)
            }
        }
    }

    /// Whether a blob wrapped under `w` could be decrypted by a key in this HSM: `w` itself (a
    /// secret key that may decrypt), or, for a public key, any private key here with the same
    /// public value that may decrypt, whoever owns it and whatever its `CKA_ID` (matched by
    /// modulus and exponent, so a public key object made by hand for a token private key is
    /// caught too). The usage attributes of sensitive keys can only be turned off
    /// ([`object::modify`]), so a wrap allowed now cannot be decrypted later by turning
    /// `CKA_DECRYPT` on.
    fn could_decrypt_wrapped_by(&self, w: &Object) -> bool {
        match w.class {
            CKO_SECRET_KEY => w.flag(CKA_DECRYPT),
            CKO_PUBLIC_KEY => {
                let (Some(n), Some(e)) =
                    (w.attrs.get(&CKA_MODULUS), w.attrs.get(&CKA_PUBLIC_EXPONENT))
                else {
                    return false;
                };
                let (n, e) = (strip_zeros(n), strip_zeros(e));
                self.objects.iter().any(|o| {
                    o.class == CKO_PRIVATE_KEY
                        && o.flag(CKA_DECRYPT)
                        && o.attrs
                            .get(&CKA_MODULUS)
                            .is_some_and(|m| strip_zeros(m) == n)
                        && o.attrs
                            .get(&CKA_PUBLIC_EXPONENT)
                            .is_some_and(|x| strip_zeros(x) == e)
                })
            }
            _ => false,
        }
    }

    /// `C_WrapKey`: `key` (a secret key's value, or a private key's PKCS #8) encrypted under
    /// `wrapping`. The key must be extractable; a key with `CKA_WRAP_WITH_TRUSTED` only under a
    /// trusted wrapping key.
    pub fn wrap_key(
        &self,
        sess: u64,
        mech: &Mechanism,
        wrapping: u64,
        key: u64,
    ) -> SimResult<Vec<u8>> {
        self.fault_check()?; // fault hook
        let w = self
            .usable(sess, wrapping, CKA_WRAP, mech.mech)
            .map_err(|e| match e {
                SimError::Rv(CKR_KEY_HANDLE_INVALID) => {
                    SimError::Rv(CKR_WRAPPING_KEY_HANDLE_INVALID)
                }
                SimError::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED) => {
                    SimError::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED)
                }
                SimError::Rv(CKR_KEY_TYPE_INCONSISTENT) => {
                    SimError::Rv(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
                }
                e => e,
            })?;
        // timing hook
        let _timing = self.timed(|| {
            let bits = w.key.as_ref().map_or(0, |k| k.key_bits());
            (OpClass::from_encrypt(mech.mech, bits), false)
        });
        let k = self.get_visible(sess, key).map_err(|e| match e {
            SimError::Rv(CKR_OBJECT_HANDLE_INVALID) => SimError::Rv(CKR_KEY_HANDLE_INVALID),
            e => e,
        })?;
        // A key shared with this user is used, never carried out of the HSM by it.
        self.check_manage(sess, &self.login_of(sess)?, &k)?;
        let loaded = k
            .key
            .as_deref()
            .ok_or(SimError::Rv(CKR_KEY_NOT_WRAPPABLE))?;
        if !k.flag(CKA_EXTRACTABLE) {
            return Err(SimError::Rv(CKR_KEY_UNEXTRACTABLE));
        }
        if k.flag(CKA_WRAP_WITH_TRUSTED) && !w.flag(CKA_TRUSTED) {
            return Err(SimError::Rv(CKR_KEY_NOT_WRAPPABLE));
        }
        if let Some(t) = w.attrs.get(&CKA_WRAP_TEMPLATE).filter(|t| !t.is_empty()) {
            // The wrapping key's owner said which keys it may carry.
            let wanted =
                crate::types::decode_attr_array(t).ok_or(SimError::Rv(CKR_DEVICE_ERROR))?;
            if !k.matches(&wanted) {
                return Err(SimError::Rv(CKR_KEY_NOT_WRAPPABLE));
            }
        }
        if strength_bits(&w) < strength_bits(&k) {
            // A key is only as safe as the key it travels under.
            return Err(SimError::Rv(CKR_KEY_NOT_WRAPPABLE));
        }
        if k.flag(CKA_SENSITIVE) && self.could_decrypt_wrapped_by(&w) {
            // The wrap/decrypt attack: the blob would decrypt, in this token, to the sensitive
            // key in clear. Refused here, at the wrap, rather than in the key's template, so a
            // client may make an RSA pair whose public half wraps and private half decrypts
            // (pkcs11-provider's default): only wrapping sensitive keys under it is refused.
            return Err(SimError::Rv(CKR_KEY_NOT_WRAPPABLE));
        }
        let bytes: Zeroizing<Vec<u8>> = match (k.class, loaded.material()) {
            (CKO_SECRET_KEY, KeyMaterial::Secret { value, .. }) => value.clone(),
            (CKO_PRIVATE_KEY, _) => rv(crypto::private_key_pkcs8(loaded))?,
            _ => return Err(SimError::Rv(CKR_KEY_NOT_WRAPPABLE)),
        };
        let wrapped = rv(crypto::wrap(mech, Self::key_of(&w)?, &bytes))?;
        let detail = format!("under {wrapping:016x} with mechanism {:#x}", mech.mech);
        self.audit(
            "key_wrap",
            &self.actor(sess),
            &format!("{key:016x}"),
            &detail,
        );
        Ok(wrapped)
    }

    /// `C_UnwrapKey`: a new secret key (the unwrapped bytes are its value) or private key (the
    /// unwrapped bytes are PKCS #8), with the caller's template. It is never `CKA_LOCAL`, never
    /// "always sensitive" or "never extractable": its value has been outside this HSM.
    pub fn unwrap_key(
        &self,
        sess: u64,
        mech: &Mechanism,
        unwrapping: u64,
        wrapped: &[u8],
        template: &[Attr],
    ) -> SimResult<u64> {
        self.fault_check()?; // fault hook
        let login = self.login_of(sess)?;
        if let Some(id) = self.already_made(template)? {
            return Ok(id);
        }
        let u = self
            .usable(sess, unwrapping, CKA_UNWRAP, mech.mech)
            .map_err(|e| match e {
                SimError::Rv(CKR_KEY_HANDLE_INVALID) => {
                    SimError::Rv(CKR_UNWRAPPING_KEY_HANDLE_INVALID)
                }
                SimError::Rv(CKR_KEY_TYPE_INCONSISTENT) => {
                    SimError::Rv(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)
                }
                e => e,
            })?;
        // timing hook
        let _timing = self.timed(|| {
            let bits = u.key.as_ref().map_or(0, |k| k.key_bits());
            let token = timing::token_in(template) == Some(true);
            (OpClass::from_decrypt(mech.mech, bits), token)
        });
        // The unwrapping key's CKA_UNWRAP_TEMPLATE is merged into the caller's: a conflict is
        // the caller's error, a missing attribute is added.
        let mut merged: Vec<Attr> = template.to_vec();
        if let Some(t) = u.attrs.get(&CKA_UNWRAP_TEMPLATE).filter(|t| !t.is_empty()) {
            let forced =
                crate::types::decode_attr_array(t).ok_or(SimError::Rv(CKR_DEVICE_ERROR))?;
            for a in forced {
                match merged.iter().find(|m| m.ty == a.ty) {
                    Some(m) if m.value != a.value => {
                        return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT))
                    }
                    Some(_) => {}
                    None => merged.push(a),
                }
            }
        }
        let template = merged.as_slice();
        let class =
            rv(find_ulong(template, CKA_CLASS))?.ok_or(SimError::Rv(CKR_TEMPLATE_INCOMPLETE))?;
        let bytes = rv(crypto::unwrap(mech, Self::key_of(&u)?, wrapped))?;
        let mut token_set: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> = vec![
            (CKA_LOCAL, object::bool_bytes(false)),
            (
                CKA_KEY_GEN_MECHANISM,
                object::ulong_bytes(CK_UNAVAILABLE_INFORMATION),
            ),
        ];
        let (key_type, material) = match class {
            CKO_SECRET_KEY => {
                let kt = rv(find_ulong(template, CKA_KEY_TYPE))?
                    .ok_or(SimError::Rv(CKR_TEMPLATE_INCOMPLETE))?;
                let ok = match kt {
                    CKK_AES => [16, 24, 32].contains(&bytes.len()),
                    CKK_GENERIC_SECRET => !bytes.is_empty(),
                    _ => return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT)),
                };
                if !ok {
                    return Err(SimError::Rv(CKR_WRAPPED_KEY_INVALID));
                }
                if let Some(l) = rv(find_ulong(template, CKA_VALUE_LEN))? {
                    if usize::try_from(l).ok() != Some(bytes.len()) {
                        return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT));
                    }
                }
                token_set.push((CKA_VALUE_LEN, object::ulong_bytes(bytes.len() as CK_ULONG)));
                (
                    kt,
                    KeyMaterial::Secret {
                        key_type: kt,
                        value: bytes,
                    },
                )
            }
            CKO_PRIVATE_KEY => {
                let (material, kt) = rv(crypto::load_private_pkcs8(&bytes))?;
                if rv(find_ulong(template, CKA_KEY_TYPE))?.is_some_and(|t| t != kt) {
                    return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT));
                }
                token_set.extend(private_public_attrs(&material)?);
                (kt, material)
            }
            _ => return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT)),
        };
        let t: Vec<Attr> = template
            .iter()
            .filter(|a| a.ty != CKA_CLASS && a.ty != CKA_KEY_TYPE)
            .cloned()
            .collect();
        let mut attrs = rv(object::apply_template(
            class,
            Some(key_type),
            &t,
            Origin::Unwrap,
            Self::is_so(&login),
            token_set,
        ))?;
        attrs.insert(CKA_ALWAYS_SENSITIVE, object::bool_bytes(false));
        attrs.insert(CKA_NEVER_EXTRACTABLE, object::bool_bytes(false));
        let key = Arc::new(rv(LoadedKey::load(material))?);
        let new = self.finish_new(sess, &login, class, Some(key_type), attrs, Some(key))?;
        if new.token {
            let detail = format!("under {unwrapping:016x} with mechanism {:#x}", mech.mech);
            self.audit(
                "key_unwrap",
                &self.actor(sess),
                &format!("{:016x}", new.id),
                &detail,
            );
        }
        Ok(new.id)
    }

    /// `C_DeriveKey`: `CKM_ECDH1_DERIVE` (from an EC private key and the peer's point) and
    /// `CKM_HKDF_DERIVE` (from a secret key), giving a secret key. The new key is sensitive /
    /// unextractable "always" only if the base key was.
    pub fn derive_key(
        &self,
        sess: u64,
        mech: &Mechanism,
        base: u64,
        template: &[Attr],
    ) -> SimResult<u64> {
        self.fault_check()?; // fault hook
        let login = self.login_of(sess)?;
        if let Some(id) = self.already_made(template)? {
            return Ok(id);
        }
        let b = self.usable(sess, base, CKA_DERIVE, mech.mech)?;
        // timing hook
        let _timing = self.timed(|| {
            let bits = b.key.as_ref().map_or(0, |k| k.key_bits());
            let token = timing::token_in(template) == Some(true);
            (OpClass::from_derive(mech.mech, bits), token)
        });
        if mech.mech == CKM_HKDF_DATA {
            return self.derive_data(sess, &login, mech, &b, template);
        }
        if rv(find_ulong(template, CKA_CLASS))?.is_some_and(|c| c != CKO_SECRET_KEY) {
            return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT));
        }
        let kt = rv(find_ulong(template, CKA_KEY_TYPE))?.unwrap_or(CKK_GENERIC_SECRET);
        let len = match (kt, rv(find_ulong(template, CKA_VALUE_LEN))?) {
            (_, Some(l)) => {
                usize::try_from(l).map_err(|_| SimError::Rv(CKR_ATTRIBUTE_VALUE_INVALID))?
            }
            (CKK_AES, None) | (CKK_GENERIC_SECRET, None) => {
                return Err(SimError::Rv(CKR_TEMPLATE_INCOMPLETE))
            }
            _ => return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT)),
        };
        match kt {
            CKK_AES if ![16, 24, 32].contains(&len) => {
                return Err(SimError::Rv(CKR_ATTRIBUTE_VALUE_INVALID))
            }
            CKK_AES | CKK_GENERIC_SECRET if len > 0 => {}
            CKK_AES | CKK_GENERIC_SECRET => return Err(SimError::Rv(CKR_ATTRIBUTE_VALUE_INVALID)),
            _ => return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT)),
        }
        let base_key = Self::key_of(&b)?;
        let value = match (&mech.mech, &mech.param) {
            (
                &CKM_ECDH1_DERIVE,
                MechParam::Ecdh {
                    kdf,
                    shared_data,
                    public_data,
                },
            ) => rv(crypto::ecdh_derive(
                base_key,
                public_data,
                *kdf,
                shared_data,
                len,
            ))?,
            (&CKM_HKDF_DERIVE, p @ MechParam::Hkdf { .. }) => hkdf_output(base_key, p, len)?,
            (&CKM_CLOUDHSM_SP800_108_COUNTER_KDF, MechParam::Sp800108 { prf, segments }) => {
                rv(crypto::sp800_108_counter(*prf, segments, base_key, len))?
            }
            (&CKM_ECDH1_DERIVE | &CKM_HKDF_DERIVE | &CKM_CLOUDHSM_SP800_108_COUNTER_KDF, _) => {
                return Err(SimError::Rv(CKR_MECHANISM_PARAM_INVALID))
            }
            _ => return Err(SimError::Rv(CKR_MECHANISM_INVALID)),
        };
        if value.len() != len {
            return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT));
        }
        let token_set = vec![
            (CKA_LOCAL, object::bool_bytes(false)),
            (
                CKA_KEY_GEN_MECHANISM,
                object::ulong_bytes(CK_UNAVAILABLE_INFORMATION),
            ),
            (CKA_VALUE_LEN, object::ulong_bytes(len as CK_ULONG)),
        ];
        let t: Vec<Attr> = template
            .iter()
            .filter(|a| !matches!(a.ty, CKA_CLASS | CKA_KEY_TYPE | CKA_VALUE_LEN))
            .cloned()
            .collect();
        let mut attrs = rv(object::apply_template(
            CKO_SECRET_KEY,
            Some(kt),
            &t,
            Origin::Generate,
            Self::is_so(&login),
            token_set,
        ))?;
        let sensitive = attrs.get(&CKA_SENSITIVE).is_some_and(|v| v == &[1]);
        let extractable = attrs.get(&CKA_EXTRACTABLE).is_some_and(|v| v == &[1]);
        attrs.insert(
            CKA_ALWAYS_SENSITIVE,
            object::bool_bytes(b.flag(CKA_ALWAYS_SENSITIVE) && sensitive),
        );
        attrs.insert(
            CKA_NEVER_EXTRACTABLE,
            object::bool_bytes(b.flag(CKA_NEVER_EXTRACTABLE) && !extractable),
        );
        let key = Arc::new(rv(LoadedKey::load(KeyMaterial::Secret {
            key_type: kt,
            value,
        }))?);
        Ok(self
            .finish_new(sess, &login, CKO_SECRET_KEY, Some(kt), attrs, Some(key))?
            .id)
    }

    /// `CKM_HKDF_DATA`: HKDF output as a data object (private unless the template says
    /// otherwise: it is key material by another name).
    fn derive_data(
        &self,
        sess: u64,
        login: &Option<(Role, String)>,
        mech: &Mechanism,
        base: &Object,
        template: &[Attr],
    ) -> SimResult<u64> {
        if rv(find_ulong(template, CKA_CLASS))?.is_some_and(|c| c != CKO_DATA) {
            return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT));
        }
        let len = rv(find_ulong(template, CKA_VALUE_LEN))?
            .ok_or(SimError::Rv(CKR_TEMPLATE_INCOMPLETE))?;
        let len = usize::try_from(len).map_err(|_| SimError::Rv(CKR_ATTRIBUTE_VALUE_INVALID))?;
        if !matches!(mech.param, MechParam::Hkdf { .. }) {
            return Err(SimError::Rv(CKR_MECHANISM_PARAM_INVALID));
        }
        let base_key = base
            .key
            .as_deref()
            .ok_or(SimError::Rv(CKR_KEY_TYPE_INCONSISTENT))?;
        let value = hkdf_output(base_key, &mech.param, len)?;
        let mut t: Vec<Attr> = template
            .iter()
            .filter(|a| !matches!(a.ty, CKA_CLASS | CKA_VALUE_LEN | CKA_VALUE))
            .cloned()
            .collect();
        if find(&t, CKA_PRIVATE).is_none() {
            t.push(Attr::bool(CKA_PRIVATE, true));
        }
        let attrs = rv(object::apply_template(
            CKO_DATA,
            None,
            &t,
            Origin::Create,
            Self::is_so(login),
            vec![(CKA_VALUE, value.to_vec())],
        ))?;
        Ok(self
            .finish_new(sess, login, CKO_DATA, None, attrs, None)?
            .id)
    }
}

fn local_set(
    v: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)],
    mech: CK_MECHANISM_TYPE,
) -> Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> {
    let mut out = v.to_vec();
    out.push((CKA_LOCAL, object::bool_bytes(true)));
    out.push((CKA_KEY_GEN_MECHANISM, object::ulong_bytes(mech)));
    out
}

fn pub_key_attrs(k: &KeyMaterial) -> Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> {
    match k {
        KeyMaterial::RsaPublic {
            modulus,
            public_exponent,
        } => vec![
            (CKA_MODULUS, modulus.clone()),
            (CKA_PUBLIC_EXPONENT, public_exponent.clone()),
            (
                CKA_MODULUS_BITS,
                object::ulong_bytes(bit_len(modulus) as CK_ULONG),
            ),
        ],
        KeyMaterial::EcPublic { curve, point } => {
            vec![
                (CKA_EC_PARAMS, curve.ec_params_der().to_vec()),
                (CKA_EC_POINT, crypto::ec_point_to_attr(point)),
            ]
        }
        KeyMaterial::EdPublic { point } => vec![
            (CKA_EC_PARAMS, crypto::ED25519_OID_DER.to_vec()),
            (CKA_EC_POINT, crypto::ec_point_to_attr(point)),
        ],
        _ => Vec::new(),
    }
}

fn priv_key_attrs(public: &KeyMaterial) -> Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> {
    match public {
        KeyMaterial::RsaPublic {
            modulus,
            public_exponent,
        } => {
            vec![
                (CKA_MODULUS, modulus.clone()),
                (CKA_PUBLIC_EXPONENT, public_exponent.clone()),
            ]
        }
        KeyMaterial::EcPublic { curve, .. } => {
            vec![(CKA_EC_PARAMS, curve.ec_params_der().to_vec())]
        }
        KeyMaterial::EdPublic { .. } => vec![(CKA_EC_PARAMS, crypto::ED25519_OID_DER.to_vec())],
        _ => Vec::new(),
    }
}

/// HKDF (`CKM_HKDF_DERIVE` / `CKM_HKDF_DATA`) over a secret base key: `len` output bytes.
fn hkdf_output(base: &LoadedKey, param: &MechParam, len: usize) -> SimResult<Zeroizing<Vec<u8>>> {
    let MechParam::Hkdf {
        extract,
        expand,
        prf,
        salt_type,
        salt,
        info,
    } = param
    else {
        return Err(SimError::Rv(CKR_MECHANISM_PARAM_INVALID));
    };
    let KeyMaterial::Secret { value: ikm, .. } = base.material() else {
        return Err(SimError::Rv(CKR_KEY_TYPE_INCONSISTENT));
    };
    // The salt only enters the extract step: an expand-only derivation (bExtract false) ignores
    // ulSaltType, which callers leave 0 (pkcs11-provider's TLS 1.3 HKDF-Expand-Label does).
    let salt: &[u8] = match (*extract, *salt_type) {
        (false, _) | (true, CKF_HKDF_SALT_NULL) => &[],
        (true, CKF_HKDF_SALT_DATA) => salt,
        _ => return Err(SimError::Rv(CKR_MECHANISM_PARAM_INVALID)),
    };
    rv(crypto::hkdf(*prf, *extract, *expand, salt, ikm, info, len))
}

/// A key's security strength in bits (NIST SP 800-57 part 1, table 2): AES and secrets by
/// length (secrets capped at 256), RSA by modulus, EC and Edwards keys at half the order.
fn strength_bits(o: &Object) -> usize {
    let bits = o.key.as_ref().map_or(0, |k| k.key_bits());
    match o.key_type {
        Some(CKK_RSA) => match bits {
            0..=2047 => 80,
            2048..=3071 => 112,
            3072..=7679 => 128,
            7680..=15359 => 192,
            _ => 256,
        },
        // SP 800-57 Part 1, table 2: the size of the group order (P-521's 521 bits give 256,
        // not 260: a P-521 key may travel under AES-256).
        Some(CKK_EC | CKK_EC_EDWARDS) => match bits {
            0..=223 => 80,
            224..=255 => 112,
            256..=383 => 128,
            384..=511 => 192,
            _ => 256,
        },
        _ => bits.min(256),
    }
}

/// The public attributes a private key object carries (modulus and exponent, or curve).
fn private_public_attrs(m: &KeyMaterial) -> SimResult<Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>> {
    Ok(match m {
        KeyMaterial::RsaPrivate { pkcs8 } => {
            let (n, e) = rv(crypto::rsa_public_components(pkcs8))?;
            vec![(CKA_MODULUS, n), (CKA_PUBLIC_EXPONENT, e)]
        }
        KeyMaterial::EcPrivate { curve, .. } => {
            vec![(CKA_EC_PARAMS, curve.ec_params_der().to_vec())]
        }
        KeyMaterial::EdPrivate { .. } => vec![(CKA_EC_PARAMS, crypto::ED25519_OID_DER.to_vec())],
        _ => Vec::new(),
    })
}
