//! A cache in an OCI image layout on disk (`type=local`), as BuildKit's
//! local cache: `oci-layout`, `blobs/sha256/…`, and `index.json` naming
//! the cache manifest by tag (`org.opencontainers.image.ref.name`, default
//! `latest`). An export adds its blobs and re-points the tag; an import
//! takes the manifest by tag or digest and copies a layer blob into the
//! store only when the build needs it, verified there.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use kiln_builder::cache::format::CacheConfig;
use kiln_builder::cache::{
    BlobProvider, CacheExport, CacheExporter, CacheSource, CachedStep, StepsByKey,
};
use kiln_builder::session::RemoteError;
use kiln_layers::oci::{media, parse_manifest, Descriptor, Index, ANNOTATION_REF_NAME};
use kiln_layers::store::MAX_JSON_BLOB;
use kiln_layers::{Digest, Reporter, Store};

use crate::artifact::{self, cache_config_of};
use crate::error::CacheError;
use crate::spec::ExportOptions;

/// `--cache-to type=local,dest=DIR`.
pub struct LocalExporter {
    pub dest: PathBuf,
    pub tag: String,
    pub options: ExportOptions,
}

impl CacheExporter for LocalExporter {
    fn name(&self) -> String {
        format!("exporting cache to {}", self.dest.display())
    }

    fn ignore_error(&self) -> bool {
        self.options.ignore_error
    }

    fn export(
        &self,
        store: &Store,
        cache: &CacheExport,
        blobs: &dyn BlobProvider,
        reporter: &dyn Reporter,
    ) -> Result<Vec<String>, RemoteError> {
        let steps = cache.select(self.options.mode);
        // A layer taken from elsewhere without its content is fetched now:
        // the directory gets every blob.
        for (layer, _) in steps.iter().filter_map(|s| s.layer.as_ref()) {
            blobs.provide(store, layer)?;
        }
        let what = || format!("{}", self.dest.display());
        let made = artifact::make(store, &steps, &self.options, reporter).map_err(|source| {
            CacheError::Store {
                what: what(),
                source: Box::new(source),
            }
        })?;
        let Some(made) = made else {
            return Ok(vec!["skipping cache export for empty result".into()]);
        };
        let blobs = self.dest.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(CacheError::io(&blobs))?;
        write_if_missing(
            &self.dest.join("oci-layout"),
            format!(
                "{{\"imageLayoutVersion\":\"{}\"}}",
                media::OCI_LAYOUT_VERSION
            )
            .as_bytes(),
        )?;
        let mut lines = Vec::new();
        for blob in made.blobs().iter().chain([&made.manifest]) {
            copy_blob_out(store, blob, &blobs)?;
        }
        // The blobs `index.json` will name keep their names through a crash
        // that keeps it (their renames, and the new directories').
        fsync_dir(&blobs)?;
        fsync_dir(&self.dest.join("blobs"))?;
        lines.push(format!(
            "writing {} layers and the config of {} steps done",
            made.layers.len(),
            made.steps
        ));
        tag_manifest(&self.dest, &made.manifest, &self.tag)?;
        lines.push(format!(
            "writing cache manifest {} as {} done",
            made.manifest.digest, self.tag
        ));
        Ok(lines)
    }
}

/// Writes `bytes` to `path` unless a file is there.
fn write_if_missing(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    if path.exists() {
        return Ok(());
    }
    write_atomic(path, bytes)
}

/// Writes `bytes` to `path` through a temporary file renamed into place
/// (the store's, which fsyncs the file and then its directory).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    kiln_layers::store::write_atomic(path, bytes).map_err(|source| CacheError::Store {
        what: path.display().to_string(),
        source: Box::new(source),
    })
}

/// Makes the entries of `dir` durable.
fn fsync_dir(dir: &Path) -> Result<(), CacheError> {
    kiln_layers::store::fsync_dir(dir).map_err(|source| CacheError::Store {
        what: dir.display().to_string(),
        source: Box::new(source),
    })
}

/// Copies a store blob into the layout's `blobs/sha256` (`dir`), unless a
/// file of its size is there (only ever renamed there whole).
fn copy_blob_out(store: &Store, blob: &Descriptor, dir: &Path) -> Result<(), CacheError> {
    let to = dir.join(blob.digest.hex());
    if fs::metadata(&to).is_ok_and(|m| m.len() == blob.size) {
        return Ok(());
    }
    let tmp = dir.join(format!(".tmp-{}", kiln_layers::store::unique_suffix()));
    let copied = fs::copy(store.blob_path(&blob.digest), &tmp)
        .and_then(|_| File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, &to));
    if copied.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    copied.map_err(CacheError::io(&to))
}

/// Points `tag` in the layout's `index.json` at `manifest` (an entry of
/// that tag alone is dropped), as BuildKit's `ociindex.Put` tags a cache:
/// under `index.json.lock`, so builds exporting into one directory at once
/// each keep their tag.
fn tag_manifest(dest: &Path, manifest: &Descriptor, tag: &str) -> Result<(), CacheError> {
    let name = kiln_layers::archive::IndexName::Tag(tag.to_string());
    kiln_layers::archive::put_index(dest, manifest, &[name]).map_err(|source| CacheError::Store {
        what: format!("local cache {}", dest.display()),
        source: Box::new(source),
    })
}

/// `--cache-from type=local,src=DIR`: the steps of the manifest it names.
pub struct LocalSource {
    dir: PathBuf,
    steps: StepsByKey,
}

impl LocalSource {
    /// Reads the cache manifest `digest` names, else the one tagged `tag`,
    /// and its config (each checked against its digest).
    pub fn open(dir: &Path, tag: &str, digest: Option<&Digest>) -> Result<LocalSource, CacheError> {
        let what = format!("local cache {}", dir.display());
        let desc = match digest {
            Some(digest) => Descriptor::new("", digest.clone(), MAX_JSON_BLOB),
            None => tagged(dir, tag)?,
        };
        let bytes = read_document(dir, &desc)?;
        let kind = parse_manifest(&bytes, &desc.media_type, &format!("{what}: manifest")).map_err(
            |source| CacheError::Store {
                what: what.clone(),
                source: Box::new(source),
            },
        )?;
        let config = cache_config_of(&kind).ok_or_else(|| {
            CacheError::Invalid(format!("{what}: manifest {} is no kiln cache", desc.digest))
        })?;
        let config = CacheConfig::parse(&read_document(dir, config)?).map_err(|source| {
            CacheError::Format {
                what: what.clone(),
                source: Box::new(source),
            }
        })?;
        let steps = crate::steps_of(&what, &config, None)?;
        Ok(LocalSource {
            dir: dir.to_path_buf(),
            steps,
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }
}

/// The manifest tagged `tag` in the layout's `index.json`.
fn tagged(dir: &Path, tag: &str) -> Result<Descriptor, CacheError> {
    let path = dir.join("index.json");
    let bytes = fs::read(&path).map_err(CacheError::io(&path))?;
    let index: Index = serde_json::from_slice(&bytes)
        .map_err(|e| CacheError::Invalid(format!("{}: not an OCI index: {e}", path.display())))?;
    index
        .manifests
        .into_iter()
        .find(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(tag))
        .ok_or_else(|| CacheError::Invalid(format!("{}: no manifest tagged {tag}", path.display())))
}

/// A small blob of the layout (a manifest, a config), read whole and
/// checked against its digest (and its size, when known).
fn read_document(dir: &Path, desc: &Descriptor) -> Result<Vec<u8>, CacheError> {
    let path = dir.join("blobs/sha256").join(desc.digest.hex());
    let file = File::open(&path).map_err(CacheError::io(&path))?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON_BLOB + 1)
        .read_to_end(&mut bytes)
        .map_err(CacheError::io(&path))?;
    let actual = Digest::of(&bytes);
    if actual != desc.digest || bytes.len() as u64 > MAX_JSON_BLOB {
        return Err(CacheError::Invalid(format!(
            "{}: content has digest {actual}, not {}",
            path.display(),
            desc.digest
        )));
    }
    Ok(bytes)
}

impl CacheSource for LocalSource {
    fn name(&self) -> String {
        format!("local cache {}", self.dir.display())
    }

    fn lookup(&self, key: &Digest) -> Option<CachedStep> {
        self.steps.get(key).cloned()
    }

    fn fetch(&self, store: &Store, blob: &Descriptor) -> Result<(), RemoteError> {
        let path = self.blob_path(&blob.digest);
        let mut file = File::open(&path).map_err(CacheError::io(&path))?;
        let mut ingest = store.ingest(Some(blob.clone()))?;
        std::io::copy(&mut file, &mut ingest).map_err(CacheError::io(&path))?;
        // Size and digest are checked here: a damaged file is refused.
        ingest.commit()?;
        Ok(())
    }
}
