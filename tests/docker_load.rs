//! `kiln build --load` (and `-o type=docker` without `dest`) into a docker
//! daemon of the test's own (kiln_testsupport::docker), as buildx loads an
//! image: found through `DOCKER_HOST` or the docker context, reached on its
//! Unix socket, asked before the build; the loaded image runs in docker.

mod common;

use std::path::Path;
use std::process::Output;

use common::{busybox_rootfs_tar, kiln_command, kiln_ok};
use kiln_testsupport::docker::DockerDaemon;

/// `kiln build ARGS…` on the store `root`, with `env` set.
fn build(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = kiln_command();
    command
        .arg("--root")
        .arg(root)
        .arg("build")
        .args(args)
        .env("KILN_PROGRESS", "plain")
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn load_puts_the_image_into_the_docker_daemon() {
    kiln_testsupport::require_root!("a docker daemon of the test's own");
    kiln_testsupport::require_namespaces!("builds run steps in namespaces");
    let daemon = DockerDaemon::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let tar = dir.path().join("busybox.tar");
    busybox_rootfs_tar(&tar).unwrap();
    kiln_ok(&root, &["import", tar.to_str().unwrap(), "busybox:latest"]);
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo loaded > /marker\nCMD [\"cat\", \"/marker\"]\n",
    )
    .unwrap();
    let ctx = ctx.to_str().unwrap();
    let host = [("DOCKER_HOST", daemon.host.as_str())];
    let run = |image: &str| {
        daemon
            .docker_ok(&["run", "--rm", "--network", "none", image])
            .unwrap()
    };

    // --load: into docker, named by -t, and not into kiln's store (as
    // buildx, -t names the outputs given).
    let out = build(&root, &["--load", "-t", "app:load", ctx], &host);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("docker: Loaded image: app:load"),
        "{}",
        stderr(&out)
    );
    assert_eq!(run("app:load"), "loaded\n");
    let images = kiln_ok(&root, &["images"]);
    assert!(!images.contains("app"), "{images}");

    // type=docker without dest loads too, named by its name=; with a dest
    // it writes the file and loads nothing.
    let file = dir.path().join("image.tar");
    let to_file = format!("type=docker,dest={},name=file:1", file.display());
    let out = build(
        &root,
        &["-o", "type=docker,name=other:1", "-o", &to_file, ctx],
        &host,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(run("other:1"), "loaded\n");
    assert!(file.is_file());
    let listed = daemon
        .docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .unwrap();
    assert!(!listed.contains("file:1"), "{listed}");

    // The docker context config.json names, when DOCKER_HOST is unset: made
    // and chosen by the docker CLI itself.
    let config = dir.path().join("docker-config");
    let config = config.to_str().unwrap();
    let docker_cli = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(["--config", config])
            .args(args)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .output()
            .unwrap();
        assert!(out.status.success(), "docker {args:?}: {}", stderr(&out));
    };
    let endpoint = format!("host={}", daemon.host);
    docker_cli(&["context", "create", "ci", "--docker", &endpoint]);
    docker_cli(&["context", "use", "ci"]);
    let out = build(
        &root,
        &["--load", "-t", "ctx:1", ctx],
        &[("DOCKER_CONFIG", config)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(run("ctx:1"), "loaded\n");
    // DOCKER_HOST wins over the context.
    let out = build(
        &root,
        &["--load", "-t", "over:1", ctx],
        &[
            ("DOCKER_CONFIG", config),
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
        ],
    );
    assert!(
        stderr(&out).contains("/nonexistent/docker.sock"),
        "{}",
        stderr(&out)
    );

    // --push and --load together: pushed, and loaded.
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let both = format!("{}/app:both", registry.host);
    let out = build(&root, &["--push", "--load", "-t", &both, ctx], &host);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(run(&both), "loaded\n");
    let fresh = dir.path().join("fresh-store");
    kiln_ok(&fresh, &["pull", &both]);

    // No daemon there, or one kiln does not reach: refused before any step.
    for (value, said) in [
        (
            "unix:///nonexistent/docker.sock",
            "cannot reach the docker daemon at unix:///nonexistent/docker.sock",
        ),
        ("tcp://127.0.0.1:2375", "Unix socket (unix://PATH) only; for another daemon, write the archive (-o type=docker,dest=image.tar)"),
    ] {
        let out = build(&root, &["--load", ctx], &[("DOCKER_HOST", value)]);
        assert!(!out.status.success());
        let text = stderr(&out);
        assert!(
            text.contains(said) && text.contains("DOCKER_HOST"),
            "{text}"
        );
        assert!(!text.contains("RUN echo"), "the build ran: {text}");
    }
    // A docker-archive holds one platform.
    let out = build(
        &root,
        &["--load", "--platform", "linux/amd64,linux/arm64", ctx],
        &host,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("a docker-archive holds one platform's image"),
        "{}",
        stderr(&out)
    );
}
