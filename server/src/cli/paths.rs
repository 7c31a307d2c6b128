//! The pure rules of `berth cp` and `berth fs`: what `ID:/path` means, where a copy lands (the
//! rules of `docker cp` and `cp -r`), and how listed entries map to relative paths.

/// One side of a copy, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `ID:/path`: a path inside a workspace.
    Workspace(WorkspacePath),
    /// A path on this host.
    Host(String),
    /// `-`: our stdin or stdout.
    Stdio,
}

/// `ID:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspacePath {
    pub workspace_id: String,
    pub path: String,
}

impl std::fmt::Display for WorkspacePath {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}:{}", self.workspace_id, self.path)
    }
}

/// Reads a command-line argument like `docker cp` does: `-` is stdio; a path starting with `/`
/// or `.` is always the host's (write `./a:b` for a host file named `a:b`); otherwise a colon
/// before any slash separates a workspace id from a path inside it.
pub fn parse_location(argument: &str) -> Location {
    if argument == "-" {
        return Location::Stdio;
    }
    if argument.starts_with('/') || argument.starts_with('.') {
        return Location::Host(argument.to_owned());
    }
    match argument.split_once(':') {
        Some((id, path)) if !id.is_empty() && !id.contains('/') => {
            Location::Workspace(WorkspacePath { workspace_id: id.to_owned(), path: path.to_owned() })
        }
        _ => Location::Host(argument.to_owned()),
    }
}

/// An argument that must be `ID:/path` (the `fs` subcommands).
pub fn parse_workspace_path(argument: &str) -> Result<WorkspacePath, String> {
    match parse_location(argument) {
        Location::Workspace(path) => Ok(path),
        _ => Err(format!("INVALID_ARGUMENT: {argument:?} is not ID:/path (a workspace id, a colon, an absolute path)")),
    }
}

/// What is at the destination before the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Missing,
    Directory,
    /// A file, or anything else that is not a directory.
    NotDirectory,
}

/// The copy's source, as far as placement cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceShape {
    /// Last component of the source (`notes.txt`); empty, `.` or `..` when it has none usable.
    pub name: String,
    pub is_directory: bool,
    /// The source was written `DIR/.`: its content is copied, not the directory itself.
    pub contents_only: bool,
}

/// Where the copy lands: entries go below `parent`, the source's top entry under `leaf`; with no
/// leaf (`SRC/.` into an existing directory) the source directory's entries go straight into
/// `parent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub parent: String,
    pub leaf: Option<String>,
}

/// Applies the rules of `docker cp`:
/// - an existing directory receives the source inside it, under the source's name (or, for
///   `DIR/.`, the directory's content);
/// - a missing destination becomes the copy (its parent must exist); a missing one ending in `/`
///   must be a directory, so a file cannot go there;
/// - an existing file is replaced by a file, never by a directory.
pub fn place(destination: &str, existing: Existing, source: &SourceShape) -> Result<Placement, String> {
    if source.contents_only && !source.is_directory {
        return Err(format!("{}/. names a directory's content, but {:?} is not a directory", source.name, source.name));
    }
    let names_no_entry = matches!(source.name.as_str(), "" | "." | ".." | "/");
    match existing {
        Existing::Directory if source.contents_only || source.is_directory && names_no_entry => {
            Ok(Placement { parent: destination.to_owned(), leaf: None })
        }
        Existing::Directory if names_no_entry => {
            Err(format!("cannot name the copy of {:?} inside {destination}", source.name))
        }
        Existing::Directory => Ok(Placement { parent: destination.to_owned(), leaf: Some(source.name.clone()) }),
        Existing::NotDirectory if source.is_directory => {
            Err(format!("cannot copy a directory onto {destination}, which is not a directory"))
        }
        Existing::NotDirectory if destination.ends_with('/') => Err(format!("{destination} is not a directory")),
        Existing::Missing if !source.is_directory && destination.ends_with('/') => Err(format!(
            "directory {destination} does not exist; create it first or drop the trailing slash to name the copy"
        )),
        Existing::NotDirectory | Existing::Missing => {
            let (parent, leaf) = split_last(destination);
            if matches!(leaf.as_str(), "" | "." | "..") {
                return Err(format!("{destination} names no entry to create"));
            }
            Ok(Placement { parent, leaf: Some(leaf) })
        }
    }
}

/// `a/b/c` → (`a/b`, `c`); `c` → (`.`, `c`); `/c` → (`/`, `c`). Trailing slashes are ignored.
pub fn split_last(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return (if path.is_empty() { "." } else { "/" }.to_owned(), String::new());
    }
    match trimmed.rsplit_once('/') {
        Some(("", leaf)) => ("/".to_owned(), leaf.to_owned()),
        Some((parent, leaf)) => (parent.to_owned(), leaf.to_owned()),
        None => (".".to_owned(), trimmed.to_owned()),
    }
}

/// `dir` + `name` with one slash between them.
pub fn join(dir: &str, name: &str) -> String {
    if name.is_empty() {
        return dir.to_owned();
    }
    if dir.is_empty() {
        return name.to_owned();
    }
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Whether a source argument asks for a directory's content (`DIR/.`, like `docker cp`).
pub fn is_contents_only(source: &str) -> bool {
    source == "." || source.ends_with("/.")
}

/// The path of a listed entry relative to the listed directory `root` (both as the server
/// writes them), checked to be a plain relative path: no empty, `.` or `..` components, so that
/// joining it below a host directory stays below it.
pub fn relative_to(root: &str, entry_path: &str) -> Result<String, String> {
    let prefix = if root == "/" { "/".to_owned() } else { format!("{}/", root.trim_end_matches('/')) };
    let relative = entry_path
        .strip_prefix(&prefix)
        .ok_or_else(|| format!("the server listed {entry_path:?}, which is not below {root:?}"))?;
    if relative.split('/').any(|component| matches!(component, "" | "." | "..")) {
        return Err(format!("the server listed {entry_path:?}, which is not a plain path below {root:?}"));
    }
    Ok(relative.to_owned())
}

/// Number of components of a relative path (`a/b` → 2).
pub fn depth(relative: &str) -> usize {
    if relative.is_empty() { 0 } else { relative.split('/').count() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace(id: &str, path: &str) -> Location {
        Location::Workspace(WorkspacePath { workspace_id: id.to_owned(), path: path.to_owned() })
    }

    #[test]
    fn arguments_read_like_docker_cp() {
        assert_eq!(parse_location("bot-1:/data/x"), workspace("bot-1", "/data/x"));
        assert_eq!(parse_location("bot.a:/"), workspace("bot.a", "/"));
        assert_eq!(parse_location("bot:relative"), workspace("bot", "relative"));
        assert_eq!(parse_location("bot:"), workspace("bot", ""));
        assert_eq!(parse_location("bot:/a:b"), workspace("bot", "/a:b"));
        assert_eq!(parse_location("-"), Location::Stdio);
        assert_eq!(parse_location("/tmp/a:b"), Location::Host("/tmp/a:b".to_owned()));
        assert_eq!(parse_location("./a:b"), Location::Host("./a:b".to_owned()));
        assert_eq!(parse_location("dir/a:b"), Location::Host("dir/a:b".to_owned()));
        assert_eq!(parse_location("notes.txt"), Location::Host("notes.txt".to_owned()));
        assert_eq!(parse_location(":/x"), Location::Host(":/x".to_owned()));
        assert!(parse_workspace_path("notes.txt").unwrap_err().contains("is not ID:/path"));
        assert_eq!(parse_workspace_path("bot:/data").unwrap().to_string(), "bot:/data");
    }

    fn file(name: &str) -> SourceShape {
        SourceShape { name: name.to_owned(), is_directory: false, contents_only: false }
    }

    fn directory(name: &str) -> SourceShape {
        SourceShape { name: name.to_owned(), is_directory: true, contents_only: false }
    }

    fn at(parent: &str, leaf: Option<&str>) -> Placement {
        Placement { parent: parent.to_owned(), leaf: leaf.map(str::to_owned) }
    }

    #[test]
    fn an_existing_directory_receives_the_source_inside_it() {
        assert_eq!(place("/data", Existing::Directory, &file("a.txt")), Ok(at("/data", Some("a.txt"))));
        assert_eq!(place("/data/", Existing::Directory, &directory("src")), Ok(at("/data/", Some("src"))));
        assert_eq!(place(".", Existing::Directory, &file("a.txt")), Ok(at(".", Some("a.txt"))));
        let contents = SourceShape { contents_only: true, ..directory("src") };
        assert_eq!(place("/data", Existing::Directory, &contents), Ok(at("/data", None)));
        // The workspace's root, or a host `.`, has no name of its own: its content goes in.
        assert_eq!(place("out", Existing::Directory, &directory("/")), Ok(at("out", None)));
        assert_eq!(place("/data", Existing::Directory, &directory("..")), Ok(at("/data", None)));
    }

    #[test]
    fn a_missing_destination_becomes_the_copy() {
        assert_eq!(place("/data/b.txt", Existing::Missing, &file("a.txt")), Ok(at("/data", Some("b.txt"))));
        assert_eq!(place("b.txt", Existing::Missing, &file("a.txt")), Ok(at(".", Some("b.txt"))));
        assert_eq!(place("/new", Existing::Missing, &directory("src")), Ok(at("/", Some("new"))));
        assert_eq!(place("out/new/", Existing::Missing, &directory("src")), Ok(at("out", Some("new"))));
        let contents = SourceShape { contents_only: true, ..directory("src") };
        assert_eq!(place("/data/new", Existing::Missing, &contents), Ok(at("/data", Some("new"))));
        let error = place("/data/new/", Existing::Missing, &file("a.txt")).unwrap_err();
        assert!(error.contains("does not exist"), "{error}");
    }

    #[test]
    fn a_file_is_replaced_by_a_file_only() {
        assert_eq!(place("/data/b.txt", Existing::NotDirectory, &file("a.txt")), Ok(at("/data", Some("b.txt"))));
        let error = place("/data/b.txt", Existing::NotDirectory, &directory("src")).unwrap_err();
        assert!(error.contains("not a directory"), "{error}");
        let error = place("/data/b.txt/", Existing::NotDirectory, &file("a.txt")).unwrap_err();
        assert!(error.contains("not a directory"), "{error}");
        let contents = SourceShape { contents_only: true, ..file("a.txt") };
        assert!(place("/data", Existing::Directory, &contents).is_err());
    }

    #[test]
    fn paths_split_and_join_with_single_slashes() {
        assert_eq!(split_last("/data/x/"), ("/data".to_owned(), "x".to_owned()));
        assert_eq!(split_last("/x"), ("/".to_owned(), "x".to_owned()));
        assert_eq!(split_last("x"), (".".to_owned(), "x".to_owned()));
        assert_eq!(split_last("a/b"), ("a".to_owned(), "b".to_owned()));
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/data/", "x"), "/data/x");
        assert_eq!(join("/data", ""), "/data");
        assert_eq!(join("", "x"), "x");
        assert!(is_contents_only("src/.") && is_contents_only(".") && !is_contents_only("src/.x"));
    }

    #[test]
    fn listed_entries_stay_below_the_listed_directory() {
        assert_eq!(relative_to("/data", "/data/a/b").as_deref(), Ok("a/b"));
        assert_eq!(relative_to("/", "/etc").as_deref(), Ok("etc"));
        assert!(relative_to("/data", "/database/x").is_err());
        assert!(relative_to("/data", "/data/../etc").is_err());
        assert!(relative_to("/data", "/data//x").is_err());
        assert!(relative_to("/data", "/data/").is_err());
        assert_eq!(depth("a/b/c"), 3);
        assert_eq!(depth(""), 0);
    }
}
