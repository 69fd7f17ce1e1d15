//! Every build option either works as in BuildKit's Dockerfile frontend or
//! is refused: end-to-end builds (root, real namespaces) that show each
//! option's effect — a file's content, mode or owner, a config field, an
//! error naming the line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{kiln, kiln_ok, text};

use common::BusyboxStore as Fixture;

impl Fixture {
    fn build(&self, args: &[&str]) -> Output {
        let mut all = vec!["build"];
        all.extend_from_slice(args);
        kiln(&self.root(), &all)
    }

    /// Builds `dockerfile` with `args`, exports the root filesystem, and
    /// returns it (panics, with the output, when the build fails).
    fn rootfs(&self, name: &str, dockerfile: &str, args: &[&str]) -> PathBuf {
        let ctx = self.context(name, &[("Dockerfile", dockerfile)]);
        let out_dir = self.dir.path().join(format!("{name}-rootfs"));
        let output = format!("type=local,dest={}", out_dir.display());
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--output", &output, ctx.to_str().unwrap()]);
        let out = self.build(&all);
        assert!(out.status.success(), "{}", text(&out));
        out_dir
    }
}

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

macro_rules! require_root {
    () => {
        if !kiln_testsupport::require_root("real namespaces and overlay mounts") {
            return;
        }
    };
}

/// Like `require_root!`, for tests whose only need for root is kiln's
/// own (they run rootless in scripts/test-rootless).
macro_rules! require_namespaces {
    () => {
        kiln_testsupport::require_namespaces!("real namespaces and overlay mounts")
    };
}

/// The fields of the stored image `tag`'s config that kiln's types do not
/// name (an inline cache's `kiln.cache` among them).
fn stored_config(fixture: &Fixture, tag: &str) -> serde_json::Value {
    let store = kiln_layers::Store::open(fixture.root()).unwrap();
    let desc = store
        .resolve(&kiln_layers::Reference::parse(tag).unwrap())
        .unwrap()
        .unwrap_or_else(|| panic!("{tag} is not in the store"));
    let image = store
        .read_image(&desc, &kiln_layers::Platform::host())
        .unwrap();
    serde_json::to_value(&image.config.extra).unwrap()
}

/// Every file under `dir` holding `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// Secret mounts: `env=` puts the value in the step's environment (and no
/// file without a target); `mode`, `uid` and `gid` own the file so a
/// non-root USER reads a 0400 secret; the default is 0400 root; `--secret
/// id=X` alone reads the variable X; `type=env`; a relative target is
/// below the working directory (BuildKit's exec op joins every relative
/// mount destination with it), not below `/`. The secret's bytes reach
/// no layer, config, history, progress line or metadata file (the exported
/// OCI layout and the store are searched for them).
#[test]
fn secret_mounts_env_mode_owner_and_flag_forms() {
    require_namespaces!();
    let fixture = Fixture::new();
    let value = format!("s3cr3t-{}", std::process::id());
    let dockerfile = "FROM busybox:latest\n\
        RUN --mount=type=secret,id=tok,env=TOKEN \\\n\
            echo \"env:$TOKEN\" | sha1sum > /env-sum && ls /run/secrets > /listing 2>&1; true\n\
        RUN --mount=type=secret,id=tok stat -c '%a %u:%g' /run/secrets/tok > /default-mode\n\
        USER app\n\
        RUN --mount=type=secret,id=tok,mode=0400,uid=1000,gid=1000,target=/home/app/tok \\\n\
            cat /home/app/tok | sha1sum > /tmp/owned-sum && stat -c '%a %u:%g' /home/app/tok > /tmp/owned-mode\n\
        USER root\n\
        RUN --mount=type=secret,id=bare,env=BARE echo \"$BARE\" | sha1sum > /bare-sum\n\
        RUN --mount=type=secret,id=typed,env=TYPED echo \"$TYPED\" | sha1sum > /typed-sum\n\
        WORKDIR /app\n\
        RUN --mount=type=secret,id=tok,target=rel/tok cat /app/rel/tok | sha1sum > /rel-sum && test ! -e /rel\n\
        RUN cp /tmp/owned-sum /tmp/owned-mode /\n";
    let ctx = fixture.context("secrets", &[("Dockerfile", dockerfile)]);
    let oci = fixture.dir.path().join("secrets.oci");
    let meta = fixture.dir.path().join("secrets-meta.json");
    let rootfs = fixture.dir.path().join("secrets-rootfs");
    let out = common::kiln_command()
        .arg("--root")
        .arg(fixture.root())
        .args(["build", "--no-cache", "-t", "secrets:test"])
        .args(["--secret", "id=tok,env=KILN_TEST_SECRET"])
        .args(["--secret", "id=KILN_TEST_BARE"])
        .args(["--secret", "id=typed,type=env,src=KILN_TEST_SECRET"])
        .args(["--build-arg", "UNUSED=1"])
        .arg("--output")
        .arg(format!("type=oci,tar=false,dest={}", oci.display()))
        .arg("--output")
        .arg(format!("type=local,dest={}", rootfs.display()))
        .arg("--metadata-file")
        .arg(&meta)
        .arg("-v")
        .arg(&ctx)
        .env("KILN_TEST_SECRET", &value)
        .env("KILN_TEST_BARE", format!("bare-{value}"))
        .env("KILN_PROGRESS", "plain")
        .output()
        .unwrap();
    // `--secret id=KILN_TEST_BARE` has the id KILN_TEST_BARE; the Dockerfile
    // asks for `bare`: a secret that was not given is skipped (not required).
    assert!(out.status.success(), "{}", text(&out));
    let sha1 = |s: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("sha1sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(s.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(read(&rootfs, "/env-sum"), sha1(&format!("env:{value}\n")));
    assert!(
        read(&rootfs, "/listing").contains("No such file"),
        "env= without a target mounts no file: {}",
        read(&rootfs, "/listing")
    );
    assert_eq!(read(&rootfs, "/default-mode"), "400 0:0\n");
    assert_eq!(read(&rootfs, "/owned-sum"), sha1(&value));
    assert_eq!(read(&rootfs, "/owned-mode"), "400 1000:1000\n");
    assert_eq!(read(&rootfs, "/bare-sum"), sha1("\n"), "not given: skipped");
    assert_eq!(read(&rootfs, "/typed-sum"), sha1(&format!("{value}\n")));
    // A relative target is below the working directory, as BuildKit's
    // PrepareMounts joins a mount's destination to the step's cwd.
    assert_eq!(read(&rootfs, "/rel-sum"), sha1(&value));

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(&value),
        "progress shows the secret:\n{stderr}"
    );
    for place in [&oci, &meta, &rootfs, &fixture.root()] {
        let found = files_holding(place, value.as_bytes());
        assert!(found.is_empty(), "the secret is in {found:?}");
    }
    // The probe can find it: the same search sees a file that holds it.
    std::fs::write(fixture.dir.path().join("control"), &value).unwrap();
    assert_eq!(files_holding(fixture.dir.path(), value.as_bytes()).len(), 1);
}

/// `--secret id=X` alone reads the variable X (buildx); a required secret
/// that was not given fails its step, naming it.
#[test]
fn secret_flag_defaults_and_required() {
    require_namespaces!();
    let fixture = Fixture::new();
    let dockerfile = "FROM busybox:latest\nRUN --mount=type=secret,id=KILN_TEST_BARE cat /run/secrets/KILN_TEST_BARE > /got\n";
    let ctx = fixture.context("bare", &[("Dockerfile", dockerfile)]);
    let rootfs = fixture.dir.path().join("bare-rootfs");
    let out = common::kiln_command()
        .arg("--root")
        .arg(fixture.root())
        .args(["build", "--secret", "id=KILN_TEST_BARE", "--output"])
        .arg(format!("type=local,dest={}", rootfs.display()))
        .arg(&ctx)
        .env("KILN_TEST_BARE", "from the variable")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&rootfs, "/got"), "from the variable");

    // env= naming a variable that is not set: an empty secret, as
    // BuildKit's secrets provider reads it (a fork's pull request has no
    // token), even for a required mount.
    let rootfs = fixture.rootfs(
        "unset-env",
        "FROM busybox:latest\nRUN --mount=type=secret,id=token,required=true \
         wc -c < /run/secrets/token > /got\n",
        &["--secret", "id=token,env=KILN_TEST_NEVER_SET"],
    );
    assert_eq!(read(&rootfs, "/got").trim(), "0");

    let required = fixture.context(
        "required",
        &[(
            "Dockerfile",
            "FROM busybox:latest\nRUN --mount=type=secret,id=missing,required true\n",
        )],
    );
    let out = fixture.build(&[required.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("secret missing is required"),
        "{stderr}"
    );

    // An optional secret that was not given: no file, and its variable
    // set and empty (BuildKit's loadSecretEnv), which `set -u` and
    // `${TOKEN+set}` tell from an unset one.
    let rootfs = fixture.rootfs(
        "optional",
        "FROM busybox:latest\nRUN --mount=type=secret,id=nothere,env=TOKEN \
         set -u; echo \"[${TOKEN+set}][$TOKEN]\" > /got; ls /run/secrets >> /got 2>&1 || true\n",
        &[],
    );
    let got = read(&rootfs, "/got");
    assert!(got.starts_with("[set][]\n"), "{got}");
    assert!(!got.contains("nothere"), "{got}");
}

/// Cache mounts: `uid`/`gid`/`mode` let a non-root USER write the cache
/// (without them the directory is root's and the write is refused), and
/// the files persist from one build to the next.
#[test]
fn cache_mount_owner_and_mode() {
    require_namespaces!();
    let fixture = Fixture::new();
    let owned = fixture.rootfs(
        "cache-owned",
        "FROM busybox:latest\nUSER nobody\n\
         RUN --mount=type=cache,target=/c,id=owned,uid=65534,gid=65534,mode=0700 \\\n\
             touch /c/x && stat -c '%a %u' /c > /tmp/mode && ls /c > /tmp/ls\n\
         USER root\nRUN cp /tmp/mode /tmp/ls /\n",
        &["--no-cache"],
    );
    assert_eq!(read(&owned, "/mode"), "700 65534\n");
    assert_eq!(read(&owned, "/ls"), "x\n");
    // The same cache, next build: the file is there.
    let again = fixture.rootfs(
        "cache-owned-again",
        "FROM busybox:latest\nRUN --mount=type=cache,target=/c,id=owned,uid=65534,gid=65534,mode=0700 ls /c > /ls\n",
        &["--no-cache"],
    );
    assert_eq!(read(&again, "/ls"), "x\n");
    // One id with another owner or mode, or none, is another cache, as in
    // BuildKit: none of them sees the file or changes the first's owner.
    for (i, options) in ["uid=1000,gid=1000", "uid=65534,gid=65534,mode=0755", ""]
        .into_iter()
        .enumerate()
    {
        let other = fixture.rootfs(
            &format!("cache-owned-other-{i}"),
            &format!(
                "FROM busybox:latest
RUN --mount=type=cache,target=/c,id=owned{comma}{options} \
                 ls -A /c > /ls
",
                comma = if options.is_empty() { "" } else { "," }
            ),
            &["--no-cache"],
        );
        assert_eq!(read(&other, "/ls"), "", "{options}");
    }
    let again = fixture.rootfs(
        "cache-owned-last",
        "FROM busybox:latest
RUN --mount=type=cache,target=/c,id=owned,uid=65534,gid=65534,mode=0700 \
         stat -c '%a %u' /c > /mode && ls /c > /ls
",
        &["--no-cache"],
    );
    assert_eq!(read(&again, "/mode"), "700 65534\n");
    assert_eq!(read(&again, "/ls"), "x\n");
    // With `source=`, BuildKit makes no owned directory: the owner and
    // mode are not part of the cache, which the plain mount shares. And
    // the mode's permission bits only: 1777 is 777's cache, without the
    // sticky bit.
    let shared = fixture.rootfs(
        "cache-source-owner",
        "FROM busybox:latest\n\
         RUN --mount=type=cache,target=/c,id=sub,source=s,uid=1000 touch /c/y\n\
         RUN --mount=type=cache,target=/c,id=sub,source=s ls /c > /ls\n\
         RUN --mount=type=cache,target=/c,id=bits,mode=777 touch /c/z\n\
         RUN --mount=type=cache,target=/c,id=bits,mode=1777 stat -c '%a' /c > /bits && ls /c >> /bits\n",
        &["--no-cache"],
    );
    assert_eq!(read(&shared, "/ls"), "y\n");
    assert_eq!(read(&shared, "/bits"), "777\nz\n");
    // An id with a NUL byte (which could spell an owned cache's key:
    // "owned", NUL, "owned uid:gid:mode") is refused, naming the line.
    let ctx = fixture.context(
        "cache-nul-id",
        &[(
            "Dockerfile",
            "FROM busybox:latest\n\
             RUN --mount=\"type=cache,target=/c,id=owned\u{0}owned 65534:65534:700\" ls -A /c\n",
        )],
    );
    let out = kiln(
        &fixture.root(),
        &["build", "--no-cache", ctx.to_str().unwrap()],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("line 2: ")
            && text(&out)
                .contains(r#"cache id "owned\0owned 65534:65534:700" contains a NUL byte"#),
        "{}",
        text(&out)
    );
    // Control: without an owner, nobody cannot write the cache.
    let denied = fixture.rootfs(
        "cache-denied",
        "FROM busybox:latest\nUSER nobody\n\
         RUN --mount=type=cache,target=/c,id=denied (touch /c/x 2>&1 || true) > /tmp/out\n\
         USER root\nRUN cp /tmp/out /\n",
        &["--no-cache"],
    );
    assert!(
        read(&denied, "/out").contains("Permission denied"),
        "{}",
        read(&denied, "/out")
    );
}

/// Starts `kiln build` on a Dockerfile whose RUN marks the cache
/// (`/c/<name>`), prints `holding`, waits (up to 120 s) for the test to
/// release it (`release-<sharing>` in the cache), and marks it again
/// (`/c/<name>-done`); returns once `holding` showed.
fn start_holding_build(fixture: &Fixture, name: &str, sharing: &str) -> std::process::Child {
    let ctx = fixture.context(
        name,
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox:latest\nRUN --mount=type=cache,target=/c,id=shared-{sharing},sharing={sharing} \
                 touch /c/{name} && echo holding && \
                 i=0; while [ ! -e /c/release-{sharing} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; \
                 touch /c/{name}-done\n"
            ),
        )],
    );
    let mut child = build_child(fixture, &ctx, &[]);
    wait_for_line(&mut child, |line| line.ends_with(" holding"));
    child
}

/// `kiln build --no-cache ARGS CTX` started, its progress (plain) piped.
fn build_child(fixture: &Fixture, ctx: &Path, args: &[&str]) -> std::process::Child {
    common::kiln_command()
        .arg("--root")
        .arg(fixture.root())
        .args(["build", "--no-cache"])
        .args(args)
        .arg(ctx)
        .env("KILN_PROGRESS", "plain")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads the child's progress until a line matches, then keeps draining
/// it on a thread (so the build never blocks on a full pipe).
fn wait_for_line(child: &mut std::process::Child, matches: impl Fn(&str) -> bool) {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        if matches(&line.unwrap()) {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
}

/// Lets the holding build of `sharing` go on: `release-<sharing>` next to
/// its mark, in whichever cache directory of the store holds it.
fn release(fixture: &Fixture, sharing: &str) {
    let mark = format!("first-{sharing}");
    let dirs: Vec<PathBuf> = files_named(&fixture.root(), &mark)
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    assert!(!dirs.is_empty(), "no cache holds {mark}");
    for dir in dirs {
        std::fs::write(dir.join(format!("release-{sharing}")), "").unwrap();
    }
}

/// Every file called `name` under `dir`.
fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(_) if entry.file_name() == name => found.push(path),
                _ => {}
            }
        }
    }
    found
}

/// `sharing=`, across processes on one store, while a first build holds
/// the cache mounted: `shared` (the default) sees its mark at once, while
/// it still holds; `locked` waits until it is done (and then sees both its
/// marks); `private` does not wait and gets another instance of the cache,
/// without the marks. Ordered by the test, not by time: a first build held
/// until the second is done (shared, private) or until the second has
/// started its step (locked).
#[test]
fn cache_mount_sharing_modes_across_processes() {
    require_namespaces!();
    let fixture = Fixture::new();
    // The tests' builds collect in the foreground (KILN_GC=foreground),
    // which waits for every other build on the store to end: the second
    // build would wait for the first one's release timeout.
    std::fs::write(fixture.root().join("gc.toml"), "[gc]\nenabled = false\n").unwrap();
    for (sharing, sees_mark, sees_done) in [
        ("shared", true, false),
        ("locked", true, true),
        ("private", false, false),
    ] {
        let mut first = start_holding_build(&fixture, &format!("first-{sharing}"), sharing);
        let ctx = fixture.context(
            &format!("second-{sharing}"),
            &[(
                "Dockerfile",
                &format!(
                    "FROM busybox:latest\nRUN --mount=type=cache,target=/c,id=shared-{sharing},sharing={sharing} \
                     ls /c > /seen\n"
                ),
            )],
        );
        let out_dir = fixture.dir.path().join(format!("second-{sharing}-out"));
        let output = format!("type=local,dest={}", out_dir.display());
        let mut second = build_child(&fixture, &ctx, &["--output", &output]);
        if sharing == "locked" {
            // The step has started and waits for the lock: let the first go.
            wait_for_line(&mut second, |line| line.contains("ls /c"));
            release(&fixture, sharing);
        }
        assert!(
            second.wait().unwrap().success(),
            "{sharing}: the second build failed"
        );
        release(&fixture, sharing);
        assert!(
            first.wait().unwrap().success(),
            "{sharing}: the first build failed"
        );
        let seen = read(&out_dir, "/seen");
        let name = format!("first-{sharing}");
        let marks: Vec<&str> = seen.lines().collect();
        assert_eq!(
            marks.contains(&name.as_str()),
            sees_mark,
            "{sharing}: the second build saw {seen:?}"
        );
        assert_eq!(
            marks.contains(&format!("{name}-done").as_str()),
            sees_done,
            "{sharing}: the second build saw {seen:?}"
        );
    }
}

/// `BUILDKIT_SANDBOX_HOSTNAME` names RUN's host; `BUILDKIT_CACHE_MOUNT_NS`
/// keeps caches of one id apart; the BUILDKIT_* args kiln does not honour
/// warn; a `# syntax=` of BuildKit's Dockerfile frontend warns that kiln
/// uses its own, another frontend is refused naming the line.
#[test]
fn buildkit_build_args_and_syntax() {
    require_namespaces!();
    let fixture = Fixture::new();
    let host = fixture.rootfs(
        "hostname",
        "FROM busybox:latest\nRUN hostname > /h\n",
        &["--build-arg", "BUILDKIT_SANDBOX_HOSTNAME=ci-builder"],
    );
    assert_eq!(read(&host, "/h"), "ci-builder\n");
    let default = fixture.rootfs(
        "hostname-default",
        "FROM busybox:latest\nRUN hostname > /h\n",
        &[],
    );
    assert_eq!(read(&default, "/h"), "buildkitsandbox\n");

    let write = "FROM busybox:latest\nRUN --mount=type=cache,target=/c,id=ns touch /c/written-before && ls /c > /ls\n";
    fixture.rootfs(
        "ns-a",
        write,
        &["--build-arg", "BUILDKIT_CACHE_MOUNT_NS=team-a"],
    );
    let look = "FROM busybox:latest\nRUN --mount=type=cache,target=/c,id=ns ls /c > /ls\n";
    let same = fixture.rootfs(
        "ns-a-again",
        look,
        &["--build-arg", "BUILDKIT_CACHE_MOUNT_NS=team-a"],
    );
    assert_eq!(read(&same, "/ls"), "written-before\n");
    let other = fixture.rootfs(
        "ns-b",
        look,
        &["--build-arg", "BUILDKIT_CACHE_MOUNT_NS=team-b"],
    );
    assert_eq!(read(&other, "/ls"), "");

    let ctx = fixture.context(
        "syntax",
        &[(
            "Dockerfile",
            "# syntax=docker/dockerfile:1.7\nFROM busybox:latest\nRUN true\n",
        )],
    );
    let out = fixture.build(&[
        "--build-arg",
        "BUILDKIT_INLINE_CACHE=1",
        "-t",
        "inline:1",
        ctx.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "Dockerfile:1: # syntax=docker/dockerfile:1.7: kiln uses its built-in frontend"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("has no effect"), "{stderr}");
    assert!(!stderr.contains("were not consumed"), "{stderr}");
    // BUILDKIT_INLINE_CACHE=1 is --cache-to type=inline (buildx): the
    // image's config carries its steps; =0 does not, and a value that is
    // not a boolean is refused.
    let inline = stored_config(&fixture, "inline:1");
    let steps = inline["kiln.cache"]["steps"].as_array();
    assert!(steps.is_some_and(|s| !s.is_empty()), "{inline}");
    let out = fixture.build(&[
        "--build-arg",
        "BUILDKIT_INLINE_CACHE=0",
        "-t",
        "inline:0",
        ctx.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let plain = stored_config(&fixture, "inline:0");
    assert!(plain.get("kiln.cache").is_none(), "{plain}");
    let out = fixture.build(&[
        "--build-arg",
        "BUILDKIT_INLINE_CACHE=yes",
        ctx.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("BUILDKIT_INLINE_CACHE=yes: invalid boolean value"),
        "{}",
        text(&out)
    );

    let ctx = fixture.context(
        "custom-syntax",
        &[(
            "Dockerfile",
            "# syntax=example.com/frontends/yaml:1\nFROM busybox:latest\n",
        )],
    );
    let out = fixture.build(&[ctx.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "line 1: # syntax=example.com/frontends/yaml:1 names a frontend kiln cannot run"
        ),
        "{stderr}"
    );
}

/// `--output`'s forms: `-o DIR` is the root filesystem in DIR; `-o -` and
/// `type=tar,dest=-` a tar of it on standard output (and nothing else
/// there); `type=tar,dest=FILE` that tar in a file; `type=image,name=…`
/// the image in the store under more names.
#[test]
fn output_shorthands_tar_and_image_names() {
    require_namespaces!();
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "outputs",
        &[("Dockerfile", "FROM busybox\nRUN echo made > /made\n")],
    );
    let ctx = ctx.to_str().unwrap();

    // Into a used directory: what the image has no path for stays; an
    // entry of another kind where the image has a path is replaced (a
    // directory by a file, a file and a symlink by directories), as
    // buildx's receiver replaces it; nothing is written through the
    // symlink.
    let dir = fixture.dir.path().join("out-dir");
    let elsewhere = fixture.dir("elsewhere-dir");
    std::fs::create_dir_all(dir.join("made/inner")).unwrap();
    std::fs::write(dir.join("bin"), "a file\n").unwrap();
    std::fs::write(dir.join("kept.txt"), "kept\n").unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("etc")).unwrap();
    let out = fixture.build(&["-o", dir.to_str().unwrap(), ctx]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&dir, "/made"), "made\n");
    assert_eq!(read(&dir, "/kept.txt"), "kept\n");
    assert!(dir.join("bin/busybox").is_file());
    assert!(!std::fs::symlink_metadata(dir.join("etc"))
        .unwrap()
        .is_symlink());
    assert!(dir.join("etc/passwd").is_file());
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    // A destination that is a symlink is followed: the files land where it
    // leads, and it stays a symlink.
    let link = fixture.dir.path().join("out-link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let out = fixture.build(&["-o", &format!("type=local,dest={}", link.display()), ctx]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(read(&elsewhere, "/made"), "made\n");
    // -t names image, oci and docker outputs only (buildx): with a local
    // or tar output alone, the store gets no image.
    for spec in [
        format!("type=local,dest={}", dir.display()),
        "type=tar,dest=-".to_string(),
    ] {
        let out = fixture.build(&["-t", "files-only:1", "-o", &spec, ctx]);
        assert!(out.status.success(), "{}", text(&out));
        let out = kiln(&fixture.root(), &["inspect", "files-only:1"]);
        assert!(!out.status.success(), "{spec}: {}", text(&out));
    }

    for spec in ["-", "type=tar,dest=-"] {
        let out = fixture.build(&["-o", spec, ctx]);
        assert!(out.status.success(), "{}", text(&out));
        let names = tar_names(&out.stdout);
        assert!(names.contains(&"made".to_string()), "{spec}: {names:?}");
        assert!(
            names.iter().any(|n| n == "bin/busybox"),
            "{spec}: {names:?}"
        );
    }

    let file = fixture.dir.path().join("rootfs.tar");
    let spec = format!("type=tar,dest={}", file.display());
    let out = fixture.build(&["--output", &spec, ctx]);
    assert!(out.status.success(), "{}", text(&out));
    let names = tar_names(&std::fs::read(&file).unwrap());
    assert!(names.contains(&"made".to_string()), "{names:?}");

    let out = fixture.build(&["--output", "type=image,\"name=second:2,third:3\"", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    // `inspect` shows the manifest and config: the same for every name.
    let id = |name: &str| {
        let out = kiln(&fixture.root(), &["inspect", name]);
        assert!(out.status.success(), "{name}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).replace(name, "NAME")
    };
    assert_eq!(id("second:2"), id("third:3"));
    // With -t, buildx names every image output by the -t names alone.
    let out = fixture.build(&["-t", "first:1", "-o", "type=image,name=fourth:4", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(id("first:1"), id("second:2"));
    let out = kiln(&fixture.root(), &["inspect", "fourth:4"]);
    assert!(!out.status.success(), "{}", text(&out));

    // type=tar without dest: standard output, as buildx writes it.
    let out = fixture.build(&["--output", "type=tar", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(tar_names(&out.stdout).contains(&"made".to_string()));
    let out = fixture.build(&["--output", "type=image,push=true", ctx]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("name"), "{}", text(&out));
}

/// An OCI or docker output is a tar whatever its dest's name, a directory
/// with `tar=false` (buildx's `tar` attribute); an unnamed build's archive
/// names no image (BuildKit's exporters add no name then), a named one
/// every -t; a file dest that is a directory, and a directory dest that is
/// a file, are refused before the build; a tar file's missing parent
/// directories are made; an archive is not written to a terminal; and
/// with SOURCE_DATE_EPOCH every file of a type=local or type=tar output
/// is dated then (BuildKit's local and tar exporters).
#[test]
fn archives_are_tars_named_as_buildx_names_them() {
    require_namespaces!();
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "archives",
        &[("Dockerfile", "FROM busybox\nRUN echo made > /made\n")],
    );
    let ctx = ctx.to_str().unwrap();
    let path = |name: &str| fixture.dir.path().join(name);
    let build = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push(ctx);
        let out = fixture.build(&all);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    };
    let refused = |args: &[&str], message: &str| {
        let mut all = args.to_vec();
        all.push(ctx);
        let out = fixture.build(&all);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(message), "{args:?}: {}", text(&out));
        assert!(!text(&out).contains("RUN echo"), "{args:?}: {}", text(&out));
    };
    let tar_json = |tar: &Path, name: &str| -> serde_json::Value {
        let out = std::process::Command::new("tar")
            .arg("-xOf")
            .arg(tar)
            .arg(name)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} in {}", tar.display());
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // Unnamed: a tar (no `.tar` in its name), whose image has no name.
    let (oci, docker) = (path("new/dir/image.oci"), path("image-docker"));
    build(&[
        "-o",
        &format!("type=oci,dest={}", oci.display()),
        "-o",
        &format!("type=docker,dest={}", docker.display()),
    ]);
    assert!(oci.is_file() && docker.is_file());
    let index = tar_json(&oci, "index.json");
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{index}");
    // No name: its only annotation is the date (below).
    let annotations = entries[0]["annotations"].as_object().unwrap();
    let keys: Vec<&String> = annotations.keys().collect();
    assert_eq!(keys, ["org.opencontainers.image.created"], "{index}");
    let manifest = tar_json(&docker, "manifest.json");
    assert!(manifest[0]["RepoTags"].is_null(), "{manifest}");

    // Named: every -t, in the layout's index and in RepoTags.
    build(&[
        "-t",
        "one:1",
        "-t",
        "two:2",
        "-o",
        &format!("type=oci,dest={}", oci.display()),
        "-o",
        &format!("type=docker,dest={}", docker.display()),
    ]);
    let index = tar_json(&oci, "index.json");
    let names: Vec<&str> = (index["manifests"].as_array().unwrap().iter())
        .map(|m| {
            m["annotations"]["io.containerd.image.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        ["docker.io/library/one:1", "docker.io/library/two:2"]
    );
    let manifest = tar_json(&docker, "manifest.json");
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["one:1", "two:2"])
    );
    // name= names an unnamed build's archive, and the metadata file's
    // image.name; a symlink as dest is written through, not replaced.
    let (real, link, meta) = (path("real.tar"), path("link.tar"), path("meta.json"));
    std::os::unix::fs::symlink(&real, &link).unwrap();
    build(&[
        "--metadata-file",
        meta.to_str().unwrap(),
        "-o",
        &format!("type=docker,dest={},name=three:3", link.display()),
    ]);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let manifest = tar_json(&real, "manifest.json");
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["three:3"]));
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(meta["image.name"], "three:3", "{meta}");

    // tar=false: a directory, whose index.json each export is put into as
    // BuildKit's ociindex puts it: unnamed as latest, a name replacing
    // only its own entry.
    let layout = path("layout");
    let to_layout = format!("type=oci,tar=false,dest={}", layout.display());
    build(&["-o", &to_layout]);
    assert!(layout.join("index.json").is_file() && layout.join("oci-layout").is_file());
    build(&["-t", "app:1", "-o", &to_layout]);
    build(&["-t", "app:2", "-o", &to_layout]);
    build(&["-t", "app:1", "-o", &to_layout]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut names: Vec<(String, String)> = (index["manifests"].as_array().unwrap().iter())
        .map(|m| {
            let get = |key: &str| m["annotations"][key].as_str().unwrap_or("").to_string();
            (
                get("io.containerd.image.name"),
                get("org.opencontainers.image.ref.name"),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            (String::new(), "latest".to_string()),
            ("docker.io/library/app:1".into(), "1".into()),
            ("docker.io/library/app:2".into(), "2".into()),
        ],
        "{index}"
    );

    // Destinations of the wrong kind, before the build.
    let dir_dest = format!("type=oci,dest={}", layout.display());
    refused(&["-o", &dir_dest], "the destination file is a directory");
    let file_dest = format!("type=oci,tar=false,dest={}", oci.display());
    refused(&["-o", &file_dest], "the destination directory is a file");
    let local_on_file = format!("type=local,dest={}", oci.display());
    refused(
        &["-o", &local_on_file],
        "the destination directory is a file",
    );
    refused(
        &["-o", "type=oci,tar=maybe,dest=x"],
        "tar=maybe: true or false",
    );
    refused(
        &["-o", "type=docker,tar=false"],
        "dest is required for type=docker with tar=false",
    );
    refused(
        &["-o", "type=oci,tar=false,dest=-"],
        "dest cannot be stdout",
    );

    // push= as BuildKit reads it: a boolean, empty is true (which needs a name).
    build(&["-o", "type=image,name=pushed:no,push=0"]);
    refused(&["-o", "type=image,push="], "needs a name");

    // Not to a terminal (`script` gives the build one as standard output).
    for spec in ["-", "type=oci"] {
        let command = format!(
            "{} --root {} build -o {spec} {ctx}",
            common::kiln_bin().display(),
            fixture.root().display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{spec}: {shown}");
        assert!(
            shown.contains("refusing to write a tar to a terminal"),
            "{spec}: {shown}"
        );
    }

    // SOURCE_DATE_EPOCH dates every exported file.
    let (rootfs, rootfs_tar) = (path("rootfs"), path("rootfs.tar"));
    build(&[
        "--build-arg",
        "SOURCE_DATE_EPOCH=1000000000",
        "-o",
        &format!("type=local,dest={}", rootfs.display()),
        "-o",
        &format!("type=tar,dest={}", rootfs_tar.display()),
    ]);
    for name in ["made", "bin/busybox", "bin"] {
        let meta = std::fs::symlink_metadata(rootfs.join(name)).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::mtime(&meta),
            1_000_000_000,
            "{name}"
        );
    }
    let listing = std::process::Command::new("tar")
        .env("TZ", "UTC")
        .args(["--full-time", "-tvf"])
        .arg(&rootfs_tar)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains(" made"), "{listing}");
    for line in listing.lines() {
        assert!(line.contains("2001-09-09 01:46:40"), "{line}");
    }

    // An archive's index.json entry, and the metadata file's descriptor,
    // say when it was made (BuildKit's oci and docker exporters: now, or
    // SOURCE_DATE_EPOCH), to the second in UTC.
    let created = "org.opencontainers.image.created";
    let (layout, docker_tar, meta) = (path("dated"), path("dated.tar"), path("dated.json"));
    build(&[
        "--build-arg",
        "SOURCE_DATE_EPOCH=1000000000",
        "--metadata-file",
        meta.to_str().unwrap(),
        "-o",
        &format!("type=oci,tar=false,dest={}", layout.display()),
    ]);
    let json = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).unwrap();
    let index = json(&std::fs::read(layout.join("index.json")).unwrap());
    assert_eq!(
        index["manifests"][0]["annotations"][created], "2001-09-09T01:46:40Z",
        "{index}"
    );
    let meta = json(&std::fs::read(&meta).unwrap());
    assert_eq!(
        meta["containerimage.descriptor"]["annotations"][created], "2001-09-09T01:46:40Z",
        "{meta}"
    );
    // The last output's descriptor, as BuildKit merges its exporters'
    // answers: an image output after the archive leaves it undated.
    let meta = path("dated-then-image.json");
    build(&[
        "--metadata-file",
        meta.to_str().unwrap(),
        "-o",
        &format!("type=oci,tar=false,dest={}", layout.display()),
        "-o",
        "type=image",
    ]);
    let meta = json(&std::fs::read(&meta).unwrap());
    assert!(
        meta["containerimage.descriptor"]
            .get("annotations")
            .is_none(),
        "{meta}"
    );
    let before = std::time::SystemTime::now();
    build(&["-o", &format!("type=docker,dest={}", docker_tar.display())]);
    let index = std::process::Command::new("tar")
        .args(["-xOf"])
        .arg(&docker_tar)
        .arg("index.json")
        .output()
        .unwrap();
    let index = json(&index.stdout);
    let stamp = index["manifests"][0]["annotations"][created]
        .as_str()
        .unwrap_or_else(|| panic!("{index}"))
        .to_string();
    let seconds = kiln_layers::oci::parse_rfc3339(&stamp).unwrap();
    let since = before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(stamp.ends_with('Z') && stamp.len() == 20, "{stamp}");
    assert!((since - 1..=since + 120).contains(&seconds), "{stamp}");
}

/// Standard output holds one output and nothing else: an OCI or docker
/// archive sent there is not followed by the image id, nor by a second
/// output; `type=local` refuses `dest=-` (it makes directories) and an
/// empty `dest=`. buildx refuses the same ("multiple outputs configured to
/// write to stdout", "dest cannot be stdout for local exporter"), and
/// `-q` with `--progress plain`, and a `--label` or `--build-arg` with an
/// empty key, each of which would leave one flag doing nothing.
#[test]
fn standard_output_holds_one_output_and_flags_that_would_do_nothing_are_refused() {
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "stdout",
        &[("Dockerfile", "FROM busybox\nCOPY f /f\n"), ("f", "f")],
    );
    let ctx = ctx.to_str().unwrap();
    for kind in ["oci", "docker"] {
        let spec = format!("type={kind},dest=-");
        let out = fixture.build(&["-q", "--output", &spec, ctx]);
        assert!(out.status.success(), "{}", text(&out));
        let names = tar_names(&out.stdout);
        assert!(
            names.contains(&"index.json".to_string())
                || names.contains(&"manifest.json".to_string()),
            "{kind}: {names:?}"
        );
        // A tar ends with zero blocks; an id after it would end in "\n".
        assert!(
            out.stdout.len() >= 1024 && out.stdout.ends_with(&[0u8; 1024]),
            "{kind}: the archive on stdout is followed by {:?}",
            String::from_utf8_lossy(&out.stdout[out.stdout.len().saturating_sub(80)..])
        );
    }
    let refused = [
        (
            vec!["--output", "type=oci,dest=-", "-o", "-"],
            "only one output can go to standard output",
        ),
        (
            vec![
                "--output",
                "type=docker,dest=-",
                "--output",
                "type=oci,dest=-",
            ],
            "only one output can go to standard output",
        ),
        (
            vec!["--output", "type=local,dest=-"],
            "type=local writes a directory, not standard output",
        ),
        (
            vec!["--output", "type=local,dest="],
            "dest is required for type=local",
        ),
        (
            vec!["-q", "--progress", "plain"],
            "--progress plain and -q (--quiet) cannot be used together",
        ),
        (
            vec!["--label", "=v"],
            "--label \"=v\": invalid key-value pair: empty key",
        ),
        (
            vec!["--build-arg", "=v"],
            "--build-arg \"=v\": invalid key-value pair: empty key",
        ),
    ];
    for (mut args, message) in refused {
        args.push(ctx);
        let out = fixture.build(&args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(message), "{args:?}: {}", text(&out));
        assert!(out.stdout.is_empty(), "{args:?}: wrote to stdout");
    }
    assert!(!Path::new("-").exists() && !fixture.dir.path().join("-").exists());
    // -q wins over KILN_PROGRESS (the environment of every command of a
    // CI job), and over --progress auto or quiet.
    for progress in ["auto", "quiet"] {
        let out = fixture.build(&["-q", "--progress", progress, ctx]);
        assert!(out.status.success(), "{progress}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("sha256:"),
            "{}",
            text(&out)
        );
    }
    // With its outputs all files, the build records no image and prints
    // no id (nothing would find it), named or not: -t names image, oci
    // and docker outputs only, as buildx's. With the store as an output
    // too, it does.
    let dir = fixture.dir.path().join("elsewhere");
    let spec = format!("type=local,dest={}", dir.display());
    let out = fixture.build(&["-q", "--output", &spec, ctx]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let out = fixture.build(&["-q", "-t", "elsewhere:1", "--output", &spec, ctx]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let both = [
        "-q",
        "-t",
        "elsewhere:1",
        "-o",
        "type=image",
        "-o",
        &spec,
        ctx,
    ];
    let out = fixture.build(&both);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("sha256:"),
        "{}",
        text(&out)
    );
    // An archive of the image holds what the id names: printed.
    let archive = fixture.dir.path().join("image.tar");
    let spec = format!("type=docker,dest={}", archive.display());
    let out = fixture.build(&["-q", "--output", &spec, ctx]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("sha256:"),
        "{}",
        text(&out)
    );
    // A label without "=" is an empty value, as in buildx.
    let out = fixture.build(&["-t", "labelled:1", "--label", "only-key", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    let inspected = kiln_ok(&fixture.root(), &["inspect", "labelled:1"]);
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    let labels = &inspected[0]["Config"]["Labels"];
    assert_eq!(labels["only-key"], "", "{labels}");
}

/// The image format attributes of BuildKit's image exporter on an output:
/// `compression=zstd` compresses the layers the build made with zstd
/// (with `force-compression=true` the base image's gzip layer too),
/// `oci-mediatypes=false` writes Docker's media types, as `--compression`
/// and `--docker-mediatypes` do, `annotation.*` annotates as
/// `--annotation` does (a flag over the output's own key); outputs and
/// flags that disagree, and what kiln cannot do (`compression-level=`,
/// other compressions, an index annotation without an index), are refused
/// before the build; a root filesystem output takes none of them.
#[test]
fn outputs_take_compression_media_types_and_annotations_as_buildkits_exporter() {
    require_namespaces!();
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "formats",
        &[("Dockerfile", "FROM busybox\nRUN echo made > /made\n")],
    );
    let ctx = ctx.to_str().unwrap();
    let path = |name: &str| fixture.dir.path().join(name);
    let tar_bytes = |tar: &Path, name: &str| -> Vec<u8> {
        let out = std::process::Command::new("tar")
            .arg("-xOf")
            .arg(tar)
            .arg(name)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} in {}", tar.display());
        out.stdout
    };
    // The manifest an OCI tar's index names: its media type and its last
    // layer's (the RUN's).
    let manifest_of = |tar: &Path| -> (String, String) {
        let index: serde_json::Value =
            serde_json::from_slice(&tar_bytes(tar, "index.json")).unwrap();
        let digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let blob = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        let manifest: serde_json::Value = serde_json::from_slice(&tar_bytes(tar, &blob)).unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        (
            manifest["mediaType"].as_str().unwrap().to_string(),
            layers.last().unwrap()["mediaType"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    let build = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push(ctx);
        fixture.build(&all)
    };
    // Every layer's media type and digest, and the config's diff ids.
    let layers_of = |tar: &Path| -> (Vec<(String, String)>, Vec<String>) {
        let index: serde_json::Value =
            serde_json::from_slice(&tar_bytes(tar, "index.json")).unwrap();
        let blob = |digest: &serde_json::Value| {
            let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
            serde_json::from_slice::<serde_json::Value>(&tar_bytes(
                tar,
                &format!("blobs/sha256/{hex}"),
            ))
            .unwrap()
        };
        let manifest = blob(&index["manifests"][0]["digest"]);
        let config = blob(&manifest["config"]["digest"]);
        let field = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap().to_string();
        (
            (manifest["layers"].as_array().unwrap().iter())
                .map(|l| (field(l, "mediaType"), field(l, "digest")))
                .collect(),
            (config["rootfs"]["diff_ids"].as_array().unwrap().iter())
                .map(|d| d.as_str().unwrap().to_string())
                .collect(),
        )
    };

    // Each attribute's effect on the OCI tar's manifest and its RUN layer
    // (uncompressed and the level kiln uses read as BuildKit reads them).
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let cases = [
        (
            "compression=zstd,force-compression=false",
            oci,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        (
            "oci-mediatypes=false",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
        (
            "compression=uncompressed",
            oci,
            "application/vnd.oci.image.layer.v1.tar",
        ),
        // Docker's zstd layer type, as current BuildKit writes it.
        (
            "compression=zstd,oci-mediatypes=false",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.image.rootfs.diff.tar.zstd",
        ),
    ];
    for (n, (attributes, manifest, layer)) in cases.into_iter().enumerate() {
        let tar = path(&format!("case{n}.tar"));
        let out = build(&[
            "-o",
            &format!("type=oci,dest={},{attributes}", tar.display()),
        ]);
        assert!(out.status.success(), "{attributes}: {}", text(&out));
        assert_eq!(
            manifest_of(&tar),
            (manifest.to_string(), layer.to_string()),
            "{attributes}"
        );
    }
    // force-compression: the base image's layer (imported gzip, as a
    // registry gives one) leaves as it is without it, in the asked
    // compression with it (an empty value is true, as in BuildKit); plain,
    // every layer is its diff id.
    let types = |layers: &[(String, String)]| -> Vec<String> {
        layers.iter().map(|(t, _)| t.clone()).collect()
    };
    let (gzip, zstd, plain) = (
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.v1.tar",
    );
    for (attributes, wanted) in [
        ("compression=zstd", [gzip, zstd]),
        ("compression=zstd,force-compression=true", [zstd, zstd]),
        ("compression=zstd,force-compression=", [zstd, zstd]),
        ("compression=gzip,force-compression=true", [gzip, gzip]),
        ("compression=uncompressed", [gzip, plain]),
        (
            "compression=uncompressed,force-compression=true",
            [plain, plain],
        ),
    ] {
        let tar = path("forced.tar");
        let out = build(&[
            "-o",
            &format!("type=oci,dest={},{attributes}", tar.display()),
        ]);
        assert!(out.status.success(), "{attributes}: {}", text(&out));
        let (layers, diff_ids) = layers_of(&tar);
        assert_eq!(types(&layers), wanted, "{attributes}");
        if wanted == [plain, plain] {
            let digests: Vec<String> = layers.into_iter().map(|(_, d)| d).collect();
            assert_eq!(digests, diff_ids, "{attributes}");
        }
    }

    // compression-level: gzip's header says which end of the scale made
    // the RUN's layer (XFL: 4 fastest, 2 best, 0 between).
    for (level, xfl) in [
        ("", 0u8),
        (",compression-level=1", 4),
        (",compression-level=9", 2),
    ] {
        let tar = path("leveled.tar");
        let out = build(&["-o", &format!("type=oci,dest={}{level}", tar.display())]);
        assert!(out.status.success(), "{level}: {}", text(&out));
        let (layers, _) = layers_of(&tar);
        let hex = layers
            .last()
            .unwrap()
            .1
            .trim_start_matches("sha256:")
            .to_string();
        let blob = tar_bytes(&tar, &format!("blobs/sha256/{hex}"));
        assert_eq!(blob[8], xfl, "{level}");
    }

    // Two outputs and a flag that say the same.
    let (a, b) = (path("a.tar"), path("b.tar"));
    let out = build(&[
        "--compression",
        "zstd",
        "-o",
        &format!(
            "type=oci,dest={},compression=zstd,oci-mediatypes=true,compression-level=3",
            a.display()
        ),
        "-o",
        &format!("type=docker,dest={},compression=zstd", b.display()),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        manifest_of(&a).1,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );

    // Annotations as output attributes, as `--annotation` gives them; a
    // flag sets its key over the output's, and one for this platform wins
    // over one for every platform, wherever given (BuildKit's order).
    let annotated = path("annotated.tar");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let out = build(&[
        "--annotation",
        "org.example.both=flag",
        "--annotation",
        "org.example.plat=flag",
        "-o",
        &format!(
            "type=oci,dest={},annotation.org.example.out=1,annotation.org.example.both=out,\
             annotation-manifest-descriptor.org.example.desc=2,\
             annotation-manifest[linux/{arch}].org.example.plat=out",
            annotated.display()
        ),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let index: serde_json::Value =
        serde_json::from_slice(&tar_bytes(&annotated, "index.json")).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(entry["annotations"]["org.example.desc"], "2", "{index}");
    let blob = format!(
        "blobs/sha256/{}",
        entry["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&tar_bytes(&annotated, &blob)).unwrap();
    assert_eq!(
        manifest["annotations"],
        serde_json::json!({
            "org.example.out": "1",
            "org.example.both": "flag",
            "org.example.plat": "out"
        }),
        "{manifest}"
    );

    // rewrite-timestamp with no SOURCE_DATE_EPOCH: built, and said once.
    let out = build(&[
        "-o",
        &format!(
            "type=oci,dest={},rewrite-timestamp=true",
            path("no-epoch.tar").display()
        ),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let warning = "rewrite-timestamp is specified, but no source-date-epoch was found";
    assert_eq!(text(&out).matches(warning).count(), 1, "{}", text(&out));

    let x = format!("type=oci,dest={}", path("x.tar").display());
    let refused: [(Vec<String>, &str); 13] = [
        (
            vec!["--compression".into(), "zstd".into()],
            "--compression has no effect here: no layer leaves the store in this build",
        ),
        (
            vec!["-o".into(), "type=image,name=kept:1,compression=zstd".into()],
            "compression= has no effect on an image output that does not push",
        ),
        (
            vec!["-o".into(), format!("{x},compression=zstd"), "-o".into(), format!("type=docker,dest={},compression=gzip", path("y.tar").display())],
            "says compression=gzip, --output type=oci",
        ),
        (
            vec!["--compression".into(), "gzip".into(), "-o".into(), format!("{x},compression=zstd")],
            "compression=zstd, --compression says compression=gzip",
        ),
        (
            vec!["--docker-mediatypes".into(), "-o".into(), format!("{x},oci-mediatypes=true")],
            "says oci-mediatypes=true, --docker-mediatypes (or KILN_DOCKER_MEDIATYPES) says oci-mediatypes=false",
        ),
        (
            vec!["-o".into(), format!("{x},compression=zstd,oci-mediatypes=no")],
            "oci-mediatypes=no: true or false",
        ),
        (
            vec!["-o".into(), format!("{x},oci-mediatypes=")],
            "oci-mediatypes=: true or false",
        ),
        (
            vec!["-o".into(), format!("{x},force-compression=true"), "-o".into(), format!("type=docker,dest={},force-compression=false", path("y.tar").display())],
            "says force-compression=false, --output type=oci",
        ),
        (
            vec!["-o".into(), format!("{x},compression-level=10")],
            ",compression-level=10: compression-level=10: gzip takes 0 to 9",
        ),
        (
            vec!["-o".into(), format!("{x},compression=estargz")],
            "compression=estargz: kiln writes the layers it makes uncompressed, or compressed with gzip or zstd",
        ),
        (
            vec!["-o".into(), format!("type=local,dest={},compression=zstd", path("fs").display())],
            "compression= is not an option of type=local",
        ),
        (
            vec!["-o".into(), format!("{x},annotation-index.k=v")],
            "annotation-index.k=v: index annotations not supported for single platform export",
        ),
        (
            vec!["-o".into(), format!("{x},annotation.k=1"), "-o".into(), format!("type=docker,dest={},annotation.k=2", path("y.tar").display())],
            "says annotation-manifest.k=2, --output type=oci",
        ),
    ];
    for (args, message) in refused {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = build(&args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(message), "{args:?}: {}", text(&out));
        assert!(
            !text(&out).contains("RUN echo"),
            "{args:?}: built: {}",
            text(&out)
        );
    }
}

/// The member names of a tar (the system's tar reads it), without `./`.
fn tar_names(tar: &[u8]) -> Vec<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("tar")
        .args(["-tf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = tar.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "not a tar ({} bytes)", tar.len());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect()
}

/// Without `-f`, a context's `Containerfile` is read when it has no
/// `Dockerfile` (and a `Dockerfile` wins over it); `.containerignore` is
/// read when there is no `.dockerignore`.
#[test]
fn containerfile_and_containerignore_defaults() {
    require_namespaces!();
    let fixture = Fixture::new();
    let dockerfile = "FROM busybox\nCOPY . /ctx/\nRUN echo containerfile > /which\n";
    let ctx = fixture.context(
        "containerfile",
        &[
            ("Containerfile", dockerfile),
            (".containerignore", "secret.txt\n"),
            ("secret.txt", "hidden"),
            ("kept.txt", "kept"),
        ],
    );
    let out_dir = fixture.dir.path().join("containerfile-out");
    let out = fixture.build(&["-o", out_dir.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&out_dir, "/which"), "containerfile\n");
    assert_eq!(read(&out_dir, "/ctx/kept.txt"), "kept");
    assert!(!out_dir.join("ctx/secret.txt").exists());

    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo dockerfile > /which\n",
    )
    .unwrap();
    let out_dir = fixture.dir.path().join("dockerfile-out");
    let out = fixture.build(&["-o", out_dir.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&out_dir, "/which"), "dockerfile\n");

    let empty = fixture.context("no-dockerfile", &[("a.txt", "a")]);
    let out = fixture.build(&[empty.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Containerfile"), "{}", text(&out));
}

/// `--no-cache-filter STAGE` runs that stage's steps again (and those of
/// the stages that copy from it, so they copy the new content) and takes
/// the other stages from the cache; a name no stage has is an error.
#[test]
fn no_cache_filter_reruns_only_the_named_stage() {
    require_namespaces!();
    let fixture = Fixture::new();
    let dockerfile = "FROM busybox AS a\nRUN cat /proc/sys/kernel/random/uuid > /a\n\
                      FROM busybox AS b\nRUN cat /proc/sys/kernel/random/uuid > /b\n\
                      FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n";
    let first = fixture.rootfs("filter-1", dockerfile, &[]);
    let cached = fixture.rootfs("filter-2", dockerfile, &[]);
    assert_eq!(read(&first, "/a"), read(&cached, "/a"));
    assert_eq!(read(&first, "/b"), read(&cached, "/b"));

    let filtered = fixture.rootfs("filter-3", dockerfile, &["--no-cache-filter", "A"]);
    assert_ne!(read(&first, "/a"), read(&filtered, "/a"));
    assert_eq!(read(&first, "/b"), read(&filtered, "/b"));

    let ctx = fixture.context("filter-bad", &[("Dockerfile", dockerfile)]);
    let out = fixture.build(&["--no-cache-filter", "nope", ctx.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("--no-cache-filter nope"),
        "{}",
        text(&out)
    );
}

/// `--pull=never` builds from what the store has and fails, naming the
/// image, on a base it lacks; `--pull` (always) goes to the registry even
/// for a stored base, so with no registry behind the name it fails where
/// `missing` (the default) builds.
#[test]
fn pull_policies() {
    require_namespaces!();
    let fixture = Fixture::new();
    // A base stored under the name of a registry nobody listens on.
    let tar = fixture.dir.path().join("busybox.tar");
    kiln_ok(
        &fixture.root(),
        &["import", tar.to_str().unwrap(), "127.0.0.1:9/stored/base:1"],
    );
    let stored = fixture.context(
        "pull-stored",
        &[("Dockerfile", "FROM 127.0.0.1:9/stored/base:1\nRUN true\n")],
    );
    let stored = stored.to_str().unwrap();
    let missing = fixture.context(
        "pull-missing",
        &[("Dockerfile", "FROM 127.0.0.1:9/absent/base:1\nRUN true\n")],
    );

    let out = fixture.build(&["--pull=never", stored]);
    assert!(out.status.success(), "{}", text(&out));
    let out = fixture.build(&["--pull=missing", stored]);
    assert!(out.status.success(), "{}", text(&out));

    let out = fixture.build(&["--pull=never", missing.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("127.0.0.1:9/absent/base:1"),
        "{}",
        text(&out)
    );

    for always in ["--pull", "--pull=always"] {
        let out = fixture.build(&[always, stored]);
        assert!(!out.status.success(), "{always}: {}", text(&out));
        assert!(text(&out).contains("127.0.0.1:9"), "{}", text(&out));
    }
}

/// `RUN --mount=type=tmpfs`: a real tmpfs (mode 1777, so a non-root USER
/// writes it), `size=` its limit, nothing of it in the layer.
#[test]
fn tmpfs_mount_size_and_mode() {
    require_namespaces!();
    let fixture = Fixture::new();
    let dockerfile = "FROM busybox\nUSER nobody\n\
        RUN --mount=type=tmpfs,target=/t,size=1m \
            stat -c %a /t > /tmp/mode && \
            df -k /t | tail -1 | awk '{print $2}' > /tmp/size && \
            echo hi > /t/written && \
            if dd if=/dev/zero of=/t/big bs=1k count=2048 2>/dev/null; \
            then echo fits > /tmp/over; else echo full > /tmp/over; fi\n";
    let out = fixture.rootfs("tmpfs", dockerfile, &[]);
    assert_eq!(read(&out, "/tmp/mode"), "1777\n");
    assert_eq!(read(&out, "/tmp/size"), "1024\n");
    assert_eq!(read(&out, "/tmp/over"), "full\n");
    assert!(!out.join("t/written").exists());
}

/// Two mounts on one target: the RUN gets one of them, as BuildKit's spec
/// keeps one mount per destination. Among binds, caches and tmpfs mounts
/// the later in the Dockerfile wins; a secret wins over them wherever it
/// is written (BuildKit lists secrets after the other mounts).
#[test]
fn mounts_on_one_target_keep_the_one_buildkit_keeps() {
    require_namespaces!();
    let fixture = Fixture::new();
    let secret = fixture.dir.path().join("one-target-secret");
    std::fs::write(&secret, "from-secret").unwrap();
    fixture.context("one-target", &[("f", "from-context\n")]);
    let dockerfile = "FROM busybox\n\
        RUN --mount=type=tmpfs,target=/m --mount=type=bind,target=/m \
            (cat /m/f || echo no-file) > /bind-last\n\
        RUN --mount=type=bind,target=/m --mount=type=tmpfs,target=/m \
            ls -A /m | wc -l > /tmpfs-last\n\
        RUN --mount=type=cache,target=/m,id=one-target --mount=type=bind,target=/m,rw \
            (cat /m/f || echo no-file) > /bind-over-cache\n\
        RUN --mount=type=secret,id=tok,target=/s --mount=type=tmpfs,target=/s \
            cat /s > /secret-first\n\
        RUN --mount=type=tmpfs,target=/s --mount=type=secret,id=tok,target=/s \
            cat /s > /secret-last\n";
    let secret_arg = format!("id=tok,src={}", secret.display());
    let out = fixture.rootfs(
        "one-target",
        dockerfile,
        &["--no-cache", "--secret", &secret_arg],
    );
    assert_eq!(read(&out, "/bind-last"), "from-context\n");
    assert_eq!(read(&out, "/tmpfs-last").trim(), "0");
    assert_eq!(read(&out, "/bind-over-cache"), "from-context\n");
    assert_eq!(read(&out, "/secret-first"), "from-secret");
    assert_eq!(read(&out, "/secret-last"), "from-secret");
}

/// `--shm-size`, `--ulimit` and `--add-host` reach every RUN (and are part
/// of its cache key: the second build runs the step again).
#[test]
fn shm_size_ulimit_and_add_host() {
    require_namespaces!();
    let fixture = Fixture::new();
    let dockerfile = "FROM busybox\n\
        RUN df -k /dev/shm | tail -1 | awk '{print $2}' > /shm && \
            ulimit -Sn > /nofile-soft && ulimit -Hn > /nofile-hard && ulimit -u > /nproc && \
            grep -c . /etc/hosts > /host-lines && (grep -w db /etc/hosts || true) > /db\n";
    let plain = fixture.rootfs("step-defaults", dockerfile, &[]);
    assert_eq!(read(&plain, "/shm"), "65536\n");
    assert_eq!(read(&plain, "/db"), "");
    let set = fixture.rootfs(
        "step-set",
        dockerfile,
        &[
            "--shm-size",
            "128m",
            "--ulimit",
            "nofile=1024:2048",
            "--ulimit",
            "nproc=300",
            "--add-host",
            "db:10.1.2.3",
            "--add-host",
            // Comma-separated, as buildx's string slice splits it.
            "v6=2001:db8::7,cache:10.9.9.9",
        ],
    );
    assert_eq!(read(&set, "/shm"), "131072\n");
    assert_eq!(read(&set, "/nofile-soft"), "1024\n");
    assert_eq!(read(&set, "/nofile-hard"), "2048\n");
    assert_eq!(read(&set, "/nproc"), "300\n");
    assert_eq!(read(&set, "/db"), "10.1.2.3\tdb\n");
    let hosts = read(&set, "/host-lines");
    let plain_hosts = read(&plain, "/host-lines");
    let count = |s: &str| s.trim().parse::<usize>().unwrap();
    assert_eq!(count(&hosts), count(&plain_hosts) + 3);

    let ctx = fixture.context("step-bad", &[("Dockerfile", dockerfile)]);
    for bad in [
        ["--ulimit", "files=1"],
        ["--add-host", "db:host-gateway"],
        ["--shm-size", "0"],
    ] {
        let mut args = bad.to_vec();
        args.push(ctx.to_str().unwrap());
        let out = fixture.build(&args);
        assert!(!out.status.success(), "{bad:?}: {}", text(&out));
        assert!(text(&out).contains(bad[0]), "{}", text(&out));
    }
}

/// BuildKit's entitlements: `RUN --security=insecure` and `RUN
/// --network=host` fail, naming the line and the `--allow` that grants
/// them, until the build grants it; insecure then runs with every
/// capability and no seccomp filter (it can mount), where a plain RUN
/// cannot.
#[test]
fn entitlements_insecure_and_host_network() {
    require_namespaces!();
    let fixture = Fixture::new();
    let insecure = "FROM busybox\n\
        RUN --security=insecure grep CapEff /proc/self/status > /caps && \
            mkdir -p /m && mount -t tmpfs none /m && echo mounted > /mounted\n\
        RUN grep CapEff /proc/self/status > /plain-caps && \
            (mount -t tmpfs none /mnt 2>/dev/null && echo yes || echo no) > /plain-mount\n";
    let ctx = fixture.context("insecure", &[("Dockerfile", insecure)]);
    let out = fixture.build(&[ctx.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    let message = text(&out);
    assert!(message.contains("line 2"), "{message}");
    assert!(message.contains("--allow security.insecure"), "{message}");

    let root = fixture.rootfs("insecure-ok", insecure, &["--allow", "security.insecure"]);
    assert_eq!(read(&root, "/mounted"), "mounted\n");
    assert_eq!(read(&root, "/plain-mount"), "no\n");
    let caps = |path: &str| {
        let line = read(&root, path);
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    let (full, plain) = (caps("/caps"), caps("/plain-caps"));
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    assert!(full & CAP_SYS_ADMIN != 0, "{full:x}");
    assert!(plain & CAP_SYS_ADMIN == 0, "{plain:x}");
    assert!(
        full.count_ones() > plain.count_ones() + 10,
        "{full:x} {plain:x}"
    );

    let host = "FROM busybox\nRUN --network=host true\n";
    let ctx = fixture.context("host-net", &[("Dockerfile", host)]);
    let out = fixture.build(&["--network", "none", ctx.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("--allow network.host"),
        "{}",
        text(&out)
    );
    for grant in [
        vec!["--network", "none", "--allow", "network.host"],
        vec!["--network", "host"],
    ] {
        let mut args = grant.clone();
        args.push(ctx.to_str().unwrap());
        let out = fixture.build(&args);
        assert!(out.status.success(), "{grant:?}: {}", text(&out));
    }
}

/// `RUN --security=insecure` gets what BuildKit's insecure mode gives a
/// RUN with the host's root: a writable /sys, no device restriction, and
/// BuildKit's extra nodes (kmsg, fuse, net/tun, loop-control, loop0 up to
/// the first free loop device and 7 more), so a loop device can be
/// attached. A plain RUN keeps a read-only /sys, none of those nodes, and
/// a loop node it makes itself cannot be opened.
#[test]
fn insecure_runs_get_buildkits_devices_and_a_writable_sys() {
    require_root!();
    let fixture = Fixture::new();
    let dockerfile = "FROM busybox\n\
        RUN --security=insecure grep ' /sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1 > /sys-mode && \
            ls /dev/kmsg /dev/cuse /dev/fuse /dev/kvm /dev/net/tun /dev/loop-control /dev/loop0 \
                /dev/loop7 > /nodes && \
            dd if=/dev/zero of=/tmp/img bs=1024 count=1024 2>/dev/null && \
            dev=$(losetup -f) && losetup \"$dev\" /tmp/img && \
            (losetup \"$dev\" > /attached; losetup -d \"$dev\") && rm /tmp/img\n\
        RUN grep ' /sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1 > /plain-sys-mode && \
            (ls /dev/loop0 /dev/kmsg 2>/dev/null || true) > /plain-nodes && \
            mknod /tmp/l0 b 7 0 && \
            (head -c 1 /tmp/l0 > /dev/null 2>&1 && echo opened || echo refused) > /plain-loop && \
            rm /tmp/l0\n";
    let root = fixture.rootfs(
        "insecure-devices",
        dockerfile,
        &["--no-cache", "--allow", "security.insecure"],
    );
    assert_eq!(read(&root, "/sys-mode"), "rw\n");
    assert_eq!(
        read(&root, "/nodes"),
        "/dev/cuse\n/dev/fuse\n/dev/kmsg\n/dev/kvm\n/dev/loop-control\n/dev/loop0\n\
         /dev/loop7\n/dev/net/tun\n"
    );
    assert!(
        read(&root, "/attached").contains("/tmp/img"),
        "{}",
        read(&root, "/attached")
    );
    assert_eq!(read(&root, "/plain-sys-mode"), "ro\n");
    assert_eq!(read(&root, "/plain-nodes"), "");
    assert_eq!(read(&root, "/plain-loop"), "refused\n");
}

/// ADD's flags: `--chmod` sets the mode, `--unpack=false` keeps a local
/// archive as it is (ADD extracts it by default), `--exclude` leaves out
/// what its pattern matches, `--chown` owns what it adds.
#[test]
fn add_chmod_unpack_exclude_chown() {
    require_root!();
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "add-flags",
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 ADD --chmod=0640 f.txt /chmod/f.txt\n\
                 ADD --unpack=false arch.tar /kept/\n\
                 ADD arch.tar /unpacked/\n\
                 ADD --exclude=*.log d /excluded/\n\
                 ADD --chown=1000:1000 f.txt /owned/f.txt\n",
            ),
            ("f.txt", "f\n"),
            ("inner/inner.txt", "inner\n"),
            ("d/keep.txt", "keep\n"),
            ("d/skip.log", "skip\n"),
        ],
    );
    common::run_ok(
        std::process::Command::new("tar")
            .arg("-cf")
            .arg(ctx.join("arch.tar"))
            .arg("-C")
            .arg(ctx.join("inner"))
            .arg("inner.txt"),
    );
    let out_dir = fixture.dir.path().join("add-flags-out");
    let out = fixture.build(&["-o", out_dir.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    use std::os::unix::fs::MetadataExt;
    let meta = |p: &str| std::fs::metadata(out_dir.join(p)).unwrap();
    assert_eq!(meta("chmod/f.txt").mode() & 0o7777, 0o640);
    assert!(out_dir.join("kept/arch.tar").is_file());
    assert!(!out_dir.join("kept/inner.txt").exists());
    assert_eq!(read(&out_dir, "/unpacked/inner.txt"), "inner\n");
    assert!(!out_dir.join("unpacked/arch.tar").exists());
    assert_eq!(read(&out_dir, "/excluded/keep.txt"), "keep\n");
    assert!(!out_dir.join("excluded/skip.log").exists());
    assert_eq!(
        (meta("owned/f.txt").uid(), meta("owned/f.txt").gid()),
        (1000, 1000)
    );
}

/// HEALTHCHECK's flags each set their field of the config's Healthcheck
/// (durations in nanoseconds).
#[test]
fn healthcheck_flags_set_the_config() {
    require_namespaces!();
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "healthcheck",
        &[(
            "Dockerfile",
            "FROM busybox\nHEALTHCHECK --interval=30s --timeout=5s --start-period=1m \
             --start-interval=2s --retries=7 CMD true\n",
        )],
    );
    let out = fixture.build(&["-t", "health:1", ctx.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let inspect = kiln_ok(&fixture.root(), &["inspect", "health:1"]);
    let value: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let health = &value[0]["Config"]["Healthcheck"];
    assert_eq!(
        health["Test"],
        serde_json::json!(["CMD-SHELL", "true"]),
        "{health}"
    );
    assert_eq!(health["Interval"], 30_000_000_000u64, "{health}");
    assert_eq!(health["Timeout"], 5_000_000_000u64, "{health}");
    assert_eq!(health["StartPeriod"], 60_000_000_000u64, "{health}");
    assert_eq!(health["StartInterval"], 2_000_000_000u64, "{health}");
    assert_eq!(health["Retries"], 7, "{health}");
}

/// The mount options' other spellings, as BuildKit reads them: `src` for
/// `source`, `dst` and `destination` for `target`, `ro` for `readonly`,
/// `readwrite` and `rw` for writable (a bind mount is read-only by
/// default).
#[test]
fn mount_option_spellings() {
    require_namespaces!();
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "mount-spellings",
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 RUN --mount=type=bind,src=d,dst=/m1 cat /m1/f > /via-src-dst\n\
                 RUN --mount=type=bind,source=d,destination=/m2 cat /m2/f > /via-destination\n\
                 RUN --mount=type=bind,source=d,target=/m3 (touch /m3/new 2>/dev/null && echo rw || echo ro) > /default\n\
                 RUN --mount=type=bind,source=d,target=/m4,rw (touch /m4/new && echo rw || echo ro) > /rw\n\
                 RUN --mount=type=bind,source=d,target=/m5,readwrite (touch /m5/new && echo rw || echo ro) > /readwrite\n\
                 RUN --mount=type=cache,id=spell,target=/m6,ro (touch /m6/new 2>/dev/null && echo rw || echo ro) > /ro\n\
                 RUN --mount=type=cache,id=spell,target=/m7,readonly (touch /m7/new 2>/dev/null && echo rw || echo ro) > /readonly\n\
                 RUN --mount=type=tmpfs,target=/m8 (touch /m8/new && echo rw || echo ro) > /tmpfs-default\n\
                 RUN --mount=type=tmpfs,target=/m9,ro (touch /m9/new 2>/dev/null && echo rw || echo ro) > /tmpfs-ro\n\
                 RUN --mount=type=tmpfs,target=/m10,readonly (touch /m10/new 2>/dev/null && echo rw || echo ro) > /tmpfs-readonly\n",
            ),
            ("d/f", "from-context\n"),
        ],
    );
    let out_dir = fixture.dir.path().join("mount-spellings-out");
    let out = fixture.build(&["-o", out_dir.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&out_dir, "/via-src-dst"), "from-context\n");
    assert_eq!(read(&out_dir, "/via-destination"), "from-context\n");
    assert_eq!(read(&out_dir, "/default"), "ro\n");
    assert_eq!(read(&out_dir, "/rw"), "rw\n");
    assert_eq!(read(&out_dir, "/readwrite"), "rw\n");
    assert_eq!(read(&out_dir, "/ro"), "ro\n");
    assert_eq!(read(&out_dir, "/readonly"), "ro\n");
    assert_eq!(read(&out_dir, "/tmpfs-default"), "rw\n");
    assert_eq!(read(&out_dir, "/tmpfs-ro"), "ro\n");
    assert_eq!(read(&out_dir, "/tmpfs-readonly"), "ro\n");
    // A writable bind mount's writes stay out of the context.
    assert!(!ctx.join("d/new").exists());
}

/// `BUILDKIT_MULTI_PLATFORM=1` makes the result an index even for one
/// platform, as BuildKit's frontend does, and `--annotation index:` then
/// has an index to go on; without it the build is one manifest and the
/// annotation is refused. A docker-archive cannot hold the index; a local
/// output goes under the platform's directory; a cache export works. A docker-archive cannot hold the index: refused before any
/// step runs, writing nothing.
#[test]
fn multi_platform_build_arg_makes_an_index_of_one_platform() {
    require_namespaces!();
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "multi",
        &[("Dockerfile", "FROM busybox:latest\nRUN echo one > /one\n")],
    );
    let ctx = ctx.to_str().unwrap();
    // The store's document under the tag: the index, else the manifest.
    let raw = |tag: &str| -> serde_json::Value {
        let out = kiln_ok(&fixture.root(), &["inspect", tag]);
        let inspected: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        match inspected[0].get("Index") {
            Some(index) => index["Manifest"].clone(),
            None => inspected[0]["Manifest"].clone(),
        }
    };
    let multi = ["--build-arg", "BUILDKIT_MULTI_PLATFORM=1"];
    let annotation = ["--annotation", "index:org.example.kind=one"];
    let out = fixture.build(&[&multi[..], &annotation, &["-t", "multi:index", ctx]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let index = raw("multi:index");
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    // An index to annotate: `index:` annotations are taken, not refused
    // as for a single-platform image.
    assert_eq!(index["annotations"]["org.example.kind"], "one", "{index}");
    let out = fixture.build(&[&annotation[..], &["-t", "multi:refused", ctx]].concat());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("index annotations not supported for single platform export"),
        "{}",
        text(&out)
    );
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(
        manifests[0]["platform"]["architecture"],
        kiln_layers::Platform::host().architecture.as_str(),
        "{index}"
    );

    let out = fixture.build(&["-t", "multi:one", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    let one = raw("multi:one");
    assert_eq!(
        one["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{one}"
    );

    let dest = fixture.dir.path().join("multi.tar");
    let output = format!("type=docker,dest={}", dest.display());
    let out = fixture.build(&[&multi[..], &["--no-cache", "-o", &output, ctx]].concat());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "type=docker: a docker-archive holds one image, not an index, and BUILDKIT_MULTI_PLATFORM asks for an index"
        ),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("RUN echo one"), "{}", text(&out));
    assert!(!dest.exists());

    // The rest of a one-platform index build is a build's: a local output
    // goes under the platform's directory, as BuildKit writes a platform
    // map, and a cache export is written.
    let (local, cache) = (
        fixture.dir.path().join("multi-local"),
        fixture.dir.path().join("multi-cache"),
    );
    let outputs = [
        "-o".to_string(),
        format!("type=local,dest={}", local.display()),
        "--cache-to".to_string(),
        format!("type=local,dest={}", cache.display()),
    ];
    let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let out = fixture.build(&[&multi[..], &outputs, &[ctx]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let platform_dir = kiln_layers::Platform::host()
        .normalized()
        .to_string()
        .replace('/', "_");
    assert_eq!(read(&local.join(&platform_dir), "/one"), "one\n");
    assert!(!local.join("one").exists());
    assert!(cache.join("index.json").is_file(), "{}", text(&out));

    // Empty is unset (one manifest); false with several platforms is a
    // conflict, refused before anything runs.
    let out = fixture.build(&[
        "--build-arg",
        "BUILDKIT_MULTI_PLATFORM=",
        "-t",
        "multi:empty",
        ctx,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        raw("multi:empty")["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let out = fixture.build(&[
        "--build-arg",
        "BUILDKIT_MULTI_PLATFORM=0",
        "--platform",
        "linux/amd64,linux/arm64",
        ctx,
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("returning multiple target platforms is not allowed"),
        "{}",
        text(&out)
    );
}

/// SOURCE_DATE_EPOCH, as a build arg or in the environment, is whole
/// seconds since the epoch, as BuildKit reads it: it dates the image; a
/// value that is not a number is refused before any step runs (it was
/// taken for unset); an empty one is unset.
#[test]
fn source_date_epoch_is_a_number_or_refused() {
    require_namespaces!();
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "sde",
        &[("Dockerfile", "FROM busybox:latest\nRUN echo x > /x\n")],
    );
    let ctx = ctx.to_str().unwrap();
    let created = |tag: &str| -> String {
        let out = kiln_ok(&fixture.root(), &["inspect", tag]);
        let inspected: serde_json::Value = serde_json::from_str(&out).unwrap();
        inspected[0]["Created"].as_str().unwrap_or("").to_string()
    };
    let arg = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let out = fixture.build(&[&arg[..], &["-t", "sde:arg", ctx]].concat());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        created("sde:arg").starts_with("2023-11-14T22:13:20"),
        "{}",
        created("sde:arg")
    );

    let out = fixture.build(&["--build-arg", "SOURCE_DATE_EPOCH=1.7e9", ctx]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("build arg SOURCE_DATE_EPOCH=1.7e9: invalid"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("RUN echo x"), "{}", text(&out));

    let with_env = |value: &str, args: &[&str]| {
        common::kiln_command()
            .arg("--root")
            .arg(fixture.root())
            .args(args)
            .env("KILN_PROGRESS", "plain")
            .env("SOURCE_DATE_EPOCH", value)
            .output()
            .unwrap()
    };
    for args in [&["build", ctx][..], &["import", ctx, "sde:import"][..]] {
        let out = with_env("abc", args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("SOURCE_DATE_EPOCH=abc: invalid")
                && text(&out).contains("environment"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let out = with_env("", &["build", "-t", "sde:empty", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !created("sde:empty").starts_with("2023-11-14"),
        "{}",
        created("sde:empty")
    );
}

/// The flags about what a build shows and reads: `--dry-run` prints the
/// plan (`--format json` as JSON) and builds nothing; `-f` reads a
/// Dockerfile outside the context; `-q` prints the image id alone; `-v`
/// adds the cache decisions.
#[test]
fn dry_run_format_file_quiet_and_verbose() {
    require_namespaces!();
    let fixture = Fixture::new();
    let ctx = fixture.context(
        "cli",
        &[("Dockerfile", "FROM busybox\nRUN echo in-context > /which\n")],
    );
    let ctx = ctx.to_str().unwrap();

    let out = fixture.build(&["--dry-run", "-t", "planned:1", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("echo in-context"), "{}", text(&out));
    let images = kiln(&fixture.root(), &["inspect", "planned:1"]);
    assert!(!images.status.success(), "--dry-run tagged an image");
    let out = fixture.build(&["--dry-run", "--format", "json", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert!(plan.to_string().contains("echo in-context"), "{plan}");
    // --format formats --dry-run's plan or --check's report; a build
    // prints neither, and --check draws no graph: refused, building
    // nothing.
    let out = fixture.build(&["--format", "json", "-t", "formatted:1", ctx]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("--format json formats the output of --dry-run"),
        "{}",
        text(&out)
    );
    let images = kiln(&fixture.root(), &["inspect", "formatted:1"]);
    assert!(
        !images.status.success(),
        "a refused --format built an image"
    );
    let out = fixture.build(&["--check", "--format", "dot", ctx]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("--check prints its report as text or json, not dot"),
        "{}",
        text(&out)
    );
    let out = fixture.build(&["--check", "--format", "json", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert!(report.get("findings").is_some(), "{report}");

    let other = fixture.dir.path().join("Other.Dockerfile");
    std::fs::write(&other, "FROM busybox\nRUN echo from-file > /which\n").unwrap();
    let out_dir = fixture.dir.path().join("cli-f");
    let out = fixture.build(&[
        "-f",
        other.to_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
        ctx,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(&out_dir, "/which"), "from-file\n");

    let out = fixture.build(&["-q", "--no-cache", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.trim().starts_with("sha256:") && stdout.trim().lines().count() == 1,
        "{stdout}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{}", text(&out));

    let plain = fixture.build(&["--progress", "plain", "--no-cache", ctx]);
    let verbose = fixture.build(&["--progress", "plain", "-v", "--no-cache", ctx]);
    assert!(plain.status.success() && verbose.status.success());
    let decision = "--no-cache: RUN echo in-context";
    assert!(!text(&plain).contains(decision), "{}", text(&plain));
    assert!(text(&verbose).contains(decision), "{}", text(&verbose));
}

/// `build --check` as BuildKit's lint: every stage without `--target`
/// (only what the target needs with one), and the findings made before an
/// instruction that cannot be read reported with its error
/// (`dockerfile_check_test.go`: `testAllTargetUnmarshal`,
/// `testWarningsBeforeError`).
#[test]
fn build_check_covers_every_stage_and_keeps_findings_before_an_error() {
    let fixture = Fixture::new();
    let rules = |dockerfile: &str, extra: &[&str]| -> (Vec<(String, u64)>, bool) {
        let ctx = fixture.context("check-stages", &[("Dockerfile", dockerfile)]);
        let mut args = vec!["--check", "--format", "json"];
        args.extend_from_slice(extra);
        let ctx = ctx.to_str().unwrap().to_string();
        args.push(&ctx);
        let out = fixture.build(&args);
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        let found = (report["findings"].as_array().unwrap().iter())
            .map(|f| {
                (
                    f["rule"].as_str().unwrap().to_string(),
                    f["line"].as_u64().unwrap(),
                )
            })
            .collect();
        (found, !report["error"].is_null())
    };
    let two = "FROM scratch AS first\nCOPY $foo .\nFROM scratch AS second\nCOPY $bar .\n";
    let undefined = |line| ("UndefinedVar".to_string(), line);
    assert_eq!(rules(two, &[]), (vec![undefined(2), undefined(4)], false));
    assert_eq!(
        rules(two, &["--target", "first"]),
        (vec![undefined(2)], false)
    );
    // A base image that cannot be found is the check's error (not an
    // empty image); a named context stands for it as in the build.
    let missing = "FROM nothere:1\nCOPY $x /y\n";
    assert_eq!(rules(missing, &["--pull=never"]), (vec![], true));
    let named = [
        "--pull=never",
        "--build-context",
        "nothere:1=docker-image://busybox:latest",
    ];
    assert_eq!(rules(missing, &named), (vec![undefined(2)], false));
    // --platform does not reach the lint: BuildKit's lint request walks
    // for the build platform, whatever the build's platforms (its
    // ConvertOpt has no TargetPlatform then), so busybox (this machine's
    // platform only) is no mismatch, and several platforms are one check.
    let host_only = "FROM busybox:latest\nCOPY $x /y\n";
    let other = if cfg!(target_arch = "aarch64") {
        "linux/amd64"
    } else {
        "linux/arm64"
    };
    let both = "linux/amd64,linux/arm64".to_string();
    for platform in [other, both.as_str()] {
        assert_eq!(
            rules(host_only, &["--pull=never", "--platform", platform]),
            (vec![undefined(2)], false),
            "{platform}"
        );
    }
    let bad = "FROM scratch AS BadStageName\nMAINTAINER me@example.org\nBADCMD\n";
    assert_eq!(
        rules(bad, &[]),
        (
            vec![
                ("StageNameCasing".to_string(), 1),
                ("MaintainerDeprecated".to_string(), 2)
            ],
            true
        )
    );
}

/// `--call`, as buildx reads it: `targets` lists the stages (buildx's table,
/// or the frontend's JSON), `check` prints the build checks as BuildKit's
/// lint results and exits 1 when they found anything (0 with
/// `ignorestatus=true`, but for `# check=error=true`), `build` builds;
/// neither of the others builds. `outline` and values buildx would not
/// take are refused.
#[test]
fn call_answers_targets_and_checks_as_buildx() {
    require_namespaces!();
    let fixture = Fixture::new();
    let dockerfile = "# base the common base\nFROM busybox AS Base\nRUN echo built > /built\n\n\
                      FROM base as final\nCMD [\"cat\", \"/built\"]\n";
    let ctx = fixture.context("call", &[("Dockerfile", dockerfile)]);
    let ctx = ctx.to_str().unwrap();
    let not_built = |tag: &str| {
        let out = kiln(&fixture.root(), &["inspect", tag]);
        assert!(!out.status.success(), "{tag} was built: {}", text(&out));
    };
    let stdout = |out: &Output| String::from_utf8_lossy(&out.stdout).into_owned();

    // targets: buildx's table, the default stage marked; nothing built.
    let out = fixture.build(&["--call", "targets", "-t", "call:targets", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out),
        "TARGET          DESCRIPTION\nbase            the common base\nfinal (default) \n"
    );
    not_built("call:targets");
    let out = fixture.build(&["--call", "targets,format=json", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["targets"][0]["description"], "the common base");
    assert_eq!(json["targets"][1]["name"], "final");
    assert_eq!(json["targets"][1]["base"], "base");
    assert_eq!(json["targets"][1]["default"], true);
    assert_eq!(
        json["targets"][1]["location"]["ranges"][0]["start"]["line"],
        5
    );

    // check: BuildKit's rules, printed as buildx prints them, the
    // Dockerfile named as buildx maps it (the context's path joined with
    // Dockerfile); exit 1.
    let out = fixture.build(&["--call", "check", "-t", "call:check", ctx]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = stdout(&out);
    assert!(
        printed.starts_with(&format!(
            "Check complete, 2 warnings have been found!\n\n\
             WARNING: StageNameCasing - https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\n\
             Stage name 'Base' should be lowercase\n\
             {ctx}/Dockerfile:2\n\
             --------------------\n   \
             1 |     # base the common base\n   \
             2 | >>> FROM busybox AS Base\n   \
             3 |     RUN echo built > /built\n   \
             4 |     \n\
             --------------------\n\n\
             WARNING: FromAsCasing - "
        )),
        "{printed}"
    );
    not_built("call:check");
    // lint, buildx's older name; -f as given names the file.
    let file = format!("{ctx}/Dockerfile");
    let out = fixture.build(&["--call", "lint", "-f", &file, ctx]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("\n{file}:5\n")),
        "{}",
        text(&out)
    );
    // Nothing found: said so, exit 0; `null` warnings in the JSON.
    let clean = fixture.context("call-clean", &[("Dockerfile", "FROM busybox\n")]);
    let clean = clean.to_str().unwrap();
    let out = fixture.build(&["--call", "check", clean]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out), "Check complete, no warnings found.\n");
    let out = fixture.build(&["--call", "check,format=json", clean]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["warnings"].is_null() && json.get("warnings").is_some(),
        "{json}"
    );
    // A Dockerfile that does not parse: the JSON still, its error in it.
    let broken = fixture.context("call-broken", &[("Dockerfile", "FROM busybox\nRNU echo\n")]);
    let out = fixture.build(&["--call", "check,format=json", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["buildError"]["message"],
        "dockerfile parse error on line 2: unknown instruction: RNU (did you mean RUN?)"
    );
    assert_eq!(
        json["buildError"]["location"]["ranges"][0]["start"]["line"],
        2
    );
    // ignorestatus: the same report, exit 0.
    let out = fixture.build(&["--call", "check,ignorestatus=true", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out), printed);
    // format=json: BuildKit's lint results, the Dockerfile as their source.
    let out = fixture.build(&["--call", "check,format=json", ctx]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["warnings"][0]["ruleName"], "StageNameCasing");
    assert_eq!(json["warnings"][1]["ruleName"], "FromAsCasing");
    assert_eq!(
        json["warnings"][1]["location"]["ranges"][0]["start"]["line"],
        5
    );
    assert_eq!(json["sources"][0]["filename"], "Dockerfile");
    assert_eq!(json["sources"][0]["language"], "Dockerfile");
    assert!(json.get("buildError").is_none(), "{json}");
    // # check=error=true: an error, whatever ignorestatus says.
    let strict = fixture.context(
        "call-strict",
        &[("Dockerfile", &format!("# check=error=true\n{dockerfile}"))],
    );
    let out = fixture.build(&[
        "--call",
        "check,ignorestatus=true",
        strict.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("ERROR: lint violation found for rules: StageNameCasing, FromAsCasing"),
        "{}",
        text(&out)
    );

    // build: the build, as without --call (--dry-run beside it plans).
    let out = fixture.build(&["--call", "build", "--dry-run", "-t", "call:planned", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    not_built("call:planned");
    let out = fixture.build(&["--call", "build", "-t", "call:built", ctx]);
    assert!(out.status.success(), "{}", text(&out));
    let out = kiln(&fixture.root(), &["inspect", "call:built"]);
    assert!(out.status.success(), "{}", text(&out));
    // A frontend kiln does not run is refused for targets too.
    let foreign = fixture.context(
        "call-foreign",
        &[(
            "Dockerfile",
            "# syntax=example.com/other/frontend\nFROM busybox\n",
        )],
    );
    let out = fixture.build(&["--call", "targets", foreign.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("example.com/other/frontend"),
        "{}",
        text(&out)
    );

    // Refused, building nothing.
    for (args, said) in [
        (
            &["--call", "outline"][..],
            "--call outline is not supported yet",
        ),
        (
            &["--call", "targets,format=xml"],
            "format=xml: kiln prints text or json",
        ),
        (&["--call", "check,nope=1"], "unknown option \"nope\""),
        (&["--call", "check,targets"], "one function only"),
        (&["--call", "format=json"], "names no function"),
        (
            &["--call", "targets,ignorestatus=true"],
            "ignorestatus= does nothing for targets",
        ),
        (
            &["--call", "build,format=json"],
            "format= does nothing for build",
        ),
        (
            &["--call", "check,ignorestatus=maybe"],
            "ignorestatus=maybe is not a boolean",
        ),
        (
            &["--call", "check", "--format", "json"],
            "give the format in its value",
        ),
        (
            &["--call", "targets", "--check"],
            "--call targets and --check ask for two different answers",
        ),
        (
            &["--call", "targets", "--iidfile", "id"],
            "--call targets builds no image: --iidfile",
        ),
    ] {
        let mut all = args.to_vec();
        all.extend(["-t", "call:refused", ctx]);
        let out = fixture.build(&all);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(said), "{args:?}: {}", text(&out));
    }
    not_built("call:refused");
}
