//! `GET /v1/backup` (operator token): a consistent copy of the embedded
//! store, taken while the server runs and streamed as one file
//! (`store/backup.rs`); `wasmhook backup FILE` saves it and
//! `wasmhook restore FILE --data DIR` brings it back.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Operator;
use super::openapi::ErrorBody;
use super::{ApiError, ApiState};

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(backup))
}

/// A backup of the embedded store: every tenant, key, subscription,
/// plugin, source, event, delivery (pending ones under their ids), window
/// and held item, as one moment (the writers pause while it is written;
/// reads go on). Its secrets stay sealed: keep `server.secrets_key` (or
/// the data directory's `secrets-key`) apart from it. The headers
/// `wasmhook-backup-format` and `wasmhook-backup-entries` describe it.
/// Cluster mode: 409 (back up the NATS servers instead).
#[utoipa::path(get, path = "/v1/backup", tag = "operator", security(("operator" = [])),
    responses((status = 200, content_type = "application/octet-stream", description = "the backup file"),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn backup(_: Operator, State(state): State<ApiState>) -> Result<Response, ApiError> {
    if state.app.ownership.is_some() {
        return Err(ApiError::Conflict(
            "cluster mode: the records live in the cluster's JetStream; back up the NATS servers' streams (nats stream backup) instead".into(),
        ));
    }
    // Written in the data directory (room for a copy of the store), and
    // already unlinked: the file goes with the answer, however it ends.
    let (file, info) = state.app.store.backup(&state.backup_dir).await?;
    let file = tokio::fs::File::from_std(file);
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        let mut chunk = vec![0u8; 256 * 1024];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
    .boxed();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, info.bytes.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"wasmhook-{}.backup\"",
                    info.taken_at_ms
                ),
            ),
        ],
        [
            ("wasmhook-backup-format", info.format.to_string()),
            ("wasmhook-backup-entries", info.entries.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}
