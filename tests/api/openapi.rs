//! `GET /openapi.json` against the running app and the README: the document
//! names every route the README lists and no other, every documented
//! operation is served (and every undocumented method on a documented path
//! is not), real answers validate against the schemas it gives for their
//! path, method and status, and the document itself holds together.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{fixture, fixture_activities, TestApp, ADMIN_TOKEN};
use crate::layout::files_containing;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

async fn document(app: &TestApp) -> Value {
    let res = app.get("/openapi.json").await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// `/api/v3/activities/{id}` → `/api/v3/activities/{}`: routes compare by
/// shape, whatever their parameters are called.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push_str("{}");
            }
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

/// Every documented operation as (method, path template).
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// The routes the README names as `` `METHOD /path` ``, outside the
/// simulator's section (its routes are the simulator's, not ours).
fn readme_routes() -> BTreeSet<(String, String)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut ours = String::new();
    let mut in_simulator = false;
    for line in readme.lines() {
        if line.starts_with("## ") {
            in_simulator = line == "## Strava simulator";
        }
        if !in_simulator {
            ours.push_str(line);
            ours.push('\n');
        }
    }
    let mut routes = BTreeSet::new();
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        for (i, _) in ours.match_indices(&format!("`{method} /")) {
            let rest = &ours[i + method.len() + 2..];
            let path = rest[..rest.find('`').unwrap()].split('?').next().unwrap();
            routes.insert((method.to_string(), shape(path)));
        }
    }
    routes
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_in_the_readme() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p)| (m, shape(&p)))
        .collect();
    let readme = readme_routes();
    let undocumented: Vec<_> = readme.difference(&documented).collect();
    let unlisted: Vec<_> = documented.difference(&readme).collect();
    assert!(
        undocumented.is_empty() && unlisted.is_empty(),
        "in the README but not the document: {undocumented:?}; \
         in the document but not the README: {unlisted:?}"
    );
}

/// utoipa-actix-web's `service` takes only handlers with a
/// `#[utoipa::path]`; actix's own ways to add a route (a resource, a scope,
/// a bare route) would serve it without documenting it, so only the
/// document's own route uses them.
#[test]
fn routes_are_added_only_where_the_document_sees_them() {
    let allowed = ["http/openapi.rs", "simulator"];
    for raw in [
        "web::resource(",
        "web::scope(",
        "web::route(",
        ".route(",
        "web::get()",
        "web::post()",
        "web::put()",
        "web::patch()",
        "web::delete()",
        "web::method(",
        "#[route(",
    ] {
        assert_eq!(
            files_containing(raw, &allowed),
            Vec::<std::path::PathBuf>::new(),
            "{raw}"
        );
    }
}

/// A running app with one athlete, their activities and a job, and what it
/// takes to call each route.
struct Seeded {
    app: TestApp,
    athlete_id: i64,
    token: String,
    activity_id: i64,
    job_id: i64,
    secret: String,
}

async fn seeded() -> Seeded {
    let app = TestApp::spawn().await;
    let (athlete_id, token) = app.seed_athlete("athlete.json").await;
    let activities = fixture_activities("activities.json");
    let activity_id = serde_json::from_str::<Value>(activities[0].get()).unwrap()["id"]
        .as_i64()
        .unwrap();
    app.seed_summaries(athlete_id, activities).await;
    let res = app.request_sync(&token).await;
    assert_eq!(res.status(), 202);
    let job_id = res.json::<Value>().await.unwrap()["job_id"]
        .as_i64()
        .unwrap();
    let secret = app.store.path_secret().await.unwrap();
    Seeded {
        app,
        athlete_id,
        token,
        activity_id,
        job_id,
        secret,
    }
}

impl Seeded {
    /// `template` with each path parameter filled with a value that exists.
    fn fill(&self, template: &str) -> String {
        template
            .replace(
                "/activities/{id}",
                &format!("/activities/{}", self.activity_id),
            )
            .replace("/jobs/{id}", &format!("/jobs/{}", self.job_id))
            .replace("{path_secret}", &self.secret)
            .replace("{id}", &self.athlete_id.to_string())
    }

    /// Sends `method` to `path` with the token the operation's security
    /// names (the API token when it names none, which no public route minds).
    async fn send(
        &self,
        doc: &Value,
        method: &str,
        template: &str,
        path: &str,
    ) -> reqwest::Response {
        let operation = doc["paths"][template].get(method.to_lowercase());
        let admin = operation
            .and_then(|op| op["security"].as_array())
            .is_some_and(|s| s.iter().any(|r| r.get("admin_token").is_some()));
        let token = if admin { ADMIN_TOKEN } else { &self.token };
        self.app
            .client
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                self.app.url(path),
            )
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }
}

/// The app's answer to what it does not serve: the 404 fault naming `Route`.
fn is_unserved(status: u16, body: &Value) -> bool {
    status == 404 && body["errors"][0]["resource"] == "Route"
}

#[tokio::test]
async fn every_documented_operation_is_served_and_no_other_method() {
    let seeded = seeded().await;
    let doc = document(&seeded.app).await;
    // Disconnecting purges the athlete the other calls use: it goes last.
    let mut operations = operations(&doc);
    operations.sort_by_key(|(_, path)| path == "/auth/disconnect");
    for (method, template) in operations {
        let path = seeded.fill(&template);
        let res = seeded.send(&doc, &method, &template, &path).await;
        let (status, body) = checked(&doc, &method, &template, res).await;
        assert!(
            !is_unserved(status, &body),
            "{method} {template} is not served"
        );
    }
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS.iter().filter(|m| item.get(**m).is_none()) {
            let method = method.to_uppercase();
            let path = seeded.fill(template);
            let res = seeded.send(&doc, &method, template, &path).await;
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            assert!(
                is_unserved(status, &body),
                "{method} {template} is served: {status} {body}"
            );
        }
    }
}

/// The documented answer to `method` `template` with `status`: its own, or
/// the operation's `default`.
fn documented<'d>(doc: &'d Value, method: &str, template: &str, status: u16) -> &'d Value {
    let operation = &doc["paths"][template][method.to_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {template} is not documented"
    );
    let responses = &operation["responses"];
    let response = responses
        .get(status.to_string())
        .or_else(|| responses.get("default"))
        .unwrap_or_else(|| panic!("{method} {template} answered {status}, not documented"));
    match response["$ref"].as_str() {
        Some(pointer) => resolve(doc, pointer).unwrap(),
        None => response,
    }
}

/// A local `$ref` (`#/components/...`) in `doc`.
fn resolve<'d>(doc: &'d Value, reference: &str) -> Option<&'d Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// Checks `res` against what the document says `method` `template` answers
/// with its status: the headers it names, the media type and the body's
/// schema (components resolved). Returns the status and the JSON body
/// (null when it has none).
async fn checked(
    doc: &Value,
    method: &str,
    template: &str,
    res: reqwest::Response,
) -> (u16, Value) {
    let status = res.status().as_u16();
    let what = format!("{method} {template} → {status}");
    let response = documented(doc, method, template, status).clone();
    for header in response["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(h, _)| h)
    {
        assert!(
            res.headers().contains_key(header.as_str()),
            "{what}: no {header} header"
        );
    }
    let media_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let text = res.text().await.unwrap();
    let Some(content) = response["content"].as_object() else {
        assert!(
            text.is_empty(),
            "{what}: a body where none is documented: {text}"
        );
        return (status, Value::Null);
    };
    let media_type = media_type.unwrap_or_else(|| panic!("{what}: no content-type"));
    let (_, documented) = content
        .iter()
        .find(|(m, _)| media_type.starts_with(m.split(';').next().unwrap()))
        .unwrap_or_else(|| panic!("{what}: {media_type} is not documented"));
    if !media_type.starts_with("application/json") {
        return (status, Value::Null);
    }
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    let mut schema = documented["schema"].clone();
    schema["components"] = doc["components"].clone();
    let validator = jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{what}: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{body:#}");
    (status, body)
}

/// Sends one request and checks its answer against the document.
struct Caller<'a> {
    seeded: &'a Seeded,
    doc: &'a Value,
}

impl Caller<'_> {
    async fn call(
        &self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let app = &self.seeded.app;
        let mut req = app.client.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            app.url(path),
        );
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        checked(self.doc, method, template, req.send().await.unwrap()).await
    }

    /// `call` that also asserts the status.
    async fn expect(
        &self,
        status: u16,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (got, body) = self.call(method, template, path, token, body).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        body
    }
}

#[tokio::test]
async fn real_answers_match_their_documented_schemas() {
    let seeded = seeded().await;
    let doc = document(&seeded.app).await;
    let (id, token, secret) = (
        seeded.athlete_id,
        seeded.token.as_str(),
        seeded.secret.as_str(),
    );
    seeded
        .app
        .seed_detail(
            id,
            serde_json::from_str(&fixture("activity_detail.json")).unwrap(),
        )
        .await;
    let c = Caller {
        seeded: &seeded,
        doc: &doc,
    };
    let api = Some(token);
    let admin = Some(ADMIN_TOKEN);

    // The read API.
    c.expect(200, "GET", "/api/v3/athlete", "/api/v3/athlete", api, None)
        .await;
    let list = "/api/v3/athlete/activities";
    let page = c.expect(200, "GET", list, list, api, None).await;
    assert!(!page.as_array().unwrap().is_empty());
    c.expect(200, "GET", list, &format!("{list}?page=99"), api, None)
        .await;
    c.expect(400, "GET", list, &format!("{list}?per_page=0"), api, None)
        .await;
    c.expect(401, "GET", list, list, None, None).await;
    c.expect(401, "GET", list, list, Some("not-a-token"), None)
        .await;
    let one = "/api/v3/activities/{id}";
    for activity in page.as_array().unwrap() {
        let path = format!("/api/v3/activities/{}", activity["id"]);
        c.expect(200, "GET", one, &path, api, None).await;
    }
    c.expect(404, "GET", one, "/api/v3/activities/1", api, None)
        .await;
    c.expect(400, "GET", one, "/api/v3/activities/abc", api, None)
        .await;
    let stats = "/api/v3/athletes/{id}/stats";
    c.expect(
        200,
        "GET",
        stats,
        &format!("/api/v3/athletes/{id}/stats"),
        api,
        None,
    )
    .await;
    c.expect(404, "GET", stats, "/api/v3/athletes/1/stats", api, None)
        .await;
    let feed = "/api/v3/athlete/changes";
    let changes = c.expect(200, "GET", feed, feed, api, None).await;
    assert!(
        !changes["changes"].as_array().unwrap().is_empty(),
        "{changes}"
    );
    c.expect(400, "GET", feed, &format!("{feed}?limit=0"), api, None)
        .await;
    c.expect(401, "GET", feed, feed, None, None).await;

    // Sync.
    c.expect(200, "GET", "/api/sync", "/api/sync", api, None)
        .await;
    c.expect(429, "POST", "/api/sync", "/api/sync", api, None)
        .await;
    let job = "/api/sync/jobs/{id}";
    let path = format!("/api/sync/jobs/{}", seeded.job_id);
    c.expect(200, "GET", job, &path, api, None).await;
    c.expect(404, "GET", job, "/api/sync/jobs/999999", api, None)
        .await;

    // Operators.
    c.expect(200, "GET", "/admin/budget", "/admin/budget", admin, None)
        .await;
    c.expect(401, "GET", "/admin/budget", "/admin/budget", api, None)
        .await;
    c.expect(
        200,
        "GET",
        "/admin/athletes",
        "/admin/athletes",
        admin,
        None,
    )
    .await;
    let tier = "/admin/athletes/{id}";
    let path = format!("/admin/athletes/{id}");
    c.expect(
        200,
        "PATCH",
        tier,
        &path,
        admin,
        Some(json!({"tier": "standard"})),
    )
    .await;
    c.expect(
        400,
        "PATCH",
        tier,
        &path,
        admin,
        Some(json!({"tier": "gold"})),
    )
    .await;
    c.expect(
        404,
        "PATCH",
        tier,
        "/admin/athletes/1",
        admin,
        Some(json!({"tier": "standard"})),
    )
    .await;
    c.expect(
        202,
        "POST",
        "/admin/sync/run",
        "/admin/sync/run",
        admin,
        None,
    )
    .await;
    c.expect(200, "POST", "/admin/pause", "/admin/pause", admin, None)
        .await;
    c.expect(200, "GET", "/api/sync", "/api/sync", api, None)
        .await;
    c.expect(200, "POST", "/admin/resume", "/admin/resume", admin, None)
        .await;
    c.expect(
        200,
        "GET",
        "/admin/webhooks",
        "/admin/webhooks",
        admin,
        None,
    )
    .await;
    let replay = "/admin/webhooks/replay";
    c.expect(200, "POST", replay, replay, admin, None).await;
    let deliveries = "/admin/deliveries";
    c.expect(200, "GET", deliveries, deliveries, admin, None)
        .await;
    let replay = "/admin/deliveries/replay";
    c.expect(200, "POST", replay, replay, admin, None).await;
    c.expect(200, "GET", "/metrics", "/metrics", admin, None)
        .await;

    // Operations and this document.
    c.expect(200, "GET", "/healthz", "/healthz", None, None)
        .await;
    c.expect(200, "GET", "/readyz", "/readyz", None, None).await;
    c.expect(200, "GET", "/openapi.json", "/openapi.json", None, None)
        .await;

    // The webhook callback.
    let hook = "/webhook/{path_secret}";
    let path = format!("/webhook/{secret}");
    let handshake = |token: &str| {
        format!("{path}?hub.mode=subscribe&hub.challenge=abc&hub.verify_token={token}")
    };
    c.expect(
        200,
        "GET",
        hook,
        &handshake("test-verify-token"),
        None,
        None,
    )
    .await;
    c.expect(403, "GET", hook, &handshake("wrong"), None, None)
        .await;
    c.expect(404, "GET", hook, "/webhook/not-the-secret", None, None)
        .await;
    let event = json!({
        "object_type": "activity", "object_id": 77, "aspect_type": "update",
        "owner_id": id, "event_time": crate::helpers::now(), "updates": {"title": "Renamed"},
        "subscription_id": "5",
    });
    c.expect(200, "POST", hook, &path, None, Some(event)).await;
    c.expect(
        400,
        "POST",
        hook,
        &path,
        None,
        Some(json!({"object_type": "route"})),
    )
    .await;
    let big = json!({ "padding": "x".repeat(20_000) });
    c.expect(413, "POST", hook, &path, None, Some(big)).await;

    // Connecting.
    c.expect(302, "GET", "/auth/strava", "/auth/strava", None, None)
        .await;
    let callback = "/auth/strava/callback";
    c.expect(
        400,
        "GET",
        callback,
        &format!("{callback}?state=forged&code=x"),
        None,
        None,
    )
    .await;
    c.expect(
        401,
        "POST",
        "/auth/disconnect",
        "/auth/disconnect",
        None,
        None,
    )
    .await;
}

#[tokio::test]
async fn rate_limits_answer_their_documented_fault() {
    let app = TestApp::spawn_with(&[("API_RATE_LIMIT", "1")]).await;
    let (_, token) = app.seed_athlete("athlete.json").await;
    let doc = document(&app).await;
    let list = "/api/v3/athlete/activities";
    for _ in 0..20 {
        let res = app.list_activities(&token, "").await;
        let (status, _) = checked(&doc, "GET", list, res).await;
        if status == 429 {
            return;
        }
    }
    panic!("no 429 within 20 requests at API_RATE_LIMIT=1");
}

/// Every `$ref` anywhere in `value`.
fn refs<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r);
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_well_formed_openapi_3_1() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "strava-sync");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["info"]["description"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));

    let mut all = Vec::new();
    refs(&doc, &mut all);
    let dangling: Vec<_> = all.iter().filter(|r| resolve(&doc, r).is_none()).collect();
    assert!(dangling.is_empty(), "unresolved: {dangling:?}");

    let components = &doc["components"];
    for (name, schema) in components["schemas"].as_object().unwrap() {
        jsonschema::draft202012::meta::validate(schema)
            .unwrap_or_else(|e| panic!("schema {name} is not JSON Schema 2020-12: {e}"));
    }
    let schemes = components["securitySchemes"].as_object().unwrap();
    let tags: BTreeSet<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();

    let mut operation_ids = BTreeMap::new();
    for (method, template) in operations(&doc) {
        let what = format!("{method} {template}");
        let op = &doc["paths"][&template][method.to_lowercase()];
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no operationId"));
        if let Some(other) = operation_ids.insert(id.to_string(), what.clone()) {
            panic!("{what} and {other} share the operationId {id}");
        }
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses
                .keys()
                .any(|s| s.starts_with('2') || s.starts_with('3')),
            "{what}: no success answer"
        );
        assert!(
            responses.contains_key("default"),
            "{what}: no default (fault) answer"
        );
        for (status, response) in responses {
            let response = match response["$ref"].as_str() {
                Some(r) => resolve(&doc, r).unwrap(),
                None => response,
            };
            assert!(
                response["description"].is_string(),
                "{what} {status}: no description"
            );
            if status.starts_with('4') || status.starts_with('5') || status == "default" {
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/Fault",
                    "{what} {status}"
                );
            }
        }
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        for name in template
            .split('{')
            .skip(1)
            .map(|s| &s[..s.find('}').unwrap()])
        {
            let declared = params
                .iter()
                .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true);
            assert!(declared, "{what}: path parameter {name} is not declared");
        }
        for requirement in op["security"].as_array().into_iter().flatten() {
            for scheme in requirement.as_object().unwrap().keys() {
                assert!(
                    schemes.contains_key(scheme),
                    "{what}: unknown scheme {scheme}"
                );
            }
        }
        for tag in op["tags"].as_array().unwrap() {
            assert!(
                tags.contains(tag.as_str().unwrap()),
                "{what}: undeclared tag {tag}"
            );
        }
    }
}

/// The bounds the document gives the list parameters are the ones the
/// handler enforces: a value just outside each is a 400 naming it.
#[tokio::test]
async fn documented_parameter_bounds_are_enforced() {
    let seeded = seeded().await;
    let doc = document(&seeded.app).await;
    let mut checked_any = false;
    for (method, template) in operations(&doc) {
        let op = &doc["paths"][&template][method.to_lowercase()];
        for param in op["parameters"].as_array().into_iter().flatten() {
            let schema = &param["schema"];
            if param["in"] != "query" || schema["type"] != "integer" {
                continue;
            }
            let name = param["name"].as_str().unwrap();
            let mut outside = vec!["x".to_string()];
            outside.extend(schema["minimum"].as_i64().map(|m| (m - 1).to_string()));
            outside.extend(schema["maximum"].as_i64().map(|m| (m + 1).to_string()));
            for value in outside {
                let path = format!("{}?{name}={value}", seeded.fill(&template));
                let res = seeded.send(&doc, &method, &template, &path).await;
                let (status, body) = checked(&doc, &method, &template, res).await;
                assert_eq!(status, 400, "{method} {path}: {body}");
                assert_eq!(body["errors"][0]["field"], name, "{method} {path}");
                checked_any = true;
            }
        }
    }
    assert!(checked_any, "no integer query parameter is documented");
}
