//! Helpers for the end-to-end tests: the `kiln` binary, running it (with
//! the host's docker configuration kept out), and a busybox root filesystem
//! tar built from the host's static busybox (`busybox-static`, installed by
//! scripts/setup) by kiln-testsupport; waiting for a log line, the
//! processes with an argument, what a build left in the store's scratch.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `kiln` binary cargo built for these tests.
pub fn kiln_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// `kiln ARGS…` with `DOCKER_CONFIG` pointing at an empty directory (the
/// host's `~/.docker/config.json` and its credential helpers take no part),
/// no `KILN_ROOT`, `KILN_LOG` or registry timeouts from the environment, and
/// the automatic collection after a build run in the build's own process
/// (`KILN_GC=foreground`): a test sees the store as the build left it, with
/// no collection running behind its back; and no registry configuration
/// file.
pub fn kiln_command() -> Command {
    let mut command = Command::new(kiln_bin());
    command
        .env("KILN_GC", "foreground")
        .env("DOCKER_CONFIG", kiln_testsupport::empty_docker_config())
        .env_remove("KILN_ROOT")
        .env_remove("KILN_LOG")
        .env_remove("KILN_REGISTRY_TIMEOUT")
        .env_remove("KILN_REGISTRY_SPEED_LIMIT")
        .env_remove("KILN_REGISTRY_SPEED_TIME")
        // The default --platform of a build, when set.
        .env_remove("DOCKER_DEFAULT_PLATFORM")
        // No registry configuration file (not the host's default one).
        .env("KILN_REGISTRY_CONFIG", "");
    command
}

/// `kiln --root ROOT ARGS…`, with progress as plain lines (see [`kiln_command`]).
pub fn kiln(root: &Path, args: &[&str]) -> Output {
    kiln_command()
        .arg("--root")
        .arg(root)
        .args(args)
        .env("KILN_PROGRESS", "plain")
        .output()
        .expect("run kiln")
}

/// [`kiln`] with buildx's `BUILDX_METADATA_WARNINGS=true`: a build's
/// `--metadata-file` holds its warnings.
pub fn kiln_with_metadata_warnings(root: &Path, args: &[&str]) -> Output {
    kiln_command()
        .arg("--root")
        .arg(root)
        .args(args)
        .env("KILN_PROGRESS", "plain")
        .env("BUILDX_METADATA_WARNINGS", "true")
        .output()
        .expect("run kiln")
}

/// A metadata file's `buildx.build.warnings` as (the first line of the
/// warning's range, its `short` text decoded from base64), checking that
/// each is a BuildKit `VertexWarning` of level 1 whose `sourceInfo`, when
/// it has a range, holds `dockerfile`'s text.
pub fn metadata_warnings(meta: &serde_json::Value, dockerfile: &str) -> Vec<(Option<u64>, String)> {
    use base64::Engine as _;
    let decode = |value: &serde_json::Value| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("a base64 string"))
            .expect("base64");
        String::from_utf8(bytes).expect("UTF-8")
    };
    let warnings = meta["buildx.build.warnings"].as_array().expect("warnings");
    let read = |w: &serde_json::Value| {
        assert_eq!(w["level"], 1, "{w}");
        let line = w["range"][0]["start"]["line"].as_u64();
        if line.is_some() {
            assert_eq!(decode(&w["sourceInfo"]["data"]), dockerfile, "{w}");
            assert_eq!(w["sourceInfo"]["language"], "Dockerfile", "{w}");
        }
        (line, decode(&w["short"]))
    };
    warnings.iter().map(read).collect()
}

/// Like [`kiln`] but panics, showing stderr, unless it succeeds; returns stdout.
pub fn kiln_ok(root: &Path, args: &[&str]) -> String {
    let out = kiln(root, args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and panics with its stderr unless it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where the static busybox lives on this machine.
pub fn busybox_path() -> PathBuf {
    kiln_testsupport::busybox_path().unwrap()
}

/// Lays out the busybox root filesystem of [`kiln_testsupport::BusyboxRootfs`]
/// in `dir`, with empty `/proc`, `/sys`, `/dev` and `/usr/bin`.
pub fn busybox_rootfs_dir(dir: &Path) -> Result<(), kiln_testsupport::TestSupportError> {
    kiln_testsupport::BusyboxRootfs::with_mount_points().create_dir(dir)
}

/// Writes that root filesystem as a tar to `path`, deterministically
/// (sorted entries, mtimes 0).
pub fn busybox_rootfs_tar(path: &Path) -> Result<(), kiln_testsupport::TestSupportError> {
    kiln_testsupport::BusyboxRootfs::with_mount_points().write_tar(path)
}

/// Waits (bounded, against a hang) until `log` holds `text`.
pub fn wait_for_text(log: &Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = std::fs::read_to_string(log).unwrap_or_default();
        if seen.contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "never printed {text:?}:\n{seen}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose command line holds `word` as an argument.
pub fn processes_with_argument(word: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|arg| arg == word.as_bytes()) {
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}

/// What the store's `builds/` holds: scratch of running processes, or of
/// dead ones that no build has taken yet.
pub fn scratch_left(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("builds"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A store with `busybox:latest` imported from kiln-testsupport's busybox
/// root filesystem (users root, app = 1000, nobody = 65534; `CMD ["sh"]`
/// as docker.io's busybox has; the tar stays beside the store as
/// `busybox.tar`), and room for contexts beside it. Test files add their
/// own build helpers to it.
pub struct BusyboxStore {
    pub dir: tempfile::TempDir,
}

impl BusyboxStore {
    pub fn new() -> BusyboxStore {
        BusyboxStore::new_in(&std::env::temp_dir())
    }

    /// Like [`BusyboxStore::new`], with the store and scratch under
    /// `parent` (a tmpfs, a small filesystem made for the test).
    pub fn new_in(parent: &Path) -> BusyboxStore {
        let dir = tempfile::tempdir_in(parent).expect("tempdir");
        let tar = dir.path().join("busybox.tar");
        busybox_rootfs_tar(&tar).expect("busybox tar");
        let fixture = BusyboxStore { dir };
        kiln_ok(
            &fixture.root(),
            &[
                "import",
                "--change",
                "CMD [\"sh\"]",
                tar.to_str().expect("utf-8 path"),
                "busybox:latest",
            ],
        );
        fixture
    }

    /// The store (`--root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A new directory `name` beside the store.
    pub fn dir(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("create dir");
        path
    }

    /// A context directory `name` holding `files`.
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.dir(name);
        for (path, content) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("create dir");
            std::fs::write(path, content).expect("write context file");
        }
        dir
    }
}

/// `kiln login` to the registry `host` as `user` with `password` (read
/// from standard input), trusting the CA certificate `ca`, into the docker
/// configuration directory `docker_config`; panics unless it succeeds.
pub fn login(docker_config: &Path, host: &str, user: &str, password: &str, ca: &Path) {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut login = Command::new(kiln_bin())
        .env("DOCKER_CONFIG", docker_config)
        .args(["login", "-u", user, "--password-stdin", "--ca-cert"])
        .arg(ca)
        .arg(host)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln login");
    let mut stdin = login.stdin.take().expect("kiln login's stdin");
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    drop(stdin);
    let out = login.wait_with_output().expect("wait for kiln login");
    assert!(out.status.success(), "kiln login: {}", text(&out));
}

/// The status, stdout and stderr of `out`, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
