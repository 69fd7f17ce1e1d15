//! `--chown user[:group]`, resolved the way BuildKit's file op does: a
//! number is an id, `root` is 0, a name is looked up in the *target*
//! filesystem's `/etc/passwd` and `/etc/group` (symlinks resolved inside
//! it). A user name not found there leaves 0, a group name not found leaves
//! the user's group, as BuildKit does (kiln logs a warning). The files are
//! parsed by kiln-runtime's [`kiln_runtime::user`] parsers, which `USER`
//! resolution uses too.

use kiln_runtime::user::{group_entries, passwd_entries};

use crate::rootfs::{resolve, RootfsError, SourceTree};

/// A resolved owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
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

    /// Whether resolving needs the target's passwd/group files.
    pub fn needs_lookup(&self) -> bool {
        matches!(self.user, Some(Principal::Name(_)))
            || matches!(self.group, Some(Principal::Name(_)))
    }

    /// Resolves against the target root filesystem.
    pub fn resolve(&self, rootfs: &dyn SourceTree) -> Result<Owner, RootfsError> {
        let mut owner = Owner { uid: 0, gid: 0 };
        match &self.user {
            Some(Principal::Id(id)) => {
                owner.uid = *id;
                owner.gid = *id;
            }
            Some(Principal::Name(name)) => {
                let passwd = read_etc(rootfs, "etc/passwd")?;
                let found = passwd_entries(&passwd).find(|entry| entry.name == name);
                match found {
                    Some(entry) => {
                        owner.uid = entry.uid;
                        owner.gid = entry.gid;
                    }
                    None => {
                        tracing::warn!("--chown: user {name:?} not found in /etc/passwd; using 0")
                    }
                }
            }
            None => {}
        }
        match &self.group {
            Some(Principal::Id(id)) => owner.gid = *id,
            Some(Principal::Name(name)) => {
                let group = read_etc(rootfs, "etc/group")?;
                let found = group_entries(&group).find(|entry| entry.name == name);
                match found {
                    Some(entry) => owner.gid = entry.gid,
                    None => tracing::warn!("--chown: group {name:?} not found in /etc/group"),
                }
            }
            None => {}
        }
        Ok(owner)
    }
}

fn read_etc(rootfs: &dyn SourceTree, path: &str) -> Result<String, RootfsError> {
    let rel = resolve(rootfs, path, true)?;
    match rootfs.stat(&rel)? {
        Some(meta) if meta.kind == crate::context::EntryKind::File => {
            let host = rootfs.host_file(&rel)?;
            let bytes = std::fs::read(&host).map_err(RootfsError::io(format!("/{rel}")))?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        // Missing (or not a regular file): the name is simply not found.
        _ => Ok(String::new()),
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
        let r = |s: &str| ChownSpec::parse(s).resolve(&tree).unwrap();
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
            ChownSpec::parse("svc").resolve(&tree).unwrap(),
            Owner { uid: 42, gid: 43 }
        );
    }
}
