//! `kiln import`: a root filesystem tar becomes a one-layer image.

use std::io::{self, Read, Write};

use crate::compress::{decompress_archive, Compression, Compressor};
use crate::digest::HashingWriter;
use crate::error::{Error, Result};
use crate::oci::{rfc3339, ContainerConfig, Descriptor, History, ImageConfig, Platform, RootFs};
use crate::progress::{Outcome, ProgressReader, Reporter};
use crate::store::Store;

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The container config (`--change` lines are applied by the caller:
    /// the store knows no Dockerfile syntax).
    pub config: ContainerConfig,
    pub platform: Platform,
    pub compression: Compression,
    /// The config's `created` (seconds); now by default.
    pub created: i64,
    /// Where the tar came from, for the history comment.
    pub source: String,
    /// The tar's size when known (for progress).
    pub size: Option<u64>,
}

impl ImportOptions {
    pub fn new(source: impl Into<String>) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        ImportOptions {
            config: ContainerConfig::default(),
            platform: Platform::host(),
            compression: Compression::Gzip,
            created: now,
            source: source.into(),
            size: None,
        }
    }
}

/// Copies everything read into `out` (the tar reader validates the stream
/// while the bytes go to the layer).
struct Tee<R, W> {
    inner: R,
    out: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Stores `rootfs` (a tar, possibly gzip, bzip2, xz or zstd compressed) as a layer and
/// writes an image config and manifest for it. Returns the manifest's
/// descriptor; tag it with [`Store::tag`].
pub fn import_rootfs(
    store: &Store,
    rootfs: impl Read + Send,
    options: &ImportOptions,
    reporter: &dyn Reporter,
) -> Result<Descriptor> {
    let _lease = store.lease()?;
    let what = options.source.clone();
    let tar_err = |source: io::Error| Error::Tar {
        layer: what.clone(),
        source,
    };
    reporter.start(&options.source, "importing", options.size);
    let result = (|| -> Result<Descriptor> {
        let counted = ProgressReader::new(rootfs, reporter, options.source.clone());
        // Compressed as `docker import` takes it: gzip, bzip2, xz or zstd.
        let mut plain = decompress_archive(counted).map_err(tar_err)?;
        import_layer(store, &mut plain, options)
    })();
    match &result {
        Ok(_) => reporter.done(&options.source, Outcome::Done),
        Err(e) => reporter.done(&options.source, Outcome::Failed(e.to_string())),
    }
    result
}

/// The layer `plain` (a tar, decoded) is, stored, and the image around it.
fn import_layer(
    store: &Store,
    plain: &mut dyn Read,
    options: &ImportOptions,
) -> Result<Descriptor> {
    let config = options.config.clone();
    let tar_err = |source: io::Error| Error::Tar {
        layer: options.source.clone(),
        source,
    };
    let ingest = store.ingest(None)?;
    let compressor = Compressor::new(options.compression, ingest).map_err(tar_err)?;
    let mut tee = Tee {
        inner: plain,
        out: HashingWriter::new(compressor),
    };
    let mut entries = 0u64;
    {
        let mut archive = tar::Archive::new(&mut tee);
        for entry in archive.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            io::copy(&mut entry, &mut io::sink()).map_err(tar_err)?;
            entries += 1;
        }
    }
    // The end-of-archive blocks and padding belong to the layer too.
    io::copy(&mut tee, &mut io::sink()).map_err(tar_err)?;
    if entries == 0 {
        return Err(Error::BadLayer {
            layer: options.source.clone(),
            reason: "not a tar archive, or an empty one".into(),
        });
    }
    let (diff_id, _, compressor) = tee.out.into_parts();
    let ingest = compressor.finish().map_err(tar_err)?;
    let mut layer = ingest.commit()?;
    layer.media_type = options.compression.oci_layer_media_type().to_string();
    let created = rfc3339(options.created);
    let image = ImageConfig {
        created: Some(created.clone()),
        architecture: options.platform.architecture.clone(),
        os: options.platform.os.clone(),
        variant: options.platform.variant.clone(),
        config: Some(config),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
        history: vec![History {
            created: Some(created),
            created_by: Some("kiln import".into()),
            comment: Some(format!("Imported from {}", options.source)),
            ..History::default()
        }],
        ..ImageConfig::default()
    };
    store.write_image(&image, &[layer])
}
