//! `carbridge-testpki`: makes a test PKI directory for the local stack and
//! the load generator. Never for production: keys are unencrypted and the
//! CA's key sits beside its certificate.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Makes (or completes) a test PKI in DIR: ca.crt and ca.key, the
/// gateway's server.crt and server.key for the given names, and tickets
/// (a session-ticket secret). What exists is kept. `loadgen --tls
/// --tls-dir DIR` adds one certificate per car under DIR/cars.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Directory to make or complete.
    dir: PathBuf,
    /// Names (DNS or IP) the server certificate carries; repeatable.
    #[arg(long = "server-name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
    server_names: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ca = pki::Ca::load_or_create(&cli.dir)?;
    let (cert, key) = (cli.dir.join("server.crt"), cli.dir.join("server.key"));
    if !(cert.exists() && key.exists()) {
        let names: Vec<&str> = cli.server_names.iter().map(String::as_str).collect();
        ca.server(&names)?.write(&cli.dir, "server")?;
        println!("made {} for {}", cert.display(), names.join(", "));
    }
    let tickets = cli.dir.join("tickets");
    if !tickets.exists() {
        std::fs::write(&tickets, format!("{}\n", pki::random_hex(32)?))
            .with_context(|| format!("writing {}", tickets.display()))?;
        println!("made {}", tickets.display());
    }
    println!("test PKI in {}", cli.dir.display());
    Ok(())
}
