//! Writeback hints: the files of a step's packed upper dir and of a layer
//! unpacked into a snapshot have their writeback started while the build
//! runs, not left to the kernel's 30 s timer. Checked with `cachestat(2)`
//! against a control file nothing hints. In a test binary of their own:
//! a `syncfs` (a seal, a prune) in a test running beside them would write
//! everything back and make them skip.

mod support;

use std::fs;

use kiln_layers::diff::{write_tar, DiffOptions};
use kiln_layers::unpack::{unpack, UnpackOptions};
use kiln_layers::Store;

/// Options for a plain tree, its files' writeback started or not.
fn diff_options(write_back: bool) -> DiffOptions {
    DiffOptions {
        source_date_epoch: None,
        overlay_whiteouts: false,
        write_back,
        commit_in_background: false,
    }
}

#[test]
fn packing_an_upper_dir_starts_the_writeback_of_its_files_when_asked() {
    // On the build's filesystem (a tmpfs, as /tmp may be, writes nothing
    // back).
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(control) = support::control_file(tmp.path()) else {
        return;
    };
    let write = |dir: &str| {
        let dir = tmp.path().join(dir);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("data"), vec![7u8; 4 << 20]).unwrap();
        dir
    };
    let asked = write("asked");
    let not_asked = write("not-asked");
    write_tar(&not_asked, std::io::sink(), &diff_options(false)).unwrap();
    write_tar(&asked, std::io::sink(), &diff_options(true)).unwrap();
    // Started on a thread of its own: within seconds, where the kernel's
    // own writeback would wait for its 30 s timer.
    support::only_asked_written_back(&asked, &not_asked, &control, "packed");
}

#[test]
fn packing_a_tree_of_many_small_files_starts_the_writeback_of_every_one() {
    // The files the writeback thread has no room for must be hinted all
    // the same.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(control) = support::control_file(tmp.path()) else {
        return;
    };
    let tree = support::many_small_files(tmp.path(), 3000);
    write_tar(&tree, std::io::sink(), &diff_options(true)).unwrap();
    support::written_back(&tree, &control);
}

#[test]
fn unpacking_a_layer_starts_the_writeback_of_its_files_when_asked() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(control) = support::control_file(tmp.path()) else {
        return;
    };
    let tree = support::many_small_files(tmp.path(), 3000);
    let mut layer = Vec::new();
    write_tar(&tree, &mut layer, &diff_options(false)).unwrap();
    let unpacked = |write_back| {
        let dest = tmp.path().join(format!("write-back-{write_back}"));
        fs::create_dir(&dest).unwrap();
        let options = UnpackOptions {
            write_back,
            ..UnpackOptions::default()
        };
        unpack(layer.as_slice(), &dest, &options).unwrap();
        dest
    };
    let not_asked = unpacked(false);
    let asked = unpacked(true);
    support::only_asked_written_back(&asked, &not_asked, &control, "unpacked");
}

#[test]
fn a_layer_unpacked_into_a_snapshot_has_the_writeback_of_its_files_started() {
    // On the build's filesystem (a tmpfs, as /tmp may be, writes nothing
    // back); the control file tells whether something else wrote it back.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(control) = support::control_file(tmp.path()) else {
        return;
    };
    let store = Store::open(tmp.path().join("store")).unwrap();
    let image = support::many_file_image(&store, 3000);
    let lower = store
        .prepare_snapshots(&image, &kiln_layers::NoProgress)
        .unwrap()
        .remove(0);
    assert_eq!(fs::read_dir(&lower).unwrap().count(), 3000);
    support::written_back(&lower, &control);
}
