//! A blueprint built against `cairn:blueprint@9.0.0`, a major version the engine does not know.

wit_bindgen::generate!({ path: "wit", world: "blueprint" });

use cairn::blueprint::types::Error;
use exports::cairn::blueprint::guest::{Description, Guest, Inputs, Outputs};

struct Future;

impl Guest for Future {
    fn describe() -> Description {
        Description {
            name: "future".into(),
            version: "9.0.0".into(),
            description: "built against a future contract".into(),
            actions: vec![],
            parameters: vec![],
            capabilities: vec![],
            min_runtime: "9.0.0".into(),
        }
    }

    fn run(_action: String, _inputs: Inputs) -> Result<Outputs, Error> {
        Ok(Outputs {
            artifacts: vec![],
            values: vec![],
        })
    }
}

export!(Future);
