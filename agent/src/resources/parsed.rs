//! Address fields of resources: kept both as the text the user wrote and as the value it
//! parses to, parsed once when the object is read. The text round-trips unchanged (an
//! operator's `10.0.0.1/16` stays as written) and lets validation name a value that does not
//! parse instead of failing the whole object; code reads the typed value and never parses.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value a resource field holds as text, with the parse rule its field uses.
pub trait FieldValue: Sized + Clone + fmt::Debug {
    /// The value `text` stands for, or None when it is not one.
    fn parse_field(text: &str) -> Option<Self>;
}

/// A prefix; a bare address means its /32 or /128, as Calico reads these fields.
impl FieldValue for IpNet {
    fn parse_field(text: &str) -> Option<Self> {
        serval_policy::model::parse_net(text)
    }
}

impl FieldValue for IpAddr {
    fn parse_field(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl FieldValue for Ipv4Addr {
    fn parse_field(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl FieldValue for Ipv6Addr {
    fn parse_field(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

/// BGPPeer.peerIP: `IP`, `IPv4:port` or `[IPv6]:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddress {
    /// The peer's address.
    pub ip: IpAddr,
    /// The port, when not BGP's 179.
    pub port: Option<u16>,
}

impl FieldValue for PeerAddress {
    fn parse_field(text: &str) -> Option<Self> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(PeerAddress { ip, port: None });
        }
        let sock: std::net::SocketAddr = text.parse().ok()?;
        Some(PeerAddress {
            ip: sock.ip(),
            port: Some(sock.port()),
        })
    }
}

/// A field's text and, when it parses, its value. Two fields are equal when their text is.
#[derive(Clone)]
pub struct Parsed<T> {
    text: String,
    value: Option<T>,
}

impl<T: FieldValue> Parsed<T> {
    /// Parses `text` by the field's rule, keeping the text either way.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let value = T::parse_field(&text);
        Parsed { text, value }
    }
}

impl<T> Parsed<T> {
    /// The text as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value, or None when the text does not parse (validation names the field).
    pub fn value(&self) -> Option<&T> {
        self.value.as_ref()
    }
}

impl<T: Copy> Parsed<T> {
    /// The value, copied.
    pub fn get(&self) -> Option<T> {
        self.value
    }
}

impl<T: FieldValue> From<&str> for Parsed<T> {
    fn from(text: &str) -> Self {
        Parsed::new(text)
    }
}

impl<T: FieldValue> From<String> for Parsed<T> {
    fn from(text: String) -> Self {
        Parsed::new(text)
    }
}

/// A value made in code: its text is its canonical form.
impl From<IpNet> for Parsed<IpNet> {
    fn from(net: IpNet) -> Self {
        Parsed {
            text: net.to_string(),
            value: Some(net),
        }
    }
}

/// An unset field (empty text, no value), as serde's `default` needs.
impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Parsed {
            text: String::new(),
            value: None,
        }
    }
}

impl<T> PartialEq for Parsed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<T> Eq for Parsed<T> {}

impl<T> PartialEq<str> for Parsed<T> {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl<T> PartialEq<&str> for Parsed<T> {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl<T> fmt::Debug for Parsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl<T> fmt::Display for Parsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<T> Serialize for Parsed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de, T: FieldValue> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Parsed::new)
    }
}

/// On the wire (and in the CRD schema) the field is a string.
impl<T> JsonSchema for Parsed<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        String::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_round_trips_and_the_value_is_parsed_once() {
        let p: Parsed<IpNet> = serde_json::from_str("\"10.0.0.1/16\"").unwrap();
        assert_eq!(p.get(), Some("10.0.0.1/16".parse().unwrap()));
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"10.0.0.1/16\"");
        let bare: Parsed<IpNet> = "192.0.2.7".into();
        assert_eq!(bare.get(), Some("192.0.2.7/32".parse().unwrap()));
    }

    #[test]
    fn a_value_that_does_not_parse_keeps_its_text_for_validation() {
        let p: Parsed<IpNet> = serde_json::from_str("\"10.0.0.0/33\"").unwrap();
        assert_eq!(p.get(), None);
        assert_eq!(p.text(), "10.0.0.0/33");
        assert!(
            serde_json::from_str::<Parsed<IpNet>>("7").is_err(),
            "not a string"
        );
    }

    #[test]
    fn peer_addresses_take_an_optional_port() {
        let p = |t: &str| Parsed::<PeerAddress>::new(t).get();
        assert_eq!(
            p("192.0.2.1"),
            Some(PeerAddress {
                ip: "192.0.2.1".parse().unwrap(),
                port: None
            })
        );
        assert_eq!(p("192.0.2.1:1179").unwrap().port, Some(1179));
        assert_eq!(p("[2001:db8::1]:1179").unwrap().port, Some(1179));
        assert_eq!(p("2001:db8::1").unwrap().port, None);
        assert_eq!(p("192.0.2.1:x"), None);
    }

    #[test]
    fn the_schema_is_a_string() {
        let schema = schemars::schema_for!(Parsed<IpNet>);
        assert_eq!(schema.get("type"), Some(&serde_json::json!("string")));
    }
}
