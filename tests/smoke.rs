use std::time::Duration;

use chitchat_net::{handler_fn, BoxError, Client, Context, Server};

#[tokio::test]
async fn echo_round_trip() {
    let echo = handler_fn(|line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
        ctx.send(&format!("echo {line}"))?;
        Ok(())
    });
    let server = Server::listen("127.0.0.1:0", echo).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let collect = handler_fn(move |line: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
        tx.send(line)?;
        Ok(())
    });
    let client = Client::<String>::builder()
        .handler(collect)
        .connect(server.local_addr())
        .await
        .unwrap();
    for i in 0..3 {
        client.send(&format!("hi {i}")).await.unwrap();
    }
    for i in 0..3 {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(got, format!("echo hi {i}"));
    }
    client.close().await;
    server.cut().await;
}
