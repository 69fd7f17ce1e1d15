//! Source text → [`Dockerfile`] AST, following BuildKit's
//! `frontend/dockerfile/parser` rules line for line.
//!
//! Every step is linear in the input: physical lines are visited once,
//! continuation lines are appended to one buffer, and heredoc bodies are
//! copied once.

use crate::ast::{
    go_trim_space, Args, Directive, Dockerfile, Heredoc, KeyValue, Node, Position, Span, Warning,
};
use crate::error::{ErrorKind, Locator, ParseError};
use crate::expand::{ExpandError, Lexer};
use crate::json::{parse_string_array, JsonArray};

const DEFAULT_ESCAPE: char = '\\';

/// Splits text into lines that keep their `\n` (BuildKit's scanner keeps
/// line endings so heredoc bodies are exact).
struct Lines<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Lines<'a> {
    /// Returns (byte offset, line with its ending).
    fn next_line(&mut self) -> Option<(usize, &'a str)> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start = self.pos;
        let end = match self.text[start..].find('\n') {
            Some(i) => start + i + 1,
            None => self.text.len(),
        };
        self.pos = end;
        Some((start, &self.text[start..end]))
    }
}

/// Go's `unicode.IsSpace`.
fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// Go's `unicode.IsSpace` applied to single bytes, as BuildKit's flag and
/// HEALTHCHECK scanners do: on text this means ASCII white space only (a
/// non-ASCII character never separates there).
fn is_byte_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// BuildKit's `reWhitespace`: `[\t\v\f\r ]`.
fn is_split_space(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn trim_leading_whitespace(s: &str) -> &str {
    s.trim_start_matches(is_space)
}

fn is_comment(line: &str) -> bool {
    trim_leading_whitespace(line).starts_with('#')
}

fn is_empty_continuation_line(line: &str) -> bool {
    trim_leading_whitespace(trim_newline(line)).is_empty()
}

/// Removes a trailing escape character (and spaces/tabs after it) that
/// continues the line. An escape preceded by another escape does not
/// continue the line. Returns the text and whether the line ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    let Some(before) = trimmed.strip_suffix(escape) else {
        return (line, true);
    };
    if before.is_empty() {
        return ("", false);
    }
    if before.ends_with(escape) {
        return (line, true);
    }
    (before, false)
}

/// BuildKit's `reWhitespace.Split(s, n)` for n = 2.
fn split_ws_once(s: &str) -> (&str, Option<&str>) {
    match s.find(is_split_space) {
        Some(i) => {
            let rest = s[i..].trim_start_matches(is_split_space);
            (&s[..i], Some(rest))
        }
        None => (s, None),
    }
}

/// The parser-directive state: directives are recognised only on the first
/// lines, while every line so far has been a directive.
struct Directives {
    done: bool,
    escape: char,
    found: Vec<Directive>,
    /// The first line was a `#!` line: the parser reads no directive after
    /// it (an `escape` there is a comment), but BuildKit's `ParseDirective`
    /// and `DetectSyntax`, which skip such a line, still read `syntax` and
    /// `check` from the lines after it while they are directives (and no
    /// key repeats: its `ParseAll` stops there).
    after_shebang: bool,
    /// The directive keys seen after the `#!` line.
    after_shebang_keys: Vec<String>,
}

impl Directives {
    /// Looks at a line (`line`: newline and leading space trimmed; `raw`:
    /// the newline only, as BuildKit's `ParseDirective` reads it). Returns
    /// whether it was a directive.
    fn parse_line(
        &mut self,
        line: &str,
        raw: &str,
        line_no: usize,
        loc: &Locator,
    ) -> Result<bool, ParseError> {
        if line_no == 1 && raw.starts_with("#!") {
            self.done = true;
            self.after_shebang = true;
            return Ok(false);
        }
        if self.done {
            if self.after_shebang {
                self.after_shebang = self.directive_after_shebang(raw, line_no, loc);
            }
            return Ok(false);
        }
        let Some(body) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(false);
        };
        let body = body.trim_start_matches(is_space);
        let Some((name, value)) = match_directive(body) else {
            self.done = true;
            return Ok(false);
        };
        let key = name.to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(false);
        }
        let line_text = loc.line_text(line_no).unwrap_or("");
        let column = line_text
            .find(value)
            .map_or(1, |i| line_text[..i].chars().count() + 1);
        if self.found.iter().any(|d| d.name == key) {
            let name_column = line_text
                .find(name)
                .map_or(1, |i| line_text[..i].chars().count() + 1);
            return Err(loc.error(
                ErrorKind::DuplicateDirective(key),
                line_no,
                name_column,
                line_no,
                name.chars().count(),
            ));
        }
        if key == "escape" {
            let mut chars = value.chars();
            match (chars.next(), chars.next()) {
                (Some(c @ ('\\' | '`')), None) => self.escape = c,
                _ => {
                    return Err(loc.error(
                        ErrorKind::InvalidEscapeToken(value.to_string()),
                        line_no,
                        column,
                        line_no,
                        value.chars().count(),
                    ))
                }
            }
        }
        self.record(key, value, line_no, loc);
        Ok(true)
    }

    /// Records directive `key` = `value`, spanning its whole line.
    fn record(&mut self, key: String, value: &str, line_no: usize, loc: &Locator) {
        let end_column = loc.line_text(line_no).unwrap_or("").chars().count() + 1;
        self.found.push(Directive {
            name: key,
            value: value.to_string(),
            span: Span {
                start: Position {
                    line: line_no,
                    column: 1,
                },
                end: Position {
                    line: line_no,
                    column: end_column,
                },
            },
        });
    }

    /// A line after a `#!` first line, as read (see
    /// [`Directives::after_shebang`]): a `syntax` or `check` directive is
    /// recorded (the line stays a comment to the parser, as in BuildKit);
    /// returns whether the next line is to be looked at too: not after a
    /// line that is no directive, or a key seen already.
    fn directive_after_shebang(&mut self, raw: &str, line_no: usize, loc: &Locator) -> bool {
        let Some(body) = raw.strip_prefix('#') else {
            return false;
        };
        let Some((name, value)) = match_directive(body.trim_start_matches(is_space)) else {
            return false;
        };
        let key = name.to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check")
            || self.after_shebang_keys.contains(&key)
        {
            return false;
        }
        self.after_shebang_keys.push(key.clone());
        if key != "escape" {
            self.record(key, value, line_no, loc);
        }
        true
    }
}

/// BuildKit's directive regex `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`.
pub(crate) fn match_directive(body: &str) -> Option<(&str, &str)> {
    let is_re_space = |c: char| matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ');
    let mut chars = body.char_indices();
    let (_, first) = chars.next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let name_end = body
        .char_indices()
        .find(|(_, c)| !c.is_ascii_alphanumeric())
        .map_or(body.len(), |(i, _)| i);
    let name = &body[..name_end];
    let after_name = body[name_end..].trim_start_matches(is_re_space);
    let after_eq = after_name.strip_prefix('=')?;
    let value_start = after_eq.trim_start_matches(is_re_space);
    if value_start.is_empty() {
        // `\s*` gives back its last character so `.+?` can match one.
        let last = after_eq.chars().last()?;
        return Some((name, &after_eq[after_eq.len() - last.len_utf8()..]));
    }
    Some((name, value_start.trim_end_matches(is_re_space)))
}

/// Parses a Dockerfile. `file_name` is used in error messages only.
pub fn parse(source: &str, file_name: &str) -> Result<Dockerfile, ParseError> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let loc = Locator::new(file_name, source);
    let mut reader = Reader {
        source,
        loc: &loc,
        lines: Lines {
            text: source,
            pos: 0,
        },
        directives: Directives {
            done: false,
            escape: DEFAULT_ESCAPE,
            found: Vec::new(),
            after_shebang: false,
            after_shebang_keys: Vec::new(),
        },
        current_line: 0,
        comments: Vec::new(),
        warnings: Vec::new(),
        buf: String::new(),
    };
    let mut nodes = Vec::new();
    while let Some(node) = reader.next_node()? {
        nodes.push(node);
    }
    if nodes.is_empty() {
        let line = reader.current_line.max(1);
        return Err(loc.error(ErrorKind::NoInstructions, line, 1, line, 1));
    }
    Ok(Dockerfile {
        file_name: file_name.to_string(),
        directives: reader.directives.found,
        escape: reader.directives.escape,
        nodes,
        warnings: reader.warnings,
    })
}

/// A parse under way: where it is in the source, and what it gathered for
/// the next instruction.
struct Reader<'a> {
    source: &'a str,
    loc: &'a Locator<'a>,
    lines: Lines<'a>,
    directives: Directives,
    /// The number of the last line read.
    current_line: usize,
    /// The comments since the last instruction (an empty comment forgets
    /// those before it).
    comments: Vec<String>,
    warnings: Vec<Warning>,
    /// The logical line being read, kept from one instruction to the next.
    buf: String,
}

impl Reader<'_> {
    /// The next instruction, blank lines, comments and directives before it
    /// skipped; `None` at the end of the source.
    fn next_node(&mut self) -> Result<Option<Node>, ParseError> {
        while let Some((start_offset, raw)) = self.lines.next_line() {
            if is_comment(raw) {
                self.note_comment(raw);
            }
            let unterminated = trim_newline(raw);
            let processed = trim_leading_whitespace(unterminated);
            if self.directives.parse_line(
                processed,
                unterminated,
                self.current_line + 1,
                self.loc,
            )? {
                self.comments.pop();
            }
            let processed = if is_comment(processed) { "" } else { processed };
            self.current_line += 1;
            let (text, end_of_line) = trim_continuation(processed, self.directives.escape);
            if end_of_line && text.is_empty() {
                continue;
            }
            let mut line = std::mem::take(&mut self.buf);
            line.clear();
            line.push_str(text);
            let node = self.node(&mut line, start_offset, end_of_line);
            self.buf = line;
            return node.map(Some);
        }
        Ok(None)
    }

    /// A comment line: kept for the next instruction, or, when empty,
    /// forgetting those before it.
    fn note_comment(&mut self, raw: &str) {
        let mut chars = raw.chars();
        chars.next();
        let comment = go_trim_space(chars.as_str());
        if comment.is_empty() {
            self.comments.clear();
        } else {
            self.comments.push(comment.to_string());
        }
    }

    /// The instruction whose first line (at byte `start_offset`, the
    /// current line) left `line`: its continuation lines appended (none
    /// when `end_of_line`), then its node, heredocs, source text, span and
    /// comments.
    fn node(
        &mut self,
        line: &mut String,
        start_offset: usize,
        end_of_line: bool,
    ) -> Result<Node, ParseError> {
        let start_line = self.current_line;
        let empty_continuation_lines = self.continue_line(line, end_of_line)?;
        let line = line.as_str();
        if !empty_continuation_lines.is_empty() {
            self.warnings.push(Warning {
                rule: "NoEmptyContinuation".to_string(),
                message: format!("Empty continuation line found in: {line}"),
                line: self.current_line,
            });
        }
        let first_line_text = self.loc.line_text(start_line).unwrap_or("");
        let keyword_column = first_line_text.chars().take_while(|c| is_space(*c)).count() + 1;
        let mut node =
            new_node_from_line(line, self.directives.escape).map_err(|(kind, needle)| {
                self.loc
                    .error_at_text(kind, start_line, self.current_line, &needle)
            })?;
        let heredocs = if can_contain_heredoc(&node) && line.contains("<<") {
            self.heredocs(line, start_line, keyword_column)?
        } else {
            Vec::new()
        };

        let end_offset = self.lines.pos;
        let source_text = trim_newline_once(&self.source[start_offset..end_offset]).to_string();
        let span = Span {
            start: Position {
                line: start_line,
                column: keyword_column,
            },
            end: Position {
                line: self.current_line,
                column: self.end_column(),
            },
        };
        node.heredocs = heredocs;
        node.source = source_text;
        node.span = span;
        node.comments = std::mem::take(&mut self.comments);
        node.empty_continuation_lines = empty_continuation_lines;
        if let Args::Onbuild(child) = &mut node.args {
            child.span = span;
            child.source = node.source.clone();
            // BuildKit attaches heredocs to the ONBUILD node; the trigger
            // gets a copy so it is complete on its own.
            child.heredocs = node.heredocs.clone();
        }
        Ok(node)
    }

    /// The column just past the end of the current line.
    fn end_column(&self) -> usize {
        self.loc
            .line_text(self.current_line)
            .map_or(1, |t| t.chars().count() + 1)
    }

    /// Appends an instruction's continuation lines to `line` until one
    /// ends it (none when `end_of_line`), skipping comments and empty
    /// lines; returns the numbers of the empty ones.
    fn continue_line(
        &mut self,
        line: &mut String,
        mut end_of_line: bool,
    ) -> Result<Vec<usize>, ParseError> {
        let mut empty_continuation_lines = Vec::new();
        while !end_of_line {
            let Some((_, raw)) = self.lines.next_line() else {
                break;
            };
            let processed = trim_newline(raw);
            self.directives
                .parse_line(processed, processed, self.current_line + 1, self.loc)?;
            self.current_line += 1;
            if is_comment(raw) {
                continue;
            }
            if is_empty_continuation_line(processed) {
                empty_continuation_lines.push(self.current_line);
                continue;
            }
            let (text, eol) = trim_continuation(processed, self.directives.escape);
            end_of_line = eol;
            line.push_str(text);
        }
        Ok(empty_continuation_lines)
    }

    /// The heredocs `line` (an instruction starting on `start_line`)
    /// opens, each body read from the lines that follow up to its
    /// terminator.
    fn heredocs(
        &mut self,
        line: &str,
        start_line: usize,
        keyword_column: usize,
    ) -> Result<Vec<Heredoc>, ParseError> {
        let words = heredocs_from_line(line).map_err(|(kind, needle)| {
            self.loc
                .error_at_text(kind, start_line, self.current_line, &needle)
        })?;
        let mut heredocs = Vec::new();
        for mut heredoc in words {
            let body_start = self.current_line + 1;
            let Some(content) = self.heredoc_body(&heredoc) else {
                let first_line_text = self.loc.line_text(start_line).unwrap_or("");
                let (column, width) = first_line_text
                    .find("<<")
                    .map(|i| (first_line_text[..i].chars().count() + 1, 2))
                    .unwrap_or((keyword_column, 1));
                return Err(self.loc.error(
                    ErrorKind::UnterminatedHeredoc,
                    start_line,
                    column,
                    self.current_line,
                    width,
                ));
            };
            heredoc.content = content;
            heredoc.span = Span {
                start: Position {
                    line: body_start,
                    column: 1,
                },
                end: Position {
                    line: self.current_line,
                    column: self.end_column(),
                },
            };
            heredocs.push(heredoc);
        }
        Ok(heredocs)
    }

    /// The lines up to `heredoc`'s terminator; `None` when the source ends
    /// first.
    fn heredoc_body(&mut self, heredoc: &Heredoc) -> Option<String> {
        let mut content = String::new();
        while let Some((_, raw)) = self.lines.next_line() {
            self.current_line += 1;
            let mut candidate = trim_newline(raw);
            if heredoc.chomp {
                candidate = candidate.trim_start_matches('\t');
            }
            if candidate == heredoc.name {
                return Some(content);
            }
            content.push_str(raw);
        }
        None
    }
}

fn trim_newline_once(s: &str) -> &str {
    let s = s.strip_suffix('\n').unwrap_or(s);
    s.strip_suffix('\r').unwrap_or(s)
}

/// An error from a line parser, with the text to point the caret at.
type LineError = (ErrorKind, String);

/// ONBUILD inside ONBUILD is parsed (and rejected later, as BuildKit does),
/// but only this deep, so hostile input cannot exhaust the stack.
const MAX_ONBUILD_NESTING: usize = 16;

fn new_node_from_line(line: &str, escape: char) -> Result<Node, LineError> {
    new_node_at_depth(line, escape, 0)
}

fn new_node_at_depth(line: &str, escape: char, depth: usize) -> Result<Node, LineError> {
    let trimmed = go_trim_space(line);
    let (keyword, rest) = split_ws_once(trimmed);
    let (rest, flags) = match rest {
        Some(rest) => {
            let (args, flags) = extract_builder_flags(rest, escape);
            (go_trim_space(args), flags)
        }
        None => ("", Vec::new()),
    };
    let (args, json) = match keyword.to_lowercase().as_str() {
        "add" | "copy" | "volume" => parse_maybe_json_to_list(rest)?,
        "arg" => (Args::Words(parse_words(rest, escape)), false),
        "cmd" | "entrypoint" | "run" | "shell" => parse_maybe_json(rest)?,
        "env" => (parse_name_val(rest, "ENV", escape)?, false),
        "label" => (parse_name_val(rest, "LABEL", escape)?, false),
        "expose" | "from" => (Args::Words(split_whitespace_delimited(rest)), false),
        "healthcheck" => parse_health_config(rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => (
            Args::Words(if rest.is_empty() {
                vec![]
            } else {
                vec![rest.to_string()]
            }),
            false,
        ),
        "onbuild" => {
            if rest.is_empty() {
                (Args::Words(vec![]), false)
            } else if depth >= MAX_ONBUILD_NESTING {
                return Err((
                    ErrorKind::Instruction(format!(
                        "ONBUILD nested more than {MAX_ONBUILD_NESTING} deep"
                    )),
                    rest.to_string(),
                ));
            } else {
                (
                    Args::Onbuild(Box::new(new_node_at_depth(rest, escape, depth + 1)?)),
                    false,
                )
            }
        }
        // Unknown instructions parse (BuildKit keeps one empty argument);
        // the typed-instruction step rejects them with a suggestion.
        _ => (Args::Words(vec![String::new()]), false),
    };
    let zero = Position { line: 0, column: 0 };
    Ok(Node {
        keyword: keyword.to_string(),
        flags,
        args,
        json,
        heredocs: Vec::new(),
        original: line.to_string(),
        rest: rest.to_string(),
        source: String::new(),
        span: Span {
            start: zero,
            end: zero,
        },
        comments: Vec::new(),
        empty_continuation_lines: Vec::new(),
    })
}

fn can_contain_heredoc(node: &Node) -> bool {
    let node = match &node.args {
        Args::Onbuild(child) if node.keyword.eq_ignore_ascii_case("onbuild") => child,
        _ => node,
    };
    matches!(node.keyword.to_lowercase().as_str(), "add" | "copy" | "run") && !node.json
}

/// Takes `--flag` words off the front of `line`; returns the rest and the
/// flags with quotes and escapes removed. A `--` word ends the flags.
fn extract_builder_flags(line: &str, escape: char) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut blank_ok = false;
    let mut iter = line.char_indices().peekable();
    while let Some((pos, ch)) = iter.next() {
        if phase == Phase::Spaces {
            if is_byte_space(ch) {
                continue;
            }
            if ch != '-' || !line[pos + 1..].starts_with('-') {
                return (&line[pos..], words);
            }
            phase = Phase::Word;
        }
        match phase {
            Phase::Word => {
                if is_byte_space(ch) {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (&line[pos..], words);
                    }
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    blank_ok = false;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                    continue;
                }
                if ch == escape {
                    match iter.next() {
                        Some((_, next)) => word.push(next),
                        None => continue,
                    }
                    continue;
                }
                word.push(ch);
            }
            Phase::Quote(quote) => {
                if ch == quote {
                    phase = Phase::Word;
                    continue;
                }
                if ch == escape {
                    match iter.next() {
                        Some((_, next)) => word.push(next),
                        None => phase = Phase::Word,
                    }
                    continue;
                }
                word.push(ch);
            }
            Phase::Spaces => {}
        }
    }
    if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    ("", words)
}

/// Splits on unquoted whitespace, keeping quotes and escapes in the words
/// (ENV, LABEL, ARG).
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut blank_ok = false;
    let mut iter = rest.chars().peekable();
    while let Some(ch) = iter.next() {
        if phase == Phase::Spaces {
            if is_space(ch) {
                continue;
            }
            phase = Phase::Word;
        }
        match phase {
            Phase::Word => {
                if is_space(ch) {
                    phase = Phase::Spaces;
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                }
                if ch == escape {
                    // An escape keeps itself and the next character, even a
                    // quote; at the very end it is dropped.
                    if let Some(next) = iter.next() {
                        word.push(ch);
                        word.push(next);
                    }
                    continue;
                }
                word.push(ch);
            }
            Phase::Quote(quote) => {
                if ch == quote {
                    phase = Phase::Word;
                }
                if ch == escape && quote != '\'' {
                    match iter.next() {
                        Some(next) => {
                            word.push(ch);
                            word.push(next);
                        }
                        None => phase = Phase::Word,
                    }
                    continue;
                }
                word.push(ch);
            }
            Phase::Spaces => {}
        }
    }
    if phase != Phase::Spaces && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

fn parse_name_val(rest: &str, key: &str, escape: char) -> Result<Args, LineError> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Args::Words(vec![]));
    };
    if !first.contains('=') {
        // Legacy form: `ENV key value…` (the value is the rest, as written).
        let (name, value) = split_ws_once(rest);
        let Some(value) = value else {
            return Err((ErrorKind::MissingValue(key.to_string()), rest.to_string()));
        };
        return Ok(Args::KeyValues(vec![KeyValue {
            key: name.to_string(),
            value: value.to_string(),
            equals: false,
        }]));
    }
    let mut pairs = Vec::with_capacity(words.len());
    for word in words {
        let Some((k, v)) = word.split_once('=') else {
            return Err((ErrorKind::MissingEquals(word.clone()), word));
        };
        pairs.push(KeyValue {
            key: k.to_string(),
            value: v.to_string(),
            equals: true,
        });
    }
    Ok(Args::KeyValues(pairs))
}

fn split_whitespace_delimited(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split(is_split_space)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `Ok(Some(words))` for exec form, `Ok(None)` for shell form.
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, LineError> {
    let rest = rest.trim_start_matches(is_space);
    if !rest.starts_with('[') {
        return Ok(None);
    }
    match parse_string_array(rest) {
        JsonArray::Strings(words) => Ok(Some(words)),
        JsonArray::NotStrings => Err((ErrorKind::NotStringArray, "[".to_string())),
        JsonArray::Invalid => Ok(None),
    }
}

fn parse_maybe_json(rest: &str) -> Result<(Args, bool), LineError> {
    if rest.is_empty() {
        return Ok((Args::Words(vec![]), false));
    }
    Ok(match parse_json(rest)? {
        Some(words) => (Args::Words(words), true),
        None => (Args::Words(vec![rest.to_string()]), false),
    })
}

fn parse_maybe_json_to_list(rest: &str) -> Result<(Args, bool), LineError> {
    Ok(match parse_json(rest)? {
        Some(words) => (Args::Words(words), true),
        None => (Args::Words(split_whitespace_delimited(rest)), false),
    })
}

fn parse_health_config(rest: &str) -> Result<(Args, bool), LineError> {
    let sep = rest.find(is_byte_space).unwrap_or(rest.len());
    if sep == 0 {
        return Ok((Args::Words(vec![]), false));
    }
    let typ = &rest[..sep];
    let cmd = rest[sep..].trim_start_matches(is_byte_space);
    let (args, json) = parse_maybe_json(cmd)?;
    let mut words = vec![typ.to_string()];
    if let Args::Words(more) = args {
        words.extend(more);
    }
    Ok((Args::Words(words), json))
}

/// Finds the heredoc words of an instruction line (`<<EOF`, `<<-EOF`,
/// `<<"EOF"`, `3<<EOF`, anywhere on the line, in order).
fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, LineError> {
    let lexer = Lexer {
        raw_quotes: true,
        raw_escapes: true,
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let no_env = |_: &str| -> Option<String> { None };
    // A line the lexer cannot split has no heredocs (as in BuildKit).
    let words = lexer
        .expand(line, &no_env)
        .map(|e| e.words)
        .unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc_word(&word).map_err(|e| (e, word.clone()))? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// BuildKit's `ParseHeredoc`: matches `^(\d*)<<(-?)\s*([^<]*)$` and reads the
/// delimiter; a delimiter with any quoting disables expansion of the body.
pub(crate) fn parse_heredoc_word(word: &str) -> Result<Option<Heredoc>, ErrorKind> {
    let digits_end = word
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(word.len());
    let (digits, after) = word.split_at(digits_end);
    let Some(after) = after.strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, after) = match after.strip_prefix('-') {
        Some(a) => (true, a),
        None => (false, after),
    };
    let rest = after.trim_start_matches(['\t', '\n', '\u{c}', '\r', ' ']);
    if rest.contains('<') || rest.is_empty() {
        return Ok(None);
    }
    let file_descriptor = if digits.is_empty() {
        0
    } else {
        digits.parse().unwrap_or(u64::MAX)
    };
    let no_env = |_: &str| -> Option<String> { None };
    let mut lexer = Lexer {
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let words = lexer.expand(rest, &no_env).map_err(heredoc_error)?.words;
    if words.len() != 1 {
        return Ok(None);
    }
    lexer.raw_quotes = true;
    let raw_words = lexer.expand(rest, &no_env).map_err(heredoc_error)?.words;
    if raw_words.len() != words.len() {
        return Err(ErrorKind::InconsistentHeredoc(rest.to_string()));
    }
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let expand = quotes(&words[0]) == quotes(&raw_words[0]);
    let zero = Position { line: 0, column: 0 };
    Ok(Some(Heredoc {
        name: words[0].clone(),
        file_descriptor,
        expand,
        chomp,
        content: String::new(),
        span: Span {
            start: zero,
            end: zero,
        },
    }))
}

fn heredoc_error(err: ExpandError) -> ErrorKind {
    ErrorKind::HeredocWord(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_rules() {
        assert_eq!(trim_continuation("a \\", '\\'), ("a ", false));
        assert_eq!(trim_continuation("a\\ \t", '\\'), ("a", false));
        assert_eq!(trim_continuation("\\", '\\'), ("", false));
        assert_eq!(trim_continuation("a\\\\", '\\'), ("a\\\\", true));
        assert_eq!(trim_continuation("a`", '`'), ("a", false));
        assert_eq!(trim_continuation("a\\", '`'), ("a\\", true));
    }

    /// After a `#!` first line, `syntax` and `check` are read from the
    /// directive lines that follow (as BuildKit's `ParseDirective` and
    /// `DetectSyntax` read them), `escape` is not (its parser has stopped
    /// reading directives), and a blank line ends them.
    #[test]
    fn syntax_and_check_after_a_shebang() {
        let names = |text: &str| -> Vec<(String, String, usize)> {
            crate::parse(text, "Dockerfile")
                .unwrap()
                .directives
                .iter()
                .map(|d| (d.name.clone(), d.value.clone(), d.span.start.line))
                .collect()
        };
        assert_eq!(
            names("#!/usr/bin/env kiln\n# escape=`\n# check=error=true\n#syntax=a/b\nFROM x\n"),
            [
                ("check".to_string(), "error=true".to_string(), 3),
                ("syntax".to_string(), "a/b".to_string(), 4)
            ]
        );
        assert_eq!(names("#!/bin/sh\n\n# check=skip=all\nFROM x\n"), []);
        // escape after a shebang is a comment: `\` still continues lines.
        let ast = crate::parse("#!/bin/sh\n# escape=`\nRUN a \\\n b\n", "Dockerfile").unwrap();
        assert_eq!(ast.nodes.len(), 1);
        // A repeated key ends them (BuildKit's ParseAll stops there), and
        // so does an indented line, which BuildKit reads as it is.
        assert_eq!(
            names("#!/bin/sh\n# check=error=true\n# check=skip=all\n# syntax=a/b\nFROM x\n"),
            [("check".to_string(), "error=true".to_string(), 2)]
        );
        assert_eq!(
            names("#!/bin/sh\n# escape=`\n# escape=\\\n# syntax=a/b\nFROM x\n"),
            []
        );
        assert_eq!(names("#!/bin/sh\n  # syntax=a/b\nFROM x\n"), []);
        assert_eq!(names("  #!/bin/sh\n# syntax=a/b\nFROM x\n"), []);
        // Without a shebang, nothing changes.
        assert_eq!(
            names("# check=skip=all\nFROM x\n"),
            [("check".to_string(), "skip=all".to_string(), 1)]
        );
    }

    #[test]
    fn directive_regex() {
        assert_eq!(match_directive("escape=`"), Some(("escape", "`")));
        assert_eq!(match_directive("syntax = a b  "), Some(("syntax", "a b")));
        assert_eq!(match_directive("escape= "), Some(("escape", " ")));
        assert_eq!(match_directive("escape="), None);
        assert_eq!(match_directive("1a=b"), None);
        assert_eq!(match_directive("es cape=b"), None);
    }

    #[test]
    fn builder_flags() {
        assert_eq!(
            extract_builder_flags("--a=1 --b x y", '\\'),
            ("x y", vec!["--a=1".into(), "--b".into()])
        );
        assert_eq!(
            extract_builder_flags("--a -- --b", '\\'),
            (" --b", vec!["--a".to_string()])
        );
        assert_eq!(
            extract_builder_flags("--m=\"a b\" c", '\\'),
            ("c", vec!["--m=a b".to_string()])
        );
        assert_eq!(
            extract_builder_flags("--x", '\\'),
            ("", vec!["--x".to_string()])
        );
        assert_eq!(extract_builder_flags("--", '\\'), ("", vec![]));
        assert_eq!(extract_builder_flags("-x", '\\'), ("-x", vec![]));
    }

    #[test]
    fn words_keep_quotes() {
        assert_eq!(
            parse_words("a 'b c' \"d\\\" e\" f\\ g", '\\'),
            ["a", "'b c'", "\"d\\\" e\"", "f\\ g"]
        );
        assert_eq!(parse_words("x=''", '\\'), ["x=''"]);
    }

    #[test]
    fn heredoc_words() {
        let doc = parse_heredoc_word("<<EOF").unwrap().unwrap();
        assert_eq!(
            (
                doc.name.as_str(),
                doc.expand,
                doc.chomp,
                doc.file_descriptor
            ),
            ("EOF", true, false, 0)
        );
        let doc = parse_heredoc_word("3<<-'EOF'").unwrap().unwrap();
        assert_eq!(
            (
                doc.name.as_str(),
                doc.expand,
                doc.chomp,
                doc.file_descriptor
            ),
            ("EOF", false, true, 3)
        );
        let doc = parse_heredoc_word("<<E\"O\"F").unwrap().unwrap();
        assert_eq!((doc.name.as_str(), doc.expand), ("EOF", false));
        assert!(parse_heredoc_word("<<").unwrap().is_none());
        assert!(parse_heredoc_word("a<<EOF").unwrap().is_none());
        assert!(parse_heredoc_word("<<EOF<").unwrap().is_none());
    }

    #[test]
    fn deep_onbuild_is_an_error_not_a_crash() {
        let src = format!("FROM a\n{}RUN x\n", "ONBUILD ".repeat(100_000));
        let err = parse(&src, "Dockerfile").unwrap_err();
        assert!(
            err.to_string().contains("ONBUILD nested more than 16 deep"),
            "{err}"
        );
    }

    #[test]
    fn heredoc_scanning_is_linear() {
        let mut src = String::from("FROM a\nRUN <<A <<B\n");
        for _ in 0..100_000 {
            src.push_str("body line\n");
        }
        src.push_str("A\nB\nRUN <<EOF\n");
        for _ in 0..100_000 {
            src.push_str("\tno terminator\n");
        }
        let err = parse(&src, "Dockerfile").unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::UnterminatedHeredoc);
        assert_eq!((err.line(), err.end_line()), (100_005, 200_005));
    }

    #[test]
    fn continuation_is_linear() {
        // 200k continuation lines must not take quadratic time or memory.
        let mut src = String::from("RUN a \\\n");
        for _ in 0..200_000 {
            src.push_str(" b \\\n");
        }
        src.push_str(" c\n");
        let df = parse(&src, "Dockerfile").unwrap();
        assert_eq!(df.nodes[0].span.end.line, 200_002);
    }
}
