//! `os/arch[/variant]` and the choice of one image from an index.

use std::fmt;
use std::str::FromStr;

use wharf_oci::manifest::Descriptor;

use crate::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, in OCI's names (linux always: images are Linux images).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Whether an index entry is for this platform. An unset variant here accepts any variant.
    pub fn matches(&self, desc: &Descriptor) -> bool {
        let Some(p) = desc.platform.as_ref() else {
            return false;
        };
        let field = |k: &str| p.get(k).and_then(|v| v.as_str());
        field("os") == Some(self.os.as_str())
            && field("architecture") == Some(self.architecture.as_str())
            && self.variant.as_deref().is_none_or(|v| field("variant") == Some(v))
    }

    /// `os/arch[/variant]` of an index entry, for messages.
    pub fn describe(desc: &Descriptor) -> String {
        let Some(p) = desc.platform.as_ref() else {
            return "unknown".into();
        };
        let parts: Vec<&str> = ["os", "architecture", "variant"]
            .iter()
            .filter_map(|k| p.get(*k).and_then(|v| v.as_str()))
            .collect();
        parts.join("/")
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(Error::BadPlatform(s.to_owned()));
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(platform: serde_json::Value) -> Descriptor {
        serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", "b".repeat(64)),
            "size": 1,
            "platform": platform,
        }))
        .unwrap()
    }

    #[test]
    fn parses_and_matches() {
        let arm: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(arm.to_string(), "linux/arm64/v8");
        let d = desc(serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"}));
        assert!(arm.matches(&d));
        assert!("linux/arm64".parse::<Platform>().unwrap().matches(&d));
        assert!(!"linux/arm64/v7".parse::<Platform>().unwrap().matches(&d));
        assert!(!"linux/amd64".parse::<Platform>().unwrap().matches(&d));
        assert_eq!(Platform::describe(&d), "linux/arm64/v8");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}
