//! The init sequence against the recording fake: each case's exact list of
//! kernel calls is kept in `runtime/testdata/plans/<case>.txt`
//! (`KILN_BLESS=1` rewrites them; review the diff).

use std::collections::HashMap;
use std::path::PathBuf;

use super::*;
use crate::spec::{BindMount, MemoryFile};
use crate::sys::RecordingSyscalls;

const DIR: u32 = libc::S_IFDIR | 0o755;
const FILE: u32 = libc::S_IFREG | 0o644;
const EXE: u32 = libc::S_IFREG | 0o755;

fn config() -> ContainerConfig {
    ContainerConfig {
        rootless: false,
        new_userns: false,
        rootfs: PathBuf::from("/state/rootfs"),
        overlay_options:
            "lowerdir=/l1:/state/mountpoints,upperdir=/state/upper,workdir=/state/work".into(),
        etc_dir: PathBuf::from("/state/etc"),
        image: "busybox".into(),
        argv: vec!["sh".into(), "-c".into(), "id".into()],
        env: vec!["FOO=bar".into()],
        cwd: "/work".into(),
        user: "app".into(),
        hostname: "box".into(),
        network: Network::None,
        mounts: vec![],
        memory_files: vec![],
        memory_dir: PathBuf::from("/state/memory"),
        terminal: false,
        forwards_signals: false,
        console_fd: None,
        netns_fd: None,
        seccomp: true,
        nofile: (1024, 4096),
        rlimits: vec![],
        tmpfs: vec![],
        shm_size: crate::DEFAULT_SHM_SIZE,
        privileged: false,
        loop_devices: 0,
        remove_after_exit: vec![],
        cgroups: vec![],
        start_in_cgroup: None,
        nodev: false,
        root_dir: None,
        chroot: false,
    }
}

fn fake() -> RecordingSyscalls {
    let mut sys = RecordingSyscalls::default();
    let modes: HashMap<PathBuf, u32> = [
        ("/state/rootfs/proc", DIR),
        ("/state/rootfs/sys", DIR),
        ("/state/rootfs/dev", DIR),
        ("/state/rootfs/etc/resolv.conf", FILE),
        ("/state/rootfs/etc/hostname", FILE),
        ("/state/rootfs/proc/kcore", FILE),
        ("/state/rootfs/proc/acpi", DIR),
        ("/state/rootfs/sys/firmware", DIR),
        ("/state/rootfs/proc/sys", DIR),
        ("/state/rootfs/proc/sysrq-trigger", FILE),
        ("/host/data", DIR),
        ("/host/file.txt", FILE),
        ("/state/rootfs/data", DIR),
        ("/state/rootfs/config.txt", FILE),
        ("/usr/bin/sh", FILE),
        ("/bin/sh", EXE),
    ]
    .into_iter()
    .map(|(p, m)| (PathBuf::from(p), m))
    .collect();
    sys.modes = modes;
    sys.files.insert(
        PathBuf::from("/etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".into(),
    );
    sys.files.insert(
        PathBuf::from("/etc/group"),
        "root:x:0:\nwheel:x:10:app\n".into(),
    );
    sys
}

/// Runs the init on the fake; returns the failure and the transcript (the
/// calls, then the reports, then the failure).
fn transcript(sys: &mut RecordingSyscalls, cfg: &ContainerConfig) -> (Failure, String) {
    let mut reports = Vec::new();
    let failure = container_init(sys, cfg, &mut |r| reports.push(r));
    let mut text = sys.calls.join("\n");
    for report in &reports {
        text.push_str(&format!("\nreport {report:?}"));
    }
    text.push_str(&format!("\nresult {failure:?}\n"));
    (failure, text)
}

/// Each of `expected` is in `text`, after the one before it.
fn assert_in_order(text: &str, expected: &[&str]) {
    let mut at = 0;
    for call in expected {
        let found = text[at..]
            .find(call)
            .unwrap_or_else(|| panic!("{call:?} missing, or out of order:\n{text}"));
        at += found + call.len();
    }
}

fn check_golden(case: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/plans")
        .join(format!("{case}.txt"));
    kiln_testsupport::golden::check(&path, actual);
}

#[test]
fn root_with_volumes_and_no_network() {
    let mut cfg = config();
    cfg.mounts = vec![
        BindMount {
            source: "/host/data".into(),
            target: "/data".into(),
            read_only: false,
            within: None,
        },
        BindMount {
            source: "/host/file.txt".into(),
            target: "/config.txt".into(),
            read_only: true,
            within: None,
        },
    ];
    cfg.cgroups = vec![
        "/sys/fs/cgroup/pids/kiln-1-0/tasks".into(),
        "/sys/fs/cgroup/devices/kiln-1-0/tasks".into(),
    ];
    let mut sys = fake();
    let (failure, text) = transcript(&mut sys, &cfg);
    // The fake cannot exec: the sequence ran to the end.
    assert!(
        text.contains("\nexec /bin/sh [\"sh\", \"-c\", \"id\"]"),
        "{text}"
    );
    assert!(matches!(failure, Failure::Exec { code: 126, .. }));
    // /etc/hosts was missing from the image (and the mount-point layer).
    assert!(text.contains("report StubCreated { path: \"etc/hosts\" }"));
    check_golden("root_network_none", &text);
}

/// The copying snapshotter: the root dir is bound, not overlaid; every
/// mount point made in it is reported (each component, for removal) and
/// its parent keeps its mtime.
#[test]
fn a_root_dir_is_bound_and_its_stubs_keep_their_parents_mtimes() {
    let mut cfg = config();
    cfg.root_dir = Some(PathBuf::from("/store/builds/b/step/rootfs"));
    cfg.overlay_options = String::new();
    cfg.nodev = true;
    cfg.mounts = vec![BindMount {
        source: "/host/data".into(),
        target: "/var/cache/data".into(),
        read_only: false,
        within: None,
    }];
    let mut sys = fake();
    let (_, text) = transcript(&mut sys, &cfg);
    assert!(!text.contains("overlay"), "{text}");
    assert_in_order(
        &text,
        &[
            "mount /store/builds/b/step/rootfs /state/rootfs - BIND|REC",
            "mount - /state/rootfs - NOSUID|NODEV|NOEXEC|REMOUNT|BIND",
            "mtime /state/rootfs",
            "mkdir /state/rootfs/var 755",
            "set_mtime /state/rootfs 0.000000000",
            "mtime /state/rootfs/var",
            "mkdir /state/rootfs/var/cache 755",
            "set_mtime /state/rootfs/var 0.000000000",
            "mtime /state/rootfs/var/cache",
            "mkdir /state/rootfs/var/cache/data 755",
            "set_mtime /state/rootfs/var/cache 0.000000000",
            "pivot_root . .",
            "report StubCreated { path: \"var\" }",
            "report StubCreated { path: \"var/cache\" }",
            "report StubCreated { path: \"var/cache/data\" }",
        ],
    );
    check_golden("root_dir_copying_snapshotter", &text);
}

/// An image whose /etc/resolv.conf is a symlink to where nothing is yet
/// (systemd-resolved's `../run/systemd/resolve/stub-resolv.conf`): as
/// runc does, the symlink is followed inside the root and what it names
/// is made there, each entry reported for removal and its directory
/// keeping its mtime; the bind lands on the file made, not on the link.
#[test]
fn a_symlink_leading_where_nothing_is_yet_is_followed_inside_the_root() {
    let cfg = config();
    let mut sys = fake();
    sys.modes.insert(PathBuf::from("/state/rootfs/etc"), DIR);
    sys.modes
        .insert(PathBuf::from("/state/rootfs/etc/hosts"), FILE);
    sys.modes.insert(PathBuf::from("/state/rootfs/run"), DIR);
    sys.modes.remove(Path::new("/state/rootfs/etc/resolv.conf"));
    sys.links.insert(
        PathBuf::from("/state/rootfs/etc/resolv.conf"),
        PathBuf::from("../run/systemd/resolve/stub-resolv.conf"),
    );
    let (failure, text) = transcript(&mut sys, &cfg);
    assert!(matches!(failure, Failure::Exec { code: 126, .. }), "{text}");
    assert_in_order(
        &text,
        &[
            "read_link /state/rootfs/etc/resolv.conf",
            "read_link /state/rootfs/run/systemd",
            "mtime /state/rootfs/run",
            "mkdir /state/rootfs/run/systemd 755",
            "set_mtime /state/rootfs/run 0.000000000",
            "mkdir /state/rootfs/run/systemd/resolve 755",
            "create_file /state/rootfs/run/systemd/resolve/stub-resolv.conf 644",
            "bind /state/etc/resolv.conf on /state/rootfs/run/systemd/resolve/stub-resolv.conf -",
            "report StubCreated { path: \"run/systemd\" }",
            "report StubCreated { path: \"run/systemd/resolve\" }",
            "report StubCreated { path: \"run/systemd/resolve/stub-resolv.conf\" }",
        ],
    );
    // Nothing was made at the link's own path, nor beside it.
    assert!(!text.contains("create_file /state/rootfs/etc/"), "{text}");
}

/// An absolute symlink on the way is followed from the container's root
/// (a `/var/run` → `/run` of the image, the secret's directory not there
/// yet). Then the walk's own bound: the fake resolves no symlink, so
/// symlinks that lead to each other reach it, and the mount point is
/// refused, naming it, after 40. On a real kernel such a loop fails
/// sooner, in `openat2` (ELOOP: `runtime/tests/container.rs`); the bound
/// holds where the kernel's cannot, a symlink another container keeps
/// changing in a directory they share.
#[test]
fn absolute_symlinks_start_at_the_root_and_loops_are_refused() {
    let mut cfg = config();
    cfg.mounts = vec![BindMount {
        source: "/host/file.txt".into(),
        target: "/var/run/secrets/tok".into(),
        read_only: true,
        within: None,
    }];
    let mut sys = fake();
    sys.modes.insert(PathBuf::from("/state/rootfs/var"), DIR);
    sys.modes.insert(PathBuf::from("/state/rootfs/run"), DIR);
    sys.links.insert(
        PathBuf::from("/state/rootfs/var/run"),
        PathBuf::from("/run"),
    );
    let (_, text) = transcript(&mut sys, &cfg);
    assert_in_order(
        &text,
        &[
            "read_link /state/rootfs/var/run",
            "mkdir /state/rootfs/run/secrets 755",
            "create_file /state/rootfs/run/secrets/tok 644",
            "bind /host/file.txt on /state/rootfs/run/secrets/tok REC|RDONLY",
            "report StubCreated { path: \"run/secrets\" }",
            "report StubCreated { path: \"run/secrets/tok\" }",
        ],
    );
    assert!(!text.contains("mkdir /state/rootfs/var/run"), "{text}");

    let mut sys = fake();
    sys.modes.insert(PathBuf::from("/state/rootfs/var"), DIR);
    sys.links.insert(
        PathBuf::from("/state/rootfs/var/run"),
        PathBuf::from("/loop"),
    );
    sys.links.insert(
        PathBuf::from("/state/rootfs/loop"),
        PathBuf::from("var/run"),
    );
    let (failure, text) = transcript(&mut sys, &cfg);
    match failure {
        Failure::Setup { step, reason } => {
            assert_eq!(step, "mount point /var/run/secrets/tok", "{text}");
            assert!(reason.contains("more than 40 symlinks"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}\n{text}"),
    }
    // Nothing was made for the mount point (the /etc files come before).
    let (_, after_etc) = text
        .split_once("bind /state/etc/hostname")
        .expect("the /etc binds");
    assert!(
        !after_etc.contains("mkdir") && !after_etc.contains("create_file"),
        "{text}"
    );
}

/// chroot isolation: no namespace, nothing mounted, chroot into the root
/// dir, then the user, capabilities and seccomp as always.
#[test]
fn chroot_mounts_nothing_and_chroots_into_the_root_dir() {
    let mut cfg = config();
    cfg.root_dir = Some(PathBuf::from("/store/builds/b/step/rootfs"));
    cfg.overlay_options = String::new();
    cfg.chroot = true;
    cfg.network = Network::Host;
    let mut sys = fake();
    let (failure, text) = transcript(&mut sys, &cfg);
    for absent in [
        "unshare",
        "mount",
        "pivot_root",
        "sethostname",
        "loopback_up",
    ] {
        assert!(!text.contains(absent), "{absent}:\n{text}");
    }
    assert_in_order(
        &text,
        &[
            "chdir /store/builds/b/step/rootfs",
            "chroot .",
            "chdir /",
            "mkdir_all /work 755",
            "seccomp",
            "setresgid 1000",
            "setresuid 1000",
            "exec /bin/sh",
        ],
    );
    assert!(matches!(failure, Failure::Exec { code: 126, .. }));
    check_golden("chroot", &text);
}

/// The seccomp filter goes in while the init is still root with every
/// capability, and no_new_privs stays unset: a setuid program the
/// command runs gains its owner's rights, as under BuildKit and `docker
/// run`. Descriptors are marked close-on-exec before it.
#[test]
fn seccomp_goes_in_before_the_user_change_without_no_new_privs() {
    let (_, text) = transcript(&mut fake(), &config());
    assert!(!text.contains("no_new_privs"), "{text}");
    assert_in_order(
        &text,
        &[
            "capbset_drop",
            "cloexec fds 3..",
            "seccomp 2 filters",
            "setgroups",
            "setresgid 1000",
            "setresuid 1000",
            "set_caps",
            "exec /bin/sh",
        ],
    );
}

/// Without CAP_SYS_ADMIN (chroot isolation in a pod that lacks it) the
/// kernel refuses a filter unless no_new_privs is set: then, and only
/// then, it is set and the filter installed again.
#[test]
fn without_sys_admin_seccomp_needs_no_new_privs() {
    let mut sys = fake();
    sys.no_sys_admin = true;
    let (failure, text) = transcript(&mut sys, &config());
    assert_in_order(
        &text,
        &[
            "seccomp 2 filters",
            "no_new_privs",
            "seccomp 2 filters",
            "setresuid 1000",
            "exec /bin/sh",
        ],
    );
    assert!(matches!(failure, Failure::Exec { .. }), "{failure:?}");
    // Any other refusal stops the run, named.
    let mut sys = fake();
    sys.fail_on("seccomp", libc::EINVAL);
    let (failure, text) = transcript(&mut sys, &config());
    assert!(
        !text.contains("no_new_privs") && !text.contains("\nexec "),
        "{text}"
    );
    assert!(
        matches!(&failure, Failure::Setup { step, .. } if step == "seccomp"),
        "{failure:?}"
    );
}

#[test]
fn memory_files_go_to_a_private_tmpfs_then_onto_their_targets() {
    let mut cfg = config();
    cfg.memory_files = vec![MemoryFile {
        target: "/run/secrets/tok".into(),
        content: b"s3cret-value".to_vec(),
        mode: 0o440,
        uid: 1000,
        gid: 1000,
    }];
    let mut sys = fake();
    sys.modes
        .insert(PathBuf::from("/state/rootfs/run/secrets/tok"), FILE);
    let (_, text) = transcript(&mut sys, &cfg);
    let expected = [
        "mount tmpfs /state/memory tmpfs NOSUID|NODEV|NOEXEC mode=0700,size=131084",
        "write_file /state/memory/0 440 (12 bytes)",
        "chown /state/memory/0 1000:1000",
        "bind /state/memory/0 on /state/rootfs/run/secrets/tok RDONLY|NODEV",
        "umount /state/memory DETACH",
        "pivot_root . .",
    ];
    assert_in_order(&text, &expected);
    assert!(!text.contains("s3cret"), "{text}");
    assert!(!text.contains("run/secrets/tok\" }"), "{text}");
    // No memory files: nothing mounted on the memory dir.
    let (_, plain) = transcript(&mut fake(), &config());
    assert!(!plain.contains("/state/memory"), "{plain}");
}

#[test]
fn rootless_host_network_terminal_without_seccomp() {
    let mut cfg = config();
    cfg.rootless = true;
    cfg.network = Network::Host;
    cfg.terminal = true;
    cfg.console_fd = Some(7);
    cfg.seccomp = false;
    cfg.user = String::new();
    cfg.cwd = String::new();
    cfg.argv = vec!["/bin/true".into()];
    // Rootless without a delegated subtree: no cgroups, nodev mounts.
    cfg.nodev = true;
    let mut sys = fake();
    sys.modes
        .insert(PathBuf::from("/state/rootfs/etc/hosts"), FILE);
    sys.setgroups_denied = true;
    let (_, text) = transcript(&mut sys, &cfg);
    assert!(!text.contains("loopback_up"));
    assert!(!text.contains("mknod"));
    // Read before the root changes, and not called.
    assert_in_order(&text, &["read /proc/self/setgroups", "unshare NEWNS"]);
    assert!(!text.contains("\nsetgroups"), "{text}");
    assert!(!text.contains("seccomp"));
    assert!(!text.contains("StubCreated"));
    check_golden("rootless_network_host", &text);
}

/// Root without a device cgroup: the root, /dev and writable volumes are
/// nodev, and the standard nodes are bound from the host, not made.
#[test]
fn root_without_device_cgroup_mounts_nodev() {
    let mut cfg = config();
    cfg.nodev = true;
    cfg.mounts = vec![
        BindMount {
            source: "/host/data".into(),
            target: "/data".into(),
            read_only: false,
            within: None,
        },
        BindMount {
            source: "/host/file.txt".into(),
            target: "/config.txt".into(),
            read_only: true,
            within: None,
        },
    ];
    let mut sys = fake();
    let (_, text) = transcript(&mut sys, &cfg);
    assert!(!text.contains("mknod"), "{text}");
    assert!(
        text.contains("mount overlay /state/rootfs overlay NODEV lowerdir="),
        "{text}"
    );
    assert!(
        text.contains("mount tmpfs /state/rootfs/dev tmpfs NOSUID|NODEV|STRICTATIME"),
        "{text}"
    );
    assert!(
        text.contains("mount /dev/null /state/rootfs/dev/null - BIND"),
        "{text}"
    );
    check_golden("root_nodev", &text);
}

/// The step options of a build: tmpfs mounts (sized, mode 1777, mounted
/// with the binds shallowest first), /dev/shm's size, resource limits,
/// and the privileged mode of `security.insecure`: no bounding-set drops,
/// no capability narrowing, no masked paths.
#[test]
fn tmpfs_shm_rlimits_and_privileged() {
    let mut cfg = config();
    cfg.mounts = vec![BindMount {
        source: "/host/data".into(),
        target: "/scratch/data".into(),
        read_only: false,
        within: None,
    }];
    cfg.tmpfs = vec![
        crate::TmpfsMount {
            target: "/scratch".into(),
            size: Some(1024 * 1024),
            read_only: false,
        },
        crate::TmpfsMount {
            target: "/empty".into(),
            size: None,
            read_only: true,
        },
        // size=0 is no size (BuildKit adds the option only above 0); the
        // kernel would read size=0 as no limit.
        crate::TmpfsMount {
            target: "/zero".into(),
            size: Some(0),
            read_only: false,
        },
    ];
    cfg.shm_size = 128 * 1024 * 1024;
    cfg.rlimits = vec![crate::Rlimit::parse("nproc=100:200").unwrap()];
    cfg.seccomp = false;
    cfg.privileged = true;
    cfg.loop_devices = 2;
    let mut sys = fake();
    let (_, text) = transcript(&mut sys, &cfg);
    let expected = [
        "mount sysfs /state/rootfs/sys sysfs NOSUID|NODEV|NOEXEC\n",
        "mknod /state/rootfs/dev/kmsg c 1 11 666",
        "mknod /state/rootfs/dev/net/tun c 10 200 666",
        "mknod /state/rootfs/dev/loop-control c 10 237 666",
        "mknod /state/rootfs/dev/loop0 b 7 0 666",
        "mknod /state/rootfs/dev/loop1 b 7 1 666",
        "mount shm /state/rootfs/dev/shm tmpfs NOSUID|NODEV|NOEXEC mode=1777,size=131072k",
        "mount tmpfs /state/rootfs/scratch tmpfs NOSUID mode=1777,size=1024k",
        "mount tmpfs /state/rootfs/empty tmpfs RDONLY|NOSUID mode=1777",
        "mount tmpfs /state/rootfs/zero tmpfs NOSUID mode=1777",
        "bind /host/data on /state/rootfs/scratch/data REC",
        "rlimit NOFILE 1024 4096",
        "rlimit NPROC 100 200",
    ];
    assert_in_order(&text, &expected);
    for absent in ["capbset_drop", "set_caps", "seccomp", "rootfs/proc/kcore"] {
        assert!(!text.contains(absent), "{absent}:\n{text}");
    }
    check_golden("privileged_tmpfs_rlimits", &text);
    // Not privileged: the bounding set is narrowed and paths masked.
    let (_, plain) = transcript(&mut fake(), &config());
    for present in [
        "capbset_drop",
        "set_caps",
        "seccomp",
        "rootfs/proc/kcore",
        "mount sysfs /state/rootfs/sys sysfs RDONLY|NOSUID|NODEV|NOEXEC",
    ] {
        assert!(plain.contains(present), "{present}:\n{plain}");
    }
    assert!(!plain.contains("dev/kmsg"), "{plain}");
    // Privileged but rootless: no host devices, /sys stays read-only.
    let mut rootless = cfg.clone();
    rootless.rootless = true;
    let (_, text) = transcript(&mut fake(), &rootless);
    assert!(!text.contains("dev/kmsg"), "{text}");
    assert!(
        text.contains("mount sysfs /state/rootfs/sys sysfs RDONLY|NOSUID|NODEV|NOEXEC"),
        "{text}"
    );
}

/// The init joins the run's cgroups before anything else it does.
#[test]
fn cgroups_are_joined_first() {
    let mut cfg = config();
    cfg.cgroups = vec!["/cg/a/tasks".into(), "/cg/b/tasks".into()];
    let mut sys = fake();
    let (_, text) = transcript(&mut sys, &cfg);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        &lines[..6],
        [
            "umask 000",
            "reset_signals",
            "setsid",
            "pdeathsig 9",
            "join_cgroup /cg/a/tasks",
            "join_cgroup /cg/b/tasks"
        ]
    );
    // A cgroup that cannot be joined stops the run.
    let mut sys = fake();
    sys.fail_on("join_cgroup /cg/b", libc::EACCES);
    let (failure, _) = transcript(&mut sys, &cfg);
    assert!(
        matches!(&failure, Failure::Setup { step, .. } if step == "join cgroup /cg/b/tasks"),
        "{failure:?}"
    );
}

/// An init the helper started in the run's v2 directory
/// ([`ContainerConfig::started_in_cgroup`]) joins the v1 cgroups only; one
/// it could not start there joins that directory too.
#[test]
fn an_init_started_in_its_v2_directory_does_not_join_it() {
    let mut cfg = config();
    cfg.cgroups = vec![
        "/cg/pids/kiln-7-2/tasks".into(),
        "/cg/unified/kiln-7-2/cgroup.procs".into(),
    ];
    cfg.start_in_cgroup = Some("/cg/unified/kiln-7-2".into());
    let joins = |cfg: &ContainerConfig| -> Vec<String> {
        let (_, text) = transcript(&mut fake(), cfg);
        text.lines()
            .filter(|l| l.starts_with("join_cgroup"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        joins(&cfg),
        [
            "join_cgroup /cg/pids/kiln-7-2/tasks",
            "join_cgroup /cg/unified/kiln-7-2/cgroup.procs"
        ]
    );
    cfg.started_in_cgroup();
    assert_eq!(joins(&cfg), ["join_cgroup /cg/pids/kiln-7-2/tasks"]);
}

#[test]
fn command_not_in_path_fails_before_dropping_privileges() {
    let mut cfg = config();
    cfg.argv = vec!["nosuch".into()];
    let mut sys = fake();
    let (failure, text) = transcript(&mut sys, &cfg);
    assert_eq!(
        failure,
        Failure::Exec {
            program: "nosuch".into(),
            reason: "executable file not found in $PATH".into(),
            code: 127
        }
    );
    assert!(!text.contains("setresuid"), "{text}");
    assert!(!text.contains("exec "), "{text}");
}

#[test]
fn exec_errors_map_to_docker_codes() {
    for (errno, code, reason) in [
        (libc::ENOENT, 127, "no such file or directory"),
        (libc::EACCES, 126, "permission denied"),
        (libc::ENOEXEC, 126, "exec format error"),
    ] {
        let mut cfg = config();
        cfg.argv = vec!["/x".into()];
        let mut sys = fake();
        sys.fail_on("exec ", errno);
        let (failure, _) = transcript(&mut sys, &cfg);
        assert_eq!(
            failure,
            Failure::Exec {
                program: "/x".into(),
                reason: reason.into(),
                code
            }
        );
    }
}

#[test]
fn unknown_user_is_reported_with_its_name() {
    let mut cfg = config();
    cfg.user = "ghost".into();
    let mut sys = fake();
    let (failure, text) = transcript(&mut sys, &cfg);
    assert_eq!(
        failure,
        Failure::UnknownUser {
            user: "ghost".into(),
            reason: "no user \"ghost\" in /etc/passwd".into()
        }
    );
    // Resolved after pivot_root: from the image's files, not the host's.
    assert!(text.contains("pivot_root . ."));
    assert!(!text.contains("mkdir_all /work"));
}

#[test]
fn failing_mount_names_the_step_and_stops() {
    let cfg = config();
    let mut sys = fake();
    sys.fail_on("mount overlay", libc::EINVAL);
    let (failure, text) = transcript(&mut sys, &cfg);
    assert_eq!(
        failure,
        Failure::Setup {
            step: "mount overlay on /state/rootfs".into(),
            reason: io::Error::from_raw_os_error(libc::EINVAL).to_string(),
        }
    );
    assert!(text
        .trim_end()
        .lines()
        .rev()
        .nth(1)
        .unwrap()
        .starts_with("mount overlay"));
}

#[test]
fn env_gets_default_path_and_home() {
    let user = ResolvedUser {
        uid: 1,
        gid: 1,
        groups: vec![],
        home: "/home/x".into(),
    };
    assert_eq!(
        finalize_env(&["A=1".into()], &user),
        vec![
            "A=1".to_string(),
            format!("PATH={DEFAULT_PATH}"),
            "HOME=/home/x".to_string()
        ]
    );
    assert_eq!(
        finalize_env(&["PATH=/x".into(), "HOME=/h".into()], &user),
        vec!["PATH=/x".to_string(), "HOME=/h".to_string()]
    );
}

#[test]
fn long_overlay_options_go_through_the_new_mount_api() {
    let mut cfg = config();
    let lowers: Vec<String> = (0..100)
        .map(|i| format!("/store/snapshots/{i:064}"))
        .collect();
    cfg.overlay_options = format!(
        "lowerdir={},upperdir=/state/upper,workdir=/state/work",
        lowers.join(":")
    );
    assert!(cfg.overlay_options.len() > 4096);
    let mut sys = fake();
    let (_, text) = transcript(&mut sys, &cfg);
    assert!(
        text.contains("\nmount_overlay_fsconfig /state/rootfs (100 lower dirs)\n"),
        "{text}"
    );
    assert!(!text.contains("mount overlay"));
}

/// A private network (slirp4netns's tap0 in a namespace of the run's
/// own): `lo` comes up, and sysfs is the namespace's own, even rootless.
#[test]
fn private_network_brings_lo_up_and_mounts_its_own_sysfs() {
    let mut cfg = config();
    cfg.rootless = true;
    cfg.network = Network::Private;
    let (_, text) = transcript(&mut fake(), &cfg);
    assert!(text.contains("loopback_up"), "{text}");
    assert!(
        text.contains("mount sysfs /state/rootfs/sys sysfs"),
        "{text}"
    );
    assert!(!text.contains("bind /sys on /state/rootfs/sys"), "{text}");
}

/// Rootless where the outer /proc and /sys have masked paths (a pod):
/// the new mounts are refused, the outer ones are bound and the caller
/// told; as root the refusal is an error.
#[test]
fn rootless_binds_the_outer_proc_when_a_new_one_is_refused() {
    let mut cfg = config();
    cfg.rootless = true;
    cfg.network = Network::Private;
    let mut sys = fake();
    sys.fail_on("mount proc /state/rootfs/proc proc", libc::EPERM);
    let (_, text) = transcript(&mut sys, &cfg);
    assert_in_order(
        &text,
        &[
            "mount proc /state/rootfs/proc proc",
            "bind /proc on /state/rootfs/proc REC",
            "exec",
            "report Fallback",
        ],
    );
    let mut cfg = config();
    cfg.rootless = false;
    let mut sys = fake();
    sys.fail_on("mount proc /state/rootfs/proc proc", libc::EPERM);
    let (failure, text) = transcript(&mut sys, &cfg);
    assert!(!text.contains("bind /proc "), "{text}");
    assert!(
        matches!(&failure, Failure::Setup { step, .. } if step == "mount proc on /state/rootfs/proc"),
        "{failure:?}"
    );
}

/// A source [`BindMount::within`] a directory is opened from that
/// directory, inside it: found there, it is bound; not found there (a
/// symlink on the way that resolves inside it to nothing), the run fails
/// naming it, where a lookup of the host path would have followed the
/// symlink.
#[test]
fn a_source_within_a_directory_is_opened_inside_it() {
    let mut cfg = config();
    cfg.mounts = vec![BindMount {
        source: "/cache/dir/sub".into(),
        target: "/data".into(),
        read_only: false,
        within: Some("/cache/dir".into()),
    }];
    let mut sys = fake();
    sys.modes.insert(PathBuf::from("/cache/dir/sub"), DIR);
    sys.modes.insert(PathBuf::from("/state/rootfs/data"), DIR);
    let (failure, text) = transcript(&mut sys, &cfg);
    assert!(
        text.contains("bind /cache/dir/sub on /state/rootfs/data REC"),
        "{failure:?}\n{text}"
    );

    let mut sys = fake();
    sys.modes.insert(PathBuf::from("/state/rootfs/data"), DIR);
    let (failure, text) = transcript(&mut sys, &cfg);
    assert!(!text.contains("bind /cache/dir/sub"), "{text}");
    assert!(
        matches!(&failure, Failure::Setup { step, reason }
            if step == "open /cache/dir/sub" && reason.contains("/sub is not in /cache/dir")),
        "{failure:?}"
    );

    // A source outside the directory it is said to be in is refused.
    cfg.mounts[0].within = Some("/elsewhere".into());
    let (failure, _) = transcript(&mut fake(), &cfg);
    assert!(
        matches!(&failure, Failure::Setup { reason, .. } if reason == "not inside /elsewhere"),
        "{failure:?}"
    );
}

/// runc's rule (`checkProcMount`): nothing is mounted on /proc or below
/// it, refused before anything is made for the target; but the files
/// lxcfs emulates (`/proc/meminfo`) may be covered, on the fresh proc.
#[test]
fn mounts_on_proc_are_refused_but_on_the_files_runc_allows() {
    for target in ["/proc", "/proc/sys", "/proc/new/dir"] {
        let mut cfg = config();
        cfg.tmpfs = vec![crate::spec::TmpfsMount {
            target: target.into(),
            size: None,
            read_only: false,
        }];
        let (failure, text) = transcript(&mut fake(), &cfg);
        let Failure::Setup { step, reason } = &failure else {
            panic!("{text}");
        };
        assert_eq!(step, &format!("mount point {target}"), "{text}");
        assert!(reason.contains("cannot be mounted"), "{text}");
        let made = text.lines().any(|l| {
            l.starts_with("mkdir /state/rootfs/proc/")
                || l.starts_with(&format!("mount tmpfs /state/rootfs{target} "))
        });
        assert!(!made, "{text}");
        assert!(!text.contains("pivot_root"), "{text}");
    }
    let mut cfg = config();
    cfg.memory_files = vec![MemoryFile {
        target: "/proc/meminfo".into(),
        content: b"MemTotal: 1 kB\n".to_vec(),
        mode: 0o444,
        uid: 0,
        gid: 0,
    }];
    let mut sys = fake();
    sys.modes
        .insert(PathBuf::from("/state/rootfs/proc/meminfo"), FILE);
    let (_, text) = transcript(&mut sys, &cfg);
    assert_in_order(
        &text,
        &[
            "mount proc /state/rootfs/proc proc",
            "bind /state/memory/0 on /state/rootfs/proc/meminfo RDONLY|NODEV",
            "pivot_root . .",
        ],
    );
}

/// The same rule where a target resolved: by its path in the container,
/// whatever it was written as (an image's `/m -> /proc/meminfo` may be
/// covered; `/alias/acpi` through `/alias -> /proc` may not, whatever
/// filesystem a mask put there; nor may `/m -> /`, the root, which would
/// cover /proc, /sys and /dev).
#[test]
fn the_mount_point_rule_judges_where_a_target_resolved() {
    let guarded = Guarded {
        root: PathBuf::from("/run/x/rootfs"),
        proc: PathBuf::from("/run/x/rootfs/proc"),
    };
    let at = |shown: &str| guarded.container_path(Path::new(shown));
    assert_eq!(at("/run/x/rootfs"), Some(PathBuf::from("/")));
    assert_eq!(at("/run/x/rootfs/proc"), Some(PathBuf::from("/proc")));
    // Shown as such in a message, without a trailing slash.
    let proc = at("/run/x/rootfs/proc").expect("/proc");
    assert_eq!(proc.to_str(), Some("/proc"));
    assert_eq!(
        at("/run/x/rootfs/proc/meminfo"),
        Some(PathBuf::from("/proc/meminfo"))
    );
    assert_eq!(at("/run/x/rootfs/procfs"), None);
    assert_eq!(at("/run/x/rootfs/data"), None);
    assert_eq!(at("/run/x"), None);
    let refused = |written: &str, at: &str| refusal(Path::new(written), Path::new(at));
    assert_eq!(refused("/m", "/proc/meminfo"), None);
    assert_eq!(
        refused(
            "/proc/sys/kernel/ns_last_pid",
            "/proc/sys/kernel/ns_last_pid"
        ),
        None
    );
    assert_eq!(refused("/data", "/data"), None);
    assert_eq!(refused("/procfs", "/procfs"), None);
    let reason = refused("/alias/acpi", "/proc/acpi").expect("refused");
    assert!(
        reason.starts_with(
            "/alias/acpi (it resolves to /proc/acpi) cannot be mounted because it is inside /proc"
        ),
        "{reason}"
    );
    let reason = refused("/proc", "/proc").expect("refused");
    assert!(reason.starts_with("/proc cannot be mounted: "), "{reason}");
    assert!(refused("/proc/kcore", "/proc/kcore").is_some());
    let reason = refused("/m", "/").expect("refused");
    assert_eq!(
        reason,
        "/m (it resolves to /) cannot be mounted: it is the container's root"
    );
    assert!(refused("/", "/").is_some());
}
