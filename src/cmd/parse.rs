//! `kiln parse` and `kiln debug`: the parser's views of a Dockerfile.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use crate::settings::GlobalSettings;

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

fn parse(format: ParseFormat, file: &PathBuf) -> anyhow::Result<ExitCode> {
    let (bytes, name) = if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the Dockerfile from standard input")?;
        (buf, "-".to_string())
    } else {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        (bytes, file.display().to_string())
    };
    let dockerfile = match kiln_parser::parse_bytes(&bytes, &name) {
        Ok(df) => df,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for warning in &dockerfile.warnings {
        eprintln!("warning: {}:{}: {}", name, warning.line, warning.message);
    }
    match format {
        ParseFormat::Buildkit => print!("{}", kiln_parser::dump_buildkit(&dockerfile)),
        ParseFormat::Json => {
            let typed = match kiln_parser::instructions::from_ast(&dockerfile) {
                Ok(typed) => typed,
                Err(err) => {
                    eprintln!("error: {err}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            println!("{}", serde_json::to_string_pretty(&typed)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn expand(env: &[String], words: bool, escape: char, word: &str) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        escape == '\\' || escape == '`',
        "the escape character must be \\ or `"
    );
    let env: Vec<(String, String)> = env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    match kiln_parser::expand::expand_word(word, &env, escape) {
        Ok(expansion) => {
            if words {
                for w in &expansion.words {
                    println!("{w}");
                }
            } else {
                println!("{}", expansion.value);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("error: {err}");
            Ok(ExitCode::FAILURE)
        }
    }
}
