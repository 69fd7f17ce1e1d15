//! Layers are compressed when they leave the store, not when they are made.
//!
//! A build stores each layer as a plain tar (as Docker's image store and
//! BuildKit's snapshots keep them): the blob digest is then the diff id, and
//! no build step waits on gzip. What sends an image elsewhere (a push, an
//! OCI output) asks [`compressed_image`] for a form whose plain layers are
//! compressed. A layer stored compressed (a pulled base image's) leaves as
//! it is, unless the form says `force` (BuildKit's `force-compression=true`):
//! then one compressed otherwise is decompressed and compressed again
//! ([`LayerForm`]). Each layer is converted once per form; the result is
//! remembered under `variants/<form>/<layer hex>` (`<hex>.from-gzip` for one
//! converted from gzip; the converted blob's digest and size), so pushing
//! the same image again, or another image sharing the layer, reuses it.
//! Compression is deterministic (see [`crate::compress`]), so two stores —
//! or one store after `prune` dropped a variant — give the same compressed
//! bytes and the same manifest digest.
//!
//! ```no_run
//! # fn main() -> kiln_layers::Result<()> {
//! use kiln_layers::{compressed::compressed_image, Compression, NoProgress, Reference, Store};
//! let store = Store::open("/var/lib/kiln")?;
//! let local = store.resolve(&Reference::parse("app:latest")?)?.expect("tagged");
//! let to_push = compressed_image(&store, &local, Compression::Gzip, &NoProgress)?;
//! # let _ = to_push; Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io;

use crate::compress::{Compression, Compressor};
use crate::digest::{Digest, HashingReader};
use crate::error::{io_at, Error, Result};
use crate::oci::{media, Descriptor, ManifestKind};
use crate::progress::{Outcome, ProgressReader, Reporter};
use crate::store::{write_record, Store};

/// The media type of `plain` (an uncompressed layer type) compressed with
/// `compression`; `None` when `plain` is not an uncompressed layer.
///
/// A Docker plain layer compressed with zstd is
/// `application/vnd.docker.image.rootfs.diff.tar.zstd`, as current BuildKit
/// writes it (its zstd needs no OCI media types).
pub fn compressed_media_type(plain: &str, compression: Compression) -> Option<&'static str> {
    let (gzip, zstd) = match plain {
        media::OCI_LAYER => (media::OCI_LAYER_GZIP, media::OCI_LAYER_ZSTD),
        media::OCI_LAYER_ND => (media::OCI_LAYER_ND_GZIP, media::OCI_LAYER_ND_ZSTD),
        media::DOCKER_LAYER => (media::DOCKER_LAYER_GZIP, media::DOCKER_LAYER_ZSTD),
        _ => return None,
    };
    match compression {
        Compression::None => None,
        Compression::Gzip => Some(gzip),
        Compression::Zstd => Some(zstd),
    }
}

/// The form layers leave the store in: BuildKit's compression config
/// (`compression=`, `force-compression=`, `compression-level=`).
///
/// ```
/// use kiln_layers::compressed::LayerForm;
/// use kiln_layers::Compression;
/// let form = LayerForm::from(Compression::Zstd);
/// assert!(!form.force);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerForm {
    pub compression: Compression,
    /// `force-compression=true`: a layer stored compressed with another
    /// algorithm (a pulled base image's) is converted too, as BuildKit
    /// converts every layer whose media type says another compression;
    /// without it only plain layers are compressed.
    pub force: bool,
    /// The level layers are compressed at ([`crate::compress::level_range`]);
    /// `None`, kiln's ([`crate::compress::default_level`]). A layer
    /// already in the asked compression leaves as it is, whatever its
    /// level, as in BuildKit.
    pub level: Option<i32>,
}

impl From<Compression> for LayerForm {
    fn from(compression: Compression) -> LayerForm {
        LayerForm {
            compression,
            force: false,
            level: None,
        }
    }
}

impl LayerForm {
    /// The level asked for when it is not kiln's own (which needs no name
    /// of its own among the variants).
    fn other_level(self) -> Option<i32> {
        self.level
            .filter(|l| Some(*l) != crate::compress::default_level(self.compression))
    }

    /// The directory under `variants/` that remembers this form's layers:
    /// the algorithm, with the level when it is not kiln's (`gzip-9`).
    fn variants_name(self) -> String {
        let name = algorithm_name(self.compression);
        match self.other_level() {
            Some(level) => format!("{name}-{level}"),
            None => name.to_string(),
        }
    }

    /// How a layer of `media_type` leaves: the compression its stored
    /// bytes have and the media type it leaves as; `None` when it leaves
    /// as it is.
    fn conversion(self, media_type: &str) -> Option<(Compression, &'static str)> {
        let (stored, plain) = stored_form(media_type)?;
        if stored == Compression::None {
            return compressed_media_type(plain, self.compression).map(|to| (stored, to));
        }
        if !self.force || stored == self.compression {
            return None;
        }
        let to = match self.compression {
            Compression::None => plain,
            wanted => compressed_media_type(plain, wanted)?,
        };
        Some((stored, to))
    }
}

/// A layer media type's compression and its plain media type; `None` for
/// what kiln does not convert (a compressed nondistributable or foreign
/// layer, [`refuse_unconvertible`], or no layer at all).
fn stored_form(media_type: &str) -> Option<(Compression, &'static str)> {
    Some(match media_type {
        media::OCI_LAYER => (Compression::None, media::OCI_LAYER),
        media::OCI_LAYER_GZIP => (Compression::Gzip, media::OCI_LAYER),
        media::OCI_LAYER_ZSTD => (Compression::Zstd, media::OCI_LAYER),
        media::OCI_LAYER_ND => (Compression::None, media::OCI_LAYER_ND),
        media::DOCKER_LAYER => (Compression::None, media::DOCKER_LAYER),
        media::DOCKER_LAYER_GZIP => (Compression::Gzip, media::DOCKER_LAYER),
        media::DOCKER_LAYER_ZSTD => (Compression::Zstd, media::DOCKER_LAYER),
        _ => return None,
    })
}

/// With `force`, refuses a compressed nondistributable (foreign) layer in
/// another compression than the one asked for: BuildKit turns such a
/// layer into a distributable one and converts it; kiln, which does not,
/// says so rather than send it unconverted.
fn refuse_unconvertible(form: LayerForm, layers: &[Descriptor]) -> Result<()> {
    if !form.force {
        return Ok(());
    }
    for layer in layers {
        let stored = match layer.media_type.as_str() {
            media::OCI_LAYER_ND_GZIP | media::DOCKER_LAYER_FOREIGN => Compression::Gzip,
            media::OCI_LAYER_ND_ZSTD => Compression::Zstd,
            _ => continue,
        };
        if stored != form.compression {
            return Err(Error::BadLayer {
                layer: layer.digest.to_string(),
                reason: format!(
                    "force-compression=true: a nondistributable layer ({}), which kiln \
                     does not convert",
                    layer.media_type
                ),
            });
        }
    }
    Ok(())
}

fn algorithm_name(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// The manifest (or index) `desc` with every plain layer replaced by its
/// `form.compression` form (and with `form.force`, every layer compressed
/// otherwise), written to the store. Returns `desc` itself when nothing
/// needed converting (an image pulled from a registry, or
/// `Compression::None` without `force`), so bytes that came from
/// elsewhere are never re-serialized.
pub fn compressed_image(
    store: &Store,
    desc: &Descriptor,
    form: impl Into<LayerForm>,
    reporter: &dyn Reporter,
) -> Result<Descriptor> {
    let form = form.into();
    if form.compression == Compression::None && !form.force {
        return Ok(desc.clone());
    }
    // Nothing that is written here is referenced from index.json yet: keep
    // `kiln prune` away until the manifest is (the caller holds its own
    // lease for the upload that follows).
    let _lease = store.lease()?;
    match store.read_manifest(desc)? {
        ManifestKind::Index(mut index) => {
            // The children whose digest changed: old digest -> new one.
            let mut moved: BTreeMap<Digest, Descriptor> = BTreeMap::new();
            for child in &mut index.manifests {
                let new = compressed_image(store, child, form, reporter)?;
                if new.digest != child.digest {
                    moved.insert(child.digest.clone(), new.clone());
                    child.media_type = new.media_type;
                    child.digest = new.digest;
                    child.size = new.size;
                    child.data = None;
                }
            }
            if moved.is_empty() {
                return Ok(desc.clone());
            }
            for child in &mut index.manifests {
                rename_attested_image(store, child, &moved)?;
            }
            let media_type = index
                .media_type
                .clone()
                .unwrap_or_else(|| desc.media_type.clone());
            let mut new = store.put_json(&media_type, &index)?;
            new.platform = desc.platform.clone();
            new.annotations = desc.annotations.clone();
            Ok(new)
        }
        ManifestKind::Image(mut manifest) => {
            let layers = compressed_layers(store, &manifest.layers, form, reporter)?;
            if layers == manifest.layers {
                return Ok(desc.clone());
            }
            manifest.layers = layers;
            let media_type = manifest
                .media_type
                .clone()
                .unwrap_or_else(|| desc.media_type.clone());
            let mut new = store.put_json(&media_type, &manifest)?;
            new.platform = desc.platform.clone();
            new.annotations = desc.annotations.clone();
            Ok(new)
        }
    }
}

/// Points the attestation manifest entry `entry` of an index at its
/// image's new manifest when that moved (`moved`: old digest -> new):
/// the entry's `vnd.docker.reference.digest`, and an OCI artifact's
/// `subject`, which gives the attestation manifest a new digest too. Any
/// other entry is left as it is.
fn rename_attested_image(
    store: &Store,
    entry: &mut Descriptor,
    moved: &BTreeMap<Digest, Descriptor>,
) -> Result<()> {
    let named = (entry
        .annotations
        .get(crate::oci::ANNOTATION_REFERENCE_DIGEST))
    .and_then(|d| Digest::parse(d).ok());
    let Some((old, image)) = named.and_then(|d| moved.get_key_value(&d)) else {
        return Ok(());
    };
    let image_ref = Descriptor::new(image.media_type.clone(), image.digest.clone(), image.size);
    if let ManifestKind::Image(mut attestation) = store.read_manifest(entry)? {
        if attestation
            .subject
            .as_ref()
            .is_some_and(|s| &s.digest == old)
        {
            attestation.subject = Some(image_ref);
            let media_type =
                (attestation.media_type.clone()).unwrap_or_else(|| entry.media_type.clone());
            let new = store.put_json(&media_type, &attestation)?;
            entry.digest = new.digest;
            entry.size = new.size;
            entry.data = None;
        }
    }
    entry.annotations.insert(
        crate::oci::ANNOTATION_REFERENCE_DIGEST.to_string(),
        image.digest.to_string(),
    );
    Ok(())
}

/// The `form` of each layer, in order: a plain layer compressed, with
/// `force` one compressed otherwise converted (once per form, remembered as
/// for [`compressed_image`]; distinct layers in parallel), any other as it
/// is. What a cache export sends of the layers a build made, and the
/// layers [`compressed_image`] writes into a manifest.
pub fn compressed_layers(
    store: &Store,
    layers: &[Descriptor],
    form: impl Into<LayerForm>,
    reporter: &dyn Reporter,
) -> Result<Vec<Descriptor>> {
    let form = form.into();
    refuse_unconvertible(form, layers)?;
    let todo: Vec<(Descriptor, Compression)> = layers
        .iter()
        .filter_map(|l| Some((l.clone(), form.conversion(&l.media_type)?.0)))
        .collect();
    let variants = convert_layers(store, &todo, form, reporter)?;
    Ok(layers
        .iter()
        .map(|layer| {
            match (
                form.conversion(&layer.media_type),
                variants.get(&layer.digest),
            ) {
                // Another blob: what named the old one's bytes (where to
                // fetch them, what they hold) goes, as BuildKit drops it.
                (Some((_, media_type)), Some((digest, size))) => {
                    Descriptor::new(media_type, digest.clone(), *size)
                }
                _ => layer.clone(),
            }
        })
        .collect())
}

/// The (digest, size) of each layer (with the compression its stored
/// bytes have) in `form`, by its stored digest; distinct layers are
/// converted on parallel threads.
fn convert_layers(
    store: &Store,
    layers: &[(Descriptor, Compression)],
    form: LayerForm,
    reporter: &dyn Reporter,
) -> Result<BTreeMap<Digest, (Digest, u64)>> {
    let mut todo: Vec<&(Descriptor, Compression)> = Vec::new();
    let mut done = BTreeMap::new();
    for entry in layers {
        let layer = &entry.0;
        if done.contains_key(&layer.digest) || todo.iter().any(|(l, _)| l.digest == layer.digest) {
            continue;
        }
        match recorded_variant(store, &layer.digest, entry.1, form)? {
            Some(found) => {
                done.insert(layer.digest.clone(), found);
            }
            None => todo.push(entry),
        }
    }
    if todo.is_empty() {
        return Ok(done);
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(todo.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((layer, stored)) = todo.get(i) else {
                    break;
                };
                let result = convert_one(store, layer, *stored, form, reporter);
                if let Ok(mut r) = results.lock() {
                    r.push((layer.digest.clone(), result));
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    for (plain, result) in results {
        done.insert(plain, result?);
    }
    Ok(done)
}

/// Where the `form` of the blob `source` (stored with `stored` compression)
/// is remembered: `variants/<form>/<hex>` for a plain layer,
/// `<hex>.from-<gzip|zstd>` for one converted, so that the record of a
/// blob read as plain (a compressed one mislabelled plain is sent as it
/// is, compressed again) is never taken for that of the same blob read as
/// compressed.
fn variant_path(
    store: &Store,
    source: &Digest,
    stored: Compression,
    form: LayerForm,
) -> std::path::PathBuf {
    let name = match stored {
        Compression::None => source.hex().to_string(),
        other => format!("{}.from-{}", source.hex(), algorithm_name(other)),
    };
    store.variants_dir().join(form.variants_name()).join(name)
}

/// A remembered variant whose blob is still in the store.
fn recorded_variant(
    store: &Store,
    source: &Digest,
    stored: Compression,
    form: LayerForm,
) -> Result<Option<(Digest, u64)>> {
    let path = variant_path(store, source, stored, form);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let parsed = text.split_once(' ').and_then(|(digest, size)| {
        Some((
            Digest::parse(digest).ok()?,
            size.trim().parse::<u64>().ok()?,
        ))
    });
    match parsed {
        Some((digest, size)) if store.blob_size(&digest)? == Some(size) => Ok(Some((digest, size))),
        // A record pointing at a pruned blob, or a damaged one: made again.
        _ => Ok(None),
    }
}

/// `layer`, stored with `stored` compression, written anew in `form`
/// (decompressed first when `stored` is not plain) and remembered as its
/// variant.
fn convert_one(
    store: &Store,
    layer: &Descriptor,
    stored: Compression,
    form: LayerForm,
    reporter: &dyn Reporter,
) -> Result<(Digest, u64)> {
    let id = format!("compress {}", layer.digest);
    reporter.start(&id, "compressing", Some(layer.size));
    let result = (|| {
        let blob = store.open_blob(&layer.digest)?;
        let ingest = store.ingest(None)?;
        let path = store.blob_path(&layer.digest);
        let mut compressor = Compressor::with_level(form.compression, form.other_level(), ingest)
            .map_err(io_at("compress", &path))?;
        // The stored bytes are checked against their name on the way: a
        // damaged layer must not be published under a fresh digest.
        let mut reader = HashingReader::new(ProgressReader::new(
            io::Read::take(blob, layer.size),
            reporter,
            &id,
        ));
        if stored == Compression::None {
            io::copy(&mut reader, &mut compressor)
        } else {
            let mut decoded =
                crate::compress::decompress(&mut reader).map_err(io_at("decompress", &path))?;
            io::copy(&mut decoded, &mut compressor)
        }
        .map_err(io_at("compress", &path))?;
        let (actual, read) = reader
            .drain_and_finish()
            .map_err(io_at("compress", &path))?;
        if read != layer.size {
            return Err(Error::SizeMismatch {
                digest: layer.digest.clone(),
                expected: layer.size,
                actual: read,
            });
        }
        if actual != layer.digest {
            return Err(Error::DigestMismatch {
                expected: layer.digest.clone(),
                actual,
            });
        }
        let ingest = compressor.finish().map_err(io_at("compress", &path))?;
        let written = ingest.commit()?;
        let record = variant_path(store, &layer.digest, stored, form);
        if let Some(dir) = record.parent() {
            fs::create_dir_all(dir).map_err(io_at("create directory", dir))?;
        }
        write_record(
            &record,
            format!("{} {}\n", written.digest, written.size).as_bytes(),
        )?;
        Ok((written.digest, written.size))
    })();
    match &result {
        Ok(_) => reporter.done(&id, Outcome::Done),
        Err(e) => reporter.done(&id, Outcome::Failed(e.to_string())),
    }
    result
}
