//! `cairn profile …`: location profiles. A profile names a repository with its backend
//! options, its key source and its rate limits, once, in the catalog: `--profile NAME` on
//! `cairn repo` and `cairn run`, and a policy's `export: {profile: NAME}`, use it. The catalog
//! travels in DR exports, so a profile never holds a secret: a credential option and the
//! passphrase are sources (`env:VAR`, `file:PATH`) read when the profile is used.

use std::path::PathBuf;
use std::process::ExitCode;

use cairn_catalog::{Kind, Policy, Profile};

use crate::home::Home;
use crate::{Output, UsageError, exit};

/// `cairn profile …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ProfileCommand {
    /// Add a location profile, or replace the one of the same name.
    Add {
        /// Its name (lowercase letters, digits and dashes).
        name: String,
        /// The repository: a path, or a file://, s3://, az:// or gs:// URL.
        #[arg(long, value_name = "URL")]
        repo: String,
        /// A backend option, KEY=VALUE (repeatable). A credential's value must be a source,
        /// `env:VAR` or `file:PATH`, read when the profile is used.
        #[arg(long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// Where the passphrase comes from: `env:VAR` or `file:PATH`.
        #[arg(long, value_name = "SOURCE")]
        passphrase: Option<String>,
        /// A key file of the repository, instead of a passphrase.
        #[arg(long, value_name = "FILE", conflicts_with = "passphrase")]
        key_file: Option<PathBuf>,
        /// Keep writes to this average rate a second, e.g. 20MiB.
        #[arg(long, value_name = "RATE", value_parser = crate::repo::parse_rate)]
        limit_upload: Option<u64>,
        /// Keep reads to this average rate a second, e.g. 50MiB.
        #[arg(long, value_name = "RATE", value_parser = crate::repo::parse_rate)]
        limit_download: Option<u64>,
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// List the location profiles.
    List {
        /// How to print the result.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete a location profile that no policy exports to.
    Delete {
        /// The profile's name.
        name: String,
    },
}

/// Option keys whose values are credentials: given only as sources. Checked as substrings of
/// the lowercased key, so `aws_secret_access_key`, `azure_storage_account_key`,
/// `azure_storage_master_key`, `aws_sse_customer_key_base64` and `google_service_account_key`
/// are covered, and every alias `object_store` takes for them.
const SECRET_KEYS: &[&str] = &[
    "secret",
    "password",
    "token",
    "account_key",
    "master_key",
    "encryption_key",
    "customer_key",
    "sas",
    "private_key",
];

/// Whether option `key` holds a credential: one of [`SECRET_KEYS`], or an access key (Azure's
/// `access_key`, `azure_storage_access_key`), though not an access key's id, which is not one.
pub(crate) fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| key.contains(s)) || key.ends_with("access_key")
}

/// `source` as a profile keeps it: `env:VAR`, or `file:PATH` made absolute.
fn source(what: &str, source: &str) -> Result<String, UsageError> {
    match source.split_once(':') {
        Some(("env", var)) if !var.is_empty() => Ok(source.to_owned()),
        Some(("file", path)) if !path.is_empty() => Ok(format!("file:{}", absolute(path))),
        _ => Err(UsageError(format!(
            "{what}: {} is not env:VAR or file:PATH (a profile keeps where a secret is, \
             never its value: the catalog travels in DR exports)",
            crate::shown_source(source)
        ))),
    }
}

/// `path` made absolute against the current directory: a profile is used from anywhere.
pub(crate) fn absolute(path: &str) -> String {
    crate::absolute_path(std::path::Path::new(path))
        .display()
        .to_string()
}

/// Reads a secret from its source (`env:VAR` or `file:PATH`; a file's last newline dropped).
pub(crate) fn read_source(what: &str, source: &str) -> anyhow::Result<String> {
    match source.split_once(':') {
        Some(("env", var)) => std::env::var(var).map_err(|_| {
            UsageError(format!("{what}: the environment variable {var} is not set")).into()
        }),
        Some(("file", path)) => std::fs::read_to_string(path)
            .map(|t| t.strip_suffix('\n').unwrap_or(&t).to_owned())
            .map_err(|e| UsageError(format!("{what}: cannot read {path}: {e}")).into()),
        _ => Ok(source.to_owned()),
    }
}

/// The profile named `name`, or a usage error saying how to list them.
pub(crate) fn load(home: &Home, name: &str) -> anyhow::Result<Profile> {
    crate::catalog::open(home)?.profile(name)?.ok_or_else(|| {
        UsageError(format!(
            "no location profile named {name:?}; `cairn profile list` lists them, `cairn profile \
             add` adds one"
        ))
        .into()
    })
}

/// A profile as `list` shows it.
#[derive(Debug, serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    profile: Profile,
    /// The policies that export to it.
    policies: Vec<String>,
}

/// The names of the policies that export to profile `name` (presets' included, as their
/// policies carry the preset's export).
fn users(policies: &[Policy], name: &str) -> Vec<String> {
    policies
        .iter()
        .filter(|p| exports_to(p.export.as_ref(), name))
        .map(|p| p.name.clone())
        .collect()
}

/// Whether `export` goes to profile `name`.
fn exports_to(export: Option<&cairn_catalog::PolicyExport>, name: &str) -> bool {
    export.and_then(|e| e.profile.as_deref()) == Some(name)
}

/// What a profile says, on one line; sources shown, never read.
fn line(p: &Profile) -> String {
    let key = match (&p.passphrase, &p.key_file) {
        (Some(s), _) => format!("passphrase {s}"),
        (None, Some(f)) => format!("key file {f}"),
        (None, None) => "passphrase from CAIRN_PASSPHRASE".to_owned(),
    };
    format!("{:<20} {}  ({key})", p.name, p.repository)
}

pub(crate) fn run(cmd: ProfileCommand, home: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let home = Home::resolve(home)?;
    match cmd {
        ProfileCommand::Add {
            name,
            repo,
            options,
            passphrase,
            key_file,
            limit_upload,
            limit_download,
            output,
        } => {
            let bad = |msg: String| UsageError(format!("profile {name}: {msg}"));
            crate::policy::valid_name(&name).map_err(bad)?;
            let mut kept = std::collections::BTreeMap::new();
            for o in &options {
                let (k, v) = o
                    .split_once('=')
                    .ok_or_else(|| bad(format!("--option {o}: expected KEY=VALUE")))?;
                let v = if is_secret(k) {
                    source(&format!("profile {name}: option {k}"), v)?
                } else {
                    v.to_owned()
                };
                kept.insert(k.to_owned(), v);
            }
            cairn_repository::Location::new(repo.as_str())
                .refuse_credentials()
                .map_err(|e| bad(e.to_string()))?;
            let profile = Profile {
                repository: crate::repository_url(&repo),
                options: kept,
                passphrase: passphrase
                    .map(|p| source(&format!("profile {name}: --passphrase"), &p))
                    .transpose()?,
                key_file: key_file.map(|f| absolute(&f.to_string_lossy())),
                limit_upload: limit_upload.unwrap_or(0),
                limit_download: limit_download.unwrap_or(0),
                name,
            };
            crate::catalog::open(&home)?.record_profile(&profile)?;
            if output == Output::Text {
                outln!("profile added: {}", line(&profile));
            }
            crate::print_applied(output, vec![serde_json::to_value(&profile)?])?;
            Ok(ExitCode::from(exit::OK))
        }
        ProfileCommand::List { output } => {
            let catalog = crate::catalog::open(&home)?;
            let policies = catalog.policies()?;
            let rows: Vec<Listed> = catalog
                .profiles()?
                .into_iter()
                .map(|profile| Listed {
                    policies: users(&policies, &profile.name),
                    profile,
                })
                .collect();
            crate::print_rows(
                output,
                &rows,
                "no location profiles; `cairn profile add NAME --repo URL` adds one",
                |r| {
                    format!(
                        "{}; policies: {}",
                        line(&r.profile),
                        crate::listed(&r.policies)
                    )
                },
            )?;
            Ok(ExitCode::from(exit::OK))
        }
        ProfileCommand::Delete { name } => {
            let catalog = crate::catalog::open(&home)?;
            let mut users: Vec<String> = users(&catalog.policies()?, &name)
                .into_iter()
                .map(|p| format!("policy {p}"))
                .collect();
            users.extend(
                catalog
                    .load_all::<cairn_catalog::PolicyPreset>()?
                    .into_iter()
                    .filter(|p| exports_to(p.export.as_ref(), &name))
                    .map(|p| format!("preset {}", p.name)),
            );
            crate::refuse_while_used(&users, |u| format!("profile {name} is where {u} export"))?;
            crate::delete_named(
                &catalog,
                Kind::Profile,
                &name,
                "location profile",
                "cairn profile list",
            )?;
            outln!("profile {name} deleted");
            Ok(ExitCode::from(exit::OK))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_recognised_by_their_keys() {
        for key in [
            "aws_secret_access_key",
            "AWS_SESSION_TOKEN",
            "azure_storage_account_key",
            "azure_storage_sas_key",
            "google_service_account_key",
            "azure_storage_access_key",
            "access_key",
            "master_key",
            "azure_storage_master_key",
            "aws_sse_customer_key_base64",
            "encryption_key",
        ] {
            assert!(is_secret(key), "{key}");
        }
        for key in [
            "aws_access_key_id",
            "aws_endpoint",
            "azure_storage_account_name",
            "google_application_credentials",
        ] {
            assert!(!is_secret(key), "{key}");
        }
    }

    #[test]
    fn a_source_is_kept_and_a_value_refused() {
        assert_eq!(source("x", "env:VAR").expect("env"), "env:VAR");
        assert!(
            source("x", "file:/etc/key")
                .expect("file")
                .starts_with("file:/")
        );
        for bad in ["hunter2", "env:", "file:", "vault:x"] {
            let e = source("option k", bad).expect_err(bad).to_string();
            assert!(e.contains("not env:VAR or file:PATH"), "{e}");
        }
    }
}
