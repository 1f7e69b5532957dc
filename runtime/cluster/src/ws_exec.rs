//! Exec over the API server's WebSocket (`v5.channel.k8s.io`, or `v4` without closing stdin),
//! with stdin sent by one task and output received by another.
//!
//! kube's own `Api::exec` runs one loop that both sends stdin and receives output: while a send
//! waits (the kubelet not reading, because the command is not reading its stdin, because it is
//! blocked writing its output), no output is received, so the command stays blocked and the
//! send never completes. Any command that writes about as much as it reads (`cat`, `gzip` in a
//! pipeline, `psql` echoing a row per `INSERT`) hung there once the buffers between filled. Here
//! the output keeps being read while stdin waits.

use futures::{FutureExt, SinkExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::AttachParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, SimplexStream, WriteHalf};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::pipes::COPY_BUFFER;

/// Channels of the protocol: the first byte of every binary message.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
/// `v5`: `[CLOSE, STDIN]` ends the command's stdin.
const CLOSE: u8 = 255;

/// Most stdin bytes in one message: what kubectl (client-go's copy buffer) sends.
const STDIN_MESSAGE: usize = 32 * 1024;

/// A ping this often keeps an idle connection (a long dump writing nothing yet) from being
/// closed by a proxy.
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What a protocol probe asks the container to run: a path no image has, so nothing starts
/// (the container runtime answers "no such file" once the connection is made).
const PROBE: &str = "/nonexistent/cairn-exec-protocol-probe";

/// Whether this API server's exec can close a command's stdin (`v5.channel.k8s.io`: Kubernetes
/// 1.30 and later, or 1.29 with the `TranslateStreamCloseWebsocketRequests` feature gate),
/// learned from an exec without stdin of a program that does not exist: the protocol is agreed
/// on when the connection is made, which is when a real command would already start.
pub(crate) async fn closes_stdin(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<bool, kube::Error> {
    let params = AttachParams::default()
        .container(container)
        .stdin(false)
        .stdout(true)
        .stderr(false);
    let mut request = kube::core::Request::new(format!("/api/v1/namespaces/{namespace}/pods"))
        .exec(pod, vec![PROBE.to_owned()], &params)
        .map_err(kube::Error::BuildRequest)?;
    request.extensions_mut().insert("exec");
    let connection = client.connect(request).await?;
    let closes = connection.supports_stream_close();
    let _ = connection.into_stream().close(None).await;
    Ok(closes)
}

/// A command started by exec: its pipes (those asked for), and its status once it ends.
pub(crate) struct Exec {
    stdin: Option<WriteHalf<SimplexStream>>,
    stdout: Option<DuplexStream>,
    stderr: Option<DuplexStream>,
    status: Option<tokio::sync::oneshot::Receiver<Status>>,
    tasks: [JoinHandle<()>; 2],
}

impl Exec {
    /// Starts `argv` in `pod` of `namespace` as `params` asks.
    pub(crate) async fn start(
        client: &kube::Client,
        namespace: &str,
        pod: &str,
        argv: Vec<String>,
        params: &AttachParams,
    ) -> Result<Exec, kube::Error> {
        let mut request = kube::core::Request::new(format!("/api/v1/namespaces/{namespace}/pods"))
            .exec(pod, argv, params)
            .map_err(kube::Error::BuildRequest)?;
        request.extensions_mut().insert("exec");
        let connection = client.connect(request).await?;
        let closes_stdin = connection.supports_stream_close();
        // Without `v5` the end of stdin can be told only by closing the connection, which
        // loses the command's exit status: a command that read all of its input (a restore
        // that committed) would be reported failed. The caller asks [`closes_stdin`] before
        // starting anything; this is the last guard, which comes after the command started
        // (it then sees its stdin end at once).
        if params.stdin && !closes_stdin {
            let _ = connection.into_stream().close(None).await;
            return Err(kube::Error::Service(Box::new(std::io::Error::other(
                "this API server's exec cannot close a command's stdin (it does not speak \
                 v5.channel.k8s.io: Kubernetes before 1.30, or 1.29 without the \
                 TranslateStreamCloseWebsocketRequests feature gate), so a command that reads \
                 stdin cannot report how it ended; upgrade the cluster to 1.30 or later",
            ))));
        }
        let (mut sink, mut stream) = connection.into_stream().split();
        // Output goes through duplex pipes: an end dropped closes them (a write fails, a read
        // ends), so output nobody reads any more is dropped rather than waited on, and a
        // reader never waits on a task that is gone. Stdin stays a simplex pipe, as kube's:
        // a write waits while the command runs, and the pipeline's relay stops waiting when
        // the command's status arrives.
        let pipe = || tokio::io::duplex(COPY_BUFFER);
        let (stdin_rx, stdin) = if params.stdin {
            let (r, w) = tokio::io::simplex(COPY_BUFFER);
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let (stdout, mut stdout_tx) = if params.stdout {
            let (r, w) = pipe();
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let (stderr, mut stderr_tx) = if params.stderr {
            let (r, w) = pipe();
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let (status_tx, status) = tokio::sync::oneshot::channel();
        let (ended_tx, mut ended) = tokio::sync::oneshot::channel::<()>();
        let receiver = tokio::spawn(async move {
            let mut status_tx = Some(status_tx);
            while let Some(Ok(message)) = stream.next().await {
                let Message::Binary(data) = message else {
                    continue;
                };
                // A message of the channel byte alone opens each channel: nothing to pass on.
                let (Some(&channel), Some(body)) = (data.first(), data.get(1..)) else {
                    continue;
                };
                if body.is_empty() {
                    continue;
                }
                let to = match channel {
                    STDOUT => stdout_tx.as_mut(),
                    STDERR => stderr_tx.as_mut(),
                    STATUS => {
                        if let (Ok(s), Some(tx)) = (serde_json::from_slice(body), status_tx.take())
                        {
                            let _ = tx.send(s);
                        }
                        break;
                    }
                    _ => None,
                };
                // Output nobody reads any more (a reader that stopped early) is dropped.
                if let Some(to) = to {
                    let _ = to.write_all(body).await;
                }
            }
            for mut w in [stdout_tx, stderr_tx].into_iter().flatten() {
                let _ = w.shutdown().await;
            }
            let _ = ended_tx.send(());
        });
        let sender = tokio::spawn(async move {
            let mut stdin_rx = stdin_rx;
            let mut buf = vec![0u8; STDIN_MESSAGE + 1];
            let mut ping =
                tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
            loop {
                let read = async {
                    match stdin_rx.as_mut() {
                        Some(r) => r.read(&mut buf[1..]).await,
                        None => std::future::pending().await,
                    }
                };
                let message = tokio::select! {
                    _ = &mut ended => break,
                    _ = ping.tick() => Message::Ping(Default::default()),
                    read = read => match read {
                        Ok(n) if n > 0 => {
                            buf[0] = STDIN;
                            Message::binary(buf[..=n].to_vec())
                        }
                        // The end of stdin (or a broken pipe from our side): the command's
                        // stdin ends; without `v5`, only by closing the whole connection.
                        _ => {
                            stdin_rx = None;
                            if !closes_stdin {
                                let _ = sink.close().await;
                                break;
                            }
                            Message::binary(vec![CLOSE, STDIN])
                        }
                    },
                };
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        Ok(Exec {
            stdin,
            stdout,
            stderr,
            status: Some(status),
            tasks: [receiver, sender],
        })
    }

    /// The command's stdin, once.
    pub(crate) fn stdin(&mut self) -> Option<WriteHalf<SimplexStream>> {
        self.stdin.take()
    }

    /// The command's stdout, once.
    pub(crate) fn stdout(&mut self) -> Option<DuplexStream> {
        self.stdout.take()
    }

    /// The command's stderr, once.
    pub(crate) fn stderr(&mut self) -> Option<DuplexStream> {
        self.stderr.take()
    }

    /// The status the command ended with, once; `None` when the connection ended without one.
    pub(crate) fn take_status(
        &mut self,
    ) -> Option<impl std::future::Future<Output = Option<Status>> + Send + 'static> {
        self.status.take().map(|rx| rx.map(Result::ok))
    }
}

impl Drop for Exec {
    /// Closes the connection: a command still running sees its stdin end, as when a client
    /// leaves (no exec can be killed).
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
