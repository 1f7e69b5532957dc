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
//! (never the passphrase, unless the source is `raw:`), frequency and retention. Each DR point
//! carries them too (a `raw:` source without its value), and `cairn dr restore` brings them
//! back, disabled until the operator takes ownership or enables DR again.
//!
//! Retention of DR points, and when a run starts a new chain, are the blueprint's (its
//! `retention` module): `cairn dr run` passes it the manifests in the location and the policy.
//!
//! The registered blueprints' components are the runtime's to carry: before the blueprint runs,
//! `cairn dr run` exports each one the location lacks as a `blueprint/sha256-<hex>.wasm` stream
//! snapshot (once: the name is the digest), and after a recovery `cairn dr restore` writes those
//! the restored registrations name into the new home, checked against their digests. The
//! blueprint never sees them (nor owner markers), so its retention keeps them.
//!
//! # Ownership
//!
//! `cairn dr take-ownership` writes an owner marker into the DR location of the data it takes
//! over: an `owner` stream snapshot in the repository at `<profile>/<cluster-id>/`, naming the
//! instance (its cluster id, host and home) and the time; the newest marker wins. It is
//! encrypted like every DR artifact, so only a holder of the passphrase can write or read it.
//! Every maintenance path (`cairn dr run` and its retention, `cairn repo forget|prune`) reads
//! the markers of the locations the instance relates to (its own DR location, and the one it
//! was restored from) and refuses when one names another instance.
//!
//! # One writer per location
//!
//! A copied home or a cloned machine keeps the cluster id, so it writes into the same
//! location, and a chain holding two homes' points restores a mixture neither had. Each run
//! records in the catalog's meta (`x.dr.known-points`) the manifests it listed and sealed, and
//! before it runs, its own id, which the blueprint writes into the manifest (a run that sealed
//! its point and died is known by it). A run that finds a manifest this home neither knew nor
//! sealed refuses, naming when and on which host it was saved; `cairn dr enable
//! --accept-points` then accepts the points there and starts a new chain (a plain `dr enable`
//! does not), or another `--profile` gives this home a location of its own. The first run in a
//! location trusts what is there. A manifest of a run of this home's that was not recorded is
//! recorded as soon as a run finds it; a run that failed and sealed nothing is forgotten.
//!
//! # Lineage
//!
//! Each manifest names, in its `after` line, the manifest of the point its run followed. Two
//! histories in one location (accepted points, a catalog put back) share change numbers, so
//! points are linked by that line, not by numbers: a restore's chain, retention, the order of
//! `review` (by change within a history; by when they were saved between histories, with a
//! warning) and a standby moved forward, which must extend the point it applied.

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
use cairn_repository::{
    BackupOptions, KeyProvider, Location, Passphrase, Repository, SnapshotFilter, SnapshotInfo,
    WrappedKey,
};
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
/// The catalog meta key of where a DR restore came from (profile, cluster id, passphrase source).
const SOURCE_KEY: &str = "dr.source";
/// The catalog meta key of the DR settings a restore brought back (not enabled).
const RESTORED_KEY: &str = "dr.restored-settings";
/// The stream name of an owner marker.
const OWNER: &str = "owner";
/// The stream names of registered blueprints' components start so (then the file name under the
/// home's `blueprints/`, by digest).
const COMPONENT: &str = "blueprint/";
/// The default bound of a chain of DR points (the blueprint's reasoning: `MAX_CHAIN` there).
const MAX_CHAIN: u32 = 48;

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// `cairn dr …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DrCommand {
    /// Turn DR on (or change its settings; a new mode or profile starts a new chain of points).
    Enable {
        /// Where DR points go: a repository URL or path; points go under `<URL>/<cluster-id>/`.
        /// Needed the first time; enabling again changes only the settings given.
        #[arg(long, value_name = "URL")]
        profile: Option<String>,
        /// How each DR run protects the catalog: local-snapshot, exported-snapshot, no-snapshot
        /// or legacy (a full copy, deprecated) [first time: local-snapshot].
        #[arg(long, value_parser = parse_mode)]
        mode: Option<cairn_catalog::DrMode>,
        /// Where the DR passphrase comes from: `raw:VALUE`, `env:VAR` or `file:PATH`. Needed
        /// the first time.
        #[arg(long, value_name = "SOURCE")]
        passphrase_from: Option<String>,
        /// How often DR runs: @hourly, @daily, @weekly, an interval like 30m or 6h, or a cron
        /// expression like "0 2 * * *" (`cairn serve` runs it when due, or a timer runs
        /// `cairn dr run --if-due`) [first time: @hourly].
        #[arg(long, value_parser = crate::schedule::parse_frequency)]
        frequency: Option<String>,
        /// The newest DR points to keep, whatever their age [first time: 3].
        #[arg(long)]
        keep_last: Option<u32>,
        /// Hourly DR points to keep [first time: 24].
        #[arg(long)]
        keep_hourly: Option<u32>,
        /// Daily DR points to keep [first time: 7].
        #[arg(long)]
        keep_daily: Option<u32>,
        /// Weekly DR points to keep [first time: 4].
        #[arg(long)]
        keep_weekly: Option<u32>,
        /// Monthly DR points to keep [first time: 12].
        #[arg(long)]
        keep_monthly: Option<u32>,
        /// Yearly DR points to keep [first time: 0].
        #[arg(long)]
        keep_yearly: Option<u32>,
        /// The most DR points in a chain of increments before a run exports in full again
        /// [first time: 48].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_chain: Option<u32>,
        /// When the DR location is created: a protection period during which DR points cannot be
        /// deleted: `30d`, `6mo` (a month counts 30 days), `1y` (365).
        #[arg(long, value_parser = cairn_repository::Retention::parse_period, value_name = "DURATION")]
        protection: Option<std::time::Duration>,
        /// Accept the DR points another home (a copy of this one) or this home's catalog before
        /// it was put back wrote in the location, which DR runs refuse: the next run starts a new
        /// chain from change 0.
        #[arg(long)]
        accept_points: bool,
    },
    /// Turn DR off (DR points already exported stay where they are).
    Disable,
    /// Run DR now: export the catalog per the mode, as one DR point; then apply retention.
    Run {
        /// Run only when the newest DR point is older than the frequency (for timers).
        #[arg(long)]
        if_due: bool,
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
        /// Only points made before this time, to step back past an incident: RFC 3339, a local
        /// date and time, a date, or a while ago (`36h`, `7d`), as `repo snapshots --until`.
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
    TakeOwnership {
        /// Take over even though another instance's owner marker is in the DR location.
        #[arg(long)]
        force: bool,
    },
}

/// Where a recovery reads DR points from.
#[derive(Debug, clap::Args)]
pub(crate) struct SourceArgs {
    /// The DR location profile (the `--profile` DR was enabled with).
    #[arg(long, value_name = "URL")]
    profile: String,
    /// The cluster id of the lost instance (`cairn dr status` printed it); default: the only
    /// cluster whose DR data the location holds (when it holds several, the refusal lists
    /// them).
    #[arg(long, value_name = "UUID")]
    cluster_id: Option<String>,
    /// Where the DR passphrase comes from: `raw:VALUE`, `env:VAR` or `file:PATH`.
    #[arg(long, value_name = "SOURCE")]
    passphrase_from: String,
}

/// A recovery source whose cluster id is settled ([`SourceArgs::resolved`]).
struct Recovery {
    profile: String,
    cluster_id: String,
    passphrase_from: String,
}

impl SourceArgs {
    /// The source, with its cluster id checked, or, when none is given, the only cluster whose
    /// DR data the location holds: a lost instance's id is easily lost with it.
    async fn resolved(self) -> anyhow::Result<Recovery> {
        let cluster_id = match self.cluster_id {
            Some(id) => {
                check_cluster_id(&id)?;
                id
            }
            None => {
                let there = clusters_at(&self.profile).await?;
                match there.as_slice() {
                    [one] => {
                        errln!(
                            "cairn: cluster {one}, the only one whose DR data {} holds",
                            self.profile
                        );
                        one.clone()
                    }
                    [] => {
                        return Err(usage(format!(
                            "no DR data at {}: check --profile (each cluster's DR data is in a \
                             folder named by its id)",
                            self.profile
                        )));
                    }
                    many => {
                        return Err(usage(format!(
                            "{} holds the DR data of {} clusters: {}; say which with \
                             --cluster-id (`cairn dr status` printed the lost instance's)",
                            self.profile,
                            many.len(),
                            many.join(", ")
                        )));
                    }
                }
            }
        };
        Ok(Recovery {
            profile: self.profile,
            cluster_id,
            passphrase_from: self.passphrase_from,
        })
    }
}

/// The cluster ids whose DR data the location `profile` holds.
async fn clusters_at(profile: &str) -> anyhow::Result<Vec<String>> {
    match Repository::repositories_at(Location::new(profile.to_owned()), |f| {
        uuid::Uuid::parse_str(f).is_ok()
    })
    .await
    {
        // A local directory that is not there holds none.
        Err(cairn_repository::Error::NotARepository { .. }) => Ok(Vec::new()),
        listed => listed.with_context(|| format!("cannot list the DR location {profile}")),
    }
}

/// The DR blueprint's component.
#[derive(Debug, clap::Args)]
pub(crate) struct BlueprintArg {
    /// The DR blueprint component; default: `dr.wasm` next to the cairn executable (the
    /// command as run, else the file a symlink to it names).
    #[arg(
        long = "blueprint",
        alias = "dr-blueprint",
        env = "CAIRN_DR_BLUEPRINT",
        value_name = "PATH"
    )]
    path: Option<PathBuf>,
    /// The flag that sets `path`, for messages.
    #[arg(skip = "--blueprint")]
    flag: &'static str,
}

impl BlueprintArg {
    /// The component at `path`, or the default one when `None`; `flag` sets it.
    pub(crate) fn new(path: Option<PathBuf>, flag: &'static str) -> Self {
        Self { path, flag }
    }

    fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.path {
            return Ok(path.clone());
        }
        let exe = std::env::current_exe().context("cannot find the cairn executable")?;
        // `/usr/local/bin/cairn` may be a symlink to a build: dr.wasm is looked for beside
        // either.
        let mut places: Vec<PathBuf> = invoked_dir().into_iter().collect();
        places.extend(exe.parent().map(Path::to_owned));
        places.dedup();
        let candidates: Vec<PathBuf> = places.iter().map(|d| d.join("dr.wasm")).collect();
        if let Some(found) = candidates.iter().find(|p| p.is_file()) {
            return Ok(found.clone());
        }
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        Err(usage(format!(
            "no DR blueprint at {}: build it (cargo build --release --target wasm32-wasip2 -p dr) and \
             install dr.wasm next to cairn, or pass {} PATH (or set CAIRN_DR_BLUEPRINT)",
            looked.join(" or "),
            self.flag
        )))
    }
}

/// The directory of the `cairn` command as it was run: its path's, or the `PATH` entry it
/// was found in, when that names this very executable (a symlink to it, say). `None` when
/// that cannot be told.
fn invoked_dir() -> Option<PathBuf> {
    let arg0 = PathBuf::from(std::env::args_os().next()?);
    let dir = if arg0.components().count() > 1 {
        arg0.parent()?.to_owned()
    } else {
        std::env::split_paths(&std::env::var_os("PATH")?).find(|d| d.join(&arg0).is_file())?
    };
    let this = std::env::current_exe().ok()?.canonicalize().ok()?;
    let named = dir.join(arg0.file_name()?).canonicalize().ok()?;
    (named == this)
        .then(|| std::path::absolute(&dir).ok())
        .flatten()
}

fn parse_mode(s: &str) -> Result<cairn_catalog::DrMode, String> {
    s.parse()
        .map_err(|e: cairn_catalog::ParseNameError| e.to_string())
}

fn default_max_chain() -> u32 {
    MAX_CHAIN
}

/// The DR settings, kept in the catalog's meta and exported with each DR point.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Config {
    profile: String,
    mode: cairn_catalog::DrMode,
    passphrase_from: String,
    frequency: String,
    retention: cairn_catalog::Retention,
    #[serde(default = "default_max_chain")]
    max_chain: u32,
}

impl Config {
    /// As exported with a DR point: a `raw:` passphrase source loses its value.
    fn exported(&self) -> Config {
        let mut c = self.clone();
        if c.passphrase_from.starts_with("raw:") {
            c.passphrase_from = "raw:".to_owned();
        }
        c
    }

    /// When the next run is due, after a run at `last`.
    fn next_due(&self, last: jiff::Timestamp) -> jiff::Timestamp {
        crate::schedule::next_due(&self.frequency, last)
    }

    /// The blueprint's retention parameters.
    fn params(&self) -> Vec<(String, String)> {
        let r = &self.retention;
        [
            ("keep-last", r.last),
            ("keep-hourly", r.hourly),
            ("keep-daily", r.daily),
            ("keep-weekly", r.weekly),
            ("keep-monthly", r.monthly),
            ("keep-yearly", r.yearly),
            ("max-chain", self.max_chain),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_string()))
        .collect()
    }
}

/// Where a DR restore came from, kept so that take-ownership can mark that location.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Source {
    profile: String,
    cluster_id: String,
    passphrase_from: String,
    /// The catalog's last change when the restore finished: a later one is this instance's own,
    /// which another restore would mix with the source's.
    #[serde(default)]
    catalog_seq: Option<u64>,
    /// The manifest of the DR point restored: a later restore (a standby moving forward) must
    /// extend it, or it would skip the changes it shares numbers with.
    #[serde(default)]
    last_point: Option<String>,
}

/// The catalog meta key of a DR restore begun and not finished: until it is, the catalog is
/// part of a point, and no policy runs.
const RESTORING_KEY: &str = "dr.restoring";

/// A DR restore begun ([`RESTORING_KEY`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Restoring {
    cluster_id: String,
    point: String,
}

/// Refuses to run policies in a home whose DR restore did not finish: its catalog holds part
/// of a point (some policies and not the blueprints they need, say).
pub(crate) fn refuse_unfinished_restore(catalog: &Catalog, home: &Home) -> anyhow::Result<()> {
    match load_meta::<Restoring>(catalog, RESTORING_KEY)? {
        Some(r) => Err(usage(format!(
            "the DR restore of point {} of cluster {} into {} did not finish, so its catalog is \
             incomplete, and nothing runs or changes it until it is: run `cairn dr restore` again \
             with the same flags (and --point {}) to finish it, or restore into a fresh --home",
            short(&r.point),
            r.cluster_id,
            home.root().display(),
            short(&r.point)
        ))),
        None => Ok(()),
    }
}

/// Whether this instance owns maintenance of the backup data (forget, prune, retention): not
/// while a DR restore into it is unfinished, whose catalog may not say yet that it does not.
pub(crate) fn owns_maintenance(catalog: &Catalog) -> anyhow::Result<bool> {
    Ok(catalog.maintenance_owner()? && load_meta::<Restoring>(catalog, RESTORING_KEY)?.is_none())
}

/// [`refuse_unfinished_restore`]'s refusal as a warning, for listings: what they show of an
/// unfinished restore's home is not the catalog restored.
pub(crate) fn warn_unfinished_restore(catalog: &Catalog, home: &Home) {
    if let Err(e) = refuse_unfinished_restore(catalog, home) {
        errln!("cairn: warning: {}", crate::one_line(&e));
    }
}

/// A DR location and a passphrase source as they are stored: relative paths would be resolved
/// wherever each later command starts (`serve` under systemd starts in /, `take-ownership`
/// anywhere), so they are kept absolute.
fn kept_absolute(profile: String, passphrase_from: String) -> (String, String) {
    let profile = crate::repository_url(&profile);
    let passphrase_from = match passphrase_from.strip_prefix("file:") {
        Some(path) => format!("file:{}", crate::profile::absolute(path)),
        None => passphrase_from,
    };
    (profile, passphrase_from)
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// An owner marker: who took over maintenance of a DR location's backup data, and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OwnerMarker {
    /// The cluster id of the instance that took over.
    owner: String,
    /// Its host (from the marker's snapshot) and home, to find it.
    #[serde(skip)]
    host: String,
    home: String,
    time: jiff::Timestamp,
}

impl OwnerMarker {
    fn describe(&self) -> String {
        format!(
            "instance {} (host {}, home {}) took over at {}",
            self.owner, self.host, self.home, self.time
        )
    }
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

/// The catalog meta key of what this home knows of the points in its DR location.
const KNOWN_KEY: &str = "dr.known-points";

/// The most ids kept of runs not yet recorded.
const MAX_PENDING: usize = 16;

/// What this home knows of the DR points in its location, to notice another writer there: a
/// copied home or a cloned machine keeps the cluster id, so it writes into the same location,
/// and two homes' points in one chain restore a mixture neither had.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Known {
    /// The location's URL: another location's points are trusted on its first run.
    location: String,
    /// The manifests its last run listed and sealed, less those its retention removed.
    points: BTreeSet<String>,
    /// The ids of its runs not yet recorded: one that sealed its point and then died left a
    /// point this home wrote, with one of these ids in its manifest.
    #[serde(default)]
    pending: Vec<String>,
    /// A run found another writer's points: `cairn dr enable --accept-points` accepts them and
    /// starts a new chain.
    #[serde(default)]
    conflict: bool,
}

impl Known {
    /// After run `run` succeeded and was recorded: the ids of runs not recorded are forgotten,
    /// unless a manifest could not be read (`unreadable`): that one may be a point such a run
    /// sealed, and its id must stay for the run that reads it to take it for this home's.
    fn recorded(&mut self, run: &str, unreadable: &BTreeSet<String>) {
        if unreadable.is_empty() {
            self.pending.clear();
        } else {
            self.pending.retain(|id| id != run);
        }
    }
}

/// What [`check_writers`] found: what this home knows, and the manifests it could not read
/// (never recorded as known: a read that failed once must not whitelist another home's point).
struct Writers {
    known: Known,
    unreadable: BTreeSet<String>,
}

/// Refuses a DR run when its location (`url`, listed as `snapshots`) holds points this home
/// neither listed at its last run nor sealed since: another home with this cluster id writes
/// there, or this home's catalog went back to an older state, and a chain built on either's
/// points mixes two histories. Returns what this home knows, for the run to extend.
async fn check_writers(
    catalog: &Catalog,
    repo: &Repository,
    url: &str,
    snapshots: &[SnapshotInfo],
) -> anyhow::Result<Writers> {
    let Some(mut known) = load_meta::<Known>(catalog, KNOWN_KEY)?.filter(|k| k.location == url)
    else {
        return Ok(Writers {
            known: Known {
                location: url.to_owned(),
                ..Known::default()
            },
            unreadable: BTreeSet::new(),
        });
    };
    let mut foreign = Vec::new();
    let mut unreadable = BTreeSet::new();
    let mut adopted = Vec::new();
    for s in snapshots
        .iter()
        .filter(|s| s.source() == MANIFEST && !known.points.contains(&s.id))
    {
        match read_point(repo, &s.id).await {
            // Sealed by a run of this home's that died before recording it.
            Ok(point)
                if point
                    .run
                    .as_ref()
                    .is_some_and(|r| known.pending.contains(r)) =>
            {
                adopted.push((s.id.clone(), point.run.unwrap_or_default()));
            }
            Ok(_) => foreign.push(s),
            // Not recorded, so the next run reads it again; its chain fails for want of it.
            Err(e) => {
                errln!(
                    "cairn: warning: {}; this run cannot tell whether another home wrote it, and \
                     it is not recorded as this home's (`cairn repo check --read-data --repo \
                     {url}` names damage)",
                    crate::one_line(&e)
                );
                unreadable.insert(s.id.clone());
            }
        }
    }
    // Recorded at once: ids of runs not recorded are few, and one drained from them would make
    // its point another home's.
    if !adopted.is_empty() {
        known
            .pending
            .retain(|id| adopted.iter().all(|(_, run)| run != id));
        known.points.extend(adopted.into_iter().map(|(id, _)| id));
        catalog.set_meta(KNOWN_KEY, Some(&serde_json::to_string(&known)?))?;
    }
    let Some(newest) = foreign.iter().max_by_key(|s| s.time) else {
        return Ok(Writers { known, unreadable });
    };
    known.conflict = true;
    catalog.set_meta(KNOWN_KEY, Some(&serde_json::to_string(&known)?))?;
    Err(usage(format!(
        "the DR run refused: the DR location {url} holds {} DR point(s) this home did not write \
         and has not seen, the newest ({}) saved at {} on host {}. Another Cairn home with this \
         cluster id ({}) writes there (a copied home or a cloned machine), or this home's catalog \
         was put back to an older state; building on both would mix two histories in one chain. \
         If this home is the copy, give it a location of its own: `cairn dr enable --profile \
         <another location>`. If the other home is gone for good, or the catalog was put back \
         on purpose, run `cairn dr enable --accept-points` here: it accepts those points, and \
         the next run starts a new chain from change 0",
        foreign.len(),
        short(&newest.id),
        newest.time,
        if newest.hostname.is_empty() {
            "unknown"
        } else {
            &newest.hostname
        },
        catalog.cluster_id()
    )))
}

fn load_config(catalog: &Catalog) -> anyhow::Result<Option<Config>> {
    load_meta(catalog, CONFIG_KEY)
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
            crate::shown_source(source)
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
            crate::shown_source(source)
        )));
    };
    if secret.is_empty() {
        return Err(empty());
    }
    Ok(Passphrase::new(secret))
}

/// The DR location of `cluster_id` under `profile`.
fn location(profile: &str, cluster_id: &str) -> Location {
    Location::new(format!("{}/{cluster_id}", profile.trim_end_matches('/')))
}

/// Opens the DR repository of a recovery source, with errors that say which input is wrong.
async fn open_source(
    profile: &str,
    cluster_id: &str,
    key: &dyn KeyProvider,
) -> anyhow::Result<Repository> {
    let loc = location(profile, cluster_id);
    let url = loc.url().to_owned();
    let opened = Repository::open(loc, key).await;
    if let Err(cairn_repository::Error::NotARepository { .. }) = &opened {
        let there = match clusters_at(profile).await {
            Ok(there) if there.is_empty() => String::new(),
            Ok(there) => format!(" (it holds DR data of: {})", there.join(", ")),
            Err(_) => String::new(),
        };
        return Err(usage(format!(
            "no DR data for cluster {cluster_id} at {profile}{there} (nothing at {url}): check \
             --profile and --cluster-id"
        )));
    }
    opened.map_err(|e| match e {
        cairn_repository::Error::WrongPassphrase | cairn_repository::Error::WrongKey { .. } => {
            usage(format!(
                "wrong DR passphrase for {url}: check --passphrase-from (a damaged key slot fails \
             the same way: `cairn repo check --repo {url}` names one)"
            ))
        }
        // Damage is a fact about the location to act on, not a fault of this run.
        damaged @ cairn_repository::Error::Corrupt { .. } => usage(format!(
            "cannot open the DR location {url}: {damaged}; `cairn repo check --repo {url}` says \
             what else is damaged"
        )),
        // The location is a URL alone: what the store's hints give as --option is read from
        // the environment here.
        other => anyhow::Error::new(other.map_hint(|hint| {
            if hint.contains("--option") {
                format!(
                    "{hint} (`cairn dr` takes no --option: set the environment variable of that \
                     option instead, e.g. AWS_ENDPOINT for aws_endpoint)"
                )
            } else {
                hint
            }
        }))
        .context(format!("cannot open the DR location {url}")),
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
    /// Their repository snapshot ids.
    #[serde(skip)]
    export_ids: Vec<String>,
    #[serde(skip)]
    cluster_id: String,
    /// The id of the run that sealed it (points of older builds have none).
    #[serde(skip)]
    run: Option<String>,
    /// The manifest of the point its run followed (points of older builds have none).
    #[serde(skip)]
    after: Option<String>,
    /// The DR settings the point carries (JSON), if it carries them.
    #[serde(skip)]
    settings: Option<String>,
}

fn parse_manifest(id: &str, text: &str) -> anyhow::Result<Point> {
    let bad = |why: &str| anyhow::anyhow!("DR point {id} is damaged: {why}");
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(bad("its manifest does not start with the DR point header"));
    }
    let (mut mode, mut from, mut to, mut time, mut cluster_id) = (None, None, None, None, None);
    let mut export_ids = Vec::new();
    let (mut run, mut after, mut settings) = (None, None, None);
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
            "run" => run = Some(value.to_owned()),
            "after" => after = Some(value.to_owned()),
            "settings" => settings = Some(value.to_owned()),
            "artifact" => export_ids.push(
                value
                    .split(' ')
                    .find_map(|w| w.strip_prefix("snapshot="))
                    .ok_or_else(|| bad(&format!("`{line}` names no snapshot")))?
                    .to_owned(),
            ),
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
        exports: export_ids.len(),
        export_ids,
        cluster_id: cluster_id.ok_or_else(|| bad("no cluster id"))?,
        run,
        after,
        settings,
    })
}

/// The largest DR point manifest read, the DR blueprint's own bound (its `MAX_MANIFEST`): a
/// manifest is a few hundred bytes, and one that is not (damage, or another writer holding the
/// passphrase) must not take the memory of a `review` or a recovery.
const MAX_MANIFEST: usize = 1 << 20;

/// A buffer that takes at most [`MAX_MANIFEST`] bytes.
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    over: bool,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.bytes.len() + buf.len() > MAX_MANIFEST {
            self.over = true;
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "over {MAX_MANIFEST} bytes"
            ))));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The DR point whose manifest is snapshot `id`.
async fn read_point(repo: &Repository, id: &str) -> anyhow::Result<Point> {
    let mut capped = Capped::default();
    let read = repo.restore_stream(id, &mut capped).await;
    if capped.over {
        return Err(anyhow::anyhow!(
            "DR point {id} is damaged: its manifest is over {MAX_MANIFEST} bytes, the most a DR \
             point's manifest holds (it is not read further)"
        ));
    }
    read.with_context(|| format!("cannot read DR point {id}"))?;
    let text = String::from_utf8(capped.bytes)
        .map_err(|_| anyhow::anyhow!("DR point {id} is damaged: not text"))?;
    parse_manifest(id, &text)
}

/// Every readable DR point in `repo`, newest first. Only sealed points exist: a manifest is
/// written last. A manifest that cannot be read (damaged data) is left out with a warning: in
/// a disaster, the points that do not need it must still be listed and restored; a point whose
/// chain needs it fails for want of that link.
async fn points(repo: &Repository) -> anyhow::Result<Vec<Point>> {
    Ok(points_and_damaged(repo).await?.0)
}

/// [`points`], and the ids of the manifests that could not be read with when each was saved.
async fn points_and_damaged(
    repo: &Repository,
) -> anyhow::Result<(Vec<Point>, Vec<(String, jiff::Timestamp)>)> {
    let (all, unreadable) = repo
        .snapshots_with_damage(&SnapshotFilter::new())
        .await
        .context("cannot list the DR points")?;
    let (snapshots, others): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|s| s.source() == MANIFEST);
    // With the manifest's own time, precise where the point's is to the second: two points
    // sealed within one second (a DR run, then another after a change of mode) are told apart.
    let mut points = Vec::with_capacity(snapshots.len());
    let mut damaged = Vec::new();
    for s in snapshots {
        match read_point(repo, &s.id).await {
            Ok(point) => points.push((s.time, point)),
            Err(e) => {
                errln!(
                    "cairn: warning: {}; it is left out (`cairn repo check --read-data` on the DR \
                     location names the damage)",
                    crate::one_line(&e)
                );
                damaged.push((s.id, s.time));
            }
        }
    }
    // A snapshot object that cannot be read may be a newer point's manifest: what it is, and
    // its time, are in the damaged bytes, so the store's time of its write stands in. One a
    // readable point names is that point's data export, not a manifest.
    let named: std::collections::HashSet<String> = points
        .iter()
        .flat_map(|(_, p)| p.export_ids.iter().cloned())
        .collect();
    for s in unreadable {
        errln!(
            "cairn: warning: snapshot {} in the DR location cannot be read ({}); if it was a DR \
             point's manifest, that point is left out (`cairn repo check --read-data` on the DR \
             location names the damage)",
            s.id,
            crate::one_line(&anyhow::Error::from(s.error))
        );
        if !named.contains(&s.id) {
            damaged.push((s.id, s.stored.unwrap_or(jiff::Timestamp::MAX)));
        }
    }
    let histories = newest_first(&mut points);
    // Told apart from the readable ones by when they were saved, the only time they still have.
    let newest_saved = points.first().map(|(saved, _)| *saved);
    // Give or take a second: stores that keep whole seconds (S3) date a write up to a second
    // early.
    let slack = jiff::SignedDuration::from_secs(1);
    damaged.retain(|(_, saved)| {
        newest_saved.is_none_or(|newest| saved.saturating_add(slack).is_ok_and(|s| s >= newest))
    });
    // A point's data is saved before its manifest: data that no readable point names, saved
    // after the newest manifest, is a newer point's whose manifest is gone, or a DR run's
    // that did not finish (or is running now). Which one only the missing manifest could say,
    // so it is said, not refused: a DR run cut short by the disaster itself is the likelier.
    if let Some(newest) = newest_saved {
        let mut newer: Vec<&SnapshotInfo> = others
            .iter()
            .filter(|s| s.source() != OWNER && !s.source().starts_with(COMPONENT))
            .filter(|s| !named.contains(&s.id) && s.time > newest)
            .collect();
        newer.sort_by_key(|s| s.time);
        if let Some(last) = newer.last() {
            errln!(
                "cairn: warning: {} snapshot(s) in the DR location, the last saved {}, are newer \
                 than the newest readable DR point and belong to none: the last DR run did not \
                 finish (or is running), or a newer point's manifest is missing, and what that \
                 point held is not in the points listed",
                newer.len(),
                last.time
            );
        }
    }
    let points: Vec<Point> = points.into_iter().map(|(_, p)| p).collect();
    warn_histories(&points, histories);
    Ok((points, damaged))
}

/// The point the run of `list[i]` followed: the one its `after` line names (which must reach
/// its `from`, unless it starts a chain), or for a manifest without one (an older version's)
/// that starts no chain, the point of its cluster and mode that reaches its `from`, when one
/// fits or one of those was made before it. `Ok(None)`: it follows none this can tell (it
/// starts a chain). `Err`: the points that fit, when more than one history does (none: the
/// one it names is not listed, or no point fits).
///
/// The DR blueprint's restore and retention follow the same rule (its `retention::predecessor`).
fn followed(list: &[Point], i: usize) -> Result<Option<usize>, Vec<usize>> {
    let p = &list[i];
    if let Some(after) = &p.after {
        return match list.iter().position(|q| &q.id == after) {
            Some(j) if j != i && (p.from == 0 || list[j].to == p.from) => Ok(Some(j)),
            _ => Err(Vec::new()),
        };
    }
    if p.from == 0 {
        return Ok(None);
    }
    let fit: Vec<usize> = (0..list.len())
        .filter(|&j| {
            let q = &list[j];
            j != i
                && q.to == p.from
                && q.from < p.from
                && q.cluster_id == p.cluster_id
                && q.mode == p.mode
        })
        .collect();
    let before: Vec<usize> = fit
        .iter()
        .copied()
        .filter(|&j| list[j].time <= p.time)
        .collect();
    match (fit.as_slice(), before.as_slice()) {
        ([one], _) | (_, [one]) => Ok(Some(*one)),
        _ => Err(fit),
    }
}

/// How `list[i]` stands to the point a standby applied last.
#[derive(Debug, PartialEq, Eq)]
enum Lineage {
    /// It is built on that point (or is it).
    Built,
    /// Its history starts at `list[start]` (`from 0`, naming no point before it) without
    /// passing that point: another history.
    Starts { start: usize },
    /// `list[at]` extends a point that more than one listed point (`fit`, of different
    /// histories) could be.
    Ambiguous { at: usize, fit: Vec<usize> },
    /// The walk back stops at `list[at]`, whose link is to a point no longer listed (retention
    /// removed an old chain's tail, or a manifest cannot be read): which history it is cannot
    /// be told.
    Untold { at: usize },
}

/// Walks back from `list[i]` through the points its runs followed (through chains' starts,
/// whose `after` names where their run was) to tell whether it is built on the point
/// `applied` names, which need not be listed any more.
fn lineage(list: &[Point], i: usize, applied: &str) -> Lineage {
    let mut seen = vec![i];
    let mut at = i;
    loop {
        if list[at].id == applied || list[at].after.as_deref() == Some(applied) {
            return Lineage::Built;
        }
        match followed(list, at) {
            Ok(Some(j)) if !seen.contains(&j) => {
                seen.push(j);
                at = j;
            }
            Ok(None) => return Lineage::Starts { start: at },
            Err(fit) if fit.len() > 1 => return Lineage::Ambiguous { at, fit },
            Ok(Some(_)) | Err(_) => return Lineage::Untold { at },
        }
    }
}

/// The chain `point` needs, as candidates for the blueprint's restore: the points it extends
/// down to its chain's start, or as far as the links exist (the blueprint then names the one
/// missing). Refused when two histories fit a link (manifests of older versions).
fn chain_of<'a>(list: &'a [Point], point: &Point) -> anyhow::Result<Vec<&'a Point>> {
    let Some(mut at) = list.iter().position(|p| p.id == point.id) else {
        return Ok(Vec::new());
    };
    let mut chain = Vec::new();
    while list[at].from > 0 {
        match followed(list, at) {
            Ok(Some(j)) if !chain.iter().any(|p: &&Point| p.id == list[j].id) => {
                chain.push(&list[j]);
                at = j;
            }
            Err(fit) if fit.len() > 1 => {
                let ids: Vec<&str> = fit.iter().map(|&j| short(&list[j].id)).collect();
                return Err(usage(format!(
                    "DR point {} (written by an older version, without an `after` line) extends \
                     the point that reaches change {}, and {} do, of different histories (a home \
                     put back to an older catalog, or a copied one, wrote here): which one cannot \
                     be told, and a mixture is not restored. Restore one of those points, or a \
                     point written since by this version (`cairn dr review`)",
                    short(&list[at].id),
                    list[at].from,
                    ids.join(" and ")
                )));
            }
            _ => break,
        }
    }
    Ok(chain)
}

/// Orders DR points, each with the time its manifest was saved, newest first. Points linked by
/// `after` lines (or, for older manifests, by the change they extend) are one history, ordered
/// by the last change they cover: a clock stepped back must not put an older point of it first.
/// Histories are ordered by when their newest point was saved: after a home was put back to an
/// older point, or took over from a copy of itself, its new history covers lower changes than
/// the history it left. Ties go to the time saved, then the id. Returns the number of
/// histories.
fn newest_first(points: &mut Vec<(jiff::Timestamp, Point)>) -> usize {
    let list: Vec<Point> = points.iter().map(|(_, p)| p.clone()).collect();
    let n = list.len();
    let parent: Vec<Option<usize>> = (0..n).map(|i| followed(&list, i).ok().flatten()).collect();
    // Each point's history: the oldest point its links reach (at most n links: a loop of
    // `after` lines, which only damage makes, ends there).
    let mut root: Vec<Option<usize>> = vec![None; n];
    for i in 0..n {
        let (mut at, mut steps) = (i, 0);
        let found = loop {
            if let Some(r) = root[at] {
                break r;
            }
            match parent[at] {
                Some(j) if steps < n => (at, steps) = (j, steps + 1),
                _ => break at,
            }
        };
        let mut at = i;
        while root[at].is_none() {
            root[at] = Some(found);
            match parent[at] {
                Some(j) => at = j,
                None => break,
            }
        }
    }
    let root: Vec<usize> = root
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or(i))
        .collect();
    let mut newest = std::collections::HashMap::new();
    for (i, (saved, _)) in points.iter().enumerate() {
        let e = newest.entry(root[i]).or_insert(*saved);
        *e = (*e).max(*saved);
    }
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| {
        let (a_saved, a_point) = &points[a];
        let (b_saved, b_point) = &points[b];
        newest[&root[b]]
            .cmp(&newest[&root[a]])
            .then(root[b].cmp(&root[a]))
            .then(b_point.to.cmp(&a_point.to))
            .then(b_saved.cmp(a_saved))
            .then(b_point.time.cmp(&a_point.time))
            .then(b_point.id.cmp(&a_point.id))
    });
    let histories = newest.len();
    let mut taken: Vec<Option<(jiff::Timestamp, Point)>> =
        std::mem::take(points).into_iter().map(Some).collect();
    points.extend(order.into_iter().filter_map(|i| taken[i].take()));
    histories
}

/// Warns when the newest history's latest point is not the one that reaches furthest: the
/// location holds points of another history (a home put back, or a copy) that `review` lists
/// after it.
fn warn_histories(list: &[Point], histories: usize) {
    let (Some(first), true) = (list.first(), histories > 1) else {
        return;
    };
    if let Some(further) = list.iter().filter(|p| p.to > first.to).max_by_key(|p| p.to) {
        errln!(
            "cairn: warning: the DR location holds points of {histories} histories that do not \
             extend one another (a home put back to an older catalog, or a copy of it, wrote \
             here): the latest saved, {} (up to change {}), comes first, and {} of another \
             history reaches change {}; `cairn dr review` lists them, and --point chooses",
            short(&first.id),
            first.to,
            short(&further.id),
            further.to
        );
    }
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
    /// snapshots a later run has superseded. `verify` checks every page: for a recovery, which
    /// reads the whole file once and may follow the loss of the disk's other files.
    fn open_snapshot(&self, id: &str, verify: bool) -> Result<Catalog, CatalogError> {
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
        // A DR run does not verify: reading the whole file is what the refresh avoids, and
        // the file is one this instance wrote.
        let snapshot = Catalog::options()
            .verify(verify)
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
            Some(id) => self.open_snapshot(id, false)?.export_minimal(since, mode),
            None => self.catalog.export_minimal(since, mode),
        }
        .map_err(from_catalog)?;
        encode(&delta)
    }

    fn export_snapshot(&self, snapshot: &str, since: u64) -> Result<CatalogExport, CatalogError> {
        let kinds = KindSet::of_classes(&[DrClass::WithCatalogSnapshot]);
        let delta = self
            .open_snapshot(snapshot, false)?
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

    fn apply_local_snapshot(&self, snapshot: &str) -> Result<CatalogApplied, CatalogError> {
        let source = self
            .catalog
            .restore_state()
            .map_err(failed)?
            .ok_or_else(|| {
                CatalogError::Invalid(
                    "this catalog is not being restored: apply a DR point before the local snapshot"
                        .into(),
                )
            })?
            .source;
        // A damaged or unreadable snapshot is one this instance does not usefully hold: the
        // recovery goes on without it, as it would elsewhere.
        let local = self.open_snapshot(snapshot, true).map_err(|e| match e {
            CatalogError::Failed(why) => CatalogError::NotFound(format!(
                "the local catalog snapshot here cannot be used ({why})"
            )),
            other => other,
        })?;
        if local.cluster_id() != source {
            return Err(CatalogError::NotFound(format!(
                "the local catalog snapshot here is of cluster {}, not of {source}",
                local.cluster_id()
            )));
        }
        let kinds = KindSet::of_classes(&[DrClass::WithCatalogSnapshot]);
        let delta = local.export_changes(0, kinds).map_err(from_catalog)?;
        let outcome = self.catalog.apply_delta(&delta).map_err(from_catalog)?;
        Ok(CatalogApplied {
            applied: outcome.applied,
            skipped: outcome.skipped,
            to_seq: delta.to_seq(),
        })
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

/// Stores `config` as the DR settings, creating the DR location if needed; a new mode or
/// location starts a new chain. Prints the three things to keep.
/// Stores `config` in place of `previous` (the settings DR had, if enabled), after opening
/// or creating its location.
async fn enable(
    home: &Home,
    catalog: &Catalog,
    config: &Config,
    previous: Option<&Config>,
    protection: Option<std::time::Duration>,
    accept_points: bool,
) -> anyhow::Result<()> {
    let key = CachedKey::new(home, &config.passphrase_from)?;
    let cluster_id = catalog.cluster_id().to_string();
    let url = location(&config.profile, &cluster_id).url().to_owned();
    // The key is derived from the passphrase again (and so checked), and cached for the runs
    // and for the owner-marker checks of shells without the passphrase source.
    forget_cached_key(&home.dr_key_cache())?;
    open_or_init(&config.profile, &cluster_id, &key, protection).await?;
    // After a run found another writer's points there, `--accept-points` accepts them; a new
    // chain then builds on none of them. Only that flag: enabling again to change a setting
    // (or a configuration tool enabling again) must not trust them unasked.
    let conflict =
        load_meta::<Known>(catalog, KNOWN_KEY)?.is_some_and(|k| k.conflict && k.location == url);
    let accepted = conflict && accept_points;
    let new_chain = accepted
        || previous.as_ref().is_none_or(|p| {
            p.mode != config.mode || !crate::same_repository(&p.profile, &config.profile)
        });
    catalog.set_meta(CONFIG_KEY, Some(&serde_json::to_string(config)?))?;
    catalog.set_meta(RESTORED_KEY, None)?;
    if new_chain {
        // A new mode or location starts a new chain of DR points, from the beginning.
        catalog.set_dr_cursor(0)?;
    }
    if accepted {
        catalog.set_meta(KNOWN_KEY, None)?;
        outln!(
            "Accepted the DR points this home did not write in {url}; the next run starts a new \
             chain from change 0"
        );
    } else if conflict {
        errln!(
            "warning: DR runs into {url} still refuse: it holds DR points this home did not \
             write (`cairn dr status` says when a run last failed). Give this home a location of \
             its own (`cairn dr enable --profile <another location>`), or accept those points \
             with `cairn dr enable --accept-points`"
        );
    } else if accept_points {
        outln!(
            "No DR points to accept: no DR run into {url} has found points this home did not write."
        );
    }
    outln!(
        "DR enabled: mode {}, runs {}, DR points go to {url}",
        config.mode,
        config.frequency
    );
    if let Some(previous) = previous {
        let changed = changes(previous, config);
        if changed.is_empty() {
            outln!("Settings unchanged.");
        }
        for change in changed {
            outln!("  changed: {change}");
        }
    }
    outln!("Keep these three things safe; recovering this instance needs all of them:");
    outln!("  1. the cluster id:        {cluster_id}");
    outln!(
        "  2. the passphrase source: {} (and the passphrase it holds)",
        crate::shown_source(&config.passphrase_from)
    );
    outln!(
        "  3. the location profile:  {} (and its credentials)",
        config.profile
    );
    // Policies often run elsewhere than this shell (cron, CI) and need to reach the location.
    outln!(
        "Policy retention now checks the owner markers in {url} first, with the DR key cached in \
         {} (or the passphrase source): wherever policies run, keep that file and give the \
         location's credentials",
        home.dr_key_cache().display()
    );
    // What this mode never brings back, when the catalog holds some of it now.
    let left_out = not_carried(catalog, config.mode)?;
    if !left_out.is_empty() {
        errln!(
            "warning: DR mode {} does not carry {}: a recovery comes back without them; \
             another mode (--mode exported-snapshot carries everything) keeps them",
            config.mode,
            left_out.join(", ")
        );
    }
    // The default mode's snapshot stays in this home: a recovery on another machine comes
    // back without what only it holds, which the mode's name does not say.
    if config.mode == cairn_catalog::DrMode::LocalSnapshot {
        let elsewhere: Vec<String> = catalog
            .counts()?
            .into_iter()
            .filter(|c| lost_by(config.mode, false, c.kind) && !lost_by(config.mode, true, c.kind))
            .map(|c| format!("{} ({} now)", c.kind, c.count))
            .collect();
        outln!(
            "Note: mode local-snapshot keeps its catalog snapshot in this home, so a recovery on \
             another machine comes back without the records only that snapshot holds: {}. \
             `cairn dr enable --mode exported-snapshot` carries them to the DR location too",
            elsewhere.join(", ")
        );
    }
    // DR brings back the catalog, not the data in the home: the exports (and local volume
    // snapshots) of these policies would be lost with the machine. A policy that grants
    // neither `export` nor `volumes` keeps nothing there (its points are the catalog's own);
    // one whose bindings decide may.
    // A policy record that cannot be read is for `policy list` to report, not for this.
    let local: Vec<String> = catalog
        .policies()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.export.is_none())
        .filter(|p| {
            p.blueprint.is_none() || p.grants.iter().any(|g| g == "export" || g == "volumes")
        })
        .map(|p| p.name)
        .collect();
    if !local.is_empty() {
        errln!(
            "warning: policies {} export into the home's repository ({}), or keep local volume \
             snapshots in the home, which DR does not copy: their restore points are lost with \
             this home. Give them `export: {{profile: NAME}}` to a location off this machine",
            local.join(", "),
            home.repository().display()
        );
    }
    Ok(())
}

/// The kinds of records `mode` never brings back, of those the catalog holds, with their
/// counts (`blueprint-binding (1)`). A local snapshot counts as there: whether it is depends
/// on where the recovery runs, which the restore says.
fn not_carried(catalog: &Catalog, mode: cairn_catalog::DrMode) -> anyhow::Result<Vec<String>> {
    Ok(catalog
        .counts()?
        .into_iter()
        .filter(|c| c.count > 0 && lost_by(mode, mode.takes_snapshot(), c.kind))
        .map(|c| format!("{} ({})", c.kind, c.count))
        .collect())
}

/// Whether a recovery in `mode` (with a catalog snapshot or not) never brings `kind` back,
/// of the kinds DR protects at all.
fn lost_by(mode: cairn_catalog::DrMode, snapshot: bool, kind: cairn_catalog::Kind) -> bool {
    let class = kind.dr_class();
    class != cairn_catalog::DrClass::Never && !class.is_recovered(mode, snapshot)
}

/// The settings `new` changes from `old`, as `name: old → new`.
fn changes(old: &Config, new: &Config) -> Vec<String> {
    let (o, n) = (&old.retention, &new.retention);
    // A `raw:` value is shown masked: a new one shows as a change all the same.
    let (source, new_source) = match (
        crate::shown_source(&old.passphrase_from),
        crate::shown_source(&new.passphrase_from),
    ) {
        (a, b) if a == b && old.passphrase_from != new.passphrase_from => {
            (a, format!("{b} (a new value)"))
        }
        pair => pair,
    };
    [
        ("location", old.profile.clone(), new.profile.clone()),
        ("mode", old.mode.to_string(), new.mode.to_string()),
        ("passphrase source", source, new_source),
        ("frequency", old.frequency.clone(), new.frequency.clone()),
        ("keep-last", o.last.to_string(), n.last.to_string()),
        ("keep-hourly", o.hourly.to_string(), n.hourly.to_string()),
        ("keep-daily", o.daily.to_string(), n.daily.to_string()),
        ("keep-weekly", o.weekly.to_string(), n.weekly.to_string()),
        ("keep-monthly", o.monthly.to_string(), n.monthly.to_string()),
        ("keep-yearly", o.yearly.to_string(), n.yearly.to_string()),
        (
            "max-chain",
            old.max_chain.to_string(),
            new.max_chain.to_string(),
        ),
    ]
    .into_iter()
    .filter(|(_, a, b)| a != b)
    .map(|(name, a, b)| format!("{name}: {a} → {b}"))
    .collect()
}

/// What the blueprint's retention needs of a DR point, remembered per manifest snapshot in the
/// home (`dr/points.json`) so that a run reads only the manifests it has not seen.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Summary {
    from: u64,
    to: u64,
    time: i64,
    /// The snapshot ids of the point's data exports (absent in files of older versions: the
    /// manifest is read again).
    #[serde(default)]
    exports: Option<Vec<String>>,
    /// The manifest's `after` line.
    #[serde(default)]
    after: Option<String>,
    /// Whether `after` was read (false in files of older versions: the manifest is read again).
    #[serde(default)]
    linked: bool,
}

/// What is in the DR location, as the artifacts a DR run gives the blueprint: the DR points
/// (`stored-<n>`, each a manifest export with the `from`, `to`, `time` and `exports` the host
/// remembers of it) and every data export (`export-<n>`, with its `time`), so that the
/// blueprint can find exports no point references.
async fn stored_points(
    home: &Home,
    repo: &Repository,
    snapshots: &[SnapshotInfo],
) -> anyhow::Result<Vec<cairn_engine::Artifact>> {
    let path = home.dr().join("points.json");
    // A missing or unreadable file only costs reading the manifests again.
    let mut known: std::collections::BTreeMap<String, Summary> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    // Owner markers and components are the runtime's, not data exports of the blueprint's
    // runs: it would take them for the leftovers of unfinished runs and remove them.
    let (manifests, data): (Vec<_>, Vec<_>) = snapshots
        .iter()
        .filter(|s| s.source() != OWNER && !s.source().starts_with(COMPONENT))
        .partition(|s| s.source() == MANIFEST);
    let mut artifacts = Vec::with_capacity(snapshots.len());
    let mut seen = std::collections::BTreeMap::new();
    for (i, s) in manifests.iter().enumerate() {
        let mut artifact = point_artifact(format!("stored-{i}"), repo.id(), &s.id);
        let summary = match known.remove(&s.id) {
            Some(summary) if summary.exports.is_some() && summary.linked => Some(summary),
            // Unreadable here: the blueprint reads it, and reports it.
            _ => read_point(repo, &s.id).await.ok().map(|p| Summary {
                from: p.from,
                to: p.to,
                time: p.time.as_second(),
                exports: Some(p.export_ids),
                after: p.after,
                linked: true,
            }),
        };
        if let Some(summary) = summary {
            artifact.values.extend([
                ("from".into(), summary.from.to_string()),
                ("to".into(), summary.to.to_string()),
                ("time".into(), summary.time.to_string()),
                (
                    "exports".into(),
                    summary.exports.as_deref().unwrap_or_default().join(","),
                ),
            ]);
            if let Some(after) = &summary.after {
                artifact.values.push(("after".into(), after.clone()));
            }
            seen.insert(s.id.clone(), summary);
        }
        artifacts.push(artifact);
    }
    for (i, s) in data.iter().enumerate() {
        let mut artifact = point_artifact(format!("export-{i}"), repo.id(), &s.id);
        artifact
            .values
            .push(("time".into(), s.time.as_second().to_string()));
        artifacts.push(artifact);
    }
    std::fs::create_dir_all(home.dr())
        .and_then(|()| std::fs::write(&path, serde_json::to_vec(&seen)?))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(artifacts)
}

/// The stream name of the component of `digest` in a DR location.
fn component_stream(digest: &str) -> String {
    format!("{COMPONENT}{}.wasm", digest.replace(':', "-"))
}

/// The registrations in `catalog`, leaving out records that are not registrations (stored by
/// hand with `cairn catalog put`).
fn registrations(catalog: &Catalog) -> anyhow::Result<Vec<cairn_catalog::Blueprint>> {
    Ok(catalog
        .list(cairn_catalog::Kind::Blueprint)?
        .iter()
        .filter_map(|e| e.decode().ok())
        .collect())
}

/// Exports the component of each registered blueprint that `snapshots` (the DR location's)
/// lack, before the DR point that names it is written. Components are exported once, under
/// their digest. A component missing here or changed since it was registered is left out
/// with a warning (its runs fail too). Returns how many were exported.
async fn export_components(
    home: &Home,
    catalog: &Catalog,
    repo: &Repository,
    snapshots: &[SnapshotInfo],
) -> anyhow::Result<usize> {
    let stored: BTreeSet<&str> = snapshots.iter().map(|s| s.source()).collect();
    let mut exported = 0;
    for record in registrations(catalog)? {
        let stream = component_stream(&record.digest);
        if stored.contains(stream.as_str()) {
            continue;
        }
        let bytes = crate::blueprint::component_file(home, &record)
            .and_then(|path| std::fs::read(path).ok())
            .filter(|b| cairn_engine::component_digest(b) == record.digest);
        let Some(bytes) = bytes else {
            tracing::warn!(
                "the component of blueprint {:?} ({}) is missing or changed: it is not in the DR location; \
                 register it again with `cairn blueprint add FILE`",
                record.name,
                record.digest
            );
            continue;
        };
        repo.backup_stream(&stream, bytes.as_slice(), BackupOptions::new())
            .await
            .with_context(|| {
                format!(
                    "cannot export the component of blueprint {:?} to the DR location",
                    record.name
                )
            })?;
        exported += 1;
    }
    Ok(exported)
}

/// What a DR restore did with the components of the blueprints it registered.
#[derive(Debug, Default, Serialize)]
struct Components {
    /// Restored from the DR location into this home.
    restored: Vec<String>,
    /// Already in this home.
    present: Vec<String>,
    /// Neither: they must be registered again.
    missing: Vec<String>,
    /// In the DR location, but damaged (or not readable): they must be registered again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    damaged: Vec<String>,
}

/// Restores into this home the component of each blueprint the restored catalog registers and
/// the home lacks, checking each against its digest. The catalog is back whatever happens here:
/// a component that cannot be restored is a warning, and listed as missing.
async fn restore_components(home: &Home, catalog: &Catalog, repo: &Repository) -> Components {
    let mut done = Components::default();
    let records = registrations(catalog).unwrap_or_else(|e| {
        errln!(
            "cairn: warning: cannot read the registered blueprints: {}",
            crate::one_line(&e)
        );
        Vec::new()
    });
    let mut snapshots = None;
    for record in records {
        let path = home.component(&record.digest);
        if path.is_file() {
            done.present.push(record.name);
            continue;
        }
        if snapshots.is_none() {
            snapshots = Some(repo.snapshots(&SnapshotFilter::new()).await.unwrap_or_else(|e| {
                errln!("cairn: warning: cannot list the DR location's blueprint components: {e}");
                Vec::new()
            }));
        }
        let stream = component_stream(&record.digest);
        let found = snapshots.iter().flatten().find(|s| s.source() == stream);
        match restore_component(home, repo, &record, found).await {
            Ok(true) => done.restored.push(record.name),
            Ok(false) => done.missing.push(record.name),
            Err(e) => {
                errln!("cairn: warning: {}", crate::one_line(&e));
                done.damaged.push(record.name);
            }
        }
    }
    done
}

/// Restores the component of `record` from `snapshot`; `false` when there is none.
async fn restore_component(
    home: &Home,
    repo: &Repository,
    record: &cairn_catalog::Blueprint,
    snapshot: Option<&SnapshotInfo>,
) -> anyhow::Result<bool> {
    let Some(snapshot) = snapshot else {
        return Ok(false);
    };
    let what = || format!("the component of blueprint {:?}", record.name);
    let mut bytes = Vec::new();
    repo.restore_stream(&snapshot.id, &mut bytes)
        .await
        .with_context(|| format!("cannot restore {}", what()))?;
    if cairn_engine::component_digest(&bytes) != record.digest {
        anyhow::bail!(
            "{} in the DR location (snapshot {}) does not have the digest {} it was registered with",
            what(),
            snapshot.id,
            record.digest
        );
    }
    let path = home.component(&record.digest);
    let partial = path.with_extension("wasm.partial");
    std::fs::create_dir_all(home.blueprints())
        .and_then(|()| std::fs::write(&partial, &bytes))
        .and_then(|()| std::fs::rename(&partial, &path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

/// The artifact of a DR point's manifest export, for the blueprint.
fn point_artifact(name: String, repository: &str, snapshot: &str) -> cairn_engine::Artifact {
    cairn_engine::Artifact {
        name,
        values: vec![
            ("kind".into(), "repository".into()),
            ("repository".into(), repository.to_owned()),
            ("snapshot".into(), snapshot.to_owned()),
        ],
    }
}

/// Runs `request` (its action, parameters and artifacts) on the DR blueprint with the catalog
/// and the DR repository; the namespace and the grants are set here.
async fn run_blueprint(
    home: &Home,
    path: &Path,
    catalog: Arc<Catalog>,
    mode: cairn_catalog::DrMode,
    exports: Arc<crate::exports::RepoExports>,
    request: RunRequest,
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
    let action = request.action.clone();
    let request = RunRequest {
        namespace: NAMESPACE.to_owned(),
        grants: [Capability::Export, Capability::Import, Capability::Catalog]
            .into_iter()
            .collect::<BTreeSet<_>>(),
        ..request
    };
    engine
        .run(&blueprint, &host, request)
        .await
        .map_err(|e| anyhow::anyhow!("cannot run the DR blueprint's {action}: {e}"))
}

/// The DR passphrase, with the DR location's unwrapped key cached in the home
/// ([`Home::dr_key_cache`]): a run after the first skips the Argon2id derivation (about a third
/// of a DR run's CPU). The cache holds the repository secret for one key slot, readable by the
/// owner only, like the default repository's key file beside it; it is bound to the slot, to
/// the passphrase source as shown (a `raw:` value masked: the cache never holds the
/// passphrase) and to the passphrase itself by a cheap fingerprint
/// ([`Passphrase::fingerprint`]), so a passphrase changed in the source (an environment
/// variable, a file) is derived and checked again, and fails the run if it no longer opens the
/// location. `cairn dr enable` derives it anew.
///
/// Without the passphrase ([`CachedKey::cache_only`]) the cache alone opens the slot it was
/// cached for: the owner-marker checks of policy retention and `repo forget|prune` use it where
/// the passphrase source cannot be read (a cron job's or CI runner's shell without the
/// variable). That reads no more than the home already holds, and is sound where a DR run would
/// not be: a marker is read, never written, and authenticated, so a cache that no longer fits
/// the location opens nothing and the check fails as it did without the passphrase. A run
/// writes DR points, which only a passphrase checked against its source may do.
#[derive(Debug)]
struct CachedKey {
    passphrase: Option<Passphrase>,
    file: PathBuf,
    source: String,
}

/// The kind of [`CachedKey`]'s slots: a passphrase's, which it opens faster.
const PASSPHRASE_KIND: &str = "passphrase";

/// The cache file of [`CachedKey`].
#[derive(Serialize, Deserialize)]
struct KeyCache {
    source: String,
    /// The slot it opens: its id (the AAD) and wrapped secret, hex (neither is secret).
    aad: String,
    wrapped: String,
    /// The unwrapped repository secret, hex.
    secret: String,
    /// The passphrase's fingerprint, salted with the slot's id, hex (absent in caches of
    /// older builds, which are then derived again).
    #[serde(default)]
    passphrase: String,
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl CachedKey {
    /// The passphrase from `source`, with the home's cache.
    fn new(home: &Home, source: &str) -> anyhow::Result<Self> {
        Ok(Self {
            passphrase: Some(passphrase(source)?),
            file: home.dr_key_cache(),
            source: crate::shown_source(source),
        })
    }

    /// The home's cache alone, for the passphrase from `source` that cannot be read here: it
    /// opens only the slot it was cached for, and derives nothing.
    fn cache_only(home: &Home, source: &str) -> Self {
        Self {
            passphrase: None,
            file: home.dr_key_cache(),
            source: crate::shown_source(source),
        }
    }

    fn cached(&self, slot: &WrappedKey, aad: &[u8]) -> Option<Vec<u8>> {
        let cache: KeyCache = serde_json::from_slice(&std::fs::read(&self.file).ok()?).ok()?;
        let passphrase = match &self.passphrase {
            Some(_) => cache.passphrase == self.fingerprint(aad)?,
            // Nothing to compare with; the slot still has to be the one cached.
            None => true,
        };
        (cache.source == self.source
            && cache.aad == to_hex(aad)
            && cache.wrapped == slot.wrapped
            && passphrase)
            .then(|| from_hex(&cache.secret))
            .flatten()
    }

    /// The passphrase's fingerprint, hex; `None` when it cannot be made or there is no
    /// passphrase (the cache is then neither checked against it nor written).
    fn fingerprint(&self, aad: &[u8]) -> Option<String> {
        self.passphrase
            .as_ref()?
            .fingerprint(aad)
            .ok()
            .map(|f| to_hex(&f))
    }

    /// Best effort: a cache that cannot be written costs the next run a derivation.
    fn store(&self, slot: &WrappedKey, aad: &[u8], secret: &[u8]) {
        let Some(passphrase) = self.fingerprint(aad) else {
            return;
        };
        let cache = KeyCache {
            source: self.source.clone(),
            aad: to_hex(aad),
            wrapped: slot.wrapped.clone(),
            secret: to_hex(secret),
            passphrase,
        };
        let tmp = self.file.with_extension("tmp");
        let written = serde_json::to_vec(&cache)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                if let Some(dir) = self.file.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let _ = std::fs::remove_file(&tmp);
                cairn_repository::write_private(&tmp, &json)?;
                std::fs::rename(&tmp, &self.file)
            });
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %self.file.display(), "cannot cache the DR key");
        }
    }
}

#[async_trait::async_trait]
impl KeyProvider for CachedKey {
    fn kind(&self) -> &str {
        PASSPHRASE_KIND
    }

    async fn wrap(&self, secret: &[u8], aad: &[u8]) -> cairn_repository::Result<WrappedKey> {
        match &self.passphrase {
            Some(passphrase) => passphrase.wrap(secret, aad).await,
            None => Err(cairn_repository::Error::KeyProvider {
                provider: PASSPHRASE_KIND.into(),
                reason: "a new key slot needs the DR passphrase, not only its cached key".into(),
            }),
        }
    }

    async fn unwrap(
        &self,
        slot: &WrappedKey,
        aad: &[u8],
    ) -> cairn_repository::Result<Option<Vec<u8>>> {
        if let Some(secret) = self.cached(slot, aad) {
            return Ok(Some(secret));
        }
        let Some(passphrase) = &self.passphrase else {
            return Ok(None);
        };
        let secret = passphrase.unwrap(slot, aad).await?;
        if let Some(secret) = &secret {
            self.store(slot, aad, secret);
        }
        Ok(secret)
    }
}

/// Drops the cached DR key, if any.
fn forget_cached_key(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::Error::new(e).context(format!("cannot remove {}", path.display())))
        }
        _ => Ok(()),
    }
}

/// A JSON meta value of the catalog.
fn load_meta<T: serde::de::DeserializeOwned>(
    catalog: &Catalog,
    key: &str,
) -> anyhow::Result<Option<T>> {
    catalog
        .meta(key)?
        .map(|text| {
            serde_json::from_str(&text).with_context(|| {
                format!("the stored DR state `{key}` is damaged; run `cairn dr enable` again")
            })
        })
        .transpose()
}

/// Opens the DR location of `cluster_id` under `profile`, creating it (with `protection`) if
/// there is none; either way `key` caches the location's key.
async fn open_or_init(
    profile: &str,
    cluster_id: &str,
    key: &CachedKey,
    protection: Option<std::time::Duration>,
) -> anyhow::Result<Repository> {
    let loc = location(profile, cluster_id);
    let url = loc.url().to_owned();
    match Repository::open(loc.clone(), key).await {
        Ok(repo) => {
            if let Some(p) = protection.filter(|p| *p != repo.protection()) {
                outln!(
                    "note: {url} already exists with a protection period of {}; --protection {} applies only \
                     when the DR location is created",
                    cairn_repository::Retention::period_text(repo.protection()),
                    cairn_repository::Retention::period_text(p)
                );
            }
            Ok(repo)
        }
        Err(cairn_repository::Error::NotARepository { .. }) => {
            let opts =
                cairn_repository::InitOptions::new().protection(protection.unwrap_or_default());
            let repo = Repository::init(loc.clone(), key, opts)
                .await
                .with_context(|| format!("cannot create the DR location {url}"))?;
            // Creating wraps a new slot, which caches nothing: opening it does. Best effort:
            // without the cache, the first run derives the key.
            if let Err(e) = Repository::open(loc, key).await {
                tracing::warn!(error = %e, %url, "cannot cache the DR key");
            }
            Ok(repo)
        }
        Err(cairn_repository::Error::WrongPassphrase) => Err(usage(format!(
            "{url} already holds DR points under another passphrase: give that passphrase"
        ))),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot open the DR location {url}"))),
    }
}

/// The newest owner marker in a DR location, if any.
async fn read_marker(repo: &Repository) -> anyhow::Result<Option<OwnerMarker>> {
    let (mut markers, damaged) = repo
        .snapshots_with_damage(&SnapshotFilter::new().source(OWNER))
        .await
        .context("cannot list the DR location's owner markers")?;
    // A snapshot that does not open may be the newest marker: the check cannot say who
    // maintains the data then, and says so rather than find none. (A key that does not fit
    // the location, a cached one gone bad, opens nothing, and ends here too.)
    if let Some(d) = damaged.first() {
        anyhow::bail!(
            "{} of the DR location's snapshots do not open (the first, {}: {}), and one may be \
             an owner marker: check the DR passphrase (and `dr/location.key`, the home's cached \
             key: remove it to have the next `cairn dr run` cache it again), or remove what is \
             damaged from the DR location",
            damaged.len(),
            d.id,
            d.error
        );
    }
    markers.sort_by_key(|m| m.time);
    let Some(newest) = markers.pop() else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    repo.restore_stream(&newest.id, &mut bytes)
        .await
        .with_context(|| format!("cannot read the owner marker {}", newest.id))?;
    let mut marker: OwnerMarker = serde_json::from_slice(&bytes)
        .with_context(|| format!("the owner marker {} is damaged", newest.id))?;
    marker.host = newest.hostname;
    Ok(Some(marker))
}

/// Writes an owner marker naming this instance into a DR location.
async fn write_marker(repo: &Repository, home: &Home, owner: &str) -> anyhow::Result<OwnerMarker> {
    let marker = OwnerMarker {
        owner: owner.to_owned(),
        host: String::new(),
        home: home.root().display().to_string(),
        time: jiff::Timestamp::now(),
    };
    let json = serde_json::to_vec(&marker)?;
    repo.backup_stream(
        OWNER,
        json.as_slice(),
        cairn_repository::BackupOptions::new().tag("dr-owner"),
    )
    .await
    .context("cannot write the owner marker")?;
    Ok(marker)
}

/// The refusal of maintenance `what` because `marker` names another instance.
fn taken_over(marker: &OwnerMarker, url: &str, me: &str, what: &str) -> anyhow::Error {
    usage(format!(
        "{what} refused: {} (owner marker in {url}), so this instance ({me}) must not maintain that \
         backup data; if that instance is gone for good, run `cairn dr take-ownership --force` here",
        marker.describe()
    ))
}

/// Refuses maintenance `what` when an owner marker in a DR location this instance relates to
/// (its own, and the one it was restored from) names another instance. `open` is the
/// instance's own DR location when the caller has already opened it.
async fn check_markers(
    home: &Home,
    catalog: &Catalog,
    what: &str,
    open: Option<&Repository>,
) -> anyhow::Result<()> {
    match foreign_marker(home, catalog, what, open).await? {
        Some((marker, url)) => Err(taken_over(
            &marker,
            &url,
            &catalog.cluster_id().to_string(),
            what,
        )),
        None => Ok(()),
    }
}

/// The first owner marker naming another instance in a DR location this instance relates to
/// ([`check_markers`]), with that location's URL.
async fn foreign_marker(
    home: &Home,
    catalog: &Catalog,
    what: &str,
    open: Option<&Repository>,
) -> anyhow::Result<Option<(OwnerMarker, String)>> {
    let me = catalog.cluster_id().to_string();
    let mut places = Vec::new();
    if let Some(config) = load_config(catalog)? {
        places.push((
            config.profile,
            me.clone(),
            config.passphrase_from,
            open.cloned(),
        ));
    }
    if let Some(source) = load_meta::<Source>(catalog, SOURCE_KEY)? {
        places.push((
            source.profile,
            source.cluster_id,
            source.passphrase_from,
            None,
        ));
    }
    for (profile, cluster_id, passphrase_from, repo) in places {
        let url = location(&profile, &cluster_id).url().to_owned();
        let repo = match repo {
            Some(repo) => repo,
            None => {
                let loc = location(&profile, &cluster_id);
                let opened = match passphrase(&passphrase_from) {
                    Ok(key) => Repository::open(loc, &key).await,
                    // Where the passphrase source cannot be read (a cron job's shell without
                    // the variable), the key a DR run cached in the home reads the markers.
                    Err(e) => {
                        let cached = CachedKey::cache_only(home, &passphrase_from);
                        match Repository::open(loc, &cached).await {
                            Err(cairn_repository::Error::WrongPassphrase) => {
                                return Err(e.context(format!(
                                    "{what}: checking that no other instance took over \
                                     maintenance needs the DR passphrase, from where `cairn dr \
                                     enable` was told to read it, or the DR key cached in {} \
                                     (none that opens {url} is there: `cairn dr enable` or a \
                                     `cairn dr run` with the passphrase source caches it)",
                                    home.dr_key_cache().display()
                                )));
                            }
                            opened => opened,
                        }
                    }
                };
                match opened {
                    Ok(repo) => repo,
                    Err(cairn_repository::Error::NotARepository { .. }) => continue,
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "{what}: cannot read the owner marker in the DR location {url}"
                        )));
                    }
                }
            }
        };
        if let Some(marker) = read_marker(&repo).await?
            && marker.owner != me
        {
            return Ok(Some((marker, url)));
        }
    }
    Ok(None)
}

/// When DR last ran and is next due (at once if it never ran); `None` while DR is not enabled.
pub(crate) fn schedule(home: &Home) -> anyhow::Result<Option<crate::metrics::DrGauges>> {
    let catalog = crate::catalog::open(home)?;
    let Some(config) = load_config(&catalog)? else {
        return Ok(None);
    };
    let last: Option<LastRun> = load_meta(&catalog, LAST_RUN_KEY)?;
    let mut next_run = last
        .as_ref()
        .map_or(jiff::Timestamp::UNIX_EPOCH, |l| config.next_due(l.time));
    // A run that failed since is tried again after a while, not at once in a loop. A last run
    // dated ahead of the clock counts as older than any failure.
    if let Some(failed) = load_meta::<LastFailure>(&catalog, LAST_FAILURE_KEY)?
        && last
            .as_ref()
            .is_none_or(|l| failed.time > l.time || crate::schedule::ahead_of_clock(l.time))
    {
        let retry = (failed.time + DR_RETRY).min(config.next_due(failed.time));
        next_run = next_run.max(retry);
    }
    Ok(Some(crate::metrics::DrGauges {
        last_run: last.as_ref().map(|l| l.time),
        next_run,
    }))
}

/// The catalog meta key of the last DR run `cairn serve` started that failed.
const LAST_FAILURE_KEY: &str = "dr.last-failure";

/// How long `cairn serve` waits to try a failed DR run again (sooner when DR is due sooner).
const DR_RETRY: jiff::SignedDuration = jiff::SignedDuration::from_secs(300);

/// A DR run that failed, kept for `dr status` and for when to try again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LastFailure {
    time: jiff::Timestamp,
    error: String,
}

/// For `cairn serve`: `cairn dr run --if-due` with the DR blueprint `blueprint`. A failure is
/// kept in the catalog: `dr status` shows it, and the next try waits a while.
pub(crate) async fn run_if_due(home: &Home, blueprint: BlueprintArg) -> anyhow::Result<ExitCode> {
    let cmd = DrCommand::Run {
        if_due: true,
        blueprint,
        output: Output::Text,
    };
    let started = jiff::Timestamp::now();
    let ran = run(cmd, Some(home.root().to_path_buf())).await;
    let error = match &ran {
        Ok(code) if *code == ExitCode::from(exit::OK) => None,
        Ok(_) => Some("the DR blueprint's run failed (serve's log says why)".to_owned()),
        Err(e) => Some(crate::one_line(e)),
    };
    if let Some(error) = error {
        let failure = LastFailure {
            time: started,
            error,
        };
        crate::catalog::open(home)?
            .set_meta(LAST_FAILURE_KEY, Some(&serde_json::to_string(&failure)?))?;
    }
    ran
}

/// For `cairn repo forget|prune`: refuses when an owner marker names another instance.
pub(crate) async fn check_owner(home: &Home, what: &str) -> anyhow::Result<()> {
    if !home.catalog().exists() {
        return Ok(());
    }
    let catalog = crate::catalog::open(home)?;
    check_markers(home, &catalog, what, None).await
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
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
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            max_chain,
            protection,
            accept_points,
        } => {
            let catalog = crate::catalog::open(&home)?;
            // Enabling again changes what is given and keeps the rest: a new passphrase
            // source must not put retention back to its defaults (and remove DR points). After
            // a take-over, the settings the DR point carried are the rest (a raw passphrase,
            // which points never carry, excepted).
            let previous = load_config(&catalog)?;
            let restored = match &previous {
                Some(_) => None,
                None => load_meta::<Config>(&catalog, RESTORED_KEY)?,
            };
            let kept = previous.as_ref().or(restored.as_ref());
            let (Some(profile), Some(passphrase_from)) = (
                profile.or_else(|| kept.map(|p| p.profile.clone())),
                passphrase_from.or_else(|| {
                    kept.map(|p| p.passphrase_from.clone())
                        .filter(|source| source != "raw:")
                }),
            ) else {
                return Err(usage(
                    "dr enable: DR is not enabled on this instance yet: give its location and \
                     passphrase (--profile URL --passphrase-from SOURCE)",
                ));
            };
            // `--profile NAME` names a location profile everywhere else; here it is the DR
            // location itself, read on recovery before there is a catalog to hold profiles.
            if !crate::is_url(&profile)
                && !std::path::Path::new(&profile).exists()
                && let Some(named) = catalog.profile(&profile)?
            {
                return Err(usage(format!(
                    "dr enable --profile {profile}: DR takes the location itself, not a location \
                     profile's name (a recovery reads it before any catalog holds profiles); give \
                     its URL, --profile {}, with credentials in the environment (AWS_*, \
                     AZURE_STORAGE_*, GOOGLE_*). A directory named {profile} is made only when it \
                     is given as ./{profile}",
                    named.repository
                )));
            }
            let (profile, passphrase_from) = kept_absolute(profile, passphrase_from);
            let base = kept.cloned().unwrap_or_else(|| Config {
                profile: String::new(),
                mode: cairn_catalog::DrMode::LocalSnapshot,
                passphrase_from: String::new(),
                frequency: "@hourly".into(),
                retention: cairn_catalog::Retention {
                    last: 3,
                    hourly: 24,
                    daily: 7,
                    weekly: 4,
                    monthly: 12,
                    yearly: 0,
                    // DR points take the count and calendar rules (no --keep-within here).
                    ..cairn_catalog::Retention::default()
                },
                max_chain: MAX_CHAIN,
            });
            let r = base.retention;
            let config = Config {
                profile,
                mode: mode.unwrap_or(base.mode),
                passphrase_from,
                frequency: frequency.unwrap_or(base.frequency),
                retention: cairn_catalog::Retention {
                    last: keep_last.unwrap_or(r.last),
                    hourly: keep_hourly.unwrap_or(r.hourly),
                    daily: keep_daily.unwrap_or(r.daily),
                    weekly: keep_weekly.unwrap_or(r.weekly),
                    monthly: keep_monthly.unwrap_or(r.monthly),
                    yearly: keep_yearly.unwrap_or(r.yearly),
                    ..r
                },
                max_chain: max_chain.unwrap_or(base.max_chain),
            };
            if config.retention == cairn_catalog::Retention::default() {
                return Err(usage(
                    "dr enable: every --keep-* is 0, which would keep no DR point: keep at least \
                     the newest (--keep-last 1)",
                ));
            }
            enable(
                &home,
                &catalog,
                &config,
                previous.as_ref(),
                protection,
                accept_points,
            )
            .await?;
        }
        DrCommand::Disable => {
            let catalog = crate::catalog::open(&home)?;
            catalog.set_meta(CONFIG_KEY, None)?;
            outln!("DR disabled; DR points already exported stay in the location");
        }
        DrCommand::Run {
            if_due,
            blueprint,
            output,
        } => {
            let path = blueprint.resolve()?;
            let catalog = Arc::new(crate::catalog::open_verified_daily(&home)?);
            let config = require_config(&catalog)?;
            let last: Option<LastRun> = load_meta(&catalog, LAST_RUN_KEY)?;
            if if_due
                && let Some(last) = &last
                && jiff::Timestamp::now() < config.next_due(last.time)
            {
                let next = config.next_due(last.time);
                match output {
                    Output::Json => print_json(&serde_json::json!({
                        "status": "not-due",
                        "last_run": last.time,
                        "next_due": next,
                    }))?,
                    Output::Text => outln!(
                        "DR not due (frequency {}): the newest DR point is from {}; next run due at {next}",
                        config.frequency,
                        last.time
                    ),
                }
                return Ok(ExitCode::from(exit::OK));
            }
            let key = CachedKey::new(&home, &config.passphrase_from)?;
            let cluster_id = catalog.cluster_id().to_string();
            let repo = open_source(&config.profile, &cluster_id, &key).await?;
            check_markers(&home, &catalog, "the DR run", Some(&repo)).await?;
            let url = location(&config.profile, &cluster_id).url().to_owned();
            let snapshots = repo
                .snapshots(&SnapshotFilter::new())
                .await
                .context("cannot list the DR location")?;
            let Writers {
                mut known,
                unreadable,
            } = check_writers(&catalog, &repo, &url, &snapshots).await?;
            let components = export_components(&home, &catalog, &repo, &snapshots).await?;
            let stored = stored_points(&home, &repo, &snapshots).await?;
            let owner = owns_maintenance(&catalog)?;
            let mut params = config.params();
            params.push(("protection".into(), repo.protection().as_secs().to_string()));
            params.push(("maintain".into(), owner.to_string()));
            params.push((
                "settings".into(),
                serde_json::to_string(&config.exported())?,
            ));
            // Kept before the run: a run that seals its point and dies before it is recorded
            // left a point of this home's, which the next run knows by this id.
            let run_id = uuid::Uuid::new_v4().to_string();
            known.pending.push(run_id.clone());
            let excess = known.pending.len().saturating_sub(MAX_PENDING);
            known.pending.drain(..excess);
            catalog.set_meta(KNOWN_KEY, Some(&serde_json::to_string(&known)?))?;
            params.push(("run-id".into(), run_id.clone()));
            if let Some(last) = &last {
                params.push(("last-point".into(), last.point.clone()));
            }
            let exports = Arc::new(crate::exports::RepoExports::new(repo, url.clone(), None));
            let report = run_blueprint(
                &home,
                &path,
                catalog.clone(),
                config.mode,
                exports.clone(),
                RunRequest {
                    action: "backup".into(),
                    params,
                    artifacts: stored,
                    ..RunRequest::default()
                },
            )
            .await?;
            if !report.ok {
                forget_if_unsealed(&catalog, exports.repository(), &mut known, &run_id).await;
                let error = report.error.as_deref().unwrap_or("unknown error");
                if output == Output::Json {
                    print_json(&serde_json::json!({ "status": "failed", "error": error }))?;
                }
                errln!("cairn: the DR run failed: {error}");
                return Ok(ExitCode::from(exit::FAILED));
            }
            let outputs = &report.outputs;
            let point = outputs
                .artifacts
                .iter()
                .find(|a| a.name == MANIFEST)
                .and_then(|a| a.get("snapshot"))
                .unwrap_or_default()
                .to_owned();
            let number = |k: &str| {
                outputs
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
            let bytes: u64 = outputs
                .artifacts
                .iter()
                .filter(|a| a.name != MANIFEST)
                .filter_map(|a| a.get("bytes").and_then(|b| b.parse::<u64>().ok()))
                .sum();
            let rebased = outputs.get("rebased");
            let applied = outputs.get("retention") == Some("applied");
            let removed: Vec<&str> = outputs
                .get("removed-points")
                .unwrap_or_default()
                .split(',')
                .filter(|p| !p.is_empty())
                .collect();
            let mut points: BTreeSet<String> = snapshots
                .iter()
                .filter(|s| s.source() == MANIFEST && !unreadable.contains(&s.id))
                .map(|s| s.id.clone())
                .chain([point.clone()])
                .collect();
            for r in &removed {
                points.remove(*r);
            }
            known.points = points;
            known.recorded(&run_id, &unreadable);
            known.conflict = false;
            catalog.set_meta(KNOWN_KEY, Some(&serde_json::to_string(&known)?))?;
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "status": "succeeded",
                    "point": point,
                    "mode": config.mode,
                    "from": last.from,
                    "to": last.to,
                    "bytes": bytes,
                    "components_exported": components,
                    "rebased": rebased,
                    "retention": if applied {
                        serde_json::json!({
                            "status": "applied",
                            "kept": number("kept"),
                            "protected": number("protected"),
                            "removed": removed,
                            "failed": number("remove-failed"),
                            "unreferenced": {
                                "removed": number("unreferenced-removed"),
                                "protected": number("unreferenced-protected"),
                                "failed": number("unreferenced-failed"),
                            },
                        })
                    } else {
                        serde_json::json!({ "status": "skipped", "reason": "this instance does not own maintenance" })
                    },
                }))?,
                Output::Text => {
                    outln!(
                        "DR point {point}: mode {}, changes {}..{}, {bytes} bytes exported",
                        config.mode,
                        last.from,
                        last.to
                    );
                    if components > 0 {
                        outln!(
                            "exported {components} blueprint component(s) registered since the last run"
                        );
                    }
                    if let Some(why) = rebased {
                        outln!("started a new chain: {why}");
                    }
                    if applied {
                        outln!(
                            "retention: kept {} DR point(s), {} of them under the location's protection period; removed {}",
                            number("kept"),
                            number("protected"),
                            removed.len()
                        );
                        if number("unreferenced-removed") > 0 {
                            outln!(
                                "removed {} data export(s) of DR runs that did not finish",
                                number("unreferenced-removed")
                            );
                        }
                    } else {
                        outln!(
                            "retention skipped: this instance does not own maintenance of the backup data \
                             (run `cairn dr take-ownership` once the old instance is gone)"
                        );
                    }
                }
            }
            if number("remove-failed") > 0 {
                errln!(
                    "cairn: retention could not remove {} DR point(s); see the warnings above, they are tried again next run",
                    number("remove-failed")
                );
            }
        }
        DrCommand::Status { output } => {
            let catalog = crate::catalog::open(&home)?;
            warn_unfinished_restore(&catalog, &home);
            let config = load_config(&catalog)?;
            let last: Option<LastRun> = catalog
                .meta(LAST_RUN_KEY)?
                .and_then(|t| serde_json::from_str(&t).ok());
            let next_due = config
                .as_ref()
                .zip(last.as_ref())
                .map(|(c, l)| c.next_due(l.time));
            let restored = catalog.restore_state()?;
            let failure: Option<LastFailure> = load_meta(&catalog, LAST_FAILURE_KEY)?
                .filter(|f: &LastFailure| last.as_ref().is_none_or(|l| f.time > l.time));
            let unfinished = load_meta::<Restoring>(&catalog, RESTORING_KEY)?.is_some();
            let mut owner = catalog.maintenance_owner()? && !unfinished;
            // What this catalog believes, checked against the owner markers: another instance
            // that took over says so only there.
            let mut marker_note = None;
            if owner {
                match foreign_marker(&home, &catalog, "maintenance", None).await {
                    Ok(None) => {}
                    Ok(Some((marker, url))) => {
                        owner = false;
                        marker_note =
                            Some(format!("{} (owner marker in {url})", marker.describe()));
                    }
                    Err(e) => {
                        marker_note = Some(format!(
                            "the owner markers could not be read: {}",
                            crate::one_line(&e)
                        ));
                    }
                }
            }
            let cluster_id = catalog.cluster_id().to_string();
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "cluster_id": cluster_id,
                    "enabled": config.is_some(),
                    "mode": config.as_ref().map(|c| c.mode),
                    "profile": config.as_ref().map(|c| c.profile.clone()),
                    "passphrase_from": config.as_ref().map(|c| crate::shown_source(&c.passphrase_from)),
                    "frequency": config.as_ref().map(|c| c.frequency.clone()),
                    "retention": config.as_ref().map(|c| c.retention),
                    "cursor": catalog.dr_cursor()?,
                    "max_chain": config.as_ref().map(|c| c.max_chain),
                    "last_run": last,
                    "failed_since": failure,
                    "next_due": next_due,
                    "restored_from": restored.as_ref().map(|r| r.source.to_string()),
                    "maintenance_owner": owner,
                    "owner_marker": marker_note,
                }))?,
                Output::Text => {
                    outln!("cluster id:        {cluster_id}");
                    match &config {
                        Some(c) => {
                            outln!("mode:              {}", c.mode);
                            outln!("profile:           {}", c.profile);
                            outln!(
                                "passphrase source: {}",
                                crate::shown_source(&c.passphrase_from)
                            );
                            outln!("frequency:         {}", c.frequency);
                            let r = c.retention;
                            outln!(
                                "retention:         last {}, hourly {}, daily {}, weekly {}, monthly {}, yearly {}; chains of at most {}",
                                r.last,
                                r.hourly,
                                r.daily,
                                r.weekly,
                                r.monthly,
                                r.yearly,
                                c.max_chain
                            );
                        }
                        None => outln!("DR:                not enabled"),
                    }
                    match &last {
                        Some(l) => outln!(
                            "last run:          {} (point {}, changes {}..{})",
                            l.time,
                            l.point,
                            l.from,
                            l.to
                        ),
                        None => outln!("last run:          never"),
                    }
                    if let Some(f) = &failure {
                        outln!("failed since:      {}: {}", f.time, f.error);
                    }
                    if let Some(next) = next_due {
                        outln!("next run due:      {next}");
                    } else if config.is_some() {
                        outln!("next run due:      now");
                    }
                    if let Some(r) = &restored {
                        outln!("restored from:     cluster {}", r.source);
                    }
                    outln!(
                        "maintenance owner: {}",
                        match (owner, &marker_note) {
                            (true, None) => "yes".to_owned(),
                            (true, Some(note)) => format!("yes, as this catalog says ({note})"),
                            (false, Some(note)) => format!("no: {note}"),
                            (false, None) if unfinished => {
                                "no (finish the DR restore first, as the warning says)".to_owned()
                            }
                            (false, None) =>
                                "no (run `cairn dr take-ownership` to take over)".to_owned(),
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
            let source = source.resolved().await?;
            let key = passphrase(&source.passphrase_from)?;
            let repo = open_source(&source.profile, &source.cluster_id, &key).await?;
            let mut list = points(&repo).await?;
            if let Some(before) = &before {
                let limit = cairn_repository::parse_time(before, &crate::repo::local_zone())
                    .map_err(|e| usage(format!("--before {before}: {e}")))?;
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
                        outln!(
                            "{}  {}  {:<17}  changes {}..{}",
                            short(&p.id),
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
            // Cut anywhere, a restore is finished by running it again (its marker says where).
            crate::exit_on_interrupt(
                "the DR restore is left unfinished: run the same `cairn dr restore` again to \
                 finish it",
            )?;
            let mut source = source;
            (source.profile, source.passphrase_from) =
                kept_absolute(source.profile, source.passphrase_from);
            let catalog = Arc::new(crate::catalog::open(&home)?);
            let state = catalog.restore_state()?;
            // Without --cluster-id, the cluster this home restored from is the one meant (a
            // restore run again to finish it, a standby moved forward), whatever else the
            // location holds.
            if source.cluster_id.is_none() {
                source.cluster_id = match &state {
                    Some(r) => Some(r.source.to_string()),
                    None => load_meta::<Source>(&catalog, SOURCE_KEY)?
                        .filter(|done| done.profile == source.profile)
                        .map(|done| done.cluster_id),
                };
            }
            let source = source.resolved().await?;
            let path = blueprint.resolve()?;
            let key = passphrase(&source.passphrase_from)?;
            let resuming = state
                .as_ref()
                .is_some_and(|r| r.source.to_string() == source.cluster_id);
            let changes = catalog.current_seq()?;
            let fresh_home = || {
                usage(format!(
                    "restore into a fresh --home (the instance at {} is not empty: its catalog \
                     has {changes} change{})",
                    home.root().display(),
                    if changes == 1 { "" } else { "s" }
                ))
            };
            // Where a restore of this home stands: finished (a later point of the same source
            // may follow, as a standby does, while nothing else changed here), begun (the same
            // point only, to finish it), or none (an empty home only).
            let finished = load_meta::<Source>(&catalog, SOURCE_KEY)?;
            let unfinished = load_meta::<Restoring>(&catalog, RESTORING_KEY)?;
            if let Some(begun) = &unfinished {
                // What a failed try applied is the source's own: the same point finishes it.
                if begun.cluster_id != source.cluster_id {
                    return Err(usage(format!(
                        "a DR restore of cluster {} into this home did not finish: finish it \
                         (`cairn dr restore` with its flags and --point {}), or {}",
                        begun.cluster_id,
                        short(&begun.point),
                        fresh_home()
                    )));
                }
            } else if let Some(done) = &finished {
                if done.cluster_id != source.cluster_id {
                    return Err(usage(format!(
                        "this instance was restored from cluster {}, not {}: {}",
                        done.cluster_id,
                        source.cluster_id,
                        fresh_home()
                    )));
                }
                if catalog.maintenance_owner()? {
                    return Err(usage(format!(
                        "this instance took over from cluster {} (`cairn dr take-ownership`), and \
                         its catalog has gone on since: a DR restore would mix the two; {}",
                        source.cluster_id,
                        fresh_home()
                    )));
                }
                if let Some(seq) = done.catalog_seq
                    && changes > seq
                {
                    return Err(usage(format!(
                        "this instance's catalog has changed since its DR restore ({} change{} \
                         of its own): another restore would mix them with the source's; {}",
                        changes - seq,
                        if changes - seq == 1 { "" } else { "s" },
                        fresh_home()
                    )));
                }
            } else if changes > 0 && !resuming {
                return Err(fresh_home());
            }
            let repo = open_source(&source.profile, &source.cluster_id, &key).await?;
            let (list, damaged) = points_and_damaged(&repo).await?;
            let chosen = match &point {
                None => {
                    if let Some((_, saved)) = damaged.iter().max_by_key(|(_, saved)| *saved) {
                        let readable = list
                            .first()
                            .map_or_else(|| "ID".to_owned(), |p| short(&p.id).to_owned());
                        return Err(usage(format!(
                            "the DR location holds what was saved at {saved}, after its newest \
                             readable DR point, and cannot be read as a point (the warning above \
                             says why), so restoring the newest readable one might lose what came \
                             after it: choose knowingly with --point {readable} (`cairn dr \
                             review` lists the readable ones), or repair the DR location"
                        )));
                    }
                    list.first().cloned().ok_or_else(|| {
                        usage(format!(
                            "no DR points for cluster {} at {}: nothing to restore",
                            source.cluster_id, source.profile
                        ))
                    })?
                }
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
            if let Some(begun) = &unfinished
                && begun.point != chosen.id
            {
                return Err(usage(format!(
                    "the restore of DR point {} into this home did not finish, and point {} \
                     would be applied over part of it: finish that one (--point {}), or restore \
                     point {} into a fresh --home",
                    short(&begun.point),
                    short(&chosen.id),
                    short(&begun.point),
                    short(&chosen.id)
                )));
            }
            let applied = state
                .as_ref()
                .and_then(|s| s.applied.values().max().copied())
                .unwrap_or(0);
            if finished.is_some() && unfinished.is_none() && chosen.to < applied {
                return Err(usage(format!(
                    "this home holds the changes of cluster {} up to {applied} already, and DR \
                     point {} goes only up to {}: a restore moves a home forward, never back; \
                     restore it into a fresh --home",
                    source.cluster_id,
                    short(&chosen.id),
                    chosen.to
                )));
            }
            // A standby moved forward skips the changes it holds by number: the point must be
            // built on the one it applied, or those numbers are another history's changes.
            if let (Some(done), None) = (&finished, &unfinished)
                && let Some(last) = &done.last_point
                && let Some(at) = list.iter().position(|p| p.id == chosen.id)
            {
                check_lineage(&list, at, last, &source.cluster_id)?;
            }
            let chain = chain_of(&list, &chosen)?;
            // A legacy point is a full copy, which only an empty catalog takes.
            if chosen.mode == "legacy" && changes > 0 && unfinished.is_none() {
                return Err(usage(format!(
                    "DR point {} is a legacy full copy, which is restored only into an empty \
                     home; {}",
                    short(&chosen.id),
                    fresh_home()
                )));
            }
            catalog.set_meta(
                RESTORING_KEY,
                Some(&serde_json::to_string(&Restoring {
                    cluster_id: source.cluster_id.clone(),
                    point: chosen.id.clone(),
                })?),
            )?;
            let artifact = |name: String, p: &Point| point_artifact(name, repo.id(), &p.id);
            let mut artifacts = vec![artifact("point".into(), &chosen)];
            for (i, p) in chain.into_iter().enumerate() {
                artifacts.push(artifact(format!("candidate-{i}"), p));
            }
            let mode = parse_mode(&chosen.mode)
                .map_err(|e| anyhow::anyhow!("DR point {}: {e}", chosen.id))?;
            let url = location(&source.profile, &source.cluster_id)
                .url()
                .to_owned();
            let exports = Arc::new(crate::exports::RepoExports::new(repo, url, None));
            let report = run_blueprint(
                &home,
                &path,
                catalog.clone(),
                mode,
                exports.clone(),
                RunRequest {
                    action: "restore".into(),
                    artifacts,
                    ..RunRequest::default()
                },
            )
            .await?;
            if !report.ok {
                // Nothing applied: the home is as it was, and not left marked.
                if unfinished.is_none() && catalog.current_seq()? == changes {
                    catalog.set_meta(RESTORING_KEY, None)?;
                }
                let error = report.error.as_deref().unwrap_or("unknown error");
                if output == Output::Json {
                    print_json(&serde_json::json!({ "status": "failed", "error": error }))?;
                }
                errln!("cairn: the DR restore failed: {error}");
                return Ok(ExitCode::from(exit::FAILED));
            }
            let settings: Option<Config> = chosen
                .settings
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok());
            catalog.set_meta(
                RESTORED_KEY,
                settings
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()?
                    .as_deref(),
            )?;
            let components = restore_components(&home, &catalog, exports.repository()).await;
            let kept_from_resources = crate::operator::detach_restored(&catalog)?;
            // Finished: what take-ownership marks, and the change from which the catalog is
            // this instance's own.
            let source_record = Source {
                profile: source.profile.clone(),
                cluster_id: source.cluster_id.clone(),
                passphrase_from: source.passphrase_from.clone(),
                catalog_seq: Some(catalog.current_seq()?),
                last_point: Some(chosen.id.clone()),
            };
            catalog.set_meta(SOURCE_KEY, Some(&serde_json::to_string(&source_record)?))?;
            catalog.set_meta(RESTORING_KEY, None)?;
            let counts = catalog.counts()?;
            // Only a local-snapshot point says: whether its local snapshot was here.
            let in_place = report.outputs.get("in-place").map(|v| v == "true");
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "status": "succeeded",
                    "point": chosen,
                    "in_place": in_place,
                    "counts": counts,
                    "components": components,
                    "kept_from_resources": kept_from_resources,
                    "maintenance_owner": catalog.maintenance_owner()?,
                    "dr_settings": settings.as_ref().map(|c| serde_json::json!({
                        "mode": c.mode,
                        "profile": c.profile,
                        "frequency": c.frequency,
                        "retention": c.retention,
                        "max_chain": c.max_chain,
                        "passphrase_from": crate::shown_source(&c.passphrase_from),
                        "enabled": false,
                    })),
                }))?,
                Output::Text => {
                    outln!(
                        "restored DR point {} (mode {}, up to change {}) of cluster {}",
                        chosen.id,
                        chosen.mode,
                        chosen.to,
                        source.cluster_id
                    );
                    match in_place {
                        Some(true) => outln!(
                            "recovered in place: actions and local restore points came back from this home's local catalog snapshot"
                        ),
                        Some(false) => outln!(
                            "actions and local restore points were not restored: this home does not hold the point's local catalog snapshot"
                        ),
                        None => {}
                    }
                    if let Ok(mode) = chosen.mode.parse::<cairn_catalog::DrMode>()
                        && !mode.takes_snapshot()
                    {
                        let never: Vec<&str> = cairn_catalog::Kind::ALL
                            .into_iter()
                            .filter(|&k| lost_by(mode, false, k))
                            .map(|k| k.as_str())
                            .collect();
                        if !never.is_empty() {
                            outln!(
                                "mode {} does not carry {}: none came back",
                                chosen.mode,
                                never.join(", ")
                            );
                        }
                    }
                    if !components.restored.is_empty() {
                        outln!(
                            "restored the components of {} registered blueprint(s): {}",
                            components.restored.len(),
                            components.restored.join(", ")
                        );
                    }
                    if !components.missing.is_empty() {
                        outln!(
                            "the components of {} registered blueprint(s) are not in the DR location: {}; \
                             register them again with `cairn blueprint add FILE` before their policies run",
                            components.missing.len(),
                            components.missing.join(", ")
                        );
                    }
                    if !components.damaged.is_empty() {
                        outln!(
                            "the components of {} registered blueprint(s) in the DR location could not be restored \
                             (the warnings above say why): {}; register them again with `cairn blueprint add FILE` \
                             before their policies run",
                            components.damaged.len(),
                            components.damaged.join(", ")
                        );
                    }
                    if kept_from_resources > 0 {
                        outln!(
                            "{kept_from_resources} policies and bindings came from Kubernetes resources: they keep \
                             running, and `cairn serve --operator` takes each over when its resource is applied here"
                        );
                    }
                    outln!(
                        "this instance does not own maintenance of the backup data yet: run `cairn dr take-ownership` \
                         once the old instance is gone for good"
                    );
                    match &settings {
                        Some(c) => outln!(
                            "DR settings restored but disabled (mode {}, profile {}, frequency {}, passphrase source {}): \
                             {}, or set new ones with `cairn dr enable`",
                            c.mode,
                            c.profile,
                            c.frequency,
                            crate::shown_source(&c.passphrase_from),
                            if c.passphrase_from == "raw:" {
                                "after `cairn dr take-ownership`, `cairn dr enable --passphrase-from SOURCE` \
                                 enables them with a passphrase (a raw one never travels)"
                            } else {
                                "`cairn dr take-ownership` re-enables them"
                            }
                        ),
                        None => outln!(
                            "this DR point carries no DR settings: set them with `cairn dr enable`"
                        ),
                    }
                }
            }
        }
        DrCommand::TakeOwnership { force } => {
            let catalog = crate::catalog::open(&home)?;
            let me = catalog.cluster_id().to_string();
            // The DR locations whose data this instance maintains: the one it was restored
            // from, and its own. All are checked before any marker is written.
            let mut places = Vec::new();
            if let Some(src) = load_meta::<Source>(&catalog, SOURCE_KEY)? {
                places.push((src.profile, src.cluster_id, src.passphrase_from, true));
            }
            if let Some(c) = load_config(&catalog)? {
                places.push((c.profile, me.clone(), c.passphrase_from, false));
            }
            let mut repos = Vec::new();
            for (profile, cluster_id, passphrase_from, source) in places {
                let key = passphrase(&passphrase_from)?;
                let url = location(&profile, &cluster_id).url().to_owned();
                let repo = match Repository::open(location(&profile, &cluster_id), &key).await {
                    Ok(repo) => repo,
                    // The instance's own location before its first DR run: nothing to mark.
                    Err(cairn_repository::Error::NotARepository { .. }) if !source => continue,
                    // The one it was restored from is where the other instance looks for a
                    // marker: without one there, it goes on maintaining the same data.
                    Err(cairn_repository::Error::NotARepository { .. }) if !force => {
                        return Err(usage(format!(
                            "the DR location this instance was restored from, {url}, is not there \
                             (moved, or not mounted): the instance that wrote it would not see \
                             an owner marker and would go on with forget, prune and retention. \
                             Make it reachable again and rerun; if that instance is gone for \
                             good, `cairn dr take-ownership --force` goes on without marking it"
                        )));
                    }
                    Err(cairn_repository::Error::NotARepository { .. }) => {
                        outln!(
                            "the DR location {url} is not there; no owner marker is written to it (--force)"
                        );
                        continue;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("cannot open the DR location {url} to mark it")));
                    }
                };
                if let Some(marker) = read_marker(&repo).await?
                    && marker.owner != me
                    && !force
                {
                    return Err(usage(format!(
                        "{} (owner marker in {url}); two instances must never both own the backup data: if that \
                         instance is gone for good, run `cairn dr take-ownership --force`",
                        marker.describe()
                    )));
                }
                repos.push((url, repo));
            }
            for (url, repo) in &repos {
                write_marker(repo, &home, &me).await?;
                outln!("owner marker naming this instance written to {url}");
            }
            catalog.set_maintenance_owner(true)?;
            outln!(
                "this instance ({me}) now owns maintenance of the backup data: forget, prune and retention run here; \
                 make sure no other instance does"
            );
            if load_config(&catalog)?.is_none()
                && let Some(restored) = load_meta::<Config>(&catalog, RESTORED_KEY)?
            {
                if restored.passphrase_from == "raw:" {
                    outln!(
                        "the restored DR settings had a raw passphrase, which DR points never carry: \
                         turn DR on with `cairn dr enable`"
                    );
                } else {
                    match enable(&home, &catalog, &restored, None, None, false).await {
                        Ok(()) => outln!("the restored DR settings are enabled again"),
                        Err(e) => outln!(
                            "the restored DR settings were not enabled again ({}): turn DR on with `cairn dr enable`",
                            crate::one_line(&e)
                        ),
                    }
                }
            }
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// After a DR run that failed: forgets its id `run` when the location holds no manifest of it
/// (it sealed nothing, so no point of this home's carries it), keeping the ids of runs not
/// recorded to those that may have sealed one. When that cannot be told, the id stays.
async fn forget_if_unsealed(catalog: &Catalog, repo: &Repository, known: &mut Known, run: &str) {
    let Ok(snapshots) = repo.snapshots(&SnapshotFilter::new()).await else {
        return;
    };
    for s in snapshots
        .iter()
        .filter(|s| s.source() == MANIFEST && !known.points.contains(&s.id))
    {
        match read_point(repo, &s.id).await {
            Ok(point) if point.run.as_deref() != Some(run) => {}
            _ => return,
        }
    }
    known.pending.retain(|id| id != run);
    if let Ok(text) = serde_json::to_string(known)
        && let Err(e) = catalog.set_meta(KNOWN_KEY, Some(&text))
    {
        errln!(
            "cairn: warning: cannot record that the failed DR run sealed nothing: {}",
            crate::one_line(&anyhow::Error::from(e))
        );
    }
}

/// Refuses to move a standby that applied DR point `last` of cluster `cluster_id` onto
/// `list[at]` when that point is of another history; warns when which history it is cannot be
/// told (the points between them are gone), and lets it move on, as before points named the one
/// they extend.
fn check_lineage(list: &[Point], at: usize, last: &str, cluster_id: &str) -> anyhow::Result<()> {
    let chosen = short(&list[at].id);
    let fresh = "Restore it into a fresh --home";
    match lineage(list, at, last) {
        Lineage::Built => Ok(()),
        Lineage::Starts { start } => Err(usage(format!(
            "DR point {chosen} is not built on DR point {}, which this home applied last: its \
             history starts anew at DR point {} (a chain from change 0 that follows no earlier \
             point), so cluster {cluster_id} went on from another history (its catalog was put \
             back, or a copy's points were accepted), and applying it here would keep changes \
             that history does not have. {fresh}",
            short(last),
            short(&list[start].id),
        ))),
        Lineage::Ambiguous { at: link, fit } => {
            let ids: Vec<&str> = fit.iter().map(|&j| short(&list[j].id)).collect();
            Err(usage(format!(
                "whether DR point {chosen} is built on DR point {}, which this home applied \
                 last, cannot be told: DR point {} (written by an older version, without an \
                 `after` line) extends the point that reaches change {}, and {} of different \
                 histories do, so applying it here could keep changes its history does not \
                 have. {fresh}",
                short(last),
                short(&list[link].id),
                list[link].from,
                ids.join(" and "),
            )))
        }
        Lineage::Untold { at: link } => {
            let p = &list[link];
            let gone = match &p.after {
                Some(after) => format!(
                    "DR point {}, which DR point {} names",
                    short(after),
                    short(&p.id)
                ),
                None => format!(
                    "the point that reaches change {}, which DR point {} extends",
                    p.from,
                    short(&p.id)
                ),
            };
            errln!(
                "cairn: warning: whether DR point {chosen} is built on DR point {}, which this \
                 home applied last, cannot be told: {gone}, is no longer listed (retention \
                 removed it, or its manifest cannot be read), so the walk back stops there. \
                 This home is moved forward all the same; if cluster {cluster_id}'s catalog \
                 was put back, or a copy's points were accepted, since DR point {} was made, \
                 restore into a fresh --home instead",
                short(last),
                short(last),
            );
            Ok(())
        }
    }
}

fn check_cluster_id(id: &str) -> anyhow::Result<()> {
    uuid::Uuid::parse_str(id).map(drop).map_err(|_| {
        usage(format!(
            "--cluster-id {id}: not a cluster id (a UUID, as `cairn dr status` prints it)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two points covering the same changes, sealed within one second (a DR run, then another
    /// after a change of mode): the later one is the latest, whatever their random ids.
    #[test]
    fn points_sealed_in_one_second_are_ordered_by_when_they_were_saved() {
        let point = |id: &str, mode: &str| Point {
            id: id.into(),
            time: jiff::Timestamp::from_second(1_800_000_000).expect("a time"),
            mode: mode.into(),
            from: 0,
            to: 31,
            exports: 0,
            export_ids: Vec::new(),
            cluster_id: "c".into(),
            run: None,
            after: None,
            settings: None,
        };
        let at =
            |ms: i64| jiff::Timestamp::from_millisecond(1_800_000_000_000 + ms).expect("a time");
        for (first, second) in [("ff", "00"), ("00", "ff")] {
            let mut points = vec![
                (at(100), point(first, "no-snapshot")),
                (at(700), point(second, "legacy")),
            ];
            newest_first(&mut points);
            assert_eq!(points[0].1.mode, "legacy", "ids {first} then {second}");
        }
    }

    fn linked(id: &str, from: u64, to: u64, after: Option<&str>) -> Point {
        Point {
            id: id.into(),
            time: jiff::Timestamp::from_second(1_800_000_000 + i64::try_from(to).expect("small"))
                .expect("a time"),
            mode: "no-snapshot".into(),
            from,
            to,
            exports: 0,
            export_ids: Vec::new(),
            cluster_id: "c".into(),
            run: None,
            after: after.map(str::to_owned),
            settings: None,
        }
    }

    /// A standby that applied a point of an old chain whose tail retention removed: the new
    /// chain's first point names a point no longer listed, so whether it is built on the one
    /// applied cannot be told (and it moves on); a history that starts anew, or a link two
    /// histories fit, is another history.
    #[test]
    fn a_standby_is_refused_only_a_history_known_to_be_another() {
        // a1 a2 | b1 (after a2) b2: retention removed a1 and a2.
        let list = [
            linked("b1", 0, 20, Some("a2")),
            linked("b2", 20, 30, Some("b1")),
        ];
        assert_eq!(lineage(&list, 1, "a1"), Lineage::Untold { at: 0 });
        assert_eq!(lineage(&list, 1, "a2"), Lineage::Built);
        assert_eq!(lineage(&list, 1, "b1"), Lineage::Built);
        assert!(check_lineage(&list, 1, "a1", "c").is_ok());
        // Put back: c1 starts from 0 naming nothing.
        let list = [
            linked("a1", 0, 10, None),
            linked("c1", 0, 15, None),
            linked("c2", 15, 30, Some("c1")),
        ];
        assert_eq!(lineage(&list, 2, "a1"), Lineage::Starts { start: 1 });
        let refused = check_lineage(&list, 2, "a1", "c").expect_err("refused");
        assert!(refused.to_string().contains("is not built on"), "{refused}");
        // Older manifests: two histories reach change 10.
        let list = [
            linked("a1", 0, 10, None),
            linked("q1", 0, 10, None),
            linked("q2", 10, 12, None),
        ];
        assert_eq!(
            lineage(&list, 2, "x"),
            Lineage::Ambiguous {
                at: 2,
                fit: vec![0, 1]
            }
        );
    }

    /// A successful run forgets the ids of runs not recorded only when it read every manifest:
    /// one it could not read may be such a run's point.
    #[test]
    fn ids_of_runs_not_recorded_stay_while_a_manifest_is_unreadable() {
        let mut known = Known {
            pending: vec!["died".into(), "this".into()],
            ..Known::default()
        };
        known.recorded("this", &BTreeSet::from(["m1".to_owned()]));
        assert_eq!(known.pending, ["died"]);
        known.recorded("next", &BTreeSet::new());
        assert!(known.pending.is_empty());
    }

    /// The clock stepped back between two points of one history: the one that reaches
    /// further comes first, linked by its `after` line or (older manifests) by change numbers;
    /// between histories, the one saved last does.
    #[test]
    fn a_clock_stepped_back_does_not_put_an_older_point_of_a_history_first() {
        let at = |s: i64| jiff::Timestamp::from_second(1_800_000_000 + s).expect("a time");
        let point = |id: &str, from: u64, to: u64, s: i64, after: Option<&str>| {
            (
                at(s),
                Point {
                    time: at(s),
                    ..linked(id, from, to, after)
                },
            )
        };
        for after in [Some("p1"), None] {
            // p2 saved 55 minutes "before" p1, which it extends.
            let mut points = vec![
                point("p1", 0, 10, 3_300, None),
                point("p2", 10, 20, 0, after),
            ];
            assert_eq!(newest_first(&mut points), 1);
            assert_eq!(points[0].1.id, "p2", "after line {after:?}");
        }
        // A history put back: its point q1 covers fewer changes, but it is the newer history.
        let mut points = vec![
            point("p1", 0, 10, 0, None),
            point("p2", 10, 20, 10, Some("p1")),
            point("q1", 0, 12, 20, None),
        ];
        assert_eq!(newest_first(&mut points), 2);
        let ids: Vec<&str> = points.iter().map(|(_, p)| p.id.as_str()).collect();
        assert_eq!(ids, ["q1", "p2", "p1"]);
    }
}
