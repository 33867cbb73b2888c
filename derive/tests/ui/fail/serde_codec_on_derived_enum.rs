// `.codec(Bincode)` on a derived enum: the error names `serde_format(..)`,
// never advice to derive serde's traits (which would write serde's variant
// indexes instead of the tags).
use chitchat_net::{Bincode, Client, Message};

#[derive(Debug, Message)]
#[message(codec = "bincode")]
enum Command {
    #[message(tag = 2)]
    Get { key: String },
    #[message(tag = 1)]
    Put { key: String, value: String },
}

fn main() {
    let _ = Client::<Command>::builder().codec(Bincode);
}
