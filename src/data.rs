//! `SessionData`: what a session holds, the one type every layer of the
//! crate (codecs, stores, the session map) speaks.

/// A session's data: JSON values by string key, kept in key order.
pub type SessionData = serde_json::Map<String, serde_json::Value>;
