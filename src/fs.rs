//! Small file-system helpers shared by every writer and every front end:
//! atomic writes, and paths the way a user wants to read them.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` so that readers see the old file or the new one,
/// never a prefix: write a sibling temp file, fsync it, rename over `path`.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Removes the temp files [`atomic_write`] leaves behind when a process is
/// killed between writing and renaming (`.NAME.PID.tmp`) in `dir` and its
/// direct sub-folders. Call it before a new process writes into a run folder.
pub fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let own = format!(".{}.tmp", std::process::id());
    let mut folders = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        folders.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for folder in folders {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for path in entries.flatten().map(|e| e.path()) {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let stale = name.starts_with('.') && name.ends_with(".tmp") && !name.ends_with(&own);
            if stale && path.is_file() && std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
    }
    removed
}

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
pub fn shown_from(path: &Path, cwd: &Path) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;

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
