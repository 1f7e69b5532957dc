//! Extended attributes of tree nodes (Linux): POSIX ACLs (`system.posix_acl_*`), SELinux
//! labels and file capabilities (`security.*`), and users' own (`user.*`). Names are kept as
//! they are, values as hex.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Name → value (hex).
pub(crate) type Xattrs = BTreeMap<String, String>;

/// The extended attributes of `path` itself (a symlink's own, not its target's). A filesystem
/// without them gives none, and an attribute removed between being listed and read is left
/// out, as is one whose name is not UTF-8 (with a warning).
#[cfg(target_os = "linux")]
pub(crate) fn read(path: &Path) -> std::io::Result<Xattrs> {
    use rustix::io::Errno;
    let mut out = Xattrs::new();
    // Most files have none: one call with a buffer on the stack says so.
    let mut small = [0u8; 512];
    let mut large = Vec::new();
    let names: &[u8] = match rustix::fs::llistxattr(path, &mut small[..]) {
        Ok(n) => &small[..n],
        Err(Errno::NOTSUP) => return Ok(out),
        Err(Errno::RANGE) => loop {
            large.resize(rustix::fs::llistxattr_query(path)?, 0);
            match rustix::fs::llistxattr(path, &mut large[..]) {
                Ok(n) => break &large[..n],
                // Grown meanwhile.
                Err(Errno::RANGE) => {}
                Err(e) => return Err(e.into()),
            }
        },
        Err(e) => return Err(e.into()),
    };
    // Allocated for the first attribute: most files have none.
    let mut value = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if value.is_empty() {
            value.resize(1024, 0);
        }
        let Ok(text) = std::str::from_utf8(name) else {
            tracing::warn!(path = %path.display(), "an extended attribute whose name is not UTF-8 is left out");
            continue;
        };
        let n = loop {
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(n) => break Some(n),
                Err(Errno::NODATA) => break None,
                Err(Errno::RANGE) => value.resize(rustix::fs::lgetxattr_query(path, name)?, 0),
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(n) = n {
            out.insert(text.to_string(), hex::encode(&value[..n]));
        }
    }
    Ok(out)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn read(_: &Path) -> std::io::Result<Xattrs> {
    Ok(Xattrs::new())
}

/// Sets restored nodes' extended attributes. What the system refuses — a namespace that
/// needs a privilege the restore lacks (`security.*`, `trusted.*` without root), or a
/// target filesystem without extended attributes or with less room for them than the source
/// had — is warned about once for each cause and left out; any other failure fails the
/// restore.
#[derive(Debug, Default)]
pub(crate) struct Setter {
    refused: AtomicBool,
    unsupported: AtomicBool,
    too_large: AtomicBool,
}

impl Setter {
    /// Sets `attrs` on `path` itself (a symlink's own).
    pub(crate) fn set(&self, path: &Path, attrs: &Xattrs) -> Result<()> {
        self.set_with(path, attrs, |name, value| set(path, name, value))
    }

    /// Sets `attrs` on the open file `f`, whose path is `path`.
    pub(crate) fn set_file(&self, f: &std::fs::File, path: &Path, attrs: &Xattrs) -> Result<()> {
        self.set_with(path, attrs, |name, value| set_file(f, name, value))
    }

    fn set_with(
        &self,
        path: &Path,
        attrs: &Xattrs,
        set: impl Fn(&str, &[u8]) -> std::io::Result<()>,
    ) -> Result<()> {
        for (name, value) in attrs {
            let value = hex::decode(value).map_err(|_| {
                Error::corrupt("snapshot content", format!("bad extended attribute {name}"))
            })?;
            if let Err(e) = set(name, &value) {
                let (seen, why) = match e.kind() {
                    std::io::ErrorKind::PermissionDenied => (
                        &self.refused,
                        "needs a privilege this restore lacks (root, for security.* and \
                         trusted.*)",
                    ),
                    std::io::ErrorKind::Unsupported => (
                        &self.unsupported,
                        "is not supported by the target filesystem",
                    ),
                    // ext4 holds a file's attributes in one block, XFS up to 64 KiB each.
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::ArgumentListTooLong => (
                        &self.too_large,
                        "does not fit the target filesystem's room for them",
                    ),
                    _ => return Err(Error::io("set an extended attribute of", path, e)),
                };
                if !seen.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %path.display(),
                        attribute = %name,
                        "an extended attribute {why}: left out, here and wherever else this recurs"
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn set(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    unsupported(rustix::fs::lsetxattr(
        path,
        name,
        value,
        rustix::fs::XattrFlags::empty(),
    ))
}

#[cfg(target_os = "linux")]
fn set_file(f: &std::fs::File, name: &str, value: &[u8]) -> std::io::Result<()> {
    unsupported(rustix::fs::fsetxattr(
        f,
        name,
        value,
        rustix::fs::XattrFlags::empty(),
    ))
}

/// std leaves `ENOTSUP` uncategorised.
#[cfg(target_os = "linux")]
fn unsupported(r: rustix::io::Result<()>) -> std::io::Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOTSUP) => Err(std::io::ErrorKind::Unsupported.into()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn set(_: &Path, _: &str, _: &[u8]) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(not(target_os = "linux"))]
fn set_file(_: &std::fs::File, _: &str, _: &[u8]) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_and_set_on_the_node_itself() {
        let d = tempfile::tempdir().expect("dir");
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, b"x").expect("file");
        std::fs::write(&b, b"y").expect("file");
        assert_eq!(read(&a).expect("read"), Xattrs::new());
        let mut attrs = Xattrs::new();
        // Larger than the first buffers, to take the paths that grow them.
        attrs.insert("user.big".into(), hex::encode(vec![7u8; 2_000]));
        for i in 0..20 {
            attrs.insert(
                format!("user.name-long-enough-to-fill-a-list-{i:02}"),
                "00ff".into(),
            );
        }
        Setter::default().set(&a, &attrs).expect("set");
        assert_eq!(read(&a).expect("read"), attrs);
        // A symlink's own attributes, not its target's.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&b, &link).expect("symlink");
        assert_eq!(read(&link).expect("read"), Xattrs::new());
        // A missing file is NotFound, for the walk to treat as vanished.
        let gone = read(&d.path().join("gone")).expect_err("gone");
        assert_eq!(gone.kind(), std::io::ErrorKind::NotFound);
    }
}
