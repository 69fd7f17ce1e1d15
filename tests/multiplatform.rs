//! Multi-platform images end to end, as root, against a real registry
//! (kiln-testsupport's `docker-registry`): the store keeping indexes
//! (pull of one platform and of all, `images`, `inspect`, `push`,
//! `save`/`load`, `run --platform`), foreign platforms run through
//! qemu-user-static (binfmt_misc), with skopeo and umoci as independent
//! readers.
//!
//! The base image is a two-platform index (linux/amd64, linux/arm64) made
//! from Debian's busybox-static packages
//! (`kiln_testsupport::multiarch`): its arm64 busybox is a real aarch64
//! program. kiln registers qemu-user-static's handler (with the F flag)
//! when none is registered, as root; a machine without an emulator is
//! played in a private mount namespace where binfmt_misc shows no handler
//! and no qemu-user-static configuration exists.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{kiln, kiln_ok, run_ok, text};
use kiln_testsupport::image::skopeo_raw_manifest;
use kiln_testsupport::multiarch::{push_busybox_index, push_busybox_index_of, MultiArchImage};
use kiln_testsupport::RegistryServer;
use serde_json::Value;

/// A fresh store and the registry it talks to.
struct Fixture {
    dir: tempfile::TempDir,
    registry: RegistryServer,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            registry: RegistryServer::start_plain().unwrap(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `REGISTRY/name`.
    fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.registry.host)
    }

    /// `kiln ARGS…` with the registry allowed over plain HTTP where the
    /// command takes the flag.
    fn kiln(&self, root: &Path, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        if matches!(args[0], "pull" | "push" | "build") {
            all.insert(1, "--insecure-registry");
            all.insert(2, &self.registry.host);
        }
        kiln(root, &all)
    }

    fn ok(&self, args: &[&str]) -> String {
        ok(&self.kiln(&self.root(), args))
    }

    /// The raw manifest or index the registry has for `reference`.
    fn raw(&self, reference: &str) -> Value {
        let bytes = skopeo_raw_manifest(&format!("docker://{reference}"), None, None).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kiln failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "kiln succeeded:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// `kiln images --format json`, the row named `name`.
fn listed(root: &Path, name: &str) -> Value {
    let list: Value =
        serde_json::from_str(&kiln_ok(root, &["images", "--format", "json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|row| row["Name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))
        .clone()
}

/// (platform, present) of each entry `images` lists for `name`.
fn platforms(root: &Path, name: &str) -> Vec<(String, bool)> {
    listed(root, name)["Platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["Platform"].as_str().unwrap_or("").to_string(),
                p["Present"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The `kiln images` table line of `repository`.
fn table_row(root: &Path, repository: &str) -> String {
    let table = kiln_ok(root, &["images"]);
    assert!(
        table.lines().next().unwrap().ends_with("PLATFORMS"),
        "{table}"
    );
    table
        .lines()
        .find(|l| l.starts_with(repository))
        .unwrap_or_else(|| panic!("{repository} not in {table}"))
        .to_string()
}

fn pushed_base(fixture: &Fixture) -> MultiArchImage {
    push_busybox_index(&fixture.registry, "base/busybox:1").unwrap()
}

/// A pull of one platform keeps the index with that platform's image; a
/// pull of every platform fills it in; `images` lists the image once with
/// its platforms; a push of a partly pulled index is refused naming what
/// is missing, and of the whole one sends the same index.
#[test]
fn pull_keeps_the_index_and_push_sends_it_whole() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let root = fixture.root();

    fixture.ok(&["pull", "--platform", "linux/arm64", &base.reference]);
    let row = listed(&root, &base.reference);
    assert_eq!(row["Digest"], base.digest.as_str(), "{row}");
    assert_eq!(row["MediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(
        platforms(&root, &base.reference),
        [
            ("linux/amd64".to_string(), false),
            ("linux/arm64".to_string(), true)
        ]
    );
    let line = table_row(&root, &fixture.reference("base/busybox"));
    assert!(line.ends_with("(linux/amd64),linux/arm64"), "{line}");
    // The image id of a multi-platform image is its index's digest.
    assert!(
        line.contains(&base.digest["sha256:".len()..][..12]),
        "{line}"
    );

    // Only the arm64 image is here: inspect shows it; the amd64 one is
    // named as missing.
    let inspected: Value =
        serde_json::from_str(&kiln_ok(&root, &["inspect", &base.reference])).unwrap();
    assert_eq!(inspected[0]["Architecture"], "arm64");
    assert_eq!(inspected[0]["Index"]["Digest"], base.digest.as_str());
    let err = failed(&kiln(
        &root,
        &["inspect", "--platform", "linux/amd64", &base.reference],
    ));
    assert!(
        err.contains("platform linux/amd64 is not in the store (it holds: linux/arm64)"),
        "{err}"
    );
    let err = failed(&kiln(
        &root,
        &[
            "run",
            "--pull",
            "never",
            "--platform",
            "linux/amd64",
            &base.reference,
            "true",
        ],
    ));
    assert!(
        err.contains("platform linux/amd64 is not in the store"),
        "{err}"
    );
    let copy = fixture.reference("copy/busybox:1");
    kiln_ok(&root, &["tag", &base.reference, &copy]);
    let err = failed(&fixture.kiln(&root, &["push", &copy]));
    assert!(
        err.contains(&format!(
            "platform linux/amd64 (manifest {}) is not in the store",
            base.platform("linux/amd64").digest
        )),
        "{err}"
    );

    // `run --platform` of a platform the store lacks pulls it (--pull
    // missing, the default), as docker run does, and keeps the other.
    let run = kiln(
        &root,
        &["run", "--platform", "linux/amd64", &base.reference, "true"],
    );
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        text(&run).contains(&format!(
            "Unable to find image '{}' locally",
            base.reference
        )),
        "{}",
        text(&run)
    );
    assert_eq!(
        platforms(&root, &base.reference),
        [
            ("linux/amd64".to_string(), true),
            ("linux/arm64".to_string(), true)
        ]
    );

    // Every platform: the same index, both images held.
    let out = fixture.ok(&["pull", "--platform", "all", &base.reference]);
    assert!(out.contains(&base.reference), "{out}");
    assert_eq!(
        platforms(&root, &base.reference),
        [
            ("linux/amd64".to_string(), true),
            ("linux/arm64".to_string(), true)
        ]
    );
    let line = table_row(&root, &fixture.reference("base/busybox"));
    assert!(line.ends_with(" linux/amd64,linux/arm64"), "{line}");
    assert_eq!(
        kiln_ok(&root, &["images", "-q"]).lines().count(),
        2,
        "one line per tag, not per platform"
    );
    let amd64: Value = serde_json::from_str(&kiln_ok(
        &root,
        &["inspect", "--platform", "linux/amd64", &copy],
    ))
    .unwrap();
    assert_eq!(amd64[0]["ImageConfig"]["architecture"], "amd64");
    assert_eq!(
        amd64[0]["Digest"],
        base.platform("linux/amd64").digest.as_str()
    );
    assert_eq!(amd64[0]["Platforms"].as_array().unwrap().len(), 2);
    // history and layers read the platform asked for (each platform's
    // image has its own history entry, `busybox-static ARCH`).
    for (platform, arch) in [("linux/amd64", "amd64"), ("linux/arm64", "arm64")] {
        let history = kiln_ok(
            &root,
            &["history", "--no-trunc", "--platform", platform, &copy],
        );
        assert!(
            history.contains(&format!("busybox-static {arch}")),
            "{platform}: {history}"
        );
        let layers: Value = serde_json::from_str(&kiln_ok(
            &root,
            &["layers", "--platform", platform, "--format", "json", &copy],
        ))
        .unwrap();
        assert_eq!(
            layers["digest"],
            base.platform(platform).digest.as_str(),
            "{platform}: {layers}"
        );
        assert_eq!(
            layers["layers"][0]["created_by"],
            format!("busybox-static {arch}"),
            "{platform}: {layers}"
        );
        let explained: Value = serde_json::from_str(&kiln_ok(
            &root,
            &[
                "explain",
                "--image",
                &copy,
                "--platform",
                platform,
                "--format",
                "json",
            ],
        ))
        .unwrap();
        assert_eq!(
            explained["subject"]["digest"],
            base.platform(platform).digest.as_str(),
            "{platform}: {explained}"
        );
        // The same image named by a pod and by a compose file.
        let pod = fixture.dir.path().join("pod.yaml");
        let compose = fixture.dir.path().join("compose.yaml");
        std::fs::write(
            &pod,
            format!("kind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: a\n    image: {copy}\n"),
        )
        .unwrap();
        std::fs::write(&compose, format!("services:\n  a:\n    image: {copy}\n")).unwrap();
        for (flag, file) in [("--pod", &pod), ("--compose", &compose)] {
            let file = file.to_str().unwrap();
            let args = [
                "explain",
                flag,
                file,
                "--platform",
                platform,
                "--format",
                "json",
            ];
            let explained: Value = serde_json::from_str(&kiln_ok(&root, &args)).unwrap();
            assert_eq!(
                explained["subject"]["digest"],
                base.platform(platform).digest.as_str(),
                "{flag} {platform}: {explained}"
            );
        }
    }
    let machine = kiln_ok(
        &root,
        &["run", "--platform", "linux/amd64", &copy, "uname", "-m"],
    );
    assert_eq!(machine.trim(), "x86_64");

    // The push sends both manifests, then the index: the registry has the
    // same index, byte for byte (the layers were compressed already).
    let out = fixture.ok(&["push", &copy]);
    assert!(out.contains(&base.digest), "{out}");
    let raw = fixture.raw(&copy);
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2, "{raw}");
    for manifest in &base.manifests {
        let by_digest = format!("{}@{}", fixture.reference("copy/busybox"), manifest.digest);
        assert_eq!(
            fixture.raw(&by_digest)["config"]["digest"],
            manifest.config_digest.as_str()
        );
    }
}

/// `save` writes the index and every platform held (`--platform` one);
/// `load` brings the index back with its images; skopeo reads the saved
/// layout; an archive without one platform's image loads the rest.
#[test]
fn save_and_load_keep_the_index() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let root = fixture.root();
    fixture.ok(&["pull", "--all-platforms", &base.reference]);

    let saved = fixture.path("saved");
    kiln_ok(
        &root,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            saved.to_str().unwrap(),
            &base.reference,
        ],
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(saved.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        base.digest.as_str(),
        "{index}"
    );
    // skopeo copies the whole saved index, platform by platform.
    let copied = fixture.path("copied");
    run_ok(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--all",
        &format!("oci:{}:1", saved.display()),
        &format!("oci:{}:1", copied.display()),
    ]));
    assert!(copied
        .join("blobs/sha256")
        .join(&base.digest[7..])
        .is_file());

    let other = fixture.path("other-store");
    let out = kiln_ok(&other, &["load", "-i", saved.to_str().unwrap()]);
    assert!(out.contains("Loaded image: "), "{out}");
    assert_eq!(
        platforms(&other, &base.reference),
        [
            ("linux/amd64".to_string(), true),
            ("linux/arm64".to_string(), true)
        ]
    );

    // One platform only: the layout names that manifest.
    let single = fixture.path("single.tar");
    kiln_ok(
        &root,
        &[
            "save",
            "--format",
            "oci",
            "--platform",
            "linux/arm64",
            "-o",
            single.to_str().unwrap(),
            &base.reference,
        ],
    );
    let third = fixture.path("third-store");
    kiln_ok(&third, &["load", "-i", single.to_str().unwrap()]);
    let row = listed(&third, &base.reference);
    assert_eq!(
        row["Digest"],
        base.platform("linux/arm64").digest.as_str(),
        "{row}"
    );

    // An index whose amd64 image is not in the archive: loaded with the
    // arm64 one, the amd64 entry listed as missing.
    let partial = fixture.path("partial");
    run_ok(Command::new("cp").arg("-a").arg(&saved).arg(&partial));
    let amd64 = base.platform("linux/amd64");
    std::fs::remove_file(partial.join("blobs/sha256").join(&amd64.digest[7..])).unwrap();
    let fourth = fixture.path("fourth-store");
    kiln_ok(&fourth, &["load", "-i", partial.to_str().unwrap()]);
    assert_eq!(
        platforms(&fourth, &base.reference),
        [
            ("linux/amd64".to_string(), false),
            ("linux/arm64".to_string(), true)
        ]
    );
}

/// `kiln ARGS…` in a private mount namespace where binfmt_misc holds no
/// handler and no binfmt.d configuration exists: a machine without
/// qemu-user-static, as kiln sees it (the host's registrations untouched).
fn kiln_without_emulators(fixture: &Fixture, args: &[&str]) -> Output {
    let script = "mount -t tmpfs none /proc/sys/fs/binfmt_misc && \
                  echo enabled > /proc/sys/fs/binfmt_misc/status && \
                  for d in /usr/lib/binfmt.d /etc/binfmt.d /run/binfmt.d; do \
                    [ -d $d ] && mount -t tmpfs none $d; \
                  done; exec \"$@\"";
    let command = common::kiln_command();
    let program = command.get_program().to_owned();
    let envs: Vec<_> = command
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let mut unshare = Command::new("unshare");
    unshare
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(program)
        .arg("--root")
        .arg(fixture.root())
        .args(args)
        .env("KILN_PROGRESS", "plain");
    for (key, value) in envs {
        match value {
            Some(v) => unshare.env(key, v),
            None => unshare.env_remove(key),
        };
    }
    unshare.output().unwrap()
}

/// `kiln run --platform linux/arm64` runs the aarch64 busybox through
/// qemu-user-static (kiln registers the handler when none is); without an
/// emulator the run is refused before anything starts, naming the
/// platform and what to install.
#[test]
fn run_of_a_foreign_platform_goes_through_the_emulator() {
    kiln_testsupport::require_root!("a mount namespace that hides the host's binfmt_misc");
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let root = fixture.root();
    fixture.ok(&["pull", "--platform", "all", &base.reference]);
    let machine = kiln_ok(
        &root,
        &[
            "run",
            "--platform",
            "linux/arm64",
            &base.reference,
            "uname",
            "-m",
        ],
    );
    assert_eq!(machine.trim(), "aarch64");
    let handler = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap();
    assert!(handler.starts_with("enabled"), "{handler}");
    assert!(
        handler
            .lines()
            .any(|l| l.starts_with("flags:") && l.contains('F')),
        "{handler}"
    );

    let out = kiln_without_emulators(
        &fixture,
        &[
            "run",
            "--platform",
            "linux/arm64",
            &base.reference,
            "uname",
            "-m",
        ],
    );
    let err = failed(&out);
    assert!(
        err.contains(
            "platform linux/arm64: its programs need an emulator (qemu-aarch64 through \
             binfmt_misc) and none is registered: install the Debian package qemu-user-static"
        ),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing ran");
}

/// The statuses (`done`, `cached`) of the steps whose instruction starts
/// with `prefix`, from the progress events (`--progress json`).
fn step_statuses(stderr: &str, prefix: &str) -> Vec<String> {
    let events: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let ids: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["event"] == "step_started"
                && e["instruction"]
                    .as_str()
                    .is_some_and(|i| i.starts_with(prefix))
        })
        .map(|e| &e["id"])
        .collect();
    events
        .iter()
        .filter(|e| e["event"] == "step_done" && ids.contains(&&e["id"]))
        .map(|e| e["status"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A `--cache-from` that is an index of images built with inline caches
/// (one CI job per platform, assembled with `kiln manifest create`; or one
/// build for both platforms with `--cache-to type=inline`) gives a build
/// for both platforms each platform's steps: no RUN runs again.
#[test]
fn an_index_of_inline_caches_serves_every_platform_of_a_build() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN uname -m > /machine\n", base.reference),
    )]);
    let ctx = ctx.path().to_str().unwrap();
    let mut jobs = Vec::new();
    for arch in ["amd64", "arm64"] {
        let target = fixture.reference(&format!("app/cached:{arch}"));
        let args = [
            "build",
            "--platform",
            &format!("linux/{arch}"),
            "--cache-to",
            "type=inline",
            "-t",
            &target,
            "--push",
            ctx,
        ];
        ok(&fixture.kiln(&fixture.path(&format!("job-{arch}")), &args));
        jobs.push(target);
    }
    let assembler = fixture.path("assembler");
    let index = fixture.reference("app/cached:multi");
    ok(&fixture.kiln(
        &assembler,
        &["manifest", "create", &index, &jobs[0], &jobs[1]],
    ));
    ok(&fixture.kiln(&assembler, &["manifest", "push", &index]));

    // One build for both platforms writes each one's inline cache into
    // its image, as BuildKit does: the same index of caches.
    let one_shot = fixture.reference("app/cached:one-shot");
    let args = [
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "--cache-to",
        "type=inline",
        "-t",
        &one_shot,
        "--push",
        ctx,
    ];
    ok(&fixture.kiln(&fixture.path("one-shot"), &args));

    for (n, cache) in [&index, &one_shot].into_iter().enumerate() {
        let out = fixture.kiln(
            &fixture.path(&format!("runner-{n}")),
            &[
                "build",
                "--platform",
                "linux/amd64,linux/arm64",
                "--cache-from",
                cache,
                "--progress",
                "json",
                ctx,
            ],
        );
        ok(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            step_statuses(&stderr, "RUN"),
            ["cached", "cached"],
            "{cache}: {stderr}"
        );
    }
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

/// A build for a platform without an emulator fails before any step runs
/// (not even the build platform's), naming the platform and the emulator.
#[test]
fn a_platform_without_an_emulator_fails_before_any_step() {
    kiln_testsupport::require_root!("a mount namespace that hides the host's binfmt_misc");
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let dockerfile = format!(
        "FROM --platform=$BUILDPLATFORM {base} AS build\n\
         RUN echo built > /built\n\
         FROM {base}\n\
         COPY --from=build /built /built\n\
         RUN uname -m > /machine\n",
        base = base.reference
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let out = kiln_without_emulators(
        &fixture,
        &[
            "build",
            "--insecure-registry",
            &fixture.registry.host,
            "--platform",
            "linux/arm64",
            ctx.path().to_str().unwrap(),
        ],
    );
    let err = failed(&out);
    assert!(
        err.contains(
            "error: platform linux/arm64: its programs need an emulator (qemu-aarch64 through \
             binfmt_misc) and none is registered: install the Debian package qemu-user-static"
        ),
        "{err}"
    );
    assert!(!err.contains("RUN echo built"), "a step ran:\n{err}");
    assert!(!err.contains("FROM "), "a stage started:\n{err}");
}

/// The progress events (`--progress json`) of the steps started, as
/// (stage, instruction).
fn steps_started(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "step_started")
        .map(|e| {
            (
                e["stage"].as_str().unwrap_or("").to_string(),
                e["instruction"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The build: a `FROM --platform=$BUILDPLATFORM` stage whose
/// target-independent step runs once for both targets and which writes
/// `$TARGETARCH` (natively, per target), and a per-target stage whose RUN
/// says `uname -m` (arm64's under qemu). `--push` sends the index; skopeo
/// and umoci read it; `kiln run --platform` runs each platform's image.
#[test]
fn one_build_two_platforms_one_index() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let root = fixture.root();
    let dockerfile = format!(
        "FROM --platform=$BUILDPLATFORM {base} AS build\n\
         RUN echo compiled once > /compiled\n\
         ARG TARGETARCH\n\
         ARG BUILDARCH\n\
         RUN echo \"$TARGETARCH\" > /arch && echo \"$BUILDARCH\" > /built-on && uname -m > /build-machine\n\
         FROM {base}\n\
         ARG TARGETPLATFORM\n\
         COPY --from=build /compiled /arch /built-on /build-machine /out/\n\
         RUN uname -m > /out/machine && echo \"$TARGETPLATFORM\" > /out/platform\n",
        base = base.reference
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let target = fixture.reference("app/multi:1");
    let out = fixture.kiln(
        &root,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
            "--progress",
            "json",
            "-t",
            &target,
            "--push",
            ctx.path().to_str().unwrap(),
        ],
    );
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let started = steps_started(&stderr);
    let count = |stage: &str, prefix: &str| {
        started
            .iter()
            .filter(|(s, i)| s == stage && i.starts_with(prefix))
            .count()
    };
    // The build stage's FROM and its first RUN ran once for both targets;
    // the RUN that reads TARGETARCH once per target, natively.
    assert_eq!(count("linux/amd64 build", "FROM "), 1, "{started:?}");
    assert_eq!(
        count("linux/amd64 build", "RUN echo compiled once"),
        1,
        "{started:?}"
    );
    assert_eq!(
        count("linux/amd64 build", "RUN echo \"$TARGETARCH\""),
        2,
        "{started:?}"
    );
    assert_eq!(
        count("linux/amd64 stage-1", "RUN uname -m"),
        1,
        "{started:?}"
    );
    assert_eq!(
        count("linux/arm64 stage-1", "RUN uname -m"),
        1,
        "{started:?}"
    );

    // The registry has the index and both manifests.
    let raw = fixture.raw(&target);
    assert_eq!(
        raw["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{raw}"
    );
    let entries = raw["manifests"].as_array().unwrap();
    let platforms: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["platform"]["os"].as_str().unwrap(),
                e["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for entry in entries {
        let by_digest = format!(
            "{}@{}",
            fixture.reference("app/multi"),
            entry["digest"].as_str().unwrap()
        );
        let manifest = fixture.raw(&by_digest);
        assert_eq!(
            manifest["layers"].as_array().unwrap().len(),
            3,
            "{manifest}"
        );
    }

    // Each platform's image, from the store.
    let cat = |platform: &str, file: &str| {
        kiln_ok(
            &root,
            &["run", "--platform", platform, &target, "cat", file],
        )
        .trim()
        .to_string()
    };
    assert_eq!(cat("linux/arm64", "/out/machine"), "aarch64");
    assert_eq!(cat("linux/arm64", "/out/arch"), "arm64");
    assert_eq!(cat("linux/arm64", "/out/platform"), "linux/arm64");
    assert_eq!(cat("linux/arm64", "/out/build-machine"), "x86_64");
    assert_eq!(cat("linux/arm64", "/out/built-on"), "amd64");
    assert_eq!(cat("linux/amd64", "/out/machine"), "x86_64");
    assert_eq!(cat("linux/amd64", "/out/arch"), "amd64");
    assert_eq!(cat("linux/amd64", "/out/compiled"), "compiled once");

    // skopeo copies the whole index into an OCI layout; umoci unpacks
    // each platform's image from it.
    let layout = fixture.path("layout");
    run_ok(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{target}"),
        &format!("oci:{}:multi", layout.display()),
    ]));
    umoci_reads_each_platform(&layout, "multi", entries);

    // With --no-cache every step runs again, a shared one still once.
    let again = fixture.kiln(
        &root,
        &[
            "build",
            "--no-cache",
            "--platform",
            "linux/amd64,linux/arm64",
            "--progress",
            "json",
            "-t",
            &target,
            ctx.path().to_str().unwrap(),
        ],
    );
    ok(&again);
    let started = steps_started(&String::from_utf8_lossy(&again.stderr));
    let shared: Vec<_> = started
        .iter()
        .filter(|(_, i)| i.starts_with("RUN echo compiled once"))
        .collect();
    assert_eq!(shared.len(), 1, "{started:?}");
    let runs = started
        .iter()
        .filter(|(_, i)| i.starts_with("RUN "))
        .count();
    assert_eq!(runs, 5, "{started:?}");

    // A fresh store pulls it and runs the arm64 image.
    let other = fixture.path("other-store");
    ok(&fixture.kiln(&other, &["pull", "--platform", "linux/arm64", &target]));
    let machine = kiln_ok(
        &other,
        &[
            "run",
            "--platform",
            "linux/arm64",
            &target,
            "cat",
            "/out/machine",
        ],
    );
    assert_eq!(machine.trim(), "aarch64");
}

/// Tags each of `entries` (index entries) in the OCI layout under its
/// architecture, after checking that `tag` names their index: umoci reads
/// a tag that names a manifest.
fn tag_each_platform(layout: &Path, tag: &str, entries: &[Value]) {
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let top = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()
        .clone();
    assert_eq!(top["mediaType"], "application/vnd.oci.image.index.v1+json");
    for entry in entries {
        let arch = entry["platform"]["architecture"]
            .as_str()
            .unwrap()
            .to_string();
        let mut tagged = entry.clone();
        tagged.as_object_mut().unwrap().remove("platform");
        tagged["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": arch});
        index["manifests"].as_array_mut().unwrap().push(tagged);
    }
    std::fs::write(&index_path, index.to_string()).unwrap();
}

/// umoci unpacks the image of each of `entries` (index entries) from the
/// OCI layout ([`tag_each_platform`]); `/out/machine` says its machine.
fn umoci_reads_each_platform(layout: &Path, tag: &str, entries: &[Value]) {
    tag_each_platform(layout, tag, entries);
    for entry in entries {
        let arch = entry["platform"]["architecture"].as_str().unwrap();
        let bundle = layout.parent().unwrap().join(format!("bundle-{arch}"));
        run_ok(
            Command::new("umoci")
                .args(["unpack", "--rootless", "--image"])
                .arg(format!("{}:{arch}", layout.display()))
                .arg(&bundle),
        );
        let machine = std::fs::read_to_string(bundle.join("rootfs/out/machine")).unwrap();
        let want = if arch == "arm64" { "aarch64" } else { "x86_64" };
        assert_eq!(machine.trim(), want, "{arch}");
    }
}

/// `--output` with several platforms: type=oci writes the index (umoci
/// and skopeo read it), type=local and type=tar one root filesystem per
/// platform (`linux_amd64/`, `linux_arm64/`, as buildx), type=docker is
/// refused before anything runs; the metadata file and iidfile name the
/// index (an iidfile is refused beside type=local or tar, as buildx
/// refuses it), and repeated `--platform` flags are the same as a list.
/// With Docker media types the index is a Docker manifest list.
#[test]
fn outputs_of_a_two_platform_build() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let root = fixture.root();
    let dockerfile = format!(
        "FROM {base}\nARG TARGETARCH\nRUN echo \"$TARGETARCH\" > /arch\n",
        base = base.reference
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let (oci, local, tar) = (
        fixture.path("oci"),
        fixture.path("local"),
        fixture.path("rootfs.tar"),
    );
    let (meta, iid) = (fixture.path("meta.json"), fixture.path("iid"));
    let outputs = [
        format!("type=oci,tar=false,dest={}", oci.display()),
        format!("type=local,dest={}", local.display()),
        format!("type=tar,dest={}", tar.display()),
    ];
    ok(&fixture.kiln(
        &root,
        &[
            "build",
            "--platform",
            "linux/amd64",
            "--platform",
            "linux/arm64",
            "-t",
            "app:out",
            "-o",
            &outputs[0],
            "-o",
            &outputs[1],
            "-o",
            &outputs[2],
            "--metadata-file",
            meta.to_str().unwrap(),
            ctx.path().to_str().unwrap(),
        ],
    ));
    // With SOURCE_DATE_EPOCH, each platform's directory is dated then too
    // (BuildKit's local and tar exporters date it), as are its files.
    let dated = fixture.path("dated");
    ok(&fixture.kiln(
        &root,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1000000000",
            "-o",
            &format!("type=local,dest={}", dated.display()),
            ctx.path().to_str().unwrap(),
        ],
    ));
    for path in ["linux_amd64", "linux_arm64", "linux_arm64/arch"] {
        let meta = std::fs::metadata(dated.join(path)).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::mtime(&meta),
            1_000_000_000,
            "{path}"
        );
    }
    // --iidfile beside a root filesystem output is refused, as buildx
    // refuses it; with the index alone it names the index (below).
    for output in &outputs[1..] {
        let err = failed(&fixture.kiln(
            &root,
            &[
                "build",
                "--platform",
                "linux/amd64,linux/arm64",
                "-o",
                output,
                "--iidfile",
                iid.to_str().unwrap(),
                ctx.path().to_str().unwrap(),
            ],
        ));
        assert!(
            err.contains("--iidfile: local and tar exporters are incompatible with image ID file"),
            "{err}"
        );
        assert!(!iid.exists());
    }
    ok(&fixture.kiln(
        &root,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "app:out",
            "--iidfile",
            iid.to_str().unwrap(),
            ctx.path().to_str().unwrap(),
        ],
    ));
    assert_eq!(
        std::fs::read_to_string(local.join("linux_amd64/arch")).unwrap(),
        "amd64\n"
    );
    assert_eq!(
        std::fs::read_to_string(local.join("linux_arm64/arch")).unwrap(),
        "arm64\n"
    );
    let listing = run_ok(Command::new("tar").arg("-tf").arg(&tar));
    assert!(
        listing.lines().any(|l| l == "linux_arm64/arch"),
        "{listing}"
    );
    assert!(
        listing.lines().any(|l| l == "linux_amd64/arch"),
        "{listing}"
    );

    let meta: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let digest = meta["containerimage.digest"].as_str().unwrap().to_string();
    assert_eq!(
        meta["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert!(meta.get("containerimage.config.digest").is_none(), "{meta}");
    let layout_index: Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        layout_index["manifests"][0]["digest"],
        digest.as_str(),
        "{layout_index}"
    );
    let stored = listed(&root, "docker.io/library/app:out");
    assert_eq!(
        std::fs::read_to_string(&iid).unwrap(),
        stored["Digest"].as_str().unwrap()
    );
    assert_eq!(
        platforms(&root, "docker.io/library/app:out"),
        [
            ("linux/amd64".to_string(), true),
            ("linux/arm64".to_string(), true)
        ]
    );
    let raw_index: Value = serde_json::from_slice(
        &std::fs::read(oci.join("blobs/sha256").join(&digest[7..])).unwrap(),
    )
    .unwrap();
    let entries = raw_index["manifests"].as_array().unwrap().clone();
    run_ok(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--all",
        &format!("oci:{}:out", oci.display()),
        &format!("oci:{}:out", fixture.path("copied").display()),
    ]));
    umoci_reads_arch_files(&oci, "out", &entries);

    // type=docker cannot hold two platforms: refused before any step.
    let docker = format!("type=docker,dest={}", fixture.path("docker.tar").display());
    let err = failed(&fixture.kiln(
        &root,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &docker,
            ctx.path().to_str().unwrap(),
        ],
    ));
    assert!(
        err.contains("type=docker: a docker-archive holds one platform's image, and this build makes 2 (linux/amd64, linux/arm64); use type=oci"),
        "{err}"
    );
    assert!(!err.contains("RUN echo"), "{err}");

    // Docker media types: a manifest list over Docker manifests.
    ok(&fixture.kiln(
        &root,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "--docker-mediatypes",
            "-t",
            "app:docker",
            ctx.path().to_str().unwrap(),
        ],
    ));
    let row = listed(&root, "docker.io/library/app:docker");
    assert_eq!(
        row["MediaType"], "application/vnd.docker.distribution.manifest.list.v2+json",
        "{row}"
    );
    for entry in row["Platforms"].as_array().unwrap() {
        assert_eq!(
            entry["MediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
    }
}

/// umoci unpacks each entry's image from the layout (each tagged on its
/// own: umoci reads a tag that names a manifest); `/arch` says its
/// platform.
fn umoci_reads_arch_files(layout: &Path, tag: &str, entries: &[Value]) {
    tag_each_platform(layout, tag, entries);
    for entry in entries {
        let arch = entry["platform"]["architecture"].as_str().unwrap();
        let bundle = layout.parent().unwrap().join(format!("arch-bundle-{arch}"));
        run_ok(
            Command::new("umoci")
                .args(["unpack", "--rootless", "--image"])
                .arg(format!("{}:{arch}", layout.display()))
                .arg(&bundle),
        );
        let written = std::fs::read_to_string(bundle.join("rootfs/arch")).unwrap();
        assert_eq!(written.trim(), arch);
    }
}

/// The acceptance Dockerfile's build stage and per-target stage.
fn acceptance_dockerfile(base: &str) -> String {
    format!(
        "FROM --platform=$BUILDPLATFORM {base} AS build\n\
         RUN echo compiled once > /compiled\n\
         ARG TARGETARCH\n\
         RUN echo \"$TARGETARCH\" > /arch\n\
         FROM {base}\n\
         COPY --from=build /compiled /arch /out/\n\
         RUN uname -m > /out/machine\n"
    )
}

/// `kiln manifest create` over two single-platform images pushed by two
/// separate builds (separate stores, as two CI jobs) gives the index a
/// one-shot build gives: the same entries, the same manifest digests, the
/// same index (SOURCE_DATE_EPOCH and `rewrite-timestamp=true` set). The
/// assembling store downloads no
/// layer: a push to another repository of the registry mounts them, a
/// push to another registry copies them through the store.
#[test]
fn manifest_create_gives_the_index_a_one_shot_build_gives() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let ctx = context(&[("Dockerfile", &acceptance_dockerfile(&base.reference))]);
    let build = |store: &str, platforms: &str, tag: &str| {
        let target = fixture.reference(tag);
        let args = [
            "build",
            "--platform",
            platforms,
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
            // Its RUN's files dated then too, as the other jobs' are.
            "--output",
            "type=image,rewrite-timestamp=true",
            "-t",
            &target,
            "--push",
            ctx.path().to_str().unwrap(),
        ];
        ok(&fixture.kiln(&fixture.path(store), &args));
        target
    };
    let one_shot = build("one-shot", "linux/amd64,linux/arm64", "app/one:shot");
    let amd64 = build("job-amd64", "linux/amd64", "app/ci:amd64");
    let arm64 = build("job-arm64", "linux/arm64", "app/ci:arm64");
    // `manifest inspect` in the store that built and pushed it shows what
    // the registry has (its layers compressed on the way), as docker's.
    let inspected: Value = serde_json::from_str(&kiln_ok(
        &fixture.path("job-amd64"),
        &["manifest", "inspect", "--raw", &amd64],
    ))
    .unwrap();
    assert_eq!(inspected, fixture.raw(&amd64));

    // An image of one platform is pulled whatever --platform asks, with
    // Docker's warning when it is another's.
    let out = fixture.kiln(
        &fixture.path("warned"),
        &["pull", "--platform", "linux/arm64", &amd64],
    );
    let said = format!("{}{}", ok(&out), String::from_utf8_lossy(&out.stderr));
    assert!(
        said.contains(&format!(
            "WARNING: image {amd64} was found but does not match the specified platform: \
             wanted linux/arm64, actual: linux/amd64"
        )),
        "{said}"
    );
    // DOCKER_DEFAULT_PLATFORM is pull's default --platform, as docker
    // pull's.
    let out = common::kiln_command()
        .arg("--root")
        .arg(fixture.path("warned-by-env"))
        .args([
            "pull",
            "--insecure-registry",
            &fixture.registry.host,
            &amd64,
        ])
        .env("DOCKER_DEFAULT_PLATFORM", "linux/arm64")
        .output()
        .unwrap();
    let said = format!("{}{}", ok(&out), String::from_utf8_lossy(&out.stderr));
    assert!(
        said.contains("wanted linux/arm64, actual: linux/amd64"),
        "{said}"
    );
    let assembler = fixture.path("assembler");
    let assembled = fixture.reference("app/ci:multi");
    let out = ok(&fixture.kiln(
        &assembler,
        &["manifest", "create", &assembled, &amd64, &arm64],
    ));
    let digest = out.trim().to_string();
    // Nothing of the images' layers came down.
    let row = listed(&assembler, &assembled);
    assert_eq!(row["Digest"], digest.as_str());
    assert_eq!(
        platforms(&assembler, &assembled),
        [
            ("linux/amd64".to_string(), false),
            ("linux/arm64".to_string(), false)
        ]
    );
    // The pushed index's digest alone on stdout, as docker manifest push.
    let pushed = ok(&fixture.kiln(&assembler, &["manifest", "push", &assembled]));
    assert_eq!(pushed, format!("{digest}\n"));
    let expected = fixture.raw(&one_shot);
    assert_eq!(fixture.raw(&assembled), expected);
    let one_shot_digest = kiln_testsupport::image::digest_of(
        &skopeo_raw_manifest(&format!("docker://{one_shot}"), None, None).unwrap(),
    );
    assert_eq!(digest, one_shot_digest, "the same index, byte for byte");
    // An index the store built, once annotated, is a list of the manifest
    // commands' own: inspect shows it, not the registry's.
    let one_shot_store = fixture.path("one-shot");
    let entry = expected["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let stored: Value =
        serde_json::from_str(&kiln_ok(&one_shot_store, &["inspect", &one_shot])).unwrap();
    let stored_entry = stored[0]["Index"]["Manifest"]["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&fixture.kiln(
        &one_shot_store,
        &[
            "manifest",
            "annotate",
            &one_shot,
            &stored_entry,
            "--annotation",
            "org.example.k=v",
        ],
    ));
    let annotated: Value = serde_json::from_str(&kiln_ok(
        &one_shot_store,
        &["manifest", "inspect", "--raw", &one_shot],
    ))
    .unwrap();
    assert_eq!(
        annotated["manifests"][0]["annotations"]["org.example.k"],
        "v"
    );
    assert_ne!(
        entry, stored_entry,
        "the store's manifest is not the pushed one"
    );

    // Another repository of the registry: the layers are mounted.
    let log_before = fixture.registry.log().len();
    let elsewhere = fixture.reference("other/repo:multi");
    ok(&fixture.kiln(&assembler, &["manifest", "push", &assembled, &elsewhere]));
    assert_eq!(fixture.raw(&elsewhere), expected);
    let log = fixture.registry.log();
    assert!(
        log[log_before..].contains("mount=sha256"),
        "{}",
        &log[log_before..]
    );
    let layer_blobs = std::fs::read_dir(assembler.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(
        layer_blobs,
        1 + 2 * 2,
        "the index, two manifests, two configs"
    );

    // Another registry: copied through the store.
    let second = RegistryServer::start_plain().unwrap();
    let copied = format!("{}/copied/app:multi", second.host);
    let out = kiln(
        &assembler,
        &[
            "manifest",
            "push",
            "--insecure-registry",
            &second.host,
            &assembled,
            &copied,
        ],
    );
    ok(&out);
    let raw = skopeo_raw_manifest(&format!("docker://{copied}"), None, None).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&raw).unwrap(), expected);
    let other = fixture.path("check-store");
    ok(&kiln(
        &other,
        &[
            "pull",
            "--insecure-registry",
            &second.host,
            "--platform",
            "all",
            &copied,
        ],
    ));
    let machine = kiln_ok(
        &other,
        &[
            "run",
            "--platform",
            "linux/arm64",
            &copied,
            "cat",
            "/out/machine",
        ],
    );
    assert_eq!(machine.trim(), "aarch64");
}

/// `kiln manifest inspect` (store or registry, summary or raw) and
/// `annotate`; an index with platforms kiln cannot run (`unknown/unknown`,
/// `linux/riscv64`) is pulled whole and listed, not dropped.
#[test]
fn manifest_inspect_annotate_and_unknown_platforms() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let root = fixture.root();
    // From the registry: nothing is in the store.
    let summary = ok(&fixture.kiln(
        &root,
        &[
            "manifest",
            "inspect",
            "--insecure-registry",
            &fixture.registry.host,
            &base.reference,
        ],
    ));
    assert!(
        summary.contains(&format!("Digest:    {}", base.digest)),
        "{summary}"
    );
    assert!(
        summary.contains("MediaType: application/vnd.oci.image.index.v1+json"),
        "{summary}"
    );
    let arm64 = base.platform("linux/arm64");
    assert!(
        summary.contains(&format!(
            "  Name:        {}@{}\n  MediaType:   application/vnd.oci.image.manifest.v1+json\n  Platform:    linux/arm64\n",
            fixture.reference("base/busybox"), arm64.digest
        )),
        "{summary}"
    );
    assert!(!root.exists(), "inspect made no store");

    let odd = fixture.reference("odd/platforms:1");
    let amd64_ref = format!(
        "{}@{}",
        fixture.reference("base/busybox"),
        base.platform("linux/amd64").digest
    );
    let arm64_ref = format!("{}@{}", fixture.reference("base/busybox"), arm64.digest);
    ok(&fixture.kiln(&root, &["manifest", "create", &odd, &amd64_ref, &arm64_ref]));
    // A name already in the store is not taken over (docker refuses to
    // amend a list without --amend), nor an os/arch no toolchain builds
    // for set.
    let again = fixture.kiln(&root, &["manifest", "create", &odd, &amd64_ref]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("refusing to replace it"),
        "{again:?}"
    );
    let upper = fixture.kiln(
        &root,
        &[
            "manifest",
            "annotate",
            &odd,
            &arm64.digest,
            "--arch",
            "ARM64",
        ],
    );
    assert!(!upper.status.success());
    assert!(
        String::from_utf8_lossy(&upper.stderr)
            .contains("unsupported os/arch combination linux/ARM64"),
        "{upper:?}"
    );
    ok(&fixture.kiln(
        &root,
        &[
            "manifest",
            "annotate",
            &odd,
            &arm64.digest,
            "--os",
            "unknown",
            "--arch",
            "unknown",
            "--annotation",
            "org.example.role=odd",
        ],
    ));
    ok(&fixture.kiln(
        &root,
        &[
            "manifest",
            "annotate",
            &odd,
            &amd64_ref,
            "--arch",
            "riscv64",
            "--os-features",
            "a,b",
        ],
    ));
    let summary = kiln_ok(&root, &["manifest", "inspect", &odd]);
    assert!(
        summary.contains(
            "  Platform:    unknown/unknown\n  Annotations:\n    org.example.role: odd\n"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("  Platform:    linux/riscv64\n  OSFeatures:  a, b\n"),
        "{summary}"
    );
    let raw: Value =
        serde_json::from_str(&kiln_ok(&root, &["manifest", "inspect", "--raw", &odd])).unwrap();
    assert_eq!(
        raw["manifests"][1]["annotations"]["org.example.role"],
        "odd"
    );
    assert_eq!(
        raw["manifests"][0]["platform"]["os.features"],
        serde_json::json!(["a", "b"])
    );
    ok(&fixture.kiln(&root, &["manifest", "push", &odd]));
    assert_eq!(fixture.raw(&odd), raw);

    // Pulled whole into a fresh store: every entry listed and held.
    let other = fixture.path("other-store");
    ok(&fixture.kiln(&other, &["pull", "--all-platforms", &odd]));
    assert_eq!(
        platforms(&other, &odd),
        [
            ("linux/riscv64".to_string(), true),
            ("unknown/unknown".to_string(), true)
        ]
    );
    let line = table_row(&other, &fixture.reference("odd/platforms"));
    assert!(line.ends_with(" linux/riscv64,unknown/unknown"), "{line}");
    let inspected: Value = serde_json::from_str(&kiln_ok(&other, &["inspect", &odd])).unwrap();
    assert_eq!(inspected[0]["Platforms"].as_array().unwrap().len(), 2);
    // A pull of this machine's platform finds none, naming what there is.
    let err = failed(&fixture.kiln(&fixture.path("third"), &["pull", &odd]));
    assert!(
        err.contains(
            "no manifest for platform linux/amd64 (available: linux/riscv64, unknown/unknown)"
        ),
        "{err}"
    );
}

/// `kiln manifest create --amend`, as `docker manifest create --amend`:
/// without it a name already in the store is refused; with it a source
/// given again replaces the entries it gave (in their place: a re-pushed
/// tag does not leave its old image in the index), a new source adds its
/// entries, the others stay, also after an `annotate`; a name that holds
/// an image manifest is not amended.
#[test]
fn manifest_create_amend_replaces_a_source_given_again() {
    let fixture = Fixture::new();
    let builder = fixture.path("builder");
    let ctx = context(&[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "one\n")]);
    let build = |platform: &str, tag: &str| {
        let target = fixture.reference(tag);
        let args = [
            "build",
            "--platform",
            platform,
            "-t",
            &target,
            "--push",
            ctx.path().to_str().unwrap(),
        ];
        ok(&fixture.kiln(&builder, &args));
        let pushed = kiln_testsupport::image::digest_of(
            &skopeo_raw_manifest(&format!("docker://{target}"), None, None).unwrap(),
        );
        (target, pushed)
    };
    let (amd64, amd64_one) = build("linux/amd64", "app/am:amd64");
    let (arm64, arm64_one) = build("linux/arm64", "app/am:arm64");
    let list = fixture.reference("app/am:list");
    let root = fixture.root();
    ok(&fixture.kiln(&root, &["manifest", "create", &list, &amd64, &arm64]));
    let entries = |root: &Path| -> Vec<(String, String)> {
        let raw: Value =
            serde_json::from_str(&kiln_ok(root, &["manifest", "inspect", "--raw", &list])).unwrap();
        raw["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let p = &e["platform"];
                let platform = format!(
                    "{}/{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                );
                (platform, e["digest"].as_str().unwrap().to_string())
            })
            .collect()
    };
    let pair = |p: &str, d: &str| (p.to_string(), d.to_string());
    assert_eq!(
        entries(&root),
        [
            pair("linux/amd64", &amd64_one),
            pair("linux/arm64", &arm64_one)
        ]
    );

    // The amd64 tag pushed again with other content.
    std::fs::write(ctx.path().join("f"), "two\n").unwrap();
    let (_, amd64_two) = build("linux/amd64", "app/am:amd64");
    assert_ne!(amd64_two, amd64_one);
    let refused = failed(&fixture.kiln(&root, &["manifest", "create", &list, &amd64]));
    assert!(refused.contains("without --amend"), "{refused}");
    ok(&fixture.kiln(&root, &["manifest", "create", "--amend", &list, &amd64]));
    assert_eq!(
        entries(&root),
        [
            pair("linux/amd64", &amd64_two),
            pair("linux/arm64", &arm64_one)
        ]
    );

    // annotate moves the name to a new index; a later --amend still knows
    // which source gave which entry. A new source is added at the end.
    ok(&fixture.kiln(
        &root,
        &[
            "manifest",
            "annotate",
            &list,
            &arm64_one,
            "--annotation",
            "org.example.k=v",
        ],
    ));
    std::fs::write(ctx.path().join("f"), "three\n").unwrap();
    let (_, amd64_three) = build("linux/amd64", "app/am:amd64");
    let (ppc, ppc_one) = build("linux/ppc64le", "app/am:ppc64le");
    ok(&fixture.kiln(&root, &["manifest", "create", "-a", &list, &ppc, &amd64]));
    assert_eq!(
        entries(&root),
        [
            pair("linux/amd64", &amd64_three),
            pair("linux/arm64", &arm64_one),
            pair("linux/ppc64le", &ppc_one)
        ]
    );
    let raw: Value =
        serde_json::from_str(&kiln_ok(&root, &["manifest", "inspect", "--raw", &list])).unwrap();
    assert_eq!(raw["manifests"][1]["annotations"]["org.example.k"], "v");

    // The builder's store names its last amd64 image: not an index.
    let image = failed(&fixture.kiln(&builder, &["manifest", "create", "--amend", &amd64, &arm64]));
    assert!(image.contains("not an index"), "{image}");
}

/// An image pulled by tag is found by its digests too, as docker finds it
/// by its repo digests: `NAME@<index digest>` and `NAME@<this machine's
/// manifest digest>` (inspect, run, a build's FROM), not a platform the
/// store does not hold nor another repository's name; `rmi` of such a
/// name says it is no tag instead of removing the image.
#[test]
fn a_pull_by_tag_is_found_by_its_digests() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let root = fixture.root();
    ok(&fixture.kiln(&root, &["pull", &base.reference]));
    let name = fixture.reference("base/busybox");
    let host = kiln_layers::Platform::host().to_string();
    let held = base.platform(&host).digest.clone();
    let other = base
        .manifests
        .iter()
        .find(|m| m.platform != host)
        .unwrap()
        .digest
        .clone();
    for digest in [&base.digest, &held] {
        let by_digest = format!("{name}@{digest}");
        let inspected: Value =
            serde_json::from_str(&kiln_ok(&root, &["inspect", &by_digest])).unwrap();
        assert_eq!(inspected[0]["Digest"], held.as_str(), "{by_digest}");
        let out = kiln_ok(&root, &["run", &by_digest, "echo", "ran"]);
        assert_eq!(out, "ran\n");
        // The build finds it in the store: no manifest is fetched.
        let ctx = context(&[(
            "Dockerfile",
            &format!("FROM {by_digest}\nLABEL found=yes\n"),
        )]);
        let log_before = fixture.registry.log().len();
        ok(&fixture.kiln(&root, &["build", ctx.path().to_str().unwrap()]));
        let log = fixture.registry.log();
        assert!(
            !log[log_before..].contains("/manifests/"),
            "{}",
            &log[log_before..]
        );
    }
    let missing = failed(&fixture.kiln(&root, &["inspect", &format!("{name}@{other}")]));
    assert!(missing.contains("not found"), "{missing}");
    let elsewhere = fixture.reference("elsewhere/busybox");
    let missing = failed(&fixture.kiln(&root, &["inspect", &format!("{elsewhere}@{held}")]));
    assert!(missing.contains("not found"), "{missing}");
    let refused = failed(&fixture.kiln(&root, &["rmi", &format!("{name}@{held}")]));
    assert!(
        refused.contains("names nothing in the store itself"),
        "{refused}"
    );
    assert!(kiln(&root, &["inspect", &base.reference]).status.success());
}

/// The entry of `index` (a raw index) for `digest`.
fn entry_for<'a>(index: &'a Value, digest: &str) -> &'a Value {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["digest"] == digest)
        .unwrap_or_else(|| panic!("no entry {digest} in {index}"))
}

/// `kiln manifest create` over an index takes its entries as listed (one
/// entry per digest, however often named); over Docker manifests it makes
/// a Docker manifest list, over mixed ones an OCI index. `annotate` names
/// its entry by digest or by a tag resolved at the registry, sets and
/// removes `--variant` and `--os-version`, and refuses an annotation on a
/// Docker manifest list or a malformed one; `inspect` of one image shows
/// no entries.
#[test]
fn manifest_create_from_indexes_and_docker_lists_and_annotate_fields() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let root = fixture.root();
    let repository = fixture.reference("base/busybox");
    let arm64 = base.platform("linux/arm64").digest.clone();
    let amd64 = base.platform("linux/amd64").digest.clone();

    // An index source gives its entries; a digest it already gave, nothing.
    let copy = fixture.reference("copy/busybox:1");
    let by_digest = format!("{repository}@{arm64}");
    let created = ok(&fixture.kiln(
        &root,
        &["manifest", "create", &copy, &base.reference, &by_digest],
    ));
    let created = created.trim().to_string();
    let raw: Value =
        serde_json::from_str(&kiln_ok(&root, &["manifest", "inspect", "--raw", &copy])).unwrap();
    let original = fixture.raw(&base.reference);
    assert_eq!(raw["manifests"], original["manifests"], "{raw}");
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");

    // The entry named by a tag the registry resolves to its digest.
    run_ok(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{by_digest}"),
        &format!("docker://{repository}:arm64"),
    ]));
    let tagged = format!("{repository}:arm64");
    ok(&fixture.kiln(
        &root,
        &[
            "manifest",
            "annotate",
            &copy,
            &tagged,
            "--variant",
            "v8",
            "--os-version",
            "13.1",
        ],
    ));
    let summary = kiln_ok(&root, &["manifest", "inspect", &copy]);
    assert!(
        summary.contains(&format!(
            "  Name:        {}@{arm64}\n  MediaType:   application/vnd.oci.image.manifest.v1+json\n  Platform:    linux/arm64/v8\n  OSVersion:   13.1\n",
            fixture.reference("copy/busybox")
        )),
        "{summary}"
    );
    let raw: Value =
        serde_json::from_str(&kiln_ok(&root, &["manifest", "inspect", "--raw", &copy])).unwrap();
    assert_eq!(entry_for(&raw, &arm64)["platform"]["variant"], "v8");
    assert_eq!(entry_for(&raw, &arm64)["platform"]["os.version"], "13.1");
    assert!(entry_for(&raw, &amd64)["platform"].get("variant").is_none());
    // "" removes them: the index is the one created, byte for byte.
    let back = ok(&fixture.kiln(
        &root,
        &[
            "manifest",
            "annotate",
            &copy,
            &arm64,
            "--variant",
            "",
            "--os-version",
            "",
        ],
    ));
    assert_eq!(back.trim(), created);

    let err = failed(&fixture.kiln(
        &root,
        &[
            "manifest",
            "annotate",
            &copy,
            &arm64,
            "--annotation",
            "novalue",
        ],
    ));
    assert!(
        err.contains("--annotation novalue: expected KEY=VALUE"),
        "{err}"
    );
    let absent = format!("{repository}@sha256:{}", "0".repeat(64));
    let err = failed(&fixture.kiln(
        &root,
        &["manifest", "annotate", &copy, &absent, "--arch", "s390x"],
    ));
    assert!(err.contains("has no entry for sha256:000"), "{err}");
    let missing = fixture.reference("never/made:1");
    for args in [
        ["manifest", "annotate", &missing, &arm64, "--arch", "s390x"].as_slice(),
        ["manifest", "push", &missing].as_slice(),
    ] {
        let err = failed(&fixture.kiln(&root, args));
        assert!(
            err.contains(&format!("{missing}: no such index in the store")),
            "{err}"
        );
    }

    // Two single-platform builds with Docker media types: a manifest list.
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {}\nLABEL org.example.job=ci\n", base.reference),
    )]);
    for arch in ["amd64", "arm64"] {
        let platform = format!("linux/{arch}");
        let tag = fixture.reference(&format!("docker/app:{arch}"));
        ok(&fixture.kiln(
            &root,
            &[
                "build",
                "--platform",
                &platform,
                "--docker-mediatypes",
                "-t",
                &tag,
                "--push",
                ctx.path().to_str().unwrap(),
            ],
        ));
    }
    let (docker_amd64, docker_arm64) = (
        fixture.reference("docker/app:amd64"),
        fixture.reference("docker/app:arm64"),
    );
    // inspect of one image: its document, no entries.
    let single = kiln_ok(
        &fixture.path("empty"),
        &["manifest", "inspect", &docker_arm64],
    );
    assert!(
        single.contains("MediaType: application/vnd.docker.distribution.manifest.v2+json\n"),
        "{single}"
    );
    assert!(!single.contains("Manifests:"), "{single}");

    let list = fixture.reference("docker/app:list");
    ok(&fixture.kiln(
        &root,
        &["manifest", "create", &list, &docker_amd64, &docker_arm64],
    ));
    let raw: Value =
        serde_json::from_str(&kiln_ok(&root, &["manifest", "inspect", "--raw", &list])).unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let entry_platforms: Vec<String> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(
                e["mediaType"],
                "application/vnd.docker.distribution.manifest.v2+json"
            );
            format!("{}/{}", e["platform"]["os"], e["platform"]["architecture"])
        })
        .collect();
    assert_eq!(
        entry_platforms,
        ["\"linux\"/\"amd64\"", "\"linux\"/\"arm64\""]
    );
    let docker_arm64_digest = raw["manifests"][1]["digest"].as_str().unwrap().to_string();
    let err = failed(&fixture.kiln(
        &root,
        &[
            "manifest",
            "annotate",
            &list,
            &docker_arm64_digest,
            "--annotation",
            "org.example.role=arm",
        ],
    ));
    assert!(
        err.contains("a Docker manifest list has no annotations; use OCI media types"),
        "{err}"
    );
    let unchanged: Value =
        serde_json::from_str(&kiln_ok(&root, &["manifest", "inspect", "--raw", &list])).unwrap();
    assert_eq!(unchanged, raw, "the refused annotation changed nothing");
    ok(&fixture.kiln(&root, &["manifest", "push", &list]));
    assert_eq!(fixture.raw(&list), raw);

    // A Docker manifest and an OCI one: an OCI index.
    let mixed = fixture.reference("mixed/app:1");
    ok(&fixture.kiln(
        &root,
        &["manifest", "create", &mixed, &docker_amd64, &by_digest],
    ));
    let raw: Value =
        serde_json::from_str(&kiln_ok(&root, &["manifest", "inspect", "--raw", &mixed])).unwrap();
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
}

/// `--annotation` and `--label` of a two-platform build go where BuildKit
/// puts them: `index` on the index the registry serves, `index-descriptor`
/// on the descriptor naming it (an OCI layout's `index.json`, the metadata
/// file), `manifest` on each platform's manifest (or one platform's with
/// `[os/arch]`), `manifest-descriptor` on each entry of the index; every
/// platform's config gets the labels. A platform the build does not make,
/// or index annotations on a Docker manifest list, are refused before any
/// step.
#[test]
fn annotations_and_labels_of_a_two_platform_build() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let root = fixture.root();
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nLABEL org.example.from=dockerfile\n",
            base.reference
        ),
    )]);
    let target = fixture.reference("app/annotated:1");
    let (layout, meta) = (fixture.path("layout"), fixture.path("meta.json"));
    let output = format!("type=oci,tar=false,dest={}", layout.display());
    let annotations = [
        "index:org.example.index=top",
        "index-descriptor:org.example.pointer=to-index",
        "manifest[linux/arm64]:org.example.arch=arm",
        "manifest:org.example.every=manifest",
        "manifest-descriptor:org.example.entry=each",
    ];
    let mut args = vec![
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &target,
        "--push",
        "-o",
        &output,
        "--metadata-file",
        meta.to_str().unwrap(),
        "--label",
        "org.example.label=flag",
    ];
    for a in &annotations {
        args.extend(["--annotation", a]);
    }
    args.push(ctx.path().to_str().unwrap());
    ok(&fixture.kiln(&root, &args));

    let index = fixture.raw(&target);
    assert_eq!(index["annotations"]["org.example.index"], "top", "{index}");
    assert!(index["annotations"].get("org.example.pointer").is_none());
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for entry in entries {
        let arch = entry["platform"]["architecture"].as_str().unwrap();
        assert_eq!(
            entry["annotations"],
            serde_json::json!({"org.example.entry": "each"}),
            "{arch}: {index}"
        );
        let by_digest = format!(
            "{}@{}",
            fixture.reference("app/annotated"),
            entry["digest"].as_str().unwrap()
        );
        let manifest = fixture.raw(&by_digest);
        let wanted = match arch {
            "arm64" => {
                serde_json::json!({"org.example.arch": "arm", "org.example.every": "manifest"})
            }
            _ => serde_json::json!({"org.example.every": "manifest"}),
        };
        assert_eq!(manifest["annotations"], wanted, "{arch}: {manifest}");
        let config = run_ok(Command::new("skopeo").args([
            "inspect",
            "--config",
            "--tls-verify=false",
            &format!("docker://{by_digest}"),
        ]));
        let config: Value = serde_json::from_str(&config).unwrap();
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.example.label"], "flag", "{arch}: {config}");
        assert_eq!(labels["org.example.from"], "dockerfile", "{arch}: {config}");
    }

    let layout_index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let top = &layout_index["manifests"][0];
    assert_eq!(top["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(
        top["annotations"]["org.example.pointer"], "to-index",
        "{layout_index}"
    );
    let meta: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let descriptor = &meta["containerimage.descriptor"];
    assert_eq!(
        descriptor["annotations"]["org.example.pointer"], "to-index",
        "{meta}"
    );
    assert_eq!(
        descriptor["digest"].as_str().unwrap(),
        kiln_testsupport::image::digest_of(
            &skopeo_raw_manifest(&format!("docker://{target}"), None, None).unwrap()
        ),
        "the metadata file names the index the registry has"
    );

    for (extra, wanted) in [
        (
            vec!["--annotation", "manifest[linux/s390x]:k=v"],
            "no platform linux/s390x found in source (the build makes linux/amd64, linux/arm64)",
        ),
        (
            vec!["--docker-mediatypes", "--annotation", "index:k=v"],
            "cannot export annotations with Docker media types",
        ),
    ] {
        let mut args = vec!["build", "--platform", "linux/amd64,linux/arm64"];
        args.extend(extra);
        args.push(ctx.path().to_str().unwrap());
        let err = failed(&fixture.kiln(&root, &args));
        assert!(err.contains(wanted), "{err}");
        assert!(!err.contains("LABEL"), "a step ran: {err}");
    }
}

/// A platform with a variant: `--platform linux/amd64,linux/arm64,linux/arm/v7`
/// over a three-platform base (arm/v7 from Debian's armhf busybox-static).
/// The arm/v7 stage's RUN goes through qemu-arm (registered by kiln, with
/// F, when none was); `TARGETVARIANT` is `v7` there and empty for the
/// others; the index entry carries the variant, and `kiln run --platform
/// linux/arm` (the variant defaulted, as BuildKit normalizes it) runs it.
#[test]
fn a_platform_with_a_variant_runs_under_its_emulator() {
    let fixture = Fixture::new();
    let mut platforms = kiln_testsupport::multiarch::PLATFORMS.to_vec();
    platforms.push(kiln_testsupport::multiarch::ARM_V7);
    let base = push_busybox_index_of(&fixture.registry, "base/busybox:3", &platforms).unwrap();
    let root = fixture.root();
    let dockerfile = format!(
        "FROM --platform=$BUILDPLATFORM {base} AS build\n\
         ARG TARGETPLATFORM TARGETARCH TARGETVARIANT\n\
         RUN echo \"$TARGETPLATFORM $TARGETARCH v:$TARGETVARIANT\" > /target\n\
         FROM {base}\n\
         COPY --from=build /target /out/target\n\
         RUN uname -m > /out/machine\n",
        base = base.reference
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let target = fixture.reference("app/three:1");
    ok(&fixture.kiln(
        &root,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64,linux/arm/v7",
            "-t",
            &target,
            "--push",
            ctx.path().to_str().unwrap(),
        ],
    ));
    let handler = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-arm").unwrap();
    assert!(handler.starts_with("enabled"), "{handler}");
    assert!(
        handler
            .lines()
            .any(|l| l.starts_with("flags:") && l.contains('F')),
        "{handler}"
    );

    let index = fixture.raw(&target);
    let entry_platforms: Vec<Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["platform"].clone())
        .collect();
    assert_eq!(
        entry_platforms,
        [
            serde_json::json!({"architecture": "amd64", "os": "linux"}),
            serde_json::json!({"architecture": "arm64", "os": "linux"}),
            serde_json::json!({"architecture": "arm", "os": "linux", "variant": "v7"}),
        ]
    );
    let cat = |platform: &str, file: &str| {
        kiln_ok(
            &root,
            &["run", "--platform", platform, &target, "cat", file],
        )
        .trim()
        .to_string()
    };
    assert_eq!(cat("linux/arm/v7", "/out/machine"), "armv7l");
    assert_eq!(cat("linux/arm", "/out/target"), "linux/arm/v7 arm v:v7");
    assert_eq!(cat("linux/arm64", "/out/target"), "linux/arm64 arm64 v:");
    assert_eq!(cat("linux/amd64", "/out/machine"), "x86_64");
    let row = table_row(&root, &fixture.reference("app/three"));
    assert!(
        row.ends_with(" linux/amd64,linux/arm64,linux/arm/v7"),
        "{row}"
    );
}

/// The store's garbage collection follows indexes: `kiln prune --all`
/// keeps every platform's image of a tagged index (pulled or built), and
/// once `kiln rmi` has removed the tags, it removes them all.
#[test]
fn prune_keeps_an_index_whole_and_rmi_lets_it_go() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let root = fixture.root();
    fixture.ok(&["pull", "--platform", "all", &base.reference]);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN uname -m > /machine\n", base.reference),
    )]);
    ok(&fixture.kiln(
        &root,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "app:multi",
            ctx.path().to_str().unwrap(),
        ],
    ));
    let blobs = || {
        std::fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .count()
    };
    let before = blobs();
    kiln_ok(&root, &["prune", "--all"]);
    assert_eq!(blobs(), before, "prune removed a blob of a tagged index");
    for (platform, machine) in [("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")] {
        let out = kiln_ok(
            &root,
            &[
                "run",
                "--platform",
                platform,
                "app:multi",
                "cat",
                "/machine",
            ],
        );
        assert_eq!(out.trim(), machine);
        let out = kiln_ok(
            &root,
            &[
                "run",
                "--platform",
                platform,
                &base.reference,
                "uname",
                "-m",
            ],
        );
        assert_eq!(out.trim(), machine);
    }
    assert_eq!(
        platforms(&root, &base.reference),
        [
            ("linux/amd64".to_string(), true),
            ("linux/arm64".to_string(), true)
        ]
    );

    kiln_ok(&root, &["rmi", "app:multi", &base.reference]);
    kiln_ok(&root, &["prune", "--all"]);
    let left: Vec<_> = std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left after rmi and prune: {left:?}");
    let listed: Value =
        serde_json::from_str(&kiln_ok(&root, &["images", "--format", "json"])).unwrap();
    assert_eq!(listed, serde_json::json!([]));
}

/// SIGINT in the middle of a two-platform build (each platform's RUN
/// sleeping, arm64's under qemu) cancels both platforms' solves: exit 130,
/// nothing tagged, no sleep left running, no scratch left in the store.
#[test]
fn sigint_cancels_every_platform_of_a_build() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let root = fixture.root();
    fixture.ok(&["pull", "--platform", "all", &base.reference]);
    // A sleep no other process here has: it must not outlive the build.
    let seconds = format!("{}", 4000 + std::process::id() % 1000);
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nARG TARGETARCH\nRUN echo sleeping-$TARGETARCH && sleep {seconds}\nRUN echo never\n",
            base.reference
        ),
    )]);
    let log = fixture.path("build.log");
    let mut child = common::kiln_command()
        .arg("--root")
        .arg(&root)
        .args([
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "app:canceled",
        ])
        .arg(ctx.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    common::wait_for_text(&log, "sleeping-amd64");
    common::wait_for_text(&log, "sleeping-arm64");
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("error: build canceled by SIGINT"),
        "{stderr}"
    );
    let canceled = stderr
        .lines()
        .filter(|l| l.starts_with('#') && l.ends_with(" CANCELED"))
        .count();
    assert_eq!(canceled, 2, "each platform's RUN canceled:\n{stderr}");
    assert!(!stderr.contains("RUN echo never"), "{stderr}");
    assert_eq!(
        common::processes_with_argument(&seconds),
        Vec::<String>::new()
    );
    assert_eq!(common::scratch_left(&root), Vec::<String>::new());
    let images = kiln_ok(&root, &["images"]);
    assert!(!images.contains("app"), "{images}");
}

/// A build for several platforms exports one registry or local cache for
/// all of them, as BuildKit does: a later build for both platforms, in a
/// new store, runs none of the RUNs it holds (mode=max: the shared build
/// stage's too; mode=min: the result's, which need nothing of the build
/// stage), and one for a single platform takes that platform's.
#[test]
fn one_cache_export_serves_every_platform_of_a_build() {
    let fixture = Fixture::new();
    let base = pushed_base(&fixture);
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM --platform=$BUILDPLATFORM {base} AS build\n\
             RUN echo built > /built\n\
             FROM {base}\n\
             COPY --from=build /built /built\n\
             RUN uname -m > /machine\n",
            base = base.reference
        ),
    )]);
    let ctx = ctx.path().to_str().unwrap();
    let registry_cache = format!(
        "type=registry,ref={},mode=max",
        fixture.reference("app/cache:buildcache")
    );
    let dest = fixture.path("cache");
    let local_cache = format!("type=local,dest={}", dest.display());
    ok(&fixture.kiln(
        &fixture.root(),
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "--cache-to",
            &registry_cache,
            "--cache-to",
            &local_cache,
            ctx,
        ],
    ));
    assert!(dest.join("index.json").exists(), "no local cache written");

    let from_registry = registry_cache.replace(",mode=max", "");
    let from_local = format!("type=local,src={}", dest.display());
    for (n, cache_from, build_stage) in [
        (0, &from_registry, &["cached"][..]),
        // mode=min: the result's steps only, and those need nothing of the
        // build stage, which is not started.
        (1, &from_local, &[][..]),
    ] {
        let out = fixture.kiln(
            &fixture.path(&format!("runner-{n}")),
            &[
                "build",
                "--platform",
                "linux/amd64,linux/arm64",
                "--cache-from",
                cache_from,
                "--progress",
                "json",
                ctx,
            ],
        );
        ok(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            step_statuses(&stderr, "RUN uname"),
            ["cached", "cached"],
            "{cache_from}: {stderr}"
        );
        assert_eq!(
            step_statuses(&stderr, "RUN echo"),
            build_stage,
            "{cache_from}: {stderr}"
        );
    }
    let out = fixture.kiln(
        &fixture.path("runner-arm64"),
        &[
            "build",
            "--platform",
            "linux/arm64",
            "--cache-from",
            &from_registry,
            "--progress",
            "json",
            ctx,
        ],
    );
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        step_statuses(&stderr, "RUN"),
        ["cached", "cached"],
        "{stderr}"
    );
}
