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
/// thread would otherwise spend. Files are passed open (read-only), so
/// their directory may be renamed meanwhile; at most [`QUEUE`] wait, plus
/// the one the thread is at (open descriptors count against the process's
/// limit). A file there is no room for (the thread falls behind on a tree
/// of many small files, each a block allocation), or every file if the
/// thread cannot be started or has stopped, is hinted on the caller's
/// thread instead: dropping it would leave its pages to the kernel's
/// timer, a later build. That caller then pays for the block allocation,
/// and waits where submitting I/O waits (a full device queue, a journal):
/// the thread is never more than [`QUEUE`] files behind it. A file the
/// thread has not reached when the process exits is written back by the
/// kernel as before.
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
    if let Some(file) = hand_over(queue.as_ref(), file) {
        start(&file, 0, 0);
    }
}

/// Files waiting for the writeback thread at most; more are hinted on the
/// caller's thread.
const QUEUE: usize = 64;

/// Gives `file` to the writeback thread's `queue`; returns it when the
/// caller must hint it itself: no thread, the queue full, or the thread
/// gone.
fn hand_over(queue: Option<&mpsc::SyncSender<File>>, file: File) -> Option<File> {
    let Some(queue) = queue else {
        return Some(file);
    };
    match queue.try_send(file) {
        Ok(()) => None,
        Err(mpsc::TrySendError::Full(file) | mpsc::TrySendError::Disconnected(file)) => Some(file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn file() -> (tempfile::NamedTempFile, File) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let file = File::open(tmp.path()).unwrap();
        (tmp, file)
    }

    fn ino(file: &File) -> u64 {
        file.metadata().unwrap().ino()
    }

    #[test]
    fn a_file_the_queue_takes_is_the_threads() {
        let (tx, rx) = mpsc::sync_channel(1);
        let (_tmp, f) = file();
        let expected = ino(&f);
        assert!(hand_over(Some(&tx), f).is_none());
        assert_eq!(ino(&rx.try_recv().unwrap()), expected);
    }

    #[test]
    fn a_file_with_no_room_no_thread_or_a_stopped_thread_comes_back_to_the_caller() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let (_a, first) = file();
        assert!(hand_over(Some(&tx), first).is_none());
        let (_b, full) = file();
        let expected = ino(&full);
        let back = hand_over(Some(&tx), full).expect("a full queue gives it back");
        assert_eq!(ino(&back), expected);

        let (_c, f) = file();
        assert!(hand_over(None, f).is_some(), "no thread gives it back");

        let (tx, rx) = mpsc::sync_channel(1);
        drop(rx);
        let (_d, f) = file();
        assert!(
            hand_over(Some(&tx), f).is_some(),
            "a stopped thread gives it back"
        );
    }
}
