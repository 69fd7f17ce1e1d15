//! `kiln check` and `kiln explain` against the data-driven cases in
//! `testdata/check/<case>/` and `testdata/explain/<case>/`.
//!
//! check: each case has a `Dockerfile` (and maybe `.dockerignore`, an `image`
//! file as below, and an `args` file with extra arguments, one a line);
//! `expected.txt` holds the output followed by `exit: N`. A case named
//! `<Rule>-fires…` must report the rule, a case named `<Rule>-quiet…` must
//! not.
//!
//! explain: each case has a `Dockerfile` and one or more `<name>.args`
//! files (arguments to `kiln explain`, one a line, `--` included); for each
//! `<name>.json` is the JSON output and `<name>.txt` the text output, both
//! followed by `exit: N`. An `image` file (a reference, then `--change`
//! lines) puts a base image with that config in the case's store.
//!
//! `KILN_BLESS=1 cargo test --test explain` rewrites the expected files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// `kiln` with `DOCKER_CONFIG` at an empty directory (the host's
/// `~/.docker/config.json` and its credential helpers take no part), no
/// `KILN_LOG` from the environment and no registry configuration file.
fn kiln_command() -> Command {
    let mut command = Command::new(KILN);
    command
        .env("DOCKER_CONFIG", kiln_testsupport::empty_docker_config())
        .env_remove("KILN_LOG")
        .env_remove("DOCKER_DEFAULT_PLATFORM")
        .env("KILN_REGISTRY_CONFIG", "");
    command
}

fn testdata(area: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(area)
}

fn case_dirs(area: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(testdata(area))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no cases in testdata/{area}");
    dirs
}

fn read_args(path: &Path) -> Vec<String> {
    match fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// Runs kiln in `dir` with the store `store`; stdout, then standard error
/// (each line prefixed `stderr: `), then `exit: N`.
fn run_kiln(dir: &Path, store: &Path, args: &[String]) -> String {
    let out = kiln_command()
        .current_dir(dir)
        .env("KILN_ROOT", store)
        .env_remove("KILN_LOG")
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        text.push_str(&format!("stderr: {line}\n"));
    }
    text.push_str(&format!("exit: {}\n", out.status.code().unwrap_or(-1)));
    text
}

/// A store for one case: empty, or (when the case has an `image` file: a
/// reference, then `--change` lines or a `--platform=P` line) holding an
/// image with a one-file root filesystem and that config, imported with
/// `kiln import`.
fn case_store(dir: &Path) -> tempfile::TempDir {
    let store = tempfile::tempdir().unwrap();
    let Ok(spec) = fs::read_to_string(dir.join("image")) else {
        return store;
    };
    let mut lines = spec.lines();
    let reference = lines.next().unwrap();
    let rootfs = store.path().join("rootfs");
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(rootfs.join("etc/motd"), "explain test image\n").unwrap();
    let tar = store.path().join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar failed");
    let mut import = kiln_command();
    import
        .env("KILN_ROOT", store.path().join("root"))
        .arg("import");
    for line in lines {
        if line.starts_with("--platform=") {
            import.arg(line);
        } else {
            import.args(["--change", line]);
        }
    }
    let out = import.arg(&tar).arg(reference).output().unwrap();
    assert!(
        out.status.success(),
        "{}: kiln import: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    store
}

/// Compares (or with KILN_BLESS=1 writes) one expected file; returns a
/// description of the mismatch.
fn compare(expected_path: &Path, actual: &str) -> Option<String> {
    kiln_testsupport::golden::compare(expected_path, actual)
}

#[test]
fn check_cases() {
    let mut failures = Vec::new();
    for dir in case_dirs("check") {
        let store = case_store(&dir);
        let root = store.path().join("root");
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut args = vec![
            "check".to_string(),
            "-f".to_string(),
            "Dockerfile".to_string(),
        ];
        args.extend(read_args(&dir.join("args")));
        let actual = run_kiln(&dir, &root, &args);
        if let Some((rule, _)) = name.split_once("-fires") {
            if !actual.contains(&format!(": {rule}: ")) {
                failures.push(format!("{name}: {rule} did not fire:\n{actual}"));
            }
        }
        if let Some((rule, _)) = name.split_once("-quiet") {
            if actual.contains(&format!(": {rule}: ")) {
                failures.push(format!("{name}: {rule} fired:\n{actual}"));
            }
        }
        failures.extend(compare(&dir.join("expected.txt"), &actual));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every rule kiln documents has a case that fires it and one that does not.
#[test]
fn every_rule_has_both_cases() {
    let names: Vec<String> = case_dirs("check")
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for rule in kiln_builder::lint::rules::ALL {
        assert!(
            names.contains(&format!("{}-fires", rule.name)),
            "no testdata/check/{}-fires",
            rule.name
        );
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(&format!("{}-quiet", rule.name))),
            "no testdata/check/{}-quiet",
            rule.name
        );
    }
}

#[test]
fn explain_cases() {
    let mut failures = Vec::new();
    let mut count = 0;
    for dir in case_dirs("explain") {
        let store = case_store(&dir);
        let root = store.path().join("root");
        let mut arg_files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "args"))
            .collect();
        arg_files.sort();
        assert!(!arg_files.is_empty(), "{}: no .args file", dir.display());
        for file in arg_files {
            count += 1;
            let (before, after) = split_args(&read_args(&file));
            for (format, ext) in [("json", "json"), ("text", "txt")] {
                let mut args = vec![
                    "explain".to_string(),
                    "-f".to_string(),
                    "Dockerfile".to_string(),
                ];
                args.extend(before.iter().cloned());
                args.extend(["--format".to_string(), format.to_string()]);
                args.extend(after.iter().cloned());
                let actual = run_kiln(&dir, &root, &args);
                failures.extend(compare(&file.with_extension(ext), &actual));
            }
        }
    }
    assert!(count > 0);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A `# syntax=` naming a frontend kiln cannot run: explain refuses it,
/// naming the file and line, as a build does (what it would explain is
/// kiln's frontend's reading, not that frontend's). Not a case of
/// testdata/explain: docker, the oracle of those, cannot build it here.
#[test]
fn explain_refuses_a_frontend_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("Dockerfile"),
        "# syntax=example.com/custom/frontend:1\nFROM busybox:1.36\nRUN true\n",
    )
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    let args: Vec<String> = ["explain", "--offline", "-f", "Dockerfile"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = run_kiln(dir.path(), store.path(), &args);
    assert!(out.ends_with("exit: 1\n"), "{out}");
    assert!(
        out.contains("stderr: error: Dockerfile:1: # syntax=example.com/custom/frontend:1 names a frontend kiln cannot run"),
        "{out}"
    );
}

/// With no --platform, explain plans for DOCKER_DEFAULT_PLATFORM as the
/// build does (buildx's default platform); --platform wins over it.
#[test]
fn explain_takes_the_default_platform_a_build_takes() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nENV BUILT_FOR=$TARGETARCH\n",
    )
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    for (flags, wanted) in [
        (&[][..], "BUILT_FOR=arm64"),
        (&["--platform", "linux/amd64"][..], "BUILT_FOR=amd64"),
    ] {
        let out = kiln_command()
            .current_dir(dir.path())
            .env("KILN_ROOT", store.path())
            .env("DOCKER_DEFAULT_PLATFORM", "linux/arm64")
            .args(["explain", "--offline", "--format", "json"])
            .args(flags)
            .arg(".")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(wanted), "{flags:?}: {text}");
    }
}

/// Splits at `--` (kept with the run arguments).
fn split_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    match args.iter().position(|a| a == "--") {
        Some(i) => (args[..i].to_vec(), args[i..].to_vec()),
        None => (args.to_vec(), Vec::new()),
    }
}

/// The `--target`/`--build-arg` flags of an args file (what a build takes).
fn build_flags(args: &[String]) -> Option<Vec<String>> {
    let mut flags = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--target" | "--build-arg" => {
                flags.push(arg.clone());
                flags.push(iter.next()?.clone());
            }
            // Run-time flags do not change the image.
            "--entrypoint" => {
                iter.next()?;
            }
            "--" => break,
            _ => return None,
        }
    }
    Some(flags)
}

fn json_output(text: &str) -> Option<serde_json::Value> {
    let body: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("stderr: ") && !l.starts_with("exit: "))
        .collect();
    serde_json::from_str(&body.join("\n")).ok()
}

/// An empty list and no list are the same to docker run.
fn command_value(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Array(a) if a.is_empty() => serde_json::Value::Null,
        other => other.clone(),
    }
}

/// For every explain case that builds, the entrypoint and cmd explain
/// reports are those of the image `kiln build` produces.
#[test]
fn explain_matches_built_config() {
    let mut failures = Vec::new();
    let mut built = 0;
    for dir in case_dirs("explain") {
        let store = case_store(&dir);
        let root = store.path().join("root");
        for entry in fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().path();
            if file.extension().is_none_or(|e| e != "args") {
                continue;
            }
            let args = read_args(&file);
            let Some(flags) = build_flags(&args) else {
                continue;
            };
            let mut explain_args: Vec<String> =
                vec!["explain".into(), "-f".into(), "Dockerfile".into()];
            explain_args.extend(flags.iter().cloned());
            explain_args.extend(["--format".into(), "json".into()]);
            let Some(explained) = json_output(&run_kiln(&dir, &root, &explain_args)) else {
                // explain refused (an unknown base image): nothing to build either.
                continue;
            };
            if explained["warnings"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["code"] == "BaseImageUnknown"))
            {
                continue;
            }
            let tag = format!("explain-check:{}", built);
            let mut build_args: Vec<String> = vec![
                "build".into(),
                "-f".into(),
                "Dockerfile".into(),
                "-t".into(),
                tag.clone(),
            ];
            build_args.extend(flags.iter().cloned());
            build_args.push(".".into());
            let out = run_kiln(&dir, &root, &build_args);
            if !out.ends_with("exit: 0\n") {
                failures.push(format!("{}: kiln build failed:\n{out}", file.display()));
                continue;
            }
            built += 1;
            let inspect = run_kiln(&dir, &root, &["inspect".into(), tag.clone()]);
            let Some(image) = json_output(&inspect) else {
                failures.push(format!("{}: kiln inspect: {inspect}", file.display()));
                continue;
            };
            let config = &image[0]["Config"];
            for (ours, theirs) in [("entrypoint", "Entrypoint"), ("cmd", "Cmd")] {
                let want = command_value(&config[theirs]);
                let got = command_value(&explained[ours]);
                if want != got {
                    failures.push(format!(
                        "{}: {ours}: explain says {got}, the built image has {want}",
                        file.display()
                    ));
                }
            }
            let by_image = ["explain", "--image", &tag, "--format", "json"].map(String::from);
            match json_output(&run_kiln(&dir, &root, &by_image)) {
                Some(image) => failures.extend(compare_image_explain(
                    &file.display().to_string(),
                    &explained,
                    &image,
                )),
                None => failures.push(format!(
                    "{}: kiln explain --image {tag} failed",
                    file.display()
                )),
            }
        }
    }
    eprintln!("{built} images built and compared");
    assert!(built >= 10, "only {built} cases built");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The fields that must agree between the explanation of a Dockerfile and
/// that of the image built from it.
const SAME_FIELDS: &[&str] = &["argv", "entrypoint", "cmd", "user", "workdir", "env"];

/// What a Dockerfile source kind becomes when read from the built image's
/// history: a line (or an ONBUILD trigger, or a stage's line) is a history
/// entry; the rest keep their kind.
fn history_kind(from: &str) -> &str {
    match from {
        "line" | "onbuild" | "stage" => "history",
        other => other,
    }
}

/// Compares `kiln explain --image TAG` with the Dockerfile's explanation:
/// the same argv, entrypoint, cmd, user, workdir and env, and each of
/// their sources mapped to the history: a line to the history entry of
/// the same instruction, a base image's value to the base image.
fn compare_image_explain(
    name: &str,
    explained: &serde_json::Value,
    image: &serde_json::Value,
) -> Vec<String> {
    let mut failures = Vec::new();
    for field in SAME_FIELDS {
        let (want, got) = (
            command_value(&explained[field]),
            command_value(&image[field]),
        );
        if want != got {
            failures.push(format!(
                "{name}: {field}: the Dockerfile's explain says {want}, the image's {got}"
            ));
        }
    }
    let Some(sources) = explained["sources"].as_object() else {
        return vec![format!("{name}: no sources")];
    };
    for (key, source) in sources {
        let compared = ["entrypoint", "cmd", "user", "workdir"].contains(&key.as_str())
            || key.starts_with("env.");
        if !compared {
            continue;
        }
        let want = history_kind(source["from"].as_str().unwrap_or(""));
        let got = &image["sources"][key];
        // A line of another stage is a base image's when that stage was
        // built and tagged in the same store (the image starts with it).
        let other_stage_built = !source["stage"].is_null() && got["from"] == "base_image";
        if got["from"].as_str() != Some(want) && !other_stage_built {
            failures.push(format!(
                "{name}: source of {key}: the Dockerfile's {source}, the image's {got}"
            ));
            continue;
        }
        // A line's instruction is the history entry's.
        if source["from"] == "line" && !other_stage_built {
            let keyword = |v: &serde_json::Value| {
                v.as_str()
                    .and_then(|t| t.split_whitespace().next())
                    .map(str::to_ascii_uppercase)
            };
            let (a, b) = (
                keyword(&source["instruction"]),
                keyword(&got["instruction"]),
            );
            if a != b {
                failures.push(format!(
                    "{name}: source of {key}: line {source} but history entry {got}"
                ));
            }
        }
    }
    failures
}

/// Imports kiln-testsupport's busybox root filesystem into the store at
/// `root` under each of `references`, with the `--change` lines `changes`.
fn import_busybox(work: &Path, root: &Path, references: &[&str], changes: &[&str]) {
    let tar = work.join("busybox-rootfs.tar");
    if !tar.exists() {
        kiln_testsupport::BusyboxRootfs::default()
            .write_tar(&tar)
            .unwrap();
    }
    for reference in references {
        let mut import = kiln_command();
        import.env("KILN_ROOT", root).arg("import");
        for change in changes {
            import.args(["--change", change]);
        }
        let out = import.arg(&tar).arg(reference).output().unwrap();
        assert!(
            out.status.success(),
            "import {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `explain`'s argv is what `kiln run` executes: for images built on a
/// busybox base, the container's output equals the output of running the
/// same argv on the host (`/bin/sh` and `/bin/echo` exist on both).
#[test]
fn explain_argv_is_what_kiln_run_runs() {
    kiln_testsupport::require_namespaces!("kiln run uses real namespaces");
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    import_busybox(work.path(), &root, &["busybox:explain"], &[]);
    let kiln = |dir: &Path, args: &[&str]| -> std::process::Output {
        kiln_command()
            .current_dir(dir)
            .env("KILN_ROOT", &root)
            .env_remove("KILN_LOG")
            .stdin(std::process::Stdio::null())
            .args(args)
            .output()
            .unwrap()
    };

    // (Dockerfile body after FROM, --entrypoint, run arguments)
    let cases: &[(&str, Option<&str>, &[&str])] = &[
        (
            "ENTRYPOINT [\"/bin/echo\", \"entry\"]\nCMD [\"default\"]\n",
            None,
            &[],
        ),
        (
            "ENTRYPOINT [\"/bin/echo\", \"entry\"]\nCMD [\"default\"]\n",
            None,
            &["x", "y"],
        ),
        (
            "ENTRYPOINT [\"/bin/echo\", \"entry\"]\nCMD [\"default\"]\n",
            Some("/bin/echo"),
            &["z"],
        ),
        (
            "ENTRYPOINT echo shell entry\nCMD [\"ignored\"]\n",
            None,
            &["also-ignored"],
        ),
        ("CMD echo shell cmd\n", None, &[]),
        ("CMD [\"/bin/echo\", \"exec\", \"$HOME\"]\n", None, &[]),
        (
            "SHELL [\"/bin/sh\", \"-c\", \"echo custom shell: \\\"$0\\\"\"]\nCMD ran\n",
            None,
            &[],
        ),
    ];
    for (i, (body, entrypoint, args)) in cases.iter().enumerate() {
        let dir = work.path().join(format!("case{i}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("Dockerfile"),
            format!("FROM busybox:explain\n{body}"),
        )
        .unwrap();
        let tag = format!("explain-run:{i}");
        let out = kiln(&dir, &["build", "-t", &tag, "."]);
        assert!(
            out.status.success(),
            "case {i}: build: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let mut explain_args = vec!["explain", "--format", "json"];
        let mut run_args = vec!["run", "--network", "none"];
        if let Some(e) = entrypoint {
            explain_args.extend(["--entrypoint", e]);
            run_args.extend(["--entrypoint", e]);
        }
        explain_args.push("--");
        explain_args.extend(args.iter());
        run_args.push(&tag);
        run_args.extend(args.iter());
        let out = kiln(&dir, &explain_args);
        assert!(
            out.status.success(),
            "case {i}: explain: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let explained: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let argv: Vec<String> = serde_json::from_value(explained["argv"].clone()).unwrap();

        let host = Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .output()
            .unwrap();
        let container = kiln(&dir, &run_args);
        assert!(
            container.status.success(),
            "case {i}: kiln run: {}",
            String::from_utf8_lossy(&container.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&container.stdout),
            String::from_utf8_lossy(&host.stdout),
            "case {i}: argv {argv:?}"
        );
        assert!(
            !host.stdout.is_empty(),
            "case {i}: argv {argv:?} printed nothing"
        );
    }
}

/// A base image that is only in a registry: explain fetches its manifest
/// and config (no layers, nothing stored); `--offline` treats it as empty;
/// a tag the registry lacks is an error naming the image.
#[test]
fn explain_reads_base_config_from_the_registry() {
    let registry = kiln_testsupport::registry::RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let publisher = work.path().join("publisher");
    let reader = work.path().join("reader");
    let rootfs = work.path().join("rootfs");
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(rootfs.join("etc/motd"), "hi\n").unwrap();
    let tar = work.path().join("rootfs.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let image = format!("{}/explain/base:1", registry.host);
    let kiln = |root: &Path, args: &[&str]| {
        kiln_command()
            .current_dir(work.path())
            .env("KILN_ROOT", root)
            .env_remove("KILN_LOG")
            .args(args)
            .output()
            .unwrap()
    };
    let out = kiln(
        &publisher,
        &[
            "import",
            "--change",
            "CMD [\"/bin/sh\"]",
            "--change",
            "USER app",
            tar.to_str().unwrap(),
            &image,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kiln(&publisher, &["push", &image]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The reader goes through a proxy that logs every request it forwards.
    let proxy =
        kiln_testsupport::FaultProxy::start(registry.addr, kiln_testsupport::FaultPlan::default())
            .unwrap();
    let proxied = format!("{}/explain/base:1", proxy.host);
    fs::write(
        work.path().join("Dockerfile"),
        format!("FROM {proxied}\nENTRYPOINT [\"/app\"]\n"),
    )
    .unwrap();
    let out = kiln(&reader, &["explain", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Manifests and the config blob, no layer.
    let blob_requests: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.contains("/blobs/"))
        .collect();
    assert_eq!(blob_requests.len(), 1, "only the config: {blob_requests:?}");
    assert!(blob_requests[0].starts_with("GET /v2/explain/base/blobs/sha256:"));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["user"], "app");
    assert_eq!(e["sources"]["user"]["from"], "base_image");
    assert_eq!(e["argv"], serde_json::json!(["/app"]));
    let reset = e["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["code"] == "EntrypointResetsCmd")
        .expect("the base image's CMD is reset");
    assert!(reset["message"].as_str().unwrap().contains("[\"/bin/sh\"]"));
    assert!(!reader.exists(), "explain wrote to the store");

    // The image itself, only in the registry: its manifest and config, no
    // layer, nothing stored; its values and their history sources.
    let seen = proxy.requests().len();
    let out = kiln(
        &reader,
        &["explain", "--image", &proxied, "--format", "json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blob_requests: Vec<String> = proxy.requests()[seen..]
        .iter()
        .filter(|r| r.contains("/blobs/"))
        .cloned()
        .collect();
    assert_eq!(blob_requests.len(), 1, "only the config: {blob_requests:?}");
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["user"], "app");
    assert_eq!(e["argv"], serde_json::json!(["/bin/sh"]));
    for field in ["cmd", "user"] {
        let source = &e["sources"][field];
        assert_eq!(source["from"], "history", "{field}: {source}");
        assert_eq!(source["history"], 0, "{field}: {source}");
        assert_eq!(source["created_by"], "kiln import", "{field}: {source}");
    }
    assert!(!reader.exists(), "explain --image wrote to the store");

    let out = kiln(&reader, &["explain", "--offline", "--format", "json"]);
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["user"], serde_json::Value::Null);
    assert!(e["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["code"] == "BaseImageUnknown"));
    // --offline asks no registry: a flag on how to reach one is refused.
    let out = kiln(
        &reader,
        &["explain", "--offline", "--insecure-registry", "example.com"],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no effect with --offline"),
        "{out:?}"
    );

    // A config whose bytes do not match its digest is refused, named.
    let config_digest = blob_requests[0]
        .rsplit('/')
        .next()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    proxy.set_plan(kiln_testsupport::FaultPlan {
        flip_blob_byte_at: Some(10),
        ..Default::default()
    });
    let out = kiln(&reader, &["explain"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&config_digest) && stderr.contains(&proxied),
        "{stderr}"
    );
    assert_eq!(proxy.flips_injected(), 1);
    assert!(!reader.exists(), "explain wrote to the store");

    let missing = format!("{}/explain/missing:1", registry.host);
    fs::write(work.path().join("Dockerfile"), format!("FROM {missing}\n")).unwrap();
    let out = kiln(&reader, &["explain"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(!reader.exists(), "explain wrote to the store");
}

/// Dockerfiles under testdata (relative to it) that are expected not to
/// build, why, and a piece of the error their build must report (so the
/// list cannot go stale). Every other one must build and be compared.
const NOT_BUILDABLE: &[(&str, &str, &str)] = &[
    (
        "builder/keys/all-step-kinds",
        "its ADD URLs name example.com, which this network does not reach; the case pins cache keys",
        "example.com",
    ),
    (
        "builder/plan/errors-add-git",
        "its Git source has a query BuildKit rejects; the case checks that error",
        "unexpected query",
    ),
    (
        "builder/plan/add-git-mtime",
        "its ADD names github.com, which this network does not reach; the case pins the plan's \
         warning",
        "github.com",
    ),
    (
        "builder/plan/errors-copy-from-variable",
        "COPY --from holds a variable, which BuildKit refuses; the case checks that error",
        "variable expansion is not supported for --from",
    ),
    (
        "builder/plan/errors-copy-from-negative",
        "COPY --from=-1 is a stage index out of range; the case checks that error",
        "invalid stage index -1",
    ),
    (
        "builder/plan/errors-forward-copy",
        "COPY --from names a later stage; the case checks that error",
        "it needs to be defined before current stage",
    ),
    (
        "builder/plan/errors-forward-mount",
        "RUN --mount from= names a later stage; the case checks that error",
        "stage needs to be defined before current command",
    ),
    (
        "builder/plan/errors-mount-from-number",
        "a RUN mount's from=0 names an image, which this network does not reach; the case checks that",
        "base image 0:",
    ),
    (
        "builder/progress/run-fails",
        "its RUN exits 7 on purpose; the case checks the failure's progress output",
        "did not complete successfully: exit code: 7",
    ),
    (
        "builder/progress/run-heredoc-no-interpreter",
        "its heredoc's #! names a missing interpreter; the case checks the error",
        "names the interpreter \"/nonexistent/interp\"",
    ),
    (
        "website",
        "its base is a debootstrapped Debian (scripts/example-website makes it), not in this store",
        "kiln-example/bookworm:minbase",
    ),
];

/// Files that a case's Dockerfile COPYs but testdata does not carry (its
/// planner test or scripts/bench-build supplies them): the test puts them,
/// with a line of text, beside a copy of the case directory as its context.
const MADE_CONTEXT_FILES: &[(&str, &[&str])] = &[
    ("bench/stages", &["stamp"]),
    ("bench/steps", &["stamp"]),
    ("builder/plan/scratch-and-platform-args", &["file"]),
    ("builder/plan/workdir-user", &["owned.txt"]),
];

/// Accepts connections on a loopback port and closes them at once,
/// counting them: set as every proxy variable, it gives any attempt to
/// reach a registry (or anything else over HTTP) a fast failure, and the
/// count shows whether one was made.
struct ProxyTrap {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ProxyTrap {
    fn start() -> ProxyTrap {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = connections.clone();
        // The thread ends with the test process.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(conn);
            }
        });
        ProxyTrap { addr, connections }
    }

    fn count(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every proxy variable at the trap, no exceptions.
    fn apply(&self, command: &mut Command) {
        let url = format!("http://{}", self.addr);
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
            command.env(var, &url).env(var.to_lowercase(), &url);
        }
        command.env_remove("NO_PROXY").env_remove("no_proxy");
    }
}

/// Lays out a build context from a tree spec (as builder/tests/common/tree.rs
/// reads it; only the `d`, `f` and `l` lines the build cases use):
/// `d PATH [MODE]`, `f PATH [MODE] [CONTENT]` (`\n` is a newline),
/// `l PATH TARGET`.
fn context_from_spec(root: &Path, spec: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let is_mode =
        |s: &str| !s.is_empty() && s.split(':').next().unwrap().chars().all(|c| c.is_digit(8));
    let mode_of = |s: &str| u32::from_str_radix(s.split(':').next().unwrap(), 8).unwrap();
    let mut dirs = Vec::new();
    for line in spec
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut parts = line.splitn(3, ' ');
        let kind = parts.next().unwrap();
        let path = root.join(
            parts
                .next()
                .unwrap_or_else(|| panic!("bad tree line {line:?}")),
        );
        let rest = parts.next().unwrap_or("");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        match kind {
            "d" => {
                fs::create_dir_all(&path).unwrap();
                dirs.push((
                    path,
                    if rest.is_empty() {
                        0o755
                    } else {
                        mode_of(rest)
                    },
                ));
            }
            "f" => {
                let (mode, content) = match rest.split_once(' ') {
                    Some((m, c)) if is_mode(m) => (mode_of(m), c),
                    _ if is_mode(rest) => (mode_of(rest), ""),
                    _ => (0o644, rest),
                };
                fs::write(&path, content.replace("\\n", "\n")).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            }
            "l" => std::os::unix::fs::symlink(rest, &path).unwrap(),
            other => panic!("tree line kind {other:?} is not supported here: {line:?}"),
        }
    }
    // Modes last, so a read-only directory does not block its own entries.
    for (dir, mode) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every other Dockerfile in testdata (the builder's cases, the benchmarks,
/// the example), built on the bases they name, all imported into the store
/// beforehand (`busybox`, `busybox:test`, `onbuild-base`): explain's
/// entrypoint and cmd must be the built image's. A case's `context` spec or
/// `context-files/` becomes its build context, and its `options`
/// (`build-arg K=V`, `target NAME`) apply to both commands. Every kiln here
/// has its proxies at a loopback trap, so no registry is ever reached; no
/// build that succeeds may have connected to it.
#[test]
fn explain_matches_build_for_other_testdata() {
    kiln_testsupport::require_namespaces!("RUN steps run in namespaces");
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    import_busybox(work.path(), &root, &["busybox:latest", "busybox:test"], &[]);
    // testdata/builder/plan/onbuild-image-copy-from/images.json's base.
    import_busybox(
        work.path(),
        &root,
        &["onbuild-base"],
        &["ONBUILD COPY --from=helper /h /h"],
    );
    let trap = ProxyTrap::start();
    let kiln = |dir: &Path, args: &[String]| -> String {
        let mut command = kiln_command();
        command
            .current_dir(dir)
            .env("KILN_ROOT", &root)
            .env("KILN_PROGRESS", "plain")
            .stdin(std::process::Stdio::null())
            .args(args);
        trap.apply(&mut command);
        let out = command.output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            text.push_str(&format!("stderr: {line}\n"));
        }
        text.push_str(&format!("exit: {}\n", out.status.code().unwrap_or(-1)));
        text
    };

    // Every directory under testdata holding a Dockerfile, but for the
    // parser's syntax cases and this file's own cases.
    let mut dirs = Vec::new();
    let mut pending = vec![testdata("")];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !(dir == testdata("") && ["parser", "check", "explain"].contains(&name.as_str()))
                {
                    pending.push(path);
                }
            } else if name == "Dockerfile" {
                dirs.push(dir.clone());
            }
        }
    }
    dirs.sort();
    let relative = |dir: &Path| {
        dir.strip_prefix(testdata(""))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let listed = NOT_BUILDABLE
        .iter()
        .map(|(n, _, _)| n)
        .chain(MADE_CONTEXT_FILES.iter().map(|(n, _)| n));
    for listed in listed {
        assert!(
            dirs.iter().any(|d| relative(d) == *listed),
            "{listed} is listed but has no Dockerfile"
        );
    }

    let mut compared = Vec::new();
    let mut failures = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let name = relative(dir);
        let expected_failure = NOT_BUILDABLE.iter().find(|(n, _, _)| *n == name);
        let tag = format!("explain-other:{i}");
        let context = work.path().join(format!("context-{i}"));
        let context = if let Ok(spec) = fs::read_to_string(dir.join("context")) {
            context_from_spec(&context, &spec);
            context
        } else if dir.join("context-files").is_dir() {
            copy_tree(&dir.join("context-files"), &context);
            context
        } else if let Some((_, files)) = MADE_CONTEXT_FILES.iter().find(|(n, _)| *n == name) {
            copy_tree(dir, &context);
            for file in *files {
                fs::write(context.join(file), "made by tests/explain.rs\n").unwrap();
            }
            context
        } else {
            dir.clone()
        };
        let mut options = Vec::new();
        for line in fs::read_to_string(dir.join("options"))
            .unwrap_or_default()
            .lines()
        {
            match line.split_once(' ') {
                Some(("build-arg", kv)) => options.extend(["--build-arg".to_string(), kv.into()]),
                Some(("target", stage)) => options.extend(["--target".to_string(), stage.into()]),
                _ if line.trim().is_empty() => {}
                _ => panic!("{name}/options: unknown line {line:?}"),
            }
        }
        let mut build: Vec<String> = vec!["build".into(), "-t".into(), tag.clone()];
        build.extend(options.iter().cloned());
        build.extend([
            "-f".into(),
            dir.join("Dockerfile").display().to_string(),
            context.display().to_string(),
        ]);
        let connections_before = trap.count();
        let built = kiln(dir, &build);
        let succeeded = built.ends_with("exit: 0\n");
        // A case that fails on purpose may do so looking up an image it
        // names (the trap then fails it fast); one that builds must not
        // have needed the network.
        if expected_failure.is_none() && trap.count() != connections_before {
            failures.push(format!(
                "{name}: kiln build tried to reach the network (through the proxy trap):\n{built}"
            ));
        }
        match (expected_failure, succeeded) {
            (Some((_, why, _)), true) => {
                failures.push(format!(
                    "{name}: built, but NOT_BUILDABLE says it cannot ({why}): update the list"
                ));
                continue;
            }
            (Some((_, why, error)), false) => {
                if !built.contains(error) {
                    failures.push(format!(
                        "{name}: failed, but not as NOT_BUILDABLE says ({why}; \
                         expected {error:?} in the output):\n{built}"
                    ));
                }
                continue;
            }
            (None, false) => {
                failures.push(format!("{name}: kiln build failed:\n{built}"));
                continue;
            }
            (None, true) => {}
        }
        let mut explain: Vec<String> = vec!["explain".into(), "--format".into(), "json".into()];
        explain.extend(options.iter().cloned());
        let explained = kiln(dir, &explain);
        let inspect = kiln(dir, &["inspect".into(), tag.clone()]);
        let (Some(explained), Some(image)) = (json_output(&explained), json_output(&inspect))
        else {
            failures.push(format!(
                "{name}: explain or inspect failed:\n{explained}\n{inspect}"
            ));
            continue;
        };
        compared.push(name.clone());
        let mut by_image: Vec<String> = vec!["explain".into(), "--image".into(), tag.clone()];
        by_image.extend(["--format".into(), "json".into()]);
        match json_output(&kiln(dir, &by_image)) {
            Some(image) => failures.extend(compare_image_explain(&name, &explained, &image)),
            None => failures.push(format!("{name}: kiln explain --image {tag} failed")),
        }
        let config = &image[0]["Config"];
        for (ours, theirs) in [("entrypoint", "Entrypoint"), ("cmd", "Cmd")] {
            let want = command_value(&config[theirs]);
            let got = command_value(&explained[ours]);
            if want != got {
                failures.push(format!(
                    "{name}: {ours}: explain says {got}, the built image has {want}"
                ));
            }
        }
    }
    eprintln!(
        "{} of {} testdata Dockerfiles built and compared ({} expected not to build)",
        compared.len(),
        dirs.len(),
        NOT_BUILDABLE.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(compared.len() + NOT_BUILDABLE.len(), dirs.len());

    // The trap works: a base in no store is looked up through it, and the
    // build fails at once, naming the image.
    let unknown = work.path().join("unknown-base");
    fs::create_dir_all(&unknown).unwrap();
    fs::write(
        unknown.join("Dockerfile"),
        "FROM kiln-explain-test/not-in-the-store:1\nRUN true\n",
    )
    .unwrap();
    let connections_before = trap.count();
    let out = kiln(&unknown, &["build".into(), ".".into()]);
    assert!(!out.ends_with("exit: 0\n"), "{out}");
    assert!(out.contains("kiln-explain-test/not-in-the-store"), "{out}");
    assert!(
        trap.count() > connections_before,
        "the lookup did not go through the trap: {out}"
    );
}

/// The build checks are `kiln check`'s BuildKit rules, seen by the build's
/// own walk: for every check case, `kiln build --check` (the stages the
/// last one needs, bases from the store) finds what `kiln check --target`
/// finds of BuildKit's rules. Every base a case names is in the store (the
/// busybox root filesystem under that name), so the build resolves it.
#[test]
fn build_checks_are_kiln_checks_buildkit_rules() {
    let mut failures = Vec::new();
    let mut compared = 0;
    for dir in case_dirs("check") {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        let Ok(ast) = kiln_parser::parse(&text, "Dockerfile") else {
            continue;
        };
        let Ok(df) = kiln_parser::instructions::from_ast(&ast) else {
            continue;
        };
        let store = case_store(&dir);
        let root = store.path().join("root");
        let names: Vec<&str> = df.stages.iter().filter_map(|s| s.name.as_deref()).collect();
        let case_image = fs::read_to_string(dir.join("image")).unwrap_or_default();
        let case_image = case_image.lines().next().unwrap_or("");
        let mut imported: Vec<String> = Vec::new();
        for stage in &df.stages {
            let base = stage.base.to_ascii_lowercase();
            let skip = base.contains('$')
                || base == "scratch"
                || names.contains(&base.as_str())
                || stage.base == case_image
                || imported.contains(&stage.base);
            if !skip {
                import_busybox_as(&root, &stage.base);
                imported.push(stage.base.clone());
            }
        }
        let mut args: Vec<String> = read_args(&dir.join("args"));
        if args.iter().any(|a| a.starts_with("--format")) {
            continue;
        }
        if let Some(last) = df.stages.last().and_then(|s| s.name.clone()) {
            args.extend(["--target".to_string(), last]);
        }
        let words = |list: &[&str]| -> Vec<String> {
            list.iter()
                .map(|w| w.to_string())
                .chain(args.iter().cloned())
                .collect()
        };
        let check = words(&["check", "--format", "json", "-f", "Dockerfile"]);
        let mut build = words(&["build", "--check", "--format", "json", "-f", "Dockerfile"]);
        build.push(".".into());
        let findings = |out: &str, buildkit_only: bool| -> Option<Vec<(String, u64)>> {
            let json: String = out
                .lines()
                .take_while(|l| !l.starts_with("stderr: ") && !l.starts_with("exit: "))
                .map(|l| format!("{l}\n"))
                .collect();
            let value: serde_json::Value = serde_json::from_str(&json).ok()?;
            Some(
                value["findings"]
                    .as_array()?
                    .iter()
                    .filter(|f| !buildkit_only || f["origin"] == "buildkit")
                    .map(|f| {
                        (
                            f["rule"].as_str().unwrap_or("").to_string(),
                            f["line"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect(),
            )
        };
        let checked = run_kiln(&dir, &root, &check);
        // A base named through an ARG is imported when the build asks for
        // it (its error names it).
        let mut built = run_kiln(&dir, &root, &build);
        for _ in 0..4 {
            let Some(missing) = missing_base(&built) else {
                break;
            };
            if imported.contains(&missing) || missing == case_image {
                break;
            }
            import_busybox_as(&root, &missing);
            imported.push(missing);
            built = run_kiln(&dir, &root, &build);
        }
        if missing_base(&built).is_some() {
            // Not buildable here (a base of another platform only): the
            // build fails where check, which takes what the store has,
            // reports on it.
            continue;
        }
        match (findings(&checked, true), findings(&built, false)) {
            (Some(a), Some(b)) if a == b => compared += 1,
            (Some(_), None)
                if built.contains("should not be blank") || built.contains("error:") =>
            {
                // A Dockerfile the build refuses while planning: check
                // reports the same error.
                if !checked.contains("\"error\": {") {
                    failures.push(format!(
                        "{name}: the build refused it, check did not:\n{built}"
                    ));
                }
            }
            (a, b) => failures.push(format!(
                "{name}:\ncheck: {a:?}\n{checked}\nbuild --check: {b:?}\n{built}"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(compared > 40, "only {compared} cases compared");
}

/// The base image a failed build could not find or pull, from its error
/// (`base image REF: …cannot reach the registry…`).
fn missing_base(output: &str) -> Option<String> {
    let line = output
        .lines()
        .find(|l| l.contains("base image ") && l.contains("cannot reach the registry"))?;
    let rest = &line[line.find("base image ")? + "base image ".len()..];
    rest.split(": ").next().map(str::to_string)
}

/// Imports the busybox root filesystem into the store at `root` as
/// `reference`. A reference with a digest (a pinned base) is not a name
/// `kiln import` gives: the image is imported under a tag and the store
/// made to name it so too, as a pull by digest would have it named (its
/// digest differs: these cases read the base's config, not its bytes).
fn import_busybox_as(root: &Path, reference: &str) {
    if reference.contains('@') {
        import_busybox_as(root, "kiln-test/pinned-base:latest");
        let store = kiln_layers::Store::open(root).unwrap();
        let tagged = kiln_layers::Reference::parse("kiln-test/pinned-base:latest").unwrap();
        let desc = store.resolve(&tagged).unwrap().unwrap();
        store.untag(&tagged).unwrap();
        let pinned = kiln_layers::Reference::parse(reference).unwrap();
        store.tag(&pinned, &desc).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("busybox.tar");
    kiln_testsupport::BusyboxRootfs::default()
        .write_tar(&tar)
        .unwrap();
    let out = kiln_command()
        .env("KILN_ROOT", root)
        .arg("import")
        .arg(&tar)
        .arg(reference)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Digests change with every import (the tar's file times): the goldens
/// show them as `sha256:…`.
fn without_digests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("sha256:") {
        out.push_str(&rest[..at + 7]);
        let hex = rest[at + 7..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if hex == 64 {
            out.push('…');
        }
        rest = &rest[at + 7 + hex..];
    }
    out.push_str(rest);
    out
}

/// Where an image runs, data-driven: each `testdata/explain-runs/<case>/`
/// has an `image` (as the explain cases), a `pod.yaml` or `compose.yaml`,
/// `rule.txt` (the documentation paragraph the expected argv follows from)
/// and `argv.json` (that argv, written by hand from the paragraph);
/// `expected.json` and `expected.txt` (at 100 columns) are goldens.
#[test]
fn explain_runs_cases() {
    let mut failures = Vec::new();
    for dir in case_dirs("explain-runs") {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let rule = fs::read_to_string(dir.join("rule.txt")).unwrap_or_default();
        assert!(rule.trim().len() > 40, "{name}: rule.txt quotes no rule");
        let store = case_store(&dir);
        let root = store.path().join("root");
        let flag = if dir.join("pod.yaml").exists() {
            ["--pod".to_string(), "pod.yaml".to_string()]
        } else {
            ["--compose".to_string(), "compose.yaml".to_string()]
        };
        let mut json_args = vec!["explain".to_string()];
        json_args.extend(flag.iter().cloned());
        let mut text_args = json_args.clone();
        json_args.extend(["--format".into(), "json".into()]);
        text_args.extend(["--width".into(), "100".into()]);
        let json = without_digests(&run_kiln(&dir, &root, &json_args));
        let text = without_digests(&run_kiln(&dir, &root, &text_args));
        let want: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("argv.json")).unwrap()).unwrap();
        match json_output(&json) {
            Some(got) if got["argv"] == want => {
                for field in [
                    "argv",
                    "entrypoint",
                    "cmd",
                    "user",
                    "workdir",
                    "env",
                    "sources",
                    "warnings",
                    "pid1",
                ] {
                    if got.get(field).is_none() {
                        failures.push(format!("{name}: no {field} in the JSON"));
                    }
                }
            }
            _ => failures.push(format!("{name}: argv should be {want}:\n{json}")),
        }
        if let Some(long) = text.lines().find(|l| l.chars().count() > 100) {
            failures.push(format!("{name}: a line over 100 columns: {long}"));
        }
        failures.extend(compare(&dir.join("expected.json"), &json));
        failures.extend(compare(&dir.join("expected.txt"), &text));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `--width` fits the text to its columns (values cut; refused with JSON, never cut);
/// without it (and without a terminal) a long CMD makes a long line.
/// `kiln explain --help` fits 100 columns and shows an example per question.
#[test]
fn explain_width_and_help() {
    let work = tempfile::tempdir().unwrap();
    let long = "x".repeat(300);
    fs::write(
        work.path().join("Dockerfile"),
        format!("FROM scratch\nLABEL description=\"{long}\"\nCMD [\"/app\", \"{long}\"]\n"),
    )
    .unwrap();
    let root = work.path().join("store");
    let wide = run_kiln(work.path(), &root, &["explain".into()]);
    assert!(wide.lines().any(|l| l.chars().count() > 300), "{wide}");
    let narrow = run_kiln(
        work.path(),
        &root,
        &["explain".into(), "--width".into(), "100".into()],
    );
    assert!(narrow.ends_with("exit: 0\n"), "{narrow}");
    for line in narrow.lines() {
        assert!(line.chars().count() <= 100, "over 100 columns: {line}");
    }
    assert!(narrow.contains('…'), "{narrow}");
    // The JSON is never cut: --width, which would do nothing there, is
    // refused.
    let json = run_kiln(
        work.path(),
        &root,
        &["explain".into(), "--format".into(), "json".into()],
    );
    let json = json_output(&json).unwrap();
    assert_eq!(json["cmd"][1].as_str().unwrap(), long);
    let refused = kiln_command()
        .current_dir(work.path())
        .env("KILN_ROOT", &root)
        .args(["explain", "--width", "100", "--format", "json"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--format json is never cut"),
        "{refused:?}"
    );

    let help = kiln_command().args(["explain", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for line in help.lines() {
        assert!(line.chars().count() <= 100, "help over 100 columns: {line}");
    }
    for example in [
        "kiln explain . --",
        "--image",
        "--pod",
        "--compose",
        "kiln layers",
        "kiln history",
    ] {
        assert!(help.contains(example), "no {example} example in:\n{help}");
    }
}

/// PID 1 in a store image: an entrypoint script that `exec`s its
/// arguments hands PID 1 to them; one that does not stays PID 1 and earns
/// a warning; `--init` puts docker-init first. Several containers or
/// services need `--container`/`--service`.
#[test]
fn explain_pid1_and_selection() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    import_busybox(work.path(), &root, &["busybox:pid1"], &[]);
    let kiln = |args: &[&str]| {
        run_kiln(
            work.path(),
            &root,
            &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        )
    };
    for (tag, script) in [
        ("execs", "#!/bin/sh\necho start\nexec \"$@\"\n"),
        ("waits", "#!/bin/sh\necho start\n\"$@\"\n"),
    ] {
        let dir = work.path().join(tag);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("entry.sh"), script).unwrap();
        fs::write(
            dir.join("Dockerfile"),
            "FROM busybox:pid1\nCOPY entry.sh /usr/local/bin/entry.sh\nENTRYPOINT [\"entry.sh\"]\nCMD [\"/bin/sleep\", \"100\"]\n",
        )
        .unwrap();
        let out = run_kiln(
            &dir,
            &root,
            &[
                "build".into(),
                "-q".into(),
                "-t".into(),
                format!("pid1:{tag}"),
                ".".into(),
            ],
        );
        assert!(out.ends_with("exit: 0\n"), "{out}");
    }
    let pid1 = |args: &[&str]| json_output(&kiln(args)).unwrap();
    let execs = pid1(&["explain", "--image", "pid1:execs", "--format", "json"]);
    assert_eq!(execs["pid1"]["kind"], "application", "{execs:#}");
    assert_eq!(execs["pid1"]["signal_reaches_application"], "yes");
    assert!(execs["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["code"] != "ScriptDoesNotExec"));
    let waits = pid1(&["explain", "--image", "pid1:waits", "--format", "json"]);
    assert_eq!(waits["pid1"]["kind"], "shell", "{waits:#}");
    assert_eq!(waits["pid1"]["signal_reaches_application"], "no");
    let warning = waits["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["code"] == "ScriptDoesNotExec")
        .expect("a warning for the script");
    assert_eq!(
        warning["history"],
        waits["sources"]["entrypoint"]["history"]
    );
    let init = pid1(&[
        "explain",
        "--image",
        "pid1:waits",
        "--init",
        "--format",
        "json",
    ]);
    assert_eq!(init["pid1"]["kind"], "init");
    assert_eq!(init["pid1"]["process"][0], "/sbin/docker-init");
    assert_eq!(waits["pid1"]["process"][0], "entry.sh");

    fs::write(
        work.path().join("pod.yaml"),
        "kind: Pod\nmetadata: {name: two}\nspec:\n  containers:\n  - name: a\n    image: pid1:execs\n  - name: b\n    image: pid1:waits\n    args: [\"/bin/true\"]\n",
    )
    .unwrap();
    let out = kiln(&["explain", "--pod", "pod.yaml"]);
    assert!(
        out.contains("several containers") && out.ends_with("exit: 1\n"),
        "{out}"
    );
    let b = pid1(&[
        "explain",
        "--pod",
        "pod.yaml",
        "--container",
        "b",
        "--format",
        "json",
    ]);
    assert_eq!(b["argv"], serde_json::json!(["entry.sh", "/bin/true"]));
    // --container and --service pick in a manifest or a Compose file:
    // without one (a CONTEXT or --image instead) they would do nothing.
    for args in [
        ["explain", "--container", "b", "."],
        ["explain", "--container", "b", "--image=pid1:waits"],
        ["explain", "--service", "b", "."],
    ] {
        let out = kiln(&args);
        assert!(
            out.contains("picks a") && out.ends_with("exit: 1\n"),
            "{args:?}: {out}"
        );
    }
    fs::write(
        work.path().join("compose.yaml"),
        "services:\n  a:\n    image: pid1:execs\n  b:\n    image: pid1:waits\n    command: /bin/true\n",
    )
    .unwrap();
    let out = kiln(&["explain", "--compose", "compose.yaml"]);
    assert!(
        out.contains("several services") && out.ends_with("exit: 1\n"),
        "{out}"
    );
    let b = pid1(&[
        "explain",
        "--compose",
        "compose.yaml",
        "--service",
        "b",
        "--format",
        "json",
    ]);
    assert_eq!(b["argv"], serde_json::json!(["entry.sh", "/bin/true"]));
}
