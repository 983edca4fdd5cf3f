//! `tlab data --label-issues RUN`: the training images whose given label
//! the model most doubts.
//!
//! The rule is cleanlab's confident learning (Northcutt, Jiang and Chuang,
//! "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR
//! 2021), on **out-of-sample** probabilities: a class's threshold is the
//! mean probability of that class over the images labelled with it; an
//! image is a label issue when the classes whose probability reaches their
//! threshold exist and the likeliest of them is not its given label (an
//! off-diagonal entry of the confident joint). Issues are ranked by the
//! probability of the given label, lowest first (cleanlab's
//! `self_confidence`).
//!
//! The probabilities come from a k-fold (default 5, stratified, seeded) of a
//! linear softmax probe on the recipe's backbone, frozen whole, its last
//! feature map averaged per channel — the way cleanlab's own image tutorials
//! use a logistic regression on embeddings. Every image's probabilities come
//! from a probe that never saw it, and the backbone runs over the images
//! once.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::recipe::{Recipe, StepKind};
use crate::train::{Event, Observer};

/// The probe's settings: one small struct with its defaults in one place.
#[derive(Debug, Clone, Copy)]
pub struct ProbeConfig {
    /// Folds of the cross-validation (cleanlab's `cv_n_folds` default).
    pub folds: usize,
    /// Full-batch Adam steps per fold.
    pub steps: usize,
    pub lr: f64,
    /// L2 penalty, times the number of images: 1 is scikit-learn's
    /// `LogisticRegression` default (`C = 1`). Measured with 20 planted flips
    /// (flips in the top 40, seeds 42/1/2 on digits): 1 finds 13/11/14 on
    /// scikit-learn's digits and 16 on the shipped clothes; 100 (softer
    /// probabilities) 10/10/12 and 16: a softer probe leaves more flipped
    /// images under their true class's threshold.
    pub l2_per_image: f64,
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig { folds: 5, steps: 300, lr: 0.01, l2_per_image: 1.0, seed: 0 }
    }
}

/// One image whose label the probe doubts.
#[derive(Debug, Clone, Serialize)]
pub struct LabelIssue {
    pub path: PathBuf,
    pub given: String,
    pub suggested: String,
    /// Out-of-sample probability of the given label.
    pub self_confidence: f32,
    /// Out-of-sample probability of the suggested label.
    pub suggested_confidence: f32,
}

/// What `--label-issues` found.
#[derive(Debug, Clone, Serialize)]
pub struct LabelIssues {
    /// Most doubted first.
    pub issues: Vec<LabelIssue>,
    /// Training images examined.
    pub examined: usize,
    pub folds: usize,
    /// How often the out-of-sample probe agrees with the given labels.
    pub probe_accuracy: f64,
}

/// Forwards a run's log lines to `log`.
struct Logs<'a>(&'a mut dyn FnMut(String));

impl Observer for Logs<'_> {
    fn event(&mut self, event: Event) {
        if let Event::Log(line) = event {
            (self.0)(line);
        }
    }
}

/// The recipe of a run directory (its `recipe.toml`, paths resolved from
/// where the recipe was) or a recipe file itself.
pub fn recipe_of(path: &Path) -> Result<Recipe> {
    if !path.is_dir() {
        return Ok(crate::recipe::load(path)?);
    }
    let status = crate::run::dir::Status::read(path)?;
    let saved = path.join("recipe.toml");
    let text = std::fs::read_to_string(&saved).map_err(|source| Error::Io { path: saved.clone(), source })?;
    Ok(crate::recipe::parse(&text, &status.recipe)?)
}

/// Finds the label issues of the training images of `recipe` (see the
/// module docs); `log` hears the backbone step's lines and the progress.
pub fn find(recipe: Recipe, cfg: &ProbeConfig, log: &mut dyn FnMut(String)) -> Result<LabelIssues> {
    let backbone = recipe
        .steps
        .iter()
        .position(|s| matches!(s.kind, StepKind::Backbone(_)))
        .ok_or(Error::NotYet { what: "--label-issues", needs: "a backbone step" })?;
    let batch = recipe.data.batch_size.max(1);
    let mut lab = crate::lab::Lab::new(recipe);
    for index in 0..=backbone {
        lab.run_step(index, &mut Logs(log))?;
    }
    let data = lab.data()?;
    log(format!("pooled features of {} training images", data.train.len()));
    let features = lab.embeddings(&data.train, batch)?;
    let probs = out_of_sample(&features, &data.train.labels, data.classes.len(), cfg, log)?;
    let agree = probs.iter().zip(&data.train.labels).filter(|(p, &y)| argmax(p) == y).count();
    let issues = confident_learning(&probs, &data.train.labels)
        .into_iter()
        .map(|(i, suggested)| LabelIssue {
            path: data.train.paths[i].clone(),
            given: data.classes[data.train.labels[i]].clone(),
            suggested: data.classes[suggested].clone(),
            self_confidence: probs[i][data.train.labels[i]],
            suggested_confidence: probs[i][suggested],
        })
        .collect();
    Ok(LabelIssues {
        issues,
        examined: probs.len(),
        folds: cfg.folds,
        probe_accuracy: agree as f64 / probs.len().max(1) as f64,
    })
}

/// Probabilities of every image from a probe trained on the other folds.
fn out_of_sample(
    features: &Tensor,
    labels: &[usize],
    classes: usize,
    cfg: &ProbeConfig,
    log: &mut dyn FnMut(String),
) -> Result<Vec<Vec<f32>>> {
    let features = standardised(features)?;
    let fold = stratified_folds(labels, cfg.folds.max(2), cfg.seed);
    let mut probs = vec![Vec::new(); labels.len()];
    for k in 0..cfg.folds.max(2) {
        let (fit, held): (Vec<usize>, Vec<usize>) = (0..labels.len()).partition(|&i| fold[i] != k);
        if fit.is_empty() || held.is_empty() {
            continue;
        }
        let rows = |idx: &[usize]| -> Result<Tensor> {
            let idx = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), &Device::Cpu)?;
            Ok(features.index_select(&idx, 0)?)
        };
        let y: Vec<usize> = fit.iter().map(|&i| labels[i]).collect();
        let probe = Probe::fit(&rows(&fit)?, &y, classes, cfg)?;
        for (row, &i) in probe.probabilities(&rows(&held)?)?.into_iter().zip(&held) {
            probs[i] = row;
        }
        log(format!("fold {}/{}: probe trained on {} images, {} held out", k + 1, cfg.folds, fit.len(), held.len()));
    }
    Ok(probs)
}

/// Each feature to mean 0 and standard deviation 1 over the images (no
/// labels involved, so no fold learns anything about another's).
fn standardised(x: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(0)?;
    let centred = x.broadcast_sub(&mean)?;
    let sd = centred.sqr()?.mean_keepdim(0)?.sqrt()?.affine(1.0, 1e-6)?;
    Ok(centred.broadcast_div(&sd)?)
}

/// A fold number per image: each class's images shuffled (seeded) and dealt
/// round the folds, so every fold has every class in proportion.
fn stratified_folds(labels: &[usize], folds: usize, seed: u64) -> Vec<usize> {
    let mut rng = crate::augment::Rng::new(seed);
    let mut out = vec![0; labels.len()];
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    for class in 0..classes {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        for i in (1..members.len()).rev() {
            members.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for (n, &i) in members.iter().enumerate() {
            out[i] = n % folds;
        }
    }
    out
}

/// Softmax regression trained full-batch by Adam with an L2 penalty; the
/// gradient is written out (`Xᵀ(P − Y)/n`), no autograd graph needed.
struct Probe {
    w: Tensor,
    b: Tensor,
}

impl Probe {
    fn fit(x: &Tensor, labels: &[usize], classes: usize, cfg: &ProbeConfig) -> Result<Probe> {
        let (n, c) = x.dims2()?;
        let mut onehot = vec![0f32; n * classes];
        for (i, &y) in labels.iter().enumerate() {
            onehot[i * classes + y] = 1.0;
        }
        let y = Tensor::from_vec(onehot, (n, classes), &Device::Cpu)?;
        let xt = x.t()?.contiguous()?;
        let l2 = cfg.l2_per_image / n as f64;
        let mut p = Probe {
            w: Tensor::zeros((c, classes), DType::F32, &Device::Cpu)?,
            b: Tensor::zeros(classes, DType::F32, &Device::Cpu)?,
        };
        let mut adam = [Adam::new(&p.w)?, Adam::new(&p.b)?];
        for _ in 0..cfg.steps {
            let g = (p.softmax(x)? - &y)?.affine(1.0 / n as f64, 0.0)?;
            let gw = (xt.matmul(&g)? + p.w.affine(l2, 0.0)?)?;
            let gb = g.sum(0)?;
            p.w = adam[0].step(&p.w, &gw, cfg.lr)?;
            p.b = adam[1].step(&p.b, &gb, cfg.lr)?;
        }
        Ok(p)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax(&x.matmul(&self.w)?.broadcast_add(&self.b)?, D::Minus1)?)
    }

    fn probabilities(&self, x: &Tensor) -> Result<Vec<Vec<f32>>> {
        Ok(self.softmax(x)?.to_vec2()?)
    }
}

/// Adam's moments for one tensor (β 0.9 / 0.999, ε 1e-8).
struct Adam {
    m: Tensor,
    v: Tensor,
    t: i32,
}

impl Adam {
    fn new(like: &Tensor) -> Result<Adam> {
        Ok(Adam { m: like.zeros_like()?, v: like.zeros_like()?, t: 0 })
    }

    fn step(&mut self, x: &Tensor, g: &Tensor, lr: f64) -> Result<Tensor> {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        self.t += 1;
        self.m = ((&self.m * B1)? + (g * (1.0 - B1))?)?;
        self.v = ((&self.v * B2)? + (g.sqr()? * (1.0 - B2))?)?;
        let m_hat = (&self.m / (1.0 - B1.powi(self.t)))?;
        let v_hat = (&self.v / (1.0 - B2.powi(self.t)))?;
        Ok((x - (m_hat / (v_hat.sqrt()? + 1e-8)?)?.affine(lr, 0.0)?)?)
    }
}

fn argmax(p: &[f32]) -> usize {
    p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// Confident learning (see the module docs): `(image, suggested class)` for
/// every off-diagonal image of the confident joint, lowest probability of
/// the given label first.
pub(crate) fn confident_learning(probs: &[Vec<f32>], labels: &[usize]) -> Vec<(usize, usize)> {
    let classes = probs.first().map_or(0, Vec::len);
    // A class nobody is labelled with gets no threshold (it can never be
    // reached), as in cleanlab.
    let thresholds: Vec<f32> = (0..classes)
        .map(|j| {
            let own: Vec<f32> = labels.iter().zip(probs).filter(|(&y, _)| y == j).map(|(_, p)| p[j]).collect();
            if own.is_empty() {
                f32::INFINITY
            } else {
                own.iter().sum::<f32>() / own.len() as f32
            }
        })
        .collect();
    let mut issues: Vec<(usize, usize)> = probs
        .iter()
        .zip(labels)
        .enumerate()
        .filter_map(|(i, (p, &y))| {
            let confident = (0..classes).filter(|&j| p[j] >= thresholds[j] - 1e-6);
            let assigned = confident.max_by(|&a, &b| p[a].total_cmp(&p[b]))?;
            (assigned != y).then_some((i, assigned))
        })
        .collect();
    issues.sort_by(|a, b| probs[a.0][labels[a.0]].total_cmp(&probs[b.0][labels[b.0]]));
    issues
}

impl LabelIssues {
    /// Lines for the terminal.
    pub fn lines(&self, shown: usize) -> Vec<String> {
        let mut out = vec![format!(
            "{} of {} training images are label issues (confident learning on {}-fold out-of-sample probabilities; the probe agrees with {:.1} % of the labels)",
            self.issues.len(),
            self.examined,
            self.folds,
            100.0 * self.probe_accuracy
        )];
        for (rank, issue) in self.issues.iter().take(shown).enumerate() {
            out.push(format!(
                "{:>4}  {}  labelled {} ({:.3}), looks like {} ({:.3})",
                rank + 1,
                crate::util::paths::shown(&issue.path).display(),
                issue.given,
                issue.self_confidence,
                issue.suggested,
                issue.suggested_confidence
            ));
        }
        out
    }

    /// Writes label_issues.csv and label_issues.png into `out` (created if missing).
    pub fn write(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        crate::fs::atomic_write(&out.join("label_issues.csv"), self.csv().as_bytes())?;
        let png = crate::present::views::png_bytes(&self.mosaic(48))?;
        crate::fs::atomic_write(&out.join("label_issues.png"), &png)
    }

    /// `label_issues.csv`: `rank,path,given,suggested,self_confidence,suggested_confidence`.
    pub fn csv(&self) -> String {
        let mut s = String::from("rank,path,given,suggested,self_confidence,suggested_confidence\n");
        for (rank, i) in self.issues.iter().enumerate() {
            s += &format!(
                "{},{},{},{},{:.6},{:.6}\n",
                rank + 1,
                crate::fs::csv_field(&i.path.display().to_string()),
                crate::fs::csv_field(&i.given),
                crate::fs::csv_field(&i.suggested),
                i.self_confidence,
                i.suggested_confidence
            );
        }
        s
    }

    /// The `n` most doubted images, each captioned with its given label and
    /// (in red) what it looks like.
    pub fn mosaic(&self, n: usize) -> image::RgbImage {
        let tiles: Vec<crate::util::draw::Captioned> = self
            .issues
            .iter()
            .take(n)
            .filter_map(|i| {
                let img = image::open(&i.path).ok()?.to_rgb8();
                Some((
                    img,
                    vec![
                        (format!("{} {:.2}", i.given, i.self_confidence), crate::util::draw::DARK_GREY),
                        (format!("→ {} {:.2}", i.suggested, i.suggested_confidence), image::Rgb([200, 40, 40])),
                    ],
                ))
            })
            .collect();
        crate::util::draw::gallery(&tiles, 8, 96)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confident_learning_flags_off_diagonal_images_lowest_self_confidence_first() {
        // Class 0's threshold: mean of p0 over images labelled 0 = (0.9 + 0.8 + 0.1) / 3 = 0.6;
        // class 1's: (0.7 + 0.9 + 0.4 + 0.5) / 4 = 0.625.
        let probs = vec![
            vec![0.9, 0.1],
            vec![0.8, 0.2],
            vec![0.1, 0.9], // labelled 0, confidently 1: an issue
            vec![0.3, 0.7],
            vec![0.1, 0.9],
            vec![0.6, 0.4], // labelled 1, p0 = 0.6 reaches class 0's threshold: an issue
            vec![0.5, 0.5], // labelled 1, below both thresholds: not counted
        ];
        let labels = [0, 0, 0, 1, 1, 1, 1];
        assert_eq!(confident_learning(&probs, &labels), [(2, 1), (5, 0)]);
    }

    #[test]
    fn folds_are_stratified_and_cover_every_image() {
        let labels: Vec<usize> = (0..50).map(|i| i % 3).collect();
        let folds = stratified_folds(&labels, 5, 1);
        for k in 0..5 {
            for class in 0..3 {
                let n = (0..50).filter(|&i| folds[i] == k && labels[i] == class).count();
                assert!((3..=4).contains(&n), "fold {k} class {class}: {n}");
            }
        }
    }

    #[test]
    fn the_probe_learns_a_separable_problem() {
        let x: Vec<f32> =
            (0..40).flat_map(|i| [if i % 2 == 0 { 1.0 } else { -1.0 }, (i as f32 * 0.37).sin()]).collect();
        let x = Tensor::from_vec(x, (40, 2), &Device::Cpu).unwrap();
        let labels: Vec<usize> = (0..40).map(|i| i % 2).collect();
        let probs = out_of_sample(&x, &labels, 2, &ProbeConfig::default(), &mut |_| {}).unwrap();
        // Every held-out image on the right side (the penalty keeps them modest).
        assert!(probs.iter().zip(&labels).all(|(p, &y)| p[y] > 0.5), "{probs:?}");
    }
}
