//! Kernel calls that the recording fake cannot stand in for, made for
//! real (as root where they need it): a fork into a cgroup2 directory.

use std::os::fd::AsFd;
use std::time::Duration;

use super::*;
use crate::cgroup::{remove_cgroup, Layout};

/// `fork_into_cgroup` starts the child in a real cgroup2 directory: the
/// child's first act, reading /proc/self/cgroup, finds it there, with no
/// write to `cgroup.procs` anywhere. A directory of a v1 hierarchy is
/// refused (EBADF), forking nothing, which is when the helper falls back to
/// a plain fork and the init's join.
#[test]
fn a_child_is_born_in_its_cgroup2_directory() {
    kiln_testsupport::require_root!("making cgroups");
    let layout = Layout::probe();
    let Some(unified) = layout.unified.clone() else {
        eprintln!("skipped: no cgroup2 hierarchy is mounted");
        return;
    };
    let name = format!("kiln-test-{}-clone3", std::process::id());
    let dir = unified.join(&name);
    std::fs::create_dir(&dir).unwrap();
    // The line the child must find, below this process's own cgroup2
    // (`0::/a/b/<name>` for a test run in `/a/b`).
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string();
    let expected = format!("0::{}/{name}\n", own.trim_end_matches('/'));
    let fd = rustix::fs::open(&dir, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
    // SAFETY: the child makes only async-signal-safe calls (open, read,
    // _exit) on memory prepared before the fork.
    let forked = unsafe { fork_into_cgroup(fd.as_fd(), 0) };
    if forked.as_ref().is_ok_and(|f| *f == Forked::Child) {
        let mut buf = [0u8; 4096];
        // SAFETY: a NUL-terminated path and a buffer of ours; then _exit.
        unsafe {
            let fd = libc::open(c"/proc/self/cgroup".as_ptr(), libc::O_RDONLY);
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            let found = n > 0
                && buf[..n as usize]
                    .windows(expected.len())
                    .any(|w| w == expected.as_bytes());
            libc::_exit(if found { 0 } else { 3 });
        }
    }
    let status = forked.map(|f| match f {
        Forked::Parent(pid) => {
            let mut status = 0;
            // SAFETY: waiting for our own child, into a local.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            status
        }
        Forked::Child => unreachable!("the child has exited"),
    });
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let removed = remove_cgroup(&dir, Duration::from_secs(5));
    let status = match status {
        Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => {
            eprintln!("skipped: this kernel (or a seccomp profile) refuses clone3");
            return;
        }
        status => status.expect("clone3 into a cgroup2 directory (Linux 5.7+)"),
    };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child did not find itself in {} (wait status {status:#x})",
        dir.display()
    );
    assert_eq!(procs, "", "a process is left in the directory");
    removed.unwrap();

    // A v1 directory is no cgroup2 one: nothing is forked.
    let Some(v1) = layout.v1.values().next() else {
        return;
    };
    let fd = rustix::fs::open(v1, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
    // SAFETY: clone3 fails here, so no child exists; were one made, it
    // would only _exit, which is async-signal-safe.
    match unsafe { fork_into_cgroup(fd.as_fd(), 0) } {
        Err(err) => assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{err}"),
        // SAFETY: _exit is async-signal-safe.
        Ok(Forked::Child) => unsafe { libc::_exit(0) },
        Ok(Forked::Parent(pid)) => {
            panic!("clone3 into the v1 directory {} forked {pid}", v1.display())
        }
    }
}

/// The three ways [`bind::bind_by`] binds, for real, in a mount namespace
/// of the test's own thread: a read-only recursive bind of a directory
/// with a tmpfs mounted under it. `Tree` makes the tmpfs read-only too;
/// the fallbacks for older kernels and seccomp profiles (no
/// `mount_setattr`, no `open_tree`) make the top mount read-only only,
/// and still bind the right directories.
#[test]
fn each_way_binds_read_only_and_tree_reaches_the_submounts() {
    kiln_testsupport::require_root!("mounting");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let results = std::thread::spawn(move || {
        // SAFETY: unshare takes only flags; CLONE_NEWNS here gives this
        // thread (and no other) a mount namespace of its own.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNS) }, 0);
        let private = rustix::mount::MountPropagationFlags::PRIVATE
            | rustix::mount::MountPropagationFlags::REC;
        rustix::mount::mount_change("/", private).unwrap();
        let mut results = Vec::new();
        for way in [
            bind::Way::Tree,
            bind::Way::TreeThenRemount,
            bind::Way::Mount,
        ] {
            let dir = base.join(format!("{way:?}"));
            let (source, target) = (dir.join("source"), dir.join("target"));
            std::fs::create_dir_all(source.join("sub")).unwrap();
            std::fs::create_dir_all(&target).unwrap();
            std::fs::write(source.join("marker"), "").unwrap();
            rustix::mount::mount(
                "tmpfs",
                source.join("sub"),
                "tmpfs",
                rustix::mount::MountFlags::empty(),
                None,
            )
            .unwrap();
            std::fs::write(source.join("sub/inner"), "").unwrap();
            let mut real = RealSyscalls;
            let (from, to) = (
                real.open_path(&source).unwrap(),
                real.open_path(&target).unwrap(),
            );
            let attrs = BindAttrs {
                recursive: true,
                read_only: true,
                nodev: false,
            };
            bind::bind_by(way, &from, &to, attrs)
                .map_err(io::Error::from)
                .unwrap();
            let read_only = |path: &Path| {
                rustix::fs::statvfs(path)
                    .unwrap()
                    .f_flag
                    .contains(rustix::fs::StatVfsMountFlags::RDONLY)
            };
            results.push((
                way,
                target.join("marker").exists() && target.join("sub/inner").exists(),
                read_only(&target),
                read_only(&target.join("sub")),
                read_only(&source),
            ));
        }
        results
    })
    .join()
    .unwrap();
    use bind::Way::*;
    assert_eq!(
        results,
        [
            (Tree, true, true, true, false),
            (TreeThenRemount, true, true, false, false),
            (Mount, true, true, false, false),
        ]
    );
}

/// A child opened as [`ChildOf`] takes signals while it is one, and none
/// once its parent reaped it (its pid may be another process's then: a
/// pidfd says ESRCH instead of reaching that one); a pid whose parent is
/// not the one named is not opened.
#[test]
fn a_child_is_signalled_by_pidfd_and_not_once_reaped() {
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let me = std::process::id() as libc::pid_t;
    assert!(ChildOf::open(pid, me + 1).is_none());
    let opened = ChildOf::open(pid, me).expect("a child of this process");
    if let ChildOf::Pid(_) = opened {
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("skipped: no pidfd here (a kernel before 5.3, or seccomp)");
        return;
    }
    opened.signal(0).unwrap();
    opened.signal(libc::SIGKILL).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let err = opened.signal(0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    assert!(ChildOf::open(pid, me).is_none());
}
