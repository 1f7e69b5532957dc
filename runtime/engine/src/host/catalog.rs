//! `cairn:blueprint/catalog`: the runtime's catalog, for its DR blueprint (capability
//! `catalog`). Every call checks the grant and is audited; exports are written by the host into
//! the guest's export stream and DR artifacts are read by the host from its import stream, so
//! bulk bytes never enter the guest.

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wasmtime::component::Resource;

use super::bounded;
use super::data::{ExportStreamState, ImportStreamState};
use crate::bindings::{HostResult, WitError, catalog};
use crate::capability::Capability;
use crate::catalog::{CatalogAccess, CatalogError, CatalogExport, DrMode};
use crate::limits::human_bytes;
use crate::state::HostState;

/// The largest DR artifact `apply` reads (a full copy of a large catalog fits well within it).
const MAX_APPLY_BYTES: u64 = 4 << 30;

fn from_catalog(e: CatalogError) -> WitError {
    match e {
        CatalogError::Invalid(m) => WitError::Invalid(m),
        CatalogError::NotFound(m) => WitError::NotFound(m),
        CatalogError::Failed(m) => WitError::Failed(m),
    }
}

fn mode_from(m: catalog::DrMode) -> DrMode {
    match m {
        catalog::DrMode::LocalSnapshot => DrMode::LocalSnapshot,
        catalog::DrMode::ExportedSnapshot => DrMode::ExportedSnapshot,
        catalog::DrMode::NoSnapshot => DrMode::NoSnapshot,
        catalog::DrMode::Legacy => DrMode::Legacy,
    }
}

fn mode_to(m: DrMode) -> catalog::DrMode {
    match m {
        DrMode::LocalSnapshot => catalog::DrMode::LocalSnapshot,
        DrMode::ExportedSnapshot => catalog::DrMode::ExportedSnapshot,
        DrMode::NoSnapshot => catalog::DrMode::NoSnapshot,
        DrMode::Legacy => catalog::DrMode::Legacy,
    }
}

impl HostState {
    /// The catalog, if `catalog` is granted and this runtime offers one.
    fn catalog(&self) -> Result<Arc<dyn CatalogAccess>, WitError> {
        let host = self.require(Capability::Catalog)?;
        host.catalog.clone().ok_or_else(|| {
            WitError::Denied(
                "this run has no catalog to offer; only the runtime's DR runs reach the catalog"
                    .into(),
            )
        })
    }

    /// Runs a blocking catalog call off the async workers, within the call's timeout.
    fn on_catalog<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&dyn CatalogAccess) -> Result<T, CatalogError> + Send + 'static,
    ) -> impl Future<Output = Result<T, WitError>> + Send + 'static {
        let ready = self
            .catalog()
            .map(|c| (c, self.call_timeout(self.action.limits.host_call_timeout)));
        async move {
            let (catalog, timeout) = ready?;
            blocking(operation, timeout, catalog, f).await
        }
    }
}

/// Runs `f` on the catalog in a blocking task, bounded by `timeout`.
async fn blocking<T: Send + 'static>(
    operation: &'static str,
    timeout: std::time::Duration,
    catalog: Arc<dyn CatalogAccess>,
    f: impl FnOnce(&dyn CatalogAccess) -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, WitError> {
    {
        bounded(operation, timeout, async move {
            tokio::task::spawn_blocking(move || f(catalog.as_ref()))
                .await
                .map_err(|e| {
                    WitError::Failed(format!("{operation}: the catalog task failed: {e}"))
                })?
                .map_err(from_catalog)
        })
        .await
    }
}

impl HostState {
    /// Makes an export with `f` and writes it into the export stream `into`.
    async fn export_into(
        &mut self,
        operation: &'static str,
        into: &Resource<ExportStreamState>,
        f: impl FnOnce(&dyn CatalogAccess) -> Result<CatalogExport, CatalogError> + Send + 'static,
    ) -> HostResult<catalog::ExportInfo> {
        let opened = self.table().get(into)?.open_writer();
        let result = match opened {
            Err(e) => Err(e),
            Ok((name, mut writer)) => match self.on_catalog(operation, f).await {
                Err(e) => Err(e),
                Ok(export) => {
                    let timeout = self.call_timeout(self.action.limits.host_call_timeout);
                    let written = bounded(operation, timeout, async move {
                        writer.write_all(&export.bytes).await.map_err(|e| {
                            WitError::Failed(format!(
                                "writing the catalog export into {name:?}: {e}"
                            ))
                        })?;
                        writer.flush().await.map_err(|e| {
                            WitError::Failed(format!(
                                "writing the catalog export into {name:?}: {e}"
                            ))
                        })?;
                        Ok(catalog::ExportInfo {
                            from_seq: export.from_seq,
                            to_seq: export.to_seq,
                            changes: export.changes,
                            bytes: export.bytes.len() as u64,
                            full: export.full,
                        })
                    })
                    .await;
                    // Part of the export may have gone in: the stream is no longer whole.
                    if let Err(e) = &written {
                        self.table().get_mut(into)?.break_off(operation, e);
                    }
                    written
                }
            },
        };
        self.audit(Capability::Catalog, operation, "catalog", &result);
        Ok(result)
    }
}

impl catalog::Host for HostState {
    async fn state(&mut self) -> HostResult<catalog::DrState> {
        Ok(self
            .on_catalog("catalog.state", |c| c.state())
            .await
            .map(|s| catalog::DrState {
                cluster_id: s.cluster_id,
                mode: mode_to(s.mode),
                cursor: s.cursor,
                current_seq: s.current_seq,
            }))
    }

    async fn take_snapshot(&mut self) -> HostResult<catalog::SnapshotInfo> {
        let result = self
            .on_catalog("catalog.take-snapshot", |c| c.take_snapshot())
            .await
            .map(|s| catalog::SnapshotInfo {
                id: s.id,
                seq: s.seq,
                records: s.records,
                bytes: s.bytes,
            });
        self.audit(
            Capability::Catalog,
            "catalog.take-snapshot",
            "catalog",
            &result,
        );
        Ok(result)
    }

    async fn export_changes(
        &mut self,
        since: u64,
        mode: catalog::DrMode,
        snapshot: Option<String>,
        into: Resource<ExportStreamState>,
    ) -> HostResult<catalog::ExportInfo> {
        let mode = mode_from(mode);
        self.export_into("catalog.export-changes", &into, move |c| {
            c.export_changes(since, mode, snapshot.as_deref())
        })
        .await
    }

    async fn export_snapshot(
        &mut self,
        snapshot: String,
        since: u64,
        into: Resource<ExportStreamState>,
    ) -> HostResult<catalog::ExportInfo> {
        self.export_into("catalog.export-snapshot", &into, move |c| {
            c.export_snapshot(&snapshot, since)
        })
        .await
    }

    async fn export_full(
        &mut self,
        into: Resource<ExportStreamState>,
    ) -> HostResult<catalog::ExportInfo> {
        self.export_into("catalog.export-full", &into, |c| c.export_full())
            .await
    }

    async fn advance_cursor(&mut self, to: u64) -> HostResult<()> {
        let result = self
            .on_catalog("catalog.advance-cursor", move |c| c.advance_cursor(to))
            .await;
        self.audit(
            Capability::Catalog,
            "catalog.advance-cursor",
            &format!("catalog cursor {to}"),
            &result,
        );
        Ok(result)
    }

    async fn apply(
        &mut self,
        source: Resource<ImportStreamState>,
    ) -> HostResult<catalog::ApplyInfo> {
        if let Err(e) = self.catalog() {
            return Ok(Err(e));
        }
        let (name, reader) = self.table().get_mut(&source)?.take_reader();
        let result = match reader {
            None => Err(WitError::Invalid(format!(
                "import {name:?} was already read to its end"
            ))),
            Some(reader) => {
                let timeout = self.call_timeout(self.action.limits.host_call_timeout);
                let read = bounded("catalog.apply", timeout, async {
                    let mut bytes = Vec::new();
                    reader
                        .take(MAX_APPLY_BYTES + 1)
                        .read_to_end(&mut bytes)
                        .await
                        .map_err(|e| {
                            WitError::Failed(format!("reading DR artifact {name:?}: {e}"))
                        })?;
                    if bytes.len() as u64 > MAX_APPLY_BYTES {
                        return Err(WitError::Invalid(format!(
                            "DR artifact {name:?} is over the limit of {}",
                            human_bytes(MAX_APPLY_BYTES)
                        )));
                    }
                    Ok(bytes)
                })
                .await;
                match read {
                    Err(e) => Err(e),
                    Ok(bytes) => self
                        .on_catalog("catalog.apply", move |c| c.apply(&bytes))
                        .await
                        .map(apply_info),
                }
            }
        };
        self.audit(
            Capability::Catalog,
            "catalog.apply",
            &format!("DR artifact {name}"),
            &result,
        );
        Ok(result)
    }

    async fn apply_local_snapshot(&mut self, snapshot: String) -> HostResult<catalog::ApplyInfo> {
        let target = format!("local catalog snapshot {snapshot}");
        let result = self
            .on_catalog("catalog.apply-local-snapshot", move |c| {
                c.apply_local_snapshot(&snapshot)
            })
            .await
            .map(apply_info);
        self.audit(
            Capability::Catalog,
            "catalog.apply-local-snapshot",
            &target,
            &result,
        );
        Ok(result)
    }
}

fn apply_info(a: crate::catalog::CatalogApplied) -> catalog::ApplyInfo {
    catalog::ApplyInfo {
        applied: a.applied,
        skipped: a.skipped,
        to_seq: a.to_seq,
    }
}
