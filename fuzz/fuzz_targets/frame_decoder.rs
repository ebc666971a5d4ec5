//! The frame decoder exactly as a `SocketTransport` connection runs it (the
//! length-delimited codec with a 64 KiB limit), fed a worker's byte stream in
//! chunks, with every frame it yields passed on to the envelope parsers.
//!
//! The first byte of the input picks the chunk size, so that frames split
//! across reads are covered as well as whole ones. libFuzzer's `-rss_limit_mb`
//! and `-malloc_limit_mb` catch a frame that is allocated from its length
//! prefix alone.

#![no_main]

use async_worker_pool::net::{Challenge, Ready, Reply, SocketTransport};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|input: &[u8]| {
    let Some((&chunk, stream)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = SocketTransport::new().max_frame_bytes(LIMIT).frame_codec();
    let mut buffer = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= LIMIT, "a frame over the limit was yielded");
                    let _ = Challenge::decode(&frame);
                    let _ = Ready::decode(&frame);
                    let _ = Reply::decode(frame.freeze());
                }
                Ok(None) => break,
                // The connection is closed after any error; so is this stream.
                Err(_) => return,
            }
        }
    }
    let _ = codec.decode_eof(&mut buffer);
});
