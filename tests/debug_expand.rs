//! `kiln debug expand` end to end: its flags reach the expansion (the
//! expansion itself is BuildKit's test data's, run by
//! `scripts/conformance`).

mod common;

use std::process::Output;

fn expand(args: &[&str]) -> Output {
    common::kiln_command()
        .args(["debug", "expand"])
        .args(args)
        .output()
        .expect("run kiln")
}

fn stdout_of(args: &[&str]) -> String {
    let out = expand(args);
    assert!(out.status.success(), "{args:?}: {}", common::text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--escape` changes which character escapes: with `\` (the default) a
/// backtick is a plain character; with `` ` `` it escapes the `$`. Any
/// other character is refused. `--env` sets a variable, `--words` prints
/// the words after splitting.
#[test]
fn escape_env_and_words_reach_the_expansion() {
    assert_eq!(stdout_of(&["--env", "B=x", "--", "a`$B"]), "a`x\n");
    assert_eq!(
        stdout_of(&["--escape", "`", "--env", "B=x", "--", "a`$B"]),
        "a$B\n"
    );
    assert_eq!(stdout_of(&["--env", "B=x", "--", "a\\$B"]), "a$B\n");
    assert_eq!(
        stdout_of(&["--escape", "`", "--env", "B=x", "--", "a\\$B"]),
        "a\\x\n"
    );
    assert_eq!(
        stdout_of(&["--words", "--env", "B=x y", "--", "$B z"]),
        "x\ny\nz\n"
    );
    let out = expand(&["--escape", "x", "--", "a"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the escape character must be \\ or `"),
        "{}",
        common::text(&out)
    );
}
