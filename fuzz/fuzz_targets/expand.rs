//! Any word, any lexer options: expansion must return, never panic or hang.
//! The first byte picks the options; the rest is the word.
#![no_main]

use kiln_parser::expand::Lexer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&options, word)) = data.split_first() else {
        return;
    };
    let Ok(word) = std::str::from_utf8(word) else {
        return;
    };
    let lexer = Lexer {
        escape: if options & 1 != 0 { '`' } else { '\\' },
        raw_quotes: options & 2 != 0,
        raw_escapes: options & 4 != 0,
        skip_process_quotes: options & 8 != 0,
        skip_unset_env: options & 16 != 0,
        shared_word_buffer: options & 32 != 0,
    };
    let env: Vec<(String, String)> = vec![
        ("A".into(), "a b*c".into()),
        ("EMPTY".into(), String::new()),
        ("P".into(), "/usr/local/bin".into()),
    ];
    let _ = lexer.expand(word, &env);
});
