//! Pieces: how a task's bytes are cut. Default 4 MiB; larger for large blobs so a task has at most about 1000 pieces
//! (Dragonfly aims at ~500), never above 64 MiB.

/// Default piece length.
pub const DEFAULT_PIECE: u64 = 4 << 20;
/// The shortest piece: nodes never cut shorter ones, and the scheduler refuses them (a task of tiny pieces costs
/// its memory and nothing else).
pub const MIN_PIECE: u64 = 64 << 10;
const MAX_PIECE: u64 = 64 << 20;
const TARGET_PIECES: u64 = 1000;

/// The piece length for a task of `size` bytes, given the configured minimum.
pub fn piece_len(size: u64, min: u64) -> u64 {
    let min = min.max(MIN_PIECE);
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

/// A set of piece numbers below a task's piece count, one bit each (a thousand pieces in 16 words): what a member
/// holds, what a request wants, what an answer already assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceSet {
    words: Vec<u64>,
    /// The task's piece count: pieces at or past it are never in the set.
    pieces: u32,
    len: u32,
}

impl PieceSet {
    /// The empty set of a task of `pieces` pieces.
    pub fn new(pieces: u32) -> PieceSet {
        PieceSet {
            words: vec![0; pieces.div_ceil(64) as usize],
            pieces,
            len: 0,
        }
    }

    /// How many pieces are in it.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `p` is in it (a piece past the task's end never is).
    pub fn contains(&self, p: u32) -> bool {
        p < self.pieces && self.words[(p / 64) as usize] & (1 << (p % 64)) != 0
    }

    /// Adds `p`; returns whether it was new. A piece past the task's end is not added.
    pub fn insert(&mut self, p: u32) -> bool {
        if p >= self.pieces {
            return false;
        }
        let w = &mut self.words[(p / 64) as usize];
        let new = *w & (1 << (p % 64)) == 0;
        *w |= 1 << (p % 64);
        self.len += u32::from(new);
        new
    }

    /// Removes `p`; returns whether it was there.
    pub fn remove(&mut self, p: u32) -> bool {
        if p >= self.pieces {
            return false;
        }
        let w = &mut self.words[(p / 64) as usize];
        let had = *w & (1 << (p % 64)) != 0;
        *w &= !(1 << (p % 64));
        self.len -= u32::from(had);
        had
    }

    /// The pieces in it, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            (0..64u32)
                .filter(move |&b| w & (1u64 << b) != 0)
                .map(move |b| i as u32 * 64 + b)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_set_counts_and_lists_what_it_holds() {
        let mut s = PieceSet::new(130);
        assert!(s.is_empty());
        assert!(s.insert(0) && s.insert(64) && s.insert(129));
        assert!(!s.insert(64), "already there");
        assert!(!s.insert(130) && !s.contains(130), "past the end");
        assert_eq!(s.len(), 3);
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 64, 129]);
        assert!(s.remove(64) && !s.remove(64));
        assert_eq!((s.len(), s.contains(64), s.contains(129)), (2, false, true));
    }

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
