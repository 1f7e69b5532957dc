use std::fmt;

use crate::wit::bindings::exports::cairn::blueprint::guest as wit;
use crate::wit::types;
use crate::{Error, Result};

/// A named record of small key/values that an action produces and later actions consume:
/// where an export went, a snapshot id, an LSN. Bulk data never lives here.
///
/// An artifact from [`Export::finish`](crate::data::Export::finish) carries the export's
/// *reference* (where the data is, written by the host), apart from the values the blueprint
/// adds: [`value`](Self::value) never changes the reference, and the host refuses a phase that
/// returns an artifact with a value named like one of its reference's keys.
///
/// ```
/// use cairn_sdk::Artifact;
///
/// let a = Artifact::new("dump").value("lsn", "0/16B3748").value("bytes", 4096);
/// assert_eq!(a.get("bytes"), Some("4096"));
/// assert!(a.reference().next().is_none());
/// assert!(a.require("missing").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    name: String,
    values: Vec<(String, String)>,
    reference: Vec<(String, String)>,
}

impl Artifact {
    /// An artifact named `name` with no values.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            values: Vec::new(),
            reference: Vec::new(),
        }
    }

    /// Sets `key` to `value`, replacing an earlier value of `key`. Never the export reference:
    /// a key of the reference is refused by the host when the phase returns.
    #[must_use]
    pub fn value(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        set(&mut self.values, key.into(), value.to_string());
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of `key`: from the export reference, else from the blueprint's values.
    pub fn get(&self, key: &str) -> Option<&str> {
        get(&self.reference, key).or_else(|| get(&self.values, key))
    }

    /// The export reference the host wrote at [`finish`](crate::data::Export::finish): where
    /// the data is. Empty for an artifact the blueprint made itself.
    pub fn reference(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.reference.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of `key`, or [`Error::NotFound`] naming the artifact and the key.
    pub fn require(&self, key: &str) -> Result<&str> {
        self.get(key).ok_or_else(|| {
            Error::not_found(format!("artifact `{}` has no value `{key}`", self.name))
        })
    }

    /// Every key and value, the export reference's first, then the blueprint's in insertion
    /// order: the artifact as a restore point stores it.
    pub fn values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.reference
            .iter()
            .chain(&self.values)
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl Artifact {
    /// The blueprint's own values, without the export reference.
    pub(crate) fn own_values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl From<types::Artifact> for Artifact {
    fn from(a: types::Artifact) -> Self {
        Self {
            name: a.name,
            values: a.values,
            reference: a.reference,
        }
    }
}

impl From<Artifact> for types::Artifact {
    fn from(a: Artifact) -> Self {
        Self {
            name: a.name,
            values: a.values,
            reference: a.reference,
        }
    }
}

/// Records `value` under `name` among this phase's output values at once, on the host side:
/// unlike a value the phase returns, it survives the phase failing, trapping or running past
/// its deadline, and the posthook sees it with [`Context::value`](crate::Context::value).
/// Record what the posthook needs to undo a change *before* making the change.
///
/// A value the phase returns under the same name replaces it. Always allowed; fails with
/// [`Error::Invalid`] when `name` is empty or the checkpoints pass the host's output limit.
///
/// ```no_run
/// let replicas = 3;
/// cairn_sdk::checkpoint("replicas", replicas)?;
/// # Ok::<(), cairn_sdk::Error>(())
/// ```
pub fn checkpoint(name: &str, value: impl fmt::Display) -> Result<()> {
    let value = value.to_string();
    crate::wit::faked(
        "log.checkpoint",
        || format!("{name}={value}"),
        || crate::wit::bindings::cairn::blueprint::log::checkpoint(name, &value),
        |f| f.checkpoint(name, &value),
    )
}

impl From<&Artifact> for types::Artifact {
    fn from(a: &Artifact) -> Self {
        a.clone().into()
    }
}

/// What an action produced: artifacts and plain values. Later phases of the same run see them
/// through [`Context`](crate::Context), and a backup's outputs become its restore point.
///
/// ```
/// use cairn_sdk::{Artifact, Outputs};
///
/// let out = Outputs::new()
///     .artifact(Artifact::new("dump").value("bytes", 4096))
///     .value("replicas", 3);
/// assert_eq!(out.get("replicas"), Some("3"));
/// assert_eq!(out.get_artifact("dump").and_then(|a| a.get("bytes")), Some("4096"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    artifacts: Vec<Artifact>,
    values: Vec<(String, String)>,
}

impl Outputs {
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an artifact, replacing an earlier one of the same name.
    #[must_use]
    pub fn artifact(mut self, artifact: Artifact) -> Self {
        match self.artifacts.iter_mut().find(|a| a.name == artifact.name) {
            Some(slot) => *slot = artifact,
            None => self.artifacts.push(artifact),
        }
        self
    }

    /// Sets the value `key`, replacing an earlier value of `key`.
    #[must_use]
    pub fn value(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        set(&mut self.values, key.into(), value.to_string());
        self
    }

    /// The artifacts, in insertion order.
    pub fn artifacts(&self) -> &[Artifact] {
        &self.artifacts
    }

    /// The artifact named `name`.
    pub fn get_artifact(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.name == name)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        get(&self.values, key)
    }

    /// Every value, in insertion order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are neither artifacts nor values.
    pub fn is_empty(&self) -> bool {
        self.artifacts.is_empty() && self.values.is_empty()
    }
}

impl From<wit::Outputs> for Outputs {
    fn from(o: wit::Outputs) -> Self {
        Self {
            artifacts: o.artifacts.into_iter().map(Into::into).collect(),
            values: o.values,
        }
    }
}

impl From<Outputs> for wit::Outputs {
    fn from(o: Outputs) -> Self {
        Self {
            artifacts: o.artifacts.into_iter().map(Into::into).collect(),
            values: o.values,
        }
    }
}

fn set(values: &mut Vec<(String, String)>, key: String, value: String) {
    match values.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => values.push((key, value)),
    }
}

fn get<'a>(values: &'a [(String, String)], key: &str) -> Option<&'a str> {
    values
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_values_replace_by_key_and_keep_order() {
        let a = Artifact::new("dump")
            .value("a", 1)
            .value("b", "two")
            .value("a", 3);
        assert_eq!(a.values().collect::<Vec<_>>(), [("a", "3"), ("b", "two")]);
        assert_eq!(a.require("b"), Ok("two"));
    }

    #[test]
    fn the_reference_stays_apart_from_the_values() {
        let from_host = types::Artifact {
            name: "dump".into(),
            values: vec![],
            reference: vec![
                ("kind".into(), "repository".into()),
                ("snapshot".into(), "s1".into()),
            ],
        };
        let a = Artifact::from(from_host).value("format", "custom");
        assert_eq!(a.get("snapshot"), Some("s1"));
        assert_eq!(a.get("format"), Some("custom"));
        assert_eq!(a.reference().count(), 2);
        assert_eq!(
            a.values().collect::<Vec<_>>(),
            [
                ("kind", "repository"),
                ("snapshot", "s1"),
                ("format", "custom")
            ]
        );
        let back = types::Artifact::from(a);
        assert_eq!(back.values, [("format".to_owned(), "custom".to_owned())]);
        assert_eq!(back.reference.len(), 2);
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn checkpoint_needs_the_host() {
        assert!(
            matches!(checkpoint("replicas", 3), Err(Error::Failed(m)) if m.contains("log.checkpoint"))
        );
    }

    #[test]
    fn missing_artifact_key_names_both() {
        assert_eq!(
            Artifact::new("dump").require("lsn"),
            Err(Error::not_found("artifact `dump` has no value `lsn`"))
        );
    }

    #[test]
    fn outputs_replace_artifacts_by_name() {
        let out = Outputs::new()
            .artifact(Artifact::new("a").value("v", 1))
            .artifact(Artifact::new("b"))
            .artifact(Artifact::new("a").value("v", 2));
        assert_eq!(out.artifacts().len(), 2);
        assert_eq!(out.get_artifact("a").and_then(|a| a.get("v")), Some("2"));
        assert!(!out.is_empty());
        assert!(Outputs::new().is_empty());
    }

    #[test]
    fn outputs_round_trip_through_wit() {
        let out = Outputs::new()
            .artifact(Artifact::new("dump").value("bytes", 10))
            .value("lsn", "0/1");
        let wit: wit::Outputs = out.clone().into();
        assert_eq!(wit.values, [("lsn".to_owned(), "0/1".to_owned())]);
        assert_eq!(wit.artifacts[0].name, "dump");
        assert_eq!(Outputs::from(wit), out);
    }
}
