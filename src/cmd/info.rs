//! `kiln info`: what this machine allows a container, and what `kiln run`
//! and a build's RUN steps get by default. A small report of named items,
//! as text or JSON (`--format json`): a new item is a field of
//! [`InfoReport`] and a line in [`InfoReport::lines`].

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use kiln_runtime::cgroup::{capabilities, Capabilities};
use serde::Serialize;

use crate::settings::{GlobalSettings, Reads};

#[derive(Debug, Subcommand)]
pub enum InfoCommand {
    /// Show what this machine allows containers (cgroups, device
    /// restriction, pids and memory limits) and the defaults a run gets.
    Info(InfoArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InfoFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[arg(long, value_enum, default_value_t = InfoFormat::Text)]
    format: InfoFormat,
}

/// Everything `kiln info` reports.
#[derive(Debug, Serialize)]
pub struct InfoReport {
    /// kiln runs without root: containers get a user namespace.
    pub rootless: bool,
    /// cgroups, devices, limits (see `kiln_runtime::cgroup::capabilities`).
    #[serde(flatten)]
    pub runtime: Capabilities,
    /// Whether a build's RUN gets its private network (slirp4netns), and
    /// why not.
    pub private_network: kiln_runtime::network::NetworkSupport,
    /// The network a build's RUN gets by default: `private` or `host`.
    pub build_network: String,
    /// The isolation a build gets with `--isolation auto`, or why none.
    pub isolation: String,
    /// Why it is weaker than namespaces, when it is.
    pub isolation_reason: Option<String>,
    /// A user namespace can be made here (tried), or why not.
    pub user_namespaces: Availability,
    /// The subordinate id ranges a rootless build maps, or what is missing.
    pub subordinate_ids: Availability,
    /// Whether overlay can stack a RUN's writes on the store's filesystem
    /// (not on overlayfs), or why not.
    pub store_overlay: Availability,
    /// How a build's RUN gets its root filesystem: `overlay`, or `copy`
    /// where the store cannot hold overlay's upper dirs.
    pub snapshotter: String,
}

/// Whether something is available, and what (or why not).
#[derive(Debug, Serialize)]
pub struct Availability {
    pub available: bool,
    pub detail: String,
}

impl Availability {
    fn of<T: Into<String>>(result: Result<T, String>) -> Self {
        match result {
            Ok(what) => Availability {
                available: true,
                detail: what.into(),
            },
            Err(why) => Availability {
                available: false,
                detail: why,
            },
        }
    }

    fn line(&self) -> String {
        match (self.available, self.detail.is_empty()) {
            (true, true) => "yes".to_string(),
            (true, false) => format!("yes: {}", self.detail),
            (false, _) => format!("no: {}", self.detail),
        }
    }
}

impl InfoReport {
    /// Probes this machine as a run would, with the store at `root`.
    pub fn probe(root: &std::path::Path) -> Self {
        let rootless = !rustix::process::geteuid().is_root();
        let private_network = kiln_runtime::network::probe();
        let sandbox = crate::sandbox::BuildSandbox::decide(None, &private_network);
        let facts = crate::sandbox::Facts::probe();
        let user_namespaces = kiln_runtime::userns::probe_new();
        let (isolation, isolation_reason) =
            match crate::sandbox::choose_isolation(crate::sandbox::IsolationArg::Auto, &facts) {
                Ok(choice) => (choice.isolation.name().to_string(), choice.reason),
                Err(why) => ("none".to_string(), Some(why)),
            };
        let snapshotter = match isolation.as_str() {
            "chroot" => kiln_runtime::Snapshotter::Copy,
            _ => kiln_runtime::Snapshotter::for_store(root).0,
        };
        InfoReport {
            isolation,
            isolation_reason,
            user_namespaces: Availability::of(user_namespaces.map(|()| String::new())),
            subordinate_ids: Availability::of(kiln_runtime::idmap::subordinate_ids()),
            store_overlay: Availability::of(kiln_runtime::upper_dir_support(root)),
            snapshotter: snapshotter.name().to_string(),
            rootless,
            runtime: capabilities(rootless),
            build_network: network_name(sandbox.network).to_string(),
            private_network,
        }
    }

    /// The report as labelled lines, in order.
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        let r = &self.runtime;
        let limit = |l: &kiln_runtime::cgroup::LimitReport| {
            if l.available {
                format!("yes: {}", l.detail)
            } else {
                format!("no: {}", l.detail)
            }
        };
        vec![
            (
                "rootless",
                if self.rootless { "yes" } else { "no" }.to_string(),
            ),
            ("cgroups", r.cgroup_detail.clone()),
            (
                "device restriction",
                format!(
                    "{}: {}",
                    serde_json::to_value(r.device_restriction)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    r.device_detail
                ),
            ),
            ("pids limit", limit(&r.pids_limit)),
            ("memory limit", limit(&r.memory_limit)),
            (
                "private network",
                if self.private_network.available() {
                    format!("yes: {}", self.private_network.detail)
                } else {
                    format!("no: {}", self.private_network.detail)
                },
            ),
            ("build network", self.build_network.clone()),
            (
                "isolation",
                match &self.isolation_reason {
                    Some(why) => format!("{} ({why})", self.isolation),
                    None => self.isolation.clone(),
                },
            ),
            ("user namespaces", self.user_namespaces.line()),
            ("subordinate ids", self.subordinate_ids.line()),
            ("store overlay", self.store_overlay.line()),
            (
                "snapshotter",
                match (self.isolation.as_str(), self.store_overlay.available) {
                    ("chroot", _) => {
                        format!("{} (chroot isolation mounts nothing)", self.snapshotter)
                    }
                    (_, true) => self.snapshotter.clone(),
                    (_, false) => format!(
                        "{} (overlay cannot be mounted on the store)",
                        self.snapshotter
                    ),
                },
            ),
        ]
    }
}

/// How `kiln info` names a network.
fn network_name(network: kiln_runtime::Network) -> &'static str {
    match network {
        kiln_runtime::Network::Private => "private",
        kiln_runtime::Network::Host => "host",
        kiln_runtime::Network::None => "none",
    }
}

impl InfoCommand {
    /// The global settings this command reads (see [`Reads`]).
    pub fn reads(&self) -> Reads {
        Reads::STORE
    }

    pub fn run(self, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        let InfoCommand::Info(args) = self;
        let report = InfoReport::probe(&settings.root);
        match args.format {
            InfoFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            InfoFormat::Text => {
                for (label, value) in report.lines() {
                    println!("{:<20}{value}", format!("{label}:"));
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
