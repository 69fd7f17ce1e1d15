//! The cgroups of one run: a pids limit, a memory limit and the device
//! restriction, on cgroup v1 (one directory per controller) or v2 (one
//! directory on the unified hierarchy, devices through a BPF program).
//!
//! The caller (kiln, before it starts the helper) creates the run's cgroups
//! below the cgroups kiln itself is in, named `kiln-<pid>-<n>`; the
//! container's init is started in the v2 one where the kernel allows
//! ([`Plan::start_in`]) and joins the others (see [`CgroupVersion::join_file`]) before it does anything
//! else, so the limits count exactly the container's processes (the helper
//! stays outside) and no device is reachable before exec. When
//! the run ends kiln kills whatever is left in them and removes them
//! ([`RunCgroups`] does it on drop, on every path); cgroups left by a kiln
//! that was itself killed are removed by the next run that finds them.
//!
//! The testable core is [`resolve`] (what a run gets on this machine) and
//! [`plan`] (which directories are made and which files get which values);
//! [`setup`] carries the plan out.
//!
//! # Defaults
//!
//! - pids: [`DEFAULT_PIDS_LIMIT`] (4096). A fork bomb stops there instead
//!   of at the host's `pid_max`; a build's heaviest legitimate use (a
//!   parallel compile, a JVM's threads, which count too) stays far below.
//!   Podman's default is 2048; Docker and BuildKit set none.
//! - memory: [`default_memory_limit`], 3/4 of the machine's RAM, no swap on
//!   top. Docker and BuildKit set none, and then a runaway RUN drives the
//!   whole host into its global OOM killer, which may pick any process.
//!   With the limit the kernel kills inside the container, kiln says so,
//!   and a quarter of the machine stays for everything else; a build that
//!   truly needs more than 3/4 of the machine raises it with `--memory`.
//!
//! The limits are per run: the parallel RUN steps of a build each get their
//! own.
//!
//! Where cgroups cannot be used (rootless without a delegated subtree, no
//! cgroup filesystem), the defaults are left out and a limit asked for
//! explicitly fails the run. Devices then fall back to `nodev` mounts
//! ([`DeviceRestriction::NodevOnly`]).
//!
//! On cgroup v2 the limits need the pids and memory controllers enabled in
//! kiln's own cgroup's `cgroup.subtree_control`, which the kernel refuses
//! while that cgroup holds processes (kiln itself) unless it is the root:
//! kiln does not move itself into a leaf to get round that, so on a v2
//! host the default limits apply only where that works, and the device
//! program (which needs no controller) applies everywhere.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::devices::{device_program, DEFAULT_ALLOWED};
use crate::error::RuntimeError;
use crate::spec::{Limit, Limits};

/// pids limit of a run unless the caller says otherwise (see the module
/// documentation for why this number).
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

/// The smallest memory limit accepted (Docker's minimum): below it the
/// container's own setup does not fit.
pub const MIN_MEMORY_LIMIT: u64 = 6 * 1024 * 1024;

/// Names the device restriction to use instead of the best available one:
/// `cgroup-v1`, `bpf`, `nodev` or `none` (no restriction: for tests that
/// show a probe does detect an open device). Read by [`setup`] and
/// [`capabilities`].
pub const DEVICE_RESTRICTION_ENV: &str = "KILN_DEVICE_RESTRICTION";

/// A container that keeps hitting its pids limit this long (forks refused
/// at every check) is killed: a fork bomb never ends by itself.
pub const PIDS_KILL_AFTER: Duration = Duration::from_secs(2);

/// How often a run's pids counter is checked.
pub const PIDS_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The memory limit of a run unless the caller says otherwise: 3/4 of
/// `MemTotal` (see the module documentation). `None` when /proc/meminfo
/// cannot be read.
pub fn default_memory_limit() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_total(&meminfo).map(|total| total / 4 * 3)
}

/// `MemTotal` in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// How device nodes are kept from reaching the host's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceRestriction {
    /// cgroup v1 devices controller: deny all, allow Docker's list.
    CgroupV1,
    /// A cgroup v2 device program (BPF) with Docker's list.
    Bpf,
    /// No device cgroup: the root and /dev are mounted `nodev` (the
    /// standard nodes are bind-mounted from the host), so a node made with
    /// mknod or unpacked from an image cannot be opened.
    NodevOnly,
    /// None at all ([`DEVICE_RESTRICTION_ENV`]`=none`).
    Unrestricted,
}

impl DeviceRestriction {
    fn from_env_value(value: &str) -> Option<Self> {
        match value {
            "cgroup-v1" => Some(DeviceRestriction::CgroupV1),
            "bpf" => Some(DeviceRestriction::Bpf),
            "nodev" => Some(DeviceRestriction::NodevOnly),
            "none" => Some(DeviceRestriction::Unrestricted),
            _ => None,
        }
    }

    /// One line for `kiln info`.
    pub fn describe(&self) -> &'static str {
        match self {
            DeviceRestriction::CgroupV1 => {
                "cgroup v1 devices controller: deny all, allow Docker's default list"
            }
            DeviceRestriction::Bpf => "cgroup v2 BPF device program with Docker's default list",
            DeviceRestriction::NodevOnly => {
                "nodev only: root and /dev mounted nodev, standard nodes bound from the host"
            }
            DeviceRestriction::Unrestricted => "none (KILN_DEVICE_RESTRICTION=none)",
        }
    }

    /// Whether the container's root, volumes and /dev are mounted `nodev`.
    pub fn nodev(&self) -> bool {
        *self == DeviceRestriction::NodevOnly
    }
}

/// The cgroup version kiln uses for limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CgroupVersion {
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v2")]
    V2,
}

impl CgroupVersion {
    /// The file of a cgroup on a hierarchy of this version that the
    /// container's init writes `0` into to join it.
    ///
    /// On v1 that is `tasks`, which moves the calling thread only: the init
    /// is single-threaded then (a fork's child, it joins first; the join
    /// refuses a process with other threads), so its whole process moves.
    /// The kernel (6.x; since the single-thread migration optimization)
    /// moves the current thread without taking the global threadgroup lock,
    /// whose writer waits an RCU grace period whenever no other writer took
    /// it in the last one; `cgroup.procs` takes that lock, and a RUN then
    /// waited up to a few tens of milliseconds to start (measured in
    /// `testdata/bench/README.md`). Older kernels take it for both files.
    /// On v2 `cgroup.threads` works only inside a threaded subtree, so
    /// `cgroup.procs` it is, written only where the kernel refuses to start
    /// the init in the directory ([`Plan::start_in`]).
    pub fn join_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "tasks",
            CgroupVersion::V2 => "cgroup.procs",
        }
    }
}

/// v1 controllers kiln uses.
const V1_CONTROLLERS: [&str; 3] = ["pids", "memory", "devices"];

/// Where this process's cgroups are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// v1 controller (pids, memory, devices) → the directory of kiln's own
    /// cgroup in that controller's hierarchy.
    pub v1: BTreeMap<String, PathBuf>,
    /// kiln's own cgroup on the unified (v2) hierarchy, when one is mounted
    /// (alone, or beside v1 as on a hybrid system).
    pub unified: Option<PathBuf>,
    /// Its `cgroup.controllers`: what its children can be given.
    pub unified_controllers: Vec<String>,
    /// Its `cgroup.subtree_control`: what its children have now.
    pub unified_subtree: Vec<String>,
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` is a space).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// kiln's directory in a hierarchy mounted at `mount_point` whose mount
/// shows the cgroup `mount_root`, for a process in `cgroup`.
fn own_dir(mount_point: &str, mount_root: &str, cgroup: &str) -> Option<PathBuf> {
    let rel = if mount_root == "/" {
        cgroup
    } else {
        let rest = cgroup.strip_prefix(mount_root)?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        rest
    };
    let rel = rel.trim_start_matches('/');
    let mut dir = PathBuf::from(mount_point);
    if !rel.is_empty() {
        dir.push(rel);
    }
    Some(dir)
}

impl Layout {
    /// The layout from the text of /proc/self/mountinfo and /proc/self/cgroup.
    pub fn parse(mountinfo: &str, proc_cgroup: &str) -> Layout {
        // hierarchy path per v1 controller, and the v2 one ("" key).
        let mut paths: BTreeMap<String, String> = BTreeMap::new();
        for line in proc_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                paths.insert(String::new(), path.to_string());
            } else {
                for c in controllers.split(',') {
                    paths.insert(c.to_string(), path.to_string());
                }
            }
        }
        let mut layout = Layout::default();
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            if sep < 5 || fields.len() < sep + 4 {
                continue;
            }
            let (root, mount_point) =
                (unescape_mountinfo(fields[3]), unescape_mountinfo(fields[4]));
            let (fstype, super_options) = (fields[sep + 1], fields[sep + 3]);
            match fstype {
                "cgroup" => {
                    for option in super_options.split(',') {
                        if !V1_CONTROLLERS.contains(&option) || layout.v1.contains_key(option) {
                            continue;
                        }
                        if let Some(dir) = paths
                            .get(option)
                            .and_then(|path| own_dir(&mount_point, &root, path))
                        {
                            layout.v1.insert(option.to_string(), dir);
                        }
                    }
                }
                "cgroup2" if layout.unified.is_none() => {
                    layout.unified = paths
                        .get("")
                        .and_then(|path| own_dir(&mount_point, &root, path));
                }
                _ => {}
            }
        }
        layout
    }

    /// This process's layout, with the unified hierarchy's controllers.
    pub fn probe() -> Layout {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut layout = Layout::parse(&mountinfo, &proc_cgroup);
        if let Some(dir) = &layout.unified {
            let words = |name: &str| -> Vec<String> {
                std::fs::read_to_string(dir.join(name))
                    .map(|s| s.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default()
            };
            layout.unified_controllers = words("cgroup.controllers");
            layout.unified_subtree = words("cgroup.subtree_control");
        }
        layout
    }

    /// The version limits use: v1 when a v1 controller kiln uses is
    /// mounted, else v2 when the unified hierarchy is.
    pub fn version(&self) -> Option<CgroupVersion> {
        if !self.v1.is_empty() {
            Some(CgroupVersion::V1)
        } else if self.unified.is_some() {
            Some(CgroupVersion::V2)
        } else {
            None
        }
    }

    /// Where a limit controller lives (its directory, on a hierarchy of which
    /// version), or why it cannot be used.
    fn controller(&self, name: &str) -> Result<(PathBuf, CgroupVersion), String> {
        match self.version() {
            Some(CgroupVersion::V1) => self
                .v1
                .get(name)
                .map(|dir| (dir.clone(), CgroupVersion::V1))
                .ok_or_else(|| format!("the cgroup v1 {name} controller is not mounted")),
            Some(CgroupVersion::V2) => {
                let dir = self.unified.clone().unwrap_or_default();
                if self.unified_controllers.iter().any(|c| c == name) {
                    Ok((dir, CgroupVersion::V2))
                } else {
                    Err(format!(
                        "the {name} controller is not delegated to {} (cgroup.controllers)",
                        dir.display()
                    ))
                }
            }
            None => Err("no cgroup filesystem is mounted".to_string()),
        }
    }
}

/// What one run gets on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    /// pids limit, if one is set.
    pub pids: Option<u64>,
    /// Memory limit in bytes, if one is set.
    pub memory: Option<u64>,
    pub devices: DeviceRestriction,
    /// Why a default limit was left out, when one was.
    pub notes: Vec<String>,
}

/// Resolves `limits` against `layout`: a default limit whose controller is
/// missing is left out (with a note), an explicit one is an error naming
/// the flag and why. `forced` is [`DEVICE_RESTRICTION_ENV`]'s value.
pub fn resolve(
    layout: &Layout,
    limits: &Limits,
    rootless: bool,
    forced: Option<DeviceRestriction>,
    default_memory: Option<u64>,
) -> Result<Request, String> {
    let mut notes = Vec::new();
    let mut one = |limit: Limit, default: Option<u64>, controller: &str, flag: &str| {
        let value = match limit {
            Limit::Unlimited => return Ok(None),
            Limit::Default => match default {
                Some(value) => value,
                None => return Ok(None),
            },
            Limit::Max(value) => value,
        };
        match layout.controller(controller) {
            Ok(_) => Ok(Some(value)),
            Err(why) if limit.is_explicit() => Err(format!(
                "{flag} needs the {controller} cgroup controller, which kiln cannot use here: {why}"
            )),
            Err(why) => {
                notes.push(format!("no default {controller} limit: {why}"));
                Ok(None)
            }
        }
    };
    let pids = one(
        limits.pids,
        Some(DEFAULT_PIDS_LIMIT),
        "pids",
        "--pids-limit",
    )?;
    let memory = one(limits.memory, default_memory, "memory", "--memory")?;
    let devices = match forced {
        Some(DeviceRestriction::CgroupV1) if !layout.v1.contains_key("devices") => {
            return Err("the cgroup v1 devices controller is not mounted".to_string())
        }
        Some(DeviceRestriction::Bpf) if layout.unified.is_none() => {
            return Err("no cgroup2 hierarchy is mounted for a device program".to_string())
        }
        Some(forced) => forced,
        // Mounts made in a user namespace are nodev already, and mknod
        // needs CAP_MKNOD in the initial one; a device program or the v1
        // controller cannot be set up without privileges.
        None if rootless => DeviceRestriction::NodevOnly,
        None if layout.v1.contains_key("devices") => DeviceRestriction::CgroupV1,
        None if layout.unified.is_some() => DeviceRestriction::Bpf,
        None => DeviceRestriction::NodevOnly,
    };
    Ok(Request {
        pids,
        memory,
        devices,
        notes,
    })
}

/// One step of setting a run's cgroups up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Mkdir(PathBuf),
    /// Writes `value` to a control file; an `optional` one may be missing
    /// (memsw without swap accounting).
    Write {
        path: PathBuf,
        value: String,
        optional: bool,
    },
    /// Loads the device program for [`DEFAULT_ALLOWED`] and attaches it here.
    AttachDeviceProgram(PathBuf),
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Mkdir(path) => write!(f, "mkdir {}", path.display()),
            Op::Write {
                path,
                value,
                optional,
            } => write!(
                f,
                "write {} {value}{}",
                path.display(),
                if *optional { " (optional)" } else { "" }
            ),
            Op::AttachDeviceProgram(path) => write!(f, "attach device program {}", path.display()),
        }
    }
}

/// Where a counter of a run lives and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// A flat keyed file (`pids.events`, `memory.oom_control`, `memory.events`).
    pub file: PathBuf,
    /// The key whose number counts the events (`max`, `oom_kill`).
    pub key: &'static str,
}

impl Counter {
    /// The counter's value; 0 when it cannot be read.
    pub fn read(&self) -> u64 {
        std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|text| keyed_value(&text, self.key))
            .unwrap_or(0)
    }
}

/// The number after `key` in a flat keyed file (`key value` lines).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(key))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// What [`setup`] does for a run, and what it leaves to watch and remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// Directories made, removed when the run ends.
    pub dirs: Vec<PathBuf>,
    /// The files the container's init writes `0` into to join the run's
    /// cgroups ([`CgroupVersion::join_file`]).
    pub join_files: Vec<PathBuf>,
    /// The run's directory on the unified hierarchy, if it has one: the
    /// init is started in it where the kernel allows
    /// ([`crate::sys::fork_into_cgroup`]) and then skips its join file,
    /// whose write waits for an RCU grace period.
    pub start_in: Option<PathBuf>,
    /// Forks the pids limit refused.
    pub pids_refused: Option<Counter>,
    /// Processes the OOM killer killed at the memory limit.
    pub oom_kills: Option<Counter>,
}

/// The cgroups for `request`, named `name`, below kiln's own (`layout`).
pub fn plan(layout: &Layout, name: &str, request: &Request) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let dir_in = |plan: &mut Plan, parent: PathBuf, hierarchy: CgroupVersion| -> PathBuf {
        let dir = parent.join(name);
        if !plan.dirs.contains(&dir) {
            plan.ops.push(Op::Mkdir(dir.clone()));
            plan.dirs.push(dir.clone());
            plan.join_files.push(dir.join(hierarchy.join_file()));
            if hierarchy == CgroupVersion::V2 {
                plan.start_in = Some(dir.clone());
            }
        }
        dir
    };
    let write = |path: PathBuf, value: String| Op::Write {
        path,
        value,
        optional: false,
    };
    let version = layout.version();
    if version == Some(CgroupVersion::V2) && (request.pids.is_some() || request.memory.is_some()) {
        // Children get a controller only once their parent's subtree has it.
        let (parent, _) = layout
            .controller("pids")
            .or_else(|_| layout.controller("memory"))?;
        let missing: Vec<String> = [("pids", request.pids), ("memory", request.memory)]
            .iter()
            .filter(|(c, value)| value.is_some() && !layout.unified_subtree.iter().any(|s| s == c))
            .map(|(c, _)| format!("+{c}"))
            .collect();
        if !missing.is_empty() {
            plan.ops.push(write(
                parent.join("cgroup.subtree_control"),
                missing.join(" "),
            ));
        }
    }
    if let Some(max) = request.pids {
        let (parent, hierarchy) = layout.controller("pids")?;
        let dir = dir_in(&mut plan, parent, hierarchy);
        plan.ops.push(write(dir.join("pids.max"), max.to_string()));
        plan.pids_refused = Some(Counter {
            file: dir.join("pids.events"),
            key: "max",
        });
    }
    if let Some(bytes) = request.memory {
        let (parent, hierarchy) = layout.controller("memory")?;
        let dir = dir_in(&mut plan, parent, hierarchy);
        // No swap on top of the limit: a runaway step is stopped, not paged out.
        let (limit, swap, swap_value, events, key) = match version {
            Some(CgroupVersion::V1) => (
                "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                bytes.to_string(),
                "memory.oom_control",
                "oom_kill",
            ),
            _ => (
                "memory.max",
                "memory.swap.max",
                "0".to_string(),
                "memory.events",
                "oom_kill",
            ),
        };
        plan.ops.push(write(dir.join(limit), bytes.to_string()));
        plan.ops.push(Op::Write {
            path: dir.join(swap),
            value: swap_value,
            optional: true,
        });
        plan.oom_kills = Some(Counter {
            file: dir.join(events),
            key,
        });
    }
    match request.devices {
        DeviceRestriction::CgroupV1 => {
            let parent = layout
                .v1
                .get("devices")
                .cloned()
                .ok_or("the cgroup v1 devices controller is not mounted")?;
            let dir = dir_in(&mut plan, parent, CgroupVersion::V1);
            plan.ops
                .push(write(dir.join("devices.deny"), "a".to_string()));
            for rule in DEFAULT_ALLOWED {
                plan.ops
                    .push(write(dir.join("devices.allow"), rule.v1_line()));
            }
        }
        DeviceRestriction::Bpf => {
            let parent = layout
                .unified
                .clone()
                .ok_or("no cgroup2 hierarchy is mounted")?;
            let dir = dir_in(&mut plan, parent, CgroupVersion::V2);
            plan.ops.push(Op::AttachDeviceProgram(dir));
        }
        DeviceRestriction::NodevOnly | DeviceRestriction::Unrestricted => {}
    }
    Ok(plan)
}

fn apply(op: &Op) -> io::Result<()> {
    match op {
        Op::Mkdir(dir) => std::fs::create_dir(dir),
        Op::Write {
            path,
            value,
            optional,
        } => match std::fs::write(path, value) {
            Err(err) if *optional && err.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
        Op::AttachDeviceProgram(dir) => {
            crate::devices::attach_device_program(dir, &device_program(DEFAULT_ALLOWED))
        }
    }
}

/// A run's cgroups, while it lasts: removed (with anything still in them
/// killed) on drop.
#[derive(Debug)]
pub struct RunCgroups {
    pub plan: Plan,
    pub request: Request,
}

impl RunCgroups {
    /// The files the container's init writes `0` into to join the run's
    /// cgroups ([`CgroupVersion::join_file`]).
    pub fn join_files(&self) -> &[PathBuf] {
        &self.plan.join_files
    }

    /// The directory the init is started in, if the kernel allows
    /// ([`Plan::start_in`]).
    pub fn start_in(&self) -> Option<&Path> {
        self.plan.start_in.as_deref()
    }

    /// Forks the pids limit refused so far.
    pub fn pids_refused(&self) -> u64 {
        self.plan.pids_refused.as_ref().map_or(0, Counter::read)
    }

    /// Processes killed at the memory limit so far.
    pub fn oom_kills(&self) -> u64 {
        self.plan.oom_kills.as_ref().map_or(0, Counter::read)
    }
}

impl Drop for RunCgroups {
    fn drop(&mut self) {
        for dir in self.plan.dirs.iter().rev() {
            if let Err(err) = remove_cgroup(dir, Duration::from_secs(5)) {
                tracing::warn!("removing cgroup {}: {err}", dir.display());
            }
        }
    }
}

/// Kills every process in the cgroup `dir` and removes it, retrying while
/// the kernel still counts exiting tasks (EBUSY) until `patience` runs out.
pub fn remove_cgroup(dir: &Path, patience: Duration) -> io::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        // cgroup v2 (5.14+) kills the whole subtree at once.
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs
                .lines()
                .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
                .filter_map(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Removes empty `kiln-<pid>-<n>` cgroups in `parent` whose kiln process is
/// gone (a kiln killed before it could remove its own).
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("kiln-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Only an empty one: its container died with its kiln (parent-death
        // signals); anything still running belongs to someone this process
        // cannot see (a kiln in another PID namespace) and is left alone.
        let empty = std::fs::read_to_string(entry.path().join("cgroup.procs"))
            .is_ok_and(|procs| procs.trim().is_empty());
        if empty && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// A new name for a run's cgroups: `kiln-<pid>-<n>`.
fn new_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "kiln-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The device restriction [`DEVICE_RESTRICTION_ENV`] names, if it is set.
fn forced_restriction() -> Result<Option<DeviceRestriction>, String> {
    match std::env::var(DEVICE_RESTRICTION_ENV) {
        Ok(value) if value.is_empty() || value == "auto" => Ok(None),
        Ok(value) => DeviceRestriction::from_env_value(&value).map(Some).ok_or_else(|| {
            format!("{DEVICE_RESTRICTION_ENV}={value:?}: expected auto, cgroup-v1, bpf, nodev or none")
        }),
        Err(_) => Ok(None),
    }
}

/// Checks what the caller asked for, whatever the machine.
pub fn validate(limits: &Limits) -> Result<(), String> {
    if limits.pids == Limit::Max(0) {
        return Err("a pids limit of 0 processes leaves no room for the command".to_string());
    }
    if let Limit::Max(bytes) = limits.memory {
        if bytes < MIN_MEMORY_LIMIT {
            return Err(format!(
                "a memory limit of {} is below the minimum of {}",
                human_bytes(bytes),
                human_bytes(MIN_MEMORY_LIMIT)
            ));
        }
    }
    Ok(())
}

/// The cgroups of one run, made. `None` when the run needs none (no limit
/// applies and devices are restricted through nodev mounts). A default
/// limit or device cgroup that cannot be set up is left out (logged, and
/// devices fall back to nodev); a limit asked for explicitly, or a device
/// restriction named by [`DEVICE_RESTRICTION_ENV`], fails the run.
pub fn setup(
    limits: &Limits,
    rootless: bool,
    privileged: bool,
) -> Result<(Option<RunCgroups>, Request), RuntimeError> {
    validate(limits).map_err(RuntimeError::InvalidSpec)?;
    let forced = forced_restriction().map_err(RuntimeError::Cgroup)?;
    let layout = Layout::probe();
    let mut request = resolve(&layout, limits, rootless, forced, default_memory_limit())
        .map_err(RuntimeError::Cgroup)?;
    // BuildKit's `security.insecure` allows every device (block and
    // character, rwm): no device cgroup of the run's own, so it has what
    // kiln has. Rootless, the user namespace's nodev mounts stay.
    let unrestricted = privileged && !rootless;
    if unrestricted {
        request.devices = DeviceRestriction::Unrestricted;
    }
    for note in &request.notes {
        tracing::debug!("{note}");
    }
    match create(&layout, &request) {
        Ok(cgroups) => Ok((cgroups, request)),
        Err(why)
            if limits.pids.is_explicit() || limits.memory.is_explicit() || forced.is_some() =>
        {
            let asked: Vec<String> = [(limits.pids, "--pids-limit"), (limits.memory, "--memory")]
                .iter()
                .filter(|(limit, _)| limit.is_explicit())
                .map(|(_, flag)| flag.to_string())
                .chain(forced.map(|_| DEVICE_RESTRICTION_ENV.to_string()))
                .collect();
            Err(RuntimeError::Cgroup(format!(
                "{} asked for, but kiln cannot set up its cgroups here{}: {why}",
                asked.join(" and "),
                if rootless {
                    " (rootless kiln needs a cgroup subtree delegated to its user)"
                } else {
                    ""
                }
            )))
        }
        Err(why) => {
            let mut request = request;
            request.notes.push(format!("no default limits: {why}"));
            // The limits may be what failed (v2 controllers that cannot be
            // enabled): keep the device cgroup if it can be had alone.
            if request.pids.is_some() || request.memory.is_some() {
                let devices_only = Request {
                    pids: None,
                    memory: None,
                    ..request.clone()
                };
                if let Ok(cgroups) = create(&layout, &devices_only) {
                    tracing::debug!("running without default limits: {why}");
                    return Ok((cgroups, devices_only));
                }
            }
            // Rootless without a delegated subtree gets here on every run.
            if rootless {
                tracing::debug!("running without cgroups: {why}");
            } else if unrestricted {
                tracing::warn!("running without cgroup limits: {why}");
            } else {
                tracing::warn!("running without cgroup limits (devices: nodev mounts): {why}");
            }
            request.pids = None;
            request.memory = None;
            request.devices = match unrestricted {
                true => DeviceRestriction::Unrestricted,
                false => DeviceRestriction::NodevOnly,
            };
            Ok((None, request))
        }
    }
}

fn create(layout: &Layout, request: &Request) -> Result<Option<RunCgroups>, String> {
    let plan = plan(layout, &new_name(), request)?;
    if plan.dirs.is_empty() {
        return Ok(None);
    }
    for dir in &plan.dirs {
        if let Some(parent) = dir.parent() {
            sweep_stale(parent);
        }
    }
    // From here on, dropping it removes what was made.
    let cgroups = RunCgroups {
        plan: Plan {
            dirs: Vec::new(),
            ..plan.clone()
        },
        request: request.clone(),
    };
    let mut cgroups = cgroups;
    for op in &plan.ops {
        apply(op).map_err(|err| {
            let hint = match op {
                Op::Write { path, .. }
                    if path.ends_with("cgroup.subtree_control")
                        && err.raw_os_error() == Some(libc::EBUSY) =>
                {
                    " (cgroup v2 gives no controller to the children of a cgroup that holds \
                     processes, and kiln's own cgroup holds kiln)"
                }
                _ => "",
            };
            format!("{op}: {err}{hint}")
        })?;
        if let Op::Mkdir(dir) = op {
            cgroups.plan.dirs.push(dir.clone());
        }
    }
    Ok(Some(cgroups))
}

/// Watches a run's refused forks: a container whose forks keep being
/// refused for [`PIDS_KILL_AFTER`] is killed.
#[derive(Debug)]
pub struct PidsWatch {
    last: u64,
    refusing_since: Option<Instant>,
}

impl PidsWatch {
    pub fn new(initial: u64) -> Self {
        PidsWatch {
            last: initial,
            refusing_since: None,
        }
    }

    /// Takes the refused-fork counter at `now`; true when the container
    /// should be killed.
    pub fn observe(&mut self, refused: u64, now: Instant) -> bool {
        if refused > self.last {
            self.last = refused;
            let since = *self.refusing_since.get_or_insert(now);
            now.duration_since(since) >= PIDS_KILL_AFTER
        } else {
            self.refusing_since = None;
            false
        }
    }
}

/// `bytes` as Docker prints sizes: `512MiB`, `2GiB`, `1.5GiB`, `100B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{}", UNITS[unit])
}

/// A limit's line in [`Capabilities`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitReport {
    /// Whether a run can have this limit here.
    pub available: bool,
    /// What a run gets when nothing is asked for (none when unavailable).
    pub default: Option<u64>,
    /// Where it is enforced, or why it cannot be.
    pub detail: String,
}

/// What this machine allows a run, and what a run gets by default: the
/// report of `kiln info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// `v1` (also on a hybrid system), `v2`, or none.
    pub cgroup_version: Option<CgroupVersion>,
    pub cgroup_detail: String,
    pub device_restriction: DeviceRestriction,
    pub device_detail: String,
    pub pids_limit: LimitReport,
    pub memory_limit: LimitReport,
}

/// Probes this machine the way a run does: resolves the default limits
/// and actually creates (and removes) a run's cgroups, so what it reports
/// is what a run gets.
pub fn capabilities(rootless: bool) -> Capabilities {
    let layout = Layout::probe();
    let cgroup_detail = match (layout.version(), &layout.unified) {
        (Some(CgroupVersion::V1), Some(unified)) => format!(
            "v1 controllers ({}), hybrid: cgroup2 also at {}",
            layout.v1.keys().cloned().collect::<Vec<_>>().join(", "),
            unified.display()
        ),
        (Some(CgroupVersion::V1), None) => format!(
            "v1 controllers ({})",
            layout.v1.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        (Some(CgroupVersion::V2), Some(unified)) => format!(
            "v2 at {} (controllers: {})",
            unified.display(),
            if layout.unified_controllers.is_empty() {
                "none".to_string()
            } else {
                layout.unified_controllers.join(" ")
            }
        ),
        _ => "no cgroup filesystem".to_string(),
    };
    let (setup_result, failure) = match setup(&Limits::default(), rootless, false) {
        Ok((cgroups, request)) => {
            drop(cgroups);
            (Some(request), None)
        }
        Err(err) => (None, Some(err.to_string())),
    };
    let request = setup_result.unwrap_or(Request {
        pids: None,
        memory: None,
        devices: DeviceRestriction::NodevOnly,
        notes: failure.into_iter().collect(),
    });
    let note_for = |controller: &str| {
        request
            .notes
            .iter()
            .find(|n| n.contains(controller) || n.starts_with("no default limits"))
            .cloned()
            .unwrap_or_else(|| "not available".to_string())
    };
    let limit = |value: Option<u64>, controller: &str, show: &dyn Fn(u64) -> String| match value {
        Some(v) => LimitReport {
            available: true,
            default: Some(v),
            detail: format!(
                "cgroup {} {controller} controller; default {}",
                match layout.version() {
                    Some(CgroupVersion::V2) => "v2",
                    _ => "v1",
                },
                show(v)
            ),
        },
        None => LimitReport {
            available: false,
            default: None,
            detail: note_for(controller),
        },
    };
    let pids_limit = limit(request.pids, "pids", &|v| format!("{v} processes"));
    let memory_limit = limit(request.memory, "memory", &|v| {
        format!("{} (3/4 of RAM), no swap", human_bytes(v))
    });
    let mut device_detail = request.devices.describe().to_string();
    if let Ok(Some(_)) = forced_restriction() {
        device_detail.push_str(&format!(" (chosen by {DEVICE_RESTRICTION_ENV})"));
    }
    Capabilities {
        cgroup_version: layout.version(),
        cgroup_detail,
        device_restriction: request.devices,
        device_detail,
        pids_limit,
        memory_limit,
    }
}

#[cfg(test)]
mod tests;
