//! `btx measure`: runs merge members forward on data, on a device, for what a merge reads
//! from them (data-initialised router rows, BTM's posterior weights); see
//! `merge::router_data`.

use std::path::PathBuf;

use anyhow::Result;

use crate::device::{DeviceArgs, select_device};
use crate::merge::router_data::{MEASURED_FILE, Measurement};

#[derive(clap::Args)]
pub struct MeasureArgs {
    /// The measurement as RON, e.g. `Posterior(members: ["experts/a", "experts/b"], data: "later.ron")`.
    #[arg(long)]
    config: PathBuf,
    /// Folder to write measured.json into.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: MeasureArgs) -> Result<()> {
    let measurement: Measurement = crate::config::read_ron(&args.config)?;
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);
    let measured = measurement.run(&selected.device)?;
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join(MEASURED_FILE);
    measured.write(&path)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Measurement;

    /// The example in `--config`'s help parses.
    #[test]
    fn the_config_help_example_parses() {
        let m: Measurement = crate::config::parse_ron(r#"Posterior(members: ["experts/a", "experts/b"], data: "later.ron")"#, "--config").unwrap();
        assert!(matches!(m, Measurement::Posterior { members, .. } if members.len() == 2));
    }
}
