//! The BFD Control packet (RFC 5880 §4.1): 24 bytes without authentication. Decoding checks
//! the §6.8.6 reception rules that need no session, so a bad packet is dropped with a reason
//! and never reaches a session.

/// The session states on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BfdState {
    /// Administratively down.
    AdminDown,
    /// Down.
    Down,
    /// Init (the peer is heard, not yet confirmed).
    Init,
    /// Up.
    Up,
}

impl BfdState {
    fn bits(self) -> u8 {
        match self {
            BfdState::AdminDown => 0,
            BfdState::Down => 1,
            BfdState::Init => 2,
            BfdState::Up => 3,
        }
    }

    fn from_bits(b: u8) -> BfdState {
        match b & 3 {
            0 => BfdState::AdminDown,
            1 => BfdState::Down,
            2 => BfdState::Init,
            _ => BfdState::Up,
        }
    }
}

/// Diagnostic codes (RFC 5880 §4.1) we set or show.
pub mod diag {
    /// No diagnostic.
    pub const NONE: u8 = 0;
    /// Control detection time expired.
    pub const DETECTION_TIME_EXPIRED: u8 = 1;
    /// Neighbor signaled session down.
    pub const NEIGHBOR_DOWN: u8 = 3;
    /// Administratively down.
    pub const ADMIN_DOWN: u8 = 7;
}

/// One Control packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlPacket {
    /// Diagnostic code.
    pub diag: u8,
    /// Sender's session state.
    pub state: BfdState,
    /// Poll: the sender asks for a Final (a parameter changed).
    pub poll: bool,
    /// Final: the answer to a Poll.
    pub final_: bool,
    /// Detection time multiplier.
    pub detect_mult: u8,
    /// The sender's discriminator for this session (never 0).
    pub my_discriminator: u32,
    /// The receiver's discriminator as the sender knows it (0 until learned).
    pub your_discriminator: u32,
    /// Desired minimum TX interval, microseconds.
    pub desired_min_tx_us: u32,
    /// Required minimum RX interval, microseconds (0: send me nothing).
    pub required_min_rx_us: u32,
}

/// Length of a packet without authentication.
pub const CONTROL_LEN: usize = 24;

impl ControlPacket {
    /// The wire form.
    pub fn encode(&self) -> [u8; CONTROL_LEN] {
        let mut b = [0u8; CONTROL_LEN];
        b[0] = (1 << 5) | (self.diag & 0x1f);
        b[1] = (self.state.bits() << 6) | (u8::from(self.poll) << 5) | (u8::from(self.final_) << 4);
        b[2] = self.detect_mult;
        b[3] = CONTROL_LEN as u8;
        b[4..8].copy_from_slice(&self.my_discriminator.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_discriminator.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx_us.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx_us.to_be_bytes());
        // Required Min Echo RX Interval: 0, we do not answer echo packets.
        b
    }

    /// Parses and checks a received packet; the error says why it is dropped.
    pub fn decode(b: &[u8]) -> Result<ControlPacket, &'static str> {
        if b.len() < CONTROL_LEN {
            return Err("shorter than a BFD Control packet");
        }
        if b[0] >> 5 != 1 {
            return Err("not BFD version 1");
        }
        let length = usize::from(b[3]);
        if length < CONTROL_LEN || length > b.len() {
            return Err("length field out of range");
        }
        let flags = b[1];
        if flags & 0x04 != 0 {
            return Err("authentication is not configured here");
        }
        if flags & 0x01 != 0 {
            return Err("multipoint bit set");
        }
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let p = ControlPacket {
            diag: b[0] & 0x1f,
            state: BfdState::from_bits(flags >> 6),
            poll: flags & 0x20 != 0,
            final_: flags & 0x10 != 0,
            detect_mult: b[2],
            my_discriminator: word(4),
            your_discriminator: word(8),
            desired_min_tx_us: word(12),
            required_min_rx_us: word(16),
        };
        if p.detect_mult == 0 {
            return Err("detect multiplier is zero");
        }
        if p.my_discriminator == 0 {
            return Err("My Discriminator is zero");
        }
        if p.your_discriminator == 0 && !matches!(p.state, BfdState::Down | BfdState::AdminDown) {
            return Err("Your Discriminator is zero in state Init or Up");
        }
        if p.poll && p.final_ {
            return Err("Poll and Final both set");
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlPacket {
        ControlPacket {
            diag: diag::NEIGHBOR_DOWN,
            state: BfdState::Init,
            poll: true,
            final_: false,
            detect_mult: 3,
            my_discriminator: 0x0102_0304,
            your_discriminator: 9,
            desired_min_tx_us: 300_000,
            required_min_rx_us: 100_000,
        }
    }

    #[test]
    fn round_trips_with_the_rfc_layout() {
        let p = sample();
        let b = p.encode();
        assert_eq!(b[0], 0x23, "version 1, diag 3");
        assert_eq!(b[1], 0xa0, "state Init (2) and Poll");
        assert_eq!(&b[2..4], &[3, 24]);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(ControlPacket::decode(&b), Ok(p));
    }

    #[test]
    fn bad_packets_are_refused_with_a_reason() {
        let good = sample().encode();
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            ControlPacket::decode(&b)
        };
        assert!(ControlPacket::decode(&good[..20]).is_err());
        assert_eq!(with(0, 0x43), Err("not BFD version 1"));
        assert_eq!(with(3, 20), Err("length field out of range"));
        assert_eq!(with(3, 40), Err("length field out of range"));
        assert_eq!(with(1, 0xa4), Err("authentication is not configured here"));
        assert_eq!(with(1, 0xa1), Err("multipoint bit set"));
        assert_eq!(with(1, 0xb0), Err("Poll and Final both set"));
        assert_eq!(with(2, 0), Err("detect multiplier is zero"));
        let mut b = good;
        b[4..8].fill(0);
        assert_eq!(ControlPacket::decode(&b), Err("My Discriminator is zero"));
        let mut b = good;
        b[8..12].fill(0);
        assert!(
            ControlPacket::decode(&b).is_err(),
            "Init needs Your Discriminator"
        );
        b[1] = 0x40; // Down
        assert!(ControlPacket::decode(&b).is_ok());
    }
}
