//! Rendezvous (highest-random-weight) hashing: which scheduler owns a task. Every node computes the same order from
//! the same list, with no coordination; when the owner dies, its tasks move to the next in each task's order and
//! no other task moves.

use wharf_oci::Digest;

/// `schedulers` ordered for `task`: the owner first, then who takes over.
pub fn order<'a>(schedulers: &'a [String], task: &str) -> Vec<&'a String> {
    let mut scored: Vec<(String, &String)> = schedulers
        .iter()
        .map(|s| (Digest::sha256_of(format!("{s}\n{task}").as_bytes()).hex().to_owned(), s))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_scheduler_moves_only_its_tasks() {
        let all: Vec<String> = (0..4).map(|i| format!("http://s{i}")).collect();
        let fewer: Vec<String> = all.iter().filter(|s| *s != "http://s2").cloned().collect();
        let mut owned = [0usize; 4];
        for t in 0..2000 {
            let task = format!("sha256:{t:064x}");
            let before = order(&all, &task);
            let after = order(&fewer, &task);
            owned[all.iter().position(|s| s == before[0]).unwrap()] += 1;
            if before[0] != "http://s2" {
                assert_eq!(before[0], after[0], "{task} moved though its owner stayed");
            } else {
                assert_eq!(after[0], before[1], "{task} did not move to its next scheduler");
            }
        }
        // Spread: each of 4 owns a fair share.
        assert!(owned.iter().all(|&n| n > 350), "{owned:?}");
    }
}
