//! "Did you mean …?" for misspelt instructions and flags.

/// The nearest of `options` to `value` (edit distance below 3), as BuildKit's
/// `suggest.Search` picks it; `None` for an exact match or nothing close.
/// Case-insensitive search returns the option in the case style of `value`.
pub fn suggest(value: &str, options: &[&str], case_sensitive: bool) -> Option<String> {
    let needle = if case_sensitive {
        value.to_string()
    } else {
        value.to_lowercase()
    };
    // (Levenshtein distance, distance with swaps, the option) of the best.
    let mut best: Option<(usize, usize, String)> = None;
    for option in options {
        let candidate = if case_sensitive {
            option.to_string()
        } else {
            option.to_lowercase()
        };
        if candidate == needle {
            return None;
        }
        let distance = levenshtein(&needle, &candidate, false);
        if distance >= 3 {
            continue;
        }
        let swaps = levenshtein(&needle, &candidate, true);
        let better = match &best {
            None => true,
            Some((d, s, _)) => distance < *d || (distance == *d && swaps < *s),
        };
        if better {
            let shown = if case_sensitive {
                candidate
            } else {
                match_case(&candidate, value)
            };
            best = Some((distance, swaps, shown));
        }
    }
    best.map(|(_, _, option)| option)
}

fn match_case(option: &str, original: &str) -> String {
    if original == original.to_lowercase() {
        option.to_lowercase()
    } else if original == original.to_uppercase() {
        option.to_uppercase()
    } else {
        option.to_string()
    }
}

/// Edit distance in characters: Levenshtein's, as BuildKit measures what
/// is close enough (below 3); with `swaps`, a swap of two neighbours
/// counts as one edit, which picks among options at the same Levenshtein
/// distance (so `RNU` suggests `RUN`, not `ENV`; BuildKit's pick among
/// equals depends on map order). Stops early for inputs whose lengths
/// differ too much, since only distances below 3 matter.
fn levenshtein(a: &str, b: &str, swaps: bool) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) >= 3 {
        return 3;
    }
    // Optimal string alignment: three rows (two back for transpositions).
    let width = b.len() + 1;
    let mut before: Vec<usize> = vec![0; width];
    let mut prev: Vec<usize> = (0..width).collect();
    let mut cur = vec![0; width];
    for i in 0..a.len() {
        cur[0] = i + 1;
        for j in 0..b.len() {
            let cost = usize::from(a[i] != b[j]);
            let mut d = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            if swaps && i > 0 && j > 0 && a[i] == b[j - 1] && a[i - 1] == b[j] {
                d = d.min(before[j - 1] + 1);
            }
            cur[j + 1] = d;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_nearest() {
        assert_eq!(
            suggest("RNU", &["RUN", "ENV"], false).as_deref(),
            Some("RUN")
        );
        assert_eq!(suggest("cpoy", &["COPY"], false).as_deref(), Some("copy"));
        assert_eq!(suggest("FROMM", &["FROM"], false).as_deref(), Some("FROM"));
        assert_eq!(suggest("xyzzy", &["RUN"], false), None);
        assert_eq!(suggest("chmod", &["chown", "chmod"], true), None);
        // Two swaps and a letter more: Levenshtein's 3, too far (BuildKit
        // suggests nothing), though 2 edits with swaps.
        assert_eq!(suggest("YMARCHX", &["MYARCH"], true), None);
    }
}
