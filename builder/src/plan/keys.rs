//! Cache keys: a content-addressed digest per step, over its parent's key
//! (or the base's identity), the step as planned, and the content it reads
//! (the context's files, a source stage's key, a URL's or a Git ref's
//! content).

use std::collections::BTreeMap;

use kiln_layers::oci::ImageConfig;
use kiln_layers::Digest;
use sha2::{Digest as _, Sha256};

use super::{BaseSource, CopyFrom, Plan, PlanError, PlanErrorKind, StepKind};
use crate::context::BuildContext;
use crate::copy::{resolve_wildcards, UrlDownloads};
use crate::rootfs::resolve;

/// Computes each needed step's cache key: a digest over the parent's key
/// (or the base's identity), the expanded instruction, the environment
/// and args reaching it, and for COPY/ADD the content selected in the
/// context (or the source stage's key). An ADD URL is keyed by the URL and
/// its `--checksum` only: without one, use [`compute_cache_keys_fetching`].
/// An ADD of a Git repository is keyed by the commit its ref names now
/// (`git ls-remote`, see [`crate::git`]); the commit is kept in the step
/// for the solver to check out.
pub fn compute_cache_keys(
    plan: &mut Plan,
    context: Option<&BuildContext>,
) -> Result<(), PlanError> {
    compute_cache_keys_fetching(plan, context, None)
}

/// [`compute_cache_keys`], with an ADD URL that has no `--checksum` keyed
/// on its content as `downloads` has it now (the content digest and
/// Last-Modified), as BuildKit keys on content: a changed file at the same
/// URL misses the cache. The download stays in `downloads` for the solver
/// ([`crate::solve::SolveOptions::downloads`]), so a build fetches each URL
/// once.
pub fn compute_cache_keys_fetching(
    plan: &mut Plan,
    context: Option<&BuildContext>,
    downloads: Option<&UrlDownloads<'_>>,
) -> Result<(), PlanError> {
    let mut git_commits: BTreeMap<String, crate::git::ResolvedCommit> = BTreeMap::new();
    let mut finals: BTreeMap<usize, String> = BTreeMap::new();
    let order = plan.order.clone();
    for &index in &order {
        let base_key = {
            let sp = &plan.stages[index];
            match &sp.base {
                BaseSource::Scratch => format!("scratch/{}", plan_platform(&sp.image)),
                BaseSource::Image { reference, digest } => {
                    format!(
                        "image/{}/{}",
                        digest
                            .as_ref()
                            .map_or(reference.shown.as_str(), Digest::as_str),
                        plan_platform(&sp.image)
                    )
                }
                BaseSource::Stage(i) => finals.get(i).cloned().unwrap_or_default(),
            }
        };
        let mut parent = base_key;
        let steps_len = plan.stages[index].steps.len();
        for n in 0..steps_len {
            let step = plan.stages[index].steps[n].clone();
            let mut h = Sha256::new();
            h.update(b"kiln-step-v1\0");
            h.update(parent.as_bytes());
            h.update(b"\0");
            let body = serde_json::to_string(&step.kind)
                .map_err(|e| PlanError::at(step.line, PlanErrorKind::CacheKey(e.to_string())))?;
            h.update(body.as_bytes());
            h.update(b"\0");
            let mut resolved_git = BTreeMap::new();
            match &step.kind {
                StepKind::Copy(c) => match &c.from {
                    CopyFrom::Context => {
                        for (source_index, src) in c.sources.iter().enumerate() {
                            let git = match c.is_add {
                                true => crate::git::parse_git_source(src).map_err(|source| {
                                    PlanError::at(step.line, PlanErrorKind::Git(source))
                                })?,
                                false => None,
                            };
                            if let Some(git) = git {
                                let git = git.with_checksum_flag(c.checksum.as_deref());
                                // Keyed on the commit the ref names now (the
                                // URL, ref and subdir are in the body).
                                let resolved = match git_commits.get(src) {
                                    Some(r) => r.clone(),
                                    None => {
                                        let r =
                                            crate::git::resolve_commit(&git).map_err(|source| {
                                                PlanError::at(step.line, PlanErrorKind::Git(source))
                                            })?;
                                        git_commits.insert(src.clone(), r.clone());
                                        r
                                    }
                                };
                                h.update(format!("git:{}\0", resolved.commit).as_bytes());
                                resolved_git.insert(source_index, resolved);
                                continue;
                            }
                            if src.starts_with("http://") || src.starts_with("https://") {
                                h.update(format!("url:{src}\0").as_bytes());
                                if let (None, Some(downloads)) = (&c.checksum, downloads) {
                                    h.update(
                                        url_content_key(downloads, src, step.line)?.as_bytes(),
                                    );
                                }
                                continue;
                            }
                            h.update(context_selection(context, src, step.line)?.as_bytes());
                        }
                    }
                    CopyFrom::Stage(i) => {
                        h.update(finals.get(i).map(String::as_str).unwrap_or("").as_bytes());
                    }
                    CopyFrom::Image(r) => h.update(format!("image:{r}\0").as_bytes()),
                },
                StepKind::Run(r) => {
                    for i in r.mount_stages() {
                        h.update(finals.get(&i).map(String::as_str).unwrap_or("").as_bytes());
                    }
                }
                StepKind::Workdir(_) => {}
            }
            let key = Digest::from_hash(&h.finalize());
            if let StepKind::Copy(c) = &mut plan.stages[index].steps[n].kind {
                if !resolved_git.is_empty() {
                    c.git_commits = resolved_git;
                }
            }
            parent = key.to_string();
            plan.stages[index].steps[n].cache_key = Some(key);
        }
        finals.insert(index, parent);
    }
    Ok(())
}

/// What an ADD URL's cache key takes from the download: the content's
/// digest and the Last-Modified time (it becomes the file's mtime).
fn url_content_key(
    downloads: &UrlDownloads<'_>,
    url: &str,
    line: usize,
) -> Result<String, PlanError> {
    let downloaded = downloads.get(url).map_err(|e| {
        PlanError::at(
            line,
            PlanErrorKind::UrlFetch {
                url: url.to_string(),
                message: match e {
                    crate::copy::CopyError::Fetch { message, .. } => message,
                    other => other.to_string(),
                },
            },
        )
    })?;
    Ok(format!(
        "content:{}\0mtime:{:?}\0",
        downloaded.digest, downloaded.last_modified
    ))
}

fn plan_platform(image: &ImageConfig) -> String {
    format!("{}/{}", image.os, image.architecture)
}

/// What a COPY source selects in the context, as a digest string.
fn context_selection(
    context: Option<&BuildContext>,
    src: &str,
    line: usize,
) -> Result<String, PlanError> {
    let Some(ctx) = context else {
        return Ok(format!("unhashed:{src}\0"));
    };
    let matches = resolve_wildcards(ctx, src, true).map_err(|e| {
        PlanError::at(
            line,
            PlanErrorKind::CopySource {
                path: src.to_string(),
                message: e.to_string(),
            },
        )
    })?;
    let mut out = String::new();
    for m in matches {
        let followed = resolve(ctx, &m, true).map_err(|e| {
            PlanError::at(
                line,
                PlanErrorKind::CopySource {
                    path: src.to_string(),
                    message: e.to_string(),
                },
            )
        })?;
        let digest = ctx.tree_digest(&followed).ok_or_else(|| {
            PlanError::at(
                line,
                PlanErrorKind::CopySource {
                    path: src.to_string(),
                    message: format!("\"/{m}\": not found"),
                },
            )
        })?;
        out.push_str(&format!("{m}={digest}\0"));
    }
    Ok(out)
}
