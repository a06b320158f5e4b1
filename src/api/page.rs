//! Lists answered a page at a time: the cursor a request brings, the cursor of the next
//! page, and the page itself as JSON or as a CSV download.

use super::error::ApiError;
use crate::domain::ParseError;
use crate::domain::evidence_pack::csv_field;
use crate::error::Code;
use actix_web::HttpResponse;
use serde_json::json;

/// `format`: `json` (or none) or `csv`; anything else is 400.
pub(crate) fn wants_csv(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => Err(ApiError::new(
            Code::InvalidQuery,
            format!(
                "unknown format '{}': use json or csv",
                other.chars().take(32).collect::<String>()
            ),
        )),
    }
}

/// An optional cursor read by `decode`; a bad one is a 400 `invalid_cursor` in the
/// decoder's words.
pub(crate) fn cursor<C>(
    raw: Option<&str>,
    decode: impl FnOnce(&str) -> Result<C, ParseError>,
) -> Result<Option<C>, ApiError> {
    raw.map(decode)
        .transpose()
        .map_err(|e| ApiError::new(Code::InvalidCursor, e.0))
}

/// The cursor of the page after `page`: its last row's, when the page is full (`limit`
/// rows); `None` when this is the last page.
pub(crate) fn next_cursor<T>(
    page: &[T],
    limit: u32,
    cursor: impl FnOnce(&T) -> String,
) -> Option<String> {
    page.last()
        .filter(|_| page.len() == limit as usize)
        .map(cursor)
}

/// A page as JSON: `{"object": "list", "data": …, "next_cursor": …}`.
pub(crate) fn json_page(data: impl serde::Serialize, next_cursor: Option<String>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"object": "list", "data": data, "next_cursor": next_cursor}))
}

/// A page as a CSV download named `filename`: a header row, then a row of fields per
/// record (quoted where needed, formulas defused: see [`csv_field`]), lines ending in CRLF;
/// the next page's cursor in `X-Next-Cursor`.
pub(crate) fn csv_page<const N: usize>(
    filename: &str,
    header: &str,
    rows: impl IntoIterator<Item = [String; N]>,
    next_cursor: Option<String>,
) -> HttpResponse {
    let mut out = String::from(header);
    out.push_str("\r\n");
    for fields in rows {
        let row: Vec<_> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header(attachment(filename))
        .insert_header(("X-Next-Cursor", next_cursor.unwrap_or_default()))
        .body(out)
}

/// The header that makes a browser save the answer as the file `filename`.
pub(crate) fn attachment(filename: &str) -> (&'static str, String) {
    (
        "Content-Disposition",
        format!("attachment; filename=\"{filename}\""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed_and_formulas_are_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=1+1"), "'=1+1");
        assert_eq!(
            csv_field("{\"a\":1,\"b\":2}"),
            "\"{\"\"a\"\":1,\"\"b\"\":2}\""
        );
    }
}
