//! Dispatching a stage's instructions (BuildKit's `dispatch`): each
//! instruction's words expanded in the scope it starts in, then applied to
//! the stage's state — its image config and history, its ARG/ENV scope —
//! and, for RUN, COPY/ADD and WORKDIR, a step for the solver.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kiln_layers::oci::{ContainerConfig, ImageConfig, Platform};
use kiln_parser::expand::{Expansion, Lexer};
use kiln_parser::instructions::{self as ins, CommandLine, Dockerfile, Instruction};
use kiln_parser::mount::parse_mount;

use super::env::Env;
use super::lookup::{
    empty_image as unknown_image, FoundImage, ImageLookup, ImageName, LookupError,
};
use super::observe::{DispatchObserver, Expanded, InstructionEvent, NoObserver, Scope, StageStart};
use super::stages::{line_of, parse_trigger, stage_by_name};
use super::{
    normalize_workdir, workdir_value, BaseSource, BuildOptions, CopyFrom, CopyStep, InlineFile,
    MountImage, MountSource, NamedSource, Origin, PlanError, PlanErrorKind, PlanWarning, RunMount,
    RunStep, StagePlan, Step, StepKind, WalkOptions, WorkdirStep, NON_ENV_ARGS, PROXY_ARGS,
};
use crate::copy::dest_path;
use crate::image::{
    default_shell, empty_image, go_list, go_quote_list, healthcheck_history, history, parse_ports,
    split_env, valid_signal, DEFAULT_PATH,
};

/// An image config's `Env` list, kept as written (a base image's repeated
/// names included) with the first entry of each name indexed: ENV replaces
/// that entry in place or appends, as BuildKit's `addEnv` does, in O(1).
#[derive(Clone, Debug, Default)]
struct ConfigEnv {
    entries: Vec<String>,
    first: HashMap<String, usize>,
}

impl ConfigEnv {
    fn new(entries: Vec<String>) -> ConfigEnv {
        let mut first = HashMap::new();
        for (at, entry) in entries.iter().enumerate() {
            first.entry(split_env(entry).0.to_string()).or_insert(at);
        }
        ConfigEnv { entries, first }
    }

    fn set(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self.first.get(key) {
            Some(&at) => self.entries[at] = entry,
            None => {
                self.first.insert(key.to_string(), self.entries.len());
                self.entries.push(entry);
            }
        }
    }
}

/// Per-stage dispatch state (BuildKit's `dispatchState`).
#[derive(Clone)]
pub(crate) struct State {
    image: ImageConfig,
    /// The image config's `Env`, written into `image` when the stage ends.
    config_env: ConfigEnv,
    /// The LLB state's env: image ENV and ARG values.
    env: Env,
    /// ARGs declared (for RUN's history prefix), inherited from a base stage.
    build_args: Vec<(String, Option<String>)>,
    declared: BTreeSet<String>,
    cmd_set: bool,
    workdir_set: bool,
    env_known: bool,
    provenance: BTreeMap<String, Origin>,
}

impl State {
    fn config(&mut self) -> &mut ContainerConfig {
        self.image
            .config
            .get_or_insert_with(ContainerConfig::default)
    }

    /// The working directory steps run in and resolve against: the
    /// config's, cleaned (the config keeps an absolute WORKDIR as written,
    /// `/p/../q`, which a chdir could not take where `/p` is missing).
    fn workdir(&self) -> String {
        match self.workdir_as_written() {
            wd if wd.is_empty() => wd,
            wd => normalize_workdir("/", &wd),
        }
    }

    /// The config's working directory as it stands.
    fn workdir_as_written(&self) -> String {
        self.image
            .config
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .unwrap_or_default()
    }

    fn user(&self) -> String {
        self.image
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default()
    }

    /// The SHELL set by SHELL or the base image, if any.
    fn explicit_shell(&self) -> Option<&[String]> {
        self.image
            .config
            .as_ref()
            .and_then(|c| c.shell.as_deref())
            .filter(|s| !s.is_empty())
    }

    fn shell(&self) -> Vec<String> {
        self.explicit_shell()
            .map(<[String]>::to_vec)
            .unwrap_or_else(default_shell)
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            env: &self.env,
            declared: &self.declared,
            env_known: self.env_known,
            workdir_set: self.workdir_set,
            shell: self.explicit_shell(),
        }
    }

    /// Writes what is kept aside during dispatch back into the image.
    fn finish(&mut self) {
        let entries = self.config_env.entries.clone();
        self.config().env = Some(entries);
    }
}

/// The walk's state across stages.
pub(crate) struct Planner<'a> {
    df: &'a Dockerfile,
    opts: &'a BuildOptions,
    walk: WalkOptions,
    resolver: &'a dyn ImageLookup,
    /// Predefined and meta args: what FROM lines and undeclared-in-stage
    /// ARGs see.
    pub global: Env,
    /// Build-arg names some ARG consumed.
    pub used_args: BTreeSet<String>,
    /// Images taken as empty, with the first line naming them.
    pub unknown_images: Vec<(kiln_layers::Reference, usize)>,
    /// What instructions warned of (their lines'), in order.
    pub warnings: Vec<PlanWarning>,
    /// Each dispatched stage's final state.
    finals: Vec<Option<State>>,
}

/// One instruction being dispatched: where it is, and who watches.
struct Site<'o> {
    line: usize,
    meta: ins::Meta,
    stage: usize,
    observer: &'o mut dyn DispatchObserver,
}

impl Site<'_> {
    fn invalid(&self, message: String) -> PlanError {
        PlanError::at(self.line, PlanErrorKind::Invalid(message))
    }
}

/// A COPY or ADD's words, expanded in BuildKit's order (`--chown`,
/// `--chmod`, `--checksum`, the sources, the destination, then heredoc
/// bodies).
struct CopyWords<'a> {
    paths: &'a ins::SourcesAndDest,
    chown: Option<&'a str>,
    chmod: Option<&'a str>,
    checksum: Option<&'a str>,
}

impl<'a> Planner<'a> {
    pub fn new(
        df: &'a Dockerfile,
        opts: &'a BuildOptions,
        walk: WalkOptions,
        resolver: &'a dyn ImageLookup,
        global: Env,
    ) -> Self {
        Planner {
            df,
            opts,
            walk,
            resolver,
            global,
            used_args: BTreeSet::new(),
            unknown_images: Vec::new(),
            warnings: Vec::new(),
            finals: vec![None; df.stages.len()],
        }
    }

    /// Build args nobody declared (one warning, as docker prints it).
    pub fn unused_build_args_warning(&self) -> Option<PlanWarning> {
        let unused: Vec<&str> = self
            .opts
            .build_args
            .keys()
            .filter(|key| {
                let predefined = super::predefined_args(self.opts, "")
                    .iter()
                    .any(|(k, _)| k == *key);
                !self.used_args.contains(*key)
                    && !PROXY_ARGS.contains(&key.as_str())
                    && !crate::frontend::FRONTEND_ARGS.contains(&key.as_str())
                    && !predefined
            })
            .map(String::as_str)
            .collect();
        (!unused.is_empty()).then(|| PlanWarning {
            line: None,
            message: format!(
                "One or more build-args [{}] were not consumed",
                unused.join(" ")
            ),
        })
    }

    /// Looks an image up; an unknown one is taken as empty when the walk
    /// allows it.
    fn look_up(
        &mut self,
        name: &ImageName,
        platform: &Platform,
        line: usize,
    ) -> Result<Option<FoundImage>, PlanError> {
        match self.resolver.lookup(&name.reference, platform) {
            Ok(found) => Ok(Some(found)),
            Err(LookupError::NotFound(_)) if self.walk.unknown_images_empty => {
                if !self
                    .unknown_images
                    .iter()
                    .any(|(r, _)| r == &name.reference)
                {
                    self.unknown_images.push((name.reference.clone(), line));
                }
                Ok(None)
            }
            Err(source) => Err(PlanError::at(
                line,
                PlanErrorKind::Resolve {
                    reference: name.shown.clone(),
                    source,
                },
            )),
        }
    }

    /// Dispatches one stage into `sp`.
    pub fn dispatch_stage(
        &mut self,
        stage: &ins::Stage,
        platform: &Platform,
        sp: &mut StagePlan,
        observer: &mut dyn DispatchObserver,
    ) -> Result<(), PlanError> {
        let (mut state, onbuild) = self.initial_state(stage, platform, sp, observer)?;
        if let BaseSource::NamedContext { name, digest } = sp.base.clone() {
            self.named_context_step(&name, &digest, &mut state, sp);
        }
        // A stage a named context replaces runs nothing of its own.
        let (onbuild, instructions) = match sp.replaced {
            true => (Vec::new(), &[][..]),
            false => (onbuild, stage.instructions.as_slice()),
        };
        // ONBUILD triggers of the base run first, located at the FROM line.
        for trigger in &onbuild {
            let one = parse_trigger(trigger).map_err(|message| {
                PlanError::at(
                    sp.line,
                    PlanErrorKind::Invalid(format!("ONBUILD {trigger}: {message}")),
                )
            })?;
            let mut site = Site {
                line: sp.line,
                meta: one.meta().clone(),
                stage: sp.index,
                observer: &mut NoObserver,
            };
            self.dispatch(&one, &mut site, &mut state, sp)?;
        }
        for instruction in instructions {
            let meta = instruction.meta();
            let mut site = Site {
                line: line_of(meta),
                meta: meta.clone(),
                stage: sp.index,
                observer: &mut *observer,
            };
            self.dispatch(instruction, &mut site, &mut state, sp)?;
        }
        state.finish();
        sp.image = state.image.clone();
        sp.provenance = state.provenance.clone();
        self.finals[stage.index] = Some(state);
        Ok(())
    }

    /// A stage on a directory-like named context starts with its files:
    /// a copy of the whole tree into the empty root, keyed by its digest,
    /// recorded as BuildKit's exporter records a layer no instruction made
    /// (the source's description, `buildkit.exporter.image.v0`).
    fn named_context_step(&self, name: &str, digest: &str, state: &mut State, sp: &mut StagePlan) {
        let description = match self.opts.named_contexts.get(name) {
            Some(NamedSource::Tree { description, .. }) => description.clone(),
            _ => format!("context {name}"),
        };
        state.image.history.push(kiln_layers::oci::History {
            created: None,
            created_by: Some(description.clone()),
            author: None,
            comment: Some("buildkit.exporter.image.v0".into()),
            empty_layer: None,
        });
        let copy = CopyStep {
            is_add: false,
            from: CopyFrom::NamedContext {
                name: name.to_string(),
                digest: digest.to_string(),
            },
            sources: vec!["/".into()],
            inline: Vec::new(),
            dest: "/".into(),
            dest_as_written: "/".into(),
            chown: None,
            chmod: None,
            link: false,
            exclude: Vec::new(),
            checksum: None,
            unpack: None,
            parents: false,
            from_digest: None,
            keep_git_dir: None,
            git_commits: BTreeMap::new(),
        };
        sp.steps.push(Step {
            stage: sp.index,
            line: sp.line,
            instruction: format!("[context {name}] {description}"),
            kind: StepKind::Copy(copy),
            history_index: state.image.history.len() - 1,
            cache_key: None,
        });
    }

    fn initial_state(
        &mut self,
        stage: &ins::Stage,
        platform: &Platform,
        sp: &mut StagePlan,
        observer: &mut dyn DispatchObserver,
    ) -> Result<(State, Vec<String>), PlanError> {
        let line = sp.line;
        let empty_state = |image: ImageConfig| State {
            image,
            config_env: ConfigEnv::default(),
            env: Env::default(),
            build_args: Vec::new(),
            declared: BTreeSet::new(),
            cmd_set: false,
            workdir_set: false,
            env_known: true,
            provenance: BTreeMap::new(),
        };
        let mut onbuild: Vec<String> = Vec::new();
        let mut state = match sp.base.clone() {
            BaseSource::Scratch | BaseSource::NamedContext { .. } => {
                observer.stage(stage, &StageStart::Scratch);
                let mut s = empty_state(empty_image(
                    &platform.architecture,
                    &platform.os,
                    platform.variant.as_deref(),
                ));
                s.provenance.insert("WorkingDir".into(), Origin::Default);
                s
            }
            BaseSource::Stage(i) => {
                observer.stage(stage, &StageStart::Stage(i));
                let base = self.finals[i].clone().ok_or_else(|| {
                    PlanError::at(
                        line,
                        PlanErrorKind::Invalid(format!("stage {i} was not dispatched")),
                    )
                })?;
                let base_name = self.df.stages[i]
                    .name
                    .clone()
                    .unwrap_or_else(|| i.to_string());
                for instruction in &self.df.stages[i].instructions {
                    if let Instruction::Onbuild(o) = instruction {
                        onbuild.push(o.expression.clone());
                    }
                }
                let mut image = base.image.clone();
                if let Some(c) = image.config.as_mut() {
                    c.on_build = None;
                }
                State {
                    image,
                    cmd_set: false,
                    provenance: base
                        .provenance
                        .keys()
                        .map(|k| (k.clone(), Origin::Stage(base_name.clone())))
                        .collect(),
                    ..base
                }
            }
            BaseSource::Image { reference, .. } => {
                let found = self.look_up(&reference, platform, line)?;
                observer.stage(
                    stage,
                    &StageStart::Image {
                        name: &reference.shown,
                        platform,
                        found: found.as_ref(),
                    },
                );
                let env_known = found.is_some();
                let found = found.unwrap_or_else(|| unknown_image(&reference.reference, platform));
                sp.base = BaseSource::Image {
                    reference: ImageName::found(found.reference.clone()),
                    digest: found.digest.clone(),
                };
                let mut image = found.config;
                image.created = None;
                drop_unmodelled_fields(&mut image);
                if let Some(c) = image.config.as_mut() {
                    onbuild = c.on_build.take().unwrap_or_default();
                }
                let provenance = base_provenance(&image, &found.reference.to_string());
                State {
                    env_known,
                    provenance,
                    ..empty_state(image)
                }
            }
        };
        sp.base_history = state.image.history.len();
        if matches!(sp.base, BaseSource::Stage(_)) {
            return Ok((state, onbuild));
        }
        // The stage's env starts from the image's ENV, with a PATH.
        let mut entries = state.config().env.clone().unwrap_or_default();
        if crate::image::get_env(&entries, "PATH").is_none() {
            entries.push(format!("PATH={DEFAULT_PATH}"));
            state.provenance.insert("Env.PATH".into(), Origin::Default);
        }
        state.env = Env::from_entries(&entries);
        state.config().env = Some(entries.clone());
        state.config_env = ConfigEnv::new(entries);
        Ok((state, onbuild))
    }

    /// Expands `word` in the stage's scope and shows the expansion.
    fn expand(&self, word: &str, state: &State, site: &mut Site<'_>) -> Result<String, PlanError> {
        self.expand_with(Lexer::new(self.df.escape), word, state, site)
    }

    fn expand_with(
        &self,
        lexer: Lexer,
        word: &str,
        state: &State,
        site: &mut Site<'_>,
    ) -> Result<String, PlanError> {
        let expansion: Expansion = lexer
            .expand(word, &state.env)
            .map_err(|e| PlanError::at(site.line, e.into()))?;
        site.observer
            .expanded(&site.meta, &expansion, &state.scope());
        Ok(expansion.value)
    }

    fn expand_opt(
        &self,
        word: Option<&str>,
        state: &State,
        site: &mut Site<'_>,
    ) -> Result<Option<String>, PlanError> {
        match word {
            None => Ok(None),
            Some(w) => Ok(Some(self.expand(w, state, site)?).filter(|e| !e.is_empty())),
        }
    }

    fn show(
        &self,
        site: &mut Site<'_>,
        instruction: &Instruction,
        expanded: Expanded<'_>,
        state: &State,
    ) {
        site.observer.instruction(&InstructionEvent {
            stage: site.stage,
            instruction,
            expanded,
            scope: state.scope(),
        });
    }

    /// [`Self::stage_ref`] for a RUN mount's `from=`: a later stage is
    /// refused in BuildKit's words for a mount.
    fn mount_stage_ref(
        &self,
        name: &str,
        target: &str,
        site: &Site<'_>,
    ) -> Result<Option<usize>, PlanError> {
        // By name only: BuildKit's RUN mounts look stages up by name
        // (`findStateByName`); a number is an image's name there, as only
        // `COPY --from` reads stage indexes.
        self.stage_ref(name, site.stage, site.line, false)
            .map_err(|mut e| {
                if let PlanErrorKind::ForwardReference { from, .. } = &e.kind {
                    e.kind = PlanErrorKind::MountForwardReference {
                        from: from.clone(),
                        target: target.to_string(),
                    };
                }
                e
            })
    }

    /// The stage `name` names (by index too when `by_index`), `None` for
    /// an image; a stage not before `current` is an error.
    fn stage_ref(
        &self,
        name: &str,
        current: usize,
        line: usize,
        by_index: bool,
    ) -> Result<Option<usize>, PlanError> {
        // Go's Atoi: a sign, digits, within int64 (else a name).
        let index = name.parse::<i64>().ok().filter(|_| by_index);
        let found = match index {
            Some(i) => match usize::try_from(i)
                .ok()
                .filter(|&i| i < self.df.stages.len())
            {
                Some(i) => Some(i),
                None => {
                    return Err(PlanError::at(
                        line,
                        PlanErrorKind::Invalid(format!("invalid stage index {i}")),
                    ))
                }
            },
            None => stage_by_name(self.df, name),
        };
        if let Some(i) = found {
            if i >= current {
                return Err(PlanError::at(
                    line,
                    PlanErrorKind::ForwardReference {
                        from: name.to_string(),
                        stage: self.df.stages[current]
                            .name
                            .clone()
                            .unwrap_or_else(|| format!("stage-{current}")),
                    },
                ));
            }
        }
        Ok(found)
    }

    fn commit(state: &mut State, created_by: String, with_layer: bool, buildkit: bool) -> usize {
        state
            .image
            .history
            .push(history(&created_by, with_layer, buildkit, None));
        state.image.history.len() - 1
    }

    /// Records a filesystem step of the stage. An ADD's URL credentials
    /// are masked in the instruction shown.
    fn push_step(sp: &mut StagePlan, site: &Site<'_>, kind: StepKind, history_index: usize) {
        let instruction = match &kind {
            StepKind::Copy(c) if c.is_add => {
                kiln_reference::redact_credentials(&site.meta.original)
            }
            _ => site.meta.original.clone(),
        };
        sp.steps.push(Step {
            stage: sp.index,
            line: site.line,
            instruction,
            kind,
            history_index,
            cache_key: None,
        });
    }

    /// One instruction: a flat match over the instruction kinds, each
    /// applying BuildKit's `dispatch*` for it.
    ///
    /// Longer than kiln's 100-line budget on purpose: one arm per
    /// instruction, each a few lines that call out to a method for anything
    /// longer, read as a table (BuildKit's `dispatch` has the same shape).
    fn dispatch(
        &mut self,
        instruction: &Instruction,
        site: &mut Site<'_>,
        state: &mut State,
        sp: &mut StagePlan,
    ) -> Result<(), PlanError> {
        let origin = Origin::Line(site.line);
        match instruction {
            Instruction::Maintainer(m) => {
                self.show(site, instruction, Expanded::None, state);
                state.image.author = Some(m.name.clone());
                Self::commit(state, format!("MAINTAINER {}", m.name), false, false);
            }
            Instruction::Env(e) => {
                let pairs = self.expand_pairs(&e.pairs, state, site)?;
                self.show(site, instruction, Expanded::Env(&pairs), state);
                let mut msg = String::from("ENV");
                for (key, value) in &pairs {
                    msg.push_str(&format!(" {key}={value}"));
                    state.env.set(key, value);
                    state.config_env.set(key, value);
                    state
                        .provenance
                        .insert(format!("Env.{key}"), origin.clone());
                }
                Self::commit(state, msg, false, false);
            }
            Instruction::Label(l) => {
                let pairs = self.expand_pairs(&l.pairs, state, site)?;
                self.show(site, instruction, Expanded::None, state);
                let mut msg = String::from("LABEL");
                for (key, value) in pairs {
                    msg.push_str(&format!(" {key}={value}"));
                    state
                        .provenance
                        .insert(format!("Labels.{key}"), origin.clone());
                    state
                        .config()
                        .labels
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key, value);
                }
                Self::commit(state, msg, false, false);
            }
            Instruction::Arg(a) => {
                self.show(site, instruction, Expanded::None, state);
                self.dispatch_arg(a, site, state)?;
            }
            Instruction::Workdir(w) => {
                let path = self.expand(&w.path, state, site)?;
                self.show(site, instruction, Expanded::Workdir(&path), state);
                // The config and history keep an absolute path as written
                // (BuildKit's NormalizeWorkdir); the directory made is the
                // same either way.
                let wd = workdir_value(&state.workdir_as_written(), &path);
                state.workdir_set = true;
                state.config().working_dir = Some(wd.clone());
                state.provenance.insert("WorkingDir".into(), origin);
                let with_layer = wd != "/";
                let index = Self::commit(state, format!("WORKDIR {wd}"), with_layer, false);
                if with_layer {
                    let user = state.user();
                    let step = WorkdirStep {
                        path: normalize_workdir("/", &wd),
                        user: (!user.is_empty()).then_some(user),
                    };
                    Self::push_step(sp, site, StepKind::Workdir(step), index);
                }
            }
            Instruction::User(u) => {
                let user = self.expand(&u.user, state, site)?;
                self.show(site, instruction, Expanded::None, state);
                state.config().user = Some(user.clone());
                state.provenance.insert("User".into(), origin);
                Self::commit(state, format!("USER {user}"), false, false);
            }
            Instruction::Expose(e) => {
                // `ProcessWords`: no undefined-variable report, as BuildKit.
                let mut words = Vec::new();
                for p in &e.ports {
                    let split = Lexer::new(self.df.escape)
                        .expand(p, &state.env)
                        .map_err(|err| PlanError::at(site.line, err.into()))?;
                    words.extend(split.words);
                }
                self.show(site, instruction, Expanded::Ports(&words), state);
                let ports = parse_ports(&words).map_err(|e| site.invalid(e.to_string()))?;
                let map = state
                    .config()
                    .exposed_ports
                    .get_or_insert_with(BTreeMap::new);
                for p in &ports {
                    map.insert(p.clone(), serde_json::json!({}));
                }
                for p in &ports {
                    state
                        .provenance
                        .insert(format!("ExposedPorts.{p}"), origin.clone());
                }
                Self::commit(state, format!("EXPOSE {}", go_list(&ports)), false, false);
            }
            Instruction::Volume(v) => {
                let mut vols = Vec::new();
                for raw in &v.volumes {
                    vols.push(self.expand(raw, state, site)?);
                }
                self.show(site, instruction, Expanded::None, state);
                if vols.iter().any(String::is_empty) {
                    return Err(site.invalid("VOLUME specified can not be an empty string".into()));
                }
                let map = state.config().volumes.get_or_insert_with(BTreeMap::new);
                for vol in &vols {
                    map.insert(vol.clone(), serde_json::json!({}));
                }
                for vol in &vols {
                    state
                        .provenance
                        .insert(format!("Volumes.{vol}"), origin.clone());
                }
                Self::commit(state, format!("VOLUME {}", go_list(&vols)), false, false);
            }
            Instruction::Stopsignal(s) => {
                let signal = self.expand(&s.signal, state, site)?;
                self.show(site, instruction, Expanded::None, state);
                if !valid_signal(&signal) {
                    return Err(site.invalid(format!("Invalid signal: {signal}")));
                }
                state.config().stop_signal = Some(signal.clone());
                state.provenance.insert("StopSignal".into(), origin);
                Self::commit(state, format!("STOPSIGNAL {signal}"), false, false);
            }
            Instruction::Shell(s) => {
                self.show(site, instruction, Expanded::None, state);
                state.config().shell = Some(s.shell.clone());
                state.provenance.insert("Shell".into(), origin);
                Self::commit(state, format!("SHELL {}", go_list(&s.shell)), false, false);
            }
            Instruction::Onbuild(o) => {
                self.show(site, instruction, Expanded::None, state);
                state
                    .config()
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(o.expression.clone());
                state.provenance.insert("OnBuild".into(), origin);
            }
            Instruction::Cmd(c) => {
                self.show(site, instruction, Expanded::None, state);
                let args = command_args(&c.command, state);
                let config = state.config();
                // `CMD []`: an empty list, which the image's config leaves
                // out (image-spec's omitempty), so no Cmd at all.
                config.cmd = (!args.is_empty()).then(|| args.clone());
                config.args_escaped = Some(true);
                state.cmd_set = true;
                state.provenance.insert("Cmd".into(), origin);
                Self::commit(state, format!("CMD {}", go_quote_list(&args)), false, false);
            }
            Instruction::Entrypoint(e) => {
                self.show(site, instruction, Expanded::None, state);
                let args = command_args(&e.command, state);
                let cmd_set = state.cmd_set;
                let config = state.config();
                // `ENTRYPOINT []` unsets it (BuildKit's parseEntrypoint
                // turns an empty exec form into nil).
                config.entrypoint = (!args.is_empty()).then(|| args.clone());
                if !cmd_set {
                    config.cmd = None;
                    state.provenance.remove("Cmd");
                }
                state.provenance.insert("Entrypoint".into(), origin);
                let text = format!("ENTRYPOINT {}", go_quote_list(&args));
                Self::commit(state, text, false, false);
            }
            Instruction::Healthcheck(h) => {
                self.show(site, instruction, Expanded::None, state);
                dispatch_healthcheck(h, state, origin);
            }
            Instruction::Run(r) => {
                let step = self.run_step(r, site, state)?;
                self.show(site, instruction, Expanded::Run(&step), state);
                let text = run_history(&step.argv, &state.build_args, &state.env);
                let index = Self::commit(state, format!("RUN {text}"), true, true);
                Self::push_step(sp, site, StepKind::Run(step), index);
            }
            Instruction::Copy(c) => {
                let step = self.copy_instruction(c, site, state)?;
                self.show(site, instruction, Expanded::Copy(&step), state);
                let msg = copy_history("COPY", c.parents, &step);
                let index = Self::commit(state, msg, true, true);
                Self::push_step(sp, site, StepKind::Copy(step), index);
            }
            Instruction::Add(a) => {
                let step = self.add_instruction(a, site, state)?;
                self.show(site, instruction, Expanded::Copy(&step), state);
                // A URL's credentials are masked in what is shown and
                // recorded (BuildKit masks them in provenance only; its
                // history and progress show them).
                let msg = kiln_reference::redact_credentials(&copy_history("ADD", false, &step));
                let index = Self::commit(state, msg, true, true);
                Self::push_step(sp, site, StepKind::Copy(step), index);
            }
        }
        Ok(())
    }

    /// ENV and LABEL pairs, keys then values, all in the scope before the
    /// instruction (BuildKit expands a command before dispatching it).
    fn expand_pairs(
        &self,
        pairs: &[ins::KeyValue],
        state: &State,
        site: &mut Site<'_>,
    ) -> Result<Vec<(String, String)>, PlanError> {
        let mut out = Vec::with_capacity(pairs.len());
        for kv in pairs {
            let key = self.expand(&kv.key, state, site)?;
            let value = self.expand(&kv.value, state, site)?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// `dispatchArg`: each ARG, in order, takes its build-arg value, else
    /// its default expanded in the scope the ARGs before it made, else the
    /// global (meta) value.
    fn dispatch_arg(
        &mut self,
        a: &ins::Arg,
        site: &mut Site<'_>,
        state: &mut State,
    ) -> Result<(), PlanError> {
        let mut parts = Vec::new();
        for def in &a.args {
            let build_value = self.opts.build_args.get(&def.key);
            let value = match (build_value, &def.value) {
                (Some(v), _) => {
                    self.used_args.insert(def.key.clone());
                    Some(v.clone())
                }
                (None, Some(d)) => Some(self.expand(d, state, site)?),
                (None, None) => self.global.get(&def.key).map(str::to_string),
            };
            if let Some(v) = &value {
                if !NON_ENV_ARGS.contains(&def.key.as_str()) {
                    state.env.set(&def.key, v);
                }
            }
            state.declared.insert(def.key.clone());
            state.build_args.push((def.key.clone(), value.clone()));
            parts.push(match &value {
                Some(v) => format!("{}={v}", def.key),
                None => def.key.clone(),
            });
        }
        Self::commit(state, format!("ARG {}", parts.join(" ")), false, false);
        Ok(())
    }

    fn run_step(
        &mut self,
        r: &ins::Run,
        site: &mut Site<'_>,
        state: &State,
    ) -> Result<RunStep, PlanError> {
        refuse_unsupported_run_flags(r, site)?;
        let mounts = self.run_mounts(r, site, state)?;
        let (argv, script) = run_command(r, state, site.line);
        let mut env: Vec<String> = state.env.entries();
        // Proxy build args reach RUN without an ARG, in both spellings.
        for (k, v) in &self.opts.build_args {
            if PROXY_ARGS.contains(&k.as_str()) {
                let lower = k.to_ascii_lowercase();
                for name in [lower.to_ascii_uppercase(), lower.clone()] {
                    if !state.env.contains(&name) && !env.iter().any(|e| split_env(e).0 == name) {
                        env.push(format!("{name}={v}"));
                    }
                }
            }
        }
        let workdir = state.workdir();
        Ok(RunStep {
            argv,
            env,
            user: state.user(),
            workdir: if workdir.is_empty() {
                "/".to_string()
            } else {
                workdir
            },
            network: r.network.clone(),
            security: r.security.clone(),
            hostname: crate::frontend::hostname(&self.opts.build_args),
            cache_namespace: crate::frontend::cache_namespace(&self.opts.build_args),
            mounts,
            script,
            extra_hosts: self.opts.run.extra_hosts.clone(),
            shm_size: self.opts.run.shm_size,
            ulimits: self.opts.run.ulimits.clone(),
        })
    }

    /// Each `--mount` read once: the CSV first, then every value expanded
    /// in the stage's scope (BuildKit's `parseMount` with its expander),
    /// and `from=` resolved to a stage or an image.
    fn run_mounts(
        &mut self,
        r: &ins::Run,
        site: &mut Site<'_>,
        state: &State,
    ) -> Result<Vec<RunMount>, PlanError> {
        let mut mounts = Vec::with_capacity(r.mounts.len());
        let escape = self.df.escape;
        for written in &r.mounts {
            let spec = parse_mount(written, &mut |word| {
                let expansion = Lexer::new(escape).expand(word, &state.env)?;
                site.observer
                    .expanded(&site.meta, &expansion, &state.scope());
                Ok(expansion.value)
            })
            .map_err(|e| PlanError::at(site.line, PlanErrorKind::Mount(e)))?;
            let from_resolved = match spec.from.as_deref().filter(|f| !f.is_empty()) {
                None => None,
                Some(from) => Some(match self.mount_stage_ref(from, &spec.target, site)? {
                    Some(i) => MountSource::Stage(i),
                    // Not a stage: a named context's files, else an image,
                    // as BuildKit takes it.
                    None => {
                        let reference = match self.opts.named_context(from) {
                            Some((
                                name,
                                NamedSource::Tree { digest, .. } | NamedSource::Scratch { digest },
                            )) => {
                                mounts.push(RunMount {
                                    spec,
                                    from_resolved: Some(MountSource::NamedContext {
                                        name,
                                        digest: digest.clone(),
                                    }),
                                });
                                continue;
                            }
                            Some((_, NamedSource::Image(reference))) => ImageName {
                                reference: reference.clone(),
                                shown: reference.to_string(),
                            },
                            None => ImageName::parse(from, site.line)?,
                        };
                        let platform = self.opts.target_platform.clone();
                        let found = self.look_up(&reference, &platform, site.line)?;
                        MountSource::Image(MountImage {
                            reference,
                            digest: found.and_then(|f| f.digest),
                        })
                    }
                }),
            };
            mounts.push(RunMount {
                spec,
                from_resolved,
            });
        }
        Ok(mounts)
    }

    fn copy_instruction(
        &mut self,
        c: &ins::Copy,
        site: &mut Site<'_>,
        state: &State,
    ) -> Result<CopyStep, PlanError> {
        // BuildKit processes the name with no variable set, and refuses it
        // when that changes it.
        if let Some(name) = &c.from {
            let bare: Vec<(String, String)> = Vec::new();
            let processed = Lexer::new(self.df.escape)
                .expand(name, &bare)
                .map_err(|e| site.invalid(e.to_string()))?;
            if processed.value != *name {
                return Err(site.invalid(
                    "variable expansion is not supported for --from, define a new stage with \
                     FROM using ARG from global scope as a workaround"
                        .into(),
                ));
            }
        }
        let from = match &c.from {
            None => CopyFrom::Context,
            Some(name) => match self.stage_ref(name, site.stage, site.line, true)? {
                Some(i) => CopyFrom::Stage(i),
                None => match self.opts.named_context(name) {
                    Some((_, NamedSource::Image(reference))) => CopyFrom::Image(ImageName {
                        reference: reference.clone(),
                        shown: reference.to_string(),
                    }),
                    Some((
                        named,
                        NamedSource::Tree { digest, .. } | NamedSource::Scratch { digest },
                    )) => CopyFrom::NamedContext {
                        name: named,
                        digest: digest.clone(),
                    },
                    None => CopyFrom::Image(ImageName::parse(name, site.line)?),
                },
            },
        };
        let words = CopyWords {
            paths: &c.paths,
            chown: c.chown.as_deref(),
            chmod: c.chmod.as_deref(),
            checksum: None,
        };
        let step = self.copy_step(false, from, words, site, state)?;
        if step.from == CopyFrom::Context {
            for src in &step.sources {
                let git = crate::git::parse_git_source(src)
                    .map_err(|source| PlanError::at(site.line, PlanErrorKind::Git(source)))?;
                if git.is_some() {
                    return Err(site.invalid("source can't be a git ref for COPY".into()));
                }
            }
        }
        // An image source is resolved now, so that its digest is part of
        // the step's cache key (a moved tag invalidates it).
        let from_digest = match &step.from {
            CopyFrom::Image(reference) => {
                let platform = self.opts.target_platform.clone();
                self.look_up(reference, &platform, site.line)?
                    .and_then(|found| found.digest)
            }
            _ => None,
        };
        Ok(CopyStep {
            link: linked(c.link, &step, site)?,
            exclude: c.exclude.clone(),
            parents: c.parents,
            from_digest,
            ..step
        })
    }

    fn add_instruction(
        &mut self,
        a: &ins::Add,
        site: &mut Site<'_>,
        state: &State,
    ) -> Result<CopyStep, PlanError> {
        let words = CopyWords {
            paths: &a.paths,
            chown: a.chown.as_deref(),
            chmod: a.chmod.as_deref(),
            checksum: a.checksum.as_deref(),
        };
        let step = self.copy_step(true, CopyFrom::Context, words, site, state)?;
        let mut any_git = false;
        for src in &step.sources {
            let git = crate::git::parse_git_source(src)
                .map_err(|source| PlanError::at(site.line, PlanErrorKind::Git(source)))?;
            let Some(git) = git else { continue };
            any_git = true;
            // BuildKit's ADD takes `mtime=` and leaves the checkout's times
            // (only a Git build context applies it): so does kiln's, saying so.
            if git.mtime_commit {
                self.warnings.push(PlanWarning {
                    line: Some(site.line),
                    message: format!(
                        "{src}: mtime=commit has no effect in ADD, as in BuildKit (the files \
                         get the checkout's time; a Git build context applies it)"
                    ),
                });
            }
            if let (Some(flag), Some(query)) = (a.keep_git_dir, git.keep_git_dir) {
                if flag != query {
                    return Err(site.invalid("inconsistent keep-git-dir configuration".into()));
                }
            }
            if let (Some(flag), Some(query)) = (&step.checksum, &git.checksum) {
                if flag != query {
                    return Err(site.invalid(format!("checksum mismatch {flag:?} != {query:?}")));
                }
            }
        }
        if step.checksum.is_some() {
            if step.sources.len() != 1 {
                return Err(site.invalid("checksum can't be specified for multiple sources".into()));
            }
            let url =
                step.sources[0].starts_with("http://") || step.sources[0].starts_with("https://");
            if !url && !any_git {
                return Err(site.invalid("checksum requires HTTP(S) or Git sources".into()));
            }
        }
        Ok(CopyStep {
            link: linked(a.link, &step, site)?,
            exclude: a.exclude.clone(),
            unpack: a.unpack,
            keep_git_dir: if any_git { a.keep_git_dir } else { None },
            ..step
        })
    }

    fn copy_step(
        &self,
        is_add: bool,
        from: CopyFrom,
        words: CopyWords<'_>,
        site: &mut Site<'_>,
        state: &State,
    ) -> Result<CopyStep, PlanError> {
        let chown = self.expand_opt(words.chown, state, site)?;
        let chmod = self.expand_opt(words.chmod, state, site)?;
        let checksum = self.expand_opt(words.checksum, state, site)?;
        let mut sources = Vec::new();
        for s in &words.paths.sources {
            sources.push(self.expand(s, state, site)?);
        }
        let dest_raw = self.expand(&words.paths.dest, state, site)?;
        let mut inline = Vec::new();
        for doc in &words.paths.inline_sources {
            let data = if doc.expand {
                // Raw expansion: quotes are data in a heredoc body.
                let lexer = Lexer {
                    skip_process_quotes: true,
                    ..Lexer::new('\\')
                };
                self.expand_with(lexer, &doc.data, state, site)?
            } else {
                doc.data.clone()
            };
            inline.push(InlineFile {
                name: doc.name.clone(),
                data,
                line: 0,
            });
        }
        if let Some(c) = &chmod {
            crate::modes::Chmod::parse(c).map_err(|e| site.invalid(e.to_string()))?;
        }
        Ok(CopyStep {
            is_add,
            from,
            sources,
            inline,
            dest: dest_path(&state.workdir(), &dest_raw),
            dest_as_written: dest_raw,
            chown,
            chmod,
            link: false,
            exclude: Vec::new(),
            checksum,
            unpack: None,
            parents: false,
            from_digest: None,
            keep_git_dir: None,
            git_commits: BTreeMap::new(),
        })
    }
}

/// RUN flags kiln parses but cannot honour are refused, naming the line,
/// rather than accepted and ignored: `--device` (BuildKit's CDI devices).
fn refuse_unsupported_run_flags(r: &ins::Run, site: &Site<'_>) -> Result<(), PlanError> {
    if let Some(device) = r.devices.first() {
        return Err(site.invalid(format!(
            "RUN --device={} is not supported by kiln (no CDI device support): remove the flag",
            device.name
        )));
    }
    Ok(())
}

/// A base image's config fields that BuildKit's image type does not have
/// do not carry over into the image built on it: what docker's legacy
/// builder wrote (`container_config`, `docker_version`, `Config.Hostname`,
/// `Config.Image`, `Config.Attach*`, …). Its type has OCI's fields (with
/// the platform's `os.features`) and Docker's `Healthcheck`, `OnBuild` and
/// `Shell`, which kiln models.
fn drop_unmodelled_fields(image: &mut ImageConfig) {
    image.extra.retain(|key, _| key == "os.features");
    if let Some(config) = image.config.as_mut() {
        config.extra.clear();
    }
}

/// What a base image's config sets, attributed to the image.
fn base_provenance(image: &ImageConfig, reference: &str) -> BTreeMap<String, Origin> {
    let mut provenance = BTreeMap::new();
    let Some(c) = &image.config else {
        return provenance;
    };
    let origin = Origin::BaseImage(reference.to_string());
    for (field, set) in [
        ("Cmd", c.cmd.is_some()),
        ("Entrypoint", c.entrypoint.is_some()),
        ("Shell", c.shell.is_some()),
        ("User", c.user.as_deref().is_some_and(|u| !u.is_empty())),
        (
            "WorkingDir",
            c.working_dir.as_deref().is_some_and(|w| !w.is_empty()),
        ),
        ("Healthcheck", c.healthcheck.is_some()),
        ("StopSignal", c.stop_signal.is_some()),
    ] {
        if set {
            provenance.insert(field.to_string(), origin.clone());
        }
    }
    for e in c.env.iter().flatten() {
        provenance.insert(format!("Env.{}", split_env(e).0), origin.clone());
    }
    provenance
}

/// CMD's or ENTRYPOINT's argv: exec form as written, shell form through
/// the shell in effect.
fn command_args(command: &CommandLine, state: &State) -> Vec<String> {
    match command {
        CommandLine::Exec(v) => v.clone(),
        CommandLine::Shell(s) => with_shell(state.shell(), s),
    }
}

fn dispatch_healthcheck(h: &ins::Healthcheck, state: &mut State, origin: Origin) {
    let mut value = serde_json::Map::new();
    value.insert("Test".into(), serde_json::json!(h.test));
    for (key, v) in [
        ("Interval", h.interval_ns),
        ("Timeout", h.timeout_ns),
        ("StartPeriod", h.start_period_ns),
        ("StartInterval", h.start_interval_ns),
    ] {
        if let Some(ns) = v.filter(|n| *n > 0) {
            value.insert(key.into(), serde_json::json!(ns));
        }
    }
    if let Some(r) = h.retries.filter(|r| *r > 0) {
        value.insert("Retries".into(), serde_json::json!(r));
    }
    state.config().healthcheck = Some(serde_json::Value::Object(value));
    state.provenance.insert("Healthcheck".into(), origin);
    let text = healthcheck_history(
        &h.test,
        h.interval_ns.unwrap_or(0),
        h.timeout_ns.unwrap_or(0),
        h.start_period_ns.unwrap_or(0),
        h.start_interval_ns.unwrap_or(0),
        h.retries.unwrap_or(0),
    );
    Planner::commit(state, text, false, false);
}

/// RUN's argv, and the script file a single heredoc with a shebang
/// becomes (run as `/dev/pipes/NAME`). `line` is where the RUN is
/// dispatched (an ONBUILD trigger's RUN: at its FROM line).
fn run_command(r: &ins::Run, state: &State, line: usize) -> (Vec<String>, Option<InlineFile>) {
    let cmdline = match &r.command {
        CommandLine::Exec(v) => return (v.clone(), None),
        CommandLine::Shell(s) => s,
    };
    if let [doc] = r.heredocs.as_slice() {
        // A single heredoc: a shebang makes it a script, else its body is
        // the shell command.
        let data = if doc.chomp {
            doc.data
                .lines()
                .map(|l| l.trim_start_matches('\t'))
                .collect::<Vec<_>>()
                .join("\n")
                + if doc.data.ends_with('\n') { "\n" } else { "" }
        } else {
            doc.data.clone()
        };
        if cmdline.trim_start().starts_with("<<") && cmdline.split_whitespace().count() == 1 {
            if data.starts_with("#!") {
                let argv = vec![format!("/dev/pipes/{}", doc.name)];
                let script = InlineFile {
                    name: doc.name.clone(),
                    data,
                    // A trigger's lines are not the Dockerfile's: its FROM line.
                    line: if r.meta.span.start_line() == line {
                        doc.line
                    } else {
                        line
                    },
                };
                return (argv, Some(script));
            }
            return (with_shell(state.shell(), &data), None);
        }
    }
    let mut cmdline = cmdline.clone();
    for doc in &r.heredocs {
        cmdline.push('\n');
        cmdline.push_str(&doc.data);
        cmdline.push_str(&doc.name);
    }
    (with_shell(state.shell(), &cmdline), None)
}

/// `withShell`: the shell words plus the command line as one argument.
fn with_shell(mut shell: Vec<String>, cmdline: &str) -> Vec<String> {
    shell.push(cmdline.to_string());
    shell
}

/// `runCommandString`: `|N K=V ... argv...` when ARGs are in scope.
fn run_history(argv: &[String], args: &[(String, Option<String>)], env: &Env) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (key, value) in args {
        let v = env
            .get(key)
            .map(str::to_string)
            .unwrap_or_else(|| value.clone().unwrap_or_default());
        match at.get(key.as_str()) {
            Some(&i) => pairs[i].1 = v,
            None => {
                at.insert(key, pairs.len());
                pairs.push((key, v));
            }
        }
    }
    let mut words: Vec<String> = Vec::new();
    if !pairs.is_empty() {
        words.push(format!("|{}", pairs.len()));
        words.extend(pairs.into_iter().map(|(k, v)| format!("{k}={v}")));
    }
    words.extend(argv.iter().cloned());
    words.join(" ")
}

fn copy_history(verb: &str, parents: bool, step: &CopyStep) -> String {
    let mut msg = verb.to_string();
    if parents {
        msg.push_str(" --parents");
    }
    if let Some(c) = &step.chown {
        msg.push_str(&format!(" --chown={c}"));
    }
    if let Some(c) = &step.chmod {
        msg.push_str(&format!(" --chmod={c}"));
    }
    for s in &step.sources {
        msg.push(' ');
        msg.push_str(s);
    }
    for doc in &step.inline {
        msg.push_str(&format!(" <<{}", doc.name));
    }
    msg.push(' ');
    msg.push_str(&step.dest_as_written);
    msg
}

/// Whether a COPY or ADD with `--link` is copied as a linked layer (onto an
/// empty directory, seeing nothing of the base): not with `--chmod`, which
/// BuildKit's frontend copies onto the current state instead
/// (`convert_copy.go`: the merge only when `cfg.link && cfg.chmod == ""`).
/// A linked layer has no base to look a user or group name up in:
/// `--chown` by name is refused there, as BuildKit refuses it (its solver
/// with "invalid user index: -1", its frontend since moby/buildkit#7134).
fn linked(link: bool, step: &CopyStep, site: &Site<'_>) -> Result<bool, PlanError> {
    let linked = link && step.chmod.is_none();
    if let Some(chown) = step.chown.as_deref().filter(|_| linked) {
        if crate::users::ChownSpec::parse(chown).names_a_user_or_group() {
            return Err(site.invalid(format!(
                "--chown={chown} with --link: a linked layer is made without the base's \
                 /etc/passwd and /etc/group, so only numeric ids (and root) can be used; \
                 give --chown=UID:GID, or drop --link"
            )));
        }
    }
    Ok(linked)
}
