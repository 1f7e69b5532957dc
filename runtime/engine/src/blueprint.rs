//! A loaded blueprint and what it says about itself.

use std::fmt;
use std::sync::Arc;

use crate::bindings::{self, guest};
use crate::capability::Capability;
use crate::state::HostState;

/// An action a blueprint can run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ActionSpec {
    /// Its name (`backup`, `restore`, a custom name).
    pub name: String,
    /// What it does.
    pub description: String,
}

/// The type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ParamKind {
    /// Any string.
    Text,
    /// A signed 64-bit integer.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A 64-bit float.
    Float,
}

impl fmt::Display for ParamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParamKind::Text => "text",
            ParamKind::Integer => "integer",
            ParamKind::Boolean => "boolean",
            ParamKind::Float => "float",
        })
    }
}

/// A parameter a blueprint accepts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ParamSpec {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: ParamKind,
    /// What it means.
    pub description: String,
    /// Whether a run must give it (unless it has a default).
    pub required: bool,
    /// Its default, as a user would write it.
    pub default: Option<String>,
    /// When not empty, the only values accepted.
    pub choices: Vec<String>,
    /// For an integer: the smallest value accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum: Option<i64>,
    /// For an integer: the largest value accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum: Option<i64>,
}

impl ParamSpec {
    /// The parameter as the contract's rules see it (`cairn-contract`, which the SDK's fake
    /// host applies too).
    pub(crate) fn rule(&self) -> cairn_contract::ParamRule<'_> {
        cairn_contract::ParamRule {
            name: &self.name,
            kind: self.kind.into(),
            choices: &self.choices,
            minimum: self.minimum,
            maximum: self.maximum,
            default: self.default.as_deref(),
        }
    }

    /// What is wrong with the spec itself, if anything: bounds on a kind other than an
    /// integer, a minimum above the maximum, a choice or a default it refuses.
    pub(crate) fn problem(&self) -> Option<String> {
        self.rule().problem()
    }
}

impl From<ParamKind> for cairn_contract::Kind {
    fn from(k: ParamKind) -> Self {
        match k {
            ParamKind::Text => Self::Text,
            ParamKind::Integer => Self::Integer,
            ParamKind::Boolean => Self::Boolean,
            ParamKind::Float => Self::Float,
        }
    }
}

// The largest description a blueprint may give of itself (as JSON); the SDK's fake host
// applies it too.
#[cfg(test)]
use cairn_contract::MAX_DESCRIPTION_BYTES;

/// What a blueprint is and needs, from its `describe()`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Description {
    /// The blueprint's name.
    pub name: String,
    /// Its own version.
    pub version: String,
    /// What it is for.
    pub description: String,
    /// Its actions.
    pub actions: Vec<ActionSpec>,
    /// Its parameters.
    pub parameters: Vec<ParamSpec>,
    /// Every capability any of its actions may use.
    pub capabilities: Vec<Capability>,
    /// The oldest runtime it runs on.
    pub min_runtime: String,
}

impl Description {
    /// What is wrong with the description, if anything: a parameter spec's problem, or an
    /// action or parameter named twice (a run could not tell which is meant).
    pub(crate) fn problem(&self) -> Option<String> {
        // It is kept, listed and printed whole: a sentence or two an action and a parameter.
        let size = serde_json::to_vec(self).map_or(0, |v| v.len());
        if let Some(problem) = cairn_contract::description_size_problem(size) {
            return Some(problem);
        }
        cairn_contract::description_problem(
            &self.version,
            &self.min_runtime,
            self.actions.iter().map(|a| a.name.as_str()),
            self.parameters.iter().map(|p| p.name.as_str()),
        )
        .or_else(|| self.parameters.iter().find_map(ParamSpec::problem))
    }

    /// Whether the blueprint describes an action named `name`.
    pub fn has_action(&self, name: &str) -> bool {
        self.actions.iter().any(|a| a.name == name)
    }

    /// What is likely a mistake, though valid: an action named almost like a lifecycle action
    /// (a custom action the lifecycle never runs: `backupPrehok` quiesces nothing), and a hook
    /// without its action.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.actions {
            let near = LIFECYCLE.iter().find(|l| {
                // One slip in a short name (`restart` is no `restore`), two in a long one.
                let slips = if l.len() < 8 { 1 } else { 2 };
                **l != a.name
                    && (l.eq_ignore_ascii_case(&a.name) || edit_distance(l, &a.name) <= slips)
            });
            if let Some(l) = near
                && !self.has_action(l)
            {
                out.push(format!(
                    "action {:?} is named almost like the lifecycle action {l:?}, so it is a \
                     custom action the lifecycle never runs; rename it {l:?} if that is meant",
                    a.name
                ));
            }
        }
        for (main, hooks) in [
            ("backup", ["backupPrehook", "backupPosthook"]),
            ("restore", ["restorePrehook", "restorePosthook"]),
        ] {
            for hook in hooks.iter().filter(|h| self.has_action(h)) {
                if !self.has_action(main) {
                    out.push(format!(
                        "it declares {hook:?} but no {main:?}: a hook runs only around its action"
                    ));
                }
            }
        }
        out
    }
}

/// The actions the runtime runs in its lifecycle (and `policy` runs by name).
const LIFECYCLE: &[&str] = &[
    "backupPrehook",
    "backup",
    "backupPosthook",
    "restorePrehook",
    "restore",
    "restorePosthook",
    "delete",
];

/// Levenshtein distance of two short ASCII names.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

impl From<guest::Description> for Description {
    fn from(d: guest::Description) -> Self {
        Description {
            name: d.name,
            version: d.version,
            description: d.description,
            actions: d
                .actions
                .into_iter()
                .map(|a| ActionSpec {
                    name: a.name,
                    description: a.description,
                })
                .collect(),
            parameters: d
                .parameters
                .into_iter()
                .map(|p| ParamSpec {
                    name: p.name,
                    kind: match p.kind {
                        bindings::types::ParamKind::Text => ParamKind::Text,
                        bindings::types::ParamKind::Integer => ParamKind::Integer,
                        bindings::types::ParamKind::Boolean => ParamKind::Boolean,
                        bindings::types::ParamKind::Float => ParamKind::Float,
                    },
                    description: p.description,
                    required: p.required,
                    default: p.default,
                    choices: p.choices,
                    minimum: p.minimum,
                    maximum: p.maximum,
                })
                .collect(),
            capabilities: d.capabilities.into_iter().map(Capability::from).collect(),
            min_runtime: d.min_runtime,
        }
    }
}

/// Where [`crate::Engine::load`] found a blueprint's compiled code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoadedFrom {
    /// The engine had it in memory already.
    Memory,
    /// Deserialized from the on-disk compile cache.
    DiskCache,
    /// Compiled now.
    Compiled,
}

/// A loaded, checked and described blueprint, ready to run. Cheap to clone.
#[derive(Clone)]
pub struct Blueprint {
    pub(crate) inner: Arc<Loaded>,
    pub(crate) loaded_from: LoadedFrom,
}

pub(crate) struct Loaded {
    pub digest: String,
    pub wit_version: String,
    pub description: Description,
    pub pre: bindings::BlueprintPre<HostState>,
}

impl fmt::Debug for Blueprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blueprint")
            .field("name", &self.inner.description.name)
            .field("digest", &self.inner.digest)
            .field("wit", &self.inner.wit_version)
            .finish()
    }
}

/// A component's digest, `sha256:<hex>` of its bytes: what [`Blueprint::digest`] returns for it.
pub fn component_digest(wasm: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(wasm)))
}

impl Blueprint {
    /// `sha256:<hex>` of the component's bytes.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// What the blueprint said about itself at load time.
    pub fn description(&self) -> &Description {
        &self.inner.description
    }

    /// The `cairn:blueprint` version it was built against.
    pub fn wit_version(&self) -> &str {
        &self.inner.wit_version
    }

    /// Where its compiled code came from.
    pub fn loaded_from(&self) -> LoadedFrom {
        self.loaded_from
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(version: &str, min_runtime: &str, action: &str) -> Description {
        Description {
            name: "b".into(),
            version: version.into(),
            description: String::new(),
            actions: vec![ActionSpec {
                name: action.into(),
                description: String::new(),
            }],
            parameters: Vec::new(),
            capabilities: Vec::new(),
            min_runtime: min_runtime.into(),
        }
    }

    #[test]
    fn a_description_is_bounded() {
        let mut d = described("1.0.0", "0.1.0", "backup");
        d.description = "x".repeat(MAX_DESCRIPTION_BYTES);
        let problem = d.problem().unwrap_or_default();
        assert!(problem.contains("over the limit of 1 MiB"), "{problem}");
    }

    /// The SDK's fake host measures a description through `cairn_contract::DescriptionShape`;
    /// the runtime measures its JSON. The two must count the same bytes, or a description
    /// passes one and not the other.
    #[test]
    fn the_fake_hosts_measure_of_a_description_is_the_runtimes() {
        let mut d = described("1.0.0", "0.1.0", "backup");
        d.description = "quotes \" and \\ and a\ttab and \u{1} and é".into();
        d.actions.push(ActionSpec {
            name: "restore".into(),
            description: "line\nbreak".into(),
        });
        d.parameters = vec![
            ParamSpec {
                name: "database".into(),
                kind: ParamKind::Text,
                description: "which \"one\"".into(),
                required: true,
                default: None,
                choices: vec!["a".into(), "b\u{7f}".into()],
                minimum: None,
                maximum: None,
            },
            ParamSpec {
                name: "count".into(),
                kind: ParamKind::Integer,
                description: String::new(),
                required: false,
                default: Some("10".into()),
                choices: Vec::new(),
                minimum: Some(-3),
                maximum: Some(1_000_000),
            },
        ];
        d.capabilities = vec![Capability::Exec, Capability::Secrets];
        let shape = cairn_contract::DescriptionShape {
            name: &d.name,
            version: &d.version,
            description: &d.description,
            actions: d
                .actions
                .iter()
                .map(|a| (a.name.as_str(), a.description.as_str()))
                .collect(),
            parameters: d
                .parameters
                .iter()
                .map(|p| cairn_contract::ParamShape {
                    rule: p.rule(),
                    description: &p.description,
                    required: p.required,
                })
                .collect(),
            capabilities: d.capabilities.iter().map(|c| c.as_str()).collect(),
            min_runtime: &d.min_runtime,
        };
        let json = serde_json::to_vec(&d).expect("serializes");
        assert_eq!(
            shape.json_len(),
            json.len(),
            "{}",
            String::from_utf8_lossy(&json)
        );
    }

    #[test]
    fn versions_and_action_names_are_checked() {
        assert_eq!(described("1.4.0", "0.1.0", "verify-dump").problem(), None);
        for (d, says) in [
            (
                described("not-semver", "0.1.0", "backup"),
                "is not a semantic version",
            ),
            (
                described("1.0.0", "banana", "backup"),
                "\"banana\", is not a semantic",
            ),
            (described("1.0.0", "0.1.0", ""), "an action named \"\""),
            (
                described("1.0.0", "0.1.0", "back up"),
                "an action named \"back up\"",
            ),
        ] {
            let problem = d.problem().unwrap_or_default();
            assert!(problem.contains(says), "{problem}");
        }
    }

    #[test]
    fn actions_named_almost_like_the_lifecycle_are_warned_of() {
        let with = |names: &[&str]| {
            let mut d = described("1.0.0", "0.1.0", "backup");
            d.actions = names
                .iter()
                .map(|n| ActionSpec {
                    name: (*n).into(),
                    description: String::new(),
                })
                .collect();
            d.warnings()
        };
        let warned = with(&["backupPrehok", "backup", "backupPosthook"]);
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].contains("\"backupPrehook\""), "{warned:?}");
        assert_eq!(with(&["Restore"]).len(), 1);
        assert_eq!(with(&["backups"]).len(), 1);
        // Names that are their own: a near name beside the lifecycle one, a short name two
        // slips away, a custom action.
        for ok in [
            &["backup", "backups"][..],
            &["restart", "verify-dump"],
            &["delta"],
        ] {
            assert_eq!(with(ok), Vec::<String>::new(), "{ok:?}");
        }
        let hook = with(&["restorePosthook"]);
        assert!(hook[0].contains("no \"restore\""), "{hook:?}");
    }
}
