//! [`ApiError`]: every failure of a request, rendered as the spec's JSON error body with the status of its code.
//! Storage errors are mapped here, in one place.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wharf_oci::route::RouteError;
use wharf_oci::{ErrorBody, ErrorCode, ErrorInfo};
use wharf_storage::StorageError;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub status: StatusCode,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    /// Extra headers (e.g. `Content-Range` on a 416).
    pub headers: Vec<(header::HeaderName, String)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            status: StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn digest_invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::DigestInvalid, message)
    }

    pub fn unsupported_method() -> Self {
        ApiError::new(ErrorCode::Unsupported, "method not allowed on this resource")
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NotFound => {
                ApiError::new(ErrorCode::Unsupported, "no such API endpoint").with_status(StatusCode::NOT_FOUND)
            }
            RouteError::InvalidName(name) => {
                ApiError::new(ErrorCode::NameInvalid, format!("invalid repository name {name:?}"))
            }
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let message = e.to_string();
        match &e {
            StorageError::UploadUnknown(_) => ApiError::new(ErrorCode::BlobUploadUnknown, message),
            StorageError::RangeMismatch { expected, .. } => ApiError::new(ErrorCode::BlobUploadInvalid, message)
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                .with_header(header::RANGE, crate::headers::upload_range(*expected)),
            StorageError::DigestMismatch { .. } => ApiError::new(ErrorCode::DigestInvalid, message),
            StorageError::BlobUnknown(_) => ApiError::new(ErrorCode::BlobUnknown, message),
            StorageError::RangeNotSatisfiable { size } => ApiError::new(ErrorCode::BlobUnknown, message)
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                .with_header(header::CONTENT_RANGE, format!("bytes */{size}")),
            StorageError::BodyInterrupted { .. } => ApiError::new(ErrorCode::BlobUploadInvalid, message),
            StorageError::ReadOnly { .. } => ApiError::new(ErrorCode::Denied, message),
            StorageError::Remote { .. } => {
                ApiError::new(ErrorCode::Unknown, message).with_status(StatusCode::BAD_GATEWAY)
            }
            StorageError::Io { .. } if e.is_no_space() => {
                ApiError::new(ErrorCode::Unknown, message).with_status(StatusCode::INSUFFICIENT_STORAGE)
            }
            StorageError::Unavailable { .. } => {
                ApiError::new(ErrorCode::Unknown, message).with_status(StatusCode::SERVICE_UNAVAILABLE)
            }
            StorageError::Io { .. }
            | StorageError::Corrupt { .. }
            | StorageError::Backend { .. }
            | StorageError::Config(_) => ApiError::new(ErrorCode::Unknown, message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(
                code = self.code.as_str(),
                status = self.status.as_u16(),
                "{}",
                self.message
            );
        } else {
            tracing::debug!(
                code = self.code.as_str(),
                status = self.status.as_u16(),
                "{}",
                self.message
            );
        }
        let body = ErrorBody {
            errors: vec![ErrorInfo {
                code: self.code,
                message: self.message,
                detail: self.detail,
            }],
        };
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"errors\":[]}".to_vec());
        let mut resp = (self.status, json).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        resp
    }
}

pub type ApiResult<T = Response> = Result<T, ApiError>;
