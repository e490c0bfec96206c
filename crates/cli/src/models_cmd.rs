//! `cardinal models`: the presets with their params and multiply-adds.

use anyhow::Result;
use cardinal_zoo::{presets, Complexity};
use clap::Args;
use serde::Serialize;

use crate::table::{thousands, Table};
use crate::{print_json, Format};

#[derive(Args)]
pub struct ModelsArgs {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Serialize)]
struct ModelRow {
    model: String,
    family: String,
    description: String,
    depth: usize,
    cardinality: usize,
    bottleneck_width: usize,
    input_size: usize,
    params: u64,
    macs: u64,
}

pub fn run(args: ModelsArgs) -> Result<()> {
    let rows = presets()
        .into_iter()
        .map(|p| {
            let c = Complexity::of(&p.spec)?;
            Ok(ModelRow {
                model: p.name.to_string(),
                family: p.family.to_string(),
                description: p.description.to_string(),
                depth: p.spec.depth(),
                cardinality: p.spec.cardinality,
                bottleneck_width: p.spec.bottleneck_width,
                input_size: p.spec.input_size,
                params: c.params,
                macs: c.macs,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    match args.format {
        Format::Json => print_json(&rows)?,
        Format::Csv => {
            println!("model,family,depth,cardinality,bottleneck_width,input_size,params,macs");
            for r in rows {
                println!(
                    "{},{},{},{},{},{},{},{}",
                    r.model,
                    r.family,
                    r.depth,
                    r.cardinality,
                    r.bottleneck_width,
                    r.input_size,
                    r.params,
                    r.macs
                );
            }
        }
        Format::Table => {
            let mut t = Table::new([
                "model",
                "family",
                "C x d",
                "depth",
                "input",
                "params",
                "MACs",
                "description",
            ]);
            for r in rows {
                t.row([
                    r.model,
                    r.family,
                    format!("{}x{}d", r.cardinality, r.bottleneck_width),
                    r.depth.to_string(),
                    r.input_size.to_string(),
                    thousands(r.params),
                    thousands(r.macs),
                    r.description,
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}
