//! The handshake parser: `Challenge::decode` on any payload must return,
//! never panic, and accept only a version-1 challenge of exactly 34 bytes,
//! whose answer then verifies with the secret it was made with.

#![no_main]

use async_worker_pool::net::{Challenge, WorkerSecret};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let Ok(challenge) = Challenge::decode(payload) else {
        return;
    };
    assert_eq!(payload.len(), 34);
    assert_eq!(&payload[..2], b"C\x01");
    assert_eq!(&challenge.nonce()[..], &payload[2..]);
    let secret = WorkerSecret::from_hex(&"42".repeat(32)).expect("a valid secret");
    let mut answer = BytesMut::new();
    challenge.encode_answer(&secret, &mut answer);
    assert_eq!(&answer[..2], b"A\x01");
    assert!(secret.verify(challenge.nonce(), &answer[2..]));
});
