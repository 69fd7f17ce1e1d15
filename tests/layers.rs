//! `kiln layers` and `kiln history` on an image built here with known
//! overwrites and deletions: the wasted bytes and each layer's file lists
//! are exact, and each flag shows its effect.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn kiln(root: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(KILN)
        .current_dir(dir)
        .env("KILN_ROOT", root)
        .env("DOCKER_CONFIG", kiln_testsupport::empty_docker_config())
        .env_remove("KILN_LOG")
        .stdin(std::process::Stdio::null())
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The image: busybox, then a 1000-byte file and a 10-byte one, the first
/// overwritten with 300 bytes, the second deleted.
const DOCKERFILE: &str = "\
FROM busybox:layers
COPY big /data/big
COPY small /data/small
RUN head -c 300 /dev/zero > /data/big && echo this-run-line-is-long-enough-to-be-cut-by-history
RUN rm /data/small
";

fn build() -> (tempfile::TempDir, std::path::PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    let tar = work.path().join("busybox.tar");
    kiln_testsupport::BusyboxRootfs::default()
        .write_tar(&tar)
        .unwrap();
    ok(&kiln(
        &root,
        work.path(),
        &["import", tar.to_str().unwrap(), "busybox:layers"],
    ));
    let context = work.path().join("context");
    fs::create_dir_all(&context).unwrap();
    fs::write(context.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::write(context.join("big"), vec![b'b'; 1000]).unwrap();
    fs::write(context.join("small"), vec![b's'; 10]).unwrap();
    ok(&kiln(
        &root,
        &context,
        &["build", "-q", "-t", "layers:1", "."],
    ));
    (work, root)
}

fn files(layer: &serde_json::Value, list: &str) -> Vec<(String, u64)> {
    layer[list]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] != "dir")
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn wasted_bytes_and_file_lists_are_exact() {
    kiln_testsupport::require_namespaces!("RUN steps run in namespaces");
    let (work, root) = build();
    let dir = work.path();
    let json: serde_json::Value = serde_json::from_str(&ok(&kiln(
        &root,
        dir,
        &["layers", "layers:1", "--format", "json"],
    )))
    .unwrap();
    let layers = json["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 5, "{json:#}");
    let s = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(p, n)| (p.to_string(), *n)).collect()
    };
    assert_eq!(files(&layers[1], "added"), s(&[("data/big", 1000)]));
    assert_eq!(files(&layers[2], "added"), s(&[("data/small", 10)]));
    assert_eq!(files(&layers[3], "changed"), s(&[("data/big", 300)]));
    assert_eq!(files(&layers[3], "added"), s(&[]));
    assert_eq!(files(&layers[4], "deleted"), s(&[("data/small", 10)]));
    assert_eq!(files(&layers[4], "added"), s(&[]));
    assert_eq!(json["wasted_bytes"], 1010);
    assert_eq!(layers[1]["wasted_bytes"], 1000);
    assert_eq!(layers[2]["wasted_bytes"], 10);
    assert_eq!(layers[3]["wasted_bytes"], 0);
    let wasted = json["wasted"].as_array().unwrap();
    assert_eq!(wasted[0]["path"], "data/big");
    assert_eq!(
        (wasted[0]["layer"].as_u64(), wasted[0]["by_layer"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(wasted[0]["how"], "overwritten");
    assert_eq!(wasted[1]["how"], "deleted");
    let total = json["total_bytes"].as_u64().unwrap();
    let busybox = layers[0]["size"].as_u64().unwrap();
    assert_eq!(total, busybox + 1000 + 10 + 300);
    let efficiency = json["efficiency"].as_f64().unwrap();
    assert!((efficiency - (total - 1010) as f64 / total as f64).abs() < 1e-9);

    // --max-wasted: bytes and percent, each side of the limit.
    let percent = 1010.0 * 100.0 / total as f64;
    for (limit, passes) in [
        ("1010".to_string(), true),
        ("1009".to_string(), false),
        ("1kB".to_string(), false),
        ("1KiB".to_string(), true),
        (format!("{}%", percent + 0.01), true),
        (format!("{}%", percent - 0.01), false),
    ] {
        let out = kiln(&root, dir, &["layers", "layers:1", "--max-wasted", &limit]);
        assert_eq!(
            out.status.success(),
            passes,
            "--max-wasted {limit}: {out:?}"
        );
        if !passes {
            assert!(String::from_utf8_lossy(&out.stderr).contains("more than --max-wasted"));
        }
    }

    // Text: the top-N list is N long; --tree shows the changes by directory.
    let text = ok(&kiln(&root, dir, &["layers", "layers:1", "--top", "1"]));
    assert!(text.contains("wasted: 1.01kB (1010 bytes"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains(" by layer ")).count(),
        1,
        "{text}"
    );
    let text = ok(&kiln(&root, dir, &["layers", "layers:1", "--top", "5"]));
    assert_eq!(
        text.lines().filter(|l| l.contains(" by layer ")).count(),
        2,
        "{text}"
    );
    assert!(!text.contains("layer 3: RUN"), "{text}");
    // The JSON lists the whole waste: --top, which would do nothing there,
    // is refused.
    let out = kiln(
        &root,
        dir,
        &["layers", "layers:1", "--top", "1", "--format", "json"],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--top shortens the text's list"),
        "{out:?}"
    );
    // So is --tree: the JSON lists each layer's changes.
    let out = kiln(
        &root,
        dir,
        &["layers", "layers:1", "--tree", "--format", "json"],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tree draws the text's layers"),
        "{out:?}"
    );
    let tree = ok(&kiln(&root, dir, &["layers", "layers:1", "--tree"]));
    let layer3 = tree.split("layer 3: ").nth(1).unwrap();
    assert!(
        layer3.contains("data/\n") && layer3.contains("  ~ big (300B)"),
        "{tree}"
    );
}

#[test]
fn history_like_docker_history() {
    kiln_testsupport::require_namespaces!("RUN steps run in namespaces");
    let (work, root) = build();
    let dir = work.path();
    let json: serde_json::Value = serde_json::from_str(&ok(&kiln(
        &root,
        dir,
        &["history", "layers:1", "--format", "json"],
    )))
    .unwrap();
    let rows = json.as_array().unwrap();
    // Newest first; the image id on the newest entry only.
    assert!(rows[0]["created_by"]
        .as_str()
        .unwrap()
        .starts_with("RUN /bin/sh -c rm /data/small"));
    assert!(rows[0]["id"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(rows[1]["id"], "<missing>");
    assert_eq!(rows[1]["size"], 300);
    assert_eq!(rows[2]["size"], 10);
    assert_eq!(rows.last().unwrap()["created_by"], "kiln import");
    let table = ok(&kiln(&root, dir, &["history", "layers:1"]));
    let full = ok(&kiln(&root, dir, &["history", "--no-trunc", "layers:1"]));
    assert!(table.starts_with("IMAGE "), "{table}");
    assert!(
        !table.contains("cut-by-history") && table.contains('…'),
        "{table}"
    );
    assert!(
        full.contains("this-run-line-is-long-enough-to-be-cut-by-history"),
        "{full}"
    );
    // The image id: 12 digits, or whole (as docker history prints it).
    let id = rows[0]["id"].as_str().unwrap();
    let first_cell = |t: &str| {
        t.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        first_cell(&table),
        id["sha256:".len().."sha256:".len() + 12]
    );
    assert_eq!(first_cell(&full), id);
}
