//! End-to-end tests of the local image commands through the `kiln` binary,
//! with skopeo and umoci as independent readers and writers of what kiln
//! writes: import → images → inspect → save (OCI, docker) → load, tag/rmi/
//! prune, bad input, and kill -9 in the middle of an import.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{busybox_path, busybox_rootfs_tar, kiln, kiln_ok, run_ok};
use serde_json::Value;

fn import_busybox(root: &Path, tmp: &Path, reference: &str) -> String {
    let tar = tmp.join("rootfs.tar");
    if !tar.exists() {
        busybox_rootfs_tar(&tar).unwrap();
    }
    let out = kiln_ok(
        root,
        &[
            "import",
            tar.to_str().unwrap(),
            reference,
            "--change",
            r#"CMD ["sh", "-c", "echo hello"]"#,
            "--change",
            "ENV FOO=bar GREETING=\"hello world\"",
            "--change",
            "WORKDIR /srv",
            "--change",
            "EXPOSE 8080",
            "--change",
            "LABEL org.example.kind=test",
        ],
    );
    let id = out.trim().to_string();
    assert!(
        id.starts_with("sha256:") && id.len() == 71,
        "import printed {out:?}"
    );
    id
}

fn inspect(root: &Path, image: &str) -> Value {
    let out = kiln_ok(root, &["inspect", image]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

/// Every blob in the store hashes to its name.
fn assert_blobs_match_names(root: &Path) {
    for entry in fs::read_dir(root.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let digest = kiln_layers::Digest::of(&fs::read(entry.path()).unwrap());
        assert_eq!(
            digest.hex(),
            entry.file_name().to_string_lossy(),
            "blob does not match its name"
        );
    }
}

#[test]
fn import_save_load_round_trip_with_skopeo_and_umoci() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let id = import_busybox(&root, tmp.path(), "busybox:e2e");

    // images: the table and JSON agree on what is there.
    let table = kiln_ok(&root, &["images"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for col in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(header.contains(col), "{header}");
    }
    let row = lines.next().expect("one image row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..3],
        &["busybox", "e2e", &id["sha256:".len().."sha256:".len() + 12]],
        "{row}"
    );
    let listed: Value =
        serde_json::from_str(&kiln_ok(&root, &["images", "--format", "json"])).unwrap();
    assert_eq!(listed[0]["Name"], "docker.io/library/busybox:e2e");
    assert_eq!(listed[0]["ID"], id.as_str());
    // -q prints ids, --format chooses a table or JSON: not both.
    let out = kiln(&root, &["images", "-q", "--format", "json"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{out:?}"
    );

    // inspect: manifest and config as kiln wrote them.
    let image = inspect(&root, "busybox:e2e");
    assert_eq!(image["Id"], id.as_str());
    let config = &image["ImageConfig"];
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["sh", "-c", "echo hello"])
    );
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!(["FOO=bar", "GREETING=hello world"])
    );
    assert_eq!(config["config"]["WorkingDir"], "/srv");
    assert_eq!(
        config["config"]["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}})
    );
    assert_eq!(config["config"]["Labels"]["org.example.kind"], "test");
    // Docker's shape: `Config` is the runtime config, `RootFS` the diff ids.
    assert_eq!(image["Config"], config["config"]);
    assert_eq!(
        image["Config"]["Cmd"],
        serde_json::json!(["sh", "-c", "echo hello"])
    );
    assert_eq!(image["RootFS"]["Type"], "layers");
    assert_eq!(image["RootFS"]["Layers"], config["rootfs"]["diff_ids"]);
    assert_eq!(config["os"], "linux");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    assert_eq!(
        image["Manifest"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    // inspect by short id finds the same image.
    assert_eq!(inspect(&root, &id[7..19])["Id"], id.as_str());
    let manifest_digest = image["Digest"].as_str().unwrap().to_string();

    // The store itself is an OCI layout skopeo reads...
    let copied = tmp.path().join("skopeo-copy");
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!(
                "oci:{}:docker.io/library/busybox:e2e",
                root.display()
            ))
            .arg(format!("oci:{}:copied", copied.display())),
    );
    let skopeo_inspect: Value =
        serde_json::from_str(&run_ok(Command::new("skopeo").arg("inspect").arg(format!(
            "oci:{}:docker.io/library/busybox:e2e",
            root.display()
        ))))
        .unwrap();
    assert_eq!(skopeo_inspect["Digest"], manifest_digest.as_str());
    assert_eq!(
        skopeo_inspect["Env"],
        serde_json::json!(["FOO=bar", "GREETING=hello world"])
    );
    // ...and writes into: kiln sees what skopeo added, its own tag intact.
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:copied", copied.display()))
            .arg(format!("oci:{}:docker.io/library/other:1", root.display())),
    );
    let names: Vec<String> =
        serde_json::from_str::<Value>(&kiln_ok(&root, &["images", "--format", "json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["Name"].as_str().unwrap().to_string())
            .collect();
    assert!(
        names.contains(&"docker.io/library/other:1".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"docker.io/library/busybox:e2e".to_string()),
        "{names:?}"
    );
    assert_eq!(inspect(&root, "other:1")["Id"], id.as_str());

    // umoci reads the store directly too.
    let refs = run_ok(Command::new("umoci").args(["ls", "--layout"]).arg(&root));
    assert!(
        refs.lines().any(|l| l == "docker.io/library/busybox:e2e"),
        "{refs}"
    );
    let store_bundle = tmp.path().join("store-bundle");
    run_ok(
        umoci_unpack()
            .arg(format!("{}:docker.io/library/busybox:e2e", root.display()))
            .arg(&store_bundle),
    );
    assert!(store_bundle.join("rootfs/bin/busybox").is_file());

    // save --format oci (a directory) passes umoci ls and umoci unpack.
    let oci_dir = tmp.path().join("out-oci");
    kiln_ok(
        &root,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            oci_dir.to_str().unwrap(),
            "busybox:e2e",
        ],
    );
    let refs = run_ok(Command::new("umoci").args(["ls", "--layout"]).arg(&oci_dir));
    assert_eq!(refs.trim(), "e2e");
    let bundle = tmp.path().join("bundle");
    run_ok(
        umoci_unpack()
            .arg(format!("{}:e2e", oci_dir.display()))
            .arg(&bundle),
    );
    assert_eq!(
        fs::read(bundle.join("rootfs/bin/busybox")).unwrap(),
        fs::read(busybox_path()).unwrap()
    );
    assert_eq!(
        fs::read_link(bundle.join("rootfs/bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let runtime_config: Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        runtime_config["process"]["args"],
        serde_json::json!(["sh", "-c", "echo hello"])
    );
    assert_eq!(runtime_config["process"]["cwd"], "/srv");

    // save --format oci to a .tar: an OCI layout in a tar.
    let oci_tar = tmp.path().join("out-oci.tar");
    kiln_ok(
        &root,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            oci_tar.to_str().unwrap(),
            "busybox:e2e",
        ],
    );
    let listing = run_ok(Command::new("tar").arg("tf").arg(&oci_tar));
    assert!(
        listing.lines().any(|l| l == "index.json") && listing.lines().any(|l| l == "oci-layout"),
        "{listing}"
    );

    // save --format docker: docker-archive's structure, readable by skopeo.
    let docker_tar = tmp.path().join("out-docker.tar");
    kiln_ok(
        &root,
        &[
            "save",
            "--format",
            "docker",
            "-o",
            docker_tar.to_str().unwrap(),
            "busybox:e2e",
        ],
    );
    let listing = run_ok(Command::new("tar").arg("tf").arg(&docker_tar));
    for want in ["manifest.json", "repositories"] {
        assert!(
            listing.lines().any(|l| l == want),
            "{want} missing from {listing}"
        );
    }
    let manifest_json: Value = serde_json::from_str(&run_ok(
        Command::new("tar")
            .arg("xOf")
            .arg(&docker_tar)
            .arg("manifest.json"),
    ))
    .unwrap();
    assert_eq!(
        manifest_json[0]["RepoTags"],
        serde_json::json!(["busybox:e2e"])
    );
    assert_eq!(
        manifest_json[0]["Config"],
        format!("blobs/sha256/{}", &id[7..])
    );
    let repositories: Value = serde_json::from_str(&run_ok(
        Command::new("tar")
            .arg("xOf")
            .arg(&docker_tar)
            .arg("repositories"),
    ))
    .unwrap();
    assert!(repositories["busybox"]["e2e"].is_string(), "{repositories}");
    let from_archive = tmp.path().join("from-docker-archive");
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("docker-archive:{}", docker_tar.display()))
            .arg(format!("oci:{}:x", from_archive.display())),
    );

    // load round-trips both formats into fresh stores.
    let root2 = tmp.path().join("store2");
    let out = kiln_ok(&root2, &["load", "-i", docker_tar.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: busybox:e2e");
    assert_eq!(inspect(&root2, "busybox:e2e")["Id"], id.as_str());
    let root3 = tmp.path().join("store3");
    let out = kiln_ok(&root3, &["load", "-i", oci_dir.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: busybox:e2e");
    let loaded = inspect(&root3, "busybox:e2e");
    assert_eq!(
        loaded["Digest"],
        manifest_digest.as_str(),
        "an OCI load keeps the manifest bytes"
    );
    let root4 = tmp.path().join("store4");
    kiln_ok(&root4, &["load", "-i", oci_tar.to_str().unwrap()]);
    assert_eq!(
        inspect(&root4, "busybox:e2e")["Digest"],
        manifest_digest.as_str()
    );
    for r in [&root, &root2, &root3, &root4] {
        assert_blobs_match_names(r);
    }
}

#[test]
fn tag_rmi_and_prune() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let id = import_busybox(&root, tmp.path(), "busybox:one");
    kiln_ok(
        &root,
        &["tag", "busybox:one", "localhost:5000/team/busybox:two"],
    );
    let table = kiln_ok(&root, &["images"]);
    assert!(
        table.contains("localhost:5000/team/busybox") && table.contains("two"),
        "{table}"
    );

    // By id with two tags: refused without --force; with it, both go.
    let out = kiln(&root, &["rmi", &id[7..19]]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let other = tmp.path().join("forced-store");
    let forced_id = import_busybox(&other, tmp.path(), "busybox:forced");
    kiln_ok(&other, &["tag", "busybox:forced", "busybox:forced-too"]);
    let out = kiln_ok(&other, &["rmi", "--force", &forced_id[7..19]]);
    assert!(
        out.contains("Untagged: busybox:forced\n") && out.contains("Untagged: busybox:forced-too"),
        "{out}"
    );
    let table = kiln_ok(&other, &["images"]);
    assert!(!table.contains("busybox"), "{table}");

    let out = kiln_ok(&root, &["rmi", "busybox:one"]);
    assert_eq!(
        out.trim(),
        "Untagged: busybox:one",
        "still tagged elsewhere: nothing deleted"
    );
    let blobs_before = fs::read_dir(root.join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs_before, 3, "manifest, config, layer");

    // A loose blob and a killed write's leftovers: prune takes them, keeps the image.
    fs::write(
        root.join("blobs/sha256")
            .join(kiln_layers::Digest::of(b"loose").hex()),
        b"loose",
    )
    .unwrap();
    fs::write(root.join("ingest/leftover-123"), b"partial").unwrap();
    let out = kiln_ok(&root, &["prune"]);
    assert!(
        out.contains(kiln_layers::Digest::of(b"loose").as_str()),
        "{out}"
    );
    assert!(out.contains("partial writes: 1,"), "{out}");
    assert_eq!(fs::read_dir(root.join("blobs/sha256")).unwrap().count(), 3);
    assert_eq!(fs::read_dir(root.join("ingest")).unwrap().count(), 0);
    assert_eq!(
        inspect(&root, "localhost:5000/team/busybox:two")["Id"],
        id.as_str()
    );

    let out = kiln_ok(&root, &["rmi", "localhost:5000/team/busybox:two"]);
    assert!(
        out.contains("Untagged: localhost:5000/team/busybox:two"),
        "{out}"
    );
    assert_eq!(out.matches("Deleted: sha256:").count(), 3, "{out}");
    assert_eq!(fs::read_dir(root.join("blobs/sha256")).unwrap().count(), 0);
    assert_eq!(kiln_ok(&root, &["images", "-q"]).trim(), "");
    let out = kiln(&root, &["inspect", "busybox:one"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("busybox:one"));
}

/// A name with a digest is never made a tag (`tag`, `import`, `build -t`,
/// an output's `name=`): it would name content of another digest. Docker
/// refuses each ("refusing to create a tag with a digest reference").
#[test]
fn a_digest_is_never_given_as_a_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    import_busybox(&root, tmp.path(), "busybox:one");
    let digest = format!("sha256:{}", "a".repeat(64));
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n").unwrap();
    let ctx = ctx.to_str().unwrap();
    let tar = tmp.path().join("rootfs.tar");
    let named = format!("app@{digest}");
    let tagged = format!("app:1@{digest}");
    let output = format!("type=image,name={named}");
    for args in [
        vec!["tag", "busybox:one", &named],
        vec!["tag", "busybox:one", &tagged],
        vec!["import", tar.to_str().unwrap(), &named],
        vec!["build", "-t", &named, ctx],
        vec!["build", "--output", &output, ctx],
    ] {
        let out = kiln(&root, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("refusing to create a tag with a digest reference"),
            "{args:?}: {err}"
        );
    }
    let table = kiln_ok(&root, &["images"]);
    assert!(!table.contains("app"), "{table}");
    // A save into a directory that is not there names the file asked for,
    // not the temporary one beside it.
    let missing = tmp.path().join("no/such/dir/saved.tar");
    let out = kiln(
        &root,
        &["save", "-o", missing.to_str().unwrap(), "busybox:one"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("create {}: ", missing.display())),
        "{err}"
    );
}

/// `--platform` asked of an image of one platform that is another's is
/// refused by every command that reads a stored image, as Docker refuses
/// it, not answered with the image it has; its own platform is taken.
#[test]
fn a_platform_asked_for_is_never_another_platforms_image() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    import_busybox(&root, tmp.path(), "busybox:one");
    let config = inspect(&root, "busybox:one");
    let actual = format!("linux/{}", config["Architecture"].as_str().unwrap());
    let wanted = match actual.as_str() {
        "linux/s390x" => "linux/riscv64",
        _ => "linux/s390x",
    };
    let saved = tmp.path().join("saved.tar");
    let saved = saved.to_str().unwrap();
    let commands: [&[&str]; 6] = [
        &["inspect", "busybox:one"],
        &["history", "busybox:one"],
        &["layers", "busybox:one"],
        &["save", "-o", saved, "busybox:one"],
        &["explain", "--image", "busybox:one"],
        // (With --pull missing, the default, run pulls the platform asked
        // for, as docker run does: this store's image is in no registry.)
        &["run", "--pull", "never", "--rm", "busybox:one", "true"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.splice(1..1, ["--platform", wanted]);
        let out = kiln(&root, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        let mismatch = format!(
            "image busybox:one was found but does not match the specified platform: \
             wanted {wanted}, actual: {actual}"
        );
        assert!(err.contains(&mismatch), "{args:?}: {err}");
    }
    assert!(!Path::new(saved).exists());
    // An id names nothing in a registry: run refuses it, --pull missing
    // (the default) or not, and pulls nothing.
    let images = kiln(&root, &["images", "-q"]);
    let id = String::from_utf8_lossy(&images.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    let out = kiln(&root, &["run", "--platform", wanted, "--rm", &id, "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("does not match the specified platform"),
        "{err}"
    );
    assert!(!err.contains("Pulling"), "{err}");
    // DOCKER_DEFAULT_PLATFORM is run's default --platform, as docker run's.
    let out = common::kiln_command()
        .arg("--root")
        .arg(&root)
        .args(["run", "--pull", "never", "--rm", "busybox:one", "true"])
        .env("DOCKER_DEFAULT_PLATFORM", wanted)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("wanted {wanted}")),
        "{err}"
    );
    for command in &commands[..5] {
        let mut args = command.to_vec();
        args.splice(1..1, ["--platform", actual.as_str()]);
        kiln_ok(&root, &args);
    }
}

#[test]
fn bad_input_is_refused_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let not_tar = tmp.path().join("notes.txt");
    fs::write(&not_tar, "this is not a tar archive\n".repeat(100)).unwrap();
    let out = kiln(&root, &["import", not_tar.to_str().unwrap(), "x:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("notes.txt"), "{err}");
    // `load` of it names the archive as such, not as a layer.
    let out = kiln(&root, &["load", "-i", not_tar.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: archive ") && err.contains("notes.txt: reading tar"),
        "{err}"
    );

    let tar = tmp.path().join("rootfs.tar");
    busybox_rootfs_tar(&tar).unwrap();
    let out = kiln(
        &root,
        &[
            "import",
            tar.to_str().unwrap(),
            "x:1",
            "--change",
            "RUN rm -rf /",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RUN rm -rf /") && err.contains("RUN is not a valid change command"),
        "{err}"
    );
    let out = kiln(&root, &["import", tar.to_str().unwrap(), "Not/Valid:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Not/Valid:1"));

    // A docker archive whose layer does not match the digest it is named by.
    let bad = tmp.path().join("bad.tar");
    {
        let mut b = Command::new("tar");
        let staging = tmp.path().join("bad");
        fs::create_dir_all(staging.join("blobs/sha256")).unwrap();
        let claimed = kiln_layers::Digest::of(b"the real bytes");
        fs::write(
            staging.join("blobs/sha256").join(claimed.hex()),
            b"tampered bytes",
        )
        .unwrap();
        fs::write(
            staging.join("index.json"),
            r#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        run_ok(b.arg("cf").arg(&bad).arg("-C").arg(&staging).arg("."));
        let out = kiln(&root, &["load", "-i", bad.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(claimed.as_str()), "{err}");
        assert!(!root.join("blobs/sha256").join(claimed.hex()).exists());
    }
    assert_eq!(
        fs::read_dir(root.join("blobs/sha256")).unwrap().count(),
        0,
        "nothing stored"
    );
    assert_eq!(fs::read_dir(root.join("ingest")).unwrap().count(), 0);
    assert_eq!(kiln_ok(&root, &["images", "-q"]).trim(), "");
}

#[test]
fn kill_9_during_import_leaves_only_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let tar_path = tmp.path().join("rootfs.tar");
    busybox_rootfs_tar(&tar_path).unwrap();
    let tar = fs::read(&tar_path).unwrap();

    // Feed half the tar on stdin, wait until bytes reach ingest/, kill -9.
    let mut child = kiln_testsupport::ChildGuard::spawn(
        common::kiln_command()
            .arg("--root")
            .arg(&root)
            .args([
                "import",
                "-",
                "victim:1",
                "--compression",
                "none",
                "--progress",
                "quiet",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&tar[..tar.len() / 2]).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let written: u64 = fs::read_dir(root.join("ingest"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        if written > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "import never wrote to ingest/");
        assert!(child.try_wait().unwrap().is_none(), "import exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill_and_reap();
    drop(stdin);

    assert_eq!(
        fs::read_dir(root.join("blobs/sha256")).unwrap().count(),
        0,
        "no blob from a killed import"
    );
    assert!(fs::read_dir(root.join("ingest")).unwrap().count() > 0);
    assert_eq!(kiln_ok(&root, &["images", "-q"]).trim(), "");

    // The next import completes; prune clears the garbage and keeps the image.
    kiln_ok(&root, &["import", tar_path.to_str().unwrap(), "victim:1"]);
    let out = kiln_ok(&root, &["prune"]);
    assert!(out.contains("partial writes: 1,"), "{out}");
    assert_eq!(fs::read_dir(root.join("ingest")).unwrap().count(), 0);
    assert_blobs_match_names(&root);
    assert_eq!(kiln_ok(&root, &["images", "-q"]).lines().count(), 1);
}

#[test]
fn progress_json_reports_start_and_done() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let tar = tmp.path().join("rootfs.tar");
    busybox_rootfs_tar(&tar).unwrap();
    let out = common::kiln(
        &root,
        &["import", tar.to_str().unwrap(), "p:1", "--progress", "json"],
    );
    assert!(out.status.success());
    let events: Vec<Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    assert_eq!(events.last().unwrap()["status"], "done");
    assert_eq!(
        events.last().unwrap()["bytes"],
        fs::metadata(&tar).unwrap().len()
    );
}

/// `kiln import` and `kiln load` take a tar compressed whole with gzip,
/// bzip2, xz or zstd, as `docker import` and `docker load` do (Debian's
/// rootfs tarballs are `.tar.xz`): the same layer as from the plain tar,
/// the same image loaded back.
#[test]
fn import_and_load_take_every_compression_docker_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let rootfs = tmp.path().join("rootfs.tar");
    busybox_rootfs_tar(&rootfs).unwrap();
    let diff_id = kiln_layers::Digest::of(&fs::read(&rootfs).unwrap());
    let saved = tmp.path().join("saved.tar");
    for (tool, suffix) in [
        ("gzip", "gz"),
        ("bzip2", "bz2"),
        ("xz", "xz"),
        ("zstd", "zst"),
    ] {
        let packed = tmp.path().join(format!("rootfs.tar.{suffix}"));
        let bytes = Command::new(tool)
            .args(["-c"])
            .arg(&rootfs)
            .output()
            .unwrap();
        assert!(bytes.status.success(), "{tool}: {bytes:?}");
        fs::write(&packed, &bytes.stdout).unwrap();
        let name = format!("packed:{suffix}");
        kiln_ok(&root, &["import", packed.to_str().unwrap(), &name]);
        let image = inspect(&root, &name);
        assert_eq!(
            image["ImageConfig"]["rootfs"]["diff_ids"][0],
            diff_id.as_str(),
            "{tool}"
        );

        // A saved archive compressed whole loads into a new store.
        if !saved.exists() {
            kiln_ok(&root, &["save", "-o", saved.to_str().unwrap(), &name]);
        }
        let archive = tmp.path().join(format!("saved.tar.{suffix}"));
        let bytes = Command::new(tool).arg("-c").arg(&saved).output().unwrap();
        fs::write(&archive, &bytes.stdout).unwrap();
        let other = tmp.path().join(format!("loaded-{suffix}"));
        let out = kiln_ok(&other, &["load", "-i", archive.to_str().unwrap()]);
        assert_eq!(out, "Loaded image: packed:gz\n", "{tool}");
        let loaded = inspect(&other, "packed:gz");
        assert_eq!(
            loaded["ImageConfig"]["rootfs"]["diff_ids"][0],
            diff_id.as_str()
        );
    }
}

/// What `kiln save` names, as `docker save`: a repository without a tag
/// saves every tag of it (and no other repository's), a tag given twice
/// is written once, an image id saves the image unnamed, and loading that
/// prints the image id (the config digest) as `docker load` does.
#[test]
fn save_names_images_as_docker_save_does() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let id = import_busybox(&root, tmp.path(), "bb:1");
    kiln_ok(&root, &["tag", "bb:1", "bb:2"]);
    kiln_ok(&root, &["tag", "bb:1", "other:latest"]);
    let load = |queries: &[&str], name: &str| -> String {
        let archive = tmp.path().join(format!("{name}.tar"));
        let mut args = vec!["save", "-o", archive.to_str().unwrap()];
        args.extend_from_slice(queries);
        kiln_ok(&root, &args);
        kiln_ok(
            &tmp.path().join(name),
            &["load", "-i", archive.to_str().unwrap()],
        )
    };
    assert_eq!(
        load(&["bb"], "by-repository"),
        "Loaded image: bb:1\nLoaded image: bb:2\n"
    );
    assert_eq!(load(&["bb:1", "bb:1"], "twice"), "Loaded image: bb:1\n");
    assert_eq!(
        load(&[&id[7..19]], "by-id"),
        format!("Loaded image ID: {id}\n")
    );
    let listed: Value = serde_json::from_str(&kiln_ok(
        &tmp.path().join("by-id"),
        &["images", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["ID"], id.as_str(), "{listed}");
    // A name and the id of the same image: one entry, named.
    assert_eq!(
        load(&["bb:1", &id[7..19]], "name-and-id"),
        "Loaded image: bb:1\n"
    );
    // NAME@DIGEST is no tag: the image goes unnamed.
    let digest = listed[0]["Digest"].as_str().unwrap().to_string();
    assert_eq!(
        load(&[&format!("bb@{digest}")], "by-digest"),
        format!("Loaded image ID: {id}\n")
    );
}

#[test]
fn load_accepts_the_classic_docker_archive_layout() {
    // The layout older `docker save` wrote: <id>.json config, <dir>/layer.tar
    // (uncompressed), manifest.json naming them; here gzip-compressed whole,
    // as `docker save | gzip` gives.
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("classic");
    let rootfs = tmp.path().join("rootfs.tar");
    busybox_rootfs_tar(&rootfs).unwrap();
    let layer = fs::read(&rootfs).unwrap();
    let diff_id = kiln_layers::Digest::of(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "container_config": {"Hostname": "kept-as-is"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.as_str()]},
    });
    let config_bytes = serde_json::to_vec_pretty(&config).unwrap();
    let config_id = kiln_layers::Digest::of(&config_bytes);
    fs::create_dir_all(staging.join("0123abcd")).unwrap();
    fs::write(staging.join("0123abcd/layer.tar"), &layer).unwrap();
    fs::write(
        staging.join(format!("{}.json", config_id.hex())),
        &config_bytes,
    )
    .unwrap();
    let manifest = serde_json::json!([{
        "Config": format!("{}.json", config_id.hex()),
        "RepoTags": ["classic/image:v1"],
        "Layers": ["0123abcd/layer.tar"],
    }]);
    fs::write(
        staging.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let archive = tmp.path().join("classic.tar.gz");
    run_ok(
        Command::new("tar")
            .arg("czf")
            .arg(&archive)
            .arg("-C")
            .arg(&staging)
            .arg("."),
    );

    let root = tmp.path().join("store");
    let out = kiln_ok(&root, &["load", "-i", archive.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: classic/image:v1");
    let image = inspect(&root, "classic/image:v1");
    assert_eq!(
        image["Id"],
        config_id.as_str(),
        "the config bytes are kept as they came"
    );
    assert_eq!(
        image["ImageConfig"]["container_config"]["Hostname"],
        "kept-as-is"
    );
    let layer_desc = &image["Manifest"]["layers"][0];
    assert_eq!(
        layer_desc["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(layer_desc["digest"], diff_id.as_str());
    // And it is usable: umoci unpacks what kiln saves from it.
    let oci_dir = tmp.path().join("out");
    kiln_ok(
        &root,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            oci_dir.to_str().unwrap(),
            "classic/image:v1",
        ],
    );
    let bundle = tmp.path().join("bundle");
    run_ok(
        umoci_unpack()
            .arg(format!("{}:v1", oci_dir.display()))
            .arg(&bundle),
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());
}

#[test]
fn load_follows_the_layer_symlinks_of_docker_save() {
    // `docker save` before Docker 25 writes a layer several images share
    // once; each other image's `<id>/layer.tar` is a symlink to it, and may
    // come before it in the tar.
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("shared");
    let rootfs = tmp.path().join("rootfs.tar");
    busybox_rootfs_tar(&rootfs).unwrap();
    let layer = fs::read(&rootfs).unwrap();
    let diff_id = kiln_layers::Digest::of(&layer);
    let mut manifest = Vec::new();
    for (dir, cmd) in [("b-first", "first"), ("a-linked", "linked")] {
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": [cmd]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id.as_str()]},
        });
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_name = format!("{}.json", kiln_layers::Digest::of(&config_bytes).hex());
        fs::create_dir_all(staging.join(dir)).unwrap();
        fs::write(staging.join(&config_name), &config_bytes).unwrap();
        manifest.push(serde_json::json!({
            "Config": config_name,
            "RepoTags": [format!("shared/{cmd}:v1")],
            "Layers": [format!("{dir}/layer.tar")],
        }));
    }
    fs::write(staging.join("b-first/layer.tar"), &layer).unwrap();
    std::os::unix::fs::symlink("../b-first/layer.tar", staging.join("a-linked/layer.tar")).unwrap();
    fs::write(
        staging.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let archive = tmp.path().join("shared.tar");
    // Sorted names: the symlink (a-linked/) comes before its target.
    run_ok(
        Command::new("tar")
            .arg("cf")
            .arg(&archive)
            .arg("--sort=name")
            .arg("-C")
            .arg(&staging)
            .arg("."),
    );

    let root = tmp.path().join("store");
    let out = kiln_ok(&root, &["load", "-i", archive.to_str().unwrap()]);
    assert!(out.contains("Loaded image: shared/linked:v1"), "{out}");
    for name in ["shared/first:v1", "shared/linked:v1"] {
        let image = inspect(&root, name);
        assert_eq!(
            image["Manifest"]["layers"][0]["digest"],
            diff_id.as_str(),
            "{name}"
        );
    }
    let image = inspect(&root, "shared/linked:v1");
    assert_eq!(image["Config"]["Cmd"][0], "linked");
}

/// `umoci unpack --image`, with `--rootless` when the test runs as a user
/// (umoci then leaves the files to that user instead of chowning them).
fn umoci_unpack() -> Command {
    let mut command = Command::new("umoci");
    command.arg("unpack");
    if !kiln_testsupport::is_root() {
        command.arg("--rootless");
    }
    command.arg("--image");
    command
}
