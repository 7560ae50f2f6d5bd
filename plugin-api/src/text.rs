//! Text rules the host, the judges and the backends share, written once.

/// Python's `str.strip()` with no argument, as the reference's evaluation loop applies it to
/// answers (and its judge to the question and the answer): it removes the characters
/// `str.isspace()` accepts, which are Rust's white space plus the ASCII separators
/// U+001C..U+001F.
///
/// ```
/// use vlsbench_plugin_api::python_strip;
/// assert_eq!(python_strip("\u{1f} \u{a0}answer\u{3000}\n\u{1c}"), "answer");
/// assert_eq!(python_strip("\u{200b}x "), "\u{200b}x"); // a zero-width space is not white space
/// ```
pub fn python_strip(s: &str) -> &str {
    s.trim_matches(is_python_whitespace)
}

/// Whether Python's `str.isspace()` holds for `c`.
pub fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_removes_what_python_calls_white_space_and_nothing_else() {
        assert_eq!(python_strip("\u{1c}\u{a0} a b \u{3000}\u{1f}"), "a b");
        assert_eq!(python_strip("\u{200b}x"), "\u{200b}x");
        assert_eq!(python_strip(" \t\n"), "");
    }
}
