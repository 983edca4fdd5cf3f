//! Where the next trial is drawn: at random until enough trials have
//! scores, then from a tree-structured Parzen estimator (Bergstra et al.,
//! "Algorithms for Hyper-Parameter Optimization", NeurIPS 2011), the
//! sampler Optuna and Hyperopt default to.
//!
//! TPE splits the scored trials into the best quarter and the rest, models
//! each key's values in both groups with a kernel density (a Gaussian per
//! point on the key's internal scale, categorical counts for choices), draws
//! candidates from the good model and keeps the one whose good-to-bad
//! density ratio is highest. Keys are modelled independently, as in the paper.

use super::space::{Coord, Domain, Param};
use crate::augment::Rng;

/// Candidates drawn from the good model per new trial (Optuna's default).
const CANDIDATES: usize = 24;
/// The share of scored trials that counts as good.
const GAMMA: f64 = 0.25;

/// A seeded sampler: the same seed and scores give the same trials, which
/// is how a resumed tune finds the trials it had already run.
pub struct Sampler {
    rng: Rng,
    /// Random trials before TPE takes over.
    pub startup: usize,
}

impl Sampler {
    pub fn new(seed: u64, params: usize) -> Sampler {
        Sampler { rng: Rng::derive(seed, 0x7D_7E), startup: (params + 1).max(4) }
    }

    /// The next point: random, or by TPE once `scored` (points with their
    /// scores, higher is better) has `startup` entries.
    pub fn next(&mut self, params: &[Param], scored: &[(Vec<Coord>, f64)]) -> Vec<Coord> {
        if scored.len() < self.startup {
            return params.iter().map(|p| self.random(p)).collect();
        }
        let mut sorted: Vec<&(Vec<Coord>, f64)> = scored.iter().collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        let n_good = ((sorted.len() as f64 * GAMMA).ceil() as usize).max(1);
        let (good, bad) = sorted.split_at(n_good);
        let column =
            |group: &[&(Vec<Coord>, f64)], d: usize| -> Vec<Coord> { group.iter().map(|p| p.0[d].clone()).collect() };
        let mut best: Option<(f64, Vec<Coord>)> = None;
        for _ in 0..CANDIDATES {
            let mut point = Vec::with_capacity(params.len());
            let mut ratio = 0.0;
            for (d, p) in params.iter().enumerate() {
                let (g, b) = (column(good, d), column(bad, d));
                let c = self.draw_near(p, &g);
                ratio += density(p, &g, &c).ln() - density(p, &b, &c).ln();
                point.push(c);
            }
            if best.as_ref().is_none_or(|(r, _)| ratio > *r) {
                best = Some((ratio, point));
            }
        }
        best.map(|(_, p)| p).unwrap_or_default()
    }

    fn random(&mut self, p: &Param) -> Coord {
        match &p.domain {
            Domain::Log { lo, hi } => Coord::Num(self.rng.uniform(lo.ln(), hi.ln())),
            Domain::Range { lo, hi, .. } => Coord::Num(self.rng.uniform(*lo, *hi)),
            Domain::Choice(v) => Coord::Index(self.rng.below(v.len())),
        }
    }

    /// A draw from the good model of `p`: near one of `good` (or from the
    /// prior, with the prior's share of the mixture).
    fn draw_near(&mut self, p: &Param, good: &[Coord]) -> Coord {
        let pick = self.rng.below(good.len() + 1);
        let Some(centre) = good.get(pick) else { return self.random(p) };
        match (&p.domain, centre) {
            (Domain::Choice(v), Coord::Index(i)) => {
                // Keep the good value mostly; sometimes try another.
                if self.rng.bool(0.8) {
                    Coord::Index(*i)
                } else {
                    Coord::Index(self.rng.below(v.len()))
                }
            }
            (_, Coord::Num(x)) => {
                let (lo, hi) = bounds(p);
                let sigma = bandwidth(lo, hi, good.len());
                // Box–Muller, clipped to the range.
                let (u1, u2) = (self.rng.f64().max(1e-12), self.rng.f64());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                Coord::Num((x + sigma * z).clamp(lo, hi))
            }
            _ => self.random(p),
        }
    }
}

/// A numeric key's range on its internal scale.
fn bounds(p: &Param) -> (f64, f64) {
    match p.domain {
        Domain::Log { lo, hi } => (lo.ln(), hi.ln()),
        Domain::Range { lo, hi, .. } => (lo, hi),
        Domain::Choice(_) => (0.0, 1.0),
    }
}

/// A bandwidth that shrinks as points gather (a quarter of the range over
/// the square root of their count), never under a twentieth of the range.
fn bandwidth(lo: f64, hi: f64, n: usize) -> f64 {
    (hi - lo) * (0.25 / (n.max(1) as f64).sqrt()).max(0.05)
}

/// The density at `c` of the model made from `points` plus the uniform prior.
fn density(p: &Param, points: &[Coord], c: &Coord) -> f64 {
    let n = points.len() as f64;
    match (&p.domain, c) {
        (Domain::Choice(v), Coord::Index(i)) => {
            let count = points.iter().filter(|q| **q == Coord::Index(*i)).count() as f64;
            (count + 1.0) / (n + v.len() as f64)
        }
        (_, Coord::Num(x)) => {
            let (lo, hi) = bounds(p);
            let sigma = bandwidth(lo, hi, points.len());
            let prior = 1.0 / (hi - lo).max(1e-12);
            let kernels: f64 = points
                .iter()
                .map(|q| match q {
                    Coord::Num(m) => {
                        (-0.5 * ((x - m) / sigma).powi(2)).exp() / (sigma * (std::f64::consts::TAU).sqrt())
                    }
                    Coord::Index(_) => 0.0,
                })
                .sum();
            (kernels + prior) / (n + 1.0)
        }
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::space::Target;
    use super::*;

    fn lr() -> Param {
        Param {
            name: "lr".into(),
            target: Target::Step { index: 0, key: "lr".into() },
            domain: Domain::Log { lo: 1e-4, hi: 1e-1 },
        }
    }

    #[test]
    fn same_seed_same_points_and_within_bounds() {
        let params = [lr()];
        let (mut a, mut b) = (Sampler::new(7, 1), Sampler::new(7, 1));
        for _ in 0..20 {
            let (pa, pb) = (a.next(&params, &[]), b.next(&params, &[]));
            assert_eq!(pa, pb);
            let Coord::Num(x) = pa[0] else { panic!() };
            assert!((1e-4f64.ln()..=1e-1f64.ln()).contains(&x));
        }
    }

    /// On a score that peaks at lr = 1e-2, TPE's draws gather near the peak
    /// more than random draws do.
    #[test]
    fn tpe_moves_towards_good_scores() {
        let params = [lr()];
        let score = |c: &[Coord]| match c[0] {
            Coord::Num(x) => -(x - 0.01f64.ln()).abs(),
            Coord::Index(_) => 0.0,
        };
        for seed in 1..=6 {
            let mut s = Sampler::new(seed, 1);
            let mut scored = Vec::new();
            for _ in 0..40 {
                let p = s.next(&params, &scored);
                let v = score(&p);
                scored.push((p, v));
            }
            let mean = |r: &[(Vec<Coord>, f64)]| r.iter().map(|p| -p.1).sum::<f64>() / r.len() as f64;
            let (random, tpe) = scored.split_at(s.startup);
            assert!(mean(tpe) < 0.6 * mean(random), "seed {seed}: random {:.3}, tpe {:.3}", mean(random), mean(tpe));
        }
    }
}
