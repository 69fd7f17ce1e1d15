//! `RUN --mount`s, typed by the planner, made real for the runtime: cache
//! directories in the store, binds of the context, a stage or an image,
//! tmpfs, secrets and (in run.rs) ssh agents.

use std::path::{Path, PathBuf};
use std::sync::PoisonError;

use kiln_layers::Store;
use kiln_parser::mount::MountType;
use kiln_runtime::{BindMount, MemoryFile};

use crate::context::BuildContext;
use crate::copy::{self, CopyOptions};
use crate::plan::{MountImage, RunMount, RunStep};
use crate::rootfs::{DirTree, LayeredRootfs, SourceTree};
use crate::secrets::SecretRequest;
use kiln_parser::mount::Sharing;

use super::*;

/// The filesystem a mount's `from=` names: a stage's or an image's layers,
/// or a named context (`--build-context NAME=DIR`).
pub(super) struct MountFrom<'a> {
    /// Snapshot dirs, top first (none for a named context).
    pub(super) lowers: Vec<PathBuf>,
    /// A named context, as the main one is read: `.dockerignore` applied,
    /// every owner root.
    pub(super) context: Option<(&'a str, &'a BuildContext)>,
    /// What identifies that content (a chain id, a manifest digest): a
    /// cache mount seeded from it is kept apart from one seeded from other
    /// content, as BuildKit keys a cache dir on its base.
    pub(super) identity: String,
}

/// The layers of the image a `RUN --mount=...,from=<image>` names: the
/// manifest the plan resolved (and pulled when missing) for the build's
/// target platform, as for `COPY --from=<image>`.
pub(super) fn mount_image_layers(
    build: &Build<'_>,
    image: &MountImage,
) -> Result<MountFrom<'static>, SolveError> {
    let found = build
        .resolver
        .resolved(&image.reference, image.digest.as_ref())?;
    let snapshots = super::lazy::image_snapshots(build, &found)?;
    Ok(MountFrom {
        lowers: snapshots.into_iter().rev().collect(),
        context: None,
        identity: found.manifest_descriptor.digest.to_string(),
    })
}

/// What one `RUN --mount` gives the runtime.
pub(super) enum StepMount {
    Bind(BindMount),
    Tmpfs(kiln_runtime::TmpfsMount),
    Memory(MemoryFile),
    /// A secret as an environment variable: its name and value.
    Env(String, String),
    /// A lock the step holds until it is over (a cache mount's sharing).
    Lock(std::fs::File),
    /// A cache mount's directory: bound, or under chroot isolation moved
    /// into the step's copy ([`super::placed`]).
    Cache(BindMount),
    /// Under chroot isolation, a cache dir another RUN holds: the step
    /// lets go of what it holds and tries again (no lock order to keep).
    Busy(PathBuf),
}

/// `RUN --mount=...`. Supported: `type=cache` (a persistent directory in
/// the store, seeded from `from=` when given), `type=bind` from the
/// context, a stage or an image, `type=tmpfs` (an empty tmpfs, mode 1777,
/// `size=` its limit), `type=secret` (given with `--secret`). `None` for an
/// optional secret that was not given. The target is relative to the
/// working directory, as BuildKit joins it; `/` itself cannot be mounted on.
pub(super) fn run_mount(
    run: &StepRun<'_>,
    step: &RunStep,
    mount: &RunMount,
    from: Option<&MountFrom<'_>>,
    scratch: &Path,
) -> Result<Vec<StepMount>, String> {
    let secrets = &run.build.opts.secrets;
    let (workdir, namespace) = (step.workdir.as_str(), step.cache_namespace.as_deref());
    let spec = &mount.spec;
    if spec.mount_type == MountType::Secret {
        return secret_mount(spec, workdir, secrets);
    }
    let target = crate::plan::normalize_workdir(workdir, &spec.target);
    if target == "/" {
        return Err(format!("invalid mount target {target:?}"));
    }
    let target = PathBuf::from(target);
    let source = spec.source.clone().unwrap_or_default();
    let rel = crate::rootfs::clean_rel(&source);
    let read_only = spec.read_only;
    match spec.mount_type {
        MountType::Cache => cache_mount(run, namespace, spec, &rel, target, from, scratch),
        MountType::Tmpfs => Ok(vec![StepMount::Tmpfs(kiln_runtime::TmpfsMount {
            target,
            size: spec.size_limit,
            read_only,
        })]),
        MountType::Bind => bind_mount(run.build, &rel, target, read_only, from, scratch)
            .map(|bind| vec![StepMount::Bind(bind)]),
        MountType::Secret | MountType::Ssh => Err(format!(
            "--mount type={} is handled elsewhere",
            spec.mount_type.as_str()
        )),
    }
}

/// `type=cache`: a persistent directory of the store, shared by builds
/// (BuildKit's defaults: the id is the target as written, cleaned; the
/// store's cache namespace, `BUILDKIT_CACHE_MOUNT_NS`, in front of it).
/// `sharing` is enforced across processes with a lock on the directory:
/// `shared` (the default) takes it shared, `locked` exclusive (a second
/// build waits), `private` exclusive without waiting, moving on to another
/// instance of the cache when the first is in use. `uid`, `gid` and `mode`
/// make the mounted directory (a `cache` subdirectory, as BuildKit's
/// setCacheUIDGID) owned and moded so; the step's user can then write it.
/// Each owner and mode is a cache of its own, as in BuildKit.
fn cache_mount(
    run: &StepRun<'_>,
    namespace: Option<&str>,
    spec: &kiln_parser::mount::Mount,
    rel: &str,
    target: PathBuf,
    from: Option<&MountFrom<'_>>,
    scratch: &Path,
) -> Result<Vec<StepMount>, String> {
    let store = run.build.store;
    let id = cache_id(spec);
    let id = match namespace {
        Some(ns) => format!("{ns}/{id}"),
        None => id,
    };
    // The key below puts a NUL after the id: an id with one of its own
    // (`id=x<NUL>owned 0:0:755`) would name another mount's cache.
    if id.contains('\0') {
        return Err(format!(
            "cache id {id:?} contains a NUL byte, which a cache id cannot"
        ));
    }
    // A cache seeded from `from=` is its own dir per seed content, and an
    // owned one (`uid`, `gid`, `mode`) its own per owner and mode, as
    // BuildKit keys a cache on its id and the ref it starts from (the seed,
    // or the `/cache` directory setCacheUIDGID makes); a plain one keeps
    // the name it always had.
    // (BuildKit makes that directory only when no `source=` picks a
    // subdirectory, and its mkdir keeps the permission bits only.)
    let owned = (spec.uid.is_some() || spec.gid.is_some() || spec.mode.is_some()) && rel.is_empty();
    let mut key = id;
    if let Some(from) = from {
        key = format!("{key}\0{}", from.identity);
    }
    if owned {
        key = format!(
            "{key}\0owned {}:{}:{:o}",
            spec.uid.unwrap_or(0),
            spec.gid.unwrap_or(0),
            owned_mode(spec)
        );
    }
    let name = crate::context::hex(&<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
    // Under chroot isolation the cache is moved into the RUN's copy:
    // one RUN at a time holds it, without waiting for it (a RUN holding
    // one cache and waiting for another could wait for a RUN doing the
    // opposite).
    let wait = !run.build.opts.chroot;
    let (dir, lock) = match cache_instance(store, &name, spec.sharing, from, scratch, wait)? {
        Locked::Held(dir, lock) => (dir, lock),
        Locked::Busy(dir) => return Ok(vec![StepMount::Busy(dir)]),
    };
    let (source, within) = if owned {
        (owned_cache_dir(&dir, spec)?, Some(dir.clone()))
    } else if rel.is_empty() {
        (dir.clone(), None)
    } else {
        // `source=` picks a subdirectory of the cache (of the seed), its
        // symlinks resolved inside the cache dir. Another RUN holding the
        // cache may change it meanwhile: the directories are made, and
        // the runtime opens the source, inside the cache dir too.
        let inside =
            crate::rootfs::resolve(&DirTree::new(&dir), rel, true).map_err(|e| e.to_string())?;
        mkdir_inside(&dir, &inside)?;
        (dir.join(inside), Some(dir.clone()))
    };
    Ok(vec![
        StepMount::Cache(BindMount {
            source,
            target,
            read_only: spec.read_only,
            within,
        }),
        StepMount::Lock(lock),
    ])
}

/// Makes the directory `rel` of `dir` and those above it that are missing,
/// each in its parent opened inside `dir` (`RESOLVE_IN_ROOT`): a symlink
/// another RUN holding the cache put on the way meanwhile is resolved
/// inside the cache, never followed out of it (as `create_dir_all` would).
fn mkdir_inside(dir: &Path, rel: &str) -> Result<(), String> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let failed = |e: rustix::io::Errno| format!("{}/{rel}: {e}", dir.display());
    let open = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root = rustix::fs::open(dir, open, Mode::empty()).map_err(failed)?;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let mut parent = String::from(".");
    for name in rel.split('/').filter(|c| !c.is_empty()) {
        let parent_fd =
            kiln_runtime::sys::openat2_retrying(&root, &parent, open, resolve).map_err(failed)?;
        match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(failed(e)),
        }
        parent = format!("{parent}/{name}");
    }
    Ok(())
}

/// A cache mount's id: `id=`, else its target as written, cleaned.
pub(super) fn cache_id(spec: &kiln_parser::mount::Mount) -> String {
    match spec.id.as_deref() {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => crate::dockerignore::go_clean(&spec.target),
    }
}

/// A cache dir locked, or (not waiting) held by another.
enum Locked {
    Held(PathBuf, std::fs::File),
    Busy(PathBuf),
}

/// The cache directory `name` (an instance of it, for `private`), made
/// (seeded from `from`) when missing, and the lock that `sharing` takes on
/// it, held until the step is over. Without `wait` every lock is
/// exclusive and taken only when free (chroot isolation moves the cache).
fn cache_instance(
    store: &Store,
    name: &str,
    sharing: Option<Sharing>,
    from: Option<&MountFrom<'_>>,
    scratch: &Path,
    wait: bool,
) -> Result<Locked, String> {
    use rustix::fs::{flock, FlockOperation};
    for instance in 0.. {
        let dir = match instance {
            0 => store.cache_mounts_dir().join(name),
            n => store.cache_mounts_dir().join(format!("{name}-{n}")),
        };
        if let (Some(from), false) = (from, dir.is_dir()) {
            seed_cache_dir(store, &dir, from, scratch)?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let lock = std::fs::File::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let operation = match (sharing, wait) {
            (None | Some(Sharing::Shared), true) => FlockOperation::LockShared,
            (Some(Sharing::Locked), true) => FlockOperation::LockExclusive,
            (Some(Sharing::Private), _) | (_, false) => FlockOperation::NonBlockingLockExclusive,
        };
        match flock(&lock, operation) {
            Ok(()) => {
                // Its last use, which the store's collection goes by.
                if let Err(e) = store.touch(&dir) {
                    tracing::debug!("{e}");
                }
                return Ok(Locked::Held(dir, lock));
            }
            Err(rustix::io::Errno::WOULDBLOCK) if sharing != Some(Sharing::Private) => {
                return Ok(Locked::Busy(dir))
            }
            Err(rustix::io::Errno::WOULDBLOCK) => continue,
            Err(e) => return Err(format!("locking {}: {e}", dir.display())),
        }
    }
    Err(format!("no instance of cache {name} could be locked"))
}

/// The `cache` subdirectory of a cache dir, owned by `uid`:`gid` with
/// `mode` (0:0 and 0755 by default, as BuildKit's setCacheUIDGID).
fn owned_cache_dir(dir: &Path, spec: &kiln_parser::mount::Mount) -> Result<PathBuf, String> {
    let owned = dir.join("cache");
    let failed = |e: std::io::Error| format!("{}: {e}", owned.display());
    match std::fs::create_dir(&owned) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed(e)),
    }
    // Owner and mode set on the directory opened, never through a symlink
    // put in its place (by a RUN holding another instance of the cache).
    let fd = rustix::fs::open(
        &owned,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            format!("{}: not a directory", owned.display())
        }
        e => failed(e.into()),
    })?;
    rustix::fs::fchown(
        &fd,
        Some(rustix::fs::Uid::from_raw(spec.uid.unwrap_or(0))),
        Some(rustix::fs::Gid::from_raw(spec.gid.unwrap_or(0))),
    )
    .map_err(|e| failed(e.into()))?;
    rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(owned_mode(spec)))
        .map_err(|e| failed(e.into()))?;
    Ok(owned)
}

/// The mode of an owned cache's directory: `mode=` (0755 by default), its
/// permission bits only, as BuildKit's `llb.Mkdir` marshals it.
fn owned_mode(spec: &kiln_parser::mount::Mount) -> u32 {
    spec.mode.unwrap_or(0o755) & 0o777
}

/// A secret mount's id: `source=`, else `id=`, else the target's base
/// name (BuildKit's order); None when the mount names none of them.
pub(crate) fn secret_id(spec: &kiln_parser::mount::Mount) -> Option<String> {
    let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    set(&spec.source)
        .or_else(|| set(&spec.id))
        .or_else(|| (!spec.target.is_empty()).then(|| go_path_base(&spec.target)))
}

/// Go's `path.Base`: the last element, trailing slashes dropped (`a/b/`
/// is `b`); `/` for slashes only, `.` for nothing.
fn go_path_base(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/".into();
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_string()
}

/// `type=secret`, as BuildKit's dispatchSecret: the id is `source=`,
/// `id=`, or the target's base name; with `env=` and no target the secret
/// is only that variable, else a file at the target (by default
/// `/run/secrets/<id>`). A secret that was not given is skipped, unless
/// required. A relative target is relative to the working directory:
/// the frontend passes a secret's target through as written, and the
/// exec op joins every relative mount destination with the working
/// directory (frontend/gateway/container's `PrepareMounts`).
fn secret_mount(
    spec: &kiln_parser::mount::Mount,
    workdir: &str,
    secrets: &BTreeMap<String, crate::secrets::Secret>,
) -> Result<Vec<StepMount>, String> {
    let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let id = secret_id(spec).ok_or_else(|| "one of source, target required".to_string())?;
    let target = match (spec.target.is_empty(), &spec.env) {
        (false, _) => Some(spec.target.clone()),
        (true, None) => Some(format!("/run/secrets/{}", go_path_base(&id))),
        (true, Some(_)) => None,
    };
    let Some(secret) = secrets.get(&id) else {
        return match spec.required {
            true => Err(format!(
                "secret {id} is required but was not given (--secret id={id})"
            )),
            // No file; the variable, set and empty, as BuildKit's
            // loadSecretEnv sets an optional secret it did not find.
            false => Ok(set(&spec.env)
                .map(|name| StepMount::Env(name, String::new()))
                .into_iter()
                .collect()),
        };
    };
    let used = secret.use_for(&SecretRequest {
        target: target.map(|t| PathBuf::from(crate::plan::normalize_workdir(workdir, &t))),
        env: set(&spec.env),
        mode: spec.mode,
        uid: spec.uid,
        gid: spec.gid,
    });
    let mut mounts: Vec<StepMount> = used.file.into_iter().map(StepMount::Memory).collect();
    mounts.extend(used.env.map(|(name, value)| StepMount::Env(name, value)));
    Ok(mounts)
}

/// Copies of the build context that read-only bind mounts show, one per
/// directory a build binds (or the nearest one it already copied that
/// holds it), shared by its RUN steps: the context does not change during
/// a build, and a read-only mount cannot change a copy. BuildKit too
/// copies the context once a build (into a snapshot its mounts bind).
#[derive(Default)]
pub(super) struct ContextCopies {
    /// (context name, `""` the main one; directory) → its copy.
    made: Mutex<BTreeMap<(String, String), PathBuf>>,
}

impl ContextCopies {
    /// The copy of the directory `rel` of the context `name` (`""`: the
    /// main one), made in `work` by `copy` unless a copy holding it exists.
    fn get_or_make(
        &self,
        name: &str,
        rel: &str,
        work: &Path,
        copy: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<PathBuf, String> {
        // Held while copying: a second step binding the same directory
        // waits for this copy rather than making its own.
        let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        for ((context, dir), path) in made.iter() {
            if context != name {
                continue;
            }
            let below = if dir.is_empty() {
                Some(rel)
            } else {
                rel.strip_prefix(dir.as_str())
                    .and_then(|rest| rest.strip_prefix('/').or(rest.is_empty().then_some("")))
            };
            if let Some(below) = below {
                return Ok(if below.is_empty() {
                    path.clone()
                } else {
                    path.join(below)
                });
            }
        }
        let dest = work.join(format!("context-copy-{}", made.len()));
        copy(&dest)?;
        made.insert((name.to_string(), rel.to_string()), dest.clone());
        Ok(dest)
    }
}

/// `type=bind`: the source tree is the context, or a stage's or an
/// image's snapshots seen through an empty upper dir.
fn bind_mount(
    build: &Build<'_>,
    rel: &str,
    target: PathBuf,
    read_only: bool,
    from: Option<&MountFrom<'_>>,
    scratch: &Path,
) -> Result<BindMount, String> {
    let mkdir =
        |path: &Path| std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()));
    mkdir(scratch)?;
    // The main context, a named one, or snapshots through an empty upper.
    let context = match from {
        None => Some(("", build.context)),
        Some(from) => from.context,
    };
    let layered;
    let tree: &dyn SourceTree = match (context, from) {
        (Some((_, context)), _) => context,
        (None, Some(from)) => {
            let empty = scratch.join("upper");
            mkdir(&empty)?;
            layered = LayeredRootfs::new(&empty, from.lowers.clone());
            &layered
        }
        (None, None) => build.context,
    };
    let resolved = crate::rootfs::resolve(tree, rel, true).map_err(|e| e.to_string())?;
    if let Some((name, context)) = context {
        if !context.contains(&resolved) {
            let which = if name.is_empty() {
                "the build context".to_string()
            } else {
                format!("the build context {name}")
            };
            return Err(format!("/{rel} is not in {which}"));
        }
    }
    let meta = tree
        .stat(&resolved)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("/{rel} not found"))?;
    // Bound where it lies only when read-only and a snapshot's file, or a
    // context directory the host has as the build sees it. Otherwise the
    // context is a copy (one a build, shared), as BuildKit mounts the
    // context it was sent: `.dockerignore` applied, every owner root (the
    // docker CLI and buildx send it so). A stack of snapshots is merged
    // into a copy, and a writable mount is a copy whose writes are
    // dropped, as in BuildKit: neither the context nor a snapshot may
    // change.
    let copy_of = |dest: &Path| -> Result<(), String> {
        mkdir(dest)?;
        let target_view = LayeredRootfs::new(dest, Vec::new());
        let mut o = CopyOptions::dockerfile_copy(false);
        o.allow_wildcard = false;
        copy::copy(tree, &resolved, &target_view, "/", &o)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let source = match (meta.is_dir(), context) {
        // A snapshot's file, read-only: bound where it lies.
        (false, None) if read_only => tree.host_file(&resolved).map_err(|e| e.to_string())?,
        // A context's directory, read-only: where it lies when the host
        // has it as the build sees it (nothing excluded, every owner
        // root), else the build's one copy of it.
        (true, Some((_, context))) if read_only && context.is_as_seen(&resolved) => {
            context.host_path(&resolved)
        }
        (true, Some((name, _))) if read_only => {
            (build.context_copies).get_or_make(name, &resolved, build.work, copy_of)?
        }
        (true, _) => {
            let merged = scratch.join("merged");
            copy_of(&merged)?;
            merged
        }
        (false, _) => {
            let dir = scratch.join("file");
            copy_of(&dir)?;
            let name = resolved.rsplit('/').next().unwrap_or(&resolved);
            dir.join(name)
        }
    };
    Ok(BindMount {
        source,
        target,
        read_only,
        within: None,
    })
}

/// Fills a new cache mount dir with the root filesystem of its `from=`
/// (BuildKit's cache mount starts as a copy of its base). Written beside
/// the dir and renamed into place, so a concurrent build sees it whole or
/// not at all.
fn seed_cache_dir(
    store: &Store,
    dir: &Path,
    from: &MountFrom<'_>,
    scratch: &Path,
) -> Result<(), String> {
    let mkdir =
        |path: &Path| std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()));
    let parent = dir
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", dir.display()))?;
    mkdir(parent)?;
    // Named with its owner: a killed build's half-seeded copy is removed
    // by the next build (`Store::remove_dead_scratch`).
    let seeding = parent.join(format!("seeding-{}", kiln_layers::store::unique_suffix()));
    mkdir(&seeding)?;
    let empty = scratch.join("seed-upper");
    mkdir(&empty)?;
    let layered = LayeredRootfs::new(&empty, from.lowers.clone());
    // A named context as the build sees it, else the snapshots.
    let view: &dyn SourceTree = match from.context {
        Some((_, context)) => context,
        None => &layered,
    };
    let target_view = LayeredRootfs::new(&seeding, Vec::new());
    let mut o = CopyOptions::dockerfile_copy(false);
    o.allow_wildcard = false;
    let copied = copy::copy(view, "", &target_view, "/", &o).map_err(|e| e.to_string());
    let placed = copied.and_then(|_| match std::fs::rename(&seeding, dir) {
        Ok(()) => Ok(()),
        // Another build seeded it first: theirs is as good.
        Err(_) if dir.is_dir() => Ok(()),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    });
    if seeding.exists() {
        let _ = store.abandon(&seeding, "cache-mount");
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::{go_path_base, mkdir_inside};

    /// Go's `path.Base`, which BuildKit takes a secret's id and default
    /// file name with.
    #[test]
    fn path_base_as_go_has_it() {
        for (path, base) in [
            ("a/b", "b"),
            ("a/b/", "b"),
            ("/run/secrets/tok", "tok"),
            ("tok", "tok"),
            ("///", "/"),
            ("", "."),
        ] {
            assert_eq!(go_path_base(path), base, "{path:?}");
        }
    }

    /// A symlink on the way (another RUN holding the cache swapped it in)
    /// is resolved inside the cache dir: nothing is made where it points
    /// on the host, as `create_dir_all` would make it.
    #[test]
    fn mkdir_inside_does_not_follow_a_symlink_out_of_the_cache() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cache, host) = (tmp.path().join("cache"), tmp.path().join("host"));
        std::fs::create_dir_all(&cache).expect("cache dir");
        std::fs::create_dir_all(&host).expect("host dir");
        std::os::unix::fs::symlink(&host, cache.join("sub")).expect("symlink");

        let made = mkdir_inside(&cache, "sub/deeper");
        assert!(made.is_err(), "{made:?}");
        assert_eq!(std::fs::read_dir(&host).expect("host").count(), 0);

        // Aimed inside the cache, the symlink is followed there.
        std::fs::remove_file(cache.join("sub")).expect("unlink");
        std::os::unix::fs::symlink("/inside", cache.join("sub")).expect("symlink");
        std::fs::create_dir(cache.join("inside")).expect("inside");
        mkdir_inside(&cache, "sub/deeper").expect("made inside");
        assert!(cache.join("inside/deeper").is_dir());
        assert_eq!(std::fs::read_dir(&host).expect("host").count(), 0);
        // Plain directories are made one level at a time.
        mkdir_inside(&cache, "a/b/c").expect("made");
        assert!(cache.join("a/b/c").is_dir());
    }
}
