//! The routers the interop tests run against (BIRD 2, FRR, GoBGP) and Serval's own
//! standalone speaker, each started from a config file the test writes, and queried in
//! the router's own terms but answered in one shape ([`RouteInfo`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::daemon::Daemon;
use crate::netns::Netns;

/// The attributes a test checks on a route, read from any router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// AS numbers in order.
    pub as_path: Vec<u32>,
    /// Next hop as text.
    pub next_hop: String,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// Communities as `a:b`.
    pub communities: Vec<String>,
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates a unique directory under the system temp dir.
    pub fn new(label: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("serval-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    /// A path inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Addresses of the two-node interop lab.
pub struct Addrs {
    /// Our IPv4 address.
    pub ours4: &'static str,
    /// Our IPv6 address.
    pub ours6: &'static str,
    /// Their IPv4 address.
    pub theirs4: &'static str,
    /// Their IPv6 address.
    pub theirs6: &'static str,
}

/// The lab's fixed addressing.
pub const ADDRS: Addrs = Addrs {
    ours4: "10.0.0.1",
    ours6: "fd00::1",
    theirs4: "10.0.0.2",
    theirs6: "fd00::2",
};

/// A reference router the interop scenario drives.
pub trait RefRouter {
    /// Name for messages.
    fn name(&self) -> &'static str;
    /// Its AS.
    fn asn(&self) -> u32;
    /// (Re)starts the daemon.
    fn start(&mut self);
    /// The running daemon, if started.
    fn daemon(&self) -> Option<&Daemon>;
    /// Hands over the running daemon (to stop it).
    fn take_daemon(&mut self) -> Option<Daemon>;
    /// Kills the daemon as a crash would.
    fn crash(&mut self) {
        if let Some(mut d) = self.take_daemon() {
            d.kill();
        }
    }
    /// `Ok` when the session to our IPv4 (or IPv6) address is Established.
    fn established(&self, v6: bool) -> Result<(), String>;
    /// A route in its table, `Err` with what it saw when absent.
    fn route(&self, prefix: &str, v6: bool) -> Result<RouteInfo, String>;
    /// Stops originating its IPv4 test route.
    fn withdraw_v4(&self);
    /// Shuts the IPv4 session down administratively (it sends us a Cease).
    fn shutdown_v4(&self);
    /// Re-enables the IPv4 session.
    fn enable_v4(&self);
    /// `Ok` when it reports that we closed the IPv4 session with a Cease.
    fn saw_our_cease(&self) -> Result<(), String>;
    /// The tail of its log.
    fn log(&self) -> String {
        self.daemon().map(|d| d.log_tail(30)).unwrap_or_default()
    }
    /// The prefixes it originates: (IPv4, IPv6).
    fn own_prefixes(&self) -> (&'static str, &'static str);
    /// Whether it sends the MED we check on its routes.
    fn sends_med(&self) -> bool {
        true
    }
}

fn sh(ns: &Netns, args: &[&str]) -> String {
    ns.exec(args)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("<{e}>"))
}

// ---------------------------------------------------------------- BIRD 2

/// BIRD 2 with one session per transport.
pub struct Bird<'a> {
    ns: &'a Netns,
    dir: &'a Path,
    daemon: Option<Daemon>,
}

impl<'a> Bird<'a> {
    /// Writes the config; call [`RefRouter::start`] to run it.
    pub fn new(ns: &'a Netns, dir: &'a Path) -> Self {
        let conf = format!(
            r#"router id {t4};
log stderr all;
protocol device {{}}
protocol static s4 {{ ipv4; route 10.200.0.0/24 unreachable; }}
protocol static s6 {{ ipv6; route 2001:db8:200::/48 unreachable; }}
filter out_attrs {{ bgp_community.add((65002,7)); bgp_med = 5; accept; }}
protocol bgp v4peer {{
  local {t4} as 65002; neighbor {o4} as 65001; connect retry time 1; error wait time 1, 2;
  ipv4 {{ import all; export filter out_attrs; }};
}}
protocol bgp v6peer {{
  local {t6} as 65002; neighbor {o6} as 65001; connect retry time 1; error wait time 1, 2;
  ipv6 {{ import all; export filter out_attrs; }};
}}
"#,
            t4 = ADDRS.theirs4,
            o4 = ADDRS.ours4,
            t6 = ADDRS.theirs6,
            o6 = ADDRS.ours6
        );
        Self::with_config(ns, dir, &conf)
    }

    /// BIRD with a config of the test's own (control socket and pid file as usual).
    pub fn with_config(ns: &'a Netns, dir: &'a Path, conf: &str) -> Self {
        std::fs::write(dir.join("bird.conf"), conf).expect("write bird.conf");
        Bird {
            ns,
            dir,
            daemon: None,
        }
    }

    /// Starts BIRD in graceful-restart recovery (`-R`): it tells its peers it restarted
    /// with forwarding kept, as a BIRD restarted by its supervisor does.
    pub fn start_recovering(&mut self) {
        self.spawn(true);
    }

    fn spawn(&mut self, recovering: bool) {
        let conf = self.dir.join("bird.conf");
        let sock = self.dir.join("bird.ctl");
        let pid = self.dir.join("bird.pid");
        let mut args = vec!["bird", "-f"];
        if recovering {
            args.push("-R");
        }
        args.extend([
            "-c",
            conf.to_str().unwrap(),
            "-s",
            sock.to_str().unwrap(),
            "-P",
            pid.to_str().unwrap(),
        ]);
        self.daemon = Some(Daemon::start(self.ns, "bird", &args, self.dir).expect("start bird"));
    }

    /// Runs a `birdc` command.
    pub fn birdc(&self, cmd: &str) -> String {
        self.ctl(cmd)
    }

    fn ctl(&self, cmd: &str) -> String {
        let sock = self.dir.join("bird.ctl");
        let mut args = vec!["birdc", "-s", sock.to_str().expect("utf-8 path")];
        args.extend(cmd.split(' '));
        sh(self.ns, &args)
    }
}

fn bird_route(text: &str) -> Option<RouteInfo> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let as_path = field("BGP.as_path:")?;
    let communities = field("BGP.community:")
        .map(|c| {
            c.split(") (")
                .map(|x| {
                    x.trim_matches(|ch| ch == '(' || ch == ')')
                        .replace(',', ":")
                })
                .collect()
        })
        .unwrap_or_default();
    Some(RouteInfo {
        as_path: as_path
            .split_whitespace()
            .filter_map(|a| a.parse().ok())
            .collect(),
        next_hop: field("BGP.next_hop:")?
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string(),
        med: field("BGP.med:").and_then(|m| m.parse().ok()),
        local_pref: field("BGP.local_pref:").and_then(|m| m.parse().ok()),
        communities,
    })
}

impl RefRouter for Bird<'_> {
    fn name(&self) -> &'static str {
        "BIRD"
    }
    fn asn(&self) -> u32 {
        65002
    }
    fn start(&mut self) {
        self.spawn(false);
    }
    fn take_daemon(&mut self) -> Option<Daemon> {
        self.daemon.take()
    }
    fn established(&self, v6: bool) -> Result<(), String> {
        let out = self.ctl(&format!(
            "show protocols {}",
            if v6 { "v6peer" } else { "v4peer" }
        ));
        if out.contains("Established") {
            Ok(())
        } else {
            Err(out)
        }
    }
    fn route(&self, prefix: &str, _v6: bool) -> Result<RouteInfo, String> {
        let out = self.ctl(&format!("show route {prefix} all"));
        bird_route(&out).ok_or(out)
    }
    fn withdraw_v4(&self) {
        self.ctl("disable s4");
    }
    fn shutdown_v4(&self) {
        self.ctl("disable v4peer");
    }
    fn enable_v4(&self) {
        self.ctl("enable v4peer");
    }
    fn saw_our_cease(&self) -> Result<(), String> {
        let out = self.ctl("show protocols all v4peer");
        if out.contains("Received: Peer de-configured") {
            Ok(())
        } else {
            Err(out)
        }
    }
    fn daemon(&self) -> Option<&Daemon> {
        self.daemon.as_ref()
    }
    fn own_prefixes(&self) -> (&'static str, &'static str) {
        ("10.200.0.0/24", "2001:db8:200::/48")
    }
}

// ---------------------------------------------------------------- FRR

/// FRR's bgpd alone (no zebra), one neighbor per transport.
pub struct Frr<'a> {
    ns: &'a Netns,
    dir: &'a Path,
    daemon: Option<Daemon>,
}

impl<'a> Frr<'a> {
    /// Writes the config; call [`RefRouter::start`] to run it.
    pub fn new(ns: &'a Netns, dir: &'a Path) -> Self {
        let conf = format!(
            r#"hostname frr-ref
route-map OUT permit 10
 set metric 5
 set community 65003:7 additive
!
router bgp 65003
 bgp router-id {t4}
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 no bgp network import-check
 neighbor {o4} remote-as 65001
 neighbor {o4} timers connect 1
 neighbor {o6} remote-as 65001
 neighbor {o6} timers connect 1
 address-family ipv4 unicast
  network 10.210.0.0/24
  neighbor {o4} activate
  neighbor {o4} route-map OUT out
 exit-address-family
 address-family ipv6 unicast
  network 2001:db8:210::/48
  neighbor {o6} activate
  neighbor {o6} route-map OUT out
 exit-address-family
!
"#,
            t4 = ADDRS.theirs4,
            o4 = ADDRS.ours4,
            o6 = ADDRS.ours6
        );
        std::fs::write(dir.join("bgpd.conf"), conf).expect("write bgpd.conf");
        Frr {
            ns,
            dir,
            daemon: None,
        }
    }

    /// bgpd with a config of the test's own (vty socket and pid file as usual).
    pub fn with_config(ns: &'a Netns, dir: &'a Path, conf: &str) -> Self {
        std::fs::write(dir.join("bgpd.conf"), conf).expect("write bgpd.conf");
        Frr {
            ns,
            dir,
            daemon: None,
        }
    }

    fn vtysh(&self, cmds: &[&str]) -> String {
        let dir = self.dir.to_str().expect("utf-8 path").to_string();
        let mut args = vec!["vtysh", "--vty_socket", dir.as_str()];
        for c in cmds {
            args.push("-c");
            args.push(c);
        }
        sh(self.ns, &args)
    }

    fn neighbor(&self, addr: &str) -> Value {
        let out = self.vtysh(&[&format!("show bgp neighbors {addr} json")]);
        serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v.get(addr).cloned())
            .unwrap_or(Value::Null)
    }

    fn configure(&self, lines: &[&str]) {
        let mut cmds = vec!["configure terminal", "router bgp 65003"];
        cmds.extend_from_slice(lines);
        self.vtysh(&cmds);
    }
}

fn frr_route(v: &Value) -> Option<RouteInfo> {
    let p = v.get("paths")?.get(0)?;
    Some(RouteInfo {
        as_path: p["aspath"]["string"]
            .as_str()?
            .split_whitespace()
            .filter_map(|a| a.parse().ok())
            .collect(),
        next_hop: p["nexthops"][0]["ip"].as_str()?.to_string(),
        med: p.get("metric").and_then(Value::as_u64).map(|m| m as u32),
        local_pref: p.get("locPrf").and_then(Value::as_u64).map(|m| m as u32),
        communities: p["community"]["list"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

impl RefRouter for Frr<'_> {
    fn name(&self) -> &'static str {
        "FRR"
    }
    fn asn(&self) -> u32 {
        65003
    }
    fn start(&mut self) {
        let conf = self.dir.join("bgpd.conf");
        let pid = self.dir.join("bgpd.pid");
        let dir = self.dir.to_str().unwrap();
        let args = [
            "/usr/lib/frr/bgpd",
            "-f",
            conf.to_str().unwrap(),
            "-i",
            pid.to_str().unwrap(),
            "-Z",
            "-S",
            "--vty_socket",
            dir,
            "-u",
            "root",
            "-g",
            "root",
            "--log",
            "stdout",
        ];
        self.daemon = Some(Daemon::start(self.ns, "bgpd", &args, self.dir).expect("start bgpd"));
    }
    fn take_daemon(&mut self) -> Option<Daemon> {
        self.daemon.take()
    }
    fn established(&self, v6: bool) -> Result<(), String> {
        let n = self.neighbor(if v6 { ADDRS.ours6 } else { ADDRS.ours4 });
        if n["bgpState"] == "Established" {
            Ok(())
        } else {
            Err(format!("bgpState {}", n["bgpState"]))
        }
    }
    fn route(&self, prefix: &str, v6: bool) -> Result<RouteInfo, String> {
        let afi = if v6 { "ipv6" } else { "ipv4" };
        let out = self.vtysh(&[&format!("show bgp {afi} unicast {prefix} json")]);
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        frr_route(&v).ok_or(out)
    }
    fn withdraw_v4(&self) {
        self.configure(&["address-family ipv4 unicast", "no network 10.210.0.0/24"]);
    }
    fn shutdown_v4(&self) {
        self.configure(&[&format!("neighbor {} shutdown", ADDRS.ours4)]);
    }
    fn enable_v4(&self) {
        self.configure(&[&format!("no neighbor {} shutdown", ADDRS.ours4)]);
    }
    fn saw_our_cease(&self) -> Result<(), String> {
        let n = self.neighbor(ADDRS.ours4);
        let reason = n["lastNotificationReason"]
            .as_str()
            .or(n["lastResetDueTo"].as_str())
            .unwrap_or("")
            .to_string();
        if reason.contains("Cease") && reason.to_lowercase().contains("configured") {
            Ok(())
        } else {
            Err(n.to_string())
        }
    }
    fn daemon(&self) -> Option<&Daemon> {
        self.daemon.as_ref()
    }
    fn own_prefixes(&self) -> (&'static str, &'static str) {
        ("10.210.0.0/24", "2001:db8:210::/48")
    }
}

// ---------------------------------------------------------------- GoBGP

/// gobgpd with its gRPC API on the namespace's loopback.
pub struct GoBgp<'a> {
    ns: &'a Netns,
    dir: &'a Path,
    daemon: Option<Daemon>,
}

impl<'a> GoBgp<'a> {
    /// Writes the config; call [`RefRouter::start`] to run it.
    pub fn new(ns: &'a Netns, dir: &'a Path) -> Self {
        let conf = format!(
            r#"[global.config]
  as = 65004
  router-id = "{t4}"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{o4}"
    peer-as = 65001
  [neighbors.timers.config]
    connect-retry = 1
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{o6}"
    peer-as = 65001
  [neighbors.timers.config]
    connect-retry = 1
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
"#,
            t4 = ADDRS.theirs4,
            o4 = ADDRS.ours4,
            o6 = ADDRS.ours6
        );
        std::fs::write(dir.join("gobgp.toml"), conf).expect("write gobgp.toml");
        GoBgp {
            ns,
            dir,
            daemon: None,
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["gobgp", "-u", "127.0.0.1", "-p", "50051"];
        all.extend_from_slice(args);
        sh(self.ns, &all)
    }

    fn add_routes(&self) {
        self.cli(&[
            "global",
            "rib",
            "add",
            "10.220.0.0/24",
            "-a",
            "ipv4",
            "community",
            "65004:7",
            "med",
            "5",
        ]);
        self.cli(&[
            "global",
            "rib",
            "add",
            "2001:db8:220::/48",
            "-a",
            "ipv6",
            "community",
            "65004:7",
            "med",
            "5",
        ]);
    }
}

fn gobgp_route(paths: &Value) -> Option<RouteInfo> {
    let attrs = paths.get(0)?.get("attrs")?.as_array()?;
    let find = |t: u64| attrs.iter().find(|a| a["type"] == t);
    let as_path = find(2)
        .and_then(|a| a["as_paths"].as_array().cloned())
        .map(|segs| {
            segs.iter()
                .flat_map(|s| s["asns"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_u64().map(|x| x as u32))
                .collect()
        })
        .unwrap_or_default();
    let next_hop = find(3)
        .and_then(|a| a["nexthop"].as_str().map(String::from))
        .or_else(|| find(14).and_then(|a| a["nexthop"].as_str().map(String::from)))?;
    Some(RouteInfo {
        as_path,
        next_hop,
        med: find(4).and_then(|a| a["metric"].as_u64()).map(|m| m as u32),
        local_pref: find(5).and_then(|a| a["value"].as_u64()).map(|m| m as u32),
        communities: find(8)
            .and_then(|a| a["communities"].as_array().cloned())
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_u64)
                    .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

impl RefRouter for GoBgp<'_> {
    fn name(&self) -> &'static str {
        "GoBGP"
    }
    fn asn(&self) -> u32 {
        65004
    }
    fn start(&mut self) {
        let conf = self.dir.join("gobgp.toml");
        let args = [
            "gobgpd",
            "-f",
            conf.to_str().unwrap(),
            "-t",
            "toml",
            "--api-hosts",
            "127.0.0.1:50051",
        ];
        self.daemon =
            Some(Daemon::start(self.ns, "gobgpd", &args, self.dir).expect("start gobgpd"));
        // Routes added through the API live in the process: add them once it answers.
        crate::poll::eventually(
            "gobgpd API up",
            Duration::from_secs(20),
            || {
                let out = self.cli(&["global"]);
                if out.contains("AS") { Ok(()) } else { Err(out) }
            },
            || self.log(),
        );
        self.add_routes();
    }
    fn take_daemon(&mut self) -> Option<Daemon> {
        self.daemon.take()
    }
    fn established(&self, v6: bool) -> Result<(), String> {
        let addr = if v6 { ADDRS.ours6 } else { ADDRS.ours4 };
        let out = self.cli(&["neighbor", addr, "-j"]);
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        if v["state"]["session_state"] == 6 {
            Ok(())
        } else {
            Err(out)
        }
    }
    fn route(&self, prefix: &str, v6: bool) -> Result<RouteInfo, String> {
        let out = self.cli(&[
            "global",
            "rib",
            "-a",
            if v6 { "ipv6" } else { "ipv4" },
            "-j",
        ]);
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        v.get(prefix).and_then(gobgp_route).ok_or(out)
    }
    fn withdraw_v4(&self) {
        self.cli(&["global", "rib", "del", "10.220.0.0/24", "-a", "ipv4"]);
    }
    fn shutdown_v4(&self) {
        self.cli(&["neighbor", ADDRS.ours4, "disable"]);
    }
    fn enable_v4(&self) {
        self.cli(&["neighbor", ADDRS.ours4, "enable"]);
    }
    fn saw_our_cease(&self) -> Result<(), String> {
        let log = self
            .daemon
            .as_ref()
            .map(|d| d.log_tail(200))
            .unwrap_or_default();
        let key = format!("\"Key\":\"{}\"", ADDRS.ours4);
        let hit = log.lines().any(|l| {
            l.contains(&key) && l.contains("received notification") && l.contains("\"Code\":6")
        });
        if hit { Ok(()) } else { Err(log) }
    }
    fn daemon(&self) -> Option<&Daemon> {
        self.daemon.as_ref()
    }
    fn own_prefixes(&self) -> (&'static str, &'static str) {
        ("10.220.0.0/24", "2001:db8:220::/48")
    }
}

// ---------------------------------------------------------------- Serval

/// Serval's standalone speaker in a namespace, with its status endpoint.
pub struct Serval<'a> {
    ns: &'a Netns,
    dir: &'a Path,
    /// The running process.
    pub daemon: Option<Daemon>,
}

impl<'a> Serval<'a> {
    /// Writes `speaker.yaml` from `yaml`.
    pub fn new(ns: &'a Netns, dir: &'a Path, yaml: &str) -> Self {
        std::fs::write(dir.join("speaker.yaml"), yaml).expect("write speaker.yaml");
        Serval {
            ns,
            dir,
            daemon: None,
        }
    }

    /// Starts `serval-node speaker`.
    pub fn start(&mut self) {
        let bin = crate::require::serval_bin("serval-node");
        let conf = self.dir.join("speaker.yaml");
        let args = [
            bin.to_str().unwrap(),
            "speaker",
            "--config",
            conf.to_str().unwrap(),
        ];
        self.daemon =
            Some(Daemon::start(self.ns, "serval", &args, self.dir).expect("start serval-node"));
    }

    /// Rewrites the config and sends SIGHUP.
    pub fn reload(&self, yaml: &str) {
        std::fs::write(self.dir.join("speaker.yaml"), yaml).expect("write speaker.yaml");
        if let Some(d) = &self.daemon {
            d.signal(nix::sys::signal::Signal::SIGHUP);
        }
    }

    /// `/status` as JSON.
    pub fn status(&self) -> Result<Value, String> {
        let body = self
            .ns
            .http_get("127.0.0.1:9179", "/status")
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&body).map_err(|e| e.to_string())
    }

    /// The status of one peer.
    pub fn peer(&self, addr: &str) -> Result<Value, String> {
        let s = self.status()?;
        s["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["address"] == addr).cloned())
            .ok_or_else(|| s.to_string())
    }

    /// `Ok` when the session with `addr` is Established.
    pub fn established(&self, addr: &str) -> Result<(), String> {
        let p = self.peer(addr)?;
        if p["state"] == "Established" {
            Ok(())
        } else {
            Err(p.to_string())
        }
    }

    /// A route's best path from `/routes`.
    pub fn route(&self, prefix: &str) -> Result<RouteInfo, String> {
        let family = if prefix.contains(':') {
            "ipv6-unicast"
        } else {
            "ipv4-unicast"
        };
        let body = self
            .ns
            .http_get(
                "127.0.0.1:9179",
                &format!("/routes?family={family}&prefix={prefix}"),
            )
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let entry = v
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["prefix"] == prefix))
            .ok_or(body.clone())?;
        let a = &entry["paths"][0]["attributes"];
        Ok(RouteInfo {
            as_path: a["asPath"]
                .as_array()
                .map(|segs| {
                    segs.iter()
                        .flat_map(|s| s["asns"].as_array().cloned().unwrap_or_default())
                        .filter_map(|x| x.as_u64().map(|n| n as u32))
                        .collect()
                })
                .unwrap_or_default(),
            next_hop: a["nextHop"].as_str().unwrap_or("").to_string(),
            med: a["med"].as_u64().map(|m| m as u32),
            local_pref: a["localPref"].as_u64().map(|m| m as u32),
            communities: a["communities"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|c| c.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// The tail of its log.
    pub fn log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_tail(40))
            .unwrap_or_default()
    }
}
