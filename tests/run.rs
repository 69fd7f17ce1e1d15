//! `kiln run` end to end, as root: a busybox image imported into a fresh
//! store with `kiln import`, then run in real namespaces.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

macro_rules! require_root {
    () => {
        kiln_testsupport::require_root!("real namespaces and overlay mounts")
    };
}

/// Like `require_root!`, for tests whose only need for root is kiln's
/// own (they run rootless in scripts/test-rootless).
macro_rules! require_namespaces {
    () => {
        kiln_testsupport::require_namespaces!("real namespaces and overlay mounts")
    };
}

/// A store holding `busybox:test` (kiln-testsupport's busybox root
/// filesystem: static busybox, /etc/passwd with app = 1000, /etc/motd)
/// imported with the given `--change` lines.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(changes: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("rootfs.tar");
        kiln_testsupport::BusyboxRootfs::default()
            .write_tar(&tar)
            .unwrap();
        let fixture = Fixture { dir };
        let mut import = fixture.kiln();
        import.arg("import");
        for change in changes {
            import.args(["--change", change]);
        }
        import.arg(&tar).arg("busybox:test");
        let out = import.output().unwrap();
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fixture
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn kiln(&self) -> Command {
        let mut cmd = Command::new(KILN);
        cmd.arg("--root")
            .arg(self.store())
            .stdin(Stdio::null())
            .env("DOCKER_CONFIG", kiln_testsupport::empty_docker_config())
            // The collection after a run happens before kiln exits.
            .env("KILN_GC", "foreground")
            .env_remove("KILN_LOG");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.kiln().arg("run").args(args).output().unwrap()
    }

    /// No container state is left in the store.
    fn assert_no_containers(&self) {
        let dir = self.store().join("containers");
        let left: Vec<_> = fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pid_1_hostname_and_exit_code() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    // (`-h` is --hostname, as in docker run, not help.)
    let out = f.run(&[
        "-h",
        "box",
        "busybox:test",
        "sh",
        "-c",
        "echo $$; hostname; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(stdout(&out), "1\nbox\n");
    f.assert_no_containers();
    // A container's exit status 2 is its own; a flag kiln does not know
    // is 125, as docker's (not clap's 2, which a container may give).
    let out = f.run(&["busybox:test", "sh", "-c", "exit 2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = f.run(&["--bogus", "busybox:test", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("--bogus"), "{}", stderr(&out));
}

#[test]
fn proc_shows_only_the_container_and_host_files_are_out_of_reach() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let marker = f.dir.path().join("host-marker");
    fs::write(&marker, "secret").unwrap();
    let script = format!(
        "ls /proc | grep -c '^[0-9]*$'; cat {} 2>/dev/null || echo unreachable",
        marker.display()
    );
    let out = f.run(&["busybox:test", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let count: usize = lines.next().unwrap().parse().unwrap();
    assert!(count <= 4, "{text}");
    assert_eq!(lines.next(), Some("unreachable"));
}

/// `--pull`, as `docker run --pull`: `missing` (the default) pulls an
/// image the store lacks, saying so on stderr, and runs it; `never` fails
/// on it; `always` pulls again what the store has. stdout stays the
/// container's.
#[test]
fn run_pulls_a_missing_image_as_docker_run_does() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let remote = format!("{}/run/bb:1", registry.host);
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    ok(f.kiln()
        .args(["tag", "busybox:test", &remote])
        .output()
        .unwrap());
    ok(f.kiln().args(["push", &remote]).output().unwrap());
    let other = f.dir.path().join("other-store");
    let run_in = |root: &Path, args: &[&str]| {
        Command::new(KILN)
            .arg("--root")
            .arg(root)
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .env("DOCKER_CONFIG", kiln_testsupport::empty_docker_config())
            .env("KILN_GC", "foreground")
            .env_remove("KILN_LOG")
            .output()
            .unwrap()
    };

    let never = run_in(
        &f.dir.path().join("never"),
        &["--pull", "never", &remote, "true"],
    );
    assert_eq!(never.status.code(), Some(125), "{}", stderr(&never));
    assert!(
        stderr(&never).contains("unable to find image"),
        "{}",
        stderr(&never)
    );

    let pulled = ok(run_in(&other, &[&remote, "echo", "pulled"]));
    assert_eq!(stdout(&pulled), "pulled\n");
    assert!(
        stderr(&pulled).contains(&format!("Unable to find image '{remote}' locally")),
        "{}",
        stderr(&pulled)
    );
    assert!(
        stderr(&pulled).contains("Status: Downloaded newer image"),
        "{}",
        stderr(&pulled)
    );

    let held = ok(run_in(&other, &[&remote, "true"]));
    assert!(!stderr(&held).contains("Pulling"), "{}", stderr(&held));
    // An image found by its id is not pulled, even with `always`: an id
    // names nothing in a registry.
    let ids = Command::new(KILN)
        .arg("--root")
        .arg(&other)
        .args(["images", "-q"])
        .output()
        .unwrap();
    let id = stdout(&ids).lines().next().unwrap().to_string();
    let by_id = ok(run_in(&other, &["--pull", "always", &id, "true"]));
    assert!(!stderr(&by_id).contains("Pulling"), "{}", stderr(&by_id));
    let again = ok(run_in(&other, &["--pull", "always", &remote, "true"]));
    assert!(
        stderr(&again).contains(&format!("Pulling {remote}")),
        "{}",
        stderr(&again)
    );
}

/// `--pull` reaches a registry as `kiln pull` does: a registry whose
/// certificate comes from a CA of its own is refused until the run trusts
/// that CA (`--ca-cert`) or skips the check (`--insecure-registry`).
#[test]
fn run_pulls_through_its_registry_flags() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let registry =
        kiln_testsupport::RegistryServer::start_tls_basic("alice", "wonderland").unwrap();
    let ca = registry.ca_cert.clone().unwrap();
    let ca = ca.to_str().unwrap();
    let remote = format!("{}/run/tls:1", registry.host);
    let docker_config = f.dir.path().join("docker-config");
    fs::create_dir_all(&docker_config).unwrap();
    let kiln_in = |root: &Path| {
        let mut cmd = Command::new(KILN);
        cmd.arg("--root")
            .arg(root)
            .env("DOCKER_CONFIG", &docker_config)
            .env("KILN_GC", "foreground")
            .env_remove("KILN_LOG");
        cmd
    };
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    common::login(
        &docker_config,
        &registry.host,
        "alice",
        "wonderland",
        Path::new(ca),
    );
    ok(kiln_in(&f.store())
        .args(["tag", "busybox:test", &remote])
        .output()
        .unwrap());
    ok(kiln_in(&f.store())
        .args(["push", "--ca-cert", ca, &remote])
        .output()
        .unwrap());
    let run_in = |root: &Path, flags: &[&str]| {
        kiln_in(root)
            .arg("run")
            .args(flags)
            .args([&remote, "echo", "pulled"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };

    let untrusted = run_in(&f.dir.path().join("untrusted"), &[]);
    assert!(!untrusted.status.success());
    assert!(
        stderr(&untrusted).contains("invalid peer certificate"),
        "{}",
        stderr(&untrusted)
    );
    assert_eq!(stdout(&untrusted), "");
    for (name, flags) in [
        ("trusted", ["--ca-cert", ca]),
        ("insecure", ["--insecure-registry", &registry.host]),
    ] {
        let out = ok(run_in(&f.dir.path().join(name), &flags));
        assert_eq!(stdout(&out), "pulled\n", "{flags:?}");
        assert!(
            stderr(&out).contains("Status: Downloaded newer image"),
            "{flags:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn image_cmd_entrypoint_and_overrides() {
    require_namespaces!();
    let f = Fixture::new(&[r#"ENTRYPOINT ["echo", "ep"]"#, r#"CMD ["default"]"#]);
    assert_eq!(stdout(&f.run(&["busybox:test"])), "ep default\n");
    assert_eq!(stdout(&f.run(&["busybox:test", "a", "b"])), "ep a b\n");
    assert_eq!(
        stdout(&f.run(&["--entrypoint", "echo", "busybox:test", "x"])),
        "x\n"
    );
    let out = f.run(&["--entrypoint", "", "busybox:test", "echo", "reset"]);
    assert_eq!(stdout(&out), "reset\n", "{}", stderr(&out));
    // --entrypoint "" drops the image's CMD too: nothing to run.
    let out = f.run(&["--entrypoint", "", "busybox:test"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("no command specified"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn image_env_workdir_user_and_their_flags() {
    require_namespaces!();
    let f = Fixture::new(&["ENV FOO=from-image", "WORKDIR /srv/app", "USER app"]);
    let script = "echo $FOO; pwd; id -u; echo $HOME; echo $HOSTNAME | wc -c";
    let out = f.run(&["--network", "none", "busybox:test", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Hostname: 12 hex digits of the container id (and a newline).
    assert_eq!(stdout(&out), "from-image\n/srv/app\n1000\n/home/app\n13\n");
    let out = f.run(&[
        "-e",
        "FOO=flag",
        "-w",
        "/tmp",
        "-u",
        "0:0",
        "busybox:test",
        "sh",
        "-c",
        "echo $FOO; pwd; id -u",
    ]);
    assert_eq!(stdout(&out), "flag\n/tmp\n0\n", "{}", stderr(&out));
    // Empty -u, -w and --hostname are not given, as with docker: the
    // image's user and working directory, the default host name (never
    // root, `/` and an empty name).
    let out = f.run(&[
        "--network",
        "none",
        "-u",
        "",
        "-w",
        "",
        "--hostname",
        "",
        "busybox:test",
        "sh",
        "-c",
        "pwd; id -u; hostname | wc -c",
    ]);
    assert_eq!(stdout(&out), "/srv/app\n1000\n13\n", "{}", stderr(&out));
    // An environment entry with no name is refused, as by docker.
    for bad in ["=value", ""] {
        let out = f.run(&["-e", bad, "busybox:test", "true"]);
        assert!(!out.status.success(), "-e {bad:?}");
        assert!(
            stderr(&out).contains("invalid environment variable (no name)"),
            "{}",
            stderr(&out)
        );
    }
}

/// `--verbose` (not `-v`, a volume, as in `docker run`) says what runs.
#[test]
fn verbose_says_what_runs() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let out = f.run(&["busybox:test", "true"]);
    assert!(!stderr(&out).contains("running image="), "{}", stderr(&out));
    let out = f.run(&["--verbose", "busybox:test", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("running image=docker.io/library/busybox:test argv=[\"true\"]"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn network_none_shows_only_loopback() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let out = f.run(&["--network", "none", "busybox:test", "ls", "/sys/class/net"]);
    assert_eq!(stdout(&out), "lo\n", "{}", stderr(&out));
}

#[test]
fn deleting_inside_does_not_change_the_image() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let out = f.run(&["busybox:test", "rm", "/etc/motd"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = f.run(&["busybox:test", "cat", "/etc/motd"]);
    assert_eq!(stdout(&out), "welcome\n", "{}", stderr(&out));
}

#[test]
fn mounting_inside_fails() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let out = f.run(&[
        "busybox:test",
        "sh",
        "-c",
        "mkdir -p /mnt; mount -t tmpfs none /mnt",
    ]);
    assert_ne!(out.status.code(), Some(0));
    let out = f.run(&[
        "--security-opt",
        "seccomp=unconfined",
        "busybox:test",
        "sh",
        "-c",
        "mkdir -p /mnt; mount -t tmpfs none /mnt",
    ]);
    assert_ne!(out.status.code(), Some(0));
}

/// `--security-opt seccomp=unconfined` turns the seccomp profile off:
/// the process shows no filter, and `unshare -U`, which needs no
/// capability and only the profile refuses, works.
#[test]
fn seccomp_unconfined_turns_the_profile_off() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let script = "grep '^Seccomp:' /proc/self/status; unshare -U true && echo unshared";
    let out = f.run(&["busybox:test", "sh", "-c", script]);
    assert_eq!(stdout(&out), "Seccomp:\t2\n", "{}", stderr(&out));
    let out = f.run(&[
        "--security-opt",
        "seccomp=unconfined",
        "busybox:test",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(stdout(&out), "Seccomp:\t0\nunshared\n", "{}", stderr(&out));
}

/// `-v HOST:CTR:ro` binds read-only, `-v HOST:CTR` read-write.
#[test]
fn volumes_are_read_only_when_asked() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let host = f.dir.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    let touch = "touch /data/made 2>/dev/null && echo rw || echo ro";
    for (mode, seen) in [(":ro", "ro\n"), ("", "rw\n")] {
        let volume = format!("{}:/data{mode}", host.display());
        let out = f.run(&["-v", &volume, "busybox:test", "sh", "-c", touch]);
        assert_eq!(stdout(&out), seen, "{volume}: {}", stderr(&out));
    }
    assert!(host.join("made").is_file());
}

/// `:ro` reaches what is mounted under the volume's source too: a tmpfs
/// mounted at `<source>/sub` is read-only in the container (a bind
/// remounted read-only left it writable: a remount changes one mount).
/// The control: without `:ro` the same tmpfs takes the write.
#[test]
fn a_read_only_volume_is_read_only_below_too() {
    require_root!();
    let f = Fixture::new(&[]);
    let host = f.dir.path().join("tree");
    let sub = host.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&sub)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs on {}", sub.display());
    /// Unmounts the tmpfs when the test ends, even by a panic.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let unmount = Unmount(sub.clone());
    let touch = "touch /data/sub/made 2>/dev/null && echo rw || echo ro; \
                 touch /data/top 2>/dev/null && echo rw || echo ro";
    let mut seen = Vec::new();
    for mode in [":ro", ""] {
        let volume = format!("{}:/data{mode}", host.display());
        let out = f.run(&["-v", &volume, "busybox:test", "sh", "-c", touch]);
        seen.push((mode, stdout(&out), stderr(&out)));
    }
    let made = sub.join("made").is_file();
    drop(unmount);
    assert_eq!(seen[0].1, "ro\nro\n", ":ro: {}", seen[0].2);
    assert_eq!(seen[1].1, "rw\nrw\n", "read-write: {}", seen[1].2);
    assert!(made, "the read-write run's file is not on the host's tmpfs");
}

#[test]
fn image_user_owns_the_files_it_creates() {
    require_root!();
    let f = Fixture::new(&[]);
    let shared = f.dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let volume = format!("{}:/out", shared.display());
    let out = f.run(&[
        "-u",
        "app",
        "--volume",
        &volume,
        "busybox:test",
        "touch",
        "/out/made",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let meta = fs::metadata(shared.join("made")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
}

#[test]
fn exec_failures_have_dockers_codes_and_messages() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let out = f.run(&["busybox:test", "/x"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        stderr(&out).contains(r#"exec: "/x": no such file or directory"#),
        "{}",
        stderr(&out)
    );
    let out = f.run(&["busybox:test", "/bin/not-executable"]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    let out = f.run(&["-u", "ghost", "busybox:test", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let message = stderr(&out);
    assert!(
        message.contains("ghost") && message.contains("busybox:test"),
        "{message}"
    );
    f.assert_no_containers();
}

#[test]
fn missing_volume_source_is_refused_before_anything_starts() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let out = f.run(&[
        "--volume",
        "/no/such/kiln/path:/data",
        "busybox:test",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("/no/such/kiln/path"),
        "{}",
        stderr(&out)
    );
    f.assert_no_containers();
}

/// Signals reach the container's PID 1, as docker run's signal proxy
/// hands them on: SIGTERM, and the others a process can catch (SIGUSR1,
/// SIGHUP, SIGQUIT, a real-time one), whose traps decide the exit code.
#[test]
fn signals_reach_the_container() {
    use rustix::process::Signal;
    require_namespaces!();
    let f = Fixture::new(&[]);
    let sigrtmin = libc::SIGRTMIN();
    // SAFETY: a real-time signal number from glibc's own range.
    let realtime = unsafe { Signal::from_raw_unchecked(sigrtmin + 2) };
    // (`to_group`: sent to kiln's whole process group, as `timeout` or a
    // job control signal sends it: kiln's own processes survive it. Not
    // USR2, the runtime helper's signal that kiln died, which ends the
    // container.)
    for (signal, name, code, to_group) in [
        (Signal::TERM, "TERM", 42, false),
        (Signal::USR1, "USR1", 9, false),
        (Signal::HUP, "HUP", 3, false),
        (Signal::QUIT, "QUIT", 4, false),
        (realtime, "RTMIN+2", 5, false),
        (Signal::USR1, "USR1", 6, true),
    ] {
        let trapped = match name {
            "RTMIN+2" => (sigrtmin + 2).to_string(),
            other => other.to_string(),
        };
        let mut command = f.kiln();
        command
            .args(["run", "busybox:test", "sh", "-c"])
            .arg(format!(
                "trap 'exit {code}' {trapped}; echo ready; while true; do sleep 0.1; done"
            ))
            .stdout(Stdio::piped());
        if to_group {
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        // Killed and reaped if the test fails before kiln exits.
        let mut child = kiln_testsupport::ChildGuard::spawn(&mut command).unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        let pid = rustix::process::Pid::from_child(&child);
        match to_group {
            true => rustix::process::kill_process_group(pid, signal).unwrap(),
            false => rustix::process::kill_process(pid, signal).unwrap(),
        }
        // A hang guard, not a timing assertion: if the signal is not
        // forwarded the container loops forever, so kiln is killed and
        // the test fails.
        let status = child
            .wait_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("SIG{name} did not end kiln run: {e}"));
        assert_eq!(status.code(), Some(code), "SIG{name}: {status:?}");
        f.assert_no_containers();
    }
}

#[test]
fn timeout_kills_the_container() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let out = f.run(&["--timeout", "1", "busybox:test", "sleep", "600"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    f.assert_no_containers();
}

#[test]
fn stdin_only_with_interactive_and_a_terminal_with_tty() {
    require_namespaces!();
    let f = Fixture::new(&[]);
    let mut child = kiln_testsupport::ChildGuard::spawn(
        f.kiln()
            .args(["run", "-i", "busybox:test", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let out = child
        .wait_with_output_timeout(Duration::from_secs(60))
        .unwrap();
    assert_eq!(stdout(&out), "piped in\n");
    // Without -i the container's stdin is empty.
    let out = f.run(&["busybox:test", "cat"]);
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(0), ""));
    let out = f.run(&["-t", "busybox:test", "tty"]);
    assert_eq!(stdout(&out), "/dev/pts/0\r\n", "{}", stderr(&out));
    // -i -t with input that is no terminal is refused, as docker refuses
    // it, with its exit code 1 (its end of file would never reach the
    // terminal).
    let mut child = kiln_testsupport::ChildGuard::spawn(
        f.kiln()
            .args(["run", "-i", "-t", "busybox:test", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    drop(child.stdin.take());
    let out = child
        .wait_with_output_timeout(Duration::from_secs(60))
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stdin is not a terminal"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn rootless_user_runs_busybox_through_kiln() {
    require_root!();
    let (uid, gid) = kiln_testsupport::rootless_user().unwrap();
    // The image tar from a root fixture, readable by the user.
    let f = Fixture::new(&[]);
    let home = tempfile::tempdir().unwrap();
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // The binary where the user can reach it. A hard link, not a copy: a
    // copy's write descriptor, inherited by a concurrent test's fork, could
    // make running it fail with ETXTBSY.
    let kiln = home.path().join("kiln");
    if fs::hard_link(KILN, &kiln).is_err() {
        fs::copy(KILN, &kiln).unwrap();
    }
    let tar = home.path().join("rootfs.tar");
    fs::copy(f.dir.path().join("rootfs.tar"), &tar).unwrap();
    fs::set_permissions(&tar, fs::Permissions::from_mode(0o644)).unwrap();
    let user_home = home.path().join("home");
    fs::create_dir(&user_home).unwrap();
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
            .arg(&kiln)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = as_user(&["import", tar.to_str().unwrap(), "busybox:rootless"]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    // Root inside is the user outside: the first line of the uid map.
    let out = as_user(&[
        "run",
        "busybox:rootless",
        "sh",
        "-c",
        "id -u; head -1 /proc/self/uid_map",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("0"));
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", &uid.to_string(), "1"]);
    // An image user through the subordinate range, in its own network.
    let out = as_user(&[
        "run",
        "-u",
        "app",
        "--network",
        "none",
        "busybox:rootless",
        "sh",
        "-c",
        "id -u; touch /tmp/x && stat -c %u /tmp/x; ls /sys/class/net",
    ]);
    assert_eq!(stdout(&out), "1000\n1000\nlo\n", "{}", stderr(&out));
}
