//! The OpenAI-compatible HTTP side: `GET /v1/models`, non-streaming `POST /v1/chat/completions`
//! (text and `image_url` parts, images as `data:` URLs), OpenAI-shaped errors, and the bearer
//! key check.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use vlsbench_plugin_api::{
    BackendError, ChatMessage, ContentPart, ErrorKind, GenerateRequest, GenerationSettings, Role,
};

use super::Served;

/// The largest request body accepted (images are base64 inside it).
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// Serves connections until Ctrl-C.
pub async fn accept_loop(listener: std::net::TcpListener, served: Arc<Served>) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopped");
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let (served, counter) = (served.clone(), counter.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(served.clone(), counter.clone(), req));
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                    });
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// An OpenAI-style error reply.
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into(), kind: "invalid_request_error" }
    }

    fn from_backend(e: &BackendError) -> Self {
        let status = match e.kind {
            ErrorKind::BadRequest | ErrorKind::Unsupported | ErrorKind::ContentFiltered => StatusCode::BAD_REQUEST,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::ServerError | ErrorKind::Network | ErrorKind::InvalidResponse => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self { status, message: e.to_string(), kind: e.kind.as_str() }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.kind}});
        reply(self.status, &body)
    }
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

async fn handle(
    served: Arc<Served>,
    counter: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match route(&served, &counter, req).await {
        Ok(response) => response,
        Err(e) => e.response(),
    })
}

async fn route(
    served: &Served,
    counter: &AtomicU64,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if let Some(key) = &served.api_key {
        let given = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if given.and_then(|v| v.strip_prefix("Bearer ")) != Some(key.as_str()) {
            return Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or wrong API key (Authorization: Bearer ...)".into(),
                kind: "invalid_api_key",
            });
        }
    }
    let path = req.uri().path().trim_end_matches('/').to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/v1/models") => Ok(reply(
            StatusCode::OK,
            &json!({"object": "list", "data": [{"id": served.name, "object": "model", "created": 0, "owned_by": "vlsbench"}]}),
        )),
        (&Method::POST, "/v1/chat/completions") => {
            let body = Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await.map_err(|e| ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!("cannot read the request body (at most {} MiB): {e}", MAX_BODY_BYTES >> 20),
                kind: "invalid_request_error",
            })?;
            let n = counter.fetch_add(1, Ordering::Relaxed);
            chat(served, n, &body.to_bytes()).await
        }
        (_, p) => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "no route {} {p} (this server has GET /v1/models and POST /v1/chat/completions)",
                req.method()
            ),
            kind: "not_found",
        }),
    }
}

/// A chat completion request, as far as this server reads it.
#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<InMessage>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    n: Option<u32>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    content: InContent,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum InContent {
    Text(String),
    Parts(Vec<InPart>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum InPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Deserialize)]
struct ImageUrl {
    url: String,
}

async fn chat(served: &Served, n: u64, body: &[u8]) -> Result<Response<Full<Bytes>>, ApiError> {
    let parsed: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("not a chat completion request: {e}")))?;
    if parsed.stream == Some(true) {
        return Err(ApiError::bad_request("streaming is not supported: send \"stream\": false"));
    }
    if parsed.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("only n = 1 is supported"));
    }
    let id = format!("chatcmpl-{n}");
    let (messages, files) = to_messages(served, &id, parsed.messages)?;
    let settings = GenerationSettings {
        max_new_tokens: parsed.max_completion_tokens.or(parsed.max_tokens).or(served.defaults.max_new_tokens),
        temperature: parsed.temperature.or(served.defaults.temperature),
        top_p: parsed.top_p.or(served.defaults.top_p),
    };
    let request = GenerateRequest { id: id.clone(), messages, settings, response_format: None };
    let result = served.batcher.generate(request).await;
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    let generation = result.map_err(|e| ApiError::from_backend(&e))?;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let tokens = generation.tokens.unwrap_or(0);
    Ok(reply(
        StatusCode::OK,
        &json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": parsed.model.unwrap_or_else(|| served.name.clone()),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": generation.text},
                "finish_reason": generation.finish_reason.unwrap_or_else(|| "stop".into()),
            }],
            "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens},
        }),
    ))
}

/// The request's messages for the backend; each image written to a file it reads (returned, to be
/// removed once answered).
fn to_messages(
    served: &Served,
    id: &str,
    messages: Vec<InMessage>,
) -> Result<(Vec<ChatMessage>, Vec<std::path::PathBuf>), ApiError> {
    let mut files = Vec::new();
    let mut out = Vec::new();
    for (i, m) in messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(ApiError::bad_request(format!("messages[{i}]: role {other:?} is not supported"))),
        };
        let parts = match m.content {
            InContent::Text(text) => vec![ContentPart::Text { text }],
            InContent::Parts(parts) => {
                let mut content = Vec::new();
                for (j, part) in parts.into_iter().enumerate() {
                    content.push(match part {
                        InPart::Text { text } => ContentPart::Text { text },
                        InPart::ImageUrl { image_url } => {
                            let path = served.images.path().join(format!("{id}-{i}-{j}"));
                            write_image(&image_url.url, &path)
                                .map_err(|e| ApiError::bad_request(format!("messages[{i}].content[{j}]: {e}")))?;
                            files.push(path.clone());
                            ContentPart::Image { path }
                        }
                    });
                }
                content
            }
        };
        out.push(ChatMessage::new(role, parts));
    }
    Ok((out, files))
}

/// Decodes a `data:image/...;base64,` URL into `path`, checking that it is an image.
fn write_image(url: &str, path: &std::path::Path) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err("only data: URLs are accepted (this server fetches nothing)".into());
    };
    let (meta, data) = rest.split_once(',').ok_or("a data: URL needs a comma before its data")?;
    if !meta.ends_with(";base64") {
        return Err("a data: URL must be base64 (data:image/png;base64,...)".into());
    }
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(data.trim()).map_err(|e| format!("bad base64: {e}"))?;
    image::guess_format(&bytes).map_err(|e| format!("not an image: {e}"))?;
    std::fs::write(path, &bytes).map_err(|e| format!("cannot store the image: {e}"))
}
