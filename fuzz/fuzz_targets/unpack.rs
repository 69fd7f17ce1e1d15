//! Any bytes as a layer tar, or as an archive `ADD` extracts: unpacking
//! must return (an error is fine), never panic, and never create or change
//! anything outside the directory it unpacks into — whatever the entries'
//! names, links and whiteouts, and (for an archive) whatever the caller's
//! target answers.
#![no_main]

use std::ffi::OsString;
use std::path::Path;

use kiln_layers::unpack::{
    extract, unpack, ExtractOptions, ExtractTarget, UnpackOptions, Whiteouts,
};
use libfuzzer_sys::fuzz_target;

/// A target that resolves nothing and creates nothing: it answers each
/// path as it is, under `into`, or (when `lying`) one level above it.
struct Literal {
    into: Vec<OsString>,
    lying: bool,
}

impl Literal {
    fn answer(&self, path: &[OsString]) -> Vec<OsString> {
        let mut out = if self.lying {
            vec![OsString::from("..")]
        } else {
            self.into.clone()
        };
        out.extend(path.iter().cloned());
        out
    }
}

impl ExtractTarget for Literal {
    fn directory(&self, dir: &[OsString]) -> std::io::Result<Vec<OsString>> {
        Ok(self.answer(dir))
    }

    fn link_target(&self, path: &[OsString]) -> std::io::Result<Option<Vec<OsString>>> {
        Ok(Some(self.answer(path)))
    }

    fn dir_below(&self, _path: &[OsString]) -> bool {
        false
    }
}

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
    let Some((&bits, tar)) = data.split_first() else {
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
        whiteouts: if bits & 1 == 0 {
            Whiteouts::Overlay
        } else {
            Whiteouts::AsFiles
        },
        lowers: if bits & 2 == 0 { vec![lower.clone()] } else { Vec::new() },
        preserve_owners: false,
        label: "fuzz".into(),
        write_back: false,
    };
    let archive = bits & 0x80 != 0;
    if archive {
        // As an archive extracted into dest/into.
        std::fs::create_dir(dest.join("into")).expect("mkdir");
        let target = Literal {
            into: vec![OsString::from("into")],
            lying: bits & 0x40 != 0,
        };
        let extract_options = ExtractOptions {
            owner: None,
            preserve_owners: false,
            label: "fuzz".into(),
        };
        let _ = extract(tar, &dest, &target.into.clone(), &target, &extract_options);
    } else {
        let _ = unpack(tar, &dest, &options);
    }
    assert_eq!(listing(&outside), before, "something was written outside the layer");
    let mut top: Vec<String> = std::fs::read_dir(base.path())
        .expect("read base")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["dest", "lower", "outside"], "an entry escaped the layer");
    if archive {
        let top: Vec<_> = std::fs::read_dir(&dest).expect("read dest").flatten().collect();
        assert_eq!(top.len(), 1, "an archive entry escaped the directory it went to");
    }
    assert_eq!(
        std::fs::read_link(lower.join("escape")).ok().as_deref(),
        Some(outside.as_path()),
        "the lower layer was changed"
    );
});
