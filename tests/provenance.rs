//! SLSA provenance (`--provenance`, `--attest type=provenance`) end to end
//! through the binary against a real registry: the pushed image is an
//! index whose attestation manifest is BuildKit's (read back with
//! `skopeo inspect --raw`), the statement validates against the in-toto
//! Statement v1 and SLSA provenance v1 schemas in
//! `testdata/provenance` (Debian's python3-jsonschema), it lists the base
//! image by digest, the build args (`mode=max` only), the secret ids but
//! never a value, the Dockerfile's digest, ADD's URL by digest and the
//! Git commit of the context; credentials in URLs never appear. Built
//! again with SOURCE_DATE_EPOCH, the image is the same and the
//! attestation new. Without the flag the image is one manifest, as
//! before.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{busybox_rootfs_tar, kiln_command, kiln_ok};
use kiln_testsupport::git::{git_in, serve_git};
use kiln_testsupport::http::FileServer;
use kiln_testsupport::image::{digest_of, host_platform, skopeo_raw_manifest};
use serde_json::Value;

const SECRET_VALUE: &str = "s3cret-value-5150";
const ARG_PASSWORD: &str = "pw-arg-77";
const REMOTE_TOKEN: &str = "tok3n-origin-31";
const FILE_PASSWORD: &str = "pw-f1le-server-8";
const ADDED: &[u8] = b"added over http\n";

struct Fixture {
    dir: tempfile::TempDir,
    registry: kiln_testsupport::RegistryServer,
}

impl Fixture {
    /// A registry holding `busybox:1`, and an empty store to build in.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
        let tar = dir.path().join("busybox.tar");
        busybox_rootfs_tar(&tar).unwrap();
        let seed = dir.path().join("seed");
        let base = format!("{}/busybox:1", registry.host);
        kiln_ok(&seed, &["import", tar.to_str().unwrap(), &base]);
        kiln_ok(&seed, &["push", &base]);
        Fixture { dir, registry }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn build(&self, args: &[&str]) -> Output {
        kiln_command()
            .arg("--root")
            .arg(self.path("store"))
            .arg("build")
            .args(args)
            .env("KILN_PROGRESS", "plain")
            .env("TOKEN", SECRET_VALUE)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.registry.host)
    }

    /// A blob of repository `repo` from the registry.
    fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let url = format!("http://{}/v2/{repo}/blobs/{digest}", self.registry.host);
        let out = Command::new("curl").args(["-fsSL", &url]).output().unwrap();
        assert!(out.status.success(), "curl {url}");
        assert_eq!(digest_of(&out.stdout), digest, "blob {digest}");
        out.stdout
    }
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "build failed:\n{stderr}");
    stderr
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "build succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn raw(reference: &str) -> Vec<u8> {
    skopeo_raw_manifest(&format!("docker://{reference}"), None, None).unwrap()
}

/// Validates the statement against the schemas; panics naming each
/// violation.
fn validate(statement: &[u8]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/provenance/validate.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup installs python3-jsonschema)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(statement).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the statement does not validate:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(statement)
    );
}

/// The pushed index of `reference`: checks BuildKit's shape (the image,
/// then its attestation manifest: with `artifact` an OCI artifact whose
/// subject is the image, current BuildKit's default; else an image of
/// platform unknown/unknown) and returns the index, the image's manifest
/// digest and the statement's bytes.
fn attested(
    fixture: &Fixture,
    repo: &str,
    reference: &str,
    artifact: bool,
) -> (Value, String, Vec<u8>) {
    let index = json(&raw(reference));
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    let image = &entries[0];
    assert_eq!(image["platform"]["architecture"], host_arch(), "{index}");
    assert!(image.get("annotations").is_none(), "{index}");
    let attestation = &entries[1];
    assert_eq!(
        attestation["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        attestation["annotations"]["vnd.docker.reference.type"],
        "attestation-manifest"
    );
    assert_eq!(
        attestation["annotations"]["vnd.docker.reference.digest"],
        image["digest"]
    );
    assert_eq!(
        attestation["platform"],
        serde_json::json!({"architecture": "unknown", "os": "unknown"})
    );
    let image_digest = image["digest"].as_str().unwrap().to_string();
    let att_digest = attestation["digest"].as_str().unwrap();
    let manifest = json(&raw(&format!(
        "{}/{repo}@{att_digest}",
        fixture.registry.host
    )));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.in-toto+json");
    assert_eq!(
        layers[0]["annotations"]["in-toto.io/predicate-type"],
        "https://slsa.dev/provenance/v1"
    );
    let config_bytes = fixture.blob(repo, manifest["config"]["digest"].as_str().unwrap());
    if artifact {
        assert_eq!(
            manifest["artifactType"], "application/vnd.docker.attestation.manifest.v1+json",
            "{manifest}"
        );
        assert_eq!(
            manifest["config"],
            serde_json::json!({
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                "size": 2,
                "data": "e30="
            })
        );
        assert_eq!(config_bytes, b"{}");
        assert_eq!(manifest["subject"]["digest"], image["digest"], "{manifest}");
        assert_eq!(manifest["subject"]["mediaType"], image["mediaType"]);
        assert_eq!(manifest["subject"]["size"], image["size"]);
    } else {
        assert!(manifest.get("artifactType").is_none(), "{manifest}");
        assert!(manifest.get("subject").is_none(), "{manifest}");
        let config = json(&config_bytes);
        assert_eq!(config["architecture"], "unknown", "{config}");
        assert_eq!(config["rootfs"]["diff_ids"][0], layers[0]["digest"]);
    }
    let statement = fixture.blob(repo, layers[0]["digest"].as_str().unwrap());
    validate(&statement);
    (index, image_digest, statement)
}

fn host_arch() -> String {
    host_platform().split('/').nth(1).unwrap().to_string()
}

/// A context in a Git work tree whose origin URL carries a token, whose
/// Dockerfile ADDs a file from a server behind basic auth (the URL holds
/// the password).
fn context(fixture: &Fixture) -> (PathBuf, String, FileServer) {
    let mut files = std::collections::BTreeMap::new();
    files.insert("/added.txt".to_string(), ADDED.to_vec());
    let server = FileServer::start_with_basic_auth(files, "fetch", FILE_PASSWORD).unwrap();
    let ctx = fixture.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let dockerfile = format!(
        "FROM {}\nARG VERSION\nARG URL\n\
         RUN --mount=type=secret,id=token,required=true test -s /run/secrets/token && echo $VERSION > /v\n\
         COPY data.txt /data.txt\n\
         ADD http://fetch:{FILE_PASSWORD}@{}/added.txt /added.txt\n",
        fixture.image("busybox:1"),
        server.host
    );
    std::fs::write(ctx.join("Dockerfile"), &dockerfile).unwrap();
    std::fs::write(ctx.join("data.txt"), "data\n").unwrap();
    git_in(&ctx, &["init", "-q", "-b", "main"]);
    git_in(
        &ctx,
        &[
            "remote",
            "add",
            "origin",
            &format!("https://ci:{REMOTE_TOKEN}@git.example/org/app.git"),
        ],
    );
    git_in(&ctx, &["add", "-A"]);
    git_in(&ctx, &["commit", "-q", "-m", "one"]);
    (ctx, dockerfile, server)
}

#[test]
fn provenance_attestation_in_the_pushed_index() {
    kiln_testsupport::require_namespaces!("builds run steps in namespaces");
    let fixture = Fixture::new();
    let (ctx, dockerfile, server) = context(&fixture);
    let ctx_arg = ctx.to_str().unwrap();
    let image = fixture.image("app:max");
    let metadata = fixture.path("metadata.json");
    let secret_url = format!("https://bob:{ARG_PASSWORD}@files.example/x");
    let stderr = ok(&fixture.build(&[
        "--provenance",
        "mode=max,builder-id=https://ci.example/runners/7,reproducible=true",
        "--build-arg",
        "VERSION=1.2",
        "--build-arg",
        &format!("URL={secret_url}"),
        "--secret",
        "id=token,env=TOKEN",
        "--annotation",
        "index:org.example.index=i",
        "--annotation",
        "index-descriptor:org.example.desc=d",
        "-t",
        &image,
        "--push",
        "--metadata-file",
        metadata.to_str().unwrap(),
        ctx_arg,
    ]));
    let (index, image_digest, statement) = attested(&fixture, "app", &image, true);
    assert_eq!(index["annotations"]["org.example.index"], "i", "{index}");
    let text = String::from_utf8_lossy(&statement).into_owned();
    for leaked in [SECRET_VALUE, ARG_PASSWORD, REMOTE_TOKEN, FILE_PASSWORD] {
        assert!(!text.contains(leaked), "{leaked} in {text}");
        assert!(!stderr.contains(leaked), "{leaked} in the output");
    }
    let statement = json(&statement);
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    let subject = &statement["subject"][0];
    assert_eq!(
        format!("sha256:{}", subject["digest"]["sha256"].as_str().unwrap()),
        image_digest
    );
    let host = fixture.registry.host.replace(':', "%3A");
    let platform = host_platform().replace('/', "%2F");
    assert_eq!(
        subject["name"],
        format!("pkg:docker/{host}/app@max?platform={platform}")
    );
    let predicate = &statement["predicate"];
    let definition = &predicate["buildDefinition"];
    // The base by digest: the digest the registry has for busybox:1.
    let base_digest = digest_of(&raw(&fixture.image("busybox:1")));
    // ADD's URL with the content's digest, its credentials masked.
    assert_eq!(
        definition["resolvedDependencies"],
        serde_json::json!([{
            "uri": format!("pkg:docker/{host}/busybox@1?platform={platform}"),
            "digest": {"sha256": base_digest.trim_start_matches("sha256:")},
        }, {
            "uri": format!("http://xxxxx:xxxxx@{}/added.txt", server.host),
            "digest": {"sha256": digest_of(ADDED).trim_start_matches("sha256:")},
        }])
    );
    let external = &definition["externalParameters"];
    let dockerfile_digest = digest_of(dockerfile.as_bytes());
    assert_eq!(
        external["configSource"],
        serde_json::json!({
            "path": "Dockerfile",
            "digest": {"sha256": dockerfile_digest.trim_start_matches("sha256:")},
        })
    );
    let request = &external["request"];
    assert_eq!(request["frontend"], "dockerfile.v0");
    assert_eq!(request["args"]["build-arg:VERSION"], "1.2");
    assert_eq!(
        request["args"]["build-arg:URL"],
        "https://xxxxx:xxxxx@files.example/x"
    );
    assert_eq!(request["secrets"], serde_json::json!([{"id": "token"}]));
    assert_eq!(
        request["locals"],
        serde_json::json!([{"name": "context"}, {"name": "dockerfile"}])
    );
    // builder-id= and reproducible=true, as BuildKit writes them.
    assert_eq!(
        predicate["runDetails"]["builder"]["id"],
        "https://ci.example/runners/7"
    );
    let metadata_run = &predicate["runDetails"]["metadata"];
    assert_eq!(
        metadata_run["buildkit_reproducible"], true,
        "{metadata_run}"
    );
    let head = git_in(&ctx, &["rev-parse", "HEAD"]).trim().to_string();
    assert_eq!(
        metadata_run["buildkit_metadata"]["vcs"],
        serde_json::json!({"revision": head, "source": "https://xxxxx:xxxxx@git.example/org/app.git"})
    );
    assert_eq!(
        metadata_run["buildkit_completeness"],
        serde_json::json!({"request": true, "resolvedDependencies": false})
    );
    assert_eq!(
        metadata_run["buildkit_metadata"]["source"]["infos"][0]["filename"],
        "Dockerfile"
    );
    // The metadata file names the index, with its descriptor annotation.
    let meta: Value = json(&std::fs::read(&metadata).unwrap());
    assert_eq!(
        meta["containerimage.digest"].as_str().unwrap(),
        digest_of(&raw(&image))
    );
    assert_eq!(
        meta["containerimage.descriptor"]["annotations"]["org.example.desc"],
        "d"
    );
    let meta_text = meta.to_string();
    assert!(!meta_text.contains(SECRET_VALUE) && !meta_text.contains(ARG_PASSWORD));

    // mode=min (what `--attest type=provenance,mode=min` asks): no build
    // args, no secret ids; the request is incomplete.
    let min_image = fixture.image("app:min");
    ok(&fixture.build(&[
        "--attest",
        "type=provenance,mode=min",
        "--build-arg",
        "VERSION=1.2",
        "--secret",
        "id=token,env=TOKEN",
        "-t",
        &min_image,
        "--push",
        ctx_arg,
    ]));
    let (_, _, statement) = attested(&fixture, "app", &min_image, true);
    let statement = json(&statement);
    let request = &statement["predicate"]["buildDefinition"]["externalParameters"]["request"];
    assert!(request.get("args").is_none(), "{request}");
    assert!(request.get("secrets").is_none(), "{request}");
    assert_eq!(
        statement["predicate"]["runDetails"]["metadata"]["buildkit_completeness"]["request"],
        false
    );
    // Without builder-id= and reproducible=: kiln's own id, and no claim
    // of reproducibility.
    let run_details = &statement["predicate"]["runDetails"];
    assert!(
        run_details["builder"]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("pkg:generic/kiln@")),
        "{run_details}"
    );
    assert!(
        run_details["metadata"]
            .get("buildkit_reproducible")
            .is_none(),
        "{run_details}"
    );

    // oci-artifact=false: the attestation manifest BuildKit wrote before
    // its compatibility version 0.31 (an image of platform unknown/unknown).
    let classic = fixture.image("app:classic");
    ok(&fixture.build(&[
        "--provenance",
        "mode=min",
        "--output",
        &format!("type=image,name={classic},push=true,oci-artifact=false"),
        "--secret",
        "id=token,env=TOKEN",
        "--build-arg",
        "VERSION=1.2",
        ctx_arg,
    ]));
    attested(&fixture, "app", &classic, false);
    // Pushed again compressed otherwise (the build pushed its layers
    // plain): the attestation names the image as the registry now has it,
    // by its subject and its index entry's annotation.
    let plain = fixture.image("app:plain");
    ok(&fixture.build(&[
        "--provenance",
        "mode=min",
        "--output",
        &format!("type=image,name={plain},push=true,compression=uncompressed"),
        "--secret",
        "id=token,env=TOKEN",
        "--build-arg",
        "VERSION=1.2",
        ctx_arg,
    ]));
    attested(&fixture, "app", &plain, true);
    let again = fixture.image("app:again");
    let store = fixture.path("store");
    kiln_ok(&store, &["tag", &plain, &again]);
    kiln_ok(&store, &["push", &again]);
    attested(&fixture, "app", &again, true);
    let refused = failed(&fixture.build(&[
        "--provenance",
        "mode=min",
        "--output",
        &format!("type=image,name={classic},push=true,oci-artifact=true,oci-mediatypes=false"),
        "--secret",
        "id=token,env=TOKEN",
        "--build-arg",
        "VERSION=1.2",
        ctx_arg,
    ]));
    assert!(
        refused.contains("\"oci-artifact=true\" conflicts with \"oci-mediatypes=false\""),
        "{refused}"
    );

    // `--provenance=true` is mode=max (buildx sends no mode; BuildKit's
    // default is max): the build args are in the request. The build arg
    // BUILDKIT_ATTEST_PROVENANCE asks as --attest does.
    // A --provenance=false beside it sends BuildKit nothing (buildx drops
    // a disabled attestation): the build arg asks alone.
    for (name, flags, wanted_args) in [
        ("app:true", &["--provenance", "true"][..], true),
        (
            "app:arg",
            &["--build-arg", "BUILDKIT_ATTEST_PROVENANCE=mode=min"][..],
            false,
        ),
        (
            "app:off-arg",
            &[
                "--provenance",
                "false",
                "--build-arg",
                "BUILDKIT_ATTEST_PROVENANCE=mode=max",
            ][..],
            true,
        ),
    ] {
        let image = fixture.image(name);
        let mut args = flags.to_vec();
        args.extend([
            "--build-arg",
            "VERSION=1.2",
            "--secret",
            "id=token,env=TOKEN",
            "-t",
            &image,
            "--push",
            ctx_arg,
        ]);
        ok(&fixture.build(&args));
        let (_, _, statement) = attested(&fixture, "app", &image, true);
        let statement = json(&statement);
        let request = &statement["predicate"]["buildDefinition"]["externalParameters"]["request"];
        assert_eq!(
            request.get("args").is_some(),
            wanted_args,
            "{flags:?}: {request}"
        );
    }

    // Without the flag: one manifest, as before.
    let plain = fixture.image("app:plain");
    ok(&fixture.build(&[
        "--secret",
        "id=token,env=TOKEN",
        "-t",
        &plain,
        "--push",
        ctx_arg,
    ]));
    let manifest = json(&raw(&plain));
    assert_eq!(
        manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{manifest}"
    );
}

#[test]
fn provenance_of_a_git_context_names_its_commit() {
    kiln_testsupport::require_namespaces!("builds run steps in namespaces");
    let fixture = Fixture::new();
    let served = fixture.path("served");
    let repo = served.join("repo.git");
    std::fs::create_dir_all(&repo).unwrap();
    let dockerfile = format!(
        "FROM {}\nCOPY data.txt /data.txt\n",
        fixture.image("busybox:1")
    );
    std::fs::create_dir_all(repo.join("app")).unwrap();
    std::fs::write(repo.join("app/Dockerfile"), &dockerfile).unwrap();
    std::fs::write(repo.join("app/data.txt"), "v1\n").unwrap();
    git_in(&repo, &["init", "-q", "-b", "main"]);
    git_in(&repo, &["add", "-A"]);
    git_in(&repo, &["commit", "-q", "-m", "one"]);
    git_in(&repo, &["tag", "v1"]);
    let commit = git_in(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let port = serve_git(&served).unwrap();
    let url = format!("git://127.0.0.1:{port}/repo.git#v1:app");
    let build_named = |name: &str, tags: &[&str]| -> (PathBuf, String) {
        let layout = fixture.path(name);
        let mut args = vec![
            "--provenance=true",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
        ];
        args.extend_from_slice(tags);
        let output = format!("type=oci,tar=false,dest={}", layout.display());
        args.extend(["-o", &output, &url]);
        ok(&fixture.build(&args));
        let top: Value = json(&std::fs::read(layout.join("index.json")).unwrap());
        let digest = top["manifests"][0]["digest"].as_str().unwrap().to_string();
        (layout, digest)
    };
    let build_into = |name: &str| build_named(name, &[]);
    let (layout, index_digest) = build_into("layout");
    // The OCI layout holds the index, the image and its attestation.
    let blob_in = |layout: &Path, digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
    };
    let index = json(&blob_in(&layout, &index_digest));
    // Built again: the same image, a new attestation (times, invocation).
    let (again, again_digest) = build_into("again");
    let again_index = json(&blob_in(&again, &again_digest));
    assert_eq!(
        again_index["manifests"][0]["digest"],
        index["manifests"][0]["digest"]
    );
    assert_ne!(again_digest, index_digest);
    let blob = |digest: &str| blob_in(&layout, digest);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert_eq!(
        entries[1]["annotations"]["vnd.docker.reference.digest"],
        entries[0]["digest"]
    );
    let manifest = json(&blob(entries[1]["digest"].as_str().unwrap()));
    let statement = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    validate(&statement);
    let statement = json(&statement);
    // No name: the subject is the digest alone.
    assert_eq!(
        statement["subject"][0],
        serde_json::json!({"digest": {"sha256": entries[0]["digest"].as_str().unwrap().trim_start_matches("sha256:")}})
    );
    // -t names the layout's image, so the subject too (buildx gives the
    // oci exporter the -t names, BuildKit's subjects are its names).
    let (named, named_digest) = build_named("named", &["-t", "example.org/app:1"]);
    let named_index = json(&blob_in(&named, &named_digest));
    let attestation = named_index["manifests"][1]["digest"].as_str().unwrap();
    let attestation = json(&blob_in(&named, attestation));
    let layer = attestation["layers"][0]["digest"].as_str().unwrap();
    let named_statement = json(&blob_in(&named, layer));
    let platform = host_platform().replace('/', "%2F");
    assert_eq!(
        named_statement["subject"][0]["name"],
        format!("pkg:docker/example.org/app@1?platform={platform}"),
        "{named_statement}"
    );
    let definition = &statement["predicate"]["buildDefinition"];
    assert_eq!(
        definition["externalParameters"]["configSource"],
        serde_json::json!({"uri": url, "digest": {"sha1": commit}, "path": "Dockerfile"})
    );
    let dependencies = definition["resolvedDependencies"].as_array().unwrap();
    assert!(
        dependencies.contains(&serde_json::json!({"uri": url, "digest": {"sha1": commit}})),
        "{definition}"
    );
    assert!(
        definition["externalParameters"]["request"]
            .get("locals")
            .is_none(),
        "{definition}"
    );
    assert_eq!(
        statement["predicate"]["runDetails"]["metadata"]["buildkit_completeness"]
            ["resolvedDependencies"],
        true
    );
}

#[test]
fn provenance_requests_kiln_cannot_honour_are_refused() {
    kiln_testsupport::require_namespaces!("builds pull and plan in the store");
    let fixture = Fixture::new();
    let ctx = fixture.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}\n", fixture.image("busybox:1")),
    )
    .unwrap();
    let ctx_arg = ctx.to_str().unwrap();
    let local = format!("type=local,dest={}", fixture.path("out").display());
    for (args, wanted) in [
        (
            vec!["--provenance", "mode=max", "--docker-mediatypes"],
            "cannot export attestations with Docker media types",
        ),
        (
            vec!["--provenance", "true", "-o", local.as_str()],
            "no provenance.json",
        ),
        (
            vec!["--attest", "type=sbom"],
            "attestation type \"sbom\" is not supported",
        ),
        (
            vec!["--provenance", "true", "--attest", "type=provenance"],
            "asked for more than once",
        ),
        (vec!["--provenance", "mode=huge"], "invalid mode \"huge\""),
        (
            vec!["--build-arg", "BUILDKIT_ATTEST_SBOM=true"],
            "--build-arg BUILDKIT_ATTEST_SBOM=true: attestation type \"sbom\" is not supported",
        ),
        (
            vec!["--build-arg", "BUILDKIT_ATTEST_PROVENANCE=mode=huge"],
            "--build-arg BUILDKIT_ATTEST_PROVENANCE mode=huge: invalid mode",
        ),
        (
            vec![
                "--build-arg",
                "BUILDKIT_ATTEST_PROVENANCE=",
                "--provenance",
                "true",
            ],
            "asked for more than once",
        ),
        (
            vec!["--attest", "type=provenance,type=sbom"],
            "attestation type \"sbom\" is not supported",
        ),
        (
            vec!["--provenance", "version=v0.2"],
            "kiln writes SLSA v1 only",
        ),
        (
            vec!["--annotation", "index:k=v"],
            "index annotations not supported",
        ),
    ] {
        let mut all = args.clone();
        all.push(ctx_arg);
        let stderr = failed(&fixture.build(&all));
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
    }
    // inline-only=true: the root filesystem output gets no provenance,
    // as BuildKit's default attestation leaves it.
    let out = fixture.path("inline");
    ok(&fixture.build(&[
        "--provenance",
        "mode=min,inline-only=true",
        "-o",
        &format!("type=local,dest={}", out.display()),
        ctx_arg,
    ]));
    assert!(out.join("bin").exists());
    assert!(!out.join("provenance.json").exists());
    assert!(!out.join("linux_amd64").exists());
}

/// Two platforms: each image gets its attestation (after the images, in
/// the same order), both name the base by digest (its index, or their
/// platform's manifest) with their own platform, and share one invocation
/// id.
#[test]
fn each_platform_of_an_index_gets_its_provenance() {
    kiln_testsupport::require_namespaces!("builds run in the store");
    let fixture = Fixture::new();
    let base = kiln_testsupport::multiarch::push_busybox_index(&fixture.registry, "multi:1")
        .expect("scripts/setup downloads busybox-static for amd64 and arm64");
    let ctx = fixture.path("mp");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}\nCOPY data.txt /data.txt\n", base.reference),
    )
    .unwrap();
    std::fs::write(ctx.join("data.txt"), "data\n").unwrap();
    let image = fixture.image("mp:1");
    ok(&fixture.build(&[
        "--platform",
        "linux/amd64,linux/arm64",
        "--provenance",
        "mode=min",
        "-t",
        &image,
        "--push",
        ctx.to_str().unwrap(),
    ]));
    let index = json(&raw(&image));
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{index}");
    let mut invocations = Vec::new();
    for (n, (platform, _)) in kiln_testsupport::multiarch::PLATFORMS.iter().enumerate() {
        let (image_entry, attestation) = (&entries[n], &entries[n + 2]);
        assert_eq!(
            format!(
                "{}/{}",
                image_entry["platform"]["os"].as_str().unwrap(),
                image_entry["platform"]["architecture"].as_str().unwrap()
            ),
            *platform
        );
        assert_eq!(
            attestation["annotations"]["vnd.docker.reference.digest"],
            image_entry["digest"]
        );
        let manifest = json(&raw(&format!(
            "{}/mp@{}",
            fixture.registry.host,
            attestation["digest"].as_str().unwrap()
        )));
        let statement = fixture.blob("mp", manifest["layers"][0]["digest"].as_str().unwrap());
        validate(&statement);
        let statement = json(&statement);
        assert_eq!(
            statement["subject"][0]["digest"]["sha256"],
            image_entry["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
        );
        let dependency = &statement["predicate"]["buildDefinition"]["resolvedDependencies"][0];
        assert_eq!(
            dependency["uri"],
            format!(
                "pkg:docker/{}/multi@1?platform={}",
                fixture.registry.host.replace(':', "%3A"),
                platform.replace('/', "%2F")
            )
        );
        // The index the name resolved to when the store keeps it under the
        // name, else the platform's manifest.
        let recorded = format!(
            "sha256:{}",
            dependency["digest"]["sha256"].as_str().unwrap()
        );
        assert!(
            recorded == base.digest || recorded == base.platform(platform).digest,
            "{recorded}: neither the base index {} nor its {platform} manifest",
            base.digest
        );
        invocations.push(statement["predicate"]["runDetails"]["metadata"]["invocationId"].clone());
    }
    assert_eq!(invocations[0], invocations[1]);
}
