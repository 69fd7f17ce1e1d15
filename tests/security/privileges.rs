//! Issue: every RUN and `kiln run` set no_new_privs, which neither
//! BuildKit (`oci.WithNewPrivileges` in its RUN spec) nor `docker run`
//! sets: a setuid program gained nothing, so `sudo` or `su` after
//! `USER app` failed in kiln where `docker build` ran it.
//!
//! The probe: an image with a setuid-root copy of busybox linked as `su`,
//! and root's password empty; a RUN as `app` (1000) prints its
//! `NoNewPrivs` line and runs `/bin/su -c 'id -u'` (by its path: busybox's
//! shell runs a bare `su` as its own applet, from its own program), which
//! prints 0 only when the
//! setuid bit took effect (busybox's su says "must be suid to work
//! properly" otherwise). The image keeps what it printed.
//! `a_caller_with_no_new_privs_passes_it_on` shows the probe failing when
//! no_new_privs is set (by kiln's caller: the kernel keeps it for every
//! descendant, and kiln cannot clear it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::kiln_command;
use crate::{require_namespaces, require_root, text, Fixture};

const DOCKERFILE: &str = "FROM busybox:latest
RUN cp /bin/busybox /bin/suidbox && chmod 4755 /bin/suidbox && ln -sf suidbox /bin/su \\
 && sed -i 's/^root:[^:]*:/root::/' /etc/passwd
USER app
RUN mkdir /tmp/out && grep NoNewPrivs /proc/self/status > /tmp/out/status \\
 && { /bin/su -c 'id -u' > /tmp/out/su 2>&1 || true; }
";

/// Builds the probe image with `command` (kiln, or kiln under a wrapper)
/// and writes its `/tmp/out` to DIR/out; returns kiln's output and DIR/out.
fn build_probe(fixture: &Fixture, mut command: Command) -> (Output, PathBuf) {
    let context = fixture.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let dest = fixture.dir("out");
    let out = command
        .arg("--root")
        .arg(fixture.root())
        .args(["build", "--no-cache", "--output"])
        .arg(format!("type=local,dest={}", dest.display()))
        .arg(&context)
        .output()
        .expect("start kiln");
    (out, dest.join("tmp/out"))
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|err| panic!("{}: {err}", dir.join(name).display()))
}

#[test]
fn a_setuid_program_gains_its_owners_rights_in_a_run() {
    require_namespaces!();
    let fixture = Fixture::new();
    let (out, probe) = build_probe(&fixture, kiln_command());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        read(&probe, "status")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NoNewPrivs:", "0"]
    );
    assert_eq!(read(&probe, "su").trim(), "0", "{}", text(&out));
}

#[test]
fn a_caller_with_no_new_privs_passes_it_on() {
    require_root!();
    let fixture = Fixture::new();
    // kiln_command's kiln, under setpriv, with its environment.
    let kiln = kiln_command();
    let mut command = Command::new("setpriv");
    command.arg("--no-new-privs").arg(kiln.get_program());
    for (key, value) in kiln.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let (out, probe) = build_probe(&fixture, command);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        read(&probe, "status")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NoNewPrivs:", "1"]
    );
    assert!(
        read(&probe, "su").contains("must be suid"),
        "{}",
        read(&probe, "su")
    );
}
