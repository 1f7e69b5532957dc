//! Exports and imports of bulk data (capabilities [`Export`](crate::Capability::Export) and
//! [`Import`](crate::Capability::Import)).
//!
//! Bulk bytes never enter the blueprint: the host runs a command and pipes its stdout into an
//! export stream (or an import stream into its stdin), and hands back a small [`Transfer`].
//! [`Export::finish`] seals the stream into an [`Artifact`] for the restore point; the
//! restore opens it again with [`Import::open`].
//!
//! ```no_run
//! use cairn_sdk::data::{Export, Import};
//! use cairn_sdk::exec::Command;
//! use cairn_sdk::{Artifact, Context};
//!
//! fn backup() -> cairn_sdk::Result<Artifact> {
//!     let export = Export::open("dump")?;
//!     export.pipe_from(&Command::new(["pg_dump", "-Fc", "shop"]))?.ok()?;
//!     export.finish()
//! }
//!
//! fn restore(ctx: &Context) -> cairn_sdk::Result<()> {
//!     let import = Import::open(ctx.artifact("dump")?)?;
//!     import.pipe_into(&Command::new(["pg_restore", "-d", "shop"]))?.ok()?;
//!     Ok(())
//! }
//! ```

use std::borrow::Cow;
use std::cell::Cell;
use std::io;

use crate::exec::{Command, exit_error};
use crate::wit::bindings::cairn::blueprint::data as wit;
use crate::wit::{faked, live, types};
use crate::{Artifact, Result};

/// The outcome of a pipe between a command and a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transfer {
    /// Bytes that crossed the pipe.
    pub bytes: u64,
    /// The command's exit status; a non-zero status is reported, not raised.
    pub exit_code: i32,
    /// The command's stderr, capped by the host.
    pub stderr: Vec<u8>,
    /// Whether stderr was cut at the cap.
    pub stderr_truncated: bool,
    program: String,
    /// For an import piped into the command: the bytes of the import that were left to cross,
    /// when the export's reference says how large it is.
    input: Option<u64>,
    /// Whether [`ok`](Self::ok) accepts an import left partly unread.
    unread_allowed: bool,
}

impl Transfer {
    fn new(command: &Command, t: wit::Transfer) -> Self {
        Self {
            bytes: t.bytes,
            exit_code: t.exit_code,
            stderr: t.stderr,
            stderr_truncated: t.stderr_truncated,
            program: command.argv().first().cloned().unwrap_or_default(),
            input: None,
            unread_allowed: false,
        }
    }

    /// Whether the command exited with 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// For an import piped into the command: the bytes of the import it never took, because
    /// it exited (or closed its stdin) before the end. Zero for an export, and for an import
    /// read to its end. A command can also leave unread up to what the pipe between it and
    /// the host buffers (64 KiB, more on Kubernetes), which this cannot see.
    pub fn unread(&self) -> u64 {
        self.input.map_or(0, |n| n.saturating_sub(self.bytes))
    }

    /// The same transfer, with whatever the command left of an import unread accepted by
    /// [`ok`](Self::ok): for a command known to stop before the end of its input, such as one
    /// that ignores padding after an end marker.
    #[must_use]
    pub fn allow_unread(mut self) -> Self {
        self.unread_allowed = true;
        self
    }

    /// Itself when the command exited with 0 and took all of an import piped into it;
    /// otherwise [`Error::Failed`](crate::Error::Failed) naming the program and the exit
    /// status with the end of stderr, or how much of the import it left unread. A restore
    /// command that exits 0 halfway through its input has restored only part of it.
    pub fn ok(self) -> Result<Self> {
        if !self.success() {
            return Err(exit_error(
                &format!("`{}`", self.program),
                self.exit_code,
                &self.stderr,
            ));
        }
        match self.unread() {
            0 => Ok(self),
            _ if self.unread_allowed => Ok(self),
            unread => Err(crate::Error::failed(format!(
                "`{}` exited with 0 but left {unread} of the import's last {} bytes unread: it \
                 stopped before the end of its input, so it acted on part of it (if the \
                 command is known to ignore the end of its input, call `allow_unread()` \
                 before `ok()`)",
                self.program,
                self.input.unwrap_or_default()
            ))),
        }
    }

    /// Stderr as text (invalid UTF-8 replaced).
    pub fn stderr_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }
}

/// A stream being written to the export repository. Dropped without [`finish`](Self::finish),
/// it is discarded and never becomes part of a restore point.
#[derive(Debug)]
pub struct Export {
    /// The host's stream; `None` under a fake host, which numbers it `fake`.
    pub(crate) stream: Option<wit::ExportStream>,
    fake: u32,
    name: String,
}

impl Export {
    /// Opens a new export named `name` (unique within the action), untagged: the host still
    /// tags it with its own `action`, `namespace`, `workload`, `blueprint` (its name) and
    /// `blueprint-digest`.
    pub fn open(name: &str) -> Result<Self> {
        Self::open_tagged(name, std::iter::empty::<(String, String)>())
    }

    /// Opens a new export named `name` (unique within the action), tagged with what a user
    /// would filter restore points by: each tag becomes `key=value` on the repository
    /// snapshot, found with `cairn repo snapshots --tag key=value`.
    ///
    /// At most 16 tags; a key is `[a-z0-9][a-z0-9._-]{0,62}`, given once, and not one the
    /// host sets (`action`, `namespace`, `workload`, `blueprint`, `blueprint-digest`); a value is up to 256
    /// bytes of printable text without `=` or `,`. Otherwise
    /// [`Error::Invalid`](crate::Error::Invalid) names the tag. A name or tag holding a secret
    /// of the run is refused too: both are kept in the catalog and the repository's listing.
    ///
    /// ```no_run
    /// use cairn_sdk::data::Export;
    ///
    /// let export = Export::open_tagged("dump", [("app", "postgres"), ("database", "shop")])?;
    /// # Ok::<(), cairn_sdk::Error>(())
    /// ```
    pub fn open_tagged<K, V>(name: &str, tags: impl IntoIterator<Item = (K, V)>) -> Result<Self>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let tags: Vec<(String, String)> = tags
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        faked(
            "data.open-export",
            || name.to_owned(),
            || wit::open_export(name, &tags).map(|s| (Some(s), 0)),
            |f| f.open_export(name, &tags).map(|n| (None, n)),
        )
        .map(|(stream, fake)| Self {
            stream,
            fake,
            name: name.to_owned(),
        })
    }

    /// Runs `command` and pipes its stdout into the stream on the host side.
    ///
    /// When the command exits non-zero after writing, its output may be cut short: the stream
    /// then takes no more data ([`Error::Invalid`](crate::Error::Invalid) from a later
    /// `pipe_from` or [`write`](Self::write)), so a retry cannot seal a cut dump followed by a
    /// whole one. [`finish`](Self::finish) it as it is, or drop it and open a new one (under
    /// another name). A pipe that fails outright (its time ran out, the cluster failed) breaks
    /// the stream: everything but dropping it is refused.
    pub fn pipe_from(&self, command: &Command) -> Result<Transfer> {
        let c = command.to_wit()?;
        faked(
            "data.pipe-from",
            || format!("{} {}", self.name, command.shown()),
            || live(self.stream.as_ref())?.pipe_from(&c),
            |f| f.pipe_from(self.fake, command),
        )
        .map(|t| Transfer::new(command, t))
        .map_err(|e| e.context(format_args!("export `{}`", self.name)))
    }

    /// Appends a few bytes written by the blueprint itself (bounded by the host).
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        faked(
            "data.write",
            || format!("{} {} bytes", self.name, bytes.len()),
            || live(self.stream.as_ref())?.write(bytes),
            |f| f.write(self.fake, bytes),
        )
        .map_err(|e| e.context(format_args!("export `{}`", self.name)))
    }

    /// Seals the stream; the artifact's [reference](Artifact::reference) names it for
    /// [`Import::open`] and [`delete`]. Add the blueprint's own values with
    /// [`Artifact::value`]: they never change the reference.
    pub fn finish(self) -> Result<Artifact> {
        faked(
            "data.finish",
            || self.name.clone(),
            || live(self.stream.as_ref())?.finish(),
            |f| f.finish(self.fake),
        )
        .map(Into::into)
        .map_err(|e| e.context(format_args!("export `{}`", self.name)))
    }
}

impl io::Write for Export {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Export::write(self, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `value` can be an export tag's value for [`Export::open_tagged`]: at most 256 bytes
/// of printable text without `=` or `,`. For tagging with names that come from elsewhere (a
/// database name may hold anything), so a backup is not refused over a tag.
pub use cairn_contract::is_tag_value;
pub(crate) use cairn_contract::{check_tags, name_problem};

/// A stream being read back from the export repository.
#[derive(Debug)]
pub struct Import {
    /// The host's stream; `None` under a fake host, which numbers it `fake`.
    pub(crate) stream: Option<wit::ImportStream>,
    fake: u32,
    name: String,
    /// The bytes not yet read, when the export's reference gives its size (`bytes`).
    left: Cell<Option<u64>>,
}

impl Import {
    /// Opens the export that `artifact` (from [`Export::finish`]) names.
    pub fn open(artifact: &Artifact) -> Result<Self> {
        let source = types::Artifact::from(artifact);
        faked(
            "data.open-import",
            || artifact.name().to_owned(),
            || wit::open_import(&source).map(|s| (Some(s), 0)),
            |f| f.open_import(&source).map(|n| (None, n)),
        )
        .map(|(stream, fake)| Self {
            stream,
            fake,
            name: artifact.name().to_owned(),
            left: Cell::new(
                artifact
                    .reference()
                    .find(|(k, _)| *k == "bytes")
                    .and_then(|(_, v)| v.parse().ok()),
            ),
        })
    }

    /// The transfer of the rest of the stream into a command: it is all read now.
    fn piped(&self, command: &Command, t: wit::Transfer) -> Transfer {
        Transfer {
            input: self.left.replace(Some(0)),
            ..Transfer::new(command, t)
        }
    }

    /// Runs `command` and pipes the rest of the stream into its stdin on the host side.
    pub fn pipe_into(&self, command: &Command) -> Result<Transfer> {
        let c = command.to_wit()?;
        faked(
            "data.pipe-into",
            || format!("{} {}", self.name, command.shown()),
            || live(self.stream.as_ref())?.pipe_into(&c),
            |f| f.pipe_into(self.fake, command, &[]),
        )
        .map(|t| self.piped(command, t))
        .map_err(|e| e.context(format_args!("import `{}`", self.name)))
    }

    /// As [`pipe_into`](Self::pipe_into), then writes `trailer` (at most 1 MiB) once the
    /// whole stream has crossed. When the stream cannot be read to its end (damage, the
    /// deadline), the command's stdin closes without it: a command that keeps its work only on
    /// the trailer keeps nothing of a cut-short import, even on Kubernetes, where the host
    /// cannot kill the command first.
    ///
    /// ```no_run
    /// # use cairn_sdk::{data::Import, exec::Command, Result};
    /// # fn restore(import: &Import) -> Result<()> {
    /// // psql leaves the transaction open at the end of its input, and the server rolls it
    /// // back, unless the trailer commits it.
    /// let psql = Command::new(["psql", "-v", "ON_ERROR_STOP=1", "-c", "BEGIN", "-f", "-", "shop"]);
    /// import.pipe_into_with_trailer(&psql, b"\nCOMMIT;\n")?.ok()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pipe_into_with_trailer(&self, command: &Command, trailer: &[u8]) -> Result<Transfer> {
        let c = command.to_wit()?;
        faked(
            "data.pipe-into-with-trailer",
            || format!("{} {}", self.name, command.shown()),
            || live(self.stream.as_ref())?.pipe_into_with_trailer(&c, trailer),
            |f| f.pipe_into(self.fake, command, trailer),
        )
        .map(|t| self.piped(command, t))
        .map_err(|e| e.context(format_args!("import `{}`", self.name)))
    }

    /// Reads up to `max` bytes into the blueprint (bounded by the host); empty at the end.
    pub fn read(&self, max: u32) -> Result<Vec<u8>> {
        faked(
            "data.read",
            || format!("{} {max}", self.name),
            || live(self.stream.as_ref())?.read(max),
            |f| f.read(self.fake, max),
        )
        .inspect(|bytes| {
            let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
            self.left
                .set(self.left.get().map(|n| n.saturating_sub(read)));
        })
        .map_err(|e| e.context(format_args!("import `{}`", self.name)))
    }
}

impl io::Read for Import {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let bytes = Import::read(self, max)?;
        // The host never returns more than asked; cut anyway rather than panic on a slice.
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(n)
    }
}

/// Removes the export `artifact` names (for the `delete` action). Needs
/// [`Export`](crate::Capability::Export).
pub fn delete(artifact: &Artifact) -> Result<()> {
    let source = types::Artifact::from(artifact);
    faked(
        "data.delete",
        || artifact.name().to_owned(),
        || wit::delete(&source),
        |f| f.delete(&source),
    )
    .map_err(|e| e.context(format_args!("deleting export `{}`", artifact.name())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn transfer(exit_code: i32) -> Transfer {
        Transfer::new(
            &Command::new(["pg_dump"]),
            wit::Transfer {
                bytes: 42,
                exit_code,
                stderr: b"disk full\n".to_vec(),
                stderr_truncated: false,
            },
        )
    }

    #[test]
    fn ok_checks_the_exit_status() {
        assert_eq!(transfer(0).ok().map(|t| t.bytes), Ok(42));
        assert_eq!(
            transfer(1).ok(),
            Err(Error::failed("`pg_dump` exited with 1: disk full"))
        );
        assert_eq!(transfer(1).stderr_str(), "disk full\n");
    }

    #[test]
    fn tag_values_follow_the_hosts_rule() {
        assert!(is_tag_value("shop floor (eu)"));
        assert!(is_tag_value(""));
        assert!(is_tag_value(&"v".repeat(256)));
        for bad in ["a=b", "a,b", "a\nb", &"v".repeat(257)] {
            assert!(!is_tag_value(bad), "{bad:?}");
        }
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn host_calls_fail_cleanly_off_wasm() {
        assert!(matches!(Export::open("dump"), Err(Error::Failed(_))));
        assert!(matches!(
            Export::open_tagged("dump", [("app", "postgres")]),
            Err(Error::Failed(_))
        ));
        assert!(matches!(
            Import::open(&Artifact::new("dump")),
            Err(Error::Failed(_))
        ));
        assert!(
            matches!(delete(&Artifact::new("dump")), Err(Error::Failed(m)) if m.contains("`dump`"))
        );
    }
}
