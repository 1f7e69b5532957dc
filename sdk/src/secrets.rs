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
/// name (or no secrets at all): for credentials a server may not need, such as a password
/// where the server trusts local connections. Other failures are errors.
pub fn get_optional(name: &str) -> Result<Option<String>> {
    match get(name) {
        Ok(value) => Ok(Some(value)),
        Err(crate::Error::NotFound(_) | crate::Error::Denied(_)) => {
            crate::debug!("no secret `{name}` granted; going on without it");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
