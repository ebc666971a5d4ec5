//! The handshake that opens every connection to a worker that has a secret:
//! the worker's challenge `C` and the host's answer `A` (`docs/protocol.md`,
//! "Handshake").
//!
//! ```text
//! challenge, worker to host:  'C' | version u8 | nonce: 32 bytes
//! answer, host to worker:     'A' | version u8 | HMAC-SHA256(secret, context || nonce): 32 bytes
//! ```

use bytes::{BufMut, BytesMut};

use super::error::ProtocolError;
use super::secret::{MAC_LEN, WorkerSecret};

/// The kind byte of a worker's challenge.
pub(crate) const CHALLENGE: u8 = b'C';

/// The kind byte of the host's answer.
const ANSWER: u8 = b'A';

/// The only handshake version there is so far.
pub const HANDSHAKE_VERSION: u8 = 1;

/// The length of a worker's nonce.
pub const NONCE_LEN: usize = 32;

/// Kind byte and version byte.
const HEADER_LEN: usize = 2;

/// A worker's challenge: the nonce the host must answer (kind `C`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    nonce: [u8; NONCE_LEN],
}

impl Challenge {
    /// Decodes a challenge from a frame payload.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] for anything but a version-1 challenge of exactly 34
    /// bytes: [`ProtocolError::UnsupportedHandshakeVersion`] for another version
    /// (checked before the length, which a later version may change). Never
    /// panics, whatever the input.
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let Some((&kind, rest)) = payload.split_first() else {
            return Err(ProtocolError::Empty);
        };
        if kind != CHALLENGE {
            return Err(ProtocolError::UnexpectedKind {
                kind,
                expected: "`C`",
            });
        }
        let Some((&version, nonce)) = rest.split_first() else {
            return Err(ProtocolError::ChallengeLength { len: payload.len() });
        };
        if version != HANDSHAKE_VERSION {
            return Err(ProtocolError::UnsupportedHandshakeVersion { version });
        }
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce)
            .map_err(|_| ProtocolError::ChallengeLength { len: payload.len() })?;
        Ok(Self { nonce })
    }

    /// The worker's nonce.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// Appends the answer envelope for `secret` (the frame payload, without its
    /// length prefix) to `dst`.
    pub fn encode_answer(&self, secret: &WorkerSecret, dst: &mut BytesMut) {
        dst.reserve(HEADER_LEN + MAC_LEN);
        dst.put_u8(ANSWER);
        dst.put_u8(HANDSHAKE_VERSION);
        dst.put_slice(&secret.answer(&self.nonce));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(version: u8, nonce_len: usize) -> Vec<u8> {
        let mut out = vec![CHALLENGE, version];
        out.extend((0..nonce_len).map(|i| i as u8));
        out
    }

    #[test]
    fn a_version_1_challenge_decodes_and_is_answered_with_the_mac_of_its_nonce() {
        let challenge = Challenge::decode(&challenge(1, NONCE_LEN)).unwrap();
        let expected: Vec<u8> = (0..NONCE_LEN as u8).collect();
        assert_eq!(&challenge.nonce()[..], &expected[..]);
        let secret = WorkerSecret::generate().unwrap();
        let mut answer = BytesMut::from(&b"prefix"[..]);
        challenge.encode_answer(&secret, &mut answer);
        assert_eq!(&answer[..8], b"prefixA\x01");
        assert_eq!(answer.len(), 6 + 2 + MAC_LEN);
        assert!(secret.verify(challenge.nonce(), &answer[8..]));
    }

    #[test]
    fn anything_else_is_a_typed_error() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "Empty"),
            (vec![b'R'], "UnexpectedKind"),
            (vec![CHALLENGE], "ChallengeLength"),
            (challenge(1, NONCE_LEN - 1), "ChallengeLength"),
            (challenge(1, NONCE_LEN + 1), "ChallengeLength"),
            (challenge(2, NONCE_LEN), "UnsupportedHandshakeVersion"),
            (challenge(0, 3), "UnsupportedHandshakeVersion"),
        ];
        for (payload, want) in cases {
            let err = Challenge::decode(&payload).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{payload:?}: {err:?}");
        }
    }
}
