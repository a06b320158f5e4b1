//! `/v1` endpoints of this layer: the kill-switch status, the first admin endpoint. The
//! proxy endpoints arrive with the front door; unknown `/v1` paths get a JSON 404 in `web.rs`.

use super::auth::AdminKey;
use actix_web::{HttpResponse, get};
use serde_json::json;

/// Freeze state of the caller's tenant and its keys. Nothing can be frozen yet, so this
/// reports "not frozen" until the kill switch lands.
#[get("/v1/killswitch/status")]
pub async fn killswitch_status(AdminKey(caller): AdminKey) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "tenant_id": caller.tenant_id,
        "tenant": {"frozen": false},
        "frozen_keys": [],
    }))
}
