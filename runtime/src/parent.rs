//! The caller's side of a run: prepares the state dir, starts the helper,
//! writes the user-namespace id maps, forwards signals, relays the terminal,
//! enforces the timeout and turns the helper's reports into a result.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};

use crate::cgroup::{Counter, PidsWatch, RunCgroups, PIDS_CHECK_INTERVAL};
use crate::error::RuntimeError;
use crate::helper::remove_tree;
use crate::idmap;
use crate::init::ETC_FILES;
use crate::interrupt::Interrupts;
use crate::protocol::{CgroupEntry, ContainerConfig, Failure, Report, FDS_ENV};
use crate::spec::{ExitStatus, HelperCommand, Network, RlimitResource, RunSpec, Streams, UpperDir};

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> RuntimeError {
    move |source| RuntimeError::Io { what, source }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    crate::sys::pipe().map_err(io_err("pipe"))
}

/// The layout of a run's state. The overlay's work dir (and a discarded
/// upper dir) live in the caller's state dir, on the upper dir's filesystem;
/// the small per-run files (mount point, mount-point layer, /etc files) go to
/// `scratch`, a tmpfs when one is available: on a slow disk, creating and
/// removing them was most of the cost of a short run.
struct StateDir {
    root: PathBuf,
    /// A directory of its own on a tmpfs, or `root`.
    scratch: PathBuf,
    rootfs: PathBuf,
    work: PathBuf,
    upper: PathBuf,
    mount_points: PathBuf,
    etc: PathBuf,
    /// Where the init mounts the tmpfs holding [`RunSpec::memory_files`]
    /// (in its own mount namespace: here it stays an empty directory).
    memory: PathBuf,
}

/// Most lower dirs overlay stacks; a run adds one of its own (the mount
/// points) to the image's layers.
pub const MAX_LOWER_DIRS: usize = 500;

/// Statfs magic of tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Statfs magic of overlayfs.
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;

fn is_tmpfs(path: &Path) -> bool {
    filesystem_is(path, TMPFS_MAGIC)
}

/// Whether overlay can keep its upper dirs under `dir` (the store's
/// scratch), looking at `dir` or, while it does not exist yet, its nearest
/// ancestor: `Err` says why not (overlay refuses an overlayfs as an upper
/// dir's filesystem, and a RUN there fails).
pub fn upper_dir_support(dir: &Path) -> Result<String, String> {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(dir);
    if filesystem_is(existing, OVERLAYFS_MAGIC) {
        return Err(format!(
            "{} is on an overlay filesystem (a container's own root filesystem?), which \
             overlay cannot use as its upper layer: RUN steps work on copies of their root \
             filesystem there (the copying snapshotter; a store on a volume is faster)",
            dir.display()
        ));
    }
    Ok(format!("{} is not on overlayfs", dir.display()))
}

fn filesystem_is(path: &Path, magic: i64) -> bool {
    // f_type is an i64 on x86_64, not on every architecture.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as i64 == magic)
}

/// A new private directory on a tmpfs for one run's small files: under
/// /run/kiln (root), $XDG_RUNTIME_DIR/kiln, or /dev/shm/kiln-<uid>, the
/// first that is a tmpfs and ours (see [`crate::scratch`]). `None` when
/// there is none.
fn tmpfs_scratch() -> Option<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let unique = format!(
        "{}-{nanos}-{}",
        crate::scratch::owner_token(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    for (mount, base) in crate::scratch::scratch_bases() {
        if !is_tmpfs(&mount) {
            continue;
        }
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&base);
        // In a shared directory someone else could have made it first.
        if !crate::scratch::private_base(&base) {
            continue;
        }
        let dir = base.join(&unique);
        if std::fs::DirBuilder::new().mode(0o700).create(&dir).is_ok() {
            return Some(dir);
        }
    }
    None
}

impl StateDir {
    fn new(root: &Path, upper: &UpperDir, scratch: Option<PathBuf>) -> Self {
        let scratch = scratch.unwrap_or_else(|| root.to_path_buf());
        StateDir {
            root: root.to_path_buf(),
            rootfs: scratch.join("rootfs"),
            work: root.join("work"),
            upper: match upper {
                UpperDir::Keep(path) => path.clone(),
                UpperDir::Discard => root.join("upper"),
            },
            mount_points: scratch.join("mountpoints"),
            etc: scratch.join("etc"),
            memory: scratch.join("memory"),
            scratch,
        }
    }

    fn create(&self, spec: &RunSpec) -> Result<(), RuntimeError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RuntimeError::StateDir { path, source }
        };
        for dir in [&self.root, &self.rootfs, &self.work, &self.upper, &self.etc] {
            std::fs::create_dir_all(dir).map_err(err(dir))?;
        }
        // The bottom lower layer: every mount point, so that mounting over a
        // path the image lacks never creates it in the upper dir (a layer).
        for dir in ["proc", "sys", "dev", "etc"] {
            let path = self.mount_points.join(dir);
            std::fs::create_dir_all(&path).map_err(err(&path))?;
        }
        for name in ETC_FILES {
            let path = self.mount_points.join("etc").join(name);
            File::create(&path).map_err(err(&path))?;
        }
        for volume in &spec.mounts {
            let rel = volume.target.strip_prefix("/").unwrap_or(&volume.target);
            let path = self.mount_points.join(rel);
            // A source within a directory is one the builder made there
            // (a cache's `source=`), not looked up through its symlinks.
            if volume.within.is_some() || volume.source.is_dir() {
                std::fs::create_dir_all(&path).map_err(err(&path))?;
            } else {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(err(parent))?;
                }
                File::create(&path).map_err(err(&path))?;
            }
        }
        for tmpfs in &spec.tmpfs {
            let rel = tmpfs.target.strip_prefix("/").unwrap_or(&tmpfs.target);
            let path = self.mount_points.join(rel);
            std::fs::create_dir_all(&path).map_err(err(&path))?;
        }
        if !spec.memory_files.is_empty() {
            std::fs::create_dir_all(&self.memory).map_err(err(&self.memory))?;
        }
        for file in &spec.memory_files {
            let rel = file.target.strip_prefix("/").unwrap_or(&file.target);
            let path = self.mount_points.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(err(parent))?;
            }
            File::create(&path).map_err(err(&path))?;
        }
        let files = [
            ("hostname", format!("{}\n", spec.hostname)),
            (
                "hosts",
                hosts_file(&spec.hostname, spec.network, &spec.extra_hosts),
            ),
            ("resolv.conf", resolv_conf(spec.network)),
        ];
        for (name, content) in files {
            let path = self.etc.join(name);
            std::fs::write(&path, content).map_err(err(&path))?;
        }
        Ok(())
    }

    fn overlay_options(
        &self,
        lower_dirs: &[PathBuf],
        rootless: bool,
        volatile: bool,
    ) -> Result<String, RuntimeError> {
        let mut lowers: Vec<&Path> = lower_dirs.iter().rev().map(PathBuf::as_path).collect();
        lowers.push(&self.mount_points);
        let all = lowers
            .iter()
            .copied()
            .chain([self.upper.as_path(), self.work.as_path()]);
        for path in all {
            let text = path.to_string_lossy();
            if text.contains([',', ':', '\\']) {
                return Err(RuntimeError::InvalidSpec(format!(
                    "overlay path {text:?} contains ',', ':' or '\\'"
                )));
            }
        }
        let lowers: Vec<String> = lowers
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let mut options = format!(
            "lowerdir={},upperdir={},workdir={},index=off,redirect_dir=nofollow,metacopy=off",
            lowers.join(":"),
            self.upper.display(),
            self.work.display()
        );
        // Whatever the kernel's defaults: an upper dir must hold whole files
        // and plain renames (a renamed lower directory is copied, not
        // redirected), so that it reads back as an ordinary layer diff.
        // (`nofollow` rather than `off`: `userxattr` accepts only that.)
        // A kept upper dir is read back at once by the builder, which fsyncs
        // the layer it makes: no need for overlay to syncfs the whole upper
        // filesystem at unmount. (A discarded one skips it too, but pays two
        // extra directories per run on slow-metadata disks, more than a
        // syncfs with nothing to flush costs a short run.)
        if volatile {
            options.push_str(",volatile");
        }
        if rootless {
            // Unprivileged overlay keeps its whiteout/opaque marks in user.* xattrs.
            options.push_str(",userxattr");
        }
        if lowers.len() > MAX_LOWER_DIRS {
            return Err(RuntimeError::InvalidSpec(format!(
                "{} lower dirs: overlay stacks at most {MAX_LOWER_DIRS}",
                lowers.len()
            )));
        }
        Ok(options)
    }
}

/// /etc/hosts: localhost and the container's own name, plus the host's
/// entries when it shares the host's network, then the `--add-host` ones.
fn hosts_file(hostname: &str, network: Network, extra: &[(String, String)]) -> String {
    let mut hosts =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if network == Network::Host {
        if let Ok(host) = std::fs::read_to_string("/etc/hosts") {
            hosts.push_str(&host);
        }
    }
    for (name, address) in extra {
        hosts.push_str(&format!("{address}\t{name}\n"));
    }
    hosts
}

/// The host's resolv.conf, or Docker's fallback when it has none; on a
/// private network, slirp4netns's DNS forwarder in place of the host's
/// name servers (which may be on the host's loopback).
fn resolv_conf(network: Network) -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf");
    match (network, host) {
        (Network::Private, host) => crate::network::private_resolv_conf(&host.unwrap_or_default()),
        (_, Ok(host)) => host,
        (_, Err(_)) => "nameserver 8.8.8.8\nnameserver 8.8.4.4\n".to_string(),
    }
}

fn validate(spec: &RunSpec) -> Result<(), RuntimeError> {
    if spec.argv.is_empty() {
        return Err(RuntimeError::InvalidSpec("no command specified".into()));
    }
    if !spec.cwd.is_empty() && !spec.cwd.starts_with('/') {
        return Err(RuntimeError::InvalidSpec(format!(
            "the working directory {:?} is invalid, it needs to be an absolute path",
            spec.cwd
        )));
    }
    if spec.hostname.is_empty() || spec.hostname.len() > 64 {
        return Err(RuntimeError::InvalidSpec(format!(
            "invalid hostname {:?}",
            spec.hostname
        )));
    }
    if let (None, UpperDir::Keep(upper)) = (&spec.root_dir, &spec.upper) {
        if std::fs::read_dir(upper).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(RuntimeError::InvalidSpec(format!(
                "the upper dir {} is not empty: a kept upper dir must start empty (the entries \
                 made for mount points are removed from it afterwards, and a whiteout there \
                 would go with them)",
                upper.display()
            )));
        }
    }
    for lower in &spec.lower_dirs {
        std::fs::read_dir(lower).map_err(|source| RuntimeError::LowerDir {
            path: lower.clone(),
            source,
        })?;
    }
    for volume in &spec.mounts {
        std::fs::metadata(&volume.source).map_err(|source| RuntimeError::VolumeSource {
            path: volume.source.clone(),
            source,
        })?;
        if !volume.target.is_absolute() || volume.target.components().any(|c| c.as_os_str() == "..")
        {
            return Err(RuntimeError::InvalidSpec(format!(
                "volume target {} must be an absolute path without '..'",
                volume.target.display()
            )));
        }
    }
    if spec.chroot {
        validate_chroot(spec)?;
    }
    for tmpfs in &spec.tmpfs {
        if !tmpfs.target.is_absolute() || tmpfs.target.components().any(|c| c.as_os_str() == "..") {
            return Err(RuntimeError::InvalidSpec(format!(
                "tmpfs target {} must be an absolute path without '..'",
                tmpfs.target.display()
            )));
        }
    }
    for file in &spec.memory_files {
        if !file.target.is_absolute()
            || file.target.components().any(|c| c.as_os_str() == "..")
            || file.target.parent().is_none()
        {
            return Err(RuntimeError::InvalidSpec(format!(
                "file target {} must be an absolute path without '..'",
                file.target.display()
            )));
        }
    }
    Ok(())
}

/// A chroot run has a root dir and nothing that needs a mount or a
/// namespace.
fn validate_chroot(spec: &RunSpec) -> Result<(), RuntimeError> {
    let needs = if spec.root_dir.is_none() {
        Some("a root directory")
    } else if !spec.mounts.is_empty() || !spec.memory_files.is_empty() {
        Some("no bind mounts (they need a mount namespace)")
    } else if !spec.tmpfs.is_empty() {
        Some("no tmpfs mounts (they need a mount namespace)")
    } else if spec.network != Network::Host {
        Some("the host's network (another needs a network namespace)")
    } else if matches!(spec.streams, Streams::Terminal { .. }) {
        Some("no terminal")
    } else {
        None
    };
    match needs {
        Some(what) => Err(RuntimeError::InvalidSpec(format!(
            "chroot isolation (no namespaces) needs {what}"
        ))),
        None => Ok(()),
    }
}

/// Runs `spec` and waits for it. See the crate documentation.
pub fn run(spec: RunSpec, helper: &HelperCommand) -> Result<ExitStatus, RuntimeError> {
    validate(&spec)?;
    if crate::interrupt::runs_canceled() {
        return Err(RuntimeError::Canceled);
    }
    // Not root here: the helper makes a user namespace. Root of a user
    // namespace (a rootless build): no new one, but no host privileges.
    // chroot isolation makes no namespace at all.
    let new_userns = !rustix::process::geteuid().is_root() && !spec.chroot;
    let rootless = new_userns || crate::userns::in_user_namespace() || spec.chroot;
    // A private network from the caller's pool when one is free, else a
    // new namespace with slirp4netns started on it. Not with a user
    // namespace of the run's own: it could not join one made in another.
    let pool = spec
        .networks
        .clone()
        .filter(|_| spec.network == Network::Private && !new_userns);
    let pooled = pool.as_deref().and_then(crate::NetworkPool::take);
    let slirp4netns = match spec.network {
        Network::Private if pooled.is_none() => Some(crate::network::slirp4netns_program()?),
        _ => None,
    };
    // A privileged run may have reconfigured its network: not kept.
    let keep_network = !spec.privileged;
    // Removed (whatever is still in them killed) when dropped, on every path.
    let (cgroups, request) = crate::cgroup::setup(&spec.limits, rootless, spec.privileged)?;
    let state = StateDir::new(&spec.state_dir, &spec.upper, tmpfs_scratch());
    if std::fs::read_dir(&state.root).is_ok_and(|mut d| d.next().is_some()) {
        // Someone else's: leave it alone.
        if state.scratch != state.root {
            remove_tree(&state.scratch);
        }
        return Err(RuntimeError::StateDir {
            path: state.root.clone(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "not empty"),
        });
    }
    let created = state.create(&spec);
    // The overlay's lower dirs, top first, for the stubs' removal.
    let stub_lowers: Vec<PathBuf> = (spec.lower_dirs.iter().rev())
        .chain([&state.mount_points])
        .cloned()
        .collect();
    let result = created.and_then(|()| {
        let mut config = spec_config(&spec, &state, rootless)?;
        config.new_userns = new_userns;
        config.cgroups = cgroups
            .as_ref()
            .map(|c| c.join_files().to_vec())
            .unwrap_or_default();
        config.start_in_cgroup = cgroups
            .as_ref()
            .and_then(|c| c.start_in())
            .map(Path::to_path_buf);
        config.nodev = request.devices.nodev();
        let slirp_log = state.scratch.join("slirp4netns.log");
        let mut network = match (slirp4netns, pooled, &pool) {
            (_, Some(pooled), Some(pool)) => {
                Some(NetworkSetup::joined(pooled, pool.clone(), slirp_log))
            }
            (Some(program), _, _) => Some(NetworkSetup::new(program, slirp_log)),
            _ => None,
        };
        let launched = launch(config, spec, helper, cgroups.as_ref(), &mut network);
        let ready = network.and_then(NetworkSetup::into_pooled);
        if let (Ok(_), true, Some(pool), Some(ready)) = (&launched, keep_network, &pool, ready) {
            pool.give_back(ready);
        }
        launched
    });
    drop(cgroups);
    let (result, stubs, upper_kept) = match result {
        Ok((status, stubs, upper)) => (status, stubs, upper),
        Err(err) => (Err(err), Vec::new(), None),
    };
    if let Some(kept) = upper_kept {
        let kind = match kept.overlay {
            true => StubsIn::Upper {
                lowers: &stub_lowers,
            },
            false => StubsIn::RootDir,
        };
        remove_stubs(&kept.dir, &stubs, kind);
    }
    remove_tree(&state.root);
    if state.scratch != state.root {
        remove_tree(&state.scratch);
    }
    result
}

fn spec_config(
    spec: &RunSpec,
    state: &StateDir,
    rootless: bool,
) -> Result<ContainerConfig, RuntimeError> {
    // The kernel refuses overlayfs as an upper dir's filesystem with a
    // bare EINVAL; said here, naming the store.
    if spec.root_dir.is_none() && filesystem_is(&state.upper, OVERLAYFS_MAGIC) {
        return Err(RuntimeError::UpperOnOverlay {
            path: state.upper.clone(),
        });
    }
    let nofile = nofile_limit(spec.nofile, rootless);
    let mut remove_after_exit = vec![state.work.clone()];
    if spec.upper == UpperDir::Discard {
        remove_after_exit.push(state.upper.clone());
    }
    Ok(ContainerConfig {
        rootless,
        new_userns: false,
        rootfs: state.rootfs.clone(),
        overlay_options: match spec.root_dir {
            Some(_) => String::new(),
            None => state.overlay_options(
                &spec.lower_dirs,
                rootless,
                matches!(spec.upper, UpperDir::Keep(_)),
            )?,
        },
        etc_dir: state.etc.clone(),
        image: spec.image.clone(),
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        user: spec.user.clone(),
        hostname: spec.hostname.clone(),
        network: spec.network,
        mounts: spec
            .mounts
            .iter()
            .map(|m| {
                let mut m = m.clone();
                match &m.within {
                    // Only the directory: what is inside it is opened
                    // from it, when it is bound (a symlink there is not
                    // followed out of it, as canonicalize would).
                    Some(within) => {
                        if let (Ok(dir), Ok(rel)) =
                            (std::fs::canonicalize(within), m.source.strip_prefix(within))
                        {
                            m.source = dir.join(rel);
                            m.within = Some(dir);
                        }
                    }
                    None => m.source = std::fs::canonicalize(&m.source).unwrap_or(m.source),
                }
                m
            })
            .collect(),
        memory_files: spec.memory_files.clone(),
        memory_dir: state.memory.clone(),
        terminal: matches!(spec.streams, Streams::Terminal { .. }),
        forwards_signals: spec.forward_signals,
        console_fd: None,
        netns_fd: None,
        seccomp: spec.seccomp && !spec.privileged,
        nofile: rlimit_nofile(spec, nofile),
        rlimits: spec
            .rlimits
            .iter()
            .filter(|r| r.resource != RlimitResource::Nofile)
            .copied()
            .collect(),
        tmpfs: spec.tmpfs.clone(),
        shm_size: spec.shm_size,
        privileged: spec.privileged,
        // BuildKit's `security.insecure`: the nodes up to the host's first
        // free loop device and 7 more (from loop0 when it cannot ask).
        loop_devices: match spec.privileged && !rootless {
            true => crate::sys::first_free_loop_device().unwrap_or(0) + 8,
            false => 0,
        },
        remove_after_exit,
        cgroups: Vec::new(),
        start_in_cgroup: None,
        nodev: false,
        root_dir: spec.root_dir.clone(),
        chroot: spec.chroot,
    })
}

/// RLIMIT_NOFILE: an `nofile` rlimit of the spec, else the default
/// (`spec.nofile`, capped as [`nofile_limit`] says).
fn rlimit_nofile(spec: &RunSpec, default: (u64, u64)) -> (u64, u64) {
    spec.rlimits
        .iter()
        .rev()
        .find(|r| r.resource == RlimitResource::Nofile)
        .map_or(default, |r| (r.soft, r.hard))
}

/// RLIMIT_NOFILE for the container: what was asked, capped to the kernel's
/// `nr_open`, and to kiln's own hard limit when it cannot raise it (rootless,
/// or no CAP_SYS_RESOURCE, as in some sandboxes).
fn nofile_limit(requested: u64, rootless: bool) -> (u64, u64) {
    let mut limit = requested;
    if let Some(nr_open) = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        limit = limit.min(nr_open);
    }
    let can_raise = !rootless
        && caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_RESOURCE,
        )
        .unwrap_or(false);
    if !can_raise {
        // None: unlimited.
        if let Some(max) = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum {
            limit = limit.min(max);
        }
    }
    (limit, limit)
}

/// What a kept directory that stubs are removed from is.
#[derive(Clone, Copy, Debug)]
pub enum StubsIn<'a> {
    /// A root dir (the copying snapshotter's, chroot isolation's): its
    /// directories are all there is.
    RootDir,
    /// An overlay upper dir over `lowers` (top first, the mount-point
    /// layer last). A directory overlay copied up only because a stub
    /// was made in it stays in the upper dir once the stub is gone; it is
    /// dropped too when it is still as its lower has it, as BuildKit's
    /// differ leaves out a directory the same as below.
    Upper { lowers: &'a [PathBuf] },
}

/// Removes mount points the init had to create in a kept upper dir (or a
/// root dir), when they are still what it created (an empty file or
/// directory), as BuildKit's `MountStubsCleaner` does; their parents keep
/// their mtimes. `stubs` are relative to `dir`, parents before their
/// children.
pub fn remove_stubs(dir: &Path, stubs: &[PathBuf], kind: StubsIn<'_>) {
    let Ok(base) = rustix::fs::open(dir, DIR_OPEN, rustix::fs::Mode::empty()) else {
        return;
    };
    let mut removed = Vec::new();
    for rel in stubs.iter().rev() {
        if remove_entry(&base, rel) {
            removed.push(rel.as_path());
        }
    }
    let StubsIn::Upper { lowers } = kind else {
        return;
    };
    // Every directory a removed stub was made under (overlay copied up
    // each one on the way), deepest first.
    let mut parents: Vec<&Path> = removed
        .iter()
        .flat_map(|rel| rel.ancestors().skip(1))
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    parents.sort_by(|a, b| {
        let depth = |p: &Path| p.components().count();
        depth(b).cmp(&depth(a)).then_with(|| a.cmp(b))
    });
    parents.dedup();
    for rel in parents {
        if copied_up_unchanged(&base, rel, lowers) {
            remove_entry(&base, rel);
        }
    }
}

/// How directories are opened here: read-only, as directories.
const DIR_OPEN: rustix::fs::OFlags = rustix::fs::OFlags::RDONLY
    .union(rustix::fs::OFlags::DIRECTORY)
    .union(rustix::fs::OFlags::CLOEXEC);

/// Beneath the directory and through no symlink: what a run left there
/// (a directory replaced by a symlink to `/etc`) is not followed out of
/// it.
const NO_SYMLINKS: rustix::fs::ResolveFlags = rustix::fs::ResolveFlags::BENEATH
    .union(rustix::fs::ResolveFlags::NO_SYMLINKS)
    .union(rustix::fs::ResolveFlags::NO_MAGICLINKS);

/// Opens the directory `rel` beneath `base`, through no symlink.
fn open_beneath(base: &OwnedFd, rel: &Path) -> rustix::io::Result<OwnedFd> {
    let rel = match rel.as_os_str().is_empty() {
        true => Path::new("."),
        false => rel,
    };
    rustix::fs::openat2(base, rel, DIR_OPEN, rustix::fs::Mode::empty(), NO_SYMLINKS)
}

/// Removes `rel` beneath `base` when it is an empty file or an empty
/// directory, its directory keeping its mtime. Whether it was removed.
fn remove_entry(base: &OwnedFd, rel: &Path) -> bool {
    use rustix::fs::{AtFlags, FileType, Timespec, Timestamps, UTIME_OMIT};
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return false;
    };
    let Ok(dir) = open_beneath(base, parent) else {
        return false;
    };
    let Ok(parent_stat) = rustix::fs::fstat(&dir) else {
        return false;
    };
    let removed = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode).is_file() && st.st_size == 0 => {
            rustix::fs::unlinkat(&dir, name, AtFlags::empty()).is_ok()
        }
        Ok(st) if FileType::from_raw_mode(st.st_mode).is_dir() => {
            rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR).is_ok()
        }
        _ => false,
    };
    if removed {
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: parent_stat.st_mtime,
                tv_nsec: parent_stat.st_mtime_nsec as _,
            },
        };
        let _ = rustix::fs::futimens(&dir, &times);
    }
    removed
}

/// Whether the directory `rel` of an upper dir is an unchanged copy of
/// its lower one: not opaque, and mode, owner, mtime as the topmost of
/// `lowers` that has `rel` has them, neither with xattrs of its own
/// (anything but overlay's). A lower that has something else there (a
/// whiteout, a file, a symlink) or a non-directory on the way means no.
fn copied_up_unchanged(base: &OwnedFd, rel: &Path, lowers: &[PathBuf]) -> bool {
    let Ok(upper) = open_beneath(base, rel) else {
        return false;
    };
    let (Ok(up), Some(false)) = (rustix::fs::fstat(&upper), has_own_xattrs(&upper)) else {
        return false;
    };
    for lower in lowers {
        let Ok(lower) = rustix::fs::open(lower, DIR_OPEN, rustix::fs::Mode::empty()) else {
            return false;
        };
        let found = match open_beneath(&lower, rel) {
            Ok(found) => found,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(_) => return false,
        };
        let (Ok(low), Some(false)) = (rustix::fs::fstat(&found), has_own_xattrs(&found)) else {
            return false;
        };
        return (
            up.st_mode,
            up.st_uid,
            up.st_gid,
            up.st_mtime,
            up.st_mtime_nsec,
        ) == (
            low.st_mode,
            low.st_uid,
            low.st_gid,
            low.st_mtime,
            low.st_mtime_nsec,
        );
    }
    false
}

/// Whether `fd` has an xattr that is not overlay's bookkeeping (an
/// opaque mark counts: it is no copy). None when they cannot be listed.
fn has_own_xattrs(fd: &OwnedFd) -> Option<bool> {
    let mut names = vec![0u8; 4096];
    let len = match rustix::fs::flistxattr(fd, &mut names[..]) {
        Ok(len) => len,
        Err(rustix::io::Errno::OPNOTSUPP) => 0,
        Err(_) => return None,
    };
    let own = names[..len]
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .any(|name| {
            let overlay =
                name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.");
            !overlay || name.ends_with(b".opaque")
        });
    Some(own)
}

/// Where the init's mount-point stubs are removed after a run: a kept
/// upper dir (`overlay`), or a root dir.
struct KeptRoot {
    dir: PathBuf,
    overlay: bool,
}

/// The run's outcome, the stubs its init made, and where they are.
type LaunchResult = (
    Result<ExitStatus, RuntimeError>,
    Vec<PathBuf>,
    Option<KeptRoot>,
);

/// Starts the helper, sends it the configuration, watches the run to its
/// end, and turns what happened into the run's result.
fn launch(
    mut config: ContainerConfig,
    spec: RunSpec,
    helper: &HelperCommand,
    cgroups: Option<&RunCgroups>,
    network: &mut Option<NetworkSetup>,
) -> Result<LaunchResult, RuntimeError> {
    let join = network.as_ref().and_then(NetworkSetup::to_join);
    let Started {
        mut child,
        config_pipe,
        report,
        sync,
        mut terminal,
    } = start_helper(&mut config, spec.streams, helper, join)?;
    send_config(config_pipe, &config)?;

    let forwarder = if spec.forward_signals {
        let forwarded = crate::interrupt::forwarded_signals();
        Some(Interrupts::install_for(&forwarded).map_err(io_err("catch the signals to forward"))?)
    } else {
        None
    };
    let mut watch = Watch::new(report, sync, child.id() as libc::pid_t, cgroups);
    watch.network = network.take();
    watch.rootless = config.new_userns;
    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let loop_result = watch.run(deadline, forwarder.as_ref(), &mut terminal);
    *network = watch.network.take();
    if loop_result.is_err() {
        let _ = child.kill();
    }
    let helper_status = child.wait().map_err(io_err("wait for helper"));
    if let TerminalState::Relay(relay) = &mut terminal {
        relay.drain();
    }
    drop(terminal);
    drop(forwarder);
    // The stubs made are removed whatever the outcome: a failed setup may
    // have made some before it failed.
    let (status, stubs) = match (loop_result, helper_status) {
        (Ok(()), Ok(helper_status)) => {
            watch.outcome(&spec.image, spec.timeout, cgroups, helper_status)
        }
        (Err(err), _) | (Ok(()), Err(err)) => (Err(err), std::mem::take(&mut watch.stubs)),
    };
    let upper_kept = match (spec.root_dir, spec.upper) {
        (Some(dir), _) => Some(KeptRoot {
            dir,
            overlay: false,
        }),
        (None, UpperDir::Keep(dir)) => Some(KeptRoot { dir, overlay: true }),
        (None, UpperDir::Discard) => None,
    };
    Ok((status, stubs, upper_kept))
}

/// A helper just started, with kiln's ends of its pipes.
struct Started {
    child: std::process::Child,
    /// Where its configuration goes.
    config_pipe: OwnedFd,
    /// Where its reports come from.
    report: OwnedFd,
    /// Kiln's answer once the id maps are written.
    sync: OwnedFd,
    terminal: TerminalState,
}

/// Starts the helper with its stdio (or, with a terminal, a socket on
/// which the init sends back the pty master, which `config` is told of)
/// and exactly the descriptors it is to have.
fn start_helper(
    config: &mut ContainerConfig,
    streams: Streams,
    helper: &HelperCommand,
    join_netns: Option<BorrowedFd<'_>>,
) -> Result<Started, RuntimeError> {
    let (config_read, config_write) = pipe()?;
    let (report_read, report_write) = pipe()?;
    let (sync_read, sync_write) = pipe()?;
    // The helper's ends: the command owns them, and closes them (in kiln)
    // once the helper is started.
    let mut child_ends = vec![config_read, report_write, sync_read];
    if let Some(netns) = join_netns {
        // A copy for the helper; the pool's stays with kiln.
        let copy = netns
            .try_clone_to_owned()
            .map_err(io_err("copy the network namespace's descriptor"))?;
        config.netns_fd = Some(copy.as_raw_fd());
        child_ends.push(copy);
    }

    let mut command = Command::new(&helper.program);
    command.args(&helper.args);
    let mut terminal = TerminalState::None;
    match streams {
        Streams::Stdio {
            stdin,
            stdout,
            stderr,
        } => {
            command.stdin(stdin).stdout(stdout).stderr(stderr);
        }
        Streams::Terminal { forward_stdin } => {
            // The init opens the pty inside the container and sends its
            // master back on this socket.
            let (ours, theirs) = socketpair()?;
            config.console_fd = Some(theirs.as_raw_fd());
            child_ends.push(theirs);
            command.stdin(Stdio::null());
            terminal = TerminalState::Waiting {
                socket: ours,
                forward_stdin,
            };
        }
    }
    let fds_text: Vec<String> = child_ends
        .iter()
        .map(|fd| fd.as_raw_fd().to_string())
        .collect();
    command.env(FDS_ENV, fds_text.join(","));
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (close_range or fcntl, fcntl, prctl), on
    // descriptors it owns.
    unsafe {
        command.pre_exec(move || {
            // The helper gets exactly stdio and the descriptors named in
            // FDS_ENV, whatever kiln inherited or opened without O_CLOEXEC.
            crate::sys::cloexec_from(3)?;
            for fd in &child_ends {
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            // If kiln dies, the helper kills the container and dies
            // (crate::helper::CALLER_DIED_SIGNAL): the container's own
            // parent-death signal is gone once its command changes user.
            let _ = rustix::process::set_parent_process_death_signal(Some(
                crate::helper::CALLER_DIED_SIGNAL,
            ));
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|source| RuntimeError::SpawnHelper {
            program: helper.program.clone(),
            source,
        })?;
    // With it go the helper's ends of the pipes.
    drop(command);
    Ok(Started {
        child,
        config_pipe: config_write,
        report: report_read,
        sync: sync_write,
        terminal,
    })
}

/// Writes the configuration to the helper and closes the pipe. The helper
/// reads it all before anything else; a failure to write means it died,
/// which its exit status tells later.
fn send_config(pipe: OwnedFd, config: &ContainerConfig) -> Result<(), RuntimeError> {
    let config_bytes = serde_json::to_vec(config).map_err(|e| RuntimeError::Io {
        what: "encode configuration",
        source: e.into(),
    })?;
    let mut config_pipe = File::from(pipe);
    let _ = config_pipe.write_all(&config_bytes);
    Ok(())
}

/// The error the init's reported failure is.
fn failure_error(failure: Failure, image: &str) -> RuntimeError {
    match failure {
        Failure::UnknownUser { user, reason } => RuntimeError::UnknownUser {
            user,
            image: image.to_string(),
            reason,
        },
        Failure::Exec {
            program,
            reason,
            code,
        } => RuntimeError::Exec {
            program,
            reason,
            exit_code: code,
        },
        Failure::Setup { step, reason } => RuntimeError::Setup { step, reason },
    }
}

/// A failed run that hit a limit on its way: which one (kiln's kill at the
/// pids limit, else an OOM kill, else a refused fork).
fn limit_error(
    status: ExitStatus,
    cgroups: Option<&RunCgroups>,
    killed_at_pids_limit: bool,
) -> Option<RuntimeError> {
    let cgroups = cgroups?;
    if status.success() {
        return None;
    }
    let pids_error = |killed| {
        cgroups.request.pids.map(|limit| RuntimeError::PidsLimit {
            limit,
            status,
            killed,
        })
    };
    if killed_at_pids_limit {
        return pids_error(true);
    }
    let oom_kills = cgroups.oom_kills();
    if let (true, Some(limit)) = (oom_kills > 0, cgroups.request.memory) {
        return Some(RuntimeError::MemoryLimit {
            limit,
            oom_kills,
            status,
        });
    }
    if cgroups.pids_refused() > 0 {
        return pids_error(false);
    }
    None
}

/// A run's private network: one from the pool that the helper joins, or
/// slirp4netns's program and log (in the run's scratch dir) for the new
/// namespace the helper makes, and then the process and the namespace.
struct NetworkSetup {
    /// `None` for a pooled network (looked for if the helper cannot join
    /// it).
    program: Option<PathBuf>,
    log: PathBuf,
    /// The pool `netns` came from, while the helper is to join it instead
    /// of making a namespace.
    joins: Option<std::sync::Arc<crate::NetworkPool>>,
    slirp: Option<crate::network::Slirp>,
    /// The namespace, open (kept alive) once known.
    netns: Option<OwnedFd>,
}

impl NetworkSetup {
    fn new(program: PathBuf, log: PathBuf) -> NetworkSetup {
        NetworkSetup {
            program: Some(program),
            log,
            joins: None,
            slirp: None,
            netns: None,
        }
    }

    fn joined(
        pooled: crate::network::PooledNetwork,
        pool: std::sync::Arc<crate::NetworkPool>,
        log: PathBuf,
    ) -> NetworkSetup {
        NetworkSetup {
            program: None,
            log,
            joins: Some(pool),
            slirp: Some(pooled.slirp),
            netns: Some(pooled.netns),
        }
    }

    /// The helper could not join the pooled network: that one is let go
    /// (its slirp4netns stopped), the pool refuses the next runs at once,
    /// and the namespace the helper makes instead gets a slirp4netns of
    /// its own, as with no pool.
    fn join_refused(&mut self) {
        if let Some(pool) = self.joins.take() {
            pool.refuse();
        }
        self.slirp = None;
        self.netns = None;
    }

    /// The namespace the helper is to join, if any.
    fn to_join(&self) -> Option<BorrowedFd<'_>> {
        self.netns
            .as_ref()
            .filter(|_| self.joins.is_some())
            .map(|fd| fd.as_fd())
    }

    /// The namespace with its slirp4netns running, for the pool.
    fn into_pooled(self) -> Option<crate::network::PooledNetwork> {
        Some(crate::network::PooledNetwork {
            netns: self.netns?,
            slirp: self.slirp?,
        })
    }
}

/// Reads the helper's reports and reacts to them until the pipe closes.
struct Watch {
    /// The private network, when the run has one (stopped with the watch).
    network: Option<NetworkSetup>,
    /// The helper makes a user namespace (slirp4netns joins it).
    rootless: bool,
    report: File,
    sync: Option<File>,
    buffer: Vec<u8>,
    /// The container's init, once the helper reported it (as a pidfd:
    /// the helper reaps it, and its pid may be another process's then).
    init: Option<crate::sys::ChildOf>,
    /// The helper reported the init (`Started`).
    started: bool,
    helper_pid: libc::pid_t,
    failure: Option<Failure>,
    exit: Option<ExitStatus>,
    stubs: Vec<PathBuf>,
    timed_out: bool,
    /// Signals received before the container's init existed.
    pending_signals: Vec<libc::c_int>,
    /// The run's refused-fork counter, when it has a pids limit.
    pids: Option<(Counter, PidsWatch)>,
    next_pids_check: Instant,
    /// kiln killed the container because forks kept being refused.
    killed_at_pids_limit: bool,
    /// Runs were canceled ([`crate::interrupt::cancel_runs`]) and the
    /// container killed.
    canceled: bool,
    /// The helper was told to kill the container ([`Watch::kill_run`]
    /// before the init's pid was known): it does, by the pid it holds, and
    /// kiln does not take that pid when the helper reports it (the helper
    /// may have reaped it by then, and it may be another process's).
    helper_kills: bool,
}

impl Watch {
    /// Watches the helper `helper_pid` through its report pipe (and, with
    /// a pids limit, the run's refused-fork counter).
    fn new(
        report: OwnedFd,
        sync: OwnedFd,
        helper_pid: libc::pid_t,
        cgroups: Option<&RunCgroups>,
    ) -> Watch {
        Watch {
            network: None,
            rootless: false,
            report: File::from(report),
            sync: Some(File::from(sync)),
            buffer: Vec::new(),
            init: None,
            started: false,
            helper_pid,
            failure: None,
            exit: None,
            stubs: Vec::new(),
            timed_out: false,
            pending_signals: Vec::new(),
            pids: cgroups.and_then(|c| {
                let counter = c.plan.pids_refused.clone()?;
                let watch = PidsWatch::new(counter.read());
                Some((counter, watch))
            }),
            next_pids_check: Instant::now(),
            killed_at_pids_limit: false,
            canceled: false,
            helper_kills: false,
        }
    }

    /// What the run came to, once the helper is gone: the init's failure
    /// (`image` names the image a user was looked up in), the timeout, a
    /// limit the run hit, or the container's exit status with the mount
    /// points the init created.
    fn outcome(
        mut self,
        image: &str,
        timeout: Option<std::time::Duration>,
        cgroups: Option<&RunCgroups>,
        helper_status: std::process::ExitStatus,
    ) -> (Result<ExitStatus, RuntimeError>, Vec<PathBuf>) {
        let stubs = std::mem::take(&mut self.stubs);
        (self.verdict(image, timeout, cgroups, helper_status), stubs)
    }

    /// How the run ended, as the caller is told.
    fn verdict(
        self,
        image: &str,
        timeout: Option<std::time::Duration>,
        cgroups: Option<&RunCgroups>,
        helper_status: std::process::ExitStatus,
    ) -> Result<ExitStatus, RuntimeError> {
        if self.canceled {
            return Err(RuntimeError::Canceled);
        }
        if let Some(failure) = self.failure {
            return Err(failure_error(failure, image));
        }
        if self.timed_out {
            if let Some(timeout) = timeout {
                return Err(RuntimeError::Timeout(timeout));
            }
        }
        match self.exit {
            Some(status) => {
                if let Some(err) = limit_error(status, cgroups, self.killed_at_pids_limit) {
                    return Err(err);
                }
                Ok(status)
            }
            None => Err(RuntimeError::HelperDied(helper_status.to_string())),
        }
    }

    fn run(
        &mut self,
        deadline: Option<Instant>,
        signals: Option<&Interrupts>,
        terminal: &mut TerminalState,
    ) -> Result<(), RuntimeError> {
        loop {
            let mut wait = match deadline {
                Some(_) if self.timed_out => None,
                Some(at) => Some(at.saturating_duration_since(Instant::now())),
                None => None,
            };
            if self.pids.is_some() {
                let tick = self
                    .next_pids_check
                    .saturating_duration_since(Instant::now());
                wait = Some(wait.map_or(tick, |w| w.min(tick)));
            }
            let timeout = wait.map(|w| rustix::event::Timespec {
                tv_sec: w.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: i64::from(w.subsec_nanos()),
            });
            // Which descriptors are ready: the reports, the signal pipe, the
            // cancellation pipe (until it was seen), the terminal's (by
            // number, for `ready`).
            let relay_fds: Vec<RawFd>;
            let ready: Vec<bool>;
            let cancel = crate::interrupt::cancel_fd().filter(|_| !self.canceled);
            let n = {
                let mut fds = vec![PollFd::new(&self.report, PollFlags::IN)];
                if let Some(forwarder) = signals {
                    fds.push(PollFd::new(forwarder, PollFlags::IN));
                }
                if let Some(cancel) = &cancel {
                    fds.push(PollFd::from_borrowed_fd(*cancel, PollFlags::IN));
                }
                let relay = terminal.poll_fds();
                relay_fds = relay.iter().map(|fd| fd.as_raw_fd()).collect();
                fds.extend(
                    relay
                        .into_iter()
                        .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)),
                );
                let n = match rustix::event::poll(&mut fds, timeout.as_ref()) {
                    Ok(n) => n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(io_err("poll")(e.into())),
                };
                ready = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
                n
            };
            self.check_pids();
            if n == 0 {
                if deadline.is_some_and(|at| Instant::now() >= at) {
                    self.time_out();
                }
                continue;
            }
            if let Some(forwarder) = signals {
                if ready[1] {
                    for signal in forwarder.take() {
                        if signal == libc::SIGWINCH {
                            // The kernel tells the container's foreground
                            // process group when its terminal's size changes.
                            terminal.resize();
                        } else {
                            self.signal(signal);
                        }
                    }
                }
            }
            let mut offset = if signals.is_some() { 2 } else { 1 };
            if cancel.is_some() {
                if ready[offset] {
                    self.cancel();
                }
                offset += 1;
            }
            for (i, fd) in relay_fds.iter().enumerate() {
                if ready[offset + i] {
                    terminal.ready(*fd);
                }
            }
            if ready[0] && !self.read_reports()? {
                return Ok(());
            }
        }
    }

    /// Starts slirp4netns on the helper's new network namespace.
    fn start_network(&mut self) -> Result<(), RuntimeError> {
        let Some(network) = self.network.as_mut().filter(|n| n.joins.is_none()) else {
            return Err(RuntimeError::HelperDied(
                "the helper made a private network nobody asked for".into(),
            ));
        };
        // A pooled network the helper could not join: the run asked for
        // none of its own, so slirp4netns is looked for now.
        let program = match network.program.take() {
            Some(program) => program,
            None => crate::network::slirp4netns_program()?,
        };
        let slirp =
            crate::network::Slirp::start(&program, self.helper_pid, self.rootless, &network.log)?;
        network.slirp = Some(slirp);
        // Kept open, the namespace outlives the run for the pool (the
        // helper waits for the sync byte: it is still there). Without it,
        // the run goes on; the network is not kept.
        let path = format!("/proc/{}/ns/net", self.helper_pid);
        network.netns = File::open(path).ok().map(OwnedFd::from);
        Ok(())
    }

    /// Kills the container when its forks have kept failing at the pids
    /// limit (a fork bomb never ends by itself).
    fn check_pids(&mut self) {
        let now = Instant::now();
        let Some((counter, watch)) = &mut self.pids else {
            return;
        };
        if now < self.next_pids_check {
            return;
        }
        self.next_pids_check = now + PIDS_CHECK_INTERVAL;
        if watch.observe(counter.read(), now) && !self.killed_at_pids_limit {
            self.killed_at_pids_limit = true;
            self.kill_run();
        }
    }

    /// Kills the container: its PID 1 (the whole PID namespace goes with
    /// it) or, before kiln knows that pid, through the helper: its
    /// [`crate::helper::CALLER_DIED_SIGNAL`] makes it kill the init it may
    /// have started already (under chroot isolation, every process the
    /// init started too), then exit.
    fn kill_run(&mut self) {
        match &self.init {
            Some(init) => {
                let _ = init.signal(libc::SIGKILL);
            }
            // Reported, and gone already (or being killed by the helper).
            None if self.started => {}
            None => {
                self.helper_kills = true;
                kill(self.helper_pid, crate::helper::CALLER_DIED_SIGNAL.as_raw());
            }
        }
    }

    /// Runs were canceled: the container (or, before it exists, the
    /// helper) is killed; the loop goes on until the helper is gone.
    fn cancel(&mut self) {
        if !self.canceled {
            self.canceled = true;
            self.kill_run();
        }
    }

    fn time_out(&mut self) {
        if !self.timed_out {
            self.timed_out = true;
            self.kill_run();
        }
    }

    fn signal(&mut self, signal: libc::c_int) {
        match &self.init {
            Some(init) => {
                let _ = init.signal(signal);
            }
            // Delivered once the container exists.
            None => self.pending_signals.push(signal),
        }
    }

    /// Returns false at end of file.
    fn read_reports(&mut self) -> Result<bool, RuntimeError> {
        let mut chunk = [0u8; 4096];
        let n = match self.report.read(&mut chunk) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => return Ok(true),
            Err(err) => return Err(io_err("read helper report")(err)),
        };
        if n == 0 {
            return Ok(false);
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let report: Report = serde_json::from_slice(&line).map_err(|e| {
                RuntimeError::HelperDied(format!("unreadable report from the helper: {e}"))
            })?;
            self.handle(report)?;
        }
        Ok(true)
    }

    fn handle(&mut self, report: Report) -> Result<(), RuntimeError> {
        match report {
            Report::UsernsReady => {
                let result = idmap::write_id_maps(self.helper_pid);
                if let Err(err) = result {
                    // Closing the sync pipe without a byte stops the helper.
                    self.sync = None;
                    return Err(err);
                }
                if let Some(sync) = &mut self.sync {
                    let _ = sync.write_all(&[1]);
                }
            }
            Report::JoinRefused { reason } => {
                if let Some(network) = self.network.as_mut().filter(|n| n.joins.is_some()) {
                    tracing::debug!(
                        "joining a kept network namespace was refused ({reason}): \
                         this build's RUNs make their own"
                    );
                    network.join_refused();
                }
            }
            Report::NetnsReady => {
                if let Err(err) = self.start_network() {
                    self.sync = None;
                    return Err(err);
                }
                if let Some(sync) = &mut self.sync {
                    let _ = sync.write_all(&[1]);
                }
            }
            Report::Started { pid, cgroup } => {
                match cgroup {
                    Some(CgroupEntry::StartedIn) => {
                        tracing::debug!("the container's init started in its cgroup v2 directory")
                    }
                    Some(CgroupEntry::Joins { refused }) => tracing::debug!(
                        "starting the container's init in its cgroup v2 directory was refused \
                         ({refused}): it joins through cgroup.procs"
                    ),
                    None => {}
                }
                // When the helper is killing it, kiln keeps not knowing
                // it. Otherwise it is opened as a pidfd while it is still
                // the helper's child (not reaped, or its pid would be
                // another process's): gone already, it takes no signal.
                self.started = true;
                if !self.helper_kills {
                    self.init = crate::sys::ChildOf::open(pid, self.helper_pid);
                    if self.timed_out || self.canceled {
                        self.kill_run();
                    }
                    for signal in std::mem::take(&mut self.pending_signals) {
                        self.signal(signal);
                    }
                }
            }
            Report::StubCreated { path } => self.stubs.push(path),
            Report::Fallback { what } => warn_once(&what),
            Report::Failed(failure) => {
                self.failure.get_or_insert(failure);
            }
            Report::NetworkHeld => {
                if let Some(network) = &mut self.network {
                    // Not for another run: stopped with this one.
                    network.netns = None;
                }
            }
            Report::Exited(status) => self.exit = Some(status),
        }
        Ok(())
    }
}

/// Logs a fallback of the runtime as a warning, once per process and kind
/// (every RUN of a build meets the same).
fn warn_once(what: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !seen.iter().any(|s| s == what) {
        tracing::warn!("RUN sandbox weaker than usual: {what}");
        seen.push(what.to_string());
    }
}

/// Sends `signal` to `pid` (a process kiln started), ignoring failure: it
/// may have exited already.
fn kill(pid: libc::pid_t, signal: libc::c_int) {
    if let (Some(pid), Some(signal)) = (
        rustix::process::Pid::from_raw(pid),
        rustix::process::Signal::from_named_raw(signal),
    ) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

fn socketpair() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io_err("socketpair")(e.into()))
}

/// The terminal side of a run with `-t`.
enum TerminalState {
    None,
    /// Waiting for the init to send the pty master.
    Waiting {
        socket: OwnedFd,
        forward_stdin: bool,
    },
    Relay(TerminalRelay),
}

impl TerminalState {
    fn poll_fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            TerminalState::None => Vec::new(),
            TerminalState::Waiting { socket, .. } => vec![socket.as_fd()],
            TerminalState::Relay(relay) => relay.poll_fds(),
        }
    }

    fn resize(&self) {
        if let TerminalState::Relay(relay) = self {
            copy_window_size(&relay.master);
        }
    }

    fn ready(&mut self, fd: RawFd) {
        match self {
            TerminalState::None => {}
            TerminalState::Waiting {
                socket,
                forward_stdin,
            } => {
                *self = match crate::sys::recv_fd(&*socket) {
                    Ok(Some(master)) => {
                        copy_window_size(&master);
                        TerminalState::Relay(TerminalRelay::new(master, *forward_stdin))
                    }
                    // The init failed before sending it: its report says why.
                    _ => TerminalState::None,
                };
            }
            TerminalState::Relay(relay) => relay.ready(fd),
        }
    }
}

/// The container's terminal starts with the size of kiln's.
fn copy_window_size(master: impl AsFd) {
    if let Ok(size) = rustix::termios::tcgetwinsize(rustix::stdio::stdout()) {
        let _ = rustix::termios::tcsetwinsize(master, size);
    }
}

/// Copies the pty to kiln's stdout and, with `-i`, kiln's stdin to the pty.
struct TerminalRelay {
    master: OwnedFd,
    master_open: bool,
    forward_stdin: bool,
    saved_termios: Option<rustix::termios::Termios>,
}

impl TerminalRelay {
    fn new(master: OwnedFd, forward_stdin: bool) -> Self {
        use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
        let stdin = rustix::stdio::stdin();
        let mut saved_termios = None;
        if forward_stdin && rustix::termios::isatty(stdin) {
            if let Ok(termios) = tcgetattr(stdin) {
                let mut raw = termios.clone();
                raw.make_raw();
                let _ = tcsetattr(stdin, OptionalActions::Now, &raw);
                saved_termios = Some(termios);
            }
        }
        TerminalRelay {
            master,
            master_open: true,
            forward_stdin,
            saved_termios,
        }
    }

    fn poll_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = Vec::new();
        if self.master_open {
            fds.push(self.master.as_fd());
        }
        if self.forward_stdin {
            fds.push(rustix::stdio::stdin());
        }
        fds
    }

    fn ready(&mut self, fd: RawFd) {
        let mut buf = [0u8; 8192];
        let stdin = rustix::stdio::stdin();
        if fd == stdin.as_raw_fd() {
            match rustix::io::read(stdin, &mut buf) {
                Ok(n) if n > 0 => write_all(&self.master, &buf[..n]),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                _ => self.forward_stdin = false,
            }
        } else {
            match rustix::io::read(&self.master, &mut buf) {
                Ok(n) if n > 0 => write_all(rustix::stdio::stdout(), &buf[..n]),
                Err(rustix::io::Errno::INTR) => {}
                // EIO: every slave descriptor is closed (EAGAIN: drained).
                _ => self.master_open = false,
            }
        }
    }

    /// Copies what the container wrote just before it exited.
    fn drain(&mut self) {
        let _ = rustix::io::ioctl_fionbio(&self.master, true);
        let fd = self.master.as_raw_fd();
        while self.master_open {
            self.ready(fd);
        }
    }
}

impl Drop for TerminalRelay {
    fn drop(&mut self) {
        if let Some(termios) = &self.saved_termios {
            let _ = rustix::termios::tcsetattr(
                rustix::stdio::stdin(),
                rustix::termios::OptionalActions::Now,
                termios,
            );
        }
    }
}

fn write_all(fd: impl AsFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match rustix::io::write(&fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_put_top_layer_first_and_mount_points_last() {
        let state = StateDir::new(Path::new("/s"), &UpperDir::Discard, None);
        let lowers = vec![PathBuf::from("/l/base"), PathBuf::from("/l/top")];
        assert_eq!(
            state.overlay_options(&lowers, false, false).unwrap(),
            "lowerdir=/l/top:/l/base:/s/mountpoints,upperdir=/s/upper,workdir=/s/work,\
             index=off,redirect_dir=nofollow,metacopy=off"
        );
        let state = StateDir::new(Path::new("/s"), &UpperDir::Keep(PathBuf::from("/u")), None);
        assert_eq!(
            state.overlay_options(&[], true, true).unwrap(),
            "lowerdir=/s/mountpoints,upperdir=/u,workdir=/s/work,\
             index=off,redirect_dir=nofollow,metacopy=off,volatile,userxattr"
        );
        assert!(state
            .overlay_options(&[PathBuf::from("/a:b")], false, false)
            .is_err());
    }

    #[test]
    fn hosts_file_names_the_container() {
        let hosts = hosts_file("box", Network::None, &[]);
        assert!(hosts.starts_with("127.0.0.1\tlocalhost box\n"), "{hosts}");
    }

    #[test]
    fn spec_validation_rejects_relative_cwd_and_missing_volume() {
        let mut spec = RunSpec::new(vec![], PathBuf::from("/nonexistent"), vec!["true".into()]);
        spec.cwd = "relative".into();
        assert!(matches!(validate(&spec), Err(RuntimeError::InvalidSpec(_))));
        spec.cwd = "/ok".into();
        spec.mounts.push(crate::BindMount {
            source: PathBuf::from("/definitely/not/here"),
            target: PathBuf::from("/data"),
            read_only: false,
            within: None,
        });
        assert!(matches!(
            validate(&spec),
            Err(RuntimeError::VolumeSource { .. })
        ));
        let mut spec = RunSpec::new(vec![], PathBuf::from("/x"), vec![]);
        spec.hostname = "h".into();
        assert!(matches!(validate(&spec), Err(RuntimeError::InvalidSpec(_))));
    }
}
