//! `kiln build --load` (and `-o type=docker` without `dest`) into a docker
//! daemon of the test's own (kiln_testsupport::docker), as buildx loads an
//! image: found through `DOCKER_HOST` or the docker context, reached on its
//! Unix socket or over TCP (plain, or TLS with the CA and client
//! certificate of `DOCKER_CERT_PATH` or of the context, as a CI job reaches
//! a docker-in-docker service), asked before the build; the loaded image
//! runs in docker.

mod common;

use std::path::Path;
use std::process::Output;

use common::{busybox_rootfs_tar, kiln_command, kiln_ok};
use kiln_testsupport::docker::{DockerDaemon, TcpListen};
use kiln_testsupport::tls::TestCa;

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
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_TLS")
        .env_remove("DOCKER_CERT_PATH");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A store holding busybox, and a context whose image prints `loaded`.
fn store_and_context(dir: &Path) -> (std::path::PathBuf, String) {
    let root = dir.join("store");
    let tar = dir.join("busybox.tar");
    busybox_rootfs_tar(&tar).unwrap();
    kiln_ok(&root, &["import", tar.to_str().unwrap(), "busybox:latest"]);
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo loaded > /marker\nCMD [\"cat\", \"/marker\"]\n",
    )
    .unwrap();
    (root, ctx.to_str().unwrap().to_string())
}

/// The files a docker client reads from `DOCKER_CERT_PATH`, in `dir`:
/// `ca`'s certificate, and a client certificate it signed (unless not
/// `with_client`).
fn cert_path(dir: &Path, ca: &TestCa, with_client: bool) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(&ca.ca_cert, dir.join("ca.pem")).unwrap();
    if with_client {
        let client = ca.issue(dir, "client", &["kiln-test-client"]).unwrap();
        std::fs::rename(client.cert_pem, dir.join("cert.pem")).unwrap();
        std::fs::rename(client.key_pem, dir.join("key.pem")).unwrap();
    }
    dir.to_str().unwrap().to_string()
}

#[test]
fn load_puts_the_image_into_the_docker_daemon() {
    kiln_testsupport::require_root!("a docker daemon of the test's own");
    kiln_testsupport::require_namespaces!("builds run steps in namespaces");
    let dir = tempfile::tempdir().unwrap();
    // The daemon also listens over TCP with TLS, checking its clients'
    // certificates, as a docker:dind service of a CI job does.
    let certs = dir.path().join("daemon-certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = TestCa::create(&certs, "kiln test docker CA").unwrap();
    let server = ca
        .issue(&certs, "server", &["127.0.0.1", "localhost"])
        .unwrap();
    let daemon = DockerDaemon::start_listening(Some(TcpListen::Verified {
        ca: &ca.ca_cert,
        cert: &server.cert_pem,
        key: &server.key_pem,
    }))
    .unwrap();
    let (root, ctx) = store_and_context(dir.path());
    let ctx = ctx.as_str();
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

    // Over TCP with TLS, from the variables a CI job sets for a dind
    // service: DOCKER_CERT_PATH's CA checks the daemon, its client
    // certificate is sent.
    let tcp = daemon.tcp_host.clone().unwrap();
    let client = cert_path(&dir.path().join("client"), &ca, true);
    let tls_env = |verify: &'static str, path: &str| -> [(&'static str, String); 3] {
        [
            ("DOCKER_HOST", tcp.clone()),
            (verify, "1".to_string()),
            ("DOCKER_CERT_PATH", path.to_string()),
        ]
    };
    let with = |env: &[(&str, String)]| -> Vec<(String, String)> {
        env.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    let build_with = |args: &[&str], env: &[(String, String)]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        build(&root, args, &env)
    };
    let out = build_with(
        &["--load", "-t", "tls:1", ctx],
        &with(&tls_env("DOCKER_TLS_VERIFY", &client)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("docker: Loaded image: tls:1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(run("tls:1"), "loaded\n");
    // DOCKER_TLS alone: TLS without checking the daemon, so a CA that did
    // not sign its certificate does not matter; the client's is still sent.
    let other_ca_dir = dir.path().join("other-ca");
    std::fs::create_dir_all(&other_ca_dir).unwrap();
    let other_ca = TestCa::create(&other_ca_dir, "another CA").unwrap();
    let unchecked = cert_path(&dir.path().join("unchecked"), &other_ca, false);
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(
            Path::new(&client).join(file),
            Path::new(&unchecked).join(file),
        )
        .unwrap();
    }
    let out = build_with(
        &["--load", "-t", "unchecked:1", ctx],
        &with(&tls_env("DOCKER_TLS", &unchecked)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(run("unchecked:1"), "loaded\n");
    // A docker context made by the docker CLI with the same files.
    let endpoint =
        format!("host={tcp},ca={client}/ca.pem,cert={client}/cert.pem,key={client}/key.pem");
    docker_cli(&["context", "create", "dind", "--docker", &endpoint]);
    let out = build(
        &root,
        &["--load", "-t", "ctxtls:1", ctx],
        &[("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "dind")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(run("ctxtls:1"), "loaded\n");
    // A context without them: refused, saying how to give them to it.
    docker_cli(&[
        "context",
        "create",
        "notls",
        "--docker",
        &format!("host={tcp}"),
    ]);
    let out = build(
        &root,
        &["--load", ctx],
        &[("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "notls")],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "(from docker context \"notls\"): the docker daemon answered /_ping with 400: \
             Client sent an HTTP request to an HTTPS server. (for a daemon that requires TLS, \
             give the context its certificates: docker context update NAME"
        ),
        "{}",
        stderr(&out)
    );
    // Refused before any step: plain HTTP to it (with what to set), the
    // daemon's certificate from another CA, no client certificate.
    let no_client = cert_path(&dir.path().join("no-client"), &ca, false);
    // (The daemon's alert ends the handshake: rustls reads it as the
    // answer to its first request.)
    let unreachable = format!(
        "cannot reach the docker daemon at {tcp} (from DOCKER_HOST; TLS: DOCKER_TLS_VERIFY, \
         certificates from {no_client}; the daemon's certificate checked; no client \
         certificate (cert.pem and key.pem) to send): received fatal alert"
    );
    for (env, said) in [
        (
            vec![("DOCKER_HOST", tcp.clone())],
            "Client sent an HTTP request to an HTTPS server. (for a daemon that requires TLS, set DOCKER_TLS_VERIFY=1",
        ),
        (
            tls_env("DOCKER_TLS_VERIFY", &unchecked).to_vec(),
            "invalid peer certificate",
        ),
        (
            tls_env("DOCKER_TLS_VERIFY", &no_client).to_vec(),
            unreachable.as_str(),
        ),
    ] {
        let out = build_with(&["--load", ctx], &with(&env));
        assert!(!out.status.success(), "{env:?}");
        let text = stderr(&out);
        assert!(text.contains(said), "{env:?}: {text}");
        assert!(!text.contains("RUN echo"), "the build ran: {text}");
    }

    // No daemon there, or one kiln does not reach: refused before any step.
    let closed = format!("tcp://127.0.0.1:{}", kiln_testsupport::free_port().unwrap());
    for (value, said) in [
        (
            "unix:///nonexistent/docker.sock",
            "cannot reach the docker daemon at unix:///nonexistent/docker.sock".to_string(),
        ),
        (
            closed.as_str(),
            format!("cannot reach the docker daemon at {closed}"),
        ),
        ("ssh://me@docker", "on a Unix socket or over TCP (unix://PATH, tcp://HOST:PORT) only; for another daemon, write the archive (-o type=docker,dest=image.tar)".to_string()),
    ] {
        let out = build(&root, &["--load", ctx], &[("DOCKER_HOST", value)]);
        assert!(!out.status.success());
        let text = stderr(&out);
        assert!(
            text.contains(&said) && text.contains("DOCKER_HOST"),
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

#[test]
fn load_reaches_a_daemon_over_plain_tcp() {
    kiln_testsupport::require_root!("a docker daemon of the test's own");
    kiln_testsupport::require_namespaces!("builds run steps in namespaces");
    let daemon = DockerDaemon::start_listening(Some(TcpListen::Plain)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (root, ctx) = store_and_context(dir.path());
    let tcp = daemon.tcp_host.clone().unwrap();
    // As GitLab's docker:dind without TLS is reached; and the address
    // without its scheme, which the docker CLI reads as TCP.
    let bare = tcp.trim_start_matches("tcp://");
    for (host, tag) in [(tcp.as_str(), "plain:1"), (bare, "plain:2")] {
        let out = build(
            &root,
            &["--load", "-t", tag, &ctx],
            &[("DOCKER_HOST", host)],
        );
        assert!(out.status.success(), "{host}: {}", stderr(&out));
        let said = daemon
            .docker_ok(&["run", "--rm", "--network", "none", tag])
            .unwrap();
        assert_eq!(said, "loaded\n");
    }
}
