//! `cairn serve`: runs every policy that is due (`--jobs` at a time), then Cairn's own DR run
//! when DR is enabled and due (as `cairn dr run --if-due` would), and sleeps until the next is
//! due; `--once` runs what is due and exits (for a system timer). A policy that has never run
//! is due at once. One `serve` runs per home: it holds `serve.lock`. With `--metrics`, it
//! serves Prometheus metrics (`metrics.rs`). With `--operator`, each pass first brings the
//! policies and bindings in step with their Kubernetes resources and runs new Backup and
//! Restore resources, and ends by writing their status (`operator.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cairn_catalog::{Kind, Policy};
use futures::StreamExt as _;
use jiff::Timestamp;

use crate::home::Home;
use crate::operator::Operator;
use crate::policy::{Busy, Skipped, Start, hold, load, next_run, run_policy, shown};
use crate::{UsageError, exit};

/// `cairn serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Run what is due, then exit.
    #[arg(long)]
    pub(crate) once: bool,
    /// The DR blueprint component, for Cairn's own DR runs when DR is enabled; default:
    /// `dr.wasm` next to the cairn executable (the command as run, else the file a symlink to
    /// it names).
    #[arg(long, env = "CAIRN_DR_BLUEPRINT", value_name = "PATH")]
    pub(crate) dr_blueprint: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464): each policy's
    /// runs, last run and success, next run and restore points, and DR's.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<String>,
    /// How many due policies run at once (each runs its own workloads `concurrency:` at a time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub(crate) jobs: u32,
    /// Keep the policies and blueprint bindings from the Kubernetes resources
    /// (policies.cairn.dev, blueprintbindings.cairn.dev) of one namespace, run its Backup and
    /// Restore resources, and write their status: see examples/kubernetes/install.
    #[arg(long)]
    pub(crate) operator: bool,
    /// The namespace of those resources; default: the pod's own, or the kubeconfig context's.
    #[arg(long, value_name = "NS", requires = "operator")]
    pub(crate) operator_namespace: Option<String>,
    /// The only namespaces those resources may act on (policies' workloads, Restores' targets,
    /// the policies Backups run), comma-separated; default: any Cairn's RBAC reaches (with
    /// the install, those namespace-access.yaml was applied to).
    /// A resource in Cairn's namespace otherwise reaches every namespace through Cairn.
    #[arg(
        long,
        value_name = "NS,...",
        value_delimiter = ',',
        requires = "operator"
    )]
    pub(crate) operator_allow_namespaces: Vec<String>,
    /// The kubeconfig context of their cluster; default: the one `kubectl` would use.
    #[arg(long, value_name = "CONTEXT", requires = "operator")]
    pub(crate) operator_context: Option<String>,
    /// Where the secrets that resources may name for their blueprints are (`file:DIR/KEY`):
    /// a Secret the Deployment mounts apart from Cairn's own. A resource's `env:` secrets and
    /// files elsewhere are refused: its author would read Cairn's own environment and files.
    #[arg(
        long,
        value_name = "DIR",
        requires = "operator",
        default_value = "/etc/cairn/blueprint-secrets"
    )]
    pub(crate) operator_secrets: PathBuf,
    /// Let those resources' policies name `local:` targets (inventories on this machine): off
    /// by default, as an inventory runs the programs it allows here, as Cairn. For a cluster
    /// whose resource authors are trusted with Cairn's own machine.
    #[arg(long, requires = "operator")]
    pub(crate) operator_local_targets: bool,
    /// After a stop signal, how long the runs in hand may go on before serve interrupts them
    /// (their posthooks and cleanup still run, and they are recorded as interrupted); `0s`
    /// interrupts them at once. Keep it below the time the supervisor waits before it kills
    /// serve (Kubernetes' terminationGracePeriodSeconds, systemd's TimeoutStopSec) by more
    /// than the longest posthook: a killed run runs no posthook, and leaves its application
    /// quiesced.
    #[arg(
        long,
        env = "CAIRN_STOP_GRACE",
        value_name = "DURATION",
        default_value = "50m",
        value_parser = parse_grace
    )]
    pub(crate) stop_grace: Duration,
}

/// Reads `--stop-grace`.
fn parse_grace(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("`{text}`: {e}; expected a duration like 50m or 30s (0s to interrupt at once)")
    })
}

/// `cairn serve`: runs due policies until stopped.
pub(crate) async fn serve(args: ServeArgs, home: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let home = Home::resolve(home)?;
    let lock_path = home.serve_lock();
    let Some(lock) = hold(&lock_path)? else {
        let held = format!(
            "another `cairn serve` runs the policies of {} (it holds {})",
            home.root().display(),
            lock_path.display()
        );
        // A timer firing while the last pass still runs: that pass runs what is due, and the
        // timer's unit is not failed for it.
        if args.once {
            errln!("cairn: {held}; this pass is skipped: that one runs what is due");
            return Ok(ExitCode::from(exit::OK));
        }
        return Err(UsageError(format!("{held}; stop it first")).into());
    };
    let stop = Stop::install(args.stop_grace)?;
    let engine = crate::run::engine(&home)?;
    let metrics = crate::metrics::Metrics::default();
    if let Some(addr) = &args.metrics {
        let bound = metrics
            .listen(addr)
            .await
            .map_err(|e| UsageError(crate::one_line(&e)))?;
        errln!("cairn: metrics at http://{bound}/metrics");
        // Scraped during the first pass (a long first backup after a restart), the gauges say
        // what the catalog held at the start, not nothing.
        refresh(&metrics, &home);
    }
    let mut operator = match args.operator {
        true => Some(
            Operator::connect(
                args.operator_context.as_deref(),
                args.operator_namespace.clone(),
                args.operator_secrets.clone(),
                args.operator_allow_namespaces.clone(),
                args.operator_local_targets,
            )
            .await?,
        ),
        false => None,
    };
    if !args.once {
        errln!(
            "cairn: serving the policies of {}{}; Ctrl-C, SIGTERM or SIGHUP stops after the current \
             runs (interrupted after --stop-grace {})",
            home.root().display(),
            if operator.is_some() {
                " and the Kubernetes resources of the operator's namespace"
            } else {
                ""
            },
            humantime::format_duration(args.stop_grace)
        );
    }
    let mut failed = false;
    let mut ran = 0;
    // Whether this is serve's first pass, and whether an unfinished DR restore was said.
    let (mut starting, mut unfinished_said) = (true, false);
    // Whether serve's time zone is noted in the catalog (or there is none to note).
    let mut zone_noted = false;
    // Unreadable policy records, each reported once.
    let mut unreadable = BTreeSet::new();
    loop {
        // Until stopped, serve's exit says how its last pass went, when the stop cut that pass
        // short; a stop between passes is a clean one (exit 0), whatever earlier passes met,
        // so `systemctl stop` does not mark the unit failed for last week's failed run.
        if !args.once {
            failed = false;
        }
        // A DR restore begun in this home (since serve started): nothing runs or changes the
        // catalog until it finishes (its rerun would keep it): no resource, policy or DR run.
        // Serve waits for that rather than exit (and be restarted in a loop); it does not start.
        // Read for one meta key; the listing of policies below verifies the pages, daily.
        let restoring = match crate::catalog::open_unverified(&home)
            .and_then(|catalog| crate::dr::refuse_unfinished_restore(&catalog, &home))
        {
            Ok(()) => {
                unfinished_said = false;
                false
            }
            Err(e) if starting => return Err(e),
            Err(e) => {
                if !unfinished_said {
                    errln!("cairn: {}", crate::one_line(&e));
                    unfinished_said = true;
                }
                true
            }
        };
        if !zone_noted && !restoring {
            // serve's time zone, for `policy run` from a shell to warn when its own differs (its
            // retention would count other days): once, not while a DR restore is unfinished, and
            // only when it changed (`serve --once` from a timer would write it every pass). A
            // catalog that cannot take it now is said (at the first pass), and serve goes on and
            // tries again at the next.
            let zone = jiff::tz::TimeZone::system();
            let noted = zone.iana_name().map_or(Ok(()), |zone| {
                crate::catalog::open(&home).and_then(|c| {
                    if c.meta(crate::policy::SERVE_ZONE)?.as_deref() != Some(zone) {
                        c.set_meta(crate::policy::SERVE_ZONE, Some(zone))?;
                    }
                    Ok(())
                })
            });
            match noted {
                Ok(()) => zone_noted = true,
                Err(e) if starting => errln!(
                    "cairn: cannot note serve's time zone (tried again at each pass): {}",
                    crate::one_line(&e)
                ),
                Err(_) => {}
            }
        }
        if let Some(operator) = operator.as_mut().filter(|_| !restoring) {
            match operator.sync(&engine, &home).await {
                // Resources that cannot be read at all at the start are a setup to mend.
                Err(e) if starting => return Err(e),
                Err(e) => {
                    errln!("cairn: {}", crate::one_line(&e));
                    failed = true;
                }
                Ok(()) => {}
            }
        }
        let now = Timestamp::now();
        let mut soonest: Option<Timestamp> = None;
        let policies = if restoring {
            Vec::new()
        } else {
            match crate::catalog::open_verified_daily(&home)
                .and_then(|catalog| Ok(catalog.list(Kind::Policy)?))
            {
                Ok(policies) => policies,
                Err(e) if starting => return Err(e),
                // Held by another process past its wait, or a page that failed its check:
                // reported, and tried again at the next pass (a minute on), rather than
                // ending serve.
                Err(e) => {
                    errln!(
                        "cairn: the catalog cannot be read ({}); this pass runs no policy, the \
                         next tries again",
                        crate::one_line(&e)
                    );
                    failed = true;
                    soonest = now.checked_add(CATALOG_RETRY).ok();
                    Vec::new()
                }
            }
        };
        starting = false;
        let mut due_now = Vec::new();
        for entry in policies {
            let policy: Policy = match serde_json::from_str(entry.value.get()) {
                Ok(p) => p,
                Err(e) => {
                    if unreadable.insert(entry.key.clone()) {
                        errln!(
                            "cairn: policy {} skipped: it is not a policy Cairn can run ({e}); apply it again",
                            entry.key
                        );
                    }
                    continue;
                }
            };
            let Some(due) = next_run(&policy) else {
                continue;
            };
            if due > now {
                soonest = sooner(soonest, due);
                continue;
            }
            due_now.push(policy);
        }
        // `--jobs` at a time; a stop request lets those running finish (for `--stop-grace`)
        // and starts no more.
        let (stop_ref, engine_ref, home_ref) = (&stop, &engine, &home);
        let runs = due_now.iter().map(|policy| async move {
            if stop_ref.requested() {
                return None;
            }
            let outcome = run_policy(
                policy,
                Start::IfDue,
                engine_ref,
                home_ref,
                &stop_ref.interrupt,
            )
            .await;
            Some((policy, outcome))
        });
        let mut runs =
            futures::stream::iter(runs).buffer_unordered(usize::try_from(args.jobs).unwrap_or(1));
        while let Some(done) = runs.next().await {
            let Some((policy, outcome)) = done else {
                continue;
            };
            // Deleted, paused or run since this pass read it: not a run.
            if let Err(skipped) = outcome.as_ref().map_err(|e| e.downcast_ref::<Skipped>())
                && let Some(skipped) = skipped
            {
                errln!("cairn: {skipped}");
                if let Some(next) = skipped.next {
                    soonest = sooner(soonest, next);
                }
                continue;
            }
            ran += 1;
            let outcome = match outcome {
                Err(e) if e.is::<Busy>() => {
                    errln!("cairn: {e}");
                    continue;
                }
                outcome => outcome,
            };
            // The gauges first, so that a scrape that sees the run counted sees its outcome.
            if args.metrics.is_some() {
                refresh(&metrics, &home);
            }
            metrics.ran(
                &policy.name,
                outcome.as_ref().is_ok_and(|o| o.run.succeeded),
            );
            match outcome {
                Ok(outcome) => {
                    outcome.print();
                    failed |= !outcome.run.succeeded || !outcome.run.errors.is_empty();
                    // Other runs may be in flight: a catalog that cannot be read now is no
                    // reason to end serve (and them); the next pass reads it again.
                    if let Ok(p) = crate::catalog::open_verified_daily(&home)
                        .and_then(|catalog| load(&catalog, &policy.name))
                        && let Some(next) = next_run(&p)
                    {
                        soonest = sooner(soonest, next);
                    }
                }
                Err(e) => {
                    errln!("cairn: policy {}: {}", policy.name, crate::one_line(&e));
                    failed = true;
                }
            }
        }
        drop(runs);
        // DR last, so that its point holds what the policies just recorded.
        if stop.requested() {
            break;
        }
        match crate::dr::schedule(&home).map(|s| s.map(|s| s.next_run)) {
            Ok(Some(_)) if restoring => {}
            Ok(Some(due)) if due <= Timestamp::now() => {
                ran += 1;
                let blueprint =
                    crate::dr::BlueprintArg::new(args.dr_blueprint.clone(), "--dr-blueprint");
                match crate::dr::run_if_due(&home, blueprint).await {
                    Ok(code) => failed |= code != ExitCode::from(exit::OK),
                    Err(e) => {
                        errln!("cairn: DR run: {}", crate::one_line(&e));
                        failed = true;
                    }
                }
                if let Ok(Some(s)) = crate::dr::schedule(&home) {
                    soonest = sooner(soonest, s.next_run);
                }
            }
            Ok(Some(due)) => soonest = sooner(soonest, due),
            Ok(None) => {}
            Err(e) => {
                errln!("cairn: DR: {}", crate::one_line(&e));
                failed = true;
            }
        }
        if args.metrics.is_some() {
            refresh(&metrics, &home);
        }
        if let Some(operator) = &operator
            && let Err(e) = operator.report(&home).await
        {
            errln!("cairn: {}", crate::one_line(&e));
            failed = true;
        }
        if args.once {
            if ran == 0 {
                outln!(
                    "nothing is due{}",
                    soonest.map_or_else(String::new, |t| format!(
                        "; the next run is at {}",
                        shown(t)
                    ))
                );
            }
            break;
        }
        // Wake for the soonest policy, and at least every minute for policies applied since
        // (every 15 seconds for the resources an operator keeps).
        let longest = Duration::from_secs(if operator.is_some() { 15 } else { 60 });
        let wait = soonest
            .map(|t| t.duration_since(Timestamp::now()))
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::ZERO)
            .clamp(Duration::from_secs(1), longest);
        if stop.requested() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.notify.notified() => {
                failed = false;
                break;
            }
        }
    }
    drop(lock);
    Ok(ExitCode::from(if failed { exit::FAILED } else { exit::OK }))
}

/// Sets the gauges to what the catalog says now; a failure to read it is reported, and the
/// previous gauges stay.
fn refresh(metrics: &crate::metrics::Metrics, home: &Home) {
    match gauges(home) {
        Ok((policies, dr)) => metrics.refresh(policies, dr),
        Err(e) => errln!("cairn: metrics: {}", crate::one_line(&e)),
    }
}

/// The gauges of every policy and of DR, as the catalog has them now. A policy record that
/// does not read (written by a newer Cairn, say) is not run: it keeps its series, marked
/// unreadable, with its restore points, so that alerts on it fire rather than go silent.
fn gauges(
    home: &Home,
) -> anyhow::Result<(
    BTreeMap<String, crate::metrics::PolicyGauges>,
    Option<crate::metrics::DrGauges>,
)> {
    let catalog = crate::catalog::open_verified_daily(home)?;
    let mut policies: BTreeMap<String, crate::metrics::PolicyGauges> = catalog
        .list(Kind::Policy)?
        .into_iter()
        .map(|e| match serde_json::from_str::<Policy>(e.value.get()) {
            Ok(p) => {
                let gauges = crate::metrics::PolicyGauges {
                    last_run: p.last_run.as_ref().map(|r| (r.started, r.succeeded)),
                    last_run_errors: p.last_run.as_ref().map(|r| r.errors.len()),
                    next_run: next_run(&p),
                    ..Default::default()
                };
                (p.name, gauges)
            }
            Err(_) => {
                let gauges = crate::metrics::PolicyGauges {
                    unreadable: true,
                    ..Default::default()
                };
                (e.key, gauges)
            }
        })
        .collect();
    for point in catalog.restore_points()? {
        if let Some(g) = point.policy.as_ref().and_then(|p| policies.get_mut(p)) {
            g.restore_points += 1;
            g.last_success = Some(
                g.last_success
                    .map_or(point.created, |t| t.max(point.created)),
            );
        }
    }
    drop(catalog);
    Ok((policies, crate::dr::schedule(home)?))
}

/// How long serve waits to read the catalog again after it could not.
const CATALOG_RETRY: Duration = Duration::from_secs(60);

/// The sooner of `soonest` (if any) and `t`.
fn sooner(soonest: Option<Timestamp>, t: Timestamp) -> Option<Timestamp> {
    Some(soonest.map_or(t, |s| s.min(t)))
}

/// Set by SIGINT, SIGTERM or SIGHUP. The handlers are installed when `serve` starts, so a signal during
/// a run is noted rather than fatal: the run (and its posthooks) finishes, or is interrupted
/// after `--stop-grace`, then `serve` stops.
struct Stop {
    requested: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
    /// Stops the runs in hand (their posthooks run, and they are recorded as interrupted).
    interrupt: cairn_engine::Interrupt,
}

impl Stop {
    /// The first SIGINT, SIGTERM or SIGHUP lets the runs in hand finish and starts no more;
    /// after `grace`, or at a second signal, those runs are stopped as `cairn policy run` stops
    /// its own (their posthooks run): a supervisor that kills serve at its own deadline
    /// (Kubernetes sends one SIGTERM, then SIGKILL) would leave them without. A third signal
    /// ends the process at once.
    fn install(grace: Duration) -> anyhow::Result<Arc<Self>> {
        let stop = Arc::new(Self {
            requested: std::sync::atomic::AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
            interrupt: cairn_engine::Interrupt::default(),
        });
        let mut signals = crate::StopSignals::install()?;
        let flag = stop.clone();
        tokio::spawn(async move {
            signals.recv().await;
            let shown = humantime::format_duration(grace);
            errln!(
                "cairn: stopping once the current runs, if any, have finished; those still \
                 running in {shown} (--stop-grace) are interrupted (interrupt again to stop them \
                 now)"
            );
            flag.requested
                .store(true, std::sync::atomic::Ordering::SeqCst);
            // Stores a permit when nobody waits yet, so a sleep that starts later still wakes.
            flag.notify.notify_one();
            tokio::select! {
                () = signals.recv() => errln!(
                    "cairn: interrupted again; stopping the runs in hand and running their \
                     posthooks (interrupt once more to exit at once)"
                ),
                () = tokio::time::sleep(grace) => errln!(
                    "cairn: --stop-grace {shown} has passed; stopping the runs in hand and \
                     running their posthooks (interrupt again to exit at once)"
                ),
            }
            flag.interrupt.trigger();
            signals.recv().await;
            errln!("cairn: interrupted again; exiting at once");
            std::process::exit(i32::from(crate::exit::INTERRUPTED));
        });
        Ok(stop)
    }

    fn requested(&self) -> bool {
        self.requested.load(std::sync::atomic::Ordering::SeqCst)
    }
}
