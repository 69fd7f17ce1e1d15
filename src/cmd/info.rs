//! `kiln info`: what this machine allows a container, and what `kiln run`
//! and a build's RUN steps get by default. A small report of named items,
//! as text or JSON (`--format json`): a new item is a field of
//! [`InfoReport`] and a line in [`InfoReport::lines`].

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use kiln_runtime::cgroup::{capabilities, Capabilities};
use serde::Serialize;

use crate::settings::GlobalSettings;

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
}

impl InfoReport {
    /// Probes this machine as a run would.
    pub fn probe() -> Self {
        let rootless = !rustix::process::geteuid().is_root();
        let private_network = kiln_runtime::network::probe();
        let sandbox = crate::sandbox::BuildSandbox::decide(None, &private_network);
        InfoReport {
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
    pub fn run(self, _settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        let InfoCommand::Info(args) = self;
        let report = InfoReport::probe();
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
