//! End-to-end tests of the `cairn` binary: the README's commands on `examples/hello`.

mod blueprint;
mod run;
mod support;
