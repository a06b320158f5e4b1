//! Remote copies of backups in an S3-compatible bucket (`backup_s3_*` settings): upload one
//! backup file, list the copies under the prefix, and delete those the keep rule lets go.
//!
//! Requests are presigned with SigV4 by `rusty-s3` (which does no I/O) and sent with the
//! server's reqwest client; the bucket is addressed path-style (`<endpoint>/<bucket>/<key>`),
//! which MinIO, Garage, Ceph and AWS accept. An upload is one streamed `PUT` of the file
//! (never read whole into memory), so one backup may be at most 5 GiB, S3's limit for a
//! single `PUT`; the object's size is checked with a `HEAD` afterwards.
//!
//! Only objects directly under the prefix and named like an automatic backup
//! (`agv-backup-<UTC time>.tar`) are ever deleted. This module never logs or prints the
//! secret access key; its errors name the setting to check.

use crate::config::BackupS3;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// S3's limit for one `PUT` (multipart uploads are not used).
pub const MAX_SINGLE_PUT: u64 = 5 * 1024 * 1024 * 1024;
/// How long a presigned request stays valid; checked by the server when it starts.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// Bytes read from the file per chunk of the request body.
const CHUNK: usize = 256 * 1024;

/// The bucket backups go to, with its credentials and an HTTP client.
pub struct Remote {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    location: String,
    endpoint: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials' own Debug shows the key id only; the location says the rest.
        f.debug_struct("Remote")
            .field("location", &self.location)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.credentials.key())
            .finish_non_exhaustive()
    }
}

/// An uploaded backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The object's key in the bucket.
    pub key: String,
    pub bytes: u64,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteObject {
    pub key: String,
    pub bytes: Option<u64>,
}

impl Remote {
    pub fn new(cfg: &BackupS3) -> Result<Self, String> {
        let bucket = Bucket::new(
            cfg.endpoint.clone(),
            UrlStyle::Path,
            cfg.bucket.clone(),
            cfg.region.clone(),
        )
        .map_err(|e| {
            format!(
                "cannot address the bucket '{}' at {}: {e}; check backup_s3_endpoint and backup_s3_bucket",
                cfg.bucket, cfg.endpoint
            )
        })?;
        let client = crate::outbound::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| format!("cannot create the HTTP client for S3: {e}"))?;
        Ok(Self {
            bucket,
            credentials: Credentials::new(cfg.access_key_id.clone(), cfg.secret_access_key.clone()),
            prefix: cfg.prefix.clone(),
            location: cfg.location(),
            endpoint: cfg.endpoint.to_string(),
            client,
        })
    }

    /// `s3://bucket/prefix`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The key a file of this name is stored under.
    pub fn key_of(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Uploads `file` as `<prefix><file name>`, streaming it from disk; `sent` counts the
    /// bytes handed to the connection so far (for progress output). Replaces an object of
    /// the same key (an upload retried after a lost answer lands on the same object).
    pub async fn upload(
        &self,
        file: &Path,
        sent: Option<Arc<AtomicU64>>,
    ) -> Result<Uploaded, String> {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("{} names no file", file.display()))?;
        let key = self.key_of(&name);
        let unreadable =
            |e: std::io::Error| format!("cannot read the backup {}: {e}", file.display());
        let handle = tokio::fs::File::open(file).await.map_err(unreadable)?;
        let bytes = handle.metadata().await.map_err(unreadable)?.len();
        if bytes > MAX_SINGLE_PUT {
            return Err(format!(
                "the backup {} is {bytes} bytes, more than the 5 GiB one S3 upload may hold; copy it to the bucket with another tool",
                file.display()
            ));
        }
        let stream = futures_util::stream::try_unfold((handle, sent), |(mut f, sent)| async {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; CHUNK];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            buf.truncate(n);
            if let Some(s) = &sent {
                s.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Some((bytes::Bytes::from(buf), (f, sent))))
        });
        let url = self
            .bucket
            .put_object(Some(&self.credentials), &key)
            .sign(SIGNED_FOR);
        let put = self
            .client
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, bytes)
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .body(reqwest::Body::wrap_stream(stream));
        self.send("the upload", &key, put).await?;
        // The answer said yes; make sure the whole file is there.
        let url = self
            .bucket
            .head_object(Some(&self.credentials), &key)
            .sign(SIGNED_FOR);
        let res = self
            .send("checking the uploaded object", &key, self.client.head(url))
            .await?;
        let stored = res
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if stored != Some(bytes) {
            return Err(format!(
                "the uploaded object {} holds {} bytes, the backup {bytes}: the upload was cut short; it is retried",
                self.url_of(&key),
                stored.map_or("an unknown number of".to_owned(), |n| n.to_string())
            ));
        }
        Ok(Uploaded { key, bytes })
    }

    /// Every object directly under the prefix (none of its "subfolders").
    pub async fn list(&self) -> Result<Vec<RemoteObject>, String> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            action.with_delimiter("/");
            if !self.prefix.is_empty() {
                action.with_prefix(self.prefix.as_str());
            }
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(SIGNED_FOR);
            let res = self
                .send("listing the bucket", &self.prefix, self.client.get(url))
                .await?;
            let text = res
                .text()
                .await
                .map_err(|e| self.unreachable("listing the bucket", &e))?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text).map_err(|e| {
                format!(
                    "the listing of {} is not an S3 ListObjectsV2 answer ({e}); is backup_s3_endpoint an S3 API?",
                    self.location
                )
            })?;
            out.extend(page.contents.into_iter().map(|c| RemoteObject {
                key: c.key,
                bytes: c.size,
            }));
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    pub async fn delete(&self, key: &str) -> Result<(), String> {
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        self.send("deleting an old copy", key, self.client.delete(url))
            .await?;
        Ok(())
    }

    /// Applies the keep rule to the automatic backups under the prefix: keeps the newest
    /// of each of the last `daily` days and of each of the `weekly` weeks before, deletes
    /// the others. Returns the deleted keys. Other objects are never touched.
    pub async fn prune(&self, daily: usize, weekly: usize) -> Result<Vec<String>, String> {
        let mut backups: Vec<(String, chrono::DateTime<chrono::Utc>)> = self
            .list()
            .await?
            .into_iter()
            .filter_map(|o| {
                let name = o.key.strip_prefix(self.prefix.as_str())?;
                let at = crate::ops::backup::taken_at(name)?;
                Some((o.key, at))
            })
            .collect();
        backups.sort_by_key(|b| std::cmp::Reverse(b.1));
        let doomed = crate::ops::backup::to_prune(&backups, daily, weekly);
        for key in &doomed {
            self.delete(key).await?;
        }
        Ok(doomed)
    }

    fn url_of(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.name())
    }

    fn unreachable(&self, what: &str, e: &reqwest::Error) -> String {
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        // The URL in reqwest's message carries the presigned signature: keep it out.
        let chain = strip_urls(&chain);
        format!(
            "{what} to {} failed: cannot reach the S3 endpoint {} ({chain}); check backup_s3_endpoint and that the storage service is up",
            self.location, self.endpoint
        )
    }

    /// Sends a request about `key`; an unreachable endpoint or a non-2xx answer is the
    /// message for `what`.
    async fn send(
        &self,
        what: &str,
        key: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        let res = request
            .send()
            .await
            .map_err(|e| self.unreachable(what, &e))?;
        self.check(what, key, res).await
    }

    /// Turns a non-2xx answer into a message naming S3's error code and what to check.
    async fn check(
        &self,
        what: &str,
        key: &str,
        res: reqwest::Response,
    ) -> Result<reqwest::Response, String> {
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let body = res.text().await.unwrap_or_default();
        let code = xml_field(&body, "Code").unwrap_or_default();
        let message = xml_field(&body, "Message").unwrap_or_default();
        let hint = match code.as_str() {
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidToken"
            | "AuthorizationHeaderMalformed"
            | "InvalidSignature" => {
                "check backup_s3_access_key_id, backup_s3_secret_access_key and backup_s3_region"
            }
            "AccessDenied" => {
                "the credentials lack a permission: they need s3:PutObject, s3:GetObject, s3:ListBucket and s3:DeleteObject on the bucket"
            }
            "NoSuchBucket" => "create the bucket, or fix backup_s3_bucket",
            _ if status.as_u16() == 403 => {
                "the storage refused the credentials: check backup_s3_access_key_id, backup_s3_secret_access_key and backup_s3_region"
            }
            _ if status.is_server_error() => "the storage service failed; it is retried",
            _ => "check backup_s3_endpoint, backup_s3_bucket and backup_s3_region",
        };
        let detail = match (code.is_empty(), message.is_empty()) {
            (true, _) => String::new(),
            (false, true) => format!(" {code}"),
            (false, false) => format!(" {code} ({message})"),
        };
        Err(format!(
            "{what} of {} failed: the storage answered {status}{detail}; {hint}",
            self.url_of(key)
        ))
    }
}

/// The text of the first `<name>…</name>` in an S3 XML answer.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    let text = xml[start..start + len].trim();
    // Bounded: an answer is shown to a person, not stored whole.
    Some(text.chars().take(300).collect())
}

/// Replaces every `http(s)://…` in `text` with `(url)`: a presigned URL carries its
/// signature and the access key id in the query.
fn strip_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("http") {
        let tail = &rest[i..];
        if tail.starts_with("http://") || tail.starts_with("https://") {
            out.push_str(&rest[..i]);
            let end = tail
                .find(|c: char| c.is_whitespace() || c == ')' || c == '"')
                .unwrap_or(tail.len());
            out.push_str("(url)");
            rest = &tail[end..];
        } else {
            out.push_str(&rest[..i + 4]);
            rest = &rest[i + 4..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackupS3 {
        BackupS3 {
            endpoint: reqwest::Url::parse("http://127.0.0.1:9000").unwrap(),
            bucket: "backups".into(),
            region: "us-east-1".into(),
            prefix: "agv/prod/".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI-very-secret".into(),
        }
    }

    #[test]
    fn neither_the_config_nor_the_client_shows_the_secret() {
        let c = cfg();
        let remote = Remote::new(&c).unwrap();
        let shown = format!("{c:?} {remote:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("AKIDEXAMPLE") && shown.contains("s3://backups/agv/prod/"));
    }

    #[test]
    fn keys_go_under_the_prefix_and_urls_are_path_style() {
        let remote = Remote::new(&cfg()).unwrap();
        assert_eq!(
            remote.key_of("agv-backup-20261201T030000Z.tar"),
            "agv/prod/agv-backup-20261201T030000Z.tar"
        );
        let url = remote
            .bucket
            .put_object(Some(&remote.credentials), "agv/prod/x.tar")
            .sign(SIGNED_FOR);
        assert!(
            url.as_str()
                .starts_with("http://127.0.0.1:9000/backups/agv/prod/x.tar?"),
            "{url}"
        );
    }

    #[test]
    fn error_answers_and_urls_are_reduced_to_what_a_person_needs() {
        let xml = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(xml_field(xml, "Code").as_deref(), Some("NoSuchBucket"));
        assert_eq!(xml_field("<a>", "Code"), None);
        let s = strip_urls(
            "error sending request for url (http://h:9/b/k?X-Amz-Signature=abc): refused",
        );
        assert_eq!(s, "error sending request for url ((url)): refused");
        assert_eq!(strip_urls("an httpd said no"), "an httpd said no");
    }
}
