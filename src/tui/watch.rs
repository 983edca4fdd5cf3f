//! Watches what the open recipe depends on: the recipe file itself, its data
//! folders and its local weights files.
//!
//! Folders are watched, not files: many editors save by writing a temp file
//! and renaming it over the original, which replaces the inode a file watch
//! would be attached to; `cp new.safetensors weights.safetensors` and
//! `rsync` do the same.
//!
//! notify reports an event as the watched path joined with the entry's name,
//! made absolute against the current directory but not normalised: watching
//! `recipes` from `/repo` yields `/repo/recipes/quickstart.toml`, and a data
//! folder named `recipes/../data/train` yields `/repo/recipes/../data/train/…`.
//! So both sides are compared in one canonical form (`canonical`): absolute,
//! symlinks and `..` resolved as far as the path exists.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::recipe::{Input, Recipe};

/// What changed on disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Changed {
    Recipe,
    Input(Input),
}

/// The paths events are matched against, shared with notify's thread; all
/// in [`canonical`] form.
#[derive(Default)]
struct Targets {
    recipe: PathBuf,
    /// Each input with its canonical path.
    inputs: Vec<(PathBuf, Input)>,
}

impl Targets {
    /// The targets of `recipe`, with relative paths taken against `cwd`.
    fn new(recipe: &Recipe, cwd: &Path) -> Targets {
        Targets {
            recipe: canonical(&recipe.path, cwd),
            inputs: recipe.inputs().into_iter().map(|i| (canonical(i.path(), cwd), i)).collect(),
        }
    }

    /// What an event on `path` (as notify reports it) touches, if anything.
    fn classify(&self, path: &Path, cwd: &Path) -> Option<Changed> {
        let path = canonical(path, cwd);
        if path == self.recipe {
            return Some(Changed::Recipe);
        }
        self.inputs
            .iter()
            .find(|(watched, input)| match input {
                Input::Data(_) => path.starts_with(watched),
                Input::Weights(_) => path == *watched,
            })
            .map(|(_, input)| Changed::Input(input.clone()))
    }
}

/// A live watch; dropping it stops watching.
pub(crate) struct Watch {
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
            let Ok(cwd) = std::env::current_dir() else { return };
            let mut seen = Vec::new();
            for change in event.paths.iter().filter_map(|p| targets.classify(p, &cwd)) {
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
    pub(crate) fn retarget(&mut self, recipe: &Recipe) -> notify::Result<()> {
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
        if let (Ok(mut t), Ok(cwd)) = (self.targets.lock(), std::env::current_dir()) {
            *t = Targets::new(recipe, &cwd);
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
}

/// `path` made absolute against `cwd`, with symlinks and `..` resolved by
/// the file system for the longest leading part that exists, and the rest
/// (a deleted file, a folder not yet created) normalised lexically. Two
/// spellings of one file compare equal in this form, existing or not.
fn canonical(path: &Path, cwd: &Path) -> PathBuf {
    let absolute = if path.is_absolute() { path.to_path_buf() } else { cwd.join(path) };
    let mut head = absolute.as_path();
    let mut tail = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(head) {
            return tail.iter().rev().fold(real, |mut acc, part: &std::path::Component<'_>| {
                match part {
                    std::path::Component::ParentDir => {
                        acc.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => acc.push(other.as_os_str()),
                }
                acc
            });
        }
        match (head.parent(), head.components().next_back()) {
            (Some(up), Some(last)) => {
                tail.push(last);
                head = up;
            }
            _ => return crate::util::paths::normalize(&absolute),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree like the repository's: `recipes/r.toml` naming its data and
    /// weights through `..`, and a symlink to the repository.
    fn tree() -> (PathBuf, Recipe) {
        let root =
            std::env::temp_dir().join(format!("tlab-watch-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["repo/recipes", "repo/data/train/cat", "repo/assets"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("repo/assets/w.safetensors"), b"w").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(root.join("repo"), root.join("link")).unwrap();
        let text = "name = \"r\"\n[data]\ntrain = \"../data/train\"\n[[step]]\nkind = \"backbone\"\narch = \"resnet18\"\nweights = \"../assets/w.safetensors\"\n";
        std::fs::write(root.join("repo/recipes/r.toml"), text).unwrap();
        let recipe = crate::recipe::parse(text, Path::new("recipes/r.toml")).unwrap();
        (root, recipe)
    }

    /// How notify names an entry of a watched folder: `cwd.join(watched).join(name)`.
    fn event(cwd: &Path, watched: &Path, name: &str) -> PathBuf {
        cwd.join(watched).join(name)
    }

    #[test]
    fn every_way_of_naming_the_recipe_matches_its_events() {
        let (root, _) = tree();
        let repo = root.join("repo");
        let text = std::fs::read_to_string(repo.join("recipes/r.toml")).unwrap();
        // (current directory, the path the user typed)
        let forms: Vec<(PathBuf, PathBuf)> = vec![
            (repo.clone(), "recipes/r.toml".into()),
            (repo.clone(), "./recipes/r.toml".into()),
            (repo.join("recipes"), "r.toml".into()),
            (repo.join("recipes"), "./r.toml".into()),
            (root.clone(), "repo/recipes/../recipes/r.toml".into()),
            (PathBuf::from("/"), repo.join("recipes/r.toml")),
            (root.clone(), "link/recipes/r.toml".into()),
            (root.join("link/recipes"), "r.toml".into()),
        ];
        for (cwd, typed) in forms {
            let recipe = crate::recipe::parse(&text, &typed).unwrap();
            let t = Targets::new(&recipe, &cwd);
            let folder = parent(&typed);
            let what = format!("{} from {}", typed.display(), cwd.display());
            // The recipe saved in place, or by rename (the event names the target).
            assert_eq!(t.classify(&event(&cwd, &folder, "r.toml"), &cwd), Some(Changed::Recipe), "{what}");
            // An editor's temp file next to it is not the recipe.
            assert_eq!(t.classify(&event(&cwd, &folder, "r.toml.swp"), &cwd), None, "{what}");
            // A new image under the data folder, reported through `..`.
            let data_dir = cwd.join(&folder).join("../data/train");
            let inputs = recipe.inputs();
            assert_eq!(
                t.classify(&data_dir.join("cat/new.png"), &cwd),
                Some(Changed::Input(inputs[0].clone())),
                "{what}"
            );
            // The weights file replaced, reported in the watched folder's form.
            assert_eq!(
                t.classify(&event(&cwd, &folder.join("../assets"), "w.safetensors"), &cwd),
                Some(Changed::Input(inputs[1].clone())),
                "{what}"
            );
            assert!(matches!(&inputs[1], Input::Weights(_)), "{inputs:?}");
            // The same files reached by their real, absolute paths.
            assert_eq!(t.classify(&repo.join("recipes/r.toml"), &cwd), Some(Changed::Recipe), "{what}");
            assert!(t.classify(&repo.join("data/train/cat/x.png"), &cwd).is_some(), "{what}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn deleted_and_not_yet_created_files_still_match() {
        let (root, recipe) = tree();
        let cwd = root.join("repo");
        let t = Targets::new(&recipe, &cwd);
        // Delete + create: the recipe gone for a moment.
        std::fs::remove_file(cwd.join("recipes/r.toml")).unwrap();
        assert_eq!(t.classify(&cwd.join("recipes/r.toml"), &cwd), Some(Changed::Recipe));
        // A class folder removed with its images.
        std::fs::remove_dir_all(cwd.join("data/train/cat")).unwrap();
        assert!(t.classify(&cwd.join("recipes/../data/train/cat/1.png"), &cwd).is_some());
        assert_eq!(t.classify(&cwd.join("data/trainer/x.png"), &cwd), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn canonical_normalises_what_does_not_exist() {
        let cwd = Path::new("/nonexistent-tlab/a");
        assert_eq!(canonical(Path::new("b/../c/./d"), cwd), PathBuf::from("/nonexistent-tlab/a/c/d"));
        assert_eq!(canonical(Path::new("../x"), cwd), PathBuf::from("/nonexistent-tlab/x"));
    }
}
