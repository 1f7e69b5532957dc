//! The `catalog` interface: refused without the grant or without a catalog, and with both,
//! the host writes the catalog's export into the guest's export stream and applies an import.

use std::sync::{Arc, Mutex};

use cairn_engine::{
    Capability, CatalogAccess, CatalogApplied, CatalogError, CatalogExport, CatalogSnapshot,
    DrMode, DrState,
};

use crate::support::{Fixture, request};

/// A catalog that exports fixed bytes and remembers its cursor and what it was given.
#[derive(Debug, Default)]
struct FakeCatalog {
    cursor: Mutex<Option<u64>>,
    applied: Mutex<Vec<Vec<u8>>>,
}

impl CatalogAccess for FakeCatalog {
    fn state(&self) -> Result<DrState, CatalogError> {
        Ok(DrState {
            cluster_id: "c0ffee".into(),
            mode: DrMode::NoSnapshot,
            cursor: *self.cursor.lock().expect("lock"),
            current_seq: 42,
        })
    }
    fn take_snapshot(&self) -> Result<CatalogSnapshot, CatalogError> {
        Err(CatalogError::Failed("not in this test".into()))
    }
    fn export_changes(
        &self,
        since: u64,
        mode: DrMode,
        snapshot: Option<&str>,
    ) -> Result<CatalogExport, CatalogError> {
        assert_eq!((since, mode, snapshot), (0, DrMode::NoSnapshot, None));
        Ok(CatalogExport {
            bytes: b"the delta".to_vec(),
            from_seq: since,
            to_seq: 42,
            changes: 3,
            full: false,
        })
    }
    fn export_snapshot(&self, _: &str, _: u64) -> Result<CatalogExport, CatalogError> {
        Err(CatalogError::NotFound("no snapshot".into()))
    }
    fn export_full(&self) -> Result<CatalogExport, CatalogError> {
        Err(CatalogError::Failed("not in this test".into()))
    }
    fn advance_cursor(&self, to: u64) -> Result<(), CatalogError> {
        *self.cursor.lock().expect("lock") = Some(to);
        Ok(())
    }
    fn apply(&self, bytes: &[u8]) -> Result<CatalogApplied, CatalogError> {
        if bytes != b"the delta" {
            return Err(CatalogError::Invalid("not a delta".into()));
        }
        self.applied.lock().expect("lock").push(bytes.to_vec());
        Ok(CatalogApplied {
            applied: 3,
            skipped: 0,
            to_seq: 42,
        })
    }
    fn apply_local_snapshot(&self, _: &str) -> Result<CatalogApplied, CatalogError> {
        Err(CatalogError::NotFound("no snapshot".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_calls_are_denied_without_the_grant() {
    let mut fixture = Fixture::new();
    let fake = Arc::new(FakeCatalog::default());
    fixture.host.catalog = Some(fake.clone());
    let mut req = request("catalog");
    req.grants.remove(&Capability::Catalog);
    let report = fixture.run(req).await;
    assert!(!report.ok);
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("capability `catalog` is only for Cairn's DR blueprint")),
        "{report:?}"
    );
    assert_eq!(*fake.cursor.lock().expect("lock"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_calls_are_denied_without_a_catalog() {
    let fixture = Fixture::new();
    let report = fixture.run(request("catalog")).await;
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("denied") && e.contains("no catalog")),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_exports_into_the_stream_and_applies_from_an_import() {
    let mut fixture = Fixture::new();
    let fake = Arc::new(FakeCatalog::default());
    fixture.host.catalog = Some(fake.clone());
    let report = fixture.run(request("catalog")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("cluster-id"), Some("c0ffee"));
    assert_eq!(report.outputs.get("to-seq"), Some("42"));
    assert_eq!(report.outputs.get("bytes"), Some("9"));
    assert_eq!(*fake.cursor.lock().expect("lock"), Some(42));
    let artifact = report.outputs.artifacts[0].clone();
    let path = artifact.get("path").expect("a file export");
    let written = std::fs::read(fixture.path("exports").join(path)).expect("the export");
    assert_eq!(written, b"the delta");

    let mut req = request("catalog-apply");
    req.artifacts = vec![artifact];
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("applied"), Some("3"));
    assert_eq!(fake.applied.lock().expect("lock").len(), 1);
    // Every catalog call is audited.
    let audit = std::fs::read_to_string(fixture.path("audit.jsonl")).expect("the audit log");
    assert!(audit.contains("catalog.export-changes"), "{audit}");
    assert!(audit.contains("catalog.apply"), "{audit}");
}
