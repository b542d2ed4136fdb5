//! Administration, as the `hsmpool` tool and tests reach it: users kept the same on every
//! member (see `crate::cluster` `users.rs`). The application logs in first, as a crypto
//! officer for a change.

use hsmpool_member::{UserChange, UserSet};

use super::lifecycle::Engine;
use crate::cluster::UserChangeReport;
use crate::error::{Error, Result};
use crate::state::LoginState;

impl Engine {
    /// A crypto officer's change to one user, made as one on every member: refused before
    /// any member is asked when a member keeps no users (a vendor's token); a member that
    /// misses it takes it before it takes traffic again. Needs an officer login.
    pub fn change_user(&self, change: &UserChange) -> Result<UserChangeReport> {
        if self.login_state() != LoginState::So {
            return Err(Error::UserNotLoggedIn);
        }
        let report = self.cluster.user_change(change)?;
        // A deleted or locked user's objects are no longer anyone's to see through cached
        // finds made before.
        self.invalidate();
        Ok(report)
    }

    /// The users (deleted ones left out), as the first up member that keeps users holds them,
    /// with its lockout threshold. Needs a login.
    pub fn users(&self) -> Result<UserSet> {
        let (_, set) = self
            .member_users()?
            .into_iter()
            .next()
            .ok_or_else(|| Error::DeviceError("no member that keeps users is up".into()))?;
        let mut set = set?;
        set.users.retain(|u| !u.deleted);
        Ok(set)
    }

    /// Each up member's users as it holds them, without bringing them level first (what
    /// `hsmpool cluster check` compares): the member's index and its answer. Needs a login.
    pub fn member_users(&self) -> Result<Vec<(usize, Result<UserSet>)>> {
        if self.login_state() == LoginState::Public {
            return Err(Error::UserNotLoggedIn);
        }
        Ok(self
            .cluster
            .status()
            .iter()
            .filter(|m| m.health == crate::cluster::Health::Up && self.cluster.keeps_users(m.index))
            .map(|m| (m.index, self.cluster.user_set(m.index)))
            .collect())
    }

    /// Bring the up members' users level now (what the module does at each login and when a
    /// member returns): how many records moved.
    pub fn converge_users(&self) -> Result<usize> {
        if self.login_state() == LoginState::Public {
            return Err(Error::UserNotLoggedIn);
        }
        let up: Vec<usize> = self
            .cluster
            .status()
            .iter()
            .filter(|m| m.health == crate::cluster::Health::Up)
            .map(|m| m.index)
            .collect();
        self.cluster.converge_users(&up)
    }
}
