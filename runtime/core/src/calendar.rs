//! Business-hours calendars (`[calendars.NAME]`): SLA clocks run only inside
//! their weekly hours, in their time zone, and never on their holidays, as
//! ServiceNow's SLA schedules do.
//!
//! ```toml
//! [calendars.office-hours]
//! timezone = "Europe/Berlin"
//! hours = { mon-fri = "08:00-18:00", sat = "09:00-12:00" }
//! holidays = ["2026-12-24", "2026-12-25"]
//! ```

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// How far ahead a due time is searched: a calendar with no hours at all
/// has no due time.
const SEARCH_DAYS: i64 = 3 * 366;

/// One calendar, parsed.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: Tz,
    /// Working windows per weekday, Monday first.
    week: [Vec<(NaiveTime, NaiveTime)>; 7],
    holidays: BTreeSet<NaiveDate>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Calendar {
    /// Parses one `[calendars.NAME]` table; errors name the key and what to
    /// write instead.
    pub fn parse(name: &str, value: &toml::Value) -> Result<Calendar, String> {
        let at = |key: &str| format!("[calendars.{name}] {key}");
        let table = value
            .as_table()
            .ok_or_else(|| format!("[calendars.{name}]: expected a table"))?;
        for key in table.keys() {
            if !["timezone", "hours", "holidays"].contains(&key.as_str()) {
                return Err(format!(
                    "{}: unknown key: use timezone, hours, holidays",
                    at(key)
                ));
            }
        }
        let tz_name = table
            .get("timezone")
            .and_then(toml::Value::as_str)
            .unwrap_or("UTC");
        let tz: Tz = tz_name.parse().map_err(|_| {
            format!(
                "{}: {tz_name:?} is not an IANA time zone such as Europe/Berlin",
                at("timezone")
            )
        })?;
        let mut week: [Vec<(NaiveTime, NaiveTime)>; 7] = Default::default();
        let hours = table
            .get("hours")
            .and_then(toml::Value::as_table)
            .ok_or_else(|| {
                format!(
                    "{}: expected e.g. {{ mon-fri = \"08:00-18:00\" }}",
                    at("hours")
                )
            })?;
        for (days, windows) in hours {
            let windows = windows.as_str().ok_or_else(|| {
                format!("{}: expected \"HH:MM-HH:MM\"", at(&format!("hours.{days}")))
            })?;
            for day in
                day_set(days).map_err(|e| format!("{}: {e}", at(&format!("hours.{days}"))))?
            {
                for window in windows.split(',') {
                    let parsed = parse_window(window.trim())
                        .map_err(|e| format!("{}: {e}", at(&format!("hours.{days}"))))?;
                    week[day].push(parsed);
                }
                week[day].sort();
            }
        }
        let mut holidays = BTreeSet::new();
        if let Some(list) = table.get("holidays") {
            let list = list
                .as_array()
                .ok_or_else(|| format!("{}: expected a list of dates", at("holidays")))?;
            for day in list {
                let text = day
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| day.to_string());
                let date = NaiveDate::parse_from_str(text.trim_matches('"'), "%Y-%m-%d").map_err(
                    |_| format!("{}: {text} is not a date like 2026-12-24", at("holidays")),
                )?;
                holidays.insert(date);
            }
        }
        Ok(Calendar { tz, week, holidays })
    }

    /// The working windows of one local date, in UTC.
    fn windows(&self, date: NaiveDate) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        if self.holidays.contains(&date) {
            return Vec::new();
        }
        let day = date.weekday().num_days_from_monday() as usize;
        self.week[day]
            .iter()
            .filter_map(|(start, end)| {
                // A local time that does not exist (spring forward) moves to
                // the next instant that does; one that exists twice takes
                // the first.
                let start = self.instant(date.and_time(*start))?;
                let end = self.instant(date.and_time(*end))?;
                (end > start).then_some((start, end))
            })
            .collect()
    }

    fn instant(&self, local: chrono::NaiveDateTime) -> Option<DateTime<Utc>> {
        let mut probe = local;
        for _ in 0..4 {
            if let Some(t) = self.tz.from_local_datetime(&probe).earliest() {
                return Some(t.with_timezone(&Utc));
            }
            probe += Duration::minutes(30);
        }
        None
    }

    fn local_date(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    /// Working time between `from` and `to`.
    pub fn elapsed(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
        if to <= from {
            return Duration::zero();
        }
        let mut total = Duration::zero();
        let mut date = self.local_date(from) - Duration::days(1);
        let last = self.local_date(to) + Duration::days(1);
        while date <= last {
            for (start, end) in self.windows(date) {
                let (a, b) = (start.max(from), end.min(to));
                if b > a {
                    total += b - a;
                }
            }
            date += Duration::days(1);
        }
        total
    }

    /// The instant when `amount` of working time has passed after `from`;
    /// `None` when the calendar has no hours in the next three years.
    pub fn add(&self, from: DateTime<Utc>, amount: Duration) -> Option<DateTime<Utc>> {
        let mut left = amount;
        let mut date = self.local_date(from) - Duration::days(1);
        for _ in 0..SEARCH_DAYS {
            for (start, end) in self.windows(date) {
                let start = start.max(from);
                if end <= start {
                    continue;
                }
                if end - start >= left {
                    return Some(start + left);
                }
                left -= end - start;
            }
            date += Duration::days(1);
        }
        None
    }
}

/// `mon-fri`, `sat`, `mon,wed,fri`, `daily` → weekday indexes.
fn day_set(text: &str) -> Result<Vec<usize>, String> {
    let index = |d: &str| {
        DAYS.iter()
            .position(|x| *x == d.trim().to_lowercase())
            .ok_or_else(|| format!("{d:?} is not a day: use mon, tue, wed, thu, fri, sat, sun"))
    };
    if text == "daily" {
        return Ok((0..7).collect());
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (index(a)?, index(b)?);
                if a > b {
                    return Err(format!("{part}: a range runs from Monday towards Sunday"));
                }
                out.extend(a..=b);
            }
            None => out.push(index(part)?),
        }
    }
    Ok(out)
}

fn parse_window(text: &str) -> Result<(NaiveTime, NaiveTime), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected HH:MM-HH:MM"))?;
    let time = |t: &str| {
        if t.trim() == "24:00" {
            return Ok(NaiveTime::from_hms_nano_opt(23, 59, 59, 999_999_999).unwrap());
        }
        NaiveTime::parse_from_str(t.trim(), "%H:%M")
            .map_err(|_| format!("{t:?} is not a time like 08:00"))
    };
    let (start, end) = (time(a)?, time(b)?);
    if end <= start {
        return Err(format!("{text:?}: the window ends before it starts"));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn office() -> Calendar {
        let value: toml::Value = toml::from_str(
            r#"
timezone = "Europe/Berlin"
hours = { mon-fri = "08:00-18:00" }
holidays = ["2026-12-24", "2026-12-25"]
"#,
        )
        .unwrap();
        Calendar::parse("office-hours", &value).unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn weekday_name(t: DateTime<Utc>, tz: &str) -> String {
        let tz: Tz = tz.parse().unwrap();
        let day: chrono::Weekday = t.with_timezone(&tz).weekday();
        day.to_string()
    }

    #[test]
    fn a_friday_evening_p3_is_due_on_the_right_weekday_hour() {
        let cal = office();
        // Friday 2026-11-27 19:00 Berlin (18:00 UTC), after hours; P3 = 3
        // business days of 10 h = 30 h: Mon, Tue, Wed all day → Wed 18:00.
        let due = cal
            .add(utc("2026-11-27T18:00:00Z"), Duration::hours(30))
            .unwrap();
        assert_eq!(due, utc("2026-12-02T17:00:00Z"));
        assert_eq!(weekday_name(due, "Europe/Berlin"), "Wed");
        // 4 hours from Friday 16:00 Berlin: 2 h on Friday, 2 h on Monday.
        let due = cal
            .add(utc("2026-11-27T15:00:00Z"), Duration::hours(4))
            .unwrap();
        assert_eq!(due, utc("2026-11-30T09:00:00Z"));
    }

    #[test]
    fn holidays_are_skipped() {
        let cal = office();
        // Wednesday 2026-12-23 17:00 Berlin + 2 h: 1 h left that day, the
        // 24th and 25th are holidays, the 26th and 27th a weekend → Monday 28th 09:00.
        let due = cal
            .add(utc("2026-12-23T16:00:00Z"), Duration::hours(2))
            .unwrap();
        assert_eq!(due, utc("2026-12-28T08:00:00Z"));
        assert_eq!(
            cal.elapsed(utc("2026-12-23T16:00:00Z"), utc("2026-12-28T08:00:00Z")),
            Duration::hours(2)
        );
    }

    #[test]
    fn elapsed_counts_only_working_hours_across_dst() {
        let cal = office();
        // Friday 2026-10-23 08:00 to Monday 2026-10-26 18:00 Berlin (DST ends
        // on Sunday the 25th): two working days of 10 h.
        let from = utc("2026-10-23T06:00:00Z");
        let to = utc("2026-10-26T17:00:00Z");
        assert_eq!(cal.elapsed(from, to), Duration::hours(20));
        assert_eq!(cal.add(from, Duration::hours(20)), Some(to));
    }

    #[test]
    fn bad_calendars_say_what_to_write() {
        let bad = |text: &str| {
            let value: toml::Value = toml::from_str(text).unwrap();
            Calendar::parse("c", &value).unwrap_err()
        };
        assert!(
            bad("timezone = \"Mars/Olympus\"\nhours = { mon = \"08:00-12:00\" }").contains("IANA")
        );
        assert!(bad("hours = { mon-fry = \"08:00-12:00\" }").contains("not a day"));
        assert!(bad("hours = { mon = \"18:00-08:00\" }").contains("ends before"));
        assert!(
            bad("hours = { mon = \"08:00-12:00\" }\nholidays = [\"24.12.\"]")
                .contains("not a date")
        );
    }
}
