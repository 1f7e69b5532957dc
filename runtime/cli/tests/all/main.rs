//! End-to-end tests of the `cairn` binary: the README's commands on `examples/hello`.

mod apps;
mod blueprint;
mod catalog;
mod dr;
mod policy;
mod repo;
mod run;
mod support;
