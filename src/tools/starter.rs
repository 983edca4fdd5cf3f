//! `tlab new DATA_DIR`: a commented starter recipe written from the data
//! itself, as Create ML or AutoTrain start from a folder.
//!
//! [`survey`] reads what a practitioner looks at first — the layout (train /
//! valid / test folders, or one folder to split), the classes and their
//! counts, whether the images are greyscale, their typical size and aspect
//! ratio — from the folder names and a sample of the images (headers for the
//! sizes, pixels for the colour). [`starter_recipe`] turns that into a
//! recipe whose every choice is a commented key: the image size from the
//! typical size, how much of the backbone to unfreeze from the images per
//! class, class weights from the imbalance, and lr_find in front. The recipe
//! is the plain two-phase one (a frozen head phase, then the last blocks at
//! a lower rate): on a data set far from ImageNet it scored above the
//! fastai-style one (docs/training-tools.md).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::util::paths::relative_to;

/// Images sampled per class for the size and colour survey.
const SAMPLE_PER_CLASS: usize = 8;
/// At most this many images are decoded for the colour check.
const COLOUR_SAMPLE: usize = 64;

/// Where the splits are.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub train: PathBuf,
    /// `None`: a stratified `valid_split` of `train`.
    pub valid: Option<PathBuf>,
    pub test: Option<PathBuf>,
}

/// What [`survey`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Survey {
    /// The folder surveyed.
    pub root: PathBuf,
    pub layout: Layout,
    /// Class name, training images, validation images (0 without a valid folder).
    pub classes: Vec<(String, usize, usize)>,
    /// Every decoded sample image was grey (R = G = B).
    pub greyscale: bool,
    /// Median width and height of the sampled images.
    pub median_size: (u32, u32),
    /// Images whose size was read.
    pub sampled: usize,
}

impl Survey {
    pub fn train_images(&self) -> usize {
        self.classes.iter().map(|c| c.1).sum()
    }

    /// Largest over smallest class in the training split.
    pub fn imbalance(&self) -> f64 {
        let max = self.classes.iter().map(|c| c.1).max().unwrap_or(0);
        let min = self.classes.iter().map(|c| c.1).min().unwrap_or(0).max(1);
        max as f64 / min as f64
    }

    /// Median training images per class.
    pub(crate) fn median_per_class(&self) -> usize {
        let mut counts: Vec<usize> = self.classes.iter().map(|c| c.1).collect();
        counts.sort_unstable();
        counts.get(counts.len() / 2).copied().unwrap_or(0)
    }
}

/// The first of `names` that is a folder under `dir`.
fn sub_folder(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_dir())
}

/// Where `dir` keeps its splits: `train/` (or `training/`) with `valid/`
/// (`val/`, `validation/`) and `test/` (`testing/`) beside it, else class
/// folders right in `dir`.
pub fn layout(dir: &Path) -> Layout {
    match sub_folder(dir, &["train", "training"]) {
        Some(train) => Layout {
            train,
            valid: sub_folder(dir, &["valid", "val", "validation"]),
            test: sub_folder(dir, &["test", "testing"]),
        },
        None => Layout { train: dir.to_path_buf(), valid: None, test: None },
    }
}

/// Reads `dir`'s layout, classes, counts and a sample of its images.
pub fn survey(dir: &Path) -> Result<Survey> {
    let layout = layout(dir);
    let mut skipped = Vec::new();
    let train = crate::data::scan(&layout.train, &mut skipped)?;
    let valid = match &layout.valid {
        Some(v) => crate::data::scan(v, &mut skipped)?,
        None => Vec::new(),
    };
    let classes = train
        .iter()
        .map(|(name, files)| {
            let v = valid.iter().find(|(n, _)| n == name).map_or(0, |(_, f)| f.len());
            (name.clone(), files.len(), v)
        })
        .collect();
    if let Some((name, _)) = valid.iter().find(|(n, _)| !train.iter().any(|(t, _)| t == n)) {
        let v = layout.valid.as_deref().unwrap_or(dir);
        return Err(Error::data(v.join(name), "a validation class with no training folder of that name"));
    }
    // A spread sample: every k-th file of each class.
    let sample: Vec<&PathBuf> = train
        .iter()
        .flat_map(|(_, files)| {
            let step = (files.len() / SAMPLE_PER_CLASS).max(1);
            files.iter().step_by(step).take(SAMPLE_PER_CLASS)
        })
        .collect();
    let mut sizes: Vec<(u32, u32)> = sample.iter().filter_map(|p| image::image_dimensions(p).ok()).collect();
    if sizes.is_empty() {
        return Err(Error::data(&layout.train, "none of the sampled images could be read"));
    }
    let greyscale = sample.iter().step_by((sample.len() / COLOUR_SAMPLE).max(1)).all(|p| is_grey(p));
    let sampled = sizes.len();
    sizes.sort_unstable_by_key(|&(w, h)| w.min(h));
    let median_size = sizes[sizes.len() / 2];
    Ok(Survey { root: dir.to_path_buf(), layout, classes, greyscale, median_size, sampled })
}

/// Whether the image decodes to grey pixels only (an undecodable one counts
/// as not grey: the survey then suggests nothing colour-specific).
fn is_grey(path: &Path) -> bool {
    match image::open(path) {
        Ok(img) if !img.color().has_color() => true,
        Ok(img) => img.to_rgb8().pixels().all(|p| p[0] == p[1] && p[1] == p[2]),
        Err(_) => false,
    }
}

/// The training image size for a typical short side: small images are
/// enlarged to 96 (the quickstart's size for 28-px clothes), mid-sized ones
/// kept near their size, large ones trained at 224, the backbones' own.
fn image_size_for(short_side: u32) -> u32 {
    match short_side {
        0..=64 => 96,
        65..=160 => 128,
        _ => 224,
    }
}

/// The first unfrozen MobileNetV2 block for the second phase: few images
/// per class adapt only the last blocks (more would overfit), many adapt more.
fn unfreeze_for(per_class: usize) -> (&'static str, &'static str) {
    match per_class {
        0..=149 => ("features.14", "under 150 images per class: only the last five blocks adapt"),
        150..=999 => ("features.10", "150-999 images per class: the last nine blocks adapt"),
        _ => ("features.7", "1000 or more images per class: the last twelve blocks adapt"),
    }
}

fn toml_str(path: &Path) -> String {
    let s = path.display().to_string().replace('\\', "/");
    format!("\"{}\"", s.replace('"', "\\\""))
}

/// A valid run name from the data folder's name.
fn run_name(dir: &Path) -> String {
    let name =
        crate::util::paths::absolute(dir).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' }).collect();
    let clean = clean.trim_matches(|c| c == '-' || c == '.').to_string();
    if clean.is_empty() {
        "my-data".into()
    } else {
        clean
    }
}

/// The `[data]` keys: the splits (relative to `base`) and the image size.
fn data_keys(t: &mut String, survey: &Survey, base: &Path) {
    let (w, h) = survey.median_size;
    let size = image_size_for(w.min(h));
    let _ = writeln!(*t, "train = {}", toml_str(&relative_to(&survey.layout.train, base)));
    match &survey.layout.valid {
        Some(v) => {
            let _ = writeln!(*t, "valid = {}", toml_str(&relative_to(v, base)));
        }
        None => {
            let _ = writeln!(
                t,
                "valid_split = 0.2        # no valid folder: 20 % of each class held out (stratified, seeded)"
            );
        }
    }
    if let Some(test) = &survey.layout.test {
        let _ = writeln!(
            t,
            "test = {}            # evaluate with split = \"test\" once, at the end",
            toml_str(&relative_to(test, base))
        );
    }
    let _ = writeln!(
        *t,
        "image_size = {size}         # typical short side {} px; 224 is the backbone's own size, smaller trains faster",
        w.min(h)
    );
}

/// The starter recipe for `survey`, to be saved as `out` (its relative paths
/// are relative to `out`'s folder), with `weights` the backbone's file.
pub fn starter_recipe(survey: &Survey, out: &Path, weights: &Path) -> String {
    let base = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (w, h) = survey.median_size;
    let per_class = survey.median_per_class();
    let (unfreeze, why_unfreeze) = unfreeze_for(per_class);
    let imbalanced = survey.imbalance() >= 3.0;
    let mut t = String::new();
    let _ = writeln!(t, "# Starter recipe written by `tlab new` from {}.", relative_to(&survey.root, base).display());
    let _ = writeln!(
        t,
        "# {} classes, {} training images ({} to {} per class); typical image {w}x{h} px, {}.",
        survey.classes.len(),
        survey.train_images(),
        survey.classes.iter().map(|c| c.1).min().unwrap_or(0),
        survey.classes.iter().map(|c| c.1).max().unwrap_or(0),
        if survey.greyscale { "greyscale" } else { "colour" },
    );
    let _ = writeln!(t, "# Check it with `tlab check`, run it with `tlab run` or step through it with `tlab tui`.");
    let _ = writeln!(t, "name = \"{}\"\nseed = 42\n\n[data]", run_name(&survey.root));
    data_keys(&mut t, survey, base);
    let _ = writeln!(t, "batch_size = 32\n");
    let _ = writeln!(t, "[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"");
    let _ = writeln!(t, "weights = {}   # torchvision's ImageNet weights", toml_str(&relative_to(weights, base)));
    let _ = writeln!(
        t,
        "dropout = 0.2\n\n[[step]]\nkind = \"freeze\"          # the whole backbone: first only the new head trains\n"
    );
    let _ = writeln!(t, "[[step]]\nkind = \"augment\"");
    let _ = writeln!(
        t,
        "horizontal_flip = true   # remove if left and right differ in your classes (text, digits, arrows)"
    );
    let _ = writeln!(t, "width_shift_range = 0.1\nheight_shift_range = 0.1\nzoom_range = 0.1");
    if !survey.greyscale {
        let _ = writeln!(t, "brightness_range = [0.8, 1.2]");
    }
    let _ = writeln!(
        t,
        "\n[[step]]\nkind = \"lr_find\"         # the learning-rate finder on the head (lr_find.png in the run)\n"
    );
    let weights_line = if imbalanced {
        format!(
            "class_weights = \"balanced\"   # the largest class has {:.1}x the images of the smallest\n",
            survey.imbalance()
        )
    } else {
        String::new()
    };
    let _ = writeln!(t, "[[step]]\nkind = \"fine_tune\"\nepochs = 4\nlr = \"valley\"            # lr_find's valley rate (fastai's default suggestion)\n{weights_line}");
    let _ = writeln!(t, "[[step]]\nkind = \"freeze\"\nup_to = \"{unfreeze}\"     # {why_unfreeze}\n");
    let _ = writeln!(
        t,
        "[[step]]\nkind = \"fine_tune\"       # the second phase at a lower rate\nepochs = 4\noptimizer = \"adamw\"\nlr = 3e-4\nschedule = \"cosine\"\n{weights_line}"
    );
    let _ = writeln!(t, "[[step]]\nkind = \"evaluate\"");
    t
}

/// Where `tlab new DATA_DIR` (and `tlab tui DATA_DIR`) put the recipe by
/// default: `<data folder name>.toml` in the current directory.
pub fn default_path(dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.toml", run_name(dir)))
}

/// Surveys `dir`, writes its starter recipe to `out` (whole or not at all)
/// unless a file is there already, and returns the survey.
pub fn write_new(dir: &Path, out: &Path, weights: &Path) -> Result<Survey> {
    if out.exists() {
        return Err(Error::data(out, "already exists; choose another file with -o (tlab new never overwrites)"));
    }
    let survey = survey(dir)?;
    crate::fs::atomic_write(out, starter_recipe(&survey, out, weights).as_bytes())?;
    Ok(survey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_unfreezing_follow_the_data() {
        assert_eq!(image_size_for(28), 96);
        assert_eq!(image_size_for(150), 128);
        assert_eq!(image_size_for(480), 224);
        assert_eq!(unfreeze_for(100).0, "features.14");
        assert_eq!(unfreeze_for(500).0, "features.10");
        assert_eq!(unfreeze_for(5000).0, "features.7");
        assert_eq!(run_name(Path::new("/x/My Photos!")), "My-Photos");
    }
}
