//! "Did you mean": the one place that decides whether a misspelt name is
//! close enough to a known one to suggest it (recipe keys and values,
//! architecture names, tensor names in a checkpoint).

/// Levenshtein edit distance over characters (insert, delete, substitute all
/// cost 1). Two rows of memory, O(|a|·|b|) time; keys are short.
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `input`, if close enough to be a plausible typo:
/// distance <= 2 or <= a third of the input's length, and never so far that
/// the whole word would have to be replaced (which would make `xy` → `lr` a
/// "suggestion"). Case is ignored, so `Adam` finds `adam`.
pub fn suggest<'c>(input: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let lower = input.to_lowercase();
    let len = input.chars().count();
    candidates
        .iter()
        .map(|c| (levenshtein(&lower, c), *c))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, c)| (*d <= 2 || *d <= len / 3) && *d < len.min(c.chars().count()))
        .map(|(_, c)| c)
}
