//! Decode errors and the NOTIFICATION each one maps to (RFC 4271 §6, RFC 7606).
//!
//! Every decoder returns a [`NotificationError`] when the session must be reset; the
//! value carries the exact code, subcode and data the NOTIFICATION must hold, so the
//! driver never has to guess. Errors that RFC 7606 lets us survive are reported as an
//! [`UpdateErrorAction`] next to the decoded UPDATE instead.

use std::fmt;

/// NOTIFICATION error codes (RFC 4271 §4.5, RFC 6608 for the FSM code).
pub mod code {
    /// Message Header Error.
    pub const MESSAGE_HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN_MESSAGE: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE_MESSAGE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;
    /// ROUTE-REFRESH Message Error (RFC 7313).
    pub const ROUTE_REFRESH: u8 = 7;
    /// Send Hold Timer Expired (RFC 9687): nothing we queued could be written for the send
    /// hold time.
    pub const SEND_HOLD_TIMER_EXPIRED: u8 = 8;
}

/// Message Header Error subcodes (RFC 4271 §4.5).
pub mod header_subcode {
    /// The marker is not all ones.
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    /// The length field is out of range for the message type.
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    /// The type field is not one we know.
    pub const BAD_MESSAGE_TYPE: u8 = 3;
}

/// OPEN Message Error subcodes (RFC 4271 §4.5, RFC 5492).
pub mod open_subcode {
    /// Not one of the listed subcodes.
    pub const UNSPECIFIC: u8 = 0;
    /// Version is not 4.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    /// The peer's AS is not the one configured.
    pub const BAD_PEER_AS: u8 = 2;
    /// The BGP identifier is zero or clashes with ours on iBGP.
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    /// An optional parameter we do not know.
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    /// Hold time of 1 or 2 seconds.
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    /// A capability we require is missing (RFC 5492).
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
}

/// UPDATE Message Error subcodes (RFC 4271 §4.5).
pub mod update_subcode {
    /// Attribute list or withdrawn routes do not add up.
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    /// A well-known attribute type we do not know.
    pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
    /// A mandatory well-known attribute is missing.
    pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
    /// Attribute flags contradict the attribute type.
    pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
    /// Attribute length is wrong for its type.
    pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
    /// ORIGIN is not 0, 1 or 2.
    pub const INVALID_ORIGIN_ATTRIBUTE: u8 = 6;
    /// NEXT_HOP is not a usable address.
    pub const INVALID_NEXT_HOP_ATTRIBUTE: u8 = 8;
    /// An optional attribute failed its own checks.
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
    /// NLRI field cannot be parsed.
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    /// AS_PATH is malformed.
    pub const MALFORMED_AS_PATH: u8 = 11;
}

/// FSM Error subcodes (RFC 6608).
pub mod fsm_subcode {
    /// Unexpected message in OpenSent.
    pub const UNEXPECTED_IN_OPEN_SENT: u8 = 1;
    /// Unexpected message in OpenConfirm.
    pub const UNEXPECTED_IN_OPEN_CONFIRM: u8 = 2;
    /// Unexpected message in Established.
    pub const UNEXPECTED_IN_ESTABLISHED: u8 = 3;
}

/// Cease subcodes (RFC 4486, RFC 8203).
pub mod cease_subcode {
    /// Max-prefix limit reached.
    pub const MAX_PREFIXES: u8 = 1;
    /// Operator shut the session down.
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    /// The peer was removed from the configuration.
    pub const PEER_DECONFIGURED: u8 = 3;
    /// Operator reset the session.
    pub const ADMINISTRATIVE_RESET: u8 = 4;
    /// Connection refused by configuration.
    pub const CONNECTION_REJECTED: u8 = 5;
    /// Session configuration changed.
    pub const OTHER_CONFIGURATION_CHANGE: u8 = 6;
    /// Lost the connection collision resolution.
    pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
    /// Out of resources.
    pub const OUT_OF_RESOURCES: u8 = 8;
    /// BFD declared the peer down (RFC 9384).
    pub const BFD_DOWN: u8 = 10;
}

/// A fatal protocol error: the NOTIFICATION to send before closing the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct NotificationError {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Data field, exactly as the RFC prescribes for this code/subcode.
    pub data: Vec<u8>,
}

impl NotificationError {
    /// Builds an error with a data field.
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Self {
            code,
            subcode,
            data: data.into(),
        }
    }

    /// Message Header Error / Bad Message Length, carrying the bad length field.
    pub fn bad_length(length: u16) -> Self {
        Self::new(
            code::MESSAGE_HEADER,
            header_subcode::BAD_MESSAGE_LENGTH,
            length.to_be_bytes(),
        )
    }

    /// OPEN Message Error with the given subcode and no data.
    pub fn open(subcode: u8) -> Self {
        Self::new(code::OPEN_MESSAGE, subcode, Vec::new())
    }

    /// UPDATE Message Error with the given subcode and data.
    pub fn update(subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Self::new(code::UPDATE_MESSAGE, subcode, data)
    }

    /// Cease with the given subcode.
    pub fn cease(subcode: u8) -> Self {
        Self::new(code::CEASE, subcode, Vec::new())
    }
}

impl fmt::Display for NotificationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (code {}, subcode {})",
            describe(self.code, self.subcode),
            self.code,
            self.subcode
        )
    }
}

/// Human-readable name of a NOTIFICATION code/subcode pair, for logs and status.
pub fn describe(code: u8, subcode: u8) -> &'static str {
    match (code, subcode) {
        (1, 1) => "message header error: connection not synchronized",
        (1, 2) => "message header error: bad message length",
        (1, 3) => "message header error: bad message type",
        (1, _) => "message header error",
        (2, 1) => "open message error: unsupported version number",
        (2, 2) => "open message error: bad peer AS",
        (2, 3) => "open message error: bad BGP identifier",
        (2, 4) => "open message error: unsupported optional parameter",
        (2, 6) => "open message error: unacceptable hold time",
        (2, 7) => "open message error: unsupported capability",
        (2, _) => "open message error",
        (3, 1) => "update message error: malformed attribute list",
        (3, 2) => "update message error: unrecognized well-known attribute",
        (3, 3) => "update message error: missing well-known attribute",
        (3, 4) => "update message error: attribute flags error",
        (3, 5) => "update message error: attribute length error",
        (3, 6) => "update message error: invalid ORIGIN attribute",
        (3, 8) => "update message error: invalid NEXT_HOP attribute",
        (3, 9) => "update message error: optional attribute error",
        (3, 10) => "update message error: invalid network field",
        (3, 11) => "update message error: malformed AS_PATH",
        (3, _) => "update message error",
        (4, _) => "hold timer expired",
        (8, _) => "send hold timer expired",
        (5, 1) => "FSM error: unexpected message in OpenSent",
        (5, 2) => "FSM error: unexpected message in OpenConfirm",
        (5, 3) => "FSM error: unexpected message in Established",
        (5, _) => "FSM error",
        (6, 1) => "cease: maximum number of prefixes reached",
        (6, 2) => "cease: administrative shutdown",
        (6, 3) => "cease: peer de-configured",
        (6, 4) => "cease: administrative reset",
        (6, 5) => "cease: connection rejected",
        (6, 6) => "cease: other configuration change",
        (6, 7) => "cease: connection collision resolution",
        (6, 8) => "cease: out of resources",
        (6, 9) => "cease: hard reset",
        (6, 10) => "cease: BFD down",
        (6, _) => "cease",
        (7, _) => "route-refresh message error",
        _ => "unknown error",
    }
}

/// What RFC 7606 tells us to do with an UPDATE whose attributes were malformed,
/// ordered from mildest to harshest so the strongest one wins with `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UpdateErrorAction {
    /// Drop only the offending attribute and keep the routes (RFC 7606 §2).
    AttributeDiscard,
    /// Keep the session, but treat every NLRI in the UPDATE as withdrawn (RFC 7606 §2).
    TreatAsWithdraw,
}

/// A survivable attribute error found while decoding an UPDATE, for logging and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeError {
    /// What the RFC assigns for this error.
    pub action: UpdateErrorAction,
    /// Attribute type code that was at fault.
    pub type_code: u8,
    /// The UPDATE Message Error subcode that RFC 4271 would have used.
    pub subcode: u8,
    /// Short explanation for logs.
    pub reason: &'static str,
}
