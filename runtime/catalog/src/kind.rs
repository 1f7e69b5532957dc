//! The kinds of record the catalog holds, and what disaster recovery does with each.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A kind of catalog record. Each kind has a stable kebab-case name (its [`Display`] and
/// [`FromStr`] form, and its name on disk and in DR deltas) and a [`DrClass`].
///
/// [`Display`]: fmt::Display
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A run of a blueprint action and its history (phases, status, error).
    Action,
    /// A restore point whose data is in the cluster (volume snapshots).
    LocalRestorePoint,
    /// A restore point whose data is in an export repository.
    ExportedRestorePoint,
    /// A backup policy (frequency, retention, selector, export).
    Policy,
    /// A reusable policy template.
    PolicyPreset,
    /// A location profile: where a repository is and how to reach it.
    Profile,
    /// A registered blueprint: name, version, digest, where its component is.
    Blueprint,
    /// Binds a blueprint to workloads by selector.
    BlueprintBinding,
    /// A set of transforms applied to resources on restore.
    TransformSet,
    /// This instance's record as the primary of a multi-cluster group.
    MultiClusterPrimary,
    /// This instance's record as a secondary of a multi-cluster group.
    MultiClusterSecondary,
    /// How volumes of a storage class are secured (encryption, ownership).
    StorageSecurityContext,
    /// Binds a storage security context to storage classes or namespaces.
    StorageSecurityContextBinding,
    /// A basic user policy: what a user or group may do.
    BasicUserPolicy,
    /// A generated report.
    Report,
    /// A pod spec override for the pods that run actions.
    ActionPodSpec,
    /// Where and how the audit log is kept.
    AuditConfig,
}

/// How a kind fares in Cairn's own disaster recovery: the rows of the protection matrix.
///
/// | class | quick modes (local, exported, no snapshot) | legacy |
/// | --- | --- | --- |
/// | [`WithCatalogSnapshot`](Self::WithCatalogSnapshot) | only where a catalog snapshot (local or exported) is restored | yes |
/// | [`Always`](Self::Always) | yes | yes |
/// | [`QuickModesOnly`](Self::QuickModesOnly) | yes | no |
/// | [`Never`](Self::Never) | no | no |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DrClass {
    /// Actions and local restore points: in the quick modes they come back only from a catalog
    /// snapshot, because they are too many and change too often for the minimal export; the
    /// legacy full export carries them.
    WithCatalogSnapshot,
    /// Exported restore points, policies, profiles and blueprints: every mode protects them.
    Always,
    /// Kinds newer than the legacy format: the quick modes protect them, legacy does not.
    QuickModesOnly,
    /// Derived or instance-local state that a recovered instance rebuilds or configures anew.
    Never,
}

impl DrClass {
    /// Whether a recovery in `mode` brings this class back; `snapshot_restored` says whether a
    /// catalog snapshot (local or exported) is part of that recovery.
    pub fn is_recovered(self, mode: DrMode, snapshot_restored: bool) -> bool {
        match (self, mode) {
            (Self::Never, _) => false,
            (Self::Always, _) => true,
            (Self::WithCatalogSnapshot, DrMode::Legacy) => true,
            (Self::WithCatalogSnapshot, _) => snapshot_restored,
            (Self::QuickModesOnly, DrMode::Legacy) => false,
            (Self::QuickModesOnly, _) => true,
        }
    }

    /// The stable kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WithCatalogSnapshot => "with-catalog-snapshot",
            Self::Always => "always",
            Self::QuickModesOnly => "quick-modes-only",
            Self::Never => "never",
        }
    }
}

impl fmt::Display for DrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode of Cairn's disaster recovery. The DR policy picks one; the catalog uses it to decide
/// which kinds an export carries (see [`DrClass`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DrMode {
    /// Take a local catalog snapshot and export the minimal catalog data incrementally.
    #[default]
    LocalSnapshot,
    /// As [`LocalSnapshot`](Self::LocalSnapshot), and export the snapshot's data too.
    ExportedSnapshot,
    /// Export the minimal catalog data incrementally, and nothing else.
    NoSnapshot,
    /// Deprecated: export a full copy of the catalog each run.
    Legacy,
}

impl DrMode {
    /// Every mode, in the order the CLI lists them.
    pub const ALL: [DrMode; 4] = [
        DrMode::LocalSnapshot,
        DrMode::ExportedSnapshot,
        DrMode::NoSnapshot,
        DrMode::Legacy,
    ];

    /// The stable kebab-case name (`local-snapshot`, `exported-snapshot`, `no-snapshot`,
    /// `legacy`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LocalSnapshot => "local-snapshot",
            Self::ExportedSnapshot => "exported-snapshot",
            Self::NoSnapshot => "no-snapshot",
            Self::Legacy => "legacy",
        }
    }

    /// Whether a run of this mode takes a catalog snapshot.
    pub fn takes_snapshot(self) -> bool {
        matches!(self, Self::LocalSnapshot | Self::ExportedSnapshot)
    }

    /// The kinds this mode's export carries. For the quick modes this is the minimal catalog
    /// data ([`DrClass::Always`] and [`DrClass::QuickModesOnly`]); the snapshot carries the
    /// rest. For legacy it is what the full export carries ([`DrClass::WithCatalogSnapshot`]
    /// and [`DrClass::Always`]).
    pub fn exported_kinds(self) -> KindSet {
        match self {
            Self::Legacy => KindSet::of_classes(&[DrClass::WithCatalogSnapshot, DrClass::Always]),
            _ => KindSet::of_classes(&[DrClass::Always, DrClass::QuickModesOnly]),
        }
    }

    /// The kinds a recovery in this mode brings back.
    pub fn recovered_kinds(self, snapshot_restored: bool) -> KindSet {
        Kind::ALL
            .into_iter()
            .filter(|k| k.dr_class().is_recovered(self, snapshot_restored))
            .collect()
    }
}

impl fmt::Display for DrMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DrMode {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ParseNameError {
                what: "DR mode",
                name: s.to_owned(),
                expected: Self::ALL.iter().map(|m| m.as_str()).collect(),
            })
    }
}

/// Per kind: its name (stable: it is the on-disk table name and the name in DR deltas) and DR
/// class. One row per kind, in declaration order, so `Kind::index` can index it.
const KINDS: [(Kind, &str, DrClass); Kind::COUNT] = [
    (Kind::Action, "action", DrClass::WithCatalogSnapshot),
    (
        Kind::LocalRestorePoint,
        "local-restore-point",
        DrClass::WithCatalogSnapshot,
    ),
    (
        Kind::ExportedRestorePoint,
        "exported-restore-point",
        DrClass::Always,
    ),
    (Kind::Policy, "policy", DrClass::Always),
    (Kind::PolicyPreset, "policy-preset", DrClass::QuickModesOnly),
    (Kind::Profile, "profile", DrClass::Always),
    (Kind::Blueprint, "blueprint", DrClass::Always),
    (
        Kind::BlueprintBinding,
        "blueprint-binding",
        DrClass::QuickModesOnly,
    ),
    (Kind::TransformSet, "transform-set", DrClass::QuickModesOnly),
    (
        Kind::MultiClusterPrimary,
        "multi-cluster-primary",
        DrClass::QuickModesOnly,
    ),
    (
        Kind::MultiClusterSecondary,
        "multi-cluster-secondary",
        DrClass::QuickModesOnly,
    ),
    (
        Kind::StorageSecurityContext,
        "storage-security-context",
        DrClass::QuickModesOnly,
    ),
    (
        Kind::StorageSecurityContextBinding,
        "storage-security-context-binding",
        DrClass::QuickModesOnly,
    ),
    (
        Kind::BasicUserPolicy,
        "basic-user-policy",
        DrClass::QuickModesOnly,
    ),
    (Kind::Report, "report", DrClass::Never),
    (Kind::ActionPodSpec, "action-pod-spec", DrClass::Never),
    (Kind::AuditConfig, "audit-config", DrClass::Never),
];

impl Kind {
    /// How many kinds there are.
    pub const COUNT: usize = 17;

    /// Every kind, in a stable order (the order `ls` lists them in).
    pub const ALL: [Kind; Kind::COUNT] = [
        Kind::Action,
        Kind::LocalRestorePoint,
        Kind::ExportedRestorePoint,
        Kind::Policy,
        Kind::PolicyPreset,
        Kind::Profile,
        Kind::Blueprint,
        Kind::BlueprintBinding,
        Kind::TransformSet,
        Kind::MultiClusterPrimary,
        Kind::MultiClusterSecondary,
        Kind::StorageSecurityContext,
        Kind::StorageSecurityContextBinding,
        Kind::BasicUserPolicy,
        Kind::Report,
        Kind::ActionPodSpec,
        Kind::AuditConfig,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The stable kebab-case name, e.g. `exported-restore-point`.
    pub fn as_str(self) -> &'static str {
        KINDS[self.index()].1
    }

    /// Which row of the DR protection matrix this kind is on.
    pub fn dr_class(self) -> DrClass {
        KINDS[self.index()].2
    }

    /// The kind with this exact name.
    pub fn from_name(name: &str) -> Option<Kind> {
        KINDS.iter().find(|row| row.1 == name).map(|row| row.0)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::from_name(s).ok_or_else(|| ParseNameError {
            what: "catalog kind",
            name: s.to_owned(),
            expected: Kind::ALL.iter().map(|k| k.as_str()).collect(),
        })
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A name that is not one of the known kinds or modes; lists the names that are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}`; expected one of: {}", expected.join(", "))]
pub struct ParseNameError {
    what: &'static str,
    name: String,
    expected: Vec<&'static str>,
}

/// A set of kinds: what an export carries or a recovery brings back.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KindSet(u32);

impl KindSet {
    /// No kind.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Every kind.
    pub fn all() -> Self {
        Kind::ALL.into_iter().collect()
    }

    /// The kinds of the given DR classes.
    pub fn of_classes(classes: &[DrClass]) -> Self {
        Kind::ALL
            .into_iter()
            .filter(|k| classes.contains(&k.dr_class()))
            .collect()
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: Kind) -> bool {
        self.0 & (1 << kind.index()) != 0
    }

    /// Adds `kind`.
    pub fn insert(&mut self, kind: Kind) {
        self.0 |= 1 << kind.index();
    }

    /// The kinds in both sets.
    #[must_use]
    pub fn union(self, other: KindSet) -> KindSet {
        Self(self.0 | other.0)
    }

    /// Whether the set has no kind.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds in the set, in [`Kind::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

impl FromIterator<Kind> for KindSet {
    fn from_iter<I: IntoIterator<Item = Kind>>(iter: I) -> Self {
        let mut set = KindSet::empty();
        for kind in iter {
            set.insert(kind);
        }
        set
    }
}

impl fmt::Debug for KindSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for KindSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for KindSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Vec::<Kind>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_match_declaration_order() {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
            assert_eq!(KINDS[i].0, kind);
        }
    }
}
