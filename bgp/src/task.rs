//! Tasks owned by a handle: dropping or replacing the handle stops the task, so a timer or
//! connect attempt can never outlive the peer or the state that started it.

use tokio::task::JoinHandle;

/// A spawned task that is aborted when this handle is dropped.
#[derive(Debug)]
pub(crate) struct OwnedTask(JoinHandle<()>);

impl OwnedTask {
    /// Takes ownership of a spawned task.
    pub(crate) fn new(handle: JoinHandle<()>) -> Self {
        OwnedTask(handle)
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_the_handle_stops_the_task() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let task = OwnedTask::new(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let _ = tx.send(()).await;
        }));
        drop(task);
        // The sender went with the aborted task: the channel closes without a message.
        assert_eq!(rx.recv().await, None);
    }
}
