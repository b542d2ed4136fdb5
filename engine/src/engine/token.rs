//! The slot and the token: slot and token info, `C_InitToken`, `C_InitPIN`, `C_SetPIN`, the
//! mechanism list and info (and the table row an operation's mechanism must have), and random
//! numbers.

use cryptoki_sys::*;
use hsmpool_member::types::Mechanism;
use hsmpool_member::Role;

use super::lifecycle::Engine;
use crate::cluster::Route;
use crate::error::{Error, Result};
use crate::state::LoginState;
use crate::types::{LibraryInfo, MechanismInfo, SessionHandle, SlotId, SlotInfo, TokenInfo};

/// The one slot id this build presents.
pub const SLOT: SlotId = SlotId(0);

impl Engine {
    pub(super) fn check_slot(&self, slot: SlotId) -> Result<()> {
        if slot == SLOT {
            Ok(())
        } else {
            Err(Error::SlotIdInvalid)
        }
    }

    /// `C_GetInfo`.
    pub fn library_info(&self) -> LibraryInfo {
        LibraryInfo {
            manufacturer: "hsmpool".into(),
            description: "hsmpool PKCS#11 cluster module".into(),
            version: (0, 1),
        }
    }

    /// `C_GetSlotList`.
    pub fn slot_list(&self, _token_present: bool) -> Vec<SlotId> {
        vec![SLOT]
    }

    /// `C_GetSlotInfo`.
    pub fn slot_info(&self, slot: SlotId) -> Result<SlotInfo> {
        self.check_slot(slot)?;
        Ok(SlotInfo {
            description: self
                .cfg
                .token
                .slot_description
                .clone()
                .unwrap_or_else(|| "hsmpool cluster".into()),
            manufacturer: "hsmpool".into(),
            flags: CKF_TOKEN_PRESENT,
            hardware_version: (0, 1),
            firmware_version: (0, 1),
        })
    }

    /// `C_GetTokenInfo`.
    pub fn token_info(&self, slot: SlotId) -> Result<TokenInfo> {
        self.check_slot(slot)?;
        let st = self.cluster.call(Route::Any, 1, |b, _| b.token_status())?;
        let mut flags = CKF_RNG | CKF_LOGIN_REQUIRED;
        if st.initialized {
            flags |= CKF_TOKEN_INITIALIZED;
        }
        if st.user_pin_initialized {
            flags |= CKF_USER_PIN_INITIALIZED;
        }
        let pin_flags = |failures: u32, low, last, locked| -> CK_FLAGS {
            if failures == 0 {
                0
            } else if failures >= st.max_failures {
                locked
            } else if failures + 1 == st.max_failures {
                low | last
            } else {
                low
            }
        };
        flags |= pin_flags(
            st.user_failures,
            CKF_USER_PIN_COUNT_LOW,
            CKF_USER_PIN_FINAL_TRY,
            CKF_USER_PIN_LOCKED,
        );
        flags |= pin_flags(
            st.so_failures,
            CKF_SO_PIN_COUNT_LOW,
            CKF_SO_PIN_FINAL_TRY,
            CKF_SO_PIN_LOCKED,
        );
        let (mut count, mut rw) = (0u64, 0u64);
        for s in self.sessions.iter() {
            count += 1;
            if s.value().lock().rw {
                rw += 1;
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(TokenInfo {
            label: String::from_utf8_lossy(&st.label).trim_end().to_string(),
            manufacturer: "hsmpool".into(),
            model: "hsmpool cluster".into(),
            serial: format!(
                "{:016x}",
                fnv(self.cluster.members[0].backend.describe().as_bytes())
            ),
            flags,
            max_session_count: CK_EFFECTIVELY_INFINITE,
            session_count: count,
            max_rw_session_count: CK_EFFECTIVELY_INFINITE,
            rw_session_count: rw,
            max_pin_len: hsmpool_member::MAX_PIN_LEN as CK_ULONG,
            min_pin_len: hsmpool_member::MIN_PIN_LEN as CK_ULONG,
            total_public_memory: CK_UNAVAILABLE_INFORMATION,
            free_public_memory: CK_UNAVAILABLE_INFORMATION,
            total_private_memory: CK_UNAVAILABLE_INFORMATION,
            free_private_memory: CK_UNAVAILABLE_INFORMATION,
            hardware_version: (0, 1),
            firmware_version: (0, 1),
            utc_time: utc_time(now),
        })
    }

    /// `C_GetMechanismList`.
    pub fn mechanism_list(&self, slot: SlotId) -> Result<Vec<CK_MECHANISM_TYPE>> {
        self.check_slot(slot)?;
        Ok(self.mechanisms.iter().map(|r| r.mech).collect())
    }

    /// `C_GetMechanismInfo`.
    pub fn mechanism_info(&self, slot: SlotId, mech: CK_MECHANISM_TYPE) -> Result<MechanismInfo> {
        self.check_slot(slot)?;
        let r = self
            .mechanisms
            .iter()
            .find(|r| r.mech == mech)
            .ok_or(Error::MechanismInvalid)?;
        // CKF_HW: keyed operations are performed by the HSM (the simulator stands for one);
        // digests are computed in this process, so they do not claim it.
        let hw = if r.flags & CKF_DIGEST != 0 { 0 } else { CKF_HW };
        Ok(MechanismInfo {
            min_key_size: r.min,
            max_key_size: r.max,
            flags: r.flags | hw,
        })
    }

    /// `C_InitToken`. `label` is the 32-byte blank-padded label.
    pub fn init_token(&self, slot: SlotId, so_pin: &[u8], label: &[u8]) -> Result<()> {
        self.check_slot(slot)?;
        if !self.sessions.is_empty() {
            return Err(Error::SessionExists);
        }
        let label: &[u8; 32] = label
            .try_into()
            .map_err(|_| Error::ArgumentsBad("label must be 32 bytes"))?;
        // The first member checks the SO PIN (a token initialised before checks it).
        self.cluster
            .on_all_from(Route::Checker(Role::Officer), |b, _| {
                b.init_token(so_pin, label)
            })?;
        self.cluster.after_init_token(so_pin)?;
        self.objects.clear();
        self.by_member.clear();
        self.compat.clear();
        self.invalidate();
        Ok(())
    }

    /// `C_InitPIN`.
    pub fn init_pin(&self, s: SessionHandle, pin: &[u8]) -> Result<()> {
        let rw = self.rw_of(s)?;
        if self.login_state() != LoginState::So {
            return Err(Error::UserNotLoggedIn);
        }
        if !rw {
            return Err(Error::SessionReadOnly);
        }
        self.cluster
            .pin_change(Route::Any, |b, msess| b.init_pin(msess, pin))?;
        self.cluster.after_init_pin()
    }

    /// `C_SetPIN`.
    pub fn set_pin(&self, s: SessionHandle, old: &[u8], new: &[u8]) -> Result<()> {
        if !self.rw_of(s)? {
            return Err(Error::SessionReadOnly);
        }
        let role = match self.login_state() {
            LoginState::So => Role::Officer,
            _ => Role::User,
        };
        // The first member checks the old PIN; a member with a PIN of its own keeps it.
        self.cluster
            .pin_change(Route::Checker(role), |b, msess| b.set_pin(msess, old, new))?;
        if self.login_state() != LoginState::Public {
            self.cluster.new_pin(new);
        }
        Ok(())
    }

    /// The row of a mechanism this token offers with `flag`, else `MechanismInvalid` (before
    /// any member is asked).
    pub(crate) fn mech_row(
        &self,
        mech: &Mechanism,
        flag: CK_FLAGS,
    ) -> Result<hsmpool_member::mechanism::MechRow> {
        let row = *self
            .mechanisms
            .iter()
            .find(|r| r.mech == mech.mech)
            .ok_or(Error::MechanismInvalid)?;
        if row.flags & flag == 0 {
            return Err(Error::MechanismInvalid);
        }
        Ok(row)
    }

    /// `C_SeedRandom`: the generator (aws-lc's) takes no seed from applications.
    pub fn seed_random(&self, s: SessionHandle, _seed: &[u8]) -> Result<()> {
        self.session(s)?;
        Err(Error::RandomSeedNotSupported)
    }

    /// `C_GenerateRandom`.
    pub fn generate_random(&self, s: SessionHandle, out: &mut [u8]) -> Result<()> {
        self.session(s)?;
        self.cluster.call(Route::Any, 1, |b, _| b.random(out))
    }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn utc_time(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_time_is_sixteen_characters_of_the_right_date() {
        assert_eq!(utc_time(0), "1970010100000000");
        assert_eq!(utc_time(1_796_000_000), "2026113000532000");
        assert_eq!(utc_time(1_796_000_000).len(), 16);
    }
}
