//! The error type returned by recipe loading, plus the byte-offset → line/column
//! conversion that makes every message point at an exact spot in the file.

use std::path::PathBuf;

/// Why a recipe could not be loaded.
///
/// `Invalid` always carries a 1-based `line`/`col` (columns count characters, not
/// bytes) so editors and terminals can jump straight to the offending key or value.
/// `Debug` prints that same line (see [`crate::Error`]).
#[derive(thiserror::Error)]
pub enum RecipeError {
    /// The file could not be read at all.
    #[error("{path}: cannot read recipe: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid recipe (syntax or semantics).
    #[error("{path}:{line}:{col}: {message}")]
    Invalid { path: PathBuf, line: usize, col: usize, message: String },
}

impl std::fmt::Debug for RecipeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl RecipeError {
    /// The 1-based `(line, column)` of an `Invalid` error; `None` for I/O errors,
    /// which have no position.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        match self {
            RecipeError::Invalid { line, col, .. } => Some((*line, *col)),
            RecipeError::Io { .. } => None,
        }
    }
}

/// Converts a byte offset into a 1-based `(line, column)` pair, counting the
/// column in characters so multi-byte text before the error does not skew it.
///
/// Offsets past the end are clamped and offsets inside a multi-byte character
/// are moved back to its start, so this never panics whatever span a parser
/// reports.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("abc", 2), (1, 3));
        assert_eq!(line_col("ab\ncd", 3), (2, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn line_col_counts_chars_not_bytes() {
        // "é" is two bytes; the `x` after it is the third character.
        let text = "\u{e9}\u{e9}x";
        assert_eq!(line_col(text, 4), (1, 3));
    }

    #[test]
    fn line_col_survives_bad_offsets() {
        assert_eq!(line_col("ab", 99), (1, 3));
        // Offset 1 is inside the two-byte "é": it is moved back to the start.
        assert_eq!(line_col("\u{e9}", 1), (1, 1));
        assert_eq!(line_col("", 0), (1, 1));
    }

    #[test]
    fn display_and_line_col() {
        let e = RecipeError::Invalid { path: PathBuf::from("r.toml"), line: 3, col: 7, message: "boom".into() };
        assert_eq!(e.to_string(), "r.toml:3:7: boom");
        assert_eq!(e.line_col(), Some((3, 7)));
        let io = RecipeError::Io {
            path: PathBuf::from("r.toml"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(io.to_string(), "r.toml: cannot read recipe: gone");
        assert_eq!(io.line_col(), None);
    }
}
