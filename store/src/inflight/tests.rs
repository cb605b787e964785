use super::*;
use crate::blobs::StoreConfig;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn reg(name: &str) -> RegistryHost {
    name.parse().unwrap()
}

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
                &reg("r.example"),
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
            &reg("r.example"),
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
        .fetch_or_join(
            &reg("r.example"),
            &d,
            good.len() as u64,
            0,
            slow_source(bad, opens.clone()),
        )
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
            &reg("r.example"),
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
        .fetch_or_join(
            &reg("r.example"),
            &d,
            10,
            0,
            slow_source(data.clone(), opens.clone()),
        )
        .unwrap();
    assert!(collect(r).await.is_err());
    let mut r = s
        .fetch_or_join(&reg("r.example"), &d, 1000, 0, async {
            Err::<ByteStream, _>(FetchFailure::new(
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

/// A source the test feeds chunk by chunk; it stalls while the sender is
/// held and ends when it is dropped.
fn fed_source() -> (
    tokio::sync::mpsc::UnboundedSender<Bytes>,
    impl std::future::Future<Output = Result<ByteStream, FetchFailure>> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let open = async move {
        let s = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|c| (Ok::<_, std::io::Error>(c), rx))
        });
        Ok(Box::pin(s) as ByteStream)
    };
    (tx, open)
}

/// Everything a stream yields within `wait`: the bytes, and how it ended
/// (`None` while it is still open).
async fn drain_for(
    s: &mut ByteStream,
    wait: Duration,
    out: &mut Vec<u8>,
) -> Option<Result<(), std::io::Error>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Err(_) => return None,
            Ok(None) => return Some(Ok(())),
            Ok(Some(Ok(b))) => out.extend_from_slice(&b),
            Ok(Some(Err(e))) => return Some(Err(e)),
        }
    }
}

#[tokio::test]
async fn an_idle_source_fails_its_readers_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.set_source_idle_timeout(Duration::from_millis(300));
    let data = vec![3u8; 100_000];
    let d = Digest::of(&data);
    let (tx, open) = fed_source();
    tx.send(Bytes::copy_from_slice(&data[..1000])).unwrap();
    let started = std::time::Instant::now();
    let mut r = s
        .fetch_or_join(&reg("hostile.example"), &d, data.len() as u64, 0, open)
        .unwrap();
    r.started().await.unwrap();
    let joined = s
        .fetch_or_join(&reg("hostile.example"), &d, data.len() as u64, 0, async {
            Err::<ByteStream, _>(FetchFailure::new(
                FetchFailureKind::Io,
                "never opened: joined",
            ))
        })
        .unwrap();
    // The sender is held: the source is open and silent.
    for reader in [r, joined] {
        let e = tokio::time::timeout(Duration::from_secs(5), collect(reader))
            .await
            .expect("a reader hung on a silent source")
            .unwrap_err()
            .to_string();
        assert!(e.contains("idle timeout"), "{e}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "readers waited {:?} on a silent source",
        started.elapsed()
    );
    drop(tx);
    assert!(s.meta(&d).unwrap().is_none());

    // A source that never even answers fails its readers the same way.
    let mut r = s
        .fetch_or_join(&reg("hostile.example"), &d, data.len() as u64, 0, async {
            std::future::pending::<Result<ByteStream, FetchFailure>>().await
        })
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), r.started())
        .await
        .expect("a reader hung on a source that never answered")
        .unwrap_err();
    assert_eq!(e.kind, FetchFailureKind::Unavailable);
    assert!(e.message.contains("idle timeout"), "{}", e.message);
}

#[tokio::test]
async fn a_slow_open_is_allowed_its_own_bound_but_not_a_silent_stream() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.set_source_idle_timeout(Duration::from_millis(200));
    s.set_source_open_timeout(Duration::from_secs(5));
    let data = vec![5u8; 50_000];
    let d = Digest::of(&data);
    // Opens after three idle periods (a swarm peer waiting for the gateway
    // to have a cold blob ready), then streams: the fetch succeeds.
    let body = data.clone();
    let r = s
        .fetch_or_join(&reg("gw.example"), &d, data.len() as u64, 0, async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let chunk = Ok::<_, std::io::Error>(Bytes::from(body));
            Ok(Box::pin(futures_util::stream::iter([chunk])) as ByteStream)
        })
        .unwrap();
    assert_eq!(collect(r).await.unwrap(), data);
    // Without the longer open bound the same source would have failed.
    let s2 = store(&dir.path().join("second"));
    s2.set_source_idle_timeout(Duration::from_millis(200));
    let mut r = s2
        .fetch_or_join(&reg("gw.example"), &d, data.len() as u64, 0, async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            Err::<ByteStream, _>(FetchFailure::new(FetchFailureKind::Io, "late"))
        })
        .unwrap();
    let e = r.started().await.unwrap_err();
    assert!(e.message.contains("idle timeout"), "{}", e.message);
}

#[tokio::test]
async fn the_same_digest_from_two_registries_is_two_fetches() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let d = Digest::of(&data);
    let size = data.len() as u64;
    // The hostile registry sends a little, then stalls (the sender is held).
    let (stall, hostile) = fed_source();
    stall.send(Bytes::copy_from_slice(&data[..10])).unwrap();
    let mut h = s
        .fetch_or_join(&reg("hostile.example"), &d, size, 0, hostile)
        .unwrap();
    h.started().await.unwrap();
    // The honest registry's request starts its own fetch and completes.
    let opens = Arc::new(AtomicUsize::new(0));
    let honest = s
        .fetch_or_join(
            &reg("honest.example"),
            &d,
            size,
            0,
            slow_source(data.clone(), opens.clone()),
        )
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), collect(honest))
        .await
        .expect("the honest registry's request waited on the hostile fetch")
        .unwrap();
    assert_eq!(got, data);
    assert_eq!(
        opens.load(Ordering::SeqCst),
        1,
        "the honest source was opened"
    );
    // Once stored, even the hostile registry's next request reads the
    // verified copy instead of joining its own stalled fetch.
    for _ in 0..200 {
        if s.meta(&d).unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = s
        .fetch_or_join(&reg("hostile.example"), &d, size, 0, async {
            Err::<ByteStream, _>(FetchFailure::new(
                FetchFailureKind::Io,
                "must not be opened",
            ))
        })
        .unwrap();
    assert_eq!(collect(again).await.unwrap(), data);
    // The stalled fetch is still its own, and still has nothing complete.
    let mut stream = h.into_stream();
    let mut early = Vec::new();
    assert!(
        drain_for(&mut stream, Duration::from_millis(100), &mut early)
            .await
            .is_none()
    );
    drop(stall);
}

#[tokio::test]
async fn a_cold_range_is_withheld_until_the_blob_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 241) as u8).collect();
    let d = Digest::of(&data);
    let size = data.len() as u64;
    let end = 10_000u64;
    let (tx, open) = fed_source();
    // More than one write batch: the range's bytes are all on disk.
    tx.send(Bytes::copy_from_slice(&data[..300_000])).unwrap();
    let mut r = s
        .fetch_or_join(&reg("r.example"), &d, size, 0, open)
        .unwrap();
    r.started().await.unwrap();
    let mut body = r.into_stream_until(end);
    let mut got = Vec::new();
    let ended = drain_for(&mut body, Duration::from_millis(300), &mut got).await;
    assert!(
        ended.is_none(),
        "a cold range completed before verification"
    );
    assert_eq!(
        got.len() as u64,
        end - HOLDBACK,
        "the range's tail was not held back"
    );
    // The rest arrives and matches: the range completes, exactly.
    tx.send(Bytes::copy_from_slice(&data[300_000..])).unwrap();
    drop(tx);
    let ended = drain_for(&mut body, Duration::from_secs(10), &mut got).await;
    assert!(matches!(ended, Some(Ok(()))), "{ended:?}");
    assert_eq!(got, &data[..end as usize]);
}

#[tokio::test]
async fn a_cold_range_fails_when_the_blob_does_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let good: Vec<u8> = (0..600_000u32).map(|i| (i % 241) as u8).collect();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1; // only the whole-blob check can see it
    let d = Digest::of(&good);
    let size = good.len() as u64;
    let (tx, open) = fed_source();
    let mut first = s
        .fetch_or_join(&reg("r.example"), &d, size, 0, open)
        .unwrap();
    tx.send(Bytes::copy_from_slice(&bad[..300_000])).unwrap();
    first.started().await.unwrap();
    // A range far from the bad byte, and one shorter than the hold-back,
    // both joined to the fetch still in progress.
    let mut bodies: Vec<(u64, ByteStream)> = [10_000u64, 100]
        .into_iter()
        .map(|end| {
            let r = s
                .fetch_or_join(&reg("r.example"), &d, size, 0, async {
                    Err::<ByteStream, _>(FetchFailure::new(
                        FetchFailureKind::Io,
                        "joined, never opened",
                    ))
                })
                .unwrap();
            (end, r.into_stream_until(end))
        })
        .collect();
    tx.send(Bytes::copy_from_slice(&bad[300_000..])).unwrap();
    drop(tx);
    for (end, body) in &mut bodies {
        let mut got = Vec::new();
        match drain_for(body, Duration::from_secs(10), &mut got).await {
            Some(Err(e)) => assert!(e.to_string().contains("DigestMismatch"), "{e}"),
            other => panic!("range 0-{end} of a mismatching blob ended with {other:?}"),
        }
        assert!((got.len() as u64) < *end, "the whole range was served");
    }
    drop(first);
    assert!(s.meta(&d).unwrap().is_none());
}

/// An assembled blob a test fills by hand: a file, how much of it counts
/// as verified, and whether it stopped.
struct Assembly {
    file: Arc<std::fs::File>,
    path: std::path::PathBuf,
    size: u64,
    /// Verified bytes, stopped, verified against a final manifest.
    verified: watch::Sender<(u64, bool, bool)>,
}

impl Assembly {
    fn new(dir: &std::path::Path, data: &[u8]) -> Arc<Self> {
        let path = dir.join("assembly.pieces");
        std::fs::write(&path, data).unwrap();
        let file = std::fs::OpenOptions::new().read(true).open(&path).unwrap();
        Arc::new(Assembly {
            file: Arc::new(file),
            path,
            size: data.len() as u64,
            verified: watch::Sender::new((0, false, false)),
        })
    }
    /// `n` bytes verified against a final manifest.
    fn verify_to(&self, n: u64) {
        self.verified.send_modify(|v| {
            v.0 = n;
            v.2 = true;
        });
    }
    /// `n` bytes verified against a provisional statement only.
    fn verify_provisionally(&self, n: u64) {
        self.verified.send_modify(|v| v.0 = n);
    }
    fn stop(&self) {
        self.verified.send_modify(|v| v.1 = true);
    }
}

impl AssembledBlob for Assembly {
    fn file(&self) -> Arc<std::fs::File> {
        self.file.clone()
    }
    fn path(&self) -> &std::path::Path {
        &self.path
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn wait_verified(
        &self,
        beyond: u64,
        was_final: bool,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<VerifiedPrefix, std::io::Error>> + Send + '_>,
    > {
        let mut rx = self.verified.subscribe();
        Box::pin(async move {
            loop {
                let (n, stopped, fin) = *rx.borrow_and_update();
                if n > beyond || (fin && (!was_final || n >= self.size)) {
                    return Ok(VerifiedPrefix {
                        bytes: n,
                        is_final: fin,
                    });
                }
                if stopped {
                    return Err(std::io::Error::other("assembly stopped"));
                }
                rx.changed().await.map_err(std::io::Error::other)?;
            }
        })
    }
}

/// A reader of `d` whose fetch follows the assembly `a`.
fn follow(s: &Arc<BlobStore>, d: &Digest, size: u64, a: &Arc<Assembly>) -> TailReader {
    let body: Result<SourceBody, FetchFailure> = Ok(SourceBody::Assembled(a.clone()));
    s.fetch_or_join(&reg("r.example"), d, size, 0, std::future::ready(body))
        .unwrap()
}

#[tokio::test]
async fn an_assembled_blob_is_read_only_as_far_as_verified_then_linked_not_copied() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir.path().join("store"));
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
    let d = Digest::of(&data);
    let a = Assembly::new(dir.path(), &data);
    let size = data.len() as u64;
    let r = follow(&s, &d, size, &a);
    let mut stream = r.into_stream();
    // Nothing is verified yet: no byte may come out.
    let early = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    assert!(early.is_err(), "a reader got bytes nobody verified");
    // A verified prefix comes out whole (no holdback: it is verified).
    a.verify_to(300_000);
    let mut got = Vec::new();
    while (got.len() as u64) < 300_000 {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    assert_eq!(got.len(), 300_000, "read past the verified prefix");
    let more = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    assert!(
        more.is_err(),
        "a reader got bytes beyond the verified prefix"
    );
    a.verify_to(size);
    while let Some(c) = stream.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(got, data);
    let meta = s
        .wait_stored(&d, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the complete assembly was not stored");
    assert_eq!(meta.size, size);
    // The store's blob is the assembled file itself: one write per byte.
    let stored = std::fs::metadata(s.blob_path(&d)).unwrap();
    let assembled = std::fs::metadata(&a.path).unwrap();
    assert_eq!(
        stored.ino(),
        assembled.ino(),
        "the blob was copied, not linked"
    );
    // The source may drop its own name; the stored blob stays readable.
    std::fs::remove_file(&a.path).unwrap();
    let r = s
        .fetch_or_join(&reg("r.example"), &d, size, 0, async {
            Err::<ByteStream, _>(FetchFailure::new(
                FetchFailureKind::Io,
                "stored: not opened",
            ))
        })
        .unwrap();
    assert_eq!(collect(r).await.unwrap(), data);
}

#[tokio::test]
async fn a_stopped_or_missized_assembly_fails_its_readers_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir.path().join("store"));
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
    let d = Digest::of(&data);
    let size = data.len() as u64;
    // Stops half way: readers fail after the verified half.
    let a = Assembly::new(dir.path(), &data);
    a.verify_to(size / 2);
    let r = follow(&s, &d, size, &a);
    let reading = tokio::spawn(collect(r));
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.stop();
    let e = reading.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("stopped"), "{e}");
    assert!(s.meta(&d).unwrap().is_none());
    // A manifest whose size is not the descriptor's is refused outright.
    let b = Assembly::new(dir.path(), &data[..1000]);
    b.verify_to(1000);
    let mut r = follow(&s, &d, size, &b);
    let e = r.started().await.unwrap_err();
    assert_eq!(e.kind, FetchFailureKind::SizeMismatch, "{e}");
    assert!(
        s.wait_stored(&d, Duration::from_millis(200))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_name_that_no_longer_points_at_the_verified_file_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir.path().join("store"));
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 11) as u8).collect();
    let d = Digest::of(&data);
    let size = data.len() as u64;
    let a = Assembly::new(dir.path(), &data);
    let r = follow(&s, &d, size, &a);
    let reading = tokio::spawn(collect(r));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The source's name is dropped and a new, unverified file takes it
    // (another download starting afresh) before the store links it.
    std::fs::remove_file(&a.path).unwrap();
    std::fs::write(&a.path, vec![0u8; data.len()]).unwrap();
    a.verify_to(size);
    // Readers read the verified file they were following...
    assert_eq!(reading.await.unwrap().unwrap(), data);
    // ...but the unverified file behind the name is never kept.
    assert!(
        s.wait_stored(&d, Duration::from_millis(500))
            .await
            .unwrap()
            .is_none(),
        "a file that was never verified was stored"
    );
    assert!(!s.blob_path(&d).exists());
}

#[tokio::test]
async fn a_provisionally_verified_assembly_completes_no_response_before_its_final_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir.path().join("store"));
    let data: Vec<u8> = (0..400_000u32).map(|i| (i % 249) as u8).collect();
    let d = Digest::of(&data);
    let size = data.len() as u64;
    let a = Assembly::new(dir.path(), &data);
    // Every byte verified, but against a provisional statement only.
    a.verify_provisionally(size);
    let whole = follow(&s, &d, size, &a).into_stream();
    let range_end = 100_000;
    let ranged = s
        .fetch_or_join(
            &reg("r.example"),
            &d,
            size,
            0,
            std::future::pending::<Result<SourceBody, FetchFailure>>(),
        )
        .unwrap()
        .into_stream_until(range_end);
    let read_until_quiet = |mut st: ByteStream| async move {
        let mut got = 0u64;
        while let Ok(Some(c)) = tokio::time::timeout(Duration::from_millis(300), st.next()).await {
            got += c.unwrap().len() as u64;
        }
        (got, st)
    };
    let (got_whole, whole) = read_until_quiet(whole).await;
    let (got_range, ranged) = read_until_quiet(ranged).await;
    // Held back like a cold stream: neither the blob nor `bytes=0-N` completes.
    assert_eq!(
        got_whole,
        size - HOLDBACK,
        "the blob completed before its final manifest"
    );
    assert_eq!(
        got_range,
        range_end - HOLDBACK,
        "a range completed before the final manifest"
    );
    assert!(
        s.meta(&d).unwrap().is_none(),
        "stored before the final manifest"
    );
    // The final manifest arrives: both complete, and the blob is kept.
    a.verify_to(size);
    assert_eq!(collect_stream(whole).await, HOLDBACK);
    assert_eq!(collect_stream(ranged).await, HOLDBACK);
    assert!(
        s.wait_stored(&d, Duration::from_secs(10))
            .await
            .unwrap()
            .is_some()
    );
}

async fn collect_stream(mut st: ByteStream) -> u64 {
    let mut n = 0;
    while let Some(c) = st.next().await {
        n += c.unwrap().len() as u64;
    }
    n
}

#[tokio::test]
async fn recent_batches_serve_only_written_bytes_of_a_live_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let batch = WRITE_BATCH;
    let n = RECENT_BATCHES + 2;
    let data: Vec<u8> = (0..n * batch).map(|i| (i % 253) as u8).collect();
    let wrong = Digest::of(b"not these bytes");
    let (tx, open) = fed_source();
    let mut r = s
        .fetch_or_join(&reg("r.example"), &wrong, data.len() as u64, 0, open)
        .unwrap();
    let recent = r.recent();
    assert!(recent.range(0, 1).is_none(), "nothing written yet");
    tx.send(Bytes::copy_from_slice(&data[..batch])).unwrap();
    r.started().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while recent.range(0, batch as u64).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first batch never held"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got: Vec<u8> = recent.range(0, batch as u64).unwrap().concat();
    assert_eq!(got, &data[..batch]);
    assert!(
        recent.range(0, batch as u64 + 1).is_none(),
        "a byte not written yet is never served"
    );
    // More batches than are kept: the oldest falls out, the newest span
    // several batches.
    for i in 1..n {
        tx.send(Bytes::copy_from_slice(&data[i * batch..(i + 1) * batch]))
            .unwrap();
    }
    let end = (n * batch) as u64;
    while recent.range(end - 1, end).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "last batch never held"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(recent.range(0, 1).is_none(), "the oldest batch was let go");
    let from = end - 3 * batch as u64 + 7;
    let got: Vec<u8> = recent.range(from, end).unwrap().concat();
    assert_eq!(got, &data[from as usize..]);
    // The digest does not match: the fetch fails and nothing is served
    // from memory any more.
    drop(tx);
    while recent.range(end - 1, end).is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "failed fetch still served"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(collect(r).await.is_err());
}
