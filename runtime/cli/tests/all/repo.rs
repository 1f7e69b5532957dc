//! `cairn repo` through a profile file: where the repository is and its credentials, kept off
//! the command line.

use crate::support::{Cairn, files_under, json, noise, stderr, stdout};
use std::os::unix::fs::FileTypeExt;

#[test]
fn a_profile_file_names_the_repository_and_its_options() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let profile = dir.path().join("profile.yaml");
    std::fs::write(
        &profile,
        format!(
            "repo: {}\nlimit_upload: 64MiB\nlimit_download: 67108864\noptions: {{}}\n",
            repo.display()
        ),
    )
    .expect("profile");
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse").expect("passphrase");
    let common = [
        "--profile-file",
        profile.to_str().expect("utf-8"),
        "--passphrase-file",
        pass.to_str().expect("utf-8"),
        "--output",
        "json",
    ];
    let out = cairn.run(&[&["repo", "init"][..], &common].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(repo.join("config").is_file(), "the profile's repo was used");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(data.join("a.txt"), "alpha").expect("file");
    let out = cairn.run(
        &[
            &["repo", "backup", data.to_str().expect("utf-8")][..],
            &common,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = json(&out)["id"].as_str().expect("id").to_string();
    let out = cairn.run(&[&["repo", "snapshots"][..], &common].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(json(&out).to_string().contains(&id));

    // A relative `repo:` is relative to the profile file, from any directory.
    let relative = dir.path().join("relative.yaml");
    std::fs::write(&relative, "repo: ./rel/../near\n").expect("profile");
    let out = cairn
        .command(&[
            "repo",
            "init",
            "--profile-file",
            relative.to_str().expect("utf-8"),
            "--passphrase-file",
            pass.to_str().expect("utf-8"),
        ])
        .current_dir(cairn.home.path())
        .output()
        .expect("cairn runs");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("near/config").is_file());

    // --repo on the command line wins over the profile.
    let other = dir.path().join("other");
    let out = cairn.run(
        &[
            &["repo", "init", "--repo", other.to_str().expect("utf-8")][..],
            &common,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(other.join("config").is_file());
}

#[test]
fn a_readable_profile_file_is_warned_of_only_when_it_holds_credentials() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let warned = |options: &str| {
        let profile = dir.path().join("p.yaml");
        std::fs::write(&profile, format!("repo: ./none\noptions: {{{options}}}\n"))
            .expect("profile");
        std::fs::set_permissions(
            &profile,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .expect("chmod");
        let out = cairn
            .command(&[
                "repo",
                "snapshots",
                "--profile-file",
                profile.to_str().expect("utf-8"),
            ])
            .env("CAIRN_PASSPHRASE", "p")
            .output()
            .expect("cairn runs");
        stderr(&out)
    };
    let text = warned("aws_endpoint: 'http://127.0.0.1:1', aws_allow_http: 'true'");
    assert!(!text.contains("holds credentials"), "{text}");
    let text = warned("aws_endpoint: 'http://127.0.0.1:1', aws_secret_access_key: s");
    assert!(
        text.contains("holds credentials (aws_secret_access_key)"),
        "{text}"
    );
}

#[test]
fn a_profile_with_an_unknown_field_is_refused_naming_the_file_and_field() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("profile.yaml");
    std::fs::write(&profile, "repo: /tmp/x\nendpoint: http://nowhere\n").expect("profile");
    let out = cairn.run(&[
        "repo",
        "snapshots",
        "--profile-file",
        profile.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = stderr(&out);
    assert!(
        err.contains("profile.yaml") && err.contains("endpoint"),
        "{err}"
    );
}

#[test]
fn rate_limits_that_are_not_rates_are_refused() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let repo = repo.to_str().expect("utf-8");
    for (flag, rate, says) in [
        ("--limit-upload", "0", "a rate of 0"),
        ("--limit-download", "fast", "not a size"),
        ("--limit-upload", "3 parsecs", "unknown size unit"),
    ] {
        let out = cairn.run(&["repo", "snapshots", "--repo", repo, flag, rate]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag} {rate}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(says),
            "{flag} {rate}: {}",
            stderr(&out)
        );
    }
    let profile = dir.path().join("profile.yaml");
    std::fs::write(&profile, format!("repo: {repo}\nlimit_upload: lots\n")).expect("profile");
    let out = cairn.run(&[
        "repo",
        "snapshots",
        "--profile-file",
        profile.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("limit_upload"), "{}", stderr(&out));
}

/// A fresh Cairn and a temporary directory holding the repository `repo` and its passphrase
/// file; commands run with the arguments that name them.
struct LocalRepo {
    cairn: Cairn,
    dir: tempfile::TempDir,
    common: Vec<String>,
}

impl LocalRepo {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "correct horse").expect("passphrase");
        let common = vec![
            "--repo".into(),
            dir.path().join("repo").display().to_string(),
            "--passphrase-file".into(),
            pass.display().to_string(),
        ];
        Self {
            cairn: Cairn::new(),
            dir,
            common,
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let common: Vec<&str> = self.common.iter().map(String::as_str).collect();
        self.cairn.run(&[args, &common].concat())
    }

    /// Runs as the owner of the files, and only that: root reads and lists any file and
    /// directory, so it runs without the capabilities that let it (as their owner, root still
    /// reads the repository and the passphrase).
    fn run_as_owner(&self, args: &[&str]) -> std::process::Output {
        use std::os::unix::fs::MetadataExt;
        let as_root = std::fs::metadata("/proc/self").expect("proc").uid() == 0;
        let mut command = std::process::Command::new(if as_root {
            "setpriv"
        } else {
            env!("CARGO_BIN_EXE_cairn")
        });
        if as_root {
            command
                .arg("--bounding-set=-dac_override,-dac_read_search")
                .arg(env!("CARGO_BIN_EXE_cairn"));
        }
        command
            .args(args)
            .args(&self.common)
            .env("CAIRN_HOME", self.cairn.home.path())
            .env("TZ", "UTC")
            .env_remove("RUST_LOG")
            .output()
            .expect("cairn runs")
    }

    /// Runs and asserts success.
    fn ok(&self, args: &[&str]) -> std::process::Output {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    }

    /// `repo backup DIR`, which must succeed; the snapshot's id.
    fn backup(&self, dir: &std::path::Path) -> String {
        let dir = dir.to_str().expect("utf-8");
        let out = self.ok(&["repo", "backup", dir, "--output", "json"]);
        json(&out)["id"].as_str().expect("id").to_string()
    }

    /// `repo backup --stdin-from-command` of `sh -c SCRIPT`'s output as `db.sql`, in JSON.
    fn backup_command(&self, script: &str) -> std::process::Output {
        let backup = [
            "repo",
            "backup",
            "--stdin-name",
            "db.sql",
            "--stdin-from-command",
            "--output",
            "json",
        ];
        let common: Vec<&str> = self.common.iter().map(String::as_str).collect();
        self.cairn
            .run(&[&backup[..], &common, &["--", "sh", "-c", script]].concat())
    }
}

#[test]
fn a_reader_that_quits_early_ends_the_output_quietly() {
    use std::io::Read;
    let repo = LocalRepo::new();
    let data = repo.dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    // More listing than a pipe holds (64 KiB), so writes meet the closed pipe.
    for i in 0..3000 {
        std::fs::write(data.join(format!("file-with-a-longish-name-{i:05}")), b"x").expect("file");
    }
    std::fs::write(data.join("big.sql"), vec![b'y'; 4 << 20]).expect("big");
    let d = data.to_str().expect("utf-8");
    repo.ok(&["repo", "init"]);
    repo.ok(&["repo", "backup", d]);
    let common: Vec<&str> = repo.common.iter().map(String::as_str).collect();
    // `cairn repo ls | head -1`, and one file of the tree to a reader that takes one line.
    let listing = ["repo", "ls", "latest"];
    let one_file = [
        "repo",
        "restore",
        "latest",
        "--include",
        "big.sql",
        "--target",
        "-",
    ];
    for args in [&listing[..], &one_file[..]] {
        let mut child = repo
            .cairn
            .command(&[args, &common].concat())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cairn runs");
        let mut out = child.stdout.take().expect("stdout");
        out.read_exact(&mut [0u8; 100]).expect("the first bytes");
        drop(out);
        let done = child.wait_with_output().expect("cairn ends");
        assert_eq!(done.status.code(), Some(141), "{args:?}: {}", stderr(&done));
        assert_eq!(stderr(&done), "", "{args:?}: no panic, no message");
    }
}

#[test]
fn find_lists_the_snapshots_holding_a_file_deleted_since() {
    let repo = LocalRepo::new();
    let data = repo.dir.path().join("data");
    std::fs::create_dir_all(data.join("conf")).expect("data");
    std::fs::write(data.join("conf/pg_hba.conf"), "local all all trust\n").expect("file");
    let d = data.to_str().expect("utf-8");
    repo.ok(&["repo", "init"]);
    let first = json(&repo.ok(&["repo", "backup", d, "--output", "json"]))["id"]
        .as_str()
        .expect("id")
        .to_string();
    std::fs::remove_file(data.join("conf/pg_hba.conf")).expect("deleted");
    repo.ok(&["repo", "backup", d]);
    let out = repo.ok(&["repo", "find", "pg_hba.conf", "--output", "json"]);
    let found = json(&out);
    let rows = found.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "{found}");
    assert_eq!(rows[0]["snapshot"], first.as_str());
    assert_eq!(rows[0]["path"], "conf/pg_hba.conf");
    let out = repo.ok(&["repo", "find", "conf/*.yaml"]);
    assert_eq!(stdout(&out).trim(), "nothing found");
    // A pattern is required.
    assert_eq!(repo.run(&["repo", "find"]).status.code(), Some(2));
}

#[test]
fn prune_repacks_a_half_unused_pack_the_next_deletes_it_and_check_reads_subsets() {
    let repo = LocalRepo::new();
    let (dir, run) = (&repo.dir, |args: &[&str]| repo.ok(args));
    run(&["repo", "init"]);
    // 512 distinct pages (binary, as a database's are: cut at page boundaries), then every
    // other one rewritten.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    let page = |n: usize, v: u8| -> Vec<u8> {
        let mut p = format!("page {n:04} version {v:03}\0").repeat(8192 / 22 + 1);
        p.truncate(8192);
        p.into_bytes()
    };
    let db = |v: u8| -> Vec<u8> {
        (0..512)
            .flat_map(|n| page(n, if n % 2 == 0 { v } else { 0 }))
            .collect()
    };
    std::fs::write(data.join("db"), db(0)).expect("db");
    run(&["repo", "backup", data.to_str().expect("utf-8")]);
    std::fs::write(data.join("db"), db(0x55)).expect("db");
    let id = repo.backup(&data);
    run(&["repo", "forget", "--keep-last", "1"]);

    let out = repo.run(&["repo", "prune", "--repack-unused", "150"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a percentage from 0 to 100"),
        "{}",
        stderr(&out)
    );
    let out = run(&["repo", "prune", "--dry-run", "--output", "json"]);
    assert_eq!(json(&out)["packs_repacked"], 1, "{}", json(&out));
    // What a backup killed while writing a pack leaves, which no listing shows.
    let staged = dir
        .path()
        .join("repo/data")
        .join(format!("{}#4", "ab".repeat(32)));
    std::fs::write(&staged, [0u8; 700]).expect("staging file");
    let out = run(&["repo", "prune"]);
    assert!(
        stdout(&out).contains("repacked 1 mostly unused packs")
            && stdout(&out).contains("removed 1 unfinished uploads (700 bytes)"),
        "{}",
        stdout(&out)
    );
    assert!(!staged.exists());
    let out = run(&["repo", "prune", "--output", "json"]);
    let report = json(&out);
    assert_eq!(
        (&report["packs_deleted"], &report["packs_repacked"]),
        (&1.into(), &0.into()),
        "{report}"
    );
    let out = run(&["repo", "check", "--read-data", "--output", "json"]);
    assert_eq!(
        json(&out)["warnings"],
        serde_json::json!([]),
        "{}",
        json(&out)
    );
    // Group 1 of 1 is every pack; a subset and --read-data are one choice.
    let out = run(&[
        "repo",
        "check",
        "--read-data-subset",
        "1/1",
        "--output",
        "json",
    ]);
    let report = json(&out);
    assert!(
        report["packs"].as_u64() > Some(0) && report["packs_read"] == report["packs"],
        "{report}"
    );
    let out = repo.run(&["repo", "check", "--read-data", "--read-data-subset", "10%"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let target = dir.path().join("restored");
    run(&[
        "repo",
        "restore",
        &id,
        "--target",
        target.to_str().expect("utf-8"),
    ]);
    assert!(std::fs::read(target.join("db")).expect("restored db") == db(0x55));
}

#[test]
fn ls_lists_a_tree_and_restore_include_restores_only_those_paths() {
    let repo = LocalRepo::new();
    let (dir, run) = (&repo.dir, |args: &[&str]| repo.run(args));
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("conf")).expect("data");
    std::fs::write(data.join("conf/app.yaml"), "replicas: 3\n").expect("file");
    std::fs::write(data.join("db.bin"), vec![7u8; 100_000]).expect("file");
    std::fs::write(data.join("disk.img"), vec![0u8; 1 << 20]).expect("file");
    assert!(run(&["repo", "init"]).status.success());
    // Files changed within two seconds of a backup's start are read again by the next.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let d = data.to_str().expect("utf-8");
    assert!(run(&["repo", "backup", d]).status.success());
    // The next backup takes the unchanged files from this one; --force reads them all.
    let out = run(&["repo", "backup", d]);
    assert!(
        stdout(&out).contains("3 files (3 unchanged, not read)"),
        "{}",
        stdout(&out)
    );
    let out = run(&["repo", "backup", d, "--force"]);
    assert!(!stdout(&out).contains("unchanged"), "{}", stdout(&out));
    let out = run(&["repo", "backup", "-", "--stdin-name", "s", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A stable host for a pod's backups: listed, and filtered on.
    assert!(
        run(&["repo", "backup", d, "--host", "db-backup"])
            .status
            .success()
    );
    let listed = stdout(&run(&["repo", "snapshots", "--host", "db-backup"]));
    let lines: Vec<&str> = listed.lines().collect();
    assert!(
        lines.len() == 2 && lines[1].contains("  db-backup "),
        "{listed}"
    );

    let out = run(&["repo", "ls", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("conf/app.yaml") && text.contains("100000") && text.contains("dir "),
        "{text}"
    );
    let out = run(&["repo", "ls", "latest", "conf", "--output", "json"]);
    let paths: Vec<String> = json(&out)
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_string())
        .collect();
    assert_eq!(paths, ["conf", "conf/app.yaml"]);

    let target = dir.path().join("restored");
    let t = target.to_str().expect("utf-8");
    let restore = |include| {
        run(&[
            "repo",
            "restore",
            "latest",
            "--target",
            t,
            "--include",
            include,
        ])
    };
    let out = restore("conf/app.yaml");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(target.join("conf/app.yaml")).expect("restored"),
        "replicas: 3\n"
    );
    assert!(!target.join("db.bin").exists());
    let out = restore("nope");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`nope` is not in snapshot"),
        "{}",
        stderr(&out)
    );

    // One file to standard output; two are refused (exit 2).
    let out = run(&[
        "repo",
        "restore",
        "latest",
        "--include",
        "conf/app.yaml",
        "--target",
        "-",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"replicas: 3\n");
    let out = run(&[
        "repo",
        "restore",
        "latest",
        "--include",
        "conf",
        "--include",
        "db.bin",
        "--target",
        "-",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // --sparse: the image of zeros comes back as a hole; a stream cannot be written sparse.
    use std::os::unix::fs::MetadataExt;
    let sparse = dir.path().join("sparse");
    let s = sparse.to_str().expect("utf-8");
    let out = run(&["repo", "restore", "latest", "--sparse", "--target", s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let image = std::fs::metadata(sparse.join("disk.img")).expect("restored image");
    assert_eq!((image.len(), image.blocks()), (1 << 20, 0));
    let out = run(&["repo", "restore", "latest", "--sparse", "--target", "-"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("conv=sparse"), "{}", stderr(&out));

    // --delete: what the target holds beside the snapshot goes, and is counted.
    std::fs::write(sparse.join("left-over"), b"x").expect("extra file");
    let out = run(&[
        "repo", "restore", "latest", "--delete", "--target", s, "--output", "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["deleted"], 1);
    assert!(!sparse.join("left-over").exists());
    let out = run(&["repo", "restore", "latest", "--delete", "--target", "-"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn ls_shows_what_a_hard_link_is_of_and_a_devices_numbers() {
    let repo = LocalRepo::new();
    let run = |args: &[&str]| repo.run(args);
    let data = repo.dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    std::fs::write(data.join("a"), "one").expect("file");
    std::fs::hard_link(data.join("a"), data.join("b")).expect("hard link");
    // /dev/null's numbers, 1,3 (the tests run as root, as the conformance suite's do).
    let null = std::process::Command::new("mknod")
        .arg(data.join("null"))
        .args(["c", "1", "3"])
        .status()
        .expect("mknod runs");
    assert!(null.success());
    assert!(run(&["repo", "init"]).status.success());
    assert!(
        run(&["repo", "backup", data.to_str().expect("utf-8")])
            .status
            .success()
    );
    let out = run(&["repo", "ls", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.ends_with(name) || l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no {name}: {text}"))
            .to_owned()
    };
    assert!(line("b (hard link of a)").contains("file"), "{text}");
    assert!(line("null").contains(" 1,3 "), "{text}");
}

#[test]
fn unlock_lists_locks_and_remove_all_frees_a_lost_hosts_lock() {
    let repo = LocalRepo::new();
    let (dir, run) = (&repo.dir, |args: &[&str]| repo.run(args));
    assert!(run(&["repo", "init"]).status.success());
    // A backup on a host that was lost a minute ago: its lock holds for half an hour.
    let locks = dir.path().join("repo/locks");
    std::fs::create_dir_all(&locks).expect("locks");
    let time = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    std::fs::write(
        locks.join("0123456789abcdef0123456789abcdef"),
        format!(
            r#"{{"exclusive":false,"hostname":"lost-node","pid":42,"operation":"backup","time":"{time}"}}"#
        ),
    )
    .expect("lock");

    let out = run(&["repo", "prune"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lost-node (pid 42, backup")
            && stderr(&out).contains("cairn repo unlock --remove-all"),
        "{}",
        stderr(&out)
    );
    let out = run(&["repo", "unlock"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("01234567 shared backup lock of lost-node (pid 42)")
            && stdout(&out).contains(": held")
            && stdout(&out).contains("1 held;"),
        "{}",
        stdout(&out)
    );
    let out = run(&["repo", "unlock", "--remove-all", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)[0]["removed"], true, "{}", json(&out));
    assert!(run(&["repo", "prune"]).status.success());
    let out = run(&["repo", "unlock"]);
    assert_eq!(stdout(&out).trim(), "no locks", "{}", stdout(&out));
}

#[test]
fn diff_shows_what_changed_between_two_tree_snapshots() {
    let repo = LocalRepo::new();
    let (dir, run) = (&repo.dir, |args: &[&str]| repo.ok(args));
    run(&["repo", "init"]);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(data.join("keep.txt"), "same").expect("file");
    std::fs::write(data.join("db"), vec![1u8; 3 * 8192]).expect("file");
    std::fs::write(data.join("old.log"), "gone soon").expect("file");
    let data = data.to_str().expect("utf-8");
    let first = json(&run(&["repo", "backup", data, "--output", "json"]))["id"]
        .as_str()
        .expect("id")
        .to_string();
    std::fs::write(dir.path().join("data/db"), vec![2u8; 4 * 8192]).expect("file");
    std::fs::remove_file(dir.path().join("data/old.log")).expect("remove");
    std::fs::write(dir.path().join("data/new.txt"), "hello").expect("file");
    run(&["repo", "backup", data]);

    let out = run(&["repo", "diff", &first, "latest"]);
    assert_eq!(
        stdout(&out),
        "M db\n+ new.txt\n- old.log\n1 added, 1 removed, 1 modified, 0 changed type, \
         0 metadata only; 8197 bytes grown, 9 bytes shrunk\n"
    );
    let out = run(&["repo", "diff", &first, "latest", "--output", "json"]);
    let report = json(&out);
    assert_eq!(report["summary"]["modified"], 1, "{report}");
    assert_eq!(report["changes"][0]["size_after"], 4 * 8192, "{report}");

    let listed = stdout(&run(&["repo", "snapshots"]));
    let lines: Vec<&str> = listed.lines().collect();
    assert!(
        lines.len() == 3 && lines[0].starts_with("id ") && lines[1].starts_with(&first[..8]),
        "{listed}"
    );

    // Both snapshots were made within the hour: --keep-within keeps them, naming the rule.
    let out = run(&[
        "repo",
        "forget",
        "--keep-within",
        "1h",
        "--dry-run",
        "--output",
        "json",
    ]);
    let report = json(&out)["forget"].clone();
    assert!(
        report["removed"] == serde_json::json!([])
            && report["kept"][&first] == serde_json::json!(["within"]),
        "{report}"
    );
    // restic reads `1m` as a month, other tools as a minute: refused, as a usage error.
    let out = repo.run(&["repo", "forget", "--keep-within", "1m", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("write `1mo` for months or `1min`"),
        "{}",
        stderr(&out)
    );

    let out = run(&["repo", "stats"]);
    assert!(
        stdout(&out).starts_with("snapshots  2 holding ") && stdout(&out).contains("deduplication"),
        "{}",
        stdout(&out)
    );
    let out = run(&["repo", "stats", "--output", "json"]);
    let stats = json(&out);
    // Repeated pages, and keep.txt in both snapshots, are stored once.
    assert!(
        stats["snapshots"] == 2 && stats["deduplication"].as_f64() > Some(1.2),
        "{stats}"
    );
}

/// `backup FILE` saves that one file; `restore` writes it into the target under its name, and
/// `--target -` with `--include` its bytes alone.
#[test]
fn a_file_is_backed_up_and_restored_by_name() {
    let repo = LocalRepo::new();
    repo.ok(&["repo", "init"]);
    let dump = repo.dir.path().join("db.dump");
    std::fs::write(&dump, "-- a dump\n").expect("dump");
    std::fs::write(repo.dir.path().join("other"), "not in it").expect("other");
    let id = repo.backup(&dump);
    let target = repo.dir.path().join("restored");
    let target = target.to_str().expect("utf-8");
    repo.ok(&["repo", "restore", &id, "--target", target]);
    assert_eq!(
        files_under(std::path::Path::new(target)),
        [std::path::Path::new(target).join("db.dump")]
    );
    let out = repo.ok(&[
        "repo",
        "restore",
        &id,
        "--target",
        "-",
        "--include",
        "db.dump",
    ]);
    assert_eq!(stdout(&out), "-- a dump\n");

    // A file in a directory this process may enter but not list (mode 311).
    use std::os::unix::fs::PermissionsExt;
    let hidden = repo.dir.path().join("hidden");
    std::fs::create_dir(&hidden).expect("dir");
    std::fs::write(hidden.join("db.dump"), "-- hidden\n").expect("dump");
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o311)).expect("chmod");
    let file = hidden.join("db.dump");
    let out = repo.run_as_owner(&["repo", "backup", file.to_str().expect("utf-8")]);
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A file the backup cannot read is left out with a warning; the snapshot of the rest is
/// saved, the backup exits 1, and its JSON names the file and why.
#[test]
fn backup_names_what_it_could_not_read() {
    use std::os::unix::fs::PermissionsExt;
    let repo = LocalRepo::new();
    repo.ok(&["repo", "init"]);
    let data = repo.dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(data.join("a.txt"), "alpha").expect("file");
    let secret = data.join("secret");
    // A name that is not UTF-8 is named by its bytes too.
    let odd = data.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"odd\xff"));
    for f in [&secret, &odd] {
        std::fs::write(f, "kept from the backup").expect("file");
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    }
    let out = repo.run_as_owner(&[
        "repo",
        "backup",
        data.to_str().expect("utf-8"),
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["summary"]["unreadable"], 2, "{report}");
    assert_eq!(report["summary"]["files"], 1, "{report}");
    // In the walk's order, by name.
    let (odd_named, named) = (&report["unreadable"][0], &report["unreadable"][1]);
    let odd_hex: String = odd
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(odd_named["path_raw"], odd_hex.as_str(), "{report}");
    assert!(named.get("path_raw").is_none(), "{report}");
    assert_eq!(named["path"], secret.display().to_string(), "{report}");
    assert!(
        named["error"]
            .as_str()
            .is_some_and(|e| e.contains("ermission denied")),
        "{report}"
    );
    assert!(stderr(&out).contains("secret"), "{}", stderr(&out));
    // Named alone, it leaves nothing to save: no empty snapshot.
    let out = repo.run_as_owner(&["repo", "backup", secret.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was saved"),
        "{}",
        stderr(&out)
    );
    let listed = json(&repo.ok(&["repo", "snapshots", "--output", "json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // A profile keeps no credentials given in its URL either, and says so without them.
    let out = repo.cairn.run(&[
        "profile",
        "add",
        "creds",
        "--repo",
        "s3://AKIAKEY:SuperSecret123@bucket/r",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("holds credentials") && !stderr(&out).contains("SuperSecret"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn backup_exclude_leaves_out_what_the_patterns_match() {
    let repo = LocalRepo::new();
    let (dir, run) = (&repo.dir, |args: &[&str]| repo.ok(args));
    run(&["repo", "init"]);
    let data = dir.path().join("data");
    for d in ["pg_wal", "base/1", "base/pg_wal"] {
        std::fs::create_dir_all(data.join(d)).expect("dirs");
    }
    for f in [
        "postmaster.pid",
        "PG_VERSION",
        "pg_wal/000000010000000000000001",
        "base/1/16384",
        "base/1/16384.tmp",
        "base/pg_wal/keep",
    ] {
        std::fs::write(data.join(f), f).expect("file");
    }
    let data = data.to_str().expect("utf-8");
    run(&[
        "repo",
        "backup",
        data,
        "--exclude",
        "/postmaster.pid",
        "--exclude",
        "pg_wal/**",
        "--exclude",
        "*.tmp",
    ]);
    let listed = stdout(&run(&["repo", "ls", "latest", "--output", "json"]));
    let mut paths: Vec<String> = serde_json::from_str::<serde_json::Value>(&listed)
        .expect("json")
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_string())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "PG_VERSION",
            "base",
            "base/1",
            "base/1/16384",
            "base/pg_wal",
            "base/pg_wal/keep",
            "pg_wal"
        ],
        "pg_wal stays, empty; only the root's postmaster.pid and pg_wal are anchored"
    );
    let out = repo.run(&["repo", "backup", "-", "--stdin-name", "s", "--exclude", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = repo.run(&["repo", "backup", data, "--exclude", "/"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("matches nothing"), "{}", stderr(&out));
}

#[test]
fn copy_fills_an_offsite_repository_once_and_its_copies_restore() {
    let repo = LocalRepo::new();
    let (dir, run) = (&repo.dir, |args: &[&str]| repo.ok(args));
    run(&["repo", "init"]);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(data.join("db"), vec![7u8; 5 * 8192]).expect("file");
    std::fs::write(data.join("a.txt"), "alpha").expect("file");
    let data = data.to_str().expect("utf-8");
    let backup = |tag: &str| {
        json(&run(&[
            "repo", "backup", data, "--tag", tag, "--output", "json",
        ]))["id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    let first = backup("nightly");
    std::fs::write(dir.path().join("data/a.txt"), "beta").expect("file");
    let second = backup("weekly");

    let offsite = dir.path().join("offsite");
    let pass = dir.path().join("offsite-pass");
    std::fs::write(&pass, "another horse").expect("passphrase");
    let (offsite, pass) = (
        offsite.to_str().expect("utf-8"),
        pass.to_str().expect("utf-8"),
    );
    let to = ["--to", offsite, "--to-passphrase-file", pass];
    let copy = |args: &[&str]| repo.run(&[&["repo", "copy"], args, &to].concat());

    // The destination must exist; the error says it is the destination.
    let out = copy(&[]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("the destination"), "{}", stderr(&out));
    let at_offsite = |args: &[&str]| {
        let out = repo
            .cairn
            .run(&[args, &["--repo", offsite, "--passphrase-file", pass]].concat());
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    at_offsite(&["repo", "init"]);

    // By filter, then everything: what is there already is skipped.
    let out = copy(&["--tag", "nightly"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("copied {} as ", &first[..8])),
        "{}",
        stdout(&out)
    );
    let out = copy(&["--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["skipped"][0]["from"], first.as_str(), "{report}");
    assert_eq!(report["copied"][0]["from"], second.as_str(), "{report}");
    assert!(
        report["copied"][0]["summary"]["new_bytes"].as_u64() < Some(100),
        "the second copy stores only what changed: {report}"
    );
    let copied = report["copied"][0]["to"].as_str().expect("id").to_string();
    let out = copy(&[]);
    assert_eq!(stdout(&out).lines().last(), Some("copied 0, skipped 2"));

    // The copy restores, and lists with the original's tags and time.
    let target = dir.path().join("restored");
    at_offsite(&[
        "repo",
        "restore",
        &copied,
        "--target",
        target.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        std::fs::read_to_string(target.join("a.txt")).expect("a.txt"),
        "beta"
    );
    let listed = json(&at_offsite(&["repo", "snapshots", "--output", "json"]));
    let originals = json(&run(&["repo", "snapshots", "--output", "json"]));
    for i in 0..2 {
        assert_eq!(listed[i]["original"], originals[i]["id"], "{listed}");
        assert_eq!(listed[i]["time"], originals[i]["time"], "{listed}");
        assert_eq!(listed[i]["tags"], originals[i]["tags"], "{listed}");
    }

    // Misuse: ids with filters; the destination's wrong passphrase.
    let out = copy(&[&first, "--tag", "nightly"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    std::fs::write(pass, "wrong").expect("passphrase");
    let out = copy(&[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("the destination"), "{}", stderr(&out));
}

#[test]
fn forget_by_id_removes_the_snapshots_named_and_refuses_rules_beside_them() {
    let repo = LocalRepo::new();
    let (dir, run) = (&repo.dir, |args: &[&str]| repo.ok(args));
    run(&["repo", "init"]);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    let data = data.to_str().expect("utf-8");
    let mut ids = Vec::new();
    for text in ["one", "two"] {
        std::fs::write(dir.path().join("data/f"), text).expect("file");
        ids.push(repo.backup(std::path::Path::new(data)));
    }
    let out = repo.run(&["repo", "forget", &ids[0], "--keep-last", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = repo.run(&["repo", "forget", &ids[0], "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    let out = run(&["repo", "forget", &ids[0][..8]]);
    assert_eq!(stdout(&out), format!("remove {}\n", &ids[0][..8]));
    let listed = json(&run(&["repo", "snapshots", "--output", "json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["id"], ids[1].as_str());
}

#[test]
fn forgetting_a_protected_snapshot_by_id_is_refused() {
    let repo = LocalRepo::new();
    let (dir, run) = (&repo.dir, |args: &[&str]| repo.ok(args));
    // `1m` could be a minute or a month: refused, creating nothing.
    let out = repo.run(&["repo", "init", "--protection", "1m"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`1mo` for months"),
        "{}",
        stderr(&out)
    );
    let out = run(&["repo", "init", "--protection", "1d"]);
    assert!(
        stdout(&out).contains("immutable for 1 day"),
        "{}",
        stdout(&out)
    );
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(data.join("f"), "one").expect("file");
    let id = repo.backup(&data);
    let out = repo.run(&["repo", "forget", &id]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("protection period"),
        "{}",
        stderr(&out)
    );
    let listed = json(&run(&["repo", "snapshots", "--output", "json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}

#[test]
fn prune_waits_for_repair_index_after_an_index_file_is_lost() {
    let repo = LocalRepo::new();
    let run = |args: &[&str]| repo.ok(args);
    run(&["repo", "init"]);
    let data = repo.dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(
        data.join("dump.sql"),
        "INSERT INTO t VALUES (1);\n".repeat(40_000),
    )
    .expect("dump");
    run(&["repo", "backup", data.to_str().expect("utf-8")]);
    let index = repo.dir.path().join("repo/index");
    for f in std::fs::read_dir(&index).expect("index") {
        std::fs::remove_file(f.expect("entry").path()).expect("remove");
    }
    let out = repo.run(&["repo", "prune"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("repair index"), "{}", stderr(&out));
    let out = run(&["repo", "repair", "index", "--output", "json"]);
    let report = json(&out);
    // The file's pack and the pack of the snapshot's nodes.
    assert_eq!(report["packs_indexed"], 2, "{report}");
    let out = run(&["repo", "prune", "--output", "json"]);
    assert_eq!(json(&out)["packs_deleted"], 0, "{}", json(&out));
    let target = repo.dir.path().join("restored");
    run(&[
        "repo",
        "restore",
        "latest",
        "--target",
        target.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        std::fs::read(target.join("dump.sql")).expect("restored"),
        std::fs::read(data.join("dump.sql")).expect("source")
    );
}

#[test]
fn backup_from_a_command_saves_its_output_only_when_it_succeeds() {
    let repo = LocalRepo::new();
    repo.ok(&["repo", "init"]);
    let common: Vec<&str> = repo.common.iter().map(String::as_str).collect();
    let from = |script: &str| repo.backup_command(script);
    // The whole output was written, then the command failed: nothing is saved.
    let out = from("seq 1 200000; echo 'dump failed' >&2; exit 3");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("dump failed"), "its stderr is shown");
    let err = json(&out)["error"].as_str().expect("error").to_string();
    assert!(
        err.contains(
            "`sh -c 'seq 1 200000; echo '\\''dump failed'\\'' >&2; exit 3'` failed (exit status: 3)"
        ),
        "{err}"
    );
    let out = from("seq 1 1000; kill -9 $$");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let snapshots = json(&repo.ok(&["repo", "snapshots", "--output", "json"]));
    assert_eq!(snapshots.as_array().map(Vec::len), Some(0), "{snapshots}");
    // It succeeds: its output is the snapshot, and what the failed run stored is reused.
    let out = from("seq 1 200000");
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = &json(&out)["summary"];
    assert_eq!(summary["bytes"], 1_288_895, "{summary}");
    assert_eq!(summary["new_bytes"], 0, "{summary}");
    let id = json(&out)["id"].as_str().expect("id").to_string();
    let restored = repo.ok(&["repo", "restore", &id, "--target", "-"]);
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert!(restored.stdout == expected.as_bytes(), "restore differs");
    // A command that cannot start, or none given, is refused before anything runs.
    let out = repo.cairn.run(
        &[
            &[
                "repo",
                "backup",
                "--stdin-name",
                "x",
                "--stdin-from-command",
            ][..],
            &common,
            &["--", "/nonexistent/pg_dump"],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot run `/nonexistent/pg_dump`"));
    let out = repo.run(&[
        "repo",
        "backup",
        "--stdin-name",
        "x",
        "--stdin-from-command",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("give the command after `--`"));
}

#[test]
fn a_source_that_is_neither_a_directory_nor_a_file_and_a_target_that_is_a_file_are_refused() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    std::fs::write(path("pass"), "correct horse").expect("passphrase");
    std::fs::write(path("file"), "a file").expect("file");
    std::fs::create_dir(path("data")).expect("data");
    let fifo = std::process::Command::new("mkfifo")
        .arg(path("fifo"))
        .status()
        .expect("mkfifo runs");
    assert!(fifo.success());
    let repo = path("repo");
    let run = |args: &[&str]| {
        let common = ["--repo", &repo, "--passphrase-file", &path("pass")];
        cairn.run(&[args, &common[..]].concat())
    };
    assert!(run(&["repo", "init"]).status.success());
    for (source, says) in [
        ("missing", "does not exist"),
        ("fifo", "is neither a directory nor a file"),
    ] {
        let out = run(&["repo", "backup", &path(source)]);
        assert_eq!(out.status.code(), Some(2), "{source}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&path(source)) && stderr(&out).contains(says),
            "{source}: {}",
            stderr(&out)
        );
    }
    assert!(run(&["repo", "backup", &path("data")]).status.success());
    let out = run(&["repo", "restore", "latest", "--target", &path("file")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("exists and is not a directory"));
    assert_eq!(std::fs::read(path("file")).expect("file"), b"a file");
}

#[test]
fn a_stream_restore_that_fails_leaves_the_target_as_it_was() {
    let repo = LocalRepo::new();
    repo.ok(&["repo", "init"]);
    let out = repo.backup_command("seq 1 300000");
    assert!(out.status.success(), "{}", stderr(&out));
    let target = repo.dir.path().join("db.sql");
    let t = target.to_str().expect("utf-8");
    repo.ok(&["repo", "restore", "latest", "--target", t]);
    let whole = std::fs::read(&target).expect("restored");
    assert!(whole.starts_with(b"1\n2\n") && whole.ends_with(b"300000\n"));
    // An existing file keeps its mode; through a symlink, the file it names is replaced.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let link = repo.dir.path().join("link.sql");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    repo.ok(&[
        "repo",
        "restore",
        "latest",
        "--target",
        link.to_str().expect("utf-8"),
    ]);
    assert!(std::fs::symlink_metadata(&link).expect("link").is_symlink());
    let mode = std::fs::metadata(&target)
        .expect("target")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read(&target).expect("restored"), whole);
    // A device is written directly, never replaced.
    repo.ok(&["repo", "restore", "latest", "--target", "/dev/null"]);
    assert!(
        std::fs::metadata("/dev/null")
            .expect("/dev/null")
            .file_type()
            .is_char_device()
    );

    // A link that dangles, or another user's (as one planted in /tmp), is replaced, never
    // written through.
    let dangling = repo.dir.path().join("dangling.sql");
    std::os::unix::fs::symlink(repo.dir.path().join("nowhere/x.sql"), &dangling).expect("symlink");
    let victim = repo.dir.path().join("victim");
    std::fs::write(&victim, "keep").expect("victim");
    let planted = repo.dir.path().join("planted.sql");
    std::os::unix::fs::symlink(&victim, &planted).expect("symlink");
    let others = std::os::unix::fs::lchown(&planted, Some(54_321), None).is_ok();
    for (link, check) in [(&dangling, true), (&planted, others)] {
        if !check {
            continue;
        }
        repo.ok(&[
            "repo",
            "restore",
            "latest",
            "--target",
            link.to_str().expect("utf-8"),
        ]);
        assert!(!std::fs::symlink_metadata(link).expect("there").is_symlink());
        assert_eq!(std::fs::read(link).expect("restored"), whole);
    }
    assert!(!repo.dir.path().join("nowhere").exists());
    assert_eq!(std::fs::read(&victim).expect("victim"), b"keep");

    // A directory is refused, saying what to name; missing directories are made.
    let out = repo.run(&[
        "repo",
        "restore",
        "latest",
        "--target",
        repo.dir.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is a directory"), "{}", stderr(&out));
    // So is one not there yet that ends in `/`: it names a directory, not a file.
    let outdir = format!("{}/", repo.dir.path().join("outdir").display());
    let out = repo.run(&["repo", "restore", "latest", "--target", &outdir]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a directory") && stderr(&out).contains("outdir/db.sql"),
        "{}",
        stderr(&out)
    );
    assert!(!repo.dir.path().join("outdir").exists());
    let deep = repo.dir.path().join("new/dir/db.sql");
    repo.ok(&[
        "repo",
        "restore",
        "latest",
        "--target",
        deep.to_str().expect("utf-8"),
    ]);
    assert_eq!(std::fs::read(&deep).expect("restored"), whole);

    // Its data lost, a restore over the earlier copy fails and leaves it whole.
    for pack in walk(&repo.dir.path().join("repo/data")) {
        std::fs::remove_file(pack).expect("remove a pack");
    }
    let out = repo.run(&["repo", "restore", "latest", "--target", t]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&target).expect("still there"), whole);
    let beside: Vec<_> = std::fs::read_dir(repo.dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("cairn-restore"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files
}

#[test]
fn a_key_or_passphrase_file_that_cannot_be_read_is_a_usage_error() {
    let cairn = Cairn::new();
    for flag in ["--passphrase-file", "--key-file"] {
        let out = cairn.run(&[
            "repo",
            "snapshots",
            "--repo",
            "/nonexistent",
            flag,
            "/no/such/file",
        ]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(flag) && stderr(&out).contains("/no/such/file"),
            "{}",
            stderr(&out)
        );
    }
}

/// `init` where a repository is, and removing the key slot in use or the last one, are usage
/// errors (2), not "no repository" (7) or "protected" (6).
#[test]
fn refusals_of_init_and_key_remove_are_usage_errors() {
    let repo = LocalRepo::new();
    repo.ok(&["repo", "init"]);
    let out = repo.run(&["repo", "init"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = repo.ok(&["repo", "key", "list", "--output", "json"]);
    let slot = json(&out)[0]["id"].as_str().expect("a slot").to_owned();
    let out = repo.run(&["repo", "key", "remove", &slot]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// A repository (`repo init` with `init` flags) holding a tree snapshot of `data`: `blob`,
/// 3 MB of noise that does not compress (a pack of its own, past its first frame, stored
/// first), and `files`; with a byte of `blob`'s pack flipped. The repository, `data` and the
/// pack.
fn a_damaged_blob(
    init: &[&str],
    files: &[(&str, &str)],
) -> (LocalRepo, std::path::PathBuf, std::path::PathBuf) {
    let repo = LocalRepo::new();
    repo.ok(&[&["repo", "init"][..], init].concat());
    let data = repo.dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(data.join("blob"), noise(3_000_000, 7)).expect("blob");
    for (name, text) in files {
        std::fs::write(data.join(name), text).expect("a file");
    }
    repo.backup(&data);
    let pack = files_under(&repo.dir.path().join("repo/data"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).expect("pack").len())
        .expect("a pack");
    let mut bytes = std::fs::read(&pack).expect("pack");
    bytes[1000] ^= 0x40;
    std::fs::write(&pack, bytes).expect("pack");
    (repo, data, pack)
}

/// Inside the protection period, `repair packs` is refused (6), and says what leaving the
/// damaged pack costs until then.
#[test]
fn a_protected_damaged_pack_is_refused_saying_what_it_costs() {
    let (repo, _, pack) = a_damaged_blob(&["--protection", "1d"], &[]);
    let name = pack.file_name().and_then(|n| n.to_str()).expect("name");
    let out = repo.run(&["repo", "repair", "packs", &name[..8]]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("back up into a new repository"),
        "{}",
        stderr(&out)
    );
}

/// `check --read-data` names a damaged pack and says to repair it; `repair packs` does, and
/// the next backup of the same data stores what was damaged again.
#[test]
fn repair_packs_lets_the_next_backup_store_damaged_data_again() {
    let (repo, data, pack) = a_damaged_blob(&[], &[]);
    let out = repo.run(&["repo", "check", "--read-data"]);
    assert!(!out.status.success());
    let name = pack.file_name().and_then(|n| n.to_str()).expect("name");
    let hint = format!("cairn repo repair packs {}", &name[..8]);
    assert!(
        stderr(&out).contains(&hint) || stdout(&out).contains(&hint),
        "{}",
        stderr(&out)
    );
    let out = repo.ok(&["repo", "repair", "packs", &name[..8]]);
    assert!(stdout(&out).contains("chunks damaged"), "{}", stdout(&out));
    // Not --force: a file whose chunks are no longer all indexed is read again.
    repo.ok(&["repo", "backup", data.to_str().expect("utf-8")]);
    repo.ok(&["repo", "check", "--read-data"]);
}

/// Snapshots' times are shown and read in the local time zone (`TZ`), as restic's: listed at
/// UTC+14, a snapshot is 14 hours later than at UTC, and a date and time without an offset is
/// that zone's. `ls` and `find` show files' times in the same zone.
#[test]
fn snapshot_times_are_shown_and_read_in_the_local_zone() {
    let repo = LocalRepo::new();
    repo.ok(&["repo", "init"]);
    let data = repo.dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    // 2026-07-01 12:00:00 UTC, and the two 01:30s of New York's night that falls back in
    // 2026 (05:30 and 06:30 UTC).
    for (name, secs) in [
        ("pg_hba.conf", 1_782_907_200),
        ("edt", 1_793_511_000),
        ("est", 1_793_514_600),
    ] {
        let file = std::fs::File::create(data.join(name)).expect("a file");
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        file.set_modified(mtime).expect("its time");
    }
    let id = repo.backup(&data);
    let common: Vec<&str> = repo.common.iter().map(String::as_str).collect();
    let listing = |command: &str, tz: &str, extra: &[&str]| {
        let out = repo
            .cairn
            .command(&[&["repo", command], extra, &common[..]].concat())
            .env("TZ", tz)
            .output()
            .expect("cairn runs");
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let snapshots = |tz: &str, extra: &[&str]| listing("snapshots", tz, extra);
    for (command, extra) in [("ls", ["latest"]), ("find", ["pg_hba.conf"])] {
        let utc = listing(command, "UTC", &extra);
        assert!(utc.contains("2026-07-01 12:00:00"), "{command}: {utc}");
        let east = listing(command, "XST-14", &extra);
        assert!(east.contains("2026-07-02 02:00:00"), "{command}: {east}");
    }
    // A POSIX TZ with New York's rules: the hour it repeats is shown with its offset, and
    // the names stay in one column.
    let ny = listing("ls", "EST5EDT,M3.2.0,M11.1.0", &["latest"]);
    let mut columns = std::collections::BTreeSet::new();
    for (time, name) in [
        ("2026-11-01 01:30:00-04:00", "edt"),
        ("2026-11-01 01:30:00-05:00", "est"),
        ("2026-07-01 08:00:00 ", "pg_hba.conf"),
    ] {
        let line = ny
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("{name}: {ny}"));
        assert!(line.contains(time), "{time}: {ny}");
        columns.insert(line.len() - name.len());
    }
    assert_eq!(columns.len(), 1, "{ny}");
    let listed = json(&repo.ok(&["repo", "snapshots", "--output", "json"]));
    let time: jiff::Timestamp = listed[0]["time"]
        .as_str()
        .expect("time")
        .parse()
        .expect("a time");
    let shown = |t: jiff::Timestamp| t.strftime("%Y-%m-%d %H:%M:%S").to_string();
    let plus = |secs: i64| {
        time.checked_add(jiff::SignedDuration::from_secs(secs))
            .expect("in range")
    };
    let utc = snapshots("UTC", &[]);
    assert!(
        utc.contains("time (UTC)") && utc.contains(&shown(time)),
        "{utc}"
    );
    // A POSIX TZ: 14 hours east of UTC.
    let east = snapshots("XST-14", &[]);
    assert!(east.contains(&shown(plus(14 * 3600))), "{east}");
    // Its wall clock a second before the snapshot: there, the snapshot is not before it; in
    // UTC, that wall clock is 14 hours after the snapshot.
    let wall = plus(14 * 3600 - 1)
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string();
    assert!(!snapshots("XST-14", &["--until", &wall]).contains(&id[..8]));
    assert!(snapshots("UTC", &["--until", &wall]).contains(&id[..8]));

    // forget counts in UTC unless told another zone, which must be one.
    let out = repo.ok(&["repo", "forget", "--keep-daily", "1", "--dry-run"]);
    assert!(stdout(&out).contains("periods of UTC"), "{}", stdout(&out));
    let out = repo.run(&[
        "repo",
        "forget",
        "--keep-daily",
        "1",
        "--time-zone",
        "Nowhere/Atlantis",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--time-zone Nowhere/Atlantis"),
        "{}",
        stderr(&out)
    );
    repo.ok(&[
        "repo",
        "forget",
        "--keep-daily",
        "1",
        "--time-zone",
        "local",
        "--dry-run",
    ]);
}

/// What a restic user types is read as restic reads it, or refused: a filter's time of day
/// without an offset is the local zone's (`TZ=UTC` in these tests), a relative `--path` is the directory `backup` made absolute,
/// tags Cairn sets on exports and zstd levels out of range are refused (2).
#[test]
fn filters_tags_and_levels_are_read_as_given_or_refused() {
    let repo = LocalRepo::new();
    repo.ok(&["repo", "init"]);
    let data = repo.dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(data.join("f"), "x").expect("f");
    let common: Vec<&str> = repo.common.iter().map(String::as_str).collect();
    let out = repo
        .cairn
        .command(&[&["repo", "backup", "data", "--output", "json"], &common[..]].concat())
        .current_dir(repo.dir.path())
        .output()
        .expect("cairn runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let id = json(&out)["id"].as_str().expect("id").to_owned();
    let listed = |extra: &[&str], dir: &std::path::Path| {
        let out = repo
            .cairn
            .command(
                &[
                    &["repo", "snapshots", "--output", "json"],
                    extra,
                    &common[..],
                ]
                .concat(),
            )
            .current_dir(dir)
            .output()
            .expect("cairn runs");
        assert!(out.status.success(), "{}", stderr(&out));
        json(&out)
            .as_array()
            .expect("a list")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(&["--path", "data"], repo.dir.path()),
        std::slice::from_ref(&id)
    );
    assert_eq!(
        listed(&["--path", "./data/"], repo.dir.path()),
        std::slice::from_ref(&id)
    );
    assert!(listed(&["--path", "data"], &data).is_empty());
    // Today, late: the snapshot was made before it, whatever the hour now.
    let late = format!("{}T23:59:59", &jiff::Timestamp::now().to_string()[..10]);
    assert!(listed(&["--since", &late], repo.dir.path()).is_empty());
    assert_eq!(
        listed(&["--until", &late], repo.dir.path()),
        std::slice::from_ref(&id)
    );

    // `latest` among those the filters select: the tree, not the newer stream.
    let stream = repo.dir.path().join("big.sql");
    std::fs::write(&stream, "a stream").expect("stream");
    let out = repo
        .cairn
        .command(
            &[
                &["repo", "backup", "-", "--stdin-name", "big.sql"],
                &common[..],
            ]
            .concat(),
        )
        .stdin(std::fs::File::open(&stream).expect("stream"))
        .output()
        .expect("cairn runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = repo.ok(&["repo", "restore", "latest", "--target", "-"]);
    assert_eq!(out.stdout, b"a stream");
    let target = repo.dir.path().join("back");
    let to = target.to_str().expect("utf-8");
    let out = repo.ok(&[
        "repo",
        "ls",
        "latest",
        "--path",
        data.to_str().expect("utf-8"),
    ]);
    assert!(stdout(&out).contains("f"), "{}", stdout(&out));
    repo.ok(&[
        "repo",
        "restore",
        "latest",
        "--target",
        to,
        "--path",
        data.to_str().expect("utf-8"),
    ]);
    assert_eq!(std::fs::read_to_string(target.join("f")).expect("f"), "x");
    for args in [
        &[
            "repo", "restore", "latest", "--target", to, "--path", "/nothing",
        ][..],
        &["repo", "restore", &id[..8], "--target", to, "--tag", "x"][..],
    ] {
        let out = repo.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }

    for tag in ["export", "namespace=shop", "workload=db", "blueprint=pg"] {
        let out = repo.run(&[
            "repo",
            "backup",
            data.to_str().expect("utf-8"),
            "--tag",
            tag,
        ]);
        assert_eq!(out.status.code(), Some(2), "{tag}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is one Cairn sets"),
            "{}",
            stderr(&out)
        );
    }
    for level in ["100", "-200", "23"] {
        let out = repo.run(&["repo", "backup", "data", "--zstd-level", level]);
        assert_eq!(out.status.code(), Some(2), "{level}: {}", stderr(&out));
    }
}

/// Data lost for good (a damaged pack repaired, the file gone from the source): `repair
/// snapshots` writes the tree again without it, so `check` passes and the rest restores.
#[test]
fn repair_snapshots_leaves_out_a_file_whose_data_is_lost() {
    let (repo, data, pack) = a_damaged_blob(&[], &[("keep", "kept\n")]);
    let name = pack.file_name().and_then(|n| n.to_str()).expect("name");
    repo.ok(&["repo", "repair", "packs", name]);
    std::fs::remove_file(data.join("blob")).expect("blob gone");
    assert!(!repo.run(&["repo", "check"]).status.success());

    let out = repo.ok(&["repo", "repair", "snapshots", "--dry-run", "--forget"]);
    let text = stdout(&out);
    assert!(
        text.contains("1 files lost") && text.contains("  blob: "),
        "{text}"
    );
    assert!(
        text.contains("would be written again without them, and removed"),
        "{text}"
    );
    let out = repo.ok(&[
        "repo",
        "repair",
        "snapshots",
        "--forget",
        "--output",
        "json",
    ]);
    let report = json(&out);
    let new = report["snapshots"][0]["repaired"]
        .as_str()
        .expect("repaired")
        .to_owned();
    assert_eq!(report["snapshots"][0]["forgotten"], true, "{report}");
    assert_eq!(report["snapshots"][0]["dropped"][0][0], "blob", "{report}");
    repo.ok(&["repo", "check", "--read-data"]);
    let target = repo.dir.path().join("target");
    repo.ok(&[
        "repo",
        "restore",
        &new,
        "--target",
        target.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        std::fs::read_to_string(target.join("keep")).expect("keep"),
        "kept\n"
    );
    assert!(!target.join("blob").exists());
    // A snapshot that does not exist is named, and fails the command (1).
    let out = repo.run(&["repo", "repair", "snapshots", "0123456789abcdef"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("error: snapshot 0123456789abcdef"),
        "{}",
        stdout(&out)
    );
}

/// `key export` writes the slot apart (readable by its owner only); with every slot on the
/// store gone, `key import` puts it back and the passphrase opens the repository again.
#[test]
fn an_exported_key_slot_is_put_back_by_import() {
    let repo = LocalRepo::new();
    repo.ok(&["repo", "init"]);
    let saved = repo.dir.path().join("slot.json");
    let out = repo.ok(&["repo", "key", "export", saved.to_str().expect("utf-8")]);
    assert!(stdout(&out).contains("keep it apart"), "{}", stdout(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&saved)
            .expect("saved")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let to_stdout = repo.ok(&["repo", "key", "export", "-"]);
    assert_eq!(to_stdout.stdout, std::fs::read(&saved).expect("saved"));
    // A second export to the same file is refused (2, usage), not written over.
    let out = repo.run(&["repo", "key", "export", saved.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    // Into another repository, it opens nothing, and the refusal says it may be another's.
    let other = LocalRepo::new();
    other.ok(&["repo", "init"]);
    let out = other.run(&["repo", "key", "import", saved.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exported from another repository"),
        "{}",
        stderr(&out)
    );

    for slot in std::fs::read_dir(repo.dir.path().join("repo/keys")).expect("keys") {
        std::fs::remove_file(slot.expect("slot").path()).expect("removed");
    }
    assert!(!repo.run(&["repo", "snapshots"]).status.success());
    let out = repo.ok(&["repo", "key", "import", saved.to_str().expect("utf-8")]);
    assert!(
        stdout(&out).contains("imported key slot"),
        "{}",
        stdout(&out)
    );
    repo.ok(&["repo", "snapshots"]);
}

/// Paths that are not UTF-8 are arguments like others: the directory backed up, the target,
/// an --include (matched as listings spell it); and listings escape their bytes.
#[cfg(target_os = "linux")]
#[test]
fn paths_that_are_not_utf8_are_taken_on_the_command_line() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let repo = LocalRepo::new();
    repo.ok(&["repo", "init"]);
    let os = |b: &[u8]| OsStr::from_bytes(b).to_owned();
    let src = repo.dir.path().join(os(b"src\xff"));
    std::fs::create_dir_all(src.join(os(b"sub\xfe"))).expect("src");
    std::fs::write(src.join(os(b"sub\xfe/f\xfd")), b"hi").expect("file");
    let common: Vec<&str> = repo.common.iter().map(String::as_str).collect();
    let run = |args: &[&OsStr]| {
        let out = repo
            .cairn
            .command(&[])
            .args(args)
            .args(&common)
            .output()
            .expect("cairn runs");
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    let s = |t: &str| OsStr::new(t).to_owned();
    run(&[&s("repo"), &s("backup"), src.as_os_str()]);
    let out = run(&[&s("repo"), &s("ls"), &s("latest")]);
    assert!(stdout(&out).contains("sub\\xfe/f\\xfd"), "{}", stdout(&out));
    let target = repo.dir.path().join(os(b"out\xfc"));
    run(&[
        &s("repo"),
        &s("restore"),
        &s("latest"),
        &s("--target"),
        target.as_os_str(),
        &s("--include"),
        &os(b"sub\xfe"),
    ]);
    assert_eq!(
        std::fs::read(target.join(os(b"sub\xfe/f\xfd"))).expect("restored"),
        b"hi"
    );
}

/// A snapshot the source cannot give whole (a damaged pack) is named and left behind; the
/// others are still copied, and the copy exits 1.
#[test]
fn copy_goes_on_past_a_damaged_snapshot() {
    let repo = LocalRepo::new();
    repo.ok(&["repo", "init"]);
    let data = repo.dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(data.join("x"), noise(1_000_000, 1)).expect("x");
    let first = repo.backup(&data);
    let packs = files_under(&repo.dir.path().join("repo/data"));
    std::fs::remove_file(data.join("x")).expect("x");
    std::fs::write(data.join("y"), noise(1_000_000, 2)).expect("y");
    let second = repo.backup(&data);
    let pack = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).expect("pack").len())
        .expect("a pack");
    let mut bytes = std::fs::read(pack).expect("pack");
    bytes[1000] ^= 0x40;
    std::fs::write(pack, bytes).expect("pack");

    let offsite = repo.dir.path().join("offsite");
    let offsite = offsite.to_str().expect("utf-8");
    // The source's own passphrase file, for the destination too.
    let pass = repo.common[3].as_str();
    let init = ["repo", "init", "--repo", offsite, "--passphrase-file", pass];
    assert!(repo.cairn.run(&init).status.success());
    let out = repo.run(&[
        "repo",
        "copy",
        "--to",
        offsite,
        "--to-passphrase-file",
        pass,
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["failed"][0]["from"], first.as_str(), "{report}");
    assert_eq!(report["copied"][0]["from"], second.as_str(), "{report}");
    assert!(stderr(&out).contains("is not copied"), "{}", stderr(&out));
}

/// `--tag a,b` as restic reads it: both tags (a tag holds no comma, so it never matched).
#[test]
fn a_comma_separated_tag_filter_wants_every_tag() {
    let repo = LocalRepo::new();
    let run = |args: &[&str]| repo.ok(args);
    run(&["repo", "init"]);
    let data = repo.dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(data.join("f"), "one").expect("file");
    let data = data.to_str().expect("utf-8");
    run(&["repo", "backup", data, "--tag", "a", "--tag", "b"]);
    run(&["repo", "backup", data, "--tag", "a"]);
    let count = |filter: &str| {
        json(&run(&[
            "repo",
            "snapshots",
            "--tag",
            filter,
            "--output",
            "json",
        ]))
        .as_array()
        .map(Vec::len)
    };
    assert_eq!(count("a,b"), Some(1));
    assert_eq!(count("a"), Some(2));
    assert_eq!(count("a,"), Some(2));
    // backup splits them too.
    run(&["repo", "backup", data, "--tag", "c,d"]);
    assert_eq!(count("d,c"), Some(1));
}

/// `repo init --key-file FILE` of a file not there yet makes the key, as `key add
/// --new-key-file` does, readable by its owner only; the repository then opens with it.
#[test]
fn init_with_a_key_file_not_there_yet_makes_the_key() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo, key) = (dir.path().join("repo"), dir.path().join("new.key"));
    let (repo, key) = (repo.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let out = cairn.run(&["repo", "init", "--repo", repo, "--key-file", key]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("created key file"),
        "{}",
        stdout(&out)
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(key).expect("the key file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let out = cairn.run(&["repo", "snapshots", "--repo", repo, "--key-file", key]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Only init makes one: elsewhere a key file not there is an error.
    let out = cairn.run(&[
        "repo",
        "snapshots",
        "--repo",
        repo,
        "--key-file",
        "/nonexistent.key",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn latest_is_the_newest_tree_for_ls_and_diff_and_a_restore_asks_which_kind_after_a_stream() {
    let repo = LocalRepo::new();
    repo.ok(&["repo", "init"]);
    let data = repo.dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(data.join("a.txt"), "alpha").expect("file");
    let tree = repo.backup(&data);
    // A dump saved after the directory's backup: the newest snapshot is a stream.
    let out = repo.backup_command("echo dump");
    assert!(out.status.success(), "{}", stderr(&out));
    let stream = json(&out)["id"].as_str().expect("id").to_string();

    let out = repo.ok(&["repo", "ls", "latest"]);
    assert!(stdout(&out).contains("a.txt"), "{}", stdout(&out));
    let out = repo.ok(&["repo", "diff", &tree, "latest", "--output", "json"]);
    assert_eq!(json(&out)["to"], tree.as_str());

    // A target that says neither a tree nor a stream is refused, naming both.
    let path = |name: &str| repo.dir.path().join(name).display().to_string();
    let out = repo.run(&["repo", "restore", "latest", "--target", &path("out")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    let d = data.display().to_string();
    for said in [
        &tree[..8],
        &stream[..8],
        &format!("tree {d}"),
        "stream db.sql",
    ] {
        assert!(err.contains(said), "{said}: {err}");
    }
    assert!(err.contains("--path"), "{err}");
    assert!(!repo.dir.path().join("out").exists());

    // `/` at the end, or an existing directory, takes the tree; `-`, the stream.
    repo.ok(&[
        "repo",
        "restore",
        "latest",
        "--target",
        &format!("{}/", path("out")),
    ]);
    assert_eq!(
        std::fs::read(repo.dir.path().join("out/a.txt")).expect("a.txt"),
        b"alpha"
    );
    std::fs::create_dir(path("there")).expect("dir");
    repo.ok(&["repo", "restore", "latest", "--target", &path("there")]);
    assert!(repo.dir.path().join("there/a.txt").is_file());
    let out = repo.ok(&["repo", "restore", "latest", "--target", "-"]);
    assert_eq!(stdout(&out), "dump\n");
    // --path settles it too, as the README's form does.
    repo.ok(&[
        "repo",
        "restore",
        "latest",
        "--path",
        &d,
        "--target",
        &path("by-path"),
    ]);
    assert!(repo.dir.path().join("by-path/a.txt").is_file());
    let out = repo.ok(&[
        "repo",
        "restore",
        "latest",
        "--path",
        "db.sql",
        "--target",
        &path("db.sql"),
    ]);
    assert_eq!(
        std::fs::read(path("db.sql")).expect("db.sql"),
        b"dump\n",
        "{}",
        stderr(&out)
    );
    // Once a directory's backup is the newest again, `latest` is that tree, as it always was.
    std::fs::write(data.join("b.txt"), "beta").expect("file");
    repo.backup(&data);
    repo.ok(&["repo", "restore", "latest", "--target", &path("newest")]);
    assert!(repo.dir.path().join("newest/b.txt").is_file());
}

#[test]
fn an_interrupt_while_the_repository_opens_exits_as_an_interrupted_restore_or_backup() {
    // A store that takes the connection and never answers: the command is held where the
    // repository opens (as it is while a passphrase's key is derived), and once the store
    // is reached, the signal cannot come before the command is ready for it.
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("out").display().to_string();
    let data = dir.path().display().to_string();
    for command in [
        &["repo", "restore", "latest", "--target", &target][..],
        &["repo", "backup", &data][..],
    ] {
        // One store each: a connection the last command left waiting is not this one's.
        let store = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let endpoint = format!("aws_endpoint=http://{}", store.local_addr().expect("addr"));
        let child = cairn
            .command(command)
            .args(["--repo", "s3://bucket/repo", "--option", &endpoint])
            .args([
                "--option",
                "aws_allow_http=true",
                "--option",
                "aws_region=us-east-1",
            ])
            .args([
                "--option",
                "aws_access_key_id=k",
                "--option",
                "aws_secret_access_key=s",
            ])
            .env("CAIRN_PASSPHRASE", "correct horse")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cairn runs");
        let (_held, _) = store.accept().expect("the repository is reached");
        let term = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(term.success());
        let out = child.wait_with_output().expect("cairn exits");
        assert_eq!(
            out.status.code(),
            Some(130),
            "{command:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
        assert!(!dir.path().join("out").exists());
    }
}

#[test]
fn an_empty_stream_is_saved_with_a_warning() {
    let repo = LocalRepo::new();
    repo.ok(&["repo", "init"]);
    let common: Vec<&str> = repo.common.iter().map(String::as_str).collect();
    let backup = [
        "repo",
        "backup",
        "-",
        "--stdin-name",
        "x",
        "--output",
        "json",
    ];
    let out = repo
        .cairn
        .command(&[&backup[..], &common].concat())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cairn runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: the stream x was empty") && err.contains("--stdin-from-command"),
        "{err}"
    );
    let report = json(&out);
    assert_eq!(report["summary"]["bytes"], 0, "{report}");
    let warning = report["warnings"][0].as_str().expect("a warning");
    assert!(warning.contains("was empty"), "{report}");
    let id = report["id"].as_str().expect("id");
    let snapshots = stdout(&repo.ok(&["repo", "snapshots"]));
    assert!(snapshots.contains(&id[..8]), "{snapshots}");
    // A stream with data says nothing of the kind.
    let out = repo.backup_command("echo data");
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(json(&out).get("warnings").is_none());
}
