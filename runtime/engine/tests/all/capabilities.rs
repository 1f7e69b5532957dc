//! Capabilities against the local cluster: exec, secrets, scale, snapshots, exports and
//! imports.

use cairn_engine::Capability;

use crate::support::{Fixture, engine, misbehave, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_in_the_target_workload() {
    let fixture = Fixture::new();
    let report = fixture.run(request("exec")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("stdout"), Some("hi\n"));
    assert_eq!(report.outputs.get("exit"), Some("0"));
    assert_eq!(report.outputs.get("pod"), Some("hello-0"));
    let report = fixture.run(request("run-all")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("pods"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_pipes_into_further_programs_within_bounds() {
    let fixture = Fixture::new();
    let report = fixture.run(request("exec-pipeline")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("stdout"), Some("hi\n"));
    assert_eq!(report.outputs.get("exit"), Some("3"), "as pipefail");
    assert!(
        report
            .outputs
            .get("too-long")
            .is_some_and(|m| m.contains("8 more programs") && m.contains("at most 8")),
        "{report:?}"
    );
    assert!(
        report
            .outputs
            .get("empty")
            .is_some_and(|m| m.contains("`then[1]`") && m.contains("empty")),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_runs_against_a_stopped_workload_only_while_it_is_stopped() {
    let fixture = Fixture::new();
    let report = fixture.run(request("exec-stopped")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("pod"), Some("hello-stopped"));
    assert_eq!(report.outputs.get("stdout"), Some("offline\n"));
    assert!(
        report
            .outputs
            .get("refused")
            .is_some_and(|m| m.contains("has 1 replicas") && m.contains("scale it down")),
        "{report:?}"
    );
    assert!(
        report
            .outputs
            .get("run-all")
            .is_some_and(|m| m.contains("use run")),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_read_only_when_granted() {
    let fixture = Fixture::new();
    let mut req = request("secret");
    req.secrets.insert("token".into(), "s3cr3t".into());
    let report = fixture.run(req.clone()).await;
    assert_eq!(report.outputs.get("token-length"), Some("6"));
    req.grants.remove(&Capability::Secrets);
    let report = fixture.run(req).await;
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("capability `secrets` not granted")),
        "{report:?}"
    );
    let report = fixture.run(request("secret")).await;
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not found: ")),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_and_snapshot_work_in_scope() {
    let fixture = Fixture::new();
    let report = fixture.run(request("scale")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("before"), Some("1"));
    let report = fixture.run(request("snapshot")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("snapshots"), Some("1"));
    let mut req = request("scale");
    req.grants.remove(&Capability::Scale);
    let report = fixture.run(req).await;
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("--grant scale")),
        "{report:?}"
    );
}

/// A blueprint snapshotting in a loop is stopped at the run's cap, deleted snapshots counted:
/// a loop of snapshot and delete would fill a cloud's quota too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_takes_at_most_64_volume_snapshots() {
    let fixture = Fixture::new();
    let mut req = request("snapshot");
    req.params.push(("mode".into(), "snapshot-loop".into()));
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("taken"), Some("64"), "{report:?}");
    let refused = report.outputs.get("refused").unwrap_or_default();
    assert!(
        refused.contains("at most 64 volume snapshots") && refused.contains("has 64"),
        "{refused}"
    );
}

/// A blueprint exporting in a loop is stopped at the run's cap: each export is a repository
/// snapshot, and the run keeps every one it finished until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_opens_at_most_1024_exports() {
    let fixture = Fixture::new();
    let mut req = request("export");
    req.params.push(("mode".into(), "export-loop".into()));
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("finished"), Some("1024"), "{report:?}");
    let refused = report.outputs.get("refused").unwrap_or_default();
    assert!(
        refused.starts_with("Error::Invalid(\"a run opens at most 1024 exports")
            && refused.contains("has opened 1024"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_is_a_file_and_imports_back_into_a_command() {
    let fixture = Fixture::new();
    let report = fixture.run(request("export")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.outputs.get("bytes"),
        Some("8"),
        "the command's stdout was piped"
    );
    let artifact = report
        .outputs
        .artifacts
        .first()
        .expect("an artifact")
        .clone();
    assert_eq!(artifact.name, "dump");
    assert_eq!(artifact.get("kind"), Some("file"));
    assert_eq!(artifact.get("bytes"), Some("15"));
    let path = artifact.get("path").expect("path");
    assert_eq!(path, format!("{}/dump", report.action_id));
    let stored =
        std::fs::read_to_string(fixture.path("exports").join(path)).expect("the export file");
    assert_eq!(stored, "header\npayload\n");
    let mut leftovers: Vec<_> = std::fs::read_dir(fixture.path("exports").join(&report.action_id))
        .expect("action dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    leftovers.sort();
    assert_eq!(
        leftovers,
        [".dump.tags", "dump"],
        "the export and its tags, and no temporary files remain"
    );

    let mut req = request("import");
    req.artifacts = vec![artifact.clone()];
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("head"), Some("header\n"));
    assert_eq!(report.outputs.get("bytes"), Some("8"));
    assert_eq!(
        std::fs::read_to_string(fixture.path("restored.txt")).expect("restored"),
        "payload\n"
    );

    // An artifact that points outside the export directory is refused.
    let mut evil = artifact;
    evil.values = vec![
        ("kind".into(), "file".into()),
        ("path".into(), "../inventory.yaml".into()),
    ];
    let mut req = request("import");
    req.artifacts = vec![evil];
    let report = fixture.run(req).await;
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("invalid")),
        "{report:?}"
    );
}

/// A restore whose point names an export that is gone (the point deleted) is refused before
/// its prehook quiesces anything, naming the export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_whose_export_is_gone_is_refused_before_its_prehook() {
    let fixture = Fixture::new();
    let report = fixture.run(request("export")).await;
    assert!(report.ok, "{report:?}");
    let artifact = report.outputs.artifacts[0].clone();
    let stored = fixture
        .path("exports")
        .join(artifact.get("path").expect("path"));
    std::fs::remove_file(&stored).expect("delete the export");
    let before = fixture.events.lock().expect("events").len();
    let mut req = request("restore");
    req.artifacts = vec![artifact];
    let blueprint = misbehave().await;
    match engine().run(&blueprint, &fixture.host, req).await {
        Err(cairn_engine::Error::BadArtifact { name, reason }) => {
            assert_eq!(name, "dump");
            assert!(reason.contains("nothing ran"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        fixture.events.lock().expect("events").len(),
        before,
        "no phase ran"
    );
}

/// A command piped into an export runs as long as its phase allows, past the default timeout
/// of a command: a dump takes as long as its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piped_command_is_bounded_by_its_phase_not_by_the_exec_timeout() {
    let fixture = Fixture::new();
    let mut req = request("export");
    req.params.push(("mode".into(), "slow-dump".into()));
    req.limits.exec_timeout = std::time::Duration::from_secs(1);
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("bytes"), Some("8"));
}

/// A trailer follows an import read to its end, and never one cut short: a damaged export
/// fails the pipe before its end, and the command never sees the trailer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailer_follows_only_a_whole_import() {
    let fixture = Fixture::new();
    let report = fixture.run(request("export")).await;
    assert!(report.ok, "{report:?}");
    let artifact = report.outputs.artifacts[0].clone();
    let import = |mode: &str| {
        let mut req = request("import");
        req.artifacts = vec![artifact.clone()];
        req.params.push(("mode".into(), mode.into()));
        req
    };
    let restored = || std::fs::read_to_string(fixture.path("restored.txt")).unwrap_or_default();

    let report = fixture.run(import("trailer")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(restored(), "payload\nTRAILER\n");
    assert_eq!(
        report.outputs.get("bytes"),
        Some("8"),
        "the import's bytes, not the trailer's"
    );

    // The same length, other bytes: only the end of the read can tell.
    let stored = fixture
        .path("exports")
        .join(artifact.get("path").expect("path"));
    std::fs::write(&stored, "header\npayloaD\n").expect("damage the export");
    std::fs::remove_file(fixture.path("restored.txt")).expect("restored");
    for mode in ["trailer", "plain"] {
        let report = fixture.run(import(mode)).await;
        let error = report.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("is damaged: its SHA-256 is") && error.contains("restore from another"),
            "{mode}: {report:?}"
        );
        assert!(!restored().contains("TRAILER"), "{mode}: {:?}", restored());
    }
    std::fs::write(&stored, "header\npay").expect("truncate the export");
    let report = fixture.run(import("trailer")).await;
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("holds 10 bytes where its reference says 15")),
        "{report:?}"
    );
    assert!(!restored().contains("TRAILER"), "{:?}", restored());
}

/// On Kubernetes no exec can be killed: an import cut short closes the exec, and the command
/// reads that as the end of its input and runs on. It never reads the trailer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kubernetes_a_command_whose_import_is_cut_short_never_reads_the_trailer() {
    let mut fixture = Fixture::new();
    let report = fixture.run(request("export")).await;
    assert!(report.ok, "{report:?}");
    let artifact = report.outputs.artifacts[0].clone();
    let stored = fixture
        .path("exports")
        .join(artifact.get("path").expect("path"));
    std::fs::write(&stored, "header\npayloaD\n").expect("damage the export");
    let _api = fixture.on_kubernetes().await;
    let mut req = request("import");
    req.artifacts = vec![artifact];
    req.params.push(("mode".into(), "trailer".into()));
    let report = fixture.run(req).await;
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("is damaged")),
        "{report:?}"
    );
    // The command read an end where the import was cut, and finished (`restored.txt`
    // appears then): the hazard the trailer is for. It got what crossed before the cut, at
    // most the import's bytes, never the trailer.
    let restored = fixture.path("restored.txt");
    for _ in 0..250 {
        if restored.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let got = std::fs::read_to_string(&restored).expect("the command finished");
    assert!("payloaD\n".starts_with(&got), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blueprint_reads_and_deletes_only_exports_given_written_or_in_its_scope() {
    let fixture = Fixture::new();
    let report = fixture.run(request("export")).await;
    assert!(report.ok, "{report:?}");
    let artifact = report.outputs.artifacts[0].clone();
    let path = artifact.get("path").expect("path").to_owned();
    let forge = |namespace: &str, workload: Option<&str>, mode: &str| {
        let mut req = request("forge");
        req.namespace = namespace.into();
        req.workload = workload.map(Into::into);
        req.params = vec![("label".into(), path.clone()), ("mode".into(), mode.into())];
        req
    };

    // Its own namespace and workload, or its whole namespace: the tags say it is in scope.
    for workload in [Some("hello"), None] {
        let report = fixture.run(forge("default", workload, "ok")).await;
        assert!(report.ok, "{report:?}");
        assert_eq!(report.outputs.get("head"), Some("header\n"));
    }
    // Another workload or namespace may neither read nor delete it.
    for (namespace, workload) in [("default", Some("other")), ("shop", None)] {
        for mode in ["ok", "delete"] {
            let report = fixture.run(forge(namespace, workload, mode)).await;
            let error = report.error.as_deref().unwrap_or_default();
            assert!(
                error.contains(
                    "denied: export `forged` belongs to workload `default/hello`, outside this \
                     action's scope"
                ),
                "{report:?}"
            );
        }
    }
    assert!(
        fixture.path("exports").join(&path).exists(),
        "nothing was deleted"
    );
    // Nor may one in its scope be returned as this run's own: a restore point records what a
    // run returns, and later runs and retention act on it.
    let report = fixture.run(forge("default", Some("hello"), "return")).await;
    assert!(!report.ok, "{report:?}");
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("names an export this run neither was given nor finished"),
        "{report:?}"
    );

    // Given to the action (a restore into another namespace), it is read wherever that runs.
    let mut req = forge("shop", None, "ok");
    req.artifacts = vec![artifact];
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("head"), Some("header\n"));

    // Deleted in its scope; deleted again (a delete action run after a partial failure), it
    // is already gone, which counts as deleted.
    for _ in 0..2 {
        let report = fixture.run(forge("default", Some("hello"), "delete")).await;
        assert!(report.ok, "{report:?}");
        assert!(!fixture.path("exports").join(&path).exists());
    }
}

/// `run-all` over many pods runs a few at a time and shares one output cap among them: 1024
/// pods each capturing 1 MiB of stdout and of stderr at once took 2.5 GB of host memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_over_many_pods_runs_eight_at_once_within_one_output_cap() {
    let mut fixture = Fixture::new();
    std::fs::create_dir(fixture.path("inflight")).expect("the in-flight directory");
    std::fs::write(
        fixture.path("many.yaml"),
        "namespaces:\n  default:\n    workloads:\n      hello:\n        replicas: 64\n        \
         allow: [sh]\n",
    )
    .expect("the inventory");
    fixture.host.cluster = std::sync::Arc::new(
        cairn_cluster::LocalCluster::from_inventory(
            &fixture.path("many.yaml"),
            &fixture.path("many-state"),
        )
        .expect("loading the inventory"),
    );
    let mut req = request("run-all");
    req.params.push(("mode".into(), "crowd".into()));
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("pods"), Some("64"));
    let most: usize = report
        .outputs
        .get("most-at-once")
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!((1..=8).contains(&most), "{most} pods ran at once");
    // 16 MiB over 64 pods' stdout and stderr: 128 KiB each, marked as cut.
    assert_eq!(report.outputs.get("longest"), Some("131072"));
    assert_eq!(report.outputs.get("cut"), Some("64"));
    let order: Vec<String> = (0..64).map(|i| format!("hello-{i}")).collect();
    assert_eq!(report.outputs.get("order"), Some(order.join(",").as_str()));
}

/// A dump cut short (here by its timeout) leaves a stream that can no longer be sealed: a
/// blueprint retrying on it would otherwise seal the partial dump followed by a whole one as
/// one export that looks complete. What it held is discarded, as for an unfinished stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_whose_pipe_failed_part_way_is_broken_and_discarded() {
    let fixture = Fixture::new();
    let mut req = request("export");
    req.params.push(("mode".into(), "broken-pipe".into()));
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    let first = report.outputs.get("first").unwrap_or_default();
    assert!(first.starts_with("Error::TimedOut("), "{first}");
    for call in ["retry", "write", "finish"] {
        let refused = report.outputs.get(call).unwrap_or_default();
        assert!(
            refused.starts_with("Error::Failed(\"export \\\"dump\\\" is broken: an earlier data.pipe-from into it failed (timed out:")
                && refused.contains("open a new export"),
            "{call}: {refused}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(fixture.path("exports").join(&report.action_id))
        .map(|d| d.map(|e| e.expect("entry").file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "the partial export was discarded: {left:?}"
    );
}

/// A dump that exits non-zero after writing may be cut short: the stream takes nothing more
/// (a retry into it would seal the cut dump followed by a whole one), but the blueprint, which
/// saw the status, may still seal what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_takes_nothing_more_after_a_command_failed_into_it() {
    let fixture = Fixture::new();
    let mut req = request("export");
    req.params.push(("mode".into(), "failed-dump".into()));
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("exit"), Some("3"));
    for call in ["retry", "write"] {
        let refused = report.outputs.get(call).unwrap_or_default();
        assert!(
            refused.starts_with(
                "Error::Invalid(\"export \\\"dump\\\" takes no more data: the command piped into it \
                 exited with status 3 after writing 8 bytes"
            ) && refused.contains("finish the export as it is"),
            "{call}: {refused}"
        );
    }
    let artifact = report.outputs.artifacts.first().expect("the sealed export");
    let path = artifact.get("path").expect("path");
    let stored =
        std::fs::read_to_string(fixture.path("exports").join(path)).expect("the export file");
    assert_eq!(stored, "partial\n", "only the failed command's output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phase_holds_at_most_eight_streams_open() {
    let fixture = Fixture::new();
    let mut req = request("export");
    req.params.push(("mode".into(), "many-streams".into()));
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.outputs.get("refused"),
        Some(
            "this phase already has 8 export and import streams open, the most it may; finish or \
             drop one first"
        )
    );
}

/// A capability the run grants but the blueprint does not declare is refused: what a blueprint
/// can do is what its `describe()` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_capability_the_blueprint_does_not_declare_is_refused() {
    let fixture = Fixture::new();
    let blueprint = crate::support::engine()
        .load_file(&crate::support::guest("undeclared"))
        .await
        .expect("loading the undeclared guest");
    let mut request = request("backup");
    request.params.clear();
    let report = crate::support::engine()
        .run(&blueprint, &fixture.host, request)
        .await
        .expect("the run started");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("taken"), None, "{report:?}");
    assert!(
        report
            .outputs
            .get("refused")
            .is_some_and(|m| m.contains("capability `volumes` is not declared")),
        "{report:?}"
    );
}

/// A secret never leaves the run in the clear: the log shows its name where the guest wrote
/// it, and outputs holding it (kept in the catalog) fail the phase. (And a last `print!`
/// without its newline is logged when the phase ends.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_blanked_out_of_logs_and_refused_in_outputs() {
    let fixture = Fixture::new();
    let mut req = request("secret");
    req.secrets.insert("token".into(), "s3cr3t".into());
    let report = fixture.run(req.clone()).await;
    assert!(report.ok, "{report:?}");
    let logged: Vec<String> = fixture
        .events
        .lock()
        .expect("events")
        .iter()
        .filter_map(|e| match &e.kind {
            cairn_engine::EventKind::Log { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect();
    assert!(
        logged.iter().any(|l| l == "the token is [secret token]"),
        "{logged:?}"
    );
    assert!(!logged.iter().any(|l| l.contains("s3cr3t")), "{logged:?}");
    assert!(
        logged.iter().any(|l| l == "printed without a newline"),
        "{logged:?}"
    );
    req.params.push(("mode".into(), "leak".into()));
    let report = fixture.run(req).await;
    assert!(!report.ok, "{report:?}");
    let error = report.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("value `dsn` holds secret `token`") && !error.contains("s3cr3t"),
        "{error}"
    );
    assert_eq!(report.outputs.get("dsn"), None, "{report:?}");
    // Nor under a key an export reference has, where the host's own ids are not looked at.
    let mut req = request("secret");
    req.secrets.insert("token".into(), "s3cr3t".into());
    req.params.push(("mode".into(), "shadow".into()));
    let report = fixture.run(req).await;
    assert!(!report.ok, "{report:?}");
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("value `bytes` holds secret `token`"),
        "{report:?}"
    );
}

/// Once a backup's phases are done its snapshots are waited on until ready to restore from;
/// a backup that fails after taking one deletes it, as no restore point references it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_backup_deletes_its_snapshots_and_a_good_one_waits_for_them() {
    let fixture = Fixture::new();
    let mut req = request("backup");
    req.params.push(("mode".into(), "snapshotted".into()));
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    let id = report
        .outputs
        .get("snapshot")
        .expect("a snapshot")
        .to_owned();
    assert!(fixture.host.cluster.snapshot_info(&id).await.is_ok());
    assert!(
        fixture
            .logs()
            .iter()
            .any(|l| l.starts_with("waiting for 1 volume snapshot(s) to be ready")),
        "{:?}",
        fixture.logs()
    );

    let mut req = request("backup");
    req.params.push(("mode".into(), "snapshot-fail".into()));
    let report = fixture.run(req).await;
    assert!(!report.ok, "{report:?}");
    let main = report
        .phases
        .iter()
        .find(|p| p.action == "backup")
        .expect("the backup phase");
    let id = main
        .outputs
        .get("snapshot")
        .expect("checkpointed")
        .to_owned();
    assert!(
        matches!(
            fixture.host.cluster.snapshot_info(&id).await,
            Err(cairn_cluster::Error::NotFound { .. })
        ),
        "the failed backup's snapshot {id} is left"
    );
}
