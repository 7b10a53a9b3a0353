//! `GET /openapi.json`: the OpenAPI 3.1 document of every route. The route
//! modules register their handlers through utoipa-actix-web, which adds each
//! handler's `#[utoipa::path]` to the document as it adds the route, so what
//! is served and what is documented come from the same lines.

use actix_web::dev::HttpServiceFactory;
use actix_web::{guard, web, HttpResponse};
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathsBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema};

use super::error::{fault_response, Fault};
use crate::model::app_event::AppEvent;

/// The document before the routes join it: info, the two bearer tokens,
/// the tags, the fault schema, the events posted to the application and this
/// route itself.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "strava-sync",
        description = "Keeps a local copy of connected athletes' Strava activities, fed by \
            Strava's webhooks and a budgeted sync, and serves it through a Strava-compatible \
            read API (`/api/v3`) that never calls Strava. Every error comes in Strava's fault \
            shape, `{\"message\", \"errors\": [{\"resource\", \"field\", \"code\"}]}`."
    ),
    paths(openapi_json),
    components(schemas(Fault, AppEvent)),
    modifiers(&BearerTokens, &AppEvents),
    tags(
        (name = "read API", description = "Strava's own read routes, answered from the local copy"),
        (name = "sync", description = "An athlete's sync state and manual refresh"),
        (name = "connect", description = "Connecting and disconnecting athletes (Strava OAuth)"),
        (name = "webhook", description = "Strava's push subscription callback"),
        (name = "admin", description = "Operators: the budget, athletes, the webhook inbox"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
struct Base;

/// The security schemes the handlers name in `security(...)`.
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "api_token",
                "The API token issued when the athlete connected",
            ),
            ("admin_token", "`ADMIN_TOKEN`"),
        ] {
            let mut bearer = Http::new(HttpAuthScheme::Bearer);
            bearer.description = Some(what.to_string());
            components.add_security_scheme(name, SecurityScheme::Http(bearer));
        }
    }
}

/// What strava-sync posts to `APP_WEBHOOK_URL`, as OpenAPI 3.1 `webhooks`:
/// the receiver's side of the contract, for generating a handler.
struct AppEvents;

impl Modify for AppEvents {
    fn modify(&self, openapi: &mut Document) {
        let header = |name: &str, what: &str| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .required(Required::True)
                .description(Some(what))
                .schema(Some(String::schema()))
                .build()
        };
        let operation = OperationBuilder::new()
            .operation_id(Some("app_event"))
            .summary(Some(
                "One change to what an athlete can read, posted to APP_WEBHOOK_URL",
            ))
            .description(Some(
                "Sent at least once and in order per athlete; a non-2xx answer or no answer \
                 within 10 s is retried with backoff for 24 hours. Signed as Standard Webhooks \
                 sign: `webhook-signature` is `v1,` and the base64 HMAC-SHA256 of \
                 `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded part \
                 of `APP_WEBHOOK_SECRET` after `whsec_`.",
            ))
            .parameters(Some([
                header("webhook-id", "The event's `id`: deduplicate on it"),
                header("webhook-timestamp", "When it was sent, in epoch seconds"),
                header("webhook-signature", "`v1,<base64 HMAC-SHA256>`"),
            ]))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("AppEvent")))
                            .build(),
                    )
                    .build(),
            ))
            .response(
                "2XX",
                ResponseBuilder::new().description("Stored: the event is not sent again"),
            )
            .response(
                "default",
                ResponseBuilder::new().description("Not stored: the event is sent again later"),
            )
            .build();
        openapi.webhooks = Some(
            PathsBuilder::new()
                .path("app-event", PathItem::new(HttpMethod::Post, operation))
                .build(),
        );
    }
}

/// The document the routes are added to.
pub fn base() -> Document {
    Base::openapi()
}

/// The finished document as served.
struct Served(String);

/// This document: every route the service serves.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object))
)]
async fn openapi_json(document: web::Data<Served>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.0.clone())
}

/// Serves `document` once every route is in it. Any error status an
/// operation does not list still comes in the fault shape (the middleware
/// rewords the framework's own refusals), so each gets that as its
/// `default` answer.
pub fn service(mut document: Document) -> impl HttpServiceFactory {
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("default".into())
                .or_insert_with(|| {
                    fault_response(
                        "Any other error (413 for a body over 16 KiB, 408 for a slow one)",
                    )
                    .build()
                    .into()
                });
        }
    }
    let json = document.to_json().expect("the document serializes");
    // A resource-level guard, as `#[get]` makes: other methods answer the
    // app's 404, like every other route.
    web::resource("/openapi.json")
        .guard(guard::Get())
        .app_data(web::Data::new(Served(json)))
        .to(openapi_json)
}
