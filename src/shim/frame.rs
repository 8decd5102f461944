//! Framing of the shim API: each message is prost length-delimited (a varint length, then the
//! encoded bytes), read and written on any async byte stream. Both sides of the socket use this
//! module; it must never know what the messages mean, except for encoding an output frame of a
//! streaming call straight from a read buffer (the hot path of exec and attach).

use std::io;

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest message accepted: an ExecSync answer carries up to two capped outputs.
pub const MAX_MESSAGE: usize = 64 << 20;
/// The largest [`StreamFrame`] accepted on a streaming call. Senders cut data into chunks of at
/// most [`MAX_CHUNK`] bytes; the limit keeps a broken peer from making the shim allocate much.
pub const MAX_FRAME: usize = 256 << 10;
/// The most data bytes one frame carries.
pub const MAX_CHUNK: usize = 32 << 10;

/// Writes one length-delimited message and flushes.
pub async fn write_message<W, M>(w: &mut W, msg: &M) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    M: Message,
{
    w.write_all(&msg.encode_length_delimited_to_vec()).await?;
    w.flush().await
}

/// Reads one length-delimited message. `Ok(None)` means the peer closed the stream cleanly before
/// the first byte of a message; a stream closed inside a message is an `UnexpectedEof` error.
pub async fn read_message<R, M>(r: &mut R) -> io::Result<Option<M>>
where
    R: AsyncRead + Unpin,
    M: Message + Default,
{
    read_message_max(r, MAX_MESSAGE).await
}

/// [`read_message`] with a smaller size limit (such as [`MAX_FRAME`]).
pub async fn read_message_max<R, M>(r: &mut R, max: usize) -> io::Result<Option<M>>
where
    R: AsyncRead + Unpin,
    M: Message + Default,
{
    let Some(len) = read_varint(r).await? else { return Ok(None) };
    if len > max as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes is larger than the limit of {max}"),
        ));
    }
    let mut buf = vec![0; len as usize];
    r.read_exact(&mut buf).await?;
    M::decode(buf.as_slice()).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Which output an output frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// Appends to `out` the length-delimited encoding of a `StreamFrame` whose `stdout` or `stderr`
/// field is `data`: the same bytes prost writes for that message, without copying `data` into a
/// message first.
pub fn encode_output(output: Output, data: &[u8], out: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    // The field numbers of StreamFrame.stdout and .stderr in shim.proto.
    let tag = match output {
        Output::Stdout => 4,
        Output::Stderr => 5,
    };
    let body = key_len(tag) + encoded_len_varint(data.len() as u64) + data.len();
    out.reserve(encoded_len_varint(body as u64) + body);
    encode_varint(body as u64, out);
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

// Byte by byte: a length is at most 10 bytes, and reading further would swallow the message body.
async fn read_varint<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<u64>> {
    let mut value = 0u64;
    for i in 0..10 {
        let mut byte = [0u8];
        if r.read(&mut byte).await? == 0 {
            if i == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream closed inside a length"));
        }
        value |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "message length is not a valid varint"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::proto::{self, request::Call};

    fn ping() -> proto::Request {
        proto::Request { call: Some(Call::Ping(proto::PingRequest {})) }
    }

    fn kill(id: &str) -> proto::Request {
        proto::Request { call: Some(Call::Kill(proto::KillRequest { id: id.into(), signal: 15, all: true })) }
    }

    #[tokio::test]
    async fn messages_round_trip_back_to_back() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            write_message(&mut a, &ping()).await.unwrap();
            write_message(&mut a, &kill(&"x".repeat(300))).await.unwrap();
        });
        let first: proto::Request = read_message(&mut b).await.unwrap().unwrap();
        let second: proto::Request = read_message(&mut b).await.unwrap().unwrap();
        writer.await.unwrap();
        assert_eq!(first, ping());
        assert_eq!(second, kill(&"x".repeat(300)));
        assert!(read_message::<_, proto::Request>(&mut b).await.unwrap().is_none(), "clean end of stream");
    }

    #[tokio::test]
    async fn empty_message_is_one_zero_byte() {
        let mut out = Vec::new();
        write_message(&mut out, &proto::ListRequest {}).await.unwrap();
        assert_eq!(out, [0]);
        let msg: Option<proto::ListRequest> = read_message(&mut out.as_slice()).await.unwrap();
        assert_eq!(msg, Some(proto::ListRequest {}));
    }

    #[tokio::test]
    async fn truncated_message_is_an_error() {
        let full = kill("abc").encode_length_delimited_to_vec();
        for cut in 1..full.len() {
            let err = read_message::<_, proto::Request>(&mut &full[..cut]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn oversized_and_garbage_lengths_are_rejected() {
        let mut too_big = Vec::new();
        prost::encoding::encode_varint(MAX_MESSAGE as u64 + 1, &mut too_big);
        let err = read_message::<_, proto::Request>(&mut too_big.as_slice()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let endless = [0xffu8; 11];
        let err = read_message::<_, proto::Request>(&mut &endless[..]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn output_frames_encode_as_prost_does() {
        use proto::stream_frame::Frame;
        for len in [0, 1, 127, 128, 300, MAX_CHUNK, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for (output, frame) in
                [(Output::Stdout, Frame::Stdout(data.clone())), (Output::Stderr, Frame::Stderr(data.clone()))]
            {
                let message = proto::StreamFrame { frame: Some(frame) };
                let mut ours = vec![0xaa];
                encode_output(output, &data, &mut ours);
                assert_eq!(ours[1..], message.encode_length_delimited_to_vec()[..], "{output:?} of {len}");
                let back: proto::StreamFrame = read_message(&mut &ours[1..]).await.unwrap().unwrap();
                assert_eq!(back, message);
            }
        }
    }

    #[tokio::test]
    async fn frames_over_the_stream_limit_are_refused() {
        let big = proto::StreamFrame { frame: Some(proto::stream_frame::Frame::Stdin(vec![1; MAX_FRAME])) };
        let bytes = big.encode_length_delimited_to_vec();
        let err =
            read_message_max::<_, proto::StreamFrame>(&mut bytes.as_slice(), MAX_FRAME).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let fits: proto::StreamFrame = read_message(&mut bytes.as_slice()).await.unwrap().unwrap();
        assert_eq!(fits, big);
    }

    #[tokio::test]
    async fn undecodable_body_is_invalid_data() {
        // Length 2, then a field tag with wire type 7, which does not exist.
        let bytes = [2u8, 0x0f, 0x00];
        let err = read_message::<_, proto::Request>(&mut &bytes[..]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
