//! Instants in the stream's history: `#seq`, RFC 3339 times, relative times.

use ksr_runtime::replay::Latest;

/// An instant in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Up to and including this stream sequence.
    Seq(u64),
    /// Up to and including this time (ns since the Unix epoch).
    Time(i64),
}

impl At {
    /// Whether `record` is at or before this instant.
    pub fn includes(&self, record: &Latest) -> bool {
        match *self {
            At::Seq(s) => record.seq <= s,
            At::Time(t) => record.published_unix_ns <= t,
        }
    }
}

/// Parses an instant: a stream sequence (`#123` or digits), an RFC 3339 time, or a time
/// relative to `now_ns` (`90s`, `15m`, `2h`, `7d` ago).
pub fn parse_instant(s: &str, now_ns: i64) -> Result<At, String> {
    let s = s.trim();
    if let Some(seq) = s
        .strip_prefix('#')
        .or(Some(s).filter(|s| s.chars().all(|c| c.is_ascii_digit())))
    {
        return seq
            .parse()
            .map(At::Seq)
            .map_err(|_| format!("{s:?} is not a stream sequence"));
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(At::Time(
            i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX),
        ));
    }
    let relative = ksr_runtime::config::parse_duration(s).map_err(|_| {
        format!("{s:?} is neither a sequence (#123), an RFC 3339 time nor a relative time (2h, 7d)")
    })?;
    Ok(At::Time(
        now_ns - i64::try_from(relative.as_nanos()).unwrap_or(i64::MAX),
    ))
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// RFC 3339 (UTC).
pub fn format_time(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ns.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_parse_as_sequences_times_or_relative_times() {
        assert_eq!(parse_instant("#42", 0), Ok(At::Seq(42)));
        assert_eq!(parse_instant("42", 0), Ok(At::Seq(42)));
        assert_eq!(
            parse_instant("2h", 10_000_000_000_000),
            Ok(At::Time(10_000_000_000_000 - 7_200_000_000_000))
        );
        assert_eq!(
            parse_instant("1970-01-01T00:00:01Z", 0),
            Ok(At::Time(1_000_000_000))
        );
        assert!(parse_instant("yesterday", 0).is_err());
    }
}
