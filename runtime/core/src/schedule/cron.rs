//! Cron expressions in a time zone, and the rules for daylight-saving
//! changes.
//!
//! Matching is croner's, on the wall clock of the schedule's zone. Turning a
//! wall-clock match into an instant is done here, so the DST rules are
//! ours and stated once:
//! - a wall-clock time that does not exist (spring forward) fires at the
//!   first instant after the gap (as Vixie cron does): `30 2 * * *` in
//!   Europe/Berlin fires at 03:00 CEST on the last Sunday of March;
//! - a wall-clock time that occurs twice (fall back) fires once, at its
//!   first occurrence: `30 2 * * *` fires at 02:30 CEST, not again at
//!   02:30 CET.

use chrono::offset::LocalResult;
use chrono::{DateTime, NaiveDateTime, TimeDelta, TimeZone as _, Timelike as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use super::InvalidSchedule;

/// A parsed cron expression bound to its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    zone: Tz,
}

/// Macros accepted in place of the five fields.
const MACROS: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

impl CronSchedule {
    /// Parses `expression` (5 fields, minute first; 6 with seconds first; or
    /// a macro such as `@daily`) in the IANA zone `timezone`. Errors name the
    /// field (`cron` or `timezone`) and say what is accepted.
    pub fn parse(expression: &str, timezone: &str) -> Result<CronSchedule, InvalidSchedule> {
        let zone: Tz = timezone.parse().map_err(|_| {
            InvalidSchedule::new(
                "timezone",
                format!(
                    "unknown time zone {timezone:?}: use an IANA name such as Europe/Berlin, \
                     America/New_York or UTC"
                ),
            )
        })?;
        let trimmed = expression.trim();
        let bad = |why: String| {
            InvalidSchedule::new(
                "cron",
                format!(
                    "{expression:?} is not a cron expression: {why}; use 5 fields (minute hour \
                     day-of-month month day-of-week), 6 with seconds first, or a macro such as \
                     @daily"
                ),
            )
        };
        if trimmed.starts_with('@') {
            if !MACROS.iter().any(|m| m.eq_ignore_ascii_case(trimmed)) {
                return Err(bad(format!("unknown macro (known: {})", MACROS.join(", "))));
            }
        } else {
            let fields = trimmed.split_whitespace().count();
            if fields != 5 && fields != 6 {
                return Err(bad(format!("it has {fields} fields")));
            }
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(trimmed).map_err(|e| bad(e.to_string()))?;
        let schedule = CronSchedule { cron, zone };
        // Without years a cron expression repeats, so one that matches no
        // date after 1970 matches none ever (and no clock is read here).
        if schedule.next_after(DateTime::UNIX_EPOCH).is_none() {
            return Err(bad("it never matches a date".into()));
        }
        Ok(schedule)
    }

    /// The first fire time strictly after `after`, or `None` when the
    /// expression matches no date (e.g. February 30th).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut wall = after.with_timezone(&self.zone).naive_local();
        // Bounded: at most one hour of second-by-second matches are skipped
        // in the repeated hour of a fall-back night.
        for _ in 0..10_000 {
            let candidate = self.cron.find_next_occurrence(&wall, false).ok()?;
            let instant = self.instant(candidate)?;
            if instant > after {
                return Some(instant);
            }
            wall = candidate;
        }
        None
    }

    /// The next `count` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        let mut at = after;
        while out.len() < count {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    /// The instant a wall-clock match fires at, by the rules above.
    fn instant(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.zone.from_local_datetime(&wall) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            LocalResult::None => {
                // In a gap: the first whole minute that exists is where the
                // clocks jumped to.
                let mut probe = wall.with_second(0)? + TimeDelta::minutes(1);
                for _ in 0..24 * 60 {
                    if let Some(t) = self.zone.from_local_datetime(&probe).earliest() {
                        return Some(t.with_timezone(&Utc));
                    }
                    probe += TimeDelta::minutes(1);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn fires(cron: &str, zone: &str, after: &str, count: usize) -> Vec<String> {
        CronSchedule::parse(cron, zone)
            .unwrap()
            .upcoming(utc(after), count)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect()
    }

    #[test]
    fn five_fields_six_fields_and_macros() {
        assert_eq!(
            fires("0 9 * * MON", "Europe/Berlin", "2026-11-25T00:00:00Z", 2),
            ["2026-11-30T08:00:00+00:00", "2026-12-07T08:00:00+00:00"]
        );
        assert_eq!(
            fires("*/20 * * * * *", "UTC", "2026-11-25T00:00:05Z", 3),
            [
                "2026-11-25T00:00:20+00:00",
                "2026-11-25T00:00:40+00:00",
                "2026-11-25T00:01:00+00:00"
            ]
        );
        assert_eq!(
            fires("@daily", "America/New_York", "2026-11-25T12:00:00Z", 1),
            ["2026-11-26T05:00:00+00:00"]
        );
    }

    #[test]
    fn spring_forward_fires_at_the_first_instant_after_the_gap() {
        // Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"]
        );
        // Every quarter hour: the four times in the gap collapse into one
        // fire at 03:00 CEST, then the clock goes on.
        assert_eq!(
            fires("*/15 * * * *", "Europe/Berlin", "2026-03-29T00:40:00Z", 4),
            [
                "2026-03-29T00:45:00+00:00",
                "2026-03-29T01:00:00+00:00",
                "2026-03-29T01:15:00+00:00",
                "2026-03-29T01:30:00+00:00"
            ]
        );
    }

    #[test]
    fn fall_back_fires_a_repeated_time_once() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET
        // (01:00 UTC); 02:30 happens at 00:30 UTC and again at 01:30 UTC.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]
        );
        // From inside the repeated hour, the second 02:30 is not a fire.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-10-25T01:10:00Z", 1),
            ["2026-10-26T01:30:00+00:00"]
        );
        // Hourly: 02:00 fires once, and the next is 03:00 CET.
        assert_eq!(
            fires("0 * * * *", "Europe/Berlin", "2026-10-24T23:30:00Z", 3),
            [
                "2026-10-25T00:00:00+00:00",
                "2026-10-25T02:00:00+00:00",
                "2026-10-25T03:00:00+00:00"
            ]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = CronSchedule::parse("61 * * * *", "UTC").unwrap_err();
        assert_eq!(err.field, "cron");
        let err = CronSchedule::parse("* * * *", "UTC").unwrap_err();
        assert!(err.message.contains("4 fields"), "{}", err.message);
        let err = CronSchedule::parse("0 0 * * * * 2030", "UTC").unwrap_err();
        assert_eq!(err.field, "cron");
        let err = CronSchedule::parse("@fortnightly", "UTC").unwrap_err();
        assert!(err.message.contains("unknown macro"), "{}", err.message);
        let err = CronSchedule::parse("0 0 30 2 *", "UTC").unwrap_err();
        assert!(err.message.contains("never matches"), "{}", err.message);
        let err = CronSchedule::parse("0 9 * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(err.field, "timezone");
    }
}
