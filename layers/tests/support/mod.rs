//! Helpers shared by kiln-layers' integration tests: a raw tar writer that
//! can produce hostile archives (names with `..`, absolute names — what a
//! careful tar library refuses to write), a tiny spec language for layers,
//! a deterministic listing of a directory tree, an image of many files in
//! a store, and what a file's pages are (dirty or not: `cachestat(2)`),
//! for the writeback tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// One tar entry, described by a spec line.
#[derive(Clone, Debug, Default)]
pub struct EntrySpec {
    pub kind: String,
    pub path: String,
    pub content: Vec<u8>,
    pub link: String,
    pub mode: Option<u32>,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub major: u32,
    pub minor: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// A parsed `spec.txt`: layers of entries and an optional expected error.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub layers: Vec<Vec<EntrySpec>>,
    pub error: Option<String>,
}

fn parse_value(v: &str) -> Vec<u8> {
    match v.strip_prefix("0x") {
        Some(hex) => (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect(),
        None => v.as_bytes().to_vec(),
    }
}

/// Spec lines: `layer` starts a new layer; `error TEXT` expects unpacking
/// to fail with TEXT; entries are
/// `file PATH [= CONTENT] [mode=0644] [uid=N] [gid=N] [mtime=N] [xattr:NAME=VALUE]`,
/// `dir PATH …`, `symlink PATH -> TARGET …`, `hardlink PATH -> TARGET`,
/// `char|block PATH MAJOR MINOR …`, `fifo PATH …`.
pub fn parse_spec(text: &str) -> Spec {
    let mut spec = Spec {
        layers: vec![Vec::new()],
        error: None,
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "layer" {
            spec.layers.push(Vec::new());
            continue;
        }
        if let Some(e) = line.strip_prefix("error ") {
            spec.error = Some(e.to_string());
            continue;
        }
        let mut words = line.split_whitespace();
        let kind = words.next().unwrap().to_string();
        let path = words.next().unwrap().to_string();
        let mut entry = EntrySpec {
            kind: kind.clone(),
            path,
            ..EntrySpec::default()
        };
        let rest: Vec<&str> = words.collect();
        let mut i = 0;
        while i < rest.len() {
            let w = rest[i];
            if w == "=" {
                // Content: the next word unless it is an attribute or absent.
                if let Some(next) = rest.get(i + 1).filter(|n| !n.contains('=')) {
                    entry.content = next.as_bytes().to_vec();
                    i += 1;
                }
            } else if w == "->" {
                entry.link = rest[i + 1].to_string();
                i += 1;
            } else if let Some(x) = w.strip_prefix("xattr:") {
                let (k, v) = x.split_once('=').unwrap();
                entry.xattrs.push((k.to_string(), parse_value(v)));
            } else if let Some((k, v)) = w.split_once('=') {
                match k {
                    "mode" => entry.mode = Some(u32::from_str_radix(v, 8).unwrap()),
                    "uid" => entry.uid = v.parse().unwrap(),
                    "gid" => entry.gid = v.parse().unwrap(),
                    "mtime" => entry.mtime = v.parse().unwrap(),
                    other => panic!("unknown attribute {other} in {line:?}"),
                }
            } else if (kind == "char" || kind == "block") && entry.major == 0 && entry.minor == 0 {
                entry.major = w.parse().unwrap();
                entry.minor = rest[i + 1].parse().unwrap();
                i += 1;
            } else {
                panic!("cannot parse {w:?} in {line:?}");
            }
            i += 1;
        }
        spec.layers.last_mut().unwrap().push(entry);
    }
    spec
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// Writes entries as a tar without any validation of names.
pub fn raw_tar(entries: &[EntrySpec]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (kind, default_mode) = match e.kind.as_str() {
            "file" => (tar::EntryType::Regular, 0o644),
            "dir" => (tar::EntryType::Directory, 0o755),
            "symlink" => (tar::EntryType::Symlink, 0o777),
            "hardlink" => (tar::EntryType::Link, 0o644),
            "char" => (tar::EntryType::Char, 0o600),
            "block" => (tar::EntryType::Block, 0o600),
            "fifo" => (tar::EntryType::Fifo, 0o644),
            other => panic!("unknown entry kind {other}"),
        };
        let mut pax = Vec::new();
        for (k, v) in &e.xattrs {
            pax.extend_from_slice(&pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        let name = e.path.as_bytes();
        if name.len() > 100 {
            pax.extend_from_slice(&pax_record("path", name));
        }
        if !pax.is_empty() {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(pax.len() as u64);
            h.set_mode(0o644);
            h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            h.set_cksum();
            b.append(&h, pax.as_slice()).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        if !e.link.is_empty() {
            h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        h.set_mode(e.mode.unwrap_or(default_mode));
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        if kind == tar::EntryType::Char || kind == tar::EntryType::Block {
            h.set_device_major(e.major).unwrap();
            h.set_device_minor(e.minor).unwrap();
        }
        let data: &[u8] = if kind == tar::EntryType::Regular {
            &e.content
        } else {
            &[]
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn xattrs_of(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return out;
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]) {
            value.truncate(len);
            out.insert(name, value);
        }
    }
    out
}

fn show_value(v: &[u8]) -> String {
    if v.iter().all(|b| b.is_ascii_graphic()) {
        String::from_utf8_lossy(v).into_owned()
    } else {
        let mut s = String::from("0x");
        for b in v {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// One line per entry under `root` (sorted): type, mode, owner, size or
/// target, mtime (`now` for times set by the clock), link count for files,
/// xattrs. Directory times are shown only when the layer set them (< 10^9).
pub fn listing(root: &Path) -> String {
    let mut lines = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap();
        let name = if rel.as_os_str().is_empty() {
            "/".to_string()
        } else {
            String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned()
        };
        let ft = meta.file_type();
        let mtime = if meta.mtime() < 1_000_000_000 {
            meta.mtime().to_string()
        } else {
            "now".into()
        };
        let perms = format!("{:04o}", meta.mode() & 0o7777);
        let owner = format!("{}:{}", meta.uid(), meta.gid());
        let mut line = if ft.is_dir() {
            let mut children: Vec<_> = fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            children.sort();
            children.reverse();
            stack.extend(children);
            format!("{name} dir {perms} {owner} mtime={mtime}")
        } else if ft.is_symlink() {
            let target = fs::read_link(&p).unwrap();
            format!(
                "{name} symlink -> {} {owner} mtime={mtime}",
                target.display()
            )
        } else if ft.is_file() {
            let content = fs::read(&p).unwrap();
            format!(
                "{name} file {perms} {owner} content={:?} links={} mtime={mtime}",
                String::from_utf8_lossy(&content),
                meta.nlink()
            )
        } else if ft.is_char_device() && meta.rdev() == 0 {
            format!("{name} whiteout")
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() { "char" } else { "block" };
            format!(
                "{name} {kind} {},{} {perms} {owner} mtime={mtime}",
                rustix::fs::major(meta.rdev()),
                rustix::fs::minor(meta.rdev())
            )
        } else if ft.is_fifo() {
            format!("{name} fifo {perms} {owner} mtime={mtime}")
        } else {
            format!("{name} other")
        };
        for (k, v) in xattrs_of(&p) {
            // SELinux labels depend on the machine, not the layer.
            if k != "security.selinux" {
                line.push_str(&format!(" xattr:{k}={}", show_value(&v)));
            }
        }
        lines.push(line);
    }
    lines.join("\n") + "\n"
}

/// Compares `actual` with the file at `path`, or rewrites it when
/// `KILN_BLESS=1`.
pub fn check_golden(path: &Path, actual: &str) {
    kiln_testsupport::golden::check(path, actual);
}

/// Pages of `file` that are dirty and under writeback (`cachestat(2)`,
/// Linux 6.5); `None` where the kernel has no such call.
pub fn dirty_and_writeback(file: &fs::File) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct CacheStat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off: 0, len: 0 };
    let mut stat = CacheStat::default();
    // SAFETY: the descriptor is open while `file` is borrowed; the kernel
    // reads `range` and writes `stat`, both live and of the layout
    // cachestat(2) defines.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut CacheStat,
            0,
        )
    };
    (rc == 0).then_some((stat.nr_dirty, stat.nr_writeback))
}

/// A file of 4 MiB under `dir` that nothing hints: while it is dirty,
/// nothing else (a `sync`) has written the filesystem back. `None` when
/// this kernel or filesystem cannot say (no `cachestat(2)`, or no dirty
/// pages kept).
pub fn control_file(dir: &Path) -> Option<fs::File> {
    let path = dir.join("control");
    fs::write(&path, vec![7u8; 4 << 20]).unwrap();
    let control = fs::File::open(&path).unwrap();
    match dirty_and_writeback(&control) {
        None => eprintln!("skipped: this kernel has no cachestat(2) (Linux 6.5+)"),
        Some((0, _)) => eprintln!("skipped: this filesystem keeps no dirty pages"),
        Some(_) => return Some(control),
    }
    None
}

/// A tree `dir/tree` of `files` small files: more than the writeback
/// thread's queue holds, each a block allocation for it.
pub fn many_small_files(dir: &Path, files: usize) -> std::path::PathBuf {
    let tree = dir.join("tree");
    fs::create_dir(&tree).unwrap();
    for i in 0..files {
        fs::write(tree.join(format!("f{i:04}")), vec![7u8; 3000]).unwrap();
    }
    tree
}

/// How many regular files under `tree` have dirty pages.
pub fn dirty_files(tree: &Path) -> usize {
    fs::read_dir(tree)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| {
            let file = fs::File::open(path).unwrap();
            file.metadata().unwrap().is_file() && dirty_and_writeback(&file).unwrap().0 > 0
        })
        .count()
}

/// Waits up to 10 s for every file under `tree` to be clean; false when
/// `control` became clean first (something else wrote everything back:
/// the test proves nothing).
pub fn written_back(tree: &Path, control: &fs::File) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if dirty_and_writeback(control).unwrap().0 == 0 {
            eprintln!("skipped: something wrote the filesystem back meanwhile");
            return false;
        }
        let left = dirty_files(tree);
        if left == 0 {
            return true;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} files under {} still dirty",
            tree.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Whether some file under `tree` is still dirty; `None` when `control`
/// is clean by now (something else wrote everything back: the test proves
/// nothing).
pub fn some_still_dirty(tree: &Path, control: &fs::File) -> Option<bool> {
    let dirty = dirty_files(tree) > 0;
    if dirty_and_writeback(control).unwrap().0 == 0 {
        eprintln!("skipped: something wrote the filesystem back meanwhile");
        return None;
    }
    Some(dirty)
}

/// Checks that every file under `asked` is written back within 10 s while
/// some under `not_asked`, `what` (packed, unpacked) without the hint,
/// are still dirty; unless something else wrote the filesystem back
/// meanwhile (`control` clean), when the test proves nothing and says so.
pub fn only_asked_written_back(asked: &Path, not_asked: &Path, control: &fs::File, what: &str) {
    if written_back(asked, control) {
        if let Some(kept) = some_still_dirty(not_asked, control) {
            assert!(kept, "{what} without write_back, yet written back");
        }
    }
}

/// An image of `n` files (`f0`…) in one layer.
pub fn many_file_image(store: &kiln_layers::Store, n: usize) -> kiln_layers::Image {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..n {
        let body = format!("file {i}\n");
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("f{i}"), body.as_bytes())
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let layer = store.put_blob(kiln_layers::media::OCI_LAYER, &tar).unwrap();
    let config = kiln_layers::oci::ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: kiln_layers::oci::RootFs {
            kind: "layers".into(),
            diff_ids: vec![kiln_layers::Digest::of(&tar)],
        },
        ..kiln_layers::oci::ImageConfig::default()
    };
    let manifest = store.write_image(&config, &[layer]).unwrap();
    store
        .read_image(&manifest, &kiln_layers::Platform::host())
        .unwrap()
}
