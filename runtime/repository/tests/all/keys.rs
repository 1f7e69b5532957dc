//! Key management and bad keys.

use crate::support::*;
use cairn_repository::{BackupOptions, Error, InitOptions, KeyFile, Location, Repository};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passphrase_is_clear_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let url = d.path().join("r").display().to_string();
    Repository::init(url.as_str(), &pass("right"), Default::default())
        .await
        .unwrap();
    let before = count_files(d.path());
    let e = Repository::open(url.as_str(), &pass("wrong"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::WrongPassphrase), "{e}");
    assert!(e.to_string().contains("wrong passphrase"));
    assert_eq!(count_files(d.path()), before);
}

fn count_files(p: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        n += if e.file_type().unwrap().is_dir() {
            1 + count_files(&e.path())
        } else {
            1
        };
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_list_remove_rotate_without_rewriting_data() {
    let url = memory_url();
    let repo = Repository::init(url.as_str(), &pass("one"), Default::default())
        .await
        .unwrap();
    let snap = repo
        .backup_stream("s", &text(100_000, 1)[..], Default::default())
        .await
        .unwrap();
    let two = repo.add_key(&pass("two"), "second").await.unwrap();
    assert_eq!(repo.keys().await.unwrap().len(), 2);
    // A passphrase that opens a slot already adds no way in.
    let e = repo.add_key(&pass("two"), "again").await.unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains(&format!("opens key slot {two} already"))),
        "{e}"
    );
    assert_eq!(repo.keys().await.unwrap().len(), 2);
    // Both open; the data is the same.
    let r2 = Repository::open(url.as_str(), &pass("two")).await.unwrap();
    let mut out = Vec::new();
    r2.restore_stream(&snap.id, &mut out).await.unwrap();
    assert_eq!(out, text(100_000, 1));
    // Rotate "one" into "three": "one" stops working.
    let r1 = Repository::open(url.as_str(), &pass("one")).await.unwrap();
    let three = r1.rotate_key(&pass("three")).await.unwrap();
    assert!(matches!(
        Repository::open(url.as_str(), &pass("one"))
            .await
            .unwrap_err(),
        Error::WrongPassphrase
    ));
    let r3 = Repository::open(url.as_str(), &pass("three"))
        .await
        .unwrap();
    let listed = r3.keys().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|k| k.id == three && k.current));
    // The slot in use cannot go while another is there: its holder could be locked out.
    let e = r3.remove_key(&three).await.unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("opened with")),
        "{e}"
    );
    // Remove "two"; then the last key cannot go.
    assert_eq!(
        r3.remove_key(&two[..8]).await.unwrap(),
        two,
        "the whole id, by its prefix"
    );
    let e = r3.remove_key(&three).await.unwrap_err();
    assert!(matches!(e, Error::LastKey { .. }), "{e}");
    let mut out = Vec::new();
    r3.restore_stream(&snap.id, &mut out).await.unwrap();
    assert_eq!(out.len(), 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_file_open_or_init_local() {
    let d = tempfile::tempdir().unwrap();
    let (dir, key) = (d.path().join("repo"), d.path().join("home/repo.key"));
    let repo = Repository::open_or_init_local(&dir, &key).await.unwrap();
    let s = repo
        .backup_stream("x", &b"hello"[..], Default::default())
        .await
        .unwrap();
    let again = Repository::open_or_init_local(&dir, &key).await.unwrap();
    assert_eq!(again.id(), repo.id());
    let mut out = Vec::new();
    again.restore_stream(&s.id, &mut out).await.unwrap();
    assert_eq!(out, b"hello");
    // Another key file does not open it.
    let other = KeyFile::create(d.path().join("other.key")).unwrap();
    let e = Repository::open(Location::from(dir.as_path()), &other)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::WrongKey { .. }), "{e}");
    // A lost key file is said so, and no new one takes its place.
    std::fs::remove_file(&key).unwrap();
    let e = Repository::open_or_init_local(&dir, &key)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("key file") && e.to_string().contains("is missing"),
        "{e}"
    );
    assert!(!key.exists(), "no new key was written");
}

/// Rewrites the format version in the config of the repository at `dir`.
fn set_version(dir: &std::path::Path, v: u32) {
    let mut cfg = std::fs::read_to_string(dir.join("config")).unwrap();
    for old in 1..=cairn_repository::FORMAT_VERSION {
        cfg = cfg.replace(&format!("\"version\": {old}"), &format!("\"version\": {v}"));
    }
    std::fs::write(dir.join("config"), cfg).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_format_version_is_refused() {
    let (_d, dir, _) = local_repo().await;
    set_version(&dir, 99);
    let e = Repository::open(dir.display().to_string(), &pass("p"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedVersion {
                found: 99,
                supported: 3
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("upgrade"));
}

/// 20 MiB of noise: 2,560 page chunks, more than one list chunk holds (2,048).
fn big_tree(root: &std::path::Path) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("big.db"), noise(20 << 20, 5)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_versions_are_read_and_written_as_they_were() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    big_tree(&src);
    // Version 3 ends lists where an id says so: one to a few for 2,560 ids.
    for (version, lists) in [(1, 0..=0), (2, 2..=2), (3, 1..=4)] {
        let dir = d.path().join(format!("r{version}"));
        init_repo(dir.display().to_string()).await;
        set_version(&dir, version);
        let repo = Repository::open(dir.display().to_string(), &pass("p"))
            .await
            .unwrap();
        let s = repo.backup_tree(&src, Default::default()).await.unwrap();
        assert_eq!(s.summary.chunks, 2560);
        let listed = s.summary.new_chunks - 2560;
        assert!(lists.contains(&listed), "version {version}: {listed} lists");
        let repo = Repository::open(dir.display().to_string(), &pass("p"))
            .await
            .unwrap();
        let dst = d.path().join(format!("dst{version}"));
        repo.restore_tree(&s.id, &dst).await.unwrap();
        assert_same_tree(&src, &dst);
        assert!(repo.check(true).await.unwrap().is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_a_repository_and_double_init() {
    let d = tempfile::tempdir().unwrap();
    let url = d.path().join("nothing").display().to_string();
    assert!(matches!(
        Repository::open(url.as_str(), &pass("p"))
            .await
            .unwrap_err(),
        Error::NotARepository { .. }
    ));
    init_repo(url.as_str()).await;
    assert!(matches!(
        Repository::init(url.as_str(), &pass("p"), Default::default())
            .await
            .unwrap_err(),
        Error::AlreadyInitialised { .. }
    ));
    // Its config lost before anything was stored, as an init killed between its key slot
    // and its config leaves it: only the slot, which opens nothing. While the slot is young,
    // another init may be writing its config: refused. Once it is old, init goes ahead.
    std::fs::remove_file(d.path().join("nothing/config")).unwrap();
    let e = Repository::init(url.as_str(), &pass("p"), Default::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("another init may"), "{e}");
    for slot in std::fs::read_dir(d.path().join("nothing/keys")).unwrap() {
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(slot.unwrap().path())
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
    }
    let repo = Repository::init(url.as_str(), &pass("p"), Default::default())
        .await
        .unwrap();
    assert_eq!(repo.keys().await.unwrap().len(), 1);
    // Its config lost, the repository's data is not taken over by a new one.
    repo.backup_stream("s", &b"data"[..], Default::default())
        .await
        .unwrap();
    std::fs::remove_file(d.path().join("nothing/config")).unwrap();
    match Repository::init(url.as_str(), &pass("p"), Default::default()).await {
        Err(e @ Error::Invalid(_)) => assert!(e.to_string().contains("has no config"), "{e}"),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a new repository"),
    }
}

/// A file whose ids one snapshot keeps in its content (version 1, or a build before short
/// lists) and the other in a list chunk is compared by its ids: `diff` reports no change for
/// the same tree, and the change of one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_sees_through_ids_kept_inline_or_in_list_chunks() {
    let d = tempfile::tempdir().unwrap();
    let (src, dir) = (d.path().join("src"), d.path().join("r"));
    make_tree(&src, 21);
    init_repo(dir.display().to_string()).await;
    let set_version = |v: u32| set_version(&dir, v);
    let p = pass("p");
    let open = || Repository::open(dir.display().to_string(), &p);
    set_version(1);
    let inline = open()
        .await
        .unwrap()
        .backup_tree(&src, Default::default())
        .await
        .unwrap();
    set_version(2);
    let repo = open().await.unwrap();
    let every_file = || BackupOptions::new().parent(cairn_repository::Parent::None);
    let listed = repo.backup_tree(&src, every_file()).await.unwrap();
    assert!(
        listed.summary.new_chunks > 0,
        "the lists are new: {:?}",
        listed.summary
    );
    assert_eq!(repo.diff_trees(&inline, &listed).await.unwrap().len(), 0);
    let mut dump = std::fs::read(src.join("a/dump.sql")).unwrap();
    dump[10] ^= 1;
    std::fs::write(src.join("a/dump.sql"), &dump).unwrap();
    let changed = repo.backup_tree(&src, every_file()).await.unwrap();
    let diff = repo.diff_trees(&inline, &changed).await.unwrap();
    let diff: Vec<_> = diff.iter().map(|c| (c.path.as_str(), c.change)).collect();
    assert_eq!(diff, [("a/dump.sql", "modified")]);
}

/// A repository whose key slots are all gone says so, not "wrong passphrase".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_without_key_slots_says_so() {
    let d = tempfile::tempdir().unwrap();
    let url = d.path().display().to_string();
    init_repo(url.as_str()).await;
    for slot in std::fs::read_dir(d.path().join("keys")).unwrap() {
        std::fs::remove_file(slot.unwrap().path()).unwrap();
    }
    let e = Repository::open(url.as_str(), &pass("p"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no readable key slot"), "{e}");
}

/// Under a protection period key slots are protected as data is (one deleted would leave the
/// data unreadable): removing or rotating one is refused until its period ends. A slot
/// exported beforehand is put back into a repository whose slots are gone, and opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_slots_stay_and_an_exported_slot_is_put_back() {
    let d = tempfile::tempdir().unwrap();
    let url = d.path().display().to_string();
    let hour = std::time::Duration::from_secs(3600);
    let repo = Repository::init(
        url.as_str(),
        &pass("p"),
        InitOptions::new().protection(hour),
    )
    .await
    .unwrap();
    // One slot: the one init wrote before the config is replaced by a protected one.
    assert_eq!(repo.keys().await.unwrap().len(), 1);
    let s = repo
        .backup_stream("s", &noise(100_000, 1)[..], Default::default())
        .await
        .unwrap();
    let second = repo.add_key(&pass("two"), "second").await.unwrap();
    // Refused as protected (the CLI's exit 6), saying what to do instead.
    let e = repo.remove_key(&second).await.unwrap_err();
    assert!(matches!(e, Error::Protected { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("`cairn repo key add` adds a new key now"),
        "{e}"
    );
    let e = repo.rotate_key(&pass("three")).await.unwrap_err();
    assert!(matches!(e, Error::Protected { .. }), "{e}");
    assert_eq!(
        repo.keys().await.unwrap().len(),
        2,
        "nothing added by a refused rotate"
    );

    let exported = repo.export_key().await.unwrap();
    for slot in std::fs::read_dir(d.path().join("keys")).unwrap() {
        std::fs::remove_file(slot.unwrap().path()).unwrap();
    }
    assert!(Repository::open(url.as_str(), &pass("p")).await.is_err());
    // A wrong passphrase, or what is not a slot, is refused and writes nothing.
    let e = Repository::import_key(url.as_str(), &exported, &pass("wrong"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::WrongPassphrase), "{e}");
    let e = Repository::import_key(url.as_str(), b"{}", &pass("p"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a key slot"), "{e}");
    assert_eq!(std::fs::read_dir(d.path().join("keys")).unwrap().count(), 0);

    Repository::import_key(url.as_str(), &exported, &pass("p"))
        .await
        .unwrap();
    let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    repo.restore_stream(&s.id, &mut Vec::new()).await.unwrap();
    let e = Repository::import_key(url.as_str(), &exported, &pass("p"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already"), "{e}");
}

/// A damaged key slot opens nothing: check names it, and `key remove` removes it (it is not
/// the last working key, whatever the count of slots says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_key_slot_is_named_by_check_and_removed() {
    let d = tempfile::tempdir().unwrap();
    let url = d.path().display().to_string();
    let repo = init_repo(url.as_str()).await;
    let second = repo.add_key(&pass("two"), "second").await.unwrap();
    std::fs::write(d.path().join("keys").join(&second), b"{bad").unwrap();
    let report = repo.check(false).await.unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains(&second) && w.contains("key remove")),
        "{report:?}"
    );
    assert_eq!(repo.keys().await.unwrap().len(), 1);
    assert_eq!(repo.remove_key(&second[..8]).await.unwrap(), second);
    assert!(repo.check(false).await.unwrap().warnings.is_empty());
    // The working one is still the last, and stays.
    let only = repo.keys().await.unwrap()[0].id.clone();
    assert!(repo.remove_key(&only).await.is_err());
    assert!(repo.remove_key("").await.is_err());
}

/// Two processes, each opened with one of the two key slots, removing each other's at once:
/// a slot is put back, so the repository is not left without a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slots_removed_at_once_leave_one() {
    let d = tempfile::tempdir().unwrap();
    let url = d.path().join("r").display().to_string();
    let a = Repository::init(url.as_str(), &pass("a"), Default::default())
        .await
        .unwrap();
    a.add_key(&pass("b"), "b").await.unwrap();
    let b = Repository::open(url.as_str(), &pass("b")).await.unwrap();
    let own = |repo: &Repository| {
        let repo = repo.clone();
        async move {
            let slots = repo.keys().await.unwrap();
            slots.into_iter().find(|s| s.current).unwrap().id
        }
    };
    let (slot_a, slot_b) = (own(&a).await, own(&b).await);
    let (by_a, by_b) = tokio::join!(a.remove_key(&slot_b), b.remove_key(&slot_a));
    assert!(
        by_a.is_err() || by_b.is_err(),
        "both removed: {by_a:?} {by_b:?}"
    );
    // One, or both when each looked after the other's removal and put its own back.
    let left = a.keys().await.unwrap();
    assert!(!left.is_empty(), "no key slot left: {by_a:?} {by_b:?}");
    for slot in &left {
        let opener = if slot.id == slot_a { "a" } else { "b" };
        Repository::open(url.as_str(), &pass(opener)).await.unwrap();
    }
}
