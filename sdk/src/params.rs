//! Parameters most database blueprints share, declared and read with validation in one place.
//!
//! Declare them with [`Param::host`], [`Param::port`] and [`Param::replace`]; read them with
//! [`Context::host`], [`Context::port`], [`Context::endpoints`] and [`Context::seconds`], which
//! fail with a one-line [`Error::Invalid`] naming the parameter and what to pass. Before a
//! restore overwrites data, [`refuse_unless_replace`] gives every blueprint the same refusal.
//!
//! ```
//! use cairn_sdk::params::refuse_unless_replace;
//! use cairn_sdk::{Context, Param};
//!
//! let host = Param::host("host");
//! assert_eq!(host.default_value(), Some("127.0.0.1"));
//! let ctx = Context::builder("restore", "shop")
//!     .param("host", "db.example")
//!     .param("port", 5432)
//!     .build();
//! assert_eq!(ctx.host("host").ok(), Some("db.example"));
//! assert_eq!(ctx.port("port").ok(), Some(5432));
//! assert!(refuse_unless_replace("database `shop` already holds 3 tables", false).is_err());
//! assert!(refuse_unless_replace("database `shop` already holds 3 tables", true).is_ok());
//! ```

use std::time::Duration;

use crate::{Context, Error, Param, Result};

/// The name of the flag [`refuse_unless_replace`] tells the user to set.
pub const REPLACE: &str = "replace";

impl Param {
    /// A text parameter holding a server's host name or address, default `127.0.0.1`; read it
    /// with [`Context::host`].
    pub fn host(name: impl Into<String>) -> Self {
        Self::text(name)
            .default("127.0.0.1")
            .describe("Server host name or address, as seen from the workload")
    }

    /// An integer parameter holding a TCP port, default `default`; read it with
    /// [`Context::port`].
    pub fn port(name: impl Into<String>, default: u16) -> Self {
        Self::integer(name)
            .default(default)
            .range(1..=65535)
            .describe("Server TCP port")
    }

    /// The boolean parameter [`REPLACE`], default `false`, that lets a restore overwrite data;
    /// check it with [`refuse_unless_replace`].
    pub fn replace() -> Self {
        Self::flag(REPLACE)
            .default(false)
            .describe("Restore over existing data, replacing it")
    }
}

impl Context {
    /// Text parameter `name` as a host name or address: non-empty, without spaces or shell
    /// characters, not starting with `-`. Letters, digits and `. - _ : [ ] %` are accepted
    /// (names, IPv4, IPv6 with or without brackets and a zone).
    pub fn host(&self, name: &str) -> Result<&str> {
        check_host(name, self.text(name)?)
    }

    /// Integer parameter `name` as a TCP port, 1 to 65535.
    pub fn port(&self, name: &str) -> Result<u16> {
        check_port(name, self.integer(name)?)
    }

    /// Text parameter `name` as a comma-separated list of `HOST:PORT` endpoints, each
    /// optionally prefixed by `http://` or `https://`; the text as given.
    pub fn endpoints(&self, name: &str) -> Result<&str> {
        let value = self.text(name)?;
        let invalid = |why: &str| {
            Error::invalid(format!(
                "parameter `{name}` is {value:?}: {why}; pass HOST:PORT[,HOST:PORT…], e.g. \
                 --param {name}=127.0.0.1:2379"
            ))
        };
        for endpoint in value.split(',') {
            let address = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"))
                .unwrap_or(endpoint);
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| invalid(&format!("endpoint {endpoint:?} has no port")))?;
            let port: i64 = port
                .parse()
                .map_err(|_| invalid(&format!("endpoint {endpoint:?} has no numeric port")))?;
            check_host(name, host).map_err(|_| {
                invalid(&format!(
                    "endpoint {endpoint:?} is not a host name or address"
                ))
            })?;
            check_port(name, port).map_err(|_| {
                invalid(&format!("the port of endpoint {endpoint:?} is not 1-65535"))
            })?;
        }
        Ok(value)
    }

    /// Integer parameter `name` as a positive number of seconds.
    pub fn seconds(&self, name: &str) -> Result<Duration> {
        let n = self.integer(name)?;
        u64::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "parameter `{name}` is {n}: give a number of seconds above 0, e.g. \
                     --param {name}=60"
                ))
            })
    }
}

/// Checks `value` of parameter `name` as [`Context::host`] does.
pub fn check_host<'a>(name: &str, value: &'a str) -> Result<&'a str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_:[]%".contains(c);
    if value.is_empty() || value.starts_with('-') || !value.chars().all(allowed) {
        return Err(Error::invalid(format!(
            "parameter `{name}` is {value:?}: give a host name or address without spaces or \
             shell characters, e.g. --param {name}=db.example or --param {name}=10.0.0.5"
        )));
    }
    Ok(value)
}

/// Checks `value` of parameter `name` as [`Context::port`] does.
pub fn check_port(name: &str, value: i64) -> Result<u16> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            Error::invalid(format!(
                "parameter `{name}` is {value}: a TCP port is 1 to 65535, e.g. --param {name}=5432"
            ))
        })
}

/// Refuses a restore over existing data unless the run set `replace=true`.
///
/// `what_exists` says what is there, such as ``database `shop` at db:5432 already holds 4
/// tables``; the error is that, then the one way on: rerun with `--param replace=true`.
pub fn refuse_unless_replace(what_exists: &str, replace: bool) -> Result<()> {
    if replace {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{what_exists}; refusing to restore over it: restore into an empty target, or rerun \
         with --param {REPLACE}=true to replace it"
    )))
}

/// Refuses a restore while `path` in the workload is left from an earlier one (data moved
/// aside that could not be put back, or kept on purpose): it may be the only copy of what
/// `holder` (the server, the member) had then, and a restore that moved its own data there
/// could not tell the two apart. The error names the path and the way on.
pub fn refuse_left_aside(path: &str, holder: &str) -> Result<()> {
    let found = crate::exec::Command::shell(r#"if [ -e "$1" ]; then echo left; fi"#)
        .arg("sh")
        .arg(path)
        .run()?
        .ok()?;
    if found.stdout_str().trim() == "left" {
        return Err(Error::invalid(format!(
            "{path} is left from an earlier restore and may hold the only copy of the data \
             {holder} had then: move it away (or remove it once you know it is not needed), and \
             run the restore again"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(name: &str, value: impl Into<crate::ParamValue>) -> Context {
        Context::builder("restore", "shop")
            .param(name, value)
            .build()
    }

    fn invalid(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(Error::Invalid(m)) => {
                assert!(!m.contains('\n'), "one line: {m}");
                m
            }
            other => panic!("not Invalid: {other:?}"),
        }
    }

    #[test]
    fn hosts() {
        for good in [
            "db.example",
            "10.0.0.5",
            "::1",
            "[fe80::1%eth0]",
            "my_host-2",
        ] {
            assert_eq!(ctx("host", good).host("host"), Ok(good));
        }
        for bad in [
            "",
            " db",
            "db example",
            "-oProxy",
            "a;rm",
            "$(id)",
            "db`x`",
            "a|b",
            "a/b",
        ] {
            let m = invalid(ctx("host", bad).host("host"));
            assert!(m.starts_with("parameter `host` is"), "{m}");
            assert!(m.contains("--param host="), "{m}");
        }
        // Absent or of another type: the Context's own errors.
        assert!(matches!(ctx("x", 1).host("host"), Err(Error::NotFound(_))));
        assert!(matches!(
            ctx("host", 1).host("host"),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn ports() {
        assert_eq!(ctx("port", 1).port("port"), Ok(1));
        assert_eq!(ctx("port", 65535).port("port"), Ok(65535));
        for bad in [0_i64, -1, 65536, i64::MAX] {
            let m = invalid(ctx("port", bad).port("port"));
            assert_eq!(
                m,
                format!(
                    "parameter `port` is {bad}: a TCP port is 1 to 65535, e.g. --param port=5432"
                )
            );
        }
        assert!(matches!(
            ctx("port", "5432").port("port"),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn endpoints() {
        for good in [
            "127.0.0.1:2379",
            "a:1,b:2",
            "http://etcd-0:2379,https://[::1]:2379",
        ] {
            assert_eq!(ctx("endpoints", good).endpoints("endpoints"), Ok(good));
        }
        for (bad, why) in [
            ("", "has no port"),
            ("etcd", "has no port"),
            ("etcd:x", "numeric port"),
            ("etcd:0", "not 1-65535"),
            ("a:1, b:2", "not a host"),
            ("a:1,", "has no port"),
            ("$(id):1", "not a host"),
        ] {
            let m = invalid(ctx("endpoints", bad).endpoints("endpoints"));
            assert!(
                m.contains(why) && m.contains("--param endpoints="),
                "{bad}: {m}"
            );
        }
    }

    #[test]
    fn seconds() {
        assert_eq!(ctx("t", 60).seconds("t"), Ok(Duration::from_secs(60)));
        for bad in [0, -5] {
            let m = invalid(ctx("t", bad).seconds("t"));
            assert!(
                m.contains("seconds above 0") && m.contains("--param t=60"),
                "{m}"
            );
        }
    }

    #[test]
    fn declared_params() {
        let host = Param::host("host");
        assert_eq!(host.kind(), crate::ParamKind::Text);
        assert_eq!(host.default_value(), Some("127.0.0.1"));
        let port = Param::port("port", 6379);
        assert_eq!(port.kind(), crate::ParamKind::Integer);
        assert_eq!(port.default_value(), Some("6379"));
        let replace = Param::replace();
        assert_eq!(replace.name(), REPLACE);
        assert_eq!(replace.kind(), crate::ParamKind::Boolean);
        assert_eq!(replace.default_value(), Some("false"));
    }

    #[test]
    fn the_replace_guard() {
        assert_eq!(
            refuse_unless_replace("Redis at h:1 already holds 3 keys", true),
            Ok(())
        );
        let m = invalid(refuse_unless_replace(
            "Redis at h:1 already holds 3 keys",
            false,
        ));
        assert_eq!(
            m,
            "Redis at h:1 already holds 3 keys; refusing to restore over it: restore into an \
             empty target, or rerun with --param replace=true to replace it"
        );
    }
}
