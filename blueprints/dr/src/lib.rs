//! Cairn's own disaster recovery, as a blueprint: `cairn dr run` runs its `backup` action with
//! the capabilities `export`, `import` and `catalog` (which the runtime grants to this
//! blueprint only), its exports going to the DR location (a repository at
//! `<profile>/<cluster-id>/`, encrypted under a key derived from the DR passphrase).
//!
//! Everything a DR run decides lives here; the host only offers consistent catalog reads and
//! writes ([`cairn_sdk::catalog`]).
//!
//! # A DR run (`backup`), per mode
//!
//! | mode | exports |
//! | --- | --- |
//! | `local-snapshot` | takes a local catalog snapshot; exports the minimal catalog data changed since the cursor, read from that snapshot (`minimal`) |
//! | `exported-snapshot` | as above, plus the snapshot's own data (actions, local restore points) changed since the cursor (`snapshot`) |
//! | `no-snapshot` | the minimal catalog data changed since the cursor, from one consistent read of the live catalog (`minimal`) |
//! | `legacy` | a full copy of what the legacy mode protects (`full`) |
//!
//! Then it seals a small manifest, the `dr-point` export (format below), and only then advances
//! the cursor: a run killed before the manifest leaves no DR point (its data exports are
//! orphans that the next run supersedes), and the next run exports again from the old cursor.
//!
//! # Retention and chains (`retention.rs`)
//!
//! The host passes the DR points already in the location (artifacts `stored-<n>`, each the
//! manifest export of one point, with the manifest's `from`, `to` and `time` as values when the
//! host remembers them: else the run reads the manifest) and the policy as parameters (`keep-last` ... `keep-yearly`,
//! `max-chain`, `protection`: the location's protection period in seconds, `maintain`: whether
//! this instance owns maintenance of the backup data). From their manifests the run decides
//! whether to extend the current chain or start a new one (export from change 0), and after
//! sealing its point it removes the points retention no longer needs — each manifest first,
//! then its data exports, so a point half removed is never offered by `review`. Points under
//! protection are kept (with their chains). Without `maintain`, nothing is removed and the
//! outputs say so. Everything retention decides lives here: the host only lists the
//! manifests and deletes the exports the blueprint names.
//!
//! The host also lists every data export in the location (artifacts `export-<n>`, with their
//! `time`), and gives each stored point the snapshot ids of its data exports (value `exports`).
//! A data export no point references was left by a run killed before its manifest (or a
//! removal cut short after it): when every manifest could be read, the run removes those the
//! protection period no longer holds (outputs `unreferenced-removed`, `-protected`, `-failed`).
//!
//! # The manifest (`dr-point`)
//!
//! Lines of space-separated words:
//!
//! ```text
//! cairn-dr-point 1
//! cluster-id <uuid>
//! mode <mode>
//! from <seq>            the cursor the run started after (0: the start of a chain)
//! to <seq>              the sequence it reaches
//! time <unix seconds>
//! run <id>              the run's id (parameter `run-id`): the host keeps the ids of runs not
//!                       yet recorded, to tell a point it sealed and never recorded from another
//!                       home's
//! after <id>            the manifest (its repository snapshot id) of the point the run followed:
//!                       the one the cursor came from, or when that one is gone, the one
//!                       this home's last recorded run sealed (parameter `last-point`);
//!                       absent at a chain's start after the cursor went back to 0, and in
//!                       manifests of older versions
//! snapshot <id>         the local catalog snapshot, when the mode takes one
//! settings <json>       the DR settings (parameter `settings`, opaque here) for a recovery
//! artifact <name> <key>=<value> ...   one per data export, in the order to apply them
//! ```
//!
//! # Restore (`restore`)
//!
//! The artifacts are DR point manifests: the one named `point` is the point to restore, the
//! others (any name) are candidates for its chain. Starting at `point`, the chain is walked
//! back through the manifests each names in its `after` line (which must reach its `from`),
//! down to a point with `from 0`; then every point's data exports are applied oldest first. A
//! manifest without an `after` line (an older version's) is linked to the candidate of its
//! cluster and mode whose `to` is its `from` when only one fits, or only one of those was made
//! before it; when points of two histories fit (a home put back to an older catalog, or a
//! copied one, whose points were accepted) the restore is refused, naming them, rather than
//! mixing the two. A missing link is an error naming the sequence it needs. For a `local-snapshot` point, the actions and local
//! restore points are then applied from the local catalog snapshot the point names, when this
//! instance still holds it (recovery in place: the catalog was lost, the instance's state
//! directory was not); elsewhere they stay behind, as the mode promises (output `in-place`).
//!
//! # Delete (`delete`)
//!
//! Removes the points named by the artifacts: each manifest, then its data exports.

mod retention;

use cairn_sdk::catalog::{self, DrMode};
use cairn_sdk::data::{self, Export, Import};
use cairn_sdk::lifecycle::{BACKUP, DELETE, RESTORE};
use cairn_sdk::{
    Artifact, Blueprint, Capability, Context, Description, Error, Outputs, Param, Result,
};
use cairn_sdk::{Progress, info, progress, warn};

/// The first line of a manifest.
const MAGIC: &str = "cairn-dr-point 1";
/// The name of the manifest export, and of the artifact naming the point to restore.
const MANIFEST: &str = "dr-point";
/// The artifact a restore starts from.
const POINT: &str = "point";
/// The largest manifest read back.
const MAX_MANIFEST: u32 = 1 << 20;
/// The name prefix of the artifacts of the DR points already in the location (`backup`).
const STORED: &str = "stored-";
/// The prefix of the artifacts that name the data exports in the location.
const EXPORT: &str = "export-";
/// The default bound of a chain: 48 points, two days of hourly runs. A restore applies every
/// link (at ~80 KiB per hourly increment, 48 links stay well inside the 3 s restore target) and
/// a damaged link loses every later point of its chain.
const MAX_CHAIN: u32 = 48;
/// The retention parameters, as `cairn dr enable` names them.
const KEEP: [&str; 6] = [
    "keep-last",
    "keep-hourly",
    "keep-daily",
    "keep-weekly",
    "keep-monthly",
    "keep-yearly",
];

struct Dr;

impl Blueprint for Dr {
    fn describe() -> Description {
        let mut d = Description::new("dr", env!("CARGO_PKG_VERSION"))
            .describe("Cairn's own disaster recovery: exports the catalog per the DR mode, and rebuilds it")
            .action(BACKUP, "Run DR: export the catalog changes per the mode, seal a DR point, apply retention")
            .action(RESTORE, "Rebuild the catalog from a DR point and its chain")
            .action(DELETE, "Remove DR points' exports")
            .capability(Capability::Export)
            .capability(Capability::Import)
            .capability(Capability::Catalog);
        for name in KEEP {
            d = d.param(
                Param::integer(name)
                    .default(0)
                    .range(0..=i64::from(u32::MAX))
                    .describe("GFS retention of DR points (backup)"),
            );
        }
        d.param(
            Param::integer("max-chain")
                .default(MAX_CHAIN)
                .range(0..=i64::from(u32::MAX))
                .describe(
                    "The most DR points a chain holds before a run starts a new one (backup)",
                ),
        )
        .param(Param::integer("protection").default(0).range(0..).describe(
            "The DR location's protection period in seconds: younger points stay (backup)",
        ))
        .param(Param::flag("maintain").default(false).describe(
            "Whether this instance owns maintenance, so retention may remove points (backup)",
        ))
        .param(
            Param::text("settings").default("").describe(
                "The DR settings, one line, kept in the manifest for a recovery (backup)",
            ),
        )
        .param(Param::text("run-id").default("").describe(
            "The run's id, one word, kept in the manifest so the host knows its own points (backup)",
        ))
        .param(Param::text("last-point").default("").describe(
            "The manifest of the point this home's last recorded run sealed: of the points that \
             reach the cursor, the one the run extends (backup)",
        ))
    }

    fn run(action: &str, ctx: &Context) -> Result<Outputs> {
        match action {
            BACKUP => backup(ctx),
            RESTORE => restore(ctx),
            DELETE => delete(ctx),
            other => Err(Error::unknown_action(other)),
        }
    }
}

/// A DR point's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Manifest {
    cluster_id: String,
    mode: DrMode,
    from: u64,
    to: u64,
    time: u64,
    run: Option<String>,
    after: Option<String>,
    snapshot: Option<String>,
    settings: Option<String>,
    artifacts: Vec<Artifact>,
}

impl Manifest {
    fn render(&self) -> String {
        let mut s = format!(
            "{MAGIC}\ncluster-id {}\nmode {}\nfrom {}\nto {}\ntime {}\n",
            self.cluster_id, self.mode, self.from, self.to, self.time
        );
        if let Some(id) = &self.run {
            s.push_str(&format!("run {id}\n"));
        }
        if let Some(id) = &self.after {
            s.push_str(&format!("after {id}\n"));
        }
        if let Some(id) = &self.snapshot {
            s.push_str(&format!("snapshot {id}\n"));
        }
        if let Some(settings) = &self.settings {
            s.push_str(&format!("settings {settings}\n"));
        }
        for a in &self.artifacts {
            s.push_str(&format!("artifact {}", a.name()));
            for (k, v) in a.values() {
                s.push_str(&format!(" {k}={v}"));
            }
            s.push('\n');
        }
        s
    }

    fn parse(text: &str) -> Result<Manifest> {
        let bad = |why: &str| Error::invalid(format!("not a DR point manifest: {why}"));
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad(&format!("it does not start with `{MAGIC}`")));
        }
        let (mut cluster_id, mut mode, mut from, mut to, mut time) = (None, None, None, None, None);
        let (mut run, mut after, mut snapshot, mut settings) = (None, None, None, None);
        let mut artifacts = Vec::new();
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(&format!("`{v}` is not a number")))
        };
        for line in lines.filter(|l| !l.is_empty()) {
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "cluster-id" => cluster_id = Some(rest.to_owned()),
                "mode" => mode = Some(DrMode::parse(rest)?),
                "from" => from = Some(number(rest)?),
                "to" => to = Some(number(rest)?),
                "time" => time = Some(number(rest)?),
                "run" => run = Some(rest.to_owned()),
                "after" => after = Some(rest.to_owned()),
                "snapshot" => snapshot = Some(rest.to_owned()),
                "settings" => settings = Some(rest.to_owned()),
                "artifact" => {
                    let mut words = rest.split(' ');
                    let name = words
                        .next()
                        .filter(|n| !n.is_empty())
                        .ok_or_else(|| bad("an artifact without a name"))?;
                    let mut artifact = Artifact::new(name);
                    for word in words {
                        let (k, v) = word
                            .split_once('=')
                            .ok_or_else(|| bad(&format!("`{word}` is not key=value")))?;
                        artifact = artifact.value(k, v);
                    }
                    artifacts.push(artifact);
                }
                other => return Err(bad(&format!("unknown line `{other}`"))),
            }
        }
        let missing = |what: &str| bad(&format!("it has no `{what}` line"));
        Ok(Manifest {
            cluster_id: cluster_id.ok_or_else(|| missing("cluster-id"))?,
            mode: mode.ok_or_else(|| missing("mode"))?,
            from: from.ok_or_else(|| missing("from"))?,
            to: to.ok_or_else(|| missing("to"))?,
            time: time.ok_or_else(|| missing("time"))?,
            run,
            after,
            snapshot,
            settings,
            artifacts,
        })
    }

    /// The repository snapshots of the point's data exports.
    fn export_ids(&self) -> Vec<String> {
        self.artifacts
            .iter()
            .filter_map(|a| snapshot_of(a).map(str::to_owned))
            .collect()
    }

    fn point(&self) -> retention::Point {
        retention::Point {
            from: self.from,
            to: self.to,
            time: self.time,
            after: retention::After::Unsaid,
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Exports with `f` into a new export `name` and seals it; returns its artifact and what the
/// export covered.
fn export(
    name: &str,
    f: impl FnOnce(&Export) -> Result<catalog::ExportInfo>,
) -> Result<(Artifact, catalog::ExportInfo)> {
    let stream = Export::open(name)?;
    let info = f(&stream)?;
    let artifact = stream.finish()?;
    info!(
        "{name}: {} changes, {} bytes, up to change {}",
        info.changes, info.bytes, info.to_seq
    );
    Ok((artifact, info))
}

/// A DR point already in the location: what retention needs of it (its `after` line apart), the
/// manifest's export, the snapshot ids of its data exports, the point its `after` line names,
/// and the manifest once read.
struct Stored {
    point: retention::Point,
    export: Artifact,
    exports: Vec<String>,
    after: Option<String>,
    manifest: Option<Manifest>,
}

impl Stored {
    /// The repository snapshot of its manifest: the id `after` lines name.
    fn id(&self) -> &str {
        snapshot_of(&self.export).unwrap_or_default()
    }
}

/// What retention needs of `points`, their `after` lines resolved to indices.
fn linked(points: &[Stored]) -> Vec<retention::Point> {
    resolved(points.iter().map(|p| (p.id(), p.after.as_deref(), p.point)))
}

/// `points`, each given as (its manifest's id, the id its `after` line names, the point), with
/// their `after` lines resolved to indices among them: the one rule retention, rebasing and
/// restore link points by.
fn resolved<'a>(
    points: impl Iterator<Item = (&'a str, Option<&'a str>, retention::Point)>,
) -> Vec<retention::Point> {
    let points: Vec<_> = points.collect();
    points
        .iter()
        .map(|&(_, after, point)| retention::Point {
            after: match after {
                None => retention::After::Unsaid,
                Some(id) => points
                    .iter()
                    .position(|&(other, _, _)| other == id)
                    .map_or(retention::After::Missing, retention::After::Listed),
            },
            ..point
        })
        .collect()
}

/// The repository snapshot a data export artifact names.
fn snapshot_of(a: &Artifact) -> Option<&str> {
    a.get("snapshot")
}

/// What the host says of a stored point (values `from`, `to`, `time` and, when the manifest has
/// that line, `after` of its artifact, which the host keeps from the manifest so a run need not
/// read every manifest again), if it says it.
fn summary(a: &Artifact) -> Option<(retention::Point, Option<String>)> {
    let number = |k: &str| a.get(k).and_then(|v| v.parse::<u64>().ok());
    Some((
        retention::Point {
            from: number("from")?,
            to: number("to")?,
            time: number("time")?,
            after: retention::After::Unsaid,
        },
        a.get("after").map(str::to_owned),
    ))
}

/// The DR points the host listed (artifacts `stored-<n>`), and whether every one could be
/// read. One whose manifest cannot be read is left alone (never removed, never extended) and
/// reported.
fn stored(ctx: &Context) -> (Vec<Stored>, bool) {
    let mut points = Vec::new();
    let mut complete = true;
    for a in ctx
        .restore_point()
        .iter()
        .filter(|a| a.name().starts_with(STORED))
    {
        let exports = a.get("exports").map(|ids| {
            ids.split(',')
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
        let read = match (summary(a), exports) {
            (Some((point, after)), Some(exports)) => Ok((point, exports, after, None)),
            _ => read_manifest(a).map(|m| (m.point(), m.export_ids(), m.after.clone(), Some(m))),
        };
        match read {
            Ok((point, exports, after, manifest)) => points.push(Stored {
                point,
                export: a.clone(),
                exports,
                after,
                manifest,
            }),
            Err(e) => {
                warn!("{e}; leaving that DR point alone");
                complete = false;
            }
        }
    }
    (points, complete)
}

/// Removes the data exports in the location (artifacts `export-<n>`) that no DR point
/// references — left by runs killed before their manifest was sealed, or by a removal that
/// stopped after the manifest — once the protection period allows. `known` are the snapshot ids
/// every point (and this run) references. Returns (removed, held by protection, failed).
fn collect_unreferenced(
    ctx: &Context,
    known: &std::collections::BTreeSet<&str>,
    protection: u64,
) -> (usize, usize, usize) {
    let now = now();
    let (mut removed, mut held, mut failed) = (0, 0, 0);
    for a in ctx
        .restore_point()
        .iter()
        .filter(|a| a.name().starts_with(EXPORT))
        .filter(|a| snapshot_of(a).is_some_and(|id| !known.contains(id)))
    {
        let time = a.get("time").and_then(|t| t.parse::<u64>().ok());
        if time.is_none_or(|t| t.saturating_add(protection) > now) {
            held += 1;
            continue;
        }
        match data::delete(a) {
            Ok(()) => removed += 1,
            Err(e) => {
                warn!("could not remove an unreferenced DR export: {e}");
                failed += 1;
            }
        }
    }
    if removed + held + failed > 0 {
        info!(
            "unreferenced DR exports (of runs that did not finish): removed {removed}, {held} under protection, {failed} failed"
        );
    }
    (removed, held, failed)
}

fn policy(ctx: &Context) -> Result<retention::Policy> {
    let [last, hourly, daily, weekly, monthly, yearly] = KEEP.map(|k| ctx.param::<u32>(k));
    Ok(retention::Policy {
        rules: cairn_retention::Retention {
            last: last?,
            hourly: hourly?,
            daily: daily?,
            weekly: weekly?,
            monthly: monthly?,
            yearly: yearly?,
            ..cairn_retention::Retention::default()
        },
        max_chain: ctx.param::<u32>("max-chain")?,
    })
}

fn backup(ctx: &Context) -> Result<Outputs> {
    let state = catalog::state()?;
    let mode = state.mode;
    let policy = policy(ctx)?;
    let settings = Some(ctx.text("settings")?.to_owned()).filter(|s| !s.is_empty());
    if settings.as_deref().is_some_and(|s| s.contains('\n')) {
        return Err(Error::invalid("parameter `settings` must be one line"));
    }
    let run = Some(ctx.text("run-id")?.to_owned()).filter(|s| !s.is_empty());
    if run
        .as_deref()
        .is_some_and(|s| s.contains(char::is_whitespace))
    {
        return Err(Error::invalid("parameter `run-id` must be one word"));
    }
    let (mut points, complete) = stored(ctx);
    let cursor = state.cursor.unwrap_or(0);
    // The point the cursor came from: the one this home's last recorded run sealed, or (a run
    // that sealed its point and died before it was recorded) the newest that reaches it.
    let last_point = ctx.text("last-point")?;
    let known = linked(&points);
    let current = (cursor > 0)
        .then(|| {
            (0..known.len())
                .filter(|&i| known[i].to == cursor)
                .max_by_key(|&i| (points[i].id() == last_point, known[i].time, i))
        })
        .flatten();
    let rebased = if cursor == 0 || mode == DrMode::Legacy {
        None
    } else {
        retention::rebase(&policy, &known, current, now())
    };
    // With the cursor's point gone, the point this home's last recorded run sealed still says
    // where this run is: a new chain naming it reads as the same history, not a new one.
    let after = match current {
        Some(i) => Some(points[i].id().to_owned()),
        None => Some(last_point.to_owned()).filter(|id| cursor > 0 && !id.is_empty()),
    };
    if let Some(why) = &rebased {
        info!("starting a new chain: {why}");
    }
    let since = if rebased.is_some() { 0 } else { cursor };
    progress(Progress::percent(0.0).message(format!("DR run, mode {mode}, after change {since}")));
    let mut artifacts = Vec::new();
    let mut snapshot = None;
    let (from, to) = match mode {
        DrMode::Legacy => {
            let (a, full) = export("full", catalog::export_full)?;
            artifacts.push(a);
            (0, full.to_seq)
        }
        DrMode::NoSnapshot => {
            let (a, minimal) =
                export("minimal", |e| catalog::export_changes(since, mode, None, e))?;
            artifacts.push(a);
            (since, minimal.to_seq)
        }
        DrMode::LocalSnapshot | DrMode::ExportedSnapshot => {
            let snap = catalog::take_snapshot()?;
            info!(
                "local catalog snapshot {} at change {} ({} records)",
                snap.id, snap.seq, snap.records
            );
            let (a, minimal) = export("minimal", |e| {
                catalog::export_changes(since, mode, Some(&snap.id), e)
            })?;
            artifacts.push(a);
            if mode == DrMode::ExportedSnapshot {
                let (a, data) =
                    export("snapshot", |e| catalog::export_snapshot(&snap.id, since, e))?;
                if data.to_seq != minimal.to_seq {
                    return Err(Error::failed(format!(
                        "the snapshot's exports disagree on its cut ({} and {})",
                        minimal.to_seq, data.to_seq
                    )));
                }
                artifacts.push(a);
            }
            snapshot = Some(snap.id);
            (since, minimal.to_seq)
        }
    };
    progress(Progress::percent(80.0).message("sealing the DR point"));
    let manifest = Manifest {
        cluster_id: state.cluster_id,
        mode,
        from,
        to,
        time: now(),
        run,
        after,
        snapshot,
        settings,
        artifacts,
    };
    let stream = Export::open(MANIFEST)?;
    stream.write(manifest.render().as_bytes())?;
    let point = stream.finish()?;
    // Only a sealed point moves the cursor: a run that dies before here is run again.
    catalog::advance_cursor(to)?;
    progress(Progress::percent(90.0).message(format!("DR point up to change {to}")));
    let mut outputs = Outputs::new()
        .value("mode", mode.as_str())
        .value("from", from)
        .value("to", to);
    if let Some(why) = rebased {
        outputs = outputs.value("rebased", why);
    }
    for a in &manifest.artifacts {
        outputs = outputs.artifact(a.clone());
    }
    outputs = outputs.artifact(point.clone());
    points.push(Stored {
        point: manifest.point(),
        export: point,
        exports: manifest.export_ids(),
        after: manifest.after.clone(),
        manifest: Some(manifest),
    });
    let outputs = if ctx.flag("maintain")? {
        let protection = ctx.integer("protection")?;
        let outputs = retain(&policy, protection, &points, outputs);
        if complete {
            let known = points
                .iter()
                .flat_map(|p| p.exports.iter().map(String::as_str))
                .collect();
            let (removed, held, failed) =
                collect_unreferenced(ctx, &known, u64::try_from(protection).unwrap_or(0));
            outputs
                .value("unreferenced-removed", removed)
                .value("unreferenced-protected", held)
                .value("unreferenced-failed", failed)
        } else {
            info!("unreferenced DR exports not collected: a DR point here could not be read");
            outputs
        }
    } else {
        info!("retention skipped: this instance does not own maintenance of the backup data");
        outputs.value("retention", "skipped")
    };
    progress(Progress::percent(100.0).message(format!("DR point up to change {to}")));
    Ok(outputs)
}

/// Removes the points `policy` does not keep (and no kept point's chain needs); reports what it
/// kept, removed and could not remove in `outputs`.
fn retain(
    policy: &retention::Policy,
    protection: i64,
    points: &[Stored],
    outputs: Outputs,
) -> Outputs {
    let known = linked(points);
    let protection = u64::try_from(protection).unwrap_or(0);
    let (needed, held) = retention::decide(policy, protection, &known, now());
    let (mut removed, mut failed) = (Vec::new(), 0);
    for (i, p) in points.iter().enumerate().filter(|(i, _)| !needed[*i]) {
        let manifest = match &p.manifest {
            Some(m) => Ok(m.clone()),
            None => read_manifest(&p.export),
        };
        match manifest.and_then(|m| remove_point(&p.export, &m)) {
            Ok(_) => removed.push(
                p.export
                    .get("snapshot")
                    .unwrap_or(p.export.name())
                    .to_owned(),
            ),
            Err(e) => {
                warn!(
                    "retention could not remove the DR point up to change {}: {e}",
                    known[i].to
                );
                failed += 1;
            }
        }
    }
    let kept = needed.iter().filter(|&&n| n).count();
    info!(
        "retention: kept {kept} DR point(s) ({held} under protection), removed {}",
        removed.len()
    );
    outputs
        .value("retention", "applied")
        .value("kept", kept)
        .value("protected", held)
        .value("removed", removed.len())
        .value("removed-points", removed.join(","))
        .value("remove-failed", failed)
}

fn read_manifest(artifact: &Artifact) -> Result<Manifest> {
    let import = Import::open(artifact)?;
    let mut bytes = Vec::new();
    loop {
        let chunk = import.read(64 << 10)?;
        if chunk.is_empty() {
            break;
        }
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_MANIFEST as usize {
            return Err(Error::invalid(format!(
                "DR point `{}` has a manifest over {MAX_MANIFEST} bytes",
                artifact.name()
            )));
        }
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::invalid(format!("DR point `{}` is not text", artifact.name())))?;
    Manifest::parse(&text).map_err(|e| e.context(format_args!("DR point `{}`", artifact.name())))
}

/// The chain that ends at `point`, oldest first, from `candidates`; each a manifest with its
/// id (the repository snapshot `after` lines name). Only candidates of the point's cluster and
/// mode can be links (a new mode starts a new chain).
fn chain(point: (String, Manifest), candidates: Vec<(String, Manifest)>) -> Result<Vec<Manifest>> {
    let mut all: Vec<(String, Manifest)> = candidates
        .into_iter()
        .filter(|(_, m)| m.cluster_id == point.1.cluster_id && m.mode == point.1.mode)
        .collect();
    all.push(point);
    let points = resolved(
        all.iter()
            .map(|(id, m)| (id.as_str(), m.after.as_deref(), m.point())),
    );
    let mut at = all.len() - 1;
    let mut chain = vec![at];
    loop {
        let need = points[at].from;
        match retention::predecessor(&points, at) {
            Ok(None) => break,
            Ok(Some(p)) if !chain.contains(&p) => {
                chain.push(p);
                at = p;
            }
            Ok(Some(_)) | Err(retention::Gap::Missing) => {
                let named = all[at]
                    .1
                    .after
                    .as_deref()
                    .map(|id| format!(" ({id}, which DR point {} names)", all[at].0))
                    .unwrap_or_default();
                return Err(Error::not_found(format!(
                    "the DR point that reaches change {need}{named} is missing, so the chain \
                     cannot be rebuilt; restore an older point (`cairn dr review`)"
                )));
            }
            Err(retention::Gap::Ambiguous(fit)) => {
                let ids: Vec<&str> = fit.iter().map(|&i| all[i].0.as_str()).collect();
                return Err(Error::invalid(format!(
                    "DR point {} (written by an older version, without an `after` line) extends \
                     the point that reaches change {need}, and more than one does: {}. They \
                     belong to different histories (a home put back to an older catalog, or a \
                     copied one, wrote here) and which one it extends cannot be told, so it is \
                     not restored as a mixture; restore one of those points, or a point written \
                     since by this version (`cairn dr review`)",
                    all[at].0,
                    ids.join(" and ")
                )));
            }
        }
    }
    let mut chain: Vec<Manifest> = chain.into_iter().map(|i| all[i].1.clone()).collect();
    chain.reverse();
    Ok(chain)
}

/// The manifest of artifact `a`, with its id (the repository snapshot `after` lines name).
fn identified(a: &Artifact) -> Result<(String, Manifest)> {
    Ok((
        snapshot_of(a).unwrap_or(a.name()).to_owned(),
        read_manifest(a)?,
    ))
}

fn restore(ctx: &Context) -> Result<Outputs> {
    let point = identified(ctx.artifact(POINT)?)?;
    let mut candidates = Vec::new();
    for a in ctx.restore_point().iter().filter(|a| a.name() != POINT) {
        candidates.push(identified(a)?);
    }
    let (mode, to) = (point.1.mode, point.1.to);
    let chain = chain(point, candidates)?;
    info!(
        "restoring {} DR point(s) of mode {mode}, up to change {to}",
        chain.len()
    );
    let (mut applied, mut skipped) = (0, 0);
    for (i, m) in chain.iter().enumerate() {
        for a in &m.artifacts {
            let import = Import::open(a)?;
            let done = catalog::apply(&import).map_err(|e| {
                e.context(format_args!(
                    "applying `{}` of the point up to {}",
                    a.name(),
                    m.to
                ))
            })?;
            applied += done.applied;
            skipped += done.skipped;
        }
        progress(
            Progress::percent(100.0 * (i + 1) as f32 / chain.len() as f32)
                .message(format!("applied up to change {}", m.to)),
        );
    }
    let mut outputs = Outputs::new()
        .value("mode", mode.as_str())
        .value("to", to)
        .value("points", chain.len());
    // A local-snapshot point exports only the minimal catalog data: its actions and local
    // restore points are in the local snapshot, which only the instance that took it holds.
    if let (DrMode::LocalSnapshot, Some(id)) =
        (mode, chain.last().and_then(|m| m.snapshot.as_deref()))
    {
        match catalog::apply_local_snapshot(id) {
            Ok(done) => {
                info!(
                    "recovered in place: actions and local restore points from the local catalog snapshot {id}"
                );
                applied += done.applied;
                skipped += done.skipped;
                outputs = outputs.value("in-place", true);
            }
            Err(Error::NotFound(why)) => {
                info!(
                    "{why}: actions and local restore points stay behind (they are restored only where \
                     the local catalog snapshot {id} is, or from an exported-snapshot point)"
                );
                outputs = outputs.value("in-place", false);
            }
            Err(e) => return Err(e.context(format_args!("local catalog snapshot {id}"))),
        }
    }
    Ok(outputs.value("applied", applied).value("skipped", skipped))
}

/// Removes one DR point: its manifest first (so a point half removed is never offered), then
/// its data exports. Returns how many exports it removed.
fn remove_point(export: &Artifact, manifest: &Manifest) -> Result<usize> {
    data::delete(export)?;
    for data in &manifest.artifacts {
        data::delete(data)?;
    }
    Ok(1 + manifest.artifacts.len())
}

fn delete(ctx: &Context) -> Result<Outputs> {
    let mut removed = 0;
    for a in ctx.restore_point() {
        removed += remove_point(a, &read_manifest(a)?)?;
    }
    Ok(Outputs::new().value("removed", removed))
}

cairn_sdk::export!(Dr);

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(from: u64, to: u64, time: u64) -> Manifest {
        Manifest {
            cluster_id: "c1".into(),
            mode: DrMode::NoSnapshot,
            from,
            to,
            time,
            run: None,
            after: None,
            snapshot: None,
            settings: None,
            artifacts: vec![
                Artifact::new("minimal")
                    .value("kind", "repository")
                    .value("snapshot", "abc"),
            ],
        }
    }

    #[test]
    fn manifests_round_trip() {
        let mut m = manifest(3, 9, 100);
        m.snapshot = Some("catalog-9".into());
        m.run = Some("5f0c8e4a-0d7e-4c59-9a43-2d8f1e6b7a10".into());
        m.after = Some("9d2f41c07a1b".into());
        m.settings = Some(r#"{"profile":"s3://b/dr","keep":[1, 2]}"#.into());
        assert_eq!(Manifest::parse(&m.render()), Ok(m));
        assert!(Manifest::parse("hello").is_err());
        assert!(Manifest::parse(MAGIC).is_err());
    }

    fn named(id: &str, m: Manifest) -> (String, Manifest) {
        (id.to_owned(), m)
    }

    fn after(id: &str, from: u64, to: u64, time: u64) -> Manifest {
        Manifest {
            after: Some(id.to_owned()),
            ..manifest(from, to, time)
        }
    }

    fn times(chain: Result<Vec<Manifest>>) -> Vec<u64> {
        chain
            .map(|c| c.iter().map(|m| m.time).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_chain_is_walked_back_to_its_base() {
        let chain = chain(
            named("c", manifest(9, 12, 3)),
            vec![
                named("a", manifest(0, 4, 1)),
                named("b", manifest(4, 9, 2)),
                named("d", manifest(12, 15, 4)),
            ],
        );
        assert_eq!(times(chain), [1, 2, 3]);
        assert!(matches!(
            super::chain(
                named("c", manifest(9, 12, 3)),
                vec![named("a", manifest(0, 4, 1))]
            ),
            Err(Error::NotFound(_))
        ));
    }

    /// A point of a retired history (a home put back to an older catalog, whose new
    /// points were accepted) is restored with its own chain, not the newer history's point
    /// that reaches the same change.
    #[test]
    fn a_point_follows_its_after_line_not_a_newer_history() {
        let candidates = || {
            vec![
                named("p1", manifest(0, 2, 1)),
                named("p2", after("p1", 2, 4, 2)),
                named("q1", manifest(0, 4, 4)),
                named("q2", after("q1", 4, 6, 5)),
            ]
        };
        assert_eq!(
            times(chain(named("p3", after("p2", 4, 5, 3)), candidates())),
            [1, 2, 3]
        );
        assert_eq!(
            times(chain(named("q3", after("q2", 6, 7, 6)), candidates())),
            [4, 5, 6]
        );
        // The point named is gone: never another history's instead.
        let gone = super::chain(
            named("p3", after("p2", 4, 5, 3)),
            vec![named("q1", manifest(0, 4, 4))],
        );
        assert!(
            matches!(&gone, Err(Error::NotFound(why)) if why.contains("p2")),
            "{gone:?}"
        );
        // Older manifests: two histories that fit are refused, naming both.
        let both = super::chain(
            named("p3", manifest(4, 5, 3)),
            vec![
                named("p2", manifest(2, 4, 2)),
                named("p1", manifest(0, 2, 1)),
                named("q1", manifest(0, 4, 1)),
            ],
        );
        assert!(
            matches!(&both, Err(Error::Invalid(why)) if why.contains("p2") && why.contains("q1")),
            "{both:?}"
        );
    }
}
