//! Secrets the host has read, and their redaction from everything it writes.
//!
//! A manifest never holds a secret: a backend option of kind
//! [`SecretEnv`](vlsbench_plugin_api::OptionKind::SecretEnv) names the environment variable that
//! does (`api_key_env`). When the host checks the options ([`crate::backend::check_options`]) it
//! reads each such variable and registers its value here. From then on every answer, error message
//! and judge reply that comes back from a backend, every record appended to the run folder, and
//! every log line is passed through [`redact`]: a secret's value becomes `[redacted $VAR]`, and a
//! warning says so.
//!
//! Values shorter than [`MIN_LEN`] characters are not redacted (a one-letter "key" would blank out
//! every answer); a warning says so when one is registered.

use std::borrow::Cow;
use std::sync::RwLock;

/// Shortest value that is redacted.
pub const MIN_LEN: usize = 6;

/// A registered secret: the variable it came from and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Secret {
    var: String,
    value: String,
    /// The value as it appears inside a JSON string, when that differs.
    json_escaped: Option<String>,
}

static SECRETS: RwLock<Vec<Secret>> = RwLock::new(Vec::new());

/// Registers the value of environment variable `var`. Empty and already-known values are ignored.
pub fn register(var: &str, value: &str) {
    let value = value.trim();
    if value.is_empty() {
        return;
    }
    if value.chars().count() < MIN_LEN {
        tracing::warn!(
            "the value of ${var} is shorter than {MIN_LEN} characters; it is not redacted from the run folder and the logs"
        );
        return;
    }
    let mut all = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if all.iter().any(|s| s.value == value) {
        return;
    }
    let escaped = serde_json::to_string(value).ok().map(|q| q[1..q.len() - 1].to_string()).filter(|e| e != value);
    all.push(Secret { var: var.to_string(), value: value.to_string(), json_escaped: escaped });
    // Longest first, so a secret that contains another is replaced whole.
    all.sort_by_key(|s| std::cmp::Reverse(s.value.len()));
}

/// `text` with every registered secret replaced by `[redacted $VAR]`, and the variables whose
/// values were found (empty when nothing was replaced; the text is then borrowed).
pub fn redact_with_names(text: &str) -> (Cow<'_, str>, Vec<String>) {
    let all = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(text);
    let mut found = Vec::new();
    for s in all.iter() {
        for needle in std::iter::once(&s.value).chain(s.json_escaped.as_ref()) {
            if out.contains(needle.as_str()) {
                out = Cow::Owned(out.replace(needle.as_str(), &format!("[redacted ${}]", s.var)));
                if !found.contains(&s.var) {
                    found.push(s.var.clone());
                }
            }
        }
    }
    (out, found)
}

/// `text` with every registered secret replaced by `[redacted $VAR]`.
pub fn redact(text: &str) -> Cow<'_, str> {
    redact_with_names(text).0
}

/// Redacts `text` in place; logs a warning naming `what` (e.g. "item 3: the answer") and the
/// variables when something was replaced. Returns whether it replaced anything.
pub fn redact_in_place(text: &mut String, what: &str) -> bool {
    let (redacted, found) = redact_with_names(text);
    if found.is_empty() {
        return false;
    }
    let redacted = redacted.into_owned();
    *text = redacted;
    tracing::warn!(
        "{what} contained the value of ${}; it is replaced by [redacted ${}] in everything written",
        found.join(", $"),
        found[0]
    );
    true
}

/// A `tracing` writer that redacts each log line before it reaches stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactingStderr;

/// The writer of one log event: collects it, then writes it redacted.
#[derive(Debug, Default)]
pub struct RedactingLine(Vec<u8>);

impl std::io::Write for RedactingLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let text = String::from_utf8_lossy(&self.0);
        let line = redact(&text);
        let mut err = std::io::stderr().lock();
        err.write_all(line.as_bytes())?;
        self.0.clear();
        err.flush()
    }
}

impl Drop for RedactingLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = std::io::Write::flush(self);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingLine;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingLine::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_secret_is_replaced_by_its_variables_name() {
        register("VLSBENCH_UNIT_KEY", "sk-unit-Secret-42");
        let (text, found) = redact_with_names("Bearer sk-unit-Secret-42 and again sk-unit-Secret-42");
        assert_eq!(text, "Bearer [redacted $VLSBENCH_UNIT_KEY] and again [redacted $VLSBENCH_UNIT_KEY]");
        assert_eq!(found, vec!["VLSBENCH_UNIT_KEY".to_string()]);
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_secret_is_found_in_its_json_escaped_form_too() {
        register("VLSBENCH_UNIT_QUOTED", "pa\"ss\\word-77");
        let json = serde_json::to_string("x pa\"ss\\word-77 y").unwrap_or_default();
        assert!(!redact(&json).contains("word-77"), "{}", redact(&json));
    }

    #[test]
    fn short_values_are_not_registered() {
        register("VLSBENCH_UNIT_SHORT", "abc");
        assert_eq!(redact("abc abc"), "abc abc");
    }
}
