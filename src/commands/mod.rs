//! The subcommands of the `shoal` binary.

pub mod convert;
pub mod demo;
pub mod generate;
pub mod train;
