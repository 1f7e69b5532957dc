//! Starts Azurite's blob service on loopback for the Azure conformance run, and creates the
//! container the repositories live in (Cairn does not create buckets or containers).

use crate::support::{LocalServer, http, start_server};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cairn_repository::Location;
use sha2::{Digest, Sha256};

/// Azurite's well-known development account (public, in Azurite's documentation).
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const CONTAINER: &str = "cairn";

pub struct AzureServer(LocalServer);

impl AzureServer {
    /// Starts the server; `None` (test skipped) only when `CAIRN_TEST_AZURE` is unset and
    /// Azurite is not installed. With `CAIRN_TEST_AZURE` set, failing to start is a failure.
    pub fn start() -> Option<Self> {
        let bin = std::env::var("CAIRN_AZURITE").unwrap_or_else(|_| "azurite-blob".into());
        let server = start_server(
            &bin,
            "CAIRN_TEST_AZURE",
            "npm install --global azurite",
            |port, dir| {
                let port = port.to_string();
                let mut args: Vec<std::ffi::OsString> =
                    ["--blobHost", "127.0.0.1", "--blobPort", &port, "--location"]
                        .map(Into::into)
                        .into();
                args.push(dir.into());
                // The test client's API version may be newer than the Azurite release knows.
                args.extend(
                    ["--silent", "--disableTelemetry", "--skipApiVersionCheck"].map(Into::into),
                );
                args
            },
            std::time::Duration::from_secs(30),
        )?;
        let server = Self(server);
        server.create_container();
        Some(server)
    }

    /// `PUT /account/container?restype=container`, signed with the account key (SharedKey).
    fn create_container(&self) {
        let date = jiff::Timestamp::now()
            .strftime("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
             /{ACCOUNT}/{ACCOUNT}/{CONTAINER}\nrestype:container"
        );
        let key = STANDARD.decode(KEY).unwrap();
        let signature = STANDARD.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let authorization = format!("SharedKey {ACCOUNT}:{signature}");
        let (status, response) = http(
            &self.0,
            "PUT",
            &format!("/{ACCOUNT}/{CONTAINER}?restype=container"),
            &[
                ("x-ms-date", &date),
                ("x-ms-version", version),
                ("Authorization", &authorization),
            ],
        );
        assert_eq!(
            status, 201,
            "Azurite refused to create the container: {response}"
        );
    }

    pub fn location(&self) -> Location {
        Location::new(format!(
            "az://{CONTAINER}/repo-{}",
            uuid::Uuid::new_v4().simple()
        ))
        .option(
            "azure_endpoint",
            format!("http://127.0.0.1:{}/{ACCOUNT}", self.0.port),
        )
        .option("azure_allow_http", "true")
        .option("azure_storage_account_name", ACCOUNT)
        .option("azure_storage_account_key", KEY)
    }
}

/// HMAC-SHA256 (RFC 2104), for the one signed request above.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}
