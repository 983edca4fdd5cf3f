//! Paths the way a user wants to read them: folded (`recipes/../data` →
//! `data`) and relative to the current directory when under it. No
//! dependencies, so errors, recipes and every front end can use it.

use std::path::{Component, Path, PathBuf};

/// `path` with `.` and `..` folded lexically (`recipes/../data` → `data`),
/// without asking the file system, so symlinks are not resolved. A `..` that
/// would climb above a relative path's start is kept.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    if out.is_empty() {
        return PathBuf::from(".");
    }
    out.iter().map(|c| c.as_os_str()).collect()
}

/// How tlab shows a path to the user: normalised, and relative to the current
/// directory when it lies under it (`recipes/../data/x` → `data/x`,
/// `/home/me/repo/runs/a` → `runs/a` when run from `/home/me/repo`).
pub fn shown(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    shown_from(path, &cwd)
}

/// `path` as an absolute path that names the same file from any directory:
/// canonical when it exists, else the current directory joined and folded.
/// Run directories record the recipe this way, so `--resume` works from
/// anywhere.
pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| normalize(&std::env::current_dir().unwrap_or_default().join(path)))
}

/// [`shown`] against an explicit current directory.
pub(crate) fn shown_from(path: &Path, cwd: &Path) -> PathBuf {
    let absolute = normalize(&if path.is_absolute() { path.to_path_buf() } else { cwd.join(path) });
    match absolute.strip_prefix(normalize(cwd)) {
        Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from("."),
        Ok(rel) => rel.to_path_buf(),
        Err(_) if path.is_absolute() => absolute,
        // A relative path outside the current directory (`../other`): keep it
        // relative, folded.
        Err(_) => normalize(path),
    }
}

/// `target` as seen from folder `base` (both made absolute first), so a
/// recipe written anywhere names the data and weights relative to itself.
pub fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let (t, b) = (absolute(target), absolute(base));
    let (tc, bc): (Vec<_>, Vec<_>) = (t.components().collect(), b.components().collect());
    let common = tc.iter().zip(&bc).take_while(|(x, y)| x == y).count();
    // Sharing only the root (`/tmp` and `/work`): the absolute path reads better.
    if common <= 1 {
        return t;
    }
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &tc[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_and_descend() {
        assert_eq!(
            relative_to(Path::new("/a/b/data/train"), Path::new("/a/b/recipes")),
            PathBuf::from("../data/train")
        );
        assert_eq!(relative_to(Path::new("/a/b/data"), Path::new("/a/b")), PathBuf::from("data"));
        assert_eq!(relative_to(Path::new("/a/b"), Path::new("/a/b")), PathBuf::from("."));
    }

    #[test]
    fn normalize_folds_dots_lexically() {
        assert_eq!(normalize(Path::new("recipes/../data/train")), PathBuf::from("data/train"));
        assert_eq!(normalize(Path::new("./a/./b/")), PathBuf::from("a/b"));
        assert_eq!(normalize(Path::new("../a/../../b")), PathBuf::from("../../b"));
        assert_eq!(normalize(Path::new("/a/../../b")), PathBuf::from("/b"));
        assert_eq!(normalize(Path::new("a/..")), PathBuf::from("."));
    }

    #[test]
    fn shown_is_relative_under_the_current_directory() {
        let cwd = Path::new("/home/me/repo");
        assert_eq!(shown_from(Path::new("recipes/../data/x.png"), cwd), PathBuf::from("data/x.png"));
        assert_eq!(shown_from(Path::new("/home/me/repo/runs/a"), cwd), PathBuf::from("runs/a"));
        assert_eq!(shown_from(Path::new("/home/me/repo"), cwd), PathBuf::from("."));
        assert_eq!(shown_from(Path::new("/elsewhere/./w"), cwd), PathBuf::from("/elsewhere/w"));
        assert_eq!(shown_from(Path::new("../other/../x"), cwd), PathBuf::from("../x"));
        assert_eq!(shown_from(Path::new("/home/me/repository/x"), cwd), PathBuf::from("/home/me/repository/x"));
    }
}
