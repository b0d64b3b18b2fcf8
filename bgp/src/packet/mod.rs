//! The BGP wire codec: every message and attribute we speak, decode and encode.

pub mod attribute;
pub mod capability;
pub mod error;
pub mod message;
pub mod nlri;

pub use attribute::{DecodeContext, EncodeContext, PathAttributes};
pub use error::NotificationError;
pub use message::{Message, Notification, Open, RouteRefresh, Update};
