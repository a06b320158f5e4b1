//! Serves the console UI in `web/`, embedded in the binary with rust-embed.
//!
//! Correct MIME types, ETags from the embedded file hashes, `no-cache` for HTML (so an
//! upgrade shows at once) and an hour of caching for other assets. Unknown paths fall back
//! to `index.html` for the single-page app — except under `/api/` and `/v1/`, which get a
//! JSON 404 (see `api::v1::not_found`).

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Assets;

const INDEX: &str = "index.html";

/// GET/HEAD for anything not matched by an API route.
pub async fn serve(req: HttpRequest) -> HttpResponse {
    let path = req.path();
    if path.starts_with("/api/") || path == "/api" || path.starts_with("/v1/") || path == "/v1" {
        return actix_web::ResponseError::error_response(&crate::api::ApiError::not_found(
            format!("no endpoint {} {}", req.method(), path),
        ));
    }
    if req.method() != actix_web::http::Method::GET && req.method() != actix_web::http::Method::HEAD
    {
        return HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, "GET, HEAD"))
            .finish();
    }
    let wanted = path.trim_start_matches('/');
    let wanted = if wanted.is_empty() { INDEX } else { wanted };
    // A path with an extension that is not embedded is a missing asset, not a page route.
    let (name, file) = match Assets::get(wanted) {
        Some(f) => (wanted, f),
        None if wanted
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains('.')) =>
        {
            return HttpResponse::NotFound()
                .content_type("text/plain; charset=utf-8")
                .body("not found");
        }
        None => match Assets::get(INDEX) {
            Some(f) => (INDEX, f),
            None => return HttpResponse::NotFound().finish(),
        },
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .finish();
    }
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let is_html = mime.essence_str() == "text/html";
    let content_type = if mime.type_() == "text" || mime.essence_str() == "application/javascript" {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_owned()
    };
    let cache = if is_html {
        "no-cache"
    } else {
        "public, max-age=3600"
    };
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_str(&content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        ))
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::ETAG, etag))
        .body(file.data.into_owned())
}
