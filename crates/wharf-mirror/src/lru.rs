//! Size accounting and least-recently-used eviction for the mirror's cache. A blob that is being served is never
//! chosen (readers also hold an open descriptor, so even a removed file streams to the end).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wharf_oci::Digest;

#[derive(Default)]
struct Inner {
    /// digest -> (size, last use)
    entries: HashMap<Digest, (u64, u64)>,
    total: u64,
    clock: u64,
    serving: HashMap<Digest, usize>,
}

pub struct Lru {
    max: Option<u64>,
    inner: Mutex<Inner>,
}

/// Marks a blob as being served while alive.
pub struct Serving {
    lru: Arc<Lru>,
    digest: Digest,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let mut g = self.lru.lock();
        if let Some(n) = g.serving.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                g.serving.remove(&self.digest);
            }
        }
    }
}

impl Lru {
    pub fn new(max: Option<u64>) -> Self {
        Lru {
            max,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a blob (new or used again) as most recently used.
    pub fn touch(&self, digest: &Digest, size: u64) {
        let mut g = self.lock();
        g.clock += 1;
        let clock = g.clock;
        match g.entries.insert(digest.clone(), (size, clock)) {
            Some((old, _)) => g.total = g.total - old + size,
            None => g.total += size,
        }
    }

    pub fn serving(self: &Arc<Self>, digest: &Digest) -> Serving {
        *self.lock().serving.entry(digest.clone()).or_insert(0) += 1;
        Serving {
            lru: self.clone(),
            digest: digest.clone(),
        }
    }

    pub fn total(&self) -> u64 {
        self.lock().total
    }

    /// Blobs to evict, oldest first, to get back under the limit; they are forgotten here.
    pub fn victims(&self) -> Vec<Digest> {
        let Some(max) = self.max else { return Vec::new() };
        let mut g = self.lock();
        if g.total <= max {
            return Vec::new();
        }
        let mut candidates: Vec<(u64, Digest, u64)> = g
            .entries
            .iter()
            .filter(|(d, _)| !g.serving.contains_key(*d))
            .map(|(d, (size, used))| (*used, d.clone(), *size))
            .collect();
        candidates.sort();
        let mut out = Vec::new();
        for (_, d, size) in candidates {
            if g.total <= max {
                break;
            }
            g.entries.remove(&d);
            g.total -= size;
            out.push(d);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn evicts_least_recently_used_but_not_what_is_served() {
        let lru = Arc::new(Lru::new(Some(100)));
        lru.touch(&d(1), 40);
        lru.touch(&d(2), 40);
        lru.touch(&d(1), 40); // 1 is now newer than 2
        let _guard = lru.serving(&d(2));
        lru.touch(&d(3), 40);
        assert_eq!(lru.total(), 120);
        // 2 is the oldest but being served, so 1 goes.
        assert_eq!(lru.victims(), vec![d(1)]);
        assert_eq!(lru.total(), 80);
        drop(_guard);
        lru.touch(&d(4), 40);
        assert_eq!(lru.victims(), vec![d(2)]);
    }

    #[test]
    fn unlimited_never_evicts() {
        let lru = Lru::new(None);
        lru.touch(&d(1), u64::MAX / 2);
        assert!(lru.victims().is_empty());
    }
}
