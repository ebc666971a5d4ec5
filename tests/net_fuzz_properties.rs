//! The fuzz targets of `fuzz/` as seeded property tests, so that `cargo test`
//! checks the same properties on stable Rust: whatever bytes a worker sends,
//! the frame decoder, the envelope parsers and the handshake parser return (no
//! panic, no hang), and they never allocate more than the frame limit allows;
//! a frame that announces 1 GiB is refused from its length prefix; only a
//! well-formed version-1 challenge passes the handshake parser.

#[path = "support/alloc_counter.rs"]
mod alloc_counter;

use alloc_counter::peak_during;
use async_worker_pool::net::{
    Challenge, ProtocolError, Ready, Reply, SocketTransport, WorkerSecret,
};
use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// The frame limit of these tests, as small as a real host might set it, so
/// that an allocation from an announced length would stand out.
const LIMIT: usize = 64 * 1024;
const SEED: u64 = 0xfa11_0ff5;

fn envelope(kind: u8, meta: &str, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(body);
    out
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn valid_envelopes() -> Vec<Vec<u8>> {
    vec![
        envelope(
            b'O',
            r#"{"status":201,"headers":[["a","b"],["a","c"]]}"#,
            b"body",
        ),
        envelope(b'O', "{}", b""),
        envelope(b'X', r#"{"type":"ValueError","message":"m"}"#, b"Traceback"),
        envelope(b'R', r#"{"pid":12,"worker_id":0}"#, b""),
        envelope(b'E', "{}", b"event"),
        challenge(1),
    ]
}

/// A handshake challenge of `version` with a nonce of 32 counting bytes.
fn challenge(version: u8) -> Vec<u8> {
    let mut out = vec![b'C', version];
    out.extend(0..32);
    out
}

fn random_bytes(rng: &mut fastrand::Rng, max: usize) -> Vec<u8> {
    let len = rng.usize(0..max);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// One envelope payload: random bytes, a valid envelope cut short or with
/// bytes changed, or a plausible header with JSON-like meta.
fn payload(rng: &mut fastrand::Rng, valid: &[Vec<u8>]) -> Vec<u8> {
    let alphabet = b"ROXE{}[]\":, 0123456789-.estatusheaderstypemessagepidworker_id\\u\xff\x00";
    match rng.u8(0..5) {
        0 => random_bytes(rng, 96),
        1 => {
            let whole = &valid[rng.usize(..valid.len())];
            whole[..rng.usize(..=whole.len())].to_vec()
        }
        2 => {
            let mut bytes = valid[rng.usize(..valid.len())].clone();
            for _ in 0..rng.usize(1..5) {
                let at = rng.usize(..bytes.len());
                bytes[at] = rng.u8(..);
            }
            bytes
        }
        3 => {
            // Deep nesting and long strings: what a JSON parser finds hardest.
            let depth = rng.usize(0..200);
            let meta = format!(
                "{{\"headers\":{}\"{}\"{}}}",
                "[".repeat(depth),
                "x".repeat(rng.usize(0..2000)),
                "]".repeat(depth)
            );
            envelope(*b"OXR".get(rng.usize(..3)).unwrap(), &meta, b"")
        }
        _ => {
            let len = rng.usize(0..64);
            let meta: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let mut bytes = vec![*b"ROXEZC".get(rng.usize(..6)).unwrap()];
            let claimed = if rng.bool() {
                meta.len() as u32
            } else {
                rng.u32(..)
            };
            bytes.extend_from_slice(&claimed.to_be_bytes());
            bytes.extend_from_slice(&meta);
            bytes
        }
    }
}

/// What the `envelope` fuzz target does with one input.
fn decode_envelope(input: &[u8]) {
    let _ = Reply::decode(Bytes::copy_from_slice(input));
    let _ = Ready::decode(input);
    let _ = Challenge::decode(input);
}

/// What the `frame_decoder` fuzz target does with one input: the stream after
/// the first byte, in chunks of the first byte's size. Returns the frames seen.
fn decode_stream(input: &[u8]) -> usize {
    let Some((&chunk, stream)) = input.split_first() else {
        return 0;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = SocketTransport::new().max_frame_bytes(LIMIT).frame_codec();
    let mut buffer = BytesMut::new();
    let mut frames = 0;
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        // Each frame takes at least its 4-byte prefix from the buffer, so a
        // decoder that yields more than this is going round in circles.
        for _ in 0..=buffer.len() / 4 + 1 {
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= LIMIT, "a frame over the limit was yielded");
                    frames += 1;
                    decode_envelope(&frame);
                }
                Ok(None) => break,
                Err(_) => return frames,
            }
        }
    }
    let _ = codec.decode_eof(&mut buffer);
    frames
}

/// A worker's byte stream: frames that are valid, broken, oversized,
/// announced longer than they are, or random bytes altogether.
fn stream(rng: &mut fastrand::Rng, valid: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![rng.u8(..)];
    for _ in 0..rng.usize(1..6) {
        match rng.u8(0..5) {
            0 => out.extend(frame(&payload(rng, valid))),
            1 => out.extend(frame(&valid[rng.usize(..valid.len())])),
            2 => out.extend_from_slice(&rng.u32(LIMIT as u32 + 1..).to_be_bytes()),
            3 => {
                out.extend_from_slice(&rng.u32(..LIMIT as u32).to_be_bytes());
                out.extend(random_bytes(rng, 64));
            }
            _ => out.extend(random_bytes(rng, 64)),
        }
    }
    out
}

#[test]
fn envelope_parsers_return_on_any_payload_within_the_frame_limit() {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let valid = valid_envelopes();
    let mut worst = 0;
    for _ in 0..30_000 {
        let input = payload(&mut rng, &valid);
        let ((), peak) = peak_during(|| decode_envelope(&input));
        assert!(
            peak <= 2 * LIMIT,
            "{peak} bytes for a {}-byte payload",
            input.len()
        );
        worst = worst.max(peak);
    }
    println!("envelope parsers: at most {worst} bytes allocated for one payload");
}

#[test]
fn frame_decoder_returns_on_any_stream_and_never_yields_an_oversized_frame() {
    let mut rng = fastrand::Rng::with_seed(SEED ^ 1);
    let valid = valid_envelopes();
    let (mut frames, mut worst) = (0, 0);
    for _ in 0..20_000 {
        let input = stream(&mut rng, &valid);
        let (seen, peak) = peak_during(|| decode_stream(&input));
        // The announced-but-short frames reserve up to their announced length,
        // which is under the limit: that is the whole allowance.
        assert!(
            peak <= 2 * LIMIT,
            "{peak} bytes for a {}-byte stream",
            input.len()
        );
        frames += seen;
        worst = worst.max(peak);
    }
    assert!(
        frames > 10_000,
        "the generator produced only {frames} frames"
    );
    println!("frame decoder: {frames} frames decoded, at most {worst} bytes allocated");
}

#[test]
fn well_formed_frames_survive_any_split_into_reads() {
    let mut rng = fastrand::Rng::with_seed(SEED ^ 2);
    let valid = valid_envelopes();
    for _ in 0..2_000 {
        let payloads: Vec<&Vec<u8>> = (0..rng.usize(1..5))
            .map(|_| &valid[rng.usize(..valid.len())])
            .collect();
        let mut input = vec![rng.u8(1..)];
        for payload in &payloads {
            input.extend(frame(payload));
        }
        assert_eq!(decode_stream(&input), payloads.len(), "chunk {}", input[0]);
    }
}

#[test]
fn a_frame_announcing_one_gib_is_refused_without_allocating_it() {
    for limit in [LIMIT, async_worker_pool::net::DEFAULT_MAX_FRAME_BYTES] {
        let mut codec = SocketTransport::new().max_frame_bytes(limit).frame_codec();
        let mut buffer = BytesMut::new();
        buffer.put_u32(1 << 30);
        buffer.put_slice(&[b'O'; 1024]);
        let (result, peak) = peak_during(|| codec.decode(&mut buffer));
        assert!(result.is_err(), "a 1 GiB frame was accepted: {result:?}");
        assert!(
            peak < 2 * limit,
            "{peak} bytes allocated for a refused frame"
        );
        println!("1 GiB frame refused at limit {limit} with {peak} bytes allocated");
    }
}

#[test]
fn a_frame_at_the_limit_is_accepted_and_one_byte_over_is_refused() {
    let mut codec = SocketTransport::new().max_frame_bytes(LIMIT).frame_codec();
    let mut at = BytesMut::from(&frame(&vec![0; LIMIT])[..]);
    assert_eq!(codec.decode(&mut at).unwrap().unwrap().len(), LIMIT);
    let mut over = BytesMut::new();
    over.put_u32(LIMIT as u32 + 1);
    assert!(codec.decode(&mut over).is_err());
}

/// What the `handshake` fuzz target checks for one input; returns whether the
/// input was accepted as a challenge.
fn check_challenge(input: &[u8], secret: &WorkerSecret) -> Result<(), ProtocolError> {
    let challenge = Challenge::decode(input)?;
    assert_eq!(input.len(), 34, "accepted {input:?}");
    assert_eq!(&input[..2], b"C\x01", "accepted {input:?}");
    assert_eq!(&challenge.nonce()[..], &input[2..]);
    let mut answer = BytesMut::new();
    challenge.encode_answer(secret, &mut answer);
    assert_eq!(&answer[..2], b"A\x01");
    assert!(secret.verify(challenge.nonce(), &answer[2..]));
    Ok(())
}

#[test]
fn handshake_parser_accepts_only_version_1_challenges_of_34_bytes() {
    let mut rng = fastrand::Rng::with_seed(SEED ^ 3);
    let secret = WorkerSecret::generate().unwrap();
    let valid = valid_envelopes();
    let (mut accepted, mut other_version, mut bad_length, mut worst) = (0, 0, 0, 0);
    for round in 0..30_000 {
        let input = match round % 3 {
            // A challenge of any version, cut or grown, with bits flipped.
            0 => {
                let mut bytes = challenge(*[0, 1, 1, 2].get(rng.usize(..4)).unwrap());
                if rng.bool() {
                    bytes.truncate(rng.usize(..=bytes.len()));
                }
                if rng.u8(..4) == 0 {
                    bytes.extend(random_bytes(&mut rng, 4));
                }
                if rng.bool() && !bytes.is_empty() {
                    let at = rng.usize(..bytes.len());
                    bytes[at] ^= 1 << rng.u8(0..8);
                }
                bytes
            }
            1 => payload(&mut rng, &valid),
            _ => random_bytes(&mut rng, 64),
        };
        let (result, peak) = peak_during(|| check_challenge(&input, &secret));
        match result {
            Ok(()) => accepted += 1,
            Err(ProtocolError::UnsupportedHandshakeVersion { version }) => {
                assert_ne!(version, 1);
                other_version += 1;
            }
            Err(ProtocolError::ChallengeLength { len }) => {
                assert_ne!(len, 34);
                bad_length += 1;
            }
            Err(_) => {}
        }
        // Parsing allocates nothing; the answer needs its 34 bytes.
        assert!(
            peak <= 256,
            "{peak} bytes for a {}-byte payload",
            input.len()
        );
        worst = worst.max(peak);
    }
    // The generator must reach every outcome, or the test proves little.
    assert!(
        accepted > 500 && other_version > 500 && bad_length > 500,
        "accepted {accepted}, other version {other_version}, bad length {bad_length}"
    );
    println!(
        "handshake parser: {accepted} accepted, {other_version} of another version, \
         {bad_length} of a bad length, at most {worst} bytes allocated"
    );
}
