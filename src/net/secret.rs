//! [`WorkerSecret`]: the secret a launcher gives one worker process, by which
//! the worker tells its host's connections from anyone else's. It travels to
//! the transport attached to that process's handle
//! ([`WorkerProcess::attachments`](crate::WorkerProcess::attachments)).

use std::fmt;
use std::io;
use std::sync::Arc;

use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The length of a secret [`WorkerSecret::generate`] makes: 256 bits.
pub const SECRET_LEN: usize = 32;

/// The shortest secret [`WorkerSecret::from_hex`] accepts: 128 bits.
pub const MIN_SECRET_LEN: usize = 16;

/// The longest secret [`WorkerSecret::from_hex`] accepts; HMAC-SHA256 would hash
/// a longer key down to 32 bytes anyway.
const MAX_SECRET_LEN: usize = 64;

/// The length of a handshake answer: an HMAC-SHA256 tag.
pub(crate) const MAC_LEN: usize = 32;

/// Put before the worker's nonce in the MAC, so that a tag made for this
/// handshake version means nothing anywhere else.
const MAC_CONTEXT: &[u8] = b"async-worker-pool handshake v1: host answer\0";

/// A secret shared by a host and one worker process it launched, fresh for each
/// launch.
///
/// The worker gets it in its environment
/// ([`SECRET_ENV`](crate::process::SECRET_ENV), never on its command line, which
/// every user can read) and serves a connection only once the host has proved
/// that it knows the secret: see `docs/protocol.md`, "Handshake".
///
/// Its `Debug` output does not show it; [`to_hex`](Self::to_hex) does, for a
/// launcher that must hand it to its worker.
#[derive(Clone)]
pub struct WorkerSecret {
    bytes: Arc<[u8]>,
}

impl fmt::Debug for WorkerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkerSecret(..)")
    }
}

/// A secret given as text that is not 32 to 128 hex digits (16 to 64 bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a worker secret must be {min} to {max} hexadecimal digits (16 to 64 bytes)",
    min = 2 * MIN_SECRET_LEN,
    max = 2 * MAX_SECRET_LEN
)]
pub struct InvalidSecret;

impl WorkerSecret {
    /// A fresh secret of [`SECRET_LEN`] bytes from the operating system's
    /// random number generator.
    ///
    /// # Errors
    ///
    /// If the operating system cannot provide random bytes.
    pub fn generate() -> io::Result<Self> {
        let mut bytes = [0; SECRET_LEN];
        getrandom::fill(&mut bytes).map_err(io::Error::other)?;
        Ok(Self {
            bytes: Arc::new(bytes),
        })
    }

    /// Reads a secret written by [`to_hex`](Self::to_hex), as a worker written
    /// in Rust would read it from its environment.
    ///
    /// # Errors
    ///
    /// [`InvalidSecret`] unless `hex` is an even number of hex digits, 32 to 128
    /// of them.
    pub fn from_hex(hex: &str) -> Result<Self, InvalidSecret> {
        let digits = hex.as_bytes();
        if digits.len() % 2 != 0
            || !(2 * MIN_SECRET_LEN..=2 * MAX_SECRET_LEN).contains(&digits.len())
        {
            return Err(InvalidSecret);
        }
        let nibble = |digit: u8| char::from(digit).to_digit(16).ok_or(InvalidSecret);
        let bytes = digits
            .chunks_exact(2)
            .map(|pair| Ok((nibble(pair[0])? * 16 + nibble(pair[1])?) as u8))
            .collect::<Result<Vec<u8>, InvalidSecret>>()?;
        Ok(Self {
            bytes: bytes.into(),
        })
    }

    /// The secret as lowercase hex digits, the form a worker finds in
    /// [`SECRET_ENV`](crate::process::SECRET_ENV).
    pub fn to_hex(&self) -> String {
        self.bytes
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// The host's answer to a worker's `nonce`:
    /// `HMAC-SHA256(secret, context || nonce)`, the context naming the
    /// handshake version.
    pub fn answer(&self, nonce: &[u8]) -> [u8; MAC_LEN] {
        self.mac(nonce).finalize().into_bytes().into()
    }

    /// Whether `answer` is the right answer to `nonce`, compared in constant
    /// time: what a worker written in Rust checks.
    pub fn verify(&self, nonce: &[u8], answer: &[u8]) -> bool {
        self.mac(nonce).verify_slice(answer).is_ok()
    }

    fn mac(&self, nonce: &[u8]) -> HmacSha256 {
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.bytes)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        mac.update(MAC_CONTEXT);
        mac.update(nonce);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_256_bits_and_differ() {
        let (a, b) = (
            WorkerSecret::generate().unwrap(),
            WorkerSecret::generate().unwrap(),
        );
        assert_eq!(a.to_hex().len(), 2 * SECRET_LEN);
        assert_ne!(a.to_hex(), b.to_hex());
        assert_eq!(format!("{a:?}"), "WorkerSecret(..)");
    }

    #[test]
    fn hex_round_trips_and_bad_hex_is_refused() {
        let secret = WorkerSecret::generate().unwrap();
        let again = WorkerSecret::from_hex(&secret.to_hex()).unwrap();
        assert_eq!(again.to_hex(), secret.to_hex());
        assert_eq!(
            WorkerSecret::from_hex(&"AB".repeat(16)).unwrap().to_hex(),
            "ab".repeat(16)
        );
        for bad in [
            "",
            &"a".repeat(31),
            &"a".repeat(33),
            &"a".repeat(130),
            &format!("{}zz", "a".repeat(30)),
            &format!("{}é", "a".repeat(30)),
        ] {
            assert_eq!(
                WorkerSecret::from_hex(bad).unwrap_err(),
                InvalidSecret,
                "{bad}"
            );
        }
    }

    #[test]
    fn the_answer_is_hmac_sha256_over_the_context_and_nonce() {
        // RFC 4231's key "Jefe" and message, with the context in front; the
        // value was computed with Python's hmac module, and the Python worker's
        // tests check the same one, so both sides agree on the construction.
        let secret = WorkerSecret {
            bytes: Arc::from(&b"Jefe"[..]),
        };
        let nonce = b"what do ya want for nothing?";
        let expected = "8ac176022ead97dac62bba1c55b1492fef11f741d17946310396e43af9834816";
        let answer = secret.answer(nonce);
        let hex: String = answer.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(hex, expected);
        assert!(secret.verify(nonce, &answer));
        let mut wrong = answer;
        wrong[31] ^= 1;
        assert!(!secret.verify(nonce, &wrong));
        assert!(!secret.verify(nonce, &answer[..31]));
        assert!(!secret.verify(b"another nonce", &answer));
    }
}
