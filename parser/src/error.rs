//! Located parse errors: `file:line:column: message`, the source line and a
//! caret under the offending text.

use std::fmt;

use crate::display::{escape_control, escaped_width};
use crate::expand::ExpandError;
use crate::quote::go_quote;

/// What went wrong. Messages follow BuildKit's wording where BuildKit has
/// one, so users can search for them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("file with no instructions")]
    NoInstructions,
    #[error("invalid escape token '{0}' does not match ` or \\")]
    InvalidEscapeToken(String),
    #[error("only one {0} parser directive can be used")]
    DuplicateDirective(String),
    #[error("{0} must have two arguments")]
    MissingValue(String),
    #[error("Syntax error - can't find = in {}. Must be of the form: name=value", go_quote(.0))]
    MissingEquals(String),
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    NotStringArray,
    #[error("unterminated heredoc")]
    UnterminatedHeredoc,
    #[error("{0}")]
    HeredocWord(ExpandError),
    #[error("internal lexing of heredoc produced inconsistent results: {0}")]
    InconsistentHeredoc(String),
    #[error("unknown instruction: {instruction}{}", suggestion_suffix(.suggestion))]
    UnknownInstruction {
        instruction: String,
        suggestion: Option<String>,
    },
    #[error("unknown flag: {flag}{}", suggestion_suffix(.suggestion))]
    UnknownFlag {
        flag: String,
        suggestion: Option<String>,
    },
    #[error("arg should start with -- : {0}")]
    FlagWithoutDashes(String),
    #[error("duplicate flag specified: {0}")]
    DuplicateFlag(String),
    #[error("missing a value on flag: {0}")]
    MissingFlagValue(String),
    #[error("expecting boolean value for flag {flag}, not: {value}")]
    NotBoolean { flag: String, value: String },
    /// Any other rule of an instruction (argument counts and the like).
    #[error("{0}")]
    Instruction(String),
}

fn suggestion_suffix(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean {s}?)"),
        None => String::new(),
    }
}

/// A parse error with its location in the Dockerfile.
///
/// `Display` gives `file:line:column: message`, then the source line and a
/// caret (as long as the offending text) under it. The details are boxed so
/// `Result<_, ParseError>` stays small.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError(Box<Details>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Details {
    file: String,
    line: usize,
    column: usize,
    end_line: usize,
    source_line: Option<String>,
    width: usize,
    kind: ErrorKind,
}

impl ParseError {
    /// The file name given to [`crate::parse`].
    pub fn file(&self) -> &str {
        &self.0.file
    }

    /// 1-based line where the problem is.
    pub fn line(&self) -> usize {
        self.0.line
    }

    /// 1-based column (in characters) on that line.
    pub fn column(&self) -> usize {
        self.0.column
    }

    /// Last line of the instruction concerned (equal to `line()` for one line).
    pub fn end_line(&self) -> usize {
        self.0.end_line
    }

    /// The text of `line()` without its newline, if the file has that line.
    pub fn source_line(&self) -> Option<&str> {
        self.0.source_line.as_deref()
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.0;
        // Dockerfile text is echoed with its control characters escaped
        // (`\x1b`): an escape sequence must not reach the terminal.
        let message = d.kind.to_string();
        write!(
            f,
            "{}:{}:{}: {}",
            escape_control(&d.file),
            d.line,
            d.column,
            escape_control(&message)
        )?;
        if let Some(source) = d.source_line.as_ref().filter(|s| !s.trim().is_empty()) {
            let number = d.line.to_string();
            let pad = " ".repeat(number.len());
            // Tabs stay tabs so the caret lines up in a terminal; an
            // escaped character is as wide as its escape.
            let before = d.column.saturating_sub(1);
            let lead: String = source
                .chars()
                .take(before)
                .map(|c| match c {
                    '\t' => "\t".to_string(),
                    c => " ".repeat(escaped_width(c)),
                })
                .collect();
            let under: usize = source
                .chars()
                .skip(before)
                .take(d.width.max(1))
                .map(escaped_width)
                .sum();
            write!(
                f,
                "\n {number} | {}\n {pad} | {lead}{}",
                escape_control(source),
                "^".repeat(under.max(d.width.max(1)).max(1))
            )?;
        }
        Ok(())
    }
}

/// Builds errors for one source text.
pub(crate) struct Locator<'a> {
    pub file: &'a str,
    pub source: &'a str,
    /// Byte offset where each line starts.
    pub line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    pub fn new(file: &'a str, source: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Locator {
            file,
            source,
            line_starts,
        }
    }

    /// The text of 1-based `line` without its line ending.
    pub fn line_text(&self, line: usize) -> Option<&'a str> {
        let start = *self.line_starts.get(line.checked_sub(1)?)?;
        if start >= self.source.len() && line > 1 {
            return None;
        }
        let end = self
            .line_starts
            .get(line)
            .map(|e| e - 1)
            .unwrap_or(self.source.len());
        Some(self.source[start..end].trim_end_matches(['\r', '\n']))
    }

    pub fn error(
        &self,
        kind: ErrorKind,
        line: usize,
        column: usize,
        end_line: usize,
        width: usize,
    ) -> ParseError {
        let line = line.max(1);
        ParseError(Box::new(Details {
            file: self.file.to_string(),
            line,
            column: column.max(1),
            end_line: end_line.max(line),
            source_line: self.line_text(line).map(str::to_string),
            width,
            kind,
        }))
    }

    /// An error pointing at `needle` in lines `start..=end` (first
    /// occurrence), or at the instruction's first non-blank character.
    pub fn error_at_text(
        &self,
        kind: ErrorKind,
        start: usize,
        end: usize,
        needle: &str,
    ) -> ParseError {
        if !needle.is_empty() {
            for line in start..=end {
                if let Some(text) = self.line_text(line) {
                    if let Some(idx) = text.find(needle) {
                        let column = text[..idx].chars().count() + 1;
                        return self.error(kind, line, column, end, needle.chars().count());
                    }
                }
            }
        }
        let (column, width) = self
            .line_text(start)
            .map(first_word_column)
            .unwrap_or((1, 1));
        self.error(kind, start, column, end, width)
    }
}

/// Column and width of the first word of a line.
pub(crate) fn first_word_column(text: &str) -> (usize, usize) {
    let lead = text.chars().take_while(|c| c.is_whitespace()).count();
    let width = text
        .chars()
        .skip(lead)
        .take_while(|c| !c.is_whitespace())
        .count();
    (lead + 1, width.max(1))
}
