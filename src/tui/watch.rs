//! Watches what the open recipe depends on: the recipe file itself, its data
//! folders and its local weights files.
//!
//! Folders are watched, not files: many editors save by writing a temp file
//! and renaming it over the original, which replaces the inode a file watch
//! would be attached to; `cp new.safetensors weights.safetensors` and
//! `rsync` do the same.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::recipe::{Input, Recipe};

/// What changed on disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Changed {
    Recipe,
    Input(Input),
}

/// The paths events are matched against, shared with notify's thread.
#[derive(Default)]
struct Targets {
    recipe: PathBuf,
    /// Each input with the path its events carry.
    inputs: Vec<(PathBuf, Input)>,
}

impl Targets {
    fn classify(&self, path: &Path) -> Option<Changed> {
        if path == self.recipe {
            return Some(Changed::Recipe);
        }
        self.inputs
            .iter()
            .find(|(watched, input)| match input {
                Input::Data(_) => path.starts_with(watched),
                Input::Weights(_) => path == watched,
            })
            .map(|(_, input)| Changed::Input(input.clone()))
    }
}

/// A live watch; dropping it stops watching.
pub struct Watch {
    watcher: RecommendedWatcher,
    targets: Arc<Mutex<Targets>>,
    watched: Vec<PathBuf>,
}

impl Watch {
    /// Starts watching `recipe`'s file and inputs; `on_change` is called (on
    /// notify's thread) for every event that touches one of them.
    pub fn new(recipe: &Recipe, on_change: impl Fn(Changed) + Send + 'static) -> notify::Result<Watch> {
        let targets = Arc::new(Mutex::new(Targets::default()));
        let shared = targets.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            // Reading the recipe, the images or the weights ourselves produces
            // access events: ignore them, or every run would trigger the next.
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let Ok(targets) = shared.lock() else { return };
            let mut seen = Vec::new();
            for change in event.paths.iter().filter_map(|p| targets.classify(p)) {
                if !seen.contains(&change) {
                    seen.push(change.clone());
                    on_change(change);
                }
            }
        })?;
        let mut watch = Watch { watcher, targets, watched: Vec::new() };
        watch.retarget(recipe)?;
        Ok(watch)
    }

    /// Follows a reloaded recipe: its data folders or weights may have moved.
    /// Paths that do not exist are skipped (the run will say so clearly).
    pub fn retarget(&mut self, recipe: &Recipe) -> notify::Result<()> {
        let mut wanted: Vec<(PathBuf, RecursiveMode)> = vec![(parent(&recipe.path), RecursiveMode::NonRecursive)];
        for input in recipe.inputs() {
            match &input {
                Input::Data(dir) if dir.is_dir() => wanted.push((dir.clone(), RecursiveMode::Recursive)),
                Input::Weights(file) => {
                    let dir = parent(file);
                    if dir.is_dir() {
                        wanted.push((dir, RecursiveMode::NonRecursive));
                    }
                }
                Input::Data(_) => {}
            }
        }
        for old in std::mem::take(&mut self.watched) {
            let _ = self.watcher.unwatch(&old);
        }
        let mut first_error = None;
        for (path, mode) in wanted {
            if self.watched.contains(&path) {
                continue;
            }
            match self.watcher.watch(&path, mode) {
                Ok(()) => self.watched.push(path),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Ok(mut t) = self.targets.lock() {
            // Event paths are the watched path joined with the entry's name,
            // so compare in the same form: the recipe's folder as watched.
            t.recipe = as_event_path(&recipe.path);
            t.inputs = recipe
                .inputs()
                .into_iter()
                .map(|i| match &i {
                    Input::Data(dir) => (dir.clone(), i),
                    Input::Weights(file) => (as_event_path(file), i),
                })
                .collect();
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
}

/// How events name a file inside a non-recursively watched folder.
fn as_event_path(file: &Path) -> PathBuf {
    parent(file).join(file.file_name().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_classified_by_path() {
        let t = Targets {
            recipe: PathBuf::from("r/a.toml"),
            inputs: vec![
                ("d/train".into(), Input::Data("d/train".into())),
                ("w/m.safetensors".into(), Input::Weights("w/m.safetensors".into())),
            ],
        };
        assert_eq!(t.classify(Path::new("r/a.toml")), Some(Changed::Recipe));
        assert_eq!(t.classify(Path::new("r/b.toml")), None);
        assert_eq!(t.classify(Path::new("d/train/cat/1.png")), Some(Changed::Input(Input::Data("d/train".into()))));
        assert_eq!(t.classify(Path::new("d/trainer/x.png")), None);
        assert_eq!(
            t.classify(Path::new("w/m.safetensors")),
            Some(Changed::Input(Input::Weights("w/m.safetensors".into())))
        );
        assert_eq!(t.classify(Path::new("w/other.safetensors")), None);
    }
}
