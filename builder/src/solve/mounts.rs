//! `RUN --mount`s, typed by the planner, made real for the runtime: cache
//! directories in the store, binds of the context, a stage or an image,
//! tmpfs, secrets and (in run.rs) ssh agents.

use std::path::{Path, PathBuf};

use kiln_layers::Store;
use kiln_parser::mount::MountType;
use kiln_runtime::{BindMount, MemoryFile};

use crate::context::BuildContext;
use crate::copy::{self, CopyOptions};
use crate::plan::{MountImage, RunMount};
use crate::rootfs::{DirTree, LayeredRootfs, SourceTree};
use crate::secrets::SecretMount;

use super::*;

/// The filesystem a mount's `from=` names: a stage's or an image's layers.
pub(super) struct MountFrom {
    /// Snapshot dirs, top first.
    pub(super) lowers: Vec<PathBuf>,
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
) -> Result<MountFrom, SolveError> {
    let found = build
        .resolver
        .resolved(&image.reference, image.digest.as_ref())?;
    let snapshots = build.store.prepare_snapshots(&found, build.opts.reporter)?;
    Ok(MountFrom {
        lowers: snapshots.into_iter().rev().collect(),
        identity: found.manifest_descriptor.digest.to_string(),
    })
}

/// What one `RUN --mount` gives the runtime.
pub(super) enum StepMount {
    Bind(BindMount),
    Memory(MemoryFile),
}

/// `RUN --mount=...`. Supported: `type=cache` (a persistent directory in
/// the store, seeded from `from=` when given), `type=bind` from the
/// context, a stage or an image, `type=tmpfs` (an empty scratch
/// directory), `type=secret` (given with `--secret`). `None` for an
/// optional secret that was not given. The target is relative to the
/// working directory, as BuildKit joins it; `/` itself cannot be mounted on.
pub(super) fn run_mount(
    run: &StepRun<'_>,
    mount: &RunMount,
    workdir: &str,
    from: Option<&MountFrom>,
    scratch: &Path,
) -> Result<Option<StepMount>, String> {
    let (store, context, secrets) = (run.build.store, run.build.context, &run.build.opts.secrets);
    let spec = &mount.spec;
    let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    if spec.mount_type == MountType::Secret {
        // BuildKit's dispatchSecret: the id is `source=`, `id=`, or the
        // target's base name; the target defaults to /run/secrets/<id>.
        let base_name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
        let id = set(&spec.source)
            .or_else(|| set(&spec.id))
            .or_else(|| (!spec.target.is_empty()).then(|| base_name(&spec.target)))
            .ok_or_else(|| "one of source, target required".to_string())?;
        let target = if spec.target.is_empty() {
            format!("/run/secrets/{}", base_name(&id))
        } else {
            spec.target.clone()
        };
        let target = PathBuf::from(crate::plan::normalize_workdir(workdir, &target));
        return match secrets.get(&id) {
            Some(secret) => Ok(Some(match secret.mount_at(target) {
                SecretMount::Bind(bind) => StepMount::Bind(bind),
                SecretMount::Memory(file) => StepMount::Memory(file),
            })),
            None if spec.required => Err(format!(
                "secret {id} is required but was not given (--secret id={id},src=FILE)"
            )),
            None => Ok(None),
        };
    }
    let target = crate::plan::normalize_workdir(workdir, &spec.target);
    if target == "/" {
        return Err(format!("invalid mount target {target:?}"));
    }
    let target = PathBuf::from(target);
    let mkdir =
        |path: &Path| std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()));
    let source = spec.source.clone().unwrap_or_default();
    let rel = crate::rootfs::clean_rel(&source);
    let read_only = spec.read_only;
    match spec.mount_type {
        MountType::Cache => {
            // BuildKit's default id: the target as written, cleaned.
            let id = set(&spec.id).unwrap_or_else(|| crate::dockerignore::go_clean(&spec.target));
            // A cache seeded from `from=` is its own dir per seed content;
            // a plain one keeps the name it always had.
            let key = match from {
                None => id,
                Some(from) => format!("{id}\0{}", from.identity),
            };
            let name = crate::context::hex(&<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
            let dir = store.cache_mounts_dir().join(name);
            if let (Some(from), false) = (from, dir.is_dir()) {
                seed_cache_dir(store, &dir, from, scratch)?;
            }
            mkdir(&dir)?;
            // Its last use, which the store's collection goes by.
            if let Err(e) = store.touch(&dir) {
                tracing::debug!("{e}");
            }
            // `source=` picks a subdirectory of the cache (of the seed),
            // its symlinks resolved inside the cache dir.
            let inside = crate::rootfs::resolve(&DirTree::new(&dir), &rel, true)
                .map_err(|e| e.to_string())?;
            let source = dir.join(inside);
            mkdir(&source)?;
            Ok(Some(StepMount::Bind(BindMount {
                source,
                target,
                read_only,
            })))
        }
        MountType::Tmpfs => {
            mkdir(scratch)?;
            Ok(Some(StepMount::Bind(BindMount {
                source: scratch.to_path_buf(),
                target,
                read_only: false,
            })))
        }
        MountType::Bind => bind_mount(context, &rel, target, read_only, from, scratch)
            .map(|bind| Some(StepMount::Bind(bind))),
        MountType::Secret | MountType::Ssh => Err(format!(
            "--mount type={} is handled elsewhere",
            spec.mount_type.as_str()
        )),
    }
}

/// `type=bind`: the source tree is the context, or a stage's or an
/// image's snapshots seen through an empty upper dir.
fn bind_mount(
    context: &BuildContext,
    rel: &str,
    target: PathBuf,
    read_only: bool,
    from: Option<&MountFrom>,
    scratch: &Path,
) -> Result<BindMount, String> {
    let mkdir =
        |path: &Path| std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()));
    mkdir(scratch)?;
    let layered;
    let tree: &dyn SourceTree = match from {
        None => context,
        Some(from) => {
            let empty = scratch.join("upper");
            mkdir(&empty)?;
            layered = LayeredRootfs::new(&empty, from.lowers.clone());
            &layered
        }
    };
    let resolved = crate::rootfs::resolve(tree, rel, true).map_err(|e| e.to_string())?;
    if from.is_none() && !context.contains(&resolved) {
        return Err(format!("/{rel} is not in the build context"));
    }
    let meta = tree
        .stat(&resolved)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("/{rel} not found"))?;
    // Bound where it lies only when read-only (a context dir, any file). A
    // stack of snapshots is merged into a copy, and a writable mount is a
    // copy whose writes are dropped, as in BuildKit: neither the context
    // nor a snapshot may change.
    let copy_of = |dest: &Path| -> Result<(), String> {
        mkdir(dest)?;
        let target_view = LayeredRootfs::new(dest, Vec::new());
        let mut o = CopyOptions::dockerfile_copy(false);
        o.allow_wildcard = false;
        copy::copy(tree, &resolved, &target_view, "/", &o)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let source = match (meta.is_dir(), read_only) {
        (true, true) if from.is_none() => context.host_path(&resolved),
        (false, true) => tree.host_file(&resolved).map_err(|e| e.to_string())?,
        (true, _) => {
            let merged = scratch.join("merged");
            copy_of(&merged)?;
            merged
        }
        (false, false) => {
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
    })
}

/// Fills a new cache mount dir with the root filesystem of its `from=`
/// (BuildKit's cache mount starts as a copy of its base). Written beside
/// the dir and renamed into place, so a concurrent build sees it whole or
/// not at all.
fn seed_cache_dir(
    store: &Store,
    dir: &Path,
    from: &MountFrom,
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
    let view = LayeredRootfs::new(&empty, from.lowers.clone());
    let target_view = LayeredRootfs::new(&seeding, Vec::new());
    let mut o = CopyOptions::dockerfile_copy(false);
    o.allow_wildcard = false;
    let copied = copy::copy(&view, "", &target_view, "/", &o).map_err(|e| e.to_string());
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
