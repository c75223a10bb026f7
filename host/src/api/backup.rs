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
    let path = state
        .backup_dir
        .join(format!(".backup-{}", crate::util::new_id("bak")));
    let store = state.app.store.clone();
    let at = path.clone();
    let info = tokio::task::spawn_blocking(move || store.backup(&at))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let info = match info {
        Ok(info) => info,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
    };
    // Opened, then unlinked: the file goes when the answer is sent.
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(e.into()));
    let _ = std::fs::remove_file(&path);
    let file = file?;
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
