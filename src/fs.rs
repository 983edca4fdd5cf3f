//! Files written whole or not at all (a crash never leaves a half-written
//! file), and the one CSV quoting rule every writer uses.

use std::io::Write;
use std::path::{Path, PathBuf};

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
pub(crate) fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
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

/// A CSV field, quoted where it holds a comma, a quote or a line break.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_of_killed_writers_are_removed() {
        let dir = std::env::temp_dir().join(format!("tlab-stale-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("checkpoint")).unwrap();
        for f in [".a.json.1.tmp", "checkpoint/.state.json.2.tmp", "keep.tmp", "report.md"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let mut removed = remove_stale_temps(&dir);
        removed.sort();
        assert_eq!(removed, vec![dir.join(".a.json.1.tmp"), dir.join("checkpoint/.state.json.2.tmp")]);
        assert!(dir.join("keep.tmp").exists() && dir.join("report.md").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("tlab-atomic-{}", std::process::id()));
        let f = dir.join("a.json");
        atomic_write(&f, b"one").unwrap();
        atomic_write(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn csv_quotes_commas() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
