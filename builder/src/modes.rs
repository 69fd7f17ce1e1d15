//! `COPY --chmod`: an octal mode (up to `07777`) or, as BuildKit accepts
//! since the Dockerfile 1.10 frontend, a symbolic one (`u+x,go-w`, `a=rX`).
//!
//! ```
//! use kiln_builder::modes::Chmod;
//! assert_eq!(Chmod::parse("755").unwrap().apply(0o600, false), 0o755);
//! assert_eq!(Chmod::parse("go-w,u+x").unwrap().apply(0o666, false), 0o744);
//! assert_eq!(Chmod::parse("a+X").unwrap().apply(0o600, true), 0o711);
//! ```

/// A `--chmod` value BuildKit would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChmodError {
    #[error("invalid chmod parameter: '{0}'. it should be octal string and between 0 and 07777")]
    NotOctal(String),
    #[error("invalid chmod parameter: '{0}': bad symbolic mode")]
    BadSymbolic(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Remove,
    Set,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Perms {
    /// A combination of r w x X s t.
    Bits(String),
    /// Copy another class' current bits (`g=u`).
    Copy(char),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Action {
    op: Op,
    perms: Perms,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// Bit mask of the classes named (u=0o4700... see `who_mask`); empty = all.
    who: String,
    actions: Vec<Action>,
}

/// A parsed `--chmod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// Numeric: replaces the permission and special bits outright.
    Octal(u32),
    /// Symbolic clauses applied to each source's mode.
    Symbolic { text: String, clauses: Vec<Clause> },
}

impl Chmod {
    /// Parses as BuildKit does: octal first, then symbolic; a value that
    /// looks numeric but is not valid octal gets the octal error.
    pub fn parse(text: &str) -> Result<Chmod, ChmodError> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return match u32::from_str_radix(text, 8) {
                Ok(v) if v <= 0o7777 => Ok(Chmod::Octal(v)),
                _ => Err(ChmodError::NotOctal(text.to_string())),
            };
        }
        let bad = || ChmodError::BadSymbolic(text.to_string());
        let mut clauses = Vec::new();
        for part in text.split(',') {
            let chars: Vec<char> = part.chars().collect();
            let mut i = 0;
            let mut who = String::new();
            while i < chars.len() && "ugoa".contains(chars[i]) {
                who.push(chars[i]);
                i += 1;
            }
            let mut actions = Vec::new();
            while i < chars.len() {
                let op = match chars[i] {
                    '+' => Op::Add,
                    '-' => Op::Remove,
                    '=' => Op::Set,
                    _ => return Err(bad()),
                };
                i += 1;
                if i < chars.len() && "ugo".contains(chars[i]) {
                    actions.push(Action {
                        op,
                        perms: Perms::Copy(chars[i]),
                    });
                    i += 1;
                    continue;
                }
                let mut bits = String::new();
                while i < chars.len() && "rwxXst".contains(chars[i]) {
                    bits.push(chars[i]);
                    i += 1;
                }
                actions.push(Action {
                    op,
                    perms: Perms::Bits(bits),
                });
            }
            if actions.is_empty() {
                return Err(bad());
            }
            clauses.push(Clause { who, actions });
        }
        Ok(Chmod::Symbolic {
            text: text.to_string(),
            clauses,
        })
    }

    /// The mode a copied object gets, from its source mode.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => m & 0o7777,
            Chmod::Symbolic { clauses, .. } => {
                let mut m = mode & 0o7777;
                for clause in clauses {
                    let who = who_mask(&clause.who);
                    for action in &clause.actions {
                        let bits = match &action.perms {
                            Perms::Bits(b) => perm_bits(b, m, is_dir) & who,
                            Perms::Copy(c) => copy_bits(*c, m) & who,
                        };
                        m = match action.op {
                            Op::Add => m | bits,
                            Op::Remove => m & !bits,
                            // `=` clears the named classes' rwx (and their
                            // special bits) first.
                            Op::Set => (m & !(who & 0o7777)) | bits,
                        };
                    }
                }
                m
            }
        }
    }

    /// The numeric mode, for parent directories created by COPY (only a
    /// numeric `--chmod` applies to them).
    pub fn octal(&self) -> Option<u32> {
        match self {
            Chmod::Octal(m) => Some(*m),
            Chmod::Symbolic { .. } => None,
        }
    }
}

/// Which bits the named classes cover (umask 0: no who means all).
fn who_mask(who: &str) -> u32 {
    if who.is_empty() || who.contains('a') {
        return 0o7777;
    }
    let mut mask = 0;
    if who.contains('u') {
        mask |= 0o4700;
    }
    if who.contains('g') {
        mask |= 0o2070;
    }
    if who.contains('o') {
        mask |= 0o1007;
    }
    mask
}

fn perm_bits(bits: &str, current: u32, is_dir: bool) -> u32 {
    let mut out = 0;
    for b in bits.chars() {
        out |= match b {
            'r' => 0o444,
            'w' => 0o222,
            'x' => 0o111,
            'X' if is_dir || current & 0o111 != 0 => 0o111,
            's' => 0o6000,
            't' => 0o1000,
            _ => 0,
        };
    }
    out
}

fn copy_bits(class: char, current: u32) -> u32 {
    let rwx = match class {
        'u' => (current >> 6) & 7,
        'g' => (current >> 3) & 7,
        _ => current & 7,
    };
    rwx * 0o111
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_and_errors() {
        assert_eq!(Chmod::parse("0644").unwrap(), Chmod::Octal(0o644));
        assert_eq!(Chmod::parse("4755").unwrap().apply(0o600, false), 0o4755);
        assert!(matches!(
            Chmod::parse("10000"),
            Err(ChmodError::NotOctal(_))
        ));
        assert!(matches!(Chmod::parse("0789"), Err(ChmodError::NotOctal(_))));
        assert!(matches!(
            Chmod::parse("u+q"),
            Err(ChmodError::BadSymbolic(_))
        ));
        assert!(matches!(Chmod::parse("z"), Err(ChmodError::BadSymbolic(_))));
    }

    #[test]
    fn symbolic() {
        let cases: &[(&str, u32, bool, u32)] = &[
            ("u+x", 0o644, false, 0o744),
            ("+x", 0o644, false, 0o755),
            ("a-w", 0o666, false, 0o444),
            ("o=", 0o777, false, 0o770),
            ("g=u", 0o640, false, 0o660),
            ("a=rX", 0o700, true, 0o555),
            ("a=rX", 0o600, false, 0o444),
            ("a=rX", 0o700, false, 0o555),
            ("u+s", 0o755, false, 0o4755),
            ("+t", 0o777, true, 0o1777),
            ("u=rwx,go=rx", 0o000, false, 0o755),
        ];
        for &(text, from, dir, want) in cases {
            let got = Chmod::parse(text).unwrap().apply(from, dir);
            assert_eq!(got, want, "{text} on {from:o}: got {got:o}");
        }
    }
}
