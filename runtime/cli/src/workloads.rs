//! `cairn workloads`: the workloads of a target's namespace as blueprints see them, to check a
//! target (its inventory, or a cluster's connection and permissions) before running an action.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use crate::home::Home;
use crate::{Output, UsageError, exit};

#[derive(Debug, Args)]
pub(crate) struct WorkloadsArgs {
    /// The target, as for `cairn run`: `local:INVENTORY.yaml`, or `kube` (`kube:CONTEXT`).
    #[arg(long, value_name = "local:PATH|kube[:CONTEXT]")]
    target: String,
    /// The namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// How to print them.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

pub(crate) async fn run(args: WorkloadsArgs, home: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let home = Home::resolve(home)?;
    let cluster = crate::run::open_target(&args.target, None, &home).await?;
    let workloads = match cluster.workloads(&args.namespace).await {
        Ok(w) => w,
        Err(e @ cairn_cluster::Error::NotFound { .. }) => {
            return Err(UsageError(e.to_string()).into());
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)).with_context(|| {
                format!(
                    "listing the workloads of namespace {} on {}",
                    args.namespace, args.target
                )
            });
        }
    };
    match args.output {
        Output::Json => {
            let list: Vec<_> = workloads
                .iter()
                .map(|w| {
                    json!({
                        "namespace": w.reference.namespace,
                        "name": w.reference.name,
                        "kind": w.kind.as_str(),
                        "replicas": w.replicas,
                        "ready_replicas": w.ready_replicas,
                        "pods": w.pods.iter().map(|p| json!({
                            "name": p.name, "ready": p.ready, "containers": p.containers,
                        })).collect::<Vec<_>>(),
                        "volumes": w.volumes.iter().map(|v| &v.name).collect::<Vec<_>>(),
                        "labels": w.labels,
                        "left_stopped": w.left_stopped,
                    })
                })
                .collect();
            outln!("{}", json!(list));
        }
        Output::Text if workloads.is_empty() => {
            outln!("namespace {} has no workloads", args.namespace);
        }
        Output::Text => {
            let rows: Vec<[String; 6]> = workloads
                .iter()
                .map(|w| {
                    let pods: Vec<String> = w
                        .pods
                        .iter()
                        .map(|p| match p.ready {
                            true => p.name.clone(),
                            false => format!("{} (not ready)", p.name),
                        })
                        .collect();
                    let volumes: Vec<&str> = w.volumes.iter().map(|v| v.name.as_str()).collect();
                    [
                        w.reference.name.clone(),
                        w.kind.as_str().to_owned(),
                        format!("{}/{}", w.ready_replicas, w.replicas),
                        pods.join(", "),
                        volumes.join(", "),
                        w.labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect();
            let header = ["NAME", "KIND", "READY", "PODS", "VOLUMES", "LABELS"].map(str::to_owned);
            let mut widths = header.clone().map(|h| h.len());
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            for row in std::iter::once(&header).chain(&rows) {
                let mut line = String::new();
                for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                    if i + 1 == row.len() {
                        line.push_str(cell);
                    } else {
                        line.push_str(&format!("{cell:<w$}  "));
                    }
                }
                outln!("{}", line.trim_end());
            }
        }
    }
    for w in &workloads {
        if let Some(n) = w.left_stopped {
            errln!(
                "cairn: warning: workload {} is at 0 replicas since a cairn run scaled it down \
                 from {n} and ended (killed, or the machine restarted) before scaling it back: \
                 the next backup by a blueprint that scales it (quiesce) brings it back to {n}, \
                 or start it yourself",
                w.reference
            );
        }
    }
    Ok(ExitCode::from(exit::OK))
}
