//! Backup policies through the real binary: `cairn blueprint add`, `cairn policy …` and
//! `cairn serve --once`, on `examples/hello`.

use std::path::PathBuf;
use std::process::Output;

use crate::support::{Cairn, hello_wasm, json, ok, root, stderr, stdout};

/// A refusal (exit 2) whose message has every one of `needles`.
fn refused_with(out: &Output, needles: &[&str]) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    for needle in needles {
        assert!(
            stderr(out).contains(needle),
            "no {needle:?} in: {}",
            stderr(out)
        );
    }
}

/// `cairn blueprint add hello.wasm`.
fn add_hello(cairn: &Cairn) {
    let wasm = hello_wasm().to_str().expect("utf-8 path");
    ok(&cairn.run(&["blueprint", "add", wasm]));
}

/// `yaml` as the policy file `name.yaml` in the home.
fn policy_file(cairn: &Cairn, name: &str, yaml: &str) -> PathBuf {
    let file = cairn.home.path().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("write the policy");
    file
}

/// A hello policy: the example's local target, its `hello` workload by pattern.
fn hello_policy(retention: &str) -> String {
    let inventory = root().join("examples/hello/inventory.yaml");
    format!(
        "name: greet\nblueprint: hello\ntarget: local:{}\nworkloads: ['hel*']\n\
         frequency: '@hourly'\nretention: {retention}\ngrants: [exec]\nparams: {{greeting: hi}}\n",
        inventory.display()
    )
}

/// A fake `echo` first on the PATH it returns: it touches the file it returns, then runs
/// `then` (shell).
fn fake_echo(cairn: &Cairn, then: &str) -> (String, PathBuf) {
    let bin = cairn.home.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let started = cairn.home.path().join("echo-started");
    let echo = bin.join("echo");
    std::fs::write(
        &echo,
        format!("#!/bin/sh\ntouch {}\n{then}\n", started.display()),
    )
    .expect("fake echo");
    std::fs::set_permissions(&echo, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (path, started)
}

/// A [`fake_echo`] that, once started, waits to be let go: by creating the file it returns
/// last.
fn fake_echo_held(cairn: &Cairn) -> (String, PathBuf, PathBuf) {
    let go = cairn.home.path().join("echo-go");
    let (path, started) = fake_echo(
        cairn,
        &format!(
            "while [ ! -e {} ]; do sleep 0.05; done\nexec /bin/echo \"$@\"",
            go.display()
        ),
    );
    (path, started, go)
}

/// Waits, up to a minute, for the [`fake_echo`] to start.
fn until_started(started: &std::path::Path) {
    let since = std::time::Instant::now();
    while !started.exists() {
        assert!(
            since.elapsed() < std::time::Duration::from_secs(60),
            "the run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn apply(cairn: &Cairn, yaml: &str) -> Output {
    let file = policy_file(cairn, "policy", yaml);
    cairn.run(&["policy", "apply", file.to_str().expect("utf-8 path")])
}

/// A new home with the hello blueprint and its policy `greet`, keeping what `retention` says.
fn hello_home(retention: &str) -> Cairn {
    let cairn = Cairn::new();
    add_hello(&cairn);
    ok(&apply(&cairn, &hello_policy(retention)));
    cairn
}

fn show(cairn: &Cairn) -> serde_json::Value {
    let out = cairn.run(&["policy", "show", "greet", "--output", "json"]);
    ok(&out);
    json(&out)
}

#[test]
fn a_policy_backs_up_its_workloads_and_keeps_what_its_retention_says() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    // A dry run checks and shows the policy, and stores nothing.
    let file = policy_file(&cairn, "dry", &hello_policy("{last: 2}"));
    let out = cairn.run(&[
        "policy",
        "apply",
        "--dry-run",
        file.to_str().expect("utf-8"),
    ]);
    ok(&out);
    assert!(stdout(&out).contains("not stored"), "{}", stdout(&out));
    let out = cairn.run(&["policy", "list"]);
    assert!(stdout(&out).starts_with("no policies"), "{}", stdout(&out));
    ok(&apply(&cairn, &hello_policy("{last: 2}")));

    let mut made = Vec::new();
    for _ in 0..3 {
        let out = cairn.run(&["policy", "run", "greet", "--output", "json"]);
        ok(&out);
        let outcome = json(&out);
        assert_eq!(outcome["succeeded"], true, "{outcome}");
        assert_eq!(outcome["workloads"][0]["workload"], "hello", "{outcome}");
        made.push(
            outcome["workloads"][0]["restore_point"]
                .as_str()
                .expect("a restore point")
                .to_owned(),
        );
    }

    // The third run removed the first point; the two newest stay, made by the policy, with
    // the policy's parameter.
    let shown = show(&cairn);
    let points = shown["restore_points"].as_array().expect("points");
    let ids: Vec<&str> = points.iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(ids, [made[1].as_str(), made[2].as_str()], "{shown}");
    for p in points {
        assert_eq!(p["policy"], "greet");
        assert_eq!(p["target"]["workload"], "hello");
        assert_eq!(p["artifacts"][0]["values"]["stdout"], "hi, world");
    }
    assert_eq!(shown["policy"]["last_run"]["succeeded"], true);
    assert_eq!(shown["policy"]["last_run"]["points"][0], made[2].as_str());

    // A point a policy made restores like any other, through the registered blueprint's name.
    let out = cairn.run(&[
        "run",
        "hello",
        "--action",
        "restore",
        "--target",
        crate::support::HELLO_INVENTORY,
        "--workload",
        "hello",
        "--grant",
        "exec",
        "--from-point",
        &made[2],
    ]);
    ok(&out);
    assert!(
        stderr(&out).contains("says again: hi, world"),
        "{}",
        stderr(&out)
    );

    // The policy restores its newest point of a workload, or the one named.
    let out = cairn.run(&["policy", "restore", "greet", "-w", "hello"]);
    ok(&out);
    assert!(
        stderr(&out).contains("says again: hi, world"),
        "{}",
        stderr(&out)
    );
    // A unique prefix of the id serves, as everywhere ids are given.
    ok(&cairn.run(&[
        "policy",
        "restore",
        "greet",
        "-w",
        "hello",
        "--point",
        &made[1][..8],
    ]));
    refused_with(
        &cairn.run(&[
            "policy", "restore", "greet", "-w", "hello", "--point", &made[0],
        ]),
        &["no such restore point"],
    );
    refused_with(
        &cairn.run(&["policy", "restore", "greet", "-w", "db"]),
        &["policy greet protects hello, not db"],
    );
    let out = cairn.run(&["catalog", "ls", "action", "--output", "json"]);
    let restores = json(&out)
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["value"]["action"] == "restore")
        .map(|a| a["value"]["restore_point"].clone())
        .collect::<Vec<_>>();
    assert!(
        restores.contains(&serde_json::json!(made[1])),
        "{restores:?}"
    );

    // A registration whose component went missing (as after a DR restore elsewhere) says
    // what to do.
    for kept in std::fs::read_dir(cairn.home.path().join("blueprints")).expect("blueprints dir") {
        std::fs::remove_file(kept.expect("an entry").path()).expect("remove");
    }
    let out = cairn.run(&["policy", "run", "greet"]);
    assert!(
        stdout(&out).contains("its component") && stdout(&out).contains("cairn blueprint add"),
        "{}",
        stdout(&out)
    );
    add_hello(&cairn);

    // Applying the policy again keeps how its last run went (that failed one); deleting it
    // keeps its points.
    assert_eq!(show(&cairn)["policy"]["last_run"]["succeeded"], false);
    ok(&apply(&cairn, &hello_policy("{last: 5}")));
    assert_eq!(show(&cairn)["policy"]["last_run"]["succeeded"], false);
    ok(&cairn.run(&["policy", "delete", "greet"]));
    let out = cairn.run(&["catalog", "ls", "local-restore-point", "--output", "json"]);
    assert_eq!(json(&out).as_array().map(Vec::len), Some(2));
    // A point whose data is lost is forgotten by hand: its record only.
    let lost = json(&out)[0]["key"].as_str().expect("id").to_owned();
    refused_with(
        &cairn.run(&["catalog", "forget-point", "nope"]),
        &["nope: no such restore point"],
    );
    let out = cairn.run(&["catalog", "forget-point", &lost[..8]]);
    ok(&out);
    assert!(
        stdout(&out).contains(&format!("forgot restore point {lost}")),
        "{}",
        stdout(&out)
    );
    let out = cairn.run(&["catalog", "ls", "local-restore-point", "--output", "json"]);
    assert_eq!(json(&out).as_array().map(Vec::len), Some(1));
    refused_with(
        &cairn.run(&["policy", "run", "greet"]),
        &["no policy named \"greet\""],
    );
}

/// `cairn serve --once` runs nothing, and says when the next run is.
fn nothing_due_yet(cairn: &Cairn) {
    let out = cairn.run(&["serve", "--once"]);
    ok(&out);
    assert!(
        stdout(&out).starts_with("nothing is due; the next run is at"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn serve_runs_a_policy_that_never_ran_and_then_waits_for_its_frequency() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    ok(&apply(&cairn, &hello_policy("{last: 3}")));

    let out = cairn.run(&["serve", "--once"]);
    ok(&out);
    assert!(
        stdout(&out).contains("greet: backed up hello"),
        "{}",
        stdout(&out)
    );

    // Run an hour from now (less its grace), not again at once.
    nothing_due_yet(&cairn);

    let out = cairn.run(&["policy", "list", "--output", "json"]);
    ok(&out);
    let listed = json(&out);
    assert_eq!(listed[0]["name"], "greet");
    assert_eq!(listed[0]["policy"]["last_run"]["succeeded"], true);
    assert!(listed[0]["next_run"].is_string(), "{listed}");

    // A paused policy is never due; `policy run` still runs it.
    ok(&apply(
        &cairn,
        &format!("{}paused: true\n", hello_policy("{last: 3}")),
    ));
    let out = cairn.run(&["serve", "--once"]);
    assert_eq!(stdout(&out).trim(), "nothing is due", "{}", stdout(&out));
    ok(&cairn.run(&["policy", "run", "greet"]));
    // Resumed and paused again from the command line.
    let out = cairn.run(&["policy", "resume", "greet"]);
    ok(&out);
    assert!(
        stdout(&out).starts_with("policy greet resumed; next run"),
        "{}",
        stdout(&out)
    );
    nothing_due_yet(&cairn);
    ok(&cairn.run(&["policy", "pause", "greet"]));
    let out = cairn.run(&["serve", "--once"]);
    assert_eq!(stdout(&out).trim(), "nothing is due", "{}", stdout(&out));
    refused_with(
        &cairn.run(&["policy", "pause", "nope"]),
        &["no policy named \"nope\""],
    );
    // The file decides: applied again without `paused: true`, it runs again, and says so.
    let out = apply(&cairn, &hello_policy("{last: 3}"));
    ok(&out);
    assert!(
        stderr(&out).contains("warning: policy greet was paused and runs again"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_cron_policy_waits_for_its_first_matching_time() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    // At 02:30 UTC on the 29th of February only: not due during a test run.
    let cron = hello_policy("{last: 3}").replace(
        "frequency: '@hourly'",
        "frequency: 'CRON_TZ=UTC 30 2 29 feb *'",
    );
    ok(&apply(&cairn, &cron));
    nothing_due_yet(&cairn);
    let out = cairn.run(&["policy", "list", "--output", "json"]);
    ok(&out);
    let next = json(&out)[0]["next_run"]
        .as_str()
        .expect("a next run")
        .to_owned();
    assert!(next.contains("-02-29T02:30:00"), "{next}");
    // A run by hand keeps the schedule: the next run is still that slot.
    ok(&cairn.run(&["policy", "run", "greet"]));
    let out = cairn.run(&["policy", "list", "--output", "json"]);
    assert_eq!(json(&out)[0]["next_run"], next.as_str());
}

#[test]
fn a_policy_that_could_not_run_is_refused_naming_the_field() {
    let cairn = Cairn::new();
    let base = hello_policy("{last: 2}");
    refused_with(
        &apply(&cairn, &base),
        &[
            "no blueprint named \"hello\" is registered",
            "cairn blueprint add",
        ],
    );
    add_hello(&cairn);
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "retention: {last: 2}",
            "retention: {}",
            &["retention keeps nothing"],
        ),
        (
            "retention: {last: 2}",
            "retention: {keep_last: 2}",
            &["unknown field `keep_last`"],
        ),
        (
            "grants: [exec]",
            "grants: []",
            &["grants nothing", "declares exec"],
        ),
        ("grants: [exec]", "grants: [everything]", &["everything"]),
        (
            "grants: [exec]",
            "grants: [exec, scale]",
            &["grants scale, which blueprint hello does not declare"],
        ),
        (
            "params: {greeting: hi}",
            "params: {greting: hi}",
            &["no parameter \"greting\"", "greeting"],
        ),
        (
            "frequency: '@hourly'",
            "frequency: 5s",
            &["at most once a minute"],
        ),
        (
            "frequency: '@hourly'",
            "frequency: sometimes",
            &["expected @hourly"],
        ),
        (
            "frequency: '@hourly'",
            "frequency: '@hourly'\nconcurrency: 0",
            &["concurrency 0", "1 to 32"],
        ),
        (
            "frequency: '@hourly'",
            "frequency: '0 25 * * *'",
            &["hour \"25\"", "from 0 to 23"],
        ),
        (
            "frequency: '@hourly'",
            "frequency: '@hourly'\nprune: weekly",
            &["prune `weekly`", "or never"],
        ),
        ("name: greet", "name: Greet_Daily", &["lowercase letters"]),
        (
            "workloads: ['hel*']",
            "workloads: []",
            &["selects no workloads"],
        ),
        (
            "params: {greeting: hi}",
            "secrets: {pw: raw:hunter2}",
            &["never holds a secret's value", "raw:****"],
        ),
        (
            "target: local:",
            "target: local:/nonexistent/",
            &["/nonexistent/"],
        ),
        (
            "target: local:",
            "target: cloud:",
            &["use local:INVENTORY.yaml, kube"],
        ),
        ("name: greet", "nmae: greet", &["unknown field `nmae`"]),
        (
            "params: {greeting: hi}",
            "params: {greeting: hi}\nexport: {passphrase_file: /etc/hostname}",
            &["export names no repository", "profile_file"],
        ),
    ];
    for (from, to, needles) in cases {
        let yaml = base.replacen(from, to, 1);
        assert_ne!(yaml, base, "{from} is not in the policy");
        let out = apply(&cairn, &yaml);
        refused_with(&out, needles);
        assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
    }
    // Nothing was stored.
    let out = cairn.run(&["policy", "list", "--output", "json"]);
    assert_eq!(json(&out), serde_json::json!([]));

    // A pattern that matches nothing fails the run, naming what the namespace has.
    ok(&apply(&cairn, &base.replacen("'hel*'", "'db-*'", 1)));
    let out = cairn.run(&["policy", "run", "greet"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("no workload of namespace default matches db-*; it has: hello"),
        "{}",
        stdout(&out)
    );
    assert_eq!(show(&cairn)["policy"]["last_run"]["succeeded"], false);
    // So does a selector; one that matches the workload's labels (app=hello) selects it.
    let by_label = base.replacen("workloads: ['hel*']", "selector: {app: nope}", 1);
    ok(&apply(&cairn, &by_label));
    let out = cairn.run(&["policy", "run", "greet"]);
    assert!(
        stdout(&out).contains("matches labels app=nope; it has: hello"),
        "{}",
        stdout(&out)
    );
    ok(&apply(&cairn, &by_label.replacen("nope", "hello", 1)));
    ok(&cairn.run(&["policy", "run", "greet"]));

    // A record that is not a policy (stored by hand) is listed as unreadable, not fatal.
    cairn.put_record("policy", "junk", &serde_json::json!({ "name": "junk" }));
    let out = cairn.run(&["policy", "list"]);
    ok(&out);
    assert!(
        stdout(&out).contains("junk") && stdout(&out).contains("unreadable"),
        "{}",
        stdout(&out)
    );
    refused_with(
        &cairn.run(&["policy", "run", "junk"]),
        &["not a policy Cairn can run"],
    );
}

#[test]
fn one_serve_runs_per_home_serves_metrics_and_sigterm_stops_it_between_runs() {
    use std::io::{BufRead as _, Read as _, Write as _};
    let cairn = Cairn::new();
    add_hello(&cairn);
    ok(&apply(&cairn, &hello_policy("{last: 1}")));
    // A policy record this release cannot read (a newer one's): not run, but not missing
    // from the metrics either.
    cairn.put_record(
        "policy",
        "newer",
        &serde_json::json!({"name": "newer", "a_field_of_a_newer_release": 1}),
    );
    let mut serve = cairn
        .command(&["serve", "--metrics", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cairn serve starts");
    let mut stderr_lines = std::io::BufReader::new(serve.stderr.take().expect("stderr"));
    let mut first = String::new();
    stderr_lines.read_line(&mut first).expect("a line");
    let addr = first
        .trim()
        .strip_prefix("cairn: metrics at http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {first:?}"))
        .to_owned();
    // Drain the rest of stderr, so the server never blocks on a full pipe.
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr_lines.read_to_string(&mut rest);
        rest
    });
    let scrape = |path: &str| {
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: cairn\r\n\r\n").expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
    };

    // It runs the new policy at once, and the metrics say so; then a second serve is refused.
    let started = std::time::Instant::now();
    let want = "cairn_policy_runs_total{policy=\"greet\",result=\"succeeded\"} 1";
    loop {
        let response = scrape("/metrics");
        if response.contains(want) {
            assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
            for line in [
                "cairn_policy_runs_total{policy=\"greet\",result=\"failed\"} 0",
                "cairn_policy_last_run_succeeded{policy=\"greet\"} 1",
                "cairn_policy_restore_points{policy=\"greet\"} 1",
                "cairn_policy_unreadable{policy=\"greet\"} 0",
                "cairn_policy_unreadable{policy=\"newer\"} 1",
                "cairn_dr_enabled 0",
            ] {
                assert!(
                    response.lines().any(|l| l == line),
                    "no {line:?} in {response}"
                );
            }
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "serve never reported the run: {response}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(scrape("/").starts_with("HTTP/1.1 404"));
    let out = cairn.run(&["serve"]);
    refused_with(
        &out,
        &["another `cairn serve`", "serve.lock", "stop it first"],
    );
    // A timer's pass meeting it is skipped, and not failed.
    let out = cairn.run(&["serve", "--once"]);
    ok(&out);
    assert!(
        stderr(&out).contains("this pass is skipped"),
        "{}",
        stderr(&out)
    );
    let term = std::process::Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let out = serve.wait_with_output().expect("serve exits");
    let rest = drain.join().expect("stderr drained");
    assert!(out.status.success(), "{rest}");
    assert!(
        stdout(&out).contains("greet: backed up hello"),
        "{}",
        stdout(&out)
    );
    // The lock went with it.
    ok(&cairn.run(&["serve", "--once"]));
}

/// A registered component damaged in the home is named as such, before it is compiled, and
/// adding it again mends it.
#[test]
fn a_damaged_component_is_named_and_adding_it_again_mends_it() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    ok(&apply(&cairn, &hello_policy("{last: 1}")));
    let kept: Vec<PathBuf> = std::fs::read_dir(cairn.home.path().join("blueprints"))
        .expect("blueprints dir")
        .map(|e| e.expect("an entry").path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let mut bytes = std::fs::read(&kept[0]).expect("component");
    bytes[5000] ^= 0xff;
    std::fs::write(&kept[0], &bytes).expect("damage");
    let out = cairn.run(&["policy", "run", "greet"]);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains("damaged, or replaced"), "{said}");
    add_hello(&cairn);
    ok(&cairn.run(&["policy", "run", "greet"]));
}

/// A stop between passes is a clean stop (exit 0) whatever an earlier pass met: under systemd
/// a failed run last week must not mark `systemctl stop` failed.
#[test]
fn sigterm_between_passes_exits_0_after_a_failed_run() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    // The policy's inventory goes away after it is applied: its runs fail.
    let inventory = cairn.home.path().join("inventory.yaml");
    std::fs::copy(root().join("examples/hello/inventory.yaml"), &inventory).expect("copy");
    let yaml = hello_policy("{last: 1}").replace(
        &root()
            .join("examples/hello/inventory.yaml")
            .display()
            .to_string(),
        &inventory.display().to_string(),
    );
    ok(&apply(&cairn, &yaml));
    std::fs::remove_file(&inventory).expect("remove");
    let serve = cairn
        .command(&["serve"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cairn serve starts");
    let since = std::time::Instant::now();
    while show(&cairn)["policy"]["last_run"]["succeeded"] != false {
        assert!(
            since.elapsed() < std::time::Duration::from_secs(60),
            "the run never failed: {}",
            show(&cairn)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Between passes now: the next wakes in a minute at the soonest.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let term = std::process::Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let out = serve.wait_with_output().expect("serve exits");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A policy applied again or deleted while it runs: its retention is the one stored when the
/// run retains. Before, the run removed points by the rules it started with, after `policy
/// delete` had said they stay.
#[test]
fn retention_follows_an_apply_or_a_delete_made_while_the_policy_runs() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    ok(&apply(&cairn, &hello_policy("{last: 1}")));
    ok(&cairn.run(&["policy", "run", "greet"]));
    // `echo` that says it started, then waits to be let go.
    let (path, started, go) = fake_echo_held(&cairn);
    let slow_run = |meanwhile: &dyn Fn()| {
        let _ = std::fs::remove_file(&started);
        let _ = std::fs::remove_file(&go);
        let run = cairn
            .command(&["policy", "run", "greet", "--output", "json"])
            .env("PATH", &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cairn runs");
        until_started(&started);
        meanwhile();
        std::fs::write(&go, "").expect("let go");
        let out = run.wait_with_output().expect("cairn exits");
        ok(&out);
        json(&out)
    };
    let points = || {
        let out = cairn.run(&["catalog", "ls", "local-restore-point", "--output", "json"]);
        ok(&out);
        json(&out).as_array().expect("points").len()
    };

    // Kept 1 when the run began, 5 when it retains: nothing is removed.
    let outcome = slow_run(&|| ok(&apply(&cairn, &hello_policy("{last: 5}"))));
    assert_eq!(outcome["retention"]["kept"], 2, "{outcome}");
    assert_eq!(points(), 2);

    // Applied again for other workloads while it runs: these points are no longer its own.
    let outcome = slow_run(&|| {
        let yaml = hello_policy("{last: 1}").replacen("['hel*']", "['hello']", 1);
        ok(&apply(&cairn, &yaml));
    });
    assert!(
        outcome["retention"]["skipped"]
            .as_str()
            .is_some_and(|s| s.contains("other workloads")),
        "{outcome}"
    );
    assert_eq!(points(), 3);

    // Deleted while it runs: its points stay, as `policy delete` says.
    let outcome = slow_run(&|| ok(&cairn.run(&["policy", "delete", "greet"])));
    assert!(
        outcome["retention"]["skipped"]
            .as_str()
            .is_some_and(|s| s.contains("deleted")),
        "{outcome}"
    );
    assert_eq!(points(), 4);
    let out = cairn.run(&["policy", "show", "greet"]);
    assert_ne!(out.status.code(), Some(0), "the run did not bring it back");
}

/// A key the policy's export names and the machine lacks is named as the policy's, not as a
/// flag nobody gave.
#[test]
fn a_missing_export_key_is_named_as_the_policys() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    let yaml = hello_policy("{last: 1}") + "export: {repo: ./repo, key_file: ./missing.key}\n";
    ok(&apply(&cairn, &yaml));
    let out = cairn.run(&["policy", "run", "greet"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains("the policy's export's key_file"), "{said}");
    assert!(!said.contains("--key-file"), "{said}");
}

/// `cairn serve` with `args` on a new home whose policy's run hangs (its `echo` never ends),
/// once that run has started.
fn serve_a_hanging_run(args: &[&str]) -> (Cairn, std::process::Child) {
    let cairn = hello_home("{last: 1}");
    // `echo` that says it started, then hangs.
    let (path, started) = fake_echo(&cairn, "exec sleep 600");
    let serve = cairn
        .command(&[&["serve"], args].concat())
        .env("PATH", path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cairn serve starts");
    until_started(&started);
    (cairn, serve)
}

/// A run that hangs (the workload's command never ends): the first SIGTERM waits for it, the
/// second stops it (recorded as failed), and serve exits.
#[test]
fn a_second_sigterm_stops_the_run_serve_is_waiting_for() {
    let (cairn, mut serve) = serve_a_hanging_run(&[]);
    sigterm(&serve);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(serve.try_wait().expect("wait").is_none(), "the first waits");
    sigterm(&serve);
    let err = stops_the_hanging_run(&cairn, serve);
    assert!(err.contains("stopping the runs in hand"), "{err}");
}

/// Sends SIGTERM to `child`.
fn sigterm(child: &std::process::Child) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
}

/// Waits for the `serve` of [`serve_a_hanging_run`], told to stop, to stop its run (within
/// 30 seconds, recorded as failed) and exit 1; returns its stderr.
fn stops_the_hanging_run(cairn: &Cairn, serve: std::process::Child) -> String {
    let stopped = std::time::Instant::now();
    let out = serve.wait_with_output().expect("serve exits");
    assert!(
        stopped.elapsed() < std::time::Duration::from_secs(30),
        "serve took {:?} to stop the run",
        stopped.elapsed()
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(show(cairn)["policy"]["last_run"]["succeeded"], false);
    err
}

/// A run that hangs, and one SIGTERM (all Kubernetes sends before its SIGKILL): after
/// `--stop-grace`, serve stops the run itself (its posthooks run) and exits.
#[test]
fn after_the_stop_grace_serve_stops_the_runs_in_hand() {
    let (cairn, serve) = serve_a_hanging_run(&["--stop-grace", "1s"]);
    sigterm(&serve);
    let err = stops_the_hanging_run(&cairn, serve);
    assert!(err.contains("--stop-grace 1s has passed"), "{err}");
    // A grace that is not a duration is refused, naming the flag.
    let out = cairn.run(&["serve", "--once", "--stop-grace", "soon"]);
    refused_with(&out, &["--stop-grace", "expected a duration"]);
}

/// serve reads the policies due at the start of a pass, and runs them
/// `--jobs` at a time; one that waits its turn is read again when its turn comes. Paused,
/// run by hand or deleted meanwhile, it does not run; applied again, it runs as it is now.
#[test]
fn serve_reads_a_policy_again_when_its_turn_comes() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    // Workload `slow` runs the fake `echo` (it waits to be let go); `fast` the real one.
    let (path, started, go) = fake_echo_held(&cairn);
    let home = cairn.home.path().display();
    let inventory = cairn.home.path().join("inventory.yaml");
    std::fs::write(
        &inventory,
        format!(
            "namespaces:\n  default:\n    workloads:\n      slow:\n        workdir: {home}\n        \
             env: {{GREETING: hello, PATH: '{path}'}}\n        allow: [echo, sh]\n        \
             replicas: 1\n      fast:\n        workdir: {home}\n        env: {{GREETING: hello}}\n        \
             allow: [echo, sh]\n        replicas: 1\n"
        ),
    )
    .expect("the inventory");
    let policy = |name: &str, workload: &str, greeting: &str| {
        format!(
            "name: {name}\nblueprint: hello\ntarget: local:{}\nworkloads: [{workload}]\n\
             frequency: '@hourly'\nretention: {{last: 3}}\ngrants: [exec]\n\
             params: {{greeting: {greeting}}}\n",
            inventory.display()
        )
    };
    let apply_as = |name: &str, yaml: &str| {
        let file = policy_file(&cairn, name, yaml);
        ok(&cairn.run(&["policy", "apply", file.to_str().expect("utf-8 path")]));
    };
    // `a-slow` runs first (in the order of their names); the others wait for it.
    apply_as("a-slow", &policy("a-slow", "slow", "hi"));
    for name in ["b-paused", "c-by-hand", "d-deleted", "e-applied"] {
        apply_as(name, &policy(name, "fast", "hi"));
    }
    let serve = cairn
        .command(&["serve", "--once"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cairn serve starts");
    until_started(&started);
    ok(&cairn.run(&["policy", "pause", "b-paused"]));
    ok(&cairn.run(&["policy", "run", "c-by-hand"]));
    ok(&cairn.run(&["policy", "delete", "d-deleted"]));
    apply_as("e-applied", &policy("e-applied", "fast", "howdy"));
    std::fs::write(&go, "").expect("let go");
    let out = serve.wait_with_output().expect("serve exits");
    ok(&out);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    for needle in [
        "policy b-paused not run: it was paused",
        "policy c-by-hand not run: it ran at",
        "policy d-deleted not run: it was deleted",
        "policy e-applied was applied again",
        "says: howdy",
    ] {
        assert!(said.contains(needle), "no {needle:?} in: {said}");
    }
    let mut made: Vec<String> = points(&cairn)
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["value"]["policy"].as_str().unwrap_or_default().to_owned())
        .collect();
    made.sort();
    assert_eq!(made, ["a-slow", "c-by-hand", "e-applied"], "{said}");
}

#[test]
fn a_policy_on_kubernetes_backs_up_each_workload_its_pattern_matches() {
    let api = cairn_kube_fake::FakeApi::start_blocking();
    api.namespace("shop");
    for (name, tier) in [("web-a", "front"), ("web-b", "front"), ("db", "data")] {
        let mut workload = cairn_kube_fake::workload(
            name,
            1,
            serde_json::json!({ "containers": [{ "name": name, "image": "busybox" }] }),
        );
        workload["metadata"]["labels"] = serde_json::json!({ "tier": tier });
        api.put("/apis/apps/v1/namespaces/shop/deployments", workload);
    }
    let cairn = Cairn::new();
    let kubeconfig = cairn.home.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    add_hello(&cairn);
    let yaml = "name: web\nblueprint: hello\ntarget: kube\nnamespace: shop\nworkloads: ['web-*']\n\
                frequency: 6h\nretention: {last: 1}\ngrants: [exec]\n";
    ok(&apply(&cairn, yaml));
    for _ in 0..2 {
        let out = cairn
            .command(&["policy", "run", "web", "--output", "json"])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .expect("cairn runs");
        ok(&out);
        let outcome = json(&out);
        let done: Vec<&str> = outcome["workloads"]
            .as_array()
            .expect("workloads")
            .iter()
            .filter(|w| w["restore_point"].is_string())
            .filter_map(|w| w["workload"].as_str())
            .collect();
        assert_eq!(done, ["web-a", "web-b"], "{outcome}");
    }
    // A selector picks workloads by their labels.
    let yaml = "name: data\nblueprint: hello\ntarget: kube\nnamespace: shop\n\
                selector: {tier: data}\nfrequency: 6h\nretention: {last: 1}\ngrants: [exec]\n";
    ok(&apply(&cairn, yaml));
    let out = cairn
        .command(&["policy", "run", "data", "--output", "json"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("cairn runs");
    ok(&out);
    assert_eq!(json(&out)["workloads"][0]["workload"], "db");
    assert_eq!(json(&out)["workloads"].as_array().map(Vec::len), Some(1));
    ok(&cairn.run(&["policy", "delete", "data"]));
    let out = cairn.run(&["policy", "list"]);
    assert!(!stdout(&out).contains("data"), "{}", stdout(&out));

    // One point per workload is kept: retention runs per workload, not across them.
    let out = cairn.run(&["catalog", "ls", "local-restore-point", "--output", "json"]);
    let mut kept: Vec<String> = json(&out)
        .as_array()
        .expect("points")
        .iter()
        .filter(|p| p["value"]["policy"] == "web")
        .filter_map(|p| p["value"]["target"]["workload"].as_str().map(str::to_owned))
        .collect();
    kept.sort();
    assert_eq!(kept, ["web-a", "web-b"]);
}

#[test]
fn sigterm_during_a_run_lets_the_run_finish() {
    use std::io::BufRead as _;
    use std::os::unix::fs::PermissionsExt as _;
    let cairn = Cairn::new();
    add_hello(&cairn);
    // The workload's `echo` takes two seconds, so the signal lands inside the backup.
    let bin = cairn.home.path().join("slow-bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let echo = bin.join("echo");
    std::fs::write(&echo, "#!/bin/sh\nsleep 2\nexec /bin/echo \"$@\"\n").expect("write");
    std::fs::set_permissions(&echo, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let inventory = cairn.home.path().join("inventory.yaml");
    std::fs::write(
        &inventory,
        format!(
            "namespaces:\n  default:\n    workloads:\n      hello:\n        workdir: .\n        \
             env: {{PATH: '{}:/usr/bin:/bin'}}\n        allow: [echo]\n        replicas: 1\n",
            bin.display()
        ),
    )
    .expect("write the inventory");
    let yaml = hello_policy("{last: 1}").replace(
        &format!(
            "local:{}",
            root().join("examples/hello/inventory.yaml").display()
        ),
        "local:inventory.yaml",
    );
    ok(&apply(&cairn, &yaml));

    let mut serve = cairn
        .command(&["serve"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cairn serve starts");
    let mut lines = std::io::BufReader::new(serve.stderr.take().expect("stderr")).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("[backup] progress: 0%"));
    assert!(started, "the backup never started");
    // Meanwhile the same policy cannot run twice, and listings say it runs.
    refused_with(
        &cairn.run(&["policy", "run", "greet"]),
        &["policy greet is running in another cairn process"],
    );
    let out = cairn.run(&["policy", "list"]);
    assert!(
        stdout(&out).contains("running since") && stdout(&out).contains("(never ran)"),
        "{}",
        stdout(&out)
    );
    let out = cairn.run(&["policy", "list", "--output", "json"]);
    assert!(
        json(&out)[0]["running"]["since"].is_string(),
        "{}",
        stdout(&out)
    );
    let term = std::process::Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = serve.wait_with_output().expect("serve exits");
    assert!(out.status.success(), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("stopping once the current run")),
        "{rest:?}"
    );
    assert!(
        stdout(&out).contains("greet: backed up hello"),
        "{}",
        stdout(&out)
    );
    assert_eq!(show(&cairn)["policy"]["last_run"]["succeeded"], true);
}

/// A parameter's value is checked when the policy is applied, as the run would check it: a
/// bad one fails now, not at night.
#[test]
fn a_policys_parameter_values_are_checked_when_it_is_applied() {
    let cairn = Cairn::new();
    let postgres = crate::support::wasm("postgres");
    ok(&cairn.run(&["blueprint", "add", postgres.to_str().expect("utf-8")]));
    let inventory = root().join("examples/hello/inventory.yaml");
    let policy = |params: &str| {
        format!(
            "name: db\nblueprint: postgres\ntarget: local:{}\nworkloads: [hello]\n\
             frequency: '@daily'\nretention: {{last: 1}}\ngrants: [exec, export]\n\
             params: {params}\n",
            inventory.display()
        )
    };
    for (params, says) in [
        ("{port: abc}", "params: port=abc"),
        ("{port: '70000'}", "params: port=70000"),
        ("{format: bogus}", "params: format=bogus"),
        ("{single-transaction: maybe}", "expected true or false"),
    ] {
        let file = policy_file(&cairn, "db", &policy(params));
        let file = file.to_str().expect("utf-8");
        for dry in [&["--dry-run"][..], &[]] {
            let args = [&["policy", "apply", file][..], dry].concat();
            refused_with(&cairn.run(&args), &["blueprint postgres", says]);
        }
    }
    ok(&apply(&cairn, &policy("{port: '5433', format: custom}")));
}

#[test]
fn the_operator_bounds_what_policies_and_runs_by_name_may_grant() {
    let cairn = Cairn::new();
    let hello = hello_wasm().to_str().expect("utf-8 path");
    refused_with(
        &cairn.run(&["blueprint", "add", hello, "--allow", "scale"]),
        &["--allow scale", "does not declare it"],
    );
    let out = cairn.run(&["blueprint", "add", hello, "--allow", ""]);
    ok(&out);
    assert!(
        stdout(&out).contains("may grant only: none"),
        "{}",
        stdout(&out)
    );
    // Registered allowing nothing: a policy granting exec is refused, and so is a run by name.
    refused_with(
        &apply(&cairn, &hello_policy("{last: 1}")),
        &["registered allowing no capability", "not exec"],
    );
    let run = [
        "run",
        "hello",
        "--action",
        "backup",
        "--target",
        crate::support::HELLO_INVENTORY,
        "--workload",
        "hello",
        "--grant",
        "exec",
    ];
    refused_with(&cairn.run(&run), &["not exec"]);
    // Allowed again, both work; narrowing it later stops the policy's next run.
    ok(&cairn.run(&["blueprint", "add", hello, "--allow", "exec"]));
    ok(&apply(&cairn, &hello_policy("{last: 1}")));
    ok(&cairn.run(&run));
    let out = cairn.run(&["blueprint", "add", hello, "--allow", ""]);
    ok(&out);
    assert!(
        stderr(&out).contains("policy greet grants exec, which --allow no longer allows"),
        "{}",
        stderr(&out)
    );
    let out = cairn.run(&["policy", "run", "greet"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("not exec"), "{}", stdout(&out));
    // Added again without --allow, it keeps what it was allowed; `all` lifts the bound.
    let out = cairn.run(&["blueprint", "add", hello]);
    assert!(
        stdout(&out).contains("may grant only: none"),
        "{}",
        stdout(&out)
    );
    refused_with(&cairn.run(&run), &["not exec"]);
    refused_with(
        &cairn.run(&["blueprint", "add", hello, "--allow", "exec,bogus"]),
        &["--allow bogus"],
    );
    let out = cairn.run(&["blueprint", "add", hello, "--allow", "all"]);
    assert!(!stdout(&out).contains("may grant only"), "{}", stdout(&out));
    ok(&cairn.run(&run));
}

/// A local target with two workloads of different kinds, `hello` (app=hello) and `other`
/// (app=other), in the home; returns its `local:` target.
fn two_kinds(cairn: &Cairn) -> String {
    let inventory = cairn.home.path().join("two-kinds.yaml");
    let workload = |app: &str| {
        format!(
            "      {app}:\n        workdir: .\n        env: {{GREETING: hello}}\n        \
             allow: [echo, sh]\n        replicas: 1\n        labels: {{app: {app}}}\n"
        )
    };
    std::fs::write(
        &inventory,
        format!(
            "namespaces:\n  default:\n    workloads:\n{}{}",
            workload("hello"),
            workload("other")
        ),
    )
    .expect("write the inventory");
    format!("local:{}", inventory.display())
}

/// `yaml` as the binding file `name.yaml`, applied.
fn bind(cairn: &Cairn, name: &str, yaml: &str) -> Output {
    let file = policy_file(cairn, name, yaml);
    cairn.run(&["binding", "apply", file.to_str().expect("utf-8 path")])
}

/// The greeting each workload's newest restore point of policy `greet` recorded.
fn greetings(cairn: &Cairn) -> Vec<(String, String)> {
    let mut newest = std::collections::BTreeMap::new();
    for p in show(cairn)["restore_points"].as_array().expect("points") {
        let workload = p["target"]["workload"].as_str().expect("a workload");
        let said = p["artifacts"][0]["values"]["stdout"]
            .as_str()
            .expect("stdout");
        newest.insert(workload.to_owned(), said.to_owned());
    }
    newest.into_iter().collect()
}

#[test]
fn a_policy_without_a_blueprint_protects_each_workload_by_its_binding() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    // Both workloads at once.
    let policy = format!(
        "name: greet\ntarget: {}\nworkloads: ['*']\nfrequency: '@hourly'\nretention: {{last: 2}}\n\
         concurrency: 2\n",
        two_kinds(&cairn)
    );
    // Parameters and grants belong to the bindings then.
    refused_with(
        &apply(&cairn, &format!("{policy}grants: [exec]\n")),
        &["names no blueprint", "cairn binding apply"],
    );
    ok(&apply(&cairn, &policy));
    let out = cairn.run(&["policy", "list"]);
    assert!(stdout(&out).contains("(bindings)"), "{}", stdout(&out));

    // No binding yet: every workload fails, saying what to do.
    let out = cairn.run(&["policy", "run", "greet"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Retention did not run, and says so rather than "kept 0".
    assert!(
        stdout(&out).contains("greet: retention skipped: no backup succeeded"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains(
            "no blueprint binding selects workload hello of namespace default (labels app=hello)"
        ) && stdout(&out).contains("cairn binding apply FILE"),
        "{}",
        stdout(&out)
    );

    // A binding is checked like a policy's use of a blueprint.
    refused_with(
        &bind(
            &cairn,
            "bad",
            "name: bad\nblueprint: hello\nselector: {app: hello}\nparams: {greting: hi}\ngrants: [exec]\n",
        ),
        &["binding \"bad\"", "no parameter \"greting\""],
    );
    refused_with(
        &bind(
            &cairn,
            "bad",
            "name: bad\nblueprint: hello\nparams: {greeting: hi}\ngrants: [exec]\nsecrets: {token: abc}\n",
        ),
        &["secret token", "env:VAR or file:PATH"],
    );

    // One binding by label: hello is backed up with its parameters, other still fails.
    ok(&bind(
        &cairn,
        "hello",
        "name: a-hello\nblueprint: hello\nnamespaces: [default]\nselector: {app: hello}\n\
         params: {greeting: hi}\ngrants: [exec]\n",
    ));
    // A dry run shows what a run would back up, and with what.
    let file = policy_file(&cairn, "plan", &policy);
    let file = file.to_str().expect("utf-8 path");
    let out = cairn.run(&["policy", "apply", "--dry-run", file]);
    ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("it would back up now, in namespace default:")
            && text.contains("with hello (binding a-hello)")
            && text.contains("NOT PROTECTED: no blueprint binding selects workload other"),
        "{text}"
    );
    let out = cairn.run(&["policy", "apply", "--dry-run", file, "--output", "json"]);
    ok(&out);
    let plan = json(&out)["plan"].clone();
    assert_eq!(plan[0]["binding"], "a-hello", "{plan}");
    assert!(plan[1]["error"].is_string(), "{plan}");

    let out = cairn.run(&["policy", "run", "greet", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let outcome = json(&out);
    assert!(
        outcome["workloads"][0]["restore_point"].is_string(),
        "{outcome}"
    );
    assert!(
        outcome["workloads"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("workload other")),
        "{outcome}"
    );
    assert_eq!(greetings(&cairn), [("hello".into(), "hi, world".into())]);

    // A catch-all binding, tried after it by name, protects the rest.
    ok(&bind(
        &cairn,
        "rest",
        "name: zz-rest\nblueprint: hello\nparams: {greeting: hey}\ngrants: [exec]\n",
    ));
    let out = cairn.run(&["binding", "list"]);
    ok(&out);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("a-hello") && lines[1].contains("every workload"),
        "{lines:?}"
    );
    let out = cairn.run(&["policy", "run", "greet"]);
    ok(&out);
    assert_eq!(
        greetings(&cairn),
        [
            ("hello".into(), "hi, world".into()),
            ("other".into(), "hey, world".into())
        ]
    );
    // A restore takes the workload's binding too.
    let out = cairn.run(&["policy", "restore", "greet", "-w", "other"]);
    ok(&out);
    assert!(
        stderr(&out).contains("other-0 says again: hey, world"),
        "{}",
        stderr(&out)
    );
    // Into another workload: hello's point, with hello's binding, in other.
    let out = cairn.run(&[
        "policy", "restore", "greet", "-w", "hello", "--into", "other",
    ]);
    ok(&out);
    assert!(
        stderr(&out).contains("other-0 says again: hi, world"),
        "{}",
        stderr(&out)
    );
    refused_with(
        &cairn.run(&[
            "policy", "restore", "greet", "-w", "hello", "--into", "gone",
        ]),
        &[
            "restoring into default/gone",
            "has no such workload",
            "hello, other",
        ],
    );

    // Without its own binding, hello falls to the catch-all; the delete warns of the
    // policies that find their blueprint in bindings.
    let out = cairn.run(&["binding", "delete", "a-hello"]);
    ok(&out);
    assert!(
        stderr(&out).contains("warning: policies greet name no blueprint"),
        "{}",
        stderr(&out)
    );
    ok(&cairn.run(&["policy", "run", "greet"]));
    assert_eq!(greetings(&cairn)[0], ("hello".into(), "hey, world".into()));
    refused_with(
        &cairn.run(&["binding", "delete", "a-hello"]),
        &["no binding named \"a-hello\""],
    );
}

#[test]
fn concurrency_backs_up_that_many_workloads_at_once() {
    use std::os::unix::fs::PermissionsExt as _;
    let cairn = Cairn::new();
    add_hello(&cairn);
    // The workloads' `echo` stays two seconds, and notes when it met another one running.
    let home = cairn.home.path();
    let bin = home.join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let echo = bin.join("echo");
    std::fs::write(
        &echo,
        format!(
            "#!/bin/sh\nd={}\ntouch \"$d/running.$$\"\nsleep 2\n\
             [ \"$(ls \"$d\" | grep -c '^running')\" -gt 1 ] && touch \"$d/overlapped\"\n\
             rm \"$d/running.$$\"\nexec /bin/echo \"$@\"\n",
            home.display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(&echo, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let workload = |name: &str| {
        format!(
            "      {name}:\n        workdir: .\n        env: {{PATH: '{}:/usr/bin:/bin'}}\n        \
             allow: [echo]\n        replicas: 1\n",
            bin.display()
        )
    };
    std::fs::write(
        home.join("inventory.yaml"),
        format!(
            "namespaces:\n  default:\n    workloads:\n{}{}",
            workload("a"),
            workload("b")
        ),
    )
    .expect("write the inventory");
    let policy = |concurrency: u32| {
        format!(
            "name: greet\nblueprint: hello\ntarget: local:inventory.yaml\nworkloads: ['*']\n\
             frequency: '@hourly'\nretention: {{last: 1}}\ngrants: [exec]\nconcurrency: {concurrency}\n"
        )
    };
    let overlapped = home.join("overlapped");
    ok(&apply(&cairn, &policy(1)));
    ok(&cairn.run(&["policy", "run", "greet"]));
    assert!(!overlapped.exists(), "one at a time");
    ok(&apply(&cairn, &policy(2)));
    let out = cairn.run(&["policy", "run", "greet", "--output", "json"]);
    ok(&out);
    assert!(overlapped.exists(), "both at once");
    let outcome = json(&out);
    assert_eq!(outcome["workloads"][0]["workload"], "a", "{outcome}");
    assert_eq!(outcome["workloads"][1]["workload"], "b", "{outcome}");
    assert_eq!(outcome["points"].as_array().map(Vec::len), Some(2));

    // serve --jobs 2 runs two due policies at once, one workload each.
    std::fs::remove_file(&overlapped).expect("remove");
    for w in ["a", "b"] {
        let one = policy(1)
            .replace("name: greet", &format!("name: only-{w}"))
            .replace("workloads: ['*']", &format!("workloads: [{w}]"));
        ok(&apply(&cairn, &one));
    }
    let out = cairn.run(&["serve", "--once", "--jobs", "2"]);
    ok(&out);
    assert!(overlapped.exists(), "{}", stdout(&out));
    for w in ["a", "b"] {
        assert!(
            stdout(&out).contains(&format!("only-{w}: backed up {w}")),
            "{}",
            stdout(&out)
        );
    }
}

#[test]
fn apply_takes_several_documents_and_directories_all_or_nothing() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    let dir = cairn.home.path().join("policies");
    std::fs::create_dir(&dir).expect("mkdir");
    let named =
        |name: &str| hello_policy("{last: 2}").replace("name: greet", &format!("name: {name}"));
    // A trailing `---` and a document of comments only hold nothing, and are no error.
    std::fs::write(
        dir.join("a.yaml"),
        format!(
            "{}---\n{}---\n# more to come\n---\n",
            named("one"),
            named("two")
        ),
    )
    .expect("write");
    std::fs::write(dir.join("b.yml"), named("three")).expect("write");
    std::fs::write(dir.join("notes.txt"), "not a policy").expect("write");
    let dir_arg = dir.to_str().expect("utf-8 path");
    let out = cairn.run(&["policy", "apply", dir_arg, "--output", "json"]);
    ok(&out);
    let names: Vec<String> = json(&out)
        .as_array()
        .expect("an array for several")
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["one", "two", "three"]);

    // One bad document stores nothing, and says which.
    std::fs::write(
        dir.join("a.yaml"),
        format!(
            "{}---\n{}",
            named("one").replace("{last: 2}", "{last: 5}"),
            named("two").replace("'@hourly'", "'@sometimes'")
        ),
    )
    .expect("write");
    refused_with(
        &cairn.run(&["policy", "apply", dir_arg]),
        &["policy \"two\"", "frequency"],
    );
    let out = cairn.run(&["policy", "show", "one", "--output", "json"]);
    assert_eq!(json(&out)["policy"]["retention"]["last"], 2);
    std::fs::write(dir.join("a.yaml"), format!("{}---\nname: [", named("one"))).expect("write");
    refused_with(
        &cairn.run(&["policy", "apply", dir_arg]),
        &["a.yaml", "document 2"],
    );
    std::fs::write(dir.join("a.yaml"), "# nothing yet\n").expect("write");
    refused_with(
        &cairn.run(&["policy", "apply", dir_arg]),
        &["a.yaml", "holds no policy"],
    );
    // Two of one name are refused, naming where the first is.
    std::fs::write(dir.join("a.yaml"), named("three")).expect("write");
    refused_with(
        &cairn.run(&["policy", "apply", dir_arg]),
        &["a second policy named \"three\"", "a.yaml"],
    );

    // Bindings likewise.
    let bindings = policy_file(
        &cairn,
        "bindings",
        "name: a\nblueprint: hello\nselector: {app: a}\ngrants: [exec]\n---\n\
         name: b\nblueprint: hello\nselector: {app: b}\ngrants: [exec]\n",
    );
    ok(&cairn.run(&["binding", "apply", bindings.to_str().expect("utf-8 path")]));
    let out = cairn.run(&["binding", "list", "--output", "json"]);
    assert_eq!(json(&out).as_array().map(Vec::len), Some(2));
}

#[test]
fn a_point_restores_into_a_clone_namespace() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    let workload = |name: &str| {
        format!(
            "      {name}:\n        workdir: .\n        env: {{GREETING: hello}}\n        \
             allow: [echo, sh]\n        replicas: 1\n"
        )
    };
    std::fs::write(
        cairn.home.path().join("inventory.yaml"),
        format!(
            "namespaces:\n  default:\n    workloads:\n{}  staging:\n    workloads:\n{}{}",
            workload("hello"),
            workload("hello"),
            workload("hello-copy")
        ),
    )
    .expect("write the inventory");
    let yaml = hello_policy("{last: 2}").replace(
        &format!(
            "local:{}",
            root().join("examples/hello/inventory.yaml").display()
        ),
        "local:inventory.yaml",
    );
    ok(&apply(&cairn, &yaml));
    ok(&cairn.run(&["policy", "run", "greet"]));
    let restore = |extra: &[&str]| {
        let mut args = vec!["policy", "restore", "greet", "-w", "hello"];
        args.extend_from_slice(extra);
        cairn.run(&args)
    };
    let out = restore(&["--into-namespace", "staging", "--into", "hello-copy"]);
    ok(&out);
    assert!(
        stderr(&out).contains("hello-copy-0 says again: hi, world"),
        "{}",
        stderr(&out)
    );
    // The workload of the same name, by default.
    ok(&restore(&["--into-namespace", "staging"]));
    let out = cairn.run(&["catalog", "ls", "action", "--output", "json"]);
    let restored: Vec<String> = json(&out)
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["value"]["action"] == "restore")
        .map(|a| {
            a["value"]["target"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(restored, ["staging", "staging"], "{restored:?}");
    refused_with(
        &restore(&["--into-namespace", "prod"]),
        &["restoring into prod/hello", "namespace \"prod\" not found"],
    );
}

/// The restore point of a policy resource's last run, from its status.
fn s_point(status: &serde_json::Value) -> String {
    status["lastRun"]["restorePoints"][0]
        .as_str()
        .expect("a restore point")
        .to_owned()
}

/// One pass of `serve --operator` on the resources of namespace `cairn`, then `extra`.
fn serve_operator(cairn: &Cairn, kubeconfig: &std::path::Path, extra: &[&str]) -> Output {
    let args = [
        &[
            "serve",
            "--once",
            "--operator",
            "--operator-namespace",
            "cairn",
        ][..],
        extra,
    ]
    .concat();
    cairn
        .command(&args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("cairn runs")
}

/// The resources `examples/kubernetes/resources.yaml` ships are applied by the operator as
/// they are: a user's first `kubectl apply` must not meet an `Invalid` status.
#[test]
fn the_kubernetes_example_resources_are_applied() {
    let api = cairn_kube_fake::FakeApi::start_blocking();
    api.namespace("cairn");
    api.namespace("shop");
    let cairn = Cairn::new();
    let kubeconfig = cairn.home.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let postgres = crate::support::wasm("postgres");
    ok(&cairn.run(&["blueprint", "add", postgres.to_str().expect("utf-8 path")]));
    // The Secret the install mounts, here.
    let secrets = cairn.home.path().join("blueprint-secrets");
    std::fs::create_dir(&secrets).expect("mkdir");
    std::fs::write(secrets.join("pg-password"), "pw").expect("secret");
    let secrets = secrets.to_str().expect("utf-8 path");
    let text = std::fs::read_to_string(root().join("examples/kubernetes/resources.yaml"))
        .expect("the example")
        .replace("/etc/cairn/blueprint-secrets", secrets);
    let mut applied = Vec::new();
    for doc in text.split("\n---\n") {
        let mut resource: serde_json::Value = serde_norway::from_str(doc).expect("YAML");
        let kind = resource["kind"].as_str().expect("a kind").to_owned();
        let name = resource["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_owned();
        resource["metadata"]["namespace"] = "cairn".into();
        resource["metadata"]["generation"] = 1.into();
        let plural = match kind.as_str() {
            "Policy" => "policies".to_owned(),
            other => format!("{}s", other.to_lowercase()),
        };
        let path = format!("/apis/cairn.dev/v1alpha1/namespaces/cairn/{plural}");
        api.put(&path, resource);
        applied.push((path, name));
    }
    assert_eq!(applied.len(), 2, "a binding and a policy");
    ok(&serve_operator(
        &cairn,
        &kubeconfig,
        &["--operator-secrets", secrets],
    ));
    for (path, name) in &applied {
        let status = api.get(path, name).expect("the resource")["status"].clone();
        assert_eq!(status["state"], "Ready", "{path}/{name}: {status}");
    }
}

#[test]
fn serve_operator_keeps_policies_and_bindings_from_kubernetes_resources() {
    use serde_json::json;
    let api = cairn_kube_fake::FakeApi::start_blocking();
    api.namespace("cairn");
    let cairn = Cairn::new();
    let kubeconfig = cairn.home.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    add_hello(&cairn);
    let policies = "/apis/cairn.dev/v1alpha1/namespaces/cairn/policies";
    let bindings = "/apis/cairn.dev/v1alpha1/namespaces/cairn/blueprintbindings";
    let target = format!(
        "local:{}",
        root().join("examples/hello/inventory.yaml").display()
    );
    let resource = |kind: &str, name: &str, spec: serde_json::Value| {
        json!({ "apiVersion": "cairn.dev/v1alpha1", "kind": kind,
                "metadata": { "name": name, "namespace": "cairn", "generation": 1 },
                "spec": spec })
    };
    let nightly = |paused: bool| {
        resource(
            "Policy",
            "nightly",
            json!({ "target": target, "workloads": ["hel*"], "frequency": "@hourly",
                    "retention": { "last": 1 }, "paused": paused }),
        )
    };
    api.put(
        bindings,
        resource(
            "BlueprintBinding",
            "hello",
            json!({ "blueprint": "hello", "grants": ["exec"], "params": { "greeting": "hi" } }),
        ),
    );
    api.put(policies, nightly(false));
    // A misspelt field, and a name the command line has taken.
    api.put(
        policies,
        resource(
            "Policy",
            "typo",
            json!({ "target": target, "frequncy": "@daily", "retention": { "last": 1 } }),
        ),
    );
    api.put(
        policies,
        resource(
            "Policy",
            "greet",
            json!({ "target": target, "frequency": "@daily", "retention": { "last": 1 } }),
        ),
    );
    // Secrets from Cairn's own environment and files: refused to a resource's author.
    for (name, source) in [
        ("leaky", "env:CAIRN_PASSPHRASE"),
        (
            "climber",
            "file:/etc/cairn/blueprint-secrets/../../../root/key",
        ),
        ("owned", "file:/etc/cairn/secrets/offsite-passphrase"),
    ] {
        api.put(
            policies,
            resource(
                "Policy",
                name,
                json!({ "target": target, "blueprint": "hello", "grants": ["exec"],
                        "params": { "greeting": "hi" }, "workloads": ["hel*"],
                        "frequency": "@daily", "retention": { "last": 1 },
                        "secrets": { "pw": source } }),
            ),
        );
    }
    // An export's key file of Cairn's own: refused too.
    api.put(
        policies,
        resource(
            "Policy",
            "keyed",
            json!({ "target": target, "blueprint": "hello", "grants": ["exec"],
                    "params": { "greeting": "hi" }, "workloads": ["hel*"],
                    "frequency": "@daily", "retention": { "last": 1 },
                    "export": { "key_file": "/var/lib/cairn/key" } }),
        ),
    );
    // One kept before the check existed, whose resource names Cairn's environment: removed.
    let legacy = json!({
        "name": "legacy", "target": target, "blueprint": "hello", "grants": ["exec"],
        "params": { "greeting": "hi" }, "workloads": ["hel*"], "frequency": "@daily",
        "retention": { "last": 1 }, "secrets": { "pw": "env:CAIRN_PASSPHRASE" },
        "origin": "kube:cairn", "applied": "2026-12-01T00:00:00Z",
    });
    cairn.put_record("policy", "legacy", &legacy);
    api.put(
        policies,
        resource(
            "Policy",
            "legacy",
            json!({ "target": target, "blueprint": "hello", "grants": ["exec"],
                    "params": { "greeting": "hi" }, "workloads": ["hel*"],
                    "frequency": "@daily", "retention": { "last": 1 },
                    "secrets": { "pw": "env:CAIRN_PASSPHRASE" } }),
        ),
    );
    ok(&apply(&cairn, &hello_policy("{last: 1}")));
    // Two policies a DR restore brought back from another cluster's resources: one whose
    // resource is applied here, one whose is not (yet).
    for name in ["adopted", "orphan"] {
        let record = json!({
            "name": name, "target": target, "workloads": ["hel*"], "frequency": "@daily",
            "retention": { "last": 1 }, "paused": true, "origin": "kube:cairn#restored",
            "applied": "2026-12-01T00:00:00Z",
        });
        cairn.put_record("policy", name, &record);
    }
    api.put(
        policies,
        resource(
            "Policy",
            "adopted",
            json!({ "target": target, "workloads": ["hel*"], "frequency": "@daily",
                    "retention": { "last": 1 }, "paused": true }),
        ),
    );
    let serve_with = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--once",
            "--operator",
            "--operator-namespace",
            "cairn",
            // The resources run the hello blueprint on this machine.
            "--operator-local-targets",
        ];
        args.extend(extra);
        cairn
            .command(&args)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .expect("cairn runs")
    };
    let serve = || serve_with(&[]);
    let status =
        |path: &str, name: &str| api.get(path, name).expect("the resource")["status"].clone();
    // The resource's status has `state`, and a message that says `needle`.
    let says = |path: &str, name: &str, state: &str, needle: &str| {
        let s = status(path, name);
        assert_eq!(s["state"], state, "{s}");
        assert!(
            s["message"].as_str().is_some_and(|m| m.contains(needle)),
            "{s}"
        );
    };

    let out = serve();
    ok(&out);
    assert!(
        stdout(&out).contains("nightly: backed up hello"),
        "{}",
        stdout(&out)
    );
    let s = status(policies, "nightly");
    assert_eq!(s["state"], "Ready", "{s}");
    assert_eq!(s["observedGeneration"], 1, "{s}");
    assert_eq!(s["lastRun"]["succeeded"], true, "{s}");
    assert_eq!(
        s["lastRun"]["restorePoints"].as_array().map(Vec::len),
        Some(1),
        "{s}"
    );
    assert!(s["nextRun"].is_string(), "{s}");
    assert!(s.get("message").is_none(), "{s}");
    assert_eq!(status(bindings, "hello")["state"], "Ready");
    // The restored policy with a resource is taken over; the other stays, the command
    // line's to change.
    let origin = |name: &str| {
        let out = cairn.run(&["policy", "show", name, "--output", "json"]);
        ok(&out);
        json(&out)["policy"]["origin"].clone()
    };
    assert_eq!(origin("adopted"), "kube:cairn");
    assert_eq!(status(policies, "adopted")["state"], "Paused");
    assert_eq!(origin("orphan"), "kube:cairn#restored");
    ok(&cairn.run(&["policy", "resume", "orphan"]));
    ok(&cairn.run(&["policy", "delete", "orphan"]));
    api.remove(policies, "adopted");
    says(policies, "typo", "Invalid", "frequncy");
    let s = status(policies, "legacy");
    assert!(
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("the version stored before is removed")),
        "{s}"
    );
    assert!(!cairn.run(&["policy", "show", "legacy"]).status.success());
    for name in ["leaky", "climber", "owned"] {
        says(
            policies,
            name,
            "Invalid",
            "is not a file under /etc/cairn/blueprint-secrets",
        );
    }
    says(
        policies,
        "keyed",
        "Invalid",
        "export.key_file /var/lib/cairn/key is not a file under /etc/cairn/blueprint-secrets",
    );
    says(policies, "greet", "Invalid", "cairn policy apply");

    // A Restore runs once; one that was running when Cairn stopped is not run again.
    let restores = "/apis/cairn.dev/v1alpha1/namespaces/cairn/restores";
    let point = s_point(&status(policies, "nightly"));
    api.put(
        restores,
        resource(
            "Restore",
            "again",
            json!({ "policy": "nightly", "workload": "hello" }),
        ),
    );
    api.put(
        restores,
        resource(
            "Restore",
            "nowhere",
            json!({ "policy": "nightly", "workload": "db" }),
        ),
    );
    let mut cut = resource(
        "Restore",
        "cut",
        json!({ "policy": "nightly", "workload": "hello" }),
    );
    cut["status"] = json!({ "state": "Running" });
    api.put(restores, cut);
    let out = serve();
    ok(&out);
    assert!(
        stderr(&out).contains("says again: hi, world"),
        "{}",
        stderr(&out)
    );
    let s = status(restores, "again");
    assert_eq!(s["state"], "Succeeded", "{s}");
    assert_eq!(s["point"], point.as_str(), "{s}");
    assert_eq!(s["workload"], "default/hello", "{s}");
    says(restores, "nowhere", "Failed", "protects hello, not db");
    says(restores, "cut", "Failed", "interrupted");
    let finished = status(restores, "again")["finished"].clone();
    let out = serve();
    ok(&out);
    assert!(!stderr(&out).contains("says again"), "{}", stderr(&out));
    assert_eq!(status(restores, "again")["finished"], finished);

    // One whose status cannot be written is not run: nothing would keep the next pass from
    // running it again.
    api.put(
        restores,
        resource(
            "Restore",
            "blocked",
            json!({ "policy": "nightly", "workload": "hello" }),
        ),
    );
    api.forbid(&format!("{restores}/blocked/status"));
    let out = serve();
    ok(&out);
    assert!(
        stderr(&out).contains("cannot write the status of Restore cairn/blocked"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("says again"), "{}", stderr(&out));

    // A Backup runs a policy now; one of a policy that does not exist fails, saying so.
    let backups = "/apis/cairn.dev/v1alpha1/namespaces/cairn/backups";
    api.put(
        backups,
        resource("Backup", "now", json!({ "policy": "nightly" })),
    );
    api.put(
        backups,
        resource("Backup", "nothing", json!({ "policy": "nope" })),
    );
    let out = serve();
    ok(&out);
    assert!(
        stdout(&out).contains("nightly: backed up hello"),
        "{}",
        stdout(&out)
    );
    let s = status(backups, "now");
    assert_eq!(s["state"], "Succeeded", "{s}");
    let made = s["restorePoints"][0].as_str().expect("a point").to_owned();
    assert_ne!(made, point);
    assert_eq!(s_point(&status(policies, "nightly")), made);
    says(backups, "nothing", "Failed", "no policy named");

    // Each run, each one-shot's outcome and each new refusal is an event on its resource.
    let events: Vec<(String, String, String)> = api
        .created("/api/v1/namespaces/cairn/events")
        .iter()
        .map(|e| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (
                text(&e["involvedObject"]["kind"]),
                text(&e["involvedObject"]["name"]),
                text(&e["reason"]),
            )
        })
        .collect();
    for (kind, name, reason) in [
        ("Policy", "nightly", "BackedUp"),
        ("Policy", "typo", "Invalid"),
        ("Restore", "again", "Succeeded"),
        ("Restore", "nowhere", "Failed"),
        ("Backup", "now", "Succeeded"),
        ("Backup", "nothing", "Failed"),
    ] {
        let wanted = (kind.to_owned(), name.to_owned(), reason.to_owned());
        assert!(events.contains(&wanted), "{wanted:?} not in {events:?}");
    }
    let invalid = events.iter().filter(|(_, name, _)| name == "typo").count();
    assert_eq!(invalid, 1, "said once: {events:?}");

    let out = cairn.run(&["policy", "list"]);
    assert!(
        stdout(&out).contains("(kept from kube:cairn)"),
        "{}",
        stdout(&out)
    );

    // The command line leaves what a resource keeps alone.
    let file = policy_file(
        &cairn,
        "nightly",
        &hello_policy("{last: 1}").replace("name: greet", "name: nightly"),
    );
    refused_with(
        &cairn.run(&["policy", "apply", file.to_str().expect("utf-8")]),
        &["kubectl edit policy nightly -n cairn"],
    );
    refused_with(
        &cairn.run(&["policy", "delete", "nightly"]),
        &["policies.cairn.dev/nightly"],
    );
    refused_with(
        &cairn.run(&["binding", "delete", "hello"]),
        &["blueprintbindings.cairn.dev/hello"],
    );

    // A change to a resource is applied; the status follows.
    api.remove(policies, "nightly");
    api.put(policies, nightly(true));
    ok(&serve());
    let out = cairn.run(&["policy", "show", "nightly", "--output", "json"]);
    ok(&out);
    assert_eq!(json(&out)["policy"]["paused"], true);
    assert_eq!(status(policies, "nightly")["state"], "Paused");

    // Deleted resources take their records with them; restore points stay.
    api.remove(policies, "nightly");
    api.remove(bindings, "hello");
    let out = serve();
    ok(&out);
    assert!(
        stderr(&out).contains("policy nightly deleted"),
        "{}",
        stderr(&out)
    );
    let out = cairn.run(&["policy", "list", "--output", "json"]);
    let names: Vec<String> = json(&out)
        .as_array()
        .expect("policies")
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["greet"]);
    assert!(stdout(&cairn.run(&["binding", "list"])).starts_with("no blueprint bindings"));
    let out = cairn.run(&["catalog", "ls", "local-restore-point", "--output", "json"]);
    assert!(
        json(&out)
            .as_array()
            .expect("points")
            .iter()
            .any(|p| p["value"]["policy"] == "nightly"),
        "{}",
        stdout(&out)
    );

    // An operator narrowed to other namespaces refuses what reaches `default`: a policy
    // resource (the version kept before is removed) and a Backup of a command-line policy.
    api.put(policies, nightly(true));
    ok(&serve());
    ok(&cairn.run(&["policy", "show", "nightly"]));
    api.put(
        backups,
        resource("Backup", "narrowed", json!({ "policy": "greet" })),
    );
    let narrowed = serve_with(&["--operator-allow-namespaces", "elsewhere,other"]);
    ok(&narrowed);
    says(
        policies,
        "nightly",
        "Invalid",
        "namespace default is not one this operator acts on (--operator-allow-namespaces \
         elsewhere,other)",
    );
    assert!(!cairn.run(&["policy", "show", "nightly"]).status.success());
    says(
        backups,
        "narrowed",
        "Failed",
        "namespace default is not one this operator acts on",
    );
    assert!(!stdout(&narrowed).contains("greet: backed up"));

    // Without --operator-local-targets, a resource's local target is refused: its inventory
    // would run programs on Cairn's own machine.
    let out = serve_operator(&cairn, &kubeconfig, &[]);
    ok(&out);
    says(
        policies,
        "nightly",
        "Invalid",
        "a resource's policy acts on the cluster (target kube)",
    );

    // Resources Cairn may not read stop serve at its start, saying what to grant.
    api.forbid(policies);
    let out = serve();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
}

#[test]
fn a_preset_gives_the_policies_that_name_it_their_service_level() {
    // (And a blueprint, like a preset, is not removed while a policy names it.)
    let cairn = Cairn::new();
    add_hello(&cairn);
    let preset = |retention: &str| {
        let file = policy_file(
            &cairn,
            "gold",
            &format!("name: gold\nfrequency: '@hourly'\nretention: {retention}\nprune: never\n"),
        );
        cairn.run(&["preset", "apply", file.to_str().expect("utf-8 path")])
    };
    refused_with(&preset("{}"), &["preset gold", "retention keeps nothing"]);
    ok(&preset("{last: 3}"));
    let named = hello_policy("{last: 2}").replace(
        "frequency: '@hourly'\nretention: {last: 2}\n",
        "preset: gold\n",
    );
    ok(&apply(&cairn, &named));
    let shown = show(&cairn);
    assert_eq!(shown["policy"]["retention"]["last"], 3, "{shown}");
    assert_eq!(shown["policy"]["frequency"], "@hourly", "{shown}");
    assert_eq!(shown["policy"]["prune"], "never", "{shown}");

    // Applying the preset again changes the policies that name it.
    let out = preset("{last: 5}");
    ok(&out);
    assert!(
        stdout(&out).contains("policies greet follow it"),
        "{}",
        stdout(&out)
    );
    assert_eq!(show(&cairn)["policy"]["retention"]["last"], 5);
    let out = cairn.run(&["policy", "list"]);
    assert!(stdout(&out).contains("(preset gold)"), "{}", stdout(&out));
    let out = cairn.run(&["preset", "list"]);
    assert!(stdout(&out).contains("policies: greet"), "{}", stdout(&out));

    // A policy names a preset or says what it gives, not both; an unknown one is refused.
    refused_with(
        &apply(
            &cairn,
            &hello_policy("{last: 2}").replace("frequency:", "preset: gold\nfrequency:"),
        ),
        &["frequency, retention come from preset gold"],
    );
    refused_with(
        &apply(&cairn, &named.replace("gold", "silver")),
        &["no preset named \"silver\""],
    );
    // A preset that policies name is not deleted.
    refused_with(
        &cairn.run(&["preset", "delete", "gold"]),
        &["named by policies greet"],
    );
    // So is a blueprint.
    let out = cairn.run(&["blueprint", "list"]);
    assert!(
        stdout(&out).contains("used by policy greet"),
        "{}",
        stdout(&out)
    );
    refused_with(
        &cairn.run(&["blueprint", "remove", "hello"]),
        &["blueprint hello is named by policy greet"],
    );
    ok(&cairn.run(&["policy", "delete", "greet"]));
    ok(&cairn.run(&["preset", "delete", "gold"]));
    ok(&cairn.run(&["blueprint", "remove", "hello"]));
    let out = cairn.run(&["blueprint", "list"]);
    assert!(
        stdout(&out).starts_with("no blueprints registered"),
        "{}",
        stdout(&out)
    );
}

/// The local restore points, as `catalog ls --output json` lists them.
fn points(cairn: &Cairn) -> serde_json::Value {
    let out = cairn.run(&["catalog", "ls", "local-restore-point", "--output", "json"]);
    ok(&out);
    json(&out)
}

/// Dates the first restore point `by` ahead of the clock, as if the clock went back since it
/// was made; returns its id.
fn date_first_point_ahead(cairn: &Cairn, by: jiff::SignedDuration) -> String {
    let mut first = points(cairn)[0]["value"].clone();
    let id = first["id"].as_str().expect("an id").to_owned();
    first["created"] = serde_json::json!((jiff::Timestamp::now() + by).to_string());
    cairn.put_record("local-restore-point", &id, &first);
    id
}

#[test]
fn retention_keeps_the_point_a_run_made_even_when_the_clock_went_back() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    ok(&apply(&cairn, &hello_policy("{last: 1}")));
    ok(&cairn.run(&["policy", "run", "greet"]));
    // The first point, dated five minutes ahead: as if the clock went back a little since it
    // was made (within the slack allowed between clocks: it is still ranked).
    date_first_point_ahead(&cairn, jiff::SignedDuration::from_mins(5));

    // `last: 1` ranks the new point below the one dated ahead: it is kept all the same.
    let out = cairn.run(&["policy", "run", "greet"]);
    ok(&out);
    assert!(
        stderr(&out).contains("made now is dated before restore points retention keeps"),
        "{}",
        stderr(&out)
    );
    assert_eq!(points(&cairn).as_array().map(Vec::len), Some(2));
}

/// One point dated a year ahead (the clock was set forward for a while) must not
/// make `within` remove every point made since.
#[test]
fn a_point_dated_ahead_of_the_clock_does_not_anchor_within() {
    let cairn = hello_home("{within: 1h}");
    ok(&cairn.run(&["policy", "run", "greet"]));
    ok(&cairn.run(&["policy", "run", "greet"]));
    let id = date_first_point_ahead(&cairn, jiff::SignedDuration::from_hours(365 * 24));

    let out = cairn.run(&["policy", "run", "greet", "--output", "json"]);
    ok(&out);
    assert!(
        stderr(&out).contains(&format!("restore point {id} is dated"))
            && stderr(&out).contains("ahead of this machine's clock"),
        "{}",
        stderr(&out)
    );
    assert_eq!(json(&out)["retention"]["removed"], serde_json::json!([]));
    // The point dated ahead, the one made between, and the new one.
    assert_eq!(points(&cairn).as_array().map(Vec::len), Some(3));
}

/// A run from a shell whose time zone is not serve's counts retention's days
/// in another zone: it says so.
#[test]
fn a_run_in_another_time_zone_than_serves_is_warned_of() {
    let cairn = hello_home("{daily: 7}");
    let run = |args: &[&str], zone: &str| {
        let out = cairn
            .command(args)
            .env("TZ", zone)
            .output()
            .expect("cairn runs");
        ok(&out);
        stderr(&out)
    };
    run(&["serve", "--once"], "Europe/Paris");
    let said = run(&["policy", "run", "greet"], "UTC");
    assert!(
        said.contains("time zone UTC, and `cairn serve` in Europe/Paris"),
        "{said}"
    );
    let said = run(&["policy", "run", "greet"], "Europe/Paris");
    assert!(!said.contains("time zone"), "{said}");
}

/// A point is dated by when its workload's backup started, not when it was recorded, so a
/// nightly backup that ends after midnight is that night's.
#[test]
fn a_point_is_dated_by_the_start_of_its_backup() {
    let cairn = hello_home("{last: 1}");
    // The backup takes at least BACKUP seconds; what comes before it in the run (reading the
    // policy, choosing its workloads, opening the repository) takes well under SLACK, even on a
    // loaded machine. A point dated at its backup's end would be dated at least BACKUP after
    // the run started, past SLACK.
    const BACKUP: i64 = 6;
    const SLACK: i64 = 4;
    let (path, _) = fake_echo(&cairn, &format!("sleep {BACKUP}\nexec /bin/echo \"$@\""));
    let out = cairn
        .command(&["policy", "run", "greet"])
        .env("PATH", &path)
        .output()
        .expect("cairn runs");
    ok(&out);
    let run = &show(&cairn)["policy"]["last_run"];
    let at = |v: &serde_json::Value| -> jiff::Timestamp {
        v.as_str().expect("a time").parse().expect("a time")
    };
    let created = at(&points(&cairn)[0]["value"]["created"]);
    let (started, finished) = (at(&run["started"]), at(&run["finished"]));
    assert!(
        created >= started && created < started + jiff::SignedDuration::from_secs(SLACK),
        "dated {created}, the run started at {started}"
    );
    assert!(
        finished - jiff::SignedDuration::from_secs(BACKUP) > created,
        "dated {created}, the run finished at {finished}"
    );
}

#[test]
fn a_policy_moved_to_another_namespace_restores_the_old_ones_points_only_when_told_where() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    // Two namespaces with a workload `hello` each.
    let inventory = cairn.home.path().join("two-namespaces.yaml");
    let hello = "      hello:\n        workdir: .\n        env: {GREETING: hello}\n        \
                 allow: [echo, sh]\n        replicas: 1\n        labels: {app: hello}\n";
    std::fs::write(
        &inventory,
        format!(
            "namespaces:\n  default:\n    workloads:\n{hello}  staging:\n    workloads:\n{hello}"
        ),
    )
    .expect("write the inventory");
    let policy = |namespace: &str| {
        hello_policy("{last: 3}")
            .replace(
                &format!(
                    "local:{}",
                    root().join("examples/hello/inventory.yaml").display()
                ),
                &format!("local:{}", inventory.display()),
            )
            .replace("workloads:", &format!("namespace: {namespace}\nworkloads:"))
    };
    ok(&apply(&cairn, &policy("default")));
    let out = cairn.run(&["policy", "run", "greet", "--output", "json"]);
    ok(&out);
    let point = json(&out)["workloads"][0]["restore_point"]
        .as_str()
        .expect("a point")
        .to_owned();
    // Moved: the old namespace's point is not the newest of the new one's workload.
    ok(&apply(&cairn, &policy("staging")));
    refused_with(
        &cairn.run(&["policy", "restore", "greet", "-w", "hello"]),
        &["has no restore point of hello in namespace staging yet"],
    );
    refused_with(
        &cairn.run(&[
            "policy", "restore", "greet", "-w", "hello", "--point", &point,
        ]),
        &["was made in namespace default", "--into-namespace"],
    );
    ok(&cairn.run(&[
        "policy",
        "restore",
        "greet",
        "-w",
        "hello",
        "--point",
        &point,
        "--into-namespace",
        "default",
    ]));
}

/// A policy whose parameters changed since a point was made (its `database` moved on) does not
/// restore the point with the new ones unasked: the old database's dump would go into another.
#[test]
fn a_point_made_with_other_parameters_is_restored_only_when_told_which() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    ok(&apply(&cairn, &hello_policy("{last: 3}")));
    ok(&cairn.run(&["policy", "run", "greet"]));
    ok(&apply(
        &cairn,
        &hello_policy("{last: 3}").replace("greeting: hi", "greeting: hey"),
    ));
    let out = cairn.run(&["policy", "restore", "greet", "-w", "hello"]);
    refused_with(
        &out,
        &[
            "was made with other parameters than policy greet gives now: greeting=hi (the \
             policy now gives greeting=hey)",
            "--param",
            "--params-of point restores it as it was made, --params-of policy where the policy \
             is now",
        ],
    );
    ok(&cairn.run(&[
        "policy",
        "restore",
        "greet",
        "-w",
        "hello",
        "--param",
        "greeting=hey",
    ]));
    // Every changed parameter settled at once, either way.
    for whose in ["point", "policy"] {
        ok(&cairn.run(&[
            "policy",
            "restore",
            "greet",
            "-w",
            "hello",
            "--params-of",
            whose,
        ]));
    }
    // A point made with the policy's present parameters restores as before.
    ok(&cairn.run(&["policy", "run", "greet"]));
    ok(&cairn.run(&["policy", "restore", "greet", "-w", "hello"]));
}

/// A point is restored and removed only by the blueprint that made it: the policy's blueprint
/// changed since would run its own restore or delete on what it never wrote (quiesce's
/// volume snapshots, left behind by hello's retention).
#[test]
fn a_point_is_restored_and_removed_only_by_its_own_blueprint() {
    let cairn = Cairn::new();
    let app = crate::run::slow_stopping_app("0");
    let inventory = app.path().join("inventory.yaml");
    let text = std::fs::read_to_string(&inventory).expect("inventory");
    std::fs::write(&inventory, text.replace("allow: [sh]", "allow: [sh, echo]")).expect("write");
    for package in ["quiesce", "hello"] {
        let wasm = crate::support::wasm(package);
        ok(&cairn.run(&["blueprint", "add", wasm.to_str().expect("utf-8 path")]));
    }
    let policy = |blueprint: &str| {
        let (grants, params) = match blueprint {
            "quiesce" => ("[workloads, scale, volumes]", "{}"),
            _ => ("[exec]", "{greeting: hi}"),
        };
        format!(
            "name: app\nblueprint: {blueprint}\ntarget: local:{}\nworkloads: [app]\n\
             frequency: '@daily'\nretention: {{last: 1}}\ngrants: {grants}\nparams: {params}\n",
            inventory.display()
        )
    };
    ok(&apply(&cairn, &policy("quiesce")));
    ok(&cairn.run(&["policy", "run", "app"]));
    let points = || {
        let out = cairn.run(&["catalog", "ls", "local-restore-point", "--output", "json"]);
        ok(&out);
        json(&out)
            .as_array()
            .expect("points")
            .iter()
            .map(|p| {
                p["value"]["blueprint"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect::<Vec<String>>()
    };
    assert_eq!(points(), ["quiesce"]);

    ok(&apply(&cairn, &policy("hello")));
    refused_with(
        &cairn.run(&["policy", "restore", "app", "-w", "app"]),
        &[
            "was made by blueprint quiesce",
            "cairn run quiesce --action restore",
        ],
    );
    // hello's backup runs; its retention leaves quiesce's point, saying how to remove it.
    let out = cairn.run(&["policy", "run", "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains("cairn run quiesce --action delete"), "{said}");
    let mut left = points();
    left.sort();
    assert_eq!(left, ["hello", "quiesce"]);
}

/// `within` takes a duration with its unit; a bare number (seconds in the catalog) is refused.
#[test]
fn retention_within_takes_a_duration_with_its_unit() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    refused_with(
        &apply(&cairn, &hello_policy("{within: 30}")),
        &["retention within 30: give its unit (30d, 30h, 30min or 30mo)"],
    );
    refused_with(
        &apply(&cairn, &hello_policy("{within: 2 fortnights}")),
        &["retention within: `2 fortnights`: unknown unit `fortnights`"],
    );
    // Minutes, as policy files of earlier releases meant them (the CLI's --keep-within,
    // where restic users mean months, refuses a bare m).
    ok(&apply(&cairn, &hello_policy("{within: 90m, last: 1}")));
    assert_eq!(show(&cairn)["policy"]["retention"]["within"], 90 * 60);
    ok(&apply(&cairn, &hello_policy("{within: 2d, last: 1}")));
    assert_eq!(show(&cairn)["policy"]["retention"]["within"], 2 * 86_400);
    // Calendar months are kept as months, and shown as the file gave them.
    ok(&apply(
        &cairn,
        &hello_policy("{within: 1y 6mo 2d, last: 1}"),
    ));
    let shown = show(&cairn);
    assert_eq!(shown["policy"]["retention"]["within_months"], 18, "{shown}");
    assert_eq!(
        shown["policy"]["retention"]["within"],
        2 * 86_400,
        "{shown}"
    );
    // `m` keeps meaning minutes in a policy file, as it did, but not silently.
    let out = apply(&cairn, &hello_policy("{within: 90m}"));
    ok(&out);
    assert!(
        stderr(&out).contains("`m` is read as minutes here"),
        "{}",
        stderr(&out)
    );
    assert_eq!(show(&cairn)["policy"]["retention"]["within"], 90 * 60);
}

/// Secrets without the `secrets` grant would never reach the blueprint: refused at apply.
#[test]
fn secrets_without_their_grant_are_refused() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    let policy = format!("{}secrets: {{pw: env:HOME}}\n", hello_policy("{last: 1}"));
    refused_with(
        &apply(&cairn, &policy),
        &["secrets pw are given but not the `secrets` grant"],
    );
}

/// A profile file that cannot be read fails at apply, not at the first run.
#[test]
fn a_missing_profile_file_is_refused_at_apply() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    let policy = format!(
        "{}export: {{profile_file: nowhere.yaml}}\n",
        hello_policy("{last: 1}")
    );
    refused_with(
        &apply(&cairn, &policy),
        &["export: cannot read the repository profile", "nowhere.yaml"],
    );
}

/// On a local target, apply refuses a namespace the inventory lacks and warns of a selection
/// that matches no workload there.
#[test]
fn a_local_policy_that_selects_nothing_is_said_at_apply() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    let policy = hello_policy("{last: 1}");
    refused_with(
        &apply(&cairn, &format!("{policy}namespace: prod\n")),
        &["prod"],
    );
    let out = apply(&cairn, &policy.replace("['hel*']", "[helo]"));
    ok(&out);
    assert!(
        stderr(&out).contains("policy greet selects no workload of namespace default")
            && stderr(&out).contains("it has: hello"),
        "{}",
        stderr(&out)
    );
}

/// Retention that cannot run (the DR passphrase unreadable while it checks that no other
/// instance took over maintenance) is reported and the command fails, but the run's backups
/// succeeded: the policy is not run again early as after a failed backup.
#[test]
fn retention_that_cannot_run_does_not_make_the_backups_a_failed_run() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    ok(&apply(&cairn, &hello_policy("{last: 1}")));
    let location = cairn.home.path().join("dr-location");
    let pass = cairn.home.path().join("dr.pass");
    std::fs::write(&pass, "dr passphrase").expect("write");
    let from = format!("file:{}", pass.display());
    ok(&cairn.run(&[
        "dr",
        "enable",
        "--profile",
        location.to_str().expect("utf-8"),
        "--passphrase-from",
        &from,
    ]));
    ok(&cairn.run(&[
        "dr",
        "run",
        "--blueprint",
        crate::support::wasm("dr").to_str().expect("utf-8"),
    ]));
    std::fs::remove_file(&pass).expect("remove the passphrase");
    // Nor the DR key cached in the home, which would do instead.
    std::fs::remove_file(cairn.home.path().join("dr/location.key")).expect("remove the cache");
    let out = cairn.run(&["policy", "run", "greet", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let outcome = json(&out);
    assert_eq!(outcome["succeeded"], true, "{outcome}");
    assert!(
        outcome["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("needs the DR passphrase")),
        "{outcome}"
    );
    assert_eq!(show(&cairn)["policy"]["last_run"]["succeeded"], true);
    let out = cairn.run(&["policy", "list"]);
    assert!(stdout(&out).contains("ok, with errors"), "{}", stdout(&out));
}

#[test]
fn retention_reads_the_owner_markers_with_the_cached_dr_key_where_the_passphrase_is_not() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    ok(&apply(&cairn, &hello_policy("{last: 1}")));
    let location = cairn.home.path().join("dr-location");
    // Enabled in a shell with the passphrase variable; policies then run in one without it
    // (cron, CI), where retention still has to check who maintains the backup data.
    let enabled = cairn
        .command(&[
            "dr",
            "enable",
            "--profile",
            location.to_str().expect("utf-8"),
            "--passphrase-from",
            "env:CAIRN_TEST_DR_PASS",
        ])
        .env("CAIRN_TEST_DR_PASS", "dr passphrase")
        .output()
        .expect("cairn runs");
    ok(&enabled);
    for _ in 0..2 {
        let out = cairn
            .command(&["policy", "run", "greet", "--output", "json"])
            .env_remove("CAIRN_TEST_DR_PASS")
            .output()
            .expect("cairn runs");
        ok(&out);
        assert!(
            json(&out)["errors"].as_array().is_none_or(Vec::is_empty),
            "{}",
            stdout(&out)
        );
    }
    assert_eq!(
        show(&cairn)["restore_points"].as_array().map(Vec::len),
        Some(1),
        "{}",
        show(&cairn)
    );
    // A DR point in the location, as every location soon holds.
    let run = cairn
        .command(&[
            "dr",
            "run",
            "--blueprint",
            crate::support::wasm("dr").to_str().expect("utf-8"),
        ])
        .env("CAIRN_TEST_DR_PASS", "dr passphrase")
        .output()
        .expect("cairn runs");
    ok(&run);
    let cache = cairn.home.path().join("dr/location.key");
    let text = std::fs::read_to_string(&cache).expect("the key is cached");
    let mut cached: serde_json::Value = serde_json::from_str(&text).expect("json");
    // A cached key gone bad for the same slot opens the location, but none of its snapshots:
    // the check fails rather than find no marker.
    let secret = cached["secret"].as_str().expect("secret").to_owned();
    let flipped = if secret.starts_with('0') { "1" } else { "0" };
    cached["secret"] = serde_json::json!(format!("{flipped}{}", &secret[1..]));
    // The error a policy run gives with `cached` as the home's cache.
    let error_with = |cached: &serde_json::Value| {
        std::fs::write(&cache, cached.to_string()).expect("write");
        let out = cairn.run(&["policy", "run", "greet", "--output", "json"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        json(&out)["errors"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let error = error_with(&cached);
    assert!(error.contains("do not open"), "{error}");
    // A cache that no longer opens the location fails the check as before, naming both ways.
    cached["secret"] = serde_json::json!("00".repeat(32));
    cached["wrapped"] = serde_json::json!("00");
    let error = error_with(&cached);
    assert!(
        error.contains("needs the DR passphrase") && error.contains("location.key"),
        "{error}"
    );
}

#[test]
fn apply_stores_an_inventory_path_without_the_detours_it_was_written_with() {
    let cairn = Cairn::new();
    add_hello(&cairn);
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let inventory = std::fs::read_to_string(root().join("examples/hello/inventory.yaml"))
        .expect("read the inventory");
    for sub in ["policies", "hello", "deep/down"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    std::fs::write(dir.join("hello/inventory.yaml"), &inventory).expect("write");
    std::fs::write(dir.join("deep/inventory.yaml"), &inventory).expect("write");
    std::os::unix::fs::symlink(dir.join("deep/down"), dir.join("link")).expect("symlink");
    let yaml = |target: &str| {
        hello_policy("{last: 1}").replace(
            &format!(
                "local:{}",
                root().join("examples/hello/inventory.yaml").display()
            ),
            &format!("local:{target}"),
        )
    };
    let file = dir.join("policies/greet.yaml");
    let apply_target = |target: &str| {
        std::fs::write(&file, yaml(target)).expect("write the policy");
        let out = cairn.run(&["policy", "apply", file.to_str().expect("utf-8")]);
        ok(&out);
        (stdout(&out), show(&cairn)["policy"]["target"].clone())
    };
    let plain = format!("local:{}", dir.join("hello/inventory.yaml").display());
    let (said, stored) = apply_target("../hello/./inventory.yaml");
    assert_eq!(stored, plain.as_str());
    assert!(!said.contains(".."), "{said}");
    // A `..` after a symlink is where the link's target climbs to: it stays.
    let (_, stored) = apply_target("../link/../inventory.yaml");
    assert_eq!(
        stored,
        format!("local:{}", dir.join("link/../inventory.yaml").display()).as_str()
    );
}
