//! Shared fixtures: building guest components, a local cluster in a temporary directory, and
//! requests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cairn_cluster::LocalCluster;
use cairn_engine::{
    AuditLog, Blueprint, Capability, DirExports, Engine, EngineConfig, Event, EventKind, EventSink,
    HostContext, Limits, RunReport, RunRequest,
};

/// The guests under `tests/guests/`, built together once per test binary.
const GUESTS: &[&str] = &[
    "misbehave",
    "future-wit",
    "no-describe",
    "undeclared",
    "future-runtime",
    "slow-describe",
];

/// The path of the built guest `name` (`misbehave`, `future-wit`, `no-describe`,
/// `undeclared`, `future-runtime`, `slow-describe`). The first
/// call builds every guest with cargo for `wasm32-wasip2`; a failed build fails the test.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let workspace = manifest_dir.join("../..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"))
            .join("guests");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&workspace)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
            ])
            .arg(&target);
        for g in GUESTS {
            cmd.args(["-p", &format!("cairn-engine-guest-{g}")]);
        }
        let status = cmd
            .status()
            .expect("running cargo to build the test guests");
        assert!(
            status.success(),
            "building the test guests failed ({status}); see the cargo output above"
        );
        target.join("wasm32-wasip2/release")
    });
    let path = dir.join(format!(
        "cairn_engine_guest_{}.wasm",
        name.replace('-', "_")
    ));
    assert!(
        path.exists(),
        "guest {name} was not built at {}",
        path.display()
    );
    path
}

/// One engine for the whole test binary, as in a real host: tests run concurrently on it.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(EngineConfig::default()).expect("creating the engine"))
}

/// The misbehave blueprint, loaded into the shared engine.
pub async fn misbehave() -> Blueprint {
    engine()
        .load_file(&guest("misbehave"))
        .await
        .expect("loading the misbehave guest")
}

const INVENTORY: &str = r#"
namespaces:
  default:
    workloads:
      hello:
        replicas: 1
        allow: [echo, cat, sh, sleep]
        volumes:
          data: ./data
      other:
        allow: [echo]
  elsewhere:
    workloads:
      db:
        allow: [echo]
"#;

/// A local cluster, an export directory and an audit log in a temporary directory, with the
/// events of every run recorded.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub host: HostContext,
    pub events: Arc<Mutex<Vec<Event>>>,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path();
        std::fs::create_dir_all(root.join("data")).expect("the volume directory");
        std::fs::write(root.join("data/file.txt"), "volume contents\n").expect("a volume file");
        std::fs::write(root.join("data.txt"), "payload\n").expect("the data file");
        std::fs::write(root.join("inventory.yaml"), INVENTORY).expect("the inventory");
        let cluster =
            LocalCluster::from_inventory(&root.join("inventory.yaml"), &root.join("state"))
                .expect("loading the inventory");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let events = events.clone();
            EventSink::new(move |e| events.lock().expect("events lock").push(e.clone()))
        };
        let host = HostContext {
            cluster: Arc::new(cluster),
            exports: Arc::new(
                DirExports::new(root.join("exports")).expect("the exports directory"),
            ),
            audit: Arc::new(AuditLog::open(root.join("audit.jsonl")).expect("the audit log")),
            events: sink,
            catalog: None,
        };
        Fixture { dir, host, events }
    }

    /// From now on, runs go to a fake Kubernetes API server, kept alive by what this returns,
    /// holding `default/hello` as a Deployment whose pod runs commands here, in this fixture's
    /// directory.
    pub async fn on_kubernetes(&mut self) -> cairn_kube_fake::FakeApi {
        let api = cairn_kube_fake::FakeApi::start().await;
        api.namespace("default");
        let dir = self.dir.path().to_str().expect("a UTF-8 directory");
        api.put(
            "/apis/apps/v1/namespaces/default/deployments",
            cairn_kube_fake::workload(
                "hello",
                1,
                serde_json::json!({
                    "containers": [{ "name": "hello", "image": "hello", "workingDir": dir }],
                }),
            ),
        );
        self.host.cluster = Arc::new(cairn_cluster::KubeCluster::new(api.client()));
        api
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Log lines of every run so far.
    pub fn logs(&self) -> Vec<String> {
        self.events
            .lock()
            .expect("events lock")
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Log { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    pub async fn run(&self, request: RunRequest) -> RunReport {
        let blueprint = misbehave().await;
        tokio::time::timeout(
            Duration::from_secs(60),
            engine().run(&blueprint, &self.host, request),
        )
        .await
        .expect("the run finished within a minute")
        .expect("the run started")
    }
}

/// A request for `action` on `default/hello` with every capability granted, the required
/// `label` parameter, and a 20 s deadline.
pub fn request(action: &str) -> RunRequest {
    RunRequest {
        action: action.into(),
        namespace: "default".into(),
        workload: Some("hello".into()),
        params: vec![("label".into(), "test".into())],
        grants: Capability::ALL.into_iter().collect::<BTreeSet<_>>(),
        limits: Limits {
            deadline: Duration::from_secs(20),
            ..Limits::default()
        },
        ..RunRequest::default()
    }
}

/// Runs `hello` on the shared engine `n` times in a row while something else runs, and checks
/// each succeeded: the host keeps serving other actions.
pub async fn bystander(n: usize) {
    let fixture = Fixture::new();
    for _ in 0..n {
        let report = fixture.run(request("hello")).await;
        assert!(report.ok, "a concurrent hello failed: {:?}", report.error);
        assert_eq!(report.outputs.get("greeting"), Some("hello"));
    }
}

/// Runs a misbehaving request while `hello` runs alongside on the same engine; returns the
/// misbehaving run's report.
pub async fn misbehave_alongside(fixture: &Fixture, request: RunRequest) -> RunReport {
    let (report, ()) = tokio::join!(fixture.run(request), bystander(3));
    report
}
