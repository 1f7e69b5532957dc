use std::fmt;

use crate::WIT_VERSION;
use crate::wit::bindings::exports::cairn::blueprint::guest as wit;
use crate::wit::types;

/// Names of the lifecycle actions. The runtime runs `backupPrehook` → `backup` →
/// `backupPosthook` (the posthook even when the backup fails), and the same for restore.
pub mod lifecycle {
    /// Runs before [`BACKUP`], for example to quiesce the application.
    pub const BACKUP_PREHOOK: &str = "backupPrehook";
    /// Takes the backup.
    pub const BACKUP: &str = "backup";
    /// Runs after [`BACKUP`], even when it failed or timed out, to undo the prehook.
    pub const BACKUP_POSTHOOK: &str = "backupPosthook";
    /// Runs before [`RESTORE`], for example to scale the workload down.
    pub const RESTORE_PREHOOK: &str = "restorePrehook";
    /// Restores a restore point.
    pub const RESTORE: &str = "restore";
    /// Runs after [`RESTORE`], even when it failed or timed out.
    pub const RESTORE_POSTHOOK: &str = "restorePosthook";
    /// Removes what a backup stored outside the restore point (exports, snapshots).
    pub const DELETE: &str = "delete";
}

/// What a blueprint may ask the host to do. [`Description::capability`] declares the set it
/// needs; the operator grants a set per run; each host call checks it. Logging and progress
/// need none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Capability {
    /// Run commands in the target workload's containers ([`exec`](crate::exec)).
    Exec,
    /// Read workloads and other objects in the target namespace
    /// ([`workloads`](crate::workloads)).
    Workloads,
    /// Change a workload's replica count ([`workloads::scale`](crate::workloads::scale)).
    Scale,
    /// Snapshot, restore and delete the target workload's volumes ([`volumes`](crate::volumes)).
    Volumes,
    /// Write export streams ([`data::Export`](crate::data::Export)), and delete exports
    /// ([`data::delete`](crate::data::delete)) on the same terms as
    /// [`Import::open`](crate::data::Import::open): one the action was given or wrote in this
    /// run, or any export whose host tags put it in the action's scope (its namespace, and its
    /// workload when it has one), whichever blueprint wrote it.
    Export,
    /// Read export streams back for restore ([`data::Import`](crate::data::Import)).
    Import,
    /// Read secret values the operator granted to the run ([`secrets`](crate::secrets)).
    Secrets,
    /// Read and export Cairn's own catalog ([`catalog`](crate::catalog)). The runtime grants
    /// it to its DR blueprint only.
    Catalog,
}

impl Capability {
    /// Every capability, in WIT order.
    pub const ALL: [Capability; 8] = [
        Self::Exec,
        Self::Workloads,
        Self::Scale,
        Self::Volumes,
        Self::Export,
        Self::Import,
        Self::Secrets,
        Self::Catalog,
    ];

    /// The name the CLI's `--grant` and `cairn blueprint inspect` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Workloads => "workloads",
            Self::Scale => "scale",
            Self::Volumes => "volumes",
            Self::Export => "export",
            Self::Import => "import",
            Self::Secrets => "secrets",
            Self::Catalog => "catalog",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Capability> for types::Capability {
    fn from(c: Capability) -> Self {
        match c {
            Capability::Exec => Self::Exec,
            Capability::Workloads => Self::Workloads,
            Capability::Scale => Self::Scale,
            Capability::Volumes => Self::Volumes,
            Capability::Export => Self::Export,
            Capability::Import => Self::Import,
            Capability::Secrets => Self::Secrets,
            Capability::Catalog => Self::Catalog,
        }
    }
}

/// The type of a [`Param`]: the contract's parameter kinds.
pub use cairn_contract::Kind as ParamKind;

impl From<ParamKind> for types::ParamKind {
    fn from(k: ParamKind) -> Self {
        match k {
            ParamKind::Text => Self::Text,
            ParamKind::Integer => Self::Integer,
            ParamKind::Boolean => Self::Boolean,
            ParamKind::Float => Self::Float,
        }
    }
}

/// A parameter a blueprint accepts, declared in its [`Description`].
///
/// ```
/// use cairn_sdk::Param;
///
/// let count = Param::integer("count").default(3).describe("How many greetings");
/// let mode = Param::text("mode").choices(["fast", "safe"]).required();
/// assert_eq!(count.default_value(), Some("3"));
/// assert!(mode.is_required());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    name: String,
    kind: ParamKind,
    description: String,
    required: bool,
    default: Option<String>,
    choices: Vec<String>,
    minimum: Option<i64>,
    maximum: Option<i64>,
}

impl Param {
    fn new(name: impl Into<String>, kind: ParamKind) -> Self {
        Self {
            name: name.into(),
            kind,
            description: String::new(),
            required: false,
            default: None,
            choices: Vec::new(),
            minimum: None,
            maximum: None,
        }
    }

    /// A text parameter, read with [`Context::text`](crate::Context::text).
    pub fn text(name: impl Into<String>) -> Self {
        Self::new(name, ParamKind::Text)
    }

    /// An integer parameter, read with [`Context::integer`](crate::Context::integer) or
    /// [`Context::param`](crate::Context::param).
    pub fn integer(name: impl Into<String>) -> Self {
        Self::new(name, ParamKind::Integer)
    }

    /// A boolean parameter, read with [`Context::flag`](crate::Context::flag).
    pub fn flag(name: impl Into<String>) -> Self {
        Self::new(name, ParamKind::Boolean)
    }

    /// A float parameter, read with [`Context::float`](crate::Context::float).
    pub fn float(name: impl Into<String>) -> Self {
        Self::new(name, ParamKind::Float)
    }

    /// Sets the help text.
    #[must_use]
    pub fn describe(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Sets the default, written as a user would on the command line (`3`, `true`, `hi`).
    #[must_use]
    pub fn default(mut self, value: impl fmt::Display) -> Self {
        self.default = Some(value.to_string());
        self
    }

    /// Makes a run without this parameter fail before the blueprint starts (unless a default
    /// is set).
    #[must_use]
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Restricts the values the host accepts.
    #[must_use]
    pub fn choices<I>(mut self, choices: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.choices = choices.into_iter().map(Into::into).collect();
        self
    }

    /// For an integer: the smallest and largest values the host accepts (either may be
    /// open, as in `1..` or `..=100`). The runtime refuses to load a blueprint that bounds
    /// another kind.
    ///
    /// ```
    /// use cairn_sdk::Param;
    ///
    /// let port = Param::integer("port").range(1..=65535);
    /// assert_eq!(port.bounds(), (Some(1), Some(65535)));
    /// assert_eq!(Param::integer("timeout").range(1..).bounds(), (Some(1), None));
    /// ```
    #[must_use]
    pub fn range(mut self, range: impl std::ops::RangeBounds<i64>) -> Self {
        use std::ops::Bound;
        self.minimum = match range.start_bound() {
            Bound::Included(&n) => Some(n),
            Bound::Excluded(&n) => Some(n.saturating_add(1)),
            Bound::Unbounded => None,
        };
        self.maximum = match range.end_bound() {
            Bound::Included(&n) => Some(n),
            Bound::Excluded(&n) => Some(n.saturating_sub(1)),
            Bound::Unbounded => None,
        };
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The type.
    pub fn kind(&self) -> ParamKind {
        self.kind
    }

    /// The help text.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether a run must give it.
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// The default, as written.
    pub fn default_value(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// The accepted values; empty when any value of the type is.
    pub fn allowed_values(&self) -> &[String] {
        &self.choices
    }

    /// The smallest and largest accepted integers, as set by [`Param::range`].
    pub fn bounds(&self) -> (Option<i64>, Option<i64>) {
        (self.minimum, self.maximum)
    }
}

/// What the host checks of a parameter and its values, for the fake host: the contract's rules
/// (`cairn-contract`), which the runtime applies too.
impl Param {
    /// The parameter as the contract's rules see it.
    pub(crate) fn rule(&self) -> cairn_contract::ParamRule<'_> {
        cairn_contract::ParamRule {
            name: &self.name,
            kind: self.kind,
            choices: &self.choices,
            minimum: self.minimum,
            maximum: self.maximum,
            default: self.default.as_deref(),
        }
    }
}

impl From<Param> for types::ParamSpec {
    fn from(p: Param) -> Self {
        Self {
            name: p.name,
            kind: p.kind.into(),
            description: p.description,
            required: p.required,
            default: p.default,
            choices: p.choices,
            minimum: p.minimum,
            maximum: p.maximum,
        }
    }
}

/// What a blueprint is and needs: the answer to [`Blueprint::describe`](crate::Blueprint).
///
/// ```
/// use cairn_sdk::{Capability, Description, Param, lifecycle};
///
/// let d = Description::new("postgres", "1.2.0")
///     .describe("Logical dumps of a PostgreSQL database")
///     .action(lifecycle::BACKUP, "pg_dump into an export")
///     .action(lifecycle::RESTORE, "pg_restore from the export")
///     .param(Param::text("database").required())
///     .capability(Capability::Exec)
///     .capability(Capability::Export)
///     .capability(Capability::Import);
/// assert!(d.has_action("restore"));
/// assert_eq!(d.capabilities(), [Capability::Exec, Capability::Export, Capability::Import]);
/// assert_eq!(d.min_runtime(), cairn_sdk::WIT_VERSION);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    name: String,
    version: String,
    description: String,
    actions: Vec<(String, String)>,
    params: Vec<Param>,
    capabilities: Vec<Capability>,
    min_runtime: String,
}

impl Description {
    /// A blueprint named `name` at `version` (its own semver; `env!("CARGO_PKG_VERSION")` is
    /// the usual choice), with no actions, parameters or capabilities yet, running on any
    /// runtime that speaks [`WIT_VERSION`].
    ///
    /// The name is 1 to 128 of letters, digits, `.`, `_` and `-`, not starting with a dot;
    /// the runtime refuses to load a blueprint named otherwise. Policies refer to the
    /// blueprint by it, and its exports are tagged `blueprint=<name>`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            actions: Vec::new(),
            params: Vec::new(),
            capabilities: Vec::new(),
            min_runtime: WIT_VERSION.to_owned(),
        }
    }

    /// Sets the one-paragraph summary.
    #[must_use]
    pub fn describe(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Adds an action ([`lifecycle`] names, or a custom one) with its help text.
    #[must_use]
    pub fn action(mut self, name: impl Into<String>, description: impl Into<String>) -> Self {
        self.actions.push((name.into(), description.into()));
        self
    }

    /// Adds a parameter.
    #[must_use]
    pub fn param(mut self, param: Param) -> Self {
        self.params.push(param);
        self
    }

    /// Declares a capability some action uses; declaring one twice is harmless.
    #[must_use]
    pub fn capability(mut self, capability: Capability) -> Self {
        if !self.capabilities.contains(&capability) {
            self.capabilities.push(capability);
        }
        self
    }

    /// Requires a runtime at least this version (semver); the default is [`WIT_VERSION`].
    #[must_use]
    pub fn requires_runtime(mut self, version: impl Into<String>) -> Self {
        self.min_runtime = version.into();
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The blueprint's version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The summary.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The actions, as `(name, help)`, in declaration order.
    pub fn actions(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.actions.iter().map(|(n, d)| (n.as_str(), d.as_str()))
    }

    /// Whether `action` is declared.
    pub fn has_action(&self, action: &str) -> bool {
        self.actions.iter().any(|(n, _)| n == action)
    }

    /// The parameters.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The declared capabilities, without duplicates, in declaration order.
    pub fn capabilities(&self) -> &[Capability] {
        &self.capabilities
    }

    /// The oldest runtime version this blueprint runs on.
    pub fn min_runtime(&self) -> &str {
        &self.min_runtime
    }
}

impl Description {
    /// Why the runtime refuses to load a blueprint that describes itself so, in the runtime's
    /// words, if it does: the checks of `Engine::load` (`runtime/engine/src/engine.rs`): the
    /// name (`name_problem`), then `Description::problem` (`runtime/engine/src/blueprint.rs`):
    /// its size (1 MiB of the JSON the runtime keeps), versions, action names, an action or
    /// parameter declared twice, a parameter's bounds, choices and default. Not checked: a
    /// `min_runtime` newer than the runtime that runs it.
    pub(crate) fn load_error(&self) -> Option<String> {
        if let Some(reason) = crate::data::name_problem(&self.name) {
            return Some(format!(
                "the blueprint's describe() names it {:?}, which cannot be used: {reason}; fix \
                 the name its author passes to the SDK's Description",
                self.name
            ));
        }
        self.problem().map(|problem| {
            format!("the blueprint's describe() is invalid: {problem}; fix it in the blueprint")
        })
    }

    /// The runtime's `Description::problem` (`runtime/engine/src/blueprint.rs`).
    fn problem(&self) -> Option<String> {
        if let Some(problem) = cairn_contract::description_size_problem(self.json_len()) {
            return Some(problem);
        }
        cairn_contract::description_problem(
            &self.version,
            &self.min_runtime,
            self.actions.iter().map(|(n, _)| n.as_str()),
            self.params.iter().map(|p| p.name.as_str()),
        )
        .or_else(|| self.params.iter().find_map(|p| p.rule().problem()))
    }
}

impl Description {
    /// The bytes of the JSON the runtime keeps of it, which it measures against
    /// [`MAX_DESCRIPTION_BYTES`](cairn_contract::MAX_DESCRIPTION_BYTES).
    fn json_len(&self) -> usize {
        cairn_contract::DescriptionShape {
            name: &self.name,
            version: &self.version,
            description: &self.description,
            actions: self
                .actions
                .iter()
                .map(|(n, d)| (n.as_str(), d.as_str()))
                .collect(),
            parameters: self
                .params
                .iter()
                .map(|p| cairn_contract::ParamShape {
                    rule: p.rule(),
                    description: &p.description,
                    required: p.required,
                })
                .collect(),
            capabilities: self.capabilities.iter().map(|c| c.as_str()).collect(),
            min_runtime: &self.min_runtime,
        }
        .json_len()
    }
}

impl From<Description> for wit::Description {
    fn from(d: Description) -> Self {
        Self {
            name: d.name,
            version: d.version,
            description: d.description,
            actions: d
                .actions
                .into_iter()
                .map(|(name, description)| wit::ActionSpec { name, description })
                .collect(),
            parameters: d.params.into_iter().map(Into::into).collect(),
            capabilities: d.capabilities.into_iter().map(Into::into).collect(),
            min_runtime: d.min_runtime,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Description {
        Description::new("hello", "0.1.0")
            .describe("Greets")
            .action(lifecycle::BACKUP, "Greets in the workload")
            .param(
                Param::text("greeting")
                    .default("hi")
                    .describe("What to say"),
            )
            .param(Param::integer("times").default(2))
            .param(Param::flag("loud").required())
            .param(Param::float("ratio").choices(["0.5", "1"]))
            .capability(Capability::Exec)
            .capability(Capability::Exec)
    }

    /// The runtime's 1 MiB limit, in its words (the shared
    /// `cairn_contract::description_size_problem`), over the JSON it keeps.
    #[test]
    fn a_description_over_a_mebibyte_is_refused_as_the_runtime_refuses_it() {
        let big = hello().action("restore", "x".repeat(cairn_contract::MAX_DESCRIPTION_BYTES));
        // What `serde_json` writes of the runtime's `Description` of it.
        assert_eq!(big.json_len(), 1_049_198);
        assert_eq!(
            big.load_error().as_deref(),
            Some(
                "the blueprint's describe() is invalid: it describes itself in 1049198 bytes, \
                 over the limit of 1 MiB (1048576 bytes): say what each action and parameter is \
                 in a sentence or two; fix it in the blueprint"
            )
        );
        // Each parameter's keys weigh more than its texts: over 100 bytes of JSON apiece, so
        // 11 000 of them are over the limit though their texts come to about 280 KiB.
        let generated = (0..11_000).fold(hello(), |d, i| {
            d.param(Param::text(format!("p{i}")).describe("a generated parameter"))
        });
        assert!(
            generated
                .load_error()
                .is_some_and(|e| e.contains("over the limit of 1 MiB")),
            "{:?}",
            generated.load_error()
        );
        assert_eq!(hello().load_error(), None);
    }

    #[test]
    fn builds_the_wit_record() {
        let wit: wit::Description = hello().into();
        assert_eq!(wit.name, "hello");
        assert_eq!(wit.version, "0.1.0");
        assert_eq!(wit.description, "Greets");
        assert_eq!(wit.min_runtime, WIT_VERSION);
        assert_eq!(wit.actions.len(), 1);
        assert_eq!(wit.actions[0].name, "backup");
        assert_eq!(wit.capabilities, [types::Capability::Exec]);
        let p = &wit.parameters;
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].name, "greeting");
        assert_eq!(p[0].kind, types::ParamKind::Text);
        assert_eq!(p[0].default.as_deref(), Some("hi"));
        assert_eq!(p[0].description, "What to say");
        assert!(!p[0].required);
        assert_eq!(p[1].kind, types::ParamKind::Integer);
        assert_eq!(p[1].default.as_deref(), Some("2"));
        assert_eq!(p[2].kind, types::ParamKind::Boolean);
        assert!(p[2].required);
        assert_eq!(p[3].kind, types::ParamKind::Float);
        assert_eq!(p[3].choices, ["0.5", "1"]);
    }

    #[test]
    fn capabilities_are_deduplicated_in_order() {
        let d = Description::new("x", "1.0.0")
            .capability(Capability::Export)
            .capability(Capability::Exec)
            .capability(Capability::Export);
        assert_eq!(d.capabilities(), [Capability::Export, Capability::Exec]);
    }

    #[test]
    fn capability_names_match_the_wit() {
        let names: Vec<_> = Capability::ALL.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            names,
            [
                "exec",
                "workloads",
                "scale",
                "volumes",
                "export",
                "import",
                "secrets",
                "catalog"
            ]
        );
    }

    #[test]
    fn requires_runtime_overrides_the_default() {
        let d = hello().requires_runtime("0.3.0");
        assert_eq!(d.min_runtime(), "0.3.0");
    }

    /// The runtime's own cases (`runtime/engine/src/blueprint.rs` and `params.rs` tests), so
    /// the fake host refuses to run what the runtime refuses to load.
    #[test]
    fn descriptions_are_checked_as_the_runtime_loads_them() {
        use std::ops::Bound;
        assert_eq!(hello().load_error(), None);
        let b = || Description::new("b", "1.4.0").action(lifecycle::BACKUP, "");
        let invalid = |problem: &str| {
            format!("the blueprint's describe() is invalid: {problem}; fix it in the blueprint")
        };
        for (d, problem) in [
            (
                Description::new("b", "not-semver"),
                "its version \"not-semver\" is not a semantic version (MAJOR.MINOR.PATCH, e.g. \
                 1.4.0)",
            ),
            (
                b().requires_runtime("banana"),
                "the runtime it requires, \"banana\", is not a semantic version (e.g. 0.1.0)",
            ),
            (
                b().action("back up", ""),
                "it declares an action named \"back up\": an action's name is 1 to 64 letters, \
                 digits, `-` or `_`, starting with a letter (as `cairn run --action` takes it)",
            ),
            (
                b().action(lifecycle::BACKUP, "again"),
                "it declares the action \"backup\" twice",
            ),
            (
                b().param(Param::text("a")).param(Param::integer("a")),
                "it declares the parameter \"a\" twice",
            ),
            (
                b().param(Param::text("t").range(1..)),
                "parameter \"t\" is text but has a minimum or maximum, which only integers take",
            ),
            (
                // A minimum above the maximum (as bounds: a literal `5..=4` is a clippy error).
                b().param(Param::integer("n").range((Bound::Included(5), Bound::Included(4)))),
                "parameter \"n\" has a minimum (5) above its maximum (4)",
            ),
            (
                b().param(Param::integer("n").choices(["1", "x"])),
                "parameter \"n\" offers the choice \"x\", which its kind refuses: expected an \
                 integer",
            ),
            (
                b().param(Param::text("z").default("zip").choices(["gzip", "none"])),
                "parameter \"z\" has the default \"zip\", which it refuses: expected one of gzip, \
                 none",
            ),
            (
                b().param(Param::integer("level").default(42).range(1..=9)),
                "parameter \"level\" has the default \"42\", which it refuses: expected an \
                 integer from 1 to 9",
            ),
            (
                b().param(Param::integer("retries").default("three")),
                "parameter \"retries\" has the default \"three\", which it refuses: expected an \
                 integer",
            ),
            (
                b().param(Param::flag("loud").default("maybe")),
                "parameter \"loud\" has the default \"maybe\", which it refuses: expected true \
                 or false",
            ),
            (
                b().param(Param::float("ratio").default("inf")),
                "parameter \"ratio\" has the default \"inf\", which it refuses: expected a \
                 number",
            ),
        ] {
            assert_eq!(d.load_error(), Some(invalid(problem)));
        }
        for version in ["1", "1.2", "1.2.3-rc.1+build"] {
            let d = Description::new("b", version).action(lifecycle::BACKUP, "");
            assert_eq!(d.load_error(), None);
        }
        assert_eq!(
            Description::new("b", "1.0.0").load_error(),
            Some(invalid(
                "it declares no action, so nothing could run it: declare its actions (backup, \
                 restore, ...) in describe()"
            ))
        );
        assert_eq!(
            Description::new("my app", "1.0.0").load_error(),
            Some(
                "the blueprint's describe() names it \"my app\", which cannot be used: use only \
                 letters, digits, '.', '_' and '-'; fix the name its author passes to the SDK's \
                 Description"
                    .to_owned()
            )
        );
    }

    #[test]
    fn wit_version_matches_the_wit_package() {
        let world = include_str!("../../wit/world.wit");
        assert!(
            world.contains(&format!("package cairn:blueprint@{WIT_VERSION};")),
            "WIT_VERSION is out of date with wit/world.wit"
        );
    }
}
