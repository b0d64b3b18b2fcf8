//! "Eventually" polling: the only way scenario tests wait (never a fixed sleep).

use std::time::{Duration, Instant};

/// Polls `check` every 200 ms until it returns `Ok`, or panics after `timeout` with the
/// last observation and whatever `context` adds (daemon logs, say).
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\nlast observed: {last}\n{}",
                    context()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// [`eventually`] for checks that await (datastore reads): polls every 200 ms without
/// blocking the runtime.
pub async fn eventually_async<T, F>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
    context: impl Fn() -> String,
) -> T
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\nlast observed: {last}\n{}",
                    context()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// JSON subset match: every key/element in `expected` must be present and equal in
/// `actual` (arrays match element-wise by position). Returns the first mismatch path.
pub fn json_subset(expected: &serde_json::Value, actual: &serde_json::Value) -> Result<(), String> {
    fn walk(path: &str, e: &serde_json::Value, a: &serde_json::Value) -> Result<(), String> {
        use serde_json::Value::*;
        match (e, a) {
            (Object(eo), Object(ao)) => {
                for (k, ev) in eo {
                    let av = ao.get(k).ok_or_else(|| format!("{path}.{k}: missing"))?;
                    walk(&format!("{path}.{k}"), ev, av)?;
                }
                Ok(())
            }
            (Array(ea), Array(aa)) => {
                if ea.len() > aa.len() {
                    return Err(format!(
                        "{path}: expected at least {} elements, found {}",
                        ea.len(),
                        aa.len()
                    ));
                }
                ea.iter()
                    .zip(aa)
                    .enumerate()
                    .try_for_each(|(i, (e, a))| walk(&format!("{path}[{i}]"), e, a))
            }
            _ if e == a => Ok(()),
            _ => Err(format!("{path}: expected {e}, found {a}")),
        }
    }
    walk("$", expected, actual)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_matching() {
        let actual = json!({"a": 1, "b": {"c": [1, 2, 3], "d": "x"}});
        assert!(json_subset(&json!({"b": {"c": [1, 2]}}), &actual).is_ok());
        assert_eq!(
            json_subset(&json!({"b": {"d": "y"}}), &actual).unwrap_err(),
            "$.b.d: expected \"y\", found \"x\""
        );
        assert!(
            json_subset(&json!({"z": 1}), &actual)
                .unwrap_err()
                .contains("missing")
        );
    }
}
