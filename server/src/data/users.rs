//! Resolving an image's `User` (`name`, `uid`, `name:group`, `uid:gid`, ...) to the uid, gid and
//! supplementary groups PID 1 and the bot's processes run with, from the workspace's own
//! /etc/passwd and /etc/group. The files are opened with `RESOLVE_IN_ROOT`, so a symlinked
//! /etc/passwd in a hostile image is resolved inside the image, never on the host.
//!
//! The rules are containerd's (`oci.WithUser`) and Docker's: a numeric uid needs no passwd entry
//! (its gid is then 0), a name must exist, an explicit group replaces the primary group, and the
//! supplementary groups are every group of /etc/group listing the user by name.

use std::io::Read as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::{Error, Reason, Result};

/// /etc/passwd and /etc/group larger than this are not read (a hostile image could ship a
/// multi-GiB file to exhaust berth's memory).
const MAX_DATABASE_BYTES: u64 = 4 << 20;

/// The identity a workspace's processes run as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, sorted, without the primary gid.
    pub additional_gids: Vec<u32>,
    /// The user's name when /etc/passwd has one.
    pub name: Option<String>,
}

/// Resolves `user` against the passwd and group files of the root file system at `rootfs`.
/// Empty means root.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<ResolvedUser> {
    let root = rustix::fs::open(rootfs, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|err| lookup_failed(user, &format!("opening the root file system failed: {err}")))?;
    let passwd = read_in_root(&root, "etc/passwd", user)?;
    let group = read_in_root(&root, "etc/group", user)?;
    resolve(user, &passwd, &group)
}

/// The resolution itself, over the two files' contents (empty when a file is absent).
pub fn resolve(user: &str, passwd: &str, group: &str) -> Result<ResolvedUser> {
    let user = user.trim();
    let (user_part, group_part) = match user.split_once(':') {
        Some((user_part, group_part)) => (user_part, Some(group_part)),
        None => (user, None),
    };
    let entries: Vec<PasswdEntry<'_>> = passwd.lines().filter_map(PasswdEntry::parse).collect();
    let groups: Vec<GroupEntry<'_>> = group.lines().filter_map(GroupEntry::parse).collect();

    let entry = if user_part.is_empty() {
        entries.iter().find(|entry| entry.uid == 0)
    } else if let Ok(uid) = user_part.parse::<u32>() {
        entries.iter().find(|entry| entry.uid == uid)
    } else {
        let found = entries.iter().find(|entry| entry.name == user_part);
        if found.is_none() {
            return Err(Error::new(
                Reason::UserNotFound,
                format!(
                    "user {user_part:?} (from the image's User {user:?}) is not in the workspace's /etc/passwd; \
                     add it to the image or use a numeric uid"
                ),
            ));
        }
        found
    };
    let uid = match (user_part.parse::<u32>(), entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(entry)) => entry.uid,
        (Err(_), None) => 0,
    };
    let gid = match group_part {
        None => entry.map_or(0, |entry| entry.gid),
        Some(group_part) => match group_part.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups.iter().find(|group| group.name == group_part).map(|group| group.gid).ok_or_else(|| {
                Error::new(
                    Reason::UserNotFound,
                    format!(
                        "group {group_part:?} (from the image's User {user:?}) is not in the workspace's /etc/group; \
                         add it to the image or use a numeric gid"
                    ),
                )
            })?,
        },
    };
    let name = entry.map(|entry| entry.name.to_owned());
    let mut additional_gids: Vec<u32> = match &name {
        Some(name) => groups
            .iter()
            .filter(|group| group.has_member(name))
            .map(|group| group.gid)
            .filter(|member_gid| *member_gid != gid)
            .collect(),
        None => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser { uid, gid, additional_gids, name })
}

/// Reads a file of the root file system, resolved inside it; a missing file reads as empty.
fn read_in_root(root: &OwnedFd, path: &str, user: &str) -> Result<String> {
    let opened = rustix::fs::openat2(
        root.as_fd(),
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(String::new()),
        Err(err) => return Err(lookup_failed(user, &format!("opening /{path} failed: {err}"))),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|err| lookup_failed(user, &format!("reading /{path} failed: {err}")))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(lookup_failed(user, &format!("/{path} is not a regular file")));
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_DATABASE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|err| lookup_failed(user, &format!("reading /{path} failed: {err}")))?;
    if text.len() as u64 > MAX_DATABASE_BYTES {
        return Err(lookup_failed(user, &format!("/{path} is larger than {MAX_DATABASE_BYTES} bytes")));
    }
    Ok(text)
}

fn lookup_failed(user: &str, what: &str) -> Error {
    Error::new(
        Reason::UserNotFound,
        format!(
            "cannot resolve the image's User {user:?}: {what}; fix the image's /etc files or use a numeric uid:gid"
        ),
    )
}

/// `name:password:uid:gid:gecos:home:shell`.
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

impl<'a> PasswdEntry<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split(':');
        let name = fields.next().filter(|name| !name.is_empty() && !name.starts_with('#'))?;
        let _password = fields.next()?;
        let uid = fields.next()?.trim().parse().ok()?;
        let gid = fields.next()?.trim().parse().ok()?;
        Some(Self { name, uid, gid })
    }
}

/// `name:password:gid:member,member`.
struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

impl<'a> GroupEntry<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split(':');
        let name = fields.next().filter(|name| !name.is_empty() && !name.starts_with('#'))?;
        let _password = fields.next()?;
        let gid = fields.next()?.trim().parse().ok()?;
        Some(Self { name, gid, members: fields.next().unwrap_or("").trim() })
    }

    fn has_member(&self, user: &str) -> bool {
        self.members.split(',').any(|member| member == user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# a comment\nbot:x:1000:1000:bot:/home/bot:/bin/sh\nweb:x:33:33::/var/www:/bin/false\nbroken line\n";
    const GROUP: &str = "root:x:0:\nbot:x:1000:\nstaff:x:50:bot,web\naudio:x:29:bot\nwww:x:33:\n";

    fn resolved(user: &str) -> ResolvedUser {
        resolve(user, PASSWD, GROUP).unwrap()
    }

    #[test]
    fn names_resolve_with_their_primary_and_supplementary_groups() {
        let bot = resolved("bot");
        assert_eq!((bot.uid, bot.gid, bot.additional_gids.as_slice()), (1000, 1000, &[29, 50][..]));
        assert_eq!(bot.name.as_deref(), Some("bot"));
        let web = resolved("web");
        assert_eq!((web.uid, web.gid, web.additional_gids.as_slice()), (33, 33, &[50][..]));
    }

    #[test]
    fn an_explicit_group_replaces_the_primary_one_by_name_or_number() {
        let named = resolved("bot:staff");
        assert_eq!((named.uid, named.gid, named.additional_gids.as_slice()), (1000, 50, &[29][..]));
        let numeric = resolved("1000:staff");
        assert_eq!((numeric.uid, numeric.gid), (1000, 50));
        let both_numbers = resolved("1000:7");
        assert_eq!(
            (both_numbers.uid, both_numbers.gid, both_numbers.additional_gids.as_slice()),
            (1000, 7, &[29, 50][..])
        );
    }

    #[test]
    fn numeric_uids_need_no_entry_and_empty_means_root() {
        let unknown = resolved("4242");
        assert_eq!((unknown.uid, unknown.gid, unknown.name), (4242, 0, None));
        let root = resolved("");
        assert_eq!((root.uid, root.gid), (0, 0));
        let no_files = resolve("1000", "", "").unwrap();
        assert_eq!((no_files.uid, no_files.gid), (1000, 0));
    }

    #[test]
    fn unknown_names_and_groups_fail_with_user_not_found_naming_them() {
        let user = resolve("ghost", PASSWD, GROUP).unwrap_err();
        assert_eq!(user.reason(), Reason::UserNotFound);
        assert!(user.to_string().contains("\"ghost\""), "{user}");
        let group = resolve("bot:nogroup", PASSWD, GROUP).unwrap_err();
        assert_eq!(group.reason(), Reason::UserNotFound);
        assert!(group.to_string().contains("\"nogroup\""), "{group}");
    }

    #[test]
    fn files_are_read_inside_the_root_even_through_absolute_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir_all(root.path().join("real")).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(root.path().join("real/passwd"), "bot:x:1234:1234::/:/bin/sh\n").unwrap();
        std::fs::write(root.path().join("real/group"), "staff:x:50:bot\n").unwrap();
        // Followed from the host, these links would name /real/... and ../etc/group of the host;
        // inside the root they name the image's own files.
        std::os::unix::fs::symlink("/real/passwd", etc.join("passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../real/group", etc.join("group")).unwrap();
        let bot = resolve_user(root.path(), "bot").unwrap();
        assert_eq!((bot.uid, bot.gid, bot.additional_gids.as_slice()), (1234, 1234, &[50][..]));
    }
}
