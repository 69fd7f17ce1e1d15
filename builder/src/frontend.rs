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
//! `BUILDKIT_DOCKERFILE_CHECK` (see [`crate::lint::check_config`]),
//! `BUILDKIT_SYNTAX`, `BUILDKIT_CONTEXT_KEEP_GIT_DIR` (a Git context keeps
//! its `.git`), and, read by the CLI as buildx reads them,
//! `BUILDKIT_INLINE_CACHE` ([`inline_cache`]: `--cache-to type=inline`) and
//! `BUILDKIT_MULTI_PLATFORM` ([`makes_index`]: an index even for one
//! platform) and `BUILDKIT_ATTEST_PROVENANCE` (as `--attest
//! type=provenance,…`; `BUILDKIT_ATTEST_SBOM` is refused).
//! `BUILDKIT_BUILD_NAME` names a build in BuildKit's history,
//! which kiln does not keep: it warns that it has no effect, as does
//! `BUILDKIT_CONTEXT_KEEP_GIT_DIR` with a context that is not Git.
//!
//! ```
//! use kiln_builder::frontend::Frontend;
//! let ast = kiln_parser::parse("# syntax=docker/dockerfile:1.7\nFROM scratch\n", "Dockerfile").unwrap();
//! let frontend = Frontend::from_build(&ast, &Default::default(), false).unwrap();
//! assert_eq!(frontend.warnings.len(), 1);
//! let ast = kiln_parser::parse("# syntax=example.com/my/frontend\nFROM scratch\n", "Dockerfile").unwrap();
//! assert!(Frontend::from_build(&ast, &Default::default(), false).is_err());
//! ```

use std::collections::BTreeMap;

use kiln_layers::Reference;

use crate::plan::PlanWarning;

/// The hostname RUN steps get unless `BUILDKIT_SANDBOX_HOSTNAME` says
/// otherwise (BuildKit's).
pub const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

/// The build args BuildKit's frontend reads as options: they need no ARG
/// and are never reported unused (`SOURCE_DATE_EPOCH` dates the image;
/// buildx passes it from the environment to every build).
pub const FRONTEND_ARGS: &[&str] = &[
    "BUILDKIT_ATTEST_PROVENANCE",
    "BUILDKIT_BUILD_NAME",
    "BUILDKIT_CACHE_MOUNT_NS",
    "BUILDKIT_CONTEXT_KEEP_GIT_DIR",
    "BUILDKIT_DOCKERFILE_CHECK",
    "BUILDKIT_INLINE_CACHE",
    "BUILDKIT_MULTI_PLATFORM",
    "BUILDKIT_SANDBOX_HOSTNAME",
    "BUILDKIT_SYNTAX",
    "SOURCE_DATE_EPOCH",
];

/// `BUILDKIT_INLINE_CACHE`: true asks for `--cache-to type=inline`, as
/// buildx reads it; unset or empty is false. A value that is not a
/// boolean is refused (buildx would take it for false, silently).
pub fn inline_cache(build_args: &BTreeMap<String, String>) -> Result<bool, FrontendError> {
    Ok(boolean_arg(build_args, "BUILDKIT_INLINE_CACHE")?.unwrap_or(false))
}

/// Whether the result is an index, as BuildKit's frontend decides it for a
/// build of `platforms` target platforms: `BUILDKIT_MULTI_PLATFORM` when
/// set (not empty), else several platforms. A value that is not a boolean
/// is refused, and so is false with several platforms, as there.
pub fn makes_index(
    build_args: &BTreeMap<String, String>,
    platforms: usize,
) -> Result<bool, FrontendError> {
    let several = platforms > 1;
    match boolean_arg(build_args, "BUILDKIT_MULTI_PLATFORM")? {
        Some(false) if several => Err(FrontendError {
            line: None,
            message: "build arg BUILDKIT_MULTI_PLATFORM is false and the build has several \
                      target platforms: conflicting config: returning multiple target \
                      platforms is not allowed"
                .to_string(),
        }),
        Some(asked) => Ok(asked),
        None => Ok(several),
    }
}

/// A boolean build arg as Go's `strconv.ParseBool` reads it; None when it
/// is unset or empty (BuildKit's frontend reads an empty one as unset).
fn boolean_arg(
    build_args: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<bool>, FrontendError> {
    match build_args.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(value) => crate::git::parse_go_bool(value)
            .map(Some)
            .ok_or_else(|| FrontendError {
                line: None,
                message: format!(
                    "build arg {name}={value}: invalid boolean value (1, t, true, 0, f, false, \
                     as Go reads them)"
                ),
            }),
    }
}

/// A `SOURCE_DATE_EPOCH` value (the build arg's, or the environment's),
/// as BuildKit's frontend reads it: whole seconds since the epoch; empty
/// is unset; anything else is refused (never taken for unset).
pub fn parse_source_date_epoch(value: &str) -> Result<Option<i64>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse::<i64>().map(Some).map_err(|_| {
        format!(
            "SOURCE_DATE_EPOCH={value}: invalid, not a whole number of seconds since the epoch \
             (BuildKit's `context` and stage-name values, which read the time from a source, \
             are not supported)"
        )
    })
}

/// The `SOURCE_DATE_EPOCH` build arg ([`parse_source_date_epoch`]).
pub fn source_date_epoch_arg(
    build_args: &BTreeMap<String, String>,
) -> Result<Option<i64>, FrontendError> {
    match build_args.get("SOURCE_DATE_EPOCH") {
        None => Ok(None),
        Some(value) => parse_source_date_epoch(value).map_err(|e| FrontendError {
            line: None,
            message: format!("build arg {e}"),
        }),
    }
}

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
    /// Reads the directive and the build args (`git_context`: the build
    /// context is a Git repository, where `BUILDKIT_CONTEXT_KEEP_GIT_DIR`
    /// means something).
    pub fn from_build(
        ast: &kiln_parser::ast::Dockerfile,
        build_args: &BTreeMap<String, String>,
        git_context: bool,
    ) -> Result<Frontend, FrontendError> {
        let mut frontend = Frontend {
            warnings: Vec::new(),
        };
        frontend.syntax(ast, build_args)?;
        inline_cache(build_args)?;
        boolean_arg(build_args, "BUILDKIT_MULTI_PLATFORM")?;
        source_date_epoch_arg(build_args)?;
        let no_effect = [
            (
                "BUILDKIT_CONTEXT_KEEP_GIT_DIR",
                "the build context is not a Git repository",
                !git_context,
            ),
            ("BUILDKIT_BUILD_NAME", "kiln keeps no build history", true),
        ];
        for (arg, why, _) in no_effect.iter().filter(|(_, _, applies)| *applies) {
            if build_args.contains_key(*arg) {
                frontend.warnings.push(PlanWarning {
                    line: None,
                    message: format!("build arg {arg} has no effect: {why}"),
                });
            }
        }
        Ok(frontend)
    }

    /// Refuses a `# syntax=` (or `BUILDKIT_SYNTAX`) naming a frontend kiln
    /// cannot run, as a build refuses it: what `kiln check` and `kiln
    /// explain` would say of the file is kiln's frontend's, not that one's.
    pub fn refuse_foreign_syntax(
        ast: &kiln_parser::ast::Dockerfile,
        build_args: &BTreeMap<String, String>,
    ) -> Result<(), FrontendError> {
        Frontend {
            warnings: Vec::new(),
        }
        .syntax(ast, build_args)
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
        Frontend::from_build(&ast, &args, false)
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
        // The ones read elsewhere (hostname, cache namespace, inline
        // cache, index) warn of nothing; a keep-git-dir with a context
        // that is not Git does.
        let f = frontend(
            "FROM scratch\n",
            &[
                ("BUILDKIT_SANDBOX_HOSTNAME", "builder"),
                ("BUILDKIT_CACHE_MOUNT_NS", "team"),
                ("BUILDKIT_INLINE_CACHE", "1"),
                ("BUILDKIT_MULTI_PLATFORM", "true"),
                ("BUILDKIT_CONTEXT_KEEP_GIT_DIR", "1"),
            ],
        )
        .unwrap();
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        assert!(f.warnings[0]
            .message
            .contains("BUILDKIT_CONTEXT_KEEP_GIT_DIR has no effect: the build context is not a Git repository"));
        let ast = kiln_parser::parse("FROM scratch\n", "Dockerfile").unwrap();
        let git = [("BUILDKIT_CONTEXT_KEEP_GIT_DIR".to_string(), "1".to_string())].into();
        assert!(Frontend::from_build(&ast, &git, true)
            .unwrap()
            .warnings
            .is_empty());
    }

    #[test]
    fn boolean_build_args_read_as_go_reads_them() {
        let args = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(inline_cache(&args("BUILDKIT_INLINE_CACHE", "1")).unwrap());
        assert!(inline_cache(&args("BUILDKIT_INLINE_CACHE", "True")).unwrap());
        assert!(!inline_cache(&args("BUILDKIT_INLINE_CACHE", "0")).unwrap());
        assert!(!inline_cache(&BTreeMap::new()).unwrap());
        assert!(!inline_cache(&args("BUILDKIT_INLINE_CACHE", "")).unwrap());
        let multi =
            |v: &str, platforms: usize| makes_index(&args("BUILDKIT_MULTI_PLATFORM", v), platforms);
        assert!(multi("t", 1).unwrap());
        assert!(!multi("false", 1).unwrap());
        // Empty is unset: several platforms make an index, one does not.
        assert!(!multi("", 1).unwrap());
        assert!(multi("", 2).unwrap());
        assert!(makes_index(&BTreeMap::new(), 2).unwrap());
        assert!(!makes_index(&BTreeMap::new(), 1).unwrap());
        let err = multi("0", 2).unwrap_err();
        assert!(
            err.message
                .contains("returning multiple target platforms is not allowed"),
            "{}",
            err.message
        );
        let err = inline_cache(&args("BUILDKIT_INLINE_CACHE", "yes")).unwrap_err();
        assert!(err
            .message
            .contains("BUILDKIT_INLINE_CACHE=yes: invalid boolean value"));
        let err = multi("yes", 1).unwrap_err();
        assert!(err
            .message
            .contains("BUILDKIT_MULTI_PLATFORM=yes: invalid boolean value"));
        for name in ["BUILDKIT_INLINE_CACHE", "BUILDKIT_MULTI_PLATFORM"] {
            // The build refuses it before anything runs.
            assert!(frontend("FROM scratch\n", &[(name, "yes")]).is_err());
        }
    }
}
