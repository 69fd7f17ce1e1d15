//! What a build takes from BuildKit's frontend options: the `# syntax=`
//! directive (or `BUILDKIT_SYNTAX`) and the `BUILDKIT_*` build args.
//!
//! kiln has one frontend, built in: the Dockerfile syntax of BuildKit's
//! current `docker/dockerfile:1` frontend (heredocs, `RUN --mount`,
//! `COPY --link`/`--parents`/`--exclude`, `ADD --checksum`, build checks).
//! A `# syntax=` naming a `docker/dockerfile` version is accepted with one
//! warning that kiln does not pull it; any other frontend image, which kiln
//! cannot run, is refused.
//!
//! Of the `BUILDKIT_*` build args, kiln honours `BUILDKIT_SANDBOX_HOSTNAME`
//! (RUN's hostname), `BUILDKIT_CACHE_MOUNT_NS` (cache mount ids),
//! `BUILDKIT_DOCKERFILE_CHECK` (see [`crate::lint::check_config`]) and
//! `BUILDKIT_SYNTAX`; the others warn that they have no effect in kiln.
//!
//! ```
//! use kiln_builder::frontend::Frontend;
//! let ast = kiln_parser::parse("# syntax=docker/dockerfile:1.7\nFROM scratch\n", "Dockerfile").unwrap();
//! let frontend = Frontend::from_build(&ast, &Default::default()).unwrap();
//! assert_eq!(frontend.warnings.len(), 1);
//! let ast = kiln_parser::parse("# syntax=example.com/my/frontend\nFROM scratch\n", "Dockerfile").unwrap();
//! assert!(Frontend::from_build(&ast, &Default::default()).is_err());
//! ```

use std::collections::BTreeMap;

use kiln_layers::Reference;

use crate::plan::PlanWarning;

/// The hostname RUN steps get unless `BUILDKIT_SANDBOX_HOSTNAME` says
/// otherwise (BuildKit's).
pub const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

/// The build args BuildKit's frontend reads as options: they need no ARG
/// and are never reported unused.
pub const FRONTEND_ARGS: &[&str] = &[
    "BUILDKIT_BUILD_NAME",
    "BUILDKIT_CACHE_MOUNT_NS",
    "BUILDKIT_CONTEXT_KEEP_GIT_DIR",
    "BUILDKIT_DOCKERFILE_CHECK",
    "BUILDKIT_INLINE_CACHE",
    "BUILDKIT_MULTI_PLATFORM",
    "BUILDKIT_SANDBOX_HOSTNAME",
    "BUILDKIT_SYNTAX",
];

/// RUN's hostname: `BUILDKIT_SANDBOX_HOSTNAME`, else BuildKit's default.
pub fn hostname(build_args: &BTreeMap<String, String>) -> String {
    build_args
        .get("BUILDKIT_SANDBOX_HOSTNAME")
        .cloned()
        .unwrap_or_else(|| DEFAULT_HOSTNAME.to_string())
}

/// `BUILDKIT_CACHE_MOUNT_NS`, when set and not empty.
pub fn cache_namespace(build_args: &BTreeMap<String, String>) -> Option<String> {
    build_args
        .get("BUILDKIT_CACHE_MOUNT_NS")
        .filter(|ns| !ns.is_empty())
        .cloned()
}

/// The frontend options of one build that are not the plan's (the plan
/// takes RUN's hostname and the cache namespace itself: they are part of
/// a step's cache key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    /// What was accepted but has no effect, said once.
    pub warnings: Vec<PlanWarning>,
}

/// A syntax kiln cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct FrontendError {
    pub line: Option<usize>,
    pub message: String,
}

impl Frontend {
    /// Reads the directive and the build args.
    pub fn from_build(
        ast: &kiln_parser::ast::Dockerfile,
        build_args: &BTreeMap<String, String>,
    ) -> Result<Frontend, FrontendError> {
        let mut frontend = Frontend {
            warnings: Vec::new(),
        };
        frontend.syntax(ast, build_args)?;
        for (arg, why) in [
            (
                "BUILDKIT_INLINE_CACHE",
                "kiln writes no inline cache metadata",
            ),
            (
                "BUILDKIT_MULTI_PLATFORM",
                "kiln builds one platform's image, never an index",
            ),
            (
                "BUILDKIT_CONTEXT_KEEP_GIT_DIR",
                "the build context is a local directory",
            ),
            ("BUILDKIT_BUILD_NAME", "kiln keeps no build history"),
        ] {
            if build_args.contains_key(arg) {
                frontend.warnings.push(PlanWarning {
                    line: None,
                    message: format!("build arg {arg} has no effect: {why}"),
                });
            }
        }
        Ok(frontend)
    }

    /// `BUILDKIT_SYNTAX`, else the `# syntax=` directive: the built-in
    /// frontend (`dockerfile.v0`), a `docker/dockerfile` version (not
    /// pulled: a warning), or a frontend kiln cannot run (an error).
    fn syntax(
        &mut self,
        ast: &kiln_parser::ast::Dockerfile,
        build_args: &BTreeMap<String, String>,
    ) -> Result<(), FrontendError> {
        let (value, line, what) = match (build_args.get("BUILDKIT_SYNTAX"), ast.directive("syntax"))
        {
            (Some(value), _) => (value.clone(), None, "BUILDKIT_SYNTAX"),
            (None, Some(directive)) => (
                directive.value.clone(),
                Some(directive.span.start.line),
                "# syntax",
            ),
            (None, None) => return Ok(()),
        };
        if value.is_empty() || value == "dockerfile.v0" {
            return Ok(());
        }
        if is_dockerfile_frontend(&value) {
            self.warnings.push(PlanWarning {
                line,
                message: format!(
                    "{what}={value}: kiln uses its built-in frontend (the Dockerfile syntax of BuildKit's docker/dockerfile:1) and does not pull {value}"
                ),
            });
            return Ok(());
        }
        Err(FrontendError {
            line,
            message: format!(
                "{what}={value} names a frontend kiln cannot run: kiln has only its built-in Dockerfile frontend (docker/dockerfile:1); remove the directive or set BUILDKIT_SYNTAX=dockerfile.v0"
            ),
        })
    }
}

/// Whether `value` names BuildKit's own Dockerfile frontend image
/// (`docker/dockerfile`, `docker/dockerfile-upstream`, any tag or digest).
fn is_dockerfile_frontend(value: &str) -> bool {
    let Ok(reference) = Reference::parse(value) else {
        return false;
    };
    matches!(
        reference.name().as_str(),
        "docker.io/docker/dockerfile" | "docker.io/docker/dockerfile-upstream"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontend(source: &str, args: &[(&str, &str)]) -> Result<Frontend, FrontendError> {
        let ast = kiln_parser::parse(source, "Dockerfile").unwrap();
        let args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Frontend::from_build(&ast, &args)
    }

    #[test]
    fn syntaxes() {
        for ok in [
            "# syntax=docker/dockerfile:1\nFROM scratch\n",
            "# syntax=docker.io/docker/dockerfile:1.7-labs\nFROM scratch\n",
            "# syntax=docker/dockerfile-upstream:master\nFROM scratch\n",
        ] {
            let f = frontend(ok, &[]).unwrap();
            assert_eq!(f.warnings.len(), 1, "{ok}");
            assert_eq!(f.warnings[0].line, Some(1));
        }
        assert!(frontend("FROM scratch\n", &[]).unwrap().warnings.is_empty());
        let err = frontend("# syntax=tonistiigi/dockerfile:labs\nFROM scratch\n", &[]).unwrap_err();
        assert_eq!(err.line, Some(1));
        // The build arg wins over the directive.
        let f = frontend(
            "# syntax=tonistiigi/dockerfile:labs\nFROM scratch\n",
            &[("BUILDKIT_SYNTAX", "dockerfile.v0")],
        )
        .unwrap();
        assert!(f.warnings.is_empty());
    }

    #[test]
    fn build_args() {
        let args: BTreeMap<String, String> = [
            ("BUILDKIT_SANDBOX_HOSTNAME", "builder"),
            ("BUILDKIT_CACHE_MOUNT_NS", "team"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(hostname(&args), "builder");
        assert_eq!(cache_namespace(&args).as_deref(), Some("team"));
        assert_eq!(hostname(&BTreeMap::new()), DEFAULT_HOSTNAME);
        let f = frontend(
            "FROM scratch\n",
            &[
                ("BUILDKIT_SANDBOX_HOSTNAME", "builder"),
                ("BUILDKIT_CACHE_MOUNT_NS", "team"),
                ("BUILDKIT_INLINE_CACHE", "1"),
            ],
        )
        .unwrap();
        assert_eq!(f.warnings.len(), 1);
        assert!(f.warnings[0].message.contains("BUILDKIT_INLINE_CACHE"));
    }
}
