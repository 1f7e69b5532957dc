//! Backup policies: `cairn policy apply|list|show|delete|run|restore`.
//!
//! A policy names a registered blueprint (`cairn blueprint add`), a target, a namespace and the
//! workloads it protects (names or `*` patterns), how often it runs, its parameters, grants and
//! secret sources, where its exports go, and what it keeps. A run backs up each matching
//! workload with the blueprint's `backup` action (hooks included), records each restore point
//! with the policy's name, and then applies the policy's retention to that workload's points:
//! a point not kept is deleted with the blueprint's `delete` action when it declares one, its
//! repository snapshots are forgotten, and its record is removed. The data they held is freed
//! by `cairn repo prune`, which is safe beside running backups.
//!
//! Retention runs only on an instance that owns maintenance of the backup data (see `cairn dr
//! take-ownership`), and never for a workload whose backup just failed, so that failing backups
//! cannot age out the last good points.
//!
//! `cairn serve` (`serve.rs`) runs them when they are due.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use cairn_catalog::{
    BlueprintBinding, Catalog, Kind, Location, Policy, PolicyExport, PolicyPreset, PolicyRun,
    Retention,
};
use cairn_engine::{Capability, Engine, Limits, RunRequest};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::run::Execution;
use crate::schedule::Schedule;
use crate::{Output, UsageError, exit};

/// `cairn policy …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PolicyCommand {
    /// Create policies, or replace those of the same names, from a YAML file (several
    /// documents may be separated by `---`) or a directory of them: all are checked before
    /// any is stored.
    Apply(ApplyArgs),
    /// List the policies, with when each runs next and how its last run went.
    List {
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one policy as stored, with its restore points.
    Show {
        /// The policy's name.
        name: String,
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete a policy. Its restore points stay, and are no longer pruned by its retention.
    Delete {
        /// The policy's name.
        name: String,
    },
    /// Pause a policy: `cairn serve` skips it until it is resumed (a maintenance window);
    /// `cairn policy run` still runs it.
    Pause {
        /// The policy's name.
        name: String,
    },
    /// Resume a paused policy: it runs when next due (at once, if a run was missed).
    Resume {
        /// The policy's name.
        name: String,
    },
    /// Restore a workload from a restore point the policy made (its newest, or --point), with
    /// the policy's target, parameters, secrets and repository.
    Restore {
        /// The policy's name.
        name: String,
        #[command(flatten)]
        restore: RestoreArgs,
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Run a policy now, whether due or paused: back up its workloads, then apply retention.
    Run {
        /// The policy's name.
        name: String,
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Shows what applying `policy` would store and what a run would back up now; returns it for
/// `--output json`.
async fn dry_run_of(
    policy: &Policy,
    engine: &Engine,
    home: &Home,
    output: Output,
) -> anyhow::Result<serde_json::Value> {
    // What it would back up now, and with which blueprint: the check of a selector and of the
    // bindings that a stored policy only gets at its first run.
    let plan = match select(policy, engine, home).await {
        Ok(selected) => Ok(selected.plan()),
        Err(e) => Err(crate::one_line(&e)),
    };
    if output == Output::Text {
        outln!(
            "policy {} is valid (not stored: --dry-run)\n{}",
            policy.name,
            // Without `applied`: nothing was.
            policy_text(policy, false)?
        );
        match &plan {
            Ok(plan) => {
                outln!("it would back up now, in namespace {}:", policy.namespace);
                for p in plan {
                    outln!("  {}", p.line());
                }
            }
            Err(e) => outln!("what it would back up is not known: {e}"),
        }
    }
    Ok(serde_json::json!({
        "policy": policy,
        "plan": plan.as_ref().ok(),
        "plan_error": plan.as_ref().err(),
    }))
}

/// `apply` of a policy or a binding.
#[derive(Debug, clap::Args)]
pub(crate) struct ApplyArgs {
    /// The YAML file (`-` for standard input), or a directory of `.yaml`/`.yml` files.
    pub(crate) file: PathBuf,
    /// Check it and show it as it would be stored, without storing it.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t)]
    pub(crate) output: Output,
}

/// A policy file. Relative paths in it (a local target's inventory, export files, `file:`
/// secrets) are relative to the file's directory.
///
/// ```yaml
/// name: orders-nightly
/// blueprint: postgres            # registered; absent: each workload's blueprint binding
/// target: local:inventory.yaml   # or kube, kube:CONTEXT
/// namespace: shop
/// workloads: [orders-db]         # names or patterns: db-*, *
/// frequency: "@daily"            # @hourly, @daily, @weekly, or an interval: 6h
/// retention: {last: 3, daily: 7, weekly: 4}
/// params: {database: orders}
/// grants: [exec, export]
/// secrets: {password: env:PGPASSWORD}
/// timeout: 30m
/// export: {profile: offsite}   # or {profile_file: s3.yaml, passphrase_file: s3.passphrase}
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    name: String,
    #[serde(default)]
    blueprint: Option<String>,
    target: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    workloads: Vec<String>,
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    preset: Option<String>,
    #[serde(default)]
    frequency: Option<String>,
    #[serde(default, deserialize_with = "retention_of_file")]
    retention: Option<Retention>,
    #[serde(default)]
    params: BTreeMap<String, Scalar>,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    snapshot_class: Option<String>,
    #[serde(default)]
    export: Option<PolicyExport>,
    #[serde(default)]
    prune: Option<String>,
    #[serde(default)]
    concurrency: Option<u32>,
    #[serde(default)]
    paused: bool,
}

/// Parameters as the catalog keeps them: text.
pub(crate) fn texts(params: BTreeMap<String, Scalar>) -> BTreeMap<String, String> {
    params
        .into_iter()
        .map(|(k, v)| (k, v.into_text()))
        .collect()
}

/// A parameter's value as YAML gives it: `port: 6379` and `port: "6379"` alike.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a parameter value: a string, a number or true/false"
)]
pub(crate) enum Scalar {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Integer(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Boolean(b) => b.to_string(),
        }
    }
}

pub(crate) async fn run(cmd: PolicyCommand, home: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let home = Home::resolve(home)?;
    match cmd {
        PolicyCommand::Apply(ApplyArgs {
            file,
            dry_run,
            output,
        }) => {
            let policies = read_policy_files(&file, &home)?;
            let engine = crate::run::engine(&home)?;
            // Every policy is checked before any is stored.
            for policy in &policies {
                if let Some(stored) = crate::catalog::open(&home)?.policy(&policy.name)? {
                    crate::operator::refuse_kept(
                        crate::operator::Kind::Policy,
                        &policy.name,
                        stored.origin.as_deref(),
                    )?;
                }
                check(policy, &engine, &home).await?;
            }
            let mut applied = Vec::new();
            for mut policy in policies {
                let catalog = crate::catalog::open(&home)?;
                if dry_run {
                    let replaced = catalog.policy(&policy.name).ok().flatten();
                    policy.last_run = replaced.and_then(|old| old.last_run);
                    drop(catalog);
                    applied.push(dry_run_of(&policy, &engine, &home, output).await?);
                    continue;
                }
                let was_paused = catalog
                    .policy(&policy.name)
                    .ok()
                    .flatten()
                    .is_some_and(|old| old.paused);
                catalog.apply_policy(&mut policy)?;
                // The file decides; a pause made with `policy pause` does not outlive it.
                if was_paused && !policy.paused {
                    errln!(
                        "warning: policy {} was paused and runs again: its file does not say \
                         `paused: true`",
                        policy.name
                    );
                }
                if output == Output::Text {
                    outln!(
                        "policy {} applied: {} on {} namespace {} ({}), {}; next run {}",
                        policy.name,
                        policy
                            .blueprint
                            .as_deref()
                            .unwrap_or("(blueprint bindings)"),
                        policy.target,
                        policy.namespace,
                        selection(&policy.workloads, &policy.selector),
                        policy.frequency,
                        next_run(&policy)
                            .map_or_else(|| "when resumed".to_owned(), |t| shown(t).to_string())
                    );
                }
                applied.push(serde_json::to_value(&policy)?);
            }
            crate::print_applied(output, applied)?;
            Ok(ExitCode::from(exit::OK))
        }
        PolicyCommand::List { output } => {
            let catalog = crate::catalog::open(&home)?;
            crate::dr::warn_unfinished_restore(&catalog, &home);
            let rows: Vec<Listed> = catalog
                .list(Kind::Policy)?
                .into_iter()
                .map(|e| Listed::of(&home, &e.key, serde_json::from_str(e.value.get())))
                .collect();
            drop(catalog);
            crate::print_rows(
                output,
                &rows,
                "no policies; `cairn policy apply FILE` adds one",
                Listed::line,
            )?;
            Ok(ExitCode::from(exit::OK))
        }
        PolicyCommand::Show { name, output } => {
            let catalog = crate::catalog::open(&home)?;
            let policy = load(&catalog, &name)?;
            let mut points: Vec<_> = catalog
                .restore_points()?
                .into_iter()
                .filter(|p| p.policy.as_deref() == Some(&name))
                .collect();
            points.sort_by_key(|p| p.created);
            drop(catalog);
            match output {
                Output::Json => outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "policy": policy,
                        "next_run": next_run(&policy),
                        "restore_points": points,
                    }))?
                ),
                Output::Text => {
                    outln!("{}", policy_text(&policy, true)?);
                    if let Some(Running { since }) = in_progress(&home, &name) {
                        outln!(
                            "running since: {}",
                            since.map_or_else(|| "now".to_owned(), |t| shown(t).to_string())
                        );
                    }
                    outln!(
                        "next run: {}",
                        next_run(&policy)
                            .map_or_else(|| "paused".to_owned(), |t| shown(t).to_string())
                    );
                    outln!("restore points:");
                    for p in &points {
                        outln!(
                            "  {}  {}  {}",
                            p.id,
                            shown(p.created),
                            p.target.workload.as_deref().unwrap_or("-")
                        );
                    }
                }
            }
            Ok(ExitCode::from(exit::OK))
        }
        PolicyCommand::Delete { name } => {
            let catalog = crate::catalog::open(&home)?;
            if let Ok(Some(stored)) = catalog.policy(&name) {
                crate::operator::refuse_kept(
                    crate::operator::Kind::Policy,
                    &name,
                    stored.origin.as_deref(),
                )?;
            }
            if !catalog.delete(Kind::Policy, &name)? {
                return Err(not_found(&name).into());
            }
            outln!("policy {name} deleted; its restore points stay");
            Ok(ExitCode::from(exit::OK))
        }
        PolicyCommand::Pause { name } => set_paused(&home, &name, true),
        PolicyCommand::Resume { name } => set_paused(&home, &name, false),
        PolicyCommand::Restore {
            name,
            restore,
            output,
        } => {
            let policy = load(&crate::catalog::open(&home)?, &name)?;
            let engine = crate::run::engine(&home)?;
            let interrupt = crate::run::interrupt_on_signals()?;
            restore
                .run(&policy, &engine, &home, output, &interrupt)
                .await
        }
        PolicyCommand::Run { name, output } => {
            let catalog = crate::catalog::open(&home)?;
            let policy = load(&catalog, &name)?;
            warn_of_another_zone(&catalog, &policy);
            drop(catalog);
            let engine = crate::run::engine(&home)?;
            // Ctrl-C stops the running action (its posthook still runs) and what was left.
            let interrupt = crate::run::interrupt_on_signals()?;
            let outcome = run_policy(&policy, Start::Now, &engine, &home, &interrupt)
                .await
                .map_err(|e| match e.downcast::<Busy>() {
                    Ok(busy) => UsageError(busy.to_string()).into(),
                    Err(e) => e,
                })?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&outcome)?),
                Output::Text => outcome.print(),
            }
            Ok(ExitCode::from(if interrupt.is_triggered() {
                exit::INTERRUPTED
            } else if outcome.run.succeeded && outcome.run.errors.is_empty() {
                exit::OK
            } else {
                exit::FAILED
            }))
        }
    }
}

/// Catalog meta: the time zone `cairn serve` last started in (its IANA name).
pub(crate) const SERVE_ZONE: &str = "serve.time-zone";

/// Warns when `policy` counts its retention's days in this machine's time zone (an interval,
/// or cron without `CRON_TZ=`) and this process's differs from the one `serve` last started
/// in: a run from a shell with another `TZ` would keep other points than serve's runs.
fn warn_of_another_zone(catalog: &Catalog, policy: &Policy) {
    if policy.frequency.trim_start().starts_with("CRON_TZ=") {
        return;
    }
    let (Ok(Some(serves)), Some(mine)) = (
        catalog.meta(SERVE_ZONE),
        jiff::tz::TimeZone::system().iana_name().map(str::to_owned),
    ) else {
        return;
    };
    if serves != mine {
        errln!(
            "cairn: warning: policy {}: this run counts retention's days and weeks in time zone \
             {mine}, and `cairn serve` in {serves}: run it with TZ={serves}, or give its \
             frequency a CRON_TZ= zone",
            policy.name
        );
    }
}

fn not_found(name: &str) -> UsageError {
    UsageError(format!(
        "no policy named {name:?}; `cairn policy list` lists them"
    ))
}

/// `policy pause` and `policy resume`. Applying the policy's file again sets what it says.
fn set_paused(home: &Home, name: &str, paused: bool) -> anyhow::Result<ExitCode> {
    let catalog = crate::catalog::open(home)?;
    let policy = load(&catalog, name)?;
    crate::operator::refuse_kept(
        crate::operator::Kind::Policy,
        name,
        policy.origin.as_deref(),
    )?;
    let mut was = policy.paused;
    let policy = catalog
        .update_policy(name, |p| {
            was = p.paused;
            p.paused = paused;
        })?
        .ok_or_else(|| not_found(name))?;
    match (was, paused) {
        (true, true) => outln!("policy {name} was already paused"),
        (false, false) => outln!("policy {name} was not paused"),
        (false, true) => outln!("policy {name} paused: `cairn serve` skips it until it is resumed"),
        (true, false) => outln!(
            "policy {name} resumed; next run {}",
            next_run(&policy).map_or_else(|| "unknown".to_owned(), |t| shown(t).to_string())
        ),
    }
    Ok(ExitCode::from(exit::OK))
}

pub(crate) fn load(catalog: &Catalog, name: &str) -> anyhow::Result<Policy> {
    load_if_present(catalog, name)?.ok_or_else(|| not_found(name).into())
}

/// The policy `name`, `None` when the catalog has none of that name.
fn load_if_present(catalog: &Catalog, name: &str) -> anyhow::Result<Option<Policy>> {
    let Some(entry) = catalog.entry(Kind::Policy, name)? else {
        return Ok(None);
    };
    serde_json::from_str(entry.value.get()).map(Some).map_err(|e| {
        UsageError(format!(
            "the catalog's policy {name:?} is not a policy Cairn can run ({e}); apply it again with `cairn policy apply FILE`"
        ))
        .into()
    })
}

/// Reads a policy file into a policy, with its relative paths made absolute.
/// The text of a policy or binding file (`-`: standard input) and the directory its relative
/// paths are relative to (the file's, or the current one).
pub(crate) fn read_file(
    file: &Path,
    bad: impl Fn(String) -> UsageError,
) -> anyhow::Result<(String, PathBuf)> {
    if file.as_os_str() == "-" {
        let text = std::io::read_to_string(std::io::stdin()).context("reading standard input")?;
        return Ok((
            text,
            std::env::current_dir().context("the current directory")?,
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|e| bad(e.to_string()))?;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    let base = std::path::absolute(dir.unwrap_or(Path::new(".")))
        .map_err(|e| bad(format!("cannot resolve its directory: {e}")))?;
    Ok((text, base))
}

/// `path` made absolute against `base` ([`crate::absolute_path`]).
pub(crate) fn absolute(base: &Path, path: &str) -> String {
    crate::absolute_path(&base.join(path)).display().to_string()
}

/// Secret sources as a file gives them: `env:VAR`, or `file:PATH` made absolute against
/// `base`. A value is refused: the catalog travels in DR exports.
pub(crate) fn secret_sources(
    secrets: BTreeMap<String, String>,
    base: &Path,
) -> Result<BTreeMap<String, String>, String> {
    secrets
        .into_iter()
        .map(|(name, source)| match source.split_once(':') {
            Some(("file", path)) => Ok((name, format!("file:{}", absolute(base, path)))),
            Some(("env", _)) => Ok((name, source)),
            _ => Err(format!(
                "secret {name}: {} is not env:VAR or file:PATH (the catalog never holds a secret's value: it travels in DR exports)",
                crate::shown_source(&source)
            )),
        })
        .collect()
}

/// A retention as a file writes it: the counts, and `within` as a duration with its units
/// (`30d`, `12h`, `90m` minutes, `6mo` and `1y` calendar months and years). A bare number is
/// refused: the catalog keeps seconds, and `within: 30` meant as days kept 30 seconds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    #[serde(default)]
    last: u32,
    #[serde(default)]
    hourly: u32,
    #[serde(default)]
    daily: u32,
    #[serde(default)]
    weekly: u32,
    #[serde(default)]
    monthly: u32,
    #[serde(default)]
    yearly: u32,
    #[serde(default)]
    within: Option<Within>,
}

/// What a file may give as `within`: text is parsed, a number refused with the reason.
#[derive(Deserialize)]
#[serde(untagged)]
enum Within {
    Text(String),
    Number(u64),
}

impl RetentionFile {
    fn into_retention(self) -> Result<Retention, String> {
        let (months, within) = match self.within {
            None => (0, 0),
            // As files written for earlier releases give it (`90m` minutes): a file applied
            // again must mean what it did.
            Some(Within::Text(t)) => {
                let parsed = Retention::parse_within_legacy(&t)
                    .map_err(|e| format!("retention within: {e}"))?;
                // Kept for such files, but said: restic (and `cairn repo forget`) read months.
                if t.split(|c: char| !c.is_ascii_alphabetic())
                    .any(|u| u == "m")
                {
                    errln!(
                        "cairn: warning: retention within {t:?}: `m` is read as minutes here (restic \
                         reads months); write `min` or `mo` to say which"
                    );
                }
                parsed
            }
            Some(Within::Number(n)) => {
                return Err(format!(
                    "retention within {n}: give its unit ({n}d, {n}h, {n}min or {n}mo): a \
                     number alone is ambiguous"
                ));
            }
        };
        Ok(Retention::new()
            .last(self.last)
            .hourly(self.hourly)
            .daily(self.daily)
            .weekly(self.weekly)
            .monthly(self.monthly)
            .yearly(self.yearly)
            .within_months(months)
            .within(within))
    }
}

/// Reads a policy's or preset's `retention` as [`RetentionFile`] says.
pub(crate) fn retention_of_file<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Retention>, D::Error> {
    let file: Option<RetentionFile> = Option::deserialize(d)?;
    file.map(|f| f.into_retention().map_err(serde::de::Error::custom))
        .transpose()
}

/// The YAML documents of `file` (`-`: standard input; several may be separated by `---`), or of
/// every `.yaml`/`.yml` file of a directory in name order, each with the directory its relative
/// paths are relative to. Two of the same name are refused: which one would win is unclear.
pub(crate) fn read_documents<T: serde::de::DeserializeOwned>(
    file: &Path,
    what: &str,
    hint: &str,
    name: impl Fn(&T) -> &str,
) -> anyhow::Result<Vec<Document<T>>> {
    let files = if file.is_dir() {
        let entries: Vec<PathBuf> = std::fs::read_dir(file)
            .with_context(|| format!("cannot read the directory {}", file.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        let yaml = |p: &PathBuf| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| x.eq_ignore_ascii_case("yaml") || x.eq_ignore_ascii_case("yml"))
        };
        let mut files: Vec<PathBuf> = entries
            .iter()
            .filter(|p| yaml(p) && !p.is_dir())
            .cloned()
            .collect();
        files.sort();
        // One level, as `kubectl apply -f DIR` reads: what is below is said, not read.
        let mut below: Vec<String> = entries
            .iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        below.sort();
        let not_read = match below.as_slice() {
            [] => String::new(),
            dirs => format!(
                "; its subdirectories ({}) are not read: apply each of them",
                dirs.join(", ")
            ),
        };
        if files.is_empty() {
            return Err(UsageError(format!(
                "{}: no .yaml or .yml file in this directory{not_read}",
                file.display()
            ))
            .into());
        }
        if !not_read.is_empty() {
            errln!("cairn: note: {}{not_read}", file.display());
        }
        files
    } else {
        vec![file.to_owned()]
    };
    let mut docs: Vec<Document<T>> = Vec::new();
    for file in &files {
        let bad = |msg: String| UsageError(format!("{what} {}: {msg}", file.display()));
        let (text, base) = read_file(file, bad)?;
        let many = text.lines().any(|l| l.trim_end() == "---");
        let before = docs.len();
        for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let parsed = Option::<T>::deserialize(doc).map_err(|e| {
                let at = if many {
                    format!("document {}: ", i + 1)
                } else {
                    String::new()
                };
                bad(format!("{at}{e} ({hint})"))
            })?;
            // An empty document (a trailing `---`, one of comments only) holds nothing.
            let Some(parsed) = parsed else {
                continue;
            };
            if let Some(first) = docs.iter().find(|d| name(&d.value) == name(&parsed)) {
                return Err(bad(format!(
                    "a second {what} named {:?} (the first is in {}): give each its own name",
                    name(&parsed),
                    first.file.display()
                ))
                .into());
            }
            docs.push(Document {
                value: parsed,
                file: file.clone(),
                base: base.clone(),
            });
        }
        if docs.len() == before {
            return Err(bad(format!("holds no {what}: it is empty, or comments only")).into());
        }
    }
    Ok(docs)
}

/// One YAML document of a policy or binding file.
pub(crate) struct Document<T> {
    pub(crate) value: T,
    /// The file it is in.
    pub(crate) file: PathBuf,
    /// The directory its relative paths are relative to.
    pub(crate) base: PathBuf,
}

/// The policies of a file or directory (see [`read_documents`]), with their relative paths made
/// absolute.
fn read_policy_files(file: &Path, home: &Home) -> anyhow::Result<Vec<Policy>> {
    let presets = crate::preset::presets_in(&crate::catalog::open(home)?)?;
    read_documents::<PolicyFile>(
        file,
        "policy",
        "a policy has name, blueprint, target, workloads or selector, frequency and retention \
         (or a preset); examples/policies/hello.yaml shows every field",
        |f| &f.name,
    )?
    .into_iter()
    .map(|doc| policy_of(doc, &presets))
    .collect()
}

/// The policy a Kubernetes `Policy` resource's spec describes (`operator.rs`): a policy
/// file's fields but the name, with `target` `kube` when absent.
pub(crate) fn policy_of_spec(
    name: &str,
    spec: serde_json::Value,
    what: &str,
    base: &Path,
    presets: &BTreeMap<String, PolicyPreset>,
) -> anyhow::Result<Policy> {
    let doc = crate::operator::document(name, spec, &[("target", "kube")], what, base)?;
    policy_of(doc, presets)
}

/// `export` as the catalog keeps it: a repository path (not a URL) and files made absolute
/// against `base`, like the rest of a file's paths; `None` for an empty `export: {}`.
pub(crate) fn export_of(e: PolicyExport, base: &Path) -> Option<PolicyExport> {
    let absolute = |p: &str| absolute(base, p);
    // `export: {}` is no export: the policy's points stay in the home's repository, as
    // `dr enable` warns of them.
    if e == PolicyExport::default() {
        return None;
    }
    Some(PolicyExport {
        repo: e
            .repo
            .map(|r| if crate::is_url(&r) { r } else { absolute(&r) }),
        profile_file: e.profile_file.as_deref().map(absolute),
        passphrase_file: e.passphrase_file.as_deref().map(absolute),
        key_file: e.key_file.as_deref().map(absolute),
        profile: e.profile,
    })
}

/// The policy a document of a policy file describes; a `preset:` is looked up in `presets`.
fn policy_of(
    doc: Document<PolicyFile>,
    presets: &BTreeMap<String, PolicyPreset>,
) -> anyhow::Result<Policy> {
    let Document {
        value: f,
        file,
        base,
    } = doc;
    let bad = |msg: String| UsageError(format!("policy {}: {msg}", file.display()));
    // Stored and shown as the operator would write it, not as the file's relative path joined.
    let target = match f.target.strip_prefix("local:") {
        Some(path) => format!(
            "local:{}",
            crate::normalized_path(&base.join(path)).display()
        ),
        None => f.target,
    };
    let secrets = secret_sources(f.secrets, &base).map_err(bad)?;
    let export = f.export.and_then(|e| export_of(e, &base));
    let (frequency, retention, export, prune) = match &f.preset {
        Some(name) => {
            let given: Vec<&str> = [
                ("frequency", f.frequency.is_some()),
                ("retention", f.retention.is_some()),
                ("export", export.is_some()),
                ("prune", f.prune.is_some()),
            ]
            .into_iter()
            .filter_map(|(field, set)| set.then_some(field))
            .collect();
            if !given.is_empty() {
                let verb = if given.len() == 1 { "comes" } else { "come" };
                return Err(bad(format!(
                    "{} {verb} from preset {name}: leave {} out, or drop `preset:`",
                    given.join(", "),
                    if given.len() == 1 { "it" } else { "them" }
                ))
                .into());
            }
            let preset = presets.get(name).ok_or_else(|| {
                bad(format!(
                    "no preset named {name:?}; `cairn preset list` lists them, `cairn preset \
                     apply FILE` adds one"
                ))
            })?;
            (
                preset.frequency.clone(),
                preset.retention,
                preset.export.clone(),
                preset.prune.clone(),
            )
        }
        None => (
            f.frequency
                .ok_or_else(|| bad("no frequency: give one, or a `preset:`".into()))?,
            f.retention
                .ok_or_else(|| bad("no retention: give one, or a `preset:`".into()))?,
            export,
            f.prune,
        ),
    };
    Ok(Policy {
        name: f.name,
        blueprint: f.blueprint,
        target,
        namespace: f.namespace.unwrap_or_else(|| "default".to_owned()),
        workloads: f.workloads,
        selector: f.selector,
        frequency,
        retention,
        params: texts(f.params),
        grants: f.grants,
        secrets,
        timeout: f.timeout,
        snapshot_class: f.snapshot_class,
        export,
        prune,
        preset: f.preset,
        concurrency: f.concurrency,
        paused: f.paused,
        origin: None,
        applied: Timestamp::now(),
        last_run: None,
    })
}

/// The most workloads a policy backs up at once.
const MAX_CONCURRENCY: u32 = 32;

/// Whether `name` can name a policy or a binding: a DNS label.
pub(crate) fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err("the name must be 1 to 63 lowercase letters, digits and dashes, starting with a letter or digit".into())
    }
}

/// Refuses a service level (a policy's or a preset's) that could not run: its frequency,
/// retention, prune frequency and export location.
pub(crate) fn check_service(
    frequency: &str,
    retention: &Retention,
    prune: Option<&str>,
    export: Option<&PolicyExport>,
    home: &Home,
) -> Result<(), String> {
    Schedule::parse(frequency).map_err(|e| format!("frequency {e}"))?;
    if let Some(p) = prune.filter(|p| *p != "never") {
        Schedule::parse(p).map_err(|e| format!("prune {e}, or never"))?;
    }
    if *retention == Retention::default() {
        return Err("its retention keeps nothing: set at least one of last, hourly, daily, weekly, monthly, yearly, within (e.g. `retention: {last: 7}`)".into());
    }
    // An empty block (a template's `export: {}`) is none ([`export_of`]); one with a key and
    // nowhere to use it is a mistake.
    if let Some(export) = export
        && export.repo.is_none()
        && export.profile.is_none()
        && export.profile_file.is_none()
    {
        return Err(
            "export names no repository: give it `repo:`, `profile:` or `profile_file:` \
             (without `export:`, restore points go to the home's repository, and are lost with \
             the home)"
                .into(),
        );
    }
    if let Some(export) = export
        && let Some(profile) = &export.profile
    {
        if export.repo.is_some() || export.profile_file.is_some() {
            return Err(format!(
                "export names the location profile {profile} and a repository too: keep one"
            ));
        }
        crate::profile::load(home, profile).map_err(|e| format!("export: {e}"))?;
    }
    // Read now, so a wrong path fails here and not at night.
    if let Some(file) = export.and_then(|e| e.profile_file.as_deref()) {
        crate::repo::load_profile(std::path::Path::new(file))
            .map_err(|e| format!("export: {}", crate::one_line(&e)))?;
    }
    Ok(())
}

/// Refuses a policy that could not run, naming the field and what to do.
pub(crate) async fn check(policy: &Policy, engine: &Engine, home: &Home) -> anyhow::Result<()> {
    let bad = |msg: String| -> anyhow::Error {
        UsageError(format!("policy {:?}: {msg}", policy.name)).into()
    };
    valid_name(&policy.name).map_err(bad)?;
    check_service(
        &policy.frequency,
        &policy.retention,
        policy.prune.as_deref(),
        policy.export.as_ref(),
        home,
    )
    .map_err(bad)?;
    if !(1..=MAX_CONCURRENCY).contains(&concurrency(policy)) {
        return Err(bad(format!(
            "concurrency {}: back up 1 to {MAX_CONCURRENCY} workloads at once",
            concurrency(policy)
        )));
    }
    if policy.workloads.is_empty() && policy.selector.is_empty() {
        return Err(bad(
            "it selects no workloads: list names or patterns (`workloads: [db]`, `[db-*]`, `['*']`), \
             or labels (`selector: {app: db}`)"
                .into(),
        ));
    }
    if let Some(t) = &policy.timeout {
        let timeout = humantime::parse_duration(t)
            .map_err(|e| bad(format!("timeout {t:?}: {e} (e.g. 30m, 2h)")))?;
        if timeout.is_zero() || timeout > cairn_engine::MAX_DEADLINE {
            return Err(bad(format!(
                "timeout {t:?} is not between 1s and {} (the longest a phase may run)",
                humantime::format_duration(cairn_engine::MAX_DEADLINE)
            )));
        }
    }
    match &policy.blueprint {
        Some(blueprint) => {
            let secrets: Vec<&str> = policy.secrets.keys().map(String::as_str).collect();
            check_use(
                engine,
                home,
                blueprint,
                &policy.grants,
                &policy.params,
                &secrets,
            )
            .await
            .map_err(|e| bad(e.to_string()))?;
        }
        None if !policy.params.is_empty()
            || !policy.grants.is_empty()
            || !policy.secrets.is_empty() =>
        {
            return Err(bad(
                "it names no blueprint, so each workload's comes from a blueprint binding with its \
                 params, grants and secrets: move them to the binding (`cairn binding apply FILE`), \
                 or name the blueprint"
                    .into(),
            ));
        }
        None => {}
    }
    // A local target's inventory is read now, so a wrong path or namespace fails here and
    // not at night; a selection that matches nothing there is said.
    if policy.target.starts_with("local:") {
        let cluster =
            crate::run::open_target(&policy.target, policy.snapshot_class.as_deref(), home)
                .await
                .map_err(|e| bad(e.to_string()))?;
        let present = workloads_of(cluster.as_ref(), &policy.namespace)
            .await
            .map_err(|e| bad(crate::one_line(&e)))?;
        let matched = present.iter().any(|w| {
            selects(
                &policy.workloads,
                &policy.selector,
                &w.reference.name,
                &w.labels,
            )
        });
        if !matched {
            let names: Vec<&str> = present.iter().map(|w| w.reference.name.as_str()).collect();
            errln!(
                "warning: policy {} selects no workload of namespace {} ({}; it has: {}): its \
                 runs fail until one matches",
                policy.name,
                policy.namespace,
                selection(&policy.workloads, &policy.selector),
                crate::listed(names)
            );
        }
    } else if policy.target != "kube" && !policy.target.starts_with("kube:") {
        return Err(bad(format!(
            "target {:?}: use local:INVENTORY.yaml, kube or kube:CONTEXT",
            policy.target
        )));
    }
    Ok(())
}

/// Refuses a scheduled use (a policy's, a binding's) of the registered `blueprint` with
/// `grants` and parameters named `params` that could not run or clean up after itself.
pub(crate) async fn check_use(
    engine: &Engine,
    home: &Home,
    blueprint: &str,
    grants: &[String],
    params: &BTreeMap<String, String>,
    secrets: &[&str],
) -> anyhow::Result<()> {
    let bad = |msg: String| -> anyhow::Error { UsageError(msg).into() };
    let grants = crate::run::parse_capabilities(grants, "grants:")?;
    // Without the grant the blueprint cannot read them: the run would go on without them.
    if !secrets.is_empty() && !grants.contains(&Capability::Secrets) {
        return Err(bad(format!(
            "secrets {} are given but not the `secrets` grant, without which the blueprint \
             cannot read them: add `secrets` to grants",
            secrets.join(", ")
        )));
    }
    let (blueprint, record) = crate::blueprint::registered(engine, home, blueprint).await?;
    crate::blueprint::check_allowed(&record, &grants)?;
    let d = blueprint.description();
    if !d.has_action("backup") {
        return Err(bad(format!(
            "blueprint {} has no backup action (it has: {})",
            d.name,
            d.actions
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // Retention removes a point's exports itself, but only the blueprint knows its volume
    // snapshots: without a delete action they would outlive the points that name them.
    if d.capabilities.contains(&Capability::Volumes) && !d.has_action("delete") {
        return Err(bad(format!(
            "blueprint {} takes volume snapshots but has no delete action, so retention could not \
             remove them; give it a delete action, or back up with `cairn run` and delete by hand",
            d.name
        )));
    }
    // Blueprints declare capabilities for all their actions together, so a policy may grant
    // fewer (those its backup and delete need); it may not grant what is never used.
    let declared: Vec<String> = d
        .capabilities
        .iter()
        .filter(|c| **c != Capability::Catalog)
        .map(ToString::to_string)
        .collect();
    if let Some(extra) = grants.iter().find(|c| !d.capabilities.contains(c)) {
        return Err(bad(format!(
            "it grants {extra}, which blueprint {} does not declare (it declares: {})",
            d.name,
            crate::listed(&declared)
        )));
    }
    if grants.is_empty() && !declared.is_empty() {
        return Err(bad(format!(
            "it grants nothing, and blueprint {} declares {}: grant those its backup needs",
            d.name,
            declared.join(", ")
        )));
    }
    if let Some(param) = params
        .keys()
        .find(|p| !d.parameters.iter().any(|q| &q.name == *p))
    {
        let known: Vec<String> = d.parameters.iter().map(|p| p.name.clone()).collect();
        return Err(bad(format!(
            "blueprint {} has no parameter {param:?} (it has: {})",
            d.name,
            crate::listed(&known)
        )));
    }
    // Checked as the backup will check them, so a bad value fails now, not at night.
    let given: Vec<(String, String)> = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    cairn_engine::check_params(&d.parameters, &given)
        .map_err(|e| bad(format!("blueprint {}: {e}", d.name)))?;
    Ok(())
}

/// A policy as the text output shows it: its record in YAML, its retention as a policy file
/// gives it (the rules that are on; `within`, seconds in the catalog, as a duration).
/// A policy as YAML, with when it was applied or (`applied` false, for one not stored)
/// without.
fn policy_text(policy: &Policy, applied: bool) -> anyhow::Result<String> {
    // A YAML value keeps the record's order of fields.
    let mut value = serde_norway::to_value(policy)?;
    if !applied && let serde_norway::Value::Mapping(fields) = &mut value {
        fields.remove("applied");
    }
    if let Some(serde_norway::Value::Mapping(rules)) = value.get_mut("retention") {
        rules.retain(|_, n| n.as_u64() != Some(0));
        rules.remove("within_months");
        if policy.retention.within > 0 || policy.retention.within_months > 0 {
            rules.insert(
                "within".into(),
                serde_norway::Value::String(policy.retention.within_text()),
            );
        }
    }
    Ok(serde_norway::to_string(&value)?.trim_end().to_owned())
}

/// A time as the text output shows it: to the second.
pub(crate) fn shown(t: Timestamp) -> Timestamp {
    t.round(jiff::Unit::Second).unwrap_or(t)
}

/// When a policy runs next: if it never ran, at once on an interval and at the first matching
/// time on a cron schedule; never while paused; a quarter of its period after a failed run (at
/// least a minute, at most an hour, and no later than its next slot), so that a passing fault
/// does not cost a whole period of backups.
pub(crate) fn next_run(policy: &Policy) -> Option<Timestamp> {
    if policy.paused {
        return None;
    }
    let schedule = Schedule::parse(&policy.frequency).unwrap_or(Schedule::Every(3_600));
    Some(match &policy.last_run {
        None => schedule.first(policy.applied),
        Some(run) if !run.succeeded => {
            let retry = (schedule.period_secs(run.started) / 4).clamp(60, 3_600);
            let retry = jiff::SignedDuration::from_secs(i64::try_from(retry).unwrap_or(3_600));
            let retry = run.started.checked_add(retry).unwrap_or(run.started);
            retry.min(schedule.next_due(run.started))
        }
        Some(run) => schedule.next_due(run.started),
    })
}

/// A policy as `cairn policy list` shows it: readable, or why not.
#[derive(Serialize)]
struct Listed {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<Policy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_run: Option<Timestamp>,
    /// A run in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    running: Option<Running>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unreadable: Option<String>,
}

impl Listed {
    fn of(home: &Home, key: &str, parsed: serde_json::Result<Policy>) -> Self {
        match parsed {
            Ok(policy) => Self {
                name: key.to_owned(),
                next_run: next_run(&policy),
                running: in_progress(home, key),
                policy: Some(policy),
                unreadable: None,
            },
            Err(e) => Self {
                name: key.to_owned(),
                policy: None,
                next_run: None,
                running: None,
                unreadable: Some(format!(
                    "{e}; apply it again with `cairn policy apply FILE`"
                )),
            },
        }
    }

    fn line(&self) -> String {
        let Some(p) = &self.policy else {
            return format!(
                "{:<24} unreadable: {}",
                self.name,
                self.unreadable.as_deref().unwrap_or("")
            );
        };
        let next = self
            .next_run
            .map_or_else(|| "paused".to_owned(), |t| format!("next {}", shown(t)));
        let last = match &p.last_run {
            None => "never ran".to_owned(),
            Some(r) if r.succeeded && !r.errors.is_empty() => {
                format!("last {} ok, with errors", shown(r.started))
            }
            Some(r) if r.succeeded => format!("last {} ok", shown(r.started)),
            Some(r) => format!("last {} FAILED", shown(r.started)),
        };
        let last = match &self.running {
            None => last,
            Some(Running { since: Some(t) }) => format!("running since {} ({last})", shown(*t)),
            Some(Running { since: None }) => format!("running ({last})"),
        };
        // Where its settings come from, when not from `policy apply` alone.
        let from: String = [
            p.preset.as_deref().map(|n| format!("preset {n}")),
            p.origin.as_deref().map(|o| format!("kept from {o}")),
        ]
        .into_iter()
        .flatten()
        .map(|f| format!("  ({f})"))
        .collect();
        format!(
            "{:<24} {:<12} {:<10} {}: {}  {next}  {last}{from}",
            p.name,
            p.blueprint.as_deref().unwrap_or("(bindings)"),
            p.frequency,
            p.namespace,
            selection(&p.workloads, &p.selector)
        )
    }
}

/// What one run of a policy did.
#[derive(Debug, Serialize)]
pub(crate) struct Outcome {
    policy: String,
    #[serde(flatten)]
    pub(crate) run: PolicyRun,
    /// Per workload: the restore point made, or the error.
    workloads: Vec<WorkloadOutcome>,
    /// What retention did, or why it did not run.
    retention: RetentionOutcome,
}

#[derive(Debug, Serialize)]
struct WorkloadOutcome {
    workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    restore_point: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl WorkloadOutcome {
    /// Its error as the run's errors list it.
    fn failure(&self) -> Option<String> {
        self.error
            .as_ref()
            .map(|e| format!("{}: {e}", self.workload))
    }
}

#[derive(Debug, Default, Serialize)]
struct RetentionOutcome {
    /// Points kept: those the rules keep, and those they would remove that could not be
    /// removed (protected, or failing).
    kept: usize,
    /// Of those kept, points the rules would remove that the repository's protection period
    /// keeps: removed by a later run once it has passed, which is not a failure.
    protected: usize,
    removed: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
    /// The prune that followed, when one was due or postponed.
    #[serde(skip_serializing_if = "Option::is_none")]
    prune: Option<PruneOutcome>,
}

/// What the prune after retention did.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
enum PruneOutcome {
    Done {
        packs_deleted: usize,
        bytes_deleted: u64,
        packs_repacked: usize,
    },
    /// Not now: data that removed points held is freed by a later run's prune.
    Postponed { reason: String },
}

impl Outcome {
    pub(crate) fn print(&self) {
        for w in &self.workloads {
            match (&w.restore_point, &w.error) {
                (Some(point), _) => outln!(
                    "{}: backed up {}: restore point {point}",
                    self.policy,
                    w.workload
                ),
                (None, Some(e)) => outln!("{}: backup of {} FAILED: {e}", self.policy, w.workload),
                (None, None) => {}
            }
        }
        // What failed besides the workloads (retention's own errors, say), before what
        // retention then did or why it did nothing.
        for e in self.run.errors.iter().filter(|e| {
            !self
                .workloads
                .iter()
                .any(|w| w.failure().as_ref() == Some(*e))
        }) {
            outln!("{}: {e}", self.policy);
        }
        let r = &self.retention;
        // Retention runs only for the workloads whose backup succeeded.
        let failed: Vec<&str> = self
            .workloads
            .iter()
            .filter(|w| w.restore_point.is_none() && w.error.is_some())
            .map(|w| w.workload.as_str())
            .collect();
        let skipped = r.skipped.clone().or_else(|| {
            (!failed.is_empty() && failed.len() == self.workloads.len())
                .then(|| "no backup succeeded".to_owned())
        });
        match &skipped {
            Some(why) => outln!("{}: retention skipped: {why}", self.policy),
            None => outln!(
                "{}: retention kept {} restore point(s){}, removed {}{}",
                self.policy,
                r.kept,
                match r.protected {
                    0 => String::new(),
                    n => format!(
                        " ({n} of them only while the repository's protection period covers them)"
                    ),
                },
                r.removed.len(),
                match (r.removed.is_empty(), &r.prune) {
                    (true, _) => String::new(),
                    (false, None) => format!(
                        " ({}); `cairn repo prune` frees their data (this policy has prune: never)",
                        r.removed.join(", ")
                    ),
                    (false, Some(_)) => format!(" ({})", r.removed.join(", ")),
                } + &if failed.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; skipped for {}, whose backup failed",
                        crate::listed(&failed)
                    )
                }
            ),
        }
        match &r.prune {
            Some(PruneOutcome::Done {
                packs_deleted,
                bytes_deleted,
                packs_repacked,
            }) => outln!(
                "{}: pruned the repository: {packs_deleted} pack(s) deleted, {} freed, {packs_repacked} repacked",
                self.policy,
                indicatif::HumanBytes(*bytes_deleted)
            ),
            Some(PruneOutcome::Postponed { reason }) => {
                outln!("{}: prune postponed: {reason}", self.policy);
            }
            None => {}
        }
    }
}

/// Everything a run needs that does not change between its workloads.
struct Prepared {
    /// The policy's target, as given.
    target: String,
    cluster: Arc<dyn cairn_cluster::Cluster>,
    exports: Arc<crate::exports::RepoExports>,
    /// The selected workloads by the blueprint that protects them: the policy's, or each
    /// binding's.
    groups: Vec<Group>,
    /// Selected workloads that no binding protects, with why.
    unbound: Vec<(String, String)>,
}

/// Workloads of a run protected by one blueprint, with its request template.
struct Group {
    blueprint: cairn_engine::Blueprint,
    /// Its registration, with what the operator allows it.
    registration: cairn_catalog::Blueprint,
    request: RunRequest,
    workloads: Vec<String>,
    /// The binding it comes from, when the policy names no blueprint.
    binding: Option<String>,
}

impl Prepared {
    /// The execution of an action of this run on `group`'s blueprint, for `policy`, using
    /// `used_point`.
    fn execution<'a>(
        &'a self,
        group: &'a Group,
        home: &'a Home,
        engine: &'a Engine,
        policy: &'a str,
        used_point: Option<&'a str>,
    ) -> Execution<'a> {
        Execution {
            home,
            engine,
            blueprint: &group.blueprint,
            cluster: self.cluster.clone(),
            exports: self.exports.clone(),
            policy: Some(policy),
            used_point,
            target: &self.target,
        }
    }

    /// Every selected workload, bound or not, by name.
    fn workloads(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .groups
            .iter()
            .flat_map(|g| g.workloads.iter().map(String::as_str))
            .chain(self.unbound.iter().map(|(w, _)| w.as_str()))
            .collect();
        all.sort_unstable();
        all
    }
}

/// A run of a policy already going on in another process (`serve` and `policy run`).
#[derive(Debug)]
pub(crate) struct Busy(String);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "policy {} is running in another cairn process; this run is skipped",
            self.0
        )
    }
}

impl std::error::Error for Busy {}

/// How a run of a policy was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Now, whatever its schedule (`cairn policy run`, a Backup resource).
    Now,
    /// As it was due when `serve` read it: only if, read again once its lock is held, it
    /// still is (not deleted, paused, or run meanwhile).
    IfDue,
}

/// A run `serve` found due that did not start: the policy changed while the run waited for
/// its turn (`--jobs`) or its lock.
#[derive(Debug)]
pub(crate) struct Skipped {
    policy: String,
    why: String,
    /// When it is due now, if ever.
    pub(crate) next: Option<Timestamp>,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "policy {} not run: {}", self.policy, self.why)
    }
}

impl std::error::Error for Skipped {}

/// The policy `read` as stored now that its run's lock is held, when it is to run: a run
/// waits (for `serve`'s other runs, `--jobs` at a time, or for the lock), and meanwhile the
/// policy may have been deleted, paused, applied again or run by hand. A run as it was read
/// would back up a paused application or a deleted policy's workloads, with an old
/// definition, or twice.
fn reread(home: &Home, read: &Policy, start: Start) -> anyhow::Result<Policy> {
    let name = &read.name;
    let skipped = |why: String, next| Skipped {
        policy: name.clone(),
        why,
        next,
    };
    let Some(fresh) = load_if_present(&crate::catalog::open(home)?, name)? else {
        return Err(match start {
            Start::Now => not_found(name).into(),
            Start::IfDue => {
                skipped("it was deleted since it was found due".to_owned(), None).into()
            }
        });
    };
    if start == Start::Now {
        return Ok(fresh);
    }
    let now = Timestamp::now();
    match next_run(&fresh) {
        None => {
            return Err(skipped(
                "it was paused since it was found due; `cairn policy resume` runs it again"
                    .to_owned(),
                None,
            )
            .into());
        }
        Some(due) if due > now => {
            let ran = |p: &Policy| p.last_run.as_ref().map(|r| r.started);
            let why = match ran(&fresh) {
                Some(at) if ran(read) != Some(at) => {
                    format!("it ran at {} since it was found due", shown(at))
                }
                _ => "it was applied again since it was found due, and is not due yet".to_owned(),
            };
            return Err(skipped(format!("{why}; next run at {}", shown(due)), Some(due)).into());
        }
        Some(_) => {}
    }
    if fresh.applied != read.applied {
        errln!(
            "cairn: policy {name} was applied again since it was found due; it runs as it is now"
        );
    }
    Ok(fresh)
}

/// The lock file of `policy`'s runs in the home.
fn run_lock(home: &Home, policy: &str) -> PathBuf {
    home.root()
        .join("locks")
        .join(format!("policy-{policy}.lock"))
}

/// Holds the lock of `policy`'s runs in the home while it lives, so that two processes never
/// run (and retain) the same policy at once. It holds the run's start, for listings.
async fn running(home: &Home, policy: &str, started: Timestamp) -> anyhow::Result<std::fs::File> {
    let path = run_lock(home, policy);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A listing holds the lock shared for an instant (`in_progress`): tried again over 100 ms
    // before the policy counts as running elsewhere.
    for _ in 0..5 {
        if let Some(mut file) = hold(&path)? {
            use std::io::Write as _;
            // Only for listings: a run that cannot say when it started still runs.
            let _ = file
                .set_len(0)
                .and_then(|()| file.write_all(started.to_string().as_bytes()));
            return Ok(file);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err(Busy(policy.to_owned()).into())
}

/// Whether a process runs `policy` now, and since when: its run lock is held. The lock is
/// tried shared, never waited for.
fn in_progress(home: &Home, policy: &str) -> Option<Running> {
    let path = run_lock(home, policy);
    let file = std::fs::File::open(&path).ok()?;
    match file.try_lock_shared() {
        Err(std::fs::TryLockError::WouldBlock) => Some(Running {
            since: std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.parse().ok()),
        }),
        _ => None,
    }
}

/// A run in progress, as listings show it.
#[derive(Debug, Serialize)]
struct Running {
    /// When it started, when its lock says.
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<Timestamp>,
}

/// Takes the lock file `path` for as long as the returned file lives; `None` while another
/// process holds it. The operating system drops the lock when the process ends, however.
pub(crate) fn hold(path: &Path) -> anyhow::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot lock {}", path.display())))
        }
    }
}

/// Runs a policy once and records how it went in the policy. An error is returned only when
/// nothing could run (no blueprint, target or repository); a workload's failure is in the
/// outcome.
///
/// The policy is read again once its lock is held (see [`reread`]): `start` says whether it
/// must still be due then ([`Skipped`] when not).
pub(crate) async fn run_policy(
    policy: &Policy,
    start: Start,
    engine: &Engine,
    home: &Home,
    interrupt: &cairn_engine::Interrupt,
) -> anyhow::Result<Outcome> {
    let started = Timestamp::now();
    let _running = running(home, &policy.name, started).await?;
    let policy = &reread(home, policy, start)?;
    let prepared = prepare(policy, engine, home, interrupt).await;
    let outcome = match prepared {
        Ok(prepared) => back_up_and_retain(policy, engine, home, &prepared, started).await,
        Err(e) => Outcome {
            policy: policy.name.clone(),
            run: PolicyRun {
                started,
                finished: Timestamp::now(),
                succeeded: false,
                points: Vec::new(),
                errors: vec![crate::one_line(&e)],
            },
            workloads: Vec::new(),
            retention: RetentionOutcome {
                skipped: Some("nothing ran".to_owned()),
                ..RetentionOutcome::default()
            },
        },
    };
    // Recorded on the policy as it is now: an apply while it ran is kept; a deleted one stays
    // deleted.
    crate::catalog::open(home)?.update_policy(&policy.name, |p| {
        p.last_run = Some(outcome.run.clone());
    })?;
    Ok(outcome)
}

/// The runs of a policy, each stopped by `interrupt`.
async fn prepare(
    policy: &Policy,
    engine: &Engine,
    home: &Home,
    interrupt: &cairn_engine::Interrupt,
) -> anyhow::Result<Prepared> {
    let Selected {
        cluster,
        mut groups,
        unbound,
    } = select(policy, engine, home).await?;
    for group in &mut groups {
        group.request.interrupt = interrupt.clone();
    }
    let select = crate::repo::RepoSelect::of_policy(policy.export.as_ref());
    let exports = crate::run::open_exports(&select, home).await?;
    Ok(Prepared {
        target: policy.target.clone(),
        cluster,
        exports,
        groups,
        unbound,
    })
}

/// The workloads a policy selects on its target, grouped by the blueprint that protects each.
struct Selected {
    cluster: Arc<dyn cairn_cluster::Cluster>,
    groups: Vec<Group>,
    unbound: Vec<(String, String)>,
}

/// One workload of a plan: what a run would back up it with.
#[derive(Serialize)]
struct Planned {
    workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    blueprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Planned {
    fn line(&self) -> String {
        match (&self.blueprint, &self.binding, &self.error) {
            (Some(b), Some(binding), _) => {
                format!("{:<24} with {b} (binding {binding})", self.workload)
            }
            (Some(b), None, _) => format!("{:<24} with {b}", self.workload),
            (_, _, e) => format!(
                "{:<24} NOT PROTECTED: {}",
                self.workload,
                e.as_deref().unwrap_or("")
            ),
        }
    }
}

impl Selected {
    fn plan(&self) -> Vec<Planned> {
        let mut plan: Vec<Planned> = self
            .groups
            .iter()
            .flat_map(|g| {
                g.workloads.iter().map(|w| Planned {
                    workload: w.clone(),
                    blueprint: Some(g.registration.name.clone()),
                    binding: g.binding.clone(),
                    error: None,
                })
            })
            .chain(self.unbound.iter().map(|(w, why)| Planned {
                workload: w.clone(),
                blueprint: None,
                binding: None,
                error: Some(why.clone()),
            }))
            .collect();
        plan.sort_by(|a, b| a.workload.cmp(&b.workload));
        plan
    }
}

/// The workloads of `namespace` on `cluster`.
async fn workloads_of(
    cluster: &dyn cairn_cluster::Cluster,
    namespace: &str,
) -> anyhow::Result<Vec<cairn_cluster::Workload>> {
    cluster
        .workloads(namespace)
        .await
        .with_context(|| format!("cannot list the workloads of namespace {namespace}"))
}

async fn select(policy: &Policy, engine: &Engine, home: &Home) -> anyhow::Result<Selected> {
    let cluster =
        crate::run::open_target(&policy.target, policy.snapshot_class.as_deref(), home).await?;
    let present = workloads_of(cluster.as_ref(), &policy.namespace).await?;
    let names: BTreeSet<&str> = present.iter().map(|w| w.reference.name.as_str()).collect();
    let mut selected: Vec<&cairn_cluster::Workload> = present
        .iter()
        .filter(|w| {
            selects(
                &policy.workloads,
                &policy.selector,
                &w.reference.name,
                &w.labels,
            )
        })
        .collect();
    selected.sort_by(|a, b| a.reference.name.cmp(&b.reference.name));
    if selected.is_empty() {
        return Err(UsageError(format!(
            "no workload of namespace {} matches {}; it has: {}",
            policy.namespace,
            selection(&policy.workloads, &policy.selector),
            crate::listed(names)
        ))
        .into());
    }
    let mut limits = Limits::default();
    if let Some(t) = &policy.timeout {
        limits.deadline =
            humantime::parse_duration(t).map_err(|e| UsageError(format!("timeout {t:?}: {e}")))?;
    }
    let template = |params: &BTreeMap<String, String>,
                    grants: &[String],
                    secrets: &BTreeMap<String, String>|
     -> anyhow::Result<RunRequest> {
        let sources: Vec<String> = secrets
            .iter()
            .map(|(name, source)| format!("{name}={source}"))
            .collect();
        Ok(RunRequest {
            action: "backup".to_owned(),
            namespace: policy.namespace.clone(),
            workload: None,
            params: params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            grants: crate::run::parse_grants(grants)?,
            secrets: crate::run::parse_secrets_of(&sources, "secrets:")?,
            artifacts: Vec::new(),
            point_values: Vec::new(),
            limits: limits.clone(),
            ..RunRequest::default()
        })
    };
    let group = async |blueprint: &str,
                       request: RunRequest,
                       workloads: Vec<String>,
                       binding: Option<String>| {
        let (blueprint, registration) =
            crate::blueprint::registered(engine, home, blueprint).await?;
        // The operator may have narrowed what the blueprint may do since it was applied.
        crate::blueprint::check_allowed(&registration, &request.grants)?;
        anyhow::Ok(Group {
            blueprint,
            registration,
            request,
            workloads,
            binding,
        })
    };
    let mut groups = Vec::new();
    let mut unbound = Vec::new();
    match &policy.blueprint {
        Some(blueprint) => {
            let request = template(&policy.params, &policy.grants, &policy.secrets)?;
            let workloads = selected.iter().map(|w| w.reference.name.clone()).collect();
            groups.push(group(blueprint, request, workloads, None).await?);
        }
        None => {
            let bindings = crate::binding::bindings(&crate::catalog::open(home)?)?;
            let mut bound: BTreeMap<&str, (&BlueprintBinding, Vec<String>)> = BTreeMap::new();
            for w in &selected {
                let name = w.reference.name.clone();
                match bindings
                    .iter()
                    .find(|b| crate::binding::binds(b, &policy.namespace, &name, &w.labels))
                {
                    Some(b) => bound.entry(&b.name).or_insert((b, Vec::new())).1.push(name),
                    None => unbound.push((
                        name.clone(),
                        format!(
                            "no blueprint binding selects workload {name} of namespace {}{}: add one \
                             with `cairn binding apply FILE`, or name a blueprint in the policy",
                            policy.namespace,
                            crate::binding::shown_labels(&w.labels)
                        ),
                    )),
                }
            }
            for (b, workloads) in bound.into_values() {
                let made = match template(&b.params, &b.grants, &b.secrets) {
                    Ok(request) => {
                        group(
                            &b.blueprint,
                            request,
                            workloads.clone(),
                            Some(b.name.clone()),
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                match made {
                    Ok(g) => groups.push(g),
                    Err(e) => unbound.extend(
                        workloads
                            .into_iter()
                            .map(|w| (w, format!("binding {}: {}", b.name, crate::one_line(&e)))),
                    ),
                }
            }
        }
    }
    Ok(Selected {
        cluster,
        groups,
        unbound,
    })
}

/// `cairn policy restore`: what it adds to the policy.
#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// The workload to restore.
    #[arg(long, short = 'w')]
    workload: String,
    /// The restore point (its id or a unique prefix); default: the policy's newest for the
    /// workload.
    #[arg(long, value_name = "ID")]
    point: Option<String>,
    /// Restore into this workload of the policy's namespace instead (a clone to test a
    /// restore on, or a replacement), with the blueprint that protects the backed-up one.
    #[arg(long, value_name = "WORKLOAD")]
    into: Option<String>,
    /// Restore into this namespace of the policy's target instead (a clone namespace), into
    /// the workload of the same name or `--into`'s.
    #[arg(long, value_name = "NAMESPACE")]
    into_namespace: Option<String>,
    /// Capabilities the restore needs beyond the policy's grants (repeatable or
    /// comma-separated), e.g. import, scale, workloads.
    #[arg(long = "grant", short = 'g', value_name = "CAP", value_delimiter = ',')]
    grants: Vec<String>,
    /// A parameter for the restore, NAME=VALUE, over the policy's (repeatable), and over
    /// --params-of.
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Whose parameters a point made with other parameters than the policy gives now is
    /// restored with (without it, such a restore is refused): the point's, to restore it as it
    /// was made, or the policy's, as it is now (a new `host` or timeout).
    #[arg(long, value_enum, value_name = "WHOSE")]
    params_of: Option<ParamsOf>,
}

/// Whose parameters a restore takes where the point's and its policy's differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ParamsOf {
    /// The restore point's: those it was made with.
    Point,
    /// The policy's, as it is now.
    Policy,
}

/// A `Restore` resource's spec (`operator.rs`): the policy, and `cairn policy restore`'s
/// flags.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestoreSpec {
    pub(crate) policy: String,
    workload: String,
    #[serde(default)]
    point: Option<String>,
    #[serde(default)]
    into: Option<String>,
    #[serde(default)]
    into_namespace: Option<String>,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    params: BTreeMap<String, Scalar>,
    #[serde(default)]
    params_of: Option<ParamsOf>,
}

impl RestoreSpec {
    /// The namespace it restores into, when not the policy's.
    pub(crate) fn target_namespace(&self) -> Option<&str> {
        self.into_namespace.as_deref()
    }
}

impl From<RestoreSpec> for RestoreArgs {
    fn from(spec: RestoreSpec) -> Self {
        RestoreArgs {
            workload: spec.workload,
            point: spec.point,
            into: spec.into,
            into_namespace: spec.into_namespace,
            grants: spec.grants,
            params: texts(spec.params)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            params_of: spec.params_of,
        }
    }
}

/// What a restore did: the point, the workload it restored (`NAMESPACE/NAME`), and why it
/// failed.
#[derive(Debug)]
pub(crate) struct Restored {
    pub(crate) point: String,
    pub(crate) workload: String,
    pub(crate) error: Option<String>,
}

impl RestoreArgs {
    async fn run(
        self,
        policy: &Policy,
        engine: &Engine,
        home: &Home,
        output: Output,
        interrupt: &cairn_engine::Interrupt,
    ) -> anyhow::Result<ExitCode> {
        let restored = self
            .restore(policy, engine, home, output, interrupt)
            .await?;
        let Some(error) = restored.error else {
            if output == Output::Text {
                outln!(
                    "restored {} from restore point {}",
                    restored.workload,
                    restored.point
                );
            }
            return Ok(ExitCode::from(exit::OK));
        };
        let (how, code) = if interrupt.is_triggered() {
            ("was interrupted", exit::INTERRUPTED)
        } else {
            ("failed", exit::FAILED)
        };
        if output == Output::Text {
            errln!(
                "cairn: the restore of {} from {} {how}: {error}",
                restored.workload,
                restored.point,
            );
        }
        Ok(ExitCode::from(code))
    }

    /// Restores the point; a refusal before anything ran is an error, a failed restore is
    /// [`Restored::error`].
    pub(crate) async fn restore(
        self,
        policy: &Policy,
        engine: &Engine,
        home: &Home,
        output: Output,
        interrupt: &cairn_engine::Interrupt,
    ) -> anyhow::Result<Restored> {
        let prepared = prepare(policy, engine, home, interrupt).await?;
        let Some(group) = prepared
            .groups
            .iter()
            .find(|g| g.workloads.contains(&self.workload))
        else {
            let why = match prepared.unbound.iter().find(|(w, _)| *w == self.workload) {
                Some((_, why)) => why.clone(),
                None => format!(
                    "policy {} protects {}, not {}",
                    policy.name,
                    prepared.workloads().join(", "),
                    self.workload
                ),
            };
            return Err(UsageError(why).into());
        };
        let catalog = crate::catalog::open(home)?;
        let point = match &self.point {
            Some(id) => crate::catalog::point_by_prefix(
                &catalog,
                id,
                "--point ",
                &format!("`cairn policy show {}` lists the policy's", policy.name),
            )?,
            None => {
                let points = catalog.restore_points()?;
                let held: BTreeSet<&str> = points.iter().map(|p| p.id.as_str()).collect();
                let missing: Vec<&str> = policy
                    .last_run
                    .iter()
                    .flat_map(|r| &r.points)
                    .map(String::as_str)
                    .filter(|id| !held.contains(id))
                    .collect();
                let newest = points
                    .iter()
                    .filter(|p| {
                        p.policy.as_deref() == Some(&policy.name)
                            && p.target.namespace == policy.namespace
                            && p.target.workload.as_deref() == Some(&self.workload)
                            && p.partly_deleted.is_none()
                    })
                    .max_by_key(|p| p.created)
                    .cloned();
                match newest {
                    Some(point) => point,
                    None => {
                        return Err(no_point(
                            policy,
                            &self.workload,
                            &missing,
                            catalog.restore_state()?.is_some(),
                        )
                        .into());
                    }
                }
            }
        };
        restorable(&point)?;
        if point.policy.as_deref() != Some(&policy.name)
            || point.target.workload.as_deref() != Some(&self.workload)
        {
            return Err(UsageError(format!(
                "restore point {} is not one of policy {}'s for {}; restore it with `cairn run ... --from-point {}`",
                point.id, policy.name, self.workload, point.id
            ))
            .into());
        }
        // A point of the namespace the policy protected before it was changed: its data is
        // not this namespace's workload's, and is restored over it only when asked by name.
        if point.target.namespace != policy.namespace && self.into_namespace.is_none() {
            return Err(UsageError(format!(
                "restore point {} was made in namespace {}, and policy {} now protects namespace \
                 {}: say where it goes (--into-namespace, or into_namespace in a Restore)",
                point.id, point.target.namespace, policy.name, policy.namespace
            ))
            .into());
        }
        // The blueprint that made the point restores it: another (the policy's or binding's
        // blueprint changed since) would run its own restore on data it never wrote.
        let now = &group.blueprint.description().name;
        if point.blueprint != *now {
            return Err(UsageError(format!(
                "restore point {} was made by blueprint {}, and policy {} now runs {now} for {}: \
                 restore it with its own blueprint (`cairn run {} --action restore \
                 --from-point {} --grant ...`)",
                point.id, point.blueprint, policy.name, self.workload, point.blueprint, point.id
            ))
            .into());
        }
        drop(catalog);
        let (artifacts, point_values) = crate::catalog::point_outputs(&point);
        let into = self.into.as_deref().unwrap_or(&self.workload);
        let namespace = self.into_namespace.as_deref().unwrap_or(&policy.namespace);
        if into != self.workload || namespace != policy.namespace {
            // A namespace the target lacks is the user's to fix, like a workload.
            let present = workloads_of(prepared.cluster.as_ref(), namespace)
                .await
                .map_err(|e| {
                    UsageError(format!(
                        "restoring into {namespace}/{into}: {}",
                        crate::one_line(&e)
                    ))
                })?;
            if !present.iter().any(|w| w.reference.name == into) {
                let names: Vec<&str> = present.iter().map(|w| w.reference.name.as_str()).collect();
                return Err(UsageError(format!(
                    "restoring into {namespace}/{into}: namespace {namespace} has no such workload (it has: {})",
                    crate::listed(names)
                ))
                .into());
            }
        }
        let mut request = RunRequest {
            action: "restore".to_owned(),
            namespace: namespace.to_owned(),
            workload: Some(into.to_owned()),
            artifacts,
            point_values,
            ..group.request.clone()
        };
        request
            .grants
            .extend(crate::run::parse_grants(&self.grants)?);
        crate::blueprint::check_allowed(&group.registration, &request.grants)?;
        let given = crate::run::parse_params(&self.params)?;
        match (&point.params, self.params_of) {
            (Some(made), None) => {
                let changed = changed_params(made, &request.params, &given);
                if !changed.is_empty() {
                    return Err(UsageError(format!(
                        "restore point {} was made with other parameters than policy {} gives \
                         now: {}. Say which the restore takes: --params-of point restores it as \
                         it was made, --params-of policy where the policy is now, and --param \
                         NAME=VALUE sets one (params_of and params in a Restore)",
                        point.id,
                        policy.name,
                        changed.join("; ")
                    ))
                    .into());
                }
            }
            (Some(made), Some(ParamsOf::Point)) => request.params = made.clone(),
            (None, Some(ParamsOf::Point)) => {
                return Err(UsageError(format!(
                    "restore point {} does not record its parameters (an earlier release made \
                     it): --params-of point cannot restore with them; give them with --param \
                     NAME=VALUE",
                    point.id
                ))
                .into());
            }
            (_, Some(ParamsOf::Policy)) | (None, None) => {}
        }
        for (k, v) in given {
            request.params.retain(|(name, _)| *name != k);
            request.params.push((k, v));
        }
        let execution = prepared.execution(group, home, engine, &policy.name, Some(&point.id));
        // Exported before the policy's export changed: its data is where it was written.
        let execution = at_point(home, policy, &point, execution).await?;
        let (report, _) = execution
            .execute(request, |report| {
                crate::run::print_report(report, execution.blueprint, "restore", output)
            })
            .await?;
        Ok(Restored {
            point: point.id,
            workload: format!("{namespace}/{into}"),
            error: (!report.ok).then(|| report.error.unwrap_or_else(|| "unknown error".to_owned())),
        })
    }
}

/// The parameters a restore point was `made` with that differ from what its policy gives `now`,
/// leaving out those the caller has `given`, described for a message: a restore given the
/// policy's new `database` would load the old database's dump into another one.
fn changed_params(
    made: &[(String, String)],
    now: &[(String, String)],
    given: &[(String, String)],
) -> Vec<String> {
    let made: BTreeMap<&str, &str> = made.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let now: BTreeMap<&str, &str> = now.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut names: Vec<&str> = made.keys().chain(now.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter(|k| !given.iter().any(|(g, _)| g == k))
        .filter_map(|k| match (made.get(k), now.get(k)) {
            (Some(m), Some(n)) if m != n => Some(format!("{k}={m} (the policy now gives {k}={n})")),
            (Some(m), None) => Some(format!("{k}={m} (the policy now gives none)")),
            (None, Some(n)) => Some(format!("no {k} (the policy now gives {k}={n})")),
            _ => None,
        })
        .collect()
}

/// Whether the policy protects the workload `name` with `labels`: a name pattern matches (or
/// there are none) and it has every label of the selector.
pub(crate) fn selects(
    workloads: &[String],
    selector: &BTreeMap<String, String>,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    (workloads.is_empty() || workloads.iter().any(|p| matches(p, name)))
        && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A selection of workloads, for messages: `db-*, cache` and/or `app=db`.
pub(crate) fn selection(workloads: &[String], selector: &BTreeMap<String, String>) -> String {
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    match (workloads.is_empty(), labels.is_empty()) {
        (true, true) => "every workload".to_owned(),
        (false, true) => workloads.join(", "),
        (true, false) => format!("labels {}", labels.join(",")),
        (false, false) => format!("{} with labels {}", workloads.join(", "), labels.join(",")),
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn matches(pattern: &str, name: &str) -> bool {
    cairn_repository::star_match(pattern, name)
}

async fn back_up_and_retain(
    policy: &Policy,
    engine: &Engine,
    home: &Home,
    prepared: &Prepared,
    started: Timestamp,
) -> Outcome {
    use futures::StreamExt as _;
    // Every workload of every group, `concurrency` at a time, in order.
    let backups = prepared.groups.iter().flat_map(|group| {
        group.workloads.iter().map(move |workload| async move {
            // Once interrupted (Ctrl-C on `policy run`), no further workload starts.
            if group.request.interrupt.is_triggered() {
                return WorkloadOutcome {
                    workload: workload.clone(),
                    restore_point: None,
                    error: Some("not started: the run was interrupted".to_owned()),
                };
            }
            let execution = prepared.execution(group, home, engine, &policy.name, None);
            let mut request = group.request.clone();
            request.workload = Some(workload.clone());
            let (restore_point, error) = match execution.execute(request, |_| Ok(())).await {
                Ok((report, Some(point))) if report.ok => (Some(point), None),
                Ok((report, _)) => (
                    None,
                    Some(
                        report
                            .error
                            .unwrap_or_else(|| "the backup failed".to_owned()),
                    ),
                ),
                Err(e) => (None, Some(crate::one_line(&e))),
            };
            WorkloadOutcome {
                workload: workload.clone(),
                restore_point,
                error,
            }
        })
    });
    let mut workloads: Vec<WorkloadOutcome> = futures::stream::iter(backups)
        .buffered(usize::try_from(concurrency(policy)).unwrap_or(1))
        .collect()
        .await;
    let mut errors = Vec::new();
    let mut retention = RetentionOutcome::default();
    let interrupted = prepared
        .groups
        .iter()
        .any(|g| g.request.interrupt.is_triggered());
    // Ownership and the restore points are read once for the run, not once per blueprint.
    match retention_points(home, &policy.name).await {
        // Nothing is removed after a Ctrl-C: the next run retains.
        Ok(Some(_)) if interrupted => {
            retention.skipped = Some("the run was interrupted".to_owned());
        }
        Ok(Some((None, _))) => {
            retention.skipped =
                Some("the policy was deleted while it ran; its restore points stay".to_owned());
        }
        // Applied again for other workloads: their points are that policy's to retain, and
        // these (which it no longer covers) are kept, as a deleted policy's are.
        Ok(Some((Some(stored), _)))
            if (
                &stored.target,
                &stored.namespace,
                &stored.workloads,
                &stored.selector,
            ) != (
                &policy.target,
                &policy.namespace,
                &policy.workloads,
                &policy.selector,
            ) || stored.blueprint != policy.blueprint =>
        {
            retention.skipped = Some(
                "the policy was applied again for other workloads while it ran; the next run \
                 retains"
                    .to_owned(),
            );
        }
        // The retention the policy has now: an apply while it ran decides what is kept.
        Ok(Some((Some(stored), points))) => {
            let policy = &Policy {
                retention: stored.retention,
                frequency: stored.frequency,
                ..policy.clone()
            };
            for group in &prepared.groups {
                let execution = prepared.execution(group, home, engine, &policy.name, None);
                let succeeded: Vec<&str> = workloads
                    .iter()
                    .filter(|w| w.restore_point.is_some() && group.workloads.contains(&w.workload))
                    .map(|w| w.workload.as_str())
                    .collect();
                let made: Vec<&str> = workloads
                    .iter()
                    .filter_map(|w| w.restore_point.as_deref())
                    .collect();
                let run = Run {
                    workloads: &succeeded,
                    made: &made,
                };
                match retain(policy, &execution, &group.request, run, &points).await {
                    Ok((done, failures)) => {
                        errors.extend(failures);
                        retention.kept += done.kept;
                        retention.protected += done.protected;
                        retention.removed.extend(done.removed);
                    }
                    Err(e) => {
                        errors.push(format!("retention: {}", crate::one_line(&e)));
                        retention.skipped = Some("it failed; see the errors".to_owned());
                    }
                }
            }
        }
        Ok(None) => {
            retention.skipped = Some(
                "this instance does not own maintenance of the backup data; run `cairn dr take-ownership`"
                    .to_owned(),
            );
        }
        Err(e) => {
            errors.push(format!("retention: {}", crate::one_line(&e)));
            retention.skipped = Some("it failed; see the errors".to_owned());
        }
    }
    workloads.extend(prepared.unbound.iter().map(|(w, why)| WorkloadOutcome {
        workload: w.clone(),
        restore_point: None,
        error: Some(why.clone()),
    }));
    workloads.sort_by(|a, b| a.workload.cmp(&b.workload));
    let mut failures: Vec<String> = workloads
        .iter()
        .filter_map(WorkloadOutcome::failure)
        .collect();
    // The run succeeded when every backup did: retention or a prune that failed (the DR
    // location out of reach while ownership is checked, say) is reported, and tried again at
    // the next run, but does not bring that run forward as a failed backup would.
    let backed_up = failures.is_empty();
    failures.append(&mut errors);
    let mut errors = failures;
    if retention.skipped.is_none() {
        match prune_if_due(policy, home, prepared, !retention.removed.is_empty()).await {
            Ok(prune) => retention.prune = prune,
            Err(e) => errors.push(format!("prune: {}", crate::one_line(&e))),
        }
    }
    Outcome {
        policy: policy.name.clone(),
        run: PolicyRun {
            started,
            finished: Timestamp::now(),
            succeeded: backed_up,
            points: workloads
                .iter()
                .filter_map(|w| w.restore_point.clone())
                .collect(),
            errors,
        },
        workloads,
        retention,
    }
}

/// The policy `name` as stored now (`None`: deleted) and the restore points retention chooses
/// from, when this instance may remove any: `None` when it does not own maintenance; an error
/// when another instance's owner marker says it took over.
async fn retention_points(
    home: &Home,
    name: &str,
) -> anyhow::Result<Option<(Option<Policy>, Vec<cairn_catalog::RestorePoint>)>> {
    if !crate::dr::owns_maintenance(&crate::catalog::open(home)?)? {
        return Ok(None);
    }
    crate::dr::check_owner(home, "policy retention").await?;
    let catalog = crate::catalog::open(home)?;
    Ok(Some((
        load_if_present(&catalog, name)?,
        catalog.restore_points()?,
    )))
}

/// What a run retains after: the workloads it backed up, and the restore points it made.
struct Run<'a> {
    workloads: &'a [&'a str],
    made: &'a [&'a str],
}

/// The time zone whose days, weeks, months and years a policy's retention counts: its
/// schedule's (see [`Schedule::zone`]), so a nightly window keeps one point a night.
fn retention_zone(policy: &Policy) -> jiff::tz::TimeZone {
    Schedule::parse(&policy.frequency).map_or_else(|_| jiff::tz::TimeZone::system(), |s| s.zone())
}

/// Applies the policy's retention, among `points`, to the restore points of the workloads just
/// backed up. Returns what it did and the points it could not remove (kept, and tried again next
/// run).
async fn retain(
    policy: &Policy,
    execution: &Execution<'_>,
    template: &RunRequest,
    run: Run<'_>,
    points: &[cairn_catalog::RestorePoint],
) -> anyhow::Result<(RetentionOutcome, Vec<String>)> {
    let home = execution.home;
    let mut outcome = RetentionOutcome::default();
    let mut failures = Vec::new();
    let zone = retention_zone(policy);
    for workload in run.workloads {
        let mine: Vec<_> = points
            .iter()
            .filter(|p| {
                p.policy.as_deref() == Some(&policy.name)
                    && p.target.namespace == policy.namespace
                    && p.target.workload.as_deref() == Some(*workload)
            })
            .collect();
        // Points partly deleted already hold no whole backup: they are not ranked (a day's
        // only whole point must not give way to one), and their removal is finished.
        let (partial, mine): (Vec<_>, Vec<_>) =
            mine.into_iter().partition(|p| p.partly_deleted.is_some());
        // Points dated ahead of the clock (made while it was set forward) are kept and not
        // ranked: newest of all, they would take the places of the points made since, and
        // `within` would count back from their date and remove everything else.
        let (ahead, mut mine): (Vec<_>, Vec<_>) = mine
            .into_iter()
            .partition(|p| crate::schedule::ahead_of_clock(p.created));
        for point in &ahead {
            errln!(
                "cairn: warning: policy {}: restore point {} is dated {}, ahead of this \
                 machine's clock (was the clock set back?); it is kept, and left out of \
                 retention until the clock reaches that date",
                policy.name,
                point.id,
                shown(point.created)
            );
            outcome.kept += 1;
        }
        mine.sort_by_key(|p| p.created);
        let times: Vec<i64> = mine.iter().map(|p| p.created.as_second()).collect();
        // `within` counts back from now when the newest point is dated after it (within the
        // clocks' slack).
        let mut keep = cairn_repository::keep_in_zone(
            &policy.retention,
            &times,
            &zone,
            Timestamp::now().as_second(),
        );
        keep.extend(partial.iter().map(|_| Vec::new()));
        mine.extend(partial);
        for (point, reasons) in mine.iter().zip(&keep) {
            if !reasons.is_empty() {
                outcome.kept += 1;
                continue;
            }
            // The rules rank points by their time: a point this run made that they would
            // remove is dated before those kept (the clock went back, or a point is dated in
            // the future). Removing it would discard every backup until the clock caught up.
            if run.made.contains(&point.id.as_str()) {
                errln!(
                    "cairn: warning: policy {}: restore point {} made now is dated before restore \
                     points retention keeps (has the clock gone back?); it is kept",
                    policy.name,
                    point.id
                );
                outcome.kept += 1;
                continue;
            }
            let removed = remove_point(policy, point, execution, template).await;
            let what = if point.snapshots.is_empty() {
                point.id.clone()
            } else {
                format!("{} (snapshots {})", point.id, point.snapshots.join(", "))
            };
            // Opened now, after the delete action's own records, so the chain continues
            // from them.
            let audit = cairn_engine::AuditLog::open(home.audit_log()).with_context(|| {
                format!("cannot open the audit log {}", home.audit_log().display())
            })?;
            audit.record_runtime(
                &format!("policy:{}", policy.name),
                &point.blueprint_digest,
                "retention",
                "retention.remove-point",
                what,
                match &removed {
                    Ok(Removal::Done) => "ok".to_owned(),
                    Ok(Removal::Protected) => "kept: under the protection period".to_owned(),
                    Err(e) => format!("error: {}", crate::one_line(e)),
                },
            );
            match removed {
                Ok(Removal::Done) => outcome.removed.push(point.id.clone()),
                Ok(Removal::Protected) => {
                    outcome.kept += 1;
                    outcome.protected += 1;
                }
                Err(e) => {
                    outcome.kept += 1;
                    failures.push(format!(
                        "retention kept restore point {}: {} (if its data is lost for good, \
                         `cairn catalog forget-point {}` drops its record)",
                        point.id,
                        crate::one_line(&e),
                        point.id
                    ));
                }
            }
        }
    }
    Ok((outcome, failures))
}

/// How many workloads the policy backs up at once.
fn concurrency(policy: &Policy) -> u32 {
    policy.concurrency.unwrap_or(1)
}

/// How often the policy's repository is pruned after retention; `None` for never.
fn prune_frequency(policy: &Policy) -> Option<&str> {
    match policy.prune.as_deref() {
        None => Some("@daily"),
        Some("never") => None,
        Some(frequency) => Some(frequency),
    }
}

/// When the repository at a URL was last pruned after retention, and whether retention has
/// removed points since (catalog meta `policy.prune:<URL>`, shared by the policies that export
/// there).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PruneState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<Timestamp>,
    #[serde(default)]
    pending: bool,
    /// How many retentions have removed points (wrapping): a prune that ends leaves `pending`
    /// set when one removed more while it ran. Absent in states written before it was kept.
    #[serde(default)]
    removals: u64,
}

impl PruneState {
    /// Retention removed points: their data waits for a prune.
    fn removed(&mut self) {
        self.pending = true;
        self.removals = self.removals.wrapping_add(1);
    }

    /// A prune that began with the state `seen` ended at `at`: what was removed before it is
    /// freed; what another policy's retention removed while it ran waits for the next.
    fn pruned(&mut self, at: Timestamp, seen: &PruneState) {
        self.last = Some(at);
        self.pending = self.removals != seen.removals;
    }
}

/// Reads the prune state at catalog meta `key`, changes it with `f`, and writes it when
/// changed, holding `locks/prune-state.lock` throughout: policies that share a repository
/// (`serve --jobs`, or another process) change it at once, and the catalog has no
/// read-modify-write of a meta value. The lock is held only for this, not while pruning.
fn update_prune_state<T>(
    home: &Home,
    key: &str,
    f: impl FnOnce(&mut PruneState) -> T,
) -> anyhow::Result<T> {
    let path = home.root().join("locks").join("prune-state.lock");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    let catalog = crate::catalog::open(home)?;
    let read: PruneState = catalog
        .meta(key)?
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let mut state = read.clone();
    let out = f(&mut state);
    if state != read {
        catalog.set_meta(key, Some(&serde_json::to_string(&state)?))?;
    }
    drop(lock);
    Ok(out)
}

/// Prunes the policy's repository when retention has removed points since its last prune and
/// the policy's prune frequency has passed. A repository another process holds (a backup into
/// it) postpones the prune to a later run; the removed points' data is not lost track of.
async fn prune_if_due(
    policy: &Policy,
    home: &Home,
    prepared: &Prepared,
    removed: bool,
) -> anyhow::Result<Option<PruneOutcome>> {
    let Some(frequency) = prune_frequency(policy) else {
        return Ok(None);
    };
    let key = format!("policy.prune:{}", prepared.exports.url());
    let state = update_prune_state(home, &key, |state| {
        if removed {
            state.removed();
        }
        state.clone()
    })?;
    if !state.pending {
        return Ok(None);
    }
    let now = Timestamp::now();
    if let Some(last) = state.last {
        let due = crate::schedule::next_due(frequency, last);
        if now < due {
            return Ok(Some(PruneOutcome::Postponed {
                reason: format!(
                    "the repository was pruned at {}; the next prune (every {frequency}) is due at {}",
                    shown(last),
                    shown(due)
                ),
            }));
        }
    }
    // The catalog is not held while pruning: other commands may need it meanwhile.
    let options = cairn_repository::PruneOptions::default();
    match prepared.exports.repository().prune_with(&options).await {
        Ok(report) => {
            update_prune_state(home, &key, |s| s.pruned(now, &state))?;
            Ok(Some(PruneOutcome::Done {
                packs_deleted: report.packs_deleted,
                bytes_deleted: report.bytes_deleted,
                packs_repacked: report.packs_repacked,
            }))
        }
        Err(cairn_repository::Error::Locked { holder, .. }) => Ok(Some(PruneOutcome::Postponed {
            reason: format!("the repository is in use by {holder}; a later run prunes it"),
        })),
        Err(e) => Err(anyhow::Error::new(e).context("pruning the repository")),
    }
}

/// What [`remove_point`] did.
enum Removal {
    Done,
    /// Nothing: a snapshot of the point is under the repository's protection period.
    Protected,
}

/// Removes one restore point: the blueprint's `delete` action (when it has one, with the
/// policy's parameters, grants and secrets), its repository snapshots, then its record. Stops
/// at the first step that fails, so the record stays for the next try. A point whose snapshots
/// the repository's protection period covers is left whole.
async fn remove_point(
    policy: &Policy,
    point: &cairn_catalog::RestorePoint,
    execution: &Execution<'_>,
    template: &RunRequest,
) -> anyhow::Result<Removal> {
    let execution = &at_point(execution.home, policy, point, execution.clone()).await?;
    // Only the blueprint that made it knows what else it made (volume snapshots, say).
    let now = &execution.blueprint.description().name;
    if point.blueprint != *now {
        anyhow::bail!(
            "it was made by blueprint {}, and the policy now runs {now}; remove it with its own \
             blueprint (`cairn run {} --action delete --from-point {} --grant ...`)",
            point.blueprint,
            point.blueprint,
            point.id
        );
    }
    // Its snapshots that are still there (a delete action may remove its own exports); while
    // the repository's protection period covers one, the point stays whole.
    let repo = execution.exports.repository();
    let present = existing(repo, &point.snapshots).await?;
    let dry = repo.forget_ids(&present, true).await?;
    if !dry.protected.is_empty() {
        return Ok(Removal::Protected);
    }
    if execution.blueprint.description().has_action("delete") {
        let (artifacts, point_values) = crate::catalog::point_outputs(point);
        let request = RunRequest {
            action: "delete".to_owned(),
            namespace: point.target.namespace.clone(),
            workload: point.target.workload.clone(),
            artifacts,
            point_values,
            ..template.clone()
        };
        let delete = Execution {
            used_point: Some(&point.id),
            ..execution.clone()
        };
        let (report, _) = delete.execute(request, |_| Ok(())).await?;
        if !report.ok {
            let why = report.error.as_deref().unwrap_or("unknown error");
            note_failed_delete(execution.home, repo, point, why).await;
            anyhow::bail!("the blueprint's delete action failed: {why}");
        }
    }
    retire(execution.home, repo, point).await?;
    Ok(Removal::Done)
}

/// `execution`, reading and removing `point` in the repository it was exported to when the
/// policy's export has moved since (opened as [`crate::run::open_point_exports`] does, with
/// the policy's key and options at the old URL when no location profile names it).
async fn at_point<'a>(
    home: &Home,
    policy: &Policy,
    point: &cairn_catalog::RestorePoint,
    execution: Execution<'a>,
) -> anyhow::Result<Execution<'a>> {
    match &point.location {
        Location::Exported { repository, .. }
            if !crate::same_repository(repository, execution.repository()) =>
        {
            let fallback = crate::repo::RepoSelect::of_policy(policy.export.as_ref());
            Ok(
                match crate::run::open_point_exports(home, point, &fallback).await? {
                    Some(exports) => Execution {
                        exports,
                        ..execution
                    },
                    None => execution,
                },
            )
        }
        _ => Ok(execution),
    }
}

/// Forgets the snapshots of `point` that `repo` still holds (its delete action may have
/// removed its own exports) and removes its catalog record.
pub(crate) async fn retire(
    home: &Home,
    repo: &cairn_repository::Repository,
    point: &cairn_catalog::RestorePoint,
) -> anyhow::Result<()> {
    let present = existing(repo, &point.snapshots).await?;
    let forgot = repo
        .forget_ids(&present, false)
        .await
        .context("forgetting its repository snapshots")?;
    // A snapshot the protection period keeps keeps its point's record too.
    if let Some((id, until)) = forgot.protected.first() {
        anyhow::bail!(
            "its snapshot {id} is under the repository's protection period until {until}"
        );
    }
    let catalog = crate::catalog::open(home)?;
    catalog.delete(cairn_catalog::Record::kind(point), &point.id)?;
    Ok(())
}

/// After restore point `point`'s delete action failed (`why`): when some of its snapshots are
/// gone from `repo` (the action removed them before it failed), its record says so. It is then
/// refused for restores, which would find its data partly gone, until a delete finishes it.
/// Returns whether it was marked; what keeps it from looking is warned about, so that the
/// delete's own failure stays the one reported.
pub(crate) async fn note_failed_delete(
    home: &Home,
    repo: &cairn_repository::Repository,
    point: &cairn_catalog::RestorePoint,
    why: &str,
) -> bool {
    // Looked for in another repository (the one it went to is lost, or moved), its snapshots
    // would all seem gone.
    let elsewhere = point
        .artifacts
        .iter()
        .filter_map(|a| a.values.get("repository"))
        .any(|id| id != repo.id());
    if elsewhere {
        return false;
    }
    let marked = async {
        let present = existing(repo, &point.snapshots).await?;
        if present.len() == point.snapshots.len() {
            return Ok(false);
        }
        let marked = cairn_catalog::RestorePoint {
            partly_deleted: Some(format!("its delete action failed: {why}")),
            ..point.clone()
        };
        crate::catalog::open(home)?.put(cairn_catalog::Record::kind(point), &point.id, &marked)?;
        anyhow::Ok(true)
    };
    match marked.await {
        Ok(marked) => marked,
        Err(e) => {
            errln!(
                "cairn: warning: cannot tell whether restore point {} is partly deleted: {}",
                point.id,
                crate::one_line(&e)
            );
            false
        }
    }
}

/// Why policy `policy` has no restore point of `workload` to restore. A point its last run
/// recorded that the catalog lacks was made on an instance whose catalog came back without it:
/// a DR recovery elsewhere brings local restore points back only from an exported catalog
/// snapshot, so "yet" would send the operator looking for a backup that was made.
fn no_point(policy: &Policy, workload: &str, missing: &[&str], restored: bool) -> UsageError {
    let none = format!(
        "policy {} has no restore point of {workload} in namespace {}",
        policy.name, policy.namespace
    );
    if missing.is_empty() {
        return UsageError(format!(
            "{none} yet; `cairn policy run {}` makes one (points of another namespace are \
             restored by --point)",
            policy.name
        ));
    }
    let how = if restored {
        "were not carried by the DR recovery that brought this catalog back (local restore \
         points come back on another machine only with `cairn dr enable --mode \
         exported-snapshot`, or with a policy `export:` to a location off the machine)"
    } else {
        "are no longer in the catalog (`cairn catalog forget-point` or a catalog put back)"
    };
    UsageError(format!(
        "{none}: the restore points its last run made ({}) {how}; `cairn policy run {}` makes \
         a new one",
        missing.join(", "),
        policy.name
    ))
}

/// Refuses a restore from `point` when its removal stopped part-way.
pub(crate) fn restorable(point: &cairn_catalog::RestorePoint) -> anyhow::Result<()> {
    match &point.partly_deleted {
        None => Ok(()),
        Some(why) => Err(UsageError(format!(
            "restore point {} was partly deleted ({why}); its data is not whole, so it is not \
             restored. Finish removing it: `cairn run {} --action delete --from-point {} --grant \
             ...` with the grants its delete needs",
            point.id, point.blueprint, point.id
        ))
        .into()),
    }
}

/// Those of the snapshots `ids` that the repository still has.
async fn existing(
    repo: &cairn_repository::Repository,
    ids: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut present = Vec::new();
    for id in ids {
        match repo.snapshot(id).await {
            Ok(s) => present.push(s.id),
            Err(cairn_repository::Error::NotFound { .. }) => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("reading snapshot {id}"))),
        }
    }
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily policy of blueprint `b` on `kube`, keeping one point, applied 2026-12-05.
    fn minimal() -> Policy {
        serde_json::from_value(serde_json::json!({
            "name": "p", "blueprint": "b", "target": "kube",
            "frequency": "@daily", "retention": {"last": 1}, "applied": "2026-12-05T00:00:00Z"
        }))
        .expect("a policy")
    }

    #[test]
    fn retention_counts_the_days_of_the_schedule_s_zone() {
        // 12:00 and 22:50 UTC on 10 January are that day in Paris too; 23:10 UTC is 00:10 on
        // the 11th there.
        let times: Vec<i64> = [
            "2026-01-10T12:00:00Z",
            "2026-01-10T22:50:00Z",
            "2026-01-10T23:10:00Z",
        ]
        .iter()
        .map(|t| t.parse::<Timestamp>().expect("a time").as_second())
        .collect();
        let kept = |frequency: &str| {
            let policy = Policy {
                frequency: frequency.into(),
                retention: serde_json::from_value(serde_json::json!({"daily": 2}))
                    .expect("a retention"),
                ..minimal()
            };
            let now = Timestamp::now().as_second();
            cairn_repository::keep_in_zone(&policy.retention, &times, &retention_zone(&policy), now)
                .iter()
                .map(|rules| !rules.is_empty())
                .collect::<Vec<_>>()
        };
        assert_eq!(kept("CRON_TZ=Europe/Paris 10 0 * * *"), [false, true, true]);
        assert_eq!(kept("CRON_TZ=UTC 10 23 * * *"), [false, false, true]);
    }

    #[test]
    fn a_removal_while_a_prune_runs_is_not_forgotten() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let home = Home::resolve(Some(dir.path().join("home"))).expect("a home");
        let key = "policy.prune:file:///shared";
        let state = |home: &Home| update_prune_state(home, key, |s| s.clone()).expect("a state");
        // Policy A's retention removed points; its prune begins.
        let seen = update_prune_state(&home, key, |s| {
            s.removed();
            s.clone()
        })
        .expect("a state");
        assert!(seen.pending);
        // Policy B's retention removes points into the same repository while A prunes.
        update_prune_state(&home, key, PruneState::removed).expect("a state");
        let at: Timestamp = "2026-12-05T00:00:00Z".parse().expect("a time");
        update_prune_state(&home, key, |s| s.pruned(at, &seen)).expect("a state");
        let after = state(&home);
        assert_eq!(after.last, Some(at));
        assert!(
            after.pending,
            "B's removal waits for the next prune: {after:?}"
        );
        // A prune that nothing raced frees it all.
        let seen = state(&home);
        update_prune_state(&home, key, |s| s.pruned(at, &seen)).expect("a state");
        assert!(!state(&home).pending);
        // A state written before `removals` was kept still reads.
        let old: PruneState =
            serde_json::from_str(r#"{"last":"2026-12-05T00:00:00Z","pending":true}"#)
                .expect("an old state");
        assert!(old.pending && old.removals == 0);
    }

    #[test]
    fn a_failed_run_is_retried_sooner_than_the_period() {
        let at: Timestamp = "2026-12-05T00:00:00Z".parse().expect("a time");
        let mut policy = Policy {
            workloads: vec!["*".into()],
            ..minimal()
        };
        assert_eq!(next_run(&policy), Some(at));
        let run = |succeeded| PolicyRun {
            started: at,
            finished: at,
            succeeded,
            points: Vec::new(),
            errors: Vec::new(),
        };
        policy.last_run = Some(run(true));
        assert_eq!(
            next_run(&policy).map(|t| t.to_string()).as_deref(),
            Some("2026-12-05T23:55:00Z")
        );
        policy.last_run = Some(run(false));
        assert_eq!(
            next_run(&policy).map(|t| t.to_string()).as_deref(),
            Some("2026-12-05T01:00:00Z")
        );
        policy.frequency = "20m".into();
        assert_eq!(
            next_run(&policy).map(|t| t.to_string()).as_deref(),
            Some("2026-12-05T00:05:00Z")
        );
        policy.paused = true;
        assert_eq!(next_run(&policy), None);
    }

    #[test]
    fn a_policy_applied_while_the_clock_was_ahead_runs_now() {
        // Applied while the clock was set a year forward, never run: due now, not in a year.
        let before = Timestamp::now();
        let policy = Policy {
            applied: before + jiff::SignedDuration::from_hours(365 * 24),
            ..minimal()
        };
        assert!(next_run(&policy).is_some_and(|t| t <= before));
    }

    #[test]
    fn selectors_and_patterns_must_both_match() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let policy = |workloads: &[&str], selector: &[(&str, &str)]| Policy {
            workloads: workloads.iter().map(|w| (*w).to_owned()).collect(),
            selector: labels(selector),
            ..minimal()
        };
        let sel = |p: &Policy, name: &str, labels: &BTreeMap<String, String>| {
            selects(&p.workloads, &p.selector, name, labels)
        };
        let db = labels(&[("app", "db"), ("tier", "data")]);
        assert!(sel(&policy(&[], &[("app", "db")]), "orders", &db));
        assert!(!sel(&policy(&[], &[("app", "web")]), "orders", &db));
        assert!(sel(&policy(&["ord*"], &[("tier", "data")]), "orders", &db));
        assert!(!sel(
            &policy(&["web-*"], &[("tier", "data")]),
            "orders",
            &db
        ));
        assert!(sel(&policy(&["orders"], &[]), "orders", &BTreeMap::new()));
        assert!(!sel(
            &policy(&[], &[("app", "db")]),
            "orders",
            &BTreeMap::new()
        ));
        let p = policy(&["a", "b*"], &[("app", "db")]);
        assert_eq!(
            selection(&p.workloads, &p.selector),
            "a, b* with labels app=db"
        );
        assert_eq!(selection(&[], &BTreeMap::new()), "every workload");
    }

    #[test]
    fn patterns() {
        assert!(matches("db", "db"));
        assert!(!matches("db", "db-0"));
        assert!(matches("db-*", "db-0"));
        assert!(matches("*", "anything"));
        assert!(matches("*-db", "orders-db"));
        assert!(matches("a*b*c", "a-b-x-c"));
        assert!(!matches("a*b*c", "a-c"));
        assert!(!matches("db-*", "cache"));
        assert!(matches("**db**", "orders-db-0"));
        assert!(matches("d*", "d"));
        assert!(
            !matches("db-?", "db-0"),
            "`?` is no wildcard: names never hold it"
        );
        // Many stars and a name that fails at the end: linear, where recursion took hours.
        let stars = format!("{}x", "*".repeat(40));
        assert!(!matches(&stars, &"a".repeat(60)));
        assert!(matches(&stars, &format!("{}x", "a".repeat(60))));
    }
}
