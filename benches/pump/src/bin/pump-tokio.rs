//! One client to one server, bytes both ways, on tokio's current-thread runtime (epoll):
//! what pgsluice runs on a 2-core machine, with nothing of a proxy but the forwarding.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, tcp};

async fn forward(mut from: tcp::OwnedReadHalf, mut to: tcp::OwnedWriteHalf) {
    let mut buf = vec![0u8; pgsluice_pump::BUFFER];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn serve(client: TcpStream, upstream: std::net::SocketAddr) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // One task per client, polling both directions, as pgsluice's relay does.
    tokio::join!(forward(sr, cw), forward(cr, sw));
}

fn main() -> std::io::Result<()> {
    pgsluice_pump::stop_on_sigint();
    let (listen, upstream) = pgsluice_pump::addresses();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            tokio::spawn(serve(client, upstream));
        }
    })
}
