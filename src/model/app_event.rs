//! An event strava-sync tells the application about: one change to what an
//! athlete can read. The change feed and the signed deliveries send the same
//! shape.

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum ChangeKind {
    #[serde(rename = "activity.created")]
    ActivityCreated,
    #[serde(rename = "activity.updated")]
    ActivityUpdated,
    #[serde(rename = "activity.deleted")]
    ActivityDeleted,
    #[serde(rename = "athlete.connected")]
    AthleteConnected,
    #[serde(rename = "athlete.needs_reauth")]
    AthleteNeedsReauth,
    #[serde(rename = "athlete.deauthorized")]
    AthleteDeauthorized,
}

impl ChangeKind {
    const ALL: [ChangeKind; 6] = [
        ChangeKind::ActivityCreated,
        ChangeKind::ActivityUpdated,
        ChangeKind::ActivityDeleted,
        ChangeKind::AthleteConnected,
        ChangeKind::AthleteNeedsReauth,
        ChangeKind::AthleteDeauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::ActivityCreated => "activity.created",
            ChangeKind::ActivityUpdated => "activity.updated",
            ChangeKind::ActivityDeleted => "activity.deleted",
            ChangeKind::AthleteConnected => "athlete.connected",
            ChangeKind::AthleteNeedsReauth => "athlete.needs_reauth",
            ChangeKind::AthleteDeauthorized => "athlete.deauthorized",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One change to what an athlete can read.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AppEvent {
    /// The change's place in the log: the feed's cursor and the delivery's
    /// `webhook-id`.
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: ChangeKind,
    pub athlete_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity_id: Option<i64>,
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: i64,
    /// Created and updated activities: the activity as stored when the
    /// event is read, byte for byte as Strava sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Box<RawValue>>,
}

fn rfc3339<S: Serializer>(at: &i64, s: S) -> Result<S::Ok, S::Error> {
    let at = DateTime::<Utc>::from_timestamp(*at, 0).unwrap_or_default();
    s.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in ChangeKind::ALL {
            assert_eq!(ChangeKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        assert_eq!(ChangeKind::parse("activity.renamed"), None);
    }

    #[test]
    fn an_event_keeps_the_activity_text_and_leaves_out_what_it_lacks() {
        let event = AppEvent {
            id: 7,
            kind: ChangeKind::ActivityUpdated,
            athlete_id: 1,
            activity_id: Some(2),
            occurred_at: 0,
            data: Some(RawValue::from_string(r#"{"id":2,"distance":162.0}"#.into()).unwrap()),
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"id":7,"type":"activity.updated","athlete_id":1,"activity_id":2,"occurred_at":"1970-01-01T00:00:00Z","data":{"id":2,"distance":162.0}}"#
        );
        let deauthorized = AppEvent {
            kind: ChangeKind::AthleteDeauthorized,
            activity_id: None,
            data: None,
            ..event
        };
        assert_eq!(
            serde_json::to_string(&deauthorized).unwrap(),
            r#"{"id":7,"type":"athlete.deauthorized","athlete_id":1,"occurred_at":"1970-01-01T00:00:00Z"}"#
        );
    }
}
