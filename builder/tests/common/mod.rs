//! Shared helpers for the data-driven tests under `testdata/builder/`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kiln_layers::import::{import_rootfs, ImportOptions};
use kiln_layers::{NoProgress, Platform, Reference, Store};

/// `testdata/builder/<area>` in the repository.
pub fn area_dir(area: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/builder")
        .join(area)
}

/// The case directories of an area, sorted.
pub fn cases(area: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(area_dir(area))
        .unwrap_or_else(|e| panic!("reading testdata area {area}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no cases in testdata area {area}");
    out
}

/// Compares `actual` with the golden file `case/name`; with `KILN_BLESS=1`
/// writes it instead. Returns a description of the mismatch, if any.
pub fn check_golden(case: &Path, name: &str, actual: &str) -> Option<String> {
    kiln_testsupport::golden::compare(&case.join(name), actual)
}

/// Runs `check` on every case of `area` and fails with all mismatches.
pub fn run_area(area: &str, check: impl Fn(&Path) -> Option<String>) {
    let failures: Vec<String> = cases(area).iter().filter_map(|c| check(c)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A store in `dir/store` with `busybox:test`: kiln-testsupport's busybox
/// root filesystem (applets, root/app/nobody users, /etc/motd, mount
/// points), imported with a fixed time, PATH and `CMD ["sh"]`.
pub fn store_with_busybox(dir: &Path) -> Store {
    let root = dir.join("rootfs");
    kiln_testsupport::BusyboxRootfs::with_mount_points()
        .create_dir(&root)
        .unwrap();
    let options = kiln_layers::diff::DiffOptions {
        source_date_epoch: Some(1_600_000_000),
        overlay_whiteouts: false,
        write_back: false,
        commit_in_background: false,
    };
    let tar = kiln_layers::diff::write_tar(&root, Vec::new(), &options).unwrap();
    let store = Store::open(dir.join("store")).unwrap();
    let mut import = ImportOptions::new("busybox-test");
    import.platform = Platform::parse("linux/amd64").unwrap();
    import.created = 1_600_000_000;
    import.config = kiln_layers::oci::ContainerConfig {
        env: Some(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ]),
        cmd: Some(vec!["sh".into()]),
        ..Default::default()
    };
    let desc = import_rootfs(&store, &tar[..], &import, &NoProgress).unwrap();
    store
        .tag(&Reference::parse("busybox:test").unwrap(), &desc)
        .unwrap();
    store
}
