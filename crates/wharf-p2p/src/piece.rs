//! Pieces: how a task's bytes are cut. Default 4 MiB; larger for large blobs so a task has at most about 1000 pieces
//! (Dragonfly aims at ~500), never above 64 MiB.

/// Default piece length.
pub const DEFAULT_PIECE: u64 = 4 << 20;
const MAX_PIECE: u64 = 64 << 20;
const TARGET_PIECES: u64 = 1000;

/// The piece length for a task of `size` bytes, given the configured minimum.
pub fn piece_len(size: u64, min: u64) -> u64 {
    let min = min.max(64 << 10);
    let want = size.div_ceil(TARGET_PIECES);
    if want <= min {
        // The configured length as it is: small pieces (down to 64 KiB) pass a piece on sooner on slow links.
        return min;
    }
    // Above it, round up to a whole MiB so the ranges of large blobs stay aligned.
    want.div_ceil(1 << 20)
        .saturating_mul(1 << 20)
        .clamp(min, MAX_PIECE.max(min))
}

/// Number of pieces of a task.
pub fn count(size: u64, piece_len: u64) -> u32 {
    u32::try_from(size.div_ceil(piece_len.max(1))).unwrap_or(u32::MAX)
}

/// Byte range `start..end` of piece `n`.
pub fn range(n: u32, size: u64, piece_len: u64) -> (u64, u64) {
    let start = u64::from(n) * piece_len;
    (start.min(size), (start + piece_len).min(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_ranges() {
        assert_eq!(piece_len(10 << 20, DEFAULT_PIECE), DEFAULT_PIECE);
        assert_eq!(piece_len(0, DEFAULT_PIECE), DEFAULT_PIECE);
        assert_eq!(piece_len(10 << 30, DEFAULT_PIECE), 11 << 20);
        assert_eq!(piece_len(1 << 40, DEFAULT_PIECE), 64 << 20);
        assert_eq!(count(0, DEFAULT_PIECE), 0);
        assert_eq!(count(1, DEFAULT_PIECE), 1);
        assert_eq!(count(8 << 20, DEFAULT_PIECE), 2);
        assert_eq!(count((8 << 20) + 1, DEFAULT_PIECE), 3);
        assert_eq!(piece_len(64 << 20, 256 << 10), 256 << 10);
        assert_eq!(piece_len(32 << 20, 1), 64 << 10);
        assert_eq!(piece_len(64 << 20, 1), 1 << 20); // over 1000 pieces: larger, a whole MiB
        assert_eq!(piece_len(1 << 30, 256 << 10), 2 << 20);
        assert_eq!(range(2, (8 << 20) + 1, DEFAULT_PIECE), (8 << 20, (8 << 20) + 1));
    }
}
