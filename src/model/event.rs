//! A Strava webhook event as the callback validates it and the inbox keeps it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ObjectType {
    Activity,
    Athlete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AspectType {
    Create,
    Update,
    Delete,
}

impl ObjectType {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Activity => "activity",
            ObjectType::Athlete => "athlete",
        }
    }
}

impl AspectType {
    pub fn as_str(self) -> &'static str {
        match self {
            AspectType::Create => "create",
            AspectType::Update => "update",
            AspectType::Delete => "delete",
        }
    }
}

/// A validated Strava event, as stored. `subscription_id` is checked at the
/// door and not kept: it is the same for every event we accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Event {
    pub object_type: ObjectType,
    pub object_id: i64,
    pub aspect_type: AspectType,
    pub owner_id: i64,
    pub event_time: i64,
    pub updates: BTreeMap<String, String>,
}

impl Event {
    /// The metric label for this event: `activity_create`, `athlete_update`, ...
    pub fn kind(&self) -> &'static str {
        match (self.object_type, self.aspect_type) {
            (ObjectType::Activity, AspectType::Create) => "activity_create",
            (ObjectType::Activity, AspectType::Update) => "activity_update",
            (ObjectType::Activity, AspectType::Delete) => "activity_delete",
            (ObjectType::Athlete, AspectType::Create) => "athlete_create",
            (ObjectType::Athlete, AspectType::Update) => "athlete_update",
            (ObjectType::Athlete, AspectType::Delete) => "athlete_delete",
        }
    }

    /// Identifies one event across Strava's deliveries: every field except
    /// `subscription_id` (seen both as number and string). A second create of
    /// the same activity at another `event_time` is a different event; applying
    /// it is harmless because a create of a stored activity costs nothing.
    pub fn dedup_key(&self) -> String {
        // `updates` is a BTreeMap, so its JSON is canonical (sorted keys).
        let updates = serde_json::to_string(&self.updates).expect("string map serializes");
        let digest = Sha256::digest(
            format!(
                "{}\n{}\n{}\n{}\n{}\n{updates}",
                self.object_type.as_str(),
                self.object_id,
                self.aspect_type.as_str(),
                self.owner_id,
                self.event_time
            )
            .as_bytes(),
        );
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(aspect_type: AspectType, updates: &[(&str, &str)]) -> Event {
        Event {
            object_type: ObjectType::Activity,
            object_id: 17_179_869_185,
            aspect_type,
            owner_id: 7,
            event_time: 1_700_000_000,
            updates: updates
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn dedup_key_is_the_identity_of_the_event() {
        let a = event(AspectType::Update, &[("title", "x"), ("type", "Run")]);
        let b = event(AspectType::Update, &[("type", "Run"), ("title", "x")]);
        assert_eq!(a.dedup_key(), b.dedup_key());
        assert_ne!(
            a.dedup_key(),
            event(AspectType::Update, &[("title", "y")]).dedup_key()
        );
        let later = Event {
            event_time: a.event_time + 1,
            ..a.clone()
        };
        assert_ne!(a.dedup_key(), later.dedup_key());
        assert_ne!(
            event(AspectType::Create, &[]).dedup_key(),
            event(AspectType::Delete, &[]).dedup_key()
        );
    }
}
