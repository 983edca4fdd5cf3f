//! The recipe as written, scored like the trials: what a tuned recipe must
//! beat before `best.toml` takes its values.
//!
//! The best of many trials scored on the same few hundred inner images is
//! the luckiest as much as the best (the winner's curse): at 200 images an
//! accuracy has a standard deviation of 2–3 points, and on the shipped data
//! tuned recipes scored *below* the recipe they started from. So the tune
//! also trains the recipe as written at full epochs on the same inner split,
//! and keeps the winner's values only when the winner beats it on the same
//! images beyond chance: a one-sided McNemar (sign) test on the images
//! exactly one of the two got right. Otherwise `best.toml` is the recipe as
//! written, and `tune.md` says why.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// The one-sided 5 % point of the standard normal: how many standard
/// deviations of the discordant images' sign test the winner must clear.
pub const Z_NEEDED: f64 = 1.645;

/// The recipe as written, trained on the inner split at full epochs
/// (`baseline.json`; its run directory is `trials/recipe/`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    /// Accuracy on the inner split.
    pub score: f64,
    pub seconds: f64,
}

/// The best trial against the recipe as written, image by image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub trial: usize,
    /// Inner images the trial got right and the recipe as written wrong.
    pub gained: usize,
    /// Inner images the recipe as written got right and the trial wrong.
    pub lost: usize,
}

impl Comparison {
    /// The sign test's statistic: `(gained − lost) / √(gained + lost)`.
    pub fn z(&self) -> f64 {
        let n = (self.gained + self.lost) as f64;
        if n == 0.0 {
            return 0.0;
        }
        (self.gained as f64 - self.lost as f64) / n.sqrt()
    }

    /// Whether the trial beats the recipe as written beyond chance.
    pub fn convincing(&self) -> bool {
        self.z() >= Z_NEEDED
    }

    /// One line for `best.toml`'s header and the progress lines.
    pub fn describe(&self) -> String {
        format!("trial {} against the recipe as written on the inner split: {}", self.trial + 1, self.details())
    }

    /// The counts, the statistic and what follows from them.
    pub fn details(&self) -> String {
        let verdict = match (self.convincing(), self.gained > self.lost) {
            (true, _) => "beyond chance: best.toml takes its values",
            (false, true) => "within chance: best.toml keeps the recipe as written",
            (false, false) => "no better: best.toml keeps the recipe as written",
        };
        format!(
            "{} image(s) gained, {} lost (z = {:.2}; {Z_NEEDED} needed), {verdict}",
            self.gained,
            self.lost,
            self.z()
        )
    }
}

/// Compares the predictions of two runs on the same images (their
/// `predictions.csv`).
pub fn compare(recipe_run: &Path, trial_run: &Path, trial: usize) -> Result<Comparison> {
    let base = right_or_wrong(recipe_run)?;
    let other = right_or_wrong(trial_run)?;
    let (mut gained, mut lost) = (0, 0);
    for (path, ok) in &other {
        match (base.get(path), ok) {
            (Some(false), true) => gained += 1,
            (Some(true), false) => lost += 1,
            (Some(_), _) => {}
            (None, _) => {
                let file = trial_run.join("predictions.csv");
                return Err(Error::data(&file, format!("{path} is not among the recipe's inner-split predictions")));
            }
        }
    }
    Ok(Comparison { trial, gained, lost })
}

/// Each image of a run's `predictions.csv`: whether it was classified right.
fn right_or_wrong(run: &Path) -> Result<HashMap<String, bool>> {
    let file = run.join("predictions.csv");
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        match crate::data::csv::fields(line).as_slice() {
            [path, truth, predicted, ..] => out.insert(path.clone(), truth == predicted),
            _ => return Err(Error::data(&file, format!("line {}: expected path,true,predicted,…", n + 1))),
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rows: &[(&str, &str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        let mut csv = String::from("path,true,predicted,confidence\n");
        for (p, t, y) in rows {
            csv += &format!("{p},{t},{y},0.5\n");
        }
        std::fs::write(dir.join("predictions.csv"), csv).unwrap();
    }

    #[test]
    fn counts_the_images_only_one_run_got_right() {
        let tmp = std::env::temp_dir().join(format!("tlab-baseline-{}", std::process::id()));
        let (a, b) = (tmp.join("recipe"), tmp.join("t001"));
        write(
            &a,
            &[("x.png", "cat", "cat"), ("y.png", "dog", "cat"), ("z.png", "dog", "cat"), ("w.png", "cat", "cat")],
        );
        write(
            &b,
            &[("w.png", "cat", "dog"), ("z.png", "dog", "dog"), ("y.png", "dog", "dog"), ("x.png", "cat", "cat")],
        );
        let c = compare(&a, &b, 0).unwrap();
        assert_eq!((c.gained, c.lost), (2, 1));
        assert!((c.z() - 1.0 / 3f64.sqrt()).abs() < 1e-12);
        assert!(!c.convincing());
        // An image the recipe's run never saw: the runs are not comparable.
        write(&b, &[("v.png", "cat", "cat")]);
        let e = compare(&a, &b, 0).unwrap_err().to_string();
        assert!(e.contains("v.png") && e.contains("predictions.csv"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn only_a_clear_majority_of_the_discordant_images_convinces() {
        let c = |gained, lost| Comparison { trial: 4, gained, lost };
        assert!(!c(0, 0).convincing());
        assert!(!c(5, 1).convincing()); // z = 1.63
        assert!(c(6, 1).convincing()); // z = 1.89
        assert!(!c(30, 20).convincing()); // z = 1.41: ten images of fifty is chance
        assert!(c(40, 20).convincing());
        assert!(c(6, 1).describe().contains("trial 5") && c(6, 1).describe().contains("takes its values"));
        assert!(c(5, 1).describe().contains("within chance: best.toml keeps the recipe as written"));
        assert!(c(1, 6).describe().contains("no better: best.toml keeps the recipe as written"));
    }
}
