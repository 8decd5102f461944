//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): the parsing a streaming client's
//! bytes reach, callable on plain bytes and without a runtime. Not an API: nothing in berth calls
//! these, and they change with the fuzz targets. They must never do more than the server does
//! with the same bytes. (SPDY needs nothing here: [`super::spdy::frame::FrameDecoder`] is public.)

use std::io::{Cursor, Read, Write};

use bytes::{Bytes, BytesMut};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};

use super::portforward;
use super::relay::ResizeParser;
use super::server::PortForwardRequest;
use super::spdy::{Frame, FrameDecoder};
use super::websocket::{self, Codec, Incoming};

/// The largest message berth accepts from a WebSocket client.
pub const MAX_MESSAGE: usize = websocket::MAX_MESSAGE;

/// What the channel protocol makes of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelMessage {
    /// Data for a channel.
    Data(u8, Bytes),
    /// The v5 close signal for a channel.
    Close(u8),
    /// Skipped.
    Ignored,
    /// The connection ends here.
    Malformed,
}

/// One data message (`text` for a text message) read under the subprotocol `protocol` (any berth
/// offers, or "" for none), as the server reads it.
pub fn channel_message(payload: &[u8], text: bool, protocol: &str) -> ChannelMessage {
    let close_signal = protocol.starts_with("v5.");
    match websocket::parse_message(
        Bytes::copy_from_slice(payload),
        text,
        Codec::for_protocol(protocol),
        close_signal,
    ) {
        Incoming::Data(ch, data) => ChannelMessage::Data(ch, data),
        Incoming::Close(ch) => ChannelMessage::Close(ch),
        Incoming::Ignored => ChannelMessage::Ignored,
        Incoming::Malformed(_) => ChannelMessage::Malformed,
    }
}

/// Bytes read from `input`; what the server writes back goes nowhere.
struct OneWay(Cursor<Vec<u8>>);

impl Read for OneWay {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for OneWay {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The data messages (text or not, payload) tungstenite with the server's limits decodes from
/// `wire`, the bytes a client sends after the handshake, until the connection would end.
fn messages(wire: &[u8]) -> impl Iterator<Item = (bool, Bytes)> {
    let mut ws = WebSocket::from_raw_socket(
        OneWay(Cursor::new(wire.to_vec())),
        Role::Server,
        Some(websocket::config()),
    );
    std::iter::from_fn(move || {
        loop {
            match ws.read() {
                Ok(Message::Binary(b)) => return Some((false, b)),
                Ok(Message::Text(t)) => return Some((true, t.into())),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    })
}

/// Reads `wire` as what a client of a channel subprotocol `protocol` sends after the handshake:
/// every data message goes through [`channel_message`], until the connection would end. Returns
/// what each message came to.
pub fn websocket_wire(wire: &[u8], protocol: &str) -> Vec<ChannelMessage> {
    let mut out = Vec::new();
    for (text, payload) in messages(wire) {
        let parsed = channel_message(&payload, text, protocol);
        let end = parsed == ChannelMessage::Malformed;
        out.push(parsed);
        if end {
            break;
        }
    }
    out
}

/// Reads `wire` as what a client of the SPDY tunnel (`SPDY/3.1+portforward.k8s.io`) sends after
/// the handshake: binary messages carry a byte stream of SPDY frames. Returns the frames decoded
/// before the stream ends or is refused.
pub fn tunnel_wire(wire: &[u8]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for (text, payload) in messages(wire) {
        if text {
            continue;
        }
        buf.extend_from_slice(&payload);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => return frames,
            }
        }
    }
    frames
}

/// The terminal sizes a resize channel carrying `chunks` yields, and whether the channel was
/// given up on.
pub fn resize_channel<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<(u16, u16)>, bool) {
    let mut parser = ResizeParser::default();
    let mut sizes = Vec::new();
    for chunk in chunks {
        if parser.feed(chunk, &mut sizes).is_err() {
            return (sizes.iter().map(|s| (s.width, s.height)).collect(), true);
        }
    }
    (sizes.iter().map(|s| (s.width, s.height)).collect(), false)
}

/// The ports of a WebSocket port forward with URL query `query` and no ports in the request;
/// `None` when the server refuses it.
pub fn port_forward_query(query: &str) -> Option<Vec<u16>> {
    let req = PortForwardRequest { pod_sandbox_id: "pod".into(), ports: Vec::new() };
    portforward::websocket_ports(Some(query), &req).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as a server requires.
    fn frame(opcode: u8, payload: &[u8], fin: bool) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn the_entry_points_read_what_the_server_reads() {
        let mut wire = frame(2, b"\x00hello", true);
        wire.extend(frame(2, b"\x04{\"Width\"", false));
        wire.extend(frame(0, b":1,\"Height\":2}", true));
        wire.extend(frame(9, b"ping", true));
        wire.extend(frame(2, b"\xff\x00", true));
        wire.extend(frame(2, b"\xff", true));
        wire.extend(frame(2, b"\x00never read", true));
        assert_eq!(
            websocket_wire(&wire, "v5.channel.k8s.io"),
            vec![
                ChannelMessage::Data(0, Bytes::from_static(b"hello")),
                ChannelMessage::Data(4, Bytes::from_static(b"{\"Width\":1,\"Height\":2}")),
                ChannelMessage::Close(0),
                ChannelMessage::Malformed,
            ]
        );
        // An unmasked frame ends the connection.
        assert_eq!(websocket_wire(&[0x82, 1, 0], "v5.channel.k8s.io"), vec![]);
        assert_eq!(
            channel_message(b"2/2Jpbg==", true, "base64.channel.k8s.io"),
            ChannelMessage::Data(2, Bytes::from_static(b"\xffbin"))
        );
        assert_eq!(
            channel_message(b"0not base64!", true, "v4.base64.channel.k8s.io"),
            ChannelMessage::Ignored
        );
        assert_eq!(resize_channel([&b"{\"Width\":3,"[..], b"\"Height\":4} x"]), (vec![(3, 4)], true));
        assert_eq!(port_forward_query("port=80,443"), Some(vec![80, 443]));
        assert_eq!(port_forward_query("port=0"), None);
        let ping = [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
        assert_eq!(
            tunnel_wire(&[frame(2, &ping[..5], true), frame(2, &ping[5..], true)].concat()),
            vec![Frame::Ping { id: 1 }]
        );
    }
}
