//! One region's backup store, through `object_store`: a local directory (`file://`), memory
//! (`memory://`, tests in this process), or an S3-compatible, GCS or Azure bucket (`s3://`,
//! `gs://`, `az://`; credentials from the usual `AWS_*`, `GOOGLE_*`, `AZURE_*` variables).
//!
//! # Layout, under the URL's path
//! ```text
//! images/<cluster>/<backup>.img          the backup image
//! manifests/<cluster>/<backup>.json      its manifest: written last, so listed means whole
//! schedule/<cluster>/<slot start>        a scheduler's claim of one interval (create-only)
//! retention/<cluster>.json               the cluster's retention setting
//! ```
//! A backup is listed when its manifest exists. The image is written first (in parts, as a
//! multipart upload where the store has one), then the manifest with a create-only write: a
//! crash before the manifest leaves an unlisted image and nothing listed; a deletion removes
//! the manifest first, so a failure half way leaves an unlisted image, never a listing
//! without its image.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// The size of one part of an image upload (S3's smallest part is 5 MiB).
const PART: usize = 8 << 20;

/// What a store operation can fail with: a message naming the store and the path.
pub type StoreResult<T> = Result<T, String>;

/// One region's backup store.
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    /// The region's name.
    pub region: String,
    rt: Arc<tokio::runtime::Runtime>,
    /// The store lists in name order (object stores do; a local directory does not).
    ordered: bool,
}

/// How a create-only write ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    /// Written.
    Done,
    /// Something was there already: nothing written.
    Exists,
}

/// The store's options from the environment: every `AWS_*`, `GOOGLE_*` and `AZURE_*` variable,
/// as object_store's builders name their settings.
fn env_options() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

impl Store {
    /// The store at `url` (a plain path is a local directory, made if missing), in `region`.
    pub fn open(url: &str, region: &str, rt: Arc<tokio::runtime::Runtime>) -> StoreResult<Store> {
        let parsed = match url::Url::parse(url) {
            Ok(u) => u,
            Err(_) => {
                let dir =
                    std::path::absolute(url).map_err(|e| format!("backup store {url}: {e}"))?;
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                url::Url::from_directory_path(&dir)
                    .map_err(|()| format!("backup store {url}: not a usable directory"))?
            }
        };
        if parsed.scheme() == "file" {
            if let Ok(dir) = parsed.to_file_path() {
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
        }
        let ordered = parsed.scheme() != "file";
        let (inner, root) = object_store::parse_url_opts(&parsed, env_options())
            .map_err(|e| format!("backup store {url}: {e}"))?;
        Ok(Store {
            inner: Arc::from(inner),
            root,
            url: url.to_string(),
            region: region.to_string(),
            rt,
            ordered,
        })
    }

    /// The store's URL, as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &str) -> Path {
        let mut p = self.root.clone();
        for part in rel.split('/') {
            p = p.clone().join(part);
        }
        p
    }

    fn err(&self, rel: &str, e: object_store::Error) -> String {
        format!("backup store {} ({}): {rel}: {e}", self.url, self.region)
    }

    /// Write `bytes` at `rel` unless something is there already.
    pub fn create(&self, rel: &str, bytes: Vec<u8>) -> StoreResult<Created> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let path = self.path(rel);
        match self
            .rt
            .block_on(self.inner.put_opts(&path, PutPayload::from(bytes), opts))
        {
            Ok(_) => Ok(Created::Done),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::Exists),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Write `bytes` at `rel`, replacing what is there.
    pub fn put(&self, rel: &str, bytes: Vec<u8>) -> StoreResult<()> {
        self.rt
            .block_on(self.inner.put(&self.path(rel), PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.err(rel, e))
    }

    /// Write `bytes` at `rel` as a multipart upload in parts of 8 MiB; `after_part` is called
    /// after each part is stored (the crash points of the tests).
    pub fn put_parts(
        &self,
        rel: &str,
        bytes: &[u8],
        after_part: &dyn Fn(usize),
    ) -> StoreResult<()> {
        let path = self.path(rel);
        self.rt.block_on(async {
            let mut up = self
                .inner
                .put_multipart(&path)
                .await
                .map_err(|e| self.err(rel, e))?;
            let parts: Vec<&[u8]> = if bytes.is_empty() {
                vec![&[][..]]
            } else {
                bytes.chunks(PART).collect()
            };
            for (i, part) in parts.into_iter().enumerate() {
                let r = up
                    .put_part(PutPayload::from(Bytes::copy_from_slice(part)))
                    .await;
                if let Err(e) = r {
                    let _ = up.abort().await;
                    return Err(self.err(rel, e));
                }
                after_part(i);
            }
            up.complete()
                .await
                .map(|_| ())
                .map_err(|e| self.err(rel, e))
        })
    }

    /// The bytes at `rel` (`None` when there is nothing there).
    pub fn get(&self, rel: &str) -> StoreResult<Option<Vec<u8>>> {
        let path = self.path(rel);
        self.rt.block_on(async {
            match self.inner.get(&path).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map(|b| Some(b.to_vec()))
                    .map_err(|e| self.err(rel, e)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err(rel, e)),
            }
        })
    }

    /// Remove what is at `rel` (absent is not an error).
    pub fn delete(&self, rel: &str) -> StoreResult<()> {
        match self.rt.block_on(self.inner.delete(&self.path(rel))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Up to `limit` names (relative to `prefix`, a folder such as `manifests/<cluster>`) that
    /// sort after `after` (`None`: from the start), in name order: one page of a listing.
    pub fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let dir = self.path(prefix);
        let offset = after.map(|a| self.path(&format!("{prefix}/{a}")));
        self.rt.block_on(async {
            let mut stream = match &offset {
                Some(o) => self.inner.list_with_offset(Some(&dir), o),
                None => self.inner.list(Some(&dir)),
            };
            let mut names = Vec::new();
            while let Some(item) = stream.next().await {
                let meta = item.map_err(|e| self.err(prefix, e))?;
                let Some(name) = meta.location.prefix_match(&dir).map(|parts| {
                    parts
                        .map(|p| p.as_ref().to_string())
                        .collect::<Vec<_>>()
                        .join("/")
                }) else {
                    continue;
                };
                names.push(name);
                // An object store lists in name order, a page of its own at a time: stop
                // reading once this page is full.
                if self.ordered && names.len() >= limit {
                    break;
                }
            }
            // A local directory lists in no order: sort, and keep the page.
            names.sort();
            names.retain(|n| after.is_none_or(|a| n.as_str() > a));
            names.truncate(limit);
            Ok(names)
        })
    }

    /// Every name under `prefix`, read a page of `page` at a time.
    pub fn list_all(&self, prefix: &str, page: usize) -> StoreResult<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        loop {
            let next = self.list_page(prefix, out.last().map(String::as_str), page.max(1))?;
            let done = next.len() < page.max(1);
            out.extend(next);
            if done {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> Arc<tokio::runtime::Runtime> {
        Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        )
    }

    /// Pages follow each other without gap or overlap, in an ordered store (memory) and in a
    /// directory; create-only writes refuse a second writer.
    #[test]
    fn pages_cover_every_name_once_and_creates_do_not_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        for url in [
            "memory:///".to_string(),
            format!("file://{}", dir.path().display()),
        ] {
            let s = Store::open(&url, "r", rt()).unwrap();
            let names: Vec<String> = (0..7).rev().map(|i| format!("b{i}.json")).collect();
            for n in &names {
                assert_eq!(
                    s.create(&format!("m/c/{n}"), vec![1]).unwrap(),
                    Created::Done
                );
            }
            s.put("m/other.json", vec![2]).unwrap();
            assert_eq!(s.create("m/c/b3.json", vec![9]).unwrap(), Created::Exists);
            assert_eq!(s.get("m/c/b3.json").unwrap(), Some(vec![1]));
            let p1 = s.list_page("m/c", None, 3).unwrap();
            let p2 = s
                .list_page("m/c", p1.last().map(String::as_str), 3)
                .unwrap();
            let p3 = s
                .list_page("m/c", p2.last().map(String::as_str), 3)
                .unwrap();
            assert_eq!(p1, ["b0.json", "b1.json", "b2.json"], "{url}");
            assert_eq!(p2, ["b3.json", "b4.json", "b5.json"], "{url}");
            assert_eq!(p3, ["b6.json"], "{url}");
            assert_eq!(s.list_all("m/c", 2).unwrap().len(), 7, "{url}");
            s.delete("m/c/b0.json").unwrap();
            s.delete("m/c/b0.json").unwrap();
            assert_eq!(s.get("m/c/b0.json").unwrap(), None);
        }
    }
}
