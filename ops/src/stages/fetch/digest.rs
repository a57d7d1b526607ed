//! Checksums of fetched files: computed while the bytes stream past (so a
//! multi-GB download is read once), compared with the recipe's pinned hex.
//!
//! The pinned checksum is what makes a fetch reproducible: the stage key is
//! computed from the parameters alone, so the digest is the only thing that
//! ties a cached result to the bytes a fresh machine would download.

use anyhow::bail;
use sha2::Digest as _;

/// Hex digits of a SHA-256 or BLAKE3 digest.
pub const HEX_LEN: usize = 64;

/// Whether `hex` is a well-formed digest (64 hex digits, any case).
pub fn is_hex_digest(hex: &str) -> bool {
    hex.len() == HEX_LEN && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The digests a file must have; at least one is set (checked at plan time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub sha256: Option<String>,
    pub blake3: Option<String>,
}

/// Hashes bytes with exactly the algorithms that are pinned.
pub struct Hashing {
    sha256: Option<sha2::Sha256>,
    blake3: Option<blake3::Hasher>,
}

/// The digests computed, in lowercase hex.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actual {
    pub sha256: Option<String>,
    pub blake3: Option<String>,
}

impl Hashing {
    pub fn for_expected(expected: &Expected) -> Self {
        Self {
            sha256: expected.sha256.as_ref().map(|_| sha2::Sha256::new()),
            blake3: expected.blake3.as_ref().map(|_| blake3::Hasher::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        if let Some(h) = &mut self.sha256 {
            h.update(bytes);
        }
        if let Some(h) = &mut self.blake3 {
            h.update(bytes);
        }
    }

    pub fn finish(self) -> Actual {
        Actual {
            sha256: self.sha256.map(|h| hex(&h.finalize())),
            blake3: self.blake3.map(|h| h.finalize().to_hex().to_string()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares computed digests with the pinned ones; the error names the file
/// and both values of every digest that differs.
pub fn verify(name: &str, expected: &Expected, actual: &Actual) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (algorithm, want, got) in [
        ("sha256", &expected.sha256, &actual.sha256),
        ("blake3", &expected.blake3, &actual.blake3),
    ] {
        if let Some(want) = want {
            let got = got.as_deref().unwrap_or("(not computed)");
            if !want.eq_ignore_ascii_case(got) {
                problems.push(format!(
                    "{algorithm}: expected {}, actual {got}",
                    want.to_ascii_lowercase()
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "checksum mismatch for `{name}` (nothing was stored):\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// Hashes a file already on disk (files a client program downloaded),
/// polling for an interrupt between chunks.
pub fn hash_file(path: &std::path::Path, expected: &Expected) -> anyhow::Result<Actual> {
    let mut hashing = Hashing::for_expected(expected);
    let mut file = std::fs::File::open(path)?;
    super::copy::copy_polling(&mut file, &mut std::io::sink(), |chunk| {
        hashing.update(chunk);
    })?;
    Ok(hashing.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    // SHA-256 and BLAKE3 of "abc" (FIPS 180-2 and the BLAKE3 reference).
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn both(sha: &str, b3: &str) -> Expected {
        Expected {
            sha256: Some(sha.into()),
            blake3: Some(b3.into()),
        }
    }

    #[test]
    fn computes_the_pinned_algorithms_only() {
        let b3 = blake3::hash(b"abc").to_hex().to_string();
        let mut h = Hashing::for_expected(&both(ABC_SHA256, &b3));
        h.update(b"a");
        h.update(b"bc");
        let actual = h.finish();
        assert_eq!(actual.sha256.as_deref(), Some(ABC_SHA256));
        assert_eq!(actual.blake3.as_deref(), Some(b3.as_str()));
        verify("abc.txt", &both(&ABC_SHA256.to_uppercase(), &b3), &actual).unwrap();

        let only_sha = Expected {
            sha256: Some(ABC_SHA256.into()),
            blake3: None,
        };
        assert_eq!(Hashing::for_expected(&only_sha).finish().blake3, None);
    }

    #[test]
    fn mismatch_names_the_file_and_both_values() {
        let mut h = Hashing::for_expected(&Expected {
            sha256: Some("0".repeat(64)),
            blake3: None,
        });
        h.update(b"abc");
        let err = verify(
            "model.gguf",
            &Expected {
                sha256: Some("0".repeat(64)),
                blake3: None,
            },
            &h.finish(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`model.gguf`"), "{err}");
        assert!(
            err.contains(&format!("expected {}", "0".repeat(64))),
            "{err}"
        );
        assert!(err.contains(&format!("actual {ABC_SHA256}")), "{err}");
    }

    #[test]
    fn hex_digests_are_64_hex_digits() {
        assert!(is_hex_digest(ABC_SHA256));
        assert!(is_hex_digest(&ABC_SHA256.to_uppercase()));
        assert!(!is_hex_digest(&ABC_SHA256[..63]));
        assert!(!is_hex_digest(&format!("{}g", &ABC_SHA256[..63])));
    }
}
