//! Values the operator granted to this run (capability [`Secrets`](crate::Capability::Secrets)):
//! credentials and configuration that must not travel as parameters in clear.

use crate::Result;
use crate::wit::bindings::cairn::blueprint::secrets as wit;
use crate::wit::faked;

/// The value of the granted secret `name`; [`Error::NotFound`](crate::Error::NotFound) if the
/// operator granted none by that name.
pub fn get(name: &str) -> Result<String> {
    faked(
        "secrets.get",
        || name.to_owned(),
        || wit::get(name),
        |f| f.secret(name),
    )
}

/// The value of the granted secret `name`, or `None` when the run grants no secret by that
/// name, or not the `secrets` capability: for credentials a server may not need, such as a
/// password where the server trusts local connections. Other failures are errors, above all a
/// blueprint that does not declare [`Secrets`](crate::Capability::Secrets) in `describe()`:
/// the host refuses it every secret whatever the operator grants, and going on without one
/// would hide that behind the server's authentication error.
pub fn get_optional(name: &str) -> Result<Option<String>> {
    match get(name) {
        Ok(value) => Ok(Some(value)),
        // The host's refusal of a declared but ungranted capability, told by its lead (shared
        // with `HostState::require`); its other refusals (not declared, from `describe()`, past
        // the audit log's cap) are errors.
        Err(crate::Error::Denied(why))
            if why.starts_with(&cairn_contract::not_granted_lead(
                crate::Capability::Secrets,
            )) =>
        {
            crate::debug!("the `secrets` capability is not granted; going on without `{name}`");
            Ok(None)
        }
        Err(crate::Error::NotFound(_)) => {
            crate::debug!("no secret `{name}` granted; going on without it");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing::FakeHost;
    use crate::{Blueprint, Capability, Context, Description, Error, Outputs};

    /// Reads `password` if it may, as postgres, mysql and etcd do.
    struct Optional<const DECLARED: bool>;

    impl<const DECLARED: bool> Blueprint for Optional<DECLARED> {
        fn describe() -> Description {
            let d = Description::new("optional", "0.1.0").action("backup", "Reads a password");
            if DECLARED {
                d.capability(Capability::Secrets)
            } else {
                d
            }
        }
        fn run(_: &str, _: &Context) -> Result<Outputs> {
            let got = get_optional("password")?;
            Ok(Outputs::new().value("password", got.is_some()))
        }
    }

    /// Only "not granted" and "no such secret" are `None`.
    #[test]
    fn an_undeclared_secrets_capability_is_an_error_not_none() {
        let ctx = Context::builder("backup", "shop").build();
        let given = FakeHost::new().secret("password", "hunter22");
        let out = given.run::<Optional<true>>("backup", &ctx).expect("read");
        assert_eq!(out.get("password"), Some("true"));
        let out = FakeHost::new()
            .run::<Optional<true>>("backup", &ctx)
            .expect("none given");
        assert_eq!(out.get("password"), Some("false"));
        let ungranted = FakeHost::new()
            .secret("password", "hunter22")
            .grant([Capability::Exec]);
        let out = ungranted
            .run::<Optional<true>>("backup", &ctx)
            .expect("not granted");
        assert_eq!(out.get("password"), Some("false"));
        assert_eq!(
            given.run::<Optional<false>>("backup", &ctx),
            Err(Error::denied(
                "capability `secrets` is not declared by the blueprint's describe(), so it may \
                 not use it whatever is granted; declare it (Description::capability) and rebuild"
            ))
        );
    }
}
