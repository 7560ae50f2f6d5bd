//! The adapter of the judge WIT 0.1.0 (`plugin-api/wit/judge@0.1.0/`, frozen): `info` and `judge`;
//! no `check-config`, so a bad config shows only when an item is judged.

/// This version.
pub(super) const VERSION: &str = "0.1.0";

/// Host bindings generated from the frozen folder.
pub(super) mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugin-api/wit/judge@0.1.0",
        world: "judge",
        imports: { default: trappable },
    });
}

super::adapter!();
