//! Compression: the one sniffer of compressed streams ([`Magic`]: gzip,
//! bzip2, xz, zstd or plain, by their first bytes), layer compression (gzip
//! on zlib-rs, zstd multithreaded with output that does not depend on the
//! number of threads), reading a layer blob ([`decompress`]: gzip, zstd or
//! plain) and reading an archive `ADD` extracts ([`decompress_archive`]:
//! any of the five).

use std::io::{self, BufReader, Read, Write};

use crate::oci::media;

/// What a stream's first bytes say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magic {
    /// None of the others: read as it is.
    Plain,
    /// `1f 8b 08` (deflate, the only method gzip defines).
    Gzip,
    /// `BZh`.
    Bzip2,
    /// `fd 37 7a 58 5a 00`.
    Xz,
    /// `28 b5 2f fd`.
    Zstd,
}

impl Magic {
    /// How many leading bytes [`Magic::sniff`] looks at (xz's magic is the
    /// longest).
    pub const LEN: usize = 6;

    /// Recognizes a stream by its first bytes (fewer than [`Magic::LEN`]
    /// only when the stream is that short).
    pub fn sniff(head: &[u8]) -> Magic {
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            Magic::Gzip
        } else if head.starts_with(b"BZh") {
            Magic::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Magic::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Magic::Zstd
        } else {
            Magic::Plain
        }
    }
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    /// A layer blob's compression from its first bytes ([`Magic::sniff`]);
    /// anything but gzip and zstd is read as plain.
    pub fn sniff(head: &[u8]) -> Compression {
        match Magic::sniff(head) {
            Magic::Gzip => Compression::Gzip,
            Magic::Zstd => Compression::Zstd,
            Magic::Plain | Magic::Bzip2 | Magic::Xz => Compression::None,
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

/// A stream whose first bytes were read to sniff it, put back in front.
type Sniffed<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads the first [`Magic::LEN`] bytes of `reader` (fewer if it ends
/// first) and returns what they say with a reader that yields the whole
/// stream, those bytes included.
fn sniff_stream<R: Read>(mut reader: R) -> io::Result<(Magic, Sniffed<R>)> {
    // A reader may hand out fewer bytes than asked (a pipe, a socket):
    // keep reading until there are enough or the stream ends.
    let mut head = [0u8; Magic::LEN];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let magic = Magic::sniff(&head[..got]);
    Ok((magic, io::Cursor::new(head[..got].to_vec()).chain(reader)))
}

/// Wraps a layer blob in the right decompressor after reading its magic
/// bytes (which are then put back in front of the stream): gzip, zstd, else
/// plain.
pub fn decompress<'a, R: Read + Send + 'a>(reader: R) -> io::Result<Box<dyn Read + Send + 'a>> {
    let (magic, whole) = sniff_stream(reader)?;
    let buffered = BufReader::with_capacity(256 * 1024, whole);
    Ok(match magic {
        Magic::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Magic::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
        Magic::Plain | Magic::Bzip2 | Magic::Xz => Box::new(buffered),
    })
}

/// Wraps an archive `ADD` may extract in the right decompressor: gzip,
/// bzip2, xz, zstd, else plain, as Docker's `DecompressStream`. Only what
/// is read gets decoded (deciding whether a file is a tar archive decodes a
/// few blocks, not the whole file).
pub fn decompress_archive<'a, R: Read + Send + 'a>(
    reader: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let (magic, whole) = sniff_stream(reader)?;
    archive_decoder(magic, BufReader::new(whole))
}

/// The decoder `magic` names over `input`. xz is liblzma's, which
/// streams with a bounded buffer (the dictionary the stream asks for) and
/// reads concatenated streams on, as `xz -d` does.
fn archive_decoder<'a, B: io::BufRead + Send + 'a>(
    magic: Magic,
    input: B,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match magic {
        Magic::Plain => Box::new(input),
        Magic::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Magic::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
        Magic::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
        Magic::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(input)),
    })
}

/// zstd level kiln uses (zstd's default).
pub const ZSTD_LEVEL: i32 = 3;

/// gzip level kiln uses (gzip's default).
pub const GZIP_LEVEL: u32 = 6;

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
        Self::with_level(kind, None, out)
    }

    /// As [`Compressor::new`], at `level` when given (one of
    /// [`level_range`]'s: an error otherwise).
    pub fn with_level(kind: Compression, level: Option<i32>, out: W) -> io::Result<Self> {
        if let Some(level) = level {
            check_level(kind, level).map_err(io::Error::other)?;
        }
        Ok(match kind {
            Compression::None => Compressor::None(out),
            Compression::Gzip => {
                let level = level.map_or(GZIP_LEVEL, |l| l.unsigned_abs());
                Compressor::Gzip(
                    flate2::GzBuilder::new()
                        .mtime(0)
                        .write(out, flate2::Compression::new(level)),
                )
            }
            Compression::Zstd => {
                let workers = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    .clamp(1, 8);
                let level = level.unwrap_or(ZSTD_LEVEL);
                Compressor::Zstd(zstd_encoder(out, level, workers as u32)?)
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

/// The levels `kind` takes: gzip 0 (stored) to 9, zstd 1 to 22 (libzstd's);
/// `None` for no compression, which has none.
pub fn level_range(kind: Compression) -> Option<std::ops::RangeInclusive<i32>> {
    match kind {
        Compression::None => None,
        Compression::Gzip => Some(0..=9),
        Compression::Zstd => Some(1..=22),
    }
}

/// Refuses a `level` `kind` does not take, saying which it does.
pub fn check_level(kind: Compression, level: i32) -> Result<(), String> {
    let name = match kind {
        Compression::None => "uncompressed",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    };
    match level_range(kind) {
        Some(range) if range.contains(&level) => Ok(()),
        Some(range) => Err(format!(
            "compression-level={level}: {name} takes {} to {}",
            range.start(),
            range.end()
        )),
        None => Err(format!(
            "compression-level={level}: uncompressed layers have no level"
        )),
    }
}

/// The level kiln compresses `kind` at when none is asked for.
pub fn default_level(kind: Compression) -> Option<i32> {
    match kind {
        Compression::None => None,
        Compression::Gzip => Some(GZIP_LEVEL as i32),
        Compression::Zstd => Some(ZSTD_LEVEL),
    }
}

pub(crate) fn zstd_encoder<W: Write>(
    out: W,
    level: i32,
    workers: u32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
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
            let mut enc = zstd_encoder(Vec::new(), ZSTD_LEVEL, workers).unwrap();
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
    fn magic_bytes_of_every_format() {
        assert_eq!(Magic::sniff(&[0x1f, 0x8b, 0x08, 0]), Magic::Gzip);
        // gzip's magic with a method other than deflate is no gzip.
        assert_eq!(Magic::sniff(&[0x1f, 0x8b, 0x07, 0]), Magic::Plain);
        assert_eq!(Magic::sniff(b"BZh91AY"), Magic::Bzip2);
        assert_eq!(
            Magic::sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0x00, 0]),
            Magic::Xz
        );
        assert_eq!(Magic::sniff(&[0xfd, b'7', b'z', b'X', b'Z']), Magic::Plain);
        assert_eq!(Magic::sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Magic::Zstd);
        assert_eq!(Magic::sniff(b""), Magic::Plain);
        assert_eq!(Compression::sniff(b"BZh91AY"), Compression::None);
    }

    fn xz(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        liblzma::read::XzEncoder::new(bytes, 6)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn archives_in_every_format_read_back() {
        let data = sample(300_000);
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&data).unwrap();
        let mut packed = vec![xz(&data), bz.finish().unwrap(), data.clone()];
        for kind in [Compression::Gzip, Compression::Zstd] {
            let mut c = Compressor::new(kind, Vec::new()).unwrap();
            c.write_all(&data).unwrap();
            packed.push(c.finish().unwrap());
        }
        for bytes in packed {
            let magic = Magic::sniff(&bytes);
            let mut back = Vec::new();
            decompress_archive(io::Cursor::new(bytes))
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == data, "{magic:?} round trip");
        }
    }

    #[test]
    fn a_truncated_xz_is_an_error_not_a_short_read() {
        let compressed = xz(&vec![b'x'; 200_000]);
        let cut = compressed[..compressed.len() - 20].to_vec();
        let mut decoded = Vec::new();
        let result = decompress_archive(io::Cursor::new(cut))
            .unwrap()
            .read_to_end(&mut decoded);
        assert!(
            result.is_err(),
            "read {} bytes without error",
            decoded.len()
        );
    }

    /// Two xz streams one after the other read as one, as `xz -d` (and so
    /// `docker import` and ADD) reads them.
    #[test]
    fn concatenated_xz_streams_read_on() {
        let mut both = xz(b"first\n");
        both.extend_from_slice(&xz(b"second\n"));
        let mut back = String::new();
        decompress_archive(io::Cursor::new(both))
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "first\nsecond\n");
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
