//! Watches the recipe file. The parent folder is watched, not the file: many
//! editors save by writing a temp file and renaming it over the original,
//! which replaces the inode a file watch would be attached to.

use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// Starts watching; `on_change` is called (on notify's thread) for every
/// event that touches the recipe file. Keep the returned watcher alive.
pub fn watch(recipe: &Path, on_change: impl Fn() + Send + 'static) -> notify::Result<RecommendedWatcher> {
    let file_name = recipe.file_name().map(|n| n.to_owned());
    let dir: PathBuf = recipe.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            // Reading the recipe ourselves produces access events: ignore them,
            // or every reload would trigger the next one.
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            if event.paths.iter().any(|p| p.file_name() == file_name.as_deref()) {
                on_change();
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
