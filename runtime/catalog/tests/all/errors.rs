//! Bad files and bad records: clear errors, never panics.

use cairn_catalog::{Catalog, Error, Kind, Profile, SCHEMA_VERSION};
use redb::TableDefinition;
use serde_json::json;

// The on-disk names, as documented in the crate (a file written by a newer Cairn or a damaged
// one is simulated by writing them directly).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("cairn/meta");
const POLICIES: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("policy");

fn not_a_catalog(path: &std::path::Path) -> bool {
    matches!(Catalog::open(path), Err(Error::NotACatalog { .. }))
}

#[test]
fn files_that_are_not_catalogs_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, this is not a database\n")?;
    assert!(not_a_catalog(&text));
    let err = Catalog::open(&text).expect_err("text");
    assert!(err.to_string().contains("is not a Cairn catalog"), "{err}");
    assert_eq!(
        std::fs::read(&text)?,
        b"hello, this is not a database\n",
        "left untouched"
    );

    let short = dir.path().join("short");
    std::fs::write(&short, b"re")?;
    assert!(not_a_catalog(&short));
    assert!(not_a_catalog(dir.path()), "a directory");

    let foreign = dir.path().join("foreign.redb");
    {
        let db = redb::Database::create(&foreign)?;
        let tx = db.begin_write()?;
        tx.open_table(TableDefinition::<u64, u64>::new("someone-else"))?
            .insert(1, 2)?;
        tx.commit()?;
    }
    assert!(not_a_catalog(&foreign), "another program's redb database");

    let impostor = dir.path().join("impostor.redb");
    {
        let db = redb::Database::create(&impostor)?;
        let tx = db.begin_write()?;
        tx.open_table(META)?.insert("format", b"other".as_slice())?;
        tx.commit()?;
    }
    assert!(not_a_catalog(&impostor), "a meta table that is not ours");
    Ok(())
}

#[test]
fn a_newer_schema_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("catalog.redb");
    Catalog::open(&path)?.put(Kind::Policy, "p", &json!({}))?;
    {
        let db = redb::Database::create(&path)?;
        let tx = db.begin_write()?;
        tx.open_table(META)?.insert(
            "schema-version",
            (SCHEMA_VERSION + 1).to_be_bytes().as_slice(),
        )?;
        tx.commit()?;
    }
    let err = Catalog::open(&path).expect_err("newer schema");
    assert!(
        matches!(err, Error::NewerSchema { found, supported, .. } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade Cairn"), "{err}");
    Ok(())
}

#[test]
fn corrupt_records_name_their_kind_and_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("catalog.redb");
    {
        let catalog = Catalog::open(&path)?;
        // Valid JSON of the wrong shape for the typed API.
        catalog.put(Kind::Profile, "odd", &json!({"bogus": 1}))?;
        let err = catalog.profile("odd").expect_err("not a profile");
        assert!(
            matches!(&err, Error::Corrupt { kind: Kind::Profile, key, .. } if key == "odd"),
            "{err}"
        );
        assert!(err.to_string().contains("profile record `odd`"), "{err}");
        assert!(catalog.load_all::<Profile>().is_err());
        // The generic API still lists it, so `ls` can show what is there.
        assert_eq!(catalog.list(Kind::Profile)?.len(), 1);
    }
    {
        let db = redb::Database::create(&path)?;
        let tx = db.begin_write()?;
        tx.open_table(POLICIES)?
            .insert("garbled", (1u64, b"\xff{not json".as_slice()))?;
        tx.commit()?;
    }
    let catalog = Catalog::open(&path)?;
    let err = catalog.list(Kind::Policy).expect_err("garbled bytes");
    assert!(
        matches!(&err, Error::Corrupt { kind: Kind::Policy, key, .. } if key == "garbled"),
        "{err}"
    );
    let err = catalog
        .get::<serde_json::Value>(Kind::Policy, "garbled")
        .expect_err("garbled");
    assert!(err.to_string().contains("policy record `garbled`"), "{err}");
    Ok(())
}

#[test]
fn damaged_files_are_errors_not_panics() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("catalog.redb");
    {
        let catalog = Catalog::open(&path)?;
        crate::fixtures::populate(&catalog, 50)?;
    }
    let good = std::fs::read(&path)?;

    let truncated = dir.path().join("truncated.redb");
    std::fs::write(&truncated, &good[..good.len() / 3])?;
    assert!(Catalog::open(&truncated).is_err());

    let scribbled = dir.path().join("scribbled.redb");
    let mut bytes = good.clone();
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b ^= (i % 251) as u8 | 1;
    }
    std::fs::write(&scribbled, &bytes)?;
    assert!(Catalog::open(&scribbled).is_err());

    let header = dir.path().join("header.redb");
    let mut bytes = good;
    for b in bytes.iter_mut().take(512).skip(9) {
        *b = 0xAA;
    }
    std::fs::write(&header, &bytes)?;
    assert!(Catalog::open(&header).is_err());
    Ok(())
}

#[test]
fn a_catalog_in_use_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("catalog.redb");
    let _first = Catalog::open(&path)?;
    let err = Catalog::open(&path).expect_err("already open");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    Ok(())
}

/// The catalog holds what the instance was told in confidence: a new one is its owner's alone,
/// and one an older build left readable by others is narrowed on open.
#[cfg(unix)]
#[test]
fn the_catalog_is_readable_by_its_owner_alone() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("catalog.redb");
    let mode = |p: &std::path::Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
    };
    Catalog::open(&path)?.put(Kind::Policy, "p", &json!({}))?;
    assert_eq!(mode(&path)?, 0o600);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    let back: Option<serde_json::Value> = Catalog::open(&path)?.get(Kind::Policy, "p")?;
    assert!(back.is_some());
    assert_eq!(mode(&path)?, 0o600);
    Ok(())
}
