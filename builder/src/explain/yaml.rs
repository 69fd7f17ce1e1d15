//! A YAML document tree whose nodes keep their line: what Kubernetes
//! manifests and Compose files are read into, so that a source can say
//! "command: deployment.yaml line 23".
//!
//! Built from yaml-rust2's event parser (YAML 1.2; its `Marker`s carry
//! 1-based lines). Aliases are resolved to the anchored node; tags and
//! scalar styles are dropped (a quoted `"1"` and a plain `1` are both the
//! text `1`), which is all manifests need.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A node and the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar's text; `null` when plain `~`, `null` or empty.
    Scalar(String),
    Null,
    List(Vec<Node>),
    /// Keys (scalars, as text) in order.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The value of `key` in a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a path of map keys.
    pub fn path(&self, keys: &[&str]) -> Option<&Node> {
        keys.iter().try_fold(self, |node, key| node.get(key))
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Node]> {
        match &self.value {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }
}

/// Why a file is not YAML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file} line {line}: {message}")]
pub struct YamlError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Every document of `text` (`---` separated).
pub fn parse_documents(text: &str, file: &str) -> Result<Vec<Node>, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| YamlError {
        file: file.to_string(),
        line: e.marker().line(),
        message: e.info().to_string(),
    })?;
    Ok(builder.documents)
}

/// A container being filled: a list, or a map with its pending key.
enum Open {
    List(Node),
    Map(Node, Option<String>),
}

#[derive(Default)]
struct Builder {
    documents: Vec<Node>,
    stack: Vec<(Open, usize)>,
    anchors: HashMap<usize, Node>,
}

impl Builder {
    /// Adds a finished node to what is open (or as a document).
    fn push(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some((Open::List(list), _)) => {
                if let Value::List(items) = &mut list.value {
                    items.push(node);
                }
            }
            Some((Open::Map(map, key), _)) => match key.take() {
                None => *key = Some(key_text(&node)),
                Some(k) => {
                    if let Value::Map(entries) = &mut map.value {
                        entries.push((k, node));
                    }
                }
            },
        }
    }
}

fn key_text(node: &Node) -> String {
    match &node.value {
        Value::Scalar(s) => s.clone(),
        Value::Null => String::new(),
        other => format!("{other:?}"),
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = mark.line();
        match event {
            Event::Scalar(text, style, anchor, _) => {
                let null = style == TScalarStyle::Plain
                    && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL");
                let value = if null {
                    Value::Null
                } else {
                    Value::Scalar(text)
                };
                self.push(Node { line, value }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push((
                Open::List(Node {
                    line,
                    value: Value::List(Vec::new()),
                }),
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push((
                Open::Map(
                    Node {
                        line,
                        value: Value::Map(Vec::new()),
                    },
                    None,
                ),
                anchor,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((open, anchor)) = self.stack.pop() {
                    let node = match open {
                        Open::List(n) | Open::Map(n, _) => n,
                    };
                    self.push(node, anchor);
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().unwrap_or(Node {
                    line,
                    value: Value::Null,
                });
                self.push(node, 0);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_documents() {
        let docs = parse_documents(
            "a: 1\nb:\n  - x\n  - \"y\"\nc: ~\n---\nd: &k {e: f}\ng: *k\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].get("a").unwrap().as_str(), Some("1"));
        assert_eq!(docs[0].get("a").unwrap().line, 1);
        let b = docs[0].get("b").unwrap().as_list().unwrap();
        assert_eq!((b[1].as_str(), b[1].line), (Some("y"), 4));
        assert!(docs[0].get("c").unwrap().is_null());
        assert_eq!(docs[1].path(&["g", "e"]).unwrap().as_str(), Some("f"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let err = parse_documents("a: [1,\nb: 2\n", "bad.yaml").unwrap_err();
        assert_eq!(err.file, "bad.yaml");
        assert!(err.line >= 1, "{err}");
    }
}
