//! What the proxy counts about its clients, servers, pools and queries: read by the admin
//! console, the HTTP JSON endpoints and the Prometheus collector. Hot-path updates are
//! relaxed atomic adds and stores; the reading side does the walking and summing.

pub mod clients;
pub mod histogram;
pub mod meter;
pub mod queries;
pub mod servers;
pub mod totals;

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// (year, month, day, hour, minute, second) in UTC of a Unix-microsecond time.
fn utc(micros: u64) -> (i64, u32, u32, u64, u64, u64) {
    let secs = micros / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix-microsecond time, as PgBouncer prints times
/// (empty for 0: never).
pub fn format_time(micros: u64) -> String {
    if micros == 0 {
        return String::new();
    }
    let (y, m, d, h, mi, s) = utc(micros);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (RFC 3339, UTC) for a Unix-microsecond time: the audit
/// log's timestamps.
pub fn format_rfc3339(micros: u64) -> String {
    let mut s = String::with_capacity(27);
    let _ = write_rfc3339(&mut s, micros);
    s
}

/// [`format_rfc3339`] into a writer (a log line, without a String of its own).
/// Digit by digit: every log line has one, and `write!` with padding cost 1,800 instructions.
pub fn write_rfc3339(w: &mut impl std::fmt::Write, micros: u64) -> std::fmt::Result {
    let (y, m, d, h, mi, s) = utc(micros);
    let Some(y) = u64::try_from(y).ok().filter(|y| *y <= 9999) else {
        return write!(
            w,
            "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z",
            micros % 1_000_000
        );
    };
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let fields = [
        (0, 4, y),
        (5, 2, u64::from(m)),
        (8, 2, u64::from(d)),
        (11, 2, h),
        (14, 2, mi),
        (17, 2, s),
        (20, 6, micros % 1_000_000),
    ];
    for (at, len, mut v) in fields {
        for c in b[at..at + len].iter_mut().rev() {
            *c = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    w.write_str(std::str::from_utf8(&b).map_err(|_| std::fmt::Error)?)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_digits_are_those_of_the_padded_format() {
        for micros in [
            0,
            1_000_000,
            1_709_210_096_123_456,
            4_102_444_799_999_999,
            1,
        ] {
            let (y, m, d, h, mi, s) = utc(micros);
            let padded = format!(
                "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z",
                micros % 1_000_000
            );
            assert_eq!(format_rfc3339(micros), padded);
        }
        assert_eq!(
            format_rfc3339(1_709_210_096_000_007),
            "2024-02-29T12:34:56.000007Z"
        );
    }

    #[test]
    fn formats_times_like_pgbouncer() {
        assert_eq!(format_time(0), "");
        assert_eq!(format_time(1_000_000), "1970-01-01 00:00:01 UTC");
        // 2024-02-29 12:34:56 UTC
        assert_eq!(
            format_time(1_709_210_096_000_000),
            "2024-02-29 12:34:56 UTC"
        );
    }
}

/// The stats tables' hasher: keys are fingerprints (already hashes) and short names, looked up
/// on every transaction, so SipHash's DoS resistance
/// buys nothing here (clients cannot choose fingerprints that collide on purpose any more
/// cheaply than they can add distinct statements, which the table's bound handles).
#[derive(Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        // Mixes low bits into the high ones dashmap picks its shard with.
        let x = self.0 ^ (self.0 >> 33);
        x.wrapping_mul(0xff51_afd7_ed55_8ccd) ^ (x >> 29)
    }
}
