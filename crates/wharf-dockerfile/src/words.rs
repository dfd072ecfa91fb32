//! Splitting argument text into words (Dockerfile quoting rules) and parsing the JSON exec form.

/// A word of logical text: its byte range and its unquoted value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawWord {
    pub start: usize,
    pub end: usize,
    pub value: String,
}

/// Splits on unquoted whitespace. `'...'` and `"..."` group, the escape character escapes the next character
/// (inside single quotes it is literal). Unterminated quotes run to the end of the text.
pub fn split(text: &str, escape: char) -> Vec<RawWord> {
    let mut words = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut value = String::new();
        let mut end = start;
        let mut quote: Option<char> = None;
        while let Some(&(i, c)) = chars.peek() {
            match quote {
                None if c.is_whitespace() => break,
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                Some('\'') => value.push(c),
                _ if c == escape => {
                    chars.next();
                    end = i + c.len_utf8();
                    if let Some(&(j, n)) = chars.peek() {
                        if quote == Some('"') && n != '"' && n != escape && n != '$' {
                            value.push(c);
                        }
                        value.push(n);
                        end = j + n.len_utf8();
                        chars.next();
                    } else {
                        value.push(c);
                    }
                    continue;
                }
                _ => value.push(c),
            }
            end = i + c.len_utf8();
            chars.next();
        }
        words.push(RawWord { start, end, value });
    }
    words
}

/// Parses `["a", "b"]`: the elements with their logical ranges (quotes included). `None` when the text is not a
/// JSON array of strings (the instruction is then in shell form, as BuildKit does).
pub fn parse_exec(text: &str) -> Option<Vec<RawWord>> {
    let bytes = text.as_bytes();
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'[') {
        return None;
    }
    i = skip_ws(bytes, i + 1);
    let mut out = Vec::new();
    if bytes.get(i) == Some(&b']') {
        return (skip_ws(bytes, i + 1) == bytes.len()).then_some(out);
    }
    loop {
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        let start = i;
        let mut value = String::new();
        i += 1;
        loop {
            let c = text.get(i..)?.chars().next()?;
            match c {
                '"' => {
                    i += 1;
                    break;
                }
                '\\' => {
                    let e = *bytes.get(i + 1)?;
                    i += 2;
                    match e {
                        b'"' => value.push('"'),
                        b'\\' => value.push('\\'),
                        b'/' => value.push('/'),
                        b'b' => value.push('\u{8}'),
                        b'f' => value.push('\u{c}'),
                        b'n' => value.push('\n'),
                        b'r' => value.push('\r'),
                        b't' => value.push('\t'),
                        b'u' => {
                            let hex = text.get(i..i + 4)?;
                            let code = u32::from_str_radix(hex, 16).ok()?;
                            value.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                            i += 4;
                        }
                        _ => return None,
                    }
                }
                c if (c as u32) < 0x20 => return None,
                c => {
                    value.push(c);
                    i += c.len_utf8();
                }
            }
        }
        out.push(RawWord { start, end: i, value });
        i = skip_ws(bytes, i);
        match bytes.get(i) {
            Some(b',') => i = skip_ws(bytes, i + 1),
            Some(b']') => {
                return (skip_ws(bytes, i + 1) == bytes.len()).then_some(out);
            }
            _ => return None,
        }
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(ws: &[RawWord]) -> Vec<&str> {
        ws.iter().map(|w| w.value.as_str()).collect()
    }

    #[test]
    fn splits_with_quotes_and_escapes() {
        let w = split(r#"a "b c" 'd e' f\ g"#, '\\');
        assert_eq!(values(&w), ["a", "b c", "d e", "f g"]);
        assert_eq!((w[1].start, w[1].end), (2, 7));
        let w = split("a`  b", '`');
        assert_eq!(values(&w), ["a ", "b"]);
    }

    #[test]
    fn exec_form() {
        let w = parse_exec(r#"["sh", "-c", "echo \"hi\""]"#).unwrap();
        assert_eq!(values(&w), ["sh", "-c", "echo \"hi\""]);
        assert_eq!((w[0].start, w[0].end), (1, 5));
        assert!(parse_exec("[]").is_some());
        assert!(parse_exec("[sh]").is_none());
        assert!(parse_exec(r#"["a",]"#).is_none());
        assert!(parse_exec(r#"["a"] x"#).is_none());
        assert!(parse_exec(r#"["a"#).is_none());
    }
}
