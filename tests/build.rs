//! `kiln build` end to end through the binary, as root: a busybox base
//! imported into a fresh store with `kiln import`, then real builds (RUN in
//! namespaces, overlay snapshots).
//!
//! `progress_plain_snapshots` is data-driven: `testdata/builder/progress/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{busybox_rootfs_tar, kiln, kiln_ok, text};

/// A store with `busybox:latest` in it.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("busybox.tar");
        busybox_rootfs_tar(&tar).unwrap();
        let fixture = Fixture { dir };
        kiln_ok(
            &fixture.root(),
            &[
                "import",
                "--change",
                "CMD [\"sh\"]",
                tar.to_str().unwrap(),
                "busybox:latest",
            ],
        );
        fixture
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn build(&self, args: &[&str]) -> Output {
        let mut all = vec!["build"];
        all.extend_from_slice(args);
        kiln(&self.root(), &all)
    }
}

/// A file name that is not UTF-8 (kiln's paths are strings): an unused one
/// in the context no longer stops every build; a COPY that takes one is
/// refused, naming it, rather than renaming it (`.dockerignore` leaves it
/// out), as is an entry of an archive ADD extracts; a RUN's such file is
/// refused by an output that would rename it.
#[test]
fn names_that_are_not_utf8_are_refused_where_copied_and_ignored_elsewhere() {
    use std::os::unix::ffi::OsStrExt;
    kiln_testsupport::require_namespaces!("runs a build");
    let fixture = Fixture::new();
    let ctx = fixture.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("a"), "a\n").unwrap();
    let junk = ctx.join(std::ffi::OsStr::from_bytes(b"junk\xe9"));
    std::fs::write(&junk, "j\n").unwrap();
    let build = |dockerfile: &str, out: &str| {
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        let dest = fixture.dir.path().join(out);
        let output = format!("type=local,dest={}", dest.display());
        (
            fixture.build(&["--no-cache", "-o", &output, ctx.to_str().unwrap()]),
            dest,
        )
    };
    let (out, dest) = build("FROM busybox\nCOPY a /a\n", "unused");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(dest.join("a")).unwrap(), "a\n");

    let (out, _) = build("FROM busybox\nCOPY . /ctx/\n", "copied");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("junk\u{FFFD}: its name or link target is not UTF-8"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains(".dockerignore"), "{}", text(&out));

    std::fs::write(ctx.join(".dockerignore"), "junk*\n").unwrap();
    let (out, dest) = build("FROM busybox\nCOPY . /ctx/\n", "ignored");
    assert!(out.status.success(), "{}", text(&out));
    assert!(dest.join("ctx/a").is_file());

    // An archive's entry with such a name is refused by ADD too (it was
    // renamed with U+FFFD).
    let src = fixture.dir.path().join("names");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join(std::ffi::OsStr::from_bytes(b"caf\xe9")), "c\n").unwrap();
    let tarred = std::process::Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(ctx.join("names.tar"))
        .arg(".")
        .status()
        .expect("run tar");
    assert!(tarred.success());
    let (out, _) = build("FROM busybox\nADD names.tar /x/\n", "added");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("entry \"./caf\u{FFFD}\": its name is not UTF-8"),
        "{}",
        text(&out)
    );

    let run = "FROM busybox\nRUN touch \"/caf$(printf '\\351')\"\n";
    let (out, _) = build(run, "from-run");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not UTF-8"), "{}", text(&out));
}

/// A socket in the context reaches the image as an empty regular file
/// with the socket's permissions, as BuildKit's context transfer makes it
/// (fsutil asks data of regular files only and creates everything else
/// it has no form for as a regular file); a read-only bind of the
/// context shows it the same way.
#[test]
fn a_socket_in_the_context_is_an_empty_file_as_buildkit_sends_it() {
    use std::os::unix::fs::PermissionsExt;
    kiln_testsupport::require_namespaces!("runs a build");
    let fixture = Fixture::new();
    let ctx = fixture.dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("d")).unwrap();
    std::fs::write(ctx.join("d/a"), "a\n").unwrap();
    let socket = ctx.join("d/sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o751)).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nCOPY . /ctx/\n\
         RUN --mount=type=bind,target=/m test -f /m/d/sock && ! test -S /m/d/sock \
         && ! test -s /m/d/sock && echo bound-as-file > /seen\n",
    )
    .unwrap();
    let dest = fixture.dir.path().join("out");
    let output = format!("type=local,dest={}", dest.display());
    let out = fixture.build(&["-o", &output, ctx.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let copied = std::fs::symlink_metadata(dest.join("ctx/d/sock")).unwrap();
    assert!(copied.is_file(), "{:?}", copied.file_type());
    assert_eq!(copied.len(), 0);
    assert_eq!(copied.permissions().mode() & 0o7777, 0o751);
    assert_eq!(
        std::fs::read_to_string(dest.join("ctx/d/a")).unwrap(),
        "a\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("seen")).unwrap(),
        "bound-as-file\n"
    );

    // Copied onto an existing directory, added, bound alone: the same.
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nCOPY d/sock /sock\nCOPY . /\nADD d/sock /x/\n\
         RUN --mount=type=bind,source=d/sock,target=/s test -f /s && ! test -s /s\n",
    )
    .unwrap();
    let dest = fixture.dir.path().join("out2");
    let output = format!("type=local,dest={}", dest.display());
    let out = fixture.build(&["-o", &output, ctx.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for path in ["sock", "d/sock", "x/sock"] {
        let copied = std::fs::symlink_metadata(dest.join(path)).unwrap();
        assert!(copied.is_file() && copied.len() == 0, "{path}: {copied:?}");
        assert_eq!(copied.permissions().mode() & 0o7777, 0o751, "{path}");
    }
}

fn testdata(area: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/builder")
        .join(area)
}

/// Times and digests out of plain progress, so it can be compared:
/// `DONE 0.3s` → `DONE 0.0s`, `#4 0.012 hi` → `#4 0.000 hi`,
/// `sha256:<64 hex>` → `sha256:<digest>`.
/// The one line a rootless kiln adds to a build's output (tests/rootless.rs
/// checks it): left out when the suite runs as a user
/// (scripts/test-rootless), as root it is never there.
fn rootless_warning(line: &str) -> bool {
    !kiln_testsupport::is_root() && line.starts_with("WARNING: isolation rootless: ")
}

fn normalize(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().filter(|l| !rootless_warning(l)) {
        let line = normalize_digests(line);
        let words: Vec<&str> = line.split(' ').collect();
        let mut normalized: Vec<String> = Vec::with_capacity(words.len());
        for (i, word) in words.iter().enumerate() {
            let (word, comma) = match word.strip_suffix(',') {
                Some(w) => (w, ","),
                None => (*word, ""),
            };
            let is_seconds = word
                .strip_suffix('s')
                .is_some_and(|n| n.contains('.') && n.parse::<f64>().is_ok());
            let is_offset = i == 1
                && words[0].starts_with('#')
                && word.contains('.')
                && word.parse::<f64>().is_ok();
            let word = if is_seconds {
                "0.0s"
            } else if is_offset {
                "0.000"
            } else {
                word
            };
            normalized.push(format!("{word}{comma}"));
        }
        out.push_str(&normalized.join(" "));
        out.push('\n');
    }
    out
}

fn normalize_digests(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("sha256:") {
        out.push_str(&rest[..at + 7]);
        let after = &rest[at + 7..];
        let hex = after.chars().take_while(|c| c.is_ascii_hexdigit()).count();
        if hex == 64 {
            out.push_str("<digest>");
            rest = &after[64..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn progress_plain_snapshots() {
    let fixture = Fixture::new();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(testdata("progress"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in &cases {
        let context = case.to_str().unwrap();
        // Extra flags for the case, if any (e.g. `-t name`).
        let extra = std::fs::read_to_string(case.join("args")).unwrap_or_default();
        let mut args: Vec<&str> = vec!["--progress", "plain"];
        args.extend(extra.split_whitespace());
        args.push(context);
        let first = fixture.build(&args);
        let second = fixture.build(&args);
        let status = format!(
            "{}\n{}\n",
            first.status.code().unwrap_or(-1),
            second.status.code().unwrap_or(-1)
        );
        for (name, actual) in [
            (
                "plain.txt",
                normalize(&String::from_utf8_lossy(&first.stderr)),
            ),
            (
                "plain-rebuild.txt",
                normalize(&String::from_utf8_lossy(&second.stderr)),
            ),
            ("status", status),
        ] {
            failures.extend(kiln_testsupport::golden::compare(&case.join(name), &actual));
        }
        if first.status.success() {
            // Not a terminal: the image id alone on stdout.
            let stdout = String::from_utf8_lossy(&first.stdout);
            assert!(
                stdout.trim().starts_with("sha256:") && stdout.lines().count() == 1,
                "{context}: stdout {stdout:?}"
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn progress_quiet_prints_only_the_id_and_json_one_event_per_line() {
    let fixture = Fixture::new();
    let context = testdata("progress/run-output");
    let context = context.to_str().unwrap();
    let quiet = fixture.build(&["--progress", "quiet", context]);
    assert!(quiet.status.success());
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");
    let id = String::from_utf8_lossy(&quiet.stdout).trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id:?}");

    let json = fixture.build(&["--progress", "json", "--no-cache", context]);
    assert!(json.status.success());
    let stderr = String::from_utf8_lossy(&json.stderr);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "step_started").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "step_done").count(), 3);
    let lines: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "output")
        .filter_map(|e| e["line"].as_str())
        .collect();
    assert_eq!(
        lines,
        ["to stdout", "to stderr", "line 0", "line 1", "line 2"]
    );
    // --no-cache: the RUN steps ran again.
    assert!(events
        .iter()
        .filter(|e| e["event"] == "step_done")
        .skip(1)
        .all(|e| e["status"] == "done"));
    assert!(String::from_utf8_lossy(&json.stdout).starts_with("sha256:"));
}

#[test]
fn normalize_blanks_times_and_digests() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(
        normalize(&format!(
            "#4 0.013 took 1.5s, then\n#4 DONE 12.3s\n#5 writing image {digest} done\n"
        )),
        "#4 0.000 took 0.0s, then\n#4 DONE 0.0s\n#5 writing image sha256:<digest> done\n"
    );
    assert_eq!(normalize("#3 line 0\n"), "#3 line 0\n");
}

/// Writes `files` (path, contents) under a new temp dir; returns it.
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, contents) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    dir
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "build failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "build should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `kiln inspect REF` → the image config (the `Config` member).
fn config_of(root: &Path, reference: &str) -> serde_json::Value {
    let out = kiln_ok(root, &["inspect", reference]);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    value[0]["ImageConfig"].clone()
}

fn tar_names(path: &Path) -> Vec<String> {
    let out = common::run_ok(std::process::Command::new("tar").arg("-tf").arg(path));
    out.lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .collect()
}

#[test]
fn outputs_tags_iidfile_and_metadata_file() {
    let fixture = Fixture::new();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nRUN echo built > /built.txt\nCOPY data.txt /data/\nCMD [\"cat\", \"/built.txt\"]\n",
        ),
        ("data.txt", "data\n"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let o = |name: &str| out.path().join(name).to_str().unwrap().to_string();
    let args = [
        "-t".to_string(),
        "out:one".into(),
        "-t".into(),
        "out:two".into(),
        "--iidfile".into(),
        o("iid"),
        "--metadata-file".into(),
        o("meta.json"),
        // The store, which -t names (the archives too).
        "-o".into(),
        "type=image".into(),
        "-o".into(),
        format!("type=oci,tar=false,dest={}", o("oci-dir")),
        "-o".into(),
        format!("type=oci,dest={}", o("oci.tar")),
        "-o".into(),
        format!("type=docker,dest={}", o("docker.tar")),
        ctx.path().to_str().unwrap().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = ok(&fixture.build(&args));
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(std::fs::read_to_string(out.path().join("iid")).unwrap(), id);
    // A failed build leaves no image id file, not the earlier one (buildx
    // removes it first).
    let failing = context(&[("Dockerfile", "FROM busybox\nRUN false\n")]);
    failed(&fixture.build(&["--iidfile", &o("iid"), failing.path().to_str().unwrap()]));
    assert!(!out.path().join("iid").exists());
    // A --dry-run builds nothing and leaves the file alone.
    std::fs::write(out.path().join("iid"), "kept").unwrap();
    ok(&fixture.build(&[
        "--dry-run",
        "--iidfile",
        &o("iid"),
        ctx.path().to_str().unwrap(),
    ]));
    assert_eq!(
        std::fs::read_to_string(out.path().join("iid")).unwrap(),
        "kept"
    );

    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["containerimage.config.digest"], id.as_str());
    let manifest = meta["containerimage.digest"].as_str().unwrap();
    assert!(manifest.starts_with("sha256:"));
    assert_eq!(meta["containerimage.descriptor"]["digest"], manifest);
    // The names as written, as buildx hands them to BuildKit: two that
    // name one repository and tag are both given.
    assert_eq!(meta["image.name"], "out:one,out:two");
    ok(&fixture.build(&[
        "-t",
        "out:one",
        "-t",
        "docker.io/library/out:one",
        "--metadata-file",
        &o("meta-twice.json"),
        ctx.path().to_str().unwrap(),
    ]));
    let twice: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("meta-twice.json")).unwrap())
            .unwrap();
    assert_eq!(twice["image.name"], "out:one,docker.io/library/out:one");

    // Both tags name the same image.
    let images = kiln_ok(&fixture.root(), &["images"]);
    assert!(
        images.contains("out") && images.contains("one") && images.contains("two"),
        "{images}"
    );
    assert_eq!(
        config_of(&fixture.root(), "out:one"),
        config_of(&fixture.root(), "out:two")
    );

    // OCI layout directory and tar, docker-archive tar.
    let oci_dir = out.path().join("oci-dir");
    assert!(oci_dir.join("oci-layout").is_file());
    let index = std::fs::read_to_string(oci_dir.join("index.json")).unwrap();
    assert!(index.contains(manifest), "{index}");
    let manifest_hex = manifest.trim_start_matches("sha256:");
    assert!(oci_dir.join("blobs/sha256").join(manifest_hex).is_file());
    let oci_tar = tar_names(&out.path().join("oci.tar"));
    assert!(oci_tar.iter().any(|n| n == "index.json"), "{oci_tar:?}");
    assert!(
        oci_tar.iter().any(|n| n.ends_with(manifest_hex)),
        "{oci_tar:?}"
    );
    let docker_tar = tar_names(&out.path().join("docker.tar"));
    assert!(
        docker_tar.iter().any(|n| n == "manifest.json"),
        "{docker_tar:?}"
    );

    // type=local: the final root filesystem. buildx refuses --iidfile
    // beside it (no image id names a directory), and its metadata file
    // holds no image keys (BuildKit's local exporter answers none).
    let local = format!("type=local,dest={}", o("rootfs"));
    let ctx_arg = ctx.path().to_str().unwrap();
    let err = failed(&fixture.build(&["--iidfile", &o("iid-local"), "-o", &local, ctx_arg]));
    assert!(
        err.contains("--iidfile: local and tar exporters are incompatible with image ID file"),
        "{err}"
    );
    assert!(!out.path().join("iid-local").exists());
    assert!(!out.path().join("rootfs").exists());
    let id = ok(&fixture.build(&[
        "--metadata-file",
        &o("meta-local.json"),
        "-o",
        &local,
        ctx_arg,
    ]));
    assert_eq!(id, "", "a build that leaves no image prints no id");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("meta-local.json")).unwrap())
            .unwrap();
    // (buildx writes `{}`: no warnings without BUILDX_METADATA_WARNINGS.)
    assert_eq!(meta, serde_json::json!({}));
    let rootfs = out.path().join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("built.txt")).unwrap(),
        "built\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/data.txt")).unwrap(),
        "data\n"
    );
    assert!(rootfs.join("bin/busybox").is_file());
}

/// An output's `source-date-epoch=` (every BuildKit exporter takes it)
/// dates what the exporters make, over the SOURCE_DATE_EPOCH build arg:
/// the config and the local output's files; a RUN still sees the build
/// arg. Outputs give the same one or none.
#[test]
fn an_outputs_source_date_epoch_dates_the_image_and_files_not_the_build_arg() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    let fixture = Fixture::new();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nARG SOURCE_DATE_EPOCH\nRUN echo $SOURCE_DATE_EPOCH > /seen\n",
    )]);
    let out = fixture.dir.path().join("out");
    ok(&fixture.build(&[
        "--build-arg",
        "SOURCE_DATE_EPOCH=5",
        "--output",
        "type=image,name=epoch:1,source-date-epoch=86400",
        "--output",
        &format!("type=local,dest={},source-date-epoch=86400", out.display()),
        ctx.path().to_str().unwrap(),
    ]));
    let inspect: serde_json::Value =
        serde_json::from_str(&kiln_ok(&fixture.root(), &["inspect", "epoch:1"])).unwrap();
    assert_eq!(inspect[0]["Created"], "1970-01-02T00:00:00Z", "{inspect}");
    assert_eq!(std::fs::read_to_string(out.join("seen")).unwrap(), "5\n");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(out.join("seen")).unwrap().mtime(), 86400);
    let err = failed(&fixture.build(&[
        "--output",
        "type=image,name=epoch:2,source-date-epoch=1",
        "--output",
        &format!("type=local,dest={}", out.display()),
        ctx.path().to_str().unwrap(),
    ]));
    assert!(err.contains("says no source-date-epoch"), "{err}");
}

/// SOURCE_DATE_EPOCH in the environment is a build arg, as buildx passes
/// it: a RUN under `ARG SOURCE_DATE_EPOCH` sees it, its history holds it,
/// and a `--build-arg` wins over it. A Dockerfile that declares no such ARG
/// is not told the build arg went unused (the frontend reads it).
#[test]
fn source_date_epoch_from_the_environment_is_a_build_arg() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    let fixture = Fixture::new();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nARG SOURCE_DATE_EPOCH\nRUN echo $SOURCE_DATE_EPOCH > /seen\n",
        ),
        ("Dockerfile.plain", "FROM busybox\nRUN echo plain > /seen\n"),
    ]);
    let with_env = |epoch: &str, args: &[&str]| {
        common::kiln_command()
            .arg("--root")
            .arg(fixture.root())
            .args(args)
            .env("SOURCE_DATE_EPOCH", epoch)
            .env("KILN_PROGRESS", "plain")
            .output()
            .unwrap()
    };
    let dir = ctx.path().to_str().unwrap();
    let build = |args: &[&str]| with_env("1700000000", &[&["build"], args, &[dir]].concat());
    let seen = |tag: &str| kiln_ok(&fixture.root(), &["run", "--rm", tag, "cat", "/seen"]);
    ok(&build(&["-t", "epoch:env"]));
    assert_eq!(seen("epoch:env"), "1700000000\n");
    let history = kiln_ok(&fixture.root(), &["history", "--no-trunc", "epoch:env"]);
    assert!(
        history.contains("SOURCE_DATE_EPOCH=1700000000"),
        "{history}"
    );
    ok(&build(&[
        "-t",
        "epoch:arg",
        "--build-arg",
        "SOURCE_DATE_EPOCH=86400",
    ]));
    assert_eq!(seen("epoch:arg"), "86400\n");
    let plain = ctx.path().join("Dockerfile.plain");
    let plain = build(&["-t", "epoch:plain", "-f", plain.to_str().unwrap()]);
    ok(&plain);
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(!stderr.contains("were not consumed"), "{stderr}");
    // The value BuildKit's frontend hands on: the number's own form.
    ok(&with_env("0100", &["build", "-t", "epoch:zero", dir]));
    assert_eq!(seen("epoch:zero"), "100\n");
    // A flag wins over the environment, which is then not read; a command
    // that builds nothing does not read it either.
    ok(&with_env(
        "abc",
        &[
            "build",
            "-t",
            "epoch:flag",
            "--build-arg",
            "SOURCE_DATE_EPOCH=7",
            dir,
        ],
    ));
    assert_eq!(seen("epoch:flag"), "7\n");
    ok(&with_env("abc", &["explain", dir]));
}

/// A global `ARG SOURCE_DATE_EPOCH=…` is the epoch when the build gives
/// none, as BuildKit's frontend reads the meta args for it (the config
/// and history dated then, a RUN under the ARG seeing it); a build arg
/// wins, and a default that is not a number is refused.
#[test]
fn a_global_arg_gives_source_date_epoch_a_default() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    let fixture = Fixture::new();
    let dockerfile = "ARG SOURCE_DATE_EPOCH=86400\nFROM busybox\nARG SOURCE_DATE_EPOCH\n\
                      RUN echo $SOURCE_DATE_EPOCH > /seen\n";
    let ctx = context(&[("Dockerfile", dockerfile)]);
    let created = |tag: &str| {
        let inspect: serde_json::Value =
            serde_json::from_str(&kiln_ok(&fixture.root(), &["inspect", tag])).unwrap();
        inspect[0]["Created"].as_str().unwrap().to_string()
    };
    let seen = |tag: &str| kiln_ok(&fixture.root(), &["run", "--rm", tag, "cat", "/seen"]);
    let dir = ctx.path().to_str().unwrap();
    ok(&fixture.build(&["-t", "default:1", dir]));
    assert_eq!(created("default:1"), "1970-01-02T00:00:00Z");
    assert_eq!(seen("default:1"), "86400\n");
    ok(&fixture.build(&["-t", "default:2", "--build-arg", "SOURCE_DATE_EPOCH=5", dir]));
    assert_eq!(created("default:2"), "1970-01-01T00:00:05Z");
    assert_eq!(seen("default:2"), "5\n");
    let bad = context(&[("Dockerfile", "ARG SOURCE_DATE_EPOCH=soon\nFROM busybox\n")]);
    let err = failed(&fixture.build(&[bad.path().to_str().unwrap()]));
    assert!(
        err.contains("Dockerfile: ARG SOURCE_DATE_EPOCH=soon: invalid"),
        "{err}"
    );
}

/// SOURCE_DATE_EPOCH with an image output's `rewrite-timestamp=true`
/// gives one image whatever the store holds: the first root has cached
/// the same steps built with no epoch (layers with this moment's mtimes),
/// which a build under the epoch does not take. Without
/// `rewrite-timestamp`, as with BuildKit, the epoch dates the config and
/// history only: a RUN's file keeps its time in the layer.
#[test]
fn source_date_epoch_gives_the_same_image_in_two_roots_whatever_they_cached() {
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nRUN echo hi > /hi && mkdir /d\nCOPY f.txt /d/\nENV X=1\n",
        ),
        ("f.txt", "same\n"),
    ]);
    // One base tar: its path goes into the imported image's history.
    let base = tempfile::tempdir().unwrap();
    let tar = base.path().join("busybox.tar");
    busybox_rootfs_tar(&tar).unwrap();
    let ids: Vec<String> = (0..2)
        .map(|n| {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("store");
            let run = |args: &[&str]| {
                common::kiln_command()
                    .arg("--root")
                    .arg(&root)
                    .args(args)
                    .env("SOURCE_DATE_EPOCH", "1700000000")
                    .env("KILN_PROGRESS", "plain")
                    .output()
                    .unwrap()
            };
            ok(&run(&["import", tar.to_str().unwrap(), "busybox:latest"]));
            if n == 0 {
                let mut no_epoch = common::kiln_command();
                no_epoch
                    .arg("--root")
                    .arg(&root)
                    .args(["build", ctx.path().to_str().unwrap()])
                    .env_remove("SOURCE_DATE_EPOCH")
                    .env("KILN_PROGRESS", "plain");
                ok(&no_epoch.output().unwrap());
            }
            let out = dir.path().join("meta.json");
            ok(&run(&[
                "build",
                "--output",
                "type=image,rewrite-timestamp=true",
                "--metadata-file",
                out.to_str().unwrap(),
                ctx.path().to_str().unwrap(),
            ]));
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
            // `/hi` as `tar -tv --full-time` lists it (in UTC) in the RUN's
            // layer (after busybox's) of an OCI tar built with `attributes`.
            let hi_in_layer = |attributes: &str| -> String {
                let tar = dir.path().join("image.tar");
                let spec = format!("type=oci,dest={}{attributes}", tar.display());
                ok(&run(&[
                    "build",
                    "--output",
                    &spec,
                    ctx.path().to_str().unwrap(),
                ]));
                let member = |name: &str| -> Vec<u8> {
                    let out = std::process::Command::new("tar")
                        .arg("-xOf")
                        .arg(&tar)
                        .arg(name)
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{name}");
                    out.stdout
                };
                let blob = |digest: &serde_json::Value| {
                    let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
                    format!("blobs/sha256/{hex}")
                };
                let index: serde_json::Value =
                    serde_json::from_slice(&member("index.json")).unwrap();
                let manifest: serde_json::Value =
                    serde_json::from_slice(&member(&blob(&index["manifests"][0]["digest"])))
                        .unwrap();
                let layer = blob(&manifest["layers"][1]["digest"]);
                let listing = common::run_ok(
                    std::process::Command::new("sh")
                        .args(["-c", "tar -xOf \"$0\" \"$1\" | tar -tzv --full-time"])
                        .arg(&tar)
                        .arg(&layer)
                        .env("TZ", "UTC"),
                );
                listing
                    .lines()
                    .find(|l| {
                        l.split_whitespace()
                            .last()
                            .is_some_and(|n| n.trim_start_matches("./") == "hi")
                    })
                    .unwrap_or_else(|| panic!("no hi in:\n{listing}"))
                    .to_string()
            };
            let hi = hi_in_layer(",rewrite-timestamp=true");
            assert!(hi.contains(" 2023-11-14 22:13:20 "), "{hi}");
            if n == 0 {
                // No rewrite-timestamp: the RUN's file as it was made.
                let hi = hi_in_layer("");
                assert!(!hi.contains(" 2023-11-14 "), "{hi}");
            }
            meta["containerimage.digest"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(ids[0].starts_with("sha256:"));
    assert_eq!(ids[0], ids[1]);
}

/// In plain progress, how the step named `name` ended: `CACHED`, `DONE`
/// or `ERROR` (the word after its `#N`).
fn step_outcome(stderr: &str, name: &str) -> String {
    let header = stderr
        .lines()
        .find(|l| l.split_once(' ').is_some_and(|(_, rest)| rest == name))
        .unwrap_or_else(|| panic!("no step {name:?} in:\n{stderr}"));
    let id = header.split(' ').next().unwrap().to_string();
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{id} ")))
        .find_map(|rest| {
            ["CACHED", "DONE", "ERROR"]
                .into_iter()
                .find(|w| rest.starts_with(w))
        })
        .unwrap_or("none")
        .to_string()
}

#[test]
fn target_builds_only_the_stages_it_needs_and_no_cache_reruns() {
    let fixture = Fixture::new();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox AS base\nRUN echo base > /base\n\
         FROM busybox AS broken\nRUN exit 1\n\
         FROM base AS wanted\nCOPY --from=0 /base /copied\n\
         FROM broken\n",
    )]);
    let dir = ctx.path().to_str().unwrap();
    // The last stage needs `broken`, which fails.
    failed(&fixture.build(&[dir]));
    let first = fixture.build(&["--target", "wanted", "-t", "wanted:1", dir]);
    ok(&first);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(!stderr.contains("exit 1"), "{stderr}");
    assert!(
        stderr.contains("[wanted 2/2] COPY --from=0 /base /copied"),
        "{stderr}"
    );
    // Cache across processes, and --no-cache runs the steps again.
    let again = fixture.build(&["--target", "wanted", dir]);
    let again = String::from_utf8_lossy(&again.stderr);
    let run = "[base 2/2] RUN echo base > /base";
    let copy = "[wanted 2/2] COPY --from=0 /base /copied";
    assert_eq!(step_outcome(&again, run), "CACHED", "{again}");
    assert_eq!(step_outcome(&again, copy), "CACHED", "{again}");
    let fresh = fixture.build(&["--target", "wanted", "--no-cache", dir]);
    let fresh = String::from_utf8_lossy(&fresh.stderr);
    assert_eq!(step_outcome(&fresh, run), "DONE", "{fresh}");
    assert_eq!(step_outcome(&fresh, copy), "DONE", "{fresh}");
}

#[test]
fn network_none_leaves_only_loopback() {
    let fixture = Fixture::new();
    // /proc/net/dev: two header lines, then one line per interface.
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN test \"$(wc -l < /proc/net/dev)\" -eq 3 && grep -q lo: /proc/net/dev\n",
    )]);
    let dir = ctx.path().to_str().unwrap();
    ok(&fixture.build(&["--network", "none", dir]));
    let host_interfaces = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .count();
    if host_interfaces > 3 {
        // Host networking sees the host's other interfaces.
        failed(&fixture.build(&["--network", "host", "--no-cache", dir]));
    }
    // The default private network has one more: slirp4netns's tap0.
    failed(&fixture.build(&["--no-cache", dir]));
}

/// RUN's default network is a namespace of its own behind slirp4netns:
/// a server on the host's 127.0.0.1 is out of reach (by 127.0.0.1, the
/// container's own loopback, and by slirp's gateway 10.0.2.2), while
/// names resolve and the Debian mirror of the host's apt sources answers
/// over http through the NAT. `--network host` and `RUN --network=host`
/// (granted `--allow network.host`) reach the host's loopback server.
#[test]
fn run_network_is_private_by_default_and_host_when_asked() {
    let fixture = Fixture::new();
    let port = kiln_testsupport::network::loopback_server("host-secret").unwrap();
    let release = kiln_testsupport::network::debian_mirror_release().unwrap();
    let host_url = format!("http://127.0.0.1:{port}/");
    let private = context(&[(
        "Dockerfile",
        &format!(
            "FROM busybox\n\
             RUN ! timeout 5 wget -q -O- {host_url} && \
                 ! timeout 5 wget -q -O- http://10.0.2.2:{port}/ && \
                 timeout 20 wget -q -O- {release} | grep -q '^Origin: Debian'\n"
        ),
    )]);
    let out = fixture.build(&[private.path().to_str().unwrap()]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warned = |l: &str| l.starts_with("WARNING") && !rootless_warning(l);
    assert!(!stderr.lines().any(warned), "{stderr}");
    let reach = |run_flag: &str| {
        context(&[(
            "Dockerfile",
            &format!("FROM busybox\nRUN {run_flag} wget -q -O- {host_url} | grep -q host-secret\n"),
        )])
    };
    let plain = reach("");
    let dir = plain.path().to_str().unwrap();
    failed(&fixture.build(&[dir]));
    ok(&fixture.build(&["--network", "host", dir]));
    let flagged = reach("--network=host");
    ok(&fixture.build(&["--allow", "network.host", flagged.path().to_str().unwrap()]));
}

/// A build's RUNs on the default network join a namespace that an earlier
/// RUN's slirp4netns still serves (BuildKit pools its network namespaces
/// too): the first RUN has slirp4netns's tap0 (not the host's network),
/// the second is in its namespace and reaches the Debian mirror through
/// it; a `--network=none` RUN gets its own.
#[test]
fn runs_one_after_another_share_one_private_network() {
    let fixture = Fixture::new();
    let release = kiln_testsupport::network::debian_mirror_release().unwrap();
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM busybox\n\
             RUN readlink /proc/self/ns/net > /first && test -e /sys/class/net/tap0\n\
             RUN test \"$(readlink /proc/self/ns/net)\" = \"$(cat /first)\" && \
                 timeout 20 wget -q -O- {release} | grep -q '^Origin: Debian'\n\
             RUN --network=none test \"$(readlink /proc/self/ns/net)\" != \"$(cat /first)\"\n"
        ),
    )]);
    let out = fixture.build(&[ctx.path().to_str().unwrap()]);
    ok(&out);
}

/// Serves `body` (with a Last-Modified date) on the host's loopback.
fn serve_file(body: &'static [u8]) -> String {
    let file = kiln_testsupport::network::ServedFile {
        body: std::sync::Arc::new(std::sync::Mutex::new(body.to_vec())),
        last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT"),
    };
    format!("http://{}", file.serve().unwrap())
}

/// Serves whatever `body` holds at the time of each request.
fn serve_changing_file(body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>) -> String {
    let file = kiln_testsupport::network::ServedFile {
        body,
        last_modified: None,
    };
    format!("http://{}", file.serve().unwrap())
}

/// Without --checksum, ADD of a URL is keyed on what the URL serves now,
/// as BuildKit does: new content at the same URL is not a cache hit.
#[test]
fn add_url_without_checksum_rebuilds_when_the_content_changes() {
    let fixture = Fixture::new();
    let body = std::sync::Arc::new(std::sync::Mutex::new(b"first".to_vec()));
    let url = serve_changing_file(body.clone());
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM busybox\nADD {url}/files/data.txt /fetched/\n"),
    )]);
    let export = |dir: &Path| {
        let dest = format!("type=local,dest={}", dir.display());
        ok(&fixture.build(&["-o", &dest, ctx.path().to_str().unwrap()]));
        std::fs::read(dir.join("fetched/data.txt")).unwrap()
    };
    let out = tempfile::tempdir().unwrap();
    assert_eq!(export(&out.path().join("1")), b"first");
    *body.lock().unwrap() = b"second".to_vec();
    assert_eq!(export(&out.path().join("2")), b"second");
}

#[test]
fn add_url_with_checksum() {
    let fixture = Fixture::new();
    let url = serve_file(b"hello");
    let good = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM busybox\nADD --checksum={good} {url}/files/hello.txt /fetched/\n"),
    )]);
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    ok(&fixture.build(&["-o", &dest, ctx.path().to_str().unwrap()]));
    let fetched = out.path().join("fetched/hello.txt");
    assert_eq!(std::fs::read(&fetched).unwrap(), b"hello");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&fetched).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.mtime(), 1_445_412_480);

    let bad = format!("sha256:{}", "0".repeat(64));
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM busybox\nADD --checksum={bad} {url}/files/hello.txt /fetched/\n"),
    )]);
    let stderr = failed(&fixture.build(&[ctx.path().to_str().unwrap()]));
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");
    assert!(stderr.to_lowercase().contains("checksum"), "{stderr}");
}

/// Serves `/first.txt` and `/second.txt` (Last-Modified set) on
/// 127.0.0.1, counting each `METHOD /path` it is asked for.
fn serve_counting() -> (
    String,
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
) {
    use std::io::{Read, Write};
    let counts = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = counts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // The request line and headers arrive before the client waits
            // for an answer: read up to the blank line.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let request = String::from_utf8_lossy(&request).into_owned();
            let mut words = request.split(' ');
            let method = words.next().unwrap_or("").to_string();
            let path = words.next().unwrap_or("").to_string();
            *seen
                .lock()
                .unwrap()
                .entry(format!("{method} {path}"))
                .or_insert(0) += 1;
            let body: &[u8] = match path.as_str() {
                "/first.txt" => b"first file",
                "/second.txt" => b"second file",
                _ => {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(body);
        }
    });
    (format!("http://{addr}"), counts)
}

/// A build fetches each ADD URL once: the download its cache key was
/// computed on (no --checksum) is the one the step copies, and a URL added
/// twice is fetched once. A rebuild served from the cache fetches the URL
/// without a checksum once, to compare its content, and the other not at
/// all.
#[test]
fn add_url_is_downloaded_once_per_build() {
    let fixture = Fixture::new();
    let (url, counts) = serve_counting();
    let second_sha = "sha256:54811cbc6c86311729b0a33e26c89087881b36b9ca3217d15cb5196e35f9a7e3";
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM busybox\n\
             ADD {url}/first.txt /fetched/\n\
             ADD --checksum={second_sha} {url}/second.txt /fetched/\n\
             ADD {url}/first.txt /again/\n"
        ),
    )]);
    let steps = [
        format!("[2/4] ADD {url}/first.txt /fetched/"),
        format!("[3/4] ADD --checksum={second_sha} {url}/second.txt /fetched/"),
        format!("[4/4] ADD {url}/first.txt /again/"),
    ];
    let out = tempfile::tempdir().unwrap();
    let build = |name: &str| {
        let dest = format!("type=local,dest={}", out.path().join(name).display());
        let output = fixture.build(&[
            "--progress",
            "plain",
            "-o",
            &dest,
            ctx.path().to_str().unwrap(),
        ]);
        ok(&output);
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let get_counts = || {
        let counts = counts.lock().unwrap();
        (
            counts.get("GET /first.txt").copied().unwrap_or(0),
            counts.get("GET /second.txt").copied().unwrap_or(0),
            counts.values().sum::<usize>(),
        )
    };
    let check_files = |name: &str| {
        use std::os::unix::fs::MetadataExt;
        for (path, body) in [
            ("fetched/first.txt", &b"first file"[..]),
            ("fetched/second.txt", b"second file"),
            ("again/first.txt", b"first file"),
        ] {
            let file = out.path().join(name).join(path);
            assert_eq!(std::fs::read(&file).unwrap(), body, "{path}");
            let meta = std::fs::metadata(&file).unwrap();
            assert_eq!(meta.mode() & 0o7777, 0o600, "{path}");
            assert_eq!(meta.mtime(), 1_445_412_480, "{path}");
        }
    };

    let first = build("1");
    for step in &steps {
        assert_eq!(step_outcome(&first, step), "DONE", "{first}");
    }
    check_files("1");
    // One GET per URL, and nothing else asked.
    assert_eq!(get_counts(), (1, 1, 2), "{:?}", counts.lock().unwrap());

    let again = build("2");
    for step in &steps {
        assert_eq!(step_outcome(&again, step), "CACHED", "{again}");
    }
    check_files("2");
    // The URL without a checksum fetched once more to compare its content;
    // the one with a checksum not at all.
    assert_eq!(get_counts(), (2, 1, 3), "{:?}", counts.lock().unwrap());

    // The downloads are the build's own and gone after it.
    let builds = fixture.root().join("builds");
    let left: Vec<String> = std::fs::read_dir(&builds)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("urls-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn dockerfile_specific_dockerignore_wins() {
    let fixture = Fixture::new();
    let ctx = context(&[
        ("app.Dockerfile", "FROM busybox\nCOPY . /ctx/\n"),
        ("app.Dockerfile.dockerignore", "secret.txt\n"),
        (".dockerignore", "other.txt\n"),
        ("secret.txt", "s\n"),
        ("other.txt", "o\n"),
        ("kept.txt", "k\n"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    let file = ctx.path().join("app.Dockerfile");
    ok(&fixture.build(&[
        "-f",
        file.to_str().unwrap(),
        "-o",
        &dest,
        ctx.path().to_str().unwrap(),
    ]));
    let ctx_copy = out.path().join("ctx");
    assert!(ctx_copy.join("kept.txt").is_file());
    assert!(!ctx_copy.join("secret.txt").exists());
    // Only the Dockerfile's own ignore file applies.
    assert!(ctx_copy.join("other.txt").is_file());
}

#[test]
fn missing_copy_source_and_unused_build_args_are_reported() {
    let fixture = Fixture::new();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN true\nCOPY nothere.txt /x\n",
    )]);
    let stderr = failed(&fixture.build(&[
        "--build-arg",
        "NOT_DECLARED=1",
        ctx.path().to_str().unwrap(),
    ]));
    assert!(
        stderr.contains("One or more build-args [NOT_DECLARED] were not consumed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("COPY source \"nothere.txt\" (line 3)"),
        "{stderr}"
    );
    // The Dockerfile around it, the line marked.
    assert!(stderr.contains("Dockerfile:3\n"), "{stderr}");
    assert!(
        stderr.contains("   3 | >>> COPY nothere.txt /x\n"),
        "{stderr}"
    );
}

#[test]
fn instructions_reach_the_image_config_and_filesystem() {
    let fixture = Fixture::new();
    let ctx = context(&[(
        "Dockerfile",
        r#"FROM busybox AS first
RUN echo first > /first
FROM busybox
MAINTAINER someone <a@b.c>
ARG TARGETARCH
ARG BUILDPLATFORM
ARG DIR=app
ARG SHADOWED=from-arg
ENV SHADOWED=from-env
RUN echo "$TARGETARCH $BUILDPLATFORM $SHADOWED" > /predefined
RUN ["/bin/sh", "-c", "echo exec-form > /exec"]
SHELL ["/bin/sh", "-ec"]
RUN echo "$0" > /shell-name
COPY --from=0 /first /from-index
WORKDIR /srv/$DIR
WORKDIR sub
RUN pwd > /workdir
USER nobody
RUN id -u > /tmp/uid
CMD ["inherited"]
ENTRYPOINT ["/bin/echo"]
STOPSIGNAL SIGINT
HEALTHCHECK --interval=1m30s --timeout=500ms CMD true
"#,
    )]);
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    ok(&fixture.build(&[
        "-t",
        "instr:1",
        "-o",
        "type=image",
        "-o",
        &dest,
        ctx.path().to_str().unwrap(),
    ]));
    let read = |p: &str| std::fs::read_to_string(out.path().join(p)).unwrap();
    let arch = kiln_testsupport::image::host_platform();
    let arch = arch.split('/').nth(1).unwrap().to_string();
    let predefined = read("predefined");
    assert!(
        predefined.starts_with(&format!("{arch} linux/{arch}")),
        "{predefined}"
    );
    assert!(predefined.ends_with(" from-env\n"), "{predefined}");
    assert_eq!(read("exec"), "exec-form\n");
    assert_eq!(read("shell-name"), "/bin/sh\n");
    assert_eq!(read("from-index"), "first\n");
    assert_eq!(read("workdir"), "/srv/app/sub\n");
    assert_eq!(read("tmp/uid"), "65534\n");

    let config = config_of(&fixture.root(), "instr:1");
    assert_eq!(config["author"], "someone <a@b.c>");
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/echo"]));
    // ENTRYPOINT after CMD in the same stage keeps it; the base's CMD ["sh"]
    // was replaced by the stage's own.
    assert_eq!(c["Cmd"], serde_json::json!(["inherited"]));
    assert_eq!(c["WorkingDir"], "/srv/app/sub");
    assert_eq!(c["User"], "nobody");
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(c["Healthcheck"]["Interval"], 90_000_000_000u64);
    assert_eq!(c["Healthcheck"]["Timeout"], 500_000_000u64);
    let env = c["Env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "SHADOWED=from-env"));
    assert!(!env.iter().any(|e| e.as_str().unwrap().starts_with("DIR=")));
    // Metadata-only steps are empty layers in the history.
    let history = config["history"].as_array().unwrap();
    let empty = |created_by: &str| {
        history
            .iter()
            .find(|h| h["created_by"].as_str().unwrap_or("").contains(created_by))
            .unwrap_or_else(|| panic!("no history entry for {created_by}: {history:?}"))
            ["empty_layer"]
            == true
    };
    assert!(empty("STOPSIGNAL"));
    assert!(!empty("echo exec-form"));
    let layers = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        layers
    );
}

#[test]
fn entrypoint_resets_an_inherited_cmd() {
    let fixture = Fixture::new();
    // busybox:latest has CMD ["sh"]; a stage that only sets ENTRYPOINT drops it.
    let ctx = context(&[("Dockerfile", "FROM busybox\nENTRYPOINT [\"/bin/true\"]\n")]);
    ok(&fixture.build(&["-t", "ep:1", ctx.path().to_str().unwrap()]));
    let config = config_of(&fixture.root(), "ep:1");
    assert!(config["config"]["Cmd"].is_null(), "{config}");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/bin/true"])
    );
}

#[test]
fn push_to_a_registry() {
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let fixture = Fixture::new();
    let ctx = context(&[("Dockerfile", "FROM busybox\nRUN echo pushed > /p\n")]);
    let reference = format!("{}/test/pushed:1", registry.host);
    let id = ok(&fixture.build(&[
        "--push",
        "--insecure-registry",
        &registry.host,
        "-t",
        &reference,
        ctx.path().to_str().unwrap(),
    ]));
    // Pulled back into a fresh store: the same image.
    let other = tempfile::tempdir().unwrap();
    kiln_ok(
        other.path(),
        &["pull", "--insecure-registry", &registry.host, &reference],
    );
    let pulled = config_of(other.path(), &reference);
    let built = config_of(&fixture.root(), &reference);
    assert_eq!(pulled, built);
    assert!(id.starts_with("sha256:"));

    // The store keeps the built layer as plain tar; what was pushed has it
    // compressed (gzip by default, zstd on request), and the metadata file
    // names the pushed manifest.
    let layer_types = |root: &Path, reference: &str| -> (String, Vec<String>) {
        let store = kiln_layers::Store::open(root).unwrap();
        let desc = store
            .resolve(&kiln_layers::Reference::parse(reference).unwrap())
            .unwrap()
            .unwrap();
        let manifest = match store.read_manifest(&desc).unwrap() {
            kiln_layers::ManifestKind::Image(m) => m,
            kiln_layers::ManifestKind::Index(_) => panic!("an index for {reference}"),
        };
        let types = manifest
            .layers
            .iter()
            .map(|l| l.media_type.clone())
            .collect();
        (desc.digest.to_string(), types)
    };
    let (_, local) = layer_types(&fixture.root(), &reference);
    assert_eq!(local.last().unwrap(), kiln_layers::media::OCI_LAYER);
    let (pushed_digest, pushed) = layer_types(other.path(), &reference);
    assert_eq!(
        pushed,
        vec![kiln_layers::media::OCI_LAYER_GZIP.to_string(); local.len()]
    );
    let zstd_ref = format!("{}/test/pushed:zstd", registry.host);
    let meta = fixture.dir.path().join("meta.json");
    ok(&fixture.build(&[
        "--push",
        "--compression",
        "zstd",
        "--metadata-file",
        meta.to_str().unwrap(),
        "--insecure-registry",
        &registry.host,
        "-t",
        &zstd_ref,
        ctx.path().to_str().unwrap(),
    ]));
    kiln_ok(
        other.path(),
        &["pull", "--insecure-registry", &registry.host, &zstd_ref],
    );
    let (zstd_digest, zstd) = layer_types(other.path(), &zstd_ref);
    assert_eq!(zstd.last().unwrap(), kiln_layers::media::OCI_LAYER_ZSTD);
    assert_ne!(zstd_digest, pushed_digest);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(meta["containerimage.digest"], zstd_digest.as_str());
    assert_eq!(config_of(other.path(), &zstd_ref), built);
    // Without force-compression the base image's layer went as the store
    // holds it (gzip); with it, every layer goes zstd.
    assert_eq!(zstd[0], kiln_layers::media::OCI_LAYER_GZIP);
    let forced_ref = format!("{}/test/pushed:forced", registry.host);
    ok(&fixture.build(&[
        "--output",
        &format!("type=image,name={forced_ref},push=true,compression=zstd,force-compression=true"),
        "--insecure-registry",
        &registry.host,
        ctx.path().to_str().unwrap(),
    ]));
    kiln_ok(
        other.path(),
        &["pull", "--insecure-registry", &registry.host, &forced_ref],
    );
    let (_, forced) = layer_types(other.path(), &forced_ref);
    assert_eq!(
        forced,
        vec![kiln_layers::media::OCI_LAYER_ZSTD.to_string(); local.len()]
    );
    assert_eq!(config_of(other.path(), &forced_ref), built);
}

/// `busybox` pushed from `fixture`'s store to `registry` as
/// `test/base:1`: a base image whose layers a fresh store does not have.
fn pushed_base(fixture: &Fixture, registry: &kiln_testsupport::RegistryServer) -> String {
    let base = format!("{}/test/base:1", registry.host);
    let base_ctx = context(&[("Dockerfile", "FROM busybox\n")]);
    ok(&fixture.build(&[
        "--push",
        "--insecure-registry",
        &registry.host,
        "-t",
        &base,
        base_ctx.path().to_str().unwrap(),
    ]));
    base
}

/// A build whose result is only pushed leaves its base image's layers in
/// the registry (the push mounts them); with `force-compression=true` it
/// fetches them to convert them, as BuildKit fetches a lazy layer first.
#[test]
fn force_compression_converts_a_base_the_store_never_downloaded() {
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let fixture = Fixture::new();
    let base = pushed_base(&fixture, &registry);
    let dockerfile = format!("FROM {base}\nLABEL a=b\n");
    let ctx = context(&[("Dockerfile", dockerfile.as_str())]);
    let forced = format!("{}/test/out:forced", registry.host);
    let runner = tempfile::tempdir().unwrap();
    let out = kiln(
        runner.path(),
        &[
            "build",
            "--output",
            &format!("type=image,name={forced},push=true,compression=zstd,force-compression=true"),
            "--insecure-registry",
            &registry.host,
            ctx.path().to_str().unwrap(),
        ],
    );
    ok(&out);
    let other = tempfile::tempdir().unwrap();
    kiln_ok(
        other.path(),
        &["pull", "--insecure-registry", &registry.host, &forced],
    );
    let store = kiln_layers::Store::open(other.path()).unwrap();
    let desc = store
        .resolve(&kiln_layers::Reference::parse(&forced).unwrap())
        .unwrap()
        .unwrap();
    let kiln_layers::ManifestKind::Image(manifest) = store.read_manifest(&desc).unwrap() else {
        panic!("an index for {forced}");
    };
    assert!(!manifest.layers.is_empty());
    for layer in &manifest.layers {
        assert_eq!(layer.media_type, kiln_layers::media::OCI_LAYER_ZSTD);
    }
}

/// `unpack=true` on a pushing image output keeps the whole image in the
/// store, unpacked: a base layer a push-only build leaves in the registry
/// (the push mounts it) is fetched, so the image runs once the registry
/// is gone, as BuildKit's unpacked image does; without it, it cannot.
#[test]
fn unpack_keeps_a_pushed_image_whole_and_runnable() {
    if !kiln_testsupport::require_root("kiln run in namespaces") {
        return;
    }
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let fixture = Fixture::new();
    let base = pushed_base(&fixture, &registry);
    let dockerfile = format!("FROM {base}\nLABEL a=b\n");
    let ctx = context(&[("Dockerfile", dockerfile.as_str())]);
    let runners = [
        ("lazy", "", tempfile::tempdir().unwrap()),
        ("unpacked", ",unpack=true", tempfile::tempdir().unwrap()),
    ];
    let host = registry.host.clone();
    let image = |name: &str| format!("{host}/test/out:{name}");
    for (name, attributes, runner) in &runners {
        ok(&kiln(
            runner.path(),
            &[
                "build",
                "--output",
                &format!("type=image,name={},push=true{attributes}", image(name)),
                "--insecure-registry",
                &registry.host,
                ctx.path().to_str().unwrap(),
            ],
        ));
    }
    // Every layer unpacked in the unpacked runner's store (a snapshot of
    // each chain), none of the base's in the lazy one's.
    let snapshots = |(name, _, runner): &(&str, &str, tempfile::TempDir)| -> Vec<bool> {
        let store = kiln_layers::Store::open(runner.path()).unwrap();
        let reference = kiln_layers::Reference::parse(&image(name)).unwrap();
        let desc = store.resolve(&reference).unwrap().unwrap();
        let built = store
            .read_image(&desc, &kiln_layers::Platform::host())
            .unwrap();
        (built.chain_ids().iter())
            .map(|chain| store.has_snapshot(chain))
            .collect()
    };
    assert_eq!(snapshots(&runners[1]), [true]);
    assert_eq!(snapshots(&runners[0]), [false]);
    drop(registry);
    let run = |(name, _, runner): &(&str, &str, tempfile::TempDir)| {
        kiln(
            runner.path(),
            &["run", "--network", "none", &image(name), "echo", "ran"],
        )
    };
    let lazy = run(&runners[0]);
    let err = String::from_utf8_lossy(&lazy.stderr);
    assert!(
        err.contains("fetching the layers of") && err.contains("that the store lacks"),
        "{err}"
    );
    let unpacked = run(&runners[1]);
    assert_eq!(
        String::from_utf8_lossy(&unpacked.stdout),
        "ran\n",
        "{}",
        common::text(&unpacked)
    );
}

/// A build pushes the image it made, not what its name in the store
/// names by the time the push starts: a concurrent job on the same store
/// (a self-hosted runner's) may have moved the tag meanwhile. The build
/// here waits between tagging and pushing on its OCI output, a FIFO no
/// one reads until the tag was moved.
#[test]
fn a_build_pushes_its_own_image_when_its_tag_moved_meanwhile() {
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let fixture = Fixture::new();
    let other = context(&[("Dockerfile", "FROM scratch\nLABEL which=other\n")]);
    ok(&fixture.build(&["-t", "other:1", other.path().to_str().unwrap()]));
    let mine = context(&[("Dockerfile", "FROM scratch\nLABEL which=mine\n")]);
    let name = format!("{}/test/moved:1", registry.host);
    let fifo = fixture.dir.path().join("oci.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let meta = fixture.dir.path().join("meta.json");
    let build = common::kiln_command()
        .arg("--root")
        .arg(fixture.root())
        .args(["build", "--push", "-t", &name, "--metadata-file"])
        .arg(&meta)
        .arg("--output")
        .arg(format!("type=oci,dest={}", fifo.display()))
        .arg(mine.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Tagged: the build now waits for a reader of its OCI output.
    let mut build = build;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !kiln(&fixture.root(), &["inspect", &name]).status.success() {
        let exited = build.try_wait().unwrap().is_some();
        if exited || std::time::Instant::now() >= deadline {
            let _ = build.kill();
            let out = build.wait_with_output().unwrap();
            panic!("the build never tagged {name}: {}", common::text(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    kiln_ok(&fixture.root(), &["tag", "other:1", &name]);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo))
    };
    let out = build.wait_with_output().unwrap();
    // A build that failed before it opened its output leaves the reader
    // waiting for a writer: one that closes at once lets it end.
    if !reader.is_finished() {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = (std::fs::OpenOptions::new().write(true))
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
    }
    ok(&out);
    let archive = reader.join().unwrap().unwrap();
    assert!(!archive.is_empty());
    let puller = tempfile::tempdir().unwrap();
    kiln_ok(puller.path(), &["pull", &name]);
    assert_eq!(
        config_of(puller.path(), &name)["config"]["Labels"]["which"],
        "mine"
    );
    // The metadata file names what was pushed.
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let inspect: serde_json::Value =
        serde_json::from_str(&kiln_ok(puller.path(), &["inspect", &name])).unwrap();
    assert_eq!(inspect[0]["Digest"], meta["containerimage.digest"]);
}

/// `--output type=registry,name=…` pushes under that name (no `-t`
/// needed), as does `type=image,name=…,push=true`; what is pulled back is
/// the image built.
#[test]
fn registry_and_image_outputs_push() {
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let fixture = Fixture::new();
    let ctx = context(&[("Dockerfile", "FROM busybox\nRUN echo out > /o\n")]);
    let by_registry = format!("{}/test/out:registry", registry.host);
    let by_image = format!("{}/test/out:image", registry.host);
    // --push makes an image output push, as buildx sets push=true on it.
    let by_flag = format!("{}/test/out:flag", registry.host);
    for output in [
        vec![format!("type=registry,name={by_registry}")],
        vec![format!("type=image,name={by_image},push=true")],
        vec!["--push".into(), format!("type=image,name={by_flag}")],
    ] {
        let (flags, output) = output.split_at(output.len() - 1);
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.extend([
            "--output",
            &output[0],
            "--insecure-registry",
            &registry.host,
            ctx.path().to_str().unwrap(),
        ]);
        ok(&fixture.build(&args));
    }
    let other = tempfile::tempdir().unwrap();
    for reference in [&by_registry, &by_image, &by_flag] {
        kiln_ok(
            other.path(),
            &["pull", "--insecure-registry", &registry.host, reference],
        );
        assert_eq!(
            config_of(other.path(), reference),
            config_of(&fixture.root(), reference)
        );
    }
    // type=image without push stays in the store: the registry has no such tag.
    let local_only = format!("{}/test/out:local", registry.host);
    ok(&fixture.build(&[
        "--output",
        &format!("type=image,name={local_only}"),
        ctx.path().to_str().unwrap(),
    ]));
    let out = kiln(
        other.path(),
        &["pull", "--insecure-registry", &registry.host, &local_only],
    );
    assert!(!out.status.success());
}

/// `push-by-digest=true` puts the manifest by its digest and tags nothing,
/// as BuildKit's image exporter; the metadata file's digest is the pushed
/// one. Two runners' pushes (one per platform) then make one index with
/// `kiln manifest`, as docker's documented multi-runner workflow does with
/// `imagetools create`. A tag is refused in the names (`name=`, `-t`), and
/// both push attributes without a push.
#[test]
fn push_by_digest_tags_nothing_and_merges_into_an_index() {
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let fixture = Fixture::new();
    let ctx = context(&[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x")]);
    let repo = format!("{}/test/bydigest", registry.host);
    let mut digests = Vec::new();
    for (platform, how) in [("linux/amd64", "name="), ("linux/arm64", "-t")] {
        let meta = fixture
            .dir
            .path()
            .join(format!("meta-{}.json", platform.replace('/', "-")));
        let mut args = vec![
            "--platform",
            platform,
            "--metadata-file",
            meta.to_str().unwrap(),
        ];
        let output = if how == "name=" {
            format!("type=image,name={repo},push-by-digest=true,push=true")
        } else {
            args.extend(["-t", repo.as_str()]);
            "type=image,push-by-digest=true,push=true".to_string()
        };
        args.extend(["--output", &output, ctx.path().to_str().unwrap()]);
        let out = fixture.build(&args);
        ok(&out);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        let digest = meta["containerimage.digest"].as_str().unwrap().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            stderr.contains(&format!("pushed {repo}@{digest}")),
            "{stderr}"
        );
        digests.push(digest);
    }
    // A build of both platforms pushes its index the same way.
    let meta = fixture.dir.path().join("meta-index.json");
    ok(&fixture.build(&[
        "--platform",
        "linux/amd64,linux/arm64",
        "--metadata-file",
        meta.to_str().unwrap(),
        "--output",
        &format!("type=image,name={repo},push-by-digest=true,push=true"),
        ctx.path().to_str().unwrap(),
    ]));
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let both = format!("{repo}@{}", meta["containerimage.digest"].as_str().unwrap());
    let puller = tempfile::tempdir().unwrap();
    kiln_ok(puller.path(), &["pull", "--platform", "linux/arm64", &both]);
    let inspect = kiln_ok(puller.path(), &["inspect", &both]);
    assert!(inspect.contains("\"Architecture\": \"arm64\""), "{inspect}");
    // No tag in the registry: a pull by tag finds nothing.
    assert_eq!(
        registry.storage_files("bydigest/_manifests/tags/"),
        Vec::<PathBuf>::new()
    );
    let other = tempfile::tempdir().unwrap();
    let out = kiln(other.path(), &["pull", &repo]);
    assert!(!out.status.success());
    // Each by its digest; then one index of both.
    let index = format!("{repo}:1");
    let sources: Vec<String> = digests.iter().map(|d| format!("{repo}@{d}")).collect();
    let mut create = vec!["manifest", "create", index.as_str()];
    create.extend(sources.iter().map(String::as_str));
    kiln_ok(other.path(), &create);
    kiln_ok(other.path(), &["manifest", "push", &index]);
    // (The same look at the registry's storage finds the tag a push made.)
    assert_eq!(
        registry
            .storage_files("bydigest/_manifests/tags/1/current/link")
            .len(),
        1
    );
    let puller = tempfile::tempdir().unwrap();
    kiln_ok(
        puller.path(),
        &["pull", "--platform", "linux/arm64", &index],
    );
    let inspect = kiln_ok(puller.path(), &["inspect", &index]);
    let value: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(value[0]["Architecture"], "arm64", "{inspect}");

    let refused = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push(ctx.path().to_str().unwrap());
        failed(&fixture.build(&all))
    };
    let tagged = format!("{repo}:2");
    let err = refused(&[
        "--output",
        &format!("type=image,name={tagged},push-by-digest=true,push=true"),
    ]);
    assert!(err.contains("can't push tagged ref"), "{err}");
    let err = refused(&[
        "-t",
        &tagged,
        "--output",
        "type=image,push-by-digest=true,push=true",
    ]);
    assert!(
        err.contains(&format!("-t {tagged}")) && err.contains("can't push tagged ref"),
        "{err}"
    );
    // As BuildKit, which reads them only when it pushes: an output that
    // does not push (a pull request's build, `push=${{ … }}`) takes them,
    // its tagged name too; -t replaces a tagged name=, as buildx does.
    for output in [
        format!("type=image,name={tagged},push-by-digest=true,registry.insecure="),
        format!("type=image,name={tagged},push-by-digest=true,push=false"),
    ] {
        ok(&fixture.build(&["--output", &output, ctx.path().to_str().unwrap()]));
    }
    // --push makes the output push, by digest: still no tag. -t replaces
    // the tagged name=, and is pushed by digest.
    let replaced = format!("type=image,name={tagged},push-by-digest=true,push=true");
    for args in [
        [
            "--push",
            "-t",
            &repo,
            "--output",
            "type=image,push-by-digest=true",
        ],
        ["-t", &repo, "--output", &replaced, "--no-cache"],
    ] {
        let mut args = args.to_vec();
        args.push(ctx.path().to_str().unwrap());
        let out = fixture.build(&args);
        ok(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("pushed {repo}@sha256:")),
            "{args:?}: {stderr}"
        );
    }
    let mut tags: Vec<String> = registry
        .storage_files("bydigest/_manifests/tags/")
        .iter()
        .filter_map(|path| {
            let path = path.to_str()?;
            let (_, tag) = path.split_once("bydigest/_manifests/tags/")?;
            Some(tag.split('/').next()?.to_string())
        })
        .collect();
    tags.sort();
    tags.dedup();
    assert_eq!(tags, ["1"], "only the index's tag");
    let err = refused(&[
        "--output",
        &format!("type=image,name={repo},push-by-digest=maybe"),
    ]);
    assert!(err.contains("push-by-digest=maybe: true or false"), "{err}");
}

/// `name-canonical=true` also names the image `repo@DIGEST` in the store
/// (its manifest's digest there), as BuildKit's image store records it:
/// the name stays when the tag moves on, where a repository's digest is
/// otherwise found only through a tag naming it. The metadata file's
/// `image.name` does not list it, as BuildKit's does not.
#[test]
fn name_canonical_keeps_the_image_under_its_digest_when_the_tag_moves() {
    let fixture = Fixture::new();
    let ctx = context(&[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "1")]);
    let dir = ctx.path().to_str().unwrap();
    let meta = fixture.dir.path().join("meta.json");
    // A build with `flags` to `output`: its metadata file.
    let build_with = |flags: &[&str], output: &str| {
        let mut args = flags.to_vec();
        args.extend([
            "--metadata-file",
            meta.to_str().unwrap(),
            "--output",
            output,
            dir,
        ]);
        ok(&fixture.build(&args));
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        meta
    };
    let build = |output: &str| build_with(&[], output);
    // `repo` at the digest a build's metadata file gives.
    let pinned = |repo: &str, meta: &serde_json::Value| {
        format!("{repo}@{}", meta["containerimage.digest"].as_str().unwrap())
    };
    let found = |name: &str| kiln(&fixture.root(), &["inspect", name]).status.success();
    let first = build("type=image,name=reg.example/app,name-canonical=true");
    assert_eq!(first["image.name"], "reg.example/app");
    let canonical = pinned("reg.example/app", &first);
    // The same without the attribute, as the control.
    let control = build("type=image,name=reg.example/control");
    let control = pinned("reg.example/control", &control);
    kiln_ok(&fixture.root(), &["inspect", &canonical]);
    kiln_ok(&fixture.root(), &["inspect", &control]);
    std::fs::write(ctx.path().join("f"), "2").unwrap();
    build("type=image,name=reg.example/app");
    build("type=image,name=reg.example/control");
    kiln_ok(&fixture.root(), &["inspect", &canonical]);
    assert!(!found(&control));
    let images = kiln_ok(&fixture.root(), &["images"]);
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("reg.example/app ") && l.contains("<none>")),
        "{images}"
    );
    kiln_ok(&fixture.root(), &["rmi", &canonical]);
    assert!(!found(&canonical));
    let err = failed(&fixture.build(&["--output", "type=image,name=a,name-canonical=maybe", dir]));
    assert!(err.contains("name-canonical=maybe: true or false"), "{err}");

    // As docker untags an image's repository digests with its last tag:
    // removing the tag (or the id: one repository, no --force) removes
    // the canonical name too.
    for (content, by_id) in [("3", false), ("4", true)] {
        std::fs::write(ctx.path().join("f"), content).unwrap();
        let meta = build("type=image,name=reg.example/gone,name-canonical=true");
        let canonical = pinned("reg.example/gone", &meta);
        let id = meta["containerimage.config.digest"].as_str().unwrap();
        let name = if by_id { id } else { "reg.example/gone" };
        kiln_ok(&fixture.root(), &["rmi", name]);
        assert!(!found(&canonical));
    }

    // An output that pushes names the image as pushed: kiln compresses the
    // layers on the way out, and that digest is the registry's and the
    // metadata file's. The store's own image has another digest, which a
    // push by that digest cannot keep: refused, naming both.
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let pushed = build(&format!(
        "type=image,name={}/test/canon,push=true,name-canonical=true",
        registry.host
    ));
    let digest = pushed["containerimage.digest"].as_str().unwrap();
    let canonical = format!("{}/test/canon@{digest}", registry.host);
    let inspect: serde_json::Value =
        serde_json::from_str(&kiln_ok(&fixture.root(), &["inspect", &canonical])).unwrap();
    assert_eq!(inspect[0]["Digest"], digest, "{inspect}");
    // The whole image as pushed: saved from the store alone.
    let saved = fixture.dir.path().join("canonical.tar");
    kiln_ok(
        &fixture.root(),
        &["save", "-o", saved.to_str().unwrap(), &canonical],
    );
    // Its tag's removal takes it (one image: the same config).
    let tag = format!("{}/test/canon", registry.host);
    kiln_ok(&fixture.root(), &["rmi", &tag]);
    assert!(!found(&canonical));
    let local = build(&format!(
        "type=image,name={}/test/local,name-canonical=true",
        registry.host
    ));
    let local = pinned(&format!("{}/test/local", registry.host), &local);
    let out = kiln(&fixture.root(), &["push", &local]);
    let err = failed(&out);
    assert!(
        err.contains("whose layers are compressed on the way out"),
        "{err}"
    );

    // Of two indexes built under one tag, each with its canonical name,
    // the tag's removal takes the canonical name of the one it named only
    // (they share this machine's config, not their other platform's).
    let mut canonicals = Vec::new();
    let multi = format!("{}/test/multi", registry.host);
    for platforms in ["linux/amd64,linux/arm64", "linux/amd64,linux/riscv64"] {
        let output = format!("type=image,name={multi}:1,push=true,name-canonical=true");
        let meta = build_with(&["--platform", platforms], &output);
        canonicals.push(pinned(&multi, &meta));
    }
    kiln_ok(
        &fixture.root(),
        &["rmi", &format!("{}/test/multi:1", registry.host)],
    );
    assert!(found(&canonicals[0]));
    assert!(!found(&canonicals[1]));
    // An untagged record of the same manifest removed by id takes the tag
    // with it, and the tag's canonical name too.
    std::fs::write(ctx.path().join("f"), "untagged too").unwrap();
    let meta = build(&format!(
        "type=image,name={}/test/both,push=true,name-canonical=true",
        registry.host
    ));
    let canonical = pinned(&format!("{}/test/both", registry.host), &meta);
    ok(&fixture.build(&["-q", dir]));
    // (A tag sorts index.json: the untagged record comes first.)
    kiln_ok(&fixture.root(), &["tag", "busybox:latest", "resort:1"]);
    let tag = format!("{}/test/both", registry.host);
    let inspect: serde_json::Value =
        serde_json::from_str(&kiln_ok(&fixture.root(), &["inspect", &tag])).unwrap();
    let manifest = inspect[0]["Digest"].as_str().unwrap();
    kiln_ok(&fixture.root(), &["rmi", manifest]);
    assert!(!found(&canonical));

    // Two tags of one repository still need --force by id, as docker's
    // rmi; an untagged record and one tag of the same image do not.
    std::fs::write(ctx.path().join("f"), "5").unwrap();
    let meta = build("type=image,\"name=reg.example/two:1,reg.example/two:2\"");
    let id = meta["containerimage.config.digest"]
        .as_str()
        .unwrap()
        .to_string();
    let err = failed(&kiln(&fixture.root(), &["rmi", &id]));
    assert!(err.contains("use --force"), "{err}");
    kiln_ok(&fixture.root(), &["rmi", "--force", &id]);
    std::fs::write(ctx.path().join("f"), "6").unwrap();
    let id = ok(&fixture.build(&["-q", dir]));
    kiln_ok(&fixture.root(), &["tag", &id, "reg.example/one:1"]);
    kiln_ok(&fixture.root(), &["rmi", &id]);
    assert!(!kiln(&fixture.root(), &["inspect", "reg.example/one:1"])
        .status
        .success());
}

/// `store=false` pushes the image and keeps no name of it in the store
/// (its layers stay build cache), as BuildKit leaves its image store
/// alone; the metadata file still names it, with the pushed digest.
#[test]
fn store_false_pushes_and_names_nothing_in_the_store() {
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let fixture = Fixture::new();
    let ctx = context(&[
        ("Dockerfile", "FROM scratch\nCOPY f /f\n"),
        ("f", "unstored"),
    ]);
    let meta = fixture.dir.path().join("meta.json");
    for (name, store) in [("kept", "true"), ("unstored", "false")] {
        let reference = format!("{}/test/{name}:1", registry.host);
        ok(&fixture.build(&[
            "-t",
            &reference,
            "--metadata-file",
            meta.to_str().unwrap(),
            "--output",
            &format!("type=image,push=true,store={store}"),
            ctx.path().to_str().unwrap(),
        ]));
        let kept = kiln(&fixture.root(), &["inspect", &reference])
            .status
            .success();
        assert_eq!(kept, store == "true", "{reference}");
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        assert_eq!(meta["image.name"], reference.as_str());
        let puller = tempfile::tempdir().unwrap();
        kiln_ok(puller.path(), &["pull", &reference]);
        let pulled: serde_json::Value =
            serde_json::from_str(&kiln_ok(puller.path(), &["inspect", &reference])).unwrap();
        assert_eq!(pulled[0]["Digest"], meta["containerimage.digest"]);
    }
    let images = kiln_ok(&fixture.root(), &["images"]);
    assert!(!images.contains("test/unstored"), "{images}");
    // Without a push the output still answers the image's digest, as
    // BuildKit's exporter does; nothing is recorded, not even untagged.
    let index = std::fs::read(fixture.root().join("index.json")).unwrap();
    std::fs::write(ctx.path().join("f"), "not pushed").unwrap();
    ok(&fixture.build(&[
        "--metadata-file",
        meta.to_str().unwrap(),
        "--output",
        "type=image,name=reg.example/nowhere,store=false",
        ctx.path().to_str().unwrap(),
    ]));
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert!(
        meta["containerimage.digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{meta}"
    );
    assert_eq!(meta["image.name"], "reg.example/nowhere");
    assert_eq!(
        std::fs::read(fixture.root().join("index.json")).unwrap(),
        index
    );
    let err = failed(&fixture.build(&[
        "--output",
        "type=image,name=a,store=maybe",
        ctx.path().to_str().unwrap(),
    ]));
    assert!(err.contains("store=maybe: true or false"), "{err}");
}

/// `registry.insecure=true` on an image output or a registry cache
/// reaches that registry (a TLS one with a CA kiln does not trust) without
/// checking its certificate, for that push or cache only, as BuildKit's
/// exporters and cache backends scope it: a base image pulled from the
/// same registry is still checked.
#[test]
fn registry_insecure_reaches_an_untrusted_registry_for_that_output_only() {
    let registry =
        kiln_testsupport::RegistryServer::start_tls_basic("alice", "wonderland").unwrap();
    let ca = registry.ca_cert.clone().unwrap();
    let fixture = Fixture::new();
    let docker_config = fixture.dir.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let kiln_in = |root: &Path, args: &[&str]| {
        common::kiln_command()
            .env("DOCKER_CONFIG", &docker_config)
            .arg("--root")
            .arg(root)
            .args(args)
            .output()
            .unwrap()
    };
    common::login(&docker_config, &registry.host, "alice", "wonderland", &ca);

    let ctx = context(&[
        ("Dockerfile", "FROM scratch\nCOPY f /f\n"),
        ("f", "insecure"),
    ]);
    let ctx = ctx.path().to_str().unwrap();
    let image = format!("{}/test/insecure:1", registry.host);
    let cache = format!("{}/test/insecure:cache", registry.host);
    let build = |root: &Path, flags: &[&str]| {
        let mut args = vec!["build"];
        args.extend_from_slice(flags);
        args.push(ctx);
        kiln_in(root, &args)
    };
    let pushes = [
        format!("type=image,name={image},push=true"),
        format!("type=registry,ref={cache},mode=max"),
    ];
    // Refused without the attribute: the certificate is checked.
    let err = failed(&build(&fixture.root(), &["--output", &pushes[0]]));
    assert!(err.contains("invalid peer certificate"), "{err}");
    let err = failed(&build(
        &fixture.root(),
        &["--cache-to", &pushes[1], "--no-cache"],
    ));
    assert!(err.contains("invalid peer certificate"), "{err}");
    // Pushed with it, image and cache.
    ok(&build(
        &fixture.root(),
        &[
            "--output",
            &format!("{},registry.insecure=true", pushes[0]),
            "--cache-to",
            &format!("{},registry.insecure=true", pushes[1]),
        ],
    ));
    let ca = ca.to_str().unwrap();
    let puller = tempfile::tempdir().unwrap();
    let out = kiln_in(puller.path(), &["pull", "--ca-cert", ca, &image]);
    ok(&out);
    assert_eq!(
        config_of(puller.path(), &image),
        config_of(&fixture.root(), &image)
    );
    // A second runner takes the COPY from the cache, read insecurely.
    let runner = tempfile::tempdir().unwrap();
    let from = format!("type=registry,ref={cache}");
    let err = String::from_utf8_lossy(&build(runner.path(), &["--cache-from", &from]).stderr)
        .into_owned();
    assert!(err.contains("invalid peer certificate"), "{err}");
    let second = tempfile::tempdir().unwrap();
    let out = build(
        second.path(),
        &["--cache-from", &format!("{from},registry.insecure=true")],
    );
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        (stderr.lines().collect::<Vec<_>>())
            .windows(2)
            .any(|w| w[0].ends_with("COPY f /f") && w[1].ends_with(" CACHED")),
        "{stderr}"
    );
    // A push elsewhere fetches the layer the COPY took from that cache
    // through it (the push cannot mount it from another registry).
    let plain = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let third = tempfile::tempdir().unwrap();
    ok(&build(
        third.path(),
        &[
            "--cache-from",
            &format!("{from},registry.insecure=true"),
            "--output",
            &format!("type=image,name={}/test/elsewhere:1,push=true", plain.host),
        ],
    ));
    // A cache read insecurely does not make a push or an export to its
    // registry so, as BuildKit's scoping has it.
    for flags in [
        [
            "--output",
            &format!("type=image,name={image}-checked,push=true"),
        ],
        ["--cache-to", &format!("type=registry,ref={cache}-checked")],
    ] {
        let mut flags = flags.to_vec();
        let from = format!("{from},registry.insecure=true");
        flags.extend(["--cache-from", &from]);
        let out = build(tempfile::tempdir().unwrap().path(), &flags);
        let err = failed(&out);
        assert!(err.contains("invalid peer certificate"), "{flags:?}: {err}");
    }
    // The base image is still checked.
    let based = context(&[("Dockerfile", &*format!("FROM {image}\nLABEL a=b\n"))]);
    let out = kiln_in(
        tempfile::tempdir().unwrap().path(),
        &[
            "build",
            "--output",
            &format!("type=image,name={image}-based,push=true,registry.insecure=true"),
            based.path().to_str().unwrap(),
        ],
    );
    let err = failed(&out);
    assert!(err.contains("invalid peer certificate"), "{err}");
}

/// A base made by docker's legacy builder carries fields BuildKit's image
/// type does not have (`container_config`, `docker_version`,
/// `Config.Hostname`, `Config.Image`, `Config.Attach*`): an image built on
/// it has none of them, and keeps what BuildKit keeps.
#[test]
fn legacy_builder_fields_do_not_carry_over() {
    let fixture = Fixture::new();
    let work = fixture.dir.path().join("legacy");
    std::fs::create_dir_all(&work).unwrap();
    let layer = fixture.dir.path().join("busybox.tar");
    std::fs::copy(&layer, work.join("layer.tar")).unwrap();
    let diff_id = kiln_testsupport::image::digest_of(&std::fs::read(&layer).unwrap());
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "docker_version": "20.10.7",
        "container": "3f1c0a1b",
        "container_config": {"Hostname": "3f1c0a1b", "Cmd": ["/bin/sh", "-c", "#(nop) CMD"]},
        "config": {
            "Hostname": "3f1c0a1b",
            "Domainname": "",
            "User": "",
            "AttachStdin": false,
            "AttachStdout": false,
            "AttachStderr": false,
            "Tty": false,
            "OpenStdin": false,
            "Image": "sha256:0123",
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "Labels": {"from": "legacy"}
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "/bin/sh -c #(nop) ADD file"}]
    });
    std::fs::write(work.join("config.json"), config.to_string()).unwrap();
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": ["legacy:1"],
        "Layers": ["layer.tar"]
    }]);
    std::fs::write(work.join("manifest.json"), manifest.to_string()).unwrap();
    let archive = fixture.dir.path().join("legacy.tar");
    common::run_ok(
        std::process::Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&work)
            .args(["manifest.json", "config.json", "layer.tar"]),
    );
    kiln_ok(&fixture.root(), &["load", "-i", archive.to_str().unwrap()]);
    let base = config_of(&fixture.root(), "legacy:1");
    assert_eq!(base["docker_version"], "20.10.7", "{base}");

    let ctx = context(&[("Dockerfile", "FROM legacy:1\nRUN echo x > /x\n")]);
    ok(&fixture.build(&["-t", "on-legacy:1", ctx.path().to_str().unwrap()]));
    let built = config_of(&fixture.root(), "on-legacy:1");
    for gone in ["docker_version", "container", "container_config"] {
        assert!(built.get(gone).is_none(), "{gone}: {built}");
    }
    let c = &built["config"];
    for gone in [
        "Hostname",
        "Domainname",
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "Tty",
        "OpenStdin",
        "Image",
    ] {
        assert!(c.get(gone).is_none(), "{gone}: {c}");
    }
    assert_eq!(c["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(c["Labels"]["from"], "legacy");
}

#[test]
fn independent_stages_run_at_the_same_time() {
    let fixture = Fixture::new();
    // Each stage announces itself in a shared cache mount and waits (up to
    // 60 s) for the other: run one after the other, the first would give up
    // and fail.
    let wait = |me: &str, other: &str| {
        format!(
            "RUN --mount=type=cache,id=rendezvous,target=/meet touch /meet/{me} && \
             i=0; while [ ! -e /meet/{other} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
             test -e /meet/{other} && echo {me} > /{me}\n"
        )
    };
    let dockerfile = format!(
        "FROM busybox AS a\n{}FROM busybox AS b\n{}FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
        wait("a", "b"),
        wait("b", "a")
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    ok(&fixture.build(&[ctx.path().to_str().unwrap()]));
}

#[test]
fn progress_tty_draws_a_live_view() {
    let fixture = Fixture::new();
    let ctx = context(&[("Dockerfile", "FROM busybox\nRUN echo live-output-line\n")]);
    // `script` gives kiln a terminal; the view is drawn on it.
    let command = format!(
        "{} --root {} build --progress tty {}",
        common::kiln_bin().display(),
        fixture.root().display(),
        ctx.path().display()
    );
    let log = fixture.dir.path().join("tty.log");
    let mut script = std::process::Command::new("script");
    // The same hermetic environment kiln_command() gives kiln (script
    // passes its environment on).
    for (key, value) in common::kiln_command().get_envs() {
        match value {
            Some(value) => script.env(key, value),
            None => script.env_remove(key),
        };
    }
    let status = script
        .args(["-qec", &command])
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("script (util-linux) runs");
    assert!(status.success());
    let screen = std::fs::read_to_string(&log).unwrap();
    assert!(screen.contains("[+] Building"), "{screen}");
    assert!(
        screen.contains("=> [1/2] FROM docker.io/library/busybox"),
        "{screen}"
    );
    // The running step's output, drawn under it.
    assert!(screen.contains("=> => # live-output-line"), "{screen}");
    assert!(
        screen.contains("=> [2/2] RUN echo live-output-line"),
        "{screen}"
    );
    assert!(screen.contains("=> exporting to image"), "{screen}");
    // Plain mode's numbered lines are not used on a terminal.
    assert!(!screen.contains("#2 DONE"), "{screen}");
}

/// The host directory of `RUN --mount=type=cache,id=ID`.
fn cache_mount_dir(root: &Path, id: &str) -> PathBuf {
    let digest = kiln_layers::Digest::of(id.as_bytes());
    root.join("cache-mounts").join(digest.hex())
}

#[test]
fn prune_removes_killed_builds_leftovers_and_cache_mounts_with_all() {
    let fixture = Fixture::new();
    let root = fixture.root();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN --mount=type=cache,id=pkgs,target=/cache echo kept > /cache/f\n",
    )]);
    ok(&fixture.build(&[ctx.path().to_str().unwrap()]));
    let mount = cache_mount_dir(&root, "pkgs");
    assert_eq!(std::fs::read_to_string(mount.join("f")).unwrap(), "kept\n");
    // What a killed build leaves: its work dir with a step's upper dir.
    let leftover = root.join("builds/build-999999-0-0");
    std::fs::create_dir_all(leftover.join("step-1/upper/etc")).unwrap();
    std::fs::write(leftover.join("step-1/upper/etc/x"), "x").unwrap();

    let report = kiln_ok(&root, &["prune"]);
    assert!(
        report.contains("leftover build dirs: 1,") && report.contains("cache mounts: 0,"),
        "{report}"
    );
    assert!(!leftover.exists());
    assert!(
        mount.join("f").is_file(),
        "cache mounts survive a plain prune"
    );

    let report = kiln_ok(&root, &["prune", "--all"]);
    assert!(
        report.contains("leftover build dirs: 0,") && report.contains("cache mounts: 1,"),
        "{report}"
    );
    assert!(!mount.exists());
    // The image still builds (from scratch, cache records were dropped).
    ok(&fixture.build(&[ctx.path().to_str().unwrap()]));
}

#[test]
fn prune_waits_for_a_running_build() {
    let fixture = Fixture::new();
    let root = fixture.root();
    // The RUN says it started, then waits (up to 60 s) for the test's go.
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN --mount=type=cache,id=sync,target=/sync touch /sync/started && \
         i=0; while [ ! -e /sync/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
         echo done > /result\n",
    )]);
    let sync = cache_mount_dir(&root, "sync");
    let build = common::kiln_command()
        .arg("--root")
        .arg(&root)
        .args(["build", "--progress", "plain", "-t", "busy:1"])
        .arg(ctx.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = sync.join("started");
    let mut waited = 0;
    while !started.exists() && waited < 600 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        waited += 1;
    }
    assert!(started.exists(), "the build's RUN never started");
    // A prune now must not take the running build's work dir: it waits.
    let prune = common::kiln_command()
        .arg("--root")
        .arg(&root)
        .arg("prune")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::write(sync.join("go"), "").unwrap();
    let build = build.wait_with_output().unwrap();
    ok(&build);
    let prune = prune.wait_with_output().unwrap();
    assert!(prune.status.success());
    let report = String::from_utf8_lossy(&prune.stdout);
    assert!(report.contains("leftover build dirs: 0,"), "{report}");
    let config = config_of(&root, "busy:1");
    assert_eq!(config["history"].as_array().unwrap().len(), 2);
}

/// `COPY --link` and `ADD --link`: the layer is made apart from the base,
/// so a base's symlink on the destination path is replaced, not followed.
#[test]
fn copy_link_does_not_follow_symlinks_of_the_base() {
    for instruction in ["COPY", "ADD"] {
        link_case(instruction);
    }
}

fn link_case(instruction: &str) {
    let fixture = Fixture::new();
    let dockerfile = |link: &str| {
        format!(
            "FROM busybox\nRUN mkdir -p /opt/real && ln -s /opt/real /opt/link && mkdir -m 700 /private\n\
             {instruction} {link} a.txt /opt/link/\n{instruction} {link} a.txt /private/sub/\n"
        )
    };
    let build = |link: &str| {
        let ctx = context(&[("Dockerfile", &dockerfile(link)), ("a.txt", "a\n")]);
        let out = tempfile::tempdir().unwrap();
        let dest = format!("type=local,dest={}", out.path().display());
        ok(&fixture.build(&["-o", &dest, ctx.path().to_str().unwrap()]));
        out
    };
    use std::os::unix::fs::PermissionsExt;
    // Plain COPY writes through the symlink.
    let plain = build("");
    assert!(plain.path().join("opt/real/a.txt").is_file());
    assert!(std::fs::symlink_metadata(plain.path().join("opt/link"))
        .unwrap()
        .file_type()
        .is_symlink());
    // --link: the destination is a real directory; the base's target is untouched.
    let linked = build("--link");
    let link = std::fs::symlink_metadata(linked.path().join("opt/link")).unwrap();
    assert!(link.is_dir(), "{instruction}: {link:?}");
    assert_eq!(
        std::fs::read_to_string(linked.path().join("opt/link/a.txt")).unwrap(),
        "a\n"
    );
    assert!(!linked.path().join("opt/real/a.txt").exists());
    assert!(linked.path().join("private/sub/a.txt").is_file());
    // The layer carries its own 0755 copy of the parent directories, which
    // wins over the base's 0700 /private, as with BuildKit's --link layers.
    let private = std::fs::metadata(linked.path().join("private")).unwrap();
    assert_eq!(private.permissions().mode() & 0o777, 0o755);
    // --link with --chmod is a plain copy onto the base, as BuildKit's
    // frontend makes it: through the symlink, the base's modes kept.
    let chmod = build("--link --chmod=640");
    assert!(std::fs::symlink_metadata(chmod.path().join("opt/link"))
        .unwrap()
        .file_type()
        .is_symlink());
    let copied = std::fs::metadata(chmod.path().join("opt/real/a.txt")).unwrap();
    assert_eq!(copied.permissions().mode() & 0o777, 0o640, "{instruction}");
    let private = std::fs::metadata(chmod.path().join("private")).unwrap();
    assert_eq!(private.permissions().mode() & 0o777, 0o700, "{instruction}");
}

/// `--link --chown` by name is refused, naming the line, as BuildKit
/// refuses it (a linked layer has no base to look the name up in);
/// numeric ids work, and so does a name with --chmod, which is no link.
#[test]
fn copy_link_refuses_chown_by_name() {
    let fixture = Fixture::new();
    let build = |line: &str| {
        let ctx = context(&[
            ("Dockerfile", &format!("FROM busybox\n{line}\n")),
            ("a.txt", "a\n"),
        ]);
        fixture.build(&[ctx.path().to_str().unwrap()])
    };
    for line in [
        "COPY --link --chown=nobody a.txt /a",
        "ADD --link --chown=1000:staff a.txt /a",
    ] {
        let err = failed(&build(line));
        assert!(err.contains("Dockerfile:2"), "{line}: {err}");
        assert!(
            err.contains("with --link: a linked layer is made without"),
            "{line}: {err}"
        );
    }
    for line in [
        "COPY --link --chown=1000:1000 a.txt /a",
        "COPY --link --chown=root:1 a.txt /a",
        "COPY --link --chown=nobody --chmod=640 a.txt /a",
    ] {
        ok(&build(line));
    }
}

#[test]
fn onbuild_triggers_of_a_base_image_and_docker_media_types() {
    let fixture = Fixture::new();
    let parent = context(&[(
        "Dockerfile",
        "FROM busybox\nONBUILD RUN echo triggered > /trig\nONBUILD ENV FROM_TRIGGER=yes\n",
    )]);
    ok(&fixture.build(&["-t", "parent:1", parent.path().to_str().unwrap()]));
    let parent_config = config_of(&fixture.root(), "parent:1");
    assert_eq!(
        parent_config["config"]["OnBuild"],
        serde_json::json!(["RUN echo triggered > /trig", "ENV FROM_TRIGGER=yes"])
    );

    let child = context(&[("Dockerfile", "FROM parent:1\nRUN cat /trig > /seen\n")]);
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().join("fs").display());
    let meta = out.path().join("meta.json");
    ok(&fixture.build(&[
        "--docker-mediatypes",
        "--metadata-file",
        meta.to_str().unwrap(),
        "-t",
        "child:1",
        "-o",
        "type=image",
        "-o",
        &dest,
        child.path().to_str().unwrap(),
    ]));
    assert_eq!(
        std::fs::read_to_string(out.path().join("fs/seen")).unwrap(),
        "triggered\n"
    );
    let config = config_of(&fixture.root(), "child:1");
    // Triggers run once: the child image does not carry them on.
    assert!(config["config"]["OnBuild"].is_null(), "{config}");
    let env = config["config"]["Env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "FROM_TRIGGER=yes"), "{env:?}");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(
        meta["containerimage.descriptor"]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    // The flag's environment variable: a boolean (as clap reads one),
    // anything else refused rather than taken for true.
    let media_type_with_env = |value: &str| {
        let meta = out.path().join(format!("meta-{value}.json"));
        let built = common::kiln_command()
            .arg("--root")
            .arg(fixture.root())
            .args(["build", "--metadata-file", meta.to_str().unwrap()])
            .arg(child.path())
            .env("KILN_DOCKER_MEDIATYPES", value)
            .output()
            .unwrap();
        let meta: Option<serde_json::Value> = std::fs::read(&meta)
            .ok()
            .map(|bytes| serde_json::from_slice(&bytes).unwrap());
        (
            built,
            meta.map(|m| m["containerimage.descriptor"]["mediaType"].clone()),
        )
    };
    let (built, media_type) = media_type_with_env("1");
    assert!(built.status.success(), "{}", text(&built));
    assert_eq!(
        media_type.unwrap(),
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let (built, media_type) = media_type_with_env("false");
    assert!(built.status.success(), "{}", text(&built));
    assert_eq!(
        media_type.unwrap(),
        "application/vnd.oci.image.manifest.v1+json"
    );
    let (built, media_type) = media_type_with_env("banana");
    assert!(!built.status.success());
    assert!(media_type.is_none());
    assert!(
        text(&built).contains("invalid value 'banana' for '--docker-mediatypes'"),
        "{}",
        text(&built)
    );
}

/// Puts the host's `ssh-add` and the shared libraries `ldd` lists for it
/// under `root`, at their own paths (a busybox image has no ssh client).
fn host_ssh_add_into(root: &Path) {
    let ssh_add = PathBuf::from("/usr/bin/ssh-add");
    let ldd = common::run_ok(std::process::Command::new("ldd").arg(&ssh_add));
    let mut files = vec![ssh_add];
    for line in ldd.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            files.push(PathBuf::from(path));
        }
    }
    for file in files {
        let dest = root.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&file, &dest).unwrap();
    }
}

/// An `ssh-agent -D` on a socket in `dir`, killed when dropped.
struct TestAgent {
    child: std::process::Child,
    socket: PathBuf,
}

impl TestAgent {
    fn start(dir: &Path) -> TestAgent {
        let socket = dir.join("agent.sock");
        let child = std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("ssh-agent is needed (openssh-client; scripts/setup installs it)");
        let agent = TestAgent { child, socket };
        // Waits for the agent to listen (a hang guard, not a timing check).
        for _ in 0..3000 {
            if std::os::unix::net::UnixStream::connect(&agent.socket).is_ok() {
                return agent;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("ssh-agent never listened on {}", agent.socket.display());
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ssh_flag_forwards_agents_to_run_mounts() {
    let fixture = Fixture::new();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    host_ssh_add_into(&ctx);
    let mut keys = Vec::new();
    for name in ["agent-key", "file-key"] {
        let key = work.path().join(name);
        common::run_ok(
            std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&key),
        );
        let listed = common::run_ok(
            std::process::Command::new("ssh-keygen")
                .arg("-lf")
                .arg(key.with_extension("pub")),
        );
        keys.push((key, listed));
    }
    // A real agent holding the first key, forwarded as `--ssh default`
    // through SSH_AUTH_SOCK; the second key forwarded as a key file.
    let agent = TestAgent::start(work.path());
    common::run_ok(
        std::process::Command::new("ssh-add")
            .arg(&keys[0].0)
            .env("SSH_AUTH_SOCK", &agent.socket),
    );
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\n\
         COPY usr /usr\n\
         COPY lib /lib\n\
         COPY lib64 /lib64\n\
         ENV LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu\n\
         RUN --mount=type=ssh,required ssh-add -l > /default-keys && test -S /run/buildkit/ssh_agent.0\n\
         RUN --mount=type=ssh,id=deploy,required ssh-add -l > /deploy-keys\n",
    )
    .unwrap();
    let rootfs = work.path().join("rootfs");
    let out = kiln_command_with_ssh(&fixture.root(), Some(&agent.socket))
        .args(["build", "--ssh", "default"])
        .arg("--ssh")
        .arg(format!("deploy={}", keys[1].0.display()))
        .arg("--output")
        .arg(format!("type=local,dest={}", rootfs.display()))
        .arg(&ctx)
        .output()
        .unwrap();
    ok(&out);
    assert_eq!(
        std::fs::read_to_string(rootfs.join("default-keys")).unwrap(),
        keys[0].1
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("deploy-keys")).unwrap(),
        keys[1].1
    );

    // No --ssh for a required mount: the build fails naming the id and
    // showing the Dockerfile line.
    let out = kiln_command_with_ssh(&fixture.root(), None)
        .args(["build", "--no-cache"])
        .arg(&ctx)
        .output()
        .unwrap();
    let stderr = failed(&out);
    assert!(
        stderr.contains("no SSH key \"default\" forwarded") && stderr.contains("line 6"),
        "{stderr}"
    );
    // `--ssh default` with no SSH_AUTH_SOCK is refused up front.
    let out = kiln_command_with_ssh(&fixture.root(), None)
        .args(["build", "--ssh", "default"])
        .arg(&ctx)
        .output()
        .unwrap();
    let stderr = failed(&out);
    assert!(stderr.contains("SSH_AUTH_SOCK"), "{stderr}");
}

/// `kiln --root ROOT` with plain progress and SSH_AUTH_SOCK set as given
/// (removed for `None`).
fn kiln_command_with_ssh(root: &Path, auth_sock: Option<&Path>) -> std::process::Command {
    let mut command = common::kiln_command();
    command
        .arg("--root")
        .arg(root)
        .env("KILN_PROGRESS", "plain");
    match auth_sock {
        Some(sock) => command.env("SSH_AUTH_SOCK", sock),
        None => command.env_remove("SSH_AUTH_SOCK"),
    };
    command
}

/// Serves `body of <path>` at every path on a free loopback port, with the
/// `Content-Disposition` header `dispositions` gives for that path (none for
/// others).
fn serve_with_dispositions(dispositions: &'static [(&'static str, &'static str)]) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let request = String::from_utf8_lossy(&request).into_owned();
            let path = request.split(' ').nth(1).unwrap_or("").to_string();
            let body = format!("body of {path}");
            let header = dispositions
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, value)| format!("Content-Disposition: {value}\r\n"))
                .unwrap_or_default();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{header}Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

/// `ADD <url>` names the file from the URL's path whatever the response's
/// Content-Disposition says: BuildKit's Dockerfile frontend always passes
/// that name to its HTTP source (`llb.Filename`), which then never reads the
/// header (frontend/dockerfile/dockerfile2llb/convert_copy.go,
/// source/http getFileName). A named, a path-carrying and an unparsable
/// header all leave the URL's name.
#[test]
fn add_url_names_the_file_from_the_url_not_content_disposition() {
    let fixture = Fixture::new();
    let url = serve_with_dispositions(&[
        ("/dl/named", "attachment; filename=\"renamed.txt\""),
        (
            "/dl/with-path",
            "attachment; filename=\"../../etc/evil.txt\"",
        ),
        ("/dl/unparsable", "attachment; filename=\"unterminated"),
    ]);
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM busybox\n\
             ADD {url}/dl/named {url}/dl/with-path {url}/dl/unparsable {url}/dl/plain /fetched/\n\
             RUN ls /fetched > /listing\n"
        ),
    )]);
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    ok(&fixture.build(&["-o", &dest, ctx.path().to_str().unwrap()]));
    let listing = std::fs::read_to_string(out.path().join("listing")).unwrap();
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        ["named", "plain", "unparsable", "with-path"],
        "{listing}"
    );
    for name in ["named", "plain", "unparsable", "with-path"] {
        let body = std::fs::read_to_string(out.path().join("fetched").join(name)).unwrap();
        assert_eq!(body, format!("body of /dl/{name}"));
    }
    assert!(!out.path().join("etc/evil.txt").exists());
}

/// A build runs BuildKit's checks over its own walk: findings are warnings
/// in the progress output and the metadata file; `# check=error=true` (or
/// the `BUILDKIT_DOCKERFILE_CHECK` build arg) fails the build, naming the
/// rules, before anything runs; `skip=` silences a rule.
#[test]
fn build_checks_warn_fail_and_reach_the_metadata_file() {
    let fixture = Fixture::new();
    // JSONArgsRecommended (line 3) and a lower-case `as` (FromAsCasing).
    let dockerfile = "FROM busybox:latest as base\nRUN touch /ran\nCMD echo hi\n";
    let ctx = context(&[("Dockerfile", dockerfile)]);
    let dir = ctx.path().to_str().unwrap();
    let meta = ctx.path().join("meta.json");
    let build = ["build", "--metadata-file", meta.to_str().unwrap(), dir];
    let out = common::kiln_with_metadata_warnings(&fixture.root(), &build);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Dockerfile:3: JSONArgsRecommended: JSON arguments recommended for CMD"),
        "{stderr}"
    );
    assert!(stderr.contains("Dockerfile:1: FromAsCasing"), "{stderr}");
    // As buildx writes them under BUILDX_METADATA_WARNINGS: BuildKit's
    // VertexWarnings, the short text as BuildKit's linter formats it.
    let read =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap() };
    let warnings = read();
    assert_eq!(
        common::metadata_warnings(&warnings, dockerfile),
        [
            (
                Some(1),
                "FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)".to_string()
            ),
            (
                Some(3),
                "JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended \
                 behavior related to OS signals (line 3)"
                    .to_string()
            ),
        ]
    );
    let first = &warnings["buildx.build.warnings"][0];
    assert_eq!(
        first["url"],
        "https://docs.docker.com/go/dockerfile/rule/from-as-casing/"
    );
    assert_eq!(first["sourceInfo"]["filename"], "Dockerfile");
    assert!(first["detail"][0].is_string(), "{first}");
    // Without it, none (buildx's default).
    ok(&fixture.build(&build[1..]));
    assert!(read().get("buildx.build.warnings").is_none(), "{}", read());

    // error=true: the build fails before any step runs.
    let strict = context(&[(
        "Dockerfile",
        &format!(
            "# check=error=true\n{}",
            dockerfile.replace("/ran", "/strict")
        ),
    )]);
    let out = fixture.build(&[strict.path().to_str().unwrap()]);
    let stderr = failed(&out);
    assert!(
        stderr.contains("lint violation found for rules: FromAsCasing, JSONArgsRecommended"),
        "{stderr}"
    );
    assert!(!stderr.contains("[base 2/2]"), "a step ran:\n{stderr}");
    // Each rule named once, however many findings broke it.
    let twice = context(&[(
        "Dockerfile",
        "# check=error=true\nFROM busybox AS B\nCMD true\nCMD false\n",
    )]);
    let stderr = failed(&fixture.build(&[twice.path().to_str().unwrap()]));
    let violation = stderr.lines().find(|l| l.contains("lint violation"));
    assert_eq!(
        violation,
        Some(
            "error: lint violation found for rules: StageNameCasing, JSONArgsRecommended, \
             MultipleInstructionsDisallowed"
        ),
        "{stderr}"
    );

    // The build arg wins over the directive; skip= silences rules.
    let out = fixture.build(&[
        "--build-arg",
        "BUILDKIT_DOCKERFILE_CHECK=skip=JSONArgsRecommended,FromAsCasing;error=true",
        strict.path().to_str().unwrap(),
    ]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("JSONArgsRecommended"), "{stderr}");
}

/// (inode, content) of `rel` in every snapshot of the store that has it.
fn snapshot_files(root: &Path, rel: &str) -> Vec<(u64, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut found: Vec<(u64, String)> = std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path().join("fs").join(rel);
            let meta = std::fs::symlink_metadata(&path).ok()?;
            Some((meta.ino(), std::fs::read_to_string(&path).unwrap()))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn a_changed_context_copy_links_unchanged_files_and_gives_the_no_cache_image() {
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nCOPY --chmod=755 --chown=7:8 . /ctx\nRUN echo more >> /ctx/a\n",
        ),
        ("a", "a\n"),
        ("b", "b\n"),
        ("e", "e\n"),
        ("sub/c", "c\n"),
    ]);
    // Two names of one unchanged file in the context: copied, never
    // linked (its other name would share the inode).
    std::fs::hard_link(ctx.path().join("e"), ctx.path().join("e2")).unwrap();
    let base = tempfile::tempdir().unwrap();
    let tar = base.path().join("busybox.tar");
    busybox_rootfs_tar(&tar).unwrap();
    let build = |root: &Path, extra: &[&str]| {
        let run = |args: &[&str]| {
            common::kiln_command()
                .arg("--root")
                .arg(root)
                .args(args)
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .env("KILN_PROGRESS", "plain")
                .output()
                .unwrap()
        };
        if !root.exists() {
            ok(&run(&["import", tar.to_str().unwrap(), "busybox:latest"]));
        }
        let meta = base.path().join("meta.json");
        // The RUN's file dated as the epoch in both images.
        let mut args = vec![
            "build",
            "--output",
            "type=image,rewrite-timestamp=true",
            "--metadata-file",
            meta.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(ctx.path().to_str().unwrap());
        ok(&run(&args));
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        meta["containerimage.digest"].as_str().unwrap().to_string()
    };
    let root = base.path().join("store");
    build(&root, &[]);
    // The COPY's snapshot and the RUN's (which took /ctx/a up).
    let first_a = snapshot_files(&root, "ctx/a");
    assert_eq!(first_a.len(), 2, "{first_a:?}");
    std::fs::write(ctx.path().join("b"), "b\nchanged\n").unwrap();
    // Same bytes, an mtime before SOURCE_DATE_EPOCH (so the layer shows
    // it): the earlier file's metadata is not the copy's, so it is copied.
    let earlier = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(ctx.path().join("sub/c"))
        .unwrap()
        .set_modified(earlier)
        .unwrap();
    let incremental = build(&root, &[]);

    // The unchanged file is one inode in both COPY snapshots; the changed
    // one, and the one with a new mtime, are two files.
    let mut c = snapshot_files(&root, "ctx/sub/c");
    c.dedup();
    assert_eq!(c.len(), 2, "ctx/sub/c was linked: {c:?}");
    let mut a = snapshot_files(&root, "ctx/a");
    a.retain(|(_, c)| c == "a\n");
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0], a[1], "ctx/a was copied, not linked");
    let b = snapshot_files(&root, "ctx/b");
    assert_eq!(b.len(), 2, "{b:?}");
    let contents: Vec<&str> = b.iter().map(|(_, c)| c.as_str()).collect();
    assert!(contents.contains(&"b\n") && contents.contains(&"b\nchanged\n"));
    // The hard-linked pair of the context is copied, each build its own.
    for name in ["ctx/e", "ctx/e2"] {
        let e = snapshot_files(&root, name);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_ne!(e[0].0, e[1].0, "{name} was linked");
    }
    // The RUN that appended to the linked /ctx/a changed its own layer
    // only (overlay copied it up): the snapshots still hold "a\n".
    let a = snapshot_files(&root, "ctx/a");
    let appended = a.iter().filter(|(_, c)| c == "a\nmore\n").count();
    assert_eq!((a.len(), appended), (4, 2), "{a:?}");

    // The same image as a build with no earlier result at all, and the
    // linked file has the owner and mode (--chown, --chmod) of that
    // build's copy, as the host sees them (rootless: mapped ids).
    let fresh = base.path().join("fresh");
    assert_eq!(incremental, build(&fresh, &["--no-cache"]));
    assert_eq!(snapshot_files(&fresh, "ctx/a").len(), 2);
    let copied_a = |root: &Path| {
        use std::os::unix::fs::MetadataExt;
        let path = std::fs::read_dir(root.join("snapshots"))
            .unwrap()
            .flatten()
            .map(|e| e.path().join("fs/ctx/a"))
            .find(|p| std::fs::read_to_string(p).is_ok_and(|c| c == "a\n"))
            .unwrap();
        let meta = std::fs::metadata(path).unwrap();
        (meta.uid(), meta.gid(), meta.mode() & 0o7777, meta.mtime())
    };
    let linked = copied_a(&root);
    assert_eq!(linked, copied_a(&fresh));
    assert_eq!(linked.2, 0o755);
}

/// A RUN that binds the context is keyed on what it binds (BuildKit keys
/// the mount on the selected path's content): a file changed there runs
/// it again, and sees the change; one changed elsewhere leaves it cached.
#[test]
fn a_context_bind_mount_reruns_when_what_it_binds_changes() {
    let fixture = Fixture::new();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\n\
             RUN --mount=type=bind,source=src,target=/src cat /src/a > /seen\n",
        ),
        ("src/a", "one\n"),
        ("other", "x\n"),
    ]);
    let out = fixture.dir.path().join("out");
    let build = || {
        let output = format!("type=local,dest={}", out.display());
        let args = [
            "--progress",
            "plain",
            "-o",
            &output,
            ctx.path().to_str().unwrap(),
        ];
        let result = fixture.build(&args);
        ok(&result);
        let seen = std::fs::read_to_string(out.join("seen")).unwrap();
        let log = String::from_utf8_lossy(&result.stderr).into_owned();
        let cached = log
            .split("\n\n")
            .any(|block| block.contains("RUN --mount") && block.contains("CACHED"));
        (seen, cached)
    };
    assert_eq!(build(), ("one\n".to_string(), false));
    std::fs::write(ctx.path().join("other"), "y\n").unwrap();
    assert_eq!(build(), ("one\n".to_string(), true));
    std::fs::write(ctx.path().join("src/a"), "two\n").unwrap();
    assert_eq!(build(), ("two\n".to_string(), false));
}
