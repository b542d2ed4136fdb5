//! hsmpool simulator: a software HSM.
#![deny(unsafe_code)]

pub mod types;
