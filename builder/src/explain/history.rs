//! Where an image's config values came from when its Dockerfile is not at
//! hand: the image's `history`, each entry's `created_by` read as the
//! instruction it records.
//!
//! Builders write `created_by` in a few ways, all read here:
//! - BuildKit: the instruction (`ENV A=1 B=2`, `CMD ["x" "y"]` with Go's
//!   `%q` list, `EXPOSE [80/tcp]`, `RUN /bin/sh -c … # buildkit`);
//! - Docker's legacy builder: `/bin/sh -c #(nop)  CMD ["x"]` for config
//!   instructions, `/bin/sh -c …` (or `|N K=V … /bin/sh -c …` with build
//!   arguments) for RUN;
//! - anything else (`kiln import`, a tool's own words): opaque, the text
//!   does not say what it set.
//!
//! Each field is credited to the last entry that set it
//! ([`ImageHistory::setter`]); entries below the base boundary (the
//! history of the image it was built on, when known) come with the base.

use kiln_layers::oci::History;
use kiln_parser::instructions::{self as ins, Instruction};

/// The instructions a history entry can record.
const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
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

/// One history entry, read.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its position in the config's `history` (0: the oldest).
    pub index: usize,
    /// `created_by` as recorded.
    pub created_by: String,
    /// The instruction it records (`ENV`, `CMD`, …); `None`: the text
    /// does not say.
    pub keyword: Option<&'static str>,
    /// The instruction's text, prefixes and the `# buildkit` suffix removed.
    pub text: String,
    /// The instruction as kiln's parser reads `text`, when it does.
    parsed: Option<Instruction>,
}

/// An image's history, read.
#[derive(Debug, Clone, Default)]
pub struct ImageHistory {
    pub entries: Vec<Entry>,
    /// Entries `0..base_entries` came with the base image (0: not known).
    pub base_entries: usize,
}

impl ImageHistory {
    /// Reads every entry; `base_entries` of them are the base image's.
    pub fn new(history: &[History], base_entries: usize) -> ImageHistory {
        let entries = history
            .iter()
            .enumerate()
            .map(|(index, h)| Entry::read(index, h.created_by.as_deref().unwrap_or("")))
            .collect();
        ImageHistory {
            entries,
            base_entries: base_entries.min(history.len()),
        }
    }

    /// The last entry that set `field` (`cmd`, `env.PATH`, `labels.K`, …).
    pub fn setter(&self, field: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.sets(field))
    }

    /// The last entry whose text does not say what it set.
    pub fn last_opaque(&self) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.keyword.is_none())
    }

    /// Whether entry `index` came with the base image.
    pub fn in_base(&self, index: usize) -> bool {
        index < self.base_entries
    }

    /// The ENTRYPOINT entry that cleared the CMD an earlier entry set
    /// (BuildKit and Docker clear CMD at an ENTRYPOINT unless the stage
    /// sets one after it), and that CMD as recorded; for an image with no
    /// CMD.
    pub fn cmd_reset(&self) -> Option<(&Entry, Option<Vec<String>>)> {
        let entrypoint = self.setter("entrypoint")?;
        let cmd = self.setter("cmd")?;
        (cmd.index < entrypoint.index).then(|| (entrypoint, cmd.command()))
    }
}

impl Entry {
    fn read(index: usize, created_by: &str) -> Entry {
        let text = instruction_text(created_by);
        let word = text.split_whitespace().next().unwrap_or("");
        let keyword = KEYWORDS.iter().copied().find(|k| *k == word);
        let parsed = keyword.and_then(|_| parse_instruction(&text));
        Entry {
            index,
            created_by: created_by.to_string(),
            keyword,
            text,
            parsed,
        }
    }

    /// The instruction's arguments (the text after the keyword).
    fn arguments(&self) -> &str {
        let keyword = self.keyword.unwrap_or("");
        self.text[keyword.len().min(self.text.len())..].trim()
    }

    /// Whether this entry set `field`.
    pub fn sets(&self, field: &str) -> bool {
        let Some(keyword) = self.keyword else {
            return false;
        };
        let (head, key) = match field.split_once('.') {
            Some((h, k)) => (h, Some(k)),
            None => (field, None),
        };
        match (head, keyword, key) {
            ("cmd", "CMD", _)
            | ("entrypoint", "ENTRYPOINT", _)
            | ("user", "USER", _)
            | ("workdir", "WORKDIR", _)
            | ("shell", "SHELL", _)
            | ("stop_signal", "STOPSIGNAL", _)
            | ("healthcheck", "HEALTHCHECK", _)
            | ("onbuild", "ONBUILD", _) => true,
            ("env", "ENV", Some(k)) => self.sets_pair(k),
            ("labels", "LABEL", Some(k)) => self.sets_pair(k),
            ("exposed_ports", "EXPOSE", Some(p)) => self.list_words().iter().any(|w| {
                let w = w.split(':').next().unwrap_or(w);
                w == p || format!("{w}/tcp") == p
            }),
            ("volumes", "VOLUME", Some(v)) => self.list_words().iter().any(|w| w == v),
            _ => false,
        }
    }

    /// Whether an ENV or LABEL entry names `key`: the parsed pairs, else
    /// (a value with spaces the parser cannot split) `key=` at the start
    /// or after a space.
    fn sets_pair(&self, key: &str) -> bool {
        match &self.parsed {
            Some(Instruction::Env(ins::Env { pairs, .. }))
            | Some(Instruction::Label(ins::Label { pairs, .. })) => {
                pairs.iter().any(|p| unquote(&p.key) == key)
            }
            _ => {
                let args = self.arguments();
                let needle = format!("{key}=");
                args.starts_with(&needle) || args.contains(&format!(" {needle}"))
            }
        }
    }

    /// EXPOSE and VOLUME arguments as words: BuildKit's `[a b]`, the
    /// legacy builder's `map[a:{}]` or `["a"]`, or plain words.
    fn list_words(&self) -> Vec<String> {
        let args = self.arguments();
        let inner = args
            .strip_prefix("map[")
            .or_else(|| args.strip_prefix('['))
            .map(|s| s.strip_suffix(']').unwrap_or(s))
            .unwrap_or(args);
        inner
            .split(|c: char| c.is_whitespace() || c == ',')
            .map(|w| w.trim_matches('"').trim_end_matches(":{}").to_string())
            .filter(|w| !w.is_empty())
            .collect()
    }

    /// A CMD or ENTRYPOINT entry's command: its list (JSON, or Go's `%q`
    /// list), else its text as a shell command.
    pub fn command(&self) -> Option<Vec<String>> {
        let args = self.arguments();
        if args.starts_with('[') {
            return parse_quoted_list(args);
        }
        (!args.is_empty()).then(|| vec![args.to_string()])
    }
}

/// `created_by` without the legacy builder's `/bin/sh -c #(nop)` prefix
/// and BuildKit's `# buildkit` suffix; a legacy RUN (`/bin/sh -c CMD`,
/// `|N K=V … /bin/sh -c CMD`) becomes `RUN /bin/sh -c CMD`.
pub fn instruction_text(created_by: &str) -> String {
    let text = created_by.trim();
    let text = text.strip_suffix("# buildkit").unwrap_or(text).trim_end();
    if let Some(rest) = text.strip_prefix("/bin/sh -c #(nop)") {
        return rest.trim().to_string();
    }
    let text = strip_build_args(text);
    if text.starts_with("/bin/sh -c ") {
        return format!("RUN {text}");
    }
    text.to_string()
}

/// Drops the legacy builder's `|N K=V …` build-argument prefix of a RUN.
fn strip_build_args(text: &str) -> &str {
    let Some(rest) = text.strip_prefix('|') else {
        return text;
    };
    let mut words = rest.splitn(2, ' ');
    let Some(count) = words.next().and_then(|n| n.parse::<usize>().ok()) else {
        return text;
    };
    let mut rest = words.next().unwrap_or("");
    for _ in 0..count {
        rest = rest.split_once(' ').map(|(_, r)| r).unwrap_or("");
    }
    rest
}

/// The instruction kiln's parser reads in `text` (one line).
fn parse_instruction(text: &str) -> Option<Instruction> {
    if text.contains('\n') {
        return None;
    }
    let source = format!("FROM scratch\n{text}\n");
    let ast = kiln_parser::parse(&source, "history").ok()?;
    let df = ins::from_ast(&ast).ok()?;
    df.stages
        .into_iter()
        .next()?
        .instructions
        .into_iter()
        .next()
}

fn unquote(word: &str) -> &str {
    word.strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .unwrap_or(word)
}

/// A list of quoted strings, `["a", "b"]` (JSON) or `["a" "b"]` (Go's
/// `%q` of a string slice), with Go's escapes.
pub fn parse_quoted_list(text: &str) -> Option<Vec<String>> {
    let mut chars = text.trim().chars().peekable();
    if chars.next()? != '[' {
        return None;
    }
    let mut out = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        match chars.next()? {
            ']' => return chars.next().is_none().then_some(out),
            '"' => out.push(quoted_string(&mut chars)?),
            _ => return None,
        }
    }
}

/// The rest of a double-quoted string, its opening quote read.
fn quoted_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    let mut s = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(s),
            '\\' => {
                let c = chars.next()?;
                let simple = match c {
                    'n' => Some('\n'),
                    't' => Some('\t'),
                    'r' => Some('\r'),
                    'a' => Some('\x07'),
                    'b' => Some('\x08'),
                    'f' => Some('\x0c'),
                    'v' => Some('\x0b'),
                    '"' | '\\' | '\'' | '/' => Some(c),
                    _ => None,
                };
                match simple {
                    Some(c) => s.push(c),
                    None => s.push(escaped_code(c, chars)?),
                }
            }
            c => s.push(c),
        }
    }
}

/// `\xHH`, `\uHHHH`, `\UHHHHHHHH` and octal `\NNN`.
fn escaped_code(kind: char, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
    let (digits, radix, first) = match kind {
        'x' => (2, 16, None),
        'u' => (4, 16, None),
        'U' => (8, 16, None),
        '0'..='7' => (2, 8, Some(kind)),
        _ => return None,
    };
    let mut text: String = first.into_iter().collect();
    for _ in 0..digits {
        text.push(chars.next()?);
    }
    char::from_u32(u32::from_str_radix(&text, radix).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(lines: &[&str]) -> ImageHistory {
        let h: Vec<History> = lines
            .iter()
            .map(|l| History {
                created_by: Some(l.to_string()),
                ..Default::default()
            })
            .collect();
        ImageHistory::new(&h, 0)
    }

    #[test]
    fn buildkit_and_legacy_texts() {
        let h = history(&[
            "/bin/sh -c #(nop) ADD file:abc in / ",
            "/bin/sh -c #(nop)  CMD [\"sh\"]",
            "|2 A=1 B=2 /bin/sh -c echo $A",
            "ENV APP=web PORT=8080",
            "RUN /bin/sh -c make # buildkit",
            "EXPOSE [8080/tcp 53/udp]",
            "VOLUME [/data /logs]",
            "kiln import",
            "LABEL a=b c=d e f",
        ]);
        let keywords: Vec<_> = h.entries.iter().map(|e| e.keyword).collect();
        assert_eq!(
            keywords,
            [
                Some("ADD"),
                Some("CMD"),
                Some("RUN"),
                Some("ENV"),
                Some("RUN"),
                Some("EXPOSE"),
                Some("VOLUME"),
                None,
                Some("LABEL")
            ]
        );
        assert_eq!(h.entries[2].text, "RUN /bin/sh -c echo $A");
        assert_eq!(h.setter("cmd").unwrap().index, 1);
        assert_eq!(h.setter("env.PORT").unwrap().index, 3);
        assert!(h.setter("env.PATH").is_none());
        assert_eq!(h.setter("exposed_ports.8080/tcp").unwrap().index, 5);
        assert_eq!(h.setter("exposed_ports.53/udp").unwrap().index, 5);
        assert_eq!(h.setter("volumes./logs").unwrap().index, 6);
        assert_eq!(h.setter("labels.c").unwrap().index, 8);
        assert_eq!(h.last_opaque().unwrap().index, 7);
        assert_eq!(h.entries[1].command().unwrap(), ["sh"]);
    }

    #[test]
    fn legacy_expose_map_and_plain_port() {
        let h = history(&[
            "/bin/sh -c #(nop)  EXPOSE map[80/tcp:{}]",
            "/bin/sh -c #(nop)  EXPOSE 9000",
        ]);
        assert_eq!(h.setter("exposed_ports.80/tcp").unwrap().index, 0);
        assert_eq!(h.setter("exposed_ports.9000/tcp").unwrap().index, 1);
    }

    #[test]
    fn entrypoint_after_cmd_is_a_reset() {
        let h = history(&[
            "CMD [\"sh\" \"-c\" \"echo \\\"hi\\\"\"]",
            "ENTRYPOINT [\"/app\"]",
        ]);
        let (entry, dropped) = h.cmd_reset().unwrap();
        assert_eq!(entry.index, 1);
        assert_eq!(dropped.unwrap(), ["sh", "-c", "echo \"hi\""]);
        let h = history(&["ENTRYPOINT [\"/app\"]", "CMD [\"x\"]"]);
        assert!(h.cmd_reset().is_none());
    }

    #[test]
    fn quoted_lists() {
        assert_eq!(
            parse_quoted_list(r#"["a", "b\u00e9", "\x41"]"#).unwrap(),
            ["a", "bé", "A"]
        );
        assert_eq!(parse_quoted_list(r#"["a" "b c"]"#).unwrap(), ["a", "b c"]);
        assert_eq!(parse_quoted_list("[]").unwrap(), Vec::<String>::new());
        assert!(parse_quoted_list("[a]").is_none());
        assert!(parse_quoted_list("[\"a\"] x").is_none());
    }
}
