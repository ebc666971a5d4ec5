//! The parsers of what a worker sends: `Reply::decode`, `Ready::decode` and
//! the handshake's `Challenge::decode` on any payload must return, never
//! panic, and never allocate more than the payload they were given could
//! justify.

#![no_main]

use async_worker_pool::net::{Challenge, Ready, Reply};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let _ = Reply::decode(Bytes::copy_from_slice(payload));
    let _ = Ready::decode(payload);
    let _ = Challenge::decode(payload);
});
