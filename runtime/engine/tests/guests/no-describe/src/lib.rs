//! A component without the `cairn:blueprint/guest` export: loading it must fail by name.

wit_bindgen::generate!({ path: "wit", world: "no-describe" });

struct NoDescribe;

impl Guest for NoDescribe {
    fn hello() -> String {
        "hello".to_string()
    }
}

export!(NoDescribe);
