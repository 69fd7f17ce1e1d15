//! Where a built image goes besides the store (`--output`, with buildx's
//! forms): an OCI layout or a docker-archive (a tar, or with `tar=false` a
//! directory), the final root filesystem as a directory (`type=local`, or
//! `-o DIR`) or a tar (`type=tar`, or `-o -` for standard output), or the
//! image itself under more names, pushed or not (`type=image,name=…,push=…`;
//! `type=registry` pushes). [`with_tags`] then gives the outputs the names
//! buildx gives them. The outputs that write an image take BuildKit's
//! `compression=`, `oci-mediatypes=` and `annotation.*` ([`ImageFormat`]);
//! kiln writes one image for them all, so they must agree
//! ([`ImageFormat::settle`]).
//!
//! ```
//! use kiln_builder::export::{Archive, Dest, Output};
//! let out = Output::parse("type=oci,dest=/tmp/image").unwrap();
//! assert_eq!(out, Output::Oci(Archive::tar("/tmp/image")));
//! let layout = Output::parse("type=oci,dest=/tmp/layout,tar=false").unwrap();
//! assert_eq!(layout, Output::Oci(Archive { tar: false, ..Archive::tar("/tmp/layout") }));
//! assert_eq!(Output::parse("type=oci").unwrap(), Output::Oci(Archive::tar("-")));
//! assert_eq!(Output::parse("out").unwrap(), Output::Local("out".into()));
//! assert_eq!(Output::parse("-").unwrap(), Output::Tar(Dest::Stdout));
//! // A docker-archive without dest goes into the docker daemon (--load).
//! assert!(Output::parse("type=docker").unwrap().loads_into_docker());
//! assert!(Output::parse("type=docker,tar=false").is_err());
//! // The image's form is the build's: only parse_with_format carries it.
//! let (_, format) = Output::parse_with_format("type=oci,dest=x,compression=zstd").unwrap();
//! assert_eq!(format.compression, Some(kiln_layers::Compression::Zstd));
//! assert!(Output::parse("type=oci,dest=x,compression=zstd").is_err());
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_layers::archive::{self, Format, SaveItem};
use kiln_layers::compressed::{compressed_image, LayerForm};
use kiln_layers::{Compression, Descriptor, Platform, Reference, Reporter, Store};

use crate::annotations::Annotation;
use crate::copy::CopyOptions;
use crate::rootfs::LayeredRootfs;
use crate::solve::BuiltImage;

/// What an output that writes an image (`type=oci|docker|image|registry`)
/// says of its form, in BuildKit's image exporter attributes:
/// `compression=uncompressed|gzip|zstd`, `compression-level=` (gzip 0-9,
/// zstd 1-22; kiln's own are gzip 6, zstd 3), `oci-mediatypes=true|false`,
/// `annotation[-TYPE][[PLATFORM]].KEY=VALUE` (what `--annotation` gives,
/// [`crate::annotations`]), `rewrite-timestamp=true|false` (the files of
/// the layers the build makes get no mtime newer than SOURCE_DATE_EPOCH),
/// `force-compression=true|false` (`true`: a base image's layers,
/// compressed as the registry gave them, are converted to `compression=`
/// too; [`LayerForm`]), `oci-artifact=true|false` (attestation manifests
/// as OCI artifacts, with an `artifactType` and a `subject`; current
/// BuildKit's default with OCI media types). `None`, no annotation: not
/// said. (Other compressions are refused.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFormat {
    pub compression: Option<Compression>,
    pub force_compression: Option<bool>,
    pub level: Option<i32>,
    pub oci_media_types: Option<bool>,
    pub annotations: Vec<Annotation>,
    pub rewrite_timestamp: Option<bool>,
    pub oci_artifact: Option<bool>,
    /// `source-date-epoch=` (every kind of output takes it, as every
    /// BuildKit exporter): the epoch this output dates its image or files
    /// by, over the SOURCE_DATE_EPOCH build arg and environment.
    pub source_date_epoch: Option<i64>,
}

/// The form of the build's one image ([`ImageFormat::settle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The compression, an output's `force-compression=true` and its
    /// `compression-level=` (one the compression takes).
    pub layer_form: LayerForm,
    /// Docker's media types instead of OCI's.
    pub docker_media_types: bool,
    /// The `--annotation` flags, and the outputs' annotations those do
    /// not set.
    pub annotations: Vec<Annotation>,
    /// An output said `rewrite-timestamp=true`.
    pub rewrite_timestamp: bool,
    /// Attestation manifests are OCI artifacts: what the outputs say, else
    /// whether the media types are OCI's (BuildKit's default since its
    /// compatibility version 0.31).
    pub oci_artifact: bool,
}

/// BuildKit's compression attributes (its `util/compression`
/// `ParseAttributes`), which image outputs and cache exports take alike:
/// `compression=uncompressed|gzip|zstd`, `force-compression=` (an empty
/// value is true) and `compression-level=` (a number; whether the
/// compression takes it is the caller's to check, once it knows the
/// compression). `None`: not said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompressionAttributes {
    pub compression: Option<Compression>,
    pub force: Option<bool>,
    pub level: Option<i32>,
}

impl CompressionAttributes {
    /// Takes the three attributes out of `map`.
    pub fn take(map: &mut BTreeMap<String, String>) -> Result<CompressionAttributes, String> {
        let compression = match map.remove("compression").as_deref() {
            None => None,
            Some("uncompressed") => Some(Compression::None),
            Some("gzip") => Some(Compression::Gzip),
            Some("zstd") => Some(Compression::Zstd),
            Some(other) => {
                return Err(format!(
                    "compression={other}: kiln writes the layers it makes uncompressed, or \
                     compressed with gzip or zstd"
                ))
            }
        };
        let force = take_bool(map, "force-compression")?;
        let level = match map.remove("compression-level") {
            None => None,
            Some(value) => Some(
                value
                    .parse::<i32>()
                    .map_err(|_| format!("compression-level={value}: a number"))?,
            ),
        };
        Ok(CompressionAttributes {
            compression,
            force,
            level,
        })
    }
}

impl ImageFormat {
    /// Takes the image format attributes out of an output's `map`, read as
    /// BuildKit reads them (`force-compression=` empty is true; an empty
    /// `oci-mediatypes=` is no boolean).
    fn take(map: &mut BTreeMap<String, String>, spec: &str) -> Result<ImageFormat, String> {
        let bool_of = |key: &str, value: &str| {
            kiln_parser::mount::parse_go_bool(value)
                .ok_or_else(|| format!("{key}={value}: true or false"))
        };
        let CompressionAttributes {
            compression,
            force: force_compression,
            level,
        } = CompressionAttributes::take(map)?;
        let oci_media_types = match map.remove("oci-mediatypes") {
            None => None,
            Some(value) => Some(bool_of("oci-mediatypes", &value)?),
        };
        let rewrite_timestamp = match map.remove("rewrite-timestamp") {
            None => None,
            Some(value) => Some(bool_of("rewrite-timestamp", &value)?),
        };
        let oci_artifact = match map.remove("oci-artifact") {
            None => None,
            Some(value) => Some(bool_of("oci-artifact", &value)?),
        };
        let mut annotations = Vec::new();
        let keys: Vec<String> = map
            .keys()
            .filter(|k| k.starts_with("annotation"))
            .cloned()
            .collect();
        for key in keys {
            let value = map.get(&key).cloned().unwrap_or_default();
            // A key not of the annotation form stays: an unknown attribute.
            if let Some(a) = Annotation::from_output_attribute(&key, &value, spec)? {
                map.remove(&key);
                annotations.push(a);
            }
        }
        Ok(ImageFormat {
            compression,
            force_compression,
            level,
            oci_media_types,
            annotations,
            rewrite_timestamp,
            oci_artifact,
            source_date_epoch: None,
        })
    }

    /// The one compression and media type family of the build's image:
    /// what `--compression` and `--docker-mediatypes` (`flags`, `None`
    /// where not given) and every output's attributes (with its spec, for
    /// the error) say, which must agree; gzip and OCI's media types where
    /// nothing says (an output that says none gets the compression another
    /// says). The image outputs (`outputs` holds no other) must give the
    /// same annotations and `rewrite-timestamp` (one that says none has
    /// none and false, as BuildKit's exporter); an `--annotation` flag
    /// sets its key over an output's, as buildx writes the flags into
    /// every output's attributes.
    pub fn settle(flags: &ImageFormat, outputs: &[(ImageFormat, &str)]) -> Result<Settled, String> {
        let outputs = || {
            outputs
                .iter()
                .map(|(f, spec)| (f, format!("--output {spec}")))
        };
        let compressions = (flags
            .compression
            .map(|c| (c, "--compression".to_string()))
            .into_iter())
        .chain(outputs().filter_map(|(f, who)| f.compression.map(|c| (c, who))));
        let media_types = (flags.oci_media_types.map(|o| {
            (
                o,
                "--docker-mediatypes (or KILN_DOCKER_MEDIATYPES)".to_string(),
            )
        }))
        .into_iter()
        .chain(outputs().filter_map(|(f, who)| f.oci_media_types.map(|o| (o, who))));
        let compression = agree(compressions, |c| {
            format!("compression={}", compression_name(*c))
        })?;
        let oci = agree(media_types, |o| format!("oci-mediatypes={o}"))?;
        let forces = outputs().filter_map(|(f, who)| f.force_compression.map(|o| (o, who)));
        let force_compression = agree(forces, |f| format!("force-compression={f}"))?;
        let rewrites = outputs().map(|(f, who)| (f.rewrite_timestamp.unwrap_or(false), who));
        let rewrite_timestamp = agree(rewrites, |r| format!("rewrite-timestamp={r}"))?;
        let annotation_sets = outputs().map(|(f, who)| (annotation_set(&f.annotations), who));
        agree(annotation_sets, |set| match set.is_empty() {
            true => "no annotation".to_string(),
            false => set.join(","),
        })?;
        let annotations = with_flags_over(
            outputs().next().map_or(&[][..], |(f, _)| &f.annotations),
            &flags.annotations,
        );
        let compression = compression.unwrap_or(Compression::Gzip);
        let levels = outputs().filter_map(|(f, who)| f.level.map(|l| (l, who)));
        let level = agree(levels, |l| format!("compression-level={l}"))?;
        if let Some(level) = level {
            kiln_layers::compress::check_level(compression, level).map_err(|why| {
                let who = outputs()
                    .find(|(f, _)| f.level.is_some())
                    .map_or_else(String::new, |(_, who)| who);
                format!("{who}: {why}")
            })?;
        }
        // Each output's own, or BuildKit's default (with OCI's media types):
        // an output that says nothing does not take another's.
        let artifact_default = oci != Some(false);
        if outputs().any(|(f, _)| f.oci_artifact == Some(true)) && !artifact_default {
            return Err("exporter option \"oci-artifact=true\" conflicts with \
                        \"oci-mediatypes=false\": an OCI artifact needs OCI's media types"
                .to_string());
        }
        let artifacts = outputs().map(|(f, who)| (f.oci_artifact.unwrap_or(artifact_default), who));
        let oci_artifact = agree(artifacts, |a| format!("oci-artifact={a}"))?;
        Ok(Settled {
            layer_form: LayerForm {
                compression,
                force: force_compression == Some(true),
                level,
            },
            docker_media_types: oci == Some(false),
            annotations,
            rewrite_timestamp: rewrite_timestamp == Some(true),
            oci_artifact: oci_artifact.unwrap_or(artifact_default),
        })
    }
}

/// The outputs' annotations and the `--annotation` flags, a flag's key
/// over the same key of an output's (buildx writes the flags into every
/// output's attributes).
fn with_flags_over(outputs: &[Annotation], flags: &[Annotation]) -> Vec<Annotation> {
    let kept = outputs
        .iter()
        .filter(|a| !flags.iter().any(|f| f.same_place(a)));
    kept.chain(flags).cloned().collect()
}

/// Annotations as a sorted list of output attributes
/// (`annotation-TYPE[PLATFORM].KEY=VALUE`), to compare two outputs' and
/// show them.
fn annotation_set(annotations: &[Annotation]) -> Vec<String> {
    let mut set: Vec<String> = annotations
        .iter()
        .map(|a| {
            let platform = a
                .platform
                .as_ref()
                .map(|p| format!("[{}]", p.normalized()))
                .unwrap_or_default();
            format!(
                "annotation-{}{platform}.{}={}",
                a.target.word(),
                a.key,
                a.value
            )
        })
        .collect();
    set.sort();
    set.dedup();
    set
}

/// The one value every sayer gives, if any says one; else an error naming
/// the first two that differ.
fn agree<T: PartialEq>(
    said: impl Iterator<Item = (T, String)>,
    show: impl Fn(&T) -> String,
) -> Result<Option<T>, String> {
    let mut first: Option<(T, String)> = None;
    for (value, who) in said {
        match &first {
            Some((earlier, by)) if *earlier != value => {
                return Err(format!(
                    "{who} says {}, {by} says {}: kiln writes one image, in one form, for \
                     every output",
                    show(&value),
                    show(earlier)
                ))
            }
            Some(_) => {}
            None => first = Some((value, who)),
        }
    }
    Ok(first.map(|(value, _)| value))
}

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::None => "uncompressed",
    }
}

/// One `--output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `type=oci[,dest=FILE|-][,tar=false,dest=DIR][,name=REF,…]`: an OCI
    /// image layout.
    Oci(Archive),
    /// `type=docker,dest=FILE[,tar=false][,name=REF,…]`: a docker-archive
    /// (`docker load` reads it).
    Docker(Archive),
    /// `type=local,dest=DIR` (or `-o DIR`): the final root filesystem.
    Local(PathBuf),
    /// `type=tar,dest=FILE|-` (or `-o -`): the final root filesystem as a
    /// tar.
    Tar(Dest),
    /// `type=image[,name=REF[,REF…]][,push=true]`, `type=registry` (push
    /// implied): the image in the store under these names too, pushed when
    /// asked, in the way `options` says.
    Image {
        names: Vec<Reference>,
        push: bool,
        options: ImageOptions,
    },
}

/// How an image output pushes, names and keeps the image, in BuildKit's
/// image exporter attributes:
/// - `push-by-digest=`: the manifest is put by its digest, no tag (the
///   names must give none);
/// - `registry.insecure=`: the names' registry is reached over plain
///   HTTP, or HTTPS without certificate checks, for this push only;
/// - `name-canonical=`: each name's repository also names the image in
///   the store by its digest, `repo@sha256:…`, which stays when the tag
///   moves on (the pushed image's when the output pushes);
/// - `unpack=`: every layer of the image is in the store and unpacked,
///   ready to run, even those of a base image a push-only build would
///   have left in its registry;
/// - `store=` (true unless given): `false` keeps no name of the image in
///   the store (the build's layers stay build cache), as BuildKit leaves
///   its image store alone; the names still go to the metadata file.
///
/// As BuildKit reads them, the first two count only when the output
/// pushes, the next two only when it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageOptions {
    pub by_digest: bool,
    pub insecure: bool,
    pub canonical: bool,
    pub unpack: bool,
    pub store: bool,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            by_digest: false,
            insecure: false,
            canonical: false,
            unpack: false,
            store: true,
        }
    }
}

/// Takes the boolean attribute `key` out of `map` as BuildKit's exporters
/// read it: an empty value is true, what is no boolean is refused.
fn take_bool(map: &mut BTreeMap<String, String>, key: &str) -> Result<Option<bool>, String> {
    match map.remove(key).as_deref() {
        None => Ok(None),
        Some("") => Ok(Some(true)),
        Some(value) => kiln_parser::mount::parse_go_bool(value)
            .map(Some)
            .ok_or_else(|| format!("{key}={value}: true or false")),
    }
}

/// The `source-date-epoch=` the outputs (`(format, spec)` each) give the
/// build: every output the same, or none (kiln makes one image, and dates
/// it and every output's files once); `None` when none gives it, the
/// SOURCE_DATE_EPOCH build arg and environment then counting, as in
/// BuildKit.
pub fn settle_epoch(outputs: &[(ImageFormat, &str)]) -> Result<Option<i64>, String> {
    let said = (outputs.iter()).map(|(f, spec)| (f.source_date_epoch, format!("--output {spec}")));
    let epoch = agree(said, |e| match e {
        Some(e) => format!("source-date-epoch={e}"),
        None => "no source-date-epoch".to_string(),
    })?;
    Ok(epoch.flatten())
}

/// The `name=` of an output spec as given, each name once split (for
/// what parsing normalizes away: whether a name gives a tag).
pub fn given_names(spec: &str) -> Vec<String> {
    let fields = kiln_parser::mount::csv_fields(spec).unwrap_or_default();
    fields
        .iter()
        .filter_map(|field| field.split_once('='))
        .filter(|(key, _)| key.trim().eq_ignore_ascii_case("name"))
        .flat_map(|(_, names)| names.split(','))
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Refuses a name that gives a tag for a push by digest, as BuildKit
/// refuses it (`can't push tagged ref … by digest`): `registry/repo` is
/// pushed as `registry/repo@DIGEST`, and a tag would be dropped.
pub fn check_untagged(name: &str) -> Result<(), String> {
    let last = name.trim().rsplit('/').next().unwrap_or_default();
    if last.contains(':') {
        return Err(format!(
            "push-by-digest=true: can't push tagged ref {} by digest (name the repository \
             alone, as registry/repo)",
            name.trim()
        ));
    }
    Ok(())
}

/// Where an OCI layout or docker-archive goes, and the names it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// A file (`-`: standard output), or with `tar` false a directory.
    pub dest: PathBuf,
    /// `tar=` (true unless given): one tar file, else a directory.
    pub tar: bool,
    /// `name=`, or every `-t` when there are some ([`with_tags`]); none
    /// leaves the archive's image unnamed, as BuildKit leaves it.
    pub names: Vec<Reference>,
    /// `type=docker` without `dest` (or `--load`): the docker-archive goes
    /// into the docker daemon ([`DockerDaemon`]), as buildx loads it; `dest`
    /// is then empty.
    pub load: bool,
}

/// The docker daemon a docker-archive is loaded into (`--load`,
/// `type=docker` without `dest`), as buildx's docker driver loads the
/// image: the CLI's, which speaks the daemon's API (the builder speaks no
/// HTTP).
pub trait DockerDaemon: Sync {
    /// Loads the docker-archive `archive` gives, read to its end, into the
    /// daemon.
    fn load(&self, archive: &mut dyn std::io::Read) -> Result<(), String>;
}

impl Archive {
    /// A tar at `dest`, unnamed.
    pub fn tar(dest: impl Into<PathBuf>) -> Archive {
        Archive {
            dest: dest.into(),
            tar: true,
            names: Vec::new(),
            load: false,
        }
    }

    fn to_stdout(&self) -> bool {
        self.tar && !self.load && self.dest.as_os_str() == "-"
    }

    /// What the archive holds: the image once per name, or once unnamed.
    fn items(&self, item: impl Fn(Option<Reference>) -> SaveItem) -> Vec<SaveItem> {
        if self.names.is_empty() {
            return vec![item(None)];
        }
        self.names.iter().cloned().map(Some).map(item).collect()
    }

    /// Writes `items` as a tar or a directory; a tar file's missing parent
    /// directories are made first, as buildx makes them.
    fn save(&self, store: &Store, items: &[SaveItem], format: Format) -> kiln_layers::Result<()> {
        let layout = if self.tar {
            archive::Layout::Tar
        } else {
            archive::Layout::MergedDir
        };
        if self.tar && !self.to_stdout() {
            make_parents(&self.dest)
                .map_err(|e| kiln_layers::Error::io("create directory", &self.dest, e))?;
        }
        archive::save_as(store, items, format, &self.dest, layout)
    }
}

/// Streams `items` as a docker-archive into `daemon` (buildx's `--load`):
/// a thread writes the tar into a socket pair the daemon's upload reads, so no
/// copy of the image is written to disk first. When both sides fail, the
/// writer's error is the cause unless it is the pipe the daemon stopped
/// reading.
fn load_into_docker(
    store: &Store,
    items: &[SaveItem],
    daemon: Option<&dyn DockerDaemon>,
) -> Result<(), ExportError> {
    let daemon = daemon.ok_or_else(|| ExportError::Load("no docker daemon was given".into()))?;
    let label = Path::new("(the stream to docker)");
    let store_error = |source| ExportError::Store {
        dest: PathBuf::from("type=docker"),
        source,
    };
    // (A socket pair: a pipe, in the Rust kiln supports.)
    let (reader, writer) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| store_error(kiln_layers::Error::io("make a pipe", label, e)))?;
    let finished = std::sync::atomic::AtomicBool::new(false);
    let mut reader = Finished {
        stream: reader,
        finished: &finished,
    };
    let (written, loaded) = std::thread::scope(|scope| {
        let writing = scope.spawn(|| {
            let mut w = std::io::BufWriter::with_capacity(256 * 1024, writer);
            let written = archive::save_tar(store, items, Format::Docker, &mut w, label);
            // Said before the stream closes (when `w` drops), so that the
            // reader tells an archive's end from a writer that gave up.
            if written.is_ok() {
                finished.store(true, std::sync::atomic::Ordering::Release);
            }
            written
        });
        let loaded = daemon.load(&mut reader);
        // A daemon that stopped reading: the writer's next write fails.
        drop(reader);
        let written = writing.join().unwrap_or_else(|_| {
            Err(kiln_layers::Error::io(
                "write",
                label,
                std::io::Error::other("the archive's writer panicked"),
            ))
        });
        (written, loaded)
    });
    match (written, loaded) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Err(daemon_said)) if is_closed_socket(&e) => Err(ExportError::Load(daemon_said)),
        (Err(e), _) => Err(store_error(e)),
        (Ok(()), Err(daemon_said)) => Err(ExportError::Load(daemon_said)),
    }
}

/// The stream the daemon's upload reads: its end is an error unless the
/// writer finished the archive, so that a writer that failed halfway
/// leaves the upload unfinished (no last chunk), not a shorter tar that
/// looks whole (the tar writer ends the archive when dropped).
struct Finished<'a> {
    stream: std::os::unix::net::UnixStream,
    finished: &'a std::sync::atomic::AtomicBool,
}

impl std::io::Read for Finished<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match std::io::Read::read(&mut self.stream, buf)? {
            0 if !buf.is_empty() && !self.finished.load(std::sync::atomic::Ordering::Acquire) => {
                Err(std::io::Error::other(
                    "the archive's writer stopped before its end",
                ))
            }
            n => Ok(n),
        }
    }
}

/// Whether a store error is a write into a socket the daemon's side closed
/// (broken, or reset when it closed with bytes unread).
fn is_closed_socket(e: &kiln_layers::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        })
}

/// Makes a file destination's missing parent directories, as buildx's
/// `lazyFileWriter` makes them.
fn make_parents(file: &Path) -> std::io::Result<()> {
    match file.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::create_dir_all(parent),
        None => Ok(()),
    }
}

/// What writing an output needs besides the image.
pub struct WriteSettings<'a> {
    /// How layers are compressed in an OCI layout or docker-archive.
    pub layer_form: LayerForm,
    pub reporter: &'a dyn Reporter,
    /// `SOURCE_DATE_EPOCH`: every file of a type=local or type=tar output
    /// is dated then (BuildKit's local and tar exporters).
    pub epoch: Option<i64>,
    /// Where a docker-archive output without `dest` goes (none: such an
    /// output fails).
    pub docker: Option<&'a dyn DockerDaemon>,
}

/// The annotation BuildKit's oci and docker exporters put on the
/// descriptor an archive's `index.json` (and the metadata file) has.
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

impl WriteSettings<'_> {
    /// Dates an archive's descriptor as BuildKit's oci and docker
    /// exporters do: `org.opencontainers.image.created`, RFC 3339 in UTC
    /// to the second, now or `SOURCE_DATE_EPOCH`, unless a
    /// `manifest-descriptor` (or `index-descriptor`) annotation set it.
    fn date(&self, descriptor: &mut Descriptor) {
        let seconds = self.epoch.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
        (descriptor.annotations)
            .entry(ANNOTATION_CREATED.to_string())
            .or_insert_with(|| kiln_layers::oci::rfc3339(seconds));
    }
}

/// The outputs as buildx hands them to BuildKit: with `-t` names, every
/// image, oci and docker output is named by all of them (whatever its
/// `name=`); `--push` makes every image output push, and adds one named
/// by the `-t` names when there is none (no `--output` at all is the
/// store already).
pub fn with_tags(outputs: Vec<Output>, tags: &[Reference], push: bool) -> Vec<Output> {
    let image_output = |o: &Output| matches!(o, Output::Image { .. });
    let add_image = push && !outputs.is_empty() && !outputs.iter().any(image_output);
    let mut outputs: Vec<Output> = outputs
        .into_iter()
        .map(|output| match output {
            Output::Image {
                names,
                push: pushes,
                options,
            } => Output::Image {
                names: if tags.is_empty() {
                    names
                } else {
                    tags.to_vec()
                },
                push: pushes || push,
                options,
            },
            Output::Oci(archive) if !tags.is_empty() => Output::Oci(Archive {
                names: tags.to_vec(),
                ..archive
            }),
            Output::Docker(archive) if !tags.is_empty() => Output::Docker(Archive {
                names: tags.to_vec(),
                ..archive
            }),
            other => other,
        })
        .collect();
    if add_image {
        outputs.push(Output::Image {
            names: tags.to_vec(),
            push: true,
            options: ImageOptions::default(),
        });
    }
    outputs
}

/// A file, or standard output (`-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    File(PathBuf),
    Stdout,
}

/// Why an output could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("--output {spec}: {message}")]
    Spec { spec: String, message: String },
    #[error("--output {dest}: {source}")]
    Store {
        dest: PathBuf,
        #[source]
        source: kiln_layers::Error,
    },
    #[error("--output {dest}: {message}")]
    Copy { dest: PathBuf, message: String },
    #[error("--output type=docker: loading the image into docker: {0}")]
    Load(String),
}

impl Output {
    /// The progress vertex BuildKit's exporter of this kind shows, and its
    /// line, for the outputs that are not the store (whose vertex is
    /// `exporting to image`, with the image's lines).
    pub fn progress_vertex(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Output::Oci(_) => Some(("exporting to oci image format", "sending tarball done")),
            Output::Docker(_) => Some(("exporting to docker image format", "sending tarball done")),
            Output::Local(_) => Some(("exporting to client directory", "copying files done")),
            Output::Tar(_) => Some(("exporting to client tarball", "sending tarball done")),
            Output::Image { .. } => None,
        }
    }

    /// Parses `type=KIND,key=value,…` (`type` defaults to `local`), or the
    /// shorthands `PATH` (`type=local,dest=PATH`) and `-` (a tar of the
    /// root filesystem to standard output).
    /// An image format attribute (`compression=`, `oci-mediatypes=`, …) or
    /// `source-date-epoch=` is refused here, where nothing would carry it
    /// to the build: see [`Output::parse_with_format`].
    pub fn parse(spec: &str) -> Result<Output, ExportError> {
        match Output::parse_with_format(spec)? {
            (output, format) if format == ImageFormat::default() => Ok(output),
            _ => Err(ExportError::Spec {
                spec: spec.to_string(),
                message: "image format attributes and source-date-epoch= need \
                          Output::parse_with_format"
                    .into(),
            }),
        }
    }

    /// [`Output::parse`], with what an output that writes an image says of
    /// its form ([`ImageFormat`]; the default for the others).
    pub fn parse_with_format(spec: &str) -> Result<(Output, ImageFormat), ExportError> {
        let bad = |message: String| ExportError::Spec {
            spec: spec.to_string(),
            message,
        };
        if !spec.contains('=') && !spec.contains(',') {
            let output = match spec {
                "-" => Output::Tar(Dest::Stdout),
                "" => return Err(bad("an output needs a destination".into())),
                path => Output::Local(PathBuf::from(path)),
            };
            return Ok((output, ImageFormat::default()));
        }
        let fields = kiln_parser::mount::csv_fields(spec).map_err(|e| bad(e.to_string()))?;
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for field in fields {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| bad(format!("invalid field '{field}' must be a key=value pair")))?;
            // The key trimmed and lower-cased, the value as given (buildx's reading).
            map.insert(key.trim().to_lowercase(), value.to_string());
        }
        let kind = map.remove("type").unwrap_or_else(|| "local".into());
        let mut format = match kind.as_str() {
            "oci" | "docker" | "image" | "registry" => {
                ImageFormat::take(&mut map, spec).map_err(bad)?
            }
            _ => ImageFormat::default(),
        };
        // BuildKit's exporters read it as a number of seconds; empty is unset.
        if let Some(value) = map.remove("source-date-epoch") {
            format.source_date_epoch =
                crate::frontend::parse_source_date_epoch(&value).map_err(|_| {
                    bad(format!(
                        "source-date-epoch={value}: a whole number of seconds since the epoch"
                    ))
                })?;
        }
        let dest = map.remove("dest").filter(|d| !d.is_empty());
        // An empty name= names nothing (BuildKit reads it so).
        let mut names = || match map.remove("name").filter(|n| !n.trim().is_empty()) {
            None => Ok(Vec::new()),
            Some(names) => names
                .split(',')
                .map(|n| Reference::parse_tag(n.trim()).map_err(|e| bad(e.to_string())))
                .collect::<Result<Vec<_>, _>>(),
        };
        let output = match kind.as_str() {
            "oci" | "docker" => {
                let names = names()?;
                let tar = take_bool(&mut map, "tar").map_err(bad)?.unwrap_or(true);
                // buildx loads a docker-archive without a dest into docker.
                let load = dest.is_none() && tar && kind == "docker";
                let dest = match dest {
                    Some(dest) if !tar && dest == "-" => {
                        return Err(bad(format!(
                            "dest cannot be stdout for type={kind} with tar=false (a directory)"
                        )))
                    }
                    Some(dest) => dest,
                    // buildx writes an OCI tar to standard output then.
                    None if tar && kind == "oci" => "-".into(),
                    None if load => String::new(),
                    None => {
                        return Err(bad(format!(
                            "dest is required for type={kind} with tar=false"
                        )))
                    }
                };
                let archive = Archive {
                    dest: dest.into(),
                    tar,
                    names,
                    load,
                };
                if kind == "oci" {
                    Output::Oci(archive)
                } else {
                    Output::Docker(archive)
                }
            }
            "local" => match dest.as_deref() {
                None => return Err(bad("dest is required for type=local".into())),
                Some("-") => {
                    return Err(bad("type=local writes a directory, not standard output: \
                         type=tar,dest=- (or -o -) writes the files as a tar there"
                        .into()))
                }
                Some(dest) => Output::Local(dest.into()),
            },
            // buildx writes the tar to standard output without a dest.
            "tar" => match dest.as_deref() {
                None | Some("-") => Output::Tar(Dest::Stdout),
                Some(dest) => Output::Tar(Dest::File(dest.into())),
            },
            "image" | "registry" => {
                if dest.is_some() {
                    return Err(bad(format!("dest= is not an option of type={kind}")));
                }
                let names = names()?;
                let push = take_bool(&mut map, "push").map_err(bad)?.unwrap_or(false)
                    || kind == "registry";
                let options = ImageOptions {
                    by_digest: take_bool(&mut map, "push-by-digest")
                        .map_err(bad)?
                        .unwrap_or(false),
                    insecure: take_bool(&mut map, "registry.insecure")
                        .map_err(bad)?
                        .unwrap_or(false),
                    canonical: take_bool(&mut map, "name-canonical")
                        .map_err(bad)?
                        .unwrap_or(false),
                    unpack: take_bool(&mut map, "unpack").map_err(bad)?.unwrap_or(false),
                    store: take_bool(&mut map, "store").map_err(bad)?.unwrap_or(true),
                };
                Output::Image {
                    names,
                    push,
                    options,
                }
            }
            other => {
                return Err(bad(format!(
                    "type={other} is not supported (oci, docker, local, tar, image, registry)"
                )))
            }
        };
        // Every option of a kind is used above: anything left is unknown.
        if let Some(key) = map.keys().next() {
            const IMAGE_FORM: &str = "compression=, compression-level=, force-compression=, \
                                      oci-mediatypes=, oci-artifact=, rewrite-timestamp=, \
                                      annotation.*=, source-date-epoch=";
            let takes = match kind.as_str() {
                "oci" | "docker" => format!("dest=, tar=, name=, {IMAGE_FORM}"),
                "image" | "registry" => {
                    format!(
                        "name=, push=, push-by-digest=, registry.insecure=, name-canonical=, \
                         unpack=, store=, {IMAGE_FORM}"
                    )
                }
                _ => "dest=, source-date-epoch=".to_string(),
            };
            return Err(bad(format!(
                "{key}= is not an option of type={kind} (kiln's type={kind} takes {takes})"
            )));
        }
        Ok((output, format))
    }

    /// Whether the output goes to standard output (nothing else may,
    /// neither another output nor the image id): `-o -`, `dest=-` of a tar,
    /// an OCI layout or a docker-archive.
    /// Whether it writes the image (an OCI or docker archive, or the image
    /// under names), not a root filesystem.
    pub fn writes_image(&self) -> bool {
        matches!(
            self,
            Output::Oci(_) | Output::Docker(_) | Output::Image { .. }
        )
    }

    /// Whether it loads the image into the docker daemon (`type=docker`
    /// without `dest`, or `--load`).
    pub fn loads_into_docker(&self) -> bool {
        matches!(self, Output::Docker(archive) if archive.load)
    }

    pub fn to_stdout(&self) -> bool {
        match self {
            Output::Tar(dest) => *dest == Dest::Stdout,
            Output::Oci(archive) | Output::Docker(archive) => archive.to_stdout(),
            Output::Local(_) | Output::Image { .. } => false,
        }
    }

    /// Refuses, before the build, a destination buildx refuses: a file
    /// output whose dest is a directory, a directory output whose dest is
    /// a file, and a tar for a terminal.
    pub fn check_dest(&self, stdout_is_terminal: bool) -> Result<(), ExportError> {
        let refuse = |dest: &Path, message: String| {
            Err(ExportError::Copy {
                dest: dest.to_path_buf(),
                message,
            })
        };
        if self.to_stdout() && stdout_is_terminal {
            return refuse(
                Path::new("-"),
                "refusing to write a tar to a terminal: name a file, or redirect standard output"
                    .into(),
            );
        }
        let (dest, is_dir) = match self {
            Output::Local(dest) => (dest.as_path(), true),
            Output::Tar(Dest::File(dest)) => (dest.as_path(), false),
            Output::Oci(archive) | Output::Docker(archive)
                if !archive.to_stdout() && !archive.load =>
            {
                (archive.dest.as_path(), !archive.tar)
            }
            _ => return Ok(()),
        };
        match std::fs::metadata(dest) {
            Ok(meta) if is_dir && !meta.is_dir() => {
                refuse(dest, "the destination directory is a file".into())
            }
            Ok(meta) if !is_dir && meta.is_dir() => {
                let hint = match self {
                    Output::Oci(_) => " (an OCI layout directory is tar=false)",
                    _ => "",
                };
                refuse(dest, format!("the destination file is a directory{hint}"))
            }
            _ => Ok(()),
        }
    }

    /// Writes `built` there (an image output is the session's: names and
    /// pushes). An archive output returns the manifest it wrote (its
    /// layers compressed, as BuildKit's oci and docker exporters do);
    /// `name` is the reference the archive records.
    pub fn write(
        &self,
        store: &Store,
        built: &BuiltImage,
        settings: &WriteSettings<'_>,
    ) -> Result<Option<Descriptor>, ExportError> {
        let (format, archive) = match self {
            Output::Oci(archive) => (Format::Oci, archive),
            Output::Docker(archive) => (Format::Docker, archive),
            Output::Local(dest) => {
                export_local(store, &built.snapshots, dest, settings.epoch)?;
                return Ok(None);
            }
            Output::Tar(dest) => {
                export_tar(store, &[(None, &built.snapshots)], dest, settings.epoch)?;
                return Ok(None);
            }
            Output::Image { .. } => return Ok(None),
        };
        let store_err = |source| ExportError::Store {
            dest: archive.dest.clone(),
            source,
        };
        let mut manifest = compressed_image(
            store,
            &built.manifest,
            settings.layer_form,
            settings.reporter,
        )
        .map_err(store_err)?;
        settings.date(&mut manifest);
        let image = store
            .read_image(&manifest, &built.platform())
            .map_err(store_err)?;
        let items = archive.items(|name| SaveItem::single(name, image.clone()));
        if archive.load {
            load_into_docker(store, &items, settings.docker)?;
        } else {
            archive.save(store, &items, format).map_err(store_err)?;
        }
        Ok(Some(manifest))
    }
}

impl Output {
    /// Refuses, before a build that makes an index runs (several
    /// platforms, or one with `BUILDKIT_MULTI_PLATFORM`), an output that
    /// cannot hold one: a docker-archive (as BuildKit's docker exporter
    /// refuses a manifest list).
    pub fn check_platforms(&self, platforms: &[Platform]) -> Result<(), ExportError> {
        let Output::Docker(Archive { dest, .. }) = self else {
            return Ok(());
        };
        let message = match platforms {
            [one] => format!(
                "type=docker: a docker-archive holds one image, not an index, and \
                 BUILDKIT_MULTI_PLATFORM asks for an index of {one}; leave the build arg out, \
                 or use type=oci"
            ),
            _ => format!(
                "type=docker: a docker-archive holds one platform's image, and this build \
                 makes {} ({}); use type=oci, or build one --platform",
                platforms.len(),
                platforms
                    .iter()
                    .map(Platform::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Err(ExportError::Copy {
            dest: dest.clone(),
            message,
        })
    }

    /// Writes a multi-platform build's `index` (as stored) and its
    /// platforms' `images` there: an OCI layout of the index (layers
    /// compressed); the root filesystems under one directory per platform
    /// (`linux_amd64`, `linux_arm_v7`, as buildx names them) for
    /// type=local and type=tar. Returns the index an archive holds.
    pub fn write_index(
        &self,
        store: &Store,
        index: &Descriptor,
        images: &[BuiltImage],
        settings: &WriteSettings<'_>,
    ) -> Result<Option<Descriptor>, ExportError> {
        let dirs: Vec<(String, &BuiltImage)> = images
            .iter()
            .map(|b| (platform_dir(&b.platform()), b))
            .collect();
        match self {
            Output::Oci(archive) => {
                let store_err = |source| ExportError::Store {
                    dest: archive.dest.clone(),
                    source,
                };
                let mut compressed =
                    compressed_image(store, index, settings.layer_form, settings.reporter)
                        .map_err(store_err)?;
                settings.date(&mut compressed);
                let item = SaveItem::held(store, None, &compressed, &images[0].platform())
                    .map_err(store_err)?;
                let items = archive.items(|name| SaveItem {
                    reference: name,
                    ..item.clone()
                });
                archive
                    .save(store, &items, Format::Oci)
                    .map_err(store_err)?;
                Ok(Some(compressed))
            }
            Output::Docker(_) => {
                let platforms: Vec<Platform> = images.iter().map(BuiltImage::platform).collect();
                self.check_platforms(&platforms)?;
                Ok(None)
            }
            Output::Local(dest) => {
                for (dir, built) in &dirs {
                    export_local(store, &built.snapshots, &dest.join(dir), settings.epoch)?;
                }
                Ok(None)
            }
            Output::Tar(dest) => {
                let trees: Vec<(Option<&str>, &[PathBuf])> = dirs
                    .iter()
                    .map(|(dir, built)| (Some(dir.as_str()), built.snapshots.as_slice()))
                    .collect();
                export_tar(store, &trees, dest, settings.epoch)?;
                Ok(None)
            }
            Output::Image { .. } => Ok(None),
        }
    }
}

/// The directory a platform's root filesystem goes in when an output holds
/// several: `os_arch[_variant]`.
fn platform_dir(platform: &Platform) -> String {
    platform.normalized().to_string().replace('/', "_")
}

/// Root filesystems as one tar into `dest`: each tree at the top, or under
/// its directory; every file dated `epoch` when given, else as it is in
/// the image.
fn export_tar(
    store: &Store,
    trees: &[(Option<&str>, &[PathBuf])],
    dest: &Dest,
    epoch: Option<i64>,
) -> Result<(), ExportError> {
    let shown = match dest {
        Dest::File(path) => path.clone(),
        Dest::Stdout => PathBuf::from("-"),
    };
    let failed = |message: String| ExportError::Copy {
        dest: shown.clone(),
        message,
    };
    let scratch = store
        .scratch_dir("export")
        .map_err(|e| failed(e.to_string()))?;
    let merged = scratch.path().join("rootfs");
    for (dir, snapshots_bottom_first) in trees {
        let into = match dir {
            Some(dir) => merged.join(dir),
            None => merged.clone(),
        };
        export_local(store, snapshots_bottom_first, &into, epoch)?;
    }
    let options = kiln_layers::diff::DiffOptions {
        source_date_epoch: None,
        overlay_whiteouts: false,
        write_back: false,
        commit_in_background: false,
    };
    match dest {
        Dest::File(path) => {
            make_parents(path).map_err(|e| failed(e.to_string()))?;
            let file = std::fs::File::create(path).map_err(|e| failed(e.to_string()))?;
            let mut out =
                kiln_layers::diff::write_tar(&merged, std::io::BufWriter::new(file), &options)
                    .map_err(|e| failed(e.to_string()))?;
            std::io::Write::flush(&mut out).map_err(|e| failed(e.to_string()))
        }
        Dest::Stdout => {
            let stdout = std::io::stdout().lock();
            let mut out =
                kiln_layers::diff::write_tar(&merged, std::io::BufWriter::new(stdout), &options)
                    .map_err(|e| failed(e.to_string()))?;
            std::io::Write::flush(&mut out).map_err(|e| failed(e.to_string()))
        }
    }
}

/// The final root filesystem, merged from the snapshots, into `dest`;
/// every file dated `epoch` when given, `dest` itself too (BuildKit's
/// local exporter sets each one's mtime to `SOURCE_DATE_EPOCH`, a
/// platform's directory included).
fn export_local(
    store: &Store,
    snapshots_bottom_first: &[PathBuf],
    dest: &Path,
    epoch: Option<i64>,
) -> Result<(), ExportError> {
    let copy_err = |message: String| ExportError::Copy {
        dest: dest.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dest).map_err(|e| copy_err(e.to_string()))?;
    // A destination that is a symlink is followed (BuildKit's receiver
    // opens it as its root), never replaced as a root entry of another kind.
    let dest = &dest.canonicalize().map_err(|e| copy_err(e.to_string()))?;
    // The source view needs an (empty) upper dir of its own.
    let scratch = store
        .scratch_dir("export")
        .map_err(|e| copy_err(e.to_string()))?;
    let source = LayeredRootfs::new(
        scratch.path(),
        snapshots_bottom_first.iter().rev().cloned().collect(),
    );
    let target = LayeredRootfs::new(dest, Vec::new());
    let mut options = CopyOptions::dockerfile_copy(false);
    options.allow_wildcard = false;
    options.utime = epoch.map(|seconds| (seconds, 0));
    // What `dest` already holds stays, but for entries of another kind
    // where the image has a path: replaced (buildx's receiver does so).
    options.replace_other_kinds = true;
    crate::copy::copy(&source, "/", &target, "/", &options).map_err(|e| copy_err(e.to_string()))?;
    Ok(())
}

impl BuiltImage {
    /// The platform the image's config names.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.config.architecture.clone(),
            os: self.config.os.clone(),
            os_version: self.config.os_version.clone(),
            os_features: None,
            variant: self.config.variant.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A docker daemon that reads `take` bytes of the archive (all of it
    /// when `None`), keeps them and answers `answer`.
    struct Reading {
        take: Option<usize>,
        answer: Result<(), String>,
        read: std::sync::Mutex<Vec<u8>>,
    }

    impl DockerDaemon for Reading {
        fn load(&self, archive: &mut dyn std::io::Read) -> Result<(), String> {
            let mut bytes = Vec::new();
            match self.take {
                Some(n) => {
                    bytes.resize(n, 0);
                    archive.read_exact(&mut bytes).map_err(|e| e.to_string())?;
                }
                None => {
                    archive.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
                }
            }
            *self.read.lock().unwrap() = bytes;
            self.answer.clone()
        }
    }

    /// A store holding a one-layer image of `size` random bytes, and its
    /// archive item named `app:1`.
    fn store_with_image(dir: &Path, size: usize) -> (Store, SaveItem) {
        let mut file = vec![0u8; size];
        for (i, b) in file.iter_mut().enumerate() {
            *b = (i.wrapping_mul(2654435761) >> 13) as u8;
        }
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "data", &file[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let store = Store::open(dir.join("store")).unwrap();
        let mut options = kiln_layers::import::ImportOptions::new("test");
        options.platform = Platform::parse("linux/amd64").unwrap();
        let desc = kiln_layers::import::import_rootfs(
            &store,
            &tar[..],
            &options,
            &kiln_layers::NoProgress,
        )
        .unwrap();
        let name = Reference::parse("app:1").unwrap();
        let item = SaveItem::held(&store, Some(name), &desc, &options.platform).unwrap();
        (store, item)
    }

    #[test]
    fn a_load_streams_the_archive_and_says_which_side_failed() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than a pipe and the writer's buffer together.
        let (store, item) = store_with_image(dir.path(), 3 << 20);
        let items = [item];
        let mut expected = Vec::new();
        archive::save_tar(
            &store,
            &items,
            Format::Docker,
            &mut expected,
            Path::new("x"),
        )
        .unwrap();

        // The daemon reads the whole archive, as a file would hold it.
        let whole = Reading {
            take: None,
            answer: Ok(()),
            read: Default::default(),
        };
        load_into_docker(&store, &items, Some(&whole)).unwrap();
        assert!(*whole.read.lock().unwrap() == expected);

        // The daemon refuses after a few bytes: its answer, not the pipe
        // the writer then found closed.
        let refusing = Reading {
            take: Some(1000),
            answer: Err("the daemon refused it".into()),
            read: Default::default(),
        };
        match load_into_docker(&store, &items, Some(&refusing)) {
            Err(ExportError::Load(said)) => assert_eq!(said, "the daemon refused it"),
            other => panic!("{other:?}"),
        }

        // The writer fails (a layer gone from the store): its error, and
        // the daemon's read of the stream fails instead of ending, so the
        // upload is never finished (the tar writer, dropped, ends the
        // archive it gave up on as if whole).
        let layer = items[0].images[0].manifest.layers[0].digest.clone();
        std::fs::remove_file(store.blob_path(&layer)).unwrap();
        let taking = Reading {
            take: None,
            answer: Ok(()),
            read: Default::default(),
        };
        match load_into_docker(&store, &items, Some(&taking)) {
            Err(ExportError::Store { source, .. }) => {
                assert!(source.to_string().contains(layer.hex()), "{source}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            taking.read.lock().unwrap().is_empty(),
            "the daemon read a whole archive"
        );
    }

    fn format_of(spec: &str) -> ImageFormat {
        Output::parse_with_format(spec).unwrap().1
    }

    #[test]
    fn outputs_annotations_and_rewrite_timestamp_agree_and_a_flag_sets_its_key_over_theirs() {
        let a = format_of("type=oci,dest=a,annotation.k=1,annotation-manifest.j=2");
        let same = format_of("type=docker,dest=b,annotation.j=2,annotation.k=1");
        let none = format_of("type=image,name=c");
        let flags = ImageFormat {
            annotations: Annotation::parse("k=flag").unwrap(),
            ..ImageFormat::default()
        };
        let outputs = [(a.clone(), "A"), (same.clone(), "B")];
        let settled = ImageFormat::settle(&flags, &outputs).unwrap();
        let mut got: Vec<(String, String)> = settled
            .annotations
            .iter()
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect();
        got.sort();
        assert_eq!(got, [("j".into(), "2".into()), ("k".into(), "flag".into())]);

        // An image output that gives none has none, as BuildKit's.
        let err = ImageFormat::settle(&flags, &[(a.clone(), "A"), (none, "C")]).unwrap_err();
        assert!(
            err.starts_with("--output C says no annotation, --output A says "),
            "{err}"
        );
        let other = format_of("type=docker,dest=b,annotation.k=2");
        let err =
            ImageFormat::settle(&ImageFormat::default(), &[(a, "A"), (other, "B")]).unwrap_err();
        assert!(
            err.starts_with(
                "--output B says annotation-manifest.k=2, --output A says \
                 annotation-manifest.j=2,annotation-manifest.k=1"
            ),
            "{err}"
        );
        // rewrite-timestamp= as Go's ParseBool reads it; outputs agree.
        let rewrites = format_of("type=oci,dest=a,rewrite-timestamp=1");
        assert_eq!(rewrites.rewrite_timestamp, Some(true));
        let settled = ImageFormat::settle(&ImageFormat::default(), &[(rewrites.clone(), "A")]);
        assert!(settled.unwrap().rewrite_timestamp);
        for keeps in ["type=image,rewrite-timestamp=false", "type=image"] {
            let keeps = format_of(keeps);
            let both = [(rewrites.clone(), "A"), (keeps, "B")];
            let err = ImageFormat::settle(&ImageFormat::default(), &both).unwrap_err();
            assert!(err.contains("B says rewrite-timestamp=false"), "{err}");
        }
        // force-compression= as BuildKit reads it (empty is true); an
        // output that says none takes another's, as with compression=.
        for (spec, wanted) in [
            ("type=oci,dest=a,force-compression=", true),
            ("type=oci,dest=a,force-compression=true", true),
            ("type=oci,dest=a,force-compression=0", false),
        ] {
            let forced = [(format_of(spec), "A"), (format_of("type=image"), "B")];
            let settled = ImageFormat::settle(&ImageFormat::default(), &forced).unwrap();
            assert_eq!(settled.layer_form.force, wanted, "{spec}");
        }
        let both = [
            (format_of("type=oci,dest=a,force-compression=true"), "A"),
            (format_of("type=image,force-compression=false"), "B"),
        ];
        let err = ImageFormat::settle(&ImageFormat::default(), &both).unwrap_err();
        assert!(err.contains("B says force-compression=false"), "{err}");
        assert!(Output::parse_with_format("type=oci,dest=a,force-compression=yes").is_err());
        assert!(Output::parse_with_format("type=oci,dest=a,rewrite-timestamp=").is_err());
        assert!(Output::parse_with_format("type=tar,dest=a,rewrite-timestamp=true").is_err());
        // Keys are lower-cased, as buildx reads an output's attributes.
        let upper = format_of("type=oci,dest=a,Annotation.Org.Example=V");
        assert_eq!(upper.annotations[0].key, "org.example");
        assert_eq!(upper.annotations[0].value, "V");
        // Values as given, as buildx reads them (a key is trimmed).
        let spaced = format_of("type=oci,dest=a, annotation.k= v ");
        assert_eq!(spaced.annotations[0].value, " v ");
        assert!(Output::parse_with_format("type= oci,dest=a").is_err());
        // Not an image output: an unknown attribute.
        assert!(Output::parse_with_format("type=local,dest=d,annotation.k=v").is_err());
        let err = Output::parse_with_format("type=oci,dest=a,annotation-layer.k=v").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--output type=oci,dest=a,annotation-layer.k=v: annotation-layer.k=v: unrecognized \
             annotation type layer"
        );
    }

    #[test]
    fn oci_artifact_defaults_per_output_to_what_the_media_types_allow() {
        let settle = |specs: &[&str], flags: &ImageFormat| {
            let formats: Vec<(ImageFormat, &str)> =
                specs.iter().map(|spec| (format_of(spec), *spec)).collect();
            ImageFormat::settle(flags, &formats).map(|s| s.oci_artifact)
        };
        let none = ImageFormat::default();
        assert_eq!(settle(&["type=image,name=a"], &none), Ok(true));
        let docker = ImageFormat {
            oci_media_types: Some(false),
            ..ImageFormat::default()
        };
        assert_eq!(settle(&["type=image,name=a"], &docker), Ok(false));
        assert_eq!(
            settle(&["type=image,name=a,oci-artifact=false"], &none),
            Ok(false)
        );
        // One output's false is not another's default (true), as each of
        // BuildKit's exporters has its own.
        let err = settle(
            &["type=image,name=a,oci-artifact=false", "type=oci,dest=o"],
            &none,
        )
        .unwrap_err();
        assert!(
            err.contains("oci-artifact=true") && err.contains("oci-artifact=false"),
            "{err}"
        );
        let err = settle(&["type=image,name=a,oci-artifact=true"], &docker).unwrap_err();
        assert!(
            err.contains("conflicts with \"oci-mediatypes=false\""),
            "{err}"
        );
    }

    #[test]
    fn image_outputs_read_their_push_attributes_and_name_what_each_kind_takes() {
        let image = |spec: &str| Output::parse(spec).map_err(|e| e.to_string());
        let Ok(Output::Image { push, options, .. }) =
            image("type=image,name=r/a,push=true,push-by-digest=,registry.insecure=1")
        else {
            panic!()
        };
        assert!(push && options.by_digest && options.insecure);
        let Ok(Output::Image { options, .. }) = image("type=registry,name=r/a") else {
            panic!()
        };
        assert_eq!(options, ImageOptions::default());
        let spec = "type=image,\"name=r:5000/a, r/b:1\",push-by-digest=true,push=true";
        assert_eq!(given_names(spec), ["r:5000/a", "r/b:1"]);
        // A registry's port is no tag.
        assert!(check_untagged("r:5000/a").is_ok());
        let err = check_untagged("r/b:1").unwrap_err();
        assert!(
            err.contains("can't push tagged ref r/b:1 by digest"),
            "{err}"
        );
        let err = image("type=image,name=r/a,dangling-name-prefix=d").unwrap_err();
        assert!(
            err.ends_with(
                "dangling-name-prefix= is not an option of type=image (kiln's type=image takes \
                 name=, push=, push-by-digest=, registry.insecure=, name-canonical=, unpack=, \
                 store=, compression=, compression-level=, \
                 force-compression=, oci-mediatypes=, oci-artifact=, rewrite-timestamp=, \
                 annotation.*=, source-date-epoch=)"
            ),
            "{err}"
        );
        let err = image("type=local,dest=d,push=true").unwrap_err();
        assert!(
            err.ends_with("(kiln's type=local takes dest=, source-date-epoch=)"),
            "{err}"
        );
        // Every kind takes source-date-epoch; outputs give one or none.
        let (_, local) =
            Output::parse_with_format("type=local,dest=d,source-date-epoch=5").unwrap();
        let (_, image) =
            Output::parse_with_format("type=image,name=a,source-date-epoch=5").unwrap();
        let (_, unset) = Output::parse_with_format("type=tar,dest=t,source-date-epoch=").unwrap();
        assert_eq!(local.source_date_epoch, Some(5));
        assert_eq!(
            settle_epoch(&[(local.clone(), "L"), (image, "I")]),
            Ok(Some(5))
        );
        let err = settle_epoch(&[(local, "L"), (unset, "T")]).unwrap_err();
        assert!(
            err.starts_with(
                "--output T says no source-date-epoch, --output L says source-date-epoch=5"
            ),
            "{err}"
        );
        assert!(Output::parse("type=local,dest=d,source-date-epoch=soon").is_err());
    }
}
