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
