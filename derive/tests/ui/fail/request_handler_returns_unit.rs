// A derived handler answers a request by returning its reply: a method
// that returns `()` (forgetting to answer) does not compile.
use chitchat_net::{BoxError, Context, Handler, Message};

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

#[derive(Handler)]
#[handler(message = Command)]
struct Store;

impl CommandHandler for Store {
    async fn get(&self, _key: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
}

fn main() {}
