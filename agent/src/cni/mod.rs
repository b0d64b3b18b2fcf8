//! serval-cni, the CNI plugin: the runtime's call (environment + stdin) in, the result or a
//! spec error (JSON on stdout, non-zero exit) out. The binary only gathers its inputs and
//! prints what [`run`] returns.

pub mod plugin;
pub mod pod_net;
pub mod spec;

use std::collections::BTreeMap;

use spec::{CniEnv, CniError, Command, ErrorCode, NetConf};

/// What the process prints and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// JSON for stdout (empty for a successful DEL, CHECK or STATUS).
    pub stdout: String,
    /// The exit code.
    pub exit_code: i32,
}

fn failure(e: &CniError, version: &str) -> Outcome {
    Outcome {
        stdout: e.to_json(version).to_string(),
        exit_code: 1,
    }
}

fn done() -> Outcome {
    Outcome {
        stdout: String::new(),
        exit_code: 0,
    }
}

/// Runs one CNI call.
pub async fn run(vars: &BTreeMap<String, String>, stdin: &[u8]) -> Outcome {
    // The version to answer in before the configuration is read (and if it cannot be).
    let fallback = spec::SUPPORTED_VERSIONS.last().copied().unwrap_or("1.1.0");
    let env = match CniEnv::from_vars(vars) {
        Ok(e) => e,
        Err(e) => return failure(&e, fallback),
    };
    if env.command == Command::Version {
        // VERSION's stdin carries only cniVersion; answer in it when it is ours.
        let asked = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|s| s.as_str())
                    .map(String::from)
            })
            .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| fallback.to_string());
        return Outcome {
            stdout: spec::version_result(&asked).to_string(),
            exit_code: 0,
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return failure(&e, fallback),
    };
    let version = conf.cni_version.clone();
    let result = match env.command {
        Command::Add => plugin::add(&env, &conf).await.and_then(|r| {
            serde_json::to_string(&r).map_err(|e| {
                CniError::new(ErrorCode::Internal, "cannot encode the result").with_details(e)
            })
        }),
        Command::Del => plugin::del(&env, &conf).await.map(|()| String::new()),
        Command::Check => plugin::check(&env, &conf).await.map(|()| String::new()),
        Command::Status => plugin::status(&conf).await.map(|()| String::new()),
        Command::Version => unreachable!("answered above"),
    };
    match result {
        Ok(stdout) if stdout.is_empty() => done(),
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => failure(&e, &version),
    }
}
