//! Capabilities: what a blueprint may ask the host to do.

use std::fmt;
use std::str::FromStr;

use crate::bindings::types::Capability as Wit;
use crate::error::Error;

/// What a blueprint may ask the host to do. A blueprint declares the set it needs in
/// `describe()`; the operator grants a set per run; every host call checks it. Logging and
/// progress are always allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Capability {
    /// Run commands in the target workload's containers.
    Exec,
    /// Read workloads and other objects in the target namespace.
    Workloads,
    /// Change a workload's replica count.
    Scale,
    /// Snapshot, restore and delete the target workload's volumes.
    Volumes,
    /// Write export streams (and delete exports).
    Export,
    /// Read export streams back.
    Import,
    /// Read secret values granted to the run.
    Secrets,
    /// Read, snapshot and export Cairn's own catalog, and apply DR artifacts to it. The
    /// runtime grants it to its DR blueprint only.
    Catalog,
}

impl Capability {
    /// Every capability, in declaration order.
    pub const ALL: [Capability; 8] = [
        Capability::Exec,
        Capability::Workloads,
        Capability::Scale,
        Capability::Volumes,
        Capability::Export,
        Capability::Import,
        Capability::Secrets,
        Capability::Catalog,
    ];

    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Exec => "exec",
            Capability::Workloads => "workloads",
            Capability::Scale => "scale",
            Capability::Volumes => "volumes",
            Capability::Export => "export",
            Capability::Import => "import",
            Capability::Secrets => "secrets",
            Capability::Catalog => "catalog",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| Error::UnknownCapability(s.to_string()))
    }
}

impl serde::Serialize for Capability {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl From<Wit> for Capability {
    fn from(c: Wit) -> Self {
        match c {
            Wit::Exec => Capability::Exec,
            Wit::Workloads => Capability::Workloads,
            Wit::Scale => Capability::Scale,
            Wit::Volumes => Capability::Volumes,
            Wit::Export => Capability::Export,
            Wit::Import => Capability::Import,
            Wit::Secrets => Capability::Secrets,
            Wit::Catalog => Capability::Catalog,
        }
    }
}
