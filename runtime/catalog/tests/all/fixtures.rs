//! Records for every kind, and helpers to compare catalogs.

use std::collections::BTreeMap;

use cairn_catalog::{
    Action, ActionStatus, Artifact, Blueprint, Catalog, Kind, Location, Phase, Policy, Profile,
    RestorePoint, Retention, Target,
};
use jiff::Timestamp;
use serde_json::json;

pub(crate) fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_790_000_000 + seconds).expect("valid timestamp")
}

pub(crate) fn restore_point(id: &str, exported: bool) -> RestorePoint {
    RestorePoint {
        id: id.to_owned(),
        location: if exported {
            Location::Exported {
                repository: "file:///var/lib/cairn/repository".to_owned(),
                profile: Some("default".to_owned()),
            }
        } else {
            Location::Local
        },
        blueprint: "postgres".to_owned(),
        blueprint_digest: "sha256:6a1f0e1c1d5b2f7e0c5f1b9d3e2a4c6b8d0f2e4a6c8b0d2f4e6a8c0b2d4f6e8a"
            .to_owned(),
        action: "backup".to_owned(),
        action_id: format!("act-{id}"),
        target: Target {
            namespace: "shop".to_owned(),
            workload: Some("statefulset/db".to_owned()),
        },
        created: at(id.len() as i64),
        artifacts: vec![Artifact {
            name: "dump".to_owned(),
            values: BTreeMap::from([
                ("snapshot".to_owned(), format!("snap-{id}")),
                ("lsn".to_owned(), "0/16B3748".to_owned()),
            ]),
        }],
        snapshots: vec![format!("snap-{id}")],
        values: Vec::new(),
        policy: Some("nightly".to_owned()),
        params: None,
        partly_deleted: None,
    }
}

pub(crate) fn action(id: &str) -> Action {
    Action {
        id: id.to_owned(),
        blueprint: "postgres".to_owned(),
        action: "backup".to_owned(),
        target: Target {
            namespace: "shop".to_owned(),
            workload: None,
        },
        status: ActionStatus::Failed,
        phases: vec![
            Phase {
                name: "backupPrehook".to_owned(),
                status: ActionStatus::Succeeded,
                started: Some(at(0)),
                finished: Some(at(1)),
                error: None,
            },
            Phase {
                name: "backup".to_owned(),
                status: ActionStatus::Failed,
                started: Some(at(1)),
                finished: Some(at(5)),
                error: Some("pg_dump exited with 1".to_owned()),
            },
        ],
        started: at(0),
        finished: Some(at(6)),
        error: Some("backup: pg_dump exited with 1".to_owned()),
        restore_point: None,
    }
}

pub(crate) fn profile(name: &str) -> Profile {
    Profile {
        name: name.to_owned(),
        repository: format!("s3://backups/{name}"),
        options: BTreeMap::from([("region".to_owned(), "eu-west-1".to_owned())]),
        passphrase: Some("env:BACKUP_PASSPHRASE".to_owned()),
        key_file: None,
        limit_upload: 0,
        limit_download: 0,
    }
}

pub(crate) fn blueprint(name: &str) -> Blueprint {
    Blueprint {
        name: name.to_owned(),
        version: "1.2.0".to_owned(),
        digest: "sha256:00ff".to_owned(),
        wasm: format!("/var/lib/cairn/blueprints/{name}.wasm"),
        allow: None,
        by_hand: false,
    }
}

pub(crate) fn policy(name: &str) -> Policy {
    Policy {
        name: name.to_owned(),
        blueprint: Some("postgres".to_owned()),
        target: "kube".to_owned(),
        namespace: "shop".to_owned(),
        workloads: vec!["db-*".to_owned()],
        selector: BTreeMap::from([("tier".to_owned(), "data".to_owned())]),
        frequency: "@hourly".to_owned(),
        retention: Retention {
            hourly: 24,
            daily: 7,
            ..Retention::default()
        },
        params: BTreeMap::from([("database".to_owned(), "orders".to_owned())]),
        grants: vec!["exec".to_owned(), "export".to_owned()],
        secrets: BTreeMap::new(),
        timeout: None,
        snapshot_class: None,
        export: None,
        prune: None,
        preset: None,
        concurrency: None,
        paused: false,
        origin: None,
        applied: jiff::Timestamp::UNIX_EPOCH,
        last_run: None,
    }
}

/// Writes `n` records of every kind (typed where the catalog has a type), keys `<kind>-<i>`.
pub(crate) fn populate(catalog: &Catalog, n: usize) -> anyhow::Result<()> {
    catalog.write(|tx| {
        for i in 0..n {
            for kind in Kind::ALL {
                let key = format!("{kind}-{i}");
                match kind {
                    Kind::LocalRestorePoint => tx.save(&restore_point(&key, false))?,
                    Kind::ExportedRestorePoint => tx.save(&restore_point(&key, true))?,
                    Kind::Action => tx.save(&action(&key))?,
                    Kind::Profile => tx.save(&profile(&key))?,
                    Kind::Blueprint => tx.save(&blueprint(&key))?,
                    Kind::Policy => tx.save(&policy(&key))?,
                    other => tx.put(
                        other,
                        &key,
                        &json!({"name": key, "kind": other, "spec": {"i": i}}),
                    )?,
                };
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// Every record of `kind` as (key, JSON text).
pub(crate) fn contents(catalog: &Catalog, kind: Kind) -> anyhow::Result<Vec<(String, String)>> {
    Ok(catalog
        .list(kind)?
        .into_iter()
        .map(|e| (e.key, e.value.get().to_owned()))
        .collect())
}
