//! Write [Cairn] blueprints in Rust.
//!
//! A blueprint is a WebAssembly component that the Cairn runtime runs, sandboxed, to back up
//! and restore one application: quiesce a database, stream a dump into an export, snapshot
//! volumes, put everything back. This crate is the Rust side of the `cairn:blueprint` WIT
//! contract ([`WIT_VERSION`]): implement [`Blueprint`], name your type in [`export!`], and
//! build with `cargo build --target wasm32-wasip2`. The generated bindings stay inside the
//! SDK; a blueprint crate depends on `cairn-sdk` alone.
//!
//! Where to start:
//!
//! - [`Description`] (with [`Param`] and [`Capability`]) says what the blueprint is, which
//!   actions it has, which parameters it takes and which capabilities it needs. The operator
//!   grants capabilities per run; a call to one that was not granted fails with
//!   [`Error::Denied`].
//! - [`Context`] is what an action runs with: typed parameters, its namespace and workload,
//!   the outputs of earlier phases and, for `restore`, the restore point's artifacts.
//! - One module per capability: [`exec`] runs commands in the workload, [`workloads`] reads
//!   and scales workloads, [`volumes`] snapshots volumes, [`data`] streams a command's output
//!   into an export (and back), [`secrets`] reads granted secrets. Logging
//!   ([`info!`] and friends) and [`progress`] are always allowed.
//! - An action returns [`Outputs`]: [`Artifact`]s and values that later phases and the
//!   restore point keep (a backup's restore point keeps the main phase's and the posthook's).
//!   [`checkpoint`] records a value at once, so the posthook sees it even when the phase fails
//!   or times out; [`sleep`] waits between polls, bounded by the phase's deadline.
//!
//! # Example
//!
//! ```no_run
//! use cairn_sdk::exec::Command;
//! use cairn_sdk::{Artifact, Blueprint, Capability, Context, Description, Error, Outputs};
//! use cairn_sdk::{Param, Progress, Result};
//!
//! struct Greeter;
//!
//! impl Blueprint for Greeter {
//!     fn describe() -> Description {
//!         Description::new("greeter", "0.1.0")
//!             .describe("Says hello inside the workload")
//!             .action("backup", "Greets and records the answer")
//!             .param(Param::text("greeting").default("hello").describe("What to say"))
//!             .capability(Capability::Exec)
//!     }
//!
//!     fn run(action: &str, ctx: &Context) -> Result<Outputs> {
//!         match action {
//!             "backup" => {
//!                 let greeting = ctx.text("greeting")?;
//!                 let output = Command::new(["echo", greeting]).run()?.ok()?;
//!                 cairn_sdk::info!("{} said {}", output.pod, output.stdout_str().trim());
//!                 cairn_sdk::progress(Progress::percent(100.0).message("greeted"));
//!                 let answer = Artifact::new("greeting")
//!                     .value("pod", &output.pod)
//!                     .value("stdout", output.stdout_str().trim());
//!                 Ok(Outputs::new().artifact(answer))
//!             }
//!             other => Err(Error::unknown_action(other)),
//!         }
//!     }
//! }
//!
//! cairn_sdk::export!(Greeter);
//! ```
//!
//! Off `wasm32` (unit tests, `cargo clippy` on the host) the crate still compiles: logging
//! goes to stderr, every other host call returns [`Error::Failed`], and [`export!`] exports
//! nothing. [`Context::builder`] makes a context for testing an action natively, and
//! [`testing::FakeHost`] runs it with its host calls answered in memory.
//!
//! [Cairn]: https://github.com/cairn-dr/cairn
#![deny(missing_docs)]

// The generated bindings and the export macro refer to this crate as `::cairn_sdk`.
extern crate self as cairn_sdk;

mod context;
mod describe;
mod error;
mod logging;
mod outputs;
mod wit;

pub mod catalog;
pub mod data;
pub mod exec;
pub mod params;
pub mod secrets;
pub mod testing;
pub mod volumes;
pub mod workloads;

pub use crate::context::{Context, ContextBuilder, FromParam, ParamValue, Phase};
pub use crate::describe::{Capability, Description, Param, ParamKind, lifecycle};
pub use crate::error::{Error, Result};
pub use crate::logging::{Level, Progress, log, progress, sleep};
pub use crate::outputs::{Artifact, Outputs, checkpoint};
pub use crate::workloads::WorkloadRef;

/// The version of the `cairn:blueprint` WIT package this SDK is built against; also the
/// default [`Description::requires_runtime`].
pub const WIT_VERSION: &str = "0.1.0";

/// A blueprint: what it declares, and how it runs an action.
///
/// Both functions are associated functions: every action runs in a fresh instance, so there is
/// no state to keep between them. Export the implementing type with [`export!`].
pub trait Blueprint {
    /// Describes the blueprint: its name, version, actions, parameters and the capabilities
    /// it needs. Called by `cairn blueprint inspect` and before every run; it must not call
    /// any host function other than logging.
    fn describe() -> Description;

    /// Runs `action` (one phase of a lifecycle, such as `backupPrehook` or `backup`, or a
    /// custom action) and returns what it produced. Answer an action the blueprint does not
    /// have with [`Error::unknown_action`].
    fn run(action: &str, ctx: &Context) -> Result<Outputs>;
}

/// Exports a [`Blueprint`] implementation as the component's `guest` interface.
///
/// Use it once, at the root of a `cdylib` crate built for `wasm32-wasip2`:
///
/// ```no_run
/// # use cairn_sdk::{Blueprint, Context, Description, Error, Outputs, Result};
/// struct Noop;
///
/// impl Blueprint for Noop {
///     fn describe() -> Description {
///         Description::new("noop", env!("CARGO_PKG_VERSION")).action("backup", "Does nothing")
///     }
///     fn run(_action: &str, _ctx: &Context) -> Result<Outputs> {
///         Ok(Outputs::new())
///     }
/// }
///
/// cairn_sdk::export!(Noop);
/// ```
///
/// Off `wasm32` the macro only checks that the type implements [`Blueprint`].
#[macro_export]
macro_rules! export {
    ($blueprint:ty) => {
        const _: () = {
            fn __cairn_assert_blueprint<T: $crate::Blueprint>() {}
            let _ = __cairn_assert_blueprint::<$blueprint>;
        };
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __CairnBlueprint = $crate::__private::Adapter<$blueprint>;
            $crate::__private::bindings::__export_blueprint!(
                __CairnBlueprint with_types_in $crate::__private::bindings
            );
        };
    };
}

/// Logs at [`Level::Error`], formatting like [`format!`].
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log($crate::Level::Error, &::std::format!($($arg)+)) };
}

/// Logs at [`Level::Warn`], formatting like [`format!`].
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)+)) };
}

/// Logs at [`Level::Info`], formatting like [`format!`].
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log($crate::Level::Info, &::std::format!($($arg)+)) };
}

/// Logs at [`Level::Debug`], formatting like [`format!`].
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)+)) };
}

/// Logs at [`Level::Trace`], formatting like [`format!`].
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log($crate::Level::Trace, &::std::format!($($arg)+)) };
}

/// What [`export!`] expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::wit::bindings;

    use crate::wit::bindings::exports::cairn::blueprint::guest as wit;
    use crate::{Blueprint, Context};
    use std::marker::PhantomData;

    /// Adapts a [`Blueprint`] to the generated `Guest` trait.
    #[derive(Debug)]
    pub struct Adapter<T>(PhantomData<T>);

    impl<T: Blueprint> wit::Guest for Adapter<T> {
        fn describe() -> wit::Description {
            T::describe().into()
        }

        fn run(action: String, inputs: wit::Inputs) -> Result<wit::Outputs, wit::Error> {
            // A panic is one error line in the run's log: std's hook would print several to
            // stderr (each a log line), with a RUST_BACKTRACE hint a blueprint cannot follow.
            std::panic::set_hook(Box::new(|info| {
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(no message)");
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                crate::log(
                    crate::Level::Error,
                    &format!(
                        "the blueprint panicked{at}: {}",
                        message.replace('\n', "; ")
                    ),
                );
            }));
            let ctx = Context::from_wit(action, inputs, &T::describe());
            let result = T::run(ctx.action(), &ctx);
            // std buffers stdout up to a newline; the instance ends without flushing it, and
            // the host logs what it gets when the phase ends.
            let _ = std::io::Write::flush(&mut std::io::stdout());
            result.map(Into::into).map_err(Into::into)
        }
    }
}
