//! The conformance suite against every store that needs no external server.
#![cfg(all(
    feature = "testing",
    feature = "memory-store",
    feature = "file-store",
    feature = "caching-store"
))]

use std::sync::Arc;
use std::time::Duration;

use session_layer::store::{CachingStore, FileStore, MemoryStore};
use session_layer::testing::check_store;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store() {
    check_store(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_store() {
    let dir = tempfile::tempdir().unwrap();
    check_store(Arc::new(FileStore::new(dir.path()).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caching_store_over_memory() {
    check_store(Arc::new(CachingStore::new(MemoryStore::new()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caching_store_over_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = FileStore::new(dir.path()).unwrap();
    check_store(Arc::new(CachingStore::with_cache(
        files,
        1000,
        Duration::from_secs(1),
    )))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dyn_store_behind_an_arc() {
    let store: Arc<dyn session_layer::store::SessionStore> = Arc::new(MemoryStore::new());
    check_store(store).await;
}
