//! The subcommands of the `shoal` binary.

pub mod cluster;
pub mod convert;
pub mod demo;
pub mod generate;
pub mod procs;
pub mod ring_worker;
pub mod train;
