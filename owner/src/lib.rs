//! Which process owns a scratch file or directory, and whether it is still
//! running.
//!
//! Scratch names made by the store (`kiln_layers::store::unique_suffix`)
//! and the runtime's run scratch carry an owner
//! token, `<pid>.<start>`: the process id and its start time in clock ticks
//! since boot (field 22 of `/proc/<pid>/stat`). A pid alone is not enough:
//! after a kill the pid can be reused by an unrelated process, whose start
//! time then differs. The owner is alive when `/proc/<pid>/stat` exists,
//! names the same start time and the process is not a zombie.
//!
//! Processes are seen through this process's `/proc`: kiln processes in
//! different pid namespaces must not share a store (as with Docker's and
//! BuildKit's data roots). Time namespaces may: `/proc/<pid>/stat` shows
//! start times shifted by the reader's boottime offset, which is taken off
//! (an offset that is not a whole number of clock ticks can still make
//! the two sides disagree by one).

use std::sync::OnceLock;

/// A process: its id and start time (clock ticks after boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
}

/// This process's time namespace's boottime offset in nanoseconds
/// (`/proc/self/timens_offsets`; 0 without time namespaces), read once:
/// its `CLOCK_BOOTTIME` and the start times `/proc` shows it run ahead of
/// the host's by that much.
pub fn boottime_offset_ns() -> i128 {
    static OFFSET: OnceLock<i128> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/self/timens_offsets").unwrap_or_default();
        parse_boottime_offset(&text).unwrap_or(0)
    })
}

/// The `boottime <secs> <nanos>` line of `timens_offsets`, in nanoseconds.
fn parse_boottime_offset(text: &str) -> Option<i128> {
    let line = text.lines().find(|l| l.starts_with("boottime"))?;
    let mut words = line.split_whitespace().skip(1);
    let secs: i128 = words.next()?.parse().ok()?;
    let nanos: i128 = words.next()?.parse().ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

/// A start time as `/proc` shows it here, in the host's clock ticks:
/// `offset_ns` (this time namespace's) taken off, at `ticks` per second.
/// The kernel shows `(start + offset) / tick`, rounded down and wrapped
/// as an unsigned 64-bit count of nanoseconds; this undoes both but the
/// rounding, so that the result may be one tick short of the host's
/// (see [`Owner::is_alive`]).
fn host_ticks(shown: u64, offset_ns: i128, ticks: u64) -> u64 {
    let per_tick = 1_000_000_000 / ticks.clamp(1, 1_000_000_000);
    // Truncating to 64 bits is the kernel's own wrap-around.
    let shown_ns = (u128::from(shown) * u128::from(per_tick)) as u64;
    let offset = offset_ns as i64 as u64;
    shown_ns.wrapping_sub(offset) / per_tick
}

/// Fields 3 and on of a `/proc/<pid>/stat` line. The command name (field
/// 2) is in parentheses and may hold anything, spaces and parentheses
/// included: they follow the last ')'.
fn stat_fields(text: &str) -> Option<std::str::SplitAsciiWhitespace<'_>> {
    Some(text[text.rfind(')')? + 1..].split_ascii_whitespace())
}

/// A `/proc/<pid>/stat` line's state (field 3: `Z` for a zombie) and
/// parent pid (field 4).
fn parse_state_and_parent(text: &str) -> Option<(char, u32)> {
    let mut fields = stat_fields(text)?;
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// The state of process `pid` (`Z` for a zombie) and its parent's pid, as
/// this process's `/proc` shows them; None when it is gone.
pub fn state_and_parent(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_state_and_parent(&text)
}

/// The start time (field 22, in the host's clock ticks) and state (field
/// 3) in `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat_fields(&text)?;
    let state = fields.next()?.chars().next()?;
    // Field 3 was `state`; field 22 is 19 further.
    let shown = fields.nth(18)?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    Some((host_ticks(shown, boottime_offset_ns(), ticks), state))
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

    /// The process that has the id `pid` now, if any.
    pub fn of_pid(pid: u32) -> Option<Owner> {
        stat_of(pid).map(|(start, _)| Owner { pid, start })
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
    /// (`kiln_layers::store::unique_suffix`); `None` for any other name.
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
    /// not a later one that got its pid). The start times may differ by
    /// one tick: a time namespace whose offset is not a whole number of
    /// ticks rounds them apart; a pid reused within one tick (10 ms) of
    /// its previous owner's start would need the whole pid range to wrap
    /// in that time.
    pub fn is_alive(&self) -> bool {
        if *self == Owner::current() {
            return true;
        }
        match stat_of(self.pid) {
            Some((start, state)) => {
                start.abs_diff(self.start) <= 1 && !matches!(state, 'Z' | 'X' | 'x')
            }
            None => false,
        }
    }
}

/// Whether some process (not a zombie) has the id `pid`, whichever it is.
pub fn is_running(pid: u32) -> bool {
    stat_of(pid).is_some_and(|(_, state)| !matches!(state, 'Z' | 'X' | 'x'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_namespace_offset_is_read_and_taken_off_start_times() {
        let text = "monotonic           0         0\nboottime         -100       250\n";
        assert_eq!(parse_boottime_offset(text), Some(-100_000_000_000 + 250));
        assert_eq!(parse_boottime_offset(""), None);
        // 1,000,000 s ahead at 100 ticks a second: 100,000,000 ticks.
        assert_eq!(
            host_ticks(102_861_555, 1_000_000_000_000_000, 100),
            2_861_555
        );
        assert_eq!(host_ticks(2_861_555, 0, 100), 2_861_555);
        assert_eq!(host_ticks(2_861_555, -100_000_000_000, 100), 2_871_555);
        // What the kernel shows for a process started at `start_ns` to a
        // reader whose offset is `offset_ns`.
        let shown =
            |start_ns: u64, offset_ns: i64| start_ns.wrapping_add(offset_ns as u64) / 10_000_000;
        // An offset that is not a whole number of ticks: one tick short at
        // most.
        let host = host_ticks(shown(2_000_000_000, 5_000_001), 5_000_001, 100);
        assert!(host.abs_diff(200) <= 1, "{host}");
        // One second behind, a process started half a second after boot:
        // the kernel's count wraps below zero; undone.
        let host = host_ticks(shown(500_000_000, -1_000_000_000), -1_000_000_000, 100);
        assert!(host.abs_diff(50) <= 1, "{host}");
    }

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
            start: me.start + 2,
        };
        assert!(!reused.is_alive());
        // One tick apart is rounding (a time namespace), not another
        // process.
        let parent = Owner::of_pid(
            rustix::process::getppid().map_or(1, |p| p.as_raw_nonzero().get() as u32),
        )
        .unwrap();
        let rounded = Owner {
            start: parent.start + 1,
            ..parent
        };
        assert!(rounded.is_alive());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let owner = Owner {
            pid: child.id(),
            start: stat_of(child.id()).map_or(0, |s| s.0),
        };
        child.wait().unwrap();
        assert!(!owner.is_alive(), "an exited, reaped process");
    }

    #[test]
    fn stat_lines_give_state_and_parent() {
        assert_eq!(
            parse_state_and_parent("42 (a (b) c) S 7 42 42 0"),
            Some(('S', 7))
        );
        assert_eq!(parse_state_and_parent("42 (x) Z 1 0"), Some(('Z', 1)));
        assert_eq!(parse_state_and_parent("42 (x"), None);
        assert_eq!(parse_state_and_parent("42 (x) S"), None);
        let own = state_and_parent(std::process::id()).expect("this process");
        assert_eq!(own.1, std::os::unix::process::parent_id());
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
