//! Run with
//!
//! ```text
//! cairn blueprint build blueprints/quiesce
//! cairn run target/wasm32-wasip2/release/quiesce.wasm --action backup --output json \
//!     --target local:inventory.yaml --workload app --grant workloads,scale,volumes \
//!     > backup.json
//! cairn run target/wasm32-wasip2/release/quiesce.wasm --action restore --from backup.json \
//!     --target local:inventory.yaml --workload app --grant workloads,scale,volumes
//! ```
//!
//! A generic, application-agnostic blueprint for crash-consistent-is-not-enough workloads:
//! it scales the target workload to zero for the backup window (`backupPrehook`), snapshots
//! its volumes (`backup`), and scales it back to the replica count it had (`backupPosthook`,
//! which the runtime runs even when the backup failed or timed out). The prehook checkpoints
//! the count before it scales, so the posthook learns it even when the prehook itself fails or
//! times out after scaling. Restore brackets the
//! volume restores the same way; `delete` removes the snapshots of a restore point.

use std::time::Duration;

use cairn_sdk::lifecycle::{
    BACKUP, BACKUP_POSTHOOK, BACKUP_PREHOOK, DELETE, RESTORE, RESTORE_POSTHOOK, RESTORE_PREHOOK,
};
use cairn_sdk::{Artifact, Blueprint, Capability, Context, Description, Error, Outputs, Param};
use cairn_sdk::{Progress, Result, checkpoint, info, progress, volumes, warn, workloads};

/// The value in which a prehook records the replica count it found.
const REPLICAS: &str = "replicas";

/// Prefix of the artifacts that name volume snapshots, one per volume.
const SNAPSHOT_PREFIX: &str = "volume-";

struct Quiesce;

impl Blueprint for Quiesce {
    fn describe() -> Description {
        Description::new("quiesce", env!("CARGO_PKG_VERSION"))
            .describe(
                "Scales a workload to zero for the backup window, snapshots its volumes, and \
                 scales it back to its original replica count, also when the backup fails",
            )
            .action(
                BACKUP_PREHOOK,
                "Scale the workload to zero and record its replica count",
            )
            .action(BACKUP, "Snapshot the workload's volumes")
            .action(
                BACKUP_POSTHOOK,
                "Scale the workload back to the recorded count (also after a failed backup)",
            )
            .action(
                RESTORE_PREHOOK,
                "Scale the workload to zero and record its replica count",
            )
            .action(RESTORE, "Restore the workload's volumes from the snapshots")
            .action(
                RESTORE_POSTHOOK,
                "Scale the workload back to the recorded count (also after a failed restore)",
            )
            .action(DELETE, "Delete the volume snapshots of a restore point")
            .param(Param::text("volumes").describe(
                "Comma-separated volumes to snapshot (default: every volume of the workload)",
            ))
            .param(
                Param::integer("ready-timeout")
                    .default(300)
                    .range(1..)
                    .describe("Seconds to wait for the workload to be ready after scaling back"),
            )
            .capability(Capability::Workloads)
            .capability(Capability::Scale)
            .capability(Capability::Volumes)
    }

    fn run(action: &str, ctx: &Context) -> Result<Outputs> {
        match action {
            BACKUP_PREHOOK | RESTORE_PREHOOK => scale_down(ctx),
            BACKUP => backup(ctx),
            BACKUP_POSTHOOK | RESTORE_POSTHOOK => scale_back(ctx),
            RESTORE => restore(ctx),
            DELETE => delete(ctx),
            other => Err(Error::unknown_action(other)),
        }
    }
}

cairn_sdk::export!(Quiesce);

/// The prehooks: record what to scale back to, then scale to zero.
fn scale_down(ctx: &Context) -> Result<Outputs> {
    let target = ctx.target()?;
    // Validate here what the posthook needs, so a typo fails before the workload stops.
    ctx.seconds("ready-timeout")?;
    // Checkpointed before the workload stops: if this phase then fails, traps or runs past its
    // deadline, the posthook still learns the count to scale back to.
    let found = workloads::get(None)?.replicas;
    checkpoint(REPLICAS, found)?;
    let previous = workloads::scale(None, 0)?;
    if previous != found {
        // Someone scaled it in between: the count the scale replaced is the one to restore.
        checkpoint(REPLICAS, previous)?;
    }
    if previous == 0 {
        warn!("{target} was already at 0 replicas; the posthook leaves it there");
    } else {
        info!("scaled {target} from {previous} replicas to 0");
    }
    progress(Progress::new().message(format!("{target} quiesced (was {previous} replicas)")));
    Ok(Outputs::new().value(REPLICAS, previous))
}

/// The posthooks: back to the recorded count, whatever happened in between.
fn scale_back(ctx: &Context) -> Result<Outputs> {
    let target = ctx.target()?;
    if let Some(failure) = ctx.failure() {
        warn!("the main phase failed ({failure}); scaling {target} back anyway");
    }
    let Ok(recorded) = ctx.value(REPLICAS) else {
        // The prehook records the count before it scales: without one, it stopped before it
        // scaled the workload down, and there is nothing to undo.
        warn!(
            "no replica count was recorded (the prehook stopped before scaling); leaving {target} as it is"
        );
        return Ok(Outputs::new());
    };
    let replicas: u32 = recorded.parse().map_err(|_| {
        Error::invalid(format!(
            "the prehook recorded {recorded:?} replicas, not a count"
        ))
    })?;
    let timeout = ctx
        .seconds("ready-timeout")
        .unwrap_or(Duration::from_secs(300));
    workloads::scale(None, replicas)?;
    if replicas > 0 {
        workloads::wait_ready(None, timeout)
            .map_err(|e| e.context(format_args!("waiting for {target} after scaling it back")))?;
    }
    info!("scaled {target} back to {replicas} replicas");
    progress(Progress::new().message(format!("{target} back at {replicas} replicas")));
    Ok(Outputs::new().value(REPLICAS, replicas))
}

/// The volumes to snapshot: the `volumes` parameter, or none (meaning all).
fn volume_names(ctx: &Context) -> Result<Vec<String>> {
    let Some(list) = ctx.param::<Option<String>>("volumes")? else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err(Error::invalid(
            "parameter `volumes` names no volume: leave it out to snapshot every volume",
        ));
    }
    Ok(names)
}

fn backup(ctx: &Context) -> Result<Outputs> {
    let target = ctx.target()?;
    let names = volume_names(ctx)?;
    // The prehook should have quiesced the workload; refuse a snapshot of a running one.
    let info = workloads::get(None)?;
    if info.replicas != 0 {
        return Err(Error::failed(format!(
            "{target} has {} replicas: the backup must run with its prehook, which scales it to 0",
            info.replicas
        )));
    }
    progress(Progress::percent(0.0).message(format!("snapshotting the volumes of {target}")));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let snapshots = volumes::snapshot(None, &refs)?;
    if snapshots.is_empty() {
        return Err(Error::not_found(format!(
            "{target} has no volumes to snapshot; declare them in the inventory"
        )));
    }
    let mut outputs = Outputs::new();
    let mut bytes = 0;
    for s in &snapshots {
        info!(
            "snapshot {} of volume {} ({} bytes)",
            s.id, s.volume, s.bytes
        );
        bytes += s.bytes;
        outputs = outputs.artifact(
            Artifact::new(format!("{SNAPSHOT_PREFIX}{}", s.volume))
                .value("snapshot-id", &s.id)
                .value("volume", &s.volume)
                .value("bytes", s.bytes)
                .value("created-ms", s.created_ms),
        );
    }
    progress(
        Progress::bytes(bytes, Some(bytes))
            .message(format!("{} volume snapshots", snapshots.len())),
    );
    Ok(outputs)
}

/// The snapshot ids of the restore point, by volume.
fn restore_point(ctx: &Context) -> Result<Vec<(String, String)>> {
    let found: Vec<(String, String)> = ctx
        .restore_point()
        .iter()
        .filter(|a| a.name().starts_with(SNAPSHOT_PREFIX))
        .map(|a| {
            Ok((
                a.require("volume")?.to_owned(),
                a.require("snapshot-id")?.to_owned(),
            ))
        })
        .collect::<Result<_>>()?;
    if found.is_empty() {
        return Err(Error::not_found(format!(
            "no volume snapshots in the restore point: pass the backup's report with --from \
             (action {})",
            ctx.action()
        )));
    }
    Ok(found)
}

fn restore(ctx: &Context) -> Result<Outputs> {
    let target = ctx.target()?;
    let snapshots = restore_point(ctx)?;
    let info = workloads::get(None)?;
    if info.replicas != 0 {
        return Err(Error::failed(format!(
            "{target} has {} replicas: the restore must run with its prehook, which scales it to 0",
            info.replicas
        )));
    }
    let total = snapshots.len();
    for (i, (volume, id)) in snapshots.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let percent = i as f32 * 100.0 / total as f32;
        progress(Progress::percent(percent).message(format!("restoring volume {volume}")));
        volumes::restore(id)
            .map_err(|e| e.context(format_args!("restoring volume {volume} from {id}")))?;
        info!("restored volume {volume} from snapshot {id}");
    }
    progress(Progress::percent(100.0).message(format!("{total} volumes restored")));
    Ok(Outputs::new().value("volumes", total))
}

fn delete(ctx: &Context) -> Result<Outputs> {
    let snapshots = restore_point(ctx)?;
    let mut deleted = 0;
    for (volume, id) in &snapshots {
        match volumes::delete(id) {
            Ok(()) => {
                deleted += 1;
                info!("deleted snapshot {id} of volume {volume}");
            }
            // Already gone: deleting a restore point twice is not an error.
            Err(Error::NotFound(m)) => warn!("snapshot {id} of volume {volume} is gone: {m}"),
            Err(e) => return Err(e.context(format_args!("deleting snapshot {id}"))),
        }
    }
    Ok(Outputs::new().value("deleted", deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_whole_lifecycle() {
        let d = Quiesce::describe();
        for action in [
            BACKUP_PREHOOK,
            BACKUP,
            BACKUP_POSTHOOK,
            RESTORE_PREHOOK,
            RESTORE,
            RESTORE_POSTHOOK,
            DELETE,
        ] {
            assert!(d.has_action(action), "{action}");
        }
        assert_eq!(
            d.capabilities(),
            [
                Capability::Workloads,
                Capability::Scale,
                Capability::Volumes
            ]
        );
    }

    #[test]
    fn a_posthook_without_a_recorded_count_leaves_the_workload() {
        let ctx = Context::builder(BACKUP_POSTHOOK, "default")
            .workload("app")
            .param("ready-timeout", 5)
            .failure(Error::failed("prehook failed"))
            .build();
        assert_eq!(Quiesce::run(BACKUP_POSTHOOK, &ctx), Ok(Outputs::new()));
    }

    #[test]
    fn volumes_param_is_a_list() {
        let ctx = Context::builder(BACKUP, "default")
            .param("volumes", " data, logs ,")
            .build();
        assert_eq!(volume_names(&ctx), Ok(vec!["data".into(), "logs".into()]));
        let ctx = Context::builder(BACKUP, "default")
            .param("volumes", ",")
            .build();
        assert!(volume_names(&ctx).is_err());
    }

    #[test]
    fn restore_needs_snapshots() {
        let ctx = Context::builder(RESTORE, "default")
            .workload("app")
            .restore_artifact(Artifact::new("other"))
            .build();
        assert!(matches!(restore_point(&ctx), Err(Error::NotFound(m)) if m.contains("--from")));
    }
}
