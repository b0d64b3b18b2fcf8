//! Driving each peer's sessions: attaching connections, feeding the sans-IO FSM its events
//! and performing the actions it returns (connect, send, timers, established, down).

use super::*;

impl Speaker {
    pub(super) fn attach(&mut self, id: PeerId, dir: Direction, stream: tokio::net::TcpStream) {
        let serial = self.next_serial;
        self.next_serial += 1;
        let entry = self.peers.get_mut(&id).expect("caller checked");
        let params = connection::ConnParams {
            ebgp: entry.ebgp(),
            extended_messages: entry.cfg().extended_messages,
            low_water: self.cfg.write_queue_bytes / 2,
        };
        match connection::start_connection(id, serial, stream, params, self.input_tx.clone()) {
            Ok(conn) => {
                entry
                    .span()
                    .in_scope(|| tracing::debug!(?dir, local = %conn.local, "TCP connection up"));
                entry.attach_conn(dir, conn);
                self.fsm_event(id, Event::TcpConnected(dir));
            }
            Err(e) => {
                entry
                    .span()
                    .in_scope(|| tracing::debug!(error = %e, "connection lost before use"));
                if dir == Direction::Outgoing {
                    self.fsm_event(id, Event::TcpFailed(dir));
                }
            }
        }
    }

    /// Feeds the FSM and carries out its actions.
    pub(super) fn fsm_event(&mut self, id: PeerId, event: Event) {
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        let actions = entry.handle(event);
        for action in actions {
            self.act(id, action);
        }
        if let Some(entry) = self.peers.get_mut(&id) {
            entry.note_state();
        }
    }

    pub(super) fn act(&mut self, id: PeerId, action: Action) {
        let local_as = self.cfg.as_number;
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        match action {
            Action::Connect => {
                let cfg = entry.cfg();
                let params = ConnectParams {
                    remote: SocketAddr::new(cfg.address, cfg.port),
                    source: cfg.source_address,
                    ttl: cfg.ttl(local_as),
                    timeout: cfg.connect_retry().max(Duration::from_secs(1)),
                    md5: cfg.password.as_ref().map(|p| p.0.as_bytes().to_vec()),
                    min_ttl: cfg.min_ttl(),
                };
                let inputs = self.input_tx.clone();
                entry.begin_connect(|attempt| {
                    connection::spawn_connect(id, attempt, params, inputs)
                });
            }
            Action::Send(dir, msg) => entry.send_message(dir, &msg),
            Action::Close(dir) => entry.close_conn(dir),
            Action::StartTimer(timer, after) => {
                let deadline = tokio::time::Instant::now() + after;
                if entry.extend_timer(timer, deadline) {
                    return;
                }
                let serial = self.next_serial;
                self.next_serial += 1;
                let handle =
                    connection::spawn_timer(id, timer, serial, after, self.input_tx.clone());
                // Replacing a timer drops (and so stops) the one it replaces.
                entry.arm_timer(timer, serial, handle, deadline);
            }
            Action::StopTimer(timer) => entry.stop_timer(timer),
            Action::Established(neg) => {
                let (ebgp, address) = (entry.ebgp(), entry.cfg().address);
                let Some(session) = entry.establish(*neg) else {
                    return;
                };
                let neg = session.neg.clone();
                entry.span().in_scope(|| {
                    tracing::info!(remote_id = %neg.remote_id, hold = neg.hold_time, families = ?neg.families, extended_messages = neg.extended_messages, "session established")
                });
                self.sources.insert(
                    id,
                    SourceInfo {
                        ebgp,
                        router_id: neg.remote_id,
                        address,
                    },
                );
                self.on_reestablished(id, &neg);
                self.full_export(id, true);
            }
            Action::Down(reason) => {
                entry
                    .span()
                    .in_scope(|| tracing::warn!(?reason, "session down"));
                let kept = self.begin_stale(id, &reason);
                if let Some(gid) = self.peers[&id].group() {
                    self.leave_group(id, gid, false);
                }
                let entry = self.peers.get_mut(&id).expect("checked above");
                entry.session_down(kept);
                if !kept {
                    self.drop_routes_of(id);
                }
            }
            Action::Update(update) => self.on_update(id, *update),
            Action::RouteRefresh(rr) => {
                if let Some(family) = Family::from_afi_safi(rr.afi, rr.safi) {
                    entry
                        .span()
                        .in_scope(|| tracing::info!(%family, "route refresh requested"));
                    self.resend_table(id, family);
                }
            }
        }
    }

    pub(super) fn drop_routes_of(&mut self, id: PeerId) {
        let ctx = DecideCtx {
            cfg: self.decision_config(),
            sources: &self.sources,
        };
        let changed4 = self.tables.v4.remove_peer(id, false, &ctx);
        let changed6 = self.tables.v6.remove_peer(id, false, &ctx);
        for (prefix, old) in changed4 {
            mark_dirty(&mut self.tables.dirty4, prefix, old);
        }
        for (prefix, old) in changed6 {
            mark_dirty(&mut self.tables.dirty6, prefix, old);
        }
    }
}
