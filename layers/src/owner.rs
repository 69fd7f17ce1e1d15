//! Which process owns a scratch file or directory, and whether it is still
//! running.
//!
//! Scratch names made by [`crate::store::unique_suffix`] carry an owner
//! token, `<pid>.<start>`: the process id and its start time in clock ticks
//! since boot (field 22 of `/proc/<pid>/stat`). A pid alone is not enough:
//! after a kill the pid can be reused by an unrelated process, whose start
//! time then differs. The owner is alive when `/proc/<pid>/stat` exists,
//! names the same start time and the process is not a zombie.
//!
//! Processes are seen through this process's `/proc`: kiln processes in
//! different pid namespaces must not share a store (as with Docker's and
//! BuildKit's data roots).

use std::sync::OnceLock;

/// A process: its id and start time (clock ticks after boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
}

/// The start time (field 22) and state (field 3) in `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything,
    // spaces and parentheses included: fields 3 and on follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 was `state`; field 22 is 19 further.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

impl Owner {
    /// This process. A start time that cannot be read (no `/proc`) is 0,
    /// which [`Owner::is_alive`] never matches for another process.
    pub fn current() -> Owner {
        static CURRENT: OnceLock<Owner> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let pid = std::process::id();
            Owner {
                pid,
                start: stat_of(pid).map_or(0, |(start, _)| start),
            }
        })
    }

    /// `<pid>.<start>`, as it appears in scratch names.
    pub fn token(&self) -> String {
        format!("{}.{}", self.pid, self.start)
    }

    /// Parses a [`Owner::token`].
    pub fn parse(token: &str) -> Option<Owner> {
        let (pid, start) = token.split_once('.')?;
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(pid) || !all_digits(start) {
            return None;
        }
        Some(Owner {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
        })
    }

    /// The owner token in a name made of `<anything>-<pid>.<start>-<nanos>-<n>`
    /// ([`crate::store::unique_suffix`]); `None` for any other name.
    pub fn of_name(name: &str) -> Option<Owner> {
        let mut parts = name.rsplitn(4, '-');
        let n = parts.next()?;
        let nanos = parts.next()?;
        let owner = parts.next()?;
        parts.next()?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(n) || !digits(nanos) {
            return None;
        }
        Owner::parse(owner)
    }

    /// Whether this process is still running (and is the same process,
    /// not a later one that got its pid).
    pub fn is_alive(&self) -> bool {
        if *self == Owner::current() {
            return true;
        }
        match stat_of(self.pid) {
            Some((start, state)) => start == self.start && !matches!(state, 'Z' | 'X' | 'x'),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_its_token_round_trips() {
        let me = Owner::current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start > 0);
        assert!(me.is_alive());
        assert_eq!(Owner::parse(&me.token()), Some(me));
        let name = format!("build-{}-123-4", me.token());
        assert_eq!(Owner::of_name(&name), Some(me));
        assert_eq!(Owner::of_name(&format!("abc-{}-1-2", me.token())), Some(me));
    }

    #[test]
    fn a_reused_pid_or_an_exited_process_is_dead() {
        let me = Owner::current();
        let reused = Owner {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!reused.is_alive());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let owner = Owner {
            pid: child.id(),
            start: stat_of(child.id()).map_or(0, |s| s.0),
        };
        child.wait().unwrap();
        assert!(!owner.is_alive(), "an exited, reaped process");
    }

    #[test]
    fn names_without_an_owner_token() {
        for name in [
            "build-123-0-1700000000000000000",
            "trash-1700000000-4096-1-2-3",
            "leftover",
            "abc-1.2-x-3",
            "1.2-3-4",
            ".tmp-12.x-3-4",
        ] {
            assert_eq!(Owner::of_name(name), None, "{name}");
        }
        assert_eq!(
            Owner::of_name(".tmp-12.34-5-6"),
            Some(Owner { pid: 12, start: 34 })
        );
    }
}
