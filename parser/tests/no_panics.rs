//! Bounded property tests: any input gives a result or an error, never a
//! panic. Inputs are small and the case count modest so `cargo test` stays
//! fast; the cargo-fuzz targets in `fuzz/` explore further.

use proptest::prelude::*;

use kiln_parser::expand::Lexer;

/// Pieces that exercise the parser's corners far more often than random
/// characters would.
fn dockerfile_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FROM a AS b\n".to_string()),
        Just("RUN ".to_string()),
        Just("COPY ".to_string()),
        Just("ONBUILD ".to_string()),
        Just("HEALTHCHECK ".to_string()),
        Just("ENV ".to_string()),
        Just("ARG ".to_string()),
        Just("SHELL ".to_string()),
        Just("<<EOF".to_string()),
        Just("<<-'E'".to_string()),
        Just("EOF\n".to_string()),
        Just("# escape=`\n".to_string()),
        Just("# syntax=x\n".to_string()),
        Just("--mount=type=cache ".to_string()),
        Just("--".to_string()),
        Just("\\\n".to_string()),
        Just("`\n".to_string()),
        Just("\r\n".to_string()),
        Just("\n".to_string()),
        Just("\t".to_string()),
        Just("[\"a\", ".to_string()),
        Just("]".to_string()),
        Just("${A:-b}".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("=".to_string()),
        Just("\u{feff}".to_string()),
        "[a-zA-Z0-9 $#{}:?%/*-]{0,6}",
        any::<char>().prop_map(|c| c.to_string()),
    ]
}

fn dockerfile_text() -> impl Strategy<Value = String> {
    prop::collection::vec(dockerfile_piece(), 0..40).prop_map(|pieces| pieces.concat())
}

fn word_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("$".to_string()),
        Just("${".to_string()),
        Just("}".to_string()),
        Just(":".to_string()),
        Just("-".to_string()),
        Just("+".to_string()),
        Just("?".to_string()),
        Just("#".to_string()),
        Just("%".to_string()),
        Just("/".to_string()),
        Just("//".to_string()),
        Just("*".to_string()),
        Just("\\".to_string()),
        Just("`".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("<<".to_string()),
        Just(" ".to_string()),
        Just("A".to_string()),
        Just("EMPTY".to_string()),
        Just("LONG".to_string()),
        "[a-z0-9 ]{0,4}",
        any::<char>().prop_map(|c| c.to_string()),
    ]
}

fn word_text() -> impl Strategy<Value = String> {
    prop::collection::vec(word_piece(), 0..30).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics(text in dockerfile_text()) {
        if let Ok(ast) = kiln_parser::parse(&text, "Dockerfile") {
            let dump = kiln_parser::dump_buildkit(&ast);
            prop_assert!(dump.ends_with('\n'));
            prop_assert!(!ast.nodes.is_empty());
            for node in &ast.nodes {
                prop_assert!(node.span.start.line <= node.span.end.line);
            }
            let _ = kiln_parser::instructions::from_ast(&ast);
        }
    }

    #[test]
    fn parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(ast) = kiln_parser::parse_bytes(&bytes, "Dockerfile") {
            let _ = kiln_parser::dump_buildkit(&ast);
            let _ = kiln_parser::instructions::from_ast(&ast);
        }
    }

    #[test]
    fn expansion_never_panics(word in word_text(), raw_quotes: bool, raw_escapes: bool, skip_quotes: bool, skip_unset: bool, backtick: bool, shared_buffer: bool) {
        let env: Vec<(String, String)> = vec![
            ("A".into(), "a b*c".into()),
            ("EMPTY".into(), String::new()),
            ("LONG".into(), "x/y/z ".repeat(20)),
        ];
        let lexer = Lexer {
            escape: if backtick { '`' } else { '\\' },
            raw_quotes,
            raw_escapes,
            skip_process_quotes: skip_quotes,
            skip_unset_env: skip_unset,
            shared_word_buffer: shared_buffer,
        };
        if let Ok(expansion) = lexer.expand(&word, &env) {
            // Splitting never yields empty words (empty quotes vanish).
            prop_assert!(expansion.words.iter().all(|w| !w.is_empty()));
        }
    }
}
