//! Images: references, registry client, pull, unpack, import and export.

pub mod auth;
pub mod hosts;
pub mod reference;
pub mod registry;
mod tls;

#[cfg(test)]
pub(crate) mod fake_registry;
