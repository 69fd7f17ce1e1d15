//! Any bytes: parsing, dumping and typing must return, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ast) = kiln_parser::parse_bytes(data, "Dockerfile") {
        let _ = kiln_parser::dump_buildkit(&ast);
        let _ = kiln_parser::instructions::from_ast(&ast);
    }
});
