// `recv` on a client built without `.receive::<T>(capacity)` names the fix.
use chitchat_net::Client;

async fn listen() -> Result<(), chitchat_net::ConnectError> {
    let client = Client::<String>::connect("127.0.0.1:7000").await?;
    let _ = client.recv().await;
    Ok(())
}

fn main() {
    let _ = listen;
}
