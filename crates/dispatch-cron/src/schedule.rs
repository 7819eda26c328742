//! [`Schedule`]: a cron expression read in an IANA time zone, and the times it names.
//!
//! Parsing is croner's (seconds field optional, `L`, `W`, `#`, descriptors such as `@hourly`);
//! the calendar and time zone rules are jiff's, with the time zone database bundled into the
//! binary so no system tzdb is needed. Daylight saving time, for a daily `30 2 * * *`:
//!
//! - spring forward (02:30 does not exist that day): the entry fires once, at the first valid
//!   time after the gap, 03:00 local;
//! - fall back (02:30 happens twice): the entry fires once, at the earlier 02:30.
//!
//! Expressions that fire every minute or second fire through both halves of a repeated hour,
//! since each of those instants is a distinct time.

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use dispatch_core::{Error, Result, Timestamp};
use jiff::Zoned;
use jiff::tz::TimeZone;
use std::fmt;

/// A parsed cron expression in a time zone. Cheap to clone.
#[derive(Clone)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
    expression: String,
    timezone: String,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("expression", &self.expression)
            .field("timezone", &self.timezone)
            .finish()
    }
}

impl Schedule {
    /// Parse `expression` (five fields, six with seconds first, or a descriptor such as
    /// `@daily`) in the IANA time zone `timezone` (such as `Europe/Berlin` or `UTC`). A bad
    /// expression or an unknown zone is [`ErrorKind::InvalidInput`](dispatch_core::ErrorKind)
    /// naming it.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self> {
        let parser = CronParser::builder().seconds(Seconds::Optional).build();
        let cron = parser.parse(expression).map_err(|e| {
            Error::invalid_input(format!("invalid cron expression `{expression}`: {e}"))
                .with_source(e)
        })?;
        let zone = TimeZone::get(timezone).map_err(|e| {
            Error::invalid_input(format!("unknown time zone `{timezone}`: {e}")).with_source(e)
        })?;
        Ok(Self { cron, zone, expression: expression.to_owned(), timezone: timezone.to_owned() })
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone as given.
    pub fn timezone(&self) -> &str {
        &self.timezone
    }

    /// The first scheduled time strictly after `after`; `None` when there is none (an
    /// expression whose times have all passed, or past the calendar jiff supports).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        // Croner works in whole seconds: start from the second `after` falls in, so a time
        // inside that second (never a scheduled one) is not skipped or repeated.
        let start = self.zoned(floor_second(after))?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(from_zoned(&next))
    }

    /// The last scheduled time strictly before `before`; `None` when there is none.
    pub fn previous_before(&self, before: Timestamp) -> Option<Timestamp> {
        let floor = floor_second(before);
        let start = self.zoned(floor)?;
        // A `before` inside a second still counts that second's start as before it.
        let inclusive = floor < before;
        let previous = self.cron.find_previous_occurrence(&start, inclusive).ok()?;
        Some(from_zoned(&previous))
    }

    /// The first scheduled time at or after `at`.
    pub fn first_at_or_after(&self, at: Timestamp) -> Option<Timestamp> {
        self.next_after(just_before(at))
    }

    fn zoned(&self, at: Timestamp) -> Option<Zoned> {
        let ts = jiff::Timestamp::from_microsecond(at.as_unix_micros()).ok()?;
        Some(ts.to_zoned(self.zone.clone()))
    }
}

/// `at` rounded down to its whole second.
fn floor_second(at: Timestamp) -> Timestamp {
    let micros = at.as_unix_micros();
    Timestamp::from_unix_micros(micros - micros.rem_euclid(1_000_000))
}

fn from_zoned(zoned: &Zoned) -> Timestamp {
    let micros = zoned.timestamp().as_microsecond();
    Timestamp::from_unix_micros(micros)
}

/// The microsecond before `at`.
fn just_before(at: Timestamp) -> Timestamp {
    Timestamp::from_unix_micros(at.as_unix_micros().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_core::ErrorKind;

    /// A wall-clock time in `zone` (the earlier instant when it happens twice).
    fn local(zone: &str, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> Timestamp {
        let tz = TimeZone::get(zone).expect("a known zone");
        let zoned = tz
            .to_ambiguous_zoned(jiff::civil::date(y, mo, d).at(h, mi, 0, 0))
            .earlier()
            .expect("a valid time");
        from_zoned(&zoned)
    }

    fn utc(y: i16, mo: i8, d: i8, h: i8, mi: i8, s: i8) -> Timestamp {
        let zoned = jiff::civil::date(y, mo, d)
            .at(h, mi, s, 0)
            .to_zoned(TimeZone::UTC)
            .expect("a valid time");
        from_zoned(&zoned)
    }

    const HALF_DAY: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

    /// Every scheduled time in `(from, to]`.
    fn times(schedule: &Schedule, from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut at = from;
        while let Some(next) = schedule.next_after(at).filter(|t| *t <= to) {
            out.push(next);
            at = next;
        }
        out
    }

    #[test]
    fn five_and_six_fields_and_descriptors_parse() {
        for expression in ["*/5 * * * *", "*/10 * * * * *", "@hourly", "@daily", "0 0 L * *"] {
            assert!(Schedule::parse(expression, "UTC").is_ok(), "{expression}");
        }
        let hourly = Schedule::parse("@hourly", "UTC").expect("parses");
        let next = hourly.next_after(utc(2026, 5, 1, 10, 15, 0));
        assert_eq!(next, Some(utc(2026, 5, 1, 11, 0, 0)));
    }

    #[test]
    fn seconds_field_is_optional() {
        let every_second = Schedule::parse("* * * * * *", "UTC").expect("parses");
        let at = utc(2026, 1, 1, 0, 0, 0);
        assert_eq!(every_second.next_after(at), Some(utc(2026, 1, 1, 0, 0, 1)));
        let every_minute = Schedule::parse("* * * * *", "UTC").expect("parses");
        assert_eq!(every_minute.next_after(at), Some(utc(2026, 1, 1, 0, 1, 0)));
    }

    #[test]
    fn next_after_is_strict_and_ignores_the_fraction() {
        let s = Schedule::parse("* * * * * *", "UTC").expect("parses");
        let at = utc(2026, 1, 1, 0, 0, 5);
        assert_eq!(s.next_after(at), Some(utc(2026, 1, 1, 0, 0, 6)));
        let inside = Timestamp::from_unix_micros(at.as_unix_micros() + 500_000);
        assert_eq!(s.next_after(inside), Some(utc(2026, 1, 1, 0, 0, 6)));
        assert_eq!(s.previous_before(inside), Some(at));
        assert_eq!(s.previous_before(at), Some(utc(2026, 1, 1, 0, 0, 4)));
        assert_eq!(s.first_at_or_after(at), Some(at));
    }

    #[test]
    fn last_weekday_and_nth_weekday() {
        // L: the last day of the month; W: the weekday nearest the 15th; #: the 2nd Monday.
        let last = Schedule::parse("0 12 L * *", "UTC").expect("parses");
        assert_eq!(last.next_after(utc(2026, 2, 1, 0, 0, 0)), Some(utc(2026, 2, 28, 12, 0, 0)));
        let weekday = Schedule::parse("0 12 15W * *", "UTC").expect("parses");
        // 2026-08-15 is a Saturday: the nearest weekday is Friday the 14th.
        assert_eq!(weekday.next_after(utc(2026, 8, 1, 0, 0, 0)), Some(utc(2026, 8, 14, 12, 0, 0)));
        let nth = Schedule::parse("0 12 * * MON#2", "UTC").expect("parses");
        assert_eq!(nth.next_after(utc(2026, 6, 1, 0, 0, 0)), Some(utc(2026, 6, 8, 12, 0, 0)));
    }

    #[test]
    fn bad_expression_and_unknown_zone_are_invalid_input_naming_them() {
        let error = Schedule::parse("61 * * * *", "UTC").expect_err("minute 61");
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
        assert!(error.to_string().contains("61 * * * *"), "{error}");
        let error = Schedule::parse("@fortnightly", "UTC").expect_err("no such descriptor");
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
        let error = Schedule::parse("* * * * *", "Mars/Olympus").expect_err("no such zone");
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
        assert!(error.to_string().contains("Mars/Olympus"), "{error}");
    }

    /// Spring forward: 02:00 jumps to 03:00, so 02:30 does not exist; the entry fires once,
    /// at 03:00 local, and at 02:30 the next day.
    fn spring_forward(zone: &str, y: i16, mo: i8, d: i8) {
        let s = Schedule::parse("30 2 * * *", zone).expect("parses");
        let fires =
            times(&s, local(zone, y, mo, d, 0, 0) - HALF_DAY, local(zone, y, mo, d + 1, 12, 0));
        assert_eq!(
            fires,
            [local(zone, y, mo, d, 3, 0), local(zone, y, mo, d + 1, 2, 30)],
            "{zone} spring forward"
        );
    }

    /// Fall back: 02:30 happens twice (Berlin: 03:00 back to 02:00); the entry fires once.
    fn fall_back(zone: &str, y: i16, mo: i8, d: i8, repeated_hour: i8) {
        let s = Schedule::parse(&format!("30 {repeated_hour} * * *"), zone).expect("parses");
        let fires =
            times(&s, local(zone, y, mo, d, 0, 0) - HALF_DAY, local(zone, y, mo, d + 1, 12, 0));
        assert_eq!(
            fires,
            [
                local(zone, y, mo, d, repeated_hour, 30),
                local(zone, y, mo, d + 1, repeated_hour, 30)
            ],
            "{zone} fall back"
        );
    }

    #[test]
    fn dst_berlin() {
        spring_forward("Europe/Berlin", 2026, 3, 29);
        fall_back("Europe/Berlin", 2026, 10, 25, 2);
    }

    #[test]
    fn dst_new_york() {
        spring_forward("America/New_York", 2026, 3, 8);
        // New York repeats 01:00-02:00; a 02:30 entry is unaffected and fires once.
        fall_back("America/New_York", 2026, 11, 1, 2);
        fall_back("America/New_York", 2026, 11, 1, 1);
    }

    #[test]
    fn every_minute_runs_through_both_halves_of_a_repeated_hour() {
        let s = Schedule::parse("0 * * * *", "Europe/Berlin").expect("parses");
        let from = local("Europe/Berlin", 2026, 10, 25, 1, 30);
        let to = local("Europe/Berlin", 2026, 10, 25, 4, 30);
        // 02:00 CEST, 02:00 CET, 03:00, 04:00: four hourly fires in three wall-clock hours.
        assert_eq!(times(&s, from, to).len(), 4);
    }
}
