//! The one HTTP date flocon writes: `Last-Modified` and `Date` as IMF-fixdate (RFC 9110
//! §5.6.7). flocon never reads a date: a client's `If-Modified-Since` goes to the mirror as it
//! came.

use std::time::{SystemTime, UNIX_EPOCH};

/// Latest date `http_date` writes: 9999-12-31T23:59:59Z, the last one with a 4-digit year.
const MAX_DATE_SECS: u64 = 253_402_300_799;

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const SECS_PER_DAY: i64 = 86_400;

/// IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT". Times before 1970 are written as the
/// epoch and times past year 9999 as its last second: neither is a real file time.
pub(crate) fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(MAX_DATE_SECS) as i64;
    let days = secs.div_euclid(SECS_PER_DAY);
    let in_day = secs.rem_euclid(SECS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 4 from Sunday).
    let weekday = WEEKDAYS[(days + 4).rem_euclid(7) as usize];
    format!(
        "{weekday}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        MONTHS[(month - 1) as usize],
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31), proleptic Gregorian.
/// Counting from 0000-03-01 puts the leap day last in each year, and 400-year eras repeat
/// exactly (146097 days), so each step is plain division.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    // Remove the leap days accumulated so far (every 4 years, except 100, except 400).
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March have lengths 31,30,31,30,31 repeating: 153 days per 5 months.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn days_in_month(year: i64, month: i64) -> i64 {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    /// The calendar walked one day at a time, the slow way `civil_from_days` must agree with.
    fn next_day((y, m, d): (i64, i64, i64)) -> (i64, i64, i64) {
        if d < days_in_month(y, m) {
            (y, m, d + 1)
        } else if m < 12 {
            (y, m + 1, 1)
        } else {
            (y + 1, 1, 1)
        }
    }

    fn prev_day((y, m, d): (i64, i64, i64)) -> (i64, i64, i64) {
        if d > 1 {
            (y, m, d - 1)
        } else if m > 1 {
            (y, m - 1, days_in_month(y, m - 1))
        } else {
            (y - 1, 12, 31)
        }
    }

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_millis(1_700_000_000_999)),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH - Duration::from_secs(5)),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(u64::MAX / 4)),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
        // A spread of times, including leap days and century years, each written date checked
        // field by field against the calendar walked day by day (weekday included).
        let mut samples: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
        let mut s: u64 = 0;
        while s < MAX_DATE_SECS {
            samples.entry(s as i64 / SECS_PER_DAY).or_default().push(s);
            s += 86_400 * 97 + 3_607;
        }
        for s in [
            951_782_399,
            951_782_400,
            4_107_542_400,
            4_107_542_399,
            MAX_DATE_SECS,
        ] {
            samples.entry(s as i64 / SECS_PER_DAY).or_default().push(s);
        }
        let (mut date, mut weekday) = ((1970, 1, 1), 4);
        let mut checked = 0;
        for d in 0..=MAX_DATE_SECS as i64 / SECS_PER_DAY {
            assert_eq!(civil_from_days(d), date, "day {d}");
            for &s in samples.get(&d).into_iter().flatten() {
                let (y, m, day) = date;
                let want = format!(
                    "{}, {day:02} {} {y:04} {:02}:{:02}:{:02} GMT",
                    WEEKDAYS[weekday],
                    MONTHS[m as usize - 1],
                    s % 86_400 / 3600,
                    s % 3600 / 60,
                    s % 60
                );
                assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(s)), want, "{s}");
                checked += 1;
            }
            date = next_day(date);
            weekday = (weekday + 1) % 7;
        }
        assert_eq!(checked, samples.values().map(Vec::len).sum::<usize>());
        // Before the epoch too (never written, but the arithmetic must hold there as well).
        let mut date = (1970, 1, 1);
        for d in (-800_000..0i64).rev() {
            date = prev_day(date);
            assert_eq!(civil_from_days(d), date, "day {d}");
        }
    }
}
