//! The subcommands of the `shoal` binary.

pub mod cluster;
pub mod continual;
pub mod convert;
pub mod coordinator;
pub mod data;
pub mod demo;
pub mod doremi;
pub mod experiment;
pub mod generate;
#[cfg(feature = "cuda")]
pub mod gpu_check;
pub mod node;
pub mod procs;
pub mod ring_worker;
pub mod train;
