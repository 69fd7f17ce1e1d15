//! Builds a directory tree from a small text spec, one entry a line:
//! `d PATH [MODE]`, `f PATH [MODE] [CONTENT...]`, `l PATH TARGET`,
//! `h PATH EXISTING` (hard link), `p PATH` (fifo), `w PATH` (overlay whiteout), `o PATH [MODE]` (opaque
//! dir). MODE is octal, optionally `MODE:UID:GID`; defaults 755 for dirs,
//! 644 for files, owner 0:0. `\n` in CONTENT is a newline. Every mtime is
//! set to a fixed past instant so results do not depend on when tests ran.

#![allow(dead_code)]

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags, CWD};

pub const FIXED_MTIME: i64 = 1_600_000_000;

pub fn build(root: &Path, spec: &str) {
    let mut dirs = Vec::new();
    for line in spec
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut parts = line.splitn(3, ' ');
        let kind = parts.next().unwrap();
        let path = root.join(
            parts
                .next()
                .unwrap_or_else(|| panic!("bad tree line {line:?}")),
        );
        let rest = parts.next().unwrap_or("");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        match kind {
            "d" | "o" => {
                std::fs::create_dir_all(&path).unwrap();
                let (mode, uid, gid) = mode_owner(if rest.is_empty() { "755" } else { rest });
                chown(&path, uid, gid);
                if kind == "o" {
                    rustix::fs::lsetxattr(
                        &path,
                        "trusted.overlay.opaque",
                        b"y",
                        XattrFlags::empty(),
                    )
                    .unwrap_or_else(|e| panic!("set opaque on {}: {e}", path.display()));
                }
                dirs.push((path.clone(), mode));
            }
            "f" => {
                let (mode, content) = match rest.split_once(' ') {
                    Some((m, c)) if is_mode(m) => (m, c.to_string()),
                    _ if is_mode(rest) => (rest, String::new()),
                    _ => ("644", rest.to_string()),
                };
                std::fs::write(&path, content.replace("\\n", "\n")).unwrap();
                let (mode, uid, gid) = mode_owner(mode);
                chown(&path, uid, gid);
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
                set_mtime(&path);
            }
            "l" => {
                std::os::unix::fs::symlink(rest, &path).unwrap();
                set_mtime(&path);
            }
            "p" => {
                rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o644), 0)
                    .unwrap();
                set_mtime(&path);
            }
            "h" => {
                std::fs::hard_link(root.join(rest), &path).unwrap();
            }
            "w" => {
                rustix::fs::mknodat(CWD, &path, FileType::CharacterDevice, Mode::empty(), 0)
                    .unwrap();
            }
            other => panic!("bad tree entry kind {other:?} in {line:?}"),
        }
    }
    // Directories last: creating children changed their mtimes.
    for (dir, mode) in dirs.iter().rev() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode)).unwrap();
        set_mtime(dir);
    }
}

fn is_mode(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == ':')
}

fn mode_owner(s: &str) -> (u32, u32, u32) {
    let mut parts = s.split(':');
    let mode = u32::from_str_radix(parts.next().unwrap(), 8).unwrap();
    let uid = parts.next().map(|p| p.parse().unwrap()).unwrap_or(0);
    let gid = parts.next().map(|p| p.parse().unwrap()).unwrap_or(0);
    (mode, uid, gid)
}

fn chown(path: &Path, uid: u32, gid: u32) {
    rustix::fs::chownat(
        CWD,
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

pub fn set_mtime(path: &Path) {
    let t = Timespec {
        tv_sec: FIXED_MTIME,
        tv_nsec: 0,
    };
    let ts = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, path, &ts, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

/// Copies the files of `from` (a directory in testdata, e.g. archives) into
/// `root`, mode 0644 and the fixed mtime.
pub fn copy_files(from: &Path, root: &Path) {
    if !from.is_dir() {
        return;
    }
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = root.join(entry.file_name());
        std::fs::copy(entry.path(), &dest).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644)).unwrap();
        set_mtime(&dest);
    }
}

/// A listing of a directory tree for golden files: kind, path, mode,
/// owner, content (short text) or size, link target, and the mtime: the
/// fixed test instant (`t=src`), another past instant (`t=<secs>`) or
/// recent (`t=now`). Whiteouts show as `w`, opaque dirs are marked.
pub fn listing(root: &Path) -> String {
    let mut all = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if std::fs::symlink_metadata(root.join(&child))
                .unwrap()
                .is_dir()
            {
                stack.push(child.clone());
            }
            all.push(child);
        }
    }
    all.sort();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut out = String::new();
    for rel in all {
        let p = root.join(&rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let t = if m.mtime() == FIXED_MTIME {
            "t=src".to_string()
        } else if m.mtime() < now - 86400 {
            format!("t={}", m.mtime())
        } else {
            "t=now".to_string()
        };
        let own = format!("{}:{}", m.uid(), m.gid());
        let mode = m.mode() & 0o7777;
        let line = if ft.is_dir() {
            let mut v = [0u8; 2];
            let n = rustix::fs::lgetxattr(&p, "trusted.overlay.opaque", &mut v[..]);
            let opaque = if matches!(n, Ok(1)) { " opaque" } else { "" };
            format!("d {rel} {mode:o} {own} {t}{opaque}")
        } else if ft.is_symlink() {
            format!(
                "l {rel} -> {} {own} {t}",
                std::fs::read_link(&p).unwrap().display()
            )
        } else if ft.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            let shown = match std::str::from_utf8(&bytes) {
                Ok(text) if bytes.len() <= 40 => format!("{text:?}"),
                _ => format!("{} bytes", bytes.len()),
            };
            let links = if m.nlink() > 1 {
                format!(" nlink={}", m.nlink())
            } else {
                String::new()
            };
            format!("f {rel} {mode:o} {own} {shown} {t}{links}")
        } else if ft.is_char_device() && m.rdev() == 0 {
            format!("w {rel}")
        } else if ft.is_fifo() {
            format!("p {rel} {mode:o} {own}")
        } else {
            format!("? {rel}")
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}
