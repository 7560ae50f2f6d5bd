//! Finding judges: the component a manifest names, and the judges on the plugin path.

use std::path::{Path, PathBuf};

use anyhow::bail;
use vlsbench_plugin_api::resolve_path;

use crate::backend;

/// Finds the judge component a manifest names: a `.wasm` path (relative to the manifest's folder),
/// or a judge name on the plugin path (`vlsbench_judge_<name>.wasm`, dashes as underscores).
pub fn find_judge(component: &str, base_dir: &Path, dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    if names_a_file(component) {
        let path = resolve_path(base_dir, component);
        crate::fsread::check_regular(&path, crate::fsread::FileKind::JudgeComponent)?;
        return Ok(path);
    }
    let file = file_name(component);
    if let Some(path) = dirs.iter().map(|dir| dir.join(&file)).find(|path| path.is_file()) {
        return Ok(path);
    }
    bail!(
        "no judge named `{component}` ({file}) on the plugin path ({}); build the judges with `cargo xtask build` or give a .wasm path",
        backend::describe_dirs(dirs)
    )
}

/// Whether a manifest's `component` is a file path rather than a judge name.
pub fn names_a_file(component: &str) -> bool {
    component.ends_with(".wasm") || component.contains('/') || component.contains('\\')
}

/// The file a judge named `name` has on the plugin path.
pub fn file_name(name: &str) -> String {
    format!("vlsbench_judge_{}.wasm", name.replace('-', "_"))
}

/// Judge `.wasm` files on the search path.
pub fn judge_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    backend::files_on_path(dirs, |name| name.starts_with("vlsbench_judge_") && name.ends_with(".wasm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_judge_name_becomes_its_file_name_with_underscores() {
        assert_eq!(file_name("refusal-keywords"), "vlsbench_judge_refusal_keywords.wasm");
        assert!(names_a_file("judges/x.wasm") && names_a_file("x.wasm") && !names_a_file("vlsbench"));
    }

    #[test]
    fn a_missing_component_path_is_named() {
        let err = find_judge("nowhere/judge.wasm", Path::new("/base"), &[]).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("judge component /base/nowhere/judge.wasm: no such file"));
    }
}
