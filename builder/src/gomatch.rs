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

fn match_from(p: &[char], n: &[char]) -> bool {
    let Some(&first) = p.first() else {
        return n.is_empty();
    };
    match first {
        '*' => {
            let mut rest = p;
            while rest.first() == Some(&'*') {
                rest = &rest[1..];
            }
            let mut i = 0;
            loop {
                if match_from(rest, &n[i..]) {
                    return true;
                }
                if i >= n.len() || n[i] == '/' {
                    return false;
                }
                i += 1;
            }
        }
        '?' => !n.is_empty() && n[0] != '/' && match_from(&p[1..], &n[1..]),
        '[' => match parse_class(&p[1..]) {
            Some((class, used)) => {
                !n.is_empty() && class.contains(n[0]) && match_from(&p[1 + used..], &n[1..])
            }
            None => false,
        },
        '\\' => p.len() > 1 && !n.is_empty() && n[0] == p[1] && match_from(&p[2..], &n[1..]),
        c => !n.is_empty() && n[0] == c && match_from(&p[1..], &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn wildcard_detection() {
        assert!(contains_wildcards("*.txt"));
        assert!(contains_wildcards("a/b?"));
        assert!(contains_wildcards("[ab]"));
        assert!(!contains_wildcards("plain/name"));
        assert!(!contains_wildcards("esc\\*aped"));
    }
}
