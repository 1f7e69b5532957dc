//! Object storage through `object_store`, chosen by URL, with the protection period enforced on
//! every delete.

use crate::error::{Error, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

/// Whether a repository location is a URL (`s3://…`, `file:///…`) rather than a path: a
/// scheme of two characters or more, so a Windows drive (`C:\…`) is a path.
pub fn is_url(location: &str) -> bool {
    url::Url::parse(location).is_ok_and(|u| u.scheme().len() > 1)
}

/// How a repository location is given: a URL and backend options.
///
/// `file:///abs/dir` or a plain path (local filesystem), `memory://name` (an in-process store
/// shared by every open of the same name, for tests), `s3://bucket/prefix`,
/// `az://container/prefix`, `gs://bucket/prefix`. Cloud options (`aws_endpoint`,
/// `aws_access_key_id`, `aws_secret_access_key`, `aws_region`, `aws_allow_http`, and the Azure
/// and GCS equivalents) come from [`Location::option`] and then from the usual environment
/// variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`).
#[derive(Debug, Clone)]
pub struct Location {
    pub(crate) url: String,
    pub(crate) options: Vec<(String, String)>,
    /// Most bytes a second uploads and downloads average.
    pub(crate) limits: (Option<u64>, Option<u64>),
}

impl Location {
    /// A location from a URL or a local path.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            options: Vec::new(),
            limits: (None, None),
        }
    }
    /// Adds a backend option, e.g. `("aws_endpoint", "http://127.0.0.1:9000")`.
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }
    /// Keeps what is written to the store to an average of `bytes_per_second` (a shared
    /// link to object storage); zero is no limit.
    pub fn limit_upload(mut self, bytes_per_second: u64) -> Self {
        self.limits.0 = (bytes_per_second > 0).then_some(bytes_per_second);
        self
    }
    /// Keeps what is read from the store to an average of `bytes_per_second`; zero is no
    /// limit.
    pub fn limit_download(mut self, bytes_per_second: u64) -> Self {
        self.limits.1 = (bytes_per_second > 0).then_some(bytes_per_second);
        self
    }
    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Refuses a URL that holds credentials (`s3://KEY:SECRET@bucket`): no store reads them
    /// there, and the URL is printed in messages and kept in profiles. The error shows the URL
    /// without them. (Azure's `abfss://CONTAINER@ACCOUNT…` names its container so.)
    pub fn refuse_credentials(&self) -> Result<()> {
        match url::Url::parse(&self.url) {
            Ok(url) => refuse_credentials_in(&url),
            Err(_) => Ok(()),
        }
    }
}

/// Whether `url` names an Azure store.
fn is_azure(url: &url::Url) -> bool {
    matches!(url.scheme(), "az" | "azure" | "abfs" | "abfss")
}

/// [`Location::refuse_credentials`] of a parsed URL.
fn refuse_credentials_in(url: &url::Url) -> Result<()> {
    if url.password().is_none() && (url.username().is_empty() || is_azure(url)) {
        return Ok(());
    }
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    Err(invalid(
        shown.as_str(),
        "the URL holds credentials (USER:SECRET@), which are not read there and would be \
         printed with it: remove them, and give them with --option (the store's key id and \
         secret options), its environment variables or a profile file",
    ))
}

impl From<&str> for Location {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}
impl From<String> for Location {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}
impl From<&std::path::Path> for Location {
    fn from(p: &std::path::Path) -> Self {
        Self::new(p.display().to_string())
    }
}

/// Reads `range` of a local file into a buffer of exactly its size; fewer bytes when the file
/// is shorter, which the caller checks.
fn read_file_range(mut file: std::fs::File, range: Range<u64>) -> std::io::Result<Bytes> {
    use std::io::{Read, Seek, SeekFrom};
    let len = range.end.saturating_sub(range.start);
    let mut buf = Vec::with_capacity(usize::try_from(len).map_err(std::io::Error::other)?);
    file.seek(SeekFrom::Start(range.start))?;
    file.take(len).read_to_end(&mut buf)?;
    Ok(buf.into())
}

/// A local read's failure, as `object_store` reports its own.
fn io_error(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(e),
    }
}

fn memory_stores() -> &'static Mutex<HashMap<String, Arc<object_store::memory::InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<object_store::memory::InMemory>>>> =
        OnceLock::new();
    STORES.get_or_init(Default::default)
}

/// Keeps transfers to an average rate: each waits until those before it would have taken,
/// at that rate, to go through (so a burst is one object at most).
#[derive(Debug)]
struct Limiter {
    bytes_per_second: u64,
    next: Mutex<tokio::time::Instant>,
}

impl Limiter {
    fn new(bytes_per_second: Option<u64>) -> Option<Arc<Self>> {
        bytes_per_second.map(|r| {
            Arc::new(Self {
                bytes_per_second: r,
                next: Mutex::new(tokio::time::Instant::now()),
            })
        })
    }

    /// Waits for the turn of a transfer of `n` bytes.
    async fn take(this: &Option<Arc<Self>>, n: u64) {
        let Some(l) = this else { return };
        let start = {
            let mut next = l
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let start = (*next).max(tokio::time::Instant::now());
            *next =
                start + std::time::Duration::from_secs_f64(n as f64 / l.bytes_per_second as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// The object store under a repository, with the repository's protection period.
#[derive(Debug, Clone)]
pub(crate) struct Backend {
    store: Arc<dyn ObjectStore>,
    /// Times a cut-off create-if-absent write is sent again: [`PUT_TRIES`], or fewer with
    /// the option `retries`.
    resends: u32,
    upload: Option<Arc<Limiter>>,
    download: Option<Arc<Limiter>>,
    pub(crate) url: String,
    /// Set from the config once it is read.
    pub(crate) protection: std::time::Duration,
    /// On S3: how to write objects under Object Lock retention.
    s3_lock: Option<Arc<S3Lock>>,
    /// Set from the config: data objects are written with S3 Object Lock retention.
    pub(crate) object_lock: bool,
    /// A `file://` repository's directory, where uploads a killed process began are found.
    local_root: Option<std::path::PathBuf>,
    /// The store's clock less this host's, in seconds, once a write has shown it
    /// ([`NO_OFFSET`] until then): the protection period is the store's, as locks' ages are,
    /// so a host whose clock runs ahead (or a process under faketime) deletes nothing early.
    clock_offset: Arc<std::sync::atomic::AtomicI64>,
    /// Objects whose Object Lock retention was extended past their first write's, by path:
    /// the latest date known (from the repository's `retention/` records), which protects them
    /// here too.
    extended: Arc<Mutex<HashMap<String, i64>>>,
}

/// The most an Object Lock repository retains its objects past the protection period
/// ([`Backend::lock_ahead`]).
const MAX_LOCK_AHEAD: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// [`Backend::clock_offset`] not known yet.
const NO_OFFSET: i64 = i64::MIN;

/// A file a local upload began and never finished. `object_store` writes an object to
/// `NAME#N` and renames it into place: a process killed in between leaves the file, which no
/// listing shows (so neither check nor prune saw it) and which nothing else ever removes.
#[derive(Debug, Clone)]
pub(crate) struct Unfinished {
    /// Relative to the repository, with `/` separators.
    pub(crate) path: String,
    pub(crate) size: u64,
    /// Since it was last written.
    pub(crate) idle: std::time::Duration,
}

/// Whether a file name is one of `object_store`'s staging names, `NAME#DIGITS`.
fn is_staging_name(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(stem, suffix)| {
        !stem.is_empty() && !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The unfinished uploads under `root`, directories walked depth first.
fn find_unfinished(root: &std::path::Path) -> std::io::Result<Vec<Unfinished>> {
    let mut found = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), String::new())];
    let now = std::time::SystemTime::now();
    while let Some((dir, rel)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push((entry.path(), path));
            } else if kind.is_file() && is_staging_name(&name) {
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    // Renamed into place since the directory was read.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let idle = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                found.push(Unfinished {
                    path,
                    size: meta.len(),
                    idle,
                });
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Writes S3 objects in Object Lock compliance mode, retained until the protection period
/// after their write. The retention date travels in default headers of a dedicated client,
/// rebuilt every [`LOCK_CLIENT_LIFE`] (the date it stamps is that much later than needed, never
/// earlier).
///
/// Each new client first writes the key slot the repository was opened with again (`renew`),
/// so that slot is always retained at least as long as any data written through it: a slot
/// whose retention ran out could be deleted while the data it opens is still locked, leaving
/// that data unreadable for good.
#[derive(Debug)]
struct S3Lock {
    location: Location,
    url: url::Url,
    current: tokio::sync::Mutex<Option<(std::time::Instant, Arc<dyn ObjectStore>)>>,
    /// The key slot renewed by each new client.
    renew: Mutex<Option<String>>,
    /// Made at the first extension.
    retainer: Mutex<Option<Arc<Retainer>>>,
}

/// How long one Object Lock client stamps the same retention date.
pub(crate) const LOCK_CLIENT_LIFE: std::time::Duration = std::time::Duration::from_secs(600);

/// The largest object read whole (metadata): a sealed object of at most
/// [`crate::format::MAX_OBJECT_BYTES`] plaintext, with room for what sealing and framing add.
pub(crate) const MAX_WHOLE_READ: u64 = crate::format::MAX_OBJECT_BYTES as u64 + (1 << 20);

/// What a probe of the store's clock under `locks/` holds ([`Backend::probe_clock`]).
pub(crate) const CLOCK_PROBE_BODY: &[u8] = br#"{"probe":"the store's clock"}"#;

/// The longest object name S3, GCS and Azure take, in bytes.
const MAX_KEY_BYTES: usize = 1024;
/// Room for Cairn's longest name below a repository's prefix (`/snapshots/` and a 32-digit id
/// is 43 bytes; kept well above).
const LONGEST_NAME: usize = 80;

/// Times a create-if-absent write that timed out, or whose connection broke, is sent again.
const PUT_TRIES: u32 = 3;

/// Whether `e` says a request was cut off once sent (timed out, its connection reset or
/// closed) rather than answered or never sent.
fn interrupted(e: &object_store::Error) -> bool {
    let text = crate::error::chain_text(e);
    // Never sent (object_store sends those again itself, and a server that is down stays
    // down for a while).
    let unsent = [
        "Connection refused",
        "tcp connect error",
        "dns error",
        "client error (Connect)",
    ];
    !unsent.iter().any(|w| text.contains(w))
        && [
            "timed out",
            "Connection reset",
            "connection reset",
            "connection closed",
            "broken pipe",
            "Broken pipe",
            "error sending request",
        ]
        .iter()
        .any(|w| text.contains(w))
}

/// How many times object_store sent a request again before it gave up (its error says, as
/// "after N retries", when it did).
fn retries_made(e: &object_store::Error) -> u32 {
    let text = crate::error::chain_text(e);
    text.split_once(" retries, max_retries: ")
        .and_then(|(before, _)| before.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether the object at `path` holds exactly `data`; `false` when the store does not say
/// within a minute (a hung server would otherwise take its whole retry budget for each look).
async fn holds(store: &Arc<dyn ObjectStore>, path: &str, data: &Bytes) -> bool {
    let look = async {
        match store.get(&Path::from(path)).await {
            Ok(r) if r.meta.size == data.len() as u64 => r.bytes().await.is_ok_and(|b| b == *data),
            _ => false,
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), look)
        .await
        .unwrap_or(false)
}

/// Builds an S3 store from the environment (`AWS_*`), the URL and the location's options;
/// with `lock_until`, every write it makes carries compliance-mode retention until then.
fn s3_store(
    loc: &Location,
    url: &url::Url,
    lock_until: Option<jiff::Timestamp>,
) -> Result<Arc<dyn ObjectStore>> {
    let (s3, _) = s3_client(loc, url, lock_until)?;
    Ok(prefixed(Arc::new(s3), url))
}

/// [`s3_store`]'s S3 client, not yet under the repository's prefix, and the HTTP client
/// options it was given (for requests object_store does not make, [`Retainer`]).
fn s3_client(
    loc: &Location,
    url: &url::Url,
    lock_until: Option<jiff::Timestamp>,
) -> Result<(object_store::aws::AmazonS3, object_store::ClientOptions)> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, Checksum};
    let raw = loc.url.as_str();
    let mut b = AmazonS3Builder::new();
    let mut client = object_store::ClientOptions::new();
    if let Some(until) = lock_until {
        let mut headers = object_store::HeaderMap::new();
        headers.insert(
            "x-amz-object-lock-mode",
            object_store::HeaderValue::from_static("COMPLIANCE"),
        );
        let date = until.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        headers.insert(
            "x-amz-object-lock-retain-until-date",
            object_store::HeaderValue::from_str(&date).map_err(|e| invalid(raw, e))?,
        );
        // S3 requires an integrity checksum on every write that sets a retention; some
        // S3-compatible servers look for the header AWS SDKs send with it.
        headers.insert(
            "x-amz-sdk-checksum-algorithm",
            object_store::HeaderValue::from_static("SHA256"),
        );
        b = b
            .with_client_options(object_store::ClientOptions::new().with_default_headers(headers))
            .with_checksum_algorithm(Checksum::SHA256);
    }
    // As `AmazonS3Builder::from_env`, after the client options so they are not overwritten.
    for (key, value) in std::env::vars() {
        if key.starts_with("AWS_")
            && let Ok(k) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
        {
            if let AmazonS3ConfigKey::Client(c) = k {
                client = client.with_config(c, value.clone());
            }
            b = b.with_config(k, value);
        }
    }
    b = b.with_url(url.as_str());
    let (options, retry) = cloud_options(loc)?;
    for (key, v) in options {
        if let AmazonS3ConfigKey::Client(c) = key {
            client = client.with_config(c, v);
        }
        b = b.with_config(key, v);
    }
    b = b.with_retry(retry).with_http_connector(FailFast::default());
    // object_store takes the endpoint's text as it is and panics on the first request when
    // it is not a URL.
    if let Some(endpoint) = b.get_config_value(&AmazonS3ConfigKey::Endpoint) {
        check_endpoint(raw, &endpoint)?;
    }
    Ok((b.build().map_err(|e| invalid(raw, e))?, client))
}

/// Extends the Object Lock retention of objects already written: S3's `PutObjectRetention`,
/// which object_store does not make. The request is presigned by object_store's own S3 client
/// (credentials, endpoint and addressing as every other request has them), with the
/// `retention` query and the body's `Content-MD5` in the signature, and sent by an HTTP client
/// built with the location's client options.
#[derive(Debug)]
struct Retainer {
    s3: object_store::aws::AmazonS3,
    http: object_store::client::HttpClient,
    /// The repository's folder in the bucket (`s3://bucket/folder`), without slashes.
    prefix: String,
}

/// Times a retention extension is sent when the store answers 5xx or the connection fails.
const RETAIN_TRIES: u32 = 3;

impl Retainer {
    fn new(loc: &Location, url: &url::Url) -> Result<Self> {
        use object_store::client::HttpConnector as _;
        let (s3, client) = s3_client(loc, url, None)?;
        let http = FailFast::default()
            .connect(&client)
            .map_err(|e| invalid(&loc.url, e))?;
        Ok(Self {
            s3,
            http,
            prefix: url.path().trim_matches('/').to_string(),
        })
    }

    /// Retains the object at `path` (below the repository) in compliance mode until `until`.
    /// A store that refuses is asked the object's retention: one already as long (another
    /// backup's extension, which compliance mode does not let this one shorten) is done.
    /// The error is the store's answer, or why it could not be asked.
    async fn retain(&self, path: &str, until: jiff::Timestamp) -> std::result::Result<(), String> {
        use base64::Engine as _;
        use md5::Digest as _;
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Mode>COMPLIANCE</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            until.strftime("%Y-%m-%dT%H:%M:%SZ")
        );
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
        let md5 = object_store::HeaderValue::from_str(&md5).map_err(|e| e.to_string())?;
        match self.send(path, Some((body, md5))).await {
            Ok(_) => Ok(()),
            Err((Some(400..=499), why)) => match self.send(path, None).await {
                Ok(held) if retain_until_date(&held).is_some_and(|d| d >= until) => Ok(()),
                _ => Err(why),
            },
            Err((_, why)) => Err(why),
        }
    }

    /// Sends `PutObjectRetention` with `put` (its body and the body's MD5), or else
    /// `GetObjectRetention`, for the object at `path`; a 5xx or a failed connection is sent
    /// again. The answer's body, or its status (when there was one) and why it failed.
    async fn send(
        &self,
        path: &str,
        put: Option<(String, object_store::HeaderValue)>,
    ) -> std::result::Result<String, (Option<u16>, String)> {
        use object_store::signer::{Method, SignedUrlOptions, Signer as _};
        let key = if self.prefix.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.prefix)
        };
        let method = if put.is_some() {
            Method::PUT
        } else {
            Method::GET
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let mut opts = SignedUrlOptions::new().with_query([("retention", "")]);
            if let Some((_, md5)) = &put {
                opts = opts.with_signed_header(
                    object_store::signer::HeaderName::from_static("content-md5"),
                    md5.clone(),
                );
            }
            let url = self
                .s3
                .signed_url_opts(
                    method.clone(),
                    &Path::from(key.as_str()),
                    std::time::Duration::from_secs(300),
                    &opts,
                )
                .await
                .map_err(|e| (None, crate::error::chain_text(&e)))?;
            let body = put.as_ref().map(|(b, _)| b.clone()).unwrap_or_default();
            let mut req = object_store::client::HttpRequest::new(
                object_store::client::HttpRequestBody::from(body),
            );
            *req.method_mut() = method.clone();
            *req.uri_mut() = url.as_str().parse().map_err(|e| (None, format!("{e}")))?;
            if let Some((_, md5)) = &put {
                req.headers_mut().insert("content-md5", md5.clone());
            }
            let (status, why) = match self.http.execute(req).await {
                Ok(r) => {
                    let status = r.status();
                    let text = match r.into_body().bytes().await {
                        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
                        Err(e) => e.to_string(),
                    };
                    if status.is_success() {
                        return Ok(text);
                    }
                    (Some(status.as_u16()), format!("{status}: {text}"))
                }
                Err(e) => (None, crate::error::chain_text(&e)),
            };
            if status.is_some_and(|s| s < 500) || tries >= RETAIN_TRIES {
                return Err((status, why));
            }
            tracing::warn!(object = path, error = %why, "a retention request failed; sending it again");
            tokio::time::sleep(std::time::Duration::from_secs(1 << tries)).await;
        }
    }
}

/// The `RetainUntilDate` of a `GetObjectRetention` answer.
fn retain_until_date(xml: &str) -> Option<jiff::Timestamp> {
    let (_, rest) = xml.split_once("<RetainUntilDate>")?;
    let (date, _) = rest.split_once("</RetainUntilDate>")?;
    date.trim().parse().ok()
}

/// object_store's HTTP client, with a connection that cannot be made for good (a name that
/// does not resolve, a certificate not trusted) failed at once. object_store retries every
/// connection error, so a mistyped endpoint was reported only after the retries' minute.
/// A name the resolver could not look up for now, or a connection refused (a server
/// restarting), is still retried.
#[derive(Debug, Default)]
struct FailFast(object_store::client::ReqwestConnector);

#[derive(Debug)]
struct FailFastService(object_store::client::HttpClient);

impl object_store::client::HttpConnector for FailFast {
    fn connect(
        &self,
        options: &object_store::ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        let inner = self.0.connect(options)?;
        Ok(object_store::client::HttpClient::new(FailFastService(
            inner,
        )))
    }
}

#[async_trait::async_trait]
impl object_store::client::HttpService for FailFastService {
    async fn call(
        &self,
        req: object_store::client::HttpRequest,
    ) -> std::result::Result<object_store::client::HttpResponse, object_store::client::HttpError>
    {
        use object_store::client::{HttpError, HttpErrorKind};
        self.0.execute(req).await.map_err(|e| {
            if e.kind() == HttpErrorKind::Connect && unreachable_for_good(&e) {
                HttpError::new(HttpErrorKind::Unknown, Lasting(e))
            } else {
                e
            }
        })
    }
}

/// A connection error that waiting will not mend, said as the HTTP client said it (an
/// `HttpError` in an `HttpError` would say "HTTP error" twice).
#[derive(Debug)]
struct Lasting(object_store::client::HttpError);

impl std::fmt::Display for Lasting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::error::Error::source(&self.0) {
            Some(cause) => std::fmt::Display::fmt(cause, f),
            None => std::fmt::Display::fmt(&self.0, f),
        }
    }
}

impl std::error::Error for Lasting {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0).and_then(std::error::Error::source)
    }
}

/// Whether a connection error says the endpoint cannot be reached however long one waits:
/// its name does not exist, or its certificate is not trusted.
fn unreachable_for_good(e: &(dyn std::error::Error + 'static)) -> bool {
    let text = crate::error::chain_text(e);
    [
        "Name or service not known",
        "No address associated with hostname",
        "nodename nor servname provided",
        "invalid peer certificate",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// Refuses an S3 endpoint that is not `http(s)://HOST[:PORT][/PATH]` as given (no spaces).
fn check_endpoint(raw: &str, endpoint: &str) -> Result<()> {
    let parsed = url::Url::parse(endpoint).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if let Some(u) = &parsed
        && (!u.username().is_empty() || u.password().is_some())
    {
        return Err(invalid(
            raw,
            "the S3 endpoint holds credentials (USER:SECRET@), which would be printed in every \
             error: give them with --option aws_access_key_id and aws_secret_access_key",
        ));
    }
    if parsed.is_some()
        && !endpoint
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Ok(());
    }
    Err(invalid(
        raw,
        format!(
            "the S3 endpoint {endpoint:?} (--option aws_endpoint or AWS_ENDPOINT) is not a URL: \
             give http(s)://HOST[:PORT], such as https://s3.eu-central-1.amazonaws.com or \
             http://127.0.0.1:9000"
        ),
    ))
}

/// How long a failed request waits before it is sent again: 0.5 s, then a random while up to
/// three times the last wait, at most 30 s (ten retries: about a minute). object_store's own
/// (from 100 ms, up to twice the last) hardly grows: its ten retries were over within three
/// seconds, so a server restarting for six failed a backup. Longer, a wrong port took two
/// minutes to say so.
const RETRY_BACKOFF: object_store::BackoffConfig = object_store::BackoffConfig {
    init_backoff: std::time::Duration::from_millis(500),
    max_backoff: std::time::Duration::from_secs(30),
    base: 3.0,
};

/// The retry policy of a cloud store's requests: ten retries backing off as
/// [`RETRY_BACKOFF`] (about a minute in all), within three minutes of the first try, unless
/// the options `retries` and `retry_timeout` (a duration: `90s`, `5m`) change it, for a link
/// that drops out longer.
fn retry_policy(loc: &Location) -> Result<object_store::RetryConfig> {
    let raw = loc.url.as_str();
    let mut retry = object_store::RetryConfig {
        backoff: RETRY_BACKOFF,
        ..Default::default()
    };
    for (k, v) in &loc.options {
        match k.as_str() {
            "retries" => {
                retry.max_retries = v.parse().map_err(|e| {
                    invalid(
                        raw,
                        format!("option retries={v}: {e}; give a number, such as 20"),
                    )
                })?;
            }
            "retry_timeout" => {
                let d: jiff::SignedDuration = v.parse().map_err(|e| {
                    invalid(
                        raw,
                        format!("option retry_timeout={v}: {e}; give a duration, such as 5m"),
                    )
                })?;
                retry.retry_timeout = d.try_into().map_err(|_| {
                    invalid(
                        raw,
                        format!("option retry_timeout={v}: a duration is positive"),
                    )
                })?;
            }
            _ => {}
        }
    }
    Ok(retry)
}

/// A location's options for a cloud store's builder, as its config keys `K`, and the retry
/// policy of its requests ([`retry_policy`]).
fn cloud_options<K>(loc: &Location) -> Result<(Vec<(K, &str)>, object_store::RetryConfig)>
where
    K: std::str::FromStr,
    K::Err: std::fmt::Display,
{
    let raw = loc.url.as_str();
    let mut options = Vec::new();
    for (k, v) in &loc.options {
        match k.as_str() {
            "retries" | "retry_timeout" => {}
            // The client's durations take a unit; a bare number is refused with its words
            // alone ("failed to parse "60" as Duration").
            _ if k.ends_with("timeout") && v.trim().parse::<f64>().is_ok() => {
                return Err(invalid(
                    raw,
                    format!("option {k}={v}: give a unit, such as {}s", v.trim()),
                ));
            }
            _ => options.push((
                k.parse()
                    .map_err(|e| invalid(raw, format!("option {k}: {e}")))?,
                v.as_str(),
            )),
        }
    }
    Ok((options, retry_policy(loc)?))
}

fn invalid(url: &str, reason: impl ToString) -> Error {
    Error::InvalidLocation {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

impl Backend {
    pub(crate) fn connect(loc: &Location, create_local: bool) -> Result<Self> {
        let raw = loc.url.as_str();
        // `file:dir` parses as `file:///dir`: a directory at the root, which nobody meant.
        if let Some(rest) = raw.strip_prefix("file:")
            && !rest.starts_with("//")
        {
            return Err(invalid(
                raw,
                format!(
                    "a file URL is file:///ABSOLUTE/PATH (three slashes); for a path relative to \
                     this directory give it plainly: --repo {rest}"
                ),
            ));
        }
        let url = match url::Url::parse(raw).ok().filter(|u| u.scheme().len() > 1) {
            Some(u) => u,
            // A plain (or Windows drive) path is a local directory.
            _ => {
                let p = std::path::absolute(raw).map_err(|e| invalid(raw, e))?;
                url::Url::from_directory_path(&p)
                    .map_err(|()| invalid(raw, "not an absolute path"))?
            }
        };
        refuse_credentials_in(&url)?;
        let azure = is_azure(&url);
        // A cloud store's keys are at most 1,024 bytes: a prefix near that takes init and
        // every pack, and fails at the first longer name, a snapshot's.
        let cloud = matches!(url.scheme(), "s3" | "s3a" | "gs") || azure;
        let prefix = url.path().trim_matches('/').len();
        if cloud && prefix + LONGEST_NAME > MAX_KEY_BYTES {
            return Err(invalid(
                raw,
                format!(
                    "the path in the bucket is {prefix} bytes: a store's object names are at \
                     most {MAX_KEY_BYTES} bytes, and Cairn's own need {LONGEST_NAME} more; \
                     choose a shorter one"
                ),
            ));
        }
        let mut s3_lock = None;
        let mut local_root = None;
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => {
                let dir = url.to_file_path().map_err(|()| match url.host_str() {
                    Some(host) => invalid(
                        raw,
                        format!(
                            "file://{host}/... names a host, {host}; a local directory is \
                             file:///{host}{} (three slashes)",
                            url.path()
                        ),
                    ),
                    None => invalid(raw, "not a local path"),
                })?;
                local_root = Some(dir.clone());
                if create_local {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| Error::io("create directory", &dir, e))?;
                    // Its owner's alone, as restic's and borg's are: others have no business
                    // with the key slots or the data, even encrypted.
                    // A filesystem that keeps no modes (a share) refuses: it is said, not fatal.
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::PermissionsExt;
                        let private = std::fs::Permissions::from_mode(0o700);
                        if let Err(e) = std::fs::set_permissions(&dir, private) {
                            tracing::warn!(dir = %dir.display(), error = %e, "the repository directory could not be made its owner's alone");
                        }
                    }
                } else if !dir.is_dir() {
                    return Err(Error::NotARepository {
                        url: raw.to_string(),
                    });
                }
                Arc::new(
                    // Every object durable (its file and its directory entry) before its write
                    // returns, as on S3: the order FORMAT.md promises (packs, then the index,
                    // then the snapshot) must hold on the disk after a power cut too, not only
                    // in the page cache.
                    object_store::local::LocalFileSystem::new_with_prefix(&dir)
                        .map_err(|e| invalid(raw, e))?
                        .with_automatic_cleanup(true)
                        .with_fsync(true),
                )
            }
            "memory" => {
                let name = format!("{}{}", url.host_str().unwrap_or(""), url.path());
                let mut m = memory_stores()
                    .lock()
                    .map_err(|_| invalid(raw, "memory store registry poisoned"))?;
                m.entry(name).or_default().clone()
            }
            "s3" | "s3a" => {
                s3_lock = Some(S3Lock {
                    location: loc.clone(),
                    url: url.clone(),
                    current: Default::default(),
                    renew: Mutex::new(None),
                    retainer: Mutex::new(None),
                });
                s3_store(loc, &url, None)?
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let mut b =
                    object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url.as_str());
                let (options, retry) = cloud_options(loc)?;
                for (key, v) in options {
                    b = b.with_config(key, v);
                }
                b = b.with_retry(retry).with_http_connector(FailFast::default());
                prefixed(Arc::new(b.build().map_err(|e| invalid(raw, e))?), &url)
            }
            "gs" => {
                let mut b =
                    object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
                let (options, retry) = cloud_options(loc)?;
                for (key, v) in options {
                    b = b.with_config(key, v);
                }
                b = b.with_retry(retry).with_http_connector(FailFast::default());
                prefixed(Arc::new(b.build().map_err(|e| invalid(raw, e))?), &url)
            }
            other => {
                return Err(invalid(
                    raw,
                    format!("unsupported scheme {other}:// (use file, memory, s3, az or gs)"),
                ));
            }
        };
        // `retries` bounds a cut-off write's resends as it bounds object_store's retries.
        let resends = if cloud {
            let retries = retry_policy(loc)?.max_retries;
            u32::try_from(retries).map_or(PUT_TRIES, |n| n.min(PUT_TRIES))
        } else {
            PUT_TRIES
        };
        Ok(Self {
            store,
            resends,
            upload: Limiter::new(loc.limits.0),
            download: Limiter::new(loc.limits.1),
            url: raw.to_string(),
            protection: std::time::Duration::ZERO,
            s3_lock: s3_lock.map(Arc::new),
            object_lock: false,
            local_root,
            clock_offset: Arc::new(std::sync::atomic::AtomicI64::new(NO_OFFSET)),
            extended: Default::default(),
        })
    }

    /// Takes `store_now` (an object's last-modified time, just written) for the store's
    /// present, to judge protection by.
    pub(crate) fn learn_clock(&self, store_now: i64) {
        let offset = store_now.saturating_sub(jiff::Timestamp::now().as_second());
        self.clock_offset
            .store(offset, std::sync::atomic::Ordering::Relaxed);
    }

    /// Learns the store's clock, unless known, or there is no protection to judge.
    pub(crate) async fn know_clock(&self) {
        if !self.protection.is_zero()
            && self.clock_offset.load(std::sync::atomic::Ordering::Relaxed) == NO_OFFSET
        {
            self.probe_clock().await;
        }
    }

    /// Learns the store's clock from a probe object written, looked at and removed (under
    /// `locks/`, where others take it for no lock). A store that takes no probe leaves this
    /// host's clock.
    pub(crate) async fn probe_clock(&self) {
        let path = format!("locks/{}", crate::format::new_id());
        let body = Bytes::from_static(CLOCK_PROBE_BODY);
        if self.put_new(&path, body).await.is_ok() {
            if let Ok(Some(m)) = self.head(&path).await {
                self.learn_clock(m.last_modified.timestamp());
            }
            let _ = self.delete_any(&path).await;
        }
    }

    /// The present by the store's clock when known, else by this host's.
    pub(crate) fn now(&self) -> i64 {
        let local = jiff::Timestamp::now().as_second();
        match self.clock_offset.load(std::sync::atomic::Ordering::Relaxed) {
            NO_OFFSET => local,
            offset => local.saturating_add(offset),
        }
    }

    /// The uploads a process began in a local repository and never finished (none elsewhere:
    /// an object store's single PUT is whole or absent).
    pub(crate) async fn unfinished_uploads(&self) -> Result<Vec<Unfinished>> {
        let Some(root) = self.local_root.clone() else {
            return Ok(Vec::new());
        };
        tokio::task::spawn_blocking(move || {
            find_unfinished(&root).map_err(|e| Error::io("list", &root, e))
        })
        .await
        .map_err(|e| Error::io("list", &self.url, std::io::Error::other(e)))?
    }

    /// Removes an unfinished upload (gone already is removed).
    pub(crate) async fn remove_unfinished(&self, u: &Unfinished) -> Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let path = root.join(&u.path);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path, e)),
        }
    }

    /// An object store error on `path` of this repository (a full storage says so).
    fn store_err(&self, op: &'static str, path: &str, e: object_store::Error) -> Error {
        Error::store(op, path, &self.url, e)
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Option<Bytes>> {
        match self.read(path, None).await {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("read", path, e)),
        }
    }

    /// A range of an object; shorter than asked when the object ends inside it. A range that
    /// starts past the object's end is a truncated object (the store only says the range is
    /// invalid: a local file's error, an HTTP 416), told apart by the object's size.
    pub(crate) async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        match self.read(path, Some(range.clone())).await {
            Ok(b) => Ok(b),
            Err(object_store::Error::NotFound { .. }) => Err(Error::Missing {
                object: path.to_string(),
                snapshots: Vec::new(),
            }),
            Err(e) => match self.store.head(&Path::from(path)).await {
                Ok(meta) if meta.size <= range.start => Err(Error::corrupt(
                    path,
                    format!(
                        "is truncated ({} bytes, a read needs {})",
                        meta.size, range.end
                    ),
                )),
                _ => Err(self.store_err("read", path, e)),
            },
        }
    }

    /// Reads an object, or a range of it. A local file is read into a buffer that is not
    /// zeroed first: `object_store`'s own read zero-fills every buffer, 2.7% of a restore's
    /// CPU profile before the page faults of touching the buffer a second time.
    async fn read(&self, path: &str, range: Option<Range<u64>>) -> object_store::Result<Bytes> {
        // A range takes its turn before it is read; a whole object, whose size is not known
        // yet, after (the next transfer waits for it).
        let known = range.as_ref().map(|r| r.end.saturating_sub(r.start));
        if let Some(n) = known {
            Limiter::take(&self.download, n).await;
        }
        let b = self.read_unlimited(path, range).await?;
        if known.is_none() {
            Limiter::take(&self.download, b.len() as u64).await;
        }
        Ok(b)
    }

    async fn read_unlimited(
        &self,
        path: &str,
        range: Option<Range<u64>>,
    ) -> object_store::Result<Bytes> {
        let whole = range.is_none();
        let options = object_store::GetOptions {
            range: range.map(Into::into),
            ..Default::default()
        };
        let r = self.store.get_opts(&Path::from(path), options).await?;
        // Objects read whole are metadata, sealed from at most MAX_OBJECT_BYTES: a larger one
        // (a stray file, a server's bad size) is refused before it is read into memory.
        if whole && r.meta.size > MAX_WHOLE_READ {
            return Err(object_store::Error::Generic {
                store: "cairn",
                source: format!(
                    "{path} is {} bytes, larger than any object Cairn reads whole ({MAX_WHOLE_READ} bytes); \
                     it was not written by Cairn",
                    r.meta.size
                )
                .into(),
            });
        }
        match r.payload {
            object_store::GetResultPayload::File(file, _) => {
                let range = r.range;
                tokio::task::spawn_blocking(move || read_file_range(file, range))
                    .await
                    .map_err(|e| io_error(std::io::Error::other(e)))?
                    .map_err(io_error)
            }
            object_store::GetResultPayload::Stream(_) => r.bytes().await,
        }
    }

    /// Writes an object that must not exist yet (create-if-absent).
    pub(crate) async fn put_new(&self, path: &str, data: Bytes) -> Result<()> {
        self.put_new_in(&self.store, path, data).await
    }

    async fn put_new_in(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &str,
        data: Bytes,
    ) -> Result<()> {
        let mut tries = 0;
        loop {
            // Every send counts against the upload limit, a resend too.
            Limiter::take(&self.upload, data.len() as u64).await;
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            let put = store
                .put_opts(
                    &Path::from(path),
                    PutPayload::from_bytes(data.clone()),
                    opts,
                )
                .await;
            match put {
                Ok(_) => return Ok(()),
                // A write the store took but whose answer was lost (a 5xx, a reset) is sent
                // again by object_store, and meets itself: the same bytes there are this
                // write. Every name written so is new (a random id, or a hash of what it
                // holds), so other bytes are another writer's.
                Err(object_store::Error::AlreadyExists { .. }) => {
                    return if holds(store, path, &data).await {
                        Ok(())
                    } else {
                        Err(Error::Protected {
                            object: path.to_string(),
                            until: "forever (objects are never overwritten)".into(),
                        })
                    };
                }
                // A create-if-absent write is not idempotent: object_store sends it again
                // itself only when it was cut off before its answer began (a connection
                // closed), not when it timed out or its connection was reset. Either way it
                // may have landed, or may land still. Sent again, it is either taken or meets
                // itself (above). object_store's own retries of it count against the
                // resends, so that `retries` bounds the sends rather than multiplying them.
                Err(e) if interrupted(&e) => {
                    if holds(store, path, &data).await {
                        return Ok(());
                    }
                    // object_store's retries of this send (of a 5xx, say) count too.
                    tries += retries_made(&e);
                    if tries >= self.resends {
                        return Err(self.store_err("write", path, e));
                    }
                    tries += 1;
                    tracing::warn!(object = path, error = %e, "write interrupted; sending it again");
                    tokio::time::sleep(std::time::Duration::from_secs(1 << tries)).await;
                }
                Err(e) => return Err(self.store_err("write", path, e)),
            }
        }
    }

    /// Whether this backend can put Object Lock retention on what it writes (S3 only; the
    /// bucket must have Object Lock enabled, which [`Backend::put_data`] finds out).
    pub(crate) fn supports_object_lock(&self) -> bool {
        self.s3_lock.is_some()
    }

    /// Writes a data object (config, pack, index, snapshot): like [`Backend::put_new`], and
    /// under S3 Object Lock retention for the protection period when the repository has it.
    pub(crate) async fn put_data(&self, path: &str, data: Bytes) -> Result<()> {
        match (
            &self.s3_lock,
            self.object_lock && !self.protection.is_zero(),
        ) {
            (Some(lock), true) => {
                let store = self.lock_store(lock).await?;
                self.put_new_in(&store, path, data).await
            }
            _ => self.put_new(path, data).await,
        }
    }

    /// Whether the store is reached over the network (S3, Azure, GCS), not a local directory
    /// or memory.
    pub(crate) fn remote(&self) -> bool {
        self.local_root.is_none() && !self.url.to_ascii_lowercase().starts_with("memory:")
    }

    /// Names the key slot that each new Object Lock client writes again before any data
    /// ([`S3Lock`]): the one the repository was opened with.
    pub(crate) fn renew_with(&self, slot_path: Option<String>) {
        if let Some(lock) = &self.s3_lock
            && let Ok(mut renew) = lock.renew.lock()
        {
            *renew = slot_path;
        }
    }

    async fn lock_store(&self, lock: &S3Lock) -> Result<Arc<dyn ObjectStore>> {
        // Held while the slot is renewed: no data goes out under the new date before it.
        let mut current = lock.current.lock().await;
        if let Some((built, store)) = current.as_ref()
            && built.elapsed() < LOCK_CLIENT_LIFE
        {
            return Ok(store.clone());
        }
        let period = self.protection + self.lock_ahead() + LOCK_CLIENT_LIFE;
        // From the later of the store's clock and this host's: a host whose clock is behind
        // would stamp a retention shorter than the period, which the store then enforces.
        self.know_clock().await;
        let now = jiff::Timestamp::from_second(self.now().max(jiff::Timestamp::now().as_second()))
            .map_err(|e| invalid(&self.url, e))?;
        let until = now
            .checked_add(jiff::SignedDuration::from_secs(period.as_secs() as i64))
            .map_err(|e| invalid(&self.url, e))?;
        let store = s3_store(&lock.location, &lock.url, Some(until))?;
        let renew = lock.renew.lock().ok().and_then(|r| r.clone());
        if let Some(path) = renew {
            // Its bytes as they are: nothing to unwrap or wrap again. A slot removed meanwhile
            // (`key remove` in another process) is not brought back.
            match self.get(&path).await? {
                Some(slot) => self.put_replace_in(&store, &path, slot).await?,
                None => tracing::warn!(
                    slot = %path,
                    "the key slot this repository was opened with is gone; its retention is not renewed"
                ),
            }
            // The config too: written once at `init`, its retention would lapse one period
            // later however many backups followed, and without it nothing opens the rest.
            if let Some(config) = self.get(crate::format::CONFIG).await? {
                self.put_replace_in(&store, crate::format::CONFIG, config)
                    .await?;
            }
        }
        *current = Some((std::time::Instant::now(), store.clone()));
        Ok(store)
    }

    /// Writes or replaces a mutable object (key slots, locks).
    pub(crate) async fn put_replace(&self, path: &str, data: Bytes) -> Result<()> {
        self.put_replace_in(&self.store, path, data).await
    }

    async fn put_replace_in(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &str,
        data: Bytes,
    ) -> Result<()> {
        Limiter::take(&self.upload, data.len() as u64).await;
        store
            .put(&Path::from(path), PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| self.store_err("write", path, e))
    }

    /// An object's metadata (a HEAD); `None` when it does not exist.
    pub(crate) async fn head(&self, path: &str) -> Result<Option<ObjectMeta>> {
        match self.store.head(&Path::from(path)).await {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("read", path, e)),
        }
    }

    pub(crate) async fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.head(path).await?.is_some())
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let p = Path::from(prefix);
        self.store
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(|e| self.store_err("list", prefix, e))
    }

    /// The folders directly under the location that hold a repository (a `config` object), by
    /// name, sorted: what a location several repositories share (a DR location, one folder a
    /// cluster) holds. Only folders whose name passes `wanted` are looked into, several at once.
    pub(crate) async fn repositories(&self, wanted: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        use futures::StreamExt as _;
        let listed = match self.store.list_with_delimiter(None).await {
            Ok(listed) => listed,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.store_err("list", "", e)),
        };
        let folders = listed
            .common_prefixes
            .into_iter()
            .map(|folder| folder.as_ref().to_owned())
            .filter(|name| wanted(name));
        let mut names: Vec<String> = futures::stream::iter(folders)
            .map(|name| async move {
                let config = format!("{name}/{}", crate::format::CONFIG);
                Ok::<_, Error>(self.exists(&config).await?.then_some(name))
            })
            .buffered(16)
            .try_filter_map(|name| async move { Ok(name) })
            .try_collect()
            .await?;
        names.sort();
        Ok(names)
    }

    /// The path of some object under `prefix`, if there is one (the first listed).
    pub(crate) async fn first(&self, prefix: &str) -> Result<Option<String>> {
        let p = Path::from(prefix);
        match futures::StreamExt::next(&mut self.store.list(Some(&p))).await {
            None | Some(Err(object_store::Error::NotFound { .. })) => Ok(None),
            Some(Ok(m)) => Ok(Some(m.location.to_string())),
            Some(Err(e)) => Err(self.store_err("list", prefix, e)),
        }
    }

    /// The names under `prefix` that are object ids; anything else there (a foreign file) is
    /// left out.
    pub(crate) async fn list_ids(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list_sized_ids(prefix)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// The packs, by id: each object under `data/` at the path a pack of its name has
    /// (`data/<first two>/<id>`). Anything else there is foreign, and left out.
    pub(crate) async fn list_packs(&self) -> Result<Vec<(String, ObjectMeta)>> {
        Ok(self
            .list("data/")
            .await?
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename().filter(|n| crate::format::is_id(n))?;
                (m.location.as_ref() == crate::format::pack_path(name))
                    .then(|| (name.to_string(), m.clone()))
            })
            .collect())
    }

    /// [`Backend::list_ids`], with each object's size.
    pub(crate) async fn list_sized_ids(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list(prefix)
            .await?
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename().filter(|n| crate::format::is_id(n))?;
                Some((name.to_string(), m.size))
            })
            .collect())
    }

    /// The end of the protection of an object written at `last_modified_unix`, if it is
    /// still protected.
    pub(crate) fn protected_until(&self, last_modified_unix: i64) -> Option<jiff::Timestamp> {
        self.protected_past(last_modified_unix, None)
    }

    /// The end of a listed object's protection, if it is still protected: its write's, or a
    /// later one its retention was extended to.
    pub(crate) fn protected(&self, m: &ObjectMeta) -> Option<jiff::Timestamp> {
        self.protected_past(m.last_modified.timestamp(), Some(m.location.as_ref()))
    }

    /// Until when (unix seconds) a listed object is retained at least: from its write, or
    /// to a later date its retention was extended to.
    pub(crate) fn retained_until(&self, m: &ObjectMeta) -> i64 {
        self.retained(m.last_modified.timestamp(), Some(m.location.as_ref()))
    }

    fn retained(&self, last_modified_unix: i64, path: Option<&str>) -> i64 {
        let period = self.protection + self.lock_ahead();
        let until = last_modified_unix.saturating_add(period.as_secs() as i64);
        let extended = path.and_then(|path| {
            self.extended
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(path)
                .copied()
        });
        until.max(extended.unwrap_or(i64::MIN))
    }

    fn protected_past(
        &self,
        last_modified_unix: i64,
        path: Option<&str>,
    ) -> Option<jiff::Timestamp> {
        if self.protection.is_zero() {
            return None;
        }
        let until = self.retained(last_modified_unix, path);
        (self.now() < until)
            .then(|| jiff::Timestamp::from_second(until).unwrap_or(jiff::Timestamp::MAX))
    }

    /// How much longer than the protection period an Object Lock repository retains what it
    /// writes: a quarter of the period, at most a week (none without Object Lock). An object
    /// a newer snapshot shares must be retained as long as that snapshot, so its retention is
    /// extended ([`Backend::retain`]); retained this much longer, it is extended once in a
    /// while rather than by every backup.
    pub(crate) fn lock_ahead(&self) -> std::time::Duration {
        if self.object_lock && self.s3_lock.is_some() {
            (self.protection / 4).min(MAX_LOCK_AHEAD)
        } else {
            std::time::Duration::ZERO
        }
    }

    /// The date an extension made now retains objects until: as a new write's.
    pub(crate) async fn retain_date(&self) -> Result<jiff::Timestamp> {
        self.know_clock().await;
        let now = self.now().max(jiff::Timestamp::now().as_second());
        let period = self.protection + self.lock_ahead() + LOCK_CLIENT_LIFE;
        jiff::Timestamp::from_second(now.saturating_add(period.as_secs() as i64))
            .map_err(|e| invalid(&self.url, e))
    }

    /// Takes in that the objects at `paths` are retained until `until` (unix seconds).
    pub(crate) fn note_extended(&self, paths: impl IntoIterator<Item = String>, until: i64) {
        let mut extended = self
            .extended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for path in paths {
            let at = extended.entry(path).or_insert(until);
            *at = (*at).max(until);
        }
    }

    /// Extends the Object Lock retention of the objects at `paths` to `until`, several at
    /// once (only on a repository under Object Lock): those done, and the first failure.
    pub(crate) async fn retain(
        &self,
        paths: &[String],
        until: jiff::Timestamp,
    ) -> (Vec<String>, Option<Error>) {
        use futures::StreamExt as _;
        let Some(lock) = self.s3_lock.as_ref().filter(|_| self.object_lock) else {
            return (Vec::new(), None);
        };
        let retainer = {
            let mut made = lock
                .retainer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match &*made {
                Some(r) => r.clone(),
                None => match Retainer::new(&lock.location, &lock.url) {
                    Ok(r) => {
                        let r = Arc::new(r);
                        *made = Some(r.clone());
                        r
                    }
                    Err(e) => return (Vec::new(), Some(e)),
                },
            }
        };
        // Owned paths: a future borrowing them would not be `Send` for every lifetime, which
        // a backup's future must be.
        let sent: Vec<(String, std::result::Result<(), String>)> =
            futures::stream::iter(paths.to_vec())
                .map(move |path| {
                    let retainer = retainer.clone();
                    async move {
                        let r = retainer.retain(&path, until).await;
                        (path, r)
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
        let (mut done, mut failed) = (Vec::new(), None);
        for (path, r) in sent {
            match r {
                Ok(()) => done.push(path),
                Err(why) => {
                    failed.get_or_insert(Error::Retention { object: path, why });
                }
            }
        }
        self.note_extended(done.iter().cloned(), until.as_second());
        (done, failed)
    }

    /// Deletes a data object, refusing inside the protection period. `meta` saves a HEAD when
    /// the caller listed the object.
    pub(crate) async fn delete_data(&self, path: &str, meta: Option<&ObjectMeta>) -> Result<()> {
        if !self.protection.is_zero() {
            self.know_clock().await;
            let lm = match meta {
                Some(m) => m.last_modified.timestamp(),
                None => match self.store.head(&Path::from(path)).await {
                    Ok(m) => m.last_modified.timestamp(),
                    Err(object_store::Error::NotFound { .. }) => return Ok(()),
                    Err(e) => return Err(self.store_err("stat", path, e)),
                },
            };
            if let Some(until) = self.protected_past(lm, Some(path)) {
                return Err(Error::Protected {
                    object: path.to_string(),
                    until: until.to_string(),
                });
            }
        }
        self.delete_any(path).await
    }

    /// Deletes a mutable object (key slot, lock).
    pub(crate) async fn delete_any(&self, path: &str) -> Result<()> {
        match self.store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("delete", path, e)),
        }
    }
}

fn prefixed(store: Arc<dyn ObjectStore>, url: &url::Url) -> Arc<dyn ObjectStore> {
    let prefix = url.path().trim_matches('/');
    if prefix.is_empty() {
        store
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_answer_gives_its_date() {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Retention \
                   xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode>\
                   <RetainUntilDate>2026-12-08T00:10:00.000Z</RetainUntilDate></Retention>";
        assert_eq!(
            retain_until_date(xml),
            Some("2026-12-08T00:10:00Z".parse().expect("a date"))
        );
        assert_eq!(
            retain_until_date("<Error><Code>NoSuchObjectLockConfiguration</Code></Error>"),
            None
        );
    }

    /// Protection is judged by the store's clock once known: a host whose clock runs two
    /// hours ahead of the store's (or a process under faketime) would otherwise take an object
    /// written ten minutes ago, under a one-hour period, for free to delete.
    #[tokio::test]
    async fn protection_is_judged_by_the_stores_clock() {
        let d = tempfile::tempdir().expect("tempdir");
        let connect = || {
            let mut b = Backend::connect(&Location::new(d.path().display().to_string()), true)
                .expect("a store");
            b.protection = std::time::Duration::from_secs(3600);
            b
        };
        let host = jiff::Timestamp::now().as_second();
        let store = host - 7200;
        let (by_host, by_store) = (connect(), connect());
        by_store.learn_clock(store);
        assert!(by_host.protected_until(store - 600).is_none());
        assert!(by_store.protected_until(store - 600).is_some());
        // A probe learns it, and leaves nothing behind.
        let probed = connect();
        probed.know_clock().await;
        let offset = probed
            .clock_offset
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(offset != NO_OFFSET && offset.abs() <= 2, "{offset}");
        assert!(probed.list("locks/").await.expect("listed").is_empty());
    }

    /// `retries` and `retry_timeout` set the retry policy and are not passed on; bad values
    /// are named with what to give.
    #[test]
    fn retries_are_options_of_cloud_stores() {
        use object_store::aws::AmazonS3ConfigKey;
        let loc = Location::new("s3://b/p")
            .option("aws_region", "eu-west-1")
            .option("retries", "25")
            .option("retry_timeout", "5m");
        let (options, retry) = cloud_options::<AmazonS3ConfigKey>(&loc).expect("options");
        assert_eq!(options.len(), 1, "the retry options are cairn's own");
        assert_eq!(retry.max_retries, 25);
        assert_eq!(retry.retry_timeout, std::time::Duration::from_secs(300));
        for (k, v, says) in [
            ("retries", "many", "give a number"),
            ("retry_timeout", "soon", "give a duration"),
            ("retry_timeout", "-5m", "positive"),
        ] {
            let loc = Location::new("s3://b/p").option(k, v);
            let e = cloud_options::<AmazonS3ConfigKey>(&loc).expect_err(v);
            assert!(e.to_string().contains(says), "{k}={v}: {e}");
        }
    }

    /// The two ways a local URL goes wrong are named with their fix, and nothing is made;
    /// a repository directory made is its owner's alone.
    #[test]
    fn local_urls_that_mean_something_else_are_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        for (url, says) in [
            ("file:relative", "give it plainly: --repo relative"),
            ("file://tmp/x", "a local directory is file:///tmp/x"),
        ] {
            let e = Backend::connect(&Location::new(url), true).expect_err(url);
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
        assert!(!std::path::Path::new("/relative").exists());
        let dir = d.path().join("r");
        Backend::connect(&Location::new(dir.display().to_string()), true).expect("made");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).expect("dir").permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    /// An S3 endpoint that is not a URL is refused when the store is opened, not a panic at
    /// its first request; and a write whose answer was lost, sent again, meets itself.
    #[tokio::test]
    async fn endpoints_are_urls_and_a_write_that_meets_itself_is_done() {
        for bad in [
            "127.0.0.1:9000",
            "http://127.0.0.1:9000 ",
            "http://127.0.0.1:99999",
            "",
            "ftp://host",
        ] {
            let loc = Location::new("s3://bucket/prefix")
                .option("aws_region", "us-east-1")
                .option("aws_endpoint", bad);
            let Err(e) = Backend::connect(&loc, true) else {
                panic!("{bad:?} was taken for an endpoint");
            };
            assert!(e.to_string().contains("is not a URL"), "{bad:?}: {e}");
        }
        let creds = Location::new("s3://bucket/p")
            .option("aws_region", "us-east-1")
            .option("aws_endpoint", "http://AK:EndpointSecret@127.0.0.1:9000");
        let Err(e) = Backend::connect(&creds, true) else {
            panic!("credentials in the endpoint were taken");
        };
        let text = e.to_string();
        assert!(
            text.contains("holds credentials") && !text.contains("EndpointSecret"),
            "{text}"
        );
        let bare = Location::new("s3://bucket/p").option("timeout", "60");
        let Err(e) = Backend::connect(&bare, true) else {
            panic!("a timeout without a unit was taken");
        };
        assert!(e.to_string().contains("such as 60s"), "{e}");
        let long = format!("s3://bucket/{}", "p".repeat(1000));
        let Err(e) = Backend::connect(&Location::new(long), true) else {
            panic!("a prefix too long for any name was taken");
        };
        assert!(e.to_string().contains("choose a shorter one"), "{e}");
        let Err(e) = Backend::connect(&Location::new("s3://AK:SKsecret@bucket/p"), true) else {
            panic!("credentials in the URL were taken");
        };
        let text = e.to_string();
        assert!(
            text.contains("holds credentials") && !text.contains("SKsecret"),
            "{text}"
        );
        let b = Backend::connect(&Location::new("memory://"), true).expect("the store opens");
        let data = Bytes::from_static(b"the same bytes");
        b.put_new("snapshots/x", data.clone())
            .await
            .expect("written");
        b.put_new("snapshots/x", data)
            .await
            .expect("the same bytes: done");
        let Err(e) = b.put_new("snapshots/x", Bytes::from_static(b"other")).await else {
            panic!("other bytes overwrote an object");
        };
        assert!(matches!(e, Error::Protected { .. }), "{e:?}");
    }

    /// The option `retries` bounds how often a create-if-absent write cut off once sent goes
    /// out, object_store's retries and Cairn's resends together: with 0 once, with 1 twice.
    #[tokio::test]
    async fn retries_bound_the_sends_of_a_cut_off_write() {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().expect("its address").port();
        let puts = Arc::new(AtomicUsize::new(0));
        let counted = puts.clone();
        // A server that reads each request's head, cuts off every PUT without an answer and
        // has nothing to GET.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.starts_with(b"PUT") {
                    counted.fetch_add(1, Ordering::SeqCst);
                } else {
                    let _ = s.write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                }
            }
        });
        for (retries, sends) in [("0", 1), ("1", 2)] {
            puts.store(0, Ordering::SeqCst);
            let loc = Location::new("s3://bucket/p")
                .option("aws_region", "us-east-1")
                .option("aws_endpoint", format!("http://127.0.0.1:{port}"))
                .option("aws_allow_http", "true")
                .option("aws_access_key_id", "key")
                .option("aws_secret_access_key", "secret")
                .option("retries", retries);
            let b = Backend::connect(&loc, true).expect("the store opens");
            let Err(e) = b.put_new("snapshots/x", Bytes::from_static(b"data")).await else {
                panic!("a write nobody answered was taken");
            };
            assert_eq!(puts.load(Ordering::SeqCst), sends, "retries={retries}: {e}");
        }
    }

    /// An S3 store's error carrying `text`, as the HTTP client's errors reach Cairn.
    fn s3_error(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.to_owned().into(),
        }
    }

    /// A write cut off once sent is sent again; one that never left (no connection, a
    /// certificate refused) is object_store's to retry, and not again.
    #[test]
    fn only_writes_cut_off_once_sent_are_sent_again() {
        for sent in [
            "HTTP error: error sending request: operation timed out",
            "HTTP error: error sending request: connection closed before message completed",
            "Connection reset by peer (os error 104)",
        ] {
            assert!(interrupted(&s3_error(sent)), "{sent}");
        }
        for unsent in [
            "HTTP error: error sending request: client error (Connect): tcp connect error: \
             Connection refused (os error 111)",
            "HTTP error: error sending request: client error (Connect): invalid peer \
             certificate: UnknownIssuer",
            "HTTP error: error sending request: client error (Connect): dns error",
            "Server returned non-2xx status code: 403 Forbidden",
        ] {
            assert!(!interrupted(&s3_error(unsent)), "{unsent}");
        }
    }

    /// object_store's retries are read from its error: none when it says none.
    #[test]
    fn the_retries_object_store_made_are_read_from_its_error() {
        for (text, made) in [
            (
                "Error performing PUT http://h/b/k in 1.2s, after 1 retries, max_retries: 10, \
                 retry_timeout: 180s  - HTTP error: error sending request",
                1,
            ),
            (
                "Error performing PUT http://h/b/k in 1.2s - HTTP error: timed out",
                0,
            ),
        ] {
            assert_eq!(retries_made(&s3_error(text)), made, "{text}");
        }
    }

    /// A name that does not exist and a certificate not trusted are failed at once; a
    /// resolver that cannot answer for now and a server that refuses are retried.
    #[test]
    fn only_endpoints_unreachable_for_good_fail_at_once() {
        for lasting in [
            "error sending request: client error (Connect): dns error: failed to lookup \
             address information: Name or service not known",
            "error sending request: client error (Connect): invalid peer certificate: \
             UnknownIssuer",
        ] {
            assert!(unreachable_for_good(&s3_error(lasting)), "{lasting}");
        }
        for passing in [
            "error sending request: client error (Connect): dns error: failed to lookup \
             address information: Temporary failure in name resolution",
            "error sending request: client error (Connect): tcp connect error: Connection \
             refused (os error 111)",
        ] {
            assert!(!unreachable_for_good(&s3_error(passing)), "{passing}");
        }
    }

    /// Restores keep more reads in flight from a network store than from a local one.
    #[test]
    fn only_cloud_stores_are_remote() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let remote = |url: String| {
            let loc = Location::new(url)
                .option("aws_region", "us-east-1")
                .option("aws_access_key_id", "k")
                .option("aws_secret_access_key", "s");
            Backend::connect(&loc, true)
                .expect("the store opens")
                .remote()
        };
        assert!(!remote(format!("file://{}", dir.path().display())));
        assert!(!remote(dir.path().display().to_string()));
        assert!(!remote("memory://".into()));
        assert!(remote("s3://bucket/prefix".into()));
    }

    /// A range past an object's end is what a truncated object gives a read planned from the
    /// index: the store calls it an invalid range, the repository calls it truncated.
    #[tokio::test]
    async fn a_range_past_the_end_is_a_truncated_object() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("file://{}", dir.path().display());
        for loc in [Location::new(url), Location::new("memory://")] {
            let b = Backend::connect(&loc, true).expect("the store opens");
            b.put_replace("data/ab/obj", Bytes::from_static(&[7; 10]))
                .await
                .expect("the object is written");
            assert_eq!(
                b.get_range("data/ab/obj", 4..20)
                    .await
                    .expect("a short read")
                    .len(),
                6
            );
            let Err(e) = b.get_range("data/ab/obj", 12..20).await else {
                panic!("{}: a range past the end was read", loc.url);
            };
            assert!(
                matches!(&e, Error::Corrupt { reason, .. } if reason.contains("truncated")),
                "{}: {e:?}",
                loc.url
            );
        }
    }
}
