//! The unprivileged user the rootless tests run kiln as, and the root
//! requirement of the tests that need real namespaces.

use std::process::Command;

use crate::process::run;
use crate::{Result, TestSupportError};

/// The user [`rootless_user`] creates.
pub const ROOTLESS_USER: &str = "kiln-rootless";
/// First subordinate uid and gid given to [`ROOTLESS_USER`].
pub const SUBID_START: u32 = 300_000;
/// How many subordinate ids [`ROOTLESS_USER`] gets.
pub const SUBID_COUNT: u32 = 65_536;

/// The environment variable that lets root-only tests skip (with a
/// `SKIPPED` line) when not run as root; without it they fail.
pub const ALLOW_SKIP_VAR: &str = "KILN_TEST_ALLOW_SKIP";

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// For tests that need root (namespaces, overlay mounts, mknod): true when
/// root. Otherwise panics saying why, unless `KILN_TEST_ALLOW_SKIP=1`, in
/// which case it prints `SKIPPED: …` and returns false (the test returns).
/// CI runs as root, so there these tests always run.
pub fn require_root(why: &str) -> bool {
    if is_root() {
        return true;
    }
    skip_or_fail(&format!("needs root ({why})"), "run it as root (CI does)");
    false
}

/// For a test that cannot run here (`why`): with `KILN_TEST_ALLOW_SKIP=1`
/// prints `SKIPPED: <why>` and returns, the test then returning too;
/// otherwise panics, saying `how` to make it run.
pub fn skip_or_fail(why: &str, how: &str) {
    if std::env::var_os(ALLOW_SKIP_VAR).is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: {why}; {ALLOW_SKIP_VAR}=1 allows the skip");
        return;
    }
    panic!("this test {why}: {how}, or set {ALLOW_SKIP_VAR}=1 to skip it");
}

/// The environment variable scripts/test-rootless sets (`1`): the tests
/// that need root only for what kiln itself does (namespaces, overlay
/// mounts) run as the user there, and kiln builds rootless.
pub const ROOTLESS_RUN_VAR: &str = "KILN_TEST_ROOTLESS";

/// For tests that need kiln to make namespaces and overlay mounts and
/// nothing else of root's (no user made, no mount of their own): true as
/// root, and as a user in the rootless run (`KILN_TEST_ROOTLESS=1`), where
/// kiln builds in a user namespace of its own; otherwise as
/// [`require_root`].
pub fn require_namespaces(why: &str) -> bool {
    if !is_root() && std::env::var_os(ROOTLESS_RUN_VAR).is_some_and(|v| v == "1") {
        return true;
    }
    require_root(why)
}

/// `require_namespaces!("why")` returns from the test when it must skip
/// (see [`require_namespaces`]).
#[macro_export]
macro_rules! require_namespaces {
    ($why:expr) => {
        if !$crate::users::require_namespaces($why) {
            return;
        }
    };
}

/// `require_root!("why")` returns from the test when it must skip (see
/// [`require_root`]).
#[macro_export]
macro_rules! require_root {
    ($why:expr) => {
        if !$crate::users::require_root($why) {
            return;
        }
    };
}

/// Where [`rootless_user`] serializes the user's creation.
const USER_LOCK: &str = "/run/kiln-test-rootless-user.lock";

/// Creates [`ROOTLESS_USER`] if missing (no home, shell /bin/sh) and gives
/// it subordinate uid and gid ranges ([`SUBID_START`], [`SUBID_COUNT`]) if
/// it has none; returns its uid and gid. Needs root.
///
/// Concurrent tests, in this process or others, take turns under an
/// exclusive lock: two `useradd`s at once on a machine without the user
/// each made it (the second with another uid, and a subordinate range of
/// its own), and a test already running kiln as the first uid found that
/// uid nowhere in `/etc/passwd` or `/etc/subuid` (seen on a fresh machine).
pub fn rootless_user() -> Result<(u32, u32)> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(USER_LOCK)
        .map_err(TestSupportError::io(format!("opening {USER_LOCK}")))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
        TestSupportError::io(format!("locking {USER_LOCK}"))(std::io::Error::from(e))
    })?;
    let user = ROOTLESS_USER;
    if run(Command::new("id").args(["-u", user])).is_err() {
        let _ = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", user])
            .output();
    }
    let id = |flag: &str| -> Result<u32> {
        let out = run(Command::new("id").args([flag, user]))?;
        let text = String::from_utf8_lossy(&out).trim().to_string();
        text.parse().map_err(|_| TestSupportError::Command {
            command: format!("id {flag} {user}"),
            status: "0".into(),
            stderr: format!("not a number: {text:?}"),
        })
    };
    let (uid, gid) = (id("-u")?, id("-g")?);
    for (file, flag) in [
        ("/etc/subuid", "--add-subuids"),
        ("/etc/subgid", "--add-subgids"),
    ] {
        if subid_range(file)?.is_none() {
            let range = format!("{SUBID_START}-{}", SUBID_START + SUBID_COUNT - 1);
            run(Command::new("usermod").args([flag, &range, user]))?;
        }
    }
    Ok((uid, gid))
}

/// [`ROOTLESS_USER`]'s first range in `/etc/subuid` or `/etc/subgid`:
/// (start, count).
pub fn subid_range(file: &str) -> Result<Option<(u32, u32)>> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TestSupportError::io(format!("reading {file}"))(e)),
    };
    let prefix = format!("{ROOTLESS_USER}:");
    Ok(text.lines().find_map(|line| {
        let rest = line.strip_prefix(&prefix)?;
        let (start, count) = rest.split_once(':')?;
        Some((start.trim().parse().ok()?, count.trim().parse().ok()?))
    }))
}
