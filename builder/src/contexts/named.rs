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
//! - `oci-layout://DIR[:TAG][@DIGEST]`: an image of an OCI layout
//!   directory, as buildx resolves it (the digest, else the tag, `latest`
//!   when neither is given: [`kiln_layers::archive::LayoutImage`]), put
//!   into the store unnamed and used as a base image is, never pulled;
//! - bake's `target:` is refused.
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

use kiln_layers::archive::LayoutImage;
use kiln_layers::cleanup::ScratchDir;
use kiln_layers::{Descriptor, Digest, Reference};
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
    /// `oci-layout://…`: the value as given, the layout's directory, and
    /// which of its images.
    OciLayout {
        value: String,
        dir: PathBuf,
        image: LayoutImage,
    },
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
        } else if let Some(layout) = value.strip_prefix("oci-layout://") {
            let (dir, image) = parse_oci_layout(layout).map_err(bad)?;
            NamedContextSpec::OciLayout {
                value: value.to_string(),
                dir,
                image,
            }
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

/// `DIR[:TAG][@DIGEST]` as buildx's `ocilayout.Parse` splits it: a digest
/// after the last `@`, then a tag after the last `:` (each only when what
/// follows looks like one), `latest` when neither is given. A digest wins
/// over a tag, as buildx resolves the tag only without one.
fn parse_oci_layout(layout: &str) -> Result<(PathBuf, LayoutImage), String> {
    let mut rest = layout;
    let mut digest = None;
    if let Some((before, after)) = rest.rsplit_once('@') {
        if looks_like_digest(after) {
            digest = Some(Digest::parse(after).map_err(|e| e.to_string())?);
            rest = before;
        }
    }
    let mut tag = None;
    if let Some((before, after)) = rest.rsplit_once(':') {
        // buildx's unanchored tag pattern: a word character anywhere; the
        // frontend's reference parser then refuses what is no tag.
        if after.chars().any(|c| c.is_ascii_alphanumeric() || c == '_') {
            if !is_tag(after) {
                return Err(format!(
                    "could not parse oci-layout reference: {after:?} is no valid tag"
                ));
            }
            tag = Some(after.to_string());
            rest = before;
        }
    }
    // buildx reads `index.json` of the working directory then.
    if rest.is_empty() {
        rest = ".";
    }
    let image = match (digest, tag) {
        (Some(digest), _) => LayoutImage::Digest(digest),
        (None, Some(tag)) => LayoutImage::Tag(tag),
        (None, None) => LayoutImage::Tag("latest".into()),
    };
    Ok((PathBuf::from(rest), image))
}

/// Whether `s` holds what distribution's (unanchored) `DigestRegexp`
/// finds: an algorithm led by a letter, `:`, and 32 or more hex digits.
fn looks_like_digest(s: &str) -> bool {
    static PATTERN: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    PATTERN
        .get_or_init(|| {
            regex::Regex::new(
                r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}",
            )
            .ok()
        })
        .as_ref()
        .is_some_and(|p| p.is_match(s))
}

/// distribution's tag: a word character, then up to 127 word characters,
/// dots and dashes.
fn is_tag(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
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

/// The image of an `oci-layout://` context: its manifest or index is in
/// the store; each platform's blobs come from the layout when the build
/// resolves it ([`kiln_layers::archive::load_layout_platform`]).
#[derive(Debug, Clone)]
pub struct LayoutContextImage {
    /// What the planner resolves: the context's name at the image's digest.
    pub reference: Reference,
    /// The manifest or index the value named.
    pub root: Descriptor,
    /// The layout directory.
    pub dir: PathBuf,
    /// The flag, for errors.
    pub shown: String,
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
    /// The images of the `oci-layout://` contexts.
    images: Vec<LayoutContextImage>,
    /// Held while the build lasts once an `oci-layout://` context put its
    /// manifest into the store unnamed: no collection removes it before
    /// the build takes its own lease.
    lease: Option<kiln_layers::store::Lease>,
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
            NamedContextSpec::OciLayout { value, dir, image } => {
                let bad = |why: String| {
                    ContextSourceError::Invalid(format!("--build-context {name}={value}: {why}"))
                };
                if self.lease.is_none() {
                    self.lease = Some(opts.store.lease()?);
                }
                let root = kiln_layers::archive::load_layout_image(opts.store, dir, image)
                    .map_err(|e| bad(e.to_string()))?;
                let reference = Reference::parse(&format!("{name}@{}", root.digest))
                    .map_err(|e| bad(e.to_string()))?;
                self.images.push(LayoutContextImage {
                    reference: reference.clone(),
                    root,
                    dir: dir.clone(),
                    shown: format!("--build-context {name}={value}"),
                });
                return Ok(NamedContext {
                    name: name.to_string(),
                    source: NamedSource::Image(reference),
                    tree: None,
                    description: value.clone(),
                });
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

    /// The images of the `oci-layout://` contexts, for the resolver
    /// ([`crate::solve::StoreResolver::with_images`]).
    pub fn images(&self) -> &[LayoutContextImage] {
        &self.images
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

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> String {
        format!("sha256:{}", "ab".repeat(32))
    }

    fn parsed(layout: &str) -> (PathBuf, LayoutImage) {
        parse_oci_layout(layout).unwrap()
    }

    #[test]
    fn oci_layout_values_split_as_buildx_splits_them() {
        let tag = |t: &str| LayoutImage::Tag(t.into());
        let by_digest = LayoutImage::Digest(Digest::parse(&digest()).unwrap());
        assert_eq!(parsed("/l"), ("/l".into(), tag("latest")));
        assert_eq!(parsed("rel/layout:v1"), ("rel/layout".into(), tag("v1")));
        assert_eq!(
            parsed(&format!("/l@{}", digest())),
            ("/l".into(), by_digest.clone())
        );
        // A digest wins over the tag given with it.
        assert_eq!(
            parsed(&format!("/l:v1@{}", digest())),
            ("/l".into(), by_digest)
        );
        // What follows `@` is no digest: the last `:` gives the tag.
        assert_eq!(parsed("/l@sha256:zz"), ("/l@sha256".into(), tag("zz")));
        // Nothing that looks like a tag after the `:`.
        assert_eq!(parsed("/a:b/c:"), ("/a:b/c:".into(), tag("latest")));
        assert!(parse_oci_layout(&format!("/l@sha256:{}", "a".repeat(40))).is_err());
        // No letter leads the algorithm: no digest; what follows `:` is a tag.
        let hex = "a".repeat(40);
        assert_eq!(parsed(&format!("/l@1:{hex}")), ("/l@1".into(), tag(&hex)));
        assert!(parse_oci_layout("/l:v1+meta")
            .unwrap_err()
            .contains("no valid tag"));
        assert!(parse_oci_layout(&format!("/l:{}", "t".repeat(129))).is_err());
        // No directory is the working directory's layout.
        assert_eq!(parsed(":v1"), (".".into(), tag("v1")));
        assert_eq!(parsed(""), (".".into(), tag("latest")));
    }

    #[test]
    fn an_oci_layout_context_is_parsed_with_its_name() {
        let flag = format!("base=oci-layout:///x/l@{}", digest());
        let (name, spec) = NamedContextSpec::parse_flag(&flag).unwrap();
        assert_eq!(name, "base");
        assert!(
            matches!(&spec, NamedContextSpec::OciLayout { dir, .. } if dir == std::path::Path::new("/x/l")),
            "{spec:?}"
        );
    }
}
