//! Any string: parsing an image reference must return, never panic; and a
//! parsed reference printed and parsed again is the same reference (the
//! store's index keys and the registry client both depend on that).
#![no_main]

use kiln_reference::{Digest, Reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(reference) = Reference::parse(text) {
        let printed = reference.to_string();
        let again = Reference::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(reference, again, "{text:?} → {printed:?}");
        let _ = reference.familiar();
        let _ = reference.manifest_reference();
    }
    if let Ok(digest) = text.parse::<Digest>() {
        assert_eq!(digest.to_string().parse::<Digest>().ok(), Some(digest));
    }
});
