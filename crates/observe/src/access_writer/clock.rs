//! A line's timestamp: the request's end instant on the wall clock through an anchor, as
//! RFC 3339 UTC with microseconds.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::line::digit_pair;

/// The last second an RFC 3339 timestamp with a four-digit year can show.
const LAST_SECOND: u64 = 253_402_300_799;

/// RFC 3339 UTC timestamps with microseconds, `2026-12-05T23:43:29.069403Z`; the part up to
/// the seconds is formatted once per second.
///
/// A line's time is the instant its request ended (read once by the data path for the
/// duration as well), placed on the wall clock through an anchor — an instant and the wall
/// time at it — taken again every [`ANCHOR_INTERVAL`]: no wall-clock read per line, and a
/// step of the system clock shows within that interval.
#[derive(Default)]
pub(super) struct Clock {
    pub(super) anchor: Option<(Instant, u64)>,
    second: Option<u64>,
    prefix: [u8; 19],
}

/// How long a wall-clock anchor is used.
const ANCHOR_INTERVAL: Duration = Duration::from_secs(1);

impl Clock {
    /// Microseconds since the Unix epoch at `ended`.
    #[inline]
    pub(super) fn micros_at(&mut self, ended: Instant) -> u64 {
        if let Some((at, wall)) = self.anchor {
            if let Some(since) = ended.checked_duration_since(at) {
                if since < ANCHOR_INTERVAL {
                    return wall + since.as_micros() as u64;
                }
            } else {
                return Self::before_anchor(at, wall, ended);
            }
        }
        self.reanchor(ended)
    }

    /// A request that ended before the anchor was taken (another worker's line took it
    /// while this one waited for the lock).
    #[cold]
    fn before_anchor(at: Instant, wall: u64, ended: Instant) -> u64 {
        wall.saturating_sub(at.saturating_duration_since(ended).as_micros() as u64)
    }

    #[cold]
    fn reanchor(&mut self, ended: Instant) -> u64 {
        let at = Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as u64);
        self.anchor = Some((at, wall));
        // `ended` is at or before now (a line is written after its request ended).
        Self::before_anchor(at, wall, ended)
    }

    pub(super) fn stamp(&mut self, micros_since_epoch: u64) -> [u8; 27] {
        let secs = (micros_since_epoch / 1_000_000).min(LAST_SECOND);
        if self.second != Some(secs) {
            self.prefix = second_prefix(secs);
            self.second = Some(secs);
        }
        let micros = micros_since_epoch % 1_000_000;
        let mut out = [0; 27];
        out[..19].copy_from_slice(&self.prefix);
        out[19] = b'.';
        out[20..22].copy_from_slice(digit_pair(micros / 10_000));
        out[22..24].copy_from_slice(digit_pair(micros / 100 % 100));
        out[24..26].copy_from_slice(digit_pair(micros % 100));
        out[26] = b'Z';
        out
    }
}

/// `YYYY-MM-DDTHH:MM:SS` for a second up to [`LAST_SECOND`].
fn second_prefix(secs: u64) -> [u8; 19] {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    let year = year as u64;
    let mut out = *b"0000-00-00T00:00:00";
    for (at, value) in [
        (0, year / 100),
        (2, year % 100),
        (5, u64::from(month)),
        (8, u64::from(day)),
        (11, rest / 3600),
        (14, rest / 60 % 60),
        (17, rest % 60),
    ] {
        out[at..at + 2].copy_from_slice(digit_pair(value));
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's method).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_times_come_from_the_end_instant_through_an_anchor() {
        let wall_now = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64
        };
        let mut clock = Clock::default();
        // The first line anchors the clock: its time is the wall clock's, less how long ago
        // its request ended.
        let before = wall_now();
        let start = Instant::now();
        let first = clock.micros_at(start);
        let after = wall_now();
        assert!(
            first >= before && first <= after,
            "{before} {first} {after}"
        );
        // Within the interval, later instants are the anchor plus their distance from it.
        let (at, wall) = clock.anchor.unwrap();
        let later = at + Duration::from_micros(250_000);
        assert_eq!(clock.micros_at(later), wall + 250_000);
        // An instant from before the anchor (another worker's line, written later) is
        // placed back from it; one past the interval takes a new anchor.
        if let Some(earlier) = at.checked_sub(Duration::from_millis(5)) {
            assert_eq!(clock.micros_at(earlier), wall - 5_000);
            assert_eq!(clock.anchor.unwrap().0, at);
        }
        let far = Instant::now() + Duration::from_secs(2);
        let anchored = clock.anchor.unwrap().0;
        clock.micros_at(far);
        assert_ne!(clock.anchor.unwrap().0, anchored);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut clock = Clock::default();
        assert_eq!(
            &clock.stamp(1_796_514_209_069_403),
            b"2026-12-05T23:43:29.069403Z"
        );
        // The same second again (the cached part), then another.
        assert_eq!(
            &clock.stamp(1_796_514_209_999_999),
            b"2026-12-05T23:43:29.999999Z"
        );
        assert_eq!(
            &clock.stamp(951_782_400_000_000),
            b"2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            &clock.stamp((LAST_SECOND + 86_400) * 1_000_000 + 5),
            b"9999-12-31T23:59:59.000005Z"
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
