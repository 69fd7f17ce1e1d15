//! The rules that need no dispatch: they read the typed instructions as
//! written (BuildKit runs them while parsing instructions and before
//! dispatch: casing, stage names, maintainer, the FROM lines' default args).

use std::collections::{BTreeMap, BTreeSet};

use kiln_layers::Reference;
use kiln_parser::expand::expand_word;
use kiln_parser::instructions::{self as ins, Instruction};

use super::{rules, LintOptions, Linter};
use crate::plan::env::Env;
use crate::plan::{predefined_args, BuildOptions};

/// Every rule of this module, in BuildKit's order.
pub(super) fn run(df: &ins::Dockerfile, options: &LintOptions<'_>, linter: &mut Linter) {
    parse_time_rules(df, linter);
    definition_descriptions(df, linter);
    stage_name_rules(df, linter);
    casing_rule(df, linter);
    invalid_default_args(df, options, linter);
}

/// InvalidDefinitionDescription (experimental): the comment right above
/// a named FROM or an ARG starts with the stage's name or one of the ARG's
/// keys, as BuildKit's `validateDefinitionDescription` wants.
fn definition_descriptions(df: &ins::Dockerfile, linter: &mut Linter) {
    let mut check = |instruction: &str, meta: &ins::Meta, keys: Vec<&str>| {
        let (Some(comment), Some(first_key)) = (meta.comments.last(), keys.first()) else {
            return;
        };
        let first_word = comment.split(' ').next().unwrap_or("");
        if keys.contains(&first_word) {
            return;
        }
        let example = if keys.len() > 1 {
            "<arg_key>"
        } else {
            first_key
        };
        linter.fire(
            &rules::INVALID_DEFINITION_DESCRIPTION,
            meta,
            format!(
                "Comment for {instruction} should follow the format: `# {example} <description>`"
            ),
        );
    };
    let stage_args = df.stages.iter().flat_map(|stage| {
        stage.instructions.iter().filter_map(|i| match i {
            Instruction::Arg(arg) => Some(arg),
            _ => None,
        })
    });
    for arg in df.meta_args.iter().chain(stage_args) {
        let keys = arg.args.iter().map(|a| a.key.as_str()).collect();
        check("ARG", &arg.meta, keys);
    }
    for stage in &df.stages {
        if let Some(name) = &stage.name {
            check("FROM", &stage.from, vec![name.as_str()]);
        }
    }
}

/// MaintainerDeprecated, StageNameCasing, FromAsCasing (BuildKit runs
/// them while parsing instructions).
pub(super) fn parse_time_rules(df: &ins::Dockerfile, linter: &mut Linter) {
    for stage in &df.stages {
        if let Some(name) = &stage.name_as_written {
            if *name != name.to_lowercase() {
                linter.fire(
                    &rules::STAGE_NAME_CASING,
                    &stage.from,
                    format!("Stage name '{name}' should be lowercase"),
                );
            }
        }
        if let Some(as_keyword) = &stage.as_keyword {
            let from = &stage.from.keyword;
            let from_lower = *from == from.to_lowercase();
            let from_upper = *from == from.to_uppercase();
            let mismatch = (from_lower && *as_keyword != as_keyword.to_lowercase())
                || (!from_lower && from_upper && *as_keyword != as_keyword.to_uppercase());
            if mismatch {
                linter.fire(
                    &rules::FROM_AS_CASING,
                    &stage.from,
                    format!("'{as_keyword}' and '{from}' keywords' casing do not match"),
                );
            }
        }
        for instruction in &stage.instructions {
            if let Instruction::Maintainer(m) = instruction {
                linter.fire(
                    &rules::MAINTAINER_DEPRECATED,
                    &m.meta,
                    "Maintainer instruction is deprecated in favor of using label".into(),
                );
            }
        }
    }
}

pub(super) fn stage_name_rules(df: &ins::Dockerfile, linter: &mut Linter) {
    let mut seen = BTreeSet::new();
    for stage in &df.stages {
        let Some(name) = &stage.name else { continue };
        if name == "context" || name == "scratch" {
            linter.fire(
                &rules::RESERVED_STAGE_NAME,
                &stage.from,
                format!("Stage name should not use the same name as reserved stage {name:?}"),
            );
        }
        if !seen.insert(name.clone()) {
            linter.fire(
                &rules::DUPLICATE_STAGE_NAME,
                &stage.from,
                format!("Duplicate stage name {name:?}, stage names should be unique"),
            );
        }
    }
}

/// ConsistentInstructionCasing: the majority casing over FROM lines and
/// stage instructions (meta ARGs do not count); ties go to upper case.
fn casing_rule(df: &ins::Dockerfile, linter: &mut Linter) {
    let metas: Vec<&ins::Meta> = df
        .stages
        .iter()
        .flat_map(|s| std::iter::once(&s.from).chain(s.instructions.iter().map(Instruction::meta)))
        .collect();
    let (mut lower, mut upper) = (0, 0);
    for m in &metas {
        if m.keyword == m.keyword.to_lowercase() {
            lower += 1;
        } else if m.keyword == m.keyword.to_uppercase() {
            upper += 1;
        }
    }
    let majority_lower = lower > upper;
    for m in metas {
        let wrong = if majority_lower {
            (m.keyword != m.keyword.to_lowercase()).then_some("lowercase")
        } else {
            (m.keyword != m.keyword.to_uppercase()).then_some("uppercase")
        };
        if let Some(casing) = wrong {
            linter.fire(
                &rules::CONSISTENT_INSTRUCTION_CASING,
                m,
                format!(
                    "Command '{}' should match the case of the command majority ({casing})",
                    m.keyword
                ),
            );
        }
    }
}

/// InvalidDefaultArgInFrom: with no build args at all, every FROM must
/// still name a valid image (BuildKit's `validateBaseImagesWithDefaultArgs`).
fn invalid_default_args(df: &ins::Dockerfile, options: &LintOptions<'_>, linter: &mut Linter) {
    let build = BuildOptions {
        build_args: BTreeMap::new(),
        target_platform: options.platform.clone(),
        build_platform: options.platform.clone(),
        target: None,
        run: Default::default(),
        named_contexts: Default::default(),
    };
    let target_name = df
        .stages
        .last()
        .and_then(|s| s.name.clone())
        .unwrap_or_default();
    let mut defaults = Env::default();
    for (key, value) in predefined_args(&build, &target_name) {
        defaults.set(&key, &value);
    }
    for arg in &df.meta_args {
        for def in &arg.args {
            if let Some(d) = &def.value {
                let Ok(value) = expand_word(d, &defaults, df.escape) else {
                    return;
                };
                defaults.set(&def.key, &value.value);
            }
        }
    }
    for stage in &df.stages {
        let Ok(expanded) = expand_word(&stage.base, &defaults, df.escape) else {
            return;
        };
        if Reference::parse(&expanded.value).is_err() {
            linter.fire(
                &rules::INVALID_DEFAULT_ARG_IN_FROM,
                &stage.from,
                format!(
                    "Default value for ARG {} results in empty or invalid base image name",
                    stage.base
                ),
            );
        }
    }
}
