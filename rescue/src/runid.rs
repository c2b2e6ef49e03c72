//! Run ids and timestamps: when a run started, and the id that names its
//! report and its folder on the victim (`\\defib\\<run-id>\\`). The id sorts by
//! time; the random suffix only separates runs of the same second.

use std::time::{SystemTime, UNIX_EPOCH};

/// RFC 3339 UTC to the second: `2026-11-26T05:02:15Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A run id: `20261126T050215Z-1a2b3c4d`. `random` is 4 bytes from
/// getrandom, or `None` to derive them from the clock.
pub fn run_id(t: SystemTime, random: Option<[u8; 4]>) -> String {
    let stamp: String = rfc3339(t)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let bytes = random.unwrap_or_else(|| {
        // Time-derived fallback: sub-second nanoseconds mixed with the
        // seconds, so two machines booted in the same second still differ.
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let x = d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16);
        x.to_be_bytes()
    });
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{stamp}-{hex}")
}

/// 4 random bytes without blocking. GRND_INSECURE (Linux 5.6+) answers even
/// before the entropy pool is seeded, which is typical this early in boot;
/// a run id needs uniqueness, not secrecy.
pub fn random4() -> Option<[u8; 4]> {
    let mut b = [0u8; 4];
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::INSECURE) {
        Ok(4) => Some(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn run_id_shape() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_669_335);
        assert_eq!(
            run_id(t, Some([0x1a, 0x2b, 0x3c, 0x4d])),
            "20261126T050215Z-1a2b3c4d"
        );
        let fallback = run_id(t + Duration::from_nanos(123_456), None);
        assert_eq!(fallback.len(), "20261126T050215Z-1a2b3c4d".len());
        assert!(fallback.starts_with("20261126T050215Z-"));
    }
}
