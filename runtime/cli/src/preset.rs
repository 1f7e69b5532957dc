//! `cairn preset …`: policy presets. A preset is a backup service level (frequency, retention,
//! where exports go, how often their repository is pruned) that policies name with `preset:`
//! instead of each saying it. Applying a preset again rewrites those fields of every policy
//! that names it, so a service level changes in one place.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use cairn_catalog::{Kind, Policy, PolicyExport, PolicyPreset, Retention};
use serde::Deserialize;

use crate::home::Home;
use crate::policy::ApplyArgs;
use crate::{Output, UsageError, exit};

/// `cairn preset …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PresetCommand {
    /// Create presets, or replace those of the same names and update the policies that name
    /// them, from a YAML file (several documents may be separated by `---`) or a directory of
    /// them: all are checked before any is stored.
    Apply(ApplyArgs),
    /// List the presets and the policies that name each.
    List {
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete a preset that no policy names.
    Delete {
        /// The preset's name.
        name: String,
    },
}

/// A preset file. Relative paths in `export` are relative to the file's directory.
///
/// ```yaml
/// name: gold
/// frequency: "@hourly"
/// retention: {hourly: 24, daily: 7, weekly: 4}
/// export: {profile: offsite}      # optional: the home's repository when absent
/// prune: "@weekly"                # optional: @daily when absent, or never
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetFile {
    name: String,
    frequency: String,
    #[serde(deserialize_with = "crate::policy::retention_of_file")]
    retention: Option<Retention>,
    #[serde(default)]
    export: Option<PolicyExport>,
    #[serde(default)]
    prune: Option<String>,
}

/// A preset as `list` shows it.
#[derive(Debug, serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    preset: PolicyPreset,
    /// The policies that name it.
    policies: Vec<String>,
}

/// Every preset, by name.
pub(crate) fn presets_in(
    catalog: &cairn_catalog::Catalog,
) -> anyhow::Result<BTreeMap<String, PolicyPreset>> {
    Ok(catalog
        .load_all::<PolicyPreset>()?
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect())
}

/// The names of the policies that name preset `name`.
fn users(policies: &[Policy], name: &str) -> Vec<String> {
    policies
        .iter()
        .filter(|p| p.preset.as_deref() == Some(name))
        .map(|p| p.name.clone())
        .collect()
}

pub(crate) fn run(cmd: PresetCommand, home: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let home = Home::resolve(home)?;
    match cmd {
        PresetCommand::Apply(ApplyArgs {
            file,
            dry_run,
            output,
        }) => {
            let docs = crate::policy::read_documents::<PresetFile>(
                &file,
                "preset",
                "a preset has name, frequency, retention, and optionally export and prune; \
                 examples/policies/presets.yaml shows them",
                |f| &f.name,
            )?;
            let mut presets = Vec::new();
            // Every preset is checked before any is stored.
            for doc in docs {
                let f = doc.value;
                let bad = |msg: String| UsageError(format!("preset {}: {msg}", f.name));
                crate::policy::valid_name(&f.name).map_err(bad)?;
                let export = f
                    .export
                    .and_then(|e| crate::policy::export_of(e, &doc.base));
                let retention = f.retention.ok_or_else(|| {
                    bad("it has no retention (e.g. `retention: {daily: 7}`)".into())
                })?;
                crate::policy::check_service(
                    &f.frequency,
                    &retention,
                    f.prune.as_deref(),
                    export.as_ref(),
                    &home,
                )
                .map_err(bad)?;
                presets.push(PolicyPreset {
                    name: f.name,
                    frequency: f.frequency,
                    retention,
                    export,
                    prune: f.prune,
                    applied: jiff::Timestamp::now(),
                });
            }
            let mut applied = Vec::new();
            for preset in presets {
                let catalog = crate::catalog::open(&home)?;
                let policies = catalog.policies()?;
                let following = users(&policies, &preset.name);
                if !dry_run {
                    // The preset and its policies change in one transaction, each policy read
                    // in it: a run recorded meanwhile is kept.
                    catalog.write(|tx| {
                        tx.save(&preset)?;
                        for name in &following {
                            let Some(mut policy) = tx.get::<Policy>(Kind::Policy, name)? else {
                                continue;
                            };
                            policy.frequency.clone_from(&preset.frequency);
                            policy.retention = preset.retention;
                            policy.export.clone_from(&preset.export);
                            policy.prune.clone_from(&preset.prune);
                            tx.save(&policy)?;
                        }
                        Ok(())
                    })?;
                }
                if output == Output::Text {
                    outln!(
                        "preset {} {}: {}, {}{}",
                        preset.name,
                        if dry_run {
                            "is valid (not stored: --dry-run)"
                        } else {
                            "applied"
                        },
                        preset.frequency,
                        preset.retention,
                        if following.is_empty() {
                            String::new()
                        } else {
                            format!("; policies {} follow it", following.join(", "))
                        }
                    );
                }
                applied.push(serde_json::to_value(&preset)?);
            }
            crate::print_applied(output, applied)?;
            Ok(ExitCode::from(exit::OK))
        }
        PresetCommand::List { output } => {
            let catalog = crate::catalog::open(&home)?;
            let policies = catalog.policies()?;
            let rows: Vec<Listed> = catalog
                .load_all::<PolicyPreset>()?
                .into_iter()
                .map(|preset| Listed {
                    policies: users(&policies, &preset.name),
                    preset,
                })
                .collect();
            crate::print_rows(
                output,
                &rows,
                "no presets; `cairn preset apply FILE` adds one",
                |r| {
                    format!(
                        "{:<20} {:<12} {}; policies: {}",
                        r.preset.name,
                        r.preset.frequency,
                        r.preset.retention,
                        crate::listed(&r.policies)
                    )
                },
            )?;
            Ok(ExitCode::from(exit::OK))
        }
        PresetCommand::Delete { name } => {
            let catalog = crate::catalog::open(&home)?;
            crate::refuse_while_used(&users(&catalog.policies()?, &name), |u| {
                format!("preset {name} is named by policies {u}")
            })?;
            crate::delete_named(
                &catalog,
                Kind::PolicyPreset,
                &name,
                "preset",
                "cairn preset list",
            )?;
            outln!("preset {name} deleted");
            Ok(ExitCode::from(exit::OK))
        }
    }
}
