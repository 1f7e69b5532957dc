//! `cairn dr …`: Cairn's own disaster recovery.
//!
//! The DR step is a blueprint (`blueprints/dr`): `cairn dr run` runs its `backup` action and
//! `cairn dr restore` its `restore` action, with the capabilities `export`, `import` and
//! `catalog`, which the runtime grants to it alone. The host side is [`HomeCatalog`]: consistent
//! reads and writes of the home's catalog; what to export in each mode, the cursor and the
//! order of a recovery are the blueprint's.
//!
//! The DR blueprint's component comes from `--blueprint PATH` (or `CAIRN_DR_BLUEPRINT`),
//! defaulting to `dr.wasm` next to the `cairn` executable: build it with
//! `cargo build --release --target wasm32-wasip2 -p dr` and install
//! `target/wasm32-wasip2/release/dr.wasm` beside `cairn`.
//!
//! The DR location is a repository at `<profile>/<cluster-id>/`, opened with a passphrase key
//! slot (Argon2id), so every DR artifact is AES-256-GCM encrypted under a key derived from the
//! passphrase. Each DR run is a small set of repository snapshots: the data exports and one
//! `dr-point` manifest, sealed last; `review` lists the manifests.
//!
//! The DR settings live in the catalog's meta (`x.dr`): profile, mode, the passphrase *source*
//! (never the passphrase, unless the source is `raw:`), frequency and retention.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use cairn_catalog::{Catalog, Delta, DrClass, KindSet};
use cairn_engine::{
    Capability, CatalogAccess, CatalogApplied, CatalogError, CatalogExport, CatalogSnapshot,
    DrMode, DrState, HostContext, RunRequest,
};
use cairn_repository::{Location, Passphrase, Repository, SnapshotFilter};
use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::{Output, UsageError, exit};

/// The catalog meta key of the DR settings.
const CONFIG_KEY: &str = "dr";
/// The catalog meta key of the last DR run.
const LAST_RUN_KEY: &str = "dr.last-run";
/// The stream name of a DR point's manifest (the blueprint's `dr-point` export).
const MANIFEST: &str = "dr-point";
/// The first line of a manifest.
const MAGIC: &str = "cairn-dr-point 1";
/// The namespace DR runs are scoped to.
const NAMESPACE: &str = "cairn";

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// `cairn dr …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DrCommand {
    /// Turn DR on (or change its settings; a new mode or profile starts a new chain of points).
    Enable {
        /// Where DR points go: a repository URL or path; points go under `<URL>/<cluster-id>/`.
        #[arg(long, value_name = "URL")]
        profile: String,
        /// How each DR run protects the catalog.
        #[arg(long, default_value = "local-snapshot", value_parser = parse_mode)]
        mode: cairn_catalog::DrMode,
        /// Where the DR passphrase comes from: `raw:VALUE`, `env:VAR` or `file:PATH`.
        #[arg(long, value_name = "SOURCE")]
        passphrase_from: String,
        /// How often DR runs (kept with the policy; a scheduler runs `cairn dr run`).
        #[arg(long, default_value = "@hourly")]
        frequency: String,
        /// Hourly DR points to keep.
        #[arg(long, default_value_t = 24)]
        keep_hourly: u32,
        /// Daily DR points to keep.
        #[arg(long, default_value_t = 7)]
        keep_daily: u32,
        /// Weekly DR points to keep.
        #[arg(long, default_value_t = 4)]
        keep_weekly: u32,
        /// Monthly DR points to keep.
        #[arg(long, default_value_t = 12)]
        keep_monthly: u32,
        /// Yearly DR points to keep.
        #[arg(long, default_value_t = 0)]
        keep_yearly: u32,
    },
    /// Turn DR off (DR points already exported stay where they are).
    Disable,
    /// Run DR now: export the catalog per the mode, as one DR point.
    Run {
        #[command(flatten)]
        blueprint: BlueprintArg,
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show the cluster id, mode, profile and last run.
    Status {
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// List the DR points of a cluster, newest first (validates access).
    Review {
        #[command(flatten)]
        source: SourceArgs,
        /// Only points made before this time (RFC 3339), to step back past an incident.
        #[arg(long, value_name = "TIME")]
        before: Option<String>,
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Rebuild the catalog of this (empty) instance from a DR point.
    Restore {
        #[command(flatten)]
        source: SourceArgs,
        /// The DR point (id or unique prefix, from `review`); default: the latest.
        #[arg(long, value_name = "ID")]
        point: Option<String>,
        #[command(flatten)]
        blueprint: BlueprintArg,
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Make this instance the owner of backup-data maintenance (forget, prune, retention).
    TakeOwnership,
}

/// Where a recovery reads DR points from.
#[derive(Debug, clap::Args)]
pub(crate) struct SourceArgs {
    /// The DR location profile (the `--profile` DR was enabled with).
    #[arg(long, value_name = "URL")]
    profile: String,
    /// The cluster id of the lost instance (`cairn dr status` printed it).
    #[arg(long, value_name = "UUID")]
    cluster_id: String,
    /// Where the DR passphrase comes from: `raw:VALUE`, `env:VAR` or `file:PATH`.
    #[arg(long, value_name = "SOURCE")]
    passphrase_from: String,
}

/// The DR blueprint's component.
#[derive(Debug, clap::Args)]
pub(crate) struct BlueprintArg {
    /// The DR blueprint component; default: `dr.wasm` next to the cairn executable.
    #[arg(long = "blueprint", env = "CAIRN_DR_BLUEPRINT", value_name = "PATH")]
    path: Option<PathBuf>,
}

impl BlueprintArg {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.path {
            return Ok(path.clone());
        }
        let exe = std::env::current_exe().context("cannot find the cairn executable")?;
        let path = exe
            .parent()
            .map(|d| d.join("dr.wasm"))
            .unwrap_or_else(|| PathBuf::from("dr.wasm"));
        if !path.exists() {
            return Err(usage(format!(
                "no DR blueprint at {}: build it (cargo build --release --target wasm32-wasip2 -p dr) and \
                 install dr.wasm next to cairn, or pass --blueprint PATH",
                path.display()
            )));
        }
        Ok(path)
    }
}

fn parse_mode(s: &str) -> Result<cairn_catalog::DrMode, String> {
    s.parse()
        .map_err(|e: cairn_catalog::ParseNameError| e.to_string())
}

/// The DR settings, kept in the catalog's meta.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Config {
    profile: String,
    mode: cairn_catalog::DrMode,
    passphrase_from: String,
    frequency: String,
    retention: cairn_catalog::Retention,
}

/// The last DR run, kept in the catalog's meta.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LastRun {
    time: jiff::Timestamp,
    point: String,
    mode: cairn_catalog::DrMode,
    from: u64,
    to: u64,
}

fn load_config(catalog: &Catalog) -> anyhow::Result<Option<Config>> {
    catalog
        .meta(CONFIG_KEY)?
        .map(|text| {
            serde_json::from_str(&text)
                .context("the stored DR settings are damaged; run `cairn dr enable` again")
        })
        .transpose()
}

fn require_config(catalog: &Catalog) -> anyhow::Result<Config> {
    load_config(catalog)?.ok_or_else(|| {
        usage("DR is not enabled on this instance: run `cairn dr enable --profile URL --passphrase-from SOURCE` first")
    })
}

/// The passphrase a source names.
fn passphrase(source: &str) -> anyhow::Result<Passphrase> {
    let empty = || {
        usage(format!(
            "--passphrase-from {}: the passphrase is empty",
            shown_source(source)
        ))
    };
    let secret = if let Some(value) = source.strip_prefix("raw:") {
        value.to_owned()
    } else if let Some(var) = source.strip_prefix("env:") {
        std::env::var(var).map_err(|_| {
            usage(format!(
                "--passphrase-from env:{var}: the environment variable {var} is not set"
            ))
        })?
    } else if let Some(path) = source.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).map_err(|e| {
            usage(format!(
                "--passphrase-from file:{path}: cannot read it: {e}"
            ))
        })?;
        text.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        return Err(usage(format!(
            "--passphrase-from {}: expected raw:VALUE, env:VAR or file:PATH",
            shown_source(source)
        )));
    };
    if secret.is_empty() {
        return Err(empty());
    }
    Ok(Passphrase::new(secret))
}

/// A passphrase source as printed: a raw value is masked.
fn shown_source(source: &str) -> String {
    if source.starts_with("raw:") {
        "raw:****".to_owned()
    } else {
        source.to_owned()
    }
}

/// The DR location of `cluster_id` under `profile`.
fn location(profile: &str, cluster_id: &str) -> Location {
    Location::new(format!("{}/{cluster_id}", profile.trim_end_matches('/')))
}

/// Opens the DR repository of a recovery source, with errors that say which input is wrong.
async fn open_source(
    profile: &str,
    cluster_id: &str,
    key: &Passphrase,
) -> anyhow::Result<Repository> {
    let loc = location(profile, cluster_id);
    let url = loc.url().to_owned();
    Repository::open(loc, key).await.map_err(|e| match e {
        cairn_repository::Error::NotARepository { .. } => usage(format!(
            "no DR data for cluster {cluster_id} at {profile} (nothing at {url}): check --profile and --cluster-id"
        )),
        cairn_repository::Error::WrongPassphrase | cairn_repository::Error::WrongKey { .. } => usage(format!(
            "wrong DR passphrase for {url}: check --passphrase-from"
        )),
        other => anyhow::Error::new(other).context(format!("cannot open the DR location {url}")),
    })
}

/// One DR point, as `review` lists it.
#[derive(Debug, Clone, Serialize)]
struct Point {
    /// The manifest's repository snapshot id.
    id: String,
    time: jiff::Timestamp,
    mode: String,
    from: u64,
    to: u64,
    /// The data exports the point holds.
    exports: usize,
    #[serde(skip)]
    cluster_id: String,
}

fn parse_manifest(id: &str, text: &str) -> anyhow::Result<Point> {
    let bad = |why: &str| anyhow::anyhow!("DR point {id} is damaged: {why}");
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(bad("its manifest does not start with the DR point header"));
    }
    let (mut mode, mut from, mut to, mut time, mut cluster_id) = (None, None, None, None, None);
    let mut exports = 0;
    for line in lines {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| bad(&format!("`{line}` is not a number")))
        };
        match key {
            "mode" => mode = Some(value.to_owned()),
            "from" => from = Some(number()?),
            "to" => to = Some(number()?),
            "time" => time = Some(number()?),
            "cluster-id" => cluster_id = Some(value.to_owned()),
            "artifact" => exports += 1,
            _ => {}
        }
    }
    let time = time.ok_or_else(|| bad("no time"))?;
    Ok(Point {
        id: id.to_owned(),
        time: jiff::Timestamp::from_second(i64::try_from(time).unwrap_or(i64::MAX))
            .map_err(|e| bad(&e.to_string()))?,
        mode: mode.ok_or_else(|| bad("no mode"))?,
        from: from.ok_or_else(|| bad("no from"))?,
        to: to.ok_or_else(|| bad("no to"))?,
        exports,
        cluster_id: cluster_id.ok_or_else(|| bad("no cluster id"))?,
    })
}

/// Every DR point in `repo`, newest first. Only sealed points exist: a manifest is written last.
async fn points(repo: &Repository) -> anyhow::Result<Vec<Point>> {
    let snapshots = repo
        .snapshots(&SnapshotFilter::new().source(MANIFEST))
        .await
        .context("cannot list the DR points")?;
    let mut points = Vec::with_capacity(snapshots.len());
    for s in snapshots {
        let mut bytes = Vec::new();
        repo.restore_stream(&s.id, &mut bytes)
            .await
            .with_context(|| format!("cannot read DR point {}", s.id))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("DR point {} is damaged: not text", s.id))?;
        points.push(parse_manifest(&s.id, &text)?);
    }
    points.sort_by(|a, b| {
        b.to.cmp(&a.to)
            .then(b.time.cmp(&a.time))
            .then(b.id.cmp(&a.id))
    });
    Ok(points)
}

/// The host side of the `catalog` interface, over the home's catalog.
#[derive(Debug)]
struct HomeCatalog {
    catalog: Arc<Catalog>,
    mode: cairn_catalog::DrMode,
    snapshots: PathBuf,
}

fn failed(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Failed(e.to_string())
}

fn engine_mode(m: cairn_catalog::DrMode) -> DrMode {
    match m {
        cairn_catalog::DrMode::ExportedSnapshot => DrMode::ExportedSnapshot,
        cairn_catalog::DrMode::NoSnapshot => DrMode::NoSnapshot,
        cairn_catalog::DrMode::Legacy => DrMode::Legacy,
        _ => DrMode::LocalSnapshot,
    }
}

fn catalog_mode(m: DrMode) -> cairn_catalog::DrMode {
    match m {
        DrMode::ExportedSnapshot => cairn_catalog::DrMode::ExportedSnapshot,
        DrMode::NoSnapshot => cairn_catalog::DrMode::NoSnapshot,
        DrMode::Legacy => cairn_catalog::DrMode::Legacy,
        _ => cairn_catalog::DrMode::LocalSnapshot,
    }
}

fn encode(delta: &Delta) -> Result<CatalogExport, CatalogError> {
    Ok(CatalogExport {
        bytes: delta.to_bytes().map_err(failed)?,
        from_seq: delta.from_seq(),
        to_seq: delta.to_seq(),
        changes: delta.changes().len() as u64,
        full: delta.is_full(),
    })
}

impl HomeCatalog {
    /// The rolling local catalog snapshot: refreshed by each run (a cost that follows the
    /// changes since the previous run, not the catalog's size).
    fn snapshot_file(&self) -> PathBuf {
        self.snapshots.join("catalog.redb")
    }

    /// Opens snapshot `id` (`catalog-<seq>`), refusing ids this host did not hand out and
    /// snapshots a later run has superseded.
    fn open_snapshot(&self, id: &str) -> Result<Catalog, CatalogError> {
        let seq = id
            .strip_prefix("catalog-")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| CatalogError::Invalid(format!("`{id}` is not a catalog snapshot id")))?;
        let path = self.snapshot_file();
        if !path.exists() {
            return Err(CatalogError::NotFound(format!(
                "no local catalog snapshot `{id}`"
            )));
        }
        // Not verified on open: reading the whole file is what the refresh avoids, and the
        // file is one this instance wrote.
        let snapshot = Catalog::options()
            .verify(false)
            .open(&path)
            .map_err(failed)?;
        let cut = snapshot.current_seq().map_err(failed)?;
        if cut != seq {
            return Err(CatalogError::NotFound(format!(
                "local catalog snapshot `{id}` was superseded (the snapshot is now at change {cut})"
            )));
        }
        Ok(snapshot)
    }
}

impl CatalogAccess for HomeCatalog {
    fn state(&self) -> Result<DrState, CatalogError> {
        Ok(DrState {
            cluster_id: self.catalog.cluster_id().to_string(),
            mode: engine_mode(self.mode),
            cursor: self.catalog.dr_cursor().map_err(failed)?,
            current_seq: self.catalog.current_seq().map_err(failed)?,
        })
    }

    fn take_snapshot(&self) -> Result<CatalogSnapshot, CatalogError> {
        std::fs::create_dir_all(&self.snapshots)
            .map_err(|e| failed(format!("cannot create {}: {e}", self.snapshots.display())))?;
        let path = self.snapshot_file();
        let info = match self.catalog.refresh_snapshot(&path) {
            Ok(info) => info,
            // A snapshot that cannot be brought forward (of another catalog, cut before pruned
            // tombstones, damaged) is replaced by a new one.
            Err(e) => {
                tracing::warn!(error = %e, "replacing the local catalog snapshot");
                std::fs::remove_file(&path)
                    .map_err(|e| failed(format!("cannot remove {}: {e}", path.display())))?;
                self.catalog.snapshot_to(&path).map_err(failed)?
            }
        };
        Ok(CatalogSnapshot {
            id: format!("catalog-{}", info.seq),
            seq: info.seq,
            records: info.records,
            bytes: info.bytes,
        })
    }

    fn export_changes(
        &self,
        since: u64,
        mode: DrMode,
        snapshot: Option<&str>,
    ) -> Result<CatalogExport, CatalogError> {
        let mode = catalog_mode(mode);
        let delta = match snapshot {
            Some(id) => self.open_snapshot(id)?.export_minimal(since, mode),
            None => self.catalog.export_minimal(since, mode),
        }
        .map_err(from_catalog)?;
        encode(&delta)
    }

    fn export_snapshot(&self, snapshot: &str, since: u64) -> Result<CatalogExport, CatalogError> {
        let kinds = KindSet::of_classes(&[DrClass::WithCatalogSnapshot]);
        let delta = self
            .open_snapshot(snapshot)?
            .export_changes(since, kinds)
            .map_err(from_catalog)?;
        encode(&delta)
    }

    fn export_full(&self) -> Result<CatalogExport, CatalogError> {
        encode(&self.catalog.export_full().map_err(from_catalog)?)
    }

    fn advance_cursor(&self, to: u64) -> Result<(), CatalogError> {
        self.catalog.set_dr_cursor(to).map_err(from_catalog)
    }

    fn apply(&self, bytes: &[u8]) -> Result<CatalogApplied, CatalogError> {
        let delta = Delta::from_slice(bytes).map_err(from_catalog)?;
        let outcome = if delta.is_full() {
            self.catalog.import_full(&delta)
        } else {
            self.catalog.apply_delta(&delta)
        }
        .map_err(from_catalog)?;
        Ok(CatalogApplied {
            applied: outcome.applied,
            skipped: outcome.skipped,
            to_seq: delta.to_seq(),
        })
    }
}

fn from_catalog(e: cairn_catalog::Error) -> CatalogError {
    use cairn_catalog::Error as E;
    match e {
        E::BadDelta { .. }
        | E::DeltaGap { .. }
        | E::WrongSource { .. }
        | E::NotEmpty { .. }
        | E::NewerSchema { .. }
        | E::InvalidCursor { .. }
        | E::CursorTooOld { .. } => CatalogError::Invalid(e.to_string()),
        other => CatalogError::Failed(other.to_string()),
    }
}

/// Runs one action of the DR blueprint with the catalog and the DR repository.
async fn run_blueprint(
    home: &Home,
    path: &Path,
    catalog: Arc<Catalog>,
    mode: cairn_catalog::DrMode,
    exports: Arc<crate::exports::RepoExports>,
    action: &str,
    artifacts: Vec<cairn_engine::Artifact>,
) -> anyhow::Result<cairn_engine::RunReport> {
    let engine = crate::run::engine(home)?;
    let blueprint = crate::blueprint::load(&engine, path).await?;
    if blueprint.description().name != "dr" {
        return Err(usage(format!(
            "{} is the blueprint `{}`, not Cairn's DR blueprint `dr`",
            path.display(),
            blueprint.description().name
        )));
    }
    let dir = home.dr();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let inventory = dir.join("inventory.yaml");
    std::fs::write(
        &inventory,
        format!("namespaces:\n  {NAMESPACE}:\n    workloads: {{}}\n"),
    )
    .with_context(|| format!("cannot write {}", inventory.display()))?;
    let cluster = cairn_cluster::LocalCluster::from_inventory(&inventory, &dir.join("cluster"))
        .map_err(|e| anyhow::anyhow!("cannot set up the DR run's target: {e}"))?;
    let audit = Arc::new(
        cairn_engine::AuditLog::open(home.audit_log())
            .with_context(|| format!("cannot open the audit log {}", home.audit_log().display()))?,
    );
    let host = HostContext {
        cluster: Arc::new(cluster),
        exports,
        audit,
        events: crate::run::event_sink(),
        catalog: Some(Arc::new(HomeCatalog {
            catalog,
            mode,
            snapshots: dir.join("snapshots"),
        })),
    };
    let request = RunRequest {
        action: action.to_owned(),
        namespace: NAMESPACE.to_owned(),
        grants: [Capability::Export, Capability::Import, Capability::Catalog]
            .into_iter()
            .collect::<BTreeSet<_>>(),
        artifacts,
        ..RunRequest::default()
    };
    engine
        .run(&blueprint, &host, request)
        .await
        .map_err(|e| anyhow::anyhow!("cannot run the DR blueprint's {action}: {e}"))
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(crate) async fn run(cmd: DrCommand, home: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let home = Home::resolve(home)?;
    match cmd {
        DrCommand::Enable {
            profile,
            mode,
            passphrase_from,
            frequency,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
        } => {
            let key = passphrase(&passphrase_from)?;
            let catalog = crate::catalog::open(&home)?;
            let cluster_id = catalog.cluster_id().to_string();
            let loc = location(&profile, &cluster_id);
            let url = loc.url().to_owned();
            match Repository::open(loc.clone(), &key).await {
                Ok(_) => {}
                Err(cairn_repository::Error::NotARepository { .. }) => {
                    Repository::init(loc, &key, cairn_repository::InitOptions::new())
                        .await
                        .with_context(|| format!("cannot create the DR location {url}"))?;
                }
                Err(cairn_repository::Error::WrongPassphrase) => {
                    return Err(usage(format!(
                        "{url} already holds DR points under another passphrase: give that passphrase"
                    )));
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("cannot open the DR location {url}"))
                    );
                }
            }
            let previous = load_config(&catalog)?;
            let config = Config {
                profile: profile.clone(),
                mode,
                passphrase_from: passphrase_from.clone(),
                frequency,
                retention: cairn_catalog::Retention {
                    hourly: keep_hourly,
                    daily: keep_daily,
                    weekly: keep_weekly,
                    monthly: keep_monthly,
                    yearly: keep_yearly,
                },
            };
            let new_chain = previous
                .as_ref()
                .is_none_or(|p| p.mode != mode || p.profile != profile);
            catalog.set_meta(CONFIG_KEY, Some(&serde_json::to_string(&config)?))?;
            if new_chain {
                // A new mode or location starts a new chain of DR points, from the beginning.
                catalog.set_dr_cursor(0)?;
            }
            println!(
                "DR enabled: mode {mode}, runs {}, DR points go to {url}",
                config.frequency
            );
            println!("Keep these three things safe; recovering this instance needs all of them:");
            println!("  1. the cluster id:        {cluster_id}");
            println!(
                "  2. the passphrase source: {} (and the passphrase it holds)",
                shown_source(&passphrase_from)
            );
            println!("  3. the location profile:  {profile} (and its credentials)");
        }
        DrCommand::Disable => {
            let catalog = crate::catalog::open(&home)?;
            catalog.set_meta(CONFIG_KEY, None)?;
            println!("DR disabled; DR points already exported stay in the location");
        }
        DrCommand::Run { blueprint, output } => {
            let path = blueprint.resolve()?;
            let catalog = Arc::new(crate::catalog::open(&home)?);
            let config = require_config(&catalog)?;
            let key = passphrase(&config.passphrase_from)?;
            let cluster_id = catalog.cluster_id().to_string();
            let repo = open_source(&config.profile, &cluster_id, &key).await?;
            let url = location(&config.profile, &cluster_id).url().to_owned();
            let report = run_blueprint(
                &home,
                &path,
                catalog.clone(),
                config.mode,
                Arc::new(crate::exports::RepoExports::new(repo, url)),
                "backup",
                Vec::new(),
            )
            .await?;
            if !report.ok {
                let error = report.error.as_deref().unwrap_or("unknown error");
                if output == Output::Json {
                    print_json(&serde_json::json!({ "status": "failed", "error": error }))?;
                }
                eprintln!("cairn: the DR run failed: {error}");
                return Ok(ExitCode::from(exit::FAILED));
            }
            let point = report
                .outputs
                .artifacts
                .iter()
                .find(|a| a.name == MANIFEST)
                .and_then(|a| a.get("snapshot"))
                .unwrap_or_default()
                .to_owned();
            let number = |k: &str| {
                report
                    .outputs
                    .get(k)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let last = LastRun {
                time: jiff::Timestamp::now(),
                point: point.clone(),
                mode: config.mode,
                from: number("from"),
                to: number("to"),
            };
            catalog.set_meta(LAST_RUN_KEY, Some(&serde_json::to_string(&last)?))?;
            let bytes: u64 = report
                .outputs
                .artifacts
                .iter()
                .filter(|a| a.name != MANIFEST)
                .filter_map(|a| a.get("bytes").and_then(|b| b.parse::<u64>().ok()))
                .sum();
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "status": "succeeded",
                    "point": point,
                    "mode": config.mode,
                    "from": last.from,
                    "to": last.to,
                    "bytes": bytes,
                }))?,
                Output::Text => println!(
                    "DR point {point}: mode {}, changes {}..{}, {bytes} bytes exported",
                    config.mode, last.from, last.to
                ),
            }
        }
        DrCommand::Status { output } => {
            let catalog = crate::catalog::open(&home)?;
            let config = load_config(&catalog)?;
            let last: Option<LastRun> = catalog
                .meta(LAST_RUN_KEY)?
                .and_then(|t| serde_json::from_str(&t).ok());
            let restored = catalog.restore_state()?;
            let owner = catalog.maintenance_owner()?;
            let cluster_id = catalog.cluster_id().to_string();
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "cluster_id": cluster_id,
                    "enabled": config.is_some(),
                    "mode": config.as_ref().map(|c| c.mode),
                    "profile": config.as_ref().map(|c| c.profile.clone()),
                    "passphrase_from": config.as_ref().map(|c| shown_source(&c.passphrase_from)),
                    "frequency": config.as_ref().map(|c| c.frequency.clone()),
                    "retention": config.as_ref().map(|c| c.retention),
                    "cursor": catalog.dr_cursor()?,
                    "last_run": last,
                    "restored_from": restored.as_ref().map(|r| r.source.to_string()),
                    "maintenance_owner": owner,
                }))?,
                Output::Text => {
                    println!("cluster id:        {cluster_id}");
                    match &config {
                        Some(c) => {
                            println!("mode:              {}", c.mode);
                            println!("profile:           {}", c.profile);
                            println!("passphrase source: {}", shown_source(&c.passphrase_from));
                            println!("frequency:         {}", c.frequency);
                        }
                        None => println!("DR:                not enabled"),
                    }
                    match &last {
                        Some(l) => println!(
                            "last run:          {} (point {}, changes {}..{})",
                            l.time, l.point, l.from, l.to
                        ),
                        None => println!("last run:          never"),
                    }
                    if let Some(r) = &restored {
                        println!("restored from:     cluster {}", r.source);
                    }
                    println!(
                        "maintenance owner: {}",
                        if owner {
                            "yes"
                        } else {
                            "no (run `cairn dr take-ownership` to take over)"
                        }
                    );
                }
            }
        }
        DrCommand::Review {
            source,
            before,
            output,
        } => {
            check_cluster_id(&source.cluster_id)?;
            let key = passphrase(&source.passphrase_from)?;
            let repo = open_source(&source.profile, &source.cluster_id, &key).await?;
            let mut list = points(&repo).await?;
            if let Some(before) = &before {
                let limit: jiff::Timestamp = before.parse().map_err(|e| {
                    usage(format!(
                        "--before {before}: not an RFC 3339 time like 2026-12-01T10:00:00Z: {e}"
                    ))
                })?;
                let total = list.len();
                list.retain(|p| p.time < limit);
                if list.is_empty() {
                    return Err(usage(format!(
                        "no DR point before {before} (there are {total} after it): give a later --before"
                    )));
                }
            }
            if list.is_empty() {
                return Err(usage(format!(
                    "no DR points for cluster {} at {}: has `cairn dr run` ever run there?",
                    source.cluster_id, source.profile
                )));
            }
            match output {
                Output::Json => print_json(&list)?,
                Output::Text => {
                    for p in &list {
                        println!(
                            "{}  {}  {:<17}  changes {}..{}",
                            &p.id[..12.min(p.id.len())],
                            p.time,
                            p.mode,
                            p.from,
                            p.to
                        );
                    }
                }
            }
        }
        DrCommand::Restore {
            source,
            point,
            blueprint,
            output,
        } => {
            check_cluster_id(&source.cluster_id)?;
            let path = blueprint.resolve()?;
            let key = passphrase(&source.passphrase_from)?;
            let catalog = Arc::new(crate::catalog::open(&home)?);
            let resuming = catalog
                .restore_state()?
                .is_some_and(|r| r.source.to_string() == source.cluster_id);
            let changes = catalog.current_seq()?;
            if changes > 0 && !resuming {
                return Err(usage(format!(
                    "the instance at {} is not empty (its catalog has {changes} changes): restore into a fresh --home",
                    home.root().display()
                )));
            }
            let repo = open_source(&source.profile, &source.cluster_id, &key).await?;
            let list = points(&repo).await?;
            let chosen = match &point {
                None => list.first().cloned().ok_or_else(|| {
                    usage(format!(
                        "no DR points for cluster {} at {}: nothing to restore",
                        source.cluster_id, source.profile
                    ))
                })?,
                Some(id) => {
                    let found: Vec<&Point> = list
                        .iter()
                        .filter(|p| p.id.starts_with(id.as_str()))
                        .collect();
                    match found.as_slice() {
                        [one] => (*one).clone(),
                        [] => {
                            return Err(usage(format!(
                                "--point {id}: no such DR point; list them with `cairn dr review`"
                            )));
                        }
                        _ => {
                            return Err(usage(format!(
                                "--point {id}: more than one DR point starts with it; give more of the id"
                            )));
                        }
                    }
                }
            };
            if chosen.cluster_id != source.cluster_id {
                return Err(usage(format!(
                    "DR point {} belongs to cluster {}, not {}",
                    chosen.id, chosen.cluster_id, source.cluster_id
                )));
            }
            let artifact = |name: String, p: &Point| cairn_engine::Artifact {
                name,
                values: vec![
                    ("kind".into(), "repository".into()),
                    ("repository".into(), repo.id().to_owned()),
                    ("snapshot".into(), p.id.clone()),
                ],
            };
            let mut artifacts = vec![artifact("point".into(), &chosen)];
            for (i, p) in list
                .iter()
                .filter(|p| p.id != chosen.id && p.to <= chosen.from)
                .enumerate()
            {
                artifacts.push(artifact(format!("candidate-{i}"), p));
            }
            let mode = parse_mode(&chosen.mode)
                .map_err(|e| anyhow::anyhow!("DR point {}: {e}", chosen.id))?;
            let url = location(&source.profile, &source.cluster_id)
                .url()
                .to_owned();
            let report = run_blueprint(
                &home,
                &path,
                catalog.clone(),
                mode,
                Arc::new(crate::exports::RepoExports::new(repo, url)),
                "restore",
                artifacts,
            )
            .await?;
            if !report.ok {
                let error = report.error.as_deref().unwrap_or("unknown error");
                if output == Output::Json {
                    print_json(&serde_json::json!({ "status": "failed", "error": error }))?;
                }
                eprintln!("cairn: the DR restore failed: {error}");
                return Ok(ExitCode::from(exit::FAILED));
            }
            let counts = catalog.counts()?;
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "status": "succeeded",
                    "point": chosen,
                    "counts": counts,
                    "maintenance_owner": catalog.maintenance_owner()?,
                }))?,
                Output::Text => {
                    println!(
                        "restored DR point {} (mode {}, up to change {}) of cluster {}",
                        chosen.id, chosen.mode, chosen.to, source.cluster_id
                    );
                    println!(
                        "this instance does not own maintenance of the backup data yet: run `cairn dr take-ownership` \
                         once the old instance is gone for good"
                    );
                }
            }
        }
        DrCommand::TakeOwnership => {
            let catalog = crate::catalog::open(&home)?;
            catalog.set_maintenance_owner(true)?;
            println!(
                "this instance ({}) now owns maintenance of the backup data: forget, prune and retention run here; \
                 make sure no other instance does",
                catalog.cluster_id()
            );
        }
    }
    Ok(ExitCode::from(exit::OK))
}

fn check_cluster_id(id: &str) -> anyhow::Result<()> {
    uuid::Uuid::parse_str(id).map(drop).map_err(|_| {
        usage(format!(
            "--cluster-id {id}: not a cluster id (a UUID, as `cairn dr status` prints it)"
        ))
    })
}
