//! Content hashes recorded as provenance.

use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex BLAKE3 (256-bit) of `bytes`.
pub fn blake3_hex(bytes: &[u8]) -> String {
    hex(blake3::hash(bytes).as_bytes())
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest a converted file records of its source (`--source-hash`).
///
/// BLAKE3 is the default: a 256-bit cryptographic hash like SHA-256, about
/// four times as fast here (0.06 s against 0.28 s for 320 MiB, one core),
/// which is what lets `convert` run near the speed of copying its input.
/// SHA-256 is there for matching a file against a digest published as
/// SHA-256 (the Hugging Face Hub's LFS object ids, `sha256sum`). The
/// metadata key names the algorithm, so a reader never has to guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceHash {
    #[default]
    Blake3,
    Sha256,
}

impl SourceHash {
    /// The algorithm's name, as `--source-hash` takes it.
    pub fn name(self) -> &'static str {
        match self {
            SourceHash::Blake3 => "blake3",
            SourceHash::Sha256 => "sha256",
        }
    }

    /// The GGUF metadata key (or safetensors metadata key) holding the digest.
    pub fn key(self) -> String {
        format!("loraguard.source.{}", self.name())
    }

    /// Lower-case hex digest of `bytes`.
    pub fn hex(self, bytes: &[u8]) -> String {
        match self {
            SourceHash::Blake3 => blake3_hex(bytes),
            SourceHash::Sha256 => sha256_hex(bytes),
        }
    }

    /// Parse `blake3` or `sha256`, in any case.
    pub fn parse(s: &str) -> Option<Self> {
        [SourceHash::Blake3, SourceHash::Sha256]
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_their_published_test_vectors() {
        // FIPS 180-2 and the BLAKE3 reference implementation's test vectors.
        assert_eq!(
            SourceHash::Sha256.hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            SourceHash::Blake3.hex(b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(SourceHash::Blake3.key(), "loraguard.source.blake3");
        assert_eq!(SourceHash::parse("SHA256"), Some(SourceHash::Sha256));
        assert_eq!(SourceHash::parse("md5"), None);
    }
}
