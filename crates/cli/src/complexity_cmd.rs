//! `cardinal complexity`: params and multiply-adds stage by stage (paper Table 1), and with
//! --preserve the widths that keep a block's complexity for each cardinality (Table 2).

use anyhow::{bail, Context, Result};
use cardinal_analysis::paper::TABLE_1;
use cardinal_zoo::{preserve_complexity, Complexity};
use clap::Args;
use serde::Serialize;

use crate::table::{scientific, short, thousands, Table};
use crate::{model_arg, print_json, Format};

#[derive(Args)]
pub struct ComplexityArgs {
    /// Preset names (see `cardinal models`) or YAML/JSON spec files.
    models: Vec<String>,
    /// Input side in pixels (default: each model's own, 224 for ImageNet models).
    #[arg(long)]
    input_size: Option<usize>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Also list every layer (table and csv) or include them in the JSON.
    #[arg(long)]
    layers: bool,
    /// Solve for the bottleneck width d that preserves the block complexity of MODEL's
    /// stage (paper Table 2) for each --cardinality.
    #[arg(long, value_name = "MODEL")]
    preserve: Option<String>,
    /// Cardinalities to solve for with --preserve.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4, 8, 32])]
    cardinality: Vec<usize>,
    /// Stage to solve with --preserve: 1 is the first residual stage (the paper's conv2).
    #[arg(long, default_value_t = 1)]
    stage: usize,
}

#[derive(Serialize)]
struct ComplexityRow {
    model: String,
    input_size: usize,
    params: u64,
    macs: u64,
    stages: Vec<cardinal_zoo::complexity::StageComplexity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<cardinal_zoo::complexity::LayerComplexity>>,
}

/// The paper's rounded totals (Table 1), printed beside ours: `analysis::paper::TABLE_1`,
/// whose rows are ResNet-50 and ResNeXt-50 (32x4d).
fn paper_table_1(model: &str) -> Option<String> {
    let row = match model {
        "resnet50" => &TABLE_1[0],
        "resnext50_32x4d" => &TABLE_1[1],
        _ => return None,
    };
    Some(format!(
        "{:.1}×10⁶ / {:.1}×10⁹",
        row.params / 1e6,
        row.flops / 1e9
    ))
}

pub fn run(args: ComplexityArgs) -> Result<()> {
    if let Some(template) = &args.preserve {
        return preserve(template, &args);
    }
    if args.models.is_empty() {
        bail!("give at least one MODEL (`cardinal models` lists them), or --preserve MODEL");
    }
    let mut rows = Vec::new();
    for name in &args.models {
        let mut model = model_arg::resolve(name)?;
        if let Some(size) = args.input_size {
            model.spec.input_size = size;
        }
        let c = Complexity::of(&model.spec).with_context(|| format!("model {name}"))?;
        rows.push(ComplexityRow {
            model: model.name,
            input_size: c.input_size,
            params: c.params,
            macs: c.macs,
            stages: c.stages,
            layers: if args.layers || !matches!(args.format, Format::Json) {
                Some(c.layers)
            } else {
                None
            },
        });
    }
    match args.format {
        Format::Json => print_json(&rows)?,
        Format::Csv if args.layers => {
            println!("model,input_size,layer,output_size,params,macs");
            for r in &rows {
                for l in r.layers.iter().flatten() {
                    println!(
                        "{},{},{},{},{},{}",
                        r.model, r.input_size, l.name, l.output_size, l.params, l.macs
                    );
                }
            }
        }
        Format::Csv => {
            println!("model,input_size,params,macs");
            for r in &rows {
                println!("{},{},{},{}", r.model, r.input_size, r.params, r.macs);
            }
        }
        Format::Table => print!("{}", complexity_table(&rows, args.layers)),
    }
    Ok(())
}

/// Stage-by-stage, models side by side, as the paper's Table 1.
fn complexity_table(rows: &[ComplexityRow], with_layers: bool) -> String {
    let mut stage_names: Vec<String> = Vec::new();
    for r in rows {
        for s in &r.stages {
            if !stage_names.contains(&s.stage) {
                stage_names.push(s.stage.clone());
            }
        }
    }
    let mut headers = vec!["stage".to_string()];
    for r in rows {
        headers.push(format!(
            "{} (output, {}x{} input)",
            r.model, r.input_size, r.input_size
        ));
        headers.push("params".into());
        headers.push("MACs".into());
    }
    let mut t = Table::new(headers);
    for stage in &stage_names {
        let mut cells = vec![stage.clone()];
        for r in rows {
            match r.stages.iter().find(|s| &s.stage == stage) {
                Some(s) => {
                    cells.push(format!(
                        "{}x{}  {}",
                        s.output_size, s.output_size, s.structure
                    ));
                    cells.push(short(s.params));
                    cells.push(short(s.macs));
                }
                None => cells.extend(["".to_string(), "".to_string(), "".to_string()]),
            }
        }
        t.row(cells);
    }
    let mut params = vec!["# params".to_string()];
    let mut macs = vec!["FLOPs (multiply-adds)".to_string()];
    let mut paper = vec!["paper (Table 1)".to_string()];
    for r in rows {
        params.extend([
            format!("{} ({})", thousands(r.params), scientific(r.params)),
            String::new(),
            String::new(),
        ]);
        macs.extend([
            format!("{} ({})", thousands(r.macs), scientific(r.macs)),
            String::new(),
            String::new(),
        ]);
        let published = if r.input_size == 224 {
            paper_table_1(&r.model)
        } else {
            None
        };
        paper.extend([published.unwrap_or_default(), String::new(), String::new()]);
    }
    t.row(params);
    t.row(macs);
    // The paper's figures are for 224x224 inputs only.
    if rows
        .iter()
        .any(|r| r.input_size == 224 && paper_table_1(&r.model).is_some())
    {
        t.row(paper);
    }
    let mut out = t.render();
    if with_layers {
        for r in rows {
            let mut lt = Table::new(["layer", "output", "params", "MACs"]);
            for l in r.layers.iter().flatten() {
                lt.row([
                    l.name.clone(),
                    format!("{}x{}", l.output_size, l.output_size),
                    thousands(l.params),
                    thousands(l.macs),
                ]);
            }
            out.push_str(&format!("\n{}:\n{}", r.model, lt.render()));
        }
    }
    out
}

fn preserve(template: &str, args: &ComplexityArgs) -> Result<()> {
    let mut model = model_arg::resolve(template)?;
    if let Some(size) = args.input_size {
        model.spec.input_size = size;
    }
    if args.stage == 0 {
        bail!("--stage starts at 1 (the first residual stage, the paper's conv2)");
    }
    let rows = preserve_complexity(&model.spec, args.stage - 1, &args.cardinality)?;
    match args.format {
        Format::Json => print_json(&rows)?,
        Format::Csv => {
            println!("cardinality,bottleneck_width,group_width,block_params");
            for r in &rows {
                println!(
                    "{},{},{},{}",
                    r.cardinality, r.bottleneck_width, r.group_width, r.block_params
                );
            }
        }
        Format::Table => {
            let spec = &model.spec;
            let stage = args.stage - 1;
            let target = cardinal_zoo::solver::block_params(
                spec.block,
                spec.stage_out_channels(stage),
                spec.cardinality,
                spec.path_width(stage),
            );
            println!(
                "Preserved complexity (paper Table 2): template {} {}x{}d, stage {} (conv{}), {} params per block\n",
                model.name,
                spec.cardinality,
                spec.path_width(stage),
                args.stage,
                args.stage + 1,
                thousands(target)
            );
            let mut t = Table::new([
                "cardinality C",
                "bottleneck width d",
                "width of group conv",
                "block params",
                "vs template",
            ]);
            for r in &rows {
                t.row([
                    r.cardinality.to_string(),
                    r.bottleneck_width.to_string(),
                    r.group_width.to_string(),
                    thousands(r.block_params),
                    format!(
                        "{:+.1}%",
                        100.0 * (r.block_params as f64 / target as f64 - 1.0)
                    ),
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}
