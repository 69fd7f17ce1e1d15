//! Issue: no limits on RUN. A fork bomb or a big allocation in a RUN
//! reached the host; only a pids cgroup set by hand stopped the bomb.
//!
//! Every run now gets a pids and a memory limit (defaults 4096 processes
//! and 3/4 of RAM; `--pids-limit`, `--memory` on build and run). The tests
//! show a bomb and a hog end in an error naming the limit, each flag's
//! effect (a lower limit fails a workload a higher one passes, and the
//! host-side cgroup files hold the values while a container runs), that
//! every cgroup kiln makes is gone afterwards (also when the container, or
//! kiln itself, is killed), and what rootless kiln without a delegated
//! subtree does.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_runtime::cgroup::{Layout, DEFAULT_PIDS_LIMIT};

use crate::common::{kiln, kiln_command};
use crate::{require_root, text, Fixture};

fn combined(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The directories cgroups of kiln process `pid` would be made in: kiln's
/// own cgroup in each hierarchy (the test's, which kiln inherits).
fn cgroup_parents() -> Vec<PathBuf> {
    let layout = Layout::probe();
    let mut parents: Vec<PathBuf> = layout.v1.values().cloned().collect();
    parents.extend(layout.unified);
    parents
}

/// Every cgroup directory of kiln process `pid` (`kiln-<pid>-<n>`).
fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("kiln-{pid}-");
    let mut found = Vec::new();
    for parent in cgroup_parents() {
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    found.push(entry.path());
                }
            }
        }
    }
    found
}

/// Waits (up to 30 s) until kiln process `pid` has made its cgroups and
/// its container runs; returns the cgroup directories.
fn wait_for_cgroups(pid: u32, child: &mut Child) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dirs = cgroups_of(pid);
        let running = dirs.iter().any(|d| {
            std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
        });
        if running {
            return dirs;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("kiln exited ({status}) before its container ran");
        }
        assert!(
            Instant::now() < deadline,
            "no running container cgroup of kiln {pid}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kiln --root ROOT ARGS…` started in the background.
fn spawn_kiln(fixture: &Fixture, args: &[&str]) -> Child {
    kiln_command()
        .arg("--root")
        .arg(fixture.root())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln")
}

/// A control file of the one directory of `dirs` that has it.
fn control(dirs: &[PathBuf], file: &str) -> Option<String> {
    dirs.iter()
        .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
        .map(|s| s.trim().to_string())
}

fn build(fixture: &Fixture, name: &str, dockerfile: &str, flags: &[&str]) -> Output {
    let context = fixture.context(name, &[("Dockerfile", dockerfile)]);
    let mut args = vec!["build", "--no-cache"];
    args.extend_from_slice(flags);
    args.push(context.to_str().expect("utf-8 path"));
    kiln(&fixture.root(), &args)
}

/// Processes on the host now.
fn host_processes() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
        })
        .unwrap_or(0)
}

/// A classic fork bomb in a RUN step, with kiln's defaults: it stops at
/// the default pids limit, kiln kills it once forks keep failing, and the
/// step fails with a message naming the limit. The host's processes,
/// counted every 10 ms while the build ran, stayed within twice the
/// limit's worth more than before: a process that is exiting still shows
/// in /proc after its cgroup has let it go, and the bomb forks in its
/// place (peaks of 5,300 to 6,500 were seen here, against 4,096 in the
/// cgroup). Afterwards they are all gone, and so are the run's cgroups.
#[test]
fn a_fork_bomb_in_a_run_step_stops_at_the_default_pids_limit() {
    require_root!();
    let fixture = Fixture::new();
    let before = host_processes();
    let started = Instant::now();
    let context = fixture.context(
        "bomb",
        &[(
            "Dockerfile",
            "FROM busybox:latest\nRUN bomb() { bomb | bomb; }; bomb\n",
        )],
    );
    let child = spawn_kiln(
        &fixture,
        &["build", "--no-cache", context.to_str().expect("utf-8 path")],
    );
    let pid = child.id();
    let counting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let counter = {
        let counting = counting.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while counting.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(host_processes());
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let out = child.wait_with_output().expect("wait for kiln");
    counting.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = counter.join().expect("counter");
    let all = combined(&out);
    assert!(!out.status.success(), "{}", text(&out));
    // Usually forks keep failing until kiln kills it; on a loaded machine
    // the bomb's tree may also die out by itself first.
    assert!(
        all.contains(&format!(
            "hit its pids limit of {DEFAULT_PIDS_LIMIT} processes (--pids-limit)"
        )),
        "{}",
        text(&out)
    );
    assert!(all.contains("line 2: RUN"), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(120));
    // Host unaffected: bounded while it ran, and the processes are gone
    // after (other tests run beside this one, hence the slack), and so are
    // its cgroups.
    let limit = usize::try_from(DEFAULT_PIDS_LIMIT).expect("limit");
    assert!(
        peak < before + 2 * limit + 200,
        "{before} processes before, {peak} at the most while the bomb ran"
    );
    let after = host_processes();
    assert!(
        after < before + 200,
        "{before} processes before, {after} after"
    );
    assert!(
        cgroups_of(pid).is_empty(),
        "the build left {:?}",
        cgroups_of(pid)
    );
}

/// A memory hog in a RUN step is OOM-killed at `--memory`, and the step's
/// error says so, naming the limit.
#[test]
fn a_memory_hog_in_a_run_step_is_oom_killed_at_the_memory_limit() {
    require_root!();
    let fixture = Fixture::new();
    let out = build(
        &fixture,
        "hog",
        "FROM busybox:latest\nRUN tail /dev/zero\n",
        &["--memory", "64m"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        combined(&out).contains("OOM-killed at its memory limit of 64MiB (--memory)"),
        "{}",
        text(&out)
    );
}

/// A 50 MB buffer: killed under `--memory 32m`, fine under 256m; the same
/// from `kiln run` (exit code 137, as Docker).
#[test]
fn memory_flag_on_build_and_run() {
    require_root!();
    let fixture = Fixture::new();
    let work = "head -c 52428800 /dev/zero | tail -n 1 > /dev/null";
    let dockerfile = format!("FROM busybox:latest\nRUN {work}\n");
    let out = build(&fixture, "mem-low", &dockerfile, &["--memory", "32m"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        combined(&out).contains("memory limit of 32MiB"),
        "{}",
        text(&out)
    );
    let out = build(&fixture, "mem-high", &dockerfile, &["--memory", "256m"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = kiln(
        &fixture.root(),
        &[
            "run",
            "--rm",
            "-m",
            "32m",
            "busybox:latest",
            "sh",
            "-c",
            work,
        ],
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("memory limit of 32MiB"),
        "{}",
        text(&out)
    );
    let out = kiln(
        &fixture.root(),
        &[
            "run",
            "--rm",
            "--memory",
            "256m",
            "busybox:latest",
            "sh",
            "-c",
            work,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Twenty background sleeps: refused under `--pids-limit 10`, fine under 50.
#[test]
fn pids_limit_flag_on_build_and_run() {
    require_root!();
    let fixture = Fixture::new();
    let work = "i=0; while [ $i -lt 20 ]; do sleep 1 & i=$((i+1)); done; wait";
    let dockerfile = format!("FROM busybox:latest\nRUN {work}\n");
    let out = build(&fixture, "pids-low", &dockerfile, &["--pids-limit", "10"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        combined(&out).contains("pids limit of 10 processes"),
        "{}",
        text(&out)
    );
    let out = build(&fixture, "pids-high", &dockerfile, &["--pids-limit", "50"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = kiln(
        &fixture.root(),
        &[
            "run",
            "--rm",
            "--pids-limit",
            "10",
            "busybox:latest",
            "sh",
            "-c",
            work,
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pids limit of 10 processes"),
        "{}",
        text(&out)
    );
    let out = kiln(
        &fixture.root(),
        &[
            "run",
            "--rm",
            "--pids-limit",
            "50",
            "busybox:latest",
            "sh",
            "-c",
            work,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Unlimited: no limit gets in the way.
    let out = kiln(
        &fixture.root(),
        &[
            "run",
            "--rm",
            "--pids-limit",
            "-1",
            "busybox:latest",
            "sh",
            "-c",
            work,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// The host-side cgroup files while a container runs: the defaults, the
/// flags' values, and no pids or memory cgroup for 0/-1 (unlimited).
#[test]
fn host_side_cgroups_hold_the_limits_while_a_container_runs() {
    require_root!();
    let fixture = Fixture::new();
    let mem_total: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let cases: [(&[&str], Option<&str>, Option<u64>); 3] = [
        (&[], Some("4096"), Some(mem_total * 1024 / 4 * 3)),
        (
            &["--pids-limit", "37", "--memory", "80m"],
            Some("37"),
            Some(80 << 20),
        ),
        (&["--pids-limit", "0", "--memory", "0"], None, None),
    ];
    for (flags, pids, memory) in cases {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        // PID 1 ignores SIGTERM without a handler: the trap makes the
        // forwarded one end it.
        args.extend_from_slice(&[
            "busybox:latest",
            "sh",
            "-c",
            "trap 'exit 0' TERM; sleep 30 & wait",
        ]);
        let mut child = spawn_kiln(&fixture, &args);
        let dirs = wait_for_cgroups(child.id(), &mut child);
        let pids_max = control(&dirs, "pids.max");
        let memory_max = control(&dirs, "memory.limit_in_bytes")
            .or_else(|| control(&dirs, "memory.max"))
            .map(|v| v.parse::<u64>().unwrap());
        // The kiln we started; it forwards SIGTERM.
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
        let _ = child.wait();
        assert_eq!(pids_max.as_deref(), pids, "{flags:?}");
        match (memory, memory_max) {
            // The kernel rounds the limit down to whole pages.
            (Some(want), Some(got)) => {
                assert!(got <= want && want - got < 4096, "{flags:?}: {got}")
            }
            (want, got) => assert_eq!(want, got, "{flags:?}"),
        }
    }
}

/// What `kiln run` of a shell that lists the cgroups of its PID 1 and of
/// a child prints (stdout, then stderr), with `KILN_DEVICE_RESTRICTION`
/// set to `restriction` (or cleared: kiln picks), and `-vv`.
fn cgroup_listings(restriction: Option<&str>) -> (String, String) {
    let fixture = Fixture::new();
    let mut command = kiln_command();
    // `cat` of /proc/self is a child of the shell (not the last command,
    // which busybox's sh would exec in its place): its pid comes first.
    command
        .arg("--root")
        .arg(fixture.root())
        .args(["-vv", "run", "--rm", "busybox:latest", "sh", "-c"])
        .arg("echo init; cat /proc/1/cgroup; echo child; cat /proc/self/stat /proc/self/cgroup; true")
        .stdin(Stdio::null());
    match restriction {
        Some(value) => command.env("KILN_DEVICE_RESTRICTION", value),
        None => command.env_remove("KILN_DEVICE_RESTRICTION"),
    };
    let out = command.output().expect("run kiln");
    assert!(out.status.success(), "{}", combined(&out));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Checks that PID 1 and a child of it are, in every hierarchy of
/// `hierarchies` (a v1 controller's name, or `""` for the unified one), in
/// a run's cgroup (`…/kiln-<pid>-<n>`).
fn assert_in_run_cgroups(stdout: &str, hierarchies: &[&str]) {
    let (init, child) = stdout.split_once("child\n").expect("both listings printed");
    let child_pid = child.split_whitespace().next().unwrap_or("");
    assert!(
        child_pid.parse::<u32>().is_ok_and(|pid| pid > 1),
        "the second listing is not a child's: {stdout}"
    );
    for (who, listing) in [("init", init), ("child", child)] {
        for hierarchy in hierarchies {
            // `<n>:<controllers>:<path>` (`0::<path>` on the unified one),
            // the path's last part the run's.
            let path = listing.lines().find_map(|line| {
                let mut fields = line.splitn(3, ':').skip(1);
                let (names, path) = (fields.next()?, fields.next()?);
                let found = match *hierarchy {
                    "" => names.is_empty(),
                    controller => names.split(',').any(|n| n == controller),
                };
                found.then_some(path)
            });
            let last = path.and_then(|p| p.rsplit('/').next()).unwrap_or("");
            assert!(
                last.starts_with("kiln-"),
                "{who} is not in the run's {hierarchy:?} cgroup: {path:?}\n{stdout}"
            );
        }
    }
}

/// The container's init joins its run's v1 cgroups through `tasks`, which
/// moves one thread: the init (PID 1 in the container, the command after
/// exec) and a process it starts are both in the run's cgroup of every
/// hierarchy kiln uses here (the device restriction left to kiln, which
/// picks the v1 devices controller where it is mounted).
#[test]
fn the_whole_container_is_in_every_cgroup_of_its_run() {
    require_root!();
    let layout = Layout::probe();
    let controllers: Vec<&str> = ["pids", "memory", "devices"]
        .into_iter()
        .filter(|c| layout.v1.contains_key(*c))
        .collect();
    if controllers.is_empty() {
        eprintln!("skipped: no cgroup v1 controller kiln uses is mounted");
        return;
    }
    let (stdout, _) = cgroup_listings(None);
    assert_in_run_cgroups(&stdout, &controllers);
}

/// With the device program (`KILN_DEVICE_RESTRICTION=bpf`, what a cgroup
/// v2 host gets) the run has a directory on the unified hierarchy, and the
/// helper starts the init in it (`clone3`'s `CLONE_INTO_CGROUP`) rather than
/// the init writing `cgroup.procs`, a write that waits for an RCU grace
/// period: `-vv` says it was started there, and the init and a process it
/// starts are in it.
#[test]
fn the_init_is_started_in_its_run_cgroup2_directory() {
    require_root!();
    if Layout::probe().unified.is_none() {
        eprintln!("skipped: no cgroup2 hierarchy is mounted");
        return;
    }
    let (stdout, stderr) = cgroup_listings(Some("bpf"));
    assert_in_run_cgroups(&stdout, &[""]);
    assert!(
        stderr.contains("the container's init started in its cgroup v2 directory"),
        "{stderr}"
    );
}

/// Every cgroup a run makes is removed when it ends: after a normal exit,
/// a failure at a limit, a timeout (the container killed), and when kiln
/// itself is killed (the container dies with it; the next run removes the
/// empty cgroups the dead kiln left).
#[test]
fn no_cgroup_is_left_behind() {
    require_root!();
    let fixture = Fixture::new();
    // Each run, and how it must end (so that it did make its cgroups).
    let runs: [(&[&str], Option<&str>); 3] = [
        (&["run", "--rm", "busybox:latest", "true"], None),
        (
            &[
                "run",
                "--rm",
                "--pids-limit",
                "3",
                "busybox:latest",
                "sh",
                "-c",
                "sleep 1 & sleep 1 & sleep 1 & wait",
            ][..],
            Some("hit its pids limit of 3 processes"),
        ),
        (
            &[
                "run",
                "--rm",
                "--timeout",
                "1",
                "busybox:latest",
                "sleep",
                "30",
            ][..],
            Some("timed out after 1s; the container was killed"),
        ),
    ];
    for (args, failure) in runs {
        let child = spawn_kiln(&fixture, args);
        let pid = child.id();
        let out = child.wait_with_output().expect("wait for kiln");
        match failure {
            None => assert!(out.status.success(), "{args:?}: {}", text(&out)),
            Some(message) => assert!(
                !out.status.success() && combined(&out).contains(message),
                "{args:?}: {}",
                text(&out)
            ),
        }
        assert!(
            cgroups_of(pid).is_empty(),
            "{args:?} left {:?}\n{}",
            cgroups_of(pid),
            text(&out)
        );
    }
    // A build's RUN steps.
    let context = fixture.context(
        "ctx",
        &[("Dockerfile", "FROM busybox:latest\nRUN true\nRUN false\n")],
    );
    let child = spawn_kiln(
        &fixture,
        &["build", "--no-cache", context.to_str().unwrap()],
    );
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for kiln");
    assert!(!out.status.success());
    assert!(
        cgroups_of(pid).is_empty(),
        "build left {:?}",
        cgroups_of(pid)
    );

    // kiln itself killed: its container dies with it (parent-death
    // signals), its empty cgroups stay until the next run sweeps them.
    let mut child = spawn_kiln(&fixture, &["run", "--rm", "busybox:latest", "sleep", "30"]);
    let pid = child.id();
    let dirs = wait_for_cgroups(pid, &mut child);
    child.kill().expect("kill kiln");
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dirs.iter().any(|d| {
        std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
    }) {
        assert!(Instant::now() < deadline, "the container outlived kiln");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A killed kiln cannot remove its own: the next run (here, or one of
    // a test running beside this one, which may have come first) does.
    let out = kiln(&fixture.root(), &["run", "--rm", "busybox:latest", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        cgroups_of(pid).is_empty(),
        "the next run left {:?}",
        cgroups_of(pid)
    );
}

/// Nonsense is refused before anything runs, naming the flag.
#[test]
fn nonsense_limits_are_refused() {
    require_root!();
    let fixture = Fixture::new();
    for (flags, expected) in [
        (&["--memory", "lots"][..], "invalid size \"lots\""),
        (&["--memory", "1m"][..], "below the minimum of 6MiB"),
        (&["--pids-limit", "-5"][..], "invalid pids limit \"-5\""),
        (&["--pids-limit", "many"][..], "invalid pids limit \"many\""),
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["busybox:latest", "true"]);
        let out = kiln(&fixture.root(), &args);
        assert!(!out.status.success(), "{flags:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(expected),
            "{flags:?}: {}",
            text(&out)
        );
    }
}

/// `kiln info` as root here: cgroup v1, both limits available with their
/// defaults, as text and JSON.
#[test]
fn kiln_info_reports_limits_and_defaults() {
    require_root!();
    let fixture = Fixture::new();
    let out = kiln(&fixture.root(), &["info", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let layout = Layout::probe();
    if layout.v1.contains_key("pids") {
        assert_eq!(info["cgroup_version"], "v1", "{info}");
        assert_eq!(info["pids_limit"]["available"], true, "{info}");
        assert_eq!(info["pids_limit"]["default"], DEFAULT_PIDS_LIMIT, "{info}");
    }
    if layout.v1.contains_key("memory") {
        assert_eq!(info["memory_limit"]["available"], true, "{info}");
        assert!(
            info["memory_limit"]["default"].as_u64().unwrap() > 0,
            "{info}"
        );
    }
    let out = kiln(&fixture.root(), &["info"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for label in [
        "rootless:",
        "cgroups:",
        "device restriction:",
        "pids limit:",
        "memory limit:",
    ] {
        assert!(stdout.contains(label), "{label}\n{stdout}");
    }
}

/// Rootless kiln on this machine (cgroup v1, nothing delegated): kiln info
/// says nodev and no limits; a run with the defaults works and cannot use
/// a device node; an explicit limit fails, saying why.
#[test]
fn rootless_without_delegation_runs_without_limits_and_refuses_explicit_ones() {
    require_root!();
    let (uid, gid) = kiln_testsupport::rootless_user().unwrap();
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A hard link, not a copy (see tests/run.rs: ETXTBSY).
    let kiln_bin = home.path().join("kiln");
    if std::fs::hard_link(crate::common::kiln_bin(), &kiln_bin).is_err() {
        std::fs::copy(crate::common::kiln_bin(), &kiln_bin).unwrap();
    }
    let tar = home.path().join("rootfs.tar");
    crate::common::busybox_rootfs_tar(&tar).unwrap();
    std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644)).unwrap();
    let user_home = home.path().join("home");
    std::fs::create_dir(&user_home).unwrap();
    std::os::unix::fs::chown(&user_home, Some(uid), Some(gid)).unwrap();
    let as_user = |args: &[&str]| -> Output {
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
            ])
            .arg("env")
            .arg(format!("HOME={}", user_home.display()))
            .arg("XDG_RUNTIME_DIR=")
            .arg("KILN_PROGRESS=plain")
            .arg(&kiln_bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = as_user(&["import", tar.to_str().unwrap(), "busybox:latest"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = as_user(&["info"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rootless:           yes"), "{}", text(&out));
    assert!(
        stdout.contains("device restriction: nodev-only:"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("pids limit:         no:"), "{}", text(&out));
    assert!(stdout.contains("memory limit:       no:"), "{}", text(&out));

    let out = as_user(&[
        "run",
        "busybox:latest",
        "sh",
        "-c",
        "mknod /kmsg c 1 11 && echo rootless-kmsg > /kmsg; echo x > /dev/null && echo ran; \
         awk '$5 == \"/\" { print \"root-options\", $6 }' /proc/self/mountinfo",
    ]);
    let all = combined(&out);
    assert!(all.contains("ran"), "{}", text(&out));
    // mknod fails in any user namespace; what keeps a node unpacked from an
    // image unusable is nodev on the root (and volumes).
    assert!(
        all.contains("mknod: /kmsg: Operation not permitted"),
        "{}",
        text(&out)
    );
    let root_options = all
        .lines()
        .find_map(|l| l.strip_prefix("root-options "))
        .unwrap_or_else(|| panic!("no root mount: {}", text(&out)));
    assert!(
        root_options.split(',').any(|o| o == "nodev"),
        "{root_options}: {}",
        text(&out)
    );

    for flags in [&["--memory", "64m"][..], &["--pids-limit", "100"][..]] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["busybox:latest", "true"]);
        let out = as_user(&args);
        assert_eq!(out.status.code(), Some(125), "{flags:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error: cgroups:") && stderr.contains(flags[0]),
            "{flags:?}: {}",
            text(&out)
        );
    }
}
