//! `cairn:blueprint/secrets`: values the operator granted to this run (capability `secrets`).

use crate::bindings::{HostResult, WitError, secrets};
use crate::capability::Capability;
use crate::state::HostState;

impl secrets::Host for HostState {
    async fn get(&mut self, name: String) -> HostResult<String> {
        let _span =
            tracing::debug_span!("host_call", operation = "secrets.get", name = %name).entered();
        if let Err(e) = self.require(Capability::Secrets) {
            return Ok(Err(e));
        }
        Ok(self.action.secrets.get(&name).cloned().ok_or_else(|| {
            WitError::NotFound(format!("no secret named {name:?} was granted to this run"))
        }))
    }
}
