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
//! snapshot <id>         the local catalog snapshot, when the mode takes one
//! artifact <name> <key>=<value> ...   one per data export, in the order to apply them
//! ```
//!
//! # Restore (`restore`)
//!
//! The artifacts are DR point manifests: the one named `point` is the point to restore, the
//! others (any name) are candidates for its chain. Starting at `point`, the chain is walked
//! back through the manifests whose `to` is the previous one's `from`, down to a point with
//! `from 0`; then every point's data exports are applied oldest first. A missing link is an
//! error naming the sequence it needs.
//!
//! # Delete (`delete`)
//!
//! Removes the data exports and the manifest of the points named by the artifacts.

use cairn_sdk::catalog::{self, DrMode};
use cairn_sdk::data::{self, Export, Import};
use cairn_sdk::lifecycle::{BACKUP, DELETE, RESTORE};
use cairn_sdk::{Artifact, Blueprint, Capability, Context, Description, Error, Outputs, Result};
use cairn_sdk::{Progress, info, progress};

/// The first line of a manifest.
const MAGIC: &str = "cairn-dr-point 1";
/// The name of the manifest export, and of the artifact naming the point to restore.
const MANIFEST: &str = "dr-point";
/// The artifact a restore starts from.
const POINT: &str = "point";
/// The largest manifest read back.
const MAX_MANIFEST: u32 = 1 << 20;

struct Dr;

impl Blueprint for Dr {
    fn describe() -> Description {
        Description::new("dr", env!("CARGO_PKG_VERSION"))
            .describe("Cairn's own disaster recovery: exports the catalog per the DR mode, and rebuilds it")
            .action(BACKUP, "Run DR: export the catalog changes per the mode, then seal a DR point")
            .action(RESTORE, "Rebuild the catalog from a DR point and its chain")
            .action(DELETE, "Remove DR points' exports")
            .capability(Capability::Export)
            .capability(Capability::Import)
            .capability(Capability::Catalog)
    }

    fn run(action: &str, ctx: &Context) -> Result<Outputs> {
        match action {
            BACKUP => backup(),
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
    snapshot: Option<String>,
    artifacts: Vec<Artifact>,
}

impl Manifest {
    fn render(&self) -> String {
        let mut s = format!(
            "{MAGIC}\ncluster-id {}\nmode {}\nfrom {}\nto {}\ntime {}\n",
            self.cluster_id, self.mode, self.from, self.to, self.time
        );
        if let Some(id) = &self.snapshot {
            s.push_str(&format!("snapshot {id}\n"));
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
        let mut snapshot = None;
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
                "snapshot" => snapshot = Some(rest.to_owned()),
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
            snapshot,
            artifacts,
        })
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

fn backup() -> Result<Outputs> {
    let state = catalog::state()?;
    let mode = state.mode;
    let since = state.cursor.unwrap_or(0);
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
        snapshot,
        artifacts,
    };
    let stream = Export::open(MANIFEST)?;
    stream.write(manifest.render().as_bytes())?;
    let point = stream.finish()?;
    // Only a sealed point moves the cursor: a run that dies before here is run again.
    catalog::advance_cursor(to)?;
    progress(Progress::percent(100.0).message(format!("DR point up to change {to}")));
    let mut outputs = Outputs::new()
        .value("mode", mode.as_str())
        .value("from", from)
        .value("to", to);
    for a in manifest.artifacts {
        outputs = outputs.artifact(a);
    }
    Ok(outputs.artifact(point))
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

/// The chain that ends at `point`, oldest first, from `candidates`.
fn chain(point: Manifest, candidates: Vec<Manifest>) -> Result<Vec<Manifest>> {
    let cluster = point.cluster_id.clone();
    let mut need = point.from;
    let mut chain = vec![point];
    while need > 0 {
        let previous = candidates
            .iter()
            .filter(|m| m.to == need && m.from < need && m.cluster_id == cluster)
            .max_by_key(|m| m.time)
            .cloned()
            .ok_or_else(|| {
                Error::not_found(format!(
                    "the DR point that reaches change {need} is missing, so the chain cannot be rebuilt; \
                     restore an older point (`cairn dr review`)"
                ))
            })?;
        need = previous.from;
        chain.push(previous);
    }
    chain.reverse();
    Ok(chain)
}

fn restore(ctx: &Context) -> Result<Outputs> {
    let point = read_manifest(ctx.artifact(POINT)?)?;
    let mut candidates = Vec::new();
    for a in ctx.restore_point().iter().filter(|a| a.name() != POINT) {
        candidates.push(read_manifest(a)?);
    }
    let (mode, to) = (point.mode, point.to);
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
    Ok(Outputs::new()
        .value("mode", mode.as_str())
        .value("to", to)
        .value("points", chain.len())
        .value("applied", applied)
        .value("skipped", skipped))
}

fn delete(ctx: &Context) -> Result<Outputs> {
    let mut removed = 0;
    for a in ctx.restore_point() {
        let manifest = read_manifest(a)?;
        for data in &manifest.artifacts {
            data::delete(data)?;
            removed += 1;
        }
        data::delete(a)?;
        removed += 1;
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
            snapshot: None,
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
        assert_eq!(Manifest::parse(&m.render()), Ok(m));
        assert!(Manifest::parse("hello").is_err());
        assert!(Manifest::parse(MAGIC).is_err());
    }

    #[test]
    fn the_chain_is_walked_back_to_its_base() {
        let chain = chain(
            manifest(9, 12, 3),
            vec![manifest(0, 4, 1), manifest(4, 9, 2), manifest(12, 15, 4)],
        );
        let tos: Vec<u64> = chain
            .map(|c| c.iter().map(|m| m.to).collect())
            .unwrap_or_default();
        assert_eq!(tos, [4, 9, 12]);
        assert!(matches!(
            super::chain(manifest(9, 12, 3), vec![manifest(0, 4, 1)]),
            Err(Error::NotFound(_))
        ));
    }
}
