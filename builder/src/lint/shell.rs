//! A small reading of shell text for the hadolint-style RUN rules: the
//! simple commands (first word and arguments) and whether an unquoted pipe
//! joins two of them. It is not a shell parser; it knows quotes, escapes,
//! comments and the operators `&& || | ; &` and parentheses, which is what
//! the rules need to avoid firing on quoted text.

/// One simple command: its words (quotes removed), assignments dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleCommand {
    pub words: Vec<String>,
    /// This command's output is piped into the next one (`a | b`).
    pub piped: bool,
}

impl SimpleCommand {
    /// The program, skipping `VAR=value` prefixes.
    pub fn program(&self) -> Option<&str> {
        self.words.first().map(String::as_str)
    }

    /// The words after the program.
    pub fn args(&self) -> &[String] {
        self.words.get(1..).unwrap_or_default()
    }
}

/// Splits `text` into simple commands.
pub fn simple_commands(text: &str) -> Vec<SimpleCommand> {
    let chars: Vec<char> = text.chars().collect();
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut i = 0;

    fn end_word(words: &mut Vec<String>, word: &mut String, in_word: &mut bool) {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    }
    fn end_command(commands: &mut Vec<SimpleCommand>, words: &mut Vec<String>, piped: bool) {
        // Leading assignments are not the program.
        let first = words
            .iter()
            .position(|w| !is_assignment(w))
            .unwrap_or(words.len());
        let kept: Vec<String> = words.drain(..).skip(first).collect();
        if !kept.is_empty() {
            commands.push(SimpleCommand { words: kept, piped });
        }
    }

    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' => {
                in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    word.push(chars[i]);
                    i += 1;
                }
            }
            '"' => {
                in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    word.push(chars[i]);
                    i += 1;
                }
            }
            '\\' => {
                // A line continuation joins; any other escape is literal.
                if chars.get(i + 1) == Some(&'\n') {
                    i += 1;
                } else if let Some(next) = chars.get(i + 1) {
                    in_word = true;
                    word.push(*next);
                    i += 1;
                }
            }
            '#' if !in_word => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            ' ' | '\t' | '\r' => end_word(&mut words, &mut word, &mut in_word),
            '|' => {
                end_word(&mut words, &mut word, &mut in_word);
                if chars.get(i + 1) == Some(&'|') {
                    i += 1;
                    end_command(&mut commands, &mut words, false);
                } else {
                    end_command(&mut commands, &mut words, true);
                }
            }
            '&' | ';' | '\n' | '(' | ')' => {
                end_word(&mut words, &mut word, &mut in_word);
                end_command(&mut commands, &mut words, false);
                if c == '&' && chars.get(i + 1) == Some(&'&') {
                    i += 1;
                }
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
        i += 1;
    }
    end_word(&mut words, &mut word, &mut in_word);
    end_command(&mut commands, &mut words, false);
    commands
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn programs(text: &str) -> Vec<String> {
        simple_commands(text)
            .iter()
            .filter_map(|c| c.program().map(str::to_string))
            .collect()
    }

    #[test]
    fn operators_split_commands() {
        assert_eq!(
            programs("cd /x && make || echo 'a && b'; FOO=1 ls | wc -l"),
            ["cd", "make", "echo", "ls", "wc"]
        );
        let cmds = simple_commands("a | b || c");
        assert!(cmds[0].piped && !cmds[1].piped && !cmds[2].piped);
    }

    #[test]
    fn quotes_and_comments_hide_operators() {
        assert_eq!(
            programs("echo \"x | sudo y\" # sudo here\nid"),
            ["echo", "id"]
        );
        assert!(simple_commands("echo 'a|b'").iter().all(|c| !c.piped));
        assert_eq!(
            programs("apt-get update \\\n && apt-get install -y x"),
            ["apt-get", "apt-get"]
        );
    }
}
