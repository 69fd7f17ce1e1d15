//! Data-driven unpack tests: each `testdata/layers/unpack/<case>/spec.txt`
//! describes one or more layers as tar entries (hostile ones included).
//! Layers are unpacked in order into `layer0`, `layer1`, … with the earlier
//! ones as lowers. A case either expects an error (`error TEXT`) or a tree,
//! listed in `expected.txt` (`KILN_BLESS=1` regenerates). In every case,
//! nothing may appear or change outside the layer directories.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use kiln_layers::unpack::{unpack, UnpackOptions, Whiteouts};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/layers/unpack")
}

fn run_case(dir: &Path) -> Result<(), String> {
    let spec = support::parse_spec(&fs::read_to_string(dir.join("spec.txt")).unwrap());
    let sandbox = tempfile::tempdir().unwrap();
    let outside = sandbox.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), "victim").unwrap();
    let mut layer_dirs: Vec<PathBuf> = Vec::new();
    let mut error = None;
    for (i, entries) in spec.layers.iter().enumerate() {
        let dest = sandbox.path().join(format!("layer{i}"));
        fs::create_dir(&dest).unwrap();
        let tar = support::raw_tar(entries);
        let options = UnpackOptions {
            whiteouts: Whiteouts::Overlay,
            lowers: layer_dirs.iter().rev().cloned().collect(),
            preserve_owners: true,
            label: format!("layer{i}"),
            write_back: false,
        };
        layer_dirs.push(dest.clone());
        if let Err(e) = unpack(tar.as_slice(), &dest, &options) {
            error = Some(e.to_string());
            break;
        }
    }

    // Nothing outside the layer dirs: the sandbox holds only them and
    // `outside`, which is untouched.
    let mut names: Vec<String> = fs::read_dir(sandbox.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut allowed: Vec<String> = (0..layer_dirs.len()).map(|i| format!("layer{i}")).collect();
    allowed.push("outside".into());
    allowed.sort();
    if names != allowed {
        return Err(format!("sandbox has {names:?}, expected {allowed:?}"));
    }
    let outside_names: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    if outside_names.len() != 1 || fs::read_to_string(outside.join("victim")).unwrap() != "victim" {
        return Err(format!("outside/ was modified: {outside_names:?}"));
    }
    if Path::new("/tmp/pwned").exists() {
        return Err("/tmp/pwned was written".into());
    }

    match (&spec.error, error) {
        (Some(want), Some(got)) if got.contains(want.as_str()) => Ok(()),
        (Some(want), Some(got)) => Err(format!(
            "expected an error containing {want:?}, got {got:?}"
        )),
        (Some(want), None) => Err(format!(
            "expected an error containing {want:?}, unpacking succeeded"
        )),
        (None, Some(got)) => Err(format!("unexpected error: {got}")),
        (None, None) => {
            let mut actual = String::new();
            for (i, d) in layer_dirs.iter().enumerate() {
                actual.push_str(&format!("== layer{i}\n"));
                actual.push_str(&support::listing(d));
            }
            support::check_golden(&dir.join("expected.txt"), &actual);
            Ok(())
        }
    }
}

#[test]
fn unpack_cases() {
    let mut failures = Vec::new();
    let mut count = 0;
    let mut dirs: Vec<_> = fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs {
        count += 1;
        if let Err(e) = run_case(&dir) {
            failures.push(format!(
                "{}: {e}",
                dir.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(
        count >= 10,
        "only {count} cases found in {}",
        cases_dir().display()
    );
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
