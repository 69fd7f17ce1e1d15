//! `RUN --mount=type=ssh` and `kiln build --ssh`: forwarding an SSH agent
//! into a RUN, as BuildKit does.
//!
//! `--ssh default` forwards `$SSH_AUTH_SOCK`; `--ssh ID=PATH` forwards the
//! agent socket at PATH, or, when PATH is a key file (several may be given,
//! comma-separated), an agent kiln starts with the host's `ssh-agent` and
//! loads with `ssh-add` ([`AgentProcess`]).
//!
//! In the RUN, the mount is a socket of its own (`/run/buildkit/ssh_agent.N`
//! or `target=`), owned by `uid`/`gid` (0) with `mode` (0600), whose
//! connections are relayed to the agent ([`AgentRelay`]); `SSH_AUTH_SOCK`
//! names the first one unless the environment sets it. A mount whose id
//! was not forwarded is skipped, or is an error when `required`.
//!
//! ```
//! use kiln_builder::ssh::SshMount;
//! use kiln_parser::mount::parse_mount;
//! let parse = |spec: &str| parse_mount(spec, &mut |w| Ok(w.to_string())).unwrap();
//! let m = SshMount::new(&parse("type=ssh,id=deploy,mode=0440,uid=1000"), 0).unwrap();
//! assert_eq!((m.id.as_str(), m.mode, m.uid), ("deploy", 0o440, 1000));
//! assert_eq!(SshMount::new(&parse("type=ssh"), 1).unwrap().target, "/run/buildkit/ssh_agent.1");
//! ```

use std::collections::BTreeMap;

use kiln_parser::mount::Mount;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Why an SSH agent could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("--mount={spec}: {message}")]
    Mount { spec: String, message: String },
    #[error("no SSH key {id:?} forwarded from the client (kiln build --ssh {id}[=SOCKET|KEY])")]
    Required { id: String },
    #[error("--ssh {spec}: {message}")]
    Flag { spec: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SshError + '_ {
    move |source| SshError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One `RUN --mount=type=ssh,...`, with BuildKit's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshMount {
    /// Which forwarded agent (`--ssh ID`); `default` when not given.
    pub id: String,
    /// Where the socket appears; `/run/buildkit/ssh_agent.N` for the N-th
    /// ssh mount of the RUN (counting from 0) when not given.
    pub target: String,
    pub required: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl SshMount {
    /// The ssh mount a typed `--mount` spec describes, with BuildKit's
    /// defaults; `index` is its place among the RUN's ssh mounts.
    pub fn new(spec: &Mount, index: usize) -> Result<SshMount, SshError> {
        if spec.source.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(SshError::Mount {
                spec: "type=ssh".into(),
                message: "ssh does not support source".into(),
            });
        }
        Ok(SshMount {
            id: spec
                .id
                .clone()
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| "default".into()),
            target: if spec.target.is_empty() {
                format!("/run/buildkit/ssh_agent.{index}")
            } else {
                spec.target.clone()
            },
            required: spec.required,
            mode: spec.mode.unwrap_or(0o600),
            uid: spec.uid.unwrap_or(0),
            gid: spec.gid.unwrap_or(0),
        })
    }
}

/// The agents `--ssh` forwards: id → the agent's socket on the host.
pub type SshAgents = BTreeMap<String, PathBuf>;

/// A relay socket for one ssh mount: accepts the RUN's connections on a
/// socket owned and moded as the mount asks, and joins each to a fresh
/// connection to the agent. Stops accepting when dropped.
pub struct AgentRelay {
    socket: PathBuf,
    /// Holds the socket's private directory (removed on drop).
    _dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    accepter: Option<std::thread::JoinHandle<()>>,
}

impl AgentRelay {
    /// Starts relaying to the agent at `agent`. The socket lives in a
    /// short private directory under the system temp dir (a socket path
    /// must fit in 108 bytes, which a store path may not).
    pub fn start(agent: &Path, mount: &SshMount) -> Result<AgentRelay, SshError> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-ssh")
            .tempdir()
            .map_err(io_err(&std::env::temp_dir()))?;
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).map_err(io_err(&socket))?;
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&socket, Some(mount.uid), Some(mount.gid))
                .map_err(io_err(&socket))?;
        } else {
            // Rootless: the user's files are root's in the RUN's user
            // namespace, and another owner cannot be given.
            tracing::debug!("ssh mount: not root, the socket keeps its owner");
        }
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mount.mode & 0o777))
            .map_err(io_err(&socket))?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepter = {
            let stop = stop.clone();
            let agent = agent.to_path_buf();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    match UnixStream::connect(&agent) {
                        Ok(upstream) => relay(client, upstream),
                        Err(e) => {
                            tracing::warn!("ssh agent {}: {e}", agent.display());
                        }
                    }
                }
            })
        };
        Ok(AgentRelay {
            socket,
            _dir: dir,
            stop,
            accepter: Some(accepter),
        })
    }

    /// The socket to bind-mount at the mount's target.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for AgentRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepter, which then sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(accepter) = self.accepter.take() {
            let _ = accepter.join();
        }
    }
}

/// Copies bytes both ways until either side closes.
fn relay(client: UnixStream, upstream: UnixStream) {
    let pairs = [
        (client.try_clone(), upstream.try_clone()),
        (upstream.try_clone(), client.try_clone()),
    ];
    for pair in pairs {
        if let (Ok(mut from), Ok(mut to)) = pair {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Write);
            });
        }
    }
}

/// An `ssh-agent` kiln started for `--ssh ID=KEYFILE[,KEYFILE]`, with the
/// keys loaded; killed when dropped.
pub struct AgentProcess {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl AgentProcess {
    /// Starts `ssh-agent -D -a SOCKET` and adds `keys` with `ssh-add`.
    pub fn start(spec: &str, keys: &[PathBuf]) -> Result<AgentProcess, SshError> {
        let flag_err = |message: String| SshError::Flag {
            spec: spec.to_string(),
            message,
        };
        let dir = tempfile::Builder::new()
            .prefix("kiln-agent")
            .tempdir()
            .map_err(io_err(&std::env::temp_dir()))?;
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                flag_err(format!(
                    "starting ssh-agent: {e} (is openssh-client installed?)"
                ))
            })?;
        let mut agent = AgentProcess {
            child,
            socket,
            _dir: dir,
        };
        // ssh-add needs the agent listening: its socket file appears at
        // bind(), a moment before listen(), so wait until a connect works.
        let mut waited = 0;
        while UnixStream::connect(&agent.socket).is_err() {
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(flag_err(format!("ssh-agent exited: {status}")));
            }
            if waited > 1000 {
                return Err(flag_err(
                    "ssh-agent did not listen on its socket within 10 s".into(),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += 1;
        }
        let output = Command::new("ssh-add")
            .args(keys)
            .env("SSH_AUTH_SOCK", &agent.socket)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| flag_err(format!("running ssh-add: {e}")))?;
        if !output.status.success() {
            return Err(flag_err(format!(
                "ssh-add: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(agent)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// What one `--ssh` flag forwards.
pub enum ForwardedAgent {
    /// An agent socket that already exists.
    Socket(PathBuf),
    /// An agent kiln started with key files.
    Started(AgentProcess),
}

impl ForwardedAgent {
    pub fn socket(&self) -> &Path {
        match self {
            ForwardedAgent::Socket(path) => path,
            ForwardedAgent::Started(agent) => agent.socket(),
        }
    }
}

/// Parses `--ssh default|ID[=SOCKET|KEY[,KEY...]]` as `docker build --ssh`
/// does: no path means `$SSH_AUTH_SOCK` (`auth_sock`); one path that is a
/// socket is used as it is; otherwise the paths are private keys, loaded
/// into an agent kiln starts.
pub fn parse_ssh_flag(
    spec: &str,
    auth_sock: Option<&str>,
) -> Result<(String, ForwardedAgent), SshError> {
    let flag_err = |message: String| SshError::Flag {
        spec: spec.to_string(),
        message,
    };
    let (id, paths) = match spec.split_once('=') {
        Some((id, paths)) => (id.trim(), paths.trim()),
        None => (spec.trim(), ""),
    };
    if id.is_empty() {
        return Err(flag_err("an id is required (default, or a name)".into()));
    }
    let paths: Vec<PathBuf> = paths
        .split(',')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    if paths.is_empty() {
        let sock = auth_sock.filter(|s| !s.is_empty()).ok_or_else(|| {
            flag_err("invalid empty ssh agent socket: SSH_AUTH_SOCK is not set".into())
        })?;
        return Ok((id.to_string(), ForwardedAgent::Socket(PathBuf::from(sock))));
    }
    if let [one] = paths.as_slice() {
        if is_socket(one) {
            return Ok((id.to_string(), ForwardedAgent::Socket(one.clone())));
        }
    }
    for path in &paths {
        if !path.is_file() {
            return Err(flag_err(format!(
                "{} is neither an agent socket nor a key file",
                path.display()
            )));
        }
    }
    Ok((
        id.to_string(),
        ForwardedAgent::Started(AgentProcess::start(spec, &paths)?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(spec: &str, index: usize) -> Result<SshMount, String> {
        let mount = kiln_parser::mount::parse_mount(spec, &mut |w| Ok(w.to_string()))
            .map_err(|e| e.to_string())?;
        SshMount::new(&mount, index).map_err(|e| e.to_string())
    }

    #[test]
    fn mount_defaults_and_options() {
        let m = ssh("type=ssh", 0).unwrap();
        assert_eq!(
            m,
            SshMount {
                id: "default".into(),
                target: "/run/buildkit/ssh_agent.0".into(),
                required: false,
                mode: 0o600,
                uid: 0,
                gid: 0,
            }
        );
        let m = ssh("type=ssh,id=gh,target=/a.sock,required,gid=5", 3).unwrap();
        assert_eq!((m.id.as_str(), m.target.as_str()), ("gh", "/a.sock"));
        assert!(m.required);
        assert_eq!(m.gid, 5);
        assert!(!ssh("type=ssh,required=false", 0).unwrap().required);
        // Keys BuildKit's parser accepts on any mount and its ssh dispatch
        // ignores.
        assert_eq!(ssh("type=ssh,ro,from=y", 2), ssh("type=ssh", 2));
        for bad in [
            "type=ssh,mode=9",
            "type=ssh,uid=x",
            "type=ssh,required=maybe",
            "type=ssh,size=1m",
            "type=ssh,sharing=locked",
            // BuildKit: "ssh does not support source".
            "type=ssh,source=/x",
        ] {
            assert!(ssh(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn flag_forms() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let _listener = UnixListener::bind(&sock).unwrap();
        let (id, agent) = parse_ssh_flag("default", Some(sock.to_str().unwrap())).unwrap();
        assert_eq!((id.as_str(), agent.socket()), ("default", sock.as_path()));
        let (id, agent) = parse_ssh_flag(&format!("gh={}", sock.display()), None).unwrap();
        assert_eq!((id.as_str(), agent.socket()), ("gh", sock.as_path()));
        let err = parse_ssh_flag("default", None).err().unwrap().to_string();
        assert!(err.contains("SSH_AUTH_SOCK"), "{err}");
        let missing = dir.path().join("nope");
        let err = parse_ssh_flag(&format!("x={}", missing.display()), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("neither an agent socket nor a key file"),
            "{err}"
        );
    }
}
