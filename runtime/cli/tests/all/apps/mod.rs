//! End-to-end tests of the application blueprints against real servers.

mod etcd;
mod mysql;
mod postgres;
mod quiesce;
mod redis;
