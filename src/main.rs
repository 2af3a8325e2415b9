//! The `ckms` command: parses the command line and hands over to the library.

mod cli;

fn main() {
    fixed_mmap_threshold();
    std::process::exit(cli::main());
}

/// Keeps glibc from holding freed memory: its mmap threshold otherwise rises to the size of the
/// largest mmapped block freed (up to 32 MiB), after which the big short-lived buffers (an xz
/// dictionary of 8 MiB per .deb, 4 MiB chunks of a Packages file, 1 MiB I/O buffers) are carved
/// from the threads' arenas, whose freed memory stays resident and scattered. Measured: a
/// builder image provisioned peaked at 118 MB RSS instead of 83 MB, a two-profile farm plan at
/// 114 MB instead of 78 MB. With a fixed threshold these blocks are mmapped and given back on free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fixed_mmap_threshold() {
    // SAFETY: mallopt only sets a parameter of glibc's allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fixed_mmap_threshold() {}
