//! Immutability on S3: data objects written under Object Lock retention (compliance mode), so
//! the store itself refuses to delete them inside the protection period. Runs against moto's
//! server mode, which implements Object Lock (s3s-fs does not).

use std::time::Duration;

use cairn_repository::{InitOptions, Location, Repository};

use crate::support::{LocalServer, http, keep_last, noise, pass, start_server};

struct Moto(LocalServer);

impl Moto {
    /// Starts `moto_server`; `None` (skipped) only when `CAIRN_TEST_S3` is unset and it is not
    /// installed.
    fn start() -> Option<Self> {
        let server = start_server(
            "moto_server",
            "CAIRN_TEST_S3",
            "pip install 'moto[server]'",
            |port, _| {
                [
                    "-H".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string().into(),
                ]
                .into()
            },
            Duration::from_secs(90),
        )?;
        Some(Self(server))
    }

    /// One raw HTTP request: status and body. Moto does not check signatures, but refuses
    /// object requests that carry no credentials at all.
    fn http(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut all = vec![(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=0",
        )];
        all.extend_from_slice(headers);
        http(&self.0, method, target, &all)
    }

    fn bucket(&self, name: &str, object_lock: bool) {
        let headers: &[(&str, &str)] = if object_lock {
            &[("x-amz-bucket-object-lock-enabled", "true")]
        } else {
            &[]
        };
        let (status, body) = self.http("PUT", &format!("/{name}"), headers);
        assert_eq!(status, 200, "creating bucket {name}: {body}");
    }

    /// A repository protected for `period` in a new bucket with Object Lock.
    async fn locked_repository(&self, bucket: &str, period: Duration) -> Repository {
        self.bucket(bucket, true);
        let repo = Repository::init(
            self.location(bucket),
            &pass("p"),
            InitOptions::new().protection(period),
        )
        .await
        .unwrap();
        assert!(repo.object_lock(), "the bucket has Object Lock enabled");
        repo
    }

    /// The keys under `prefix` in `bucket`.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (_, listing) = self.http(
            "GET",
            &format!("/{bucket}?list-type=2&prefix={prefix}"),
            &[],
        );
        tags(&listing, "Key")
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// The retain-until date of the object at `key` in `bucket`.
    fn retained_until(&self, bucket: &str, key: &str) -> jiff::Timestamp {
        let (status, head) = self.http("HEAD", &format!("/{bucket}/{key}"), &[]);
        assert_eq!(status, 200, "{key}: {head}");
        header(&head, "x-amz-object-lock-retain-until-date")
            .unwrap_or_else(|| panic!("{key} has no retain-until date: {head}"))
            .parse()
            .unwrap()
    }

    fn location(&self, bucket: &str) -> Location {
        Location::new(format!("s3://{bucket}/repo"))
            .option("aws_endpoint", format!("http://127.0.0.1:{}", self.0.port))
            .option("aws_allow_http", "true")
            .option("aws_region", "us-east-1")
            .option("aws_access_key_id", "testing")
            .option("aws_secret_access_key", "testing")
    }
}

/// The value of a response header.
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The text between `<tag>` and `</tag>`, every occurrence.
fn tags<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split(&close).next())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_lock_makes_the_store_refuse_deletes_inside_the_protection_period() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let repo = moto
        .locked_repository("locked", Duration::from_secs(86_400))
        .await;
    let first = repo
        .backup_stream("dump", &noise(600_000, 1)[..], Default::default())
        .await
        .unwrap();
    repo.backup_stream("dump", &noise(600_000, 2)[..], Default::default())
        .await
        .unwrap();

    // Every data object carries compliance-mode retention of at least the period.
    let keys = moto.keys("locked", "repo/");
    let data: Vec<&String> = keys
        .iter()
        .filter(|k| !k.starts_with("repo/keys/") && !k.starts_with("repo/locks/"))
        .collect();
    assert!(data.len() >= 4, "config, packs, index, snapshots: {keys:?}");
    for key in &data {
        let (status, head) = moto.http("HEAD", &format!("/locked/{key}"), &[]);
        assert_eq!(status, 200, "{key}: {head}");
        assert_eq!(
            header(&head, "x-amz-object-lock-mode"),
            Some("COMPLIANCE"),
            "{key}: {head}"
        );
        let until = moto.retained_until("locked", key);
        assert!(
            until >= jiff::Timestamp::now() + jiff::SignedDuration::from_secs(86_000),
            "{key} retained until {until}"
        );
    }
    // The key slot too (one deleted would leave the data unreadable); the one init wrote
    // before it knew of the lock is gone.
    let slots: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with("repo/keys/"))
        .collect();
    assert_eq!(slots.len(), 1, "{keys:?}");
    let (_, head) = moto.http("HEAD", &format!("/locked/{}", slots[0]), &[]);
    assert_eq!(
        header(&head, "x-amz-object-lock-mode"),
        Some("COMPLIANCE"),
        "{head}"
    );

    // Deleting a locked version directly, behind cairn's back, is refused by the store.
    let pack = data.iter().find(|k| k.contains("/data/")).expect("a pack");
    let (_, versions) = moto.http("GET", &format!("/locked?versions&prefix={pack}"), &[]);
    let version = tags(&versions, "VersionId")[0];
    let (status, body) = moto.http(
        "DELETE",
        &format!("/locked/{pack}?versionId={version}"),
        &[],
    );
    assert_eq!(status, 403, "the store refuses: {body}");

    // And cairn's own forget/prune skip protected data and say so.
    let forgot = keep_last(&repo, 1).await;
    assert!(forgot.removed.is_empty());
    assert_eq!(forgot.protected[0].0, first.id);

    // Reopened later, the repository still writes under retention, and first writes its key
    // slot again: the slot stays locked as long as the newest data it opens.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let repo = Repository::open(moto.location("locked"), &pass("p"))
        .await
        .unwrap();
    assert!(repo.object_lock());
    let last = repo
        .backup_stream("dump", &noise(600_000, 3)[..], Default::default())
        .await
        .unwrap();
    let retained_until = |key: &str| moto.retained_until("locked", key);
    let snapshot = retained_until(&format!("repo/snapshots/{}", last.id));
    let slot = retained_until(slots[0]);
    assert!(
        slot >= snapshot,
        "the key slot is retained until {slot}, the newest snapshot until {snapshot}"
    );
    // And the config, without which nothing opens: written once at init, it is renewed too.
    let config = retained_until("repo/config");
    assert!(
        config >= snapshot,
        "the config is retained until {config}, the newest snapshot until {snapshot}"
    );
    assert_eq!(repo.check(true).await.unwrap().errors.len(), 0);
}

/// A pack written by an older snapshot and shared by a newer one is retained as long as the
/// newer one: its retention is extended before the newer snapshot is committed, and the
/// extension recorded, so the backups after it leave it be until it is due again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_a_newer_snapshot_shares_are_retained_as_long_as_it() {
    let Some(moto) = Moto::start() else {
        return;
    };
    // Retained two seconds past the period: a pack is due again a second after its write.
    let repo = moto
        .locked_repository("shared", Duration::from_secs(8))
        .await;
    let keys = |prefix: &str| moto.keys("shared", &format!("repo/{prefix}"));
    let retained_until = |key: &str| moto.retained_until("shared", key);
    let data = noise(600_000, 1);
    repo.backup_stream("dump", &data[..], Default::default())
        .await
        .unwrap();
    let packs = keys("data/");
    assert!(!packs.is_empty());
    let before: Vec<_> = packs.iter().map(|k| retained_until(k)).collect();
    assert!(keys("retention/").is_empty(), "nothing shared yet");

    // The same data again, later: every chunk is in the first snapshot's packs.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let second = repo
        .backup_stream("dump", &data[..], Default::default())
        .await
        .unwrap();
    assert_eq!(keys("data/"), packs, "nothing new stored");
    let snapshot = retained_until(&format!("repo/snapshots/{}", second.id));
    for (pack, before) in packs.iter().zip(&before) {
        let after = retained_until(pack);
        assert!(
            after > *before,
            "{pack} retained until {before}, then {after}"
        );
        assert!(
            after >= snapshot,
            "{pack} is retained until {after}, the snapshot sharing it until {snapshot}"
        );
    }
    let records = keys("retention/");
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(retained_until(&records[0]) >= snapshot);

    // A backup straight after finds them retained far enough, and extends nothing.
    let third = Repository::open(moto.location("shared"), &pass("p"))
        .await
        .unwrap();
    third
        .backup_stream("dump", &data[..], Default::default())
        .await
        .unwrap();
    assert_eq!(keys("retention/"), records);
    // Prune reads the record too, and deletes nothing inside the extended retention.
    let pruned = third.prune(false).await.unwrap();
    assert_eq!(pruned.packs_deleted, 0);
    let checked = third.check(true).await.unwrap();
    assert!(checked.errors.is_empty(), "{:?}", checked.errors);
    assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);

    // An object under retention/ that is no record of this repository's (one dated beyond
    // any writer's stamp, one that does not open) stops neither backups nor prune: check
    // names both.
    let id = "0123456789abcdef0123456789abcdef";
    let near = records[0]
        .rsplit('/')
        .next()
        .and_then(|n| n.split_once('-'))
        .unwrap()
        .0;
    for name in [format!("099999999999-{id}"), format!("{near}-{id}")] {
        let (status, body) = moto.http("PUT", &format!("/shared/repo/retention/{name}"), &[]);
        assert_eq!(status, 200, "{body}");
    }
    third
        .backup_stream("dump", &noise(600_000, 4)[..], Default::default())
        .await
        .unwrap();
    third.prune(false).await.unwrap();
    let checked = third.check(false).await.unwrap();
    assert_eq!(checked.warnings.len(), 2, "{:?}", checked.warnings);
}

/// Rotating a key once its slot's period is over works: the slot going away is not renewed
/// on the way out, and the new one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_rotated_once_its_period_is_over() {
    let Some(moto) = Moto::start() else {
        return;
    };
    moto.bucket("rotated", true);
    let period = Duration::from_secs(2);
    Repository::init(
        moto.location("rotated"),
        &pass("old"),
        InitOptions::new().protection(period),
    )
    .await
    .unwrap();
    tokio::time::sleep(period + Duration::from_millis(1_500)).await;
    let repo = Repository::open(moto.location("rotated"), &pass("old"))
        .await
        .unwrap();
    repo.rotate_key(&pass("new")).await.expect("rotated");
    assert!(
        Repository::open(moto.location("rotated"), &pass("old"))
            .await
            .is_err(),
        "the old passphrase opens nothing"
    );
    let repo = Repository::open(moto.location("rotated"), &pass("new"))
        .await
        .unwrap();
    assert_eq!(repo.keys().await.unwrap().len(), 1);
}

/// A bucket without Object Lock refuses retention (moto and MinIO word it otherwise than AWS):
/// the repository is made all the same, protected by cairn alone, with one key slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_without_object_lock_gets_protection_by_cairn_alone() {
    let Some(moto) = Moto::start() else {
        return;
    };
    moto.bucket("plain", false);
    let repo = Repository::init(
        moto.location("plain"),
        &pass("p"),
        InitOptions::new().protection(Duration::from_secs(3600)),
    )
    .await
    .expect("init falls back to protection by cairn");
    assert!(!repo.object_lock());
    assert_eq!(repo.keys().await.expect("slots").len(), 1);
}

/// A server that takes the retention headers and keeps no versions (s3s-fs) enforces none of
/// it: the repository says it is protected by cairn alone, and so does its config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_keeping_no_versions_gets_protection_by_cairn_alone() {
    let Some(s3) = crate::s3::S3Server::start() else {
        return;
    };
    let loc = s3.location();
    let repo = Repository::init(
        loc.clone(),
        &pass("p"),
        InitOptions::new().protection(Duration::from_secs(3600)),
    )
    .await
    .expect("init falls back to protection by cairn");
    assert!(!repo.object_lock());
    let again = Repository::open(loc, &pass("p")).await.expect("opens");
    assert!(!again.object_lock(), "the config says so too");
    assert_eq!(again.protection(), Duration::from_secs(3600));
}
