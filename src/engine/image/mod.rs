//! Images: references, registry client, pull, unpack, import and export.

pub mod apply;
pub mod archive;
pub mod auth;
pub mod dns;
pub mod hosts;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod store;
mod tls;
pub mod unpack;

#[cfg(test)]
pub(crate) mod fake_registry;
