//! What the planner's walk over a Dockerfile shows to an observer, as
//! BuildKit passes its linter into dispatch: `kiln check`'s rules
//! ([`crate::lint`]) are an observer of the same walk a build, `--dry-run`
//! and `kiln explain` plan with, so they see every word expanded exactly as
//! the build expands it, in the same ARG/ENV scope.
//!
//! Events come in walk order: first every stage's FROM words
//! ([`DispatchObserver::stage_from_word`]), then, stage by stage in file order,
//! where the stage starts ([`DispatchObserver::stage`]) and each of its
//! instructions: the words expanded ([`DispatchObserver::expanded`]), then
//! the instruction with its expanded values and the stage's state before it
//! ([`DispatchObserver::instruction`]). An ARG's defaults expand one after
//! the other in a scope each changes, so an ARG's instruction event comes
//! first, before its expansions. Instructions an ONBUILD trigger of the base
//! brings are dispatched without events.

use std::collections::BTreeSet;

use kiln_layers::oci::Platform;
use kiln_parser::expand::Expansion;
use kiln_parser::instructions::{self as ins, Instruction};

use super::env::Env;
use super::lookup::FoundImage;
use super::{CopyStep, RunStep};

/// Receives the planner's walk. Every method does nothing by default.
pub trait DispatchObserver {
    /// A word of a FROM line (its base name or `--platform`) expanded with
    /// the global args.
    fn stage_from_word(&mut self, _stage: &ins::Stage, _word: &FromWord<'_>) {}
    /// A stage is about to be dispatched, from `start`.
    fn stage(&mut self, _stage: &ins::Stage, _start: &StageStart<'_>) {}
    /// A word of an instruction expanded in its stage's scope.
    fn expanded(&mut self, _meta: &ins::Meta, _expansion: &Expansion, _scope: &Scope<'_>) {}
    /// An instruction of the stage, with its expanded values, before it
    /// changes the stage's state (`scope`).
    fn instruction(&mut self, _event: &InstructionEvent<'_>) {}
}

/// Observes nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl DispatchObserver for NoObserver {}

/// One expanded FROM word.
#[derive(Debug)]
pub struct FromWord<'a> {
    /// As written.
    pub written: &'a str,
    pub expansion: &'a Expansion,
    /// The `--platform` value (else the base name).
    pub is_platform: bool,
    /// The global args the word expanded in (predefined and meta ARGs
    /// with a value).
    pub global: &'a Env,
}

/// Where a stage starts.
#[derive(Debug)]
pub enum StageStart<'a> {
    Scratch,
    /// An earlier stage, by index.
    Stage(usize),
    /// An image: its name as expanded, the platform asked for, and what the
    /// lookup found (`None`: unknown, taken as empty).
    Image {
        name: &'a str,
        platform: &'a Platform,
        found: Option<&'a FoundImage>,
    },
}

/// A stage's dispatch state, as an instruction sees it.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// Image ENV and ARG values in scope.
    pub env: &'a Env,
    /// ARGs declared in the stage (and the stages it is built on).
    pub declared: &'a BTreeSet<String>,
    /// Whether the base's environment is known (an unknown base image,
    /// taken as empty, leaves it unknown).
    pub env_known: bool,
    /// Whether a WORKDIR of this Dockerfile set the working directory (a
    /// base image's does not count).
    pub workdir_set: bool,
    /// The SHELL in effect, when one was set (by SHELL or the base image).
    pub shell: Option<&'a [String]>,
}

/// An instruction's expanded values.
#[derive(Debug, Clone, Copy)]
pub enum Expanded<'a> {
    /// Nothing the observer needs beyond the instruction (or, for ARG, not
    /// yet expanded).
    None,
    /// ENV pairs.
    Env(&'a [(String, String)]),
    /// WORKDIR's path, before it is joined to the current one.
    Workdir(&'a str),
    /// EXPOSE's words.
    Ports(&'a [String]),
    Copy(&'a CopyStep),
    Run(&'a RunStep),
}

/// An instruction of a stage.
#[derive(Debug)]
pub struct InstructionEvent<'a> {
    pub stage: usize,
    pub instruction: &'a Instruction,
    pub expanded: Expanded<'a>,
    pub scope: Scope<'a>,
}
