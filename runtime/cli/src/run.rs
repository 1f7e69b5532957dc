//! `cairn run`: one action of a blueprint against a target.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cairn_engine::{Capability, Engine, EngineConfig, HostContext, Limits, RunRequest};
use clap::Args;
use serde::Serialize;

use crate::home::Home;
use crate::{Output, UsageError, exit};

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The blueprint component (`.wasm`), or the name of a registered one (`cairn blueprint add`).
    #[arg(value_name = "FILE|NAME")]
    file: PathBuf,
    /// The action to run; `backup` and `restore` also run their pre- and posthooks.
    #[arg(long)]
    action: String,
    /// Where the application runs: `local:INVENTORY.yaml` (a local target), or `kube` for the
    /// Kubernetes cluster kubectl would use (`kube:CONTEXT` for a kubeconfig context; in a pod,
    /// its service account).
    #[arg(long, value_name = "local:PATH|kube[:CONTEXT]")]
    target: String,
    /// On a Kubernetes target, the VolumeSnapshotClass of the volume snapshots the action
    /// takes (the cluster's default one otherwise).
    #[arg(long, value_name = "CLASS")]
    snapshot_class: Option<String>,
    /// The namespace of the target workload.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The workload the action is scoped to.
    #[arg(long, short = 'w')]
    workload: Option<String>,
    /// A blueprint parameter, `name=value` (repeatable); checked against the declared types.
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// A capability granted to the blueprint (repeatable or comma-separated): exec, workloads,
    /// scale, volumes, export, import, secrets.
    #[arg(long = "grant", short = 'g', value_name = "CAP", value_delimiter = ',')]
    grants: Vec<String>,
    /// A secret the blueprint may read, `name=env:VAR`, `name=file:PATH` or `name=raw:VALUE`.
    #[arg(long = "secret", value_name = "NAME=SOURCE")]
    secrets: Vec<String>,
    /// The restore point to restore or delete: the JSON report (`--output json`) of the
    /// backup run that produced it.
    #[arg(long, value_name = "REPORT.json")]
    from: Option<PathBuf>,
    /// The restore point to restore or delete, by its id in the catalog (`cairn catalog ls`)
    /// or a unique prefix of it.
    #[arg(long, value_name = "ID", conflicts_with = "from")]
    from_point: Option<String>,
    /// Deadline of the prehook and of the main phase, each, e.g. `30s`, `10m` (default 30m,
    /// at most a week); the posthook has its own 5 minutes.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Memory cap for the blueprint, e.g. `64MiB`, `1GiB` (default 64 MiB).
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    /// Where the action's exports go. Without `--repo`, the repository a `--from-point` point
    /// was exported to, else the default repository in the home, whose key is a file in the
    /// home.
    #[command(flatten)]
    repo: crate::repo::RepoSelect,
}

/// The engine of this instance, with its compile cache in the home.
pub(crate) fn engine(home: &Home) -> anyhow::Result<Engine> {
    let config = EngineConfig {
        cache_dir: Some(home.cache()),
        ..EngineConfig::default()
    };
    match Engine::new(config) {
        Ok(engine) => Ok(engine),
        // The compile cache only saves time: one that cannot be used (its key a directory,
        // the cache a file) is done without, and said.
        Err(e) => {
            errln!(
                "cairn: warning: the WebAssembly engine did not start with the compile cache in \
                 {} ({e}); trying without it, so blueprints are compiled on every load (if the \
                 cache is at fault, removing it is safe)",
                home.cache().display()
            );
            Engine::new(EngineConfig {
                cache_dir: None,
                ..EngineConfig::default()
            })
            .context("cannot start the WebAssembly engine")
        }
    }
}

pub(crate) async fn run(args: RunArgs, home: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let home = Home::resolve(home)?;
    let grants = parse_grants(&args.grants)?;
    let secrets = parse_secrets(&args.secrets)?;
    // Before anything runs: a catalog that cannot record the run (damaged), or that a DR
    // restore left half written, whose rerun wants nothing recorded in between (finish the
    // restore first). A posthook run alone undoes what a prehook left: it runs whatever the
    // catalog's damage, and only its recording fails.
    match crate::catalog::open_verified_daily(&home) {
        Ok(catalog) => crate::dr::refuse_unfinished_restore(&catalog, &home)?,
        Err(e) if args.action.ends_with("Posthook") => errln!(
            "cairn: warning: {}; the posthook runs, and recording it will fail",
            crate::one_line(&e)
        ),
        Err(e) => return Err(e),
    }
    if !secrets.is_empty() && !grants.contains(&Capability::Secrets) {
        // Without the grant the blueprint cannot read them, and would fail later with an
        // authentication error that hides the cause.
        return Err(UsageError(
            "--secret given without --grant secrets: the blueprint could not read it; add --grant secrets".into(),
        )
        .into());
    }
    if matches!(args.action.as_str(), "restore" | "delete")
        && args.from.is_none()
        && args.from_point.is_none()
    {
        return Err(UsageError(format!(
            "{} needs the restore point it acts on: --from REPORT.json (a backup's --output json \
             report) or --from-point ID (`cairn catalog ls exported-restore-point`)",
            args.action
        ))
        .into());
    }
    // A point from the catalog, read once: its outputs, its blueprint, where it was exported.
    let record = match &args.from_point {
        Some(id) if args.from.is_none() => Some(crate::catalog::from_point(
            &crate::catalog::open(&home)?,
            id,
        )?),
        _ => None,
    };
    if let Some(record) = &record
        && args.action != "delete"
    {
        crate::policy::restorable(record)?;
    }
    let ((artifacts, point_values), point, made_by) = match (&args.from, &record) {
        (Some(path), _) => read_restore_point(path)?,
        (None, Some(p)) => (
            crate::catalog::point_outputs(p),
            Some(p.id.clone()),
            Some(p.blueprint.clone()),
        ),
        (None, None) => Default::default(),
    };
    if (args.from.is_some() || args.from_point.is_some())
        && matches!(
            args.action.as_str(),
            "backup" | "backupPrehook" | "backupPosthook"
        )
    {
        return Err(UsageError(format!(
            "--from and --from-point give the restore point a restore or delete acts on; a {} \
             makes a new one and takes none",
            args.action
        ))
        .into());
    }
    let cluster = open_target(&args.target, args.snapshot_class.as_deref(), &home).await?;
    // A workload that is not there fails now, before a prehook quiesces anything.
    if let Some(name) = &args.workload {
        let workload = cairn_cluster::WorkloadRef::new(&args.namespace, name);
        // Only its absence: other failures (its ready check, the API) are the blueprint's to
        // meet and report in its own terms.
        if let Err(
            e @ cairn_cluster::Error::NotFound {
                kind: "workload" | "namespace",
                ..
            },
        ) = cluster.workload(&workload).await
        {
            return Err(UsageError(format!("--workload {name}: {e}")).into());
        }
    }
    let engine = engine(&home)?;
    let (blueprint, registration) =
        crate::blueprint::load_or_registered(&engine, &home, &args.file).await?;
    if let Some(record) = &registration {
        crate::blueprint::check_allowed(record, &grants)?;
    }
    if let Some(main) = args.action.strip_suffix("Prehook") {
        errln!(
            "cairn: warning: --action {} runs the prehook alone: nothing runs its posthook, so \
             what it quiesced stays so until `--action {main}Posthook` (or `--action {main}` runs \
             all three); a posthook run alone does not see this run's outputs or checkpoints",
            args.action
        );
    }
    // Only the blueprint that made a point knows what its artifacts mean.
    let name = &blueprint.description().name;
    if let Some(made_by) = made_by.filter(|b| b != name) {
        return Err(UsageError(format!(
            "the restore point was made by blueprint {made_by}, not {name}: run {made_by}'s {} \
             on it (`cairn run {made_by} --action {} ...`)",
            args.action, args.action
        ))
        .into());
    }
    let declared = &blueprint.description().capabilities;
    for extra in grants.iter().filter(|g| !declared.contains(g)) {
        errln!(
            "cairn: warning: --grant {extra}: blueprint {} does not declare it, so it never uses it",
            blueprint.description().name
        );
    }

    let mut limits = Limits::default();
    if let Some(t) = args.timeout {
        limits.deadline = t;
    }
    if let Some(m) = args.memory {
        limits.memory = usize::try_from(m).unwrap_or(usize::MAX);
    }
    // A point from the catalog is read where it was exported, unless --repo says otherwise.
    let opened = match &record {
        Some(record) if !args.repo.names_a_repository() => {
            open_point_exports(&home, record, &args.repo).await?
        }
        _ => None,
    };
    let exports = match opened {
        Some(opened) => opened,
        None => open_exports(&args.repo, &home).await?,
    };
    let request = RunRequest {
        action: args.action.clone(),
        namespace: args.namespace.clone(),
        workload: args.workload.clone(),
        params: parse_params(&args.params)?,
        grants,
        secrets,
        artifacts,
        point_values,
        limits,
        interrupt: interrupt_on_signals()?,
    };
    let run = Execution {
        home: &home,
        engine: &engine,
        blueprint: &blueprint,
        cluster,
        exports,
        policy: None,
        used_point: point.as_deref(),
        target: &args.target,
    };
    let (report, made) = run
        .execute(request, |report| {
            print_report(report, &blueprint, &args.action, args.output)
        })
        .await?;
    // The id `--from-point` takes, said once it is recorded (the JSON report has it too).
    if let Some(id) = &made
        && args.output == Output::Text
    {
        outln!("restore point {id} recorded");
    }
    if args.action == "delete"
        && let Some(id) = &point
    {
        // The point read at the start (`--from-point`), or its record (`--from` a report).
        let record = match record {
            Some(r) => Some(r),
            None => crate::catalog::open(&home)?.restore_point(id)?,
        };
        // What the delete did is known only in the repository the point was exported to:
        // elsewhere its snapshots are all missing.
        let elsewhere = |r: &cairn_catalog::RestorePoint| match &r.location {
            cairn_catalog::Location::Exported { repository, .. }
                if !crate::same_repository(repository, run.repository()) =>
            {
                Some(repository.clone())
            }
            _ => None,
        };
        if let Some(record) = record {
            match elsewhere(&record) {
                Some(repository) => errln!(
                    "cairn: warning: restore point {id} is in {repository}, not in this run's \
                     repository {}: its record is kept; run the delete again with --repo \
                     {repository}",
                    run.repository()
                ),
                None if report.ok => retire_deleted(&home, &run, &record).await?,
                None => {
                    let why = report.error.as_deref().unwrap_or("unknown error");
                    if crate::policy::note_failed_delete(
                        &home,
                        run.exports.repository(),
                        &record,
                        why,
                    )
                    .await
                    {
                        errln!(
                            "cairn: restore point {id} is partly deleted: it is no longer \
                             restored; run the delete again, with the grants it needs, to finish"
                        );
                    }
                }
            }
        }
    }
    if report.ok {
        return Ok(ExitCode::from(exit::OK));
    }
    let (how, code) = if report.interrupted() {
        ("interrupted", exit::INTERRUPTED)
    } else {
        ("failed", exit::FAILED)
    };
    if args.output == Output::Text {
        errln!(
            "cairn: action {} {how}: {}",
            args.action,
            report.error.as_deref().unwrap_or("unknown error")
        );
    }
    Ok(ExitCode::from(code))
}

/// After a `delete` action of restore point `point` succeeded, in the repository it was
/// exported to: forgets what is left of it there and removes its record, as retention does, so
/// it is no longer listed as restorable.
async fn retire_deleted(
    home: &Home,
    run: &Execution<'_>,
    point: &cairn_catalog::RestorePoint,
) -> anyhow::Result<()> {
    crate::policy::retire(home, run.exports.repository(), point)
        .await
        .with_context(|| {
            format!(
                "the delete action succeeded, but removing restore point {} failed",
                point.id
            )
        })
}

/// An interrupt that the first SIGINT (Ctrl-C) or SIGTERM triggers: the running phase stops,
/// the posthook still runs and the run is recorded. A second signal ends the process at once.
pub(crate) fn interrupt_on_signals() -> anyhow::Result<cairn_engine::Interrupt> {
    let interrupt = cairn_engine::Interrupt::default();
    let trigger = interrupt.clone();
    crate::on_interrupt("stopping the action and running its posthook", move || {
        trigger.trigger()
    })?;
    Ok(interrupt)
}

/// One action of a blueprint, run and recorded in the catalog: what `cairn run` and policies
/// share.
#[derive(Clone)]
pub(crate) struct Execution<'a> {
    pub home: &'a Home,
    pub engine: &'a Engine,
    pub blueprint: &'a cairn_engine::Blueprint,
    pub cluster: Arc<dyn cairn_cluster::Cluster>,
    pub exports: Arc<crate::exports::RepoExports>,
    /// The policy the run is part of.
    pub policy: Option<&'a str>,
    /// The restore point the run uses.
    pub used_point: Option<&'a str>,
    /// The target as given (`local:PATH`, `kube[:CONTEXT]`): runs on one workload of one
    /// target take turns.
    pub target: &'a str,
}

impl Execution<'_> {
    /// The URL of the repository the exports go to.
    pub(crate) fn repository(&self) -> &str {
        self.exports.url()
    }

    /// Runs `request`, shows the report with `show` before anything else can fail, and records
    /// the run (and the restore point a backup made, whose id it returns) in the catalog.
    pub(crate) async fn execute(
        &self,
        request: RunRequest,
        show: impl FnOnce(&cairn_engine::RunReport) -> anyhow::Result<()>,
    ) -> anyhow::Result<(cairn_engine::RunReport, Option<String>)> {
        let audit = Arc::new(
            cairn_engine::AuditLog::open(self.home.audit_log()).with_context(|| {
                format!(
                    "cannot open the audit log {}",
                    self.home.audit_log().display()
                )
            })?,
        );
        let host = HostContext {
            cluster: self.cluster.clone(),
            exports: self.exports.clone(),
            audit,
            events: crate::run::event_sink(),
            catalog: None,
        };
        let action = request.action.clone();
        let namespace = request.namespace.clone();
        let workload = request.workload.clone();
        // One run at a time on a workload from this home (`cairn run`, policies, serve's
        // jobs): a second quiesce would find the workload stopped by the first, take 0 for its
        // count, leave it stopped, and snapshot it while the first started it again.
        let _workload = match &workload {
            Some(name) => {
                let held = hold_workload(
                    self.home,
                    self.target,
                    &namespace,
                    name,
                    &action,
                    &request.interrupt,
                )
                .await?;
                // Interrupted while waiting: nothing runs, not even a posthook, which would
                // meet the workload as the other run left it.
                if held.is_none() {
                    return Err(NotStarted(format!(
                        "{action} of {namespace}/{name} not started: interrupted while it waited \
                         for another run on the workload"
                    ))
                    .into());
                }
                held
            }
            None => None,
        };
        if action == "backup" && request.grants.contains(&cairn_engine::Capability::Export) {
            self.exports.wait_for_prune(&request.interrupt).await;
        }
        let started = jiff::Timestamp::now();
        let params = request.params.clone();
        let report = self
            .engine
            .run(self.blueprint, &host, request)
            .await
            .map_err(|e| UsageError(format!("cannot run {action}: {e}")))?;
        show(&report)?;
        let record = crate::catalog::RunRecord {
            report: &report,
            blueprint: self.blueprint,
            action: &action,
            namespace: &namespace,
            workload: workload.as_deref(),
            started,
            repository: self.repository(),
            profile: self.exports.profile(),
            used_point: self.used_point,
            policy: self.policy,
            params: &params,
        };
        let point = crate::catalog::open(self.home)
            .and_then(|catalog| crate::catalog::record_run(&catalog, &record))
            .context("the action ran, but recording it in the catalog failed")?;
        if action == "backup" {
            self.discard_unkept(&report, point.is_some()).await;
        }
        Ok((report, point))
    }
}

/// A run that never started: interrupted while it waited for its workload (exit 130).
#[derive(Debug)]
pub(crate) struct NotStarted(pub String);

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotStarted {}

/// Waits for, then holds, the lock of runs on workload `namespace/name` of `target` in the
/// home, until the returned file is dropped; `None` when `interrupt` comes first. The holder's
/// process, action and start are in the file, for the message of whoever waits.
async fn hold_workload(
    home: &Home,
    target: &str,
    namespace: &str,
    name: &str,
    action: &str,
    interrupt: &cairn_engine::Interrupt,
) -> anyhow::Result<Option<std::fs::File>> {
    // A stable hash (FNV-1a) of the target and the names: any length, any characters, the
    // same in every build; the names' start is kept for people looking at the directory.
    // The local target keeps its workloads' state in the home by namespace and name,
    // whatever the inventory: one lock for all its inventories. A cluster's are its own.
    let target = if target.starts_with("local:") {
        "local"
    } else {
        target
    };
    let key = format!("{target}\0{namespace}\0{name}");
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let readable: String = format!("{namespace}_{name}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(60)
        .collect();
    let path = home
        .root()
        .join("locks")
        .join(format!("workload-{readable}-{hash:016x}.lock"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut said = false;
    loop {
        if let Some(mut file) = crate::policy::hold(&path)? {
            use std::io::Write as _;
            // Only for the message of a run that waits.
            let _ = file.set_len(0).and_then(|()| {
                write!(
                    file,
                    "{action} by process {} since {}",
                    std::process::id(),
                    jiff::Timestamp::now()
                )
            });
            return Ok(Some(file));
        }
        if interrupt.is_triggered() {
            return Ok(None);
        }
        if !said {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            errln!(
                "cairn: workload {namespace}/{name} is in another run ({}); this {action} waits \
                 for it to end",
                if holder.is_empty() {
                    "of another cairn process"
                } else {
                    holder.trim()
                }
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Execution<'_> {
    /// Forgets the exports a backup finished that its restore point does not reference (every
    /// one when it made no point: it failed, or was interrupted), so that no data is left in
    /// the repository that nothing could restore or remove. A failure to is a warning: the
    /// action itself is recorded.
    async fn discard_unkept(&self, report: &cairn_engine::RunReport, made_point: bool) {
        let keep = if made_point {
            crate::catalog::exported_snapshots(&report.outputs.artifacts)
        } else {
            Vec::new()
        };
        match self.exports.discard_unkept(&report.action_id, &keep).await {
            Ok(gone) if gone.is_empty() => {}
            Ok(gone) => errln!(
                "cairn: discarded {} export(s) of action {} that no restore point references \
                 ({}): {}",
                gone.len(),
                report.action_id,
                if made_point {
                    "finished but not returned by the backup"
                } else {
                    "the backup did not succeed"
                },
                gone.join(", ")
            ),
            Err(e) => errln!(
                "cairn: warning: exports of action {} that no restore point references are left \
                 in {}: {e}; `cairn repo snapshots --tag action:{}` lists them, `cairn repo \
                 forget ID...` removes them",
                report.action_id,
                self.repository(),
                report.action_id
            ),
        }
    }
}

/// The repository the action's exports go to: `select`'s, or the home's default one.
pub(crate) async fn open_exports(
    select: &crate::repo::RepoSelect,
    home: &Home,
) -> anyhow::Result<Arc<crate::exports::RepoExports>> {
    let (repo, url) = if select.names_a_repository() {
        let select = select.resolved(home)?;
        let location = select.location()?;
        // Recorded in restore points: a path that means the same from any directory.
        let url = crate::repository_url(location.url());
        let key = select.key()?;
        let repo = cairn_repository::Repository::open(location, key.as_ref())
            .await
            .with_context(|| format!("cannot open the export repository {url}"))?;
        (repo, url)
    } else {
        let dir = home.repository();
        let repo = cairn_repository::Repository::open_or_init_local(&dir, home.repository_key())
            .await
            .with_context(|| {
                format!(
                    "cannot open the default export repository {}",
                    dir.display()
                )
            })?;
        (repo, crate::repository_url(&dir.display().to_string()))
    };
    Ok(Arc::new(crate::exports::RepoExports::new(
        repo,
        url,
        select.profile().map(str::to_owned),
    )))
}

/// The exports of the repository restore point `point` was exported to, when the command
/// names no repository: through the location profile it was exported through, else a
/// profile of that repository, else the home's default repository when it is that one, else
/// at its URL with `fallback`'s key and options (a policy's export settings, or `cairn run`'s
/// flags). `None` for a point kept in the cluster.
pub(crate) async fn open_point_exports(
    home: &Home,
    point: &cairn_catalog::RestorePoint,
    fallback: &crate::repo::RepoSelect,
) -> anyhow::Result<Option<Arc<crate::exports::RepoExports>>> {
    let cairn_catalog::Location::Exported {
        repository,
        profile,
    } = &point.location
    else {
        return Ok(None);
    };
    // A profile record that does not read (another build's) only is not a candidate.
    let profiles: Vec<cairn_catalog::Profile> = crate::catalog::open(home)?
        .list(cairn_catalog::Kind::Profile)?
        .iter()
        .filter_map(|e| e.decode().ok())
        .collect();
    // A profile still naming the point's repository: the one it was exported through (unless
    // it was pointed elsewhere since), else any.
    let same = |url: &str| crate::same_repository(repository, url);
    let names_it = |p: &&cairn_catalog::Profile| same(&p.repository);
    let by_name = profile
        .as_deref()
        .filter(|name| profiles.iter().filter(names_it).any(|p| p.name == *name));
    let by_url = || profiles.iter().find(names_it).map(|p| p.name.as_str());
    let in_home = same(&home.repository().display().to_string());
    let select = match by_name.or_else(by_url) {
        Some(name) => crate::repo::RepoSelect::of_profile(name),
        None if in_home => Default::default(),
        None => fallback.at(repository),
    };
    // A directory that is not there, by no profile: most often the home repository of the
    // instance this catalog was recovered from, lost with it.
    if !crate::is_url(repository) && !Path::new(repository).exists() {
        return Err(UsageError(format!(
            "restore point {id} is in {repository}, which does not exist: {}its data is not \
             there. If a copy of that repository is elsewhere, add a location profile of it \
             (`cairn profile add NAME --repo URL ...`); if the data is lost for good, \
             `cairn catalog forget-point {id}` drops the point's record",
            if Path::new(repository).is_relative() {
                "the path is relative to the directory the backup ran in (an older Cairn \
                 recorded it as given): from that directory it may be there, and otherwise "
                    .to_owned()
            } else if in_home {
                String::new()
            } else {
                "a repository on another machine's disk (the home of a lost instance, if this \
                 catalog came back by DR) is not reachable from here, and "
                    .to_owned()
            },
            id = point.id
        ))
        .into());
    }
    let opened = open_exports(&select, home).await.with_context(|| {
        format!(
            "restore point {} is in {repository}, which cannot be opened this way; add a \
             location profile of it (`cairn profile add NAME --repo {repository} ...`), which \
             is then used for its points",
            point.id
        )
    })?;
    Ok(Some(opened))
}

pub(crate) async fn open_target(
    target: &str,
    snapshot_class: Option<&str>,
    home: &Home,
) -> anyhow::Result<Arc<dyn cairn_cluster::Cluster>> {
    if target == "kube" || target.starts_with("kube:") {
        let context = target.strip_prefix("kube:").filter(|c| !c.is_empty());
        let mut cluster = cairn_cluster::KubeCluster::connect(context)
            .await
            .map_err(|e| UsageError(format!("--target {target}: {e}")))?;
        if let Some(class) = snapshot_class {
            cluster = cluster.with_snapshot_class(class);
        }
        return Ok(Arc::new(cluster));
    }
    if snapshot_class.is_some() {
        return Err(UsageError(
            "--snapshot-class is for Kubernetes targets; a local target copies its volumes".into(),
        )
        .into());
    }
    let Some(inventory) = target.strip_prefix("local:") else {
        return Err(UsageError(format!(
            "unsupported target {target:?}: use local:PATH to an inventory file, or kube \
             (kube:CONTEXT) for a Kubernetes cluster"
        ))
        .into());
    };
    let cluster =
        cairn_cluster::LocalCluster::from_inventory(Path::new(inventory), &home.local_cluster())
            .map_err(|e| UsageError(e.to_string()))?;
    Ok(Arc::new(cluster))
}

pub(crate) fn parse_grants(raw: &[String]) -> anyhow::Result<BTreeSet<Capability>> {
    parse_capabilities(raw, "--grant")
}

/// The capabilities `raw` names (the values of `flag`, which errors name).
pub(crate) fn parse_capabilities(
    raw: &[String],
    flag: &str,
) -> anyhow::Result<BTreeSet<Capability>> {
    raw.iter()
        .filter(|g| !g.is_empty())
        .map(|g| match g.parse::<Capability>() {
            Ok(Capability::Catalog) => Err(UsageError(format!(
                "{flag} {g}: the catalog capability is granted by the runtime to its DR blueprint only (`cairn dr run`)"
            ))
            .into()),
            Ok(cap) => Ok(cap),
            Err(e) => Err(UsageError(format!("{flag} {g}: {e}")).into()),
        })
        .collect()
}

pub(crate) fn parse_params(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(UsageError(format!("--param {p:?}: expected NAME=VALUE")).into()),
        })
        .collect()
}

pub(crate) fn parse_secrets(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    parse_secrets_of(raw, "--secret")
}

/// [`parse_secrets`] of `raw`, given as `flag` (`--secret`, or a file's `secrets:`), which
/// errors name.
pub(crate) fn parse_secrets_of(
    raw: &[String],
    flag: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for s in raw {
        // What follows `=` may be the secret itself, given without `raw:`: never echoed.
        let usage = || {
            let shown = match s.split_once('=') {
                Some((name, _)) => format!("{name}=…"),
                None => "…".to_owned(),
            };
            UsageError(format!(
                "{flag} {shown:?}: expected NAME=env:VAR, NAME=file:PATH or NAME=raw:VALUE \
                 (what was given after `=` is not shown: it may be the secret)"
            ))
        };
        let (name, source) = s
            .split_once('=')
            .filter(|(n, _)| !n.is_empty())
            .ok_or_else(usage)?;
        let value = if let Some(var) = source.strip_prefix("env:") {
            std::env::var(var).map_err(|_| {
                UsageError(format!(
                    "{flag} {name}: environment variable {var} is not set"
                ))
            })?
        } else if let Some(path) = source.strip_prefix("file:") {
            let text = std::fs::read_to_string(path)
                .map_err(|e| UsageError(format!("{flag} {name}: cannot read {path}: {e}")))?;
            text.trim_end_matches(['\r', '\n']).to_string()
        } else if let Some(value) = source.strip_prefix("raw:") {
            value.to_string()
        } else {
            return Err(usage().into());
        };
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

/// The restore point a backup's `--output json` report at `path` made, and its id (the
/// backup's action id, when the report has one).
fn read_restore_point(
    path: &Path,
) -> anyhow::Result<(PointOutputs, Option<String>, Option<String>)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("--from {}: {e}", path.display())))?;
    let report: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        UsageError(format!(
            "--from {}: not a JSON run report: {e}",
            path.display()
        ))
    })?;
    // A failed backup made no restore point, whatever artifacts it lists: restoring from it
    // would run the restore's prehook (which moves data aside) for nothing.
    if report["status"].as_str().is_some_and(|s| s != "succeeded") {
        return Err(UsageError(format!(
            "--from {}: the report is of a run that failed ({}); it made no restore point: pass the \
             report of a backup that succeeded",
            path.display(),
            report["error"].as_str().unwrap_or("no error recorded")
        ))
        .into());
    }
    let artifacts = serde_json::from_value(report["outputs"]["artifacts"].clone()).map_err(|e| {
        UsageError(format!(
            "--from {}: no artifacts in it ({e}); pass the `--output json` report of a backup run",
            path.display()
        ))
    })?;
    // Reports written before restore points kept their values have none.
    let values = match &report["outputs"]["values"] {
        serde_json::Value::Null => Vec::new(),
        values => serde_json::from_value(values.clone()).map_err(|e| {
            UsageError(format!(
                "--from {}: its outputs' values are not [key, value] pairs ({e}); pass the \
                 `--output json` report of a backup run",
                path.display()
            ))
        })?,
    };
    let id = report["action_id"].as_str().map(str::to_owned);
    // Reports written before they named their blueprint do not.
    let blueprint = report["blueprint"].as_str().map(str::to_owned);
    Ok(((artifacts, values), id, blueprint))
}

/// A restore point as a run receives it: its artifacts and its own values.
pub(crate) type PointOutputs = (Vec<cairn_engine::Artifact>, Vec<(String, String)>);

/// Parses `64MiB`, `1GiB`, `512M`, `1048576`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64MiB or 1GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?}: use KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Serialize)]
struct JsonReport<'a> {
    status: &'static str,
    action_id: &'a str,
    /// The restore point a successful backup made (its id is the action's): what
    /// `--from-point` and `cairn catalog ls` take. `null` for other runs.
    restore_point: Option<&'a str>,
    /// The blueprint's name: a restore `--from` this report must be run by it.
    blueprint: &'a str,
    outputs: &'a cairn_engine::Outputs,
    error: Option<&'a str>,
    phases: &'a [cairn_engine::PhaseReport],
}

/// Prints the report of a run of `action`.
pub(crate) fn print_report(
    report: &cairn_engine::RunReport,
    blueprint: &cairn_engine::Blueprint,
    action: &str,
    output: Output,
) -> anyhow::Result<()> {
    match output {
        Output::Json => {
            let view = JsonReport {
                status: match (report.ok, report.interrupted()) {
                    (true, _) => "succeeded",
                    (false, true) => "cancelled",
                    (false, false) => "failed",
                },
                action_id: &report.action_id,
                // As the catalog records it (`crate::catalog::record_run`).
                restore_point: (report.ok && action == "backup").then_some(&*report.action_id),
                blueprint: &blueprint.description().name,
                outputs: &report.outputs,
                error: report.error.as_deref(),
                phases: &report.phases,
            };
            outln!("{}", serde_json::to_string_pretty(&view)?);
        }
        Output::Text => {
            // Values are the blueprint's: shown, never obeyed, by the terminal.
            let shown = cairn_engine::controls_escaped;
            for a in &report.outputs.artifacts {
                outln!("artifact {}", shown(&a.name));
                for (k, v) in &a.values {
                    outln!("  {} = {}", shown(k), shown(v));
                }
            }
            for (k, v) in &report.outputs.values {
                outln!("{} = {}", shown(k), shown(v));
            }
        }
    }
    Ok(())
}

/// Renders the guest's logs, progress and phase transitions on stderr.
pub(crate) fn event_sink() -> cairn_engine::EventSink {
    use cairn_engine::EventKind;
    cairn_engine::EventSink::new(|event: &cairn_engine::Event| {
        let phase = &event.phase;
        match &event.kind {
            EventKind::Log { level, message } => {
                // The blueprint's debug and trace lines only with -v (or RUST_LOG).
                let detail = matches!(
                    level,
                    cairn_engine::LogLevel::Debug | cairn_engine::LogLevel::Trace
                );
                if !detail || tracing::enabled!(target: "cairn::guest", tracing::Level::DEBUG) {
                    errln!("[{phase}] {level}: {message}");
                }
            }
            EventKind::Progress(progress) => {
                let mut parts = Vec::new();
                if let Some(p) = progress.percent {
                    parts.push(format!("{p:.0}%"));
                }
                match (progress.bytes_done, progress.bytes_total) {
                    (Some(d), Some(t)) => parts.push(format!("{d}/{t} bytes")),
                    (Some(d), None) => parts.push(format!("{d} bytes")),
                    _ => {}
                }
                if let Some(m) = &progress.message {
                    parts.push(m.clone());
                }
                errln!("[{phase}] progress: {}", parts.join(" "));
            }
            EventKind::PhaseFinished {
                ok: false, error, ..
            } => {
                let error = error.as_deref().unwrap_or("unknown error");
                // A blueprint's own `failed` error already says so.
                let error = error.strip_prefix("failed: ").unwrap_or(error);
                errln!("[{phase}] failed: {error}");
            }
            _ => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn params_need_a_name() {
        assert!(parse_params(&["=x".into()]).is_err());
        assert!(parse_params(&["x".into()]).is_err());
        assert_eq!(
            parse_params(&["a=b=c".into()]).ok(),
            Some(vec![("a".into(), "b=c".into())])
        );
    }
}
