//! The library's whole build ([`kiln_builder::session::Session`]) without
//! the CLI: a Dockerfile and a context in, a tagged image with its iidfile,
//! metadata file and a local output out, through a network side that has
//! nothing (every pull and fetch refused, so the store must suffice). Needs
//! root (RUN in namespaces).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_builder::copy::{FetchInfo, UrlFetcher};
use kiln_builder::export::Output;
use kiln_builder::plan::{BuildOptions, LookupError};
use kiln_builder::session::{
    BuildSettings, DockerfileInput, PullPolicy, PushTarget, Remote, RemoteError, Session,
};
use kiln_builder::solve::{ImagePuller, NoEvents};
use kiln_layers::compressed::LayerForm;
use kiln_layers::{Compression, Descriptor, Digest, NoProgress, Platform, Reference, Store};
use kiln_runtime::{HelperCommand, Network};

/// A network that has nothing and refuses to push.
struct Offline;

impl ImagePuller for Offline {
    fn pull(&self, _: &Reference, _: &Platform) -> Result<Descriptor, LookupError> {
        Err(LookupError::NotFound("offline".into()))
    }
}

impl UrlFetcher for Offline {
    fn fetch(&self, url: &str, _: &mut dyn std::io::Write) -> Result<FetchInfo, String> {
        Err(format!("{url}: offline"))
    }
}

impl Remote for Offline {
    fn push(
        &self,
        _: &Store,
        _: &Descriptor,
        _: &PushTarget,
        _: LayerForm,
    ) -> Result<(Digest, u64), RemoteError> {
        Err("offline".into())
    }
}

fn settings(context: PathBuf, dockerfile: &str, out: &std::path::Path) -> BuildSettings {
    BuildSettings {
        context_dir: context,
        context_origin: None,
        named_contexts: Default::default(),
        labels: Default::default(),
        annotations: Vec::new(),
        dockerfile: DockerfileInput {
            bytes: dockerfile.as_bytes().to_vec(),
            name: "Dockerfile".into(),
            path: None,
        },
        options: BuildOptions {
            target_platform: Platform::parse("linux/amd64").unwrap(),
            build_platform: Platform::parse("linux/amd64").unwrap(),
            ..Default::default()
        },
        tags: vec![Reference::parse("session:test").unwrap()],
        written_names: Vec::new(),
        pull: PullPolicy::Missing,
        no_cache: false,
        no_cache_stages: Default::default(),
        allow: Default::default(),
        source_date_epoch: Some(1_700_000_000),
        exporter_epoch: None,
        rewrite_timestamp: true,
        network: Network::None,
        snapshotter: kiln_runtime::Snapshotter::Overlay,
        chroot: false,
        layer_form: LayerForm::from(Compression::Gzip),
        docker_media_types: false,
        oci_artifact: true,
        secrets: BTreeMap::new(),
        ssh: BTreeMap::new(),
        limits: Default::default(),
        // The store (named by `tags`) and a directory.
        outputs: vec![
            Output::Image {
                names: Vec::new(),
                push: false,
                options: Default::default(),
            },
            Output::Local(out.join("rootfs")),
        ],
        provenance: None,
        context_commit: None,
        dockerfile_local: true,
        push: false,
        iidfile: None,
        metadata_file: Some(out.join("metadata.json")),
        metadata_warnings: false,
        helper: HelperCommand {
            program: PathBuf::from(env!("CARGO_BIN_EXE_kiln-builder-test-helper")),
            args: vec!["__runtime-helper".into()],
        },
    }
}

#[test]
fn a_session_builds_tags_and_writes_its_files() {
    if !kiln_testsupport::require_root("RUN in namespaces") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_busybox(dir.path());
    let context = dir.path().join("ctx");
    std::fs::create_dir(&context).unwrap();
    std::fs::write(context.join("hello.txt"), "hello\n").unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let dockerfile = "FROM busybox:test\nCOPY hello.txt /\nRUN cp /hello.txt /copy.txt\n";
    let settings = settings(context, dockerfile, &out);
    let session = Session {
        store: &store,
        settings: &settings,
        remote: &Offline,
        events: &NoEvents,
        reporter: &NoProgress,
        cache: &Default::default(),
    };
    let planned = session.plan().unwrap();
    assert_eq!(planned.plan.stages[0].steps.len(), 2);
    let result = session.build(planned).unwrap();

    let tagged = store
        .resolve(&Reference::parse("session:test").unwrap())
        .unwrap()
        .expect("tagged");
    assert_eq!(tagged.digest, result.built.manifest.digest);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(
        meta["containerimage.config.digest"],
        result.image_id.to_string()
    );
    assert_eq!(meta["image.name"], "docker.io/library/session:test");
    assert_eq!(
        std::fs::read_to_string(out.join("rootfs/copy.txt")).unwrap(),
        "hello\n"
    );

    // The iidfile: refused beside a local output (buildx refuses it), written
    // by a build to the store.
    let with_iid = BuildSettings {
        iidfile: Some(out.join("iid")),
        ..crate::settings(dir.path().join("ctx"), dockerfile, &out)
    };
    let refused = Session {
        settings: &with_iid,
        ..session
    };
    let Err(err) = refused.plan().and_then(|planned| refused.build(planned)) else {
        panic!("--iidfile beside type=local was taken");
    };
    assert!(
        err.to_string()
            .contains("local and tar exporters are incompatible with image ID file"),
        "{err}"
    );
    assert!(!out.join("iid").exists());
    let to_store = BuildSettings {
        outputs: Vec::new(),
        ..with_iid
    };
    let stored = Session {
        settings: &to_store,
        ..session
    };
    let again = stored.build(stored.plan().unwrap()).unwrap();
    assert_eq!(again.image_id, result.image_id);
    assert_eq!(
        std::fs::read_to_string(out.join("iid")).unwrap(),
        result.image_id.to_string()
    );

    // A base the store lacks is looked up through the remote, which has
    // nothing: the error names the line and the image.
    let missing = settings_with("FROM nothere:1\n", &out);
    let session = Session {
        settings: &missing,
        ..session
    };
    let err = session.plan().err().expect("the base is missing");
    assert_eq!(err.line(), Some(1));
    assert!(err.to_string().contains("nothere:1"), "{err}");
}

fn settings_with(dockerfile: &str, out: &std::path::Path) -> BuildSettings {
    let context = out.join("empty-context");
    std::fs::create_dir_all(&context).unwrap();
    settings(context, dockerfile, out)
}
