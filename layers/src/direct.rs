//! Large downloads written to their ingest file with `O_DIRECT`: from an
//! aligned buffer straight to the disk, around the page cache.
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
//! The file offset stays a multiple of [`ALIGN`] while direct writes are
//! on: only whole chunks are written so. The tail (or the rest, after a
//! short write or a filesystem that refuses `O_DIRECT` — tmpfs on older
//! kernels) goes through the page cache as before. Crash safety is the
//! store's as ever: commit fsyncs the file before renaming it into place.

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use rustix::fs::OFlags;

/// Alignment of the buffer, the file offset and every direct write's
/// length: a page, which covers every logical block size in use.
pub(crate) const ALIGN: usize = 4096;

/// Bytes per direct write; blobs smaller than this are written buffered.
pub(crate) const CHUNK: usize = 4 << 20;

/// A `CHUNK`-byte buffer aligned to `ALIGN` (in a larger allocation).
struct Aligned {
    buf: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> Option<Aligned> {
        let buf = vec![0u8; CHUNK + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        (start < ALIGN).then_some(Aligned { buf, start })
    }

    fn bytes(&self, len: usize) -> &[u8] {
        &self.buf[self.start..self.start + len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + CHUNK]
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
}

/// The aligned buffers of a file written with `O_DIRECT`.
pub(crate) struct DirectWrites {
    current: Aligned,
    /// Bytes waiting in `current`.
    len: usize,
    /// `None` once finished: later bytes are written through the page cache.
    writer: Option<Writer>,
}

impl DirectWrites {
    /// Turns `O_DIRECT` on for `file`, whose offset must be 0 (or aligned),
    /// and starts the thread that writes it; `None` when the filesystem
    /// refuses `O_DIRECT`.
    pub(crate) fn start(file: &File) -> Option<DirectWrites> {
        let flags = rustix::fs::fcntl_getfl(file).ok()?;
        let (Some(current), Some(idle), Ok(mut out)) =
            (Aligned::new(), Aligned::new(), file.try_clone())
        else {
            return None;
        };
        // The flag belongs to the open file, which the thread's handle shares.
        rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT).ok()?;
        let (chunks, to_write) = sync_channel::<Aligned>(1);
        let (done, written) = sync_channel(2);
        let thread = std::thread::Builder::new()
            .name("kiln-direct-write".into())
            .spawn(move || {
                for chunk in to_write {
                    let result = write_out(&mut out, chunk.bytes(CHUNK)).map(|()| chunk);
                    let failed = result.is_err();
                    if done.send(result).is_err() || failed {
                        return;
                    }
                }
            });
        let Ok(thread) = thread else {
            let _ = rustix::fs::fcntl_setfl(file, flags);
            return None;
        };
        Some(DirectWrites {
            current,
            len: 0,
            writer: Some(Writer {
                chunks: Some(chunks),
                written,
                idle: Some(idle),
                thread: Some(thread),
            }),
        })
    }

    /// Takes `data` into the buffer, handing each chunk that fills up to
    /// the writing thread.
    pub(crate) fn write(&mut self, file: &mut File, mut data: &[u8]) -> io::Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return file.write_all(data);
        };
        while !data.is_empty() {
            let n = (CHUNK - self.len).min(data.len());
            self.current.bytes_mut()[self.len..self.len + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == CHUNK {
                let next = match writer.idle.take() {
                    Some(idle) => idle,
                    None => writer.written.recv().map_err(|_| stopped())??,
                };
                let full = std::mem::replace(&mut self.current, next);
                self.len = 0;
                let sender = writer.chunks.as_ref().ok_or_else(stopped)?;
                sender.send(full).map_err(|_| stopped())?;
            }
        }
        Ok(())
    }

    /// Waits for the chunks under way, then writes what the buffer holds
    /// through the page cache (the file's last bytes need not make a whole
    /// aligned block); later writes go through the page cache too.
    pub(crate) fn finish(&mut self, file: &mut File) -> io::Result<()> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(());
        };
        writer.stop();
        // Every chunk sent was answered before the thread ended.
        for result in writer.written.try_iter() {
            result?;
        }
        let flags = rustix::fs::fcntl_getfl(&*file)?;
        rustix::fs::fcntl_setfl(&*file, flags - OFlags::DIRECT)?;
        file.write_all(self.current.bytes(self.len))?;
        self.len = 0;
        Ok(())
    }

    /// Drops what is buffered and what is under way (the file is about to
    /// be truncated); later writes go through the page cache.
    pub(crate) fn abandon(&mut self, file: &File) -> io::Result<()> {
        if let Some(mut writer) = self.writer.take() {
            writer.stop();
            let flags = rustix::fs::fcntl_getfl(file)?;
            rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?;
        }
        self.len = 0;
        Ok(())
    }
}

impl Writer {
    /// Ends the thread once it has written what it was sent.
    fn stop(&mut self) {
        self.chunks = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stopped() -> io::Error {
    io::Error::other("the thread writing the blob stopped")
}

/// Writes `bytes` at the file's offset. A direct write that is refused
/// (`EINVAL`) or cut short turns `O_DIRECT` off and the rest goes through
/// the page cache.
fn write_out(file: &mut File, mut bytes: &[u8]) -> io::Result<()> {
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
    Ok(())
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
mod tests {
    use super::*;
    use std::io::Read;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    /// Whole chunks direct, an odd tail buffered: the file holds exactly
    /// what was written, in order.
    #[test]
    fn chunks_and_tail_are_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut file = File::create(&path).unwrap();
        let bytes = data(2 * CHUNK + 12_345);
        let mut direct = DirectWrites::start(&file);
        match direct.as_mut() {
            Some(d) => {
                // Pieces of uneven sizes, as a network delivers them.
                for piece in bytes.chunks(100_003) {
                    d.write(&mut file, piece).unwrap();
                }
                d.finish(&mut file).unwrap();
            }
            // A filesystem without O_DIRECT: the caller writes buffered.
            None => file.write_all(&bytes).unwrap(),
        }
        drop(file);
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), bytes.len());
        assert!(back == bytes);
    }
}
