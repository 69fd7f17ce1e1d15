//! Starting the writeback of what the store writes without fsyncing it, so
//! that the disk work happens while the build that wrote it runs, not half
//! a minute later (the kernel's `dirty_expire`) in the middle of whatever
//! runs then, a later build.
//!
//! Two uses: a blob being ingested ([`start`] every few MiB, so that
//! commit's fsync finds little left to flush), and the files of a snapshot,
//! which are never fsynced ([`later`]): those of a step's upper dir as the
//! layer's tar reads them ([`crate::diff::DiffOptions::write_back`]), and
//! those of a layer unpacked into a snapshot as they are written
//! ([`crate::unpack::UnpackOptions::write_back`]). Both are hints, which
//! make nothing durable: a file not hinted is written back by the kernel
//! as before.

use std::fs::File;
use std::sync::{mpsc, OnceLock};

/// Asks the kernel to start writing `len` bytes of `file` at `offset` (0:
/// to the end) to disk without waiting for them. A failure is ignored.
pub(crate) fn start(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for as long as `file` is borrowed;
    // sync_file_range reads no memory of ours. (rustix has no
    // sync_file_range.)
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Starts the writeback of the whole of `file`, a snapshot's file just
/// written or read, on one thread of the process's own: the kernel
/// allocates blocks and submits the I/O in the caller, about half a second
/// of CPU time for 20,000 small files, which the tar's or the unpacker's
/// thread would otherwise spend. Files are passed open, so their directory
/// may be renamed meanwhile; at most [`QUEUE`] wait (open descriptors count
/// against the process's limit). A file there is no room for (the thread
/// falls behind on a tree of many small files, each a block allocation),
/// or every file if the thread cannot be started, is hinted on the
/// caller's thread instead: dropping it would leave its pages to the
/// kernel's timer, a later build. A file the thread has not reached when
/// the process exits is written back by the kernel as before.
pub(crate) fn later(file: File) {
    static THREAD: OnceLock<Option<mpsc::SyncSender<File>>> = OnceLock::new();
    let queue = THREAD.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<File>(QUEUE);
        std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                for file in rx {
                    start(&file, 0, 0);
                }
            })
            .ok()
            .map(|_| tx)
    });
    let file = match queue {
        Some(queue) => match queue.try_send(file) {
            Ok(()) => return,
            Err(mpsc::TrySendError::Full(file) | mpsc::TrySendError::Disconnected(file)) => file,
        },
        None => file,
    };
    start(&file, 0, 0);
}

/// Files waiting for the writeback thread at most; more are hinted on the
/// caller's thread.
const QUEUE: usize = 64;
