//! Athletes and activities: generated from a seed (years of history across
//! sport types), stored compactly, and rendered on demand in Strava's shapes
//! with its quirks: 64-bit ids past 2^34, undocumented extra fields, some
//! integers written as floats, "Only You" activities.
//!
//! Only what can change is stored; the rest of a record (heart rate, kudos,
//! polyline...) is derived from the activity id, so rendering is stable and
//! generating thousands of activities stays fast.

use std::collections::BTreeSet;

use chrono::{TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Activity ids start past 2^34, as Strava's do now.
pub const FIRST_ACTIVITY_ID: u64 = 1 << 34;

/// Where an athlete lives: fixes the timezone, coordinates and location fields.
struct Home {
    city: &'static str,
    state: &'static str,
    country: &'static str,
    lat: f64,
    lng: f64,
    timezone: &'static str,
    utc_offset: i32,
}

const HOMES: &[Home] = &[
    Home {
        city: "Boulder",
        state: "Colorado",
        country: "United States",
        lat: 40.015,
        lng: -105.270,
        timezone: "(GMT-07:00) America/Denver",
        utc_offset: -21600,
    },
    Home {
        city: "Brooklyn",
        state: "New York",
        country: "United States",
        lat: 40.678,
        lng: -73.944,
        timezone: "(GMT-05:00) America/New_York",
        utc_offset: -14400,
    },
    Home {
        city: "London",
        state: "England",
        country: "United Kingdom",
        lat: 51.507,
        lng: -0.128,
        timezone: "(GMT+00:00) Europe/London",
        utc_offset: 3600,
    },
    Home {
        city: "Girona",
        state: "Catalonia",
        country: "Spain",
        lat: 41.980,
        lng: 2.820,
        timezone: "(GMT+01:00) Europe/Madrid",
        utc_offset: 7200,
    },
    Home {
        city: "Wellington",
        state: "Wellington",
        country: "New Zealand",
        lat: -41.290,
        lng: 174.780,
        timezone: "(GMT+12:00) Pacific/Auckland",
        utc_offset: 43200,
    },
    Home {
        city: "San Francisco",
        state: "California",
        country: "United States",
        lat: 37.770,
        lng: -122.420,
        timezone: "(GMT-08:00) America/Los_Angeles",
        utc_offset: -25200,
    },
    Home {
        city: "Tokyo",
        state: "Tokyo",
        country: "Japan",
        lat: 35.680,
        lng: 139.690,
        timezone: "(GMT+09:00) Asia/Tokyo",
        utc_offset: 32400,
    },
];

const FIRST_NAMES: &[&str] = &[
    "Marianne", "Tadej", "Eliud", "Kristin", "Jonas", "Aiko", "Sam", "Priya", "Lucas", "Zoe",
    "Mateo", "Ingrid",
];
const LAST_NAMES: &[&str] = &[
    "Vos",
    "Pogacar",
    "Kipchoge",
    "Armstrong",
    "Vingegaard",
    "Tanaka",
    "Rivera",
    "Shah",
    "Moreau",
    "Okafor",
    "Lindqvist",
    "Brennan",
];
const CUSTOM_NAMES: &[&str] = &[
    "Hill repeats",
    "Commute home",
    "Long one with the club",
    "Recovery spin",
    "Intervals 5x4",
    "Easy shakeout",
    "Tempo 🔥",
    "Exploring new roads",
    "Race day!",
    "Café ride",
];

/// A sport type with what shapes its generated numbers.
struct Sport {
    sport_type: &'static str,
    /// Relative frequency in generated histories.
    weight: u32,
    /// Moving speed range in m/s; zero for sports without distance.
    speed: (f64, f64),
    /// Moving time range in seconds.
    duration: (u32, u32),
    /// Indoors: no GPS, no map.
    indoor: bool,
}

const SPORTS: &[Sport] = &[
    Sport {
        sport_type: "Ride",
        weight: 28,
        speed: (6.0, 9.5),
        duration: (2400, 14400),
        indoor: false,
    },
    Sport {
        sport_type: "Run",
        weight: 26,
        speed: (2.6, 4.2),
        duration: (1200, 7200),
        indoor: false,
    },
    Sport {
        sport_type: "Walk",
        weight: 10,
        speed: (1.1, 1.6),
        duration: (900, 5400),
        indoor: false,
    },
    Sport {
        sport_type: "Hike",
        weight: 5,
        speed: (0.8, 1.4),
        duration: (3600, 21600),
        indoor: false,
    },
    Sport {
        sport_type: "Swim",
        weight: 7,
        speed: (0.6, 1.2),
        duration: (1200, 3600),
        indoor: true,
    },
    Sport {
        sport_type: "VirtualRide",
        weight: 9,
        speed: (7.0, 10.0),
        duration: (1800, 5400),
        indoor: true,
    },
    Sport {
        sport_type: "WeightTraining",
        weight: 5,
        speed: (0.0, 0.0),
        duration: (1800, 4200),
        indoor: true,
    },
    Sport {
        sport_type: "TrailRun",
        weight: 4,
        speed: (2.0, 3.4),
        duration: (2400, 10800),
        indoor: false,
    },
    Sport {
        sport_type: "MountainBikeRide",
        weight: 3,
        speed: (3.5, 6.0),
        duration: (3600, 10800),
        indoor: false,
    },
    Sport {
        sport_type: "Yoga",
        weight: 2,
        speed: (0.0, 0.0),
        duration: (1800, 4500),
        indoor: true,
    },
    Sport {
        sport_type: "AlpineSki",
        weight: 1,
        speed: (5.0, 12.0),
        duration: (7200, 18000),
        indoor: false,
    },
];

/// Sport types the control interface accepts besides the generated ones.
const OTHER_SPORT_TYPES: &[&str] = &[
    "GravelRide",
    "EBikeRide",
    "Rowing",
    "NordicSki",
    "Workout",
    "Crossfit",
    "RockClimbing",
    "Snowboard",
    "Elliptical",
];

/// The sport type as stored, if Strava knows it.
pub fn known_sport_type(s: &str) -> Option<&'static str> {
    SPORTS
        .iter()
        .map(|sp| sp.sport_type)
        .chain(OTHER_SPORT_TYPES.iter().copied())
        .find(|known| *known == s)
}

/// The deprecated `type` field: sport types newer than it map to their parent.
fn legacy_type(sport_type: &str) -> &str {
    match sport_type {
        "MountainBikeRide" | "GravelRide" | "EMountainBikeRide" => "Ride",
        "TrailRun" => "Run",
        "EBikeRide" => "EBikeRide",
        other => other,
    }
}

fn sport(sport_type: &str) -> &'static Sport {
    SPORTS
        .iter()
        .find(|s| s.sport_type == sport_type)
        .unwrap_or(&SPORTS[0])
}

#[derive(Debug, Clone)]
pub struct Athlete {
    pub id: u64,
    firstname: &'static str,
    lastname: &'static str,
    home: usize,
    created_at: i64,
    /// (start epoch, activity id) of every activity, for range scans.
    pub index: BTreeSet<(i64, u64)>,
}

#[derive(Debug, Clone)]
pub struct Activity {
    pub id: u64,
    pub athlete_id: u64,
    pub name: String,
    pub sport_type: &'static str,
    /// Epoch seconds, UTC.
    pub start: i64,
    /// "Only You": hidden from tokens without `activity:read_all`.
    pub private: bool,
    pub distance: f64,
    pub moving_time: u32,
    pub elapsed_time: u32,
    pub elevation_gain: f64,
    pub manual: bool,
    /// Before this simulator-clock instant the detail endpoint answers 404.
    pub readable_at: i64,
}

/// Builds one athlete and their history ending at `now`.
pub fn generate_athlete(
    rng: &mut StdRng,
    index: usize,
    activities: usize,
    now: i64,
    next_id: &mut u64,
) -> (Athlete, Vec<Activity>) {
    let id = 10_000_000 + index as u64 * 1_000 + rng.random_range(0..1_000);
    // Walk back from the last day with gaps averaging 1.5 days, then upload
    // in time order so later activities get larger ids, as on Strava.
    let mut at = now - rng.random_range(3_600..129_600);
    let mut starts: Vec<i64> = (0..activities)
        .map(|_| {
            let start = at;
            at -= rng.random_range(10_000..250_000);
            start
        })
        .collect();
    starts.reverse();
    let mut athlete = Athlete {
        id,
        firstname: FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())],
        lastname: LAST_NAMES[rng.random_range(0..LAST_NAMES.len())],
        home: rng.random_range(0..HOMES.len()),
        created_at: at - 30 * 86_400,
        index: BTreeSet::new(),
    };
    let list = starts
        .into_iter()
        .map(|start| {
            let activity = random_activity(rng, &athlete, next_id, start, None);
            athlete.index.insert((activity.start, activity.id));
            activity
        })
        .collect();
    (athlete, list)
}

/// A plausible activity; `sport_type` None picks one by frequency.
pub fn random_activity(
    rng: &mut StdRng,
    athlete: &Athlete,
    next_id: &mut u64,
    start: i64,
    sport_type: Option<&'static str>,
) -> Activity {
    *next_id += rng.random_range(1..5_000);
    let sport = match sport_type {
        Some(s) => sport(s),
        None => {
            let total: u32 = SPORTS.iter().map(|s| s.weight).sum();
            let mut pick = rng.random_range(0..total);
            SPORTS
                .iter()
                .find(|s| {
                    let hit = pick < s.weight;
                    pick = pick.saturating_sub(s.weight);
                    hit
                })
                .unwrap_or(&SPORTS[0])
        }
    };
    let sport_type = sport_type.unwrap_or(sport.sport_type);
    let moving_time = rng.random_range(sport.duration.0..=sport.duration.1);
    let speed = if sport.speed.1 > 0.0 {
        rng.random_range(sport.speed.0..=sport.speed.1)
    } else {
        0.0
    };
    let distance = (speed * f64::from(moving_time) * 10.0).round() / 10.0;
    let local_hour = (start + i64::from(HOMES[athlete.home].utc_offset)).rem_euclid(86_400) / 3_600;
    let name = if rng.random_bool(0.2) {
        CUSTOM_NAMES[rng.random_range(0..CUSTOM_NAMES.len())].to_string()
    } else {
        default_name(local_hour as u32, sport_type)
    };
    Activity {
        id: *next_id,
        athlete_id: athlete.id,
        name,
        elevation_gain: if sport.indoor {
            0.0
        } else {
            (distance * rng.random_range(0.0..0.02) * 10.0).round() / 10.0
        },
        sport_type,
        start,
        private: rng.random_bool(0.06),
        distance,
        moving_time,
        elapsed_time: moving_time + rng.random_range(0..moving_time / 4 + 1),
        manual: rng.random_bool(0.03),
        readable_at: i64::MIN,
    }
}

/// Strava's default title: "Morning Ride", "Lunch Run", "Evening Walk"...
fn default_name(local_hour: u32, sport_type: &str) -> String {
    let part = match local_hour {
        5..=10 => "Morning",
        11..=13 => "Lunch",
        14..=17 => "Afternoon",
        18..=21 => "Evening",
        _ => "Night",
    };
    let sport = match sport_type {
        "VirtualRide" => "Zwift Ride".to_string(),
        "WeightTraining" => "Weight Training".to_string(),
        "MountainBikeRide" => "Mountain Bike Ride".to_string(),
        "TrailRun" => "Trail Run".to_string(),
        "AlpineSki" => "Ski".to_string(),
        other => other.to_string(),
    };
    format!("{part} {sport}")
}

fn time(epoch: i64) -> String {
    Utc.timestamp_opt(epoch, 0)
        .single()
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Athlete {
    /// The summary athlete (`resource_state` 2) the token exchange returns.
    pub fn summary(&self) -> Value {
        let home = &HOMES[self.home];
        json!({
            "id": self.id,
            "username": format!("{}{}", self.firstname.to_lowercase(), self.id % 1000),
            "resource_state": 2,
            "firstname": self.firstname,
            "lastname": self.lastname,
            "bio": "",
            "city": home.city,
            "state": home.state,
            "country": home.country,
            "sex": if self.id.is_multiple_of(2) { "F" } else { "M" },
            "premium": self.id.is_multiple_of(3),
            "summit": self.id.is_multiple_of(3),
            "created_at": time(self.created_at),
            "updated_at": time(self.created_at + 86_400 * 200),
            "badge_type_id": 0,
            "weight": 60.0 + (self.id % 25) as f64,
            "profile_medium": "https://dgalywyr863hv.cloudfront.net/pictures/athletes/medium.jpg",
            "profile": "https://dgalywyr863hv.cloudfront.net/pictures/athletes/large.jpg",
            "friend": null,
            "follower": null
        })
    }

    /// The authenticated athlete (`resource_state` 3) of `GET /athlete`.
    pub fn detail(&self) -> Value {
        let mut value = self.summary();
        let extra = json!({
            "resource_state": 3,
            "follower_count": self.id % 300,
            "friend_count": self.id % 250,
            "measurement_preference": if HOMES[self.home].country == "United States" { "feet" } else { "meters" },
            "ftp": null,
            "clubs": [],
            "bikes": [{"id": format!("b{}", self.id), "primary": true, "name": "Road bike", "resource_state": 2, "distance": 12_345_678.0}],
            "shoes": [{"id": format!("g{}", self.id), "primary": true, "name": "Trainers", "resource_state": 2, "distance": 654_321.0}]
        });
        merge(&mut value, extra);
        value
    }
}

fn merge(target: &mut Value, extra: Value) {
    if let (Value::Object(t), Value::Object(e)) = (target, extra) {
        t.extend(e);
    }
}

impl Activity {
    /// The SummaryActivity (`resource_state` 2) of list answers.
    pub fn summary(&self, athlete: &Athlete) -> Value {
        let home = &HOMES[athlete.home];
        let sport = sport(self.sport_type);
        // Everything not stored is derived from the id: stable across renders.
        let mut rng = StdRng::seed_from_u64(self.id);
        let outdoor = !sport.indoor && !self.manual && self.distance > 0.0;
        let route = if outdoor {
            route(&mut rng, home, self.distance)
        } else {
            Vec::new()
        };
        let latlng = |p: Option<&(f64, f64)>| {
            p.map_or(json!([]), |(a, b)| json!([round(*a, 6), round(*b, 6)]))
        };
        let has_heartrate = !self.manual && rng.random_bool(0.8);
        let average_speed = if self.moving_time > 0 {
            round(self.distance / f64::from(self.moving_time), 3)
        } else {
            0.0
        };
        let watts = matches!(
            self.sport_type,
            "Ride" | "VirtualRide" | "MountainBikeRide" | "GravelRide"
        ) && !self.manual;
        let average_heartrate = rng.random_range(118.0..162.0_f64);
        let upload_id = self.id + 900_000_000;
        let mut value = json!({
            "resource_state": 2,
            "athlete": {"id": self.athlete_id, "resource_state": 1},
            "name": self.name,
            "distance": self.distance,
            "moving_time": self.moving_time,
            "elapsed_time": self.elapsed_time,
            "total_elevation_gain": self.elevation_gain,
            "type": legacy_type(self.sport_type),
            "sport_type": self.sport_type,
            "workout_type": if self.sport_type == "Run" { json!(rng.random_range(0..4)) } else { Value::Null },
            "id": self.id,
            "start_date": time(self.start),
            "start_date_local": time(self.start + i64::from(home.utc_offset)),
            "timezone": home.timezone,
            "utc_offset": f64::from(home.utc_offset),
            "location_city": null,
            "location_state": null,
            "location_country": home.country,
            "achievement_count": rng.random_range(0..12),
            "kudos_count": rng.random_range(0..40),
            "comment_count": rng.random_range(0..5),
            "athlete_count": rng.random_range(1..4),
            "photo_count": 0,
            "trainer": sport.indoor && self.sport_type != "Swim",
            "commute": rng.random_bool(0.05),
            "manual": self.manual,
            "private": self.private,
            "visibility": if self.private { "only_me" } else if rng.random_bool(0.1) { "followers_only" } else { "everyone" },
            "flagged": false,
        });
        let second = json!({
            "map": {"id": format!("a{}", self.id), "summary_polyline": encode_polyline(&route), "resource_state": 2},
            "gear_id": if watts { json!(format!("b{}", athlete.id)) } else if self.sport_type.contains("Run") { json!(format!("g{}", athlete.id)) } else { Value::Null },
            "start_latlng": latlng(route.first()),
            "end_latlng": latlng(route.last()),
            "average_speed": average_speed,
            "max_speed": round(average_speed * rng.random_range(1.3..2.2), 3),
            "has_heartrate": has_heartrate,
            "heartrate_opt_out": false,
            "display_hide_heartrate_option": has_heartrate,
            "upload_id": upload_id,
            "upload_id_str": upload_id.to_string(),
            "external_id": format!("garmin_ping_{}", self.id / 7),
            "from_accepted_tag": false,
            "pr_count": rng.random_range(0..4),
            "total_photo_count": 0,
            "has_kudoed": false
        });
        merge(&mut value, second);
        if has_heartrate {
            merge(
                &mut value,
                json!({
                    "average_heartrate": round(average_heartrate, 1),
                    // An integer on Strava's side, written as a float on the wire.
                    "max_heartrate": (average_heartrate + rng.random_range(12.0..30.0)).round(),
                    "suffer_score": (f64::from(self.moving_time) / 60.0 * rng.random_range(0.3..1.5)).round(),
                }),
            );
        }
        if outdoor {
            let low = rng.random_range(0.0..1500.0_f64);
            merge(
                &mut value,
                json!({"elev_high": round(low + self.elevation_gain / 3.0, 1), "elev_low": round(low, 1)}),
            );
        }
        if watts {
            let average_watts = rng.random_range(140.0..260.0_f64);
            merge(
                &mut value,
                json!({
                    "average_watts": round(average_watts, 1),
                    "weighted_average_watts": (average_watts * 1.07).round() as u32,
                    "max_watts": (average_watts * 3.5).round() as u32,
                    "kilojoules": round(average_watts * f64::from(self.moving_time) / 1000.0, 1),
                    "device_watts": self.sport_type == "VirtualRide",
                    "average_cadence": round(rng.random_range(75.0..95.0), 1),
                }),
            );
        } else if self.sport_type.contains("Run") {
            merge(
                &mut value,
                json!({"average_cadence": round(rng.random_range(78.0..92.0), 1)}),
            );
        }
        if !sport.indoor {
            merge(
                &mut value,
                json!({"average_temp": rng.random_range(-5..32)}),
            );
        }
        value
    }

    /// The DetailedActivity (`resource_state` 3) of `GET /activities/{id}`.
    pub fn detail(&self, athlete: &Athlete) -> Value {
        let mut value = self.summary(athlete);
        let polyline = value["map"]["summary_polyline"].clone();
        merge(
            &mut value,
            json!({
                "resource_state": 3,
                "description": if self.id.is_multiple_of(4) { json!("Legs felt good today") } else { Value::Null },
                "calories": round(f64::from(self.moving_time) * 0.19, 1),
                "device_name": if self.manual { Value::Null } else { json!("Garmin Edge 540") },
                "embed_token": format!("{:x}", self.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                "perceived_exertion": null,
                "prefer_perceived_exertion": false,
                "segment_efforts": [],
                "splits_metric": [],
                "laps": [],
                "photos": {"primary": null, "count": 0},
                "highlighted_kudosers": [],
                "hide_from_home": false,
                "available_zones": [],
            }),
        );
        if let Some(map) = value["map"].as_object_mut() {
            map.insert("polyline".into(), polyline);
            map.insert("resource_state".into(), json!(3));
        }
        value
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// A loop of about `distance` metres around the athlete's home.
fn route(rng: &mut StdRng, home: &Home, distance: f64) -> Vec<(f64, f64)> {
    let radius = (distance / std::f64::consts::TAU / 111_000.0).min(0.5);
    let (lat, lng) = (
        home.lat + rng.random_range(-0.05..0.05),
        home.lng + rng.random_range(-0.05..0.05),
    );
    (0..=16)
        .map(|i| {
            let angle = f64::from(i) / 16.0 * std::f64::consts::TAU;
            (
                lat + radius * angle.sin(),
                lng + radius * (1.0 - angle.cos()),
            )
        })
        .collect()
}

/// Google's encoded polyline format, as in `map.summary_polyline`.
fn encode_polyline(points: &[(f64, f64)]) -> String {
    fn push(mut value: i64, out: &mut String) {
        value = if value < 0 { !(value << 1) } else { value << 1 };
        while value >= 0x20 {
            out.push(char::from((0x20 | (value & 0x1f)) as u8 + 63));
            value >>= 5;
        }
        out.push(char::from(value as u8 + 63));
    }
    let mut out = String::new();
    let (mut last_lat, mut last_lng) = (0, 0);
    for (lat, lng) in points {
        let (lat, lng) = ((lat * 1e5).round() as i64, (lng * 1e5).round() as i64);
        push(lat - last_lat, &mut out);
        push(lng - last_lng, &mut out);
        (last_lat, last_lng) = (lat, lng);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_end_before_now_with_ids_rising_in_time_order() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut next_id = FIRST_ACTIVITY_ID;
        let now = 1_800_000_000;
        let (athlete, list) = generate_athlete(&mut rng, 0, 500, now, &mut next_id);
        assert_eq!(athlete.index.len(), 500);
        let ids: Vec<u64> = athlete.index.iter().map(|(_, id)| *id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids rise with start time"
        );
        assert!(list
            .iter()
            .all(|a| a.start < now && a.id > FIRST_ACTIVITY_ID));
        let span_days = (now - list[0].start) / 86_400;
        assert!((500..1000).contains(&span_days), "{span_days} days");
    }

    #[test]
    fn polyline_matches_googles_example() {
        let points = [(38.5, -120.2), (40.7, -120.95), (43.252, -126.453)];
        assert_eq!(encode_polyline(&points), "_p~iF~ps|U_ulLnnqC_mqNvxq`@");
    }
}
