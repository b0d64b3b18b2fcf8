//! Node IP autodetection, with Calico's methods and spelling (`IP_AUTODETECTION_METHOD`):
//! `first-found`, `interface=REGEX[,REGEX]`, `skip-interface=REGEX[,REGEX]`,
//! `cidr=CIDR[,CIDR]`, `can-reach=ADDR`. The address comes back with its interface's prefix
//! length, because CrossSubnet decisions depend on it.

use std::net::{IpAddr, UdpSocket};
use std::str::FromStr;

use ipnet::IpNet;
use regex::Regex;

/// Interfaces `first-found` never picks (container, tunnel and virtual devices), as Calico.
pub const DEFAULT_EXCLUDES: [&str; 20] = [
    "^docker.*",
    "^cbr.*",
    "^dummy.*",
    "^podman.*",
    "^virbr.*",
    "^lxcbr.*",
    "^veth.*",
    "^lo$",
    "^br-.*",
    "^cali.*",
    "^sv.*",
    "^tunl.*",
    "^flannel.*",
    "^kube-ipvs.*",
    "^cni.*",
    "^vxlan\\.calico.*",
    "^vxlan\\.serval.*",
    "^vxlan-v6\\..*",
    "^wireguard\\..*",
    "^nodelocaldns.*",
];

/// How to find the node's address.
#[derive(Debug, Clone)]
pub enum Method {
    /// The first usable address on an interface not in [`DEFAULT_EXCLUDES`].
    FirstFound,
    /// The first address on an interface whose name matches one of the expressions.
    Interface(Vec<Regex>),
    /// Like first-found, also skipping interfaces that match.
    SkipInterface(Vec<Regex>),
    /// The first address inside one of the prefixes.
    Cidr(Vec<IpNet>),
    /// The source address the kernel would use towards this destination.
    CanReach(IpAddr),
    /// The InternalIP the Kubernetes Node object lists (Calico's kubernetes-internal-ip),
    /// with the prefix length of the local interface that holds it.
    KubernetesInternalIp,
}

/// A bad method string; the message lists what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid IP autodetection method {given:?}: {why} (expected first-found, interface=REGEX, \
     skip-interface=REGEX, cidr=CIDR, can-reach=ADDRESS or kubernetes-internal-ip)"
)]
pub struct MethodError {
    /// The text given.
    pub given: String,
    /// What is wrong with it.
    pub why: String,
}

fn regexes(given: &str, list: &str) -> Result<Vec<Regex>, MethodError> {
    list.split(',')
        .map(|r| {
            Regex::new(r.trim()).map_err(|e| MethodError {
                given: given.to_string(),
                why: format!("bad regular expression {r:?}: {e}"),
            })
        })
        .collect()
}

impl FromStr for Method {
    type Err = MethodError;

    fn from_str(s: &str) -> Result<Method, MethodError> {
        let err = |why: String| MethodError {
            given: s.to_string(),
            why,
        };
        let s_trim = s.trim();
        if s_trim.is_empty() || s_trim == "first-found" {
            return Ok(Method::FirstFound);
        }
        if s_trim == "kubernetes-internal-ip" {
            return Ok(Method::KubernetesInternalIp);
        }
        let Some((key, value)) = s_trim.split_once('=') else {
            return Err(err("unknown method".into()));
        };
        if value.trim().is_empty() {
            return Err(err(format!("{key}= needs a value")));
        }
        match key {
            "interface" => Ok(Method::Interface(regexes(s, value)?)),
            "skip-interface" => Ok(Method::SkipInterface(regexes(s, value)?)),
            "cidr" => value
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse()
                        .map_err(|_| err(format!("{c:?} is not a CIDR")))
                })
                .collect::<Result<_, _>>()
                .map(Method::Cidr),
            "can-reach" => value
                .trim()
                .parse()
                .map(Method::CanReach)
                .map_err(|_| err(format!("{value:?} is not an IP address"))),
            _ => Err(err(format!("unknown method {key:?}"))),
        }
    }
}

/// One interface and its addresses (with prefix lengths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<IpNet>,
}

fn usable(addr: &IpNet, v6: bool) -> bool {
    let ip = addr.addr();
    ip.is_ipv6() == v6
        && !ip.is_loopback()
        && !ip.is_unspecified()
        && match ip {
            IpAddr::V4(a) => !a.is_link_local(),
            IpAddr::V6(a) => (a.segments()[0] & 0xffc0) != 0xfe80,
        }
}

/// Picks the node address of one family from `interfaces` (in the order given).
pub fn choose(method: &Method, interfaces: &[Interface], v6: bool) -> Option<IpNet> {
    // Compiled once per call, not once per interface.
    let defaults: Vec<Regex> = DEFAULT_EXCLUDES
        .iter()
        .filter_map(|r| Regex::new(r).ok())
        .collect();
    let excluded =
        |name: &str, extra: &[Regex]| defaults.iter().chain(extra).any(|r| r.is_match(name));
    let first = |pick: &dyn Fn(&Interface) -> bool, want: &dyn Fn(&IpNet) -> bool| {
        interfaces
            .iter()
            .filter(|i| pick(i))
            .flat_map(|i| i.addrs.iter())
            .find(|a| usable(a, v6) && want(a))
            .copied()
    };
    match method {
        Method::FirstFound => first(&|i| !excluded(&i.name, &[]), &|_| true),
        Method::SkipInterface(skip) => first(&|i| !excluded(&i.name, skip), &|_| true),
        Method::Interface(wanted) => {
            first(&|i| wanted.iter().any(|r| r.is_match(&i.name)), &|_| true)
        }
        Method::Cidr(nets) => first(&|_| true, &|a| nets.iter().any(|n| n.contains(&a.addr()))),
        Method::CanReach(dest) => {
            let source = source_towards(*dest).ok()?;
            with_prefix(interfaces, source)
        }
        // Needs the Node object: see [`with_prefix`], called with its InternalIP.
        Method::KubernetesInternalIp => None,
    }
}

/// `addr` with the prefix length of the local interface address that equals it.
pub fn with_prefix(interfaces: &[Interface], addr: IpAddr) -> Option<IpNet> {
    interfaces
        .iter()
        .flat_map(|i| i.addrs.iter())
        .find(|a| a.addr() == addr)
        .copied()
}

/// The first InternalIP of the wanted family a Kubernetes Node lists.
pub fn node_internal_ip(node: &k8s_openapi::api::core::v1::Node, v6: bool) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv6() == v6)
}

/// The source address the kernel picks towards `dest` (a UDP connect sends nothing).
pub fn source_towards(dest: IpAddr) -> std::io::Result<IpAddr> {
    let bind: IpAddr = if dest.is_ipv4() {
        [0, 0, 0, 0].into()
    } else {
        [0u16; 8].into()
    };
    let socket = UdpSocket::bind((bind, 0))?;
    socket.connect((dest, 9))?;
    Ok(socket.local_addr()?.ip())
}

/// This host's interfaces and addresses, in kernel order.
pub fn local_interfaces() -> std::io::Result<Vec<Interface>> {
    let mut out: Vec<Interface> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let (ip, prefix) =
            if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                (IpAddr::V4(a.ip()), u32::from(m.ip()).count_ones() as u8)
            } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                (IpAddr::V6(a.ip()), u128::from(m.ip()).count_ones() as u8)
            } else {
                continue;
            };
        let Ok(net) = IpNet::new(ip, prefix) else {
            continue;
        };
        match out.iter_mut().find(|i| i.name == ifa.interface_name) {
            Some(i) => i.addrs.push(net),
            None => out.push(Interface {
                name: ifa.interface_name,
                addrs: vec![net],
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn kubernetes_internal_ip_comes_from_the_node_with_the_local_prefix() {
        assert!(matches!(
            "kubernetes-internal-ip".parse::<Method>().unwrap(),
            Method::KubernetesInternalIp
        ));
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "203.0.113.5"},
                {"type": "InternalIP", "address": "fd00::5"},
                {"type": "InternalIP", "address": "192.168.7.5"}
            ]}
        }))
        .unwrap();
        let ip = node_internal_ip(&node, false).unwrap();
        assert_eq!(ip, "192.168.7.5".parse::<IpAddr>().unwrap());
        assert_eq!(
            node_internal_ip(&node, true).unwrap().to_string(),
            "fd00::5"
        );
        let ifaces = vec![Interface {
            name: "eth0".into(),
            addrs: vec!["192.168.7.5/24".parse().unwrap()],
        }];
        assert_eq!(with_prefix(&ifaces, ip).unwrap().prefix_len(), 24);
    }
    use super::*;

    fn iface(name: &str, addrs: &[&str]) -> Interface {
        Interface {
            name: name.into(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn host() -> Vec<Interface> {
        vec![
            iface("lo", &["127.0.0.1/8", "::1/128"]),
            iface("docker0", &["172.17.0.1/16"]),
            iface(
                "eth0",
                &[
                    "169.254.3.3/16",
                    "192.168.1.5/24",
                    "fe80::1/64",
                    "fd00::5/64",
                ],
            ),
            iface("eth1", &["10.9.0.5/16"]),
            iface("sv0123456789a", &["10.244.0.1/32"]),
        ]
    }

    fn pick(method: &str, v6: bool) -> Option<String> {
        choose(&method.parse().unwrap(), &host(), v6).map(|n| n.to_string())
    }

    #[test]
    fn methods_pick_like_calico() {
        assert_eq!(
            pick("first-found", false).as_deref(),
            Some("192.168.1.5/24")
        );
        assert_eq!(pick("", false).as_deref(), Some("192.168.1.5/24"));
        assert_eq!(pick("first-found", true).as_deref(), Some("fd00::5/64"));
        assert_eq!(
            pick("interface=eth1", false).as_deref(),
            Some("10.9.0.5/16")
        );
        assert_eq!(
            pick("interface=nope,eth.*", false).as_deref(),
            Some("192.168.1.5/24")
        );
        assert_eq!(
            pick("skip-interface=eth0", false).as_deref(),
            Some("10.9.0.5/16")
        );
        assert_eq!(
            pick("cidr=10.0.0.0/8", false).as_deref(),
            Some("10.9.0.5/16")
        );
        assert_eq!(
            pick("cidr=172.16.0.0/12", false).as_deref(),
            Some("172.17.0.1/16")
        );
        assert_eq!(pick("interface=docker0", true), None);
    }

    #[test]
    fn bad_methods_say_what_is_accepted() {
        for bad in [
            "bogus",
            "interface=",
            "interface=(",
            "cidr=10.0.0.0",
            "can-reach=example",
            "kubernetes-internal=x",
        ] {
            let e = bad.parse::<Method>().unwrap_err().to_string();
            assert!(
                e.contains("expected first-found, interface=REGEX"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn can_reach_uses_the_kernel_source_address() {
        // Loopback only: the kernel's choice towards 127.0.0.1 is 127.0.0.1 on lo.
        assert_eq!(
            source_towards("127.0.0.1".parse().unwrap())
                .unwrap()
                .to_string(),
            "127.0.0.1"
        );
        let lo = vec![iface("lo", &["127.0.0.1/8"])];
        let m: Method = "can-reach=127.0.0.1".parse().unwrap();
        // can-reach takes whatever address the kernel would use, with its interface's prefix.
        assert_eq!(
            choose(&m, &lo, false).map(|n| n.to_string()).as_deref(),
            Some("127.0.0.1/8")
        );
        let ifaces = local_interfaces().unwrap();
        assert!(
            ifaces
                .iter()
                .any(|i| i.addrs.iter().any(|a| a.addr().is_loopback()))
        );
    }
}
