//! Signal handling: SIGTERM or Ctrl-C cancels one token every task watches.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGTERM or SIGINT. The SIGTERM handler is installed
/// before this returns, so a SIGTERM sent as soon as the process says it is
/// ready is never the default (immediate death without cleanup).
pub fn on_signal(token: CancellationToken) {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    tokio::spawn(async move {
        let term = async {
            match term {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await
                }
            }
        };
        tokio::select! {
            _ = term => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
        }
        token.cancel();
    });
}

/// Cancels `token` when standard input closes: `customs up` holds the
/// write end of every child's stdin, so its fleet stops with it even when
/// it is killed outright.
pub fn on_stdin_eof(token: CancellationToken) {
    tokio::spawn(async move {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut sink).await;
        tracing::info!("parent went away: shutting down");
        token.cancel();
    });
}
