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

use super::{auth::AthleteAuth, error::ApiError, Services};
use crate::store::activities::ListFilter;
use crate::store::api_tokens::to_hex;
use crate::store::DbResult;

/// Strava's page size bounds and default.
const MAX_PER_PAGE: i64 = 200;
const DEFAULT_PER_PAGE: i64 = 30;

/// `GET /api/v3/athlete`: the profile as Strava last sent it.
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

/// `GET /api/v3/athlete/activities`: one page of summaries, newest first.
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

pub fn configure(cfg: &mut web::ServiceConfig) {
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
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
        .map_err(|e| ApiError::bad_parameter("Request", "query", e.to_string()))?
        .into_inner();
    let value = |name: &'static str| -> Result<Option<i64>, ApiError> {
        let mut given = pairs.iter().filter(|(k, _)| k == name);
        let Some((_, raw)) = given.next() else {
            return Ok(None);
        };
        if given.next().is_some() {
            return Err(invalid(name, format!("{name} is given more than once")));
        }
        raw.parse()
            .map(Some)
            .map_err(|_| invalid(name, format!("{name} must be an integer")))
    };
    let before = value("before")?;
    let after = value("after")?;
    let page = value("page")?.unwrap_or(1);
    if page < 1 {
        return Err(invalid("page", "page must be at least 1".into()));
    }
    let per_page = value("per_page")?.unwrap_or(DEFAULT_PER_PAGE);
    if !(1..=MAX_PER_PAGE).contains(&per_page) {
        return Err(invalid(
            "per_page",
            format!("per_page must be between 1 and {MAX_PER_PAGE}"),
        ));
    }
    Ok(ListFilter {
        before,
        after,
        limit: per_page,
        // A page far past the end simply finds nothing.
        offset: (page - 1).saturating_mul(per_page),
    })
}

fn invalid(field: &'static str, message: String) -> ApiError {
    ApiError::bad_parameter("Activity", field, message)
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
