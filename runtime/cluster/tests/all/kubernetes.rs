//! The Kubernetes backend against an in-process fake API server (`cairn_kube_fake`), and,
//! when asked for, against a real cluster.

use std::time::Duration;

use cairn_cluster::{
    Cluster, Error, ExecOutput, ExecRequest, KubeCluster, Stdin, Stdout, WorkloadKind, WorkloadRef,
};
use cairn_kube_fake::{FakeApi, workload};
use serde_json::json;

use super::{TEST_TIMEOUT, request};

fn db() -> WorkloadRef {
    WorkloadRef::new("shop", "db")
}

async fn shop() -> (FakeApi, KubeCluster) {
    let api = FakeApi::shop().await;
    let cluster = KubeCluster::new(api.client());
    (api, cluster)
}

#[tokio::test]
async fn workloads_their_pods_and_claims_come_from_the_api() {
    let (api, cluster) = shop().await;
    assert_eq!(cluster.backend(), "kubernetes");
    assert_eq!(
        cluster.namespaces().await.expect("namespaces"),
        ["kube-system", "shop"]
    );
    let workloads = cluster.workloads("shop").await.expect("workloads");
    let names: Vec<&str> = workloads
        .iter()
        .map(|w| w.reference.name.as_str())
        .collect();
    assert_eq!(names, ["db", "web"]);

    let db = &workloads[0];
    assert_eq!(db.kind, WorkloadKind::StatefulSet);
    assert_eq!((db.replicas, db.ready_replicas), (2, 2));
    let pods: Vec<&str> = db.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pods, ["db-0", "db-1"]);
    assert!(
        db.pods
            .iter()
            .all(|p| p.ready && p.containers == ["postgres"])
    );
    let claims: Vec<&str> = db.volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(claims, ["data-db-0", "data-db-1"]);

    let web = &workloads[1];
    assert_eq!(web.kind, WorkloadKind::Deployment);
    assert_eq!(web.pods[0].containers, ["web", "sidecar"]);
    assert_eq!(web.volumes[0].name, "web-data");

    // A selector with expressions finds the pods it means, and only those.
    let mut queue = workload(
        "queue",
        2,
        json!({ "containers": [{ "name": "queue", "image": "queue" }] }),
    );
    queue["spec"]["selector"]["matchExpressions"] = json!([
        { "key": "tier", "operator": "In", "values": ["main", "spare"] },
        { "key": "canary", "operator": "DoesNotExist" },
    ]);
    queue["spec"]["template"]["metadata"]["labels"]["tier"] = json!("main");
    api.put("/apis/apps/v1/namespaces/shop/deployments", queue);
    let canary = |tier: &str, canary: bool| {
        let mut labels = json!({ "app": "queue", "tier": tier });
        if canary {
            labels["canary"] = json!("yes");
        }
        json!({
            "metadata": { "name": format!("queue-{tier}-{canary}"), "labels": labels },
            "spec": { "containers": [{ "name": "queue", "image": "queue" }] },
        })
    };
    api.put("/api/v1/namespaces/shop/pods", canary("main", true));
    api.put("/api/v1/namespaces/shop/pods", canary("other", false));
    // Pods the selector matches but another controller owns: another Deployment's (whose
    // selector overlaps) and a Job's. One of the queue's own ReplicaSets is counted.
    let owned = |name: &str, kind: &str, owner: &str, hash: &str| {
        json!({
            "metadata": {
                "name": name,
                "labels": { "app": "queue", "tier": "main", "pod-template-hash": hash },
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "u",
                    "controller": true,
                }],
            },
            "spec": { "containers": [{ "name": "queue", "image": "queue" }] },
        })
    };
    for pod in [
        owned("queue-canary-x", "ReplicaSet", "queue-canary-5d8f", "5d8f"),
        owned("queue-job-x", "Job", "queue-migrate", "none"),
        owned("queue-7c9b-x", "ReplicaSet", "queue-7c9b", "7c9b"),
    ] {
        api.put("/api/v1/namespaces/shop/pods", pod);
    }
    let queue = cluster
        .workload(&WorkloadRef::new("shop", "queue"))
        .await
        .expect("workload");
    let pods: Vec<&str> = queue.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pods, ["queue-0", "queue-1", "queue-7c9b-x"]);

    match cluster.workload(&WorkloadRef::new("shop", "cache")).await {
        Err(Error::NotFound { kind, hint, .. }) => {
            assert_eq!(kind, "workload");
            assert!(hint.contains("db, queue, web"), "{hint}");
        }
        other => panic!("expected not found, got {other:?}"),
    }
    match cluster.workloads("nowhere").await {
        Err(Error::NotFound { kind, hint, .. }) => {
            assert_eq!(kind, "namespace");
            assert!(hint.contains("kube-system, shop"), "{hint}");
        }
        other => panic!("expected not found, got {other:?}"),
    }
}

/// An API server that cannot close an exec's stdin (v4 only, Kubernetes 1.29) runs commands
/// without input and refuses, before sending any, one with input: its end would lose the
/// command's exit status, and a restore that committed would be reported failed.
#[tokio::test]
async fn exec_without_stream_close_refuses_stdin_and_runs_the_rest() {
    let (api, cluster) = shop().await;
    api.exec_v4_only();
    let out = cluster
        .exec(&db(), request(&["sh", "-c", "echo hi; exit 2"]))
        .await
        .expect("exec runs");
    assert_eq!((out.exit_code, out.stdout.as_slice()), (2, &b"hi\n"[..]));
    let mut cat = request(&["cat"]);
    cat.stdin = Stdin::Bytes(b"a restore".to_vec());
    let e = cluster.exec(&db(), cat).await.expect_err("refused");
    assert!(e.to_string().contains("1.30 or later"), "{e}");

    // Refused before it starts: started, it would see its stdin end at once and run on, its
    // destructive half done and its data half reading nothing.
    let dir = tempfile::tempdir().expect("a directory");
    let wiped = dir.path().join("wiped");
    let script = format!("touch {}; cat > /dev/null", wiped.display());
    let mut restore = request(&["sh", "-c", &script]);
    restore.stdin = Stdin::Bytes(b"a restore".to_vec());
    let e = cluster.exec(&db(), restore).await.expect_err("refused");
    assert!(e.to_string().contains("nothing was started"), "{e}");
    assert!(!wiped.exists(), "the refused command ran");

    // A pipeline without stdin of its own needs it closed between its programs: refused
    // before its first program runs, and told so.
    let dumped = dir.path().join("dumped");
    let script = format!("touch {}; echo data", dumped.display());
    let mut pipeline = request(&["sh", "-c", &script]);
    pipeline.then = vec![vec!["cat".to_owned()]];
    let e = cluster.exec(&db(), pipeline).await.expect_err("refused");
    let message = e.to_string();
    assert!(
        message.contains("pipeline") && !message.contains("reads stdin"),
        "{message}"
    );
    assert!(!dumped.exists(), "the pipeline's first program ran");
}

#[tokio::test]
async fn exec_captures_output_feeds_stdin_and_reports_the_exit_code() {
    let (_api, cluster) = shop().await;
    let mut cat = request(&["cat"]);
    cat.stdin = Stdin::Bytes(b"hello from cairn".to_vec());
    let out = cluster.exec(&db(), cat).await.expect("exec runs");
    assert_eq!(out.pod, "db-0");
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout, b"hello from cairn");
    assert_eq!((out.stdin_bytes, out.stdout_bytes), (16, 16));

    let mut failing = request(&["sh", "-c", "echo oops >&2; exit 3"]);
    failing.pod = Some("db-1".to_owned());
    let out = cluster.exec(&db(), failing).await.expect("exec runs");
    assert_eq!((out.pod.as_str(), out.exit_code), ("db-1", 3));
    assert_eq!(out.stderr, b"oops\n");

    let mut env = request(&["sh", "-c", "printf %s \"$GREETING\""]);
    env.env = vec![("GREETING".to_owned(), "hi there".to_owned())];
    assert_eq!(
        cluster.exec(&db(), env).await.expect("exec runs").stdout,
        b"hi there"
    );

    let mut limited = request(&["head", "-c", "100000", "/dev/zero"]);
    limited.output_limit = 10;
    let out = cluster.exec(&db(), limited).await.expect("exec runs");
    assert_eq!(out.stdout.len(), 10);
    assert!(out.stdout_truncated);
    assert_eq!(out.stdout_bytes, 100_000);
}

#[tokio::test]
async fn a_pipeline_runs_one_exec_per_program_joined_through_cairn() {
    let (_api, cluster) = shop().await;
    let mut pipeline = request(&["printf", "b\\na\\nc\\n"]);
    pipeline.then = vec![
        vec!["sort".to_owned()],
        vec!["tr".to_owned(), "a-z".to_owned(), "A-Z".to_owned()],
    ];
    let out = cluster.exec(&db(), pipeline).await.expect("exec runs");
    assert_eq!(
        (out.exit_code, out.stdout.as_slice()),
        (0, &b"A\nB\nC\n"[..])
    );

    // As `set -o pipefail`: the last non-zero status.
    let mut failing = request(&["sh", "-c", "echo x; exit 4"]);
    failing.then = vec![vec!["cat".to_owned()]];
    let out = cluster.exec(&db(), failing).await.expect("exec runs");
    assert_eq!((out.exit_code, out.stdout.as_slice()), (4, &b"x\n"[..]));

    // A reader that stops early lets the writer finish.
    let mut early = request(&["head", "-c", "3000000", "/dev/zero"]);
    early.then = vec![vec!["head".to_owned(), "-c".to_owned(), "5".to_owned()]];
    let out = cluster.exec(&db(), early).await.expect("exec runs");
    assert_eq!((out.exit_code, out.stdout.len()), (0, 5));
}

#[tokio::test]
async fn streams_go_through_exec_whole() {
    let (_api, cluster) = shop().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let sink = tokio::fs::File::create(dir.path().join("out"))
        .await
        .expect("sink");
    let mut copy = request(&["cat"]);
    copy.stdin = Stdin::Stream(Box::new(std::io::Cursor::new(data.clone())));
    copy.stdout = Stdout::Stream(Box::new(sink));
    let out = cluster.exec(&db(), copy).await.expect("exec runs");
    assert_eq!(out.exit_code, 0);
    assert_eq!((out.stdin_bytes, out.stdout_bytes), (4 << 20, 4 << 20));
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read(dir.path().join("out")).expect("streamed"),
        data
    );
}

#[tokio::test]
async fn exec_refusals_name_the_cause() {
    let (_api, cluster) = shop().await;
    let mut wrong = request(&["true"]);
    wrong.container = Some("mysql".to_owned());
    match cluster.exec(&db(), wrong).await {
        Err(Error::NotFound { kind, hint, .. }) => {
            assert_eq!(kind, "container");
            assert!(hint.contains("postgres"), "{hint}");
        }
        other => panic!("expected not found, got {other:?}"),
    }
    let mut pod = request(&["true"]);
    pod.pod = Some("db-7".to_owned());
    assert!(matches!(
        cluster.exec(&db(), pod).await,
        Err(Error::NotFound { kind: "pod", .. })
    ));

    let mut stopped = request(&["true"]);
    stopped.stopped = true;
    assert!(matches!(
        cluster.exec(&db(), stopped).await,
        Err(Error::Invalid(_))
    ));

    let mut reserved = request(&["true"]);
    reserved.env = vec![("LD_PRELOAD".to_owned(), "x".to_owned())];
    assert!(matches!(
        cluster.exec(&db(), reserved).await,
        Err(Error::Denied(_))
    ));
    // A program named like an assignment would reach env(1) as one more variable.
    let mut smuggled = request(&["LD_PRELOAD=/tmp/x.so", "sh", "-c", "true"]);
    smuggled.env = vec![("GREETING".to_owned(), "hi".to_owned())];
    match cluster.exec(&db(), smuggled).await {
        Err(e @ Error::Invalid(_)) => assert!(e.to_string().contains("contains `=`"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    match cluster
        .exec(&db(), request(&["no-such-program-here"]))
        .await
    {
        Err(e @ Error::Failed { .. }) => {
            assert!(e.to_string().contains("not found"), "{e}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }

    let mut slow = request(&["sleep", "5"]);
    slow.timeout = Duration::from_millis(300);
    assert!(matches!(
        cluster.exec(&db(), slow).await,
        Err(Error::TimedOut { .. })
    ));

    cluster.scale(&db(), 0).await.expect("scale");
    match cluster.exec(&db(), request(&["true"])).await {
        Err(Error::NotFound { kind, hint, .. }) => {
            assert_eq!(kind, "pod");
            assert!(hint.contains("0 of 0 replicas ready"), "{hint}");
        }
        other => panic!("expected not found, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stopped_workload_runs_commands_in_a_pod_of_cairns_own_with_its_volumes() {
    let (api, cluster) = shop().await;
    // Fields of a Kubernetes newer than Cairn's API types are kept (a security setting an
    // admission policy requires, say).
    let sets = "/apis/apps/v1/namespaces/shop/statefulsets";
    let mut set = api.get(sets, "db").expect("the set");
    set["spec"]["template"]["spec"]["podFutureField"] = json!({ "on": true });
    set["spec"]["template"]["spec"]["containers"][0]["containerFutureField"] = json!("kept");
    api.remove(sets, "db");
    api.put(sets, set);
    cluster.scale(&db(), 0).await.expect("scale");
    let mut stopped = request(&["sh", "-c", "cat; echo restored"]);
    stopped.stopped = true;
    stopped.stdin = Stdin::Bytes(b"data ".to_vec());
    let out = cluster.exec(&db(), stopped).await.expect("exec runs");
    assert_eq!(out.pod, "db-stopped");
    assert_eq!(
        (out.exit_code, out.stdout.as_slice()),
        (0, &b"data restored\n"[..])
    );

    let pods = "/api/v1/namespaces/shop/pods";
    assert!(
        api.get(pods, "db-stopped").is_none(),
        "the pod is deleted after"
    );
    let created = api.created(pods);
    let pod = created
        .iter()
        .find(|p| p["metadata"]["name"] == "db-stopped")
        .expect("the pod was made");
    // Not the workload's labels, or its selector would count the pod as a replica.
    assert!(pod["metadata"]["labels"].get("app").is_none(), "{pod}");
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["containers"].as_array().map(Vec::len), Some(1));
    assert_eq!(spec["containers"][0]["command"][0], "sleep");
    assert_eq!(spec["podFutureField"], json!({ "on": true }));
    assert_eq!(spec["containers"][0]["containerFutureField"], "kept");
    assert_eq!(
        spec["volumes"][0],
        json!({ "name": "data", "persistentVolumeClaim": { "claimName": "data-db-0" } })
    );
    // The deadline counts from before the image is pulled; `sleep` from the container's start.
    let sleep: i64 = spec["containers"][0]["command"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("sleep's seconds");
    let deadline = spec["activeDeadlineSeconds"].as_i64().expect("a deadline");
    assert!(
        deadline > sleep,
        "the time to start is the command's too: {deadline} s for sleep {sleep}"
    );

    // An exec dropped before it ends (the engine's deadline for the call) still deletes its
    // pod, which would otherwise hold the workload's volumes.
    let mut slow = request(&["sleep", "30"]);
    slow.stopped = true;
    let dropped = tokio::time::timeout(Duration::from_millis(700), cluster.exec(&db(), slow)).await;
    assert!(dropped.is_err(), "the exec was still running");
    let gone = async {
        while api.get(pods, "db-stopped").is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(TEST_TIMEOUT, gone)
        .await
        .expect("the dropped exec's pod is deleted");

    // A pod that cannot start says why, and is deleted all the same.
    api.put(
        "/apis/apps/v1/namespaces/shop/statefulsets",
        workload(
            "broken",
            0,
            json!({ "containers": [{ "name": "main", "image": "missing" }] }),
        ),
    );
    let mut broken = request(&["true"]);
    broken.stopped = true;
    match cluster
        .exec(&WorkloadRef::new("shop", "broken"), broken)
        .await
    {
        Err(e @ Error::Failed { .. }) => {
            let message = e.to_string();
            assert!(message.contains("ErrImagePull"), "{message}");
        }
        other => panic!("expected a failure to start, got {other:?}"),
    }
    assert!(api.get(pods, "broken-stopped").is_none());

    // A pod of the name Cairn uses that is not Cairn's is left alone; one a run left is
    // replaced.
    let theirs = json!({
        "metadata": { "name": "db-stopped", "namespace": "shop", "labels": { "app": "debug" } },
        "spec": { "containers": [{ "name": "debug", "image": "busybox" }] },
    });
    api.put(pods, theirs.clone());
    let mut blocked = request(&["true"]);
    blocked.stopped = true;
    match cluster.exec(&db(), blocked).await {
        Err(Error::Invalid(message)) => {
            assert!(message.contains("is not one Cairn made"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let left = api.get(pods, "db-stopped").expect("left alone");
    assert_eq!(left["metadata"]["labels"], theirs["metadata"]["labels"]);
    api.remove(pods, "db-stopped");
    let mut leftover = pod.clone();
    leftover["spec"]["containers"][0]["command"] = json!(["sleep", "3600"]);
    api.put(pods, leftover);
    let mut again = request(&["echo", "again"]);
    again.stopped = true;
    let out = cluster
        .exec(&db(), again)
        .await
        .expect("a leftover is replaced");
    assert_eq!(out.stdout, b"again\n");

    let mut named = request(&["true"]);
    named.stopped = true;
    named.pod = Some("db-0".to_owned());
    assert!(matches!(
        cluster.exec(&db(), named).await,
        Err(Error::Invalid(_))
    ));
    let mut wrong = request(&["true"]);
    wrong.stopped = true;
    wrong.container = Some("mysql".to_owned());
    assert!(matches!(
        cluster.exec(&db(), wrong).await,
        Err(Error::NotFound {
            kind: "container",
            ..
        })
    ));
}

#[tokio::test]
async fn scaling_returns_the_previous_count_and_waits_for_the_pods() {
    let (api, cluster) = shop().await;
    // A scale-down returns once the pods it removes have stopped, not when the count changed.
    let started = std::time::Instant::now();
    assert_eq!(cluster.scale(&db(), 0).await.expect("scale"), 2);
    assert!(started.elapsed() >= cairn_kube_fake::POD_SHUTDOWN);
    assert!(
        cluster
            .workload(&db())
            .await
            .expect("workload")
            .pods
            .is_empty()
    );
    let w = cluster
        .wait_ready(&db(), TEST_TIMEOUT)
        .await
        .expect("ready");
    assert_eq!((w.replicas, w.pods.len()), (0, 0));
    assert_eq!(cluster.scale(&db(), 1).await.expect("scale"), 0);
    let w = cluster
        .wait_ready(&db(), TEST_TIMEOUT)
        .await
        .expect("ready");
    assert_eq!((w.replicas, w.ready_replicas, w.pods.len()), (1, 1, 1));
    let web = WorkloadRef::new("shop", "web");
    assert_eq!(cluster.scale(&web, 3).await.expect("scale"), 1);
    assert_eq!(
        cluster.workload(&web).await.expect("workload").pods.len(),
        3
    );

    // A pod that ended (evicted, or its node shut down) stays listed as Failed: no replica.
    api.put(
        "/api/v1/namespaces/shop/pods",
        json!({ "metadata": { "name": "web-evicted", "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "web" }] },
                "status": { "phase": "Failed", "reason": "Evicted" } }),
    );
    let w = cluster.wait_ready(&web, TEST_TIMEOUT).await.expect("ready");
    assert!(w.pods.iter().all(|p| p.name != "web-evicted"), "{w:?}");

    // Scaled to zero, the workload keeps the count it had: should Cairn stop before scaling
    // it back, the next scale to zero answers that count, not zero, and the run that makes it
    // scales the workload back up.
    let deployments = "/apis/apps/v1/namespaces/shop/deployments";
    let mark = |api: &FakeApi| {
        api.get(deployments, "web").expect("web")["metadata"]["annotations"]
            ["cairn.dev/scaled-from"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(cluster.scale(&web, 0).await.expect("scale"), 3);
    assert!(
        mark(&api).is_some_and(|m| m.starts_with("3@")),
        "{:?}",
        mark(&api)
    );
    assert_eq!(
        cluster.scale(&web, 0).await.expect("again"),
        3,
        "the count it had"
    );
    assert_eq!(cluster.scale(&web, 3).await.expect("back"), 0);
    assert_eq!(mark(&api), None, "cleared once scaled back");
    // Changed by someone else while at zero (a new spec): the mark no longer counts.
    assert_eq!(cluster.scale(&web, 0).await.expect("scale"), 3);
    let patch = json!({ "spec": { "template": { "metadata": { "labels": { "v": "2" } } } } });
    kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(api.client(), "shop")
        .patch("web", &Default::default(), &kube::api::Patch::Merge(patch))
        .await
        .expect("a new spec");
    assert_eq!(cluster.scale(&web, 0).await.expect("scale"), 0);
    cluster.scale(&web, 1).await.expect("up");

    // A StatefulSet's mark counts as well.
    assert_eq!(cluster.scale(&db(), 0).await.expect("scale"), 1);
    assert_eq!(
        cluster.scale(&db(), 0).await.expect("again"),
        1,
        "the count it had"
    );
    assert_eq!(cluster.scale(&db(), 1).await.expect("back"), 0);

    // A StatefulSet whose claims go with the pods a scale-down removes is not scaled down.
    let sets = "/apis/apps/v1/namespaces/shop/statefulsets";
    let mut set = api.remove(sets, "db").expect("db");
    set["spec"]["persistentVolumeClaimRetentionPolicy"] =
        json!({ "whenDeleted": "Retain", "whenScaled": "Delete" });
    api.put(sets, set);
    match cluster.scale(&db(), 0).await {
        Err(e @ Error::Denied(_)) => assert!(e.to_string().contains("whenScaled: Delete"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(cluster.workload(&db()).await.expect("db").replicas, 1);
    assert_eq!(cluster.scale(&db(), 2).await.expect("scaling up"), 1);
}

/// A claim that is gone (deleted, or removed with its StatefulSet) is made again as it was when
/// snapshotted: a block volume of another class and size than the defaults would not provision.
#[tokio::test]
async fn a_claim_that_is_gone_is_made_again_as_it_was() {
    let (api, cluster) = shop().await;
    let claims = "/api/v1/namespaces/shop/persistentvolumeclaims";
    let mut claim = api.get(claims, "data-db-0").expect("the claim");
    claim["spec"]["storageClassName"] = json!("raw-disks");
    claim["spec"]["volumeMode"] = json!("Block");
    claim["spec"]["accessModes"] = json!(["ReadWriteOncePod"]);
    claim["spec"]["resources"]["requests"]["storage"] = json!("5Gi");
    api.remove(claims, "data-db-0");
    api.put(claims, claim);
    let snapshot = cluster
        .snapshot(&db(), "data-db-0")
        .await
        .expect("snapshot");
    cluster.scale(&db(), 0).await.expect("scale down");
    api.remove(claims, "data-db-0");
    // What a CSI driver may leave out: the size the snapshot restores to.
    let snapshots = "/apis/snapshot.storage.k8s.io/v1/namespaces/shop/volumesnapshots";
    let name = snapshot.id.split_once('/').expect("NAMESPACE/NAME").1;
    let mut object = api.get(snapshots, name).expect("the snapshot");
    object["status"]
        .as_object_mut()
        .expect("a status")
        .remove("restoreSize");
    api.remove(snapshots, name);
    api.put(snapshots, object.clone());

    cluster
        .restore_snapshot(&snapshot.id)
        .await
        .expect("restore");
    let made = api.get(claims, "data-db-0").expect("the claim made again");
    assert_eq!(made["spec"]["storageClassName"], "raw-disks");
    assert_eq!(made["spec"]["volumeMode"], "Block");
    assert_eq!(made["spec"]["accessModes"], json!(["ReadWriteOncePod"]));
    assert_eq!(made["spec"]["resources"]["requests"]["storage"], "5Gi");

    // A snapshot that records nothing of its claim and reports no size: refused, and the
    // claim there stays.
    object["metadata"]["annotations"]
        .as_object_mut()
        .expect("annotations")
        .remove("cairn.dev/claim");
    api.remove(snapshots, name);
    api.put(snapshots, object);
    api.remove(claims, "data-db-0");
    match cluster.restore_snapshot(&snapshot.id).await {
        Err(e @ Error::Invalid(_)) => {
            assert!(e.to_string().contains("reports no restoreSize"), "{e}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(api.get(claims, "data-db-0").is_none());
}

/// A claim made from a snapshot is waited for until it is bound when its class provisions at
/// once, so a failure to provision fails the restore; one whose class waits for its first
/// consumer is not (the workload is at zero replicas: nothing would consume it).
#[tokio::test]
async fn a_restored_claim_is_waited_for_until_bound_when_its_class_binds_at_once() {
    let (api, cluster) = shop().await;
    let classes = "/apis/storage.k8s.io/v1/storageclasses";
    let class = |mode: &str| json!({ "metadata": { "name": "fast" }, "volumeBindingMode": mode });
    api.put(classes, class("Immediate"));
    let snapshot = cluster
        .snapshot(&db(), "data-db-0")
        .await
        .expect("snapshot");
    cluster.scale(&db(), 0).await.expect("scale down");

    api.claims_pending();
    let started = std::time::Instant::now();
    let (restored, ()) = tokio::join!(cluster.restore_snapshot(&snapshot.id), async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        api.bind_claims();
    });
    restored.expect("restore");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "returned before the claim was bound"
    );

    // A claim that loses its volume while provisioning fails the restore, naming it.
    let claims = "/api/v1/namespaces/shop/persistentvolumeclaims";
    api.claims_pending();
    let (restored, ()) = tokio::join!(cluster.restore_snapshot(&snapshot.id), async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut claim = api.get(claims, "data-db-0").expect("the new claim");
        claim["status"]["phase"] = json!("Lost");
        api.remove(claims, "data-db-0");
        api.put(claims, claim);
    });
    match restored {
        Err(e) => assert!(
            e.to_string().contains("data-db-0") && e.to_string().contains("lost its volume"),
            "{e}"
        ),
        other => panic!("expected a failure, got {other:?}"),
    }

    // A class that binds on its first consumer: the restore returns with the claim Pending.
    api.remove(classes, "fast");
    api.put(classes, class("WaitForFirstConsumer"));
    api.remove(claims, "data-db-0");
    tokio::time::timeout(TEST_TIMEOUT, cluster.restore_snapshot(&snapshot.id))
        .await
        .expect("not waited for")
        .expect("restore");
    let claim = api.get(claims, "data-db-0").expect("the new claim");
    assert_eq!(claim["status"]["phase"], "Pending");
}

/// The volume of a claim a restore replaces outlives the old claim (reclaim policy Retain)
/// until the new one is bound, then gets its policy back; a restore that fails leaves it kept.
#[tokio::test]
async fn a_replaced_claims_volume_is_kept_until_the_new_claim_is_bound() {
    let (api, cluster) = shop().await;
    let classes = "/apis/storage.k8s.io/v1/storageclasses";
    api.put(
        classes,
        json!({ "metadata": { "name": "fast" }, "volumeBindingMode": "Immediate" }),
    );
    let volumes = "/api/v1/persistentvolumes";
    let claims = "/api/v1/namespaces/shop/persistentvolumeclaims";
    let bind_to_volume = || {
        api.remove(volumes, "pv-data");
        let mut claim = api.get(claims, "data-db-0").expect("the claim");
        claim["spec"]["volumeName"] = json!("pv-data");
        api.remove(claims, "data-db-0");
        api.put(claims, claim);
        let uid = api.get(claims, "data-db-0").expect("the claim")["metadata"]["uid"].clone();
        api.put(
            volumes,
            json!({ "metadata": { "name": "pv-data" },
                    "spec": { "persistentVolumeReclaimPolicy": "Delete",
                              "claimRef": { "namespace": "shop", "name": "data-db-0",
                                            "uid": uid } } }),
        );
    };
    bind_to_volume();
    let snapshot = cluster
        .snapshot(&db(), "data-db-0")
        .await
        .expect("snapshot");
    cluster.scale(&db(), 0).await.expect("scale down");

    // The new claim loses its volume while provisioning: the old data is still there.
    api.claims_pending();
    let (restored, ()) = tokio::join!(cluster.restore_snapshot(&snapshot.id), async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut claim = api.get(claims, "data-db-0").expect("the new claim");
        claim["status"]["phase"] = json!("Lost");
        api.remove(claims, "data-db-0");
        api.put(claims, claim);
    });
    assert!(restored.is_err(), "{restored:?}");
    let kept = api.get(volumes, "pv-data").expect("the old volume");
    assert_eq!(kept["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(
        kept["metadata"]["annotations"]["cairn.dev/replaced-claim"],
        "shop/data-db-0"
    );

    // Restored and bound: the volume is given back its policy (the cluster then reclaims it).
    bind_to_volume();
    api.claims_pending();
    let (restored, ()) = tokio::join!(cluster.restore_snapshot(&snapshot.id), async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        api.bind_claims();
    });
    restored.expect("restore");
    let released = api.get(volumes, "pv-data").expect("the old volume");
    assert_eq!(released["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert!(
        released["metadata"]["annotations"]
            .get("cairn.dev/replaced-claim")
            .is_none(),
        "{released}"
    );
}

/// A claim names any volume it likes in `volumeName`: a restore changes only a volume bound
/// back to that claim, never another namespace's on the claim's word (Cairn may patch every
/// volume of the cluster).
#[tokio::test]
async fn a_restore_leaves_alone_a_volume_its_claim_merely_names() {
    let (api, cluster) = shop().await;
    let volumes = "/api/v1/persistentvolumes";
    let claims = "/api/v1/namespaces/shop/persistentvolumeclaims";
    let foreign = json!({ "metadata": { "name": "pv-bank" },
                          "spec": { "persistentVolumeReclaimPolicy": "Delete",
                                    "claimRef": { "namespace": "bank", "name": "ledger",
                                                  "uid": "uid-ledger" } } });
    api.put(volumes, foreign.clone());
    let mut claim = api.remove(claims, "data-db-0").expect("the claim");
    claim["spec"]["volumeName"] = json!("pv-bank");
    api.put(claims, claim);
    let snapshot = cluster
        .snapshot(&db(), "data-db-0")
        .await
        .expect("snapshot");
    cluster.scale(&db(), 0).await.expect("scale down");
    cluster
        .restore_snapshot(&snapshot.id)
        .await
        .expect("restore");
    let after = api.get(volumes, "pv-bank").expect("the volume");
    assert_eq!(after["spec"], foreign["spec"]);
    assert!(after["metadata"].get("annotations").is_none(), "{after}");
}

/// Pods the selector matches that no controller owns (`kubectl run pg-client -l app=db`, a
/// debug copy) are not the workload's replicas: readiness settles without them, a scale-down
/// does not wait for them, and no command runs in them; refusals name them.
#[tokio::test]
async fn pods_no_controller_owns_are_not_replicas() {
    let (api, cluster) = shop().await;
    api.put(
        "/api/v1/namespaces/shop/pods",
        json!({ "metadata": { "name": "pg-client", "labels": { "app": "db" } },
                "spec": { "containers": [{ "name": "postgres", "image": "postgres" }] } }),
    );
    let w = tokio::time::timeout(
        Duration::from_secs(5),
        cluster.wait_ready(&db(), TEST_TIMEOUT),
    )
    .await
    .expect("settled without the orphan")
    .expect("ready");
    let pods: Vec<&str> = w.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pods, ["db-0", "db-1"]);
    let mut named = request(&["true"]);
    named.pod = Some("pg-client".to_owned());
    match cluster.exec(&db(), named).await {
        Err(Error::Invalid(message)) => {
            assert!(message.contains("no controller owns it"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let started = std::time::Instant::now();
    assert_eq!(cluster.scale(&db(), 0).await.expect("scale"), 2);
    assert!(started.elapsed() < Duration::from_secs(30));
    cluster
        .snapshot(&db(), "data-db-0")
        .await
        .expect("a snapshot of the stopped set");
    match cluster.exec(&db(), request(&["true"])).await {
        Err(e @ Error::NotFound { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("pg-client") && message.contains("no controller owns"),
                "{message}"
            );
        }
        other => panic!("expected no pod to run in, got {other:?}"),
    }
}

/// The shop with StatefulSet `db` scaled to zero, for commands for a stopped workload.
async fn stopped_shop() -> (FakeApi, KubeCluster) {
    let (api, cluster) = shop().await;
    cluster.scale(&db(), 0).await.expect("scale");
    (api, cluster)
}

/// A request for stopped `db` with this timeout.
fn stopped(argv: &[&str], timeout: Duration) -> ExecRequest {
    ExecRequest {
        stopped: true,
        timeout,
        ..request(argv)
    }
}

/// The exec of `request` in `db` (failing the test should it hang), and how long it took.
async fn timed_exec(
    cluster: &KubeCluster,
    request: ExecRequest,
) -> (Result<ExecOutput, Error>, Duration) {
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(TEST_TIMEOUT, cluster.exec(&db(), request))
        .await
        .expect("the exec returned");
    (result, started.elapsed())
}

/// A stopped exec waits for its pod to go (containers stopping, volumes unmounted) only with
/// what is left of its timeout: a command that ends just within it is not turned into a
/// timeout by the cleanup. A stopped exec that follows waits for that pod within its own
/// timeout, and says so when it runs out.
#[tokio::test]
async fn a_stopped_exec_waits_for_its_pod_to_go_only_within_its_timeout() {
    let (api, cluster) = stopped_shop().await;
    api.pod_deletion_takes(Duration::from_secs(20));
    let quick = stopped(&["echo", "done"], Duration::from_secs(5));
    let (out, took) = timed_exec(&cluster, quick).await;
    let out = out.expect("exec runs");
    assert_eq!((out.exit_code, out.stdout.as_slice()), (0, &b"done\n"[..]));
    assert!(took < Duration::from_millis(5500), "took {took:?}");
    let pod = api
        .get("/api/v1/namespaces/shop/pods", "db-stopped")
        .expect("still stopping");
    assert!(!pod["metadata"]["deletionTimestamp"].is_null(), "{pod}");

    let next = stopped(&["echo", "again"], Duration::from_secs(2));
    let (e, took) = timed_exec(&cluster, next).await;
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    match e {
        Err(Error::TimedOut { what, .. }) => {
            assert!(what.contains("left by an earlier command"), "{what}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// A restore right after a stopped exec (a restore command, then the claim replaced) is not
/// refused by the exec's pod: the exec returns once that pod no longer mounts the claim.
#[tokio::test]
async fn a_restore_right_after_a_stopped_exec_is_not_refused_by_its_pod() {
    let (api, cluster) = shop().await;
    let snapshot = cluster
        .snapshot(&db(), "data-db-0")
        .await
        .expect("snapshot");
    cluster.scale(&db(), 0).await.expect("scaled down");
    api.pod_deletion_takes(Duration::from_secs(1));
    let out = timed_exec(&cluster, stopped(&["true"], Duration::from_secs(10)))
        .await
        .0
        .expect("exec runs");
    assert_eq!(out.exit_code, 0);
    tokio::time::timeout(TEST_TIMEOUT, cluster.restore_snapshot(&snapshot.id))
        .await
        .expect("the restore returned")
        .expect("restored");
}

/// A pod no controller owns that mounts a stopped workload's claim (made by hand, a debug
/// copy) is no replica, but the application is not stopped while it runs: a command for the
/// stopped workload and a snapshot of it are refused, naming it.
#[tokio::test]
async fn a_pod_no_controller_owns_mounting_a_claim_keeps_a_workload_from_counting_as_stopped() {
    let (api, cluster) = stopped_shop().await;
    api.put(
        "/api/v1/namespaces/shop/pods",
        json!({ "metadata": { "name": "db-copy", "labels": { "app": "db" } },
                "spec": { "containers": [{ "name": "postgres", "image": "postgres" }],
                          "volumes": [{ "name": "data",
                                        "persistentVolumeClaim": { "claimName": "data-db-0" } }] },
                "status": { "phase": "Running" } }),
    );
    match timed_exec(&cluster, stopped(&["true"], Duration::from_secs(10)))
        .await
        .0
    {
        Err(Error::Invalid(message)) => assert!(message.contains("db-copy"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        api.get("/api/v1/namespaces/shop/pods", "db-stopped")
            .is_none(),
        "a pod was made beside it"
    );
    match cluster.snapshot(&db(), "data-db-1").await {
        Err(Error::Invalid(message)) => {
            assert!(
                message.contains("db-copy") && message.contains("stopped"),
                "{message}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// An exec the API server refuses (the pod's container stopped between Cairn's look and the
/// exec) says why, from the container's state: kube keeps only the refusal's status code.
#[tokio::test]
async fn an_exec_refused_says_what_the_container_is_doing() {
    let (api, cluster) = shop().await;
    let pods = "/api/v1/namespaces/shop/pods";
    let mut pod = api.remove(pods, "db-0").expect("db-0");
    pod["status"]["containerStatuses"] = json!([{
        "name": "postgres", "ready": false,
        "state": { "waiting": { "reason": "CrashLoopBackOff" } },
    }]);
    api.put(pods, pod);
    let mut named = request(&["true"]);
    named.pod = Some("db-0".to_owned());
    let e = cluster.exec(&db(), named).await.expect_err("refused");
    let message = e.to_string();
    assert!(
        message.contains("not running: waiting (CrashLoopBackOff)")
            && !message.contains("Status {"),
        "{message}"
    );
}

/// A source that gives some bytes, then fails (an object store error, a damaged pack).
struct Broken(bool);

impl tokio::io::AsyncRead for Broken {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("pack damaged")));
        }
        self.0 = true;
        buf.put_slice(b"INSERT 1;\n");
        std::task::Poll::Ready(Ok(()))
    }
}

/// A stopped exec whose input broke kills its command before the command's stdin ends, by
/// deleting the pod (Cairn's own): a restore that commits at the end of its input must not
/// commit the part it read.
#[tokio::test]
async fn a_stopped_exec_whose_input_broke_is_killed_before_its_input_ends() {
    let (_api, cluster) = stopped_shop().await;
    let dir = tempfile::tempdir().expect("a directory");
    let committed = dir.path().join("committed");
    let script = format!("cat > /dev/null && touch {}", committed.display());
    let mut restore = stopped(&["sh", "-c", &script], Duration::from_secs(30));
    restore.stdin = Stdin::Stream(Box::new(Broken(false)));
    let e = timed_exec(&cluster, restore)
        .await
        .0
        .expect_err("the source broke");
    assert!(e.to_string().contains("pack damaged"), "{e}");
    // A command that was not killed acts on the end of its input within moments.
    let appeared = tokio::time::timeout(Duration::from_millis(500), async {
        while !committed.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(appeared.is_err(), "the command read the end of its input");
}

/// A stopped exec's pod start and its command share the command's timeout, as the engine
/// bounds the whole call by it: a slow start leaves the command less, not the call more
/// (beyond which the engine would drop the call and the pod with the command running).
#[tokio::test]
async fn a_stopped_exec_keeps_within_its_timeout_however_slow_its_pod_starts() {
    let (api, cluster) = stopped_shop().await;
    api.pod_start_takes(Duration::from_secs(2));
    let slow = stopped(&["sleep", "30"], Duration::from_secs(4));
    let (e, took) = timed_exec(&cluster, slow).await;
    let e = e.expect_err("ran past its timeout");
    assert!(took < Duration::from_millis(5500), "took {took:?}");
    match e {
        Error::TimedOut { what, after } => {
            assert_eq!(after, Duration::from_secs(4));
            assert!(what.contains("to start"), "{what}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// A snapshot returns once it is cut (the point in time taken), while a cloud may still copy
/// it: a quiesced workload need not wait for the copy. Being ready to restore from is waited on
/// apart (a restore waits for it too).
#[tokio::test]
async fn a_snapshot_returns_once_cut_and_readiness_is_waited_on_apart() {
    let (api, cluster) = shop().await;
    api.snapshots_pending();
    let snapshot = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        cluster.snapshot(&db(), "data-db-0"),
    )
    .await
    .expect("returned once cut")
    .expect("snapshot");
    match cluster
        .snapshot_ready(&snapshot.id, std::time::Duration::from_millis(700))
        .await
    {
        Err(Error::TimedOut { what, .. }) => assert!(what.contains("ready to use"), "{what}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let ready = {
        let cluster = &cluster;
        let id = snapshot.id.clone();
        async move {
            cluster
                .snapshot_ready(&id, std::time::Duration::from_secs(10))
                .await
        }
    };
    let (ready, ()) = tokio::join!(ready, async {
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        api.ready_snapshots();
    });
    assert_eq!(ready.expect("ready").id, snapshot.id);

    // Scaled to zero, with a pod still running (its node lost): no snapshot of a stopped
    // application can be taken yet.
    cluster.scale(&db(), 0).await.expect("scaled down");
    api.put(
        "/api/v1/namespaces/shop/pods",
        json!({
            "metadata": { "name": "db-0", "namespace": "shop", "labels": { "app": "db" },
                          "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "StatefulSet",
                                                "name": "db", "uid": "u", "controller": true }] },
            "spec": { "containers": [{ "name": "postgres", "image": "postgres" }] },
        }),
    );
    match cluster.snapshot(&db(), "data-db-0").await {
        Err(Error::Invalid(message)) => {
            assert!(message.contains("db-0 still run"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_snapshot_is_taken_and_its_claim_replaced_from_it() {
    let (api, cluster) = shop().await;
    let snapshot = cluster
        .snapshot(&db(), "data-db-0")
        .await
        .expect("snapshot");
    assert!(
        snapshot.id.starts_with("shop/data-db-0-"),
        "{}",
        snapshot.id
    );
    assert_eq!(snapshot.workload, db());
    assert_eq!(
        (snapshot.volume.as_str(), snapshot.bytes),
        ("data-db-0", 1 << 30)
    );
    assert!(snapshot.created_ms > 0);
    assert_eq!(
        cluster
            .snapshot_info(&snapshot.id)
            .await
            .expect("snapshot info"),
        snapshot
    );

    match cluster.restore_snapshot(&snapshot.id).await {
        Err(Error::Invalid(message)) => assert!(message.contains("scale it to zero"), "{message}"),
        other => panic!("expected a refusal while running, got {other:?}"),
    }
    cluster.scale(&db(), 0).await.expect("restore");
    // A pod of no workload mounting the claim (a debug pod) keeps it: refused, naming it.
    let pods = "/api/v1/namespaces/shop/pods";
    api.put(
        pods,
        json!({ "metadata": { "name": "debug" },
                "spec": { "containers": [{ "name": "sh", "image": "busybox" }],
                          "volumes": [{ "name": "d",
                                        "persistentVolumeClaim": { "claimName": "data-db-0" } }] },
                "status": { "phase": "Running" } }),
    );
    match cluster.restore_snapshot(&snapshot.id).await {
        Err(e @ Error::Invalid(_)) => {
            assert!(e.to_string().contains("mounted by pod(s) debug"), "{e}")
        }
        other => panic!("expected a refusal while mounted, got {other:?}"),
    }
    api.remove(pods, "debug");
    cluster
        .restore_snapshot(&snapshot.id)
        .await
        .expect("restore");
    let claim = api
        .get(
            "/api/v1/namespaces/shop/persistentvolumeclaims",
            "data-db-0",
        )
        .expect("the new claim");
    let name = snapshot.id.split_once('/').expect("NAMESPACE/NAME").1;
    assert_eq!(
        claim["spec"]["dataSource"],
        json!({ "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": name })
    );
    assert_eq!(claim["spec"]["storageClassName"], "fast");
    assert_eq!(claim["metadata"]["labels"]["app"], "shop");
    assert!(
        claim["metadata"]["annotations"]
            .get("pv.kubernetes.io/bind-completed")
            .is_none()
    );

    cluster.delete_snapshot(&snapshot.id).await.expect("delete");
    assert!(matches!(
        cluster.snapshot_info(&snapshot.id).await,
        Err(Error::NotFound {
            kind: "snapshot",
            ..
        })
    ));
    assert!(matches!(
        cluster.delete_snapshot(&snapshot.id).await,
        Err(Error::NotFound {
            kind: "snapshot",
            ..
        })
    ));
    assert!(matches!(
        cluster.snapshot_info("no-slash").await,
        Err(Error::Invalid(_))
    ));
    // A named class is asked for; without one the cluster's default is used.
    let classed = cluster.clone().with_snapshot_class("csi-fast");
    classed
        .snapshot(&db(), "data-db-1")
        .await
        .expect("snapshot");
    let asked: Vec<_> = api
        .created("/apis/snapshot.storage.k8s.io/v1/namespaces/shop/volumesnapshots")
        .into_iter()
        .map(|s| s["spec"]["volumeSnapshotClassName"].clone())
        .collect();
    assert_eq!(asked, [json!(null), json!("csi-fast")]);

    match cluster.snapshot(&db(), "web-data").await {
        Err(Error::NotFound { kind, hint, .. }) => {
            assert_eq!(kind, "volume");
            assert!(hint.contains("data-db-0, data-db-1"), "{hint}");
        }
        other => panic!("expected not found, got {other:?}"),
    }
}

#[tokio::test]
async fn objects_are_read_by_kind_and_refusals_say_why() {
    let (api, cluster) = shop().await;
    let settings = cluster
        .get_object("shop", "ConfigMap", "settings")
        .await
        .expect("object");
    assert_eq!(settings["data"]["mode"], "fast");
    assert_eq!(
        cluster
            .list_objects("shop", "configmaps")
            .await
            .expect("objects")
            .len(),
        1
    );
    let db = cluster
        .get_object("shop", "workload", "db")
        .await
        .expect("object");
    assert_eq!(db["kind"], "statefulset");
    assert_eq!(db["containers"], json!(["postgres"]));
    assert_eq!(
        cluster
            .list_objects("shop", "workloads")
            .await
            .expect("objects")
            .len(),
        2
    );
    assert!(matches!(
        cluster.get_object("shop", "configmap", "absent").await,
        Err(Error::NotFound { .. })
    ));
    match cluster.get_object("shop", "gadget", "x").await {
        Err(Error::Invalid(message)) => {
            assert!(message.contains("configmap, service"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Secrets are not objects a blueprint reads (the `secrets` capability gives credentials).
    assert!(matches!(
        cluster.list_objects("shop", "secret").await,
        Err(Error::Invalid(_))
    ));
    api.forbid("/api/v1/namespaces/shop/services");
    match cluster.list_objects("shop", "service").await {
        Err(Error::Denied(message)) => assert!(message.contains("Role"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn names_that_are_not_kubernetes_names_never_reach_the_api() {
    let (_api, cluster) = shop().await;
    // What a proxy normalizing paths would turn into another resource, and what Kubernetes
    // itself never names anything.
    let escaping = "db/../../../api/v1/namespaces/kube-system/secrets/admin";
    fn invalid<T>(result: Result<T, Error>) -> String {
        match result {
            Err(Error::Invalid(message)) => message,
            Err(e) => panic!("expected a refusal as invalid, got {e}"),
            Ok(_) => panic!("expected a refusal as invalid, got an answer"),
        }
    }
    let message = invalid(cluster.workload(&WorkloadRef::new("shop", escaping)).await);
    assert!(
        message.contains("not a Kubernetes object name"),
        "{message}"
    );
    let message = invalid(cluster.workload(&WorkloadRef::new("..", "db")).await);
    assert!(
        message.contains("not a Kubernetes namespace name"),
        "{message}"
    );
    invalid(cluster.scale(&WorkloadRef::new("shop", "DB"), 1).await);
    invalid(cluster.workloads("shop%2f..").await);
    invalid(cluster.list_objects("../kube-system", "configmap").await);
    invalid(cluster.get_object("shop", "configmap", "..").await);
    invalid(cluster.get_object("shop", "configmap", "a%2fb").await);
    invalid(cluster.snapshot_info("../db-1").await);
    invalid(cluster.delete_snapshot("shop/..").await);
    // A long name of many parts is one Kubernetes takes.
    let long = format!("{}.{}", "a".repeat(100), "b".repeat(100));
    assert!(matches!(
        cluster.get_object("shop", "configmap", &long).await,
        Err(Error::NotFound { .. })
    ));
}

/// Against a real cluster: `CAIRN_KUBE_CONTEXT=NAME` (or `CAIRN_KUBE_CONTEXT=` for the
/// current one) and `CAIRN_KUBE_WORKLOAD=NAMESPACE/NAME` of a workload whose first container
/// has `sh`; run with `cargo test -p cairn-cluster -- --ignored kubernetes`.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set CAIRN_KUBE_CONTEXT and CAIRN_KUBE_WORKLOAD"]
async fn a_real_cluster_answers() {
    let context = std::env::var("CAIRN_KUBE_CONTEXT").expect("CAIRN_KUBE_CONTEXT");
    let workload = std::env::var("CAIRN_KUBE_WORKLOAD").expect("CAIRN_KUBE_WORKLOAD");
    let (ns, name) = workload.split_once('/').expect("NAMESPACE/NAME");
    let cluster = KubeCluster::connect(Some(context.as_str()).filter(|c| !c.is_empty()))
        .await
        .expect("succeeds");
    assert!(
        cluster
            .namespaces()
            .await
            .expect("namespaces")
            .iter()
            .any(|n| n == ns)
    );
    let workload = WorkloadRef::new(ns, name);
    let w = cluster.workload(&workload).await.expect("workload");
    assert!(w.ready_replicas > 0, "{workload} has no ready replicas");
    let mut echo = request(&["sh", "-c", "cat; echo done"]);
    echo.stdin = Stdin::Bytes(b"cairn ".to_vec());
    echo.then = vec![vec!["cat".to_owned()]];
    let out = cluster.exec(&workload, echo).await.expect("exec runs");
    assert_eq!(
        (out.exit_code, out.stdout.as_slice()),
        (0, &b"cairn done\n"[..])
    );
}

/// A sink that refuses every write, as a full disk would.
struct Refusing;

impl tokio::io::AsyncWrite for Refusing {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::Error::other("no space left")))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Output that can no longer be written (its sink failed) fails the exec at once: the exec is
/// closed, not waited on until the command ends or its timeout (a dump of 500 GB into
/// nowhere, its application quiesced all the while). The command here never ends by itself.
#[tokio::test]
async fn a_failed_output_sink_fails_the_exec_at_once() {
    let (_api, cluster) = shop().await;
    let mut dump = request(&["cat", "/dev/zero"]);
    dump.stdout = Stdout::Stream(Box::new(Refusing));
    dump.timeout = Duration::from_secs(600);
    let (e, took) = timed_exec(&cluster, dump).await;
    let e = e.expect_err("the sink fails");
    assert!(e.to_string().contains("no space left"), "{e}");
    assert!(took < Duration::from_secs(10), "waited {took:?}: {e}");
}

/// A command writing as much as it reads: its output must keep being received while its stdin
/// waits, or neither moves once the buffers between fill (kube's own exec loop hung here).
#[tokio::test]
async fn a_command_echoing_its_input_never_stalls() {
    use tokio::io::AsyncReadExt;
    let (_api, cluster) = shop().await;
    let mut echo = request(&["cat"]);
    echo.stdin = Stdin::Stream(Box::new(tokio::io::repeat(7).take(64 << 20)));
    echo.stdout = Stdout::Stream(Box::new(tokio::io::sink()));
    let out = cluster.exec(&db(), echo).await.expect("exec runs");
    assert_eq!(
        (out.exit_code, out.stdin_bytes, out.stdout_bytes),
        (0, 64 << 20, 64 << 20)
    );
}
