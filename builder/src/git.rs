//! `ADD <git url>`: which sources are Git repositories, resolving their ref
//! to a commit, and checking that commit out with the host's `git`.
//!
//! The rules are BuildKit's (`dfgitutil.ParseGitRef`, `gitutil.ParseURL`):
//! a source is a Git repository when it is `git://…` or `ssh://…`, an
//! scp-like `user@host:path`, or an `http(s)://` URL whose path ends in
//! `.git`. The fragment is `#ref[:subdir]`; the query may say `ref`, `tag`,
//! `branch`, `subdir`, `checksum`/`commit`, `keep-git-dir`, `submodules`,
//! `mtime` (`checkout` or `commit`), `fetch-by-commit`.
//! `github.com/…` without a scheme, `./x` and `../x` are local paths.
//! There is no `file://` (BuildKit has none either).
//!
//! The step's cache key is the resolved commit (what `git ls-remote`
//! says the ref points at now), so a moved branch builds again and an
//! unchanged one is a cache hit without cloning.
//!
//! ```
//! use kiln_builder::git::parse_git_source;
//! let src = parse_git_source("git://127.0.0.1/repo.git#v1:docs").unwrap().unwrap();
//! assert_eq!(src.remote, "git://127.0.0.1/repo.git");
//! assert_eq!((src.reference.as_str(), src.subdir.as_str()), ("v1", "docs"));
//! assert!(parse_git_source("https://example.com/file.tar.gz").unwrap().is_none());
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

// Every URL in a message or a repository's config is masked.
use kiln_reference::redact_credentials as redact;

/// Why a Git source could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{url}: {message}")]
    Invalid { url: String, message: String },
    #[error("{remote}: running git {args}: {message}")]
    Command {
        remote: String,
        args: String,
        message: String,
    },
    #[error("{remote}: repository does not contain ref {reference}")]
    MissingRef { remote: String, reference: String },
    #[error("{remote}: expected checksum to match {expected}, got {got}")]
    Checksum {
        remote: String,
        expected: String,
        got: String,
    },
    #[error("{remote}: subdirectory {subdir} not found at commit {commit}")]
    MissingSubdir {
        remote: String,
        subdir: String,
        commit: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A Git repository named by an ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    /// What `git` is given: the URL without fragment and query.
    pub remote: String,
    /// Branch, tag, full ref or commit; empty for the remote's HEAD.
    pub reference: String,
    /// Directory inside the repository to take, clean and relative; empty
    /// for the whole tree.
    pub subdir: String,
    /// `?checksum=` / `?commit=`: a (prefix of the) commit the ref must
    /// resolve to.
    pub checksum: Option<String>,
    /// `?keep-git-dir=`.
    pub keep_git_dir: Option<bool>,
    /// `?submodules=`; submodules are checked out unless false.
    pub submodules: Option<bool>,
    /// `?mtime=commit`: every file gets the commit's time instead of the
    /// checkout's (`?mtime=checkout`, the default). A Git build context
    /// only: ADD ignores it, as BuildKit's does (the planner warns).
    pub mtime_commit: bool,
    /// `?fetch-by-commit`: trust the checksum (a full commit id) as the
    /// commit and fetch it directly, without asking the remote for refs.
    pub fetch_by_commit: bool,
}

impl GitSource {
    /// `ADD --checksum=` applies when the URL gives none (they must agree
    /// when both are given; the planner checks that).
    pub fn with_checksum_flag(mut self, flag: Option<&str>) -> Self {
        if self.checksum.is_none() {
            self.checksum = flag.map(str::to_string);
        }
        self
    }
}

/// What a ref resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedCommit {
    /// The commit (or annotated tag object) the ref names now.
    pub commit: String,
    /// The full ref that matched (`refs/heads/main`), or the commit itself.
    pub used_ref: String,
}

const SCHEMES: [&str; 4] = ["http", "https", "ssh", "git"];

/// Whether `src` names a Git repository, and which. `Ok(None)`: not Git
/// (a local path or an ordinary URL). An error: Git, but malformed (a bad
/// query), which BuildKit reports instead of treating it as a path.
pub fn parse_git_source(src: &str) -> Result<Option<GitSource>, GitError> {
    if src.starts_with("./") || src.starts_with("../") || src.starts_with("github.com/") {
        // github.com/x/y is Git only for build contexts (deprecated form).
        return Ok(None);
    }
    let Some((remote, query, fragment)) = split_git_url(src) else {
        return Ok(None);
    };
    let invalid = |message: String| GitError::Invalid {
        url: redact(src),
        message,
    };
    let mut source = GitSource {
        remote,
        reference: String::new(),
        subdir: String::new(),
        checksum: None,
        keep_git_dir: None,
        submodules: None,
        mtime_commit: false,
        fetch_by_commit: false,
    };
    let mut refs = RefSelection::from_fragment(fragment);
    let mut seen: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(pair), String::new()),
        };
        if seen.contains(&key) {
            return Err(invalid(format!("query {key:?} has multiple values")));
        }
        seen.push(key.clone());
        apply_query(&mut source, &mut refs, &key, value).map_err(invalid)?;
    }
    source.reference = refs.reference().map_err(invalid)?;
    source.subdir = refs.subdir;
    Ok(Some(source))
}

/// A Git source's remote (the URL without query and fragment), query and
/// fragment; `None` when `src` is not Git: another scheme, an HTTP(S) URL
/// whose path does not end in `.git`, or neither a URL nor scp-like.
fn split_git_url(src: &str) -> Option<(String, &str, &str)> {
    let Some(scheme) = url_scheme(src) else {
        return scp_like(src);
    };
    if !SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
        return None;
    }
    let (rest, fragment) = match src.split_once('#') {
        Some((r, f)) => (r, f),
        None => (src, ""),
    };
    let (remote, query) = match rest.split_once('?') {
        Some((r, q)) => (r, q),
        None => (rest, ""),
    };
    let after_scheme = &remote[scheme.len() + 3..];
    let path = after_scheme
        .find('/')
        .map(|i| &after_scheme[i..])
        .unwrap_or("");
    if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
        // An HTTP(S) URL is a repository only with the `.git` suffix.
        if !percent_decode(path).ends_with(".git") {
            return None;
        }
    }
    Some((remote.to_string(), query, fragment))
}

/// What the fragment (`#ref[:subdir]`) and the query say about the ref and
/// the subdirectory, gathered before they are checked against each other.
struct RefSelection {
    reference: String,
    subdir: String,
    /// `?tag=`, `?branch=`: short names or full refs.
    tag: String,
    branch: String,
}

impl RefSelection {
    fn from_fragment(fragment: &str) -> RefSelection {
        let (reference, subdir) = match fragment.split_once(':') {
            Some((r, s)) => (r, s),
            None => (fragment, ""),
        };
        RefSelection {
            reference: percent_decode(reference),
            subdir: crate::rootfs::clean_rel(&percent_decode(subdir)),
            tag: String::new(),
            branch: String::new(),
        }
    }

    /// The ref to check out: `?tag=` as `refs/tags/…`, `?branch=` as
    /// `refs/heads/…`, else the fragment's or `?ref=`; an error when they
    /// disagree.
    fn reference(&self) -> Result<String, String> {
        let mut reference = self.reference.clone();
        let mut tag = self.tag.clone();
        if !tag.is_empty() {
            if !tag.starts_with("refs/tags/") {
                tag = format!("refs/tags/{tag}");
            }
            if !reference.is_empty() && reference != tag {
                return Err(format!("ref conflicts: {reference:?} vs {tag:?}"));
            }
            reference = tag.clone();
        }
        let mut branch = self.branch.clone();
        if !branch.is_empty() {
            if !tag.is_empty() {
                return Err("branch conflicts with tag".into());
            }
            if !branch.starts_with("refs/heads/") {
                branch = format!("refs/heads/{branch}");
            }
            if !reference.is_empty() && reference != branch {
                return Err(format!("ref conflicts: {reference:?} vs {branch:?}"));
            }
            reference = branch;
        }
        Ok(reference)
    }
}

/// Applies one query parameter (`key`, already decoded, seen once) to the
/// source or to the ref selection; an error message when it is malformed.
fn apply_query(
    source: &mut GitSource,
    refs: &mut RefSelection,
    key: &str,
    value: String,
) -> Result<(), String> {
    let boolean = |value: &str| -> Result<bool, String> {
        match value {
            "" => Ok(true),
            v => parse_go_bool(v).ok_or_else(|| format!("invalid {key} value: {v:?}")),
        }
    };
    if value.is_empty() && !matches!(key, "submodules" | "keep-git-dir" | "fetch-by-commit") {
        return Err(format!("query {key:?} has no value"));
    }
    match key {
        "ref" => {
            if !refs.reference.is_empty() && refs.reference != value {
                return Err(format!("ref conflicts: {:?} vs {value:?}", refs.reference));
            }
            refs.reference = value;
        }
        "tag" => refs.tag = value,
        "branch" => refs.branch = value,
        "subdir" => {
            let value = crate::rootfs::clean_rel(&value);
            if !refs.subdir.is_empty() && refs.subdir != value {
                return Err(format!("subdir conflicts: {:?} vs {value:?}", refs.subdir));
            }
            refs.subdir = value;
        }
        "checksum" | "commit" => source.checksum = Some(value),
        "keep-git-dir" => source.keep_git_dir = Some(boolean(&value)?),
        "submodules" => source.submodules = Some(boolean(&value)?),
        "fetch-by-commit" => source.fetch_by_commit = boolean(&value)?,
        "mtime" => {
            source.mtime_commit = match value.as_str() {
                "checkout" => false,
                "commit" => true,
                v => {
                    return Err(format!(
                        "invalid mtime value: {v:?} (must be \"checkout\" or \"commit\")"
                    ))
                }
            }
        }
        other => return Err(format!("unexpected query {other:?}")),
    }
    Ok(())
}

/// `^[a-zA-Z0-9]+://` → the scheme.
fn url_scheme(src: &str) -> Option<&str> {
    let end = src.find("://")?;
    let scheme = &src[..end];
    (!scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric())).then_some(scheme)
}

/// `user@host:path[?query][#fragment]` (BuildKit's `sshutil` pattern) →
/// (remote, query, fragment).
fn scp_like(src: &str) -> Option<(String, &str, &str)> {
    let (user, rest) = src.split_once('@')?;
    let (host, rest) = rest.split_once(':')?;
    let user_ok = !user.is_empty()
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !user_ok || !host_ok {
        return None;
    }
    // The path is lazy: the first `?` starts the query, the first `#`
    // after it the fragment.
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((b, f)) => (b, f),
        None => (rest, ""),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((p, q)) => (p, q),
        None => (before_fragment, ""),
    };
    Some((format!("{user}@{host}:{path}"), query, fragment))
}

pub use kiln_parser::mount::parse_go_bool;

/// `%XX` decoding (bytes that are not valid escapes are kept).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = &bytes[i + 1..i + 3];
            if hex.iter().all(u8::is_ascii_hexdigit) {
                let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                out.push(digit(hex[0]) * 16 + digit(hex[1]));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A full SHA-1 or SHA-256 commit id.
fn is_commit_sha(text: &str) -> bool {
    (text.len() == 40 || text.len() == 64) && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// Runs `git` with no terminal prompts; stdout on success.
fn git(remote: &str, dir: Option<&Path>, args: &[&str]) -> Result<String, GitError> {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(std::process::Stdio::null());
    let shown = args.iter().map(|a| redact(a)).collect::<Vec<_>>().join(" ");
    let output = command.output().map_err(|e| GitError::Command {
        remote: redact(remote),
        args: shown.clone(),
        message: format!("{e} (is git installed?)"),
    })?;
    if !output.status.success() {
        return Err(GitError::Command {
            remote: redact(remote),
            args: shown,
            message: redact(String::from_utf8_lossy(&output.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Resolves the source's ref with `git ls-remote`, as BuildKit does: a
/// full commit id is taken as it is; no ref means the remote's HEAD
/// branch; an exact ref wins, then a branch, then a tag. The `checksum`
/// (a hex prefix) must match the commit or the commit an annotated tag
/// points at.
pub fn resolve_commit(source: &GitSource) -> Result<ResolvedCommit, GitError> {
    let remote = &source.remote;
    check_checksum_is_hex(source)?;
    if source.fetch_by_commit {
        let commit = commit_to_fetch(source)?;
        check_checksum(source, &commit, "")?;
        return Ok(ResolvedCommit {
            used_ref: commit.clone(),
            commit,
        });
    }
    if is_commit_sha(&source.reference) {
        check_checksum(source, &source.reference, "")?;
        return Ok(ResolvedCommit {
            commit: source.reference.clone(),
            used_ref: source.reference.clone(),
        });
    }
    let reference = if source.reference.is_empty() {
        remote_head(remote)?
    } else {
        source.reference.clone()
    };
    let found = ls_remote_ref(remote, reference)?;
    if !is_commit_sha(&found.commit) {
        return Err(GitError::Invalid {
            url: redact(remote),
            message: format!("invalid commit sha {:?}", found.commit),
        });
    }
    check_checksum(source, &found.commit, &found.peeled)?;
    Ok(ResolvedCommit {
        commit: found.commit,
        used_ref: found.used_ref,
    })
}

/// Refuses a `checksum` that is not a hex commit id (prefix).
fn check_checksum_is_hex(source: &GitSource) -> Result<(), GitError> {
    match &source.checksum {
        Some(checksum)
            if checksum.is_empty() || !checksum.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            Err(GitError::Invalid {
                url: redact(&source.remote),
                message: format!(
                    "invalid checksum {checksum} for Git URL, expected hex commit hash"
                ),
            })
        }
        _ => Ok(()),
    }
}

/// Checks the `checksum` (if any) against the resolved `commit` or, for an
/// annotated tag, the commit it points at (`peeled`; empty otherwise).
fn check_checksum(source: &GitSource, commit: &str, peeled: &str) -> Result<(), GitError> {
    match &source.checksum {
        Some(sum)
            if !commit.starts_with(sum.as_str())
                && (peeled.is_empty() || !peeled.starts_with(sum.as_str())) =>
        {
            Err(GitError::Checksum {
                remote: redact(&source.remote),
                expected: sum.clone(),
                got: commit.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// The commit `?fetch-by-commit` fetches: the checksum, which must then be
/// a full commit id, or else a ref that is one.
fn commit_to_fetch(source: &GitSource) -> Result<String, GitError> {
    let invalid = |message: String| GitError::Invalid {
        url: redact(&source.remote),
        message,
    };
    match &source.checksum {
        Some(sum) if is_commit_sha(sum) => Ok(sum.clone()),
        Some(sum) => Err(invalid(format!(
            "fetch-by-commit requires a full commit SHA checksum, got {sum:?}"
        ))),
        None if is_commit_sha(&source.reference) => Ok(source.reference.clone()),
        None => Err(invalid(
            "fetch-by-commit requires a checksum or a commit SHA ref".into(),
        )),
    }
}

/// The branch the remote's HEAD points at (`git ls-remote --symref`).
fn remote_head(remote: &str) -> Result<String, GitError> {
    let out = git(remote, None, &["ls-remote", "--symref", remote, "HEAD"])?;
    out.lines()
        .find_map(|l| {
            l.strip_prefix("ref: ")
                .and_then(|r| r.strip_suffix("\tHEAD"))
                .map(str::to_string)
        })
        .ok_or_else(|| GitError::MissingRef {
            remote: redact(remote),
            reference: "HEAD".into(),
        })
}

/// What a ref names on the remote.
struct RemoteRef {
    /// The commit (or annotated tag object).
    commit: String,
    /// The full ref that matched.
    used_ref: String,
    /// For a tag: the commit it points at when it is annotated; else empty.
    peeled: String,
}

/// Asks the remote (`git ls-remote`) what `reference` names: the exact ref
/// (`refs/<reference>`), else the branch, else the tag.
fn ls_remote_ref(remote: &str, reference: String) -> Result<RemoteRef, GitError> {
    let peeled_arg = format!("{reference}^{{}}");
    let out = git(
        remote,
        None,
        &["ls-remote", "--", remote, &reference, &peeled_arg],
    )?;
    let bare = reference.strip_prefix("refs/").unwrap_or(&reference);
    let partial = format!("refs/{bare}");
    let head = format!(
        "refs/heads/{}",
        reference.strip_prefix("refs/heads/").unwrap_or(&reference)
    );
    let tag = format!(
        "refs/tags/{}",
        reference.strip_prefix("refs/tags/").unwrap_or(&reference)
    );
    let peeled_tag = format!("{tag}^{{}}");
    let (mut exact, mut head_sha, mut tag_sha, mut peeled_sha) =
        (String::new(), String::new(), String::new(), String::new());
    for line in out.lines() {
        let Some((sha, name)) = line.split_once('\t') else {
            continue;
        };
        if name == head {
            head_sha = sha.to_string();
        } else if name == tag {
            tag_sha = sha.to_string();
        } else if name == peeled_tag {
            peeled_sha = sha.to_string();
        } else if name == partial {
            exact = sha.to_string();
        }
    }
    // git checkout prefers branches when a name is ambiguous.
    let (commit, used_ref, peeled) = if !exact.is_empty() {
        (exact, partial, String::new())
    } else if !head_sha.is_empty() {
        (head_sha, head, String::new())
    } else if !tag_sha.is_empty() {
        (tag_sha, tag, peeled_sha)
    } else {
        return Err(GitError::MissingRef {
            remote: redact(remote),
            reference,
        });
    };
    Ok(RemoteRef {
        commit,
        used_ref,
        peeled,
    })
}

/// Checks `resolved` out into `work/tree` (fetching only that ref, depth
/// 1, plus submodules unless `?submodules=false`) and returns the
/// directory ADD copies from: the tree, or its `subdir`. The `.git`
/// directory is removed unless `keep_git_dir`; kept, it has `origin` set
/// to the remote, HEAD detached at the commit and the ref (branch or tag)
/// pointing at it, as BuildKit leaves it.
pub fn checkout(
    source: &GitSource,
    resolved: &ResolvedCommit,
    keep_git_dir: bool,
    work: &Path,
) -> Result<PathBuf, GitError> {
    let remote = source.remote.as_str();
    let tree = work.join("tree");
    std::fs::create_dir_all(&tree).map_err(|e| GitError::Io {
        path: tree.clone(),
        source: e,
    })?;
    let tree_arg = tree.to_string_lossy().into_owned();
    git(remote, None, &["init", "-q", &tree_arg])?;
    git(remote, Some(&tree), &["remote", "add", "origin", remote])?;
    let fetched = git(
        remote,
        Some(&tree),
        &[
            "fetch",
            "-q",
            "--no-tags",
            "--depth=1",
            "origin",
            &resolved.used_ref,
        ],
    );
    if fetched.is_err() && resolved.used_ref == resolved.commit {
        // A server that refuses to serve a commit by id: fetch every
        // branch and tag, and find the commit among them.
        git(
            remote,
            Some(&tree),
            &[
                "fetch",
                "-q",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
        )?;
    } else {
        fetched?;
        // The ref may have moved since it was resolved: use the commit the
        // cache key was made from, or fail.
        let head = git(remote, Some(&tree), &["rev-parse", "FETCH_HEAD"])?;
        if head.trim() != resolved.commit {
            git(
                remote,
                Some(&tree),
                &["fetch", "-q", "--no-tags", "origin", &resolved.commit],
            )
            .map_err(|_| GitError::Command {
                remote: redact(remote),
                args: format!("fetch {}", resolved.used_ref),
                message: format!(
                    "{} moved from {} to {} during the build",
                    resolved.used_ref,
                    resolved.commit,
                    head.trim()
                ),
            })?;
        }
    }
    let commit = format!("{}^{{commit}}", resolved.commit);
    git(
        remote,
        Some(&tree),
        &["-c", "advice.detachedHead=false", "checkout", "-q", &commit],
    )?;
    if keep_git_dir {
        // As BuildKit leaves it: HEAD detached at the commit, the ref
        // (branch or tag) present locally, origin without credentials, no
        // reflog or FETCH_HEAD.
        if resolved.used_ref.starts_with("refs/") {
            git(
                remote,
                Some(&tree),
                &["update-ref", &resolved.used_ref, &resolved.commit],
            )?;
        }
        git(
            remote,
            Some(&tree),
            &["remote", "set-url", "origin", &redact(remote)],
        )?;
        git(
            remote,
            Some(&tree),
            &["reflog", "expire", "--all", "--expire=now"],
        )?;
        let fetch_head = tree.join(".git").join("FETCH_HEAD");
        if let Err(e) = std::fs::remove_file(&fetch_head) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(GitError::Io {
                    path: fetch_head,
                    source: e,
                });
            }
        }
    }
    if source.submodules != Some(false) && tree.join(".gitmodules").is_file() {
        git(
            remote,
            Some(&tree),
            &["submodule", "update", "--init", "--recursive", "--depth=1"],
        )?;
    }
    let commit_time = match source.mtime_commit {
        true => {
            let out = git(remote, Some(&tree), &["log", "-1", "--format=%ct", &commit])?;
            Some(out.trim().parse::<i64>().map_err(|_| GitError::Invalid {
                url: redact(remote),
                message: format!("commit time {:?} is not a number", out.trim()),
            })?)
        }
        false => None,
    };
    if !keep_git_dir {
        let dot_git = tree.join(".git");
        std::fs::remove_dir_all(&dot_git).map_err(|e| GitError::Io {
            path: dot_git,
            source: e,
        })?;
    }
    if let Some(secs) = commit_time {
        set_mtimes(&tree, secs)?;
    }
    if source.subdir.is_empty() {
        return Ok(tree);
    }
    let inside = crate::rootfs::resolve(&crate::rootfs::DirTree::new(&tree), &source.subdir, true)
        .map_err(|e| GitError::Invalid {
            url: redact(remote),
            message: e.to_string(),
        })?;
    let dir = tree.join(inside);
    if !dir.is_dir() {
        return Err(GitError::MissingSubdir {
            remote: redact(remote),
            subdir: source.subdir.clone(),
            commit: resolved.commit.clone(),
        });
    }
    Ok(dir)
}

/// What ADD does with a Git source: checks out `resolved` (resolving the
/// ref now when the plan did not) into `work`, keeping `.git` when the
/// URL's `?keep-git-dir=` or else `--keep-git-dir` says so; returns the
/// directory to copy from.
pub fn fetch_tree(
    source: &GitSource,
    resolved: Option<&ResolvedCommit>,
    keep_git_dir_flag: Option<bool>,
    work: &Path,
) -> Result<PathBuf, GitError> {
    let resolved = match resolved {
        Some(r) => r.clone(),
        None => resolve_commit(source)?,
    };
    let keep = source.keep_git_dir.or(keep_git_dir_flag).unwrap_or(false);
    checkout(source, &resolved, keep, work)
}

/// Sets the access and modification times of `dir` and everything under
/// it (symlinks themselves, not their targets) to `secs`.
fn set_mtimes(dir: &Path, secs: i64) -> Result<(), GitError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GitError::Io { path, source }
    };
    let mut stack = vec![dir.to_path_buf()];
    let mut all = Vec::new();
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            let path = entry.path();
            if entry.file_type().map_err(io(&path))?.is_dir() {
                stack.push(path.clone());
            }
            all.push(path);
        }
        all.push(d);
    }
    let time = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: time,
        last_modification: time,
    };
    for path in all {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &path,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| GitError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(src: &str) -> Option<GitSource> {
        parse_git_source(src).unwrap()
    }

    #[test]
    fn what_counts_as_git() {
        for src in [
            "git://host/repo",
            "GIT://host/repo.git",
            "ssh://git@host/repo",
            "https://host/owner/repo.git",
            "http://host/repo.git#main",
            "git@github.com:moby/buildkit.git",
            "user_1@my-host.example:path/repo#v1:sub",
        ] {
            assert!(parsed(src).is_some(), "{src}");
        }
        for src in [
            "https://host/archive.tar.gz",
            "https://host/repo.git.tar",
            "http://host/x?y=.git",
            "ftp://host/repo.git",
            "file:///srv/repo.git",
            "github.com/moby/buildkit",
            "./repo.git",
            "../git@host:x",
            "src/dir",
            "a@b",
            "user@host/path",
        ] {
            assert!(parsed(src).is_none(), "{src}");
        }
    }

    #[test]
    fn fragment_and_query_give_ref_and_subdir() {
        let g = parsed("https://host/o/r.git#v1.2:/docs/../api/").unwrap();
        assert_eq!(g.remote, "https://host/o/r.git");
        assert_eq!(g.reference, "v1.2");
        assert_eq!(g.subdir, "api");
        let g = parsed("git@host:o/r.git?branch=dev&subdir=x&keep-git-dir=true").unwrap();
        assert_eq!(g.remote, "git@host:o/r.git");
        assert_eq!(g.reference, "refs/heads/dev");
        assert_eq!(g.subdir, "x");
        assert_eq!(g.keep_git_dir, Some(true));
        let g = parsed("git://h/r?tag=v2&checksum=abc1&submodules=false").unwrap();
        assert_eq!(g.reference, "refs/tags/v2");
        assert_eq!(g.checksum.as_deref(), Some("abc1"));
        assert_eq!(g.submodules, Some(false));
        let g = parsed("git://h/r?keep-git-dir").unwrap();
        assert_eq!(g.keep_git_dir, Some(true));
        assert_eq!((g.reference.as_str(), g.subdir.as_str()), ("", ""));
    }

    #[test]
    fn malformed_queries_are_errors_not_paths() {
        for (src, wanted) in [
            ("git://h/r?foo=1", "unexpected query"),
            ("git://h/r?ref=", "has no value"),
            ("git://h/r?tag=a&branch=b", "branch conflicts with tag"),
            ("git://h/r?ref=a&ref=b", "multiple values"),
            ("git://h/r?keep-git-dir=maybe", "invalid keep-git-dir"),
            ("https://h/r.git?ref=x#y", "ref conflicts"),
        ] {
            let err = parse_git_source(src).unwrap_err().to_string();
            assert!(err.contains(wanted), "{src}: {err}");
        }
    }

    /// Runs git in `dir` for a fixture (panics on failure).
    fn fixture_git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=kiln",
                "-c",
                "user.email=kiln@example.invalid",
            ])
            .args(args)
            .env("GIT_COMMITTER_DATE", "2001-02-03T04:05:06Z")
            .env("GIT_AUTHOR_DATE", "2001-02-03T04:05:06Z")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A local path is no URL BuildKit accepts, but git takes it: enough
    /// to check out a commit by id with the commit's time on the files.
    #[test]
    fn fetch_by_commit_with_commit_mtime() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("d")).unwrap();
        fixture_git(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("d/f"), "x").unwrap();
        fixture_git(&repo, &["add", "-A"]);
        fixture_git(&repo, &["commit", "-q", "-m", "one"]);
        let commit = fixture_git(&repo, &["rev-parse", "HEAD"]);
        let mut source = parse_git_source(&format!(
            "git://unused/r.git?fetch-by-commit&checksum={commit}&mtime=commit"
        ))
        .unwrap()
        .unwrap();
        assert!(source.fetch_by_commit && source.mtime_commit);
        source.remote = repo.display().to_string();
        let resolved = resolve_commit(&source).unwrap();
        assert_eq!(resolved.commit, commit);
        let tree = checkout(&source, &resolved, false, &dir.path().join("work")).unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("d/f")).unwrap(), "x");
        assert!(!tree.join(".git").exists());
        for path in [tree.join("d/f"), tree.join("d")] {
            assert_eq!(
                std::fs::metadata(&path).unwrap().mtime(),
                981173106,
                "{path:?}"
            );
        }
        // fetch-by-commit needs the full commit.
        let short = parse_git_source(&format!(
            "git://h/r.git?fetch-by-commit&checksum={}",
            &commit[..8]
        ))
        .unwrap()
        .unwrap();
        let err = resolve_commit(&short).unwrap_err().to_string();
        assert!(err.contains("full commit SHA"), "{err}");
        let err = parse_git_source("git://h/r.git?mtime=never")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid mtime value"), "{err}");
    }

    #[test]
    fn credentials_are_redacted_in_messages() {
        assert_eq!(
            redact("https://me:t0ken@host/r.git#main"),
            "https://xxxxx:xxxxx@host/r.git#main"
        );
        assert_eq!(
            redact("https://t0ken@host/r.git"),
            "https://xxxxx@host/r.git"
        );
        assert_eq!(redact("git@host:r.git"), "git@host:r.git");
        let err = parse_git_source("https://me:t0ken@host/r.git?bad=1")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("t0ken"), "{err}");
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }
}
