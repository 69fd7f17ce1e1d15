//! `USER` resolution against the image's own /etc/passwd and /etc/group, the
//! way runc (and so Docker and BuildKit) does it.
//!
//! Accepted forms: "" (root), `name`, `uid`, `name:group`, `uid:gid`,
//! `name:gid`, `uid:group`. A numeric id missing from the files is used as is
//! (gid 0 when only a uid is given); a name missing from them is an error.
//! Supplementary groups come from /etc/group only when no group is given.
//!
//! The parsers of the two files ([`passwd_entries`], [`group_entries`]) are
//! the only ones in kiln; the builder's `--chown` lookup uses them too.

use std::fmt;

/// The ids a process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, in /etc/group order, without duplicates.
    pub groups: Vec<u32>,
    /// Home directory from /etc/passwd ("/" when unknown).
    pub home: String,
}

/// Why a `USER` value could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserError {
    /// A user name with no /etc/passwd entry.
    NoSuchUser(String),
    /// A group name with no /etc/group entry.
    NoSuchGroup(String),
    /// Not a valid id (too large, negative, empty name part…).
    Invalid(String),
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserError::NoSuchUser(name) => write!(f, "no user {name:?} in /etc/passwd"),
            UserError::NoSuchGroup(name) => write!(f, "no group {name:?} in /etc/group"),
            UserError::Invalid(spec) => write!(f, "invalid user specification {spec:?}"),
        }
    }
}

/// One entry of an /etc/passwd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub gid: u32,
    /// The home directory field ("" when absent).
    pub home: &'a str,
}

/// One entry of an /etc/group file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry<'a> {
    pub name: &'a str,
    pub gid: u32,
    /// Member user names, in the order listed.
    pub members: Vec<&'a str>,
}

/// The lines of a colon-separated database worth reading: trimmed, without
/// blank lines and `#` comments.
fn database_lines(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split(':').collect())
}

/// The entries of an /etc/passwd file (`name:password:uid:gid:gecos:home:shell`),
/// in file order. Lines with fewer than four fields or a uid or gid that is
/// not a number are skipped, as are blank lines and `#` comments.
pub fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    database_lines(text).filter_map(|fields| {
        if fields.len() < 4 {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].trim().parse().ok()?,
            gid: fields[3].trim().parse().ok()?,
            home: fields.get(5).copied().unwrap_or(""),
        })
    })
}

/// The entries of an /etc/group file (`name:password:gid:member,member`), in
/// file order. Lines with fewer than three fields or a gid that is not a
/// number are skipped, as are blank lines and `#` comments.
pub fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    database_lines(text).filter_map(|fields| {
        if fields.len() < 3 {
            return None;
        }
        Some(GroupEntry {
            name: fields[0],
            gid: fields[2].trim().parse().ok()?,
            members: fields
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
    })
}

fn parse_id(text: &str) -> Option<Result<u32, ()>> {
    if !text.bytes().all(|b| b.is_ascii_digit()) || text.is_empty() {
        return None;
    }
    // Ids above 2^31-1 are rejected as runc does.
    Some(
        text.parse::<u32>()
            .ok()
            .filter(|id| *id <= i32::MAX as u32)
            .ok_or(()),
    )
}

/// Resolves `spec` against the contents of /etc/passwd and /etc/group (`None`
/// when the file is missing from the image).
pub fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let invalid = || UserError::Invalid(spec.to_string());
    let passwd = passwd.unwrap_or("");
    let group_text = group.unwrap_or("");

    let mut resolved = ResolvedUser {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        home: "/".to_string(),
    };
    let mut matched_name: Option<String> = None;
    let numeric_uid = parse_id(user_part);
    let found = passwd_entries(passwd).find(|e| match (user_part, numeric_uid) {
        ("", _) => e.uid == 0,
        (_, Some(Ok(uid))) => e.uid == uid,
        (_, Some(Err(()))) => false,
        (name, None) => e.name == name,
    });
    match (found, numeric_uid) {
        (Some(entry), _) => {
            resolved.uid = entry.uid;
            resolved.gid = entry.gid;
            if !entry.home.is_empty() {
                resolved.home = entry.home.to_string();
            }
            matched_name = Some(entry.name.to_string());
        }
        (None, Some(Ok(uid))) => resolved.uid = uid,
        (None, Some(Err(()))) => return Err(invalid()),
        (None, None) if user_part.is_empty() => {}
        (None, None) => return Err(UserError::NoSuchUser(user_part.to_string())),
    }

    match group_part {
        Some("") => return Err(invalid()),
        Some(group_spec) => {
            let numeric_gid = parse_id(group_spec);
            let found = group_entries(group_text).find(|g| match numeric_gid {
                Some(Ok(gid)) => g.gid == gid,
                Some(Err(())) => false,
                None => g.name == group_spec,
            });
            resolved.gid = match (found, numeric_gid) {
                (Some(entry), _) => entry.gid,
                (None, Some(Ok(gid))) => gid,
                (None, Some(Err(()))) => return Err(invalid()),
                (None, None) => return Err(UserError::NoSuchGroup(group_spec.to_string())),
            };
        }
        None => {
            if let Some(name) = &matched_name {
                for entry in group_entries(group_text) {
                    if entry.members.contains(&name.as_str())
                        && !resolved.groups.contains(&entry.gid)
                    {
                        resolved.groups.push(entry.gid);
                    }
                }
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # a comment\n\
        broken line\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        nohome:x:1001:100::\n";
    const GROUP: &str = "root:x:0:\n\
        wheel:x:10:root,app\n\
        app:x:1000:\n\
        users:x:100:app, nohome\n\
        staff:x:50:\n";

    fn resolve(spec: &str) -> Result<ResolvedUser, UserError> {
        resolve_user(spec, Some(PASSWD), Some(GROUP))
    }

    fn user(uid: u32, gid: u32, groups: &[u32], home: &str) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.to_string(),
        }
    }

    #[test]
    fn empty_spec_is_root_with_its_groups() {
        assert_eq!(resolve("").unwrap(), user(0, 0, &[10], "/root"));
    }

    #[test]
    fn name_gets_primary_and_supplementary_groups() {
        assert_eq!(
            resolve("app").unwrap(),
            user(1000, 1000, &[10, 100], "/home/app")
        );
    }

    #[test]
    fn uid_found_in_passwd_behaves_like_its_name() {
        assert_eq!(
            resolve("1000").unwrap(),
            user(1000, 1000, &[10, 100], "/home/app")
        );
    }

    #[test]
    fn unknown_uid_is_used_as_is_with_gid_zero() {
        assert_eq!(resolve("4242").unwrap(), user(4242, 0, &[], "/"));
    }

    #[test]
    fn explicit_group_drops_supplementary_groups() {
        assert_eq!(
            resolve("app:staff").unwrap(),
            user(1000, 50, &[], "/home/app")
        );
        assert_eq!(
            resolve("1000:1000").unwrap(),
            user(1000, 1000, &[], "/home/app")
        );
        assert_eq!(resolve("4242:777").unwrap(), user(4242, 777, &[], "/"));
        assert_eq!(
            resolve("app:777").unwrap(),
            user(1000, 777, &[], "/home/app")
        );
        assert_eq!(resolve("4242:staff").unwrap(), user(4242, 50, &[], "/"));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve("nobody"),
            Err(UserError::NoSuchUser("nobody".into()))
        );
        assert_eq!(
            resolve("app:nogroup"),
            Err(UserError::NoSuchGroup("nogroup".into()))
        );
    }

    #[test]
    fn invalid_specs_are_errors() {
        assert!(matches!(resolve("app:"), Err(UserError::Invalid(_))));
        assert!(matches!(resolve("99999999999"), Err(UserError::Invalid(_))));
        assert!(matches!(
            resolve("1:99999999999"),
            Err(UserError::Invalid(_))
        ));
    }

    #[test]
    fn missing_files_allow_numeric_ids_only() {
        assert_eq!(resolve_user("0", None, None).unwrap(), user(0, 0, &[], "/"));
        assert_eq!(resolve_user("", None, None).unwrap(), user(0, 0, &[], "/"));
        assert_eq!(
            resolve_user("7:8", None, None).unwrap(),
            user(7, 8, &[], "/")
        );
        assert_eq!(
            resolve_user("app", None, None),
            Err(UserError::NoSuchUser("app".into()))
        );
    }

    #[test]
    fn parsers_skip_comments_blank_and_malformed_lines() {
        let passwd = "  root:x:0:0:root:/root:/bin/sh  \n\n# app:x:5:5::/:\nbad:x:one:1\nshort:x:2\nsvc:x:42:43\n";
        let entries: Vec<PasswdEntry> = passwd_entries(passwd).collect();
        assert_eq!(
            entries,
            vec![
                PasswdEntry {
                    name: "root",
                    uid: 0,
                    gid: 0,
                    home: "/root"
                },
                PasswdEntry {
                    name: "svc",
                    uid: 42,
                    gid: 43,
                    home: ""
                },
            ]
        );
        let group = "wheel:x:10: root , app,\n#staff:x:50:\nbad:x:\nnone:x:7\n";
        let entries: Vec<GroupEntry> = group_entries(group).collect();
        assert_eq!(
            entries,
            vec![
                GroupEntry {
                    name: "wheel",
                    gid: 10,
                    members: vec!["root", "app"]
                },
                GroupEntry {
                    name: "none",
                    gid: 7,
                    members: vec![]
                },
            ]
        );
    }

    #[test]
    fn empty_home_falls_back_to_root_dir() {
        assert_eq!(resolve("nohome").unwrap(), user(1001, 100, &[100], "/"));
    }
}
