//! The runtime's helper for kiln-builder's own tests: the solver's RUN steps
//! re-execute this binary (the `kiln` binary plays this part in real builds).
#![forbid(unsafe_code)]

use kiln_runtime::HELPER_SUBCOMMAND;

fn main() {
    if std::env::args().nth(1).as_deref() == Some(HELPER_SUBCOMMAND) {
        std::process::exit(kiln_runtime::helper_main());
    }
    eprintln!("kiln-builder-test-helper: only `{HELPER_SUBCOMMAND}` is supported");
    std::process::exit(2);
}
