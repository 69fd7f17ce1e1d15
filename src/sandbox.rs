//! What a build's RUN steps get on this machine: the network (a private
//! one where slirp4netns can give it, else the host's, said in a warning
//! line). `kiln build` asks for it before it starts, `kiln info` shows it.

use kiln_runtime::network::NetworkSupport;
use kiln_runtime::Network;

/// The sandbox a build's RUN steps run in, and what was given up on the
/// way, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSandbox {
    /// RUN's network unless a RUN says `--network=host|none`.
    pub network: Network,
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
        BuildSandbox { network, warnings }
    }

    /// [`BuildSandbox::decide`] on this machine.
    pub fn probe(network: Option<Network>) -> Self {
        Self::decide(network, &kiln_runtime::network::probe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
