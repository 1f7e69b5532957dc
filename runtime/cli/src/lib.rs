//! The `cairn` command line.
//!
//! `cairn blueprint build|inspect|add`, `cairn run`, `cairn workloads`, `cairn repo …`,
//! `cairn catalog …`, `cairn dr …`, `cairn policy …`, `cairn binding …`, `cairn profile …`, `cairn preset …` and `cairn serve`. Every command takes
//! `--home DIR` (or `CAIRN_HOME`): the instance's state directory, holding the compile cache,
//! the audit log, the local target's state and the default export location.
//!
//! Exit codes are the same for every command: see [`exit`].

/// `eprintln!` that never panics: a closed stderr (a log pipe that died, a dropped SSH
/// session) must not end a run before its posthook has undone its prehook.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::err_line(format_args!($($arg)*))
    };
}

/// `println!` that does not panic when standard output fails: see [`out_line`].
macro_rules! outln {
    () => {
        $crate::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out_line(format_args!($($arg)*))
    };
}

mod binding;
mod blueprint;
mod catalog;
mod dr;
mod exports;
mod home;
mod metrics;
mod operator;
mod policy;
mod preset;
mod profile;
mod repo;
mod run;
mod scaffold;
mod schedule;
mod serve;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes shared by every command.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The action (or the operation) ran and failed: a blueprint error, a failed check.
    pub const FAILED: u8 = 1;
    /// The input was refused before anything ran: usage, a bad file, a bad parameter.
    pub const USAGE: u8 = 2;
    /// The runtime itself failed (I/O, the cache, the state directory).
    pub const RUNTIME: u8 = 3;
    /// The run was interrupted (SIGINT, SIGTERM) and stopped, its posthook run: what a shell
    /// reports for a process Ctrl-C ended.
    pub const INTERRUPTED: u8 = 130;
    /// Standard output was closed before all was written (`cairn repo ls | head`): what a
    /// process killed by `SIGPIPE` reports, so `set -o pipefail` scripts see it the same way.
    pub const OUTPUT_CLOSED: u8 = 141;
}

/// The exit code standard output's failure calls for: 0 while it works, then
/// [`exit::OUTPUT_CLOSED`] when its reader went away, or [`exit::RUNTIME`] for any other
/// failure (a full disk it is redirected to).
static OUTPUT_FAILED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Writes a line to standard output. Once that fails, the rest of the output is dropped (the
/// command still finishes, releasing what it holds) and the exit code says so: a reader that
/// quits early gets no message, any other failure one.
/// Whether anything was printed on stdout (a JSON document: one that failed after it adds no
/// second).
static WROTE_OUTPUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn out_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if OUTPUT_FAILED.load(Ordering::Relaxed) != 0 {
        return;
    }
    WROTE_OUTPUT.store(true, Ordering::Relaxed);
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        let code = if e.kind() == std::io::ErrorKind::BrokenPipe {
            exit::OUTPUT_CLOSED
        } else {
            errln!("cairn: cannot write to standard output: {e}");
            exit::RUNTIME
        };
        OUTPUT_FAILED.store(code, Ordering::Relaxed);
    }
}

/// Writes one line to stderr, dropping it when stderr cannot take it.
pub(crate) fn err_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: application-consistent backup and DR with WebAssembly blueprints"
)]
struct Cli {
    /// The instance's state directory (compile cache, audit log, local target state, default
    /// exports). Default: $XDG_DATA_HOME/cairn, or ~/.local/share/cairn.
    #[arg(
        long,
        env = "CAIRN_HOME",
        global = true,
        value_name = "DIR",
        help_heading = "Global options"
    )]
    home: Option<PathBuf>,

    /// More diagnostics on stderr (repeat for more); `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Blueprints: new, build, inspect, and the registered ones (add, list, remove).
    #[command(subcommand)]
    Blueprint(blueprint::BlueprintCommand),
    /// Run an action of a blueprint against a target.
    Run(run::RunArgs),
    /// List the workloads of a target's namespace, as blueprints see them.
    Workloads(workloads::WorkloadsArgs),
    /// Manage export repositories.
    #[command(
        after_help = "Exit codes: 0 success; 1 the operation found a problem (check found \
damage, a restore hit damaged data, backup's command failed); 2 usage (bad arguments, no such \
snapshot, no key given, a backup's command that cannot be started, init where a repository is, removing the last key slot or the one in use); 3 runtime (I/O, the object store); 4 wrong passphrase or key; 5 locked \
by another process, retry later; 6 refused by the protection period; 7 no repository there, or a \
format version this build cannot read; 130 a restore or a directory's backup interrupted (Ctrl-C), \
leaving nothing half written; 141 standard output closed early."
    )]
    Repo(repo::RepoArgs),
    /// Inspect the catalog: restore points, actions, policies and the rest.
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
    /// Cairn's own disaster recovery: enable, run, review, restore.
    #[command(subcommand)]
    Dr(dr::DrCommand),
    /// Backup policies: which workloads a registered blueprint backs up, how often, where to
    /// and for how long.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Blueprint bindings: which blueprint, with which parameters and grants, protects the
    /// workloads a policy selects when the policy names no blueprint.
    #[command(subcommand)]
    Binding(binding::BindingCommand),
    /// Location profiles: named repositories with their options and key source, which
    /// `--profile NAME` and a policy's `export: {profile: NAME}` use.
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// Policy presets: service levels (frequency, retention, export, prune) that policies name
    /// with `preset:`.
    #[command(subcommand)]
    Preset(preset::PresetCommand),
    /// Run the policies when they are due, until stopped (SIGINT, SIGTERM or SIGHUP).
    Serve(serve::ServeArgs),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    // Asked for JSON, a command that fails says so on stdout too, as `cairn repo` does, so a
    // script reading stdout gets a document either way.
    // `args_os`: a path that is not UTF-8 is an argument like another, never a panic.
    let json = asks_json(std::env::args_os().map(|a| a.to_string_lossy().into_owned()));
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("cairn: cannot start the async runtime: {e}");
            return ExitCode::from(exit::RUNTIME);
        }
    };
    let code = runtime.block_on(async move {
        match dispatch(cli).await {
            Ok(code) => code,
            Err(e) => {
                errln!("cairn: {}", one_line(&e));
                let code = classify(&e);
                if json && !WROTE_OUTPUT.load(std::sync::atomic::Ordering::Relaxed) {
                    outln!(
                        "{}",
                        serde_json::json!({ "error": one_line(&e), "exit_code": code })
                    );
                }
                ExitCode::from(code)
            }
        }
    });
    match OUTPUT_FAILED.load(std::sync::atomic::Ordering::Relaxed) {
        0 => code,
        failed => ExitCode::from(failed),
    }
}

/// Whether the command line asks for `--output json`.
fn asks_json(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.windows(2)
        .any(|w| w[0] == "--output" && w[1] == "json")
        || args.iter().any(|a| a == "--output=json")
}

/// Whether `command` changes the catalog (or records a run in it). `cairn run` refuses for
/// itself (a posthook runs whatever the catalog's state); `serve` checks at each pass.
fn changes_catalog(command: &Command) -> bool {
    use blueprint::BlueprintCommand as B;
    use dr::DrCommand as D;
    use policy::PolicyCommand as P;
    match command {
        Command::Blueprint(c) => matches!(c, B::Add { .. } | B::Remove { .. }),
        Command::Policy(P::Apply(a)) => !a.dry_run,
        Command::Policy(c) => matches!(
            c,
            P::Delete { .. }
                | P::Pause { .. }
                | P::Resume { .. }
                | P::Restore { .. }
                | P::Run { .. }
        ),
        // A DR run would export the half-restored catalog as a point.
        Command::Dr(c) => matches!(
            c,
            D::Enable { .. } | D::Disable | D::Run { .. } | D::TakeOwnership { .. }
        ),
        Command::Binding(binding::BindingCommand::Apply(a))
        | Command::Preset(preset::PresetCommand::Apply(a)) => !a.dry_run,
        Command::Binding(c) => matches!(c, binding::BindingCommand::Delete { .. }),
        Command::Preset(c) => matches!(c, preset::PresetCommand::Delete { .. }),
        Command::Profile(c) => !matches!(c, profile::ProfileCommand::List { .. }),
        Command::Catalog(c) => !matches!(c, catalog::CatalogCommand::Ls { .. }),
        _ => false,
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    // A change to a home whose DR restore did not finish would be kept by the restore's rerun,
    // which applies the rest of the point around it.
    if changes_catalog(&cli.command) {
        let home = home::Home::resolve(cli.home.clone())?;
        if home.catalog().exists() {
            dr::refuse_unfinished_restore(&catalog::open_unverified(&home)?, &home)?;
        }
    }
    match cli.command {
        Command::Blueprint(cmd) => blueprint::run(cmd, cli.home).await,
        Command::Run(args) => run::run(args, cli.home).await,
        Command::Workloads(args) => workloads::run(args, cli.home).await,
        Command::Repo(args) => repo::run(args, cli.home).await,
        Command::Catalog(cmd) => catalog::run(cmd, cli.home).await,
        Command::Dr(cmd) => dr::run(cmd, cli.home).await,
        Command::Policy(cmd) => policy::run(cmd, cli.home).await,
        Command::Binding(cmd) => binding::run(cmd, cli.home).await,
        Command::Profile(cmd) => profile::run(cmd, cli.home),
        Command::Preset(cmd) => preset::run(cmd, cli.home),
        Command::Serve(args) => serve::serve(args, cli.home).await,
    }
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    // The run's events (the blueprint's log, a phase's failure) are printed as they come;
    // the engine's tracing of the same would say each twice.
    let default = match verbose {
        // The TLS verifier logs each failed handshake (22 lines for one command against an
        // untrusted certificate); the store error says it once, with what to do.
        0 => "warn,cairn::guest=off,cairn_engine::run=error,rustls_platform_verifier=off",
        1 => "info,cairn=debug",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal (not in log files, journals or CI output), and not when
    // NO_COLOR is set to anything (no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(|| AboveBar)
        .with_target(false)
        .try_init();
}

/// The progress bar on the terminal while one shows, so that tracing's lines (a file a backup
/// cannot read) are printed above it rather than into it.
static BAR: std::sync::Mutex<Option<indicatif::WeakProgressBar>> = std::sync::Mutex::new(None);

/// Shows tracing's lines above `bar` from now until it is finished.
pub(crate) fn print_above(bar: &indicatif::ProgressBar) {
    if let Ok(mut shown) = BAR.lock() {
        *shown = Some(bar.downgrade());
    }
}

/// Standard error, written with the progress bar cleared and drawn again after (tracing
/// writes each line whole).
struct AboveBar;

impl std::io::Write for AboveBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().ok().and_then(|b| b.as_ref()?.upgrade());
        match bar {
            Some(bar) if !bar.is_finished() => bar.suspend(|| std::io::stderr().write(buf)),
            _ => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Prints a listing: `rows` as JSON, or one `line` each, or `empty` when there are none.
pub(crate) fn print_rows<T: serde::Serialize>(
    output: Output,
    rows: &[T],
    empty: &str,
    line: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(rows)?),
        Output::Text if rows.is_empty() => outln!("{empty}"),
        Output::Text => {
            for row in rows {
                outln!("{}", line(row));
            }
        }
    }
    Ok(())
}

/// Prints, for `--output json`, what `apply` stored (or would): one object for one document, an
/// array for several.
pub(crate) fn print_applied(
    output: Output,
    mut applied: Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    if output == Output::Json {
        let value = match applied.len() {
            1 => applied.remove(0),
            _ => serde_json::Value::Array(applied),
        };
        outln!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}

/// SIGTERM, SIGINT and SIGHUP, handled instead of ending the process: what `serve` and
/// `cairn run` stop on. SIGHUP is a closed terminal or a dropped SSH session: left to its
/// default it would end a run between its prehook and its posthook. One that the process was
/// started ignoring (`nohup`) stays ignored.
pub(crate) struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    pub(crate) fn install() -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            hup: if hangup_ignored() {
                None
            } else {
                Some(signal(SignalKind::hangup()).context("cannot handle SIGHUP")?)
            },
        })
    }

    /// Returns when the next of them arrives.
    pub(crate) async fn recv(&mut self) {
        let hup = async {
            match &mut self.hup {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
            () = hup => {}
        }
    }
}

/// Whether SIGHUP was ignored when the process started (`nohup`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn hangup_ignored() -> bool {
    // SAFETY: `sigaction` with no new action only reads the current one into `old`, a
    // zeroed plain C struct it fully owns for the call.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Whether SIGHUP was ignored when the process started: not known here, so it is handled.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn hangup_ignored() -> bool {
    false
}

/// Calls `stop` at the first SIGINT, SIGTERM or SIGHUP, saying `stopping` (what it does then), so the
/// work in hand stops cleanly; a second ends the process at once (exit 130), for when
/// stopping cleanly hangs (a store not answering, a posthook).
pub(crate) fn on_interrupt(
    stopping: &'static str,
    stop: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    tokio::spawn(async move {
        signals.recv().await;
        errln!("cairn: interrupted; {stopping} (interrupt again to exit at once)");
        stop();
        signals.recv().await;
        errln!("cairn: interrupted again; exiting at once");
        std::process::exit(i32::from(exit::INTERRUPTED));
    });
    Ok(())
}

/// Ends the process at the first SIGINT, SIGTERM or SIGHUP (exit 130), saying `what` happens
/// then: for work that may be cut anywhere and is finished by running it again.
pub(crate) fn exit_on_interrupt(what: &'static str) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    tokio::spawn(async move {
        signals.recv().await;
        errln!("cairn: interrupted; {what}");
        std::process::exit(i32::from(exit::INTERRUPTED));
    });
    Ok(())
}

/// What a repository operation stops on: set by the first SIGINT, SIGTERM or SIGHUP
/// ([`on_interrupt`]).
pub(crate) fn stop_on_interrupt() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    on_interrupt("stopping cleanly", move || {
        let _ = stop.send(true);
    })?;
    Ok(stopped)
}

/// A secret's source as messages show it: `env:VAR` and `file:PATH` say where the secret is;
/// anything else may be the secret itself (a passphrase typed where its source belongs), and
/// only its scheme is shown.
pub(crate) fn shown_source(source: &str) -> String {
    match source.split_once(':') {
        Some(("env" | "file", _)) => source.to_owned(),
        Some((scheme, _))
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_lowercase()) =>
        {
            format!("{scheme}:****")
        }
        _ => "**** (hidden: it may be the secret itself)".to_owned(),
    }
}

/// `names` joined with commas, or `none`.
pub(crate) fn listed<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> String {
    let names: Vec<S> = names.into_iter().collect();
    if names.is_empty() {
        return "none".to_owned();
    }
    let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    names.join(", ")
}

/// Refuses to delete what `users` still name; `named` says by what, given them joined
/// (`preset gold is named by policies a, b`).
pub(crate) fn refuse_while_used(
    users: &[String],
    named: impl FnOnce(String) -> String,
) -> anyhow::Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    Err(UsageError(format!(
        "{}: change or delete them first",
        named(users.join(", "))
    ))
    .into())
}

/// Deletes record `name` of `kind`; one that does not exist is a usage error naming `what`
/// the kind is called and the `list` command that lists them.
pub(crate) fn delete_named(
    catalog: &cairn_catalog::Catalog,
    kind: cairn_catalog::Kind,
    name: &str,
    what: &str,
    list: &str,
) -> anyhow::Result<()> {
    if catalog.delete(kind, name)? {
        Ok(())
    } else {
        Err(UsageError(format!("no {what} named {name:?}; `{list}` lists them")).into())
    }
}

/// `word` as a shell takes it back: as it is when plain, else in single quotes (a quote in it
/// written `'\''`), so a command or path a message shows can be pasted.
pub(crate) fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `path` absolute, as the catalog keeps paths: against the current directory, without `.`
/// components or a trailing slash. Symlinks and `..` stay as written, to be followed where the
/// path is used: a Kubernetes Secret's file is a link whose target changes at each update, and
/// a directory whose link is moved to a new disk is the new disk.
pub(crate) fn absolute_path(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).map_or_else(|_| path.to_owned(), |p| p.components().collect())
}

/// `path` [made absolute](absolute_path), and each `DIR/..` in it dropped where `DIR` is a
/// directory, not a symlink: the same file, said the way an operator reads it
/// (`/x/policies/../hello` is `/x/hello`). Nothing is resolved: a `..` after a symlink (or after
/// what is not there) stays, since the kernel climbs from the link's target, and dropping it
/// would name another file.
pub(crate) fn normalized_path(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in absolute_path(path).components() {
        let plain_dir = || {
            !matches!(out.components().next_back(), Some(Component::ParentDir))
                && out.parent().is_some()
                && std::fs::symlink_metadata(&out).is_ok_and(|m| m.is_dir())
        };
        if c == Component::ParentDir && plain_dir() {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a repository location is a URL rather than a path, as the repository reads it.
pub(crate) use cairn_repository::is_url;

/// A repository's URL as the catalog keeps it: a path [made absolute](absolute_path), a URL
/// (`s3://…`, `file:///…`: a scheme of two characters or more, as the repository reads it) as
/// given.
pub(crate) fn repository_url(url: &str) -> String {
    if is_url(url) {
        url.to_owned()
    } else {
        absolute_path(std::path::Path::new(url))
            .display()
            .to_string()
    }
}

/// Whether a restore point's recorded repository is `current`, compared as the catalog keeps
/// them. A relative path an older build recorded is taken from the current directory, as
/// opening it does.
pub(crate) fn same_repository(recorded: &str, current: &str) -> bool {
    repository_url(recorded) == repository_url(current)
}

/// An error and its causes on one line: "what failed: because: because".
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for (i, cause) in e.chain().enumerate() {
        let text = cause.to_string();
        if i > 0 {
            if s.contains(&text) {
                continue;
            }
            s.push_str(": ");
        }
        s.push_str(&text);
    }
    s
}

/// A usage error: refused before anything ran.
#[derive(Debug)]
pub(crate) struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn classify(e: &anyhow::Error) -> u8 {
    // A wrong passphrase or key is what the user gave, refused before anything ran.
    let wrong_key = |c: &(dyn std::error::Error + 'static)| {
        c.downcast_ref::<cairn_repository::Error>()
            .is_some_and(|r| {
                matches!(
                    r,
                    cairn_repository::Error::WrongKey { .. }
                        | cairn_repository::Error::WrongPassphrase
                )
            })
    };
    if e.chain().any(|c| c.is::<UsageError>() || wrong_key(c)) {
        exit::USAGE
    } else if e.chain().any(|c| c.is::<crate::run::NotStarted>()) {
        exit::INTERRUPTED
    } else {
        exit::RUNTIME
    }
}

#[cfg(test)]
mod tests {
    /// A value typed where a secret's source belongs is never repeated in a message.
    #[test]
    fn a_secret_source_is_shown_without_a_secret() {
        use super::shown_source;
        assert_eq!(shown_source("env:PG_PASSWORD"), "env:PG_PASSWORD");
        assert_eq!(shown_source("file:/etc/pw"), "file:/etc/pw");
        assert_eq!(shown_source("raw:hunter2"), "raw:****");
        assert!(!shown_source("hunter2").contains("hunter2"));
        assert!(!shown_source("Hunter:2").contains("2"));
    }

    /// A path is kept absolute and as written otherwise: `.` and a trailing slash go, links
    /// and `..` stay; a repository is the same however its path was spelled that way.
    #[test]
    fn paths_are_kept_absolute_and_as_written() {
        use super::{absolute_path, repository_url, same_repository};
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        std::fs::create_dir(base.join("pol")).expect("pol");
        std::os::unix::fs::symlink(base.join("pol"), base.join("link")).expect("symlink");
        let name = |p: &str| absolute_path(&base.join(p));
        assert_eq!(name("pol/./repo2/"), base.join("pol/repo2"));
        assert_eq!(name("pol/../repo3"), base.join("pol/../repo3"));
        assert_eq!(name("link/./repo2"), base.join("link/repo2"));
        let here = std::env::current_dir().expect("cwd");
        assert_eq!(repository_url("./r"), here.join("r").display().to_string());
        assert_eq!(repository_url("s3://b/./p"), "s3://b/./p");
        assert_eq!(repository_url("file:///x/./y"), "file:///x/./y");
        assert!(repository_url("./r:x").ends_with("/r:x"));
        let at = |p: &str| base.join(p).display().to_string();
        assert!(same_repository(&at("pol/./repo2"), &at("pol/repo2/")));
        assert!(!same_repository(&at("pol/repo2"), &at("pol/repo3")));
        // A relative one from an older build, as opening it from here does.
        assert!(same_repository("./r", &repository_url("./r")));
    }

    /// clap checks its definitions only when a subcommand is first used; this checks them all.
    #[test]
    fn the_command_line_definitions_are_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
