//! The runtime for real, as root: namespaces, overlay, mounts, credentials.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{busybox_rootfs, run_captured, run_captured_with, sh, spec};
use kiln_runtime::{
    BindMount, HelperCommand, Network, NetworkPool, RuntimeError, UpperDir, HELPER_SUBCOMMAND,
};

/// The names in `dir`, in the order read.
fn entries(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect()
}

#[test]
fn command_is_pid_1() {
    require_root!();
    assert_eq!(sh("echo $$"), (0, "1\n".to_string()));
}

#[test]
fn container_has_its_own_hostname() {
    require_root!();
    let (code, out) = sh("hostname; cat /etc/hostname; grep -c kiln-test /etc/hosts");
    assert_eq!((code, out.as_str()), (0, "kiln-test\nkiln-test\n1\n"));
}

#[test]
fn proc_lists_only_the_containers_processes() {
    require_root!();
    // sh (PID 1) and the ls it runs: nothing of the host.
    let (code, out) = sh("ls /proc | grep '^[0-9]*$' | tr '\\n' ' '");
    assert_eq!(code, 0);
    let pids: Vec<u32> = out.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert!(pids.contains(&1), "{out}");
    assert!(pids.len() <= 4 && pids.iter().all(|p| *p < 20), "{out}");
}

#[test]
fn host_files_are_unreachable() {
    require_root!();
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("host-only-marker");
    fs::write(&marker, "secret").unwrap();
    let script = format!(
        "test -e {m} && echo visible; cat {m} 2>/dev/null; ls /proc/1/root/ | tr '\\n' ' '",
        m = marker.display()
    );
    let (code, out) = sh(&script);
    assert_eq!(code, 0);
    assert!(!out.contains("visible") && !out.contains("secret"), "{out}");
    // The root is the image: its directories and the runtime's mount points.
    assert_eq!(out.trim(), "bin dev etc home proc root sys tmp", "{out}");
}

#[test]
fn exit_code_comes_back() {
    require_root!();
    assert_eq!(sh("exit 7").0, 7);
    assert_eq!(sh("true").0, 0);
}

#[test]
fn death_by_signal_is_128_plus_n() {
    require_root!();
    // PID 1 ignores signals it has no handler for, except SIGKILL from the
    // parent namespace: the test finds the container's process from the
    // host by its unique command line and kills it.
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let token = format!("{}.25", std::process::id() % 100000 + 100000);
    // Killed and reaped if the test fails before the container ends.
    let mut child = kiln_testsupport::ChildGuard::spawn(
        std::process::Command::new(common::HELPER_BIN)
            .args(["run", "--state"])
            .arg(tmp.path().join("state"))
            .arg("--lower")
            .arg(&rootfs)
            .args(["--", "sleep", &token]),
    )
    .unwrap();
    // Find the container's PID 1 from the host by its unique command line.
    // The deadline is a hang guard, not a timing assertion.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let wanted = format!("sleep\0{token}\0");
    let pid = loop {
        let found = fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            (cmdline == wanted.as_bytes()).then(|| e.file_name().to_string_lossy().into_owned())
        });
        if let Some(pid) = found {
            break pid.parse::<i32>().unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("container ended early: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no process with command line `sleep {token}` appeared within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = rustix::process::Pid::from_raw(pid).expect("a process id");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let status = child.wait_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(status.code(), Some(128 + 9));
}

#[test]
fn deleting_a_file_inside_leaves_the_image_alone() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let upper = tmp.path().join("upper");
    let mut s = spec(
        tmp.path(),
        &rootfs,
        &["sh", "-c", "rm /etc/motd && test ! -e /etc/motd"],
    );
    s.upper = UpperDir::Keep(upper.clone());
    let (result, _, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "welcome\n"
    );
    // The deletion is a whiteout in the kept upper dir: a 0/0 char device.
    let whiteout = fs::symlink_metadata(upper.join("etc/motd")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
}

#[test]
fn discarded_upper_dir_and_state_are_removed() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let s = spec(tmp.path(), &rootfs, &["sh", "-c", "echo x > /new-file"]);
    let (result, _, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    assert!(!tmp.path().join("state").exists());
    assert!(!rootfs.join("new-file").exists());
}

/// A mount inside the container is refused, with seccomp and without it
/// (CAP_SYS_ADMIN is not in the bounding set); the control, a privileged
/// run (every capability, no seccomp), mounts with the same command.
#[test]
fn mount_inside_fails() {
    require_root!();
    const MOUNT: &str =
        "mkdir -p /mnt && mount -t tmpfs none /mnt && grep -c ' /mnt tmpfs' /proc/mounts";
    let mount_with = |seccomp: bool, privileged: bool| {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = busybox_rootfs(tmp.path());
        let mut s = spec(tmp.path(), &rootfs, &["sh", "-c", MOUNT]);
        s.seccomp = seccomp;
        s.privileged = privileged;
        let (result, out, err) = run_captured(tmp.path(), s);
        (result.unwrap().code(), out, err)
    };
    for seccomp in [true, false] {
        let (code, out, err) = mount_with(seccomp, false);
        assert_ne!(code, 0, "seccomp {seccomp}: {out}{err}");
        assert!(
            err.contains("permission denied"),
            "seccomp {seccomp}: {err}"
        );
    }
    let (code, out, err) = mount_with(false, true);
    assert_eq!((code, out.as_str()), (0, "1\n"), "{err}");
}

#[test]
fn network_none_has_only_loopback_and_it_is_up() {
    require_root!();
    let (code, out) = sh("ls /sys/class/net; cat /sys/class/net/lo/flags");
    assert_eq!(code, 0);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("lo"));
    let flags = u32::from_str_radix(lines.next().unwrap().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & libc::IFF_UP as u32, libc::IFF_UP as u32, "{out}");
    assert_eq!(lines.next(), None, "{out}");
}

#[test]
fn network_host_sees_the_hosts_interfaces() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let mut s = spec(tmp.path(), &rootfs, &["ls", "/sys/class/net"]);
    s.network = Network::Host;
    let (result, out, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    let mut host: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    let inside: Vec<&str> = out.lines().collect();
    assert_eq!(inside, host);
}

#[test]
fn user_from_image_passwd_owns_its_files() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let upper = tmp.path().join("upper");
    let mut s = spec(
        tmp.path(),
        &rootfs,
        &[
            "sh",
            "-c",
            "touch /tmp/f && stat -c %u:%g /tmp/f && id -G && echo $HOME",
        ],
    );
    s.user = "app".into();
    s.upper = UpperDir::Keep(upper.clone());
    let (result, out, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    assert_eq!(out, "1000:1000\n1000 10\n/home/app\n");
    let meta = fs::metadata(upper.join("tmp/f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
}

#[test]
fn numeric_user_and_group() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let mut s = spec(tmp.path(), &rootfs, &["sh", "-c", "id -u; id -g; id -G"]);
    s.user = "4242:77".into();
    let (result, out, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    assert_eq!(out, "4242\n77\n77\n");
}

#[test]
fn unknown_user_names_user_and_image() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let mut s = spec(tmp.path(), &rootfs, &["true"]);
    s.user = "ghost".into();
    let (result, _, _) = run_captured(tmp.path(), s);
    let err = result.unwrap_err();
    assert!(matches!(err, RuntimeError::UnknownUser { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("ghost") && message.contains("busybox-test"),
        "{message}"
    );
}

#[test]
fn missing_executable_is_127_with_dockers_message() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let (result, _, _) = run_captured(tmp.path(), spec(tmp.path(), &rootfs, &["/x"]));
    let err = result.unwrap_err();
    assert_eq!(err.to_string(), "exec: \"/x\": no such file or directory");
    assert_eq!(err.exit_code(), Some(127));

    let (result, _, _) = run_captured(tmp.path(), spec(tmp.path(), &rootfs, &["nosuchcmd"]));
    let err = result.unwrap_err();
    assert_eq!(
        err.to_string(),
        "exec: \"nosuchcmd\": executable file not found in $PATH"
    );
    assert_eq!(err.exit_code(), Some(127));
}

#[test]
fn non_executable_file_is_126() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let (result, _, _) = run_captured(
        tmp.path(),
        spec(tmp.path(), &rootfs, &["/bin/not-executable"]),
    );
    let err = result.unwrap_err();
    assert_eq!(err.exit_code(), Some(126), "{err}");
    assert_eq!(
        err.to_string(),
        "exec: \"/bin/not-executable\": permission denied"
    );
}

/// Docker's capabilities and seccomp profile; no_new_privs unset, as BuildKit
/// and `docker run` leave it (setuid programs work).
#[test]
fn default_capabilities_and_seccomp_without_no_new_privs() {
    require_root!();
    let (code, out) = sh("grep -E '^(CapEff|CapBnd|CapInh|NoNewPrivs|Seccomp):' /proc/self/status");
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "CapInh:\t0000000000000000\nCapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n\
         NoNewPrivs:\t0\nSeccomp:\t2\n"
    );
}

#[test]
fn seccomp_denies_unshare_and_can_be_turned_off() {
    require_root!();
    // unshare -U needs no capability: only seccomp stops it.
    let (code, _) = sh("unshare -U true");
    assert_ne!(code, 0);
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let mut s = spec(
        tmp.path(),
        &rootfs,
        &["sh", "-c", "grep '^Seccomp:' /proc/self/status"],
    );
    s.seccomp = false;
    let (result, out, _) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0);
    assert_eq!(out, "Seccomp:\t0\n");
    // The control: without seccomp the same unshare works, so it is the
    // profile that stopped it above.
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let mut s = spec(tmp.path(), &rootfs, &["unshare", "-U", "true"]);
    s.seccomp = false;
    let (result, _, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
}

#[test]
fn forks_still_work_under_seccomp() {
    require_root!();
    // Pipelines and command substitution fork; busybox is static, so this
    // is clone(2), which the profile must allow without namespace flags.
    let (code, out) = sh("echo $(echo a | tr a b)");
    assert_eq!((code, out.as_str()), (0, "b\n"));
}

#[test]
fn dev_proc_sys_are_set_up() {
    require_root!();
    let script = "ls /dev | tr '\\n' ' '; echo; readlink /dev/ptmx; \
                  echo hi > /dev/null && head -c 4 /dev/zero | wc -c; \
                  grep -E ' /sys | /dev/pts | /dev/shm ' /proc/mounts | cut -d' ' -f2,3,4 | cut -d, -f1";
    let (code, out) = sh(script);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "core fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero \n\
         pts/ptmx\n4\n/sys sysfs ro\n/dev/pts devpts rw\n/dev/shm tmpfs rw\n"
    );
}

#[test]
fn etc_files_and_mount_points_never_land_in_the_upper_dir() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let upper = tmp.path().join("upper");
    let mut s = spec(
        tmp.path(),
        &rootfs,
        &[
            "sh",
            "-c",
            "cat /etc/hosts >/dev/null; ls /proc/self >/dev/null",
        ],
    );
    s.upper = UpperDir::Keep(upper.clone());
    let (result, _, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    let left = entries(&upper);
    assert!(left.is_empty(), "upper dir has {left:?}");
}

#[test]
fn missing_working_dir_is_created_in_the_layer() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let upper = tmp.path().join("upper");
    let mut s = spec(tmp.path(), &rootfs, &["pwd"]);
    s.cwd = "/work/dir".into();
    s.upper = UpperDir::Keep(upper.clone());
    let (result, out, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    assert_eq!(out, "/work/dir\n");
    assert!(upper.join("work/dir").is_dir());
}

#[test]
fn environment_defaults() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let mut s = spec(tmp.path(), &rootfs, &["env"]);
    s.env = vec!["FOO=bar baz".into()];
    let (result, out, _) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "FOO=bar baz",
            "HOME=/root",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    );
}

#[test]
fn volumes_read_write_and_read_only() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let shared = tmp.path().join("shared");
    fs::create_dir(&shared).unwrap();
    let config = tmp.path().join("config.txt");
    fs::write(&config, "cfg\n").unwrap();
    let mut s = spec(
        tmp.path(),
        &rootfs,
        &["sh", "-c", "echo out > /data/result; cat /opt/config.txt; echo x > /opt/config.txt || echo refused"],
    );
    s.mounts = vec![
        BindMount {
            source: shared.clone(),
            target: PathBuf::from("/data"),
            read_only: false,
            within: None,
        },
        BindMount {
            source: config.clone(),
            target: PathBuf::from("/opt/config.txt"),
            read_only: true,
            within: None,
        },
    ];
    let (result, out, _) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0);
    assert_eq!(out, "cfg\nrefused\n");
    assert_eq!(fs::read_to_string(shared.join("result")).unwrap(), "out\n");
    assert_eq!(fs::read_to_string(&config).unwrap(), "cfg\n");
}

#[test]
fn missing_volume_source_fails_before_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    let mut s = spec(tmp.path(), &rootfs, &["true"]);
    s.mounts = vec![BindMount {
        source: tmp.path().join("absent"),
        target: PathBuf::from("/data"),
        read_only: false,
        within: None,
    }];
    let (result, _, _) = run_captured(tmp.path(), s);
    assert!(matches!(result, Err(RuntimeError::VolumeSource { .. })));
    assert!(!tmp.path().join("state").exists());
}

#[test]
fn timeout_kills_the_container() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let mut s = spec(tmp.path(), &rootfs, &["sleep", "600"]);
    s.timeout = Some(Duration::from_millis(300));
    let (result, _, _) = run_captured(tmp.path(), s);
    assert!(
        matches!(result, Err(RuntimeError::Timeout(_))),
        "{result:?}"
    );
    assert!(!tmp.path().join("state").exists());
}

#[test]
fn nofile_limit_is_applied() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let mut s = spec(tmp.path(), &rootfs, &["sh", "-c", "ulimit -n"]);
    s.nofile = 1000;
    let (result, out, _) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0);
    assert_eq!(out, "1000\n");
}

#[test]
fn layers_stack_top_first() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let top = tmp.path().join("top");
    fs::create_dir_all(top.join("etc")).unwrap();
    fs::write(top.join("etc/motd"), "from the top layer\n").unwrap();
    let mut s = spec(tmp.path(), &rootfs, &["cat", "/etc/motd"]);
    s.lower_dirs.push(top);
    let (result, out, _) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0);
    assert_eq!(out, "from the top layer\n");
}

#[test]
fn terminal_comes_from_the_containers_devpts() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let out = std::process::Command::new(common::HELPER_BIN)
        .args(["run", "--tty", "--user", "app", "--state"])
        .arg(tmp.path().join("state"))
        .arg("--lower")
        .arg(&rootfs)
        .args([
            "--",
            "sh",
            "-c",
            "tty; stat -c %u $(tty); test -t 0 && test -t 1 && echo both; stat -c %t,%T /dev/console",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The pty turns "\n" into "\r\n".
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/dev/pts/0\r\n1000\r\nboth\r\n88,0\r\n"
    );
}

/// Each of four symlinks in the image, one run each, names a host path the
/// image does not have: /etc/hosts a host file, /etc/resolv.conf a host
/// path that does not exist, /data (a volume target) a host directory,
/// and /run/secrets (the directory of a file mount's target, as a
/// secret's) a host directory. As runc does, each is followed inside the
/// root: the mount point is made at that path in the container, and the
/// run works through the symlink (it reads the secret, writes to the
/// volume and to kiln's own /etc files). The host's files stay as they
/// were and nothing is made next to them; what was made in the upper
/// dir for the mount points is removed afterwards.
#[test]
fn image_symlinks_to_host_paths_are_followed_inside_the_root() {
    require_root!();
    for link in ["etc/hosts", "etc/resolv.conf", "data", "run/secrets"] {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = busybox_rootfs(tmp.path());
        let host_dir = tempfile::tempdir().unwrap();
        let existing = host_dir.path().join("existing");
        fs::write(&existing, "host file\n").unwrap();
        let absent = host_dir.path().join("absent");
        let aim = match link {
            "etc/hosts" => existing.clone(),
            "etc/resolv.conf" => absent.clone(),
            _ => host_dir.path().to_path_buf(),
        };
        let _ = fs::remove_file(rootfs.join(link));
        fs::create_dir_all(rootfs.join(link).parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&aim, rootfs.join(link)).unwrap();
        let volume = tmp.path().join("volume");
        fs::create_dir(&volume).unwrap();
        let secret = tmp.path().join("secret");
        fs::write(&secret, "s3cret\n").unwrap();
        let upper = tmp.path().join("upper");
        let mut s = spec(
            tmp.path(),
            &rootfs,
            &[
                "sh",
                "-c",
                "echo changed > /etc/hosts; echo changed > /etc/resolv.conf; \
                 echo changed > /data/new; cat /run/secrets/token",
            ],
        );
        s.mounts = vec![
            BindMount {
                source: volume.clone(),
                target: PathBuf::from("/data"),
                read_only: false,
                within: None,
            },
            BindMount {
                source: secret,
                target: PathBuf::from("/run/secrets/token"),
                read_only: true,
                within: None,
            },
        ];
        s.upper = UpperDir::Keep(upper.clone());
        let (result, out, err) = run_captured(tmp.path(), s);
        assert_eq!(result.unwrap().code(), 0, "/{link}: {err}");
        assert_eq!(out, "s3cret\n", "/{link}");
        assert_eq!(
            fs::read_to_string(volume.join("new")).unwrap(),
            "changed\n",
            "/{link}"
        );
        assert_eq!(
            fs::read_to_string(&existing).unwrap(),
            "host file\n",
            "/{link}"
        );
        assert!(!absent.exists(), "/{link}");
        let names = entries(host_dir.path());
        assert_eq!(names, ["existing"], "/{link}");
        // The mount points made at the host path's place in the container
        // are gone from the upper dir, with the directories made for them
        // and those overlay copied up to make them (/tmp): everything the
        // run wrote went to mounts, and the upper dir is empty.
        let left = entries(&upper);
        assert!(left.is_empty(), "/{link}: the upper dir has {left:?}");
    }
}

/// An image whose /proc (or /sys) is a symlink to a directory of its own
/// is refused: the masked and read-only paths (/proc/kcore, /proc/sys,
/// /proc/sysrq-trigger, …) are set under /proc, and through the symlink
/// they would miss the fresh proc mounted at its target, leaving
/// /proc/sys writable to the container's root.
#[test]
fn a_symlinked_proc_or_sys_is_refused() {
    require_root!();
    for name in ["proc", "sys"] {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = busybox_rootfs(tmp.path());
        let _ = fs::remove_dir(rootfs.join(name));
        fs::create_dir(rootfs.join("p")).unwrap();
        std::os::unix::fs::symlink("/p", rootfs.join(name)).unwrap();
        let s = spec(
            tmp.path(),
            &rootfs,
            &["sh", "-c", "grep -c ' /proc/sys ' /proc/self/mountinfo"],
        );
        let (result, out, _) = run_captured(tmp.path(), s);
        match result {
            Err(RuntimeError::Setup { reason, .. }) => assert!(
                reason.contains(&format!("/{name} is a symlink in the image")),
                "/{name}: {reason}"
            ),
            other => panic!("/{name}: expected a refusal, got {other:?} ({out})"),
        }
    }
}

#[test]
fn a_state_dir_in_use_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    let state = tmp.path().join("state");
    fs::create_dir(&state).unwrap();
    fs::write(state.join("keep-me"), "x").unwrap();
    let (result, _, _) = run_captured(tmp.path(), spec(tmp.path(), &rootfs, &["true"]));
    assert!(
        matches!(result, Err(RuntimeError::StateDir { .. })),
        "{result:?}"
    );
    assert!(state.join("keep-me").exists());
}

#[test]
fn many_layers_beyond_one_page_of_mount_options() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let mut s = spec(tmp.path(), &rootfs, &["sh", "-c", "cat /layers/*"]);
    // 80 layers with 70-character names: over 5000 bytes of lowerdir.
    for i in 0..80 {
        let layer = tmp.path().join(format!("layer-{i:064}"));
        fs::create_dir_all(layer.join("layers")).unwrap();
        fs::write(
            layer.join("layers").join(format!("{i:02}")),
            format!("{i} "),
        )
        .unwrap();
        s.lower_dirs.push(layer);
    }
    let (result, out, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    let expected: String = (0..80).map(|i| format!("{i} ")).collect();
    assert_eq!(out, expected);
}

#[test]
fn a_mount_point_hidden_by_a_whiteout_is_removed_from_the_kept_upper_dir() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    // A top layer that deleted /etc/hostname: a 0/0 character device, which
    // also hides the runtime's mount-point layer below.
    let top = hostname_whiteout_layer(tmp.path());
    let upper = tmp.path().join("upper");
    let mut s = spec(tmp.path(), &rootfs, &["cat", "/etc/hostname"]);
    s.lower_dirs.push(top);
    s.upper = UpperDir::Keep(upper.clone());
    let (result, out, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    assert_eq!(out, "kiln-test\n");
    // The stub the runtime had to create is gone again, and so is /etc,
    // which overlay copied up to make it: its mtime kept, it is as its
    // lower has it, and BuildKit's differ leaves such a directory out.
    assert!(fs::symlink_metadata(upper.join("etc/hostname")).is_err());
    assert!(fs::symlink_metadata(upper.join("etc")).is_err());
}

/// A lower layer (above the busybox one) whose whiteout hides
/// /etc/hostname: the runtime must make that mount point in the upper
/// dir, and overlay copies /etc up to hold it.
fn hostname_whiteout_layer(dir: &std::path::Path) -> PathBuf {
    let top = dir.join("top");
    fs::create_dir_all(top.join("etc")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        top.join("etc/hostname"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    top
}

/// The copy of /etc that overlay made to hold a stub is dropped only when
/// it is as its lower has it: a RUN that changed its mode, owner or mtime
/// keeps it, changed, in the upper dir (the stub itself still goes).
#[test]
fn a_copied_up_directory_the_run_changed_is_kept() {
    require_root!();
    for (command, check) in [
        ("chmod 700 /etc", "mode"),
        ("chown 1:1 /etc", "owner"),
        ("touch /etc", "mtime"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = busybox_rootfs(tmp.path());
        let top = hostname_whiteout_layer(tmp.path());
        let lower = fs::metadata(top.join("etc")).unwrap();
        let upper = tmp.path().join("upper");
        let mut s = spec(tmp.path(), &rootfs, &["sh", "-c", command]);
        s.lower_dirs.push(top);
        s.upper = UpperDir::Keep(upper.clone());
        let (result, _, err) = run_captured(tmp.path(), s);
        assert_eq!(result.unwrap().code(), 0, "{command}: {err}");
        assert!(
            fs::symlink_metadata(upper.join("etc/hostname")).is_err(),
            "{command}: the stub stayed"
        );
        let kept = fs::metadata(upper.join("etc"))
            .unwrap_or_else(|e| panic!("{command}: /etc was dropped from the upper dir: {e}"));
        match check {
            "mode" => assert_eq!(kept.mode() & 0o7777, 0o700, "{command}"),
            "owner" => assert_eq!((kept.uid(), kept.gid()), (1, 1), "{command}"),
            _ => assert_ne!(
                (kept.mtime(), kept.mtime_nsec()),
                (lower.mtime(), lower.mtime_nsec()),
                "{command}"
            ),
        }
    }
}

/// A mount point that cannot be made fails the run naming it, in the
/// container's paths: symlinks that lead to each other (the kernel's
/// loop), one that leads where nothing can be made (sysfs is read-only),
/// and one that leads back to the root (`/data` → `../nope/..`, refused
/// as runc refuses a mount on the root after `nope` was made on the
/// way). What was made before the failure is removed all the same, and
/// a kept upper dir that is not empty is refused before anything runs.
#[test]
fn mount_points_that_fail_name_themselves_and_leave_no_stub() {
    require_root!();
    for (links, target, expected) in [
        (
            &[("etc/resolv.conf", "/loop"), ("loop", "/etc/resolv.conf")][..],
            "/etc/resolv.conf",
            ("resolve /etc/resolv.conf: ", "(os error 40)"),
        ),
        (
            &[("data", "/sys/kernel/kiln-made")][..],
            "/data",
            ("create /sys/kernel/kiln-made: ", "(os error 30)"),
        ),
        (
            &[("data", "../nope/..")][..],
            "/data",
            (
                "/data (it resolves to /) cannot be mounted: it is the container's root",
                "",
            ),
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = busybox_rootfs(tmp.path());
        for (link, aim) in links {
            let _ = fs::remove_file(rootfs.join(link));
            std::os::unix::fs::symlink(aim, rootfs.join(link)).unwrap();
        }
        let volume = tmp.path().join("volume");
        fs::create_dir(&volume).unwrap();
        let upper = tmp.path().join("upper");
        let mut s = spec(tmp.path(), &rootfs, &["true"]);
        s.mounts = vec![BindMount {
            source: volume,
            target: PathBuf::from("/data"),
            read_only: false,
            within: None,
        }];
        s.upper = UpperDir::Keep(upper.clone());
        let (result, _, _) = run_captured(tmp.path(), s);
        match result {
            Err(RuntimeError::Setup { step, reason }) => {
                assert_eq!(step, format!("mount point {target}"), "{reason}");
                // The error's own words (strerror's) between the two.
                let (starts, ends) = expected;
                assert!(
                    reason.starts_with(starts) && reason.ends_with(ends),
                    "{target}: {reason}"
                );
            }
            other => panic!("{target}: expected a refusal, got {other:?}"),
        }
        let left = entries(&upper);
        assert!(left.is_empty(), "{target}: the upper dir has {left:?}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let upper = tmp.path().join("upper");
    fs::create_dir(&upper).unwrap();
    fs::write(upper.join("left"), "from before\n").unwrap();
    let mut s = spec(tmp.path(), &rootfs, &["true"]);
    s.upper = UpperDir::Keep(upper.clone());
    let (result, _, _) = run_captured(tmp.path(), s);
    match result {
        Err(RuntimeError::InvalidSpec(reason)) => {
            assert!(reason.contains("is not empty"), "{reason}")
        }
        other => panic!("expected the upper dir refused, got {other:?}"),
    }
    assert_eq!(
        fs::read_to_string(upper.join("left")).unwrap(),
        "from before\n"
    );
}

/// Stubs are reported relative to the root as the kernel shows it, not
/// as the runtime named it: with no tmpfs for its scratch (`/run` and
/// `/dev/shm` a ramfs, no `XDG_RUNTIME_DIR`), the root's mount point is
/// in the state dir, here reached through a symlink. The test runs its
/// half below in a mount namespace made so.
#[test]
fn stubs_are_removed_when_the_root_is_reached_through_a_symlink() {
    require_root!();
    let out = std::process::Command::new("timeout")
        .args(["300", "unshare", "--mount", "--propagation", "private"])
        .args(["sh", "-c"])
        .arg(
            "mount -t ramfs ramfs /run && mount -t ramfs ramfs /dev/shm && \
             exec \"$0\" --ignored --exact stubs_under_a_root_reached_through_a_symlink \
             --test-threads=1",
        )
        .arg(std::env::current_exe().unwrap())
        .env_remove("XDG_RUNTIME_DIR")
        .env(INNER_RUN, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

/// Set by [`stubs_are_removed_when_the_root_is_reached_through_a_symlink`]
/// for the half it runs.
const INNER_RUN: &str = "KILN_TEST_SYMLINKED_ROOT";

#[test]
#[ignore = "run by stubs_are_removed_when_the_root_is_reached_through_a_symlink"]
fn stubs_under_a_root_reached_through_a_symlink() {
    std::env::var_os(INNER_RUN)
        .expect("run by stubs_are_removed_when_the_root_is_reached_through_a_symlink");
    // No tmpfs for the scratch: the root's mount point is in the state
    // dir, under the symlink.
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    for dir in ["/run", "/dev/shm"] {
        let fs_type = rustix::fs::statfs(dir).unwrap().f_type;
        assert_ne!(fs_type as i64, TMPFS_MAGIC, "{dir} is a tmpfs");
    }
    assert!(std::env::var_os("XDG_RUNTIME_DIR").is_none());
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("real")).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(tmp.path().join("real"), &link).unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let top = hostname_whiteout_layer(tmp.path());
    let upper = tmp.path().join("upper");
    let mut s = spec(&link, &rootfs, &["cat", "/etc/hostname"]);
    s.lower_dirs.push(top);
    s.upper = UpperDir::Keep(upper.clone());
    let (result, out, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    assert_eq!(out, "kiln-test\n");
    let left = entries(&upper);
    assert!(left.is_empty(), "the upper dir has {left:?}");
}

#[test]
fn a_non_root_user_keeps_only_the_bounding_set() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let mut s = spec(tmp.path(), &rootfs, &["grep", "^Cap", "/proc/self/status"]);
    s.user = "app".into();
    let (result, out, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    // As with Docker: no capabilities after exec as uid 1000.
    assert_eq!(
        out,
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
         CapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\n"
    );
}

#[test]
fn renaming_a_lower_directory_copies_it_into_the_upper_dir() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    fs::create_dir_all(rootfs.join("srv/old")).unwrap();
    fs::write(rootfs.join("srv/old/file"), "data\n").unwrap();
    let upper = tmp.path().join("upper");
    let mut s = spec(tmp.path(), &rootfs, &["mv", "/srv/old", "/srv/new"]);
    s.upper = UpperDir::Keep(upper.clone());
    let (result, _, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    // No overlay redirect: the new directory holds the file itself.
    assert_eq!(
        fs::read_to_string(upper.join("srv/new/file")).unwrap(),
        "data\n"
    );
    assert!(fs::symlink_metadata(upper.join("srv/old"))
        .unwrap()
        .file_type()
        .is_char_device());
}

/// The default network of a build's RUN: its own namespace with `tap0`
/// behind slirp4netns. The host's loopback server is out of reach (by
/// 127.0.0.1, which is the container's own, and by slirp's gateway, which
/// would lead to it without `--disable-host-loopback`); names resolve and
/// the Debian mirror answers over http through the NAT. (Not wget's -T:
/// Debian's static busybox 1.35 crashes with it.)
#[test]
fn network_private_reaches_out_but_not_the_hosts_loopback() {
    require_root!();
    let port = kiln_testsupport::network::loopback_server("host-secret").unwrap();
    let release = kiln_testsupport::network::debian_mirror_release().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let script = format!(
        "ls /sys/class/net | tr '\\n' ' '; echo; \
         for host in 127.0.0.1 10.0.2.2; do \
           timeout 5 wget -q -O- http://$host:{port}/ && echo reached $host; done; \
         cat /etc/resolv.conf; \
         timeout 20 wget -q -O- {release} | grep -m1 '^Origin:'"
    );
    let mut s = spec(tmp.path(), &rootfs, &["sh", "-c", &script]);
    s.network = Network::Private;
    let (result, out, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{out}\n{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("lo tap0 "), "{out}");
    assert!(!out.contains("host-secret"), "{out}");
    assert!(!out.contains("reached"), "{out}");
    assert!(out.contains("nameserver 10.0.2.3"), "{out}");
    assert!(out.contains("Origin: Debian"), "{out}\n{err}");
    // Host networking reaches the same server.
    let mut s = spec(
        tmp.path(),
        &rootfs,
        &["wget", "-q", "-O-", &format!("http://127.0.0.1:{port}/")],
    );
    s.network = Network::Host;
    let (result, out, err) = run_captured(tmp.path(), s);
    assert_eq!(result.unwrap().code(), 0, "{err}");
    assert_eq!(out, "host-secret");
}

/// A build's RUNs take their private network from a pool, as BuildKit's
/// CNI provider does: a run after another joins the same namespace, its
/// slirp4netns still up (tap0; names resolve through its DNS forwarder);
/// two runs at once get two; a privileged run's network is not given
/// back, nor one where a TCP connection is left in TIME_WAIT (the next run
/// could not bind a server's port); dropping the pool stops the
/// slirp4netns processes.
#[test]
fn pooled_private_networks_serve_one_run_at_a_time() {
    require_root!();
    let release = kiln_testsupport::network::debian_mirror_release().unwrap();
    let mirror = release.split('/').nth(2).unwrap_or_default().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let sync = tmp.path().join("sync");
    fs::create_dir(&sync).unwrap();
    let pool = Arc::new(NetworkPool::new());
    let run_in = |name: &str, script: &str, privileged: bool| -> String {
        let dir = tmp.path().join(name);
        fs::create_dir(&dir).unwrap();
        let mut s = spec(&dir, &rootfs, &["sh", "-c", script]);
        s.network = Network::Private;
        s.networks = Some(pool.clone());
        s.privileged = privileged;
        s.mounts.push(BindMount {
            source: sync.clone(),
            target: "/sync".into(),
            read_only: false,
            within: None,
        });
        let (result, out, err) = run_captured(&dir, s);
        assert_eq!(result.unwrap().code(), 0, "{out}\n{err}");
        out
    };
    // The namespace, the interfaces, the open descriptors (the helper's
    // copy of the pooled namespace's must not reach the container).
    let ns = "readlink /proc/self/ns/net; ls /sys/class/net | tr '\\n' ' '; echo; \
              ls /proc/self/fd | tr '\\n' ' '; echo";
    let first = run_in("1", ns, false);
    assert_eq!(pool.free(), 1);
    // (UDP only: a TCP connection could be left in TIME_WAIT.)
    let second = run_in(
        "2",
        &format!("{ns}; nslookup {mirror} >/dev/null && echo resolved"),
        false,
    );
    assert_eq!(pool.free(), 1);
    let first_ns = first.lines().next().unwrap_or_default().to_string();
    assert!(first_ns.starts_with("net:["), "{first}");
    assert_eq!(
        second.lines().collect::<Vec<_>>(),
        [first_ns.as_str(), "lo tap0 ", "0 1 2 3 ", "resolved"],
        "{first}"
    );
    // Two at once (each waits until the other has started): the pooled
    // one and a new one, both kept afterwards.
    let meet = |me: &str, other: &str| {
        format!(
            "{ns}; touch /sync/{me}; i=0; \
             while [ ! -e /sync/{other} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
             test -e /sync/{other}"
        )
    };
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| run_in("3", &meet("a", "b"), false));
        let b = scope.spawn(|| run_in("4", &meet("b", "a"), false));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a_ns, b_ns) = (a.lines().next(), b.lines().next());
    assert_ne!(a_ns, b_ns, "{a}\n{b}");
    assert!(
        [a_ns, b_ns].contains(&Some(first_ns.as_str())),
        "{first}\n{a}\n{b}"
    );
    assert_eq!(pool.free(), 2);
    // A privileged run may reconfigure its network: it is not kept.
    run_in("5", ns, true);
    assert_eq!(pool.free(), 1);
    // A connection to a server on port 80 leaves the side that closed it
    // first (wget's or httpd's, as they race) in TIME_WAIT: such a
    // namespace is not kept either (the Debian mirror answers through the
    // pooled network meanwhile). wget may return before that state is
    // reached: it is waited for (it lasts a minute).
    let served = run_in(
        "6",
        &format!(
            "mkdir /tmp/www && echo hi > /tmp/www/index.html && \
             httpd -p 127.0.0.1:80 -h /tmp/www && wget -q -O- http://127.0.0.1/ && \
             tw() {{ awk '$4 == \"06\" && ($2 ~ /:0050$/ || $3 ~ /:0050$/) {{ n++ }} \
             END {{ print n + 0 }}' /proc/net/tcp; }}; \
             i=0; while [ \"$(tw)\" = 0 ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; \
             [ \"$(tw)\" -ge 1 ] && echo held && \
             timeout 20 wget -q -O- {release} | grep -m1 '^Origin:'"
        ),
        false,
    );
    assert_eq!(served, "hi\nheld\nOrigin: Debian\n");
    assert_eq!(pool.free(), 0, "{served}");
    let last = run_in("7", ns, false);
    assert_eq!(pool.free(), 1);
    let pids = pool.slirp_pids();
    assert_eq!(pids.len(), 1, "{last}");
    drop(pool);
    let running = || {
        pids.iter()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "slirp4netns")
            })
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(running(), 0, "slirp4netns left running after the pool went");
}

#[test]
fn runs_refused_joining_a_pooled_network_make_their_own() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let pool = Arc::new(NetworkPool::new());
    // A helper under a filter that refuses setns (and allows unshare), as
    // some seccomp profiles or LSMs would.
    let refusing = HelperCommand {
        program: common::HELPER_BIN.into(),
        args: vec!["__deny-setns".into(), HELPER_SUBCOMMAND.into()],
    };
    let run_in = |name: &str, helper: &HelperCommand| -> String {
        let dir = tmp.path().join(name);
        fs::create_dir(&dir).unwrap();
        let script = "readlink /proc/self/ns/net; ls /sys/class/net | tr '\\n' ' '; echo";
        let mut s = spec(&dir, &rootfs, &["sh", "-c", script]);
        s.network = Network::Private;
        s.networks = Some(pool.clone());
        let (result, out, err) = run_captured_with(&dir, s, helper);
        assert_eq!(result.unwrap().code(), 0, "{out}\n{err}");
        out
    };
    let first = run_in("1", &common::helper());
    assert_eq!(pool.free(), 1);
    // Refused the pooled namespace, the run makes its own, with a
    // slirp4netns of its own on it; the pool keeps nothing after that.
    let second = run_in("2", &refusing);
    let (first_ns, second_ns) = (first.lines().next(), second.lines().next());
    assert!(
        first_ns.is_some_and(|ns| ns.starts_with("net:[")),
        "{first}"
    );
    assert_ne!(first_ns, second_ns, "{first}\n{second}");
    assert_eq!(second.lines().nth(1), Some("lo tap0 "), "{second}");
    assert!(pool.refused());
    assert_eq!(pool.free(), 0);
    // Later runs do not try it again: each makes its own.
    let third = run_in("3", &refusing);
    assert_eq!(third.lines().nth(1), Some("lo tap0 "), "{third}");
    assert_ne!(third.lines().next(), second_ns);
    assert_eq!(pool.free(), 0);
}
