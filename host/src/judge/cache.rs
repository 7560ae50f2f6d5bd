//! The compile cache: judge components compiled once, kept on disk, and trusted only after checks.
//!
//! An entry is `<dir>/<key>.cwasm`, where the key is the SHA-256 of the component's own SHA-256
//! and the engine's fingerprint (wasmtime's version and every setting that changes the machine
//! code, as [`Engine::precompile_compatibility_hash`] gives them). Its file is
//!
//! ```text
//! MAGIC (16 bytes) | component sha256 (32) | engine fingerprint (32) | serialized component | sha256 of all before (32)
//! ```
//!
//! and is used only when the magic, both keys and the trailing digest check out: a file name proves
//! nothing, so another component's entry copied under this one's name, an entry of another engine,
//! and a truncated or damaged file are all recompiled (and the entry rewritten) instead of loaded.
//! Entries are written to a temporary file and renamed into place.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::fsutil::write_atomic;

/// The first bytes of a cache entry (the format's version is its last digit).
const MAGIC: &[u8; 16] = b"vlsbench-cwasm-2";
/// The length of the header: magic, component digest, engine fingerprint.
const HEADER_LEN: usize = MAGIC.len() + 32 + 32;

/// The on-disk cache of compiled components of one engine.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    fingerprint: [u8; 32],
}

impl CompileCache {
    /// A cache in `dir` (`None`: nothing is cached) for code compiled by `engine`.
    pub fn new(dir: Option<PathBuf>, engine: &Engine) -> Self {
        Self { dir, fingerprint: engine_fingerprint(engine) }
    }

    /// The folder, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The entry of the component whose `.wasm` has this SHA-256 (hex).
    pub fn path(&self, component_sha256: &str) -> Option<PathBuf> {
        let key = hex::encode(Sha256::new().chain_update(component_sha256).chain_update(self.fingerprint).finalize());
        self.dir.as_ref().map(|dir| dir.join(format!("{key}.cwasm")))
    }

    /// The compiled component, if a valid entry for exactly this component and engine is there.
    pub fn get(&self, engine: &Engine, component_sha256: &str) -> Option<Component> {
        let path = self.path(component_sha256)?;
        let file = fs::read(&path).ok()?;
        let Some(serialized) = check_entry(&file, &digest_of_hex(component_sha256), &self.fingerprint) else {
            tracing::warn!(path = %path.display(), "judge cache entry of another component or engine, or damaged; recompiling");
            return None;
        };
        // SAFETY: `Component::deserialize` runs the machine code it is given. These bytes were
        // written by `Component::serialize` of an engine with this fingerprint for this very
        // component (both checked above from the header, and the whole file against its trailing
        // digest, so it is neither truncated nor damaged); wasmtime checks again that they come
        // from the same version, configuration and target. The cache folder belongs to the user
        // running the host, who could replace the host binary as well.
        match unsafe { Component::deserialize(engine, serialized) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "stale judge cache entry ({e:#}); recompiling");
                None
            }
        }
    }

    /// Stores a compiled component; a cache that cannot be written only costs time (a warning).
    pub fn put(&self, component_sha256: &str, component: &Component) {
        let Some(path) = self.path(component_sha256) else { return };
        let serialized = match component.serialize() {
            Ok(serialized) => serialized,
            Err(e) => return tracing::warn!("cannot serialize the compiled judge: {e:#}"),
        };
        let entry = make_entry(&digest_of_hex(component_sha256), &self.fingerprint, &serialized);
        let written = path
            .parent()
            .ok_or_else(|| io::Error::other("the cache path has no folder"))
            .and_then(fs::create_dir_all)
            .and_then(|()| write_atomic(&path, &entry));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), "cannot write the judge cache: {e}");
        }
    }
}

/// `$XDG_CACHE_HOME/vlsbench`, else `$HOME/.cache/vlsbench`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    non_empty("XDG_CACHE_HOME")
        .or_else(|| non_empty("HOME").map(|home| home.join(".cache")))
        .map(|dir| dir.join("vlsbench"))
}

/// Feeds what `Hash` writes into SHA-256 (stable, unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

/// SHA-256 of the engine's compatibility hash: wasmtime's version and code-changing settings.
fn engine_fingerprint(engine: &Engine) -> [u8; 32] {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.finalize().into()
}

/// The 32 bytes a hex SHA-256 stands for (a string that is not one is hashed itself, so it still
/// gives a key that matches nothing else).
fn digest_of_hex(sha256_hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    match hex::decode_to_slice(sha256_hex, &mut out) {
        Ok(()) => out,
        Err(_) => Sha256::digest(sha256_hex.as_bytes()).into(),
    }
}

/// A cache file: header, body, digest of both.
fn make_entry(component: &[u8; 32], fingerprint: &[u8; 32], serialized: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(HEADER_LEN + serialized.len() + 32);
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(component);
    file.extend_from_slice(fingerprint);
    file.extend_from_slice(serialized);
    let digest = Sha256::digest(&file);
    file.extend_from_slice(&digest);
    file
}

/// The serialized component inside a cache file, if it is whole and made for exactly this
/// component and engine.
fn check_entry<'a>(file: &'a [u8], component: &[u8; 32], fingerprint: &[u8; 32]) -> Option<&'a [u8]> {
    let body_end = file.len().checked_sub(32)?;
    if body_end < HEADER_LEN {
        return None;
    }
    let (content, digest) = file.split_at(body_end);
    let header_ok = &content[..MAGIC.len()] == MAGIC
        && &content[MAGIC.len()..MAGIC.len() + 32] == component
        && &content[MAGIC.len() + 32..HEADER_LEN] == fingerprint;
    (header_ok && Sha256::digest(content).as_slice() == digest).then(|| &content[HEADER_LEN..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 32] = [1; 32];
    const B: [u8; 32] = [2; 32];
    const ENGINE: [u8; 32] = [7; 32];

    #[test]
    fn an_entry_reads_back_for_its_own_component_and_engine() {
        let file = make_entry(&A, &ENGINE, b"compiled");
        assert_eq!(check_entry(&file, &A, &ENGINE), Some(&b"compiled"[..]));
    }

    #[test]
    fn an_entry_of_another_component_is_refused_whatever_its_file_name() {
        let file = make_entry(&B, &ENGINE, b"compiled");
        assert_eq!(check_entry(&file, &A, &ENGINE), None);
    }

    #[test]
    fn an_entry_of_another_engine_is_refused() {
        let file = make_entry(&A, &[8; 32], b"compiled");
        assert_eq!(check_entry(&file, &A, &ENGINE), None);
    }

    #[test]
    fn a_damaged_or_truncated_entry_is_refused() {
        let mut file = make_entry(&A, &ENGINE, b"compiled");
        let last = file.len() - 33;
        file[last] ^= 1;
        assert_eq!(check_entry(&file, &A, &ENGINE), None);
        let file = make_entry(&A, &ENGINE, b"compiled");
        assert_eq!(check_entry(&file[..file.len() - 1], &A, &ENGINE), None);
        assert_eq!(check_entry(b"short", &A, &ENGINE), None);
    }

    #[test]
    fn entry_names_differ_by_component_and_by_engine() {
        let dir = Some(PathBuf::from("/cache"));
        let one = CompileCache { dir: dir.clone(), fingerprint: ENGINE };
        let other_engine = CompileCache { dir, fingerprint: [8; 32] };
        let (a, b) = (hex::encode(A), hex::encode(B));
        assert_ne!(one.path(&a), one.path(&b));
        assert_ne!(one.path(&a), other_engine.path(&a));
        assert_eq!(CompileCache { dir: None, fingerprint: ENGINE }.path(&a), None);
    }
}
