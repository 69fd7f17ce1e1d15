//! The copying snapshotter, chosen for real: a store on an overlayfs (one
//! this test mounts, as a container's own root filesystem is) cannot hold
//! overlay's upper dirs, so kiln copies each RUN's layers and compares
//! them afterwards. The image must be the one the overlay snapshotter
//! makes (same id under SOURCE_DATE_EPOCH with `rewrite-timestamp=true`): files added, changed and
//! deleted (whiteouts), a directory replaced (opaque), modes, owners, a
//! symlink retargeted, a fifo, mounts whose targets the image lacks
//! (their stubs leave no trace), a cache mount, a WORKDIR, and an
//! /etc/resolv.conf that is a symlink to where nothing is (what the RUN
//! mount of resolv.conf makes at its end leaves no trace either).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{busybox_rootfs_tar, kiln_command, run_ok};

const EPOCH: &str = "1700000000";

const DOCKERFILE: &str = "FROM busybox AS base\n\
    RUN mkdir -p /d/sub /r /run && echo a > /d/f && echo keep > /r/k && echo x > /m \
        && echo gone > /gone && ln -s /m /link && echo f > /x && touch /d/sub/s\n\
    RUN echo more >> /m && rm /gone && rm -rf /r && mkdir /r && echo new > /r/n \
        && chmod 700 /d && chown 1000:1000 /d/f && rm /link && ln -s /d /link \
        && rm -rf /d/sub && rm /x && mkdir /x && mkfifo /p && rm /etc/group \
        && chmod 640 /etc/passwd && mkdir /tmp/t && touch /tmp/t/f && rm -r /tmp/t\n\
    COPY etc-link/ /etc/\n\
    RUN test -f /etc/resolv.conf && echo resolved > /resolved\n\
    RUN --mount=type=cache,target=/var/cache/new/here echo hit >> /var/cache/new/here/log \
        && cp /var/cache/new/here/log /seen\n\
    RUN --mount=type=bind,source=ctx.txt,target=/opt/in/ctx.txt cp /opt/in/ctx.txt /copied\n\
    WORKDIR /w/made\n\
    RUN --mount=type=tmpfs,target=/scratch/t pwd > here && echo t > /scratch/t/x\n\
    FROM busybox\n\
    COPY --from=base --chown=1000:1000 /m /home/app/m\n\
    RUN --mount=from=base,target=/b,source=/r cp /b/n /from-base && rm /bin/ls\n";

/// An overlayfs mounted on `dir/merged` (lower, upper and work dirs
/// beside it), unmounted on drop.
struct OverlayMount {
    merged: PathBuf,
}

impl OverlayMount {
    fn new(dir: &Path) -> OverlayMount {
        for name in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            dir.join("lower").display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let merged = dir.join("merged");
        run_ok(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(&merged),
        );
        OverlayMount { merged }
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
    }
}

/// `kiln --root ROOT ARGS…` under SOURCE_DATE_EPOCH: (success, stdout, stderr).
fn kiln_at(root: &Path, args: &[&str]) -> (bool, String, String) {
    let out = kiln_command()
        .arg("--root")
        .arg(root)
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env("KILN_PROGRESS", "plain")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Imports busybox into `root` and builds `ctx` there, its base stage
/// and then the whole: (image ids, stderr of the first build).
fn build(root: &Path, work: &Path, ctx: &Path) -> (Vec<String>, String) {
    let tar = work.join("busybox.tar");
    let (ok, _, err) = kiln_at(root, &["import", tar.to_str().unwrap(), "busybox:latest"]);
    assert!(ok, "import: {err}");
    let iid = root.with_extension("iid");
    let mut ids = Vec::new();
    let mut first_err = None;
    for target in [&["--target", "base"][..], &[]] {
        // The RUNs' files dated as the epoch in both stores.
        let mut args = vec![
            "build",
            "--output",
            "type=image,rewrite-timestamp=true",
            "--iidfile",
            iid.to_str().unwrap(),
        ];
        args.extend_from_slice(target);
        args.push(ctx.to_str().unwrap());
        let (ok, _, err) = kiln_at(root, &args);
        assert!(ok, "build {args:?} in {}: {err}", root.display());
        ids.push(std::fs::read_to_string(&iid).unwrap());
        first_err.get_or_insert(err);
    }
    (ids, first_err.unwrap_or_default())
}

/// The names in each layer tar the build made (stored as plain tars,
/// named by their diff ids; the imported base is not) of image `id` in
/// the store at `root`.
fn layer_names(root: &Path, id: &str) -> Vec<String> {
    let blob = |digest: &str| {
        root.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(id)).unwrap()).unwrap();
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| blob(d.as_str().unwrap()))
        .filter(|path| path.exists())
        .map(|path| run_ok(Command::new("tar").arg("-tf").arg(path)))
        .collect()
}

#[test]
fn a_store_on_overlayfs_builds_with_copies_the_image_overlay_builds() {
    kiln_testsupport::require_root!("mounts an overlayfs and builds with namespaces");
    let work = tempfile::tempdir().unwrap();
    busybox_rootfs_tar(&work.path().join("busybox.tar")).unwrap();
    let ctx = work.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(ctx.join("ctx.txt"), "from the context\n").unwrap();
    // systemd-resolved's /etc/resolv.conf: a symlink to where nothing is.
    std::fs::create_dir(ctx.join("etc-link")).unwrap();
    std::os::unix::fs::symlink(
        "../run/systemd/resolve/stub-resolv.conf",
        ctx.join("etc-link/resolv.conf"),
    )
    .unwrap();

    let (overlay_ids, overlay_err) = build(&work.path().join("store"), work.path(), &ctx);
    assert!(!overlay_err.contains("snapshotter copy"), "{overlay_err}");

    let mount = OverlayMount::new(&work.path().join("ovl"));
    let store = mount.merged.join("store");
    let (copy_ids, copy_err) = build(&store, work.path(), &ctx);
    let warnings: Vec<&str> = copy_err
        .lines()
        .filter(|l| l.contains("snapshotter copy:"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{copy_err}");
    assert!(warnings[0].contains("overlay filesystem"), "{copy_err}");
    let (_, info, _) = kiln_at(&store, &["info"]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("snapshotter:") && l.contains("copy")),
        "{info}"
    );
    let (_, info, _) = kiln_at(&work.path().join("store"), &["info"]);
    assert!(info.contains("snapshotter:        overlay"), "{info}");

    // The changes the test means to make are in the layers.
    let layers = copy_ids
        .iter()
        .flat_map(|id| layer_names(&store, id))
        .collect::<Vec<_>>()
        .join("\n");
    for name in [
        ".wh.gone",
        "etc/.wh.group",
        "r/.wh..wh..opq",
        "x/.wh..wh..opq",
        "d/.wh.sub",
        "p",
        "seen",
        "copied",
        "w/made/here",
        "bin/.wh.ls",
        "etc/resolv.conf",
        "resolved",
    ] {
        assert!(
            layers.lines().any(|l| l == name || l == format!("{name}/")),
            "{name} missing from the layers:\n{layers}"
        );
    }
    for stub in ["var/", "opt/", "scratch/", "tmp/t/", "run/systemd/"] {
        assert!(
            !layers.lines().any(|l| l == stub),
            "a mount point's stub {stub} is in a layer:\n{layers}"
        );
    }
    assert_eq!(
        copy_ids, overlay_ids,
        "the copying snapshotter's images (base stage, whole) differ from overlay's"
    );
}

/// The multi-stage build of tests/in_container.rs, the RUN's own pid, and
/// what chroot isolation places instead of mounting: a cache, a tmpfs and
/// /dev (its devices used, written to).
const CHROOT_DOCKERFILE: &str = "FROM busybox AS base\n\
    RUN echo made > /made && mkdir /owned && chown 1000:1000 /owned\n\
    RUN echo $$ > /pid && ls /proc > /proc-entries\n\
    FROM busybox\n\
    COPY --from=base --chown=1000:1000 /made /home/app/made\n\
    COPY --from=base /owned /owned\n\
    RUN --mount=type=cache,target=/cache --mount=type=tmpfs,target=/tmp/t \
        echo hit >> /cache/log && cp /cache/log /seen && echo t > /tmp/t/f \
        && echo x > /dev/null && head -c 4 /dev/urandom | wc -c > /random-bytes \
        && echo shm > /dev/shm/f\n\
    USER app\n\
    RUN id -u > /tmp/whoami && stat -c %u:%g /home/app/made /owned > /tmp/owners\n";

/// `--isolation chroot` (as root on the host): no namespaces, each RUN
/// chrooted into a copy, as the step's user, the same image as with
/// namespaces (its cache, tmpfs and /dev placed in the copy and taken out:
/// nothing of them in a layer); the RUN is not PID 1 of a namespace and
/// sees no /proc; the cache persists; a RUN that needs what chroot cannot
/// do is refused, naming its line.
#[test]
fn isolation_chroot_builds_the_image_namespaces_build() {
    kiln_testsupport::require_root!("chroot(2) and namespaces");
    let work = tempfile::tempdir().unwrap();
    busybox_rootfs_tar(&work.path().join("busybox.tar")).unwrap();
    let ctx = work.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), CHROOT_DOCKERFILE).unwrap();
    let (ns_ids, ns_err) = build(&work.path().join("ns-store"), work.path(), &ctx);
    assert!(!ns_err.contains("isolation"), "{ns_err}");

    let store = work.path().join("chroot-store");
    let tar = work.path().join("busybox.tar");
    let (ok, _, err) = kiln_at(&store, &["import", tar.to_str().unwrap(), "busybox:latest"]);
    assert!(ok, "{err}");
    let mut chroot_ids = Vec::new();
    for target in [&["--target", "base"][..], &[]] {
        let iid = work.path().join("chroot.iid");
        let mut args = vec![
            "build",
            "--isolation",
            "chroot",
            "--output",
            "type=image,rewrite-timestamp=true",
            "--iidfile",
            iid.to_str().unwrap(),
        ];
        args.extend_from_slice(target);
        args.push(ctx.to_str().unwrap());
        let (ok, _, err) = kiln_at(&store, &args);
        assert!(ok, "{args:?}: {err}");
        let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("WARNING")).collect();
        assert_eq!(warnings.len(), 1, "{err}");
        assert!(
            warnings[0].starts_with(
                "WARNING: isolation chroot (--isolation chroot): RUN steps run chrooted"
            ),
            "{err}"
        );
        chroot_ids.push(std::fs::read_to_string(&iid).unwrap());
    }
    // The base stage's pid and /proc differ by design: compare the final
    // image, and the base stage's files.
    assert_eq!(chroot_ids[1], ns_ids[1], "the final images differ");
    let out = |store: &Path, name: &str| {
        let dest = work.path().join(name);
        let (ok, _, err) = kiln_at(
            store,
            &[
                "build",
                "--isolation",
                if name.starts_with("chroot") {
                    "chroot"
                } else {
                    "auto"
                },
                "--target",
                "base",
                "-o",
                &format!("type=local,dest={}", dest.display()),
                ctx.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        dest
    };
    let (ns_out, chroot_out) = (
        out(&work.path().join("ns-store"), "ns-out"),
        out(&store, "chroot-out"),
    );
    let read = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(read(&ns_out, "pid"), "1\n");
    assert_ne!(read(&chroot_out, "pid"), "1\n");
    assert_ne!(read(&ns_out, "proc-entries"), "");
    assert_eq!(read(&chroot_out, "proc-entries"), "");
    assert_eq!(read(&chroot_out, "made"), "made\n");

    // The final stage's files: the cache's, /dev's; a second build (no
    // cache) finds the first one's entry in the cache mount.
    let final_out = |name: &str, no_cache: bool| {
        let dest = work.path().join(name);
        let mut args = vec!["build", "--isolation", "chroot"];
        if no_cache {
            args.push("--no-cache");
        }
        let output = format!("type=local,dest={}", dest.display());
        // As the builds above (their steps' keys, their cache).
        args.extend(["-o", "type=image,rewrite-timestamp=true"]);
        args.extend(["-o", &output, ctx.to_str().unwrap()]);
        let (ok, _, err) = kiln_at(&store, &args);
        assert!(ok, "{err}");
        dest
    };
    let first = final_out("chroot-final", false);
    assert_eq!(read(&first, "seen"), "hit\n");
    assert_eq!(read(&first, "random-bytes"), "4\n");
    for absent in ["dev/null", "dev/shm", "tmp/t", "cache"] {
        assert!(!first.join(absent).exists(), "/{absent} is in the image");
    }
    let second = final_out("chroot-final-again", true);
    assert_eq!(read(&second, "seen"), "hit\nhit\n");

    // A RUN that needs what chroot cannot do is refused, naming its line.
    for (mount, what) in [
        ("type=bind,target=/b", "--mount type=bind or ssh"),
        ("type=cache,target=/c,ro", "a read-only cache mount"),
        ("type=tmpfs,target=/t,size=1m", "type=tmpfs with size="),
        ("type=tmpfs,target=/t,ro", "a read-only tmpfs mount"),
    ] {
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM busybox\nRUN --mount={mount} true\n"),
        )
        .unwrap();
        let (ok, _, err) = kiln_at(
            &store,
            &["build", "--isolation", "chroot", ctx.to_str().unwrap()],
        );
        assert!(!ok);
        assert!(
            err.contains(&format!("error: line 2: RUN --mount={mount} true"))
                && err.contains(what)
                && err.contains("cannot work with --isolation chroot"),
            "{err}"
        );
    }
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=cache,target=/a,id=c --mount=type=cache,target=/b,id=c true\n",
    )
    .unwrap();
    let (ok, _, err) = kiln_at(
        &store,
        &["build", "--isolation", "chroot", ctx.to_str().unwrap()],
    );
    assert!(
        !ok && err.contains("one cache mounted twice in a RUN"),
        "{err}"
    );
    let (ok, _, err) = kiln_at(
        &store,
        &[
            "build",
            "--isolation",
            "chroot",
            "--network",
            "none",
            ctx.to_str().unwrap(),
        ],
    );
    assert!(
        !ok && err.contains("--network none needs a network namespace"),
        "{err}"
    );
}

/// `--isolation chroot` refuses, naming the line, what it cannot do as
/// asked: a hostname from `BUILDKIT_SANDBOX_HOSTNAME` (no UTS namespace)
/// and `RUN --security=insecure`; and it refuses (these, and mounts)
/// before the first step, so a RUN before the refused one never runs.
#[test]
fn isolation_chroot_refuses_hostname_and_insecure_before_any_step() {
    kiln_testsupport::require_root!("chroot(2)");
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("busybox.tar");
    busybox_rootfs_tar(&tar).unwrap();
    let store = work.path().join("store");
    let (ok, _, err) = kiln_at(&store, &["import", tar.to_str().unwrap(), "busybox:latest"]);
    assert!(ok, "{err}");
    let ctx = work.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    let build = |dockerfile: &str, extra: &[&str]| {
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        let mut args = vec!["build", "--isolation", "chroot"];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        kiln_at(&store, &args)
    };
    let refused = |err: &str, line: &str, what: &str| {
        assert!(
            err.contains(&format!("error: line {line}"))
                && err.contains(what)
                && err.contains("cannot work with --isolation chroot"),
            "{err}"
        );
    };

    // The hostname is every RUN's: the first is refused.
    let (ok, _, err) = build(
        "FROM busybox\nWORKDIR /w\nRUN hostname\n",
        &["--build-arg", "BUILDKIT_SANDBOX_HOSTNAME=builder"],
    );
    assert!(!ok);
    refused(&err, "3: RUN hostname", "BUILDKIT_SANDBOX_HOSTNAME");

    // The earlier RUN would print RAN-42 (the sum is not in its text).
    let (ok, _, err) = build(
        "FROM busybox\nRUN echo RAN-$((40+2))\nRUN --security=insecure id\n",
        &["--allow", "security.insecure"],
    );
    assert!(!ok);
    refused(&err, "3: RUN --security=insecure id", "--security=insecure");
    assert!(
        !err.contains("RAN-42"),
        "line 2 ran before line 3 was refused:\n{err}"
    );

    // So is a mount, before any cache is locked or stage materialised.
    let (ok, _, err) = build(
        "FROM busybox\nRUN echo RAN-$((40+2))\nRUN --mount=type=bind,target=/t true\n",
        &[],
    );
    assert!(!ok);
    refused(&err, "3: RUN --mount=type=bind", "--mount type=bind");
    assert!(
        !err.contains("RAN-42"),
        "line 2 ran before line 3 was refused:\n{err}"
    );

    // Without either, the same RUN runs (and its output is shown).
    let (ok, _, err) = build("FROM busybox\nRUN echo RAN-$((40+2))\n", &[]);
    assert!(ok && err.contains("RAN-42"), "{err}");

    // No PID namespace ends a RUN's processes: what it left running,
    // in a session of its own too, is killed when it ends (else they
    // would hold its output open and the build would wait for them). Run
    // where no cgroup can be made, as in a pod, so that no cgroup's
    // cleanup kills them instead.
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN sleep 4301 & setsid sleep 4302 & setsid sh -c 'sleep 4303 &' ; sleep 0.2\n",
    )
    .unwrap();
    let script = format!(
        "mount -t tmpfs -o ro none /sys/fs/cgroup && exec timeout 60 {} --root {} build \
         --isolation chroot {}",
        common::kiln_bin().display(),
        store.display(),
        ctx.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Two RUNs in parallel stages taking the same caches in opposite
    // orders: under chroot a RUN holds its caches alone, never one while
    // it waits for another, so both finish; each one's writes are in the
    // caches. And a cache reached twice from one RUN (two seeds with one
    // content) is refused, naming it.
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox AS a\n\
         RUN --mount=type=cache,id=x,target=/x --mount=type=cache,id=y,target=/y \
             sleep 0.3 && echo a >> /x/log && echo a >> /y/log && touch /a\n\
         FROM busybox AS b\n\
         RUN --mount=type=cache,id=y,target=/y --mount=type=cache,id=x,target=/x \
             sleep 0.3 && echo b >> /x/log && echo b >> /y/log && touch /b\n\
         FROM busybox\n\
         COPY --from=a /a /a\n\
         COPY --from=b /b /b\n\
         RUN --mount=type=cache,id=x,target=/x --mount=type=cache,id=y,target=/y \
             sort /x/log > /x-log && sort /y/log > /y-log\n",
    )
    .unwrap();
    let dest = work.path().join("parallel-out");
    let out = std::process::Command::new("timeout")
        .arg("120")
        .arg(common::kiln_bin())
        .args([
            "--root",
            store.to_str().unwrap(),
            "build",
            "--isolation",
            "chroot",
        ])
        .args(["-o", &format!("type=local,dest={}", dest.display())])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for log in ["x-log", "y-log"] {
        assert_eq!(std::fs::read_to_string(dest.join(log)).unwrap(), "a\nb\n");
    }
    let (ok, _, err) = build(
        "FROM busybox AS a\nFROM busybox AS b\nFROM busybox\n\
         RUN --mount=type=cache,id=c,from=a,target=/1 --mount=type=cache,id=c,from=b,target=/2 true\n",
        &[],
    );
    assert!(
        !ok && err.contains("line 4") && err.contains("twice, which --isolation chroot cannot do"),
        "{err}"
    );

    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("sleep 430"))
        .collect();
    assert!(left.is_empty(), "left running after the build: {left:?}");
}

/// A mount target reached through an image's absolute symlink (`/via` →
/// a directory of the image whose path is also a directory on the host):
/// the stubs made for it
/// inside the copy are removed from the copy, and nothing on the host
/// that the symlink names outside the container is touched.
#[test]
fn stubs_behind_an_image_symlink_are_removed_inside_the_root_only() {
    kiln_testsupport::require_root!("mounts an overlayfs and builds with namespaces");
    let work = tempfile::tempdir().unwrap();
    busybox_rootfs_tar(&work.path().join("busybox.tar")).unwrap();
    // On the host: what a stub's path would be if the symlink were
    // followed outside the root.
    let trap = work.path().join("host-trap");
    std::fs::create_dir_all(trap.join("stubdir/t")).unwrap();
    let ctx = work.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM busybox\n\
             RUN mkdir -p {trap} && ln -s {trap} /via\n\
             RUN --mount=type=tmpfs,target=/via/stubdir/t touch /via/stubdir/t/x\n",
            trap = trap.display()
        ),
    )
    .unwrap();
    let mount = OverlayMount::new(&work.path().join("ovl"));
    let store = mount.merged.join("store");
    let tar = work.path().join("busybox.tar");
    let (ok, _, err) = kiln_at(&store, &["import", tar.to_str().unwrap(), "busybox:latest"]);
    assert!(ok, "import: {err}");
    let iid = work.path().join("iid");
    let (ok, _, err) = kiln_at(
        &store,
        &[
            "build",
            "--iidfile",
            iid.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(err.contains("snapshotter copy:"), "{err}");
    assert!(
        trap.join("stubdir/t").is_dir(),
        "the host's {} was removed",
        trap.join("stubdir/t").display()
    );
    let id = std::fs::read_to_string(&iid).unwrap();
    let layers = layer_names(&store, &id).join("\n");
    assert!(
        !layers.contains("stubdir"),
        "a stub is in a layer:\n{layers}"
    );
}
