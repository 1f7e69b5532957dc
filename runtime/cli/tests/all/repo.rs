//! `cairn repo` through a profile file: where the repository is and its credentials, kept off
//! the command line.

use crate::support::{Cairn, json, stderr};

#[test]
fn a_profile_file_names_the_repository_and_its_options() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let profile = dir.path().join("profile.yaml");
    std::fs::write(
        &profile,
        format!("repo: {}\noptions: {{}}\n", repo.display()),
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
