//! Image config assembly helpers, byte-compatible with what BuildKit's
//! Dockerfile frontend writes: environment lists, `EXPOSE` port specs,
//! history `created_by` strings (which use Go's `%q`/`%v` formatting), the
//! default shell and PATH.

use kiln_layers::oci::{ContainerConfig, History, ImageConfig};
use kiln_parser::go_quote;

/// `comment` of every history entry BuildKit's Dockerfile frontend writes.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// The PATH a Linux stage gets when its image has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The shell for shell-form RUN/CMD/ENTRYPOINT when no SHELL is set.
pub fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string()]
}

/// A bad EXPOSE value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port: {port:?}: {reason}")]
pub struct PortError {
    pub port: String,
    pub reason: String,
}

/// Splits `NAME=value`.
pub fn split_env(entry: &str) -> (&str, &str) {
    entry.split_once('=').unwrap_or((entry, ""))
}

/// Sets `key` in a `NAME=value` list: replaced in place, else appended.
pub fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match env.iter_mut().find(|e| split_env(e).0 == key) {
        Some(slot) => *slot = entry,
        None => env.push(entry),
    }
}

/// Looks `key` up in a `NAME=value` list.
pub fn get_env<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .map(|e| split_env(e))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Go's `fmt.Sprintf("%q", []string{...})`: `["a" "b"]`.
pub fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `fmt.Sprintf("%v", []string{...})`: `[a b]`.
pub fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Go's `time.Duration.String()`.
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".to_string();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let mut out = String::new();
    if u < 1_000_000_000 {
        // Sub-second: one unit with a fraction.
        let (unit, div) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        out.push_str(&fraction(u, div));
        out.push_str(unit);
    } else {
        let hours = u / 3_600_000_000_000;
        let rem = u % 3_600_000_000_000;
        let minutes = rem / 60_000_000_000;
        let rem = rem % 60_000_000_000;
        if hours > 0 {
            out.push_str(&format!("{hours}h"));
        }
        if hours > 0 || minutes > 0 {
            out.push_str(&format!("{minutes}m"));
        }
        out.push_str(&fraction(rem, 1_000_000_000));
        out.push('s');
    }
    if neg {
        out.insert(0, '-');
    }
    out
}

/// `value / div` with the fractional digits Go prints (no trailing zeros).
fn fraction(value: u64, div: u64) -> String {
    let whole = value / div;
    let frac = value % div;
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Parses EXPOSE words into `port/proto` entries, ranges expanded, as
/// BuildKit's `parsePorts` does (`[ip:][hostport:]port[-end][/proto]`).
pub fn parse_ports(words: &[String]) -> Result<Vec<String>, PortError> {
    let mut out = Vec::new();
    for raw in words {
        let err = |reason: &str| PortError {
            port: raw.clone(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = raw.split(':').collect();
        let container = parts[parts.len() - 1];
        let host = (parts.len() >= 2).then(|| parts[parts.len() - 2]);
        let (port, proto) = container.split_once('/').unwrap_or((container, ""));
        if port.is_empty() {
            return Err(err("no port specified"));
        }
        let proto = match proto.to_ascii_lowercase().as_str() {
            "" => "tcp".to_string(),
            "tcp" | "udp" | "sctp" => proto.to_ascii_lowercase(),
            _ => return Err(err(&format!("invalid proto: {proto}"))),
        };
        let (start, end) =
            port_range(port).map_err(|_| err(&format!("invalid containerPort: {port}")))?;
        if let Some(host) = host.filter(|h| !h.is_empty()) {
            let (hs, he) =
                port_range(host).map_err(|_| err(&format!("invalid hostPort: {host}")))?;
            if end - start != he - hs && end != start {
                return Err(err(&format!(
                    "invalid ranges specified for container and host Ports: {port} and {host}"
                )));
            }
        }
        for p in start..=end {
            out.push(format!("{p}/{proto}"));
        }
    }
    Ok(out)
}

fn port_range(text: &str) -> Result<(u32, u32), ()> {
    let number = |s: &str| -> Result<u32, ()> {
        let n: u32 = s.parse().map_err(|_| ())?;
        if n > 65535 {
            return Err(());
        }
        Ok(n)
    };
    if text.is_empty() {
        return Err(());
    }
    match text.split_once('-') {
        None => number(text).map(|n| (n, n)),
        Some((a, b)) if a == b => number(a).map(|n| (n, n)),
        Some((a, b)) => {
            let (s, e) = (number(a)?, number(b)?);
            if e < s {
                return Err(());
            }
            Ok((s, e))
        }
    }
}

/// Whether STOPSIGNAL accepts `signal`, as moby's `signal.ParseSignal`
/// (linux): a non-zero integer (Go's `strconv.Atoi`: a sign is allowed),
/// or a name of its signal map, upper-cased first, with or without `SIG`
/// (`sigterm`, `SigTerm`, `RTMIN+1`..`RTMIN+15`, `RTMAX-14`..`RTMAX-1`).
pub fn valid_signal(signal: &str) -> bool {
    if let Ok(n) = signal.parse::<i64>() {
        return n != 0;
    }
    let upper = signal.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "RTMIN", "RTMAX",
    ];
    if NAMES.contains(&name) {
        return true;
    }
    let offset = |base: &str, range: std::ops::RangeInclusive<u32>| {
        name.strip_prefix(base).is_some_and(|n| {
            // The map's keys: plain decimal, no sign, no leading zero.
            !n.starts_with(['+', '-', '0']) && n.parse::<u32>().is_ok_and(|n| range.contains(&n))
        })
    };
    offset("RTMIN+", 1..=15) || offset("RTMAX-", 1..=14)
}

/// The config a `FROM scratch` stage starts with.
pub fn empty_image(architecture: &str, os: &str, variant: Option<&str>) -> ImageConfig {
    ImageConfig {
        architecture: architecture.to_string(),
        os: os.to_string(),
        variant: variant.map(str::to_string),
        config: Some(ContainerConfig {
            working_dir: Some("/".to_string()),
            env: Some(vec![format!("PATH={DEFAULT_PATH}")]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A history entry as BuildKit's `commitToHistory` writes it; `buildkit`
/// appends `# buildkit` (steps that ran an LLB operation).
pub fn history(
    created_by: &str,
    with_layer: bool,
    buildkit_suffix: bool,
    created: Option<&str>,
) -> History {
    let mut text = created_by.to_string();
    if buildkit_suffix {
        text.push_str(" # buildkit");
    }
    History {
        created: created.map(str::to_string),
        created_by: Some(text),
        author: None,
        comment: Some(HISTORY_COMMENT.to_string()),
        empty_layer: (!with_layer).then_some(true),
    }
}

/// `HEALTHCHECK` history text: Go's `%+v` of the healthcheck struct.
pub fn healthcheck_history(
    test: &[String],
    interval: u64,
    timeout: u64,
    start_period: u64,
    start_interval: u64,
    retries: u32,
) -> String {
    format!(
        "HEALTHCHECK {{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        go_list(test),
        go_duration(interval as i64),
        go_duration(timeout as i64),
        go_duration(start_period as i64),
        go_duration(start_interval as i64),
        retries
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        for (ns, want) in [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (2_000_000, "2ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_000_000_000, "1h2m3s"),
        ] {
            assert_eq!(go_duration(ns), want, "{ns}");
        }
    }

    #[test]
    fn ports() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_ports(&w(&[
                "80",
                "443/TCP",
                "53/udp",
                "8000-8002",
                "1.2.3.4:80:81/sctp"
            ]))
            .unwrap(),
            w(&["80/tcp", "443/tcp", "53/udp", "8000/tcp", "8001/tcp", "8002/tcp", "81/sctp"])
        );
        assert!(parse_ports(&w(&["80/xyz"])).is_err());
        assert!(parse_ports(&w(&["70000"])).is_err());
        assert!(parse_ports(&w(&["90-80"])).is_err());
        assert!(parse_ports(&w(&["/tcp"])).is_err());
    }

    #[test]
    fn signals() {
        assert!(valid_signal("SIGTERM"));
        assert!(valid_signal("TERM"));
        assert!(valid_signal("9"));
        assert!(valid_signal("SIGRTMIN+3"));
        assert!(!valid_signal("SIGNOPE"));
        assert!(!valid_signal("0"));
        // moby's ParseSignal: upper-cased before `SIG` is cut, any
        // non-zero integer, only the names of its map.
        for accepted in [
            "sigterm", "SigTerm", "term", "-1", "+9", "RTMIN+1", "RTMAX-14", "RTMAX",
        ] {
            assert!(valid_signal(accepted), "{accepted}");
        }
        for refused in [
            "UNUSED", "RTMIN+0", "RTMIN+16", "RTMAX-15", "RTMAX-0", "RTMIN+01", "SIG", "+0",
        ] {
            assert!(!valid_signal(refused), "{refused}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(
            go_quote_list(&["/bin/sh".into(), "-c".into(), "echo \"hi\"".into()]),
            r#"["/bin/sh" "-c" "echo \"hi\""]"#
        );
        assert_eq!(go_list(&["/data".into(), "/logs".into()]), "[/data /logs]");
    }
}
