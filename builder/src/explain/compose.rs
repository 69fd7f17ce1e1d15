//! Compose files: a service as the [`Overrides`] it puts on its image,
//! by Compose's rules:
//! - `entrypoint` and `command` take a list, or a string that Compose
//!   splits into words as a shell would (no shell runs it); `null` or
//!   absent keeps the image's value;
//! - a non-empty `entrypoint` drops the image's CMD (as `docker run
//!   --entrypoint`); an empty one (`""`, `[]`) is no entrypoint, and the
//!   image's CMD then runs unless `command` is given;
//! - `working_dir`, `user` replace WORKDIR and USER; `environment` (a map,
//!   or a list of `K=V`) is set over the image's ENV; `init: true` runs
//!   docker-init as PID 1; `stop_signal`, `stop_grace_period` (10 s);
//! - the file is interpolated first: `${VAR}`, `$VAR`, `${VAR:-default}`,
//!   `${VAR-default}` from the environment kiln runs in, `$$` is `$`.

use super::kube::ManifestError;
use super::launch::{Given, Overrides};
use super::yaml::{parse_documents, Node, Value};
use super::{Source, Warning};

/// A service of a Compose file.
#[derive(Debug, Clone)]
pub struct ComposeService {
    pub name: String,
    /// `image:` (`None`: a service with only `build:`).
    pub image: Option<String>,
    /// `build:` context (the string, or `context:`), when given.
    pub build_context: Option<String>,
    pub line: usize,
    pub overrides: Overrides,
}

/// The environment Compose interpolates the file with.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The service named `name` (the only one when `None`) of the Compose file.
pub fn service(
    text: &str,
    file: &str,
    name: Option<&str>,
    env: Lookup<'_>,
) -> Result<ComposeService, ManifestError> {
    let docs = parse_documents(text, file)?;
    let select = |message: String| ManifestError::Select {
        file: file.to_string(),
        message,
    };
    let services = docs
        .first()
        .and_then(|d| d.get("services"))
        .ok_or_else(|| select("no services: section".into()))?;
    let Value::Map(entries) = &services.value else {
        return Err(select("services: is not a map".into()));
    };
    let names: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    let found = match name {
        Some(n) => entries.iter().find(|(k, _)| k == n).ok_or_else(|| {
            select(format!(
                "no service named {n:?}; it has: {}",
                names.join(", ")
            ))
        })?,
        None if entries.len() == 1 => &entries[0],
        None => {
            return Err(select(format!(
                "several services, choose one with --service: {}",
                names.join(", ")
            )))
        }
    };
    let reader = Reader {
        file,
        env,
        warnings: Vec::new(),
    };
    reader.service(&found.0, &found.1)
}

struct Reader<'a> {
    file: &'a str,
    env: Lookup<'a>,
    warnings: Vec<Warning>,
}

impl Reader<'_> {
    fn source(&self, field: &str, node: &Node) -> Source {
        Source {
            line: Some(node.line),
            instruction: Some(field.to_string()),
            file: Some(self.file.to_string()),
            ..Source::new("compose")
        }
    }

    fn invalid(&self, node: &Node, message: String) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_string(),
            line: node.line,
            message,
        }
    }

    /// A scalar, interpolated.
    fn text(&mut self, node: &Node, field: &str) -> Result<String, ManifestError> {
        let raw = node
            .as_str()
            .ok_or_else(|| self.invalid(node, format!("{field} is not a string")))?;
        let (text, unset) = interpolate(raw, self.env).map_err(|m| self.invalid(node, m))?;
        for name in unset {
            self.warnings.push(Warning {
                code: "ComposeVariableUnset",
                message: format!(
                    "{field}: the {name} variable is not set: Compose substitutes an empty string"
                ),
                line: Some(node.line),
                file: Some(self.file.to_string()),
                ..Default::default()
            });
        }
        Ok(text)
    }

    fn service(mut self, name: &str, node: &Node) -> Result<ComposeService, ManifestError> {
        let mut ov = Overrides {
            kind: "compose",
            ..Default::default()
        };
        let image = match node.get("image").filter(|n| !n.is_null()) {
            Some(n) => Some(self.text(n, "image")?),
            None => None,
        };
        let build_context = match node.get("build") {
            Some(b) => match b.get("context").unwrap_or(b).as_str() {
                Some(_) => Some(self.text(b.get("context").unwrap_or(b), "build")?),
                None => None,
            },
            None => None,
        };
        for field in ["entrypoint", "command"] {
            let Some(n) = node.get(field).filter(|n| !n.is_null()) else {
                continue;
            };
            let words = self.words(n, field)?;
            let given = Some(Given::new(words, self.source(field, n)));
            if field == "entrypoint" {
                ov.entrypoint = given;
            } else {
                ov.cmd = given;
            }
        }
        for (field, slot) in [("working_dir", 0), ("user", 1), ("stop_signal", 2)] {
            let Some(n) = node.get(field).filter(|n| !n.is_null()) else {
                continue;
            };
            let given = Some(Given::new(self.text(n, field)?, self.source(field, n)));
            match slot {
                0 => ov.workdir = given,
                1 => ov.user = given,
                _ => ov.stop_signal = given,
            }
        }
        if let Some(n) = node.get("init") {
            ov.init = Some(Given::new(
                n.as_str() == Some("true"),
                self.source("init", n),
            ));
        }
        if let Some(n) = node.get("stop_grace_period") {
            let text = self.text(n, "stop_grace_period")?;
            let seconds = duration_seconds(&text).ok_or_else(|| {
                self.invalid(n, format!("stop_grace_period {text:?} is not a duration"))
            })?;
            ov.stop_timeout = Some(Given::new(seconds, self.source("stop_grace_period", n)));
        }
        if let Some(n) = node.get("environment") {
            self.environment(n, &mut ov)?;
        }
        ov.warnings = self.warnings;
        Ok(ComposeService {
            name: name.to_string(),
            image,
            build_context,
            line: node.line,
            overrides: ov,
        })
    }

    /// `entrypoint`/`command`: a list as it is, a string split as a shell
    /// splits words.
    fn words(&mut self, node: &Node, field: &str) -> Result<Vec<String>, ManifestError> {
        match &node.value {
            Value::List(items) => items.iter().map(|i| self.text(i, field)).collect(),
            Value::Scalar(_) => {
                let text = self.text(node, field)?;
                split_words(&text).ok_or_else(|| {
                    self.invalid(node, format!("{field}: unbalanced quotes in {text:?}"))
                })
            }
            _ => Err(self.invalid(node, format!("{field} must be a string or a list"))),
        }
    }

    fn environment(&mut self, node: &Node, ov: &mut Overrides) -> Result<(), ManifestError> {
        let pairs: Vec<(String, Option<&Node>, &Node)> = match &node.value {
            Value::Map(entries) => entries
                .iter()
                .map(|(k, v)| (k.clone(), Some(v), v))
                .collect(),
            Value::List(items) => items
                .iter()
                .map(|i| (i.as_str().unwrap_or("").to_string(), None, i))
                .collect(),
            _ => return Err(self.invalid(node, "environment must be a map or a list".into())),
        };
        for (key, value, at) in pairs {
            let (key, value) = match value {
                Some(v) if v.is_null() => (key, None),
                Some(v) => (key, Some(self.text(v, "environment")?)),
                None => {
                    let entry = self.text(at, "environment")?;
                    match entry.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (entry, None),
                    }
                }
            };
            // `KEY` alone takes the value from the environment Compose runs in.
            let value = match value {
                Some(v) => v,
                None => match (self.env)(&key) {
                    Some(v) => v,
                    None => continue,
                },
            };
            let source = self.source(&format!("environment {key}"), at);
            ov.env.push(Given::new((key, value), source));
        }
        Ok(())
    }
}

/// Compose's interpolation; the names that were unset (substituted by
/// an empty string). `${VAR:?message}` of an unset VAR is an error.
pub fn interpolate(text: &str, env: Lookup<'_>) -> Result<(String, Vec<String>), String> {
    let mut out = String::new();
    let mut unset = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            out.push_str(&braced(&inner[..end], env, &mut unset)?);
            rest = &inner[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                out.push('$');
            } else {
                let name = &after[..len];
                match env(name) {
                    Some(v) => out.push_str(&v),
                    None => unset.push(name.to_string()),
                }
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok((out, unset))
}

/// `${NAME}`, `${NAME:-d}`, `${NAME-d}`, `${NAME:?e}`, `${NAME?e}`.
fn braced(inner: &str, env: Lookup<'_>, unset: &mut Vec<String>) -> Result<String, String> {
    let split = inner.find([':', '-', '?']).unwrap_or(inner.len());
    let (name, op) = inner.split_at(split);
    let value = env(name);
    let empty = value.as_deref().is_none_or(str::is_empty);
    let pick = |colon: bool| if colon { empty } else { value.is_none() };
    if let Some(default) = op.strip_prefix(":-").or_else(|| op.strip_prefix('-')) {
        return Ok(if pick(op.starts_with(':')) {
            default.to_string()
        } else {
            value.unwrap_or_default()
        });
    }
    if let Some(message) = op.strip_prefix(":?").or_else(|| op.strip_prefix('?')) {
        if pick(op.starts_with(':')) {
            return Err(format!(
                "required variable {name} is missing a value: {message}"
            ));
        }
        return Ok(value.unwrap_or_default());
    }
    if value.is_none() {
        unset.push(name.to_string());
    }
    Ok(value.unwrap_or_default())
}

/// Splits a command string into words as a POSIX shell would, quotes
/// and backslashes honoured, nothing expanded; `None` for an unclosed quote.
pub fn split_words(text: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => word.push(c),
                            '\n' => {}
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// A Compose duration (`1m30s`, `10s`, `500ms`, a number of seconds) in
/// whole seconds, rounded up.
fn duration_seconds(text: &str) -> Option<u64> {
    if let Ok(n) = text.parse::<u64>() {
        return Some(n);
    }
    let mut micros: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3_600_000_000.0,
            "m" => 60_000_000.0,
            "s" => 1_000_000.0,
            "ms" => 1_000.0,
            "us" | "µs" => 1.0,
            _ => return None,
        };
        micros += (number * scale) as u64;
        rest = &rest[unit_len..];
    }
    Some(micros.div_ceil(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("1.2".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation() {
        let i = |t: &str| interpolate(t, &env).unwrap();
        assert_eq!(i("app:${TAG}").0, "app:1.2");
        assert_eq!(i("$TAG-x").0, "1.2-x");
        assert_eq!(i("echo $$HOME").0, "echo $HOME");
        assert_eq!(i("${EMPTY:-d} ${EMPTY-d} ${NONE-d}").0, "d  d");
        assert_eq!(i("${NONE}"), (String::new(), vec!["NONE".to_string()]));
        assert!(interpolate("${NONE:?needed}", &env).is_err());
    }

    #[test]
    fn words() {
        assert_eq!(
            split_words(r#"sh -c 'echo "$HOME"' "a b" c\ d"#).unwrap(),
            ["sh", "-c", "echo \"$HOME\"", "a b", "c d"]
        );
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
        assert!(split_words("'open").is_none());
    }

    #[test]
    fn durations() {
        assert_eq!(duration_seconds("1m30s"), Some(90));
        assert_eq!(duration_seconds("500ms"), Some(1));
        assert_eq!(duration_seconds("15"), Some(15));
        assert_eq!(duration_seconds("x"), None);
    }

    #[test]
    fn a_service() {
        let text = "services:\n  web:\n    image: app:${TAG}\n    entrypoint: \"\"\n    command: [\"serve\", \"--port\", \"80\"]\n    environment:\n      A: \"1\"\n      B:\n    init: true\n  db:\n    image: db\n";
        let s = service(text, "c.yml", Some("web"), &env).unwrap();
        assert_eq!(s.image.as_deref(), Some("app:1.2"));
        assert_eq!(
            s.overrides.entrypoint.as_ref().unwrap().value,
            Vec::<String>::new()
        );
        assert_eq!(
            s.overrides.entrypoint.as_ref().unwrap().source.line,
            Some(4)
        );
        assert_eq!(
            s.overrides.cmd.as_ref().unwrap().value,
            ["serve", "--port", "80"]
        );
        assert_eq!(s.overrides.env.len(), 1);
        assert!(s.overrides.init.as_ref().unwrap().value);
        assert!(service(text, "c.yml", None, &env).is_err());
    }
}
