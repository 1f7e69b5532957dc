//! Integration tests of the catalog: one binary, one module per concern.

mod basics;
mod changelog;
mod dr;
mod errors;
mod fixtures;
mod snapshot;
