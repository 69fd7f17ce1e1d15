//! Layer compression: gzip (flate2 on zlib-rs) and zstd (multithreaded, with
//! output that does not depend on the number of threads), and reading any of
//! gzip, zstd or plain tar by sniffing the first bytes.

use std::io::{self, BufReader, Read, Write};

use crate::oci::media;

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    /// Recognizes gzip (`1f 8b`) and zstd (`28 b5 2f fd`) magic bytes.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI layer media type for this compression.
    pub fn oci_layer_media_type(self) -> &'static str {
        match self {
            Compression::None => media::OCI_LAYER,
            Compression::Gzip => media::OCI_LAYER_GZIP,
            Compression::Zstd => media::OCI_LAYER_ZSTD,
        }
    }

    /// Parses `gzip`, `zstd`, `none`/`uncompressed`.
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            "none" | "uncompressed" => Some(Compression::None),
            _ => None,
        }
    }
}

/// Wraps `reader` in the right decompressor after reading its magic bytes
/// (which are then put back in front of the stream).
pub fn decompress<'a, R: Read + Send + 'a>(mut reader: R) -> io::Result<Box<dyn Read + Send + 'a>> {
    // A reader may hand out fewer bytes than asked (a pipe, a socket):
    // keep reading until there are four or the stream ends.
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kind = Compression::sniff(&head[..got]);
    let whole = io::Cursor::new(head[..got].to_vec()).chain(reader);
    let buffered = BufReader::with_capacity(256 * 1024, whole);
    Ok(match kind {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
        Compression::None => Box::new(buffered),
    })
}

/// zstd level kiln uses (zstd's default).
pub const ZSTD_LEVEL: i32 = 3;

/// A compressing writer; call [`Compressor::finish`] to flush the trailer.
pub enum Compressor<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    /// gzip at level 6 with a zeroed header timestamp; zstd at level 3 with
    /// worker threads (at least one: zstd's output is the same for any
    /// worker count >= 1, but differs from single-threaded mode).
    pub fn new(kind: Compression, out: W) -> io::Result<Self> {
        Ok(match kind {
            Compression::None => Compressor::None(out),
            Compression::Gzip => Compressor::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .write(out, flate2::Compression::new(6)),
            ),
            Compression::Zstd => {
                let workers = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    .clamp(1, 8);
                Compressor::Zstd(zstd_encoder(out, workers as u32)?)
            }
        })
    }

    /// Finishes the stream and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::None(w) => Ok(w),
            Compressor::Gzip(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
        }
    }
}

pub(crate) fn zstd_encoder<W: Write>(
    out: W,
    workers: u32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    enc.multithread(workers.max(1))?;
    enc.include_checksum(true)?;
    Ok(enc)
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(buf),
            Compressor::Gzip(e) => e.write(buf),
            Compressor::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Gzip(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out one byte per read, like a slow pipe.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(slot)) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn sniffs_magic_bytes_across_short_reads() {
        let data = sample(10_000);
        for kind in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let mut c = Compressor::new(kind, Vec::new()).unwrap();
            c.write_all(&data).unwrap();
            let packed = c.finish().unwrap();
            let mut out = Vec::new();
            decompress(Trickle(&packed))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert!(out == data, "{kind:?} round trip through one-byte reads");
        }
        // Shorter than the magic: passed through as it is.
        let mut out = Vec::new();
        decompress(Trickle(b"ab"))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"ab");
    }

    /// Compressible but not trivial bytes.
    fn sample(len: usize) -> Vec<u8> {
        let mut data = Vec::with_capacity(len);
        let mut x: u32 = 1;
        while data.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let word = b"layer tar gzip zstd blob ";
            let start = (x >> 16) as usize % word.len();
            data.extend_from_slice(&word[start..]);
            data.push(b'0' + (x % 10) as u8);
        }
        data.truncate(len);
        data
    }

    #[test]
    fn zstd_output_does_not_depend_on_worker_count() {
        // Larger than one zstd job (4 × the 2 MiB window at level 3), so
        // several workers really split it.
        let data = sample(9 << 20);
        let compress = |workers| {
            let mut enc = zstd_encoder(Vec::new(), workers).unwrap();
            enc.write_all(&data).unwrap();
            enc.finish().unwrap()
        };
        let one = compress(1);
        assert_eq!(one, compress(2));
        assert_eq!(one, compress(4));
    }

    #[test]
    fn every_format_round_trips_through_sniffing() {
        let data = sample(1 << 20);
        for kind in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut c = Compressor::new(kind, Vec::new()).unwrap();
            c.write_all(&data).unwrap();
            let packed = c.finish().unwrap();
            assert_eq!(Compression::sniff(&packed), kind);
            let mut back = Vec::new();
            decompress(packed.as_slice())
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "{kind:?}");
        }
    }

    #[test]
    fn gzip_is_deterministic() {
        let data = sample(1 << 20);
        let gz = || {
            let mut c = Compressor::new(Compression::Gzip, Vec::new()).unwrap();
            c.write_all(&data).unwrap();
            c.finish().unwrap()
        };
        assert_eq!(gz(), gz());
    }
}
