//! Grandfather-father-son retention, in one place for every part of Cairn that applies it:
//! `cairn repo forget` (repository snapshots), DR points (the DR blueprint, a WebAssembly
//! guest, which is why this crate has no dependencies) and the catalog's backup policies.
//!
//! A rule keeps the newest item of each of the last N periods that have items: hours, days,
//! ISO weeks (Monday to Sunday), months and years, in UTC or a time zone's; `last` keeps the newest N items
//! whatever their age, and `within` every item made within that long of the newest (so a pause
//! in backups does not age everything out): calendar months (`within_months`, as restic's
//! `--keep-within 1y2m` counts them back from the newest item's date) and then seconds. An item
//! kept by any rule is kept.
//!
//! ```
//! use cairn_retention::Retention;
//!
//! const HOUR: i64 = 3_600;
//! // Four items an hour apart, on 2026-12-02 from 05:00 UTC.
//! let times: Vec<i64> = (0..4).map(|h| 1_796_187_600 + h * HOUR).collect();
//! let keep = Retention::new().last(1).daily(1).keep(&times);
//! assert_eq!(keep[3], ["last", "daily"]);
//! assert!(keep[..3].iter().all(Vec::is_empty));
//! ```

use std::collections::BTreeSet;

/// How many items each rule keeps; zero turns a rule off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct Retention {
    /// The newest items, whatever their age.
    pub last: u32,
    /// The newest of each of the last N hours that have items.
    pub hourly: u32,
    /// ... days.
    pub daily: u32,
    /// ... ISO weeks.
    pub weekly: u32,
    /// ... months.
    pub monthly: u32,
    /// ... years.
    pub yearly: u32,
    /// Every item at most this many seconds older than the newest item (after
    /// `within_months`).
    pub within: u64,
    /// Every item at most this many calendar months older than the newest item: the same day
    /// of the month that many months before (the month's last day when it is shorter).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "is_zero"))]
    pub within_months: u32,
}

#[cfg(feature = "serde")]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The rules that are on, as `last 3, daily 7` (`nothing` when none is).
impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules = [
            ("last", u64::from(self.last)),
            ("hourly", u64::from(self.hourly)),
            ("daily", u64::from(self.daily)),
            ("weekly", u64::from(self.weekly)),
            ("monthly", u64::from(self.monthly)),
            ("yearly", u64::from(self.yearly)),
        ];
        let mut on: Vec<String> = rules
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        if self.within > 0 || self.within_months > 0 {
            on.push(format!("within {}", self.within_text()));
        }
        if on.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&on.join(", "))
        }
    }
}

impl Retention {
    /// Keeps nothing until rules are set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets keep-last.
    #[must_use]
    pub fn last(mut self, n: u32) -> Self {
        self.last = n;
        self
    }

    /// Sets keep-hourly.
    #[must_use]
    pub fn hourly(mut self, n: u32) -> Self {
        self.hourly = n;
        self
    }

    /// Sets keep-daily.
    #[must_use]
    pub fn daily(mut self, n: u32) -> Self {
        self.daily = n;
        self
    }

    /// Sets keep-weekly.
    #[must_use]
    pub fn weekly(mut self, n: u32) -> Self {
        self.weekly = n;
        self
    }

    /// Sets keep-monthly.
    #[must_use]
    pub fn monthly(mut self, n: u32) -> Self {
        self.monthly = n;
        self
    }

    /// Sets keep-yearly.
    #[must_use]
    pub fn yearly(mut self, n: u32) -> Self {
        self.yearly = n;
        self
    }

    /// Sets keep-within, in seconds.
    #[must_use]
    pub fn within(mut self, secs: u64) -> Self {
        self.within = secs;
        self
    }

    /// Sets keep-within's calendar months (counted back before its seconds).
    #[must_use]
    pub fn within_months(mut self, months: u32) -> Self {
        self.within_months = months;
        self
    }

    /// Reads keep-within as a user writes it, into calendar months and seconds: numbers with
    /// units, largest first or not, spaces optional (`1y 6mo`, `7d`, `36h`, `90min`): `y`
    /// (12 months), `mo`, `w`, `d`, `h`, `min`, `s`, or their names (`years`, `month`, …). A
    /// bare `m` is refused: restic reads it as months, other tools as minutes.
    pub fn parse_within(text: &str) -> Result<(u32, u64), String> {
        Self::parse_within_as(text, false)
    }

    /// A fixed period (a repository's protection) written as [`Retention::parse_within`]
    /// reads keep-within, a month counted as 30 days and a year as 365: `30d`, `6mo`, `1y`. A
    /// bare `m` is refused here too: `1m` meant as a month must not protect for a minute.
    pub fn parse_period(text: &str) -> Result<std::time::Duration, String> {
        let (months, secs) = Self::parse_within(text)?;
        let days = u64::from(months / 12) * 365 + u64::from(months % 12) * 30;
        days.checked_mul(86_400)
            .and_then(|d| d.checked_add(secs))
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| format!("`{text}` is too long"))
    }

    /// A period as people read it: `30 days`, or `1d 12h`, `90min` when not whole days.
    pub fn period_text(period: std::time::Duration) -> String {
        let secs = period.as_secs();
        match secs / 86_400 {
            days if secs.is_multiple_of(86_400) && days > 0 => {
                format!("{days} day{}", if days == 1 { "" } else { "s" })
            }
            _ => Self::default().within(secs).within_text(),
        }
    }

    /// [`Retention::parse_within`] as policy files of earlier releases were written and shown:
    /// `m` is minutes there, and `M` months (`90m`, `1h 30m`, `1M`).
    pub fn parse_within_legacy(text: &str) -> Result<(u32, u64), String> {
        Self::parse_within_as(text, true)
    }

    fn parse_within_as(text: &str, m_is_minutes: bool) -> Result<(u32, u64), String> {
        let (mut months, mut secs) = (0u64, 0u64);
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err("an empty duration: give one such as 30d, 12h or 1y".into());
        }
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let n: u64 = rest[..digits].parse().map_err(|_| {
                format!("`{text}`: a number goes before each unit (30d, 12h, 1y 6mo)")
            })?;
            rest = rest[digits..].trim_start();
            if rest.starts_with(['.', ',']) {
                return Err(format!(
                    "`{text}`: whole numbers only; write a fraction in a smaller unit (36h for \
                     1.5d)"
                ));
            }
            let letters = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .len();
            let given = &rest[..letters];
            let unit = match given {
                "m" if m_is_minutes => "min".to_owned(),
                "M" if m_is_minutes => "mo".to_owned(),
                _ => given.to_ascii_lowercase(),
            };
            rest = rest[letters..].trim_start();
            let (to_months, to_secs) = match unit.as_str() {
                "y" | "yr" | "yrs" | "year" | "years" => (12, 0),
                "mo" | "mon" | "month" | "months" => (1, 0),
                "w" | "week" | "weeks" => (0, 7 * 86_400),
                "d" | "day" | "days" => (0, 86_400),
                "h" | "hr" | "hrs" | "hour" | "hours" => (0, 3_600),
                "min" | "mins" | "minute" | "minutes" => (0, 60),
                "s" | "sec" | "secs" | "second" | "seconds" => (0, 1),
                "m" => {
                    return Err(format!(
                        "`{text}`: `m` could be minutes or months (restic reads months): write \
                         `{n}mo` for months or `{n}min` for minutes"
                    ));
                }
                "" => {
                    return Err(format!(
                        "`{text}`: {n} needs a unit: {n}d, {n}h, {n}min, {n}mo or {n}y"
                    ));
                }
                other => {
                    return Err(format!(
                        "`{text}`: unknown unit `{other}` (y, mo, w, d, h, min, s)"
                    ));
                }
            };
            months = n
                .checked_mul(to_months)
                .and_then(|m| months.checked_add(m))
                .ok_or_else(|| format!("`{text}` is too long"))?;
            secs = n
                .checked_mul(to_secs)
                .and_then(|s| secs.checked_add(s))
                .ok_or_else(|| format!("`{text}` is too long"))?;
        }
        let months = u32::try_from(months).map_err(|_| format!("`{text}` is too long"))?;
        Ok((months, secs))
    }

    /// Keep-within as [`Retention::parse_within`] reads it back (`1y 6mo 3d 12h`, `0s`).
    pub fn within_text(&self) -> String {
        let m = self.within_months;
        let mut parts: Vec<String> = [(m / 12, "y"), (m % 12, "mo")]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, unit)| format!("{n}{unit}"))
            .collect();
        let mut left = self.within;
        for (unit, name) in [(86_400, "d"), (3_600, "h"), (60, "min"), (1, "s")] {
            if left >= unit {
                parts.push(format!("{}{name}", left / unit));
                left %= unit;
            }
        }
        if parts.is_empty() {
            "0s".to_owned()
        } else {
            parts.join(" ")
        }
    }

    /// Whether no rule is set (applied, it would keep nothing).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// For each of `times` (unix seconds, in any order), the names of the rules that keep it,
    /// in the order `last`, `within`, `hourly`, `daily`, `weekly`, `monthly`, `yearly`; empty
    /// when none does. Of items with the same time, the later in `times` counts as the newer.
    /// Periods are UTC's; [`Retention::keep_in`] takes them in a time zone.
    pub fn keep(&self, times: &[i64]) -> Vec<Vec<&'static str>> {
        self.keep_in(times, |_| 0)
    }

    /// [`Retention::keep`] with hours, days, weeks, months and years, and `within`'s calendar
    /// months, those of a time zone: `offset` gives its offset from UTC, in seconds, at a unix
    /// time (so a daily backup at 00:30 in Paris falls on its own day, not on the UTC day
    /// before). Items are still ordered by their unix time.
    pub fn keep_in(&self, times: &[i64], offset: impl Fn(i64) -> i64) -> Vec<Vec<&'static str>> {
        self.keep_in_until(times, offset, i64::MAX)
    }

    /// [`Retention::keep_in`] with `within` counted back from `now` (unix seconds) when the
    /// newest item is dated after it: an item dated in the future (made while the clock was
    /// set forward) must not move the window past every item made since.
    pub fn keep_in_until(
        &self,
        times: &[i64],
        offset: impl Fn(i64) -> i64,
        now: i64,
    ) -> Vec<Vec<&'static str>> {
        let mut order: Vec<usize> = (0..times.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse((times[i], i)));
        let mut keep = vec![Vec::new(); times.len()];
        for &i in order.iter().take(self.last as usize) {
            keep[i].push("last");
        }
        if let (Some(&newest), true) = (order.first(), self.within > 0 || self.within_months > 0) {
            // Months are counted back on the zone's calendar, then taken back to unix time
            // at that date's offset (a daylight-saving change between the two moves it).
            let anchor = times[newest].min(now);
            let local = anchor.saturating_add(offset(anchor));
            let back = months_before(local, self.within_months);
            let mut at = back.saturating_sub(offset(anchor));
            for _ in 0..2 {
                at = back.saturating_sub(offset(at));
            }
            let since = at.saturating_sub(i64::try_from(self.within).unwrap_or(i64::MAX));
            for &i in order.iter().take_while(|&&i| times[i] >= since) {
                keep[i].push("within");
            }
        }
        let periods = [
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ];
        for (period, (name, n)) in periods.into_iter().enumerate() {
            let mut seen = BTreeSet::new();
            for &i in &order {
                if seen.len() >= n as usize {
                    break;
                }
                if seen.insert(periods_of(times[i].saturating_add(offset(times[i])))[period]) {
                    keep[i].push(name);
                }
            }
        }
        keep
    }
}

/// Days since 1970-01-01 to (year, month), proleptic Gregorian (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, u32::try_from(month).unwrap_or(1))
}

/// Unix time `t` moved `months` calendar months back: the same time of day on the same day of
/// the month, or on the month's last day when it is shorter.
fn months_before(t: i64, months: u32) -> i64 {
    if months == 0 {
        return t;
    }
    let (days, time) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let (year, month, day) = civil_date(days);
    let total = year * 12 + i64::from(month) - 1 - i64::from(months);
    let (year, month) = (
        total.div_euclid(12),
        u32::try_from(total.rem_euclid(12) + 1).unwrap_or(1),
    );
    let last = days_in_month(year, month);
    days_from_civil(year, month, day.min(last)) * 86_400 + time
}

/// Days since 1970-01-01 to (year, month, day).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let (year, month) = civil(days);
    let day = days - days_from_civil(year, month, 1) + 1;
    (year, month, u32::try_from(day).unwrap_or(1))
}

/// (year, month, day) to days since 1970-01-01, proleptic Gregorian (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The hour, day, ISO week, month and year of unix time `t`, each as a number that differs
/// exactly when the period does.
fn periods_of(t: i64) -> [i64; 5] {
    let days = t.div_euclid(86_400);
    let (year, month) = civil(days);
    [
        t.div_euclid(3_600),
        days,
        // ISO weeks start on Monday; 1970-01-01 was a Thursday.
        (days + 3).div_euclid(7),
        year * 12 + i64::from(month),
        year,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600;
    const DAY: i64 = 86_400;
    /// 2026-12-02T05:00:00Z, a Wednesday.
    const T: i64 = 1_796_187_600;

    fn kept(keep: &[Vec<&str>]) -> Vec<usize> {
        (0..keep.len()).filter(|&i| !keep[i].is_empty()).collect()
    }

    #[test]
    fn shown_as_the_rules_that_are_on() {
        assert_eq!(Retention::new().to_string(), "nothing");
        let r = Retention {
            last: 3,
            daily: 7,
            within: 60,
            ..Retention::new()
        };
        assert_eq!(r.to_string(), "last 3, daily 7, within 1min");
    }

    #[test]
    fn calendar_periods() {
        assert_eq!(civil(T / DAY), (2026, 12));
        assert_eq!(civil(0), (1970, 1));
        assert_eq!(civil(-1), (1969, 12));
        assert_eq!(civil(11_016), (2000, 2)); // 2000-02-29
        // Monday 2026-11-30 and Sunday 2026-12-06 share an ISO week; Monday 12-07 does not.
        let monday = T - 2 * DAY;
        assert_eq!(periods_of(monday)[2], periods_of(T + 4 * DAY)[2]);
        assert_ne!(periods_of(monday)[2], periods_of(T + 5 * DAY)[2]);
        // Sunday 2026-01-04 ends ISO week 1 of 2026, which began in 2025.
        let sunday = 1_767_484_800;
        assert_eq!(periods_of(sunday)[2], periods_of(sunday - 6 * DAY)[2]);
        // 23:59:59 and 00:00:00 are different days, hours and (here) months and years.
        let new_year = 1_798_761_600; // 2027-01-01T00:00:00Z
        let [h0, d0, _, m0, y0] = periods_of(new_year - 1);
        let [h1, d1, _, m1, y1] = periods_of(new_year);
        assert!(h0 != h1 && d0 != d1 && m0 != m1 && y0 != y1);
    }

    #[test]
    fn within_keeps_everything_close_to_the_newest() {
        // Daily items for ten days, then a pause of thirty: the last three days' items are
        // kept, measured from the newest item rather than from now.
        let times: Vec<i64> = (0..10).map(|d| T + d * DAY).collect();
        let keep = Retention::new().within(2 * DAY as u64).keep(&times);
        assert_eq!(kept(&keep), [7, 8, 9]);
        assert_eq!(keep[9], ["within"]);
        let keep = Retention::new().last(1).within(1).daily(1).keep(&times);
        assert_eq!(keep[9], ["last", "within", "daily"]);
        assert_eq!(kept(&keep), [9]);
        assert!(Retention::new().within(DAY as u64).keep(&[]).is_empty());
        assert!(!Retention::new().within(1).is_empty());
    }

    #[test]
    fn within_counts_back_from_now_past_an_item_dated_in_the_future() {
        // Daily items for ten days and one dated a year ahead (the clock was set forward):
        // counted from now (the tenth day), `within` keeps the last three days' items and the
        // future one, not the future one alone.
        let mut times: Vec<i64> = (0..10).map(|d| T + d * DAY).collect();
        times.push(T + 365 * DAY);
        let r = Retention::new().within(2 * DAY as u64);
        assert_eq!(
            kept(&r.keep_in_until(&times, |_| 0, T + 9 * DAY)),
            [7, 8, 9, 10]
        );
        assert_eq!(kept(&r.keep(&times)), [10]);
        // An anchor after the newest item changes nothing.
        assert_eq!(
            kept(&r.keep_in_until(&times[..10], |_| 0, i64::MAX)),
            [7, 8, 9]
        );
    }

    #[test]
    fn periods_in_a_time_zone_are_its_calendar_s() {
        // Daily at 00:30 in UTC+1 (23:30 UTC the day before) for three days, and one at 23:00
        // of the third: in UTC the first three fall on three days; in UTC+1, the last two
        // share the third day, so two daily rules keep the last and the first.
        let day3 = at(2026, 12, 3, 0);
        let times = [
            day3 - 2 * DAY - HOUR / 2,
            day3 - DAY - HOUR / 2,
            day3 - HOUR / 2,
            day3 + 22 * HOUR,
        ];
        let daily = Retention::new().daily(2);
        assert_eq!(kept(&daily.keep(&times)), [2, 3]);
        assert_eq!(kept(&daily.keep_in(&times, |_| HOUR)), [1, 3]);
        // A month back from 2026-03-31 00:30 in UTC+1 (03-30 23:30 UTC) is February's last
        // day there, 02-28 00:30, which is 02-27 23:30 UTC; counted in UTC, it is 02-28 23:30.
        let newest = at(2026, 3, 30, 23) + HOUR / 2;
        let times = [at(2026, 2, 28, 0), newest];
        let month = Retention::new().within_months(1);
        assert_eq!(kept(&month.keep(&times)), [1]);
        assert_eq!(kept(&month.keep_in(&times, |_| HOUR)), [0, 1]);
        // Across a daylight-saving change: six months back from 2026-01-15 00:30 in UTC+1 is
        // 2025-07-15 00:30 in UTC+2 (summer), 2025-07-14 22:30 UTC; items at 00:45 and 01:00
        // there are within it (with winter's offset the edge fell an hour later, past them).
        let summer_from = at(2025, 3, 30, 1);
        let paris = |t: i64| {
            if t >= summer_from && t < at(2025, 10, 26, 1) {
                2 * HOUR
            } else {
                HOUR
            }
        };
        let times = [
            at(2025, 7, 14, 22) + 45 * 60,
            at(2025, 7, 14, 23),
            at(2026, 1, 14, 23) + HOUR / 2,
        ];
        let half_year = Retention::new().within_months(6);
        assert_eq!(kept(&half_year.keep_in(&times, paris)), [0, 1, 2]);
    }

    /// Unix time of a UTC date and time.
    fn at(year: i64, month: u32, day: u32, hour: i64) -> i64 {
        days_from_civil(year, month, day) * DAY + hour * HOUR
    }

    #[test]
    fn within_months_count_back_calendar_months_as_restic_does() {
        assert_eq!(at(1970, 1, 1, 0), 0);
        assert_eq!(at(2026, 12, 2, 5), T);
        // A year back from 2024-06-30 22:00 is 2023-06-30 22:00: 2023-07-01 is within it,
        // where 365.25 days would not reach it (2024 is a leap year).
        let times = [at(2023, 6, 30, 21), at(2023, 7, 1, 10), at(2024, 6, 30, 22)];
        let keep = Retention::new().within_months(12).keep(&times);
        assert_eq!(kept(&keep), [1, 2]);
        // The month's last day when it is shorter: a month before March 31 is February's
        // last day, and leap years count.
        assert_eq!(months_before(at(2023, 3, 31, 7), 1), at(2023, 2, 28, 7));
        assert_eq!(months_before(at(2024, 3, 31, 7), 1), at(2024, 2, 29, 7));
        assert_eq!(months_before(at(2024, 1, 15, 0), 13), at(2022, 12, 15, 0));
        assert_eq!(months_before(at(1969, 12, 31, 23), 1), at(1969, 11, 30, 23));
        // Months, then seconds.
        let r = Retention::new().within_months(1).within(DAY as u64);
        let times = [at(2024, 2, 14, 0), at(2024, 2, 15, 0), at(2024, 3, 16, 0)];
        assert_eq!(kept(&r.keep(&times)), [1, 2]);
        assert!(!Retention::new().within_months(1).is_empty());
    }

    #[test]
    fn within_is_read_with_its_units_and_shown_so_it_reads_back() {
        let parse = Retention::parse_within;
        assert_eq!(parse("7d"), Ok((0, 7 * 86_400)));
        assert_eq!(parse("1y 6mo"), Ok((18, 0)));
        assert_eq!(
            parse("1y6mo2w3d4h5min6s"),
            Ok((18, 17 * 86_400 + 4 * 3_600 + 306))
        );
        assert_eq!(parse(" 2 weeks 1 day "), Ok((0, 15 * 86_400)));
        assert_eq!(parse("36H"), Ok((0, 36 * 3_600)));
        // Policy files of earlier releases: `m` minutes, `M` months.
        let legacy = Retention::parse_within_legacy;
        assert_eq!(legacy("1h 30m"), Ok((0, 5_400)));
        assert_eq!(legacy("1M 2d"), Ok((1, 2 * 86_400)));
        assert_eq!(legacy("2mo"), Ok((2, 0)));
        for (bad, says) in [
            ("1m", "`1mo` for months or `1min` for minutes"),
            ("5", "5 needs a unit"),
            ("", "empty"),
            ("d", "a number goes before each unit"),
            ("1.5d", "whole numbers only"),
            ("3 fortnights", "unknown unit `fortnights`"),
            ("99999999999y", "too long"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        let r = Retention::new().within_months(18).within(3 * 86_400 + 90);
        assert_eq!(r.within_text(), "1y 6mo 3d 1min 30s");
        assert_eq!(parse(&r.within_text()), Ok((18, 3 * 86_400 + 90)));
        assert_eq!(r.to_string(), "within 1y 6mo 3d 1min 30s");
        assert_eq!(Retention::new().within_text(), "0s");
    }

    #[test]
    fn a_protection_period_is_read_as_keep_within_with_fixed_months() {
        let day = 86_400;
        let period = |t: &str| Retention::parse_period(t).map(|d| d.as_secs());
        assert_eq!(period("30d"), Ok(30 * day));
        assert_eq!(period("1mo"), Ok(30 * day));
        assert_eq!(period("1y 6mo"), Ok(545 * day));
        assert_eq!(period("90min"), Ok(5_400));
        // `1m` meant as a month must not protect for a minute.
        let e = period("1m").expect_err("ambiguous");
        assert!(e.contains("`1mo` for months"), "{e}");
        let text = |secs| Retention::period_text(std::time::Duration::from_secs(secs));
        assert_eq!(text(30 * day), "30 days");
        assert_eq!(text(day), "1 day");
        assert_eq!(text(day + 12 * 3_600), "1d 12h");
        assert_eq!(text(8), "8s");
    }

    #[test]
    fn keeps_the_newest_of_each_period() {
        // An item every hour for three days.
        let times: Vec<i64> = (0..72).map(|h| T + h * HOUR).collect();
        let keep = Retention::new().hourly(5).daily(3).keep(&times);
        let k = kept(&keep);
        // The last five hours, and the newest of each of the three days (the last day's is
        // the newest hour, already kept).
        assert!(k.ends_with(&[67, 68, 69, 70, 71]), "{k:?}");
        assert_eq!(k.len(), 5 + 2, "{k:?}");
        assert_eq!(keep[71], ["hourly", "daily"]);
        assert_eq!(kept(&Retention::new().last(2).keep(&times[..4])), [2, 3]);
        assert!(kept(&Retention::new().keep(&times)).is_empty());
        assert!(Retention::new().is_empty());
    }

    #[test]
    fn order_of_times_does_not_matter_and_ties_favour_the_later() {
        let times = [T + 2 * DAY, T, T + DAY, T + DAY];
        let keep = Retention::new().daily(2).keep(&times);
        assert_eq!(kept(&keep), [0, 3]);
        let monthly = Retention::new().monthly(5).yearly(1).keep(&times);
        assert_eq!(monthly[0], ["monthly", "yearly"]);
        assert_eq!(kept(&monthly), [0]);
    }
}
