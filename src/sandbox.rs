//! What a build's RUN steps get on this machine, decided before anything
//! runs, with the reason for everything weaker than asked or than full:
//!
//! - the isolation: `namespaces` (kiln is root with CAP_SYS_ADMIN: new
//!   namespaces, overlay, cgroups), or `rootless` (otherwise: kiln runs
//!   itself again in a user namespace of its own for the whole command, see
//!   `kiln_runtime::userns`), or, where no user namespace can be made
//!   either (root in a pod with the default seccomp profile), `chroot`: no
//!   namespaces, each RUN chrooted into a copy of its root filesystem;
//!   `--isolation` names one, and then it is that or an error, never
//!   something weaker;
//! - the network: a private one where slirp4netns can give it, else the
//!   host's;
//! - the snapshotter: overlay where the store's filesystem can hold
//!   overlay's upper dirs, else the copying one (slower, more disk).
//!
//! `main` calls [`enter_user_namespace`] for the commands that touch the
//! store; `kiln build` prints the warnings; `kiln info` shows it all.

use std::ffi::OsString;
use std::process::ExitCode;

use kiln_runtime::network::NetworkSupport;
use kiln_runtime::{Network, Snapshotter};

/// Set by the outer kiln for the one in the user namespace: the warning
/// lines the build prints (the isolation it got and why), `\n`-separated.
const WARNINGS_ENV: &str = "KILN_ISOLATION_WARNINGS";

/// `--isolation`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IsolationArg {
    /// The strongest this machine allows: namespaces as root with
    /// CAP_SYS_ADMIN, else rootless; a warning line says which and why.
    #[default]
    Auto,
    /// New namespaces as root (CAP_SYS_ADMIN), overlay snapshots, cgroups.
    Namespaces,
    /// The whole build in a user namespace of its own (newuidmap and
    /// newgidmap with the user's /etc/subuid and /etc/subgid ranges).
    Rootless,
    /// No namespaces at all (a pod that allows none): each RUN chrooted
    /// into a copy of its root filesystem, nothing mounted, the host's
    /// network; root with CAP_SYS_CHROOT.
    Chroot,
}

/// The isolation a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Namespaces,
    Rootless,
    Chroot,
}

impl Isolation {
    pub fn name(self) -> &'static str {
        match self {
            Isolation::Namespaces => "namespaces",
            Isolation::Rootless => "rootless",
            Isolation::Chroot => "chroot",
        }
    }
}

/// What chroot isolation gives up, for its warning line.
const CHROOT_LIMITS: &str = "RUN steps run chrooted into copies of their root filesystem: no \
     namespaces, no /proc, the host's network and hostname, cache and tmpfs mounts and /dev \
     moved into the copy (no other RUN --mount), their processes killed when each ends";

/// What decides the isolation, read off this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub euid: u32,
    /// The host's uid (differs from `euid` in a user namespace).
    pub host_uid: u32,
    pub sys_admin: bool,
    /// Runs in a user namespace already.
    pub in_userns: bool,
    /// That namespace is the one an outer kiln made for this command.
    pub inner: bool,
    /// A user namespace can be made here (tried), or why not.
    pub userns: Result<(), String>,
    /// Holds CAP_SYS_CHROOT.
    pub sys_chroot: bool,
}

impl Facts {
    pub fn probe() -> Facts {
        let euid = rustix::process::geteuid().as_raw();
        let sys_admin = kiln_runtime::userns::has_sys_admin();
        let in_userns = kiln_runtime::userns::in_user_namespace();
        Facts {
            euid,
            host_uid: kiln_runtime::userns::host_uid(),
            sys_admin,
            in_userns,
            // The outer kiln's mark counts only inside a user namespace:
            // set by a caller on the host, it would skip the isolation.
            inner: in_userns
                && std::env::var_os(kiln_runtime::userns::INNER_ENV).is_some_and(|v| v == "1"),
            // Tried only when it may be needed (it starts a process): not
            // as privileged root, nor inside a user namespace already.
            userns: match (euid == 0 && sys_admin) || in_userns {
                true => Ok(()),
                false => kiln_runtime::userns::probe_new(),
            },
            sys_chroot: kiln_runtime::userns::has_sys_chroot(),
        }
    }
}

/// The isolation chosen for `asked`, whether kiln must enter a user
/// namespace for it, and why it is weaker than full namespaces (the
/// warning line), or why `asked` cannot be had here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolationChoice {
    pub isolation: Isolation,
    pub enter_userns: bool,
    pub reason: Option<String>,
}

/// Decides the isolation (see the module doc).
pub fn choose_isolation(asked: IsolationArg, facts: &Facts) -> Result<IsolationChoice, String> {
    let privileged = facts.euid == 0 && facts.sys_admin && !facts.in_userns;
    let why_not_root = if facts.in_userns {
        format!(
            "kiln runs in a user namespace (uid {} outside)",
            facts.host_uid
        )
    } else if facts.euid != 0 {
        format!("kiln runs as uid {}, not root", facts.euid)
    } else {
        "kiln runs as root without CAP_SYS_ADMIN".to_string()
    };
    let chroot_ok = facts.euid == 0 && facts.sys_chroot;
    let no_userns = match (&facts.userns, facts.in_userns) {
        (Err(why), false) => Some(why.clone()),
        _ => None,
    };
    let chroot = |reason: String| IsolationChoice {
        isolation: Isolation::Chroot,
        enter_userns: false,
        reason: Some(reason),
    };
    match asked {
        IsolationArg::Chroot if !chroot_ok => Err(format!(
            "--isolation chroot needs root with CAP_SYS_CHROOT, and kiln runs as uid {}{}",
            facts.euid,
            if facts.euid == 0 { " without it" } else { "" }
        )),
        IsolationArg::Chroot => Ok(chroot(format!(
            "isolation chroot (--isolation chroot): {CHROOT_LIMITS}"
        ))),
        IsolationArg::Namespaces if !privileged => Err(format!(
            "--isolation namespaces needs root with CAP_SYS_ADMIN, and {why_not_root}; \
             --isolation rootless (or auto) builds in a user namespace"
        )),
        IsolationArg::Namespaces | IsolationArg::Auto if privileged => Ok(IsolationChoice {
            isolation: Isolation::Namespaces,
            enter_userns: false,
            reason: None,
        }),
        IsolationArg::Auto if no_userns.is_some() && chroot_ok => Ok(chroot(format!(
            "isolation chroot: {why_not_root} and no user namespace can be made ({}), so \
             {CHROOT_LIMITS}",
            no_userns.unwrap_or_default()
        ))),
        _ if no_userns.is_some() => Err(format!(
            "cannot build here: no user namespace can be made ({}), and {why_not_root}; \
             --isolation chroot needs root with CAP_SYS_CHROOT",
            no_userns.unwrap_or_default()
        )),
        _ => Ok(IsolationChoice {
            isolation: Isolation::Rootless,
            enter_userns: !facts.in_userns,
            reason: Some(if asked == IsolationArg::Rootless {
                "isolation rootless (--isolation rootless): the build runs in a user namespace"
                    .to_string()
            } else {
                format!(
                    "isolation rootless: {why_not_root}, so the build runs in a user namespace \
                     (no cgroup limits unless delegated, devices bound from the host)"
                )
            }),
        }),
    }
}

/// For a command that touches the store: enters a user namespace when
/// the isolation needs one, running this same command again in it, and
/// returns its exit code; `None` to go on in this process. `asked` is the
/// build's `--isolation` (auto for other commands); `root` the store,
/// passed on so that the inner kiln (uid 0 there) uses the user's.
pub fn enter_user_namespace(
    asked: IsolationArg,
    root: &std::path::Path,
) -> Result<Option<ExitCode>, String> {
    let facts = Facts::probe();
    if facts.inner {
        return Ok(None);
    }
    let choice = choose_isolation(asked, &facts)?;
    if !choice.enter_userns {
        return Ok(None);
    }
    let mut warnings: Vec<String> = choice.reason.into_iter().collect();
    if let Err(missing) = kiln_runtime::idmap::subordinate_ids() {
        warnings.push(format!(
            "only uid {} is mapped in the user namespace ({missing}): files of other owners \
             (COPY --chown, image layers owned by other users) cannot be made",
            facts.euid
        ));
    }
    let env = [
        ("KILN_ROOT".to_string(), OsString::from(root)),
        (
            WARNINGS_ENV.to_string(),
            OsString::from(warnings.join("\n")),
        ),
    ];
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let code = kiln_runtime::userns::reexec(std::path::Path::new("/proc/self/exe"), &args, &env)
        .map_err(|e| format!("entering a user namespace: {e}"))?;
    Ok(Some(ExitCode::from(u8::try_from(code).unwrap_or(1))))
}

/// The sandbox a build's RUN steps run in, and what was given up on the
/// way, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSandbox {
    /// RUN's network unless a RUN says `--network=host|none`.
    pub network: Network,
    /// How a RUN's root filesystem is made.
    pub snapshotter: Snapshotter,
    /// chroot isolation: no namespaces (then the snapshotter is `Copy`
    /// and the network the host's).
    pub chroot: bool,
    /// Lines for the user: each a weaker isolation than asked for, and why.
    pub warnings: Vec<String>,
}

impl BuildSandbox {
    /// The sandbox for `network` (`None`: `--network default`), given what
    /// this machine allows (`support`, from [`kiln_runtime::network::probe`]).
    pub fn decide(network: Option<Network>, support: &NetworkSupport) -> Self {
        let mut warnings = Vec::new();
        let network = match network {
            Some(chosen) => chosen,
            None if support.available() => Network::Private,
            None => {
                warnings.push(format!(
                    "RUN steps share the host's network: the default private network \
                     needs slirp4netns and /dev/net/tun ({}); --network host says so \
                     without this warning, --network none cuts RUN off",
                    support.detail
                ));
                Network::Host
            }
        };
        BuildSandbox {
            network,
            snapshotter: Snapshotter::Overlay,
            chroot: false,
            warnings,
        }
    }

    /// The sandbox of chroot isolation: copies, the host's network
    /// (`--network none` needs a namespace).
    fn chroot(network: Option<Network>) -> Result<Self, String> {
        if network == Some(Network::None) {
            return Err(
                "--network none needs a network namespace, which --isolation chroot \
                        cannot make; supported there: --network default or host (both the \
                        host's network)"
                    .into(),
            );
        }
        Ok(BuildSandbox {
            network: Network::Host,
            snapshotter: Snapshotter::Copy,
            chroot: true,
            warnings: Vec::new(),
        })
    }

    /// The snapshotter for a store at `root` (with the warning when it is
    /// the copying one).
    fn choose_snapshotter(&mut self, root: &std::path::Path) {
        let (snapshotter, why) = Snapshotter::for_store(root);
        self.snapshotter = snapshotter;
        if let Err(why) = why {
            self.warnings.push(format!("snapshotter copy: {why}"));
        }
    }

    /// [`BuildSandbox::decide`] on this machine, after the isolation's
    /// warnings (handed down by the outer kiln, or found here).
    pub fn probe(
        network: Option<Network>,
        asked: IsolationArg,
        root: &std::path::Path,
    ) -> Result<Self, String> {
        let facts = Facts::probe();
        let (chroot, mut warnings): (bool, Vec<String>) = if facts.inner {
            let warnings = std::env::var(WARNINGS_ENV).unwrap_or_default();
            (false, warnings.lines().map(str::to_string).collect())
        } else {
            let choice = choose_isolation(asked, &facts)?;
            let chroot = choice.isolation == Isolation::Chroot;
            (chroot, choice.reason.into_iter().collect())
        };
        let mut sandbox = match chroot {
            true => Self::chroot(network)?,
            false => Self::decide(network, &kiln_runtime::network::probe()),
        };
        if !chroot {
            sandbox.choose_snapshotter(root);
        }
        warnings.append(&mut sandbox.warnings);
        sandbox.warnings = warnings;
        Ok(sandbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(euid: u32, sys_admin: bool, in_userns: bool) -> Facts {
        Facts {
            euid,
            host_uid: if in_userns { 1000 } else { euid },
            sys_admin,
            in_userns,
            inner: false,
            userns: Ok(()),
            sys_chroot: euid == 0,
        }
    }

    #[test]
    fn isolation_is_the_strongest_available_or_what_was_named_or_an_error() {
        let root = facts(0, true, false);
        let user = facts(1000, false, false);
        let capless_root = facts(0, false, false);
        let nested = facts(0, true, true);
        let auto = choose_isolation(IsolationArg::Auto, &root).unwrap();
        assert_eq!(auto.isolation, Isolation::Namespaces);
        assert!(!auto.enter_userns && auto.reason.is_none());
        for (who, f) in [
            ("uid 1000", &user),
            ("without CAP_SYS_ADMIN", &capless_root),
        ] {
            let auto = choose_isolation(IsolationArg::Auto, f).unwrap();
            assert_eq!(auto.isolation, Isolation::Rootless);
            assert!(auto.enter_userns);
            let reason = auto.reason.unwrap();
            assert!(reason.starts_with("isolation rootless: "), "{reason}");
            assert!(reason.contains(who), "{reason}");
            let err = choose_isolation(IsolationArg::Namespaces, f).unwrap_err();
            assert!(
                err.starts_with("--isolation namespaces needs root"),
                "{err}"
            );
        }
        // Already in a user namespace: rootless, none entered.
        let inside = choose_isolation(IsolationArg::Auto, &nested).unwrap();
        assert_eq!(inside.isolation, Isolation::Rootless);
        assert!(!inside.enter_userns);
        // Rootless as root: asked for, so entered.
        let asked = choose_isolation(IsolationArg::Rootless, &root).unwrap();
        assert!(asked.enter_userns);
        // chroot: named (root), or where no user namespace can be made.
        let named = choose_isolation(IsolationArg::Chroot, &root).unwrap();
        assert_eq!(named.isolation, Isolation::Chroot);
        assert!(!named.enter_userns);
        let err = choose_isolation(IsolationArg::Chroot, &user).unwrap_err();
        assert!(err.starts_with("--isolation chroot needs root"), "{err}");
        let mut pod = facts(0, false, false);
        pod.userns = Err("unshare(CLONE_NEWUSER): Operation not permitted".into());
        let auto = choose_isolation(IsolationArg::Auto, &pod).unwrap();
        assert_eq!(auto.isolation, Isolation::Chroot);
        let reason = auto.reason.unwrap();
        assert!(
            reason.starts_with("isolation chroot: kiln runs as root without CAP_SYS_ADMIN and no user namespace can be made (unshare(CLONE_NEWUSER): Operation not permitted)"),
            "{reason}"
        );
        // Named, the others fail there instead of degrading.
        for asked in [IsolationArg::Rootless, IsolationArg::Namespaces] {
            assert!(choose_isolation(asked, &pod).is_err());
        }
        // Neither a user namespace nor chroot: an error.
        let mut user_pod = facts(1000, false, false);
        user_pod.userns = pod.userns.clone();
        let err = choose_isolation(IsolationArg::Auto, &user_pod).unwrap_err();
        assert!(err.starts_with("cannot build here"), "{err}");
    }

    fn support(available: bool) -> NetworkSupport {
        NetworkSupport {
            slirp4netns: available.then(|| "/usr/bin/slirp4netns".into()),
            detail: if available {
                "slirp4netns (/usr/bin/slirp4netns)".into()
            } else {
                "slirp4netns is not installed".into()
            },
        }
    }

    #[test]
    fn the_default_is_private_where_possible_else_the_host_with_a_warning() {
        let private = BuildSandbox::decide(None, &support(true));
        assert_eq!(private.network, Network::Private);
        assert!(private.warnings.is_empty());
        let host = BuildSandbox::decide(None, &support(false));
        assert_eq!(host.network, Network::Host);
        assert_eq!(host.warnings.len(), 1);
        assert!(
            host.warnings[0].contains("slirp4netns is not installed"),
            "{:?}",
            host.warnings
        );
        // Named explicitly: no warning, whatever the machine allows.
        let named = BuildSandbox::decide(Some(Network::Host), &support(false));
        assert_eq!(named.network, Network::Host);
        assert!(named.warnings.is_empty());
    }
}
