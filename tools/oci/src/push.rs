//! Pushing with the registry HTTP API (OCI distribution spec): each blob by
//! monolithic upload, then the manifest under the tag.

use reqwest::blocking::Client;
use reqwest::header::{CONTENT_TYPE, LOCATION};

use crate::image::{Blob, Image, MANIFEST_TYPE};

/// `host:port/repo/path:tag` → (base URL, repository, tag).
pub fn parse_reference(reference: &str) -> Result<(String, String, String), String> {
    let (registry, rest) = reference.split_once('/').ok_or("expected host:port/repository:tag")?;
    let (repo, tag) = rest.rsplit_once(':').unwrap_or((rest, "latest"));
    let loopback = registry.starts_with("127.") || registry.starts_with("localhost") || registry.starts_with("[::1]");
    let scheme = if loopback { "http" } else { "https" };
    Ok((format!("{scheme}://{registry}"), repo.to_owned(), tag.to_owned()))
}

/// Pushes `image`; returns the registry's `Docker-Content-Digest`.
pub fn push(image: &Image, reference: &str) -> Result<String, String> {
    let (base, repo, tag) = parse_reference(reference)?;
    let client = Client::new();
    for blob in [&image.layer, &image.config] {
        upload(&client, &base, &repo, blob)?;
    }
    let resp = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header(CONTENT_TYPE, MANIFEST_TYPE)
        .body(image.manifest.bytes.clone())
        .send()
        .map_err(|e| format!("manifest: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("manifest: {} {}", resp.status(), resp.text().unwrap_or_default()));
    }
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| "registry sent no Docker-Content-Digest".to_owned())
}

fn upload(client: &Client, base: &str, repo: &str, blob: &Blob) -> Result<(), String> {
    let start =
        client.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().map_err(|e| format!("upload start: {e}"))?;
    if start.status().as_u16() != 202 {
        return Err(format!("upload start: {}", start.status()));
    }
    let location = start.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or("upload start: no Location")?;
    let url = if location.starts_with("http") { location.to_owned() } else { format!("{base}{location}") };
    let sep = if url.contains('?') { '&' } else { '?' };
    let done = client
        .put(format!("{url}{sep}digest={}", blob.digest))
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(blob.bytes.clone())
        .send()
        .map_err(|e| format!("upload {}: {e}", blob.digest))?;
    if done.status().as_u16() != 201 {
        return Err(format!("upload {}: {}", blob.digest, done.status()));
    }
    Ok(())
}
