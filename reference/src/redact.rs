//! Credentials out of URLs that are shown or recorded: what every crate
//! uses before a URL (`ADD https://user:password@host/file`, a Git remote)
//! reaches progress, logs, errors or an image's history. The request itself
//! keeps them (the HTTP client sends them as an `Authorization` header).

/// BuildKit's mask (`urlutil.RedactCredentials`).
const MASK: &str = "xxxxx";

/// `text` with the userinfo of every `scheme://userinfo@host` in it masked
/// as BuildKit's `urlutil.RedactCredentials` masks a URL's:
/// `user:password@` → `xxxxx:xxxxx@`, `user@` → `xxxxx@` (a token is often
/// the user name), `:password@` → `:xxxxx@`. Everything else, URLs without
/// userinfo and text without URLs, is left as it is. `text` may be a single
/// URL or a line holding several (a Dockerfile instruction, a message).
///
/// ```
/// use kiln_reference::redact_credentials;
/// assert_eq!(
///     redact_credentials("ADD https://me:pw@host/f /f"),
///     "ADD https://xxxxx:xxxxx@host/f /f"
/// );
/// assert_eq!(redact_credentials("https://host/a@b"), "https://host/a@b");
/// ```
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let separator = search + found;
        let authority_start = separator + 3;
        search = authority_start;
        if !has_scheme_before(&text[..separator]) {
            continue;
        }
        let rest = &text[authority_start..];
        let authority_len = rest.find(ends_authority).unwrap_or(rest.len());
        let Some(at) = rest[..authority_len].rfind('@') else {
            continue;
        };
        let masked = match rest[..at].split_once(':') {
            Some(("", _)) => format!(":{MASK}"),
            Some(_) => format!("{MASK}:{MASK}"),
            None if at == 0 => continue,
            None => MASK.to_string(),
        };
        out.push_str(&text[copied..authority_start]);
        out.push_str(&masked);
        copied = authority_start + at;
        search = copied;
    }
    out.push_str(&text[copied..]);
    out
}

/// Whether `before` ends with a URL scheme: a run of letters, digits, `+`,
/// `-` or `.` (RFC 3986) holding a letter, where a scheme can start (in
/// free text, `--url=https` ends with the scheme `https`).
fn has_scheme_before(before: &str) -> bool {
    before
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        .any(|c| c.is_ascii_alphabetic())
}

/// Where the authority (`userinfo@host:port`) of a URL in free text ends:
/// its path, query or fragment, or the end of the URL (blank, quote).
fn ends_authority(c: char) -> bool {
    matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>') || c.is_whitespace()
}

#[cfg(test)]
mod tests {
    use super::redact_credentials as redact;

    #[test]
    fn as_buildkit_masks_a_url() {
        // BuildKit's own cases (util/urlutil/redact_test.go).
        assert_eq!(
            redact("https://user:password@host.tld/this:that"),
            "https://xxxxx:xxxxx@host.tld/this:that"
        );
        assert_eq!(
            redact("https://user@host.tld/this:that"),
            "https://xxxxx@host.tld/this:that"
        );
        assert_eq!(
            redact("https://:password@host.tld/this:that"),
            "https://:xxxxx@host.tld/this:that"
        );
        assert_eq!(
            redact("https://host.tld/this:that"),
            "https://host.tld/this:that"
        );
        assert_eq!(redact("1https://foo.com"), "1https://foo.com");
    }

    #[test]
    fn every_url_of_a_text_and_nothing_else() {
        assert_eq!(
            redact("ADD --chmod=600 https://u:p@a:8080/x?y=1 git://t@b/r.git#main /dst/"),
            "ADD --chmod=600 https://xxxxx:xxxxx@a:8080/x?y=1 git://xxxxx@b/r.git#main /dst/"
        );
        // The last '@' of the authority ends the userinfo; one in the
        // path, query or fragment is not userinfo.
        assert_eq!(redact("http://u:p@ss@h/"), "http://xxxxx:xxxxx@h/");
        assert_eq!(redact("http://h/p@q?r=s@t#u@v"), "http://h/p@q?r=s@t#u@v");
        assert_eq!(redact("\"https://u:p@h\""), "\"https://xxxxx:xxxxx@h\"");
        assert_eq!(redact("https://u:p,w;x@h"), "https://xxxxx:xxxxx@h");
        assert_eq!(redact("https://@h/"), "https://@h/");
        assert_eq!(
            redact("git@github.com:org/repo.git"),
            "git@github.com:org/repo.git"
        );
        assert_eq!(redact("://u:p@h"), "://u:p@h");
        assert_eq!(redact("1://u:p@h"), "1://u:p@h");
        assert_eq!(redact("--url=https://u:p@h"), "--url=https://xxxxx:xxxxx@h");
        assert_eq!(redact("--url.https://u:p@h"), "--url.https://xxxxx:xxxxx@h");
        assert_eq!(redact("plain text, no URL"), "plain text, no URL");
        assert_eq!(redact("é https://ü:ö@h é"), "é https://xxxxx:xxxxx@h é");
    }
}
