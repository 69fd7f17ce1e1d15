//! kiln-parser: Dockerfile syntax, typed instructions and word expansion.
//!
//! The parser does no I/O and knows nothing of images or filesystems: it turns
//! bytes into an AST with line/column spans, the AST into typed instructions
//! grouped by stage, and offers word expansion (BuildKit's shell-lexer rules)
//! as a pure function that the builder calls.
