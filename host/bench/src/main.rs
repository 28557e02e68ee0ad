//! `waft-bench`: the load generator on its own (`waft bench` is the same
//! options inside the `waft` command).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "waft-bench",
    version,
    about = "Load a waft or etcd cluster with concurrent clients; print throughput and latency percentiles"
)]
struct Cli {
    #[command(flatten)]
    bench: waft_bench::Args,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(waft_bench::run(cli.bench))?;
    Ok(())
}
