//! Exec: capture, exit codes, environment, allow-list, timeouts, streams.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_cluster::{Cluster, Error, Stdin, Stdout};
use tokio::io::AsyncWrite;

use crate::{Fixture, HELLO, bounded, hello, request};

fn cluster() -> (Fixture, cairn_cluster::LocalCluster) {
    let fx = Fixture::new(HELLO, &["work", "data"]);
    let cluster = fx.open();
    (fx, cluster)
}

#[tokio::test]
async fn captures_stdout_stderr_and_exit_code() {
    let (_fx, cluster) = cluster();
    let out = bounded(cluster.exec(
        &hello(),
        request(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
    ))
    .await
    .expect("exec runs");
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.stdout_bytes, 4);
    assert_eq!(out.pod, "hello-0");
    assert!(!out.stdout_truncated && !out.stderr_truncated);
}

#[tokio::test]
async fn exit_by_signal_is_128_plus_signo() {
    let (_fx, cluster) = cluster();
    let out = bounded(cluster.exec(&hello(), request(&["sh", "-c", "kill -TERM $$"])))
        .await
        .expect("exec runs");
    assert_eq!(out.exit_code, 128 + 15);
}

#[tokio::test]
async fn environment_is_cleared_and_scoped() {
    let (_fx, cluster) = cluster();
    let mut req = request(&["env"]);
    req.env.push(("EXTRA".to_owned(), "1".to_owned()));
    let out = bounded(cluster.exec(&hello(), req))
        .await
        .expect("exec runs");
    let env = String::from_utf8(out.stdout).expect("utf-8");
    let mut names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    names.sort_unstable();
    for expected in [
        "CAIRN_CONTAINER",
        "CAIRN_NAMESPACE",
        "CAIRN_POD",
        "CAIRN_WORKLOAD",
        "EXTRA",
        "GREETING",
        "PATH",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for name in &names {
        assert!(
            [
                "CAIRN_CONTAINER",
                "CAIRN_NAMESPACE",
                "CAIRN_POD",
                "CAIRN_WORKLOAD",
                "EXTRA",
                "GREETING",
                "PATH",
                "HOME"
            ]
            .contains(name),
            "unexpected variable {name} leaked into the command"
        );
    }
    assert!(env.contains("CAIRN_POD=hello-0\n"), "{env}");
    assert!(env.contains("CAIRN_NAMESPACE=default\n"), "{env}");
    assert!(env.contains("CAIRN_WORKLOAD=hello\n"), "{env}");
    assert!(env.contains("CAIRN_CONTAINER=main\n"), "{env}");
    assert!(env.contains("GREETING=hello\n"), "{env}");
}

#[tokio::test]
async fn a_local_command_gets_the_clients_variables_and_those_pass_env_names_only() {
    let (_fx, cluster) = cluster();
    for name in [
        "PGPASSWORD",
        "MYSQL_PWD",
        "ETCDCTL_API",
        "EXTRA",
        "MY_TOOL_TOKEN",
    ] {
        let mut req = request(&["env"]);
        req.env.push((name.to_owned(), "v".to_owned()));
        let out = bounded(cluster.exec(&hello(), req)).await.expect("passed");
        let env = String::from_utf8(out.stdout).expect("utf-8");
        assert!(env.contains(&format!("{name}=v\n")), "{env}");
    }
    // An interpreter's hooks would run the blueprint's code through an allowed script.
    for name in ["PERL5OPT", "BASH_ENV", "PYTHONSTARTUP", "MYX"] {
        let mut req = request(&["env"]);
        req.env.push((name.to_owned(), "x".to_owned()));
        let err = bounded(cluster.exec(&hello(), req))
            .await
            .expect_err("not passed");
        assert!(
            matches!(err, Error::Denied(ref m) if m.contains(name) && m.contains("pass_env")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn request_may_not_override_reserved_variables() {
    let (_fx, cluster) = cluster();
    for name in ["PATH", "LD_PRELOAD", "CAIRN_POD"] {
        let mut req = request(&["env"]);
        req.env.push((name.to_owned(), "/tmp".to_owned()));
        let err = bounded(cluster.exec(&hello(), req))
            .await
            .expect_err("reserved");
        assert!(
            matches!(err, Error::Denied(ref m) if m.contains(name)),
            "{err}"
        );
    }
    let mut req = request(&["env"]);
    req.env.push(("A=B".to_owned(), "x".to_owned()));
    let err = bounded(cluster.exec(&hello(), req))
        .await
        .expect_err("malformed");
    assert!(matches!(err, Error::Invalid(_)), "{err}");
}

#[tokio::test]
async fn runs_in_the_workdir() {
    let (fx, cluster) = cluster();
    let out = bounded(cluster.exec(&hello(), request(&["pwd"])))
        .await
        .expect("exec runs");
    let pwd = String::from_utf8(out.stdout).expect("utf-8");
    let expected = fx.path("work").canonicalize().expect("canonical");
    assert_eq!(
        std::path::Path::new(pwd.trim())
            .canonicalize()
            .expect("canonical"),
        expected
    );
}

#[tokio::test]
async fn programs_off_the_allow_list_are_denied() {
    let (_fx, cluster) = cluster();
    for argv in [
        &["rm", "-rf", "/"][..],
        &["/bin/sh", "-c", "true"],
        &["./sh"],
        &["../bin/sh"],
    ] {
        let err = bounded(cluster.exec(&hello(), request(argv)))
            .await
            .expect_err("denied");
        match &err {
            Error::Denied(message) => {
                assert!(message.contains(argv[0]), "{message}");
                assert!(
                    message.contains("echo, sh, cat"),
                    "names the allow list: {message}"
                );
            }
            other => panic!("expected Denied, got {other:?}"),
        }
    }
    let err = bounded(cluster.exec(&hello(), request(&[])))
        .await
        .expect_err("empty argv");
    assert!(matches!(err, Error::Invalid(_)), "{err}");
}

#[tokio::test]
async fn unknown_pod_and_container_are_not_found() {
    let (_fx, cluster) = cluster();
    let mut req = request(&["true"]);
    req.pod = Some("hello-7".to_owned());
    let err = bounded(cluster.exec(&hello(), req))
        .await
        .expect_err("no such pod");
    assert!(
        matches!(&err, Error::NotFound { kind: "pod", hint, .. } if hint.contains("hello-0")),
        "{err}"
    );
    let mut req = request(&["true"]);
    req.container = Some("sidecar".to_owned());
    let err = bounded(cluster.exec(&hello(), req))
        .await
        .expect_err("no such container");
    assert!(
        matches!(&err, Error::NotFound { kind: "container", hint, .. } if hint.contains("main")),
        "{err}"
    );
    let mut req = request(&["true"]);
    req.pod = Some("hello-0".to_owned());
    req.container = Some("main".to_owned());
    assert_eq!(
        bounded(cluster.exec(&hello(), req))
            .await
            .expect("explicit pod and container")
            .exit_code,
        0
    );
}

#[tokio::test]
async fn no_pods_at_zero_replicas() {
    let (_fx, cluster) = cluster();
    bounded(cluster.scale(&hello(), 0))
        .await
        .expect("scale to 0");
    let err = bounded(cluster.exec(&hello(), request(&["true"])))
        .await
        .expect_err("no pods");
    assert!(
        err.to_string()
            .contains("workload default/hello has no running pods (replicas 0)"),
        "{err}"
    );
    assert!(matches!(err, Error::NotFound { .. }));
}

#[tokio::test]
async fn a_stopped_workload_runs_commands_against_its_volumes_only_while_stopped() {
    let (fx, cluster) = cluster();
    std::fs::write(fx.path("data/table"), "rows\n").expect("volume data");
    let stopped = || cairn_cluster::ExecRequest {
        stopped: true,
        ..request(&["cat", "../data/table"])
    };
    let err = bounded(cluster.exec(&hello(), stopped()))
        .await
        .expect_err("running replicas");
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("has 1 replicas"), "{err}");

    bounded(cluster.scale(&hello(), 0))
        .await
        .expect("scale to 0");
    let out = bounded(cluster.exec(&hello(), stopped()))
        .await
        .expect("exec against the stopped workload");
    assert_eq!((out.exit_code, out.stdout.as_slice()), (0, &b"rows\n"[..]));
    assert_eq!(out.pod, "hello-stopped");
    // The allow list still applies, and it runs in no pod of the workload's.
    let err = bounded(cluster.exec(
        &hello(),
        cairn_cluster::ExecRequest {
            stopped: true,
            ..request(&["rm", "../data/table"])
        },
    ))
    .await
    .expect_err("off the allow list");
    assert!(matches!(err, Error::Denied(_)), "{err:?}");
    let err = bounded(cluster.exec(
        &hello(),
        cairn_cluster::ExecRequest {
            pod: Some("hello-0".into()),
            ..stopped()
        },
    ))
    .await
    .expect_err("a pod");
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
}

#[tokio::test]
async fn output_is_truncated_at_the_limit_and_the_rest_drained() {
    let (_fx, cluster) = cluster();
    // 1 MB on each stream, far more than a pipe buffer: the command must not block on either.
    let mut req = request(&[
        "sh",
        "-c",
        "head -c 1000000 /dev/zero; head -c 1000000 /dev/zero >&2; echo done >&2",
    ]);
    req.output_limit = 100;
    let out = bounded(cluster.exec(&hello(), req))
        .await
        .expect("exec runs");
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout.len(), 100);
    assert!(out.stdout_truncated);
    assert_eq!(out.stdout_bytes, 1_000_000);
    assert_eq!(out.stderr.len(), 100);
    assert!(out.stderr_truncated);
}

#[tokio::test]
async fn pipelines_connect_programs_and_report_the_last_failure() {
    let (_fx, cluster) = cluster();
    let stage = |argv: &[&str]| argv.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let mut req = request(&["cat"]);
    req.then = vec![
        stage(&["sh", "-c", "echo first >&2; head -c 5"]),
        stage(&["sh", "-c", "cat; echo second >&2"]),
    ];
    req.stdin = Stdin::Bytes(b"hello pipeline".to_vec());
    let out = bounded(cluster.exec(&hello(), req))
        .await
        .expect("pipeline runs");
    assert_eq!(out.stdout, b"hello");
    assert_eq!(out.stderr, b"first\nsecond\n", "every program's, in order");
    assert_eq!((out.exit_code, out.stdin_bytes), (0, 14));

    // As `set -o pipefail`: the last non-zero status.
    for (first, then, code) in [
        ("exit 3", "cat >/dev/null; exit 4", 4),
        ("exit 3", "cat", 3),
    ] {
        let mut req = request(&["sh", "-c", first]);
        req.then = vec![stage(&["sh", "-c", then]), stage(&["cat"])];
        let out = bounded(cluster.exec(&hello(), req))
            .await
            .expect("pipeline runs");
        assert_eq!(out.exit_code, code, "{first} | {then} | cat");
    }

    // Every program must be allowed, and none may be empty: refused before anything runs.
    let mut req = request(&["echo", "x"]);
    req.then = vec![stage(&["rm", "-rf", "."])];
    let err = bounded(cluster.exec(&hello(), req))
        .await
        .expect_err("rm is off the allow list");
    assert!(matches!(err, Error::Denied(_)), "{err:?}");
    assert!(err.to_string().contains("\"rm\""), "{err}");
    let mut req = request(&["echo", "x"]);
    req.then = vec![Vec::new()];
    let err = bounded(cluster.exec(&hello(), req))
        .await
        .expect_err("an empty program");
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");

    // A timeout ends every program of the pipeline.
    let mut req = request(&["echo", "x"]);
    req.then = vec![stage(&["sh", "-c", "sleep 300"])];
    req.timeout = Duration::from_millis(300);
    assert_times_out(&cluster, req).await;
}

/// Runs `req`, which must time out, and return promptly.
async fn assert_times_out(cluster: &cairn_cluster::LocalCluster, req: cairn_cluster::ExecRequest) {
    let started = std::time::Instant::now();
    let err = bounded(cluster.exec(&hello(), req))
        .await
        .expect_err("times out");
    assert!(matches!(err, Error::TimedOut { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "returned promptly"
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let (fx, cluster) = cluster();
    let pidfile = fx.path("work/bg.pid");
    // A background grandchild holds stdout open; only killing the group ends it.
    let mut req = request(&["sh", "-c", "sleep 300 & echo $! > bg.pid; wait"]);
    req.timeout = Duration::from_millis(500);
    assert_times_out(&cluster, req).await;
    let pid = crate::read(&pidfile).trim().to_owned();
    // SIGKILL is delivered at once, but the process may take a moment to become a zombie.
    bounded(async {
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or("");
            if stat.is_empty() || state == "Z" || state == "X" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn stdin_bytes_and_stream_are_fed() {
    let (_fx, cluster) = cluster();
    let mut req = request(&["cat"]);
    req.stdin = Stdin::Bytes(b"hello stdin".to_vec());
    let out = bounded(cluster.exec(&hello(), req))
        .await
        .expect("exec runs");
    assert_eq!(out.stdout, b"hello stdin");
    assert_eq!(out.stdin_bytes, 11);

    // 8 MiB through a stream, counted on the way out.
    let data: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut req = request(&["sh", "-c", "cat | head -c 100000000 | wc -c"]);
    req.stdin = Stdin::Stream(Box::new(std::io::Cursor::new(data)));
    let out = bounded(cluster.exec(&hello(), req))
        .await
        .expect("exec runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (8 * 1024 * 1024).to_string()
    );
    assert_eq!(out.stdin_bytes, 8 * 1024 * 1024);
}

#[tokio::test]
async fn a_command_that_ignores_stdin_still_finishes() {
    let (_fx, cluster) = cluster();
    let mut req = request(&["true"]);
    req.stdin = Stdin::Stream(Box::new(tokio::io::repeat(b'x')));
    let out = bounded(cluster.exec(&hello(), req))
        .await
        .expect("exec runs");
    assert_eq!(out.exit_code, 0);

    // One that stops reading part way: what crossed says so (the SDK's `Transfer::ok` fails
    // on it), give or take what the pipe buffered.
    let mut req = request(&["sh", "-c", "head -c 10 >/dev/null"]);
    req.stdin = Stdin::Stream(Box::new(std::io::Cursor::new(vec![b'x'; 8 << 20])));
    let out = bounded(cluster.exec(&hello(), req))
        .await
        .expect("exec runs");
    assert_eq!(out.exit_code, 0);
    assert!(out.stdin_bytes < 1 << 20, "{} bytes fed", out.stdin_bytes);
}

/// Fails every read with a broken pipe.
struct BrokenSource;

impl tokio::io::AsyncRead for BrokenSource {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
    }
}

#[tokio::test]
async fn a_stdin_stream_that_fails_fails_the_exec_whatever_its_error() {
    let (_fx, cluster) = cluster();
    // A broken pipe from the source is not the command closing its stdin: the command must
    // not take the bytes before it for the whole input.
    let mut req = request(&["cat"]);
    let source = tokio::io::AsyncReadExt::chain(&b"partial"[..], BrokenSource);
    req.stdin = Stdin::Stream(Box::new(source));
    let err = bounded(cluster.exec(&hello(), req))
        .await
        .expect_err("the exec fails");
    assert!(
        err.to_string().contains("reading the stdin stream"),
        "{err}"
    );
}

/// Fails with a broken pipe after a while: the command is running by then.
struct LateBrokenSource(Pin<Box<tokio::time::Sleep>>);

impl tokio::io::AsyncRead for LateBrokenSource {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.0.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }
}

/// Never gives a byte.
struct StalledSource;

impl tokio::io::AsyncRead for StalledSource {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

#[tokio::test]
async fn a_cut_short_stdin_never_reaches_the_command_as_the_end_of_its_input() {
    let (fx, cluster) = cluster();
    // The command acts on the end of its input, as `psql --single-transaction` commits there:
    // a source that fails, or one still feeding at the deadline, must not look like an end.
    let acts = "cat > got; touch acted";
    let mut broken = request(&["sh", "-c", acts]);
    let late = LateBrokenSource(Box::pin(tokio::time::sleep(Duration::from_millis(500))));
    let source = tokio::io::AsyncReadExt::chain(&b"partial"[..], late);
    broken.stdin = Stdin::Stream(Box::new(source));
    let mut stalled = request(&["sh", "-c", acts]);
    let source = tokio::io::AsyncReadExt::chain(&b"partial"[..], StalledSource);
    stalled.stdin = Stdin::Stream(Box::new(source));
    stalled.timeout = Duration::from_millis(500);
    for req in [broken, stalled] {
        bounded(cluster.exec(&hello(), req))
            .await
            .expect_err("the exec fails");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(fx.path("work/got").exists(), "the command ran");
        assert!(
            !fx.path("work/acted").exists(),
            "it saw an end of its input"
        );
        std::fs::remove_file(fx.path("work/got")).expect("remove");
    }
    // The exec's future dropped (the engine's deadline for the call) while it feeds.
    let mut dropped = request(&["sh", "-c", acts]);
    let source = tokio::io::AsyncReadExt::chain(&b"partial"[..], StalledSource);
    dropped.stdin = Stdin::Stream(Box::new(source));
    let workload = hello();
    let cut = tokio::time::timeout(Duration::from_millis(500), cluster.exec(&workload, dropped));
    assert!(cut.await.is_err(), "still feeding when dropped");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fx.path("work/got").exists(), "the command ran");
    assert!(
        !fx.path("work/acted").exists(),
        "it saw an end of its input"
    );
}

/// Counts what it is given and keeps nothing.
#[derive(Clone, Default)]
struct CountingSink {
    bytes: Arc<AtomicU64>,
    shut_down: Arc<std::sync::atomic::AtomicBool>,
}

impl AsyncWrite for CountingSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.shut_down.store(true, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[tokio::test]
async fn large_stdout_streams_with_flat_memory() {
    let (_fx, cluster) = cluster();
    const SIZE: u64 = 200_000_000;
    let sink = CountingSink::default();
    let before = peak_rss_kib();
    let mut req = request(&["head", "-c", "200000000", "/dev/zero"]);
    req.stdout = Stdout::Stream(Box::new(sink.clone()));
    req.timeout = Duration::from_secs(120);
    let out = tokio::time::timeout(Duration::from_secs(120), cluster.exec(&hello(), req))
        .await
        .expect("in time")
        .expect("exec runs");
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout_bytes, SIZE);
    assert!(out.stdout.is_empty());
    assert_eq!(sink.bytes.load(Ordering::Relaxed), SIZE);
    assert!(
        sink.shut_down.load(Ordering::Relaxed),
        "the sink is shut down at the end"
    );
    let grown_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
    assert!(
        grown_mib < 64,
        "peak memory grew by {grown_mib} MiB while streaming 200 MB"
    );
}

/// A sink that fails: the command is stopped and the exec fails.
struct BrokenSink;

impl AsyncWrite for BrokenSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Err(std::io::Error::other("disk full")))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failing_stdout_stream_fails_the_exec() {
    let (_fx, cluster) = cluster();
    let mut req = request(&["head", "-c", "100000000", "/dev/zero"]);
    req.stdout = Stdout::Stream(Box::new(BrokenSink));
    let err = bounded(cluster.exec(&hello(), req))
        .await
        .expect_err("the sink fails");
    assert!(err.to_string().contains("disk full"), "{err}");
}

#[tokio::test]
async fn concurrent_execs_share_the_cluster() {
    let (_fx, cluster) = cluster();
    let cluster = Arc::new(cluster);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let cluster = Arc::clone(&cluster);
            tokio::spawn(async move {
                let out = cluster
                    .exec(&hello(), request(&["echo", &i.to_string()]))
                    .await
                    .expect("exec runs");
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), i.to_string());
            })
        })
        .collect();
    for task in tasks {
        bounded(task).await.expect("task");
    }
}
