//! A lenient view of a manifest or index (OCI or Docker schema2): just what a registry needs to check references
//! and index referrers. The stored bytes are never re-serialized, so this view never changes what clients get.
//!
//! Written by hand instead of using the `oci-spec` crate's types: those are strict OCI types (they reject or
//! normalize Docker schema2 fields and unknown media types) and a registry must accept every variant byte-exact
//! while reading only a handful of fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
    #[error("manifest mediaType {field:?} does not match Content-Type {header:?}")]
    MediaTypeMismatch { field: String, header: String },
    #[error("image manifest has no config")]
    MissingConfig,
    #[error("image manifest has no layers array")]
    MissingLayers,
    #[error("index has no manifests array")]
    MissingManifests,
}

/// A content descriptor as it appears inside manifests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// What a registry learns from a manifest body.
#[derive(Debug, Clone)]
pub struct ManifestView {
    /// The media type to store and serve: the `mediaType` field, else the `Content-Type` the client sent, else the
    /// OCI image manifest type.
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ManifestView {
    /// Parses and checks `body`. `content_type` is the request's `Content-Type`, if any.
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        let raw: Raw = serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| !c.is_empty());
        let media_type = match (&raw.media_type, header) {
            (Some(field), Some(h)) if field != h && is_manifest_type(h) => {
                return Err(ManifestError::MediaTypeMismatch {
                    field: field.clone(),
                    header: h.to_owned(),
                });
            }
            (Some(field), _) => field.clone(),
            (None, Some(h)) => h.to_owned(),
            (None, None) => {
                if raw.manifests.is_some() {
                    media::OCI_INDEX.to_owned()
                } else {
                    media::OCI_MANIFEST.to_owned()
                }
            }
        };
        let known = is_manifest_type(&media_type);
        if known && raw.schema_version.as_ref().and_then(|v| v.as_i64()) != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        if media_type == media::OCI_MANIFEST || media_type == media::DOCKER_MANIFEST {
            if raw.config.is_none() {
                return Err(ManifestError::MissingConfig);
            }
            if raw.layers.is_none() {
                return Err(ManifestError::MissingLayers);
            }
        }
        if media::is_index(&media_type) && raw.manifests.is_none() {
            return Err(ManifestError::MissingManifests);
        }
        Ok(ManifestView {
            media_type,
            artifact_type: raw.artifact_type,
            config: raw.config,
            layers: raw.layers.unwrap_or_default(),
            manifests: raw.manifests.unwrap_or_default(),
            subject: raw.subject,
            annotations: raw.annotations,
        })
    }

    /// Blobs the registry must already hold for this manifest to be complete: the config and every distributable
    /// layer. Non-distributable (foreign) layers are left out.
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(
            self.layers
                .iter()
                .filter(|d| !media::NON_DISTRIBUTABLE.contains(&d.media_type.as_str())),
        )
    }

    /// The descriptor of this manifest in a referrers index.
    pub fn referrer_descriptor(&self, digest: Digest, size: u64) -> Descriptor {
        let artifact_type = self.artifact_type.clone().or_else(|| {
            self.config
                .as_ref()
                .filter(|_| !media::is_index(&self.media_type))
                .map(|c| c.media_type.clone())
        });
        Descriptor {
            media_type: self.media_type.clone(),
            digest,
            size,
            artifact_type,
            annotations: self.annotations.clone(),
            urls: None,
            platform: None,
        }
    }
}

/// True for the four manifest media types a registry understands.
pub fn is_manifest_type(media_type: &str) -> bool {
    matches!(
        media_type,
        media::OCI_MANIFEST | media::OCI_INDEX | media::DOCKER_MANIFEST | media::DOCKER_MANIFEST_LIST
    )
}

/// The `rootfs.diff_ids` of an image config: each layer's uncompressed digest, in the order of the manifest's
/// layers.
pub fn config_diff_ids(config: &[u8]) -> Result<Vec<Digest>, ManifestError> {
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<Digest>,
    }
    let c: Config = serde_json::from_slice(config).map_err(|e| ManifestError::Json(e.to_string()))?;
    Ok(c.rootfs.diff_ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    const L1: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{CFG}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{L1}","size":0}},{{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{L1}","size":0,"urls":["http://x"]}}]{extra}}}"#,
            media::OCI_MANIFEST
        )
    }

    #[test]
    fn image_manifest_references() {
        let v = ManifestView::parse(image("").as_bytes(), Some(media::OCI_MANIFEST)).unwrap();
        assert_eq!(v.media_type, media::OCI_MANIFEST);
        assert_eq!(v.required_blobs().count(), 2);
        let r = v.referrer_descriptor(L1.parse().unwrap(), 10);
        assert_eq!(
            r.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn subject_and_artifact_type() {
        let extra = format!(
            r#","artifactType":"application/example","subject":{{"mediaType":"{}","digest":"{L1}","size":1}}"#,
            media::OCI_MANIFEST
        );
        let v = ManifestView::parse(image(&extra).as_bytes(), None).unwrap();
        assert_eq!(v.subject.as_ref().unwrap().digest.to_string(), L1);
        let r = v.referrer_descriptor(L1.parse().unwrap(), 10);
        assert_eq!(r.artifact_type.as_deref(), Some("application/example"));
    }

    #[test]
    fn rejects_bad_manifests() {
        assert!(matches!(ManifestView::parse(b"{", None), Err(ManifestError::Json(_))));
        assert!(matches!(ManifestView::parse(b"[]", None), Err(ManifestError::Json(_))));
        let no_config = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","layers":[]}}"#,
            media::OCI_MANIFEST
        );
        assert_eq!(
            ManifestView::parse(no_config.as_bytes(), None).unwrap_err(),
            ManifestError::MissingConfig
        );
        let v1 = image("").replace("\"schemaVersion\":2", "\"schemaVersion\":1");
        assert_eq!(
            ManifestView::parse(v1.as_bytes(), None).unwrap_err(),
            ManifestError::SchemaVersion
        );
        assert!(matches!(
            ManifestView::parse(image("").as_bytes(), Some(media::OCI_INDEX)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        let bad_digest = image("").replace(CFG, "sha256:xyz");
        assert!(matches!(
            ManifestView::parse(bad_digest.as_bytes(), None),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn index_without_media_type_field_uses_header() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{L1}","size":3}}]}}"#,
            media::OCI_MANIFEST
        );
        let v = ManifestView::parse(idx.as_bytes(), Some(media::OCI_INDEX)).unwrap();
        assert_eq!(v.media_type, media::OCI_INDEX);
        assert_eq!(v.manifests.len(), 1);
    }
}
