//! Rootless builds, whole: kiln run by an unprivileged user (with
//! subordinate id ranges, made by kiln-testsupport) enters a user
//! namespace of its own for the entire build, so that COPY --chown, layer
//! unpacking, overlay, cache mounts and USER all work, and the image is
//! the one root builds (same digest under SOURCE_DATE_EPOCH). As root,
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
        let ctx = dir.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
        busybox_rootfs_tar(&dir.path().join("busybox.tar")).unwrap();
        for path in [ctx.join("Dockerfile"), dir.path().join("busybox.tar")] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(&ctx, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Where the user can run it; a hard link leaves no write descriptor
        // around (a copy's could make running it fail with ETXTBSY).
        let bin = dir.path().join("kiln");
        if std::fs::hard_link(kiln_bin(), &bin).is_err() {
            std::fs::copy(kiln_bin(), &bin).unwrap();
        }
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Work { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kiln --root ROOT ARGS…` under SOURCE_DATE_EPOCH, as root or (with
    /// `user`) as that uid and gid.
    fn kiln(&self, user: Option<(u32, u32)>, root: &Path, args: &[&str]) -> Output {
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
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap()
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
        let iidfile = root.with_extension("iid");
        let iid = iidfile.to_str().unwrap();
        let mut args = vec!["build", "--iidfile", iid, "-o", &output];
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
        (std::fs::read_to_string(&iidfile).unwrap(), stderr)
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

    // The user's own store.
    let store = work.path("user-store");
    std::fs::create_dir(&store).unwrap();
    std::os::unix::fs::chown(&store, Some(user.0), Some(user.1)).unwrap();
    std::fs::create_dir(work.path("user-store.out")).unwrap();
    std::os::unix::fs::chown(work.path("user-store.out"), Some(user.0), Some(user.1)).unwrap();
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
