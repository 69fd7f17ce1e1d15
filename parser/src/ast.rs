//! The syntax tree: one [`Node`] per instruction, nothing expanded, with
//! what a linter needs (keyword as written, source text, flags as written,
//! exec form or not, comments, empty continuation lines).

use serde::Serialize;

use crate::quote::{go_quote, go_quote_list};

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Where something is in the Dockerfile: from `start` to `end` inclusive.
/// `end.column` is the column just after the last character of the end line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    pub start: Position,
    pub end: Position,
}

impl Span {
    pub fn start_line(&self) -> usize {
        self.start.line
    }

    pub fn end_line(&self) -> usize {
        self.end.line
    }
}

/// A parser directive (`# syntax=…`, `# escape=…`, `# check=…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directive {
    /// Lower-cased name: `syntax`, `escape` or `check`.
    pub name: String,
    /// The value, trimmed.
    pub value: String,
    /// The line it is on (a whole line).
    pub span: Span,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    /// The name given to [`crate::parse`], used in errors.
    pub file_name: String,
    /// Parser directives in the order written.
    pub directives: Vec<Directive>,
    /// The escape character in effect (`\` or `` ` ``).
    pub escape: char,
    /// The instructions in order.
    pub nodes: Vec<Node>,
    /// Problems that are not errors (BuildKit prints them as warnings).
    pub warnings: Vec<Warning>,
}

impl Dockerfile {
    /// The value of directive `name` (lower case), if present.
    pub fn directive(&self, name: &str) -> Option<&Directive> {
        self.directives.iter().find(|d| d.name == name)
    }
}

/// A parser warning, e.g. an empty continuation line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The lint rule it belongs to, e.g. `NoEmptyContinuation`.
    pub rule: String,
    pub message: String,
    /// The line BuildKit reports it at (the last line of the instruction).
    pub line: usize,
}

/// One instruction, as BuildKit's parser sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The instruction keyword exactly as written (`RUN`, `run`, `Run`).
    pub keyword: String,
    /// Flags before the arguments, quotes and escapes removed
    /// (`--mount=type=cache,target=/x`).
    pub flags: Vec<String>,
    pub args: Args,
    /// The arguments were a JSON array of strings (exec form).
    pub json: bool,
    /// Here-documents attached to the instruction, in order.
    pub heredocs: Vec<Heredoc>,
    /// The logical line: continuation lines joined, comments and empty
    /// continuation lines dropped, heredoc bodies not included.
    pub original: String,
    /// The argument text after keyword and flags, as the line parsers saw it.
    pub rest: String,
    /// The exact source text of the instruction (all of its physical lines,
    /// comments and heredoc bodies included, without the final newline).
    pub source: String,
    /// From the keyword to the end of the last line (heredoc terminator included).
    pub span: Span,
    /// Comment lines right before the instruction (text after `#`, trimmed).
    pub comments: Vec<String>,
    /// Lines (1-based) of empty continuation lines inside the instruction.
    pub empty_continuation_lines: Vec<usize>,
}

/// An instruction's arguments, shaped as BuildKit's line parsers shape them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Args {
    /// A list of strings (possibly empty). Shell form is one string.
    Words(Vec<String>),
    /// ENV and LABEL: key/value pairs.
    KeyValues(Vec<KeyValue>),
    /// ONBUILD: the trigger instruction.
    Onbuild(Box<Node>),
}

/// `key=value` (or the legacy `key value` form, `equals == false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// Written as `key=value` (true) or as the legacy `ENV key value` (false).
    pub equals: bool,
}

/// A here-document (`<<EOF` … `EOF`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The file descriptor written before `<<` (`3<<EOF`), 0 if none.
    pub file_descriptor: u64,
    /// Variables in the body are expanded (the delimiter was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from body lines (see
    /// [`Heredoc::chomped_content`]); the raw body is kept in `content`.
    pub chomp: bool,
    /// The body, each line with its original line ending.
    pub content: String,
    /// Body lines through the terminator line.
    pub span: Span,
}

impl Heredoc {
    /// The body with leading tabs removed from every line when `chomp` is set.
    pub fn chomped_content(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        let mut out = String::with_capacity(self.content.len());
        for line in self.content.split_inclusive('\n') {
            out.push_str(line.trim_start_matches('\t'));
        }
        out
    }
}

impl Node {
    /// The keyword in lower case, for matching.
    pub fn name(&self) -> String {
        self.keyword.to_lowercase()
    }

    /// The arguments as strings, as BuildKit's `nodeArgs` lists them (ENV
    /// and LABEL give key, value, separator triples; ONBUILD gives the
    /// trigger keyword then its arguments).
    pub fn arg_strings(&self) -> Vec<String> {
        match &self.args {
            Args::Words(words) => words.clone(),
            Args::KeyValues(pairs) => pairs
                .iter()
                .flat_map(|kv| {
                    [
                        kv.key.clone(),
                        kv.value.clone(),
                        if kv.equals {
                            "=".to_string()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect(),
            Args::Onbuild(child) => {
                let mut out = vec![child.keyword.clone()];
                out.extend(child.arg_strings());
                out
            }
        }
    }

    /// This node in BuildKit's AST dump format (without the parentheses).
    pub fn dump_buildkit(&self) -> String {
        let mut out = self.keyword.to_lowercase();
        if !self.flags.is_empty() {
            out.push(' ');
            out.push_str(&go_quote_list(&self.flags));
        }
        match &self.args {
            Args::Words(words) => {
                for w in words {
                    out.push(' ');
                    out.push_str(&go_quote(w));
                }
            }
            Args::KeyValues(pairs) => {
                for kv in pairs {
                    out.push(' ');
                    out.push_str(&go_quote(&kv.key));
                    out.push(' ');
                    out.push_str(&go_quote(&kv.value));
                    out.push(' ');
                    out.push_str(if kv.equals { "\"=\"" } else { "\"\"" });
                }
            }
            Args::Onbuild(child) => {
                out.push(' ');
                let inner = format!("({})\n", child.dump_buildkit());
                out.push_str(go_trim_space(&inner));
            }
        }
        go_trim_space(&out).to_string()
    }
}

/// BuildKit's AST dump of a whole file: one `(…)` line per instruction.
pub fn dump_buildkit(dockerfile: &Dockerfile) -> String {
    let mut out = String::new();
    for node in &dockerfile.nodes {
        out.push('(');
        out.push_str(&node.dump_buildkit());
        out.push_str(")\n");
    }
    let mut trimmed = go_trim_space(&out).to_string();
    trimmed.push('\n');
    trimmed
}

/// Go's `strings.TrimSpace` (Unicode white space).
pub(crate) fn go_trim_space(s: &str) -> &str {
    s.trim_matches(char::is_whitespace)
}
