//! The command `docker run [--entrypoint E] IMAGE [ARGS...]` executes, from
//! the image's Entrypoint and Cmd: one function for `kiln run` and
//! `kiln explain`.
//!
//! The rules, as the docker CLI and the daemon apply them:
//! - the CLI turns `--entrypoint E` into the one-word entrypoint `[E]` (never
//!   split on spaces) and `--entrypoint ""` into `[""]`; `ARGS`, when any,
//!   become the container's Cmd;
//! - the daemon merges with the image: when the user gave no (or an empty)
//!   entrypoint, an empty user Cmd takes the image's Cmd, and an absent user
//!   entrypoint takes the image's Entrypoint. A user entrypoint therefore
//!   drops the image's Cmd;
//! - an entrypoint of exactly `[""]` is then no entrypoint;
//! - nothing left in either is the daemon's "no command specified";
//! - the process is Entrypoint followed by Cmd.

use std::fmt;

/// Where a part of the command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The image config.
    Image,
    /// The `docker run` command line (`--entrypoint`, or the arguments).
    User,
    /// Neither: empty, or reset with `--entrypoint ""`.
    Unset,
}

/// The command a container runs, with where each half came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCommand {
    pub entrypoint: Vec<String>,
    pub entrypoint_origin: Origin,
    pub cmd: Vec<String>,
    pub cmd_origin: Origin,
}

impl RunCommand {
    /// Entrypoint followed by Cmd: the argv the process gets.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// Docker refuses to create a container with neither entrypoint nor command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no command specified")]
pub struct NoCommand;

/// What `docker run` computes from the image's `Entrypoint`/`Cmd` (`None` when
/// the config lacks them), the `--entrypoint` flag (`None` when not given,
/// `Some("")` for `--entrypoint ""`) and the arguments after the image.
pub fn docker_run_command(
    image_entrypoint: Option<&[String]>,
    image_cmd: Option<&[String]>,
    entrypoint_flag: Option<&str>,
    args: &[String],
) -> Result<RunCommand, NoCommand> {
    let user_entrypoint: Option<Vec<String>> = entrypoint_flag.map(|e| vec![e.to_string()]);
    merge_command(
        user_entrypoint.as_deref(),
        args,
        image_entrypoint,
        image_cmd,
    )
}

/// The daemon's merge of a container config (as the API receives it: an
/// entrypoint that is absent, empty, or a list; a Cmd) with the image's.
pub fn merge_command(
    user_entrypoint: Option<&[String]>,
    user_cmd: &[String],
    image_entrypoint: Option<&[String]>,
    image_cmd: Option<&[String]>,
) -> Result<RunCommand, NoCommand> {
    let mut entrypoint = user_entrypoint.map(<[String]>::to_vec);
    let mut entrypoint_origin = Origin::User;
    let mut cmd = user_cmd.to_vec();
    let mut cmd_origin = Origin::User;
    if entrypoint.as_ref().is_none_or(Vec::is_empty) {
        if cmd.is_empty() {
            cmd = image_cmd.map(<[String]>::to_vec).unwrap_or_default();
            cmd_origin = Origin::Image;
        }
        if entrypoint.is_none() {
            entrypoint = image_entrypoint.map(<[String]>::to_vec);
            entrypoint_origin = Origin::Image;
        }
    }
    let mut entrypoint = entrypoint.unwrap_or_default();
    if entrypoint.len() == 1 && entrypoint[0].is_empty() {
        entrypoint.clear();
    }
    if entrypoint.is_empty() {
        entrypoint_origin = Origin::Unset;
    }
    if cmd.is_empty() {
        cmd_origin = Origin::Unset;
    }
    if entrypoint.is_empty() && cmd.is_empty() {
        return Err(NoCommand);
    }
    Ok(RunCommand {
        entrypoint,
        entrypoint_origin,
        cmd,
        cmd_origin,
    })
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Image => "image",
            Origin::User => "command line",
            Origin::Unset => "unset",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    /// (image entrypoint, image cmd, --entrypoint, args) → argv.
    fn argv(
        ep: Option<&[&str]>,
        cmd: Option<&[&str]>,
        flag: Option<&str>,
        args: &[&str],
    ) -> Result<Vec<String>, NoCommand> {
        let ep = ep.map(v);
        let cmd = cmd.map(v);
        docker_run_command(ep.as_deref(), cmd.as_deref(), flag, &v(args)).map(|c| c.argv())
    }

    #[test]
    fn image_cmd_alone() {
        assert_eq!(argv(None, Some(&["sh"]), None, &[]), Ok(v(&["sh"])));
    }

    #[test]
    fn image_entrypoint_then_cmd() {
        let run =
            docker_run_command(Some(&v(&["/ep", "-x"])), Some(&v(&["c"])), None, &[]).unwrap();
        assert_eq!(run.argv(), v(&["/ep", "-x", "c"]));
        assert_eq!(
            (run.entrypoint_origin, run.cmd_origin),
            (Origin::Image, Origin::Image)
        );
    }

    #[test]
    fn image_entrypoint_without_cmd() {
        assert_eq!(argv(Some(&["/ep"]), None, None, &[]), Ok(v(&["/ep"])));
    }

    #[test]
    fn args_replace_cmd_and_follow_entrypoint() {
        let run = docker_run_command(Some(&v(&["/ep"])), Some(&v(&["c"])), None, &v(&["a", "b"]))
            .unwrap();
        assert_eq!(run.argv(), v(&["/ep", "a", "b"]));
        assert_eq!(
            (run.entrypoint_origin, run.cmd_origin),
            (Origin::Image, Origin::User)
        );
    }

    #[test]
    fn args_replace_cmd_without_entrypoint() {
        assert_eq!(
            argv(None, Some(&["c"]), None, &["ls", "-l"]),
            Ok(v(&["ls", "-l"]))
        );
    }

    #[test]
    fn entrypoint_flag_drops_image_cmd_and_is_one_word() {
        let run = docker_run_command(
            Some(&v(&["/ep"])),
            Some(&v(&["c"])),
            Some("/bin/sh -x"),
            &[],
        )
        .unwrap();
        assert_eq!(run.argv(), v(&["/bin/sh -x"]));
        assert_eq!(
            (run.entrypoint_origin, run.cmd_origin),
            (Origin::User, Origin::Unset)
        );
    }

    #[test]
    fn entrypoint_flag_with_args() {
        assert_eq!(
            argv(Some(&["/ep"]), Some(&["c"]), Some("env"), &["-i"]),
            Ok(v(&["env", "-i"]))
        );
    }

    #[test]
    fn empty_entrypoint_flag_resets_and_runs_args() {
        let run = docker_run_command(Some(&v(&["/ep"])), Some(&v(&["c"])), Some(""), &v(&["ls"]))
            .unwrap();
        assert_eq!(run.argv(), v(&["ls"]));
        assert_eq!(
            (run.entrypoint_origin, run.cmd_origin),
            (Origin::Unset, Origin::User)
        );
    }

    #[test]
    fn empty_entrypoint_flag_without_args_does_not_fall_back_to_image_cmd() {
        assert_eq!(
            argv(Some(&["/ep"]), Some(&["c"]), Some(""), &[]),
            Err(NoCommand)
        );
        assert_eq!(argv(None, Some(&["c"]), Some(""), &[]), Err(NoCommand));
    }

    #[test]
    fn nothing_at_all_is_no_command() {
        assert_eq!(argv(None, None, None, &[]), Err(NoCommand));
        assert_eq!(argv(Some(&[]), Some(&[]), None, &[]), Err(NoCommand));
    }

    #[test]
    fn image_entrypoint_of_one_empty_word_is_no_entrypoint() {
        assert_eq!(argv(Some(&[""]), Some(&["c"]), None, &[]), Ok(v(&["c"])));
        assert_eq!(argv(Some(&[""]), None, None, &[]), Err(NoCommand));
    }

    #[test]
    fn only_exactly_one_empty_word_is_reset() {
        assert_eq!(argv(Some(&["", "x"]), None, None, &[]), Ok(v(&["", "x"])));
    }

    #[test]
    fn empty_image_entrypoint_list_is_like_none() {
        assert_eq!(argv(Some(&[]), Some(&["c"]), None, &["a"]), Ok(v(&["a"])));
    }

    #[test]
    fn api_empty_entrypoint_keeps_image_cmd_but_not_image_entrypoint() {
        let run = merge_command(Some(&[]), &[], Some(&v(&["/ep"])), Some(&v(&["c"]))).unwrap();
        assert_eq!(run.argv(), v(&["c"]));
        assert_eq!(run.entrypoint_origin, Origin::Unset);
        assert_eq!(run.cmd_origin, Origin::Image);
    }

    #[test]
    fn api_entrypoint_list_with_cmd() {
        let run = merge_command(
            Some(&v(&["/a", "b"])),
            &v(&["c"]),
            Some(&v(&["/ep"])),
            Some(&v(&["x"])),
        )
        .unwrap();
        assert_eq!(run.argv(), v(&["/a", "b", "c"]));
    }
}
