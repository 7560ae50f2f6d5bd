//! The C ABI of native backends, version [`ABI_MAJOR`].[`ABI_MINOR`].
//!
//! A backend library exports one symbol, [`ENTRY_SYMBOL`], a function returning a pointer to a
//! static [`BackendTable`]. The table's first two fields are the ABI version; the host accepts the
//! same major and a minor up to its own. The table only grows at its end.
//!
//! Payloads are UTF-8 JSON in [`RawBuffer`]s. A buffer is freed by the side that allocated it: the
//! plugin allocates every output buffer and the host hands it back through `free_buffer`. Every
//! function returns a status ([`STATUS_OK`] or [`STATUS_ERR`]); on error the output buffer holds a
//! JSON [`BackendError`]. Panics are caught at the boundary and come back as
//! [`ErrorKind::Panic`](crate::ErrorKind::Panic) errors.
//!
//! Authors never touch this module: they implement [`Backend`] and call [`export_backend!`](crate::export_backend).

use std::any::Any;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::types::{
    BackendConfig, BackendError, BackendInfo, Description, ErrorKind, GenerateRequest, Generation, ItemResult,
    OptionSpec,
};

/// Major version: a host refuses a plugin of another major.
pub const ABI_MAJOR: u16 = 1;
/// Minor version: a host accepts plugins of its major with a minor up to its own. 1.1 added
/// `BackendInfo.message_layouts` (a JSON field with a default: 1.0 plugins still load). Two more
/// optional JSON fields came without a version change, since either side ignores them when it does
/// not know them: the description's `options` ([`Backend::options`]) and each answer's `id` (the
/// request's id, so the host can spot an answer put in another item's slot). 1.2 added
/// [`BackendTable::check`] at the table's end ([`Backend::check`]); the host gives a 1.0 or 1.1
/// table (which ends before it) a `check` that finds nothing ([`host::checked_table`]).
pub const ABI_MINOR: u16 = 2;
/// The one symbol a backend exports (NUL-terminated, for `dlsym`).
pub const ENTRY_SYMBOL: &[u8] = b"vlsbench_backend_entry\0";

/// The call succeeded; the output buffer holds the JSON result.
pub const STATUS_OK: i32 = 0;
/// The call failed; the output buffer holds a JSON [`BackendError`].
pub const STATUS_ERR: i32 = 1;

/// A byte buffer allocated by the plugin (a `Vec<u8>`'s parts).
#[repr(C)]
#[derive(Debug)]
pub struct RawBuffer {
    /// Start of the bytes.
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
    /// Capacity of the allocation (needed to free it).
    pub cap: usize,
}

impl RawBuffer {
    /// A buffer holding nothing (the slot the callee fills).
    pub const fn empty() -> Self {
        Self { ptr: std::ptr::null_mut(), len: 0, cap: 0 }
    }

    fn from_vec(v: Vec<u8>) -> Self {
        let mut v = std::mem::ManuallyDrop::new(v);
        Self { ptr: v.as_mut_ptr(), len: v.len(), cap: v.capacity() }
    }

    /// Copies the bytes out.
    ///
    /// # Safety
    /// `ptr` must be null or valid for `len` bytes.
    pub unsafe fn to_vec(&self) -> Vec<u8> {
        if self.ptr.is_null() || self.len == 0 {
            return Vec::new();
        }
        // SAFETY: the caller promises ptr is valid for len bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }.to_vec()
    }
}

/// Signature of [`ENTRY_SYMBOL`].
pub type EntryFn = unsafe extern "C" fn() -> *const BackendTable;

/// The table a backend exports. Fields are only ever added at the end.
#[repr(C)]
pub struct BackendTable {
    /// [`ABI_MAJOR`] of the plugin.
    pub abi_major: u16,
    /// [`ABI_MINOR`] of the plugin.
    pub abi_minor: u16,
    /// Writes a JSON [`BackendInfo`] to `out`.
    pub describe: unsafe extern "C" fn(out: *mut RawBuffer) -> i32,
    /// Reads a JSON [`BackendConfig`], creates an instance, writes its handle to `handle`.
    pub create: unsafe extern "C" fn(
        config: *const u8,
        config_len: usize,
        handle: *mut *mut c_void,
        out: *mut RawBuffer,
    ) -> i32,
    /// Reads a JSON array of [`GenerateRequest`]s, writes a JSON array of [`ItemResult`]s, one per
    /// request in the same order.
    pub generate:
        unsafe extern "C" fn(handle: *mut c_void, requests: *const u8, requests_len: usize, out: *mut RawBuffer) -> i32,
    /// Drops an instance.
    pub destroy: unsafe extern "C" fn(handle: *mut c_void),
    /// Frees a buffer this plugin allocated.
    pub free_buffer: unsafe extern "C" fn(buffer: RawBuffer),
    /// ABI 1.2: reads a JSON [`BackendConfig`], checks what `create` will need without loading
    /// the model, writes a JSON array of lines to show (or an error).
    pub check: unsafe extern "C" fn(config: *const u8, config_len: usize, out: *mut RawBuffer) -> i32,
}

/// The table of ABI 1.0 and 1.1: [`BackendTable`] up to `free_buffer`. A host reads an older
/// plugin's table through this type, never past its end.
#[repr(C)]
pub struct BackendTableV1_1 {
    /// [`ABI_MAJOR`] of the plugin.
    pub abi_major: u16,
    /// The plugin's minor version, 0 or 1.
    pub abi_minor: u16,
    /// As [`BackendTable::describe`].
    pub describe: unsafe extern "C" fn(out: *mut RawBuffer) -> i32,
    /// As [`BackendTable::create`].
    pub create: unsafe extern "C" fn(
        config: *const u8,
        config_len: usize,
        handle: *mut *mut c_void,
        out: *mut RawBuffer,
    ) -> i32,
    /// As [`BackendTable::generate`].
    pub generate:
        unsafe extern "C" fn(handle: *mut c_void, requests: *const u8, requests_len: usize, out: *mut RawBuffer) -> i32,
    /// As [`BackendTable::destroy`].
    pub destroy: unsafe extern "C" fn(handle: *mut c_void),
    /// As [`BackendTable::free_buffer`].
    pub free_buffer: unsafe extern "C" fn(buffer: RawBuffer),
}

/// What a backend author implements. One instance serves one `[model]` (or `[judge.model]`)
/// section of a manifest.
pub trait Backend: Send + Sync + Sized + 'static {
    /// Name, version, archs, batch size, concurrency and devices. Must not load anything heavy.
    fn describe() -> BackendInfo;

    /// Loads the model (or builds the API client) that `config` names.
    fn create(config: BackendConfig) -> Result<Self, BackendError>;

    /// Answers a batch of at most `max_batch` requests: one result per request, in order.
    /// An error that concerns one request belongs in that request's slot.
    fn generate(&self, requests: Vec<GenerateRequest>) -> Vec<Result<Generation, BackendError>>;

    /// The options `[model.options]` may hold, so the host refuses a misspelt or mistyped option
    /// (naming the closest declared one) before it creates the backend. `None` (the default):
    /// not declared; the backend checks its options itself in `create`.
    fn options() -> Option<Vec<OptionSpec>> {
        None
    }

    /// Checks, without loading the model, what [`Backend::create`] will need that the host cannot
    /// see: a runtime library and its version, a device, the files a checkpoint must hold. The host
    /// calls it at `validate` and before a run creates its folder, with the same config `create`
    /// gets, so a run that cannot start says why before it starts. Returns lines for `validate` to
    /// print (what was found, e.g. a library's path and version). Default: nothing to check.
    fn check(config: &BackendConfig) -> Result<Vec<String>, BackendError> {
        let _ = config;
        Ok(Vec::new())
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

fn write_out(out: *mut RawBuffer, bytes: Vec<u8>) {
    if !out.is_null() {
        // SAFETY: the host passes a valid, writable RawBuffer.
        unsafe { out.write(RawBuffer::from_vec(bytes)) };
    }
}

fn error_json(e: &BackendError) -> Vec<u8> {
    serde_json::to_vec(e).unwrap_or_else(|_| br#"{"kind":"model_failure","message":"unserialisable error"}"#.to_vec())
}

/// Runs `f`, turning a panic or an error into [`STATUS_ERR`] with a JSON error in `out`.
fn guarded(out: *mut RawBuffer, f: impl FnOnce() -> Result<Vec<u8>, BackendError>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(bytes)) => {
            write_out(out, bytes);
            STATUS_OK
        }
        Ok(Err(e)) => {
            write_out(out, error_json(&e));
            STATUS_ERR
        }
        Err(payload) => {
            let e = BackendError::new(ErrorKind::Panic, format!("plugin panicked: {}", panic_message(&*payload)));
            write_out(out, error_json(&e));
            STATUS_ERR
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, BackendError> {
    serde_json::to_vec(v).map_err(|e| BackendError::model_failure(format!("cannot serialise the result: {e}")))
}

/// # Safety
/// Called by the host through the table only.
#[doc(hidden)]
pub unsafe extern "C" fn describe_impl<B: Backend>(out: *mut RawBuffer) -> i32 {
    guarded(out, || to_json(&Description { info: B::describe(), options: B::options() }))
}

/// # Safety
/// Called by the host through the table only.
#[doc(hidden)]
pub unsafe extern "C" fn create_impl<B: Backend>(
    config: *const u8,
    config_len: usize,
    handle: *mut *mut c_void,
    out: *mut RawBuffer,
) -> i32 {
    guarded(out, || {
        if config.is_null() || handle.is_null() {
            return Err(BackendError::bad_config("null pointer passed to create"));
        }
        // SAFETY: the host passes a buffer valid for config_len bytes.
        let bytes = unsafe { std::slice::from_raw_parts(config, config_len) };
        let mut config: BackendConfig = serde_json::from_slice(bytes)
            .map_err(|e| BackendError::bad_config(format!("backend config is not valid JSON for this ABI: {e}")))?;
        config.resolve_path_options(&B::describe().path_options);
        let instance = Box::new(B::create(config)?);
        // SAFETY: handle is a valid out pointer.
        unsafe { handle.write(Box::into_raw(instance).cast::<c_void>()) };
        Ok(Vec::new())
    })
}

/// # Safety
/// Called by the host through the table only.
#[doc(hidden)]
pub unsafe extern "C" fn check_impl<B: Backend>(config: *const u8, config_len: usize, out: *mut RawBuffer) -> i32 {
    guarded(out, || {
        if config.is_null() {
            return Err(BackendError::bad_config("null pointer passed to check"));
        }
        // SAFETY: the host passes a buffer valid for config_len bytes.
        let bytes = unsafe { std::slice::from_raw_parts(config, config_len) };
        let mut config: BackendConfig = serde_json::from_slice(bytes)
            .map_err(|e| BackendError::bad_config(format!("backend config is not valid JSON for this ABI: {e}")))?;
        config.resolve_path_options(&B::describe().path_options);
        to_json(&B::check(&config)?)
    })
}

/// The `check` a host puts in a 1.0 or 1.1 plugin's table: nothing to check, nothing written.
unsafe extern "C" fn check_nothing(_config: *const u8, _config_len: usize, _out: *mut RawBuffer) -> i32 {
    STATUS_OK
}

/// # Safety
/// Called by the host through the table only, with a handle from `create`.
#[doc(hidden)]
pub unsafe extern "C" fn generate_impl<B: Backend>(
    handle: *mut c_void,
    requests: *const u8,
    requests_len: usize,
    out: *mut RawBuffer,
) -> i32 {
    guarded(out, || {
        if handle.is_null() || requests.is_null() {
            return Err(BackendError::bad_request("null pointer passed to generate"));
        }
        // SAFETY: handle came from create_impl::<B> and is still alive.
        let backend = unsafe { &*handle.cast::<B>() };
        // SAFETY: the host passes a buffer valid for requests_len bytes.
        let bytes = unsafe { std::slice::from_raw_parts(requests, requests_len) };
        let requests: Vec<GenerateRequest> = serde_json::from_slice(bytes)
            .map_err(|e| BackendError::bad_request(format!("requests are not valid JSON for this ABI: {e}")))?;
        let n = requests.len();
        let ids: Vec<String> = requests.iter().map(|r| r.id.clone()).collect();
        let results: Vec<ItemResult> = backend.generate(requests).into_iter().map(ItemResult::from).collect();
        if results.len() != n {
            return Err(BackendError::model_failure(format!(
                "backend returned {} results for {n} requests",
                results.len()
            )));
        }
        to_json(&with_ids(&results, &ids)?)
    })
}

/// The results as JSON, each successful one carrying the id of its request (`{"ok": {..., "id":
/// "3"}}`), so the host can tell an answer put in another item's slot. Hosts before this field
/// ignore it.
pub fn with_ids(results: &[ItemResult], ids: &[String]) -> Result<Vec<serde_json::Value>, BackendError> {
    results
        .iter()
        .zip(ids)
        .map(|(r, id)| {
            let mut v = serde_json::to_value(r)
                .map_err(|e| BackendError::model_failure(format!("cannot serialise the result: {e}")))?;
            if let Some(ok) = v.get_mut("ok").and_then(serde_json::Value::as_object_mut) {
                ok.insert("id".into(), serde_json::Value::String(id.clone()));
            }
            Ok(v)
        })
        .collect()
}

/// # Safety
/// Called by the host through the table only, once per handle.
#[doc(hidden)]
pub unsafe extern "C" fn destroy_impl<B: Backend>(handle: *mut c_void) {
    if handle.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: handle came from create_impl::<B>; the host destroys it once.
        drop(unsafe { Box::from_raw(handle.cast::<B>()) });
    }));
}

/// # Safety
/// Called by the host with a buffer this plugin allocated.
#[doc(hidden)]
pub unsafe extern "C" fn free_buffer_impl(buffer: RawBuffer) {
    if buffer.ptr.is_null() {
        return;
    }
    // SAFETY: the buffer came from RawBuffer::from_vec in this library.
    drop(unsafe { Vec::from_raw_parts(buffer.ptr, buffer.len, buffer.cap) });
}

impl std::fmt::Debug for BackendTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTable").field("abi_major", &self.abi_major).field("abi_minor", &self.abi_minor).finish()
    }
}

impl BackendTable {
    /// The table for backend type `B`, at this crate's ABI version.
    pub const fn for_backend<B: Backend>() -> Self {
        Self {
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            describe: describe_impl::<B>,
            create: create_impl::<B>,
            generate: generate_impl::<B>,
            destroy: destroy_impl::<B>,
            free_buffer: free_buffer_impl,
            check: check_impl::<B>,
        }
    }
}

/// Exports a [`Backend`] implementation as a vlsbench backend library.
///
/// ```ignore
/// struct Echo;
/// impl vlsbench_plugin_api::Backend for Echo { /* ... */ }
/// vlsbench_plugin_api::export_backend!(Echo);
/// ```
#[macro_export]
macro_rules! export_backend {
    ($backend:ty) => {
        /// The vlsbench backend entry point.
        #[unsafe(no_mangle)]
        pub extern "C" fn vlsbench_backend_entry() -> *const $crate::abi::BackendTable {
            static TABLE: $crate::abi::BackendTable = $crate::abi::BackendTable::for_backend::<$backend>();
            &TABLE
        }
    };
}

/// Whether a host of this crate's ABI accepts a plugin of ABI `major.minor`: the same major and a
/// minor up to its own (the table only grows at its end).
pub fn accepts_version(major: u16, minor: u16) -> bool {
    major == ABI_MAJOR && minor <= ABI_MINOR
}

/// Host side: safe calls through a table the host has already version-checked.
pub mod host {
    use super::*;

    /// The plugin's ABI version, when this host cannot use its table.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AbiMismatch {
        /// The plugin's major version.
        pub major: u16,
        /// The plugin's minor version.
        pub minor: u16,
    }

    /// The table an entry point returned, once its version is checked ([`accepts_version`]);
    /// `Ok(None)` for a null pointer. A 1.0 or 1.1 table ends before `check`: its fields are
    /// copied, once per table, into a full one whose `check` finds nothing.
    ///
    /// # Safety
    /// `table` must be null or point to a static table whose first two fields are the version
    /// numbers (true of every ABI version), of the layout its minor version says, in a library
    /// that is never unloaded.
    pub unsafe fn checked_table(table: *const BackendTable) -> Result<Option<&'static BackendTable>, AbiMismatch> {
        if table.is_null() {
            return Ok(None);
        }
        // SAFETY: the first two fields of every ABI version's table are the version numbers, and
        // they are read through the oldest layout, which every table has.
        let (major, minor) = unsafe {
            let old = table.cast::<BackendTableV1_1>();
            ((*old).abi_major, (*old).abi_minor)
        };
        if !accepts_version(major, minor) {
            return Err(AbiMismatch { major, minor });
        }
        if minor < 2 {
            // SAFETY: a 1.0 or 1.1 table has the V1_1 layout; the caller guarantees it is static.
            return Ok(Some(upgraded(unsafe { &*table.cast::<BackendTableV1_1>() })));
        }
        // SAFETY: version checked; the caller guarantees the table is static.
        Ok(Some(unsafe { &*table }))
    }

    /// The full table standing for an older one, made once per table and kept (libraries are
    /// never unloaded).
    fn upgraded(old: &'static BackendTableV1_1) -> &'static BackendTable {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        static MADE: OnceLock<Mutex<HashMap<usize, &'static BackendTable>>> = OnceLock::new();
        let mut made = MADE.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        made.entry(std::ptr::from_ref(old) as usize).or_insert_with(|| {
            Box::leak(Box::new(BackendTable {
                abi_major: old.abi_major,
                abi_minor: old.abi_minor,
                describe: old.describe,
                create: old.create,
                generate: old.generate,
                destroy: old.destroy,
                free_buffer: old.free_buffer,
                check: check_nothing,
            }))
        })
    }

    /// Takes an output buffer back from the plugin, copying its bytes and freeing it there.
    ///
    /// # Safety
    /// `table` must be the table of the library that filled `buf`.
    unsafe fn take(table: &BackendTable, buf: RawBuffer) -> Vec<u8> {
        // SAFETY: the buffer came from this plugin.
        let bytes = unsafe { buf.to_vec() };
        // SAFETY: same plugin, freed once.
        unsafe { (table.free_buffer)(buf) };
        bytes
    }

    fn decode_error(bytes: &[u8]) -> BackendError {
        serde_json::from_slice(bytes).unwrap_or_else(|e| {
            BackendError::model_failure(format!(
                "plugin returned an unreadable error ({e}): {}",
                String::from_utf8_lossy(bytes)
            ))
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(status: i32, bytes: &[u8], what: &str) -> Result<T, BackendError> {
        if status != STATUS_OK {
            return Err(decode_error(bytes));
        }
        serde_json::from_slice(bytes).map_err(|e| {
            BackendError::new(ErrorKind::InvalidResponse, format!("plugin returned unreadable {what}: {e}"))
        })
    }

    /// Calls `describe`.
    ///
    /// # Safety
    /// `table` must come from a loaded, version-checked backend library.
    pub unsafe fn describe(table: &BackendTable) -> Result<BackendInfo, BackendError> {
        // SAFETY: as for describe_full.
        unsafe { describe_full(table) }.map(|d| d.info)
    }

    /// Calls `describe`, keeping the declared options.
    ///
    /// # Safety
    /// `table` must come from a loaded, version-checked backend library.
    pub unsafe fn describe_full(table: &BackendTable) -> Result<Description, BackendError> {
        let mut out = RawBuffer::empty();
        // SAFETY: out is a valid buffer slot.
        let status = unsafe { (table.describe)(&mut out) };
        // SAFETY: out was filled by this plugin.
        let bytes = unsafe { take(table, out) };
        decode(status, &bytes, "description")
    }

    /// Calls `check` with the config `create` would get: the lines the backend has to show, or
    /// why `create` would fail. A plugin before ABI 1.2 checks nothing (no lines).
    ///
    /// # Safety
    /// `table` must come from a loaded, version-checked backend library.
    pub unsafe fn check(table: &BackendTable, config: &BackendConfig) -> Result<Vec<String>, BackendError> {
        if table.abi_minor < 2 {
            return Ok(Vec::new());
        }
        let json = serde_json::to_vec(config)
            .map_err(|e| BackendError::bad_config(format!("cannot serialise the config: {e}")))?;
        let mut out = RawBuffer::empty();
        // SAFETY: pointers are valid for the call; the table has `check` (minor >= 2).
        let status = unsafe { (table.check)(json.as_ptr(), json.len(), &mut out) };
        // SAFETY: out was filled by this plugin.
        let bytes = unsafe { take(table, out) };
        decode(status, &bytes, "check lines")
    }

    /// An instance created through a table. Destroyed on drop.
    pub struct Instance {
        table: &'static BackendTable,
        handle: *mut c_void,
    }

    // SAFETY: the handle is only used through the table; the host serialises calls when the
    // backend says it is not concurrent.
    unsafe impl Send for Instance {}
    // SAFETY: as above.
    unsafe impl Sync for Instance {}

    impl Instance {
        /// Calls `create`.
        ///
        /// # Safety
        /// `table` must come from a loaded, version-checked backend library that is never unloaded.
        pub unsafe fn create(table: &'static BackendTable, config: &BackendConfig) -> Result<Self, BackendError> {
            let json = serde_json::to_vec(config)
                .map_err(|e| BackendError::bad_config(format!("cannot serialise the config: {e}")))?;
            let mut handle: *mut c_void = std::ptr::null_mut();
            let mut out = RawBuffer::empty();
            // SAFETY: pointers are valid for the call.
            let status = unsafe { (table.create)(json.as_ptr(), json.len(), &mut handle, &mut out) };
            // SAFETY: out was filled by this plugin.
            let bytes = unsafe { take(table, out) };
            if status != STATUS_OK {
                return Err(decode_error(&bytes));
            }
            if handle.is_null() {
                return Err(BackendError::model_failure("plugin reported success but returned no instance"));
            }
            Ok(Self { table, handle })
        }

        /// Calls `generate` with a batch; one result per request.
        pub fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<ItemResult>, BackendError> {
            let json = serde_json::to_vec(requests)
                .map_err(|e| BackendError::bad_request(format!("cannot serialise the requests: {e}")))?;
            let mut out = RawBuffer::empty();
            // SAFETY: handle is alive; pointers are valid for the call.
            let status = unsafe { (self.table.generate)(self.handle, json.as_ptr(), json.len(), &mut out) };
            // SAFETY: out was filled by this plugin.
            let bytes = unsafe { take(self.table, out) };
            let raw: Vec<serde_json::Value> = decode(status, &bytes, "results")?;
            if raw.len() != requests.len() {
                return Err(BackendError::new(
                    ErrorKind::InvalidResponse,
                    format!("plugin returned {} results for {} requests", raw.len(), requests.len()),
                ));
            }
            Ok(raw.into_iter().zip(requests).map(|(v, req)| check_result(v, &req.id)).collect())
        }
    }

    #[cfg(test)]
    pub(super) fn check_result_for_tests(v: serde_json::Value, id: &str) -> ItemResult {
        check_result(v, id)
    }

    /// One result: an answer that names another request's id is an `invalid_response` for this
    /// item; an unreadable one too (the other items of the batch keep theirs).
    fn check_result(v: serde_json::Value, id: &str) -> ItemResult {
        if let Some(answered) = v.get("ok").and_then(|ok| ok.get("id"))
            && answered.as_str() != Some(id)
        {
            return ItemResult::Err(BackendError::new(
                ErrorKind::InvalidResponse,
                format!("the backend answered item {answered} in the slot of item {id:?}"),
            ));
        }
        serde_json::from_value(v).unwrap_or_else(|e| {
            ItemResult::Err(BackendError::new(
                ErrorKind::InvalidResponse,
                format!("plugin returned an unreadable result: {e}"),
            ))
        })
    }

    impl Drop for Instance {
        fn drop(&mut self) {
            // SAFETY: created by this table, destroyed once.
            unsafe { (self.table.destroy)(self.handle) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_their_request_id_and_an_answer_in_another_slot_is_an_error_for_that_item_only() {
        let results = vec![ItemResult::Ok(Generation::new("a")), ItemResult::Err(BackendError::bad_request("no"))];
        let ids = vec!["1".to_string(), "2".to_string()];
        let wire = with_ids(&results, &ids).expect("serialise");
        assert_eq!(wire[0]["ok"]["id"], "1");
        assert!(wire[1].get("err").is_some());
        // A host that predates the id reads the answer as before.
        let old: ItemResult = serde_json::from_value(wire[0].clone()).expect("old host");
        assert_eq!(old, results[0]);
        assert_eq!(host::check_result_for_tests(wire[0].clone(), "1"), results[0]);
        match host::check_result_for_tests(wire[0].clone(), "7") {
            ItemResult::Err(e) => {
                assert_eq!(e.kind, ErrorKind::InvalidResponse);
                assert!(e.message.contains(r#"answered item "1" in the slot of item "7""#), "{e}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        match host::check_result_for_tests(serde_json::json!({"ok": 3}), "1") {
            ItemResult::Err(e) => assert_eq!(e.kind, ErrorKind::InvalidResponse),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
