//! A blueprint that needs a runtime newer than any: refused to run, still described.

use cairn_sdk::{Blueprint, Context, Description, Outputs, Result};

struct FutureRuntime;

impl Blueprint for FutureRuntime {
    fn describe() -> Description {
        Description::new("future-runtime", "0.1.0")
            .action("backup", "Never runs here")
            .requires_runtime("99.0.0")
    }

    fn run(_action: &str, _ctx: &Context) -> Result<Outputs> {
        Ok(Outputs::new())
    }
}

cairn_sdk::export!(FutureRuntime);
