//! The instance's catalog (`<home>/catalog.redb`) and `cairn catalog …`.
//!
//! `cairn run` records every action with its phases, and every successful `backup` as a
//! restore point (exported, when its artifacts went to a repository, with the repository
//! snapshots they reference). `cairn catalog ls [KIND]` lists what is there; `cairn catalog put`
//! is an administrator's way to store a record of a kind whose controller does not exist yet.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cairn_catalog::{
    Action, ActionStatus, Artifact, Catalog, Kind, Location, Phase, RestorePoint, Target,
};
use jiff::{SignedDuration, Timestamp};

use crate::home::Home;
use crate::{Output, UsageError, exit};

/// `cairn catalog …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CatalogCommand {
    /// List the records of KIND (kebab-case, e.g. `exported-restore-point`), or, without KIND,
    /// how many records each kind has.
    Ls {
        /// The kind to list.
        kind: Option<String>,
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Drop the record of a restore point whose data is lost for good (its repository gone
    /// with the machine it was on, say), so that retention stops trying to remove it. Nothing
    /// else is done: no delete action runs, and exports it left anywhere stay (`cairn repo
    /// forget` removes them). A point whose data is still there is removed with its
    /// blueprint's delete action instead (`cairn run BLUEPRINT --action delete --from-point`).
    ForgetPoint {
        /// The restore point's id, or a unique prefix of it.
        id: String,
    },
    /// Store a record (administration and tests): KIND KEY, the value from a JSON file.
    Put {
        /// The record's kind.
        kind: String,
        /// The record's key.
        key: String,
        /// A file holding the record as JSON (`-` for standard input).
        #[arg(long, value_name = "FILE")]
        json: PathBuf,
    },
}

/// How long commands wait for a catalog another process holds, unless `CAIRN_CATALOG_WAIT`
/// (seconds) says otherwise: long enough for a DR run, so that an action that ran is recorded.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// Opens the home's catalog. redb allows one process at a time, so while another `cairn`
/// process (a DR run, an action recording itself) holds it, this waits for it — up to
/// `CAIRN_CATALOG_WAIT` seconds — and then names what to do.
pub(crate) fn open(home: &Home) -> anyhow::Result<Catalog> {
    open_with(home, Catalog::options().verify(true))
}

/// How often a command that may skip the full verification of the catalog's pages on open
/// (a DR run, which reads only what changed) still does it.
const VERIFY_EVERY: Duration = Duration::from_secs(24 * 3600);

/// [`open`], verifying every page's checksum only when the last verified open (by any
/// command) is older than a day: a frequent reader of a large catalog then pays the full read
/// once a day, not on every run. Any command that always verifies refreshes the mark.
/// The mark names the catalog file it was made for (its inode), so a file put in its place
/// (copied or restored by hand) is verified again.
pub(crate) fn open_verified_daily(home: &Home) -> anyhow::Result<Catalog> {
    let mark = home.catalog_verified();
    let fresh = std::fs::metadata(&mark)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < VERIFY_EVERY)
        && std::fs::read_to_string(&mark).ok() == catalog_inode(home);
    open_with(home, Catalog::options().verify(!fresh))
}

/// [`open`] without verifying the pages, for a check of one meta key before a command that
/// opens (and verifies) the catalog itself.
pub(crate) fn open_unverified(home: &Home) -> anyhow::Result<Catalog> {
    open_with(home, Catalog::options().verify(false))
}

fn catalog_inode(home: &Home) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(home.catalog())
        .ok()
        .map(|m| m.ino().to_string())
}

fn open_with(home: &Home, options: &cairn_catalog::OpenOptions) -> anyhow::Result<Catalog> {
    let catalog = wait_for(home, options)?;
    if options.is_verify()
        && let Some(inode) = catalog_inode(home)
    {
        // Only a hint: losing it costs one more verification.
        let _ = std::fs::write(home.catalog_verified(), inode);
    }
    Ok(catalog)
}

fn wait_for(home: &Home, options: &cairn_catalog::OpenOptions) -> anyhow::Result<Catalog> {
    let path = home.catalog();
    let wait = match std::env::var("CAIRN_CATALOG_WAIT") {
        Ok(v) => Duration::from_secs(v.trim().parse().map_err(|_| {
            UsageError(format!(
                "CAIRN_CATALOG_WAIT={v}: not a whole number of seconds"
            ))
        })?),
        Err(_) => DEFAULT_WAIT,
    };
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    let mut told = false;
    loop {
        match options.open(&path) {
            Ok(catalog) => return Ok(catalog),
            Err(cairn_catalog::Error::Locked { .. }) if started.elapsed() < wait => {
                if !told && started.elapsed() >= Duration::from_secs(1) {
                    errln!(
                        "cairn: waiting for the catalog {}, held by another cairn process (up to {} s)",
                        path.display(),
                        wait.as_secs()
                    );
                    told = true;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(cairn_catalog::Error::Locked { .. }) => {
                return Err(UsageError(format!(
                    "the catalog {} is still in use by another cairn process (a DR run or an action) after {} s; \
                     retry when it has finished, or raise CAIRN_CATALOG_WAIT",
                    path.display(),
                    wait.as_secs()
                ))
                .into());
            }
            Err(other) => {
                return Err(anyhow::Error::new(other)
                    .context(format!("cannot open the catalog {}", path.display())));
            }
        }
    }
}

fn parse_kind(name: &str) -> anyhow::Result<Kind> {
    name.parse::<Kind>()
        .map_err(|e| UsageError(e.to_string()).into())
}

pub(crate) async fn run(cmd: CatalogCommand, home: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let home = Home::resolve(home)?;
    let catalog = open(&home)?;
    match cmd {
        CatalogCommand::Ls { kind: None, output } => {
            let counts = catalog.counts()?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&counts)?),
                Output::Text => {
                    for c in &counts {
                        outln!("{:<34} {:>8}", c.kind.as_str(), c.count);
                    }
                }
            }
        }
        CatalogCommand::Ls {
            kind: Some(kind),
            output,
        } => {
            let kind = parse_kind(&kind)?;
            let entries = catalog.list(kind)?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&entries)?),
                Output::Text => {
                    for e in &entries {
                        outln!("{:<40} {:>8}  {}", e.key, e.seq, e.value.get());
                    }
                }
            }
        }
        CatalogCommand::ForgetPoint { id } => {
            let point = &point_by_prefix(
                &catalog,
                &id,
                "",
                "`cairn catalog ls exported-restore-point` and `ls local-restore-point` list them",
            )?;
            catalog.delete(cairn_catalog::Record::kind(point), &point.id)?;
            let at = match &point.location {
                cairn_catalog::Location::Exported { repository, .. } => {
                    format!("; its exports in {repository}, if any are left, were not touched")
                }
                cairn_catalog::Location::Local => {
                    "; its volume snapshots, if any are left, were not touched".to_owned()
                }
            };
            outln!(
                "forgot restore point {} of {}{at}",
                point.id,
                point.blueprint
            );
        }
        CatalogCommand::Put { kind, key, json } => {
            let kind = parse_kind(&kind)?;
            let text = if json.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&json)
                    .map_err(|e| UsageError(format!("--json {}: {e}", json.display())))?
            };
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| UsageError(format!("--json {}: not JSON: {e}", json.display())))?;
            let seq = catalog
                .put(kind, &key, &value)
                .map_err(|e| UsageError(format!("cannot store {kind} {key:?}: {e}")))?;
            outln!("stored {kind} {key} at change {seq}");
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// What `cairn run` knows of a run, for the catalog.
pub(crate) struct RunRecord<'a> {
    pub report: &'a cairn_engine::RunReport,
    pub blueprint: &'a cairn_engine::Blueprint,
    pub action: &'a str,
    pub namespace: &'a str,
    pub workload: Option<&'a str>,
    pub started: Timestamp,
    /// The URL of the repository the run's exports went to.
    pub repository: &'a str,
    /// The location profile that repository was opened through, if any.
    pub profile: Option<&'a str>,
    /// The restore point the run used (`--from-point`).
    pub used_point: Option<&'a str>,
    /// The policy the run is part of.
    pub policy: Option<&'a str>,
    /// The parameters the run was given.
    pub params: &'a [(String, String)],
}

/// Records a run: the action with its phases and, for a successful `backup`, the restore point
/// it produced. Returns the restore point's id when it recorded one.
pub(crate) fn record_run(catalog: &Catalog, run: &RunRecord<'_>) -> anyhow::Result<Option<String>> {
    let report = run.report;
    let target = Target {
        namespace: run.namespace.to_owned(),
        workload: run.workload.map(str::to_owned),
    };
    let mut at = run.started;
    let phases = report
        .phases
        .iter()
        .map(|p| {
            let started = at;
            let took =
                SignedDuration::from_millis(i64::try_from(p.duration_ms).unwrap_or(i64::MAX));
            at = at.checked_add(took).unwrap_or(at);
            let status = match p.status {
                cairn_engine::PhaseStatus::Ok => ActionStatus::Succeeded,
                cairn_engine::PhaseStatus::Skipped => ActionStatus::Cancelled,
                _ => ActionStatus::Failed,
            };
            Phase {
                name: p.action.clone(),
                status,
                started: (status != ActionStatus::Cancelled).then_some(started),
                finished: (status != ActionStatus::Cancelled).then_some(at),
                error: p.error.clone(),
            }
        })
        .collect();
    let point = (report.ok && run.action == "backup").then(|| restore_point(run, &target));
    let action = Action {
        id: report.action_id.clone(),
        blueprint: run.blueprint.description().name.clone(),
        action: run.action.to_owned(),
        target: target.clone(),
        status: if report.ok {
            ActionStatus::Succeeded
        } else if report.interrupted() {
            ActionStatus::Cancelled
        } else {
            ActionStatus::Failed
        },
        phases,
        started: run.started,
        finished: Some(Timestamp::now()),
        error: report.error.clone(),
        restore_point: point
            .as_ref()
            .map(|p| p.id.clone())
            .or_else(|| run.used_point.map(str::to_owned)),
    };
    catalog.write(|tx| {
        tx.save(&action)?;
        if let Some(point) = &point {
            tx.save(point)?;
        }
        Ok(())
    })?;
    Ok(point.map(|p| p.id))
}

fn restore_point(run: &RunRecord<'_>, target: &Target) -> RestorePoint {
    let report = run.report;
    let artifacts: Vec<Artifact> = report
        .outputs
        .artifacts
        .iter()
        .map(|a| Artifact {
            name: a.name.clone(),
            values: a.values.iter().cloned().collect(),
        })
        .collect();
    let (location, snapshots) = placement(&report.outputs.artifacts, run.repository, run.profile);
    RestorePoint {
        id: report.action_id.clone(),
        location,
        blueprint: run.blueprint.description().name.clone(),
        blueprint_digest: run.blueprint.digest().to_owned(),
        action: run.action.to_owned(),
        action_id: report.action_id.clone(),
        target: target.clone(),
        // When the backup started, not when it was recorded (its end): a point is what the
        // application held then, and retention counts it in the day (week, month) its backup
        // began, as the schedule fires by start; a nightly backup crossing midnight stays that
        // night's point rather than taking the next night's place. (Points recorded before
        // are dated by their end; they still read, a few minutes later than they began.)
        created: run.started,
        artifacts,
        snapshots,
        values: report.outputs.values.clone(),
        params: Some(run.params.to_vec()),
        policy: run.policy.map(str::to_owned),
        partly_deleted: None,
    }
}

/// Where a backup's data went: exported, with the repository snapshots its artifacts
/// reference, when any artifact is a repository export; local otherwise.
fn placement(
    artifacts: &[cairn_engine::Artifact],
    repository: &str,
    profile: Option<&str>,
) -> (Location, Vec<String>) {
    let snapshots = exported_snapshots(artifacts);
    let location = if snapshots.is_empty() {
        Location::Local
    } else {
        Location::Exported {
            repository: repository.to_owned(),
            profile: profile.map(str::to_owned),
        }
    };
    (location, snapshots)
}

/// The repository snapshots that `artifacts`' repository exports reference: what a backup's
/// restore point keeps.
pub(crate) fn exported_snapshots(artifacts: &[cairn_engine::Artifact]) -> Vec<String> {
    artifacts
        .iter()
        .filter(|a| a.get("kind") == Some("repository"))
        .filter_map(|a| a.get("snapshot").map(str::to_owned))
        .collect()
}

/// The catalog's restore point `id`, for `--from-point`.
pub(crate) fn from_point(catalog: &Catalog, id: &str) -> anyhow::Result<RestorePoint> {
    point_by_prefix(
        catalog,
        id,
        "--from-point ",
        "list them with `cairn catalog ls exported-restore-point` or `local-restore-point`",
    )
}

/// Restore point `id`, or the one `id` is a unique prefix of. Errors start with `what` (the
/// flag that gave it) and end with `listed` (where to find the ids).
pub(crate) fn point_by_prefix(
    catalog: &Catalog,
    id: &str,
    what: &str,
    listed: &str,
) -> anyhow::Result<RestorePoint> {
    if let Some(point) = catalog.restore_point(id)? {
        return Ok(point);
    }
    let mut found: Vec<RestorePoint> = catalog
        .restore_points()?
        .into_iter()
        .filter(|p| !id.is_empty() && p.id.starts_with(id))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(UsageError(format!("{what}{id}: no such restore point; {listed}")).into()),
        n => Err(UsageError(format!(
            "{what}{id}: {n} restore points start with it; give more of the id"
        ))
        .into()),
    }
}

/// The artifacts and values of restore point `point`, as a run is given them.
pub(crate) fn point_outputs(point: &RestorePoint) -> crate::run::PointOutputs {
    let artifacts = point
        .artifacts
        .iter()
        .map(|a| cairn_engine::Artifact {
            name: a.name.clone(),
            values: a.values.clone().into_iter().collect(),
        })
        .collect();
    (artifacts, point.values.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(name: &str, values: &[(&str, &str)]) -> cairn_engine::Artifact {
        cairn_engine::Artifact {
            name: name.into(),
            values: values
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn a_backup_with_repository_exports_is_an_exported_restore_point() {
        let artifacts = [
            artifact("dump", &[("kind", "repository"), ("snapshot", "abc123")]),
            artifact("lsn", &[("lsn", "0/16B3748")]),
            artifact("wal", &[("kind", "repository"), ("snapshot", "def456")]),
        ];
        let (location, snapshots) = placement(&artifacts, "/srv/repo", Some("offsite"));
        assert_eq!(
            location,
            Location::Exported {
                repository: "/srv/repo".into(),
                profile: Some("offsite".into())
            }
        );
        assert_eq!(snapshots, ["abc123", "def456"]);
        let (location, snapshots) = placement(&artifacts[1..2], "/srv/repo", None);
        assert_eq!(location, Location::Local);
        assert!(snapshots.is_empty());
    }
}
