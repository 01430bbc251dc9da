//! `Status` error bodies (`meta/v1` Status with kind, status, message, reason, details, code).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::resource::Resource;

/// An API error, rendered as a `Status` object with the matching HTTP status code.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code, repeated in the body's `code`.
    pub code: u16,
    /// The machine-readable `reason` (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// The human-readable `message`.
    pub message: String,
    /// `details` (name, group, kind), when the error is about one object.
    pub details: Option<Value>,
}

impl ApiError {
    fn about(resource: Resource, name: &str) -> Option<Value> {
        Some(json!({"name": name, "group": resource.group(), "kind": resource.plural()}))
    }

    /// 404 NotFound for an object.
    pub fn not_found(resource: Resource, name: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} {name:?} not found", resource.qualified()),
            details: Self::about(resource, name),
        }
    }

    /// 409 AlreadyExists on create.
    pub fn already_exists(resource: Resource, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} {name:?} already exists", resource.qualified()),
            details: Self::about(resource, name),
        }
    }

    /// 409 Conflict on a stale resourceVersion.
    pub fn conflict(resource: Resource, name: &str, why: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!("Operation cannot be fulfilled on {} {name:?}: {why}", resource.qualified()),
            details: Self::about(resource, name),
        }
    }

    /// 422 Invalid.
    pub fn invalid(resource: Resource, name: &str, cause: String) -> Self {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{} {name:?} is invalid: {cause}", resource.kind()),
            details: Self::about(resource, name),
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: String) -> Self {
        ApiError { code: 400, reason: "BadRequest", message, details: None }
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        ApiError { code: 401, reason: "Unauthorized", message: "Unauthorized".into(), details: None }
    }

    /// 403 Forbidden.
    pub fn forbidden(message: String) -> Self {
        ApiError { code: 403, reason: "Forbidden", message, details: None }
    }

    /// 415: a PATCH in a format the emulator does not apply (JSON Patch, apply patches).
    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
            details: None,
        }
    }

    /// 405: the method is not served on this path.
    pub fn method_not_allowed() -> Self {
        ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: "the server does not allow this method on the requested resource".into(),
            details: None,
        }
    }

    /// 410 Expired: the requested resourceVersion has been compacted.
    pub fn gone(requested: u64, oldest: u64) -> Self {
        ApiError {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {requested} ({oldest})"),
            details: None,
        }
    }

    /// 500 InternalError.
    pub fn internal(message: String) -> Self {
        ApiError { code: 500, reason: "InternalError", message, details: None }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.to_status())).into_response()
    }
}
