//! Build cache that travels between CI runners (`--cache-to`,
//! `--cache-from`), end to end as root: a real registry (behind the test
//! proxy, which counts requests and injects faults), two runners each
//! with a fresh store at its own path and its own checkout of the context
//! (other mtimes, other inodes), a multi-stage project whose RUN steps
//! write content that differs on every run (so an image equal to the
//! first runner's proves nothing ran again).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use kiln_testsupport::{FaultPlan, FaultProxy, RegistryServer};

const EPOCH: &str = "1700000000";

/// A multi-stage project: `deps` does apt-like work (package lists and
/// archives, different bytes each run), `build` compiles the sources
/// (a different "binary" each run), the final stage takes both.
fn dockerfile(base: &str) -> String {
    format!(
        "FROM {base} AS deps\n\
         RUN mkdir -p /var/lib/apt/lists /opt/pkgs && for p in alpha beta gamma; do \
         echo \"Package: $p\" > /var/lib/apt/lists/$p && \
         head -c 65536 /dev/urandom > /opt/pkgs/$p.deb; done\n\
         FROM deps AS build\n\
         WORKDIR /src\n\
         COPY src/ /src/\n\
         RUN mkdir -p /out && cat /src/*.c | sed s/main/app_main/ > /out/app && \
         head -c 32 /dev/urandom | od -An -tx1 >> /out/app\n\
         FROM {base}\n\
         COPY --from=deps /opt/pkgs /opt/pkgs\n\
         COPY --from=build /out/app /usr/local/bin/app\n\
         CMD [\"cat\", \"/usr/local/bin/app\"]\n"
    )
}

const SOURCES: &[(&str, &str)] = &[
    ("src/main.c", "int main(void) { return helper(); }\n"),
    ("src/util.c", "int helper(void) { return 0; }\n"),
    ("README", "a project\n"),
];

/// The registry and the proxy every runner reaches it through, with a
/// busybox base pushed there.
struct Registry {
    server: RegistryServer,
    proxy: FaultProxy,
    _seed: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let registry = RegistryServer::start_plain().unwrap();
        let proxy = FaultProxy::start(registry.addr, FaultPlan::default()).unwrap();
        let seed = tempfile::tempdir().unwrap();
        let tar = seed.path().join("busybox.tar");
        common::busybox_rootfs_tar(&tar).unwrap();
        let root = seed.path().join("store");
        let base = format!("{}/base/busybox:1", proxy.host);
        common::kiln_ok(&root, &["import", tar.to_str().unwrap(), &base]);
        common::kiln_ok(&root, &["push", &base]);
        Registry {
            server: registry,
            proxy,
            _seed: seed,
        }
    }

    fn host(&self) -> &str {
        &self.proxy.host
    }

    /// Another way in to the same registry, with faults.
    fn faulty(&self, plan: FaultPlan) -> FaultProxy {
        FaultProxy::start(self.server.addr, plan).unwrap()
    }

    /// The layer digests of the image manifest at `reference` (an image's,
    /// or a cache's), as skopeo reads them.
    fn manifest_layers(&self, reference: &str) -> Vec<String> {
        let raw = kiln_testsupport::image::skopeo_raw_manifest(
            &format!("docker://{reference}"),
            None,
            None,
        )
        .unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }

    /// How many requests the proxy has seen so far.
    fn requests(&self) -> usize {
        self.proxy.requests().len()
    }

    /// The blobs downloaded (GET) since request `from`, by digest.
    fn blob_gets_since(&self, from: usize) -> Vec<String> {
        self.proxy.requests()[from..]
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains("/blobs/sha256:"))
            .filter_map(|r| r.split("/blobs/").nth(1))
            .map(|d| d.split_whitespace().next().unwrap_or(d).to_string())
            .collect()
    }

    /// The blob uploads (PUT or PATCH of an upload session) since request
    /// `from`.
    fn uploads_since(&self, from: usize) -> Vec<String> {
        self.proxy.requests()[from..]
            .iter()
            .filter(|r| {
                (r.starts_with("PUT ") || r.starts_with("PATCH ")) && r.contains("/blobs/uploads/")
            })
            .cloned()
            .collect()
    }

    /// A reference in the registry.
    fn name(&self, repository: &str) -> String {
        format!("{}/{repository}", self.host())
    }

    fn base(&self) -> String {
        format!("{}/base/busybox:1", self.host())
    }
}

/// One CI runner: a fresh store at a path of its own and its own checkout
/// of the project.
struct Runner {
    dir: tempfile::TempDir,
    name: &'static str,
}

impl Runner {
    /// `mtime` (`touch -d` syntax) is given to every file of the checkout.
    fn new(name: &'static str, base: &str, mtime: &str) -> Runner {
        let dir = tempfile::tempdir().unwrap();
        let runner = Runner { dir, name };
        let ctx = runner.context();
        std::fs::create_dir_all(ctx.join("src")).unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile(base)).unwrap();
        for (path, text) in SOURCES {
            std::fs::write(ctx.join(path), text).unwrap();
        }
        common::run_ok(
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("find . -exec touch -h -d '{mtime}' {{}} +"))
                .current_dir(&ctx),
        );
        runner
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join(format!("{}-runner/store", self.name))
    }

    fn context(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}-checkout/project", self.name))
    }

    /// `kiln build --progress json ARGS CONTEXT`, SOURCE_DATE_EPOCH set; the
    /// metadata file is read back.
    fn build(&self, args: &[&str]) -> Build {
        let meta = self.dir.path().join("metadata.json");
        let _ = std::fs::remove_file(&meta);
        let output = common::kiln_command()
            .arg("--root")
            .arg(self.root())
            .arg("build")
            .args(["--progress", "json", "--metadata-file"])
            .arg(&meta)
            .args(args)
            .arg(self.context())
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .output()
            .unwrap();
        let metadata = std::fs::read(&meta)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        Build::new(output, metadata)
    }
}

/// What a build printed and wrote.
struct Build {
    output: Output,
    metadata: serde_json::Value,
    /// (instruction, status) of each step that ended, in order.
    steps: Vec<(String, String)>,
    warnings: Vec<String>,
}

impl Build {
    fn new(output: Output, metadata: serde_json::Value) -> Build {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut started: BTreeMap<u64, String> = BTreeMap::new();
        let (mut steps, mut warnings) = (Vec::new(), Vec::new());
        for event in stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let id = event["id"].as_u64().unwrap_or(u64::MAX);
            match event["event"].as_str() {
                Some("step_started") => {
                    let instruction = event["instruction"].as_str().unwrap_or("").to_string();
                    started.insert(id, instruction);
                }
                Some("step_done") => steps.push((
                    started.get(&id).cloned().unwrap_or_default(),
                    event["status"].as_str().unwrap_or("").to_string(),
                )),
                Some("warning") => warnings.push(event["message"].as_str().unwrap_or("").into()),
                _ => {}
            }
        }
        Build {
            output,
            metadata,
            steps,
            warnings,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Panics with the output unless the build succeeded.
    fn ok(self) -> Build {
        assert!(
            self.output.status.success(),
            "build failed ({}):\n{}",
            self.output.status,
            self.stderr()
        );
        self
    }

    /// The status (`cached`, `done`, `error`) of the step whose instruction
    /// starts with `prefix`.
    fn status(&self, prefix: &str) -> &str {
        let found: Vec<&str> = self
            .steps
            .iter()
            .filter(|(i, _)| i.starts_with(prefix))
            .map(|(_, s)| s.as_str())
            .collect();
        assert_eq!(found.len(), 1, "steps {prefix:?} in {:?}", self.steps);
        found[0]
    }

    /// The RUN steps that ran (not taken from a cache).
    fn runs_executed(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|(i, s)| i.starts_with("RUN ") && s != "cached")
            .map(|(i, _)| i.as_str())
            .collect()
    }

    /// The manifest digest the registry has for the pushed image.
    fn pushed_digest(&self) -> String {
        self.metadata["containerimage.digest"]
            .as_str()
            .unwrap_or_else(|| panic!("no digest in {}", self.metadata))
            .to_string()
    }

    fn image_id(&self) -> String {
        self.metadata["containerimage.config.digest"]
            .as_str()
            .unwrap_or_else(|| panic!("no image id in {}", self.metadata))
            .to_string()
    }
}

const RUN_DEPS: &str = "RUN mkdir -p /var/lib/apt";
const RUN_COMPILE: &str = "RUN mkdir -p /out";

/// Runner A's first build, which runs every RUN.
fn first_build(runner: &Runner, args: &[&str]) -> Build {
    let built = runner.build(args).ok();
    assert_eq!(built.runs_executed().len(), 2, "{:?}", built.steps);
    built
}

#[test]
fn a_local_cache_travels_to_a_second_runner() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    let registry = Registry::start();
    let a = Runner::new("a", &registry.base(), "2001-01-01 00:00:00");
    let b = Runner::new("b", &registry.base(), "2010-06-15 12:34:56");
    let shared = tempfile::tempdir().unwrap();
    let cache = shared.path().join("cache");
    let built = first_build(
        &a,
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max,tag=ci", cache.display()),
        ],
    );

    // The manifest is found by the tag it was written under (tag=), or by
    // its digest (digest=); the default tag, latest, is not there: a
    // warning, and the build runs without it.
    let c = Runner::new("c", &registry.base(), "2010-06-15 12:34:56");
    let untagged = c
        .build(&[
            "--cache-from",
            &format!("type=local,src={}", cache.display()),
        ])
        .ok();
    assert_eq!(untagged.runs_executed().len(), 2, "{:?}", untagged.steps);
    assert_eq!(untagged.warnings.len(), 1, "{:?}", untagged.warnings);
    assert!(
        untagged.warnings[0].contains("latest"),
        "{:?}",
        untagged.warnings
    );
    let index = read_json(&cache.join("index.json"));
    let tagged: Vec<&serde_json::Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "ci")
        .collect();
    assert_eq!(tagged.len(), 1, "{index}");
    let digest = tagged[0]["digest"].as_str().unwrap();
    let d = Runner::new("d", &registry.base(), "2010-06-15 12:34:56");
    let by_digest = format!("type=local,src={},digest={digest}", cache.display());
    let third = d.build(&["--cache-from", &by_digest]).ok();
    assert!(third.runs_executed().is_empty(), "{:?}", third.steps);
    assert!(third.warnings.is_empty(), "{:?}", third.warnings);

    let from = format!("type=local,src={},tag=ci", cache.display());
    let second = b.build(&["--cache-from", &from]).ok();
    assert!(second.runs_executed().is_empty(), "{:?}", second.steps);
    assert_eq!(second.image_id(), built.image_id());
    assert!(second.warnings.is_empty(), "{:?}", second.warnings);

    // One source file changes: what depends on it runs, nothing else.
    std::fs::write(
        b.context().join("src/util.c"),
        "int helper(void) { return 1; }\n",
    )
    .unwrap();
    let changed = b.build(&["--cache-from", &from]).ok();
    assert_eq!(changed.status(RUN_DEPS), "cached");
    assert_eq!(changed.status("WORKDIR"), "cached");
    assert_eq!(changed.status("COPY src/"), "done");
    assert_eq!(changed.status(RUN_COMPILE), "done");
    assert_eq!(changed.status("COPY --from=deps"), "cached");
    assert_eq!(changed.status("COPY --from=build"), "done");
    assert_ne!(changed.image_id(), built.image_id());
}

/// `mode=min` exports the result's steps only: a second runner building
/// the same target runs nothing (the stages the result copies from are
/// not needed when its COPY steps are cached), but one building the
/// `build` stage finds none of its steps; `mode=max` has them all.
#[test]
fn mode_min_exports_only_the_results_steps() {
    if !kiln_testsupport::require_namespaces("RUN in namespaces") {
        return;
    }
    let registry = Registry::start();
    let a = Runner::new("a", &registry.base(), "2001-01-01 00:00:00");
    let shared = tempfile::tempdir().unwrap();
    let (min, max) = (shared.path().join("min"), shared.path().join("max"));
    let built = first_build(
        &a,
        &[
            "--cache-to",
            &format!("type=local,dest={}", min.display()),
            "--cache-to",
            &format!("type=local,dest={},mode=max", max.display()),
        ],
    );
    let from = |dir: &Path| format!("type=local,src={}", dir.display());
    let b = Runner::new("b", &registry.base(), "2002-02-02 00:00:00");
    let second = b.build(&["--cache-from", &from(&min)]).ok();
    assert!(second.runs_executed().is_empty(), "{:?}", second.steps);
    assert_eq!(second.status("COPY --from=deps"), "cached");
    assert_eq!(second.status("COPY --from=build"), "cached");
    assert!(
        second.steps.iter().all(|(i, _)| !i.starts_with("WORKDIR")),
        "the build stage is not run: {:?}",
        second.steps
    );
    assert_eq!(second.image_id(), built.image_id());

    let b = Runner::new("b", &registry.base(), "2002-02-02 00:00:00");
    let stage = b
        .build(&["--target", "build", "--cache-from", &from(&min)])
        .ok();
    assert_eq!(stage.runs_executed().len(), 2, "{:?}", stage.steps);
    let b = Runner::new("b", &registry.base(), "2002-02-02 00:00:00");
    let stage = b
        .build(&["--target", "build", "--cache-from", &from(&max)])
        .ok();
    assert!(stage.runs_executed().is_empty(), "{:?}", stage.steps);
}

/// `--cache-to type=inline` puts the result's steps in the pushed image's
/// config; a second runner taking `--cache-from` that image (and pushing
/// with inline cache too, as CI does) runs no RUN and pushes the same
/// manifest.
#[test]
fn an_inline_cache_travels_in_the_pushed_image() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    let registry = Registry::start();
    let a = Runner::new("a", &registry.base(), "2001-01-01 00:00:00");
    let image_a = registry.name("app/inline:a");
    let built = first_build(&a, &["--cache-to", "type=inline", "--push", "-t", &image_a]);
    let b = Runner::new("b", &registry.base(), "2010-06-15 12:34:56");
    let image_b = registry.name("app/inline:b");
    let args = ["--cache-from", &image_a, "--cache-to", "type=inline"];
    let second = b
        .build(&[&args[..], &["--push", "-t", &image_b]].concat())
        .ok();
    assert!(second.runs_executed().is_empty(), "{:?}", second.steps);
    assert!(second.warnings.is_empty(), "{:?}", second.warnings);
    assert_eq!(second.image_id(), built.image_id());
    assert_eq!(second.pushed_digest(), built.pushed_digest());
    let store = kiln_layers::Store::open(b.root()).unwrap();
    let desc = store
        .resolve(&kiln_layers::Reference::parse(&image_b).unwrap())
        .unwrap()
        .unwrap();
    let config = store
        .read_image(&desc, &kiln_layers::Platform::host())
        .unwrap()
        .config;
    let inline = &config.extra["kiln.cache"];
    assert_eq!(inline["steps"].as_array().unwrap().len(), 2, "{inline}");

    std::fs::write(
        b.context().join("src/util.c"),
        "int helper(void) { return 3; }\n",
    )
    .unwrap();
    let changed = b.build(&args).ok();
    assert_eq!(changed.status("COPY --from=deps"), "cached");
    assert_eq!(changed.status(RUN_COMPILE), "done");
    assert_eq!(changed.status("COPY --from=build"), "done");
}

/// Registry caches in each form (an image manifest; an index of blobs
/// with zstd layers; Docker media types): a second runner runs no RUN and
/// makes the first one's image. It downloads only the layers its store
/// needs (the result's: no layer of a stage it only took from the cache);
/// when it pushes to the registry the layers are in, it downloads no layer
/// and uploads nothing, and the registry has the very manifest the first
/// runner pushed.
#[test]
fn a_registry_cache_travels_to_a_second_runner() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    let registry = Registry::start();
    let a = Runner::new("a", &registry.base(), "2001-01-01 00:00:00");
    let caches = [
        registry.name("cache/app:manifest"),
        registry.name("cache/app:index"),
        registry.name("cache/app:docker"),
    ];
    let image_a = registry.name("app/a:1");
    let built = first_build(
        &a,
        &[
            "--push",
            "-t",
            &image_a,
            "--cache-to",
            &format!("type=registry,ref={},mode=max", caches[0]),
            "--cache-to",
            &format!(
                "type=registry,ref={},mode=max,image-manifest=false,compression=zstd",
                caches[1]
            ),
            "--cache-to",
            &format!(
                "type=registry,ref={},mode=max,oci-mediatypes=false",
                caches[2]
            ),
        ],
    );
    // Each form as asked: an OCI image manifest of gzip layers (BuildKit's
    // default since v0.21); with image-manifest=false an OCI index whose
    // layers are zstd (compression=zstd); with oci-mediatypes=false a
    // Docker manifest list (an image manifest needs OCI's types).
    let raw = |reference: &str| -> serde_json::Value {
        let raw = kiln_testsupport::image::skopeo_raw_manifest(
            &format!("docker://{reference}"),
            None,
            None,
        )
        .unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    let manifest = raw(&caches[0]);
    assert_eq!(
        manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{manifest}"
    );
    let layer_types = |entries: &serde_json::Value| -> Vec<String> {
        let mut types: Vec<String> = entries
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["mediaType"].as_str().unwrap().to_string())
            .filter(|t| !t.contains("config"))
            .collect();
        types.dedup();
        types
    };
    assert_eq!(
        layer_types(&manifest["layers"]),
        ["application/vnd.oci.image.layer.v1.tar+gzip"],
        "{manifest}"
    );
    let index = raw(&caches[1]);
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    assert_eq!(
        layer_types(&index["manifests"]),
        ["application/vnd.oci.image.layer.v1.tar+zstd"],
        "{index}"
    );
    let docker = raw(&caches[2]);
    assert_eq!(
        docker["mediaType"], "application/vnd.docker.distribution.manifest.list.v2+json",
        "{docker}"
    );
    assert_eq!(
        layer_types(&docker["manifests"]),
        ["application/vnd.docker.image.rootfs.diff.tar.gzip"],
        "{docker}"
    );
    let result_layers = registry.manifest_layers(&image_a);
    let cache_layers = registry.manifest_layers(&caches[0]);
    let is_layer = |d: &String| result_layers.contains(d) || cache_layers.contains(d);
    let from = format!("type=registry,ref={}", caches[0]);

    let b = Runner::new("b", &registry.base(), "2010-06-15 12:34:56");
    let before = registry.requests();
    let second = b.build(&["--cache-from", &from]).ok();
    assert!(second.runs_executed().is_empty(), "{:?}", second.steps);
    assert!(second.warnings.is_empty(), "{:?}", second.warnings);
    assert_eq!(second.image_id(), built.image_id());
    let mut downloaded: Vec<String> = registry
        .blob_gets_since(before)
        .into_iter()
        .filter(is_layer)
        .collect();
    downloaded.sort();
    let mut wanted = result_layers.clone();
    wanted.sort();
    assert_eq!(downloaded, wanted, "only the result's layers, once each");

    std::fs::write(
        b.context().join("src/util.c"),
        "int helper(void) { return 2; }\n",
    )
    .unwrap();
    let changed = b.build(&["--cache-from", &from]).ok();
    assert_eq!(changed.status(RUN_DEPS), "cached");
    assert_eq!(changed.status(RUN_COMPILE), "done");
    assert_eq!(changed.status("COPY --from=deps"), "cached");

    for (n, cache) in caches.iter().enumerate() {
        let b = Runner::new("b", &registry.base(), "2010-06-15 12:34:56");
        let tag = registry.name(&format!("app/a:b{n}"));
        let from = format!("type=registry,ref={cache}");
        let before = registry.requests();
        let pushed = b.build(&["--cache-from", &from, "--push", "-t", &tag]).ok();
        assert!(
            pushed.runs_executed().is_empty(),
            "{cache}: {:?}",
            pushed.steps
        );
        assert!(pushed.warnings.is_empty(), "{cache}: {:?}", pushed.warnings);
        assert_eq!(pushed.image_id(), built.image_id(), "{cache}");
        let downloaded: Vec<String> = registry
            .blob_gets_since(before)
            .into_iter()
            .filter(is_layer)
            .collect();
        assert!(downloaded.is_empty(), "{cache}: downloaded {downloaded:?}");
        if n == 1 {
            // The base was pulled without its layer; `kiln layers` reads
            // it, fetched first.
            let base_layer = result_layers[0].replace("sha256:", "");
            let blob = b.root().join("blobs/sha256").join(&base_layer);
            assert!(!blob.is_file(), "the base's layer was not downloaded");
            let listed = common::kiln_ok(&b.root(), &["layers", &registry.base()]);
            assert!(listed.contains("kiln import"), "{listed}");
            assert!(blob.is_file());
        }
        if n == 0 {
            // The store lists and removes such an image as any other.
            let listed = common::kiln_ok(&b.root(), &["images"]);
            assert!(listed.contains("app/a"), "{listed}");
            common::kiln_ok(&b.root(), &["rmi", &tag]);
            let listed = common::kiln_ok(&b.root(), &["images"]);
            assert!(!listed.contains("app/a"), "{listed}");
        }
        if n == 2 {
            // The image is tagged with its layers where they are; a pull
            // fetches them.
            let stored = |d: &String| {
                let hex = d.replace("sha256:", "");
                b.root().join("blobs/sha256").join(hex).is_file()
            };
            assert!(!result_layers.iter().any(stored));
            common::kiln_ok(&b.root(), &["pull", &tag]);
            assert!(result_layers.iter().all(stored));
        }
        if n != 1 {
            // The same layers (gzip, as A pushed them): the same manifest,
            // and nothing to upload.
            assert_eq!(pushed.pushed_digest(), built.pushed_digest(), "{cache}");
            let uploads = registry.uploads_since(before);
            assert!(uploads.is_empty(), "{cache}: uploaded {uploads:?}");
        }
    }

    // A cache export with force-compression converts the steps' layers it
    // took from the gzip cache (left there, lazy, by a push-only build):
    // it fetches them first, as BuildKit does.
    let forced = registry.name("cache/app:forced");
    let d = Runner::new("d", &registry.base(), "2010-06-15 12:34:56");
    let converted = d
        .build(&[
            "--cache-from",
            &from,
            "--push",
            "-t",
            &registry.name("app/a:forced"),
            "--cache-to",
            &format!("type=registry,ref={forced},mode=max,compression=zstd,force-compression=true"),
        ])
        .ok();
    assert!(
        converted.runs_executed().is_empty(),
        "{:?}",
        converted.steps
    );
    assert_eq!(
        layer_types(&raw(&forced)["layers"]),
        ["application/vnd.oci.image.layer.v1.tar+zstd"]
    );

    // To another repository: each layer is mounted from where it is; only
    // the config (this repository has none) is uploaded.
    let b = Runner::new("b", &registry.base(), "2010-06-15 12:34:56");
    let before = registry.requests();
    let other_image = registry.name("app/other:1");
    let other = b
        .build(&["--cache-from", &from, "--push", "-t", &other_image])
        .ok();
    assert_eq!(other.pushed_digest(), built.pushed_digest());
    let requests = &registry.proxy.requests()[before..];
    let mounts = requests.iter().filter(|r| r.contains("?mount=")).count();
    assert_eq!(mounts, result_layers.len(), "{requests:?}");
    let uploads = registry.uploads_since(before);
    let config = built.image_id().replace("sha256:", "");
    assert!(
        uploads.len() == 1 && uploads[0].contains(&config),
        "only the config {config}: {uploads:?}"
    );
    let downloaded: Vec<String> = registry
        .blob_gets_since(before)
        .into_iter()
        .filter(is_layer)
        .collect();
    assert!(downloaded.is_empty(), "downloaded {downloaded:?}");
    // To another registry: each layer is fetched from where it is, once,
    // and uploaded; that registry gets the same manifest.
    let elsewhere = RegistryServer::start_plain().unwrap();
    let c = Runner::new("c", &registry.base(), "2012-12-12 12:12:12");
    let before = registry.requests();
    let far = format!("{}/app/far:1", elsewhere.host);
    let moved = c.build(&["--cache-from", &from, "--push", "-t", &far]).ok();
    assert!(moved.runs_executed().is_empty(), "{:?}", moved.steps);
    assert_eq!(moved.pushed_digest(), built.pushed_digest());
    let mut fetched: Vec<String> = registry
        .blob_gets_since(before)
        .into_iter()
        .filter(is_layer)
        .collect();
    fetched.sort();
    assert_eq!(fetched, wanted, "each of the result's layers, once");
    assert_eq!(registry.manifest_layers(&far), result_layers);

    // The store tags the image, and its base, with their layers where they
    // are; a save and a run fetch them.
    let base_layer = result_layers[0].replace("sha256:", "");
    let stored = |hex: &str| b.root().join("blobs/sha256").join(hex).is_file();
    assert!(!stored(&base_layer), "the base's layer was not downloaded");
    let saved = b.dir.path().join("saved");
    common::kiln_ok(
        &b.root(),
        &[
            "save",
            "--format",
            "oci",
            "-o",
            saved.to_str().unwrap(),
            &registry.base(),
        ],
    );
    assert!(stored(&base_layer));
    assert!(saved.join("blobs/sha256").join(&base_layer).is_file());
    let app = common::kiln_ok(&b.root(), &["run", "--rm", &other_image]);
    assert!(app.contains("app_main"), "{app}");
}

/// A registry cache that cannot be used — its registry down, a layer
/// missing or damaged on the way — is one warning and the build runs what
/// it cannot take, or takes it from the next `--cache-from`; a failed export fails the build unless it says
/// `ignore-error=true`.
#[test]
fn a_broken_registry_cache_is_a_warning_and_the_build_runs_without_it() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    let registry = Registry::start();
    let a = Runner::new("a", &registry.base(), "2001-01-01 00:00:00");
    let cache = registry.name("cache/app:1");
    let image = registry.name("app/a:1");
    first_build(
        &a,
        &[
            "--cache-to",
            &format!("type=registry,ref={cache},mode=max"),
            "--push",
            "-t",
            &image,
        ],
    );
    // The result's second layer, the archives its COPY --from=deps takes
    // (over 64 KiB): a layer the second runner's store needs.
    let deps_layer = registry.manifest_layers(&image)[1].clone();
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let missing = registry.faulty(FaultPlan {
        status_faults: vec![kiln_testsupport::StatusFault {
            status: 404,
            times: 100,
            retry_after: None,
            path_contains: deps_layer.clone(),
        }],
        ..FaultPlan::default()
    });
    let damaged = registry.faulty(FaultPlan {
        flip_blob_byte_at: Some(20_000),
        ..FaultPlan::default()
    });
    // Down: nothing is taken, both RUNs run. A layer missing or damaged:
    // the build goes on without the source, and runs what it cannot have.
    // The compile step, in a stage built alongside, keeps the source's
    // layer when it took it before the deps step found its own missing,
    // and runs otherwise (the source is dropped for what follows): the
    // two stages' order decides, and both happen (seen in CI).
    let both = [RUN_DEPS, RUN_COMPILE];
    let cases = [
        (
            format!("{down}/cache/app:1"),
            "importing cache manifest from",
            &both[..],
        ),
        (
            format!("{}/cache/app:1", missing.host),
            "does not have",
            &both[..1],
        ),
        (
            format!("{}/cache/app:1", damaged.host),
            "hash to",
            &both[..1],
        ),
    ];
    for (n, (from, why, runs)) in cases.iter().enumerate() {
        let b = Runner::new("b", &registry.base(), "2003-03-03 00:00:00");
        let built = b
            .build(&["--cache-from", &format!("type=registry,ref={from}")])
            .ok();
        assert_eq!(built.warnings.len(), 1, "case {n}: {:?}", built.warnings);
        let warning = &built.warnings[0];
        assert!(
            warning.contains(from.as_str()) && warning.contains(why),
            "case {n}: {warning}"
        );
        assert!(warning.contains("building without it"), "{warning}");
        let ran = built.runs_executed();
        for expected in runs.iter() {
            assert!(
                ran.iter().any(|r| r.starts_with(expected)),
                "case {n}: {expected} did not run: {:?}",
                built.steps
            );
        }
        assert!(
            ran.iter().all(|r| both.iter().any(|b| r.starts_with(b))),
            "case {n}: {:?}",
            built.steps
        );
        let app = common::kiln_ok(&b.root(), &["run", "--rm", &built.image_id()]);
        assert!(app.contains("app_main"), "{app}");
    }
    assert!(damaged.flips_injected() > 0 && missing.statuses_injected() > 0);

    // Sources are tried in order: the one that is down is one warning, the
    // next one gives every step.
    let b = Runner::new("b", &registry.base(), "2003-03-03 00:00:00");
    let two = b
        .build(&[
            "--cache-from",
            &format!("type=registry,ref={down}/cache/app:1"),
            "--cache-from",
            &format!("type=registry,ref={cache}"),
        ])
        .ok();
    assert_eq!(two.warnings.len(), 1, "{:?}", two.warnings);
    assert!(two.warnings[0].contains(&down), "{:?}", two.warnings);
    assert!(two.runs_executed().is_empty(), "{:?}", two.steps);

    let b = Runner::new("b", &registry.base(), "2003-03-03 00:00:00");
    let to_down = format!("type=registry,ref={down}/cache/app:1");
    let failed = b.build(&["--cache-to", &to_down]);
    assert!(!failed.output.status.success());
    assert!(
        failed
            .stderr()
            .contains(&format!("exporting cache to registry {down}/cache/app:1")),
        "{}",
        failed.stderr()
    );
    let ignored = b
        .build(&["--cache-to", &format!("{to_down},ignore-error=true")])
        .ok();
    assert_eq!(ignored.warnings.len(), 1, "{:?}", ignored.warnings);
    assert!(
        ignored.warnings[0].contains("ignore-error=true"),
        "{:?}",
        ignored.warnings
    );
    // Once in all: not also as a log line beside the warning event.
    assert_eq!(
        ignored.stderr().matches("ignore-error=true").count(),
        1,
        "{}",
        ignored.stderr()
    );
}

/// Flips a byte in the middle of a file.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// The cache's layer blobs in the layout at `dir`, from its config.
fn layout_layers(dir: &Path) -> Vec<PathBuf> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let blob = |digest: &str| dir.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| blob(l["digest"].as_str().unwrap()))
        .collect()
}

/// The media type of each layer of the cache manifest in the layout at `dir`.
fn layout_layer_types(dir: &Path) -> Vec<String> {
    let index = read_json(&dir.join("index.json"));
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = read_json(&dir.join("blobs/sha256").join(&digest["sha256:".len()..]));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

/// A cache export takes BuildKit's compression attributes:
/// `compression=uncompressed` (which another runner's build takes its steps
/// from as from any cache), `compression-level=` (gzip's header says
/// which), and `force-compression=true`, which converts a layer the store
/// holds compressed otherwise (here, taken from another cache) where
/// without it the layer goes as it is.
#[test]
fn cache_exports_take_uncompressed_levels_and_force_compression() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    let registry = Registry::start();
    let a = Runner::new("a", &registry.base(), "2001-01-01 00:00:00");
    let shared = tempfile::tempdir().unwrap();
    let cache = |name: &str| shared.path().join(name);
    let to = |name: &str, attributes: &str| {
        format!(
            "type=local,dest={},mode=max{attributes}",
            cache(name).display()
        )
    };
    let built = first_build(
        &a,
        &[
            "--cache-to",
            &to("gzip", ""),
            "--cache-to",
            &to("plain", ",compression=uncompressed"),
            "--cache-to",
            &to("fast", ",compression-level=1"),
        ],
    );
    let (gzip, zstd, plain) = (
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.v1.tar",
    );
    let all = |dir: &str, wanted: &str| {
        let types = layout_layer_types(&cache(dir));
        assert!(!types.is_empty(), "{dir}");
        assert!(types.iter().all(|t| t == wanted), "{dir}: {types:?}");
    };
    all("gzip", gzip);
    all("plain", plain);
    all("fast", gzip);
    let xfl = |dir: &str| -> Vec<u8> {
        layout_layers(&cache(dir))
            .iter()
            .map(|blob| std::fs::read(blob).unwrap()[8])
            .collect()
    };
    assert!(xfl("fast").iter().all(|&x| x == 4), "{:?}", xfl("fast"));
    assert!(xfl("gzip").iter().all(|&x| x == 0), "{:?}", xfl("gzip"));

    // An uncompressed cache gives another runner every step.
    let c = Runner::new("c", &registry.base(), "2001-01-01 00:00:00");
    let from_plain = format!("type=local,src={}", cache("plain").display());
    let taken = c.build(&["--cache-from", &from_plain]).ok();
    assert!(taken.runs_executed().is_empty(), "{:?}", taken.steps);
    assert_eq!(taken.image_id(), built.image_id());

    // Runner B takes its steps (gzip layers) from the gzip cache, then
    // exports them: as they are, or converted with force-compression.
    let b = Runner::new("b", &registry.base(), "2001-01-01 00:00:00");
    let from_gzip = format!("type=local,src={}", cache("gzip").display());
    let second = b
        .build(&[
            "--cache-from",
            &from_gzip,
            "--cache-to",
            &to("kept", ",compression=zstd"),
            "--cache-to",
            &to("forced", ",compression=zstd,force-compression=true"),
        ])
        .ok();
    assert!(second.runs_executed().is_empty(), "{:?}", second.steps);
    all("kept", gzip);
    all("forced", zstd);
}

/// Copies a directory tree (an OCI layout).
fn copy_dir(from: &Path, to: &Path) {
    common::run_ok(std::process::Command::new("cp").arg("-a").arg(from).arg(to));
}

#[test]
fn a_broken_local_cache_is_a_warning_and_the_build_runs_without_it() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    let registry = Registry::start();
    let a = Runner::new("a", &registry.base(), "2001-01-01 00:00:00");
    let shared = tempfile::tempdir().unwrap();
    let good = shared.path().join("good");
    first_build(
        &a,
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", good.display()),
        ],
    );

    // A damaged layer, a missing layer, a format from a newer kiln, and no
    // cache at all.
    let damaged = shared.path().join("damaged");
    copy_dir(&good, &damaged);
    for layer in layout_layers(&damaged) {
        corrupt(&layer);
    }
    let missing = shared.path().join("missing");
    copy_dir(&good, &missing);
    for layer in layout_layers(&missing) {
        std::fs::remove_file(layer).unwrap();
    }
    let newer = shared.path().join("newer");
    copy_dir(&good, &newer);
    let cases = [
        (damaged, "digest"),
        (missing, "No such file"),
        (newer.clone(), "newer than this kiln reads"),
        (shared.path().join("nothing"), "index.json"),
    ];
    rewrite_config_version(&newer, 2);
    for (n, (dir, why)) in cases.iter().enumerate() {
        let b = Runner::new("b", &registry.base(), "2003-03-03 00:00:00");
        let from = format!("type=local,src={}", dir.display());
        let built = b.build(&["--cache-from", &from]).ok();
        assert_eq!(built.warnings.len(), 1, "case {n}: {:?}", built.warnings);
        let warning = &built.warnings[0];
        assert!(
            warning.contains(&dir.display().to_string()) && warning.contains(why),
            "case {n}: {warning}"
        );
        assert!(warning.contains("building without it"), "{warning}");
        assert_eq!(
            built.runs_executed().len(),
            2,
            "case {n}: {:?}",
            built.steps
        );
        // The image is whole: what it runs is there.
        let app = common::kiln_ok(&b.root(), &["run", "--rm", &built.image_id()]);
        assert!(app.contains("app_main"), "{app}");
    }
}

/// Makes the cache config of the layout at `dir` claim format `version`
/// (the manifest and index re-pointed at the new bytes).
fn rewrite_config_version(dir: &Path, version: u64) {
    let blobs = dir.join("blobs/sha256");
    let read = |digest: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(blobs.join(&digest["sha256:".len()..])).unwrap())
            .unwrap()
    };
    let write = |value: &serde_json::Value| -> (String, usize) {
        let bytes = serde_json::to_vec(value).unwrap();
        let digest = kiln_layers::Digest::of(&bytes);
        std::fs::write(blobs.join(digest.hex()), &bytes).unwrap();
        (digest.to_string(), bytes.len())
    };
    let mut index = read_json(&dir.join("index.json"));
    let mut manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    config["schemaVersion"] = version.into();
    let (digest, size) = write(&config);
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    let (digest, size) = write(&manifest);
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Builds exporting into one local cache directory at once each keep
/// their tag: `index.json` is rewritten under `index.json.lock`, as
/// BuildKit's `ociindex` holds it. An empty `--cache-from` or `--cache-to`
/// is skipped, as buildx skips it.
#[test]
fn concurrent_local_exports_keep_every_tag() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    const NAMES: [&str; 8] = ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"];
    let registry = Registry::start();
    let runners: Vec<Runner> = (NAMES.iter())
        .map(|name| Runner::new(name, &registry.base(), "2001-01-01 00:00:00"))
        .collect();
    let shared = tempfile::tempdir().unwrap();
    let cache = shared.path().join("cache");
    std::thread::scope(|scope| {
        let builds: Vec<_> = (runners.iter())
            .map(|runner| {
                let to = format!("type=local,dest={},tag={}", cache.display(), runner.name);
                scope.spawn(move || {
                    runner
                        .build(&["--cache-to", &to, "--cache-from", "", "--cache-to", ""])
                        .ok()
                })
            })
            .collect();
        for build in builds {
            build.join().unwrap();
        }
    });
    let index = read_json(&cache.join("index.json"));
    let mut tags: Vec<&str> = (index["manifests"].as_array().unwrap().iter())
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    tags.sort();
    assert_eq!(tags, NAMES, "{index}");
}

#[test]
fn unsupported_cache_types_and_keys_are_refused_before_building() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    for (flag, value, wanted) in [
        ("--cache-to", "type=gha", "type=gha is not supported"),
        ("--cache-to", "type=s3,bucket=b", "type=s3 is not supported"),
        (
            "--cache-from",
            "type=azblob,name=x",
            "type=azblob is not supported",
        ),
        (
            "--cache-to",
            "type=local,dest=/tmp/x,reset=true",
            "reset= is not an option",
        ),
        (
            "--cache-to",
            "type=registry,ref=localhost:5000/c:t@sha256:1111111111111111111111111111111111111111111111111111111111111111",
            "a cache is pushed under a tag, not to a digest",
        ),
    ] {
        let out = common::kiln(
            dir.path(),
            &["build", flag, value, dir.path().to_str().unwrap()],
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{flag} {value}")) && stderr.contains(wanted),
            "{stderr}"
        );
    }
}
