//! The runtime's helper for kiln-builder's own tests: the solver's RUN steps
//! re-execute this binary (the `kiln` binary plays this part in real builds).

fn main() {
    if std::env::args().nth(1).as_deref() == Some("__runtime-helper") {
        std::process::exit(kiln_runtime::helper_main());
    }
    eprintln!("kiln-builder-test-helper: only `__runtime-helper` is supported");
    std::process::exit(2);
}
