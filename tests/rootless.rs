//! Rootless builds, whole: kiln run by an unprivileged user (with
//! subordinate id ranges, made by kiln-testsupport) enters a user
//! namespace of its own for the entire build, so that COPY --chown, layer
//! unpacking, overlay, cache mounts and USER all work, and the image is
//! the one root builds (same digest under SOURCE_DATE_EPOCH, with
//! `rewrite-timestamp=true`). As root,
//! `--isolation rootless` takes the same path.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{busybox_rootfs_tar, kiln_bin, kiln_command};

/// A multi-stage build with RUN, COPY --chown, a cache mount and USER.
const DOCKERFILE: &str = "FROM busybox AS base\n\
    RUN echo made > /made && mkdir /owned && chown 1000:1000 /owned\n\
    FROM busybox\n\
    COPY --from=base --chown=1000:1000 /made /home/app/made\n\
    COPY --from=base /owned /owned\n\
    RUN --mount=type=cache,target=/cache echo hit >> /cache/log && cp /cache/log /seen\n\
    USER app\n\
    RUN id -u > /tmp/whoami && stat -c %u:%g /home/app/made /owned > /tmp/owners\n";

const EPOCH: &str = "1700000000";

/// A temp dir every user may enter, with the context and a busybox tar.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let tar = dir.path().join("busybox.tar");
        busybox_rootfs_tar(&tar).unwrap();
        std::fs::set_permissions(tar, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Where the user can run it; a hard link leaves no write descriptor
        // around (a copy's could make running it fail with ETXTBSY).
        let bin = dir.path().join("kiln");
        if std::fs::hard_link(kiln_bin(), &bin).is_err() {
            std::fs::copy(kiln_bin(), &bin).unwrap();
        }
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let work = Work { dir };
        work.context("ctx", DOCKERFILE);
        work
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A directory `name` that `user` owns (a store of theirs).
    fn user_dir(&self, name: &str, user: (u32, u32)) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(user.0), Some(user.1)).unwrap();
        dir
    }

    /// A context `name` holding `dockerfile`, readable by every user.
    fn context(&self, name: &str, dockerfile: &str) -> PathBuf {
        let ctx = self.path(name);
        std::fs::create_dir(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        std::fs::set_permissions(&ctx, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = ctx.join("Dockerfile");
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
        ctx
    }

    /// `kiln --root ROOT ARGS…` under SOURCE_DATE_EPOCH, as root or (with
    /// `user`) as that uid and gid.
    fn kiln(&self, user: Option<(u32, u32)>, root: &Path, args: &[&str]) -> Output {
        self.command(user, root, args).output().unwrap()
    }

    /// The command [`Work::kiln`] runs.
    fn command(&self, user: Option<(u32, u32)>, root: &Path, args: &[&str]) -> Command {
        let mut command = match user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={gid}"),
                    "--clear-groups",
                ])
                .arg(self.path("kiln"));
                // kiln_command's environment, for the user's kiln.
                let reference = kiln_command();
                for (key, value) in reference.get_envs() {
                    match value {
                        Some(v) => c.env(key, v),
                        None => c.env_remove(key),
                    };
                }
                c
            }
            None => kiln_command(),
        };
        command
            .arg("--root")
            .arg(root)
            .args(args)
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .env("KILN_PROGRESS", "plain")
            .env_remove("XDG_RUNTIME_DIR");
        command
    }

    /// Imports busybox and builds the context: the image id, and stderr.
    fn build(&self, user: Option<(u32, u32)>, root: &Path, extra: &[&str]) -> (String, String) {
        let tar = self.path("busybox.tar");
        let import = self.kiln(
            user,
            root,
            &[
                "import",
                "--change",
                "CMD [\"sh\"]",
                tar.to_str().unwrap(),
                "busybox:latest",
            ],
        );
        assert!(
            import.status.success(),
            "{}",
            String::from_utf8_lossy(&import.stderr)
        );
        let ctx = self.path("ctx");
        let out_dir = root.with_extension("out");
        let output = format!("type=local,dest={}", out_dir.display());
        // Into the store too, named, so that the build prints the
        // image's id (buildx refuses --iidfile with a local output).
        let mut args = vec![
            "build",
            "-t",
            "rootless:built",
            "-o",
            "type=image,rewrite-timestamp=true",
            "-o",
            &output,
        ];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        let out = self.kiln(user, root, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "build failed:\n{stderr}");
        let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap();
        assert_eq!(read("seen"), "hit\n");
        assert_eq!(read("tmp/whoami"), "1000\n");
        // COPY without --chown makes root the owner, as BuildKit does.
        assert_eq!(read("tmp/owners"), "1000:1000\n0:0\n");
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(id.starts_with("sha256:"), "{id:?}");
        (id, stderr)
    }
}

#[test]
fn a_rootless_build_makes_the_image_root_makes() {
    kiln_testsupport::require_root!("root builds and a user made for the test");
    let user = kiln_testsupport::rootless_user().unwrap();
    let work = Work::new();
    let (root_id, root_err) = work.build(None, &work.path("root-store"), &[]);
    assert!(!root_err.contains("isolation"), "{root_err}");

    // As root, asked for: the same path a user takes.
    let (asked_id, asked_err) = work.build(
        None,
        &work.path("asked-store"),
        &["--isolation", "rootless"],
    );
    assert_eq!(asked_id, root_id);
    assert!(
        asked_err.contains("WARNING: isolation rootless (--isolation rootless)"),
        "{asked_err}"
    );
    // The mark an outer kiln puts on the kiln it starts in a user
    // namespace counts only inside one: from the caller's environment it
    // does not make `--isolation rootless` a root build.
    let ctx = work.path("ctx");
    let marked = work
        .command(
            None,
            &work.path("asked-store"),
            &["build", "--isolation", "rootless", ctx.to_str().unwrap()],
        )
        .env("KILN_IN_USERNS", "1")
        .output()
        .unwrap();
    let marked_err = String::from_utf8_lossy(&marked.stderr);
    assert!(marked.status.success(), "{marked_err}");
    assert!(
        marked_err.contains("WARNING: isolation rootless (--isolation rootless)"),
        "{marked_err}"
    );

    // The user's own store.
    let store = work.user_dir("user-store", user);
    work.user_dir("user-store.out", user);
    std::fs::write(work.path("user-store.iid"), "").unwrap();
    std::os::unix::fs::chown(work.path("user-store.iid"), Some(user.0), Some(user.1)).unwrap();
    let (user_id, user_err) = work.build(Some(user), &store, &[]);
    assert_eq!(user_id, root_id, "{user_err}");
    assert!(
        user_err.contains(&format!(
            "WARNING: isolation rootless: kiln runs as uid {}, not root",
            user.0
        )),
        "{user_err}"
    );
    // The store is the user's; what the image's other users own is the
    // user's subordinate ids.
    let (subuid, _) = kiln_testsupport::users::subid_range("/etc/subuid")
        .unwrap()
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&store).unwrap().uid(), user.0);
    let made = work.path("user-store.out/home/app/made");
    assert_eq!(std::fs::metadata(made).unwrap().uid(), subuid + 999);

    // A named isolation is that or an error, never weaker.
    let refused = work.kiln(
        Some(user),
        &store,
        &["build", "--isolation", "namespaces", "."],
    );
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains("--isolation namespaces needs root with CAP_SYS_ADMIN"),
        "{text}"
    );
    // chroot(2) needs root (tests/snapshotter.rs builds with it as root).
    let refused = work.kiln(Some(user), &store, &["build", "--isolation", "chroot", "."]);
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains(&format!(
            "--isolation chroot needs root with CAP_SYS_CHROOT, and kiln runs as uid {}",
            user.0
        )),
        "{text}"
    );
}

/// What the image's other users own in a user's store belongs to the
/// user's subordinate ids, in directories the user cannot enter outside
/// the user namespace; the user's automatic collection and `kiln prune`
/// still remove it.
#[test]
fn a_rootless_store_is_collected_by_its_user() {
    kiln_testsupport::require_root!("a user made for the test");
    let user = kiln_testsupport::rootless_user().unwrap();
    let work = Work::new();
    let store = work.user_dir("gc-store", user);
    let ctx = work.context(
        "gc-ctx",
        "FROM busybox\nARG N\n\
         RUN mkdir -p /private/sub && head -c 100000 /dev/urandom > /private/sub/data \
         && echo $N > /private/n && chown -R 1000:1000 /private && chmod 700 /private /private/sub\n",
    );
    let ok = |args: &[&str]| {
        let out = work.kiln(Some(user), &store, args);
        assert!(
            out.status.success(),
            "kiln {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let tar = work.path("busybox.tar");
    ok(&["import", tar.to_str().unwrap(), "busybox:latest"]);
    let build = |n: &str| {
        ok(&[
            "build",
            "-t",
            "app:latest",
            "--build-arg",
            &format!("N={n}"),
            ctx.to_str().unwrap(),
        ])
    };
    // The `N` of every snapshot that holds /private (read as root here).
    let kept = || -> Vec<String> {
        let mut found: Vec<String> = std::fs::read_dir(store.join("snapshots"))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("fs/private/n")).ok())
            .map(|n| n.trim().to_string())
            .collect();
        found.sort();
        found
    };
    let policy = |text: &str| {
        std::fs::write(store.join("gc.toml"), text).unwrap();
        std::os::unix::fs::chown(store.join("gc.toml"), Some(user.0), Some(user.1)).unwrap();
    };

    // The automatic collection after the user's build (in the foreground:
    // `kiln_command` sets KILN_GC) takes build 1's layer, which only its
    // cache record kept once the tag moved.
    policy("[gc]\nkeep-storage = \"1KB\"\nmin-free-space = \"0\"\n");
    build("1");
    build("2");
    let (subuid, _) = kiln_testsupport::users::subid_range("/etc/subuid")
        .unwrap()
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    let owners: Vec<u32> = std::fs::read_dir(store.join("snapshots"))
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.unwrap().path().join("fs/private")).ok())
        .map(|m| m.uid())
        .collect();
    assert_eq!(
        owners,
        [subuid + 999],
        "/private belongs to subordinate uid 1000"
    );
    assert_eq!(kept(), ["2"], "build 1's snapshot is collected");

    // `kiln prune --all` by the user, the collection off.
    policy("[gc]\nenabled = false\n");
    build("3");
    assert_eq!(kept(), ["2", "3"]);
    // `kiln system df` measures build 3's tree, new to the size cache.
    let df = ok(&["system", "df", "--format", "json"]);
    let df: serde_json::Value = serde_json::from_slice(&df.stdout).unwrap();
    assert!(df["Collectable"].as_u64().unwrap() > 100_000, "{df}");
    let out = ok(&["prune", "--all"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("snapshots: 1,"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(kept(), ["3"], "the tagged image's snapshot stays");
}

/// A rootless kiln is two processes (the one started, and the one in the
/// user namespace that builds); a signal to the one started reaches the
/// build as it does a kiln run by root: SIGTERM cancels it (exit 130),
/// SIGKILL ends it with nothing left running.
#[test]
fn signals_to_a_rootless_kiln_reach_its_build() {
    kiln_testsupport::require_root!("a user made for the test");
    let user = kiln_testsupport::rootless_user().unwrap();
    let work = Work::new();
    let store = work.user_dir("signal-store", user);
    std::fs::write(store.join("gc.toml"), "[gc]\nenabled = false\n").unwrap();
    let ctx = work.context(
        "signal-ctx",
        "FROM busybox\nRUN echo started && sleep 600\n",
    );
    let tar = work.path("busybox.tar");
    let import = work.kiln(
        Some(user),
        &store,
        &["import", tar.to_str().unwrap(), "busybox"],
    );
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    // The user's processes whose command line names the store: the two
    // kilns, the container's sleep is found by its own. (Only the user's:
    // another `sleep 600` on the machine is none of this test's.)
    let uid_line = format!("Uid:\t{}\t", user.0);
    let running = || -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            if !status.lines().any(|l| l.starts_with(&uid_line)) {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(store.to_str().unwrap()) || cmdline.contains("sleep 600") {
                found.push(cmdline);
            }
        }
        found
    };
    let started = |log: &Path| -> std::process::Child {
        let mut child = work
            .command(
                Some(user),
                &store,
                &["build", "--no-cache", ctx.to_str().unwrap()],
            )
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        // Until the RUN has started (a hang guard, not a timing).
        for _ in 0..600 {
            if std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains(" started")
            {
                return child;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the RUN never started: {}",
            std::fs::read_to_string(log).unwrap()
        );
    };
    let gone = || {
        for _ in 0..100 {
            if running().is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("still running: {:?}", running());
    };

    let log = work.path("term.log");
    let mut child = started(&log);
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    // Waited for with a hang guard: a SIGTERM the build never sees would
    // leave it sleeping.
    let mut status = None;
    for _ in 0..300 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("SIGTERM did not end the build: {text}");
    };
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(text.contains("build canceled by SIGTERM"), "{text}");
    gone();

    let mut child = started(&work.path("kill.log"));
    child.kill().unwrap();
    child.wait().unwrap();
    gone();
}
