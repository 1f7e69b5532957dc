//! The engine's test blueprint: one action per bad case the host must survive (spin, allocate,
//! recurse, panic, flood), and well-behaved actions for the lifecycle, capability, export and
//! benchmark tests. The parameter `mode` (`ok`, `fail`, `spin`, `trap`) steers the lifecycle
//! phases.

wit_bindgen::generate!({ path: "../../../../../wit", world: "dr" });

use cairn::blueprint::types::{
    Artifact, Capability, Error, ParamKind, ParamSpec, ParamValue, WorkloadRef,
};
use cairn::blueprint::{catalog, data, exec, log, secrets, volumes, workloads};
use exports::cairn::blueprint::guest::{ActionSpec, Description, Guest, Inputs, Outputs};

struct Misbehave;

const ACTIONS: &[&str] = &[
    "hello",
    "noop",
    "log-n",
    "spin",
    "alloc",
    "recurse",
    "panic",
    "log-flood",
    "stdout-flood",
    "output-flood",
    "error-flood",
    "dup-artifact",
    "dup-value",
    "progress-flood",
    "exec",
    "exec-outside",
    "exec-other-namespace",
    "audit-flood",
    "exec-sleep",
    "run-all",
    "exec-stopped",
    "exec-pipeline",
    "secret",
    "scale",
    "snapshot",
    "export",
    "import",
    "forge",
    "catalog",
    "catalog-apply",
    "params",
    "checkpoint",
    "checkpoint-flood",
    "sleep",
    "read-file",
    "session-stdin",
    "backupPrehook",
    "backup",
    "backupPosthook",
    "restorePrehook",
    "restore",
    "restorePosthook",
];

fn spec(
    name: &str,
    kind: ParamKind,
    required: bool,
    default: Option<&str>,
    choices: &[&str],
) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        kind,
        description: format!("the {name} parameter"),
        required,
        default: default.map(Into::into),
        choices: choices.iter().map(|c| c.to_string()).collect(),
        minimum: None,
        maximum: None,
    }
}

fn text(inputs: &Inputs, name: &str) -> String {
    inputs
        .params
        .iter()
        .find_map(|(k, v)| match v {
            ParamValue::Text(t) if k == name => Some(t.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn integer(inputs: &Inputs, name: &str) -> i64 {
    inputs
        .params
        .iter()
        .find_map(|(k, v)| match v {
            ParamValue::Integer(i) if k == name => Some(*i),
            _ => None,
        })
        .unwrap_or_default()
}

fn values(pairs: &[(&str, String)]) -> Outputs {
    Outputs {
        artifacts: vec![],
        values: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

fn command(workload: Option<WorkloadRef>, argv: &[&str]) -> exec::Command {
    exec::Command {
        workload,
        pod: None,
        container: None,
        argv: argv.iter().map(|a| a.to_string()).collect(),
        then: vec![],
        env: vec![],
        stdin: None,
        timeout_ms: None,
        stopped: false,
    }
}

/// An artifact's reference keys, then `/`, then its own value keys: `kind,path/format`.
fn keys(a: &Artifact) -> String {
    let names = |v: &[(String, String)]| {
        v.iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("{}/{}", names(&a.reference), names(&a.values))
}

/// A call's error as `Debug` shows it, or `accepted`.
fn outcome<T>(result: Result<T, Error>) -> String {
    match result {
        Ok(_) => "accepted".into(),
        Err(e) => format!("{e:?}"),
    }
}

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let local = std::hint::black_box([depth; 16]);
    if local[0] == u64::MAX {
        return 0;
    }
    recurse(local[3] + 1) + local[7]
}

/// The earlier phases that completed (`true`) or stopped (`false`), comma-separated.
fn phases_that(inputs: &Inputs, completed: bool) -> String {
    let names: Vec<&str> = inputs
        .phases
        .iter()
        .filter(|p| p.completed == completed)
        .map(|p| p.action.as_str())
        .collect();
    names.join(",")
}

/// What a lifecycle phase does: say what it saw, then behave as `mode` asks (main phases only).
/// A posthook names its values `post-…`, so the run's outputs keep both phases' apart.
fn phase(action: &str, inputs: &Inputs) -> Result<Outputs, Error> {
    let mode = text(inputs, "mode");
    let seen = phases_that(inputs, true);
    let earlier: Vec<String> = inputs
        .phases
        .iter()
        .flat_map(|p| p.outputs.values.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    log::log(log::Level::Info, &format!("{action} sees [{seen}]"));
    let failure = inputs
        .failure
        .as_ref()
        .map(|f| format!("{f:?}"))
        .unwrap_or_default();
    let post = action.ends_with("Posthook");
    let key = |k: &str| {
        if post {
            format!("post-{k}")
        } else {
            k.to_string()
        }
    };
    let mut out = Outputs {
        artifacts: vec![],
        values: [
            ("phase", action.to_string()),
            ("seen", seen),
            ("stopped", phases_that(inputs, false)),
            ("earlier", earlier.join(",")),
            ("failure", failure),
        ]
        .into_iter()
        .map(|(k, v)| (key(k), v))
        .collect(),
    };
    if !inputs.point_values.is_empty() {
        let point: Vec<String> = inputs
            .point_values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.values.push((key("point"), point.join(",")));
    }
    if action == "backup" || action == "restore" {
        match mode.as_str() {
            "fail" => return Err(Error::Failed(format!("{action} failed on purpose"))),
            "spin" => loop {
                std::hint::black_box(0);
            },
            "trap" => panic!("{action} trapped on purpose"),
            "sleep" => {
                log::sleep(60_000);
                return Err(Error::Failed(format!("{action} woke before its deadline")));
            }
            "post-clash" => out.artifacts.push(Artifact {
                name: "state".into(),
                values: vec![("from".into(), action.into())],
                reference: vec![],
            }),
            // Volume snapshots taken, then the backup fails (`snapshot-fail`, the first's id
            // checkpointed) or succeeds (`snapshotted`).
            "snapshot-fail" | "snapshotted" if action == "backup" => {
                let snaps = volumes::snapshot(None, &[])?;
                if let Some(first) = snaps.first() {
                    log::checkpoint("snapshot", &first.id)?;
                }
                if mode == "snapshot-fail" {
                    return Err(Error::Failed("backup failed after its snapshot".into()));
                }
            }
            // An export finished, then returned (`exported`), kept back (`export-unreturned`:
            // a second one returned beside it) or followed by a failure (`export-fail`).
            // Or deleted, then returned (`delete-returned`), or returned for the posthook to
            // delete (`post-delete`).
            "exported" | "export-unreturned" | "export-fail" | "delete-returned"
            | "post-delete" => {
                let stream = data::open_export("dump", &[])?;
                stream.write(b"dump\n")?;
                let artifact = stream.finish()?;
                match mode.as_str() {
                    "delete-returned" => {
                        data::delete(&artifact)?;
                        out.artifacts.push(artifact);
                    }
                    "export-fail" => {
                        return Err(Error::Failed(format!("{action} failed after its export")));
                    }
                    "export-unreturned" => {
                        let kept = data::open_export("kept", &[])?;
                        kept.write(b"kept\n")?;
                        out.artifacts.push(kept.finish()?);
                    }
                    _ => out.artifacts.push(artifact),
                }
            }
            // A volume snapshot returned by its id, for the posthook to delete.
            "snapshot-deleted" if action == "backup" => {
                for snap in volumes::snapshot(None, &[])? {
                    out.artifacts.push(Artifact {
                        name: format!("volume-{}", snap.volume),
                        values: vec![("snapshot-id".into(), snap.id)],
                        reference: vec![],
                    });
                }
            }
            _ => {}
        }
    }
    // The posthook deletes what the main phase returned.
    if post && (mode == "post-delete" || mode == "snapshot-deleted") {
        for artifact in inputs.phases.iter().flat_map(|p| &p.outputs.artifacts) {
            if mode == "post-delete" {
                data::delete(artifact)?;
            } else if let Some((_, id)) = artifact.values.iter().find(|(k, _)| k == "snapshot-id") {
                volumes::delete(id)?;
            }
        }
    }
    if action.ends_with("Prehook") && mode == "prefail" {
        return Err(Error::Failed(format!("{action} failed on purpose")));
    }
    if mode == "checkpoint" && action == "backupPrehook" {
        // Record the count, scale to zero, then run past the deadline: the posthook must still
        // learn the count.
        let replicas = workloads::get(None)?.replicas;
        log::checkpoint("replicas", &replicas.to_string())?;
        workloads::scale(None, 0)?;
        loop {
            std::hint::black_box(0);
        }
    }
    if mode == "checkpoint" && post {
        let replicas = inputs
            .phases
            .iter()
            .find_map(|p| p.outputs.values.iter().find(|(k, _)| k == "replicas"))
            .map(|(_, v)| v.parse::<u32>().unwrap_or_default())
            .ok_or_else(|| Error::NotFound("no phase checkpointed `replicas`".into()))?;
        workloads::scale(None, replicas)?;
        out.values
            .push(("post-scaled".into(), replicas.to_string()));
    }
    if post && mode == "post-clash" {
        out.artifacts.push(Artifact {
            name: "state".into(),
            values: vec![("from".into(), action.into())],
            reference: vec![],
        });
    }
    if post && mode == "post-value-clash" {
        out.values.push(("phase".into(), action.into()));
    }
    if let mode @ ("session" | "session-leak" | "session-kill" | "session-flood") = mode.as_str() {
        // A shell held open from the prehook to the posthook: its pid proves it is one process.
        let said = match action {
            // Output without line ends, forever.
            "backupPrehook" if mode == "session-flood" => {
                exec::session_open("flood", &command(None, &["sh"]))?;
                exec::session_send("flood", b"cat /dev/zero\n", "never", None)?
            }
            "backupPrehook" => {
                exec::session_open("shell", &command(None, &["sh"]))?;
                exec::session_send("shell", b"echo $$; echo ready\n", "ready", None)?
            }
            "backup" => exec::session_send("shell", b"echo $$; echo ready\n", "ready", None)?,
            _ if mode == "session" => {
                let said = exec::session_send("shell", b"echo $$; echo ready\n", "ready", None)?;
                let closed = exec::session_close("shell")?;
                if closed.exit_code != 0 {
                    return Err(Error::Failed(format!(
                        "the shell exited with {}",
                        closed.exit_code
                    )));
                }
                said
            }
            _ if mode == "session-kill" => {
                let said = exec::session_send("shell", b"echo $$; echo ready\n", "ready", None)?;
                exec::session_kill("shell")?;
                // Killed means gone: the name is free and nothing answers to it.
                match exec::session_send("shell", b"echo hi\n", "hi", None) {
                    Err(Error::NotFound(_)) => said,
                    other => {
                        return Err(Error::Failed(format!(
                            "a killed session still answers: {other:?}"
                        )));
                    }
                }
            }
            _ => Vec::new(),
        };
        out.values.push((
            key("said"),
            String::from_utf8_lossy(&said).trim().to_string(),
        ));
    }
    Ok(out)
}

impl Guest for Misbehave {
    fn describe() -> Description {
        Description {
            name: "misbehave".into(),
            version: "0.1.0".into(),
            description: "the engine's test blueprint".into(),
            actions: ACTIONS
                .iter()
                .map(|a| ActionSpec {
                    name: a.to_string(),
                    description: format!("the {a} action"),
                })
                .collect(),
            parameters: vec![
                spec(
                    "mode",
                    ParamKind::Text,
                    false,
                    Some("ok"),
                    &[
                        "ok",
                        "fail",
                        "prefail",
                        "spin",
                        "trap",
                        "session",
                        "session-leak",
                        "session-kill",
                        "session-flood",
                        "sleep",
                        "checkpoint",
                        "post-clash",
                        "post-value-clash",
                        "leak",
                        "snapshot-fail",
                        "snapshotted",
                        "exported",
                        "export-unreturned",
                        "export-fail",
                        "shadow",
                        "bad-tag",
                        "delete",
                        "many-streams",
                        "trailer",
                        "plain",
                        "slow-dump",
                        "return",
                        "snapshot-loop",
                        "broken-pipe",
                        "failed-dump",
                        "delete-returned",
                        "post-delete",
                        "snapshot-deleted",
                        "crowd",
                        "export-loop",
                        "bad-name",
                    ],
                ),
                ParamSpec {
                    minimum: Some(0),
                    maximum: Some(1_000_000),
                    ..spec("count", ParamKind::Integer, false, Some("10"), &[])
                },
                spec("ratio", ParamKind::Float, false, None, &[]),
                spec("verbose", ParamKind::Boolean, false, Some("false"), &[]),
                spec("label", ParamKind::Text, true, None, &[]),
            ],
            capabilities: vec![
                Capability::Exec,
                Capability::Workloads,
                Capability::Scale,
                Capability::Volumes,
                Capability::Export,
                Capability::Import,
                Capability::Secrets,
                Capability::Catalog,
            ],
            min_runtime: "0.1.0".into(),
        }
    }

    fn run(action: String, inputs: Inputs) -> Result<Outputs, Error> {
        match action.as_str() {
            "hello" => {
                log::log(
                    log::Level::Info,
                    &format!("hello from {}", inputs.action_id),
                );
                log::report(&log::Progress {
                    percent: Some(100.0),
                    bytes_done: None,
                    bytes_total: None,
                    message: Some("done".into()),
                });
                Ok(values(&[("greeting", "hello".into())]))
            }
            "noop" => Ok(values(&[])),
            "log-n" => {
                for _ in 0..integer(&inputs, "count") {
                    log::log(log::Level::Trace, "x");
                }
                Ok(values(&[]))
            }
            "spin" => loop {
                std::hint::black_box(0);
            },
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            "recurse" => Ok(values(&[("depth", recurse(0).to_string())])),
            "panic" => panic!("the blueprint panicked on purpose"),
            "log-flood" => {
                let line = "y".repeat(1000);
                for _ in 0..100_000 {
                    log::log(log::Level::Info, &line);
                }
                Ok(values(&[]))
            }
            "stdout-flood" => {
                let line = "z".repeat(1000);
                for _ in 0..100_000 {
                    println!("{line}");
                }
                Ok(values(&[]))
            }
            "output-flood" => Ok(values(&[("flood", "w".repeat(16 << 20))])),
            "error-flood" => Err(Error::Failed("e".repeat(16 << 20))),
            "progress-flood" => {
                for i in 0..100_000u32 {
                    log::report(&log::Progress {
                        percent: Some(i as f32 / 1000.0),
                        bytes_done: None,
                        bytes_total: None,
                        message: Some(format!("step {i}")),
                    });
                }
                log::report(&log::Progress {
                    percent: Some(100.0),
                    bytes_done: None,
                    bytes_total: None,
                    message: Some("done".into()),
                });
                Ok(values(&[]))
            }
            "dup-artifact" | "dup-value" => {
                let artifact = |name: &str, values: &[(&str, &str)]| Artifact {
                    name: name.into(),
                    values: values
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    reference: vec![],
                };
                Ok(Outputs {
                    artifacts: if action == "dup-artifact" {
                        vec![artifact("a", &[("x", "1")]), artifact("a", &[("x", "2")])]
                    } else {
                        vec![artifact("a", &[("x", "1"), ("x", "2")])]
                    },
                    values: vec![],
                })
            }
            "exec" => {
                let out = exec::run(&command(None, &["echo", "hi"]))?;
                Ok(values(&[
                    ("stdout", String::from_utf8_lossy(&out.stdout).into_owned()),
                    ("exit", out.exit_code.to_string()),
                    ("pod", out.pod),
                ]))
            }
            "exec-outside" => {
                let other = WorkloadRef {
                    namespace: inputs.namespace.clone(),
                    name: "other".into(),
                };
                exec::run(&command(Some(other), &["echo", "hi"]))?;
                Ok(values(&[]))
            }
            "exec-other-namespace" => {
                let other = WorkloadRef {
                    namespace: "elsewhere".into(),
                    name: "db".into(),
                };
                exec::run(&command(Some(other), &["echo", "hi"]))?;
                Ok(values(&[]))
            }
            // Refused calls in a loop, each naming a huge namespace.
            "audit-flood" => {
                let other = WorkloadRef {
                    namespace: "n".repeat(100_000),
                    name: "db".into(),
                };
                for _ in 0..1500 {
                    let _ = exec::run(&command(Some(other.clone()), &["echo", "hi"]));
                }
                Ok(values(&[]))
            }
            "exec-sleep" => {
                let mut cmd = command(None, &["sleep", "30"]);
                cmd.timeout_ms = Some(200);
                exec::run(&cmd)?;
                Ok(values(&[]))
            }
            "run-all" if text(&inputs, "mode") == "crowd" => {
                // Each pod counts the pods running with it (`inflight/` holds one file per
                // pod while it runs), then prints more than a pod's share of the output cap.
                let outs = exec::run_all(&command(
                    None,
                    &[
                        "sh",
                        "-c",
                        "touch inflight/$$; ls inflight | wc -l >&2; head -c 300000 /dev/zero; \
                         sleep 0.3; rm inflight/$$",
                    ],
                ))?;
                let most = outs
                    .iter()
                    .filter_map(|o| {
                        String::from_utf8_lossy(&o.stderr)
                            .trim()
                            .parse::<u32>()
                            .ok()
                    })
                    .max()
                    .unwrap_or_default();
                let longest = outs
                    .iter()
                    .map(|o| o.stdout.len())
                    .max()
                    .unwrap_or_default();
                let cut = outs.iter().filter(|o| o.stdout_truncated).count();
                let order: Vec<&str> = outs.iter().map(|o| o.pod.as_str()).collect();
                Ok(values(&[
                    ("pods", outs.len().to_string()),
                    ("most-at-once", most.to_string()),
                    ("longest", longest.to_string()),
                    ("cut", cut.to_string()),
                    ("order", order.join(",")),
                ]))
            }
            "run-all" => {
                let outs = exec::run_all(&command(None, &["echo", "hi"]))?;
                Ok(values(&[("pods", outs.len().to_string())]))
            }
            "exec-pipeline" => {
                // `echo hi | sh -c 'cat; exit 3' | cat`, then two pipelines the host refuses.
                let mut piped = command(None, &["echo", "hi"]);
                piped.then = vec![
                    vec!["sh".into(), "-c".into(), "cat; exit 3".into()],
                    vec!["cat".into()],
                ];
                let out = exec::run(&piped)?;
                let refusal = |then: Vec<Vec<String>>| {
                    let mut c = command(None, &["echo", "hi"]);
                    c.then = then;
                    match exec::run(&c) {
                        Err(Error::Invalid(m)) => m,
                        other => format!("not refused: {other:?}"),
                    }
                };
                Ok(values(&[
                    ("stdout", String::from_utf8_lossy(&out.stdout).into_owned()),
                    ("exit", out.exit_code.to_string()),
                    ("too-long", refusal(vec![vec!["cat".into()]; 8])),
                    ("empty", refusal(vec![vec!["cat".into()], Vec::new()])),
                ]))
            }
            "exec-stopped" => {
                // Quiesce, run against the stopped workload, scale back whatever happened; then
                // the same command while it runs, which the host refuses.
                let mut stopped = command(None, &["echo", "offline"]);
                stopped.stopped = true;
                let before = workloads::scale(None, 0)?;
                let out = exec::run(&stopped);
                workloads::scale(None, before)?;
                let out = out?;
                let refused = match exec::run(&stopped) {
                    Err(Error::Invalid(m)) => m,
                    other => format!("not refused: {other:?}"),
                };
                let all = match exec::run_all(&stopped) {
                    Err(Error::Invalid(m)) => m,
                    other => format!("not refused: {other:?}"),
                };
                Ok(values(&[
                    ("pod", out.pod),
                    ("stdout", String::from_utf8_lossy(&out.stdout).into_owned()),
                    ("refused", refused),
                    ("run-all", all),
                ]))
            }
            "secret" => {
                // Logged (the host blanks it out) and, with `mode` `leak`, returned (refused).
                let token = secrets::get("token")?;
                log::log(log::Level::Info, &format!("the token is {token}"));
                // A last line without its newline still reaches the log.
                print!("printed without a newline");
                let _ = std::io::Write::flush(&mut std::io::stdout());
                if text(&inputs, "mode") == "leak" {
                    return Ok(values(&[("dsn", format!("db://app:{token}@host"))]));
                }
                // Under a key an export reference has, in an artifact that is not one.
                if text(&inputs, "mode") == "shadow" {
                    return Ok(Outputs {
                        artifacts: vec![Artifact {
                            name: "dump".into(),
                            values: vec![("bytes".into(), token)],
                            reference: vec![],
                        }],
                        values: vec![],
                    });
                }
                Ok(values(&[("token-length", token.len().to_string())]))
            }
            "scale" => {
                let before = workloads::scale(None, 0)?;
                workloads::scale(None, before)?;
                Ok(values(&[("before", before.to_string())]))
            }
            "snapshot" if text(&inputs, "mode") == "snapshot-loop" => {
                // Snapshot and delete until refused: deleted ones count against the run's cap.
                let mut taken = 0usize;
                let refused = loop {
                    match volumes::snapshot(None, &[]) {
                        Ok(snaps) => {
                            for s in &snaps {
                                volumes::delete(&s.id)?;
                            }
                            taken += snaps.len();
                        }
                        Err(e) => break format!("{e:?}"),
                    }
                    if taken > 1000 {
                        break "never refused".to_string();
                    }
                };
                Ok(values(&[
                    ("taken", taken.to_string()),
                    ("refused", refused),
                ]))
            }
            "snapshot" => {
                let snaps = volumes::snapshot(None, &[])?;
                Ok(values(&[("snapshots", snaps.len().to_string())]))
            }
            "export" if text(&inputs, "mode") == "many-streams" => {
                // Eight streams open at once; a ninth is refused until one is finished or dropped.
                let mut open = Vec::new();
                for i in 0..8 {
                    open.push(data::open_export(&format!("s{i}"), &[])?);
                }
                let refused = match data::open_export("s8", &[]) {
                    Err(Error::Invalid(m)) => m,
                    Err(e) => return Err(e),
                    Ok(_) => return Err(Error::Failed("a ninth stream was opened".into())),
                };
                if let Some(last) = open.pop() {
                    last.finish()?;
                }
                let _ninth = data::open_export("s9", &[])?;
                drop(open.pop());
                let _tenth = data::open_export("s10", &[])?;
                Ok(values(&[("refused", refused)]))
            }
            "export" if text(&inputs, "mode") == "export-loop" => {
                // Exports opened and finished until refused.
                let mut finished = 0usize;
                let refused = loop {
                    match data::open_export(&format!("e{finished}"), &[]) {
                        Ok(stream) => {
                            stream.finish()?;
                            finished += 1;
                        }
                        Err(e) => break format!("{e:?}"),
                    }
                    if finished > 2000 {
                        break "never refused".to_string();
                    }
                };
                Ok(values(&[
                    ("finished", finished.to_string()),
                    ("refused", refused),
                ]))
            }
            "export" if text(&inputs, "mode") == "broken-pipe" => {
                // A dump cut short by its timeout, then retried on the same stream and sealed.
                let stream = data::open_export("dump", &[])?;
                let mut cut = command(None, &["sh", "-c", "echo partial; sleep 30"]);
                cut.timeout_ms = Some(300);
                let first = outcome(stream.pipe_from(&cut));
                let retry = outcome(stream.pipe_from(&command(None, &["cat", "data.txt"])));
                let write = outcome(stream.write(b"more\n"));
                let finish = outcome(stream.finish());
                Ok(values(&[
                    ("first", first),
                    ("retry", retry),
                    ("write", write),
                    ("finish", finish),
                ]))
            }
            "export" if text(&inputs, "mode") == "failed-dump" => {
                // A dump that exited non-zero after writing part of its output, then retried on
                // the same stream; the blueprint then seals what the first one wrote.
                let stream = data::open_export("dump", &[])?;
                let failed =
                    stream.pipe_from(&command(None, &["sh", "-c", "echo partial; exit 3"]))?;
                let retry = outcome(stream.pipe_from(&command(None, &["cat", "data.txt"])));
                let write = outcome(stream.write(b"more\n"));
                let artifact = stream.finish()?;
                let mut outputs = values(&[
                    ("exit", failed.exit_code.to_string()),
                    ("retry", retry),
                    ("write", write),
                ]);
                outputs.artifacts.push(artifact);
                Ok(outputs)
            }
            "export" => {
                // Tagged with the `label` parameter; `bad-tag` also sets a key the host owns.
                let mut tags = vec![("label".to_string(), text(&inputs, "label"))];
                if text(&inputs, "mode") == "bad-tag" {
                    tags.push(("action".into(), "mine".into()));
                }
                let stream = data::open_export("dump", &tags)?;
                stream.write(b"header\n")?;
                let dump = match text(&inputs, "mode").as_str() {
                    "slow-dump" => command(None, &["sh", "-c", "sleep 2; cat data.txt"]),
                    _ => command(None, &["cat", "data.txt"]),
                };
                let transfer = stream.pipe_from(&dump)?;
                let mut artifact = stream.finish()?;
                let finished = keys(&artifact);
                // The blueprint's own value; `shadow` names it like a key of the reference.
                let own = if text(&inputs, "mode") == "shadow" {
                    "path"
                } else {
                    "format"
                };
                artifact.values.push((own.into(), "text".into()));
                Ok(Outputs {
                    artifacts: vec![artifact],
                    values: vec![
                        ("bytes".into(), transfer.bytes.to_string()),
                        ("finished".into(), finished),
                    ],
                })
            }
            "import" => {
                let source: &Artifact = inputs
                    .artifacts
                    .first()
                    .ok_or_else(|| Error::Invalid("no artifact to import".into()))?;
                let stream = data::open_import(source)?;
                let head = stream.read(7)?;
                // `restored.txt` appears once the command has read to the end of its input.
                let restore = command(
                    None,
                    &[
                        "sh",
                        "-c",
                        "cat > restored.part && mv restored.part restored.txt",
                    ],
                );
                let transfer = if text(&inputs, "mode") == "trailer" {
                    stream.pipe_into_with_trailer(&restore, b"TRAILER\n")?
                } else {
                    stream.pipe_into(&restore)?
                };
                Ok(values(&[
                    ("source", keys(source)),
                    ("head", String::from_utf8_lossy(&head).into_owned()),
                    ("bytes", transfer.bytes.to_string()),
                    ("exit", transfer.exit_code.to_string()),
                ]))
            }
            // An export reference the guest makes up (`label` is its path), read or (`mode`
            // `delete`) deleted: the host allows it only for an export in the action's scope.
            "forge" => {
                // Or the one given, if any.
                let forged = inputs.artifacts.first().cloned().unwrap_or(Artifact {
                    name: "forged".into(),
                    values: vec![],
                    reference: vec![
                        ("kind".into(), "file".into()),
                        ("path".into(), text(&inputs, "label")),
                    ],
                });
                if text(&inputs, "mode") == "delete" {
                    data::delete(&forged)?;
                    return Ok(values(&[("deleted", "yes".into())]));
                }
                // Returned as its own, for a restore point to record.
                if text(&inputs, "mode") == "return" {
                    return Ok(Outputs {
                        artifacts: vec![forged],
                        values: vec![],
                    });
                }
                let head = data::open_import(&forged)?.read(7)?;
                Ok(values(&[(
                    "head",
                    String::from_utf8_lossy(&head).into_owned(),
                )]))
            }
            "catalog" => {
                let state = catalog::state()?;
                let stream = data::open_export("catalog", &[])?;
                let info =
                    catalog::export_changes(state.cursor.unwrap_or(0), state.mode, None, &stream)?;
                let artifact = stream.finish()?;
                catalog::advance_cursor(info.to_seq)?;
                Ok(Outputs {
                    artifacts: vec![artifact],
                    values: vec![
                        ("cluster-id".into(), state.cluster_id),
                        ("to-seq".into(), info.to_seq.to_string()),
                        ("bytes".into(), info.bytes.to_string()),
                    ],
                })
            }
            "catalog-apply" => {
                let source: &Artifact = inputs
                    .artifacts
                    .first()
                    .ok_or_else(|| Error::Invalid("no artifact to apply".into()))?;
                let stream = data::open_import(source)?;
                let applied = catalog::apply(&stream)?;
                Ok(values(&[("applied", applied.applied.to_string())]))
            }
            // A session whose program never reads the 1 MiB of input it is opened with.
            "session-stdin" => {
                let mut cmd = command(None, &["sleep", "30"]);
                cmd.stdin = Some(vec![b'x'; 1 << 20]);
                let started = std::time::Instant::now();
                let opened = outcome(exec::session_open("deaf", &cmd));
                Ok(values(&[
                    ("opened", opened),
                    ("ms", started.elapsed().as_millis().to_string()),
                ]))
            }
            "read-file" => std::fs::read_to_string("/etc/hostname")
                .map(|text| values(&[("text", text)]))
                .map_err(|e| Error::Failed(format!("reading /etc/hostname: {e}"))),
            "params" => Ok(Outputs {
                artifacts: vec![],
                values: inputs
                    .params
                    .iter()
                    .map(|(k, v)| (k.clone(), format!("{v:?}")))
                    .collect(),
            }),
            "checkpoint" if text(&inputs, "mode") == "bad-name" => {
                // Names a report would show to a terminal, or that hold a secret; then a
                // failure, after which only the checkpoints are kept.
                let token = secrets::get("token")?;
                let control = outcome(log::checkpoint("\u{1b}[2Jcairn: backup verified OK", "x"));
                let secret = outcome(log::checkpoint(&token, "v"));
                log::checkpoint("control", &control)?;
                log::checkpoint("secret", &secret)?;
                Err(Error::Failed("checkpoint failed on purpose".into()))
            }
            "checkpoint" => {
                log::checkpoint("a", "1")?;
                log::checkpoint("b", "2")?;
                log::checkpoint("a", "replaced")?;
                if text(&inputs, "mode") == "fail" {
                    return Err(Error::Failed("checkpoint failed on purpose".into()));
                }
                Ok(values(&[("a", "returned".into())]))
            }
            "checkpoint-flood" => {
                log::checkpoint("small", "kept")?;
                log::checkpoint("flood", &"w".repeat(16 << 20))?;
                Ok(values(&[]))
            }
            "sleep" => {
                let started = std::time::Instant::now();
                log::sleep(u64::try_from(integer(&inputs, "count")).unwrap_or_default());
                Ok(values(&[(
                    "slept-ms",
                    started.elapsed().as_millis().to_string(),
                )]))
            }
            "backupPrehook" | "backup" | "backupPosthook" | "restorePrehook" | "restore"
            | "restorePosthook" => phase(&action, &inputs),
            other => Err(Error::Invalid(format!("unknown action {other}"))),
        }
    }
}

export!(Misbehave);
