//! `kiln explain` of an image rather than a Dockerfile: the same report
//! (argv, the config with where each value came from, the warnings),
//! sources read from the image's history ([`super::history`]), the
//! container's values as the runtime makes them ([`super::launch`]), and
//! which process is PID 1 ([`super::pid1`]).
//!
//! ```
//! use kiln_builder::explain::image::{explain_image, ImageSubject};
//! use kiln_builder::explain::launch::Overrides;
//! use kiln_layers::oci::{ContainerConfig, History, ImageConfig};
//! let config = ImageConfig {
//!     config: Some(ContainerConfig {
//!         cmd: Some(vec!["serve".into()]),
//!         ..Default::default()
//!     }),
//!     history: vec![History { created_by: Some("CMD [\"serve\"]".into()), ..Default::default() }],
//!     ..Default::default()
//! };
//! let subject = ImageSubject::new("example/app:1", &config);
//! let e = explain_image(&subject, &Overrides::docker_run(), None);
//! assert_eq!(e.argv.unwrap(), ["serve"]);
//! assert_eq!(e.sources["cmd"].history, Some(0));
//! ```

use std::collections::BTreeMap;

use kiln_layers::oci::{ContainerConfig, ImageConfig, Platform};
use kiln_layers::Store;

use super::history::{Entry, ImageHistory};
use super::launch::Overrides;
use super::pid1::{self, ImageFiles};
use super::{
    default_source, json_list, run_examples, shell_form_warnings, CommandHistory, Commands,
    ExplainOptions, Explanation, Form, Overridden, Source, Subject, Warning,
};
use crate::image::{split_env, DEFAULT_PATH};
use crate::run_argv::{merge_command, Origin as RunOrigin};

/// The image to explain.
#[derive(Debug, Clone)]
pub struct ImageSubject<'a> {
    /// The image as named.
    pub reference: String,
    pub digest: Option<String>,
    pub config: &'a ImageConfig,
    /// The image it was built on (see [`find_base`]).
    pub base: Option<BaseImage>,
}

/// The image an image was built on, as found in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    pub name: String,
    /// How many history entries came with it.
    pub history_entries: usize,
    /// Its CMD (what an ENTRYPOINT after it reset).
    pub cmd: Option<Vec<String>>,
}

impl<'a> ImageSubject<'a> {
    /// An image with nothing known but its name and config.
    pub fn new(reference: &str, config: &'a ImageConfig) -> ImageSubject<'a> {
        ImageSubject {
            reference: reference.to_string(),
            digest: None,
            config,
            base: None,
        }
    }
}

/// The image in `store` that `config`'s image was built on: the one with
/// the most history entries whose layers and history this image's start
/// with (and that is not the image itself). Its name, and the number of
/// history entries it has.
pub fn find_base(store: &Store, config: &ImageConfig, platform: &Platform) -> Option<BaseImage> {
    let mut best: Option<BaseImage> = None;
    for tagged in store.list().ok()? {
        let Ok(image) = store.read_image(&tagged.descriptor, platform) else {
            continue;
        };
        let base = &image.config;
        let layers = &base.rootfs.diff_ids;
        let is_prefix = base.history.len() < config.history.len()
            && layers.len() <= config.rootfs.diff_ids.len()
            && config.rootfs.diff_ids.starts_with(layers)
            && config.history.starts_with(&base.history);
        let longer = best
            .as_ref()
            .is_none_or(|b| base.history.len() > b.history_entries);
        if is_prefix && longer && !base.history.is_empty() {
            let name = tagged
                .reference
                .map(|r| r.familiar())
                .unwrap_or(tagged.name);
            best = Some(BaseImage {
                name,
                history_entries: base.history.len(),
                cmd: base.config.as_ref().and_then(|c| c.cmd.clone()),
            });
        }
    }
    best
}

/// Explains `subject` as `overrides` runs it; `files` reads the image's
/// files (a store image's layers), for what PID 1 is.
pub fn explain_image(
    subject: &ImageSubject<'_>,
    overrides: &Overrides,
    files: Option<&dyn ImageFiles>,
) -> Explanation {
    let config = subject.config.config.clone().unwrap_or_default();
    let base_entries = subject
        .base
        .as_ref()
        .map(|b| b.history_entries)
        .unwrap_or(0);
    let history = ImageHistory::new(&subject.config.history, base_entries);
    let image = ImageView::new(&config, &history, subject);
    let container = Container::new(&image, overrides);
    let mut warnings = image_warnings(&image, &container);
    warnings.extend(overrides.warnings.iter().cloned());
    let input = pid1::Input {
        argv: container.argv.as_deref(),
        commands: &image.commands,
        entrypoint_from_image: container.entrypoint_origin == RunOrigin::Image,
        cmd_from_image: container.cmd_origin == RunOrigin::Image,
        sources: &container.sources,
        env: &container.env,
        overrides,
        stop_signal: container.stop_signal.as_deref(),
        files,
    };
    let pid1 = pid1::analyse(&input);
    warnings.extend(pid1.warnings.iter().cloned());
    if container.argv.is_none() {
        warnings.push(no_command_warning(&image.commands, overrides));
    }
    if overrides.kind == "kubernetes" {
        warnings.extend(run_as_non_root(overrides, container.user.as_deref()));
    }
    let options = ExplainOptions::default();
    Explanation {
        target: subject.reference.clone(),
        base: subject
            .base
            .as_ref()
            .map(|b| b.name.clone())
            .unwrap_or_else(|| "-".to_string()),
        entrypoint: container.entrypoint.clone(),
        cmd: container.cmd.clone(),
        argv: container.argv.clone(),
        shell: image.commands.shell.clone(),
        user: container.user.clone(),
        workdir: container.workdir.clone(),
        env: container.env.clone(),
        exposed_ports: keys(config.exposed_ports.as_ref()),
        volumes: keys(config.volumes.as_ref()),
        healthcheck: config.healthcheck.clone(),
        stop_signal: container.stop_signal.clone(),
        labels: config.labels.clone().unwrap_or_default(),
        sources: container.sources,
        warnings,
        entrypoint_form: image.commands.entrypoint_form,
        cmd_form: image.commands.cmd_form,
        run: run_examples(&image.commands, &options),
        subject: Some(Subject {
            kind: match overrides.kind {
                "docker_run" | "" => "image",
                other => other,
            },
            image: subject.reference.clone(),
            digest: subject.digest.clone(),
            base: subject.base.as_ref().map(|b| b.name.clone()),
            base_history_entries: base_entries,
            given: given_fields(overrides),
            ..Default::default()
        }),
        overridden: container.overridden,
        pid1: Some(pid1.pid1),
    }
}

/// The command fields the runtime sets, by the runtime's names.
fn given_fields(ov: &Overrides) -> Vec<String> {
    let (entrypoint, cmd) = match ov.kind {
        "kubernetes" => ("command", "args"),
        "compose" => ("entrypoint", "command"),
        _ => ("--entrypoint", "arguments"),
    };
    let mut given = Vec::new();
    if ov.entrypoint.is_some() {
        given.push(entrypoint.to_string());
    }
    if ov.cmd.is_some() {
        given.push(cmd.to_string());
    }
    given
}

fn keys(map: Option<&BTreeMap<String, serde_json::Value>>) -> Vec<String> {
    map.map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// The image's config with where each value came from.
struct ImageView<'a> {
    config: &'a ContainerConfig,
    history: &'a ImageHistory,
    base: Option<&'a BaseImage>,
    commands: Commands,
    sources: BTreeMap<String, Source>,
}

impl<'a> ImageView<'a> {
    fn new(
        config: &'a ContainerConfig,
        history: &'a ImageHistory,
        subject: &'a ImageSubject<'_>,
    ) -> ImageView<'a> {
        let commands = Commands::new(config, &CommandHistory::default());
        let base = subject.base.as_ref();
        let sources = image_sources(config, history, base, commands.cmd.is_none());
        ImageView {
            config,
            history,
            base: subject.base.as_ref(),
            commands,
            sources,
        }
    }
}

/// Every field the config sets, with the history entry that set it.
fn image_sources(
    config: &ContainerConfig,
    history: &ImageHistory,
    base_image: Option<&BaseImage>,
    no_cmd: bool,
) -> BTreeMap<String, Source> {
    let base = base_image.map(|b| b.name.as_str());
    let mut fields: Vec<(String, bool)> = Vec::new();
    let mut push = |name: String, is_default: bool| fields.push((name, is_default));
    // An empty ENTRYPOINT (`ENTRYPOINT []`) was still set by an entry: the
    // config then holds `[]`, or (as BuildKit writes it) no Entrypoint.
    if config.entrypoint.is_some() || history.setter("entrypoint").is_some() {
        push("entrypoint".into(), false);
    }
    // Likewise `CMD []` after the last ENTRYPOINT: it set the command,
    // empty (no Cmd, as BuildKit writes it); no ENTRYPOINT reset it.
    let emptied_cmd = history.setter("cmd").filter(|c| {
        c.command().is_some_and(|v| v.is_empty())
            && history
                .setter("entrypoint")
                .is_none_or(|e| e.index < c.index)
    });
    if config.cmd.as_ref().is_some_and(|c| !c.is_empty()) || emptied_cmd.is_some() {
        push("cmd".into(), false);
    }
    push(
        "shell".into(),
        config.shell.as_ref().is_none_or(Vec::is_empty),
    );
    if config.user.as_deref().is_some_and(|u| !u.is_empty()) {
        push("user".into(), false);
    }
    if let Some(w) = config.working_dir.as_deref().filter(|w| !w.is_empty()) {
        push("workdir".into(), w == "/");
    }
    for entry in config.env.iter().flatten() {
        let (key, value) = split_env(entry);
        push(format!("env.{key}"), key == "PATH" && value == DEFAULT_PATH);
    }
    for key in keys(config.exposed_ports.as_ref()) {
        push(format!("exposed_ports.{key}"), false);
    }
    for key in keys(config.volumes.as_ref()) {
        push(format!("volumes.{key}"), false);
    }
    if config.healthcheck.is_some() {
        push("healthcheck".into(), false);
    }
    if config.stop_signal.is_some() {
        push("stop_signal".into(), false);
    }
    for key in config.labels.iter().flat_map(|l| l.keys()) {
        push(format!("labels.{key}"), false);
    }
    let mut sources: BTreeMap<String, Source> = fields
        .into_iter()
        .map(|(field, is_default)| {
            let source = field_source(history, &field, is_default, base);
            (field, source)
        })
        .collect();
    if no_cmd && emptied_cmd.is_none() {
        if let Some((entry, _)) = cmd_reset(history, base_image) {
            let mut source = entry_source(history, entry, base);
            source.from = "reset";
            sources.insert("cmd".into(), source);
        }
    }
    sources
}

/// The ENTRYPOINT entry (after the base) that reset the CMD in effect
/// before it (the last CMD entry after the base, else the base image's
/// CMD; with no base known, the last CMD entry), and that CMD.
fn cmd_reset<'h>(
    history: &'h ImageHistory,
    base: Option<&BaseImage>,
) -> Option<(&'h Entry, Vec<String>)> {
    let entrypoint = history.setter("entrypoint")?;
    if history.in_base(entrypoint.index) {
        return None;
    }
    let cmd_entry = history.setter("cmd").filter(|c| c.index < entrypoint.index);
    let from_entry = |c: &Entry| (entrypoint, c.command().unwrap_or_default());
    match (cmd_entry, base) {
        (Some(c), _) if !history.in_base(c.index) => Some(from_entry(c)),
        (c, None) => c.map(from_entry),
        (_, Some(b)) => b
            .cmd
            .clone()
            .filter(|c| !c.is_empty())
            .map(|cmd| (entrypoint, cmd)),
    }
}

/// The last history entry that set `field`; else BuildKit's default (for a
/// default value); else the last entry whose text does not say what it
/// set; else unknown.
fn field_source(
    history: &ImageHistory,
    field: &str,
    is_default: bool,
    base: Option<&str>,
) -> Source {
    // Only the ENTRYPOINT entry clears the CMD: an entry that set neither
    // is no source of an empty command.
    if let Some(entry) = history.setter(field) {
        return entry_source(history, entry, base);
    }
    if is_default {
        return default_source();
    }
    match history.last_opaque() {
        Some(entry) => entry_source(history, entry, base),
        None => Source::new("unknown"),
    }
}

/// A history entry as a source: `base_image` when it came with the base.
fn entry_source(history: &ImageHistory, entry: &Entry, base: Option<&str>) -> Source {
    let in_base = history.in_base(entry.index);
    Source {
        image: base.filter(|_| in_base).map(str::to_string),
        history: Some(entry.index),
        created_by: Some(entry.created_by.clone()),
        instruction: entry.keyword.map(|_| entry.text.clone()),
        ..Source::new(if in_base { "base_image" } else { "history" })
    }
}

/// The container: the runtime's values over the image's, with sources.
struct Container {
    entrypoint: Option<Vec<String>>,
    entrypoint_origin: RunOrigin,
    cmd: Option<Vec<String>>,
    cmd_origin: RunOrigin,
    argv: Option<Vec<String>>,
    user: Option<String>,
    workdir: Option<String>,
    env: Vec<String>,
    stop_signal: Option<String>,
    sources: BTreeMap<String, Source>,
    overridden: BTreeMap<String, Overridden>,
}

impl Container {
    fn new(image: &ImageView<'_>, ov: &Overrides) -> Container {
        let mut c = Container {
            entrypoint: image.commands.entrypoint.clone(),
            entrypoint_origin: RunOrigin::Image,
            cmd: image.commands.cmd.clone(),
            cmd_origin: RunOrigin::Image,
            argv: None,
            user: image.config.user.clone(),
            workdir: image.config.working_dir.clone(),
            env: image.config.env.clone().unwrap_or_default(),
            stop_signal: image.config.stop_signal.clone(),
            sources: image.sources.clone(),
            overridden: BTreeMap::new(),
        };
        c.merge_commands(image, ov);
        c.apply_settings(image, ov);
        c
    }

    /// The daemon's merge of the runtime's entrypoint and command with the
    /// image's.
    fn merge_commands(&mut self, image: &ImageView<'_>, ov: &Overrides) {
        let commands = &image.commands;
        let user_entrypoint = ov.entrypoint.as_ref().map(|g| g.value.as_slice());
        let user_cmd = ov.cmd.as_ref().map(|g| g.value.clone()).unwrap_or_default();
        let merged = merge_command(
            user_entrypoint,
            &user_cmd,
            commands.entrypoint.as_deref(),
            commands.cmd.as_deref(),
        );
        let Ok(run) = merged else {
            self.entrypoint = None;
            self.cmd = None;
            self.entrypoint_origin = RunOrigin::Unset;
            self.cmd_origin = RunOrigin::Unset;
            return;
        };
        self.argv = Some(run.argv());
        self.entrypoint_origin = run.entrypoint_origin;
        self.cmd_origin = run.cmd_origin;
        self.entrypoint = (!run.entrypoint.is_empty()).then(|| run.entrypoint.clone());
        self.cmd = (!run.cmd.is_empty()).then(|| run.cmd.clone());
        let image_value = |v: &Option<Vec<String>>| serde_json::json!(v);
        if commands.entrypoint.is_some() && run.entrypoint_origin != RunOrigin::Image {
            self.replace("entrypoint", image_value(&commands.entrypoint), image);
        }
        if commands.cmd.is_some() && run.cmd_origin != RunOrigin::Image {
            self.replace("cmd", image_value(&commands.cmd), image);
        }
        match (run.entrypoint_origin, &ov.entrypoint) {
            (RunOrigin::User, Some(given)) => self.set_source("entrypoint", given.source.clone()),
            (RunOrigin::Unset, Some(given)) => self.reset("entrypoint", &given.source),
            _ => {}
        }
        match (run.cmd_origin, &ov.cmd, &ov.entrypoint) {
            (RunOrigin::User, Some(given), _) => self.set_source("cmd", given.source.clone()),
            (RunOrigin::Unset, _, Some(given)) if commands.cmd.is_some() => {
                self.reset("cmd", &given.source)
            }
            _ => {}
        }
    }

    /// User, working directory, environment and stop signal.
    fn apply_settings(&mut self, image: &ImageView<'_>, ov: &Overrides) {
        if let Some((user, source)) = ov.effective_user(image.config.user.as_deref()) {
            if image.config.user.as_deref().is_some_and(|u| !u.is_empty()) {
                self.replace("user", serde_json::json!(image.config.user), image);
            }
            self.user = Some(user);
            if let Some(source) = source {
                self.set_source("user", source);
            }
        }
        if let Some(w) = &ov.workdir {
            if image.config.working_dir.is_some() {
                self.replace(
                    "workdir",
                    serde_json::json!(image.config.working_dir),
                    image,
                );
            }
            self.workdir = Some(w.value.clone());
            self.set_source("workdir", w.source.clone());
        }
        if let Some(s) = &ov.stop_signal {
            if image.config.stop_signal.is_some() {
                self.replace(
                    "stop_signal",
                    serde_json::json!(image.config.stop_signal),
                    image,
                );
            }
            self.stop_signal = Some(s.value.clone());
            self.set_source("stop_signal", s.source.clone());
        }
        for given in &ov.env {
            let (key, value) = &given.value;
            let field = format!("env.{key}");
            let entry = format!("{key}={value}");
            match self.env.iter_mut().find(|e| split_env(e).0 == key) {
                Some(slot) => {
                    let old = std::mem::replace(slot, entry);
                    self.replace(&field, serde_json::json!(old), image);
                }
                None => self.env.push(entry),
            }
            self.set_source(&field, given.source.clone());
        }
    }

    fn set_source(&mut self, field: &str, source: Source) {
        self.sources.insert(field.to_string(), source);
    }

    /// `field` no longer has a value: the runtime's `by` cleared it.
    fn reset(&mut self, field: &str, by: &Source) {
        let source = Source {
            from: "reset",
            ..by.clone()
        };
        self.sources.insert(field.to_string(), source);
    }

    /// Records the image's value of `field` before the runtime replaced it.
    fn replace(&mut self, field: &str, image_value: serde_json::Value, image: &ImageView<'_>) {
        self.overridden.insert(
            field.to_string(),
            Overridden {
                image_value,
                image_source: image.sources.get(field).cloned(),
            },
        );
    }
}

/// The warnings the image's config earns (as a Dockerfile's would, with
/// history entries for lines), for the commands the container uses.
fn image_warnings(image: &ImageView<'_>, container: &Container) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let uses_image_cmd = container.cmd_origin == RunOrigin::Image;
    let uses_image_entrypoint = container.entrypoint_origin == RunOrigin::Image;
    if let (Some((entry, dropped)), true) = (
        cmd_reset(image.history, image.base),
        image.commands.cmd.is_none(),
    ) {
        warnings.push(Warning {
            code: "EntrypointResetsCmd",
            message: format!(
                "ENTRYPOINT (history entry {}: {}) resets the inherited CMD {}: the image has no CMD unless a CMD follows the ENTRYPOINT",
                entry.index,
                entry.text,
                json_list(&dropped)
            ),
            history: Some(entry.index),
            ..Default::default()
        });
    }
    let commands = &image.commands;
    for (field, value, form, used) in [
        (
            "ENTRYPOINT",
            &commands.entrypoint,
            commands.entrypoint_form,
            uses_image_entrypoint,
        ),
        ("CMD", &commands.cmd, commands.cmd_form, uses_image_cmd),
    ] {
        let literal: Vec<String> = value
            .iter()
            .flatten()
            .filter(|w| w.contains('$'))
            .map(|w| format!("{w:?}"))
            .collect();
        if form != Form::Exec || literal.is_empty() || !used {
            continue;
        }
        let source = image.sources.get(&field.to_ascii_lowercase());
        warnings.push(Warning {
            code: "ExecFormVariables",
            message: format!(
                "{field} is in exec form, which no shell runs: {} reach the process literally, unexpanded (use shell form, or [\"sh\", \"-c\", \"…\"])",
                literal.join(", ")
            ),
            history: source.and_then(|s| s.history),
            ..Default::default()
        });
    }
    let mut shell = Vec::new();
    shell_form_warnings(&mut shell, commands, &image.sources);
    shell.retain(|w| match w.code {
        "ShellEntrypointIgnoresArgs" => uses_image_entrypoint,
        "ShellCmdAsEntrypointArgs" => uses_image_entrypoint && uses_image_cmd,
        // What PID 1 is, the PID 1 analysis says for the container.
        _ => false,
    });
    warnings.extend(shell);
    warnings
}

fn no_command_warning(commands: &Commands, ov: &Overrides) -> Warning {
    let message = if commands.entrypoint.is_none()
        && commands.cmd.is_none()
        && ov.entrypoint.is_none()
        && ov.cmd.is_none()
    {
        "the image has neither ENTRYPOINT nor CMD: `docker run IMAGE` fails with \"no command specified\" unless a command is given".to_string()
    } else {
        "with this entrypoint and no command, the container has no command and fails to start with \"no command specified\"".to_string()
    };
    Warning {
        code: "NoCommand",
        message,
        ..Default::default()
    }
}

/// Kubernetes refuses to start a `runAsNonRoot` container whose user is
/// root, or is a name it cannot check.
fn run_as_non_root(ov: &Overrides, user: Option<&str>) -> Option<Warning> {
    let required = ov.run_as_non_root.as_ref().filter(|g| g.value)?;
    let name = user.unwrap_or("").split(':').next().unwrap_or("");
    let message = match name.parse::<i64>() {
        Ok(0) => "runAsNonRoot is set but the container runs as root (uid 0): the kubelet refuses to start it (CreateContainerConfigError)".to_string(),
        Err(_) if name.is_empty() => "runAsNonRoot is set but the image has no USER (root): the kubelet refuses to start it (CreateContainerConfigError)".to_string(),
        Err(_) => format!("runAsNonRoot is set and the image's USER is the name {name:?}: the kubelet cannot verify a non-numeric user is not root and refuses to start it (set runAsUser, or a numeric USER)"),
        Ok(_) => return None,
    };
    Some(Warning {
        code: "RunAsNonRootFails",
        message,
        line: required.source.line,
        file: required.source.file.clone(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_layers::oci::History;

    fn image(config: ContainerConfig, history: &[&str]) -> ImageConfig {
        ImageConfig {
            config: Some(config),
            history: history
                .iter()
                .map(|h| History {
                    created_by: Some(h.to_string()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn sources_from_history_and_base() {
        let config = image(
            ContainerConfig {
                entrypoint: Some(vec!["/app".into()]),
                env: Some(vec![
                    format!("PATH={DEFAULT_PATH}"),
                    "A=1".into(),
                    "B=2".into(),
                ]),
                user: Some("app".into()),
                ..Default::default()
            },
            &[
                "kiln import",
                "CMD [\"sh\"]",
                "ENV A=1",
                "ENTRYPOINT [\"/app\"]",
            ],
        );
        let mut subject = ImageSubject::new("x", &config);
        subject.base = Some(BaseImage {
            name: "base:1".into(),
            history_entries: 2,
            // The base's CMD, set by its entry 1, is what entry 3 resets.
            cmd: Some(vec!["sh".into()]),
        });
        let e = explain_image(&subject, &Overrides::docker_run(), None);
        assert_eq!(e.argv.unwrap(), ["/app"]);
        assert_eq!(e.sources["entrypoint"].history, Some(3));
        assert_eq!(e.sources["entrypoint"].from, "history");
        assert_eq!(e.sources["env.A"].history, Some(2));
        assert_eq!(e.sources["env.PATH"].from, "default");
        // Neither ENV entry names B: the import set it, with the base.
        assert_eq!(e.sources["env.B"].from, "base_image");
        assert_eq!(e.sources["env.B"].image.as_deref(), Some("base:1"));
        assert_eq!(e.sources["user"].history, Some(0));
        assert_eq!(e.sources["cmd"].from, "reset");
        assert!(e
            .warnings
            .iter()
            .any(|w| w.code == "EntrypointResetsCmd" && w.history == Some(3)));
    }

    /// BuildKit writes no Entrypoint for `ENTRYPOINT []`: its history
    /// entry is still where the (empty) entrypoint came from.
    #[test]
    fn an_empty_entrypoint_left_out_of_the_config_has_its_entry() {
        let config = image(
            ContainerConfig {
                cmd: Some(vec!["--help".into()]),
                ..Default::default()
            },
            &[
                "kiln import",
                "ENTRYPOINT [\"/app\"]",
                "ENTRYPOINT []",
                "CMD [\"--help\"]",
            ],
        );
        let e = explain_image(
            &ImageSubject::new("x", &config),
            &Overrides::docker_run(),
            None,
        );
        assert_eq!(e.sources["entrypoint"].history, Some(2));
        assert_eq!(e.sources["entrypoint"].from, "history");
        assert_eq!(e.argv.unwrap(), ["--help"]);
    }
}
