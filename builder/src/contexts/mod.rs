//! Where a build's files come from when they are not (only) a local
//! directory, as buildx and BuildKit's `dockerui` take them.
//!
//! The main context ([`ContextSpec`], `kiln build CONTEXT`):
//!
//! - `-`: standard input. An archive (tar, or gzip/bzip2/xz/zstd tar) is
//!   the context; anything else is the Dockerfile, with an empty context
//!   (`kiln build - < Dockerfile`). `-f -` then is an error (stdin cannot
//!   be both), as is `-f` with a Dockerfile on stdin.
//! - a local directory;
//! - a Git URL (`https://…/repo.git`, `git://…`, `ssh://…`, `git@host:…`,
//!   and the deprecated `github.com/owner/repo`), with BuildKit's fragment
//!   `#ref[:subdir]` and query (`?ref=&subdir=&tag=&branch=&checksum=…`,
//!   [`crate::git`]): the ref's commit checked out, scoped to the subdir.
//!   `BUILDKIT_CONTEXT_KEEP_GIT_DIR=1` keeps `.git`; with
//!   SOURCE_DATE_EPOCH set, files get the commit's time (as BuildKit).
//! - an `http(s)://` URL: an archive is extracted and is the context;
//!   anything else is the Dockerfile (BuildKit's `DetectHTTPContext`), in a
//!   context holding only that file, named `context`.
//!
//! The Dockerfile of a remote context is read from within it (`-f` a path
//! inside the context, default `Dockerfile`), unless `-f -` (standard
//! input) or an absolute `-f` names a local file (buildx's rules).
//!
//! Remote sources are fetched into a scratch directory of the store
//! (under `builds/`, removed when the build ends, or by the next build if
//! this one is killed). Every URL in a message, progress line or file is
//! masked ([`kiln_reference::redact_credentials`]).
//!
//! Named contexts (`--build-context`) are [`named`]'s.
//!

mod fetch;
pub mod named;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_layers::cleanup::ScratchDir;
use kiln_layers::Store;
use kiln_reference::redact_credentials as redact;

use crate::copy::UrlFetcher;
use crate::git::GitSource;
use crate::session::DockerfileInput;
use crate::solve::BuildEvents;

pub use named::{NamedContext, NamedContextSpec, NamedContexts};

/// The names a Dockerfile is looked for under when `-f` gives none, in
/// order: docker's `Dockerfile`, its lowercase fallback, and buildah's and
/// podman's `Containerfile`.
pub const DOCKERFILE_NAMES: [&str; 3] = ["Dockerfile", "dockerfile", "Containerfile"];

/// Why a context could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ContextSourceError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("extracting {source_name}: {message}")]
    Extract {
        source_name: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] kiln_layers::Error),
    #[error(transparent)]
    Context(#[from] crate::context::ContextError),
    #[error(transparent)]
    Ignore(#[from] crate::dockerignore::IgnoreError),
}

/// What `kiln build CONTEXT` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSpec {
    /// `-`: standard input.
    Stdin,
    /// A local directory.
    Dir(PathBuf),
    /// A Git repository: the URL as given, and as parsed.
    Git { url: String, source: GitSource },
    /// An `http(s)://` URL that is no Git repository.
    Url(String),
}

impl ContextSpec {
    /// buildx's order: `-`, an existing local directory, a remote URL
    /// (Git, else HTTP); anything else is an error naming the path.
    pub fn parse(arg: &str) -> Result<ContextSpec, ContextSourceError> {
        if arg == "-" {
            return Ok(ContextSpec::Stdin);
        }
        if Path::new(arg).is_dir() {
            return Ok(ContextSpec::Dir(PathBuf::from(arg)));
        }
        if let Some(source) = git_context(arg)? {
            return Ok(ContextSpec::Git {
                url: arg.to_string(),
                source,
            });
        }
        if arg.starts_with("http://") || arg.starts_with("https://") {
            return Ok(ContextSpec::Url(arg.to_string()));
        }
        Err(ContextSourceError::Invalid(format!(
            "unable to prepare context: path {:?} not found",
            redact(arg)
        )))
    }

    /// How progress and errors name it (credentials masked).
    pub fn shown(&self) -> String {
        match self {
            ContextSpec::Stdin => "-".into(),
            ContextSpec::Dir(dir) => dir.display().to_string(),
            ContextSpec::Git { url, .. } | ContextSpec::Url(url) => redact(url),
        }
    }
}

/// A build context as a Git repository: what [`crate::git`] takes for ADD,
/// and (for contexts only, deprecated in BuildKit) `github.com/owner/repo`
/// read as `https://github.com/owner/repo`.
pub(crate) fn git_context(arg: &str) -> Result<Option<GitSource>, ContextSourceError> {
    if arg.starts_with("github.com/") {
        return Ok(crate::git::parse_git_source(&format!("https://{arg}"))?
            .or(crate::git::parse_git_source(&format!("https://{arg}.git"))?));
    }
    Ok(crate::git::parse_git_source(arg)?)
}

/// How a remote context is fetched.
pub struct PrepareOptions<'a> {
    pub store: &'a Store,
    /// Downloads `http(s)://` contexts (the fetcher ADD uses).
    pub fetcher: &'a (dyn UrlFetcher + Sync),
    pub events: &'a dyn BuildEvents,
    /// `BUILDKIT_CONTEXT_KEEP_GIT_DIR`: keep a Git context's `.git`.
    pub keep_git_dir: bool,
    /// SOURCE_DATE_EPOCH is set: a Git context's files get the commit's
    /// time.
    pub mtime_commit: bool,
    /// `-f`, as given.
    pub file: Option<&'a Path>,
}

/// A context ready to be loaded: its directory and its Dockerfile.
#[derive(Debug)]
pub struct PreparedContext {
    /// The directory the build reads (for a remote context, in the store's
    /// scratch).
    pub dir: PathBuf,
    pub dockerfile: DockerfileInput,
    /// The remote source, masked (`-` for standard input); None for a
    /// local directory.
    pub origin: Option<String>,
    /// A Git context's commit.
    pub git_commit: Option<String>,
    /// Holds a remote context's files until the build is over.
    _scratch: Option<ScratchDir>,
}

/// Fetches `spec` (reading standard input from `stdin`) and reads its
/// Dockerfile as the module docs say.
pub fn prepare(
    spec: &ContextSpec,
    stdin: &mut dyn Read,
    opts: &PrepareOptions<'_>,
) -> Result<PreparedContext, ContextSourceError> {
    let stdin_file = opts.file.is_some_and(|f| f.as_os_str() == "-");
    match spec {
        ContextSpec::Dir(dir) => {
            let dockerfile = match opts.file {
                Some(file) => read_local_dockerfile(file, stdin)?,
                None => default_dockerfile(dir, dir)?,
            };
            Ok(PreparedContext {
                dir: dir.clone(),
                dockerfile,
                origin: None,
                git_commit: None,
                _scratch: None,
            })
        }
        ContextSpec::Stdin if stdin_file => Err(ContextSourceError::Invalid(
            "invalid argument: can't use stdin for both build context and dockerfile".into(),
        )),
        _ => prepare_remote(spec, stdin, opts),
    }
}

/// A remote context fetched into scratch, and its Dockerfile.
fn prepare_remote(
    spec: &ContextSpec,
    stdin: &mut dyn Read,
    opts: &PrepareOptions<'_>,
) -> Result<PreparedContext, ContextSourceError> {
    let started = Instant::now();
    let scratch = opts.store.scratch_dir("context")?;
    let work = scratch.path();
    let fetched = match spec {
        ContextSpec::Git { source, url } => {
            let checkout = fetch::checkout(
                source,
                opts.keep_git_dir,
                opts.mtime_commit,
                &work.join("git"),
            )?;
            opts.events.internal(
                &format!("[internal] load git source {}", redact(url)),
                &[format!("checked out {}", checkout.commit.commit)],
                started.elapsed().as_secs_f64(),
            );
            Fetched {
                dir: checkout.dir,
                own_dockerfile: None,
                commit: Some(checkout.commit.commit),
            }
        }
        ContextSpec::Url(url) => {
            let file = work.join("context");
            fetch::download(opts.fetcher, url, &file)?;
            let fetched = unpack_or_dockerfile(&file, work, url)?;
            opts.events.internal(
                "[internal] load remote build context",
                &[format!("{} done", redact(url))],
                started.elapsed().as_secs_f64(),
            );
            fetched
        }
        ContextSpec::Stdin => {
            let file = work.join("stdin");
            fetch::spool(stdin, &file)?;
            let mut fetched = unpack_or_dockerfile(&file, work, "standard input")?;
            if fetched.own_dockerfile.is_some() {
                if opts.file.is_some() {
                    return Err(ContextSourceError::Invalid(
                        "ambiguous Dockerfile source: both stdin and flag correspond to Dockerfiles"
                            .into(),
                    ));
                }
                // `docker build - < Dockerfile`: no context at all.
                fetched.dir = work.join("empty");
                std::fs::create_dir_all(&fetched.dir).map_err(|source| ContextSourceError::Io {
                    path: fetched.dir.clone(),
                    source,
                })?;
            }
            fetched
        }
        ContextSpec::Dir(_) => {
            return Err(ContextSourceError::Invalid(
                "a local directory is no remote context".into(),
            ))
        }
    };
    let dockerfile = match (fetched.own_dockerfile, opts.file) {
        (Some(path), _) => read_dockerfile_file(&path, "Dockerfile")?,
        (None, Some(file)) if file.as_os_str() == "-" || file.is_absolute() => {
            read_local_dockerfile(file, stdin)?
        }
        (None, Some(file)) => dockerfile_in(&fetched.dir, file)?,
        (None, None) => default_dockerfile(&fetched.dir, Path::new(&spec.shown()))?,
    };
    Ok(PreparedContext {
        dir: fetched.dir,
        dockerfile,
        origin: Some(spec.shown()),
        git_commit: fetched.commit,
        _scratch: Some(scratch),
    })
}

/// A fetched remote context.
struct Fetched {
    dir: PathBuf,
    /// The fetched file when it is the Dockerfile rather than an archive.
    own_dockerfile: Option<PathBuf>,
    commit: Option<String>,
}

/// A downloaded (or spooled) `file`: an archive is extracted into
/// `work/tree`, which is the context; anything else is the Dockerfile, in
/// a context holding only it, named `context` (as BuildKit's HTTP source
/// names it).
fn unpack_or_dockerfile(
    file: &Path,
    work: &Path,
    label: &str,
) -> Result<Fetched, ContextSourceError> {
    if crate::archive::is_archive(file) {
        let tree = work.join("tree");
        fetch::extract(file, &tree, label)?;
        return Ok(Fetched {
            dir: tree,
            own_dockerfile: None,
            commit: None,
        });
    }
    let dir = work.join("file");
    std::fs::create_dir_all(&dir).map_err(|source| ContextSourceError::Io {
        path: dir.clone(),
        source,
    })?;
    let inside = dir.join("context");
    std::fs::rename(file, &inside).map_err(|source| ContextSourceError::Io {
        path: inside.clone(),
        source,
    })?;
    Ok(Fetched {
        dir,
        own_dockerfile: Some(inside),
        commit: None,
    })
}

/// `-f FILE` of the local filesystem (relative to the working directory,
/// as the docker CLI resolves it), or `-f -`: standard input.
fn read_local_dockerfile(
    file: &Path,
    stdin: &mut dyn Read,
) -> Result<DockerfileInput, ContextSourceError> {
    if file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        stdin
            .read_to_end(&mut bytes)
            .map_err(|source| ContextSourceError::Io {
                path: PathBuf::from("standard input"),
                source,
            })?;
        return Ok(DockerfileInput {
            bytes,
            name: "-".into(),
            path: None,
        });
    }
    let shown = file.strip_prefix(".").unwrap_or(file);
    read_dockerfile_file(file, &shown.display().to_string())
}

fn read_dockerfile_file(path: &Path, name: &str) -> Result<DockerfileInput, ContextSourceError> {
    let bytes = std::fs::read(path).map_err(|source| ContextSourceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(DockerfileInput {
        bytes,
        name: name.to_string(),
        path: Some(path.to_path_buf()),
    })
}

/// The first of [`DOCKERFILE_NAMES`] in `dir`; `shown` names the context
/// in the error.
fn default_dockerfile(dir: &Path, shown: &Path) -> Result<DockerfileInput, ContextSourceError> {
    for name in DOCKERFILE_NAMES {
        let path = dir.join(name);
        if path.is_file() {
            let shown_path = path
                .strip_prefix(".")
                .unwrap_or(&path)
                .display()
                .to_string();
            let shown_name = if dir == shown {
                shown_path
            } else {
                name.to_string()
            };
            return read_dockerfile_file(&path, &shown_name);
        }
    }
    Err(ContextSourceError::Invalid(format!(
        "no Dockerfile (or Containerfile) in {}: give one with -f",
        shown.display()
    )))
}

/// `-f FILE` inside a fetched context: resolved in it as a chroot would
/// (a symlink cannot lead out of it).
fn dockerfile_in(dir: &Path, file: &Path) -> Result<DockerfileInput, ContextSourceError> {
    let rel = file.to_string_lossy();
    let tree = crate::rootfs::DirTree::new(dir);
    let inside = crate::rootfs::resolve(&tree, &crate::rootfs::clean_rel(&rel), true)
        .map_err(|e| ContextSourceError::Invalid(format!("-f {rel}: {e}")))?;
    read_dockerfile_file(&dir.join(inside), &rel)
}
