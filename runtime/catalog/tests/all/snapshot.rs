//! `snapshot_to`: a consistent cut while a writer keeps writing.

use std::sync::atomic::{AtomicBool, Ordering};

use cairn_catalog::{Catalog, Error, Kind};

/// Pairs written before the snapshots: enough that a snapshot takes longer than a commit.
const PAIRS: u64 = 2_000;

/// The writer always writes (or deletes) `a-N` and `b-N` together, with the same value.
fn write_pair(catalog: &Catalog, n: u64, value: u64) -> cairn_catalog::Result<()> {
    catalog.write(|tx| {
        tx.put(Kind::Action, &format!("a-{n}"), &value)?;
        tx.put(Kind::Action, &format!("b-{n}"), &value)?;
        Ok(())
    })
}

fn delete_pair(catalog: &Catalog, n: u64) -> cairn_catalog::Result<()> {
    catalog.write(|tx| {
        tx.delete(Kind::Action, &format!("a-{n}"))?;
        tx.delete(Kind::Action, &format!("b-{n}"))?;
        Ok(())
    })
}

fn assert_whole_pairs(snapshot: &Catalog) -> anyhow::Result<usize> {
    let entries = snapshot.list(Kind::Action)?;
    let mut pairs = 0;
    for entry in entries.iter().filter(|e| e.key.starts_with("a-")) {
        let twin = format!("b-{}", &entry.key[2..]);
        let other = snapshot.entry(Kind::Action, &twin)?;
        let other = other.unwrap_or_else(|| panic!("{} without {twin}", entry.key));
        assert_eq!(
            other.value.get(),
            entry.value.get(),
            "{} and {twin} differ",
            entry.key
        );
        pairs += 1;
    }
    assert_eq!(pairs * 2, entries.len(), "every b has its a");
    Ok(pairs)
}

#[test]
fn a_snapshot_is_a_consistent_cut_while_a_writer_writes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    catalog.write(|tx| {
        for n in 0..PAIRS {
            tx.put(Kind::Action, &format!("a-{n}"), &0)?;
            tx.put(Kind::Action, &format!("b-{n}"), &0)?;
        }
        Ok(())
    })?;

    let stop = AtomicBool::new(false);
    let mut overlapped = 0;
    let snapshots = std::thread::scope(|scope| -> anyhow::Result<Vec<_>> {
        let writer = scope.spawn(|| -> cairn_catalog::Result<u64> {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                write_pair(&catalog, round % (PAIRS + 500), round)?;
                if round.is_multiple_of(3) {
                    delete_pair(&catalog, (round * 7) % (PAIRS + 500))?;
                }
            }
            Ok(round)
        });
        let mut taken = Vec::new();
        let rolling = dir.path().join("rolling.redb");
        let mut rolling_seq = 0;
        for i in 0..5 {
            let before = catalog.current_seq()?;
            let info = catalog.snapshot_to(dir.path().join(format!("snapshot-{i}.redb")))?;
            let after = catalog.current_seq()?;
            if after > before {
                overlapped += 1;
            }
            taken.push(info);
            // The rolling snapshot moves forward by the changes only, and is as consistent.
            let refreshed = catalog.refresh_snapshot(&rolling)?;
            assert!(refreshed.seq >= rolling_seq);
            rolling_seq = refreshed.seq;
            let snapshot = Catalog::open(&rolling)?;
            assert_eq!(snapshot.current_seq()?, refreshed.seq);
            assert_eq!(
                (assert_whole_pairs(&snapshot)? * 2) as u64,
                refreshed.records
            );
        }
        stop.store(true, Ordering::Relaxed);
        let rounds = writer.join().expect("the writer does not panic")?;
        assert!(rounds > 0);
        Ok(taken)
    })?;
    assert!(
        overlapped > 0,
        "the writer committed while a snapshot was being taken"
    );

    let mut last_seq = 0;
    for info in &snapshots {
        assert!(info.seq >= last_seq, "later snapshots are later cuts");
        last_seq = info.seq;
        let snapshot = Catalog::open(&info.path)?;
        assert_eq!(snapshot.cluster_id(), catalog.cluster_id());
        assert_eq!(
            snapshot.current_seq()?,
            info.seq,
            "the snapshot holds exactly its cut"
        );
        let pairs = assert_whole_pairs(&snapshot)?;
        assert_eq!(info.records, (pairs * 2) as u64);
        // The snapshot's change log is as consistent as its records.
        let logged = snapshot.changes_since(0)?;
        assert!(logged.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(logged.last().is_none_or(|c| c.seq <= info.seq));
    }
    Ok(())
}

#[test]
fn a_snapshot_never_overwrites() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    let target = dir.path().join("snapshot.redb");
    std::fs::write(&target, b"precious")?;
    let err = catalog.snapshot_to(&target).expect_err("the target exists");
    assert!(matches!(err, Error::Exists { .. }), "{err}");
    assert_eq!(std::fs::read(&target)?, b"precious");
    // Nothing is left behind in the directory but the catalog and the untouched target.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, ["catalog.redb", "snapshot.redb"]);
    Ok(())
}

/// Everything a snapshot holds that `snapshot_to` and `refresh_snapshot` must agree on.
fn fingerprint(path: &std::path::Path) -> anyhow::Result<String> {
    let snapshot = Catalog::open(path)?;
    let records: Vec<_> = snapshot
        .list_all()?
        .into_iter()
        .map(|e| (e.kind, e.key, e.seq, e.value.get().to_owned()))
        .collect();
    let log: Vec<_> = snapshot
        .changes_since(0)?
        .into_iter()
        .map(|c| (c.seq, c.kind, c.key, format!("{:?}", c.op)))
        .collect();
    Ok(format!(
        "{records:?}\n{log:?}\nseq {} cursor {:?} owner {} id {}",
        snapshot.current_seq()?,
        snapshot.dr_cursor()?,
        snapshot.maintenance_owner()?,
        snapshot.cluster_id()
    ))
}

#[test]
fn a_refreshed_snapshot_equals_a_new_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    crate::fixtures::populate(&catalog, 3)?;
    catalog.delete(Kind::Policy, "policy-0")?;
    catalog.delete(Kind::Report, "report-0")?;
    let rolling = dir.path().join("rolling.redb");
    let base = catalog.snapshot_to(&rolling)?;

    catalog.put(Kind::Policy, "policy-0", &serde_json::json!({"back": true}))?; // replaces a tombstone
    catalog.put(
        Kind::Profile,
        "profile-1",
        &serde_json::json!({"changed": 1}),
    )?;
    catalog.delete(Kind::Action, "action-2")?;
    catalog.delete(Kind::BlueprintBinding, "blueprint-binding-1")?;
    catalog.put(Kind::TransformSet, "new", &serde_json::json!([1, 2]))?;
    catalog.prune_tombstones(base.seq)?; // drops the report's tombstone, which the snapshot has
    catalog.set_dr_cursor(base.seq)?;
    catalog.set_maintenance_owner(false)?;

    let refreshed = catalog.refresh_snapshot(&rolling)?;
    let fresh = catalog.snapshot_to(dir.path().join("fresh.redb"))?;
    assert_eq!(refreshed.seq, fresh.seq);
    assert_eq!(refreshed.records, fresh.records);
    assert_eq!(fingerprint(&rolling)?, fingerprint(&fresh.path)?);

    // A refresh with nothing new changes nothing.
    let again = catalog.refresh_snapshot(&rolling)?;
    assert_eq!(again.seq, refreshed.seq);
    assert_eq!(fingerprint(&rolling)?, fingerprint(&fresh.path)?);

    // Once deletes after the snapshot's cut are pruned, only a new snapshot is complete.
    let old = dir.path().join("old.redb");
    std::fs::copy(&rolling, &old)?;
    catalog.delete(Kind::Profile, "profile-2")?;
    catalog.refresh_snapshot(&rolling)?;
    catalog.prune_tombstones(catalog.current_seq()?)?;
    catalog.refresh_snapshot(&rolling)?; // its cut is at the horizon: still complete
    let err = catalog
        .refresh_snapshot(&old)
        .expect_err("deletes after its cut are gone");
    assert!(matches!(err, Error::CursorTooOld { .. }), "{err}");
    Ok(())
}

#[test]
fn a_snapshot_of_another_catalog_is_not_refreshed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let one = Catalog::open(dir.path().join("one.redb"))?;
    let two = Catalog::open(dir.path().join("two.redb"))?;
    let snapshot = dir.path().join("snapshot.redb");
    one.snapshot_to(&snapshot)?;
    let err = two
        .refresh_snapshot(&snapshot)
        .expect_err("another catalog's snapshot");
    assert!(matches!(err, Error::ForeignSnapshot { .. }), "{err}");
    Ok(())
}
