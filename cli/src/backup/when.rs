//! The timestamps and time zones `hsmpool backup delete --before` reads, strictly: a form it
//! does not know is refused, never guessed at.
//!
//! - ISO 8601 with an offset (`2026-12-07T16:15:00Z`, `2026-12-07T16:15:00+02:00`): that
//!   instant; `--timezone` beside it is an error (the timestamp already says where it is).
//! - ISO 8601 without one (`2026-12-07T16:15`, `2026-12-07T16:15:00`, `2026-12-07`, which is
//!   midnight), and `MM/DD/YY`, `MM/DD/YYYY` (midnight), `MM/DD/YYYY HH:MM`: read in
//!   `--timezone`, UTC when none is given. Two-digit years are 2000 to 2099.
//! - `--timezone`: an offset (`-0200`, `+05:00`, `+0530`) or an IANA name (`Europe/Paris`,
//!   from the system's time zone database). A local time that a clock change skips or repeats
//!   is taken as the clock read before the change (RFC 5545's "compatible" rule).

use jiff::civil::{Date, DateTime};
use jiff::tz::{Offset, TimeZone};
use jiff::Timestamp;

/// What the refusal of an unknown form says.
pub const FORMS: &str = "ISO 8601 (2026-12-07T16:15:00Z, 2026-12-07T16:15:00+02:00, \
                         2026-12-07T16:15, 2026-12-07), MM/DD/YY, MM/DD/YYYY or \
                         MM/DD/YYYY HH:MM";

/// The time zone `s` names: an offset `±HHMM` / `±HH:MM`, or an IANA name.
pub fn zone(s: &str) -> Result<TimeZone, String> {
    let b = s.as_bytes();
    if matches!(b.first(), Some(b'+' | b'-')) {
        let digits: Vec<u8> = match b.len() {
            5 => b[1..].to_vec(),
            6 if b[3] == b':' => [&b[1..3], &b[4..]].concat(),
            _ => Vec::new(),
        };
        if digits.len() != 4 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(format!(
                "time zone {s:?}: an offset is written -0200, +05:00 or +0530"
            ));
        }
        let n = |i: usize| i32::from(digits[i] - b'0');
        let (h, m) = (n(0) * 10 + n(1), n(2) * 10 + n(3));
        if h > 23 || m > 59 {
            return Err(format!("time zone {s:?}: no such offset"));
        }
        let secs = (h * 3600 + m * 60) * if b[0] == b'-' { -1 } else { 1 };
        let off = Offset::from_seconds(secs).map_err(|e| format!("time zone {s:?}: {e}"))?;
        return Ok(TimeZone::fixed(off));
    }
    TimeZone::get(s).map_err(|_| {
        format!(
            "time zone {s:?}: not an offset (-0200, +05:00) nor an IANA time zone name this \
             system knows (Europe/Paris, America/New_York)"
        )
    })
}

/// `MM/DD/YY`, `MM/DD/YYYY` or `MM/DD/YYYY HH:MM` (two digits for each of month, day, hour
/// and minute).
fn slashed(s: &str) -> Option<DateTime> {
    let (date, time) = match s.split_once(' ') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('/').collect();
    let [mm, dd, yy] = parts.as_slice() else {
        return None;
    };
    let num = |p: &str, len: usize| -> Option<i16> {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
    };
    let year = match (yy.len(), time) {
        (2, None) => 2000 + num(yy, 2)?,
        (4, _) => num(yy, 4)?,
        _ => return None,
    };
    let (h, m) = match time {
        None => (0, 0),
        Some(t) => {
            let (h, m) = t.split_once(':')?;
            (num(h, 2)?, num(m, 2)?)
        }
    };
    let small = |v: i16| i8::try_from(v).ok();
    DateTime::new(
        year,
        small(num(mm, 2)?)?,
        small(num(dd, 2)?)?,
        small(h)?,
        small(m)?,
        0,
        0,
    )
    .ok()
}

/// The instant `s` names, read in `tz` (`--timezone`) where it carries no offset of its own.
pub fn instant(s: &str, tz: Option<&str>) -> Result<Timestamp, String> {
    let s = s.trim();
    let refuse = || format!("timestamp {s:?} is not one of: {FORMS}");
    let local = if s.contains('/') {
        slashed(s).ok_or_else(refuse)?
    } else if let Ok(t) = s.parse::<Timestamp>() {
        if tz.is_some() {
            return Err(format!(
                "timestamp {s:?} carries its own offset: give --timezone only with a \
                 timestamp that has none"
            ));
        }
        return Ok(t);
    } else if let Ok(dt) = s.parse::<DateTime>() {
        dt
    } else if let Ok(d) = s.parse::<Date>() {
        d.to_datetime(jiff::civil::Time::midnight())
    } else {
        return Err(refuse());
    };
    let zone = match tz {
        Some(z) => zone(z)?,
        None => TimeZone::UTC,
    };
    zone.to_ambiguous_timestamp(local)
        .compatible()
        .map_err(|e| format!("timestamp {s:?}: {e}"))
}

/// `ms` (since the Unix epoch) as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(ms: u64) -> String {
    Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| format!("{t:.3}"))
        .unwrap_or_else(|_| format!("{ms} ms"))
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    u64::try_from(Timestamp::now().as_millisecond()).unwrap_or(0)
}

/// `t` in ms since the Unix epoch (0 before it).
pub fn ms(t: Timestamp) -> u64 {
    u64::try_from(t.as_millisecond()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str, tz: Option<&str>) -> String {
        instant(s, tz).map(|t| t.to_string()).unwrap_or_else(|e| e)
    }

    #[test]
    fn every_form_reads_as_its_instant() {
        for (s, tz, want) in [
            ("2026-12-07T16:15:00Z", None, "2026-12-07T16:15:00Z"),
            ("2026-12-07T16:15:00+02:00", None, "2026-12-07T14:15:00Z"),
            ("2026-12-07T16:15", None, "2026-12-07T16:15:00Z"),
            ("2026-12-07T16:15", Some("-0200"), "2026-12-07T18:15:00Z"),
            (
                "2026-12-07T16:15:30",
                Some("+05:00"),
                "2026-12-07T11:15:30Z",
            ),
            ("2026-12-07", None, "2026-12-07T00:00:00Z"),
            ("2026-12-07", Some("Europe/Paris"), "2026-12-06T23:00:00Z"),
            ("2026-07-07", Some("Europe/Paris"), "2026-07-06T22:00:00Z"),
            ("12/07/26", None, "2026-12-07T00:00:00Z"),
            ("12/07/26", Some("+0530"), "2026-12-06T18:30:00Z"),
            ("12/07/2026", None, "2026-12-07T00:00:00Z"),
            (
                "12/07/2026",
                Some("America/New_York"),
                "2026-12-07T05:00:00Z",
            ),
            ("12/07/2026 16:15", None, "2026-12-07T16:15:00Z"),
            ("12/07/2026 16:15", Some("-02:00"), "2026-12-07T18:15:00Z"),
            // 02:30 does not exist in Paris on 2026-03-29: the clock before the change.
            (
                "03/29/2026 02:30",
                Some("Europe/Paris"),
                "2026-03-29T01:30:00Z",
            ),
        ] {
            assert_eq!(at(s, tz), want, "{s} in {tz:?}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for s in [
            "",
            "yesterday",
            "1/2/2026",
            "12/07/2026 4pm",
            "12/07/26 16:15",
            "13/01/2026",
            "02/30/2026",
            "12/07/2026 24:00",
            "2026-12-07 at 16:00",
            "1765123200",
            "07.12.2026",
        ] {
            assert!(instant(s, None).is_err(), "{s:?} was taken");
        }
        assert!(instant("2026-12-07T16:15:00Z", Some("+01:00"))
            .unwrap_err()
            .contains("own offset"));
        for z in ["0200", "+2", "+24:00", "+02:60", "Mars/Olympus", "UTC+2"] {
            assert!(zone(z).is_err(), "{z:?} was taken");
        }
    }
}
