//! Query strings (`?ns=docker.io`, `?mount=...&from=...`, `?tag=a&tag=b`, `?peer=...`): pairs decoded as
//! `application/x-www-form-urlencoded` (percent escapes, `+` for a space) by `form_urlencoded`, the one parser every
//! server of wharf uses.

/// The first value of `key`, decoded; `None` when the key is absent.
pub fn param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Every value of `key`, decoded, in order.
pub fn params(query: Option<&str>, key: &str) -> Vec<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_first_and_every_value() {
        assert_eq!(param(Some("a=1&peer=n%3A1+x"), "peer").as_deref(), Some("n:1 x"));
        assert_eq!(
            param(Some("ns=docker.io&ns=ghcr.io"), "ns").as_deref(),
            Some("docker.io")
        );
        assert_eq!(param(Some("peers=1"), "peer"), None);
        assert_eq!(param(None, "peer"), None);
        assert_eq!(param(Some("peer="), "peer").as_deref(), Some(""));
        assert_eq!(params(Some("tag=a&x=1&tag=b%2Fc"), "tag"), ["a", "b/c"]);
        assert!(params(Some(""), "tag").is_empty());
    }
}
