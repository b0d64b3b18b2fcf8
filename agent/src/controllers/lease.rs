//! One active controllers replica through a `coordination.k8s.io` Lease: the decision is a
//! pure function of the Lease as read and the clock; the task only reads and writes it
//! (compare-and-swap on resourceVersion, so two replicas never both win).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// What a replica does with the Lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It holds the Lease: renew it.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Another replica holds a live Lease: stand by.
    StandBy,
}

/// Decides from the Lease's holder and last renewal (`renewed`, `now` in seconds).
pub fn decide(
    me: &str,
    holder: Option<&str>,
    renewed: Option<i64>,
    duration: i64,
    now: i64,
) -> Decision {
    match holder {
        Some(h) if h == me => Decision::Renew,
        Some(_) if renewed.is_some_and(|r| now - r < duration) => Decision::StandBy,
        _ => Decision::Acquire,
    }
}

/// Keeps trying to hold Lease `name` in `namespace` as `me`; `active` says whether this
/// replica holds it. Renews every third of `duration`.
pub async fn run(
    client: kube::Client,
    namespace: String,
    name: String,
    me: String,
    duration: Duration,
    active: watch::Sender<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let secs = duration.as_secs() as i64;
    loop {
        let held = match step(&api, &name, &me, secs).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, lease = %name, "lease update failed");
                false
            }
        };
        if *active.borrow() != held {
            tracing::info!(lease = %name, active = held, "controllers leadership changed");
        }
        let _ = active.send(held);
        tokio::time::sleep(duration / 3).await;
    }
}

async fn step(api: &Api<Lease>, name: &str, me: &str, secs: i64) -> Result<bool, kube::Error> {
    let now = chrono_now();
    let current = api.get_opt(name).await?;
    let spec = current
        .as_ref()
        .and_then(|l| l.spec.clone())
        .unwrap_or_default();
    let renewed = spec.renew_time.as_ref().map(|t| t.0.as_second());
    match decide(
        me,
        spec.holder_identity.as_deref(),
        renewed,
        secs,
        now.as_second(),
    ) {
        Decision::StandBy => Ok(false),
        d => {
            let mut lease = current.unwrap_or_else(|| Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..ObjectMeta::default()
                },
                spec: None,
            });
            let transitions = spec.lease_transitions.unwrap_or(0)
                + i32::from(d == Decision::Acquire && spec.holder_identity.is_some());
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(me.to_string()),
                lease_duration_seconds: Some(secs as i32),
                acquire_time: if d == Decision::Acquire {
                    Some(MicroTime(now))
                } else {
                    spec.acquire_time.clone()
                },
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            });
            // resourceVersion makes the write conditional: a rival's write in between wins.
            let r = if lease.metadata.resource_version.is_some() {
                api.replace(name, &PostParams::default(), &lease).await
            } else {
                api.create(&PostParams::default(), &lease).await
            };
            match r {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

fn chrono_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_until_its_lease_runs_out() {
        assert_eq!(decide("a", None, None, 15, 100), Decision::Acquire);
        assert_eq!(decide("a", Some("a"), Some(99), 15, 100), Decision::Renew);
        assert_eq!(decide("b", Some("a"), Some(99), 15, 100), Decision::StandBy);
        assert_eq!(decide("b", Some("a"), Some(80), 15, 100), Decision::Acquire);
    }
}
