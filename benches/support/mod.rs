//! Pieces of the RPC benchmark that are not the measurement loop itself.

pub(crate) mod child;

pub(crate) mod overload;
pub(crate) mod peers;
pub(crate) mod servers;
pub(crate) mod sys;
