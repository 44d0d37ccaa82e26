//! One instance of a service, as Apache Curator's service discovery writes it to ZooKeeper.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::DiscoveryError;

/// How Curator treats an instance's node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceType {
    /// An ephemeral node, gone with the session that made it. The default.
    #[default]
    Dynamic,
    /// A node that stays after its session ends.
    Static,
    /// A node that stays, and that Curator never removes.
    Permanent,
    /// An ephemeral node whose name gets a sequence number.
    DynamicSequential,
}

/// One instance of a service: Curator's `ServiceInstance`, read and written as the JSON of its
/// `JsonInstanceSerializer`, so that Rust and Java services share one registry.
///
/// `payload` and `uri_spec` are kept as the JSON they are (a payload Curator wrote for a Java
/// class keeps its `"@class"` key), and fields this type does not know are ignored on reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ServiceInstance {
    /// The service's name: the node's parent.
    pub name: String,
    /// The instance's id: the node's own name.
    pub id: String,
    /// The host clients connect to.
    pub address: String,
    /// The port clients connect to; `None` when the instance offers only `ssl_port`.
    pub port: Option<u16>,
    /// The port of the instance's TLS endpoint, if any.
    pub ssl_port: Option<u16>,
    /// Whatever the registering service attached.
    pub payload: Option<Value>,
    /// When the instance registered, in milliseconds since the Unix epoch.
    #[serde(rename = "registrationTimeUTC", default)]
    pub registration_time_utc: i64,
    /// How Curator treats the instance's node.
    #[serde(default)]
    pub service_type: ServiceType,
    /// Curator's URI template for the instance.
    #[serde(default)]
    pub uri_spec: Option<Value>,
    /// Whether clients should use the instance; an instance that is draining says `false`.
    /// Written only when `false`, as absent means `true`.
    #[serde(default = "enabled", skip_serializing_if = "is_enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

fn is_enabled(enabled: &bool) -> bool {
    *enabled
}

impl ServiceInstance {
    /// An enabled, dynamic instance of service `name` at `address:port`, registered now, with
    /// a fresh random id.
    ///
    /// # Errors
    ///
    /// Fails if `name` is empty or holds a `/`, which would put the node elsewhere in the tree.
    pub fn new(name: &str, address: &str, port: u16) -> Result<Self, DiscoveryError> {
        check_name("service name", name)?;
        Ok(ServiceInstance {
            name: name.to_owned(),
            id: uuid::Uuid::new_v4().to_string(),
            address: address.to_owned(),
            port: Some(port),
            ssl_port: None,
            payload: None,
            registration_time_utc: now_millis(),
            service_type: ServiceType::Dynamic,
            uri_spec: None,
            enabled: true,
        })
    }

    /// The same instance with the id `id` (Curator's ids are UUIDs; any name without `/` will
    /// do).
    ///
    /// # Errors
    ///
    /// Fails if `id` is empty or holds a `/`.
    pub fn with_id(mut self, id: &str) -> Result<Self, DiscoveryError> {
        check_name("instance id", id)?;
        self.id = id.to_owned();
        Ok(self)
    }

    /// The same instance with `payload` attached.
    pub fn with_payload(mut self, payload: Value) -> Self {
        self.payload = Some(payload);
        self
    }

    /// The same instance, enabled or not.
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The `host:port` clients connect to, if the instance has a plain port.
    pub fn endpoint(&self) -> Option<String> {
        let port = self.port?;
        Some(
            if self.address.contains(':') && !self.address.starts_with('[') {
                format!("[{}]:{port}", self.address)
            } else {
                format!("{}:{port}", self.address)
            },
        )
    }

    /// The instance as Curator's JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an instance always serialises")
    }

    /// Reads an instance from Curator's JSON.
    ///
    /// # Errors
    ///
    /// Fails if `bytes` are not such JSON, or lack `name`, `id` or `address`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DiscoveryError> {
        serde_json::from_slice(bytes).map_err(|err| DiscoveryError::BadInstance(err.to_string()))
    }

    pub(crate) fn check(&self) -> Result<(), DiscoveryError> {
        check_name("service name", &self.name)?;
        check_name("instance id", &self.id)
    }
}

/// Refuses a name that would not be one node of the tree.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), DiscoveryError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(DiscoveryError::InvalidName(format!(
            "{what} {name:?} must be one node name: not empty, no '/'"
        )));
    }
    if let Some(c) = name.chars().find(|&c| !zookeeper_takes(c)) {
        return Err(DiscoveryError::InvalidName(format!(
            "{what} {name:?} holds {c:?}, which ZooKeeper refuses in a node name"
        )));
    }
    Ok(())
}

/// Whether ZooKeeper takes `c` in a node name (the characters its `PathUtils.validatePath`
/// refuses: control characters and some reserved ranges).
fn zookeeper_takes(c: char) -> bool {
    !matches!(
        c,
        '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{e000}'..='\u{f8ff}' | '\u{fff0}'..='\u{ffff}'
    )
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Curator 5.4's `JsonInstanceSerializer` output, byte for byte.
    const CURATOR_PLAIN: &str = r#"{"name":"calc","id":"3f1c0d8e-6a0b-4c43-9d2e-1b5a7c0e9f11","address":"10.0.0.5","port":9090,"sslPort":null,"payload":null,"registrationTimeUTC":1764288000123,"serviceType":"DYNAMIC","uriSpec":null}"#;
    const CURATOR_MAP_PAYLOAD: &str = r#"{"name":"calc","id":"id-2","address":"10.0.0.6","port":9090,"sslPort":9443,"payload":{"@class":"java.util.LinkedHashMap","protocol":"binary","weight":3},"registrationTimeUTC":1764288000123,"serviceType":"DYNAMIC","uriSpec":{"parts":[{"value":"scheme","variable":true},{"value":"://","variable":false},{"value":"address","variable":true},{"value":":","variable":false},{"value":"port","variable":true}]}}"#;

    #[test]
    fn curators_json_reads_and_writes_back_byte_for_byte() {
        for json in [CURATOR_PLAIN, CURATOR_MAP_PAYLOAD] {
            let instance = ServiceInstance::from_json(json.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(instance.to_json()).unwrap(), json);
        }
        let plain = ServiceInstance::from_json(CURATOR_PLAIN.as_bytes()).unwrap();
        assert_eq!(plain.name, "calc");
        assert_eq!(plain.id, "3f1c0d8e-6a0b-4c43-9d2e-1b5a7c0e9f11");
        assert_eq!(plain.endpoint().as_deref(), Some("10.0.0.5:9090"));
        assert_eq!(plain.ssl_port, None);
        assert_eq!(plain.registration_time_utc, 1_764_288_000_123);
        assert_eq!(plain.service_type, ServiceType::Dynamic);
        assert!(plain.enabled, "absent means enabled");
        let mapped = ServiceInstance::from_json(CURATOR_MAP_PAYLOAD.as_bytes()).unwrap();
        assert_eq!(mapped.ssl_port, Some(9443));
        let payload = mapped.payload.unwrap();
        assert_eq!(payload["@class"], "java.util.LinkedHashMap");
        assert_eq!(payload["weight"], 3);
    }

    #[test]
    fn every_service_type_and_a_disabled_instance_round_trip() {
        for (kind, text) in [
            (ServiceType::Dynamic, "DYNAMIC"),
            (ServiceType::Static, "STATIC"),
            (ServiceType::Permanent, "PERMANENT"),
            (ServiceType::DynamicSequential, "DYNAMIC_SEQUENTIAL"),
        ] {
            let mut instance = ServiceInstance::new("calc", "h", 1).unwrap();
            instance.service_type = kind;
            let json = String::from_utf8(instance.to_json()).unwrap();
            assert!(
                json.contains(&format!(r#""serviceType":"{text}""#)),
                "{json}"
            );
            assert_eq!(
                ServiceInstance::from_json(json.as_bytes()).unwrap(),
                instance
            );
        }
        let draining = ServiceInstance::new("calc", "h", 1)
            .unwrap()
            .with_enabled(false);
        let json = String::from_utf8(draining.to_json()).unwrap();
        assert!(json.ends_with(r#","enabled":false}"#), "{json}");
        assert!(!ServiceInstance::from_json(json.as_bytes()).unwrap().enabled);
    }

    #[test]
    fn the_least_curator_reads_is_enough_and_unknown_fields_are_ignored() {
        let json = br#"{"name":"calc","id":"x","address":"h","port":1,"somethingNew":[1,2]}"#;
        let instance = ServiceInstance::from_json(json).unwrap();
        assert_eq!(instance.service_type, ServiceType::Dynamic);
        assert_eq!(instance.registration_time_utc, 0);
        assert!(instance.enabled);
        assert!(ServiceInstance::from_json(b"{\"name\":\"calc\"}").is_err());
        assert!(ServiceInstance::from_json(b"not json").is_err());
    }

    #[test]
    fn names_that_are_not_one_node_are_refused() {
        assert!(ServiceInstance::new("a/b", "h", 1).is_err());
        assert!(ServiceInstance::new("", "h", 1).is_err());
        let instance = ServiceInstance::new("calc", "h", 1).unwrap();
        assert!(instance.clone().with_id("x/y").is_err());
        assert!(instance.clone().with_id("..").is_err());
        assert_eq!(instance.with_id("node-1").unwrap().id, "node-1");
    }

    #[test]
    fn an_ipv6_address_is_bracketed_in_its_endpoint() {
        let instance = ServiceInstance::new("calc", "::1", 9090).unwrap();
        assert_eq!(instance.endpoint().as_deref(), Some("[::1]:9090"));
    }
}
