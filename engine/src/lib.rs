//! hsmpool engine: all behaviour behind the C ABI.

pub mod engine;
pub mod error;
pub mod types;

pub use engine::{engine, finalize, initialize, Engine, InitArgs};
pub use error::{Error, Result};
pub use hsmpool_sim::types::{Attr, MechParam, Mechanism, SignInput};
