//! The namespace runner on its own topology files: up builds what the file says, down
//! leaves no namespace, process, mount point or state behind, and a failed up cleans up too.

use std::path::PathBuf;

use serval_integration::clab::runner;
use serval_integration::clab::topology::Topology;
use serval_integration::require;

/// The tests here look at host-wide state (temporary veth names), so they run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn topo(name: &str) -> Topology {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("topologies")
        .join(name);
    Topology::load(&path).unwrap()
}

fn namespaces_of(lab: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("clab-{lab}-")))
        .map(String::from)
        .collect()
}

#[test]
fn smoke_topology_up_works_and_down_leaves_nothing() {
    if !require::lab_ready("lab_runner", &["ip", "unshare", "nsenter"]) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = topo("smoke.clab.yml");
    runner::down(&t.name); // a leftover from an interrupted run
    runner::up(&t).unwrap_or_else(|e| panic!("up: {e}"));
    let guard = scopeguard(&t.name);
    assert_eq!(
        namespaces_of("svsmoke").len(),
        4,
        "three nodes and the bridge"
    );
    // Links through the bridge work.
    runner::exec_in(
        &t,
        "n1",
        &[
            "ping".into(),
            "-c".into(),
            "1".into(),
            "-W".into(),
            "2".into(),
            "10.77.0.3".into(),
        ],
    )
    .unwrap_or_else(|e| panic!("n1 -> n3: {e}"));
    // The bind is visible in n1 only, read-only; env and labels reach the node.
    let motd = runner::exec_in(
        &t,
        "n1",
        &["cat".into(), "/run/serval-lab-smoke/motd".into()],
    )
    .unwrap();
    assert_eq!(motd.trim(), "welcome to n1");
    assert!(
        runner::exec_in(
            &t,
            "n1",
            &[
                "sh".into(),
                "-c".into(),
                "echo x > /run/serval-lab-smoke/motd".into()
            ]
        )
        .is_err()
    );
    assert_eq!(
        std::fs::read_to_string("/run/serval-lab-smoke/motd").unwrap(),
        "",
        "host side is the empty mount point"
    );
    let env = runner::exec_in(
        &t,
        "n1",
        &[
            "sh".into(),
            "-c".into(),
            "echo $GREETING $CLAB_LABEL_ROLE".into(),
        ],
    )
    .unwrap();
    assert_eq!(env.trim(), "hello edge");
    // The background command runs in n2.
    let status = runner::status(&t);
    assert!(status.contains("lab svsmoke (up)"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.contains("n2") && !l.contains(" 0 process(es)")),
        "{status}"
    );
    let pids: Vec<i32> = std::fs::read_to_string("/run/serval-lab/svsmoke/pids")
        .unwrap()
        .lines()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "n1's mount holder and n2's cmd");
    drop(guard);
    assert!(namespaces_of("svsmoke").is_empty());
    for pid in pids {
        assert!(gone(pid), "process {pid} left behind");
    }
    assert!(!std::path::Path::new("/run/serval-lab/svsmoke").exists());
    assert!(
        !std::path::Path::new("/run/serval-lab-smoke").exists(),
        "created mount point and its directory removed"
    );
}

#[test]
fn a_failed_up_says_where_and_cleans_up() {
    if !require::lab_ready("lab_runner_failure", &["ip"]) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = topo("broken.clab.yml");
    runner::down(&t.name);
    let e = runner::up(&t).unwrap_err().to_string();
    assert!(e.contains("node b") && e.contains("no-such-device"), "{e}");
    assert!(namespaces_of("svbroken").is_empty());
    assert!(!std::path::Path::new("/run/serval-lab/svbroken").exists());
}

/// Tears the lab down when dropped (also when an assertion fails).
fn scopeguard(lab: &str) -> impl Drop {
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            runner::down(&self.0);
        }
    }
    Down(lab.to_string())
}

/// The process has exited (a zombie waiting for its parent counts as gone).
fn gone(pid: i32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn host_links() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(String::from))
        .filter(|n| n.starts_with("svl"))
        .collect()
}

#[test]
fn every_topology_file_comes_up_and_goes_away_without_a_trace() {
    if !require::lab_ready(
        "lab_runner: every topology file",
        &[
            "ip",
            "unshare",
            "nsenter",
            "etcd",
            "bird",
            "/usr/lib/frr/zebra",
        ],
    ) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("topologies");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".clab.yml") && f != "broken.clab.yml")
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let lab = serval_integration::clab::scenario::Lab::up(&file);
        let name = lab.topo.name.clone();
        assert_eq!(
            namespaces_of(&name).len(),
            lab.topo.nodes.len(),
            "{file}: one namespace per node"
        );
        let status = runner::status(&lab.topo);
        for n in lab.topo.nodes.iter().filter(|n| n.cmd.is_some()) {
            assert!(
                status
                    .lines()
                    .any(|l| l.contains(&format!(" {} ", n.name)) && !l.contains(" 0 process(es)")),
                "{file}: {}'s cmd is not running:\n{status}",
                n.name
            );
        }
        let pids: Vec<i32> = std::fs::read_to_string(format!("/run/serval-lab/{name}/pids"))
            .unwrap()
            .lines()
            .filter_map(|p| p.parse().ok())
            .collect();
        drop(lab);
        assert!(namespaces_of(&name).is_empty(), "{file}: namespaces left");
        for pid in pids {
            assert!(gone(pid), "{file}: process {pid} left behind");
        }
        assert!(
            !std::path::Path::new(&format!("/run/serval-lab/{name}")).exists(),
            "{file}: state left"
        );
        let links = host_links();
        assert!(links.is_empty(), "{file}: host interfaces left: {links:?}");
    }
}
