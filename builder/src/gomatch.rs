//! Go's `path/filepath.Match`, which COPY/ADD use for source wildcards.
//!
//! `*` matches any run of characters except `/`, `?` one character except
//! `/`, `[...]` a class (`^` negates, `a-z` ranges, `\` escapes), and `\`
//! outside a class makes the next character literal.

/// The pattern is malformed (unclosed class, bad range, trailing `\`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("syntax error in pattern {0:?}")]
pub struct BadPattern(pub String);

/// Whether a path component or path contains wildcard characters, as
/// BuildKit's `containsWildcards` decides (a `\` escapes the next char).
pub fn contains_wildcards(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// `filepath.Match(pattern, name)`.
pub fn go_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let p: Vec<char> = pattern.chars().collect();
    if !valid(&p) {
        return Err(BadPattern(pattern.to_string()));
    }
    let n: Vec<char> = name.chars().collect();
    Ok(match_from(&p, &n))
}

fn valid(p: &[char]) -> bool {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return false;
                }
                i += 2;
            }
            '[' => match parse_class(&p[i + 1..]) {
                Some((_, used)) => i += 1 + used,
                None => return false,
            },
            _ => i += 1,
        }
    }
    true
}

struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Class {
    fn contains(&self, c: char) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }
}

/// Parses a class body after `[`; returns it and the chars used incl. `]`.
fn parse_class(p: &[char]) -> Option<(Class, usize)> {
    let mut i = 0;
    let negated = p.first() == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        let c = *p.get(i)?;
        if c == ']' && !ranges.is_empty() {
            return Some((Class { negated, ranges }, i + 1));
        }
        let (lo, used) = class_char(&p[i..])?;
        i += used;
        let mut hi = lo;
        if p.get(i) == Some(&'-') {
            let (h, used) = class_char(&p[i + 1..])?;
            hi = h;
            i += 1 + used;
        }
        ranges.push((lo, hi));
    }
}

fn class_char(p: &[char]) -> Option<(char, usize)> {
    match p.first()? {
        '-' | ']' => None,
        '\\' => p.get(1).map(|&c| (c, 2)),
        &c => Some((c, 1)),
    }
}

/// Go's algorithm: the pattern is a sequence of chunks, each after an
/// optional run of stars; a chunk is matched at the leftmost place a star
/// allows (stars never cross `/`). Chunks have a fixed length, so leftmost
/// is always right and no backtracking beyond the current star is needed:
/// linear in the pattern times the name, never exponential.
fn match_from(mut p: &[char], mut n: &[char]) -> bool {
    'pattern: while !p.is_empty() {
        let (star, chunk, rest) = scan_chunk(p);
        p = rest;
        if star && chunk.is_empty() {
            // A trailing star matches the rest unless it has a `/`.
            return !n.contains(&'/');
        }
        if let Some(t) = match_chunk(chunk, n) {
            // The last chunk must also exhaust the name.
            if t.is_empty() || !p.is_empty() {
                n = t;
                continue;
            }
        }
        if star {
            let mut i = 0;
            while i < n.len() && n[i] != '/' {
                if let Some(t) = match_chunk(chunk, &n[i + 1..]) {
                    if p.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    n = t;
                    continue 'pattern;
                }
                i += 1;
            }
        }
        return false;
    }
    n.is_empty()
}

/// Splits off leading stars and the chunk up to the next star outside a
/// class: `(saw a star, chunk, rest)`.
fn scan_chunk(mut p: &[char]) -> (bool, &[char], &[char]) {
    let mut star = false;
    while p.first() == Some(&'*') {
        p = &p[1..];
        star = true;
    }
    let mut in_class = false;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' if i + 1 < p.len() => i += 1,
            '[' => in_class = true,
            ']' => in_class = false,
            '*' if !in_class => break,
            _ => {}
        }
        i += 1;
    }
    (star, &p[..i], &p[i..])
}

/// Matches a star-free chunk at the start of `n`; returns what is left.
fn match_chunk<'n>(mut chunk: &[char], mut n: &'n [char]) -> Option<&'n [char]> {
    #[cfg(test)]
    tests::CHUNK_MATCHES.with(|c| c.set(c.get() + 1));
    while let Some(&c) = chunk.first() {
        let (&first, rest) = n.split_first()?;
        match c {
            '?' => {
                if first == '/' {
                    return None;
                }
                chunk = &chunk[1..];
            }
            '[' => {
                let (class, used) = parse_class(&chunk[1..])?;
                if !class.contains(first) {
                    return None;
                }
                chunk = &chunk[1 + used..];
            }
            '\\' => {
                if chunk.get(1) != Some(&first) {
                    return None;
                }
                chunk = &chunk[2..];
            }
            literal => {
                if literal != first {
                    return None;
                }
                chunk = &chunk[1..];
            }
        }
        n = rest;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        pub(super) static CHUNK_MATCHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn behaves_like_go_filepath_match() {
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("*x", "xxx", true),
            ("*.txt", "a.txt", true),
            ("*.txt", "dir/a.txt", false),
            ("*a*b", "aab", true),
            ("*a*b", "aaba", false),
            ("a*b*", "abxb", true),
            ("*/b", "a/b", true),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
        ];
        for &(p, n, want) in cases {
            assert_eq!(go_match(p, n), Ok(want), "match({p:?}, {n:?})");
        }
        for bad in [
            "[]a]", "[-]", "[x-]", "[", "[^", "[^bc", "a[", "\\", "[a-b-c]",
        ] {
            assert!(go_match(bad, "x").is_err(), "{bad} should be bad");
        }
    }

    /// Many stars against a long name that almost matches: Go's chunk
    /// algorithm tries each chunk at most once per name position; a naive
    /// backtracker tries exponentially many splits.
    #[test]
    fn many_stars_stay_polynomial() {
        let pattern = "*a".repeat(12) + "*b";
        let name = "a".repeat(4000);
        CHUNK_MATCHES.with(|c| c.set(0));
        assert_eq!(go_match(&pattern, &name), Ok(false));
        assert_eq!(go_match(&pattern, &(name.clone() + "b")), Ok(true));
        let tried = CHUNK_MATCHES.with(|c| c.get());
        assert!(tried <= 2 * 13 * 4001, "{tried} chunk matches");
    }

    #[test]
    fn wildcard_detection() {
        assert!(contains_wildcards("*.txt"));
        assert!(contains_wildcards("a/b?"));
        assert!(contains_wildcards("[ab]"));
        assert!(!contains_wildcards("plain/name"));
        assert!(!contains_wildcards("esc\\*aped"));
    }
}
