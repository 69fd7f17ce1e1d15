//! What `kiln build --call` answers instead of building, in the forms
//! buildx prints BuildKit's frontend subrequests: `targets` (the stages a
//! Dockerfile can build, `frontend/subrequests/targets`) and `check` (the
//! build checks' findings as BuildKit's lint results,
//! `frontend/subrequests/lint`), each as buildx's text or as the JSON the
//! frontend returns (`format=json`). And the Dockerfile excerpt those and a
//! failed build show ([`excerpt`], BuildKit's `errdefs.Source.Print`).
//!
//! ```
//! use kiln_builder::subrequests::targets;
//!
//! let dockerfile = b"# base the build's base\nFROM alpine AS base\nFROM base\n";
//! let ast = kiln_parser::parse_bytes(dockerfile, "Dockerfile").unwrap();
//! let list = targets(&ast, dockerfile).unwrap();
//! assert_eq!(
//!     list.text(),
//!     "TARGET    DESCRIPTION\nbase      the build's base\n(default) \n"
//! );
//! assert!(list.json().contains("\"default\": true"));
//! ```

use base64::Engine as _;
use serde::Serialize;

use crate::lint::Report;

/// BuildKit's `pb.Location`: ranges of lines in one source, as JSON leaves
/// out what is zero.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Location {
    #[serde(rename = "sourceIndex", skip_serializing_if = "is_zero")]
    pub source_index: i32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Range>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Range {
    pub start: Position,
    pub end: Position,
}

#[derive(Debug, Clone, Serialize)]
pub struct Position {
    #[serde(skip_serializing_if = "is_zero")]
    pub line: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl Location {
    /// Lines `start..=end` of the first source, one range a line, as
    /// BuildKit's parser gives an instruction's location (`toRanges`).
    pub fn lines(start: usize, end: usize) -> Location {
        let line = |n: usize| Position {
            line: i32::try_from(n).unwrap_or(i32::MAX),
        };
        Location {
            source_index: 0,
            ranges: (start..=end.max(start))
                .map(|n| Range {
                    start: line(n),
                    end: line(n),
                })
                .collect(),
        }
    }
}

/// JSON as Go's `json.MarshalIndent(v, "", "  ")` writes it: serde's
/// pretty form, with `<`, `>`, `&`, U+2028 and U+2029 escaped as Go
/// escapes them in strings (they appear nowhere else in JSON).
fn go_json<T: Serialize>(value: &T) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes as Go's `encoding/json` writes a `[]byte`: standard base64.
fn base64_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[derive(Debug, Serialize)]
struct Source(#[serde(serialize_with = "base64_bytes")] Vec<u8>);

/// The stages of a Dockerfile, as BuildKit's `ListTargets` gives them.
#[derive(Debug, Serialize)]
pub struct TargetList {
    pub targets: Vec<Target>,
    sources: Vec<Source>,
}

/// One stage: its name (lower-cased), whether it is the default (the last
/// one), its `# NAME description` comment, its base and `--platform` as
/// written, and where its FROM is.
#[derive(Debug, Serialize)]
pub struct Target {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub base: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform: String,
    pub location: Location,
}

/// The targets of `dockerfile`, parsed as `ast`; a Dockerfile that does
/// not parse into stages is an error, as for BuildKit.
pub fn targets(
    ast: &kiln_parser::ast::Dockerfile,
    dockerfile: &[u8],
) -> Result<TargetList, kiln_parser::ParseError> {
    let parsed = kiln_parser::instructions::from_ast(ast)?;
    let count = parsed.stages.len();
    let targets = parsed
        .stages
        .iter()
        .map(|stage| {
            let name = stage.name.clone().unwrap_or_default();
            Target {
                description: kiln_parser::instructions::doc_comment(&stage.from.comments, &name)
                    .unwrap_or_default(),
                name,
                default: stage.index + 1 == count,
                base: stage.base.clone(),
                platform: stage.platform.clone().unwrap_or_default(),
                location: Location::lines(stage.from.span.start_line(), stage.from.span.end_line()),
            }
        })
        .collect();
    Ok(TargetList {
        targets,
        sources: vec![Source(dockerfile.to_vec())],
    })
}

impl TargetList {
    /// As buildx prints it: a `TARGET DESCRIPTION` table (Go's tabwriter,
    /// one space of padding), the default stage marked.
    pub fn text(&self) -> String {
        let rows: Vec<(String, &str)> = self
            .targets
            .iter()
            .map(|t| {
                let name = match (t.name.as_str(), t.default) {
                    ("", true) => "(default)".to_string(),
                    (name, true) => format!("{name} (default)"),
                    (name, false) => name.to_string(),
                };
                (name, t.description.as_str())
            })
            .collect();
        let mut table = vec![("TARGET".to_string(), "DESCRIPTION")];
        table.extend(rows);
        tabwriter(&table)
    }

    /// The JSON the frontend returns (`format=json`).
    pub fn json(&self) -> String {
        go_json(self)
    }
}

/// Two columns as Go's `tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)` writes
/// `a\tb\n` lines: the first padded to its widest cell (in characters)
/// plus one space, the second as it is.
fn tabwriter(rows: &[(String, &str)]) -> String {
    let width = rows
        .iter()
        .map(|(a, _)| a.chars().count())
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = String::new();
    for (a, b) in rows {
        let pad = width - a.chars().count();
        out.push_str(a);
        out.extend(std::iter::repeat_n(' ', pad));
        out.push_str(b);
        out.push('\n');
    }
    out
}

/// The build checks' report as BuildKit's lint results.
#[derive(Debug, Serialize)]
pub struct LintResults {
    /// `null` when there are none, as Go writes a nil slice.
    warnings: Option<Vec<Warning>>,
    sources: Vec<SourceInfo>,
    #[serde(rename = "buildError", skip_serializing_if = "Option::is_none")]
    error: Option<LintError>,
    /// The Dockerfile's name in the text's excerpts: the path buildx maps
    /// the source to (`DockerfileMappingSrc`: `-f` as given, else the
    /// context's path joined with `Dockerfile`, `stdin` for standard input).
    #[serde(skip)]
    shown: String,
}

#[derive(Debug, Serialize)]
struct Warning {
    #[serde(rename = "ruleName")]
    rule_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    detail: String,
    location: Location,
}

/// BuildKit's `pb.SourceInfo`, without the LLB definition of the
/// Dockerfile's source (kiln makes no LLB).
#[derive(Debug, Serialize)]
struct SourceInfo {
    filename: String,
    #[serde(serialize_with = "base64_bytes")]
    data: Vec<u8>,
    language: &'static str,
}

#[derive(Debug, Serialize)]
struct LintError {
    message: String,
    location: Location,
}

impl LintResults {
    /// `report`'s findings on `dockerfile` (named `name` in the JSON, shown
    /// as `shown` in the text), in the order it gives them: by line, where
    /// BuildKit's JSON lists them in the order its rules fired (its text
    /// sorts them by line too).
    pub fn of(report: &Report, dockerfile: &[u8], name: &str, shown: &str) -> LintResults {
        let warnings: Vec<Warning> = report
            .findings
            .iter()
            .map(|f| Warning {
                rule_name: f.rule.to_string(),
                description: f.description.to_string(),
                url: f.url.to_string(),
                detail: f.message.clone(),
                location: Location::lines(f.line, f.end_line),
            })
            .collect();
        let mut error = report.error.as_ref().map(|e| LintError {
            message: e
                .buildkit_message
                .clone()
                .unwrap_or_else(|| e.message.clone()),
            location: match e.line {
                Some(line) => Location::lines(line, line),
                None => Location::default(),
            },
        });
        // `# check=error=true`: the findings fail the request, as BuildKit's
        // linter's error says (its rules in the order they were found,
        // where Go's map gives them in any order).
        if error.is_none() && report.error_on_warning && !report.findings.is_empty() {
            let mut rules: Vec<&str> = Vec::new();
            for f in &report.findings {
                if !rules.contains(&f.rule) {
                    rules.push(f.rule);
                }
            }
            error = Some(LintError {
                message: format!("lint violation found for rules: {}", rules.join(", ")),
                location: Location::default(),
            });
        }
        LintResults {
            warnings: Some(warnings).filter(|w| !w.is_empty()),
            sources: vec![SourceInfo {
                filename: name.to_string(),
                data: dockerfile.to_vec(),
                language: "Dockerfile",
            }],
            error,
            shown: shown.to_string(),
        }
    }

    fn warnings(&self) -> &[Warning] {
        self.warnings.as_deref().unwrap_or_default()
    }

    /// Whether there were warnings (buildx separates the error from them).
    pub fn has_warnings(&self) -> bool {
        !self.warnings().is_empty()
    }

    /// Whether the checks found anything (BuildKit's `result.statuscode`
    /// 1).
    pub fn found_anything(&self) -> bool {
        self.has_warnings() || self.error.is_some()
    }

    /// The JSON the frontend returns (`format=json`).
    pub fn json(&self) -> String {
        go_json(self)
    }

    /// As buildx prints the lint request: a count, each warning with its
    /// rule, URL, detail and the Dockerfile around it, sorted by line
    /// (`LintResults.PrintTo`), or that nothing was found.
    pub fn text(&self) -> String {
        let mut out = String::new();
        match self.warnings().len() {
            0 if self.error.is_none() => out.push_str("Check complete, no warnings found.\n"),
            0 => {}
            1 => out.push_str("Check complete, 1 warning has been found!\n"),
            n => out.push_str(&format!("Check complete, {n} warnings have been found!\n")),
        }
        let mut warnings: Vec<&Warning> = self.warnings().iter().collect();
        warnings.sort_by_key(|w| w.location.ranges.first().map_or(0, |r| r.start.line));
        for w in warnings {
            out.push_str(&format!("\nWARNING: {}", w.rule_name));
            if !w.url.is_empty() {
                out.push_str(&format!(" - {}", w.url));
            }
            out.push_str(&format!("\n{}\n", w.detail));
            out.push_str(&self.excerpt(&w.location));
        }
        out
    }

    /// The error, as buildx prints it after the warnings
    /// (`PrintErrorTo`): its message, then the Dockerfile around it.
    pub fn error_text(&self) -> Option<String> {
        let error = self.error.as_ref()?;
        let mut out = String::new();
        out.push_str(&error.message);
        out.push('\n');
        out.push_str(&self.excerpt(&error.location));
        Some(out)
    }

    /// The Dockerfile around `location` ([`excerpt`]).
    fn excerpt(&self, location: &Location) -> String {
        match self.sources.first() {
            Some(source) => excerpt(
                &self.shown,
                &String::from_utf8_lossy(&source.data),
                location,
            ),
            None => String::new(),
        }
    }
}

/// The Dockerfile `text` (named `name`) around `location`, as BuildKit's
/// `errdefs.Source.Print` shows a failed build's or a check's place: its
/// lines marked `>>>` between their neighbours (four lines of context
/// around one line, two around several, taken above and below in turn),
/// each line as kiln shows Dockerfile lines everywhere (URL credentials
/// masked, a very long line cut, control characters escaped). Nothing for
/// a location outside the text.
///
/// ```
/// use kiln_builder::subrequests::{excerpt, Location};
///
/// let text = "FROM a\nWORKDIR /src\nRUN make\nCMD [\"app\"]\n";
/// assert_eq!(
///     excerpt("Dockerfile", text, &Location::lines(3, 3)),
///     "Dockerfile:3\n--------------------\n   \
///      1 |     FROM a\n   2 |     WORKDIR /src\n   3 | >>> RUN make\n   \
///      4 |     CMD [\"app\"]\n   5 |     \n--------------------\n"
/// );
/// ```
pub fn excerpt(name: &str, text: &str, location: &Location) -> String {
    // Split as Go splits it: a last newline leaves an empty last line.
    let lines: Vec<&str> = text.split('\n').collect();
    let Some(first) = location.ranges.iter().map(|r| r.start.line).min() else {
        return String::new();
    };
    let last = location
        .ranges
        .iter()
        .map(|r| r.end.line.max(r.start.line))
        .max()
        .unwrap_or(first);
    let count = i32::try_from(lines.len()).unwrap_or(i32::MAX);
    if first > count || first < 1 {
        return String::new();
    }
    let (mut start, mut end) = (first, last.min(count));
    let pad = if end == start { 4 } else { 2 };
    let mut p = 0;
    while p < pad {
        if start > 1 {
            start -= 1;
            p += 1;
        }
        if end != count {
            end += 1;
            p += 1;
        }
        p += 1;
    }
    let marked = |n: i32| {
        location
            .ranges
            .iter()
            .any(|r| r.start.line <= n && r.end.line.max(r.start.line) >= n)
    };
    let mut out = format!("{name}:{first}\n--------------------\n");
    for n in start..=end {
        let prefix = if marked(n) { ">>>" } else { "   " };
        let line = usize::try_from(n - 1)
            .ok()
            .and_then(|i| lines.get(i))
            .copied()
            .unwrap_or("");
        let line = kiln_reference::redact_credentials(line);
        let line = kiln_parser::escape_control(&kiln_parser::shorten(&line)).into_owned();
        out.push_str(&format!(" {n:>3} | {prefix} {line}\n"));
    }
    out.push_str("--------------------\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(dockerfile: &[u8]) -> Result<TargetList, kiln_parser::ParseError> {
        targets(
            &kiln_parser::parse_bytes(dockerfile, "Dockerfile")?,
            dockerfile,
        )
    }

    #[test]
    fn targets_are_listed_as_buildkit_lists_them() {
        let dockerfile = b"ARG IMG=alpine\n\
            # build compiles <everything> & more\n\
            FROM --platform=$BUILDPLATFORM golang \\\n  AS Build\n\
            RUN make\n\
            # the description of another name\n\
            FROM ${IMG} AS test\n\
            FROM scratch\n";
        let list = of(dockerfile).unwrap();
        assert_eq!(
            list.text(),
            "TARGET    DESCRIPTION\n\
             build     compiles <everything> & more\n\
             test      \n\
             (default) \n"
        );
        let json: serde_json::Value = serde_json::from_str(&list.json()).unwrap();
        let build = &json["targets"][0];
        assert_eq!(build["name"], "build");
        assert_eq!(build["base"], "golang");
        assert_eq!(build["platform"], "$BUILDPLATFORM");
        assert!(build.get("default").is_none());
        // A FROM over two lines: a range for each, as BuildKit's toRanges.
        assert_eq!(
            build["location"],
            serde_json::json!({"ranges": [
                {"start": {"line": 3}, "end": {"line": 3}},
                {"start": {"line": 4}, "end": {"line": 4}}
            ]})
        );
        assert_eq!(json["targets"][1]["base"], "${IMG}");
        assert!(json["targets"][1].get("description").is_none());
        assert_eq!(json["targets"][2]["default"], true);
        assert!(json["targets"][2].get("name").is_none());
        let source = json["sources"][0].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(source)
            .unwrap();
        assert_eq!(decoded, dockerfile);
        // Go escapes these in strings.
        assert!(list
            .json()
            .contains("compiles \\u003ceverything\\u003e \\u0026 more"));
        // A named default stage.
        let list = of(b"FROM a AS one\nFROM b AS two\n").unwrap();
        assert_eq!(
            list.text(),
            "TARGET        DESCRIPTION\none           \ntwo (default) \n"
        );
        // One that does not parse.
        assert!(of(b"FROM a AS 1x\n").is_err());
    }

    #[test]
    fn the_excerpt_is_buildkits() {
        let text = b"FROM a\nRUN 1\nRUN 2\nRUN 3\nRUN 4\nRUN 5\nRUN 6\nRUN 7\n";
        let results = LintResults {
            warnings: None,
            sources: vec![SourceInfo {
                filename: "Dockerfile".into(),
                data: text.to_vec(),
                language: "Dockerfile",
            }],
            error: None,
            shown: "Dockerfile".into(),
        };
        assert!(
            results.json().contains("\"warnings\": null"),
            "{}",
            results.json()
        );
        // One line: up to four of context, taken on both sides in turn.
        assert_eq!(
            results.excerpt(&Location::lines(4, 4)),
            "Dockerfile:4\n--------------------\n   \
             2 |     RUN 1\n   3 |     RUN 2\n   4 | >>> RUN 3\n   \
             5 |     RUN 4\n   6 |     RUN 5\n--------------------\n"
        );
        // At the top: BuildKit's loop counts a step for the side that
        // could not grow too, so only two lines follow.
        assert_eq!(
            results.excerpt(&Location::lines(1, 1)),
            "Dockerfile:1\n--------------------\n   \
             1 | >>> FROM a\n   2 |     RUN 1\n   3 |     RUN 2\n--------------------\n"
        );
        // What is shown of a line: credentials masked, control characters
        // escaped.
        let results = LintResults {
            sources: vec![SourceInfo {
                filename: "Dockerfile".into(),
                data: b"FROM a\nADD https://me:pw@host/f /f\nRUN echo \x1b[31m\n".to_vec(),
                language: "Dockerfile",
            }],
            ..results
        };
        let shown = results.excerpt(&Location::lines(2, 3));
        assert!(
            shown.contains("ADD https://xxxxx:xxxxx@host/f /f"),
            "{shown}"
        );
        assert!(shown.contains("RUN echo \\x1b[31m"), "{shown}");
        let results = LintResults {
            sources: vec![SourceInfo {
                filename: "Dockerfile".into(),
                data: text.to_vec(),
                language: "Dockerfile",
            }],
            ..results
        };
        // Two lines: two of context.
        assert_eq!(
            results.excerpt(&Location::lines(3, 4)),
            "Dockerfile:3\n--------------------\n   \
             2 |     RUN 1\n   3 | >>> RUN 2\n   4 | >>> RUN 3\n   \
             5 |     RUN 4\n--------------------\n"
        );
    }
}
