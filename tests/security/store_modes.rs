//! Issue: the store was world-readable and kept setuid binaries and 0666
//! device nodes from images. Any local user could run a setuid-root binary
//! from `snapshots/` (`euid=0`, `/etc/shadow` opened) or write to a device
//! node unpacked from an image.
//!
//! The store's root is mode 0700 (0710 when a group was given traverse
//! rights), made so by kiln and fixed when an existing store is looser; the
//! runtime's scratch on a tmpfs likewise. The probe runs, as uid 65534, a
//! setuid-root copy of `cat` that an image put in a snapshot, on a file only
//! root may read; its control is the same binary in a world-traversable
//! copy, and the same store made world-traversable again.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{kiln, kiln_command, kiln_ok};
use crate::{require_root, text, Fixture};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_new_store_is_private_and_a_looser_one_is_fixed_on_open() {
    require_root!();
    let fixture = Fixture::new();
    let root = fixture.root();
    assert_eq!(mode(&root), 0o700, "a store kiln created");
    for (looser, fixed) in [
        (0o755, 0o700),
        (0o777, 0o700),
        (0o750, 0o700),
        (0o711, 0o700),
    ] {
        chmod(&root, looser);
        kiln_ok(&root, &["images", "-q"]);
        assert_eq!(mode(&root), fixed, "opened at {looser:04o}");
    }
    // Traverse rights for a group (Docker's 0710 data root) are kept.
    chmod(&root, 0o710);
    kiln_ok(&root, &["images", "-q"]);
    assert_eq!(mode(&root), 0o710);
    // A store under a directory that does not exist yet: created private.
    let nested = fixture.dir("nested").join("a/b/store");
    kiln_ok(&nested, &["images", "-q"]);
    assert_eq!(mode(&nested), 0o700);
}

/// Whether `path` is on a filesystem mounted nosuid (a setuid binary there
/// runs without its owner's rights).
fn nosuid(path: &Path) -> bool {
    rustix::fs::statvfs(path)
        .is_ok_and(|st| st.f_flag.contains(rustix::fs::StatVfsMountFlags::NOSUID))
}

/// Runs `binary secret` as uid/gid 65534: `Ok(output)` when it could be
/// executed, `Err` when exec was refused.
fn probe(binary: &Path, secret: &Path) -> std::io::Result<std::process::Output> {
    Command::new(binary)
        .arg(secret)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
}

/// Every setuid file under the store's snapshots.
fn setuid_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("list").flatten() {
        let meta = std::fs::symlink_metadata(entry.path()).expect("stat");
        if meta.is_dir() {
            setuid_files(&entry.path(), found);
        } else if meta.is_file() && meta.mode() & 0o4000 != 0 {
            found.push(entry.path());
        }
    }
}

#[test]
fn a_setuid_binary_in_a_snapshot_is_out_of_other_users_reach() {
    require_root!();
    let fixture = Fixture::new();
    let root = fixture.root();
    // Only the store's own mode may keep the probe out: the fixture's
    // directory (a 0700 temp dir) is opened to everyone.
    let top = root.parent().expect("fixture dir").to_path_buf();
    chmod(&top, 0o755);
    let cat = ["/bin/cat", "/usr/bin/cat"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("a cat binary on the host");
    let ctx = fixture.context(
        "suid-ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nCOPY cat /opt/suid/cat\nRUN chmod 4755 /opt/suid/cat\n",
        )],
    );
    std::fs::copy(&cat, ctx.join("cat")).expect("copy cat");
    kiln_ok(
        &root,
        &["build", "-t", "suid:1", ctx.to_str().expect("utf-8")],
    );
    let mut found = Vec::new();
    setuid_files(&root.join("snapshots"), &mut found);
    let in_store = found
        .iter()
        .find(|p| p.ends_with("opt/suid/cat"))
        .unwrap_or_else(|| panic!("no setuid cat in the snapshots: {found:?}"))
        .clone();
    assert_eq!(std::fs::metadata(&in_store).expect("stat").uid(), 0);

    // A file only root may read, in a directory anyone may enter.
    let secrets = fixture.dir("secrets");
    chmod(&secrets, 0o755);
    let secret = secrets.join("secret");
    std::fs::write(&secret, "root only\n").expect("write secret");
    chmod(&secret, 0o600);

    // Control 1: the same binary in a world-traversable copy is reachable,
    // and (unless that filesystem is nosuid) reads the secret as root.
    let copy_dir = fixture.dir("copy");
    chmod(&copy_dir, 0o755);
    let copy = copy_dir.join("cat");
    std::fs::copy(&in_store, &copy).expect("copy");
    chmod(&copy, 0o4755);
    let out = probe(&copy, &secret).expect("the world-traversable copy runs");
    if !nosuid(&copy) {
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "root only\n");
    }

    // The store: not even executable by another user.
    let refused = probe(&in_store, &secret);
    match &refused {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
        Ok(out) => panic!("uid 65534 ran {}: {}", in_store.display(), text(out)),
    }

    // Control 2: the same store made world-traversable (as before the fix)
    // lets the probe in; the next kiln command closes it again.
    chmod(&root, 0o755);
    let out = probe(&in_store, &secret).expect("reachable through a 0755 store");
    if !nosuid(&in_store) {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "root only\n");
    }
    kiln_ok(&root, &["images", "-q"]);
    assert_eq!(mode(&root), 0o700);
    let refused = probe(&in_store, &secret);
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied),
        "{:?}",
        refused.map(|o| text(&o))
    );
}

/// The base directory the runtime puts a root kiln's run scratch under, for
/// a test that points `XDG_RUNTIME_DIR` at `xdg`: /run/kiln when /run is a
/// tmpfs, else `xdg`/kiln.
fn run_scratch_base(xdg: &Path) -> PathBuf {
    // f_type is an i64 on x86_64, not on every architecture.
    #[allow(clippy::unnecessary_cast)]
    let run_is_tmpfs = rustix::fs::statfs("/run").is_ok_and(|st| st.f_type as i64 == 0x0102_1994);
    if run_is_tmpfs {
        PathBuf::from("/run/kiln")
    } else {
        xdg.join("kiln")
    }
}

#[test]
fn run_scratch_on_a_tmpfs_is_private_and_named_after_its_owner() {
    require_root!();
    let fixture = Fixture::new();
    // A runtime dir of the test's own on /dev/shm (a tmpfs).
    let xdg = tempfile::Builder::new()
        .prefix("kiln-xdg-")
        .tempdir_in("/dev/shm")
        .expect("tempdir on /dev/shm");
    let base = run_scratch_base(xdg.path());
    if base.starts_with(xdg.path()) {
        // Made looser than it should be: the run tightens it.
        std::fs::create_dir_all(&base).expect("mkdir");
        chmod(&base, 0o755);
    }
    let before: Vec<_> = std::fs::read_dir(&base)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let mut child = kiln_command()
        .arg("--root")
        .arg(fixture.root())
        .args(["run", "busybox", "sleep", "3"])
        .env("XDG_RUNTIME_DIR", xdg.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kiln run");
    let prefix = format!("{}.", child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    let dir = loop {
        let mine = std::fs::read_dir(&base).ok().and_then(|d| {
            d.flatten()
                .find(|e| {
                    !before.contains(&e.file_name())
                        && e.file_name().to_string_lossy().starts_with(&prefix)
                })
                .map(|e| e.path())
        });
        if let Some(dir) = mine {
            break dir;
        }
        assert!(
            Instant::now() < deadline,
            "no run dir under {}",
            base.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(mode(&base), 0o700, "{}", base.display());
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let status = child.wait().expect("wait");
    assert!(status.success());
    assert!(!dir.exists(), "the run's scratch is removed when it ends");
    let _ = kiln(&fixture.root(), &["images"]);
}
