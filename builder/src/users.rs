//! `--chown user[:group]`, resolved the way BuildKit's file op does
//! (`readUser` in its `solver/llbsolver/ops/user_linux.go`): a number is an
//! id, `root` is 0, a name is looked up in the *target* filesystem's
//! `/etc/passwd` and `/etc/group` (symlinks resolved inside it; missing
//! files hold no names; one that is not a regular file, or is over 10 MiB,
//! is an error). A user name not found leaves uid and gid 0, a group name
//! not found leaves the user's gid, as BuildKit does — without a word
//! there; kiln says so in a build warning ([`Resolved::unresolved`], which
//! the solver reports). The files are parsed by kiln-runtime's
//! [`kiln_runtime::user`] parsers, which `USER` resolution uses too.

use kiln_runtime::user::{group_entries, passwd_entries};

use crate::rootfs::{resolve, RootfsError, SourceTree};

/// A resolved owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A name the target's `/etc/passwd` or `/etc/group` does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    User(String),
    Group(String),
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::User(name) => write!(f, "user {name:?} is not in /etc/passwd"),
            Unresolved::Group(name) => write!(f, "group {name:?} is not in /etc/group"),
        }
    }
}

/// An owner as resolved, with the names that were not found (resolved as
/// BuildKit resolves them: see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub owner: Owner,
    pub unresolved: Vec<Unresolved>,
}

impl Resolved {
    /// What a build warning says of the unresolved names (None when every
    /// name was found): `user "bob" is not in /etc/passwd: owned by 0:0 as
    /// in BuildKit`.
    pub fn warning(&self) -> Option<String> {
        if self.unresolved.is_empty() {
            return None;
        }
        let names: Vec<String> = self.unresolved.iter().map(ToString::to_string).collect();
        Some(format!(
            "{} of the image; owned by {}:{}, as BuildKit does",
            names.join(" and "),
            self.owner.uid,
            self.owner.gid
        ))
    }
}

/// One side of a `--chown` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Id(u32),
    Name(String),
}

/// A `--chown` value split as `llb.WithUser` splits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChownSpec {
    pub user: Option<Principal>,
    pub group: Option<Principal>,
}

fn principal(text: &str) -> Principal {
    if text == "root" {
        return Principal::Id(0);
    }
    // Go's strconv.ParseInt(s, 10, 32), then used as an id.
    match text.parse::<i32>() {
        Ok(v) => Principal::Id(v as u32),
        Err(_) => Principal::Name(text.to_string()),
    }
}

impl ChownSpec {
    /// Splits `user[:group]`.
    pub fn parse(text: &str) -> ChownSpec {
        let mut parts = text.splitn(2, ':');
        let user = parts.next().map(principal);
        let group = parts.next().map(principal);
        ChownSpec { user, group }
    }

    /// Whether a user or group is given by a (non-empty) name, which
    /// BuildKit looks up in the base: an empty one is id 0.
    pub fn names_a_user_or_group(&self) -> bool {
        [&self.user, &self.group]
            .into_iter()
            .any(|p| matches!(p, Some(Principal::Name(name)) if !name.is_empty()))
    }

    /// Whether resolving needs the target's passwd/group files.
    pub fn needs_lookup(&self) -> bool {
        self.names_a_user_or_group()
    }

    /// Resolves against the target root filesystem.
    pub fn resolve(&self, rootfs: &dyn SourceTree) -> Result<Resolved, RootfsError> {
        let mut owner = Owner { uid: 0, gid: 0 };
        let mut unresolved = Vec::new();
        match &self.user {
            Some(Principal::Id(id)) => {
                owner.uid = *id;
                owner.gid = *id;
            }
            // `--chown=:group`: BuildKit marshals the empty user name as id
            // 0, looked up nowhere.
            Some(Principal::Name(name)) if name.is_empty() => {}
            Some(Principal::Name(name)) => {
                let passwd = read_etc(rootfs, "etc/passwd")?;
                let found = passwd_entries(&passwd).find(|entry| entry.name == name);
                match found {
                    Some(entry) => {
                        owner.uid = entry.uid;
                        owner.gid = entry.gid;
                    }
                    None => unresolved.push(Unresolved::User(name.clone())),
                }
            }
            None => {}
        }
        match &self.group {
            Some(Principal::Id(id)) => owner.gid = *id,
            // `--chown=user:`: BuildKit's `llb.WithUser` marshals the empty
            // group name as id 0.
            Some(Principal::Name(name)) if name.is_empty() => owner.gid = 0,
            Some(Principal::Name(name)) => {
                let group = read_etc(rootfs, "etc/group")?;
                let found = group_entries(&group).find(|entry| entry.name == name);
                match found {
                    Some(entry) => owner.gid = entry.gid,
                    None => unresolved.push(Unresolved::Group(name.clone())),
                }
            }
            None => {}
        }
        Ok(Resolved { owner, unresolved })
    }
}

/// How much of a passwd or group file BuildKit reads (`maxUserFileBytes`).
const MAX_USER_FILE_BYTES: u64 = 10 << 20;

/// The text of `/etc/passwd` or `/etc/group` in the target: empty when it
/// is missing (or a path component is not a directory), as BuildKit's
/// `openUserFile` counts that as not finding the name; an error when it
/// is not a regular file or is larger than BuildKit reads.
fn read_etc(rootfs: &dyn SourceTree, path: &str) -> Result<String, RootfsError> {
    let rel = resolve(rootfs, path, true)?;
    let invalid = |what: String| RootfsError::Io {
        path: format!("/{rel}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    };
    match rootfs.stat(&rel)? {
        None => Ok(String::new()),
        Some(meta) if meta.kind != crate::context::EntryKind::File => {
            Err(invalid("not a regular file".into()))
        }
        Some(meta) if meta.size > MAX_USER_FILE_BYTES => {
            Err(invalid(format!("exceeds {MAX_USER_FILE_BYTES} bytes")))
        }
        Some(_) => {
            let host = rootfs.host_file(&rel)?;
            let bytes = std::fs::read(&host).map_err(RootfsError::io(format!("/{rel}")))?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::DirTree;

    #[test]
    fn resolves_names_and_ids_in_the_target() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:app\n").unwrap();
        let tree = DirTree::new(dir.path());
        let r = |s: &str| ChownSpec::parse(s).resolve(&tree).unwrap().owner;
        assert_eq!(
            r("app"),
            Owner {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(r("app:staff"), Owner { uid: 1000, gid: 50 });
        assert_eq!(
            r("1234"),
            Owner {
                uid: 1234,
                gid: 1234
            }
        );
        assert_eq!(r("1234:7"), Owner { uid: 1234, gid: 7 });
        assert_eq!(r("root:staff"), Owner { uid: 0, gid: 50 });
        assert_eq!(r("nobody"), Owner { uid: 0, gid: 0 });
        assert_eq!(
            r("app:nogroup"),
            Owner {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(r(":staff"), Owner { uid: 0, gid: 50 });
        // An empty group is id 0, as BuildKit marshals it, with nothing to
        // warn about.
        assert_eq!(r("app:"), Owner { uid: 1000, gid: 0 });
        assert!(!ChownSpec::parse(":").needs_lookup());
        assert!(!ChownSpec::parse(":7").needs_lookup());
        assert_eq!(
            ChownSpec::parse("app:").resolve(&tree).unwrap().warning(),
            None
        );
    }

    #[test]
    fn passwd_behind_a_symlink_is_read_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/passwd"), "svc:x:42:43::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/data/passwd", dir.path().join("etc/passwd")).unwrap();
        let tree = DirTree::new(dir.path());
        assert_eq!(
            ChownSpec::parse("svc").resolve(&tree).unwrap().owner,
            Owner { uid: 42, gid: 43 }
        );
    }

    #[test]
    fn names_not_found_are_root_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "app:x:1000:1001::/:/bin/sh
",
        )
        .unwrap();
        let tree = DirTree::new(dir.path());
        let resolved = ChownSpec::parse("bob").resolve(&tree).unwrap();
        assert_eq!(resolved.owner, Owner { uid: 0, gid: 0 });
        assert_eq!(
            resolved.warning().unwrap(),
            "user \"bob\" is not in /etc/passwd of the image; owned by 0:0, as BuildKit does"
        );
        // No /etc/group at all: the group is not found either.
        let resolved = ChownSpec::parse("app:staff").resolve(&tree).unwrap();
        assert_eq!(
            resolved.owner,
            Owner {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(resolved.unresolved, vec![Unresolved::Group("staff".into())]);
        let resolved = ChownSpec::parse("1000:7").resolve(&tree).unwrap();
        assert_eq!(resolved.warning(), None);
    }

    #[test]
    fn a_passwd_that_is_not_a_regular_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/passwd")).unwrap();
        let tree = DirTree::new(dir.path());
        // An empty user is id 0, read from nowhere (BuildKit's marshalling).
        assert_eq!(
            ChownSpec::parse(":7").resolve(&tree).unwrap().owner,
            Owner { uid: 0, gid: 7 }
        );
        let err = ChownSpec::parse("app").resolve(&tree).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/passwd: not a regular file",
            "{err:?}"
        );
    }
}
