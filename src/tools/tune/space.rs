//! What `tlab tune` searches: the recipe's `[tune]` table (or a default
//! space), each key resolved to the table of the recipe it sets, and the
//! recipe texts a trial runs.
//!
//! ```toml
//! [tune]
//! lr = { log = [1e-4, 1e-2] }           # log-uniform
//! label_smoothing = { range = [0, 0.2] } # uniform (integers if both ends are)
//! image_size = [96, 128, 160]           # one of these
//! "step6.lr" = { log = [1e-5, 1e-3] }   # a key of the sixth [[step]]
//! budget = "15m"                        # the search's settings
//! ```
//!
//! A key names a `[data]` key or a step key; where several steps accept it,
//! `stepN.key` picks the N-th `[[step]]`. Every value a key can take is
//! checked by parsing the recipe with it (the recipe schema is the one home
//! of bounds), so `tlab check` reports an impossible value at its `[tune]`
//! line before anything trains.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{DocumentMut, ImDocument, Item, TableLike, Value};

use crate::recipe::{self, FineTuneConfig, Lr, Recipe, RecipeError, StepKind};

/// The search's own settings, which a `[tune]` table may set besides keys.
const SETTINGS: &[&str] = &["budget", "trials", "rungs", "eta", "inner_split", "against_recipe"];

/// How a searched value is drawn.
#[derive(Debug, Clone)]
pub enum Domain {
    /// Log-uniform in `[lo, hi]`, both positive.
    Log { lo: f64, hi: f64 },
    /// Uniform in `[lo, hi]`; whole numbers when both ends are integers.
    Range { lo: f64, hi: f64, int: bool },
    /// One of the listed values.
    Choice(Vec<Value>),
}

/// Where a searched key lives in the recipe.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Data(String),
    /// A key of the `index`-th step (0-based).
    Step {
        index: usize,
        key: String,
    },
}

/// One searched key.
#[derive(Debug, Clone)]
pub struct Param {
    /// The name as the `[tune]` table writes it (`lr`, `step6.lr`).
    pub name: String,
    pub target: Target,
    pub domain: Domain,
}

/// A point of the space: per param, a number in the param's internal scale
/// (the logarithm for [`Domain::Log`]) or a choice's index.
#[derive(Debug, Clone, PartialEq)]
pub enum Coord {
    Num(f64),
    Index(usize),
}

impl Param {
    /// The TOML value of `c`.
    pub fn value(&self, c: &Coord) -> Value {
        match (&self.domain, c) {
            (Domain::Log { .. }, Coord::Num(x)) => Value::from(round_sig(x.exp())),
            (Domain::Range { int: true, .. }, Coord::Num(x)) => Value::from(x.round() as i64),
            (Domain::Range { .. }, Coord::Num(x)) => Value::from(round_sig(*x)),
            (Domain::Choice(v), Coord::Index(i)) => v[*i].clone(),
            _ => Value::from("?"),
        }
    }

    /// The value of `c` as text, for tables.
    pub fn shown(&self, c: &Coord) -> String {
        shown(&self.value(c))
    }

    /// The lowest and highest values (every value of a choice): what the
    /// recipe schema must accept.
    fn extremes(&self) -> Vec<Value> {
        match &self.domain {
            Domain::Log { lo, hi } => vec![Value::from(*lo), Value::from(*hi)],
            Domain::Range { lo, hi, int: true } => vec![Value::from(*lo as i64), Value::from(*hi as i64)],
            Domain::Range { lo, hi, .. } => vec![Value::from(*lo), Value::from(*hi)],
            Domain::Choice(v) => v.clone(),
        }
    }
}

/// A value as TOML writes it, without decoration.
pub fn shown(v: &Value) -> String {
    let mut v = v.clone();
    v.decor_mut().clear();
    v.to_string()
}

/// Four significant digits: enough for a rate, short in tables and files.
fn round_sig(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let digits = 3 - x.abs().log10().floor() as i32;
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// How the search runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Stop starting trials once this much time has gone.
    pub budget: Option<Duration>,
    /// At most this many trials (configurations).
    pub trials: Option<usize>,
    /// Successive-halving rungs: a trial at rung `k` of `R` trains
    /// `eta^(k-R+1)` of the recipe's epochs; the top `1/eta` go on. By
    /// default as many as give each rung more epochs than the one below
    /// (at most 3).
    pub rungs: Option<usize>,
    pub eta: usize,
    /// The share of the training data held out to score trials.
    pub inner_split: f64,
    /// Train the recipe as written on the inner split too, and keep it
    /// unless the best trial beats it beyond chance (`false`: `best.toml`
    /// takes the best trial's values, as most tuners do).
    pub against_recipe: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { budget: None, trials: None, rungs: None, eta: 3, inner_split: 0.2, against_recipe: true }
    }
}

/// The searched keys and the search's settings.
#[derive(Debug, Clone)]
pub struct Space {
    pub params: Vec<Param>,
    pub settings: Settings,
    /// The recipe had no `[tune]` keys: the documented default space.
    pub default: bool,
}

/// Reads the `[tune]` table of the recipe `text` (at `path`), checking every
/// value against the recipe schema; the default space when it names no key.
pub fn parse(text: &str, path: &Path) -> Result<Space, RecipeError> {
    let recipe = recipe::parse(text, path)?;
    let doc = ImDocument::parse(text).map_err(|e| invalid(text, path, 0, format!("{e}")))?;
    let kinds: Vec<String> = recipe.steps.iter().map(|s| s.kind.name().to_string()).collect();
    let mut settings = Settings::default();
    let mut params = Vec::new();
    if let Some(table) = doc.get("tune").and_then(Item::as_table_like) {
        for (key, item) in table.iter() {
            let at = table.key(key).and_then(|k| k.span()).map_or(0, |s| s.start);
            let err = |m: String| invalid(text, path, at, format!("`[tune] {key}`: {m}"));
            if SETTINGS.contains(&key) {
                setting(&mut settings, key, item).map_err(err)?;
                continue;
            }
            let target = resolve(key, &kinds).map_err(err)?;
            let domain = domain(item).map_err(err)?;
            let param = Param { name: key.to_string(), target, domain };
            check_values(text, path, &param).map_err(err)?;
            params.push(param);
        }
    } else if doc.get("tune").is_some() {
        return Err(invalid(text, path, 0, "`tune` must be a table: [tune]".into()));
    }
    let default = params.is_empty();
    if default {
        params = default_space(&recipe);
    }
    if settings.trials == Some(0) {
        return Err(invalid(text, path, 0, "`[tune] trials` must be at least 1".into()));
    }
    Ok(Space { params, settings, default })
}

fn invalid(text: &str, path: &Path, at: usize, message: String) -> RecipeError {
    let (line, col) = recipe::line_col(text, at);
    RecipeError::Invalid { path: path.to_path_buf(), line, col, message }
}

fn setting(s: &mut Settings, key: &str, item: &Item) -> Result<(), String> {
    let int = |lo: i64| {
        item.as_integer().filter(|&n| n >= lo).map(|n| n as usize).ok_or(format!("expected an integer ≥ {lo}"))
    };
    match key {
        "budget" => s.budget = Some(parse_budget(item)?),
        "trials" => s.trials = Some(int(1)?),
        "rungs" => s.rungs = Some(int(1)?),
        "eta" => s.eta = int(2)?,
        "against_recipe" => s.against_recipe = item.as_bool().ok_or("expected true or false")?,
        _ => {
            s.inner_split = item
                .as_float()
                .filter(|f| *f > 0.0 && *f < 1.0)
                .ok_or("expected a fraction in (0, 1), e.g. 0.2".to_string())?
        }
    }
    Ok(())
}

/// `"20m"`, `"90s"`, `"1h"`, `"1h30m"` or a number of seconds.
fn parse_budget(item: &Item) -> Result<Duration, String> {
    match item.as_value() {
        Some(Value::Integer(n)) if *n.value() > 0 => Ok(Duration::from_secs(*n.value() as u64)),
        Some(Value::String(s)) => budget_text(s.value()),
        _ => Err("expected a duration such as \"20m\", \"90s\" or \"1h\"".into()),
    }
}

/// Parses a duration such as `20m`, `90s`, `1h30m` or `300`.
pub fn budget_text(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration such as 20m, 90s or 1h");
    let (mut secs, mut number) = (0f64, String::new());
    for c in text.trim().chars() {
        match c {
            '0'..='9' | '.' => number.push(c),
            'h' | 'm' | 's' => {
                let n: f64 = number.parse().map_err(|_| bad())?;
                secs += n * match c {
                    'h' => 3600.0,
                    'm' => 60.0,
                    _ => 1.0,
                };
                number.clear();
            }
            _ => return Err(bad()),
        }
    }
    if !number.is_empty() {
        secs += number.parse::<f64>().map_err(|_| bad())?;
    }
    if secs <= 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The table a `[tune]` key sets, given the recipe's step kinds.
fn resolve(name: &str, kinds: &[String]) -> Result<Target, String> {
    if let Some((step, key)) = name.split_once('.') {
        let n: usize = step
            .strip_prefix("step")
            .and_then(|n| n.parse().ok())
            .ok_or(format!("expected `stepN.key` (N counts the [[step]]s from 1), found `{name}`"))?;
        let kind = n.checked_sub(1).and_then(|i| kinds.get(i)).ok_or(format!("the recipe has no step {n}"))?;
        return match recipe::has_key(recipe::step_keys(kind), key) {
            true => Ok(Target::Step { index: n - 1, key: key.to_string() }),
            false => Err(format!("step {n} ({kind}) has no key `{key}`")),
        };
    }
    if recipe::has_key(recipe::DATA_KEYS, name) {
        return Ok(Target::Data(name.to_string()));
    }
    let steps: Vec<usize> = (0..kinds.len()).filter(|&i| recipe::has_key(recipe::step_keys(&kinds[i]), name)).collect();
    match steps.as_slice() {
        [i] => Ok(Target::Step { index: *i, key: name.to_string() }),
        [] => Err(format!("`{name}` is not a key of [data] or of any step in this recipe")),
        many => {
            let named: Vec<String> = many.iter().map(|i| format!("`step{}.{name}`", i + 1)).collect();
            Err(format!("several steps accept `{name}`: name one, e.g. {}", named.join(" or ")))
        }
    }
}

fn domain(item: &Item) -> Result<Domain, String> {
    let expected = "expected a list of values, { log = [lo, hi] } or { range = [lo, hi] }";
    if let Some(list) = item.as_array() {
        if list.is_empty() {
            return Err("the list of values is empty".into());
        }
        return Ok(Domain::Choice(list.iter().cloned().collect()));
    }
    let table = item.as_table_like().ok_or(expected)?;
    let (kind, ends) = match (table.get("log"), table.get("range")) {
        (Some(e), None) if table.len() == 1 => ("log", e),
        (None, Some(e)) if table.len() == 1 => ("range", e),
        _ => return Err(expected.into()),
    };
    let ends: Vec<&Value> = ends.as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let num = |v: &Value| v.as_float().or(v.as_integer().map(|i| i as f64));
    let (Some(lo), Some(hi)) = (ends.first().and_then(|v| num(v)), ends.get(1).and_then(|v| num(v))) else {
        return Err(format!("`{kind}` must be [lo, hi], two numbers"));
    };
    if ends.len() != 2 || lo >= hi {
        return Err(format!("`{kind}` must be [lo, hi] with lo < hi, found [{lo}, {hi}]: an empty range"));
    }
    match kind {
        "log" if lo <= 0.0 => Err(format!("`log` needs positive ends, found {lo}")),
        "log" => Ok(Domain::Log { lo, hi }),
        _ => Ok(Domain::Range { lo, hi, int: ends.iter().all(|v| v.as_integer().is_some()) }),
    }
}

/// Parses the recipe with each extreme value of `param`: the schema's
/// bounds and cross-key rules are the tune's.
fn check_values(text: &str, path: &Path, param: &Param) -> Result<(), String> {
    for v in param.extremes() {
        let mut doc: DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
        set(&mut doc, &param.target, v.clone())?;
        if let Err(e) = recipe::parse(&doc.to_string(), path) {
            let message = match e {
                RecipeError::Invalid { message, .. } => message,
                other => other.to_string(),
            };
            return Err(format!("the recipe does not accept {}: {message}", shown(&v)));
        }
    }
    Ok(())
}

/// The rungs that give each rung more epochs than the one below (at most
/// 3): 1 + ⌊log_eta(E)⌋ for the longest fine_tune phase's E epochs.
pub(crate) fn default_rungs(recipe: &Recipe, eta: usize) -> usize {
    let longest = recipe
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::FineTune(c) => Some(c.epochs.max(c.freeze_epochs)),
            _ => None,
        })
        .max()
        .unwrap_or(1);
    let mut rungs = 1;
    while rungs < 3 && eta.pow(rungs as u32) <= longest {
        rungs += 1;
    }
    rungs
}

/// The space searched when the recipe has no `[tune]` keys: every numeric
/// fine_tune rate from a quarter to four times its value, the head's dropout
/// and the last fine_tune step's label smoothing.
fn default_space(recipe: &Recipe) -> Vec<Param> {
    let mut out = Vec::new();
    let tunes: Vec<usize> =
        (0..recipe.steps.len()).filter(|&i| matches!(recipe.steps[i].kind, StepKind::FineTune(_))).collect();
    for (index, step) in recipe.steps.iter().enumerate() {
        match &step.kind {
            StepKind::FineTune(FineTuneConfig { lr: Lr::Fixed(lr), .. }) => out.push(Param {
                name: format!("step{}.lr", index + 1),
                target: Target::Step { index, key: "lr".into() },
                domain: Domain::Log { lo: lr / 4.0, hi: lr * 4.0 },
            }),
            StepKind::Backbone(_) => out.push(Param {
                name: format!("step{}.dropout", index + 1),
                target: Target::Step { index, key: "dropout".into() },
                domain: Domain::Choice(vec![Value::from(0.0), Value::from(0.2), Value::from(0.5)]),
            }),
            _ => {}
        }
    }
    if let Some(&last) = tunes.last() {
        out.push(Param {
            name: format!("step{}.label_smoothing", last + 1),
            target: Target::Step { index: last, key: "label_smoothing".into() },
            domain: Domain::Choice(vec![Value::from(0.0), Value::from(0.1)]),
        });
    }
    out
}

/// The table of `doc` that `target` names.
fn table_mut<'a>(doc: &'a mut DocumentMut, target: &Target) -> Option<&'a mut dyn TableLike> {
    match target {
        Target::Data(_) => doc.get_mut("data")?.as_table_like_mut(),
        Target::Step { index, .. } => step_mut(doc, *index),
    }
}

/// The `index`-th step table, written as `[[step]]` or as an inline array.
pub(crate) fn step_mut(doc: &mut DocumentMut, index: usize) -> Option<&mut dyn TableLike> {
    match doc.get_mut("step")? {
        Item::ArrayOfTables(a) => a.get_mut(index).map(|t| t as &mut dyn TableLike),
        Item::Value(Value::Array(a)) => a.get_mut(index)?.as_inline_table_mut().map(|t| t as &mut dyn TableLike),
        _ => None,
    }
}

/// Sets `target` to `value` in `doc`, keeping the old value's comment.
pub(crate) fn set(doc: &mut DocumentMut, target: &Target, mut value: Value) -> Result<(), String> {
    let key = match target {
        Target::Data(k) | Target::Step { key: k, .. } => k.as_str(),
    };
    let table = table_mut(doc, target).ok_or("the recipe's table for this key is missing")?;
    if let Some(old) = table.get(key).and_then(Item::as_value) {
        *value.decor_mut() = old.decor().clone();
    }
    table.insert(key, Item::Value(value));
    Ok(())
}

/// The recipe's file anchored paths (data folders, the CSV, local weights)
/// rewritten for a recipe written into `to`, so it reads the same files.
pub(crate) fn rebase_paths(doc: &mut DocumentMut, from: &Path, to: &Path) {
    let rebase = |v: &mut Value, is_weights: bool| {
        let Some(s) = v.as_str() else { return };
        if is_weights && (s.starts_with("hf:") || s.contains("://")) {
            return;
        }
        let target: PathBuf = from.join(s);
        let moved = crate::util::paths::relative_to(&target, to).display().to_string();
        let decor = v.decor().clone();
        *v = Value::from(moved);
        *v.decor_mut() = decor;
    };
    if let Some(data) = doc.get_mut("data").and_then(Item::as_table_like_mut) {
        for key in ["train", "valid", "test", "csv"] {
            if let Some(v) = data.get_mut(key).and_then(Item::as_value_mut) {
                rebase(v, false);
            }
        }
    }
    for i in 0.. {
        let Some(step) = step_mut(doc, i) else { break };
        if let Some(v) = step.get_mut("weights").and_then(Item::as_value_mut) {
            rebase(v, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = "name = \"t\"\n[data]\ntrain = \"d\"\nvalid = \"v\"\n[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\n[[step]]\nkind = \"fine_tune\"\nlr = 0.001\n[[step]]\nkind = \"freeze\"\n[[step]]\nkind = \"fine_tune\"\nlr = 0.0003\n";

    fn space(tune: &str) -> Result<Space, String> {
        parse(&format!("{RECIPE}[tune]\n{tune}\n"), Path::new("r.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn keys_resolve_to_their_table() {
        let s = space("image_size = [64, 96]\n\"step4.lr\" = { log = [1e-4, 1e-2] }\ndropout = { range = [0, 0.5] }")
            .unwrap();
        assert_eq!(s.params[0].target, Target::Data("image_size".into()));
        assert_eq!(s.params[1].target, Target::Step { index: 3, key: "lr".into() });
        assert_eq!(s.params[2].target, Target::Step { index: 0, key: "dropout".into() });
        assert!(matches!(s.params[2].domain, Domain::Range { lo: 0.0, hi: 0.5, int: false }));
        assert!(!s.default);
    }

    #[test]
    fn bad_tune_keys_point_at_their_line() {
        let line = RECIPE.lines().count() + 2;
        for (tune, expected) in [
            ("lr = { log = [1e-4, 1e-2] }", "several steps accept `lr`: name one, e.g. `step2.lr` or `step4.lr`"),
            ("colour = [1, 2]", "`colour` is not a key of [data] or of any step"),
            ("image_size = []", "the list of values is empty"),
            ("\"step2.lr\" = { log = [1e-2, 1e-4] }", "an empty range"),
            ("image_size = [96, 4096]", "the recipe does not accept 4096"),
            ("\"step9.lr\" = [0.1]", "the recipe has no step 9"),
            ("budget = \"soon\"", "not a duration"),
            ("dropout = 0.2", "expected a list of values"),
            ("against_recipe = 1", "expected true or false"),
        ] {
            let e = space(tune).unwrap_err();
            assert!(e.contains(expected) && e.starts_with(&format!("r.toml:{line}:1: `[tune] ")), "{tune}: {e}");
        }
    }

    #[test]
    fn no_keys_means_the_default_space() {
        let s = space("budget = \"2m\"\ntrials = 4").unwrap();
        assert!(s.default);
        let names: Vec<&str> = s.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["step1.dropout", "step2.lr", "step4.lr", "step4.label_smoothing"]);
        assert_eq!(s.settings.budget, Some(Duration::from_secs(120)));
        assert_eq!(s.settings.trials, Some(4));
        assert!(s.settings.against_recipe, "checked against the recipe as written unless told");
        assert!(!space("against_recipe = false").unwrap().settings.against_recipe);
    }

    #[test]
    fn default_rungs_follow_the_epochs() {
        let r = recipe::parse(RECIPE, Path::new("r.toml")).unwrap();
        // Five epochs (the default) in the longest phase: 1/3 is one epoch, 1/9 none.
        assert_eq!(default_rungs(&r, 3), 2);
        let long = RECIPE.replace("lr = 0.0003\n", "lr = 0.0003\nepochs = 9\n");
        assert_eq!(default_rungs(&recipe::parse(&long, Path::new("r.toml")).unwrap(), 3), 3);
        assert_eq!(default_rungs(&recipe::parse(&long, Path::new("r.toml")).unwrap(), 10), 1);
    }

    #[test]
    fn values_are_written_in_place() {
        let p = Param {
            name: "lr".into(),
            target: Target::Step { index: 1, key: "lr".into() },
            domain: Domain::Log { lo: 1e-4, hi: 1e-2 },
        };
        assert_eq!(p.shown(&Coord::Num(0.00123456f64.ln())), "0.001235");
        let mut doc: DocumentMut = "[[step]]\nkind = \"a\"\n[[step]]\nlr = 0.1 # why\n".parse().unwrap();
        set(&mut doc, &p.target, p.value(&Coord::Num(0.002f64.ln()))).unwrap();
        assert_eq!(doc.to_string(), "[[step]]\nkind = \"a\"\n[[step]]\nlr = 0.002 # why\n");
        assert_eq!(budget_text("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(budget_text("90").unwrap(), Duration::from_secs(90));
    }
}
