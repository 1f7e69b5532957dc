//! Records in and out: every kind, the typed helpers, transactions, the `ls` data.

use cairn_catalog::{Catalog, DrClass, Error, Kind, Location, MAX_RECORD_BYTES};
use serde_json::{Value, json};

use crate::fixtures::{action, blueprint, policy, profile, restore_point};

#[test]
fn put_get_list_delete_every_kind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    for kind in Kind::ALL {
        for name in ["b", "a", "c"] {
            catalog.put(kind, name, &json!({"name": name, "kind": kind.as_str()}))?;
        }
        let got: Option<Value> = catalog.get(kind, "a")?;
        assert_eq!(got, Some(json!({"name": "a", "kind": kind.as_str()})));
        let keys: Vec<String> = catalog.list(kind)?.into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["a", "b", "c"], "{kind} lists in key order");
        assert_eq!(catalog.count(kind)?, 3);

        assert!(catalog.delete(kind, "b")?);
        assert!(!catalog.delete(kind, "b")?, "a second delete finds nothing");
        assert_eq!(catalog.get::<Value>(kind, "b")?, None);
        assert_eq!(catalog.count(kind)?, 2);
    }
    // Kinds are separate namespaces: the same key in each, none clobbered.
    let counts = catalog.counts()?;
    assert_eq!(counts.len(), Kind::COUNT);
    assert!(
        counts
            .iter()
            .all(|c| c.count == 2 && c.dr_class == c.kind.dr_class())
    );
    assert_eq!(catalog.list_all()?.len(), 2 * Kind::COUNT);
    Ok(())
}

#[test]
fn typed_helpers_round_trip() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;

    catalog.record_restore_point(&restore_point("rp-long-id", false))?;
    catalog.record_restore_point(&restore_point("rp-1", true))?;
    catalog.record_action(&action("act-1"))?;
    catalog.record_profile(&profile("default"))?;
    catalog.record_blueprint(&blueprint("postgres"))?;
    catalog.record_policy(&policy("nightly"))?;

    assert_eq!(
        catalog.restore_point("rp-1")?,
        Some(restore_point("rp-1", true))
    );
    let points = catalog.restore_points()?;
    // Oldest first: the fixture's creation time grows with the id's length.
    let ids: Vec<&str> = points.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["rp-1", "rp-long-id"]);
    assert_eq!(catalog.actions()?, [action("act-1")]);
    assert_eq!(catalog.action("act-1")?, Some(action("act-1")));
    assert_eq!(catalog.profiles()?, [profile("default")]);
    assert_eq!(catalog.profile("nope")?, None);
    assert_eq!(catalog.blueprint("postgres")?, Some(blueprint("postgres")));
    assert_eq!(catalog.blueprints()?.len(), 1);
    assert_eq!(catalog.policy("nightly")?, Some(policy("nightly")));
    assert_eq!(catalog.policies()?.len(), 1);

    // The typed record is what `ls --output json` shows.
    let entry = catalog
        .entry(Kind::ExportedRestorePoint, "rp-1")?
        .expect("the exported restore point is listed");
    let shown: Value = serde_json::to_value(&entry)?;
    assert_eq!(shown["kind"], "exported-restore-point");
    assert_eq!(shown["key"], "rp-1");
    assert_eq!(shown["value"]["location"]["type"], "exported");
    assert_eq!(
        shown["value"]["artifacts"][0]["values"]["snapshot"],
        "snap-rp-1"
    );
    Ok(())
}

#[test]
fn a_policy_applied_again_keeps_its_last_run_and_a_run_keeps_the_apply() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    let run = cairn_catalog::PolicyRun {
        started: jiff::Timestamp::UNIX_EPOCH,
        finished: jiff::Timestamp::UNIX_EPOCH,
        succeeded: true,
        points: vec!["rp-1".to_owned()],
        errors: Vec::new(),
    };
    assert_eq!(
        catalog.update_policy("nightly", |p| p.last_run = Some(run.clone()))?,
        None,
        "no policy, nothing recorded"
    );
    assert_eq!(catalog.policy("nightly")?, None);

    let mut first = policy("nightly");
    catalog.apply_policy(&mut first)?;
    // A run finishes after an apply that changed the frequency: both are kept.
    let mut changed = policy("nightly");
    changed.frequency = "@daily".to_owned();
    catalog.apply_policy(&mut changed)?;
    let updated = catalog.update_policy("nightly", |p| p.last_run = Some(run.clone()))?;
    assert_eq!(
        updated.as_ref().map(|p| p.frequency.as_str()),
        Some("@daily")
    );
    // Applied again: the run stays, the new fields land.
    let mut again = policy("nightly");
    again.paused = true;
    catalog.apply_policy(&mut again)?;
    let stored = catalog.policy("nightly")?.expect("the policy is stored");
    assert!(stored.paused);
    assert_eq!(stored.frequency, "@hourly");
    assert_eq!(stored.last_run, Some(run));
    assert_eq!(again, stored, "the caller's policy is what was stored");
    Ok(())
}

#[test]
fn exporting_a_restore_point_moves_it_between_kinds() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    let mut point = restore_point("rp", false);
    catalog.record_restore_point(&point)?;
    assert_eq!(catalog.count(Kind::LocalRestorePoint)?, 1);

    point.location = Location::Exported {
        repository: "s3://b/r".to_owned(),
        profile: None,
    };
    catalog.record_restore_point(&point)?;
    assert_eq!(catalog.count(Kind::LocalRestorePoint)?, 0);
    assert_eq!(catalog.count(Kind::ExportedRestorePoint)?, 1);
    assert_eq!(catalog.restore_point("rp")?, Some(point));
    Ok(())
}

#[test]
fn a_failed_transaction_writes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    let result = catalog.write(|tx| {
        tx.put(Kind::Policy, "half", &json!(1))?;
        assert_eq!(
            tx.get::<Value>(Kind::Policy, "half")?,
            Some(json!(1)),
            "reads its own writes"
        );
        tx.put(Kind::Policy, "", &json!(2))
    });
    assert!(matches!(
        result,
        Err(Error::InvalidKey {
            kind: Kind::Policy,
            ..
        })
    ));
    assert_eq!(catalog.get::<Value>(Kind::Policy, "half")?, None);
    assert_eq!(catalog.current_seq()?, 0);
    Ok(())
}

#[test]
fn oversized_records_and_bad_keys_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    let huge = "x".repeat(MAX_RECORD_BYTES);
    let err = catalog
        .put(Kind::Report, "big", &huge)
        .expect_err("too large");
    assert!(
        matches!(
            err,
            Error::TooLarge {
                kind: Kind::Report,
                ..
            }
        ),
        "{err}"
    );
    let err = catalog
        .put(Kind::Report, &"k".repeat(2000), &1)
        .expect_err("key too long");
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    let err = catalog
        .put(Kind::Report, "a\nb", &1)
        .expect_err("control character");
    assert!(err.to_string().contains("control characters"), "{err}");
    Ok(())
}

#[test]
fn kinds_have_stable_names_and_classes() -> anyhow::Result<()> {
    for kind in Kind::ALL {
        assert_eq!(kind.to_string().parse::<Kind>()?, kind);
        assert_eq!(serde_json::to_value(kind)?, json!(kind.as_str()));
    }
    let err = "restore-points"
        .parse::<Kind>()
        .expect_err("plural is not a kind");
    assert!(err.to_string().contains("local-restore-point"), "{err}");

    use DrClass::*;
    let expected = [
        (Kind::Action, WithCatalogSnapshot),
        (Kind::LocalRestorePoint, WithCatalogSnapshot),
        (Kind::ExportedRestorePoint, Always),
        (Kind::Policy, Always),
        (Kind::Profile, Always),
        (Kind::Blueprint, Always),
        (Kind::BasicUserPolicy, QuickModesOnly),
        (Kind::BlueprintBinding, QuickModesOnly),
        (Kind::PolicyPreset, QuickModesOnly),
        (Kind::TransformSet, QuickModesOnly),
        (Kind::MultiClusterPrimary, QuickModesOnly),
        (Kind::MultiClusterSecondary, QuickModesOnly),
        (Kind::StorageSecurityContext, QuickModesOnly),
        (Kind::StorageSecurityContextBinding, QuickModesOnly),
        (Kind::Report, Never),
        (Kind::ActionPodSpec, Never),
        (Kind::AuditConfig, Never),
    ];
    assert_eq!(expected.len(), Kind::COUNT);
    for (kind, class) in expected {
        assert_eq!(kind.dr_class(), class, "{kind}");
    }
    Ok(())
}

#[test]
fn identity_and_meta_survive_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("catalog.redb");
    let (id, seq) = {
        let catalog = Catalog::open(&path)?;
        assert!(
            catalog.maintenance_owner()?,
            "a new instance owns maintenance"
        );
        assert_eq!(catalog.dr_cursor()?, None);
        catalog.put(Kind::Profile, "p", &json!({}))?;
        catalog.set_dr_cursor(1)?;
        catalog.set_meta("dr.last-run", Some("2026-11-22T04:00:00Z"))?;
        let err = catalog
            .set_dr_cursor(2)
            .expect_err("beyond the current sequence");
        assert!(
            matches!(
                err,
                Error::InvalidCursor {
                    cursor: 2,
                    current: 1
                }
            ),
            "{err}"
        );
        (catalog.cluster_id(), catalog.current_seq()?)
    };
    let catalog = Catalog::open(&path)?;
    assert_eq!(catalog.cluster_id(), id);
    assert_eq!(catalog.current_seq()?, seq);
    assert_eq!(catalog.dr_cursor()?, Some(1));
    assert_eq!(
        catalog.meta("dr.last-run")?.as_deref(),
        Some("2026-11-22T04:00:00Z")
    );
    catalog.set_maintenance_owner(false)?;
    assert!(!catalog.maintenance_owner()?);
    // Meta writes are not catalog changes.
    assert_eq!(catalog.current_seq()?, seq);
    Ok(())
}
