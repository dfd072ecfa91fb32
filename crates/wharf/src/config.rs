//! The configuration file (TOML) and its defaults. Every option is documented in `wharf.example.toml`, and
//! a test checks that file parses to exactly these defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub storage: Storage,
    pub cache: Cache,
    pub limits: Limits,
    pub log: Log,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    pub listen: SocketAddr,
    /// Seconds that in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    pub root: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cache {
    pub blob_descriptors: u64,
    pub manifest_bytes: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_manifest_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    pub level: String,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            shutdown_grace_secs: 30,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            root: PathBuf::from("./wharf-data"),
        }
    }
}

impl Default for Cache {
    fn default() -> Self {
        let d = wharf_storage::CacheConfig::default();
        Cache {
            blob_descriptors: d.blob_descriptors,
            manifest_bytes: d.manifest_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: wharf_registry::RegistryConfig::default().max_manifest_bytes,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".into() }
    }
}

impl Config {
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("invalid configuration in {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_matches_defaults() {
        let text = include_str!("../../../wharf.example.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::parse("[server]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = Config::parse("[storage]\nroot = \"/srv/wharf\"\n").unwrap();
        assert_eq!(c.storage.root, PathBuf::from("/srv/wharf"));
        assert_eq!(c.server, Server::default());
    }
}
