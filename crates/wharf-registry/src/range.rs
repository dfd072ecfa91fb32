//! Byte ranges: `Range: bytes=...` on blob GET, `Content-Range: <start>-<end>` on upload PATCH.

/// Result of reading a `Range` request header against a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable single range: send the whole blob (also for a malformed or multi-range header, as RFC 9110 allows).
    Full,
    /// `start..end` (end exclusive).
    Partial(u64, u64),
    /// A well-formed range that lies outside the blob: 416.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n`.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeRequest::Full,
        (true, false) => match parse(b) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if size == 0 => {
                let _ = n;
                RangeRequest::Unsatisfiable
            }
            Some(n) => RangeRequest::Partial(size.saturating_sub(n), size),
            None => RangeRequest::Full,
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeRequest::Full;
            };
            let end_incl = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                match parse(b) {
                    Some(e) if e >= start => e.min(size.saturating_sub(1)),
                    _ => return RangeRequest::Full,
                }
            };
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(start, end_incl + 1)
            }
        }
    }
}

/// Parses an upload chunk's `Content-Range`: `<start>-<end>` inclusive, tolerating a `bytes ` prefix and a
/// `/<total>` suffix. `None` if malformed.
pub fn parse_content_range(header: &str) -> Option<(u64, u64)> {
    let s = header.trim();
    let s = s.strip_prefix("bytes ").unwrap_or(s).trim();
    let s = s.split('/').next()?;
    let (a, b) = s.split_once('-')?;
    let (start, end) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (end >= start).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeRequest::Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), RangeRequest::Partial(0, 5));
        assert_eq!(parse_range(Some("bytes=5-"), 10), RangeRequest::Partial(5, 10));
        assert_eq!(parse_range(Some("bytes=-3"), 10), RangeRequest::Partial(7, 10));
        assert_eq!(parse_range(Some("bytes=-30"), 10), RangeRequest::Partial(0, 10));
        assert_eq!(parse_range(Some("bytes=3-100"), 10), RangeRequest::Partial(3, 10));
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), RangeRequest::Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), RangeRequest::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeRequest::Full);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, 199)));
        assert_eq!(parse_content_range("5-4"), None);
        assert_eq!(parse_content_range("x-4"), None);
    }
}
