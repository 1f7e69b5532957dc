//! DR deltas and full copies: what each mode carries, and rebuilding a fresh catalog from them.

use cairn_catalog::{Catalog, Delta, DrClass, DrMode, Error, Kind, KindSet};
use serde_json::{Value, json};

use crate::fixtures::{contents, populate, profile};

/// The protection matrix, written out independently of the crate's table.
fn protected(kind: Kind, mode: DrMode, snapshot_restored: bool) -> bool {
    use Kind::*;
    match kind {
        Action | LocalRestorePoint => mode == DrMode::Legacy || snapshot_restored,
        ExportedRestorePoint | Policy | Profile | Blueprint => true,
        BasicUserPolicy
        | BlueprintBinding
        | PolicyPreset
        | TransformSet
        | MultiClusterPrimary
        | MultiClusterSecondary
        | StorageSecurityContext
        | StorageSecurityContextBinding => mode != DrMode::Legacy,
        Report | ActionPodSpec | AuditConfig => false,
        _ => panic!("a kind the matrix does not list: {kind}"),
    }
}

fn transfer(delta: &Delta) -> anyhow::Result<Delta> {
    Ok(Delta::from_slice(&delta.to_bytes()?)?)
}

fn assert_matrix(
    source: &Catalog,
    restored: &Catalog,
    mode: DrMode,
    snapshot_restored: bool,
) -> anyhow::Result<()> {
    for kind in Kind::ALL {
        let got = contents(restored, kind)?;
        if protected(kind, mode, snapshot_restored) {
            assert_eq!(
                got,
                contents(source, kind)?,
                "{mode}: {kind} comes back whole"
            );
            assert!(!got.is_empty());
        } else {
            assert!(
                got.is_empty(),
                "{mode}: {kind} must not come back, got {got:?}"
            );
        }
        assert_eq!(
            mode.recovered_kinds(snapshot_restored).contains(kind),
            protected(kind, mode, snapshot_restored)
        );
    }
    Ok(())
}

#[test]
fn each_mode_restores_what_the_matrix_says() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let source = Catalog::open(dir.path().join("source.redb"))?;
    populate(&source, 3)?;

    for mode in DrMode::ALL {
        let fresh = Catalog::open(dir.path().join(format!("{mode}.redb")))?;
        if mode == DrMode::Legacy {
            let full = transfer(&source.export_full()?)?;
            assert!(full.is_full());
            fresh.import_full(&full)?;
            assert_matrix(&source, &fresh, mode, false)?;
        } else {
            let minimal = transfer(&source.export_minimal(0, mode)?)?;
            assert_eq!(minimal.to_seq(), source.current_seq()?);
            fresh.apply_delta(&minimal)?;
            assert_matrix(&source, &fresh, mode, false)?;

            if mode.takes_snapshot() {
                // Recovery with the catalog snapshot: the minimal data, plus the actions and
                // local restore points read out of the snapshot.
                let snapshot_path = dir.path().join(format!("{mode}-snapshot.redb"));
                source.snapshot_to(&snapshot_path)?;
                let snapshot = Catalog::open(&snapshot_path)?;
                let only_snapshot = KindSet::of_classes(&[DrClass::WithCatalogSnapshot]);
                let from_snapshot = transfer(&snapshot.export_changes(0, only_snapshot)?)?;
                fresh.apply_delta(&from_snapshot)?;
                assert_matrix(&source, &fresh, mode, true)?;
            }
        }
        assert!(
            !fresh.maintenance_owner()?,
            "{mode}: a restored instance does not own maintenance"
        );
        let state = fresh.restore_state()?.expect("restored");
        assert_eq!(state.source, source.cluster_id());
        assert_ne!(
            fresh.cluster_id(),
            source.cluster_id(),
            "the new instance keeps its own id"
        );
    }
    Ok(())
}

#[test]
fn incremental_deltas_apply_in_order_with_deletes_and_idempotently() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let source = Catalog::open(dir.path().join("source.redb"))?;
    populate(&source, 2)?;
    let mode = DrMode::NoSnapshot;
    let first = transfer(&source.export_minimal(0, mode)?)?;
    source.set_dr_cursor(first.to_seq())?;

    source.record_profile(&profile("new"))?;
    source.put(Kind::Policy, "policy-0", &json!({"changed": true}))?;
    source.delete(Kind::Blueprint, "blueprint-1")?;
    source.delete(Kind::BlueprintBinding, "blueprint-binding-0")?;
    source.put(Kind::Report, "report-9", &json!({}))?; // never exported
    source.delete(Kind::Action, "action-0")?; // only in snapshots
    let cursor = source.dr_cursor()?.expect("cursor set");
    let second = transfer(&source.export_minimal(cursor, mode)?)?;
    assert_eq!(second.from_seq(), first.to_seq());
    assert_eq!(
        second.changes().len(),
        4,
        "only the minimal kinds' changes: {second:?}"
    );

    let fresh = Catalog::open(dir.path().join("fresh.redb"))?;
    let err = fresh
        .apply_delta(&second)
        .expect_err("the first delta is missing");
    assert!(
        matches!(err, Error::DeltaGap { from, applied: 0, .. } if from == first.to_seq()),
        "{err}"
    );
    fresh.apply_delta(&first)?;
    fresh.apply_delta(&second)?;
    let check = |restored: &Catalog| -> anyhow::Result<()> {
        for kind in mode.exported_kinds().iter() {
            assert_eq!(
                contents(restored, kind)?,
                contents(&source, kind)?,
                "{kind}"
            );
        }
        assert_eq!(restored.get::<Value>(Kind::Blueprint, "blueprint-1")?, None);
        Ok(())
    };
    check(&fresh)?;

    // Applying again, or applying an older delta, changes nothing.
    let seq = fresh.current_seq()?;
    let again = fresh.apply_delta(&second)?;
    assert_eq!(again.applied, 0);
    assert_eq!(again.skipped, 4);
    let stale = fresh.apply_delta(&first)?;
    assert_eq!(stale.applied, 0);
    assert_eq!(fresh.current_seq()?, seq);
    check(&fresh)?;
    Ok(())
}

#[test]
fn restores_go_into_fresh_catalogs_from_one_source() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let source = Catalog::open(dir.path().join("source.redb"))?;
    populate(&source, 1)?;
    let other = Catalog::open(dir.path().join("other.redb"))?;
    populate(&other, 1)?;

    let used = Catalog::open(dir.path().join("used.redb"))?;
    used.put(Kind::Profile, "mine", &json!({}))?;
    let err = used
        .apply_delta(&source.export_minimal(0, DrMode::NoSnapshot)?)
        .expect_err("not fresh");
    assert!(matches!(err, Error::NotEmpty { seq: 1, .. }), "{err}");
    let err = used
        .import_full(&source.export_full()?)
        .expect_err("not fresh");
    assert!(matches!(err, Error::NotEmpty { .. }), "{err}");
    assert!(
        used.maintenance_owner()?,
        "a refused restore changes nothing"
    );

    let fresh = Catalog::open(dir.path().join("fresh.redb"))?;
    fresh.apply_delta(&source.export_minimal(0, DrMode::NoSnapshot)?)?;
    let err = fresh
        .apply_delta(&other.export_minimal(0, DrMode::NoSnapshot)?)
        .expect_err("another source");
    assert!(matches!(err, Error::WrongSource { .. }), "{err}");
    let err = fresh
        .import_full(&source.export_full()?)
        .expect_err("no longer fresh");
    assert!(matches!(err, Error::NotEmpty { .. }), "{err}");
    let err = fresh
        .import_full(&source.export_minimal(0, DrMode::Legacy)?)
        .expect_err("not a full copy");
    assert!(matches!(err, Error::BadDelta { .. }), "{err}");
    Ok(())
}

#[test]
fn damaged_or_foreign_deltas_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let source = Catalog::open(dir.path().join("source.redb"))?;
    populate(&source, 1)?;
    let bytes = source
        .export_minimal(0, DrMode::LocalSnapshot)?
        .to_bytes()?;

    let err = Delta::from_slice(&bytes[..bytes.len() / 2]).expect_err("truncated");
    assert!(matches!(err, Error::BadDelta { .. }), "{err}");

    let edit = |f: &dyn Fn(&mut Value)| -> anyhow::Result<cairn_catalog::Result<Delta>> {
        let mut value: Value = serde_json::from_slice(&bytes)?;
        f(&mut value);
        Ok(Delta::from_slice(&serde_json::to_vec(&value)?))
    };
    let err = edit(&|v| v["schema_version"] = json!(99))?.expect_err("newer schema");
    assert!(matches!(err, Error::NewerSchema { found: 99, .. }), "{err}");
    let err = edit(&|v| v["format"] = json!(2))?.expect_err("newer encoding");
    assert!(matches!(err, Error::BadDelta { .. }), "{err}");
    let err = edit(&|v| v["changes"][0]["kind"] = json!("report"))?.expect_err("uncovered kind");
    assert!(err.to_string().contains("does not cover"), "{err}");
    let err = edit(&|v| v["changes"][0]["kind"] = json!("gadget"))?.expect_err("unknown kind");
    assert!(
        err.to_string().contains("unknown catalog kind `gadget`"),
        "{err}"
    );
    let err = edit(&|v| v["changes"][0]["seq"] = json!(10_000))?.expect_err("outside its range");
    assert!(matches!(err, Error::BadDelta { .. }), "{err}");
    Ok(())
}

#[test]
fn a_small_change_makes_a_small_delta() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let source = Catalog::open(dir.path().join("source.redb"))?;
    source.write(|tx| {
        for i in 0..2_000 {
            tx.save(&crate::fixtures::restore_point(&format!("rp-{i}"), true))?;
        }
        Ok(())
    })?;
    let cursor = source.current_seq()?;
    for i in 2_000..2_010 {
        source.record_restore_point(&crate::fixtures::restore_point(&format!("rp-{i}"), true))?;
    }
    let delta = source.export_minimal(cursor, DrMode::LocalSnapshot)?;
    assert_eq!(delta.changes().len(), 10);
    let size = delta.to_bytes()?.len();
    assert!(size < 10 * 1024, "10 restore points take {size} bytes");
    Ok(())
}
