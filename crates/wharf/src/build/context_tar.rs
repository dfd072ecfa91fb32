//! The build context as the tar `POST /build` reads: exactly the entries [`ContextHashes`] hashed, in its order,
//! with the header fields its tarsum reads (owner 0, permission bits, names as the docker CLI writes them), so the
//! keys `wharf cache plan` predicted are the keys the engine computes. Written on a blocking thread, streamed as it
//! is written.

use std::io::Write;

use tar::EntryType;
use wharf_client::BlobStream;
use wharf_client::compress::ChannelWriter;
use wharf_dockerfile::source_hash::{ContextHashes, Sent, SentBody};

use super::tar_stream::{end, header, padding, write_entry};

/// The context tar, streamed.
pub fn stream(context: &ContextHashes) -> BlobStream {
    let entries = context.sent().to_vec();
    let (mut writer, stream) = ChannelWriter::pair();
    tokio::task::spawn_blocking(move || match write_all(&mut writer, &entries) {
        Ok(()) => {}
        Err(e) => writer.fail(wharf_client::Error::io("the build context", e)),
    });
    stream
}

fn write_all(w: &mut ChannelWriter, entries: &[Sent]) -> std::io::Result<()> {
    for e in entries {
        match &e.body {
            SentBody::Dir => w.write_all(&header(&e.name, e.mode, 0, EntryType::Directory, None))?,
            SentBody::Symlink(t) => w.write_all(&header(&e.name, e.mode, 0, EntryType::Symlink, Some(t)))?,
            SentBody::HardLink(first) => w.write_all(&header(&e.name, e.mode, 0, EntryType::Link, Some(first)))?,
            SentBody::Bytes(b) => write_entry(w, &e.name, e.mode, b)?,
            SentBody::File(path, size) => {
                w.write_all(&header(&e.name, e.mode, *size, EntryType::Regular, None))?;
                let file = std::fs::File::open(path)?;
                // Exactly the size the header announced, even if the file changed since it was hashed: a
                // shorter file fails the build rather than shifting the rest of the tar.
                let copied = std::io::copy(&mut std::io::Read::take(file, *size), w)?;
                if copied != *size {
                    return Err(std::io::Error::other(format!(
                        "{} changed while the build context was sent",
                        path.display()
                    )));
                }
                w.write_all(&padding(*size))?;
            }
        }
    }
    w.write_all(&end())?;
    w.flush()
}
