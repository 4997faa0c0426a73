//! One client to one server, bytes both ways, on monoio's io_uring driver: the same pump as
//! pump-tokio with completions instead of readiness.

use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::{TcpListener, TcpStream};

async fn forward(mut from: OwnedReadHalf<TcpStream>, mut to: OwnedWriteHalf<TcpStream>) {
    let mut buf = Vec::with_capacity(pgsluice_pump::BUFFER);
    loop {
        let (read, b) = from.read(buf).await;
        match read {
            Ok(n) if n > 0 => {
                let (written, b) = to.write_all(b).await;
                if written.is_err() {
                    break;
                }
                buf = b;
                buf.clear();
            }
            _ => break,
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
    // One task per client, a read pending in each direction.
    monoio::join!(forward(sr, cw), forward(cr, sw));
}

fn main() -> std::io::Result<()> {
    pgsluice_pump::stop_on_sigint();
    let (listen, upstream) = pgsluice_pump::addresses();
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen)?;
        loop {
            let (client, _) = listener.accept().await?;
            monoio::spawn(serve(client, upstream));
        }
    })
}
