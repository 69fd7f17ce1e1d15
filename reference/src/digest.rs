//! sha256 digests: the names of blobs, manifests, diff ids and chain ids.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::ReferenceError;

const PREFIX: &str = "sha256:";

/// A validated `sha256:<64 lowercase hex>` digest. Only sha256 is accepted:
/// the store names blobs by it and it is what registries and the OCI image
/// spec use (go-digest's `Validate` likewise refuses uppercase hex and any
/// other length).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>`.
    pub fn parse(input: &str) -> Result<Digest, ReferenceError> {
        let err = |reason: &str| ReferenceError::InvalidDigest {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (algorithm, hex) = input
            .split_once(':')
            .ok_or_else(|| err("expected sha256:<64 lowercase hex digits>"))?;
        if algorithm != "sha256" {
            return Err(err(&format!(
                "unsupported algorithm {algorithm:?}, only sha256 digests are supported"
            )));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err("a sha256 digest is 64 lowercase hex digits"));
        }
        Ok(Digest(input.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hash(Sha256::digest(bytes).as_slice())
    }

    /// Builds a digest from the 32 bytes a finished sha256 hasher gave.
    pub fn from_hash(raw: &[u8]) -> Digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(PREFIX.len() + raw.len() * 2);
        out.push_str(PREFIX);
        for b in raw {
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
        Digest(out)
    }

    /// The digest and length of everything `reader` yields.
    pub fn of_reader(mut reader: impl Read) -> io::Result<(Digest, u64)> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut count = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            count += n as u64;
        }
        Ok((Digest::from_hash(hasher.finalize().as_slice()), count))
    }

    /// Always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The 64 hex digits, without `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// The first 12 hex digits, as `docker images` shows image ids.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hashes_and_round_trips() {
        let d = Digest::of(b"");
        assert_eq!(d.as_str(), EMPTY);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(format!("{d:?}"), EMPTY);
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.hex(), &EMPTY[7..]);
        assert_eq!(d.short(), "e3b0c44298fc");
        assert_eq!(Digest::parse(EMPTY).unwrap(), d);
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
        let (from_reader, len) = Digest::of_reader(&b"hello"[..]).unwrap();
        assert_eq!((from_reader, len), (Digest::of(b"hello"), 5));
    }

    #[test]
    fn serde_validates() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:00\"").is_err());
    }

    #[test]
    fn rejects_and_names_the_input() {
        let upper = EMPTY.to_uppercase();
        let upper_hex = format!("sha256:{}", EMPTY[7..].to_uppercase());
        let long = format!("{EMPTY}0");
        let sha512 = format!("sha512:{}", "a".repeat(128));
        let md5 = format!("md5:{}", "a".repeat(32));
        for (bad, why) in [
            ("", "expected sha256"),
            ("sha256", "expected sha256"),
            ("sha256:", "64 lowercase hex"),
            ("sha256:E3B0", "64 lowercase hex"),
            ("sha256:abc", "64 lowercase hex"),
            (&upper_hex, "64 lowercase hex"),
            (&upper, "unsupported algorithm \"SHA256\""),
            (&long, "64 lowercase hex"),
            (&sha512, "only sha256"),
            (&md5, "only sha256"),
            ("sha256:zz", "64 lowercase hex"),
        ] {
            let err = Digest::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err} names {bad:?}");
            assert!(err.contains(why), "{bad:?}: {err} should say {why:?}");
        }
    }
}
