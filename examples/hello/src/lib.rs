//! Run with
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 -p hello
//! cairn run target/wasm32-wasip2/release/hello.wasm --action backup \
//!     --target local:examples/hello/inventory.yaml --workload hello --grant exec
//! ```
//!
//! and expect, logs and progress on stderr and the outputs on stdout:
//!
//! ```text
//! [backup] progress: 0% greeting hello
//! [backup] info: hello-0 says: hello, world
//! [backup] progress: 100% greeted
//! artifact greeting
//!   pod = hello-0
//!   exit-code = 0
//!   stdout = hello, world
//! greeting = hello
//! ```
//!
//! `--param greeting=hi` changes the greeting. `--action restore --from REPORT.json` (the
//! `--output json` report of a backup) echoes the recorded greeting back in the workload.
//!
//! The smallest useful blueprint: it execs a command in the target workload, logs what the
//! command printed, reports progress and records the result in an artifact. It declares only
//! the capability it uses, `exec`.

use cairn_sdk::exec::Command;
use cairn_sdk::lifecycle::{BACKUP, RESTORE};
use cairn_sdk::{Artifact, Blueprint, Capability, Context, Description, Error, Outputs, Param};
use cairn_sdk::{Progress, Result, info, progress};

/// The artifact a backup records and a restore reads.
const ARTIFACT: &str = "greeting";

struct Hello;

impl Blueprint for Hello {
    fn describe() -> Description {
        Description::new("hello", env!("CARGO_PKG_VERSION"))
            .describe("Greets from inside a workload and records the answer")
            .action(
                BACKUP,
                "Echo a greeting in the workload and record what it said",
            )
            .action(RESTORE, "Echo the greeting a backup recorded")
            .param(
                Param::text("greeting")
                    .default("hello")
                    .describe("What the workload says"),
            )
            .capability(Capability::Exec)
    }

    fn run(action: &str, ctx: &Context) -> Result<Outputs> {
        match action {
            BACKUP => backup(ctx),
            RESTORE => restore(ctx),
            other => Err(Error::unknown_action(other)),
        }
    }
}

fn backup(ctx: &Context) -> Result<Outputs> {
    let greeting = ctx.text("greeting")?;
    progress(Progress::percent(0.0).message(format!(
        "greeting {}",
        ctx.workload().unwrap_or("the target")
    )));

    let output = Command::new(["echo"])
        .arg(format!("{greeting}, world"))
        .run()?
        .ok()?;
    let said = output.stdout_str().trim().to_owned();
    info!("{} says: {said}", output.pod);
    progress(Progress::percent(100.0).message("greeted"));

    // The artifact says what the workload printed; the run's own value (kept in the restore
    // point beside it) says what it was asked to print.
    Ok(Outputs::new()
        .artifact(
            Artifact::new(ARTIFACT)
                .value("pod", &output.pod)
                .value("exit-code", output.exit_code)
                .value("stdout", &said),
        )
        .value("greeting", greeting))
}

fn restore(ctx: &Context) -> Result<Outputs> {
    let recorded = ctx.artifact(ARTIFACT)?;
    let said = recorded.require("stdout")?;
    let output = Command::new(["echo", said]).run()?.ok()?;
    info!("{} says again: {}", output.pod, output.stdout_str().trim());
    if let Ok(greeting) = ctx.value("greeting") {
        info!("the restore point was greeted with {greeting:?}");
    }
    Ok(Outputs::new())
}

cairn_sdk::export!(Hello);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::testing::{FakeHost, Reply};

    #[test]
    fn declares_only_exec() {
        let d = Hello::describe();
        assert_eq!(d.name(), "hello");
        assert!(d.has_action(BACKUP) && d.has_action(RESTORE));
        assert_eq!(d.capabilities(), [Capability::Exec]);
    }

    #[test]
    fn refuses_unknown_actions() {
        let ctx = Context::builder("frobnicate", "default").build();
        assert!(matches!(
            Hello::run("frobnicate", &ctx),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn a_backup_records_what_the_workload_said_and_a_restore_says_it_again() {
        let host = FakeHost::new()
            .on_exec(|command, _stdin| Reply::ok(format!("{}\n", command.argv()[1..].join(" "))));
        let ctx = Context::builder(BACKUP, "default")
            .workload("hello")
            .defaults(&Hello::describe())
            .param("greeting", "hi")
            .build();
        let outputs = host.run::<Hello>(BACKUP, &ctx).expect("the backup");
        let recorded = outputs.get_artifact(ARTIFACT).expect("the artifact");
        assert_eq!(recorded.get("stdout"), Some("hi, world"));
        assert_eq!(recorded.get("pod"), Some("hello-0"));
        assert_eq!(outputs.get("greeting"), Some("hi"));

        let ctx = Context::builder(RESTORE, "default")
            .workload("hello")
            .restore_artifact(recorded.clone())
            .restore_value("greeting", "hi")
            .build();
        host.run::<Hello>(RESTORE, &ctx).expect("the restore");
        assert_eq!(
            host.calls(),
            ["exec.run echo hi, world", "exec.run echo hi, world"]
        );
        assert!(
            host.logs()
                .iter()
                .any(|(_, line)| line == "the restore point was greeted with \"hi\"")
        );
    }

    #[test]
    fn a_failing_command_fails_the_backup_with_its_stderr() {
        let host = FakeHost::new().on_exec(|_, _| Reply::exit(1, "echo: write error"));
        let ctx = Context::builder(BACKUP, "default")
            .workload("hello")
            .defaults(&Hello::describe())
            .build();
        let e = host.run::<Hello>(BACKUP, &ctx).expect_err("a failed echo");
        assert!(e.message().contains("write error"), "{e}");
    }

    #[test]
    fn restore_needs_the_recorded_greeting() {
        let ctx = Context::builder(RESTORE, "default")
            .workload("hello")
            .build();
        assert!(matches!(Hello::run(RESTORE, &ctx), Err(Error::NotFound(_))));
    }
}
