//! The Cairn engine: runs blueprints — WebAssembly components built against the
//! `cairn:blueprint` WIT contract — in a sandboxed, bounded wasmtime host.
//!
//! Start with [`Engine::new`], then [`Engine::load`] a component into a [`Blueprint`] (checked,
//! compiled or fetched from the on-disk compile cache, and described once), then
//! [`Engine::run`] an action with a [`HostContext`] (the cluster, where exports go, the audit
//! log and an event sink) and a [`RunRequest`] (target, parameters, grants, [`Limits`]).
//!
//! # What the host guarantees
//!
//! - **No ambient authority.** WASI p2 is linked with nothing granted (no preopens, network,
//!   environment or arguments); guest stdout and stderr go to the action's log. Every Cairn
//!   host call checks the [`Capability`] grant and the action's scope (its namespace and
//!   workload) first.
//! - **Everything is bounded.** An epoch deadline per phase (checked every [`EPOCH_TICK`],
//!   yielding to tokio at each tick so a spinning guest does not starve others), a timeout on
//!   every host call, a memory cap, and caps on exec output, log volume and returned outputs.
//!   See [`Limits`].
//! - **Lifecycle.** `backup` on a blueprint that defines `backupPrehook`/`backupPosthook` runs
//!   all three; the posthook runs even when the earlier phases fail, trap or time out.
//! - **Audit.** Every side-effecting host call appends one hash-chained JSON line to the
//!   [`AuditLog`].
//!
//! # Which failures a guest sees, and which trap
//!
//! A host call returns the WIT `error` variant for everything about the *request*: a missing
//! grant or a target outside the scope (`denied`), an unknown object (`not-found`), malformed
//! arguments or sizes over a cap (`invalid`), a call that ran past its timeout
//! (`timed-out`), and any backend failure (`failed`). A blueprint can match on those and
//! recover. Only faults of the host itself trap the guest: a resource handle the host does not
//! hold, or a broken invariant in the store. Deadlines and the memory cap stop the guest
//! (a trap the guest cannot catch) and the run reports them by name.

mod audit;
mod bindings;
mod blueprint;
mod cache;
mod capability;
mod catalog;
mod engine;
mod error;
mod events;
mod exports;
mod host;
mod limits;
mod params;
mod run;
mod state;
mod version;

pub use audit::{AuditLog, AuditRecord};
pub use blueprint::{
    ActionSpec, Blueprint, Description, LoadedFrom, ParamKind, ParamSpec, component_digest,
};
pub use cairn_contract::{HOST_TAG_KEYS, controls_escaped};
pub use capability::Capability;
pub use catalog::{
    CatalogAccess, CatalogApplied, CatalogError, CatalogExport, CatalogSnapshot, DrMode, DrState,
};
pub use engine::{DEFAULT_MAX_INSTANCES, Engine, EngineConfig};
pub use error::{Error, Result};
pub use events::{Event, EventKind, EventSink, LogLevel, Progress};
pub use exports::{Artifact, DirExports, ExportWriter, Exports, ReferenceKeys};
pub use limits::{
    DEFAULT_DEADLINE, DEFAULT_EXEC_OUTPUT, DEFAULT_EXEC_TIMEOUT, DEFAULT_HOST_CALL_TIMEOUT,
    DEFAULT_LOG_BYTES, DEFAULT_MEMORY, DEFAULT_OUTPUT_BYTES, DEFAULT_POSTHOOK_DEADLINE, EPOCH_TICK,
    Limits, MAX_DATA_IO, MAX_DEADLINE, MAX_MEMORY, MAX_STDIN,
};
pub use params::check_params;
pub use run::{HostContext, Interrupt, Outputs, PhaseReport, PhaseStatus, RunReport, RunRequest};
pub use version::{Semver, WIT_VERSION, version_order};
