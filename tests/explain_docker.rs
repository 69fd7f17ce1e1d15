//! Docker as the oracle for `kiln explain`: a docker daemon of the test's
//! own (kiln_testsupport::docker) builds the Dockerfiles of
//! `testdata/explain/` (on a busybox base: docker cannot save an image
//! without layers) with BuildKit and with the classic builder; `docker
//! save` → `kiln load` brings them into a kiln store. For each `.args` file
//! of a case:
//! - `kiln explain --image` gives the config values `docker inspect` shows
//!   (Entrypoint, Cmd, User, WorkingDir, Env, labels, ports, volumes, stop
//!   signal), and the argv `docker create [--entrypoint E] IMAGE ARGS`
//!   gives the container (`docker inspect`'s `Path` and `Args`);
//! - the explanation of the Dockerfile (`kiln explain -f`) gives the same
//!   argv, entrypoint, cmd, user, workdir and env as that of the image
//!   BuildKit built (the classic builder differs on a Dockerfile that is
//!   only a FROM: its image is the base itself, without BuildKit's PATH),
//!   and the sources of the Dockerfile's lines are history entries of the
//!   same instructions.
//!
//! And each Compose case of `testdata/explain-runs/` is created by
//! `docker-compose` (Debian's) on that daemon: the container's `Path` and
//! `Args` are the case's `argv.json` and `kiln explain --compose`'s argv,
//! its User, WorkingDir and Env kiln's.
//!
//! One daemon serves every case (one test function: it starts it and
//! stops it when it ends).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_testsupport::docker::DockerDaemon;
use serde_json::Value;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// The Debian `docker.io` client: its `DOCKER_BUILDKIT=1` builds use the
/// daemon's own BuildKit (a newer client wants the buildx plugin, which
/// Debian's docker.io does not have).
const DEBIAN_DOCKER: &str = "/usr/bin/docker";

/// The busybox base every `FROM scratch` becomes.
const BASE: &str = "busybox:oracle";

/// The two builders of `docker build`.
const BUILDERS: [(&str, &str); 2] = [("buildkit", "1"), ("classic", "0")];

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
    dirs
}

fn name_of(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

/// `kiln ARGS` in `dir` with the store `root`: stdout, or the failure.
fn kiln(dir: &Path, root: &Path, args: &[String]) -> Result<String, String> {
    let out = Command::new(KILN)
        .current_dir(dir)
        .env("KILN_ROOT", root)
        .env("DOCKER_CONFIG", kiln_testsupport::empty_docker_config())
        .env("KILN_REGISTRY_CONFIG", "")
        .env_remove("KILN_LOG")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() || (out.status.code() == Some(1) && stdout.starts_with('{')) {
        // explain exits 1 (with its JSON) when docker run would fail for
        // lack of a command.
        Ok(stdout)
    } else {
        Err(format!(
            "kiln {args:?}: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The test's daemon, and a `DOCKER_CONFIG` for the docker clients (not
/// kiln's empty one: a BuildKit build writes `.buildNodeID` into it).
struct Docker {
    daemon: DockerDaemon,
    config: tempfile::TempDir,
}

/// Debian's docker client against `daemon`, with the test's environment.
fn docker_cli(daemon: &Docker) -> Command {
    let mut command = Command::new(DEBIAN_DOCKER);
    command
        .env("DOCKER_HOST", &daemon.daemon.host)
        .env("DOCKER_CONFIG", daemon.config.path())
        .stdin(std::process::Stdio::null());
    command
}

fn ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn inspect(daemon: &Docker, what: &str) -> Value {
    let text = ok(docker_cli(daemon).args(["inspect", what]));
    serde_json::from_str::<Value>(&text).unwrap()[0].clone()
}

/// `docker import` of the busybox root filesystem as `reference` with the
/// `--change` lines `changes`.
fn import(daemon: &Docker, tar: &Path, reference: &str, changes: &[&str]) {
    let mut command = docker_cli(daemon);
    command.arg("import");
    for change in changes {
        command.args(["--change", change]);
    }
    ok(command.arg(tar).arg(reference));
}

/// `--entrypoint` (if given) and the run arguments of an args file, when
/// the rest of it are build flags (`--target`, `--build-arg`).
struct Args {
    build: Vec<String>,
    entrypoint: Option<String>,
    run: Vec<String>,
}

fn parse_args(path: &Path) -> Option<Args> {
    let text = fs::read_to_string(path).unwrap();
    let words: Vec<String> = text.lines().map(str::to_string).collect();
    let mut args = Args {
        build: Vec::new(),
        entrypoint: None,
        run: Vec::new(),
    };
    let mut iter = words.into_iter();
    while let Some(word) = iter.next() {
        match word.as_str() {
            "--target" | "--build-arg" => {
                args.build.push(word);
                args.build.push(iter.next()?);
            }
            "--entrypoint" => args.entrypoint = Some(iter.next()?),
            "--" => {
                args.run = iter.collect();
                break;
            }
            // --platform, --offline: not a docker build of this machine.
            _ => return None,
        }
    }
    Some(args)
}

/// One image docker built from a case's Dockerfile with some build flags.
struct Built {
    case: String,
    /// The case's Dockerfile with its bases renamed, and its directory.
    context: PathBuf,
    args_file: PathBuf,
    args: Args,
    /// builder → tag.
    tags: Vec<(&'static str, String)>,
}

/// The case's Dockerfile with `FROM scratch` on the busybox base and the
/// case's own base image (`base:test`) under a name of its own.
fn rewrite_dockerfile(text: &str, own_base: &str) -> String {
    text.lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words
                .first()
                .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
            {
                line.replace(" scratch", &format!(" {BASE}"))
                    .replace(" base:test", &format!(" {own_base}"))
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Builds every case that builds here, with both builders; returns the
/// images and the references to save.
fn build_cases(daemon: &Docker, busybox: &Path, work: &Path) -> (Vec<Built>, Vec<String>) {
    let mut built = Vec::new();
    let mut references = vec![BASE.to_string()];
    for dir in case_dirs("explain") {
        let case = name_of(&dir);
        let dockerfile = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        if dockerfile.contains("registry.example.com") {
            continue; // a base only a registry (not here) has
        }
        let own_base = format!("oracle-base/{case}:test");
        if let Ok(spec) = fs::read_to_string(dir.join("image")) {
            let changes: Vec<&str> = spec.lines().skip(1).collect();
            import(daemon, busybox, &own_base, &changes);
            references.push(own_base.clone());
        }
        let context = work.join("contexts").join(&case);
        fs::create_dir_all(&context).unwrap();
        fs::write(
            context.join("Dockerfile"),
            rewrite_dockerfile(&dockerfile, &own_base),
        )
        .unwrap();
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "args"))
            .collect();
        files.sort();
        let mut seen: Vec<Vec<String>> = Vec::new();
        for args_file in files {
            let Some(args) = parse_args(&args_file) else {
                continue;
            };
            // Args files with the same build flags share their images.
            let build_id = match seen.iter().position(|b| *b == args.build) {
                Some(i) => i,
                None => {
                    seen.push(args.build.clone());
                    seen.len() - 1
                }
            };
            let mut tags = Vec::new();
            for (builder, buildkit) in BUILDERS {
                let tag = format!("oracle/{case}-{build_id}:{builder}");
                if !references.contains(&tag) {
                    ok(docker_cli(daemon)
                        .env("DOCKER_BUILDKIT", buildkit)
                        .args(["build", "-q", "-t", &tag])
                        .args(&args.build)
                        .arg(&context));
                    references.push(tag.clone());
                }
                tags.push((builder, tag));
            }
            built.push(Built {
                case: case.clone(),
                context: context.clone(),
                args_file,
                args,
                tags,
            });
        }
    }
    (built, references)
}

/// `docker save` of `references` → `kiln load` into `root`.
fn save_and_load(daemon: &Docker, references: &[String], work: &Path, root: &Path) {
    let archive = work.join("images.tar");
    ok(docker_cli(daemon)
        .args(["save", "-o"])
        .arg(&archive)
        .args(references));
    let loaded = kiln(
        work,
        root,
        &["load".into(), "-i".into(), archive.display().to_string()],
    );
    assert!(loaded.is_ok(), "{loaded:?}");
    fs::remove_file(&archive).unwrap();
}

/// An unset value, an empty string and an empty list are all "not set"
/// to docker (explain's JSON says null, "" or [] as the source had it).
fn normal(v: &Value) -> Value {
    match v {
        Value::Array(a) if a.is_empty() => Value::Null,
        Value::Object(o) if o.is_empty() => Value::Null,
        Value::String(s) if s.is_empty() => Value::Null,
        other => other.clone(),
    }
}

/// The keys of a docker config map (`ExposedPorts`, `Volumes`), as the
/// sorted list explain gives.
fn keys(v: &Value) -> Value {
    match v.as_object() {
        Some(o) => Value::Array(o.keys().map(|k| Value::String(k.clone())).collect()),
        None => Value::Null,
    }
}

/// What a container runs: `docker inspect`'s `[Path] + Args`.
fn argv_of(container: &Value) -> Value {
    let mut argv = vec![container["Path"].clone()];
    argv.extend(container["Args"].as_array().cloned().unwrap_or_default());
    Value::Array(argv)
}

/// `docker inspect` of a container `docker create [--entrypoint E] IMAGE
/// ARGS` made, or None when docker refused to create it ("no command
/// specified").
fn container(daemon: &Docker, image: &str, args: &Args) -> Result<Option<Value>, String> {
    let mut command = docker_cli(daemon);
    command.args(["create", "--network", "none"]);
    if let Some(e) = &args.entrypoint {
        command.arg(format!("--entrypoint={e}"));
    }
    let out = command.arg(image).args(&args.run).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return if stderr.contains("No command specified") {
            Ok(None)
        } else {
            Err(format!("docker create {image}: {stderr}"))
        };
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(Some(inspect(daemon, &id)))
}

/// The explain arguments after the subject: `--entrypoint`, `--format
/// json`, `-- ARGS`.
fn run_flags(args: &Args) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(e) = &args.entrypoint {
        flags.push(format!("--entrypoint={e}"));
    }
    flags.extend(["--format".to_string(), "json".to_string()]);
    if !args.run.is_empty() {
        flags.push("--".into());
        flags.extend(args.run.iter().cloned());
    }
    flags
}

/// One built image against docker: its explanation against `docker
/// inspect` of the image and of a container made from it, and against the
/// explanation of its Dockerfile. Returns the mismatches.
fn compare_built(
    daemon: &Docker,
    root: &Path,
    built: &Built,
    builder: &str,
    tag: &str,
) -> Vec<String> {
    let name = format!("{} ({builder})", built.args_file.display());
    let mut image_args = vec!["explain".to_string(), "--image".into(), tag.into()];
    image_args.extend(run_flags(&built.args));
    let explained: Value = match kiln(&built.context, root, &image_args) {
        Ok(json) => serde_json::from_str(&json).unwrap(),
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let mut failures = Vec::new();
    let config = &inspect(daemon, tag)["Config"];
    let runs_flags = built.args.entrypoint.is_some() || !built.args.run.is_empty();
    let pairs = [
        ("entrypoint", normal(&config["Entrypoint"])),
        ("cmd", normal(&config["Cmd"])),
        ("user", normal(&config["User"])),
        ("workdir", normal(&config["WorkingDir"])),
        ("env", normal(&config["Env"])),
        ("labels", normal(&config["Labels"])),
        ("stop_signal", normal(&config["StopSignal"])),
        ("exposed_ports", normal(&keys(&config["ExposedPorts"]))),
        ("volumes", normal(&keys(&config["Volumes"]))),
    ];
    // With run flags, explain's entrypoint and cmd are the container's
    // (compared below), not the image's.
    for (field, want) in pairs {
        if (field == "entrypoint" || field == "cmd") && runs_flags {
            continue;
        }
        let got = normal(&explained[field]);
        if got != want {
            failures.push(format!(
                "{name}: {field}: kiln explain --image says {got}, docker inspect {want}"
            ));
        }
    }
    match container(daemon, tag, &built.args) {
        Ok(Some(container)) => {
            let config = &container["Config"];
            for (field, want) in [
                ("argv", normal(&argv_of(&container))),
                ("entrypoint", normal(&config["Entrypoint"])),
                ("cmd", normal(&config["Cmd"])),
            ] {
                let got = normal(&explained[field]);
                if got != want {
                    failures.push(format!(
                        "{name}: {field}: kiln explain --image says {got}, docker create gives {want}"
                    ));
                }
            }
        }
        Ok(None) if explained["argv"].is_null() => {}
        Ok(None) => failures.push(format!(
            "{name}: argv: kiln explain --image says {}, docker create: no command specified",
            explained["argv"]
        )),
        Err(e) => failures.push(format!("{name}: {e}")),
    }
    // The Dockerfile's explanation follows BuildKit. The classic builder
    // differs where a Dockerfile is only a FROM: its image is the base as
    // it is, without the PATH BuildKit (and explain) gives it.
    if builder != "buildkit" {
        return failures;
    }
    let mut file_args = vec!["explain".to_string(), "-f".into(), "Dockerfile".into()];
    file_args.extend(built.args.build.iter().cloned());
    file_args.extend(run_flags(&built.args));
    match kiln(&built.context, root, &file_args) {
        Ok(json) => {
            let of_file: Value = serde_json::from_str(&json).unwrap();
            for field in ["argv", "entrypoint", "cmd", "user", "workdir", "env"] {
                // The Dockerfile's entrypoint and cmd stay the image's
                // under run flags; the image's become the container's.
                if (field == "entrypoint" || field == "cmd") && runs_flags {
                    continue;
                }
                let (want, got) = (normal(&of_file[field]), normal(&explained[field]));
                if want != got {
                    failures.push(format!(
                        "{name}: {field}: the Dockerfile's explain says {want}, the image's {got}"
                    ));
                }
            }
            if !runs_flags {
                failures.extend(compare_sources(&name, &of_file, &explained));
            }
        }
        Err(e) => failures.push(format!("{name}: {e}")),
    }
    failures
}

/// Debian's `docker-compose` on `daemon`: `-f FILE -p PROJECT ARGS`.
fn docker_compose(
    daemon: &Docker,
    file: &Path,
    project: &str,
    args: &[&str],
) -> std::process::Output {
    Command::new("docker-compose")
        .env("DOCKER_HOST", &daemon.daemon.host)
        .env("DOCKER_CONFIG", daemon.config.path())
        .arg("-f")
        .arg(file)
        .args(["-p", project])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// The sources of the Dockerfile's entrypoint, cmd, user, workdir and env
/// against the image's: a line is a history entry of the same instruction;
/// a base image's value is the base image's.
fn compare_sources(name: &str, of_file: &Value, of_image: &Value) -> Vec<String> {
    let mut failures = Vec::new();
    let keyword = |v: &Value| {
        v.as_str()
            .and_then(|t| t.split_whitespace().next())
            .map(str::to_ascii_uppercase)
    };
    let Some(sources) = of_file["sources"].as_object() else {
        return vec![format!("{name}: no sources")];
    };
    for (key, source) in sources {
        let compared = ["entrypoint", "cmd", "user", "workdir"].contains(&key.as_str())
            || key.starts_with("env.");
        if !compared {
            continue;
        }
        let got = &of_image["sources"][key];
        let want_from = match source["from"].as_str() {
            Some("line" | "onbuild" | "stage") => "history",
            other => other.unwrap_or(""),
        };
        // The images of this test share a store: one whose layers and
        // history this image's start with (another case's, or its own
        // --target stage's) is its base, and the entry that set the value
        // came with it.
        let from_other_image = got["from"] == "base_image"
            && got["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("oracle/"));
        let same = (got["from"] == want_from || from_other_image)
            && (source["from"] != "line"
                || keyword(&source["instruction"]) == keyword(&got["instruction"]));
        if !same {
            failures.push(format!(
                "{name}: source of {key}: the Dockerfile's {source}, the image's {got}"
            ));
        }
    }
    failures
}

/// The Compose cases: each service created by `docker-compose` on the
/// daemon, its container against the case's argv and kiln's explanation.
fn compare_compose(daemon: &Docker, busybox: &Path, work: &Path) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut count = 0;
    for dir in case_dirs("explain-runs") {
        let case = name_of(&dir);
        let compose = dir.join("compose.yaml");
        if !compose.exists() {
            continue;
        }
        count += 1;
        let spec = fs::read_to_string(dir.join("image")).unwrap();
        let mut lines = spec.lines();
        let reference = lines.next().unwrap();
        import(daemon, busybox, reference, &lines.collect::<Vec<_>>());
        // A store of its own: every case names the same reference.
        let root = work.join("compose-stores").join(&case);
        save_and_load(daemon, &[reference.to_string()], work, &root);
        let project = case.replace('-', "");
        // `create` (not `up --no-start`): it makes the containers and no
        // network (the daemon has no bridge to give one).
        let created = docker_compose(daemon, &compose, &project, &["create"]);
        if !created.status.success() {
            failures.push(format!(
                "{case}: docker-compose create: {}",
                String::from_utf8_lossy(&created.stderr)
            ));
            continue;
        }
        let listed = docker_compose(daemon, &compose, &project, &["ps", "-q"]);
        let id = String::from_utf8_lossy(&listed.stdout).trim().to_string();
        let container = inspect(daemon, id.trim());
        let docker_argv = argv_of(&container);
        let want: Value =
            serde_json::from_str(&fs::read_to_string(dir.join("argv.json")).unwrap()).unwrap();
        if docker_argv != want {
            failures.push(format!(
                "{case}: docker-compose's container runs {docker_argv}, argv.json says {want}"
            ));
        }
        let args = ["explain", "--compose", "compose.yaml", "--format", "json"].map(String::from);
        let explained: Value = match kiln(&dir, &root, &args) {
            Ok(json) => serde_json::from_str(&json).unwrap(),
            Err(e) => {
                failures.push(format!("{case}: {e}"));
                continue;
            }
        };
        let config = &container["Config"];
        for (field, theirs) in [
            ("argv", normal(&docker_argv)),
            ("user", normal(&config["User"])),
            ("workdir", normal(&config["WorkingDir"])),
            ("env", normal(&config["Env"])),
            ("stop_signal", normal(&config["StopSignal"])),
        ] {
            let ours = normal(&explained[field]);
            if ours != theirs {
                failures.push(format!(
                    "{case}: {field}: kiln explain --compose says {ours}, docker-compose's container {theirs}"
                ));
            }
        }
    }
    (count, failures)
}

#[test]
fn docker_is_the_oracle_for_explain() {
    kiln_testsupport::require_root!("dockerd needs root");
    for program in [DEBIAN_DOCKER, "/usr/bin/docker-compose"] {
        assert!(
            Path::new(program).is_file(),
            "{program} is missing: scripts/setup installs docker.io and docker-compose"
        );
    }
    let daemon = Docker {
        daemon: DockerDaemon::start().unwrap(),
        config: tempfile::tempdir().unwrap(),
    };
    let work = tempfile::tempdir().unwrap();
    let busybox = work.path().join("busybox.tar");
    kiln_testsupport::BusyboxRootfs::default()
        .write_tar(&busybox)
        .unwrap();
    import(&daemon, &busybox, BASE, &[]);

    let (built, references) = build_cases(&daemon, &busybox, work.path());
    let root = work.path().join("store");
    save_and_load(&daemon, &references, work.path(), &root);
    let mut failures = Vec::new();
    let mut compared = BTreeMap::new();
    for b in &built {
        for (builder, tag) in &b.tags {
            failures.extend(compare_built(&daemon, &root, b, builder, tag));
            *compared.entry(b.case.clone()).or_insert(0) += 1;
        }
    }
    eprintln!(
        "{} explanations (args files x builders) of {} cases compared with docker",
        compared.values().sum::<i32>(),
        compared.len()
    );
    assert!(compared.len() >= 15, "only {compared:?} compared");

    let (compose_cases, compose_failures) = compare_compose(&daemon, &busybox, work.path());
    eprintln!("{compose_cases} Compose cases created by docker-compose");
    assert!(compose_cases >= 10, "only {compose_cases} Compose cases");
    failures.extend(compose_failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
