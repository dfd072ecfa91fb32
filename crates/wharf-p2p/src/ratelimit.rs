//! A byte-rate limiter shared by the transfers of one node (`--ratelimit`, `--upload-ratelimit`).
//!
//! Written by hand: `governor` meters cells of a fixed size and wants a jitter loop for large, variable chunks; this
//! is a token bucket in a dozen lines that an async caller awaits with the chunk's size.

use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Mutex;

pub struct RateLimit {
    /// Bytes per second; `None` is unlimited.
    rate: Option<u64>,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(rate: Option<u64>) -> Self {
        RateLimit {
            rate: rate.filter(|r| *r > 0),
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    /// Waits until `bytes` may pass. The bucket holds at most one second of tokens.
    pub async fn take(&self, bytes: usize) {
        let Some(rate) = self.rate else { return };
        let rate = rate as f64;
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * rate;
            s.0 = (s.0 + refill).min(rate) - bytes as f64;
            s.1 = now;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Parses `100M`, `20Mbit`... as bytes per second: `K`, `M`, `G` are powers of 1024 bytes; a `bit` suffix divides by 8.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not a rate: use e.g. 50M (bytes/s) or 100Mbit");
    let (t, bits) = match t.strip_suffix("bit") {
        Some(rest) => (rest, true),
        None => (t.strip_suffix("B").unwrap_or(t), false),
    };
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !(n.is_finite() && n >= 0.0) {
        return Err(bad());
    }
    let bytes = n * mult as f64 / if bits { 8.0 } else { 1.0 };
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100"), Ok(100));
        assert_eq!(parse_rate("2K"), Ok(2048));
        assert_eq!(parse_rate("20Mbit"), Ok(20 * (1 << 20) / 8));
        assert_eq!(parse_rate("1.5M"), Ok(3 << 19));
        assert_eq!(parse_rate("1GB"), Ok(1 << 30));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-1M").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_paces_transfers() {
        let r = RateLimit::new(Some(1000));
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            r.take(1000).await;
        }
        // 5000 bytes at 1000/s with an empty bucket: about 5 s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(4900) && took <= Duration::from_millis(5100),
            "{took:?}"
        );
    }
}
