use std::fmt;

use crate::wit::bindings::exports::cairn::blueprint::guest as wit;
use crate::wit::types;
use crate::{Artifact, Error, Outputs, Result, WorkloadRef};

/// A parameter's value, as the host validated it against the declared [`Param`](crate::Param).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ParamValue {
    /// A text value.
    Text(String),
    /// An integer value.
    Integer(i64),
    /// A boolean value.
    Boolean(bool),
    /// A float value.
    Float(f64),
}

impl ParamValue {
    fn kind(&self) -> &'static str {
        match self {
            Self::Text(_) => "text",
            Self::Integer(_) => "an integer",
            Self::Boolean(_) => "a boolean",
            Self::Float(_) => "a float",
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(v) => f.write_str(v),
            Self::Integer(v) => v.fmt(f),
            Self::Boolean(v) => v.fmt(f),
            Self::Float(v) => v.fmt(f),
        }
    }
}

impl From<&str> for ParamValue {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for ParamValue {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<i64> for ParamValue {
    fn from(v: i64) -> Self {
        Self::Integer(v)
    }
}

impl From<i32> for ParamValue {
    fn from(v: i32) -> Self {
        Self::Integer(v.into())
    }
}

impl From<bool> for ParamValue {
    fn from(v: bool) -> Self {
        Self::Boolean(v)
    }
}

impl From<f64> for ParamValue {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

impl From<types::ParamValue> for ParamValue {
    fn from(v: types::ParamValue) -> Self {
        match v {
            types::ParamValue::Text(v) => Self::Text(v),
            types::ParamValue::Integer(v) => Self::Integer(v),
            types::ParamValue::Boolean(v) => Self::Boolean(v),
            types::ParamValue::Float(v) => Self::Float(v),
        }
    }
}

/// A type [`Context::param`] can read a parameter as.
///
/// Implemented for `String`, the integer types (range-checked), `bool`, `f64`, `f32`, and
/// `Option<T>` of those (`None` when the run gave no value and the parameter has no default).
pub trait FromParam: Sized {
    /// Reads parameter `name`, whose value is `value` (`None` when absent).
    fn from_param(name: &str, value: Option<&ParamValue>) -> Result<Self>;
}

fn missing(name: &str) -> Error {
    Error::not_found(format!(
        "parameter `{name}` has no value: declare it with a default or as required, or read it as an Option \
         (a test's Context::builder applies the defaults only with `.defaults(&T::describe())`)"
    ))
}

fn declared(description: &crate::Description) -> Vec<String> {
    description
        .params()
        .iter()
        .map(|p| p.name().to_owned())
        .collect()
}

fn mismatch(name: &str, value: &ParamValue, expected: &str) -> Error {
    Error::invalid(format!(
        "parameter `{name}` is {}, not {expected}",
        value.kind()
    ))
}

impl<T: FromParam> FromParam for Option<T> {
    fn from_param(name: &str, value: Option<&ParamValue>) -> Result<Self> {
        value.map(|v| T::from_param(name, Some(v))).transpose()
    }
}

impl FromParam for String {
    fn from_param(name: &str, value: Option<&ParamValue>) -> Result<Self> {
        match value.ok_or_else(|| missing(name))? {
            ParamValue::Text(v) => Ok(v.clone()),
            other => Err(mismatch(name, other, "text")),
        }
    }
}

impl FromParam for bool {
    fn from_param(name: &str, value: Option<&ParamValue>) -> Result<Self> {
        match value.ok_or_else(|| missing(name))? {
            ParamValue::Boolean(v) => Ok(*v),
            other => Err(mismatch(name, other, "a boolean")),
        }
    }
}

impl FromParam for f64 {
    fn from_param(name: &str, value: Option<&ParamValue>) -> Result<Self> {
        match value.ok_or_else(|| missing(name))? {
            ParamValue::Float(v) => Ok(*v),
            // Integers a user writes for a float parameter are exact up to 2^53.
            #[allow(clippy::cast_precision_loss)]
            ParamValue::Integer(v) => Ok(*v as f64),
            other => Err(mismatch(name, other, "a float")),
        }
    }
}

impl FromParam for f32 {
    fn from_param(name: &str, value: Option<&ParamValue>) -> Result<Self> {
        #[allow(clippy::cast_possible_truncation)]
        f64::from_param(name, value).map(|v| v as f32)
    }
}

macro_rules! from_integer_param {
    ($($t:ty),*) => {$(
        impl FromParam for $t {
            fn from_param(name: &str, value: Option<&ParamValue>) -> Result<Self> {
                match value.ok_or_else(|| missing(name))? {
                    ParamValue::Integer(v) => <$t>::try_from(*v).map_err(|_| {
                        Error::invalid(format!(
                            "parameter `{name}` is {v}, out of range for {}",
                            stringify!($t)
                        ))
                    }),
                    other => Err(mismatch(name, other, "an integer")),
                }
            }
        }
    )*};
}

from_integer_param!(i64, i32, i16, i8, u64, u32, u16, u8, usize, isize);

/// The outputs of one earlier phase of this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    action: String,
    completed: bool,
    outputs: Outputs,
}

impl Phase {
    /// The phase's action, such as `backupPrehook`.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// Whether it returned its outputs; `false` when it failed, trapped or timed out.
    pub fn completed(&self) -> bool {
        self.completed
    }

    /// What it produced: when it did not complete, only the values it
    /// [checkpointed](crate::checkpoint).
    pub fn outputs(&self) -> &Outputs {
        &self.outputs
    }
}

/// Everything an action runs with: its target, typed parameters, what earlier phases of the
/// run produced and, for `restore` and `delete`, the restore point's artifacts.
///
/// ```
/// use cairn_sdk::{Context, Outputs};
///
/// let ctx = Context::builder("backupPosthook", "shop")
///     .workload("db")
///     .param("count", 3)
///     .phase("backupPrehook", Outputs::new().value("replicas", 2))
///     .build();
/// assert_eq!(ctx.param::<u32>("count").ok(), Some(3));
/// assert_eq!(ctx.value("replicas").ok(), Some("2"));
/// assert!(ctx.failure().is_none());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    action: String,
    action_id: String,
    namespace: String,
    workload: Option<String>,
    params: Vec<(String, ParamValue)>,
    phases: Vec<Phase>,
    failure: Option<Error>,
    restore_point: Vec<Artifact>,
    restore_point_values: Vec<(String, String)>,
    /// The parameters the blueprint declares, when known: reading another is a mistake in
    /// the blueprint, not an absent value.
    declared: Option<Vec<String>>,
}

impl Context {
    pub(crate) fn from_wit(
        action: String,
        inputs: wit::Inputs,
        description: &crate::Description,
    ) -> Self {
        Self {
            action,
            action_id: inputs.action_id,
            namespace: inputs.namespace,
            workload: inputs.workload,
            params: inputs
                .params
                .into_iter()
                .map(|(k, v)| (k, v.into()))
                .collect(),
            phases: inputs
                .phases
                .into_iter()
                .map(|p| Phase {
                    action: p.action,
                    completed: p.completed,
                    outputs: p.outputs.into(),
                })
                .collect(),
            failure: inputs.failure.map(Into::into),
            restore_point: inputs.artifacts.into_iter().map(Into::into).collect(),
            restore_point_values: inputs.point_values,
            declared: Some(declared(description)),
        }
    }

    /// This context, checking parameter names against `description`'s.
    pub(crate) fn declaring(mut self, description: &crate::Description) -> Self {
        self.declared = Some(declared(description));
        self
    }

    /// A context built by hand, to test an action's logic natively.
    pub fn builder(action: impl Into<String>, namespace: impl Into<String>) -> ContextBuilder {
        ContextBuilder(Self {
            action: action.into(),
            action_id: "test".to_owned(),
            namespace: namespace.into(),
            workload: None,
            params: Vec::new(),
            phases: Vec::new(),
            failure: None,
            restore_point: Vec::new(),
            restore_point_values: Vec::new(),
            declared: None,
        })
    }

    /// The action being run, such as `backup`.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// A unique id of this run, for logs and names.
    pub fn action_id(&self) -> &str {
        &self.action_id
    }

    /// The target namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The target workload's name, when the run names one.
    pub fn workload(&self) -> Option<&str> {
        self.workload.as_deref()
    }

    /// The target workload, or [`Error::Invalid`] when the run names none.
    pub fn target(&self) -> Result<WorkloadRef> {
        match &self.workload {
            Some(name) => Ok(WorkloadRef::new(&self.namespace, name)),
            None => Err(Error::invalid(format!(
                "action `{}` needs a target workload; run it with --workload",
                self.action
            ))),
        }
    }

    /// Parameter `name` as a `T`: `ctx.param::<u32>("count")?`, or
    /// `ctx.param::<Option<String>>("label")?` for one that may be absent.
    ///
    /// Fails with [`Error::NotFound`] when the parameter has no value and `T` is not an
    /// `Option`, and with [`Error::Invalid`] when the value has another type or is out of
    /// `T`'s range.
    ///
    /// A parameter the blueprint does not declare is [`Error::Invalid`], whatever `T` is: a
    /// misspelt name would otherwise read as absent (a [`flag`](Self::flag) as `false`).
    pub fn param<T: FromParam>(&self, name: &str) -> Result<T> {
        T::from_param(name, self.declared_value(name)?)
    }

    /// Text parameter `name`, borrowed.
    pub fn text(&self, name: &str) -> Result<&str> {
        match self.declared_value(name)?.ok_or_else(|| missing(name))? {
            ParamValue::Text(v) => Ok(v),
            other => Err(mismatch(name, other, "text")),
        }
    }

    /// Integer parameter `name`.
    pub fn integer(&self, name: &str) -> Result<i64> {
        self.param(name)
    }

    /// Float parameter `name` (an integer value is accepted).
    pub fn float(&self, name: &str) -> Result<f64> {
        self.param(name)
    }

    /// Boolean parameter `name`; `false` when absent.
    pub fn flag(&self, name: &str) -> Result<bool> {
        self.param::<Option<bool>>(name)
            .map(Option::unwrap_or_default)
    }

    /// The raw value of parameter `name`.
    pub fn param_value(&self, name: &str) -> Option<&ParamValue> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn declared_value(&self, name: &str) -> Result<Option<&ParamValue>> {
        let value = self.param_value(name);
        match &self.declared {
            Some(declared) if value.is_none() && !declared.iter().any(|d| d == name) => {
                Err(Error::invalid(format!(
                    "parameter `{name}` is not declared by this blueprint: declare it in \
                     describe(), or read one it declares ({})",
                    if declared.is_empty() {
                        "it declares none".to_owned()
                    } else {
                        declared.join(", ")
                    }
                )))
            }
            _ => Ok(value),
        }
    }

    /// Every parameter with a value, defaults applied.
    pub fn params(&self) -> impl ExactSizeIterator<Item = (&str, &ParamValue)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The earlier phases of this run that ran, oldest first, completed or not.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// What the earlier phase `action` (for example `backupPrehook`) produced, if it ran and
    /// completed.
    pub fn phase(&self, action: &str) -> Option<&Outputs> {
        self.phases
            .iter()
            .rev()
            .find(|p| p.action == action && p.completed)
            .map(|p| &p.outputs)
    }

    /// Value `key` from the latest earlier phase that set it, else from the restore point's
    /// values, or [`Error::NotFound`]. A phase that failed, trapped or timed out sets the
    /// values it [checkpointed](crate::checkpoint) before it stopped.
    pub fn value(&self, key: &str) -> Result<&str> {
        self.phases
            .iter()
            .rev()
            .find_map(|p| p.outputs.get(key))
            .or_else(|| {
                self.restore_point_values
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str())
            })
            .ok_or_else(|| {
                Error::not_found(format!(
                    "no earlier phase of this run or the restore point set the value `{key}`"
                ))
            })
    }

    /// Artifact `name` from the latest earlier phase that produced it, else from the restore
    /// point, or [`Error::NotFound`].
    pub fn artifact(&self, name: &str) -> Result<&Artifact> {
        self.phases
            .iter()
            .rev()
            .find_map(|p| p.outputs.get_artifact(name))
            .or_else(|| self.restore_point.iter().find(|a| a.name() == name))
            .ok_or_else(|| {
                Error::not_found(format!(
                    "no artifact `{name}` in the earlier phases of this run or the restore point"
                ))
            })
    }

    /// For `restore` and `delete`: the artifacts of the restore point being used.
    pub fn restore_point(&self) -> &[Artifact] {
        &self.restore_point
    }

    /// For `restore` and `delete`: the restore point's own values, what its backup's main
    /// phase and posthook returned (a stop LSN, a backup label), in that order.
    pub fn restore_point_values(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.restore_point_values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// In a posthook that runs after the main phase failed: that failure.
    pub fn failure(&self) -> Option<&Error> {
        self.failure.as_ref()
    }

    /// In a posthook after the main phase failed (interrupted, past its deadline, or an error
    /// it returned): that failure, with how far the phase got, the value `key` it
    /// [checkpointed](crate::checkpoint) last, unless that is one of `settled` (the phase
    /// finished or undid itself). `None` when there is nothing left to undo or describe: the
    /// main phase succeeded, or stopped before it checkpointed `key`.
    ///
    /// ```
    /// # use cairn_sdk::{Context, Error, Outputs};
    /// let ctx = Context::builder("restorePosthook", "default")
    ///     .phase("restore", Outputs::new().value("state", "swapping"))
    ///     .failure(Error::timed_out("past its deadline"))
    ///     .build();
    /// let (_, state) = ctx.unfinished("state", &["undone", "done"]).expect("unfinished");
    /// assert_eq!(state, "swapping");
    /// ```
    pub fn unfinished(&self, key: &str, settled: &[&str]) -> Option<(&Error, &str)> {
        let failure = self.failure()?;
        let state = self.value(key).ok()?;
        (!settled.contains(&state)).then_some((failure, state))
    }

    /// This context as phase `action` of a run sees it, after the earlier phases `phases`
    /// and, for a posthook, the `failure` of the phase before it.
    pub(crate) fn for_phase(
        &self,
        action: &str,
        phases: impl IntoIterator<Item = (String, bool, Outputs)>,
        failure: Option<Error>,
    ) -> Context {
        let mut ctx = self.clone();
        ctx.action = action.to_owned();
        ctx.phases.extend(
            phases
                .into_iter()
                .map(|(action, completed, outputs)| Phase {
                    action,
                    completed,
                    outputs,
                }),
        );
        ctx.failure = failure;
        ctx
    }
}

/// Builds a [`Context`] by hand; see [`Context::builder`].
#[derive(Debug, Clone)]
pub struct ContextBuilder(Context);

impl ContextBuilder {
    /// Sets the run id (default `test`).
    #[must_use]
    pub fn action_id(mut self, id: impl Into<String>) -> Self {
        self.0.action_id = id.into();
        self
    }

    /// Sets the target workload.
    #[must_use]
    pub fn workload(mut self, name: impl Into<String>) -> Self {
        self.0.workload = Some(name.into());
        self
    }

    /// Sets parameter `name`.
    #[must_use]
    pub fn param(mut self, name: impl Into<String>, value: impl Into<ParamValue>) -> Self {
        let name = name.into();
        self.0.params.retain(|(k, _)| *k != name);
        self.0.params.push((name, value.into()));
        self
    }

    /// Appends an earlier phase that completed.
    #[must_use]
    pub fn phase(mut self, action: impl Into<String>, outputs: Outputs) -> Self {
        self.0.phases.push(Phase {
            action: action.into(),
            completed: true,
            outputs,
        });
        self
    }

    /// Appends an earlier phase that failed, trapped or timed out after checkpointing
    /// `checkpoints` (values only).
    #[must_use]
    pub fn stopped_phase(mut self, action: impl Into<String>, checkpoints: Outputs) -> Self {
        self.0.phases.push(Phase {
            action: action.into(),
            completed: false,
            outputs: checkpoints,
        });
        self
    }

    /// Sets the main phase's failure, as a posthook sees it.
    #[must_use]
    pub fn failure(mut self, error: Error) -> Self {
        self.0.failure = Some(error);
        self
    }

    /// Adds an artifact of the restore point.
    #[must_use]
    pub fn restore_artifact(mut self, artifact: Artifact) -> Self {
        self.0.restore_point.push(artifact);
        self
    }

    /// Adds a value of the restore point.
    #[must_use]
    pub fn restore_value(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.0
            .restore_point_values
            .push((key.into(), value.to_string()));
        self
    }

    /// Gives every parameter of `description` that has a default and no value yet its
    /// default, as the host does before a run: `Context::builder(..).defaults(&T::describe())`.
    /// A default its parameter's kind cannot read is left out (the host refuses the blueprint).
    /// From then on, reading a parameter `description` does not declare is an error, as in a
    /// run.
    #[must_use]
    pub fn defaults(mut self, description: &crate::Description) -> Self {
        self.0.declared = Some(declared(description));
        for p in description.params() {
            let Some(raw) = p.default_value() else {
                continue;
            };
            if self.0.params.iter().any(|(k, _)| k == p.name()) {
                continue;
            }
            let value = match p.kind() {
                crate::ParamKind::Text => Some(ParamValue::Text(raw.to_owned())),
                crate::ParamKind::Integer => raw.trim().parse().ok().map(ParamValue::Integer),
                crate::ParamKind::Boolean => raw.trim().parse().ok().map(ParamValue::Boolean),
                crate::ParamKind::Float => raw.trim().parse().ok().map(ParamValue::Float),
            };
            if let Some(value) = value {
                self.0.params.push((p.name().to_owned(), value));
            }
        }
        self
    }

    /// The context.
    pub fn build(self) -> Context {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context::builder("backup", "shop")
            .workload("db")
            .param("greeting", "hi")
            .param("count", 3)
            .param("big", i64::MAX)
            .param("negative", -1)
            .param("loud", true)
            .param("ratio", 0.5)
            .build()
    }

    #[test]
    fn a_test_context_takes_the_described_defaults() {
        let d = crate::Description::new("b", "1")
            .param(crate::Param::text("db").default("notes.db"))
            .param(crate::Param::integer("n").default(3))
            .param(crate::Param::flag("v").default(true))
            .param(crate::Param::text("given").default("no"));
        let ctx = Context::builder("backup", "default")
            .param("given", "yes")
            .defaults(&d)
            .build();
        assert_eq!(ctx.text("db"), Ok("notes.db"));
        assert_eq!(ctx.param::<i64>("n"), Ok(3));
        assert_eq!(ctx.flag("v"), Ok(true));
        assert_eq!(ctx.text("given"), Ok("yes"), "a given value wins");
        let bare = Context::builder("backup", "default").build();
        assert!(
            bare.text("db")
                .is_err_and(|e| e.to_string().contains(".defaults("))
        );
    }

    #[test]
    fn reads_typed_params() {
        let ctx = ctx();
        assert_eq!(ctx.text("greeting"), Ok("hi"));
        assert_eq!(ctx.param::<String>("greeting"), Ok("hi".to_owned()));
        assert_eq!(ctx.integer("count"), Ok(3));
        assert_eq!(ctx.param::<u8>("count"), Ok(3));
        assert_eq!(ctx.param::<usize>("count"), Ok(3));
        assert_eq!(ctx.flag("loud"), Ok(true));
        assert_eq!(ctx.float("ratio"), Ok(0.5));
        assert_eq!(ctx.float("count"), Ok(3.0));
        assert_eq!(ctx.param::<f32>("ratio"), Ok(0.5));
    }

    #[test]
    fn absent_params() {
        let ctx = ctx();
        assert_eq!(ctx.param::<Option<String>>("label"), Ok(None));
        assert_eq!(ctx.param::<Option<i64>>("count"), Ok(Some(3)));
        assert_eq!(ctx.flag("quiet"), Ok(false));
        assert!(matches!(ctx.text("label"), Err(Error::NotFound(m)) if m.contains("`label`")));
        assert!(matches!(ctx.param::<i64>("label"), Err(Error::NotFound(_))));
    }

    #[test]
    fn mismatched_params_are_invalid() {
        let ctx = ctx();
        assert_eq!(
            ctx.integer("greeting"),
            Err(Error::invalid(
                "parameter `greeting` is text, not an integer"
            ))
        );
        assert!(matches!(ctx.text("count"), Err(Error::Invalid(_))));
        assert!(matches!(ctx.flag("greeting"), Err(Error::Invalid(_))));
        assert!(matches!(
            ctx.param::<Option<bool>>("count"),
            Err(Error::Invalid(_))
        ));
        assert_eq!(
            ctx.param::<u32>("big"),
            Err(Error::invalid(format!(
                "parameter `big` is {}, out of range for u32",
                i64::MAX
            )))
        );
        assert!(matches!(
            ctx.param::<u64>("negative"),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn target_needs_a_workload() {
        assert_eq!(ctx().target(), Ok(WorkloadRef::new("shop", "db")));
        let no_workload = Context::builder("backup", "shop").build();
        assert!(matches!(no_workload.target(), Err(Error::Invalid(m)) if m.contains("--workload")));
    }

    #[test]
    fn later_phases_win_and_restore_point_is_the_fallback() {
        let ctx = Context::builder("restorePosthook", "shop")
            .phase(
                "restorePrehook",
                Outputs::new()
                    .value("replicas", 3)
                    .artifact(Artifact::new("state").value("v", "prehook")),
            )
            .phase(
                "restore",
                Outputs::new()
                    .value("replicas", 0)
                    .artifact(Artifact::new("state").value("v", "restore")),
            )
            .restore_artifact(Artifact::new("dump").value("bytes", 10))
            .restore_artifact(Artifact::new("state").value("v", "restore point"))
            .restore_value("replicas", 9)
            .restore_value("stop-lsn", "0/3000100")
            .failure(Error::timed_out("pg_restore"))
            .build();
        assert_eq!(ctx.value("replicas"), Ok("0"));
        assert_eq!(ctx.value("stop-lsn"), Ok("0/3000100"));
        assert_eq!(ctx.restore_point_values().len(), 2);
        assert_eq!(
            ctx.phase("restorePrehook").and_then(|o| o.get("replicas")),
            Some("3")
        );
        assert_eq!(
            ctx.artifact("state").map(|a| a.get("v")),
            Ok(Some("restore"))
        );
        assert_eq!(ctx.artifact("dump").map(|a| a.get("bytes")), Ok(Some("10")));
        assert!(matches!(ctx.artifact("nope"), Err(Error::NotFound(_))));
        assert!(matches!(ctx.value("nope"), Err(Error::NotFound(_))));
        assert_eq!(ctx.phases().len(), 2);
        assert_eq!(ctx.restore_point().len(), 2);
        assert_eq!(ctx.failure(), Some(&Error::timed_out("pg_restore")));
    }

    #[test]
    fn a_stopped_phase_gives_its_checkpoints_but_is_not_a_completed_phase() {
        let ctx = Context::builder("backupPosthook", "shop")
            .stopped_phase("backupPrehook", Outputs::new().value("replicas", 2))
            .failure(Error::timed_out("deadline"))
            .build();
        assert_eq!(ctx.value("replicas"), Ok("2"));
        assert_eq!(ctx.phase("backupPrehook"), None);
        assert!(!ctx.phases()[0].completed());
    }

    #[test]
    fn converts_wit_inputs() {
        let inputs = wit::Inputs {
            action_id: "a1".into(),
            namespace: "shop".into(),
            workload: Some("db".into()),
            params: vec![("n".into(), types::ParamValue::Integer(7))],
            phases: vec![wit::Phase {
                action: "backupPrehook".into(),
                completed: true,
                outputs: wit::Outputs {
                    artifacts: vec![],
                    values: vec![("k".into(), "v".into())],
                },
            }],
            failure: Some(types::Error::Failed("boom".into())),
            artifacts: vec![types::Artifact {
                name: "dump".into(),
                values: vec![],
                reference: vec![],
            }],
            point_values: vec![("label".into(), "l".into())],
        };
        let description = crate::Description::new("db", "1.0.0")
            .param(crate::Param::integer("n"))
            .param(crate::Param::flag("quiet"));
        let ctx = Context::from_wit("backupPosthook".into(), inputs, &description);
        assert_eq!(ctx.action(), "backupPosthook");
        assert_eq!(ctx.action_id(), "a1");
        assert_eq!(ctx.workload(), Some("db"));
        assert_eq!(ctx.integer("n"), Ok(7));
        assert_eq!(ctx.value("k"), Ok("v"));
        assert_eq!(ctx.failure(), Some(&Error::failed("boom")));
        assert_eq!(ctx.artifact("dump").map(Artifact::name), Ok("dump"));
        assert_eq!(ctx.params().count(), 1);
        assert_eq!(ctx.value("label"), Ok("l"));
        // Declared and absent reads as absent; a misspelt name is the blueprint's mistake.
        assert_eq!(ctx.flag("quiet"), Ok(false));
        let e = ctx.flag("quite").expect_err("undeclared");
        assert!(matches!(e, Error::Invalid(_)), "{e:?}");
        assert!(e.to_string().contains("`quite` is not declared"), "{e}");
        assert!(e.to_string().contains("n, quiet"), "{e}");
        assert!(ctx.text("quite").is_err() && ctx.param::<Option<i64>>("quite").is_err());
        // A hand-built context without a description cannot tell.
        assert_eq!(ctx_without_description().flag("quite"), Ok(false));
    }

    fn ctx_without_description() -> Context {
        Context::builder("backup", "shop").build()
    }
}
