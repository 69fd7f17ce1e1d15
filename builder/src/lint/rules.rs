//! The rule table: name, severity, one-line description and documentation
//! link of every check `kiln check` runs.

use serde::Serialize;

/// How bad a finding is. `error` makes `kiln check` exit non-zero on its
/// own; `warning` and `info` only with `# check=error=true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// Who defines the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleOrigin {
    /// One of BuildKit's build checks (same name, message and condition).
    Buildkit,
    /// A kiln rule modelled on a hadolint one (its code is in `reference`).
    Hadolint,
}

/// One lint rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub name: &'static str,
    pub severity: Severity,
    pub origin: RuleOrigin,
    pub description: &'static str,
    /// Documentation: BuildKit's rule page, or the hadolint rule code.
    pub reference: &'static str,
}

macro_rules! buildkit {
    ($ident:ident, $name:literal, $slug:literal, $description:literal) => {
        pub const $ident: Rule = Rule {
            name: $name,
            severity: Severity::Warning,
            origin: RuleOrigin::Buildkit,
            description: $description,
            reference: concat!("https://docs.docker.com/go/dockerfile/rule/", $slug, "/"),
        };
    };
}

macro_rules! hadolint {
    ($ident:ident, $name:literal, $severity:ident, $code:literal, $description:literal) => {
        pub const $ident: Rule = Rule {
            name: $name,
            severity: Severity::$severity,
            origin: RuleOrigin::Hadolint,
            description: $description,
            reference: concat!("https://github.com/hadolint/hadolint/wiki/", $code),
        };
    };
}

buildkit!(
    STAGE_NAME_CASING,
    "StageNameCasing",
    "stage-name-casing",
    "Stage names should be lowercase"
);
buildkit!(
    FROM_AS_CASING,
    "FromAsCasing",
    "from-as-casing",
    "The 'as' keyword should match the case of the 'from' keyword"
);
buildkit!(
    NO_EMPTY_CONTINUATION,
    "NoEmptyContinuation",
    "no-empty-continuation",
    "Empty continuation lines will become errors in a future release"
);
buildkit!(
    CONSISTENT_INSTRUCTION_CASING,
    "ConsistentInstructionCasing",
    "consistent-instruction-casing",
    "All commands within the Dockerfile should use the same casing (either upper or lower)"
);
buildkit!(
    DUPLICATE_STAGE_NAME,
    "DuplicateStageName",
    "duplicate-stage-name",
    "Stage names should be unique"
);
buildkit!(
    RESERVED_STAGE_NAME,
    "ReservedStageName",
    "reserved-stage-name",
    "Reserved words should not be used as stage names"
);
buildkit!(JSON_ARGS_RECOMMENDED, "JSONArgsRecommended", "json-args-recommended", "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals");
buildkit!(
    MAINTAINER_DEPRECATED,
    "MaintainerDeprecated",
    "maintainer-deprecated",
    "The MAINTAINER instruction is deprecated, use a label instead to define an image author"
);
buildkit!(
    UNDEFINED_ARG_IN_FROM,
    "UndefinedArgInFrom",
    "undefined-arg-in-from",
    "FROM command must use declared ARGs"
);
buildkit!(WORKDIR_RELATIVE_PATH, "WorkdirRelativePath", "workdir-relative-path", "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes");
buildkit!(
    UNDEFINED_VAR,
    "UndefinedVar",
    "undefined-var",
    "Variables should be defined before their use"
);
buildkit!(
    MULTIPLE_INSTRUCTIONS_DISALLOWED,
    "MultipleInstructionsDisallowed",
    "multiple-instructions-disallowed",
    "Multiple instructions of the same type should not be used in the same stage"
);
buildkit!(
    LEGACY_KEY_VALUE_FORMAT,
    "LegacyKeyValueFormat",
    "legacy-key-value-format",
    "Legacy key/value format with whitespace separator should not be used"
);
buildkit!(
    INVALID_DEFAULT_ARG_IN_FROM,
    "InvalidDefaultArgInFrom",
    "invalid-default-arg-in-from",
    "Default value for global ARG results in an empty or invalid base image name"
);
buildkit!(
    SECRETS_USED_IN_ARG_OR_ENV,
    "SecretsUsedInArgOrEnv",
    "secrets-used-in-arg-or-env",
    "Sensitive data should not be used in the ARG or ENV commands"
);
buildkit!(
    EXPOSE_PROTO_CASING,
    "ExposeProtoCasing",
    "expose-proto-casing",
    "Protocol in EXPOSE instruction should be lowercase"
);
buildkit!(EXPOSE_INVALID_FORMAT, "ExposeInvalidFormat", "expose-invalid-format", "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release");
buildkit!(
    REDUNDANT_TARGET_PLATFORM,
    "RedundantTargetPlatform",
    "redundant-target-platform",
    "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior"
);
buildkit!(
    FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    "FromPlatformFlagConstDisallowed",
    "from-platform-flag-const-disallowed",
    "FROM --platform flag should not use a constant value"
);
buildkit!(
    INVALID_BASE_IMAGE_PLATFORM,
    "InvalidBaseImagePlatform",
    "invalid-base-image-platform",
    "Base image platform does not match expected target platform"
);
buildkit!(
    COPY_IGNORED_FILE,
    "CopyIgnoredFile",
    "copy-ignored-file",
    "Attempting to Copy file that is excluded by .dockerignore"
);

hadolint!(
    UNPINNED_BASE_IMAGE,
    "UnpinnedBaseImage",
    Warning,
    "DL3006",
    "Base images should be pinned to a version tag or digest, not latest or nothing"
);
hadolint!(
    APT_NO_INSTALL_RECOMMENDS,
    "AptGetNoInstallRecommends",
    Info,
    "DL3015",
    "apt-get install should use --no-install-recommends to avoid pulling in unneeded packages"
);
hadolint!(
    APT_LISTS_NOT_CLEANED,
    "AptGetListsNotCleaned",
    Info,
    "DL3009",
    "apt-get lists should be removed in the RUN that downloads them, or they bloat the layer"
);
hadolint!(
    CD_IN_RUN,
    "CdInsteadOfWorkdir",
    Warning,
    "DL3003",
    "Use WORKDIR to switch directories instead of cd in RUN"
);
hadolint!(
    SUDO_IN_RUN,
    "SudoInRun",
    Error,
    "DL3004",
    "sudo has unpredictable TTY and signal behaviour in a build; use USER instead"
);
hadolint!(
    PIPE_WITHOUT_PIPEFAIL,
    "PipeWithoutPipefail",
    Warning,
    "DL4006",
    "A RUN with a pipe should set -o pipefail, or a failure before the pipe goes unnoticed"
);
hadolint!(
    CONSECUTIVE_RUN,
    "ConsecutiveRunInstructions",
    Info,
    "DL3059",
    "Consecutive RUN instructions could be merged into one layer"
);

/// Every rule, in the order `kiln check --help`-style listings show them.
pub const ALL: &[Rule] = &[
    STAGE_NAME_CASING,
    FROM_AS_CASING,
    NO_EMPTY_CONTINUATION,
    CONSISTENT_INSTRUCTION_CASING,
    DUPLICATE_STAGE_NAME,
    RESERVED_STAGE_NAME,
    JSON_ARGS_RECOMMENDED,
    MAINTAINER_DEPRECATED,
    UNDEFINED_ARG_IN_FROM,
    WORKDIR_RELATIVE_PATH,
    UNDEFINED_VAR,
    MULTIPLE_INSTRUCTIONS_DISALLOWED,
    LEGACY_KEY_VALUE_FORMAT,
    INVALID_DEFAULT_ARG_IN_FROM,
    SECRETS_USED_IN_ARG_OR_ENV,
    EXPOSE_PROTO_CASING,
    EXPOSE_INVALID_FORMAT,
    COPY_IGNORED_FILE,
    REDUNDANT_TARGET_PLATFORM,
    FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    INVALID_BASE_IMAGE_PLATFORM,
    UNPINNED_BASE_IMAGE,
    APT_NO_INSTALL_RECOMMENDS,
    APT_LISTS_NOT_CLEANED,
    CD_IN_RUN,
    SUDO_IN_RUN,
    PIPE_WITHOUT_PIPEFAIL,
    CONSECUTIVE_RUN,
    INVALID_DEFINITION_DESCRIPTION,
];

buildkit!(
    INVALID_DEFINITION_DESCRIPTION,
    "InvalidDefinitionDescription",
    "invalid-definition-description",
    "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment."
);

/// BuildKit's experimental rules: reported only when `# check=experimental=`
/// names them (or `all`), and then whatever `skip=` says, as BuildKit's
/// `Linter.Run` does.
pub const EXPERIMENTAL: &[&str] = &[INVALID_DEFINITION_DESCRIPTION.name];

/// The rule called `name`, if kiln knows it.
pub fn by_name(name: &str) -> Option<&'static Rule> {
    ALL.iter().find(|r| r.name == name)
}
