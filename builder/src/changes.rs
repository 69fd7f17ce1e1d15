//! `--change` instructions (`kiln import`), as `docker import --change`
//! applies them: each line is parsed as a Dockerfile instruction and run
//! through the same config assembly as a build, on top of the new image.
//!
//! ```
//! use kiln_layers::oci::ContainerConfig;
//! let config = kiln_builder::changes::apply_changes(
//!     ContainerConfig::default(),
//!     &["ENV PATH=/bin".to_string(), "CMD [\"sh\"]".to_string()],
//! )
//! .unwrap();
//! assert_eq!(config.cmd, Some(vec!["sh".to_string()]));
//! ```

use kiln_layers::oci::{ContainerConfig, ImageConfig, Platform};
use kiln_layers::Reference;
use kiln_parser::instructions::{self, Instruction};

use crate::plan::{plan, BuildOptions, FoundImage, ImageLookup, LookupError, Origin};

/// The instructions `docker import --change` accepts.
pub const ALLOWED: &[&str] = &[
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "HEALTHCHECK",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// A `--change` line that is not a valid, allowed instruction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--change {change:?}: {reason}")]
pub struct ChangeError {
    pub change: String,
    pub reason: String,
}

/// Applies `changes` in order to `config`, returning the new config.
pub fn apply_changes(
    config: ContainerConfig,
    changes: &[String],
) -> Result<ContainerConfig, ChangeError> {
    for change in changes {
        check_change(change)?;
    }
    if changes.is_empty() {
        return Ok(config);
    }
    let source = format!("FROM base\n{}\n", changes.join("\n"));
    let all_at_once = |reason: String| ChangeError {
        change: changes.join("; "),
        reason,
    };
    let parsed = kiln_parser::parse(&source, "--change").map_err(|e| all_at_once(e.to_string()))?;
    let typed = instructions::from_ast(&parsed).map_err(|e| all_at_once(e.to_string()))?;
    let base = FixedBase(ImageConfig {
        config: Some(config),
        ..ImageConfig::default()
    });
    let planned =
        plan(&typed, &BuildOptions::default(), &base).map_err(|e| all_at_once(e.to_string()))?;
    let stage = &planned.stages[planned.target];
    let mut config = stage.image.config.clone().unwrap_or_default();
    // FROM gives a stage the default PATH when its image has none; docker
    // import runs no FROM, so that entry goes (one a change set stays).
    // Changes still see it while they expand, unlike docker's.
    if stage.provenance.get("Env.PATH") == Some(&Origin::Default) {
        if let Some(env) = config.env.as_mut() {
            env.retain(|e| !e.starts_with("PATH="));
        }
        if config.env.as_ref().is_some_and(|e| e.is_empty()) {
            config.env = None;
        }
    }
    Ok(config)
}

/// Parses one change on its own so an error names the line at fault.
fn check_change(change: &str) -> Result<(), ChangeError> {
    let bad = |reason: String| ChangeError {
        change: change.to_string(),
        reason,
    };
    if change.contains(['\n', '\r']) {
        return Err(bad("a change is one line".into()));
    }
    let source = format!("FROM base\n{change}\n");
    let parsed = kiln_parser::parse(&source, "--change").map_err(|e| bad(e.to_string()))?;
    let typed = instructions::from_ast(&parsed).map_err(|e| bad(e.to_string()))?;
    let found: Vec<&Instruction> = typed.stages.iter().flat_map(|s| &s.instructions).collect();
    match (typed.stages.len(), found.as_slice()) {
        (1, [one]) => {
            let keyword = one.meta().keyword.to_ascii_uppercase();
            if ALLOWED.contains(&keyword.as_str()) {
                Ok(())
            } else {
                Err(bad(format!(
                    "{keyword} is not a valid change command (one of {})",
                    ALLOWED.join(", ")
                )))
            }
        }
        _ => Err(bad(format!(
            "expected one instruction, one of {}",
            ALLOWED.join(", ")
        ))),
    }
}

/// Every base reference resolves to the image being imported.
struct FixedBase(ImageConfig);

impl ImageLookup for FixedBase {
    fn lookup(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<FoundImage, LookupError> {
        let mut config = self.0.clone();
        config.architecture = platform.architecture.clone();
        config.os = platform.os.clone();
        Ok(FoundImage {
            reference: reference.clone(),
            digest: None,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(changes: &[&str]) -> Result<ContainerConfig, ChangeError> {
        let changes: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
        apply_changes(ContainerConfig::default(), &changes)
    }

    #[test]
    fn every_allowed_instruction_lands_in_the_config() {
        let c = apply(&[
            "ENV PATH=/usr/bin:/bin HOME=/root",
            "ENV LEGACY value with spaces",
            "LABEL a=b \"c d\"=e",
            "EXPOSE 80 53/udp 8000-8001",
            "VOLUME /data [\"/logs\"]",
            "VOLUME [\"/cache\", \"/tmp/x\"]",
            "WORKDIR /srv",
            "WORKDIR app",
            "USER app:app",
            "STOPSIGNAL SIGINT",
            "HEALTHCHECK --interval=5s CMD true",
            "ONBUILD RUN echo hi",
            "ENTRYPOINT [\"/bin/sh\", \"-c\"]",
            "CMD echo $HOME",
        ])
        .unwrap();
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json["Env"],
            serde_json::json!([
                "PATH=/usr/bin:/bin",
                "HOME=/root",
                "LEGACY=value with spaces"
            ])
        );
        assert_eq!(json["Labels"], serde_json::json!({"a": "b", "c d": "e"}));
        let ports: Vec<&String> = c.exposed_ports.as_ref().unwrap().keys().collect();
        assert_eq!(ports, ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        // The plain form splits words and removes quotes, as docker does.
        let volumes: Vec<&String> = c.volumes.as_ref().unwrap().keys().collect();
        assert_eq!(volumes, ["/cache", "/data", "/tmp/x", "[/logs]"]);
        assert_eq!(c.working_dir.as_deref(), Some("/srv/app"));
        assert_eq!(c.user.as_deref(), Some("app:app"));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(json["Healthcheck"]["Interval"], 5_000_000_000i64);
        assert_eq!(c.on_build, Some(vec!["RUN echo hi".to_string()]));
        assert_eq!(
            c.entrypoint,
            Some(vec!["/bin/sh".to_string(), "-c".to_string()])
        );
        assert_eq!(
            c.cmd,
            Some(vec!["/bin/sh".into(), "-c".into(), "echo $HOME".into()])
        );
    }

    #[test]
    fn entrypoint_resets_an_inherited_cmd_and_env_is_expanded() {
        let base = ContainerConfig {
            cmd: Some(vec!["sh".into()]),
            env: Some(vec!["PATH=/bin".into()]),
            ..ContainerConfig::default()
        };
        let c = apply_changes(
            base,
            &["ENTRYPOINT [\"/init\"]".into(), "ENV P2=$PATH:/sbin".into()],
        )
        .unwrap();
        assert_eq!(c.cmd, None);
        assert_eq!(
            c.env,
            Some(vec!["PATH=/bin".to_string(), "P2=/bin:/sbin".to_string()])
        );
    }

    #[test]
    fn no_default_path_without_a_from() {
        let c = apply(&["ENV HOME=/root", "CMD [\"sh\"]"]).unwrap();
        assert_eq!(c.env, Some(vec!["HOME=/root".to_string()]));
        let c = apply(&["CMD [\"sh\"]"]).unwrap();
        assert_eq!(c.env, None);
        let c = apply(&["ENV PATH=/opt/bin"]).unwrap();
        assert_eq!(c.env, Some(vec!["PATH=/opt/bin".to_string()]));
    }

    #[test]
    fn bad_changes_are_named() {
        for (change, reason) in [
            ("RUN echo hi", "RUN is not a valid change command"),
            ("COPY a b", "COPY is not a valid change command"),
            ("FROM other", "expected one instruction"),
            ("BOGUS x", "unknown instruction"),
            ("CMD [\"a\"]\nRUN x", "a change is one line"),
            ("STOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
        ] {
            let err = apply(&[change]).unwrap_err();
            assert_eq!(err.change, change);
            let text = err.to_string();
            assert!(text.contains(reason), "{change:?}: {text}");
        }
    }
}
