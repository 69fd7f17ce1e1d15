//! Bringing a remote source into a directory of the store's scratch: a Git
//! repository checked out (through [`crate::git`], ADD's own Git support),
//! a URL downloaded (through the caller's [`UrlFetcher`], the one ADD's
//! URLs use), standard input spooled. A download that is an archive (the
//! test ADD applies: [`crate::archive::is_archive`]) is extracted by the
//! one tar extractor, as BuildKit's `AttemptUnpack` copy does.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use kiln_reference::redact_credentials as redact;

use crate::copy::UrlFetcher;
use crate::git::{GitSource, ResolvedCommit};
use crate::rootfs::LayeredRootfs;

use super::ContextSourceError;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContextSourceError + '_ {
    move |source| ContextSourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A Git checkout: the directory (the subdir when the URL names one) and
/// the commit.
pub(crate) struct Checkout {
    pub dir: PathBuf,
    pub commit: ResolvedCommit,
}

/// Resolves the source's ref and checks it out into `work`, keeping `.git`
/// when the URL or `keep_git_dir` says so; `mtime_commit` gives every file
/// the commit's time (BuildKit does so for the main context when
/// SOURCE_DATE_EPOCH is set).
pub(crate) fn checkout(
    source: &GitSource,
    keep_git_dir: bool,
    mtime_commit: bool,
    work: &Path,
) -> Result<Checkout, ContextSourceError> {
    let mut source = source.clone();
    source.mtime_commit |= mtime_commit;
    let commit = crate::git::resolve_commit(&source)?;
    let keep = source.keep_git_dir.unwrap_or(false) || keep_git_dir;
    let dir = crate::git::checkout(&source, &commit, keep, work)?;
    Ok(Checkout { dir, commit })
}

/// Downloads `url` into the file `path`.
pub(crate) fn download(
    fetcher: &(dyn UrlFetcher + Sync),
    url: &str,
    path: &Path,
) -> Result<(), ContextSourceError> {
    let file = File::create(path).map_err(io_err(path))?;
    let mut out = BufWriter::new(file);
    fetcher
        .fetch(url, &mut out)
        .map_err(|message| ContextSourceError::Fetch {
            url: redact(url),
            message: redact(&message),
        })?;
    out.flush().map_err(io_err(path))?;
    Ok(())
}

/// Copies `input` (standard input) into the file `path`.
pub(crate) fn spool(input: &mut dyn Read, path: &Path) -> Result<(), ContextSourceError> {
    let file = File::create(path).map_err(io_err(path))?;
    let mut out = BufWriter::new(file);
    std::io::copy(input, &mut out).map_err(|source| ContextSourceError::Io {
        path: PathBuf::from("standard input"),
        source,
    })?;
    out.flush().map_err(io_err(path))?;
    Ok(())
}

/// Extracts the archive `file` into the new directory `dir` (owners from
/// the archive, nothing outside `dir`); `label` names it in errors.
pub(crate) fn extract(file: &Path, dir: &Path, label: &str) -> Result<(), ContextSourceError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tree = LayeredRootfs::new(dir, Vec::new());
    crate::archive::unpack(file, &tree, "", None).map_err(|e| ContextSourceError::Extract {
        source_name: redact(label),
        message: redact(&e.to_string()),
    })
}
