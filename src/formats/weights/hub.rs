//! Remote weights: `hf:ORG/REPO[:FILE]` from the Hugging Face Hub and plain
//! `http(s)://` URLs, each fetched once into a cache and read from there.
//!
//! * Hub files go through the `hf-hub` crate's blocking client, into the
//!   standard Hugging Face cache (`$HF_HOME/hub`, default
//!   `~/.cache/huggingface/hub`), so files that `huggingface_hub` (Python)
//!   downloaded are reused, and the other way round. `HF_ENDPOINT` selects a
//!   mirror, `HF_TOKEN` (or the cached `huggingface-cli login` token)
//!   authenticates, and `HF_HUB_OFFLINE=1` never touches the network: the
//!   file comes from the cache or the step fails, saying so.
//! * URLs are cached under `$TLAB_CACHE` (default `~/.cache/tlab/weights`),
//!   one folder per URL. A download goes to a temporary file that is renamed
//!   into place only when complete and verified, so an interrupted download
//!   never leaves a file that looks finished. Names carrying a sha256 prefix
//!   the torchvision way (`resnet18-f37072fd.pth`) are checked against it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::recipe::WeightsSource;

/// The file a Hub reference names when it names none.
pub(crate) const DEFAULT_HUB_FILE: &str = "model.safetensors";

/// Where and how to fetch. [`FetchOptions::from_env`] reads the usual
/// variables; tests build one explicitly (environment variables are shared
/// by every thread of a test binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// Hub endpoint, `https://huggingface.co` unless `HF_ENDPOINT` says otherwise.
    pub hf_endpoint: String,
    /// The Hugging Face cache (`…/hub`).
    pub hf_cache: PathBuf,
    pub hf_token: Option<String>,
    /// Use only cached Hub files (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// tlab's cache for URL downloads.
    pub url_cache: PathBuf,
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

impl FetchOptions {
    pub fn from_env() -> Self {
        let hf_cache = match std::env::var_os("HF_HOME") {
            Some(h) => PathBuf::from(h).join("hub"),
            None => home().join(".cache/huggingface/hub"),
        };
        let file_token = std::fs::read_to_string(hf_cache.parent().unwrap_or(&hf_cache).join("token"))
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        FetchOptions {
            hf_endpoint: std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "https://huggingface.co".into()),
            hf_token: std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or(file_token),
            hf_cache,
            offline: env_flag("HF_HUB_OFFLINE"),
            url_cache: std::env::var_os("TLAB_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| home().join(".cache/tlab/weights")),
        }
    }
}

/// The local file for a weights source, fetching it first when needed.
pub fn resolve(source: &WeightsSource, opts: &FetchOptions) -> Result<PathBuf> {
    match source {
        WeightsSource::Path(p) => Ok(p.clone()),
        WeightsSource::Hub { repo, file } => hub_file(repo, file.as_deref().unwrap_or(DEFAULT_HUB_FILE), opts),
        WeightsSource::Url(url) => url_file(url, opts),
    }
}

fn fetch_error(what: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Download { source_name: what.into(), message: message.into() }
}

/// `FILE` of Hub model repository `repo` (revision `main`), from the cache or
/// downloaded into it.
pub fn hub_file(repo: &str, file: &str, opts: &FetchOptions) -> Result<PathBuf> {
    let what = format!("hf:{repo}:{file}");
    let cache = hf_hub::Cache::new(opts.hf_cache.clone());
    if let Some(path) = cache.model(repo.to_owned()).get(file) {
        return Ok(path);
    }
    if opts.offline {
        return Err(fetch_error(
            what,
            format!(
                "HF_HUB_OFFLINE is set and the file is not in the Hugging Face cache ({}); run once online or unset HF_HUB_OFFLINE",
                opts.hf_cache.display()
            ),
        ));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .with_endpoint(opts.hf_endpoint.clone())
        .with_token(opts.hf_token.clone())
        .with_progress(false)
        .build()
        .map_err(|e| fetch_error(&what, format!("cannot start the Hub client: {e}")))?;
    api.model(repo.to_owned()).download(file).map_err(|e| fetch_error(&what, hub_error_message(&e, &opts.hf_endpoint)))
}

/// Turns the Hub client's errors into advice.
fn hub_error_message(e: &hf_hub::api::sync::ApiError, endpoint: &str) -> String {
    use hf_hub::api::sync::ApiError;
    match e {
        ApiError::RequestError(err) => match err.as_ref() {
            ureq::Error::Status(404, _) => {
                format!("not found on {endpoint}: check the repository and file name (`hf:ORG/REPO:FILE`)")
            }
            ureq::Error::Status(401 | 403, _) => {
                format!("{endpoint} refused access: the repository is private or gated; set HF_TOKEN")
            }
            ureq::Error::Status(code, _) => format!("{endpoint} answered HTTP {code}"),
            ureq::Error::Transport(t) => {
                format!("cannot reach {endpoint}: {t} (set HF_HUB_OFFLINE=1 to use only cached files)")
            }
        },
        other => other.to_string(),
    }
}

/// Hex sha256 prefix in a torchvision-style name (`resnet18-f37072fd.pth`):
/// the part after the last `-` of the stem, if it is 8 or more hex digits.
pub(crate) fn sha256_prefix(file_name: &str) -> Option<&str> {
    let stem = file_name.split('.').next()?;
    let (_, tail) = stem.rsplit_once('-')?;
    (tail.len() >= 8 && tail.len() <= 64 && tail.chars().all(|c| c.is_ascii_hexdigit())).then_some(tail)
}

/// The file name a URL names: its last path segment without query or fragment.
fn url_file_name(url: &str) -> Option<&str> {
    let path = url.split(['?', '#']).next()?;
    let after_scheme = path.split_once("://").map_or(path, |(_, r)| r);
    let (_, segment) = after_scheme.split_once('/')?;
    let name = segment.rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a remote source lives in its cache, and whether it is there yet,
/// without touching the network (`tlab check`). `None` for a local path.
pub fn cached(source: &WeightsSource, opts: &FetchOptions) -> Option<(PathBuf, bool)> {
    match source {
        WeightsSource::Path(_) => None,
        WeightsSource::Hub { repo, file } => {
            let file = file.as_deref().unwrap_or(DEFAULT_HUB_FILE);
            let cache = hf_hub::Cache::new(opts.hf_cache.clone());
            Some(match cache.model(repo.to_owned()).get(file) {
                Some(path) => (path, true),
                None => (opts.hf_cache.clone(), false),
            })
        }
        WeightsSource::Url(url) => {
            let target = url_cache_path(url, opts).ok()?;
            let there = target.is_file();
            Some((target, there))
        }
    }
}

/// The cache file of `url`: one folder per URL, so the same file name from
/// two places never collides.
fn url_cache_path(url: &str, opts: &FetchOptions) -> Result<PathBuf> {
    let name = url_file_name(url).ok_or_else(|| {
        fetch_error(url, "the URL names no file (it must end in a file name, like …/model.safetensors)")
    })?;
    Ok(opts.url_cache.join(&hex(&Sha256::digest(url.as_bytes()))[..16]).join(name))
}

/// The cached copy of `url`, downloaded first if needed.
pub fn url_file(url: &str, opts: &FetchOptions) -> Result<PathBuf> {
    let target = url_cache_path(url, opts)?;
    if target.is_file() {
        return Ok(target);
    }
    let dir = target.parent().unwrap_or(&opts.url_cache).to_path_buf();
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    let name = name.as_str();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = dir.join(format!(".{name}.{}.part", std::process::id()));
    let result = download(url, &tmp).and_then(|digest| {
        if let Some(prefix) = sha256_prefix(name) {
            if !digest.starts_with(&prefix.to_ascii_lowercase()) {
                return Err(fetch_error(
                    url,
                    format!(
                        "sha256 {digest} does not start with {prefix}, as the file name says: corrupt or wrong file"
                    ),
                ));
            }
        }
        std::fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| target)
}

/// Streams `url` into `path` (fsynced) and returns the content's sha256.
fn download(url: &str, path: &Path) -> Result<String> {
    let agent = ureq::AgentBuilder::new().try_proxy_from_env(true).build();
    let response = agent.get(url).call().map_err(|e| {
        fetch_error(
            url,
            match e {
                ureq::Error::Status(code, _) => format!("HTTP {code}"),
                ureq::Error::Transport(t) => format!("download failed: {t}"),
            },
        )
    })?;
    let mut reader = response.into_reader();
    let mut file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| fetch_error(url, format!("download interrupted: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| Error::io(path, e))?;
    }
    file.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_prefixes_in_torchvision_names() {
        assert_eq!(sha256_prefix("resnet18-f37072fd.pth"), Some("f37072fd"));
        assert_eq!(sha256_prefix("mobilenet_v2-b0353104.pth"), Some("b0353104"));
        assert_eq!(sha256_prefix("efficientnet-lite0-57934424.pth"), Some("57934424"));
        assert_eq!(sha256_prefix("model.safetensors"), None);
        assert_eq!(sha256_prefix("vgg16-397923af.pth"), Some("397923af"));
        assert_eq!(sha256_prefix("my-model.pth"), None);
        assert_eq!(sha256_prefix("x-abc.pth"), None, "too short to be a hash");
    }

    #[test]
    fn url_file_names() {
        assert_eq!(url_file_name("https://h.org/a/b/w.pth?download=1"), Some("w.pth"));
        assert_eq!(url_file_name("https://h.org/w.safetensors#x"), Some("w.safetensors"));
        assert_eq!(url_file_name("https://h.org/"), None);
        assert_eq!(url_file_name("https://h.org"), None);
        assert_eq!(url_file_name("https://h.org/a/.."), None);
    }
}
