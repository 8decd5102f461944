//! SPDY/3.1 frames as a streaming client sends them: frame headers, every control frame's payload,
//! header blocks through the connection's zlib context, long DATA frames in pieces. The input is
//! decoded twice, all at once and in chunks of the sizes its first byte picks, and both must give
//! the same frames; sizes stay within the decoder's limits whatever the length fields say; every
//! control frame decoded re-encodes to itself.

#![no_main]

use std::collections::BTreeMap;

use berth::streaming::spdy::frame::{
    Frame, FrameDecoder, FrameEncoder, Headers, MAX_CONTROL_PAYLOAD, MAX_DATA_PIECE, MAX_HEADER_BLOCK,
    MAX_HEADER_COUNT,
};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// What the buffer may grow to: a control frame or a DATA piece, a chunk, and the allocator's
/// rounding; never what a length field announces.
const MAX_BUFFER: usize = 4 * (MAX_CONTROL_PAYLOAD + MAX_DATA_PIECE);

/// Decodes `input` arriving in chunks of `chunk` bytes (all at once for 0); consecutive DATA
/// pieces of one stream merged, so that how the bytes arrived does not show.
fn decode(input: &[u8], chunk: usize) -> (Vec<Frame>, bool) {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut frames: Vec<Frame> = Vec::new();
    let chunk = if chunk == 0 { input.len().max(1) } else { chunk };
    for part in input.chunks(chunk) {
        buf.extend_from_slice(part);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    check(&frame);
                    push_merged(&mut frames, frame);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        assert!(buf.capacity() <= MAX_BUFFER, "buffer grew to {}", buf.capacity());
    }
    (frames, false)
}

fn push_merged(frames: &mut Vec<Frame>, frame: Frame) {
    if let (
        Some(Frame::Data { stream_id: a, flags: fa, data: da }),
        Frame::Data { stream_id: b, flags: fb, data: db },
    ) = (frames.last_mut(), &frame)
        && a == b
    {
        let mut joined = da.to_vec();
        joined.extend_from_slice(db);
        *da = joined.into();
        *fa |= fb;
        return;
    }
    frames.push(frame);
}

fn headers_of(frame: &Frame) -> Option<&Headers> {
    match frame {
        Frame::SynStream { headers, .. }
        | Frame::SynReply { headers, .. }
        | Frame::Headers { headers, .. } => Some(headers),
        _ => None,
    }
}

fn check(frame: &Frame) {
    if let Frame::Data { data, .. } = frame {
        assert!(data.len() <= MAX_DATA_PIECE, "a DATA piece of {} bytes", data.len());
    }
    if let Some(headers) = headers_of(frame) {
        assert!(headers.len() <= MAX_HEADER_COUNT, "{} headers", headers.len());
        let values: usize = headers.iter().map(|(_, v)| v.len()).sum();
        assert!(values <= MAX_HEADER_BLOCK, "{values} bytes of header values");
    }
}

/// Headers as the encoder groups them: each name's values in order.
fn grouped(headers: &Headers) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, v) in headers.iter() {
        out.entry(n.to_string()).or_default().push(v.to_string());
    }
    out
}

fn roundtrip(frame: &Frame) {
    if matches!(frame, Frame::Data { .. } | Frame::Unknown { .. }) {
        return;
    }
    let mut wire = BytesMut::new();
    FrameEncoder::new().encode(frame, &mut wire).expect("a decoded frame encodes");
    let again = FrameDecoder::new().decode(&mut wire).expect("an encoded frame decodes").expect("whole");
    assert!(wire.is_empty());
    match (headers_of(frame), headers_of(&again)) {
        (Some(a), Some(b)) => assert_eq!(grouped(a), grouped(b)),
        _ => assert_eq!(frame, &again),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else { return };
    let (whole, whole_err) = decode(input, 0);
    let (chunked, chunked_err) = decode(input, usize::from(chunk));
    assert_eq!(whole, chunked, "the frames depend on how the bytes arrived");
    assert_eq!(whole_err, chunked_err);
    whole.iter().for_each(roundtrip);
});
