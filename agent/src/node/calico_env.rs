//! Calico's environment names on serval-node: an operator's calico-node DaemonSet settings
//! (`CALICO_IPV4POOL_CIDR`, `CALICO_NETWORKING_BACKEND`, `FELIX_VXLANVNI`, ...) work as
//! aliases of Serval's own. Each alias becomes the flag its Serval variable sets, unless that
//! variable or flag is given too (the same value is fine; a different one is an error naming
//! both). A `CALICO_*` or `FELIX_*` variable that is set and has no meaning here is named in
//! a warning, never dropped silently.

use std::ffi::OsString;

use super::config::ConfigError;

/// One Calico or Felix variable read as one of Serval's.
pub struct Alias {
    /// Calico's (or Felix's) name.
    pub calico: &'static str,
    /// Serval's name.
    pub serval: &'static str,
}

/// Every alias. Values mean the same in both (Felix's iptables backend is matched without
/// regard to case, as Felix does).
pub const ALIASES: &[Alias] = &[
    alias("CALICO_IPV4POOL_CIDR", "SERVAL_IPV4POOL_CIDR"),
    alias("CALICO_IPV4POOL_BLOCK_SIZE", "SERVAL_IPV4POOL_BLOCK_SIZE"),
    alias("CALICO_IPV4POOL_IPIP", "SERVAL_IPV4POOL_IPIP"),
    alias("CALICO_IPV4POOL_VXLAN", "SERVAL_IPV4POOL_VXLAN"),
    alias(
        "CALICO_IPV4POOL_NAT_OUTGOING",
        "SERVAL_IPV4POOL_NAT_OUTGOING",
    ),
    alias(
        "CALICO_IPV4POOL_NODE_SELECTOR",
        "SERVAL_IPV4POOL_NODE_SELECTOR",
    ),
    alias("CALICO_IPV6POOL_CIDR", "SERVAL_IPV6POOL_CIDR"),
    alias("CALICO_IPV6POOL_BLOCK_SIZE", "SERVAL_IPV6POOL_BLOCK_SIZE"),
    alias("CALICO_IPV6POOL_VXLAN", "SERVAL_IPV6POOL_VXLAN"),
    alias(
        "CALICO_IPV6POOL_NAT_OUTGOING",
        "SERVAL_IPV6POOL_NAT_OUTGOING",
    ),
    alias(
        "CALICO_IPV6POOL_NODE_SELECTOR",
        "SERVAL_IPV6POOL_NODE_SELECTOR",
    ),
    alias("CALICO_NETWORKING_BACKEND", "SERVAL_NETWORKING_BACKEND"),
    alias("FELIX_IPTABLESBACKEND", "SERVAL_IPTABLES_BACKEND"),
    alias(
        "FELIX_IPTABLESREFRESHINTERVAL",
        "SERVAL_IPTABLES_REFRESH_INTERVAL",
    ),
    alias(
        "FELIX_ROUTEREFRESHINTERVAL",
        "SERVAL_ROUTE_REFRESH_INTERVAL",
    ),
    alias("FELIX_VXLANVNI", "SERVAL_VXLAN_VNI"),
    alias("FELIX_VXLANPORT", "SERVAL_VXLAN_PORT"),
    alias("FELIX_IPINIPMTU", "SERVAL_IPIP_MTU"),
    alias("FELIX_VXLANMTU", "SERVAL_VXLAN_MTU"),
    alias(
        "FELIX_FAILSAFEINBOUNDHOSTPORTS",
        "SERVAL_FAILSAFE_INBOUND_HOST_PORTS",
    ),
    alias(
        "FELIX_FAILSAFEOUTBOUNDHOSTPORTS",
        "SERVAL_FAILSAFE_OUTBOUND_HOST_PORTS",
    ),
];

const fn alias(calico: &'static str, serval: &'static str) -> Alias {
    Alias { calico, serval }
}

/// The log level Felix's `FELIX_LOGSEVERITYSCREEN` means, as a `SERVAL_LOG` filter.
pub fn log_filter(felix: &str) -> Option<&'static str> {
    match felix.trim().to_ascii_lowercase().as_str() {
        "debug" => Some("debug"),
        "info" => Some("info"),
        "warning" | "warn" => Some("warn"),
        "error" | "fatal" | "panic" => Some("error"),
        "none" => Some("off"),
        _ => None,
    }
}

/// Read elsewhere than the aliases: the log level (see [`log_filter`]).
const HANDLED: &[&str] = &["FELIX_LOGSEVERITYSCREEN"];

/// What the aliases add to `serval-node run`'s command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Flags to append.
    pub flags: Vec<OsString>,
    /// (flag, Calico variable) for each appended flag, to name the variable in a parse error.
    pub sources: Vec<(String, &'static str)>,
    /// `CALICO_*` / `FELIX_*` variables that are set and do nothing here.
    pub unsupported: Vec<String>,
}

/// Turns the aliases set in `env` into flags of `run` (its clap command), given the flags
/// already on the command line; `all_env` lists every variable, for the unsupported ones.
pub fn resolve(
    run: &clap::Command,
    given: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
    all_env: &[String],
) -> Result<Resolved, ConfigError> {
    let mut out = Resolved::default();
    for a in ALIASES {
        let Some(value) = env(a.calico) else {
            continue;
        };
        let value = if a.calico == "FELIX_IPTABLESBACKEND" {
            value.to_ascii_lowercase()
        } else {
            value
        };
        if let Some(ours) = env(a.serval) {
            if ours != value {
                return Err(ConfigError {
                    variable: a.calico,
                    message: format!(
                        "{value:?} differs from {}={ours:?}; set one of them",
                        a.serval
                    ),
                });
            }
            continue;
        }
        let long = run
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|e| e == a.serval))
            .and_then(|arg| arg.get_long())
            .ok_or_else(|| ConfigError {
                variable: a.calico,
                message: format!("{} is not a serval-node run setting", a.serval),
            })?;
        let flag = format!("--{long}");
        let on_command_line = given.iter().any(|g| {
            let g = g.to_string_lossy();
            g == flag || g.starts_with(&format!("{flag}="))
        });
        if !on_command_line {
            out.flags.push(format!("{flag}={value}").into());
            out.sources.push((flag, a.calico));
        }
    }
    for name in all_env {
        let calico = name.starts_with("CALICO_") || name.starts_with("FELIX_");
        let known =
            ALIASES.iter().any(|a| a.calico == name.as_str()) || HANDLED.contains(&name.as_str());
        if calico && !known {
            out.unsupported.push(name.clone());
        }
    }
    out.unsupported.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::node::config::RunArgs;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: RunArgs,
    }

    fn resolve_with(vars: &[(&str, &str)], given: &[&str]) -> Result<Resolved, ConfigError> {
        let env: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let names: Vec<String> = env.keys().cloned().collect();
        let given: Vec<OsString> = given.iter().map(OsString::from).collect();
        resolve(&Wrap::command(), &given, &|k| env.get(k).cloned(), &names)
    }

    fn parsed(r: &Resolved) -> RunArgs {
        let mut argv: Vec<OsString> = vec!["serval-node".into()];
        argv.extend(r.flags.iter().cloned());
        Wrap::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn every_alias_names_a_serval_node_variable() {
        let cmd = Wrap::command();
        for a in ALIASES {
            assert!(
                cmd.get_arguments()
                    .any(|arg| arg.get_env().is_some_and(|e| e == a.serval)),
                "{} has no flag",
                a.serval
            );
        }
    }

    #[test]
    fn calico_settings_become_ours() {
        let r = resolve_with(
            &[
                ("CALICO_IPV4POOL_CIDR", "10.48.0.0/16"),
                ("CALICO_IPV4POOL_BLOCK_SIZE", "24"),
                ("CALICO_IPV4POOL_VXLAN", "Always"),
                ("CALICO_IPV4POOL_NAT_OUTGOING", "false"),
                ("CALICO_IPV4POOL_NODE_SELECTOR", "zone == 'a'"),
                ("CALICO_NETWORKING_BACKEND", "vxlan"),
                ("FELIX_IPTABLESBACKEND", "Legacy"),
                ("FELIX_VXLANVNI", "4097"),
                ("FELIX_VXLANPORT", "8472"),
                ("FELIX_VXLANMTU", "1410"),
            ],
            &[],
        )
        .unwrap();
        assert!(r.unsupported.is_empty(), "{:?}", r.unsupported);
        let a = parsed(&r);
        assert_eq!(a.ipv4pool_cidr, "10.48.0.0/16");
        assert_eq!(a.ipv4pool_block_size, 24);
        assert_eq!(a.ipv4pool_vxlan.as_deref(), Some("Always"));
        assert!(!a.ipv4pool_nat_outgoing);
        assert_eq!(a.ipv4pool_node_selector, "zone == 'a'");
        assert_eq!(a.networking_backend, "vxlan");
        assert_eq!(a.iptables_backend, "legacy");
        assert_eq!((a.vxlan_vni, a.vxlan_port, a.vxlan_mtu), (4097, 8472, 1410));
    }

    #[test]
    fn ours_and_flags_win_and_a_conflict_is_named() {
        // Same value under both names: fine, nothing added.
        let r = resolve_with(
            &[
                ("CALICO_IPV4POOL_CIDR", "10.1.0.0/16"),
                ("SERVAL_IPV4POOL_CIDR", "10.1.0.0/16"),
            ],
            &[],
        )
        .unwrap();
        assert!(r.flags.is_empty());
        // A flag on the command line wins over the alias.
        let r = resolve_with(
            &[("CALICO_IPV4POOL_CIDR", "10.1.0.0/16")],
            &["--ipv4pool-cidr=10.9.0.0/16"],
        )
        .unwrap();
        assert!(r.flags.is_empty());
        // Two different values: refused, naming both.
        let e = resolve_with(
            &[
                ("CALICO_IPV4POOL_CIDR", "10.1.0.0/16"),
                ("SERVAL_IPV4POOL_CIDR", "10.2.0.0/16"),
            ],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.variable, "CALICO_IPV4POOL_CIDR");
        assert!(e.message.contains("SERVAL_IPV4POOL_CIDR"), "{e}");
    }

    #[test]
    fn calico_variables_without_meaning_here_are_named() {
        let r = resolve_with(
            &[
                ("CALICO_IPV6POOL_CIDR", "fd00::/48"),
                ("CALICO_IPV6POOL_IPIP", "Always"),
                ("FELIX_DEFAULTENDPOINTTOHOSTACTION", "ACCEPT"),
                ("FELIX_LOGSEVERITYSCREEN", "Warning"),
                ("IP6", "autodetect"),
                ("IP", "autodetect"),
                ("CALICO_IPV4POOL_CIDR", "10.1.0.0/16"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            r.unsupported,
            ["CALICO_IPV6POOL_IPIP", "FELIX_DEFAULTENDPOINTTOHOSTACTION"]
        );
        assert_eq!(log_filter("Warning"), Some("warn"));
        assert_eq!(log_filter("fatal"), Some("error"));
        assert_eq!(log_filter("loud"), None);
    }
}
