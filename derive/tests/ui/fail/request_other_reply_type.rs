// A request names its reply type: asking for another one does not compile.
use chitchat_net::{Client, Message};

#[derive(Debug, Message)]
#[message(codec = "bincode", reply = Reply)]
enum Command {
    Get { key: String },
}

#[derive(Debug, Message)]
#[message(codec = "bincode")]
enum Reply {
    Value { value: String },
}

async fn ask(client: &Client<Command>) {
    let wrong: Command = client.request(&Command::Get { key: "a".into() }).await.unwrap();
    let _ = wrong;
}

fn main() {
    let _ = ask;
}
