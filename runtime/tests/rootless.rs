//! Rootless: a user the test creates (with subordinate id ranges) runs
//! busybox through the runtime inside a user namespace, overlay included.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{busybox_rootfs, HELPER_BIN};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

#[test]
fn unprivileged_user_runs_busybox_in_a_user_namespace() {
    require_root!();
    for tool in ["newuidmap", "newgidmap", "setpriv", "useradd", "usermod"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is missing: scripts/setup installs it"
        );
    }
    let (uid, gid) = kiln_testsupport::rootless_user().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    // A rootless store belongs to its user: root inside the namespace.
    chown_tree(&rootfs, uid, gid);
    let (subuid, subuid_count) = kiln_testsupport::users::subid_range("/etc/subuid")
        .unwrap()
        .expect("rootless_user gave the user a subordinate uid range");
    // app (1000 inside) owns its home: host id subuid + 999.
    std::os::unix::fs::chown(
        rootfs.join("home/app"),
        Some(subuid + 999),
        Some(subuid + 999),
    )
    .ok();
    // Where the user can reach it; a hard link leaves no write descriptor
    // around (a copy's could make running it fail with ETXTBSY).
    let bin = tmp.path().join("kiln-runtime-helper");
    if fs::hard_link(HELPER_BIN, &bin).is_err() {
        fs::copy(HELPER_BIN, &bin).unwrap();
    }
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let work = tmp.path().join("work");
    fs::create_dir(&work).unwrap();
    chown_tree(&work, uid, gid);

    let as_user = |state: &str, extra: &[&str], script: &str| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
        ])
        .arg(&bin)
        .args(["run", "--state"])
        .arg(work.join(state))
        .arg("--lower")
        .arg(&rootfs)
        .args(extra)
        .args(["--", "sh", "-c", script]);
        run(&mut cmd)
    };

    // Root inside is the user outside; the subordinate range follows.
    let out = as_user(
        "s1",
        &[],
        "id -u; echo $$; hostname; cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'; \
         echo hi > /tmp/made-inside && cat /tmp/made-inside; rm /etc/motd; ls /sys/class/net",
    );
    assert_eq!(
        out,
        format!("0\n1\nkiln\n0 {uid} 1\n1 {subuid} {subuid_count}\nhi\nlo\n")
    );
    // The image was not touched.
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "welcome\n"
    );

    // A user of the image, mapped through the subordinate range.
    let out = as_user(
        "s2",
        &["--user", "app", "--network", "host"],
        "id -u; touch $HOME/f && stat -c %u $HOME/f",
    );
    assert_eq!(out, "1000\n1000\n");

    // The private network: slirp4netns joins the run's user namespace.
    let port = kiln_testsupport::network::loopback_server("host-secret").unwrap();
    let out = as_user(
        "s3",
        &["--network", "private"],
        &format!(
            "ls /sys/class/net | tr '\\n' ' '; \
             timeout 5 wget -q -O- http://10.0.2.2:{port}/ || echo unreachable"
        ),
    );
    assert_eq!(out, "lo tap0 unreachable\n");
    // The control: on the host's network the same server answers, so the
    // private network is what kept it out of reach.
    let out = as_user(
        "s4",
        &["--network", "host"],
        &format!("timeout 5 wget -q -O- http://127.0.0.1:{port}/ || echo unreachable"),
    );
    assert_eq!(out, "host-secret");
    // Everything the run created is gone, files of mapped ids included.
    let left: Vec<_> = fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
