//! Copying directory trees between `cap-std` handles without ever following a symlink.
//!
//! Everything here is blocking; callers run it on tokio's blocking pool.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use cap_std::fs::{Dir, File, OpenOptions};

/// Copies the contents of `src` into the (empty) directory `dst` and returns the bytes of the
/// regular files copied.
///
/// Directories and regular files are copied (file data by reflink where the filesystem can,
/// by `copy_file_range`/read-write otherwise) with their permission bits and modification
/// times; symlinks are recreated with the same target text and never followed, so a link to
/// `/etc` stays a link; other file types (sockets, fifos, devices) are skipped with a warning.
/// All access goes through `src` and `dst`, so nothing outside them is read or written.
///
/// Stops with [`io::ErrorKind::Interrupted`] at the next entry once `stop` is set.
pub(crate) fn copy_tree(src: &Dir, dst: &Dir, stop: &AtomicBool) -> io::Result<u64> {
    let mut bytes = 0u64;
    // Relative directory paths still to copy, opened through the roots on demand: an explicit
    // stack (no recursion depth limit) and at most a few open descriptors at a time.
    let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
    let mut dir_modes: Vec<(PathBuf, cap_std::fs::Permissions)> = Vec::new();
    while let Some(rel) = pending.pop() {
        let (from, to) = if rel.as_os_str().is_empty() {
            (src.try_clone()?, dst.try_clone()?)
        } else {
            (src.open_dir(&rel)?, dst.open_dir(&rel)?)
        };
        for entry in from.entries()? {
            if stop.load(Ordering::Acquire) {
                return Err(super::stopped());
            }
            let entry = entry?;
            let name: OsString = entry.file_name();
            let file_type = entry.file_type()?;
            if file_type.is_symlink() {
                let target = from.read_link_contents(&name)?;
                to.symlink_contents(&target, &name)?;
            } else if file_type.is_dir() {
                to.create_dir(&name)?;
                let meta = from.symlink_metadata(&name)?;
                dir_modes.push((rel.join(&name), meta.permissions()));
                pending.push(rel.join(&name));
            } else if file_type.is_file() {
                bytes += copy_file(&from, &to, Path::new(&name))?;
            } else {
                tracing::warn!(path = %rel.join(&name).display(), "skipping a special file (not a regular file, directory or symlink)");
            }
        }
    }
    // Permissions last, so a read-only directory is filled before it becomes read-only.
    for (rel, perms) in dir_modes.into_iter().rev() {
        dst.set_permissions(&rel, perms)?;
    }
    if let Ok(meta) = src.dir_metadata() {
        let _ = dst.set_permissions(".", meta.permissions());
    }
    Ok(bytes)
}

fn copy_file(from: &Dir, to: &Dir, name: &Path) -> io::Result<u64> {
    let mut options = OpenOptions::new();
    options.read(true);
    // `open_with` on a name whose entry is a regular file; cap-std refuses a path that
    // resolves outside `from` even if the entry was swapped for a symlink meanwhile.
    let source: File = from.open_with(name, &options)?;
    let source = source.into_std();
    let meta = source.metadata()?;
    let mut create = OpenOptions::new();
    create.write(true).create_new(true);
    let mut target = to.open_with(name, &create)?.into_std();
    let len = meta.len();
    if len > 0 && reflink_copy::reflink_file(&source, &target).is_err() {
        let mut source = &source;
        io::copy(&mut source, &mut target)?;
    }
    target.set_permissions(meta.permissions())?;
    if let Ok(modified) = meta.modified() {
        let _ = target.set_modified(modified);
    }
    Ok(len)
}

/// Removes `name` in `parent` and everything under it, without following symlinks; a missing
/// entry is not an error. Read-only directories in the tree (restored from a snapshot, say)
/// are made writable first when that is what stops the removal.
pub(crate) fn remove_tree(parent: &Dir, name: &Path) -> io::Result<()> {
    match parent.remove_dir_all(name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(parent, name)?;
            parent.remove_dir_all(name)
        }
        other => other,
    }
}

fn make_dirs_writable(parent: &Dir, name: &Path) -> io::Result<()> {
    use cap_std::fs::PermissionsExt as _;
    let mut pending = vec![name.to_path_buf()];
    while let Some(rel) = pending.pop() {
        let meta = parent.symlink_metadata(&rel)?;
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            parent.set_permissions(&rel, cap_std::fs::Permissions::from_mode(mode | 0o700))?;
        }
        for entry in parent.read_dir(&rel)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(rel.join(entry.file_name()));
            }
        }
    }
    Ok(())
}

/// Writes a small file atomically: a temporary sibling, synced, then renamed over `name`.
pub(crate) fn write_atomic(dir: &Dir, name: &str, contents: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let tmp = format!(".{name}.tmp-{}", crate::local::random_suffix());
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    let result = (|| {
        let mut file = dir.open_with(&tmp, &options)?.into_std();
        file.write_all(contents)?;
        file.sync_all()?;
        dir.rename(&tmp, dir, name)
    })();
    if result.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    result
}
