//! `cairn blueprint new|build|inspect|add|list|remove`.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde::Serialize;

use crate::home::Home;
use crate::{Output, UsageError, exit};

/// The target every blueprint is built for.
const WASM_TARGET: &str = "wasm32-wasip2";

#[derive(Debug, Subcommand)]
pub(crate) enum BlueprintCommand {
    /// Make a new blueprint crate: a working blueprint (it backs up a directory of its
    /// workload as a tar stream, restores it and deletes its export) with native tests and a
    /// local inventory to try it on, depending on the SDK by path.
    New {
        /// The directory to make (it must not exist, or be empty).
        dir: PathBuf,
        /// The blueprint's name [default: the directory's name].
        #[arg(long)]
        name: Option<String>,
        /// The SDK: the `sdk/` directory of a Cairn checkout [default: one found in a
        /// directory above the current one or above this `cairn` program].
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a blueprint crate into a WebAssembly component and print the `.wasm` path.
    Build {
        /// The blueprint crate (a directory with a Cargo.toml).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Build with the dev profile instead of release.
        #[arg(long)]
        debug: bool,
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Register a blueprint in this instance, so that policies (and `cairn run`) can name it:
    /// its component is copied into the home, and a newer one of the same name replaces it (an
    /// older one only with --downgrade).
    Add {
        /// The blueprint component (`.wasm`).
        file: PathBuf,
        /// Replace the registered blueprint of the same name with an older version (a
        /// rollback): every policy naming it runs the older one from its next run.
        #[arg(long, conflicts_with = "keep_newer")]
        downgrade: bool,
        /// Leave a registered blueprint of a newer version, or another build of the same
        /// version added without --keep-newer (an operator's hotfix), in place and succeed,
        /// instead of refusing or replacing it (for registering bundled blueprints at every
        /// start: another build of the same version replaces one added with --keep-newer, the
        /// bundled build of an earlier image).
        #[arg(long)]
        keep_newer: bool,
        /// The only capabilities policies and runs by name may grant it (comma-separated), or
        /// `all` for all it declares. Default: what the blueprint of that name registered
        /// before was allowed (of what this one declares), or all it declares when it is new.
        #[arg(long, value_name = "CAP", value_delimiter = ',')]
        allow: Option<Vec<String>>,
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// List the registered blueprints, with what policies may grant them and who uses them.
    List {
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Unregister a blueprint that no policy or binding names. Its component stays in the
    /// home: restore points it made may still need it.
    Remove {
        /// The blueprint's name.
        name: String,
    },
    /// Show what a blueprint is and needs: actions, parameters, capabilities, WIT version, digest.
    Inspect {
        /// The blueprint component (`.wasm`), or the name of a registered one.
        file: PathBuf,
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

pub(crate) async fn run(cmd: BlueprintCommand, home: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    match cmd {
        BlueprintCommand::New { dir, name, sdk } => crate::scaffold::new(&dir, name, sdk),
        BlueprintCommand::Build { dir, debug, output } => build(&dir, debug, output, home).await,
        BlueprintCommand::Add {
            file,
            downgrade,
            keep_newer,
            allow,
            output,
        } => {
            let home = Home::resolve(home)?;
            let engine = crate::run::engine(&home)?;
            let blueprint = load(&engine, &file).await?;
            warn_of(&blueprint);
            match compared(&home, &blueprint)? {
                Compared::Older(older) if !downgrade => {
                    if keep_newer {
                        outln!("{older}: the registered one is kept (--keep-newer)");
                        return Ok(ExitCode::from(exit::OK));
                    }
                    return Err(UsageError(format!(
                        "{older}; pass --downgrade to roll back to it (every policy naming it \
                         then runs it), or --keep-newer to keep the registered one"
                    ))
                    .into());
                }
                // The Kubernetes install adds its bundled builds at every start with
                // --keep-newer, all of the workspace's version: an operator's build of the same
                // version (a hotfix) must not be reverted by the next restart, while an upgraded
                // image's builds must replace the previous image's.
                Compared::OtherBuild {
                    said,
                    by_hand: false,
                } if keep_newer => {
                    outln!("{said}, which was not added by hand (a bundled build): it is replaced")
                }
                Compared::OtherBuild { said, .. } if keep_newer => {
                    outln!(
                        "{said}, which was added without --keep-newer (an operator's build, such \
                         as a hotfix): the registered one is kept (--keep-newer); add this one \
                         without --keep-newer to replace it"
                    );
                    return Ok(ExitCode::from(exit::OK));
                }
                Compared::OtherBuild { said: other, .. } => errln!(
                    "cairn: warning: {other}, which it replaces; give a new build a new version, \
                     so that restore points say which made them"
                ),
                Compared::Older(_) | Compared::NewOrSame => {}
            }
            let allow = match allow {
                Some(caps) => allowed(&blueprint, &caps)?,
                None => still_allowed(&home, &blueprint)?,
            };
            add(&home, &file, &blueprint, allow, keep_newer, output)?;
            Ok(ExitCode::from(exit::OK))
        }
        BlueprintCommand::List { output } => {
            let home = Home::resolve(home)?;
            let catalog = crate::catalog::open(&home)?;
            let (policies, bindings) = (catalog.policies()?, crate::binding::bindings(&catalog)?);
            let rows: Vec<Registered> = catalog
                .blueprints()?
                .into_iter()
                .map(|blueprint| Registered {
                    used_by: users(&blueprint.name, &policies, &bindings),
                    blueprint,
                })
                .collect();
            crate::print_rows(
                output,
                &rows,
                "no blueprints registered; `cairn blueprint add FILE.wasm` registers one",
                Registered::line,
            )?;
            Ok(ExitCode::from(exit::OK))
        }
        BlueprintCommand::Remove { name } => {
            let home = Home::resolve(home)?;
            let catalog = crate::catalog::open(&home)?;
            let used_by = users(
                &name,
                &catalog.policies()?,
                &crate::binding::bindings(&catalog)?,
            );
            crate::refuse_while_used(&used_by, |u| format!("blueprint {name} is named by {u}"))?;
            crate::delete_named(
                &catalog,
                cairn_catalog::Kind::Blueprint,
                &name,
                "registered blueprint",
                "cairn blueprint list",
            )?;
            outln!(
                "blueprint {name} removed; its component stays in the home for its restore points"
            );
            Ok(ExitCode::from(exit::OK))
        }
        BlueprintCommand::Inspect { file, output } => {
            let home = Home::resolve(home)?;
            let engine = crate::run::engine(&home)?;
            // One that needs a newer runtime is shown all the same, said so: inspecting is how
            // an author finds out what a file is.
            // A file is loaded once (its describe() may take its whole deadline).
            let blueprint = if file.is_file() {
                match engine.load_file(&file).await {
                    Ok(blueprint) => blueprint,
                    Err(cairn_engine::Error::RuntimeTooOld {
                        needed,
                        ours,
                        blueprint,
                    }) => {
                        errln!(
                            "cairn: warning: this blueprint needs Cairn runtime {needed} or \
                             newer; this is {ours}, which will not run it"
                        );
                        print_inspect(&blueprint, output)?;
                        return Ok(ExitCode::from(exit::OK));
                    }
                    Err(e) => {
                        return Err(UsageError(format!("blueprint {}: {e}", file.display())).into());
                    }
                }
            } else {
                load_or_registered(&engine, &home, &file).await?.0
            };
            warn_of(&blueprint);
            print_inspect(&blueprint, output)?;
            Ok(ExitCode::from(exit::OK))
        }
    }
}

/// Warns of what in a blueprint's description is likely a mistake (an action named almost like
/// a lifecycle action), where an author looks: build, add, inspect.
fn warn_of(blueprint: &cairn_engine::Blueprint) {
    for w in blueprint.description().warnings() {
        errln!(
            "cairn: warning: blueprint {}: {w}",
            blueprint.description().name
        );
    }
}

/// A registered blueprint as `list` shows it.
#[derive(Debug, serde::Serialize)]
struct Registered {
    #[serde(flatten)]
    blueprint: cairn_catalog::Blueprint,
    /// The policies and bindings that name it (`policy NAME`, `binding NAME`).
    used_by: Vec<String>,
}

impl Registered {
    fn line(&self) -> String {
        let b = &self.blueprint;
        let allow = match &b.allow {
            None => "may be granted all it declares".to_owned(),
            Some(caps) if caps.is_empty() => "may be granted nothing".to_owned(),
            Some(caps) => format!("may be granted {}", caps.join(",")),
        };
        let digest = b.digest.strip_prefix("sha256:").unwrap_or(&b.digest);
        format!(
            "{:<16} {:<8} {}  {allow}; used by {}",
            b.name,
            b.version,
            digest.get(..12).unwrap_or(digest),
            if self.used_by.is_empty() {
                "nothing".to_owned()
            } else {
                self.used_by.join(", ")
            }
        )
    }
}

/// The policies and bindings that name blueprint `name`.
fn users(
    name: &str,
    policies: &[cairn_catalog::Policy],
    bindings: &[cairn_catalog::BlueprintBinding],
) -> Vec<String> {
    let policies = policies
        .iter()
        .filter(|p| p.blueprint.as_deref() == Some(name))
        .map(|p| format!("policy {}", p.name));
    let bindings = bindings
        .iter()
        .filter(|b| b.blueprint == name)
        .map(|b| format!("binding {}", b.name));
    policies.chain(bindings).collect()
}

/// Loads `file`, or the registered blueprint it names when it is a bare name and no such file
/// exists (with its registration).
pub(crate) async fn load_or_registered(
    engine: &cairn_engine::Engine,
    home: &Home,
    file: &Path,
) -> anyhow::Result<(cairn_engine::Blueprint, Option<cairn_catalog::Blueprint>)> {
    let bare = file.components().count() == 1 && file.extension().is_none();
    // A directory is no component: a bare name that is one (the blueprint's crate, often
    // named like it) still names the registered blueprint.
    match file.to_str() {
        Some(name) if bare && !file.is_file() => match registered(engine, home, name).await {
            Ok((blueprint, record)) => Ok((blueprint, Some(record))),
            Err(e) if file.is_dir() => match e.downcast_ref::<UsageError>() {
                Some(UsageError(m)) if m.starts_with("no blueprint named") => {
                    Err(UsageError(format!(
                        "{m}; {name} here is a directory: if it is the blueprint's crate, build \
                         it with `cairn blueprint build {name}` and pass the .wasm it prints"
                    ))
                    .into())
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        },
        _ => Ok((load(engine, file).await?, None)),
    }
}

/// Loads a blueprint file, turning every way it can be unusable into a usage error.
pub(crate) async fn load(
    engine: &cairn_engine::Engine,
    file: &Path,
) -> anyhow::Result<cairn_engine::Blueprint> {
    if file.is_dir() {
        return Err(UsageError(format!(
            "blueprint {} is a directory; build its component with `cairn blueprint build {}`, \
             then pass the .wasm file it names",
            file.display(),
            file.display()
        ))
        .into());
    }
    if !file.is_file() {
        return Err(UsageError(format!(
            "blueprint {} does not exist (build one with `cairn blueprint build DIR`)",
            file.display()
        ))
        .into());
    }
    engine
        .load_file(file)
        .await
        .map_err(|e| UsageError(format!("blueprint {}: {e}", file.display())).into())
}

/// The capabilities of `--allow`, each one the blueprint declares; `None` for `all`.
fn allowed(
    blueprint: &cairn_engine::Blueprint,
    caps: &[String],
) -> anyhow::Result<Option<Vec<String>>> {
    if let [all] = caps
        && all == "all"
    {
        return Ok(None);
    }
    if caps.iter().any(|c| c == "all") {
        return Err(UsageError(format!(
            "--allow {}: `all` (every capability the blueprint declares) is given alone; give \
             `--allow all`, or name only the capabilities to allow (--allow exec,export)",
            caps.join(",")
        ))
        .into());
    }
    let d = blueprint.description();
    let parsed = crate::run::parse_capabilities(caps, "--allow")?;
    if let Some(extra) = parsed.iter().find(|c| !d.capabilities.contains(c)) {
        return Err(UsageError(format!(
            "--allow {extra}: blueprint {} does not declare it, so it could never use it",
            d.name
        ))
        .into());
    }
    Ok(Some(parsed.iter().map(ToString::to_string).collect()))
}

/// Without `--allow`, a blueprint that replaces one of its name keeps what that one was
/// allowed (what it still declares): adding a new version never widens what may be granted.
fn still_allowed(
    home: &Home,
    blueprint: &cairn_engine::Blueprint,
) -> anyhow::Result<Option<Vec<String>>> {
    let d = blueprint.description();
    let before = crate::catalog::open(home)?.blueprint(&d.name)?;
    Ok(before.and_then(|b| b.allow).map(|allow| {
        allow
            .into_iter()
            .filter(|c| {
                d.capabilities
                    .iter()
                    .any(|declared| declared.to_string() == *c)
            })
            .collect()
    }))
}

/// Refuses `grants` beyond what the operator allowed the registered blueprint `record`.
pub(crate) fn check_allowed(
    record: &cairn_catalog::Blueprint,
    grants: &std::collections::BTreeSet<cairn_engine::Capability>,
) -> anyhow::Result<()> {
    let Some(allow) = &record.allow else {
        return Ok(());
    };
    if let Some(extra) = grants.iter().find(|c| !allow.contains(&c.to_string())) {
        let allowed = if allow.is_empty() {
            "allowing no capability".to_owned()
        } else {
            format!("allowing only {}", allow.join(", "))
        };
        return Err(UsageError(format!(
            "blueprint {} was registered {allowed} (`cairn blueprint add --allow`), not {extra}",
            record.name,
        ))
        .into());
    }
    Ok(())
}

/// How a blueprint being added compares with the registered one of its name.
enum Compared {
    /// None is registered, this very build is, or this one is newer.
    NewOrSame,
    /// The registered one is of a newer version (replaced only with --downgrade): says so.
    Older(String),
    /// The registered one is another build of the same version (build metadata aside, as
    /// `1.2.0+patched`): says so, and whether an operator registered it by hand.
    OtherBuild { said: String, by_hand: bool },
}

/// Compares `blueprint` with the registered blueprint of the same name.
fn compared(home: &Home, blueprint: &cairn_engine::Blueprint) -> anyhow::Result<Compared> {
    let d = blueprint.description();
    let Some(old) = crate::catalog::open(home)?.blueprint(&d.name)? else {
        return Ok(Compared::NewOrSame);
    };
    if old.digest == blueprint.digest() {
        return Ok(Compared::NewOrSame);
    }
    // The engine checked this one's version at load; one registered that does not parse is
    // replaced.
    Ok(
        match cairn_engine::version_order(&d.version, &old.version) {
            Some(std::cmp::Ordering::Less) => Compared::Older(format!(
                "blueprint {} {} is older than the registered {}",
                d.name, d.version, old.version
            )),
            Some(std::cmp::Ordering::Equal) => Compared::OtherBuild {
                said: format!(
                    "blueprint {} {} ({}) is another build of the same version as the registered \
                     {} ({})",
                    d.name,
                    d.version,
                    blueprint.digest(),
                    old.version,
                    old.digest
                ),
                by_hand: old.by_hand,
            },
            _ => Compared::NewOrSame,
        },
    )
}

/// Copies the component into the home under its digest and records it by name, and whether it
/// was added by hand (without `keep_newer`).
fn add(
    home: &Home,
    file: &Path,
    blueprint: &cairn_engine::Blueprint,
    allow: Option<Vec<String>>,
    keep_newer: bool,
    output: Output,
) -> anyhow::Result<()> {
    let d = blueprint.description();
    let dir = home.blueprints();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let kept = home.component(blueprint.digest());
    // One kept already is taken only when it is whole: a damaged one is replaced, which is
    // what "register it again" means.
    let whole = std::fs::read(&kept)
        .is_ok_and(|b| cairn_engine::component_digest(&b) == blueprint.digest());
    if !whole {
        let partial = kept.with_extension("wasm.partial");
        std::fs::copy(file, &partial)
            .and_then(|_| std::fs::rename(&partial, &kept))
            .with_context(|| format!("cannot copy {} to {}", file.display(), kept.display()))?;
    }
    let kept = std::fs::canonicalize(&kept)
        .with_context(|| format!("cannot resolve {}", kept.display()))?;
    let catalog = crate::catalog::open(home)?;
    let replaced = catalog.blueprint(&d.name)?;
    // The very build registered again (by hand to change --allow, or at a restart) stays what
    // it was: a bundled build added again by hand is no hotfix, nor a hotfix added again with
    // --keep-newer a bundled build.
    let by_hand = match &replaced {
        Some(old) if old.digest == blueprint.digest() => old.by_hand,
        _ => !keep_newer,
    };
    let record = cairn_catalog::Blueprint {
        name: d.name.clone(),
        version: d.version.clone(),
        digest: blueprint.digest().to_owned(),
        wasm: kept.display().to_string(),
        allow,
        by_hand,
    };
    catalog.save(&record)?;
    if d.capabilities.contains(&cairn_engine::Capability::Catalog) {
        errln!(
            "cairn: warning: blueprint {} declares `catalog`, which only Cairn's DR blueprint \
             is granted: its calls to the catalog will be refused",
            d.name
        );
    }
    // Policies and bindings that grant what --allow now leaves out would fail at their next
    // run: said now.
    if let Some(allow) = &record.allow {
        let outside = |grants: &[String]| -> Vec<String> {
            grants
                .iter()
                .filter(|g| !allow.contains(g))
                .cloned()
                .collect()
        };
        let policies = catalog.policies().unwrap_or_default();
        let users = policies
            .iter()
            .filter(|p| p.blueprint.as_deref() == Some(d.name.as_str()))
            .map(|p| (format!("policy {}", p.name), outside(&p.grants)))
            .chain(
                crate::binding::bindings(&catalog)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|b| b.blueprint == d.name)
                    .map(|b| (format!("binding {}", b.name), outside(&b.grants))),
            );
        for (user, left_out) in users.filter(|(_, l)| !l.is_empty()) {
            errln!(
                "cairn: warning: {user} grants {}, which --allow no longer allows: its runs of \
                 {} will fail until the two agree",
                crate::listed(&left_out),
                d.name
            );
        }
    }
    match output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "blueprint": record,
                "replaced": replaced,
            }))?
        ),
        Output::Text => {
            outln!(
                "registered {} {} ({})",
                record.name,
                record.version,
                record.digest
            );
            if let Some(allow) = &record.allow {
                let allow = crate::listed(allow);
                outln!("  policies and runs by name may grant only: {allow}");
            }
            if let Some(old) = replaced.filter(|old| old.digest != record.digest) {
                outln!("  replacing {} {} ({})", old.name, old.version, old.digest);
            }
        }
    }
    Ok(())
}

/// The blueprint registered as `name`, checked against the digest it was registered with, and
/// its registration.
pub(crate) async fn registered(
    engine: &cairn_engine::Engine,
    home: &Home,
    name: &str,
) -> anyhow::Result<(cairn_engine::Blueprint, cairn_catalog::Blueprint)> {
    let record = crate::catalog::open(home)?.blueprint(name)?.ok_or_else(|| {
        UsageError(format!(
            "no blueprint named {name:?} is registered; register it with `cairn blueprint add FILE` \
             (`cairn catalog ls blueprint` lists those that are)"
        ))
    })?;
    let wasm = component_file(home, &record).ok_or_else(|| {
        UsageError(format!(
            "blueprint {name:?} is registered, but its component is missing (neither {} nor {} is a \
             file); register it again with `cairn blueprint add FILE`",
            home.component(&record.digest).display(),
            record.wasm
        ))
    })?;
    // Checked before it is compiled: damage that breaks parsing is named as damage too. Read
    // once, for both.
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let digest = cairn_engine::component_digest(&bytes);
    if digest != record.digest {
        return Err(UsageError(format!(
            "the component of blueprint {name:?} at {} has digest {digest}, not the {} it was \
             registered with (damaged, or replaced); register it again with `cairn blueprint add \
             FILE`",
            wasm.display(),
            record.digest
        ))
        .into());
    }
    let blueprint = engine
        .load(&bytes)
        .await
        .map_err(|e| UsageError(format!("blueprint {}: {e}", wasm.display())))?;
    Ok((blueprint, record))
}

/// Where the component of a registration is: in this home under its digest (where `add` keeps
/// it, and where a DR restore on another machine puts it), else where it was registered.
pub(crate) fn component_file(home: &Home, record: &cairn_catalog::Blueprint) -> Option<PathBuf> {
    [home.component(&record.digest), PathBuf::from(&record.wasm)]
        .into_iter()
        .find(|p| p.is_file())
}

#[derive(Serialize)]
struct Inspect<'a> {
    name: &'a str,
    version: &'a str,
    description: &'a str,
    actions: &'a [cairn_engine::ActionSpec],
    parameters: &'a [cairn_engine::ParamSpec],
    capabilities: &'a [cairn_engine::Capability],
    min_runtime: &'a str,
    wit: &'a str,
    digest: &'a str,
}

fn print_inspect(bp: &cairn_engine::Blueprint, output: Output) -> anyhow::Result<()> {
    let d = bp.description();
    let view = Inspect {
        name: &d.name,
        version: &d.version,
        description: &d.description,
        actions: &d.actions,
        parameters: &d.parameters,
        capabilities: &d.capabilities,
        min_runtime: &d.min_runtime,
        wit: bp.wit_version(),
        digest: bp.digest(),
    };
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&view)?),
        Output::Text => {
            // The blueprint's own words: shown, never obeyed, by the terminal.
            let shown = cairn_engine::controls_escaped;
            outln!("{} {}", view.name, shown(view.version));
            if !view.description.is_empty() {
                outln!("  {}", shown(view.description));
            }
            outln!("wit:          cairn:blueprint@{}", view.wit);
            outln!("digest:       {}", view.digest);
            outln!("min runtime:  {}", view.min_runtime);
            let caps: Vec<String> = view.capabilities.iter().map(|c| c.to_string()).collect();
            outln!(
                "capabilities: {}",
                if caps.is_empty() {
                    "(none)".into()
                } else {
                    caps.join(", ")
                }
            );
            outln!("actions:");
            for a in view.actions {
                outln!("  {:<18} {}", a.name, shown(&a.description));
            }
            if !view.parameters.is_empty() {
                outln!("parameters:");
                for p in view.parameters {
                    let mut extra = Vec::new();
                    if p.required {
                        extra.push("required".to_string());
                    }
                    if let Some(d) = &p.default {
                        extra.push(format!("default {}", shown(d)));
                    }
                    if !p.choices.is_empty() {
                        extra.push(format!("one of {}", shown(&p.choices.join("|"))));
                    }
                    match (p.minimum, p.maximum) {
                        (Some(min), Some(max)) => extra.push(format!("{min} to {max}")),
                        (Some(min), None) => extra.push(format!("at least {min}")),
                        (None, Some(max)) => extra.push(format!("at most {max}")),
                        (None, None) => {}
                    }
                    let extra = if extra.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", extra.join(", "))
                    };
                    outln!(
                        "  {:<18} {:<8} {}{}",
                        p.name,
                        p.kind,
                        shown(&p.description),
                        extra
                    );
                }
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct Built {
    wasm: PathBuf,
    name: String,
    version: String,
    digest: String,
}

async fn build(
    dir: &Path,
    debug: bool,
    output: Output,
    home: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(UsageError(format!(
            "{} is not a blueprint crate: it has no Cargo.toml",
            dir.display()
        ))
        .into());
    }
    ensure_target()?;
    let manifest = manifest
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", manifest.display()))?;
    let wasm = cargo_build(&manifest, debug)?;
    // Load what was built: it proves the component is a usable blueprint and warms the cache.
    let home = Home::resolve(home)?;
    let engine = crate::run::engine(&home)?;
    let blueprint = load(&engine, &wasm).await?;
    warn_of(&blueprint);
    let d = blueprint.description();
    let built = Built {
        wasm: wasm.clone(),
        name: d.name.clone(),
        version: d.version.clone(),
        digest: blueprint.digest().to_string(),
    };
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&built)?),
        Output::Text => {
            errln!("built {} {} ({})", built.name, built.version, built.digest);
            outln!("{}", wasm.display());
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// Makes sure the standard library for [`WASM_TARGET`] is installed, installing it with rustup.
fn ensure_target() -> anyhow::Result<()> {
    let sysroot = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run rustc: install Rust from https://rustup.rs")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).is_dir() {
        return Ok(());
    }
    errln!("cairn: installing the {WASM_TARGET} target (rustup target add {WASM_TARGET})");
    let status = std::process::Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => {
            bail!("`rustup target add {WASM_TARGET}` failed ({s}); install the target and retry")
        }
        Err(_) => Err(UsageError(format!(
            "the {WASM_TARGET} target is not installed and rustup is not available: install the \
             target's standard library for your toolchain and retry"
        ))
        .into()),
    }
}

/// Runs cargo and returns the `.wasm` it produced for the crate at `manifest`.
fn cargo_build(manifest: &Path, debug: bool) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--target",
        WASM_TARGET,
        "--message-format=json-render-diagnostics",
    ])
    .arg("--manifest-path")
    .arg(manifest)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if !debug {
        cmd.arg("--release");
    }
    let out = cmd.output().context("cannot run cargo")?;
    if !out.status.success() {
        // The blueprint's source, not the runtime: fix what cargo printed above.
        return Err(UsageError(format!(
            "cargo build of {} failed ({}); fix what cargo reported above",
            manifest.display(),
            out.status
        ))
        .into());
    }
    let mut wasm = None;
    for line in out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact"
            || msg["manifest_path"].as_str() != manifest.to_str()
        {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            wasm = files
                .iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from)
                .or(wasm);
        }
    }
    wasm.ok_or_else(|| {
        UsageError(format!(
            "cargo built {} but produced no .wasm: a blueprint crate needs `[lib] crate-type = [\"cdylib\"]`",
            manifest.display()
        ))
        .into()
    })
}
