//! The compat room: features some clients need that the standard token does not give them
//! (`[compat]` in the configuration). They work on the cluster through a narrow view of the
//! engine, not inside the engine core.
//!
//! # The seam
//! The engine holds one [`Compat`] and calls it in three places:
//! - a find that is not answered from the find cache adds the handles of [`Compat::find`];
//! - a handle that is no member object's may be a presented object ([`Compat::object`]): its
//!   attribute reads and size are answered from it, and its copy, destroy and attribute
//!   changes refused (it is read-only);
//! - `C_InitToken` forgets everything presented ([`Compat::clear`]).
//!
//! The other way, compat code sees the engine only through [`Host`]: the cluster (the member
//! calls it makes: finds, attribute reads, signatures), whether the user is logged in, the
//! cache generation and the find-cache TTL, and fresh object handles. It takes no engine lock.
//! No file of the engine core names a feature of this room.
//!
//! # Features
//! Each sits behind a Cargo feature (all on by default); with its feature off, its option is
//! refused when the configuration is parsed and when an engine is built
//! ([`crate::config::CompatConfig::check_built_in`]).
//! - `compat-selfsigned` (`selfsigned`): `[compat] self_signed_certificates`, certificates
//!   presented for token private keys that have none, signed by the keys through the members.

#[cfg(feature = "compat-selfsigned")]
mod selfsigned;

use std::sync::Arc;

use cryptoki_sys::CK_ATTRIBUTE_TYPE;
use hsmpool_member::types::Attr;

use crate::cluster::Cluster;
use crate::config::CompatConfig;
use crate::error::{Error, Result};
use crate::types::{AttrAnswer, ObjectHandle};

/// What compat code sees of the engine (implemented by `Engine`).
// With no compat feature built in, nothing calls it.
#[cfg_attr(not(feature = "compat-selfsigned"), allow(dead_code))]
pub(crate) trait Host: Sync {
    /// The members, for the calls a feature makes on them.
    fn cluster(&self) -> &Cluster;
    /// Whether the application is logged in as the normal user.
    fn user_logged_in(&self) -> bool;
    /// The engine's cache generation: what a feature worked out under an older one is stale.
    fn cache_generation(&self) -> u64;
    /// How long a find result may be served.
    fn find_ttl(&self) -> std::time::Duration;
    /// A fresh application object handle, for an object the engine presents.
    fn new_object_handle(&self) -> ObjectHandle;
}

/// An object the engine presents that no member holds: read-only, answered from here.
pub(crate) trait PresentedObject: Send + Sync {
    /// `C_GetAttributeValue`: one answer per requested type, in order.
    fn answer(&self, types: &[CK_ATTRIBUTE_TYPE]) -> Vec<AttrAnswer>;
    /// `C_GetObjectSize`.
    fn size(&self) -> u64;
}

/// The `[compat]` features this engine was built with and configured for.
pub(crate) struct Compat {
    /// `[compat] self_signed_certificates`: present only when the option is on.
    #[cfg(feature = "compat-selfsigned")]
    self_signed: Option<selfsigned::SelfSigned>,
}

impl Compat {
    /// The features `cfg` turns on; an option this build leaves out is an [`Error::Config`].
    pub(crate) fn new(cfg: &CompatConfig) -> Result<Compat> {
        cfg.check_built_in().map_err(Error::Config)?;
        Ok(Compat {
            #[cfg(feature = "compat-selfsigned")]
            self_signed: cfg
                .self_signed_certificates
                .then(selfsigned::SelfSigned::new),
        })
    }

    /// The presented objects matching a find template (none when no feature presents any).
    #[cfg_attr(not(feature = "compat-selfsigned"), allow(unused_variables))]
    pub(crate) fn find(&self, host: &dyn Host, template: &[Attr]) -> Result<Vec<ObjectHandle>> {
        #[cfg(feature = "compat-selfsigned")]
        if let Some(ss) = &self.self_signed {
            if selfsigned::could_match(template) {
                return Ok(ss
                    .certs(host, true)?
                    .iter()
                    .filter(|c| c.matches(template))
                    .map(|c| c.handle)
                    .collect());
            }
        }
        Ok(Vec::new())
    }

    /// The presented object with this handle, if it is one.
    #[cfg_attr(not(feature = "compat-selfsigned"), allow(unused_variables))]
    pub(crate) fn object(
        &self,
        host: &dyn Host,
        o: ObjectHandle,
    ) -> Result<Option<Arc<dyn PresentedObject>>> {
        #[cfg(feature = "compat-selfsigned")]
        if let Some(ss) = &self.self_signed {
            return Ok(ss.cert(host, o)?.map(|c| c as Arc<dyn PresentedObject>));
        }
        Ok(None)
    }

    /// Forget everything presented (`C_InitToken`).
    pub(crate) fn clear(&self) {
        #[cfg(feature = "compat-selfsigned")]
        if let Some(ss) = &self.self_signed {
            ss.clear();
        }
    }
}

#[cfg(all(test, not(feature = "compat-selfsigned")))]
mod tests {
    use super::*;

    #[test]
    fn an_option_left_out_of_the_build_is_refused_at_engine_build() {
        let cfg = CompatConfig {
            self_signed_certificates: true,
        };
        let e = Compat::new(&cfg).err().expect("refused").to_string();
        assert!(
            e.contains("compat.self_signed_certificates: not built into this module")
                && e.contains("compat-selfsigned"),
            "{e}"
        );
        assert!(Compat::new(&CompatConfig::default()).is_ok());
    }
}
