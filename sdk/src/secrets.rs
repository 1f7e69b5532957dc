//! Values the operator granted to this run (capability [`Secrets`](crate::Capability::Secrets)):
//! credentials and configuration that must not travel as parameters in clear.

use crate::Result;
use crate::wit::bindings::cairn::blueprint::secrets as wit;
use crate::wit::host;

/// The value of the granted secret `name`; [`Error::NotFound`](crate::Error::NotFound) if the
/// operator granted none by that name.
pub fn get(name: &str) -> Result<String> {
    host("secrets.get", || wit::get(name))
}
