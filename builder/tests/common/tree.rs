//! Builds a directory tree from a small text spec, one entry a line:
//! `d PATH [MODE]`, `f PATH [MODE] [CONTENT...]`, `l PATH TARGET`,
//! `p PATH` (fifo). Modes are octal; defaults 755 for dirs, 644 for files.
//! Every mtime is set to a fixed past instant so results do not depend on
//! when the test ran.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
            "d" => {
                std::fs::create_dir_all(&path).unwrap();
                let mode =
                    u32::from_str_radix(if rest.is_empty() { "755" } else { rest }, 8).unwrap();
                dirs.push((path.clone(), mode));
            }
            "f" => {
                let (mode, content) = match rest.split_once(' ') {
                    Some((m, c)) if m.chars().all(|c| c.is_ascii_digit()) => (m, c.to_string()),
                    _ if rest.chars().all(|c| c.is_ascii_digit()) && !rest.is_empty() => {
                        (rest, String::new())
                    }
                    _ => ("644", rest.to_string()),
                };
                std::fs::write(&path, content.replace("\\n", "\n")).unwrap();
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(u32::from_str_radix(mode, 8).unwrap()),
                )
                .unwrap();
                set_mtime(&path);
            }
            "l" => {
                std::os::unix::fs::symlink(rest, &path).unwrap();
                set_mtime(&path);
            }
            "p" => {
                let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
                set_mtime(&path);
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

pub fn set_mtime(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: FIXED_MTIME,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: FIXED_MTIME,
            tv_nsec: 0,
        },
    ];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}
