//! The exec-form test: is the text a JSON array of strings, judged the way
//! Go's `encoding/json` judges it (BuildKit unmarshals into `[]any`)?
//!
//! Three outcomes, as in BuildKit: a valid array of strings (exec form); a
//! valid JSON array with something other than a string at the top level (a
//! hard error); anything else (shell form). Validation is iterative, so deep
//! nesting cannot overflow the stack, and Go's nesting limit (10000) and its
//! float64 range for numbers are kept.

/// What the JSON check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonArray {
    /// A JSON array of strings.
    Strings(Vec<String>),
    /// Valid JSON array, but an element is not a string.
    NotStrings,
    /// Not valid JSON (or not an array): the text is shell form.
    Invalid,
}

const MAX_DEPTH: usize = 10000;

#[derive(Clone, Copy)]
enum Container {
    Array,
    Object,
}

/// Checks `text` (already starting with `[` after leading whitespace).
pub(crate) fn parse_string_array(text: &str) -> JsonArray {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        pos: 0,
        out_of_range: false,
    };
    match parser.run() {
        Some(result) if !parser.out_of_range => result,
        _ => JsonArray::Invalid,
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// A number that does not fit a float64: Go reports an error, so the
    /// text is not exec form.
    out_of_range: bool,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Returns None for a syntax error.
    fn run(&mut self) -> Option<JsonArray> {
        let mut stack: Vec<Container> = Vec::new();
        let mut strings = Vec::new();
        let mut not_strings = false;
        self.skip_ws();
        // `expect_value`: the next thing must be a value; otherwise we are
        // after a value (or right after an opening bracket, see `opened`).
        let mut expect_value = true;
        let mut opened = false;
        loop {
            self.skip_ws();
            if expect_value {
                let c = self.peek()?;
                if opened && matches!((stack.last(), c), (Some(Container::Array), b']')) {
                    self.pos += 1;
                    stack.pop();
                    opened = false;
                    expect_value = false;
                    continue;
                }
                opened = false;
                let top_level_element = stack.len() == 1;
                match c {
                    b'[' | b'{' => {
                        if top_level_element {
                            not_strings = true;
                        }
                        self.pos += 1;
                        if stack.len() >= MAX_DEPTH {
                            return None;
                        }
                        if c == b'[' {
                            stack.push(Container::Array);
                            opened = true;
                            continue;
                        }
                        stack.push(Container::Object);
                        self.skip_ws();
                        if self.peek() == Some(b'}') {
                            self.pos += 1;
                            stack.pop();
                            expect_value = false;
                            continue;
                        }
                        self.object_key()?;
                        continue;
                    }
                    b'"' => {
                        let s = self.string()?;
                        if top_level_element {
                            strings.push(s);
                        }
                    }
                    _ => {
                        self.scalar()?;
                        if top_level_element {
                            not_strings = true;
                        }
                    }
                }
                if stack.is_empty() {
                    // The top-level value must be the array itself.
                    return None;
                }
                expect_value = false;
                continue;
            }
            let Some(top) = stack.last().copied() else {
                // After the top-level value: only whitespace may follow.
                self.skip_ws();
                if self.pos != self.bytes.len() {
                    return None;
                }
                return Some(if not_strings {
                    JsonArray::NotStrings
                } else {
                    JsonArray::Strings(strings)
                });
            };
            match (top, self.peek()?) {
                (_, b',') => {
                    self.pos += 1;
                    if let Container::Object = top {
                        self.skip_ws();
                        self.object_key()?;
                    }
                    expect_value = true;
                }
                (Container::Array, b']') | (Container::Object, b'}') => {
                    self.pos += 1;
                    stack.pop();
                }
                _ => return None,
            }
        }
    }

    /// `"key" :` — leaves the parser expecting the value.
    fn object_key(&mut self) -> Option<()> {
        if self.peek() != Some(b'"') {
            return None;
        }
        self.string()?;
        self.skip_ws();
        if self.peek() != Some(b':') {
            return None;
        }
        self.pos += 1;
        Some(())
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.pos..self.pos + 4)?;
        let mut value = 0u32;
        for d in digits {
            value = value * 16 + (*d as char).to_digit(16)?;
        }
        self.pos += 4;
        Some(value)
    }

    fn string(&mut self) -> Option<String> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        let start = self.pos;
        let mut run_start = start;
        loop {
            let c = self.peek()?;
            match c {
                b'"' => {
                    out.push_str(std::str::from_utf8(&self.bytes[run_start..self.pos]).ok()?);
                    self.pos += 1;
                    return Some(out);
                }
                b'\\' => {
                    out.push_str(std::str::from_utf8(&self.bytes[run_start..self.pos]).ok()?);
                    self.pos += 1;
                    let e = self.peek()?;
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let unit = self.hex4()?;
                            out.push(self.decode_utf16(unit));
                        }
                        _ => return None,
                    }
                    run_start = self.pos;
                }
                0..=0x1f => return None,
                _ => self.pos += 1,
            }
        }
    }

    /// A `\uXXXX` unit: a surrogate pair becomes one character, a lone
    /// surrogate becomes U+FFFD (and the next escape is left alone), as in Go.
    fn decode_utf16(&mut self, unit: u32) -> char {
        if (0xD800..0xE000).contains(&unit) {
            if (0xD800..0xDC00).contains(&unit)
                && self.bytes.get(self.pos..self.pos + 2) == Some(b"\\u")
            {
                let save = self.pos;
                self.pos += 2;
                if let Some(low) = self.hex4() {
                    if (0xDC00..0xE000).contains(&low) {
                        let c = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        return char::from_u32(c).unwrap_or('\u{fffd}');
                    }
                }
                self.pos = save;
            }
            return '\u{fffd}';
        }
        char::from_u32(unit).unwrap_or('\u{fffd}')
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.bytes.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Some(())
        } else {
            None
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                if self.peek() == Some(b'-') {
                    self.pos += 1;
                }
                match self.peek()? {
                    b'0' => self.pos += 1,
                    b'1'..=b'9' => {
                        self.digits();
                    }
                    _ => return None,
                }
                if self.peek() == Some(b'.') {
                    self.pos += 1;
                    if self.digits() == 0 {
                        return None;
                    }
                }
                if let Some(b'e' | b'E') = self.peek() {
                    self.pos += 1;
                    if let Some(b'+' | b'-') = self.peek() {
                        self.pos += 1;
                    }
                    if self.digits() == 0 {
                        return None;
                    }
                }
                let text = std::str::from_utf8(&self.bytes[start..self.pos]).ok()?;
                if text.parse::<f64>().map_or(true, |f| f.is_infinite()) {
                    self.out_of_range = true;
                }
                Some(())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> JsonArray {
        JsonArray::Strings(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn accepts_string_arrays() {
        assert_eq!(
            parse_string_array(r#"["a", "b c"]"#),
            strings(&["a", "b c"])
        );
        assert_eq!(parse_string_array("[ ]  \n"), strings(&[]));
        assert_eq!(
            parse_string_array(r#"["\u00e9\ud83d\ude00\t\/"]"#),
            strings(&["é😀\t/"])
        );
        assert_eq!(
            parse_string_array(r#"["\ud800x"]"#),
            strings(&["\u{fffd}x"])
        );
    }

    #[test]
    fn rejects_non_strings_in_valid_json() {
        assert_eq!(parse_string_array(r#"["a", ["b"]]"#), JsonArray::NotStrings);
        assert_eq!(
            parse_string_array("[1, null, {\"a\": [true]}]"),
            JsonArray::NotStrings
        );
    }

    #[test]
    fn invalid_json_is_shell_form() {
        for text in [
            "['a']",
            r#"["a""#,
            r#"["a",]"#,
            r#"["a"] x"#,
            r#"["a\x"]"#,
            "[\"a\tb\"]",
            "[01]",
            "[1e400]",
            "[1.]",
            "[{\"a\" 1}]",
            "[",
        ] {
            assert_eq!(parse_string_array(text), JsonArray::Invalid, "{text}");
        }
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let deep = "[".repeat(20000) + &"]".repeat(20000);
        assert_eq!(parse_string_array(&deep), JsonArray::Invalid);
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(parse_string_array(&ok), JsonArray::NotStrings);
    }
}
