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

/// Calls the host through `call`, converting its error; for a call the fake host does not
/// model (the DR catalog's).
///
/// Off `wasm32` there is no host: wit-bindgen's stubs would panic, so `call` is never run and
/// the caller gets [`Error::Failed`] naming `what` instead. That keeps a blueprint's native
/// unit tests from aborting when they reach a host call.
pub(crate) fn host<T>(
    what: &str,
    call: impl FnOnce() -> Result<T, types::Error>,
) -> crate::Result<T> {
    faked(what, String::new, call, |_| {
        Err(Error::failed(format!(
            "{what}: the fake host does not model it"
        )))
    })
}

/// [`host`], answered off `wasm32` by `fake` when a [`FakeHost`](crate::testing::FakeHost)
/// runs the action, which records the call as `what` and `detail`.
pub(crate) fn faked<T>(
    what: &str,
    detail: impl FnOnce() -> String,
    call: impl FnOnce() -> Result<T, types::Error>,
    fake: impl FnOnce(&mut crate::testing::Fake) -> crate::Result<T>,
) -> crate::Result<T> {
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (what, detail, fake);
        call().map_err(Error::from)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = call;
        crate::testing::answer(what, detail, fake).unwrap_or_else(|| {
            Err(Error::failed(format!(
                "{what}: host calls need the Cairn runtime (this build is not wasm32; \
                 cairn_sdk::testing::FakeHost runs an action with a fake one)"
            )))
        })
    }
}

/// The host's resource behind a stream: always there on `wasm32`; absent under a fake host,
/// whose streams are numbered instead.
pub(crate) fn live<T>(resource: Option<&T>) -> Result<&T, types::Error> {
    resource.ok_or_else(|| types::Error::Failed("the stream is not the host's".to_owned()))
}
