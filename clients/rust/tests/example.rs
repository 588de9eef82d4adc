//! The README's example runs against a real server, so it cannot rot.

mod common;

#[path = "../examples/keepalive_lock.rs"]
mod keepalive_lock;

use common::Server;

#[test]
fn the_example_runs() {
    let server = Server::start();
    let log = keepalive_lock::run(&server.url()).unwrap();
    assert_eq!(
        log,
        [
            "acquired {report}:lock",
            "wrote v1 with the lease's token",
            "still held after 900 ms of a 300 ms lease",
            "on_lost: the lock was taken over",
            "guarded write refused: the lock \"{report}:lock\" was lost",
            "released: false",
        ]
    );
    let mut c = server.conn();
    let body: String = redis::cmd("GET")
        .arg("{report}:body")
        .query(&mut c)
        .unwrap();
    assert_eq!(body, "v1");
}
