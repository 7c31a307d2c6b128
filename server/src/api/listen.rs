//! Accepted connections: plain TCP, or TLS with the server's current certificate. Handshakes
//! run in their own tasks (with a deadline), so a slow or silent client never holds up the
//! accept loop.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted but not yet taken by the server.
const ACCEPT_QUEUE: usize = 64;
/// The pause after a failed accept (out of file descriptors, say), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// One accepted connection.
pub enum Connection {
    Plain(TcpStream, TcpConnectInfo),
    Tls(Box<TlsStream<TcpStream>>, TcpConnectInfo),
}

/// The connections accepted on `listener`, over TLS when `tls` is given. The accept loop ends
/// (and the listening socket closes) when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> ReceiverStream<Result<Connection, io::Error>> {
    let (sender, receiver) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(accept_loop(listener, tls.map(TlsAcceptor::from), sender));
    ReceiverStream::new(receiver)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    sender: mpsc::Sender<Result<Connection, io::Error>>,
) {
    loop {
        let accepted = tokio::select! {
            () = sender.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!(error = %err, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // TCP_NODELAY: with Nagle's algorithm, a message's last segment waits for the peer's
        // delayed ACK (up to 40 ms) — it held WriteFile to ~70 MiB/s and unary calls to ~40 ms.
        if let Err(err) = stream.set_nodelay(true) {
            debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let info = stream.connect_info();
        let Some(acceptor) = &acceptor else {
            if sender.send(Ok(Connection::Plain(stream, info))).await.is_err() {
                return;
            }
            continue;
        };
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            let peer = info.remote_addr.map(|addr| addr.to_string()).unwrap_or_default();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = sender.send(Ok(Connection::Tls(Box::new(tls), info))).await;
                }
                Ok(Err(err)) => debug!(peer, error = %err, "tls handshake failed"),
                Err(_) => debug!(peer, "tls handshake timed out"),
            }
        });
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Connection::Plain(_, info) | Connection::Tls(_, info) => info.clone(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream, _) => Pin::new(stream).poll_read(cx, buf),
            Connection::Tls(stream, _) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream, _) => Pin::new(stream).poll_write(cx, buf),
            Connection::Tls(stream, _) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream, _) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Connection::Tls(stream, _) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(stream, _) => stream.is_write_vectored(),
            Connection::Tls(stream, _) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream, _) => Pin::new(stream).poll_flush(cx),
            Connection::Tls(stream, _) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream, _) => Pin::new(stream).poll_shutdown(cx),
            Connection::Tls(stream, _) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
