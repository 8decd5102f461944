//! Images: references, registry client, pull, unpack, import and export.

pub mod apply;
pub mod unpack;
