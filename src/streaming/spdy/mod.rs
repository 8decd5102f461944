//! SPDY/3.1 as Kubernetes streaming uses it: after an HTTP `Upgrade: SPDY/3.1`, each exec, attach
//! or port-forward session is a set of SPDY streams, opened by the client with a `streamType`
//! header. [`frame`] is the wire format (frames, header blocks, zlib with the SPDY/3 dictionary);
//! [`session`] is one connection (streams, flow control, pings, GOAWAY). Nothing here knows about
//! exec or port forwarding; those live in the modules above.

pub mod frame;
pub mod session;

pub use frame::{Frame, FrameDecoder, FrameEncoder, Headers};
pub use session::{Role, Session, SessionConfig, Stream};
