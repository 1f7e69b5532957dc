//! A blueprint that declares only `exec` and calls `volumes` anyway: the host must refuse the
//! call whatever the run grants.

use cairn_sdk::{Blueprint, Capability, Context, Description, Error, Outputs, Result, volumes};

struct Undeclared;

impl Blueprint for Undeclared {
    fn describe() -> Description {
        Description::new("undeclared", "0.1.0")
            .action("backup", "Snapshots volumes it never declared")
            .capability(Capability::Exec)
    }

    fn run(action: &str, _ctx: &Context) -> Result<Outputs> {
        match action {
            "backup" => match volumes::snapshot(None, &[]) {
                Ok(taken) => Ok(Outputs::new().value("taken", taken.len())),
                Err(e) => Ok(Outputs::new().value("refused", e)),
            },
            other => Err(Error::unknown_action(other)),
        }
    }
}

cairn_sdk::export!(Undeclared);
