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

impl Directive {
    /// For a `check` directive: its options (which lint rules to skip,
    /// whether warnings are errors), parsed as BuildKit parses them: its
    /// value up to the first space (`# check=skip=all // why` skips all).
    pub fn check_options(&self) -> Result<CheckOptions, CheckOptionsError> {
        CheckOptions::parse(self.value.split(' ').next().unwrap_or(""))
    }
}

/// The options of `# check=skip=Rule1,Rule2;error=true;experimental=all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckOptions {
    pub skip: Vec<String>,
    pub skip_all: bool,
    pub experimental: Vec<String>,
    pub experimental_all: bool,
    /// `error=true`: lint warnings fail the build.
    pub error: bool,
}

/// A `check` directive BuildKit would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CheckOptionsError(String);

impl CheckOptions {
    /// The options of the `check=…` comment among an instruction's
    /// comments (each without its `#`), as BuildKit's
    /// `WithMergedConfigFromComments` finds them: the first comment that is
    /// a `check` directive counts, by its first word, and none when that
    /// does not parse.
    pub fn of_comments<'a>(comments: impl IntoIterator<Item = &'a str>) -> Option<CheckOptions> {
        let value = comments.into_iter().find_map(|comment| {
            let (name, value) = crate::parser::match_directive(comment.trim_start())?;
            name.eq_ignore_ascii_case("check").then_some(value)
        })?;
        CheckOptions::parse(value.split(' ').next().unwrap_or("")).ok()
    }

    pub fn parse(value: &str) -> Result<Self, CheckOptionsError> {
        let mut options = CheckOptions::default();
        let value = value.trim();
        if value.is_empty() {
            return Ok(options);
        }
        let list = |v: &str| {
            v.split(',')
                .map(|r| r.trim().to_string())
                .collect::<Vec<_>>()
        };
        for part in value.splitn(3, ';') {
            let Some((key, v)) = part.split_once('=') else {
                return Err(CheckOptionsError(format!(
                    "invalid check option {}",
                    go_quote(part)
                )));
            };
            let v = v.trim();
            match key.trim() {
                "skip" if v == "all" => options.skip_all = true,
                "skip" => options.skip = list(v),
                "experimental" if v == "all" => options.experimental_all = true,
                "experimental" => options.experimental = list(v),
                "error" => {
                    options.error = match v {
                        "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                        "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                        _ => {
                            return Err(CheckOptionsError(format!(
                                "failed to parse check option {}: strconv.ParseBool: parsing {}: invalid syntax",
                                go_quote(part),
                                go_quote(v)
                            )))
                        }
                    }
                }
                other => {
                    return Err(CheckOptionsError(format!("invalid check option {}", go_quote(other))))
                }
            }
        }
        Ok(options)
    }
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

    /// Whether the keyword is written in neither all upper nor all lower
    /// case (what a `ConsistentInstructionCasing` lint looks at).
    pub fn keyword_is_mixed_case(&self) -> bool {
        self.keyword != self.keyword.to_lowercase() && self.keyword != self.keyword.to_uppercase()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_directive_is_its_first_word() {
        let ast =
            crate::parse("# check=skip=all // comment\nFROM scratch\n", "Dockerfile").unwrap();
        let options = ast.directive("check").unwrap().check_options().unwrap();
        assert!(options.skip_all);
        let ast = crate::parse("# check=skip=A, B\nFROM scratch\n", "Dockerfile").unwrap();
        let options = ast.directive("check").unwrap().check_options().unwrap();
        assert_eq!(options.skip, ["A", ""], "B is past the first space");
    }

    /// An instruction's `# check=` comment as BuildKit's
    /// WithMergedConfigFromComments finds it: the first `check` directive
    /// among the comments, spaces round `=` allowed, by its first word;
    /// none when that one does not parse (a later one is not tried).
    #[test]
    fn check_options_of_comments() {
        let of = |comments: &[&str]| CheckOptions::of_comments(comments.iter().copied());
        assert!(
            of(&["check = experimental=all // why"])
                .unwrap()
                .experimental_all
        );
        assert_eq!(of(&["a note", "check=skip=A"]).unwrap().skip, ["A"]);
        assert_eq!(of(&["check=bogus", "check=skip=all"]), None);
        assert_eq!(of(&["checks=skip=all"]), None);
        assert_eq!(of(&[]), None);
    }

    #[test]
    fn check_directive_options() {
        let o =
            CheckOptions::parse("skip=JSONArgsRecommended, StageNameCasing;error=true").unwrap();
        assert_eq!(o.skip, ["JSONArgsRecommended", "StageNameCasing"]);
        assert!(o.error && !o.skip_all);
        assert!(
            CheckOptions::parse("skip=all;experimental=all")
                .unwrap()
                .skip_all
        );
        assert_eq!(CheckOptions::parse("").unwrap(), CheckOptions::default());
        assert_eq!(
            CheckOptions::parse("error=maybe").unwrap_err().to_string(),
            "failed to parse check option \"error=maybe\": strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
        assert_eq!(
            CheckOptions::parse("nope").unwrap_err().to_string(),
            "invalid check option \"nope\""
        );
        assert_eq!(
            CheckOptions::parse("foo=1").unwrap_err().to_string(),
            "invalid check option \"foo\""
        );
    }

    #[test]
    fn chomp_strips_leading_tabs_per_line() {
        let doc = Heredoc {
            name: "EOF".into(),
            file_descriptor: 0,
            expand: true,
            chomp: true,
            content: "\t\ta\n\tb\tc\nd\n".into(),
            span: Span {
                start: Position { line: 1, column: 1 },
                end: Position { line: 1, column: 1 },
            },
        };
        assert_eq!(doc.chomped_content(), "a\nb\tc\nd\n");
    }
}
