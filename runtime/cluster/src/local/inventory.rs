//! Parsing and validating the inventory file (the format is documented in `local.rs`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result, WorkloadKind, is_dns_label, is_env_name};

/// The parsed inventory file: namespaces, their workloads and their objects.
///
/// The format is documented in the module docs of `runtime/cluster/src/local.rs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub(crate) namespaces: BTreeMap<String, NamespaceSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NamespaceSpec {
    #[serde(default)]
    pub(crate) objects: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub(crate) workloads: BTreeMap<String, WorkloadSpec>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KindSpec {
    #[default]
    Deployment,
    Statefulset,
    Other,
}

impl From<KindSpec> for WorkloadKind {
    fn from(kind: KindSpec) -> Self {
        match kind {
            KindSpec::Deployment => WorkloadKind::Deployment,
            KindSpec::Statefulset => WorkloadKind::StatefulSet,
            KindSpec::Other => WorkloadKind::Other,
        }
    }
}

fn default_replicas() -> u32 {
    1
}

fn default_containers() -> Vec<String> {
    vec!["main".to_owned()]
}

fn default_workdir() -> PathBuf {
    PathBuf::from(".")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkloadSpec {
    #[serde(default)]
    pub(crate) kind: KindSpec,
    #[serde(default = "default_replicas")]
    pub(crate) replicas: u32,
    #[serde(default = "default_containers")]
    pub(crate) containers: Vec<String>,
    #[serde(default = "default_workdir")]
    pub(crate) workdir: PathBuf,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    /// The variables a request may set beyond [`PASSED_ENV`]: names, or prefixes ending in `*`.
    #[serde(default)]
    pub(crate) pass_env: Vec<String>,
    #[serde(default)]
    pub(crate) start: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) stop: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) ready: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) volumes: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
}

/// The variables every request may set for a local command: the database clients' own,
/// which name servers, users and passwords and run nothing. Commands run as Cairn's user, so
/// the rest stays out unless the inventory's `pass_env` lets it in: an interpreter's hooks
/// (`PERL5OPT`, `BASH_ENV`, `PYTHONSTARTUP`...) would run a blueprint's code through any
/// allowed program written in that language (Debian's `pg_dump` is a Perl script).
pub(crate) const PASSED_ENV: &[&str] = &[
    "PG*",
    "MYSQL_*",
    "MARIADB_*",
    "REDISCLI_*",
    "ETCDCTL_*",
    "TZ",
    "LANG",
    "LC_*",
];

/// Whether `name` matches one of `patterns` (names, or prefixes ending in `*`).
pub(crate) fn env_matches(name: &str, patterns: &[impl AsRef<str>]) -> bool {
    patterns.iter().any(|p| {
        let p = p.as_ref();
        p.strip_suffix('*')
            .map_or(name == p, |prefix| name.starts_with(prefix))
    })
}

/// The most replicas a local workload may have: every replica is a pod name in every listing.
pub(crate) const MAX_REPLICAS: u32 = 1024;

/// Reduces a volume path to plain components (`./a/b` → `a/b`); `None` for an absolute path,
/// a `..`, or nothing at all.
pub(crate) fn confined_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

impl Inventory {
    /// Parses and checks inventory text; `origin` names the file in errors. Paths are not
    /// checked here (see [`LocalCluster::from_inventory`](crate::LocalCluster::from_inventory)).
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let fail = |reason: String| Error::Inventory {
            path: origin.to_owned(),
            reason,
        };
        let inventory: Inventory = serde_norway::from_str(text).map_err(|e| {
            let e = e.to_string();
            // An unknown field's message lists that level's fields already.
            if e.contains("expected one of") {
                return fail(e);
            }
            fail(format!(
                "{e}\n(valid fields: top level `namespaces`; a namespace: `objects`, `workloads`; \
                 a workload: `kind`, `replicas`, `containers`, `workdir`, `env`, `allow`, \
                 `start`, `stop`, `ready`, `volumes`, `labels`)"
            ))
        })?;
        inventory.check().map_err(fail)?;
        Ok(inventory)
    }

    /// Reads and parses an inventory file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Inventory {
            path: path.display().to_string(),
            reason: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The namespaces it defines.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.namespaces.keys().map(String::as_str)
    }

    /// The workloads a namespace defines (none for an unknown namespace).
    pub fn workloads(&self, namespace: &str) -> impl Iterator<Item = &str> {
        self.namespaces
            .get(namespace)
            .into_iter()
            .flat_map(|ns| ns.workloads.keys().map(String::as_str))
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.namespaces.is_empty() {
            return Err(
                "`namespaces` is empty: define at least one namespace with a workload".into(),
            );
        }
        for (ns_name, ns) in &self.namespaces {
            if !is_dns_label(ns_name) {
                return Err(format!(
                    "namespace {ns_name:?}: a name must be a DNS label (lowercase letters, digits \
                     and '-', at most 63 characters)"
                ));
            }
            for (kind, objects) in &ns.objects {
                if kind.trim().is_empty() {
                    return Err(format!(
                        "namespaces.{ns_name}.objects: an object kind is empty"
                    ));
                }
                if matches!(kind.to_ascii_lowercase().as_str(), "workload" | "workloads") {
                    return Err(format!(
                        "namespaces.{ns_name}.objects.{kind}: the kind `{kind}` is reserved (it lists \
                         the workloads)"
                    ));
                }
                if objects.keys().any(|name| name.trim().is_empty()) {
                    return Err(format!(
                        "namespaces.{ns_name}.objects.{kind}: an object name is empty"
                    ));
                }
            }
            for (name, workload) in &ns.workloads {
                let at = format!("namespaces.{ns_name}.workloads.{name}");
                check_workload(name, workload).map_err(|e| format!("{at}: {e}"))?;
            }
        }
        Ok(())
    }
}

fn check_workload(name: &str, w: &WorkloadSpec) -> std::result::Result<(), String> {
    if !is_dns_label(name) {
        return Err(format!(
            "workload name {name:?} must be a DNS label (lowercase letters, digits and '-', at \
             most 63 characters)"
        ));
    }
    if w.replicas > MAX_REPLICAS {
        return Err(format!(
            "`replicas` is {}, more than the local limit of {MAX_REPLICAS}",
            w.replicas
        ));
    }
    if w.containers.is_empty() {
        return Err("`containers` is empty: name at least one (the default is [main])".into());
    }
    for container in &w.containers {
        if !is_dns_label(container) {
            return Err(format!("container name {container:?} must be a DNS label"));
        }
    }
    for key in w.env.keys() {
        if !is_env_name(key) {
            return Err(format!(
                "`env`: {key:?} is not a valid environment variable name"
            ));
        }
    }
    for pattern in &w.pass_env {
        let name = pattern.strip_suffix('*').unwrap_or(pattern);
        if !is_env_name(name) {
            return Err(format!(
                "`pass_env`: {pattern:?} is neither a variable's name nor a prefix ending in `*`"
            ));
        }
        if !crate::env_allowed(name) {
            return Err(format!(
                "`pass_env`: {pattern:?} names variables no exec may set (PATH, LD_*, DYLD_*, \
                 CAIRN_*)"
            ));
        }
    }
    for program in &w.allow {
        let ok = if program.contains('/') {
            Path::new(program).is_absolute()
        } else {
            !program.is_empty()
        };
        if !ok {
            return Err(format!(
                "`allow`: {program:?} must be a bare program name (looked up on PATH) or an absolute path"
            ));
        }
    }
    for (field, argv) in [("start", &w.start), ("stop", &w.stop), ("ready", &w.ready)] {
        if argv
            .as_ref()
            .is_some_and(|argv| argv.first().is_none_or(String::is_empty))
        {
            return Err(format!("`{field}` must name a program: [program, args...]"));
        }
    }
    for (volume, path) in &w.volumes {
        if !is_dns_label(volume) {
            return Err(format!("volume name {volume:?} must be a DNS label"));
        }
        if confined_relative(path).is_none() {
            return Err(format!(
                "volume {volume}: path {:?} must be relative to the inventory's directory and \
                 stay inside it (no absolute paths, no `..`)",
                path.display()
            ));
        }
    }
    Ok(())
}
