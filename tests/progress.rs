//! A build's progress as BuildKit and buildx show it, end to end: the
//! FROM line of a digest reference, the tty view on a narrow terminal
//! (lines cut to its width, times right-aligned), and an interrupted build
//! (SIGINT, SIGTERM): running steps `CANCELED`, the build said to be
//! canceled, exit code 130 as buildx's, nothing left running or in the
//! store's scratch, and the store usable by the next build.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use common::{
    busybox_rootfs_tar, kiln, kiln_ok, processes_with_argument, scratch_left, wait_for_text,
};

/// For tests whose only need for root is kiln's own (namespaces, overlay
/// mounts): they run rootless in scripts/test-rootless.
macro_rules! require_namespaces {
    () => {
        kiln_testsupport::require_namespaces!("real namespaces and overlay mounts")
    };
}

/// A store with busybox imported as `name`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("busybox.tar");
        busybox_rootfs_tar(&tar).unwrap();
        let fixture = Fixture { dir };
        kiln_ok(&fixture.root(), &["import", tar.to_str().unwrap(), name]);
        fixture
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A context directory `name` holding only `dockerfile`.
    fn context(&self, name: &str, dockerfile: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        dir
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_digest_reference_is_shown_with_its_digest_once() {
    require_namespaces!();
    let registry = kiln_testsupport::RegistryServer::start_plain().unwrap();
    let reference = format!("{}/test/bb:1", registry.host);
    let fixture = Fixture::new(&reference);
    let pushed = kiln_ok(
        &fixture.root(),
        &["push", "--insecure-registry", &registry.host, &reference],
    );
    let digest = pushed
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in {pushed:?}"))
        .to_string();
    let pinned = format!("{}/test/bb@{digest}", registry.host);
    let ctx = fixture.context("pinned", &format!("FROM {pinned}\nRUN true\n"));
    let out = kiln(
        &fixture.root(),
        &[
            "build",
            "--insecure-registry",
            &registry.host,
            ctx.to_str().unwrap(),
        ],
    );
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.ends_with(&format!("[1/2] FROM {pinned}"))),
        "{stderr}"
    );
    assert!(!stderr.contains(&format!("{digest}@")), "{stderr}");
}

/// Each output shows the vertex BuildKit's exporter of its kind shows;
/// the store's `exporting to image` comes only when the store is an
/// output (it was shown for `-o type=local` too).
#[test]
fn each_output_shows_its_exporters_vertex() {
    let fixture = Fixture::new("busybox:latest");
    let ctx = fixture.context("outputs", "FROM busybox:latest\nLABEL a=b\n");
    let at = |name: &str| fixture.dir.path().join(name).display().to_string();
    let outputs = [
        format!("type=local,dest={}", at("local")),
        format!("type=tar,dest={}", at("fs.tar")),
        format!("type=oci,dest={}", at("image.oci")),
        format!("type=docker,dest={}", at("image.docker")),
    ];
    let mut args = vec!["build"];
    for output in &outputs {
        args.extend(["-o", output.as_str()]);
    }
    args.push(ctx.to_str().unwrap());
    let out = kiln(&fixture.root(), &args);
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    for vertex in [
        "exporting to client directory",
        "exporting to client tarball",
        "exporting to oci image format",
        "exporting to docker image format",
    ] {
        assert!(stderr.contains(vertex), "{vertex}: {stderr}");
    }
    assert!(!stderr.contains("exporting to image"), "{stderr}");

    let out = kiln(
        &fixture.root(),
        &["build", "-t", "named:1", ctx.to_str().unwrap()],
    );
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("exporting to image"), "{stderr}");
    assert!(
        stderr.contains("naming to docker.io/library/named:1 done"),
        "{stderr}"
    );
    assert!(!stderr.contains("exporting to client"), "{stderr}");
}

/// The rows of a terminal `width` columns wide that the live view drew,
/// from `script`'s log, as of its last redraw (from the last header on).
/// The view pads every line to the full width and lets the terminal wrap
/// it, so the text between control sequences cuts into rows of `width`.
fn last_screen(log: &str, width: usize) -> Vec<String> {
    let mut text = String::new();
    let mut chars = log.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // A CSI sequence: ESC [ parameters, then a final letter.
            '\u{1b}' => {
                if chars.next_if_eq(&'[').is_some() {
                    for p in chars.by_ref() {
                        if p.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
                text.push('\n');
            }
            '\r' | '\n' => text.push('\n'),
            c => text.push(c),
        }
    }
    let mut rows: Vec<String> = Vec::new();
    for segment in text.split('\n') {
        let chars: Vec<char> = segment.chars().collect();
        for row in chars.chunks(width) {
            if row.first() == Some(&'[') {
                rows.clear();
            }
            rows.push(row.iter().collect());
        }
    }
    rows
}

#[test]
fn tty_lines_are_cut_to_the_terminal_and_times_right_aligned() {
    require_namespaces!();
    let fixture = Fixture::new("busybox:latest");
    let long = "a-long-output-line-that-goes-well-past-the-sixty-columns-of-this-terminal";
    let ctx = fixture.context(
        "tty",
        &format!(
            "FROM busybox:latest\nRUN echo {long} && sleep 1\n\
             RUN echo a second step whose command line is wider than the terminal is\n"
        ),
    );
    let command = format!(
        "stty cols 60 rows 40; {} --root {} build --progress tty {}",
        common::kiln_bin().display(),
        fixture.root().display(),
        ctx.display()
    );
    let log = fixture.dir.path().join("tty.log");
    let mut script = std::process::Command::new("script");
    // The hermetic environment kiln_command() gives kiln.
    for (key, value) in common::kiln_command().get_envs() {
        match value {
            Some(value) => script.env(key, value),
            None => script.env_remove(key),
        };
    }
    let status = script
        .args(["-qec", &command])
        .arg(&log)
        .stdout(Stdio::null())
        .status()
        .expect("script (util-linux) runs");
    assert!(status.success());
    let raw = std::fs::read_to_string(&log).unwrap();
    // Nothing wider than the terminal was written: the long output line
    // and the long command were cut, not wrapped.
    assert!(!raw.contains("sixty-columns-of-this-terminal"), "{raw}");
    assert!(!raw.contains("wider than the terminal is"), "{raw}");
    // The running step's output was drawn, cut.
    assert!(
        raw.contains(" => => # a-long-output-line-that-goes"),
        "{raw}"
    );
    let screen = last_screen(&raw, 60);
    let view = screen.join("\n");
    assert!(
        screen[0].starts_with("[+] Building ") && screen[0].contains("FINISHED"),
        "{view}"
    );
    let steps: Vec<&String> = screen
        .iter()
        .filter(|row| row.starts_with(" => ") && row.contains("/3] "))
        .collect();
    assert_eq!(steps.len(), 3, "{view}");
    for row in steps {
        // 60 columns: the name cut, one space, the time ending in the
        // 59th, the last column empty (BuildKit's `width - 1`).
        assert_eq!(row.chars().count(), 60, "{row:?}");
        let time = row.trim_end().rsplit(' ').next().unwrap();
        assert!(
            time.ends_with('s') && time.trim_end_matches('s').parse::<f64>().is_ok(),
            "no time at the end of {row:?}"
        );
        assert!(row.ends_with(&format!("{time} ")), "{row:?}");
    }
    assert!(
        screen
            .iter()
            .any(|r| r.starts_with(" => [2/3] RUN echo a-long-output-line")),
        "{view}"
    );
}

/// Starts `kiln build` of `ctx` in plain progress, its stderr into `log`.
fn spawn_build(root: &Path, ctx: &Path, log: &Path) -> Child {
    common::kiln_command()
        .arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain"])
        .arg(ctx)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start kiln")
}

#[test]
fn sigint_and_sigterm_cancel_a_build_and_clean_up() {
    require_namespaces!();
    let fixture = Fixture::new("busybox:latest");
    let root = fixture.root();
    for (signal, name) in [
        (rustix::process::Signal::INT, "SIGINT"),
        (rustix::process::Signal::TERM, "SIGTERM"),
    ] {
        // A sleep no other process here has: it must not outlive the build.
        let seconds = format!("{}", 3000 + std::process::id() % 1000);
        let ctx = fixture.context(
            name,
            &format!(
                "FROM busybox:latest\nRUN echo sleeping-{name} && sleep {seconds}\nRUN echo never\n"
            ),
        );
        let log = fixture.dir.path().join(format!("{name}.log"));
        let mut child = spawn_build(&root, &ctx, &log);
        wait_for_text(&log, &format!("sleeping-{name}"));
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, signal).unwrap();
        let status = child.wait().unwrap();
        let stderr = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(130), "{name}:\n{stderr}");
        assert!(stderr.contains("[2/3] RUN echo sleeping"), "{stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with('#') && l.ends_with(" CANCELED")),
            "{name}: no step marked CANCELED:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("error: build canceled by {name}")),
            "{stderr}"
        );
        assert!(!stderr.contains("[3/3]"), "a step started after:\n{stderr}");
        assert_eq!(processes_with_argument(&seconds), Vec::<String>::new());
        assert_eq!(scratch_left(&root), Vec::<String>::new(), "{name}");
    }
    // The store serves the next build.
    let ctx = fixture.context("after", "FROM busybox:latest\nRUN echo fine > /fine\n");
    let out = kiln(&root, &["build", ctx.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
}

/// A RUN's output is read in lines of at most 64 KiB, whatever it prints:
/// bytes that are not UTF-8 are shown replaced (reading did not stop at
/// them, which closed the pipe and killed the RUN with SIGPIPE), and one
/// 1 MiB line without a newline is shown as 16 lines (kiln does not hold
/// a line of any length: a RUN could make it run out of memory).
#[test]
fn run_output_is_read_in_bounded_lines_whatever_its_bytes() {
    require_namespaces!();
    let f = Fixture::new("busybox:latest");
    let ctx = f.context(
        "output",
        "FROM busybox:latest\n\
         RUN printf 'bin\\377\\376ary\\n'; head -c 1048576 /dev/zero | tr '\\0' x; \
         echo; echo after\n",
    );
    let out = kiln(
        &f.root(),
        &[
            "build",
            "--progress",
            "plain",
            "--no-cache",
            ctx.to_str().unwrap(),
        ],
    );
    let stderr = stderr_of(&out);
    let head: String = stderr.chars().take(4000).collect();
    assert!(out.status.success(), "{head}");
    assert!(stderr.contains("bin\u{fffd}\u{fffd}ary"), "{head}");
    assert!(stderr.contains("after"), "no 'after'");
    let long: Vec<usize> = stderr
        .lines()
        .filter(|l| l.contains("xxxx"))
        .map(|l| l.matches('x').count())
        .collect();
    assert_eq!(long.iter().sum::<usize>(), 1 << 20, "{long:?}");
    assert!(long.iter().all(|n| *n <= 64 * 1024), "{long:?}");
}
