//! Where an image runs: what `docker run`, a Kubernetes container or a
//! Compose service sets on top of the image's config ([`Overrides`]), each
//! value with where it was given ([`Given`]), and how the runtime merges
//! them with the image's.
//!
//! All three hand the container runtime an entrypoint and a command the
//! way Docker's API takes them, and the merge is the daemon's
//! ([`crate::run_argv::merge_command`]; containerd's CRI applies the same
//! rules to a Pod's `command` and `args`):
//! - `docker run --entrypoint E IMAGE ARGS`: entrypoint `[E]`, command ARGS;
//! - Kubernetes: a non-empty `command` is the entrypoint (and the image's
//!   CMD is dropped), a non-empty `args` the command;
//! - Compose: `entrypoint` (even empty) and `command` as given.

use super::{Source, Warning};

/// A value and where it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Given<T> {
    pub fn new(value: T, source: Source) -> Given<T> {
        Given { value, source }
    }
}

/// What the runtime sets on top of the image's config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `docker_run`, `kubernetes` or `compose`.
    pub kind: &'static str,
    /// The entrypoint as the container API gets it (an empty list is
    /// given, and is not the image's).
    pub entrypoint: Option<Given<Vec<String>>>,
    /// The command (an empty one takes the image's CMD when the
    /// entrypoint is not replaced).
    pub cmd: Option<Given<Vec<String>>>,
    pub workdir: Option<Given<String>>,
    /// A whole `user[:group]` replacing the image's USER.
    pub user: Option<Given<String>>,
    /// Kubernetes' `runAsUser`/`runAsGroup`: the user or the group part of
    /// the image's USER replaced.
    pub run_as_user: Option<Given<i64>>,
    pub run_as_group: Option<Given<i64>>,
    /// Kubernetes' `runAsNonRoot`.
    pub run_as_non_root: Option<Given<bool>>,
    /// Variables set over the image's, in order.
    pub env: Vec<Given<(String, String)>>,
    /// `docker run --init`, Compose's `init: true`.
    pub init: Option<Given<bool>>,
    pub stop_signal: Option<Given<String>>,
    /// Seconds between the stop signal and SIGKILL (None: the runtime's
    /// default).
    pub stop_timeout: Option<Given<u64>>,
    /// Kubernetes' `shareProcessNamespace: true` (the pause process is PID 1).
    pub shared_pid_namespace: Option<Given<bool>>,
    /// What reading the manifest found wrong or surprising.
    pub warnings: Vec<Warning>,
}

impl Overrides {
    /// Plain `docker run`: nothing replaced.
    pub fn docker_run() -> Overrides {
        Overrides {
            kind: "docker_run",
            ..Default::default()
        }
    }

    /// `docker run [--entrypoint E] [--init] IMAGE [ARGS...]`.
    pub fn docker_run_with(entrypoint: Option<&str>, args: &[String], init: bool) -> Overrides {
        let flag = |text: String| Source {
            instruction: Some(text),
            ..Source::new("docker_run")
        };
        Overrides {
            entrypoint: entrypoint
                .map(|e| Given::new(vec![e.to_string()], flag(format!("--entrypoint {e:?}")))),
            cmd: (!args.is_empty())
                .then(|| Given::new(args.to_vec(), flag("arguments after the image".into()))),
            init: init.then(|| Given::new(true, flag("--init".into()))),
            ..Overrides::docker_run()
        }
    }

    /// Seconds `docker stop` (or the orchestrator) waits before SIGKILL.
    pub fn stop_timeout_seconds(&self) -> u64 {
        match (&self.stop_timeout, self.kind) {
            (Some(t), _) => t.value,
            // terminationGracePeriodSeconds' default.
            (None, "kubernetes") => 30,
            // docker stop's and Compose's stop_grace_period's default.
            _ => 10,
        }
    }

    /// The user the container runs as, from the image's USER and the
    /// runtime's fields, with the source of what was replaced.
    pub fn effective_user(&self, image_user: Option<&str>) -> Option<(String, Option<Source>)> {
        if let Some(user) = &self.user {
            return Some((user.value.clone(), Some(user.source.clone())));
        }
        if self.run_as_user.is_none() && self.run_as_group.is_none() {
            return None;
        }
        let image_user = image_user.unwrap_or("");
        let (name, group) = match image_user.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (image_user.to_string(), None),
        };
        let name = match &self.run_as_user {
            Some(u) => u.value.to_string(),
            None if name.is_empty() => "0".to_string(),
            None => name,
        };
        let group = self
            .run_as_group
            .as_ref()
            .map(|g| g.value.to_string())
            .or(group);
        let source = self
            .run_as_user
            .as_ref()
            .or(self.run_as_group.as_ref())
            .map(|g| g.source.clone());
        let user = match group {
            Some(g) => format!("{name}:{g}"),
            None => name,
        };
        Some((user, source))
    }
}

/// Kubernetes' `$(VAR)` expansion of `command`, `args` and env values:
/// a reference to a variable in `env` is replaced by its value, `$$` is
/// one `$` (so `$$(VAR)` stays `$(VAR)`), and anything else (an undefined
/// variable, a lone `$`) is left as written. Returns the text and the
/// names it could not resolve.
pub fn expand_kubernetes(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut unresolved = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|r| r.find(')').map(|end| (&r[..end], &r[end + 1..])))
        {
            match env(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str(&format!("$({name})"));
                    unresolved.push(name.to_string());
                }
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    (out, unresolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(text: &str) -> (String, Vec<String>) {
        expand_kubernetes(text, &|name| (name == "A").then(|| "1".to_string()))
    }

    #[test]
    fn kubernetes_expansion() {
        assert_eq!(expand("x$(A)y").0, "x1y");
        assert_eq!(expand("$(B)"), ("$(B)".to_string(), vec!["B".to_string()]));
        assert_eq!(expand("$$(A)").0, "$(A)");
        assert_eq!(expand("$$$(A)").0, "$1");
        assert_eq!(expand("$A $ $(").0, "$A $ $(");
        assert_eq!(expand("cost: $$5").0, "cost: $5");
    }

    #[test]
    fn run_as_user_replaces_the_user_part() {
        let source = Source::new("kubernetes");
        let ov = Overrides {
            run_as_user: Some(Given::new(1000, source.clone())),
            ..Default::default()
        };
        assert_eq!(
            ov.effective_user(Some("app:staff")).unwrap().0,
            "1000:staff"
        );
        assert_eq!(ov.effective_user(None).unwrap().0, "1000");
        let ov = Overrides {
            run_as_group: Some(Given::new(5, source)),
            ..Default::default()
        };
        assert_eq!(ov.effective_user(Some("app")).unwrap().0, "app:5");
        assert_eq!(ov.effective_user(None).unwrap().0, "0:5");
        assert!(Overrides::default().effective_user(Some("x")).is_none());
    }
}
