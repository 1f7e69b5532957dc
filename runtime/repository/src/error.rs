//! The crate's error type.

use std::fmt;

/// What went wrong in a repository operation.
///
/// Every variant says what failed and on which object; the `Display` text is meant to be shown
/// to a user as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The repository URL or an option is malformed or names an unsupported scheme.
    #[error("invalid repository location {url:?}: {reason}")]
    InvalidLocation {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// No repository exists at the location (no `config` object).
    #[error("no repository at {url}: run `cairn repo init` first")]
    NotARepository {
        /// The repository URL.
        url: String,
    },
    /// `init` found an existing repository.
    #[error("a repository already exists at {url}")]
    AlreadyInitialised {
        /// The repository URL.
        url: String,
    },
    /// The repository was written by a newer (or unknown) format version.
    #[error(
        "repository format version {found} is not supported (this build reads versions up to {supported}); upgrade cairn"
    )]
    UnsupportedVersion {
        /// The version found in `config`.
        found: u32,
        /// The newest version this build understands.
        supported: u32,
    },
    /// No key slot opens with the passphrase given.
    #[error(
        "wrong passphrase: no key slot of this repository opens with it (a damaged slot fails \
         the same way)"
    )]
    WrongPassphrase,
    /// No key slot opens with the key provider given (key file, environment, KMS...).
    #[error("wrong key: no key slot of this repository opens with the {provider} key")]
    WrongKey {
        /// The provider kind, e.g. `key-file`.
        provider: String,
    },
    /// Removing this key slot would leave the repository without any working key.
    #[error("refusing to remove key slot {slot}: it is the last key of the repository")]
    LastKey {
        /// The slot id.
        slot: String,
    },
    /// The operation was asked to stop (Ctrl-C) and stopped, leaving nothing half done.
    #[error("interrupted")]
    Interrupted,
    /// A named object (snapshot, key slot) does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// What was looked for (`snapshot`, `key slot`...).
        kind: &'static str,
        /// The id or prefix given.
        id: String,
    },
    /// A snapshot id prefix matches more than one snapshot.
    #[error("snapshot id prefix {prefix} is ambiguous; give more characters")]
    Ambiguous {
        /// The prefix given.
        prefix: String,
    },
    /// An object failed authentication, decoding or hash verification.
    #[error("object {object} is damaged: {reason}{}", affected_text(.snapshots))]
    Corrupt {
        /// The object path in the repository, e.g. `data/3f/3f2a…`.
        object: String,
        /// What check failed.
        reason: String,
        /// Snapshots that reference the damaged data, when known.
        snapshots: Vec<String>,
    },
    /// An object the repository needs is missing.
    #[error("object {object} is missing{}", affected_text(.snapshots))]
    Missing {
        /// The object path (or the chunk id when no pack is known for it).
        object: String,
        /// Snapshots that reference the missing data, when known.
        snapshots: Vec<String>,
    },
    /// The object is inside the repository's protection period and may not be deleted or
    /// overwritten.
    #[error(
        "object {object} is protected until {until} and cannot be deleted or overwritten{}",
        protected_hint(object)
    )]
    Protected {
        /// The object path.
        object: String,
        /// The end of its protection (RFC 3339).
        until: String,
    },
    /// The store did not extend the Object Lock retention of an object a new snapshot shares
    /// with older ones.
    #[error(
        "the store did not extend the Object Lock retention of {object}, which the new snapshot \
         shares with older ones ({why}); the snapshot was not committed (what it wrote stays, \
         for the next backup to use): grant s3:PutObjectRetention on the bucket's objects, or \
         check that the store supports it, and back up again"
    )]
    Retention {
        /// The object path.
        object: String,
        /// The store's answer, or why it could not be asked.
        why: String,
    },
    /// This process's own lock was removed or went stale while it ran.
    #[error(
        "the repository lock {lock} of this process was removed or not refreshed while it ran \
         (paused or cut off for more than {minutes} minutes, or `cairn repo unlock --remove-all`), \
         so another process may have deleted data it relied on; nothing was committed: run it again"
    )]
    LockLost {
        /// The lock object.
        lock: String,
        /// After how many minutes without a refresh others take a lock for stale.
        minutes: u64,
    },
    /// Another process holds a conflicting lock.
    #[error("repository is locked by {holder}: {reason}")]
    Locked {
        /// Who holds the lock (host, pid, operation).
        holder: String,
        /// Why the operation cannot proceed.
        reason: String,
    },
    /// The backup was dropped or cancelled before it was finished.
    #[error("the backup was aborted before it was finished; no snapshot was written")]
    Aborted,
    /// Reading or writing local files failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The local path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The object store failed; the message ends with what to do when the cause is a common
    /// one (no or wrong credentials, an unreachable endpoint, plain HTTP not allowed).
    #[error("object store {op} {object}: {}{hint}", chain_text(.cause))]
    Store {
        /// What was being done.
        op: &'static str,
        /// The object path.
        object: String,
        /// The underlying error; its causes are part of this error's message (so the hint
        /// comes last), not a source of its own (named so that it is not: a reporter that
        /// prints sources would repeat them).
        cause: Box<object_store::Error>,
        /// `; ` and what to do, when the cause is a common one; else empty.
        hint: String,
    },
    /// A write failed because the storage is full (no space left on the device, a disk quota,
    /// or an object store answering "insufficient storage").
    #[error("{}", storage_full_text(.op, .path, .repository.as_deref(), .source))]
    StorageFull {
        /// What was being done.
        op: &'static str,
        /// The object path in the repository, or the local path being written.
        path: String,
        /// The repository URL when the write went to the repository; `None` for a local file
        /// (a restore target, a key file).
        repository: Option<String>,
        /// The underlying error (`ErrorKind::StorageFull` or `QuotaExceeded`).
        #[source]
        source: std::io::Error,
    },
    /// A key provider failed for a reason other than a wrong key.
    #[error("key provider {provider}: {reason}")]
    KeyProvider {
        /// The provider kind.
        provider: String,
        /// What failed.
        reason: String,
    },
    /// Invalid arguments to an operation.
    #[error("{0}")]
    Invalid(String),
}

fn affected_text(snapshots: &[String]) -> String {
    if snapshots.is_empty() {
        String::new()
    } else {
        format!("; affected snapshots: {}", snapshots.join(", "))
    }
}

/// An error and its causes, one after the other.
pub(crate) fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        let part = c.to_string();
        // Many errors repeat their source's text in their own (object_store's retry errors
        // quote the HTTP client's).
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cur = c.source();
    }
    // object_store's errors nest, each saying so again ("Generic S3 error: Generic S3 error:
    // …"): said once.
    let mut parts: Vec<&str> = text.split(": ").collect();
    parts.dedup();
    parts.join(": ")
}

/// What to do about a store error of the repository at `url` whose cause is a common one, as
/// `; …` to append; empty when the cause is not recognised. Recognised in the error's texts:
/// the cloud clients report these as generic errors carrying the HTTP client's or the server's
/// words.
fn store_hint(url: &str, e: &object_store::Error) -> String {
    // The options (and environment variables) of each cloud backend that the hints name.
    let (creds, endpoint, prefix) = match url.split_once("://").map_or("", |(scheme, _)| scheme) {
        "s3" | "s3a" => (
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass --option \
             aws_access_key_id=… --option aws_secret_access_key=… (AWS_PROFILE and \
             ~/.aws/credentials are not read)",
            "aws_endpoint",
            "aws",
        ),
        "az" | "azure" | "abfs" | "abfss" => (
            "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY, or pass --option \
             azure_storage_account_name=… --option azure_storage_account_key=…",
            "azure_endpoint",
            "azure",
        ),
        "gs" => (
            "set GOOGLE_SERVICE_ACCOUNT to a service account key file, or pass --option \
             google_service_account=…",
            "google_base_url",
            "google",
        ),
        _ => return String::new(),
    };
    let env = |option: &str| option.to_ascii_uppercase();
    let text = chain_text(e);
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    let hint = if has(&["169.254.169.254", "metadata.google.internal"]) {
        format!(
            "no credentials were given, and the cloud's instance-metadata service (tried last) \
             gave none: {creds} (or put them in the profile file)"
        )
    } else if has(&["RequestTimeTooSkewed", "RequestTimeSkewed"]) {
        "this host's clock is too far from the store's, which refuses signed requests then: \
         set the clock right (NTP)"
            .into()
    } else if has(&[
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "NotSignedUp",
        "AuthenticationFailed",
        "Unauthenticated",
    ]) {
        "the store refused the credentials: check the key id and the secret".into()
    } else if has(&[
        "invalid peer certificate",
        "UnknownIssuer",
        "certificate verify failed",
    ]) {
        "the server's TLS certificate is not trusted here: if your own authority signed it, \
         point SSL_CERT_FILE at that authority's certificate (PEM)"
            .into()
    } else if has(&["InvalidContentType", "received corrupt message"]) {
        format!(
            "the endpoint answers plain http, not https: give it as http://… with --option \
             {prefix}_allow_http=true"
        )
    } else if has(&["<html", "<HTML", "<!DOCTYPE", "<!doctype"]) {
        format!(
            "the endpoint answered with a web page, not as the store: check it (--option \
             {endpoint} or {})",
            env(endpoint)
        )
    } else if has(&["501 Not Implemented", "NotImplemented"]) && has(&["PUT", "put"]) {
        "the server does not implement conditional writes (If-None-Match: *), which Cairn \
         needs so that no object is ever overwritten: use a server or service that does (AWS \
         S3, MinIO, Ceph RGW since Squid, moto)"
            .into()
    } else if has(&[
        "AccessDenied",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",
        "lacked the necessary privileges",
    ]) {
        "the credentials are not allowed this: Cairn needs to list, read, write and delete \
         objects under the repository's prefix"
            .into()
    } else if has(&["NoSuchBucket", "ContainerNotFound", "bucket does not exist"]) {
        "the bucket (container) does not exist: create it first (Cairn does not create buckets)"
            .into()
    } else if has(&["URL scheme is not allowed"]) {
        format!(
            "the endpoint is plain http: allow it with --option {prefix}_allow_http=true (or \
             {}=true), or use https",
            env(&format!("{prefix}_allow_http"))
        )
    } else if has(&[
        "Connection refused",
        "dns error",
        "tcp connect error",
        "(Connect)",
    ]) {
        format!(
            "the store cannot be reached: check the endpoint (--option {endpoint} or {}) and \
             that the server is up",
            env(endpoint)
        )
    } else if has(&["timed out"]) {
        "the store did not answer in time: it may be overloaded or the link slow; --option \
         timeout=… gives each request longer, --option retries=… more tries"
            .into()
    } else {
        return String::new();
    };
    format!("; {hint}")
}

fn storage_full_text(
    op: &str,
    path: &str,
    repository: Option<&str>,
    source: &std::io::Error,
) -> String {
    match repository {
        Some(url) => format!(
            "the repository's storage is full: {op} {path} in {url}: {source}; free space there \
             (or move the repository to a larger volume) and run the command again, the \
             snapshots already saved are intact"
        ),
        None => format!(
            "the disk is full: {op} {path}: {source}; free space on that filesystem (or choose \
             a target on another one) and run the command again"
        ),
    }
}

/// Whether an I/O error means the storage is full.
fn is_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
}

/// What object stores answer when they are out of space, for those (S3-compatible servers,
/// HTTP 507) that carry no I/O error: matched in the error texts.
const FULL_TEXTS: [&str; 4] = [
    "No space left on device",
    "Insufficient Storage",
    "XMinioStorageFull",
    "Disk quota exceeded",
];

/// The "storage full" cause of an object store error, if that is what it is: an I/O error
/// anywhere in its chain (local filesystem), or a server's out-of-space answer (carried as an
/// I/O error of kind `StorageFull` with the server's text).
fn full_cause(e: &object_store::Error) -> Option<std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && is_full(io)
        {
            return Some(match io.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(io.kind(), io.to_string()),
            });
        }
        cur = c.source();
    }
    let text = e.to_string();
    FULL_TEXTS
        .iter()
        .any(|t| text.contains(t))
        .then(|| std::io::Error::new(std::io::ErrorKind::StorageFull, text))
}

/// What to do about a protected object, when there is more to say than that it is protected.
fn protected_hint(object: &str) -> &'static str {
    if object.starts_with("keys/") {
        " (a key slot is protected as data is: deleted, it would leave the data it opens \
         unreadable; on Object Lock, each run that writes data through it renews that): it can \
         be removed after that; `cairn repo key add` adds a new key now, and a slot no longer \
         used to open the repository is no longer renewed"
    } else {
        ""
    }
}

impl Error {
    /// The same error with its hint (what to do) rewritten by `f` when it is a store error;
    /// any other is left as it is.
    pub fn map_hint(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Error::Store {
                op,
                object,
                cause,
                hint,
            } => Error::Store {
                op,
                object,
                cause,
                hint: f(hint),
            },
            e => e,
        }
    }

    /// An object store error while `op` on `object` of the repository at `url`: a full
    /// storage becomes [`Error::StorageFull`], anything else [`Error::Store`].
    pub(crate) fn store(
        op: &'static str,
        object: impl fmt::Display,
        url: &str,
        source: object_store::Error,
    ) -> Self {
        match full_cause(&source) {
            Some(full) => Error::StorageFull {
                op,
                path: object.to_string(),
                repository: Some(url.to_string()),
                source: full,
            },
            None => Error::Store {
                op,
                object: object.to_string(),
                hint: store_hint(url, &source),
                cause: Box::new(source),
            },
        }
    }
    /// A local I/O error while `op` on `path`: a full disk becomes [`Error::StorageFull`],
    /// anything else [`Error::Io`].
    pub(crate) fn io(
        op: &'static str,
        path: impl AsRef<std::path::Path>,
        source: std::io::Error,
    ) -> Self {
        let path = path.as_ref().display().to_string();
        if is_full(&source) {
            Error::StorageFull {
                op,
                path,
                repository: None,
                source,
            }
        } else {
            Error::Io { op, path, source }
        }
    }
    pub(crate) fn corrupt(object: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Corrupt {
            object: object.to_string(),
            reason: reason.to_string(),
            snapshots: Vec::new(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn full(e: &Error) -> bool {
        matches!(e, Error::StorageFull { .. })
    }

    #[test]
    fn common_store_failures_say_what_to_do() {
        // What object_store 0.14 reported against s3s-fs and without credentials on this host.
        let cases = [
            (
                "Error performing PUT http://169.254.169.254/latest/api/token in 3ms - Server \
                 returned non-2xx status code: 403 Forbidden: resolve_deny",
                "AWS_ACCESS_KEY_ID",
            ),
            (
                "The operation lacked the necessary privileges to complete for path r1/config: \
                 403 Forbidden: <Error><Code>SignatureDoesNotMatch</Code></Error>",
                "refused the credentials",
            ),
            (
                "HTTP error: error sending request: client error (Connect): tcp connect error: \
                 Connection refused (os error 111)",
                "cannot be reached",
            ),
            (
                "HTTP error: error sending request: client error (Connect): operation timed out",
                "cannot be reached",
            ),
            (
                "Error performing PUT http://h/b/data/ab/cd in 30s - HTTP error: error sending \
                 request: operation timed out",
                "did not answer in time",
            ),
            (
                "HTTP error: error sending request: client error (Connect): dns error: failed to \
                 lookup address information",
                "cannot be reached",
            ),
            (
                "HTTP error: builder error: URL scheme is not allowed",
                "aws_allow_http=true",
            ),
            (
                "<Error><Code>NoSuchBucket</Code></Error>",
                "create it first",
            ),
            (
                "<Error><Code>AccessDenied</Code></Error>",
                "not allowed this",
            ),
            // What a helper met against s3s-fs, moto and a web server (2026-12-07).
            (
                "The operation lacked the necessary privileges to complete for path r/config: \
                 403 Forbidden: <Error><Code>RequestTimeTooSkewed</Code></Error>",
                "clock",
            ),
            (
                "403 Forbidden: <Error><Code>NotSignedUp</Code></Error>",
                "refused the credentials",
            ),
            (
                "HTTP error: error sending request: client error (Connect): invalid peer \
                 certificate: UnknownIssuer",
                "SSL_CERT_FILE",
            ),
            (
                "HTTP error: error sending request: client error (Connect): received corrupt \
                 message of type InvalidContentType",
                "answers plain http",
            ),
            (
                "Server returned non-2xx status code: 404 Not Found: <!DOCTYPE HTML>\n<html>",
                "web page",
            ),
            (
                "Error performing PUT http://h/b/r/config in 6s - Server returned non-2xx \
                 status code: 501 Not Implemented: <Error><Code>NotImplemented</Code></Error>",
                "conditional writes",
            ),
        ];
        for (text, hint) in cases {
            let source = object_store::Error::Generic {
                store: "S3",
                source: text.into(),
            };
            let e = Error::store("read", "config", "s3://b/r", source).to_string();
            assert!(e.contains(hint), "{e}");
        }
        let nested = object_store::Error::Generic {
            store: "S3",
            source: Box::new(object_store::Error::Generic {
                store: "S3",
                source: "503 Slow Down".into(),
            }),
        };
        let e = Error::store("read", "config", "s3://b/r", nested).to_string();
        assert!(e.contains(": Generic S3 error: 503 Slow Down"), "{e}");
        assert!(!e.contains("Generic S3 error: Generic"), "{e}");
        // Each cloud's hint names its own options.
        for (url, option) in [
            ("s3://b/r", "--option aws_endpoint"),
            ("az://c/r", "--option azure_endpoint"),
            ("gs://b/r", "--option google_base_url"),
        ] {
            let source = object_store::Error::Generic {
                store: "any",
                source: "tcp connect error: Connection refused (os error 111)".into(),
            };
            let e = Error::store("read", "config", url, source).to_string();
            assert!(e.contains(option), "{e}");
        }
        let local = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: "Connection refused".into(),
        };
        let e = Error::store("read", "config", "/srv/repo", local).to_string();
        assert!(
            !e.contains("; "),
            "no cloud hint for a local repository: {e}"
        );
        let other = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 500 Internal Server Error".into(),
        };
        let e = Error::store("read", "config", "s3://b/r", other);
        // The causes are in the message once, and not again as a source a reporter would
        // print after it.
        assert!(std::error::Error::source(&e).is_none());
        let e = e.to_string();
        assert!(e.ends_with("500 Internal Server Error"), "{e}");
        assert_eq!(e.matches("500 Internal").count(), 1, "{e}");
    }

    #[test]
    fn full_disks_and_full_servers_say_so() {
        // A local filesystem: ENOSPC deep in the chain.
        let enospc = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let local = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(enospc),
        };
        let e = Error::store("write", "data/ab/abcd", "/srv/repo", local);
        assert!(full(&e), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("data/ab/abcd") && text.contains("/srv/repo"),
            "{text}"
        );
        // An S3-compatible server answering 507.
        let remote = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 507 Insufficient Storage".into(),
        };
        assert!(full(&Error::store("write", "data/x", "s3://b/r", remote)));
        // Other failures stay what they are.
        let other = object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        };
        assert!(!full(&Error::store("write", "data/x", "s3://b/r", other)));
        let e = Error::io("write", "/mnt/f", std::io::Error::from_raw_os_error(28));
        assert!(full(&e) && e.to_string().contains("/mnt/f"), "{e}");
        let e = Error::io(
            "write",
            "/mnt/f",
            std::io::ErrorKind::PermissionDenied.into(),
        );
        assert!(!full(&e), "{e}");
    }
}
