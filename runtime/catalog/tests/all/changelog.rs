//! The change log: sequence numbers, order, tombstones, compaction, reopen.

use cairn_catalog::{Catalog, Change, Error, Kind, Op};
use serde_json::json;

fn summary(changes: &[Change]) -> Vec<(u64, Kind, String, Option<String>)> {
    changes
        .iter()
        .map(|c| {
            let value = match &c.op {
                Op::Put(v) => Some(v.get().to_owned()),
                Op::Delete => None,
            };
            (c.seq, c.kind, c.key.clone(), value)
        })
        .collect()
}

fn put(seq: u64, kind: Kind, key: &str, value: &str) -> (u64, Kind, String, Option<String>) {
    (seq, kind, key.to_owned(), Some(value.to_owned()))
}

fn del(seq: u64, kind: Kind, key: &str) -> (u64, Kind, String, Option<String>) {
    (seq, kind, key.to_owned(), None)
}

#[test]
fn changes_come_in_order_with_tombstones() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    assert_eq!(catalog.current_seq()?, 0);
    assert_eq!(catalog.put(Kind::Policy, "a", &1)?, 1);
    assert_eq!(catalog.put(Kind::Profile, "b", &1)?, 2);
    assert!(catalog.delete(Kind::Policy, "a")?);
    assert_eq!(catalog.put(Kind::Blueprint, "c", &1)?, 4);
    assert_eq!(catalog.put(Kind::Profile, "b", &2)?, 5);
    assert_eq!(catalog.current_seq()?, 5);

    // Net changes: each key once, at its latest change.
    assert_eq!(
        summary(&catalog.changes_since(0)?),
        [
            del(3, Kind::Policy, "a"),
            put(4, Kind::Blueprint, "c", "1"),
            put(5, Kind::Profile, "b", "2"),
        ]
    );
    assert_eq!(
        summary(&catalog.changes_since(3)?),
        [
            put(4, Kind::Blueprint, "c", "1"),
            put(5, Kind::Profile, "b", "2")
        ]
    );
    assert!(catalog.changes_since(5)?.is_empty());
    let err = catalog.changes_since(6).expect_err("beyond the log");
    assert!(
        matches!(
            err,
            Error::InvalidCursor {
                cursor: 6,
                current: 5
            }
        ),
        "{err}"
    );
    Ok(())
}

#[test]
fn an_unchanged_put_records_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    let first = catalog.put(Kind::Profile, "p", &json!({"x": 1}))?;
    let again = catalog.put(Kind::Profile, "p", &json!({"x": 1}))?;
    assert_eq!(first, again);
    assert_eq!(catalog.current_seq()?, 1);
    assert!(!catalog.delete(Kind::Profile, "missing")?);
    assert_eq!(
        catalog.current_seq()?,
        1,
        "deleting nothing is not a change"
    );
    Ok(())
}

#[test]
fn a_put_after_a_delete_replaces_the_tombstone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    catalog.put(Kind::Policy, "a", &1)?;
    catalog.delete(Kind::Policy, "a")?;
    catalog.put(Kind::Policy, "a", &2)?;
    assert_eq!(
        summary(&catalog.changes_since(0)?),
        [put(3, Kind::Policy, "a", "2")]
    );
    assert_eq!(
        summary(&catalog.changes_since(1)?),
        [put(3, Kind::Policy, "a", "2")]
    );
    Ok(())
}

#[test]
fn one_transaction_gets_consecutive_sequences() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    catalog.put(Kind::Report, "r", &0)?;
    let seqs = catalog.write(|tx| {
        Ok([
            tx.put(Kind::Action, "x", &1)?,
            tx.put(Kind::Action, "y", &1)?,
            u64::from(tx.delete(Kind::Report, "r")?),
        ])
    })?;
    assert_eq!(seqs, [2, 3, 1]);
    assert_eq!(catalog.current_seq()?, 4);
    assert_eq!(
        summary(&catalog.changes_since(1)?),
        [
            put(2, Kind::Action, "x", "1"),
            put(3, Kind::Action, "y", "1"),
            del(4, Kind::Report, "r")
        ]
    );
    Ok(())
}

#[test]
fn changes_since_after_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("catalog.redb");
    let before = {
        let catalog = Catalog::open(&path)?;
        for i in 0..10 {
            catalog.put(Kind::ExportedRestorePoint, &format!("rp-{i}"), &i)?;
        }
        catalog.delete(Kind::ExportedRestorePoint, "rp-3")?;
        summary(&catalog.changes_since(4)?)
    };
    let catalog = Catalog::open(&path)?;
    assert_eq!(summary(&catalog.changes_since(4)?), before);
    assert_eq!(
        before.last(),
        Some(&del(11, Kind::ExportedRestorePoint, "rp-3"))
    );
    assert_eq!(
        catalog.put(Kind::Policy, "p", &0)?,
        12,
        "sequences continue after reopen"
    );
    Ok(())
}

#[test]
fn pruned_tombstones_refuse_older_cursors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
    catalog.put(Kind::Policy, "a", &1)?;
    catalog.put(Kind::Policy, "b", &1)?;
    catalog.delete(Kind::Policy, "a")?;
    catalog.put(Kind::Policy, "c", &1)?;
    assert_eq!(catalog.prune_tombstones(3)?, 1);
    assert_eq!(
        summary(&catalog.changes_since(0)?),
        [
            put(2, Kind::Policy, "b", "1"),
            put(4, Kind::Policy, "c", "1")
        ]
    );
    assert_eq!(
        summary(&catalog.changes_since(3)?),
        [put(4, Kind::Policy, "c", "1")]
    );
    let err = catalog
        .changes_since(1)
        .expect_err("the delete of `a` is gone");
    assert!(
        matches!(
            err,
            Error::CursorTooOld {
                since: 1,
                horizon: 3
            }
        ),
        "{err}"
    );
    Ok(())
}
