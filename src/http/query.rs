//! Integer query parameters by Strava's rules: unknown ones are ignored; a
//! known one given twice, not an integer or out of its range is a 400 naming
//! it (the document's bounds are checked against these in
//! `tests/api/openapi.rs`).

use std::ops::RangeInclusive;

use actix_web::web;

use super::error::ApiError;

pub struct QueryParams {
    pairs: Vec<(String, String)>,
    /// The resource a fault names.
    resource: &'static str,
}

impl QueryParams {
    pub fn parse(query: &str, resource: &'static str) -> Result<Self, ApiError> {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
            .map_err(|e| ApiError::bad_parameter("Request", "query", e.to_string()))?
            .into_inner();
        Ok(Self { pairs, resource })
    }

    pub fn integer(&self, name: &'static str) -> Result<Option<i64>, ApiError> {
        let mut given = self.pairs.iter().filter(|(k, _)| k == name);
        let Some((_, raw)) = given.next() else {
            return Ok(None);
        };
        if given.next().is_some() {
            return Err(self.invalid(name, format!("{name} is given more than once")));
        }
        raw.parse()
            .map(Some)
            .map_err(|_| self.invalid(name, format!("{name} must be an integer")))
    }

    /// `name` within `range`, or `default` when it is absent.
    pub fn bounded(
        &self,
        name: &'static str,
        range: RangeInclusive<i64>,
        default: i64,
    ) -> Result<i64, ApiError> {
        let value = self.integer(name)?.unwrap_or(default);
        if range.contains(&value) {
            return Ok(value);
        }
        let bounds = match *range.end() {
            i64::MAX => format!("at least {}", range.start()),
            end => format!("between {} and {end}", range.start()),
        };
        Err(self.invalid(name, format!("{name} must be {bounds}")))
    }

    pub fn invalid(&self, name: &'static str, message: String) -> ApiError {
        ApiError::bad_parameter(self.resource, name, message)
    }
}
