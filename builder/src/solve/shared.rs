//! Steps shared by the solves of one multi-platform build.
//!
//! A multi-platform build solves one plan per target platform, in
//! parallel. A step whose cache key is the same in two plans (a
//! `FROM --platform=$BUILDPLATFORM` stage's steps that do not read the
//! target's args: nothing in their keys depends on the target platform)
//! is one step: the first solve to reach it runs it while holding its key,
//! the others wait and then take it from the build cache. A key run once
//! in the build is not run again by another platform's solve even with
//! `--no-cache` (BuildKit, too, runs an identical vertex once per build).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use kiln_layers::Digest;

/// The keys of one build's solves: a lock per key, holding whether a
/// solve of this build ran (or reused) it.
#[derive(Debug, Default)]
pub struct SharedSteps {
    keys: Mutex<HashMap<Digest, Arc<Mutex<bool>>>>,
}

impl SharedSteps {
    /// The key's slot: lock it for as long as the step runs.
    pub(super) fn slot(&self, key: &Digest) -> Arc<Mutex<bool>> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.entry(key.clone()).or_default().clone()
    }
}
