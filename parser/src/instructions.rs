//! Typed instructions built from the AST: stages (with names and indices),
//! meta ARGs (those before the first FROM), one type per instruction.
//!
//! Nothing is expanded here: values are as written (quotes and all, for
//! ENV/LABEL/ARG), because expansion depends on build arguments and the
//! stage's environment, which only the builder knows. Flags are checked
//! (unknown, duplicate, missing value, wrong boolean) the way BuildKit checks
//! them, and their values are kept typed.
//!
//! ```
//! use kiln_parser::instructions::{from_ast, Instruction, CommandLine};
//! let df = kiln_parser::parse("ARG V=1\nFROM a:$V AS b\nRUN --network=none make\n", "Dockerfile").unwrap();
//! let typed = from_ast(&df).unwrap();
//! assert_eq!(typed.meta_args[0].args[0].key, "V");
//! let Instruction::Run(run) = &typed.stages[0].instructions[0] else { panic!() };
//! assert_eq!(run.network.as_deref(), Some("none"));
//! assert_eq!(run.command, CommandLine::Shell("make".into()));
//! ```

use serde::Serialize;

use crate::ast::{self, Args, Directive, Heredoc, Node, Span};
use crate::error::{ErrorKind, Locator, ParseError};
use crate::parser::parse_heredoc_word;
use crate::suggest::suggest;

/// All instruction keywords, upper case.
pub const INSTRUCTION_NAMES: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// A Dockerfile as stages of typed instructions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    pub directives: Vec<Directive>,
    /// The escape character in effect (needed to expand words later).
    pub escape: char,
    /// ARG instructions before the first FROM (usable in FROM lines).
    pub meta_args: Vec<Arg>,
    pub stages: Vec<Stage>,
}

/// What every instruction carries: where it is and how it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Meta {
    /// The keyword as written (`run`, `Run`, `RUN`).
    pub keyword: String,
    pub span: Span,
    /// The exact source text, all physical lines.
    pub source: String,
    /// The logical line (continuations joined, heredoc bodies excluded).
    pub original: String,
    /// Flags as written (quotes removed), e.g. `--from=build`.
    pub flags: Vec<String>,
    /// Comment lines right above the instruction.
    pub comments: Vec<String>,
    /// Lines of empty continuation lines inside the instruction (for the
    /// `NoEmptyContinuation` lint).
    pub empty_continuation_lines: Vec<usize>,
}

/// One build stage: a FROM and the instructions after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// 0-based position among the stages.
    pub index: usize,
    /// The stage name from `AS name`, lower-cased; `None` if unnamed.
    pub name: Option<String>,
    /// The name exactly as written (for casing lints).
    pub name_as_written: Option<String>,
    /// The `AS` keyword as written.
    pub as_keyword: Option<String>,
    /// The base: an image reference or an earlier stage's name (unexpanded).
    pub base: String,
    /// `--platform` (unexpanded).
    pub platform: Option<String>,
    /// The FROM instruction itself.
    pub from: Meta,
    pub instructions: Vec<Instruction>,
}

/// One instruction inside a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "instruction", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Instruction {
    Add(Add),
    Arg(Arg),
    Cmd(Cmd),
    Copy(Copy),
    Entrypoint(Entrypoint),
    Env(Env),
    Expose(Expose),
    Healthcheck(Healthcheck),
    Label(Label),
    Maintainer(Maintainer),
    Onbuild(Onbuild),
    Run(Run),
    Shell(Shell),
    Stopsignal(StopSignal),
    User(User),
    Volume(Volume),
    Workdir(Workdir),
}

impl Instruction {
    pub fn meta(&self) -> &Meta {
        match self {
            Instruction::Add(i) => &i.meta,
            Instruction::Arg(i) => &i.meta,
            Instruction::Cmd(i) => &i.meta,
            Instruction::Copy(i) => &i.meta,
            Instruction::Entrypoint(i) => &i.meta,
            Instruction::Env(i) => &i.meta,
            Instruction::Expose(i) => &i.meta,
            Instruction::Healthcheck(i) => &i.meta,
            Instruction::Label(i) => &i.meta,
            Instruction::Maintainer(i) => &i.meta,
            Instruction::Onbuild(i) => &i.meta,
            Instruction::Run(i) => &i.meta,
            Instruction::Shell(i) => &i.meta,
            Instruction::Stopsignal(i) => &i.meta,
            Instruction::User(i) => &i.meta,
            Instruction::Volume(i) => &i.meta,
            Instruction::Workdir(i) => &i.meta,
        }
    }
}

/// A command in shell form (run through the stage's SHELL) or exec form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "form", content = "value", rename_all = "snake_case")]
pub enum CommandLine {
    /// The text after continuation joining, one string.
    Shell(String),
    /// The JSON array's strings.
    Exec(Vec<String>),
}

impl CommandLine {
    pub fn is_empty(&self) -> bool {
        match self {
            CommandLine::Shell(s) => s.is_empty(),
            CommandLine::Exec(v) => v.is_empty(),
        }
    }
}

/// `key=value` as written (ENV, LABEL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// Legacy `ENV key value` form (no `=`).
    pub legacy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Env {
    pub meta: Meta,
    pub pairs: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Label {
    pub meta: Meta,
    pub pairs: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Maintainer {
    pub meta: Meta,
    pub name: String,
}

/// One name of an ARG instruction, with its default if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDefinition {
    pub key: String,
    /// The default, unexpanded; `None` for `ARG NAME` (no `=`).
    pub value: Option<String>,
    /// A `# NAME description` comment right above the ARG.
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Arg {
    pub meta: Meta,
    pub args: Vec<ArgDefinition>,
}

/// Sources given inline by a heredoc (`COPY <<EOF /dest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InlineSource {
    /// The heredoc delimiter, used as the file name.
    pub name: String,
    /// The body, leading tabs removed for `<<-`.
    pub data: String,
    /// Whether variables in `data` are to be expanded.
    pub expand: bool,
}

/// What ADD and COPY share: sources and destination, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourcesAndDest {
    pub sources: Vec<String>,
    pub inline_sources: Vec<InlineSource>,
    pub dest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Add {
    pub meta: Meta,
    pub json: bool,
    #[serde(flatten)]
    pub paths: SourcesAndDest,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    /// `--keep-git-dir`; `None` when not given.
    pub keep_git_dir: Option<bool>,
    pub checksum: Option<String>,
    /// `--unpack`; `None` when not given.
    pub unpack: Option<bool>,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copy {
    pub meta: Meta,
    pub json: bool,
    #[serde(flatten)]
    pub paths: SourcesAndDest,
    /// `--from`: a stage name or index, or an image.
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
}

/// A heredoc attached to RUN (a file for the shell, or its standard input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InlineFile {
    pub name: String,
    /// The raw body (see `chomp`).
    pub data: String,
    /// `<<-`: strip leading tabs from each line.
    pub chomp: bool,
    pub expand: bool,
    pub file_descriptor: u64,
    /// The Dockerfile line where the body starts (for error messages; not
    /// part of the JSON view).
    #[serde(skip)]
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    pub meta: Meta,
    pub command: CommandLine,
    pub heredocs: Vec<InlineFile>,
    /// `--mount` specs as written (CSV, unexpanded), in order.
    pub mounts: Vec<String>,
    /// `--network` (`default`, `none` or `host`); `None` when not given.
    pub network: Option<String>,
    /// `--security` (`sandbox` or `insecure`); `None` when not given.
    pub security: Option<String>,
    /// `--device` specs, parsed.
    pub devices: Vec<crate::mount::Device>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cmd {
    pub meta: Meta,
    pub command: CommandLine,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entrypoint {
    pub meta: Meta,
    pub command: CommandLine,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shell {
    pub meta: Meta,
    pub shell: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expose {
    pub meta: Meta,
    /// Ports as written (`80`, `53/udp`, `$PORT`), in the order written.
    pub ports: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub meta: Meta,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workdir {
    pub meta: Meta,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub meta: Meta,
    pub json: bool,
    pub volumes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StopSignal {
    pub meta: Meta,
    pub signal: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Onbuild {
    pub meta: Meta,
    /// The trigger as text, heredoc bodies appended (what goes in the image
    /// config, as BuildKit writes it).
    pub expression: String,
    /// The trigger, parsed.
    pub trigger: Box<Instruction>,
}

/// HEALTHCHECK NONE, or a command with its options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    pub meta: Meta,
    /// `["NONE"]`, `["CMD", args…]` (exec form) or `["CMD-SHELL", command]`,
    /// as in the image config.
    pub test: Vec<String>,
    /// Durations in nanoseconds; `None` when not given (or 0).
    pub interval_ns: Option<u64>,
    pub timeout_ns: Option<u64>,
    pub start_period_ns: Option<u64>,
    pub start_interval_ns: Option<u64>,
    pub retries: Option<u32>,
}

impl Dockerfile {
    /// The stage a `--from`/`FROM` reference names: a stage name (names are
    /// compared lower-cased, as BuildKit stores them) or a stage index.
    /// `None` means the reference is an image.
    pub fn find_stage(&self, reference: &str) -> Option<&Stage> {
        let lower = reference.to_lowercase();
        if let Some(stage) = self
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            return Some(stage);
        }
        if !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_digit()) {
            return reference
                .parse::<usize>()
                .ok()
                .and_then(|i| self.stages.get(i));
        }
        None
    }
}

/// Builds the typed view. Errors carry the instruction's location.
pub fn from_ast(ast: &ast::Dockerfile) -> Result<Dockerfile, ParseError> {
    let source = join_sources(ast);
    let loc = Locator::new(&ast.file_name, &source);
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &ast.nodes {
        let ctx = Ctx { node, loc: &loc };
        if node.name() == "from" {
            let index = stages.len();
            stages.push(ctx.stage(index)?);
            continue;
        }
        let instruction = ctx.instruction()?;
        match stages.last_mut() {
            Some(stage) => stage.instructions.push(instruction),
            None => match instruction {
                Instruction::Arg(arg) => meta_args.push(arg),
                _ => {
                    return Err(ctx.error(
                        ErrorKind::Instruction("no build stage in current context".into()),
                        "",
                    ))
                }
            },
        }
    }
    Ok(Dockerfile {
        directives: ast.directives.clone(),
        escape: ast.escape,
        meta_args,
        stages,
    })
}

/// The source text rebuilt from the nodes' line ranges, so error snippets
/// can show lines without the parser keeping the whole file.
fn join_sources(ast: &ast::Dockerfile) -> String {
    let mut out = String::new();
    let mut line = 1;
    for node in &ast.nodes {
        while line < node.span.start.line {
            out.push('\n');
            line += 1;
        }
        // The first line of `source` may start before the keyword column; it
        // is the whole physical line.
        out.push_str(&node.source);
        out.push('\n');
        line = node.span.end.line + 1;
    }
    out
}

struct Ctx<'a> {
    node: &'a Node,
    loc: &'a Locator<'a>,
}

/// The kinds of flag BuildKit knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--flag` or `--flag=true|false`.
    Bool,
    /// `--flag=value`; the last one given wins.
    String,
    /// `--flag=value`, repeatable.
    Strings,
}

const FROM_FLAGS: &[(&str, FlagKind)] = &[("platform", FlagKind::String)];
const ADD_FLAGS: &[(&str, FlagKind)] = &[
    ("chown", FlagKind::String),
    ("chmod", FlagKind::String),
    ("link", FlagKind::Bool),
    ("keep-git-dir", FlagKind::Bool),
    ("checksum", FlagKind::String),
    ("unpack", FlagKind::Bool),
    ("exclude", FlagKind::Strings),
];
const COPY_FLAGS: &[(&str, FlagKind)] = &[
    ("chown", FlagKind::String),
    ("from", FlagKind::String),
    ("chmod", FlagKind::String),
    ("link", FlagKind::Bool),
    ("exclude", FlagKind::Strings),
    ("parents", FlagKind::Bool),
];
const RUN_FLAGS: &[(&str, FlagKind)] = &[
    ("mount", FlagKind::Strings),
    ("network", FlagKind::String),
    ("security", FlagKind::String),
    ("device", FlagKind::Strings),
];
const HEALTHCHECK_FLAGS: &[(&str, FlagKind)] = &[
    ("interval", FlagKind::String),
    ("timeout", FlagKind::String),
    ("start-period", FlagKind::String),
    ("start-interval", FlagKind::String),
    ("retries", FlagKind::String),
];

/// Every flag an instruction accepts, by instruction (the others take
/// none): what the parser lets through, so what the builder must honour or
/// refuse.
///
/// ```
/// use kiln_parser::instructions::INSTRUCTION_FLAGS;
/// let (_, run) = INSTRUCTION_FLAGS.iter().find(|(i, _)| *i == "RUN").unwrap();
/// assert!(run.iter().any(|(flag, _)| *flag == "mount"));
/// ```
pub const INSTRUCTION_FLAGS: &[(&str, &[(&str, FlagKind)])] = &[
    ("FROM", FROM_FLAGS),
    ("ADD", ADD_FLAGS),
    ("COPY", COPY_FLAGS),
    ("RUN", RUN_FLAGS),
    ("HEALTHCHECK", HEALTHCHECK_FLAGS),
];

/// Values of the flags of one instruction, after checking.
#[derive(Default)]
struct Flags {
    values: Vec<(&'static str, Vec<String>)>,
}

impl Flags {
    fn string(&self, name: &str) -> Option<String> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.last().cloned())
    }

    fn strings(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, v)| v.iter().cloned())
            .collect()
    }

    /// `Some(true/false)` when given, `None` when not.
    fn bool(&self, name: &str) -> Option<bool> {
        self.string(name).map(|v| v == "true")
    }
}

impl Ctx<'_> {
    fn meta(&self) -> Meta {
        Meta {
            keyword: self.node.keyword.clone(),
            span: self.node.span,
            source: self.node.source.clone(),
            original: self.node.original.clone(),
            flags: self.node.flags.clone(),
            comments: self.node.comments.clone(),
            empty_continuation_lines: self.node.empty_continuation_lines.clone(),
        }
    }

    fn error(&self, kind: ErrorKind, needle: &str) -> ParseError {
        self.loc.error_at_text(
            kind,
            self.node.span.start.line,
            self.node.span.end.line,
            needle,
        )
    }

    fn message(&self, message: impl Into<String>) -> ParseError {
        self.error(ErrorKind::Instruction(message.into()), "")
    }

    fn args(&self) -> Vec<String> {
        self.node.arg_strings()
    }

    /// BuildKit's `BFlags.Parse`.
    fn flags(&self, known: &[(&'static str, FlagKind)]) -> Result<Flags, ParseError> {
        let mut flags = Flags::default();
        for written in &self.node.flags {
            if written == "--" {
                break;
            }
            let Some(body) = written.strip_prefix("--") else {
                return Err(self.error(ErrorKind::FlagWithoutDashes(written.clone()), written));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let flag_name = format!("--{name}");
            let Some((known_name, kind)) = known.iter().find(|(n, _)| *n == name).copied() else {
                let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
                return Err(self.error(
                    ErrorKind::UnknownFlag {
                        flag: flag_name,
                        suggestion: suggest(name, &names, true),
                    },
                    written,
                ));
            };
            if kind != FlagKind::Strings && flags.values.iter().any(|(n, _)| *n == known_name) {
                return Err(self.error(ErrorKind::DuplicateFlag(flag_name), written));
            }
            let value = match kind {
                FlagKind::Bool => match value {
                    Some("") => {
                        return Err(self.error(ErrorKind::MissingFlagValue(flag_name), written))
                    }
                    None => "true".to_string(),
                    Some(v) => match v.to_lowercase().as_str() {
                        "true" => "true".to_string(),
                        "false" => "false".to_string(),
                        _ => {
                            return Err(self.error(
                                ErrorKind::NotBoolean {
                                    flag: flag_name,
                                    value: v.to_string(),
                                },
                                written,
                            ))
                        }
                    },
                },
                FlagKind::String | FlagKind::Strings => match value {
                    Some(v) => v.to_string(),
                    None => return Err(self.error(ErrorKind::MissingFlagValue(flag_name), written)),
                },
            };
            flags.values.push((known_name, vec![value]));
        }
        Ok(flags)
    }

    fn stage(&self, index: usize) -> Result<Stage, ParseError> {
        let args = self.args();
        let (name, name_as_written, as_keyword) = match args.as_slice() {
            [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                let lower = name.to_lowercase();
                if !valid_stage_name(&lower) {
                    return Err(self.error(
                        ErrorKind::Instruction(format!(
                            "invalid name for build stage: {}, name can't start with a number or contain symbols",
                            crate::go_quote(name)
                        )),
                        name,
                    ));
                }
                (Some(lower), Some(name.clone()), Some(as_kw.clone()))
            }
            [_] => (None, None, None),
            _ => return Err(self.message("FROM requires either one or three arguments")),
        };
        let flags = self.flags(FROM_FLAGS)?;
        Ok(Stage {
            index,
            name,
            name_as_written,
            as_keyword,
            base: args[0].clone(),
            platform: flags.string("platform"),
            from: self.meta(),
            instructions: Vec::new(),
        })
    }

    /// The typed form of the node (any instruction but FROM), checked as
    /// BuildKit checks it.
    fn instruction(&self) -> Result<Instruction, ParseError> {
        let name = self.node.name();
        let meta = self.meta();
        let args = self.args();
        Ok(match name.as_str() {
            "env" | "label" => self.env_or_label(&name, meta)?,
            "maintainer" => {
                let name = self.exactly_one(&args, "MAINTAINER")?;
                self.flags(&[])?;
                Instruction::Maintainer(Maintainer { meta, name })
            }
            "add" => self.add(meta, &args)?,
            "copy" => self.copy(meta, &args)?,
            "onbuild" => self.onbuild(meta, &args)?,
            "workdir" => {
                let path = self.exactly_one(&args, "WORKDIR")?;
                self.flags(&[])?;
                Instruction::Workdir(Workdir { meta, path })
            }
            "run" => self.run(meta, &args)?,
            "cmd" => {
                self.flags(&[])?;
                Instruction::Cmd(Cmd {
                    meta,
                    command: self.command_line(&args),
                })
            }
            "entrypoint" => {
                self.flags(&[])?;
                Instruction::Entrypoint(Entrypoint {
                    meta,
                    command: self.command_line(&args),
                })
            }
            "healthcheck" => self.healthcheck(meta, &args)?,
            "expose" => {
                if args.is_empty() {
                    return Err(self.message("EXPOSE requires at least one argument"));
                }
                self.flags(&[])?;
                // Sorted as written, before expansion, as BuildKit's
                // parseExpose sorts them: the history's `EXPOSE [..]` and
                // every later use follow that order.
                let mut ports = args;
                ports.sort();
                Instruction::Expose(Expose { meta, ports })
            }
            "user" => {
                let user = self.exactly_one(&args, "USER")?;
                self.flags(&[])?;
                Instruction::User(User { meta, user })
            }
            "volume" => self.volume(meta, &args)?,
            "stopsignal" => {
                let signal = self.exactly_one(&args, "STOPSIGNAL")?;
                Instruction::Stopsignal(StopSignal { meta, signal })
            }
            "arg" => self.arg(meta, &args)?,
            "shell" => self.shell(meta, args)?,
            _ => {
                return Err(self.error(
                    ErrorKind::UnknownInstruction {
                        instruction: self.node.keyword.clone(),
                        suggestion: suggest(&self.node.keyword, INSTRUCTION_NAMES, false),
                    },
                    &self.node.keyword,
                ))
            }
        })
    }

    /// The one argument of `instruction`, or its error.
    fn exactly_one(&self, args: &[String], instruction: &str) -> Result<String, ParseError> {
        match args {
            [arg] => Ok(arg.clone()),
            _ => Err(self.message(format!("{instruction} requires exactly one argument"))),
        }
    }

    /// ENV or LABEL (`name`): key-value pairs, none with a blank key.
    fn env_or_label(&self, name: &str, meta: Meta) -> Result<Instruction, ParseError> {
        self.flags(&[])?;
        let upper = name.to_uppercase();
        let Args::KeyValues(kvs) = &self.node.args else {
            return Err(self.message(format!("{upper} requires at least one argument")));
        };
        let mut pairs = Vec::new();
        for kv in kvs {
            if kv.key.is_empty() {
                return Err(self.message(format!("{upper} names can not be blank")));
            }
            pairs.push(KeyValue {
                key: kv.key.clone(),
                value: kv.value.clone(),
                legacy: !kv.equals,
            });
        }
        if pairs.is_empty() {
            return Err(self.message(format!("{upper} requires at least one argument")));
        }
        Ok(if name == "env" {
            Instruction::Env(Env { meta, pairs })
        } else {
            Instruction::Label(Label { meta, pairs })
        })
    }

    fn add(&self, meta: Meta, args: &[String]) -> Result<Instruction, ParseError> {
        if args.len() < 2 {
            return Err(self.message(no_destination("ADD")));
        }
        let flags = self.flags(ADD_FLAGS)?;
        let paths = self.sources_and_dest(args, "ADD")?;
        Ok(Instruction::Add(Add {
            meta,
            json: self.node.json,
            paths,
            chown: flags.string("chown"),
            chmod: flags.string("chmod"),
            link: flags.bool("link").unwrap_or(false),
            keep_git_dir: flags.bool("keep-git-dir"),
            checksum: flags.string("checksum"),
            unpack: flags.bool("unpack"),
            exclude: flags.strings("exclude"),
        }))
    }

    fn copy(&self, meta: Meta, args: &[String]) -> Result<Instruction, ParseError> {
        if args.len() < 2 {
            return Err(self.message(no_destination("COPY")));
        }
        let flags = self.flags(COPY_FLAGS)?;
        let paths = self.sources_and_dest(args, "COPY")?;
        Ok(Instruction::Copy(Copy {
            meta,
            json: self.node.json,
            paths,
            // `--from=` (empty) is the context, as BuildKit looks a source
            // up only `if c.From != ""`.
            from: flags.string("from").filter(|f| !f.is_empty()),
            chown: flags.string("chown"),
            chmod: flags.string("chmod"),
            link: flags.bool("link").unwrap_or(false),
            parents: flags.bool("parents").unwrap_or(false),
            exclude: flags.strings("exclude"),
        }))
    }

    /// ONBUILD and its trigger, which may be neither ONBUILD, MAINTAINER
    /// nor FROM.
    fn onbuild(&self, meta: Meta, args: &[String]) -> Result<Instruction, ParseError> {
        if args.is_empty() {
            return Err(self.message("ONBUILD requires at least one argument"));
        }
        self.flags(&[])?;
        let Args::Onbuild(child) = &self.node.args else {
            return Err(self.message("ONBUILD requires at least one argument"));
        };
        let trigger = child.keyword.trim().to_uppercase();
        match trigger.as_str() {
            "ONBUILD" => {
                return Err(self.error(
                    ErrorKind::Instruction(
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into(),
                    ),
                    // The trigger text starts at the second ONBUILD.
                    &child.original,
                ));
            }
            "MAINTAINER" | "FROM" => {
                return Err(self.error(
                    ErrorKind::Instruction(format!(
                        "{trigger} isn't allowed as an ONBUILD trigger"
                    )),
                    &child.keyword,
                ))
            }
            _ => {}
        }
        let inner = Ctx {
            node: child,
            loc: self.loc,
        };
        let parsed = inner.instruction()?;
        Ok(Instruction::Onbuild(Onbuild {
            meta,
            expression: onbuild_expression(self.node),
            trigger: Box::new(parsed),
        }))
    }

    /// RUN: its flags checked in BuildKit's order (devices, mounts,
    /// network, security), and its heredocs.
    fn run(&self, meta: Meta, args: &[String]) -> Result<Instruction, ParseError> {
        let flags = self.flags(RUN_FLAGS)?;
        let mut devices = Vec::new();
        for spec in flags.strings("device") {
            devices.push(
                crate::mount::parse_device(&spec)
                    .map_err(|e| self.error(ErrorKind::Instruction(e.to_string()), &spec))?,
            );
        }
        let mounts = flags.strings("mount");
        for spec in &mounts {
            crate::mount::check_mount_spec(spec)
                .map_err(|e| self.error(ErrorKind::Instruction(e.to_string()), spec))?;
        }
        let network = flags.string("network");
        if let Some(n) = &network {
            if !matches!(n.as_str(), "default" | "none" | "host") {
                return Err(self.error(
                    ErrorKind::Instruction(format!("invalid network mode {}", crate::go_quote(n))),
                    "--network",
                ));
            }
        }
        let security = flags.string("security");
        if let Some(s) = &security {
            if !matches!(s.as_str(), "sandbox" | "insecure") {
                return Err(self.error(
                    ErrorKind::Instruction(format!("security {} is not valid", crate::go_quote(s))),
                    "--security",
                ));
            }
        }
        let heredocs = self
            .node
            .heredocs
            .iter()
            .map(|h| InlineFile {
                name: h.name.clone(),
                data: h.content.clone(),
                chomp: h.chomp,
                expand: h.expand,
                file_descriptor: h.file_descriptor,
                line: h.span.start_line(),
            })
            .collect();
        Ok(Instruction::Run(Run {
            meta,
            command: self.command_line(args),
            heredocs,
            mounts,
            network,
            security,
            devices,
        }))
    }

    /// VOLUME: its paths, trimmed, none empty.
    fn volume(&self, meta: Meta, args: &[String]) -> Result<Instruction, ParseError> {
        if args.is_empty() {
            return Err(self.message("VOLUME requires at least one argument"));
        }
        self.flags(&[])?;
        let mut volumes = Vec::new();
        for v in args {
            let v = v.trim_matches(char::is_whitespace);
            if v.is_empty() {
                return Err(self.message("VOLUME specified can not be an empty string"));
            }
            volumes.push(v.to_string());
        }
        Ok(Instruction::Volume(Volume {
            meta,
            json: self.node.json,
            volumes,
        }))
    }

    /// ARG: each `NAME[=default]`, with the comment above that documents it.
    fn arg(&self, meta: Meta, args: &[String]) -> Result<Instruction, ParseError> {
        if args.is_empty() {
            return Err(self.message("ARG requires at least one argument"));
        }
        let mut defs = Vec::new();
        for arg in args {
            let (key, value) = match arg.split_once('=') {
                Some(("", _)) => return Err(self.message("ARG names can not be blank")),
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            let description = doc_comment(&self.node.comments, &key);
            defs.push(ArgDefinition {
                key,
                value,
                description,
            });
        }
        Ok(Instruction::Arg(Arg { meta, args: defs }))
    }

    /// SHELL, in JSON form only.
    fn shell(&self, meta: Meta, args: Vec<String>) -> Result<Instruction, ParseError> {
        self.flags(&[])?;
        if args.is_empty() {
            return Err(self.message("SHELL requires at least one argument"));
        }
        if !self.node.json {
            return Err(self.message(format!(
                "SHELL requires the arguments to be in JSON form (e.g. SHELL [\"executable\", \"parameter\"]), got: {}",
                self.node.original.trim()
            )));
        }
        Ok(Instruction::Shell(Shell { meta, shell: args }))
    }

    /// Shell form joins the arguments with spaces (it has one); exec form
    /// keeps the array.
    fn command_line(&self, args: &[String]) -> CommandLine {
        if self.node.json {
            CommandLine::Exec(args.to_vec())
        } else {
            CommandLine::Shell(args.join(" "))
        }
    }

    fn sources_and_dest(
        &self,
        args: &[String],
        instruction: &str,
    ) -> Result<SourcesAndDest, ParseError> {
        let (dest, sources) = match args.split_last() {
            Some(split) => split,
            None => return Err(self.message(no_destination(instruction))),
        };
        if matches!(parse_heredoc_word(dest), Ok(Some(_))) {
            return Err(self.error(
                ErrorKind::Instruction(format!(
                    "{instruction} cannot accept a heredoc as a destination"
                )),
                dest,
            ));
        }
        let mut paths = Vec::new();
        let mut inline_sources = Vec::new();
        for src in sources {
            match parse_heredoc_word(src) {
                Ok(Some(doc)) => {
                    let body = self
                        .node
                        .heredocs
                        .iter()
                        .rev()
                        .find(|h| h.name == doc.name)
                        .map(|h: &Heredoc| {
                            Heredoc {
                                chomp: doc.chomp,
                                ..h.clone()
                            }
                            .chomped_content()
                        })
                        .unwrap_or_default();
                    inline_sources.push(InlineSource {
                        name: doc.name,
                        data: body,
                        expand: doc.expand,
                    });
                }
                _ => paths.push(src.clone()),
            }
        }
        Ok(SourcesAndDest {
            sources: paths,
            inline_sources,
            dest: dest.clone(),
        })
    }

    fn healthcheck(&self, meta: Meta, args: &[String]) -> Result<Instruction, ParseError> {
        let Some((typ, rest)) = args.split_first() else {
            return Err(self.message("HEALTHCHECK requires at least one argument"));
        };
        let typ = typ.to_uppercase();
        if typ == "NONE" {
            if !rest.is_empty() {
                return Err(self.message("HEALTHCHECK NONE takes no arguments"));
            }
            return Ok(Instruction::Healthcheck(Healthcheck {
                meta,
                test: vec![typ],
                interval_ns: None,
                timeout_ns: None,
                start_period_ns: None,
                start_interval_ns: None,
                retries: None,
            }));
        }
        let flags = self.flags(HEALTHCHECK_FLAGS)?;
        if typ != "CMD" {
            return Err(self.message(format!(
                "Unknown type {} in HEALTHCHECK (try CMD)",
                crate::go_quote(&typ)
            )));
        }
        if rest.is_empty() {
            return Err(self.message("Missing command after HEALTHCHECK CMD"));
        }
        let test = if self.node.json {
            std::iter::once("CMD".to_string())
                .chain(rest.iter().cloned())
                .collect()
        } else {
            vec!["CMD-SHELL".to_string(), rest.join(" ")]
        };
        Ok(Instruction::Healthcheck(Healthcheck {
            meta,
            test,
            interval_ns: self.health_duration(&flags, "interval")?,
            timeout_ns: self.health_duration(&flags, "timeout")?,
            start_period_ns: self.health_duration(&flags, "start-period")?,
            start_interval_ns: self.health_duration(&flags, "start-interval")?,
            retries: self.health_retries(&flags)?,
        }))
    }

    /// A HEALTHCHECK duration flag in nanoseconds: `None` when not given,
    /// empty or zero; at least 1ms.
    fn health_duration(&self, flags: &Flags, name: &str) -> Result<Option<u64>, ParseError> {
        let Some(text) = flags.string(name) else {
            return Ok(None);
        };
        if text.is_empty() {
            return Ok(None);
        }
        let ns = parse_go_duration(&text)
            .map_err(|m| self.error(ErrorKind::Instruction(m), &format!("--{name}")))?;
        if ns == 0 {
            return Ok(None);
        }
        if ns < 1_000_000 {
            return Err(self.error(
                ErrorKind::Instruction(format!(
                    "Interval {} cannot be less than 1ms",
                    crate::go_quote(name)
                )),
                &format!("--{name}"),
            ));
        }
        Ok(Some(ns as u64))
    }

    /// HEALTHCHECK `--retries`: `None` when not given or empty; an int32
    /// that is not negative.
    fn health_retries(&self, flags: &Flags) -> Result<Option<u32>, ParseError> {
        let text = match flags.string("retries") {
            None => return Ok(None),
            Some(text) if text.is_empty() => return Ok(None),
            Some(text) => text,
        };
        let value = go_parse_int32(&text).map_err(|why| {
            self.error(
                ErrorKind::Instruction(format!(
                    "strconv.ParseInt: parsing {}: {why}",
                    crate::go_quote(&text)
                )),
                "--retries",
            )
        })?;
        if value < 0 {
            return Err(self.error(
                ErrorKind::Instruction(format!("--retries cannot be negative ({value})")),
                "--retries",
            ));
        }
        Ok(Some(value as u32))
    }
}

/// Go's `strconv.ParseInt(text, 10, 32)`, its error as Go words it: a
/// sign, then digits read one at a time, "invalid syntax" at the first
/// that is not one, "value out of range" as soon as the digits read pass
/// 2^32-1 (ParseUint's check, made before a later bad character is seen),
/// or when the whole does not fit an int32.
fn go_parse_int32(text: &str) -> Result<i32, &'static str> {
    const SYNTAX: &str = "invalid syntax";
    const RANGE: &str = "value out of range";
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'+') => (false, &text[1..]),
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() {
        return Err(SYNTAX);
    }
    let mut n: u64 = 0;
    for c in digits.bytes() {
        if !c.is_ascii_digit() {
            return Err(SYNTAX);
        }
        n = n * 10 + u64::from(c - b'0');
        if n > u64::from(u32::MAX) {
            return Err(RANGE);
        }
    }
    let value = if negative { -(n as i64) } else { n as i64 };
    i32::try_from(value).map_err(|_| RANGE)
}

fn no_destination(instruction: &str) -> String {
    format!("{instruction} requires at least two arguments, but only one was provided. Destination could not be determined")
}

/// BuildKit's stage-name rule: `^[a-z][a-z0-9-_.]*$` (after lower-casing).
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// `# NAME description` in the comments above an ARG or a FROM (a stage's
/// description, as `--call targets` lists it): the text after `NAME `.
pub fn doc_comment(comments: &[String], name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let prefix = format!("{name} ");
    comments
        .iter()
        .find_map(|c| c.strip_prefix(&prefix).map(str::to_string))
}

/// The ONBUILD trigger text: the logical line without `ONBUILD`, and each
/// heredoc body and delimiter appended, as BuildKit stores it.
fn onbuild_expression(node: &Node) -> String {
    let original = node.original.trim_start_matches(char::is_whitespace);
    let without_keyword = match original.get(..7) {
        Some(keyword) if keyword.eq_ignore_ascii_case("onbuild") => {
            original[7..].trim_start_matches(char::is_whitespace)
        }
        _ => original,
    };
    let mut out = without_keyword.to_string();
    for heredoc in &node.heredocs {
        out.push('\n');
        out.push_str(&heredoc.content);
        out.push_str(&heredoc.name);
    }
    out
}

/// Go's `time.ParseDuration`, in nanoseconds.
pub fn parse_go_duration(text: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {}", crate::go_quote(text));
    let mut s = text;
    let negative = match s.chars().next() {
        Some('-') => {
            s = &s[1..];
            true
        }
        Some('+') => {
            s = &s[1..];
            false
        }
        _ => false,
    };
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !s.is_empty() {
        let int_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            frac_part = &rest[..frac_len];
            s = &rest[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!(
                    "time: missing unit in duration {}",
                    crate::go_quote(text)
                ))
            }
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    crate::go_quote(unit),
                    crate::go_quote(text)
                ))
            }
        };
        let whole: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut value = whole.checked_mul(scale).ok_or_else(invalid)?;
        if !frac_part.is_empty() {
            let mut frac_scale = scale;
            for d in frac_part.chars().take(30) {
                frac_scale /= 10;
                value += i128::from(d.to_digit(10).unwrap_or(0) as u8) * frac_scale;
            }
        }
        total = total.checked_add(value).ok_or_else(invalid)?;
        if total > i128::from(i64::MAX) {
            return Err(invalid());
        }
    }
    Ok(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Go's `strconv.ParseInt(s, 10, 32)` answers, read off
    /// strconv/atoi.go: the range check goes digit by digit, before a
    /// later bad character is seen.
    #[test]
    fn int32_as_go_parses_it() {
        for (text, expected) in [
            ("5", Ok(5)),
            ("+5", Ok(5)),
            ("-0", Ok(0)),
            ("2147483647", Ok(i32::MAX)),
            ("-2147483648", Ok(i32::MIN)),
            ("2147483648", Err("value out of range")),
            ("-2147483649", Err("value out of range")),
            ("4294967296", Err("value out of range")),
            ("99999999999999999999999", Err("value out of range")),
            ("5000000000x", Err("value out of range")),
            ("-5000000000x", Err("value out of range")),
            ("3000000000x", Err("invalid syntax")),
            ("+", Err("invalid syntax")),
            ("-", Err("invalid syntax")),
            ("1_000", Err("invalid syntax")),
            (" 5", Err("invalid syntax")),
            ("5 ", Err("invalid syntax")),
            ("3x", Err("invalid syntax")),
        ] {
            assert_eq!(go_parse_int32(text), expected, "{text:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("5s"), Ok(5_000_000_000));
        assert_eq!(parse_go_duration("1m30.5s"), Ok(90_500_000_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(
            parse_go_duration("10"),
            Err("time: missing unit in duration \"10\"".into())
        );
        assert_eq!(
            parse_go_duration("3x"),
            Err("time: unknown unit \"x\" in duration \"3x\"".into())
        );
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn finds_stages_by_name_or_index() {
        let ast = crate::parse("FROM a AS Build\nFROM b\nFROM c AS x\n", "Dockerfile").unwrap();
        let df = from_ast(&ast).unwrap();
        assert_eq!(df.find_stage("build").map(|s| s.index), Some(0));
        assert_eq!(df.find_stage("BUILD").map(|s| s.index), Some(0));
        assert_eq!(df.find_stage("1").map(|s| s.base.as_str()), Some("b"));
        assert_eq!(df.find_stage("x").map(|s| s.index), Some(2));
        assert!(df.find_stage("3").is_none());
        assert!(df.find_stage("alpine:3").is_none());
        assert!(df.find_stage("").is_none());
    }

    #[test]
    fn stage_names() {
        assert!(valid_stage_name("build-1.x_y"));
        assert!(!valid_stage_name("1build"));
        assert!(!valid_stage_name("a/b"));
    }
}
