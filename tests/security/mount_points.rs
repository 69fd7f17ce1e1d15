//! Issue: an image's symlink sent a RUN mount's mount point to the host.
//! With `/run/secrets` a symlink to a host directory that the image does
//! not have, `RUN --mount=type=secret,id=tok` made its mount point,
//! `<that directory>/tok`, on the host: `mkdir -p` of the mount point's
//! directory took the symlink to the host's directory for the directory,
//! and the file was then created through it (and a symlinked volume
//! target was mounted on the host path, out of the container's sight).
//!
//! The symlink is now followed inside the container's root, as runc
//! follows it: the mount point is made at that path in the container, the
//! RUN reads the secret through the symlink, and the host directory is as
//! it was. The control: the same build with the symlink aimed at a
//! directory the image has.

use std::path::Path;

use crate::common::kiln;
use crate::{require_namespaces, text, Fixture};

/// Builds `dockerfile` in a new context `name`, with the secret `tok`
/// (`s3cret`) given, without the cache.
fn build_with_secret(fixture: &Fixture, name: &str, dockerfile: &str) -> std::process::Output {
    let secret = fixture.dir(&format!("{name}-secret")).join("tok");
    std::fs::write(&secret, "s3cret\n").expect("write the secret");
    let context = fixture.context(name, &[("Dockerfile", dockerfile)]);
    kiln(
        &fixture.root(),
        &[
            "build",
            "--no-cache",
            "--secret",
            &format!("id=tok,src={}", secret.display()),
            context.to_str().expect("utf-8 path"),
        ],
    )
}

/// Builds a busybox image whose `/run/secrets` is a symlink to `aim`, then
/// a RUN that reads the secret `tok` from its default target.
fn build_with_secret_under(fixture: &Fixture, name: &str, aim: &Path) -> std::process::Output {
    let dockerfile = format!(
        "FROM busybox:latest\n\
         RUN mkdir -p /run && ln -s {} /run/secrets\n\
         RUN --mount=type=secret,id=tok cat /run/secrets/tok\n",
        aim.display()
    );
    build_with_secret(fixture, name, &dockerfile)
}

#[test]
fn an_image_symlink_cannot_send_a_secret_mount_point_to_the_host() {
    require_namespaces!();
    let fixture = Fixture::new();
    // A host directory the image does not have.
    let host_dir = fixture.dir("host-dir");
    std::fs::write(host_dir.join("existing"), "host\n").expect("write");
    let out = build_with_secret_under(&fixture, "escape", &host_dir);
    let names: Vec<_> = std::fs::read_dir(&host_dir)
        .expect("host dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["existing"], "{}", text(&out));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("s3cret"),
        "{}",
        text(&out)
    );

    // Control: aimed at a directory the image has, the same build works.
    let out = build_with_secret_under(&fixture, "inside", Path::new("/tmp"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("s3cret"),
        "{}",
        text(&out)
    );
}

/// Issue: the masks over /proc files were bound from `<root>/dev/null` by
/// path, after the RUN's mounts: a mount over /dev holding a `null` that
/// is a symlink to a host file had that host file bound, writable, over
/// /proc/interrupts, /proc/keys, /proc/kcore and /proc/timer_list (the
/// init has not pivoted then, so the symlink was followed on the host).
/// The container's /dev/null is now opened before the RUN's mounts and
/// the masks are bound from it. The RUN's writes go to the null device:
/// the host file keeps its bytes, and nothing of it is read.
#[test]
fn a_mount_over_dev_cannot_aim_the_masks_at_the_host() {
    require_namespaces!();
    let fixture = Fixture::new();
    let secret = fixture.dir("host-files").join("secret");
    std::fs::write(&secret, "host-secret\n").expect("write the host file");
    let context = fixture.context(
        "dev-over",
        &[(
            "Dockerfile",
            "FROM busybox:latest\n\
             RUN --mount=type=bind,source=devdir,target=/dev \
             cat /proc/interrupts /proc/keys; echo written >> /proc/keys; echo ran\n",
        )],
    );
    std::fs::create_dir(context.join("devdir")).expect("devdir");
    std::os::unix::fs::symlink(&secret, context.join("devdir/null")).expect("symlink");
    let out = kiln(
        &fixture.root(),
        &["build", "--no-cache", context.to_str().expect("utf-8 path")],
    );
    assert_eq!(
        std::fs::read_to_string(&secret).expect("read the host file"),
        "host-secret\n",
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("host-secret"), "{}", text(&out));
    // The RUN ran, with its masks (not refused: mounting over /dev is
    // allowed).
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ran"), "{}", text(&out));
}

/// Issue: a RUN's mount could cover the container's /proc, or a part of
/// it (`/proc/sys/kernel` under a tmpfs), or, through an image's `/m ->
/// /`, the whole root (its /proc, /sys and /dev with it: a review showed
/// a fake /proc/self/setgroups then kept kiln's supplementary groups in
/// the container), where runc, and so BuildKit, refuses it
/// (`checkProcMount`, "on the top of rootfs"): the fresh proc and its
/// masks are what the container's /proc must show. Now refused, as
/// written and as an image's symlink resolves (`/alias -> /proc`,
/// `/m -> /`, `/m -> ..`; kiln's own /dev and /etc/hostname alike),
/// naming the target; the files runc lets a mount cover (those lxcfs
/// emulates, as `/proc/meminfo`) still may be, written so or through a
/// symlink: the controls read a secret mounted there.
#[test]
fn mounts_on_the_root_or_inside_proc_are_refused_as_runc_refuses_them() {
    require_namespaces!();
    let fixture = Fixture::new();
    let build = |name: &str, dockerfile: &str| build_with_secret(&fixture, name, dockerfile);
    let refused = [
        (
            "proc-cache",
            "RUN --mount=type=cache,target=/proc echo ran",
            "/proc cannot be mounted",
        ),
        (
            "proc-tmpfs",
            "RUN --mount=type=tmpfs,target=/proc/sys/kernel echo ran",
            "/proc/sys/kernel cannot be mounted because it is inside /proc",
        ),
        (
            "proc-secret",
            "RUN --mount=type=secret,id=tok,target=/proc/sysrq-trigger echo ran",
            "/proc/sysrq-trigger cannot be mounted because it is inside /proc",
        ),
        (
            "root-link",
            "RUN ln -s / /m\n\
             RUN --mount=type=tmpfs,target=/m echo ran",
            "/m (it resolves to /) cannot be mounted: it is the container's root",
        ),
        (
            "root-dotdot",
            "RUN ln -s .. /m\n\
             RUN --mount=type=bind,target=/m echo ran",
            "/m (it resolves to /) cannot be mounted: it is the container's root",
        ),
        (
            "dev-link",
            "FROM busybox:latest AS b\n\
             RUN mkdir /out && cp -a /bin /out/ && ln -s /proc /out/dev\n\
             FROM scratch\n\
             COPY --from=b /out/ /\n\
             RUN echo ran",
            "/dev (it resolves to /proc) cannot be mounted: the container's /proc is its own",
        ),
        (
            "hostname-link",
            "FROM busybox:latest AS b\n\
             RUN mkdir -p /out/etc && cp -a /bin /out/ && ln -s /proc/version /out/etc/hostname\n\
             FROM scratch\n\
             COPY --from=b /out/ /\n\
             RUN echo ran",
            "/etc/hostname (it resolves to /proc/version) cannot be mounted because it is inside",
        ),
        (
            "proc-alias",
            "RUN ln -s /proc /alias\n\
             RUN --mount=type=tmpfs,target=/alias/sys/kernel echo ran",
            "/alias/sys/kernel (it resolves to /proc/sys/kernel) cannot be mounted because it \
             is inside /proc",
        ),
    ];
    for (name, run, message) in refused {
        let out = build(name, &format!("FROM busybox:latest\n{run}\n"));
        assert!(!out.status.success(), "{name}: {}", text(&out));
        assert!(text(&out).contains(message), "{name}: {}", text(&out));
        // The RUN's output line: `#4 0.019 ran`.
        let ran = text(&out).lines().any(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.len() == 3 && words[2] == "ran" && words[1].parse::<f64>().is_ok()
        });
        assert!(!ran, "{name}: {}", text(&out));
    }

    // Control: a file runc lets a mount cover, written so or through an
    // image's symlink (runc judges where a target resolves).
    for (name, run) in [
        (
            "proc-meminfo",
            "RUN --mount=type=secret,id=tok,target=/proc/meminfo cat /proc/meminfo",
        ),
        (
            "proc-meminfo-link",
            "RUN ln -s /proc/meminfo /m\n\
             RUN --mount=type=secret,id=tok,target=/m cat /proc/meminfo",
        ),
    ] {
        let out = build(name, &format!("FROM busybox:latest\n{run}\n"));
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert!(text(&out).contains("s3cret"), "{name}: {}", text(&out));
    }
}
