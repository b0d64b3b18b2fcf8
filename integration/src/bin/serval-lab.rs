//! serval-lab: run containerlab topology files on network namespaces, without Docker.
//!   serval-lab up FILE | down FILE | status FILE | exec FILE NODE -- CMD...
//!   serval-lab pod FILE NODE NAME   (a pod through serval-cni inside NODE; prints its address)

use std::path::PathBuf;
use std::process::ExitCode;

use serval_integration::clab::{runner, topology::Topology};

fn usage() -> ExitCode {
    eprintln!(
        "usage: serval-lab up|down|status FILE\n       serval-lab exec FILE NODE -- COMMAND...\n       serval-lab pod FILE NODE NAME"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(verb), Some(file)) = (args.first(), args.get(1)) else {
        return usage();
    };
    let topo = match Topology::load(&PathBuf::from(file)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("serval-lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match verb.as_str() {
        "up" => runner::up(&topo).map(|()| {
            format!(
                "lab {} is up; tear it down with: serval-lab down {file}",
                topo.name
            )
        }),
        "down" => {
            runner::down(&topo.name);
            Ok(format!("lab {} is down", topo.name))
        }
        "status" => Ok(runner::status(&topo).trim_end().to_string()),
        "exec" => {
            let Some(node) = args.get(2) else {
                return usage();
            };
            let cmd: Vec<String> = args
                .iter()
                .skip(3)
                .skip_while(|a| *a == "--")
                .cloned()
                .collect();
            if cmd.is_empty() {
                return usage();
            }
            runner::exec_in(&topo, node, &cmd).map(|o| o.trim_end().to_string())
        }
        "pod" => {
            let (Some(node), Some(name)) = (args.get(2), args.get(3)) else {
                return usage();
            };
            // serval-cni sits next to this binary (same build).
            let bin_dir = std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.display().to_string()))
                .unwrap_or_else(|| ".".into());
            serval_integration::clab::pods::add_pod(&topo, node, name, &bin_dir)
                .map(|p| p.ip.to_string())
                .map_err(|e| runner::LabError::Step {
                    what: format!("pod {name} on {node}"),
                    detail: e,
                })
        }
        _ => return usage(),
    };
    match result {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("serval-lab: {e}");
            ExitCode::FAILURE
        }
    }
}
