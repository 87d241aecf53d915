//! A rough bound on the memory a network needs, so that flags asking for
//! more than the machine has fail with a message instead of an allocation
//! abort.

use anyhow::{bail, Result};
use sprout_core::arch::Post;
use sprout_core::Arch;

/// Copies of the parameters held while training: weights, gradients,
/// momentum and one working copy (morphism state, optimizer scratch).
const PARAM_COPIES: u128 = 4;
/// `f32` values per conv output element held per image: pre-BN, post-BN,
/// activation and gradient.
const CONV_COPIES: u128 = 4;
/// `f32` values per unit output element held per image: output and gradient.
const OUT_COPIES: u128 = 2;

/// The memory of the machine in bytes: MemTotal of /proc/meminfo, or 64 GiB
/// where that cannot be read.
pub fn machine_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(64 << 30, |kb| kb.saturating_mul(1024))
}

/// Estimated bytes of training `arch` on batches of `batch` images:
/// `(parameters, activations per image, total bytes)`.
pub fn estimate(arch: &Arch, batch: usize) -> (u128, u128, u128) {
    let params: u128 = arch.param_specs().iter().map(|s| s.len() as u128).sum();
    let mut act: u128 = (arch.input[0] * arch.input[1] * arch.input[2]) as u128;
    for u in arch.units() {
        act += CONV_COPIES * u.conv_len() as u128 + OUT_COPIES * u.out_len() as u128;
        if let Post::Depthwise { .. } = u.post {
            act += CONV_COPIES * u.out_len() as u128;
        }
    }
    let total = 4 * (PARAM_COPIES * params + act * batch as u128);
    (params, act, total)
}

fn gib(bytes: u128) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuses an architecture or batch size whose estimated memory
/// ([`estimate`]) exceeds the machine's ([`machine_memory`]). `arch_flag`
/// names the flag that chose the architecture (`--width 65536`), `batch_flag`
/// the one that chose the batch.
pub fn check(arch: &Arch, batch: usize, arch_flag: &str, batch_flag: &str) -> Result<()> {
    let limit = u128::from(machine_memory());
    let (params, act, total) = estimate(arch, batch);
    let param_bytes = 4 * PARAM_COPIES * params;
    if param_bytes > limit {
        bail!(
            "{arch_flag}: the network has {params} parameters, about {} to train, more than the {} of memory",
            gib(param_bytes),
            gib(limit)
        );
    }
    if total > limit {
        bail!(
            "{batch_flag} {batch}: {act} activations per image and {params} parameters need about {}, more than the {} of memory; lower it",
            gib(total),
            gib(limit)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_widths_and_batches_are_refused_small_ones_pass() {
        let small = Arch::vgg19(16, [1, 32, 32], 10).unwrap();
        check(&small, 64, "--width 16", "--batch").unwrap();
        let (p, a, t) = estimate(&small, 64);
        assert!(p > 0 && a > 0 && t > 4 * 64 * a);
        let m = check(&small, 100_000_000, "--width 16", "--batch")
            .unwrap_err()
            .to_string();
        assert!(m.starts_with("--batch 100000000: "), "{m}");
        let wide = Arch::vgg19(65536, [1, 32, 32], 10).unwrap();
        let m = check(&wide, 1, "--width 65536", "--batch")
            .unwrap_err()
            .to_string();
        assert!(m.starts_with("--width 65536: the network has"), "{m}");
        assert!(!m.contains('\n'));
    }
}
