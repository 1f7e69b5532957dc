//! The generated bindings, and the host-call shim every capability module goes through.

/// Bindings generated from `wit/` for the `dr` world (the `blueprint` world plus the
/// catalog; a component keeps only the imports it uses, so a blueprint that never calls
/// [`catalog`](crate::catalog) imports exactly what the `blueprint` world offers). Hidden: the SDK's own types are
/// the API; these change with wit-bindgen.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unsafe_code,
    clippy::all,
    clippy::unwrap_used
)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "dr",
        pub_export_macro: true,
        export_macro_name: "__export_blueprint",
        default_bindings_module: "::cairn_sdk::__private::bindings",
    });
}

pub(crate) use bindings::cairn::blueprint::types;

use crate::Error;

/// Calls the host through `call`, converting its error.
///
/// Off `wasm32` there is no host: wit-bindgen's stubs would panic, so `call` is never run and
/// the caller gets [`Error::Failed`] naming `what` instead. That keeps a blueprint's native
/// unit tests from aborting when they reach a host call.
pub(crate) fn host<T>(
    what: &str,
    call: impl FnOnce() -> Result<T, types::Error>,
) -> crate::Result<T> {
    #[cfg(target_arch = "wasm32")]
    {
        let _ = what;
        call().map_err(Error::from)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = call;
        Err(Error::failed(format!(
            "{what}: host calls need the Cairn runtime (this build is not wasm32)"
        )))
    }
}
