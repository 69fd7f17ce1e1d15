//! Plain layers compressed on their way out of the store: media types per
//! family, bytes that decompress to the plain layer, one compression per
//! layer and algorithm, the same digests in two stores and after a prune.

use std::fs;
use std::io::Read;
use std::path::Path;

use kiln_layers::compressed::{compressed_image, LayerForm};
use kiln_layers::diff::{write_layer, DiffOptions};
use kiln_layers::oci::{ImageConfig, Index, Manifest, ManifestKind, RootFs};
use kiln_layers::store::PruneOptions;
use kiln_layers::{media, Compression, Descriptor, NoProgress, Reference, Store};

fn blob_count(store: &Store) -> usize {
    fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count()
}

fn manifest(store: &Store, desc: &Descriptor) -> Manifest {
    match store.read_manifest(desc).unwrap() {
        ManifestKind::Image(m) => m,
        ManifestKind::Index(_) => panic!("{} is an index", desc.digest),
    }
}

fn decompressed(store: &Store, desc: &Descriptor) -> Vec<u8> {
    let blob = store.open_blob(&desc.digest).unwrap();
    let mut out = Vec::new();
    kiln_layers::compress::decompress(blob)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// An image of two plain layers made from directories, as a build makes them.
fn plain_image(store: &Store, work: &Path) -> (Descriptor, Vec<Descriptor>) {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, content) in ["first layer\n", "second layer, another file\n"]
        .iter()
        .enumerate()
    {
        let dir = work.join(format!("layer{i}"));
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(
            dir.join("etc").join(format!("file{i}")),
            content.repeat(5000),
        )
        .unwrap();
        let options = DiffOptions {
            source_date_epoch: Some(0),
            overlay_whiteouts: true,
            write_back: false,
            commit_in_background: false,
        };
        let blob = write_layer(store, &dir, Compression::None, &options, &NoProgress).unwrap();
        assert_eq!(blob.descriptor.media_type, media::OCI_LAYER);
        assert_eq!(
            blob.descriptor.digest, blob.diff_id,
            "a plain layer's digest is its diff id"
        );
        layers.push(blob.descriptor);
        diff_ids.push(blob.diff_id);
    }
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids,
        },
        ..Default::default()
    };
    let desc = store.write_image(&config, &layers).unwrap();
    (desc, layers)
}

#[test]
fn plain_layers_leave_gzip_or_zstd_once_and_alike_in_two_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let (plain_desc, plain_layers) = plain_image(&store, tmp.path());

    for (compression, media_type) in [
        (Compression::Gzip, media::OCI_LAYER_GZIP),
        (Compression::Zstd, media::OCI_LAYER_ZSTD),
    ] {
        let out = compressed_image(&store, &plain_desc, compression, &NoProgress).unwrap();
        assert_ne!(out.digest, plain_desc.digest);
        assert_eq!(out.media_type, media::OCI_MANIFEST);
        assert_eq!(out.platform, plain_desc.platform);
        let m = manifest(&store, &out);
        assert_eq!(
            m.config,
            manifest(&store, &plain_desc).config,
            "config unchanged"
        );
        assert_eq!(m.layers.len(), 2);
        for (layer, plain) in m.layers.iter().zip(&plain_layers) {
            assert_eq!(layer.media_type, media_type);
            assert!(
                layer.size < plain.size,
                "{compression:?} of repeated text is smaller"
            );
            let bytes = decompressed(&store, layer);
            assert_eq!(bytes, fs::read(store.blob_path(&plain.digest)).unwrap());
        }
        // Asked again: the remembered variants, no new blob, same manifest.
        let blobs = blob_count(&store);
        let again = compressed_image(&store, &plain_desc, compression, &NoProgress).unwrap();
        assert_eq!(again.digest, out.digest);
        assert_eq!(blob_count(&store), blobs);
    }

    // The same layers in another store compress to the same bytes.
    let other = Store::open(tmp.path().join("other")).unwrap();
    let work2 = tmp.path().join("work2");
    let (plain2, _) = plain_image(&other, &work2);
    assert_eq!(plain2.digest, plain_desc.digest);
    let a = compressed_image(&store, &plain_desc, Compression::Gzip, &NoProgress).unwrap();
    let b = compressed_image(&other, &plain2, Compression::Gzip, &NoProgress).unwrap();
    assert_eq!(a.digest, b.digest);
}

#[test]
fn prune_drops_variants_which_come_back_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let (plain_desc, _) = plain_image(&store, tmp.path());
    store
        .tag(&Reference::parse("app:plain").unwrap(), &plain_desc)
        .unwrap();
    let gz = compressed_image(&store, &plain_desc, Compression::Gzip, &NoProgress).unwrap();
    let gz_layers = manifest(&store, &gz).layers;
    assert!(store.has_blob(&gz_layers[0].digest));
    let records = |s: &Store| {
        fs::read_dir(s.root().join("variants/gzip"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(records(&store), 2);

    // Nothing tags the compressed form: prune removes its blobs and records,
    // keeps the plain image whole.
    store.prune(PruneOptions::default()).unwrap();
    assert!(!store.has_blob(&gz.digest));
    assert!(!store.has_blob(&gz_layers[0].digest));
    assert_eq!(records(&store), 0);
    let plain = manifest(&store, &plain_desc);
    assert!(plain.layers.iter().all(|l| store.has_blob(&l.digest)));

    let again = compressed_image(&store, &plain_desc, Compression::Gzip, &NoProgress).unwrap();
    assert_eq!(again.digest, gz.digest);
    assert_eq!(records(&store), 2);
}

#[test]
fn docker_types_indexes_and_compressed_images() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let (plain_desc, plain_layers) = plain_image(&store, tmp.path());

    // A Docker-typed manifest over the same plain layers stays Docker-typed.
    let mut docker = manifest(&store, &plain_desc);
    docker.media_type = Some(media::DOCKER_MANIFEST.into());
    for l in &mut docker.layers {
        l.media_type = media::DOCKER_LAYER.into();
    }
    let docker_desc = store.put_json(media::DOCKER_MANIFEST, &docker).unwrap();
    let out = compressed_image(&store, &docker_desc, Compression::Gzip, &NoProgress).unwrap();
    assert_eq!(out.media_type, media::DOCKER_MANIFEST);
    let m = manifest(&store, &out);
    assert_eq!(m.media_type.as_deref(), Some(media::DOCKER_MANIFEST));
    assert!(m
        .layers
        .iter()
        .all(|l| l.media_type == media::DOCKER_LAYER_GZIP));

    // zstd keeps Docker's types, as current BuildKit writes them: Docker's
    // zstd layer type, the config bytes the same.
    let out = compressed_image(&store, &docker_desc, Compression::Zstd, &NoProgress).unwrap();
    assert_eq!(out.media_type, media::DOCKER_MANIFEST);
    let m = manifest(&store, &out);
    assert_eq!(m.media_type.as_deref(), Some(media::DOCKER_MANIFEST));
    assert_eq!(m.config, docker.config);
    assert!(m
        .layers
        .iter()
        .all(|l| l.media_type == media::DOCKER_LAYER_ZSTD));

    // An index: its plain child is replaced, the index rewritten.
    let mut index = Index::empty();
    index.manifests.push(plain_desc.clone());
    let index_desc = store.put_json(media::OCI_INDEX, &index).unwrap();
    let out = compressed_image(&store, &index_desc, Compression::Gzip, &NoProgress).unwrap();
    assert_ne!(out.digest, index_desc.digest);
    let child = match store.read_manifest(&out).unwrap() {
        ManifestKind::Index(i) => i.manifests[0].clone(),
        ManifestKind::Image(_) => panic!("expected an index"),
    };
    let direct = compressed_image(&store, &plain_desc, Compression::Gzip, &NoProgress).unwrap();
    assert_eq!(child.digest, direct.digest);

    // Already compressed, or no compression asked: the same descriptor back,
    // bytes untouched.
    let again = compressed_image(&store, &direct, Compression::Gzip, &NoProgress).unwrap();
    assert_eq!(again, direct);
    let none = compressed_image(&store, &plain_desc, Compression::None, &NoProgress).unwrap();
    assert_eq!(none, plain_desc);
    assert_eq!(manifest(&store, &plain_desc).layers, plain_layers);
}

/// `force` (BuildKit's `force-compression=true`): layers stored
/// compressed with another algorithm, as a pulled base image's are, leave
/// in the one asked for; the same algorithm, or no `force`, leaves them as
/// they are. The converted bytes decompress to the same tar, so the
/// config's diff ids still hold.
#[test]
fn force_converts_layers_compressed_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let (plain_desc, plain_layers) = plain_image(&store, tmp.path());
    // What a registry gave: every layer gzip.
    let pulled = compressed_image(&store, &plain_desc, Compression::Gzip, &NoProgress).unwrap();
    let forced = |compression| LayerForm {
        compression,
        force: true,
        level: None,
    };

    for same in [
        LayerForm::from(Compression::Zstd),
        LayerForm::from(Compression::None),
        forced(Compression::Gzip),
    ] {
        let out = compressed_image(&store, &pulled, same, &NoProgress).unwrap();
        assert_eq!(out, pulled, "{same:?}");
    }

    let zstd = compressed_image(&store, &pulled, forced(Compression::Zstd), &NoProgress).unwrap();
    let m = manifest(&store, &zstd);
    assert_eq!(m.config, manifest(&store, &pulled).config);
    assert_eq!(m.layers.len(), plain_layers.len());
    for (layer, plain) in m.layers.iter().zip(&plain_layers) {
        assert_eq!(layer.media_type, media::OCI_LAYER_ZSTD);
        assert_eq!(
            decompressed(&store, layer),
            fs::read(store.blob_path(&plain.digest)).unwrap()
        );
    }
    // The plain layers' zstd form and the gzip ones' are the same bytes.
    let direct = compressed_image(&store, &plain_desc, Compression::Zstd, &NoProgress).unwrap();
    assert_eq!(zstd.digest, direct.digest);
    // Asked again: remembered, nothing new written.
    let blobs = blob_count(&store);
    let again = compressed_image(&store, &pulled, forced(Compression::Zstd), &NoProgress).unwrap();
    assert_eq!(again.digest, zstd.digest);
    assert_eq!(blob_count(&store), blobs);

    // Back to gzip from zstd, and to plain: the plain layers themselves.
    let gzip = compressed_image(&store, &zstd, forced(Compression::Gzip), &NoProgress).unwrap();
    assert_eq!(gzip.digest, pulled.digest);
    let none = compressed_image(&store, &pulled, forced(Compression::None), &NoProgress).unwrap();
    assert_eq!(manifest(&store, &none).layers, plain_layers);
    assert_eq!(none.digest, plain_desc.digest);
}

/// force-compression, further: what a converted layer's descriptor said
/// of the old bytes (where to fetch them, what they hold) goes; a
/// compressed nondistributable layer is refused rather than sent as it
/// is; a blob read as plain (here gzip bytes mislabelled) and the same
/// blob read as gzip are remembered apart; the records that name one
/// converted blob go with it in one prune.
#[test]
fn force_drops_stale_fields_refuses_nondistributable_and_keeps_records_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let (plain_desc, plain_layers) = plain_image(&store, tmp.path());
    store
        .tag(&Reference::parse("app:plain").unwrap(), &plain_desc)
        .unwrap();
    let pulled = compressed_image(&store, &plain_desc, Compression::Gzip, &NoProgress).unwrap();
    let forced = |compression| LayerForm {
        compression,
        force: true,
        level: None,
    };
    let with_layers = |edit: &dyn Fn(&mut Manifest)| {
        let mut m = manifest(&store, &pulled);
        edit(&mut m);
        store.put_json(media::OCI_MANIFEST, &m).unwrap()
    };

    let annotated = with_layers(&|m| {
        m.layers[0].urls = Some(vec!["https://example.com/layer".into()]);
        m.layers[0]
            .annotations
            .insert("org.example.gzip-only".into(), "1".into());
    });
    let out = compressed_image(&store, &annotated, forced(Compression::Zstd), &NoProgress).unwrap();
    let layer = &manifest(&store, &out).layers[0];
    assert_eq!(layer.media_type, media::OCI_LAYER_ZSTD);
    assert_eq!((layer.urls.clone(), layer.annotations.len()), (None, 0));

    let nondistributable = with_layers(&|m| {
        m.layers[0].media_type = media::OCI_LAYER_ND_GZIP.into();
    });
    let err = compressed_image(
        &store,
        &nondistributable,
        forced(Compression::Zstd),
        &NoProgress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("nondistributable"), "{err}");
    for fine in [
        LayerForm::from(Compression::Zstd),
        forced(Compression::Gzip),
    ] {
        let out = compressed_image(&store, &nondistributable, fine, &NoProgress).unwrap();
        assert_eq!(out, nondistributable, "{fine:?}");
    }

    // gzip bytes labelled plain leave compressed again, as they are; the
    // same blob labelled gzip is then converted from what it holds.
    let mislabelled = with_layers(&|m| m.layers[0].media_type = media::OCI_LAYER.into());
    compressed_image(&store, &mislabelled, Compression::Zstd, &NoProgress).unwrap();
    let converted =
        compressed_image(&store, &pulled, forced(Compression::Zstd), &NoProgress).unwrap();
    for (layer, plain) in manifest(&store, &converted)
        .layers
        .iter()
        .zip(&plain_layers)
    {
        assert_eq!(
            decompressed(&store, layer),
            fs::read(store.blob_path(&plain.digest)).unwrap()
        );
    }

    // The plain layers' zstd forms are the gzip ones' converted: one blob,
    // two records each; one prune takes blob and records.
    compressed_image(&store, &plain_desc, Compression::Zstd, &NoProgress).unwrap();
    let records = || {
        fs::read_dir(store.root().join("variants/zstd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(records(), 2 * plain_layers.len() + 1);
    store.prune(PruneOptions::default()).unwrap();
    assert_eq!(records(), 0);
}

/// `compression-level=`: the layers compressed at that level, remembered
/// apart from kiln's own level's (which a level equal to it shares); a
/// layer already compressed leaves as it is, as in BuildKit.
#[test]
fn levels_compress_apart_and_decompress_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let (plain_desc, plain_layers) = plain_image(&store, tmp.path());
    let at = |compression, level| LayerForm {
        compression,
        force: false,
        level,
    };
    for (compression, other, own) in [(Compression::Gzip, 1, 6), (Compression::Zstd, 19, 3)] {
        let default = compressed_image(&store, &plain_desc, compression, &NoProgress).unwrap();
        let same =
            compressed_image(&store, &plain_desc, at(compression, Some(own)), &NoProgress).unwrap();
        assert_eq!(same.digest, default.digest, "{compression:?} level {own}");
        let leveled = compressed_image(
            &store,
            &plain_desc,
            at(compression, Some(other)),
            &NoProgress,
        )
        .unwrap();
        assert_ne!(
            leveled.digest, default.digest,
            "{compression:?} level {other}"
        );
        for (layer, plain) in manifest(&store, &leveled).layers.iter().zip(&plain_layers) {
            assert_eq!(
                decompressed(&store, layer),
                fs::read(store.blob_path(&plain.digest)).unwrap()
            );
        }
        let name = match compression {
            Compression::Gzip => format!("gzip-{other}"),
            _ => format!("zstd-{other}"),
        };
        assert_eq!(
            fs::read_dir(store.root().join("variants").join(&name))
                .unwrap()
                .count(),
            plain_layers.len(),
            "{name}"
        );
        // Already compressed: as it is, whatever the level.
        let again =
            compressed_image(&store, &default, at(compression, Some(other)), &NoProgress).unwrap();
        assert_eq!(again, default);
    }
    // gzip's header says which end of the scale made it (flate2 sets XFL:
    // 4 for the fastest level, 2 for the best, 0 between).
    let xfl = |level| {
        let out = compressed_image(
            &store,
            &plain_desc,
            at(Compression::Gzip, level),
            &NoProgress,
        )
        .unwrap();
        let layer = &manifest(&store, &out).layers[0];
        fs::read(store.blob_path(&layer.digest)).unwrap()[8]
    };
    assert_eq!([xfl(Some(1)), xfl(None), xfl(Some(9))], [4, 0, 2]);
    let err = compressed_image(
        &store,
        &plain_desc,
        at(Compression::Gzip, Some(10)),
        &NoProgress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("gzip takes 0 to 9"), "{err}");
}

#[test]
fn a_damaged_plain_layer_is_not_published() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let (plain_desc, plain_layers) = plain_image(&store, tmp.path());
    // One byte of the stored layer flipped, as a disk error would.
    let path = store.blob_path(&plain_layers[1].digest);
    let mut bytes = fs::read(&path).unwrap();
    bytes[700] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let blobs = blob_count(&store);
    let err = compressed_image(&store, &plain_desc, Compression::Gzip, &NoProgress).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&plain_layers[1].digest.to_string()),
        "the error names the damaged layer: {text}"
    );
    // The good layer may have been compressed; the damaged one left nothing.
    assert!(!store
        .root()
        .join("variants/gzip")
        .join(plain_layers[1].digest.hex())
        .exists());
    assert!(blob_count(&store) <= blobs + 1);
}
