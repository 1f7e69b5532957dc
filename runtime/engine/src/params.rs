//! Checking user-supplied `k=v` parameters against a blueprint's declared types.

use crate::bindings::types::ParamValue;
use crate::blueprint::{ParamKind, ParamSpec};
use crate::error::{Error, Result};

/// Parses one value as `spec` declares it.
pub(crate) fn parse(spec: &ParamSpec, raw: &str) -> std::result::Result<ParamValue, String> {
    let rule = spec.rule();
    if let Some(why) = rule.refusal(raw) {
        return Err(why);
    }
    let refused = || rule.kind.expected().to_string();
    match spec.kind {
        ParamKind::Text => Ok(ParamValue::Text(raw.to_string())),
        ParamKind::Integer => (raw.trim().parse().map(ParamValue::Integer)).map_err(|_| refused()),
        ParamKind::Float => (raw.trim().parse().map(ParamValue::Float)).map_err(|_| refused()),
        ParamKind::Boolean => (raw.trim().parse().map(ParamValue::Boolean)).map_err(|_| refused()),
    }
}

/// Validates `given` against `specs` and applies defaults; the result is in declaration order.
pub(crate) fn validate(
    specs: &[ParamSpec],
    given: &[(String, String)],
) -> Result<Vec<(String, ParamValue)>> {
    validate_as(specs, given, "--param ")
}

/// Checks parameter values as a run will (names, kinds, ranges, choices, the required ones
/// given, the blueprint's defaults), for what schedules runs (a policy, a binding), so a bad
/// value is refused when it is written, not when it runs. Errors name a parameter as
/// `params: NAME=VALUE`.
pub fn check_params(specs: &[ParamSpec], given: &[(String, String)]) -> Result<()> {
    validate_as(specs, given, "params: ").map(|_| ())
}

/// [`validate`], its errors naming a parameter after `flag` (`--param `).
fn validate_as(
    specs: &[ParamSpec],
    given: &[(String, String)],
    flag: &str,
) -> Result<Vec<(String, ParamValue)>> {
    for (i, (name, value)) in given.iter().enumerate() {
        if !specs.iter().any(|s| s.name == *name) {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            let accepts = if known.is_empty() {
                "it accepts no parameters".to_string()
            } else {
                format!("it accepts {}", known.join(", "))
            };
            return Err(Error::InvalidParam(format!(
                "{flag}{name}={value}: the blueprint has no parameter {name:?}; {accepts}"
            )));
        }
        if given[..i].iter().any(|(n, _)| n == name) {
            return Err(Error::InvalidParam(format!(
                "{flag}{name} is given more than once"
            )));
        }
    }
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = &spec.name;
        let value = match given.iter().find(|(n, _)| n == name) {
            Some((_, raw)) => parse(spec, raw).map_err(|why| {
                Error::InvalidParam(format!("{flag}{name}={raw}: {why}"))
            })?,
            None => match &spec.default {
                Some(default) => parse(spec, default).map_err(|why| {
                    Error::InvalidParam(format!(
                        "the blueprint's default for parameter {name:?} ({default:?}) is malformed: {why}; \
                         pass {flag}{name}=… or fix the blueprint"
                    ))
                })?,
                None if spec.required => {
                    return Err(Error::InvalidParam(format!(
                        "missing {flag}{name}=…: the parameter is required ({}; {})",
                        spec.kind, spec.description
                    )));
                }
                None => continue,
            },
        };
        out.push((name.clone(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        name: &str,
        kind: ParamKind,
        required: bool,
        default: Option<&str>,
        choices: &[&str],
    ) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            kind,
            description: String::new(),
            required,
            default: default.map(Into::into),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            minimum: None,
            maximum: None,
        }
    }

    fn given(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn types_defaults_and_choices() {
        let specs = [
            spec("replicas", ParamKind::Integer, false, Some("1"), &[]),
            spec("mode", ParamKind::Text, false, None, &["fast", "safe"]),
            spec("db", ParamKind::Text, true, None, &[]),
        ];
        let err =
            validate(&specs, &given(&[("replicas", "abc"), ("db", "x")])).expect_err("bad integer");
        assert_eq!(err.to_string(), "--param replicas=abc: expected an integer");
        let err =
            validate(&specs, &given(&[("mode", "slow"), ("db", "x")])).expect_err("bad choice");
        assert_eq!(
            err.to_string(),
            "--param mode=slow: expected one of fast, safe"
        );
        let err = validate(&specs, &given(&[])).expect_err("missing");
        assert!(err.to_string().starts_with("missing --param db=…"), "{err}");
        let err = validate(&specs, &given(&[("nope", "1")])).expect_err("unknown");
        assert!(err.to_string().contains("no parameter \"nope\""), "{err}");
        let ok = validate(&specs, &given(&[("db", "x")])).expect("valid");
        assert_eq!(ok.len(), 2);
        assert!(matches!(ok[0].1, ParamValue::Integer(1)));
    }

    #[test]
    fn integer_bounds() {
        let bounded = |min, max| ParamSpec {
            minimum: min,
            maximum: max,
            ..spec("n", ParamKind::Integer, true, None, &[])
        };
        let check = |spec: &ParamSpec, raw: &str| {
            validate(std::slice::from_ref(spec), &given(&[("n", raw)])).map_err(|e| e.to_string())
        };
        let port = bounded(Some(1), Some(65535));
        assert!(check(&port, "1").is_ok());
        assert!(check(&port, "65535").is_ok());
        for bad in ["0", "65536", "-1"] {
            assert_eq!(
                check(&port, bad).expect_err("out of range"),
                format!("--param n={bad}: expected an integer from 1 to 65535")
            );
        }
        assert_eq!(
            check(&bounded(Some(1), None), "0").expect_err("below"),
            "--param n=0: expected an integer of at least 1"
        );
        assert_eq!(
            check(&bounded(None, Some(9)), "10").expect_err("above"),
            "--param n=10: expected an integer of at most 9"
        );
        // A default out of its own bounds is the blueprint's fault, and said so.
        let spec = ParamSpec {
            default: Some("0".into()),
            required: false,
            ..bounded(Some(1), None)
        };
        let err = validate(&[spec], &[]).expect_err("bad default").to_string();
        assert!(
            err.contains("the blueprint's default for parameter \"n\""),
            "{err}"
        );
    }

    #[test]
    fn defaults_and_choices_must_be_values_the_parameter_takes() {
        let problem = |kind, default: Option<&str>, choices: &[&str]| {
            let mut spec = spec("p", kind, false, default, choices);
            spec.maximum = (kind == ParamKind::Integer).then_some(10);
            spec.problem().unwrap_or_default()
        };
        assert_eq!(problem(ParamKind::Integer, Some("7"), &[]), "");
        assert!(problem(ParamKind::Integer, Some("abc"), &[]).contains("default \"abc\""));
        assert!(problem(ParamKind::Integer, Some("11"), &[]).contains("at most 10"));
        assert!(problem(ParamKind::Integer, None, &["1", "x"]).contains("choice \"x\""));
        assert!(problem(ParamKind::Text, Some("z"), &["a", "b"]).contains("expected one of a, b"));
        assert!(problem(ParamKind::Boolean, Some("maybe"), &[]).contains("true or false"));
        assert_eq!(problem(ParamKind::Text, Some("a"), &["a", "b"]), "");
    }

    #[test]
    fn a_description_names_each_action_and_parameter_once() {
        let action = |name: &str| crate::blueprint::ActionSpec {
            name: name.into(),
            description: String::new(),
        };
        let mut d = crate::blueprint::Description {
            name: "b".into(),
            version: "1".into(),
            description: String::new(),
            actions: vec![action("backup"), action("restore")],
            parameters: vec![spec("a", ParamKind::Text, false, None, &[])],
            capabilities: Vec::new(),
            min_runtime: "0.1.0".into(),
        };
        assert_eq!(d.problem(), None);
        d.actions.push(action("backup"));
        assert!(
            d.problem()
                .is_some_and(|p| p.contains("action \"backup\" twice"))
        );
        d.actions.pop();
        d.parameters
            .push(spec("a", ParamKind::Integer, false, None, &[]));
        assert!(
            d.problem()
                .is_some_and(|p| p.contains("parameter \"a\" twice"))
        );
    }

    #[test]
    fn bounds_only_on_integers_and_in_order() {
        let mut spec = spec("n", ParamKind::Integer, false, None, &[]);
        assert_eq!(spec.problem(), None);
        spec.minimum = Some(5);
        spec.maximum = Some(4);
        assert!(
            spec.problem()
                .is_some_and(|p| p.contains("minimum (5) above its maximum (4)"))
        );
        spec.kind = ParamKind::Text;
        spec.maximum = None;
        assert!(
            spec.problem()
                .is_some_and(|p| p.contains("only integers take"))
        );
    }
}
