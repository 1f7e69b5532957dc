//! The engine's error type: what stopped a blueprint from loading, or a run from starting.
//!
//! A run that *starts* and then fails because of the blueprint (a guest error, a trap, a
//! deadline, a denied call) is not an [`Error`]: it is a [`crate::RunReport`] with `ok: false`.

use std::path::PathBuf;

/// A boxed error source (wasmtime's error type does not implement `std::error::Error`).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the engine could not load a blueprint or start a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a WebAssembly component (garbage, or a core module).
    #[error("{what} is not a WebAssembly component: {reason}")]
    NotAComponent {
        /// The file or "the blueprint".
        what: String,
        /// What it is instead, and what to do.
        reason: String,
    },
    /// The component was built against a `cairn:blueprint` version this runtime cannot run.
    #[error(
        "the blueprint was built against cairn:blueprint@{found} but this runtime supports \
         {supported}; rebuild it against cairn:blueprint@{ours} (the wit/ of this release, or \
         its cairn-sdk), or run it on a Cairn that supports {found}"
    )]
    IncompatibleWit {
        /// The version the component names.
        found: String,
        /// What this runtime accepts, e.g. `0.1.0 to 0.1.2`.
        supported: String,
        /// This runtime's own version of the contract.
        ours: String,
    },
    /// The component does not export `cairn:blueprint/guest` (`describe` and `run`).
    #[error(
        "the component does not export cairn:blueprint/guest@{ours} (`describe` and `run`), so \
         it is not a Cairn blueprint{found}; export the `blueprint` world's `guest` interface \
         (with the Rust SDK: `cairn_sdk::export!(YourType);`)"
    )]
    NotABlueprint {
        /// This runtime's version of the contract.
        ours: String,
        /// What it exports instead, starting with "; it exports " (or empty).
        found: String,
    },
    /// The blueprint's `describe()` gave a name that cannot name it in exports and policies.
    #[error(
        "the blueprint's describe() names it {name:?}, which cannot be used: {reason}; fix the \
         name its author passes to the SDK's Description"
    )]
    BadBlueprintName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The blueprint's `describe()` declares something the host cannot use: a parameter it
    /// cannot check, a default its own parameter refuses, a name given twice.
    #[error("the blueprint's describe() is invalid: {0}; fix it in the blueprint")]
    BadDescription(String),
    /// The component imports something this runtime does not provide.
    #[error("the blueprint imports what this runtime does not provide: {}", .names.join(", "))]
    UnsatisfiedImports {
        /// The import names.
        names: Vec<String>,
    },
    /// The blueprint needs a newer runtime.
    #[error("the blueprint needs Cairn runtime {needed} or newer; this is {ours}")]
    RuntimeTooOld {
        /// The blueprint's `min-runtime`.
        needed: String,
        /// This runtime's version.
        ours: String,
        /// The blueprint, loaded and described, to be shown (`cairn blueprint inspect`),
        /// never run.
        blueprint: Box<crate::Blueprint>,
    },
    /// Compiling the component failed.
    #[error("compiling the blueprint failed: {source}")]
    Compile {
        /// Why.
        #[source]
        source: BoxError,
    },
    /// Instantiating or describing the blueprint failed at load time.
    #[error("describing the blueprint failed: {reason}")]
    Describe {
        /// Why, in one line.
        reason: String,
    },
    /// The requested action is not one the blueprint describes.
    #[error("the blueprint has no action {action:?}; it has: {}", .available.join(", "))]
    UnknownAction {
        /// What was asked for.
        action: String,
        /// What the blueprint describes.
        available: Vec<String>,
    },
    /// A `--param` does not match the blueprint's declared parameters.
    #[error("{0}")]
    InvalidParam(String),
    /// A capability name that does not exist.
    #[error(
        "unknown capability {0:?}; expected one of exec, workloads, scale, volumes, export, \
         import, secrets"
    )]
    UnknownCapability(String),
    /// A limit that the engine cannot honour (for example a memory cap above [`crate::MAX_MEMORY`]).
    #[error("invalid limit: {0}")]
    InvalidLimit(String),
    /// An export or artifact name that is malformed or would escape its directory.
    #[error("invalid export name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An artifact that the export store does not hold, or does not understand.
    #[error("artifact {name:?} cannot be used: {reason}")]
    BadArtifact {
        /// The artifact's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A file operation failed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The wasmtime engine could not be configured.
    #[error("creating the wasmtime engine failed: {source}")]
    Engine {
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A host fault while running (not the blueprint's doing).
    #[error("host fault: {0}")]
    Host(String),
    /// What the action asked the export store for does not exist (a deleted export); the
    /// blueprint sees `not-found`.
    #[error("{0}")]
    NotFound(String),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
