//! `cairn blueprint new`: a new blueprint crate that builds, tests and runs as made.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::{UsageError, exit};

/// The files of a new crate: its path within the crate, and its template.
const FILES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../templates/blueprint/Cargo.toml.in"),
    ),
    (
        "src/lib.rs",
        include_str!("../templates/blueprint/lib.rs.in"),
    ),
    (
        "inventory.yaml",
        include_str!("../templates/blueprint/inventory.yaml.in"),
    ),
    (
        ".gitignore",
        include_str!("../templates/blueprint/gitignore.in"),
    ),
    (
        "data/hello.txt",
        "What the blueprint backs up: the workload's `data` directory.\n",
    ),
];

/// Makes the crate `dir` of the blueprint `name` (default: the directory's name), depending on
/// the SDK at `sdk` (default: found), and says what to do next.
pub(crate) fn new(
    dir: &Path,
    name: Option<String>,
    sdk: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let name = match name {
        Some(name) => name,
        None => dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                UsageError(format!(
                    "{} has no name to give the blueprint; pass --name",
                    dir.display()
                ))
            })?,
    };
    if !is_crate_name(&name) {
        return Err(UsageError(format!(
            "{name:?} cannot name a blueprint crate: use 1 to 64 lowercase letters, digits and \
             `-`, starting with a letter (pass --name to name it otherwise than its directory)"
        ))
        .into());
    }
    let sdk = match sdk {
        Some(sdk) => checked_sdk(&sdk).ok_or_else(|| {
            UsageError(format!(
                "--sdk {}: not Cairn's SDK (a directory whose Cargo.toml names the package \
                 cairn-sdk: the sdk/ directory of a Cairn checkout)",
                sdk.display()
            ))
        })?,
        None => found_sdk().ok_or_else(|| {
            UsageError(
                "no Cairn SDK found above this directory or this cairn program: pass --sdk \
                 PATH, the sdk/ directory of a Cairn checkout"
                    .into(),
            )
        })?,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(UsageError(format!(
            "{} exists and is not a directory: name a new directory",
            dir.display()
        ))
        .into());
    }
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(UsageError(format!(
            "{} exists and is not empty: name a new directory",
            dir.display()
        ))
        .into());
    }
    let sdk_text = sdk.to_str().ok_or_else(|| {
        UsageError(format!(
            "the SDK's path {} is not UTF-8, which Cargo.toml cannot hold: pass --sdk through \
             a path that is",
            sdk.display()
        ))
    })?;
    let crate_ident = name.replace('-', "_");
    for (path, template) in FILES {
        let text = template
            .replace("{{name}}", &name)
            .replace("{{crate}}", &crate_ident)
            .replace(
                "{{sdk}}",
                &sdk_text.replace('\\', "\\\\").replace('"', "\\\""),
            );
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot make {}", parent.display()))?;
        }
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    }
    // As a shell takes it: a path with a space (or a quote) quoted.
    let shown = crate::shell_word(&dir.to_string_lossy());
    // Where cargo puts it unless CARGO_TARGET_DIR says otherwise; `build` prints the path.
    let (wasm, prints) = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(_) => ("WASM".to_owned(), "   # prints WASM, the component's path"),
        None => (
            format!("target/wasm32-wasip2/release/{crate_ident}.wasm"),
            "",
        ),
    };
    let target = "--target local:inventory.yaml --workload app";
    outln!(
        "made blueprint {name} in {shown}, with the SDK at {}\nnext:\n  cd {shown}\n  \
         cargo test\n  cairn blueprint build .{prints}\n  cairn run {wasm} --action backup {target} \
         --grant exec,export --output json > backup.json\n  cairn run {wasm} --action restore \
         --from backup.json {target} --grant exec,import",
        sdk.display()
    );
    Ok(ExitCode::from(exit::OK))
}

/// Whether `name` can name both a blueprint and its crate (whose `.wasm` is the name with `_`).
fn is_crate_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-')
}

/// `dir`, made absolute, when it is Cairn's SDK.
fn checked_sdk(dir: &Path) -> Option<PathBuf> {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
    let named = manifest.lines().any(|l| {
        l.split_once('=')
            .is_some_and(|(k, v)| k.trim() == "name" && v.trim() == "\"cairn-sdk\"")
    });
    named.then(|| dir.canonicalize().ok()).flatten()
}

/// The `sdk/` of a Cairn checkout above the current directory, or above this program (a build
/// of the checkout runs from its `target/`).
fn found_sdk() -> Option<PathBuf> {
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|e| e.canonicalize().ok()),
    ];
    starts
        .into_iter()
        .flatten()
        .flat_map(|start| start.ancestors().map(|a| a.join("sdk")).collect::<Vec<_>>())
        .find_map(|candidate| checked_sdk(&candidate))
}
