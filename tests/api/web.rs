//! The embedded web page: MIME types, cache headers, ETags, SPA fallback, and JSON 404s
//! for API paths.

use crate::helpers::{Backend, error_code, spawn_app};

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_the_right_types_and_caching() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let res = app.get("/").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(res.headers()["cache-control"], "no-cache");
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let html = res.text().await.unwrap();
    assert!(
        html.contains("agv-server") && html.contains(r#"<script type="module" src="/app.js">"#),
        "the console's shell loads its module"
    );
    assert!(
        !html.contains("<script>") && !html.contains("onclick="),
        "no inline script"
    );
    // The help on connecting a client ships with the console.
    let res = app.get("/components/connect.js").await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("base_url"));

    let res = app.get("/app.js").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(res.headers()["cache-control"], "public, max-age=3600");
    let res = app.get("/app.css").await;
    assert_eq!(res.headers()["content-type"], "text/css; charset=utf-8");

    let res = app
        .client
        .get(app.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304, "a matching ETag gives 304");
    app.stop().await;
}

#[tokio::test]
async fn unknown_pages_fall_back_to_the_app_but_api_paths_and_missing_assets_do_not() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let res = app.get("/incidents/123").await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("<!doctype html>"));

    for path in ["/v1/nope", "/api/nope", "/v1", "/api"] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 404, "{path}");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
        assert_eq!(error_code(res).await, "not_found");
    }
    let res = app
        .client
        .post(app.url("/v1/nope"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(app.get("/missing.js").await.status(), 404);
    assert_eq!(
        app.client.post(app.url("/")).send().await.unwrap().status(),
        405
    );
    app.stop().await;
}
