//! The engine's integration tests: one binary, one module per concern. Guest components are
//! built by `support::guest` the first time a test needs them.

mod audit;
mod bad_input;
mod cache;
mod capabilities;
mod catalog;
mod lifecycle;
mod load;
mod outputs;
mod support;
mod tags;
