//! `pachgate demo`: stand-in pachd and console on loopback, pachgate in front of them with a
//! generated certificate, and the lines a user pastes to try it. The config is the same TOML
//! a user would write, so the demo exercises the real loading path.

use std::path::PathBuf;

use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Port for pachgate's TLS listener on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8443)]
    port: u16,
    /// Where the generated CA and certificate are kept (reused on the next run, so a client
    /// can trust the CA once).
    #[arg(long)]
    cert_dir: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> Result<(), String> {
    let pachd = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("stand-in pachd: {e}"))?;
    let console = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("stand-in console: {e}"))?;
    let pachd_addr = pachd.local_addr().map_err(|e| e.to_string())?;
    let console_addr = console.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(pachgate_standins::serve_pachd(pachd, Default::default()));
    tokio::spawn(pachgate_standins::serve_console(console));

    let cert_dir = args
        .cert_dir
        .unwrap_or_else(|| std::env::temp_dir().join("pachgate-demo"));
    let text = format!(
        r#"
[listen]
https = "127.0.0.1:{port}"
admin = "127.0.0.1:0"

[log]
access = "text"

[tls]
self_signed = true
self_signed_dir = {cert_dir:?}
hosts = ["localhost", "127.0.0.1"]

{routes}"#,
        port = args.port,
        cert_dir = cert_dir.display().to_string(),
        routes =
            pachgate_standins::routes_toml(&pachd_addr.to_string(), &console_addr.to_string(), ""),
    );

    let (server, https) = crate::serve_embedded("<demo>", &text).await?;
    let ca = cert_dir.join("ca.crt");
    let port = https.port();
    crate::announce::announce(format!(
        r#"
pachgate demo is running.
  stand-in pachd (gRPC, h2c):  {pachd_addr}
  stand-in console (HTTP, ws): {console_addr}
  pachgate (TLS):              https://localhost:{port}
  CA certificate:              {ca}
  status page, /metrics:       the "admin listening on" address above

Try it:
  curl --cacert {ca} https://localhost:{port}/
  python3 -c 'import grpc; ch = grpc.secure_channel("localhost:{port}", grpc.ssl_channel_credentials(open("{ca}", "rb").read())); print(ch.unary_unary("/versionpb_v2.API/GetVersion")(b""))'
  python3 -c 'import asyncio, ssl, websockets
async def main():
    ctx = ssl.create_default_context(cafile="{ca}")
    async with websockets.connect("wss://localhost:{port}/ws", ssl=ctx) as ws:
        await ws.send("hello through pachgate"); print(await ws.recv())
asyncio.run(main())'
  pachctl connect grpcs://localhost:{port}
  pachctl config update context --server-cas "$(base64 -w0 < {ca})"

Press Ctrl-C to stop."#,
        ca = ca.display(),
    ));
    server.await.map_err(|e| e.to_string())?
}
