//! Build contexts that are not a local directory, end to end through the
//! binary, against real servers the tests start: a Git repository served
//! by `git daemon` (a ref and a subdir), a tarball (and a plain
//! Dockerfile) from a local HTTP server behind basic auth, standard input
//! (a tar, a Dockerfile, `-f -`); `--build-context` of each kind
//! (directory, `docker-image://` from a real registry, Git, HTTP); and
//! `--label` / `--annotation` where BuildKit puts them. URL credentials
//! never show in output, errors or the metadata file.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{busybox_rootfs_tar, kiln_command, kiln_ok};
use kiln_testsupport::git::{git_in, serve_git};
use kiln_testsupport::http::FileServer;

const USER: &str = "ctx-user";
const PASSWORD: &str = "pw-c0ntext-91f3";

/// A store with `busybox:latest` in it, and a scratch directory.
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
            &["import", tar.to_str().unwrap(), "busybox:latest"],
        );
        fixture
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kiln build ARGS…` with plain progress, standard input from `stdin`
    /// (empty when None).
    fn build(&self, args: &[&str], stdin: Option<&Path>) -> Output {
        let mut command = kiln_command();
        command
            .arg("--root")
            .arg(self.root())
            .arg("build")
            .args(args)
            .env("KILN_PROGRESS", "plain");
        match stdin {
            Some(path) => command.stdin(std::fs::File::open(path).unwrap()),
            None => command.stdin(Stdio::null()),
        };
        command.output().unwrap()
    }

    /// Builds into a fresh local output directory; returns it.
    fn build_to_dir(&self, name: &str, args: &[&str], stdin: Option<&Path>) -> PathBuf {
        let out = self.path(name);
        let dest = format!("type=local,dest={}", out.display());
        let mut all = vec!["-o", dest.as_str()];
        all.extend_from_slice(args);
        ok(&self.build(&all, stdin));
        out
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "build failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "build should have failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `files` under `dir`.
fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

/// A gzip (`z`) or plain tar of `files`, made by the host's tar.
fn tarball(dir: &Path, name: &str, files: &[(&str, &str)], gzip: bool) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    write_files(&src, files);
    let out = dir.join(name);
    let status = std::process::Command::new("tar")
        .arg(if gzip { "-czf" } else { "-cf" })
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A repository with `app/` (Dockerfile, data) at tag v1, changed on main
/// after it; served over git://. Returns the URL of the repository.
fn served_repo(fixture: &Fixture) -> String {
    let served = fixture.path("served");
    let repo = served.join("repo.git");
    std::fs::create_dir_all(&repo).unwrap();
    git_in(&repo, &["init", "-q", "-b", "main"]);
    write_files(
        &repo,
        &[
            ("app/Dockerfile", "FROM busybox\nCOPY data.txt /out/\n"),
            ("app/alt.Dockerfile", "FROM busybox\nCOPY data.txt /alt/\n"),
            ("app/data.txt", "v1 data\n"),
            ("top.txt", "top\n"),
            ("keep.Dockerfile", "FROM busybox\nCOPY . /ctx/\n"),
        ],
    );
    git_in(&repo, &["add", "-A"]);
    git_in(&repo, &["commit", "-q", "-m", "one"]);
    git_in(&repo, &["tag", "v1"]);
    write_files(&repo, &[("app/data.txt", "main data\n")]);
    git_in(&repo, &["commit", "-q", "-am", "two"]);
    let port = serve_git(&served).unwrap();
    format!("git://127.0.0.1:{port}/repo.git")
}

#[test]
fn git_context_with_ref_and_subdir() {
    kiln_testsupport::require_namespaces!("builds run steps in namespaces");
    let fixture = Fixture::new();
    let url = served_repo(&fixture);
    // The ref and the subdir of the fragment; the Dockerfile is the one
    // in the subdir.
    let out = fixture.build_to_dir("v1", &[&format!("{url}#v1:app")], None);
    assert_eq!(read(&out.join("out/data.txt")), "v1 data\n");
    // The default branch, and -f a path inside the remote context.
    let out = fixture.build_to_dir(
        "main",
        &["-f", "alt.Dockerfile", &format!("{url}#:app")],
        None,
    );
    assert_eq!(read(&out.join("alt/data.txt")), "main data\n");
    // A missing ref is an error naming it.
    let stderr = failed(&fixture.build(&[&format!("{url}#nope:app")], None));
    assert!(stderr.contains("nope"), "{stderr}");
    // BUILDKIT_CONTEXT_KEEP_GIT_DIR=1 keeps the repository's .git in the
    // context, as BuildKit does, and says nothing of having no effect;
    // without it the context has no .git.
    let keep = |name: &str, args: &[&str]| {
        let dest = format!("type=local,dest={}", fixture.path(name).display());
        let all = [
            &["-o", dest.as_str(), "-f", "keep.Dockerfile"][..],
            args,
            &[url.as_str()],
        ]
        .concat();
        let out = fixture.build(&all, None);
        ok(&out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = keep("kept", &["--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1"]);
    assert!(fixture.path("kept/ctx/.git").is_dir(), "{stderr}");
    assert!(fixture.path("kept/ctx/top.txt").is_file(), "{stderr}");
    assert!(!stderr.contains("has no effect"), "{stderr}");
    let stderr = keep("dropped", &[]);
    assert!(fixture.path("dropped/ctx/top.txt").is_file(), "{stderr}");
    assert!(!fixture.path("dropped/ctx/.git").exists(), "{stderr}");
}

/// Serves a gzip tarball context, a plain Dockerfile and a plain tar, all
/// behind basic auth.
fn served_files(fixture: &Fixture) -> FileServer {
    let tgz = tarball(
        fixture.dir.path(),
        "ctx.tar.gz",
        &[
            ("Dockerfile", "FROM busybox\nCOPY sub/file.txt /from-tar/\n"),
            ("sub/file.txt", "from the tarball\n"),
        ],
        true,
    );
    let mut files = BTreeMap::new();
    files.insert("/ctx.tar.gz".to_string(), std::fs::read(tgz).unwrap());
    files.insert(
        "/Dockerfile".to_string(),
        b"FROM busybox\nRUN echo plain > /plain.txt\n".to_vec(),
    );
    FileServer::start_with_basic_auth(files, USER, PASSWORD).unwrap()
}

#[test]
fn tarball_and_dockerfile_contexts_over_http_hide_credentials() {
    kiln_testsupport::require_namespaces!("builds run steps in namespaces");
    let fixture = Fixture::new();
    let server = served_files(&fixture);
    let with_auth = format!("http://{USER}:{PASSWORD}@{}", server.host);
    let metadata = fixture.path("metadata.json");
    let dest = format!("type=local,dest={}", fixture.path("tgz").display());
    let out = fixture.build(
        &[
            "-o",
            &dest,
            "--metadata-file",
            metadata.to_str().unwrap(),
            &format!("{with_auth}/ctx.tar.gz"),
        ],
        None,
    );
    ok(&out);
    assert_eq!(
        read(&fixture.path("tgz/from-tar/file.txt")),
        "from the tarball\n"
    );
    let shown = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        shown.contains("load remote build context") && shown.contains("xxxxx"),
        "{shown}"
    );
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(!read(&metadata).contains(PASSWORD));
    // The credentials did reach the server (it refuses requests without).
    assert!(server
        .requests()
        .iter()
        .any(|r| r.to_ascii_lowercase().contains("authorization: basic")));

    // A plain-text URL is the Dockerfile, with no other context.
    let out = fixture.build_to_dir("plain", &[&format!("{with_auth}/Dockerfile")], None);
    assert_eq!(read(&out.join("plain.txt")), "plain\n");

    // A failed download names the URL, masked.
    let stderr = failed(&fixture.build(&[&format!("{with_auth}/missing.tar")], None));
    assert!(stderr.contains("missing.tar"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    let anonymous = failed(&fixture.build(&[&format!("{}/ctx.tar.gz", server.url)], None));
    assert!(anonymous.contains("401"), "{anonymous}");
}

#[test]
fn contexts_from_standard_input() {
    kiln_testsupport::require_namespaces!("builds run steps in namespaces");
    let fixture = Fixture::new();
    // A tar on stdin is the context, its Dockerfile included.
    let tar = tarball(
        fixture.dir.path(),
        "ctx.tar",
        &[
            ("Dockerfile", "FROM busybox\nCOPY in-tar.txt /stdin/\n"),
            ("in-tar.txt", "from stdin\n"),
        ],
        false,
    );
    let out = fixture.build_to_dir("tar", &["-"], Some(&tar));
    assert_eq!(read(&out.join("stdin/in-tar.txt")), "from stdin\n");

    // A Dockerfile on stdin: no context at all.
    let dockerfile = fixture.path("Dockerfile.stdin");
    std::fs::write(&dockerfile, "FROM busybox\nRUN echo alone > /alone.txt\n").unwrap();
    let out = fixture.build_to_dir("alone", &["-"], Some(&dockerfile));
    assert_eq!(read(&out.join("alone.txt")), "alone\n");
    let copying = fixture.path("Dockerfile.copy");
    std::fs::write(&copying, "FROM busybox\nCOPY in-tar.txt /\n").unwrap();
    let stderr = failed(&fixture.build(&["-"], Some(&copying)));
    assert!(stderr.contains("in-tar.txt"), "{stderr}");

    // -f - with a context directory.
    let ctx = fixture.path("ctx");
    write_files(&ctx, &[("local.txt", "local\n")]);
    std::fs::write(&copying, "FROM busybox\nCOPY local.txt /\n").unwrap();
    let out = fixture.build_to_dir(
        "dash-f",
        &["-f", "-", ctx.to_str().unwrap()],
        Some(&copying),
    );
    assert_eq!(read(&out.join("local.txt")), "local\n");

    // Standard input cannot be both; nor can two Dockerfiles be given.
    let stderr = failed(&fixture.build(&["-f", "-", "-"], Some(&tar)));
    assert!(stderr.contains("can't use stdin for both"), "{stderr}");
    let stderr = failed(&fixture.build(&["-f", "Dockerfile", "-"], Some(&dockerfile)));
    assert!(stderr.contains("ambiguous Dockerfile source"), "{stderr}");
    let stderr = failed(&fixture.build(&["no/such/dir"], None));
    assert!(
        stderr.contains("path \"no/such/dir\" not found"),
        "{stderr}"
    );
}

/// `--label` over the Dockerfile's LABEL in the config; `--annotation`
/// in the pushed manifest (as skopeo reads it), on the descriptor (the
/// OCI layout output's index.json, the metadata file); index annotations
/// and a platform the build does not make are refused.
#[test]
fn labels_and_annotations_go_where_buildkit_puts_them() {
    kiln_testsupport::require_namespaces!("builds run steps in namespaces");
    let fixture = Fixture::new();
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let ctx = fixture.path("ctx");
    write_files(
        &ctx,
        &[(
            "Dockerfile",
            "FROM busybox\nLABEL a=from-dockerfile c=kept\nRUN echo > /x\n",
        )],
    );
    let image = format!("{}/annotated:v1", registry.host);
    let metadata = fixture.path("metadata.json");
    let layout = fixture.path("layout");
    let platform = kiln_testsupport::image::host_platform();
    let out = fixture.build(
        &[
            "-t",
            &image,
            "--push",
            "-o",
            &format!("type=oci,tar=false,dest={}", layout.display()),
            "--metadata-file",
            metadata.to_str().unwrap(),
            "--label",
            "a=from-flag",
            "--label",
            "b=new",
            "--annotation",
            "org.example.plain=1",
            "--annotation",
            &format!("manifest[{platform}],manifest-descriptor:org.example.both=2"),
            "--annotation",
            "manifest-descriptor:org.example.desc=3",
            ctx.to_str().unwrap(),
        ],
        None,
    );
    ok(&out);
    let config = kiln_ok(&fixture.root(), &["inspect", &image]);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let labels = &config[0]["Config"]["Labels"];
    assert_eq!(labels["a"], "from-flag", "{labels}");
    assert_eq!(labels["b"], "new");
    assert_eq!(labels["c"], "kept");

    let raw =
        kiln_testsupport::image::skopeo_raw_manifest(&format!("docker://{image}"), None, None)
            .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let in_manifest = &manifest["annotations"];
    assert_eq!(in_manifest["org.example.plain"], "1", "{manifest}");
    assert_eq!(in_manifest["org.example.both"], "2");
    assert!(in_manifest.get("org.example.desc").is_none(), "{manifest}");

    let index: serde_json::Value = serde_json::from_str(&read(&layout.join("index.json"))).unwrap();
    let entry = &index["manifests"][0]["annotations"];
    assert_eq!(entry["org.example.both"], "2", "{index}");
    assert_eq!(entry["org.example.desc"], "3");
    assert!(entry.get("org.example.plain").is_none(), "{index}");
    let meta: serde_json::Value = serde_json::from_str(&read(&metadata)).unwrap();
    let descriptor = &meta["containerimage.descriptor"];
    assert_eq!(descriptor["annotations"]["org.example.desc"], "3", "{meta}");
    assert_eq!(
        descriptor["digest"].as_str().unwrap(),
        kiln_testsupport::image::digest_of(&raw)
    );

    for (flag, wanted) in [
        ("index:k=v", "index annotations not supported"),
        ("index-descriptor:k=v", "index annotations not supported"),
        ("manifest[linux/s390x]:k=v", "no platform linux/s390x"),
        ("bogus:k=v", "unknown annotation type"),
    ] {
        let stderr = failed(&fixture.build(&["--annotation", flag, ctx.to_str().unwrap()], None));
        assert!(stderr.contains(wanted), "{flag}: {stderr}");
    }
}

/// `--build-context` of each kind, reached by `FROM`, `COPY --from` and
/// `RUN --mount=from`: a directory (its .dockerignore applied), an image
/// from a real registry replacing a stage of its name, a Git checkout,
/// an HTTP download (behind basic auth, never shown). A changed file of
/// a named directory is a new cache key.
#[test]
fn build_contexts_of_each_kind() {
    kiln_testsupport::require_namespaces!("builds run steps in namespaces");
    let fixture = Fixture::new();
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let image = format!("{}/named:v1", registry.host);
    let img_ctx = fixture.path("img-ctx");
    write_files(
        &img_ctx,
        &[
            ("Dockerfile", "FROM scratch\nCOPY marker /img-marker\n"),
            ("marker", "from the registry\n"),
        ],
    );
    ok(&fixture.build(&["-t", &image, "--push", img_ctx.to_str().unwrap()], None));
    kiln_ok(&fixture.root(), &["rmi", &image]);

    let named_dir = fixture.path("named-dir");
    write_files(
        &named_dir,
        &[
            ("hello.txt", "hello v1\n"),
            ("secret.txt", "no\n"),
            (".dockerignore", "secret.txt\n"),
        ],
    );
    let git = served_repo(&fixture);
    let server = served_files(&fixture);
    let web = format!("http://{USER}:{PASSWORD}@{}/Dockerfile", server.host);
    let ctx = fixture.path("main");
    write_files(
        &ctx,
        &[(
            "Dockerfile",
            "FROM no.such/image:1 AS img\nRUN false\n\
             FROM dirctx AS files\n\
             FROM busybox\n\
             COPY --from=img /img-marker /img/\n\
             COPY --from=files hello.txt /from-stage/\n\
             COPY --from=dirctx . /dir/\n\
             COPY --from=gitctx top.txt /git/\n\
             COPY --from=web context /web/Dockerfile\n\
             RUN --mount=from=dirctx,target=/m cat /m/hello.txt > /mounted.txt && ls -a /m > /mounted-list\n",
        )],
    );
    let metadata = fixture.path("named-metadata.json");
    let build = |name: &str| {
        let out = fixture.path(name);
        let args = [
            "-o".to_string(),
            format!("type=local,dest={}", out.display()),
            "--metadata-file".into(),
            metadata.display().to_string(),
            "--build-context".into(),
            format!("img=docker-image://{image}"),
            "--build-context".into(),
            format!("dirctx={}", named_dir.display()),
            "--build-context".into(),
            format!("gitctx={git}#v1"),
            "--build-context".into(),
            format!("web={web}"),
            ctx.display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = fixture.build(&args, None);
        ok(&output);
        (out, String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (out, shown) = build("named1");
    assert_eq!(read(&out.join("img/img-marker")), "from the registry\n");
    assert_eq!(read(&out.join("from-stage/hello.txt")), "hello v1\n");
    assert_eq!(read(&out.join("dir/hello.txt")), "hello v1\n");
    assert!(
        !out.join("dir/secret.txt").exists(),
        "the named dir's .dockerignore applies"
    );
    assert_eq!(read(&out.join("git/top.txt")), "top\n");
    assert!(read(&out.join("web/Dockerfile")).contains("echo plain"));
    assert_eq!(read(&out.join("mounted.txt")), "hello v1\n");
    // A bind of the named directory shows it as COPY reads it: its
    // .dockerignore applied.
    assert_eq!(
        read(&out.join("mounted-list")),
        ".\n..\n.dockerignore\nhello.txt\n"
    );
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(!read(&metadata).contains(PASSWORD));

    // New content in the named directory: the steps that read it run again.
    write_files(&named_dir, &[("hello.txt", "hello v2\n")]);
    let (out, _) = build("named2");
    assert_eq!(read(&out.join("dir/hello.txt")), "hello v2\n");
    assert_eq!(read(&out.join("mounted.txt")), "hello v2\n");
    assert_eq!(read(&out.join("from-stage/hello.txt")), "hello v2\n");

    let stderr = failed(&fixture.build(
        &["--build-context", "x=/no/such/dir", ctx.to_str().unwrap()],
        None,
    ));
    assert!(stderr.contains("not a directory"), "{stderr}");
}

/// `--build-context NAME=oci-layout://DIR[:TAG][@DIGEST]`, as buildx
/// resolves it: the digest, else the entry of `index.json` the tag names,
/// else the layout's only entry; `latest` when neither is given. The image
/// is a base image (its files and config) for `FROM NAME` and `COPY
/// --from=NAME`, in a store that never held it, and is never pulled.
#[test]
fn oci_layout_contexts_as_buildx_resolves_them() {
    kiln_testsupport::require_namespaces!("builds run steps in namespaces");
    // Two images in one layout, made by one store...
    let maker = Fixture::new();
    let layout = maker.path("layout");
    for version in ["v1", "v2"] {
        let ctx = maker.path(&format!("src-{version}"));
        write_files(
            &ctx,
            &[(
                "Dockerfile",
                &format!("FROM busybox\nRUN echo {version} > /marker\nENV FROM_LAYOUT={version}\n"),
            )],
        );
        let output = format!(
            "type=oci,tar=false,dest={},name=app:{version}",
            layout.display()
        );
        ok(&maker.build(&["-o", &output, ctx.to_str().unwrap()], None));
    }
    let index: serde_json::Value = serde_json::from_str(&read(&layout.join("index.json"))).unwrap();
    let v2_digest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v2")
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .unwrap();

    // ...used by another, which holds busybox only.
    let fixture = Fixture::new();
    let ctx = fixture.path("main");
    write_files(
        &ctx,
        &[(
            "Dockerfile",
            "FROM base AS b\n\
             RUN cat /marker > /seen && echo \"$FROM_LAYOUT\" >> /seen\n\
             FROM busybox\n\
             COPY --from=b /seen /seen\n\
             COPY --from=base /marker /copied\n",
        )],
    );
    let build = |name: &str, value: String| {
        let context = format!("base={value}");
        fixture.build_to_dir(
            name,
            &["--build-context", &context, ctx.to_str().unwrap()],
            None,
        )
    };
    let layout_url = format!("oci-layout://{}", layout.display());
    let out = build("by-tag", format!("{layout_url}:v1"));
    assert_eq!(read(&out.join("seen")), "v1\nv1\n");
    assert_eq!(read(&out.join("copied")), "v1\n");
    let out = build("by-other-tag", format!("{layout_url}:v2"));
    assert_eq!(read(&out.join("seen")), "v2\nv2\n");
    // A digest wins over a tag given with it.
    let out = build("by-digest", format!("{layout_url}:v1@{v2_digest}"));
    assert_eq!(read(&out.join("copied")), "v2\n");
    assert!(
        kiln_command()
            .arg("--root")
            .arg(fixture.root())
            .args(["images", "-q"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
            .unwrap()
            == 1,
        "the layout's images are not named in the store"
    );

    // The provenance names it as BuildKit names a local image: pkg:oci.
    let attested = fixture.path("attested");
    let output = format!("type=oci,tar=false,dest={}", attested.display());
    let context = format!("base={layout_url}:v2");
    ok(&fixture.build(
        &[
            "--provenance=mode=min",
            "-o",
            &output,
            "--build-context",
            &context,
            ctx.to_str().unwrap(),
        ],
        None,
    ));
    let uris = materials(&attested);
    let expected = format!("pkg:oci/base?digest={v2_digest}&platform=");
    assert!(uris.iter().any(|u| u.starts_with(&expected)), "{uris:?}");
    assert!(
        uris.iter()
            .any(|u| u.starts_with("pkg:docker/busybox@latest")),
        "{uris:?}"
    );

    // No tag is `latest`: none is tagged so and the layout lists two.
    let stderr = failed(&fixture.build(
        &[
            "--build-context",
            &format!("base={layout_url}"),
            ctx.to_str().unwrap(),
        ],
        None,
    ));
    assert!(
        stderr.contains("no image is tagged \"latest\"") && stderr.contains("base="),
        "{stderr}"
    );
    // A layout of one image gives it whatever the tag.
    let single = maker.path("single");
    let output = format!("type=oci,tar=false,dest={}", single.display());
    ok(&maker.build(
        &["-o", &output, maker.path("src-v1").to_str().unwrap()],
        None,
    ));
    let out = build("single", format!("oci-layout://{}", single.display()));
    assert_eq!(read(&out.join("copied")), "v1\n");
    // A digest needs no index.json (buildx reads it for a tag only).
    let single_index: serde_json::Value =
        serde_json::from_str(&read(&single.join("index.json"))).unwrap();
    let single_digest = single_index["manifests"][0]["digest"].as_str().unwrap();
    std::fs::remove_file(single.join("index.json")).unwrap();
    let out = build(
        "no-index",
        format!("oci-layout://{}@{single_digest}", single.display()),
    );
    assert_eq!(read(&out.join("copied")), "v1\n");

    // An index of two platforms: only the platform built is read from the
    // layout (the other's layer is gone), and the provenance names the
    // index, as BuildKit's.
    let multi_src = maker.path("src-multi");
    write_files(
        &multi_src,
        &[
            (
                "Dockerfile",
                "FROM scratch\nARG TARGETARCH\nCOPY $TARGETARCH.txt /marker\n",
            ),
            ("amd64.txt", "amd64\n"),
            ("arm64.txt", "arm64\n"),
        ],
    );
    let multi = maker.path("multi");
    let output = format!("type=oci,tar=false,dest={}", multi.display());
    ok(&maker.build(
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &output,
            multi_src.to_str().unwrap(),
        ],
        None,
    ));
    let blob_of = |layout: &Path, digest: &str| -> serde_json::Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_str(&read(&layout.join("blobs/sha256").join(hex))).unwrap()
    };
    let top: serde_json::Value = serde_json::from_str(&read(&multi.join("index.json"))).unwrap();
    let index_digest = top["manifests"][0]["digest"].as_str().unwrap().to_string();
    let arm64 = blob_of(&multi, &index_digest)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "arm64")
        .map(|m| blob_of(&multi, m["digest"].as_str().unwrap()))
        .unwrap();
    let arm64_layer = arm64["layers"][0]["digest"].as_str().unwrap();
    std::fs::remove_file(
        multi
            .join("blobs/sha256")
            .join(arm64_layer.trim_start_matches("sha256:")),
    )
    .unwrap();
    let from_multi = fixture.path("from-multi");
    write_files(
        &from_multi,
        &[(
            "Dockerfile",
            "FROM busybox\nCOPY --from=base /marker /copied\n",
        )],
    );
    let attested_multi = fixture.path("attested-multi");
    let context = format!("base=oci-layout://{}", multi.display());
    ok(&fixture.build(
        &[
            "--platform",
            "linux/amd64",
            "--provenance=mode=min",
            "-o",
            &format!("type=oci,tar=false,dest={}", attested_multi.display()),
            "--build-context",
            &context,
            from_multi.to_str().unwrap(),
        ],
        None,
    ));
    let uris = materials(&attested_multi);
    let expected = format!("pkg:oci/base?digest={index_digest}&platform=linux%2Famd64");
    assert!(uris.contains(&expected), "{uris:?}");
    // The platform whose layer is gone fails, naming the context.
    let only = fixture.path("arm64-base");
    write_files(&only, &[("Dockerfile", "FROM base\n")]);
    let stderr = failed(&fixture.build(
        &[
            "--platform",
            "linux/arm64",
            "--build-context",
            &context,
            "-o",
            &format!("type=local,dest={}", fixture.path("arm64-out").display()),
            only.to_str().unwrap(),
        ],
        None,
    ));
    assert!(
        stderr.contains(&context) && stderr.contains(arm64_layer),
        "{stderr}"
    );

    // Never pulled, even with --pull: nothing here can reach a registry.
    let only = fixture.path("only-base");
    write_files(&only, &[("Dockerfile", "FROM base\nRUN cat /marker\n")]);
    let context = format!("base={layout_url}:v2");
    ok(&fixture.build(
        &[
            "--pull",
            "--build-context",
            &context,
            only.to_str().unwrap(),
        ],
        None,
    ));

    let stderr = failed(&fixture.build(
        &[
            "--build-context",
            "x=oci-layout:///nowhere:v1",
            ctx.to_str().unwrap(),
        ],
        None,
    ));
    assert!(stderr.contains("/nowhere/index.json"), "{stderr}");
}

/// The `resolvedDependencies` URIs of the provenance attestation in the OCI
/// layout `layout` (one image, one platform, with its attestation).
fn materials(layout: &Path) -> Vec<String> {
    let blob = |value: &serde_json::Value| -> serde_json::Value {
        let digest = value["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        serde_json::from_str(&read(&layout.join("blobs/sha256").join(digest))).unwrap()
    };
    let top: serde_json::Value = serde_json::from_str(&read(&layout.join("index.json"))).unwrap();
    let images = blob(&top["manifests"][0]);
    let attestation = images["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["vnd.docker.reference.type"] == "attestation-manifest")
        .map(blob)
        .unwrap();
    let statement = blob(&attestation["layers"][0]);
    statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["uri"].as_str().unwrap().to_string())
        .collect()
}
