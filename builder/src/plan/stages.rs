//! The stage graph, before any stage is dispatched: the target, the global
//! args FROM lines see, each stage's base and platform, the dependencies
//! between stages (`FROM <stage>`, `COPY --from`, `RUN --mount=from`, and
//! those an ONBUILD trigger of a base image adds) and which stages the
//! target needs.

use std::collections::BTreeSet;

use kiln_layers::oci::Platform;
use kiln_parser::expand::{expand_word, Expansion};
use kiln_parser::instructions::{self as ins, Dockerfile, Instruction};

use super::env::Env;
use super::lookup::{ImageLookup, ImageName, LookupError};
use super::observe::{DispatchObserver, FromWord};
use super::{
    predefined_args, BaseSource, BuildOptions, NamedSource, PlanError, PlanErrorKind, WalkOptions,
};

/// What the walk knows before dispatching.
pub(crate) struct StageGraph {
    pub target: usize,
    /// Predefined args and meta ARGs with a value: what FROM lines see.
    pub global: Env,
    /// Build args a meta ARG consumed.
    pub used_args: BTreeSet<String>,
    pub bases: Vec<BaseSource>,
    /// Each stage's `--platform`, expanded, or the target platform.
    pub platforms: Vec<Platform>,
    pub deps: Vec<BTreeSet<usize>>,
    pub needed: BTreeSet<usize>,
    /// Stages a named context of their name replaces (`FROM … AS NAME`).
    pub replaced: BTreeSet<usize>,
}

pub(crate) fn line_of(meta: &ins::Meta) -> usize {
    meta.span.start_line()
}

pub(crate) fn stage_by_name(df: &Dockerfile, name: &str) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    df.stages
        .iter()
        .find(|s| s.name.as_deref() == Some(lower.as_str()))
        .map(|s| s.index)
}

impl StageGraph {
    pub fn new(
        df: &Dockerfile,
        opts: &BuildOptions,
        walk: WalkOptions,
        resolver: &dyn ImageLookup,
        observer: &mut dyn DispatchObserver,
    ) -> Result<StageGraph, PlanError> {
        if df.stages.is_empty() {
            return Err(PlanError::general(PlanErrorKind::NoStages));
        }
        let target = match &opts.target {
            None => df.stages.len() - 1,
            Some(t) => stage_by_name(df, t)
                .ok_or_else(|| PlanError::general(PlanErrorKind::UnknownTarget(t.clone())))?,
        };
        let target_name = df.stages[target].name.clone().unwrap_or_default();
        let mut graph = StageGraph::with_globals(df, opts, target, &target_name)?;
        for stage in &df.stages {
            let (mut base, platform) = graph.stage_start(df, stage, opts, observer)?;
            // `FROM … AS NAME` with a named context NAME: BuildKit uses the
            // context for the whole stage.
            if let Some((name, source)) = stage.name.as_deref().and_then(|n| opts.named_context(n))
            {
                base = named_base(&name, source);
                graph.replaced.insert(stage.index);
            }
            graph.bases.push(base);
            graph.platforms.push(platform);
        }
        graph.dependencies(df)?;
        graph.needed_stages(df, walk, resolver)?;
        Ok(graph)
    }

    /// The global args alone (predefined, then the meta ARGs'), as
    /// [`StageGraph::new`] sets them before the stages.
    pub fn global_args(df: &Dockerfile, opts: &BuildOptions) -> Result<Env, PlanError> {
        Ok(StageGraph::with_globals(df, opts, 0, "")?.global)
    }

    /// A graph of no stage yet, its global args set: the predefined ones
    /// (`target_name` is the target stage's), then the meta ARGs'.
    fn with_globals(
        df: &Dockerfile,
        opts: &BuildOptions,
        target: usize,
        target_name: &str,
    ) -> Result<StageGraph, PlanError> {
        let mut graph = StageGraph {
            target,
            global: Env::default(),
            used_args: BTreeSet::new(),
            bases: Vec::new(),
            platforms: Vec::new(),
            deps: Vec::new(),
            needed: BTreeSet::new(),
            replaced: BTreeSet::new(),
        };
        for (key, value) in predefined_args(opts, target_name) {
            graph.global.set(&key, &value);
        }
        graph.meta_args(df, opts)?;
        Ok(graph)
    }

    /// `buildMetaArgs`: each meta ARG takes its build-arg value or its
    /// expanded default and joins the global args (when it has a value).
    fn meta_args(&mut self, df: &Dockerfile, opts: &BuildOptions) -> Result<(), PlanError> {
        for arg in &df.meta_args {
            let line = line_of(&arg.meta);
            for def in &arg.args {
                let value = match opts.build_args.get(&def.key) {
                    Some(v) => {
                        self.used_args.insert(def.key.clone());
                        Some(v.clone())
                    }
                    None => match &def.value {
                        Some(d) => Some(self.expand_global(d, df.escape, line)?.value),
                        None => None,
                    },
                };
                if let Some(v) = value {
                    self.global.set(&def.key, &v);
                }
            }
        }
        Ok(())
    }

    fn expand_global(&self, word: &str, escape: char, line: usize) -> Result<Expansion, PlanError> {
        expand_word(word, &self.global, escape).map_err(|e| PlanError::at(line, e.into()))
    }

    /// A stage's FROM: its base and platform, expanded with the global args.
    fn stage_start(
        &self,
        df: &Dockerfile,
        stage: &ins::Stage,
        opts: &BuildOptions,
        observer: &mut dyn DispatchObserver,
    ) -> Result<(BaseSource, Platform), PlanError> {
        let line = line_of(&stage.from);
        let base = self.expand_global(&stage.base, df.escape, line)?;
        observer.stage_from_word(
            stage,
            &FromWord {
                written: &stage.base,
                expansion: &base,
                is_platform: false,
                global: &self.global,
            },
        );
        let platform = match &stage.platform {
            Some(written) => {
                let expansion = self.expand_global(written, df.escape, line)?;
                observer.stage_from_word(
                    stage,
                    &FromWord {
                        written,
                        expansion: &expansion,
                        is_platform: true,
                        global: &self.global,
                    },
                );
                Platform::parse(&expansion.value).map_err(|e| {
                    PlanError::at(
                        line,
                        PlanErrorKind::Invalid(format!(
                            "failed to parse platform {}: {e}",
                            expansion.value
                        )),
                    )
                })?
            }
            None => opts.target_platform.clone(),
        };
        let base = base.value;
        if base.is_empty() {
            return Err(PlanError::at(
                line,
                PlanErrorKind::BlankBase(stage.base.clone()),
            ));
        }
        let source = match stage_by_name(df, &base) {
            Some(i) if i < stage.index => BaseSource::Stage(i),
            _ if base.eq_ignore_ascii_case("scratch") => BaseSource::Scratch,
            _ => match opts.named_context(&base) {
                Some((name, source)) => named_base(&name, source),
                None => BaseSource::Image {
                    reference: ImageName::parse(&base, line)?,
                    digest: None,
                },
            },
        };
        Ok((source, platform))
    }

    /// Dependencies through the base, COPY --from and RUN --mount=from.
    fn dependencies(&mut self, df: &Dockerfile) -> Result<(), PlanError> {
        self.deps = vec![BTreeSet::new(); df.stages.len()];
        for stage in &df.stages {
            if let BaseSource::Stage(i) = self.bases[stage.index] {
                self.deps[stage.index].insert(i);
            }
            if self.replaced.contains(&stage.index) {
                continue;
            }
            for instruction in &stage.instructions {
                for dep in instruction_stage_refs(df, instruction) {
                    if dep == stage.index {
                        return Err(PlanError::at(
                            line_of(instruction.meta()),
                            PlanErrorKind::Circular(
                                stage
                                    .name
                                    .clone()
                                    .unwrap_or_else(|| format!("stage-{}", stage.index)),
                            ),
                        ));
                    }
                    self.deps[stage.index].insert(dep);
                }
            }
        }
        Ok(())
    }

    /// The stages the target needs; a base image's ONBUILD triggers may
    /// name more (COPY --from), so look at those and repeat until nothing
    /// new.
    fn needed_stages(
        &mut self,
        df: &Dockerfile,
        walk: WalkOptions,
        resolver: &dyn ImageLookup,
    ) -> Result<(), PlanError> {
        let mut triggers_seen: BTreeSet<usize> = BTreeSet::new();
        loop {
            let mut needed = BTreeSet::new();
            let mut stack = vec![self.target];
            while let Some(s) = stack.pop() {
                if needed.insert(s) {
                    stack.extend(self.deps[s].iter().copied());
                }
            }
            let mut grew = false;
            for &s in &needed {
                let BaseSource::Image { reference, .. } = &self.bases[s] else {
                    continue;
                };
                if !triggers_seen.insert(s) {
                    continue;
                }
                let line = line_of(&df.stages[s].from);
                let found = match resolver.lookup(&reference.reference, &self.platforms[s]) {
                    Ok(found) => found,
                    Err(LookupError::NotFound(_)) if walk.unknown_images_empty => continue,
                    Err(source) => {
                        return Err(PlanError::at(
                            line,
                            PlanErrorKind::Resolve {
                                reference: reference.shown.clone(),
                                source,
                            },
                        ))
                    }
                };
                let triggers = found
                    .config
                    .config
                    .as_ref()
                    .and_then(|c| c.on_build.clone())
                    .unwrap_or_default();
                for trigger in triggers {
                    let Ok(instruction) = parse_trigger(&trigger) else {
                        continue; // reported when the stage is dispatched
                    };
                    for dep in instruction_stage_refs(df, &instruction) {
                        if dep < s && self.deps[s].insert(dep) {
                            grew = true;
                        }
                    }
                }
            }
            self.needed = needed;
            if !grew {
                return Ok(());
            }
        }
    }
}

/// Where a stage starts when its base is the named context `name`.
pub(crate) fn named_base(name: &str, source: &NamedSource) -> BaseSource {
    match source {
        NamedSource::Image(reference) => BaseSource::Image {
            reference: ImageName {
                reference: reference.clone(),
                shown: reference.to_string(),
            },
            digest: None,
        },
        NamedSource::Scratch { .. } => BaseSource::Scratch,
        NamedSource::Tree { digest, .. } => BaseSource::NamedContext {
            name: name.to_string(),
            digest: digest.clone(),
        },
    }
}

/// Parses an ONBUILD trigger (one instruction) on its own.
pub(crate) fn parse_trigger(trigger: &str) -> Result<Instruction, String> {
    let text = format!("FROM scratch\n{trigger}\n");
    let parsed = kiln_parser::parse(&text, "ONBUILD")
        .and_then(|ast| ins::from_ast(&ast))
        .map_err(|e| e.to_string())?;
    match parsed.stages.first().map(|s| s.instructions.as_slice()) {
        Some([one]) => Ok(one.clone()),
        _ => Err("onbuild trigger should be a single expression".into()),
    }
}

/// Stages an instruction refers to (COPY --from, by index too; RUN
/// --mount=from, by name only, as BuildKit looks them up). A mount's
/// `from=` cannot hold variables (the parser refuses them), so it is read
/// as written.
fn instruction_stage_refs(df: &Dockerfile, instruction: &Instruction) -> Vec<usize> {
    let lookup = |name: &str| -> Option<usize> {
        match name.parse::<usize>() {
            Ok(i) if i < df.stages.len() => Some(i),
            Ok(_) => None,
            Err(_) => stage_by_name(df, name),
        }
    };
    match instruction {
        Instruction::Copy(c) => c.from.as_deref().and_then(lookup).into_iter().collect(),
        Instruction::Run(r) => r
            .mounts
            .iter()
            .filter_map(|spec| kiln_parser::mount::from_field(spec).ok().flatten())
            .filter_map(|n| stage_by_name(df, &n))
            .collect(),
        Instruction::Onbuild(o) => instruction_stage_refs(df, &o.trigger),
        _ => Vec::new(),
    }
}
