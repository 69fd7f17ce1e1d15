//! kiln-parser: Dockerfile syntax, typed instructions and word expansion.
//!
//! The parser does no I/O and knows nothing of images or filesystems: it turns
//! text into an AST with line/column spans ([`parse`] → [`ast::Dockerfile`]),
//! the AST into typed instructions grouped by stage
//! ([`instructions::from_ast`]), and offers word expansion (BuildKit's
//! shell-lexer rules) as a pure function that the builder calls
//! ([`expand::expand_word`], [`expand::expand_words`]).
//!
//! The behaviour to match is BuildKit's Dockerfile frontend: which comments
//! are parser directives, how continuation lines join, when arguments are
//! exec (JSON) form, how heredocs are found. [`dump_buildkit`] prints the AST
//! in BuildKit's own test-dump format so the two can be compared byte for byte.
//!
//! ```
//! let df = kiln_parser::parse("FROM alpine AS base\nRUN echo hi\n", "Dockerfile").unwrap();
//! assert_eq!(kiln_parser::dump_buildkit(&df), "(from \"alpine\" \"AS\" \"base\")\n(run \"echo hi\")\n");
//!
//! let typed = kiln_parser::instructions::from_ast(&df).unwrap();
//! assert_eq!(typed.stages[0].name.as_deref(), Some("base"));
//! ```
//!
//! Errors ([`ParseError`]) carry `file:line:column`, the source line and a
//! caret, and suggest the nearest instruction or flag for a misspelt one.
//!
//! # The API in short
//! - [`parse`] / [`parse_bytes`] → [`ast::Dockerfile`]: directives, escape
//!   character, one [`ast::Node`] per instruction (keyword as written, flags,
//!   [`ast::Args`], exec form or not, heredocs, logical line, exact source
//!   text, [`ast::Span`], comments above, empty continuation lines) and
//!   warnings (`NoEmptyContinuation`).
//! - [`dump_buildkit`]: BuildKit's AST dump (`(run "echo hi")` per line).
//! - [`instructions::from_ast`] → [`instructions::Dockerfile`]: meta ARGs and
//!   [`instructions::Stage`]s of [`instructions::Instruction`]s, flags typed
//!   and checked, nothing expanded.
//! - [`expand::expand_word`] / [`expand::expand_words`] (or
//!   [`expand::Lexer`] for BuildKit's lexer options): expansion through an
//!   [`expand::Env`] lookup, reporting referenced and unset names.
//! - [`mount::parse_mount`]: a `RUN --mount` spec, typed, after expansion.
//! - [`ast::CheckOptions`]: the `# check=` directive's options.
//!
//! Some BuildKit behaviour kept on purpose looks like a bug: in word
//! splitting, text before a `${VAR:-…}` in the same word is dropped
//! (`a${X:-b}c` splits as `bc`), because BuildKit's lexer shares one word
//! buffer across nesting levels. It affects heredoc detection and EXPOSE;
//! [`expand::Lexer::shared_word_buffer`] turns it off.
//!
//! # Where kiln differs from BuildKit, on purpose
//! - Flags, the HEALTHCHECK type word and comment text are read as
//!   characters: BuildKit reads them byte by byte, which garbles non-ASCII
//!   text there (`--chown=josé` becomes `josÃ©`; a U+0085 or U+00A0 splits
//!   the character it belongs to). On ASCII input the two agree; a
//!   differential run of 90,000 generated Dockerfiles against BuildKit's
//!   parser found no other difference in dumps, line numbers, exec-form
//!   flags, logical lines or heredocs.
//! - No 64 KiB limit on a physical line.
//! - An ONBUILD trigger must itself be a valid instruction when the
//!   Dockerfile is read (`ONBUILD FOO` or `ONBUILD COPY a` is an error);
//!   BuildKit stores the text and fails only when a child image runs it.
//! - Expansion results longer than [`expand::MAX_EXPANSION_LEN`] and pattern
//!   matches costlier than [`expand::MAX_MATCH_WORK`] are errors (nested
//!   `${VAR//p/r}` can grow exponentially; BuildKit runs out of memory).
//! - `${…}` nesting deeper than [`expand::MAX_NESTING`] and ONBUILD nesting
//!   deeper than 16 are errors (Go's growable stacks need no limit).
//! - "Did you mean" counts swapping two neighbouring letters as one edit, so
//!   `RNU` suggests `RUN` (BuildKit's pick among equally near names varies).
//! - The dump's notion of a printable character (for `\u` escapes) follows
//!   Go's `unicode.IsPrint` except for unassigned code points.

#![forbid(unsafe_code)]

pub mod ast;
mod display;
mod error;
pub mod expand;
pub mod instructions;
mod json;
pub mod mount;
mod parser;
mod quote;
pub mod suggest;

pub use ast::dump_buildkit;
pub use display::{escape_control, escaped_width, shorten, SHORTENED_TO, SHORTEN_ABOVE};
pub use error::{ErrorKind, ParseError};
pub use parser::parse;
pub use quote::go_quote;

/// Parses raw bytes: a UTF-8 byte-order mark is dropped and invalid UTF-8
/// sequences become U+FFFD (BuildKit keeps the raw bytes; kiln works on text).
pub fn parse_bytes(source: &[u8], file_name: &str) -> Result<ast::Dockerfile, ParseError> {
    let text = String::from_utf8_lossy(source);
    parse(&text, file_name)
}
