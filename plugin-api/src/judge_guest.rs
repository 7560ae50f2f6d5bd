//! Guest bindings of the judge world `vlsbench:judge@0.1.0`, for judge components built for
//! `wasm32-wasip2`.
//!
//! A judge crate implements [`Guest`] and calls [`export_judge!`](crate::export_judge):
//!
//! ```ignore
//! use vlsbench_plugin_api::judge_guest::{Guest, types::*};
//! struct MyJudge;
//! impl Guest for MyJudge { /* info() and judge() */ }
//! vlsbench_plugin_api::export_judge!(MyJudge);
//! ```
//!
//! On a native target the imports (`host::chat`, `host::log`) are stubs that must not be called,
//! so keep a judge's rules in plain functions and unit-test those natively.

wit_bindgen::generate!({
    path: "wit/judge@0.1.0",
    world: "judge",
    pub_export_macro: true,
    export_macro_name: "export_judge_world",
    default_bindings_module: "vlsbench_plugin_api::judge_guest",
});

pub use self::vlsbench::judge::{host, types};

/// Exports a type implementing [`Guest`] as the judge component.
#[macro_export]
macro_rules! export_judge {
    ($judge:ident) => {
        $crate::judge_guest::export_judge_world!($judge with_types_in $crate::judge_guest);
    };
}
