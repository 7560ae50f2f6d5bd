//! The C ABI in process: a backend exported with `export_backend!` in this very test binary, called
//! through its table the way the host calls a loaded library.

#![allow(clippy::unwrap_used)]

use vlsbench_plugin_api::abi::host::{self, AbiMismatch, Instance};
use vlsbench_plugin_api::abi::{BackendTable, BackendTableV1_1, accepts_version};
use vlsbench_plugin_api::{
    ABI_MAJOR, ABI_MINOR, Backend, BackendConfig, BackendError, BackendInfo, ErrorKind, GenerateRequest, Generation,
    GenerationSettings, ItemResult,
};

/// Echoes each request's id; panics on the id `"panic"`, and in `create` when the checkpoint says so.
struct Echo {
    prefix: String,
}

impl Backend for Echo {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: "echo".into(),
            version: "1.0".into(),
            description: "test".into(),
            archs: vec!["echo".into()],
            max_batch: 4,
            concurrent: true,
            devices: vec!["cpu".into()],
            checkpoint_is_path: false,
            path_options: vec!["file".into()],
            message_layouts: Default::default(),
        }
    }

    fn create(config: BackendConfig) -> Result<Self, BackendError> {
        if config.checkpoint.as_deref() == Some("panic") {
            panic!("create panics on purpose");
        }
        let file = config.options.get("file").and_then(|f| f.as_str()).unwrap_or("-");
        Ok(Self { prefix: format!("{}:{file}", config.arch) })
    }

    fn generate(&self, requests: Vec<GenerateRequest>) -> Vec<Result<Generation, BackendError>> {
        requests
            .into_iter()
            .map(|r| match r.id.as_str() {
                "panic" => panic!("generate panics on purpose"),
                "bad" => Err(BackendError::bad_request("bad item")),
                id => Ok(Generation::new(format!("{} {id}", self.prefix))),
            })
            .collect()
    }

    fn check(config: &BackendConfig) -> Result<Vec<String>, BackendError> {
        if config.checkpoint.as_deref() == Some("unready") {
            return Err(BackendError::bad_config("checkpoint \"unready\" is not ready"));
        }
        let file = config.options.get("file").and_then(|f| f.as_str()).unwrap_or("-");
        Ok(vec![format!("would read {file}")])
    }
}

vlsbench_plugin_api::export_backend!(Echo);

fn table() -> &'static BackendTable {
    // SAFETY: the entry point of this binary returns its static table.
    unsafe { host::checked_table(vlsbench_backend_entry()) }.unwrap().unwrap()
}

fn config(checkpoint: &str) -> BackendConfig {
    BackendConfig {
        arch: "echo".into(),
        checkpoint: Some(checkpoint.into()),
        device: None,
        dtype: None,
        options: serde_json::json!({"file": "answers.jsonl"}),
        base_dir: "/manifests".into(),
    }
}

fn request(id: &str) -> GenerateRequest {
    GenerateRequest {
        id: id.into(),
        messages: vec![],
        settings: GenerationSettings::reference(),
        response_format: None,
    }
}

#[test]
fn a_request_round_trips_through_the_export_macro_and_the_table() {
    let table = table();
    assert_eq!((table.abi_major, table.abi_minor), (ABI_MAJOR, ABI_MINOR));
    // SAFETY: the table is this binary's, static.
    let info = unsafe { host::describe(table) }.unwrap();
    assert_eq!(info.name, "echo");
    // SAFETY: as above.
    let instance = unsafe { Instance::create(table, &config("x")) }.unwrap();
    let results = instance.generate(&[request("1"), request("bad"), request("2")]).unwrap();
    // The path option arrives resolved against the manifest's folder.
    assert_eq!(results[0], ItemResult::Ok(Generation::new("echo:/manifests/answers.jsonl 1")));
    assert!(matches!(&results[1], ItemResult::Err(e) if e.kind == ErrorKind::BadRequest));
    assert_eq!(results[2], ItemResult::Ok(Generation::new("echo:/manifests/answers.jsonl 2")));
}

#[test]
fn a_panic_comes_back_as_the_panic_error_kind() {
    let table = table();
    // SAFETY: the table is this binary's, static.
    let instance = unsafe { Instance::create(table, &config("x")) }.unwrap();
    let err = instance.generate(&[request("panic")]).expect_err("a panic");
    assert_eq!(err.kind, ErrorKind::Panic);
    assert!(err.message.contains("generate panics on purpose"), "{}", err.message);
    // SAFETY: as above.
    let err = unsafe { Instance::create(table, &config("panic")) }.err().unwrap();
    assert_eq!(err.kind, ErrorKind::Panic);
    // The instance still serves after a caught panic.
    assert!(instance.generate(&[request("3")]).is_ok());
}

#[test]
fn a_wrong_version_is_refused() {
    let mut newer = BackendTable::for_backend::<Echo>();
    newer.abi_minor = ABI_MINOR + 1;
    let newer: &'static BackendTable = Box::leak(Box::new(newer));
    // SAFETY: a static table.
    let refused = unsafe { host::checked_table(newer) }.err();
    assert_eq!(refused, Some(AbiMismatch { major: ABI_MAJOR, minor: ABI_MINOR + 1 }));
    let mut other_major = BackendTable::for_backend::<Echo>();
    other_major.abi_major = ABI_MAJOR + 1;
    other_major.abi_minor = 0;
    let other_major: &'static BackendTable = Box::leak(Box::new(other_major));
    // SAFETY: a static table.
    assert!(unsafe { host::checked_table(other_major) }.is_err());
    assert!(accepts_version(ABI_MAJOR, 0) && !accepts_version(ABI_MAJOR + 1, 0));
    // SAFETY: null is allowed.
    assert!(matches!(unsafe { host::checked_table(std::ptr::null()) }, Ok(None)));
}

#[test]
fn check_sees_the_config_create_will_get_and_says_what_it_found_or_why_create_would_fail() {
    let table = table();
    // SAFETY: the table is this binary's, static.
    let lines = unsafe { host::check(table, &config("x")) }.unwrap();
    assert_eq!(lines, ["would read /manifests/answers.jsonl"]);
    // SAFETY: as above.
    let err = unsafe { host::check(table, &config("unready")) }.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadConfig);
    assert!(err.message.contains("\"unready\" is not ready"), "{}", err.message);
}

#[test]
fn a_plugin_of_abi_1_1_is_read_without_reading_past_its_table_and_checks_nothing() {
    let full = BackendTable::for_backend::<Echo>();
    let old: &'static BackendTableV1_1 = Box::leak(Box::new(BackendTableV1_1 {
        abi_major: ABI_MAJOR,
        abi_minor: 1,
        describe: full.describe,
        create: full.create,
        generate: full.generate,
        destroy: full.destroy,
        free_buffer: full.free_buffer,
    }));
    let pointer = std::ptr::from_ref(old).cast::<BackendTable>();
    // SAFETY: a static table of the 1.1 layout, as its minor version says.
    let table = unsafe { host::checked_table(pointer) }.unwrap().unwrap();
    assert_eq!((table.abi_major, table.abi_minor), (ABI_MAJOR, 1));
    // SAFETY: as above; the same table is upgraded once.
    let again = unsafe { host::checked_table(pointer) }.unwrap().unwrap();
    assert!(std::ptr::eq(table, again));
    // SAFETY: a version-checked table.
    assert_eq!(unsafe { host::describe(table) }.unwrap().name, "echo");
    // SAFETY: as above.
    assert_eq!(unsafe { host::check(table, &config("unready")) }.unwrap(), Vec::<String>::new());
    // SAFETY: as above.
    let instance = unsafe { Instance::create(table, &config("x")) }.unwrap();
    let results = instance.generate(&[request("1")]).unwrap();
    assert_eq!(results[0], ItemResult::Ok(Generation::new("echo:/manifests/answers.jsonl 1")));
}
