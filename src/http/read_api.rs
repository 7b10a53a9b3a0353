//! The Strava-compatible read API under `/api/v3`: a frontend written for
//! Strava works by changing its base URL. Everything is answered from the
//! local copy (a read never calls Strava) and scoped to the token's athlete;
//! another athlete's records answer 404 exactly like absent ones.
//!
//! Stored JSON is served as stored: lists are the stored texts joined into an
//! array, so unknown fields, 64-bit ids and number formatting survive. Every
//! answer carries a strong `ETag` (a hash of the body) and honours
//! `If-None-Match` with 304.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{get, web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};
use utoipa::openapi::schema::{AdditionalProperties, KnownFormat, SchemaFormat, SchemaType};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{IntoParams, PartialSchema, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, AthleteFaults, Fault};
use super::query::QueryParams;
use super::{auth::AthleteAuth, Services};
use crate::store::activities::{ActivityStats, ListFilter};
use crate::store::api_tokens::to_hex;
use crate::store::DbResult;

/// Strava's page size bounds and default.
const MAX_PER_PAGE: i64 = 200;
const DEFAULT_PER_PAGE: i64 = 30;

/// The list parameters, with Strava's names and bounds, as parsed (absent
/// ones at their defaults). The document's parameters come from this type;
/// `tests/api/openapi.rs` checks that the bounds it gives are the ones
/// [`parse_list_query`] enforces.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only activities that started before this time (epoch seconds, exclusive).
    before: Option<i64>,
    /// Only activities that started after this time (epoch seconds, exclusive).
    after: Option<i64>,
    /// The page, from 1; a page past the end is `[]`.
    #[param(required = false, minimum = 1, default = 1)]
    page: i64,
    /// Activities per page.
    #[param(required = false, minimum = 1, maximum = 200, default = 30)]
    per_page: i64,
}

/// Strava's athlete profile (DetailedAthlete) as Strava last sent it. Stored
/// JSON is served byte for byte, so only the fields clients key on are
/// described, and whatever else Strava sent is there too.
pub struct StravaAthlete;

impl PartialSchema for StravaAthlete {
    fn schema() -> RefOr<Schema> {
        verbatim("An athlete profile (Strava's DetailedAthlete), as Strava sent it")
            .property("id", int64())
            .required("id")
            .property("username", nullable(Type::String))
            .property("firstname", nullable(Type::String))
            .property("lastname", nullable(Type::String))
            .property("city", nullable(Type::String))
            .property("country", nullable(Type::String))
            .property("sex", nullable(Type::String))
            .property("premium", nullable(Type::Boolean))
            .property("created_at", date_time())
            .property("profile", nullable(Type::String))
            .into()
    }
}

impl ToSchema for StravaAthlete {}

/// A SummaryActivity or DetailedActivity as Strava sent it (see
/// [`StravaAthlete`] for why only some fields are described).
pub struct StravaActivity;

impl PartialSchema for StravaActivity {
    fn schema() -> RefOr<Schema> {
        let owner = verbatim("The owner (Strava's MetaAthlete)")
            .property("id", int64())
            .required("id");
        verbatim("An activity (Strava's SummaryActivity, or DetailedActivity once fetched)")
            .property("id", int64())
            .required("id")
            .property("athlete", owner)
            .required("athlete")
            .property("resource_state", nullable(Type::Integer))
            .property("name", nullable(Type::String))
            .property("sport_type", nullable(Type::String))
            .property("type", nullable(Type::String))
            .property("start_date", date_time())
            .property("start_date_local", date_time())
            .property("timezone", nullable(Type::String))
            .property("distance", nullable(Type::Number))
            .property("moving_time", nullable(Type::Integer))
            .property("elapsed_time", nullable(Type::Integer))
            .property("total_elevation_gain", nullable(Type::Number))
            .property("private", nullable(Type::Boolean))
            .into()
    }
}

impl ToSchema for StravaActivity {}

/// An object whose unnamed fields pass through.
fn verbatim(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
}

fn int64() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
}

fn nullable(kind: Type) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::from_iter([kind, Type::Null]))
}

fn date_time() -> ObjectBuilder {
    nullable(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
}

/// `GET /api/v3/athlete`: the profile as Strava last sent it.
#[utoipa::path(
    tag = "read API",
    security(("api_token" = [])),
    params(("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer, or `*`")),
    responses(
        (status = 200, description = "The profile", body = StravaAthlete, headers(("ETag" = String, description = "A strong tag of the exact body"))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag", headers(("ETag" = String, description = "A strong tag of the exact body"))),
        (status = 404, description = "No profile stored", body = Fault),
        AthleteFaults,
    )
)]
#[get("/api/v3/athlete")]
async fn athlete(
    auth: AthleteAuth,
    state: web::Data<Services>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    serve_stored(
        &req,
        "Athlete",
        state.store.athlete_json(auth.athlete_id).await,
    )
}

/// `GET /api/v3/athlete/activities`: one page of summaries, newest first
/// (ties by id).
#[utoipa::path(
    tag = "read API",
    security(("api_token" = [])),
    params(ListParams, ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer, or `*`")),
    responses(
        (status = 200, description = "One page, newest first", body = [StravaActivity],
            headers(("ETag" = String, description = "A strong tag of the exact body"))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag", headers(("ETag" = String, description = "A strong tag of the exact body"))),
        (status = 400, description = "A malformed, out of range or repeated parameter, named \
            in `errors[0].field`", body = Fault),
        AthleteFaults,
    )
)]
#[get("/api/v3/athlete/activities")]
async fn list_activities(
    auth: AthleteAuth,
    state: web::Data<Services>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let filter = parse_list_query(req.query_string())?;
    let body = state
        .store
        .list_activities_json(auth.athlete_id, filter)
        .await?;
    Ok(json_with_etag(&req, body))
}

/// `GET /api/v3/activities/{id}`: the detail when fetched, else the summary.
#[utoipa::path(
    tag = "read API",
    security(("api_token" = [])),
    params(("id" = i64, Path, description = "The activity's Strava id"), ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer, or `*`")),
    responses(
        (status = 200, description = "The activity", body = StravaActivity, headers(("ETag" = String, description = "A strong tag of the exact body"))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag", headers(("ETag" = String, description = "A strong tag of the exact body"))),
        (status = 400, description = "An id that is not a 64-bit integer", body = Fault),
        (status = 404, description = "Absent, or another athlete's", body = Fault),
        AthleteFaults,
    )
)]
#[get("/api/v3/activities/{id}")]
async fn activity(
    auth: AthleteAuth,
    state: web::Data<Services>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("Activity", &id)?;
    let json = state.store.activity_json(auth.athlete_id, id).await;
    match serve_stored(&req, "Activity", json) {
        Err(ApiError::NotFound { .. }) if state.store.is_announced(auth.athlete_id, id).await? => {
            Err(ApiError::NotFetchedYet)
        }
        served => served,
    }
}

/// `GET /api/v3/athletes/{id}/stats`: Strava's ActivityStats from the local
/// copy; only the token's own athlete has any.
#[utoipa::path(
    tag = "read API",
    security(("api_token" = [])),
    params(("id" = i64, Path, description = "The token's own athlete id"), ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer, or `*`")),
    responses(
        (status = 200, description = "Ride, run and swim totals", body = ActivityStats,
            headers(("ETag" = String, description = "A strong tag of the exact body"))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag", headers(("ETag" = String, description = "A strong tag of the exact body"))),
        (status = 400, description = "An id that is not a 64-bit integer", body = Fault),
        (status = 404, description = "Another athlete's id", body = Fault),
        AthleteFaults,
    )
)]
#[get("/api/v3/athletes/{id}/stats")]
async fn stats(
    auth: AthleteAuth,
    state: web::Data<Services>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if parse_id("Athlete", &id)? != auth.athlete_id {
        return Err(ApiError::NotFound {
            resource: "Athlete",
        });
    }
    let at = state.clock.epoch();
    let stats = state.store.activity_stats(auth.athlete_id, at).await?;
    let body = serde_json::to_string(&stats).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json_with_etag(&req, body))
}

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(athlete)
        .service(list_activities)
        .service(activity)
        .service(stats);
}

/// Serves one stored JSON document as stored, or 404 naming `resource`.
fn serve_stored(
    req: &HttpRequest,
    resource: &'static str,
    json: DbResult<Option<String>>,
) -> Result<HttpResponse, ApiError> {
    let json = json?.ok_or(ApiError::NotFound { resource })?;
    Ok(json_with_etag(req, json))
}

/// A path id: a 64-bit integer, else 400 naming the field (a malformed id is
/// the client's mistake, not a missing record).
fn parse_id(resource: &'static str, raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_parameter(resource, "id", "id must be a 64-bit integer"))
}

/// Validates the list parameters with Strava's names and bounds. Unknown
/// parameters are ignored, as Strava does; a known one given twice, empty or
/// out of range is a 400 naming it.
fn parse_list_query(query: &str) -> Result<ListFilter, ApiError> {
    let params = QueryParams::parse(query, "Activity")?;
    let given = ListParams {
        before: params.integer("before")?,
        after: params.integer("after")?,
        page: params.bounded("page", 1..=i64::MAX, 1)?,
        per_page: params.bounded("per_page", 1..=MAX_PER_PAGE, DEFAULT_PER_PAGE)?,
    };
    Ok(ListFilter {
        before: given.before,
        after: given.after,
        limit: given.per_page,
        // A page far past the end simply finds nothing.
        offset: (given.page - 1).saturating_mul(given.per_page),
    })
}

/// A JSON answer with a strong ETag over its exact bytes, or 304 when the
/// client already holds them. Answers depend on the token: shared caches must
/// not keep them, and clients must revalidate.
fn json_with_etag(req: &HttpRequest, body: String) -> HttpResponse {
    let digest = Sha256::digest(body.as_bytes());
    let etag = format!("\"{}\"", to_hex(&digest[..16]));
    let unchanged = client_has(req, &etag);
    let mut response = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "private, no-cache"))
        .insert_header((header::VARY, "Authorization"));
    if unchanged {
        response.finish()
    } else {
        response.content_type("application/json").body(body)
    }
}

/// `If-None-Match` as RFC 9110 reads it: `*`, or a list of tags compared
/// weakly (a `W/` prefix still matches), over every header occurrence.
fn client_has(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v: &HeaderValue| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A query string as a client may write one: known and unknown names,
    /// values well-formed or not, percent-encoded or raw, sometimes repeated.
    fn query() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("before".to_string()),
            Just("after".into()),
            Just("page".into()),
            Just("per_page".into()),
            "[a-z_%]{0,8}",
        ];
        let value = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (0i64..300).prop_map(|n| n.to_string()),
            "[0-9]{15,30}",
            "[ -~]{0,12}",
            "%[0-9A-Fa-f]{2}[0-9]{0,3}",
        ];
        prop::collection::vec((name, value), 0..6).prop_map(|pairs| {
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_query_is_a_page_or_a_400_never_a_panic(raw in query(), junk in "\\PC{0,40}") {
            for query in [raw, junk] {
                match parse_list_query(&query) {
                    Ok(filter) => {
                        prop_assert!((1..=MAX_PER_PAGE).contains(&filter.limit));
                        prop_assert!(filter.offset >= 0);
                    }
                    Err(e) => {
                        let refused = matches!(e, ApiError::BadParameter { .. });
                        prop_assert!(refused, "{e:?}");
                    }
                }
            }
        }

        #[test]
        fn well_formed_parameters_are_read_as_given(
            before in any::<i64>(),
            after in any::<i64>(),
            page in 1i64..1_000_000,
            per_page in 1i64..=MAX_PER_PAGE,
        ) {
            let query = format!("after={after}&per_page={per_page}&page={page}&before={before}");
            let filter = parse_list_query(&query).unwrap();
            prop_assert_eq!(filter.before, Some(before));
            prop_assert_eq!(filter.after, Some(after));
            prop_assert_eq!(filter.limit, per_page);
            prop_assert_eq!(filter.offset, (page - 1) * per_page);
        }
    }
}
