//! A docker daemon of the test's own (Debian's `docker.io`, installed by
//! scripts/setup): `dockerd` on its own socket, data root and exec root
//! in a temp dir, without iptables or a bridge (containers use the host's
//! network or none), stopped when dropped. And a Debian base root
//! filesystem for images that start `FROM debian`, made with debootstrap
//! from the mirror of the host's apt sources (the one outside place the
//! test machines reach) and kept as a tar for later runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::process::{run, ChildGuard};
use crate::{Result, TestSupportError};

/// How long dockerd may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running dockerd; killed (TERM, then KILL) and its directories removed
/// on drop.
pub struct DockerDaemon {
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    /// `unix:///…/docker.sock`, for `docker -H`.
    pub host: String,
    /// `tcp://127.0.0.1:PORT`, when it also listens over TCP.
    pub tcp_host: Option<String>,
}

/// How a daemon also listens on a free loopback port.
pub enum TcpListen<'a> {
    /// Plain HTTP (`--tls=false`, said explicitly: dockerd delays its
    /// start otherwise).
    Plain,
    /// TLS, clients' certificates checked against `ca` (`--tlsverify`).
    Verified {
        ca: &'a Path,
        cert: &'a Path,
        key: &'a Path,
    },
}

impl DockerDaemon {
    /// Starts dockerd and waits until it answers `docker version`.
    pub fn start() -> Result<DockerDaemon> {
        DockerDaemon::start_listening(None)
    }

    /// Starts dockerd, also listening over TCP as `tcp` says, and waits
    /// until it answers `docker version` on its socket.
    pub fn start_listening(tcp: Option<TcpListen>) -> Result<DockerDaemon> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-dockerd-")
            .tempdir()
            .map_err(TestSupportError::io("temp dir for dockerd"))?;
        let socket = dir.path().join("docker.sock");
        let host = format!("unix://{}", socket.display());
        let log = std::fs::File::create(dir.path().join("dockerd.log"))
            .map_err(TestSupportError::io("dockerd log"))?;
        let log_err = log
            .try_clone()
            .map_err(TestSupportError::io("dockerd log"))?;
        let mut listen: Vec<std::ffi::OsString> = Vec::new();
        let tcp_host = match tcp {
            None => None,
            Some(tcp) => {
                let tcp_host = format!("tcp://127.0.0.1:{}", crate::free_port()?);
                listen.extend(["-H".into(), tcp_host.clone().into()]);
                match tcp {
                    TcpListen::Plain => listen.push("--tls=false".into()),
                    TcpListen::Verified { ca, cert, key } => {
                        listen.push("--tlsverify".into());
                        for (flag, path) in
                            [("--tlscacert", ca), ("--tlscert", cert), ("--tlskey", key)]
                        {
                            listen.extend([flag.into(), path.as_os_str().to_owned()]);
                        }
                    }
                }
                Some(tcp_host)
            }
        };
        let child = ChildGuard::spawn(
            Command::new("dockerd")
                .args(&listen)
                .arg("--data-root")
                .arg(dir.path().join("root"))
                .arg("--exec-root")
                .arg(dir.path().join("exec"))
                .arg("--pidfile")
                .arg(dir.path().join("dockerd.pid"))
                .args(["-H", &host])
                .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err),
        )?;
        let mut daemon = DockerDaemon {
            child: Some(child),
            dir,
            host,
            tcp_host,
        };
        let started = Instant::now();
        loop {
            if daemon
                .docker(&["version"])
                .is_ok_and(|o| o.status.success())
            {
                return Ok(daemon);
            }
            if started.elapsed() > START_TIMEOUT {
                let log = std::fs::read_to_string(daemon.dir.path().join("dockerd.log"))
                    .unwrap_or_default();
                daemon.stop();
                return Err(TestSupportError::Command {
                    command: "dockerd".into(),
                    status: format!("not answering after {START_TIMEOUT:?}"),
                    stderr: log,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker -H <this daemon> ARGS…`, its output whatever its status.
    pub fn docker(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new("docker")
            .args(["-H", &self.host])
            .args(args)
            .env_remove("DOCKER_HOST")
            .env("DOCKER_CONFIG", self.config_dir())
            .stdin(Stdio::null())
            .output()
    }

    /// `docker ARGS…`, stdout, failing with stderr.
    pub fn docker_ok(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("docker")
            .args(["-H", &self.host])
            .args(args)
            .env_remove("DOCKER_HOST")
            .env("DOCKER_CONFIG", self.config_dir()))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The docker CLI's configuration directory for this daemon: its own,
    /// because the CLI writes into it (buildx's `.buildNodeID`), and the
    /// tests' shared empty `DOCKER_CONFIG` must stay empty.
    fn config_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("docker-config");
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // TERM first: dockerd unmounts its containers' filesystems.
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = child.wait_timeout(Duration::from_secs(30));
        // dockerd leaves its default network namespace mounted in the exec
        // root: unmounted (detached), or the temp dir cannot be removed.
        for target in mounts_under(self.dir.path()).iter().rev() {
            let _ = rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// The mount points at or under `dir`, outermost first (from
/// /proc/self/mountinfo; its escapes of spaces and the like are kept,
/// which no path of a temp dir has).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|target| target.starts_with(dir))
        .collect()
}

impl Drop for DockerDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Debian root filesystem (debootstrap `--variant=minbase`, the
/// release this machine runs, from the host's http mirror), as a tar in
/// `cache_dir`, made on first use and kept: later runs reuse it.
pub fn debian_base_tar(cache_dir: &Path) -> Result<PathBuf> {
    let release = crate::network::debian_mirror_release()?;
    // http://mirror/debian/dists/<suite>/Release → the mirror and suite.
    let (mirror, rest) = release
        .split_once("/dists/")
        .ok_or_else(|| TestSupportError::Io {
            what: format!("mirror of {release}"),
            source: std::io::Error::other("no /dists/"),
        })?;
    let suite = rest.split('/').next().unwrap_or("stable");
    let tar = cache_dir.join(format!("debian-{suite}-minbase.tar"));
    if tar.exists() {
        return Ok(tar);
    }
    std::fs::create_dir_all(cache_dir).map_err(TestSupportError::io("cache dir"))?;
    let work = tempfile::Builder::new()
        .prefix("debootstrap-")
        .tempdir_in(cache_dir)
        .map_err(TestSupportError::io("debootstrap dir"))?;
    let rootfs = work.path().join("rootfs");
    run(Command::new("debootstrap")
        .args(["--variant=minbase", suite])
        .arg(&rootfs)
        .arg(mirror))?;
    let partial = work.path().join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "--xattrs", "-cf"])
        .arg(&partial)
        .arg("."))?;
    std::fs::rename(&partial, &tar).map_err(TestSupportError::io("keeping the debian tar"))?;
    Ok(tar)
}
