//! The instance's state directory.

use std::path::PathBuf;

use anyhow::Context as _;

/// The state directory of one Cairn instance and the places inside it.
#[derive(Debug, Clone)]
pub(crate) struct Home {
    root: PathBuf,
}

impl Home {
    /// `--home`/`CAIRN_HOME`, else `$XDG_DATA_HOME/cairn`, else `~/.local/share/cairn`; created
    /// if missing.
    pub(crate) fn resolve(explicit: Option<PathBuf>) -> anyhow::Result<Self> {
        let root = match explicit {
            Some(dir) => dir,
            None => default_home().context(
                "no state directory: set --home DIR or CAIRN_HOME (neither XDG_DATA_HOME nor HOME is set)",
            )?,
        };
        // Its owner's alone (not the directories it makes above it): it holds the default
        // repository's key and the catalog.
        let cannot = || format!("cannot create the state directory {}", root.display());
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(cannot)?;
        }
        let mut dir = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        match dir.create(&root) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && root.is_dir() => {}
            made => made.with_context(cannot)?,
        }
        Ok(Self { root })
    }

    /// The home `explicit` names (or the default one) when it exists already; `None` when it
    /// does not, for a command that works without one and must not make it.
    pub(crate) fn existing(explicit: Option<PathBuf>) -> Option<Self> {
        let root = explicit.or_else(default_home)?;
        root.is_dir().then_some(Self { root })
    }

    /// Compiled components, keyed by digest and engine.
    pub(crate) fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// The append-only audit log (JSON lines).
    pub(crate) fn audit_log(&self) -> PathBuf {
        self.root.join("audit.jsonl")
    }

    /// State of the local target: persisted replica counts and volume snapshots.
    pub(crate) fn local_cluster(&self) -> PathBuf {
        self.root.join("cluster")
    }

    /// The default export repository.
    pub(crate) fn repository(&self) -> PathBuf {
        self.root.join("repository")
    }

    /// The catalog: restore points, actions, policies, profiles and the rest.
    pub(crate) fn catalog(&self) -> PathBuf {
        self.root.join("catalog.redb")
    }

    /// Touched whenever the catalog is opened with every page verified.
    pub(crate) fn catalog_verified(&self) -> PathBuf {
        self.root.join("catalog.verified")
    }

    /// Cairn's own DR: its settings and local catalog snapshots.
    pub(crate) fn dr(&self) -> PathBuf {
        self.root.join("dr")
    }

    /// The DR location's unwrapped key, cached so DR runs skip the passphrase derivation
    /// (readable by the owner only; `cairn dr enable` drops it).
    pub(crate) fn dr_key_cache(&self) -> PathBuf {
        self.dr().join("location.key")
    }

    /// Registered blueprints' components, named by digest.
    pub(crate) fn blueprints(&self) -> PathBuf {
        self.root.join("blueprints")
    }

    /// Where a registered component of `digest` (`sha256:<hex>`) is kept.
    pub(crate) fn component(&self, digest: &str) -> PathBuf {
        self.blueprints()
            .join(format!("{}.wasm", digest.replace(':', "-")))
    }

    /// Held by the `cairn serve` of this instance, so that only one runs its policies.
    pub(crate) fn serve_lock(&self) -> PathBuf {
        self.root.join("serve.lock")
    }

    /// The state directory itself.
    pub(crate) fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The key file of the default export repository (created with it; keep it safe).
    pub(crate) fn repository_key(&self) -> PathBuf {
        self.root.join("repository.key")
    }
}

fn default_home() -> Option<PathBuf> {
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(data).join("cairn"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".local/share/cairn"))
}
