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

/// Permission and special bits, as BSD's `setmode(3)` names them.
const IS_UID: u32 = 0o4000;
const IS_GID: u32 = 0o2000;
const IS_TXT: u32 = 0o1000;
const RWX_U: u32 = 0o700;
const RWX_G: u32 = 0o070;
const RWX_O: u32 = 0o007;
const READ: u32 = 0o444;
const WRITE: u32 = 0o222;
const EXEC: u32 = 0o111;
/// What `a` names, and what `=` clears without a who-list: the sticky bit
/// is not among them.
const STANDARD: u32 = IS_UID | IS_GID | RWX_U | RWX_G | RWX_O;
/// The umask is 0 (BuildKit parses with none): every bit may be set.
const MASK: u32 = 0xffff;

/// A `u`/`g`/`o` copy command's flags (`cmd2`).
const CLEAR: u8 = 1;
const SET: u8 = 2;
const G_BITS: u8 = 4;
const O_BITS: u8 = 8;
const U_BITS: u8 = 16;

/// One compiled step: `+` sets `bits`, `-` clears them, `X` sets them when
/// the original mode has an execute bit (or it is a directory), `u`/`g`/`o`
/// copies that class' current bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitCmd {
    cmd: u8,
    cmd2: u8,
    bits: u32,
}

/// A parsed `--chmod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// Numeric: replaces the permission and special bits outright.
    Octal(u32),
    /// Symbolic, compiled as BuildKit's mode package (a port of BSD's
    /// `setmode(3)`) compiles it.
    Symbolic { text: String, cmds: Vec<BitCmd> },
}

impl Chmod {
    /// Parses as BuildKit does: octal first; a value that starts with a
    /// digit but is not valid octal up to 07777 gets the octal error;
    /// otherwise symbolic.
    pub fn parse(text: &str) -> Result<Chmod, ChmodError> {
        if text.as_bytes().first().is_some_and(u8::is_ascii_digit) {
            let octal = text.bytes().all(|b| b.is_ascii_digit());
            return match u32::from_str_radix(text, 8) {
                Ok(v) if octal && v <= 0o7777 => Ok(Chmod::Octal(v)),
                _ => Err(ChmodError::NotOctal(text.to_string())),
            };
        }
        let cmds = compile(text.as_bytes()).ok_or_else(|| ChmodError::BadSymbolic(text.into()))?;
        Ok(Chmod::Symbolic {
            text: text.to_string(),
            cmds,
        })
    }

    /// The mode a copied object gets, from its source mode.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => m & 0o7777,
            Chmod::Symbolic { cmds, .. } => apply(cmds, mode & 0o7777, is_dir),
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

/// `setmode`'s parse: clauses separated by `,`, each a who-list (`ugoa`,
/// none meaning all but the umask) and one or more operations (`+-=`)
/// with permissions (`rwxXst`) or a class to copy (`ugo`). `None` for
/// what it refuses.
fn compile(mut s: &[u8]) -> Option<Vec<BitCmd>> {
    let mut cmds = Vec::new();
    let mut equal_op_done = false;
    loop {
        let mut who = 0;
        loop {
            match s.first()? {
                b'a' => who |= STANDARD,
                b'u' => who |= IS_UID | RWX_U,
                b'g' => who |= IS_GID | RWX_G,
                b'o' => who |= RWX_O,
                _ => break,
            }
            s = &s[1..];
        }
        // One or more operations, each with its permissions.
        loop {
            let op = *s.first()?;
            s = &s[1..];
            match op {
                b'+' | b'-' => {}
                b'=' => equal_op_done = false,
                _ => return None,
            }
            who &= !IS_TXT;
            let (mut perm, mut perm_x) = (0, 0);
            loop {
                match s.first().copied().unwrap_or(0) {
                    b'r' => perm |= READ,
                    b's' if who == 0 || who & !RWX_O != 0 => perm |= IS_UID | IS_GID,
                    b't' if who == 0 || who & !RWX_O != 0 => {
                        who |= IS_TXT;
                        perm |= IS_TXT;
                    }
                    b's' | b't' => {}
                    b'w' => perm |= WRITE,
                    b'X' if op != b'-' => perm_x = EXEC,
                    b'X' | b'x' => perm |= EXEC,
                    class @ (b'u' | b'g' | b'o') => {
                        if perm != 0 {
                            add(&mut cmds, op, who, perm);
                            perm = 0;
                        }
                        if op == b'=' {
                            equal_op_done = true;
                        }
                        if perm_x != 0 {
                            add(&mut cmds, b'X', who, perm_x);
                            perm_x = 0;
                        }
                        add(&mut cmds, class, who, u32::from(op));
                    }
                    _ => {
                        if perm != 0 || (op == b'=' && !equal_op_done) {
                            if op == b'=' {
                                equal_op_done = true;
                            }
                            add(&mut cmds, op, who, perm);
                        }
                        if perm_x != 0 {
                            add(&mut cmds, b'X', who, perm_x);
                        }
                        break;
                    }
                }
                s = &s[1..];
            }
            match s.first() {
                None => return Some(compress(cmds)),
                Some(b',') => {
                    s = &s[1..];
                    break;
                }
                Some(_) => {}
            }
        }
    }
}

/// `setmode`'s `addcmd`: `=` is a clear of the who-list (or of the
/// standard bits) followed by a set.
fn add(cmds: &mut Vec<BitCmd>, op: u8, who: u32, arg: u32) {
    let named = |bits: u32| if who != 0 { who & bits } else { MASK & bits };
    match op {
        b'=' => {
            let cleared = if who != 0 { who } else { STANDARD };
            cmds.push(BitCmd {
                cmd: b'-',
                cmd2: 0,
                bits: cleared,
            });
            cmds.push(BitCmd {
                cmd: b'+',
                cmd2: 0,
                bits: named(arg),
            });
        }
        b'+' | b'-' | b'X' => cmds.push(BitCmd {
            cmd: op,
            cmd2: 0,
            bits: named(arg),
        }),
        class => {
            // The classes named (each by its read bit), all of them with
            // no who-list; every bit is let through (setmode's `~0`, the
            // same as MASK with a umask of 0).
            let classes = [(0o400, U_BITS), (0o040, G_BITS), (0o004, O_BITS)];
            let mut cmd2 = classes
                .iter()
                .filter(|(read, _)| who == 0 || who & read != 0)
                .fold(0, |flags, (_, flag)| flags | flag);
            cmd2 |= match arg as u8 {
                b'+' => SET,
                b'-' => CLEAR,
                _ => SET | CLEAR,
            };
            cmds.push(BitCmd {
                cmd: class,
                cmd2,
                bits: MASK,
            });
        }
    }
}

/// `setmode`'s `compress`: each run of `+`, `-` and `X` commands becomes
/// at most one of each, in that order, with the same effect.
fn compress(cmds: Vec<BitCmd>) -> Vec<BitCmd> {
    let mut out = Vec::with_capacity(cmds.len());
    let mut i = 0;
    while i < cmds.len() {
        if !b"+-X".contains(&cmds[i].cmd) {
            out.push(cmds[i]);
            i += 1;
            continue;
        }
        let (mut set, mut clear, mut x) = (0, 0, 0);
        while let Some(c) = cmds.get(i).filter(|c| b"+-X".contains(&c.cmd)) {
            match c.cmd {
                b'-' => {
                    clear |= c.bits;
                    set &= !c.bits;
                    x &= !c.bits;
                }
                b'+' => {
                    set |= c.bits;
                    clear &= !c.bits;
                    x &= !c.bits;
                }
                _ => x |= c.bits & !set,
            }
            i += 1;
        }
        for (cmd, bits) in [(b'-', clear), (b'+', set), (b'X', x)] {
            if bits != 0 {
                out.push(BitCmd { cmd, cmd2: 0, bits });
            }
        }
    }
    out
}

/// `setmode`'s `getmode`: the commands over `mode`; `X` looks at the
/// original mode, the copies at the mode as it is by then.
fn apply(cmds: &[BitCmd], mode: u32, is_dir: bool) -> u32 {
    let original = mode;
    let mut m = mode;
    for c in cmds {
        let value = match c.cmd {
            b'u' => (m & RWX_U) >> 6,
            b'g' => (m & RWX_G) >> 3,
            b'o' => m & RWX_O,
            b'+' => {
                m |= c.bits;
                continue;
            }
            b'-' => {
                m &= !c.bits;
                continue;
            }
            _ => {
                if original & EXEC != 0 || is_dir {
                    m |= c.bits;
                }
                continue;
            }
        };
        let shifts = [(U_BITS, 6), (G_BITS, 3), (O_BITS, 0)];
        if c.cmd2 & CLEAR != 0 {
            let cleared = if c.cmd2 & SET != 0 { RWX_O } else { value };
            for (flag, shift) in shifts {
                if c.cmd2 & flag != 0 {
                    m &= !((cleared << shift) & c.bits);
                }
            }
        }
        if c.cmd2 & SET != 0 {
            for (flag, shift) in shifts {
                if c.cmd2 & flag != 0 {
                    m |= (value << shift) & c.bits;
                }
            }
        }
    }
    m & 0o7777
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
        // Starts with a digit, not octal: the octal error, as BuildKit
        // gives it for a value that looks numeric.
        assert!(matches!(
            Chmod::parse("0o755"),
            Err(ChmodError::NotOctal(_))
        ));
        for bad in ["u+x,", "u", "ug", "u+x,,g+w", "a+q"] {
            assert!(
                matches!(Chmod::parse(bad), Err(ChmodError::BadSymbolic(_))),
                "{bad}"
            );
        }
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
            // X looks at the mode before the change: `=rw,+X` keeps the
            // execute bits a file had (setmode's own idiom).
            ("=rw,+X", 0o755, false, 0o777),
            ("=rw,+X", 0o644, false, 0o666),
            ("a-x,a+X", 0o755, false, 0o755),
            // The sticky bit: set by `t` for u or g (or no who), never for
            // o alone; `a` and `=` leave it.
            ("u+t", 0o644, false, 0o1644),
            ("g+t", 0o644, false, 0o1644),
            ("o+t", 0o644, false, 0o644),
            ("a=rX", 0o1777, true, 0o1555),
            ("o=", 0o1777, true, 0o1770),
            // A copy clears only the rwx bits of the class it sets.
            ("g=u", 0o2755, false, 0o2775),
            ("g=ur", 0o700, false, 0o740),
            ("u+x-w", 0o644, false, 0o544),
            ("go-rwx,u=rw", 0o777, false, 0o600),
            // An operator with no permissions: `+` changes nothing, `=`
            // clears all but the sticky bit.
            ("+", 0o644, false, 0o644),
            ("=", 0o1755, true, 0o1000),
        ];
        for &(text, from, dir, want) in cases {
            let got = Chmod::parse(text).unwrap().apply(from, dir);
            assert_eq!(got, want, "{text} on {from:o}: got {got:o}");
        }
    }
}
