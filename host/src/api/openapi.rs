//! The parts of the OpenAPI document that are not routes: title, security
//! schemes, the error shape. The paths come from the handlers' annotations
//! through the routers that serve them.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// `{"error": {"code", "message"}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `malformed_json`, `invalid_body`, `unauthorized`, `not_found`, …
    pub code: String,
    /// What is wrong, for people.
    pub message: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wasmhook",
        description = "Admin and ingest API of wasmhook, a self-hosted webhook router for chat platforms with per-subscriber WebAssembly transforms. Operator routes take the operator token, others a tenant API key, and the endpoint and delivery routes also a portal link's token (`whp_…`, scoped to one application), all as `Authorization: Bearer <token>`."
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Security)
)]
struct Base;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["operator", "tenant", "portal"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The document before the routes are added.
pub fn base() -> utoipa::openapi::OpenApi {
    Base::openapi()
}
