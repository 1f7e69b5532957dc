//! The rules of the `cairn:blueprint` contract that both sides apply: the runtime refuses what
//! breaks them, and the SDK's `FakeHost` refuses it too, in the same words, so a blueprint's
//! native tests fail where a run would. Plain functions over strings, with no dependencies:
//! the SDK builds them into every blueprint.

/// The most tags a blueprint may put on one export: enough to filter by application,
/// database, schema and a few of its own; few enough to keep snapshot listings readable.
pub const MAX_EXPORT_TAGS: usize = 16;

/// The longest tag key: a label, not data.
pub const MAX_TAG_KEY: usize = 63;

/// The longest tag value in bytes: a name or a short description, not data.
pub const MAX_TAG_VALUE: usize = 256;

/// Tag keys the host sets itself on every export (the phase that wrote it, the target, and the
/// blueprint's name and digest); a blueprint may not set them.
pub const HOST_TAG_KEYS: &[&str] = &[
    "action",
    "namespace",
    "workload",
    "blueprint",
    "blueprint-digest",
];

/// Checks a blueprint's export tags: at most [`MAX_EXPORT_TAGS`], unique keys of
/// `[a-z0-9][a-z0-9._-]{0,62}` outside [`HOST_TAG_KEYS`], values of at most 256 bytes of
/// printable text without `=` or `,` (snapshot listings join tags with commas). The error is
/// one line naming the tag and the rule.
pub fn check_tags(tags: &[(String, String)]) -> Result<(), String> {
    if tags.len() > MAX_EXPORT_TAGS {
        return Err(format!(
            "{} export tags are over the limit of {MAX_EXPORT_TAGS}; keep the ones users filter by",
            tags.len()
        ));
    }
    for (i, (key, value)) in tags.iter().enumerate() {
        let key_ok = key.len() <= MAX_TAG_KEY
            && key
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && key.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if !key_ok {
            return Err(format!(
                "export tag key {key:?} is invalid: use 1 to {MAX_TAG_KEY} of a-z, 0-9, '.', '_', '-', \
                 starting with a letter or digit"
            ));
        }
        if HOST_TAG_KEYS.contains(&key.as_str()) {
            return Err(format!(
                "export tag key {key:?} is set by the host on every export; name the blueprint's tag \
                 otherwise"
            ));
        }
        if tags[..i].iter().any(|(k, _)| k == key) {
            return Err(format!("export tag key {key:?} is given twice"));
        }
        if value.len() > MAX_TAG_VALUE {
            return Err(format!(
                "export tag {key:?} has a value of {} bytes, over the limit of {MAX_TAG_VALUE}",
                value.len()
            ));
        }
        if let Some(c) = refused_in_tag_value(value) {
            return Err(format!(
                "export tag {key:?} has a value with {c:?}; a value is printable text without '=' or ','"
            ));
        }
    }
    Ok(())
}

/// Whether `value` can be an export tag's value: at most 256 bytes of printable text without
/// `=` or `,`.
pub fn is_tag_value(value: &str) -> bool {
    value.len() <= MAX_TAG_VALUE && refused_in_tag_value(value).is_none()
}

/// The first character a tag's value may not hold: a control character, `=` or `,`.
fn refused_in_tag_value(value: &str) -> Option<char> {
    value
        .chars()
        .find(|c| c.is_control() || matches!(c, '=' | ','))
}

/// What is wrong with `name` as an export name or a blueprint's name (both become path
/// components and tag values), if anything: 1 to 128 of `[A-Za-z0-9._-]`, not starting with a
/// dot.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 128 {
        return Some("it must be 1 to 128 characters long");
    }
    if name.starts_with('.') {
        return Some("it must not start with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Some("use only letters, digits, '.', '_' and '-'");
    }
    None
}

/// Whether `name` can name an action: 1 to 64 ASCII letters, digits, `-` or `_`, starting with
/// a letter (`backupPrehook`, `verify-dump`), as `cairn run --action` takes it.
pub fn is_action_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// How many sessions one run may hold open at once: a few long-lived shells (`psql`,
/// `redis-cli`) a blueprint drives across its phases, each holding a process and its pipes.
pub const MAX_SESSIONS: usize = 8;

/// Why the runtime refuses `name` as a session's name, if it does: 1 to 63 letters, digits,
/// `-`, `_` or `.`.
pub fn session_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    (!ok).then(|| format!("session name `{name}` is not 1 to 63 letters, digits, `-`, `_` or `.`"))
}

/// The runtime's refusal of a call on session `name` when none by that name is open.
pub fn no_session(name: &str) -> String {
    format!(
        "no session `{name}` is open in this run; open it with session-open in this or an \
         earlier phase"
    )
}

/// The refusal of a call that needs capability `cap`, which the blueprint's `describe()` does
/// not declare: granting it would not help.
pub fn not_declared(cap: impl std::fmt::Display) -> String {
    format!(
        "capability `{cap}` is not declared by the blueprint's describe(), so it may not use it \
         whatever is granted; declare it (Description::capability) and rebuild"
    )
}

/// The refusal of a call that needs capability `cap`, declared but not granted to the run. It
/// starts with [`not_granted_lead`], which a blueprint may match on to go on without it.
pub fn not_granted(cap: impl std::fmt::Display) -> String {
    format!(
        "{} grant it (`--grant {cap}` on `cairn run` and `policy restore`, a policy's or \
         binding's `grants:`)",
        not_granted_lead(&cap)
    )
}

/// How [`not_granted`] starts: what tells "not granted" from every other refusal (not
/// declared, from `describe()`, past the audit log's cap).
pub fn not_granted_lead(cap: impl std::fmt::Display) -> String {
    format!("capability `{cap}` not granted;")
}

/// The refusal of `pipe-from` or `write` on export `name` once a command piped into it exited
/// non-zero after writing: `why` says so (`the command piped into it exited with status 2
/// after writing 1 MiB`). Its output may be cut short, and a retry would seal a cut dump
/// followed by a whole one.
pub fn export_ended(name: &str, why: &str) -> String {
    format!(
        "export {name:?} takes no more data: {why}, so its output may be cut short; finish the \
         export as it is, or drop it and write a new one (under another name) from the start"
    )
}

/// Why an export takes no more data ([`export_ended`]): the command piped into it exited with
/// `exit_code` after writing `bytes`.
pub fn export_ended_by(exit_code: i32, bytes: u64) -> String {
    format!(
        "the command piped into it exited with status {exit_code} after writing {}",
        human_bytes(bytes)
    )
}

/// `MAJOR[.MINOR[.PATCH]]` (a `-` or `+` suffix of letters, digits, `.` and `-` ignored) as
/// numbers, the versions a blueprint and the runtime it needs are given in. Nothing else is
/// taken (blanks around it aside), so a version is safe to print as it is.
pub fn version_parts(s: &str) -> Option<(u64, u64, u64)> {
    // Blanks around it, taken before, still are (blueprints registered with one load).
    let s = s.trim();
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
    {
        return None;
    }
    let core = s.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().unwrap_or("0").parse().ok()?;
    let patch = parts.next().unwrap_or("0").parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// What is wrong with a blueprint's description apart from its parameters' own declarations,
/// if anything: its version and the runtime it needs, its actions' names, an action or a
/// parameter declared twice (a run could not tell which is meant).
pub fn description_problem<'a>(
    version: &str,
    min_runtime: &str,
    actions: impl IntoIterator<Item = &'a str>,
    parameters: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let twice = |names: Vec<&'a str>| {
        names
            .iter()
            .enumerate()
            .find(|(i, n)| names[..*i].contains(n))
            .map(|(_, n)| n.to_string())
    };
    if version_parts(version).is_none() {
        return Some(format!(
            "its version {version:?} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.4.0)"
        ));
    }
    if version_parts(min_runtime).is_none() {
        return Some(format!(
            "the runtime it requires, {min_runtime:?}, is not a semantic version (e.g. 0.1.0)"
        ));
    }
    let actions: Vec<&str> = actions.into_iter().collect();
    if actions.is_empty() {
        return Some(
            "it declares no action, so nothing could run it: declare its actions (backup, \
             restore, ...) in describe()"
                .to_owned(),
        );
    }
    if let Some(name) = actions.iter().find(|a| !is_action_name(a)) {
        return Some(format!(
            "it declares an action named {name:?}: an action's name is 1 to 64 letters, digits, \
             `-` or `_`, starting with a letter (as `cairn run --action` takes it)"
        ));
    }
    if let Some(name) = twice(actions) {
        return Some(format!("it declares the action {name:?} twice"));
    }
    let parameters: Vec<&str> = parameters.into_iter().collect();
    if let Some(name) = parameters.iter().find(|p| !is_action_name(p)) {
        return Some(format!(
            "it declares a parameter named {name:?}: a parameter's name is 1 to 64 letters, \
             digits, `-` or `_`, starting with a letter (as `--param NAME=VALUE` and a policy's \
             `params:` take it)"
        ));
    }
    if let Some(name) = twice(parameters) {
        return Some(format!("it declares the parameter {name:?} twice"));
    }
    None
}

/// `text` with what could change how a terminal shows it written as escapes: control
/// characters (a newline, a carriage return, a terminal escape; a tab stays) and the
/// bidirectional overrides and isolates (which reorder what follows). Text a blueprint or a
/// workload wrote then stays one line of the operator's output, and cannot move the cursor,
/// recolour the screen or forge a line of Cairn's own.
pub fn controls_escaped(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if unsafe_char(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Why the runtime refuses a name a phase returned (an artifact's, an artifact value's or an
/// output value's; `what` says which: `artifact`, `artifact value`, `output value`), if it
/// does. Names are shown and looked up (a restore's `--from` names an artifact): never empty,
/// never holding what a terminal obeys.
pub fn output_name_problem(what: &str, name: &str) -> Option<String> {
    if name.is_empty() {
        Some(format!(
            "the blueprint returned an {what} with an empty name: name it"
        ))
    } else if controls_escaped(name).len() != name.len() {
        Some(format!(
            "the blueprint returned an {what} named `{}`, which holds control characters: name \
             it in plain text",
            controls_escaped(name)
        ))
    } else {
        None
    }
}

/// The largest description a blueprint may give of itself, as the JSON the runtime keeps in
/// the catalog, lists and prints: a sentence or two an action and a parameter fit many times
/// over, and a generated one cannot bloat every listing.
pub const MAX_DESCRIPTION_BYTES: usize = 1 << 20;

/// Why the runtime refuses a description of `size` bytes, if it does. A size that rounds to
/// the limit's own figure is given in bytes, and the limit too, so the message never reads
/// "1 MiB, over the limit of 1 MiB".
pub fn description_size_problem(size: usize) -> Option<String> {
    (size > MAX_DESCRIPTION_BYTES).then(|| {
        let (mut size_shown, mut limit_shown) = (
            human_bytes(size as u64),
            human_bytes(MAX_DESCRIPTION_BYTES as u64),
        );
        if size_shown == limit_shown {
            size_shown = format!("{size} bytes");
            limit_shown = format!("{limit_shown} ({MAX_DESCRIPTION_BYTES} bytes)");
        }
        format!(
            "it describes itself in {size_shown}, over the limit of {limit_shown}: say what \
             each action and parameter is in a sentence or two"
        )
    })
}

/// A blueprint's description in the shape the runtime keeps it (its `Description` in
/// `runtime/engine/src/blueprint.rs`, serialized as JSON), so that both sides measure it
/// against [`MAX_DESCRIPTION_BYTES`] alike.
#[derive(Debug, Clone, Default)]
pub struct DescriptionShape<'a> {
    /// The blueprint's name.
    pub name: &'a str,
    /// Its own version.
    pub version: &'a str,
    /// What it is for.
    pub description: &'a str,
    /// Its actions: name and description.
    pub actions: Vec<(&'a str, &'a str)>,
    /// Its parameters.
    pub parameters: Vec<ParamShape<'a>>,
    /// The names of its capabilities (`exec`).
    pub capabilities: Vec<&'a str>,
    /// The oldest runtime it runs on.
    pub min_runtime: &'a str,
}

/// A parameter in a [`DescriptionShape`]: its rule, with what is kept beside it.
#[derive(Debug, Clone, Copy)]
pub struct ParamShape<'a> {
    /// Its name, kind, choices, bounds and default.
    pub rule: ParamRule<'a>,
    /// What it means.
    pub description: &'a str,
    /// Whether a run must give it.
    pub required: bool,
}

impl DescriptionShape<'_> {
    /// The bytes of the JSON the runtime measures: compact, keys in the order of its fields,
    /// strings escaped as `serde_json` escapes them, `default` written as `null` when absent,
    /// `minimum` and `maximum` left out when absent.
    pub fn json_len(&self) -> usize {
        // Each `"key":` is its name, two quotes and a colon; each item but the first, a comma.
        let key = |k: &str| k.len() + 3;
        let list = |items: &mut dyn Iterator<Item = usize>| {
            let (count, sum) = items.fold((0usize, 0), |(n, s), len| (n + 1, s + len));
            2 + sum + count.saturating_sub(1)
        };
        let actions = list(&mut self.actions.iter().map(|(name, description)| {
            2 + key("name")
                + json_str_len(name)
                + 1
                + key("description")
                + json_str_len(description)
        }));
        let parameters = list(&mut self.parameters.iter().map(|p| {
            let rule = &p.rule;
            let bound = |k: &str, v: Option<i64>| v.map_or(0, |v| 1 + key(k) + v.to_string().len());
            2 + key("name")
                + json_str_len(rule.name)
                + 1
                + key("kind")
                + json_str_len(rule.kind.name())
                + 1
                + key("description")
                + json_str_len(p.description)
                + 1
                + key("required")
                + if p.required { 4 } else { 5 }
                + 1
                + key("default")
                + rule.default.map_or(4, json_str_len)
                + 1
                + key("choices")
                + list(&mut rule.choices.iter().map(|c| json_str_len(c)))
                + bound("minimum", rule.minimum)
                + bound("maximum", rule.maximum)
        }));
        let capabilities = list(&mut self.capabilities.iter().map(|c| json_str_len(c)));
        2 + key("name")
            + json_str_len(self.name)
            + 1
            + key("version")
            + json_str_len(self.version)
            + 1
            + key("description")
            + json_str_len(self.description)
            + 1
            + key("actions")
            + actions
            + 1
            + key("parameters")
            + parameters
            + 1
            + key("capabilities")
            + capabilities
            + 1
            + key("min_runtime")
            + json_str_len(self.min_runtime)
    }
}

/// The bytes of `s` as a JSON string, quotes included, escaped as `serde_json` escapes it:
/// `"`, `\` and the short-named controls in two bytes, other controls as `\u00XX`, the rest as
/// it is.
fn json_str_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\x08' | b'\x0c' | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// `64 MiB`, `1.5 GiB`, `512 bytes`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64;
    let mut unit = "";
    for u in UNITS {
        value /= 1024.0;
        unit = u;
        if value < 1024.0 {
            break;
        }
    }
    let rounded = (value * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0} {unit}")
    } else {
        format!("{rounded:.1} {unit}")
    }
}

/// `5s`, `1.5s`, `250ms`, `30m`.
pub fn human_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(86_400_000) {
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The kind of a blueprint's parameter; the host checks values against it before `run` is
/// called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Any text.
    Text,
    /// A 64-bit signed integer, within the parameter's bounds.
    Integer,
    /// A finite 64-bit float.
    Float,
    /// `true` or `false`.
    Boolean,
}

impl Kind {
    /// Its name in messages (`integer`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Integer => "integer",
            Kind::Float => "float",
            Kind::Boolean => "boolean",
        }
    }

    /// What a value of this kind must be, as a refusal says it (`expected an integer`).
    pub fn expected(self) -> &'static str {
        match self {
            Kind::Text => "expected text",
            Kind::Integer => "expected an integer",
            Kind::Float => "expected a number",
            Kind::Boolean => "expected true or false",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A parameter's declaration, as both sides check it.
#[derive(Debug, Clone, Copy)]
pub struct ParamRule<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its kind.
    pub kind: Kind,
    /// When not empty, the only values accepted.
    pub choices: &'a [String],
    /// For an integer: the smallest value accepted.
    pub minimum: Option<i64>,
    /// For an integer: the largest value accepted.
    pub maximum: Option<i64>,
    /// Its default, as a user would write it.
    pub default: Option<&'a str>,
}

impl ParamRule<'_> {
    /// Why a value written as `raw` (as a user writes it) is refused, if it is: not one of the
    /// choices, not of the kind, out of the bounds.
    pub fn refusal(&self, raw: &str) -> Option<String> {
        if !self.choices.is_empty() && !self.choices.iter().any(|c| c == raw) {
            return Some(format!("expected one of {}", self.choices.join(", ")));
        }
        match self.kind {
            Kind::Text => None,
            Kind::Integer => {
                let Ok(n) = raw.trim().parse::<i64>() else {
                    return Some(self.kind.expected().to_owned());
                };
                match (self.minimum, self.maximum) {
                    (Some(min), Some(max)) if n < min || n > max => {
                        Some(format!("expected an integer from {min} to {max}"))
                    }
                    (Some(min), _) if n < min => {
                        Some(format!("expected an integer of at least {min}"))
                    }
                    (_, Some(max)) if n > max => {
                        Some(format!("expected an integer of at most {max}"))
                    }
                    _ => None,
                }
            }
            Kind::Float => match raw.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => None,
                _ => Some(self.kind.expected().to_owned()),
            },
            Kind::Boolean => match raw.trim() {
                "true" | "false" => None,
                _ => Some(self.kind.expected().to_owned()),
            },
        }
    }

    /// What is wrong with the declaration itself, if anything: bounds on a kind other than an
    /// integer, a minimum above the maximum, a choice or a default the parameter refuses.
    pub fn problem(&self) -> Option<String> {
        let name = self.name;
        let bounded = self.minimum.is_some() || self.maximum.is_some();
        if bounded && self.kind != Kind::Integer {
            return Some(format!(
                "parameter {name:?} is {} but has a minimum or maximum, which only integers take",
                self.kind.name()
            ));
        }
        if let (Some(min), Some(max)) = (self.minimum, self.maximum)
            && min > max
        {
            return Some(format!(
                "parameter {name:?} has a minimum ({min}) above its maximum ({max})"
            ));
        }
        // Every choice a value of its kind and range; the default one of the values it takes.
        let any = ParamRule {
            choices: &[],
            ..*self
        };
        if let Some((choice, why)) = self
            .choices
            .iter()
            .find_map(|c| any.refusal(c).map(|why| (c, why)))
        {
            return Some(format!(
                "parameter {name:?} offers the choice {choice:?}, which its kind refuses: {why}"
            ));
        }
        let default = self.default?;
        self.refusal(default).map(|why| {
            format!("parameter {name:?} has the default {default:?}, which it refuses: {why}")
        })
    }
}

/// A run's secret values, as both sides look for them in what a blueprint writes (logs,
/// errors, outputs, export names and tags) and blank them.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// By name; longest first (so that a secret holding another is blanked whole).
    values: Vec<(String, String)>,
}

impl Secrets {
    /// Shorter values (`1`, `yes`) would be found in too much ordinary text to hide.
    pub const FINDABLE: usize = 4;

    /// The secrets worth hiding of `secrets` (by name): at least [`Secrets::FINDABLE`] bytes
    /// long, and in none of the run's `public` values (a parameter, in the catalog anyway).
    pub fn of(secrets: &std::collections::BTreeMap<String, String>, public: &[String]) -> Self {
        let mut values: Vec<(String, String)> = secrets
            .iter()
            .filter(|(_, v)| v.len() >= Self::FINDABLE)
            .filter(|(_, v)| !public.iter().any(|p| p.contains(v.as_str())))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        values.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        Secrets { values }
    }

    /// The secrets by name, longest first.
    pub fn values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The longest secret's length (0 without any).
    pub fn longest(&self) -> usize {
        self.values.first().map_or(0, |(_, v)| v.len())
    }

    /// `text` with every secret value in it replaced by `[secret NAME]`.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let mut out = std::borrow::Cow::Borrowed(text);
        for (name, value) in &self.values {
            if out.contains(value.as_str()) {
                out = std::borrow::Cow::Owned(
                    out.replace(value.as_str(), &format!("[secret {name}]")),
                );
            }
        }
        out
    }

    /// The name of a secret `text` holds.
    pub fn held_by(&self, text: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(_, v)| text.contains(v.as_str()))
            .map(|(k, _)| k.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn refused(pairs: &[(&str, &str)]) -> String {
        check_tags(&tags(pairs)).expect_err("refused")
    }

    #[test]
    fn export_tags_follow_the_rules() {
        let ok = [
            ("app", "postgres"),
            ("database", "shop floor (eu)"),
            ("0.x_y-z", ""),
        ];
        assert_eq!(check_tags(&tags(&ok)), Ok(()));
        let longest = "k".repeat(MAX_TAG_KEY);
        let widest = "v".repeat(MAX_TAG_VALUE);
        assert_eq!(check_tags(&tags(&[(&longest, &widest)])), Ok(()));
        assert!(is_tag_value(&widest) && !is_tag_value(&format!("{widest}v")));

        let many: Vec<_> = (0..=MAX_EXPORT_TAGS)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(
            check_tags(&many)
                .expect_err("too many")
                .contains("limit of 16")
        );
        assert!(check_tags(&many[..MAX_EXPORT_TAGS]).is_ok());

        for key in [
            "",
            "App",
            "-app",
            ".app",
            "a b",
            "a=b",
            "é",
            &"k".repeat(64),
        ] {
            assert!(
                refused(&[(key, "v")]).contains("is invalid: use 1 to 63"),
                "{key:?}"
            );
        }
        for key in HOST_TAG_KEYS {
            assert_eq!(
                refused(&[(key, "x")]),
                format!(
                    "export tag key {key:?} is set by the host on every export; name the \
                     blueprint's tag otherwise"
                )
            );
        }
        assert!(refused(&[("app", "a"), ("app", "b")]).contains("given twice"));
        assert!(refused(&[("app", &"v".repeat(257))]).contains("257 bytes"));
        for value in ["a=b", "a,b", "line\nbreak", "tab\t"] {
            assert!(
                refused(&[("app", value)]).contains("printable text without"),
                "{value:?}"
            );
            assert!(!is_tag_value(value), "{value:?}");
        }
    }

    #[test]
    fn what_a_terminal_obeys_is_escaped() {
        assert!(matches!(
            controls_escaped("plain\ttext"),
            std::borrow::Cow::Borrowed("plain\ttext")
        ));
        assert_eq!(
            controls_escaped("a\nb\u{1b}]0;title\u{7}c\u{202e}d"),
            "a\\nb\\u{1b}]0;title\\u{7}c\\u{202e}d"
        );
    }

    #[test]
    fn descriptions_follow_the_rules() {
        let check = |v, r, actions: &[&'static str], params: &[&'static str]| {
            description_problem(v, r, actions.iter().copied(), params.iter().copied())
        };
        assert_eq!(
            check("1.4.0", "0.1.0", &["backup", "verify-dump"], &["a"]),
            None
        );
        assert_eq!(version_parts("1.2.3-rc.1+b"), Some((1, 2, 3)));
        assert_eq!(version_parts("2"), Some((2, 0, 0)));
        // A version is printed as it is: nothing a terminal would obey, no blanks.
        assert_eq!(version_parts("0.1.0+\x1b[31m"), None);
        assert_eq!(version_parts("1 .0"), None);
        for (found, says) in [
            (
                check("x", "0.1.0", &["a"], &[]),
                "is not a semantic version",
            ),
            (
                check("1.0.0", "1.2.3.4", &["a"], &[]),
                "\"1.2.3.4\", is not a semantic",
            ),
            (
                check("1.0.0", "0.1.0", &["back up"], &[]),
                "an action named \"back up\"",
            ),
            (
                check("1.0.0", "0.1.0", &["a", "a"], &[]),
                "the action \"a\" twice",
            ),
            (
                check("1.0.0", "0.1.0", &["a"], &["p", "p"]),
                "the parameter \"p\" twice",
            ),
            (
                check("1.0.0", "0.1.0", &["a"], &[""]),
                "a parameter named \"\"",
            ),
            (
                check("1.0.0", "0.1.0", &["a"], &["a=b"]),
                "a parameter named \"a=b\"",
            ),
            (check("1.0.0", "0.1.0", &[], &[]), "declares no action"),
        ] {
            assert!(
                found.as_deref().is_some_and(|f| f.contains(says)),
                "{found:?}"
            );
        }
    }

    #[test]
    fn parameters_follow_the_rules() {
        let rule = |kind, minimum, maximum, default| ParamRule {
            name: "p",
            kind,
            choices: &[],
            minimum,
            maximum,
            default,
        };
        let level = rule(Kind::Integer, Some(1), Some(9), Some("3"));
        assert_eq!(level.problem(), None);
        assert_eq!(level.refusal("9"), None);
        assert_eq!(
            level.refusal("10").as_deref(),
            Some("expected an integer from 1 to 9")
        );
        assert_eq!(level.refusal("x").as_deref(), Some("expected an integer"));
        let text = rule(Kind::Text, Some(1), None, None);
        assert!(
            text.problem()
                .is_some_and(|p| p.contains("only integers take"))
        );
        let upside = rule(Kind::Integer, Some(5), Some(4), None);
        assert!(
            upside
                .problem()
                .is_some_and(|p| p.contains("minimum (5) above"))
        );
        let choices = ["gzip".to_string(), "none".to_string()];
        let zip = ParamRule {
            choices: &choices,
            ..rule(Kind::Text, None, None, Some("zip"))
        };
        assert!(zip.problem().is_some_and(|p| {
            p.contains("default \"zip\", which it refuses: expected one of gzip, none")
        }));
        let ratio = rule(Kind::Float, None, None, None);
        assert_eq!(ratio.refusal("inf").as_deref(), Some("expected a number"));
        let flag = rule(Kind::Boolean, None, None, None);
        assert_eq!(
            flag.refusal("yes").as_deref(),
            Some("expected true or false")
        );
    }

    /// The runtime measures its `Description` with `serde_json`; the shape counts the same
    /// bytes, escapes and absent values included.
    #[test]
    fn a_description_is_measured_as_the_runtime_writes_it() {
        let choices = ["a\"b".to_string(), "\\".to_string()];
        let odd = "tab\t, line\n, bell\u{7}, del\u{7f}, é, \u{202e}";
        let shape = DescriptionShape {
            name: "hello",
            version: "0.1.0",
            description: odd,
            actions: vec![("backup", "Greets"), ("restore", "")],
            parameters: vec![
                ParamShape {
                    rule: ParamRule {
                        name: "level",
                        kind: Kind::Integer,
                        choices: &[],
                        minimum: Some(-3),
                        maximum: Some(i64::MAX),
                        default: Some("2"),
                    },
                    description: odd,
                    required: true,
                },
                ParamShape {
                    rule: ParamRule {
                        name: "mode",
                        kind: Kind::Text,
                        choices: &choices,
                        minimum: None,
                        maximum: None,
                        default: None,
                    },
                    description: "",
                    required: false,
                },
            ],
            capabilities: vec!["exec", "export"],
            min_runtime: "0.1.0",
        };
        let json = serde_json::json!({
            "name": "hello",
            "version": "0.1.0",
            "description": odd,
            "actions": [
                {"name": "backup", "description": "Greets"},
                {"name": "restore", "description": ""},
            ],
            "parameters": [
                {"name": "level", "kind": "integer", "description": odd, "required": true,
                 "default": "2", "choices": [], "minimum": -3, "maximum": i64::MAX},
                {"name": "mode", "kind": "text", "description": "", "required": false,
                 "default": null, "choices": choices},
            ],
            "capabilities": ["exec", "export"],
            "min_runtime": "0.1.0",
        });
        let written = serde_json::to_vec(&json).expect("JSON");
        assert_eq!(shape.json_len(), written.len());
        let empty = DescriptionShape::default();
        let written = serde_json::to_vec(&serde_json::json!({
            "name": "", "version": "", "description": "", "actions": [], "parameters": [],
            "capabilities": [], "min_runtime": "",
        }))
        .expect("JSON");
        assert_eq!(empty.json_len(), written.len());
    }

    /// A size that rounds to the limit's figure is given in bytes.
    #[test]
    fn a_description_just_over_the_limit_says_by_how_much() {
        assert_eq!(description_size_problem(MAX_DESCRIPTION_BYTES), None);
        assert_eq!(
            description_size_problem(MAX_DESCRIPTION_BYTES + 1).as_deref(),
            Some(
                "it describes itself in 1048577 bytes, over the limit of 1 MiB (1048576 bytes): \
                 say what each action and parameter is in a sentence or two"
            )
        );
        assert!(
            description_size_problem(MAX_DESCRIPTION_BYTES * 3 / 2)
                .is_some_and(|p| p.contains("in 1.5 MiB, over the limit of 1 MiB"))
        );
    }

    #[test]
    fn names_follow_the_rules() {
        for good in ["dump", "shop.sql.gz", "a_b-c", &"n".repeat(128)] {
            assert_eq!(name_problem(good), None, "{good:?}");
        }
        for (bad, why) in [
            ("", "1 to 128"),
            (&*"n".repeat(129), "1 to 128"),
            (".hidden", "start with a dot"),
            ("a/b", "only letters"),
            ("a b", "only letters"),
        ] {
            assert!(
                name_problem(bad).is_some_and(|p| p.contains(why)),
                "{bad:?}"
            );
        }
        for good in ["backup", "backupPrehook", "verify-dump", "a_1"] {
            assert!(is_action_name(good), "{good:?}");
        }
        for bad in ["", "1st", "back up", "-x", &"a".repeat(65)] {
            assert!(!is_action_name(bad), "{bad:?}");
        }
    }
}
