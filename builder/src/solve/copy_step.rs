//! COPY and ADD: sources (the context, a stage, an image, a URL, a Git
//! repository, heredocs) copied into the step's upper dir; and WORKDIR's
//! directory, made as BuildKit's file op makes it.

use std::path::Path;

use crate::copy::{self, CopyOptions};
use crate::modes::Chmod;
use crate::plan::{CopyFrom, CopyStep, WorkdirStep};
use crate::rootfs::{DirTree, LayeredRootfs, SourceTree};
use crate::users::ChownSpec;

use super::*;

/// Where a COPY or ADD writes, and the options every source shares.
struct Target<'a> {
    rootfs: &'a LayeredRootfs,
    dest: &'a str,
    chown: Option<crate::users::Owner>,
    chmod: Option<Chmod>,
}

impl Target<'_> {
    /// `base` with the target's owner and mode.
    fn options(&self, mut base: CopyOptions) -> CopyOptions {
        base.chown = self.chown;
        base.chmod = self.chmod.clone();
        base
    }

    /// Copies `path` of `source` to the destination.
    fn copy(
        &self,
        run: &StepRun<'_>,
        source: &dyn SourceTree,
        path: &str,
        options: &CopyOptions,
    ) -> Result<(), SolveError> {
        copy::copy(source, path, self.rootfs, self.dest, options)
            .map(|_| ())
            .map_err(|e| run.error(e.to_string()))
    }
}

/// Runs a COPY or ADD step into `rootfs`, with its work files in `dir`.
pub(super) fn execute_copy(
    run: &StepRun<'_>,
    c: &CopyStep,
    rootfs: &LayeredRootfs,
    dir: &Path,
    reuse: Option<&(
        kiln_layers::Digest,
        std::sync::Arc<crate::copy_reuse::Reuse>,
    )>,
) -> Result<(), SolveError> {
    let chown = match &c.chown {
        Some(spec) => Some(owner(run, spec, rootfs, &format!("--chown={spec}"))?),
        None => None,
    };
    // COPY --link copies onto an empty directory, as BuildKit does: the
    // layer stands alone, so nothing of the base (a symlink on the
    // destination path, say) is seen or followed; the plan refused
    // --chown by name there. (With --chmod, the plan made it a plain copy,
    // as BuildKit's frontend does.)
    let linked;
    let rootfs: &LayeredRootfs = if c.link {
        linked = LayeredRootfs::new(rootfs.upper(), Vec::new());
        &linked
    } else {
        rootfs
    };
    let chmod = match &c.chmod {
        Some(text) => Some(Chmod::parse(text).map_err(|e| run.error(e.to_string()))?),
        None => None,
    };
    let target = Target {
        rootfs,
        dest: &c.dest,
        chown,
        chmod,
    };
    let empty_upper = dir.join("source-upper");
    std::fs::create_dir_all(&empty_upper).map_err(io_err(&empty_upper))?;
    let stage_tree;
    let source: &dyn SourceTree = match &c.from {
        CopyFrom::Context => run.build.context,
        CopyFrom::NamedContext { name, .. } => named_tree(run, name)?,
        CopyFrom::Stage(i) => {
            let output = run.deps.get(i).ok_or(SolveError::StageMissing(*i))?;
            super::lazy::materialize(run.build, output)?;
            stage_tree = LayeredRootfs::new(&empty_upper, output.lowers_top_first());
            &stage_tree
        }
        CopyFrom::Image(reference) => {
            // The manifest the plan resolved for the build's target platform.
            let build = run.build;
            let image = build.resolver.resolved(reference, c.from_digest.as_ref())?;
            let snapshots = super::lazy::image_snapshots(build, &image)?;
            stage_tree = LayeredRootfs::new(&empty_upper, snapshots.into_iter().rev().collect());
            &stage_tree
        }
    };
    for (n, src) in c.sources.iter().enumerate() {
        let git = match (c.is_add, &c.from) {
            (true, CopyFrom::Context) => {
                crate::git::parse_git_source(src).map_err(|e| run.error(e.to_string()))?
            }
            _ => None,
        };
        if let Some(mut git) = git {
            // ADD leaves the checkout's times, as BuildKit's (the planner
            // warned of a `mtime=commit` here).
            git.mtime_commit = false;
            copy_git(run, c, n, git, &target, &dir.join(format!("git-{n}")))?;
        } else if src.starts_with("http://") || src.starts_with("https://") {
            copy_url(run, c, src, &target)?;
        } else {
            let mut o = target.options(CopyOptions::dockerfile_copy(c.is_add));
            o.attempt_unpack = c.is_add && c.unpack.unwrap_or(true);
            o.exclude_patterns = c.exclude.clone();
            o.reuse = reuse.map(|(_, r)| r.clone());
            let copied = if c.parents {
                copy::copy_parents(source, src, rootfs, &c.dest, &o).map(|_| ())
            } else {
                copy::copy(source, src, rootfs, &c.dest, &o).map(|_| ())
            };
            copied.map_err(|e| run.error(e.to_string()))?;
        }
    }
    for (n, doc) in c.inline.iter().enumerate() {
        let doc_dir = dir.join(format!("heredoc-{n}"));
        std::fs::create_dir_all(&doc_dir).map_err(io_err(&doc_dir))?;
        copy::write_heredoc(&doc_dir, &doc.name, &doc.data)
            .map_err(|e| run.error(e.to_string()))?;
        let o = target.options(CopyOptions::single_file());
        target.copy(run, &DirTree::new(&doc_dir), &doc.name, &o)?;
    }
    Ok(())
}

/// The owner `spec` names in `rootfs`; a name it lacks is root, as in
/// BuildKit, and a warning of the step (`what` says where the name was
/// given).
fn owner(
    run: &StepRun<'_>,
    spec: &str,
    rootfs: &LayeredRootfs,
    what: &str,
) -> Result<crate::users::Owner, SolveError> {
    let resolved = ChownSpec::parse(spec)
        .resolve(rootfs)
        .map_err(|e| run.error(format!("{what}: {e}")))?;
    if let Some(warning) = resolved.warning() {
        run.warn(format!("{what}: {warning}"));
    }
    Ok(resolved.owner)
}

/// WORKDIR: the directory and its missing parents, 0755, owned by the
/// stage's USER when it has one (BuildKit's mkdir with `WithUser`).
pub(super) fn execute_workdir(
    run: &StepRun<'_>,
    w: &WorkdirStep,
    rootfs: &LayeredRootfs,
) -> Result<(), SolveError> {
    let owner = match &w.user {
        Some(user) => Some(owner(run, user, rootfs, &format!("USER {user}"))?),
        None => None,
    };
    copy::mkdir_all(rootfs, &w.path, 0o755, owner, None).map_err(|e| run.error(e.to_string()))?;
    Ok(())
}

/// The files of the named context `name`.
pub(super) fn named_tree<'a>(
    run: &StepRun<'a>,
    name: &str,
) -> Result<&'a crate::context::BuildContext, SolveError> {
    run.build
        .opts
        .named_contexts
        .and_then(|named| named.tree(name))
        .ok_or_else(|| run.error(format!("named context {name} was not prepared")))
}

/// ADD of a Git repository: BuildKit copies the checkout's root (or
/// subdir) like a directory source, its contents into the destination,
/// never unpacked. The commit is the one the cache key was computed on.
fn copy_git(
    run: &StepRun<'_>,
    c: &CopyStep,
    index: usize,
    git: crate::git::GitSource,
    target: &Target<'_>,
    work: &Path,
) -> Result<(), SolveError> {
    let git = git.with_checksum_flag(c.checksum.as_deref());
    let tree = crate::git::fetch_tree(&git, c.git_commits.get(&index), c.keep_git_dir, work)
        .map_err(|e| run.error(e.to_string()))?;
    let mut o = target.options(CopyOptions::dockerfile_copy(false));
    o.allow_wildcard = false;
    o.exclude_patterns = c.exclude.clone();
    target.copy(run, &DirTree::new(&tree), "", &o)
}

/// ADD of a URL: copied from the build's download (the one its cache key
/// was computed on, if it has no --checksum), read only, so a second ADD
/// of the same URL copies the same file.
fn copy_url(
    run: &StepRun<'_>,
    c: &CopyStep,
    url: &str,
    target: &Target<'_>,
) -> Result<(), SolveError> {
    if !c.is_add {
        return Err(run.error("source can't be a URL for COPY".into()));
    }
    let downloads = run
        .build
        .opts
        .downloads
        .ok_or_else(|| run.error(format!("{url}: no URL fetcher configured")))?;
    let downloaded = downloads.get(url).map_err(|e| run.error(e.to_string()))?;
    if let Some(checksum) = &c.checksum {
        downloaded
            .verify(checksum)
            .map_err(|e| run.error(e.to_string()))?;
    }
    let mut o = target.options(CopyOptions::single_file());
    o.attempt_unpack = c.unpack.unwrap_or(false);
    target.copy(run, &DirTree::new(&downloaded.dir), &downloaded.name, &o)
}
