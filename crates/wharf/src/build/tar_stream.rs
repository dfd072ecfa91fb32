//! Tar entries written by hand, header by header, for the two tars `wharf build` streams into the engine: the build
//! context (whose headers must carry exactly the fields the engine's tarsum reads, the way the docker CLI writes
//! them: a directory's name ends with `/`, which `tar::Builder` drops) and the `docker load` archive of the planned
//! cache image (whose layers come straight from the registry as they arrive). `tar::Header` lays out the block;
//! names longer than its field go in a PAX record, as Go's writer does.

use std::io::Write;

use tar::{EntryType, Header};

const BLOCK: usize = 512;

/// The header block(s) of one entry: a PAX record first when the name or link does not fit.
pub fn header(name: &str, mode: u32, size: u64, kind: EntryType, link: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK);
    let mut records = Vec::new();
    if name.len() > 100 {
        records.push(("path", name));
    }
    if let Some(l) = link.filter(|l| l.len() > 100) {
        records.push(("linkpath", l));
    }
    if !records.is_empty() {
        let mut body = Vec::new();
        for (k, v) in records {
            body.extend_from_slice(&pax_record(k, v));
        }
        out.extend_from_slice(&block(
            &format!("PaxHeaders.0/{}", short(name, 80)),
            0o644,
            body.len() as u64,
            EntryType::XHeader,
            None,
        ));
        out.extend_from_slice(&body);
        out.extend_from_slice(&padding(body.len() as u64));
    }
    out.extend_from_slice(&block(name, mode, size, kind, link));
    out
}

/// Zeros up to the next block boundary after `size` bytes of content.
pub fn padding(size: u64) -> Vec<u8> {
    let rem = (size % BLOCK as u64) as usize;
    if rem == 0 { Vec::new() } else { vec![0; BLOCK - rem] }
}

/// The two zero blocks that end an archive.
pub fn end() -> Vec<u8> {
    vec![0; 2 * BLOCK]
}

fn short(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `"<len> key=value\n"`, where `<len>` counts the whole record, itself included.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + rest.to_string().len();
    if len.to_string().len() != rest.to_string().len() {
        len = rest + len.to_string().len();
    }
    format!("{len} {key}={value}\n").into_bytes()
}

fn block(name: &str, mode: u32, size: u64, kind: EntryType, link: Option<&str>) -> [u8; BLOCK] {
    let mut h = Header::new_ustar();
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(0);
    h.set_entry_type(kind);
    if let Some(u) = h.as_ustar_mut() {
        let n = short(name, 100).as_bytes();
        u.name[..n.len()].copy_from_slice(n);
        if let Some(l) = link {
            let l = short(l, 100).as_bytes();
            u.linkname[..l.len()].copy_from_slice(l);
        }
    }
    h.set_cksum();
    let mut out = [0u8; BLOCK];
    out.copy_from_slice(h.as_bytes());
    out
}

/// Writes one whole entry with its content.
pub fn write_entry(w: &mut dyn Write, name: &str, mode: u32, content: &[u8]) -> std::io::Result<()> {
    w.write_all(&header(name, mode, content.len() as u64, EntryType::Regular, None))?;
    w.write_all(content)?;
    w.write_all(&padding(content.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_slash_and_long_ones_survive() {
        let long = format!("{}/file", "d".repeat(150));
        let mut tar_bytes = Vec::new();
        tar_bytes.extend(header("dir/", 0o755, 0, EntryType::Directory, None));
        write_entry(&mut tar_bytes, &long, 0o600, b"hello").unwrap();
        tar_bytes.extend(header("link", 0o777, 0, EntryType::Symlink, Some(&long)));
        tar_bytes.extend(end());
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let got: Vec<(String, u32, u64, Option<String>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                    e.header().mode().unwrap(),
                    e.size(),
                    e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("dir/".to_string(), 0o755, 0, None),
                (long.clone(), 0o600, 5, None),
                ("link".to_string(), 0o777, 0, Some(long)),
            ]
        );
        assert_eq!(pax_record("path", "x"), b"9 path=x\n");
        assert_eq!(pax_record("path", &"y".repeat(93)).len(), 103);
    }
}
