//! The ordered environment a stage's words expand in (BuildKit's LLB state
//! env): image ENV and ARG values, in the order they were first set, where
//! setting a name again replaces its value in place.
//!
//! Lookups and updates are by a hash index, so a Dockerfile of N ENV
//! lines plans in O(N) rather than O(N²).
//!
//! ```
//! use kiln_builder::plan::env::Env;
//! let mut env = Env::default();
//! env.set("A", "1");
//! env.set("B", "2");
//! env.set("A", "3");
//! assert_eq!(env.get("A"), Some("3"));
//! assert_eq!(env.pairs().iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["A", "B"]);
//! ```

use std::collections::HashMap;

/// Name → value, in first-set order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pairs: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Env {
    /// `NAME=value` entries (an image config's `Env`); a name without `=`
    /// has an empty value, a repeated name keeps its first place.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a String>) -> Env {
        let mut env = Env::default();
        for entry in entries {
            let (key, value) = crate::image::split_env(entry);
            env.set(key, value);
        }
        env
    }

    /// Sets `key`, in place when it is already set.
    pub fn set(&mut self, key: &str, value: &str) {
        match self.index.get(key) {
            Some(&at) => self.pairs[at].1 = value.to_string(),
            None => {
                self.index.insert(key.to_string(), self.pairs.len());
                self.pairs.push((key.to_string(), value.to_string()));
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.index.get(key).map(|&at| self.pairs[at].1.as_str())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Every pair, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(k, _)| k.as_str())
    }

    /// `NAME=value` entries, in order (an image config's `Env`).
    pub fn entries(&self) -> Vec<String> {
        self.pairs.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

impl kiln_parser::expand::Env for Env {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }
}
