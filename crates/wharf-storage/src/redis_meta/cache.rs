//! [`RedisCache`]: the replicas' shared cache of blob descriptors, repository links, tags and manifests, in front of
//! any [`RegistryStore`]. The key layout and the invalidation protocol are in the module documentation
//! ([`crate::redis_meta`]); this file holds the scripts that implement them and the decorator.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Script;
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;

use super::{RedisMeta, fresh_token};
use crate::{
    ByteStream, LayerBlob, LayerEntry, LayerForm, NewManifest, OpenBlob, Prune, Reference, RegistryStore, Result,
    StoredManifest, UploadStatus, Uploads,
};

/// How long cache entries live in Redis, and which manifests are cached.
#[derive(Debug, Clone, Copy)]
pub struct RedisCacheConfig {
    /// Tags and repository links: invalidated by writes, the TTL is the last guard against a missed invalidation.
    pub mutable_ttl: Duration,
    /// Blob descriptors and manifests, named by their digest.
    pub immutable_ttl: Duration,
    /// Larger manifests are served from the store every time (they are rare, and Redis memory is shared).
    pub max_manifest_bytes: usize,
}

impl Default for RedisCacheConfig {
    fn default() -> Self {
        RedisCacheConfig {
            mutable_ttl: Duration::from_secs(3600),
            immutable_ttl: Duration::from_secs(24 * 3600),
            max_manifest_bytes: 256 << 10,
        }
    }
}

/// Entries live at most this long whatever the configuration, so an epoch key (which lives [`EPOCH_TTL_SECS`])
/// normally outlives the entries stamped with it; if it does not, they only miss.
const MAX_ENTRY_TTL_SECS: u64 = 3 * 24 * 3600;
const EPOCH_TTL_SECS: u64 = 4 * 24 * 3600;

/// KEYS: scope keys (the generation first), then the entry. Returns `{'hit', payload}` for a valid entry, else
/// `{'miss', <current value of each scope, '' if absent>...}`.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = #KEYS
local parts = {}
local complete = true
for i = 1, n - 1 do
  local v = redis.call('GET', KEYS[i])
  if v then parts[i] = v else parts[i] = ''; complete = false end
end
if complete then
  local e = redis.call('GET', KEYS[n])
  if e then
    local stamp = table.concat(parts, '.') .. '|'
    if string.sub(e, 1, #stamp) == stamp then
      return {'hit', string.sub(e, #stamp + 1)}
    end
  end
end
table.insert(parts, 1, 'miss')
return parts
",
    )
});

/// KEYS: as for [`READ`]. ARGV: payload, entry TTL, a fresh token, epoch TTL, then the token [`READ`] returned.
/// Stores the entry only if no scope changed since; a scope absent then and now is created with the fresh token.
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = #KEYS
local parts = {}
for i = 1, n - 1 do
  local cur = redis.call('GET', KEYS[i])
  local want = ARGV[4 + i]
  if want == '' then
    if cur then return 0 end
    if i == 1 then
      redis.call('SET', KEYS[i], ARGV[3])
    else
      redis.call('SET', KEYS[i], ARGV[3], 'EX', ARGV[4])
    end
    cur = ARGV[3]
  elseif cur ~= want then
    return 0
  end
  parts[i] = cur
end
redis.call('SET', KEYS[n], table.concat(parts, '.') .. '|' .. ARGV[1], 'EX', ARGV[2])
return 1
",
    )
});

/// KEYS: epoch keys. ARGV: a fresh token, epoch TTL. Every entry stamped with their old values becomes a miss.
static BUMP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for _, k in ipairs(KEYS) do
  redis.call('SET', k, ARGV[1], 'EX', ARGV[2])
end
return 1
",
    )
});

/// A manifest by tag in one round trip. KEYS: generation, the repository's tag epoch, the tag's entry, the
/// repository's manifest epoch. ARGV: the blob epoch key and the manifest entry key without the digest (read from the
/// tag). Returns `{'hit', digest, payload}`, `{'tag', digest, <manifest token>}` (the tag is cached, its manifest
/// not) or `{'miss', <tag token>}`.
static BY_TAG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local g = redis.call('GET', KEYS[1])
local t = redis.call('GET', KEYS[2])
if not g or not t then return {'miss', g or '', t or ''} end
local e = redis.call('GET', KEYS[3])
local stamp = g .. '.' .. t .. '|'
if not e or string.sub(e, 1, #stamp) ~= stamp then return {'miss', g, t} end
local d = string.sub(e, #stamp + 1)
local b = redis.call('GET', ARGV[1] .. d)
local m = redis.call('GET', KEYS[4])
if b and m then
  local me = redis.call('GET', ARGV[2] .. d)
  local ms = g .. '.' .. b .. '.' .. m .. '|'
  if me and string.sub(me, 1, #ms) == ms then return {'hit', d, string.sub(me, #ms + 1)} end
end
return {'tag', d, g, b or '', m or ''}
",
    )
});

/// One cache entry: the scopes it depends on (the generation first), its key and TTL.
struct Entry {
    scopes: Vec<String>,
    key: String,
    ttl: u64,
}

/// The current values of an entry's scopes, read before the store was: what a fill must still find.
type Token = Vec<Vec<u8>>;

enum Lookup {
    Hit(Vec<u8>),
    Miss(Token),
    /// Redis is not usable now: ask the store and cache nothing.
    Off,
}

enum TagLookup {
    Hit(Digest, Vec<u8>),
    /// The tag is cached; its manifest is not (fill it with the token).
    Tag(Digest, Token),
    Miss(Token),
    Off,
}

/// A [`RegistryStore`] whose blob descriptors, links, tags and manifests are cached in Redis, shared by every
/// replica using the same Redis and prefix. Uploads, blob bytes, tag lists, catalog and referrers pass through.
pub struct RedisCache<S> {
    inner: S,
    meta: RedisMeta,
    config: RedisCacheConfig,
}

impl<S: RegistryStore> RedisCache<S> {
    pub fn new(inner: S, meta: RedisMeta, config: RedisCacheConfig) -> Self {
        RedisCache { inner, meta, config }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn meta(&self) -> &RedisMeta {
        &self.meta
    }

    /// Forgets blobs deleted behind the cache's back (garbage collection): their descriptors, links to them and
    /// manifests with those digests, for every replica.
    pub async fn forget_blobs(&self, digests: &[Digest]) {
        if !digests.is_empty() {
            // The layer index's answers may name them too.
            let scopes: Vec<String> = digests
                .iter()
                .map(|d| self.blob_epoch(d))
                .chain([self.layers_epoch()])
                .collect();
            self.invalidated(&scopes).await;
        }
    }

    /// Forgets `repo`'s links to `digests`, removed behind the cache's back.
    pub async fn forget_links(&self, repo: &str, digests: &[Digest]) {
        if !digests.is_empty() {
            self.invalidated(&[self.repo_epoch("links", repo)]).await;
        }
    }

    /// Forgets a manifest revision of `repo` removed behind the cache's back, and the tags that may point at it.
    pub async fn forget_manifest(&self, repo: &str, _digest: &Digest) {
        self.invalidated(&self.manifest_write_scopes(repo)).await;
    }

    fn gen_key(&self) -> String {
        self.meta.key(&["gen"])
    }

    fn blob_epoch(&self, digest: &Digest) -> String {
        self.meta.key(&["ep", "blob", &digest.to_string()])
    }

    /// `what`: "tags", "links" or "manifests".
    fn repo_epoch(&self, what: &str, repo: &str) -> String {
        self.meta.key(&["ep", what, repo])
    }

    fn manifest_write_scopes(&self, repo: &str) -> Vec<String> {
        vec![self.repo_epoch("manifests", repo), self.repo_epoch("tags", repo)]
    }

    fn ttl(&self, ttl: Duration) -> u64 {
        ttl.as_secs().clamp(1, MAX_ENTRY_TTL_SECS)
    }

    fn blob_entry(&self, digest: &Digest) -> Entry {
        let d = digest.to_string();
        Entry {
            scopes: vec![self.gen_key(), self.blob_epoch(digest)],
            key: self.meta.key(&["blob", &d]),
            ttl: self.ttl(self.config.immutable_ttl),
        }
    }

    fn link_entry(&self, repo: &str, digest: &Digest) -> Entry {
        let d = digest.to_string();
        Entry {
            scopes: vec![self.gen_key(), self.blob_epoch(digest), self.repo_epoch("links", repo)],
            key: self.meta.key(&["link", repo, &d]),
            ttl: self.ttl(self.config.mutable_ttl),
        }
    }

    /// The scopes' order is the one [`BY_TAG`] builds the stamp in.
    fn manifest_entry(&self, repo: &str, digest: &Digest) -> Entry {
        let d = digest.to_string();
        Entry {
            scopes: vec![
                self.gen_key(),
                self.blob_epoch(digest),
                self.repo_epoch("manifests", repo),
            ],
            key: self.meta.key(&["manifest", repo, &d]),
            ttl: self.ttl(self.config.immutable_ttl),
        }
    }

    /// The layer index's answer for a layer: invalidated by its own writes, and all at once by a prune.
    fn layer_entry(&self, diff_id: &Digest) -> Entry {
        Entry {
            scopes: vec![self.gen_key(), self.layers_epoch(), self.layer_epoch(diff_id)],
            key: self.meta.key(&["layer", &diff_id.to_string()]),
            ttl: self.ttl(self.config.mutable_ttl),
        }
    }

    fn layers_epoch(&self) -> String {
        self.meta.key(&["ep", "layers"])
    }

    fn layer_epoch(&self, diff_id: &Digest) -> String {
        self.meta.key(&["ep", "layer", &diff_id.to_string()])
    }

    fn tag_entry(&self, repo: &str, tag: &str) -> Entry {
        Entry {
            scopes: vec![self.gen_key(), self.repo_epoch("tags", repo)],
            key: self.meta.key(&["tag", repo, tag]),
            ttl: self.ttl(self.config.mutable_ttl),
        }
    }

    async fn lookup(&self, entry: &Entry) -> Lookup {
        if !self.meta.ready().await {
            return Lookup::Off;
        }
        let mut call = READ.prepare_invoke();
        for scope in &entry.scopes {
            call.key(scope);
        }
        call.key(&entry.key);
        let Ok(mut reply) = self.meta.eval::<Vec<Vec<u8>>>(&call).await else {
            return Lookup::Off;
        };
        match reply.first().map(Vec::as_slice) {
            Some(b"hit") if reply.len() == 2 => Lookup::Hit(reply.swap_remove(1)),
            Some(b"miss") if reply.len() == entry.scopes.len() + 1 => Lookup::Miss(reply.split_off(1)),
            _ => {
                self.unexpected("read");
                Lookup::Off
            }
        }
    }

    async fn lookup_tag(&self, repo: &str, tag: &str) -> TagLookup {
        if !self.meta.ready().await {
            return TagLookup::Off;
        }
        let entry = self.tag_entry(repo, tag);
        let mut call = BY_TAG.prepare_invoke();
        for scope in &entry.scopes {
            call.key(scope);
        }
        call.key(&entry.key)
            .key(self.repo_epoch("manifests", repo))
            .arg(self.meta.key(&["ep", "blob", ""]))
            .arg(self.meta.key(&["manifest", repo, ""]));
        let Ok(mut reply) = self.meta.eval::<Vec<Vec<u8>>>(&call).await else {
            return TagLookup::Off;
        };
        let digest = reply
            .get(1)
            .and_then(|d| std::str::from_utf8(d).ok()?.parse::<Digest>().ok());
        match (reply.first().map(Vec::as_slice), digest) {
            (Some(b"hit"), Some(d)) if reply.len() == 3 => TagLookup::Hit(d, reply.swap_remove(2)),
            (Some(b"tag"), Some(d)) if reply.len() == 5 => TagLookup::Tag(d, reply.split_off(2)),
            (Some(b"miss"), _) if reply.len() == 3 => TagLookup::Miss(reply.split_off(1)),
            _ => {
                self.unexpected("tag lookup");
                TagLookup::Off
            }
        }
    }

    /// A reply this code did not write (another program using the prefix, a changed script): use the store.
    fn unexpected(&self, what: &str) {
        tracing::debug!(what, prefix = %self.meta.prefix(), "unexpected reply from the Redis cache; ignoring it");
    }

    /// Stores what a miss read from the store, unless a scope changed since `token` (see the module documentation).
    /// A fill that fails is only a later miss.
    async fn fill(&self, entry: &Entry, token: &Token, payload: &[u8]) {
        if self.meta.owes_invalidation() {
            return;
        }
        let mut call = FILL.prepare_invoke();
        for scope in &entry.scopes {
            call.key(scope);
        }
        call.key(&entry.key)
            .arg(payload)
            .arg(entry.ttl)
            .arg(fresh_token())
            .arg(EPOCH_TTL_SECS);
        for part in token {
            call.arg(part.as_slice());
        }
        let _ = self.meta.eval::<i64>(&call).await;
    }

    /// Gives `scopes` fresh values. False if Redis could not be told.
    async fn bump(&self, scopes: &[String]) -> bool {
        if !self.meta.ready().await {
            return false;
        }
        let mut call = BUMP.prepare_invoke();
        for scope in scopes {
            call.key(scope);
        }
        call.arg(fresh_token()).arg(EPOCH_TTL_SECS);
        self.meta.eval::<i64>(&call).await.is_ok()
    }

    /// After a change made behind the cache: bump, or owe a generation change.
    async fn invalidated(&self, scopes: &[String]) {
        if !self.bump(scopes).await {
            self.meta.owe();
        }
    }

    /// Runs a write that invalidates `scopes`, bumping them before and after; if the second bump cannot reach
    /// Redis, the process owes a generation change (the first only narrows the window for racing fills).
    async fn invalidating<T>(&self, scopes: &[String], write: impl Future<Output = Result<T>>) -> Result<T> {
        self.bump(scopes).await;
        let result = write.await;
        self.invalidated(scopes).await;
        result
    }

    async fn manifest_from_store(&self, repo: &str, digest: &Digest, token: &Token) -> Result<Option<StoredManifest>> {
        let found = self
            .inner
            .get_manifest(repo, &Reference::Digest(digest.clone()))
            .await?;
        if let Some(m) = &found
            && m.body.len() <= self.config.max_manifest_bytes
        {
            self.fill(&self.manifest_entry(repo, digest), token, &encode_manifest(m))
                .await;
        }
        Ok(found)
    }
}

fn encode_size(size: u64) -> Vec<u8> {
    size.to_string().into_bytes()
}

fn decode_size(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

/// `<media type length>:<media type><body>`: the body is arbitrary bytes, the media type a header value.
fn encode_manifest(m: &StoredManifest) -> Vec<u8> {
    let mut out = format!("{}:{}", m.media_type.len(), m.media_type).into_bytes();
    out.extend_from_slice(&m.body);
    out
}

fn decode_manifest(digest: Digest, mut payload: Vec<u8>) -> Option<StoredManifest> {
    let colon = payload.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&payload[..colon]).ok()?.parse().ok()?;
    let end = colon.checked_add(1)?.checked_add(len)?;
    let media_type = String::from_utf8(payload.get(colon + 1..end)?.to_vec()).ok()?;
    let body = Bytes::from(payload.split_off(end));
    Some(StoredManifest {
        digest,
        media_type,
        body,
    })
}

#[async_trait]
impl<S: RegistryStore> Uploads for RedisCache<S> {
    async fn start_upload(&self, repo: &str) -> Result<UploadStatus> {
        self.inner.start_upload(repo).await
    }

    async fn upload_status(&self, repo: &str, id: &str) -> Result<UploadStatus> {
        self.inner.upload_status(repo, id).await
    }

    async fn append_upload(&self, repo: &str, id: &str, start: Option<u64>, body: ByteStream) -> Result<UploadStatus> {
        self.inner.append_upload(repo, id, start, body).await
    }

    async fn commit_upload(&self, repo: &str, id: &str, expected: &Digest) -> Result<u64> {
        self.inner.commit_upload(repo, id, expected).await
    }

    async fn cancel_upload(&self, repo: &str, id: &str) -> Result<()> {
        self.inner.cancel_upload(repo, id).await
    }

    async fn put_blob(&self, repo: &str, expected: &Digest, body: ByteStream) -> Result<u64> {
        self.inner.put_blob(repo, expected, body).await
    }
}

#[async_trait]
impl<S: RegistryStore> RegistryStore for RedisCache<S> {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let entry = self.blob_entry(digest);
        let token = match self.lookup(&entry).await {
            Lookup::Hit(p) => match decode_size(&p) {
                Some(size) => return Ok(Some(size)),
                None => None,
            },
            Lookup::Miss(token) => Some(token),
            Lookup::Off => None,
        };
        let size = self.inner.blob_size(digest).await?;
        if let (Some(s), Some(token)) = (size, token) {
            self.fill(&entry, &token, &encode_size(s)).await;
        }
        Ok(size)
    }

    async fn repo_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let entry = self.link_entry(repo, digest);
        let token = match self.lookup(&entry).await {
            Lookup::Hit(p) => match decode_size(&p) {
                Some(size) => return Ok(Some(size)),
                None => None,
            },
            Lookup::Miss(token) => Some(token),
            Lookup::Off => None,
        };
        let size = self.inner.repo_blob_size(repo, digest).await?;
        if let (Some(s), Some(token)) = (size, token) {
            self.fill(&entry, &token, &encode_size(s)).await;
        }
        Ok(size)
    }

    async fn open_blob(&self, repo: &str, digest: &Digest) -> Result<Option<OpenBlob>> {
        self.inner.open_blob(repo, digest).await
    }

    async fn blob_redirect(&self, repo: &str, digest: &Digest) -> Result<Option<String>> {
        self.inner.blob_redirect(repo, digest).await
    }

    async fn remove_blob(&self, digest: &Digest) -> Result<bool> {
        self.invalidating(&[self.blob_epoch(digest)], self.inner.remove_blob(digest))
            .await
    }

    /// A new link changes no cached answer (misses are not cached).
    async fn link_blob(&self, repo: &str, digest: &Digest) -> Result<()> {
        self.inner.link_blob(repo, digest).await
    }

    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        self.invalidating(&[self.repo_epoch("links", repo)], self.inner.unlink_blob(repo, digest))
            .await
    }

    /// Moves tags: the repository's tag entries are invalidated. The manifest itself is named by its digest, so a
    /// cached copy cannot be wrong.
    async fn put_manifest(&self, repo: &str, m: NewManifest) -> Result<()> {
        if m.tags.is_empty() {
            return self.inner.put_manifest(repo, m).await;
        }
        self.invalidating(&[self.repo_epoch("tags", repo)], self.inner.put_manifest(repo, m))
            .await
    }

    async fn get_manifest(&self, repo: &str, reference: &Reference) -> Result<Option<StoredManifest>> {
        match reference {
            Reference::Digest(d) => {
                let entry = self.manifest_entry(repo, d);
                match self.lookup(&entry).await {
                    Lookup::Hit(p) => match decode_manifest(d.clone(), p) {
                        Some(m) => Ok(Some(m)),
                        None => self.inner.get_manifest(repo, reference).await,
                    },
                    Lookup::Miss(token) => self.manifest_from_store(repo, d, &token).await,
                    Lookup::Off => self.inner.get_manifest(repo, reference).await,
                }
            }
            Reference::Tag(t) => match self.lookup_tag(repo, t).await {
                TagLookup::Hit(d, p) => match decode_manifest(d, p) {
                    Some(m) => Ok(Some(m)),
                    None => self.inner.get_manifest(repo, reference).await,
                },
                TagLookup::Tag(d, token) => match self.manifest_from_store(repo, &d, &token).await? {
                    Some(m) => Ok(Some(m)),
                    // The revision went away under a tag entry not yet invalidated: ask the store by tag.
                    None => self.inner.get_manifest(repo, reference).await,
                },
                TagLookup::Miss(token) => {
                    let found = self.inner.get_manifest(repo, reference).await?;
                    if let Some(m) = &found {
                        let entry = self.tag_entry(repo, t);
                        self.fill(&entry, &token, m.digest.to_string().as_bytes()).await;
                    }
                    Ok(found)
                }
                TagLookup::Off => self.inner.get_manifest(repo, reference).await,
            },
        }
    }

    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<bool> {
        self.invalidating(
            &self.manifest_write_scopes(repo),
            self.inner.delete_manifest(repo, digest),
        )
        .await
    }

    async fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool> {
        self.invalidating(&[self.repo_epoch("tags", repo)], self.inner.delete_tag(repo, tag))
            .await
    }

    async fn tags(&self, repo: &str) -> Result<Option<Vec<String>>> {
        self.inner.tags(repo).await
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        self.inner.repositories().await
    }

    async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        self.inner.referrers(repo, subject).await
    }

    async fn layer_forms(&self, diff_id: &Digest) -> Result<Vec<LayerForm>> {
        let entry = self.layer_entry(diff_id);
        let token = match self.lookup(&entry).await {
            Lookup::Hit(p) => match serde_json::from_slice::<Vec<LayerForm>>(&p) {
                Ok(forms) => return Ok(forms),
                Err(_) => None,
            },
            Lookup::Miss(token) => Some(token),
            Lookup::Off => None,
        };
        let forms = self.inner.layer_forms(diff_id).await?;
        if let (false, Some(token), Ok(payload)) = (forms.is_empty(), token, serde_json::to_vec(&forms)) {
            self.fill(&entry, &token, &payload).await;
        }
        Ok(forms)
    }

    async fn record_layers(&self, entries: &[LayerEntry]) -> Result<()> {
        let scopes: Vec<String> = entries.iter().map(|e| self.layer_epoch(&e.diff_id)).collect();
        self.invalidating(&scopes, self.inner.record_layers(entries)).await
    }

    async fn confirm_layer(&self, diff_id: &Digest, blob: &LayerBlob) -> Result<()> {
        self.invalidating(&[self.layer_epoch(diff_id)], self.inner.confirm_layer(diff_id, blob))
            .await
    }

    async fn refuse_layer_claim(&self, diff_id: &Digest, blob: &Digest) -> Result<()> {
        self.inner.refuse_layer_claim(diff_id, blob).await
    }

    async fn layer_claims(&self, limit: usize) -> Result<Vec<LayerEntry>> {
        self.inner.layer_claims(limit).await
    }

    async fn forget_layer(&self, entry: &LayerEntry) -> Result<bool> {
        self.invalidating(&[self.layer_epoch(&entry.diff_id)], self.inner.forget_layer(entry))
            .await
    }

    async fn prune_layer_index(&self, prune: Prune<'_>) -> Result<usize> {
        self.invalidating(&[self.layers_epoch()], self.inner.prune_layer_index(prune))
            .await
    }

    async fn layer_index_complete(&self) -> Result<Option<bool>> {
        self.inner.layer_index_complete().await
    }

    async fn set_layer_index_complete(&self, complete: bool) -> Result<()> {
        self.inner.set_layer_index_complete(complete).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use redis::AsyncCommands;

    use super::*;
    use crate::FsStore;
    use crate::redis_meta::testing::{
        Counting, Gate, Mode, Proxy, Reads, RedisServer, available, free_port, meta, quick_meta, until_settled,
    };

    /// One replica: its cache over the shared store, and the reads that reached the store through it.
    struct Replica {
        cache: RedisCache<Counting>,
        reads: Arc<Reads>,
        gate: Arc<Gate>,
    }

    fn replica(store: &Arc<FsStore>, meta: RedisMeta) -> Replica {
        let reads = Arc::new(Reads::default());
        let gate = Arc::new(Gate::default());
        let counting = Counting {
            store: store.clone(),
            reads: reads.clone(),
            gate: gate.clone(),
        };
        Replica {
            cache: RedisCache::new(counting, meta, RedisCacheConfig::default()),
            reads,
            gate,
        }
    }

    fn shared_store() -> (tempfile::TempDir, Arc<FsStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::open(dir.path()).unwrap());
        (dir, store)
    }

    fn manifest(n: u8, tag: &str) -> NewManifest {
        let body = Bytes::from(format!("{{\"schemaVersion\":2,\"n\":{n}}}"));
        NewManifest {
            digest: Digest::sha256_of(&body),
            media_type: wharf_oci::media::OCI_MANIFEST.into(),
            body,
            tags: vec![tag.to_owned()],
            referrer: None,
        }
    }

    fn body(bytes: &'static [u8]) -> ByteStream {
        Box::pin(futures_util::stream::once(async move { Ok(Bytes::from_static(bytes)) }))
    }

    async fn by_tag(r: &Replica, tag: &str) -> Option<Digest> {
        let m = r.cache.get_manifest("r", &Reference::Tag(tag.into())).await.unwrap();
        m.map(|m| m.digest)
    }

    async fn by_digest(r: &Replica, d: &Digest) -> Option<StoredManifest> {
        r.cache.get_manifest("r", &Reference::Digest(d.clone())).await.unwrap()
    }

    /// Reads `tag` through `r` until the store is no longer consulted, so the next read is a hit.
    async fn warm_tag(r: &Replica, tag: &str, want: &Digest) {
        for _ in 0..2 {
            assert_eq!(by_tag(r, tag).await.as_ref(), Some(want));
        }
        let before = r.reads.manifests();
        assert_eq!(by_tag(r, tag).await.as_ref(), Some(want));
        assert_eq!(r.reads.manifests(), before, "a warm tag must be served from Redis");
    }

    async fn ttl(redis: &RedisServer, key: &str) -> i64 {
        redis.raw().await.ttl(key).await.unwrap()
    }

    #[tokio::test]
    async fn a_hit_after_a_miss_does_not_reach_the_store() {
        let Some(redis) = RedisServer::start() else { return };
        let (_dir, store) = shared_store();
        let a = replica(&store, meta(&redis.url()).await);
        let m = manifest(1, "t");
        a.cache.put_manifest("r", m.clone()).await.unwrap();

        // By tag: the first read caches the tag, the second its manifest, the third is a hit.
        for _ in 0..3 {
            assert_eq!(by_tag(&a, "t").await, Some(m.digest.clone()));
        }
        assert_eq!(a.reads.manifests(), 2);
        for _ in 0..3 {
            let got = by_digest(&a, &m.digest).await.unwrap();
            assert_eq!(
                (got.digest, got.media_type, got.body),
                (m.digest.clone(), m.media_type.clone(), m.body.clone())
            );
        }
        assert_eq!(a.reads.manifests(), 2, "the tag path cached the manifest by digest");

        let d = Digest::sha256_of(b"layer");
        a.cache.put_blob("r", &d, body(b"layer")).await.unwrap();
        for _ in 0..3 {
            assert_eq!(a.cache.blob_size(&d).await.unwrap(), Some(5));
            assert_eq!(a.cache.repo_blob_size("r", &d).await.unwrap(), Some(5));
        }
        assert_eq!(a.reads.blob_size.load(Ordering::SeqCst), 1);
        assert_eq!(a.reads.repo_blob_size.load(Ordering::SeqCst), 1);
        // Misses are not cached: a blob another repository lacks is asked for every time.
        for _ in 0..2 {
            assert_eq!(a.cache.repo_blob_size("other", &d).await.unwrap(), None);
        }
        assert_eq!(a.reads.repo_blob_size.load(Ordering::SeqCst), 3);

        let tag_ttl = ttl(&redis, "wharf:tag:r:t").await;
        assert!((1..=3600).contains(&tag_ttl), "tag TTL {tag_ttl}");
        let manifest_ttl = ttl(&redis, &format!("wharf:manifest:r:{}", m.digest)).await;
        assert!((3601..=86400).contains(&manifest_ttl), "manifest TTL {manifest_ttl}");
    }

    #[tokio::test]
    async fn large_manifests_are_not_cached() {
        let Some(redis) = RedisServer::start() else { return };
        let (_dir, store) = shared_store();
        let a = replica(&store, meta(&redis.url()).await);
        let mut m = manifest(1, "t");
        m.body = Bytes::from(vec![b' '; 256 << 10 | 1]);
        m.digest = Digest::sha256_of(&m.body);
        a.cache.put_manifest("r", m.clone()).await.unwrap();
        for _ in 0..3 {
            assert_eq!(by_digest(&a, &m.digest).await.unwrap().body.len(), m.body.len());
        }
        assert_eq!(a.reads.manifests(), 3);
    }

    #[tokio::test]
    async fn a_tag_moved_on_one_replica_is_seen_on_another_at_once() {
        let Some(redis) = RedisServer::start() else { return };
        let (_dir, store) = shared_store();
        let a = replica(&store, meta(&redis.url()).await);
        let b = replica(&store, meta(&redis.url()).await);
        let (m1, m2) = (manifest(1, "t"), manifest(2, "t"));
        a.cache.put_manifest("r", m1.clone()).await.unwrap();
        warm_tag(&b, "t", &m1.digest).await;

        a.cache.put_manifest("r", m2.clone()).await.unwrap();
        assert_eq!(by_tag(&b, "t").await, Some(m2.digest.clone()));
        assert_eq!(by_tag(&a, "t").await, Some(m2.digest.clone()));
        // And it is cached again.
        warm_tag(&b, "t", &m2.digest).await;
    }

    /// A read misses and reads the store; another replica's write lands before the read's fill arrives. The fill
    /// must be refused, or the reader's replica would serve what the write removed until the TTL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fill_racing_an_invalidation_is_refused() {
        let Some(redis) = RedisServer::start() else { return };
        let (_dir, store) = shared_store();
        let a = replica(&store, meta(&redis.url()).await);
        let b = Arc::new(replica(&store, meta(&redis.url()).await));
        let (m1, m2) = (manifest(1, "t"), manifest(2, "t"));
        let read_held = |b: &Arc<Replica>| {
            b.gate.arm();
            let b = b.clone();
            tokio::spawn(async move { by_tag(&b, "t").await })
        };

        // The tag's fill races a tag move.
        a.cache.put_manifest("r", m1.clone()).await.unwrap();
        let reader = read_held(&b);
        b.gate.reached().await;
        a.cache.put_manifest("r", m2.clone()).await.unwrap();
        b.gate.release();
        assert_eq!(
            reader.await.unwrap(),
            Some(m1.digest.clone()),
            "the racing read answers what it read"
        );
        assert_eq!(by_tag(&b, "t").await, Some(m2.digest.clone()));

        // The tag is cached now, its manifest not: the manifest's fill races its deletion.
        let reader = read_held(&b);
        b.gate.reached().await;
        assert!(a.cache.delete_manifest("r", &m2.digest).await.unwrap());
        b.gate.release();
        assert_eq!(reader.await.unwrap(), Some(m2.digest.clone()));
        assert!(by_digest(&b, &m2.digest).await.is_none());
        assert_eq!(by_tag(&b, "t").await, None);
    }

    #[tokio::test]
    async fn deletes_on_one_replica_are_seen_on_another_at_once() {
        let Some(redis) = RedisServer::start() else { return };
        let (_dir, store) = shared_store();
        let a = replica(&store, meta(&redis.url()).await);
        let b = replica(&store, meta(&redis.url()).await);
        let (m1, m2) = (manifest(1, "t"), manifest(2, "u"));
        a.cache.put_manifest("r", m1.clone()).await.unwrap();
        a.cache.put_manifest("r", m2.clone()).await.unwrap();
        warm_tag(&b, "t", &m1.digest).await;
        warm_tag(&b, "u", &m2.digest).await;

        assert!(a.cache.delete_manifest("r", &m1.digest).await.unwrap());
        assert!(by_digest(&b, &m1.digest).await.is_none());
        assert_eq!(by_tag(&b, "t").await, None);

        assert!(a.cache.delete_tag("r", "u").await.unwrap());
        assert_eq!(by_tag(&b, "u").await, None);
        assert!(
            by_digest(&b, &m2.digest).await.is_some(),
            "deleting a tag keeps its manifest"
        );
    }

    #[tokio::test]
    async fn unlinked_and_removed_blobs_are_seen_on_another_replica_at_once() {
        let Some(redis) = RedisServer::start() else { return };
        let (_dir, store) = shared_store();
        let a = replica(&store, meta(&redis.url()).await);
        let b = replica(&store, meta(&redis.url()).await);
        let d = Digest::sha256_of(b"layer");
        a.cache.put_blob("r", &d, body(b"layer")).await.unwrap();
        for _ in 0..2 {
            assert_eq!(b.cache.repo_blob_size("r", &d).await.unwrap(), Some(5));
            assert_eq!(b.cache.blob_size(&d).await.unwrap(), Some(5));
        }
        assert_eq!(b.reads.repo_blob_size.load(Ordering::SeqCst), 1);
        assert_eq!(b.reads.blob_size.load(Ordering::SeqCst), 1);

        assert!(a.cache.unlink_blob("r", &d).await.unwrap());
        assert_eq!(b.cache.repo_blob_size("r", &d).await.unwrap(), None);
        assert_eq!(
            b.cache.blob_size(&d).await.unwrap(),
            Some(5),
            "unlinking keeps the blob"
        );

        assert!(a.cache.remove_blob(&d).await.unwrap());
        assert_eq!(b.cache.blob_size(&d).await.unwrap(), None);

        // A manifest's bytes are a blob too.
        let m = manifest(1, "t");
        a.cache.put_manifest("r", m.clone()).await.unwrap();
        warm_tag(&b, "t", &m.digest).await;
        assert!(a.cache.remove_blob(&m.digest).await.unwrap());
        assert!(by_digest(&b, &m.digest).await.is_none());
        assert_eq!(by_tag(&b, "t").await, None);
    }

    #[tokio::test]
    async fn forget_hooks_invalidate_for_every_replica() {
        let Some(redis) = RedisServer::start() else { return };
        let (_dir, store) = shared_store();
        let a = replica(&store, meta(&redis.url()).await);
        let b = replica(&store, meta(&redis.url()).await);
        let d = Digest::sha256_of(b"layer");
        a.cache.put_blob("r", &d, body(b"layer")).await.unwrap();
        let m = manifest(1, "t");
        a.cache.put_manifest("r", m.clone()).await.unwrap();
        warm_tag(&b, "t", &m.digest).await;
        for _ in 0..2 {
            b.cache.repo_blob_size("r", &d).await.unwrap();
            b.cache.blob_size(&d).await.unwrap();
        }

        // Deleted behind the caches' backs, as garbage collection does.
        assert!(store.unlink_blob("r", &d).await.unwrap());
        assert!(store.remove_blob(&d).await.unwrap());
        assert!(store.delete_manifest("r", &m.digest).await.unwrap());
        assert_eq!(b.cache.blob_size(&d).await.unwrap(), Some(5), "stale until told");

        a.cache.forget_links("r", std::slice::from_ref(&d)).await;
        assert_eq!(b.cache.repo_blob_size("r", &d).await.unwrap(), None);
        a.cache.forget_blobs(std::slice::from_ref(&d)).await;
        assert_eq!(b.cache.blob_size(&d).await.unwrap(), None);
        a.cache.forget_manifest("r", &m.digest).await;
        assert_eq!(by_tag(&b, "t").await, None);
        assert!(by_digest(&b, &m.digest).await.is_none());
    }

    #[tokio::test]
    async fn a_dead_redis_falls_through_to_the_store() {
        let Some(mut redis) = RedisServer::start() else { return };
        let (_dir, store) = shared_store();
        let a = replica(&store, quick_meta(&redis.url()).await);
        let (m1, m2) = (manifest(1, "t"), manifest(2, "t"));
        a.cache.put_manifest("r", m1.clone()).await.unwrap();
        warm_tag(&a, "t", &m1.digest).await;

        redis.kill();
        let started = Instant::now();
        assert_eq!(by_tag(&a, "t").await, Some(m1.digest.clone()));
        a.cache.put_manifest("r", m2.clone()).await.unwrap();
        assert!(a.cache.meta().owes_invalidation(), "the tag move could not reach Redis");
        assert_eq!(by_tag(&a, "t").await, Some(m2.digest.clone()));
        let d = Digest::sha256_of(b"layer");
        assert_eq!(a.cache.put_blob("r", &d, body(b"layer")).await.unwrap(), 5);
        assert_eq!(a.cache.repo_blob_size("r", &d).await.unwrap(), Some(5));
        assert!(a.cache.unlink_blob("r", &d).await.unwrap());
        assert_eq!(a.cache.repo_blob_size("r", &d).await.unwrap(), None);
        assert!(a.cache.delete_manifest("r", &m2.digest).await.unwrap());
        assert_eq!(by_tag(&a, "t").await, None);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_restarted_empty_redis_serves_nothing_stale() {
        let Some(mut redis) = RedisServer::start() else { return };
        let (_dir, store) = shared_store();
        let a = replica(&store, quick_meta(&redis.url()).await);
        let b = replica(&store, quick_meta(&redis.url()).await);
        let (m1, m2) = (manifest(1, "t"), manifest(2, "t"));
        a.cache.put_manifest("r", m1.clone()).await.unwrap();
        warm_tag(&a, "t", &m1.digest).await;
        warm_tag(&b, "t", &m1.digest).await;

        redis.kill();
        a.cache.put_manifest("r", m2.clone()).await.unwrap();
        assert!(a.cache.meta().owes_invalidation());
        let redis = RedisServer::start_on(redis.port);
        assert_eq!(by_tag(&b, "t").await, Some(m2.digest.clone()));
        assert_eq!(by_tag(&a, "t").await, Some(m2.digest.clone()));
        until_settled(a.cache.meta()).await;
        let generation: Option<String> = redis.raw().await.get("wharf:gen").await.unwrap();
        assert!(generation.is_some(), "the owed generation change reached the new Redis");
        for _ in 0..3 {
            assert_eq!(by_tag(&b, "t").await, Some(m2.digest.clone()));
            assert_eq!(by_tag(&a, "t").await, Some(m2.digest.clone()));
        }
    }

    #[tokio::test]
    async fn a_write_that_missed_a_redis_that_kept_its_data_is_paid_with_a_new_generation() {
        let Some(redis) = RedisServer::start() else { return };
        let (_dir, store) = shared_store();
        let proxy = Proxy::start(redis.port).await;
        let a = replica(&store, quick_meta(&proxy.url()).await);
        let b = replica(&store, meta(&redis.url()).await);
        let (m1, m2) = (manifest(1, "t"), manifest(2, "t"));
        a.cache.put_manifest("r", m1.clone()).await.unwrap();
        warm_tag(&b, "t", &m1.digest).await;

        proxy.set(Mode::Refuse);
        a.cache.put_manifest("r", m2.clone()).await.unwrap();
        assert!(a.cache.meta().owes_invalidation());
        assert_eq!(
            by_tag(&a, "t").await,
            Some(m2.digest.clone()),
            "A answers from the store"
        );
        // B still reaches Redis and its entry survived: the window the TTL and the owed generation close. This is
        // what makes the last assertion meaningful.
        assert_eq!(by_tag(&b, "t").await, Some(m1.digest.clone()));

        proxy.set(Mode::Open);
        until_settled(a.cache.meta()).await;
        assert_eq!(by_tag(&b, "t").await, Some(m2.digest.clone()));
        warm_tag(&a, "t", &m2.digest).await;
    }

    #[tokio::test]
    async fn a_stalled_redis_costs_a_timeout_not_a_hang() {
        let Some(redis) = RedisServer::start() else { return };
        let (_dir, store) = shared_store();
        let proxy = Proxy::start(redis.port).await;
        let a = replica(&store, quick_meta(&proxy.url()).await);
        let b = replica(&store, meta(&redis.url()).await);
        let (m1, m2) = (manifest(1, "t"), manifest(2, "t"));
        a.cache.put_manifest("r", m1.clone()).await.unwrap();
        warm_tag(&a, "t", &m1.digest).await;
        warm_tag(&b, "t", &m1.digest).await;

        proxy.set(Mode::Blackhole);
        let started = Instant::now();
        assert_eq!(by_tag(&a, "t").await, Some(m1.digest.clone()));
        a.cache.put_manifest("r", m2.clone()).await.unwrap();
        assert_eq!(by_tag(&a, "t").await, Some(m2.digest.clone()));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        assert!(a.cache.meta().owes_invalidation());

        proxy.set(Mode::Open);
        until_settled(a.cache.meta()).await;
        assert_eq!(by_tag(&b, "t").await, Some(m2.digest.clone()));
    }

    #[tokio::test]
    async fn a_registry_starts_before_its_redis() {
        if !available() {
            return;
        }
        assert!(matches!(
            RedisMeta::connect("not a url", "wharf:").await,
            Err(crate::StorageError::Unavailable { service: "redis", .. })
        ));
        let port = free_port();
        let (_dir, store) = shared_store();
        let a = replica(&store, quick_meta(&format!("redis://127.0.0.1:{port}/")).await);
        let m = manifest(1, "t");
        a.cache.put_manifest("r", m.clone()).await.unwrap();
        assert_eq!(by_tag(&a, "t").await, Some(m.digest.clone()));

        let _redis = RedisServer::start_on(port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = a.reads.manifests();
            assert_eq!(by_tag(&a, "t").await, Some(m.digest.clone()));
            if a.reads.manifests() == before {
                break;
            }
            assert!(Instant::now() < deadline, "the cache never started using Redis");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
