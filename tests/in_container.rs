//! kiln where CI runs it: inside a container. The test starts a docker
//! daemon of its own (Debian's `docker.io`, its own socket and data root,
//! stopped at the end), builds kiln's own image from `deploy/Dockerfile`
//! with kiln (on a Debian base made by debootstrap from the host's
//! mirror), loads it, and runs a multi-stage build with RUN, `COPY
//! --chown`, a cache mount and `USER` in it, pushing to a test registry.
//! Each pushed image must be the one a root build on the host pushes (the
//! same manifest digest under SOURCE_DATE_EPOCH, with
//! `rewrite-timestamp=true`). One daemon and one image
//! serve every level, each run as a Job of `deploy/kubernetes` runs it
//! (its securityContext turned into `docker run` options, its store an
//! emptyDir: here a host directory as a volume):
//!
//! - (a) `root-job.yaml`: root with CAP_SYS_ADMIN, seccomp and AppArmor
//!   unconfined: full namespaces;
//! - (b) `rootless-job.yaml`: uid 1000 with seccomp and AppArmor
//!   unconfined: rootless (a user namespace through the image's
//!   newuidmap), the outer /proc bound since a new one cannot be mounted
//!   over the container's masked one;
//! - (a) and (b) again without a volume: the store on the container's own
//!   overlay filesystem, where overlay cannot be mounted: the copying
//!   snapshotter, said in one warning line, the same image;
//! - (c) `chroot-job.yaml`: root with the default seccomp profile and no
//!   added capability, the store on the container's own filesystem: no
//!   namespace can be made, so chroot isolation (one warning line): the
//!   cache mount and /dev moved into each RUN's copy instead of mounted,
//!   the same image.
//!
//! And those Jobs validate (kubernetes-validate, strict). (A store on an
//! overlay mount of the host: tests/snapshotter.rs.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{busybox_rootfs_tar, kiln_bin, kiln_command};
use kiln_testsupport::docker::{debian_base_tar, DockerDaemon};
use kiln_testsupport::RegistryServer;

const EPOCH: &str = "1700000000";

/// The build each level runs; `{REGISTRY}` is the test registry.
const DOCKERFILE: &str = "FROM {REGISTRY}/busybox AS base\n\
    RUN echo made > /made && mkdir /owned && chown 1000:1000 /owned\n\
    FROM {REGISTRY}/busybox\n\
    COPY --from=base --chown=1000:1000 /made /home/app/made\n\
    COPY --from=base /owned /owned\n\
    RUN --mount=type=cache,target=/cache echo hit >> /cache/log && cp /cache/log /seen \
        && echo x > /dev/null\n\
    USER app\n\
    RUN id -u > /tmp/whoami && stat -c %u:%g /home/app/made /owned > /tmp/owners\n";

/// A directory every user in a container may read (and, `chown`ed, write).
fn open_dir(path: &Path, owner: Option<u32>) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    if let Some(uid) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    }
    path.to_path_buf()
}

/// `kiln --root ROOT ARGS…` on the host, as root, under SOURCE_DATE_EPOCH.
fn host_kiln(root: &Path, args: &[&str]) -> String {
    let out = kiln_command()
        .arg("--root")
        .arg(root)
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env("KILN_PROGRESS", "plain")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kiln {args:?}:\n{stderr}");
    stderr
}

/// The manifest digest a build's metadata file reports.
fn pushed_digest(metadata: &Path) -> String {
    let text = std::fs::read_to_string(metadata).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["containerimage.digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no digest in {text}"))
        .to_string()
}

/// kiln's own image, built by kiln from deploy/Dockerfile on a Debian
/// base, loaded into `daemon` as `kiln:test`.
fn load_kiln_image(daemon: &DockerDaemon, work: &Path) {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("debian-base");
    let base = debian_base_tar(&cache).unwrap();
    let store = work.join("image-store");
    let base_name = "localhost/debian-base:test".to_string();
    host_kiln(&store, &["import", base.to_str().unwrap(), &base_name]);
    // The context deploy/Dockerfile expects: target/release/kiln.
    let ctx = work.join("kiln-ctx");
    std::fs::create_dir_all(ctx.join("target/release")).unwrap();
    std::fs::copy(kiln_bin(), ctx.join("target/release/kiln")).unwrap();
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Dockerfile");
    let tar = work.join("kiln-image.tar");
    host_kiln(
        &store,
        &[
            "build",
            "-f",
            dockerfile.to_str().unwrap(),
            "--build-arg",
            &format!("BASE={base_name}"),
            "-t",
            "kiln:test",
            "-o",
            &format!("type=docker,dest={}", tar.display()),
            ctx.to_str().unwrap(),
        ],
    );
    daemon
        .docker_ok(&["load", "-i", tar.to_str().unwrap()])
        .unwrap();
    std::fs::remove_file(&tar).unwrap();
}

/// How a Job of deploy/kubernetes runs its container, as `docker run`
/// options: its securityContext (every setting mapped, or the test
/// fails), and where its volumes `store` and `context` are mounted.
struct Pod {
    options: Vec<String>,
    uid: u32,
    store: String,
    context: String,
}

/// A manifest of deploy/kubernetes as JSON, read by python3's yaml
/// (which kubernetes-validate, installed by scripts/setup, brings).
fn manifest(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(name);
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pod(name: &str) -> Pod {
    let job = manifest(name);
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let mut options = Vec::new();
    let (mut uid, mut gid) = (0, 0);
    let context = container["securityContext"].as_object().unwrap();
    for (key, value) in context {
        let profile = |what: &str| match value["type"].as_str() {
            Some("Unconfined") => vec!["--security-opt".to_string(), format!("{what}=unconfined")],
            Some("RuntimeDefault") => vec![],
            other => panic!("{name}: {key} {other:?} has no docker equivalent here"),
        };
        match key.as_str() {
            "runAsUser" => uid = value.as_u64().unwrap() as u32,
            "runAsGroup" => gid = value.as_u64().unwrap() as u32,
            "allowPrivilegeEscalation" if value == true => {}
            "allowPrivilegeEscalation" => {
                options.extend(["--security-opt".into(), "no-new-privileges".into()])
            }
            "seccompProfile" => options.extend(profile("seccomp")),
            "appArmorProfile" => options.extend(profile("apparmor")),
            "capabilities" => {
                assert_eq!(value.as_object().unwrap().len(), 1, "{name}: only add");
                for cap in value["add"].as_array().unwrap() {
                    options.extend(["--cap-add".into(), cap.as_str().unwrap().to_string()]);
                }
            }
            other => panic!("{name}: securityContext.{other} is not mapped to docker"),
        }
    }
    options.extend(["-u".into(), format!("{uid}:{gid}")]);
    let mount = |volume: &str| {
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume)
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("{name}: no volume {volume}"))
            .to_string()
    };
    Pod {
        options,
        uid,
        store: mount("store"),
        context: mount("context"),
    }
}

/// One run of kiln's image: its name (of the store, the output and the
/// pushed tag), where its store is, its context.
struct Level<'a> {
    name: &'a str,
    store_on: StoreOn,
    ctx: &'a Path,
}

/// Where a level's store is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StoreOn {
    /// A host directory as the Job's store volume (an emptyDir).
    Volume,
    /// No volume: kiln's default store path on the container's own
    /// overlay filesystem.
    ContainerFs,
}

/// One level: `docker run` of kiln's image as `pod` runs it, its store
/// (kiln's default store path there) as `store` says, the context and
/// /out (the metadata file) bound; the build pushes `REGISTRY/out:NAME`.
/// Its stderr and pushed digest.
fn build_in_container(
    daemon: &DockerDaemon,
    work: &Path,
    registry: &RegistryServer,
    level: Level<'_>,
    pod: &Pod,
) -> (String, String) {
    let Level {
        name,
        store_on,
        ctx,
    } = level;
    let store = open_dir(&work.join(format!("{name}-store")), Some(pod.uid));
    let out = open_dir(&work.join(format!("{name}-out")), Some(pod.uid));
    let mut args: Vec<String> = ["run", "--rm", "--network", "host"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(pod.options.iter().cloned());
    for (host, inside) in [(&store, pod.store.as_str()), (&out, "/out")] {
        if store_on == StoreOn::ContainerFs && host == &store {
            continue;
        }
        args.extend(["-v".into(), format!("{}:{inside}", host.display())]);
    }
    args.extend(["-v".into(), format!("{}:{}:ro", ctx.display(), pod.context)]);
    args.extend(["-e".into(), format!("SOURCE_DATE_EPOCH={EPOCH}")]);
    args.extend(["-e".into(), "KILN_PROGRESS=plain".into()]);
    args.push("kiln:test".into());
    let tag = format!("{}/out:{name}", registry.host);
    args.extend(
        [
            "build",
            "--push",
            "--output",
            "type=image,rewrite-timestamp=true",
            "-t",
            &tag,
            "--metadata-file",
            "/out/metadata.json",
            &pod.context,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = daemon.docker(&refs).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "level {name}: docker {refs:?} failed:\n{stderr}"
    );
    (stderr, pushed_digest(&out.join("metadata.json")))
}

/// The Jobs of deploy/kubernetes are valid Kubernetes objects (the
/// schema of kubernetes-validate, strict: no unknown field).
#[test]
fn kubernetes_jobs_validate() {
    kiln_testsupport::require_root!("kubernetes-validate, installed for root by scripts/setup");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let out = std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(dir.join("rootless-job.yaml"))
        .arg(dir.join("root-job.yaml"))
        .arg(dir.join("chroot-job.yaml"))
        .output()
        .expect("kubernetes-validate (pip, installed by scripts/setup)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches(" passed for resource job/").count(),
        3,
        "{text}"
    );
}

#[test]
fn kilns_image_builds_in_containers_the_image_root_builds_on_the_host() {
    kiln_testsupport::require_root!("a docker daemon of the test's own");
    let registry = RegistryServer::start_plain().unwrap();
    let daemon = DockerDaemon::start().unwrap();
    let (root_pod, rootless_pod) = (pod("root-job.yaml"), pod("rootless-job.yaml"));
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    open_dir(work, None);

    // busybox in the registry, where every build pulls it from.
    let bb_store = work.join("busybox-store");
    let bb_tar = work.join("busybox.tar");
    busybox_rootfs_tar(&bb_tar).unwrap();
    let busybox = format!("{}/busybox:latest", registry.host);
    host_kiln(&bb_store, &["import", bb_tar.to_str().unwrap(), &busybox]);
    host_kiln(&bb_store, &["push", &busybox]);

    let ctx = open_dir(&work.join("ctx"), None);
    let dockerfile = ctx.join("Dockerfile");
    std::fs::write(
        &dockerfile,
        DOCKERFILE.replace("{REGISTRY}", &registry.host),
    )
    .unwrap();
    std::fs::set_permissions(&dockerfile, std::fs::Permissions::from_mode(0o644)).unwrap();

    // The reference: root on the host, full namespaces.
    let host_store = work.join("host-store");
    let metadata = work.join("host-metadata.json");
    let tag = format!("{}/out:host", registry.host);
    let stderr = host_kiln(
        &host_store,
        &[
            "build",
            "--push",
            "--output",
            "type=image,rewrite-timestamp=true",
            "-t",
            &tag,
            "--metadata-file",
            metadata.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    );
    assert!(!stderr.contains("isolation"), "{stderr}");
    let host_digest = pushed_digest(&metadata);
    // What that image holds (the levels below push the same digest).
    let files = work.join("host-files");
    host_kiln(
        &host_store,
        &[
            "build",
            // As the build above: its steps' keys, its cache.
            "-o",
            "type=image,rewrite-timestamp=true",
            "-o",
            files.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    );
    let read = |name: &str| std::fs::read_to_string(files.join(name)).unwrap();
    assert_eq!(read("seen"), "hit\n");
    assert_eq!(read("tmp/whoami"), "1000\n");
    assert_eq!(read("tmp/owners"), "1000:1000\n0:0\n");

    load_kiln_image(&daemon, work);
    // (a) root with CAP_SYS_ADMIN (root-job.yaml): namespaces, no
    // isolation warning.
    let level = |name, store_on| Level {
        name,
        store_on,
        ctx: &ctx,
    };
    let (stderr, digest) = build_in_container(
        &daemon,
        work,
        &registry,
        level("a", StoreOn::Volume),
        &root_pod,
    );
    assert!(!stderr.contains("WARNING: isolation"), "{stderr}");
    assert!(!stderr.contains("snapshotter copy"), "{stderr}");
    assert_eq!(digest, host_digest, "level (a):\n{stderr}");

    // (b) uid 1000 (rootless-job.yaml): rootless, the outer /proc bound,
    // said so.
    let (stderr, digest) = build_in_container(
        &daemon,
        work,
        &registry,
        level("b", StoreOn::Volume),
        &rootless_pod,
    );
    assert!(
        stderr.contains("WARNING: isolation rootless: kiln runs as uid 1000, not root"),
        "{stderr}"
    );
    assert!(
        stderr.contains("/proc bound from outside: a new proc cannot be mounted here"),
        "{stderr}"
    );
    assert_eq!(digest, host_digest, "level (b):\n{stderr}");
    // The store on the volume is the user's.
    use std::os::unix::fs::MetadataExt;
    let index = work.join("b-store/index.json");
    assert_eq!(std::fs::metadata(index).unwrap().uid(), 1000);

    // (a) and (b) with the store on the container's own overlay
    // filesystem (no volume): the copying snapshotter, one warning line
    // naming the store, the same image.
    for (name, pod) in [("a-own-fs", &root_pod), ("b-own-fs", &rootless_pod)] {
        let (stderr, digest) = build_in_container(
            &daemon,
            work,
            &registry,
            level(name, StoreOn::ContainerFs),
            pod,
        );
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("WARNING: snapshotter copy: "))
            .collect();
        assert_eq!(warnings.len(), 1, "level {name}:\n{stderr}");
        assert!(
            warnings[0].contains(&format!("{} is on an overlay filesystem", pod.store)),
            "level {name}:\n{stderr}"
        );
        assert_eq!(digest, host_digest, "level {name}:\n{stderr}");
    }

    // (c) root with docker's default seccomp and no added capability
    // (chroot-job.yaml), the store on the container's own filesystem: no
    // namespace can be made, so chroot isolation, said in one warning
    // line; its cache mount and /dev are moved into each RUN's copy
    // instead of mounted: the same image.
    let chroot_pod = pod("chroot-job.yaml");
    let level_c = Level {
        name: "c",
        store_on: StoreOn::ContainerFs,
        ctx: &ctx,
    };
    let (stderr, digest) = build_in_container(&daemon, work, &registry, level_c, &chroot_pod);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("WARNING"))
        .collect();
    assert_eq!(warnings.len(), 1, "level (c):\n{stderr}");
    assert!(
        warnings[0].starts_with(
            "WARNING: isolation chroot: kiln runs as root without CAP_SYS_ADMIN and no user \
             namespace can be made"
        ),
        "level (c):\n{stderr}"
    );
    assert_eq!(digest, host_digest, "level (c):\n{stderr}");
}
