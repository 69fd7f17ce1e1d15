//! The cgroup core: layouts parsed from /proc text, what a run gets on a
//! machine, and the exact plans (`runtime/testdata/plans/cgroup_<case>.txt`,
//! `KILN_BLESS=1` rewrites them); and, as root, the device program on a real
//! cgroup2 directory.

use super::*;

/// This machine's kind: v1 controllers, an empty cgroup2 beside them, kiln
/// in a nested memory cgroup.
const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
5:devices:/
4:memory:/process_api/f8ce
1:cpu:/
0::/
";

/// A systemd v2 machine, kiln in a delegated user service.
const V2_MOUNTINFO: &str =
    "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate\n";
const V2_CGROUP: &str = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/kiln.scope\n";

fn hybrid() -> Layout {
    Layout::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP)
}

fn v2(controllers: &[&str], subtree: &[&str]) -> Layout {
    let mut layout = Layout::parse(V2_MOUNTINFO, V2_CGROUP);
    layout.unified_controllers = controllers.iter().map(|s| s.to_string()).collect();
    layout.unified_subtree = subtree.iter().map(|s| s.to_string()).collect();
    layout
}

fn check_golden(case: &str, plan: &Plan) {
    let mut text: Vec<String> = plan.ops.iter().map(Op::to_string).collect();
    if let Some(dir) = &plan.start_in {
        text.push(format!(
            "init started in {} where the kernel allows, else it joins as below",
            dir.display()
        ));
    }
    for file in &plan.join_files {
        text.push(format!("init joins {}", file.display()));
    }
    if let Some(c) = &plan.pids_refused {
        text.push(format!("refused forks: {} {}", c.file.display(), c.key));
    }
    if let Some(c) = &plan.oom_kills {
        text.push(format!("oom kills: {} {}", c.file.display(), c.key));
    }
    let actual = text.join("\n") + "\n";
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/plans")
        .join(format!("cgroup_{case}.txt"));
    kiln_testsupport::golden::check(&path, &actual);
}

#[test]
fn layouts_from_proc() {
    let layout = hybrid();
    assert_eq!(layout.version(), Some(CgroupVersion::V1));
    assert_eq!(layout.v1["pids"], PathBuf::from("/sys/fs/cgroup/pids"));
    assert_eq!(
        layout.v1["memory"],
        PathBuf::from("/sys/fs/cgroup/memory/process_api/f8ce")
    );
    assert_eq!(
        layout.v1["devices"],
        PathBuf::from("/sys/fs/cgroup/devices")
    );
    assert!(!layout.v1.contains_key("cpu"));
    assert_eq!(
        layout.unified,
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );

    let layout = v2(&[], &[]);
    assert_eq!(layout.version(), Some(CgroupVersion::V2));
    assert_eq!(
        layout.unified,
        Some(PathBuf::from(
            "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/kiln.scope"
        ))
    );

    // A bind mount of a sub-hierarchy (mount root /docker/x, as in a
    // container without a cgroup namespace): paths are taken relative to it;
    // a cgroup outside it has no directory here.
    let mountinfo = "50 40 0:36 /docker/x /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
                     51 40 0:32 /docker/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
    let layout = Layout::parse(mountinfo, "8:pids:/docker/x/sub\n4:memory:/other\n");
    assert_eq!(layout.v1["pids"], PathBuf::from("/sys/fs/cgroup/pids/sub"));
    assert!(!layout.v1.contains_key("memory"));
    assert_eq!(Layout::parse("", "").version(), None);
    assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
}

#[test]
fn defaults_apply_where_controllers_are_and_are_noted_where_not() {
    let limits = Limits::default();
    let request = resolve(&hybrid(), &limits, false, None, Some(3 << 30)).unwrap();
    assert_eq!(request.pids, Some(DEFAULT_PIDS_LIMIT));
    assert_eq!(request.memory, Some(3 << 30));
    assert_eq!(request.devices, DeviceRestriction::CgroupV1);
    assert!(request.notes.is_empty());

    // v2 with nothing delegated: no limits, a device program.
    let request = resolve(&v2(&[], &[]), &limits, false, None, Some(1 << 30)).unwrap();
    assert_eq!((request.pids, request.memory), (None, None));
    assert_eq!(request.devices, DeviceRestriction::Bpf);
    assert_eq!(request.notes.len(), 2, "{:?}", request.notes);
    assert!(request.notes[0].contains("pids controller is not delegated"));

    // Rootless: nodev, whatever the machine.
    let request = resolve(&hybrid(), &limits, true, None, None).unwrap();
    assert_eq!(request.devices, DeviceRestriction::NodevOnly);
    assert_eq!(request.memory, None);

    // Unlimited is no limit, without a note.
    let limits = Limits {
        pids: Limit::Unlimited,
        memory: Limit::Unlimited,
    };
    let request = resolve(&v2(&[], &[]), &limits, false, None, Some(1)).unwrap();
    assert_eq!((request.pids, request.memory), (None, None));
    assert!(request.notes.is_empty());
}

#[test]
fn an_explicit_limit_without_its_controller_is_an_error_naming_the_flag() {
    let limits = Limits {
        pids: Limit::Max(100),
        memory: Limit::Default,
    };
    let err = resolve(&v2(&["memory"], &[]), &limits, false, None, None).unwrap_err();
    assert!(
        err.starts_with("--pids-limit needs the pids cgroup controller"),
        "{err}"
    );
    let limits = Limits {
        pids: Limit::Default,
        memory: Limit::Max(1 << 30),
    };
    let err = resolve(&Layout::default(), &limits, true, None, None).unwrap_err();
    assert!(
        err.contains("--memory") && err.contains("no cgroup filesystem"),
        "{err}"
    );
    // A forced device restriction the machine lacks.
    let err = resolve(
        &v2(&[], &[]),
        &Limits::default(),
        false,
        Some(DeviceRestriction::CgroupV1),
        None,
    )
    .unwrap_err();
    assert!(err.contains("devices controller is not mounted"), "{err}");
}

#[test]
fn nonsense_limits_are_refused() {
    let pids0 = Limits {
        pids: Limit::Max(0),
        memory: Limit::Default,
    };
    assert!(validate(&pids0).is_err());
    let tiny = Limits {
        pids: Limit::Default,
        memory: Limit::Max(1024),
    };
    let err = validate(&tiny).unwrap_err();
    assert!(err.contains("1KiB") && err.contains("6MiB"), "{err}");
    assert!(validate(&Limits::default()).is_ok());
}

#[test]
fn plan_v1() {
    let request = Request {
        pids: Some(4096),
        memory: Some(512 << 20),
        devices: DeviceRestriction::CgroupV1,
        notes: vec![],
    };
    let plan = plan(&hybrid(), "kiln-7-0", &request).unwrap();
    assert_eq!(plan.dirs.len(), 3);
    check_golden("v1", &plan);
}

#[test]
fn plan_v2_enables_missing_controllers_and_attaches_the_device_program() {
    let request = Request {
        pids: Some(100),
        memory: Some(1 << 30),
        devices: DeviceRestriction::Bpf,
        notes: vec![],
    };
    let plan = plan(&v2(&["memory", "pids"], &["memory"]), "kiln-7-1", &request).unwrap();
    // One directory for everything.
    assert_eq!(plan.dirs.len(), 1);
    check_golden("v2", &plan);
}

/// The device program on the unified hierarchy beside a v1 limit: each
/// directory is joined through its own hierarchy's file.
#[test]
fn plan_hybrid_bpf_and_nodev() {
    let request = Request {
        pids: Some(100),
        memory: None,
        devices: DeviceRestriction::Bpf,
        notes: vec![],
    };
    let plan = plan(&hybrid(), "kiln-7-2", &request).unwrap();
    check_golden("hybrid_bpf", &plan);
    let request = Request {
        pids: None,
        devices: DeviceRestriction::NodevOnly,
        ..request
    };
    assert_eq!(plan_nothing(&request), Plan::default());
}

fn plan_nothing(request: &Request) -> Plan {
    plan(&hybrid(), "kiln-7-3", request).unwrap()
}

#[test]
fn a_fork_bomb_is_killed_after_forks_keep_failing() {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let mut watch = PidsWatch::new(0);
    assert!(!watch.observe(0, at(0)));
    // One refused fork, then calm: never killed.
    assert!(!watch.observe(1, at(250)));
    assert!(!watch.observe(1, at(500)));
    assert!(!watch.observe(1, at(5000)));
    // Refused at every check for two seconds.
    let mut refused = 1;
    let mut killed_at = None;
    for ms in (5250..9000).step_by(250) {
        refused += 50;
        if watch.observe(refused, at(ms)) {
            killed_at = Some(ms);
            break;
        }
    }
    assert_eq!(killed_at, Some(7250));
}

#[test]
fn counters_and_sizes() {
    assert_eq!(keyed_value("max 17\n", "max"), Some(17));
    assert_eq!(
        keyed_value("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
        Some(3)
    );
    assert_eq!(keyed_value("oom_kill_disable 0\n", "oom_kill"), None);
    assert_eq!(
        mem_total("MemTotal:       24683792 kB\nMemFree: 1 kB\n"),
        Some(24683792 * 1024)
    );
    assert_eq!(human_bytes(100), "100B");
    assert_eq!(human_bytes(64 << 20), "64MiB");
    assert_eq!(human_bytes(3 << 29), "1.5GiB");
    assert_eq!(human_bytes(6 * 1024 * 1024), "6MiB");
}

/// The device program on a real cgroup2 directory: a shell that joins it
/// can open /dev/null but not /dev/kmsg for writing (nothing is written);
/// the same shell outside it opens both, so the probe does detect an open
/// device.
#[test]
fn the_device_program_denies_kmsg_in_a_real_cgroup2() {
    kiln_testsupport::require_root!("loading a BPF program and making cgroups");
    let layout = Layout::probe();
    let Some(unified) = layout.unified.clone() else {
        eprintln!("skipped: no cgroup2 hierarchy is mounted");
        return;
    };
    let dir = unified.join(format!("kiln-test-{}-bpf", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let attached = crate::devices::attach_device_program(&dir, &device_program(DEFAULT_ALLOWED));
    let probe = |join: bool| {
        let procs = dir.join("cgroup.procs");
        let join = if join {
            format!("echo 0 > {} || exit 9; ", procs.display())
        } else {
            String::new()
        };
        let script = format!(
            "{join}(exec 3>/dev/null) && echo null-open; (exec 3>/dev/kmsg) && echo kmsg-open; true"
        );
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap()
    };
    let inside = probe(true);
    let outside = probe(false);
    let removed = remove_cgroup(&dir, Duration::from_secs(5));
    attached.unwrap();
    removed.unwrap();
    let inside_out = String::from_utf8_lossy(&inside.stdout);
    let outside_out = String::from_utf8_lossy(&outside.stdout);
    assert_eq!(inside.status.code(), Some(0), "{inside:?}");
    assert!(inside_out.contains("null-open"), "{inside:?}");
    assert!(!inside_out.contains("kmsg-open"), "{inside:?}");
    assert!(outside_out.contains("kmsg-open"), "{outside:?}");
}

/// A v1 join through `tasks` moves one thread, so it is refused in a
/// process with others (this test's, with a thread kept alive meanwhile)
/// before the file is opened; the whole process would not move.
#[test]
fn a_tasks_join_refuses_a_process_with_other_threads() {
    use crate::sys::{RealSyscalls, Syscalls};
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        let _ = wait.recv();
    });
    let result = RealSyscalls.join_cgroup(Path::new("/nonexistent/kiln-7-0/tasks"));
    drop(release);
    other.join().unwrap();
    let err = result.unwrap_err();
    assert!(
        err.to_string()
            .contains("moves one thread, and this process has"),
        "{err}"
    );
    // cgroup.procs moves the whole process: no such check (the missing
    // file is the error).
    let err = RealSyscalls
        .join_cgroup(Path::new("/nonexistent/kiln-7-0/cgroup.procs"))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
}
