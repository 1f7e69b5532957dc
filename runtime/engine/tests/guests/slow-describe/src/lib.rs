//! A blueprint whose `describe()` blocks in a host call (a WASI sleep) instead of returning:
//! the epoch deadline stops only wasm code, so loading it must still end, by name.

wit_bindgen::generate!({ path: "../../../../../wit", world: "blueprint" });

use cairn::blueprint::types::Error;
use exports::cairn::blueprint::guest::{Description, Guest, Inputs, Outputs};

struct SlowDescribe;

impl Guest for SlowDescribe {
    fn describe() -> Description {
        std::thread::sleep(std::time::Duration::from_secs(24 * 3600));
        unreachable!("the host drops describe() long before it wakes")
    }

    fn run(action: String, _inputs: Inputs) -> Result<Outputs, Error> {
        Err(Error::Failed(format!(
            "{action}: never described, never run"
        )))
    }
}

export!(SlowDescribe);
