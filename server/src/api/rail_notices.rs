//! `/v1/rail-notices`: what became of the rail notices the server held because no
//! payment knew their transfer yet (how they are held and applied:
//! [`crate::rail_notices`]). Posting a notice is `POST /v1/rail-notices`
//! ([`super::payments::post_rail_notice`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::auth::Principal;
use super::error::{ApiError, ApiResult};
use super::{json, limit_param, params, parse_id, AppState, Params};
use crate::rail_notices::{dismiss, list, read, HeldStatus};

/// `GET /v1/rail-notices?status=&rail_ref=&after=&limit=`: the tenant's held rail
/// notices, oldest first (`status`: `held`, `applying`, `applied`, `refused` or `dismissed`; `after`: the
/// `next` of the page before). With an API key only.
pub async fn list_rail_notices(
    State(state): State<AppState>,
    principal: Principal,
    query: Params,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let q = params(query)?;
    let status = q
        .get("status")
        .map(|s| {
            HeldStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    "status",
                    format!(
                        "`status` must be held, applying, applied, refused or dismissed, got `{}`",
                        trustfold_core::error::echo(s)
                    ),
                )
            })
        })
        .transpose()?;
    let after = q.get("after").map(|a| parse_id(a, "after")).transpose()?;
    let limit = limit_param(&q, 100, 1000)?;
    let rail_ref = q.get("rail_ref").map(String::as_str);
    let (notices, has_more) = list(&state, tenant, status, rail_ref, after, limit).await?;
    let next = notices.last().map(|n| n["id"].clone());
    Ok(json(
        StatusCode::OK,
        &json!({"rail_notices": notices, "has_more": has_more, "next": next}),
    ))
}

/// `GET /v1/rail-notices/{notice_id}`: one held rail notice (the `id` of a 202 answer
/// of `POST /v1/rail-notices`). With an API key only; another tenant's is 404.
pub async fn get_rail_notice(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let id = parse_id(&id, "notice_id")?;
    let found = read(&state, tenant, id).await?.ok_or_else(|| unknown(id))?;
    Ok(json(StatusCode::OK, &found))
}

/// `DELETE /v1/rail-notices/{notice_id}`: dismisses a held notice whose transfer will
/// never be recorded here (it stops waiting; the record stays, `status: "dismissed"`).
/// One applied or refused already is 409 `rail_notice_settled`; dismissing again answers
/// the dismissed notice. With an API key only.
pub async fn dismiss_rail_notice(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let id = parse_id(&id, "notice_id")?;
    let found = dismiss(&state, tenant, id)
        .await?
        .ok_or_else(|| unknown(id))?;
    Ok(json(StatusCode::OK, &found))
}

fn unknown(id: uuid::Uuid) -> ApiError {
    ApiError::NotFound {
        code: "unknown_rail_notice",
        message: format!(
            "no held rail notice {id} (only notices answered 202, held for a transfer no \
             payment knew yet, are kept)"
        ),
    }
}
