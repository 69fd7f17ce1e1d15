//! `.dockerignore`: reading the file and matching context paths against it
//! exactly as moby's `patternmatcher` (and BuildKit's context walker) do.
//!
//! The rules, which are not quite `.gitignore`'s:
//! - lines starting with `#` are comments; each other line is trimmed,
//!   `filepath.Clean`ed and loses a leading `/`; `!` makes an exception that
//!   re-includes what earlier patterns excluded;
//! - `*` and `?` never cross a `/`; `**` matches any number of whole path
//!   segments (also none); `[...]` classes follow Go's `filepath.Match`;
//! - a pattern matching a directory also excludes everything below it;
//! - the last pattern that matches wins.
//!
//! ```
//! use kiln_builder::dockerignore::PatternMatcher;
//! let m = PatternMatcher::new(["logs", "!logs/keep.log", "**/*.tmp"]).unwrap();
//! assert!(m.matches_or_parent_matches("logs/drop.log"));
//! assert!(!m.matches_or_parent_matches("logs/keep.log"));
//! assert!(m.matches_or_parent_matches("a/b/c.tmp"));
//! ```

use std::path::{Path, PathBuf};

use regex::Regex;

/// A bad pattern in an ignore file or in a pattern list.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("{file}: line {line}: illegal exclusion pattern \"!\"")]
    LoneExclamation { file: String, line: usize },
    #[error("{file}: line {line}: syntax error in pattern {pattern:?}")]
    BadPattern {
        file: String,
        line: usize,
        pattern: String,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One line of an ignore file, after the cleaning `ignorefile.ReadAll` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreLine {
    /// 1-based line number in the file it came from.
    pub line: usize,
    /// The pattern as patternmatcher receives it (may start with `!`).
    pub pattern: String,
}

/// Parses the text of a `.dockerignore` file the way `ignorefile.ReadAll`
/// does: a UTF-8 BOM is dropped, `#` lines are comments (only when `#` is the
/// very first byte), whitespace is trimmed, patterns are cleaned and lose one
/// leading `/`.
pub fn parse_ignore_file(text: &str) -> Vec<IgnoreLine> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    // bufio.Scanner splits on \n and drops one trailing \r.
    for (index, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.starts_with('#') {
            continue;
        }
        let mut pattern = raw.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = go_clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        out.push(IgnoreLine {
            line: index + 1,
            pattern: cleaned,
        });
    }
    out
}

/// Finds the ignore file BuildKit would use: `<Dockerfile name>.dockerignore`
/// next to the Dockerfile first, then `.dockerignore` at the context root;
/// then buildah's `.containerignore`, for contexts made for it.
pub fn find_ignore_file(context_dir: &Path, dockerfile: Option<&Path>) -> Option<PathBuf> {
    if let Some(dockerfile) = dockerfile {
        if let Some(name) = dockerfile.file_name() {
            let mut specific = name.to_os_string();
            specific.push(".dockerignore");
            let candidate = dockerfile.with_file_name(specific);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    [".dockerignore", ".containerignore"]
        .iter()
        .map(|name| context_dir.join(name))
        .find(|path| path.is_file())
}

/// Loads the ignore file for a build (see [`find_ignore_file`]) into a
/// matcher; no file means a matcher that excludes nothing.
pub fn load_for_build(
    context_dir: &Path,
    dockerfile: Option<&Path>,
) -> Result<PatternMatcher, IgnoreError> {
    match find_ignore_file(context_dir, dockerfile) {
        None => PatternMatcher::new(Vec::<String>::new()),
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|source| IgnoreError::Read {
                path: path.clone(),
                source,
            })?;
            PatternMatcher::from_lines(&path.display().to_string(), &parse_ignore_file(&text))
        }
    }
}

#[derive(Debug, Clone)]
enum MatchKind {
    Exact,
    /// `prefix**`: any path starting with the prefix.
    Prefix(String),
    /// `**suffix`: any path ending with the suffix (or equal to it minus its `/`).
    Suffix(String),
    Regex(Regex),
}

/// One compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: MatchKind,
}

impl Pattern {
    /// The cleaned pattern text, without the leading `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether this is a `!` exception.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.cleaned,
            MatchKind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            MatchKind::Suffix(suffix) => {
                path.ends_with(suffix.as_str()) || (suffix.starts_with('/') && path == &suffix[1..])
            }
            MatchKind::Regex(re) => re.is_match(path),
        }
    }

    /// The pattern without a trailing `/**` or `/*` (what fsutil uses to
    /// decide whether a directory can be skipped entirely).
    fn without_trailing_glob(&self) -> &str {
        let p = self.cleaned.strip_suffix("/**").unwrap_or(&self.cleaned);
        p.strip_suffix("/*").unwrap_or(p)
    }
}

/// Per-pattern match results of a directory, handed to its children so that a
/// pattern matched by a parent counts as matched by everything below it.
#[derive(Debug, Clone, Default)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// An ordered list of patterns; see the module docs for the rules.
#[derive(Debug, Clone)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    has_exclusions: bool,
}

impl PatternMatcher {
    /// Compiles patterns given directly (no comment handling, as
    /// `patternmatcher.New`).
    pub fn new<I, S>(patterns: I) -> Result<Self, IgnoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let lines: Vec<IgnoreLine> = patterns
            .into_iter()
            .enumerate()
            .map(|(i, p)| IgnoreLine {
                line: i + 1,
                pattern: p.as_ref().to_string(),
            })
            .collect();
        Self::from_lines("<patterns>", &lines)
    }

    /// Compiles the lines of an ignore file; `file` names it in errors.
    pub fn from_lines(file: &str, lines: &[IgnoreLine]) -> Result<Self, IgnoreError> {
        let mut patterns = Vec::with_capacity(lines.len());
        let mut has_exclusions = false;
        for line in lines {
            let trimmed = line.pattern.trim();
            if trimmed.is_empty() {
                continue;
            }
            let mut p = go_clean(trimmed);
            let exclusion = p.starts_with('!');
            if exclusion {
                if p.len() == 1 {
                    return Err(IgnoreError::LoneExclamation {
                        file: file.to_string(),
                        line: line.line,
                    });
                }
                p.remove(0);
                has_exclusions = true;
            }
            let bad = || IgnoreError::BadPattern {
                file: file.to_string(),
                line: line.line,
                pattern: line.pattern.clone(),
            };
            if !go_pattern_is_valid(&p) {
                return Err(bad());
            }
            let kind = compile(&p).ok_or_else(bad)?;
            patterns.push(Pattern {
                cleaned: p,
                exclusion,
                kind,
            });
        }
        Ok(PatternMatcher {
            patterns,
            has_exclusions,
        })
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is a `!` exception.
    pub fn has_exclusions(&self) -> bool {
        self.has_exclusions
    }

    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `path` (slash-separated, relative to the context) is excluded,
    /// counting a match of any parent directory as a match of the path.
    pub fn matches_or_parent_matches(&self, path: &str) -> bool {
        let path = go_clean(path);
        if path == "." {
            // patternmatcher refuses to exclude the context root itself.
            return false;
        }
        let parent_dirs: Vec<&str> = match path.rfind('/') {
            Some(i) => path[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(&path);
            if !hit {
                for i in 0..parent_dirs.len() {
                    if pattern.matches(&parent_dirs[..=i].join("/")) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// The walker's form: `parent` holds the results of the path's parent
    /// directory (default for a top-level path); returns whether the path is
    /// excluded and the results to hand to its children.
    pub fn matches_using_parent_results(
        &self,
        path: &str,
        parent: &MatchInfo,
    ) -> (bool, MatchInfo) {
        let have_parent = parent.parent_matched.len() == self.patterns.len();
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        let mut matched = false;
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = have_parent && parent.parent_matched[i];
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.matches(path);
                if !hit && !have_parent {
                    if let Some(slash) = path.rfind('/') {
                        let dirs: Vec<&str> = path[..slash].split('/').collect();
                        hit = (0..dirs.len()).any(|j| pattern.matches(&dirs[..=j].join("/")));
                    }
                }
            }
            info.parent_matched[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
    }

    /// Whether the walker may skip the whole excluded directory `dir`: true
    /// unless an exception could re-include something below it. Mirrors
    /// fsutil: with a glob in any exception it always descends.
    pub fn can_skip_excluded_dir(&self, dir: &str) -> bool {
        if !self.has_exclusions {
            return true;
        }
        const PATTERN_CHARS: &[char] = &['*', '[', ']', '?', '^', '\\'];
        let only_prefix_exceptions = self
            .patterns
            .iter()
            .filter(|p| p.exclusion)
            .all(|p| !p.without_trailing_glob().contains(PATTERN_CHARS));
        if !only_prefix_exceptions {
            return false;
        }
        let dir_slash = format!("{dir}/");
        !self
            .patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| format!("{}/", p.without_trailing_glob()).starts_with(&dir_slash))
    }
}

/// Translates a cleaned pattern as patternmatcher's `compile` does, choosing
/// the cheap exact/prefix/suffix forms where it would.
fn compile(pattern: &str) -> Option<MatchKind> {
    #[derive(PartialEq, Clone, Copy)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut re = String::from("^");
    let mut detected = Detected::Exact;
    let mut i = 0;
    let mut token_index = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        re.push_str(".*");
                        detected = Detected::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    detected = Detected::Regex;
                }
                if token_index == 0 {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                detected = Detected::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                detected = Detected::Regex;
            }
            '\\' => {
                if let Some(&next) = chars.get(i) {
                    i += 1;
                    re.push_str(&regex::escape(&next.to_string()));
                    detected = Detected::Regex;
                } else {
                    re.push_str("\\\\");
                }
            }
            '[' => {
                let (class, used) = translate_class(&chars[i..])?;
                re.push_str(&class);
                i += used;
                detected = Detected::Regex;
            }
            other => re.push_str(&regex::escape(&other.to_string())),
        }
        token_index += 1;
    }
    Some(match detected {
        Detected::Exact => MatchKind::Exact,
        Detected::Prefix => MatchKind::Prefix(pattern[..pattern.len() - 2].to_string()),
        Detected::Suffix => MatchKind::Suffix(pattern[2..].to_string()),
        Detected::Regex => {
            re.push('$');
            MatchKind::Regex(Regex::new(&re).ok()?)
        }
    })
}

/// Translates the body of a Go `[...]` class (after the `[`) into a regex
/// class; returns it and how many chars it consumed (including the `]`).
fn translate_class(chars: &[char]) -> Option<(String, usize)> {
    let mut items = String::new();
    let mut i = 0;
    let negated = chars.first() == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = 0;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && ranges > 0 {
            // Go accepts inverted ranges, which match nothing; a class left
            // empty by them matches nothing (or anything, when negated).
            let class = match (negated, items.is_empty()) {
                (false, true) => "[^\\x{0}-\\x{10ffff}]".to_string(),
                (true, true) => "[\\x{0}-\\x{10ffff}]".to_string(),
                (false, false) => format!("[{items}]"),
                (true, false) => format!("[^{items}]"),
            };
            return Some((class, i + 1));
        }
        let (lo, used) = class_char(&chars[i..])?;
        i += used;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            let (h, used) = class_char(&chars[i + 1..])?;
            hi = h;
            i += 1 + used;
        }
        if lo <= hi {
            items.push_str(&format!("\\x{{{:x}}}-\\x{{{:x}}}", lo as u32, hi as u32));
        }
        ranges += 1;
    }
}

/// One possibly escaped class character (Go's `getEsc`).
fn class_char(chars: &[char]) -> Option<(char, usize)> {
    match chars.first()? {
        '-' | ']' => None,
        '\\' => chars.get(1).map(|&c| (c, 2)),
        &c => Some((c, 1)),
    }
}

/// Syntax check equivalent to `filepath.Match(pattern, ".")` returning no
/// error: classes well formed, no trailing lone backslash.
fn go_pattern_is_valid(pattern: &str) -> bool {
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if i + 1 >= chars.len() {
                    return false;
                }
                i += 2;
            }
            '[' => match translate_class(&chars[i + 1..]) {
                Some((_, used)) => i += 1 + used,
                None => return false,
            },
            _ => i += 1,
        }
    }
    true
}

/// Go's `path/filepath.Clean` for slash-separated paths.
pub fn go_clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_clean_matches_go() {
        for (input, want) in [
            ("", "."),
            ("/", "/"),
            ("a/b/", "a/b"),
            ("./a", "a"),
            ("a//b", "a/b"),
            ("a/../b", "b"),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("a/..", "."),
            ("**/", "**"),
        ] {
            assert_eq!(go_clean(input), want, "clean({input:?})");
        }
    }

    #[test]
    fn bad_patterns_are_rejected_with_their_line() {
        for bad in ["[", "a[", "[]", "[a-]", "a\\", "[-a]"] {
            let err = PatternMatcher::new(["ok", bad]).unwrap_err();
            match err {
                IgnoreError::BadPattern { line, .. } => assert_eq!(line, 2, "{bad}"),
                other => panic!("{bad}: unexpected {other}"),
            }
        }
        assert!(matches!(
            PatternMatcher::new(["!"]),
            Err(IgnoreError::LoneExclamation { line: 1, .. })
        ));
    }

    #[test]
    fn ignore_file_parsing() {
        let text =
            "\u{feff}# comment\n  /abs/path  \n!  ./keep//me/\n\n #not a comment\r\nsub/../x\n/\n";
        let got: Vec<String> = parse_ignore_file(text)
            .into_iter()
            .map(|l| l.pattern)
            .collect();
        assert_eq!(got, ["abs/path", "!keep/me", "#not a comment", "x", "/"]);
    }
}
