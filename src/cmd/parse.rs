//! `kiln parse` and `kiln debug`: the parser's views of a Dockerfile.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use crate::settings::{GlobalSettings, Reads};

#[derive(Debug, Subcommand)]
pub enum ParseCommand {
    /// Parse a Dockerfile and print its syntax tree.
    Parse {
        /// `buildkit`: BuildKit's AST dump; `json`: kiln's typed instructions
        /// with their locations.
        #[arg(long, value_enum, default_value_t = ParseFormat::Json)]
        format: ParseFormat,
        /// The Dockerfile (`-` for standard input).
        #[arg(value_name = "FILE|-", default_value = "Dockerfile")]
        file: PathBuf,
    },
    /// Tools for looking inside kiln's front end.
    #[command(subcommand)]
    Debug(DebugCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ParseFormat {
    Buildkit,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Expand one word as a Dockerfile instruction would (BuildKit's rules).
    Expand {
        /// A variable for the expansion (repeatable); `K` alone is set to "".
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Print the words after splitting, one per line.
        #[arg(long)]
        words: bool,
        /// Use `` ` `` as the escape character instead of `\`.
        #[arg(long, default_value_t = '\\')]
        escape: char,
        /// The word to expand (put it after `--`).
        #[arg(value_name = "WORD", allow_hyphen_values = true)]
        word: String,
    },
}

impl ParseCommand {
    /// The global settings this command reads (see [`Reads`]).
    pub fn reads(&self) -> Reads {
        Reads::NOTHING
    }

    pub fn run(self, _settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        match self {
            ParseCommand::Parse { format, file } => parse(format, &file),
            ParseCommand::Debug(DebugCommand::Expand {
                env,
                words,
                escape,
                word,
            }) => expand(&env, words, escape, &word),
        }
    }
}

fn parse(format: ParseFormat, file: &Path) -> anyhow::Result<ExitCode> {
    let source = DockerfileSource::read(file)?;
    Ok(emit(render_parse(format, &source.bytes, &source.name)?))
}

/// A Dockerfile as every command reads it (build, check, explain, parse).
pub(crate) struct DockerfileSource {
    /// The raw bytes (BuildKit's "transferring dockerfile" counts these).
    pub bytes: Vec<u8>,
    /// The name errors and warnings show: the path as given (without a
    /// leading `./`), or `-` for standard input.
    pub name: String,
}

impl DockerfileSource {
    /// Reads `path`, or standard input for `-`.
    pub fn read(path: &Path) -> anyhow::Result<DockerfileSource> {
        if path.as_os_str() == "-" {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the Dockerfile from standard input")?;
            return Ok(DockerfileSource {
                bytes,
                name: "-".to_string(),
            });
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let shown = path.strip_prefix(".").unwrap_or(path);
        Ok(DockerfileSource {
            bytes,
            name: shown.display().to_string(),
        })
    }

    /// `file` (a relative one from the current directory, as the docker
    /// CLI resolves `-f`), else the context's `Dockerfile`, `dockerfile`
    /// (the docker CLI's fallback) or `Containerfile` (buildah's and
    /// podman's name), the first that exists.
    pub fn read_or_default(
        file: Option<&Path>,
        context: &Path,
    ) -> anyhow::Result<DockerfileSource> {
        if let Some(file) = file {
            return DockerfileSource::read(file);
        }
        let found = kiln_builder::contexts::DOCKERFILE_NAMES
            .iter()
            .map(|name| context.join(name))
            .find(|path| path.is_file());
        match found {
            Some(path) => DockerfileSource::read(&path),
            None => anyhow::bail!(
                "no Dockerfile (or Containerfile) in {}: give one with -f",
                context.display()
            ),
        }
    }

    /// The text as [`kiln_parser::parse_bytes`] sees it: a byte-order mark
    /// dropped, invalid UTF-8 as U+FFFD.
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        text.strip_prefix('\u{feff}').unwrap_or(&text).to_string()
    }

    /// The syntax tree; errors name the file, line and column.
    pub fn parse(&self) -> Result<kiln_parser::ast::Dockerfile, kiln_parser::ParseError> {
        kiln_parser::parse_bytes(&self.bytes, &self.name)
    }
}

fn expand(env: &[String], words: bool, escape: char, word: &str) -> anyhow::Result<ExitCode> {
    Ok(emit(render_expand(env, words, escape, word)?))
}

/// What a command prints: standard output, standard error lines, success.
#[derive(Debug)]
struct Output {
    stdout: String,
    stderr: Vec<String>,
    success: bool,
}

fn emit(output: Output) -> ExitCode {
    print!("{}", output.stdout);
    for line in &output.stderr {
        eprintln!("{line}");
    }
    if output.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn render_parse(format: ParseFormat, bytes: &[u8], name: &str) -> anyhow::Result<Output> {
    let failure = |err: &dyn std::fmt::Display| Output {
        stdout: String::new(),
        stderr: vec![format!("error: {err}")],
        success: false,
    };
    let dockerfile = match kiln_parser::parse_bytes(bytes, name) {
        Ok(df) => df,
        Err(err) => return Ok(failure(&err)),
    };
    let stderr: Vec<String> = dockerfile
        .warnings
        .iter()
        .map(|w| format!("warning: {}:{}: {}", name, w.line, w.message))
        .collect();
    let stdout = match format {
        ParseFormat::Buildkit => kiln_parser::dump_buildkit(&dockerfile),
        ParseFormat::Json => match kiln_parser::instructions::from_ast(&dockerfile) {
            Ok(typed) => serde_json::to_string_pretty(&typed)? + "\n",
            Err(err) => return Ok(failure(&err)),
        },
    };
    Ok(Output {
        stdout,
        stderr,
        success: true,
    })
}

fn render_expand(env: &[String], words: bool, escape: char, word: &str) -> anyhow::Result<Output> {
    anyhow::ensure!(
        escape == '\\' || escape == '`',
        "the escape character must be \\ or `"
    );
    // `K=V`; a bare `K` is set to the empty string (as BuildKit reads env lists).
    let env: Vec<(String, String)> = env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    Ok(match kiln_parser::expand::expand_word(word, &env, escape) {
        Ok(expansion) => {
            let stdout = if words {
                expansion.words.iter().map(|w| format!("{w}\n")).collect()
            } else {
                format!("{}\n", expansion.value)
            };
            Output {
                stdout,
                stderr: Vec::new(),
                success: true,
            }
        }
        Err(err) => Output {
            stdout: String::new(),
            stderr: vec![format!("error: {err}")],
            success: false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_source_drops_the_bom_and_keeps_invalid_utf8_as_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Dockerfile");
        std::fs::write(&path, b"\xef\xbb\xbfFROM scratch\nLABEL a=\xff\n").unwrap();
        let source = DockerfileSource::read_or_default(None, dir.path()).unwrap();
        assert_eq!(source.text(), "FROM scratch\nLABEL a=\u{fffd}\n");
        assert_eq!(source.parse().unwrap().nodes.len(), 2);
        let missing = DockerfileSource::read(&dir.path().join("nope"))
            .err()
            .unwrap();
        assert!(format!("{missing:#}").contains("nope"), "{missing:#}");
    }

    #[test]
    fn parse_prints_buildkit_dump_and_warnings() {
        let out = render_parse(
            ParseFormat::Buildkit,
            b"FROM a\nRUN x \\\n\n y\n",
            "Dockerfile",
        )
        .unwrap();
        assert!(out.success);
        assert_eq!(out.stdout, "(from \"a\")\n(run \"x  y\")\n");
        assert_eq!(
            out.stderr,
            ["warning: Dockerfile:4: Empty continuation line found in: RUN x  y"]
        );
    }

    #[test]
    fn parse_prints_typed_json() {
        let out = render_parse(
            ParseFormat::Json,
            b"FROM a AS b\nCMD [\"x\"]\n",
            "Dockerfile",
        )
        .unwrap();
        assert!(out.success);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(json["stages"][0]["name"], "b");
        assert_eq!(
            json["stages"][0]["instructions"][0]["command"]["form"],
            "exec"
        );
    }

    #[test]
    fn parse_errors_are_located_and_fail() {
        let out = render_parse(ParseFormat::Buildkit, b"FROM a\nENV PATH\n", "df").unwrap();
        assert!(!out.success);
        assert_eq!(
            out.stderr[0],
            "error: df:2:5: ENV must have two arguments\n 2 | ENV PATH\n   |     ^^^^"
        );
        // A file BuildKit parses but whose instructions are wrong: only json fails.
        let src = b"FROM a\nRNU x\n";
        assert!(
            render_parse(ParseFormat::Buildkit, src, "df")
                .unwrap()
                .success
        );
        let out = render_parse(ParseFormat::Json, src, "df").unwrap();
        assert!(!out.success);
        assert!(out.stderr[0].contains("unknown instruction: RNU (did you mean RUN?)"));
    }

    #[test]
    fn expand_prints_value_or_words() {
        let env = ["A=1 2".to_string(), "EMPTY".to_string()];
        let out = render_expand(&env, false, '\\', "x${A}y${EMPTY:-z}").unwrap();
        assert_eq!((out.stdout.as_str(), out.success), ("x1 2yz\n", true));
        let out = render_expand(&env, true, '\\', "$A '3 4'").unwrap();
        assert_eq!(out.stdout, "1\n2\n3 4\n");
        let out = render_expand(&env, false, '\\', "${B?required}").unwrap();
        assert!(!out.success);
        assert_eq!(
            out.stderr,
            ["error: failed to process \"${B?required}\": B: required"]
        );
        assert!(render_expand(&env, false, 'x', "a").is_err());
    }

    /// `--escape '`'` (the `# escape=` directive's other choice): the
    /// backtick escapes, the backslash is a plain character.
    #[test]
    fn expand_takes_the_backtick_as_the_escape() {
        let env = ["A=1".to_string()];
        let out = render_expand(&env, false, '\\', "\\$A`$A").unwrap();
        assert_eq!(out.stdout, "$A`1\n");
        let out = render_expand(&env, false, '`', "\\$A`$A").unwrap();
        assert_eq!(out.stdout, "\\1$A\n");
        let out = render_expand(&env, true, '`', "a` b c").unwrap();
        assert_eq!(out.stdout, "a b\nc\n");
    }
}
