//! The host side of the `cairn:blueprint` contract, generated once from `wit/`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "blueprint",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "cairn:blueprint/data.export-stream": crate::host::data::ExportStreamState,
        "cairn:blueprint/data.import-stream": crate::host::data::ImportStreamState,
    },
});

pub(crate) use cairn::blueprint::{data, exec, log, secrets, types, volumes, workloads};
pub(crate) use exports::cairn::blueprint::guest;

/// The WIT error variant, as host functions return it.
pub(crate) type WitError = types::Error;

/// A host function's result: the outer `Err` traps the guest, the inner one is guest-visible.
pub(crate) type HostResult<T> = wasmtime::Result<Result<T, WitError>>;
