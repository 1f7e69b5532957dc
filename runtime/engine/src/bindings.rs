//! The host side of the `cairn:blueprint` contract, generated once from `wit/`.
//!
//! The engine binds the `dr` world: everything the `blueprint` world imports, plus `catalog`.
//! It is a superset, so a plain blueprint (which imports a subset) instantiates against it
//! unchanged; `catalog` calls are refused unless the runtime granted the capability.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "dr",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "cairn:blueprint/data.export-stream": crate::host::data::ExportStreamState,
        "cairn:blueprint/data.import-stream": crate::host::data::ImportStreamState,
    },
});

pub(crate) use cairn::blueprint::{catalog, data, exec, log, secrets, types, volumes, workloads};
pub(crate) use exports::cairn::blueprint::guest;

/// The world the engine links every component against.
pub(crate) use Dr as Blueprint;
/// A component pre-instantiated against [`Blueprint`].
pub(crate) use DrPre as BlueprintPre;

/// The WIT error variant, as host functions return it.
pub(crate) type WitError = types::Error;

/// A host function's result: the outer `Err` traps the guest, the inner one is guest-visible.
pub(crate) type HostResult<T> = wasmtime::Result<Result<T, WitError>>;
