//! RFC 3339 UTC timestamps (`2026-01-02T03:04:05Z`, optionally with milliseconds), for token responses and webhook
//! events. Written here to avoid a date crate for one format: days since the epoch to a civil date with Howard
//! Hinnant's `civil_from_days`.

use std::time::{SystemTime, UNIX_EPOCH};

/// `secs` since the epoch, to the second.
pub(crate) fn seconds(secs: u64) -> String {
    let (date, time) = civil(secs);
    format!("{date}T{time}Z")
}

/// A point in time, to the millisecond.
pub(crate) fn millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (date, time) = civil(d.as_secs());
    format!("{date}T{time}.{:03}Z", d.subsec_millis())
}

/// (`YYYY-MM-DD`, `hh:mm:ss`).
fn civil(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(seconds(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(seconds(1_767_323_045), "2026-01-02T03:04:05Z");
        assert_eq!(millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            millis(UNIX_EPOCH + Duration::from_millis(1_795_462_956_123)),
            "2026-11-23T19:42:36.123Z"
        );
        assert_eq!(
            millis(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
