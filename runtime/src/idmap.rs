//! User-namespace id maps for rootless runs: uid/gid 0 inside is the calling
//! user; the user's /etc/subuid and /etc/subgid ranges follow from 1 on,
//! written by the setuid helpers newuidmap/newgidmap when they are installed.
//! Without them (or without a range) only 0 is mapped, written directly.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::RuntimeError;

/// One `name:start:count` line of /etc/subuid or /etc/subgid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIdRange {
    pub start: u64,
    pub count: u64,
}

/// The first range for `user` (by name or numeric id) in a subid file's text.
pub fn find_subid_range(text: &str, name: Option<&str>, id: u32) -> Option<SubIdRange> {
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let owner = fields.next()?;
        let start = fields.next()?.parse().ok()?;
        let count = fields.next()?.parse().ok()?;
        let matches = Some(owner) == name || owner.parse::<u32>().ok() == Some(id);
        (matches && count > 0).then_some(SubIdRange { start, count })
    })
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let name = crate::user::passwd_entries(&passwd)
        .find(|entry| entry.uid == uid)
        .map(|entry| entry.name.to_string());
    name
}

/// `name` in `PATH`, else in the usual bin and sbin directories.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

fn map_with_helper(
    program: &Path,
    pid: libc::pid_t,
    id: u32,
    range: SubIdRange,
) -> Result<(), RuntimeError> {
    let output = Command::new(program)
        .arg(pid.to_string())
        .args(["0", &id.to_string(), "1"])
        .args(["1", &range.start.to_string(), &range.count.to_string()])
        .output()
        .map_err(|e| RuntimeError::IdMap(format!("{}: {e}", program.display())))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::IdMap(format!(
            "{} failed ({}): {}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn write_proc(pid: libc::pid_t, file: &str, content: &str) -> Result<(), RuntimeError> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, content).map_err(|e| RuntimeError::IdMap(format!("{path}: {e}")))
}

/// The map root gives a user namespace of its own when /etc/subuid has no
/// range for it: the first 65536 ids, unchanged.
const ROOT_MAP: &str = "0 0 65536\n";

/// Whether the calling user has subordinate uid and gid ranges and the
/// helpers to map them (else only its own id is mapped: files of other
/// owners cannot be made). `Err` says what is missing. Root needs none.
pub fn subordinate_ids() -> Result<String, String> {
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    if uid == 0 {
        return Ok("root: ids 0-65535 keep their numbers".into());
    }
    let name = user_name(uid);
    let who = name.clone().unwrap_or_else(|| uid.to_string());
    let mut found = Vec::new();
    for (file, id, program) in [
        ("/etc/subuid", uid, "newuidmap"),
        ("/etc/subgid", gid, "newgidmap"),
    ] {
        let range = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| find_subid_range(&text, name.as_deref(), id))
            .ok_or_else(|| format!("no range for {who} in {file}"))?;
        find_program(program).ok_or_else(|| format!("{program} is not installed (uidmap)"))?;
        found.push(format!("{file} {}+{}", range.start, range.count));
    }
    Ok(found.join(", "))
}

/// Writes the uid and gid maps of the user namespace that process `pid` has
/// just created.
pub fn write_id_maps(pid: libc::pid_t) -> Result<(), RuntimeError> {
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let name = user_name(uid);
    let range = |file: &str, id: u32| {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|text| find_subid_range(&text, name.as_deref(), id))
    };

    let uid_map = || match (range("/etc/subuid", uid), find_program("newuidmap")) {
        (Some(r), Some(program)) => map_with_helper(&program, pid, uid, r),
        // Root needs no helper: the ids keep their numbers.
        _ if uid == 0 => write_proc(pid, "uid_map", ROOT_MAP),
        _ => write_proc(pid, "uid_map", &format!("0 {uid} 1\n")),
    };
    let gid_map = || match (range("/etc/subgid", gid), find_program("newgidmap")) {
        (Some(r), Some(program)) => map_with_helper(&program, pid, gid, r),
        _ if gid == 0 => write_proc(pid, "gid_map", ROOT_MAP),
        _ => {
            // An unprivileged gid map requires giving up setgroups first.
            write_proc(pid, "setgroups", "deny\n")?;
            write_proc(pid, "gid_map", &format!("0 {gid} 1\n"))
        }
    };
    // The two maps are independent: their helpers (a few milliseconds
    // each, every rootless build pays them) run side by side.
    std::thread::scope(|scope| {
        let uid_done = scope.spawn(uid_map);
        let gid_done = gid_map();
        let uid_done = uid_done
            .join()
            .unwrap_or_else(|_| Err(RuntimeError::IdMap("the uid map writer panicked".into())));
        uid_done.and(gid_done)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_range_by_name_or_id() {
        let text = "alice:100000:65536\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(
            find_subid_range(text, Some("alice"), 1000),
            Some(SubIdRange {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            find_subid_range(text, Some("carol"), 1001),
            Some(SubIdRange {
                start: 200000,
                count: 1000
            })
        );
        assert_eq!(find_subid_range(text, Some("bob"), 1002), None);
        assert_eq!(find_subid_range("garbage\n", None, 0), None);
    }
}
