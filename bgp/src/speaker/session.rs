//! Driving each peer's sessions: attaching connections, feeding the sans-IO FSM its events
//! and performing the actions it returns (connect, send, timers, established, down).

use super::*;

impl Speaker {
    pub(super) fn attach(&mut self, id: PeerId, dir: Direction, stream: tokio::net::TcpStream) {
        let serial = self.next_serial;
        self.next_serial += 1;
        let entry = self.peers.get_mut(&id).expect("caller checked");
        let params = connection::ConnParams {
            ebgp: entry.ebgp,
            extended_messages: entry.cfg.extended_messages,
            low_water: self.cfg.write_queue_bytes / 2,
        };
        match connection::start_connection(id, serial, stream, params, self.input_tx.clone()) {
            Ok(conn) => {
                entry
                    .span
                    .in_scope(|| tracing::debug!(?dir, local = %conn.local, "TCP connection up"));
                entry.conns[dir_index(dir)] = Some(conn);
                self.fsm_event(id, Event::TcpConnected(dir));
            }
            Err(e) => {
                entry
                    .span
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
        let actions = entry.fsm.handle(event);
        for action in actions {
            self.act(id, action);
        }
        if let Some(entry) = self.peers.get_mut(&id) {
            let state = entry.fsm.state();
            if state != entry.last_state {
                entry.span.in_scope(
                    || tracing::info!(from = ?entry.last_state, to = ?state, "state change"),
                );
                entry.last_state = state;
                entry.state_since = Instant::now();
            }
        }
    }

    pub(super) fn act(&mut self, id: PeerId, action: Action) {
        let local_as = self.cfg.as_number;
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        match action {
            Action::Connect => {
                entry.connect_attempt += 1;
                let params = ConnectParams {
                    remote: SocketAddr::new(entry.cfg.address, entry.cfg.port),
                    source: entry.cfg.source_address,
                    ttl: entry.cfg.ttl(local_as),
                    timeout: entry.cfg.connect_retry().max(Duration::from_secs(1)),
                    md5: entry.cfg.password.as_ref().map(|p| p.0.as_bytes().to_vec()),
                    min_ttl: entry.cfg.min_ttl(),
                };
                entry.connect_task = Some(OwnedTask::new(connection::spawn_connect(
                    id,
                    entry.connect_attempt,
                    params,
                    self.input_tx.clone(),
                )));
            }
            Action::Send(dir, msg) => {
                if let Some(conn) = &entry.conns[dir_index(dir)] {
                    if let Message::Notification(n) = &msg {
                        entry.counts.notifications_sent += 1;
                        entry.span.in_scope(|| {
                            tracing::warn!(
                                code = n.code,
                                subcode = n.subcode,
                                "NOTIFICATION sent: {}",
                                crate::packet::error::describe(n.code, n.subcode)
                            )
                        });
                    }
                    entry.counts.messages_sent += 1;
                    conn.send(
                        msg.encode(EncodeContext {
                            four_octet_as: true,
                            extended_messages: false,
                        })
                        .into(),
                    );
                }
            }
            Action::Close(dir) => {
                if let Some(conn) = entry.conns[dir_index(dir)].take() {
                    conn.close();
                }
            }
            Action::StartTimer(timer, after) => {
                let serial = self.next_serial;
                self.next_serial += 1;
                let handle =
                    connection::spawn_timer(id, timer, serial, after, self.input_tx.clone());
                // Replacing a timer drops (and so stops) the one it replaces.
                entry.timers.insert(timer, (serial, OwnedTask::new(handle)));
            }
            Action::StopTimer(timer) => {
                entry.timers.remove(&timer);
            }
            Action::Established(neg) => {
                let Some(conn) = &entry.conns[dir_index(neg.direction)] else {
                    return;
                };
                entry.span.in_scope(|| {
                    tracing::info!(remote_id = %neg.remote_id, hold = neg.hold_time, families = ?neg.families, extended_messages = neg.extended_messages, "session established")
                });
                conn.meter.set_send_hold(entry.cfg.send_hold(neg.hold_time));
                self.sources.insert(
                    id,
                    SourceInfo {
                        ebgp: entry.ebgp,
                        router_id: neg.remote_id,
                        address: entry.cfg.address,
                    },
                );
                entry.session = Some(Session {
                    local: conn.local,
                    remote: conn.remote,
                    since: SystemTime::now(),
                    neg: *neg,
                });
                entry.established_transitions += 1;
                let neg = entry.session.as_ref().map(|s| s.neg.clone());
                if let Some(neg) = neg {
                    self.on_reestablished(id, &neg);
                }
                self.full_export(id, true);
            }
            Action::Down(reason) => {
                entry
                    .span
                    .in_scope(|| tracing::warn!(?reason, "session down"));
                let kept = self.begin_stale(id, &reason);
                if let Some(gid) = self.peers[&id].group {
                    self.leave_group(id, gid, false);
                }
                let entry = self.peers.get_mut(&id).expect("checked above");
                entry.session = None;
                entry.backlog = None;
                entry.eor_received.clear();
                if !kept {
                    entry.accepted = [0, 0];
                    entry.filtered.clear();
                    self.drop_routes_of(id);
                }
            }
            Action::Update(update) => self.on_update(id, *update),
            Action::RouteRefresh(rr) => {
                if let Some(family) = Family::from_afi_safi(rr.afi, rr.safi) {
                    entry
                        .span
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
        self.tables.dirty4.extend(changed4);
        self.tables.dirty6.extend(changed6);
    }
}

pub(super) fn find_dir(entry: &PeerEntry, serial: u64) -> Option<Direction> {
    [Direction::Outgoing, Direction::Incoming]
        .into_iter()
        .find(|d| {
            entry.conns[dir_index(*d)]
                .as_ref()
                .is_some_and(|c| c.serial == serial)
        })
}
