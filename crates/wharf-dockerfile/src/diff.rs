//! A unified diff of two texts, by lines (longest common subsequence; Dockerfiles are small).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Keep,
    Del,
    Add,
}

/// `--- a/PATH` / `+++ b/PATH` unified diff with 3 lines of context; empty when the texts are equal.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    // Trim the common prefix and suffix, then LCS on the middle.
    let pre = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut ops: Vec<(Op, usize, usize)> = (0..pre).map(|k| (Op::Keep, k, k)).collect();
    if am.len().saturating_mul(bm.len()) <= 4_000_000 {
        let (n, m) = (am.len(), bm.len());
        let mut dp = vec![0u32; (n + 1) * (m + 1)];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                dp[i * (m + 1) + j] = if am[i] == bm[j] {
                    dp[(i + 1) * (m + 1) + j + 1] + 1
                } else {
                    dp[(i + 1) * (m + 1) + j].max(dp[i * (m + 1) + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                ops.push((Op::Keep, pre + i, pre + j));
                i += 1;
                j += 1;
            } else if i < n && (j == m || dp[(i + 1) * (m + 1) + j] >= dp[i * (m + 1) + j + 1]) {
                ops.push((Op::Del, pre + i, pre + j));
                i += 1;
            } else {
                ops.push((Op::Add, pre + i, pre + j));
                j += 1;
            }
        }
    } else {
        ops.extend((0..am.len()).map(|i| (Op::Del, pre + i, pre)));
        ops.extend((0..bm.len()).map(|j| (Op::Add, pre + am.len(), pre + j)));
    }
    ops.extend((0..suf).map(|k| (Op::Keep, a.len() - suf + k, b.len() - suf + k)));

    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    const CTX: usize = 3;
    let changes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.0 != Op::Keep)
        .map(|(k, _)| k)
        .collect();
    let mut k = 0;
    while k < changes.len() {
        let start = changes[k].saturating_sub(CTX);
        let mut end = changes[k];
        while k < changes.len() && changes[k] <= end + 2 * CTX + 1 {
            end = changes[k];
            k += 1;
        }
        let end = (end + CTX + 1).min(ops.len());
        let hunk = &ops[start..end];
        let a_start = hunk.first().map_or(0, |o| o.1);
        let b_start = hunk.first().map_or(0, |o| o.2);
        let a_len = hunk.iter().filter(|o| o.0 != Op::Add).count();
        let b_len = hunk.iter().filter(|o| o.0 != Op::Del).count();
        let a_pos = if a_len == 0 { a_start } else { a_start + 1 };
        let b_pos = if b_len == 0 { b_start } else { b_start + 1 };
        out.push_str(&format!("@@ -{a_pos},{a_len} +{b_pos},{b_len} @@\n"));
        for &(op, i, j) in hunk {
            let (sign, line) = match op {
                Op::Keep => (' ', a[i]),
                Op::Del => ('-', a[i]),
                Op::Add => ('+', b[j]),
            };
            out.push(sign);
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn hunks() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        let new = "a\nB\nc\nd\ne\nf\ng\nh\ni\nj\nk\n";
        assert_eq!(
            unified(old, new, "a/Dockerfile", "b/Dockerfile"),
            "--- a/Dockerfile\n+++ b/Dockerfile\n@@ -1,5 +1,5 @@\n a\n-b\n+B\n c\n d\n e\n@@ -8,3 +8,4 @@\n h\n i\n j\n+k\n"
        );
        assert_eq!(unified("x\n", "x\n", "a", "b"), "");
        assert_eq!(unified("", "x\n", "a", "b"), "--- a\n+++ b\n@@ -0,0 +1,1 @@\n+x\n");
    }
}
