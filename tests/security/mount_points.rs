//! Issue: an image's symlink sent a RUN mount's mount point to the host.
//! With `/run/secrets` a symlink to a host directory that the image does
//! not have, `RUN --mount=type=secret,id=tok` made its mount point,
//! `<that directory>/tok`, on the host: `mkdir -p` of the mount point's
//! directory took the symlink to the host's directory for the directory,
//! and the file was then created through it (and a symlinked volume
//! target was mounted on the host path, out of the container's sight).
//!
//! The build is now refused, naming the symlink, and the host directory
//! is as it was. The control: the same build with the symlink aimed at a
//! directory the image has succeeds and its RUN reads the secret, so the
//! refusal is the symlink's.

use std::path::Path;

use crate::common::kiln;
use crate::{require_namespaces, text, Fixture};

/// Builds a busybox image whose `/run/secrets` is a symlink to `aim`, then
/// a RUN that reads the secret `tok` from its default target.
fn build_with_secret_under(fixture: &Fixture, name: &str, aim: &Path) -> std::process::Output {
    let secret = fixture.dir(&format!("{name}-secret")).join("tok");
    std::fs::write(&secret, "s3cret\n").expect("write the secret");
    let context = fixture.context(
        name,
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox:latest\n\
                 RUN mkdir -p /run && ln -s {} /run/secrets\n\
                 RUN --mount=type=secret,id=tok cat /run/secrets/tok\n",
                aim.display()
            ),
        )],
    );
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
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/run/secrets is a symlink that does not resolve inside the image"),
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
