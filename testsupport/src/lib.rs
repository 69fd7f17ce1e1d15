//! kiln-testsupport: real services for kiln's tests (a dev-dependency only).
//!
//! - [`RegistryServer`]: the distribution registry (`docker-registry` from
//!   Debian) on a free loopback port with its own storage, in three modes:
//!   plain HTTP, TLS with htpasswd basic auth, and token auth backed by a
//!   [`TokenServer`] running in the test process.
//! - [`FaultProxy`]: a TCP proxy in front of a registry that drops a blob
//!   download midway, flips a byte, answers 503/429 a few times, sends
//!   manifests or blobs (or forwards uploads) at a set pace, or leaves
//!   requests unanswered; [`SilentServer`], a listener that never answers.
//! - [`image`]: small OCI layouts built by hand, and `skopeo` helpers.
//! - [`multiarch`]: a two-platform (amd64, arm64) busybox index made from
//!   Debian's busybox-static packages, pushed to a registry.
//! - [`BusyboxRootfs`]: a busybox root filesystem (directory or tar) from
//!   the host's static busybox.
//! - [`ChildGuard`]: a child process killed and reaped on drop, with a
//!   bounded wait.
//! - [`users`]: `require_root!` (root-only tests fail unless
//!   `KILN_TEST_ALLOW_SKIP=1`) and the rootless test user.
//! - [`empty_docker_config`]: a `DOCKER_CONFIG` that keeps the host's
//!   `~/.docker` out of tests.
//! - [`golden`]: golden-file comparison, rewritten with `KILN_BLESS=1`.
//! - [`docker`]: a docker daemon of the test's own (its socket, data
//!   root), and a Debian base root filesystem made with debootstrap.
//! - [`network`]: the host's Debian mirror (from its apt sources) and a
//!   server on the host's loopback, for the RUN network tests.
//! - [`git`]: a `git daemon` serving test repositories on loopback.
//! - [`http`]: a small HTTP file server (optionally behind basic auth)
//!   that records the requests it got.
//!
//! ```no_run
//! use kiln_testsupport::RegistryServer;
//! let registry = RegistryServer::start_plain().unwrap();
//! println!("push to {}/app:v1", registry.host);
//! // stopped (kill + wait) when `registry` drops
//! ```

#![forbid(unsafe_code)]

pub mod docker;
pub mod git;
pub mod golden;
pub mod http;
pub mod image;
pub mod multiarch;
pub mod network;
mod process;
pub mod proxy;
pub mod registry;
pub mod rootfs;
pub mod tls;
pub mod token;
pub mod users;

pub use process::ChildGuard;
pub use rootfs::{busybox_path, BusyboxRootfs};
pub use users::{is_root, require_namespaces, require_root, rootless_user};

pub use proxy::{CannedResponse, FaultPlan, FaultProxy, Hang, SilentServer, StatusFault, Throttle};
pub use registry::RegistryServer;
pub use tls::TestCa;
pub use token::TokenServer;

/// Why a test service could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TestSupportError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{program} is not installed (run scripts/setup): {source}")]
    MissingProgram {
        program: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("registry did not start: {reason}\n--- registry log ---\n{log}")]
    RegistryStart { reason: String, log: String },
    #[error("certificate generation: {0}")]
    Certificate(String),
    #[error("signing a token: {0}")]
    Signing(String),
    #[error("{what} did not finish within {after:?} (killed)")]
    Timeout {
        what: String,
        after: std::time::Duration,
    },
}

impl TestSupportError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestSupportError {
        let what = what.into();
        move |source| TestSupportError::Io { what, source }
    }
}

pub type Result<T> = std::result::Result<T, TestSupportError>;

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(TestSupportError::io("binding 127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(TestSupportError::io("reading the bound address"))?
        .port();
    Ok(port)
}

/// An empty directory to use as `DOCKER_CONFIG` for every kiln a test runs,
/// so the host's `~/.docker/config.json` (and any credential helper it
/// names) takes no part. One directory per user, reused across runs; it
/// must stay empty (kiln only reads it unless a test logs in, and a test
/// that logs in needs a directory of its own).
///
/// Panics if the directory cannot be made or has something in it.
pub fn empty_docker_config() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "kiln-test-empty-docker-config-{}",
            rustix::process::geteuid().as_raw()
        ));
        if let Err(e) = std::fs::create_dir(&dir) {
            assert!(
                e.kind() == std::io::ErrorKind::AlreadyExists,
                "creating {}: {e}",
                dir.display()
            );
        }
        dir
    });
    let entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        entries.is_empty(),
        "{} must stay empty (it is the tests' DOCKER_CONFIG) but holds {entries:?}",
        dir.display()
    );
    dir
}
