//! `cairn binding …`: blueprint bindings. A binding says how to protect a kind of workload (the
//! registered blueprint, its parameters, grants and secrets) for the workloads it selects by
//! namespace, name pattern and labels. A policy that names no blueprint backs up each of its
//! workloads with the first binding, in name order, that selects it: one policy then protects a
//! namespace of different applications, each with its own blueprint.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use cairn_catalog::{BlueprintBinding, Kind};
use serde::Deserialize;

use crate::home::Home;
use crate::policy::{ApplyArgs, Scalar};
use crate::{Output, UsageError, exit};

/// `cairn binding …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BindingCommand {
    /// Create bindings, or replace those of the same names, from a YAML file (several
    /// documents may be separated by `---`) or a directory of them: all are checked before
    /// any is stored.
    Apply(ApplyArgs),
    /// List the bindings, in the order policies try them.
    List {
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete a binding. Policies that relied on it report its workloads as unbound.
    Delete {
        /// The binding's name.
        name: String,
    },
}

/// A binding file. A relative `file:` secret is relative to the file's directory.
///
/// ```yaml
/// name: redis
/// blueprint: redis               # registered with `cairn blueprint add`
/// namespaces: [shop]             # every namespace when absent
/// workloads: [cache-*]           # names or patterns; any name when absent
/// selector: {app: redis}         # labels every bound workload must have
/// params: {port: 6379}
/// grants: [exec, export]
/// secrets: {password: env:REDIS_PASSWORD}
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BindingFile {
    name: String,
    blueprint: String,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    workloads: Vec<String>,
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    params: BTreeMap<String, Scalar>,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

/// The bindings of a file or directory (several documents, or files, may hold several).
fn read_binding_files(file: &std::path::Path) -> anyhow::Result<Vec<BlueprintBinding>> {
    crate::policy::read_documents::<BindingFile>(
        file,
        "binding",
        "a binding has name, blueprint, and namespaces, workloads or selector; \
         examples/policies/hello-binding.yaml shows every field",
        |f| &f.name,
    )?
    .into_iter()
    .map(binding_of)
    .collect()
}

/// The binding a Kubernetes `BlueprintBinding` resource's spec describes (`operator.rs`).
pub(crate) fn binding_of_spec(
    name: &str,
    spec: serde_json::Value,
    what: &str,
    base: &std::path::Path,
) -> anyhow::Result<BlueprintBinding> {
    binding_of(crate::operator::document(name, spec, &[], what, base)?)
}

fn binding_of(doc: crate::policy::Document<BindingFile>) -> anyhow::Result<BlueprintBinding> {
    let f = doc.value;
    let bad = |msg: String| UsageError(format!("binding {}: {msg}", doc.file.display()));
    Ok(BlueprintBinding {
        secrets: crate::policy::secret_sources(f.secrets, &doc.base).map_err(bad)?,
        name: f.name,
        blueprint: f.blueprint,
        namespaces: f.namespaces,
        workloads: f.workloads,
        selector: f.selector,
        params: crate::policy::texts(f.params),
        grants: f.grants,
        origin: None,
        applied: jiff::Timestamp::now(),
    })
}

/// The bindings in the order policies try them (by name). A record that is not a binding
/// (stored by hand with `cairn catalog put`) is left out with a warning.
pub(crate) fn bindings(catalog: &cairn_catalog::Catalog) -> anyhow::Result<Vec<BlueprintBinding>> {
    Ok(catalog
        .list(Kind::BlueprintBinding)?
        .iter()
        .filter_map(|e| match e.decode() {
            Ok(b) => Some(b),
            Err(err) => {
                tracing::warn!(
                    "blueprint binding {:?} is unreadable and left out ({err}); apply it again with `cairn binding apply FILE`",
                    e.key
                );
                None
            }
        })
        .collect())
}

/// Refuses a binding that could not run, naming it and the field.
pub(crate) async fn check(
    binding: &BlueprintBinding,
    engine: &cairn_engine::Engine,
    home: &Home,
) -> anyhow::Result<()> {
    let bad = |msg: String| UsageError(format!("binding {:?}: {msg}", binding.name));
    crate::policy::valid_name(&binding.name).map_err(bad)?;
    crate::policy::check_use(
        engine,
        home,
        &binding.blueprint,
        &binding.grants,
        &binding.params,
        &binding
            .secrets
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await
    .map_err(|e| bad(e.to_string()))?;
    let sources: Vec<String> = binding
        .secrets
        .iter()
        .map(|(name, source)| format!("{name}={source}"))
        .collect();
    crate::run::parse_secrets_of(&sources, "secrets:").map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// Refuses to change binding `name` from the command line when a resource keeps it.
fn refuse_kept(home: &Home, name: &str) -> anyhow::Result<()> {
    let stored: Option<BlueprintBinding> = crate::catalog::open(home)?
        .get(Kind::BlueprintBinding, name)
        .ok()
        .flatten();
    if let Some(stored) = stored {
        crate::operator::refuse_kept(
            crate::operator::Kind::Binding,
            name,
            stored.origin.as_deref(),
        )?;
    }
    Ok(())
}

/// Whether `binding` protects workload `name` with `labels` in `namespace`.
pub(crate) fn binds(
    binding: &BlueprintBinding,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    (binding.namespaces.is_empty() || binding.namespaces.iter().any(|n| n == namespace))
        && crate::policy::selects(&binding.workloads, &binding.selector, name, labels)
}

/// A workload's labels for a message: ` (labels app=db,tier=data)`, or ` (no labels)`.
pub(crate) fn shown_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return " (no labels)".to_owned();
    }
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" (labels {})", pairs.join(","))
}

/// What a binding selects, for its line in `list`.
fn scope(b: &BlueprintBinding) -> String {
    let namespaces = if b.namespaces.is_empty() {
        "every namespace".to_owned()
    } else {
        format!("namespace {}", b.namespaces.join(", "))
    };
    format!(
        "{namespaces}: {}",
        crate::policy::selection(&b.workloads, &b.selector)
    )
}

pub(crate) async fn run(cmd: BindingCommand, home: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let home = Home::resolve(home)?;
    match cmd {
        BindingCommand::Apply(ApplyArgs {
            file,
            dry_run,
            output,
        }) => {
            let bindings = read_binding_files(&file)?;
            let engine = crate::run::engine(&home)?;
            // Every binding is checked before any is stored.
            for binding in &bindings {
                refuse_kept(&home, &binding.name)?;
                check(binding, &engine, &home).await?;
            }
            let mut applied = Vec::new();
            for binding in bindings {
                let mut shown = serde_json::to_value(&binding)?;
                if dry_run && let Some(fields) = shown.as_object_mut() {
                    // Nothing was applied: no `applied` time.
                    fields.remove("applied");
                }
                if output == Output::Text {
                    if dry_run {
                        outln!(
                            "binding {} is valid (not stored: --dry-run)\n{}",
                            binding.name,
                            serde_norway::to_string(&shown)?.trim_end()
                        );
                    } else {
                        outln!(
                            "binding {} applied: {} protects {}",
                            binding.name,
                            binding.blueprint,
                            scope(&binding)
                        );
                    }
                }
                if !dry_run {
                    crate::catalog::open(&home)?.save(&binding)?;
                }
                applied.push(shown);
            }
            crate::print_applied(output, applied)?;
            Ok(ExitCode::from(exit::OK))
        }
        BindingCommand::List { output } => {
            let bindings = bindings(&crate::catalog::open(&home)?)?;
            crate::print_rows(
                output,
                &bindings,
                "no blueprint bindings; `cairn binding apply FILE` adds one",
                |b| format!("{:<24} {:<12} {}", b.name, b.blueprint, scope(b)),
            )?;
            Ok(ExitCode::from(exit::OK))
        }
        BindingCommand::Delete { name } => {
            refuse_kept(&home, &name)?;
            let catalog = crate::catalog::open(&home)?;
            let binding: Option<BlueprintBinding> =
                catalog.get(Kind::BlueprintBinding, &name).ok().flatten();
            crate::delete_named(
                &catalog,
                Kind::BlueprintBinding,
                &name,
                "binding",
                "cairn binding list",
            )?;
            outln!("binding {name} deleted");
            // Policies without a blueprint of their own find theirs in bindings at each run.
            let relying: Vec<String> = catalog
                .policies()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p.blueprint.is_none())
                .filter(|p| {
                    binding.as_ref().is_some_and(|b| {
                        b.namespaces.is_empty() || b.namespaces.contains(&p.namespace)
                    })
                })
                .map(|p| p.name)
                .collect();
            if !relying.is_empty() {
                errln!(
                    "warning: policies {} name no blueprint and may have relied on it: the \
                     workloads it bound are unbound now, and their runs and restores fail for \
                     them until another binding selects them",
                    relying.join(", ")
                );
            }
            Ok(ExitCode::from(exit::OK))
        }
    }
}
