//! Pieces of the RPC benchmark that are not the measurement loop itself.

pub(crate) mod peers;
pub(crate) mod sys;
pub(crate) mod servers;
