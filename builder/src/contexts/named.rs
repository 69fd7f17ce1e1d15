//! Named contexts (`--build-context NAME=VALUE`), as buildx and BuildKit's
//! `dockerui` take them. VALUE is:
//!
//! - a local directory (its own `.dockerignore` applies);
//! - `docker-image://REF`: an image, pulled as a base image is
//!   (`docker-image://scratch`: nothing);
//! - a Git URL (`git://…`, `git@…`, `https://….git#ref:subdir`): the
//!   checkout;
//! - an `http(s)://` URL: as BuildKit's HTTP source, a directory holding
//!   the downloaded file, named `context` (not extracted);
//! - `oci-layout://…` is refused (not supported yet), as is bake's
//!   `target:`.
//!
//! The Dockerfile reaches one by name from `FROM NAME`, `COPY --from=NAME`
//! and `RUN --mount=from=NAME`; `FROM … AS NAME` is replaced by it whole
//! (its instructions are not run). Names compare as BuildKit's do: as
//! image references, familiar and without `:latest` (`alpine`,
//! `docker.io/library/alpine:latest` and `alpine:latest` are one name).
//! A directory-like context enters cache keys by its content digest, an
//! image by its manifest digest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use kiln_layers::cleanup::ScratchDir;
use kiln_layers::Reference;
use kiln_reference::redact_credentials as redact;

use crate::context::BuildContext;
use crate::plan::NamedSource;

use super::{fetch, git_context, ContextSourceError, PrepareOptions};

/// What one `--build-context` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContextSpec {
    Dir(PathBuf),
    Image(Reference),
    Scratch,
    Git {
        url: String,
        source: crate::git::GitSource,
    },
    Url(String),
}

/// `name` as BuildKit compares it: the familiar form of the reference,
/// without `:latest`; None when it is no reference.
pub fn normalize_name(name: &str) -> Option<String> {
    let reference = Reference::parse(name).ok()?;
    let familiar = reference.familiar();
    Some(
        familiar
            .strip_suffix(":latest")
            .unwrap_or(&familiar)
            .to_string(),
    )
}

impl NamedContextSpec {
    /// Parses `NAME=VALUE` into the normalized name and what it names.
    pub fn parse_flag(flag: &str) -> Result<(String, NamedContextSpec), ContextSourceError> {
        let bad = |why: String| {
            ContextSourceError::Invalid(format!("--build-context {}: {why}", redact(flag)))
        };
        let (name, value) = flag
            .split_once('=')
            .ok_or_else(|| bad("invalid context value, expected key=value".into()))?;
        let normalized =
            normalize_name(name).ok_or_else(|| bad(format!("invalid context name {name:?}")))?;
        let spec = if let Some(image) = value.strip_prefix("docker-image://") {
            if image == "scratch" {
                NamedContextSpec::Scratch
            } else {
                NamedContextSpec::Image(Reference::parse(image).map_err(|e| bad(e.to_string()))?)
            }
        } else if value.starts_with("oci-layout://") {
            return Err(bad(
                "oci-layout:// contexts are not supported yet (use docker-image://, a directory, a Git or an HTTP URL)".into(),
            ));
        } else if value.starts_with("target:") {
            return Err(bad("target: contexts are bake's, not a build's".into()));
        } else if value.starts_with("ssh://") {
            return Err(bad(
                "unsupported context source ssh (BuildKit takes git@host: URLs for SSH)".into(),
            ));
        } else if let Some(source) = remote_git(value)? {
            NamedContextSpec::Git {
                url: value.to_string(),
                source,
            }
        } else if value.starts_with("http://") || value.starts_with("https://") {
            NamedContextSpec::Url(value.to_string())
        } else {
            let dir = PathBuf::from(value);
            if !dir.is_dir() {
                return Err(bad(format!(
                    "failed to get build context {normalized}: {value} is not a directory"
                )));
            }
            NamedContextSpec::Dir(dir)
        };
        Ok((normalized, spec))
    }
}

/// A Git URL among named context values: `git://`, `git@…` and
/// `http(s)://….git`, as BuildKit's switch on the scheme takes them.
fn remote_git(value: &str) -> Result<Option<crate::git::GitSource>, ContextSourceError> {
    let remote = value.starts_with("git://")
        || value.starts_with("git@")
        || value.starts_with("http://")
        || value.starts_with("https://");
    if !remote {
        return Ok(None);
    }
    git_context(value)
}

/// One prepared named context.
#[derive(Debug)]
pub struct NamedContext {
    pub name: String,
    /// What the planner sees.
    pub source: NamedSource,
    /// A directory-like context's files (`COPY --from`, mounts, `FROM`).
    pub tree: Option<BuildContext>,
    /// How progress and history name it (credentials masked).
    pub description: String,
}

/// Every named context of a build, holding their fetched files until the
/// build is over.
#[derive(Debug, Default)]
pub struct NamedContexts {
    pub contexts: BTreeMap<String, NamedContext>,
    _scratch: Vec<ScratchDir>,
}

impl NamedContexts {
    /// Fetches and hashes each context (`opts.file` is not used).
    pub fn prepare(
        specs: &[(String, NamedContextSpec)],
        opts: &PrepareOptions<'_>,
    ) -> Result<NamedContexts, ContextSourceError> {
        let mut out = NamedContexts::default();
        for (name, spec) in specs {
            let started = Instant::now();
            let prepared = out.prepare_one(name, spec, opts)?;
            opts.events.internal(
                &format!("[context {name}] load {}", prepared.description),
                &[],
                started.elapsed().as_secs_f64(),
            );
            out.contexts.insert(name.clone(), prepared);
        }
        Ok(out)
    }

    fn prepare_one(
        &mut self,
        name: &str,
        spec: &NamedContextSpec,
        opts: &PrepareOptions<'_>,
    ) -> Result<NamedContext, ContextSourceError> {
        let (dir, description, ignore) = match spec {
            NamedContextSpec::Image(reference) => {
                return Ok(NamedContext {
                    name: name.to_string(),
                    source: NamedSource::Image(reference.clone()),
                    tree: None,
                    description: reference.to_string(),
                })
            }
            NamedContextSpec::Scratch => {
                let scratch = opts.store.scratch_dir("named")?;
                let dir = scratch.path().join("empty");
                std::fs::create_dir_all(&dir).map_err(|source| ContextSourceError::Io {
                    path: dir.clone(),
                    source,
                })?;
                self._scratch.push(scratch);
                let tree = BuildContext::load(&dir, &no_ignore()?, None)?;
                return Ok(NamedContext {
                    name: name.to_string(),
                    source: NamedSource::Scratch {
                        digest: tree_digest(&tree),
                    },
                    tree: Some(tree),
                    description: "scratch".into(),
                });
            }
            NamedContextSpec::Dir(dir) => {
                let ignore = crate::dockerignore::load_for_build(dir, None)?;
                (dir.clone(), format!("local source for {name}"), ignore)
            }
            NamedContextSpec::Git { url, source } => {
                let scratch = opts.store.scratch_dir("named")?;
                let checkout = fetch::checkout(source, false, false, &scratch.path().join("git"))?;
                self._scratch.push(scratch);
                let description = format!(
                    "git snapshot for {}#{}",
                    redact(url.split('#').next().unwrap_or(url)),
                    checkout.commit.commit
                );
                (checkout.dir, description, no_ignore()?)
            }
            NamedContextSpec::Url(url) => {
                let scratch = opts.store.scratch_dir("named")?;
                let dir = scratch.path().join("http");
                std::fs::create_dir_all(&dir).map_err(|source| ContextSourceError::Io {
                    path: dir.clone(),
                    source,
                })?;
                fetch::download(opts.fetcher, url, &dir.join("context"))?;
                self._scratch.push(scratch);
                (dir, format!("http url {}", redact(url)), no_ignore()?)
            }
        };
        let tree = BuildContext::load(&dir, &ignore, None)?;
        Ok(NamedContext {
            name: name.to_string(),
            source: NamedSource::Tree {
                digest: tree_digest(&tree),
                description: description.clone(),
            },
            tree: Some(tree),
            description,
        })
    }

    /// What the planner is given: each name and its source.
    pub fn sources(&self) -> BTreeMap<String, NamedSource> {
        self.contexts
            .iter()
            .map(|(name, c)| (name.clone(), c.source.clone()))
            .collect()
    }

    /// The files of the directory-like context `name`.
    pub fn tree(&self, name: &str) -> Option<&BuildContext> {
        self.contexts.get(name).and_then(|c| c.tree.as_ref())
    }
}

/// No `.dockerignore` (Git and HTTP named contexts have none applied).
fn no_ignore() -> Result<crate::dockerignore::PatternMatcher, ContextSourceError> {
    Ok(crate::dockerignore::PatternMatcher::new(
        Vec::<String>::new(),
    )?)
}

/// A tree's content digest ([`BuildContext::tree_digest`] of its root:
/// modes, link targets and contents, never mtimes or inodes).
fn tree_digest(tree: &BuildContext) -> String {
    tree.tree_digest("").unwrap_or_default()
}
