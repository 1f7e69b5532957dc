//! The shared engine: wasmtime configuration, the epoch ticker, loading and checking
//! components, and the per-digest `InstancePre` cache.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tracing::Instrument;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};

use crate::bindings;
use crate::blueprint::{Blueprint, Description, Loaded, LoadedFrom};
use crate::cache::CompileCache;
use crate::error::{BoxError, Error, Result};
use crate::events::EventSink;
use crate::limits::{EPOCH_TICK, Limits, MAX_MEMORY};
use crate::run::{HostContext, RunReport, RunRequest};
use crate::state::{ActionCtx, HostState};
use crate::version::{RUNTIME_VERSION, Semver, WIT_PACKAGE, WIT_VERSION};

/// How many guest instances may be alive at once by default (each action phase holds one).
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;

/// The deadline of `describe()` at load time: it only builds a record.
const DESCRIBE_DEADLINE: Duration = Duration::from_secs(10);

/// The wasm stack a guest may use. Deep enough for any honest blueprint; unbounded
/// recursion hits it and traps with a stack overflow long before the host's stack is at risk.
const MAX_WASM_STACK: usize = 1 << 20;

/// The native stack of each guest fiber: the wasm stack plus room for host calls.
const ASYNC_STACK: usize = MAX_WASM_STACK + (1 << 20);

/// Bytes of each pooled linear memory, table and async stack kept resident (reset with memset)
/// when an instance ends, so the next instance in the slot does not page-fault them back in:
/// what a typical blueprint touches in a short action.
const KEEP_RESIDENT: usize = 1 << 20;

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where compiled components are cached across runs; `None` compiles every load.
    pub cache_dir: Option<PathBuf>,
    /// How many guest instances may run at once (the pooling allocator's size).
    pub max_instances: u32,
    /// Use the pooling allocator (falls back to on-demand allocation when the machine
    /// refuses the reservation).
    pub pooling: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cache_dir: None,
            max_instances: DEFAULT_MAX_INSTANCES,
            pooling: true,
        }
    }
}

impl EngineConfig {
    /// A default configuration with a compile cache in `dir`.
    pub fn with_cache_dir(dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            cache_dir: Some(dir.into()),
            ..EngineConfig::default()
        }
    }
}

/// The shared engine. Create one per process; it is `Send + Sync` and every method takes
/// `&self`.
pub struct Engine {
    pub(crate) wasm: wasmtime::Engine,
    linker: Linker<HostState>,
    cache: Option<CompileCache>,
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    pooling: bool,
    _ticker: Ticker,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cache", &self.cache)
            .field("pooling", &self.pooling)
            .finish_non_exhaustive()
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct Ticker {
    _stop: mpsc::Sender<()>,
}

impl Ticker {
    fn start(engine: wasmtime::Engine) -> Result<Ticker> {
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("cairn-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })
            .map_err(|e| Error::Engine {
                source: Box::new(e),
            })?;
        Ok(Ticker { _stop: stop })
    }
}

fn wasm_config(pooling: Option<u32>) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // Blueprints are linear-memory components; the workspace builds wasmtime with `gc` but no
    // collector, so GC types stay off.
    config.gc_support(false);
    config.max_wasm_stack(MAX_WASM_STACK);
    config.async_stack_size(ASYNC_STACK);
    if let Some(n) = pooling {
        let mut pool = PoolingAllocationConfig::new();
        // A Rust component has a handful of core instances and tables and one or two
        // memories; size the pools so `n` components fit.
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .total_gc_heaps(n)
            .max_memory_size(MAX_MEMORY)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

fn boxed(e: wasmtime::Error) -> BoxError {
    e.into_boxed_dyn_error()
}

impl Engine {
    /// Creates the engine: wasmtime with async support, epoch interruption, and the pooling
    /// allocator where the machine allows it; starts the epoch ticker; opens the compile cache.
    pub fn new(config: EngineConfig) -> Result<Engine> {
        let (wasm, pooling) = if config.pooling {
            match wasmtime::Engine::new(&wasm_config(Some(config.max_instances))) {
                Ok(engine) => (engine, true),
                Err(e) => {
                    tracing::warn!(error = %e, "the pooling allocator is unavailable here; allocating on demand");
                    (
                        wasmtime::Engine::new(&wasm_config(None))
                            .map_err(|e| Error::Engine { source: boxed(e) })?,
                        false,
                    )
                }
            }
        } else {
            (
                wasmtime::Engine::new(&wasm_config(None))
                    .map_err(|e| Error::Engine { source: boxed(e) })?,
                false,
            )
        };
        let mut linker = Linker::<HostState>::new(&wasm);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| Error::Engine { source: boxed(e) })?;
        bindings::Blueprint::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| Error::Engine { source: boxed(e) })?;
        let cache = config
            .cache_dir
            .as_deref()
            .map(|dir| CompileCache::open(dir, &wasm))
            .transpose()?;
        let ticker = Ticker::start(wasm.clone())?;
        Ok(Engine {
            wasm,
            linker,
            cache,
            loaded: Mutex::new(HashMap::new()),
            pooling,
            _ticker: ticker,
        })
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Reads and loads the component at `path` (see [`Engine::load`]).
    pub async fn load_file(&self, path: &Path) -> Result<Blueprint> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| Error::io("reading the blueprint", path, e))?;
        self.load_named(&bytes, &path.display().to_string()).await
    }

    /// Loads a component: checks it is a component built against a compatible
    /// `cairn:blueprint` and that every import can be satisfied, compiles it (or takes it from
    /// the compile cache), and calls `describe()` once.
    pub async fn load(&self, wasm: &[u8]) -> Result<Blueprint> {
        self.load_named(wasm, "the blueprint").await
    }

    /// Forgets the in-memory instance of a blueprint, so that the next load of the same bytes
    /// goes to the compile cache (or compiles).
    pub fn evict(&self, digest: &str) {
        self.lock_loaded().remove(digest);
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Loaded>>> {
        match self.loaded.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    async fn load_named(&self, wasm: &[u8], what: &str) -> Result<Blueprint> {
        check_header(wasm, what)?;
        let digest = crate::blueprint::component_digest(wasm);
        let digest_hex = digest.trim_start_matches("sha256:").to_owned();
        if let Some(loaded) = self.lock_loaded().get(&digest) {
            return Ok(Blueprint {
                inner: loaded.clone(),
                loaded_from: LoadedFrom::Memory,
            });
        }
        let span = tracing::info_span!("load", blueprint = %digest, source = what);
        self.compile_and_check(wasm, digest, digest_hex)
            .instrument(span)
            .await
    }

    async fn compile_and_check(
        &self,
        wasm: &[u8],
        digest: String,
        digest_hex: String,
    ) -> Result<Blueprint> {
        let start = Instant::now();
        let (component, loaded_from) = match self
            .cache
            .as_ref()
            .and_then(|c| c.get(&self.wasm, &digest_hex))
        {
            Some(component) => (component, LoadedFrom::DiskCache),
            None => {
                // Compiling is CPU-bound and takes long: keep it off the async workers.
                let engine = self.wasm.clone();
                let bytes = wasm.to_vec();
                let component =
                    tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
                        .await
                        .map_err(|e| Error::Host(format!("the compile task failed: {e}")))?
                        .map_err(|e| Error::Compile { source: boxed(e) })?;
                if let Some(cache) = &self.cache {
                    cache.put(&digest_hex, &component);
                }
                (component, LoadedFrom::Compiled)
            }
        };
        tracing::debug!(from = ?loaded_from, elapsed = ?start.elapsed(), "component ready");
        let wit_version = check_contract(&self.wasm, &component)?;
        let pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| Error::UnsatisfiedImports {
                    names: vec![format!("{e:#}")],
                })?;
        let pre = bindings::BlueprintPre::new(pre).map_err(|e| Error::NotABlueprint {
            ours: WIT_VERSION.into(),
            found: format!("; its `guest` export does not match the contract: {e:#}"),
        })?;
        let description = self.describe_pre(&pre, &digest).await?;
        if let Some(reason) = crate::exports::name_problem(&description.name) {
            return Err(Error::BadBlueprintName {
                name: description.name.clone(),
                reason: reason.into(),
            });
        }
        if let Some(problem) = description.problem() {
            return Err(Error::BadDescription(problem));
        }
        let too_new = matches!(
            (Semver::parse(&description.min_runtime), Semver::parse(RUNTIME_VERSION)),
            (Some(needed), Some(ours)) if needed > ours
        );
        let loaded = Arc::new(Loaded {
            digest: digest.clone(),
            wit_version,
            description,
            pre,
        });
        if too_new {
            // Not kept among the loaded: it is never run.
            return Err(Error::RuntimeTooOld {
                needed: loaded.description.min_runtime.clone(),
                ours: RUNTIME_VERSION.into(),
                blueprint: Box::new(Blueprint {
                    inner: loaded,
                    loaded_from,
                }),
            });
        }
        let loaded = self.lock_loaded().entry(digest).or_insert(loaded).clone();
        Ok(Blueprint {
            inner: loaded,
            loaded_from,
        })
    }

    /// A fresh store for one phase: its limits, its deadline, and the tick-by-tick yield.
    pub(crate) fn store(
        &self,
        ctx: Arc<ActionCtx>,
        sink: EventSink,
        deadline: Instant,
    ) -> Store<HostState> {
        let mut store = Store::new(&self.wasm, HostState::new(ctx, sink, deadline));
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            if Instant::now() >= state.deadline {
                state.deadline_hit = true;
                return Err(wasmtime::format_err!("the phase ran past its deadline"));
            }
            // Yield to tokio at every tick so a spinning guest shares its worker thread.
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        store
    }

    /// Instantiates `blueprint` in a fresh store and calls `describe()` again: a health check
    /// of a loaded blueprint, and the engine's warm-dispatch path without any host calls.
    pub async fn describe(&self, blueprint: &Blueprint) -> Result<Description> {
        self.describe_pre(&blueprint.inner.pre, blueprint.digest())
            .await
    }

    async fn describe_pre(
        &self,
        pre: &bindings::BlueprintPre<HostState>,
        digest: &str,
    ) -> Result<Description> {
        let ctx = Arc::new(ActionCtx {
            action_id: "describe".into(),
            phase: "describe".into(),
            blueprint: digest.into(),
            blueprint_name: String::new(),
            namespace: String::new(),
            workload: None,
            grants: BTreeSet::new(),
            declared: BTreeSet::new(),
            secrets: Default::default(),
            hidden: Default::default(),
            limits: Limits::default(),
            deadline: DESCRIBE_DEADLINE,
            host: None,
            sessions: Default::default(),
            references: Default::default(),
            taken: Default::default(),
            snapshots_taken: Default::default(),
            deleted_snapshots: Default::default(),
            exports_opened: Default::default(),
        });
        let mut store = self.store(
            ctx,
            EventSink::discard(),
            Instant::now() + DESCRIBE_DEADLINE,
        );
        let call = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance
                .cairn_blueprint_guest()
                .call_describe(&mut store)
                .await
        };
        // The epoch deadline stops wasm code, not a guest blocked in a host call (a WASI
        // sleep): the call is dropped a little after it.
        match tokio::time::timeout(DESCRIBE_DEADLINE + Duration::from_secs(2), call).await {
            Ok(Ok(d)) => Ok(Description::from(d)),
            Ok(Err(e)) => Err(Error::Describe {
                reason: crate::run::trap_reason(&e, store.data()),
            }),
            Err(_) => Err(Error::Describe {
                reason: format!(
                    "describe() did not return within {} s (it blocked in a host call); it must \
                     only say what the blueprint is",
                    DESCRIBE_DEADLINE.as_secs()
                ),
            }),
        }
    }

    /// Runs an action (with its prehook and posthook, when the blueprint has them).
    ///
    /// A run that fails because of the blueprint returns `Ok` with `ok: false` and a one-line
    /// reason; `Err` is for requests that cannot start (unknown action, bad parameters,
    /// impossible limits) and host faults.
    pub async fn run(
        &self,
        blueprint: &Blueprint,
        host: &HostContext,
        request: RunRequest,
    ) -> Result<RunReport> {
        crate::run::run(self, blueprint, host, request).await
    }
}

/// Checks the bytes are a component before handing them to the compiler.
fn check_header(wasm: &[u8], what: &str) -> Result<()> {
    let not = |reason: &str| {
        Err(Error::NotAComponent {
            what: what.to_string(),
            reason: reason.to_string(),
        })
    };
    if wasm.starts_with(b"\x7fELF") || wasm.starts_with(b"MZ") || wasm.starts_with(&[0xcf, 0xfa]) {
        return not(
            "it is a native library or program, not WebAssembly; build the blueprint with \
             `cairn blueprint build DIR` (or cargo build --target wasm32-wasip2)",
        );
    }
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return not(
            "it does not start with the WebAssembly magic bytes (\\0asm); is it the right file?",
        );
    }
    match wasm[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => not(
            "it is a core WebAssembly module; build the blueprint for `wasm32-wasip2` (cargo build --target \
             wasm32-wasip2), or wrap the module with `wasm-tools component new`",
        ),
        _ => not("it has an unknown WebAssembly version or layer"),
    }
}

/// Checks the component's `cairn:blueprint` imports and exports name a version this runtime
/// supports, that it exports the guest interface, and that it imports nothing else but WASI
/// p2. Returns the contract version it was built against.
fn check_contract(engine: &wasmtime::Engine, component: &Component) -> Result<String> {
    let ty = component.component_type();
    let ours =
        Semver::parse(WIT_VERSION).ok_or_else(|| Error::Host("malformed WIT_VERSION".into()))?;
    let prefix = format!("{WIT_PACKAGE}/");
    let mut found: Option<String> = None;
    let mut check = |name: &str| -> Result<bool> {
        let Some(rest) = name.strip_prefix(&prefix) else {
            return Ok(false);
        };
        let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
        // A pre-release of the contract (or a build of it) is another contract: only ours.
        let released = !version.contains(['-', '+']) || version == WIT_VERSION;
        match Semver::parse(version) {
            Some(v) if released && ours.accepts(v) => {
                found.get_or_insert_with(|| version.to_string());
                Ok(true)
            }
            _ => Err(Error::IncompatibleWit {
                found: if version.is_empty() {
                    "(no version)".into()
                } else {
                    version.to_string()
                },
                supported: ours.accepted_range(),
                ours: WIT_VERSION.into(),
            }),
        }
    };
    let mut unsupported = Vec::new();
    for (name, _) in ty.imports(engine) {
        let cairn = check(name)?;
        let known_cairn = cairn
            && matches!(
                name.strip_prefix(&prefix).and_then(|r| r.split('@').next()),
                Some(
                    "types"
                        | "log"
                        | "exec"
                        | "workloads"
                        | "volumes"
                        | "data"
                        | "secrets"
                        | "catalog"
                )
            );
        let wasi = name.starts_with("wasi:")
            && name
                .rsplit_once('@')
                .is_some_and(|(_, v)| v.starts_with("0.2."));
        if !(known_cairn || wasi) {
            unsupported.push(name.to_string());
        }
    }
    let mut guest = false;
    let mut exports = Vec::new();
    for (name, _) in ty.exports(engine) {
        exports.push(name.to_string());
        if check(name)?
            && name
                .strip_prefix(&prefix)
                .is_some_and(|r| r.starts_with("guest@"))
        {
            guest = true;
        }
    }
    if !guest {
        let found = if exports.is_empty() {
            "; it exports nothing".to_string()
        } else {
            format!("; it exports {}", exports.join(", "))
        };
        return Err(Error::NotABlueprint {
            ours: WIT_VERSION.into(),
            found,
        });
    }
    if !unsupported.is_empty() {
        return Err(Error::UnsatisfiedImports { names: unsupported });
    }
    Ok(found.unwrap_or_else(|| WIT_VERSION.into()))
}
