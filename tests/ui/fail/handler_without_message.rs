use chitchat_net::Handler;

#[derive(Handler)]
struct Monitor;

// Code using `Monitor` as a handler adds no error of its own.
fn assert_handler<H: Handler>() {}

fn main() {
    assert_handler::<Monitor>();
}
