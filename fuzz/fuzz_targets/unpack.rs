//! Any bytes as a layer tar: unpacking must return (an error is fine),
//! never panic, and never create or change anything outside the directory
//! it unpacks into — whatever the entries' names, links and whiteouts.
#![no_main]

use std::path::Path;

use kiln_layers::unpack::{unpack, UnpackOptions, Whiteouts};
use libfuzzer_sys::fuzz_target;

/// Every path under `dir`, sorted, as text.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(path.display().to_string());
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&options, tar)) = data.split_first() else {
        return;
    };
    let base = tempfile::tempdir().expect("tempdir");
    let dest = base.path().join("dest");
    let lower = base.path().join("lower");
    let outside = base.path().join("outside");
    for dir in [&dest, &lower, &outside] {
        std::fs::create_dir(dir).expect("mkdir");
    }
    // A lower layer with a symlink pointing out of the root and a plain
    // directory, for entries to try to write through.
    std::os::unix::fs::symlink(&outside, lower.join("escape")).expect("symlink");
    std::fs::create_dir(lower.join("etc")).expect("mkdir");
    let before = listing(&outside);
    let options = UnpackOptions {
        whiteouts: if options & 1 == 0 {
            Whiteouts::Overlay
        } else {
            Whiteouts::AsFiles
        },
        lowers: if options & 2 == 0 { vec![lower.clone()] } else { Vec::new() },
        preserve_owners: false,
        label: "fuzz".into(),
    };
    let _ = unpack(tar, &dest, &options);
    assert_eq!(listing(&outside), before, "something was written outside the layer");
    let mut top: Vec<String> = std::fs::read_dir(base.path())
        .expect("read base")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["dest", "lower", "outside"], "an entry escaped the layer");
    assert_eq!(
        std::fs::read_link(lower.join("escape")).ok().as_deref(),
        Some(outside.as_path()),
        "the lower layer was changed"
    );
});
