//! Timestamps: RFC 3339 UTC strings in JSON, milliseconds since the Unix epoch inside.
//!
//! Times are inputs (the event's `at`, the command context's `now`): the core never
//! reads a clock. Calendar and business-day arithmetic is done here so deadlines compare
//! event times only. Business days are Monday to Friday in UTC, less the [`Date`]s a
//! policy lists as holidays (`funding.holidays`: the customer's bank calendar, such as
//! the Federal Reserve's holidays for ACH).
//!
//! ```
//! use trustfold_core::time::Timestamp;
//! let t: Timestamp = "2026-11-26T05:35:15Z".parse()?;
//! assert_eq!(t.add_business_days(1).to_string(), "2026-11-27T05:35:15Z"); // Thu -> Fri
//! assert_eq!(t.add_business_days(2).to_string(), "2026-11-30T05:35:15Z"); // -> Mon
//! assert_eq!("2026-11-26T05:35:15.120+01:00".parse::<Timestamp>()?.to_string(),
//!            "2026-11-26T04:35:15.120Z");
//!
//! // Friday 2026-11-27 is a holiday: one business day after Wednesday is Monday.
//! use trustfold_core::time::Date;
//! let wednesday: Timestamp = "2026-11-25T16:00:00Z".parse()?;
//! let holidays = ["2026-11-26".parse::<Date>()?, "2026-11-27".parse()?];
//! assert_eq!(wednesday.add_business_days_except(1, &holidays).to_string(),
//!            "2026-11-30T16:00:00Z");
//! # Ok::<(), trustfold_core::Error>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

const MS_PER_DAY: i64 = 86_400_000;

/// A UTC instant with millisecond precision.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From milliseconds since 1970-01-01T00:00:00Z.
    pub const fn from_unix_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since 1970-01-01T00:00:00Z.
    pub const fn unix_millis(&self) -> i64 {
        self.0
    }

    /// This instant plus `hours` (saturating).
    pub fn add_hours(&self, hours: i64) -> Self {
        Timestamp(self.0.saturating_add(hours.saturating_mul(3_600_000)))
    }

    /// This instant plus `days` calendar days (saturating).
    pub fn add_days(&self, days: i64) -> Self {
        Timestamp(self.0.saturating_add(days.saturating_mul(MS_PER_DAY)))
    }

    /// This instant plus `days` business days (Monday to Friday), saturating. Starting
    /// on a weekend counts from the next Monday's same time of day. Constant time:
    /// whole weeks first, then the rest.
    pub fn add_business_days(&self, days: u32) -> Self {
        if days == 0 {
            return *self;
        }
        let w = i64::from(self.weekday());
        // From a Saturday or Sunday the following business days are those that
        // follow the Friday before.
        let (base, w) = if w >= 5 {
            (self.add_days(4 - w), 4)
        } else {
            (*self, w)
        };
        let n = i64::from(days);
        let rest = n % 5;
        let mut calendar = n / 5 * 7 + rest;
        if w + rest >= 5 {
            calendar += 2;
        }
        base.add_days(calendar)
    }

    /// This instant plus `days` business days: Monday to Friday except the dates in
    /// `holidays`, which must be ascending and each once, as a validated policy's are
    /// (debug builds assert it; otherwise the answer is unspecified). A business day that
    /// is a holiday is skipped like a weekend; starting on a holiday counts from the
    /// next business day, as starting on a weekend does. Saturating.
    ///
    /// ```
    /// use trustfold_core::time::{Date, Timestamp};
    /// let thursday: Timestamp = "2026-12-24T12:00:00Z".parse()?;
    /// let christmas: Date = "2026-12-25".parse()?;
    /// assert_eq!(thursday.add_business_days_except(1, &[christmas]).to_string(),
    ///            "2026-12-28T12:00:00Z"); // Monday
    /// assert_eq!(thursday.add_business_days_except(1, &[]).to_string(),
    ///            "2026-12-25T12:00:00Z");
    /// # Ok::<(), trustfold_core::Error>(())
    /// ```
    pub fn add_business_days_except(&self, days: u32, holidays: &[Date]) -> Self {
        debug_assert!(
            holidays.windows(2).all(|w| w[0] < w[1]),
            "holidays ascending, each once (as Policy::validate requires)"
        );
        let mut end = self.add_business_days(days);
        if days == 0 {
            return end;
        }
        let start = self.day();
        // Each weekday holiday in (start, end] takes one business day out of the
        // interval, so the end moves on by one; holidays are ascending, so those the
        // moved end newly covers come later in the loop.
        for h in holidays {
            if h.0 <= start || h.weekday() >= 5 {
                continue;
            }
            if h.0 > end.day() {
                break;
            }
            end = end.add_business_days(1);
        }
        end
    }

    /// The UTC day this instant falls on, in days since 1970-01-01.
    fn day(&self) -> i64 {
        self.0.div_euclid(MS_PER_DAY)
    }

    /// The earliest instant a timestamp can be written as: `0000-01-01T00:00:00Z`.
    pub const MIN: Timestamp = Timestamp(-62_167_219_200_000);
    /// The latest instant a timestamp can be written as: `9999-12-31T23:59:59.999Z`.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// `Some(self)` when this instant can be written as RFC 3339 with a four-digit
    /// year (between [`Timestamp::MIN`] and [`Timestamp::MAX`]), the only form
    /// [`Timestamp::from_str`] reads back.
    ///
    /// ```
    /// use trustfold_core::time::Timestamp;
    /// let t: Timestamp = "9999-12-30T00:00:00Z".parse()?;
    /// assert!(t.add_days(1).in_range().is_some());
    /// assert!(t.add_days(2).in_range().is_none()); // year 10000
    /// # Ok::<(), trustfold_core::Error>(())
    /// ```
    pub fn in_range(self) -> Option<Self> {
        (Self::MIN..=Self::MAX).contains(&self).then_some(self)
    }

    /// Day of week, 0 = Monday … 6 = Sunday.
    pub fn weekday(&self) -> u8 {
        let days = self.0.div_euclid(MS_PER_DAY);
        // 1970-01-01 was a Thursday (3).
        ((days + 3).rem_euclid(7)) as u8
    }
}

/// A calendar day (UTC), written `YYYY-MM-DD`: a policy's holidays.
///
/// ```
/// use trustfold_core::time::Date;
/// let d: Date = "2026-12-25".parse()?;
/// assert_eq!(d.to_string(), "2026-12-25");
/// assert_eq!("2026-02-29".parse::<Date>().unwrap_err().code(), "invalid_date");
/// # Ok::<(), trustfold_core::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date(i64);

impl Date {
    /// Day of week, 0 = Monday … 6 = Sunday.
    pub fn weekday(&self) -> u8 {
        ((self.0 + 3).rem_euclid(7)) as u8
    }
}

impl FromStr for Date {
    type Err = Error;
    /// Exactly `YYYY-MM-DD`, a day that exists (years 0000–9999).
    fn from_str(s: &str) -> Result<Self, Error> {
        let b = s.as_bytes();
        (b.len() == 10)
            .then(|| civil_day(b))
            .flatten()
            .map(Date)
            .ok_or_else(|| Error::InvalidDate(crate::error::echo(s)))
    }
}

impl fmt::Display for Date {
    /// `YYYY-MM-DD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl fmt::Debug for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Cow<'de, str> = Cow::deserialize(d)?;
        s.parse()
            .map_err(|e: Error| D::Error::custom(crate::money::tagged(&e)))
    }
}

// Howard Hinnant's civil-from-days and days-from-civil algorithms.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// The number the ASCII digits `b[r]` spell, if they are all digits.
fn digits(b: &[u8], r: std::ops::Range<usize>) -> Option<u32> {
    b.get(r)?.iter().try_fold(0u32, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

/// The day `YYYY-MM-DD` that `b` starts with, in days since 1970-01-01, if it exists
/// (a timestamp's date and a [`Date`] are read alike).
fn civil_day(b: &[u8]) -> Option<i64> {
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let (y, m, d) = (digits(b, 0..4)?, digits(b, 5..7)?, digits(b, 8..10)?);
    ((1..=12).contains(&m) && d >= 1 && d <= days_in_month(i64::from(y), m))
        .then(|| days_from_civil(i64::from(y), m, d))
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| digits(b, r);
    if b.len() < 20 || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = civil_day(b)?;
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_min: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = i64::from(num(i + 1..i + 3)?);
            let om = i64::from(num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 60 + om;
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let secs =
        days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec) - offset_min * 60;
    Some(secs * 1000 + millis)
}

impl FromStr for Timestamp {
    type Err = Error;
    /// An RFC 3339 instant with a four-digit year, whose offset does not carry it
    /// outside years 0000–9999 (`9999-12-31T23:59:59-23:59` is in year 10000, which no
    /// history can hold: every instant read can be written back).
    fn from_str(s: &str) -> Result<Self, Error> {
        parse_rfc3339(s)
            .map(Timestamp)
            .and_then(Timestamp::in_range)
            .ok_or_else(|| Error::InvalidTimestamp(crate::error::echo(s)))
    }
}

impl fmt::Display for Timestamp {
    /// `YYYY-MM-DDTHH:MM:SSZ`, with `.mmm` only when the milliseconds are not zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(MS_PER_DAY);
        let ms_of_day = self.0.rem_euclid(MS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let secs = ms_of_day / 1000;
        let ms = ms_of_day % 1000;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            y,
            m,
            d,
            secs / 3600,
            (secs / 60) % 60,
            secs % 60
        )?;
        if ms != 0 {
            write!(f, ".{ms:03}")?;
        }
        f.write_str("Z")
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Cow<'de, str> = Cow::deserialize(d)?;
        s.parse()
            .map_err(|e: Error| D::Error::custom(crate::money::tagged(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59.999Z",
            "2026-11-26T05:35:15Z",
            "1969-12-31T23:59:59.500Z",
            "2400-12-31T00:00:00Z",
        ] {
            let t: Timestamp = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
    }

    #[test]
    fn business_days_match_counting_day_by_day() {
        fn by_counting(t: Timestamp, days: u32) -> Timestamp {
            let mut t = t;
            let mut left = days;
            while left > 0 {
                t = t.add_days(1);
                if t.weekday() < 5 {
                    left -= 1;
                }
            }
            t
        }
        let monday: Timestamp = "2026-11-23T17:30:00Z".parse().unwrap();
        for start in 0..14 {
            let t = monday.add_days(start).add_hours(start % 3);
            for days in 0..40 {
                assert_eq!(
                    t.add_business_days(days),
                    by_counting(t, days),
                    "{t} + {days}"
                );
            }
        }
        // Large counts are quick and saturate instead of wrapping.
        assert_eq!(
            monday.add_business_days(5 * 100_000).to_string(),
            monday.add_days(7 * 100_000).to_string()
        );
        assert_eq!(
            Timestamp::MAX.add_business_days(u32::MAX).in_range(),
            None,
            "past the last writable instant"
        );
    }

    #[test]
    fn business_days_except_holidays_match_counting_day_by_day() {
        fn by_counting(t: Timestamp, days: u32, holidays: &[Date]) -> Timestamp {
            let mut t = t;
            let mut left = days;
            while left > 0 {
                t = t.add_days(1);
                if t.weekday() < 5 && !holidays.contains(&Date(t.day())) {
                    left -= 1;
                }
            }
            t
        }
        let monday: Timestamp = "2026-11-23T17:30:00Z".parse().unwrap();
        let first = monday.day();
        // Calendars from a small generator: runs of holidays, weekend ones, a holiday
        // on the start day, none at all.
        let mut seed = 0x2545_f491_u64;
        for round in 0..300 {
            let mut holidays: Vec<Date> = Vec::new();
            let mut day = first - 3;
            while day < first + 80 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                day += 1 + (seed % (2 + round % 9)) as i64;
                holidays.push(Date(day));
            }
            let start = monday
                .add_days((round % 11) as i64)
                .add_hours(round as i64 % 5);
            for days in 0..30 {
                assert_eq!(
                    start.add_business_days_except(days, &holidays),
                    by_counting(start, days, &holidays),
                    "{start} + {days} except {holidays:?}"
                );
            }
        }
        assert_eq!(
            Timestamp::MAX
                .add_business_days_except(u32::MAX, &[Date(first)])
                .in_range(),
            None
        );
    }

    #[test]
    fn dates_parse_strictly() {
        for s in ["2026-12-25", "0000-01-01", "9999-12-31", "2024-02-29"] {
            assert_eq!(s.parse::<Date>().unwrap().to_string(), s);
        }
        for s in [
            "2026-12-5",
            "2026-13-01",
            "2026-00-10",
            "2025-02-29",
            "2026-12-25T00:00:00Z",
            "26-12-25",
            "2026/12/25",
            "",
            "２０２６-12-25",
            "+2026-12-25",
        ] {
            assert_eq!(s.parse::<Date>().unwrap_err().code(), "invalid_date", "{s}");
        }
        let d: Date = "2026-11-27".parse().unwrap();
        assert_eq!(d.weekday(), 4, "a Friday");
    }

    #[test]
    fn the_range_is_what_parses() {
        assert_eq!(Timestamp::MIN, "0000-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(Timestamp::MAX, "9999-12-31T23:59:59.999Z".parse().unwrap());
        // An offset that carries the instant past either end is refused, not read as
        // a time no history can write.
        for s in ["9999-12-31T23:59:59-23:59", "0000-01-01T00:00:00+00:01"] {
            assert_eq!(
                s.parse::<Timestamp>().unwrap_err().code(),
                "invalid_timestamp",
                "{s}"
            );
        }
        assert!("9999-12-31T23:59:59+01:00".parse::<Timestamp>().is_ok());
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(Timestamp::MIN.to_string(), "0000-01-01T00:00:00Z");
        let after = Timestamp::from_unix_millis(Timestamp::MAX.unix_millis() + 1);
        assert!(after.in_range().is_none());
        assert!(after.to_string().parse::<Timestamp>().is_err());
        let before = Timestamp::from_unix_millis(Timestamp::MIN.unix_millis() - 1);
        assert!(before.in_range().is_none());
    }

    #[test]
    fn rejects_bad_input() {
        for s in [
            "",
            "2026-02-30T00:00:00Z",
            "2026-11-26 05:35:15Z",
            "2026-11-26T05:35:15",
            "2026-11-26T24:00:00Z",
            "2026-11-26T05:35:15.Z",
            "2026-11-26T05:35:15+1:00",
            "2026-13-01T00:00:00Z",
            "２026-11-26T05:35:15Z",
        ] {
            assert!(s.parse::<Timestamp>().is_err(), "{s}");
        }
    }

    #[test]
    fn weekdays_and_business_days() {
        let sat: Timestamp = "2026-11-28T10:00:00Z".parse().unwrap();
        assert_eq!(sat.weekday(), 5);
        assert_eq!(sat.add_business_days(1).to_string(), "2026-11-30T10:00:00Z");
        assert_eq!(sat.add_business_days(0), sat);
    }
}
