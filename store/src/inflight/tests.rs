use super::*;
use crate::blobs::StoreConfig;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn store(dir: &std::path::Path) -> Arc<BlobStore> {
    BlobStore::open(StoreConfig {
        root: dir.to_path_buf(),
        max_bytes: u64::MAX,
    })
    .unwrap()
}

/// A source that sends `data` in chunks, pausing between them.
async fn slow_source(data: Vec<u8>, opens: Arc<AtomicUsize>) -> Result<ByteStream, FetchFailure> {
    opens.fetch_add(1, Ordering::SeqCst);
    let chunks: Vec<Bytes> = data.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
    let s = futures_util::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok::<_, std::io::Error>(c)
    });
    Ok(Box::pin(s) as ByteStream)
}

async fn collect(r: TailReader) -> Result<Vec<u8>, std::io::Error> {
    let mut s = r.into_stream();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let d = Digest::of(&data);
    let opens = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..8 {
        let r = s
            .fetch_or_join(
                &d,
                data.len() as u64,
                0,
                slow_source(data.clone(), opens.clone()),
            )
            .unwrap();
        handles.push(tokio::spawn(collect(r)));
    }
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap(), data);
    }
    assert_eq!(opens.load(Ordering::SeqCst), 1);
    // Now stored: a new reader does not open the source, and can start mid-blob.
    let r = s
        .fetch_or_join(
            &d,
            data.len() as u64,
            1000,
            slow_source(data.clone(), opens.clone()),
        )
        .unwrap();
    assert_eq!(collect(r).await.unwrap(), &data[1000..]);
    assert_eq!(opens.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn wrong_bytes_are_never_stored_or_served_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let good = vec![7u8; 300_000];
    let mut bad = good.clone();
    bad[299_999] = 8; // the last byte differs: only the final check can see it
    let d = Digest::of(&good);
    let opens = Arc::new(AtomicUsize::new(0));
    let mut r = s
        .fetch_or_join(&d, good.len() as u64, 0, slow_source(bad, opens.clone()))
        .unwrap();
    r.started().await.unwrap();
    let mut stream = r.into_stream();
    let mut got = 0usize;
    let mut err = None;
    while let Some(c) = stream.next().await {
        match c {
            Ok(b) => got += b.len(),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert!(err.unwrap().to_string().contains("DigestMismatch"));
    assert!(got < good.len(), "a complete unverified blob was streamed");
    assert!(s.meta(&d).unwrap().is_none());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    // The source is fixed: the next fetch succeeds.
    let r = s
        .fetch_or_join(
            &d,
            good.len() as u64,
            0,
            slow_source(good.clone(), opens.clone()),
        )
        .unwrap();
    assert_eq!(collect(r).await.unwrap(), good);
    // Keeping the blob happens just after its readers were released.
    for _ in 0..200 {
        if s.meta(&d).unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(s.meta(&d).unwrap().is_some());
}

#[tokio::test]
async fn size_overrun_and_source_errors_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let data = vec![1u8; 1000];
    let d = Digest::of(&data);
    let opens = Arc::new(AtomicUsize::new(0));
    let r = s
        .fetch_or_join(&d, 10, 0, slow_source(data.clone(), opens.clone()))
        .unwrap();
    assert!(collect(r).await.is_err());
    let mut r = s
        .fetch_or_join(&d, 1000, 0, async {
            Err(FetchFailure::new(
                FetchFailureKind::NotFound,
                "no such blob",
            ))
        })
        .unwrap();
    assert_eq!(
        r.started().await.unwrap_err().kind,
        FetchFailureKind::NotFound
    );
    assert!(s.meta(&d).unwrap().is_none());
}
