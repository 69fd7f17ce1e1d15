//! Kubernetes manifests: the containers of Pods, Deployments,
//! StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs (several
//! documents a file, `List`s too), each as the [`Overrides`] it puts on
//! its image, by Kubernetes' rules:
//! - `command` replaces the image's ENTRYPOINT and drops its CMD; `args`
//!   replaces CMD (containerd's CRI merges them as Docker's daemon does);
//! - `$(VAR)` in `command`, `args` and env values is the value of VAR from
//!   the container's `env` (the entries before it, for an env value);
//!   `$$` is `$`; a reference that cannot be resolved is left as written;
//! - `env` is set over the image's ENV; `workingDir` replaces WORKDIR;
//! - `securityContext.runAsUser`/`runAsGroup` (the container's, else the
//!   Pod's) replace the user and group of the image's USER;
//! - `terminationGracePeriodSeconds` (default 30) is the stop timeout.

use super::launch::{expand_kubernetes, Given, Overrides};
use super::yaml::{parse_documents, Node, Value, YamlError};
use super::{Source, Warning};

/// A manifest that cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Yaml(#[from] YamlError),
    #[error("{file} line {line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Select { file: String, message: String },
}

/// A container of a workload in a manifest.
#[derive(Debug, Clone)]
pub struct KubeContainer {
    /// `Deployment web`, `Pod debug`, …
    pub workload: String,
    pub name: String,
    pub image: String,
    /// The line its entry starts on.
    pub line: usize,
    /// An init container.
    pub init: bool,
    pub overrides: Overrides,
}

/// Every container (init containers too) of every workload in `text`.
pub fn containers(text: &str, file: &str) -> Result<Vec<KubeContainer>, ManifestError> {
    let mut out = Vec::new();
    for doc in parse_documents(text, file)? {
        collect(&doc, file, &mut out)?;
    }
    Ok(out)
}

/// The container named `name` (the only one when `None`).
pub fn select(
    mut list: Vec<KubeContainer>,
    name: Option<&str>,
    file: &str,
) -> Result<KubeContainer, ManifestError> {
    let names = |list: &[KubeContainer]| {
        list.iter()
            .map(|c| format!("{} (in {}, line {})", c.name, c.workload, c.line))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let error = |message: String| ManifestError::Select {
        file: file.to_string(),
        message,
    };
    if let Some(name) = name {
        let all = names(&list);
        list.retain(|c| c.name == name);
        if list.is_empty() {
            return Err(error(format!("no container named {name:?}; it has: {all}")));
        }
    }
    match list.len() {
        0 => Err(error("no Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob with a container".into())),
        1 => Ok(list.remove(0)),
        _ => Err(error(format!("several containers, choose one with --container: {}", names(&list)))),
    }
}

fn collect(doc: &Node, file: &str, out: &mut Vec<KubeContainer>) -> Result<(), ManifestError> {
    let kind = doc.get("kind").and_then(Node::as_str).unwrap_or("");
    let name = doc
        .path(&["metadata", "name"])
        .and_then(Node::as_str)
        .unwrap_or("?");
    let spec = match kind {
        "List" => {
            for item in doc.get("items").and_then(Node::as_list).unwrap_or(&[]) {
                collect(item, file, out)?;
            }
            return Ok(());
        }
        "Pod" => doc.get("spec"),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => doc.path(&["spec", "template", "spec"]),
        "CronJob" => doc.path(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    };
    let Some(spec) = spec else {
        return Ok(());
    };
    let workload = format!("{kind} {name}");
    for (key, init) in [("initContainers", true), ("containers", false)] {
        for container in spec.get(key).and_then(Node::as_list).unwrap_or(&[]) {
            let reader = Reader {
                file,
                spec,
                container,
            };
            out.push(reader.container(&workload, init)?);
        }
    }
    Ok(())
}

/// One container entry and its Pod spec.
struct Reader<'a> {
    file: &'a str,
    spec: &'a Node,
    container: &'a Node,
}

impl Reader<'_> {
    fn source(&self, field: &str, node: &Node) -> Source {
        Source {
            line: Some(node.line),
            instruction: Some(field.to_string()),
            file: Some(self.file.to_string()),
            ..Source::new("kubernetes")
        }
    }

    fn invalid(&self, node: &Node, message: String) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_string(),
            line: node.line,
            message,
        }
    }

    fn container(&self, workload: &str, init: bool) -> Result<KubeContainer, ManifestError> {
        let c = self.container;
        let name = c
            .get("name")
            .and_then(Node::as_str)
            .unwrap_or("")
            .to_string();
        let image = c
            .get("image")
            .and_then(Node::as_str)
            .ok_or_else(|| self.invalid(c, format!("container {name:?} has no image")))?
            .to_string();
        let mut ov = Overrides {
            kind: "kubernetes",
            ..Default::default()
        };
        let env = self.env(&mut ov)?;
        for (field, is_command) in [("command", true), ("args", false)] {
            let Some(node) = c.get(field) else { continue };
            let words = self.expanded_list(node, field, &env, &mut ov.warnings)?;
            // An empty list is no list: the image's value stays.
            if words.is_empty() {
                continue;
            }
            let given = Given::new(words, self.source(field, node));
            if is_command {
                ov.entrypoint = Some(given);
            } else {
                ov.cmd = Some(given);
            }
        }
        if let Some(node) = c.get("workingDir").filter(|n| !n.is_null()) {
            let dir = node.as_str().unwrap_or("").to_string();
            ov.workdir = Some(Given::new(dir, self.source("workingDir", node)));
        }
        self.security(&mut ov)?;
        self.pod_settings(&mut ov)?;
        Ok(KubeContainer {
            workload: workload.to_string(),
            name,
            image,
            line: c.line,
            init,
            overrides: ov,
        })
    }

    /// `env`: each value expanded with the entries before it. Entries set
    /// `valueFrom` are known by name only (their value comes at run time).
    fn env(&self, ov: &mut Overrides) -> Result<Vec<(String, Option<String>)>, ManifestError> {
        let mut env: Vec<(String, Option<String>)> = Vec::new();
        for item in self
            .container
            .get("env")
            .and_then(Node::as_list)
            .unwrap_or(&[])
        {
            let name = item
                .get("name")
                .and_then(Node::as_str)
                .ok_or_else(|| self.invalid(item, "env entry without a name".into()))?
                .to_string();
            let field = format!("env {name}");
            let value = match item.get("value") {
                Some(v) if !v.is_null() => {
                    let raw = v.as_str().ok_or_else(|| {
                        self.invalid(v, format!("env {name}: the value is not a string"))
                    })?;
                    Some(self.expand(raw, &env, item, &field, &mut ov.warnings))
                }
                _ if item.get("valueFrom").is_some() => None,
                _ => Some(String::new()),
            };
            if let Some(v) = &value {
                ov.env.push(Given::new(
                    (name.clone(), v.clone()),
                    self.source(&field, item),
                ));
            } else {
                ov.warnings.push(Warning {
                    code: "EnvValueFrom",
                    message: format!(
                        "env {name} is set at run time (valueFrom): its value is not known here"
                    ),
                    line: Some(item.line),
                    file: Some(self.file.to_string()),
                    ..Default::default()
                });
            }
            env.retain(|(k, _)| *k != name);
            env.push((name, value));
        }
        if let Some(node) = self.container.get("envFrom") {
            ov.warnings.push(Warning {
                code: "EnvFrom",
                message: "envFrom adds variables from a ConfigMap or Secret: they are not known here (nor can $(VAR) references to them be expanded)".into(),
                line: Some(node.line),
                file: Some(self.file.to_string()),
                ..Default::default()
            });
        }
        Ok(env)
    }

    fn expand(
        &self,
        text: &str,
        env: &[(String, Option<String>)],
        node: &Node,
        field: &str,
        warnings: &mut Vec<Warning>,
    ) -> String {
        let lookup = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        };
        let (out, unresolved) = expand_kubernetes(text, &lookup);
        for name in unresolved {
            let at_run_time = env.iter().any(|(k, v)| *k == name && v.is_none());
            warnings.push(Warning {
                code: "UnresolvedReference",
                message: if at_run_time {
                    format!("{field}: $({name}) is expanded at run time from a valueFrom: left as written here")
                } else {
                    format!("{field}: $({name}) names no variable defined before it in the container's env: Kubernetes leaves it as written")
                },
                line: Some(node.line),
                file: Some(self.file.to_string()),
                ..Default::default()
            });
        }
        out
    }

    fn expanded_list(
        &self,
        node: &Node,
        field: &str,
        env: &[(String, Option<String>)],
        warnings: &mut Vec<Warning>,
    ) -> Result<Vec<String>, ManifestError> {
        let items = match &node.value {
            Value::List(items) => items,
            Value::Null => return Ok(Vec::new()),
            _ => return Err(self.invalid(node, format!("{field} must be a list of strings"))),
        };
        let mut out = Vec::new();
        for item in items {
            let text = item
                .as_str()
                .ok_or_else(|| self.invalid(item, format!("{field}: not a string")))?;
            out.push(self.expand(text, env, item, field, warnings));
        }
        Ok(out)
    }

    /// `securityContext` of the container, else of the Pod.
    fn security(&self, ov: &mut Overrides) -> Result<(), ManifestError> {
        for (key, slot) in [("runAsUser", 0), ("runAsGroup", 1)] {
            let Some((node, field)) = self.security_field(key) else {
                continue;
            };
            let value: i64 = node
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.invalid(node, format!("{key} is not a number")))?;
            let given = Some(Given::new(value, self.source(&field, node)));
            if slot == 0 {
                ov.run_as_user = given;
            } else {
                ov.run_as_group = given;
            }
        }
        if let Some((node, field)) = self.security_field("runAsNonRoot") {
            let value = node.as_str() == Some("true");
            ov.run_as_non_root = Some(Given::new(value, self.source(&field, node)));
        }
        Ok(())
    }

    fn security_field(&self, key: &str) -> Option<(&Node, String)> {
        if let Some(n) = self.container.path(&["securityContext", key]) {
            return Some((n, format!("securityContext.{key}")));
        }
        self.spec
            .path(&["securityContext", key])
            .map(|n| (n, format!("spec.securityContext.{key}")))
    }

    /// The Pod's grace period and process namespace.
    fn pod_settings(&self, ov: &mut Overrides) -> Result<(), ManifestError> {
        if let Some(node) = self.spec.get("terminationGracePeriodSeconds") {
            let seconds = node.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                self.invalid(node, "terminationGracePeriodSeconds is not a number".into())
            })?;
            ov.stop_timeout = Some(Given::new(
                seconds,
                self.source("terminationGracePeriodSeconds", node),
            ));
        }
        if let Some(node) = self.spec.get("shareProcessNamespace") {
            if node.as_str() == Some("true") {
                ov.shared_pid_namespace =
                    Some(Given::new(true, self.source("shareProcessNamespace", node)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      securityContext:
        runAsUser: 1000
      containers:
      - name: app
        image: example/app:1
        env:
        - name: PORT
          value: \"8080\"
        - name: URL
          value: http://localhost:$(PORT)/
        command: [\"/app\"]
        args: [\"--listen=$(PORT)\", \"$$(PORT)\", \"$(NOPE)\"]
      - name: sidecar
        image: example/proxy:2
";

    #[test]
    fn deployment_container() {
        let list = containers(DEPLOYMENT, "d.yaml").unwrap();
        assert_eq!(list.len(), 2);
        let c = select(list, Some("app"), "d.yaml").unwrap();
        assert_eq!(c.workload, "Deployment web");
        let ov = &c.overrides;
        assert_eq!(ov.entrypoint.as_ref().unwrap().value, ["/app"]);
        assert_eq!(ov.entrypoint.as_ref().unwrap().source.line, Some(18));
        assert_eq!(
            ov.cmd.as_ref().unwrap().value,
            ["--listen=8080", "$(PORT)", "$(NOPE)"]
        );
        assert_eq!(ov.env[1].value.1, "http://localhost:8080/");
        assert_eq!(ov.run_as_user.as_ref().unwrap().value, 1000);
        assert!(ov
            .warnings
            .iter()
            .any(|w| w.code == "UnresolvedReference" && w.line == Some(19)));
    }

    #[test]
    fn selecting() {
        let list = containers(DEPLOYMENT, "d.yaml").unwrap();
        let err = select(list.clone(), None, "d.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("app (in Deployment web, line 11)"), "{err}");
        assert!(select(list, Some("x"), "d.yaml").is_err());
    }

    #[test]
    fn cronjob_and_empty_command() {
        let text = "kind: CronJob\nmetadata: {name: nightly}\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n          - name: job\n            image: busybox\n            command: []\n";
        let c = select(containers(text, "c.yaml").unwrap(), None, "c.yaml").unwrap();
        assert_eq!(c.workload, "CronJob nightly");
        assert!(c.overrides.entrypoint.is_none());
    }
}
