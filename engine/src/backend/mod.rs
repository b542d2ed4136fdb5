//! The seam between the engine and the HSMs: the member contract (re-exported from
//! `hsmpool-member`), the kinds of member this build has, and the one factory that opens them.
//!
//! Each kind sits behind a Cargo feature, all on by default:
//! - `embedded`: the in-process simulator (`hsmpool_sim::member::SimMember`);
//! - `daemon`: an `hsmpool-hsmd` over mutual TLS (`hsmpool_wire::client::Remote`);
//! - `module`: a vendor's PKCS #11 library ([`module::Module`]).
//!
//! The rest of the engine sees only `dyn Backend`: nothing outside this directory names a kind.

pub mod content;
#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "module")]
#[allow(unsafe_code)] // the engine's only unsafe code: calls into a vendor's library
pub mod module;
#[cfg(feature = "daemon")]
pub mod remote;

use std::sync::Arc;

pub use hsmpool_member::backend::replication;
pub use hsmpool_member::{
    Backend, MemberError, MemberId, MemberObject, MemberResult, MemberSession, Replication,
};

#[cfg(any(feature = "embedded", feature = "daemon", feature = "module"))]
use crate::config::MemberKind;
use crate::config::{Config, MemberConfig};
use crate::error::{Error, Result};

/// Open every member `cfg` names, in order (member `i` gets `MemberId(i)`).
pub fn open_members(cfg: &Config) -> Result<Vec<Arc<dyn Backend>>> {
    let members = cfg.members();
    if members.is_empty() {
        return Err(Error::Config("no member configured".into()));
    }
    #[cfg(feature = "embedded")]
    embedded::prepare(cfg)?;
    members
        .iter()
        .enumerate()
        .map(|(i, m)| open_one(cfg, i, m))
        .collect()
}

/// Open member `i` of `cfg` (`m`): the one place that names each kind.
#[cfg_attr(not(feature = "embedded"), allow(unused_variables))] // `cfg`: the data directory
fn open_one(cfg: &Config, i: usize, m: &MemberConfig) -> Result<Arc<dyn Backend>> {
    let id = MemberId(i as u32);
    let b: Arc<dyn Backend> = match m.kind()? {
        #[cfg(feature = "embedded")]
        MemberKind::Embedded => Arc::new(embedded::open(id, cfg, i, m)?),
        #[cfg(feature = "daemon")]
        MemberKind::Daemon => Arc::new(remote::Remote::connect(id, &remote::remote_config(m)?)?),
        #[cfg(feature = "module")]
        MemberKind::Module => Arc::new(module::Module::open(
            id,
            &module::ModuleConfig {
                path: m.path.clone().unwrap_or_default(),
                token_label: m.token_label.clone(),
                token_serial: m.token_serial.clone(),
                init_reserved: m.init_reserved.clone(),
                pin_from: m.pin_from.clone(),
                so_pin_from: m.so_pin_from.clone(),
            },
        )?),
    };
    #[allow(unreachable_code)] // with no kind built in, `kind` has no value to match
    Ok(b)
}
