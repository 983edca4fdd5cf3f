//! A thin, span-aware layer over `toml_edit` for reading typed values.
//!
//! `toml_edit` keeps byte spans for keys, values and table headers when a
//! document is parsed with [`toml_edit::ImDocument`]. Everything here exists so
//! that the schema code in `build.rs` can say "this must be a number in (0, 1)"
//! in one line and get a `FILE:LINE:COL` error pointing at the exact value,
//! with a message that states both what was expected and what was found.

use std::fmt::Display;
use std::ops::Range;
use std::path::Path;

use toml_edit::{ArrayOfTables, Item, Table, TableLike, Value};

use super::error::{line_col, RecipeError};
#[cfg(test)]
use crate::util::suggest::levenshtein;
pub(super) use crate::util::suggest::suggest;

/// A byte range in the recipe text; `None` when `toml_edit` has no span (for
/// example the implicit table behind a dotted key).
pub(super) type Span = Option<Range<usize>>;

/// Shorthand used throughout the module.
pub(super) type Result<T> = std::result::Result<T, RecipeError>;

/// The recipe text and its path: all that is needed to turn a span into a
/// positioned error.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub text: &'a str,
    pub path: &'a Path,
}

impl<'a> Source<'a> {
    /// Builds an `Invalid` error at the start of `span` (1:1 when unknown).
    pub(crate) fn error_at(&self, span: &Span, message: impl Into<String>) -> RecipeError {
        let (line, col) = line_col(self.text, span.as_ref().map_or(0, |s| s.start));
        RecipeError::Invalid { path: self.path.to_path_buf(), line, col, message: message.into() }
    }

    /// The 1-based line on which `span` starts (1 when unknown).
    pub(crate) fn line_of(&self, span: &Span) -> usize {
        line_col(self.text, span.as_ref().map_or(0, |s| s.start)).0
    }

    /// The source text of `span`, trimmed, if the span is valid for this text.
    fn raw(&self, span: &Span) -> Option<&'a str> {
        span.clone().and_then(|s| self.text.get(s)).map(str::trim)
    }
}

/// One end of a numeric range.
#[derive(Clone, Copy, Debug)]
pub(super) enum Bound<T> {
    Unbounded,
    Inclusive(T),
    Exclusive(T),
}

/// An allowed numeric range plus how to phrase a violation.
///
/// Intrinsic ranges such as a probability read best as a whole interval
/// ("must be in (0, 1)"); sanity caps bolted onto a one-sided rule read best
/// side by side ("must be >= 1" for 0, "must be <= 100000" for a million), so
/// the constructor used decides the phrasing.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds<T> {
    lo: Bound<T>,
    hi: Bound<T>,
    as_interval: bool,
}

impl<T: PartialOrd + Display + Copy> Bounds<T> {
    // The constructors are `const` so that the schema's tables (schema.rs)
    // can hold every key's bounds as constants.

    /// No restriction at all.
    pub const fn any() -> Self {
        Self { lo: Bound::Unbounded, hi: Bound::Unbounded, as_interval: false }
    }
    /// `v >= lo`.
    pub(crate) const fn at_least(lo: T) -> Self {
        Self { lo: Bound::Inclusive(lo), hi: Bound::Unbounded, as_interval: false }
    }
    /// `v > lo`.
    pub const fn above(lo: T) -> Self {
        Self { lo: Bound::Exclusive(lo), hi: Bound::Unbounded, as_interval: false }
    }
    /// Adds `v <= hi`, reported separately from the lower bound.
    pub(crate) const fn at_most(self, hi: T) -> Self {
        Self { lo: self.lo, hi: Bound::Inclusive(hi), as_interval: self.as_interval }
    }
    /// `lo <= v <= hi`, reported as `within lo..=hi`.
    pub const fn within(lo: T, hi: T) -> Self {
        Self { lo: Bound::Inclusive(lo), hi: Bound::Inclusive(hi), as_interval: true }
    }
    /// `lo < v < hi`, reported as `in (lo, hi)`.
    pub const fn open(lo: T, hi: T) -> Self {
        Self { lo: Bound::Exclusive(lo), hi: Bound::Exclusive(hi), as_interval: true }
    }
    /// `lo <= v < hi`, reported as `in [lo, hi)`.
    pub(crate) const fn closed_open(lo: T, hi: T) -> Self {
        Self { lo: Bound::Inclusive(lo), hi: Bound::Exclusive(hi), as_interval: true }
    }
    /// `lo < v <= hi`, reported as `in (lo, hi]`.
    pub(crate) const fn open_closed(lo: T, hi: T) -> Self {
        Self { lo: Bound::Exclusive(lo), hi: Bound::Inclusive(hi), as_interval: true }
    }

    /// `None` when `v` is allowed, else the requirement it breaks, phrased to
    /// follow "must be". Comparisons are written so that NaN always fails.
    pub(crate) fn violation(&self, v: T) -> Option<String> {
        let lo_ok = match self.lo {
            Bound::Unbounded => true,
            Bound::Inclusive(l) => v >= l,
            Bound::Exclusive(l) => v > l,
        };
        let hi_ok = match self.hi {
            Bound::Unbounded => true,
            Bound::Inclusive(h) => v <= h,
            Bound::Exclusive(h) => v < h,
        };
        if lo_ok && hi_ok {
            return None;
        }
        Some(match (self.as_interval, self.lo, self.hi) {
            (true, Bound::Inclusive(l), Bound::Inclusive(h)) => format!("within {l}..={h}"),
            (true, lo, hi) => {
                let (open, l) = match lo {
                    Bound::Inclusive(l) => ('[', l.to_string()),
                    Bound::Exclusive(l) => ('(', l.to_string()),
                    Bound::Unbounded => ('(', "-inf".to_string()),
                };
                let (close, h) = match hi {
                    Bound::Inclusive(h) => (']', h.to_string()),
                    Bound::Exclusive(h) => (')', h.to_string()),
                    Bound::Unbounded => (')', "inf".to_string()),
                };
                format!("in {open}{l}, {h}{close}")
            }
            (false, lo, hi) => {
                let side = if lo_ok { hi } else { lo };
                match (side, lo_ok) {
                    (Bound::Inclusive(x), false) => format!(">= {x}"),
                    (Bound::Exclusive(x), false) => format!("> {x}"),
                    (Bound::Inclusive(x), true) => format!("<= {x}"),
                    (Bound::Exclusive(x), true) => format!("< {x}"),
                    (Bound::Unbounded, _) => "a valid value".to_string(),
                }
            }
        })
    }
}

/// What a key holds, keeping the distinction between real tables and inline
/// ones only as far as the type-name in messages needs it.
#[derive(Clone, Copy)]
enum Node<'a> {
    Value(&'a Value),
    Table(&'a Table),
    Tables(&'a ArrayOfTables),
}

/// A present key (or array element) with its value and positions.
#[derive(Clone)]
pub(super) struct Field<'a> {
    src: Source<'a>,
    /// The name used in messages, e.g. `lr` or `color_jitter.hue`.
    name: String,
    /// Position of the key itself (falls back to the value's).
    key_span: Span,
    /// Position of the value (falls back to the key's).
    span: Span,
    node: Node<'a>,
}

impl<'a> Field<'a> {
    fn new(src: Source<'a>, name: String, key_span: Span, item: &'a Item) -> Option<Self> {
        let node = match item {
            Item::None => return None,
            Item::Value(v) => Node::Value(v),
            Item::Table(t) => Node::Table(t),
            Item::ArrayOfTables(a) => Node::Tables(a),
        };
        let span = item.span().or_else(|| key_span.clone());
        let key_span = key_span.or_else(|| span.clone());
        Some(Self { src, name, key_span, span, node })
    }

    /// The name shown in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the value is.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// An error positioned at the value.
    pub fn error(&self, message: impl Into<String>) -> RecipeError {
        self.src.error_at(&self.span, message)
    }

    /// An error positioned at the key.
    pub(crate) fn key_error(&self, message: impl Into<String>) -> RecipeError {
        self.src.error_at(&self.key_span, message)
    }

    /// A short description of the value for "found …" clauses, e.g.
    /// `string "fast"` or `float 1.5`. Long or multi-line text is elided so a
    /// message always fits on one line.
    pub fn found(&self) -> String {
        let kind = match self.node {
            Node::Value(Value::String(_)) => "string",
            Node::Value(Value::Integer(_)) => "integer",
            Node::Value(Value::Float(_)) => "float",
            Node::Value(Value::Boolean(_)) => "boolean",
            Node::Value(Value::Datetime(_)) => "datetime",
            Node::Value(Value::Array(_)) => "array",
            Node::Value(Value::InlineTable(_)) | Node::Table(_) => return "table".into(),
            Node::Tables(_) => return "array of tables".into(),
        };
        match self.raw() {
            Some(raw) => format!("{kind} {raw}"),
            None => kind.to_string(),
        }
    }

    /// The value as written in the file, if short and on one line.
    fn raw(&self) -> Option<String> {
        const MAX_CHARS: usize = 40;
        let raw = self.src.raw(&self.span)?;
        if raw.is_empty() || raw.contains('\n') {
            return None;
        }
        if raw.chars().count() > MAX_CHARS {
            let cut: String = raw.chars().take(MAX_CHARS).collect();
            return Some(format!("{cut}…"));
        }
        Some(raw.to_string())
    }

    /// The value as written (for numbers: `1e-3` stays `1e-3`), else `fallback`.
    fn shown(&self, fallback: impl Display) -> String {
        self.raw().unwrap_or_else(|| fallback.to_string())
    }

    /// "`name` must be EXPECTED, found FOUND", at the value.
    pub(crate) fn type_error(&self, expected: &str) -> RecipeError {
        self.error(format!("`{}` must be {expected}, found {}", self.name, self.found()))
    }

    fn value(&self) -> Option<&'a Value> {
        match self.node {
            Node::Value(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn str(&self) -> Result<&'a str> {
        self.value().and_then(Value::as_str).ok_or_else(|| self.type_error("a string"))
    }

    /// The value as a string that is not empty.
    pub(crate) fn non_empty_str(&self) -> Result<&'a str> {
        let s = self.str()?;
        if s.is_empty() {
            return Err(self.error(format!("`{}` must not be empty", self.name)));
        }
        Ok(s)
    }

    /// The value as a boolean.
    pub fn bool(&self) -> Result<bool> {
        self.value().and_then(Value::as_bool).ok_or_else(|| self.type_error("a boolean (true or false)"))
    }

    /// The value as an integer, if it is one (no error otherwise).
    pub(crate) fn as_integer(&self) -> Option<i64> {
        self.value().and_then(Value::as_integer)
    }

    /// The value as a number. Integers are accepted where floats are expected
    /// (`rotation_range = 10`); infinities and NaN are rejected because no
    /// setting in a recipe has a meaningful infinite value.
    pub fn number(&self, bounds: Bounds<f64>) -> Result<f64> {
        let v = match self.value() {
            Some(Value::Float(f)) => *f.value(),
            // Precision loss above 2^53 is irrelevant for hyper-parameters.
            Some(Value::Integer(i)) => *i.value() as f64,
            _ => return Err(self.type_error("a number")),
        };
        if !v.is_finite() {
            return Err(self.error(format!("`{}` must be a finite number, found {}", self.name, self.shown(v))));
        }
        self.check(v, bounds)
    }

    /// The value as an integer within `bounds`. Floats are type errors: a
    /// fractional epoch count is always a mistake worth pointing out.
    pub fn integer(&self, bounds: Bounds<i64>) -> Result<i64> {
        let v = self.as_integer().ok_or_else(|| self.type_error("an integer"))?;
        self.check(v, bounds)
    }

    /// An integer that must also fit in `T` (callers give bounds >= 0).
    pub(crate) fn int_as<T: TryFrom<i64>>(&self, bounds: Bounds<i64>) -> Result<T> {
        let v = self.integer(bounds)?;
        T::try_from(v).map_err(|_| self.error(format!("`{}` is too large, found {}", self.name, self.shown(v))))
    }

    /// Checks `v` (this field's value) against `bounds`.
    pub fn check<T: PartialOrd + Display + Copy>(&self, v: T, bounds: Bounds<T>) -> Result<T> {
        match bounds.violation(v) {
            None => Ok(v),
            Some(rule) => Err(self.error(format!("`{}` must be {rule}, found {}", self.name, self.shown(v)))),
        }
    }

    /// One of a fixed set of strings, mapped to its value. On a mismatch the
    /// message lists the options and suggests the closest one.
    pub fn choice<T: Copy>(&self, options: &[(&str, T)]) -> Result<T> {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let list = names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
        let s = self.value().and_then(Value::as_str).ok_or_else(|| self.type_error(&format!("one of {list}")))?;
        if let Some((_, v)) = options.iter().find(|(n, _)| *n == s) {
            return Ok(*v);
        }
        let hint = suggest(s, &names).map(|n| format!("; did you mean \"{n}\"?")).unwrap_or_default();
        Err(self.error(format!("`{}` must be one of {list}, found {}{hint}", self.name, self.found())))
    }

    /// The value as an array, with one `Field` per element (named `name[i]`)
    /// so element errors point at the element.
    pub(crate) fn elements(&self, expected: &str) -> Result<Vec<Field<'a>>> {
        let array = self.value().and_then(Value::as_array).ok_or_else(|| self.type_error(expected))?;
        Ok(array
            .iter()
            .enumerate()
            .map(|(i, v)| Field {
                src: self.src,
                name: format!("{}[{i}]", self.name),
                key_span: self.key_span.clone(),
                span: v.span().or_else(|| self.span.clone()),
                node: Node::Value(v),
            })
            .collect())
    }

    /// A `[lo, hi]` pair of numbers, each within `each`, with `lo <= hi`.
    pub fn pair(&self, each: Bounds<f64>) -> Result<(f64, f64)> {
        let items = self.elements("a 2-element array [lo, hi]")?;
        let [lo, hi] = items.as_slice() else {
            return Err(self.error(format!(
                "`{}` must be a 2-element array [lo, hi], found {} element(s)",
                self.name,
                items.len()
            )));
        };
        let (lo, hi) = (lo.number(each)?, hi.number(each)?);
        if lo > hi {
            return Err(self.error(format!("`{}` must satisfy lo <= hi, found {}", self.name, self.shown("[lo, hi]"))));
        }
        Ok((lo, hi))
    }

    /// Whether the value is an array (of any content).
    pub(crate) fn is_array(&self) -> bool {
        matches!(self.node, Node::Value(Value::Array(_)))
    }

    /// The value as a table (regular or inline), if it is one.
    pub(crate) fn as_table(&self) -> Option<&'a dyn TableLike> {
        match self.node {
            Node::Value(Value::InlineTable(t)) => Some(t),
            Node::Table(t) => Some(t),
            _ => None,
        }
    }

    /// Whether the value is a number (integer or float).
    pub fn is_number(&self) -> bool {
        matches!(self.node, Node::Value(Value::Integer(_) | Value::Float(_)))
    }

    /// The table this field holds, as a `Section` whose messages name keys
    /// `name.key` (e.g. `color_jitter.hue`) and whose missing-key errors point
    /// at this field. `context` is usually the enclosing section's.
    pub fn section(&self, context: impl Into<String>) -> Result<Section<'a>> {
        let table = self.as_table().ok_or_else(|| self.type_error("a table"))?;
        Ok(Section {
            src: self.src,
            table,
            span: self.span.clone(),
            context: context.into(),
            prefix: format!("{}.", self.name),
        })
    }

    /// The tables of an array of tables: `[[name]]` blocks, or an inline
    /// array of inline tables. Each comes with the span of its header.
    pub fn tables(&self, expected: &str) -> Result<Vec<(&'a dyn TableLike, Span)>> {
        match self.node {
            Node::Tables(aot) => Ok(aot.iter().map(|t| (t as &dyn TableLike, t.span())).collect()),
            Node::Value(Value::Array(_)) => self
                .elements(expected)?
                .into_iter()
                .map(|el| match el.node {
                    Node::Value(Value::InlineTable(t)) => Ok((t as &dyn TableLike, el.span.clone())),
                    _ => Err(el.type_error("a table")),
                })
                .collect(),
            _ => Err(self.type_error(expected)),
        }
    }
}

/// A table being read, with the phrase used to say where a key is ("in
/// `[data]`", "in augment step") and the position for missing-key errors.
pub(super) struct Section<'a> {
    src: Source<'a>,
    table: &'a dyn TableLike,
    span: Span,
    context: String,
    prefix: String,
}

impl<'a> Section<'a> {
    /// A section for `table`; `span` is where missing-key errors point and
    /// `context` completes "unknown key `x` …" (e.g. "in `[data]`").
    pub fn new(src: Source<'a>, table: &'a dyn TableLike, span: Span, context: impl Into<String>) -> Self {
        Self { src, table, span, context: context.into(), prefix: String::new() }
    }

    /// The phrase locating this table in messages, e.g. "in augment step".
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The same table described differently, once more is known about it
    /// (a step becomes "in augment step" after its `kind` is read).
    pub fn with_context(self, context: impl Into<String>) -> Self {
        Self { context: context.into(), ..self }
    }

    /// The key, if present.
    pub(crate) fn field(&self, key: &str) -> Option<Field<'a>> {
        let item = self.table.get(key)?;
        let key_span = self.table.key(key).and_then(|k| k.span());
        Field::new(self.src, format!("{}{key}", self.prefix), key_span, item)
    }

    /// The key, or a "missing key" error at the table's position.
    pub(crate) fn require(&self, key: &str) -> Result<Field<'a>> {
        self.field(key).ok_or_else(|| {
            self.src.error_at(&self.span, format!("missing key `{}{key}` {}", self.prefix, self.context))
        })
    }

    /// Rejects any key not in `allowed`, at the key's position, suggesting the
    /// closest valid key or listing them all (the first such key).
    pub(crate) fn check_keys(&self, allowed: &[&str]) -> Result<()> {
        self.unknown_keys(allowed).into_iter().next().map_or(Ok(()), Err)
    }

    /// Every key not in `allowed`, each as an error at the key's position.
    pub(crate) fn unknown_keys(&self, allowed: &[&str]) -> Vec<RecipeError> {
        let mut errors = Vec::new();
        for (key, item) in self.table.iter() {
            if allowed.contains(&key) {
                continue;
            }
            let key_span = self.table.key(key).and_then(|k| k.span()).or_else(|| item.span());
            let help = match suggest(key, allowed) {
                Some(s) => format!("did you mean `{}{s}`?", self.prefix),
                None => format!("expected one of: {}", allowed.join(", ")),
            };
            errors.push(
                self.src.error_at(&key_span, format!("unknown key `{}{key}` {}; {help}", self.prefix, self.context)),
            );
        }
        errors
    }

    /// An optional boolean.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.field(key).map(|f| f.bool()).transpose()
    }

    /// An optional `[lo, hi]` pair.
    pub fn pair(&self, key: &str, each: Bounds<f64>) -> Result<Option<(f64, f64)>> {
        self.field(key).map(|f| f.pair(each)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml_edit::ImDocument;

    #[test]
    fn levenshtein_basics() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("rotaton_range", "rotation_range"), 1);
        assert_eq!(levenshtein("héllo", "hello"), 1);
    }

    #[test]
    fn suggest_picks_close_candidates_only() {
        let keys = ["rotation_range", "zoom_range", "lr"];
        assert_eq!(suggest("rotaton_range", &keys), Some("rotation_range"));
        assert_eq!(suggest("ZOOM_RANGE", &keys), Some("zoom_range"));
        assert_eq!(suggest("lt", &keys), Some("lr"));
        assert_eq!(suggest("xy", &keys), None);
        assert_eq!(suggest("completely_different", &keys), None);
        assert_eq!(suggest("", &keys), None);
        assert_eq!(suggest("anything", &[]), None);
    }

    #[test]
    fn bounds_phrasing() {
        assert_eq!(Bounds::above(0.0).at_most(10.0).violation(-0.1).as_deref(), Some("> 0"));
        assert_eq!(Bounds::above(0.0).at_most(10.0).violation(11.0).as_deref(), Some("<= 10"));
        assert_eq!(Bounds::above(0.0).at_most(10.0).violation(1.0), None);
        assert_eq!(Bounds::open(0.0, 1.0).violation(1.5).as_deref(), Some("in (0, 1)"));
        assert_eq!(Bounds::closed_open(0.0, 1.0).violation(1.0).as_deref(), Some("in [0, 1)"));
        assert_eq!(Bounds::open_closed(0.0, 1.0).violation(0.0).as_deref(), Some("in (0, 1]"));
        assert_eq!(Bounds::within(0, 360).violation(400).as_deref(), Some("within 0..=360"));
        assert_eq!(Bounds::at_least(1).violation(0).as_deref(), Some(">= 1"));
        assert!(Bounds::<f64>::any().violation(f64::NAN).is_none());
        assert!(Bounds::at_least(0.0).violation(f64::NAN).is_some());
    }

    fn with_field<R>(text: &str, key: &str, f: impl FnOnce(Field<'_>) -> R) -> R {
        let doc = ImDocument::parse(text).expect("test TOML parses");
        let src = Source { text, path: Path::new("t.toml") };
        let section = Section::new(src, doc.as_table(), Some(0..0), "at top level");
        f(section.field(key).expect("key present"))
    }

    fn message(e: RecipeError) -> String {
        match e {
            RecipeError::Invalid { message, .. } => message,
            RecipeError::Io { .. } => unreachable!("no I/O here"),
        }
    }

    #[test]
    fn found_describes_values() {
        assert_eq!(with_field("a = \"fast\"", "a", |f| f.found()), "string \"fast\"");
        assert_eq!(with_field("a = 1.5", "a", |f| f.found()), "float 1.5");
        assert_eq!(with_field("a = [1, 2]", "a", |f| f.found()), "array [1, 2]");
        assert_eq!(with_field("a = { b = 1 }", "a", |f| f.found()), "table");
        assert_eq!(with_field("[a]\nb = 1", "a", |f| f.found()), "table");
        assert_eq!(with_field("[[a]]\nb = 1", "a", |f| f.found()), "array of tables");
        let long = format!("a = \"{}\"", "x".repeat(100));
        assert!(with_field(&long, "a", |f| f.found()).ends_with('…'));
    }

    #[test]
    fn numbers_accept_integers_and_reject_non_finite() {
        assert_eq!(with_field("a = 10", "a", |f| f.number(Bounds::any()).ok()), Some(10.0));
        let e = with_field("a = inf", "a", |f| f.number(Bounds::any()).map_err(message));
        assert_eq!(e, Err("`a` must be a finite number, found inf".into()));
        let e = with_field("a = nan", "a", |f| f.number(Bounds::any()).map_err(message));
        assert_eq!(e, Err("`a` must be a finite number, found nan".into()));
        let e = with_field("a = 8.0", "a", |f| f.integer(Bounds::any()).map_err(message));
        assert_eq!(e, Err("`a` must be an integer, found float 8.0".into()));
    }

    #[test]
    fn int_as_reports_overflow() {
        let e = with_field("a = 5000000000", "a", |f| f.int_as::<u32>(Bounds::at_least(0)).map_err(message));
        assert_eq!(e, Err("`a` is too large, found 5000000000".into()));
    }

    #[test]
    fn pair_checks_shape_and_order() {
        let ok = with_field("a = [1, 2.5]", "a", |f| f.pair(Bounds::any()).ok());
        assert_eq!(ok, Some((1.0, 2.5)));
        let e = with_field("a = [1]", "a", |f| f.pair(Bounds::any()).map_err(message));
        assert_eq!(e, Err("`a` must be a 2-element array [lo, hi], found 1 element(s)".into()));
        let e = with_field("a = [2, 1]", "a", |f| f.pair(Bounds::any()).map_err(message));
        assert_eq!(e, Err("`a` must satisfy lo <= hi, found [2, 1]".into()));
        let e = with_field("a = [1, \"x\"]", "a", |f| f.pair(Bounds::any()).map_err(message));
        assert_eq!(e, Err("`a[1]` must be a number, found string \"x\"".into()));
    }

    #[test]
    fn choice_suggests() {
        let opts = [("sgd", 0), ("adam", 1), ("adamw", 2)];
        let e = with_field("a = \"adm\"", "a", |f| f.choice(&opts).map_err(message));
        assert_eq!(
            e,
            Err("`a` must be one of \"sgd\", \"adam\", \"adamw\", found string \"adm\"; did you mean \"adam\"?".into())
        );
        assert_eq!(with_field("a = \"adamw\"", "a", |f| f.choice(&opts).ok()), Some(2));
    }
}
