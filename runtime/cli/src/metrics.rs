//! Prometheus metrics of `cairn serve --metrics ADDR`: `GET /metrics` in the text exposition
//! format.
//!
//! | metric | type | labels | what |
//! | --- | --- | --- | --- |
//! | `cairn_policy_runs_total` | counter | `policy`, `result` | runs since this serve started, `succeeded` or `failed` |
//! | `cairn_policy_last_run_timestamp_seconds` | gauge | `policy` | when its last run started |
//! | `cairn_policy_last_run_succeeded` | gauge | `policy` | 1 when every workload's backup succeeded |
//! | `cairn_policy_last_run_errors` | gauge | `policy` | errors of its last run, retention's too (a run can succeed with some) |
//! | `cairn_policy_last_success_timestamp_seconds` | gauge | `policy` | when its newest restore point was made |
//! | `cairn_policy_next_run_timestamp_seconds` | gauge | `policy` | when it is due (absent while paused) |
//! | `cairn_policy_restore_points` | gauge | `policy` | its restore points in the catalog |
//! | `cairn_policy_unreadable` | gauge | `policy` | 1 when its record does not read (a newer Cairn's, say): serve does not run it |
//! | `cairn_dr_enabled` | gauge | | 1 while Cairn's own DR is enabled |
//! | `cairn_dr_last_run_timestamp_seconds` | gauge | | when the last DR point was made |
//! | `cairn_dr_next_run_timestamp_seconds` | gauge | | when DR is due |
//!
//! The gauges are read from the catalog after each pass of `serve` (at least once a minute), so
//! a scrape never waits for the catalog; the counters count what this process ran. An alert on
//! `time() - cairn_policy_last_success_timestamp_seconds` catches a policy that fails or stops
//! running, whatever the cause (an unreadable policy keeps that series, from its restore
//! points, and `cairn_policy_unreadable == 1` says why at once);
//! `cairn_policy_last_run_errors > 0` a run that failed in part (one workload of several, or
//! retention), which the newest point of the others hides.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What one pass of `serve` learnt of a policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct PolicyGauges {
    pub last_run: Option<(Timestamp, bool)>,
    /// The errors of the last run (retention's too: a run succeeds with some).
    pub last_run_errors: Option<usize>,
    pub last_success: Option<Timestamp>,
    pub next_run: Option<Timestamp>,
    pub restore_points: usize,
    /// Its record does not read: serve does not run it.
    pub unreadable: bool,
}

/// When DR last ran and runs next, when it is enabled.
#[derive(Debug, Clone, Default)]
pub(crate) struct DrGauges {
    pub last_run: Option<Timestamp>,
    pub next_run: Timestamp,
}

#[derive(Debug, Default)]
struct State {
    runs: BTreeMap<(String, &'static str), u64>,
    policies: BTreeMap<String, PolicyGauges>,
    dr: Option<DrGauges>,
}

/// The metrics one `serve` keeps, shared with its HTTP listener.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    state: Arc<Mutex<State>>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A panic while holding the lock cannot leave the maps half-written in a way that
        // matters for metrics; keep serving them.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// Counts a run of `policy`.
    pub(crate) fn ran(&self, policy: &str, succeeded: bool) {
        let result = if succeeded { "succeeded" } else { "failed" };
        self.with(|s| *s.runs.entry((policy.to_owned(), result)).or_default() += 1);
    }

    /// Replaces the gauges with what the catalog says now.
    pub(crate) fn refresh(&self, policies: BTreeMap<String, PolicyGauges>, dr: Option<DrGauges>) {
        self.with(|s| {
            // Counters start at 0 for every policy, so `rate()` and `increase()` see the first
            // run rather than a series that appears with it.
            for policy in policies.keys() {
                for result in ["succeeded", "failed"] {
                    s.runs.entry((policy.clone(), result)).or_default();
                }
            }
            s.policies = policies;
            s.dr = dr;
        });
    }

    /// The exposition text.
    pub(crate) fn render(&self) -> String {
        self.with(|s| {
            let mut out = String::new();
            family(
                &mut out,
                "cairn_policy_runs_total",
                "counter",
                "Policy runs since this serve started, by result.",
            );
            for ((policy, result), n) in &s.runs {
                let _ = writeln!(
                    out,
                    "cairn_policy_runs_total{{policy=\"{}\",result=\"{result}\"}} {n}",
                    escape(policy)
                );
            }
            let gauges: [Gauge; 7] = [
                (
                    "cairn_policy_last_run_timestamp_seconds",
                    "When the policy's last run started.",
                    |g| g.last_run.map(|(t, _)| secs_of(t)),
                ),
                (
                    "cairn_policy_last_run_succeeded",
                    "1 when every workload's backup in the last run succeeded.",
                    |g| g.last_run.map(|(_, ok)| f64::from(u8::from(ok))),
                ),
                (
                    "cairn_policy_last_run_errors",
                    "Errors of the policy's last run, retention's too (a run can succeed with some).",
                    |g| g.last_run_errors.map(|n| n as f64),
                ),
                (
                    "cairn_policy_last_success_timestamp_seconds",
                    "When the policy's newest restore point was made.",
                    |g| g.last_success.map(secs_of),
                ),
                (
                    "cairn_policy_next_run_timestamp_seconds",
                    "When the policy is due (absent while paused).",
                    |g| g.next_run.map(secs_of),
                ),
                (
                    "cairn_policy_restore_points",
                    "The policy's restore points in the catalog.",
                    |g| Some(g.restore_points as f64),
                ),
                (
                    "cairn_policy_unreadable",
                    "1 when the policy's record does not read (serve does not run it).",
                    |g| Some(f64::from(u8::from(g.unreadable))),
                ),
            ];
            for (name, help, value) in gauges {
                family(&mut out, name, "gauge", help);
                for (policy, g) in &s.policies {
                    if let Some(v) = value(g) {
                        let _ = writeln!(out, "{name}{{policy=\"{}\"}} {v}", escape(policy));
                    }
                }
            }
            family(
                &mut out,
                "cairn_dr_enabled",
                "gauge",
                "1 while Cairn's own DR is enabled.",
            );
            let _ = writeln!(out, "cairn_dr_enabled {}", u8::from(s.dr.is_some()));
            if let Some(dr) = &s.dr {
                if let Some(last) = dr.last_run {
                    family(
                        &mut out,
                        "cairn_dr_last_run_timestamp_seconds",
                        "gauge",
                        "When the last DR point was made.",
                    );
                    let _ = writeln!(out, "cairn_dr_last_run_timestamp_seconds {}", secs_of(last));
                }
                family(
                    &mut out,
                    "cairn_dr_next_run_timestamp_seconds",
                    "gauge",
                    "When DR is due.",
                );
                let _ = writeln!(
                    out,
                    "cairn_dr_next_run_timestamp_seconds {}",
                    secs_of(dr.next_run)
                );
            }
            out
        })
    }

    /// Serves `GET /metrics` on `addr` until the process ends; returns the address bound (for
    /// port 0).
    pub(crate) async fn listen(&self, addr: &str) -> anyhow::Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics {addr}: cannot listen there"))?;
        let bound = listener.local_addr()?;
        let metrics = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    // A client that sends nothing is dropped, not waited for.
                    let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &metrics))
                        .await;
                });
            }
        });
        Ok(bound)
    }
}

/// A per-policy gauge: its name, its help, and its value for one policy (none to leave the
/// policy out).
type Gauge = (&'static str, &'static str, fn(&PolicyGauges) -> Option<f64>);

fn secs_of(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the exposition format quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Reads one request (its head, at most 8 KiB) and answers it.
async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = std::str::from_utf8(line)
        .unwrap_or_default()
        .split_whitespace();
    let (method, path) = (parts.next(), parts.next());
    let (status, body) = match (method, path.map(|p| p.split('?').next().unwrap_or(p))) {
        (Some("GET"), Some("/metrics")) => ("200 OK", metrics.render()),
        (Some("GET"), _) => ("404 Not Found", "only /metrics is served here\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "only GET /metrics is served here\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_family_and_escapes_labels() {
        let m = Metrics::default();
        m.ran("orders", true);
        m.ran("orders", true);
        m.ran("we\"ird", false);
        let at: Timestamp = "2026-12-05T00:00:00Z".parse().expect("a time");
        let gauges = PolicyGauges {
            last_run: Some((at, true)),
            last_run_errors: Some(1),
            last_success: Some(at),
            next_run: None,
            restore_points: 3,
            unreadable: false,
        };
        let newer = PolicyGauges {
            unreadable: true,
            last_success: Some(at),
            ..PolicyGauges::default()
        };
        m.refresh(
            BTreeMap::from([("orders".to_owned(), gauges), ("newer".to_owned(), newer)]),
            None,
        );
        let text = m.render();
        for line in [
            "cairn_policy_runs_total{policy=\"orders\",result=\"succeeded\"} 2",
            "cairn_policy_runs_total{policy=\"we\\\"ird\",result=\"failed\"} 1",
            "cairn_policy_last_run_timestamp_seconds{policy=\"orders\"} 1796428800",
            "cairn_policy_last_run_succeeded{policy=\"orders\"} 1",
            "cairn_policy_last_run_errors{policy=\"orders\"} 1",
            "cairn_policy_restore_points{policy=\"orders\"} 3",
            "cairn_policy_unreadable{policy=\"orders\"} 0",
            // An unreadable policy keeps the series its staleness alert reads.
            "cairn_policy_unreadable{policy=\"newer\"} 1",
            "cairn_policy_last_success_timestamp_seconds{policy=\"newer\"} 1796428800",
            "cairn_dr_enabled 0",
            "# TYPE cairn_policy_runs_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("cairn_policy_next_run_timestamp_seconds{"),
            "{text}"
        );
    }
}
