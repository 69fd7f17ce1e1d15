//! Large downloads written to their ingest file with `O_DIRECT`: from an
//! aligned buffer straight to the disk, around the page cache.
//!
//! A buffered write of a layer first copies it into newly allocated page
//! cache pages and leaves all of it dirty for the fsync at commit to write
//! back. On the virtual machines CI runs on, both were the largest costs of
//! a second runner's build (tens to hundreds of milliseconds for 64 MB,
//! varying with the host: a fresh guest page is a host fault), while the
//! same bytes written directly took a steady ~40 ms and left commit's fsync
//! only the metadata. A blob just downloaded is not read back by the pull
//! (it was hashed as it arrived), so the cache pages would be of no use.
//!
//! The file offset stays a multiple of [`ALIGN`] while direct writes are
//! on: only whole chunks are written so. The tail (or the rest, after a
//! short write or a filesystem that refuses `O_DIRECT` — tmpfs on older
//! kernels) goes through the page cache as before. Crash safety is the
//! store's as ever: commit fsyncs the file before renaming it into place.

use std::fs::File;
use std::io::{self, Write};

use rustix::fs::OFlags;

/// Alignment of the buffer, the file offset and every direct write's
/// length: a page, which covers every logical block size in use.
pub(crate) const ALIGN: usize = 4096;

/// Bytes per direct write; blobs smaller than this are written buffered.
pub(crate) const CHUNK: usize = 4 << 20;

/// The aligned buffer of a file written with `O_DIRECT`.
pub(crate) struct DirectWrites {
    /// `CHUNK + ALIGN` bytes, of which `[start, start + CHUNK)` is aligned.
    buf: Vec<u8>,
    start: usize,
    /// Bytes waiting in the buffer.
    len: usize,
    /// Whether the file still has `O_DIRECT` set.
    on: bool,
}

impl DirectWrites {
    /// Turns `O_DIRECT` on for `file`, whose offset must be 0 (or aligned);
    /// `None` when the filesystem refuses it.
    pub(crate) fn start(file: &File) -> Option<DirectWrites> {
        let flags = rustix::fs::fcntl_getfl(file).ok()?;
        rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT).ok()?;
        let buf = vec![0u8; CHUNK + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        if start >= ALIGN {
            let _ = rustix::fs::fcntl_setfl(file, flags);
            return None;
        }
        Some(DirectWrites {
            buf,
            start,
            len: 0,
            on: true,
        })
    }

    /// Takes `data` into the buffer, writing each chunk that fills up.
    pub(crate) fn write(&mut self, file: &mut File, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = (CHUNK - self.len).min(data.len());
            let at = self.start + self.len;
            self.buf[at..at + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == CHUNK {
                self.write_out(file)?;
            }
        }
        Ok(())
    }

    /// Writes what the buffer holds, through the page cache from here on:
    /// the file's last bytes need not make a whole aligned block.
    pub(crate) fn finish(&mut self, file: &mut File) -> io::Result<()> {
        if self.on {
            self.stop(file)?;
        }
        self.write_out(file)
    }

    /// Forgets what the buffer holds (the file was truncated to 0).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    fn stop(&mut self, file: &File) -> io::Result<()> {
        let flags = rustix::fs::fcntl_getfl(file)?;
        rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?;
        self.on = false;
        Ok(())
    }

    /// Writes the buffer out; a direct write that is refused or cut short
    /// leaves direct writes off and the rest goes buffered.
    fn write_out(&mut self, file: &mut File) -> io::Result<()> {
        let mut done = 0;
        while done < self.len {
            let pending = &self.buf[self.start + done..self.start + self.len];
            match file.write(pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    done += n;
                    if done < self.len && self.on {
                        self.stop(file)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.on && e.raw_os_error() == Some(libc::EINVAL) => self.stop(file)?,
                Err(e) => return Err(e),
            }
        }
        self.len = 0;
        Ok(())
    }
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
