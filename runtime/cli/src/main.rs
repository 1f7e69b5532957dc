//! The `cairn` binary: a thin shell over [`cairn_cli`] so tests drive the real thing.

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    cairn_cli::main()
}

/// glibc gives threads that allocate at once arenas of their own, up to eight per core, and
/// keeps what is freed in each. A restore decodes on Tokio's blocking pool and frees on its
/// writer thread: it peaked at 105-121 MiB with the default and at 75 MiB, no slower, with one
/// arena per core.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let arenas = i32::try_from(cores).unwrap_or(i32::MAX).max(2);
    // SAFETY: `mallopt` only tunes the allocator; it is called first thing in `main`, before
    // any other thread exists. A refusal (0) leaves glibc's default, which is only bigger.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
