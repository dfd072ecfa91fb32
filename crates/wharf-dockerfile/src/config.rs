//! Lint and fix configuration: disabled rules, severity overrides and package mirrors (with presets).
//!
//! File format (`.wharf-lint.toml`, or any file passed with `--config`):
//!
//! ```toml
//! [lint]
//! disable = ["WH008"]
//! severity = { WH009 = "error" }
//!
//! [mirrors]
//! preset = "aliyun"            # aliyun, tuna or ustc; keys below override it
//! alpine = "mirrors.aliyun.com"
//! pypi = "https://mirrors.aliyun.com/pypi/simple/"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::rules::{RULES, Severity};

/// What a mirror replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MirrorKey {
    Alpine,
    Debian,
    Ubuntu,
    Rhel,
    Pypi,
    Npm,
    Go,
    Cargo,
}

impl MirrorKey {
    pub const ALL: [MirrorKey; 8] = [
        MirrorKey::Alpine,
        MirrorKey::Debian,
        MirrorKey::Ubuntu,
        MirrorKey::Rhel,
        MirrorKey::Pypi,
        MirrorKey::Npm,
        MirrorKey::Go,
        MirrorKey::Cargo,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MirrorKey::Alpine => "alpine",
            MirrorKey::Debian => "debian",
            MirrorKey::Ubuntu => "ubuntu",
            MirrorKey::Rhel => "rhel",
            MirrorKey::Pypi => "pypi",
            MirrorKey::Npm => "npm",
            MirrorKey::Go => "go",
            MirrorKey::Cargo => "cargo",
        }
    }

    pub fn parse(s: &str) -> Option<MirrorKey> {
        let s = s.to_ascii_lowercase();
        let s = match s.as_str() {
            "apk" => "alpine",
            "apt" => "debian",
            "pip" | "python" => "pypi",
            "yarn" | "pnpm" | "node" => "npm",
            "golang" | "goproxy" => "go",
            "crates" | "rust" => "cargo",
            "centos" | "yum" | "dnf" | "rocky" | "rockylinux" | "alma" | "almalinux" | "fedora" => "rhel",
            other => other,
        };
        MirrorKey::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Mirror per key: a host (`mirrors.aliyun.com`) for system package sources, a URL for the others.
pub type Mirrors = BTreeMap<MirrorKey, String>;

/// Well-known public mirrors.
pub fn preset(name: &str) -> Result<Mirrors, ConfigError> {
    let entries: &[(MirrorKey, &str)] = match name.to_ascii_lowercase().as_str() {
        "aliyun" => &[
            (MirrorKey::Alpine, "mirrors.aliyun.com"),
            (MirrorKey::Debian, "mirrors.aliyun.com"),
            (MirrorKey::Ubuntu, "mirrors.aliyun.com"),
            (MirrorKey::Rhel, "mirrors.aliyun.com"),
            (MirrorKey::Pypi, "https://mirrors.aliyun.com/pypi/simple/"),
            (MirrorKey::Npm, "https://registry.npmmirror.com"),
            (MirrorKey::Go, "https://mirrors.aliyun.com/goproxy/,direct"),
            (MirrorKey::Cargo, "sparse+https://rsproxy.cn/index/"),
        ],
        "tuna" => &[
            (MirrorKey::Alpine, "mirrors.tuna.tsinghua.edu.cn"),
            (MirrorKey::Debian, "mirrors.tuna.tsinghua.edu.cn"),
            (MirrorKey::Ubuntu, "mirrors.tuna.tsinghua.edu.cn"),
            (MirrorKey::Rhel, "mirrors.tuna.tsinghua.edu.cn"),
            (MirrorKey::Pypi, "https://pypi.tuna.tsinghua.edu.cn/simple"),
            (MirrorKey::Npm, "https://registry.npmmirror.com"),
            (MirrorKey::Go, "https://goproxy.cn,direct"),
            (
                MirrorKey::Cargo,
                "sparse+https://mirrors.tuna.tsinghua.edu.cn/crates.io-index/",
            ),
        ],
        "ustc" => &[
            (MirrorKey::Alpine, "mirrors.ustc.edu.cn"),
            (MirrorKey::Debian, "mirrors.ustc.edu.cn"),
            (MirrorKey::Ubuntu, "mirrors.ustc.edu.cn"),
            (MirrorKey::Rhel, "mirrors.ustc.edu.cn"),
            (MirrorKey::Pypi, "https://mirrors.ustc.edu.cn/pypi/simple"),
            (MirrorKey::Npm, "https://registry.npmmirror.com"),
            (MirrorKey::Go, "https://goproxy.cn,direct"),
            (MirrorKey::Cargo, "sparse+https://mirrors.ustc.edu.cn/crates.io-index/"),
        ],
        _ => return Err(ConfigError::Preset(name.to_string())),
    };
    Ok(entries.iter().map(|(k, v)| (*k, v.to_string())).collect())
}

/// `KEY=VALUE` from the command line.
pub fn parse_mirror_arg(s: &str) -> Result<(MirrorKey, String), ConfigError> {
    let (k, v) = s.split_once('=').ok_or_else(|| ConfigError::Mirror(s.to_string()))?;
    let key = MirrorKey::parse(k.trim()).ok_or_else(|| ConfigError::Mirror(s.to_string()))?;
    let v = v.trim();
    if v.is_empty() || v.contains(['\'', '"', '|', '\n', ' ']) {
        return Err(ConfigError::Mirror(s.to_string()));
    }
    Ok((key, v.to_string()))
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub disabled: BTreeSet<String>,
    pub severity: BTreeMap<String, Severity>,
    pub mirrors: Mirrors,
}

impl Config {
    pub fn enabled(&self, rule: &str) -> bool {
        !self.disabled.contains(rule)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Toml { source, .. } => ConfigError::Toml {
                path: path.into(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|source| ConfigError::Toml {
            path: "<config>".into(),
            source,
        })?;
        let mut cfg = Config::default();
        for id in raw.lint.disable {
            check_rule(&id)?;
            cfg.disabled.insert(id.to_ascii_uppercase());
        }
        for (id, sev) in raw.lint.severity {
            check_rule(&id)?;
            let sev = Severity::parse(&sev).ok_or(ConfigError::Severity(sev))?;
            cfg.severity.insert(id.to_ascii_uppercase(), sev);
        }
        if let Some(p) = raw.mirrors.get("preset") {
            cfg.mirrors = preset(p)?;
        }
        for (k, v) in &raw.mirrors {
            if k == "preset" {
                continue;
            }
            let (key, value) = parse_mirror_arg(&format!("{k}={v}"))?;
            cfg.mirrors.insert(key, value);
        }
        Ok(cfg)
    }
}

fn check_rule(id: &str) -> Result<(), ConfigError> {
    if RULES.iter().any(|r| r.id.eq_ignore_ascii_case(id)) {
        Ok(())
    } else {
        Err(ConfigError::UnknownRule(id.to_string()))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawFile {
    lint: RawLint,
    mirrors: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLint {
    disable: Vec<String>,
    severity: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file() {
        let cfg = Config::from_toml(
            "[lint]\ndisable = [\"WH008\"]\nseverity = { WH009 = \"error\" }\n[mirrors]\npreset = \"tuna\"\nalpine = \"m.example.com\"\n",
        )
        .unwrap();
        assert!(!cfg.enabled("WH008"));
        assert_eq!(cfg.severity["WH009"], Severity::Error);
        assert_eq!(cfg.mirrors[&MirrorKey::Alpine], "m.example.com");
        assert_eq!(cfg.mirrors[&MirrorKey::Go], "https://goproxy.cn,direct");
        assert!(matches!(
            Config::from_toml("[lint]\ndisable=[\"XX1\"]"),
            Err(ConfigError::UnknownRule(_))
        ));
        assert!(matches!(
            Config::from_toml("[lint]\nbogus=1"),
            Err(ConfigError::Toml { .. })
        ));
        assert!(matches!(parse_mirror_arg("apk=a'b"), Err(ConfigError::Mirror(_))));
        assert_eq!(parse_mirror_arg("apk=h").unwrap(), (MirrorKey::Alpine, "h".to_string()));
        assert_eq!(parse_mirror_arg("rocky=h").unwrap(), (MirrorKey::Rhel, "h".to_string()));
        assert_eq!(
            preset("tuna").unwrap()[&MirrorKey::Rhel],
            "mirrors.tuna.tsinghua.edu.cn"
        );
    }
}
