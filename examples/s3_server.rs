//! The tests' S3 server as a program, for `bench/run`:
//! `s3_server ROOT PORT` serves ROOT (its subdirectories are buckets) on 127.0.0.1:PORT with the
//! tests' credentials until killed.

#[path = "../tests/common/s3_server.rs"]
mod s3_server;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(port)) = (args.next(), args.next()) else {
        eprintln!("usage: s3_server ROOT PORT");
        std::process::exit(2);
    };
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("PORT must be a number");
        std::process::exit(2);
    };
    let (rt, addr) = s3_server::serve(
        std::path::Path::new(&root),
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    );
    eprintln!("serving {root} on http://{addr}");
    rt.block_on(std::future::pending::<()>());
}
