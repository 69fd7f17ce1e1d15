//! Word expansion with the rules of BuildKit's shell lexer.
//!
//! This is a pure function: it reads variables through an [`Env`] lookup and
//! never touches the process environment. It handles `$VAR`, `${VAR}`,
//! `${VAR:-w}`, `${VAR-w}`, `${VAR:+w}`, `${VAR+w}`, `${VAR:?msg}`,
//! `${VAR?msg}`, `${VAR#p}`, `${VAR##p}`, `${VAR%p}`, `${VAR%%p}`,
//! `${VAR/p/r}`, `${VAR//p/r}`, single and double quotes, the escape
//! character, and word splitting (for instructions that take several words).
//!
//! ```
//! use std::collections::HashMap;
//! use kiln_parser::expand::{expand_word, expand_words};
//!
//! let env: HashMap<String, String> = [("NAME".to_string(), "a b".to_string())].into();
//! let out = expand_word("x-${NAME}-$MISSING", &env, '\\').unwrap();
//! assert_eq!(out.value, "x-a b-");
//! assert!(out.unset.contains("MISSING"));
//! assert_eq!(expand_words("1 $NAME '2 3'", &env, '\\').unwrap(), ["1", "a", "b", "2 3"]);
//! ```
//!
//! Where BuildKit's lexer deliberately differs from a POSIX shell (no
//! command substitution, no arithmetic, `${VAR:=w}` rejected, patterns without
//! bracket expressions), this module follows BuildKit.

use std::collections::{BTreeSet, HashMap};

use crate::quote::go_quote;

/// Where expansion looks variables up. `None` means unset (which differs
/// from set to the empty string for `${VAR-w}`, `${VAR?}` and `${VAR+w}`).
pub trait Env {
    fn lookup(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn lookup(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl Env for HashMap<String, String> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for std::collections::BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// `KEY=VALUE` pairs in order; a later pair wins over an earlier one.
impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

impl Env for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.as_slice().lookup(name)
    }
}

/// The result of expanding one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded text, quotes removed, spaces kept.
    pub value: String,
    /// The expanded text split into words (unquoted whitespace separates
    /// words, including whitespace that came from a variable's value).
    pub words: Vec<String>,
    /// Names that were looked up and found.
    pub referenced: BTreeSet<String>,
    /// Names that were looked up and not set (for an `UndefinedVar` lint).
    pub unset: BTreeSet<String>,
}

/// Why a word could not be expanded. The text matches BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {}: {message}", go_quote(word))]
pub struct ExpandError {
    /// The word as given.
    pub word: String,
    /// What went wrong, e.g. `syntax error: bad substitution`.
    pub message: String,
}

/// Expands `word` with the default lexer options and `escape` as the escape
/// character (`\` or `` ` ``).
pub fn expand_word(word: &str, env: &dyn Env, escape: char) -> Result<Expansion, ExpandError> {
    Lexer::new(escape).expand(word, env)
}

/// Expands `word` and splits the result into words.
pub fn expand_words(word: &str, env: &dyn Env, escape: char) -> Result<Vec<String>, ExpandError> {
    Lexer::new(escape).expand(word, env).map(|e| e.words)
}

/// The lexer with BuildKit's options; [`expand_word`] uses the defaults.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    /// The escape character (`\` unless `# escape=`` ` `` is in effect).
    pub escape: char,
    /// Keep quote characters in the output (quotes still group words).
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters.
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written (`$X`, `${X:-w}`).
    pub skip_unset_env: bool,
    /// Reproduce BuildKit's word splitting exactly: its lexer shares one
    /// word buffer across `${…}` nesting levels, so text of the current
    /// word before a `${VAR:-…}`-style substitution (one with a nested
    /// word) is dropped from the split words (`a${X:-b}c` splits as `bc`).
    /// Only [`Expansion::words`] is affected, never [`Expansion::value`].
    /// On by default because BuildKit's behaviour is the specification;
    /// turn it off for shell-like splitting.
    pub shared_word_buffer: bool,
}

impl Lexer {
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
            shared_word_buffer: true,
        }
    }

    /// Expands `word`; see [`Expansion`] for what comes back.
    pub fn expand(&self, word: &str, env: &dyn Env) -> Result<Expansion, ExpandError> {
        let mut chars: Vec<char> = word.chars().collect();
        // Go's text/scanner skips a byte-order mark at the very start.
        if chars.first() == Some(&'\u{feff}') {
            chars.remove(0);
        }
        let mut shell = ShellWord {
            lex: self,
            chars,
            pos: 0,
            env,
            raw_escapes: self.raw_escapes,
            referenced: BTreeSet::new(),
            unset: BTreeSet::new(),
            depth: 0,
            nested_words: 0,
            max_len: MAX_EXPANSION_LEN.max(word.len().saturating_mul(2)),
        };
        match shell.process_stop_on(None, self.raw_escapes) {
            Ok((value, words)) => Ok(Expansion {
                value,
                words,
                referenced: shell.referenced,
                unset: shell.unset,
            }),
            Err(message) => Err(ExpandError {
                word: word.to_string(),
                message,
            }),
        }
    }
}

struct ShellWord<'a> {
    lex: &'a Lexer,
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn Env,
    raw_escapes: bool,
    referenced: BTreeSet<String>,
    unset: BTreeSet<String>,
    /// How many `${…}` we are inside (bounded, so hostile input cannot
    /// exhaust the stack).
    depth: usize,
    /// How many times a nested word was processed (for `shared_word_buffer`).
    nested_words: usize,
    /// The longest result allowed (see [`MAX_EXPANSION_LEN`]).
    max_len: usize,
}

/// The longest expansion result (in bytes) accepted, unless the word itself
/// is longer (then twice its length). `${VAR//p/r}` can multiply lengths,
/// and nesting it would grow results exponentially; BuildKit would run out
/// of memory, kiln reports an error instead.
pub const MAX_EXPANSION_LEN: usize = 4 << 20;

/// The most pattern-matching work (pattern length × value length) one
/// `${VAR#p}`, `${VAR%p}` or `${VAR/p/r}` may take.
pub const MAX_MATCH_WORK: usize = 16 << 20;

/// The deepest `${…}` nesting accepted. Go's growable stacks have no such
/// limit; no real Dockerfile comes near it.
pub const MAX_NESTING: usize = 100;

/// Accumulates words: unquoted whitespace ends a word, quoted text never does.
#[derive(Default)]
struct Words {
    buf: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(self.buf);
        }
        self.words
    }
}

/// Go's `string(rune)` for a scanner result: EOF becomes U+FFFD.
fn rune_text(ch: Option<char>) -> String {
    ch.unwrap_or('\u{fffd}').to_string()
}

impl ShellWord<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), String> {
        self.nested_words += 1;
        let saved_raw_escapes = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let result = self.process_stop_on_inner(stop);
        self.raw_escapes = saved_raw_escapes;
        result
    }

    fn process_stop_on_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                return Ok((result, words.finish()));
            }
            let nested_before = self.nested_words;
            let special = match ch {
                '$' => Some(self.process_dollar()?),
                '<' => Some(self.process_possible_heredoc()),
                '\'' if !self.lex.skip_process_quotes => Some(self.process_single_quote()?),
                '"' if !self.lex.skip_process_quotes => Some(self.process_double_quote()?),
                _ => None,
            };
            if self.lex.shared_word_buffer && self.nested_words != nested_before {
                // A nested word reset BuildKit's shared buffer and left it empty.
                words.buf.clear();
            }
            if let Some(text) = special {
                result.push_str(&text);
                self.check_len(&result)?;
                if ch == '$' {
                    words.add_string(&text);
                } else {
                    words.add_raw_string(&text);
                }
                continue;
            }
            let mut ch = ch;
            self.next();
            if ch == self.lex.escape {
                if self.raw_escapes {
                    words.add_raw_char(ch);
                    result.push(ch);
                }
                // The escape character escapes the next one, except at the end.
                match self.next() {
                    None => break,
                    Some(escaped) => ch = escaped,
                }
                words.add_raw_char(ch);
            } else {
                words.add_char(ch);
            }
            result.push(ch);
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Result<String, String> {
        // Everything up to the next ' is literal; ' cannot be escaped.
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .to_string(),
                    )
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, String> {
        // Literal except $ and the escape character, which escapes only
        // `"`, `$` and itself (other escapes stay as written).
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .to_string(),
                    )
                }
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                    self.check_len(&result)?;
                }
                Some(_) => {
                    let Some(mut ch) = self.next() else { continue };
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                                self.next();
                                ch = c;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn check_len(&self, text: &str) -> Result<(), String> {
        if text.len() > self.max_len {
            return Err(format!("expansion longer than {} bytes", self.max_len));
        }
        Ok(())
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match self.env.lookup(name) {
            Some(value) => {
                self.referenced.insert(name.to_string());
                Some(value)
            }
            None => {
                self.unset.insert(name.to_string());
                None
            }
        }
    }

    fn process_dollar(&mut self) -> Result<String, String> {
        if self.depth >= MAX_NESTING {
            return Err(format!("substitutions nested more than {MAX_NESTING} deep"));
        }
        self.depth += 1;
        let result = self.process_dollar_inner();
        self.depth -= 1;
        result
    }

    fn process_dollar_inner(&mut self) -> Result<String, String> {
        self.next();
        if self.peek() != Some('{') {
            return Ok(self.process_plain_variable());
        }
        self.next();
        match self.peek() {
            None => return Err("syntax error: missing '}'".to_string()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".to_string()),
            Some(_) => {}
        }
        let name = self.process_name();
        let ch = self.next();
        match ch {
            Some('}') => {
                let value = self.get_env(&name);
                Ok(match value {
                    Some(v) => v,
                    None if self.lex.skip_unset_env => format!("${{{name}}}"),
                    None => String::new(),
                })
            }
            Some(':' | '+' | '-' | '?' | '#' | '%') => self.process_modifier(&name, ch),
            Some('/') => self.process_replacement(&name),
            _ => Err(format!(
                "unsupported modifier ({}) in substitution",
                rune_text(ch)
            )),
        }
    }

    /// `$NAME` (the `$` read): its value; a `$` without a name stays.
    fn process_plain_variable(&mut self) -> String {
        let name = self.process_name();
        if name.is_empty() {
            return "$".to_string();
        }
        let value = self.get_env(&name);
        match value {
            Some(v) => v,
            None if self.lex.skip_unset_env => format!("${name}"),
            None => String::new(),
        }
    }

    /// `${NAME:-w}`, `${NAME+w}`, `${NAME?w}`, `${NAME#p}` and the rest,
    /// `${NAME` and the modifier's first character (`first`) read.
    fn process_modifier(&mut self, name: &str, first: Option<char>) -> Result<String, String> {
        let mut op = first;
        let mut text = rune_text(op);
        let null_is_unset = op == Some(':');
        if null_is_unset {
            op = self.next();
            text.push_str(&rune_text(op));
        }
        let raw_escapes = matches!(op, Some('#' | '%'));
        if null_is_unset && raw_escapes {
            return Err(format!("unsupported modifier ({text}) in substitution"));
        }
        let word = match self.process_stop_on(Some('}'), raw_escapes) {
            Ok((word, _)) => word,
            Err(_) if self.peek().is_none() => {
                return Err("syntax error: missing '}'".to_string());
            }
            Err(err) => return Err(err),
        };
        let value = self.get_env(name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{text}{word}}}"));
        }
        Modifier {
            name,
            op,
            text,
            null_is_unset,
            word,
        }
        .apply(value)
    }

    /// `${NAME/p/r}` and `${NAME//p/r}`, `${NAME/` read.
    fn process_replacement(&mut self, name: &str) -> Result<String, String> {
        let replace_all = self.peek() == Some('/');
        if replace_all {
            self.next();
        }
        let pattern = match self.process_stop_on(Some('/'), true) {
            Ok((p, _)) => p,
            Err(_) if self.peek().is_none() => {
                return Err("syntax error: missing '/' in ${}".to_string())
            }
            Err(err) => return Err(err),
        };
        let replacement = match self.process_stop_on(Some('}'), true) {
            Ok((r, _)) => r,
            Err(_) if self.peek().is_none() => return Err("syntax error: missing '}'".to_string()),
            Err(err) => return Err(err),
        };
        let value = self.get_env(name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
        }
        let value = value.unwrap_or_default();
        let tokens = compile_pattern(&pattern)
            .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
        let value: Vec<char> = value.chars().collect();
        let replaced = if replace_all {
            replace_all_matches(&tokens, &value, &replacement, self.max_len)?
        } else {
            replace_first_match(&tokens, &value, &replacement)?
        };
        self.check_len(&replaced)?;
        Ok(replaced)
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(d) = self.peek().filter(|c| is_digit(*c)) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphabetic() && !is_digit(ch) && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn process_possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".to_string();
        }
        self.next();
        // Whitespace between << and the delimiter stays with the word.
        let mut result = "<<".to_string();
        while let Some(ch) = self.peek().filter(|c| matches!(c, '\t' | '\r' | ' ')) {
            result.push(ch);
            self.next();
        }
        result
    }
}

/// A `${NAME<modifier>word}` substitution, its word read.
struct Modifier<'a> {
    name: &'a str,
    /// The operator: `-`, `+`, `?`, `#` or `%` (`None` at the end of the
    /// word).
    op: Option<char>,
    /// The modifier as written (`:-`, `#`, …), for errors.
    text: String,
    /// The `:` form: an empty value counts as unset.
    null_is_unset: bool,
    word: String,
}

impl Modifier<'_> {
    /// The substitution's result for the variable's `value`.
    fn apply(self, value: Option<String>) -> Result<String, String> {
        let is_null = value
            .as_deref()
            .is_none_or(|v| self.null_is_unset && v.is_empty());
        match self.op {
            Some('-') => Ok(if is_null {
                self.word
            } else {
                value.unwrap_or_default()
            }),
            Some('+') => Ok(if is_null { String::new() } else { self.word }),
            Some('?') => self.required(value),
            Some(op @ ('%' | '#')) => {
                let value = value.unwrap_or_default();
                // A doubled operator (## or %%) removes the longest match.
                let (pattern, greedy) = match self.word.strip_prefix(op) {
                    Some(rest) => (rest.to_string(), true),
                    None => (self.word, false),
                };
                if op == '%' {
                    trim_suffix(&pattern, &value, greedy)
                } else {
                    trim_prefix(&pattern, &value, greedy)
                }
            }
            _ => Err(format!(
                "unsupported modifier ({}) in substitution",
                self.text
            )),
        }
    }

    /// `${NAME?msg}` and `${NAME:?msg}`: the value, or the error `msg` (or
    /// the default message) when it is unset (or empty).
    fn required(self, value: Option<String>) -> Result<String, String> {
        let name = self.name;
        match value {
            None => Err(format!(
                "{name}: {}",
                if self.word.is_empty() {
                    "is not allowed to be unset"
                } else {
                    &self.word
                }
            )),
            Some(v) if self.null_is_unset && v.is_empty() => Err(format!(
                "{name}: {}",
                if self.word.is_empty() {
                    "is not allowed to be empty"
                } else {
                    &self.word
                }
            )),
            Some(v) => Ok(v),
        }
    }
}

/// Go's `unicode.IsDigit` (decimal digits); `char::is_numeric` is wider.
fn is_digit(ch: char) -> bool {
    ch.is_ascii_digit() || (!ch.is_ascii() && is_unicode_decimal(ch))
}

/// Decimal-digit blocks outside ASCII that Go counts as digits (the common
/// scripts; each block is ten consecutive code points starting at zero).
fn is_unicode_decimal(ch: char) -> bool {
    const ZEROS: &[u32] = &[
        0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
        0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0,
        0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0,
        0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450,
        0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11C50, 0x11D50, 0x16A60, 0x16B50, 0x1D7CE,
        0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E950,
    ];
    let c = ch as u32;
    ZEROS.iter().any(|z| c >= *z && c < z + 10)
}

fn is_special_param(ch: char) -> bool {
    matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// One element of a shell pattern (`?`, `*`, or a literal character).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatternToken {
    Literal(char),
    AnyChar,
    Star,
}

/// Turns a `${VAR#pattern}` pattern into tokens, rejecting escapes other
/// than `\*`, `\?`, `\\` (and dropping `\` before `}` or `/`).
fn compile_pattern(pattern: &str) -> Result<Vec<PatternToken>, String> {
    let mut chars = pattern.chars().peekable();
    if chars.peek() == Some(&'\u{feff}') {
        chars.next();
    }
    let mut tokens = Vec::new();
    while let Some(ch) = chars.next() {
        match ch {
            '*' => tokens.push(PatternToken::Star),
            '?' => tokens.push(PatternToken::AnyChar),
            '\\' => {
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(c @ ('*' | '?' | '\\')) => tokens.push(PatternToken::Literal(c)),
                    other => return Err(format!("invalid escape '\\{}'", rune_text(other))),
                }
            }
            c => tokens.push(PatternToken::Literal(c)),
        }
    }
    Ok(tokens)
}

/// For every start position `s` in `value`, the end of the match of
/// `tokens` starting at `s`, chosen the way a backtracking (leftmost-first)
/// regex engine chooses it: each `*` prefers the fewest characters when
/// `greedy` is false and the most when it is true. Like Go's `.`, wildcards
/// do not match a newline. Runs in O(len(tokens) × len(value)).
fn match_ends(
    tokens: &[PatternToken],
    value: &[char],
    greedy: bool,
) -> Result<Vec<Option<usize>>, String> {
    let n = value.len();
    if tokens.len().saturating_mul(n + 1) > MAX_MATCH_WORK {
        return Err(format!(
            "pattern of {} characters is too long to match against {} characters",
            tokens.len(),
            n
        ));
    }
    // Row for "all tokens consumed": the match ends where we are.
    let mut next: Vec<Option<usize>> = (0..=n).map(Some).collect();
    let mut cur = vec![None; n + 1];
    for token in tokens.iter().rev() {
        for vi in (0..=n).rev() {
            let ch = value.get(vi).copied();
            cur[vi] = match token {
                PatternToken::Literal(c) => {
                    if ch == Some(*c) {
                        next[vi + 1]
                    } else {
                        None
                    }
                }
                PatternToken::AnyChar => match ch {
                    Some(c) if c != '\n' => next[vi + 1],
                    _ => None,
                },
                PatternToken::Star => {
                    let more = match ch {
                        Some(c) if c != '\n' => cur[vi + 1],
                        _ => None,
                    };
                    if greedy {
                        more.or(next[vi])
                    } else {
                        next[vi].or(more)
                    }
                }
            };
        }
        std::mem::swap(&mut next, &mut cur);
    }
    Ok(next)
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let tokens = compile_pattern(pattern)
        .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
    let chars: Vec<char> = value.chars().collect();
    let ends = match_ends(&tokens, &chars, greedy)?;
    Ok(match ends[0] {
        Some(end) => chars[end..].iter().collect(),
        None => value.to_string(),
    })
}

/// Reverses a pattern but keeps each `\x` escape in order (`a\*c` → `c\*a`).
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; chars.len()];
    let last = chars.len().saturating_sub(1);
    let mut i = 0;
    while i < chars.len() {
        let out_idx = last - i;
        if chars[i] == '\\' && i != last {
            out[out_idx - 1] = '\\';
            out[out_idx] = chars[i + 1];
            i += 2;
        } else {
            out[out_idx] = chars[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    // Shortest/longest rightmost match = leftmost match on the reversed text.
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

fn replace_first_match(
    tokens: &[PatternToken],
    value: &[char],
    replacement: &str,
) -> Result<String, String> {
    let ends = match_ends(tokens, value, true)?;
    Ok(
        match ends.iter().enumerate().find_map(|(s, e)| e.map(|e| (s, e))) {
            Some((start, end)) => {
                let mut out: String = value[..start].iter().collect();
                out.push_str(replacement);
                out.extend(&value[end..]);
                out
            }
            None => value.iter().collect(),
        },
    )
}

/// Go's `Regexp.ReplaceAllString`: successive non-overlapping matches, an
/// empty match right after a match is skipped, and `$0`/`${0}` in the
/// replacement stand for the match (other `$name`s for nothing, `$$` for `$`).
fn replace_all_matches(
    tokens: &[PatternToken],
    value: &[char],
    template: &str,
    max_len: usize,
) -> Result<String, String> {
    let n = value.len();
    let ends = match_ends(tokens, value, true)?;
    let mut out = String::new();
    let mut search = 0usize;
    let mut last_end = 0usize;
    let mut candidate = 0usize;
    while search <= n {
        candidate = candidate.max(search);
        while candidate <= n && ends[candidate].is_none() {
            candidate += 1;
        }
        let Some(end) = ends.get(candidate).copied().flatten() else {
            break;
        };
        let start = candidate;
        out.extend(&value[last_end..start]);
        if end > last_end || start == 0 {
            expand_template(&mut out, template, &value[start..end]);
        }
        if out.len() > max_len {
            return Err(format!("expansion longer than {max_len} bytes"));
        }
        last_end = end;
        let width = usize::from(search < n);
        if search + width > end {
            search += width;
        } else if search + 1 > end {
            search += 1;
        } else {
            search = end;
        }
    }
    out.extend(&value[last_end.min(n)..]);
    Ok(out)
}

fn expand_template(out: &mut String, template: &str, matched: &[char]) {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match extract_template_name(rest) {
            Some((name, after)) => {
                rest = after;
                if name == "0" {
                    out.extend(matched);
                }
            }
            None => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// Go's `regexp` template name: `name` or `{name}` of letters, digits, `_`.
fn extract_template_name(s: &str) -> Option<(&str, &str)> {
    let (braced, body) = match s.strip_prefix('{') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let len: usize = body
        .chars()
        .take_while(|c| c.is_alphabetic() || is_digit(*c) || *c == '_')
        .map(char::len_utf8)
        .sum();
    if len == 0 {
        return None;
    }
    let name = &body[..len];
    let mut after = &body[len..];
    if braced {
        after = after.strip_prefix('}')?;
    }
    Some((name, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        [
            ("PWD", "/home"),
            ("NULL", ""),
            ("V", "abcabc"),
            ("P", "/usr/local/bin"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn ok(word: &str) -> String {
        expand_word(word, &env(), '\\').unwrap().value
    }

    fn err(word: &str) -> String {
        expand_word(word, &env(), '\\').unwrap_err().to_string()
    }

    #[test]
    fn trims_shortest_and_longest() {
        assert_eq!(ok("${V#*b}"), "cabc");
        assert_eq!(ok("${V##*b}"), "c");
        assert_eq!(ok("${V%b*}"), "abca");
        assert_eq!(ok("${V%%b*}"), "a");
        assert_eq!(ok("${P##*/}"), "bin");
        assert_eq!(ok("${P%/*}"), "/usr/local");
        assert_eq!(ok("${V#x}"), "abcabc");
    }

    #[test]
    fn replaces_first_and_all() {
        assert_eq!(ok("${V/b/X}"), "aXcabc");
        assert_eq!(ok("${V//b/X}"), "aXcaXc");
        assert_eq!(ok("${V//b*c/X}"), "aX");
        assert_eq!(ok("${V//x/X}"), "abcabc");
        // An empty pattern matches between every character, like Go's regexp.
        assert_eq!(ok("${V///-}"), "-a-b-c-a-b-c-");
        // `$0` in the replacement is the match, like Go's template expansion.
        assert_eq!(ok("${V//b/<\\$0>}"), "a<\\b>ca<\\b>c");
    }

    #[test]
    fn pattern_escapes() {
        assert_eq!(err("${V#\\x}"), "failed to process \"${V#\\\\x}\": invalid pattern (\\x) in substitution: invalid escape '\\x'");
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
        assert_eq!(reverse_pattern("\\\\b"), "b\\\\");
    }

    #[test]
    fn required_variables() {
        assert_eq!(
            err("${X?}"),
            "failed to process \"${X?}\": X: is not allowed to be unset"
        );
        assert_eq!(
            err("${NULL:?}"),
            "failed to process \"${NULL:?}\": NULL: is not allowed to be empty"
        );
        assert_eq!(
            err("${X:?give $PWD}"),
            "failed to process \"${X:?give $PWD}\": X: give /home"
        );
        assert_eq!(ok("${NULL?}"), "");
    }

    #[test]
    fn reports_referenced_and_unset() {
        let out = expand_word("$PWD ${X:-$Y} ${NULL}", &env(), '\\').unwrap();
        assert_eq!(
            out.referenced.into_iter().collect::<Vec<_>>(),
            ["NULL", "PWD"]
        );
        assert_eq!(out.unset.into_iter().collect::<Vec<_>>(), ["X", "Y"]);
    }

    #[test]
    fn nested_substitution_and_the_shared_word_buffer() {
        // BuildKit drops "hello" from the split word (its lexer shares one
        // buffer across nesting levels); the value keeps it.
        let out = expand_word("hello${X:-a}b c", &env(), '\\').unwrap();
        assert_eq!(out.value, "helloab c");
        assert_eq!(out.words, ["ab", "c"]);
        assert_eq!(expand_words("x\"${X:-a}\"", &env(), '\\').unwrap(), ["a"]);
        // Plain `$X`/`${X}` have no nested word and keep the prefix.
        assert_eq!(expand_words("p$PWD", &env(), '\\').unwrap(), ["p/home"]);
        let shell_like = Lexer {
            shared_word_buffer: false,
            ..Lexer::new('\\')
        };
        assert_eq!(
            shell_like.expand("hello${X:-a}b c", &env()).unwrap().words,
            ["helloab", "c"]
        );
    }

    #[test]
    fn exponential_growth_is_an_error_not_a_hang() {
        // Each level inserts the inner result between all 14 characters of P.
        let mut word = "x".to_string();
        for _ in 0..12 {
            word = format!("${{P///{word}}}");
        }
        assert!(
            err(&word).ends_with("expansion longer than 4194304 bytes"),
            "{}",
            err(&word)
        );
        let long = "a".repeat(5000);
        let env = vec![("L".to_string(), long.clone())];
        let pattern = "?".repeat(5000);
        let e = expand_word(&format!("${{L#{pattern}}}"), &env, '\\').unwrap_err();
        assert!(e.message.contains("too long to match"), "{e}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "${A:-".repeat(100_000) + &"}".repeat(100_000);
        assert!(err(&deep).ends_with("substitutions nested more than 100 deep"));
        let fine = "${A:-".repeat(50) + "x" + &"}".repeat(50);
        assert_eq!(ok(&fine), "x");
    }

    #[test]
    fn backtick_escape() {
        assert_eq!(expand_word("a`$PWD", &env(), '`').unwrap().value, "a$PWD");
        assert_eq!(
            expand_word("a\\$PWD", &env(), '`').unwrap().value,
            "a\\/home"
        );
    }

    #[test]
    fn modifiers_rejected() {
        assert_eq!(
            err("${V:#a}"),
            "failed to process \"${V:#a}\": unsupported modifier (:#) in substitution"
        );
        assert_eq!(
            err("${V:=a}"),
            "failed to process \"${V:=a}\": unsupported modifier (:=) in substitution"
        );
        assert_eq!(
            err("${V"),
            "failed to process \"${V\": unsupported modifier (\u{fffd}) in substitution"
        );
        assert_eq!(
            err("${V/a"),
            "failed to process \"${V/a\": syntax error: missing '/' in ${}"
        );
    }
}
