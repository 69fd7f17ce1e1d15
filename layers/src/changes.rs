//! `--change` instructions for `kiln import` (Docker's `docker import
//! --change` syntax): CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL,
//! ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR, in JSON (exec) or shell form. A small
//! local reader: no variable expansion, no line continuations.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::oci::ContainerConfig;

/// Applies one `--change` line to `config`.
pub fn apply_change(config: &mut ContainerConfig, change: &str) -> Result<()> {
    let bad = |reason: &str| Error::InvalidChange {
        change: change.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = change.trim();
    let (keyword, rest) = match trimmed.find(char::is_whitespace) {
        Some(i) => (&trimmed[..i], trimmed[i..].trim()),
        None => (trimmed, ""),
    };
    let keyword = keyword.to_ascii_uppercase();
    if rest.is_empty() && keyword != "CMD" && keyword != "ENTRYPOINT" {
        return Err(bad(&format!("{keyword} needs an argument")));
    }
    match keyword.as_str() {
        "CMD" => config.cmd = Some(command(rest)),
        "ENTRYPOINT" => config.entrypoint = Some(command(rest)),
        "ENV" => {
            let env = config.env.get_or_insert_with(Vec::new);
            for (key, value) in name_values(rest).map_err(|r| bad(&r))? {
                let prefix = format!("{key}=");
                let entry = format!("{key}={value}");
                match env.iter_mut().find(|e| e.starts_with(&prefix) || **e == key) {
                    Some(existing) => *existing = entry,
                    None => env.push(entry),
                }
            }
        }
        "LABEL" => {
            let labels = config.labels.get_or_insert_with(BTreeMap::new);
            for (key, value) in name_values(rest).map_err(|r| bad(&r))? {
                labels.insert(key, value);
            }
        }
        "EXPOSE" => {
            let ports = config.exposed_ports.get_or_insert_with(BTreeMap::new);
            for word in words(rest).map_err(|r| bad(&r))? {
                for port in expand_port(&word).map_err(|r| bad(&r))? {
                    ports.insert(port, Value::Object(Default::default()));
                }
            }
        }
        "VOLUME" => {
            let list = match json_array(rest) {
                Some(list) => list,
                None => words(rest).map_err(|r| bad(&r))?,
            };
            let volumes = config.volumes.get_or_insert_with(BTreeMap::new);
            for v in list {
                if v.is_empty() {
                    return Err(bad("empty volume path"));
                }
                volumes.insert(v, Value::Object(Default::default()));
            }
        }
        "WORKDIR" => {
            let dir = unquote(rest).map_err(|r| bad(&r))?;
            let joined = if dir.starts_with('/') {
                dir
            } else {
                let base = config.working_dir.clone().unwrap_or_else(|| "/".into());
                format!("{}/{dir}", base.trim_end_matches('/'))
            };
            config.working_dir = Some(joined);
        }
        "USER" => config.user = Some(unquote(rest).map_err(|r| bad(&r))?),
        "STOPSIGNAL" => config.stop_signal = Some(unquote(rest).map_err(|r| bad(&r))?),
        "ONBUILD" => config.on_build.get_or_insert_with(Vec::new).push(rest.to_string()),
        "HEALTHCHECK" => config.healthcheck = Some(healthcheck(rest).map_err(|r| bad(&r))?),
        other => {
            return Err(bad(&format!(
                "unsupported instruction {other} (CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR)"
            )))
        }
    }
    Ok(())
}

/// `NONE`, or `[--interval=D] [--timeout=D] [--start-period=D]
/// [--start-interval=D] [--retries=N] CMD …` as Docker stores it (durations
/// in nanoseconds, zero values left out).
fn healthcheck(rest: &str) -> std::result::Result<Value, String> {
    if rest.eq_ignore_ascii_case("NONE") {
        return Ok(serde_json::json!({"Test": ["NONE"]}));
    }
    let mut out = serde_json::Map::new();
    let mut remaining = rest.trim_start();
    while let Some(flag) = remaining.strip_prefix("--") {
        let end = flag.find(char::is_whitespace).unwrap_or(flag.len());
        let (name, value) = flag[..end]
            .split_once('=')
            .ok_or_else(|| format!("flag --{} needs a value", &flag[..end]))?;
        let key = match name {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => "Retries",
            other => return Err(format!("unknown HEALTHCHECK flag --{other}")),
        };
        let number = if key == "Retries" {
            value
                .parse::<u64>()
                .map_err(|_| format!("--retries={value} is not a number"))?
        } else {
            go_duration_nanos(value).ok_or_else(|| format!("--{name}={value} is not a duration"))?
        };
        if number > 0 {
            out.insert(key.to_string(), Value::from(number));
        }
        remaining = flag[end..].trim_start();
    }
    let (keyword, command) = match remaining.find(char::is_whitespace) {
        Some(i) => (&remaining[..i], remaining[i..].trim()),
        None => (remaining, ""),
    };
    if !keyword.eq_ignore_ascii_case("CMD") || command.is_empty() {
        return Err("expected NONE or [flags] CMD command".into());
    }
    let test = match json_array(command) {
        Some(args) => std::iter::once("CMD".to_string()).chain(args).collect(),
        None => vec!["CMD-SHELL".to_string(), command.to_string()],
    };
    out.insert("Test".into(), Value::from(test));
    Ok(Value::Object(out))
}

/// Go's `time.ParseDuration` for the units Docker accepts (`1m30s`, `500ms`).
fn go_duration_nanos(s: &str) -> Option<u64> {
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    (total.is_finite() && total < u64::MAX as f64).then_some(total.round() as u64)
}

/// JSON form if it parses as an array of strings, else `/bin/sh -c` form.
fn command(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    json_array(rest).unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
}

fn json_array(rest: &str) -> Option<Vec<String>> {
    if !rest.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(rest).ok()
}

/// Splits on unquoted whitespace; quotes removed, backslash escapes kept
/// literal inside single quotes as in the shell.
fn words(s: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => current.push(ch),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch) => current.push(ch),
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(ch) => current.push(ch),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(ch) = chars.next() {
                    current.push(ch);
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        out.push(current);
    }
    Ok(out)
}

fn unquote(s: &str) -> std::result::Result<String, String> {
    Ok(words(s)?.join(" "))
}

/// `k=v k2="v 2"`, or the legacy `k value with spaces` form.
fn name_values(rest: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let first = rest.split_whitespace().next().unwrap_or("");
    if !first.contains('=') {
        let key = first.to_string();
        let value = rest[first.len()..].trim().to_string();
        if value.is_empty() {
            return Err(format!("{key} has no value"));
        }
        return Ok(vec![(key, value)]);
    }
    let mut out = Vec::new();
    for word in words(rest)? {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("{word:?} is not NAME=VALUE"))?;
        if k.is_empty() {
            return Err(format!("{word:?} has an empty name"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn expand_port(word: &str) -> std::result::Result<Vec<String>, String> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("bad protocol in {word:?}"));
    }
    let parse = |p: &str| p.parse::<u16>().map_err(|_| format!("bad port {word:?}"));
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("bad port range {word:?}"));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(changes: &[&str]) -> ContainerConfig {
        let mut c = ContainerConfig::default();
        for ch in changes {
            apply_change(&mut c, ch).unwrap();
        }
        c
    }

    #[test]
    fn exec_and_shell_forms() {
        let c = applied(&[
            r#"CMD ["/bin/sh", "-c", "echo hi"]"#,
            "ENTRYPOINT echo hello world",
        ]);
        assert_eq!(c.cmd.unwrap(), vec!["/bin/sh", "-c", "echo hi"]);
        assert_eq!(
            c.entrypoint.unwrap(),
            vec!["/bin/sh", "-c", "echo hello world"]
        );
        // Not valid JSON: shell form, as Docker does.
        let c = applied(&["cmd [not json"]);
        assert_eq!(c.cmd.unwrap(), vec!["/bin/sh", "-c", "[not json"]);
    }

    #[test]
    fn env_label_expose_workdir_user() {
        let c = applied(&[
            "ENV A=1 B=\"two words\"",
            "ENV C legacy form value",
            "ENV A=3",
            "LABEL org.x=y \"quoted key\"=z",
            "EXPOSE 80 53/udp 8000-8001",
            "WORKDIR /srv",
            "WORKDIR app",
            "USER 1000:1000",
            "VOLUME [\"/data\"]",
            "STOPSIGNAL SIGTERM",
        ]);
        assert_eq!(
            c.env.unwrap(),
            vec!["A=3", "B=two words", "C=legacy form value"]
        );
        let labels = c.labels.unwrap();
        assert_eq!(labels["org.x"], "y");
        assert_eq!(labels["quoted key"], "z");
        let ports: Vec<_> = c.exposed_ports.unwrap().into_keys().collect();
        assert_eq!(ports, vec!["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        assert_eq!(c.working_dir.unwrap(), "/srv/app");
        assert_eq!(c.user.unwrap(), "1000:1000");
        assert!(c.volumes.unwrap().contains_key("/data"));
        assert_eq!(c.stop_signal.unwrap(), "SIGTERM");
    }

    #[test]
    fn healthcheck_forms() {
        let c =
            applied(&["HEALTHCHECK --interval=1m30s --retries=3 CMD curl -f http://localhost/"]);
        assert_eq!(
            c.healthcheck.unwrap(),
            serde_json::json!({
                "Test": ["CMD-SHELL", "curl -f http://localhost/"],
                "Interval": 90_000_000_000u64,
                "Retries": 3
            })
        );
        let c = applied(&[r#"HEALTHCHECK --timeout=500ms CMD ["/bin/check", "-q"]"#]);
        assert_eq!(
            c.healthcheck.unwrap(),
            serde_json::json!({"Test": ["CMD", "/bin/check", "-q"], "Timeout": 500_000_000u64})
        );
        let c = applied(&["HEALTHCHECK NONE"]);
        assert_eq!(
            c.healthcheck.unwrap(),
            serde_json::json!({"Test": ["NONE"]})
        );
        for bad in [
            "HEALTHCHECK --interval=soon CMD x",
            "HEALTHCHECK --bogus=1 CMD x",
            "HEALTHCHECK echo",
        ] {
            let mut c = ContainerConfig::default();
            assert!(apply_change(&mut c, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_changes_name_the_change() {
        for bad in [
            "RUN echo",
            "EXPOSE 99999",
            "EXPOSE 80/xyz",
            "ENV A=\"open",
            "USER",
            "ENV =x",
        ] {
            let mut c = ContainerConfig::default();
            let err = apply_change(&mut c, bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
