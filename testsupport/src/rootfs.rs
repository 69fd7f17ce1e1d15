//! A busybox root filesystem built from the host's static busybox
//! (`busybox-static`, installed by scripts/setup), as a directory or as a
//! deterministic tar, for tests that need a real image to run.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run;
use crate::{Result, TestSupportError};

/// Where the static busybox lives on this machine.
pub fn busybox_path() -> Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| TestSupportError::MissingProgram {
            program: "busybox (Debian package busybox-static)".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
}

/// The layout of a busybox root filesystem.
///
/// Always: `/bin/busybox` with a symlink per applet, `/etc/passwd` (root,
/// `app` = 1000:1000 with home `/home/app`, `nobody` = 65534),
/// `/etc/group` (root, `wheel` = 10 with member app, app, nogroup),
/// `/etc/motd` (`welcome`), `/tmp` (1777), `/root` (700), `/home/app`
/// (owned by 1000:1000) and `/bin/not-executable` (a script without the
/// execute bit).
///
/// ```no_run
/// let dir = tempfile::tempdir().unwrap();
/// kiln_testsupport::BusyboxRootfs::default()
///     .write_tar(&dir.path().join("rootfs.tar"))
///     .unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct BusyboxRootfs {
    /// Also create empty `/proc`, `/sys`, `/dev` and `/usr/bin` (left out
    /// by default so runtime tests see the runtime create mount points).
    pub mount_points: bool,
    /// The busybox program to put in `/bin` (another architecture's, from
    /// its Debian package); the host's by default. Its applets are those
    /// the host's lists (the same Debian version has the same ones).
    pub busybox: Option<PathBuf>,
}

impl BusyboxRootfs {
    /// With empty `/proc`, `/sys`, `/dev` and `/usr/bin`.
    pub fn with_mount_points() -> BusyboxRootfs {
        BusyboxRootfs {
            mount_points: true,
            busybox: None,
        }
    }

    /// Lays the root filesystem out in `dir` (created if missing).
    pub fn create_dir(&self, dir: &Path) -> Result<()> {
        let io =
            |what: &str, path: &Path| TestSupportError::io(format!("{what} {}", path.display()));
        let mut dirs = vec![
            ("bin", 0o755),
            ("etc", 0o755),
            ("tmp", 0o1777),
            ("root", 0o700),
            ("home/app", 0o755),
        ];
        if self.mount_points {
            dirs.extend([
                ("proc", 0o755),
                ("sys", 0o755),
                ("dev", 0o755),
                ("usr/bin", 0o755),
            ]);
        }
        for (rel, mode) in dirs {
            let path = dir.join(rel);
            fs::create_dir_all(&path).map_err(io("creating", &path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(io("setting the mode of", &path))?;
        }
        let home = dir.join("home/app");
        match std::os::unix::fs::chown(&home, Some(1000), Some(1000)) {
            // Only root may give files away; an unprivileged caller's tar
            // then has its own ids, which its tests cannot tell apart anyway.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
            other => other.map_err(io("chown", &home))?,
        }

        let host_busybox = busybox_path()?;
        let busybox = dir.join("bin/busybox");
        let program = self.busybox.clone().unwrap_or_else(|| host_busybox.clone());
        fs::copy(&program, &busybox).map_err(io("copying busybox to", &busybox))?;
        fs::set_permissions(&busybox, fs::Permissions::from_mode(0o755))
            .map_err(io("setting the mode of", &busybox))?;
        // Ask the host's copy: running the fresh one could fail with ETXTBSY
        // while another test thread's fork still holds it open for writing.
        let list = run(Command::new(&host_busybox).arg("--list"))?;
        for applet in String::from_utf8_lossy(&list).lines().map(str::trim) {
            if applet.is_empty() || applet == "busybox" || applet.contains('/') {
                continue;
            }
            let link = dir.join("bin").join(applet);
            std::os::unix::fs::symlink("busybox", &link).map_err(io("linking", &link))?;
        }
        let files: [(&str, &str, u32); 4] = [
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\n\
                 app:x:1000:1000:app:/home/app:/bin/sh\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
                0o644,
            ),
            (
                "etc/group",
                "root:x:0:\nwheel:x:10:app\napp:x:1000:\nnogroup:x:65534:\n",
                0o644,
            ),
            ("etc/motd", "welcome\n", 0o644),
            ("bin/not-executable", "#!/bin/sh\necho no\n", 0o644),
        ];
        for (rel, text, mode) in files {
            let path = dir.join(rel);
            fs::write(&path, text).map_err(io("writing", &path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(io("setting the mode of", &path))?;
        }
        Ok(())
    }

    /// Writes the root filesystem as a tar to `path`, deterministically:
    /// entries sorted by name, every mtime 0, owners and modes as laid out.
    pub fn write_tar(&self, path: &Path) -> Result<()> {
        let staging = tempfile::Builder::new()
            .prefix("kiln-busybox-rootfs-")
            .tempdir()
            .map_err(TestSupportError::io("creating a staging directory"))?;
        self.create_dir(staging.path())?;
        let file = fs::File::create(path)
            .map_err(TestSupportError::io(format!("creating {}", path.display())))?;
        let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
        append_tree(&mut builder, staging.path(), Path::new(""))?;
        let mut out = builder.into_inner().map_err(TestSupportError::io(format!(
            "finishing {}",
            path.display()
        )))?;
        out.flush()
            .map_err(TestSupportError::io(format!("writing {}", path.display())))?;
        Ok(())
    }
}

/// Appends `root/rel`'s children (sorted by name), recursively.
fn append_tree<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(TestSupportError::io(format!("reading {}", dir.display())))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(TestSupportError::io(format!("reading {}", dir.display())))?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let failed = |what: &str| TestSupportError::io(format!("{what} {}", path.display()));
        let meta = fs::symlink_metadata(&path).map_err(failed("reading"))?;
        let mut header = tar::Header::new_ustar();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(meta.uid().into());
        header.set_gid(meta.gid().into());
        header.set_mtime(0);
        header.set_size(0);
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(failed("reading the link"))?;
            header.set_entry_type(tar::EntryType::Symlink);
            builder
                .append_link(&mut header, &rel, &target)
                .map_err(failed("archiving"))?;
        } else if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            builder
                .append_data(&mut header, &rel, std::io::empty())
                .map_err(failed("archiving"))?;
            append_tree(builder, root, &rel)?;
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let file = fs::File::open(&path).map_err(failed("opening"))?;
            builder
                .append_data(&mut header, &rel, file)
                .map_err(failed("archiving"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_holds_busybox_its_applets_and_etc_sorted_with_zero_mtimes() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("rootfs.tar");
        BusyboxRootfs::with_mount_points()
            .write_tar(&tar_path)
            .unwrap();
        let mut archive = tar::Archive::new(fs::File::open(&tar_path).unwrap());
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            assert_eq!(entry.header().mtime().unwrap(), 0);
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            if name == "bin/sh" {
                assert_eq!(entry.link_name().unwrap().unwrap(), Path::new("busybox"));
            }
            if name == "bin/busybox" {
                assert_eq!(
                    entry.header().size().unwrap(),
                    fs::metadata(busybox_path().unwrap()).unwrap().len()
                );
            }
            names.push(name);
        }
        for wanted in [
            "bin/busybox",
            "bin/sh",
            "etc/passwd",
            "etc/group",
            "tmp",
            "proc",
            "home/app",
        ] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{wanted} missing from {names:?}"
            );
        }
        // Each directory's entries in name order.
        let top: Vec<&String> = names.iter().filter(|n| !n.contains('/')).collect();
        let mut sorted = top.clone();
        sorted.sort();
        assert_eq!(top, sorted);

        // The same tar again, byte for byte.
        let again = dir.path().join("again.tar");
        BusyboxRootfs::with_mount_points()
            .write_tar(&again)
            .unwrap();
        assert_eq!(fs::read(&tar_path).unwrap(), fs::read(&again).unwrap());
    }
}
