//! ARG/ENV substitution: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:+alt}`, `${VAR+alt}`,
//! `${VAR:?msg}`, with the escape character protecting `$`.

/// Expands variables in `s`. `lookup` returns `None` for an unset variable, `Some("")` for a set but empty one.
/// Returns the text and whether every variable it used was set.
pub fn expand(s: &str, escape: char, lookup: &dyn Fn(&str) -> Option<String>) -> (String, bool) {
    expand_depth(s, escape, lookup, 0)
}

/// Nesting deeper than this (`${a:-${b:-...}}`) is kept as text: bounded recursion on any input.
const MAX_DEPTH: usize = 32;

fn expand_depth(s: &str, escape: char, lookup: &dyn Fn(&str) -> Option<String>, depth: usize) -> (String, bool) {
    if depth > MAX_DEPTH {
        return (s.to_string(), false);
    }
    let mut out = String::with_capacity(s.len());
    let mut complete = true;
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == escape && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('{') => {
                let Some(close) = matching_brace(&chars, i + 2) else {
                    out.extend(&chars[i..]);
                    break;
                };
                let inner: String = chars[i + 2..close].iter().collect();
                let (v, ok) = braced(&inner, escape, lookup, depth);
                complete &= ok;
                out.push_str(&v);
                i = close + 1;
            }
            Some(&n) if n.is_ascii_alphabetic() || n == '_' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                match lookup(&name) {
                    Some(v) => out.push_str(&v),
                    None => complete = false,
                }
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    (out, complete)
}

fn matching_brace(chars: &[char], from: usize) -> Option<usize> {
    let mut depth = 1;
    for (k, &c) in chars.iter().enumerate().skip(from) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

fn braced(inner: &str, escape: char, lookup: &dyn Fn(&str) -> Option<String>, depth: usize) -> (String, bool) {
    let name_len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, op) = inner.split_at(name_len);
    let value = lookup(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let word = |w: &str| expand_depth(w, escape, lookup, depth + 1);
    if op.is_empty() {
        let ok = value.is_some();
        return (value.unwrap_or_default(), ok);
    }
    for (prefix, colon) in [(":-", true), ("-", false)] {
        if let Some(w) = op.strip_prefix(prefix) {
            let use_value = if colon { set_nonempty } else { value.is_some() };
            return if use_value {
                (value.unwrap_or_default(), true)
            } else {
                word(w)
            };
        }
    }
    for (prefix, colon) in [(":+", true), ("+", false)] {
        if let Some(w) = op.strip_prefix(prefix) {
            let use_alt = if colon { set_nonempty } else { value.is_some() };
            return if use_alt { word(w) } else { (String::new(), true) };
        }
    }
    if op.starts_with(":?") || op.starts_with('?') {
        let ok = value.is_some();
        return (value.unwrap_or_default(), ok);
    }
    // Unsupported modifiers (`#`, `%`, `/`): keep the value without applying them.
    let ok = value.is_some();
    (value.unwrap_or_default(), ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "V" => Some("3.20".into()),
            "E" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn forms() {
        let e = |s: &str| expand(s, '\\', &env);
        assert_eq!(e("alpine:$V"), ("alpine:3.20".into(), true));
        assert_eq!(e("alpine:${V}"), ("alpine:3.20".into(), true));
        assert_eq!(e("node:${N:-20}-alpine"), ("node:20-alpine".into(), true));
        assert_eq!(e("${E:-x}|${E-x}|${V:+y}|${N+y}"), ("x||y|".into(), true));
        assert_eq!(e("a:$N"), ("a:".into(), false));
        assert_eq!(e("\\$V ${unclosed"), ("$V ${unclosed".into(), true));
        assert_eq!(e("${N:-${V}}"), ("3.20".into(), true));
        let deep = "${N:-".repeat(100_000) + &"}".repeat(100_000);
        assert!(!e(&deep).1);
    }
}
