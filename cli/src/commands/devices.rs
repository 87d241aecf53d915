//! `sprout devices`: the GPU adapters `--backend gpu` can use.

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct DevicesArgs {}

pub fn run(_args: &DevicesArgs) -> Result<()> {
    let adapters = sprout_gpu::adapters();
    if adapters.is_empty() {
        println!("no GPU adapter found; install a Vulkan driver, e.g. `apt-get install mesa-vulkan-drivers libvulkan1` for software rendering, or use --backend cpu");
        return Ok(());
    }
    println!("{:<40} {:<8} type", "name", "backend");
    for a in adapters {
        println!("{:<40} {:<8} {}", a.name, a.backend, a.device_type);
    }
    println!(
        "(select one with --backend gpu --adapter NAME; any part of the name, case-insensitive)"
    );
    Ok(())
}
