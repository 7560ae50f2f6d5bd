//! The shell shared by the three pages (`report.html`, `compare.html`, `agreement.html`): one
//! self-contained file each, with the style sheet and script inlined from `assets/`, no network
//! access of any kind, all text escaped, data handed to the script as escaped JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::summary::Provenance;

/// The style sheet of every page.
pub const CSS: &str = include_str!("assets/page.css");
/// The report page's script (charts are static SVG; the script runs the item browser).
pub const REPORT_JS: &str = include_str!("assets/report.js");

/// Escapes `&`, `<`, `>`, `"` and `'`.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON safe to put inside `<script type="application/json">`: `<`, `>` and `&` become `\u` escapes,
/// so no text of the data can close the element.
pub fn script_json(value: &impl Serialize) -> String {
    let json = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// `<!DOCTYPE html>` to the opening of `<main>`: title, inline style, a data-URL favicon (so the
/// browser asks for no file), and the page's heading.
pub fn open(out: &mut String, title: &str, subtitle: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"icon\" href=\"data:,\">\n<title>{t}</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
         <header><h1>{t}</h1><p class=\"sub\">{s}</p></header>\n<main>\n",
        t = escape_html(title),
        s = escape_html(subtitle),
    );
}

/// Closes `<main>` and the page; `script` (if any) is inlined last, after the data it reads.
pub fn close(out: &mut String, script: Option<&str>) {
    out.push_str("</main>\n<footer>Written by vlsbench-host ");
    out.push_str(env!("CARGO_PKG_VERSION"));
    out.push_str(". Self-contained: this file loads nothing from the network.</footer>\n");
    if let Some(js) = script {
        let _ = writeln!(out, "<script>{js}</script>");
    }
    out.push_str("</body>\n</html>\n");
}

/// A `<dl>` of key/value pairs (values escaped).
pub fn definition_list(out: &mut String, class: &str, rows: &[(&str, String)]) {
    let _ = writeln!(out, "<dl class=\"{}\">", escape_html(class));
    for (k, v) in rows {
        let _ = writeln!(out, "<dt>{}</dt><dd>{}</dd>", escape_html(k), escape_html(v));
    }
    out.push_str("</dl>\n");
}

/// The model and judge behind a run, one line per fact.
pub fn provenance_rows(p: &Provenance) -> Vec<(&'static str, String)> {
    let m = &p.model;
    let j = &p.judge;
    let settings = serde_json::to_string(&m.settings).unwrap_or_default();
    let mut rows = vec![
        ("model", format!("{} (arch {})", m.checkpoint.as_deref().unwrap_or("-"), m.arch)),
        ("backend", format!("{} {}", m.backend, m.backend_version)),
        ("device / dtype", format!("{} / {}", m.device.as_deref().unwrap_or("-"), m.dtype.as_deref().unwrap_or("-"))),
        ("generation settings", settings),
        ("prompt layout", m.prompt.clone()),
        ("judge", format!("{} {}", j.judge, j.judge_version)),
        ("judge component sha256", j.component_sha256.clone()),
        ("judge config", serde_json::to_string(&j.config).unwrap_or_default()),
    ];
    match &j.model {
        Some(jm) => rows.push((
            "judge model",
            format!(
                "{} via {} {} (settings {})",
                jm.checkpoint.as_deref().unwrap_or("-"),
                jm.backend,
                jm.backend_version,
                serde_json::to_string(&jm.settings).unwrap_or_default()
            ),
        )),
        None => rows.push(("judge model", "none (the judge calls no model)".to_owned())),
    }
    rows
}

/// A percentage with two decimals, or `-`.
pub fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{:.2}", x * 100.0))
}

/// `[lo, hi]` in percent with two decimals, or `-`.
pub fn pct_ci(ci: Option<[f64; 2]>) -> String {
    ci.map_or_else(|| "-".to_owned(), |[lo, hi]| format!("[{:.2}, {:.2}]", lo * 100.0, hi * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_cannot_close_its_script_element() {
        let s = script_json(&serde_json::json!({"a": "</script><b>&"}));
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&'), "{s}");
        let back: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
        assert_eq!(back["a"], "</script><b>&");
    }
}
