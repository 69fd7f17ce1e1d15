//! `save` and `load`: OCI image layouts (directory or tar) and
//! docker-archive tars (`docker save` / `docker load`).
//!
//! A docker-format tar written here is also an OCI layout (like Docker 25's
//! `docker save`): `oci-layout`, `index.json`, `blobs/sha256/…`, plus
//! `manifest.json` and `repositories`. Layers are stored as they are in the
//! store (`docker load` decompresses them).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::canonical::to_canonical_json;
use crate::compress::{decompress_archive, Compression};
use crate::digest::Digest;
use crate::error::{io_at, Error, Result};
use crate::oci::{
    media, parse_manifest, Descriptor, Index, Manifest, ManifestKind, Platform,
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME,
};
use crate::platforms::EntryKind;
use crate::progress::{Outcome, ProgressReader, Reporter};
use crate::reference::Reference;
use crate::store::{fsync_dir, write_atomic, Image, Store, MAX_JSON_BLOB};

/// Archive formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An OCI image layout.
    Oci,
    /// docker-archive (also a valid OCI layout).
    Docker,
}

/// One image to save: the name to record (none: the image goes unnamed,
/// as BuildKit's exporters leave an image no name was given for), what
/// `index.json` names (an image manifest, or an index of several
/// platforms), and the images whose content goes in.
#[derive(Clone, Debug)]
pub struct SaveItem {
    pub reference: Option<Reference>,
    /// The manifest or index `index.json` records (an index's entries the
    /// store does not hold are left out of the archive's blobs, as the OCI
    /// layout allows).
    pub descriptor: Descriptor,
    /// The images written whole; a docker-archive's `manifest.json` names
    /// the first (it has no room for more than one platform per name).
    pub images: Vec<Image>,
}

impl SaveItem {
    /// One image under one name.
    pub fn single(reference: Option<Reference>, image: Image) -> SaveItem {
        SaveItem {
            reference,
            descriptor: image.manifest_descriptor.clone(),
            images: vec![image],
        }
    }

    /// Everything the store holds of `descriptor` under one name: for an
    /// index, the index and each platform's image the store holds (that of
    /// `first`, or else the first held, ahead: the one a docker-archive
    /// names) and each attestation manifest it holds; for a manifest, its
    /// image.
    pub fn held(
        store: &Store,
        reference: Option<Reference>,
        descriptor: &Descriptor,
        first: &Platform,
    ) -> Result<SaveItem> {
        let lead = store.read_image_or_held(descriptor, first)?;
        if !media::is_index(&descriptor.media_type) {
            return Ok(SaveItem::single(reference, lead));
        }
        let mut images = vec![lead];
        for entry in store.platform_entries(descriptor)? {
            // Attestation manifests go along with the images they are
            // about (BuildKit's OCI exporter writes them too).
            let held =
                entry.present && matches!(entry.kind, EntryKind::Image | EntryKind::Attestation);
            if held && entry.descriptor.digest != images[0].manifest_descriptor.digest {
                let platform = entry.platform.clone().unwrap_or_else(|| first.clone());
                images.push(store.read_image(&entry.descriptor, &platform)?);
            }
        }
        Ok(SaveItem {
            reference,
            descriptor: descriptor.clone(),
            images,
        })
    }
}

/// docker-archive's `manifest.json` entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DockerArchiveEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

/// Where archive files go: a directory or a tar stream.
trait Sink {
    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()>;
    fn blob(&mut self, store: &Store, digest: &Digest, size: u64) -> Result<()>;
}

struct DirSink {
    root: PathBuf,
    /// Whether the blob directories were synced (before the first file
    /// that names blobs).
    synced: bool,
}

impl DirSink {
    /// The blobs written so far keep their names through a crash that
    /// keeps what names them (their renames, and the new directories').
    fn sync_blobs(&mut self) -> Result<()> {
        if !self.synced {
            let blobs = self.root.join("blobs");
            fsync_dir(&blobs.join("sha256"))?;
            fsync_dir(&blobs)?;
            self.synced = true;
        }
        Ok(())
    }
}

impl Sink for DirSink {
    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.sync_blobs()?;
        // Replaced whole or not at all: an existing layout keeps its index
        // if the save is killed.
        write_atomic(&self.root.join(name), bytes)
    }
    fn blob(&mut self, store: &Store, digest: &Digest, size: u64) -> Result<()> {
        let dir = self.root.join("blobs/sha256");
        let to = dir.join(digest.hex());
        // A blob of the right size is one an earlier save wrote whole: it
        // only ever appears under its name after the rename below.
        if fs::metadata(&to).is_ok_and(|m| m.len() == size) {
            return Ok(());
        }
        let partial = dir.join(format!(".{}.partial-{}", digest.hex(), std::process::id()));
        let from = store.blob_path(digest);
        let copied = fs::copy(&from, &partial)
            .and_then(|_| fs::File::open(&partial)?.sync_all())
            .and_then(|_| fs::rename(&partial, &to));
        if let Err(e) = copied {
            let _ = fs::remove_file(&partial);
            return Err(io_at("copy blob to", &to)(e));
        }
        Ok(())
    }
}

struct TarSink<W: Write> {
    builder: tar::Builder<W>,
    written: std::collections::HashSet<String>,
    label: PathBuf,
}

fn archive_header(size: u64, dir: bool) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

impl<W: Write> TarSink<W> {
    fn dir(&mut self, name: &str) -> Result<()> {
        let mut h = archive_header(0, true);
        self.builder
            .append_data(&mut h, name, io::empty())
            .map_err(io_at("write archive", &self.label))
    }
}

impl<W: Write> Sink for TarSink<W> {
    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut h = archive_header(bytes.len() as u64, false);
        self.builder
            .append_data(&mut h, name, bytes)
            .map_err(io_at("write archive", &self.label))
    }
    fn blob(&mut self, store: &Store, digest: &Digest, size: u64) -> Result<()> {
        let name = format!("blobs/sha256/{}", digest.hex());
        if !self.written.insert(name.clone()) {
            return Ok(());
        }
        let file = store.open_blob(digest)?;
        let mut h = archive_header(size, false);
        self.builder
            .append_data(&mut h, &name, file.take(size))
            .map_err(io_at("write archive", &self.label))
    }
}

/// Whether an archive is one tar or a directory of the same files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A tar file (`-`: standard output).
    Tar,
    /// A directory whose `index.json` names this save's images alone
    /// (`kiln save`).
    Dir,
    /// An OCI layout directory the images are put into, as BuildKit puts a
    /// `tar=false` export ([`put_index`]: merged with what the index
    /// holds, an unnamed image as `latest`; no docker-archive files).
    MergedDir,
}

/// `kiln save`: saves `items` to `out`, a directory for `Format::Oci`
/// unless `out` ends in `.tar`, always a tar for `Format::Docker`; `-`
/// writes a tar to stdout.
pub fn save(store: &Store, items: &[SaveItem], format: Format, out: &Path) -> Result<()> {
    let as_tar = format == Format::Docker
        || out.as_os_str() == "-"
        || out.extension().is_some_and(|e| e == "tar");
    let layout = if as_tar { Layout::Tar } else { Layout::Dir };
    save_as(store, items, format, out, layout)
}

/// Saves `items` to `out` as `layout` says (a build's `--output`, where
/// `tar=` decides, as in buildx).
pub fn save_as(
    store: &Store,
    items: &[SaveItem],
    format: Format,
    out: &Path,
    layout: Layout,
) -> Result<()> {
    match layout {
        Layout::Dir => {
            fs::create_dir_all(out.join("blobs/sha256")).map_err(io_at("create directory", out))?;
            let mut sink = DirSink {
                root: out.to_path_buf(),
                synced: false,
            };
            return write_layout(store, items, format, &mut sink);
        }
        Layout::MergedDir => return save_merged_dir(store, items, out),
        Layout::Tar => {}
    }
    if out.as_os_str() == "-" {
        let stdout = io::stdout().lock();
        return save_tar(store, items, format, io::BufWriter::new(stdout), out);
    }
    // Something that is not a plain file (a symlink, /dev/stdout, a FIFO)
    // is written through, as Go's os.Create writes it; renaming over it
    // would replace it instead.
    if fs::symlink_metadata(out).is_ok_and(|m| !m.file_type().is_file()) {
        let file = File::create(out).map_err(io_at("create", out))?;
        return save_tar(store, items, format, io::BufWriter::new(file), out);
    }
    // Write next to the target and rename, so a failed save leaves no half tar.
    let tmp = out.with_extension(format!("tmp-{}", crate::store::unique_suffix()));
    // Named as asked (the temporary name beside it means nothing to them).
    let file = File::create(&tmp).map_err(io_at("create", out))?;
    let result = save_tar(store, items, format, io::BufWriter::new(file), out)
        .and_then(|()| fs::rename(&tmp, out).map_err(io_at("rename into place", out)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `items` as a tar into `w` (`label` names it in errors): what
/// `save_as` writes into a file, for a writer of the caller's (a pipe the
/// docker daemon reads, `--load`).
pub fn save_tar<W: Write>(
    store: &Store,
    items: &[SaveItem],
    format: Format,
    w: W,
    label: &Path,
) -> Result<()> {
    let mut sink = TarSink {
        builder: tar::Builder::new(w),
        written: Default::default(),
        label: label.to_path_buf(),
    };
    sink.dir("blobs/")?;
    sink.dir("blobs/sha256/")?;
    write_layout(store, items, format, &mut sink)?;
    let mut w = sink
        .builder
        .into_inner()
        .map_err(io_at("write archive", label))?;
    w.flush().map_err(io_at("write archive", label))
}

/// An OCI layout directory the items are put into as BuildKit puts a
/// `tar=false` export there: the blobs, then each image into `index.json`
/// ([`put_index`]: merged with what is there, all of an image's names at
/// once; an unnamed image as `latest`).
fn save_merged_dir(store: &Store, items: &[SaveItem], out: &Path) -> Result<()> {
    fs::create_dir_all(out.join("blobs/sha256")).map_err(io_at("create directory", out))?;
    let mut sink = DirSink {
        root: out.to_path_buf(),
        synced: false,
    };
    for item in items {
        write_item_blobs(store, item, &mut sink)?;
    }
    sink.sync_blobs()?;
    // One put per image, with every name it is saved under.
    let mut puts: Vec<(Descriptor, Vec<IndexName>)> = Vec::new();
    for item in items {
        let entry = unnamed_entry(item);
        let name = match &item.reference {
            Some(reference) => IndexName::Image(reference.clone()),
            None => IndexName::Tag("latest".into()),
        };
        match puts.iter_mut().find(|(put, _)| *put == entry) {
            Some((_, names)) => names.push(name),
            None => puts.push((entry, vec![name])),
        }
    }
    for (entry, names) in &puts {
        put_index(out, entry, names)?;
    }
    Ok(())
}

/// An item's images, and its index if it names one.
fn write_item_blobs(store: &Store, item: &SaveItem, sink: &mut dyn Sink) -> Result<()> {
    for image in &item.images {
        write_image_blobs(store, image, sink)?;
    }
    let top = &item.descriptor;
    if media::is_index(&top.media_type) {
        sink.blob(store, &top.digest, top.size)?;
    }
    Ok(())
}

/// The `index.json` entry of an item, before names: the descriptor's own
/// annotations (`--annotation manifest-descriptor:` or
/// `index-descriptor:`) travel with it, its old names do not.
fn unnamed_entry(item: &SaveItem) -> Descriptor {
    let top = &item.descriptor;
    let mut entry = Descriptor::new(top.media_type.clone(), top.digest.clone(), top.size);
    entry.platform = top.platform.clone();
    entry.annotations = top.annotations.clone();
    entry.annotations.remove(ANNOTATION_REF_NAME);
    entry.annotations.remove(ANNOTATION_CONTAINERD_NAME);
    entry
}

/// A name an OCI layout's `index.json` gives an entry (BuildKit's
/// `ociindex.NameOrTag`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexName {
    /// A full name: `io.containerd.image.name`, and its tag as the OCI
    /// ref name (`latest` when it has none).
    Image(Reference),
    /// A tag alone: the OCI ref name only.
    Tag(String),
}

/// BuildKit's `ociindex.Put`: `desc` goes into the layout `dir`'s
/// `index.json` once per name (once, unnamed, when `names` is empty),
/// each after the entries of the same name are dropped, and `oci-layout`
/// is written. It holds an exclusive lock of `index.json.lock` meanwhile,
/// so that writers at once each keep their entry (BuildKit fails the
/// second instead; kiln waits), and replaces the index whole. The lock
/// file stays: removing it would let a third writer lock a new one while
/// a second holds the old.
pub fn put_index(dir: &Path, desc: &Descriptor, names: &[IndexName]) -> Result<()> {
    let _lock = lock_index(dir)?;
    let layout = format!(
        "{{\"imageLayoutVersion\":\"{}\"}}",
        media::OCI_LAYOUT_VERSION
    );
    write_atomic(&dir.join("oci-layout"), layout.as_bytes())?;
    let path = dir.join("index.json");
    // As BuildKit reads it: an empty file is an empty index.
    let mut index = match fs::read(&path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Index::empty(),
        Ok(bytes) => serde_json::from_slice::<Index>(&bytes).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Index::empty(),
        Err(e) => return Err(io_at("read", &path)(e)),
    };
    let unnamed = [None];
    let names: Vec<Option<&IndexName>> = if names.is_empty() {
        unnamed.to_vec()
    } else {
        names.iter().map(Some).collect()
    };
    for name in names {
        let mut entry = desc.clone();
        if let Some(name) = name {
            let (image, ref_name) = match name {
                IndexName::Image(reference) => (
                    reference.to_string(),
                    reference.tag.clone().unwrap_or_else(|| "latest".into()),
                ),
                IndexName::Tag(tag) => (String::new(), tag.clone()),
            };
            let annotation = |m: &Descriptor, key: &str| -> String {
                m.annotations.get(key).cloned().unwrap_or_default()
            };
            index.manifests.retain(|m| {
                annotation(m, ANNOTATION_REF_NAME) != ref_name
                    || annotation(m, ANNOTATION_CONTAINERD_NAME) != image
            });
            if !image.is_empty() {
                entry
                    .annotations
                    .insert(ANNOTATION_CONTAINERD_NAME.into(), image);
            }
            entry
                .annotations
                .insert(ANNOTATION_REF_NAME.into(), ref_name);
        }
        index.manifests.push(entry);
    }
    write_atomic(&path, &json("index.json", &index)?)
}

/// An exclusive `flock` of the layout's `index.json.lock`, opened
/// read-only (a lock needs no write access: a file root made there stays
/// usable by others), read-write where the filesystem wants it (NFS).
/// Where the filesystem has no locks, the put goes on unlocked, said in
/// the log.
fn lock_index(dir: &Path) -> Result<Option<OwnedFd>> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let path = dir.join("index.json.lock");
    let open = |access: OFlags| {
        rustix::fs::open(
            &path,
            access | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| Error::io("open lock file", &path, e.into()))
    };
    let mut fd = open(OFlags::RDONLY)?;
    let mut locked = rustix::fs::flock(&fd, FlockOperation::LockExclusive);
    // NFS emulates flock with fcntl locks, which want a writable file for
    // an exclusive one (gofrs/flock, BuildKit's, reopens it so too).
    if matches!(locked, Err(rustix::io::Errno::BADF | rustix::io::Errno::IO)) {
        fd = open(OFlags::RDWR)?;
        locked = rustix::fs::flock(&fd, FlockOperation::LockExclusive);
    }
    match locked {
        Ok(()) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOLCK | rustix::io::Errno::OPNOTSUPP) => {
            tracing::warn!(
                "{}: no locks on this filesystem; writing index.json unlocked",
                path.display()
            );
            Ok(None)
        }
        Err(e) => Err(Error::io("lock", &path, e.into())),
    }
}

fn write_layout(
    store: &Store,
    items: &[SaveItem],
    format: Format,
    sink: &mut dyn Sink,
) -> Result<()> {
    let mut index = Index::empty();
    let mut docker_manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for item in items {
        write_item_blobs(store, item, sink)?;
        let mut entry = unnamed_entry(item);
        // An unnamed image has no name in a tar (BuildKit's exporters add
        // none then).
        if let Some(reference) = &item.reference {
            entry
                .annotations
                .insert(ANNOTATION_CONTAINERD_NAME.into(), reference.to_string());
            // As `docker save` does: the OCI ref name is the tag alone.
            let tag = reference.tag.clone().unwrap_or_else(|| "latest".into());
            entry.annotations.insert(ANNOTATION_REF_NAME.into(), tag);
        }
        index.manifests.push(entry);
        if let (Format::Docker, Some(image)) = (format, item.images.first()) {
            docker_entry(
                &mut docker_manifest,
                &mut repositories,
                item.reference.as_ref(),
                image,
            );
        }
    }
    sink.file(
        "oci-layout",
        format!(
            "{{\"imageLayoutVersion\":\"{}\"}}",
            media::OCI_LAYOUT_VERSION
        )
        .as_bytes(),
    )?;
    sink.file("index.json", &json("index.json", &index)?)?;
    if format == Format::Docker {
        sink.file("manifest.json", &json("manifest.json", &docker_manifest)?)?;
        sink.file("repositories", &json("repositories", &repositories)?)?;
    }
    Ok(())
}

/// docker-archive's `manifest.json` entry (or one more name for an entry
/// of the same image) and `repositories` line for `image` under
/// `reference`; unnamed, an entry without `RepoTags` (`null`, as `docker
/// save` of an id writes).
fn docker_entry(
    docker_manifest: &mut Vec<DockerArchiveEntry>,
    repositories: &mut BTreeMap<String, BTreeMap<String, String>>,
    reference: Option<&Reference>,
    image: &Image,
) {
    let familiar = reference.map(Reference::familiar);
    let existing = docker_manifest
        .iter_mut()
        .find(|e| e.config.ends_with(image.id().hex()));
    match existing {
        Some(e) => {
            if let Some(familiar) = familiar {
                e.repo_tags.get_or_insert_with(Vec::new).push(familiar);
            }
        }
        None => docker_manifest.push(DockerArchiveEntry {
            config: format!("blobs/sha256/{}", image.id().hex()),
            repo_tags: familiar.map(|f| vec![f]),
            layers: image
                .manifest
                .layers
                .iter()
                .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
                .collect(),
        }),
    }
    let Some(reference) = reference else {
        return;
    };
    if let (Some(t), Some(top)) = (&reference.tag, image.manifest.layers.last()) {
        repositories
            .entry(reference.familiar_name())
            .or_default()
            .insert(t.clone(), top.digest.hex().to_string());
    }
}

/// An image's layers, config and manifest into the archive.
fn write_image_blobs(store: &Store, image: &Image, sink: &mut dyn Sink) -> Result<()> {
    for layer in &image.manifest.layers {
        sink.blob(store, &layer.digest, layer.size)?;
    }
    let config = &image.manifest.config;
    sink.blob(store, &config.digest, config.size)?;
    let md = &image.manifest_descriptor;
    sink.blob(store, &md.digest, md.size)
}

fn json<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    to_canonical_json(value).map_err(|source| Error::Json {
        what: what.to_string(),
        source,
    })
}

/// What `load` stored.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The tags given to the image (empty when the archive named none).
    pub references: Vec<Reference>,
    pub manifest: Descriptor,
}

/// Files of an archive: small metadata in memory, everything else in the store.
#[derive(Default)]
struct ArchiveFiles {
    small: HashMap<String, Vec<u8>>,
    stored: HashMap<String, Descriptor>,
}

const SMALL_FILE: u64 = 16 << 20;

fn normalize_name(name: &str) -> String {
    let parts: Vec<&str> = name
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    parts.join("/")
}

fn is_metadata(name: &str) -> bool {
    name.ends_with(".json") || name == "repositories" || name == "oci-layout"
}

/// Loads an OCI layout (directory or tar) or a docker-archive tar (gzip or
/// zstd compressed tars too) into `store`, tagging what it names.
pub fn load(store: &Store, path: &Path, reporter: &dyn Reporter) -> Result<Vec<Loaded>> {
    let _lease = store.lease()?;
    let files = if path.is_dir() {
        read_dir_archive(path)?
    } else {
        let file = File::open(path).map_err(io_at("open", path))?;
        read_tar_archive(store, file, path, reporter)?
    };
    if files.small.contains_key("index.json") {
        load_oci(store, &files, path)
    } else if files.small.contains_key("manifest.json") {
        load_docker(store, &files, path)
    } else {
        Err(Error::Archive {
            path: path.to_path_buf(),
            reason: "neither index.json (OCI layout) nor manifest.json (docker-archive) found"
                .into(),
        })
    }
}

/// Which image of an OCI layout directory to take, as buildx's
/// `oci-layout://DIR[:TAG][@DIGEST]` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutImage {
    /// The entry of `index.json` whose `io.containerd.image.name`, else
    /// whose `org.opencontainers.image.ref.name`, is this; the layout's
    /// only entry when none is.
    Tag(String),
    /// The manifest or index of this digest among the layout's blobs,
    /// listed in `index.json` or not.
    Digest(Digest),
}

/// The image `wanted` names in the OCI layout directory `dir`, as buildx
/// resolves `--build-context NAME=oci-layout://DIR…` (`resolveDigest`,
/// reading `index.json` only for a tag): its manifest or index is put into
/// `store` (checked against its digest), and its descriptor returned.
/// What the build then uses of it comes with [`load_layout_platform`].
pub fn load_layout_image(store: &Store, dir: &Path, wanted: &LayoutImage) -> Result<Descriptor> {
    let _lease = store.lease()?;
    let desc = match wanted {
        LayoutImage::Tag(tag) => {
            let index = read_layout_index(dir)?;
            let named = |key: &str| {
                index
                    .manifests
                    .iter()
                    .find(|m| m.annotations.get(key) == Some(tag))
            };
            let found = named(ANNOTATION_CONTAINERD_NAME).or_else(|| named(ANNOTATION_REF_NAME));
            match (found, index.manifests.as_slice()) {
                (Some(entry), _) | (None, [entry]) => entry.clone(),
                (None, _) => {
                    return Err(Error::Archive {
                        path: dir.to_path_buf(),
                        reason: format!(
                        "no image is tagged {tag:?} in index.json, and it lists {} images, not one",
                        index.manifests.len()
                    ),
                    })
                }
            }
        }
        // Its kind from index.json when that lists it, else from the blob.
        LayoutImage::Digest(digest) => {
            let listed = match dir.join("index.json").is_file() {
                true => read_layout_index(dir)?
                    .manifests
                    .into_iter()
                    .find(|m| &m.digest == digest),
                false => None,
            };
            match listed {
                Some(entry) => entry,
                None => unlisted_layout_blob(store, dir, digest)?,
            }
        }
    };
    blob_from_layout(store, Some(dir), &desc.digest, desc.size, dir)?;
    let bytes = store.read_blob(&desc.digest)?;
    parse_manifest(
        &bytes,
        &desc.media_type,
        &format!("manifest {}", desc.digest),
    )?;
    let mut entry = desc;
    entry.annotations.clear();
    Ok(entry)
}

fn read_layout_index(dir: &Path) -> Result<Index> {
    let path = dir.join("index.json");
    let bytes = fs::read(&path).map_err(io_at("read", &path))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        what: path.display().to_string(),
        source,
    })
}

/// Puts into `store` what `platform` takes of the layout image `root`
/// ([`load_layout_image`]): the manifest an index gives for it (as a pull
/// picks it: attestation manifests left out) and that manifest's config
/// and layers, each checked against its digest; the other platforms'
/// blobs are not read, as BuildKit reads none. Afterwards
/// [`Store::read_image`] finds the image.
pub fn load_layout_platform(
    store: &Store,
    dir: &Path,
    root: &Descriptor,
    platform: &Platform,
) -> Result<()> {
    let _lease = store.lease()?;
    let mut current = root.clone();
    // Nested indexes are legal; a loop bound keeps a hostile cycle finite.
    for _ in 0..8 {
        blob_from_layout(store, Some(dir), &current.digest, current.size, dir)?;
        let bytes = store.read_blob(&current.digest)?;
        match parse_manifest(
            &bytes,
            &current.media_type,
            &format!("manifest {}", current.digest),
        )? {
            ManifestKind::Image(m) => {
                for blob in std::iter::once(&m.config).chain(&m.layers) {
                    blob_from_layout(store, Some(dir), &blob.digest, blob.size, dir)?;
                }
                return Ok(());
            }
            ManifestKind::Index(index) => {
                let images = Index {
                    manifests: (index.manifests.iter())
                        .filter(|d| crate::platforms::kind_of(d) != EntryKind::Attestation)
                        .cloned()
                        .collect(),
                    ..index.clone()
                };
                current = match images.select_platform(platform) {
                    Some(entry) => entry.clone(),
                    None => {
                        return Err(Error::NoMatchingPlatform {
                            image: root.digest.to_string(),
                            platform: platform.to_string(),
                            available: crate::platforms::labels(images.manifests.iter()),
                        })
                    }
                };
            }
        }
    }
    Err(Error::InvalidManifest {
        what: format!("manifest {}", root.digest),
        reason: "indexes nested more than 8 deep".into(),
    })
}

/// The descriptor of the manifest or index `digest` of the layout `dir`
/// that `index.json` does not list, its kind read from the blob itself
/// (put into `store` on the way).
fn unlisted_layout_blob(store: &Store, dir: &Path, digest: &Digest) -> Result<Descriptor> {
    let path = dir.join("blobs/sha256").join(digest.hex());
    let size = fs::metadata(&path)
        .map_err(|e| Error::Archive {
            path: dir.to_path_buf(),
            reason: format!("blob {digest}: {e}"),
        })?
        .len();
    blob_from_layout(store, Some(dir), digest, size, dir)?;
    let bytes = store.read_blob(digest)?;
    let media_type = match parse_manifest(&bytes, "", &format!("manifest {digest}"))? {
        ManifestKind::Index(i) => i.media_type.unwrap_or_else(|| media::OCI_INDEX.into()),
        ManifestKind::Image(m) => m.media_type.unwrap_or_else(|| media::OCI_MANIFEST.into()),
    };
    Ok(Descriptor::new(media_type, digest.clone(), size))
}

fn ingest_verified(
    store: &Store,
    name: &str,
    reader: impl Read,
    size: u64,
    path: &Path,
) -> Result<Descriptor> {
    let expected = name
        .strip_prefix("blobs/sha256/")
        .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok());
    let desc = expected.map(|d| Descriptor::new("application/octet-stream", d, size));
    if let Some(d) = &desc {
        if store.blob_size(&d.digest)? == Some(size) {
            return Ok(d.clone());
        }
    }
    let mut w = store.ingest(desc)?;
    let mut reader = reader;
    io::copy(&mut reader, &mut w).map_err(|e| Error::Archive {
        path: path.to_path_buf(),
        reason: format!("{name}: {e}"),
    })?;
    w.commit()
}

fn read_tar_archive(
    store: &Store,
    file: File,
    path: &Path,
    reporter: &dyn Reporter,
) -> Result<ArchiveFiles> {
    // The archive being loaded, not a layer of it.
    let tar_err = |source: io::Error| Error::Archive {
        path: path.to_path_buf(),
        reason: format!("reading tar: {source}"),
    };
    // Compressed as a whole as `docker load` takes it: gzip, bzip2, xz or zstd.
    let reader = decompress_archive(io::BufReader::new(file)).map_err(tar_err)?;
    let mut archive = tar::Archive::new(reader);
    let mut files = ArchiveFiles::default();
    let mut links = Vec::new();
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path_bytes().into_owned();
        let name = normalize_name(&String::from_utf8_lossy(&raw));
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::Symlink || kind == tar::EntryType::Link {
            if let Some(target) = entry.link_name_bytes() {
                let target = String::from_utf8_lossy(&target).into_owned();
                links.push(ArchiveLink::new(name, &target, kind));
            }
            continue;
        }
        if kind != tar::EntryType::Regular {
            continue;
        }
        let size = entry.size();
        if is_metadata(&name) && !name.starts_with("blobs/") && size <= SMALL_FILE {
            let mut bytes = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut bytes).map_err(tar_err)?;
            files.small.insert(name, bytes);
        } else {
            let id = match name.strip_prefix("blobs/sha256/") {
                Some(hex) => format!("sha256:{hex}"),
                None => name.clone(),
            };
            reporter.start(&id, "loading", Some(size));
            let counted = ProgressReader::new(&mut entry, reporter, id.clone());
            match ingest_verified(store, &name, counted, size, path) {
                Ok(desc) => {
                    reporter.done(&id, Outcome::Done);
                    files.stored.insert(name, desc);
                }
                Err(e) => {
                    reporter.done(&id, Outcome::Failed(e.to_string()));
                    return Err(e);
                }
            }
        }
    }
    files.add_links(&links);
    Ok(files)
}

/// A symbolic or hard link in an archive: `docker save` (before Docker 25)
/// writes a layer that several images share once, and each other image's
/// `<id>/layer.tar` as a symlink `../<first id>/layer.tar`.
struct ArchiveLink {
    name: String,
    /// The archive name it points at (a symlink's target resolved against
    /// its directory; a hard link's is one already).
    target: String,
}

impl ArchiveLink {
    fn new(name: String, target: &str, kind: tar::EntryType) -> ArchiveLink {
        let joined = match name.rsplit_once('/') {
            Some((dir, _)) if kind == tar::EntryType::Symlink && !target.starts_with('/') => {
                format!("{dir}/{target}")
            }
            _ => target.to_string(),
        };
        // `..` steps up; above the archive's top it stays at the top.
        let mut parts: Vec<&str> = Vec::new();
        for part in joined.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                other => parts.push(other),
            }
        }
        ArchiveLink {
            name,
            target: parts.join("/"),
        }
    }
}

impl ArchiveFiles {
    /// Makes each link name the file it leads to (through other links too,
    /// a bounded number of them); a link to nothing is left out, so a
    /// manifest that names it finds it missing.
    fn add_links(&mut self, links: &[ArchiveLink]) {
        let by_name: HashMap<&str, &str> = links
            .iter()
            .map(|l| (l.name.as_str(), l.target.as_str()))
            .collect();
        for link in links {
            let mut target = link.target.as_str();
            for _ in 0..links.len() {
                match by_name.get(target) {
                    Some(next) => target = next,
                    None => break,
                }
            }
            if let Some(desc) = self.stored.get(target).cloned() {
                self.stored.insert(link.name.clone(), desc);
            } else if let Some(bytes) = self.small.get(target).cloned() {
                self.small.insert(link.name.clone(), bytes);
            }
        }
    }
}

fn read_dir_archive(dir: &Path) -> Result<ArchiveFiles> {
    let mut files = ArchiveFiles::default();
    for name in ["index.json", "manifest.json", "oci-layout", "repositories"] {
        let p = dir.join(name);
        if p.is_file() {
            files
                .small
                .insert(name.to_string(), fs::read(&p).map_err(io_at("read", &p))?);
        }
    }
    // Blobs are copied lazily: only those the manifests reach.
    Ok(files)
}

fn blob_from_layout(
    store: &Store,
    layout_dir: Option<&Path>,
    digest: &Digest,
    size: u64,
    archive: &Path,
) -> Result<()> {
    if store.blob_size(digest)? == Some(size) {
        return Ok(());
    }
    let Some(dir) = layout_dir else {
        return Err(Error::Archive {
            path: archive.to_path_buf(),
            reason: format!("blob {digest} is missing"),
        });
    };
    let p = dir.join("blobs/sha256").join(digest.hex());
    let f = File::open(&p).map_err(|e| Error::Archive {
        path: archive.to_path_buf(),
        reason: format!("blob {digest}: {e}"),
    })?;
    ingest_verified(
        store,
        &format!("blobs/sha256/{}", digest.hex()),
        f,
        size,
        archive,
    )?;
    Ok(())
}

fn load_oci(store: &Store, files: &ArchiveFiles, path: &Path) -> Result<Vec<Loaded>> {
    let index_bytes = &files.small["index.json"];
    let index: Index = serde_json::from_slice(index_bytes).map_err(|source| Error::Json {
        what: format!("{}: index.json", path.display()),
        source,
    })?;
    let layout_dir = if path.is_dir() { Some(path) } else { None };
    let mut out = Vec::new();
    for desc in &index.manifests {
        load_tree(store, layout_dir, desc, path)?;
        let name = desc
            .annotations
            .get(ANNOTATION_CONTAINERD_NAME)
            .or_else(|| {
                desc.annotations
                    .get(ANNOTATION_REF_NAME)
                    .filter(|n| n.contains('/') || n.contains(':'))
            });
        let mut entry = desc.clone();
        entry.annotations.clear();
        let references = match name.map(|n| Reference::parse(n)) {
            Some(Ok(r)) => {
                store.tag(&r, &entry)?;
                vec![r]
            }
            _ => {
                store.add_untagged(&entry)?;
                Vec::new()
            }
        };
        out.push(Loaded {
            references,
            manifest: entry,
        });
    }
    Ok(out)
}

/// Stores what `desc` reaches in the archive: an image manifest with its
/// config and every layer (all must be there and match), or an index with
/// the entries the archive holds (an entry the archive lacks is left out,
/// as `docker save` of a partly pulled multi-platform image leaves it;
/// at least one image must be there).
fn load_tree(
    store: &Store,
    layout_dir: Option<&Path>,
    desc: &Descriptor,
    archive: &Path,
) -> Result<()> {
    let mut queue = vec![(desc.clone(), false)];
    let mut images = 0;
    while let Some((d, optional)) = queue.pop() {
        match blob_from_layout(store, layout_dir, &d.digest, d.size, archive) {
            Ok(()) => {}
            Err(Error::Archive { .. }) if optional => continue,
            Err(e) => return Err(e),
        }
        let bytes = store.read_blob(&d.digest)?;
        match parse_manifest(&bytes, &d.media_type, &format!("manifest {}", d.digest))? {
            ManifestKind::Index(i) => queue.extend(i.manifests.into_iter().map(|m| (m, true))),
            ManifestKind::Image(m) => {
                // Refused here, as a build or pull would refuse it,
                // rather than tagged for `images`, `inspect` and `run`
                // to fail on.
                if m.config.size > MAX_JSON_BLOB {
                    return Err(Error::InvalidManifest {
                        what: format!("config {} of manifest {}", m.config.digest, d.digest),
                        reason: format!("{} bytes, more than the 16 MiB kiln reads", m.config.size),
                    });
                }
                for blob in std::iter::once(&m.config).chain(&m.layers) {
                    blob_from_layout(store, layout_dir, &blob.digest, blob.size, archive)?;
                }
                images += 1;
            }
        }
    }
    if images == 0 {
        return Err(Error::Archive {
            path: archive.to_path_buf(),
            reason: format!("{}: none of its images is in the archive", desc.digest),
        });
    }
    Ok(())
}

fn load_docker(store: &Store, files: &ArchiveFiles, path: &Path) -> Result<Vec<Loaded>> {
    let bad = |reason: String| Error::Archive {
        path: path.to_path_buf(),
        reason,
    };
    let entries: Vec<DockerArchiveEntry> = serde_json::from_slice(&files.small["manifest.json"])
        .map_err(|source| Error::Json {
            what: format!("{}: manifest.json", path.display()),
            source,
        })?;
    let mut out = Vec::new();
    for entry in entries {
        let config_name = normalize_name(&entry.config);
        let config_desc = match (
            files.small.get(&config_name),
            files.stored.get(&config_name),
        ) {
            (Some(bytes), _) => store.put_blob(media::OCI_CONFIG, bytes)?,
            (None, Some(d)) => Descriptor::new(media::OCI_CONFIG, d.digest.clone(), d.size),
            (None, None) => return Err(bad(format!("config {config_name} is missing"))),
        };
        let config = store.read_config(&config_desc)?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(bad(format!(
                "{config_name}: {} diff ids but {} layers",
                config.rootfs.diff_ids.len(),
                entry.layers.len()
            )));
        }
        let mut layers = Vec::new();
        for layer_name in &entry.layers {
            let name = normalize_name(layer_name);
            let d = files
                .stored
                .get(&name)
                .ok_or_else(|| bad(format!("layer {name} is missing")))?;
            let mut head = [0u8; crate::compress::Magic::LEN];
            let n = store
                .open_blob(&d.digest)?
                .read(&mut head)
                .map_err(io_at("read", &store.blob_path(&d.digest)))?;
            let kind = Compression::sniff(&head[..n]);
            layers.push(Descriptor::new(
                kind.oci_layer_media_type(),
                d.digest.clone(),
                d.size,
            ));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            artifact_type: None,
            config: config_desc,
            layers,
            subject: None,
            annotations: BTreeMap::new(),
        };
        let mut desc = store.put_json(media::OCI_MANIFEST, &manifest)?;
        desc.platform = Some(crate::oci::Platform {
            os_version: None,
            ..config.platform()
        });
        let mut references = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            let r = Reference::parse(&tag)?;
            store.tag(&r, &desc)?;
            references.push(r);
        }
        if references.is_empty() {
            store.add_untagged(&desc)?;
        }
        out.push(Loaded {
            references,
            manifest: desc,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod put_index_tests {
    use super::*;

    fn entry(bytes: &[u8]) -> Descriptor {
        Descriptor::new(media::OCI_MANIFEST, Digest::of(bytes), bytes.len() as u64)
    }

    fn ref_names(dir: &Path) -> Vec<(String, String)> {
        let index: Index =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let get = |m: &Descriptor, key: &str| m.annotations.get(key).cloned().unwrap_or_default();
        let mut names: Vec<(String, String)> = (index.manifests.iter())
            .map(|m| {
                (
                    get(m, ANNOTATION_CONTAINERD_NAME),
                    get(m, ANNOTATION_REF_NAME),
                )
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writers_at_once_each_keep_their_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|scope| {
            for writer in 0..8 {
                let dir = dir.path();
                scope.spawn(move || {
                    for i in 0..25 {
                        let tag = IndexName::Tag(format!("w{writer}-{i}"));
                        put_index(dir, &entry(tag_bytes(writer, i).as_bytes()), &[tag]).unwrap();
                    }
                });
            }
        });
        assert_eq!(ref_names(dir.path()).len(), 200);
        assert!(dir.path().join("oci-layout").is_file());
    }

    fn tag_bytes(writer: usize, i: usize) -> String {
        format!("{writer}/{i}")
    }

    #[test]
    fn a_name_replaces_only_the_entry_of_that_name() {
        let dir = tempfile::tempdir().unwrap();
        let image = |name: &str| IndexName::Image(Reference::parse(name).unwrap());
        put_index(dir.path(), &entry(b"1"), &[image("app:1"), image("app:2")]).unwrap();
        put_index(dir.path(), &entry(b"2"), &[IndexName::Tag("1".into())]).unwrap();
        put_index(dir.path(), &entry(b"3"), &[image("app:1")]).unwrap();
        put_index(dir.path(), &entry(b"4"), &[]).unwrap();
        let index: Index =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        let digests: Vec<Digest> = index.manifests.iter().map(|m| m.digest.clone()).collect();
        // app:2 (1), the bare tag 1 (2), app:1 again (3), the unnamed (4).
        assert_eq!(
            digests,
            [b"1", b"2", b"3", b"4"].map(|b| Digest::of(b)),
            "{index:?}"
        );
        assert_eq!(
            ref_names(dir.path()),
            [
                (String::new(), String::new()),
                (String::new(), "1".into()),
                ("docker.io/library/app:1".into(), "1".into()),
                ("docker.io/library/app:2".into(), "2".into()),
            ]
        );
    }
}
