//! Dockerfile text as messages show it: control characters escaped (a
//! Dockerfile's escape sequences must not reach the terminal) and
//! instructions too long to read cut ([`shorten`]).

use std::borrow::Cow;
use std::fmt::Write;

/// `s` safe to write to a terminal: every control character but tab and
/// newline (C0, DEL, C1: what starts an escape sequence or moves the
/// cursor) written as `\xNN` (ASCII) or `\uNNNN`, everything else as it
/// is. Error messages echo Dockerfile text through it.
///
/// ```
/// assert_eq!(kiln_parser::escape_control("\u{1b}[2J RUN\tx"), "\\x1b[2J RUN\tx");
/// ```
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// How many columns `c` takes once [`escape_control`] wrote it (1 for a
/// character left as it is).
pub fn escaped_width(c: char) -> usize {
    let mut out = String::new();
    push_escaped(&mut out, c);
    out.chars().count()
}

fn needs_escape(c: char) -> bool {
    c.is_control() && c != '\t' && c != '\n'
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        c if !needs_escape(c) => out.push(c),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
    }
}

/// Text longer than this is cut by [`shorten`].
pub const SHORTEN_ABOVE: usize = 4096;

/// How much of a cut text [`shorten`] keeps.
pub const SHORTENED_TO: usize = 200;

/// `text` as a message may show it: as it is up to [`SHORTEN_ABOVE`]
/// bytes, else its first [`SHORTENED_TO`] bytes (whole characters), `…`
/// and its length (a 10 MB RUN line is not echoed whole in an error).
///
/// ```
/// let long = format!("RUN echo {}", "x".repeat(5000));
/// let shown = kiln_parser::shorten(&long);
/// assert!(shown.starts_with("RUN echo xxx") && shown.ends_with("… (5009 bytes)"));
/// assert_eq!(kiln_parser::shorten("RUN make"), "RUN make");
/// ```
pub fn shorten(text: &str) -> Cow<'_, str> {
    if text.len() <= SHORTEN_ABOVE {
        return Cow::Borrowed(text);
    }
    let mut end = SHORTENED_TO;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_with_their_width() {
        assert_eq!(
            escape_control("a\u{1b}[1mb\tc\nd\u{7f}\u{9b}"),
            "a\\x1b[1mb\tc\nd\\x7f\\u009b"
        );
        assert!(matches!(escape_control("plain é"), Cow::Borrowed(_)));
        assert_eq!(escaped_width('\u{1b}'), 4);
        assert_eq!(escaped_width('\u{9b}'), 6);
        assert_eq!(escaped_width('x'), 1);
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let text = format!("{}{}", "é".repeat(150), "x".repeat(SHORTEN_ABOVE));
        let shown = shorten(&text);
        assert!(shown.starts_with(&"é".repeat(100)), "{shown}");
        assert!(
            shown.ends_with(&format!("é… ({} bytes)", text.len())),
            "{shown}"
        );
        let exact = "x".repeat(SHORTEN_ABOVE);
        assert_eq!(shorten(&exact), exact);
    }
}
