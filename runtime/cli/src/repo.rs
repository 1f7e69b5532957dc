//! `cairn repo …`: manage export repositories from the command line.
//!
//! The repository is `--repo URL` (or `CAIRN_REPO`): a local path, `file://`, `s3://`, `az://`
//! or `gs://` URL; backend settings come from `--option key=value` (e.g.
//! `aws_endpoint=http://127.0.0.1:9000`) or the usual `AWS_*`/`AZURE_*`/`GOOGLE_*` variables.
//! The key is a passphrase from `CAIRN_PASSPHRASE` or `--passphrase-file`, or a key file
//! (`--key-file`).
//!
//! Exit codes (beyond the shared ones of [`crate::exit`]):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | the operation ran and found a problem: `check` found damage, a restore hit damaged data, the command of `backup --stdin-from-command` failed |
//! | 2 | usage: bad arguments, no such snapshot, no key given, a `--stdin-from-command` command that cannot be started, `init` where a repository is, removing the last key slot or the one in use |
//! | 3 | runtime: I/O or object-store failure |
//! | 4 | wrong passphrase or key |
//! | 5 | the repository is locked by another process; retry later |
//! | 6 | refused by the protection period (immutability) |
//! | 7 | no repository there, or a format version this build cannot read |
//! | 130 | a restore or a directory's backup was interrupted (Ctrl-C, SIGTERM): nothing half written is left |
//! | 141 | standard output was closed early (`\| head`): the rest is dropped, quietly |

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use cairn_repository::{
    BackupOptions, DEFAULT_REPACK_UNUSED, Error, InitOptions, KeyFile, KeyProvider, Location,
    Parent, Passphrase, PruneOptions, ReadData, Repository, RestoreOptions, Retention,
    SnapshotFilter, SnapshotInfo, SnapshotKind,
};
use serde_json::json;

use crate::Output;

/// Exit code: wrong passphrase or key.
pub const EXIT_WRONG_KEY: u8 = 4;
/// Exit code: locked by another process.
pub const EXIT_LOCKED: u8 = 5;
/// What a repair that dropped chunks says of the next backups (its repair marker).
fn repaired_line(marked: bool) -> Option<String> {
    marked.then(|| {
        "the next tree backup reads again every file of several chunks rather than taking it \
         from an older snapshot, so that what was lost is stored again"
            .to_owned()
    })
}

/// Exit code: refused by the protection period.
pub const EXIT_PROTECTED: u8 = 6;
/// Exit code: no repository, or an unsupported format version.
pub const EXIT_NO_REPOSITORY: u8 = 7;

/// How often progress bars are redrawn from the backup's byte counter.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Options shared by every `cairn repo` subcommand.
#[derive(Debug, clap::Args)]
pub struct RepoArgs {
    #[command(flatten)]
    select: RepoSelect,
    /// How results are printed on stdout.
    #[arg(
        long,
        value_enum,
        default_value_t,
        global = true,
        help_heading = "Global options"
    )]
    output: Output,
    #[command(subcommand)]
    command: RepoCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RepoCommand {
    /// Create a repository.
    Init {
        /// Protection period during which nothing may be deleted or overwritten: `30d`, `6mo`
        /// (a month counts 30 days), `1y` (365). It cannot be changed later.
        #[arg(long, value_parser = Retention::parse_period, value_name = "DURATION")]
        protection: Option<Duration>,
    },
    /// Back up a directory or a file, standard input with `-`, or a command's output.
    Backup {
        /// The directory or file (a file is a tree of that one file, restored under its
        /// name), or `-` for standard input (none with --stdin-from-command).
        source: Option<PathBuf>,
        /// The stream's name when backing up standard input or a command's output.
        #[arg(long, value_name = "NAME")]
        stdin_name: Option<String>,
        /// Back up the standard output of the command given after `--` as a stream
        /// (`--stdin-name db.sql --stdin-from-command -- pg_dump mydb`). The snapshot is saved
        /// only if the command exits with status 0, so a dump that failed halfway is never
        /// taken for a whole one; its standard error goes to cairn's.
        #[arg(long)]
        stdin_from_command: bool,
        /// A tag for the snapshot; repeatable, or comma-separated (`--tag a,b`, as restic).
        #[arg(long, value_delimiter = ',')]
        tag: Vec<String>,
        /// zstd level for all data, -7 to 22 (default: 1, and 3 for text such as dumps and
        /// logs; negative is faster, higher compresses more).
        #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-7..=22))]
        zstd_level: Option<i32>,
        /// Leave out what this glob matches; repeatable. Without `/` it matches a name at
        /// any depth (`*.tmp`); with `/`, the path from the directory (`/postmaster.pid`,
        /// `pg_wal/**` for what pg_wal holds). `*` and `?` stay within a name, `**` crosses.
        #[arg(long, value_name = "PATTERN")]
        exclude: Vec<String>,
        /// Stay on the directory's filesystem: a directory where another is mounted (a
        /// `/proc`, a network share, a second disk) is kept, empty, and not read.
        #[arg(long, short = 'x')]
        one_file_system: bool,
        /// Take the files that did not change (size, times and inode) from this tree snapshot
        /// (`latest`: the newest tree) instead of reading them (default: the latest of the
        /// same directory and host).
        #[arg(long, value_name = "ID", conflicts_with = "force")]
        parent: Option<String>,
        /// Read every file, trusting no earlier snapshot.
        #[arg(long)]
        force: bool,
        /// Record the snapshot as made on this host (default: this machine's hostname); a
        /// directory's backup takes unchanged files from the host's latest snapshot of it. A
        /// pod gets a new hostname each run: give it a stable one.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// While a prune holds the repository, wait up to this long for it to finish (e.g.
        /// 30m) instead of failing at once (exit 5). Backups of `cairn run` and policies wait
        /// up to 30 minutes before they start.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        retry_lock: Option<std::time::Duration>,
        /// The command of --stdin-from-command and its arguments, after `--`.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List snapshots.
    Snapshots {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Restore a snapshot: a tree into a directory, a stream to a file or `-` (stdout), one
    /// file of a tree to `-` with --include.
    Restore {
        /// Snapshot id, unique prefix, or `latest`: the newest snapshot, or, when those the
        /// filters select hold trees and streams, the newest of the kind the target takes
        /// (`-`: a stream; an existing directory or a path ending in `/`: a tree; --include,
        /// --sparse or --delete: a tree). A target that says neither takes the newest tree, when
        /// it is newer than every stream, and is refused otherwise.
        id: String,
        /// Target directory, or `-` for standard output (a stream, or the one file of a tree
        /// that --include names).
        #[arg(long)]
        target: PathBuf,
        /// Restore only this path of a tree snapshot (relative to its root), with what is
        /// under it; repeatable.
        #[arg(long, value_name = "PATH")]
        include: Vec<PathBuf>,
        /// Which snapshot `latest` is: of those these select.
        #[command(flatten)]
        filter: FilterArgs,
        /// Leave holes where a tree's files hold whole 4 KiB blocks of zeros (disk images),
        /// instead of writing them. A preallocated file (a database's WAL segment) is then
        /// no longer allocated, so it is off by default.
        #[arg(long)]
        sparse: bool,
        /// Once every file is written, remove what the target holds that the snapshot does
        /// not (only below the --include paths when some are given; of a file's snapshot,
        /// nothing beside the file), so the target becomes the snapshot: a database's data
        /// directory rolled back in place, without the files it made since. Without it, other
        /// files stay. A directory where the snapshot has a file goes first, with what it
        /// holds (without --delete, the restore refuses it). When some of the snapshot's files
        /// cannot be restored (damage), the rest is still made the snapshot, and the target's
        /// own copies of those files stay as they were.
        #[arg(long)]
        delete: bool,
    },
    /// List what a tree snapshot holds: type, mode, owner, size, modification time (in the
    /// local time zone, `TZ`; UTC in `--output json`) and path.
    Ls {
        /// Snapshot id, unique prefix, or `latest` (the newest tree snapshot).
        id: String,
        /// Only these paths (relative to the snapshot's root), with what is under them.
        paths: Vec<PathBuf>,
        /// Which snapshot `latest` is: the newest tree of those these select.
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Which tree snapshots hold what the patterns match, newest first: a name at any depth
    /// (`*.conf`), or with `/` a path from the root (`etc/**/pg_hba.conf`), as --exclude.
    /// Times are in the local time zone (`TZ`), in UTC with `--output json`.
    Find {
        /// Patterns; an entry matching any is listed.
        #[arg(required = true, value_name = "PATTERN")]
        patterns: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// What changed between two tree snapshots: `+` added, `-` removed, `M` modified, `T`
    /// type changed, `U` permissions, owner, modification time or extended attributes only.
    Diff {
        /// The earlier snapshot: id, unique prefix, or `latest` (the newest tree snapshot).
        from: String,
        /// The later snapshot: id, unique prefix, or `latest` (the newest tree snapshot).
        to: String,
    },
    /// Copy snapshots into another repository (an offsite copy), keeping their time, host,
    /// tags and source. Snapshots copied there before are skipped, so it can follow every
    /// backup; the destination is read with its own key and must exist (`cairn repo init`).
    Copy {
        /// Snapshots to copy: ids, unique prefixes or `latest`. Without any, every snapshot
        /// the filters select (all, without filters).
        ids: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        to: CopyTarget,
        /// zstd level for what the destination stores, -7 to 22 (default: 1, and 3 for text).
        #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-7..=22))]
        zstd_level: Option<i32>,
    },
    /// What the repository holds and what it costs: snapshots, distinct data, stored bytes,
    /// and the deduplication and compression between them.
    Stats,
    /// Verify the repository.
    Check {
        /// Also read, decrypt and verify every chunk.
        #[arg(long)]
        read_data: bool,
        /// Read and verify only part of the data: `N/M` reads group N of M (checks of 1/M
        /// to M/M read every pack once), `P%` a random share of the packs.
        #[arg(long, value_name = "N/M|P%", conflicts_with = "read_data",
              value_parser = parse_subset)]
        read_data_subset: Option<ReadData>,
    },
    /// Remove snapshots by GFS retention, or the ones named.
    Forget {
        /// Snapshots to remove by name (ids, unique prefixes or `latest`) instead of by
        /// retention rules.
        ids: Vec<String>,
        /// Keep the newest N snapshots (of each path or stream and host, as every rule).
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_last: u32,
        /// Keep the newest snapshot of each of the last N hours that have one.
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_hourly: u32,
        /// Keep the newest snapshot of each of the last N days that have one.
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_daily: u32,
        /// Keep the newest snapshot of each of the last N weeks that have one.
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_weekly: u32,
        /// Keep the newest snapshot of each of the last N months that have one.
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_monthly: u32,
        /// Keep the newest snapshot of each of the last N years that have one.
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_yearly: u32,
        /// Keep every snapshot made within this long of the newest one in its series, as
        /// restic does: "7d", "36h", "1y 6mo" (calendar years and months counted back from the
        /// newest snapshot's date), also w, min, s. A bare "m" is refused: write "mo" or "min".
        #[arg(long, value_parser = Retention::parse_within, value_name = "DURATION")]
        keep_within: Option<(u32, u64)>,
        /// Count hours, days, weeks, months and years in this time zone: `local` (TZ's), or
        /// a name such as Europe/Paris. Default: UTC.
        /// Another zone moves the periods' edges, so a snapshot kept as the newest of its day,
        /// week or year may no longer be: try it with --dry-run first, and keep to one zone.
        #[arg(long, value_name = "ZONE", default_value = "UTC")]
        time_zone: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Show what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Prune afterwards.
        #[arg(long)]
        prune: bool,
    },
    /// Delete data no snapshot references.
    Prune {
        /// Show what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Repack a pack in use once this share of it is unused (percent; 100 never
        /// repacks): its live chunks are copied into new packs and the next prune deletes it.
        #[arg(long, value_name = "PERCENT", default_value_t = DEFAULT_REPACK_UNUSED * 100.0,
              value_parser = parse_percent)]
        repack_unused: f64,
    },
    /// List the repository's locks and remove those whose holder is gone (not refreshed
    /// for 30 minutes, or a dead process of this host).
    Unlock {
        /// Remove every lock, also of holders that may still run: only when no backup or
        /// prune runs anywhere (a lost node's lock otherwise holds for 30 minutes).
        #[arg(long)]
        remove_all: bool,
    },
    /// Manage key slots.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Repair the repository's metadata.
    #[command(subcommand)]
    Repair(RepairCommand),
}

#[derive(Debug, clap::Subcommand)]
enum RepairCommand {
    /// Index again, from their own headers, the packs no readable index file lists (an index
    /// file deleted or damaged: `prune` refuses until this has run), then remove the damaged
    /// index files.
    Index {
        /// Show what would be indexed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Repair damaged packs, as `check --read-data` names them: store their intact chunks
    /// again in new packs, delete them, and drop them from the index. Until then every backup
    /// of the same data reuses their damaged chunks; after, the next one stores those again,
    /// and the snapshots that needed them restore again.
    Packs {
        /// Pack ids (or unique prefixes).
        #[arg(required = true, value_name = "PACK")]
        packs: Vec<String>,
        /// Show what is damaged, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write again, without the files whose data is lost, the tree snapshots that need chunks
    /// no pack holds, so the rest of each restores, `check` passes and `prune` runs. Run
    /// `repair index` and `repair packs` first. A repaired snapshot keeps the time, host,
    /// source and tags, and is tagged `repaired`. If the lost files still exist, back them up
    /// instead: the snapshots that need them then restore again whole.
    Snapshots {
        /// Snapshot ids (or unique prefixes); every snapshot when none is given.
        #[arg(value_name = "SNAPSHOT")]
        snapshots: Vec<String>,
        /// Remove each damaged snapshot once its repair is written.
        #[arg(long)]
        forget: bool,
        /// Show which files are lost, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_subset(s: &str) -> Result<ReadData, String> {
    ReadData::parse_subset(s).map_err(|e| e.to_string())
}

/// A percentage from 0 to 100.
fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("`{s}` is not a percentage from 0 to 100")),
    }
}

#[derive(Debug, clap::Args)]
struct FilterArgs {
    /// Only snapshots with this tag; repeatable, or comma-separated (all must match: a tag
    /// holds no comma).
    #[arg(long, value_delimiter = ',')]
    tag: Vec<String>,
    /// Only snapshots of this path or stream name.
    #[arg(long)]
    path: Option<String>,
    /// Only snapshots made on this host (as `backup --host` recorded it).
    #[arg(long)]
    host: Option<String>,
    /// Only snapshots made at or after this time: RFC 3339, a local date and time
    /// (2026-01-31T12:00:00; the zone is TZ's), a date (2026-01-31) or a while ago (36h, 7d,
    /// 2w, 1y 6mo).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only snapshots made before this time (as --since takes it).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

impl FilterArgs {
    /// Whether any filter was given.
    fn given(&self) -> bool {
        !self.tag.is_empty()
            || self.path.is_some()
            || self.host.is_some()
            || self.since.is_some()
            || self.until.is_some()
    }

    /// Refuses filters beside a snapshot named by id: they only choose which is `latest`.
    fn refuse_beside(&self, id: &str) -> anyhow::Result<()> {
        if self.given() && id != "latest" {
            return Err(usage(format!(
                "--tag, --path, --host, --since and --until choose which snapshot `latest` is; \
                 snapshot {id} is named already: leave them out"
            )));
        }
        Ok(())
    }

    /// The tree snapshot `id` names, where `latest` is the newest *tree* of those these select
    /// (restic's `latest` with `--host`, `--path`, `--tag`): a stream saved since, which a
    /// listing cannot take, does not hide it.
    async fn tree(&self, repo: &Repository, id: &str) -> anyhow::Result<SnapshotInfo> {
        self.refuse_beside(id)?;
        if !self.given() {
            return Ok(repo.tree_snapshot(id).await?);
        }
        let snaps = repo.snapshots(&self.filter()?).await?;
        let any = !snaps.is_empty();
        snaps.into_iter().rev().find(is_tree).ok_or_else(|| {
            usage(if any {
                "the snapshots --tag, --path, --host, --since and --until select are all \
                 streams: there is no tree among them to be `latest`; select a directory's \
                 backups (--path DIR), or restore a stream with `cairn repo restore`"
            } else {
                "no snapshot matches --tag, --path, --host, --since and --until: there is no \
                 `latest` among them"
            })
        })
    }

    /// The snapshots a restore of `latest` chooses among (all, without filters); the chunk
    /// index loads meanwhile.
    async fn to_restore(&self, repo: &Repository) -> anyhow::Result<Vec<SnapshotInfo>> {
        let snaps = repo.snapshots_to_restore(&self.filter()?).await?;
        if snaps.is_empty() {
            return Err(if self.given() {
                usage(
                    "no snapshot matches --tag, --path, --host, --since and --until: there is \
                     no `latest` among them",
                )
            } else {
                Error::NotFound {
                    kind: "snapshot",
                    id: "latest".into(),
                }
                .into()
            });
        }
        Ok(snaps)
    }

    fn filter(&self) -> anyhow::Result<SnapshotFilter> {
        let mut f = SnapshotFilter::new();
        // `--tag a,` is `--tag a`.
        for t in self.tag.iter().filter(|t| !t.is_empty()) {
            f = f.tag(t);
        }
        if let Some(p) = &self.path {
            f = f.source(p);
        }
        if let Some(h) = &self.host {
            f = f.host(h);
        }
        if let Some(t) = &self.since {
            f = f
                .since(t, &local_zone())
                .map_err(|e| usage(e.to_string()))?;
        }
        if let Some(t) = &self.until {
            f = f
                .until(t, &local_zone())
                .map_err(|e| usage(e.to_string()))?;
        }
        Ok(f)
    }
}

#[derive(Debug, clap::Subcommand)]
enum KeyCommand {
    /// Add a key slot: a new passphrase (CAIRN_NEW_PASSPHRASE or --new-passphrase-file) or a
    /// key file.
    Add {
        #[command(flatten)]
        new: NewKeyArgs,
        /// A label for the slot.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List key slots.
    List,
    /// Remove a key slot (the last one is refused).
    Remove {
        /// Slot id or unique prefix.
        id: String,
    },
    /// Replace the key used to open the repository by a new one; data is not rewritten.
    Rotate {
        #[command(flatten)]
        new: NewKeyArgs,
    },
    /// Write the key slot the repository is opened with to a file (or `-`, standard output),
    /// to keep apart from the repository: should every slot there be lost or deleted, `key
    /// import` puts it back, and the passphrase or key file opens the repository again.
    Export {
        /// Where to write it (created readable by its owner only).
        #[arg(value_name = "FILE")]
        to: PathBuf,
    },
    /// Put back a key slot `key export` wrote, once the passphrase or key given opens it;
    /// for a repository that can no longer be opened for want of its slots.
    Import {
        /// The file `key export` wrote.
        #[arg(value_name = "FILE")]
        from: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct NewKeyArgs {
    /// Read the new passphrase from this file (else from CAIRN_NEW_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    new_passphrase_file: Option<PathBuf>,
    /// Use a key file (created when absent) as the new key.
    #[arg(long, value_name = "FILE", conflicts_with = "new_passphrase_file")]
    new_key_file: Option<PathBuf>,
}

impl NewKeyArgs {
    fn provider(&self) -> anyhow::Result<Box<dyn KeyProvider>> {
        if let Some(f) = &self.new_key_file {
            return Ok(Box::new(KeyFile::load_or_create(f)?));
        }
        if let Some(f) = &self.new_passphrase_file {
            return Ok(Box::new(Passphrase::from_file(f)?));
        }
        match Passphrase::from_env("CAIRN_NEW_PASSPHRASE") {
            Ok(p) => Ok(Box::new(p)),
            Err(_) => Err(usage(
                "no new key: set CAIRN_NEW_PASSPHRASE, --new-passphrase-file or --new-key-file",
            )),
        }
    }
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(crate::UsageError(msg.into()))
}

/// [`RepoSelect`]'s key origin when a policy's export gives the key.
const POLICY_EXPORT: &str = "the policy's export";

/// Which repository, and the key to open it: shared by `cairn repo` and `cairn run`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Repository options")]
pub(crate) struct RepoSelect {
    /// A location profile (`cairn profile add`): the repository, its options and its key
    /// source, by name. Options, key and rate flags given as well take precedence over it.
    #[arg(
        long,
        env = "CAIRN_PROFILE",
        global = true,
        value_name = "NAME",
        conflicts_with_all = ["profile_file", "repo"]
    )]
    profile: Option<String>,
    /// The environment variable holding the passphrase, when a profile names one.
    #[arg(skip)]
    passphrase_env: Option<String>,
    /// The repository: a path, or a file://, s3://, az:// or gs:// URL.
    #[arg(long, env = "CAIRN_REPO", global = true, value_name = "URL")]
    pub(crate) repo: Option<String>,
    /// Read the passphrase from this file (else from CAIRN_PASSPHRASE).
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Use a key file instead of a passphrase (`repo init` creates it when absent: 32 random
    /// bytes as hex, mode 0600).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        conflicts_with = "passphrase_file"
    )]
    key_file: Option<PathBuf>,
    /// A backend option, KEY=VALUE (e.g. aws_endpoint=http://127.0.0.1:9000); repeatable.
    #[arg(long = "option", global = true, value_name = "KEY=VALUE")]
    options: Vec<String>,
    /// A repository profile: a YAML file with `repo: URL` and `options:` (endpoint,
    /// credentials). --repo and --option given as well take precedence over it.
    #[arg(long, env = "CAIRN_REPO_PROFILE", global = true, value_name = "FILE")]
    profile_file: Option<PathBuf>,
    /// Keep what is written to the repository to this average rate a second, e.g. 20MiB (a
    /// link shared with the application); a profile's `limit_upload:` otherwise.
    #[arg(long, env = "CAIRN_LIMIT_UPLOAD", global = true, value_name = "RATE", value_parser = parse_rate)]
    limit_upload: Option<u64>,
    /// Keep what is read from the repository to this average rate a second, e.g. 50MiB; a
    /// profile's `limit_download:` otherwise.
    #[arg(long, env = "CAIRN_LIMIT_DOWNLOAD", global = true, value_name = "RATE", value_parser = parse_rate)]
    limit_download: Option<u64>,
    /// What gave the key file or passphrase file, for messages: a location profile or a
    /// policy's export (`None`: the flags).
    #[arg(skip)]
    key_origin: Option<String>,
}

/// Parses a rate, a size a second: `20MiB`, `20MiB/s`, `512KiB`.
pub(crate) fn parse_rate(s: &str) -> Result<u64, String> {
    match crate::run::parse_size(s.trim().trim_end_matches("/s"))? {
        0 => Err("a rate of 0 would stop every transfer; leave the limit out for none".into()),
        n => Ok(n),
    }
}

/// The repository `cairn repo copy` writes to: the same settings as the source's, prefixed
/// `--to`.
#[derive(Debug, clap::Args)]
struct CopyTarget {
    /// The repository to copy into: a path, or a file://, s3://, az:// or gs:// URL.
    #[arg(long, env = "CAIRN_TO_REPO", value_name = "URL")]
    to: Option<String>,
    /// A backend option of the destination, KEY=VALUE; repeatable.
    #[arg(long = "to-option", value_name = "KEY=VALUE")]
    to_options: Vec<String>,
    /// A repository profile file for the destination (`repo:` and `options:`).
    #[arg(long, env = "CAIRN_TO_REPO_PROFILE", value_name = "FILE")]
    to_profile_file: Option<PathBuf>,
    /// A location profile for the destination (`cairn profile add`); --to-option and key flags
    /// win over it.
    #[arg(
        long,
        env = "CAIRN_TO_PROFILE",
        value_name = "NAME",
        conflicts_with_all = ["to_profile_file", "to"]
    )]
    to_profile: Option<String>,
    /// Read the destination's passphrase from this file (else from CAIRN_TO_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    to_passphrase_file: Option<PathBuf>,
    /// Use a key file for the destination instead of a passphrase.
    #[arg(long, value_name = "FILE", conflicts_with = "to_passphrase_file")]
    to_key_file: Option<PathBuf>,
}

impl CopyTarget {
    /// Opens the destination, with the rate limits given for the source (`--limit-upload`
    /// is what a copy's writes to the destination need).
    async fn open(
        &self,
        source: &RepoSelect,
        home: Option<&PathBuf>,
    ) -> anyhow::Result<Repository> {
        let mut select = RepoSelect {
            profile: self.to_profile.clone(),
            passphrase_env: None,
            repo: self.to.clone(),
            passphrase_file: self.to_passphrase_file.clone(),
            key_file: self.to_key_file.clone(),
            options: self.to_options.clone(),
            profile_file: self.to_profile_file.clone(),
            limit_upload: source.limit_upload,
            limit_download: source.limit_download,
            key_origin: Some("the destination".to_owned()),
        };
        if !select.names_a_repository() {
            return Err(usage(
                "copy: name the destination with --to URL, CAIRN_TO_REPO, --to-profile or \
                 --to-profile-file",
            ));
        }
        if select.profile.is_some() {
            select = select.resolved(&crate::home::Home::resolve(home.cloned())?)?;
        }
        let loc = select.location()?;
        let key = select.key_from(
            select
                .passphrase_env
                .as_deref()
                .unwrap_or("CAIRN_TO_PASSPHRASE"),
            "--to-passphrase-file or --to-key-file",
        )?;
        let url = loc.url().to_owned();
        Repository::open(loc, key.as_ref())
            .await
            // The destination's options are --to-option's.
            .map_err(|e| e.map_hint(|hint| hint.replace("--option ", "--to-option ")))
            .with_context(|| format!("the destination {url}"))
    }
}

/// A repository profile file: where a repository is and how to reach it, kept out of the
/// command line (and out of shell history) because it holds credentials. A `repo:` path that is
/// relative is relative to the file's directory.
///
/// ```yaml
/// repo: s3://backups/cairn
/// limit_upload: 20MiB      # optional: average rates a second
/// limit_download: 50MiB
/// options:
///   aws_endpoint: https://s3.eu-central-1.amazonaws.com
///   aws_access_key_id: AKIA...
///   aws_secret_access_key: ...
/// ```
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profile {
    repo: Option<String>,
    #[serde(default)]
    options: std::collections::BTreeMap<String, String>,
    limit_upload: Option<Rate>,
    limit_download: Option<Rate>,
}

/// A rate in a profile: `20MiB`, or a number of bytes.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum Rate {
    Bytes(u64),
    Text(String),
}

pub(crate) fn load_profile(path: &std::path::Path) -> anyhow::Result<Profile> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage(format!(
            "cannot read the repository profile {}: {e}",
            path.display()
        ))
    })?;
    let mut profile: Profile = serde_norway::from_str(&text).map_err(|e| {
        usage(format!(
            "the repository profile {} is not valid: {e} (expected `repo: URL`, `options: {{KEY: VALUE}}` and optionally `limit_upload:`/`limit_download:` rates)",
            path.display()
        ))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let shared = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o077 != 0);
        let secrets: Vec<&str> = profile
            .options
            .keys()
            .map(String::as_str)
            .filter(|k| crate::profile::is_secret(k))
            .collect();
        if shared.unwrap_or(false) && !secrets.is_empty() {
            errln!(
                "warning: the repository profile {} holds credentials ({}) and others can read it; chmod 600 it",
                path.display(),
                secrets.join(", ")
            );
        }
    }
    // A path relative to the file, as a policy file's are: the same repository from wherever
    // the command runs.
    if let Some(repo) = profile.repo.as_mut().filter(|r| !crate::is_url(r)) {
        let dir = path.parent().unwrap_or(std::path::Path::new(""));
        *repo = crate::policy::absolute(dir, repo);
    }
    Ok(profile)
}

impl RepoSelect {
    /// A policy's export settings, as the flags would give them. With none, the instance's
    /// default repository.
    pub(crate) fn of_policy(export: Option<&cairn_catalog::PolicyExport>) -> Self {
        let export = export.cloned().unwrap_or_default();
        Self {
            profile: export.profile,
            passphrase_env: None,
            repo: export.repo,
            passphrase_file: export.passphrase_file.map(PathBuf::from),
            key_file: export.key_file.map(PathBuf::from),
            options: Vec::new(),
            profile_file: export.profile_file.map(PathBuf::from),
            limit_upload: None,
            limit_download: None,
            key_origin: Some(POLICY_EXPORT.to_owned()),
        }
    }

    /// The settings of location profile `name`.
    pub(crate) fn of_profile(name: &str) -> Self {
        Self {
            profile: Some(name.to_owned()),
            ..Self::default()
        }
    }

    /// These settings' key and options for the repository at `url` (a location profile they
    /// name dropped: it would name its own repository).
    pub(crate) fn at(&self, url: &str) -> Self {
        Self {
            repo: Some(url.to_owned()),
            profile: None,
            ..self.clone()
        }
    }

    /// The location profile named, if any.
    pub(crate) fn profile(&self) -> Option<&str> {
        self.profile.as_deref()
    }

    /// Whether a repository was named (by --repo, CAIRN_REPO, a profile or a profile file).
    pub(crate) fn names_a_repository(&self) -> bool {
        self.repo.is_some() || self.profile_file.is_some() || self.profile.is_some()
    }

    /// These settings with what the location profile they name gives filled in where no flag
    /// gave it: the repository, options (flags' last, so they win), the key source and the
    /// rate limits. Credential options are read from their sources now.
    pub(crate) fn resolved(&self, home: &crate::home::Home) -> anyhow::Result<Self> {
        let mut select = self.clone();
        let Some(name) = select.profile.take() else {
            return Ok(select);
        };
        let profile = crate::profile::load(home, &name)?;
        select.repo.get_or_insert(profile.repository);
        let mut options = Vec::new();
        for (k, v) in &profile.options {
            let v = crate::profile::read_source(&format!("profile {name}: option {k}"), v)?;
            options.push(format!("{k}={v}"));
        }
        options.append(&mut select.options);
        select.options = options;
        if select.key_file.is_none() && select.passphrase_file.is_none() {
            select.key_origin = Some(format!("profile {name}"));
            match (
                profile.passphrase.as_deref().map(|p| p.split_once(':')),
                profile.key_file,
            ) {
                (Some(Some(("env", var))), _) => select.passphrase_env = Some(var.to_owned()),
                (Some(Some(("file", path))), _) => select.passphrase_file = Some(path.into()),
                (_, Some(key_file)) => select.key_file = Some(key_file.into()),
                _ => {}
            }
        }
        let limit = |n: u64| (n > 0).then_some(n);
        select.limit_upload = select.limit_upload.or(limit(profile.limit_upload));
        select.limit_download = select.limit_download.or(limit(profile.limit_download));
        Ok(select)
    }

    pub(crate) fn location(&self) -> anyhow::Result<Location> {
        let profile = match &self.profile_file {
            Some(path) => load_profile(path)?,
            None => Profile::default(),
        };
        let url = self.repo.clone().or(profile.repo).ok_or_else(|| {
            usage("no repository: give --repo URL, set CAIRN_REPO, or give a --profile-file with `repo:` (without them, the home's default repository, which `cairn run` creates, is used when it exists)")
        })?;
        if url.starts_with("memory:") {
            return Err(usage(format!(
                "{url}: an in-memory repository lives only inside one process (the library's \
                 tests); a command's would be gone when it exits. Give a directory or a \
                 bucket's URL"
            )));
        }
        let rate = |flag: Option<u64>, kept: Option<Rate>, key: &str| {
            match (flag, kept) {
                (Some(r), _) => Ok(r),
                (None, Some(Rate::Bytes(n))) => parse_rate(&n.to_string()),
                (None, Some(Rate::Text(r))) => parse_rate(&r),
                (None, None) => Ok(0),
            }
            .map_err(|e| usage(format!("the repository profile's {key}: {e}")))
        };
        let mut loc = Location::new(url)
            .limit_upload(rate(
                self.limit_upload,
                profile.limit_upload,
                "limit_upload",
            )?)
            .limit_download(rate(
                self.limit_download,
                profile.limit_download,
                "limit_download",
            )?);
        for (k, v) in profile.options {
            loc = loc.option(k, v);
        }
        for o in &self.options {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| usage(format!("--option {o}: expected KEY=VALUE")))?;
            loc = loc.option(k, v);
        }
        Ok(loc)
    }

    pub(crate) fn key(&self) -> anyhow::Result<Box<dyn KeyProvider>> {
        match &self.passphrase_env {
            Some(var) => self.key_from(var, "--passphrase-file or --key-file"),
            None => self.key_from("CAIRN_PASSPHRASE", "--passphrase-file or --key-file"),
        }
    }

    /// The key from the key file or passphrase file given, else the passphrase in `env`;
    /// `flags` names the options that give them.
    fn key_from(&self, env: &str, flags: &str) -> anyhow::Result<Box<dyn KeyProvider>> {
        // A key or passphrase file that cannot be read is the user's input, not the runtime.
        let named = |field: &str, flag: &str| match &self.key_origin {
            Some(origin) => format!("{origin}'s {field}"),
            None => flag.to_owned(),
        };
        if let Some(f) = &self.key_file {
            let key = KeyFile::load(f)
                .map_err(|e| usage(format!("{}: {e}", named("key_file", "--key-file"))))?;
            return Ok(Box::new(key));
        }
        if let Some(f) = &self.passphrase_file {
            let passphrase = Passphrase::from_file(f).map_err(|e| {
                usage(format!(
                    "{}: {e}",
                    named("passphrase file", "--passphrase-file")
                ))
            })?;
            return Ok(Box::new(passphrase));
        }
        match Passphrase::from_env(env) {
            Ok(p) => Ok(Box::new(p)),
            Err(_) if self.key_origin.as_deref() == Some(POLICY_EXPORT) => Err(usage(format!(
                "no key: give the policy's export a key_file or passphrase_file, or set {env} where it runs"
            ))),
            Err(_) => Err(usage(format!("no key: set {env}, or give {flags}"))),
        }
    }
}

impl RepoArgs {
    fn location(&self) -> anyhow::Result<Location> {
        self.select.location()
    }

    fn key(&self) -> anyhow::Result<Box<dyn KeyProvider>> {
        self.select.key()
    }

    fn print(&self, text: impl FnOnce() -> String, json: serde_json::Value) {
        match self.output {
            Output::Text => {
                let t = text();
                if !t.is_empty() {
                    outln!("{t}");
                }
            }
            Output::Json => outln!("{json}"),
        }
    }
}

/// Runs a `cairn repo` subcommand; library errors are printed here and mapped to the exit
/// codes in the module docs.
pub async fn run(mut args: RepoArgs, home: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    if args.select.profile.is_some() {
        args.select = args
            .select
            .resolved(&crate::home::Home::resolve(home.clone())?)?;
    } else if !args.select.names_a_repository() && !matches!(args.command, RepoCommand::Init { .. })
    {
        // No repository named: the home's default one (where `cairn run` exports by default),
        // with its key file, when there is one.
        if let Ok(home) = crate::home::Home::resolve(home.clone())
            && home.repository().join("config").is_file()
        {
            args.select.repo = Some(home.repository().display().to_string());
            let env = args
                .select
                .passphrase_env
                .as_deref()
                .unwrap_or("CAIRN_PASSPHRASE");
            if args.select.passphrase_file.is_none() && args.select.key_file.is_none() {
                let key = home.repository_key();
                if key.exists() {
                    // Read here, so a damaged one is named as the home's, not as --key-file.
                    if let Err(e) = KeyFile::load(&key) {
                        return Err(usage(format!(
                            "the home's repository key is unusable: {e}; put back your copy of \
                             {} (or give {env} or --passphrase-file, when you added a \
                             passphrase slot)",
                            key.display()
                        )));
                    }
                    args.select.key_file = Some(key);
                } else if std::env::var_os(env).is_none() {
                    return Err(usage(format!(
                        "the home's repository {} has no key file {}: put back your copy of it \
                         (or give {env} or --passphrase-file, when you added a passphrase slot)",
                        home.repository().display(),
                        key.display()
                    )));
                }
            }
        }
    }
    let exclusive = match &args.command {
        RepoCommand::Forget { dry_run, .. } | RepoCommand::Prune { dry_run, .. } => !dry_run,
        _ => false,
    };
    if exclusive {
        let home = crate::home::Home::resolve(home.clone())?;
        check_maintenance_owner(&home)?;
        let what = match &args.command {
            RepoCommand::Prune { .. } => "prune",
            _ => "forget",
        };
        crate::dr::check_owner(&home, what).await?;
    }
    match run_inner(&args, home.as_ref()).await {
        Ok(code) => Ok(code),
        Err(e) => match e.downcast_ref::<Error>() {
            // A restore to standard output whose reader quit early (`| head`).
            Some(Error::Io { path, source, .. })
                if path == "output" && source.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                Ok(ExitCode::from(crate::exit::OUTPUT_CLOSED))
            }
            Some(lib) => {
                let code = exit_code(lib);
                if args.output == Output::Json {
                    outln!(
                        "{}",
                        json!({ "error": crate::one_line(&e), "exit_code": code })
                    );
                }
                errln!("cairn: {}", crate::one_line(&e));
                Ok(ExitCode::from(code))
            }
            None => Err(e),
        },
    }
}

/// A restore point that references a repository snapshot: its id and its blueprint.
struct Referrer {
    point: String,
    blueprint: String,
}

/// The exported restore points of the home's catalog (none without a catalog), by each
/// repository snapshot they reference. Read leniently: a record another build wrote, or a
/// damaged one, still protects the snapshots it names.
fn points_by_snapshot(home: Option<&PathBuf>) -> anyhow::Result<HashMap<String, Referrer>> {
    // No home (a repository used on its own) is no restore point, and none is made for it.
    let Some(home) = crate::home::Home::existing(home.cloned()).filter(|h| h.catalog().exists())
    else {
        return Ok(HashMap::new());
    };
    let entries = crate::catalog::open_verified_daily(&home)?
        .list(cairn_catalog::Kind::ExportedRestorePoint)?;
    let mut by_snapshot = HashMap::new();
    for entry in entries {
        let value: serde_json::Value = serde_json::from_str(entry.value.get()).unwrap_or_default();
        let blueprint = value["blueprint"].as_str().unwrap_or("?").to_owned();
        for snapshot in value["snapshots"].as_array().into_iter().flatten() {
            if let Some(s) = snapshot.as_str() {
                let referrer = Referrer {
                    point: entry.key.clone(),
                    blueprint: blueprint.clone(),
                };
                by_snapshot.insert(s.to_owned(), referrer);
            }
        }
    }
    Ok(by_snapshot)
}

/// Refuses exclusive maintenance on an instance that a DR restore rebuilt and that has not
/// taken ownership of the backup data yet (`cairn dr take-ownership`).
fn check_maintenance_owner(home: &crate::home::Home) -> anyhow::Result<()> {
    if !home.catalog().exists() {
        return Ok(());
    }
    let catalog = crate::catalog::open(home)?;
    // Not while a DR restore is unfinished: its catalog may not say yet that it does not own.
    crate::dr::refuse_unfinished_restore(&catalog, home)?;
    if catalog.maintenance_owner()? {
        return Ok(());
    }
    Err(usage(
        "this instance was rebuilt by `cairn dr restore` and does not own maintenance of the backup data, \
         so forget and prune are refused (two instances must never prune the same data); once the \
         old instance is gone for good, run `cairn dr take-ownership` here",
    ))
}

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Io { source, .. }
            if source
                .get_ref()
                .is_some_and(|inner| inner.is::<CommandFailed>()) =>
        {
            crate::exit::FAILED
        }
        Error::WrongPassphrase | Error::WrongKey { .. } => EXIT_WRONG_KEY,
        Error::Locked { .. } | Error::LockLost { .. } => EXIT_LOCKED,
        Error::Protected { .. } => EXIT_PROTECTED,
        Error::Interrupted => crate::exit::INTERRUPTED,
        Error::NotARepository { .. } | Error::UnsupportedVersion { .. } => EXIT_NO_REPOSITORY,
        Error::Corrupt { .. } | Error::Missing { .. } => crate::exit::FAILED,
        Error::InvalidLocation { .. }
        | Error::AlreadyInitialised { .. }
        | Error::LastKey { .. }
        | Error::KeyProvider { .. }
        | Error::NotFound { .. }
        | Error::Ambiguous { .. }
        | Error::Invalid(_) => crate::exit::USAGE,
        _ => crate::exit::RUNTIME,
    }
}

/// The command of `backup --stdin-from-command` exited unsuccessfully.
#[derive(Debug)]
struct CommandFailed {
    command: String,
    status: std::process::ExitStatus,
}

impl std::fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` failed ({}), so no snapshot was saved; what it wrote is reused by the next \
             backup or removed by prune",
            self.command, self.status
        )
    }
}

impl std::error::Error for CommandFailed {}

type ExitFuture =
    std::pin::Pin<Box<dyn Future<Output = std::io::Result<std::process::ExitStatus>> + Send>>;

/// A command's standard output that ends only once the command has exited with status 0;
/// otherwise its last read fails with [`CommandFailed`], and the stream backup saves nothing.
/// Dropped early (the backup failed), it kills the command.
struct CommandOutput {
    stdout: tokio::process::ChildStdout,
    exit: ExitFuture,
    /// How the command exited, once it has.
    status: Option<std::process::ExitStatus>,
    command: String,
}

impl CommandOutput {
    fn spawn(argv: &[String]) -> anyhow::Result<Self> {
        let Some((program, args)) = argv.split_first() else {
            return Err(usage(
                "--stdin-from-command: give the command after `--`, e.g. `-- pg_dump mydb`",
            ));
        };
        // As a shell would take it back: arguments with spaces or quotes in single quotes.
        let command = argv
            .iter()
            .map(|a| crate::shell_word(a))
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| usage(format!("cannot run `{command}`: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .context("the command's standard output was not captured")?;
        Ok(Self {
            stdout,
            exit: Box::pin(async move { child.wait().await }),
            status: None,
            command,
        })
    }
}

impl tokio::io::AsyncRead for CommandOutput {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let status = match self.status {
            Some(status) => status,
            None => {
                let before = buf.filled().len();
                std::task::ready!(std::pin::Pin::new(&mut self.stdout).poll_read(cx, buf))?;
                if buf.filled().len() > before || buf.remaining() == 0 {
                    return std::task::Poll::Ready(Ok(()));
                }
                // End of output: the stream ends here only if the command succeeded.
                let status = std::task::ready!(self.exit.as_mut().poll(cx))?;
                self.status = Some(status);
                status
            }
        };
        std::task::Poll::Ready(if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(CommandFailed {
                command: self.command.clone(),
                status,
            }))
        })
    }
}

fn progress_bar(total: Option<u64>) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let (bar, template) = match total {
        Some(t) => (
            indicatif::ProgressBar::new(t),
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ),
        None => (
            indicatif::ProgressBar::no_length(),
            "{spinner} {bytes} {binary_bytes_per_sec}",
        ),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    crate::print_above(&bar);
    Some(bar)
}

/// Mirrors a byte counter, and the bar's length from `length` when given, into a progress
/// bar until dropped.
fn watch(
    bar: Option<indicatif::ProgressBar>,
    counter: Arc<AtomicU64>,
    length: Option<Arc<AtomicU64>>,
) -> Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)> {
    let bar = bar?;
    let b = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Some(l) = &length {
                b.set_length(l.load(Ordering::Relaxed));
            }
            b.set_position(counter.load(Ordering::Relaxed));
            tokio::time::sleep(PROGRESS_TICK).await;
        }
    });
    Some((bar, task))
}

fn finish_bar(shown: Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)>) {
    if let Some((bar, task)) = shown {
        task.abort();
        bar.finish_and_clear();
    }
}

/// Restore options counting for a progress bar on a terminal, whose length the restore sets
/// once it knows what it writes, and stopping on `stop` ([`interrupt_before_open`]).
fn restore_progress(
    stop: Option<&tokio::sync::watch::Receiver<bool>>,
) -> (
    RestoreOptions,
    Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)>,
) {
    let (done, total) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let shown = watch(progress_bar(Some(0)), done.clone(), Some(total.clone()));
    // Ctrl-C (or SIGTERM) stops the restore cleanly instead of ending the process mid-file.
    let mut opts = RestoreOptions::new().progress(done).total(total);
    if let Some(stopped) = stop {
        opts = opts.stop(stopped.clone());
    }
    (opts, shown)
}

/// One line of `copy`'s report: the copy's id and what it added to the destination.
fn copied_line(from: &SnapshotInfo, to: &SnapshotInfo) -> String {
    let s = &to.summary;
    format!(
        "copied {} as {}: {} bytes, {} new ({} stored)",
        from.short_id(),
        to.short_id(),
        s.bytes,
        s.new_bytes,
        s.stored_bytes
    )
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    if let Ok(m) = std::fs::metadata(p)
        && m.is_file()
    {
        return m.len();
    }
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if let Ok(m) = e.path().symlink_metadata() {
                n += if m.is_dir() {
                    dir_bytes(&e.path())
                } else if m.is_file() {
                    m.len()
                } else {
                    0
                };
            }
        }
    }
    n
}

/// The time zone snapshots' times are shown and read in: the system's (`TZ`), or UTC with a
/// warning when `TZ` names none.
pub(crate) fn local_zone() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::try_system().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "TZ names no time zone; times are UTC's");
        jiff::tz::TimeZone::UTC
    })
}

/// `forget --time-zone`: UTC, `local` (TZ's), or a name of the time zone database.
fn named_zone(name: &str) -> anyhow::Result<jiff::tz::TimeZone> {
    match name {
        "UTC" | "utc" | "Z" => Ok(jiff::tz::TimeZone::UTC),
        "local" => jiff::tz::TimeZone::try_system().map_err(|e| {
            usage(format!(
                "--time-zone local: {e}; set TZ to a zone's name (Europe/Paris), or give one"
            ))
        }),
        name => jiff::tz::TimeZone::get(name).map_err(|e| {
            usage(format!(
                "--time-zone {name}: {e}; give a name of the time zone database \
                 (Europe/Paris, America/New_York), `local` for TZ's, or UTC"
            ))
        }),
    }
}

/// A time as shown in listings: its date and time in `zone`, to the second, and its offset
/// when that date and time come twice there.
fn shown_time(t: jiff::Timestamp, zone: &jiff::tz::TimeZone) -> String {
    let zoned = t.to_zoned(zone.clone());
    // The hour a night that falls back repeats: its offset says which of the two.
    let format = if zone.to_ambiguous_timestamp(zoned.datetime()).is_ambiguous() {
        "%Y-%m-%d %H:%M:%S%:z"
    } else {
        "%Y-%m-%d %H:%M:%S"
    };
    zoned.strftime(format).to_string()
}

/// An entry's modification time (RFC 3339, as the library gives it) as listings show times.
fn shown_mtime(mtime: &str, zone: &jiff::tz::TimeZone) -> String {
    mtime
        .parse()
        .map_or_else(|_| mtime.to_string(), |t| shown_time(t, zone))
}

/// A listing's header for times shown in `zone`: `time (Europe/Paris)`.
fn time_header(zone: &jiff::tz::TimeZone) -> String {
    format!("time ({})", zone.iana_name().unwrap_or("local"))
}

/// The widest of `texts`, and at least `min`: a column's width.
fn column_width<'a>(texts: impl IntoIterator<Item = &'a String>, min: usize) -> usize {
    texts.into_iter().map(String::len).fold(min, usize::max)
}

fn is_tree(s: &SnapshotInfo) -> bool {
    matches!(s.kind, SnapshotKind::Tree { .. })
}

/// `tree /data` or `stream db.sql`: what a snapshot is of, for messages.
fn kind_and_source(s: &SnapshotInfo) -> String {
    let kind = if is_tree(s) { "tree" } else { "stream" };
    format!("{kind} {}", s.source())
}

/// Which `latest` a restore's target asks for: a tree or a stream (`None`: either).
fn restore_wants_tree(
    target: &Path,
    include: &[PathBuf],
    sparse: bool,
    delete: bool,
) -> Option<bool> {
    if target.as_os_str() == "-" {
        // One file of a tree with --include; a stream without.
        return Some(!include.is_empty());
    }
    // What only a tree's restore takes.
    if !include.is_empty() || sparse || delete {
        return Some(true);
    }
    let slash = target.as_os_str().as_encoded_bytes().ends_with(b"/");
    (slash || target.is_dir()).then_some(true)
}

/// Which of `snaps` (oldest first, at least one) a restore of `latest` takes: the newest, or
/// when they hold trees and streams, the newest of the kind the target asks for
/// ([`restore_wants_tree`]). When the target does not say, the newest if it is a tree (as
/// `latest` always was); if it is a stream, it refuses rather than guess: a stream written as
/// a file where a directory was meant is a surprise found at the worst time.
fn latest_to_restore(
    snaps: Vec<SnapshotInfo>,
    wants_tree: Option<bool>,
    target: &str,
) -> anyhow::Result<SnapshotInfo> {
    let tree = snaps.iter().rposition(is_tree);
    let stream = snaps.iter().rposition(|s| !is_tree(s));
    let at = match (tree, stream, wants_tree) {
        (Some(t), None, _) | (Some(t), Some(_), Some(true)) => t,
        (None, Some(s), _) | (Some(_), Some(s), Some(false)) => s,
        // The newest is a tree: what `latest` always was, and a directory is what the
        // target becomes.
        (Some(t), Some(s), None) if t > s => t,
        (Some(t), Some(s), None) => {
            let (t, s) = (&snaps[t], &snaps[s]);
            return Err(usage(format!(
                "restore: `latest` is ambiguous here: the snapshots selected hold trees and \
                 streams, and the newest tree is {} ({}), the newest stream {} ({}); choose \
                 with --path {} or --path {}, or give the snapshot's id (a target ending in \
                 `/` or an existing directory takes the tree, `--target -` the stream; {target} \
                 says neither)",
                t.short_id(),
                kind_and_source(t),
                s.short_id(),
                kind_and_source(s),
                crate::shell_word(t.source()),
                crate::shell_word(s.source()),
            )));
        }
        (None, None, _) => {
            return Err(Error::NotFound {
                kind: "snapshot",
                id: "latest".into(),
            }
            .into());
        }
    };
    let mut snaps = snaps;
    Ok(snaps.swap_remove(at))
}

/// A line of `snapshots`, its time shown as `time` in a column `width` wide.
fn describe(s: &SnapshotInfo, time: &str, width: usize) -> String {
    let (kind, src) = match &s.kind {
        SnapshotKind::Tree { path } => ("tree", path.as_str()),
        SnapshotKind::Stream { name } => ("stream", name.as_str()),
        _ => ("other", ""),
    };
    format!(
        "{}  {:<width$}  {:<16} {:<6} {:<40} {:>12}  {}",
        s.short_id(),
        time,
        s.hostname,
        kind,
        src,
        s.summary.bytes,
        s.tags.join(",")
    )
    .trim_end()
    .to_string()
}

/// For a restore or a directory's backup, what Ctrl-C (SIGINT, SIGTERM, SIGHUP) sets to stop
/// it cleanly (exit 130). It is heard from before the repository is opened: a passphrase's key
/// derivation takes half a second or more, and a signal then would end the process with no
/// word and the signal's own status (143), not the 130 these promise. A stream from standard
/// input keeps the default: its writer, killed by the same Ctrl-C, ends the stream, which must
/// never look whole.
fn interrupt_before_open(command: &RepoCommand) -> Option<tokio::sync::watch::Receiver<bool>> {
    let stops = match command {
        RepoCommand::Restore { .. } => true,
        RepoCommand::Backup {
            source: Some(source),
            stdin_from_command: false,
            ..
        } => source.as_os_str() != "-",
        _ => false,
    };
    stops.then(crate::stop_on_interrupt).and_then(Result::ok)
}

async fn run_inner(args: &RepoArgs, home: Option<&PathBuf>) -> anyhow::Result<ExitCode> {
    let loc = args.location()?;
    // `init --key-file` of a file not there yet makes the key, as `key add --new-key-file` does.
    let new_key_file = match (&args.command, &args.select.key_file) {
        (RepoCommand::Init { .. }, Some(f)) if !f.exists() => Some(f),
        _ => None,
    };
    let key: Box<dyn KeyProvider> = match new_key_file {
        Some(f) => Box::new(KeyFile::load_or_create(f)?),
        None => args.key()?,
    };
    if let RepoCommand::Init { protection } = &args.command {
        let opts = InitOptions::new().protection(protection.unwrap_or_default());
        let repo = match Repository::init(loc.clone(), key.as_ref(), opts).await {
            Ok(repo) => repo,
            Err(e) => {
                // A key made for a repository that was not made opens nothing.
                if let Some(f) = new_key_file {
                    let _ = std::fs::remove_file(f);
                }
                return Err(e.into());
            }
        };
        let protection = repo.protection();
        let guard = if protection.is_zero() {
            String::new()
        } else {
            let by = if repo.object_lock() {
                // Init saw the bucket take the retention and keep versions; whether a server
                // keeps the retention itself is not visible through object_store.
                "cairn, and by S3 Object Lock in compliance mode: the bucket took the retention \
                 and keeps versions"
            } else {
                "cairn"
            };
            format!(
                "; data is immutable for {} (enforced by {by})",
                Retention::period_text(protection)
            )
        };
        let made_key = new_key_file
            .map(|f| {
                format!(
                    "\ncreated key file {}: keep a copy apart from the repository, which no one \
                     opens without it",
                    f.display()
                )
            })
            .unwrap_or_default();
        args.print(
            || {
                format!(
                    "created repository {} at {}{guard}{made_key}",
                    repo.id(),
                    loc.url()
                )
            },
            json!({
                "id": repo.id(),
                "url": loc.url(),
                "protection_secs": protection.as_secs(),
                "object_lock": repo.object_lock(),
                "key_file_created": new_key_file,
            }),
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Before opening: a repository whose slots are gone opens only once one is back.
    if let RepoCommand::Key(KeyCommand::Import { from }) = &args.command {
        let slot = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        let id = Repository::import_key(loc, &slot, key.as_ref())
            .await
            .map_err(|e| {
                let wrong = matches!(
                    e,
                    cairn_repository::Error::WrongKey { .. }
                        | cairn_repository::Error::WrongPassphrase
                );
                let e = anyhow::Error::new(e);
                // The slot is bound to its repository by how it is sealed: a slot of another
                // repository fails as a wrong key does, and the two cannot be told apart.
                if wrong {
                    e.context(format!(
                        "the key slot in {} does not open with this key: the passphrase or key \
                         file is not the one it was made with, or it was exported from another \
                         repository",
                        from.display()
                    ))
                } else {
                    e
                }
            })?;
        args.print(
            || format!("imported key slot {id}"),
            json!({ "imported": id }),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let stop = interrupt_before_open(&args.command);
    let repo = match stop.clone() {
        // Interrupted while the key is derived: nothing was done, and nothing is left to undo.
        Some(mut stopped) => tokio::select! {
            repo = Repository::open(loc, key.as_ref()) => repo?,
            Ok(_) = stopped.wait_for(|s| *s) => return Err(Error::Interrupted.into()),
        },
        None => Repository::open(loc, key.as_ref()).await?,
    };
    match &args.command {
        RepoCommand::Init { .. } => unreachable!("handled above"),
        RepoCommand::Backup {
            source,
            stdin_name,
            stdin_from_command,
            tag,
            zstd_level,
            exclude,
            one_file_system,
            parent,
            force,
            host,
            retry_lock,
            command,
        } => {
            let counter = Arc::new(AtomicU64::new(0));
            let left_out = Arc::new(cairn_repository::LeftOut::default());
            let mut opts = BackupOptions::new()
                .progress(counter.clone())
                .left_out(left_out.clone());
            match (parent, force) {
                (Some(id), _) => opts = opts.parent(Parent::Snapshot(id.clone())),
                (None, true) => opts = opts.parent(Parent::None),
                (None, false) => {}
            }
            if let Some(h) = host {
                opts = opts.host(h.clone());
            }
            for t in tag {
                let key = t.split_once('=').map_or(t.as_str(), |(k, _)| k);
                if t == crate::exports::TAG || cairn_engine::HOST_TAG_KEYS.contains(&key) {
                    return Err(usage(format!(
                        "backup: tag `{t}` is one Cairn sets on blueprints' exports (`{}`, and \
                         {}=…): retention and restore points read it, so a backup may not \
                         carry it; choose another",
                        crate::exports::TAG,
                        cairn_engine::HOST_TAG_KEYS.join("=…, ")
                    )));
                }
                opts = opts.tag(t);
            }
            for x in exclude {
                opts = opts.exclude(x);
            }
            opts = opts.one_file_system(*one_file_system);
            if let Some(wait) = retry_lock {
                opts = opts.lock_wait(*wait);
            }
            if let Some(l) = zstd_level {
                opts = opts.zstd_level(*l);
            }
            let stream =
                *stdin_from_command || source.as_ref().is_some_and(|s| s.as_os_str() == "-");
            if stream && (!exclude.is_empty() || *one_file_system) {
                return Err(usage(
                    "--exclude and --one-file-system select paths of a directory, not a stream",
                ));
            }
            if stream && (parent.is_some() || *force) {
                return Err(usage(
                    "--parent and --force choose what a directory's backup reads; a stream is \
                     always read whole",
                ));
            }
            let name = || {
                stdin_name
                    .clone()
                    .ok_or_else(|| usage("a stream needs a name: give it with --stdin-name NAME"))
            };
            let (info, shown) = match (source, *stdin_from_command) {
                (Some(_), true) => {
                    return Err(usage(
                        "give either a SOURCE or --stdin-from-command, not both",
                    ));
                }
                (_, false) if !command.is_empty() => {
                    return Err(usage(format!(
                        "`{}` after `--` is a command: add --stdin-from-command to back up its output",
                        command.join(" ")
                    )));
                }
                (None, false) => {
                    return Err(usage(
                        "give the directory or file to back up, `-` for standard input, or \
                         --stdin-from-command -- COMMAND",
                    ));
                }
                (None, true) => {
                    let name = name()?;
                    let output = CommandOutput::spawn(command)?;
                    let shown = watch(progress_bar(None), counter, None);
                    (repo.backup_stream(&name, output, opts).await, shown)
                }
                (Some(source), false) if source.as_os_str() == "-" => {
                    let name = name()?;
                    let shown = watch(progress_bar(None), counter, None);
                    (
                        repo.backup_stream(&name, tokio::io::stdin(), opts).await,
                        shown,
                    )
                }
                (Some(source), false) => {
                    if stdin_name.is_some() {
                        return Err(usage(
                            "--stdin-name only applies to `backup -` and --stdin-from-command",
                        ));
                    }
                    let path = source.clone();
                    // The bar's length is the directory's size, summed beside the backup and
                    // only for a bar that shows (a walk of 200,000 files takes most of a
                    // second); with excludes, it would overstate what is read.
                    let sized = exclude.is_empty() && std::io::stderr().is_terminal();
                    let length = sized.then(|| {
                        let length = Arc::new(AtomicU64::new(0));
                        let (l, p) = (length.clone(), path.clone());
                        std::thread::spawn(move || l.store(dir_bytes(&p), Ordering::Relaxed));
                        length
                    });
                    let shown = watch(progress_bar(sized.then_some(0)), counter, length);
                    // Ctrl-C stops a directory's backup cleanly: no snapshot, what was
                    // uploaded indexed for the next one, the lock released. (A stream from
                    // standard input keeps the default: its writer, killed by the same
                    // Ctrl-C, ends the stream, which must never look whole.)
                    let mut opts = opts;
                    opts.stop = stop.clone();
                    (repo.backup_tree(&path, opts).await, shown)
                }
            };
            finish_bar(shown);
            let info = info?;
            let s = &info.summary;
            // An empty stream is still saved (scripts rely on it), but seldom meant: from a
            // pipe, it is most often a dump that failed before writing, and the shell does not
            // tell the backup so.
            let empty = match &info.kind {
                SnapshotKind::Stream { name } if s.bytes == 0 => {
                    let hint = if *stdin_from_command {
                        ""
                    } else {
                        "; if the program writing it failed, the pipe did not say so: \
                         `--stdin-from-command -- PROGRAM` fails the backup when the program fails"
                    };
                    Some(format!(
                        "the stream {name} was empty (0 bytes) and is saved as snapshot {}{hint}",
                        info.short_id()
                    ))
                }
                _ => None,
            };
            if let Some(warning) = &empty {
                errln!("warning: {warning}");
            }
            args.print(
                || {
                    let unchanged = if s.unchanged_files > 0 {
                        format!(" ({} unchanged, not read)", s.unchanged_files)
                    } else {
                        String::new()
                    };
                    let what = match &info.kind {
                        SnapshotKind::Stream { name } => format!("stream {name}"),
                        _ => format!(
                            "{} file{}{unchanged}",
                            s.files,
                            if s.files == 1 { "" } else { "s" }
                        ),
                    };
                    format!(
                        "snapshot {} saved: {what}, {} bytes, {} new ({} stored)",
                        info.short_id(),
                        s.bytes,
                        s.new_bytes,
                        s.stored_bytes
                    )
                },
                {
                    let mut out = json!({ "id": info.id, "summary": s });
                    if let Some(warning) = &empty {
                        out["warnings"] = json!([warning]);
                    }
                    if s.unreadable > 0 {
                        // The first LEFT_OUT_NAMED of them; `summary.unreadable` counts all.
                        out["unreadable"] = json!(left_out.named());
                    }
                    out
                },
            );
            if s.unreadable > 0 {
                errln!(
                    "cairn: {} files or directories could not be read and are left out of \
                     snapshot {}: the warnings above say why (permission denied: run the backup \
                     as a user who may read them; an input/output error: the disk under them)",
                    s.unreadable,
                    info.short_id()
                );
                return Ok(ExitCode::from(crate::exit::FAILED));
            }
        }
        RepoCommand::Snapshots { filter } => {
            let list = repo.snapshots(&filter.filter()?).await?;
            args.print(
                || {
                    if list.is_empty() {
                        return "no snapshots".into();
                    }
                    let zone = local_zone();
                    let times: Vec<String> =
                        list.iter().map(|s| shown_time(s.time, &zone)).collect();
                    let title = time_header(&zone);
                    let width = column_width(&times, title.len());
                    let header = format!(
                        "{:<8}  {:<width$}  {:<16} {:<6} {:<40} {:>12}  tags",
                        "id", title, "host", "type", "source", "bytes"
                    );
                    std::iter::once(header)
                        .chain(list.iter().zip(&times).map(|(s, t)| describe(s, t, width)))
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                serde_json::to_value(&list).context("encoding snapshots")?,
            );
        }
        RepoCommand::Ls { id, paths, filter } => {
            let info = filter.tree(&repo, id).await?;
            let entries = repo.list_tree(&info, &named(paths)).await?;
            args.print(
                || {
                    let zone = local_zone();
                    let times: Vec<String> = entries
                        .iter()
                        .map(|e| shown_mtime(&e.mtime, &zone))
                        .collect();
                    let width = column_width(&times, 0);
                    entries
                        .iter()
                        .zip(&times)
                        .map(|(e, time)| {
                            let link = e
                                .target
                                .as_ref()
                                .map(|t| format!(" -> {}", shown_path(t, e.target_raw.as_deref())))
                                .or_else(|| {
                                    e.hard_link_of.as_ref().map(|t| {
                                        format!(
                                            " (hard link of {})",
                                            shown_path(t, e.hard_link_of_raw.as_deref())
                                        )
                                    })
                                });
                            // A device shows its numbers where a file shows its size, as
                            // `ls -l` does.
                            let size = e.rdev.map_or_else(
                                || e.size.to_string(),
                                |d| format!("{},{}", libc::major(d), libc::minor(d)),
                            );
                            format!(
                                "{:<7} {:04o} {:>11} {:>14} {:<width$}  {}{}",
                                e.kind,
                                e.mode,
                                match (e.uid, e.gid) {
                                    (Some(u), Some(g)) => format!("{u}:{g}"),
                                    _ => "-".into(),
                                },
                                size,
                                time,
                                shown_path(&e.path, e.path_raw.as_deref()),
                                link.unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                serde_json::to_value(&entries).context("encoding entries")?,
            );
        }
        RepoCommand::Find { patterns, filter } => {
            let found = repo.find(&filter.filter()?, patterns).await?;
            let mut rows = Vec::new();
            for (s, e) in found
                .iter()
                .flat_map(|(s, es)| es.iter().map(move |e| (s, e)))
            {
                let mut row = serde_json::to_value(e).context("encoding entries")?;
                row["snapshot"] = json!(s.id);
                row["snapshot_time"] = json!(s.time.to_string());
                rows.push(row);
            }
            args.print(
                || {
                    if found.is_empty() {
                        return "nothing found".into();
                    }
                    let zone = local_zone();
                    let rows: Vec<_> = found
                        .iter()
                        .flat_map(|(s, es)| es.iter().map(move |e| (s, e)))
                        .map(|(s, e)| {
                            (
                                s,
                                e,
                                shown_time(s.time, &zone),
                                shown_mtime(&e.mtime, &zone),
                            )
                        })
                        .collect();
                    let taken = column_width(rows.iter().map(|r| &r.2), 0);
                    let changed = column_width(rows.iter().map(|r| &r.3), 0);
                    rows.iter()
                        .map(|(s, e, time, mtime)| {
                            format!(
                                "{:<8}  {:<taken$}  {:<7} {:>14}  {:<changed$}  {}",
                                s.short_id(),
                                time,
                                e.kind,
                                e.size,
                                mtime,
                                shown_path(&e.path, e.path_raw.as_deref())
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                serde_json::Value::Array(rows),
            );
        }
        RepoCommand::Diff { from, to } => {
            let (from, to) = (
                repo.tree_snapshot(from).await?,
                repo.tree_snapshot(to).await?,
            );
            let changes = repo.diff_trees(&from, &to).await?;
            let count = |c: &str| changes.iter().filter(|x| x.change == c).count();
            let (grown, shrunk) = changes.iter().fold((0u64, 0u64), |(g, s), c| {
                (
                    g + c.size_after.saturating_sub(c.size_before),
                    s + c.size_before.saturating_sub(c.size_after),
                )
            });
            let summary = json!({
                "added": count("added"),
                "removed": count("removed"),
                "modified": count("modified"),
                "type": count("type"),
                "metadata": count("metadata"),
                "bytes_grown": grown,
                "bytes_shrunk": shrunk,
            });
            args.print(
                || {
                    let mut lines: Vec<String> = changes
                        .iter()
                        .map(|c| {
                            let mark = match c.change {
                                "added" => "+",
                                "removed" => "-",
                                "modified" => "M",
                                "type" => "T",
                                _ => "U",
                            };
                            format!("{mark} {}", shown_path(&c.path, c.path_raw.as_deref()))
                        })
                        .collect();
                    lines.push(format!(
                        "{} added, {} removed, {} modified, {} changed type, {} metadata only; \
                         {grown} bytes grown, {shrunk} bytes shrunk",
                        summary["added"],
                        summary["removed"],
                        summary["modified"],
                        summary["type"],
                        summary["metadata"]
                    ));
                    lines.join("\n")
                },
                json!({ "from": from.id, "to": to.id, "changes": changes, "summary": summary }),
            );
        }
        RepoCommand::Copy {
            ids,
            filter,
            to,
            zstd_level,
        } => {
            if !ids.is_empty() && filter.given() {
                return Err(usage(
                    "copy: give snapshot ids or filters (--tag, --path, --since, --until), not both",
                ));
            }
            let dest = to.open(&args.select, home).await?;
            let mut chosen = if ids.is_empty() {
                repo.snapshots(&filter.filter()?).await?
            } else {
                let mut v = Vec::with_capacity(ids.len());
                for id in ids {
                    v.push(repo.snapshot(id).await?);
                }
                v
            };
            // Oldest first, each once, so the copies are written in the order of the originals.
            chosen.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
            chosen.dedup_by(|a, b| a.id == b.id);
            // What the destination holds already: its snapshots and what they are copies of.
            let there: std::collections::HashMap<String, String> = dest
                .snapshots(&SnapshotFilter::new())
                .await?
                .into_iter()
                .map(|s| (s.original_id().to_owned(), s.id))
                .collect();
            let (skip, copy): (Vec<_>, Vec<_>) = chosen
                .into_iter()
                .partition(|s| there.contains_key(s.original_id()));
            let counter = Arc::new(AtomicU64::new(0));
            let mut opts = BackupOptions::new().progress(counter.clone());
            if let Some(l) = zstd_level {
                opts = opts.zstd_level(*l);
            }
            let text = args.output == Output::Text;
            let skipped: Vec<_> = skip
                .iter()
                .map(|s| {
                    let id = &there[s.original_id()];
                    if text {
                        outln!("skipped {}: already there as {}", s.short_id(), &id[..8]);
                    }
                    json!({ "from": s.id, "to": id })
                })
                .collect();
            let total = copy.iter().map(|s| s.summary.bytes).sum();
            let shown = watch(progress_bar(Some(total)), counter, None);
            let mut copied = Vec::with_capacity(copy.len());
            let mut failed = Vec::new();
            for s in &copy {
                let c = match dest.copy_snapshot(&repo, s, &opts).await {
                    Ok(c) => c,
                    // A snapshot the source cannot give whole is left behind, named; the
                    // others are still copied (one damaged pack must not stop every copy).
                    Err(e @ (Error::Corrupt { .. } | Error::Missing { .. })) => {
                        let line = format!("error: snapshot {} is not copied: {e}", s.short_id());
                        match &shown {
                            Some((bar, _)) => bar.suspend(|| errln!("{line}")),
                            None => errln!("{line}"),
                        }
                        failed.push(json!({ "from": s.id, "error": e.to_string() }));
                        continue;
                    }
                    Err(e) => {
                        finish_bar(shown);
                        return Err(anyhow::Error::new(e)
                            .context(format!("copying snapshot {}", s.short_id())));
                    }
                };
                if text {
                    let line = copied_line(s, &c);
                    match &shown {
                        Some((bar, _)) => bar.suspend(|| outln!("{line}")),
                        None => outln!("{line}"),
                    }
                }
                copied.push(json!({ "from": s.id, "to": c.id, "summary": c.summary }));
            }
            finish_bar(shown);
            args.print(
                || {
                    let mut line = format!("copied {}, skipped {}", copied.len(), skipped.len());
                    if !failed.is_empty() {
                        line.push_str(&format!(
                            ", {} not copied (damaged in the source: `cairn repo check \
                             --read-data` there names what)",
                            failed.len()
                        ));
                    }
                    line
                },
                json!({ "copied": copied, "skipped": skipped, "failed": failed }),
            );
            if !failed.is_empty() {
                return Ok(ExitCode::from(crate::exit::FAILED));
            }
        }
        RepoCommand::Stats => {
            let st = repo.stats().await?;
            let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            let (dedup, compression) = (
                ratio(st.snapshot_bytes, st.chunk_bytes),
                ratio(st.chunk_bytes, st.pack_bytes),
            );
            let mut report = serde_json::to_value(&st).context("encoding stats")?;
            report["deduplication"] = json!(dedup);
            report["compression"] = json!(compression);
            args.print(
                || {
                    use indicatif::{HumanBytes, HumanCount};
                    format!(
                        "snapshots  {} holding {}\n\
                         data       {} in {} distinct chunks (deduplication {dedup:.1}x)\n\
                         stored     {} in {} pack{} (compression {compression:.2}x), {} of \
                         metadata",
                        st.snapshots,
                        HumanBytes(st.snapshot_bytes),
                        HumanBytes(st.chunk_bytes),
                        HumanCount(st.chunks),
                        HumanBytes(st.pack_bytes),
                        st.packs,
                        if st.packs == 1 { "" } else { "s" },
                        HumanBytes(st.metadata_bytes),
                    )
                },
                report,
            );
        }
        RepoCommand::Restore {
            id,
            target,
            include,
            sparse,
            delete,
            filter,
        } => {
            let wants_tree = restore_wants_tree(target, include, *sparse, *delete);
            let include = &named(include);
            let to_stdout = target.as_os_str() == "-";
            let target_path = target;
            let target = target.display();
            if include.len() > 1 && to_stdout {
                return Err(usage(
                    "restore: --target - writes one file of a tree to standard output; name it \
                     with one --include, or restore into a directory",
                ));
            }
            if *sparse && to_stdout {
                return Err(usage(
                    "restore: --sparse leaves holes in a tree's files; a stream restored to \
                     standard output is written sparse by `dd of=FILE conv=sparse`",
                ));
            }
            if *delete && to_stdout {
                return Err(usage(
                    "restore: --delete removes what a target directory holds beside the \
                     snapshot; name a directory with --target",
                ));
            }
            let info = if id == "latest" {
                let snaps = filter.to_restore(&repo).await?;
                latest_to_restore(snaps, wants_tree, &target.to_string())?
            } else {
                filter.refuse_beside(id)?;
                repo.snapshot_to_restore(id).await?
            };
            if to_stdout {
                if let (SnapshotKind::Stream { name }, Some(_)) = (&info.kind, include.first()) {
                    return Err(usage(format!(
                        "restore: --include selects a file of a tree snapshot; {} is the stream \
                         {name}, restored whole",
                        info.short_id()
                    )));
                }
                let (opts, shown) = restore_progress(stop.as_ref());
                let out = tokio::io::stdout();
                let n = match include.first() {
                    Some(path) => repo.restore_file_with(&info, path, out, &opts).await,
                    None => repo.restore_stream_with(&info, out, &opts).await,
                };
                finish_bar(shown);
                let n = n?;
                if args.output == Output::Json {
                    errln!("{}", json!({ "bytes": n }));
                }
            } else if let SnapshotKind::Stream { name } = &info.kind {
                if !include.is_empty() {
                    return Err(usage(format!(
                        "restore: --include selects paths of a tree snapshot; {} is the \
                             stream {name}, restored whole",
                        info.short_id()
                    )));
                }
                if *sparse {
                    return Err(usage(format!(
                        "restore: --sparse leaves holes in a tree's files; {} is the stream \
                             {name}: `--target - | dd of={target} conv=sparse` writes it sparse",
                        info.short_id()
                    )));
                }
                if *delete {
                    return Err(usage(format!(
                        "restore: --delete removes what a target directory holds beside a \
                             tree snapshot; {} is the stream {name}, restored to one file",
                        info.short_id()
                    )));
                }
                // A stream restored to a path: write it as a file named after the target.
                // Where something is, into a new file beside it, renamed over it once
                // whole: a restore that fails leaves the target as it was, never a
                // truncated one under its name, and nothing another user left there (a
                // symlink) is written through. A device or a pipe (`/dev/null`, a FIFO)
                // is written directly.
                let dest = link_target(target_path);
                let found = std::fs::symlink_metadata(&dest);
                // `outdir/` names a directory whether or not it exists yet: a file cannot be
                // made under that name.
                let slash = target_path.as_os_str().as_encoded_bytes().ends_with(b"/");
                if slash || found.as_ref().is_ok_and(std::fs::Metadata::is_dir) {
                    return Err(usage(format!(
                        "restore: {target} is a directory, and {} is the stream {name}: \
                             name a file to write it to (such as {}/{name}), or `--target -`",
                        info.short_id(),
                        target.to_string().trim_end_matches('/')
                    )));
                }
                let direct = found.is_ok_and(|m| !m.is_file() && !m.is_symlink());
                let (file, beside) = if direct {
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&dest)
                        .with_context(|| format!("opening {}", dest.display()))?;
                    (file, None)
                } else {
                    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir)
                            .with_context(|| format!("creating directory {}", dir.display()))?;
                    }
                    cairn_repository::create_or_beside(&dest, false)
                        .with_context(|| format!("creating {}", dest.display()))?
                };
                // What is removed should the restore fail: the file beside, or the new one.
                let written = beside.clone().unwrap_or_else(|| dest.clone());
                let (opts, shown) = restore_progress(stop.as_ref());
                let n = repo
                    .restore_stream_with(&info, tokio::fs::File::from_std(file), &opts)
                    .await;
                finish_bar(shown);
                let n = match n {
                    Ok(n) => {
                        // An existing file keeps its permissions.
                        if let Some(beside) = &beside {
                            if let Ok(before) = std::fs::metadata(&dest) {
                                std::fs::set_permissions(beside, before.permissions())
                                    .with_context(|| {
                                        format!("setting the mode of {}", beside.display())
                                    })?;
                            }
                            std::fs::rename(beside, &dest).with_context(|| {
                                format!("renaming {} to {}", beside.display(), dest.display())
                            })?;
                        }
                        n
                    }
                    Err(e) => {
                        if !direct {
                            let _ = std::fs::remove_file(&written);
                        }
                        return Err(e.into());
                    }
                };
                args.print(
                    || format!("restored stream {name} ({n} bytes) to {target}"),
                    json!({ "id": info.id, "bytes": n, "target": target.to_string() }),
                );
            } else {
                let (opts, shown) = restore_progress(stop.as_ref());
                let opts = opts.sparse(*sparse).delete(*delete);
                let r = repo
                    .restore_paths_salvaging(&info, target_path, include, &opts)
                    .await;
                finish_bar(shown);
                let r = r?;
                for (path, why) in &r.lost {
                    errln!("error: {path} is not restored: {why}");
                }
                args.print(
                        || {
                            let deleted = match r.deleted {
                                0 if !*delete => String::new(),
                                n => format!("; deleted {n} entries the snapshot does not hold"),
                            };
                            let n = |count: u64, one: &str, many: &str| {
                                format!("{count} {}", if count == 1 { one } else { many })
                            };
                            format!(
                                "restored {}, {}, {} to {target}{deleted}",
                                n(r.files, "file", "files"),
                                n(r.dirs, "directory", "directories"),
                                n(r.bytes, "byte", "bytes")
                            )
                        },
                        json!({ "id": info.id, "files": r.files, "dirs": r.dirs, "bytes": r.bytes, "deleted": r.deleted, "target": target.to_string(), "lost": r.lost }),
                    );
                if !r.lost.is_empty() {
                    errln!(
                        "cairn: {} of the snapshot's paths could not be restored (damaged or \
                             missing data; `cairn repo check --read-data` names the objects); \
                             the rest is restored",
                        r.lost.len()
                    );
                    return Ok(ExitCode::from(crate::exit::FAILED));
                }
            }
        }
        RepoCommand::Check {
            read_data,
            read_data_subset,
        } => {
            let read = match (read_data, read_data_subset) {
                (_, Some(subset)) => *subset,
                (true, None) => ReadData::All,
                (false, None) => ReadData::None,
            };
            let r = repo.check_data(read).await?;
            args.print(
                || {
                    let mut lines = Vec::new();
                    for w in &r.warnings {
                        lines.push(format!("warning: {w}"));
                    }
                    for e in &r.errors {
                        let affected = if e.snapshots.is_empty() {
                            String::new()
                        } else {
                            format!(" (affects snapshots {})", e.snapshots.join(", "))
                        };
                        lines.push(format!("error: {} {}{affected}", e.object, e.reason));
                    }
                    lines.push(format!(
                        "{} snapshots, {} of {} packs read ({} bytes): {}",
                        r.snapshots,
                        r.packs_read,
                        r.packs,
                        r.bytes_read,
                        if r.is_ok() { "no errors" } else { "DAMAGED" }
                    ));
                    lines.join("\n")
                },
                serde_json::to_value(&r).context("encoding report")?,
            );
            if !r.is_ok() {
                return Ok(ExitCode::from(crate::exit::FAILED));
            }
        }
        RepoCommand::Forget {
            ids,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within,
            time_zone,
            filter,
            dry_run,
            prune,
        } => {
            let policy = Retention::new()
                .last(*keep_last)
                .hourly(*keep_hourly)
                .daily(*keep_daily)
                .weekly(*keep_weekly)
                .monthly(*keep_monthly)
                .yearly(*keep_yearly)
                .within_months(keep_within.map_or(0, |w| w.0))
                .within(keep_within.map_or(0, |w| w.1));
            // Exports hold restore points' data: rules never remove them, and one a point of
            // this home references is removed only with its point.
            let points = points_by_snapshot(home)?;
            let zone = named_zone(time_zone)?;
            let mut exports_left = Vec::new();
            let r = if ids.is_empty() {
                if policy.is_empty() {
                    return Err(usage(
                        "forget: give at least one --keep-* rule, or the snapshots to remove",
                    ));
                }
                let filter = filter.filter()?;
                if filter.tags.iter().any(|t| t == crate::exports::TAG) {
                    return Err(usage(format!(
                        "forget: export snapshots (tag {}) are not removed by rules: they hold \
                         restore points' data, and go with their points (a policy's retention, \
                         or `cairn run BLUEPRINT --action delete --from-point ID`); one no point \
                         references is removed by its id",
                        crate::exports::TAG
                    )));
                }
                exports_left = repo
                    .snapshots(&filter.clone().tag(crate::exports::TAG))
                    .await?;
                let rules = filter.without_tag(crate::exports::TAG);
                repo.forget(&policy, &rules, &zone, *dry_run).await?
            } else {
                if !policy.is_empty() || filter.given() {
                    return Err(usage(
                        "forget: give snapshot ids or --keep-* rules and filters, not both",
                    ));
                }
                for id in ids {
                    // A damaged snapshot object is removed unread, as the library does.
                    let Ok(s) = repo.snapshot(id).await else {
                        continue;
                    };
                    if let Some(p) = points.get(&s.id) {
                        return Err(usage(format!(
                            "forget: snapshot {} holds restore point {}'s data (blueprint {}); \
                             remove the point instead: `cairn run {} --action delete \
                             --from-point {}`, or let its policy's retention remove it",
                            &s.id[..8],
                            p.point,
                            p.blueprint,
                            p.blueprint,
                            p.point
                        )));
                    }
                }
                repo.forget_ids(ids, *dry_run).await?
            };
            // Cairn's own DR exports belong to no restore point: not listed.
            let orphaned: Vec<&str> = exports_left
                .iter()
                .filter(|s| !points.contains_key(&s.id))
                .filter(|s| !s.tags.iter().any(|t| t == "blueprint=dr"))
                .map(|s| s.id.as_str())
                .collect();
            let pruned = if *prune && !*dry_run {
                Some(repo.prune(false).await?)
            } else {
                None
            };
            args.print(
                || {
                    let mut lines = Vec::new();
                    if !policy.is_empty() {
                        lines.push(format!(
                            "rules: {policy} (in each series: host, source, workload; \
                             periods of {})",
                            zone.iana_name().unwrap_or("the local time zone (TZ)")
                        ));
                    }
                    for (id, why) in &r.kept {
                        lines.push(format!("keep   {} ({})", &id[..8], why.join(", ")));
                    }
                    for id in &r.removed {
                        lines.push(format!(
                            "{} {}",
                            if *dry_run { "would remove" } else { "remove" },
                            &id[..8]
                        ));
                    }
                    for (id, until) in &r.protected {
                        lines.push(format!("protected {} until {until}: skipped", &id[..8]));
                    }
                    if !exports_left.is_empty() {
                        lines.push(format!(
                            "left {} export snapshot(s): restore points' data, removed with \
                             their points",
                            exports_left.len()
                        ));
                    }
                    if !orphaned.is_empty() {
                        let short: Vec<&str> = orphaned.iter().map(|id| &id[..8]).collect();
                        lines.push(format!(
                            "{} of them no restore point of this home references: {} (a backup \
                             killed outright left them, or one running now has not recorded \
                             its point yet, or they are another home's; `cairn repo forget ID` \
                             removes one once you know it is none of those)",
                            orphaned.len(),
                            short.join(" ")
                        ));
                    }
                    if let Some(p) = &pruned {
                        lines.push(format!(
                            "pruned {} packs ({} bytes); repacked {} mostly unused packs",
                            p.packs_deleted, p.bytes_deleted, p.packs_repacked
                        ));
                    }
                    lines.join("\n")
                },
                json!({
                    "forget": r,
                    "prune": pruned,
                    "exports_left": exports_left.len(),
                    "unreferenced_exports": orphaned,
                }),
            );
            // Snapshots named by id were asked for: one the protection period keeps is a refusal.
            if !ids.is_empty() && !*dry_run && !r.protected.is_empty() {
                errln!(
                    "cairn: {} of the snapshots named were not removed: the repository's protection \
                     period covers them",
                    r.protected.len()
                );
                return Ok(ExitCode::from(EXIT_PROTECTED));
            }
        }
        RepoCommand::Prune {
            dry_run,
            repack_unused,
        } => {
            let mut opts = PruneOptions::default();
            opts.dry_run = *dry_run;
            opts.repack_unused = repack_unused / 100.0;
            let r = repo.prune_with(&opts).await?;
            args.print(
                || {
                    let mut s = format!(
                        "{} {} packs ({} bytes); {} packs in use",
                        if *dry_run { "would delete" } else { "deleted" },
                        r.packs_deleted,
                        r.bytes_deleted,
                        r.packs_kept
                    );
                    if r.packs_protected > 0 {
                        s.push_str(&format!(
                            "; {} unreferenced packs are protected and were kept",
                            r.packs_protected
                        ));
                    }
                    if r.unfinished_removed > 0 {
                        s.push_str(&format!(
                            "\n{} {} unfinished uploads ({} bytes) that processes killed while \
                             writing left",
                            if *dry_run { "would remove" } else { "removed" },
                            r.unfinished_removed,
                            r.unfinished_bytes
                        ));
                    }
                    if r.packs_repacked > 0 {
                        s.push_str(&format!(
                            "\n{} {} mostly unused packs ({} live bytes copied); the next prune \
                             deletes them, freeing about {} bytes",
                            if *dry_run { "would repack" } else { "repacked" },
                            r.packs_repacked,
                            r.bytes_repacked,
                            r.bytes_reclaimable
                        ));
                    }
                    if let Some(e) = &r.repack_error {
                        s.push_str(&format!(
                            "\nwarning: repacking was skipped: {e}; run `cairn repo check \
                             --read-data`"
                        ));
                    }
                    s
                },
                serde_json::to_value(&r).context("encoding report")?,
            );
        }
        RepoCommand::Repair(RepairCommand::Packs { packs, dry_run }) => {
            let r = repo.repair_packs(packs, *dry_run).await.map_err(|e| {
                let protected = matches!(e, cairn_repository::Error::Protected { .. });
                let e = anyhow::Error::new(e);
                // The pack stays, and its damaged chunks stay indexed: say what that costs.
                if protected {
                    e.context(
                        "repair refused: until the pack's protection period ends, backups of \
                         the data it held reuse its damaged chunks, and their snapshots cannot \
                         be restored; meanwhile back up into a new repository (`cairn repo \
                         copy` takes the intact snapshots there)",
                    )
                } else {
                    e
                }
            })?;
            args.print(
                || {
                    let mut lines: Vec<String> = r
                        .packs
                        .iter()
                        .map(|p| match &p.reason {
                            None => format!("pack {}: intact ({} chunks); left as it is", &p.pack[..8], p.chunks),
                            Some(why) => format!(
                                "pack {}: {why}: {} of {} chunks damaged; {} {} intact ones in new packs and {} the pack",
                                &p.pack[..8],
                                p.damaged,
                                p.chunks,
                                if *dry_run { "would store the" } else { "stored the" },
                                p.chunks - p.damaged,
                                if *dry_run { "would delete" } else { "deleted" },
                            ),
                        })
                        .collect();
                    let damaged: usize = r.packs.iter().map(|p| p.damaged).sum();
                    if damaged > 0 {
                        lines.push(format!(
                            "{damaged} damaged chunks {} in no index: back up the same data again \
                             and it stores them again, and the snapshots that need them restore \
                             again; `cairn repo check` names those snapshots until then",
                            if *dry_run { "would be" } else { "are now" }
                        ));
                    }
                    lines.extend(repaired_line(r.index.marked));
                    lines.join("\n")
                },
                serde_json::to_value(&r).context("encoding report")?,
            );
        }
        RepoCommand::Repair(RepairCommand::Snapshots {
            snapshots,
            forget,
            dry_run,
        }) => {
            let ids = if snapshots.is_empty() {
                let all = repo.snapshots(&SnapshotFilter::new()).await?;
                all.into_iter().map(|s| s.id).collect()
            } else {
                snapshots.clone()
            };
            let (mut done, mut failed) = (Vec::new(), Vec::new());
            for (id, r) in repo.repair_snapshots(&ids, *dry_run, *forget).await? {
                match r {
                    Ok(r) => done.push(r),
                    Err(e) => failed.push((id, e.to_string())),
                }
            }
            args.print(
                || repaired_lines(&done, &failed, *dry_run, *forget),
                json!({
                    "snapshots": done,
                    "failed": failed
                        .iter()
                        .map(|(id, why)| json!({"snapshot": id, "error": why}))
                        .collect::<Vec<_>>(),
                }),
            );
            if !failed.is_empty() {
                return Ok(ExitCode::from(crate::exit::FAILED));
            }
        }
        RepoCommand::Repair(RepairCommand::Index { dry_run }) => {
            let r = repo.repair_index(*dry_run).await?;
            args.print(
                || {
                    let mut lines: Vec<String> = r
                        .packs_unreadable
                        .iter()
                        .map(|(pack, why)| format!("error: pack {pack}: {why}"))
                        .collect();
                    lines.push(format!(
                        "{} {} packs ({} chunks) from their headers; {} {} damaged index files",
                        if *dry_run { "would index" } else { "indexed" },
                        r.packs_indexed,
                        r.chunks_indexed,
                        if *dry_run { "would remove" } else { "removed" },
                        r.index_files_removed
                    ));
                    if !r.packs_unreadable.is_empty() {
                        lines.push(format!(
                            "{} packs cannot be read; `cairn repo check` names the snapshots \
                             that need them",
                            r.packs_unreadable.len()
                        ));
                    }
                    if !r.packs_missing.is_empty() {
                        lines.push(format!(
                            "{} missing packs ({}) {} the index ({} index files {}): back up \
                             the same data again and the snapshots that need them restore \
                             again; `cairn repo check` names those snapshots",
                            r.packs_missing.len(),
                            r.packs_missing.join(", "),
                            if *dry_run {
                                "would be dropped from"
                            } else {
                                "dropped from"
                            },
                            r.index_files_replaced,
                            if *dry_run { "to replace" } else { "replaced" },
                        ));
                    }
                    lines.extend(repaired_line(r.marked));
                    lines.join("\n")
                },
                serde_json::to_value(&r).context("encoding report")?,
            );
            if !r.packs_unreadable.is_empty() {
                return Ok(ExitCode::from(crate::exit::FAILED));
            }
        }
        RepoCommand::Unlock { remove_all } => {
            let locks = repo.unlock(*remove_all).await?;
            args.print(
                || {
                    let mut lines: Vec<String> = locks
                        .iter()
                        .map(|l| {
                            let state = match (l.removed, &l.stale) {
                                (true, Some(why)) => format!("removed ({why})"),
                                (true, None) => "removed".into(),
                                (false, Some(why)) if l.time.is_none() => {
                                    format!("{why}: left alone")
                                }
                                (false, _) => "held".into(),
                            };
                            // A foreign object's name may be anything: cut by characters.
                            let id: String = l.id.chars().take(8).collect();
                            match l.time {
                                Some(time) => format!(
                                    "{id} {} {} lock of {} (pid {}) since {time}: {state}",
                                    if l.exclusive { "exclusive" } else { "shared" },
                                    l.operation,
                                    l.hostname,
                                    l.pid,
                                ),
                                None => format!("{id}: {state}"),
                            }
                        })
                        .collect();
                    let held = locks
                        .iter()
                        .filter(|l| !l.removed && l.time.is_some())
                        .count();
                    lines.push(match (locks.len(), held) {
                        (0, _) => "no locks".into(),
                        (_, 0) => "no locks are held now".into(),
                        (_, n) => format!(
                            "{n} held; if their holders are not running anywhere (a lost \
                             host), `cairn repo unlock --remove-all` removes them"
                        ),
                    });
                    lines.join("\n")
                },
                serde_json::to_value(&locks).context("encoding locks")?,
            );
        }
        RepoCommand::Key(cmd) => match cmd {
            KeyCommand::Add { new, label } => {
                let id = repo.add_key(new.provider()?.as_ref(), label).await?;
                args.print(|| format!("added key slot {id}"), json!({ "id": id }));
            }
            KeyCommand::List => {
                let keys = repo.keys().await?;
                args.print(
                    || {
                        keys.iter()
                            .map(|k| {
                                format!(
                                    "{}{} {:<10} {} {}",
                                    if k.current { "*" } else { " " },
                                    &k.id[..8],
                                    k.kind,
                                    k.created,
                                    k.label
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    },
                    serde_json::to_value(&keys).context("encoding keys")?,
                );
            }
            KeyCommand::Remove { id } => {
                let id = repo.remove_key(id).await?;
                args.print(
                    || format!("removed key slot {id}"),
                    json!({ "removed": id }),
                );
            }
            KeyCommand::Rotate { new } => {
                let id = repo.rotate_key(new.provider()?.as_ref()).await?;
                args.print(
                    || format!("rotated: the key is now in slot {id}; the old slot is removed"),
                    json!({ "id": id }),
                );
            }
            KeyCommand::Export { to } => {
                let slot = repo.export_key().await?;
                if to.as_os_str() == "-" {
                    std::io::Write::write_all(&mut std::io::stdout(), &slot)
                        .context("writing the key slot")?;
                } else {
                    match cairn_repository::write_private(to, &slot) {
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            return Err(usage(format!(
                                "key export: {} exists already; give a new file, or `-` for \
                                 standard output",
                                to.display()
                            )));
                        }
                        r => r.with_context(|| format!("writing {}", to.display()))?,
                    }
                    args.print(
                        || {
                            format!(
                                "wrote key slot to {}: keep it apart from the repository; \
                                 `cairn repo key import` puts it back",
                                to.display()
                            )
                        },
                        json!({ "exported": to }),
                    );
                }
            }
            KeyCommand::Import { .. } => unreachable!("handled above"),
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// Paths of a snapshot named on the command line, as the snapshot's nodes spell them: bytes
/// that are not UTF-8 as U+FFFD, as in their `path` (`path_raw` keeps the bytes).
fn named(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// The file a stream restored to `path` is written as: `path`, or where a symlink there of the
/// user's own points (the link's file is replaced, not the link).
fn link_target(path: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    // Followed only when it is the user's own and leads somewhere: a link another user left
    // (in /tmp, say) is replaced, never written through, as is one that dangles.
    let own = std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_symlink() && m.uid() == rustix::process::geteuid().as_raw());
    match std::fs::canonicalize(path) {
        Ok(resolved) if own => resolved,
        _ => path.to_path_buf(),
    }
}

/// A path (or a link's target) as a text listing shows it, one entry to a line and no two
/// alike: control characters (a newline in a name) and the backslash escaped, and the bytes
/// of a name that is not UTF-8 (`raw`, hex) as `\xNN` (`--output json` has the path as it
/// is, with its bytes).
fn shown_path<'a>(path: &'a str, raw: Option<&str>) -> std::borrow::Cow<'a, str> {
    let escape = |text: &str, out: &mut String| {
        for c in text.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.extend(c.escape_default()),
                c => out.push(c),
            }
        }
    };
    if let Some(bytes) = raw.and_then(|r| hex::decode(r).ok()) {
        let mut out = String::new();
        for chunk in bytes.utf8_chunks() {
            escape(chunk.valid(), &mut out);
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
        return out.into();
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        let mut out = String::new();
        escape(path, &mut out);
        out.into()
    } else {
        path.into()
    }
}

/// `repair snapshots`' report: each damaged snapshot with its lost files and what became of it,
/// then those that could not be repaired, then a count.
fn repaired_lines(
    done: &[cairn_repository::SnapshotRepair],
    failed: &[(String, String)],
    dry_run: bool,
    forget: bool,
) -> String {
    let mut lines = Vec::new();
    for r in done.iter().filter(|r| !r.dropped.is_empty()) {
        let id = &r.snapshot[..8.min(r.snapshot.len())];
        lines.push(format!("snapshot {id}: {} files lost", r.dropped.len()));
        lines.extend(
            r.dropped
                .iter()
                .map(|(path, why)| format!("  {}: {why}", shown_path(path, None))),
        );
        lines.push(match (&r.repaired, dry_run) {
            (_, true) => format!(
                "  would be written again without them{}",
                if forget { ", and removed" } else { "" }
            ),
            (Some(new), false) if r.forgotten => {
                format!("  written again as {}; removed", &new[..8])
            }
            (Some(new), false) => match &r.protected_until {
                Some(until) => format!(
                    "  written again as {}; kept, protected until {until}",
                    &new[..8]
                ),
                None => format!(
                    "  written again as {}; kept (`cairn repo forget {}` removes it)",
                    &new[..8],
                    r.snapshot
                ),
            },
            (None, false) => "  left as it was".to_owned(),
        });
    }
    lines.extend(
        failed
            .iter()
            .map(|(id, why)| format!("error: snapshot {id}: {why}")),
    );
    let damaged = done.iter().filter(|r| !r.dropped.is_empty()).count();
    lines.push(format!(
        "{} snapshots: {} whole, {damaged} {}, {} not repairable",
        done.len() + failed.len(),
        done.len() - damaged,
        if dry_run { "to repair" } else { "repaired" },
        failed.len()
    ));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listed_path_stays_on_one_line() {
        use super::shown_path;
        assert_eq!(shown_path("a/b.sql", None), "a/b.sql");
        assert_eq!(shown_path("bad\nname\t1", None), "bad\\nname\\t1");
        // No two names alike: a backslash and an n are not a newline, and bytes that are not
        // UTF-8 are not the replacement character they read as.
        assert_eq!(shown_path("bad\\nname", None), "bad\\\\nname");
        assert_eq!(shown_path("\u{fffd}", None), "\u{fffd}");
        assert_eq!(shown_path("\u{fffd}x\n", Some("ff780a")), "\\xffx\\n");
    }
}
