//! kiln-testsupport: real services for kiln's tests (a dev-dependency only).
//!
//! - [`RegistryServer`]: the distribution registry (`docker-registry` from
//!   Debian) on a free loopback port with its own storage, in three modes:
//!   plain HTTP, TLS with htpasswd basic auth, and token auth backed by a
//!   [`TokenServer`] running in the test process.
//! - [`FaultProxy`]: a TCP proxy in front of a registry that drops a blob
//!   download midway, flips a byte, or answers 503/429 a few times.
//! - [`image`]: small OCI layouts built by hand, and `skopeo` helpers.
//!
//! ```no_run
//! use kiln_testsupport::RegistryServer;
//! let registry = RegistryServer::start_plain().unwrap();
//! println!("push to {}/app:v1", registry.host);
//! // stopped (kill + wait) when `registry` drops
//! ```

pub mod image;
mod process;
pub mod proxy;
pub mod registry;
pub mod tls;
pub mod token;

pub use proxy::{CannedResponse, FaultPlan, FaultProxy, StatusFault};
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
