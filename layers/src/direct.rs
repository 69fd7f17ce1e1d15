//! Large downloads, and layers packed from snapshots
//! ([`crate::Store::ingest_direct`]), written to their ingest file with
//! `O_DIRECT`: from an aligned buffer straight to the disk, around the
//! page cache.
//!
//! A buffered write of a layer first copies it into newly allocated page
//! cache pages and leaves all of it dirty for the fsync at commit to write
//! back. On a virtual machine (where CI runners usually are) both were the
//! largest costs of a second runner's build (tens to hundreds of
//! milliseconds for 64 MB, varying with the host: a fresh guest page can be
//! a host fault), while the same bytes written directly took a steady
//! ~40 ms and left commit's fsync only the metadata. The pull does not read
//! the blob back (it was hashed as it arrived); what unpacks it later reads
//! it from the disk rather than the page cache.
//!
//! Full chunks are written by a thread of the writer's own while the next
//! one fills, so the download goes on receiving and hashing while the disk
//! writes (two buffers: a download faster than the disk waits for it).
//! The buffers grow as bytes arrive, and the thread and second buffer come
//! with the first full chunk: a blob smaller than a chunk (most layers a
//! RUN makes) costs neither a thread nor 8 MiB of zeroed memory. Where no
//! thread can be started, the rest goes through the page cache.
//! The file offset stays a multiple of [`ALIGN`] while direct writes are
//! on: only whole chunks are written so. The tail (or the rest, after a
//! short write or a filesystem that refuses `O_DIRECT` — tmpfs on older
//! kernels) goes through the page cache as before. Crash safety is the
//! store's as ever: commit fsyncs the file before renaming it into place.
//!
//! After the first failed write nothing more is written (every later
//! write and [`DirectWrites::finish`] fail): the file then holds a prefix of
//! the bytes given, in order, which a resuming writer can continue.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::fs::OFlags;

/// Alignment of the buffer, the file offset and every direct write's
/// length: a page, which covers every logical block size in use.
pub(crate) const ALIGN: usize = 4096;

/// Bytes per direct write; blobs smaller than this are written buffered.
pub(crate) const CHUNK: usize = 4 << 20;

/// A buffer of up to `CHUNK` bytes starting at an `ALIGN`ed address (in
/// a larger allocation). It grows as bytes arrive: only the pages it holds
/// are ever touched, so a layer of a few bytes costs no 4 MiB of zeroed
/// (and, on a virtual machine, newly faulted) memory.
struct Aligned {
    /// Capacity `CHUNK + ALIGN`, never exceeded, so never reallocated;
    /// `start` filler bytes, then the bytes held.
    buf: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> Option<Aligned> {
        let mut buf = Vec::<u8>::with_capacity(CHUNK + ALIGN);
        let start = buf.as_ptr().align_offset(ALIGN);
        if start >= ALIGN {
            return None;
        }
        buf.resize(start, 0);
        Some(Aligned { buf, start })
    }

    fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn is_full(&self) -> bool {
        self.len() == CHUNK
    }

    /// Takes in as much of `data` as fits; how many bytes that was.
    fn push(&mut self, data: &[u8]) -> usize {
        let n = (CHUNK - self.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn clear(&mut self) {
        self.buf.truncate(self.start);
    }
}

/// The thread that writes full chunks while the next one fills: the
/// download goes on receiving (and hashing) while the disk writes.
struct Writer {
    chunks: Option<SyncSender<Aligned>>,
    /// Buffers written (to fill again), or the first error.
    written: Receiver<io::Result<Aligned>>,
    /// A buffer never handed out yet.
    idle: Option<Aligned>,
    thread: Option<JoinHandle<()>>,
    /// Chunks written with `O_DIRECT` on from their first byte to their last.
    direct_chunks: Arc<AtomicUsize>,
}

/// The aligned buffers of a file written with `O_DIRECT`. The second
/// buffer and the writing thread come with the first full chunk: a blob
/// smaller than a chunk has neither, and goes through the page cache at
/// [`DirectWrites::finish`].
pub(crate) struct DirectWrites {
    /// The bytes not yet handed to the thread.
    current: Aligned,
    /// Started with the first full chunk.
    writer: Option<Writer>,
    /// No more direct writes: finished, abandoned, failed (see `failed`) or
    /// no thread could be started. Unless failed, later bytes go through
    /// the page cache.
    finished: bool,
    /// A write failed: nothing more is written (until [`Self::abandon`]),
    /// so the file holds only bytes in order.
    failed: bool,
}

impl DirectWrites {
    /// Turns `O_DIRECT` on for `file`, whose offset must be 0 (or aligned);
    /// `None` when the filesystem refuses `O_DIRECT`.
    pub(crate) fn start(file: &File) -> Option<DirectWrites> {
        let flags = rustix::fs::fcntl_getfl(file).ok()?;
        let current = Aligned::new()?;
        // The flag belongs to the open file, which the thread's handle shares.
        rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT).ok()?;
        Some(DirectWrites {
            current,
            writer: None,
            finished: false,
            failed: false,
        })
    }

    /// Whether writes must still come here: direct writes are under way, or
    /// a failure refuses them. Otherwise the caller may write the file
    /// through its own buffer: everything given here is in the file.
    pub(crate) fn active(&self) -> bool {
        !self.finished || self.failed
    }

    /// Takes `data` into the buffer, handing each chunk that fills up to
    /// the writing thread (started with the first; where it cannot be, the
    /// buffer and the rest go through the page cache). After an error
    /// (this one's or an earlier one's) nothing more is written.
    pub(crate) fn write(&mut self, file: &mut File, data: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(failed_before());
        }
        let result = self.take_in(file, data);
        if result.is_err() {
            self.poison(file);
        }
        result
    }

    fn take_in(&mut self, file: &mut File, mut data: &[u8]) -> io::Result<()> {
        if self.finished {
            return file.write_all(data);
        }
        while !data.is_empty() {
            let n = self.current.push(data);
            data = &data[n..];
            if !self.current.is_full() {
                continue;
            }
            if self.writer.is_none() {
                self.writer = Writer::start(file);
            }
            let Some(writer) = self.writer.as_mut() else {
                // No thread to write with: the page cache, as for a
                // filesystem that refuses O_DIRECT.
                self.finish_writes(file)?;
                return file.write_all(data);
            };
            let next = match writer.idle.take() {
                Some(idle) => idle,
                None => {
                    let mut next = writer.written.recv().map_err(|_| stopped())??;
                    next.clear();
                    next
                }
            };
            let full = std::mem::replace(&mut self.current, next);
            let sender = writer.chunks.as_ref().ok_or_else(stopped)?;
            sender.send(full).map_err(|_| stopped())?;
        }
        Ok(())
    }

    /// Waits for the chunks under way, then writes what the buffer holds
    /// through the page cache (the file's last bytes need not make a whole
    /// aligned block); later writes go through the page cache too. Returns
    /// how many chunks were written with `O_DIRECT` (0 when finished
    /// before). After a failed write it writes nothing and fails: what the
    /// buffer holds would not follow what the file holds.
    pub(crate) fn finish(&mut self, file: &mut File) -> io::Result<usize> {
        if self.failed {
            return Err(failed_before());
        }
        let result = self.finish_writes(file);
        if result.is_err() {
            self.poison(file);
        }
        result
    }

    fn finish_writes(&mut self, file: &mut File) -> io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        self.finished = true;
        let mut chunks = 0;
        if let Some(mut writer) = self.writer.take() {
            writer.stop()?;
            // Every chunk sent was answered before the thread ended.
            for result in writer.written.try_iter() {
                result?;
            }
            chunks = writer.direct_chunks.load(Ordering::Relaxed);
        }
        direct_off(file)?;
        file.write_all(self.current.bytes())?;
        self.current.clear();
        Ok(chunks)
    }

    /// After a failed write: the thread ends once it has written what it
    /// was sent (in order), the buffer is emptied and nothing more is
    /// written.
    fn poison(&mut self, file: &File) {
        self.failed = true;
        self.finished = true;
        self.current.clear();
        if let Some(mut writer) = self.writer.take() {
            let _ = writer.stop();
        }
        let _ = direct_off(file);
    }

    /// Drops what is buffered, once the thread has written what it was
    /// sent (the file is about to be truncated); later writes go through
    /// the page cache.
    pub(crate) fn abandon(&mut self, file: &File) -> io::Result<()> {
        if let Some(mut writer) = self.writer.take() {
            let _ = writer.stop();
        }
        self.current.clear();
        self.finished = true;
        self.failed = false;
        direct_off(file)?;
        Ok(())
    }
}

impl Writer {
    /// Starts the thread that writes `file` (a handle of its own to the
    /// same open file), with a second buffer to fill meanwhile; `None`
    /// when the handle or the thread cannot be had.
    fn start(file: &File) -> Option<Writer> {
        #[cfg(test)]
        if tests::NO_THREAD.with(std::cell::Cell::get) {
            return None;
        }
        let mut out = file.try_clone().ok()?;
        let idle = Aligned::new()?;
        let (chunks, to_write) = sync_channel::<Aligned>(1);
        let (done, written) = sync_channel(2);
        let direct_chunks = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&direct_chunks);
        let thread = std::thread::Builder::new()
            .name("kiln-direct-write".into())
            .spawn(move || {
                for chunk in to_write {
                    let result = write_out(&mut out, chunk.bytes()).map(|direct| {
                        if direct {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                        chunk
                    });
                    let failed = result.is_err();
                    if done.send(result).is_err() || failed {
                        return;
                    }
                }
            })
            .ok()?;
        Some(Writer {
            chunks: Some(chunks),
            written,
            idle: Some(idle),
            thread: Some(thread),
            direct_chunks,
        })
    }

    /// Ends the thread once it has written what it was sent; an error if
    /// it panicked, when a chunk it was sent may be missing from the file.
    fn stop(&mut self) -> io::Result<()> {
        self.chunks = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(io::Error::other("the thread writing the blob panicked")),
            _ => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn stopped() -> io::Error {
    io::Error::other("the thread writing the blob stopped")
}

fn failed_before() -> io::Error {
    io::Error::other("an earlier write of the blob failed: nothing more is written after it")
}

/// Writes `bytes` at the file's offset; whether all of them went with
/// `O_DIRECT` on. A direct write that is refused (`EINVAL`) or cut short
/// turns `O_DIRECT` off and the rest goes through the page cache.
fn write_out(file: &mut File, mut bytes: &[u8]) -> io::Result<bool> {
    let direct = rustix::fs::fcntl_getfl(&*file)?.contains(OFlags::DIRECT);
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                if !bytes.is_empty() {
                    direct_off(file)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && direct_off(file)? => {}
            Err(e) => return Err(e),
        }
    }
    Ok(direct && rustix::fs::fcntl_getfl(&*file)?.contains(OFlags::DIRECT))
}

/// Turns `O_DIRECT` off; whether it was on.
fn direct_off(file: &File) -> io::Result<bool> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    if !flags.contains(OFlags::DIRECT) {
        return Ok(false);
    }
    rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?;
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    thread_local! {
        /// Set by a test: `Writer::start` fails in this thread, as when
        /// no thread or descriptor can be had.
        pub(super) static NO_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    /// A tmpfs of `size` bytes mounted by the test (unmounted on drop),
    /// with a ballast file that takes `ballast` of its bytes: writes fail
    /// with `ENOSPC` once the rest is used, and removing the ballast makes
    /// room again (space another process frees).
    pub(crate) struct Tmpfs {
        pub(crate) dir: PathBuf,
        ballast: PathBuf,
        _parent: tempfile::TempDir,
    }

    impl Tmpfs {
        pub(crate) fn mount(size: usize, ballast: usize) -> Tmpfs {
            let parent = tempfile::tempdir_in("/var/tmp").unwrap();
            let dir = parent.path().join("fs");
            std::fs::create_dir(&dir).unwrap();
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "mount tmpfs at {}", dir.display());
            let fs = Tmpfs {
                ballast: dir.join("ballast"),
                dir,
                _parent: parent,
            };
            std::fs::write(&fs.ballast, vec![1u8; ballast]).unwrap();
            fs
        }

        pub(crate) fn free_ballast(&self) {
            std::fs::remove_file(&self.ballast).unwrap();
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }

    /// A new blob file under /var/tmp (ext4 here, which takes `O_DIRECT`)
    /// with direct writes started; the directory goes when dropped.
    fn blob_with_direct_writes() -> (tempfile::TempDir, PathBuf, File, DirectWrites) {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("blob");
        let file = File::create(&path).unwrap();
        let direct = DirectWrites::start(&file).expect("/var/tmp takes O_DIRECT");
        (dir, path, file, direct)
    }

    fn read(path: &Path) -> Vec<u8> {
        let mut back = Vec::new();
        File::open(path).unwrap().read_to_end(&mut back).unwrap();
        back
    }

    /// Whole chunks direct, an odd tail buffered: the file holds exactly
    /// what was written, in order. On ext4 (under /var/tmp) both whole
    /// chunks went with `O_DIRECT`, not through the fallback.
    #[test]
    fn chunks_and_tail_are_written_in_order() {
        let bytes = data(2 * CHUNK + 12_345);
        let (_dir, path, mut file, mut direct) = blob_with_direct_writes();
        // Pieces of uneven sizes, as a network delivers them.
        for piece in bytes.chunks(100_003) {
            direct.write(&mut file, piece).unwrap();
        }
        assert_eq!(
            direct.finish(&mut file).unwrap(),
            2,
            "chunks written direct"
        );
        drop(file);
        let back = read(&path);
        assert_eq!(back.len(), bytes.len());
        assert!(back == bytes);
    }

    /// A blob smaller than a chunk starts no thread and touches no more
    /// of its buffer than it holds; the file holds it once finished.
    #[test]
    fn a_small_blob_takes_no_thread_and_no_whole_buffer() {
        let (_dir, path, mut file, mut direct) = blob_with_direct_writes();
        let small = b"a small layer";
        direct.write(&mut file, small).unwrap();
        assert!(direct.writer.is_none(), "a writing thread was started");
        assert_eq!(
            direct.current.buf.len(),
            direct.current.start + small.len(),
            "buffer bytes initialized"
        );
        assert_eq!(
            direct.finish(&mut file).unwrap(),
            0,
            "chunks written direct"
        );
        drop(file);
        assert_eq!(read(&path), small);
    }

    /// Exactly one chunk in one write: the thread is started for it and
    /// writes it direct; nothing is left for the tail.
    #[test]
    fn exactly_one_chunk_is_written_direct() {
        let bytes = data(CHUNK);
        let (_dir, path, mut file, mut direct) = blob_with_direct_writes();
        direct.write(&mut file, &bytes).unwrap();
        assert!(direct.writer.is_some(), "no writing thread");
        assert_eq!(
            direct.finish(&mut file).unwrap(),
            1,
            "chunks written direct"
        );
        drop(file);
        assert!(read(&path) == bytes);
    }

    /// No thread can be started when the first chunk fills: that chunk
    /// and the rest go through the page cache, in order, and the caller
    /// may write through its own buffer from then on.
    #[test]
    fn without_a_thread_the_rest_goes_through_the_page_cache() {
        let bytes = data(2 * CHUNK + 12_345);
        let (_dir, path, mut file, mut direct) = blob_with_direct_writes();
        NO_THREAD.with(|no| no.set(true));
        for piece in bytes.chunks(100_003) {
            direct.write(&mut file, piece).unwrap();
        }
        NO_THREAD.with(|no| no.set(false));
        assert!(!direct.active(), "direct writes still on");
        assert!(!rustix::fs::fcntl_getfl(&file)
            .unwrap()
            .contains(OFlags::DIRECT));
        assert_eq!(
            direct.finish(&mut file).unwrap(),
            0,
            "chunks written direct"
        );
        drop(file);
        assert!(read(&path) == bytes);
    }

    /// Abandoned before any chunk filled (the file is then truncated, as
    /// for a server that ignored Range): `O_DIRECT` is off again, so an
    /// unaligned write through the page cache works, and the caller may
    /// write through its own buffer.
    #[test]
    fn abandoned_before_a_chunk_filled_leaves_direct_writes_off() {
        let (_dir, path, mut file, mut direct) = blob_with_direct_writes();
        direct.write(&mut file, &data(100)).unwrap();
        assert!(direct.active());
        direct.abandon(&file).unwrap();
        assert!(!direct.active());
        assert!(!rustix::fs::fcntl_getfl(&file)
            .unwrap()
            .contains(OFlags::DIRECT));
        file.set_len(0).unwrap();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).unwrap();
        direct.write(&mut file, b"again, 17 bytes.").unwrap();
        drop(file);
        assert_eq!(read(&path), b"again, 17 bytes.");
    }

    /// A disk that fills up while chunks are written: the write that meets
    /// the error fails, and so does everything after it, even once there
    /// is room again (finish, as a dropped writer calls it): the file holds
    /// a prefix of the bytes given, in order, for a resuming writer.
    #[test]
    fn after_a_failed_write_the_file_holds_a_prefix() {
        kiln_testsupport::require_root!("mounting a small tmpfs");
        // Room for 2.5 chunks once the ballast is in.
        let fs = Tmpfs::mount(6 * CHUNK, 7 * CHUNK / 2);
        let path = fs.dir.join("blob");
        let mut file = File::create(&path).unwrap();
        let bytes = data(5 * CHUNK);
        let mut direct = DirectWrites::start(&file).expect("tmpfs takes O_DIRECT");
        let failed_at = bytes
            .chunks(100_003)
            .position(|piece| direct.write(&mut file, piece).is_err())
            .expect("a write fails with the tmpfs full");
        assert!(direct.write(&mut file, b"more").is_err());
        fs.free_ballast();
        let finished = direct.finish(&mut file);
        drop(file);
        let back = read(&path);
        assert!(back.len() >= 2 * CHUNK, "{} bytes kept", back.len());
        assert!(
            back.len() <= failed_at * 100_003,
            "{} bytes kept",
            back.len()
        );
        assert!(back == bytes[..back.len()], "the file is not a prefix");
        assert!(finished.is_err());
    }
}
