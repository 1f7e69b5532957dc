//! Host functions, one module per capability.
//!
//! # Which failures a guest sees, and which trap
//!
//! Every function here first checks the capability grant, then the scope (the action's
//! namespace and, when it has one, its workload), and only then calls the cluster or the
//! export store. Everything that can go wrong with a *request* is returned to the guest as the
//! WIT `error` variant, which a blueprint can match on:
//!
//! - `denied`: the capability is not granted (the message names it and the `--grant` to add),
//!   or a workload, snapshot or namespace is outside the action's scope (it names both);
//! - `not-found`: the workload, pod, container, snapshot, secret or artifact does not exist;
//! - `invalid`: a malformed argument or one over a cap (stdin, a write, a duplicate export);
//! - `timed-out`: the call ran past its own timeout or the phase's deadline;
//! - `failed`: anything else the backend reports.
//!
//! A trap (the outer `wasmtime::Result`) is reserved for faults of the host: a resource
//! handle that is not in the store's table. A guest cannot cause one with valid handles, and
//! the bindings only hand it valid ones.

mod catalog;
pub(crate) mod data;
mod exec;
mod log;
mod secrets;
pub(crate) mod session;
mod volumes;
mod workloads;

use std::future::Future;
use std::time::{Duration, Instant};

use cairn_cluster::WorkloadRef;

use crate::audit::Entry;
use crate::bindings::{WitError, types};
use crate::capability::Capability;
use crate::limits::{MAX_AUDIT_FIELD, MAX_AUDITED_CALLS, MAX_AUDITED_REFUSALS, human_duration};
use crate::run::HostContext;
use crate::state::{ActionCtx, HostState};

/// Extra time a host call may take past the phase's deadline before it is cut, so that a
/// command killed at the deadline can still report.
const DEADLINE_GRACE: Duration = Duration::from_millis(500);

impl types::Host for HostState {}

impl HostState {
    /// The host context, if `cap` is granted; `denied` naming it otherwise.
    pub(crate) fn require(&self, cap: Capability) -> Result<HostContext, WitError> {
        // The log records a bounded number of calls a phase; past it, none goes unrecorded:
        // a blueprint could otherwise make harmless calls until the rest went unseen.
        if self.audited_calls >= MAX_AUDITED_CALLS {
            return Err(WitError::Denied(format!(
                "this phase made {MAX_AUDITED_CALLS} audited calls, the most the audit log \
                 records; later calls that need a capability are refused"
            )));
        }
        // First: describe() runs with no host and no grants, so every later check would
        // refuse it with advice (grant it, declare it) that cannot help there.
        let Some(host) = self.action.host.clone() else {
            return Err(WitError::Denied(format!(
                "describe() may only log; calling a `{cap}` function there is refused"
            )));
        };
        // Declaring it or asking for it would not help: only the runtime grants it, to the DR
        // blueprint it runs.
        if cap == Capability::Catalog && !self.action.grants.contains(&cap) {
            return Err(WitError::Denied(
                "capability `catalog` is only for Cairn's DR blueprint, which `cairn dr` runs \
                 with it; other blueprints cannot be granted it"
                    .into(),
            ));
        }
        if !self.action.declared.contains(&cap) {
            return Err(WitError::Denied(cairn_contract::not_declared(cap)));
        }
        if !self.action.grants.contains(&cap) {
            // The SDK's `secrets::get_optional` tells this refusal by its lead.
            return Err(WitError::Denied(cairn_contract::not_granted(cap)));
        }
        Ok(host)
    }

    /// The action's scope, for messages: `ns` or `ns/workload`.
    pub(crate) fn scope(&self) -> String {
        match &self.action.workload {
            Some(w) => format!("{}/{w}", self.action.namespace),
            None => self.action.namespace.clone(),
        }
    }

    /// Resolves a guest's workload reference against the action's scope.
    pub(crate) fn resolve(
        &self,
        workload: Option<types::WorkloadRef>,
    ) -> Result<WorkloadRef, WitError> {
        let action = &self.action;
        match workload {
            None => match &action.workload {
                Some(w) => Ok(WorkloadRef::new(&action.namespace, w)),
                None => Err(WitError::Invalid(
                    "this action has no target workload (it was run without --workload), so a call \
                     without a workload has none to act on: run it with --workload, or name the \
                     workload in the call"
                        .into(),
                )),
            },
            Some(r) => {
                let inside =
                    r.namespace == action.namespace && action.workload.as_ref().is_none_or(|w| *w == r.name);
                if inside {
                    Ok(WorkloadRef::new(r.namespace, r.name))
                } else {
                    Err(WitError::Denied(format!(
                        "workload `{}/{}` is outside this action's scope `{}`",
                        r.namespace,
                        r.name,
                        self.scope()
                    )))
                }
            }
        }
    }

    /// The timeout of a host call: `base`, but never past the phase's deadline.
    pub(crate) fn call_timeout(&self, base: Duration) -> Duration {
        let left = self.deadline.saturating_duration_since(Instant::now()) + DEADLINE_GRACE;
        base.min(left)
    }

    /// Appends the audit record of a side-effecting call.
    pub(crate) fn audit<T>(
        &mut self,
        cap: Capability,
        operation: &str,
        target: &str,
        result: &Result<T, WitError>,
    ) {
        let outcome = match result {
            Ok(_) => Audited::Ok,
            Err(WitError::Denied(_)) => Audited::Refused("denied".to_string()),
            Err(e) => Audited::Refused(format!("error: {}", message(e))),
        };
        self.audit_outcome(cap, operation, target, outcome);
    }

    /// Appends the audit record of a call that did nothing: not an error to the guest, but
    /// not `ok` either (deleting what is already gone). Counted as a refused call: a guest
    /// can repeat it in a loop.
    pub(crate) fn audit_not_found(
        &mut self,
        cap: Capability,
        operation: &str,
        target: &str,
        why: &str,
    ) {
        self.audit_outcome(
            cap,
            operation,
            target,
            Audited::Refused(format!("not-found: {why}")),
        );
    }

    fn audit_outcome(&mut self, cap: Capability, operation: &str, target: &str, outcome: Audited) {
        let Some(host) = &self.action.host else {
            return;
        };
        // A guest looping over calls gets a bounded share of the log, whatever they return.
        self.audited_calls += 1;
        if self.audited_calls > MAX_AUDITED_CALLS {
            return;
        }
        let refused = matches!(outcome, Audited::Refused(_));
        if refused {
            self.audited_refusals += 1;
            if self.audited_refusals > MAX_AUDITED_REFUSALS {
                return;
            }
        }
        let outcome = match outcome {
            Audited::Ok => "ok".to_string(),
            Audited::Refused(outcome) => outcome,
        };
        // Both may carry what the guest passed (a name, a message): cut, so a guest calling
        // in a loop with huge arguments cannot fill the disk through the audit log.
        let outcome = self.log.secrets().redact(&outcome).into_owned();
        let mut outcome = crate::state::cut(&outcome, MAX_AUDIT_FIELD, "outcome");
        if refused && self.audited_refusals == MAX_AUDITED_REFUSALS {
            outcome.push_str(&format!(
                " (the phase's {MAX_AUDITED_REFUSALS}th refused or failed call: later ones are not \
                 recorded)"
            ));
        } else if self.audited_calls == MAX_AUDITED_CALLS {
            outcome.push_str(&format!(
                " (the phase's {MAX_AUDITED_CALLS}th audited call: later ones are not recorded)"
            ));
        }
        host.audit.append(Entry {
            action_id: &self.action.action_id,
            blueprint: &self.action.blueprint,
            capability: cap.as_str(),
            // An exec's target is its command line, which may pass a secret (`-pPASSWORD`).
            target: crate::state::cut(
                &self.log.secrets().redact(target),
                MAX_AUDIT_FIELD,
                "target",
            ),
            operation,
            outcome,
        });
    }
}

/// What an audit record says a call did.
enum Audited {
    Ok,
    /// Refused, failed or did nothing: the record's outcome.
    Refused(String),
}

/// Checks that a workload a backend object belongs to (a snapshot's) is in the action's scope.
pub(crate) fn in_scope(
    action: &ActionCtx,
    workload: &WorkloadRef,
    what: &str,
) -> Result<(), WitError> {
    let inside = workload.namespace == action.namespace
        && action.workload.as_ref().is_none_or(|w| *w == workload.name);
    if inside {
        return Ok(());
    }
    let scope = match &action.workload {
        Some(w) => format!("{}/{w}", action.namespace),
        None => action.namespace.clone(),
    };
    Err(WitError::Denied(format!(
        "{what} belongs to workload `{workload}`, outside this action's scope `{scope}`"
    )))
}

/// Runs a host call's future with its timeout, inside a span.
pub(crate) async fn bounded<T>(
    operation: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, WitError>>,
) -> Result<T, WitError> {
    use tracing::Instrument;
    let span = tracing::debug_span!("host_call", operation);
    async move {
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(WitError::TimedOut(format!(
                "{operation} ran past its timeout of {}",
                human_duration(timeout)
            ))),
        };
        if let Err(e) = &result {
            tracing::debug!(error = %message(e), "host call refused or failed");
        }
        result
    }
    .instrument(span)
    .await
}

/// The message of a WIT error.
pub(crate) fn message(e: &WitError) -> &str {
    match e {
        WitError::Denied(m)
        | WitError::NotFound(m)
        | WitError::Invalid(m)
        | WitError::TimedOut(m)
        | WitError::Failed(m) => m,
    }
}

/// `denied: …`, `timed out: …`: a WIT error in one line, worded as the SDK's `Error` shows
/// it (a blueprint's `ctx.failure()`), so a report and a posthook say the same.
pub(crate) fn describe_error(e: &WitError) -> String {
    let kind = match e {
        WitError::Denied(_) => "denied",
        WitError::NotFound(_) => "not found",
        WitError::Invalid(_) => "invalid",
        WitError::TimedOut(_) => "timed out",
        WitError::Failed(_) => "failed",
    };
    format!("{kind}: {}", message(e))
}

/// A cluster error as the guest sees it.
pub(crate) fn from_cluster(e: cairn_cluster::Error) -> WitError {
    use cairn_cluster::Error as C;
    match e {
        C::NotFound { .. } => WitError::NotFound(e.to_string()),
        C::Denied(m) => WitError::Denied(m),
        C::Invalid(m) => WitError::Invalid(m),
        C::TimedOut { .. } => WitError::TimedOut(e.to_string()),
        other => WitError::Failed(other.to_string()),
    }
}

/// An engine error (from the export store) as the guest sees it.
pub(crate) fn from_engine(e: crate::Error) -> WitError {
    use crate::Error as E;
    match e {
        E::InvalidName { .. } => WitError::Invalid(e.to_string()),
        E::NotFound(m) => WitError::NotFound(m),
        E::BadArtifact { .. } => WitError::Invalid(e.to_string()),
        E::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            WitError::NotFound(e.to_string())
        }
        E::Io { ref source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
            WitError::Invalid(e.to_string())
        }
        other => WitError::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::AuditLog;
    use crate::events::EventSink;
    use crate::exports::DirExports;

    /// A phase whose audit records go to `dir/audit.jsonl`.
    fn phase(dir: &std::path::Path) -> HostState {
        state(dir, true)
    }

    /// A phase (`describe()` when not `with_host`: no host, nothing granted or declared).
    fn state(dir: &std::path::Path, with_host: bool) -> HostState {
        let inventory = dir.join("inventory.yaml");
        std::fs::write(
            &inventory,
            "namespaces:\n  default:\n    workloads:\n      hello:\n        allow: [echo]\n",
        )
        .expect("the inventory");
        let cluster = cairn_cluster::LocalCluster::from_inventory(&inventory, &dir.join("state"))
            .expect("the local cluster");
        let host = HostContext {
            cluster: Arc::new(cluster),
            exports: Arc::new(DirExports::new(dir.join("exports")).expect("the exports")),
            audit: Arc::new(AuditLog::open(dir.join("audit.jsonl")).expect("the audit log")),
            events: EventSink::discard(),
            catalog: None,
        };
        let action = Arc::new(ActionCtx {
            action_id: "a1".into(),
            phase: "backup".into(),
            blueprint: "sha256:00".into(),
            blueprint_name: "test".into(),
            namespace: "default".into(),
            workload: Some("hello".into()),
            grants: Default::default(),
            declared: Default::default(),
            secrets: Default::default(),
            hidden: Default::default(),
            limits: Default::default(),
            deadline: Duration::from_secs(60),
            host: with_host.then_some(host),
            sessions: Default::default(),
            references: Default::default(),
            taken: Default::default(),
            snapshots_taken: Default::default(),
            deleted_snapshots: Default::default(),
            exports_opened: Default::default(),
        });
        HostState::new(
            action,
            EventSink::discard(),
            Instant::now() + Duration::from_secs(60),
        )
    }

    /// Calls that succeed are bounded too: a guest repeating one (scaling to the count the
    /// workload has) in a loop would otherwise fill the disk through a log that is never
    /// rotated. Refused calls keep their own, smaller, share.
    #[test]
    fn a_phase_looping_over_calls_that_succeed_gets_a_bounded_share_of_the_log() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut state = phase(dir.path());
        let ok: Result<(), WitError> = Ok(());
        for _ in 0..MAX_AUDITED_CALLS + 500 {
            state.audit(Capability::Scale, "workloads.scale", "default/hello", &ok);
        }
        state.audit_not_found(Capability::Export, "data.delete", "export x", "gone");
        let records = AuditLog::verify(dir.path().join("audit.jsonl")).expect("the chain holds");
        assert_eq!(
            records.len(),
            MAX_AUDITED_CALLS,
            "the first 10,000 recorded"
        );
        assert_eq!(
            records[MAX_AUDITED_CALLS - 1].outcome,
            "ok (the phase's 10000th audited call: later ones are not recorded)"
        );
        // Past it, a call that acts is refused rather than made unseen.
        let refused = state.require(Capability::Scale).expect_err("refused");
        assert!(
            matches!(&refused, WitError::Denied(m) if m.contains("audited calls")),
            "{refused:?}"
        );
    }

    /// `describe()` is never given grants, so "grant it" was wrong advice there.
    #[test]
    fn a_capability_call_from_describe_is_refused_as_describe_may_only_log() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = state(dir.path(), false);
        for cap in [Capability::Exec, Capability::Secrets, Capability::Catalog] {
            let refused = state.require(cap).expect_err("refused in describe()");
            assert!(
                matches!(&refused, WitError::Denied(m) if *m == format!(
                    "describe() may only log; calling a `{cap}` function there is refused"
                )),
                "{refused:?}"
            );
        }
    }
}
