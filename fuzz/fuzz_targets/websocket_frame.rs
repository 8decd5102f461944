//! What berth does with a WebSocket client's bytes on top of tungstenite (with berth's limits):
//! the channel byte, the base64 subprotocols, the v5 close signal, the resize channel's JSON,
//! the port-forward query, SPDY frames tunnelled in binary messages.
//! The first byte picks the parser and the subprotocol; no input may panic, and what comes out
//! stays within berth's limits.

#![no_main]

use berth::streaming::fuzzing::{
    ChannelMessage, MAX_MESSAGE, channel_message, port_forward_query, resize_channel, tunnel_wire,
    websocket_wire,
};
use berth::streaming::spdy::frame::MAX_DATA_PIECE;
use libfuzzer_sys::fuzz_target;

const PROTOCOLS: &[&str] = &[
    "",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v5.channel.k8s.io",
    "SPDY/3.1+portforward.k8s.io",
];

fn check(msg: &ChannelMessage, payload_len: Option<usize>) {
    if let ChannelMessage::Data(_, data) = msg {
        assert!(data.len() < MAX_MESSAGE, "{} bytes of channel data", data.len());
        if let Some(n) = payload_len {
            assert!(data.len() < n.max(1), "{} bytes of data from a {n}-byte message", data.len());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let protocol = PROTOCOLS[usize::from(mode >> 3) % PROTOCOLS.len()];
    match mode & 3 {
        0 if protocol.starts_with("SPDY/") => {
            for frame in tunnel_wire(rest) {
                if let berth::streaming::spdy::Frame::Data { data, .. } = frame {
                    assert!(data.len() <= MAX_DATA_PIECE);
                }
            }
        }
        0 => {
            for msg in websocket_wire(rest, protocol) {
                check(&msg, None);
            }
        }
        1 => check(&channel_message(rest, mode & 4 != 0, protocol), Some(rest.len())),
        2 => {
            // Chunk lengths come from the input too: a resize object may be split anywhere.
            let cut = usize::from(mode >> 2).max(1);
            let (sizes, _given_up) = resize_channel(rest.chunks(cut));
            assert!(sizes.len() <= rest.len() / 5, "{} sizes from {} bytes", sizes.len(), rest.len());
        }
        _ => {
            if let Some(ports) = port_forward_query(&String::from_utf8_lossy(rest)) {
                assert!(!ports.is_empty() && ports.len() <= 127 && !ports.contains(&0), "{ports:?}");
            }
        }
    }
});
