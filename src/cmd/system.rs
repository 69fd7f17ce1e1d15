//! The store's garbage collection from the command line: `kiln prune`'s
//! flags and report, `kiln system df`, the automatic collection after a
//! build (a detached `kiln __gc`, or in the build's own process with
//! `KILN_GC=foreground`), and the collection before a build when the
//! filesystem has less free than the policy's min-free-space. The policy
//! and the collection itself live in `kiln_layers::gc`.

use std::io::Write;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use kiln_layers::gc::{
    parse_duration, Area, CollectOptions, Disk, GcConfig, Kind, LockWait, Pacing, Policy,
    SealFirst, Space, SEAL_INTERVAL,
};
use kiln_layers::store::PruneReport;
use kiln_layers::Store;

use crate::progress::human_bytes;
use crate::settings::{GlobalSettings, Reads};

/// The hidden subcommand a build starts to collect after it returns.
pub const GC_SUBCOMMAND: &str = "__gc";

/// How long a build waits for other kiln processes before collecting to
/// make room (min-free-space); then it builds without.
const MAKE_ROOM_WAIT: Duration = Duration::from_secs(10);

/// How old the last automatic collection may be before a build that added
/// nothing to the store starts one anyway (keep-duration counts time).
const COLLECTION_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// The store's disk usage.
    #[command(subcommand)]
    System(SystemSubcommand),
    /// Internal: the automatic collection a build starts after it returns.
    #[command(name = GC_SUBCOMMAND, hide = true)]
    Gc {
        /// Paced as after a build (`Pacing::AFTER_BUILD`); without it, the
        /// collection starts as soon as its turn comes.
        #[arg(long = AFTER_BUILD_FLAG)]
        after_build: bool,
    },
}

/// The flag a build passes to the collection it starts.
const AFTER_BUILD_FLAG: &str = "after-build";

#[derive(Debug, Subcommand)]
pub enum SystemSubcommand {
    /// Show the bytes each kind of data in the store holds, as `du` counts
    /// them, and what `kiln prune --all` would free.
    Df {
        #[arg(long, value_enum, default_value_t = DfFormat::Table)]
        format: DfFormat,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DfFormat {
    Table,
    Json,
}

/// `kiln prune`'s flags (BuildKit's and `docker buildx prune`'s).
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Also remove the build cache, RUN cache mounts and untagged images.
    #[arg(short, long)]
    all: bool,
    /// Remove nothing; say what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Remove, least recently used first, until at most this much
    /// collectable data is left (e.g. 5GB, 10%); --min-free-space may take
    /// it lower.
    #[arg(long, value_name = "SIZE")]
    max_used_space: Option<String>,
    /// Remove, least recently used first, until the store's filesystem has
    /// this much free (e.g. 2GB, 10%).
    #[arg(long, value_name = "SIZE")]
    min_free_space: Option<String>,
    /// Keep at least this much collectable data, whatever the other limits;
    /// alone, remove down to it.
    #[arg(long, value_name = "SIZE")]
    reserved_space: Option<String>,
    /// The older name of --reserved-space, as in buildx.
    #[arg(long, value_name = "SIZE")]
    keep_storage: Option<String>,
    /// `until=DURATION`: only what was last used longer ago (e.g. 24h);
    /// `type=KIND`: only this kind (cache, cache-mount, dangling,
    /// unreferenced, scratch, or BuildKit's regular and exec.cachemount;
    /// repeatable).
    #[arg(long = "filter", value_name = "until=DURATION|type=KIND")]
    filters: Vec<String>,
}

impl SystemCommand {
    /// The global settings this command reads (see [`Reads`]).
    pub fn reads(&self) -> Reads {
        Reads::STORE
    }

    pub fn run(self, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        // The collection after a command whose store is gone (a temporary
        // one, deleted before the collection's turn came): nothing to
        // collect, and no store is made there.
        if matches!(self, SystemCommand::Gc { .. }) && !Store::exists_at(&settings.root) {
            return Ok(ExitCode::SUCCESS);
        }
        let store = Store::open(&settings.root)
            .with_context(|| format!("opening the store at {}", settings.root.display()))?;
        match self {
            SystemCommand::System(SystemSubcommand::Df { format }) => df(&store, format),
            SystemCommand::Gc { after_build } => {
                let pacing = if after_build {
                    Pacing::AFTER_BUILD
                } else {
                    Pacing::NONE
                };
                auto_collect(&store, pacing)?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// A size flag (`--keep-storage 0` keeps nothing, as in buildx).
fn space_flag(flag: &str, value: &Option<String>) -> anyhow::Result<Option<Space>> {
    value
        .as_deref()
        .map(|v| Space::parse(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
        .transpose()
}

impl PruneArgs {
    /// The policy the flags ask for, as `docker buildx prune` reads them.
    /// Without --all, types or limits: what nothing uses (unreferenced
    /// blobs and snapshots, scratch). With a limit (--max-used-space,
    /// --min-free-space, --reserved-space or its older name
    /// --keep-storage, until=): the automatic collection's kinds. --all:
    /// every kind.
    pub fn policy(&self) -> anyhow::Result<Policy> {
        let mut types = Vec::new();
        let mut until = None;
        for filter in &self.filters {
            match filter.split_once('=') {
                Some(("type", kind)) => types.push(Kind::parse(kind).map_err(anyhow::Error::msg)?),
                // One value, as buildx takes it ("filters expect only one
                // value"): two would leave one doing nothing.
                Some(("until", _)) if until.is_some() => {
                    bail!(
                        "--filter until=: filters expect only one value, and until is given twice"
                    )
                }
                Some(("until", d)) => {
                    until = Some(parse_duration(d).map_err(|e| anyhow::anyhow!("--filter: {e}"))?)
                }
                _ => bail!("--filter {filter:?}: expected until=DURATION or type=KIND"),
            }
        }
        if self.all && !types.is_empty() {
            bail!("--all and --filter type= both choose what is removed: give one");
        }
        let mut policy = Policy::all_of(types.iter().copied());
        let max_used = space_flag("max-used-space", &self.max_used_space)?;
        policy.min_free_space = space_flag("min-free-space", &self.min_free_space)?;
        policy.reserved_space = match (&self.keep_storage, &self.reserved_space) {
            (Some(_), Some(_)) => {
                bail!("--keep-storage is the older name of --reserved-space: give one")
            }
            (Some(_), None) => space_flag("keep-storage", &self.keep_storage)?,
            (None, _) => space_flag("reserved-space", &self.reserved_space)?,
        };
        policy.until = until;
        // A size limit replaces "keep nothing" (see `Policy::keep_bytes`).
        let limited = max_used.is_some()
            || policy.min_free_space.is_some()
            || policy.reserved_space.is_some();
        if limited {
            policy.keep_storage = max_used;
        }
        if types.is_empty() {
            policy.types = if self.all {
                Kind::ALL.into_iter().collect()
            } else if limited || until.is_some() {
                Policy::default_types()
            } else {
                [Kind::Unreferenced, Kind::Scratch].into_iter().collect()
            };
        }
        Ok(policy)
    }
}

/// `kiln prune`: collects (or, with --dry-run, says what it would) and
/// reports what each kind freed; also removes the run scratch of dead
/// processes on the tmpfs.
pub fn prune(store: &Store, args: &PruneArgs) -> anyhow::Result<ExitCode> {
    let policy = args.policy()?;
    let options = CollectOptions {
        dry_run: args.dry_run,
        wait: LockWait::Block,
        seal: SealFirst::Always,
    };
    let report = store.collect(&policy, &options)?.unwrap_or_default();
    let runs = if !policy.types.contains(&Kind::Scratch) {
        (0, 0)
    } else if args.dry_run {
        let dead = kiln_runtime::dead_scratch();
        (dead.len(), dead.iter().map(|(_, b)| b).sum())
    } else {
        let removed = kiln_runtime::remove_dead_scratch();
        (removed.dirs, removed.bytes)
    };
    print_report(&report, runs, args.dry_run)?;
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &PruneReport, runs: (usize, u64), dry_run: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let verb = if dry_run { "would delete" } else { "deleted" };
    for d in &report.blobs {
        writeln!(out, "{verb}: {d}")?;
    }
    let total = report.total_bytes() + runs.1;
    let head = if dry_run {
        "Would reclaim"
    } else {
        "Total reclaimed space"
    };
    writeln!(
        out,
        "{head}: {} ({total} bytes; in the store {} bytes)",
        human_bytes(total),
        report.total_bytes()
    )?;
    let rows = [
        ("blobs", report.blobs.len(), report.blob_bytes),
        ("snapshots", report.snapshots.len(), report.snapshot_bytes),
        ("partial writes", report.ingest_files, report.ingest_bytes),
        (
            "cache records",
            report.cache_records,
            report.cache_record_bytes,
        ),
        ("leftover build dirs", report.build_dirs, report.build_bytes),
        (
            "cache mounts",
            report.cache_mounts,
            report.cache_mount_bytes,
        ),
        ("trash entries", report.trash_entries, report.trash_bytes),
        ("variant records", report.variants, report.variant_bytes),
        ("dead run dirs", runs.0, runs.1),
    ];
    for (what, count, bytes) in rows {
        writeln!(
            out,
            "  {what}: {count}, {} ({bytes} bytes)",
            human_bytes(bytes)
        )?;
    }
    writeln!(out, "  dangling images: {}", report.images.len())?;
    let keep = match report.keep {
        Some(k) => format!("; the limits keep {k} bytes"),
        None => String::new(),
    };
    writeln!(
        out,
        "Collectable data: {} bytes before, {} bytes after{keep}",
        report.usage_before, report.usage_after
    )?;
    Ok(())
}

/// `kiln system df`.
fn df(store: &Store, format: DfFormat) -> anyhow::Result<ExitCode> {
    let usage = store.usage()?;
    let config = store.gc_config()?;
    let mut out = std::io::stdout().lock();
    let total = usage.total;
    let reclaimable: u64 = usage.areas.values().map(|a| a.reclaimable).sum();
    let limit = |s: Option<Space>| s.map(|s| s.bytes(usage.disk.total));
    if let DfFormat::Json = format {
        let areas: Vec<_> = usage
            .areas
            .iter()
            .map(|(area, a)| {
                serde_json::json!({
                    "Type": area.name(),
                    "Size": a.bytes,
                    "Reclaimable": a.reclaimable,
                })
            })
            .collect();
        let json = serde_json::json!({
            "Areas": areas,
            "Total": total,
            "Reclaimable": reclaimable,
            "Collectable": usage.collectable,
            "Filesystem": { "Size": usage.disk.total, "Free": usage.disk.free },
            "GC": {
                "Enabled": config.enabled,
                "KeepStorage": limit(config.policy.keep_storage),
                "MinFreeSpace": limit(config.policy.min_free_space),
            },
        });
        serde_json::to_writer_pretty(&mut out, &json)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{:<16} {:>10} {:>12}", "TYPE", "SIZE", "RECLAIMABLE")?;
    for area in Area::ALL {
        let a = usage.areas.get(&area).copied().unwrap_or_default();
        writeln!(
            out,
            "{:<16} {:>10} {:>12}",
            area.name(),
            human_bytes(a.bytes),
            human_bytes(a.reclaimable)
        )?;
    }
    writeln!(
        out,
        "{:<16} {:>10} {:>12}",
        "total",
        human_bytes(total),
        human_bytes(reclaimable)
    )?;
    if let Ok(last) = std::fs::read_to_string(store.gc_log_path()) {
        writeln!(out, "Last automatic collection: {}", last.trim_end())?;
    }
    let show = |s: Option<u64>| s.map_or("none".to_string(), human_bytes);
    writeln!(
        out,
        "\nCollectable data (what keep-storage limits): {}\nAutomatic collection: {}, \
         keep-storage {}, min-free-space {} ({} free of {})",
        human_bytes(usage.collectable),
        if config.enabled { "on" } else { "off" },
        show(limit(config.policy.keep_storage)),
        show(limit(config.policy.min_free_space)),
        human_bytes(usage.disk.free),
        human_bytes(usage.disk.total),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// How the automatic collection runs after a build (`KILN_GC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcMode {
    /// A `kiln __gc` process of its own, which the build does not wait for,
    /// paced as buildkitd's GC (`Pacing::AFTER_BUILD`).
    Detached,
    /// In the build's process, before it exits, unpaced: once a running
    /// collection has finished (for tests and scripts that want the store
    /// collected when the build returns).
    Foreground,
}

impl GcMode {
    /// From `KILN_GC` (`detached`, the default, or `foreground`).
    pub fn from_env() -> anyhow::Result<GcMode> {
        match std::env::var("KILN_GC").as_deref() {
            Err(_) | Ok("" | "detached") => Ok(GcMode::Detached),
            Ok("foreground") => Ok(GcMode::Foreground),
            Ok(other) => bail!("KILN_GC={other:?}: expected detached or foreground"),
        }
    }
}

/// Before a build: when the store's filesystem has less free than the
/// policy's min-free-space, collects first (waiting up to 10 s for other
/// kiln processes to release the store) and says so on stderr. Only what
/// min-free-space asks for is removed now (garbage, then the least
/// recently used until there is enough free, never below reserved-space);
/// keep-storage and keep-duration are left to the collection after the
/// build, off its path. The policy file is read (and checked) here.
pub fn make_room(store: &Store, quiet: bool) -> anyhow::Result<()> {
    let config = store.gc_config()?;
    let Some(min_free) = config.policy.min_free_space.filter(|_| config.enabled) else {
        return Ok(());
    };
    let disk = Disk::of(store.root())?;
    let wanted = min_free.bytes(disk.total);
    if disk.free >= wanted {
        return Ok(());
    }
    let policy = Policy {
        keep_storage: None,
        keep_duration: None,
        ..config.policy
    };
    // The build waits for this one: no seal (the automatic collection
    // after the build seals when one is due).
    let options = CollectOptions {
        dry_run: false,
        wait: LockWait::Poll(MAKE_ROOM_WAIT),
        seal: SealFirst::Never,
    };
    let report = store.collect(&policy, &options)?;
    if quiet {
        return Ok(());
    }
    let short = format!(
        "kiln: {} free on the store's filesystem, less than min-free-space {}",
        human_bytes(disk.free),
        human_bytes(wanted)
    );
    match report {
        Some(r) => eprintln!(
            "{short}: collected {} first ({} cache records, {} cache mounts, {} blobs, \
             {} snapshots); {} free now",
            human_bytes(r.total_bytes()),
            r.cache_records,
            r.cache_mounts,
            r.blobs.len(),
            r.snapshots.len(),
            human_bytes(Disk::of(store.root())?.free)
        ),
        None => eprintln!("{short}; other kiln processes are using the store: nothing collected"),
    }
    Ok(())
}

/// Whether a build that began when the store's content stamp was `before`
/// needs the automatic collection after it: it added or removed something
/// there (a new blob, snapshot, record, tag, trash entry…), or the last
/// automatic collection is more than [`COLLECTION_INTERVAL`] old (or
/// unknown, or older than the policy file). A build whose steps were all cached and whose image was
/// already tagged so changes nothing a collection would see: it starts
/// none, which a build right after it would otherwise compete with.
pub fn collection_needed(store: &Store, before: &kiln_layers::ContentStamp) -> bool {
    if store.content_stamp() != *before {
        return true;
    }
    let modified = |path: std::path::PathBuf| std::fs::metadata(path).and_then(|m| m.modified());
    let Ok(last) = modified(store.gc_log_path()) else {
        return true;
    };
    // A policy changed since the last collection (limits lowered) counts.
    let policy_newer = modified(store.gc_config_path()).is_ok_and(|p| p > last);
    policy_newer
        || last
            .elapsed()
            .map_or(true, |age| age >= COLLECTION_INTERVAL)
}

/// After a build (or run) has returned its result: the automatic
/// collection, detached (the default) or in this process. Never fails the
/// command: a collection that cannot start is a warning.
pub fn collect_after(store: &Store, mode: GcMode) {
    let result = match mode {
        GcMode::Detached => {
            // A store whose policy turns collection off gets no process
            // (nor a queue lock) after each command. (A policy that does
            // not parse is the collector's to report, in `gc.log`.)
            if store.gc_config().is_ok_and(|config| !config.enabled) {
                return;
            }
            // One waiting for its turn will see what this command did;
            // another would start only to leave at once. (When the lock
            // cannot be tried, the collector is started as before and
            // meets the problem on its own, in `gc.log`.)
            if matches!(store.collection_waiting(), Ok(true)) {
                return;
            }
            spawn_collector(store.root())
        }
        GcMode::Foreground => auto_collect(store, Pacing::NONE),
    };
    if let Err(e) = result {
        tracing::warn!("collecting the store at {}: {e:#}", store.root().display());
    }
}

/// Starts `kiln --root ROOT __gc --after-build` in a process group of its
/// own, without stdin, stdout or stderr, in `/` (it may wait a minute: it
/// keeps no directory of the caller's busy), and does not wait for it.
/// (It inherits no other descriptor: `main` marks them all close-on-exec.)
fn spawn_collector(root: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding kiln's own executable")?;
    let root = std::path::absolute(root)
        .with_context(|| format!("the store's path {}", root.display()))?;
    std::process::Command::new(&exe)
        .arg("--root")
        .arg(&root)
        .current_dir("/")
        .arg(GC_SUBCOMMAND)
        .arg(format!("--{AFTER_BUILD_FLAG}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} {GC_SUBCOMMAND}", exe.display()))?;
    Ok(())
}

/// The automatic collection: the store's policy (`gc.toml`), when
/// enabled, in its turn as `pacing` lets it (see `Store::gc_turn`), then
/// the run scratch of dead processes on the tmpfs. The policy is read
/// again once the turn comes (it may have changed while this one waited).
/// What it did, or its error, is written to `gc.log` (the detached
/// collection has no stderr) before its turn ends.
fn auto_collect(store: &Store, pacing: Pacing) -> anyhow::Result<()> {
    if !policy_or_log(store)?.enabled {
        return Ok(());
    }
    let Some(_turn) = store.gc_turn(pacing)? else {
        // The waiting collection will see what this one would.
        return Ok(());
    };
    let config = policy_or_log(store)?;
    if !config.enabled {
        return Ok(());
    }
    let result = collect_by_policy(store, &config.policy);
    match &result {
        Ok(line) => write_gc_log(store, line),
        Err(e) => write_gc_log(store, &format!("failed: {e:#}")),
    }
    result.map(|_| ())
}

/// The store's policy; an error in it goes to `gc.log` too.
fn policy_or_log(store: &Store) -> anyhow::Result<GcConfig> {
    store.gc_config().map_err(|e| {
        write_gc_log(store, &format!("failed: {e}"));
        e.into()
    })
}

/// One automatic collection under `policy`; returns what it did, in a line.
fn collect_by_policy(store: &Store, policy: &Policy) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    let options = CollectOptions {
        dry_run: false,
        wait: LockWait::Block,
        seal: SealFirst::IfOlderThan(SEAL_INTERVAL),
    };
    let report = store.collect(policy, &options)?.unwrap_or_default();
    let runs = if policy.types.contains(&Kind::Scratch) {
        kiln_runtime::remove_dead_scratch().bytes
    } else {
        0
    };
    let limit = match report.keep {
        Some(k) => format!(" (the limits keep {k} bytes)"),
        None => String::new(),
    };
    let seal = match &report.unsealed {
        None => format!("synced {} ms", report.synced.as_millis()),
        Some(why) => format!("not sealed: {why}"),
    };
    let waited = report.waited.as_millis();
    let rescan = report
        .rescanned
        .map(|scan| {
            format!(
                "; scanned the store again under the lock ({}; in {} ms; snapshots and \
                 parked dirs walked for want of a size: {})",
                scan.why,
                scan.took.as_millis(),
                scan.walked
            )
        })
        .unwrap_or_default();
    let line = format!(
        "collected {} bytes in the store and {runs} bytes of dead runs' scratch; \
         collectable data {} -> {} bytes{limit}{rescan}; worked {} ms ({seal}), \
         waited {waited} ms of it for the builds using the store, held the store {} ms",
        report.total_bytes(),
        report.usage_before,
        report.usage_after,
        started.elapsed().as_millis(),
        report.exclusive.as_millis(),
    );
    tracing::info!("{line}");
    Ok(line)
}

/// Rewrites `gc.log` with `line`, the time and this process's id (a
/// failure to write it is only logged: there is no one else to tell).
fn write_gc_log(store: &Store, line: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let text = format!(
        "{} automatic collection (pid {}): {line}\n",
        kiln_layers::oci::rfc3339(now),
        std::process::id()
    );
    // Written aside and renamed, so that `system df` never reads half.
    let path = store.gc_log_path();
    let part = path.with_extension(format!("log.{}", std::process::id()));
    if let Err(e) = std::fs::write(&part, text).and_then(|()| std::fs::rename(&part, &path)) {
        tracing::warn!("{}: {e}", path.display());
        let _ = std::fs::remove_file(&part);
    }
}
