//! RUN: the runtime spec of a step (mounts, environment, limits), its
//! output relayed as it comes, its failure reported with the output's tail.
//! With the copying snapshotter ([`super::copying`]) the RUN runs in a copy
//! of its layers, compared with them afterwards into its upper dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_parser::mount::MountType;
use kiln_runtime::{BindMount, MemoryFile, Network, RunSpec, Snapshotter, UpperDir};

use crate::plan::{MountSource, Plan, RunMount, RunStep, StepKind};
use crate::rootfs::LayeredRootfs;

use super::copying::CopiedRoot;
use super::placed::{PlaceRequest, Placed, Placement};

use super::*;

/// Runs a RUN step in the runtime, over `rootfs`, with its work files in
/// `dir`.
pub(super) fn execute_run(
    run: &StepRun<'_>,
    r: &RunStep,
    rootfs: &LayeredRootfs,
    dir: &Path,
) -> Result<(), SolveError> {
    // Refused before any mount is made (a cache locked, a relay started,
    // a stage materialised); a build refuses it before its first step.
    if run.build.opts.chroot {
        let given = ChrootGiven {
            secrets: &run.build.opts.secrets,
            ssh: &run.build.opts.ssh,
        };
        if let Some(what) = chroot_refusal(r, &given) {
            return Err(run.error(chroot_message(what)));
        }
    }
    // The ssh relays serve until the RUN is over (dropped at the end).
    let mounts = held_mounts(run, r, dir)?;
    // The copying snapshotter: the RUN works on a copy of its layers.
    let copied = match run.build.opts.snapshotter {
        Snapshotter::Overlay => None,
        Snapshotter::Copy => Some(
            CopiedRoot::make(rootfs, &dir.join("rootfs"))
                .map_err(|e| run.error(format!("copying the root filesystem: {e}")))?,
        ),
    };
    let mut spec = run_spec(run, r, rootfs, dir, &mounts)?;
    spec.root_dir = copied.as_ref().map(|c| c.dir().to_path_buf());
    spec.chroot = run.build.opts.chroot;
    // chroot isolation mounts nothing: /dev, caches and tmpfs are placed
    // in the copy, and taken out before it is compared with the layers.
    let placed = match (&copied, spec.chroot) {
        (Some(copied), true) => Some(
            Placed::place(copied.dir(), &dir.join("placed"), &mounts.placed)
                .map_err(|e| run.error(e))?,
        ),
        _ => None,
    };
    let ran = run_with_output(run, spec);
    // Taken out whatever happened: a cache's entries go back.
    let taken_out = placed.map_or(Ok(()), Placed::take_out);
    let (status, last_lines) = ran?;
    // A step that failed at a limit is an error that names it; its output
    // still tells what was running. A heredoc script whose interpreter is
    // missing names it and its line.
    let status = status.map_err(|e| {
        if matches!(e, kiln_runtime::RuntimeError::Canceled) {
            return SolveError::Canceled;
        }
        run.error(match (&r.script, &e) {
            (
                Some(script),
                kiln_runtime::RuntimeError::Exec {
                    program, reason, ..
                },
            ) if *program == format!("/dev/pipes/{}", script.name) => {
                script_exec_error(script, reason)
            }
            _ => format!("{e}{}", tail(&last_lines)),
        })
    })?;
    if !status.success() {
        return Err(SolveError::RunFailed {
            line: run.step.line,
            instruction: run.step.instruction.clone(),
            code: status.code(),
            last_lines,
        });
    }
    taken_out.map_err(|e| run.error(e))?;
    if let Some(copied) = copied {
        copied.diff_into(rootfs, rootfs.upper()).map_err(|e| {
            run.error(format!(
                "comparing the root filesystem with its layers: {e}"
            ))
        })?;
    }
    Ok(())
}

/// The secrets and ssh agents a build was given: a RUN mounts one only when
/// it was given (or fails when it is required).
pub(crate) struct ChrootGiven<'a> {
    pub(crate) secrets: &'a BTreeMap<String, crate::secrets::Secret>,
    pub(crate) ssh: &'a crate::ssh::SshAgents,
}

/// Every RUN of the plan's needed stages that chroot isolation cannot run
/// as asked is refused, naming its line, before any step runs (a refused
/// RUN late in the Dockerfile fails the build before the earlier ones
/// run, cached or not).
pub(crate) fn refuse_under_chroot(plan: &Plan, given: &ChrootGiven<'_>) -> Result<(), SolveError> {
    let steps = plan
        .stages
        .iter()
        .filter(|s| s.needed)
        .flat_map(|s| &s.steps);
    for step in steps {
        let StepKind::Run(r) = &step.kind else {
            continue;
        };
        if let Some(what) = chroot_refusal(r, given) {
            return Err(SolveError::Step {
                line: step.line,
                instruction: step.instruction.clone(),
                message: chroot_message(what),
            });
        }
    }
    Ok(())
}

/// The refusal of `what`, with what chroot isolation supports.
fn chroot_message(what: &str) -> String {
    format!(
        "{what} cannot work with --isolation chroot, which can make no mount and no namespace \
         and runs every RUN alike; supported there: RUN --mount=type=cache (moved into the \
         RUN's copy and back, one RUN at a time), type=tmpfs without size=, type=secret with \
         env=; no --network=none, --add-host, --shm-size or --security=insecure, and no \
         BUILDKIT_SANDBOX_HOSTNAME"
    )
}

/// What of `r` chroot isolation cannot do: it mounts nothing, has no
/// network or UTS namespace and runs every RUN with the same privileges.
fn chroot_refusal(r: &RunStep, given: &ChrootGiven<'_>) -> Option<&'static str> {
    let mounted = |kind: MountType| r.mounts.iter().any(|m| m.spec.mount_type == kind);
    let ssh_relayed = r
        .mounts
        .iter()
        .filter(|m| m.spec.mount_type == MountType::Ssh)
        .enumerate()
        .any(|(index, m)| {
            crate::ssh::SshMount::new(&m.spec, index)
                .is_ok_and(|ssh| given.ssh.contains_key(&ssh.id))
        });
    // A secret given becomes a file unless it is only an env= variable.
    let secret_file = r.mounts.iter().any(|m| {
        m.spec.mount_type == MountType::Secret
            && (!m.spec.target.is_empty() || m.spec.env.is_none())
            && super::secret_id(&m.spec).is_some_and(|id| given.secrets.contains_key(&id))
    });
    let caches: Vec<_> = r
        .mounts
        .iter()
        .filter(|m| m.spec.mount_type == MountType::Cache)
        .collect();
    // Held exclusively by the RUN: the same cache twice would wait for
    // itself (a private one takes another instance).
    let cache_twice = caches.iter().enumerate().any(|(i, a)| {
        caches[..i].iter().any(|b| {
            super::mounts::cache_id(&a.spec) == super::mounts::cache_id(&b.spec)
                && a.from_resolved == b.from_resolved
                && a.spec.sharing != Some(kiln_parser::mount::Sharing::Private)
        })
    });
    if r.script.is_some() {
        Some("a heredoc run by its #! line (bound into the container)")
    } else if mounted(MountType::Bind) || ssh_relayed {
        Some("--mount type=bind or ssh")
    } else if caches.iter().any(|m| m.spec.read_only) {
        Some("a read-only cache mount (a cache is moved into the RUN's copy, writable)")
    } else if cache_twice {
        Some("one cache mounted twice in a RUN (a cache is moved into the RUN's copy)")
    } else if r
        .mounts
        .iter()
        .any(|m| m.spec.mount_type == MountType::Tmpfs && m.spec.size_limit.is_some())
    {
        Some("--mount type=tmpfs with size= (a tmpfs is an empty directory there)")
    } else if r
        .mounts
        .iter()
        .any(|m| m.spec.mount_type == MountType::Tmpfs && m.spec.read_only)
    {
        Some("a read-only tmpfs mount (a tmpfs is an empty, writable directory there)")
    } else if secret_file {
        Some("--mount type=secret as a file (env= works)")
    } else if r.network.as_deref() == Some("none") {
        Some("--network=none (a network namespace)")
    } else if !r.extra_hosts.is_empty() {
        Some("--add-host (an /etc/hosts bound into the container)")
    } else if r.shm_size.is_some() {
        Some("--shm-size (a /dev/shm mounted in the container)")
    } else if r.hostname != crate::frontend::DEFAULT_HOSTNAME {
        Some("the BUILDKIT_SANDBOX_HOSTNAME build arg (a UTS namespace to set it in)")
    } else if r.security.as_deref() == Some("insecure") {
        Some("--security=insecure (a container of its own with every capability)")
    } else {
        None
    }
}

/// What a RUN mounts: binds and files from memory for the runtime, and the
/// ssh agent relays that must serve while it runs.
struct StepMounts {
    binds: Vec<BindMount>,
    tmpfs: Vec<kiln_runtime::TmpfsMount>,
    memory: Vec<MemoryFile>,
    ssh_relays: Vec<crate::ssh::AgentRelay>,
    /// Where the first ssh mount is (SSH_AUTH_SOCK points there).
    first_ssh_target: Option<String>,
    /// Secrets as environment variables (`env=`): only this step's process
    /// sees them.
    env: Vec<(String, String)>,
    /// Cache mounts' locks, held while the step runs.
    locks: Vec<std::fs::File>,
    /// Under chroot isolation: what is placed in the copy instead of
    /// mounted (/dev first).
    placed: Vec<PlaceRequest>,
    /// Each target mounted on so far, and the kind of mount that holds it.
    claimed: Vec<(PathBuf, MountRank)>,
}

/// Which of two mounts on one target a RUN gets, as BuildKit decides it:
/// its exec op lists the bind, cache and tmpfs mounts (sorted by target),
/// then the secrets, then the ssh sockets (client/llb/exec.go); the exec
/// sorts them all by target again (`PrepareMounts`), and the container's
/// spec keeps the last mount of each destination (executor/oci's
/// `dedupMounts`). Go's sort keeps the order of equal targets for lists of
/// up to 12 (its insertion sort), which a RUN's are unless it has about a
/// dozen mounts; beyond that BuildKit's pick among equal targets is its
/// sort's. So a secret beats a bind, cache or tmpfs on its target wherever
/// it is written, an ssh socket beats both, and among mounts of one rank
/// the later one wins. Targets are compared cleaned (BuildKit compares
/// them as written: `/m/` and `/m` both mounted, `/m/` on top).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum MountRank {
    Filesystem,
    Secret,
    Ssh,
}

impl StepMounts {
    /// Whether a mount of `rank` on `target` is to be made: not when one of
    /// a higher rank holds the target; when it is, whatever held the target
    /// before is dropped (one mount per target, as BuildKit's spec has).
    fn claim(&mut self, target: &Path, rank: MountRank) -> bool {
        if let Some((_, held)) = self.claimed.iter().find(|(t, _)| t == target) {
            if *held > rank {
                return false;
            }
        }
        self.claimed.retain(|(t, _)| t != target);
        self.claimed.push((target.to_path_buf(), rank));
        self.binds.retain(|b| b.target != target);
        self.tmpfs.retain(|t| t.target != target);
        self.memory.retain(|m| m.target != target);
        self.placed.retain(|p| Path::new(&p.target) != target);
        true
    }
}

/// [`step_mounts`], again until no cache it needs is another RUN's
/// (under chroot isolation, where caches are not waited for but tried
/// all at once: a RUN never holds one while it waits for another).
fn held_mounts(run: &StepRun<'_>, r: &RunStep, dir: &Path) -> Result<StepMounts, SolveError> {
    loop {
        if let Some(mounts) = step_mounts(run, r, dir)? {
            return Ok(mounts);
        }
        if kiln_runtime::interrupt::runs_canceled() {
            return Err(SolveError::Canceled);
        }
        // 20 to 150 ms, drawn from the clock: two RUNs of one process (and
        // so one pid) waiting for each other's caches do not retry in step.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::thread::sleep(std::time::Duration::from_millis(
            20 + u64::from(nanos % 131),
        ));
    }
}

/// The RUN's heredoc script and its `--mount`s, made real; `None` when a
/// cache it needs is another RUN's (see [`held_mounts`]).
fn step_mounts(
    run: &StepRun<'_>,
    r: &RunStep,
    dir: &Path,
) -> Result<Option<StepMounts>, SolveError> {
    let mut mounts = StepMounts {
        binds: Vec::new(),
        tmpfs: Vec::new(),
        memory: Vec::new(),
        ssh_relays: Vec::new(),
        first_ssh_target: None,
        env: Vec::new(),
        locks: Vec::new(),
        placed: Vec::new(),
        claimed: Vec::new(),
    };
    let chroot = run.build.opts.chroot;
    if chroot {
        mounts.placed.push(PlaceRequest {
            target: "/dev".into(),
            what: Placement::Dev,
        });
    }
    if let Some(script) = &r.script {
        let pipes = dir.join("pipes");
        std::fs::create_dir_all(&pipes).map_err(io_err(&pipes))?;
        let path = pipes.join(&script.name);
        std::fs::write(&path, &script.data).map_err(io_err(&path))?;
        crate::rootfs::set_mode(&path, 0o755).map_err(|e| run.error(e.to_string()))?;
        mounts.binds.push(BindMount {
            source: path,
            target: PathBuf::from(format!("/dev/pipes/{}", script.name)),
            read_only: true,
            within: None,
        });
    }
    let mut ssh_index = 0;
    for (n, mount) in r.mounts.iter().enumerate() {
        if mount.spec.mount_type == MountType::Ssh {
            ssh_mount(run, r, mount, ssh_index, &mut mounts)?;
            ssh_index += 1;
            continue;
        }
        let from = mount_from(run, mount)?;
        let scratch = dir.join(format!("mount-{n}"));
        let made = run_mount(run, r, mount, from.as_ref(), &scratch).map_err(|e| run.error(e))?;
        for step_mount in made {
            let claim = match &step_mount {
                StepMount::Bind(b) | StepMount::Cache(b) => {
                    Some((&b.target, MountRank::Filesystem))
                }
                StepMount::Tmpfs(t) => Some((&t.target, MountRank::Filesystem)),
                StepMount::Memory(m) => Some((&m.target, MountRank::Secret)),
                StepMount::Env(..) | StepMount::Lock(_) | StepMount::Busy(_) => None,
            };
            if let Some((target, rank)) = claim {
                if !mounts.claim(target, rank) {
                    continue;
                }
            }
            match step_mount {
                StepMount::Bind(bind) => mounts.binds.push(bind),
                StepMount::Cache(bind) if chroot => mounts.placed.push(PlaceRequest {
                    target: bind.target.to_string_lossy().into_owned(),
                    what: Placement::Cache(bind.source),
                }),
                StepMount::Cache(bind) => mounts.binds.push(bind),
                StepMount::Tmpfs(tmpfs) if chroot => mounts.placed.push(PlaceRequest {
                    target: tmpfs.target.to_string_lossy().into_owned(),
                    what: Placement::Empty,
                }),
                StepMount::Tmpfs(tmpfs) => mounts.tmpfs.push(tmpfs),
                StepMount::Memory(file) => mounts.memory.push(file),
                StepMount::Env(name, value) => mounts.env.push((name, value)),
                StepMount::Lock(lock) => mounts.locks.push(lock),
                StepMount::Busy(cache) if holds(&mounts.locks, &cache) => {
                    return Err(run.error(format!(
                        "{} mounts the cache {} twice, which --isolation chroot cannot do (a \
                         cache is moved into the RUN's copy)",
                        mount.spec.target,
                        cache.display()
                    )))
                }
                StepMount::Busy(_) => return Ok(None),
            }
        }
    }
    Ok(Some(mounts))
}

/// Whether one of `locks` is on the directory `dir`.
fn holds(locks: &[std::fs::File], dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::metadata(dir) else {
        return false;
    };
    locks.iter().any(|lock| {
        lock.metadata()
            .is_ok_and(|l| l.ino() == dir.ino() && l.dev() == dir.dev())
    })
}

/// `type=ssh` (the RUN's `index`-th): a relay socket to the agent `--ssh`
/// forwarded under the mount's id; skipped when not forwarded, unless
/// required (as BuildKit).
fn ssh_mount(
    run: &StepRun<'_>,
    r: &RunStep,
    mount: &RunMount,
    index: usize,
    mounts: &mut StepMounts,
) -> Result<(), SolveError> {
    let ssh =
        crate::ssh::SshMount::new(&mount.spec, index).map_err(|e| run.error(e.to_string()))?;
    // As every mount's: relative to the working directory (the exec op's
    // `PrepareMounts`); SSH_AUTH_SOCK is the first target as written
    // (client/llb/exec.go sets it so).
    let target = crate::plan::normalize_workdir(&r.workdir, &ssh.target);
    mounts
        .first_ssh_target
        .get_or_insert_with(|| ssh.target.clone());
    match run.build.opts.ssh.get(&ssh.id) {
        Some(agent) => {
            let relay =
                crate::ssh::AgentRelay::start(agent, &ssh).map_err(|e| run.error(e.to_string()))?;
            mounts.claim(Path::new(&target), MountRank::Ssh);
            mounts.binds.push(BindMount {
                source: relay.socket().to_path_buf(),
                target: PathBuf::from(target),
                read_only: false,
                within: None,
            });
            mounts.ssh_relays.push(relay);
            Ok(())
        }
        None if ssh.required => {
            Err(run.error(crate::ssh::SshError::Required { id: ssh.id }.to_string()))
        }
        None => Ok(()),
    }
}

/// The filesystem a mount's `from=` names: a finished stage's snapshots or
/// an image's.
fn mount_from<'a>(
    run: &StepRun<'a>,
    mount: &'a RunMount,
) -> Result<Option<MountFrom<'a>>, SolveError> {
    match &mount.from_resolved {
        Some(MountSource::Stage(i)) => {
            let stage = run.deps.get(i).ok_or(SolveError::StageMissing(*i))?;
            super::lazy::materialize(run.build, stage)?;
            Ok(Some(MountFrom {
                lowers: stage.lowers_top_first(),
                context: None,
                identity: stage
                    .chain()
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "scratch".to_string()),
            }))
        }
        Some(MountSource::Image(image)) => Ok(Some(mount_image_layers(run.build, image)?)),
        Some(MountSource::NamedContext { name, digest }) => {
            let tree = super::copy_step::named_tree(run, name)?;
            Ok(Some(MountFrom {
                lowers: Vec::new(),
                context: Some((name.as_str(), tree)),
                identity: digest.clone(),
            }))
        }
        None => Ok(None),
    }
}

/// The runtime's spec for the step.
fn run_spec(
    run: &StepRun<'_>,
    r: &RunStep,
    rootfs: &LayeredRootfs,
    dir: &Path,
    mounts: &StepMounts,
) -> Result<RunSpec, SolveError> {
    let opts = run.build.opts;
    let mut spec = RunSpec::new(
        rootfs.lowers().iter().rev().cloned().collect(),
        dir.join("state"),
        r.argv.clone(),
    );
    spec.upper = UpperDir::Keep(rootfs.upper().to_path_buf());
    spec.env = r.env.clone();
    if let Some(target) = &mounts.first_ssh_target {
        // BuildKit points SSH_AUTH_SOCK at the first ssh mount unless the
        // environment already sets it.
        if !spec.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
            spec.env.push(format!("SSH_AUTH_SOCK={target}"));
        }
    }
    for (name, value) in &mounts.env {
        spec.env
            .retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != name);
        spec.env.push(format!("{name}={value}"));
    }
    spec.cwd = r.workdir.clone();
    spec.user = r.user.clone();
    spec.hostname = r.hostname.clone();
    spec.network = match r.network.as_deref() {
        Some("none") => Network::None,
        Some("host") => Network::Host,
        _ => opts.network,
    };
    spec.networks = opts.networks.clone();
    spec.mounts = mounts.binds.clone();
    spec.tmpfs = mounts.tmpfs.clone();
    spec.memory_files = mounts.memory.clone();
    spec.extra_hosts = r.extra_hosts.clone();
    if let Some(size) = r.shm_size {
        spec.shm_size = size;
    }
    spec.rlimits = r.ulimits.clone();
    spec.privileged = r.security.as_deref() == Some("insecure");
    spec.image = format!("stage {}", run.step.stage);
    spec.limits = opts.limits;
    Ok(spec)
}

/// Runs `spec` with its output going through a pipe: shown as it comes,
/// its last lines kept for the error message.
fn run_with_output(
    run: &StepRun<'_>,
    mut spec: RunSpec,
) -> Result<
    (
        Result<kiln_runtime::ExitStatus, kiln_runtime::RuntimeError>,
        Vec<String>,
    ),
    SolveError,
> {
    let opts = run.build.opts;
    let (reader, writer) = output_pipe().map_err(|e| run.error(format!("creating a pipe: {e}")))?;
    let writer_err = writer
        .try_clone()
        .map_err(|e| run.error(format!("creating a pipe: {e}")))?;
    spec.streams = kiln_runtime::Streams::Stdio {
        stdin: std::process::Stdio::null(),
        stdout: std::process::Stdio::from(writer),
        stderr: std::process::Stdio::from(writer_err),
    };
    Ok(std::thread::scope(|scope| {
        let collector = scope.spawn(|| {
            let mut last: std::collections::VecDeque<String> = std::collections::VecDeque::new();
            let mut lines = OutputLines::new(reader);
            while let Some(line) = lines.next_line() {
                opts.events.step_output(run.event, &line);
                if last.len() == TAIL_LINES {
                    last.pop_front();
                }
                last.push_back(line);
            }
            last.into_iter().collect::<Vec<String>>()
        });
        // `spec` owns the write ends; they close when run() returns.
        let status = kiln_runtime::run(spec, &opts.helper);
        let last = collector.join().unwrap_or_default();
        (status, last)
    }))
}

/// The longest line of a RUN's output kiln holds; a longer one is shown
/// in pieces of this size.
const MAX_OUTPUT_LINE: usize = 64 * 1024;

/// A RUN's output as lines: split at newlines (a `\r` before one dropped,
/// as `BufRead::lines` does) and every [`MAX_OUTPUT_LINE`] bytes, bytes
/// that are not UTF-8 replaced. Read to the end whatever the bytes are:
/// a reader that stopped would close the pipe and kill the RUN (SIGPIPE),
/// and one that held a line whole could be made to hold any amount. A
/// character the size limit would cut in two starts the next piece.
struct OutputLines<R> {
    reader: std::io::BufReader<R>,
    buf: Vec<u8>,
    /// The start of a character cut off the end of the last piece.
    carried: Vec<u8>,
}

impl<R: std::io::Read> OutputLines<R> {
    fn new(reader: R) -> Self {
        OutputLines {
            reader: std::io::BufReader::new(reader),
            buf: Vec::new(),
            carried: Vec::new(),
        }
    }

    /// The next line; None at the end (or when reading fails).
    fn next_line(&mut self) -> Option<String> {
        use std::io::{BufRead, Read};
        self.buf.clear();
        self.buf.append(&mut self.carried);
        let limit = (MAX_OUTPUT_LINE - self.buf.len()) as u64;
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf);
        if read.is_err() || self.buf.is_empty() {
            return None;
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        } else if self.buf.len() == MAX_OUTPUT_LINE {
            let cut = self.buf.len() - incomplete_tail(&self.buf);
            self.carried = self.buf.split_off(cut);
        }
        Some(String::from_utf8_lossy(&self.buf).into_owned())
    }
}

/// How many bytes at the end of `bytes` (0 to 3) start a UTF-8 character
/// that bytes after them could complete.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let tail = &bytes[bytes.len() - back..];
        // The last byte that is not a continuation byte starts the
        // character.
        if tail[0] & 0b1100_0000 != 0b1000_0000 {
            return match std::str::from_utf8(tail) {
                Err(err) if err.error_len().is_none() => back,
                _ => 0,
            };
        }
    }
    0
}

/// Why a heredoc script (`RUN <<EOF` whose body starts with `#!`) did not
/// start. kiln mounted the script itself, so the kernel's error is about the
/// interpreter its `#!` line names: the message names it and that line,
/// not the script's path (`/dev/pipes/EOF`).
fn script_exec_error(script: &crate::plan::InlineFile, reason: &str) -> String {
    let shebang = script.data.lines().next().unwrap_or("");
    let interpreter = shebang
        .trim_start_matches("#!")
        .trim_start_matches([' ', '\t'])
        .split([' ', '\t'])
        .next()
        .unwrap_or("");
    let line = match script.line {
        0 => String::new(),
        n => format!(" (line {n})"),
    };
    format!(
        "heredoc {}: its #! line{line} names the interpreter {interpreter:?}: {reason}",
        script.name
    )
}

/// A pipe for a RUN's output: (read end, write end).
fn output_pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    let (read, write) = kiln_runtime::pipe()?;
    Ok((std::fs::File::from(read), std::fs::File::from(write)))
}

#[cfg(test)]
mod tests {
    use super::{incomplete_tail, OutputLines, MAX_OUTPUT_LINE};

    fn lines_of(bytes: &[u8]) -> Vec<String> {
        let mut lines = OutputLines::new(bytes);
        std::iter::from_fn(|| lines.next_line()).collect()
    }

    #[test]
    fn a_character_at_the_size_limit_starts_the_next_piece() {
        for character in ["é", "€", "𝄞"] {
            let mut output = vec![b'a'; MAX_OUTPUT_LINE - 1];
            output.extend_from_slice(character.as_bytes());
            output.extend_from_slice(b"b\n");
            let lines = lines_of(&output);
            assert_eq!(lines.len(), 2, "{character}");
            assert_eq!(lines[0], "a".repeat(MAX_OUTPUT_LINE - 1), "{character}");
            assert_eq!(lines[1], format!("{character}b"), "{character}");
        }
    }

    #[test]
    fn invalid_bytes_at_the_size_limit_are_replaced_not_carried() {
        // A lone continuation byte, and a lead byte the next byte does not
        // continue: neither starts a character, both shown replaced.
        let mut output = vec![b'a'; MAX_OUTPUT_LINE - 1];
        output.push(0x80);
        output.extend_from_slice(b"\xc3x\n");
        let lines = lines_of(&output);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with('\u{fffd}'), "{:?}", &lines[0][65530..]);
        assert_eq!(lines[1], "\u{fffd}x");
        // Cut at the end of the output: what was carried is shown.
        let mut output = vec![b'a'; MAX_OUTPUT_LINE - 1];
        output.push(0xe2);
        let lines = lines_of(&output);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], "\u{fffd}");
    }

    #[test]
    fn incomplete_tails() {
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_tail(&"é".as_bytes()[..1]), 1);
        assert_eq!(incomplete_tail(&"€".as_bytes()[..2]), 2);
        assert_eq!(incomplete_tail(&"𝄞".as_bytes()[..3]), 3);
        assert_eq!(incomplete_tail(b"a\x80"), 0);
        assert_eq!(incomplete_tail(b"a\xff"), 0);
        assert_eq!(incomplete_tail(b""), 0);
    }
}
