use chitchat_net::Message;

struct Celsius(f32);

#[derive(Message)]
#[message(codec = "bincode")]
enum Beat {
    Reading { celsius: Celsius },
    Stop,
}

fn main() {}
