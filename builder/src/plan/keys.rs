//! Cache keys: a content-addressed digest per step, over its parent's key
//! (or the base's identity), the step as planned, and the content it reads
//! (the context's files, a source stage's key, a URL's or a Git ref's
//! content).
//!
//! The encoding is written out field by field (`KeyWriter`), under a
//! version ([`KEY_VERSION`]): renaming a Rust field changes no key, and a
//! change of what a key covers is a new version, on purpose. Nothing in a
//! key depends on the machine: no path of the store or the context, no
//! mtime or inode (the context's digests are of content, mode and link
//! targets), so two machines with the same inputs compute the same keys.
//! A golden test (`testdata/builder/keys`) pins the keys of a fixed
//! Dockerfile and context. A build whose layers hold no mtime newer than
//! `SOURCE_DATE_EPOCH` (`rewrite-timestamp=true`) keys every step by it
//! too ([`key_by_layer_epoch`]).
//!
//! What a key needs from outside the Dockerfile and the context — the
//! commit a Git ref names now, the content at a URL — comes through
//! [`KeySources`]: the planner itself does no I/O; a build passes
//! [`RemoteSources`] (`git ls-remote`, the build's downloads).

use std::collections::BTreeMap;

use kiln_layers::oci::ImageConfig;
use kiln_layers::Digest;
use sha2::{Digest as _, Sha256};

use super::{
    BaseSource, CopyFrom, CopyStep, MountSource, Plan, PlanError, PlanErrorKind, RunStep, Step,
    StepKind, WorkdirStep,
};
use crate::context::BuildContext;
use crate::copy::{resolve_wildcards, UrlDownloads};
use crate::git::{GitError, GitSource, ResolvedCommit};
use crate::rootfs::resolve;

/// The version of the key encoding: changing what a key covers or how it
/// is written means a new version (every key changes with it).
pub const KEY_VERSION: &str = "kiln-step-v5";

/// What an ADD URL's key takes from its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlContent {
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// `Last-Modified` in seconds since the epoch (it becomes the mtime).
    pub last_modified: Option<i64>,
}

/// The I/O a key needs, behind one seam.
pub trait KeySources {
    /// The commit a Git source's ref names now.
    fn git_commit(&self, source: &GitSource) -> Result<ResolvedCommit, GitError>;
    /// The content at `url` for an ADD without `--checksum`; `None` keys
    /// the URL by its text only.
    fn url_content(&self, url: &str) -> Result<Option<UrlContent>, String>;
}

/// The real sources: `git ls-remote` for Git refs, and the build's
/// downloads for URLs (a URL is fetched once per build: the solver copies
/// the same download). Without downloads, URLs are keyed by their text.
#[derive(Default)]
pub struct RemoteSources<'a> {
    pub downloads: Option<&'a UrlDownloads<'a>>,
}

impl KeySources for RemoteSources<'_> {
    fn git_commit(&self, source: &GitSource) -> Result<ResolvedCommit, GitError> {
        crate::git::resolve_commit(source)
    }

    fn url_content(&self, url: &str) -> Result<Option<UrlContent>, String> {
        let Some(downloads) = self.downloads else {
            return Ok(None);
        };
        let downloaded = downloads.get(url).map_err(|e| match e {
            crate::copy::CopyError::Fetch { message, .. } => message,
            other => other.to_string(),
        })?;
        Ok(Some(UrlContent {
            digest: downloaded.digest.clone(),
            last_modified: downloaded.last_modified,
        }))
    }
}

/// Writes named, length-prefixed fields into a hash, so that no two
/// different steps encode to the same bytes.
struct KeyWriter(Sha256);

impl KeyWriter {
    fn new() -> Self {
        let mut hasher = Sha256::new();
        hasher.update(KEY_VERSION.as_bytes());
        hasher.update([0]);
        KeyWriter(hasher)
    }

    fn field(&mut self, name: &str, value: &str) {
        self.0.update(name.as_bytes());
        self.0.update([0]);
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value.as_bytes());
    }

    fn opt(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(v) => self.field(name, v),
            None => self.field(name, "\u{0}none"),
        }
    }

    fn list(&mut self, name: &str, items: &[String]) {
        self.field(name, &items.len().to_string());
        for item in items {
            self.field(name, item);
        }
    }

    fn flag(&mut self, name: &str, value: bool) {
        self.field(name, if value { "true" } else { "false" });
    }

    fn finish(self) -> Digest {
        Digest::from_hash(&self.0.finalize())
    }
}

/// Computes each needed step's cache key (see the module docs). An ADD of
/// a Git repository is keyed by the commit its ref names now; the commit is
/// kept in the step for the solver to check out.
pub fn compute_cache_keys(
    plan: &mut Plan,
    context: Option<&BuildContext>,
    sources: &dyn KeySources,
) -> Result<(), PlanError> {
    let mut git_commits: BTreeMap<String, ResolvedCommit> = BTreeMap::new();
    let mut finals: BTreeMap<usize, String> = BTreeMap::new();
    for index in plan.order.clone() {
        let mut parent = match &plan.stages[index].base {
            BaseSource::Scratch => format!("scratch/{}", plan_platform(&plan.stages[index].image)),
            BaseSource::Image { reference, digest } => format!(
                "image/{}/{}",
                digest
                    .as_ref()
                    .map_or(reference.shown.as_str(), Digest::as_str),
                plan_platform(&plan.stages[index].image)
            ),
            BaseSource::Stage(i) => finals.get(i).cloned().unwrap_or_default(),
            // Its files come in through the stage's first step, a copy
            // keyed by their digest.
            BaseSource::NamedContext { .. } => {
                format!("scratch/{}", plan_platform(&plan.stages[index].image))
            }
        };
        for n in 0..plan.stages[index].steps.len() {
            let step = &plan.stages[index].steps[n];
            let mut key = KeyWriter::new();
            key.field("parent", &parent);
            let mut inputs = StepInputs {
                context,
                sources,
                finals: &finals,
                git_commits: &mut git_commits,
                resolved_git: BTreeMap::new(),
            };
            inputs.write(&mut key, step)?;
            let resolved_git = inputs.resolved_git;
            let digest = key.finish();
            let step = &mut plan.stages[index].steps[n];
            if let StepKind::Copy(c) = &mut step.kind {
                if !resolved_git.is_empty() {
                    c.git_commits = resolved_git;
                }
            }
            parent = digest.to_string();
            step.cache_key = Some(digest);
        }
        finals.insert(index, parent);
    }
    Ok(())
}

/// Keys every step also by the time its layer's mtimes are clamped to
/// (`SOURCE_DATE_EPOCH` with `rewrite-timestamp=true`: the build writes
/// no file in a layer newer than it). A record made under another epoch,
/// or under none, holds a layer this build would not make: found, it would
/// make the image depend on what the store happened to cache. Called
/// after [`compute_cache_keys`]; nothing with no epoch.
pub fn key_by_layer_epoch(plan: &mut Plan, epoch: Option<i64>) {
    let Some(epoch) = epoch else {
        return;
    };
    let epoch = epoch.to_string();
    for step in plan.stages.iter_mut().flat_map(|s| s.steps.iter_mut()) {
        if let Some(key) = &step.cache_key {
            let mut keyed = KeyWriter::new();
            keyed.field("step", key.as_str());
            keyed.field("layer-mtimes-at-most", &epoch);
            step.cache_key = Some(keyed.finish());
        }
    }
}

/// What one step's key reads beyond the step itself.
struct StepInputs<'a> {
    context: Option<&'a BuildContext>,
    sources: &'a dyn KeySources,
    /// Each finished stage's last key.
    finals: &'a BTreeMap<usize, String>,
    /// Git sources resolved so far in this build (one ls-remote each).
    git_commits: &'a mut BTreeMap<String, ResolvedCommit>,
    /// This step's Git sources, by source index.
    resolved_git: BTreeMap<usize, ResolvedCommit>,
}

impl StepInputs<'_> {
    fn write(&mut self, key: &mut KeyWriter, step: &Step) -> Result<(), PlanError> {
        match &step.kind {
            StepKind::Run(r) => {
                self.run(key, r);
                Ok(())
            }
            StepKind::Copy(c) => self.copy(key, c, step.line),
            StepKind::Workdir(w) => {
                workdir(key, w);
                Ok(())
            }
        }
    }

    fn stage_key(&self, index: usize) -> &str {
        self.finals.get(&index).map(String::as_str).unwrap_or("")
    }

    fn run(&mut self, key: &mut KeyWriter, r: &RunStep) {
        key.field("op", "run");
        key.list("argv", &r.argv);
        key.list("env", &r.env);
        key.field("user", &r.user);
        key.field("workdir", &r.workdir);
        key.opt("network", r.network.as_deref());
        key.opt("security", r.security.as_deref());
        key.field("hostname", &r.hostname);
        key.opt("cache_namespace", r.cache_namespace.as_deref());
        key.field("mounts", &r.mounts.len().to_string());
        for m in &r.mounts {
            let s = &m.spec;
            key.field("mount.type", s.mount_type.as_str());
            key.opt("mount.from", s.from.as_deref());
            key.opt("mount.source", s.source.as_deref());
            key.field("mount.target", &s.target);
            key.flag("mount.readonly", s.read_only);
            key.opt("mount.id", s.id.as_deref());
            key.opt(
                "mount.sharing",
                s.sharing.map(|sharing| match sharing {
                    kiln_parser::mount::Sharing::Shared => "shared",
                    kiln_parser::mount::Sharing::Private => "private",
                    kiln_parser::mount::Sharing::Locked => "locked",
                }),
            );
            key.flag("mount.required", s.required);
            key.opt("mount.env", s.env.as_deref());
            key.opt("mount.mode", s.mode.map(|v| format!("{v:o}")).as_deref());
            key.opt("mount.uid", s.uid.map(|v| v.to_string()).as_deref());
            key.opt("mount.gid", s.gid.map(|v| v.to_string()).as_deref());
            key.opt("mount.size", s.size_limit.map(|v| v.to_string()).as_deref());
            match &m.from_resolved {
                // A bind of the context: what it shows (BuildKit keys the
                // mount on the selected path's content checksum).
                None if s.mount_type == kiln_parser::mount::MountType::Bind => key.field(
                    "mount.content",
                    &context_mount_content(self.context, s.source.as_deref().unwrap_or("")),
                ),
                None => key.field("mount.content", ""),
                Some(MountSource::Stage(i)) => key.field("mount.content", self.stage_key(*i)),
                Some(MountSource::NamedContext { digest, .. }) => {
                    key.field("mount.content", digest)
                }
                Some(MountSource::Image(image)) => key.field(
                    "mount.content",
                    image
                        .digest
                        .as_ref()
                        .map_or(image.reference.shown.as_str(), Digest::as_str),
                ),
            }
        }
        match &r.script {
            Some(script) => {
                key.field("script.name", &script.name);
                key.field("script.data", &script.data);
            }
            None => key.field("script", ""),
        }
        // The build's RUN flags, only when given (a key made without them
        // stays what it was).
        if !r.extra_hosts.is_empty() {
            let hosts: Vec<String> = r
                .extra_hosts
                .iter()
                .map(|(name, address)| format!("{name}={address}"))
                .collect();
            key.list("extra_hosts", &hosts);
        }
        if let Some(size) = r.shm_size {
            key.field("shm_size", &size.to_string());
        }
        if !r.ulimits.is_empty() {
            let limits: Vec<String> = r
                .ulimits
                .iter()
                .map(|l| format!("{}={}:{}", l.resource.name(), l.soft, l.hard))
                .collect();
            key.list("ulimits", &limits);
        }
    }

    fn copy(&mut self, key: &mut KeyWriter, c: &CopyStep, line: usize) -> Result<(), PlanError> {
        key.field("op", if c.is_add { "add" } else { "copy" });
        match &c.from {
            CopyFrom::Context => key.field("from", "context"),
            CopyFrom::Stage(i) => key.field("from.stage", self.stage_key(*i)),
            CopyFrom::NamedContext { digest, .. } => key.field("from.named", digest),
            CopyFrom::Image(name) => {
                key.field("from.image", &name.shown);
                key.opt("from.digest", c.from_digest.as_ref().map(Digest::as_str));
            }
        }
        key.list("sources", &c.sources);
        key.field("inline", &c.inline.len().to_string());
        for doc in &c.inline {
            key.field("inline.name", &doc.name);
            key.field("inline.data", &doc.data);
        }
        key.field("dest", &c.dest);
        key.opt("chown", c.chown.as_deref());
        key.opt("chmod", c.chmod.as_deref());
        key.flag("link", c.link);
        key.list("exclude", &c.exclude);
        key.opt("checksum", c.checksum.as_deref());
        key.opt("unpack", c.unpack.map(|u| if u { "true" } else { "false" }));
        key.flag("parents", c.parents);
        key.opt(
            "keep_git_dir",
            c.keep_git_dir.map(|k| if k { "true" } else { "false" }),
        );
        if c.from != CopyFrom::Context {
            return Ok(());
        }
        for (source_index, src) in c.sources.iter().enumerate() {
            self.source_content(key, c, source_index, src, line)?;
        }
        Ok(())
    }

    /// The content a context source selects: a Git ref's commit, a URL's
    /// content, or the context files it matches.
    fn source_content(
        &mut self,
        key: &mut KeyWriter,
        c: &CopyStep,
        source_index: usize,
        src: &str,
        line: usize,
    ) -> Result<(), PlanError> {
        let git_error = |source| PlanError::at(line, PlanErrorKind::Git(source));
        let git = match c.is_add {
            true => crate::git::parse_git_source(src).map_err(git_error)?,
            false => None,
        };
        if let Some(git) = git {
            let git = git.with_checksum_flag(c.checksum.as_deref());
            let resolved = match self.git_commits.get(src) {
                Some(r) => r.clone(),
                None => {
                    let r = self.sources.git_commit(&git).map_err(git_error)?;
                    self.git_commits.insert(src.to_string(), r.clone());
                    r
                }
            };
            key.field("git.commit", &resolved.commit);
            self.resolved_git.insert(source_index, resolved);
            return Ok(());
        }
        if src.starts_with("http://") || src.starts_with("https://") {
            key.field("url", src);
            if c.checksum.is_none() {
                let content = self.sources.url_content(src).map_err(|message| {
                    PlanError::at(
                        line,
                        PlanErrorKind::UrlFetch {
                            url: src.to_string(),
                            message,
                        },
                    )
                })?;
                if let Some(content) = content {
                    key.field("url.content", &content.digest);
                    key.opt(
                        "url.mtime",
                        content.last_modified.map(|t| t.to_string()).as_deref(),
                    );
                }
            }
            return Ok(());
        }
        key.field("context", &context_selection(self.context, src, line)?);
        Ok(())
    }
}

fn workdir(key: &mut KeyWriter, w: &WorkdirStep) {
    key.field("op", "workdir");
    key.field("path", &w.path);
    key.opt("user", w.user.as_deref());
}

fn plan_platform(image: &ImageConfig) -> String {
    format!("{}/{}", image.os, image.architecture)
}

/// What a context bind mount of `source` shows, for its RUN's key: the
/// digest of that tree of the context (symlinks followed), or a marker
/// when it is missing (the RUN then fails saying so).
fn context_mount_content(context: Option<&BuildContext>, source: &str) -> String {
    let Some(ctx) = context else {
        return format!("unhashed:{source}");
    };
    let rel = crate::rootfs::clean_rel(source);
    resolve(ctx, &rel, true)
        .ok()
        .and_then(|followed| ctx.tree_digest(&followed))
        .unwrap_or_else(|| format!("missing:{rel}"))
}

/// What a COPY source selects in the context, as a digest string.
fn context_selection(
    context: Option<&BuildContext>,
    src: &str,
    line: usize,
) -> Result<String, PlanError> {
    let Some(ctx) = context else {
        return Ok(format!("unhashed:{src}"));
    };
    let source_error = |message: String| {
        PlanError::at(
            line,
            PlanErrorKind::CopySource {
                path: src.to_string(),
                message,
            },
        )
    };
    let matches = resolve_wildcards(ctx, src, true).map_err(|e| source_error(e.to_string()))?;
    let mut out = String::new();
    for m in matches {
        let followed = resolve(ctx, &m, true).map_err(|e| source_error(e.to_string()))?;
        let digest = ctx
            .tree_digest(&followed)
            .ok_or_else(|| source_error(format!("\"/{m}\": not found")))?;
        out.push_str(&format!("{m}={digest}\0"));
    }
    Ok(out)
}
