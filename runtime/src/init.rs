//! The container's init: runs in the process that becomes PID 1 of the new
//! PID namespace, from fork to execve. Every kernel call goes through
//! [`Syscalls`], so the whole sequence is a unit-tested plan.
//!
//! Order, and why:
//! 1. signals to default, own session, parent-death signal, into the
//!    run's cgroups (limits and the device restriction hold from here on);
//! 2. a new mount namespace with every mount private, so nothing propagates
//!    back to the host;
//! 3. the overlay root (`nodev` when no device cgroup restricts the
//!    container), then /proc, /sys (read-only), /dev (tmpfs with the
//!    standard devices, devpts, shm, mqueue, std* links), the bind mounts
//!    (hosts, resolv.conf, hostname, volumes), files from memory (written to
//!    a tmpfs only this mount namespace has) and Docker's masked and
//!    read-only /proc and /sys paths;
//! 4. pivot_root into it and detach the old root: host files are gone;
//! 5. hostname, `lo` up (a network namespace of its own), the user from the image's own /etc/passwd, the
//!    working directory (created as root when missing), the executable from
//!    the container's `PATH`; with `-t`, a pty from the container's devpts;
//! 6. rlimits, the bounding set, descriptors close-on-exec, seccomp (while
//!    still root with every capability: no_new_privs stays unset, as in
//!    BuildKit's RUN and `docker run`, so setuid programs work), then
//!    groups/gid/uid, the default capabilities, parent-death signal,
//!    umask, execve.
//!
//! With chroot isolation (`cfg.chroot`: no namespace can be made) steps 2
//! to 4 and the hostname and loopback are left out: the root dir becomes
//! `/` by chroot(2), nothing is mounted; the rest is the same.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::protocol::{ContainerConfig, Failure, Report};
use crate::security::{default_seccomp_filters, dropped_capabilities, DEFAULT_CAPABILITIES};
use crate::spec::{BindMount, Network, RlimitResource, TmpfsMount};
use crate::sys::{BindAttrs, Pinned, Syscalls};
use crate::user::{resolve_user, ResolvedUser};

/// Docker's PATH when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Character devices in /dev: name, major, minor.
pub const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The character devices BuildKit's `security.insecure` adds, with the
/// host's root (util/entitlements/security: `WithInsecureSpec`): name,
/// major, minor. Its loop devices follow ([`ContainerConfig::loop_devices`]).
pub const INSECURE_DEVICES: &[(&str, u32, u32)] = &[
    ("kmsg", 1, 11),
    ("cuse", 10, 203),
    ("fuse", 10, 229),
    ("kvm", 10, 232),
    ("net/tun", 10, 200),
    ("loop-control", 10, 237),
];

/// The symlinks in /dev: name, target.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
];

/// Docker's masked paths: hidden behind /dev/null or an empty read-only tmpfs.
const MASKED_PATHS: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/sched_debug",
    "proc/scsi",
    "proc/timer_list",
    "proc/timer_stats",
    "sys/devices/virtual/powercap",
    "sys/firmware",
];

/// Docker's read-only paths.
const READONLY_PATHS: &[&str] = &[
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// The files below /proc that runc lets a mount cover (`checkProcMount`:
/// those lxcfs emulates); /proc itself and anything else below it are
/// refused, as there.
const PROC_FILES_COVERABLE: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/sys/kernel/ns_last_pid",
    "/proc/sys/crypto/fips_enabled",
];

/// nosuid, nodev and noexec: what /proc, /sys, /dev/shm and /dev/mqueue get.
const NO_SUID_DEV_EXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// mount(2) copies its options into one page (including the final NUL).
const OVERLAY_OPTIONS_MAX: usize = 4096;

/// The files kiln writes and bind-mounts over /etc, so they never land in a layer.
pub const ETC_FILES: &[&str] = &["hosts", "resolv.conf", "hostname"];

fn step<T>(name: impl Into<String>, result: io::Result<T>) -> Result<T, Failure> {
    result.map_err(|err| Failure::Setup {
        step: name.into(),
        reason: err.to_string(),
    })
}

/// Runs the whole init sequence; returns only when something failed (on
/// success the process has become the container's command).
pub fn container_init(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    report: &mut dyn FnMut(Report),
) -> Failure {
    match init(sys, cfg, report) {
        Err(failure) => failure,
        Ok(never) => match never {},
    }
}

fn init(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    report: &mut dyn FnMut(Report),
) -> Result<Infallible, Failure> {
    if cfg.argv.is_empty() {
        return Err(Failure::Setup {
            step: "command".into(),
            reason: "no command specified".into(),
        });
    }
    sys.umask(0);
    step("reset signals", sys.reset_signals())?;
    step("setsid", sys.setsid())?;
    // Dies with the helper (so with kiln) from here on, not only once the
    // command runs: set again after the uid change, which clears it.
    step(
        "parent death signal",
        sys.set_parent_death_signal(libc::SIGKILL),
    )?;
    // Single-threaded here, as a v1 `tasks` join needs (it moves the
    // calling thread only).
    for file in &cfg.cgroups {
        step(
            format!("join cgroup {}", file.display()),
            sys.join_cgroup(file),
        )?;
    }
    // Read here, from the host's /proc: after the root changes, a /proc
    // the image or a RUN's mount made could say "deny" and keep kiln's own
    // supplementary groups in the container.
    let setgroups_allowed = sys.setgroups_allowed();
    if cfg.chroot {
        enter_chroot(sys, cfg)?;
    } else {
        step("new mount namespace", sys.unshare(libc::CLONE_NEWNS))?;
        prepare_rootfs(sys, cfg, report)?;
        enter_rootfs(sys, &cfg.rootfs)?;
        step("sethostname", sys.sethostname(&cfg.hostname))?;
        if cfg.network != Network::Host {
            step("bring lo up", sys.loopback_up())?;
        }
    }

    let user = lookup_user(sys, cfg)?;
    let cwd = if cfg.cwd.is_empty() {
        "/"
    } else {
        cfg.cwd.as_str()
    };
    let cwd = Path::new(cwd);
    step(
        format!("create working directory {}", cwd.display()),
        sys.mkdir_all(cwd, 0o755),
    )?;
    step(format!("chdir {}", cwd.display()), sys.chdir(cwd))?;
    if let (true, Some(console)) = (cfg.terminal, cfg.console_fd) {
        // From the container's own devpts, so `tty` names a path inside.
        step("terminal", sys.open_terminal(console, user.uid))?;
    }
    let env = finalize_env(&cfg.env, &user);
    let program = find_executable(sys, &cfg.argv[0], &env)?;

    set_rlimits(sys, cfg)?;
    if !cfg.privileged {
        drop_bounding_caps(sys)?;
    }
    // Before seccomp, which may not allow close_range.
    step("close inherited descriptors", sys.close_fds_on_exec())?;
    if cfg.seccomp {
        install_seccomp(sys)?;
    }
    // Without setgroups (a user namespace whose gid map was written without
    // privileges) the image's supplementary groups cannot be set.
    if setgroups_allowed {
        step("setgroups", sys.setgroups(&user.groups))?;
    }
    step("keep capabilities", sys.set_keep_caps(true))?;
    step(format!("setgid {}", user.gid), sys.setresgid(user.gid))?;
    step(format!("setuid {}", user.uid), sys.setresuid(user.uid))?;
    step("keep capabilities", sys.set_keep_caps(false))?;
    // Privileged (`security.insecure`): the capabilities root has, all
    // those of the bounding set, stay.
    if !cfg.privileged {
        step("capabilities", sys.set_caps(DEFAULT_CAPABILITIES))?;
    }
    // Set after the uid change, which clears it.
    step(
        "parent death signal",
        sys.set_parent_death_signal(libc::SIGKILL),
    )?;
    sys.umask(0o022);
    let err = sys.exec(&program, &cfg.argv, &env);
    Err(exec_failure(&cfg.argv[0], &err))
}

/// The default seccomp profile, installed while the init is still root
/// with every capability, as runc does when the spec leaves
/// `noNewPrivileges` false, which BuildKit's does (`oci.WithNewPrivileges`)
/// and Docker's by default: a setuid program the command runs (`sudo`,
/// `su` after `USER app`) gains its owner's rights, within the bounding
/// set. The filter allows every call the init makes after it (setgroups,
/// setres[ug]id, capset, prctl, execve). Without CAP_SYS_ADMIN in its
/// user namespace (chroot isolation in a pod that lacks it) the kernel
/// installs a filter only under no_new_privs (EACCES otherwise): then,
/// and only then, it is set, and setuid programs stay unprivileged.
fn install_seccomp(sys: &mut dyn Syscalls) -> Result<(), Failure> {
    let filters = default_seccomp_filters().map_err(|err| Failure::Setup {
        step: "seccomp".into(),
        reason: err.to_string(),
    })?;
    match sys.apply_seccomp(&filters) {
        Err(err) if err.raw_os_error() == Some(libc::EACCES) => {
            step("no_new_privs", sys.set_no_new_privs())?;
            step("seccomp", sys.apply_seccomp(&filters))
        }
        other => step("seccomp", other),
    }
}

/// RLIMIT_NOFILE, then the other limits asked for.
fn set_rlimits(sys: &mut dyn Syscalls, cfg: &ContainerConfig) -> Result<(), Failure> {
    let (soft, hard) = cfg.nofile;
    step(
        "rlimit nofile",
        sys.set_rlimit(RlimitResource::Nofile, soft, hard),
    )?;
    for limit in &cfg.rlimits {
        step(
            format!("rlimit {}", limit.resource.name()),
            sys.set_rlimit(limit.resource, limit.soft, limit.hard),
        )?;
    }
    Ok(())
}

/// Drops from the bounding set what Docker's default set lacks.
fn drop_bounding_caps(sys: &mut dyn Syscalls) -> Result<(), Failure> {
    for cap in dropped_capabilities() {
        match sys.drop_bounding_cap(cap) {
            // A capability this kernel does not have is already not there.
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {}
            other => step(format!("drop {cap} from the bounding set"), other)?,
        }
    }
    Ok(())
}

fn exec_failure(program: &str, err: &io::Error) -> Failure {
    let (reason, code) = match err.raw_os_error() {
        Some(libc::ENOENT) => ("no such file or directory".to_string(), 127),
        Some(libc::EACCES) => ("permission denied".to_string(), 126),
        Some(libc::ENOEXEC) => ("exec format error".to_string(), 126),
        Some(libc::ENOTDIR) => ("not a directory".to_string(), 127),
        _ => (err.to_string(), 126),
    };
    Failure::Exec {
        program: program.to_string(),
        reason,
        code,
    }
}

fn lookup_user(sys: &mut dyn Syscalls, cfg: &ContainerConfig) -> Result<ResolvedUser, Failure> {
    let passwd = step("read /etc/passwd", sys.read_file(Path::new("/etc/passwd")))?;
    let group = step("read /etc/group", sys.read_file(Path::new("/etc/group")))?;
    resolve_user(&cfg.user, passwd.as_deref(), group.as_deref()).map_err(|err| {
        Failure::UnknownUser {
            user: cfg.user.clone(),
            reason: err.to_string(),
        }
    })
}

/// The environment the process gets: the caller's, plus Docker's `PATH` and
/// the user's `HOME` when they are missing.
pub fn finalize_env(env: &[String], user: &ResolvedUser) -> Vec<String> {
    let mut out = env.to_vec();
    let has = |key: &str| env.iter().any(|e| e.split('=').next() == Some(key));
    if !has("PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOME") {
        out.push(format!("HOME={}", user.home));
    }
    out
}

/// A command without '/' is looked up in the container's `PATH`, like Go's
/// `exec.LookPath` in runc: the first regular file with an execute bit.
fn find_executable(
    sys: &mut dyn Syscalls,
    program: &str,
    env: &[String],
) -> Result<PathBuf, Failure> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    if !program.is_empty() {
        for dir in path.split(':') {
            let dir = if dir.is_empty() { "." } else { dir };
            let candidate = Path::new(dir).join(program);
            if let Ok(Some(mode)) = sys.stat_mode(&candidate) {
                if mode & libc::S_IFMT == libc::S_IFREG && mode & 0o111 != 0 {
                    return Ok(candidate);
                }
            }
        }
    }
    Err(Failure::Exec {
        program: program.to_string(),
        reason: "executable file not found in $PATH".to_string(),
        code: 127,
    })
}

/// The container's root and its /proc as the kernel shows paths
/// (`Pinned::shown` of /proc's mount point, which is no symlink, and its
/// parent): what a mount point, once resolved, is judged by.
struct Guarded {
    root: PathBuf,
    proc: PathBuf,
}

impl Guarded {
    /// The paths of `proc_dir`, the container's /proc opened in its root.
    fn new(proc_dir: &Pinned) -> Guarded {
        let proc = proc_dir.shown().to_path_buf();
        let root = proc.parent().map(Path::to_path_buf).unwrap_or_default();
        Guarded { root, proc }
    }

    /// A RUN's mount point, as runc has it: not the container's root
    /// (runc: "on the top of rootfs"), which would cover its /proc, /sys
    /// and /dev, and (`checkProcMount`) not /proc, nor below it but on
    /// one of [`PROC_FILES_COVERABLE`]: the fresh proc and its masks are
    /// what the container's /proc shows, and a mount there would hide or
    /// stand in for them. Checked on the target as written, before
    /// anything is made for it (`resolved` None), then where it resolved
    /// inside the root, where an image's symlink may have led it (onto
    /// the root, into /proc, or onto an allowed file: runc judges the
    /// resolved path too).
    fn check(&self, written: &Path, resolved: Option<&Pinned>) -> Result<(), Failure> {
        let at = match resolved {
            None => Some(written.to_path_buf()),
            Some(target) => self.container_path(target.shown()),
        };
        match at.and_then(|at| refusal(written, &at)) {
            Some(reason) => Err(Failure::Setup {
                step: format!("mount point {}", written.display()),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// `shown` (a path as the kernel shows it) as a path in the container
    /// when it is its root, /proc or below /proc; None elsewhere (where
    /// [`refusal`] refuses nothing).
    fn container_path(&self, shown: &Path) -> Option<PathBuf> {
        if shown == self.root {
            return Some(PathBuf::from("/"));
        }
        let below = shown.strip_prefix(&self.proc).ok()?;
        match below.as_os_str().is_empty() {
            true => Some(PathBuf::from("/proc")),
            false => Some(Path::new("/proc").join(below)),
        }
    }
}

/// Why a mount point written as `written`, at `at` in the container, is
/// refused: `at` is the root, /proc, or below /proc but not a file runc
/// lets a mount cover. None anywhere else.
fn refusal(written: &Path, at: &Path) -> Option<String> {
    let resolves = match written == at {
        true => String::new(),
        false => format!(" (it resolves to {})", at.display()),
    };
    if at == Path::new("/") {
        return Some(format!(
            "{}{resolves} cannot be mounted: it is the container's root",
            written.display()
        ));
    }
    if !at.starts_with("/proc") || PROC_FILES_COVERABLE.iter().any(|f| at == Path::new(f)) {
        return None;
    }
    Some(if at == Path::new("/proc") {
        format!(
            "{}{resolves} cannot be mounted: the container's /proc is its own proc filesystem",
            written.display()
        )
    } else {
        format!(
            "{}{resolves} cannot be mounted because it is inside /proc (a mount may cover \
             only {} there, as in runc)",
            written.display(),
            PROC_FILES_COVERABLE.join(", ")
        )
    })
}

/// At most this many symlinks are followed to make one mount point: the
/// kernel's limit for one lookup (`MAXSYMLINKS`), as securejoin's.
const SYMLINKS_MAX: usize = 40;

/// Makes sure a mount point exists and returns it opened, resolved inside
/// the root (an image's symlink cannot send a mount, or a created file, to
/// the host; nor can a symlink another container swaps into a directory
/// they share, a cache mount, between this lookup and the mount, which
/// takes the opened file, not the path).
/// The caller put every mount point in a bottom lower layer, so normally it
/// exists and nothing is made. When the image hides it (a whiteout), or a
/// symlink of the image leads where nothing is yet (`/etc/resolv.conf` →
/// `../run/systemd/resolve/stub-resolv.conf`), what is missing is made,
/// as runc makes it: the symlink is followed inside the root (an absolute
/// one from the root, `..` stopping there), never out of it. Each entry
/// made is reported, parents first, for the caller to remove afterwards
/// as BuildKit's `MountStubsCleaner` does, and the directory it was made
/// in keeps its mtime (a stub leaves no trace in a layer).
fn ensure_mount_point(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    rel: &Path,
    dir: bool,
    report: &mut dyn FnMut(Report),
) -> Result<Pinned, Failure> {
    let root = cfg.rootfs.as_path();
    // Every failure names the mount point, and paths as the container
    // sees them.
    let refused = |reason: String| Failure::Setup {
        step: format!("mount point /{}", rel.display()),
        reason,
    };
    let resolve = |sys: &mut dyn Syscalls, prefix: &Path| {
        sys.open_in_root(root, prefix)
            .map_err(|err| refused(format!("resolve /{}: {err}", prefix.display())))
    };
    if let Some(target) = resolve(sys, rel)? {
        return Ok(target);
    }
    // The root opened inside itself. Its path as the kernel shows it is
    // what the paths found below it start with, which `cfg.rootfs` need
    // not be (it may be reached through a symlink): stubs are reported,
    // and failures shown, relative to it.
    let open_root = |sys: &mut dyn Syscalls| match resolve(sys, Path::new("."))? {
        Some(top) => Ok(top),
        None => Err(refused("the container's root went away".to_string())),
    };
    let mut parent = open_root(sys)?;
    let shown_root = parent.shown().to_path_buf();
    let in_root = |at: &Path| Path::new("/").join(stub_path(&shown_root, at));
    let failed = |what: &str, at: &Path, err: io::Error| {
        refused(format!("{what} {}: {err}", in_root(at).display()))
    };
    // Walked one name at a time: `prefix` (a path in the root, through
    // the image's symlinks) resolves to `parent`; `pending` is what is
    // left of the path, a symlink's target put in front of it when one is
    // followed.
    let mut prefix = PathBuf::new();
    let mut pending: VecDeque<OsString> = path_names(rel).collect();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        let next = prefix.join(&name);
        if let Some(existing) = resolve(sys, &next)? {
            (parent, prefix) = (existing, next);
            continue;
        }
        let shown = parent.shown().join(&name);
        // `<parent fd>/<name>`: in the directory opened, whatever is at
        // its path now.
        let path = parent.path().join(&name);
        // Nothing resolves there, yet a symlink may be: it leads where
        // nothing is yet. Followed from its own directory (`prefix`), or
        // from the root when absolute. The count bounds the walk where
        // the kernel's own limit cannot: a symlink another container
        // keeps changing in a directory they share.
        if let Some(link) = sys
            .read_link(&path)
            .map_err(|err| failed("readlink", &shown, err))?
        {
            links += 1;
            if links > SYMLINKS_MAX {
                return Err(refused(format!(
                    "more than {SYMLINKS_MAX} symlinks on the way to /{}",
                    rel.display()
                )));
            }
            if link.is_absolute() {
                (parent, prefix) = (open_root(sys)?, PathBuf::new());
            }
            let mut rest: VecDeque<OsString> = path_names(&link).collect();
            rest.extend(pending);
            pending = rest;
            continue;
        }
        if name == ".." {
            // The parent of a directory that resolved always does.
            return Err(refused(format!(
                "/{} went away as it was walked",
                prefix.display()
            )));
        }
        let parent_mtime = sys
            .mtime(&parent.dir_path())
            .map_err(|err| failed("stat", parent.shown(), err))?;
        // One entry, never through a symlink: mkdir -p would take a
        // symlink to a host directory for the directory, and what is made
        // below it would then be made on the host.
        let created = if pending.is_empty() && !dir {
            sys.create_file(&path, 0o644)
        } else {
            sys.mkdir(&path, 0o755)
        };
        created.map_err(|err| failed("create", &shown, err))?;
        sys.set_mtime(&parent.dir_path(), parent_mtime)
            .map_err(|err| failed("keep the mtime of", parent.shown(), err))?;
        report(Report::StubCreated {
            path: stub_path(&shown_root, &shown),
        });
        parent = match resolve(sys, &next)? {
            Some(made) => made,
            None => {
                return Err(refused(format!(
                    "{} went away as it was made",
                    in_root(&shown).display()
                )))
            }
        };
        prefix = next;
    }
    Ok(parent)
}

/// The names `path` walks through, `..` included; `/` and `.` add none.
fn path_names(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// A stub made at `path` (resolved inside `root`: no symlink of the image
/// on the way), as the caller finds it: relative to the root. Not the path
/// as written, which may go through the image's symlinks (`/var/run` →
/// `/run`) and, followed outside the container, leave the root.
fn stub_path(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_path_buf()
}

fn mount(
    sys: &mut dyn Syscalls,
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), Failure> {
    step(
        format!(
            "mount {} on {}",
            if source.is_empty() { fstype } else { source },
            target.display()
        ),
        sys.mount(source, target, fstype, flags, data),
    )
}

/// Builds the container's root in the new mount namespace (step 3 of the
/// module's order): every mount private, the overlay root, /proc and /sys,
/// /dev, the bind mounts, the files from memory, then Docker's masked and
/// read-only paths.
fn prepare_rootfs(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    report: &mut dyn FnMut(Report),
) -> Result<(), Failure> {
    let root = cfg.rootfs.as_path();
    mount(
        sys,
        "",
        Path::new("/"),
        "",
        libc::MS_REC | libc::MS_PRIVATE,
        "",
    )?;
    match &cfg.root_dir {
        Some(dir) => bind_root_dir(sys, cfg, dir)?,
        None => mount_overlay(sys, cfg)?,
    }
    let guarded = mount_proc_and_sys(sys, cfg, report)?;
    let dev = mount_dev(sys, cfg, &guarded, report)?;
    // The /dev/null the masks are bound from, opened before a RUN's
    // mounts can cover /dev (with a `null` there that is a symlink to a
    // host file, which a bind by path would follow).
    let null = dev.join("null");
    let null = step(format!("open {}", null.display()), sys.open_path(&null))?;
    bind_etc_files(sys, cfg, &guarded, report)?;
    mount_volumes(sys, cfg, &guarded, report)?;
    mount_memory_files(sys, cfg, &guarded, report)?;
    if cfg.privileged {
        return Ok(());
    }
    mask_paths(sys, root, &null)
}

/// The overlay root, `nodev` when no device cgroup restricts the container:
/// then device nodes (made with mknod, or unpacked from an image) must not
/// be openable, nodev everywhere but the standard nodes bound from the
/// host.
fn mount_overlay(sys: &mut dyn Syscalls, cfg: &ContainerConfig) -> Result<(), Failure> {
    let root = cfg.rootfs.as_path();
    let nodev = if cfg.nodev { libc::MS_NODEV } else { 0 };
    if cfg.overlay_options.len() < OVERLAY_OPTIONS_MAX {
        return mount(sys, "overlay", root, "overlay", nodev, &cfg.overlay_options);
    }
    // Many layers: mount(2) takes options up to one page only.
    step(
        format!("mount overlay on {}", root.display()),
        sys.mount_overlay_fsconfig(root, &cfg.overlay_options),
    )?;
    if cfg.nodev {
        mount(
            sys,
            "",
            root,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NODEV,
            "",
        )?;
    }
    Ok(())
}

/// A plain directory as the root (the copying snapshotter): bound on the
/// mount point, `nodev` as the overlay would be.
fn bind_root_dir(sys: &mut dyn Syscalls, cfg: &ContainerConfig, dir: &Path) -> Result<(), Failure> {
    let root = cfg.rootfs.as_path();
    let source = dir.to_string_lossy();
    mount(sys, &source, root, "", libc::MS_BIND | libc::MS_REC, "")?;
    if cfg.nodev {
        // Flags the mount has must be repeated (locked in a user namespace).
        let kept = step(format!("statvfs {}", root.display()), sys.mount_flags(root))?;
        mount(
            sys,
            "",
            root,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NODEV | kept,
            "",
        )?;
    }
    Ok(())
}

/// /proc, and /sys read-only.
///
/// In a user namespace the kernel mounts a new proc or sysfs only where
/// the outer one is fully visible; a container's (a CI job's pod) has
/// masked paths over it, and the mount is refused (EPERM). Then the outer
/// one is bound, its masks with it, as BuildKit's
/// `--oci-worker-no-process-sandbox` does, and the caller is told
/// ([`Report::Fallback`]). The run keeps its PID namespace: its processes
/// still end with its init.
fn mount_proc_and_sys(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    report: &mut dyn FnMut(Report),
) -> Result<Guarded, Failure> {
    // Their masked and read-only paths are set under `<root>/proc` and
    // `<root>/sys` (`mask_paths`): an image's symlink there would send
    // those mounts elsewhere and leave the fresh proc whole (a writable
    // /proc/sys, /proc/sysrq-trigger). runc refuses them too.
    for name in ["proc", "sys"] {
        let path = cfg.rootfs.join(name);
        if step(format!("readlink {}", path.display()), sys.read_link(&path))?.is_some() {
            return Err(Failure::Setup {
                step: format!("mount point /{name}"),
                reason: format!("/{name} is a symlink in the image: it must be a directory"),
            });
        }
    }
    let proc_dir = ensure_mount_point(sys, cfg, Path::new("proc"), true, report)?;
    fresh_or_bound(sys, cfg, "proc", &proc_dir, NO_SUID_DEV_EXEC, report)?;

    let sys_dir = ensure_mount_point(sys, cfg, Path::new("sys"), true, report)?;
    if cfg.rootless && cfg.network == Network::Host {
        // sysfs can only be mounted by the owner of the network namespace;
        // in a user namespace sharing the host's network, bind the host's
        // (read-only, what is mounted under it too).
        bind(sys, Path::new("/sys"), &sys_dir, READ_ONLY_TREE)?;
    } else {
        // Read-only, but for BuildKit's `security.insecure` with the
        // host's root (`oci.WithWriteableSysfs`; rootless BuildKit mounts
        // no sysfs of its own).
        let writable = cfg.privileged && !cfg.rootless;
        let read_only = if writable { 0 } else { libc::MS_RDONLY };
        fresh_or_bound(
            sys,
            cfg,
            "sysfs",
            &sys_dir,
            NO_SUID_DEV_EXEC | read_only,
            report,
        )?;
    }
    Ok(Guarded::new(&proc_dir))
}

/// A recursive bind made read-only, submounts included.
const READ_ONLY_TREE: BindAttrs = BindAttrs {
    recursive: true,
    read_only: true,
    nodev: false,
};

/// Binds the host path `source` (one no container can change) on the
/// opened `target`.
fn bind(
    sys: &mut dyn Syscalls,
    source: &Path,
    target: &Pinned,
    attrs: BindAttrs,
) -> Result<(), Failure> {
    let source = step(format!("open {}", source.display()), sys.open_path(source))?;
    bind_pinned(sys, &source, target, attrs)
}

fn bind_pinned(
    sys: &mut dyn Syscalls,
    source: &Pinned,
    target: &Pinned,
    attrs: BindAttrs,
) -> Result<(), Failure> {
    step(
        format!(
            "bind {} on {}",
            source.shown().display(),
            target.shown().display()
        ),
        sys.bind(source, target, attrs),
    )
}

/// Mounts a new `fstype` (proc or sysfs) on `target`, or, rootless where
/// that is refused, binds the outer one (`/proc`, `/sys`) recursively
/// (read-only when `flags` say so) and reports the fallback.
fn fresh_or_bound(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    fstype: &str,
    target: &Pinned,
    flags: libc::c_ulong,
    report: &mut dyn FnMut(Report),
) -> Result<(), Failure> {
    match sys.mount(fstype, &target.path(), fstype, flags, "") {
        Ok(()) => Ok(()),
        Err(err) if cfg.rootless && err.raw_os_error() == Some(libc::EPERM) => {
            let outer = if fstype == "proc" { "/proc" } else { "/sys" };
            let attrs = BindAttrs {
                recursive: true,
                read_only: flags & libc::MS_RDONLY != 0,
                nodev: false,
            };
            bind(sys, Path::new(outer), target, attrs)?;
            report(Report::Fallback {
                what: format!(
                    "{outer} bound from outside: a new {fstype} cannot be mounted here \
                     (the outer one has masked paths, as in a container)"
                ),
            });
            Ok(())
        }
        Err(err) => Err(Failure::Setup {
            step: format!("mount {fstype} on {}", target.shown().display()),
            reason: err.to_string(),
        }),
    }
}

/// /dev: a tmpfs with the standard devices, devpts, shm, mqueue and the
/// std* links. Returns its path.
fn mount_dev(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    guarded: &Guarded,
    report: &mut dyn FnMut(Report),
) -> Result<PathBuf, Failure> {
    let nodev = if cfg.nodev { libc::MS_NODEV } else { 0 };
    let dev = ensure_mount_point(sys, cfg, Path::new("dev"), true, report)?;
    // An image's `/dev -> /` or `/dev -> /proc` would put the tmpfs there.
    guarded.check(Path::new("/dev"), Some(&dev))?;
    mount(
        sys,
        "tmpfs",
        &dev.path(),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_STRICTATIME | nodev,
        "mode=755,size=65536k",
    )?;
    // The new tmpfs, by the path: the root's own /dev, which no other
    // container shares.
    let dev = dev.shown().to_path_buf();
    create_devices(sys, cfg, &dev)?;
    if cfg.privileged && !cfg.rootless && !cfg.nodev {
        create_insecure_devices(sys, cfg, &dev)?;
    }
    let pts = dev.join("pts");
    step("mkdir /dev/pts", sys.mkdir_all(&pts, 0o755))?;
    // gid 5 (tty) may not be mapped in a user namespace.
    let pts_options = if cfg.rootless {
        "newinstance,ptmxmode=0666,mode=0620"
    } else {
        "newinstance,ptmxmode=0666,mode=0620,gid=5"
    };
    mount(
        sys,
        "devpts",
        &pts,
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        pts_options,
    )?;
    let shm = dev.join("shm");
    step("mkdir /dev/shm", sys.mkdir_all(&shm, 0o755))?;
    mount(
        sys,
        "shm",
        &shm,
        "tmpfs",
        NO_SUID_DEV_EXEC,
        &format!("mode=1777,size={}", tmpfs_size(cfg.shm_size)),
    )?;
    let mqueue = dev.join("mqueue");
    step("mkdir /dev/mqueue", sys.mkdir_all(&mqueue, 0o755))?;
    mount(sys, "mqueue", &mqueue, "mqueue", NO_SUID_DEV_EXEC, "")?;
    for (name, target) in DEV_LINKS {
        step(
            format!("symlink /dev/{name}"),
            sys.symlink(target, &dev.join(name)),
        )?;
    }
    Ok(dev)
}

/// The standard character devices in `dev`: made with mknod, or bound
/// from the host's when mknod is refused (rootless) or the node could not
/// be opened (nodev).
fn create_devices(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    dev: &Path,
) -> Result<(), Failure> {
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        if cfg.rootless || cfg.nodev {
            // mknod is refused in a user namespace, and a node made on a
            // nodev /dev could not be opened: bind the host's node.
            step(
                format!("create {}", path.display()),
                sys.create_file(&path, 0o666),
            )?;
            let host = format!("/dev/{name}");
            mount(sys, &host, &path, "", libc::MS_BIND, "")?;
        } else {
            step(
                format!("mknod {}", path.display()),
                sys.mknod_char(&path, 0o666, *major, *minor),
            )?;
        }
    }
    Ok(())
}

/// [`INSECURE_DEVICES`] and `loop0` to `loop<n-1>` (block, 7:n), made
/// with mknod, mode 0666 (runc's for a spec's device without a mode): a
/// privileged run has no device cgroup of its own to refuse them.
fn create_insecure_devices(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    dev: &Path,
) -> Result<(), Failure> {
    step("mkdir /dev/net", sys.mkdir_all(&dev.join("net"), 0o755))?;
    for (name, major, minor) in INSECURE_DEVICES {
        let path = dev.join(name);
        step(
            format!("mknod {}", path.display()),
            sys.mknod_char(&path, 0o666, *major, *minor),
        )?;
    }
    for n in 0..cfg.loop_devices {
        let path = dev.join(format!("loop{n}"));
        step(
            format!("mknod {}", path.display()),
            sys.mknod_block(&path, 0o666, 7, n),
        )?;
    }
    Ok(())
}

/// The files kiln wrote for /etc ([`ETC_FILES`]), bound over the image's.
fn bind_etc_files(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    guarded: &Guarded,
    report: &mut dyn FnMut(Report),
) -> Result<(), Failure> {
    for name in ETC_FILES {
        let rel = Path::new("etc").join(name);
        let target = ensure_mount_point(sys, cfg, &rel, false, report)?;
        guarded.check(&Path::new("/").join(&rel), Some(&target))?;
        bind(sys, &cfg.etc_dir.join(name), &target, BindAttrs::default())?;
    }
    Ok(())
}

/// A tmpfs size option: in KiB when it is a whole number of them (as
/// Docker writes /dev/shm's), else in bytes.
fn tmpfs_size(bytes: u64) -> String {
    if bytes % 1024 == 0 {
        format!("{}k", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// One of the run's mounts: a host path bound, or an empty tmpfs.
enum Volume<'a> {
    Bind(&'a BindMount),
    Tmpfs(&'a TmpfsMount),
}

impl Volume<'_> {
    fn target(&self) -> &Path {
        match self {
            Volume::Bind(b) => &b.target,
            Volume::Tmpfs(t) => &t.target,
        }
    }
}

/// The bind mounts and tmpfs mounts, shallowest target first (a mount
/// under another one's target lands on it, not under it), in the given
/// order among equals.
fn mount_volumes(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    guarded: &Guarded,
    report: &mut dyn FnMut(Report),
) -> Result<(), Failure> {
    let mut volumes: Vec<Volume<'_>> = cfg.mounts.iter().map(Volume::Bind).collect();
    volumes.extend(cfg.tmpfs.iter().map(Volume::Tmpfs));
    volumes.sort_by_key(|v| v.target().components().count());
    for volume in volumes {
        match volume {
            Volume::Bind(bind) => bind_volume(sys, cfg, guarded, bind, report)?,
            Volume::Tmpfs(tmpfs) => mount_tmpfs(sys, cfg, guarded, tmpfs, report)?,
        }
    }
    Ok(())
}

/// An empty tmpfs, mode 1777 and nosuid as BuildKit mounts it (nodev too
/// when no device cgroup restricts the container), read-only when asked.
fn mount_tmpfs(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    guarded: &Guarded,
    tmpfs: &TmpfsMount,
    report: &mut dyn FnMut(Report),
) -> Result<(), Failure> {
    let rel = tmpfs.target.strip_prefix("/").unwrap_or(&tmpfs.target);
    guarded.check(&tmpfs.target, None)?;
    let target = ensure_mount_point(sys, cfg, rel, true, report)?;
    guarded.check(&tmpfs.target, Some(&target))?;
    let nodev = if cfg.nodev { libc::MS_NODEV } else { 0 };
    let read_only = if tmpfs.read_only { libc::MS_RDONLY } else { 0 };
    let mut options = "mode=1777".to_string();
    // BuildKit adds the size only above 0: size=0 is the default size,
    // where the kernel would read it as no limit.
    if let Some(size) = tmpfs.size.filter(|size| *size > 0) {
        options.push_str(&format!(",size={}", tmpfs_size(size)));
    }
    mount(
        sys,
        "tmpfs",
        &target.path(),
        "tmpfs",
        libc::MS_NOSUID | nodev | read_only,
        &options,
    )
}

/// A volume bound (recursively) on its target, read-only when asked (its
/// submounts too) and nodev when no device cgroup restricts the
/// container. A source [`BindMount::within`] a directory is opened from
/// that directory, resolved inside it.
fn bind_volume(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    guarded: &Guarded,
    volume: &BindMount,
    report: &mut dyn FnMut(Report),
) -> Result<(), Failure> {
    let rel = volume.target.strip_prefix("/").unwrap_or(&volume.target);
    guarded.check(&volume.target, None)?;
    let source = open_volume_source(sys, volume)?;
    let is_dir = step(
        format!("stat {}", source.shown().display()),
        sys.stat_mode(&source.path()),
    )?
    .is_none_or(|mode| mode & libc::S_IFMT == libc::S_IFDIR);
    let target = ensure_mount_point(sys, cfg, rel, is_dir, report)?;
    guarded.check(&volume.target, Some(&target))?;
    let attrs = BindAttrs {
        recursive: true,
        read_only: volume.read_only,
        nodev: cfg.nodev,
    };
    bind_pinned(sys, &source, &target, attrs)
}

/// A volume's source, opened: from [`BindMount::within`], resolved inside
/// it (what another container sharing it swapped in meanwhile cannot lead
/// out of it), else the host path as given.
fn open_volume_source(sys: &mut dyn Syscalls, volume: &BindMount) -> Result<Pinned, Failure> {
    let Some(within) = &volume.within else {
        return step(
            format!("open {}", volume.source.display()),
            sys.open_path(&volume.source),
        );
    };
    let rel = volume
        .source
        .strip_prefix(within)
        .map_err(|_| Failure::Setup {
            step: format!("open {}", volume.source.display()),
            reason: format!("not inside {}", within.display()),
        })?;
    step(
        format!("open {} inside {}", rel.display(), within.display()),
        sys.open_in_root(within, rel),
    )?
    .ok_or_else(|| Failure::Setup {
        step: format!("open {}", volume.source.display()),
        reason: format!(
            "/{} is not in {}: a symlink on the way resolves inside it (another RUN \
             holding it may have changed it since the run was prepared)",
            rel.display(),
            within.display()
        ),
    })
}

/// Docker's masked paths, hidden behind the container's /dev/null (`null`,
/// opened before the RUN's mounts) or an empty read-only tmpfs, and its
/// read-only paths, those the root has; each opened inside the root (a
/// RUN's mount over /proc may hold symlinks).
fn mask_paths(sys: &mut dyn Syscalls, root: &Path, null: &Pinned) -> Result<(), Failure> {
    let open = |sys: &mut dyn Syscalls, rel: &str| {
        step(
            format!("open {}", root.join(rel).display()),
            sys.open_in_root(root, Path::new(rel)),
        )
    };
    for rel in MASKED_PATHS {
        let Some(target) = open(sys, rel)? else {
            continue;
        };
        let mode = step(
            format!("stat {}", target.shown().display()),
            sys.stat_mode(&target.path()),
        )?;
        match mode {
            Some(mode) if mode & libc::S_IFMT == libc::S_IFDIR => mount(
                sys,
                "tmpfs",
                &target.path(),
                "tmpfs",
                libc::MS_RDONLY,
                "size=0",
            )?,
            Some(_) => bind_pinned(sys, null, &target, BindAttrs::default())?,
            None => {}
        }
    }
    for rel in READONLY_PATHS {
        if let Some(target) = open(sys, rel)? {
            bind_pinned(sys, &target, &target, READ_ONLY_TREE)?;
        }
    }
    Ok(())
}

/// [`ContainerConfig::memory_files`]: a tmpfs mounted on `memory_dir` in
/// this (private) mount namespace holds them, each bound read-only on its
/// target; then the tmpfs leaves `memory_dir`, reachable through those
/// binds only. The host never sees it: it goes with the container.
fn mount_memory_files(
    sys: &mut dyn Syscalls,
    cfg: &ContainerConfig,
    guarded: &Guarded,
    report: &mut dyn FnMut(Report),
) -> Result<(), Failure> {
    if cfg.memory_files.is_empty() {
        return Ok(());
    }
    let dir = cfg.memory_dir.as_path();
    // Room for every file, a page (of up to 64 KiB) each beyond its bytes.
    let size = cfg
        .memory_files
        .iter()
        .map(|f| f.content.len() + 65_536)
        .sum::<usize>()
        + 65_536;
    mount(
        sys,
        "tmpfs",
        dir,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        &format!("mode=0700,size={size}"),
    )?;
    for (n, file) in cfg.memory_files.iter().enumerate() {
        let source = dir.join(n.to_string());
        step(
            format!("write {} (for {})", source.display(), file.target.display()),
            sys.write_file(&source, &file.content, file.mode),
        )?;
        if (file.uid, file.gid) != (0, 0) {
            step(
                format!("chown {} {}:{}", source.display(), file.uid, file.gid),
                sys.chown(&source, file.uid, file.gid),
            )?;
        }
        let rel = file.target.strip_prefix("/").unwrap_or(&file.target);
        guarded.check(&file.target, None)?;
        let target = ensure_mount_point(sys, cfg, rel, false, report)?;
        guarded.check(&file.target, Some(&target))?;
        let attrs = BindAttrs {
            recursive: false,
            read_only: true,
            nodev: true,
        };
        bind(sys, &source, &target, attrs)?;
    }
    step(
        format!("detach {}", dir.display()),
        sys.umount(dir, libc::MNT_DETACH),
    )
}

/// chroot isolation: no mount namespace, nothing mounted; the root dir
/// becomes `/` by chroot(2).
fn enter_chroot(sys: &mut dyn Syscalls, cfg: &ContainerConfig) -> Result<(), Failure> {
    let Some(dir) = &cfg.root_dir else {
        return Err(Failure::Setup {
            step: "chroot".into(),
            reason: "chroot isolation needs a root directory".into(),
        });
    };
    step(format!("chdir {}", dir.display()), sys.chdir(dir))?;
    step(
        format!("chroot {}", dir.display()),
        sys.chroot(Path::new(".")),
    )?;
    step("chdir /", sys.chdir(Path::new("/")))
}

/// pivot_root(".", ".") then detaching the old root, which stays stacked
/// under the new one until then (runc's way: no put_old directory needed).
fn enter_rootfs(sys: &mut dyn Syscalls, root: &Path) -> Result<(), Failure> {
    step("chdir to rootfs", sys.chdir(root))?;
    step("pivot_root", sys.pivot_root(Path::new("."), Path::new(".")))?;
    step(
        "detach old root",
        sys.umount(Path::new("."), libc::MNT_DETACH),
    )?;
    step("chdir /", sys.chdir(Path::new("/")))
}

#[cfg(test)]
mod tests;
