//! `kiln build --platform` and `kiln build --pull` end to end, as root,
//! against a real registry (kiln-testsupport's `docker-registry`).
//!
//! The base images are made here as OCI layouts (a busybox root filesystem
//! layer plus a small per-image layer) and pushed with `skopeo copy --all`:
//! a two-platform index (linux/amd64 + linux/arm64) for `--platform`, and
//! two different images pushed in turn under one tag for `--pull`. The
//! arm64 image's `/bin/sh` is a real aarch64 ELF program (it only exits 0),
//! so a RUN in an arm64 stage meets what it would meet on this machine with
//! a real arm64 image: `exec format error`, unless binfmt_misc has an
//! aarch64 emulator registered.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{kiln, kiln_ok, run_ok};
use kiln_testsupport::image::{digest_of, skopeo_copy};
use kiln_testsupport::{BusyboxRootfs, RegistryServer};
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A file of an image's own layer (on top of busybox).
struct Extra {
    path: &'static str,
    contents: Vec<u8>,
    mode: u32,
}

impl Extra {
    fn file(path: &'static str, contents: impl Into<Vec<u8>>) -> Extra {
        Extra {
            path,
            contents: contents.into(),
            mode: 0o644,
        }
    }
}

/// One platform's image as pushed.
#[derive(Debug, Clone)]
struct PushedManifest {
    platform: String,
    digest: String,
    /// Uncompressed layers: each layer's digest is its diff id.
    diff_ids: Vec<String>,
}

/// What [`push_image`] pushed.
#[derive(Debug)]
struct PushedImage {
    /// The digest the tag resolves to (the index's, for several platforms).
    digest: String,
    manifests: Vec<PushedManifest>,
}

impl PushedImage {
    fn platform(&self, platform: &str) -> &PushedManifest {
        self.manifests
            .iter()
            .find(|m| m.platform == platform)
            .unwrap_or_else(|| panic!("no {platform} in {:?}", self.manifests))
    }
}

/// An aarch64 Linux program that calls exit(0): ELF header, one PT_LOAD
/// program header, three instructions. On x86_64 without an emulator the
/// kernel refuses it with ENOEXEC, as it would a real arm64 `/bin/sh`.
fn aarch64_exit0_elf() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let code: [u32; 3] = [
        0xd280_0000, // mov x0, #0
        0xd280_0ba8, // mov x8, #93 (exit)
        0xd400_0001, // svc #0
    ];
    let total = HEADERS + 4 * code.len() as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for word in [0, BASE, BASE, total, total, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    for instruction in code {
        elf.extend_from_slice(&instruction.to_le_bytes());
    }
    assert_eq!(elf.len() as u64, total);
    elf
}

/// Whether binfmt_misc would run an aarch64 program on this machine.
fn aarch64_emulated() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc/sys/fs/binfmt_misc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read_to_string(entry.path()).is_ok_and(|text| {
            // The aarch64 ELF magic as binfmt_misc prints it (e_machine 0xb7).
            text.starts_with("enabled") && text.contains("7f454c460201010000000000000000000200b700")
        })
    })
}

fn write_blob(layout: &Path, bytes: &[u8]) -> (String, u64) {
    let digest = digest_of(bytes);
    let hex = digest.trim_start_matches("sha256:");
    std::fs::write(layout.join("blobs/sha256").join(hex), bytes).unwrap();
    (digest, bytes.len() as u64)
}

fn descriptor(media_type: &str, (digest, size): &(String, u64)) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// A tar of `extras` (only the files, no directory entries, so the busybox
/// layer's directories keep their modes).
fn extras_tar(work: &Path, extras: &[Extra]) -> Vec<u8> {
    let tree = tempfile::tempdir_in(work).unwrap();
    for extra in extras {
        let path = tree.path().join(extra.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &extra.contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(extra.mode)).unwrap();
    }
    let tar = tree.path().join("layer.tar");
    let mut command = Command::new("tar");
    command
        .args([
            "--format=gnu",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--mtime=@1700000000",
            "-C",
        ])
        .arg(tree.path())
        .arg("-cf")
        .arg(&tar)
        .args(extras.iter().map(|e| e.path));
    run_ok(&mut command);
    std::fs::read(&tar).unwrap()
}

/// Pushes an image to `registry` as `repository:tag`: one manifest per
/// platform (`os/arch`), each with the busybox layer and a layer of its
/// `extras` (and `/etc/platform`); an index when there are several.
fn push_image(
    registry: &RegistryServer,
    name: &str,
    platforms: &[(&str, Vec<Extra>)],
) -> PushedImage {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let busybox_tar = work.path().join("busybox.tar");
    BusyboxRootfs::with_mount_points()
        .write_tar(&busybox_tar)
        .unwrap();
    let busybox = write_blob(&layout, &std::fs::read(&busybox_tar).unwrap());

    let mut manifests = Vec::new();
    let mut index_entries = Vec::new();
    for (platform, extras) in platforms {
        let (os, arch) = platform.split_once('/').unwrap();
        let mut files: Vec<Extra> = extras
            .iter()
            .map(|e| Extra {
                path: e.path,
                contents: e.contents.clone(),
                mode: e.mode,
            })
            .collect();
        files.push(Extra::file("etc/platform", platform.as_bytes()));
        let own = write_blob(&layout, &extras_tar(work.path(), &files));
        let diff_ids = vec![busybox.0.clone(), own.0.clone()];
        let config = json!({
            "architecture": arch,
            "os": os,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["sh"],
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [
                {"created_by": "busybox root filesystem"},
                {"created_by": format!("{platform} files")},
            ],
        });
        let config_blob = write_blob(&layout, config.to_string().as_bytes());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config_blob),
            "layers": [descriptor(OCI_LAYER_TAR, &busybox), descriptor(OCI_LAYER_TAR, &own)],
        });
        let manifest_blob = write_blob(&layout, manifest.to_string().as_bytes());
        let mut entry = descriptor(OCI_MANIFEST, &manifest_blob);
        entry["platform"] = json!({"os": os, "architecture": arch});
        index_entries.push(entry);
        manifests.push(PushedManifest {
            platform: platform.to_string(),
            digest: manifest_blob.0.clone(),
            diff_ids,
        });
    }
    let mut top = if index_entries.len() == 1 {
        let mut only = index_entries[0].clone();
        only.as_object_mut().unwrap().remove("platform");
        only
    } else {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": index_entries,
        });
        descriptor(
            OCI_INDEX,
            &write_blob(&layout, index.to_string().as_bytes()),
        )
    };
    let tag = name.rsplit_once(':').unwrap().1;
    top["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let digest = top["digest"].as_str().unwrap().to_string();
    std::fs::write(
        layout.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [top]}).to_string(),
    )
    .unwrap();
    skopeo_copy(
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{}/{name}", registry.host),
        None,
        None,
    )
    .unwrap();
    PushedImage { digest, manifests }
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

/// A fresh, empty store and the registry it builds against.
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

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    /// `kiln build --insecure-registry REGISTRY ARGS…`.
    fn build(&self, args: &[&str]) -> Output {
        let mut all = vec!["build", "--insecure-registry", &self.registry.host];
        all.extend_from_slice(args);
        kiln(&self.root(), &all)
    }

    /// `REGISTRY/name`.
    fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.registry.host)
    }

    /// What the store's `index.json` tags `reference` with.
    fn stored_tag(&self, reference: &str) -> Value {
        let index: Value =
            serde_json::from_slice(&std::fs::read(self.root().join("index.json")).unwrap())
                .unwrap();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == reference)
            .unwrap_or_else(|| panic!("{reference} is not tagged in {index}"))
            .clone()
    }

    /// How many API requests the registry has logged so far.
    fn registry_requests(&self) -> usize {
        self.registry.log().matches("/v2/").count()
    }
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

/// `kiln inspect REF` → (full image config, manifest).
fn inspect(root: &Path, reference: &str) -> (Value, Value) {
    let out = kiln_ok(root, &["inspect", reference]);
    let value: Value = serde_json::from_str(&out).unwrap();
    (
        value[0]["ImageConfig"].clone(),
        value[0]["Manifest"].clone(),
    )
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn diff_ids(config: &Value) -> Vec<String> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// The two-platform index every `--platform` test builds from:
/// amd64 and arm64 images that differ in `/etc/platform`, an
/// `/<arch>-only` file, and (arm64) an aarch64 `/bin/sh`.
fn push_multi_platform(fixture: &Fixture, name: &str) -> PushedImage {
    let mut sh = Extra::file("bin/sh", aarch64_exit0_elf());
    sh.mode = 0o755;
    push_image(
        &fixture.registry,
        name,
        &[
            ("linux/amd64", vec![Extra::file("amd64-only", "amd64\n")]),
            (
                "linux/arm64",
                vec![Extra::file("arm64-only", "arm64\n"), sh],
            ),
        ],
    )
}

#[test]
fn platform_arm64_picks_the_arm64_manifest_and_expands_target_args() {
    assert_eq!(
        kiln_testsupport::image::host_platform(),
        "linux/amd64",
        "these tests take amd64 as the build platform"
    );
    let fixture = Fixture::new();
    let pushed = push_multi_platform(&fixture, "test/multi:latest");
    let arm64 = pushed.platform("linux/arm64");
    let base = fixture.reference("test/multi:latest");
    let dockerfile = format!(
        "FROM {base}\n\
         ARG TARGETPLATFORM\n\
         ARG TARGETARCH\n\
         ARG TARGETVARIANT\n\
         COPY hello.txt /hello.txt\n\
         LABEL target.platform=$TARGETPLATFORM target.arch=$TARGETARCH target.variant=v:$TARGETVARIANT\n\
         ENV BUILT_FOR=$TARGETARCH\n"
    );
    let ctx = context(&[("Dockerfile", &dockerfile), ("hello.txt", "hello\n")]);
    let rootfs = fixture.out("rootfs");
    let local = format!("type=local,dest={}", rootfs.display());
    ok(&fixture.build(&[
        "--platform",
        "linux/arm64",
        "-t",
        "out:arm64",
        "-o",
        "type=image",
        "-o",
        &local,
        ctx.path().to_str().unwrap(),
    ]));

    // The arm64 manifest's layers, and the COPY on top.
    assert_eq!(read(rootfs.join("etc/platform")), "linux/arm64");
    assert_eq!(read(rootfs.join("arm64-only")), "arm64\n");
    assert!(!rootfs.join("amd64-only").exists());
    assert_eq!(read(rootfs.join("hello.txt")), "hello\n");

    let (config, manifest) = inspect(&fixture.root(), "out:arm64");
    assert_eq!(config["architecture"], "arm64", "{config}");
    assert_eq!(config["os"], "linux", "{config}");
    let layers = diff_ids(&config);
    assert_eq!(layers[..2], arm64.diff_ids[..], "{config}");
    assert_eq!(layers.len(), 3, "base layers + COPY: {config}");
    assert_eq!(manifest["layers"][1]["digest"], arm64.diff_ids[1].as_str());
    assert_eq!(
        config["config"]["Labels"],
        json!({"target.platform": "linux/arm64", "target.arch": "arm64", "target.variant": "v:"})
    );
    // As BuildKit normalizes it: arm64's default variant is not written.
    assert!(config["variant"].is_null(), "{config}");
    let env = config["config"]["Env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "BUILT_FOR=arm64"), "{env:?}");

    // The store keeps the index under the base's tag, and of its images
    // the arm64 one only: inspect shows that one.
    let stored = fixture.stored_tag(&base);
    assert_eq!(stored["digest"], pushed.digest.as_str(), "{stored}");
    assert_eq!(stored["mediaType"], OCI_INDEX);
    let (base_config, base_manifest) = inspect(&fixture.root(), &base);
    assert_eq!(base_config["architecture"], "arm64");
    assert_eq!(
        base_manifest["layers"][1]["digest"],
        arm64.diff_ids[1].as_str()
    );
    let amd64 = pushed.platform("linux/amd64");
    let hex = amd64.diff_ids[1].trim_start_matches("sha256:");
    assert!(!fixture.root().join("blobs/sha256").join(hex).exists());

    // DOCKER_DEFAULT_PLATFORM is the default --platform, as buildx reads
    // it; a --platform flag wins over it.
    for (flags, tag, arch) in [
        (&[][..], "out:env", "arm64"),
        (&["--platform", "linux/amd64"][..], "out:flag", "amd64"),
    ] {
        let mut args = vec!["build", "--insecure-registry", &fixture.registry.host];
        args.extend_from_slice(flags);
        args.extend(["-t", tag, ctx.path().to_str().unwrap()]);
        let out = common::kiln_command()
            .arg("--root")
            .arg(fixture.root())
            .args(&args)
            .env("DOCKER_DEFAULT_PLATFORM", "linux/arm64")
            .output()
            .unwrap();
        ok(&out);
        let (config, _) = inspect(&fixture.root(), tag);
        assert_eq!(config["architecture"], arch, "{flags:?}: {config}");
    }
}

/// `FROM --platform=$BUILDPLATFORM` picks the host's manifest of the same
/// index while the other stage picks the target's. The index is reached
/// under two names here; see
/// `one_reference_at_two_platforms_in_one_build` for one name.
#[test]
fn build_platform_stage_and_target_stage_in_one_build() {
    let fixture = Fixture::new();
    let pushed = push_multi_platform(&fixture, "test/multi:latest");
    // The same index under a second tag (registry-side copy, same digest).
    skopeo_copy(
        &format!("docker://{}", fixture.reference("test/multi:latest")),
        &format!("docker://{}", fixture.reference("test/multi:tools")),
        None,
        None,
    )
    .unwrap();
    let amd64 = pushed.platform("linux/amd64");
    let arm64 = pushed.platform("linux/arm64");
    let dockerfile = format!(
        "FROM --platform=$BUILDPLATFORM {tools} AS tools\n\
         ARG TARGETPLATFORM\n\
         ARG BUILDARCH\n\
         RUN cat /etc/platform > /built-on && echo \"$BUILDARCH for $TARGETPLATFORM\" > /args\n\
         FROM {target}\n\
         COPY --from=tools /built-on /args /from-tools/\n",
        tools = fixture.reference("test/multi:tools"),
        target = fixture.reference("test/multi:latest"),
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let rootfs = fixture.out("rootfs");
    let local = format!("type=local,dest={}", rootfs.display());
    ok(&fixture.build(&[
        "--platform",
        "linux/arm64",
        "-t",
        "out:mixed",
        "-o",
        "type=image",
        "-o",
        &local,
        ctx.path().to_str().unwrap(),
    ]));
    // The RUN ran in the amd64 image (its /etc/platform), natively.
    assert_eq!(read(rootfs.join("from-tools/built-on")), "linux/amd64");
    assert_eq!(
        read(rootfs.join("from-tools/args")),
        "amd64 for linux/arm64\n"
    );
    assert_eq!(read(rootfs.join("etc/platform")), "linux/arm64");
    let (config, _) = inspect(&fixture.root(), "out:mixed");
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(diff_ids(&config)[..2], arm64.diff_ids[..]);
    // The tools tag names the index, of which the store holds both images
    // now (the amd64 one for the tools stage).
    assert_eq!(
        fixture.stored_tag(&fixture.reference("test/multi:tools"))["digest"],
        pushed.digest.as_str()
    );
    let (tools, _) = inspect(&fixture.root(), &fixture.reference("test/multi:tools"));
    assert_eq!(diff_ids(&tools), amd64.diff_ids);
}

/// One reference used at two platforms in one build: each stage must get
/// its own platform's manifest.
#[test]
fn one_reference_at_two_platforms_in_one_build() {
    let fixture = Fixture::new();
    let pushed = push_multi_platform(&fixture, "test/multi:latest");
    let arm64 = pushed.platform("linux/arm64");
    let base = fixture.reference("test/multi:latest");
    let dockerfile = format!(
        "FROM --platform=$BUILDPLATFORM {base} AS tools\n\
         RUN cat /etc/platform > /built-on\n\
         FROM {base}\n\
         COPY --from=tools /built-on /built-on\n"
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let rootfs = fixture.out("rootfs");
    let local = format!("type=local,dest={}", rootfs.display());
    ok(&fixture.build(&[
        "--platform",
        "linux/arm64",
        "-t",
        "out:same-ref",
        "-o",
        "type=image",
        "-o",
        &local,
        ctx.path().to_str().unwrap(),
    ]));
    assert_eq!(read(rootfs.join("built-on")), "linux/amd64");
    assert_eq!(read(rootfs.join("etc/platform")), "linux/arm64");
    let (config, _) = inspect(&fixture.root(), "out:same-ref");
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(diff_ids(&config)[..2], arm64.diff_ids[..]);
}

/// A base stored for one platform is not used for another: a build for
/// the host after an arm64 build of the same base gets the amd64 manifest
/// (BuildKit in moby checks the local image's platform and pulls when it
/// does not match).
#[test]
fn stored_base_of_another_platform_is_not_used() {
    let fixture = Fixture::new();
    let pushed = push_multi_platform(&fixture, "test/multi:latest");
    let base = fixture.reference("test/multi:latest");
    let ctx = context(&[("Dockerfile", &format!("FROM {base}\nENV X=1\n"))]);
    ok(&fixture.build(&[
        "--platform",
        "linux/arm64",
        "-t",
        "out:arm64",
        ctx.path().to_str().unwrap(),
    ]));
    ok(&fixture.build(&["-t", "out:host", ctx.path().to_str().unwrap()]));
    let (config, _) = inspect(&fixture.root(), "out:host");
    assert_eq!(config["architecture"], "amd64", "{config}");
    assert_eq!(
        diff_ids(&config)[..2],
        pushed.platform("linux/amd64").diff_ids[..]
    );
    let (arm, _) = inspect(&fixture.root(), "out:arm64");
    assert_eq!(arm["architecture"], "arm64");

    // Stored for arm64 only (another store, which pulled only that) under
    // a name the registry lacks: the build fails, saying why the stored
    // one was not used.
    let other = tempfile::tempdir().unwrap();
    let other_root = other.path().join("store");
    let pull = [
        "pull",
        "--insecure-registry",
        &fixture.registry.host,
        "--platform",
        "linux/arm64",
        &base,
    ];
    ok(&kiln(&other_root, &pull));
    let absent = fixture.reference("test/absent:latest");
    kiln_ok(&other_root, &["tag", &base, &absent]);
    let ctx = context(&[("Dockerfile", &format!("FROM {absent}\nENV X=1\n"))]);
    let out = kiln(
        &other_root,
        &[
            "build",
            "--insecure-registry",
            &fixture.registry.host,
            "-t",
            "out:absent",
            ctx.path().to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let host = kiln_testsupport::image::host_platform();
    assert!(
        stderr.contains(&format!(
            "(the local store has it for platform linux/arm64, not {host})"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("base image {absent}: ")),
        "{stderr}"
    );
}

/// A RUN in an arm64 stage on this amd64 machine: the arm64 `/bin/sh`
/// cannot be executed (Docker without binfmt: `exec /bin/sh: exec format
/// error`), and the build fails naming the Dockerfile line, without a
/// panic. With an aarch64 emulator registered in binfmt_misc it runs.
#[test]
fn run_in_an_arm64_stage_fails_clearly_without_emulation() {
    let fixture = Fixture::new();
    push_multi_platform(&fixture, "test/multi:latest");
    let base = fixture.reference("test/multi:latest");
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nCOPY Dockerfile /df\nRUN echo hi\n"),
    )]);
    let out = fixture.build(&["--platform", "linux/arm64", ctx.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if aarch64_emulated() {
        assert!(out.status.success(), "{stderr}");
        return;
    }
    assert!(
        !out.status.success(),
        "RUN of an arm64 /bin/sh succeeded:\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exec format error"), "{stderr}");
    assert!(stderr.contains("/bin/sh"), "{stderr}");
    // The Dockerfile excerpt around line 3, as BuildKit shows it.
    assert!(stderr.contains(" >>> RUN echo hi"), "{stderr}");
}

#[test]
fn pull_fetches_a_moved_tag_and_without_it_the_stored_base_is_used() {
    let fixture = Fixture::new();
    let host = kiln_testsupport::image::host_platform();
    let a = push_image(
        &fixture.registry,
        "test/moving:latest",
        &[(host.as_str(), vec![Extra::file("only-a", "A\n")])],
    );
    let base = fixture.reference("test/moving:latest");
    let ctx = context(&[
        (
            "Dockerfile",
            &format!("FROM {base}\nCOPY note.txt /note.txt\nRUN ls / | grep only- > /which\n"),
        ),
        ("note.txt", "note\n"),
    ]);
    let build = |name: &str, pull: bool| -> (PathBuf, Value, Value) {
        let rootfs = fixture.out(name);
        let local = format!("type=local,dest={}", rootfs.display());
        let meta = fixture.out(&format!("{name}.json"));
        let tag = format!("out:{name}");
        let mut args = vec![
            "-t",
            &tag,
            "-o",
            "type=image",
            "-o",
            &local,
            "--metadata-file",
            meta.to_str().unwrap(),
        ];
        if pull {
            args.push("--pull");
        }
        args.push(ctx.path().to_str().unwrap());
        ok(&fixture.build(&args));
        let meta: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        let (config, _) = inspect(&fixture.root(), &tag);
        (rootfs, config, meta)
    };

    // First build: the store has no base, so A is pulled and stored.
    let (first, first_config, _) = build("first", false);
    assert_eq!(read(first.join("which")), "only-a\n");
    assert_eq!(diff_ids(&first_config)[..2], a.manifests[0].diff_ids[..]);
    assert_eq!(fixture.stored_tag(&base)["digest"], a.digest.as_str());

    // The tag moves to B at the registry.
    let b = push_image(
        &fixture.registry,
        "test/moving:latest",
        &[(host.as_str(), vec![Extra::file("only-b", "B\n")])],
    );
    assert_ne!(a.digest, b.digest);

    // Without --pull: the stored A, and no request to the registry.
    let requests = fixture.registry_requests();
    let (stale, stale_config, stale_meta) = build("stale", false);
    assert_eq!(
        fixture.registry_requests(),
        requests,
        "{}",
        fixture.registry.log()
    );
    assert_eq!(read(stale.join("which")), "only-a\n");
    assert!(!stale.join("only-b").exists());
    assert_eq!(diff_ids(&stale_config), diff_ids(&first_config));
    assert_eq!(fixture.stored_tag(&base)["digest"], a.digest.as_str());

    // With --pull: B, whose file is there and whose layers are the base;
    // the RUN after it is not taken from the cache of the build on A.
    let (fresh, fresh_config, fresh_meta) = build("fresh", true);
    assert!(fixture.registry_requests() > requests);
    assert_eq!(read(fresh.join("which")), "only-b\n");
    assert_eq!(read(fresh.join("only-b")), "B\n");
    assert!(!fresh.join("only-a").exists());
    let fresh_layers = diff_ids(&fresh_config);
    assert_eq!(fresh_layers[..2], b.manifests[0].diff_ids[..]);
    assert_eq!(fresh_layers.len(), 4, "{fresh_config}");
    assert_ne!(
        fresh_meta["containerimage.digest"],
        stale_meta["containerimage.digest"]
    );
    assert_ne!(
        fresh_meta["containerimage.config.digest"],
        stale_meta["containerimage.config.digest"]
    );
    // The store's tag follows the registry now.
    assert_eq!(fixture.stored_tag(&base)["digest"], b.digest.as_str());
    let (base_config, _) = inspect(&fixture.root(), &base);
    assert_eq!(diff_ids(&base_config), b.manifests[0].diff_ids);

    // And a later build without --pull uses the stored B.
    let (later, _, later_meta) = build("later", false);
    assert_eq!(read(later.join("which")), "only-b\n");
    assert_eq!(
        later_meta["containerimage.config.digest"],
        fresh_meta["containerimage.config.digest"]
    );
}

/// `FROM name@<index digest>` with `--platform` picks that platform's
/// manifest from the index too; a platform the index lacks fails naming
/// the image, the platform wanted, what the index has, and the line.
#[test]
fn platform_from_an_index_digest_and_a_platform_the_index_lacks() {
    let fixture = Fixture::new();
    let pushed = push_multi_platform(&fixture, "test/multi:latest");
    let arm64 = pushed.platform("linux/arm64");
    let by_digest = format!("{}@{}", fixture.reference("test/multi"), pushed.digest);
    let ctx = context(&[("Dockerfile", &format!("FROM {by_digest}\nENV X=1\n"))]);
    ok(&fixture.build(&[
        "--platform",
        "linux/arm64",
        "-t",
        "out:digest",
        ctx.path().to_str().unwrap(),
    ]));
    let (config, _) = inspect(&fixture.root(), "out:digest");
    assert_eq!(config["architecture"], "arm64", "{config}");
    assert_eq!(diff_ids(&config), arm64.diff_ids);

    let other = tempfile::tempdir().unwrap();
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "# the base\nFROM {}\nENV X=1\n",
            fixture.reference("test/multi:latest")
        ),
    )]);
    let out = kiln(
        &other.path().join("store"),
        &[
            "build",
            "--insecure-registry",
            &fixture.registry.host,
            "--platform",
            "linux/s390x",
            ctx.path().to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("no manifest for platform linux/s390x")
            && stderr.contains("linux/amd64")
            && stderr.contains("linux/arm64")
            && stderr.contains("test/multi:latest"),
        "{stderr}"
    );
    assert!(stderr.contains(" >>> FROM "), "{stderr}");
    // The error names the image once (the excerpt above it shows the line).
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert_eq!(error.matches("test/multi").count(), 1, "{error}");
}

/// `kiln pull --platform` takes every spelling of a platform (containerd's
/// normalization): `linux/arm64`, `linux/arm64/v8` and `linux/aarch64` pick
/// the index's arm64 entry (whose platform has no variant), and `linux/arm`
/// means `linux/arm/v7`. The store keeps the index under the tag, holding
/// the platforms pulled.
#[test]
fn pull_platform_spellings_pick_the_same_manifest() {
    let fixture = Fixture::new();
    let pushed = push_multi_platform(&fixture, "test/multi:latest");
    let base = fixture.reference("test/multi:latest");
    let pull = |root: &Path, platform: &str| {
        kiln(
            root,
            &[
                "pull",
                "--insecure-registry",
                &fixture.registry.host,
                "--platform",
                platform,
                &base,
            ],
        )
    };
    for spelling in ["linux/arm64", "linux/arm64/v8", "linux/aarch64"] {
        let store = tempfile::tempdir().unwrap();
        ok(&pull(store.path(), spelling));
        let listed: Value =
            serde_json::from_str(&kiln_ok(store.path(), &["images", "--format", "json"])).unwrap();
        assert_eq!(listed[0]["Digest"], pushed.digest.as_str(), "{spelling}");
        let held: Vec<&Value> = listed[0]["Platforms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["Present"] == true)
            .collect();
        assert_eq!(held.len(), 1, "{spelling}: {listed}");
        assert_eq!(
            held[0]["Digest"],
            pushed.platform("linux/arm64").digest.as_str(),
            "{spelling}"
        );
        let (config, _) = inspect(store.path(), &base);
        assert_eq!(config["architecture"], "arm64", "{spelling}");
    }
    let out = pull(&fixture.root(), "linux/arm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no manifest for platform linux/arm/v7"),
        "{stderr}"
    );
}

/// A scratch stage takes the target platform, normalized as BuildKit does:
/// arm64's default variant is dropped, arm's is kept.
#[test]
fn scratch_stage_takes_the_normalized_target_platform() {
    let fixture = Fixture::new();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM scratch\n\
             ARG TARGETPLATFORM\n\
             ARG TARGETVARIANT\n\
             COPY f /f\n\
             LABEL platform=$TARGETPLATFORM variant=v:$TARGETVARIANT\n",
        ),
        ("f", "f\n"),
    ]);
    for (flag, arch, variant, platform) in [
        ("linux/arm64/v8", "arm64", None, "linux/arm64"),
        ("linux/aarch64", "arm64", None, "linux/arm64"),
        ("linux/arm/v7", "arm", Some("v7"), "linux/arm/v7"),
        ("linux/arm", "arm", Some("v7"), "linux/arm/v7"),
    ] {
        let tag = format!("out:{}", flag.replace('/', "-"));
        ok(&fixture.build(&["--platform", flag, "-t", &tag, ctx.path().to_str().unwrap()]));
        let (config, _) = inspect(&fixture.root(), &tag);
        assert_eq!(config["architecture"], arch, "{flag}: {config}");
        assert_eq!(config["os"], "linux", "{flag}: {config}");
        assert_eq!(config["variant"].as_str(), variant, "{flag}: {config}");
        assert_eq!(
            config["config"]["Labels"],
            json!({"platform": platform, "variant": format!("v:{}", variant.unwrap_or(""))}),
            "{flag}"
        );
    }
}
