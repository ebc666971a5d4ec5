//! The response envelope parsers: `Reply::decode` and `Ready::decode` on any
//! payload must return, never panic, and never allocate more than the payload
//! they were given could justify.

#![no_main]

use async_worker_pool::net::{Ready, Reply};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let _ = Reply::decode(Bytes::copy_from_slice(payload));
    let _ = Ready::decode(payload);
});
