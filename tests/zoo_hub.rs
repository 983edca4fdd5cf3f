//! Remote weight sources against a loopback HTTP server that this test starts:
//! the Hugging Face resolve protocol (through hf-hub) and plain URLs, their
//! caches, offline mode, hash checks, and a recipe naming
//! `hf:timm/resnet18.a1_in1k` run end to end by the `tlab` binary.
#![cfg(feature = "hub")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use sha2::Digest;
use tlab::formats::weights::hub::{self, FetchOptions};
use tlab::models::layers::ParamLoader;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `files` (URL path → bytes) the way the Hub does: Range requests,
/// `ETag`, `X-Repo-Commit`, `Content-Range`; counts requests per path.
struct Server {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    fn start(files: HashMap<String, Vec<u8>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let files = Arc::new(files);
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (files, counter) = (files.clone(), counter.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &files, &counter);
                });
            }
        });
        Server { base, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn serve(
    stream: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    hits: &Mutex<HashMap<String, usize>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let target = request.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let mut range_start = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                // "bytes=N-" or "bytes=N-M"
                let spec = v.trim().trim_start_matches("bytes=");
                let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
                range_start = Some((a.parse::<usize>().unwrap_or(0), b.parse::<usize>().ok()));
            }
        }
    }
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let mut out = stream;
    let Some(body) = files.get(&path) else {
        return out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let etag = format!("{:x}", sha2::Sha256::digest(body));
    let (status, slice, range) = match range_start {
        Some((a, b)) => {
            let end = b.unwrap_or(body.len() - 1).min(body.len() - 1);
            ("206 Partial Content", &body[a..=end], format!("Content-Range: bytes {a}-{end}/{}\r\n", body.len()))
        }
        None => ("200 OK", &body[..], String::new()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\n{range}Accept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        slice.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(slice)?;
    out.flush()
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tlab-hub-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn options(server: &Server, dir: &Path) -> FetchOptions {
    FetchOptions {
        hf_endpoint: server.base.clone(),
        hf_cache: dir.join("hf/hub"),
        hf_token: None,
        offline: false,
        url_cache: dir.join("tlab"),
    }
}

const REPO_FILE: &str = "/timm/resnet18.a1_in1k/resolve/main/model.safetensors";

#[test]
fn hub_files_download_once_then_come_from_the_cache() {
    let dir = tempdir("hf");
    let bytes = checkpoint("resnet18", &dir);
    let server = Server::start(HashMap::from([(REPO_FILE.to_owned(), bytes.clone())]));
    let opts = options(&server, &dir);

    let path = hub::hub_file("timm/resnet18.a1_in1k", "model.safetensors", &opts).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(path.starts_with(dir.join("hf/hub/models--timm--resnet18.a1_in1k")), "{}", path.display());
    let first = server.hits(REPO_FILE);
    assert!(first >= 1);

    // Cached: no request, online or offline.
    assert_eq!(hub::hub_file("timm/resnet18.a1_in1k", "model.safetensors", &opts).unwrap(), path);
    let offline = FetchOptions { offline: true, ..opts.clone() };
    assert_eq!(hub::hub_file("timm/resnet18.a1_in1k", "model.safetensors", &offline).unwrap(), path);
    assert_eq!(server.hits(REPO_FILE), first);

    // It loads as a backbone.
    let tensors = tlab::formats::weights::load(&path).unwrap();
    let mut p = ParamLoader::from_tensors("hub", tensors);
    tlab::models::build_backbone("resnet18", &mut p, true).unwrap();
    p.finish(true, None).unwrap();

    // Offline and not cached: a clear error, no request.
    let err = hub::hub_file("timm/resnet50.a1_in1k", "model.safetensors", &offline).unwrap_err().to_string();
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains("hf:timm/resnet50.a1_in1k"), "{err}");
    // Online and missing on the server: says so.
    let err = hub::hub_file("timm/nope", "model.safetensors", &opts).unwrap_err().to_string();
    assert!(err.contains("not found"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn urls_download_atomically_once_and_check_sha256_prefixes() {
    let dir = tempdir("url");
    let body = b"not really weights, but bytes to cache".to_vec();
    let digest = format!("{:x}", sha2::Sha256::digest(&body));
    let good = format!("/w/model-{}.pth", &digest[..8]);
    let files = HashMap::from([
        (good.clone(), body.clone()),
        ("/w/model-deadbeef.pth".to_owned(), body.clone()),
        ("/w/plain.safetensors".to_owned(), body.clone()),
    ]);
    let server = Server::start(files);
    let opts = options(&server, &dir);

    let url = format!("{}{good}", server.base);
    let path = hub::url_file(&url, &opts).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(path.starts_with(&opts.url_cache));
    assert_eq!(hub::url_file(&url, &opts).unwrap(), path);
    assert_eq!(server.hits(&good), 1, "the second call must come from the cache");

    let url = format!("{}/w/plain.safetensors?download=true", server.base);
    assert!(hub::url_file(&url, &opts).unwrap().ends_with("plain.safetensors"));

    // A name whose hash prefix does not match: error, and nothing left behind.
    let url = format!("{}/w/model-deadbeef.pth", server.base);
    let err = hub::url_file(&url, &opts).unwrap_err().to_string();
    assert!(err.contains("does not start with deadbeef"), "{err}");
    // Nothing was cached, so a retry downloads (and fails) again.
    assert!(hub::url_file(&url, &opts).is_err());
    assert_eq!(server.hits("/w/model-deadbeef.pth"), 2);
    let leftovers: Vec<_> =
        walk(&opts.url_cache).into_iter().filter(|p| p.to_string_lossy().contains("deadbeef")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let err = hub::url_file(&format!("{}/w/missing.pth", server.base), &opts).unwrap_err().to_string();
    assert!(err.contains("HTTP 404"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A checkpoint of `arch` with random weights under the names tlab builds it
/// with, its ImageNet classifier included (timm's names for ResNet, DeiT).
fn checkpoint(arch: &str, dir: &Path) -> Vec<u8> {
    let backbone = tlab::models::build_backbone(arch, &mut ParamLoader::random(5), true).unwrap();
    let mut vars = Vec::new();
    backbone.named_vars(&mut vars);
    let mut tensors: Vec<_> = vars.into_iter().map(|(n, v)| (n, v.as_detached_tensor())).collect();
    let mut fc = Vec::new();
    backbone.imagenet_classifier().unwrap().named_vars(&mut fc);
    tensors.extend(fc.into_iter().map(|(n, v)| (n, v.as_detached_tensor())));
    let path = dir.join(format!("{arch}.safetensors"));
    tlab::formats::weights::save_safetensors(&tensors, candle_core::DType::F32, &path).unwrap();
    std::fs::read(path).unwrap()
}

/// `tlab run` on a recipe whose backbone is `arch` from `hf:{repo}`, served by
/// a loopback Hub; then offline from the cache, without a request.
fn run_through_the_loopback_hub(arch: &str, repo: &str, size: u32) {
    let dir = tempdir(arch);
    let bytes = checkpoint(arch, &dir);
    let file = format!("/{repo}/resolve/main/model.safetensors");
    let server = Server::start(HashMap::from([(file.clone(), bytes)]));
    for (split, n) in [("train", 4), ("valid", 2)] {
        for (c, name) in ["dark", "light"].iter().enumerate() {
            let d = dir.join("data").join(split).join(name);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                let v = (c * 200 + i * 10) as u8;
                image::RgbImage::from_pixel(24, 24, image::Rgb([v, v, v])).save(d.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    let recipe = format!(
        "name = \"hub\"\n[data]\ntrain = \"data/train\"\nvalid = \"data/valid\"\nimage_size = {size}\nbatch_size = 4\n\
         [[step]]\nkind = \"backbone\"\narch = \"{arch}\"\nweights = \"hf:{repo}\"\n\
         [[step]]\nkind = \"freeze\"\n[[step]]\nkind = \"fine_tune\"\nepochs = 1\n[[step]]\nkind = \"evaluate\"\n"
    );
    std::fs::write(dir.join("hub.toml"), recipe).unwrap();
    let run = |offline: bool| {
        Command::new(env!("CARGO_BIN_EXE_tlab"))
            .arg("run")
            .arg(dir.join("hub.toml"))
            .arg("--out")
            .arg(dir.join(if offline { "run-offline" } else { "run" }))
            .env("HF_ENDPOINT", &server.base)
            .env("HF_HOME", dir.join("hf"))
            .env("HF_HUB_OFFLINE", if offline { "1" } else { "0" })
            .env_remove("HF_TOKEN")
            .output()
            .unwrap()
    };
    let out = run(false);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("hf:{repo}")), "{text}");
    assert!(dir.join("run/metrics.json").is_file());
    let hits = server.hits(&file);
    // Offline, the cached file serves the same recipe without a request.
    let out = run(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.hits(&file), hits);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn recipe_with_hf_weights_runs_through_the_loopback_hub() {
    run_through_the_loopback_hub("resnet18", "timm/resnet18.a1_in1k", 32);
}

#[test]
fn a_timm_vision_transformer_runs_from_the_loopback_hub() {
    // recipes/deit-small.toml's source, at 32 px (its 14 × 14 position
    // embedding resampled to 2 × 2).
    run_through_the_loopback_hub("deit_small_patch16_224", "timm/deit_small_patch16_224.fb_in1k", 32);
}
