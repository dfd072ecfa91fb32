//! Layers applied onto real directories: the changeset rules (whiteouts, opaque directories, replacements,
//! links), metadata, path escapes, and a comparison with `umoci unpack` of the same image.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};
use wharf_client::rootfs::{ApplyError, ApplyOptions, ApplyStats, apply_layer};

const T0: u64 = 1_600_000_000;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A layer tar built entry by entry.
struct Layer {
    b: tar::Builder<Vec<u8>>,
}

fn header(ty: EntryType, mode: u32) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(ty);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(T0);
    h.set_size(0);
    h
}

impl Layer {
    fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn add(mut self, mut h: Header, path: &str, data: &[u8]) -> Layer {
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    fn dir(self, path: &str, mode: u32) -> Layer {
        self.add(header(EntryType::Directory, mode), path, b"")
    }

    fn dir_at(self, path: &str, mode: u32, mtime: u64) -> Layer {
        let mut h = header(EntryType::Directory, mode);
        h.set_mtime(mtime);
        self.add(h, path, b"")
    }

    fn file(self, path: &str, mode: u32, data: &[u8]) -> Layer {
        self.add(header(EntryType::Regular, mode), path, data)
    }

    fn owned(self, path: &str, mode: u32, uid: u64, gid: u64, mtime: u64, data: &[u8]) -> Layer {
        let ty = if path.ends_with('/') {
            EntryType::Directory
        } else {
            EntryType::Regular
        };
        let mut h = header(ty, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.add(h, path, data)
    }

    fn whiteout(self, path: &str) -> Layer {
        self.file(path, 0o644, b"")
    }

    fn symlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = header(EntryType::Symlink, 0o777);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    fn hardlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = header(EntryType::Link, 0o644);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    fn node(self, path: &str, ty: EntryType, mode: u32, major: u32, minor: u32) -> Layer {
        let mut h = header(ty, mode);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.add(h, path, b"")
    }

    /// PAX records for the next entry.
    fn pax(mut self, records: &[(&str, &[u8])]) -> Layer {
        self.b.append_pax_extensions(records.iter().copied()).unwrap();
        self
    }

    /// An entry whose name and link name are written verbatim (`..`, absolute paths: what `tar` refuses to write).
    fn raw(mut self, ty: EntryType, name: &str, link: &str, data: &[u8]) -> Layer {
        let mut h = header(ty, if ty == EntryType::Symlink { 0o777 } else { 0o644 });
        h.set_size(data.len() as u64);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

fn try_apply(root: &Path, layer: Layer) -> Result<ApplyStats, ApplyError> {
    apply_layer(root, &layer.bytes()[..], &ApplyOptions::default())
}

fn apply(root: &Path, layer: Layer) -> ApplyStats {
    match try_apply(root, layer) {
        Ok(stats) => stats,
        Err(e) => panic!("apply_layer failed: {e}"),
    }
}

fn new_root() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    (tmp, root)
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

fn read(p: &Path) -> String {
    String::from_utf8(std::fs::read(p).unwrap()).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

/// Every path under `root`, relative, sorted.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let child = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(child.clone());
            }
            out.push(child.to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[test]
fn whiteouts_remove_only_what_lower_layers_left() {
    let (_tmp, root) = new_root();
    apply(
        &root,
        Layer::new()
            .dir("a", 0o755)
            .file("a/f", 0o644, b"f")
            .dir("a/d", 0o755)
            .dir("a/d/deeper", 0o755)
            .file("a/d/deeper/x", 0o644, b"x")
            .file("b", 0o644, b"b")
            .file("c", 0o644, b"c"),
    );
    let stats = apply(
        &root,
        Layer::new()
            .whiteout("a/.wh.f")
            .whiteout("a/.wh.d")
            .whiteout(".wh.b")
            // A whiteout never removes this layer's own entries, before or after it in the stream.
            .file("mine", 0o644, b"mine")
            .whiteout(".wh.mine")
            .whiteout(".wh.later")
            .file("later", 0o644, b"later")
            // Whiteouts of what does not exist, or under a missing directory, are no-ops.
            .whiteout(".wh.nothing")
            .whiteout("missing/dir/.wh.x"),
    );
    assert_eq!(listing(&root), ["a", "c", "later", "mine"]);
    assert_eq!(stats.whiteouts, 7);
    assert_eq!(stats.entries, 9);
    assert_eq!(stats.bytes, 9);
}

#[test]
fn a_whited_out_directory_keeps_this_layers_children() {
    let (_tmp, root) = new_root();
    apply(
        &root,
        Layer::new()
            .dir("d", 0o755)
            .file("d/old", 0o644, b"")
            .file("d/keep-name", 0o644, b"lower"),
    );
    apply(&root, Layer::new().file("d/new", 0o644, b"new").whiteout(".wh.d"));
    assert_eq!(listing(&root), ["d", "d/new"]);
}

#[test]
fn opaque_directories_in_either_order() {
    for marker_first in [true, false] {
        let (_tmp, root) = new_root();
        apply(
            &root,
            Layer::new()
                .dir("d", 0o755)
                .file("d/a", 0o644, b"a")
                .dir("d/sub", 0o755)
                .file("d/sub/b", 0o644, b"b")
                .dir("d/gone", 0o755)
                .file("d/gone/c", 0o644, b"c")
                .dir("e", 0o755)
                .file("e/keep", 0o644, b"keep")
                .dir("x", 0o755)
                .file("x/lower", 0o644, b""),
        );
        let mut layer = Layer::new().dir("d", 0o750);
        if marker_first {
            layer = layer.whiteout("d/.wh..wh..opq");
        }
        layer = layer
            .file("d/new", 0o644, b"new")
            .dir("d/sub", 0o755)
            .file("d/sub/c", 0o644, b"c");
        if !marker_first {
            layer = layer.whiteout("d/.wh..wh..opq");
        }
        // A marker without an entry for its directory.
        layer = layer.whiteout("x/.wh..wh..opq");
        apply(&root, layer);
        assert_eq!(
            listing(&root),
            ["d", "d/new", "d/sub", "d/sub/c", "e", "e/keep", "x"],
            "marker first: {marker_first}"
        );
        assert_eq!(mode(&root.join("d")), 0o750);
    }
}

#[test]
fn an_entry_replaces_a_path_of_another_kind() {
    let (tmp, root) = new_root();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    apply(
        &root,
        Layer::new()
            .dir("d2f", 0o755)
            .file("d2f/x", 0o644, b"x")
            .file("f2d", 0o644, b"file")
            .dir("d2s", 0o755)
            .file("d2s/x", 0o644, b"x")
            .file("target", 0o644, b"orig")
            .symlink("s2f", "target")
            .dir("realdir", 0o755)
            .file("realdir/f", 0o644, b"f")
            .symlink("s2d", "realdir")
            .symlink("s2out", outside.join("secret").to_str().unwrap())
            .dir("dd", 0o755)
            .file("dd/keep", 0o644, b"keep"),
    );
    apply(
        &root,
        Layer::new()
            .file("d2f", 0o600, b"now a file")
            .dir("f2d", 0o700)
            .file("f2d/y", 0o644, b"y")
            .symlink("d2s", "elsewhere")
            .file("s2f", 0o644, b"new")
            .dir("s2d", 0o755)
            .file("s2d/z", 0o644, b"z")
            .file("s2out", 0o644, b"pwned?")
            .dir("dd", 0o700),
    );
    assert_eq!(read(&root.join("d2f")), "now a file");
    assert_eq!(mode(&root.join("d2f")), 0o600);
    assert!(root.join("f2d").is_dir());
    assert_eq!(read(&root.join("f2d/y")), "y");
    assert_eq!(std::fs::read_link(root.join("d2s")).unwrap(), Path::new("elsewhere"));
    // Writing over a symlink replaces the symlink; its target keeps its contents.
    assert_eq!(read(&root.join("s2f")), "new");
    assert_eq!(read(&root.join("target")), "orig");
    assert!(std::fs::symlink_metadata(root.join("s2d")).unwrap().is_dir());
    assert_eq!(listing(&root.join("realdir")), ["f"]);
    assert_eq!(read(&root.join("s2out")), "pwned?");
    assert_eq!(read(&outside.join("secret")), "secret");
    // A directory over a directory keeps its contents and takes the new metadata.
    assert_eq!(read(&root.join("dd/keep")), "keep");
    assert_eq!(mode(&root.join("dd")), 0o700);
}

#[test]
fn hardlinks_to_this_or_a_lower_layer() {
    let (_tmp, root) = new_root();
    apply(
        &root,
        Layer::new()
            .dir("bin", 0o755)
            .file("bin/tool", 0o755, b"tool")
            .hardlink("bin/tool2", "bin/tool")
            .symlink("bin/sl", "tool"),
    );
    assert_eq!(ino(&root.join("bin/tool")), ino(&root.join("bin/tool2")));
    apply(
        &root,
        Layer::new()
            .hardlink("bin/tool3", "bin/tool")
            // A hardlink to a symlink links the symlink itself.
            .hardlink("bin/sl2", "bin/sl")
            .symlink("lnk", "bin")
            .hardlink("via-symlink-dir", "lnk/tool")
            .raw(EntryType::Link, "abs", "/bin/tool", b"")
            .raw(EntryType::Link, "up", "../../bin/tool", b"")
            // Already the same file: nothing to do.
            .hardlink("bin/tool2", "bin/tool"),
    );
    let tool = ino(&root.join("bin/tool"));
    for p in ["bin/tool2", "bin/tool3", "via-symlink-dir", "abs", "up"] {
        assert_eq!(ino(&root.join(p)), tool, "{p}");
    }
    assert_eq!(std::fs::symlink_metadata(root.join("bin/tool")).unwrap().nlink(), 6);
    assert_eq!(ino(&root.join("bin/sl2")), ino(&root.join("bin/sl")));
    assert_eq!(std::fs::read_link(root.join("bin/sl2")).unwrap(), Path::new("tool"));

    let err = try_apply(&root, Layer::new().hardlink("x", "no/such/file")).unwrap_err();
    assert!(
        err.to_string().contains("\"x\"") && err.to_string().contains("does not exist"),
        "{err}"
    );
    let err = try_apply(&root, Layer::new().hardlink("y", "bin")).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn symlinks_are_written_verbatim() {
    let (_tmp, root) = new_root();
    apply(
        &root,
        Layer::new()
            .symlink("abs", "/etc/passwd")
            .symlink("dangling", "../nope/x")
            .symlink("dir/deep", "."),
    );
    assert_eq!(std::fs::read_link(root.join("abs")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(
        std::fs::read_link(root.join("dangling")).unwrap(),
        Path::new("../nope/x")
    );
    assert_eq!(std::fs::read_link(root.join("dir/deep")).unwrap(), Path::new("."));
    let lm = std::fs::symlink_metadata(root.join("abs")).unwrap();
    assert_eq!(lm.mtime(), T0 as i64);
}

/// `outside` must hold exactly `secret` with its original contents and one link.
fn assert_untouched(outside: &Path) {
    assert_eq!(listing(outside), ["secret"]);
    assert_eq!(read(&outside.join("secret")), "secret");
    assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().nlink(), 1);
}

#[test]
fn malicious_names_and_symlinks_stay_inside_the_root() {
    let (tmp, root) = new_root();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    // `outside` as seen from `/`, and a name that would reach it from the root through `evil -> /`.
    let host = outside.canonicalize().unwrap();
    let host_rel = host.strip_prefix("/").unwrap().to_str().unwrap().to_string();

    apply(
        &root,
        Layer::new()
            .raw(EntryType::Regular, "../../x", "", b"dotdot")
            .raw(EntryType::Regular, "/abs/file", "", b"absolute")
            .raw(EntryType::Regular, "a/../../../../b", "", b"b")
            .symlink("evil", "/")
            .file(&format!("evil/{host_rel}/pwned"), 0o644, b"1")
            .symlink("rel", "../outside")
            .file("rel/pwned", 0o644, b"2")
            .symlink("deep/up", "../../../../../../../..")
            .file(&format!("deep/up/{host_rel}/pwned3"), 0o644, b"3")
            .symlink("hostdir", host.to_str().unwrap())
            .dir("hostdir", 0o755)
            .file("hostdir/f", 0o644, b"4")
            .symlink("hostfile", host.join("secret").to_str().unwrap())
            .file("hostfile", 0o644, b"5")
            .whiteout(&format!("evil/{host_rel}/.wh.secret"))
            .whiteout("evil/.wh..wh..opq")
            .whiteout(&format!("evil/{host_rel}/.wh..wh..opq"))
            .raw(EntryType::Regular, "rel/../../.wh.outside", "", b""),
    );
    assert_untouched(&outside);
    assert_eq!(read(&root.join("x")), "dotdot");
    assert_eq!(read(&root.join("abs/file")), "absolute");
    assert_eq!(read(&root.join("b")), "b");
    assert_eq!(read(&root.join(&host_rel).join("pwned")), "1");
    assert_eq!(read(&root.join("outside/pwned")), "2");
    assert_eq!(read(&root.join(&host_rel).join("pwned3")), "3");
    assert!(std::fs::symlink_metadata(root.join("hostdir")).unwrap().is_dir());
    assert_eq!(read(&root.join("hostfile")), "5");

    // Hardlinks to files outside, by `..`, through a symlink, or absolute: confined, so not found.
    for target in [
        "../outside/secret",
        &format!("evil/{host_rel}/secret"),
        host.join("secret").to_str().unwrap(),
    ] {
        let err = try_apply(&root, Layer::new().raw(EntryType::Link, "hl", target, b"")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{target}: {err}");
    }
    // An opaque marker through a symlink acts on the directory inside the root.
    apply(&root, Layer::new().whiteout("rel/.wh..wh..opq"));
    assert_eq!(listing(&root.join("outside")), Vec::<String>::new());
    assert_untouched(&outside);

    let err = try_apply(&root, Layer::new().symlink("loop", "loop").file("loop/x", 0o644, b"")).unwrap_err();
    assert!(err.to_string().contains("\"loop/x\""), "{err}");
    let err = try_apply(&root, Layer::new().raw(EntryType::Symlink, "./", "/etc", b"")).unwrap_err();
    assert!(err.to_string().contains("root directory"), "{err}");
    let err = try_apply(&root, Layer::new().file("b/under-a-file", 0o644, b"")).unwrap_err();
    assert!(err.to_string().contains("\"b/under-a-file\""), "{err}");
    assert_untouched(&outside);
}

#[test]
fn metadata_modes_owners_times_and_xattrs() {
    let (_tmp, root) = new_root();
    let stats = apply(
        &root,
        Layer::new()
            .dir_at("d", 0o2755, T0 + 5)
            .owned("d/suid", 0o4755, 0, 0, T0 + 1, b"suid")
            .owned("d/user", 0o640, 1000, 1001, T0 + 2, b"user")
            .owned("d/none", 0o000, 0, 0, T0 + 3, b"")
            .dir_at("d/sub", 0o755, T0 + 6)
            .file("d/sub/x", 0o644, b"x")
            .dir("tmp", 0o1777)
            .pax(&[
                ("SCHILY.xattr.user.foo", b"bar"),
                ("SCHILY.xattr.user.bin", &[0, 1, 255]),
                ("mtime", b"1600000100.25"),
            ])
            .file("xattr", 0o644, b"xattr")
            .pax(&[
                ("SCHILY.xattr.user.dir", b"yes"),
                ("SCHILY.xattr.security.selinux", b"system_u:object_r:x"),
            ])
            .dir("xdir", 0o755),
    );
    assert_eq!(stats.bytes, 14);
    assert_eq!(mode(&root.join("d")), 0o2755);
    assert_eq!(mode(&root.join("d/suid")), 0o4755);
    assert_eq!(mode(&root.join("d/none")), 0);
    assert_eq!(mode(&root.join("tmp")), 0o1777);
    let user = std::fs::metadata(root.join("d/user")).unwrap();
    if is_root() {
        assert_eq!((user.uid(), user.gid()), (1000, 1001));
    }
    assert_eq!(user.mtime(), (T0 + 2) as i64);
    // Directory times are set after their contents.
    assert_eq!(std::fs::metadata(root.join("d")).unwrap().mtime(), (T0 + 5) as i64);
    assert_eq!(std::fs::metadata(root.join("d/sub")).unwrap().mtime(), (T0 + 6) as i64);
    let x = std::fs::metadata(root.join("xattr")).unwrap();
    assert_eq!((x.mtime(), x.mtime_nsec()), (1_600_000_100, 250_000_000));
    assert_eq!(
        xattrs(&root.join("xattr")).get("user.foo").map(Vec::as_slice),
        Some(&b"bar"[..])
    );
    assert_eq!(
        xattrs(&root.join("xattr")).get("user.bin").map(Vec::as_slice),
        Some(&[0u8, 1, 255][..])
    );
    assert_eq!(
        xattrs(&root.join("xdir")).get("user.dir").map(Vec::as_slice),
        Some(&b"yes"[..])
    );

    // A directory listed again takes the new layer's xattrs only; a lower directory the layer changes without
    // listing it keeps its times.
    apply(
        &root,
        Layer::new()
            .pax(&[("SCHILY.xattr.user.other", b"1")])
            .dir("xdir", 0o755)
            .file("d/added", 0o644, b"")
            .whiteout("d/sub/.wh.x")
            .file("new/implicit/parents", 0o644, b""),
    );
    let xd = xattrs(&root.join("xdir"));
    assert_eq!(xd.keys().collect::<Vec<_>>(), ["user.other"]);
    assert_eq!(std::fs::metadata(root.join("d")).unwrap().mtime(), (T0 + 5) as i64);
    assert_eq!(std::fs::metadata(root.join("d/sub")).unwrap().mtime(), (T0 + 6) as i64);
    assert_eq!(mode(&root.join("new")), 0o755);
    assert_eq!(mode(&root.join("new/implicit")), 0o755);

    // The root itself, from a `./` entry.
    apply(&root, Layer::new().dir_at("./", 0o750, T0));
    assert_eq!(mode(&root), 0o750);
    assert_eq!(std::fs::metadata(&root).unwrap().mtime(), T0 as i64);
}

#[test]
fn lower_directories_keep_their_times() {
    let (_tmp, root) = new_root();
    apply(
        &root,
        Layer::new()
            .dir_at("a", 0o755, T0 + 1)
            .dir_at("b", 0o755, T0 + 2)
            .file("b/y", 0o644, b"y")
            .dir_at("c", 0o755, T0 + 3)
            .dir_at("d", 0o755, T0 + 4)
            .file("d/old", 0o644, b""),
    );
    apply(
        &root,
        Layer::new()
            // `b` is first seen as a hardlink's source directory, then changed.
            .hardlink("a/x", "b/y")
            .file("b/z", 0o644, b"z")
            .file("c/implied/dirs/f", 0o644, b"")
            .whiteout("d/.wh.old"),
    );
    for (dir, t) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
        assert_eq!(
            std::fs::metadata(root.join(dir)).unwrap().mtime(),
            (T0 + t) as i64,
            "{dir}"
        );
    }
}

#[test]
fn an_unreadable_pax_record_does_not_fail_the_layer() {
    // tar 0.4 cuts PAX records at newlines, so an xattr whose value holds one is lost (with a warning); the entry
    // and its other records still apply.
    let (_tmp, root) = new_root();
    apply(
        &root,
        Layer::new()
            .pax(&[("SCHILY.xattr.user.nl", b"a\nb"), ("SCHILY.xattr.user.ok", b"ok")])
            .file("f", 0o640, b"f"),
    );
    assert_eq!(mode(&root.join("f")), 0o640);
    assert_eq!(
        xattrs(&root.join("f")).get("user.ok").map(Vec::as_slice),
        Some(&b"ok"[..])
    );
}

#[test]
fn device_nodes_and_fifos() {
    let (_tmp, root) = new_root();
    apply(
        &root,
        Layer::new()
            .node("fifo", EntryType::Fifo, 0o640, 0, 0)
            .node("null", EntryType::Char, 0o666, 1, 3)
            .node("loop9", EntryType::Block, 0o660, 7, 9),
    );
    let fifo = std::fs::symlink_metadata(root.join("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o640);
    if is_root() {
        let null = std::fs::symlink_metadata(root.join("null")).unwrap();
        if null.file_type().is_char_device() {
            assert_eq!(null.rdev(), libc::makedev(1, 3));
            assert_eq!(null.mode() & 0o7777, 0o666);
            assert!(
                std::fs::symlink_metadata(root.join("loop9"))
                    .unwrap()
                    .file_type()
                    .is_block_device()
            );
        } else {
            eprintln!("note: mknod of devices refused here (user namespace?); skipped");
        }
    } else {
        assert!(!exists(&root.join("null")));
    }
}

#[test]
fn large_files_stream_and_the_whole_stream_is_read() {
    let (_tmp, root) = new_root();
    let big = common::bytes(7, 5 << 20 | 12345);
    let mut tar = Layer::new().file("big", 0o644, &big).bytes();
    // Trailing padding after the end-of-archive blocks (GNU tar pads to 10 KiB records).
    tar.extend_from_slice(&[0; 9000]);
    struct Counting<'a>(&'a [u8], usize);
    impl Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n;
            Ok(n)
        }
    }
    let mut reader = Counting(&tar, 0);
    let stats = apply_layer(&root, &mut reader, &ApplyOptions::default()).unwrap();
    assert_eq!(reader.1, tar.len());
    assert_eq!(stats.bytes, big.len() as u64);
    assert!(std::fs::read(root.join("big")).unwrap() == big);
}

#[test]
fn truncated_or_corrupt_streams_fail_with_the_entry_name() {
    let (_tmp, root) = new_root();
    let tar = Layer::new()
        .file("first", 0o644, b"1")
        .file("cut/short", 0o644, &[7; 10_000])
        .bytes();
    let err = apply_layer(&root, &tar[..512 * 4 + 3000], &ApplyOptions::default()).unwrap_err();
    assert!(matches!(err, ApplyError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("\"cut/short\""), "{err}");

    let mut bad = Layer::new()
        .file("first", 0o644, b"1")
        .file("second", 0o644, b"2")
        .bytes();
    bad[1024 + 100] ^= 0x55; // the second header's mode field: checksum mismatch
    let err = apply_layer(&root, &bad[..], &ApplyOptions::default()).unwrap_err();
    assert!(err.to_string().contains("after \"first\""), "{err}");

    let err = apply_layer(&root.join("missing"), &tar[..], &ApplyOptions::default()).unwrap_err();
    assert!(matches!(err, ApplyError::Root { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// Comparison with umoci.

/// The `user.*` xattrs of a path (not following a symlink).
fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: buffers are valid for their lengths.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr() as *mut libc::c_char, names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(b"user.") {
            continue;
        }
        let cname = std::ffi::CString::new(name).unwrap();
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: as above.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr() as *mut libc::c_void,
                value.len(),
            )
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.insert(String::from_utf8_lossy(name).into_owned(), value);
        }
    }
    out
}

/// What [`compare_trees`] compares of one path.
#[derive(Debug, PartialEq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    rdev: u64,
    link: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// `None` for directories unless asked for: a directory that a layer only implies (it lists `a/b` but not
    /// `a/`) is made "now", so its time differs between any two unpacks.
    mtime: Option<(i64, i64)>,
}

/// Every path under `root` (the root itself excluded) with its node and its inode.
fn scan(root: &Path, dir_times: bool) -> BTreeMap<PathBuf, (Node, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(dir) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in dir.flatten() {
            let child = rel.join(e.file_name());
            let path = root.join(&child);
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(child.clone());
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "char"
            } else if ft.is_block_device() {
                "block"
            } else {
                "other"
            };
            let node = Node {
                kind,
                mode: if ft.is_symlink() { 0 } else { m.mode() & 0o7777 },
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_dir() { 0 } else { m.size() },
                rdev: m.rdev(),
                link: std::fs::read_link(&path).ok(),
                xattrs: xattrs(&path),
                mtime: (dir_times || !ft.is_dir()).then(|| (m.mtime(), m.mtime_nsec())),
            };
            out.insert(child, (node, m.ino()));
        }
    }
    out
}

fn same_contents(a: &Path, b: &Path) -> bool {
    let (Ok(mut fa), Ok(mut fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = fill(&mut fa, &mut ba);
        let nb = fill(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn fill(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// Differences between two root filesystems, one line each (empty: the same): the set of paths; for each path its
/// type, permission bits, owner, size, device number, symlink target, `user.*` xattrs, file contents, the
/// modification time of everything but directories, and which other paths are hardlinks of it. The roots' own
/// metadata is not compared.
pub fn compare_trees(a: &Path, b: &Path) -> Vec<String> {
    compare_trees_with(a, b, false)
}

/// [`compare_trees`], comparing the modification times of directories too when `dir_times`.
pub fn compare_trees_with(a: &Path, b: &Path, dir_times: bool) -> Vec<String> {
    let (ta, tb) = (scan(a, dir_times), scan(b, dir_times));
    let mut diffs = Vec::new();
    let groups = |t: &BTreeMap<PathBuf, (Node, u64)>| {
        let mut by_ino: HashMap<u64, BTreeSet<PathBuf>> = HashMap::new();
        for (p, (n, ino)) in t {
            if n.kind != "dir" {
                by_ino.entry(*ino).or_default().insert(p.clone());
            }
        }
        by_ino
    };
    let (ga, gb) = (groups(&ta), groups(&tb));
    for path in ta.keys().chain(tb.keys()).collect::<BTreeSet<_>>() {
        let shown = path.display();
        let (Some((na, ia)), Some((nb, ib))) = (ta.get(path), tb.get(path)) else {
            let side = if ta.contains_key(path) { a } else { b };
            diffs.push(format!("{shown}: only in {}", side.display()));
            continue;
        };
        if na != nb {
            diffs.push(format!("{shown}: {na:?} != {nb:?}"));
        }
        if na.kind == "file" && nb.kind == "file" && !same_contents(&a.join(path), &b.join(path)) {
            diffs.push(format!("{shown}: contents differ"));
        }
        if na.kind != "dir" && nb.kind != "dir" {
            let (la, lb) = (&ga[ia], &gb[ib]);
            if la != lb {
                diffs.push(format!("{shown}: hardlinked with {la:?} != {lb:?}"));
            }
        }
    }
    diffs
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Writes an OCI layout at `dir` holding one image, tagged `tag`, of these (uncompressed) layers, gzipped.
fn write_layout(dir: &Path, tag: &str, layers: &[Vec<u8>]) {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        diff_ids.push(wharf_oci::Digest::sha256_of(layer).to_string());
        let gz = gzip(layer);
        let digest = common::put_blob(dir, &gz);
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": gz.len(),
        }));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = common::put_blob(dir, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let digest = common::put_blob(dir, &manifest);
    common::write_index(dir, tag, &digest, manifest.len());
}

/// The three layers of the comparison image.
fn comparison_layers() -> Vec<Vec<u8>> {
    let base = Layer::new()
        .dir("etc", 0o755)
        .file("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n")
        .file("etc/shadow", 0o640, b"root:*::0:::::\n")
        .owned("etc/mode0", 0o000, 0, 0, T0 + 9, b"nobody reads this")
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .owned("usr/bin/tool", 0o4755, 0, 0, T0 + 1, b"#!/bin/sh\necho tool\n")
        .owned("usr/bin/sgid", 0o2755, 0, 50, T0 + 2, b"sgid")
        .hardlink("usr/bin/tool-hard", "usr/bin/tool")
        .symlink("usr/bin/tool-sym", "tool")
        .symlink("usr/bin/abs-sym", "/usr/bin/tool")
        .dir("usr/lib", 0o755)
        .symlink("lib", "usr/lib")
        .dir("home", 0o755)
        .owned("home/user/", 0o750, 1000, 1000, T0 + 3, b"")
        .owned("home/user/.profile", 0o600, 1000, 1000, T0 + 4, b"export PS1=$\n")
        .dir("tmp", 0o1777)
        .node("tmp/fifo", EntryType::Fifo, 0o620, 0, 0)
        .dir("dev", 0o755)
        .node("dev/null", EntryType::Char, 0o666, 1, 3)
        .pax(&[("SCHILY.xattr.user.foo", b"bar")])
        .file("etc/with-xattr", 0o644, b"xattr")
        .pax(&[("SCHILY.xattr.user.dir", b"d")])
        .dir("xdir", 0o755)
        .dir("opq", 0o755)
        .file("opq/a", 0o644, b"a")
        .dir("opq/sub", 0o755)
        .file("opq/sub/b", 0o644, b"b")
        .dir("d2f", 0o755)
        .file("d2f/x", 0o644, b"x")
        .file("f2d", 0o644, b"f2d")
        .dir("s2d", 0o755)
        .dir("wh", 0o755)
        .file("wh/gone", 0o644, b"gone")
        .file("wh/stay", 0o644, b"stay")
        .dir("whdir", 0o755)
        .dir("whdir/tree", 0o755)
        .file("whdir/tree/leaf", 0o644, b"leaf")
        .file(&format!("long/{}", "n".repeat(150)), 0o644, b"long name")
        .symlink("s2dir", "usr")
        .symlink("abslib", "/usr/lib")
        .pax(&[("uid", b"100000"), ("gid", b"100001"), ("mtime", b"1600000100.25")])
        .file("usr/pax-owner", 0o644, b"big ids")
        .bytes();
    let second = Layer::new()
        .whiteout("wh/.wh.gone")
        .whiteout("whdir/.wh.tree")
        .dir("opq", 0o700)
        .file("opq/before", 0o644, b"before")
        .whiteout("opq/.wh..wh..opq")
        .file("opq/after", 0o644, b"after")
        .file("d2f", 0o600, b"dir became a file")
        .dir("f2d", 0o751)
        .file("f2d/inside", 0o644, b"inside")
        .symlink("s2d", "usr")
        .owned("etc/passwd", 0o600, 0, 42, T0 + 7, b"root:x:0:0::/root:/bin/bash\n")
        .hardlink("usr/bin/lower-hard", "usr/bin/tool")
        .owned("home/user/", 0o700, 1000, 1000, T0 + 8, b"")
        .file("lib/libx.so", 0o755, b"\x7fELF")
        .pax(&[("SCHILY.xattr.user.dir2", b"e")])
        .dir("xdir", 0o755)
        .file("etc/added", 0o644, b"added")
        .file("same-layer", 0o644, b"kept")
        .whiteout(".wh.same-layer")
        .hardlink("usr/bin/sym-hard", "usr/bin/abs-sym")
        .dir("s2dir", 0o755)
        .file("s2dir/f", 0o644, b"f")
        .file("abslib/abs.so", 0o644, b"abs")
        .bytes();
    let third = Layer::new()
        .whiteout("home/.wh.user")
        .file("home/other", 0o644, b"other")
        .whiteout("usr/bin/.wh.tool-sym")
        .file("usr/bin/tool", 0o755, b"replaced, the hardlinks keep the old contents")
        .bytes();
    vec![base, second, third]
}

#[test]
fn applying_an_image_matches_umoci_unpack() {
    let umoci = ["/usr/bin/umoci", "/usr/local/bin/umoci"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    let Some(umoci) = umoci else {
        eprintln!("note: umoci not found; comparison with umoci skipped");
        return;
    };
    if !is_root() {
        eprintln!("note: not root; comparison with umoci (which needs root to keep owners) skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let layers = comparison_layers();
    write_layout(&layout, "test", &layers);

    let bundle = tmp.path().join("bundle");
    let out = std::process::Command::new(umoci)
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ours = tmp.path().join("ours");
    std::fs::create_dir(&ours).unwrap();
    for layer in &layers {
        apply_layer(&ours, &layer[..], &ApplyOptions::default()).unwrap();
    }
    let theirs = bundle.join("rootfs");
    let diffs = compare_trees(&theirs, &ours);
    assert!(diffs.is_empty(), "differences with umoci:\n{}", diffs.join("\n"));
    // Directory times are the same too, but for `long`, which only the long name implies: both made it "now".
    let diffs = compare_trees_with(&theirs, &ours, true);
    assert!(
        diffs.len() <= 1 && diffs.iter().all(|d| d.starts_with("long: ")),
        "differences with umoci:\n{}",
        diffs.join("\n")
    );

    // What the comparison must have seen, so an image that silently unpacked to nothing cannot pass.
    assert_eq!(listing(&theirs).len(), 42, "{:?}", listing(&theirs));
    assert_eq!(read(&ours.join("opq/before")), "before");
    assert!(!exists(&ours.join("opq/a")) && !exists(&ours.join("wh/gone")) && !exists(&ours.join("home/user")));
    assert_eq!(read(&ours.join("d2f")), "dir became a file");
    assert_eq!(read(&ours.join("usr/lib/libx.so")), "\x7fELF");
    assert_eq!(xattrs(&ours.join("etc/with-xattr")).len(), 1);
    assert_eq!(
        std::fs::metadata(ours.join("usr/bin/tool-hard")).unwrap().ino(),
        std::fs::metadata(ours.join("usr/bin/lower-hard")).unwrap().ino()
    );
    assert_eq!(std::fs::metadata(ours.join("usr/pax-owner")).unwrap().uid(), 100_000);
    assert_eq!(std::fs::metadata(ours.join("same-layer")).unwrap().len(), 4);
}

#[test]
fn compare_trees_reports_differences() {
    let (_tmp, a) = new_root();
    let (_tmp2, b) = new_root();
    let layer = || Layer::new().file("f", 0o644, b"x").hardlink("g", "f").dir("d", 0o755);
    apply(&a, layer());
    apply(&b, layer());
    assert!(compare_trees(&a, &b).is_empty());
    std::fs::write(b.join("extra"), b"").unwrap();
    std::fs::set_permissions(b.join("d"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::remove_file(b.join("g")).unwrap();
    std::fs::copy(b.join("f"), b.join("g")).unwrap();
    let diffs = compare_trees(&a, &b);
    assert!(diffs.iter().any(|d| d.starts_with("extra: only in")), "{diffs:?}");
    assert!(diffs.iter().any(|d| d.starts_with("d: ")), "{diffs:?}");
    assert!(diffs.iter().any(|d| d.starts_with("g: hardlinked")), "{diffs:?}");
}

/// Zeros cost no disk: a 64 MiB file of zeros (what a sparse tar entry reads as, and what gzip turns into a few KiB)
/// is written as a hole, its contents intact; and a layer past `max_bytes` fails with a clear error.
#[test]
fn zeros_become_holes_and_a_layer_size_limit_holds() {
    let (_tmp, root) = new_root();
    let size = 64 << 20;
    let zeros = vec![0u8; size];
    let mut tail = vec![0u8; 1 << 20];
    tail.extend_from_slice(b"end");
    apply(
        &root,
        Layer::new()
            .file("zeros", 0o644, &zeros)
            .file("mostly-zeros", 0o644, &tail),
    );
    let meta = std::fs::metadata(root.join("zeros")).unwrap();
    assert_eq!(meta.len(), size as u64);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "{} bytes allocated for a file of zeros",
        meta.blocks() * 512
    );
    assert!(std::fs::read(root.join("zeros")).unwrap().iter().all(|&b| b == 0));
    assert_eq!(std::fs::read(root.join("mostly-zeros")).unwrap(), tail);

    let (_tmp, root) = new_root();
    let opts = ApplyOptions {
        max_bytes: Some(1 << 20),
        ..ApplyOptions::default()
    };
    let layer = Layer::new().file("small", 0o644, b"fits").file("big", 0o644, &zeros);
    let err = apply_layer(&root, &layer.bytes()[..], &opts).unwrap_err();
    assert!(matches!(err, ApplyError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("limit of 1048576 bytes"), "{err}");
}

/// `rootfs:` with an unpack limit: the image's layers together may write that much, no more; the layer that would
/// pass it fails the pull with the limit named.
#[tokio::test]
async fn an_image_past_the_unpack_limit_fails_to_unpack() {
    use wharf_client::{CopyOptions, TransportOptions, copy, parse_image_name};
    let tmp = tempfile::tempdir().unwrap();
    let data = |seed: u8| (0..600_000u32).map(|i| (i % 251) as u8 ^ seed).collect::<Vec<u8>>();
    let layers = vec![
        Layer::new().file("a", 0o644, &data(1)).bytes(),
        Layer::new().file("b", 0o644, &data(2)).bytes(),
    ];
    let src = tmp.path().join("src");
    write_layout(&src, "v1", &layers);
    let store = wharf_client::store::ContentStore::at(tmp.path().join("store"));
    let pull = |limit: Option<u64>, into: &str| {
        let (src, dst, store) = (
            format!("oci:{}:v1", src.display()),
            format!("rootfs:{}", tmp.path().join(into).display()),
            store.clone(),
        );
        async move {
            let t = TransportOptions {
                unpack_limit: limit,
                ..TransportOptions::default()
            };
            let s = parse_image_name(&src)?.open_source(&t).await?;
            let d = parse_image_name(&dst)?.open_destination(&t, &store).await?;
            copy(s.as_ref(), d.as_ref(), &CopyOptions::default()).await
        }
    };
    let err = pull(Some(1 << 20), "limited").await.unwrap_err();
    assert!(err.to_string().contains("limit of"), "{err}");
    pull(Some(2 << 20), "enough").await.unwrap();
    assert_eq!(std::fs::read(tmp.path().join("enough/b")).unwrap(), data(2));
}
