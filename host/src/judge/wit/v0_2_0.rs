//! The adapter of the judge WIT 0.2.0 (`plugin-api/wit/judge@0.2.0/`, frozen): 0.1.0 plus
//! `check-config`, which the host calls before the first item and in `validate`.

/// This version.
pub(super) const VERSION: &str = "0.2.0";

/// Host bindings generated from the frozen folder.
pub(super) mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugin-api/wit/judge@0.2.0",
        world: "judge",
        imports: { default: trappable },
    });
}

super::adapter!();
